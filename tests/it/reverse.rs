//! The reverse direction (Supabase primary): change capture on Supabase,
//! switched by the real binary, fed by writes through PostgREST and psql, and
//! closed to the anon and authenticated keys (checked through the REST API).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{json, Value};

use dualwrite::capture::supabase::{self as rc, CaptureState};
use dualwrite::catalogue;
use dualwrite::db::{RestClient, RestConfig};
use dualwrite::keys;

use crate::harness::free_port;
use crate::harness::{stack, unique, PrivateDb, Spawned};

/// A private database with the capture migration applied (the shared
/// template may predate it; the migration is re-runnable).
async fn db_with_capture() -> PrivateDb {
    let pg = PrivateDb::new().await;
    pg.ddl(rc::MIGRATION_SQL).await;
    pg
}

fn run(dir: &Path, pg: &PrivateDb, args: &[&str]) -> Output {
    run_with(dir, pg, &[], args)
}

/// The binary with `env` added (after DB_PATH=`dir`/dox.sqlite3 and the private stack's URL and key).
fn run_with(dir: &Path, pg: &PrivateDb, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .env_clear()
        .env("RUST_LOG", "warn")
        .env("DB_PATH", dir.join("dox.sqlite3"))
        .env("DUALWRITE_REST_URL", &pg.url)
        .env("SUPABASE_SERVICE_KEY", pg.service_key())
        .env("SUPABASE_TIMEOUT", "5")
        .envs(env.iter().copied())
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn state(o: &Output) -> CaptureState {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// A client of the private PostgREST with a JWT for `role`.
pub(crate) fn client_as(pg: &PrivateDb, role: &str, sub: Option<&str>, schema: &str) -> RestClient {
    let jwt = keys::sign(stack().jwt_secret(), role, sub, Duration::from_secs(600)).unwrap();
    RestClient::new(&RestConfig {
        url: pg.url.clone(),
        key: SecretString::from(jwt),
        user_jwt: None,
        schema: schema.into(),
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap()
}

/// (tbl, key, op) of every pending change, in seq order.
async fn pending(service: &RestClient) -> Vec<(String, String, String)> {
    let rows = service
        .rpc("dualwrite_changes", &json!({"max_rows": 1000}))
        .await
        .unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            (s("tbl"), s("key"), s("op"))
        })
        .collect()
}

fn change(tbl: &str, key: &str, op: &str) -> (String, String, String) {
    (tbl.to_owned(), key.to_owned(), op.to_owned())
}

#[tokio::test]
async fn capture_on_supabase_logs_every_writer_and_only_the_service_role_reaches_it() {
    needs_stack!();
    let pg = db_with_capture().await;
    let dir = tempfile::tempdir().unwrap();
    let service = pg.rest(Duration::from_secs(10));

    // Off after the migration: nothing installed, status exits 1.
    let o = run(
        dir.path(),
        &pg,
        &["capture", "status", "--target", "supabase"],
    );
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(!state(&o).enabled);
    let a = unique("rev-art");
    let body = |v: Value| serde_json::to_string(&v).unwrap();
    let art = |id: &str| json!([{"id": id, "filename": "f", "filepath": "p", "filetype": ".pdf"}]);
    service
        .upsert(&catalogue::ARTIFACT, body(art(&a)))
        .await
        .unwrap();
    assert!(pending(&service).await.is_empty(), "capture is off");

    // Install, twice (idempotent): every trigger present.
    for _ in 0..2 {
        let o = run(
            dir.path(),
            &pg,
            &["capture", "install", "--target", "supabase"],
        );
        assert!(o.status.success(), "{o:?}");
        let st = state(&o);
        assert!(st.installed(), "{st:?}");
        assert_eq!(st.pending, 0);
    }
    let o = run(
        dir.path(),
        &pg,
        &["capture", "status", "--target", "supabase"],
    );
    assert!(o.status.success(), "{o:?}");

    // Writes through PostgREST (an upsert that updates, one that inserts) ...
    let b = unique("rev-art");
    service
        .upsert(&catalogue::ARTIFACT, body(art(&a)))
        .await
        .unwrap();
    service
        .upsert(&catalogue::ARTIFACT, body(art(&b)))
        .await
        .unwrap();
    // ... and by SQL: a key-changing update, a delete, a rolled-back insert.
    let sql = pg.sql().await;
    let c = unique("rev-art");
    sql.execute("update artifacts set id = $1 where id = $2", &[&c, &b])
        .await
        .unwrap();
    sql.execute("delete from artifacts where id = $1", &[&a])
        .await
        .unwrap();
    sql.batch_execute(
        "begin; insert into artifacts (id, filename, filepath, filetype) \
         values ('rolled-back', 'f', 'p', '.pdf'); rollback;",
    )
    .await
    .unwrap();
    // A multi-row statement logs every row.
    sql.batch_execute(
        "insert into user_prefs (user_id, preferences) values ('rev-u1', '{}'), ('rev-u2', '{}')",
    )
    .await
    .unwrap();
    let expect = vec![
        change("artifacts", &a, "U"),
        change("artifacts", &b, "I"),
        change("artifacts", &b, "D"),
        change("artifacts", &c, "U"),
        change("artifacts", &a, "D"),
        change("user_prefs", "rev-u1", "I"),
        change("user_prefs", "rev-u2", "I"),
    ];
    assert_eq!(pending(&service).await, expect);

    // anon and authenticated: no rpc, no table, no ack.
    let sub = unique("user");
    for c in [
        client_as(&pg, "anon", None, "public"),
        client_as(&pg, "authenticated", Some(&sub), "public"),
    ] {
        for (f, args) in [
            ("dualwrite_changes", json!({"max_rows": 10})),
            (
                "dualwrite_changes_ack",
                json!({"seqs": [1, 2, 3, 4, 5, 6, 7, 8]}),
            ),
            ("dualwrite_capture", json!({"set_enabled": false})),
            ("dualwrite_capture", json!({})),
            ("dualwrite_changes_backlog", json!({})),
        ] {
            let e = c.rpc(f, &args).await.unwrap_err();
            assert_eq!(e.code(), Some("42501"), "{f}: {e}");
        }
    }
    for role in ["anon", "authenticated"] {
        let c = client_as(&pg, role, Some(&sub), "dualwrite_capture");
        let e = c
            .select_page("changes", "*", &[], "seq", None, 10)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("PGRST106") || e.code() == Some("PGRST106"),
            "{e}"
        );
        // An insert, as any client would send it (the schema is not exposed).
        let jwt = keys::sign(
            stack().jwt_secret(),
            role,
            Some(&sub),
            Duration::from_secs(600),
        )
        .unwrap();
        let r = reqwest::Client::new()
            .post(format!("{}/changes", pg.url))
            .header("apikey", &jwt)
            .bearer_auth(&jwt)
            .header("Content-Profile", "dualwrite_capture")
            .header("Content-Type", "application/json")
            .body(r#"[{"tbl":"artifacts","key":"x","op":"I"}]"#)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert!(
            status >= 400 && body.contains("PGRST106"),
            "{status} {body}"
        );
    }
    // Nothing they tried changed the log or the switch.
    assert_eq!(pending(&service).await, expect);

    // Acknowledging removes exactly the seqs given.
    let rows = service
        .rpc("dualwrite_changes", &json!({"max_rows": 2}))
        .await
        .unwrap();
    let seqs: Vec<i64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    let n = service
        .rpc("dualwrite_changes_ack", &json!({ "seqs": seqs }))
        .await
        .unwrap();
    assert_eq!(n, json!(2));
    assert_eq!(pending(&service).await, expect[2..].to_vec());
    // A read never splits a statement's entry (an ack by seq takes all its
    // keys): with room for 4 keys, the two-key entry at the 4th comes whole.
    let rows = service
        .rpc("dualwrite_changes", &json!({"max_rows": 4}))
        .await
        .unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 5, "{rows}");

    // Uninstall refuses while changes are pending, then drops them with --force.
    let o = run(
        dir.path(),
        &pg,
        &["capture", "uninstall", "--target", "supabase"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("5 change(s)") && err.contains("--force"),
        "{err}"
    );
    let o = run(
        dir.path(),
        &pg,
        &["capture", "uninstall", "--target", "supabase", "--force"],
    );
    assert!(o.status.success(), "{o:?}");
    let st = state(&o);
    assert!(!st.enabled && st.pending == 0, "{st:?}");
    service
        .upsert(&catalogue::ARTIFACT, body(art(&a)))
        .await
        .unwrap();
    assert!(pending(&service).await.is_empty(), "triggers removed");
}

#[test]
fn print_sql_prints_the_migration_and_needs_the_supabase_target() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .env_clear()
        .current_dir(dir.path())
        .args(["capture", "install", "--target", "supabase", "--print-sql"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out, rc::MIGRATION_SQL);
    assert!(out.contains("create table if not exists dualwrite_capture.changes"));
    let o = Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .env_clear()
        .current_dir(dir.path())
        .args(["capture", "install", "--print-sql"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--target supabase"));
}

fn spawn_reverse(dir: &Path, db: &Path, pg: &PrivateDb, port: u16) -> Spawned {
    spawn_serve(dir, db, pg, port, &[], &["--direction", "reverse"])
}

/// `dualwrite serve` with `env` added and `args` after `serve`.
fn spawn_serve(
    dir: &Path,
    db: &Path,
    pg: &PrivateDb,
    port: u16,
    env: &[(&str, &str)],
    args: &[&str],
) -> Spawned {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("reverse.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .env_clear()
        .env("RUST_LOG", "warn,dualwrite=info")
        .env("DB_PATH", db)
        .env("DUALWRITE_REST_URL", &pg.url)
        .env("SUPABASE_SERVICE_KEY", pg.service_key())
        .env("SUPABASE_TIMEOUT", "2")
        .envs(env.iter().copied())
        .current_dir(dir)
        .arg("serve")
        .args(args)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--max-wait-secs",
            "3",
            "--batch-rows",
            "50",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map(Spawned)
        .unwrap()
}

async fn wait_drained(service: &RestClient, dir: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = rc::state(service).await.unwrap();
        if st.pending == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} changes still pending; log:\n{}",
            st.pending,
            std::fs::read_to_string(dir.join("reverse.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kill(child: &std::process::Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_serve_keeps_the_sqlite_file_equal_through_kill_9_and_a_locked_file() {
    use dualwrite::db::{Dox, SqliteDatabase, SqliteOptions};
    use dualwrite::model::Call;
    use dualwrite::verify::{self, Format, KeyInfo, Verdict, VerifyOptions};

    needs_stack!();
    let pg = db_with_capture().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.sqlite3");
    drop(
        SqliteDatabase::open(&db, SqliteOptions::default())
            .await
            .unwrap(),
    );
    let service = pg.rest(Duration::from_secs(10));
    let supa = pg.supabase();
    let body = |v: Value| serde_json::to_string(&v).unwrap();

    // A row DoX wrote before cutover, on both sides: JSON text in DoX's key
    // order and spacing, which jsonb does not keep.
    let dox_extras = r#"{"zeta": 1, "alpha": {"b": 2.5, "a": "x"}}"#;
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute(
            "INSERT INTO artifact (id, filename, filepath, filetype, status, extra_json) \
             VALUES ('old-art', 'o.pdf', '/o.pdf', 'pdf', 'new', ?1)",
            [dox_extras],
        )
        .unwrap();
    }
    service
        .upsert(
            &catalogue::ARTIFACT,
            body(json!([{"id": "old-art", "filename": "o.pdf", "filepath": "/o.pdf", "filetype": "pdf",
                         "report_week": null, "status": "new", "source_url": null,
                         "extras": serde_json::from_str::<Value>(dox_extras).unwrap()}])),
        )
        .await
        .unwrap();

    let o = run(
        dir.path(),
        &pg,
        &["capture", "install", "--target", "supabase"],
    );
    assert!(o.status.success(), "{o:?}");
    let port = free_port();
    let mut serve = spawn_reverse(dir.path(), &db, &pg, port);

    // Writes by DoX's own Supabase code (the backend), by PostgREST, by psql.
    let call = |m: &str, a: Value| Call::parse(m, a).unwrap();
    let user = uuid::Uuid::new_v4().to_string();
    for i in 0..20 {
        supa.call(call(
            "add_artifact",
            json!({"artifact": {"id": format!("art-{i}"), "filename": "r.pdf", "filepath": "/r.pdf",
                                "filetype": "pdf", "extras": {"i": i, "b": [true, null]}}}),
        ))
        .await
        .unwrap();
    }
    supa.call(call(
        "update_artifact",
        json!({"artifact_id": "old-art", "status": "processed"}),
    ))
    .await
    .unwrap();
    supa.call(call(
        "set_user_pref",
        json!({"user_id": user, "key": "theme", "value": "dark"}),
    ))
    .await
    .unwrap();
    let mem = uuid::Uuid::new_v4().to_string();
    service
        .upsert(
            &catalogue::CIPHER_MEMORY,
            body(
                json!([{"id": mem, "category": "fact", "content": {"k": "v"}, "context": null,
                         "user_id": user, "created_at": "2025-01-02T03:04:05+00:00"}]),
            ),
        )
        .await
        .unwrap();
    let sql = pg.sql().await;
    sql.batch_execute(
        "update artifacts set status = 'sql' where id in ('art-1', 'art-2');
         delete from artifacts where id = 'art-3';
         insert into skills_registry (id, name, description, parameters, workflow_def, enabled)
         values (gen_random_uuid(), 'skill-a', 'd', '{}', '{\"steps\": []}', true);",
    )
    .await
    .unwrap();

    // kill -9 in the middle, then more writes while it is down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill(&serve, "-KILL");
    let _ = serve.wait();
    for i in 20..40 {
        supa.call(call(
            "add_artifact",
            json!({"artifact": {"id": format!("art-{i}"), "filename": "r.pdf", "filepath": "/r.pdf", "filetype": "pdf"}}),
        ))
        .await
        .unwrap();
    }
    sql.batch_execute("delete from artifacts where id = 'art-4'; update skills_registry set enabled = false where name = 'skill-a';")
        .await
        .unwrap();

    // Another connection holds the file's write lock (DoX's files are WAL: a
    // plain reader never blocks a writer) for longer than the daemon's busy
    // timeout (5 s) after the daemon is back: its batches fail and are retried.
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let locker = {
        let db = db.clone();
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute_batch("BEGIN IMMEDIATE").unwrap();
            held_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(6500));
            c.execute_batch("COMMIT").unwrap();
        })
    };
    held_rx.recv().unwrap();
    serve = spawn_reverse(dir.path(), &db, &pg, port);
    locker.join().unwrap();
    wait_drained(&service, dir.path()).await;

    // /status and /metrics as forward.
    let status: Value = reqwest::get(format!("http://127.0.0.1:{port}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["pending"], json!(0), "{status}");
    assert!(
        status["failures"]["busy"].as_u64() >= Some(1),
        "the locked file made a batch fail: {status}"
    );
    assert_eq!(
        status["rejected_rows"],
        json!({}),
        "a locked file only delays: {status}"
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("artifact"), "{metrics}");
    kill(&serve, "-TERM");
    let _ = serve.wait();

    // verify: EQUAL.
    let lite = SqliteDatabase::open_read_only(&db).await.unwrap();
    let opts = VerifyOptions::new(KeyInfo::of("SUPABASE_SERVICE_KEY", &pg.service_key()));
    let r = verify::run(&lite, &supa, &opts).await.unwrap();
    assert_eq!(
        r.verdict,
        Verdict::Equal,
        "{}\nlog:\n{}",
        verify::render(&r, Format::Text),
        std::fs::read_to_string(dir.path().join("reverse.log")).unwrap_or_default()
    );
    assert_eq!(
        r.totals.source_rows, 42,
        "39 artifacts, a pref, a memory, a skill"
    );

    // The SQLite backend's reads answer as the Supabase backend's.
    for (m, a) in [
        ("get_artifacts", json!({})),
        ("get_user_prefs", json!({"user_id": user})),
        ("search_memory", json!({"q": "v", "user_id": user})),
        ("list_skills", json!({})),
    ] {
        let (x, y) = (
            lite.call(call(m, a.clone())).await.unwrap(),
            supa.call(call(m, a)).await.unwrap(),
        );
        assert_eq!(x, y, "{m}");
    }

    // In DoX's form: the old JSON text byte for byte, Z timestamps, 0/1.
    let c = rusqlite::Connection::open(&db).unwrap();
    let (extras, status): (String, String) = c
        .query_row(
            "SELECT extra_json, status FROM artifact WHERE id = 'old-art'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (extras.as_str(), status.as_str()),
        (dox_extras, "processed")
    );
    let created: String = c
        .query_row(
            "SELECT created_at FROM cipher_memory WHERE id = ?1",
            [&mem],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(created, "2025-01-02T03:04:05Z");
    let enabled: rusqlite::types::Value = c
        .query_row(
            "SELECT enabled FROM skills_registry WHERE name = 'skill-a'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(enabled, rusqlite::types::Value::Integer(0));
    let gone: i64 = c
        .query_row(
            "SELECT count(*) FROM artifact WHERE id IN ('art-3', 'art-4')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(gone, 0);
    drop(c);

    // cutover check --rollback: READY now; NOT READY once Supabase moves on.
    let check = |dir: &Path| {
        run(
            dir,
            &pg,
            &[
                "cutover",
                "check",
                "--rollback",
                "--from-sqlite",
                db.to_str().unwrap(),
            ],
        )
    };
    let o = check(dir.path());
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("rollback: READY"), "{out}");
    sql.batch_execute("update artifacts set status = 'after' where id = 'art-5'")
        .await
        .unwrap();
    let o = check(dir.path());
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(
        out.contains("NOT READY") && out.contains("1 change(s) on Supabase"),
        "{out}"
    );
    assert!(out.contains("artifact: not equal by content"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_sqlite_file_refuses_become_dead_letters_and_the_rest_flows() {
    use dualwrite::backfill::Reject;
    use dualwrite::db::{SqliteDatabase, SqliteOptions};

    needs_stack!();
    let pg = db_with_capture().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.sqlite3");
    drop(
        SqliteDatabase::open(&db, SqliteOptions::default())
            .await
            .unwrap(),
    );
    let service = pg.rest(Duration::from_secs(10));
    let body = |v: Value| serde_json::to_string(&v).unwrap();
    let art = |id: &str, filename: &str| json!({"id": id, "filename": filename, "filepath": "/p", "filetype": "pdf"});
    // The file refuses what Supabase accepts: one filename (insert or update)
    // and the deletion of one row.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TRIGGER refuse_ins BEFORE INSERT ON artifact WHEN NEW.filename = 'refuse' \
             BEGIN SELECT RAISE(ABORT, 'the file refuses this filename'); END;
             CREATE TRIGGER refuse_upd BEFORE UPDATE ON artifact WHEN NEW.filename = 'refuse' \
             BEGIN SELECT RAISE(ABORT, 'the file refuses this filename'); END;
             CREATE TRIGGER keep BEFORE DELETE ON artifact WHEN OLD.id = 'kept' \
             BEGIN SELECT RAISE(ABORT, 'the file keeps this row'); END;
             INSERT INTO artifact (id, filename, filepath, filetype) VALUES ('kept', 'k', '/p', 'pdf');",
        )
        .unwrap();
    }
    service
        .upsert(&catalogue::ARTIFACT, body(json!([art("kept", "k")])))
        .await
        .unwrap();
    let o = run(
        dir.path(),
        &pg,
        &["capture", "install", "--target", "supabase"],
    );
    assert!(o.status.success(), "{o:?}");
    let port = free_port();
    let state = dir.path().join("state");
    let mut serve = spawn_serve(
        dir.path(),
        &db,
        &pg,
        port,
        &[],
        &[
            "--direction",
            "reverse",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );

    // One statement (one log entry) with a refused row among good ones, a
    // refused update, a refused deletion, then more rows behind them.
    let mut rows: Vec<Value> = (0..10).map(|i| art(&format!("ok-{i}"), "f")).collect();
    rows.insert(4, art("bad-1", "refuse"));
    service
        .upsert(&catalogue::ARTIFACT, body(Value::Array(rows)))
        .await
        .unwrap();
    // Drained before the update: the mirror sends the current state, so an
    // insert and a refused update of ok-3 drained together would refuse ok-3
    // whole (and the file would not have it at all).
    wait_drained(&service, dir.path()).await;
    let sql = pg.sql().await;
    sql.batch_execute(
        "update artifacts set filename = 'refuse' where id = 'ok-3';
         delete from artifacts where id = 'kept';",
    )
    .await
    .unwrap();
    let rows: Vec<Value> = (10..15).map(|i| art(&format!("ok-{i}"), "f")).collect();
    service
        .upsert(&catalogue::ARTIFACT, body(Value::Array(rows)))
        .await
        .unwrap();
    wait_drained(&service, dir.path()).await;

    // Everything else landed; the file kept what it refused to change.
    let c = rusqlite::Connection::open(&db).unwrap();
    let mut ids: Vec<String> = c
        .prepare("SELECT id FROM artifact ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    ids.sort();
    let mut want: Vec<String> = (0..15).map(|i| format!("ok-{i}")).collect();
    want.push("kept".into());
    want.sort();
    assert_eq!(ids, want);
    let f: String = c
        .query_row("SELECT filename FROM artifact WHERE id = 'ok-3'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(f, "f");
    drop(c);

    // Dead letters, in the forward rejects' format, with the reason.
    let text = std::fs::read_to_string(state.join("reverse-rejects.ndjson")).unwrap();
    let mut dead: Vec<Reject> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    dead.sort_by(|a, b| a.key.cmp(&b.key));
    let got: Vec<(&str, &str, &str)> = dead
        .iter()
        .map(|r| (r.table.as_str(), r.key.as_str(), r.code.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("artifact", "bad-1", "sqlite_constraint"),
            ("artifact", "kept", "sqlite_constraint"),
            ("artifact", "ok-3", "sqlite_constraint"),
        ],
        "{text}"
    );
    assert!(dead[0].message.contains("refuses this filename"), "{text}");
    assert_eq!(dead[0].row["filename"], json!("refuse"));
    assert!(dead[1].message.contains("keeps this row") && dead[1].row.is_null());

    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("dualwrite_rejected_rows_total{table=\"artifact\"} 3\n"),
        "{metrics}"
    );
    let status: Value = reqwest::get(format!("http://127.0.0.1:{port}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["rejected_rows"]["artifact"], json!(3), "{status}");
    assert_eq!(status["last_error"], Value::Null, "{status}");
    kill(&serve, "-TERM");
    let _ = serve.wait();

    // The rollback check names the dead letters as the reason.
    let rejects = state.join("reverse-rejects.ndjson");
    let o = run(
        dir.path(),
        &pg,
        &[
            "cutover",
            "check",
            "--rollback",
            "--from-sqlite",
            db.to_str().unwrap(),
            "--rejects",
            rejects.to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    let report: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"));
    assert_eq!(o.status.code(), Some(3), "{report}");
    assert_eq!(report["dead_letters"]["records"], json!(3), "{report}");
    assert_eq!(report["dead_letters"]["left"], json!(3), "{report}");
    assert!(
        report["reasons"].as_array().unwrap().iter().any(|r| r
            .as_str()
            .unwrap()
            .contains("3 row(s) the SQLite file refused")),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_backend_supabase_with_dual_write_makes_serve_and_status_reverse() {
    use dualwrite::db::{SqliteDatabase, SqliteOptions};

    needs_stack!();
    let pg = db_with_capture().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dox.sqlite3");
    drop(
        SqliteDatabase::open(&db, SqliteOptions::default())
            .await
            .unwrap(),
    );
    let service = pg.rest(Duration::from_secs(10));
    let supabase_primary = [("DB_BACKEND", "supabase"), ("SUPABASE_DUAL_WRITE", "true")];

    // Supabase primary without dual write: no copy is configured; say so.
    let o = run_with(
        dir.path(),
        &pg,
        &[("DB_BACKEND", "supabase"), ("SUPABASE_DUAL_WRITE", "false")],
        &["serve", "--listen", "127.0.0.1:0"],
    );
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("SUPABASE_DUAL_WRITE=true") && err.contains("--direction reverse"),
        "{err}"
    );
    // An explicit --direction wins, with a warning: forward here, which then
    // stops because the file has no forward capture.
    let o = run_with(
        dir.path(),
        &pg,
        &supabase_primary,
        &["serve", "--direction", "forward", "--listen", "127.0.0.1:0"],
    );
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--direction forward overrides the configuration (DB_BACKEND=supabase, dual write on: direction reverse)")
            && err.contains("capture is not installed"),
        "{err}"
    );

    // No --direction: the configuration makes it reverse.
    let o = run(
        dir.path(),
        &pg,
        &["capture", "install", "--target", "supabase"],
    );
    assert!(o.status.success(), "{o:?}");
    let body = |v: Value| serde_json::to_string(&v).unwrap();
    service
        .upsert(
            &catalogue::ARTIFACT,
            body(json!([{"id": "cfg-1", "filename": "f", "filepath": "/p", "filetype": "pdf"}])),
        )
        .await
        .unwrap();
    // status, before the daemon: the Supabase log's backlog.
    // Exit 0 only while a daemon drains, ready; 3 otherwise, with the reasons.
    let status = |dir: &Path, code: i32| -> Value {
        let o = run_with(dir, &pg, &supabase_primary, &["status", "--json"]);
        assert_eq!(o.status.code(), Some(code), "{o:?}");
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let st = status(dir.path(), 3);
    assert!(
        st["problems"][0]
            .as_str()
            .unwrap()
            .contains("no daemon is running"),
        "{st}"
    );
    assert_eq!(
        (
            &st["direction"],
            &st["pending"],
            &st["pending_estimated"],
            &st["daemon_running"]
        ),
        (&json!("reverse"), &json!(1), &json!(false), &json!(false)),
        "{st}"
    );
    assert!(st["lag_seconds"].as_f64().unwrap() >= 0.0, "{st}");
    let o = run_with(dir.path(), &pg, &supabase_primary, &["status"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("capture on Supabase: complete")
            && text.contains("pending changes: 1")
            && text.contains("healthy: NO"),
        "{text}"
    );

    let port = free_port();
    let mut serve = spawn_serve(dir.path(), &db, &pg, port, &supabase_primary, &[]);
    wait_drained(&service, dir.path()).await;
    let c = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = c
        .query_row(
            "SELECT count(*) FROM artifact WHERE id = 'cfg-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1, "the reverse mirror wrote the row");
    drop(c);
    // Healthy once the daemon has reported (every second).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while run_with(dir.path(), &pg, &supabase_primary, &["status"])
        .status
        .code()
        != Some(0)
    {
        assert!(std::time::Instant::now() < deadline, "never healthy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let st = status(dir.path(), 0);
    assert_eq!(
        (&st["pending"], &st["daemon_running"]),
        (&json!(0), &json!(true)),
        "{st}"
    );
    kill(&serve, "-TERM");
    let _ = serve.wait();
    let log = std::fs::read_to_string(dir.path().join("reverse.log")).unwrap_or_default();
    assert!(!log.contains("overrides"), "{log}");
}

#[tokio::test]
async fn the_backlog_is_exact_while_small_and_estimated_from_the_seq_span_beyond() {
    needs_stack!();
    let pg = db_with_capture().await;
    let service = pg.rest(Duration::from_secs(10));
    rc::enable(&service).await.unwrap();
    let backlog = |up_to: i64| {
        let service = &service;
        async move {
            service
                .rpc(
                    "dualwrite_changes_backlog",
                    &json!({ "exact_up_to": up_to }),
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(
        backlog(100).await,
        json!({"pending": 0, "estimated": false, "oldest_at": null})
    );
    // 8 one-row statements, one of three rows: 9 entries, 11 keys.
    let sql = pg.sql().await;
    for i in 0..8 {
        sql.execute(
            "insert into user_prefs (user_id, preferences) values ($1, '{}')",
            &[&format!("bk-{i}")],
        )
        .await
        .unwrap();
    }
    sql.batch_execute(
        "insert into user_prefs (user_id, preferences) values ('bk-a', '{}'), ('bk-b', '{}'), ('bk-c', '{}')",
    )
    .await
    .unwrap();
    let b = backlog(100).await;
    assert_eq!(
        (&b["pending"], &b["estimated"]),
        (&json!(11), &json!(false)),
        "{b}"
    );
    assert!(b["oldest_at"].is_string(), "{b}");
    // Beyond the bound: the seq span times the keys per entry of the head.
    let b = backlog(4).await;
    assert_eq!(
        (&b["pending"], &b["estimated"]),
        (&json!(11), &json!(true)),
        "{b}"
    );
    // The capture state and the CLI read the same figures.
    let st = rc::state(&service).await.unwrap();
    assert_eq!((st.pending, st.estimated), (11, false));
    assert_eq!(
        rc::backlog(&service).await.unwrap(),
        rc::Backlog {
            pending: 11,
            estimated: false,
            oldest_at: st.oldest_at.clone()
        }
    );
    // Acknowledged entries leave the estimate too.
    let rows = service
        .rpc("dualwrite_changes", &json!({"max_rows": 8}))
        .await
        .unwrap();
    let seqs: Vec<i64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    service
        .rpc("dualwrite_changes_ack", &json!({ "seqs": seqs }))
        .await
        .unwrap();
    for up_to in [100, 1] {
        let b = backlog(up_to).await;
        assert_eq!(b["pending"], json!(3), "{b}");
    }
}

/// dualwrite's own copies of the file's rows (a backfill, its reset, an app's
/// dual write with SQLite primary, the forward daemon) are not logged by
/// capture on Supabase, so the reverse mirror never sends the file its own
/// rows back; any other write still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dualwrites_copies_of_the_file_are_not_logged_by_capture_on_supabase() {
    needs_stack!();
    let pg = db_with_capture().await;
    let dir = tempfile::tempdir().unwrap();
    let service = pg.rest(Duration::from_secs(10));
    let o = run(
        dir.path(),
        &pg,
        &["capture", "install", "--target", "supabase"],
    );
    assert!(o.status.success(), "{o:?}");
    let count = |sb: &RestClient, table: &'static str| {
        let sb = sb.clone();
        async move {
            sb.select_page(table, "id", &[], "id", None, 100_000)
                .await
                .unwrap()
                .len()
        }
    };

    // A backfill, then the same with --reset (TRUNCATE through rpc/dualwrite_reset).
    let src = dir.path().join("src.sqlite3");
    let o = run(
        dir.path(),
        &pg,
        &[
            "fixtures",
            "generate",
            "--rows",
            "2000",
            "--seed",
            "5",
            "--out",
            src.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{o:?}");
    for extra in [&[][..], &["--reset", "--yes"][..]] {
        let mut args = vec!["backfill", "--from-sqlite", src.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let o = run(dir.path(), &pg, &args);
        assert!(matches!(o.status.code(), Some(0 | 3)), "{o:?}");
        let r: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(r["rows_written"].as_u64().unwrap() > 1000, "{r}");
        assert!(count(&service, "artifacts").await > 0);
        let queued = pending(&service).await;
        assert!(
            queued.is_empty(),
            "{extra:?}: {} queued for reverse, e.g. {:?}",
            queued.len(),
            queued.first()
        );
    }

    // An app's dual write with SQLite primary, mirrored inline ...
    let dual = [("SUPABASE_DUAL_WRITE", "true"), ("DB_BACKEND", "sqlite")];
    let tag = |id: &str| format!(r#"{{"tag": {{"id": "{id}", "document_id": "d", "tag": "x"}}}}"#);
    let o = run_with(
        dir.path(),
        &pg,
        &dual,
        &["call", "add_tag", "--args", &tag("t-inline")],
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    // ... and, with capture on the file, by the forward daemon.
    let o = run(dir.path(), &pg, &["capture", "install"]);
    assert!(o.status.success(), "{o:?}");
    let o = run_with(
        dir.path(),
        &pg,
        &dual,
        &["call", "add_tag", "--args", &tag("t-daemon")],
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let db = dir.path().join("dox.sqlite3");
    let port = free_port();
    let _serve = spawn_serve(dir.path(), &db, &pg, port, &[], &["--direction", "forward"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = service
            .select_page(
                "tags",
                "id",
                &[("id", Some("t-daemon".to_owned()))],
                "id",
                None,
                5,
            )
            .await
            .unwrap();
        if !rows.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not send t-daemon"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let queued = pending(&service).await;
    assert!(queued.is_empty(), "dual write or daemon: {queued:?}");

    // Any other write is logged: the same client without the marker.
    service
        .upsert(
            &catalogue::TAGROW,
            serde_json::to_string(&json!([{"id": "t-app", "document_id": "d", "tag": "y"}]))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(pending(&service).await, vec![change("tags", "t-app", "I")]);
}

//! The daemon's faults, one test each, against the real stack with real
//! processes: a lock really held, a filesystem really full, a table really
//! re-created, PostgREST really stopped with SIGSTOP, a slow Supabase behind a
//! real delaying proxy, a real nginx in front. In each, either the rows arrive
//! with their final content once the fault ends (verify EQUAL) or the daemon
//! exits non-zero with the cause; and while the fault lasts the signals say so:
//! `/ready` 503, `dualwrite status` exit 3, `dualwrite_lag_seconds` the real
//! age of the oldest pending change, a WARN naming the cause. Never "pending
//! 0, lag 0" while changes wait.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::harness::{free_port, PrivateDb, Proxy, Spawned};
use crate::serve::{
    assert_equal, assert_verify_equal, bin, captured_file, env_for, get, pending, ready_within,
    run, run_with, spawn_serve_with, supabase_tags, tag_write, tags_in, wait_drained, wait_http,
};

/// A value of `/metrics` (the first sample of `name`, labels included in it).
async fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, text) = get(port, "/metrics").await;
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `dualwrite status --json`: its exit code and its report.
fn status(db: &Path, pg: &PrivateDb) -> (i32, Value) {
    let o = run(db, pg, &["status", "--json"]);
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code().unwrap_or(-1), v)
}

fn serve_log(db: &Path) -> String {
    std::fs::read_to_string(db.with_extension("serve.log")).unwrap_or_default()
}

fn secs_since(t: SystemTime) -> f64 {
    t.elapsed().unwrap().as_secs_f64()
}

/// What the signals must say while a fault lasts, checked once: not ready,
/// status non-zero, the changes counted, the lag the real age of the oldest
/// (`since`) within 2 s, the daemon's WARN naming `cause`.
async fn assert_signals_tell(db: &Path, pg: &PrivateDb, port: u16, since: SystemTime, cause: &str) {
    let (code, body) = ready_within(port, 503, 20).await;
    assert_eq!(code, 503, "/ready while the fault lasts: {body}");
    let (code, st) = status(db, pg);
    assert_eq!(code, 3, "dualwrite status while the fault lasts: {st}");
    assert!(!st["problems"].as_array().unwrap().is_empty(), "{st}");
    let pending_metric = metric(port, "dualwrite_pending_changes").await.unwrap();
    assert!(pending_metric > 0.0, "pending 0 while changes wait");
    assert_eq!(
        pending_metric as i64,
        pending(db),
        "pending is read from the log"
    );
    let lag = metric(port, "dualwrite_lag_seconds").await.unwrap();
    let real = secs_since(since);
    assert!(
        (lag - real).abs() < 2.0,
        "dualwrite_lag_seconds {lag} while the oldest change is {real:.1} s old"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !serve_log(db)
        .lines()
        .any(|l| l.contains("WARN") && l.contains(cause))
    {
        assert!(
            Instant::now() < deadline,
            "no WARN naming `{cause}` in the daemon's log:\n{}",
            serve_log(db)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A DoX file as DoX's bootstrap makes it, and capture on Supabase: the
/// reverse direction's start. Returns the file.
async fn reverse_setup(dir: &Path, pg: &PrivateDb, url: &str) -> std::path::PathBuf {
    let db = dir.join("dox.sqlite3");
    drop(
        dualwrite::db::SqliteDatabase::open(&db, dualwrite::db::SqliteOptions::default())
            .await
            .unwrap(),
    );
    let o = run_with(
        &db,
        pg,
        &[("DUALWRITE_REST_URL", url)],
        &["capture", "install", "--target", "supabase"],
    );
    assert!(o.status.success(), "{o:?}");
    db
}

/// `dualwrite serve --direction reverse` on `db` through `url`, its log in
/// `<db>.serve.log`, with `env` and `extra` arguments.
fn spawn_reverse(
    db: &Path,
    pg: &PrivateDb,
    url: &str,
    port: u16,
    env: &[(&str, &str)],
    extra: &[&str],
) -> Spawned {
    let mut c = bin();
    env_for(&mut c, db, pg);
    let log = std::fs::File::create(db.with_extension("serve.log")).unwrap();
    Spawned(
        c.env("DUALWRITE_REST_URL", url)
            .envs(env.iter().copied())
            .current_dir(db.parent().unwrap())
            .args([
                "serve",
                "--direction",
                "reverse",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    )
}

/// `dualwrite` with `args` on `db`, which must end by itself within 10 s (a
/// refusal): its exit code and what it said.
async fn refused(db: &Path, pg: &PrivateDb, args: &[&str]) -> (Option<i32>, String) {
    refused_with(db, pg, &[], args).await
}

/// [`refused`], with `env` set.
async fn refused_with(
    db: &Path,
    pg: &PrivateDb,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Option<i32>, String) {
    let mut c = bin();
    env_for(&mut c, db, pg);
    let mut serve = Spawned(
        c.current_dir(db.parent().unwrap())
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while serve.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "`dualwrite {}` runs instead of refusing",
            args.join(" ")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut err = String::new();
    std::io::Read::read_to_string(serve.stderr.as_mut().unwrap(), &mut err).unwrap();
    (serve.wait().unwrap().code(), err)
}

/// Rows in a table of the file.
fn count_in(db: &Path, table: &str) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn artifact_sql(id: &str) -> String {
    format!(
        "INSERT INTO artifact (id, filename, filepath, filetype, report_week, status, source_url, extra_json) \
         VALUES ('{id}', 'r.pdf', '/data/r.pdf', 'pdf', '2024-W01', 'new', NULL, '{{}}')"
    )
}

/// The app holds the file's write lock (`BEGIN IMMEDIATE`) for longer than the
/// daemon's busy timeout, right after committing 60 rows: the daemon's
/// acknowledgements fail with "database is locked" and are tried again; it
/// never stops draining, and says so while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_past_the_busy_timeout_is_waited_out_and_told() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let port = free_port();
    let _serve = spawn_serve_with(&db, &pg, port, &["--max-lag-secs", "3", "--poll-ms", "100"]);
    wait_http(port).await;
    let since = SystemTime::now();
    let locker = {
        let db = db.to_path_buf();
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            c.execute_batch("BEGIN IMMEDIATE").unwrap();
            for i in 0..60 {
                c.execute(&artifact_sql(&format!("held-{i}")), []).unwrap();
            }
            c.execute_batch("COMMIT; BEGIN IMMEDIATE").unwrap();
            std::thread::sleep(Duration::from_secs(12));
            c.execute_batch("COMMIT").unwrap();
        })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_signals_tell(&db, &pg, port, since, "database is locked").await;
    locker.join().unwrap();
    wait_drained(&db, Duration::from_secs(30)).await;
    let (code, body) = ready_within(port, 200, 20).await;
    assert_eq!(code, 200, "ready again once the lock is gone: {body}");
    assert_equal(&db, &pg).await;
}

/// A filesystem that really fills: a small tmpfs mounted as the state
/// directory, full when a row must become a dead letter. Writing it fails
/// with ENOSPC: the daemon exits non-zero with the cause, instead of staying
/// up with nothing draining. Nothing is lost: started again with room, it
/// drains everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_directory_ends_the_daemon_with_the_cause() {
    needs_stack!();
    let uid = Command::new("id").arg("-u").output().unwrap().stdout;
    if String::from_utf8_lossy(&uid).trim() != "0" {
        eprintln!("note: a_full_state_directory_ends_the_daemon_with_the_cause needs root to mount a tmpfs; skipped");
        return;
    }
    struct Mounted(std::path::PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(st.success(), "mount a tmpfs on {}", state.display());
    let _mounted = Mounted(state.clone());
    // Fill it.
    let filler = state.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let port = free_port();
    let state_arg = state.display().to_string();
    let mut serve = spawn_serve_with(&db, &pg, port, &["--state-dir", &state_arg]);
    wait_http(port).await;
    // A row Supabase cannot hold (a NUL in text): a dead letter, to be written.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute(&artifact_sql("fine-1"), []).unwrap();
    c.execute(
        "INSERT INTO artifact (id, filename, filepath, filetype) VALUES ('bad-nul', 'a' || char(0) || 'b', '/p', 'pdf')",
        [],
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = serve.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon is still up:\n{}",
            serve_log(&db)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!exit.success(), "{exit:?}");
    let log = serve_log(&db);
    assert!(
        log.contains("No space left on device") && log.contains("rejects.ndjson"),
        "the cause, with the file: {log}"
    );
    assert!(
        get(port, "/health").await.0 != 200,
        "nothing answers for a dead daemon"
    );
    let (code, st) = status(&db, &pg);
    assert_eq!(code, 3, "{st}");
    assert!(
        st["problems"][0]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "status tells why the daemon exited: {st}"
    );
    // Room again: it drains what waited; the dead letter is written.
    std::fs::remove_file(&filler).unwrap();
    let _serve = spawn_serve_with(&db, &pg, port, &["--state-dir", &state_arg]);
    wait_drained(&db, Duration::from_secs(30)).await;
    let rejects = std::fs::read_to_string(state.join("rejects.ndjson")).unwrap();
    assert!(rejects.contains("bad-nul"), "{rejects}");
    c.execute("DELETE FROM artifact WHERE id = 'bad-nul'", [])
        .unwrap();
    wait_drained(&db, Duration::from_secs(30)).await;
    assert_verify_equal(&db, &pg).await;
}

/// The app re-creates a table the standard 12-step way (what Alembic's batch
/// mode does) while it writes: the triggers go with the old table, so nothing
/// written to the new one is logged until they are back. The daemon notices
/// the schema change at its next poll, re-installs them and re-sends the
/// table: its rows, and the deletion of a row removed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_recreated_under_load_is_resent_whole() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let port = free_port();
    // The daily trigger check is far away: only the schema change can tell.
    let _serve = spawn_serve_with(&db, &pg, port, &["--check-secs", "3600"]);
    wait_http(port).await;
    let c = rusqlite::Connection::open(&db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let log_row = |id: &str| {
        format!(
            "INSERT INTO logentry (id, document_id, ts, level, code, component, message, attrs_json) \
             VALUES ('{id}', 'd', '2024-01-01T00:00:00Z', 'INFO', 'C', 'p', 'm', '{{}}')"
        )
    };
    c.execute(&log_row("before-1"), []).unwrap();
    c.execute(&log_row("gone-later"), []).unwrap();
    wait_drained(&db, Duration::from_secs(20)).await;
    let sql: String = c
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'logentry'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // Another writer keeps writing another table meanwhile.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.execute(&artifact_sql(&format!("load-{n}")), []).unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let new_sql = sql.replacen("logentry", "logentry_new", 1);
    c.execute_batch(&format!(
        "PRAGMA foreign_keys = OFF; BEGIN IMMEDIATE; {new_sql}; \
         INSERT INTO logentry_new SELECT * FROM logentry; DROP TABLE logentry; \
         ALTER TABLE logentry_new RENAME TO logentry; COMMIT;"
    ))
    .unwrap();
    // Right after the re-create: a deletion and 100 inserts over 5 s.
    c.execute("DELETE FROM logentry WHERE id = 'gone-later'", [])
        .unwrap();
    for i in 0..100 {
        c.execute(&log_row(&format!("after-{i}")), []).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    wait_drained(&db, Duration::from_secs(30)).await;
    let rows = pg
        .rest(Duration::from_secs(5))
        .select_page("log_entries", "id", &[], "id", None, 1000)
        .await
        .unwrap();
    let ids: Vec<&str> = rows.iter().filter_map(|r| r["id"].as_str()).collect();
    let after = ids.iter().filter(|i| i.starts_with("after-")).count();
    assert_eq!(
        after,
        100,
        "rows written after the re-create: {after} of 100 on Supabase; daemon log:\n{}",
        serve_log(&db)
    );
    assert!(
        !ids.contains(&"gone-later"),
        "a row deleted meanwhile is deleted on Supabase"
    );
    let log = serve_log(&db);
    assert!(log.contains("re-installing them"), "{log}");
    assert_equal(&db, &pg).await;
}

/// The app's own Supabase is slow (a real delaying proxy: 1.5 s, under the 2 s
/// mirror timeout) while another connection updates the same rows and `serve`
/// mirrors them. An inline mirror of the older version would land last and
/// stay for good with nothing pending: with capture the embedded layer leaves
/// every write to the drainer, so every row ends with its final content. A
/// process that ends right after its write (`call`) loses nothing either, and
/// the search index (Supabase only, no change log) is still mirrored inline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_embedded_mirror_never_overwrites_a_newer_row_the_daemon_sent() {
    use dualwrite::db::{Database, DualDatabase, SqliteDatabase, SqliteOptions};
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let port = free_port();
    let _serve = spawn_serve_with(&db, &pg, port, &["--poll-ms", "50"]);
    wait_http(port).await;
    let upstream = pg.url.trim_start_matches("http://").to_owned();
    let slow = Proxy::start(&upstream, Duration::from_millis(1500)).await;
    let app = DualDatabase::new(
        SqliteDatabase::open(&db, SqliteOptions::default())
            .await
            .unwrap(),
        dualwrite::db::SupabaseDatabase::new(
            dualwrite::db::RestClient::new(&dualwrite::db::RestConfig {
                url: slow.url.clone(),
                key: secrecy::SecretString::from(pg.service_key()),
                user_jwt: None,
                schema: "public".into(),
                timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(2),
            })
            .unwrap(),
        ),
        Duration::from_secs(2),
        100,
    );
    let keys: Vec<String> = (0..10).map(|i| format!("race-{i}")).collect();
    let other = {
        let (db, keys) = (db.clone(), keys.clone());
        std::thread::spawn(move || {
            // Another connection (another process of the app): v2 of each row,
            // while the first writer's mirrors would be in the proxy.
            std::thread::sleep(Duration::from_millis(300));
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            for k in &keys {
                c.execute("UPDATE tagrow SET tag = 'v2' WHERE id = ?1", [k])
                    .unwrap();
            }
        })
    };
    let writes = keys.iter().map(|k| app.apply(tag_write(k, "v1")));
    for r in futures::future::join_all(writes).await {
        r.unwrap();
    }
    other.join().unwrap();
    let st = app.stats();
    assert_eq!(
        (st.mirrored, st.left_to_drainer, st.failed),
        (0, 10, 0),
        "{st:?}"
    );
    // The search index lives in Supabase only: mirrored inline, as always.
    let chunks = dualwrite::model::Call::parse(
        "store_search_chunks",
        json!({"chunks": [{"id": "md:race:1", "text": "t", "meta": {"type": "pdf"}, "embedding": [0.1, 0.2]}]}),
    )
    .unwrap();
    let dualwrite::model::Call::Write(chunks) = chunks else {
        panic!("a write")
    };
    app.apply(chunks).await.unwrap();
    assert_eq!(app.stats().mirrored, 1);
    // `dualwrite call`: one process per write, which exits at once.
    let o = run_with(
        &db,
        &pg,
        &[("SUPABASE_DUAL_WRITE", "true")],
        &[
            "call",
            "add_tag",
            "--args",
            "{\"tag\": {\"id\": \"t-call\", \"document_id\": \"d\", \"tag\": \"c\"}}",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Anything still in the proxy has landed before we look.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    wait_drained(&db, Duration::from_secs(20)).await;
    let rows = supabase_tags(&pg).await;
    for k in &keys {
        assert_eq!(tags_in(&rows, k).as_deref(), Some("v2"), "{k}: {rows:?}");
    }
    assert_eq!(tags_in(&rows, "t-call").as_deref(), Some("c"));
    drop(app);
    assert_verify_equal(&db, &pg).await;
}

/// 300 UUID-keyed rows pending in the reverse direction, read back through a
/// real nginx gateway: the rows are read in requests whose URL stays short
/// (a list of 200 UUIDs is a 414 there, on every retry, for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_uuid_keys_pending_in_reverse_drain_through_nginx() {
    use dualwrite::catalogue;
    needs_stack!();
    let pg = PrivateDb::new().await;
    let gw = pg.gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let db = reverse_setup(dir.path(), &pg, &gw.rest_url()).await;
    let rows: Vec<Value> = (0..300)
        .map(|_| {
            json!({"id": uuid::Uuid::new_v4().to_string(), "filename": "f", "filepath": "/p", "filetype": "pdf"})
        })
        .collect();
    pg.rest(Duration::from_secs(10))
        .upsert(&catalogue::ARTIFACT, serde_json::to_string(&rows).unwrap())
        .await
        .unwrap();
    let port = free_port();
    let _serve = spawn_reverse(
        &db,
        &pg,
        &gw.rest_url(),
        port,
        &[],
        &["--max-wait-secs", "3"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_in(&db, "artifact") < 300 {
        assert!(
            Instant::now() < deadline,
            "{} of 300 rows in the file; daemon log:\n{}\ngateway:\n{}",
            count_in(&db, "artifact"),
            serve_log(&db),
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, body) = ready_within(port, 200, 10).await;
    assert_eq!(code, 200, "{body}");
    let o = run_with(
        &db,
        &pg,
        &[
            // Through the gateway by its project URL, as a Supabase client.
            ("DUALWRITE_REST_URL", ""),
            ("SUPABASE_URL", &gw.url),
            ("SUPABASE_TIMEOUT", "10"),
        ],
        &[
            "verify",
            "--direction",
            "reverse",
            "--from-sqlite",
            &db.display().to_string(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

/// In one SQLite transaction, skill A gives up its name and skill B takes it:
/// a valid final state. Sent in one batch, B's row is refused by Supabase's
/// unique index until A's has landed; it is tried again after the rest of the
/// batch, and lands. Nothing goes to the rejects file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_value_moved_between_rows_in_one_transaction_lands() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let port = free_port();
    let _serve = spawn_serve_with(&db, &pg, port, &[]);
    wait_http(port).await;
    let mut c = rusqlite::Connection::open(&db).unwrap();
    let skill = |id: &str, name: &str| {
        format!(
            "INSERT INTO skills_registry (id, name, description, parameters_json, workflow_def_json, enabled, created_at) \
             VALUES ('{id}', '{name}', 'd', '{{}}', '{{}}', 1, '2024-01-01T00:00:00Z')"
        )
    };
    // A sorts after B, so B comes first in the batch's request.
    c.execute(&skill("skill-z-a", "extract_tables"), [])
        .unwrap();
    wait_drained(&db, Duration::from_secs(20)).await;
    let tx = c.transaction().unwrap();
    tx.execute(
        "UPDATE skills_registry SET name = 'extract_tables_v1' WHERE id = 'skill-z-a'",
        [],
    )
    .unwrap();
    tx.execute(&skill("skill-a-b", "extract_tables"), [])
        .unwrap();
    tx.commit().unwrap();
    wait_drained(&db, Duration::from_secs(20)).await;
    let rows = pg
        .rest(Duration::from_secs(5))
        .select_page("skills_registry", "id,name", &[], "id", None, 10)
        .await
        .unwrap();
    let got: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().into(),
                r["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("skill-a-b".to_owned(), "extract_tables".to_owned()),
            ("skill-z-a".to_owned(), "extract_tables_v1".to_owned())
        ]
    );
    let rejected = metric(port, "dualwrite_rejected_rows_total").await;
    assert_eq!(rejected, None, "no dead letter");
    assert_verify_equal(&db, &pg).await;
}

/// PostgREST hung (SIGSTOP) with 1,500 changes pending: every request times
/// out. A timeout is a failure, counted and shown at once (it used to halve
/// the batch again and again, each half a full timeout, with /ready green and
/// pending 0; now at most twice, each counted); once PostgREST runs again,
/// everything drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_postgrest_is_a_failure_counted_and_shown_while_it_lasts() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let port = free_port();
    let _serve = spawn_serve_with(&db, &pg, port, &["--max-lag-secs", "5"]);
    wait_http(port).await;
    pg.pause(true);
    let since = SystemTime::now();
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("BEGIN").unwrap();
    for i in 0..1500 {
        c.execute(&artifact_sql(&format!("hung-{i:04}")), [])
            .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_signals_tell(&db, &pg, port, since, "did not answer").await;
    let timeouts = metric(port, "dualwrite_mirror_failures_total{kind=\"timeout\"}")
        .await
        .unwrap_or(0.0);
    assert!(timeouts >= 1.0, "timeouts are counted: {timeouts}");
    let (_, body) = get(port, "/ready").await;
    assert!(body.contains("timeout"), "{body}");
    // Still hung a while longer: the lag keeps up with the real age.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lag = metric(port, "dualwrite_lag_seconds").await.unwrap();
    assert!((lag - secs_since(since)).abs() < 2.0, "lag {lag}");
    pg.pause(false);
    wait_drained(&db, Duration::from_secs(60)).await;
    let (code, body) = ready_within(port, 200, 20).await;
    assert_eq!(code, 200, "{body}");
    assert_equal(&db, &pg).await;
}

/// One daemon per file, whatever path names it: a symlink, or `..` in the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_is_refused_through_a_symlink_or_another_path() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let port = free_port();
    let _serve = spawn_serve_with(&db, &pg, port, &[]);
    wait_http(port).await;
    let link = dir.path().join("link.sqlite3");
    std::os::unix::fs::symlink(&db, &link).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let dotted = dir.path().join("sub/../app.sqlite3");
    for other in [&link, &dotted] {
        let listen = format!("127.0.0.1:{}", free_port());
        let (code, err) = refused(other, &pg, &["serve", "--listen", &listen]).await;
        assert_ne!(code, Some(0), "through {}", other.display());
        assert!(err.contains("already running"), "{err}");
        // `status` through the other path finds the daemon and its report.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (code, st) = status(other, &pg);
            if code == 0 && st["daemon_running"] == json!(true) {
                break;
            }
            assert!(Instant::now() < deadline, "{code}: {st}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The daemon's report and endpoint tell only whom they should: the status
/// file is the owner's alone, a listen address that is not loopback needs an
/// explicit choice, and the daemon's errors do not say what a backfill's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_file_is_private_and_a_public_listen_address_is_a_choice() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let listen = format!("0.0.0.0:{}", free_port());
    let (code, err) = refused(&db, &pg, &["serve", "--listen", &listen]).await;
    assert_eq!(code, Some(2));
    assert!(
        err.contains("not a loopback address") && err.contains("--listen-public"),
        "{err}"
    );
    // The same address from the environment (`serve` is configured as the
    // rest is), and the flag winning over it.
    let env = [("DUALWRITE_SERVE_LISTEN", listen.as_str())];
    let (code, err) = refused_with(&db, &pg, &env, &["serve"]).await;
    assert_eq!(code, Some(2));
    assert!(err.contains(&listen), "{err}");
    let loopback = format!("127.0.0.1:{}", free_port());
    let env = [("DUALWRITE_SERVE_LISTEN", loopback.as_str())];
    let (code, err) = refused_with(&db, &pg, &env, &["serve", "--listen", &listen]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&listen), "{err}");
    let port = free_port();
    let _serve = spawn_serve_with(&db, &pg, port, &["--max-lag-secs", "3"]);
    wait_http(port).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let path = dualwrite::serve::status_file_path(&db);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    // A failing Supabase: the daemon's words are its own.
    let mut pg = pg;
    pg.stop();
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(&artifact_sql("x"), [])
        .unwrap();
    let (code, _) = ready_within(port, 503, 20).await;
    assert_eq!(code, 503);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = serve_log(&db);
    assert!(!log.contains("run the same command again"), "{log}");
    assert!(log.contains("the changes stay in the log"), "{log}");
    pg.start().await;
    wait_drained(&db, Duration::from_secs(30)).await;
}

/// The reverse daemon speaks systemd's protocol as the forward one does:
/// `READY=1` once it serves, `STOPPING=1` on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reverse_daemon_tells_systemd_when_it_is_ready() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = reverse_setup(dir.path(), &pg, &pg.url).await;
    let sock = dir.path().join("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let sock_env = sock.display().to_string();
    let serve = spawn_reverse(
        &db,
        &pg,
        &pg.url,
        free_port(),
        &[("NOTIFY_SOCKET", &sock_env)],
        &[],
    );
    let mut buf = [0u8; 64];
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// Capture's triggers gone from a Supabase table while capture is on there (a
/// migration that re-creates the table takes them with it; dropped here, the
/// same for the daemon): nothing written to it meanwhile is logged. The
/// reverse daemon's check finds them missing and switches capture on again,
/// which re-installs them and, in the same transaction, queues every key the
/// table holds: the rows written meanwhile reach the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supabase_table_that_lost_its_triggers_is_resent_to_the_file() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = reverse_setup(dir.path(), &pg, &pg.url).await;
    let port = free_port();
    let _serve = spawn_reverse(&db, &pg, &pg.url, port, &[], &["--check-secs", "1"]);
    wait_http(port).await;
    let sql = pg.sql().await;
    sql.batch_execute(
        "DROP TRIGGER dualwrite_capture_ins ON public.log_entries; \
         DROP TRIGGER dualwrite_capture_upd ON public.log_entries; \
         DROP TRIGGER dualwrite_capture_del ON public.log_entries; \
         INSERT INTO public.log_entries (id, document_id, message) \
         SELECT 'unlogged-' || i, 'd', 'm' FROM generate_series(1, 20) i;",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_in(&db, "logentry") < 20 {
        assert!(
            Instant::now() < deadline,
            "{} of 20 rows in the file; daemon log:\n{}",
            count_in(&db, "logentry"),
            serve_log(&db)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        serve_log(&db).contains("re-installing them"),
        "{}",
        serve_log(&db)
    );
    let o = run(
        &db,
        &pg,
        &[
            "verify",
            "--direction",
            "reverse",
            "--from-sqlite",
            &db.display().to_string(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

//! The safety review (issue 9): each test reproduces one way the code could
//! lose rows, diverge silently, stall or leak, against the real stack.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use dualwrite::catalogue;
use dualwrite::db::{Database, SupabaseDatabase};
use dualwrite::model::Write;

use crate::harness::{stack, temp_sqlite, unique, PrivateDb};

fn shared_supabase() -> SupabaseDatabase {
    SupabaseDatabase::new(stack().service_client())
}

/// A repeated key inside one write: SQLite keeps the last row; PostgREST used
/// to refuse the whole upsert (21000) after the delete step had already run.
#[tokio::test]
async fn a_key_repeated_inside_one_write_lands_once_last_wins_on_both_sides() {
    needs_stack!();
    let (_dir, sqlite) = temp_sqlite().await;
    let supabase = shared_supabase();
    let doc = unique("doc");
    let (e1, m1, c1) = (unique("ent"), unique("metric"), unique("chunk"));
    let writes = || {
        vec![
            Write::from_call(
                "store_entities",
                json!({"document_id": doc, "entities": [
                    {"id": e1, "label": "ORG", "text": "first"},
                    {"id": e1, "label": "ORG", "text": "last"}]}),
            )
            .unwrap(),
            Write::from_call(
                "store_metric_hits",
                json!({"document_id": doc, "metrics": [
                    {"id": m1, "type": "revenue", "value": "1"},
                    {"id": m1, "type": "revenue", "value": "2"}]}),
            )
            .unwrap(),
            Write::from_call(
                "store_search_chunks",
                json!({"chunks": [
                    {"id": c1, "text": "first", "meta": {"artifact_id": doc}, "embedding": [0.1]},
                    {"id": c1, "text": "last", "meta": {"artifact_id": doc}, "embedding": [0.2]}]}),
            )
            .unwrap(),
        ]
    };
    for w in writes() {
        sqlite.apply(w).await.unwrap();
    }
    for w in writes() {
        supabase.apply(w).await.unwrap();
    }
    for (table, key, col, want) in [
        (&catalogue::DOCUMENT_ENTITIES, &e1, "text", json!("last")),
        (&catalogue::DOCUMENT_METRIC_HITS, &m1, "value", json!("2")),
        (&catalogue::SEARCH_CHUNKS, &c1, "text", json!("last")),
    ] {
        let filter = [(table.key().sqlite, Value::String(key.clone()))];
        let b = supabase.fetch(table, &filter).await.unwrap();
        assert_eq!(b.len(), 1, "{}: {b:?}", table.sqlite);
        let c = table.columns[table.index_of(col)].supabase;
        assert_eq!(b[0][c], want, "{}", table.sqlite);
        // DoX's SQLite files have no search_chunks table (Supabase only).
        if table.sqlite != "search_chunks" {
            let a = sqlite.fetch(table, &filter).await.unwrap();
            assert_eq!(a, b, "{}: both sides hold the same row", table.sqlite);
        }
    }
}

/// An equality filter on NULL matches NULL on both sides, never the text 'null'.
#[tokio::test]
async fn a_filter_on_null_matches_null_not_the_text_null() {
    needs_stack!();
    let (_dir, sqlite) = temp_sqlite().await;
    let supabase = shared_supabase();
    let category = unique("cat");
    let write = |user: Value| {
        Write::from_call(
            "add_memory",
            json!({"category": category, "content": {"u": user.clone()}, "user_id": user}),
        )
        .unwrap()
    };
    for mut w in [write(Value::Null), write(json!("null"))] {
        w.prepare();
        sqlite.apply(w.clone()).await.unwrap();
        supabase.apply(w).await.unwrap();
    }
    let filter = [
        ("category", Value::String(category.clone())),
        ("user_id", Value::Null),
    ];
    let t = &catalogue::CIPHER_MEMORY;
    let a = sqlite.fetch(t, &filter).await.unwrap();
    let b = supabase.fetch(t, &filter).await.unwrap();
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["user_id"], Value::Null);
    assert_eq!(a, b);
}

/// Read-modify-write methods run in `BEGIN IMMEDIATE` transactions: with
/// another connection committing to the file in a loop (as DoX does), none of
/// them fails with "database is locked" (a DEFERRED transaction failed at once
/// with SQLITE_BUSY_SNAPSHOT when a commit came between its read and its write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_modify_writes_do_not_fail_while_another_connection_commits() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let (dir, db) = temp_sqlite().await;
    let path = dir.path().join("dox.sqlite3");
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let app = {
        let (stop, commits) = (stop.clone(), commits.clone());
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                c.execute(
                    "INSERT INTO logentry (id, document_id, message) VALUES (?1, 'd', 'm')",
                    [format!("app-{i}")],
                )
                .unwrap();
                commits.fetch_add(1, Ordering::SeqCst);
                // About 200 small commits a second, like a busy DoX.
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let mut failures = Vec::new();
    let started = std::time::Instant::now();
    let mut calls = 0;
    // At least 2 s and 100 of the other connection's commits (a loaded disk
    // makes its commits slow), at most 30 s.
    while (started.elapsed() < std::time::Duration::from_secs(2)
        || commits.load(Ordering::SeqCst) < 100)
        && started.elapsed() < std::time::Duration::from_secs(30)
    {
        calls += 1;
        let i = calls;
        let w = Write::from_call(
            "set_user_pref",
            json!({"user_id": "racer", "key": format!("k{}", i % 7), "value": i}),
        )
        .unwrap();
        if let Err(e) = db.apply(w).await {
            failures.push(e.to_string());
        }
    }
    stop.store(true, Ordering::SeqCst);
    app.join().unwrap();
    assert!(
        commits.load(Ordering::SeqCst) > 100,
        "the other connection kept committing"
    );
    assert!(
        failures.is_empty(),
        "{} of {calls} failed: {:?}",
        failures.len(),
        failures.first()
    );
}

fn binary(pg: &PrivateDb, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dualwrite"));
    c.current_dir(dir)
        .args(args)
        .env("DUALWRITE_REST_URL", &pg.url)
        .env("SUPABASE_SERVICE_KEY", pg.service_key())
        .env_remove("SUPABASE_ANON_KEY")
        .env("DB_PATH", dir.join("unused.sqlite3"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

async fn generated_source(dir: &Path, rows: u64) -> PathBuf {
    let path = dir.join("dox.sqlite3");
    let opts = dualwrite::generate::GenerateOptions { rows, seed: 9 };
    dualwrite::generate::generate(&path, &opts).await.unwrap();
    path
}

async fn artifact_count(pg: &PrivateDb) -> i64 {
    pg.sql()
        .await
        .query_one("SELECT count(*) FROM artifacts", &[])
        .await
        .unwrap()
        .get(0)
}

/// `backfill --reset` forgets the checkpoint before it empties the target: a
/// run killed while the TRUNCATE waits (here on a table lock), whose TRUNCATE
/// then goes through, leaves no checkpoint calling the emptied table done, so the next
/// run copies every row again.
#[tokio::test]
async fn a_reset_killed_midway_leaves_no_checkpoint_and_the_next_run_copies_everything() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let src = generated_source(dir.path(), 400).await;
    let src = src.to_str().unwrap();
    let state = dir.path().join("state");
    let args = [
        "backfill",
        "--from-sqlite",
        src,
        "--tables",
        "artifact",
        "--state-dir",
        state.to_str().unwrap(),
        "--json",
    ];
    let st = binary(&pg, dir.path(), &args).status().unwrap();
    assert!(st.code().is_some_and(|c| c == 0 || c == 3), "{st:?}");
    let landed = artifact_count(&pg).await;
    assert!(landed > 0);
    assert!(state.join("checkpoint.json").exists());

    // Reads pass, the reset's TRUNCATE (rpc/dualwrite_reset) waits for the lock.
    let locker = pg.sql().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE artifacts IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut reset_args = args.to_vec();
    reset_args.extend(["--reset", "--yes"]);
    let mut child = binary(&pg, dir.path(), &reset_args).spawn().unwrap();
    let watcher = pg.sql().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' \
                 AND (query ILIKE '%DELETE FROM%' OR query ILIKE '%dualwrite_reset%')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the reset ended early");
        assert!(Instant::now() < deadline, "the reset's TRUNCATE never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The statement PostgREST had started goes through once the lock is gone.
    locker.batch_execute("ROLLBACK").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while artifact_count(&pg).await > 0 {
        assert!(Instant::now() < deadline, "the DELETE never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !state.join("checkpoint.json").exists(),
        "the checkpoint survived the reset"
    );

    let st = binary(&pg, dir.path(), &args).status().unwrap();
    assert!(st.code().is_some_and(|c| c == 0 || c == 3), "{st:?}");
    assert_eq!(artifact_count(&pg).await, landed, "every row copied again");
}

/// A checkpoint that cannot be removed stops the reset before it deletes
/// anything (it used to be ignored, after the rows were gone).
#[tokio::test]
async fn a_reset_that_cannot_forget_its_checkpoint_deletes_nothing() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let src = generated_source(dir.path(), 200).await;
    let state = dir.path().join("state");
    let args = [
        "backfill",
        "--from-sqlite",
        src.to_str().unwrap(),
        "--tables",
        "artifact",
        "--state-dir",
        state.to_str().unwrap(),
        "--json",
    ];
    let st = binary(&pg, dir.path(), &args).status().unwrap();
    assert!(st.code().is_some_and(|c| c == 0 || c == 3), "{st:?}");
    let landed = artifact_count(&pg).await;
    assert!(landed > 0);
    // A directory in the checkpoint's place: removing it fails (even as root).
    std::fs::remove_file(state.join("checkpoint.json")).unwrap();
    std::fs::create_dir_all(state.join("checkpoint.json/x")).unwrap();
    let mut reset_args = args.to_vec();
    reset_args.extend(["--reset", "--yes"]);
    let out = binary(&pg, dir.path(), &reset_args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("checkpoint.json"), "{err}");
    assert_eq!(artifact_count(&pg).await, landed, "nothing was deleted");
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Files that hold rows are owner-only whatever the umask: the backfill's
/// state directory and checkpoint, an export, and the failure log.
#[tokio::test]
async fn state_files_are_created_owner_only() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let src = generated_source(dir.path(), 200).await;
    // The default state directory, relative to the working directory.
    let st = binary(
        &pg,
        dir.path(),
        &["backfill", "--from-sqlite", src.to_str().unwrap(), "--json"],
    )
    .status()
    .unwrap();
    assert!(st.code().is_some_and(|c| c == 0 || c == 3), "{st:?}");
    let base = dir.path().join("dualwrite-state");
    assert_eq!(mode(&base), 0o700);
    let state = std::fs::read_dir(&base)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(mode(&state), 0o700);
    for f in std::fs::read_dir(&state).unwrap() {
        let f = f.unwrap().path();
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert_eq!(mode(&state.join("checkpoint.json")), 0o600);

    let out = dir.path().join("export");
    let st = binary(
        &pg,
        dir.path(),
        &[
            "export",
            "--from-sqlite",
            src.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .status()
    .unwrap();
    assert!(st.code().is_some_and(|c| c == 0 || c == 3), "{st:?}");
    assert_eq!(mode(&out), 0o700);
    let mut files = 0;
    for f in std::fs::read_dir(&out).unwrap() {
        let f = f.unwrap().path();
        assert_eq!(mode(&f), 0o600, "{}", f.display());
        files += 1;
    }
    assert!(files > 2);

    // A mirror failure recorded by dual write (Supabase unreachable).
    let db = dir.path().join("app.sqlite3");
    let st = Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .current_dir(dir.path())
        .args([
            "call",
            "add_memory",
            "--args",
            r#"{"category": "c", "content": {}}"#,
        ])
        .env("DB_PATH", &db)
        .env("SUPABASE_DUAL_WRITE", "true")
        .env("SUPABASE_URL", "http://127.0.0.1:9")
        .env("SUPABASE_SERVICE_KEY", pg.service_key())
        .env_remove("SUPABASE_ANON_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(3));
    let log = dir.path().join("app.sqlite3.failures.ndjson");
    assert_eq!(mode(&log), 0o600);
}

/// A checkpoint resumes only the file it was recorded for: another file at
/// the same path (re-created, or restored over it) is refused with a message
/// naming --restart and --reset, and --restart copies every table again.
#[tokio::test]
async fn a_checkpoint_refuses_another_file_at_its_path_until_restart() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let src = generated_source(dir.path(), 200).await;
    let state = dir.path().join("state");
    let args = [
        "backfill",
        "--from-sqlite",
        src.to_str().unwrap(),
        "--tables",
        "artifact",
        "--state-dir",
        state.to_str().unwrap(),
        "--json",
    ];
    let ok = |o: &std::process::Output| o.status.code().is_some_and(|c| c == 0 || c == 3);
    let o = binary(&pg, dir.path(), &args).output().unwrap();
    assert!(ok(&o), "{}", String::from_utf8_lossy(&o.stderr));
    // The same file again resumes (nothing to do).
    let o = binary(&pg, dir.path(), &args).output().unwrap();
    assert!(ok(&o), "{}", String::from_utf8_lossy(&o.stderr));

    // Another file with other rows: once written over the old one (same
    // inode, as `cp` does), once as a new file renamed into its place.
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_dir.path().join("other.sqlite3");
    let opts = dualwrite::generate::GenerateOptions {
        rows: 200,
        seed: 10,
    };
    dualwrite::generate::generate(&other, &opts).await.unwrap();
    for how in ["written over", "renamed over"] {
        if how == "written over" {
            std::fs::write(&src, std::fs::read(&other).unwrap()).unwrap();
        } else {
            let tmp = dir.path().join("new.sqlite3");
            std::fs::copy(&other, &tmp).unwrap();
            std::fs::rename(&tmp, &src).unwrap();
        }
        let o = binary(&pg, dir.path(), &args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{how}: {err}");
        assert!(
            err.contains("--restart") && err.contains("--reset"),
            "{how}: {err}"
        );
    }
    let mut restart = args.to_vec();
    restart.push("--restart");
    let o = binary(&pg, dir.path(), &restart).output().unwrap();
    assert!(ok(&o), "{}", String::from_utf8_lossy(&o.stderr));
    let want: i64 = rusqlite::Connection::open(&src)
        .unwrap()
        .query_row("SELECT count(*) FROM artifact", [], |r| r.get(0))
        .unwrap();
    let have: i64 = pg
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM artifacts WHERE id = ANY($1)",
            &[&rusqlite::Connection::open(&src)
                .unwrap()
                .prepare("SELECT id FROM artifact")
                .unwrap()
                .query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .collect::<Result<Vec<String>, _>>()
                .unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(want > 0);
    assert_eq!(have, want, "--restart copied the new file's rows");
}

/// An empty DoX file (bootstrapped), its path, and a direct connection to plant rows.
async fn planted_source(dir: &Path) -> (PathBuf, rusqlite::Connection) {
    let path = dir.join("src.sqlite3");
    drop(
        dualwrite::db::SqliteDatabase::open(&path, Default::default())
            .await
            .unwrap(),
    );
    let c = rusqlite::Connection::open(&path).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    (path, c)
}

fn plant_artifact(c: &rusqlite::Connection, key_sql: &str) {
    c.execute(
        &format!(
            "INSERT INTO artifact (id, filename, filepath, filetype, status) \
             VALUES ({key_sql}, 'f', 'p', '.pdf', 'new')"
        ),
        [],
    )
    .unwrap();
}

async fn plant_target_artifact(pg: &PrivateDb, key: &str) {
    pg.sql()
        .await
        .execute(
            "INSERT INTO artifacts (id, filename, filepath, filetype, status) \
             VALUES ($1, 'f', 'p', '.pdf', 'new') ON CONFLICT DO NOTHING",
            &[&key],
        )
        .await
        .unwrap();
}

async fn target_has(pg: &PrivateDb, key: &str) -> bool {
    pg.sql()
        .await
        .query_one("SELECT count(*) FROM artifacts WHERE id = $1", &[&key])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

fn verify_opts(pg: &PrivateDb) -> dualwrite::verify::VerifyOptions {
    let key = dualwrite::verify::KeyInfo::of("SUPABASE_SERVICE_KEY", &pg.service_key());
    let mut o = dualwrite::verify::VerifyOptions::new(key);
    o.tables = vec![&catalogue::ARTIFACT];
    o.segment_rows = 4;
    o
}

/// A TEXT key that is not valid UTF-8 in the middle of the source: the
/// source scan goes on past it (its cursor is bound as text, not as a blob,
/// which no text key is greater than), so the rows after it are not "only
/// in target", and a repair with --delete-extra deletes none of them.
#[tokio::test]
async fn a_key_that_is_not_utf8_does_not_end_the_source_scan() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (path, c) = planted_source(dir.path()).await;
    // Seven keys before the bad one: with pages of 4 rows, it ends a page
    // and becomes the cursor of the next read.
    let mut valid: Vec<String> = (0..7).map(|i| format!("a-{i}")).collect();
    valid.extend((0..6).map(|i| format!("日本-{i}")));
    for k in &valid {
        plant_artifact(&c, &format!("'{k}'"));
        plant_target_artifact(&pg, k).await;
    }
    // 0xC3 0x28: not UTF-8; sorts after every "a-" key and before "日本" (0xE6).
    plant_artifact(&c, "CAST(X'C328' AS TEXT)");
    let source = dualwrite::db::SqliteDatabase::open_read_only(&path)
        .await
        .unwrap();
    let target = pg.supabase();
    let opts = verify_opts(&pg);
    let report = dualwrite::verify::run(&source, &target, &opts)
        .await
        .unwrap();
    let t = &report.tables[0];
    assert_eq!(t.counts.only_in_target, 0, "{t:?}");
    assert_eq!(t.counts.only_in_source, 0, "{t:?}");
    assert_eq!(t.counts.cannot_land, 1, "{t:?}");
    assert_eq!(t.counts.compared, valid.len() as u64 + 1, "{t:?}");

    let (before, plan) = dualwrite::verify::repair::plan(&source, &target, &opts)
        .await
        .unwrap();
    let ropts = dualwrite::verify::repair::RepairOptions {
        delete_extra: true,
        ..Default::default()
    };
    let mut outcome = dualwrite::verify::repair::RepairOutcome::planned(&before, &plan, &ropts);
    dualwrite::verify::repair::apply(&source, &target, &plan, &ropts, &mut outcome)
        .await
        .unwrap();
    for k in &valid {
        assert!(target_has(&pg, k).await, "{k} was deleted");
    }
}

/// The race of --delete-extra: a row the app commits to the source after the
/// plan called it "only in target" is re-read before its chunk is deleted,
/// and kept; a row really only on the target is deleted.
#[tokio::test]
async fn delete_extra_keeps_a_row_the_source_gained_after_the_plan() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (path, c) = planted_source(dir.path()).await;
    for k in ["k-1", "k-2", "k-3"] {
        plant_artifact(&c, &format!("'{k}'"));
        plant_target_artifact(&pg, k).await;
    }
    plant_target_artifact(&pg, "late").await;
    plant_target_artifact(&pg, "stray").await;
    let source = dualwrite::db::SqliteDatabase::open_read_only(&path)
        .await
        .unwrap();
    let target = pg.supabase();
    let opts = verify_opts(&pg);
    let (before, plan) = dualwrite::verify::repair::plan(&source, &target, &opts)
        .await
        .unwrap();
    assert_eq!(plan.tables[0].delete.len(), 2, "{plan:?}");
    // The app writes "late" (its mirror had delivered it before the target scan).
    plant_artifact(&c, "'late'");
    let ropts = dualwrite::verify::repair::RepairOptions {
        delete_extra: true,
        ..Default::default()
    };
    dualwrite::verify::repair::check_delete_extra(&before, &plan).unwrap();
    let mut outcome = dualwrite::verify::repair::RepairOutcome::planned(&before, &plan, &ropts);
    dualwrite::verify::repair::apply(&source, &target, &plan, &ropts, &mut outcome)
        .await
        .unwrap();
    assert!(
        target_has(&pg, "late").await,
        "a row the source holds was deleted"
    );
    assert!(!target_has(&pg, "stray").await);
    assert_eq!(outcome.tables[0].deleted, 1);
    assert_eq!(outcome.tables[0].now_in_source, 1);
}

/// --delete-extra is refused (exit 2, nothing deleted) while the app writes
/// to the source during the verification: the exact counts and the rows read
/// then disagree, and "only in target" cannot be trusted.
#[tokio::test]
async fn delete_extra_is_refused_while_the_counts_disagree() {
    needs_stack!();
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (path, c) = planted_source(dir.path()).await;
    c.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) \
         INSERT INTO artifact (id, filename, filepath, filetype, status) \
         SELECT printf('k-%05d', i), 'f', 'p', '.pdf', 'new' FROM n",
    )
    .unwrap();
    pg.sql()
        .await
        .batch_execute(
            "INSERT INTO artifacts (id, filename, filepath, filetype, status) \
             SELECT format('k-%s', lpad(i::text, 5, '0')), 'f', 'p', '.pdf', 'new' \
             FROM generate_series(1, 3000) i",
        )
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let stop = stop.clone();
        let path = path.clone();
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.busy_timeout(Duration::from_secs(5)).unwrap();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                plant_artifact(&c, &format!("'k-{:05}-app-{i}'", i % 3000));
            }
        })
    };
    // Whether a write lands between the exact count and the content pass is
    // up to the scheduler: a run in which none did is a quiet run, and its
    // repair may rightly delete the stray row. Try a few times; every refusal
    // must have changed nothing, and at least one run must be refused.
    let mut refused = 0;
    for _ in 0..8 {
        plant_target_artifact(&pg, "stray").await;
        let out = binary(
            &pg,
            dir.path(),
            &[
                "verify",
                "--from-sqlite",
                path.to_str().unwrap(),
                "--tables",
                "artifact",
                "--repair",
                "--delete-extra",
                "--yes",
            ],
        )
        .output()
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(2) {
            assert!(err.contains("--delete-extra refused"), "{err}");
            assert!(target_has(&pg, "stray").await, "nothing was deleted");
            refused += 1;
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    app.join().unwrap();
    assert!(refused > 0, "no run was refused while the app wrote");
}

/// Record files are found from the database file, not from the working
/// directory: a mirror failure recorded beside a relative `db.sqlite3` blocks
/// a `cutover check` run from elsewhere, and a record file named on the
/// command line that does not exist is a reason, not "nothing recorded".
#[tokio::test]
async fn cutover_check_finds_the_record_files_of_its_source_from_anywhere() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let root = tempfile::tempdir().unwrap();
    let app = root.path().join("app");
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let run = |cwd: &Path, env: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dualwrite"));
        c.current_dir(cwd)
            .args(args)
            .env_remove("DB_PATH")
            .env_remove("SUPABASE_ANON_KEY")
            .env_remove("SUPABASE_DUAL_WRITE")
            .env("SUPABASE_SERVICE_KEY", pg.service_key())
            .env("DUALWRITE_REST_URL", &pg.url)
            .stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // The app writes with a relative DB_PATH while Supabase is unreachable.
    let o = run(
        &app,
        &[
            ("DB_PATH", "db.sqlite3"),
            ("SUPABASE_DUAL_WRITE", "true"),
            ("SUPABASE_URL", "http://127.0.0.1:9"),
            ("DUALWRITE_REST_URL", ""),
        ],
        &[
            "call",
            "add_memory",
            "--args",
            r#"{"category": "c", "content": {"k": 1}}"#,
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(app.join("db.sqlite3.failures.ndjson").exists());
    // The backfill then copies the row, so both sides are equal by content.
    let db = app.join("db.sqlite3");
    let db = db.to_str().unwrap();
    let o = run(
        &app,
        &[],
        &["backfill", "--from-sqlite", "db.sqlite3", "--json"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let o = run(&elsewhere, &[], &["cutover", "check", "--from-sqlite", db]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.contains("NOT READY"), "{out}");
    assert!(out.contains("failure"), "{out}");

    let missing = elsewhere.join("no-such-failures.ndjson");
    let o = run(
        &elsewhere,
        &[],
        &[
            "cutover",
            "check",
            "--from-sqlite",
            db,
            "--failures",
            missing.to_str().unwrap(),
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.contains("does not exist"), "{out}");
}

/// Tokens go through standard input (`-`), not argv where `ps` shows them;
/// service keys are short-lived by default and a long-lived one is warned about.
#[test]
fn keys_read_tokens_from_stdin_and_service_keys_are_short_lived() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let keys = |env: &[(&str, &str)], args: &[&str], stdin: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dualwrite"));
        c.current_dir(dir.path())
            .env_clear()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let o = keys(&[], &["keys", "generate"], "");
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let line = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_owned()
    };
    let (secret, service) = (line("SUPABASE_JWT_SECRET"), line("SUPABASE_SERVICE_KEY"));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("warning"));

    let env = [("SUPABASE_JWT_SECRET", secret.as_str())];
    let o = keys(&env, &["keys", "verify", "-"], &format!("{service}\n"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["claims"]["role"], "service_role");
    let lifetime = v["claims"]["exp"].as_i64().unwrap() - v["claims"]["iat"].as_i64().unwrap();
    assert!(lifetime <= 90 * 86_400, "{lifetime}");
    // --aud: a service key has no audience.
    let o = keys(
        &env,
        &["keys", "verify", "-", "--aud", "authenticated"],
        &service,
    );
    assert_eq!(o.status.code(), Some(3));
    let o = keys(&[], &["keys", "decode", "-"], &service);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["claims"]["role"], "service_role");

    let o = keys(&[], &["keys", "generate", "--service-days", "3650"], "");
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning") && err.contains("3650 days"),
        "{err}"
    );
}

/// Every migration of this repository, with the bootstrap first, as
/// scripts/stack.sh applies them (each file in one transaction).
async fn apply_migrations(pg: &PrivateDb) {
    let repo = crate::harness::repo();
    let mut files = vec![repo.join("scripts/sql/supabase-bootstrap.sql")];
    let mut migrations: Vec<PathBuf> = std::fs::read_dir(repo.join("supabase/migrations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    migrations.sort();
    files.extend(migrations);
    let c = pg.sql().await;
    for f in files {
        let sql = std::fs::read_to_string(&f).unwrap();
        c.batch_execute(&format!("BEGIN;\n{sql}\nCOMMIT;"))
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", f.display()));
    }
    pg.ddl("select 1").await;
}

/// Grants start from nothing (older default privileges gave anon and
/// authenticated TRUNCATE, REFERENCES and TRIGGER, which RLS does not
/// govern), every function sets its search_path, and the migrations can run
/// again.
#[tokio::test]
async fn migrations_revoke_stray_privileges_and_pin_search_paths() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    pg.sql()
        .await
        .batch_execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO anon, authenticated")
        .await
        .unwrap();
    apply_migrations(&pg).await;
    apply_migrations(&pg).await;
    let c = pg.sql().await;
    for t in catalogue::TABLES {
        for role in ["anon", "authenticated"] {
            for privilege in [
                "TRUNCATE",
                "REFERENCES",
                "TRIGGER",
                "INSERT",
                "UPDATE",
                "DELETE",
            ] {
                let has: bool = c
                    .query_one(
                        "SELECT has_table_privilege($1, format('public.%I', $2::text), $3)",
                        &[&role, &t.supabase, &privilege],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert!(!has, "{role} has {privilege} on {}", t.supabase);
            }
        }
    }
    let unpinned: Vec<String> = c
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p \
             JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE (n.nspname IN ('auth', 'dualwrite') \
                    OR p.proname IN ('dualwrite_access', 'pgrst_ddl_watch', 'pgrst_drop_watch')) \
               AND NOT coalesce(p.proconfig::text[] && ARRAY['search_path=\"\"', 'search_path='], false)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        unpinned.is_empty(),
        "functions without a search_path: {unpinned:?}"
    );
}

/// The access policy's two states, through the Data API: in "mirror" (the
/// default, while SQLite is the primary) an authenticated user cannot write
/// even its own rows; `dualwrite access primary` lets it; the state survives
/// the migrations running again; only the service role may switch.
#[tokio::test]
async fn clients_write_to_supabase_only_once_access_is_primary() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    apply_migrations(&pg).await;
    let s = stack();
    let secret = s.jwt_secret();
    let anon = dualwrite::keys::sign(secret, "anon", None, Duration::from_secs(600)).unwrap();
    let user = unique("user");
    let jwt = dualwrite::keys::sign(
        secret,
        "authenticated",
        Some(&user),
        Duration::from_secs(600),
    )
    .unwrap();
    let client = dualwrite::db::RestClient::new(&dualwrite::db::RestConfig {
        url: pg.url.clone(),
        key: secrecy::SecretString::from(anon.clone()),
        user_jwt: Some(secrecy::SecretString::from(jwt)),
        schema: "public".into(),
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap();
    let own = || {
        json!([{"id": unique("m"), "category": "preference", "content": {}, "context": null,
                "user_id": user, "created_at": null}])
        .to_string()
    };
    let prefs =
        || json!([{"user_id": user, "preferences": {"t": 1}, "updated_at": null}]).to_string();
    let access = |state: &str, key: &str| {
        Command::new(env!("CARGO_BIN_EXE_dualwrite"))
            .args(["access", state])
            .env("DUALWRITE_REST_URL", &pg.url)
            .env("SUPABASE_SERVICE_KEY", key)
            .env_remove("SUPABASE_ANON_KEY")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let state_of = |o: &std::process::Output| -> String {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["access"].as_str().unwrap().to_owned()
    };
    let service = pg.service_key();

    assert_eq!(state_of(&access("status", &service)), "mirror");
    for (table, body) in [
        (&catalogue::CIPHER_MEMORY, own()),
        (&catalogue::USER_PREFS, prefs()),
    ] {
        let e = client.upsert(table, body).await.unwrap_err();
        assert_eq!(e.code(), Some("42501"), "{}: {e}", table.supabase);
    }

    assert_eq!(state_of(&access("primary", &service)), "primary");
    client
        .upsert(&catalogue::CIPHER_MEMORY, own())
        .await
        .unwrap();
    client
        .upsert(&catalogue::USER_PREFS, prefs())
        .await
        .unwrap();
    // Running the migrations again keeps the recorded state.
    apply_migrations(&pg).await;
    assert_eq!(state_of(&access("status", &service)), "primary");
    client
        .upsert(&catalogue::CIPHER_MEMORY, own())
        .await
        .unwrap();

    assert_eq!(state_of(&access("mirror", &service)), "mirror");
    let e = client
        .upsert(&catalogue::CIPHER_MEMORY, own())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("42501"), "{e}");

    // Only the service role switches.
    let o = access("primary", &anon);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("service role"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(state_of(&access("status", &service)), "mirror");
}

/// docker-compose.yml requires its secrets (`${VAR:?message}`): no public
/// demo JWT secret or key to fall back on; `keys generate --compose` prints
/// every one of them.
#[test]
fn docker_compose_requires_its_secrets_and_keys_generate_makes_them() {
    let repo = crate::harness::repo();
    let compose = std::fs::read_to_string(repo.join("docker-compose.yml")).unwrap();
    let names = [
        "JWT_SECRET",
        "ANON_KEY",
        "SERVICE_ROLE_KEY",
        "PUBLISHABLE_KEY",
        "SECRET_KEY",
        "POSTGRES_PASSWORD",
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (i, _) in compose.match_indices("${") {
        let rest = &compose[i + 2..];
        let end = rest.find('}').expect("a closed ${...}");
        let expr = &rest[..end];
        let name: String = expr
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let line = compose[..i].lines().count();
        if names.contains(&name.as_str()) {
            assert!(
                !expr.contains(":-"),
                "line {line}: ${{{expr}}} has a default"
            );
            assert!(
                expr[name.len()..].starts_with(":?"),
                "line {line}: ${{{expr}}} is not required"
            );
            seen.insert(name);
        }
    }
    assert_eq!(seen.len(), names.len(), "{seen:?}");
    let demo = "eyJpc3MiOiJzdXBhYmFzZS1kZW1v"; // {"iss":"supabase-demo"
    let example = std::fs::read_to_string(repo.join(".env.example")).unwrap();
    for (file, text) in [("docker-compose.yml", &compose), (".env.example", &example)] {
        assert!(!text.contains(demo), "{file} holds a demo key");
        assert!(
            !text.contains("super-secret-jwt-token"),
            "{file} holds the demo secret"
        );
    }

    let o = Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .args(["keys", "generate", "--compose"])
        .env_clear()
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let vars: std::collections::BTreeMap<&str, &str> =
        out.lines().filter_map(|l| l.split_once('=')).collect();
    for n in names {
        assert!(vars.get(n).is_some_and(|v| v.len() >= 32), "{n}: {out}");
    }
    let claims =
        dualwrite::keys::verify(vars["JWT_SECRET"], vars["SERVICE_ROLE_KEY"], None).unwrap();
    assert_eq!(claims["role"], "service_role");
    assert!(vars["SECRET_KEY"].starts_with("sb_secret_"));
    assert!(vars["PUBLISHABLE_KEY"].starts_with("sb_publishable_"));
}

//! `capture` + `serve` against the real stack: an app-like writer that is not
//! dualwrite (plain rusqlite, DoX-shaped writes) writes while the real binary
//! drains; PostgREST is really stopped and really hung, the daemon is really
//! killed; at the end `verify` must say EQUAL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dualwrite::db::{SqliteDatabase, SqliteOptions};
use dualwrite::verify::{self, Format, KeyInfo, Verdict, VerifyOptions};

use crate::harness::free_port;
use crate::harness::{PrivateDb, Proxy, Spawned};

pub(crate) fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dualwrite"));
    // Only what the test gives: no stack variable or .env can point elsewhere.
    c.env_clear().env("RUST_LOG", "warn,dualwrite=info");
    c
}

pub(crate) fn env_for(c: &mut Command, db: &Path, pg: &PrivateDb) {
    c.env("DB_PATH", db)
        .env("DUALWRITE_REST_URL", &pg.url)
        .env("SUPABASE_SERVICE_KEY", pg.service_key())
        .env("SUPABASE_TIMEOUT", "2");
}

pub(crate) fn run(db: &Path, pg: &PrivateDb, args: &[&str]) -> Output {
    let mut c = bin();
    env_for(&mut c, db, pg);
    c.current_dir(db.parent().unwrap())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub(crate) fn spawn_serve(db: &Path, pg: &PrivateDb, port: u16) -> Spawned {
    spawn_serve_with(db, pg, port, &[])
}

pub(crate) fn spawn_serve_with(db: &Path, pg: &PrivateDb, port: u16, extra: &[&str]) -> Spawned {
    let mut c = bin();
    env_for(&mut c, db, pg);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(db.with_extension("serve.log"))
        .unwrap();
    c.current_dir(db.parent().unwrap())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--max-wait-secs",
            "3",
            "--batch-rows",
            "500",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map(Spawned)
        .unwrap()
}

/// The settings `dir` and these environment variables give (nothing else of
/// the test process's environment).
fn settings_from<const N: usize>(
    dir: &Path,
    vars: [(&str, String); N],
) -> dualwrite::config::Settings {
    let env = vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    dualwrite::config::Settings::load(&dualwrite::config::Sources {
        dir: dir.to_path_buf(),
        env,
        ..Default::default()
    })
    .unwrap()
}

/// A DoX file as DoX's bootstrap makes it, with capture installed.
pub(crate) async fn captured_file(dir: &Path, pg: &PrivateDb) -> PathBuf {
    let db = dir.join("app.sqlite3");
    drop(
        SqliteDatabase::open(&db, SqliteOptions::default())
            .await
            .unwrap(),
    );
    let o = run(&db, pg, &["capture", "install"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    db
}

/// The keys waiting, in the change log or in the queue not yet folded into it.
pub(crate) fn pending(db: &Path) -> i64 {
    dualwrite::capture::status(db).unwrap().pending as i64
}

/// The app: its own connection, BEGIN IMMEDIATE transactions, writes shaped
/// like DoX's. Returns the number of transactions committed.
pub(crate) fn app_writer(
    db: PathBuf,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut c = rusqlite::Connection::open(&db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .unwrap();
        let mut n = 0u64;
        let mut artifacts: Vec<String> = Vec::new();
        let docs: Vec<String> = (0..5).map(|i| format!("doc-{seed}-{i}")).collect();
        while !stop.load(Ordering::Relaxed) {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            match n % 6 {
                // add_artifact
                0 | 3 => {
                    let id = format!("art-{seed}-{n}");
                    tx.execute(
                        "INSERT INTO artifact (id, filename, filepath, filetype, report_week, status, source_url, extra_json) \
                         VALUES (?1, 'r.pdf', '/data/r.pdf', 'pdf', '2024-W01', 'new', NULL, '{}')",
                        [&id],
                    )
                    .unwrap();
                    artifacts.push(id);
                }
                // status and extras updates
                1 => {
                    if let Some(id) = artifacts.get((n as usize * 7) % artifacts.len().max(1)) {
                        tx.execute(
                            "UPDATE artifact SET status = ?2, extra_json = ?3 WHERE id = ?1",
                            rusqlite::params![id, format!("s{n}"), format!("{{\"n\":{n}}}")],
                        )
                        .unwrap();
                    }
                }
                // delete-then-insert of a document's entities and metric hits
                2 | 4 => {
                    let d = &docs[(n as usize) % docs.len()];
                    tx.execute("DELETE FROM document_entities WHERE document_id = ?1", [d])
                        .unwrap();
                    tx.execute(
                        "DELETE FROM document_metric_hits WHERE document_id = ?1",
                        [d],
                    )
                    .unwrap();
                    for i in 0..3 {
                        tx.execute(
                            "INSERT INTO document_entities (id, document_id, label, text, start_char, end_char, page, entity_context, source_index) \
                             VALUES (?1, ?2, 'ORG', ?3, 0, 4, 1, 'ctx', ?4)",
                            rusqlite::params![format!("ent-{d}-{n}-{i}"), d, format!("Acme {n}"), i],
                        )
                        .unwrap();
                        tx.execute(
                            "INSERT INTO document_metric_hits (id, document_id, type, value, metric_context, position, page, source_index) \
                             VALUES (?1, ?2, 'money', ?3, 'ctx', ?4, 1, 0)",
                            rusqlite::params![format!("hit-{d}-{n}-{i}"), d, format!("${n}"), i],
                        )
                        .unwrap();
                    }
                    tx.execute(
                        "INSERT INTO logentry (id, document_id, ts, level, code, component, message, attrs_json) \
                         VALUES (?1, ?2, '2024-01-01T00:00:00Z', 'INFO', 'C1', 'parser', 'parsed', '{}')",
                        rusqlite::params![format!("log-{seed}-{n}"), d],
                    )
                    .unwrap();
                }
                // a whole table emptied now and then; rows that were there
                // before capture (a backfill's business) updated and deleted
                _ => {
                    if n % 60 == 5 {
                        tx.execute("DELETE FROM logentry", []).unwrap();
                    }
                    tx.execute(
                        "UPDATE artifact SET status = ?1 WHERE rowid = \
                         (SELECT abs(random()) % (max(rowid) + 1) FROM artifact)",
                        [format!("touched-{n}")],
                    )
                    .unwrap();
                    tx.execute(
                        "DELETE FROM document_entities WHERE rowid = \
                         (SELECT abs(random()) % (max(rowid) + 1) FROM document_entities)",
                        [],
                    )
                    .unwrap();
                }
            }
            tx.commit().unwrap();
            n += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        n
    })
}

pub(crate) async fn wait_drained(db: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while pending(db) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} changes still pending; serve log:\n{}",
            pending(db),
            std::fs::read_to_string(db.with_extension("serve.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn assert_equal(db: &Path, pg: &PrivateDb) {
    let lite = SqliteDatabase::open_read_only(db).await.unwrap();
    let opts = VerifyOptions::new(KeyInfo::of("SUPABASE_SERVICE_KEY", &pg.service_key()));
    let r = verify::run(&lite, &pg.supabase(), &opts).await.unwrap();
    assert_eq!(
        r.verdict,
        Verdict::Equal,
        "{}\nserve log:\n{}",
        verify::render(&r, Format::Text),
        std::fs::read_to_string(db.with_extension("serve.log")).unwrap_or_default()
    );
    assert_eq!(r.totals.source_rows, r.totals.target_rows);
    assert!(r.totals.source_rows > 50, "{}", r.totals.source_rows);
}

pub(crate) async fn get(port: u16, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://127.0.0.1:{port}{path}")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

pub(crate) async fn wait_http(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(port, "/health").await.0 != 200 {
        assert!(Instant::now() < deadline, "serve did not start listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/ready`'s answer once it is `want`, or the last one after `secs`.
pub(crate) async fn ready_within(port: u16, want: u16, secs: u64) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (code, body) = get(port, "/ready").await;
        if code == want || Instant::now() > deadline {
            return (code, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_writer_is_mirrored_through_outages_hangs_and_kill_9() {
    needs_stack!();
    let mut pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let port = free_port();
    let mut serve = spawn_serve(&db, &pg, port);
    wait_http(port).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = app_writer(db.clone(), Arc::clone(&stop), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // PostgREST stopped: the changes wait, /ready says why.
    pg.stop();
    let (code, body) = ready_within(port, 503, 10).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("Supabase is failing"), "{body}");
    assert!(pending(&db) > 0);
    pg.start().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // PostgREST hung (SIGSTOP): requests time out, nothing is lost.
    pg.pause(true);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    pg.pause(false);
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // kill -9, several times, at arbitrary moments.
    for i in 0..3 {
        serve.kill().unwrap();
        serve.wait().unwrap();
        tokio::time::sleep(Duration::from_millis(300 + 200 * i)).await;
        serve = spawn_serve(&db, &pg, port);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 100, "the writer made only {writes} transactions");

    wait_drained(&db, Duration::from_secs(30)).await;
    wait_http(port).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let metrics = loop {
        let (code, metrics) = get(port, "/metrics").await;
        assert_eq!(code, 200);
        if metrics.contains("dualwrite_pending_changes 0\n") || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        metrics.contains("dualwrite_pending_changes 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dualwrite_mirrored_rows_total{table=\"artifact\"}"),
        "{metrics}"
    );
    assert_equal(&db, &pg).await;

    // `status` reads the file: nothing pending, the daemon running.
    let o = run(&db, &pg, &["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["pending"], 0, "{st}");
    assert_eq!(st["daemon_running"], true, "{st}");

    // A second daemon on the same file refuses.
    let o = run(
        &db,
        &pg,
        &["serve", "--listen", &format!("127.0.0.1:{}", free_port())],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already running"), "{err}");

    // SIGTERM: not ready at once, then exit 0.
    let t = Instant::now();
    let st = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = serve.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_file_without_capture_and_uninstall_restores_the_schema() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.sqlite3");
    drop(
        SqliteDatabase::open(&db, SqliteOptions::default())
            .await
            .unwrap(),
    );
    let schema = |p: &Path| -> Vec<(String, Option<String>)> {
        let c = rusqlite::Connection::open(p).unwrap();
        let mut s = c
            .prepare("SELECT name, sql FROM sqlite_master ORDER BY name")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap()
    };
    let before = schema(&db);
    let o = run(
        &db,
        &pg,
        &["serve", "--listen", &format!("127.0.0.1:{}", free_port())],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("capture is not installed"), "{err}");

    for _ in 0..2 {
        let o = run(&db, &pg, &["capture", "install"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = run(&db, &pg, &["capture", "status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["installed"], true, "{st}");
    assert_eq!(st["tables"].as_array().unwrap().len(), 17, "{st}");
    let o = run(&db, &pg, &["capture", "uninstall"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(schema(&db), before);

    let o = run(
        &dir.path().join("missing.sqlite3"),
        &pg,
        &["capture", "install"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such file"));
}

/// Rows a writer produces with no daemon running are mirrored when one starts
/// (the log is the only hand-off), and a rejected row is a counted dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_and_a_refused_row_becomes_a_dead_letter() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = app_writer(db.clone(), Arc::clone(&stop), 2);
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // A value PostgreSQL refuses for good: a NUL in a text column is unrepresentable.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute(
            "INSERT INTO tagrow (id, document_id, tag, score) VALUES ('bad-1', 'd', ?1, 1.0)",
            ["a\u{0}b"],
        )
        .unwrap();
    }
    // A corrupt change row (a table that is not a DoX table): a dead letter
    // with the reason, never a block for the rows behind it.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO _dualwrite_changes (tbl, key, seq, op, at) VALUES ('no_such_table', 'k1', 0, 'I', 0)",
            [],
        )
        .unwrap();
    let backlog = pending(&db);
    assert!(backlog > 50, "{backlog}");
    let port = free_port();
    let mut serve = spawn_serve(&db, &pg, port);
    wait_drained(&db, Duration::from_secs(30)).await;
    wait_http(port).await;
    let (_, metrics) = get(port, "/metrics").await;
    assert!(
        metrics.contains("dualwrite_rejected_rows_total{table=\"tagrow\"} 1"),
        "{metrics}"
    );
    let rejects = std::fs::read_dir(dir.path().join("dualwrite-state"))
        .unwrap()
        .map(|e| e.unwrap().path().join("rejects.ndjson"))
        .find(|p| p.exists())
        .expect("a rejects file");
    let text = std::fs::read_to_string(rejects).unwrap();
    assert!(text.contains("bad-1"), "{text}");
    assert!(
        text.contains("corrupt change row: table `no_such_table`"),
        "{text}"
    );
    assert!(
        metrics.contains("dualwrite_rejected_rows_total{table=\"no_such_table\"} 1"),
        "{metrics}"
    );
    serve.kill().unwrap();
    serve.wait().unwrap();
    // Everything but the dead letter is equal: remove it to compare.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM tagrow WHERE id = 'bad-1'", [])
        .unwrap();
    assert_equal(&db, &pg).await;
}

/// Keys changed all through a backlog (DoX updates an artifact's status and a
/// user's preferences at each step, between writes of other tables) drain in
/// one pass: the batches whose ranges hold only their older changes
/// (superseded by the latest, in a later batch) take them out of the log too,
/// although they send nothing of their table. Otherwise a key stays pending
/// until the next capture check, a minute later, with the daemon idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_changed_all_through_a_backlog_leave_nothing_pending() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    {
        let mut c = rusqlite::Connection::open(&db).unwrap();
        app_adds_artifact(&db, "warm").unwrap();
        app_adds_artifact(&db, "hot").unwrap();
        for i in 0..3000 {
            let tx = c.transaction().unwrap();
            tx.execute(
                "INSERT INTO tagrow (id, document_id, tag, score) VALUES (?1, 'd', 't', 1.0)",
                [format!("t{i}")],
            )
            .unwrap();
            for id in ["warm", "hot"] {
                tx.execute(
                    "UPDATE artifact SET status = ?1 WHERE id = ?2",
                    [format!("step {i}"), id.to_owned()],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
    }
    assert_eq!(pending(&db), 3002);
    // Supabase 100 ms away: batches overlap (a claim reads on from the last
    // one), as they do under load.
    let upstream = pg.url.trim_start_matches("http://").to_owned();
    let far = Proxy::start(&upstream, Duration::from_millis(100)).await;
    let mut c = bin();
    env_for(&mut c, &db, &pg);
    let log = std::fs::File::create(db.with_extension("serve.log")).unwrap();
    let mut serve = c
        .current_dir(dir.path())
        .env("DUALWRITE_REST_URL", &far.url)
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--batch-rows", "200"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map(Spawned)
        .unwrap();
    // Well under the capture check (60 s), which would claim again anyway.
    wait_drained(&db, Duration::from_secs(20)).await;
    serve.kill().unwrap();
    serve.wait().unwrap();
    assert_equal(&db, &pg).await;
}

/// The documented procedure for a live deployment: capture install, serve,
/// backfill while the app writes (to old rows too), then verify: no stale and
/// no missing row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_while_serve_drains_and_the_app_writes_leaves_no_stale_row() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.sqlite3");
    // The app's data from before the migration.
    let o = run(
        &db,
        &pg,
        &[
            "fixtures",
            "generate",
            "--rows",
            "20000",
            "--out",
            db.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&db, &pg, &["capture", "install"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let port = free_port();
    let mut serve = spawn_serve(&db, &pg, port);
    wait_http(port).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = app_writer(db.clone(), Arc::clone(&stop), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = run(
        &db,
        &pg,
        &[
            "backfill",
            "--from-sqlite",
            db.to_str().unwrap(),
            "--batch-rows",
            "200",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    wait_drained(&db, Duration::from_secs(30)).await;
    serve.kill().unwrap();
    serve.wait().unwrap();
    assert_equal(&db, &pg).await;
}

/// `cutover check` counts pending captured changes: equal content is not
/// enough while a change waits in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_check_is_not_ready_while_changes_are_pending() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute(
        "INSERT INTO artifact (id, filename, filepath, filetype, status) VALUES ('a1', 'f', '/f', 'pdf', 'new')",
        [],
    )
    .unwrap();
    let cutover = || {
        let o = run(&db, &pg, &["cutover", "check", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
        (o.status.code(), v)
    };
    let (code, v) = cutover();
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["capture"]["pending"], 1, "{v}");
    let reasons = v["reasons"].to_string();
    assert!(
        reasons.contains("1 captured change(s) not mirrored yet"),
        "{reasons}"
    );

    let port = free_port();
    let mut serve = spawn_serve(&db, &pg, port);
    wait_drained(&db, Duration::from_secs(20)).await;
    serve.kill().unwrap();
    serve.wait().unwrap();
    let (code, v) = cutover();
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["verdict"], "READY", "{v}");
}

/// `/ready` tells a Supabase that cannot be used while no change waits: a
/// rejected key from the start, and, while idle, PostgREST stopped (and
/// started again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_tells_an_unusable_supabase_with_no_change_pending() {
    needs_stack!();
    let mut pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;

    // A rejected key (a rotated service key, say): not ready, and why.
    let port = free_port();
    let mut c = bin();
    env_for(&mut c, &db, &pg);
    let rejected = c
        .env("SUPABASE_SERVICE_KEY", "not-a-valid-key")
        .current_dir(dir.path())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Spawned)
        .unwrap();
    wait_http(port).await;
    let (code, body) = ready_within(port, 503, 10).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("Supabase is failing"), "{body}");
    assert_eq!(pending(&db), 0);
    drop(rejected);

    // The right key, idle: ready; PostgREST stopped: not ready with nothing
    // to send; started again: ready.
    let port = free_port();
    let _serve = spawn_serve_with(&db, &pg, port, &["--check-secs", "0.5"]);
    wait_http(port).await;
    let (code, body) = ready_within(port, 200, 10).await;
    assert_eq!(code, 200, "{body}");
    pg.stop();
    let (code, body) = ready_within(port, 503, 15).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("Supabase is failing"), "{body}");
    pg.start().await;
    let (code, body) = ready_within(port, 200, 15).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(pending(&db), 0);
}

pub(crate) fn run_with(db: &Path, pg: &PrivateDb, extra: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = bin();
    env_for(&mut c, db, pg);
    for (k, v) in extra {
        c.env(k, v);
    }
    c.current_dir(db.parent().unwrap())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The embedded dual write with capture: a write Supabase is down for loses
/// nothing (the trigger logged it in its own transaction), and the legacy
/// failure log is imported into the change log once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_dual_write_with_capture_loses_nothing_and_the_failure_log_is_imported_once() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.sqlite3");
    drop(
        SqliteDatabase::open(&db, SqliteOptions::default())
            .await
            .unwrap(),
    );
    let down = [
        ("SUPABASE_DUAL_WRITE", "true"),
        ("SUPABASE_URL", "http://127.0.0.1:9"),
        ("DUALWRITE_REST_URL", ""),
    ];
    let tag = |id: &str| {
        format!("{{\"tag\": {{\"id\": \"{id}\", \"document_id\": \"d\", \"tag\": \"x\"}}}}")
    };
    // Before capture: the failure goes to the NDJSON log only.
    let o = run_with(
        &db,
        &pg,
        &down,
        &["call", "add_tag", "--args", &tag("t-before")],
    );
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let log = dir.path().join("app.sqlite3.failures.ndjson");
    assert!(log.exists());
    // A newer version of the same row, mirrored inline: replaying the old
    // payload would overwrite it; the imported key sends the row as it is now.
    let newer = "{\"tag\": {\"id\": \"t-before\", \"document_id\": \"d\", \"tag\": \"newer\"}}";
    let o = run_with(
        &db,
        &pg,
        &[("SUPABASE_DUAL_WRITE", "true")],
        &["call", "add_tag", "--args", newer],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let o = run(&db, &pg, &["capture", "install"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["failure_log"]["imported"], 1, "{r}");
    assert!(!log.exists(), "an imported log is removed");
    assert_eq!(pending(&db), 1);
    let o = run(&db, &pg, &["capture", "install"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["failure_log"]["imported"], 0, "{r}");

    // With capture: the write is in the change log, and nothing is mirrored
    // inline (so nothing fails: the drainer sends it).
    let o = run_with(
        &db,
        &pg,
        &down,
        &["call", "add_tag", "--args", &tag("t-during")],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(pending(&db), 2);
    // ... and only there: a payload recorded for replay could later overwrite a newer row.
    assert!(
        !log.exists(),
        "with capture, failures are not recorded as payloads"
    );

    let port = free_port();
    let mut serve = spawn_serve(&db, &pg, port);
    wait_drained(&db, Duration::from_secs(20)).await;
    serve.kill().unwrap();
    serve.wait().unwrap();
    let rows = pg
        .rest(Duration::from_secs(5))
        .select_page("tags", "*", &[], "id", None, 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let before = rows.iter().find(|r| r["id"] == "t-before").unwrap();
    assert_eq!(
        before["tag"], "newer",
        "an old payload overwrote a newer row"
    );
    // `replay` keeps working on what the log still holds (idempotent).
    let o = run_with(&db, &pg, &[("SUPABASE_DUAL_WRITE", "true")], &["replay"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_verify_equal(&db, &pg).await;
}

pub(crate) async fn assert_verify_equal(db: &Path, pg: &PrivateDb) {
    let lite = SqliteDatabase::open_read_only(db).await.unwrap();
    let opts = VerifyOptions::new(KeyInfo::of("SUPABASE_SERVICE_KEY", &pg.service_key()));
    let r = verify::run(&lite, &pg.supabase(), &opts).await.unwrap();
    assert_eq!(
        r.verdict,
        Verdict::Equal,
        "{}",
        verify::render(&r, Format::Text)
    );
}

/// The app drops and re-creates a table (its triggers vanish with it): the
/// daemon's periodic check re-installs them, and later writes are mirrored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_lost_with_a_recreated_table_are_reinstalled_by_serve() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let port = free_port();
    let mut serve = spawn_serve_with(&db, &pg, port, &["--check-secs", "0.3"]);
    wait_http(port).await;
    let app = rusqlite::Connection::open(&db).unwrap();
    let ddl: String = app
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'tagrow'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    app.execute_batch(&format!("DROP TABLE tagrow; {ddl};"))
        .unwrap();
    let st = run(&db, &pg, &["capture", "status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(
        st["missing"] == serde_json::json!(["tagrow"]) || st["installed"] == true,
        "{st}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = run(&db, &pg, &["capture", "status", "--json"]);
        let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        if st["installed"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "triggers not re-installed: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.execute(
        "INSERT INTO tagrow (id, document_id, tag, score) VALUES ('after-recreate', 'd', 'x', 0.5)",
        [],
    )
    .unwrap();
    wait_drained(&db, Duration::from_secs(10)).await;
    serve.kill().unwrap();
    serve.wait().unwrap();
    let rows = pg
        .rest(Duration::from_secs(5))
        .select_page("tags", "*", &[], "id", None, 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], "after-recreate");
}

// ---- The embedded `DualDatabase` with capture (issue 11, item 5) ----

pub(crate) type JsonRow = serde_json::Map<String, serde_json::Value>;

pub(crate) fn tags_in(rows: &[JsonRow], id: &str) -> Option<String> {
    rows.iter()
        .find(|r| r["id"] == id)
        .map(|r| r["tag"].as_str().unwrap_or_default().to_owned())
}

pub(crate) async fn supabase_tags(pg: &PrivateDb) -> Vec<JsonRow> {
    pg.rest(Duration::from_secs(5))
        .select_page("tags", "*", &[], "id", None, 100)
        .await
        .unwrap()
}

pub(crate) fn tag_write(id: &str, text: &str) -> dualwrite::model::Write {
    dualwrite::model::Write::AddTag {
        tag: serde_json::from_value(serde_json::json!({"id": id, "document_id": "d", "tag": text}))
            .unwrap(),
    }
}

pub(crate) fn pending_keys(db: &Path) -> Vec<String> {
    dualwrite::capture::pending_changes(db, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|c| c.key)
        .collect()
}

/// A payload recorded while Supabase was down could be replayed over a newer
/// row later: with capture nothing is recorded as a payload; every write waits
/// in the change log, whoever made it, and goes as the row is then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_while_supabase_is_down_wait_in_the_log_and_go_as_they_are_then() {
    use dualwrite::db::{Dox, DualDatabase};
    needs_stack!();
    let mut pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let open = || SqliteDatabase::open(&db, SqliteOptions::default());
    let a = DualDatabase::new(
        open().await.unwrap(),
        pg.supabase(),
        Duration::from_secs(10),
        100,
    );
    let b = DualDatabase::new(
        open().await.unwrap(),
        pg.supabase(),
        Duration::from_secs(10),
        100,
    );
    pg.stop();
    a.set_user_pref("u1", "theme", serde_json::json!("dark"))
        .await
        .unwrap();
    pg.start().await;
    b.set_user_pref("u1", "lang", serde_json::json!("fr"))
        .await
        .unwrap();
    assert!(a.failures().is_empty(), "no payload is recorded for replay");
    assert_eq!(a.replay_failures().await.attempted, 0);
    assert_eq!(pending_keys(&db), ["u1"]);
    drop((a, b));

    // Processes sharing the log while Supabase is down: every write is in it.
    pg.stop();
    let children: Vec<Child> = (0..4)
        .map(|i| {
            let mut c = bin();
            env_for(&mut c, &db, &pg);
            c.current_dir(dir.path())
                .env("SUPABASE_DUAL_WRITE", "true")
                .args([
                    "call",
                    "add_tag",
                    "--args",
                    &format!(
                        "{{\"tag\": {{\"id\": \"p{i}\", \"document_id\": \"d\", \"tag\": \"x\"}}}}"
                    ),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert_eq!(c.wait().unwrap().code(), Some(0), "the write is in the log");
    }
    pg.start().await;
    assert_eq!(pending(&db), 5);
    assert!(!dir.path().join("app.sqlite3.failures.ndjson").exists());

    let port = free_port();
    let mut serve = spawn_serve(&db, &pg, port);
    wait_drained(&db, Duration::from_secs(30)).await;
    serve.kill().unwrap();
    serve.wait().unwrap();
    let rows = supabase_tags(&pg).await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    let prefs = pg
        .rest(Duration::from_secs(5))
        .select_page("user_prefs", "*", &[], "user_id", None, 10)
        .await
        .unwrap();
    assert_eq!(
        prefs[0]["preferences"],
        serde_json::json!({"theme": "dark", "lang": "fr"}),
        "{prefs:?}"
    );
    assert_verify_equal(&db, &pg).await;
}

/// `dual.drain = "background"`: the embedding process drains what it wrote,
/// under serve's lease, and lets it go when dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_drainer_sends_what_the_app_wrote() {
    use dualwrite::db::Database;
    needs_stack!();
    let mut pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let settings = settings_from(
        dir.path(),
        [
            ("DB_PATH", db.display().to_string()),
            ("DUALWRITE_REST_URL", pg.url.clone()),
            ("SUPABASE_SERVICE_KEY", pg.service_key()),
            ("SUPABASE_DUAL_WRITE", "true".into()),
            ("SUPABASE_TIMEOUT", "2".into()),
            ("DUALWRITE_DRAIN", "background".into()),
        ],
    );
    assert_eq!(settings.drain, dualwrite::config::DrainMode::Background);
    pg.stop();
    let (app, _) = dualwrite::factory::open(&settings).await.unwrap();
    app.apply(tag_write("bg1", "x")).await.unwrap();
    app.apply(tag_write("bg2", "y")).await.unwrap();
    assert_eq!(pending(&db), 2);
    // The drainer holds serve's lease: a serve cannot start beside it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dualwrite::capture::Lease::take(&db).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the background drainer never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.start().await;
    wait_drained(&db, Duration::from_secs(60)).await;
    let rows = supabase_tags(&pg).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    drop(app);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dualwrite::capture::Lease::take(&db).is_err() {
        assert!(
            Instant::now() < deadline,
            "the drainer kept the lease after the drop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `dual.drain = "background"` on a file without change capture: the factory
/// refuses with the fix, instead of running a dual layer nobody drains.
#[tokio::test]
async fn a_background_drain_without_capture_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("plain.sqlite3");
    let settings = settings_from(
        dir.path(),
        [
            ("DB_PATH", db.display().to_string()),
            // Nothing listens there: an unreachable mirror still makes a dual layer.
            ("SUPABASE_URL", "http://127.0.0.1:9".to_owned()),
            ("SUPABASE_SERVICE_KEY", "k".to_owned()),
            ("SUPABASE_DUAL_WRITE", "true".into()),
            ("DUALWRITE_DRAIN", "background".into()),
        ],
    );
    let e = match dualwrite::factory::open(&settings).await {
        Ok(_) => panic!("a background drain without capture was accepted"),
        Err(e) => e,
    };
    assert!(matches!(e, dualwrite::Error::Config(_)), "{e:?}");
    assert!(e.to_string().contains("dualwrite capture install"), "{e}");
}

/// `serve --unrepresentable`: a NUL in a text value is a dead letter under
/// `reject` (rejects file, counted) and lands without it under `coerce`
/// (the original recorded in `coerced.ndjson`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_rejects_or_coerces_a_value_supabase_cannot_hold() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let state = dir.path().join("state");
    let app = rusqlite::Connection::open(&db).unwrap();
    let nul_tag = |id: &str| {
        app.execute(
            "INSERT INTO tagrow (id, document_id, tag, score) VALUES (?1, 'd', 'a' || char(0) || 'b', 0.5)",
            [id],
        )
        .unwrap();
    };
    let serve_once = |policy: &str| {
        let port = free_port();
        let state = state.display().to_string();
        let child = spawn_serve_with(
            &db,
            &pg,
            port,
            &["--unrepresentable", policy, "--state-dir", &state],
        );
        (child, port)
    };
    let stop = |mut child: Spawned| {
        let st = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        assert!(child.wait().unwrap().success(), "serve exits 0 on SIGTERM");
    };

    nul_tag("nul-reject");
    app.execute(
        "INSERT INTO tagrow (id, document_id, tag, score) VALUES ('fine', 'd', 'ok', 0.5)",
        [],
    )
    .unwrap();
    let (child, port) = serve_once("reject");
    wait_drained(&db, Duration::from_secs(20)).await;
    let (_, metrics) = get(port, "/metrics").await;
    assert!(
        metrics.contains("dualwrite_rejected_rows_total{table=\"tagrow\"} 1"),
        "{metrics}"
    );
    stop(child);
    let rejects = std::fs::read_to_string(state.join("rejects.ndjson")).unwrap();
    assert!(
        rejects.contains("nul-reject") && rejects.lines().count() == 1,
        "{rejects}"
    );
    let rows = supabase_tags(&pg).await;
    assert_eq!(tags_in(&rows, "fine").as_deref(), Some("ok"));
    assert_eq!(
        tags_in(&rows, "nul-reject"),
        None,
        "a rejected row never lands"
    );
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dualwrite::serve::status_file_path(&db)).unwrap())
            .unwrap();
    assert_eq!(st["rejected_rows"]["tagrow"], 1, "{st}");

    nul_tag("nul-coerce");
    let (child, _) = serve_once("coerce");
    wait_drained(&db, Duration::from_secs(20)).await;
    stop(child);
    let rows = supabase_tags(&pg).await;
    assert_eq!(
        tags_in(&rows, "nul-coerce").as_deref(),
        Some("ab"),
        "landed with the NUL removed"
    );
    let coerced = std::fs::read_to_string(state.join("coerced.ndjson")).unwrap();
    assert!(
        coerced.contains("nul-coerce") && coerced.contains("tag"),
        "{coerced}"
    );
}

/// Under systemd (`Type=notify`): `READY=1` once serving, `STOPPING=1` on
/// SIGTERM; `dualwrite status` meanwhile finds the daemon without disturbing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_tells_systemd_when_it_is_ready_and_when_it_stops() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let sock = dir.path().join("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut c = bin();
    env_for(&mut c, &db, &pg);
    let mut child = c
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &sock)
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    // `dualwrite status` sees the daemon without taking its lease, many times over.
    for _ in 0..5 {
        let o = run(&db, &pg, &["status", "--json"]);
        let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(st["daemon_running"], true, "{st}");
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "status disturbed the daemon"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
    let o = run(&db, &pg, &["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["daemon_running"], false, "{st}");
}

// ---- serve follows the recorded primary (docs/design/cutover.md) ----

use dualwrite::capture::Lease;
use dualwrite::cutover::marker::{self, Switching};
use dualwrite::cutover::Primary;

/// What `cutover run` writes first: a cutover of this (the test's) process,
/// towards `to`, in progress.
fn begin_switch(db: &Path, to: Primary, pid: u32) {
    let mut c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let tx = c.transaction().unwrap();
    let since = dualwrite::capture::now_secs();
    marker::set_switching(&tx, Some(&Switching { to, pid, since })).unwrap();
    tx.commit().unwrap();
}

/// The switch's commit: `p` recorded as the primary (refusal triggers on or
/// off), `switching` cleared.
fn record(db: &Path, p: Primary) {
    let mut c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let tx = c.transaction().unwrap();
    marker::record_primary(&tx, p).unwrap();
    tx.commit().unwrap();
}

/// The app's own write to the file (plain rusqlite, as DoX's engine).
fn app_adds_artifact(db: &Path, id: &str) -> rusqlite::Result<usize> {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute(
        "INSERT INTO artifact (id, filename, filepath, filetype, status, extra_json) \
         VALUES (?1, 'a.pdf', '/a.pdf', 'pdf', 'new', '{}')",
        [id],
    )
}

fn in_file(db: &Path, id: &str) -> bool {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("SELECT count(*) FROM artifact WHERE id = ?1", [id], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap()
        == 1
}

async fn in_supabase(pg: &PrivateDb, id: &str) -> bool {
    !pg.rest(Duration::from_secs(5))
        .select_in("artifacts", "id", "id", &[id])
        .await
        .unwrap()
        .is_empty()
}

/// Wait up to `secs` for `cond`, then fail with the serve log.
async fn eventually<F: std::future::Future<Output = bool>>(
    db: &Path,
    secs: u64,
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs}s; serve log:\n{}",
            std::fs::read_to_string(db.with_extension("serve.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_json(port: u16) -> serde_json::Value {
    let (code, body) = get(port, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// One `serve` without `--direction`, never restarted, through a cutover and
/// a rollback played as `cutover run` plays them: it stands down and lets
/// the lease go while `switching` is set, then drains the way the recorded
/// primary says; the reverse mirror writes the file past the refusal that
/// the app's own writes meet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_follows_the_recorded_primary_through_a_cutover_and_a_rollback() {
    use dualwrite::capture::supabase as rc;
    needs_stack!();
    let pg = PrivateDb::new().await;
    pg.ddl(rc::MIGRATION_SQL).await;
    let service = pg.rest(Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let me = std::process::id();
    let port = free_port();
    let serve = spawn_serve(&db, &pg, port);
    wait_http(port).await;
    let (code, body) = ready_within(port, 200, 20).await;
    assert_eq!(code, 200, "{body}");

    // Forward (no marker, DB_BACKEND unset: sqlite): the app's write reaches Supabase.
    app_adds_artifact(&db, "follow-fwd-1").unwrap();
    eventually(&db, 20, "forward before the cutover", || {
        in_supabase(&pg, "follow-fwd-1")
    })
    .await;

    // `cutover run` begins: serve stands down and lets the lease go.
    begin_switch(&db, Primary::Supabase, me);
    let (code, body) = ready_within(port, 503, 10).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains(&format!("cutover in progress (pid {me}, since ")),
        "{body}"
    );
    let lease = Lease::take(&db).expect("serve let the file's lease go");
    let st = status_json(port).await;
    assert_eq!(st["recorded_primary"]["switching"]["pid"], me, "{st}");
    assert_eq!(st["doing"], "standing down", "{st}");
    // The status file, written every second, says it too.
    eventually(&db, 5, "the status file tells the cutover", || async {
        dualwrite::serve::read_status_file(&db).is_some_and(|f| {
            f.not_ready_because
                .first()
                .is_some_and(|w| w.contains("cutover in progress"))
        })
    })
    .await;
    let o = run(&db, &pg, &["status"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("cutover in progress (pid"), "{out}");

    // The switch (under the lease): capture on Supabase, the file's capture
    // off and refusal on, the marker; then the lease goes.
    rc::enable(&service).await.unwrap();
    record(&db, Primary::Supabase);
    dualwrite::capture::uninstall(&db, false).unwrap();
    drop(lease);
    let (code, body) = ready_within(port, 200, 20).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status_json(port).await["direction"], "reverse");

    // Reverse: a row written to Supabase reaches the file, past the refusal
    // that the app's own write meets.
    let body = serde_json::json!([{"id": "follow-rev-1", "filename": "r.pdf", "filepath": "/r.pdf",
                                   "filetype": "pdf"}]);
    service
        .upsert(&dualwrite::catalogue::ARTIFACT, body.to_string())
        .await
        .unwrap();
    eventually(&db, 20, "reverse after the cutover", || async {
        in_file(&db, "follow-rev-1")
    })
    .await;
    let e = app_adds_artifact(&db, "follow-refused")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no longer the primary") && e.contains("DB_BACKEND=supabase"),
        "{e}"
    );
    assert!(!in_file(&db, "follow-refused"));
    let rejects = dualwrite::StateDir::of_source(&db).reverse_rejects();
    assert!(
        std::fs::read_to_string(&rejects)
            .unwrap_or_default()
            .is_empty(),
        "the mirror's writes were refused"
    );

    // Rollback: the same towards the file.
    begin_switch(&db, Primary::Sqlite, me);
    let (code, body) = ready_within(port, 503, 10).await;
    assert!(
        code == 503 && body.contains("cutover in progress"),
        "{body}"
    );
    let lease = Lease::take(&db).expect("serve let the file's lease go");
    record(&db, Primary::Sqlite);
    dualwrite::capture::install(&db, None).unwrap();
    rc::disable(&service, true).await.unwrap();
    drop(lease);
    let (code, body) = ready_within(port, 200, 20).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status_json(port).await["direction"], "forward");
    app_adds_artifact(&db, "follow-fwd-2").unwrap();
    eventually(&db, 20, "forward after the rollback", || {
        in_supabase(&pg, "follow-fwd-2")
    })
    .await;

    // One process all along, and each cutover said once.
    let mut serve = serve;
    assert!(serve.try_wait().unwrap().is_none(), "serve exited");
    let log = std::fs::read_to_string(db.with_extension("serve.log")).unwrap();
    let told = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("cutover in progress"))
        .count();
    assert_eq!(told, 2, "{log}");
}

/// `--direction forward` on a file that records Supabase as the primary:
/// the daemon does not send the change waiting in the file's log, and says
/// why; `status` for that direction exits 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_direction_that_contradicts_the_recorded_primary_drains_nothing() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    pg.ddl(dualwrite::capture::supabase::MIGRATION_SQL).await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    app_adds_artifact(&db, "wrong-way").unwrap();
    record(&db, Primary::Supabase);
    assert_eq!(pending(&db), 1);

    let port = free_port();
    let mut serve = spawn_serve_with(&db, &pg, port, &["--direction", "forward"]);
    wait_http(port).await;
    let (code, body) = ready_within(port, 503, 10).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("--direction forward contradicts the recorded primary (supabase since "),
        "{body}"
    );
    // Several polls later: nothing sent, the change still waits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pending(&db), 1);
    assert!(!in_supabase(&pg, "wrong-way").await);
    assert!(serve.try_wait().unwrap().is_none(), "serve exited");

    let o = run(&db, &pg, &["status", "--direction", "forward"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("the recorded primary is supabase")
            && out.contains("recorded primary: supabase since"),
        "{out}"
    );
    // Without --direction, `status` follows the recorded primary.
    let o = run(&db, &pg, &["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["direction"], "reverse", "{st}");
    assert_eq!(st["recorded_primary"]["primary"], "supabase", "{st}");
}

/// A `switching` whose process is gone: the daemon (started during it) says
/// the cutover was interrupted and what to run, holds no lease, and never
/// clears the marker itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_cutover_keeps_serve_standing_down_and_says_what_to_run() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    begin_switch(&db, Primary::Supabase, pid);

    let port = free_port();
    let serve = spawn_serve(&db, &pg, port);
    wait_http(port).await;
    let (code, body) = ready_within(port, 503, 10).await;
    assert!(
        code == 503 && body.contains(&format!("cutover in progress (pid {pid}")),
        "{body}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let (_, body) = get(port, "/ready").await;
        if body.contains("is gone") || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        body.contains(&format!("pid {pid} is gone"))
            && body.contains("`dualwrite cutover run` or `dualwrite cutover rollback`"),
        "{body}"
    );
    drop(Lease::take(&db).expect("serve holds no lease while it stands down"));
    let m = marker::read_file(&db).unwrap();
    assert_eq!(
        m.switching.map(|s| s.pid),
        Some(pid),
        "the marker was cleared"
    );
    let mut serve = serve;
    assert!(serve.try_wait().unwrap().is_none(), "serve exited");
    let log = std::fs::read_to_string(db.with_extension("serve.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("is gone")),
        "{log}"
    );
}

//! `cutover run` against the real stack, with a writer that is not dualwrite
//! (Python's `sqlite3`, a 10 s busy timeout, one autocommit insert per write,
//! as DoX's engine commits): its writes wait through the fence and none fails;
//! the run killed with SIGKILL at each step leaves a file and a Supabase that
//! a second run completes; PostgREST stopped during the fence lifts it at
//! `--max-pause` with nothing switched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dualwrite::cutover::{marker, Primary};
use serde_json::Value;

use crate::harness::PrivateDb;
use crate::serve::{bin, captured_file, env_for};

/// One writer process: `sqlite` mode inserts into the file, `supabase` mode
/// posts to PostgREST (the app restarted on Supabase). Every write that
/// returned is appended to `ok`, every one that raised to `err`; it stops
/// when `stop` exists.
const WRITER: &str = r#"
import json, os, sqlite3, sys, time, urllib.request
mode, db, url, key, ok_path, err_path, stop = sys.argv[1:8]
ok = open(ok_path, "a")
conn = sqlite3.connect(db, timeout=10, isolation_level=None) if mode == "sqlite" else None
n = 0
while not os.path.exists(stop):
    i = f"w-{mode}-{os.getpid()}-{n}"
    try:
        if conn is not None:
            conn.execute(
                "INSERT INTO logentry (id, document_id, ts, level, code, component, message, attrs_json) "
                "VALUES (?, 'doc-w', '2024-01-01T00:00:00Z', 'INFO', 'C1', 'writer', 'm', '{}')", (i,))
        else:
            body = json.dumps({"id": i, "document_id": "doc-w", "ts": "2024-01-01T00:00:00Z",
                               "level": "INFO", "code": "C1", "component": "writer", "message": "m",
                               "attrs": {}}).encode()
            req = urllib.request.Request(url + "/log_entries", data=body, method="POST", headers={
                "apikey": key, "Authorization": "Bearer " + key,
                "Content-Type": "application/json", "Prefer": "return=minimal"})
            urllib.request.urlopen(req, timeout=10).read()
        ok.write(i + "\n"); ok.flush()
    except Exception as e:
        with open(err_path, "a") as f:
            f.write(f"{i}: {e}\n")
    n += 1
    time.sleep(0.005)
"#;

struct Writers {
    dir: PathBuf,
    script: PathBuf,
}

impl Writers {
    fn new(dir: &Path) -> Writers {
        let script = dir.join("writer.py");
        std::fs::write(&script, WRITER).unwrap();
        Writers {
            dir: dir.to_path_buf(),
            script,
        }
    }

    fn args(&self, mode: &str, db: &Path, pg: &PrivateDb) -> Vec<String> {
        vec![
            self.script.display().to_string(),
            mode.into(),
            db.display().to_string(),
            pg.url.clone(),
            pg.service_key(),
            self.dir.join("ok").display().to_string(),
            self.dir.join("err").display().to_string(),
            self.dir.join("stop").display().to_string(),
        ]
    }

    fn spawn(&self, mode: &str, db: &Path, pg: &PrivateDb) -> Child {
        Command::new("python3")
            .args(self.args(mode, db, pg))
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// The shell command that restarts the app on Supabase: the file's
    /// writer ends (its write held in the fence never returns), a new one
    /// writes to PostgREST.
    fn restart_command(&self, old: u32, to: &str, db: &Path, pg: &PrivateDb) -> String {
        let args: Vec<String> = self
            .args(to, db, pg)
            .iter()
            .map(|a| format!("'{a}'"))
            .collect();
        format!(
            "kill -KILL {old}; nohup python3 {} >/dev/null 2>&1 &",
            args.join(" ")
        )
    }

    fn stop(&self) {
        std::fs::write(self.dir.join("stop"), "").unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }

    fn ok(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("ok"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.join("err")).unwrap_or_default()
    }
}

/// Wait until the run (its stderr in `log`) stalls at `step`
/// (`DUALWRITE_TEST_STALL_AT`), alive.
async fn wait_stalled(log: &Path, child: &mut std::process::Child, step: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("stalled at")
    {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "{step}: never stalled: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cutover(db: &Path, pg: &PrivateDb, extra: &[&str], stall: Option<&str>) -> Command {
    command("run", db, pg, extra, stall)
}

fn command(verb: &str, db: &Path, pg: &PrivateDb, extra: &[&str], stall: Option<&str>) -> Command {
    let mut c = bin();
    env_for(&mut c, db, pg);
    c.env("PATH", std::env::var("PATH").unwrap_or_default());
    if let Some(s) = stall {
        c.env("DUALWRITE_TEST_STALL_AT", s);
    }
    c.current_dir(db.parent().unwrap())
        .args(["cutover", verb, "--yes", "--json"])
        .args(extra)
        .stdin(Stdio::null());
    c
}

fn run_json(c: &mut Command) -> (i32, Value, String) {
    let o = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&o.stdout)
        )
    });
    (o.status.code().unwrap_or(-1), v, stderr)
}

async fn ids_on_supabase(pg: &PrivateDb) -> std::collections::HashSet<String> {
    pg.sql()
        .await
        .query("SELECT id FROM log_entries", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

async fn access_state(pg: &PrivateDb) -> String {
    dualwrite::access::access(&pg.rest(Duration::from_secs(5)), None)
        .await
        .unwrap()
        .as_str()
        .to_owned()
}

/// A write of the test's own to the file: `Ok` or the error's text, within 2 s.
fn file_write(db: &Path, id: &str) -> Result<(), String> {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(2)).unwrap();
    c.execute(
        "INSERT INTO logentry (id, document_id, ts, level, code, component, message, attrs_json) \
         VALUES (?1, 'doc-t', '2024-01-01T00:00:00Z', 'INFO', 'C1', 'test', 'm', '{}')",
        [id],
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sqlite_writer_waits_through_the_fence_and_nothing_is_lost() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    // `serve` runs as a supervisor would keep it, without --direction.
    let port = crate::harness::free_port();
    let _serve = crate::serve::spawn_serve(&db, &pg, port);
    crate::serve::wait_http(port).await;
    let w = Writers::new(dir.path());
    let first = w.spawn("sqlite", &db, &pg);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restart = w.restart_command(first.id(), "supabase", &db, &pg);
    let (code, report, stderr) = run_json(&mut cutover(
        &db,
        &pg,
        &["--restart", &restart, "--max-pause", "4"],
        None,
    ));
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(report["switched"], true, "{report:#}");
    let pause = report["pause_ms"].as_u64().unwrap();
    assert!(pause < 4000, "{report:#}");
    assert!(
        report["drained_before_fence"].as_u64().unwrap()
            + report["drained_in_fence"].as_u64().unwrap()
            > 50,
        "{report:#}"
    );
    // The restarted app writes to Supabase a while, then stops.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w.stop();
    drop(first);

    assert_eq!(w.errors(), "", "a write failed");
    let ok = w.ok();
    let on_file = ok.iter().filter(|i| i.starts_with("w-sqlite")).count();
    let on_supabase = ok.iter().filter(|i| i.starts_with("w-supabase")).count();
    assert!(
        on_file > 50 && on_supabase > 10,
        "{on_file} / {on_supabase}"
    );
    let there = ids_on_supabase(&pg).await;
    let lost: Vec<&String> = ok.iter().filter(|i| !there.contains(*i)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );

    // One primary, recorded in the file, and Supabase agrees.
    assert_eq!(marker::read_file(&db).unwrap().primary, Primary::Supabase);
    assert_eq!(access_state(&pg).await, "primary");
    let e = file_write(&db, "late").unwrap_err();
    assert!(
        e.contains("no longer the primary") && e.contains("DB_BACKEND=supabase"),
        "{e}"
    );
    // Run again: nothing to do, and it says so.
    let (code, report, _) = run_json(&mut cutover(&db, &pg, &[], None));
    assert_eq!(
        (code, report["switched"].as_bool()),
        (0, Some(true)),
        "{report:#}"
    );
    // The same daemon followed the switch: what the app wrote on Supabase reaches the file.
    let (code, body) = crate::serve::ready_within(port, 200, 30).await;
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let in_file = ids_in_file(&db);
        let missing = ok.iter().filter(|i| !in_file.contains(*i)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} rows never reached the file"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_each_step_a_second_run_completes_with_one_primary_and_no_fence_left() {
    needs_stack!();
    for step in [
        "drain-taken",
        "verified",
        "drained",
        "fence-drained",
        "supabase-switched",
        "switched",
    ] {
        let pg = PrivateDb::new().await;
        let dir = tempfile::tempdir().unwrap();
        let db = captured_file(dir.path(), &pg).await;
        for i in 0..40 {
            file_write(&db, &format!("before-{i}")).unwrap();
        }
        let mut c = cutover(&db, &pg, &[], Some(step));
        let log = dir.path().join("cutover.log");
        c.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = c.spawn().unwrap();
        wait_stalled(&log, &mut child, step).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        // No fence outlives the process; the file's marker is the one answer.
        let m = marker::read_file(&db).unwrap();
        let switched = step == "switched";
        assert_eq!(m.primary == Primary::Supabase, switched, "{step}: {m:?}");
        match file_write(&db, &format!("after-kill-{step}")) {
            Ok(()) => assert!(!switched, "{step}: the file took a write after the switch"),
            Err(e) => assert!(
                switched && e.contains("no longer the primary"),
                "{step}: {e}"
            ),
        }

        // Run again: it completes.
        let (code, report, stderr) = run_json(&mut cutover(&db, &pg, &[], None));
        assert_eq!(code, 0, "{step}: {report:#}\n{stderr}");
        assert_eq!(
            marker::read_file(&db).unwrap().primary,
            Primary::Supabase,
            "{step}"
        );
        assert_eq!(access_state(&pg).await, "primary", "{step}");
        let there = ids_on_supabase(&pg).await;
        assert!(
            there.contains("before-0") && there.contains("before-39"),
            "{step}"
        );
        if !switched {
            assert!(there.contains(&format!("after-kill-{step}")), "{step}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgrest_stopped_in_the_fence_lifts_it_at_max_pause_with_nothing_switched() {
    needs_stack!();
    let mut pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    for i in 0..20 {
        file_write(&db, &format!("a-{i}")).unwrap();
    }
    // A dry run: the preflight passes, the plan is printed, nothing changes.
    let (code, report, stderr) = run_json(&mut cutover(&db, &pg, &["--dry-run"], None));
    assert_eq!(
        (code, report["dry_run"].as_bool()),
        (0, Some(true)),
        "{report:#}\n{stderr}"
    );
    assert!(
        report["next"]
            .as_str()
            .unwrap()
            .contains("would take the drain"),
        "{report:#}"
    );
    assert_eq!(marker::read_file(&db).unwrap(), marker::Marker::default());
    assert_eq!(dualwrite::capture::status(&db).unwrap().pending, 20);
    // The run pauses before the fence; PostgREST goes away and the app
    // writes meanwhile, so the fence has changes to send.
    let mut c = cutover(&db, &pg, &["--max-pause", "2"], Some("drained:3000"));
    let log = dir.path().join("cutover.log");
    c.stderr(std::fs::File::create(&log).unwrap());
    let mut child = c.stdout(Stdio::piped()).spawn().unwrap();
    wait_stalled(&log, &mut child, "drained").await;
    pg.stop();
    for i in 0..20 {
        file_write(&db, &format!("b-{i}")).unwrap();
    }
    let started = Instant::now();
    let o = child.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(&log).unwrap_or_default()));
    assert_eq!(o.status.code(), Some(3), "{report:#}");
    assert_eq!(report["switched"], false, "{report:#}");
    let why = report["stopped"].as_str().unwrap();
    assert!(
        why.contains("--max-pause") && why.contains("fence lifted"),
        "{why}"
    );
    // It lifted: the app writes again, the file is still the primary.
    file_write(&db, "after").unwrap();
    assert_eq!(marker::read_file(&db).unwrap().primary, Primary::Sqlite);
    assert!(marker::read_file(&db).unwrap().switching.is_none());
    assert!(started.elapsed() < Duration::from_secs(10 + 3));
    pg.start().await;
    assert_eq!(access_state(&pg).await, "mirror");
    // A run once Supabase is back completes, and loses nothing.
    let (code, report, stderr) = run_json(&mut cutover(&db, &pg, &[], None));
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    let there = ids_on_supabase(&pg).await;
    for id in ["a-0", "b-19", "after"] {
        assert!(there.contains(id), "{id}");
    }
}

fn ids_in_file(db: &Path) -> std::collections::HashSet<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c.prepare("SELECT id FROM logentry").unwrap();
    st.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_holds_the_writes_on_supabase_and_brings_every_one_to_the_file() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = captured_file(dir.path(), &pg).await;
    for i in 0..30 {
        file_write(&db, &format!("before-{i}")).unwrap();
    }
    let (code, report, stderr) = run_json(&mut cutover(&db, &pg, &[], None));
    assert_eq!(code, 0, "{report:#}\n{stderr}");

    // The app runs on Supabase; the rollback holds its writes, then restarts it on the file.
    let w = Writers::new(dir.path());
    let on_supabase = w.spawn("supabase", &db, &pg);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restart = w.restart_command(on_supabase.id(), "sqlite", &db, &pg);
    let (code, report, stderr) = run_json(&mut command(
        "rollback",
        &db,
        &pg,
        &["--restart", &restart],
        None,
    ));
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(report["switched"], true, "{report:#}");
    assert!(report["pause_ms"].as_u64().unwrap() < 4000, "{report:#}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w.stop();
    drop(on_supabase);

    assert_eq!(w.errors(), "", "a write failed");
    let ok = w.ok();
    assert!(
        ok.iter().filter(|i| i.starts_with("w-supabase")).count() > 10
            && ok.iter().filter(|i| i.starts_with("w-sqlite")).count() > 10,
        "{ok:?}"
    );
    let in_file = ids_in_file(&db);
    let lost: Vec<&String> = ok.iter().filter(|i| !in_file.contains(*i)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes not in the file: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(in_file.contains("before-29"));

    assert_eq!(marker::read_file(&db).unwrap().primary, Primary::Sqlite);
    assert_eq!(access_state(&pg).await, "mirror");
    let st = dualwrite::capture::supabase::state(&pg.rest(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(!st.enabled, "capture on Supabase is still on: {report:#}");
    // The file takes writes again, and captures them.
    file_write(&db, "after-rollback").unwrap();
    assert!(dualwrite::capture::status(&db).unwrap().pending > 0);
}

/// A write through PostgREST (the app on Supabase): how long it took, or its error.
async fn rest_write(pg: &PrivateDb, id: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let body = serde_json::json!([{"id": id, "document_id": "doc-t", "ts": "2024-01-01T00:00:00Z",
        "level": "INFO", "code": "C1", "component": "test", "message": "m", "attrs": {}}]);
    let r = reqwest::Client::new()
        .post(format!("{}/log_entries", pg.url))
        .bearer_auth(pg.service_key())
        .header("apikey", pg.service_key())
        .header("Prefer", "return=minimal")
        .json(&body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!(
            "{}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        ));
    }
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_killed_at_each_step_leaves_one_primary_and_a_second_run_completes() {
    needs_stack!();
    for step in ["drain-taken", "drained", "fence-drained", "switched"] {
        let pg = PrivateDb::new().await;
        let dir = tempfile::tempdir().unwrap();
        let db = captured_file(dir.path(), &pg).await;
        file_write(&db, "before").unwrap();
        let (code, report, stderr) = run_json(&mut cutover(&db, &pg, &[], None));
        assert_eq!(code, 0, "{report:#}\n{stderr}");
        for i in 0..20 {
            rest_write(&pg, &format!("on-supabase-{i}")).await.unwrap();
        }
        let mut c = command("rollback", &db, &pg, &[], Some(step));
        let log = dir.path().join("rollback.log");
        c.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = c.spawn().unwrap();
        wait_stalled(&log, &mut child, step).await;
        child.kill().unwrap();
        child.wait().unwrap();

        // The file's marker is the one answer; a fence on Supabase ends by itself.
        let switched = step == "switched";
        let m = marker::read_file(&db).unwrap();
        assert_eq!(m.primary == Primary::Sqlite, switched, "{step}: {m:?}");
        let took = rest_write(&pg, &format!("after-kill-{step}"))
            .await
            .unwrap();
        assert!(
            took < Duration::from_secs(7),
            "{step}: a Supabase write waited {took:?}"
        );

        let (code, report, stderr) = run_json(&mut command("rollback", &db, &pg, &[], None));
        assert_eq!(code, 0, "{step}: {report:#}\n{stderr}");
        assert_eq!(
            marker::read_file(&db).unwrap().primary,
            Primary::Sqlite,
            "{step}"
        );
        assert_eq!(access_state(&pg).await, "mirror", "{step}");
        let in_file = ids_in_file(&db);
        assert!(
            in_file.contains("on-supabase-19") && in_file.contains("before"),
            "{step}"
        );
        if !switched {
            assert!(in_file.contains(&format!("after-kill-{step}")), "{step}");
        }
        file_write(&db, "after").unwrap();
    }
}

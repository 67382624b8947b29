//! Change capture and `serve`: what capture costs the writer, the mirror's lag
//! under a steady write load, the drain rate after an outage against the
//! backfill's, and the daemon's memory and idle CPU.
//!
//! Run: `scripts/stack.sh up && cargo bench --bench capture`
//! (`SECS` of steady load, default 60; `OUTAGE_SECS` of writing with the daemon
//! stopped, default 60; `RATE` row-writes/s, default 1000; `COMMITS` for the
//! overhead part, default 20,000; `POLL_MS`, `BATCH_ROWS`, `REQUEST_ROWS` and
//! `CONCURRENCY`, the daemon's `--poll-ms`, `--batch-rows`, `--request-rows` and
//! `--concurrency`, default the daemon's own; `BACKFILLS`, the backfill's runs,
//! default 3; `DAEMON_LOG`, the daemon's `RUST_LOG`, default `warn`). In one run it:
//! 1. times single-row committed inserts (WAL, synchronous=NORMAL) on two fresh
//!    DoX files, one with capture installed, alternating rounds;
//! 2. writes RATE rows/s for OUTAGE_SECS with no daemon (the writer's commit
//!    latency "serve stopped"; the changes pile up in the log);
//! 3. starts `dualwrite serve` (release binary, its own process) and times the
//!    drain of that backlog;
//! 4. writes RATE rows/s for SECS with the daemon running, sampling the lag
//!    (the age of the oldest change not yet acknowledged, read from the change
//!    log) every 20 ms, and the writer's commit latency;
//! 5. measures the idle daemon's CPU over 5 s and its peak RSS (VmHWM);
//! 6. writes RATE rows/s to a fresh file in `PHASES` alternating phases of
//!    `PHASE_SECS` (default 6 of 10 s), serve stopped then draining, for the
//!    writer's commit latency in both states in the same minute (steps 2 and 4
//!    are minutes apart, and step 4 runs the lag sampler). With
//!    `SERVE_ARGS_B="--poll-ms 250"` (any `serve` arguments), every other
//!    draining phase runs the daemon with them, and both settings are compared
//!    in the same run (at least 8 phases); with `SERVE_BIN_B=<path>`, those
//!    phases run that `dualwrite` binary instead (another build of the same
//!    change-log version, compared in the same run: two versions would each
//!    re-install their own triggers on the shared file); with `SCRAPE_MS_B=<ms>`, a scraper reads `/metrics`,
//!    `/ready` and `/status` every that many milliseconds during those phases
//!    (what the signals' reads of the change log cost the writer);
//! 7. deletes the rows from Supabase and backfills the same file (release
//!    binary) for the backfill's rows/s on the same machine in the same run:
//!    once after OUTAGE_SECS with no request to Supabase (as the drain came
//!    after the outage), then BACKFILLS times one after another (the median
//!    taken); the drain's rows/s is given against both.
//!
//! Rows go to the shared stack with ids unique to the run and are deleted at
//! the end (through DATABASE_URL); nothing else is touched.
//! Under `cargo test` (no `--bench`) it makes a short smoke run.

// Test and benchmark helpers fail loudly by design: an unwrap is their assertion
// (clippy.toml allows it inside #[test] functions only).
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dualwrite::capture;
use dualwrite::db::{SqliteDatabase, SqliteOptions};
use hdrhistogram::Histogram;

async fn dox_file(path: &Path, with_capture: bool) {
    let _ = std::fs::remove_file(path);
    drop(
        SqliteDatabase::open(path, SqliteOptions::default())
            .await
            .unwrap(),
    );
    if with_capture {
        capture::install(path, None).unwrap();
    }
}

fn app_conn(path: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
        .unwrap();
    c
}

const INSERT: &str = "INSERT INTO artifact (id, filename, filepath, filetype, report_week, status, source_url, extra_json) \
                      VALUES (?1, 'report.pdf', '/data/report.pdf', 'pdf', '2024-W01', 'new', NULL, '{}')";

/// Single-row committed inserts; latency in ns.
fn commits(c: &rusqlite::Connection, prefix: &str, n: u64, h: &mut Histogram<u64>) {
    let mut stmt = c.prepare_cached(INSERT).unwrap();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let t = Instant::now();
        stmt.execute([&id]).unwrap();
        h.record(t.elapsed().as_nanos() as u64).unwrap();
    }
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// p99 of `on` over p99 of `off`.
fn p99_ratio(on: &Histogram<u64>, off: &Histogram<u64>) -> f64 {
    on.value_at_quantile(0.99) as f64 / off.value_at_quantile(0.99).max(1) as f64
}

/// Write `rate` rows/s for `secs` (3 inserts, then an update of an earlier
/// row); returns the commit latencies (µs) and the rows written. Each commit is
/// recorded in the histogram `slot` names when it starts (`slots` of them).
fn paced_writer(
    path: PathBuf,
    prefix: String,
    rate: u64,
    secs: f64,
    start_at: u64,
    slot: Arc<AtomicUsize>,
    slots: usize,
) -> (Vec<Histogram<u64>>, u64) {
    let c = app_conn(&path);
    let mut h = vec![Histogram::<u64>::new(3).unwrap(); slots];
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut n = 0u64;
    let mut ins = c.prepare_cached(INSERT).unwrap();
    let mut upd = c
        .prepare_cached("UPDATE artifact SET status = ?2, extra_json = ?3 WHERE id = ?1")
        .unwrap();
    while started.elapsed().as_secs_f64() < secs {
        let at = slot.load(Ordering::Relaxed);
        if at >= slots {
            break;
        }
        let due = started + period * (n as u32);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let i = start_at + n;
        let t = Instant::now();
        if n % 4 == 3 {
            upd.execute(rusqlite::params![
                format!("{prefix}-{}", i - 2),
                format!("s{i}"),
                format!("{{\"n\":{i}}}")
            ])
            .unwrap();
        } else {
            ins.execute([format!("{prefix}-{i}")]).unwrap();
        }
        h[at].record(t.elapsed().as_micros() as u64).unwrap();
        n += 1;
    }
    (h, n)
}

/// [`paced_writer`] into one histogram.
async fn paced(
    path: &Path,
    prefix: &str,
    rate: u64,
    secs: f64,
    start_at: u64,
) -> (Histogram<u64>, u64) {
    let (path, prefix) = (path.to_owned(), prefix.to_owned());
    let slot = Arc::new(AtomicUsize::new(0));
    let (mut h, n) = tokio::task::spawn_blocking(move || {
        paced_writer(path, prefix, rate, secs, start_at, slot, 1)
    })
    .await
    .unwrap();
    (h.remove(0), n)
}

/// The keys waiting, in the change log or in the queue not yet folded into it.
fn pending(path: &Path) -> i64 {
    capture::status(path).unwrap().pending as i64
}

/// The pending changes, read from both tables capture keeps: the change log
/// and the queue's entries not yet folded into it (`seq` above `folded_hi`).
const UNFOLDED: &str = "FROM _dualwrite_queue WHERE seq > \
     (SELECT coalesce(max(value), 0) FROM _dualwrite_meta WHERE name = 'folded_hi')";

/// The lowest `seq` pending.
fn min_pending_seq() -> String {
    format!("SELECT min(s) FROM (SELECT min(seq) AS s FROM _dualwrite_changes UNION ALL SELECT min(seq) {UNFOLDED})")
}

/// When the oldest pending change was made.
fn oldest_pending_at() -> String {
    format!("SELECT min(a) FROM (SELECT min(at) AS a FROM _dualwrite_changes UNION ALL SELECT min(at) {UNFOLDED})")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(env: &HashMap<String, String>, path: &Path, state: &Path, port: u16) -> Child {
    serve_with(env, path, state, port, &Variant::default())
}

/// What the B phases of step 6 change (all empty: no B phases).
#[derive(Default)]
struct Variant {
    /// `SERVE_ARGS_B`: more `serve` arguments.
    args: Vec<String>,
    /// `SERVE_BIN_B`: another `dualwrite` binary.
    bin: Option<PathBuf>,
    /// `SCRAPE_MS_B`: read the daemon's signals this often.
    scrape: Option<Duration>,
}

impl Variant {
    fn from_env() -> Variant {
        Variant {
            args: std::env::var("SERVE_ARGS_B")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            bin: std::env::var_os("SERVE_BIN_B").map(PathBuf::from),
            scrape: std::env::var("SCRAPE_MS_B")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis),
        }
    }

    fn is_empty(&self) -> bool {
        self.args.is_empty() && self.bin.is_none() && self.scrape.is_none()
    }

    fn describe(&self) -> String {
        let mut d = Vec::new();
        if !self.args.is_empty() {
            d.push(self.args.join(" "));
        }
        if let Some(b) = &self.bin {
            d.push(format!("binary {}", b.display()));
        }
        if let Some(s) = self.scrape {
            d.push(format!(
                "/metrics, /ready and /status read every {} ms",
                s.as_millis()
            ));
        }
        d.join("; ")
    }
}

/// Read the daemon's signals every `every` until `stop`.
async fn scrape(port: u16, every: Duration, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::new();
    while !stop.load(Ordering::Relaxed) {
        for path in ["/metrics", "/ready", "/status"] {
            let _ = client
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await;
        }
        tokio::time::sleep(every).await;
    }
}

/// [`serve`], with a variant's binary and arguments (which replace the value
/// of an option the bench's environment gives).
fn serve_with(
    env: &HashMap<String, String>,
    path: &Path,
    state: &Path,
    port: u16,
    variant: &Variant,
) -> Child {
    let extra = &variant.args;
    let tuned = [
        ("--poll-ms", "POLL_MS"),
        ("--batch-rows", "BATCH_ROWS"),
        ("--request-rows", "REQUEST_ROWS"),
        ("--concurrency", "CONCURRENCY"),
    ];
    let bin = variant
        .bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dualwrite")));
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--state-dir", state.to_str().unwrap()]);
    for (flag, var) in tuned {
        if let (Ok(v), false) = (std::env::var(var), extra.iter().any(|a| a == flag)) {
            cmd.args([flag, &v]);
        }
    }
    cmd.args(extra)
        .envs(env)
        .env("DB_PATH", path)
        // `DAEMON_LOG` (default `warn`) to see the daemon's own log.
        .env(
            "RUST_LOG",
            std::env::var("DAEMON_LOG").unwrap_or_else(|_| "warn".into()),
        )
        // As docs/dualwrite.service and docker-compose.yml run it: the
        // allocator returns freed memory at once, so a backlog's batches do not
        // leave the RSS at its peak (BENCHMARKS.md).
        .env("MIMALLOC_PURGE_DELAY", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Two adjacent fields of a `/proc/.../stat` file, summed, in clock ticks
/// (`at`: the index after the command's closing parenthesis).
fn stat_ticks(path: &str, at: usize) -> u64 {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(at).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(at + 1).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// utime + stime, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    stat_ticks(&format!("/proc/{pid}/stat"), 11)
}

/// CPU ticks of this process's children that were waited for (the backfills):
/// cutime + cstime.
fn children_ticks() -> u64 {
    stat_ticks("/proc/self/stat", 13)
}

/// Delete the run's rows from Supabase, then backfill them (release binary):
/// (seconds, rows written, the report's rows/s).
async fn backfill_once(env: &HashMap<String, String>, db: &Path, prefix: &str) -> (f64, u64, f64) {
    delete_rows(env, prefix).await;
    let state = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .args(["backfill", "--from-sqlite", db.to_str().unwrap(), "--json"])
        .args(["--state-dir", state.path().to_str().unwrap()])
        .args(["--tables", "artifact"])
        .envs(env)
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        secs,
        report["rows_written"].as_u64().unwrap_or(0),
        report["rows_per_second"].as_f64().unwrap_or(0.0),
    )
}

/// Whether phase `k` of step 6 runs the B variant: every other draining phase
/// (the draining phases are the odd ones).
fn runs_b(k: usize) -> bool {
    k % 4 == 3
}

/// The writer's commit latency with `serve` stopped and draining, in
/// alternating phases of one run on one file (stopped first): each a
/// histogram (µs), and one more for the transitions (a daemon stopping, or
/// starting and catching up with the changes of the phase before). Also the
/// catch-up times (s) and the rows written.
async fn alternating(
    env: &HashMap<String, String>,
    dir: &Path,
    prefix: &str,
    rate: u64,
    phases: usize,
    phase_secs: u64,
    variant_b: &Variant,
) -> (Vec<Histogram<u64>>, Vec<f64>, u64) {
    let db = dir.join("alternating.sqlite3");
    dox_file(&db, true).await;
    let state = dir.join("alternating-state");
    let between = phases;
    let slot = Arc::new(AtomicUsize::new(between));
    let writer = {
        let (db, prefix, slot) = (db.clone(), format!("{prefix}-w"), Arc::clone(&slot));
        tokio::task::spawn_blocking(move || {
            paced_writer(db, prefix, rate, f64::INFINITY, 0, slot, phases + 1)
        })
    };
    let watch =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let seq = |sql: &str| -> Option<i64> { watch.query_row(sql, [], |r| r.get(0)).unwrap() };
    let mut catch_up = Vec::new();
    for k in 0..phases {
        if k % 2 == 0 {
            slot.store(k, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(phase_secs)).await;
            slot.store(between, Ordering::Relaxed);
            continue;
        }
        // Start the daemon; the phase begins once every change of the phase
        // before is acknowledged.
        // The queue's last row holds the highest `seq` ever given.
        let backlog = seq("SELECT max(seq) FROM _dualwrite_queue").unwrap_or(0);
        let t = Instant::now();
        let a = Variant::default();
        let variant = if runs_b(k) { variant_b } else { &a };
        let port = free_port();
        let mut daemon = serve_with(env, &db, &state, port, variant);
        while seq(&min_pending_seq()).is_some_and(|s| s <= backlog) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(t.elapsed() < Duration::from_secs(120), "no catch-up");
        }
        catch_up.push(t.elapsed().as_secs_f64());
        let scraping = Arc::new(AtomicBool::new(false));
        let scraper = variant
            .scrape
            .map(|every| tokio::spawn(scrape(port, every, Arc::clone(&scraping))));
        slot.store(k, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(phase_secs)).await;
        slot.store(between, Ordering::Relaxed);
        scraping.store(true, Ordering::Relaxed);
        if let Some(s) = scraper {
            let _ = s.await;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &daemon.id().to_string()])
            .status();
        daemon.wait().unwrap();
    }
    slot.store(phases + 1, Ordering::Relaxed);
    let (h, n) = writer.await.unwrap();
    (h, catch_up, n)
}

async fn lag_seconds(port: u16) -> Option<f64> {
    metric(port, "dualwrite_lag_seconds").await
}

async fn delete_rows(env: &HashMap<String, String>, prefix: &str) {
    let (c, conn) = tokio_postgres::connect(&env["DATABASE_URL"], tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.execute(
        "DELETE FROM artifacts WHERE id LIKE $1",
        &[&format!("{prefix}-%")],
    )
    .await
    .unwrap();
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (secs, outage, commits_n) = if bench {
        (
            env_or("SECS", 60),
            env_or("OUTAGE_SECS", 60),
            env_or("COMMITS", 20_000),
        )
    } else {
        println!("smoke run (cargo test): debug build, a few seconds");
        (2, 2, 500)
    };
    let rate = env_or("RATE", 1000);
    let env = stack_env();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("bench-capture-{}", &run_id[..12]);
    let dir = tempfile::tempdir().unwrap();

    // 1. Capture overhead on the writer.
    let plain = dir.path().join("plain.sqlite3");
    let captured = dir.path().join("captured.sqlite3");
    dox_file(&plain, false).await;
    dox_file(&captured, true).await;
    let (cp, cc) = (app_conn(&plain), app_conn(&captured));
    let mut hp = Histogram::<u64>::new(3).unwrap();
    let mut hc = Histogram::<u64>::new(3).unwrap();
    let rounds = 4;
    for r in 0..rounds {
        commits(&cp, &format!("p{r}"), commits_n / rounds, &mut hp);
        commits(&cc, &format!("c{r}"), commits_n / rounds, &mut hc);
    }
    println!(
        "\n1. single-row committed insert, WAL + synchronous=NORMAL, {commits_n} commits each (µs)"
    );
    println!("| file | p50 | p99 | mean |\n|---|---:|---:|---:|");
    for (name, h) in [("no capture", &hp), ("capture installed", &hc)] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            us(h, 0.5),
            us(h, 0.99),
            h.mean() / 1000.0
        );
    }
    println!(
        "capture overhead at p50: {:.1} µs",
        us(&hc, 0.5) - us(&hp, 0.5)
    );
    drop((cp, cc));

    // 2. An outage: the app writes, no daemon runs.
    let db = dir.path().join("app.sqlite3");
    dox_file(&db, true).await;
    let state = dir.path().join("state");
    let (h_off, n_off) = paced(&db, &prefix, rate, outage as f64, 0).await;
    let backlog = pending(&db);

    // 3. The daemon starts and drains the backlog.
    let port = free_port();
    let mut daemon = serve(&env, &db, &state, port);
    let pid = daemon.id();
    let t = Instant::now();
    let mut up: Option<f64> = None;
    // Polled through one connection with a query that costs the same whatever
    // the backlog (a count would scan the log every 5 ms, on the cores the
    // daemon and the stack share).
    let watch =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let any_pending = || -> bool {
        watch
            .query_row(
                &format!("SELECT EXISTS (SELECT 1 FROM _dualwrite_changes) OR EXISTS (SELECT 1 {UNFOLDED})"),
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    while any_pending() {
        if up.is_none() && lag_seconds(port).await.is_some() {
            up = Some(t.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "the drain did not finish"
        );
    }
    let drain_secs = t.elapsed().as_secs_f64();
    // The daemon answers HTTP once it has opened the file and checked the triggers.
    let startup = up.unwrap_or(0.0);
    let rss_after_drain = proc_status(pid, "VmRSS:");
    let drain_cpu = cpu_ticks(pid) as f64 / 100.0;
    drop(watch);

    // 4. Steady load with the daemon running.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        let db = db.clone();
        tokio::task::spawn_blocking(move || {
            // The lag read from the change log itself (the age of the oldest
            // change not yet acknowledged), not from the daemon's gauge.
            let c = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            let mut h = Histogram::<u64>::new(3).unwrap();
            let mut rss = Vec::new();
            let mut last_rss = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let oldest: Option<f64> =
                    c.query_row(&oldest_pending_at(), [], |r| r.get(0)).unwrap();
                let lag = oldest.map_or(0.0, |at| (capture::now_secs() - at).max(0.0));
                h.record((lag * 1000.0) as u64).unwrap();
                if last_rss.elapsed() >= Duration::from_secs(5) {
                    rss.push(proc_status(pid, "VmRSS:"));
                    last_rss = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (h, rss)
        })
    };
    let (h_on, n_on) = paced(&db, &prefix, rate, secs as f64, n_off + 10).await;
    stop.store(true, Ordering::Relaxed);
    let (lag, rss_samples) = sampler.await.unwrap();
    while pending(&db) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let gauge = lag_seconds(port).await;
    // 5. Idle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c0 = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cpu = (cpu_ticks(pid) - c0) as f64 / 100.0 / 5.0 * 100.0;
    let peak_rss = proc_status(pid, "VmHWM:");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let exit = daemon.wait().unwrap();

    // 6. The writer's commit latency with serve stopped and draining, in
    // alternating phases of one run (`PHASES`, default 6, of `PHASE_SECS`,
    // default 10): steps 2 and 4 compare the first minute of the run with a
    // minute three minutes later, the second one with the lag sampler reading
    // the log.
    let (phases, phase_secs) = if bench {
        (
            env_or("PHASES", 6).max(2) as usize,
            env_or("PHASE_SECS", 10),
        )
    } else {
        (2, 1)
    };
    // `SERVE_ARGS_B` (say "--poll-ms 250"), `SERVE_BIN_B`, `SCRAPE_MS_B`:
    // every other draining phase runs that variant, to compare two settings
    // in one run (phases of one run differ less than runs do).
    let variant_b = Variant::from_env();
    let (alt, catch_up, n_alt) = alternating(
        &env,
        dir.path(),
        &prefix,
        rate,
        phases,
        phase_secs,
        &variant_b,
    )
    .await;

    // 7. The backfill of the same rows, on the same machine, in the same run.
    // First after `OUTAGE_SECS` with no request to Supabase, as the drain
    // started (PostgREST closes the database connections it held idle for
    // 30 s, and opens them again with the first requests); then `BACKFILLS`
    // times (default 3) one after another, the median taken (a backfill of a
    // few hundred milliseconds varies by a third from one run to the next).
    tokio::time::sleep(Duration::from_secs(outage)).await;
    let ticks = children_ticks();
    let after_idle = backfill_once(&env, &db, &prefix).await;
    let after_idle_cpu = (children_ticks() - ticks) as f64 / 100.0;
    let mut runs: Vec<(f64, u64, f64)> = Vec::new();
    let ticks = children_ticks();
    for _ in 0..env_or("BACKFILLS", 3).max(1) {
        runs.push(backfill_once(&env, &db, &prefix).await);
    }
    let backfill_cpu = (children_ticks() - ticks) as f64 / 100.0 / runs.len() as f64;
    delete_rows(&env, &prefix).await;
    let all: Vec<String> = runs.iter().map(|r| format!("{:.2}", r.0)).collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (backfill_secs, backfill_rows, reported) = runs[runs.len() / 2];

    println!("\n2-3. outage: {n_off} row-writes at {rate}/s with no daemon -> {backlog} pending changes (coalesced by key)");
    println!(
        "drain: {backlog} changes in {drain_secs:.2} s from the process start = {:.0} rows/s; {:.2} s from its first HTTP answer ({startup:.2} s) = {:.0} rows/s",
        backlog as f64 / drain_secs,
        drain_secs - startup,
        backlog as f64 / (drain_secs - startup).max(1e-3)
    );
    println!(
        "daemon CPU from its start to the end of the drain: {drain_cpu:.2} s = {:.1} µs per change",
        drain_cpu * 1e6 / backlog.max(1) as f64
    );
    let drain_rate = backlog as f64 / drain_secs;
    let answered_rate = backlog as f64 / (drain_secs - startup).max(1e-3);
    let idle_rate = after_idle.1 as f64 / after_idle.0;
    let warm_rate = backfill_rows as f64 / backfill_secs;
    println!(
        "backfill (release binary, artifact table, {} rows) after {outage} s with no request to Supabase, as the drain: {:.2} s = {idle_rate:.0} rows/s (report: {:.0} rows/s); CPU {:.1} µs per row",
        after_idle.1,
        after_idle.0,
        after_idle.2,
        after_idle_cpu * 1e6 / after_idle.1.max(1) as f64
    );
    println!(
        "backfill right after another, median of {} runs ({} s): {backfill_secs:.2} s = {warm_rate:.0} rows/s (report: {reported:.0} rows/s); CPU {:.1} µs per row",
        all.len(),
        all.join(", "),
        backfill_cpu * 1e6 / backfill_rows.max(1) as f64
    );
    println!(
        "drain / backfill after the same idle time: {:.2} (from the process start), {:.2} (from the first HTTP answer)",
        drain_rate / idle_rate,
        answered_rate / idle_rate
    );
    println!(
        "drain / backfill right after another: {:.2} (from the process start), {:.2} (from the first HTTP answer)",
        drain_rate / warm_rate,
        answered_rate / warm_rate
    );
    println!("\n4. {n_on} row-writes at {rate}/s for {secs} s with serve draining (gauge after the load: {gauge:?} s)");
    println!(
        "lag (age of the oldest unacknowledged change, read from the log every 20 ms, {} samples): p50 {} ms, p99 {} ms, max {} ms",
        lag.len(),
        lag.value_at_quantile(0.5),
        lag.value_at_quantile(0.99),
        lag.max()
    );
    println!("| writer commit latency (µs) | p50 | p99 | max |\n|---|---:|---:|---:|");
    for (name, h) in [("serve stopped", &h_off), ("serve draining", &h_on)] {
        println!(
            "| {name} | {} | {} | {} |",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
    println!(
        "p99 ratio (draining / stopped): {:.2}",
        p99_ratio(&h_on, &h_off)
    );
    println!(
        "\n5. daemon: peak RSS {:.1} MB; RSS after the drain {:.1} MB; during the load every 5 s (MB): {:?}; idle CPU {idle_cpu:.2}% of a core; exit on SIGTERM: {exit}",
        peak_rss as f64 / 1024.0,
        rss_after_drain as f64 / 1024.0,
        rss_samples
            .iter()
            .map(|k| (*k as f64 / 1024.0 * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    println!(
        "\n6. {n_alt} row-writes at {rate}/s on a fresh file, {phases} phases of {phase_secs} s, serve stopped then draining in turn (the daemon started anew for each draining phase, which began once the changes of the phase before were acknowledged: after {:?} s)",
        catch_up.iter().map(|s| (s * 100.0).round() / 100.0).collect::<Vec<_>>()
    );
    println!("| phase | p50 | p99 | p99.9 | max | commits | over 1 ms |\n|---|---:|---:|---:|---:|---:|---:|");
    // Stopped, draining (A: the bench's arguments), draining with the B variant.
    let mut both = [
        Histogram::<u64>::new(3).unwrap(),
        Histogram::<u64>::new(3).unwrap(),
        Histogram::<u64>::new(3).unwrap(),
    ];
    let row = |name: &str, h: &Histogram<u64>| {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            h.len(),
            h.len() - h.count_between(0, 1000)
        )
    };
    for (k, h) in alt.iter().enumerate() {
        if k == phases {
            row(
                "between phases (a daemon stopping, or starting and catching up)",
                h,
            );
        } else {
            let b = !variant_b.is_empty() && runs_b(k);
            both[if b { 2 } else { k % 2 }].add(h).unwrap();
            let state = ["stopped", "draining"][k % 2];
            row(
                &format!("{} {state}{}", k + 1, if b { " (B)" } else { "" }),
                h,
            );
        }
    }
    row("all stopped", &both[0]);
    row("all draining", &both[1]);
    if !variant_b.is_empty() {
        let [off, on, on_b] = &both;
        row(&format!("all draining (B: {})", variant_b.describe()), on_b);
        println!(
            "p99 ratio, B: {:.2} against stopped, {:.2} against draining with the bench's arguments (A)",
            p99_ratio(on_b, off),
            p99_ratio(on_b, on)
        );
    }
    println!(
        "p99 ratio, alternating (draining / stopped): {:.2}",
        p99_ratio(&both[1], &both[0])
    );
    // Each draining phase against the stopped phase just before it.
    let mut pairs: Vec<f64> = alt[..phases]
        .chunks_exact(2)
        .map(|p| p99_ratio(&p[1], &p[0]))
        .collect();
    pairs.sort_by(f64::total_cmp);
    println!(
        "p99 ratio per pair of phases (sorted): {:?}, median {:.2}",
        pairs
            .iter()
            .map(|r| (r * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        pairs[pairs.len() / 2]
    );
}

//! Many DoX deployments migrating at once onto one PostgreSQL server, each into
//! a project of its own (a database and a PostgREST: the tenancy rule is one
//! Supabase project per deployment, see docs/design/backfill.md "Tenancy").
//!
//! Run: `scripts/stack.sh up && cargo bench --bench deployments`
//! (`DEPLOYMENTS`, default 8; `ROWS` in all, default 1,000,000; `ROUNDS`, default
//! 2; `SECS` of write load, default 20; `RATE` row-writes/s in all, default 800;
//! `POOL`, each PostgREST's pool, default 10). In one run it:
//! 1. backfills, alternating ROUNDS times: one deployment of ROWS rows alone,
//!    then DEPLOYMENTS deployments of ROWS/DEPLOYMENTS rows each (generated
//!    with different seeds, cached under target/bench-data) at once, each
//!    `dualwrite backfill` (release binary) into its own project: aggregate
//!    rows/s against the one alone, the slowest against the fastest, rejects,
//!    and the 5xx responses the PostgRESTs logged;
//! 2. runs `serve` under write load, alternating: one app writing RATE rows/s
//!    with its daemon, then DEPLOYMENTS apps writing RATE/DEPLOYMENTS each, each
//!    with its daemon into its own project: each daemon's lag (`/metrics`,
//!    sampled every 100 ms), the time to drain after the writers stop, rows
//!    mirrored against rows written, 5xx.
//!
//! Each project is a database cloned from the stack's template, dropped at the
//! end; the shared stack's own database is not touched.
//! Under `cargo test` (no `--bench`) it makes a short smoke run.

// Test and benchmark helpers fail loudly by design: an unwrap is their assertion
// (clippy.toml allows it inside #[test] functions only).
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dualwrite::{capture, keys};
use hdrhistogram::Histogram;

/// A `dualwrite` process against `project` (service key, the project's own URL).
fn dualwrite(project: &Project, key: &str, db: &Path, state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dualwrite"));
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("RUST_LOG", "warn")
        .env("DB_PATH", db)
        .env("DUALWRITE_REST_URL", &project.postgrest.url)
        .env("SUPABASE_SERVICE_KEY", key)
        .env("DUALWRITE_SERVE_STATE_DIR", state)
        .current_dir(state)
        .stdin(Stdio::null());
    c
}

/// One backfill's outcome: wall seconds, rows written, rows rejected.
struct Run {
    secs: f64,
    written: u64,
    rejected: u64,
}

/// Backfills started together, one per (project, file); each timed on its own.
fn backfills(jobs: &[(&Project, &Path)], key: &str) -> (f64, Vec<Run>) {
    let started = Instant::now();
    let children: Vec<_> = jobs
        .iter()
        .map(|(p, file)| {
            let state = tempfile::tempdir().unwrap();
            let child = dualwrite(p, key, file, state.path())
                .args([
                    "backfill",
                    "--from-sqlite",
                    file.to_str().unwrap(),
                    "--json",
                ])
                .args(["--state-dir", state.path().to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (state, child)
        })
        .collect();
    let runs = std::thread::scope(|s| {
        let handles: Vec<_> = children
            .into_iter()
            .map(|(state, child)| {
                s.spawn(move || {
                    let out = child.wait_with_output().unwrap();
                    let secs = started.elapsed().as_secs_f64();
                    drop(state);
                    assert!(
                        out.status.success(),
                        "backfill failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    Run {
                        secs,
                        written: r["rows_written"].as_u64().unwrap(),
                        rejected: r["rows_rejected"].as_u64().unwrap(),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    (started.elapsed().as_secs_f64(), runs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

const INSERT: &str = "INSERT INTO artifact (id, filename, filepath, filetype, report_week, status, source_url, extra_json) \
                      VALUES (?1, 'report.pdf', '/data/report.pdf', 'pdf', '2024-W01', 'new', NULL, '{}')";

/// The app: `rate` committed single-row inserts per second for `secs`.
fn writer(path: PathBuf, prefix: String, rate: u64, secs: f64) -> u64 {
    let c = rusqlite::Connection::open(&path).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
        .unwrap();
    let mut ins = c.prepare_cached(INSERT).unwrap();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        if let Some(wait) = (started + period * (n as u32)).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        ins.execute([format!("{prefix}-{n}")]).unwrap();
        n += 1;
    }
    n
}

/// One daemon's figures under load.
struct Daemon {
    lag: Histogram<u64>,
    drain_secs: f64,
    written: u64,
    mirrored: i64,
}

/// `projects.len()` apps writing `rate` rows/s each for `secs`, each file
/// drained by its own `serve` into its own project.
async fn daemons(projects: &[&Project], key: &str, rate: u64, secs: f64, tag: &str) -> Vec<Daemon> {
    let dir = tempfile::tempdir().unwrap();
    let mut running: Vec<(Child, u16, PathBuf)> = Vec::new();
    for (i, p) in projects.iter().enumerate() {
        p.empty().await;
        let file = dir.path().join(format!("dox-{i}.sqlite3"));
        drop(
            dualwrite::db::SqliteDatabase::open(&file, dualwrite::db::SqliteOptions::default())
                .await
                .unwrap(),
        );
        capture::install(&file, None).unwrap();
        let state = dir.path().join(format!("state-{i}"));
        std::fs::create_dir_all(&state).unwrap();
        let port = free_port();
        let child = dualwrite(p, key, &file, &state)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        running.push((child, port, file));
    }
    for (_, port, _) in &running {
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric(*port, "dualwrite_lag_seconds").await.is_none() {
            assert!(Instant::now() < deadline, "serve did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let samplers: Vec<_> = running
        .iter()
        .map(|(_, port, _)| {
            let (port, stop) = (*port, stop.clone());
            tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(lag) = metric(port, "dualwrite_lag_seconds").await {
                        h.record((lag * 1000.0) as u64).unwrap();
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                h
            })
        })
        .collect();
    let writers: Vec<_> = running
        .iter()
        .enumerate()
        .map(|(i, (_, _, file))| {
            let (file, prefix) = (file.clone(), format!("{tag}-{i}"));
            tokio::task::spawn_blocking(move || writer(file, prefix, rate, secs))
        })
        .collect();
    let mut written = Vec::new();
    for w in writers {
        written.push(w.await.unwrap());
    }
    let stopped = Instant::now();
    let mut drain = Vec::new();
    for (_, port, _) in &running {
        let deadline = Instant::now() + Duration::from_secs(120);
        while metric(*port, "dualwrite_pending_changes").await != Some(0.0) {
            assert!(Instant::now() < deadline, "serve did not drain");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drain.push(stopped.elapsed().as_secs_f64());
    }
    stop.store(true, Ordering::Relaxed);
    let mut out = Vec::new();
    for (((sampler, (mut child, _, _)), written), (drain_secs, p)) in samplers
        .into_iter()
        .zip(running)
        .zip(written)
        .zip(drain.into_iter().zip(projects))
    {
        let lag = sampler.await.unwrap();
        let _ = child.kill();
        let _ = child.wait();
        out.push(Daemon {
            lag,
            drain_secs,
            written,
            mirrored: p.rows("artifacts").await,
        });
    }
    out
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n = env_or("DEPLOYMENTS", if bench { 8 } else { 2 });
    let (rows, rounds, secs, rate) = if bench {
        (
            env_or("ROWS", 1_000_000),
            env_or("ROUNDS", 2),
            env_or("SECS", 20) as f64,
            env_or("RATE", 800),
        )
    } else {
        println!("smoke run (cargo test): debug build, small sizes");
        (4_000, 1, 2.0, 100)
    };
    let pool = env_or("POOL", 10) as u32;
    let env = stack_env();
    let key = keys::sign(
        &env["SUPABASE_JWT_SECRET"],
        "service_role",
        None,
        Duration::from_secs(24 * 3600),
    )
    .unwrap();

    let solo_file = dataset(rows).await;
    let mut files = Vec::new();
    for seed in 1..=n {
        files.push(dataset_seeded(rows / n, seed).await);
    }
    let id = std::process::id();
    let mut projects = Vec::new();
    for i in 0..=n {
        projects.push(Project::new(&env, format!("dw_bench_dep_{id}_{i}"), pool, "").await);
    }
    let (solo, fleet) = projects.split_first().unwrap();

    // 1. Backfills.
    let (mut solo_rps, mut fleet_rps, mut spread) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rejected, mut written) = (0, 0);
    for round in 0..rounds {
        solo.empty().await;
        let (wall, runs) = backfills(&[(solo, solo_file.as_path())], &key);
        solo_rps.push(runs[0].written as f64 / wall);
        rejected += runs[0].rejected;
        for p in fleet {
            p.empty().await;
        }
        let jobs: Vec<_> = fleet
            .iter()
            .zip(&files)
            .map(|(p, f)| (p, f.as_path()))
            .collect();
        let (wall, runs) = backfills(&jobs, &key);
        let total: u64 = runs.iter().map(|r| r.written).sum();
        written += total;
        rejected += runs.iter().map(|r| r.rejected).sum::<u64>();
        let slowest = runs.iter().map(|r| r.secs).fold(0.0, f64::max);
        let fastest = runs.iter().map(|r| r.secs).fold(f64::MAX, f64::min);
        fleet_rps.push(total as f64 / wall);
        spread.push(slowest / fastest);
        println!(
            "round {}: alone {:.0} rows/s; {n} at once {:.0} rows/s in all, each {:.1}-{:.1} s",
            round + 1,
            solo_rps[round as usize],
            fleet_rps[round as usize],
            fastest,
            slowest
        );
    }
    let errors_backfill: usize = projects.iter().map(Project::server_errors).sum();
    let (solo_m, fleet_m) = (median(solo_rps), median(fleet_rps));
    println!(
        "\n1. Backfill: one deployment of {rows} rows alone against {n} of {} rows each at once, \
         each into its own project (median of {rounds} rounds)",
        rows / n
    );
    println!("| | rows/s | slowest / fastest | rejects | 5xx |\n|---|---:|---:|---:|---:|");
    println!("| one alone | {solo_m:.0} | | | |");
    println!(
        "| {n} at once | {fleet_m:.0} | {:.2} | {rejected} | {errors_backfill} |",
        median(spread.clone())
    );
    println!(
        "aggregate {:.2}x one alone (target >= 0.9x); slowest {:.2}x the fastest (target <= 1.5x); \
         {written} rows written by the {n}",
        fleet_m / solo_m,
        median(spread)
    );

    // 2. Daemons under write load: one app at RATE against n apps at RATE/n.
    let before = projects.iter().map(Project::server_errors).sum::<usize>();
    println!(
        "\n2. serve under write load for {secs:.0} s: one app at {rate} rows/s against {n} apps \
         at {} rows/s each, each daemon into its own project",
        rate / n
    );
    println!(
        "| | lag p50 ms | lag p99 ms | lag max ms | drained after stop s | written | mirrored |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    let alone = daemons(&[solo], &key, rate, secs, "solo").await;
    let many = daemons(
        &fleet.iter().collect::<Vec<_>>(),
        &key,
        rate / n,
        secs,
        "fleet",
    )
    .await;
    for (label, ds) in [
        ("one alone", &alone),
        (&*format!("{n} at once (worst)"), &many),
    ] {
        let worst = ds
            .iter()
            .max_by_key(|d| d.lag.value_at_quantile(0.99))
            .unwrap();
        let written: u64 = ds.iter().map(|d| d.written).sum();
        let mirrored: i64 = ds.iter().map(|d| d.mirrored).sum();
        println!(
            "| {label} | {} | {} | {} | {:.2} | {written} | {mirrored} |",
            worst.lag.value_at_quantile(0.5),
            worst.lag.value_at_quantile(0.99),
            worst.lag.max(),
            ds.iter().map(|d| d.drain_secs).fold(0.0, f64::max),
        );
        assert_eq!(written as i64, mirrored, "every written row is mirrored");
    }
    let errors_serve = projects.iter().map(Project::server_errors).sum::<usize>() - before;
    println!("5xx responses during the daemons' runs: {errors_serve}");

    Project::drop_all(&env, projects).await;
}

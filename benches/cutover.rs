//! `cutover run` at two database sizes: how long from the start to the fence,
//! how long the app's writes are held, how many keys the fence verifies, and
//! the longest single write of an app writing all along.
//!
//! Run: `scripts/stack.sh up && cargo bench --bench cutover` (`SIZES`,
//! comma-separated rows, default `100000,1000000`; `RATE` app writes/s,
//! default 200). For each size, in a private project (a database cloned from
//! the stack's template and a PostgREST of its own): the generated DoX file is
//! copied, backfilled (`--via postgres`), capture installed; an app thread
//! writes `RATE` autocommit inserts a second with a 5 s busy timeout (DoX's)
//! and times each; then `dualwrite cutover run --yes --json` runs, and the
//! bench prints its steps. The app's writes after the switch meet the refusal
//! (no `--restart` here): they are counted apart.
//!
//! Under `cargo test` (no `--bench`) it makes a short smoke run.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

struct AppRun {
    writes: u64,
    max_ms: f64,
    refused: u64,
    failed: Vec<String>,
}

/// The app: `rate` autocommit inserts a second until `stop`, each timed.
fn app(db: &Path, rate: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<AppRun> {
    let db = db.to_path_buf();
    std::thread::spawn(move || {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        let every = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let mut r = AppRun {
            writes: 0,
            max_ms: 0.0,
            refused: 0,
            failed: Vec::new(),
        };
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let res = c.execute(
                "INSERT INTO logentry (id, document_id, ts, level, code, component, message, attrs_json) \
                 VALUES (?1, 'doc-bench', '2024-01-01T00:00:00Z', 'INFO', 'C1', 'bench', 'm', '{}')",
                [format!("bench-app-{n}")],
            );
            let took = t.elapsed();
            match res {
                Ok(_) => {
                    r.writes += 1;
                    r.max_ms = r.max_ms.max(took.as_secs_f64() * 1000.0);
                }
                Err(e) if e.to_string().contains("no longer the primary") => r.refused += 1,
                Err(e) => r.failed.push(e.to_string()),
            }
            n += 1;
            std::thread::sleep(every.saturating_sub(took));
        }
        r
    })
}

fn dualwrite(db: &Path, p: &Project, env: &std::collections::HashMap<String, String>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dualwrite"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("DB_PATH", db)
        .env("DUALWRITE_REST_URL", &p.postgrest.url)
        .env("SUPABASE_SERVICE_KEY", &env["SUPABASE_SERVICE_KEY"])
        .env("SUPABASE_DB_URL", &p.db_url)
        .current_dir(db.parent().unwrap());
    c
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<u64> = if bench {
        std::env::var("SIZES")
            .unwrap_or_else(|_| "100000,1000000".into())
            .split(',')
            .map(|s| s.trim().parse().unwrap())
            .collect()
    } else {
        println!("smoke run (cargo test): debug build, 2,000 rows");
        vec![2000]
    };
    let rate = env_or("RATE", 200u64);
    let env = stack_env();
    let mut lines = Vec::new();
    for rows in sizes {
        let source = dataset(rows).await;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("dox.sqlite3");
        std::fs::copy(&source, &db).unwrap();
        let p = Project::new(
            &env,
            format!("dw_bench_cutover_{}_{rows}", std::process::id()),
            10,
            "",
        )
        .await;
        let o = dualwrite(&db, &p, &env)
            .args(["backfill", "--via", "postgres", "--yes", "--from-sqlite"])
            .arg(&db)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = dualwrite(&db, &p, &env)
            .args(["capture", "install"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

        let stop = Arc::new(AtomicBool::new(false));
        let writer = app(&db, rate, Arc::clone(&stop));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        let o = dualwrite(&db, &p, &env)
            .args(["cutover", "run", "--yes", "--json"])
            .output()
            .unwrap();
        let wall = started.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let app = writer.join().unwrap();
        let report: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
        assert_eq!(report["switched"], true, "{report:#}");
        let step_ms = |name: &str| {
            report["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == name)
                .map_or(0, |s| s["ms"].as_u64().unwrap())
        };
        let before_fence: u64 = ["preflight", "take the drain", "verify by content", "drain"]
            .iter()
            .map(|n| step_ms(n))
            .sum();
        println!(
            "{rows} rows: {}",
            serde_json::to_string(&report["steps"]).unwrap()
        );
        lines.push(format!(
            "| {rows} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {:.1} | {} | {} |",
            wall.as_secs_f64(),
            before_fence as f64 / 1000.0,
            step_ms("verify by content") as f64 / 1000.0,
            report["pause_ms"].as_u64().unwrap(),
            report["drained_in_fence"].as_u64().unwrap(),
            report["keys_verified_in_fence"].as_u64().unwrap(),
            app.max_ms,
            app.writes,
            app.failed.len(),
        ));
        assert!(
            app.failed.is_empty(),
            "the app's writes failed: {:?}",
            &app.failed[..app.failed.len().min(3)]
        );
        let _ = app.refused;
        Project::drop_all(&env, vec![p]).await;
    }
    println!(
        "\n| rows | run, s | start to fence, s | full verify, s | fence (writes held), ms | changes drained in the fence | keys verified in the fence | longest app write, ms | app writes | app writes failed |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for l in lines {
        println!("{l}");
    }
}

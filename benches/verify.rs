//! Verification speed and memory on a large backfilled database.
//!
//! Run: `scripts/stack.sh up && cargo bench --bench verify` (ROWS=N, default
//! 1,000,000; the data set is the one `cargo bench --bench backfill` caches).
//! In one run it:
//! 1. loads the generated file into the local stack with `dualwrite backfill`;
//! 2. times `dualwrite verify --counts-only` and a full `dualwrite verify`
//!    (release binary, separate processes; peak RSS from their JSON reports);
//! 3. times a baseline that only reads both sides in the same key order, in
//!    the same page size, without comparing anything (before and after);
//! 4. prints the ratios.
//!
//! Under `cargo test` (no `--bench`) it makes a small smoke run.

// Test and benchmark helpers fail loudly by design: an unwrap is their assertion
// (clippy.toml allows it inside #[test] functions only).
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dualwrite::catalogue::TABLES;
use dualwrite::db::RestClient;
use dualwrite::db::SqliteDatabase;
use dualwrite::normalise::SqlValue;

fn run(env: &HashMap<String, String>, args: &[&str]) -> (f64, serde_json::Value, i32) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .args(args)
        .envs(env)
        .output()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let code = out.status.code().unwrap_or(-1);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (secs, json, code)
}

/// Read every table of both sides in key order, page by page, comparing
/// nothing; the two sides at the same time, as verify reads them.
async fn read_both(path: &Path, rest: &RestClient, page: usize) -> (f64, u64) {
    let started = Instant::now();
    let db = SqliteDatabase::open_read_only(path).await.unwrap();
    let sqlite_side = async {
        let mut n = 0u64;
        for t in TABLES {
            let mut after: Option<SqlValue> = None;
            loop {
                let rows = db.page(t, after.clone(), page).await.unwrap();
                let Some(last) = rows.last() else { break };
                after = Some(last[0].clone());
                n += rows.len() as u64;
            }
        }
        n
    };
    let supabase_side = async {
        let mut n = 0u64;
        for t in TABLES {
            let key = t.key().supabase;
            let mut after: Option<String> = None;
            loop {
                let rows = rest
                    .select_page(t.supabase, "*", &[], key, after.as_deref(), page)
                    .await
                    .unwrap();
                let Some(last) = rows.last() else { break };
                after = last[key].as_str().map(str::to_owned);
                n += rows.len() as u64;
            }
        }
        n
    };
    let (a, b) = tokio::join!(sqlite_side, supabase_side);
    (started.elapsed().as_secs_f64(), a + b)
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let rows: u64 = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 1_000_000 } else { 3_000 });
    let env = stack_env();
    let path = dataset(rows).await;
    let p = path.to_str().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (load_secs, report, code) = run(
        &env,
        &[
            "backfill",
            "--from-sqlite",
            p,
            "--reset",
            "--yes",
            "--json",
            "--state-dir",
            state.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{report}");

    let (counts_secs, counts, code) = run(
        &env,
        &[
            "verify",
            "--from-sqlite",
            p,
            "--counts-only",
            "--format",
            "json",
        ],
    );
    assert_eq!(code, 0, "{counts}");
    let (full_secs, full, code) = run(&env, &["verify", "--from-sqlite", p, "--format", "json"]);
    assert_eq!(code, 0, "{full}");

    let rest = service_rest(&env, Duration::from_secs(60));
    let (b1, n1) = read_both(&path, &rest, 1000).await;
    let (b2, n2) = read_both(&path, &rest, 1000).await;
    assert_eq!(n1, 2 * rows);
    assert_eq!(n1, n2);
    let baseline = (b1 + b2) / 2.0;
    // Leave the shared stack as it was found: empty of generated rows.
    truncate(&env).await;
    let rss = |v: &serde_json::Value| {
        v["peak_rss_bytes"].as_u64().map_or("n/a".to_owned(), |b| {
            format!("{:.1} MB", b as f64 / 1048576.0)
        })
    };

    if !bench {
        println!("smoke run (cargo test): debug build, few rows");
    }
    println!("{rows} rows per side (loaded by the backfill in {load_secs:.1} s)\n");
    println!("| measurement | seconds | peak RSS |");
    println!("|---|---:|---:|");
    println!(
        "| verify --counts-only (whole process) | {counts_secs:.2} | {} |",
        rss(&counts)
    );
    println!(
        "| verify, full content (whole process) | {full_secs:.2} | {} |",
        rss(&full)
    );
    println!("| baseline: read both sides at once in key order, before | {b1:.2} | |");
    println!("| baseline: read both sides at once in key order, after | {b2:.2} | |");
    println!("\ncounts-only: {counts_secs:.2} s (target < 2 s)");
    println!(
        "full verify / read-both baseline: {:.2} (target <= 1.5)",
        full_secs / baseline
    );
}

//! Backfill throughput against the raw ceiling of the same stack, and the
//! backfill's peak memory.
//!
//! Run: `scripts/stack.sh up && cargo bench --bench backfill` (ROWS=N, default
//! 1,000,000; BATCH_ROWS, CONCURRENCY, ROUNDS). In one run it:
//! 1. generates (once, cached under target/bench-data) a DoX SQLite file of N rows;
//! 2. measures the raw ceiling: the same rows, normalised and serialised
//!    beforehand into the very request bodies the backfill sends, posted as
//!    the same bulk upserts with the same batch size and concurrency by a
//!    minimal client;
//! 3. runs `dualwrite backfill` (release binary, a separate process) on the
//!    file and reads rows/s and peak RSS from its JSON report;
//! 4. alternates the two (ROUNDS backfills, one more ceiling than that), and
//!    compares the backfill's mean with the ceiling's;
//! 5. times `--reset`'s emptying of the populated target (`rpc/dualwrite_reset`);
//! 6. alternates backfills with capture on Supabase off and on (CAPTURE_ROUNDS
//!    each): the backfill's rows must queue nothing for the reverse mirror, and
//!    cost no more than without.
//!
//! The target tables are truncated (through DATABASE_URL) and a CHECKPOINT
//! taken before each step.
//! Under `cargo test` (no `--bench`) it makes a small smoke run.

// Test and benchmark helpers fail loudly by design: an unwrap is their assertion
// (clippy.toml allows it inside #[test] functions only).
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dualwrite::backfill::{BatchSource, SqliteSource};
use dualwrite::catalogue::{Table, TABLES};
use dualwrite::db::SqliteDatabase;

/// Every table's request bodies, byte for byte the ones the backfill sends:
/// read, cut (same limits by rows and bytes) and written by the backfill's own
/// source, in the same (storage) order. Only the sending is left to the
/// minimal client, so the server does the same work in both measurements.
async fn bodies(
    path: &Path,
    batch_rows: usize,
    batch_bytes: usize,
) -> Vec<(&'static Table, Bytes, usize)> {
    let db = SqliteDatabase::open_read_only(path).await.unwrap();
    let watch = SqliteDatabase::open_read_only(path).await.unwrap();
    let mut out = Vec::new();
    for t in TABLES {
        let mut source = SqliteSource::open(db.clone(), watch.clone(), t, None)
            .await
            .unwrap();
        while let Some(batch) = source.next(batch_rows, batch_bytes).await.unwrap() {
            if !batch.rows.is_empty() {
                out.push((t, batch.rows.body(0..batch.rows.len()), batch.rows.len()));
            }
        }
    }
    out
}

/// Post the bodies with `concurrency` requests in flight (tables in order, as the backfill).
async fn ceiling(
    env: &HashMap<String, String>,
    bodies: &Arc<Vec<(&'static Table, Bytes, usize)>>,
    concurrency: usize,
) -> (f64, usize) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let url = rest_endpoint(env);
    let key = env["SUPABASE_SERVICE_KEY"].clone();
    let started = Instant::now();
    let mut rows = 0;
    let mut i = 0;
    while i < bodies.len() {
        // Keep batches of one table together, as the backfill does.
        let table = bodies[i].0.supabase;
        let mut j = i;
        while j < bodies.len() && bodies[j].0.supabase == table {
            j += 1;
        }
        let mut set = tokio::task::JoinSet::new();
        for k in i..j {
            if set.len() >= concurrency {
                rows += set.join_next().await.unwrap().unwrap();
            }
            let (client, url, key, bodies) =
                (client.clone(), url.clone(), key.clone(), Arc::clone(bodies));
            set.spawn(async move {
                let (t, body, n) = &bodies[k];
                // The very request the backfill sends (see `RestClient::upsert`).
                let r = client
                    .post(format!(
                        "{url}/{}?on_conflict={}&columns={}",
                        t.supabase,
                        t.key().supabase,
                        t.supabase_columns()
                    ))
                    .header("apikey", &key)
                    .header("Authorization", format!("Bearer {key}"))
                    .header("Content-Type", "application/json")
                    .header(
                        "Prefer",
                        "resolution=merge-duplicates,return=minimal,count=exact",
                    )
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}: {}", t.supabase, r.status());
                *n
            });
        }
        while let Some(n) = set.join_next().await {
            rows += n.unwrap();
        }
        i = j;
    }
    (started.elapsed().as_secs_f64(), rows)
}

fn backfill(
    env: &HashMap<String, String>,
    path: &Path,
    batch_rows: usize,
    concurrency: usize,
) -> (f64, serde_json::Value) {
    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .args([
            "backfill",
            "--from-sqlite",
            path.to_str().unwrap(),
            "--json",
        ])
        .args(["--state-dir", state.path().to_str().unwrap()])
        .args([
            "--batch-rows",
            &batch_rows.to_string(),
            "--concurrency",
            &concurrency.to_string(),
        ])
        .envs(env)
        .output()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, serde_json::from_slice(&out.stdout).unwrap())
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let rows = env_or("ROWS", if bench { 1_000_000 } else { 3_000 }) as u64;
    let batch_rows = env_or("BATCH_ROWS", 500);
    let concurrency = env_or("CONCURRENCY", 4);
    let batch_bytes = 1 << 20;
    let env = stack_env();
    let path = dataset(rows).await;
    let size = std::fs::metadata(&path).unwrap().len();

    let bodies = Arc::new(bodies(&path, batch_rows, batch_bytes).await);
    let total: usize = bodies.iter().map(|b| b.2).sum();
    // A warm-up round, not counted (caches, WAL, connections), then ceiling and
    // backfill alternate, so drift on a shared machine hits both alike.
    truncate(&env).await;
    ceiling(&env, &bodies, concurrency).await;
    let rounds = env_or("ROUNDS", if bench { 3 } else { 1 });
    let (mut ceilings, mut backfills, mut rss) = (Vec::new(), Vec::new(), 0u64);
    for _ in 0..rounds {
        truncate(&env).await;
        let (c, n) = ceiling(&env, &bodies, concurrency).await;
        assert_eq!(n, total);
        ceilings.push(c);
        truncate(&env).await;
        let (secs, report) = backfill(&env, &path, batch_rows, concurrency);
        assert_eq!(
            report["rows_written"].as_u64(),
            Some(total as u64),
            "{report}"
        );
        rss = rss.max(report["peak_rss_bytes"].as_u64().unwrap_or(0));
        backfills.push(secs);
    }
    truncate(&env).await;
    let (c, n) = ceiling(&env, &bodies, concurrency).await;
    assert_eq!(n, total);
    ceilings.push(c);

    // 5. The reset of a populated target: what `--reset` does before its first row.
    let service = service_db(&env);
    let started = Instant::now();
    let emptied = dualwrite::backfill::truncate_target(&service, &TABLES, Duration::from_secs(30))
        .await
        .unwrap();
    let reset_secs = started.elapsed().as_secs_f64();
    assert_eq!(emptied, Some(total as u64));

    // 6. Backfills with capture on Supabase off and on, alternating.
    let capture_rounds = env_or("CAPTURE_ROUNDS", if bench { 2 } else { 1 });
    let (mut off, mut on, mut queued) = (Vec::new(), Vec::new(), 0u64);
    for _ in 0..capture_rounds {
        for capture in [false, true] {
            set_capture(&service, capture).await;
            truncate(&env).await;
            let (secs, report) = backfill(&env, &path, batch_rows, concurrency);
            assert_eq!(report["rows_written"].as_u64(), Some(total as u64));
            if capture {
                queued += backlog(&service).await;
                on.push(secs);
            } else {
                off.push(secs);
            }
        }
    }
    set_capture(&service, false).await;
    truncate(&env).await;

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (ceiling_secs, backfill_secs) = (mean(&ceilings), mean(&backfills));
    if !bench {
        println!("smoke run (cargo test): debug build, few rows");
    }
    println!(
        "{total} rows ({:.0} MB SQLite file), batch {batch_rows} rows / 1 MiB, {concurrency} in flight\n",
        size as f64 / 1e6
    );
    println!("| measurement | seconds (each run) | mean rows/s |");
    println!("|---|---|---:|");
    let list = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| raw ceiling (minimal client, pre-serialised bodies) | {} | {:.0} |",
        list(&ceilings),
        total as f64 / ceiling_secs
    );
    println!(
        "| dualwrite backfill (whole process, incl. start) | {} | {:.0} |",
        list(&backfills),
        total as f64 / backfill_secs
    );
    println!(
        "\nbackfill / raw ceiling (mean rows/s): {:.3} (target >= 0.9)",
        ceiling_secs / backfill_secs
    );
    // Each backfill against the ceilings measured just before and after it.
    let pairs: Vec<String> = backfills
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{:.3}", (ceilings[i] + ceilings[i + 1]) / 2.0 / b))
        .collect();
    println!(
        "each backfill / the ceilings around it: {}",
        pairs.join(", ")
    );
    println!(
        "backfill peak RSS: {:.1} MB (target < 150 MB)",
        rss as f64 / 1048576.0
    );
    println!(
        "\n--reset on the populated target ({total} rows): emptied in {reset_secs:.2} s (target < 2 s)"
    );
    println!(
        "backfill with capture on Supabase: {} s against {} s off (on / off, mean: {:.3}; target <= 1.1); \
         changes queued for the reverse mirror: {queued} (target 0)",
        list(&on),
        list(&off),
        mean(&on) / mean(&off)
    );
}

/// The stack's Supabase with the service key.
fn service_db(env: &HashMap<String, String>) -> dualwrite::db::SupabaseDatabase {
    dualwrite::db::SupabaseDatabase::new(service_rest(env, Duration::from_secs(60)))
}

/// Capture on Supabase on or off.
async fn set_capture(sb: &dualwrite::db::SupabaseDatabase, on: bool) {
    let st = if on {
        dualwrite::capture::supabase::enable(sb.rest()).await
    } else {
        dualwrite::capture::supabase::disable(sb.rest(), true).await
    };
    assert_eq!(st.unwrap().enabled, on);
}

/// Changes waiting for the reverse mirror.
async fn backlog(sb: &dualwrite::db::SupabaseDatabase) -> u64 {
    dualwrite::capture::supabase::state(sb.rest())
        .await
        .unwrap()
        .pending
}

//! The reverse direction (Supabase primary): what capture on Supabase costs a
//! PostgREST upsert, and the lag of `serve --direction reverse` under a steady
//! write load.
//!
//! Run: `scripts/stack.sh up && cargo bench --bench reverse`
//! (`ROUNDS` upserts of 1,000 rows per setting, default 30; `SECS` of steady
//! load, default 30; `RATE` row-writes/s, default 500). It works in a private
//! database cloned from the stack's template with its own PostgREST process
//! (the shared database is not touched), applies the capture and atomic-write
//! migrations there, then:
//! 1. upserts 1,000 artifacts through PostgREST (service key), alternating
//!    rounds with capture off and on, and prints the time per upsert;
//! 2. starts `dualwrite serve --direction reverse` (the bench-profile binary)
//!    on a fresh DoX file and writes RATE rows/s through PostgREST in batches
//!    every 20 ms for SECS; for one row of each batch it polls the SQLite file
//!    until the row is there and records the lag from the write's answer;
//! 3. fills the change log with `BACKLOG` entries (default 1,000,000) and
//!    times reading the backlog: an exact count against
//!    `rpc/dualwrite_changes_backlog` (what the daemon reads after batches).
//!
//! Under `cargo test` (no `--bench`) it makes a short smoke run.
// Test and benchmark helpers fail loudly by design: an unwrap is their assertion
// (clippy.toml allows it inside #[test] functions only).
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::collections::VecDeque;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dualwrite::catalogue;
use dualwrite::db::{RestClient, RestConfig};
use dualwrite::db::{SqliteDatabase, SqliteOptions};
use dualwrite::keys;
use hdrhistogram::Histogram;
use secrecy::SecretString;
use serde_json::json;

use dualwrite::capture::supabase::MIGRATION_SQL as CAPTURE_SQL;
const ATOMIC_SQL: &str =
    include_str!("../supabase/migrations/20261128000200_dox_atomic_writes.sql");

fn body(prefix: &str, n: usize) -> String {
    let rows: Vec<_> = (0..n)
        .map(|i| {
            json!({"id": format!("{prefix}-{i}"), "filename": "report.pdf", "filepath": "/data/report.pdf",
                   "filetype": "pdf", "report_week": "2024-W01", "status": "new", "source_url": null,
                   "extras": {"i": i, "tags": ["a", "b"]}})
        })
        .collect();
    serde_json::to_string(&rows).unwrap()
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (rounds, secs) = if bench {
        (env_or("ROUNDS", 30), env_or("SECS", 30))
    } else {
        println!("smoke run (cargo test): debug build, a few seconds");
        (3, 2)
    };
    let rate = env_or("RATE", 500);
    let env = stack_env();

    // A private database with the capture and atomic-write migrations, and its PostgREST.
    let project = Project::new(
        &env,
        format!("dw_bench_reverse_{}", std::process::id()),
        10,
        &format!("{CAPTURE_SQL}\n{ATOMIC_SQL}"),
    )
    .await;
    let db_sql = &project.sql;
    let dir = tempfile::tempdir().unwrap();
    let url = project.postgrest.url.clone();
    let service_key = keys::sign(
        &env["SUPABASE_JWT_SECRET"],
        "service_role",
        None,
        Duration::from_secs(3600),
    )
    .unwrap();
    let rest = RestClient::new(&RestConfig {
        url: url.clone(),
        key: SecretString::from(service_key.clone()),
        user_jwt: None,
        schema: "public".into(),
        timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap();

    // 1. Trigger overhead on a 1,000-row upsert (insert, then the same rows again: update).
    let mut off = Histogram::<u64>::new(3).unwrap();
    let mut on = Histogram::<u64>::new(3).unwrap();
    for r in 0..rounds {
        for capture in [false, true] {
            rest.rpc("dualwrite_capture", &json!({ "set_enabled": capture }))
                .await
                .unwrap();
            let b = body(&format!("ovh-{r}-{capture}"), 1000);
            for _ in 0..2 {
                let t = Instant::now();
                let n = rest.upsert(&catalogue::ARTIFACT, b.clone()).await.unwrap();
                let us = t.elapsed().as_micros() as u64;
                assert_eq!(n, 1000);
                if r > 0 {
                    // round 0 warms up
                    if capture { &mut on } else { &mut off }.record(us).unwrap();
                }
            }
        }
    }
    println!(
        "\n1. PostgREST upsert of 1,000 artifacts (service key), {} upserts per setting (ms)",
        2 * (rounds - 1)
    );
    println!("| capture on Supabase | p50 | p90 | mean |\n|---|---:|---:|---:|");
    for (label, h) in [("off", &off), ("on", &on)] {
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} |",
            ms(h, 0.5),
            ms(h, 0.9),
            h.mean() / 1000.0
        );
    }
    println!(
        "overhead: {:.2}x at p50, {:.2}x mean (target <= 1.3x)",
        ms(&on, 0.5) / ms(&off, 0.5),
        on.mean() / off.mean()
    );

    // 2. Reverse lag at RATE row-writes/s.
    rest.rpc("dualwrite_capture", &json!({ "set_enabled": false }))
        .await
        .unwrap();
    db_sql.batch_execute("TRUNCATE artifacts").await.unwrap();
    rest.rpc("dualwrite_capture", &json!({ "set_enabled": true }))
        .await
        .unwrap();
    let file = dir.path().join("dox.sqlite3");
    drop(
        SqliteDatabase::open(&file, SqliteOptions::default())
            .await
            .unwrap(),
    );
    let serve_port = free_port();
    let mut serve: Child = Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .env_clear()
        .env("RUST_LOG", "warn")
        .env("DB_PATH", &file)
        .env("DUALWRITE_REST_URL", &url)
        .env("SUPABASE_SERVICE_KEY", &service_key)
        .current_dir(dir.path())
        .args([
            "serve",
            "--direction",
            "reverse",
            "--listen",
            &format!("127.0.0.1:{serve_port}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let lite = rusqlite::Connection::open(&file).unwrap();
    let per_tick = ((rate as f64) / 50.0).ceil().max(1.0) as usize; // a batch every 20 ms
                                                                    // The writer runs on its own schedule (catching up when behind); the main
                                                                    // loop polls the SQLite file for one row of each batch.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let writer = {
        let rest = rest.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = 0u64;
            let mut written = 0usize;
            while started.elapsed() < Duration::from_secs(secs) {
                let next = started + Duration::from_millis(20 * tick);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
                let prefix = format!("lag-{tick}");
                rest.upsert(&catalogue::ARTIFACT, body(&prefix, per_tick))
                    .await
                    .unwrap();
                tx.send((format!("{prefix}-0"), Instant::now())).unwrap();
                written += per_tick;
                tick += 1;
            }
            written
        })
    };
    let mut lag = Histogram::<u64>::new(3).unwrap();
    let mut waiting: VecDeque<(String, Instant)> = VecDeque::new();
    let started = Instant::now();
    let mut open = true;
    while open || !waiting.is_empty() {
        loop {
            match rx.try_recv() {
                Ok(w) => waiting.push_back(w),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        while let Some((id, at)) = waiting.front() {
            let there: bool = lite
                .query_row("SELECT count(*) FROM artifact WHERE id = ?1", [id], |r| {
                    r.get::<_, i64>(0)
                })
                .unwrap()
                > 0;
            if !there {
                break;
            }
            lag.record(at.elapsed().as_micros() as u64).unwrap();
            waiting.pop_front();
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs + 60),
            "the reverse mirror did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let written = writer.await.unwrap();
    let achieved = written as f64 / secs as f64;
    println!(
        "\n2. serve --direction reverse, {achieved:.0} row-writes/s through PostgREST for {secs} s ({} rows); lag of one row per 20 ms batch (ms)",
        written
    );
    println!("| p50 | p90 | p99 | max |\n|---:|---:|---:|---:|");
    println!(
        "| {:.0} | {:.0} | {:.0} | {:.0} |",
        ms(&lag, 0.5),
        ms(&lag, 0.9),
        ms(&lag, 0.99),
        lag.max() as f64 / 1000.0
    );
    println!("(target: p99 < 2,000 ms at 500 row-writes/s)");

    let _ = serve.kill();
    let _ = serve.wait();

    // 3. Reading the backlog of a large log: what the daemon asks after its
    // batches and `status --direction reverse` shows.
    let entries = if bench {
        env_or("BACKLOG", 1_000_000)
    } else {
        20_000
    };
    db_sql
        .batch_execute(&format!(
            "INSERT INTO dualwrite_capture.changes (tbl, keys, op) \
             SELECT 'artifacts', ARRAY['k-' || g, 'l-' || g], 'U' FROM generate_series(1, {entries}) g; \
             ANALYZE dualwrite_capture.changes"
        ))
        .await
        .unwrap();
    let mut timed = Vec::new();
    for what in ["count", "backlog", "capture"] {
        let mut h = Histogram::<u64>::new(3).unwrap();
        let mut answer = String::new();
        for _ in 0..7 {
            let t = Instant::now();
            answer = match what {
                // What the daemon ran after every batch before: an exact count.
                "count" => {
                    let r = db_sql
                        .query_one(
                            "SELECT coalesce(sum(cardinality(keys)), 0)::bigint, min(at)::text \
                             FROM dualwrite_capture.changes",
                            &[],
                        )
                        .await
                        .unwrap();
                    format!("pending {}", r.get::<_, i64>(0))
                }
                "backlog" => rest
                    .rpc("dualwrite_changes_backlog", &json!({}))
                    .await
                    .unwrap()["pending"]
                    .to_string(),
                _ => {
                    rest.rpc("dualwrite_capture", &json!({})).await.unwrap()["pending"].to_string()
                }
            };
            h.record(t.elapsed().as_micros() as u64).unwrap();
        }
        timed.push((what, h, answer));
    }
    println!(
        "\n3. the backlog of a log of {entries} entries ({} keys), 7 reads each (ms)",
        2 * entries
    );
    println!("| read | p50 | max | pending reported |\n|---|---:|---:|---|");
    for (what, h, answer) in &timed {
        let label = match *what {
            "count" => "exact count (SQL, as before)",
            "backlog" => "rpc/dualwrite_changes_backlog (REST)",
            _ => "rpc/dualwrite_capture (REST)",
        };
        println!(
            "| {label} | {:.1} | {:.1} | {answer} |",
            ms(h, 0.5),
            h.max() as f64 / 1000.0
        );
    }

    Project::drop_all(&env, vec![project]).await;
}

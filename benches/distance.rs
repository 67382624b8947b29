//! A distant Supabase: the backfill through PostgREST against the direct path
//! (`--via postgres`, COPY) when every round trip pays a fixed delay.
//!
//! Run: `scripts/stack.sh up && cargo bench --bench distance` (`ROWS`, default
//! 250,000; `DELAY_MS`, default 20; `CONCURRENCY`, the REST runs' list, default
//! `4,8,16,32`; `ROUNDS`, default 1). A project of the bench's own (a database
//! cloned from the stack's template, its own PostgREST) sits behind two delay
//! lines (`tests/support/proxy.rs`: what the client sends reaches the server
//! DELAY_MS later, chunks keep flowing meanwhile): one in front of PostgREST,
//! one in front of PostgreSQL. In each round, into the emptied project:
//! 1. without delay: REST at the default concurrency, then the direct path;
//! 2. with the delay: REST, then the direct path, at each CONCURRENCY.
//!
//! Under `cargo test` (no `--bench`) it makes a short smoke run.

// Test and benchmark helpers fail loudly by design: an unwrap is their assertion
// (clippy.toml allows it inside #[test] functions only).
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dualwrite::keys;

/// One backfill of `file` through `rest_url` (or, with `db_url`, `--via
/// postgres`); its rows/s.
fn backfill(
    file: &Path,
    rest_url: &str,
    key: &str,
    db_url: Option<&str>,
    concurrency: Option<u64>,
) -> f64 {
    let state = tempfile::tempdir().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_dualwrite"));
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("RUST_LOG", "warn")
        .env("DUALWRITE_REST_URL", rest_url)
        .env("SUPABASE_SERVICE_KEY", key)
        .current_dir(state.path())
        .stdin(Stdio::null())
        .args([
            "backfill",
            "--from-sqlite",
            file.to_str().unwrap(),
            "--json",
        ])
        .args(["--state-dir", state.path().to_str().unwrap()]);
    if let Some(url) = db_url {
        c.env("SUPABASE_DB_URL", url).args(["--via", "postgres"]);
    }
    if let Some(n) = concurrency {
        c.args(["--concurrency", &n.to_string()]);
    }
    let started = Instant::now();
    let out = c.output().unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "backfill failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["rows_rejected"].as_u64(), Some(0));
    r["rows_written"].as_u64().unwrap() as f64 / secs
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (rows, rounds) = if bench {
        (env_or("ROWS", 250_000), env_or("ROUNDS", 1))
    } else {
        println!("smoke run (cargo test): debug build, small sizes");
        (3_000, 1)
    };
    let delay = Duration::from_millis(env_or("DELAY_MS", 20));
    let concurrencies: Vec<u64> = std::env::var("CONCURRENCY")
        .unwrap_or_else(|_| if bench { "4,8,16,32" } else { "4" }.into())
        .split(',')
        .map(|c| c.trim().parse().unwrap())
        .collect();
    let env = stack_env();
    let key = keys::sign(
        &env["SUPABASE_JWT_SECRET"],
        "service_role",
        None,
        Duration::from_secs(24 * 3600),
    )
    .unwrap();
    let file = dataset(rows).await;
    let project = Project::new(
        &env,
        format!("dw_bench_distance_{}", std::process::id()),
        10,
        "",
    )
    .await;
    let rest_up = project
        .postgrest
        .url
        .trim_start_matches("http://")
        .to_owned();
    // postgres://user:password@host:port/db: the same URL through a proxy of its port.
    let (before_host, after_at) = project.db_url.rsplit_once('@').unwrap();
    let (pg_addr, db) = after_at.split_once('/').unwrap();
    let rest_far = Proxy::start(&rest_up, delay).await;
    let pg_far = Proxy::start(pg_addr, delay).await;
    let far_db_url = format!(
        "{before_host}@{}/{db}",
        pg_far.url.trim_start_matches("http://")
    );

    // Each setting: (label, rest URL, direct URL, concurrency); the runs' rows/s.
    let mut settings: Vec<(String, String, Option<String>, Option<u64>)> = vec![
        (
            "REST, no delay".into(),
            project.postgrest.url.clone(),
            None,
            None,
        ),
        (
            "direct (COPY), no delay".into(),
            project.postgrest.url.clone(),
            Some(project.db_url.clone()),
            None,
        ),
    ];
    for c in &concurrencies {
        settings.push((
            format!("REST, {} ms, --concurrency {c}", delay.as_millis()),
            rest_far.url.clone(),
            None,
            Some(*c),
        ));
        settings.push((
            format!("direct (COPY), {} ms, --concurrency {c}", delay.as_millis()),
            rest_far.url.clone(),
            Some(far_db_url.clone()),
            Some(*c),
        ));
    }
    let mut results = vec![Vec::new(); settings.len()];
    for _ in 0..rounds {
        for (i, (_, rest, db, c)) in settings.iter().enumerate() {
            project.empty().await;
            results[i].push(backfill(&file, rest, &key, db.as_deref(), *c));
        }
    }
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    let rest_near = mean(&results[0]);
    println!(
        "\nBackfill of {rows} rows, {} ms added to every round trip (mean of {rounds} round(s))",
        delay.as_millis()
    );
    println!("| path | rows/s | / REST without delay |\n|---|---:|---:|");
    for ((label, ..), r) in settings.iter().zip(&results) {
        println!("| {label} | {:.0} | {:.2} |", mean(r), mean(r) / rest_near);
    }
    drop((rest_far, pg_far));
    Project::drop_all(&env, vec![project]).await;
}

//! The Rust reference figures for the Python module's benchmark
//! (`python/bench/bench.py`): a loop of `add_log` calls through `Dox::add_log`,
//! SQLite alone and `DualDatabase` (SQLite primary, Supabase mirror through
//! nginx), on the same local stack and with the same rows as the Python loop.
//!
//! It also measures what following the recorded primary costs a write (the
//! dual layer's `apply_followed`: `PRAGMA data_version` inside the write's
//! transaction, the marker read again only after another connection
//! committed) against the same write without it (`apply_captured`), in
//! `FOLLOW_ROUNDS` (default 10) alternating rounds of `WRITES/2` writes on one
//! file; two more arms, with and without the check, have another connection
//! commit before each write (untimed), so that the marker is read again every
//! time.
//!
//! Run: `scripts/stack.sh up && cargo bench --bench embedded` (prints tables
//! and one `BENCH_JSON {...}` line that bench.py reads). `WRITES=N` (default
//! 10,000) and `DUAL_WRITES=N` (default 2,000) change the counts. Under
//! `cargo test` (no `--bench` argument) it makes a short smoke run.

// Test and benchmark helpers fail loudly by design: an unwrap is their assertion
// (clippy.toml allows it inside #[test] functions only).
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use dualwrite::config::{Settings, Sources};
use dualwrite::db::{Database, Dox, DualDatabase, Followed, SqliteDatabase, SupabaseDatabase};
use dualwrite::factory;
use dualwrite::model::{LogEntry, Write};

/// The row bench.py writes: an XML-ingestion log entry, as DoX's ingestion makes it.
fn log(run: &str, i: usize) -> LogEntry {
    serde_json::from_value(json!({
        "id": format!("{run}-{i}"), "document_id": format!("doc-{run}"), "ts": "2025-09-18T08:15:02",
        "level": "ERROR", "code": "E1001", "component": "payment-service",
        "message": format!("Payment posting failed for account {i}"), "attrs_json": null
    }))
    .unwrap()
}

struct Figures {
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    per_sec: f64,
}

async fn measure<D: Dox>(db: &D, run: &str, n: usize) -> Figures {
    let rows: Vec<LogEntry> = (0..n).map(|i| log(run, i)).collect();
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
    let started = Instant::now();
    for row in rows {
        let t = Instant::now();
        db.add_log(row).await.expect("add_log");
        h.record(t.elapsed().as_nanos().max(1) as u64).unwrap();
    }
    let total = started.elapsed().as_secs_f64();
    Figures {
        p50_us: h.value_at_quantile(0.50) as f64 / 1000.0,
        p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
        mean_us: h.mean() / 1000.0,
        per_sec: n as f64 / total,
    }
}

/// How a round of the marker check's A/B writes.
#[derive(Clone, Copy, PartialEq)]
enum Check {
    /// `apply_captured`: the write path without the check.
    Off,
    /// `apply_followed`: with it (no other connection commits).
    On,
    /// `apply_captured`, another connection committing before each write.
    OffOther,
    /// `apply_followed`, the same: the marker is read again every time.
    Reread,
}

/// One round of the A/B: `n` writes to `db`, latencies in ns.
async fn follow_round(
    db: &SqliteDatabase,
    other: &rusqlite::Connection,
    run: &str,
    n: usize,
    check: Check,
) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
    for i in 0..n {
        let w = Write::AddLog { log: log(run, i) };
        if matches!(check, Check::OffOther | Check::Reread) {
            other
                .execute("INSERT INTO bench_other DEFAULT VALUES", [])
                .unwrap();
        }
        let t = Instant::now();
        if matches!(check, Check::Off | Check::OffOther) {
            db.apply_captured(w).await.expect("write");
        } else {
            let followed = db.apply_followed(w).await.expect("write");
            assert!(
                matches!(followed, Followed::Here { .. }),
                "the file is the primary"
            );
        }
        h.record(t.elapsed().as_nanos().max(1) as u64).unwrap();
    }
    h
}

/// The median of `v`.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let count = |var: &str, default: usize| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if bench { default } else { 50 })
    };
    let (n, dual_n) = (count("WRITES", 10_000), count("DUAL_WRITES", 2_000));
    let env = stack_env();
    let dir = tempfile::tempdir().unwrap();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    // The module's defaults: the configuration's SQLite options (WAL, synchronous=NORMAL).
    let settings = Settings::load(&Sources {
        dir: dir.path().into(),
        ..Sources::default()
    })
    .unwrap();
    let opts = factory::sqlite_options(&settings);

    let lite = SqliteDatabase::open(dir.path().join("alone.sqlite3"), opts.clone())
        .await
        .unwrap();
    measure(&lite, &format!("{run}w"), n / 10 + 1).await; // warm-up
    let alone = measure(&lite, &format!("{run}a"), n).await;

    // The marker check, A/B: alternating rounds on one file.
    let rounds = if bench {
        env_or("FOLLOW_ROUNDS", 10)
    } else {
        2
    };
    let path = dir.path().join("follow.sqlite3");
    let follow = SqliteDatabase::open(&path, opts.clone()).await.unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other.busy_timeout(Duration::from_secs(10)).unwrap();
    other
        .execute_batch("CREATE TABLE bench_other (id INTEGER PRIMARY KEY)")
        .unwrap();
    let arms = [Check::Off, Check::On, Check::OffOther, Check::Reread];
    let mut per_arm: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); arms.len()];
    follow_round(&follow, &other, &format!("{run}fw"), n / 10 + 1, Check::On).await; // warm-up
    for r in 0..rounds {
        // Each arm goes first in turn.
        for a in (0..arms.len()).map(|k| (k + r) % arms.len()) {
            let check = arms[a];
            let h = follow_round(&follow, &other, &format!("{run}f{r}-{a}"), n / 2, check).await;
            per_arm[a].0.push(h.value_at_quantile(0.50) as f64 / 1000.0);
            per_arm[a].1.push(h.mean() / 1000.0);
        }
    }
    let follow_figures: Vec<(f64, f64)> = per_arm
        .into_iter()
        .map(|(p50, mean)| (median(p50), median(mean)))
        .collect();

    let rest = service_rest(&env, Duration::from_secs(10));
    let primary = SqliteDatabase::open(dir.path().join("dual.sqlite3"), opts)
        .await
        .unwrap();
    let dual = DualDatabase::new(
        primary,
        SupabaseDatabase::new(rest),
        settings.mirror_timeout,
        settings.max_recorded_failures,
    );
    measure(&dual, &format!("{run}dw"), dual_n / 10 + 1).await; // warm-up
    let mirrored = measure(&dual, &format!("{run}d"), dual_n).await;
    assert_eq!(dual.stats().failed, 0, "mirror failures during the bench");

    println!("| Rust, add_log | calls | p50 µs | p99 µs | mean µs | calls/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, k, f) in [
        ("SQLite alone", n, &alone),
        ("Dual (SQLite + Supabase via nginx)", dual_n, &mirrored),
    ] {
        println!(
            "| {name} | {k} | {:.1} | {:.1} | {:.1} | {:.0} |",
            f.p50_us, f.p99_us, f.mean_us, f.per_sec
        );
    }
    println!();
    println!(
        "| marker check ({rounds} alternating rounds of {} writes) | p50 µs (median of rounds) | mean µs (median of rounds) |",
        n / 2
    );
    println!("|---|---:|---:|");
    for (name, (p50, mean)) in [
        "off (`apply_captured`)",
        "on (`apply_followed`)",
        "off, another connection commits before each write",
        "on, the same (the marker is read again every time)",
    ]
    .iter()
    .zip(&follow_figures)
    {
        println!("| {name} | {p50:.1} | {mean:.1} |");
    }
    let [off, on, off_other, reread] = [0, 1, 2, 3].map(|i| follow_figures[i]);
    println!(
        "on / off: p50 {:.3}x, mean {:.3}x; with commits between writes: p50 {:.3}x, mean {:.3}x",
        on.0 / off.0,
        on.1 / off.1,
        reread.0 / off_other.0,
        reread.1 / off_other.1
    );
    println!(
        "BENCH_JSON {}",
        json!({
            "sqlite": {"n": n, "p50_us": alone.p50_us, "p99_us": alone.p99_us, "mean_us": alone.mean_us, "per_sec": alone.per_sec},
            "dual": {"n": dual_n, "p50_us": mirrored.p50_us, "p99_us": mirrored.p99_us, "mean_us": mirrored.mean_us, "per_sec": mirrored.per_sec},
            "follow": {"rounds": rounds, "n": n / 2, "off_p50_us": off.0, "on_p50_us": on.0, "reread_p50_us": reread.0,
                       "off_mean_us": off.1, "on_mean_us": on.1, "reread_mean_us": reread.1,
                       "off_other_p50_us": off_other.0, "off_other_mean_us": off_other.1},
        })
    );
}

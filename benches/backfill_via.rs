//! `backfill --via postgres` (COPY over the connection string) against its
//! ceiling, the REST path and pgloader, in one run, on a database of its own.
//!
//! Run: `scripts/stack.sh up && cargo bench --bench backfill_via` (ROWS=N, default
//! 1,000,000; ROUNDS, default 2; CONCURRENCY, default 4; PG_BATCH_ROWS, default
//! the command's; PGLOADER=0 leaves pgloader out, MODES=0 step 5; ROUNDS=0 MODES=0
//! is the warm-up load alone, for its time and peak RSS). In one run it:
//! 1. clones the stack's template into a database of its own, with a PostgREST of
//!    its own (nothing it truncates is anybody else's);
//! 2. generates (once, cached under target/bench-data) a DoX file of N rows;
//! 3. loads it once with `--via postgres` (a warm-up) and dumps every table with
//!    `COPY … TO STDOUT`: the same rows, in the schema's own text form, cut into
//!    four streams of about equal size;
//! 4. alternates, ROUNDS times, each on an emptied target (TRUNCATE, CHECKPOINT):
//!    the ceiling (four `psql \copy` processes loading the four streams at once),
//!    `dualwrite backfill --via postgres`, `dualwrite backfill` (REST), and
//!    pgloader on the SQLite file (when installed);
//! 5. compares COPY straight into the tables with COPY into a staging table and
//!    `INSERT … ON CONFLICT DO UPDATE` (the two ways `--via postgres` writes), on
//!    the dumped rows with four sessions;
//! 6. prints the table for BENCHMARKS.md: seconds, rows/s, the ratios, peak RSS.
//!
//! Under `cargo test` (no `--bench`) it makes a small smoke run.

// Test and benchmark helpers fail loudly by design: an unwrap is their assertion
// (clippy.toml allows it inside #[test] functions only).
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bytes::Bytes;
use dualwrite::catalogue::{Table, TABLES};
use dualwrite::db::{CopyMode, Postgres};
use futures::StreamExt;

async fn sql(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

/// Empty every DoX table of the bench's database and end with a CHECKPOINT, so
/// each measured run starts with the same WAL state.
async fn empty(url: &str) {
    let c = sql(url).await;
    let names: Vec<_> = TABLES.iter().map(|t| t.supabase).collect();
    c.batch_execute(&format!("TRUNCATE {}", names.join(", ")))
        .await
        .unwrap();
    c.batch_execute("VACUUM ANALYZE").await.unwrap();
    c.batch_execute("CHECKPOINT").await.unwrap();
}

async fn rows_in(url: &str) -> u64 {
    let c = sql(url).await;
    let mut n = 0i64;
    for t in TABLES {
        n += c
            .query_one(&format!("select count(*) from public.{}", t.supabase), &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
    }
    n as u64
}

fn columns(t: &Table) -> String {
    t.columns
        .iter()
        .map(|c| format!("\"{}\"", c.supabase))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every table dumped in COPY text, cut into `streams` files per table of
/// about equal size: `dir/<table>.<stream>`.
async fn dump(url: &str, dir: &Path, streams: usize) -> Vec<(&'static Table, usize, PathBuf)> {
    std::fs::create_dir_all(dir).unwrap();
    let c = sql(url).await;
    let mut out = Vec::new();
    for t in TABLES {
        let stream = c
            .copy_out(&format!(
                "copy public.{} ({}) to stdout",
                t.supabase,
                columns(t)
            ))
            .await
            .unwrap();
        futures::pin_mut!(stream);
        let mut all = Vec::new();
        while let Some(chunk) = stream.next().await {
            all.extend_from_slice(&chunk.unwrap());
        }
        let lines: Vec<&[u8]> = all.split_inclusive(|b| *b == b'\n').collect();
        let per = lines.len().div_ceil(streams).max(1);
        for (i, part) in lines.chunks(per).enumerate() {
            let path = dir.join(format!("{}.{i}", t.supabase));
            std::fs::write(&path, part.concat()).unwrap();
            out.push((t, i, path));
        }
    }
    out
}

/// The ceiling: `streams` psql processes at once, each `\copy`ing its part of
/// every table.
fn psql_copy(url: &str, parts: &[(&'static Table, usize, PathBuf)], streams: usize) -> f64 {
    let scripts: Vec<tempfile::NamedTempFile> = (0..streams)
        .map(|s| {
            let f = tempfile::NamedTempFile::new().unwrap();
            let body: String = parts
                .iter()
                .filter(|(_, i, _)| *i == s)
                .map(|(t, _, p)| {
                    format!(
                        "\\copy public.{} ({}) from '{}'\n",
                        t.supabase,
                        columns(t),
                        p.display()
                    )
                })
                .collect();
            std::fs::write(f.path(), body).unwrap();
            f
        })
        .collect();
    let started = Instant::now();
    let children: Vec<_> = scripts
        .iter()
        .map(|f| {
            Command::new("psql")
                .args([url, "-q", "-v", "ON_ERROR_STOP=1", "-f"])
                .arg(f.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    started.elapsed().as_secs_f64()
}

/// `dualwrite backfill` (release binary, a process of its own): seconds and its report.
fn backfill(
    rest: &(String, String),
    db_url: &str,
    path: &Path,
    via: &str,
    concurrency: usize,
    batch_rows: Option<usize>,
) -> (f64, serde_json::Value) {
    let state = tempfile::tempdir().unwrap();
    // The process's own CPU time, from /usr/bin/time (and a perf profile of the
    // `--via postgres` run when PERF names a file).
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "dualwrite-cpu %U %S"]);
    if let (Ok(perf), "postgres") = (std::env::var("PERF"), via) {
        cmd.args(["perf", "record", "-F", "499", "-g", "-o", &perf, "--"]);
    }
    cmd.arg(env!("CARGO_BIN_EXE_dualwrite"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DUALWRITE_REST_URL", &rest.0)
        .env("SUPABASE_SERVICE_KEY", &rest.1)
        .env("SUPABASE_DB_URL", db_url)
        .env("DB_PATH", state.path().join("unused.sqlite3"))
        .current_dir(state.path())
        .args(["backfill", "--via", via, "--from-sqlite"])
        .arg(path)
        .args(["--json", "--state-dir"])
        .arg(state.path())
        .args(["--concurrency", &concurrency.to_string()]);
    if let Some(b) = batch_rows {
        // Rows of about 300 bytes of JSON: the byte limit must not cut first.
        cmd.args(["--batch-rows", &b.to_string()])
            .args(["--batch-bytes", &(b * 2048).max(1 << 20).to_string()]);
    }
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let mut report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cpu: f64 = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("dualwrite-cpu "))
        .flat_map(|l| l.split(' ').filter_map(|x| x.parse::<f64>().ok()))
        .sum();
    report["cpu_seconds"] = cpu.into();
    (secs, report)
}

/// pgloader on the SQLite file. It cannot rename columns (DoX's `extra_json` is
/// Supabase's `extras`, …), so it loads the file as it is into tables of its own
/// making in a schema of its own (`pgloader`, dropped and made again each run),
/// with its default casts and the file's primary keys. `None` when it is not
/// installed or fails (its output is printed).
fn pgloader(db_url: &str, path: &Path, dir: &Path) -> Option<f64> {
    if std::env::var("PGLOADER").is_ok_and(|v| v == "0")
        || Command::new("pgloader").arg("--version").output().is_err()
    {
        return None;
    }
    let load = dir.join("backfill.load");
    // Batches small enough for its heap (the default heap ran out at 1M rows).
    let text = format!(
        "LOAD DATABASE\n  FROM sqlite://{}\n  INTO {db_url}\n\
         WITH include drop, create tables, create indexes, reset no sequences,\n\
              workers = 4, concurrency = 1, batch rows = 10000, prefetch rows = 10000\n\
         SET search_path TO 'pgloader'\n\
         BEFORE LOAD DO $$ drop schema if exists pgloader cascade; $$, $$ create schema pgloader; $$\n;\n",
        path.display()
    );
    std::fs::write(&load, text).unwrap();
    let started = Instant::now();
    let out = Command::new("pgloader")
        .args(["--dynamic-space-size", "2048", "--on-error-stop"])
        .arg(&load)
        .output()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        eprintln!(
            "pgloader failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(secs)
}

/// The dumped rows into the tables through [`Postgres::copy`], `streams` at once.
async fn copy_mode(
    pg: &Postgres,
    parts: &[(&'static Table, usize, PathBuf)],
    mode: CopyMode,
    chunk_rows: usize,
) -> f64 {
    let mut batches: Vec<(&'static Table, Bytes)> = Vec::new();
    for (t, _, p) in parts {
        let all = std::fs::read(p).unwrap();
        let lines: Vec<&[u8]> = all.split_inclusive(|b| *b == b'\n').collect();
        for c in lines.chunks(chunk_rows) {
            batches.push((t, Bytes::from(c.concat())));
        }
    }
    let started = Instant::now();
    futures::stream::iter(batches)
        .map(|(t, rows)| async move { pg.copy(t, rows, mode).await.unwrap() })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let rows = env_or("ROWS", if bench { 1_000_000 } else { 3_000 }) as u64;
    let rounds = env_or("ROUNDS", if bench { 2 } else { 1 });
    let concurrency = env_or("CONCURRENCY", 4);
    let pg_batch = std::env::var("PG_BATCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok());
    let streams = 4;
    let env = stack_env();
    let project = Project::new(&env, format!("dw_bench_via_{}", std::process::id()), 10, "").await;
    let db_url = project.db_url.clone();
    let rest = (
        project.postgrest.url.clone(),
        env["SUPABASE_SERVICE_KEY"].clone(),
    );
    let path = dataset(rows).await;
    let size = std::fs::metadata(&path).unwrap().len();
    let work = tempfile::tempdir().unwrap();

    // Warm-up, and the rows the ceiling loads.
    let (secs, report) = backfill(&rest, &db_url, &path, "postgres", concurrency, pg_batch);
    let total = report["rows_written"].as_u64().unwrap();
    println!(
        "warm-up --via postgres: {total} rows in {secs:.2} s, peak RSS {:.0} MB",
        report["peak_rss_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0
    );
    assert_eq!(rows_in(&db_url).await, total);
    // ROUNDS=0 MODES=0: the warm-up alone (its time and peak RSS), nothing dumped.
    let parts = if rounds > 0 || env_or("MODES", 1) == 1 {
        dump(&db_url, &work.path().join("copy"), streams).await
    } else {
        Vec::new()
    };

    let mut t: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut rss: HashMap<&str, u64> = HashMap::new();
    let mut cpu: HashMap<&str, Vec<f64>> = HashMap::new();
    for _ in 0..rounds {
        empty(&db_url).await;
        t.entry("ceiling")
            .or_default()
            .push(psql_copy(&db_url, &parts, streams));
        assert_eq!(rows_in(&db_url).await, total);
        for via in ["postgres", "rest"] {
            empty(&db_url).await;
            let batch = if via == "postgres" { pg_batch } else { None };
            let (secs, r) = backfill(&rest, &db_url, &path, via, concurrency, batch);
            assert_eq!(r["rows_written"].as_u64(), Some(total), "{r}");
            assert_eq!(rows_in(&db_url).await, total);
            t.entry(via).or_default().push(secs);
            cpu.entry(via)
                .or_default()
                .push(r["cpu_seconds"].as_f64().unwrap_or(0.0));
            let peak = r["peak_rss_bytes"].as_u64().unwrap_or(0);
            let e = rss.entry(via).or_default();
            *e = (*e).max(peak);
        }
        empty(&db_url).await;
        if let Some(secs) = pgloader(&db_url, &path, work.path()) {
            t.entry("pgloader").or_default().push(secs);
        }
    }
    // 5. The two ways rows go in, on the same rows, four sessions, 5,000-row batches.
    let (mut modes, mut full) = (Vec::new(), None);
    if env_or("MODES", 1) == 1 {
        let pg = Postgres::connect(&db_url.clone().into()).await.unwrap();
        for mode in [
            CopyMode::Direct,
            CopyMode::Upsert,
            CopyMode::Direct,
            CopyMode::Upsert,
        ] {
            empty(&db_url).await;
            modes.push((mode, copy_mode(&pg, &parts, mode, 5_000).await));
            assert_eq!(rows_in(&db_url).await, total);
        }
        // And the upsert into full tables (a repeated run).
        full = Some(copy_mode(&pg, &parts, CopyMode::Upsert, 5_000).await);
    }
    Project::drop_all(&env, vec![project]).await;

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let list = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !bench {
        println!("smoke run (cargo test): debug build, few rows");
    }
    println!(
        "{total} rows ({:.0} MB SQLite file), {concurrency} in flight, --via postgres batch {}; {streams} psql streams\n",
        size as f64 / 1e6,
        pg_batch.map_or("(default)".to_owned(), |b| b.to_string())
    );
    println!("| measurement | seconds (each run) | mean rows/s | peak RSS | its own CPU s |");
    println!("|---|---|---:|---:|---:|");
    for (k, what) in [
        ("ceiling", "ceiling: 4 × `psql \\copy` of the dumped rows"),
        ("postgres", "`dualwrite backfill --via postgres`"),
        ("rest", "`dualwrite backfill` (REST)"),
        ("pgloader", "pgloader (Debian's), the SQLite file"),
    ] {
        if let Some(v) = t.get(k) {
            println!(
                "| {what} | {} | {:.0} | {} | {} |",
                list(v),
                total as f64 / mean(v),
                rss.get(k).map_or("".to_owned(), |b| format!(
                    "{:.0} MB",
                    *b as f64 / 1048576.0
                )),
                cpu.get(k).map_or("".to_owned(), |c| list(c))
            );
        }
    }
    let ratio = |a: &str, b: &str| match (t.get(a), t.get(b)) {
        (Some(a), Some(b)) => format!("{:.3}", mean(b) / mean(a)),
        _ => "n/a".into(),
    };
    println!(
        "\n--via postgres / ceiling: {} (target >= 0.9); / REST: {} (about 1.5); / pgloader: {} (target >= 1.4)",
        ratio("postgres", "ceiling"),
        ratio("postgres", "rest"),
        ratio("postgres", "pgloader")
    );
    let by = |m: CopyMode| {
        modes
            .iter()
            .filter(|(k, _)| *k == m)
            .map(|(_, s)| *s)
            .collect::<Vec<_>>()
    };
    if let Some(full) = full {
        println!(
            "COPY straight in: {} s; staged + INSERT … ON CONFLICT: {} s (empty tables); the upsert into full tables: {full:.2} s",
            list(&by(CopyMode::Direct)),
            list(&by(CopyMode::Upsert)),
        );
    }
}

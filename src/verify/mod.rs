//! `verify`: does Supabase hold what the SQLite file holds? Or, after cutover
//! ([`Direction::Reverse`]), does the SQLite file still hold what Supabase holds?
//!
//! [`run`] returns a [`VerifyReport`]; `Err` only when verification cannot run
//! at all (Supabase unreachable, the key rejected). Differences, tables that
//! could not be read and rows that cannot land are data in the report.
//!
//! Per table it takes exact counts on both sides (SQLite `count(*)`, PostgREST
//! `HEAD` with `count=exact`), then, in content mode, reads both sides once in
//! key order, concurrently: `SqliteDatabase::page` and `SupabaseDatabase::page`,
//! both keyset pages (PostgREST silently caps a read at max-rows, so every
//! read is paginated; the adapters build the requests, verify none). Keys sort identically on both sides
//! (SQLite BINARY, PostgreSQL `COLLATE "C"`: bytes), which makes a merge join
//! possible with memory bounded by a few pages whatever the table's size.
//!
//! The two ordered streams are cut into segments that cover the same key
//! range on both sides. A segment whose digests (over key and row digest of
//! every canonical row) agree is equal as a whole. In a segment whose digests
//! differ, the rows are merged by key one by one (a per-row compare, not a
//! bisection: the segment is already in memory, and a row digest settles most
//! rows) and each row is classified: only in source, only in target, different
//! (with the columns and short redacted samples), equal (digests equal, or
//! equal under `compare::same_in`: exact decimal values, and the float tolerance in float columns), or "cannot land" (a source
//! row the normaliser refuses, reported with its reason).
//!
//! Verify never writes. [`repair`] does, and only after the caller confirmed.

use std::collections::hash_map::RandomState;
use std::time::Instant;

use crate::catalogue::Table;
use crate::db::{SqliteDatabase, SupabaseDatabase};
use crate::error::{Error, Result};
use crate::normalise;
use crate::retry::{retry, RetryPolicy};

pub(crate) mod compare;
mod merge;
mod options;
mod render;
pub mod repair;
mod report;
mod sampling;
mod streams;

pub(crate) use compare::FLOAT_RELATIVE_TOLERANCE;
pub use options::{tables_named, Check, KeyInfo, VerifyOptions};
pub use render::{render, Format};
pub use report::{
    Counts, Endpoint, LossyCount, Mode, RowDiff, RowKind, TableReport, TableStatus, Tolerance,
    Verdict, VerifyReport, REPORT_SCHEMA,
};

use crate::rest::public_url;
use crate::Direction;
use merge::Merger;
use sampling::{compare_keys, compare_sample, compare_sample_reverse};
use streams::compare_content;

/// Errors after which no other table can be verified either.
fn fatal(e: &Error) -> bool {
    matches!(
        e,
        Error::Unreachable { .. } | Error::Timeout(_) | Error::Rest { status: 401, .. }
    )
}

/// Verify the target against the source: Supabase against the SQLite file,
/// or with [`Direction::Reverse`] the file against Supabase. Never writes.
pub async fn run(
    sqlite: &SqliteDatabase,
    supabase: &SupabaseDatabase,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    run_inner(sqlite, supabase, opts, None).await
}

pub(crate) async fn run_inner(
    source: &SqliteDatabase,
    target: &SupabaseDatabase,
    opts: &VerifyOptions,
    mut plan: Option<&mut repair::RepairPlan>,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let (mode, sample_rows) = match opts.check {
        Check::Counts => (Mode::Counts, None),
        Check::Content => (Mode::Content, None),
        Check::Sample { rows } => (Mode::Sample, Some(rows)),
    };
    // `source` and `target` below are the SQLite file and Supabase; which one
    // is the source of truth is `opts.direction`.
    let sqlite_side = Endpoint {
        kind: "sqlite",
        location: source.path().display().to_string(),
    };
    let supabase_side = Endpoint {
        kind: "supabase",
        location: public_url(target.rest().url()),
    };
    let (sqlite_side, supabase_side) = match opts.direction {
        Direction::Forward => (sqlite_side, supabase_side),
        Direction::Reverse => (supabase_side, sqlite_side),
    };
    let mut report = VerifyReport {
        schema: REPORT_SCHEMA,
        tool_version: env!("CARGO_PKG_VERSION"),
        generated_at: normalise::now_text(),
        duration_ms: 0,
        peak_rss_bytes: None,
        mode,
        sample_rows,
        direction: opts.direction,
        source: sqlite_side.clone(),
        target: supabase_side.clone(),
        key: opts.key.clone(),
        tolerance: Tolerance {
            float_relative: FLOAT_RELATIVE_TOLERANCE,
            applies_to: "float columns; numbers inside JSON compare by exact decimal value",
        },
        unrepresentable: opts.unrepresentable,
        verdict: Verdict::Equal,
        exit_code: 0,
        totals: Counts::default(),
        tables: Vec::new(),
        repair: None,
    };
    let (source_counts, target_counts) = tokio::join!(
        count_source(source, &opts.tables),
        count_target(target, &opts.tables)
    );
    // One set of random digest keys per run: both sides hash alike, and nobody
    // can craft rows that collide.
    let digests = RandomState::new();
    for ((t, sc), tc) in opts
        .tables
        .iter()
        .copied()
        .zip(source_counts)
        .zip(target_counts)
    {
        let table_started = Instant::now();
        let mut tr = TableReport::new(t);
        if !source.has_table(t) {
            tr.notes
                .push("the SQLite file has no such table (counted as empty)".into());
        }
        match sc {
            Ok(n) => tr.counts.source_rows = n,
            Err(e) => tr.fail(&e),
        }
        match tc {
            Ok(n) => tr.counts.target_rows = n,
            Err(e) if fatal(&e) => return Err(e),
            Err(e) => tr.fail(&e),
        }
        if opts.direction == Direction::Reverse {
            let c = &mut tr.counts;
            std::mem::swap(&mut c.source_rows, &mut c.target_rows);
        }
        if tr.error.is_none() {
            let table_plan = plan.as_deref_mut().map(|p| p.table_mut(t));
            let outcome = match opts.check {
                Check::Counts => Ok(()),
                Check::Content => {
                    let merger = Merger::new(t, &mut tr, table_plan, opts, &digests);
                    compare_content(source, target, opts.segment_rows, merger).await
                }
                Check::Sample { rows } => {
                    let merger = Merger::new(t, &mut tr, table_plan, opts, &digests);
                    match opts.direction {
                        Direction::Forward => compare_sample(source, target, rows, merger).await,
                        Direction::Reverse => {
                            compare_sample_reverse(source, target, rows, merger).await
                        }
                    }
                }
            };
            match outcome {
                Err(e) if fatal(&e) => return Err(e),
                Err(e) => tr.fail(&e),
                Ok(()) => {}
            }
        }
        tr.finish(opts.check);
        tr.duration_ms = millis(table_started);
        let c = &tr.counts;
        tracing::debug!(
            table = t.sqlite,
            status = ?tr.status,
            source_rows = c.source_rows,
            target_rows = c.target_rows,
            equal = c.equal,
            differences = c.differences(),
            ms = tr.duration_ms,
            "table verified"
        );
        report.tables.push(tr);
    }
    report.duration_ms = millis(started);
    report.peak_rss_bytes = crate::backfill::peak_rss_bytes();
    report.conclude();
    Ok(report)
}

/// Compare only the rows of the given keys, by content, on both sides
/// (`cutover run`, in its fence: what changed since its full verification).
/// Returns the rows compared and every key that is not equal, as
/// `table key: kind`.
pub(crate) async fn verify_keys(
    sqlite: &SqliteDatabase,
    supabase: &SupabaseDatabase,
    opts: &VerifyOptions,
    keys: &[(&'static Table, Vec<String>)],
) -> Result<(u64, Vec<String>)> {
    let digests = RandomState::new();
    let mut compared = 0;
    let mut unequal = Vec::new();
    for (t, keys) in keys {
        if keys.is_empty() {
            continue;
        }
        let mut tr = TableReport::new(t);
        let mut plan = repair::RepairPlan::default();
        let merger = Merger::new(t, &mut tr, Some(plan.table_mut(t)), opts, &digests);
        compare_keys(sqlite, supabase, keys, merger).await?;
        compared += keys.len() as u64;
        let p = plan.table_mut(t);
        for k in &p.upsert {
            unequal.push(format!(
                "{} {k}: missing or different on the target",
                t.sqlite
            ));
        }
        for k in &p.delete {
            unequal.push(format!("{} {k}: only on the target", t.sqlite));
        }
        if p.cannot_land > 0 {
            unequal.push(format!(
                "{}: {} row(s) cannot land",
                t.sqlite, p.cannot_land
            ));
        }
    }
    Ok((compared, unequal))
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn count_source(source: &SqliteDatabase, tables: &[&'static Table]) -> Vec<Result<u64>> {
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        out.push(source.count(t).await);
    }
    out
}

/// Exact counts of every table at once: each is one `HEAD … count=exact`.
async fn count_target(target: &SupabaseDatabase, tables: &[&'static Table]) -> Vec<Result<u64>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in tables.iter().copied().enumerate() {
        let target = SupabaseDatabase::new(target.rest().clone());
        set.spawn(async move { (i, retry(RetryPolicy::default(), || target.count(t)).await) });
    }
    let mut out: Vec<Result<u64>> = tables
        .iter()
        .map(|_| Err(Error::Protocol("count not taken".into())))
        .collect();
    while let Some(done) = set.join_next().await {
        if let Ok((i, r)) = done {
            out[i] = r;
        }
    }
    out
}

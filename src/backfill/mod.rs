//! Backfill: copy every DoX table into Supabase, fast, resumable, and without
//! losing or silently dropping a row.
//!
//! * The source is read in storage (rowid) order where the table has rowids
//!   (sequential reads; key order for the others), one page at a time (each
//!   page one consistent snapshot), and read ahead while batches are in flight,
//!   so memory stays flat whatever the file's size. The source is opened
//!   read-only and never changed.
//! * Rows go through the shared normaliser; a row Supabase cannot hold is a
//!   reject, written to `rejects.ndjson` with its error, and counted.
//! * Batches are bounded by rows and bytes and sent as idempotent upserts
//!   (`merge-duplicates`, `return=minimal`, `count=exact`), several in flight.
//!   The batch size halves on 413, statement timeout or 5xx and grows back when
//!   requests are fast. Transient failures are retried with backoff for up to
//!   `max_wait`; then the run stops with a clear error and can be resumed.
//! * A batch PostgREST refuses for good is bisected down to the rows at fault,
//!   which become rejects; the others land.
//! * Progress is checkpointed per table outside the source (`checkpoint.json`
//!   in the state directory), only up to the last batch below which every batch
//!   has landed (`backfill/watermark.rs`). A killed run resumes there (a storage-order
//!   position is checked against the key found there, since VACUUM may
//!   renumber rowids); finished tables are not redone.
//! * Stale rows: while the app keeps dual-writing, a row read by the backfill
//!   may be updated (or deleted) by the app and mirrored before the backfill's
//!   older copy lands. After a batch lands, if anybody committed to the source
//!   since it was read (`PRAGMA data_version`), the backfill reads its rows
//!   again by key and sends the current version of every row that changed (or
//!   deletes the ones that are gone), until they are stable; when nobody
//!   committed, nothing is re-read. See docs/backfill.md, "Backfill while the
//!   app dual-writes".

mod checkpoint;
mod copy;
mod landing;
mod loader;
mod options;
mod prepare;
mod rejects;
mod report;
mod reset;
mod source;
mod tenancy;
mod watermark;

#[cfg(test)]
pub(crate) use checkpoint::Checkpoints;
pub(crate) use checkpoint::{Cursor, SourceIdentity};
pub(crate) use landing::land_rows;
pub(crate) use loader::Loader;
pub use options::{BackfillOptions, Progress};
pub(crate) use prepare::{prepare_row_into, prepare_row_with, Prepared, PreparedRows, RowsBuilder};
pub use rejects::Reject;
pub(crate) use rejects::RejectLog;
pub use report::{BackfillReport, TableCopy};
pub use reset::{prepare, reset_target, truncate_target, Start};
pub use source::{BatchSource, SourceBatch, SqliteSource};
pub use tenancy::{refuse_collisions, unique_collisions, Collision};

use std::path::Path;
use std::time::Instant;

use crate::db::{SqliteDatabase, SupabaseDatabase};
use crate::error::Result;

/// The process's peak resident memory (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Backfill every selected table of a DoX SQLite file into Supabase.
pub async fn run(
    source_path: &Path,
    target: &SupabaseDatabase,
    opts: &BackfillOptions,
) -> Result<BackfillReport> {
    let started = Instant::now();
    let source = SqliteDatabase::open_read_only(source_path).await?;
    let watch = SqliteDatabase::open_read_only(source_path).await?;
    let source_id = std::fs::canonicalize(source_path)
        .unwrap_or_else(|_| source_path.to_path_buf())
        .display()
        .to_string();
    let mut loader = Loader::new(target, opts, &source_id)?;
    if !opts.dry_run {
        let recorded = loader
            .checkpoints
            .identity()
            .and_then(|i| i.keys_table.clone());
        let now = SourceIdentity::of(source_path, &source, recorded.as_deref()).await?;
        loader.checkpoints.check_identity(now)?;
    }
    let tables = opts.selected();
    let mut report = BackfillReport {
        source: source_path.display().to_string(),
        target: opts.target_name(target.rest().url()),
        dry_run: opts.dry_run,
        resumed: tables.iter().any(|t| {
            let c = loader.checkpoints.table(t);
            c.done || c.after.is_some()
        }) && !opts.dry_run,
        ..Default::default()
    };
    for t in tables {
        if !source.has_table(t) {
            continue;
        }
        let ck = loader.checkpoints.table(t);
        let after = if opts.dry_run { None } else { ck.after.clone() };
        let mut src = SqliteSource::open(source.clone(), watch.clone(), t, after.as_ref()).await?;
        src.policy = opts.unrepresentable;
        // Counting scans the table: only worth it when someone watches the progress.
        let total = if opts.progress == Progress::Quiet {
            0
        } else {
            source.count(t).await?
        };
        let r = loader
            .copy_table(t, src, total, Some(watch.clone()))
            .await?;
        report.tables.push(r);
    }
    Ok(loader.finish(report, started))
}

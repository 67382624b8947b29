//! The `Loader`: copies tables from sources into Supabase, with checkpoints,
//! rejects and reports (shared by backfill and import).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::catalogue::Table;
use crate::db::{SqliteDatabase, SupabaseDatabase};
use crate::error::{Error, Result};
use crate::normalise::coerced::CoercedLog;

use super::checkpoint::{Checkpoints, Cursor};
use super::landing::{CopySink, Landed, Lander, Sent};
use super::options::{BackfillOptions, Progress};
use super::peak_rss_bytes;
use super::rejects::RejectLog;
use super::report::{BackfillReport, TableCopy};
use super::source::BatchSource;
use super::watermark::Watermark;

/// Copies tables from sources into Supabase, with checkpoints, rejects and reports.
pub(crate) struct Loader<'a> {
    pub target: &'a SupabaseDatabase,
    pub opts: &'a BackfillOptions,
    pub checkpoints: Checkpoints,
    pub rejects: Arc<RejectLog>,
    /// `coerced.ndjson` beside the rejects (created on the first coerced value).
    pub coerced: Arc<CoercedLog>,
    multi: Option<indicatif::MultiProgress>,
}

impl<'a> Loader<'a> {
    pub(crate) fn new(
        target: &'a SupabaseDatabase,
        opts: &'a BackfillOptions,
        source_id: &str,
    ) -> Result<Loader<'a>> {
        let persist = !opts.dry_run;
        let checkpoints = Checkpoints::open(&opts.state_dir, source_id, persist)?;
        let rejects = Arc::new(RejectLog::open(opts.state_dir.rejects(), persist)?);
        let multi = (opts.progress == Progress::Bars).then(indicatif::MultiProgress::new);
        let coerced = Arc::new(CoercedLog::new(opts.state_dir.coerced()));
        Ok(Loader {
            target,
            opts,
            checkpoints,
            rejects,
            coerced,
            multi,
        })
    }

    /// Copy one table from `source` (positioned at the checkpoint by the caller).
    pub(crate) async fn copy_table<S: BatchSource + 'static>(
        &mut self,
        table: &'static Table,
        mut source: S,
        total: u64,
        stale_source: Option<SqliteDatabase>,
    ) -> Result<TableCopy> {
        let started = Instant::now();
        let mut ck = self.checkpoints.table(table);
        let mut report = TableCopy {
            table: table.sqlite.to_owned(),
            supabase_table: table.supabase.to_owned(),
            status: if self.opts.dry_run {
                "dry run"
            } else {
                "copied"
            }
            .into(),
            resumed_from: ck.after.as_ref().map(Cursor::describe),
            ..Default::default()
        };
        if ck.done && !self.opts.dry_run {
            report.status = "already done".into();
            report.rows_written = ck.rows_written;
            report.rows_rejected = ck.rows_rejected;
            return Ok(report);
        }
        let bar = self.bar(table, total, ck.rows_written + ck.rows_rejected);
        let lander = Lander {
            rest: self.target.rest().clone(),
            table,
            size: Arc::new(AtomicUsize::new(self.opts.batch_rows.max(1))),
            max_rows: self.opts.batch_rows.max(1),
            max_wait: self.opts.max_wait,
            rejects: Arc::clone(&self.rejects),
            source: if self.opts.stale_guard {
                stale_source
            } else {
                None
            },
            policy: self.opts.unrepresentable,
            coerced: Arc::clone(&self.coerced),
            gave_up: super::landing::RESUME_HINT,
            observe: None,
            copy: self.opts.postgres.clone().map(|db| CopySink::new(db, true)),
        };
        let mut lossy: BTreeMap<(String, String), u64> = BTreeMap::new();
        // The reader runs ahead of the senders, so a batch is ready whenever a slot frees.
        let (ahead_tx, mut ahead) = tokio::sync::mpsc::channel(self.opts.concurrency.max(1));
        let reader = {
            let size = Arc::clone(&lander.size);
            let max_bytes = self.opts.batch_bytes;
            tokio::spawn(async move {
                loop {
                    let next = source.next(size.load(Ordering::Relaxed), max_bytes).await;
                    let more = matches!(next, Ok(Some(_)));
                    if ahead_tx.send(next).await.is_err() || !more {
                        return;
                    }
                }
            })
        };
        // Batches in flight (at most `concurrency`), and batches sent whose stale
        // guard is still running: those hold no request slot.
        let mut tasks: JoinSet<Result<Sent>> = JoinSet::new();
        let mut settling: JoinSet<Result<Landed>> = JoinSet::new();
        let mut watermark = Watermark::new();
        let mut seq = 0u64;
        let mut reading = true;
        let mut last_save = Instant::now();
        let mut last_line = Instant::now();
        let mut failure: Option<Error> = None;
        loop {
            while reading && failure.is_none() && tasks.len() < self.opts.concurrency.max(1) {
                match ahead.recv().await.unwrap_or(Ok(None)) {
                    Ok(Some(batch)) => {
                        if let Err(e) = self.rejects.write(&batch.rejects) {
                            failure = Some(e);
                            break;
                        }
                        // Recorded before the batch is sent: an original is never
                        // lost, though a resumed run may record a value again.
                        if !self.opts.dry_run {
                            if let Err(e) = self.coerced.write(&batch.coerced) {
                                failure = Some(e);
                                break;
                            }
                        }
                        if self.opts.dry_run {
                            let landed = Landed {
                                seq,
                                cursor: batch.cursor,
                                read: batch.read,
                                written: 0,
                                rejects: batch.rejects.len() as u64,
                                resynced: 0,
                                lossy: batch.lossy,
                            };
                            settling.spawn(async move { Ok(landed) });
                        } else {
                            tasks.spawn(lander.clone().send(seq, batch));
                        }
                        seq += 1;
                    }
                    Ok(None) => reading = false,
                    Err(e) => failure = Some(e),
                }
            }
            let joined = tokio::select! {
                Some(sent) = tasks.join_next(), if !tasks.is_empty() => {
                    match sent {
                        Ok(Ok(sent)) => {
                            settling.spawn(lander.clone().settle(sent));
                        }
                        Ok(Err(e)) => {
                            failure.get_or_insert(e);
                        }
                        Err(join) => {
                            failure.get_or_insert(Error::Protocol(format!("a batch task failed: {join}")));
                        }
                    }
                    continue;
                }
                Some(landed) = settling.join_next(), if !settling.is_empty() => landed,
                else => break,
            };
            let landed = match joined {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                    continue;
                }
                Err(join) => {
                    failure.get_or_insert(Error::Protocol(format!("a batch task failed: {join}")));
                    continue;
                }
            };
            // Advance the checkpoint over every batch below which all have landed.
            for l in watermark.land(landed.seq, landed) {
                report.rows_read += l.read;
                report.rows_written += l.written;
                report.rows_rejected += l.rejects;
                report.rows_resynced += l.resynced;
                for (col, k) in l.lossy {
                    *lossy
                        .entry((col.to_owned(), k.as_str().to_owned()))
                        .or_default() += 1;
                }
                ck.after = Some(l.cursor);
                ck.rows_written += l.written;
                ck.rows_rejected += l.rejects;
                if let Some(b) = &bar {
                    b.inc(l.written + l.rejects);
                    let rate = report.rows_read as f64 / started.elapsed().as_secs_f64().max(1e-3);
                    b.set_message(format!("{rate:.0} rows/s"));
                }
            }
            if last_save.elapsed() > Duration::from_secs(1) {
                self.checkpoints.set(table, ck.clone())?;
                last_save = Instant::now();
            }
            if self.opts.progress == Progress::Lines && last_line.elapsed() > Duration::from_secs(5)
            {
                let secs = started.elapsed().as_secs_f64();
                tracing::info!(
                    table = table.sqlite,
                    done = ck.rows_written + ck.rows_rejected,
                    total,
                    rows_per_s = (report.rows_read as f64 / secs) as u64,
                    "backfill progress"
                );
                last_line = Instant::now();
            }
        }
        reader.abort();
        if let Some(e) = failure {
            self.checkpoints.set(table, ck)?;
            if let Some(b) = bar {
                b.abandon();
            }
            return Err(e);
        }
        ck.done = true;
        self.checkpoints.set(table, ck)?;
        if let Some(b) = bar {
            b.finish();
        }
        for ((col, k), n) in lossy {
            report.lossy.entry(col).or_default().insert(k, n);
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    fn bar(&self, table: &Table, total: u64, done: u64) -> Option<indicatif::ProgressBar> {
        let multi = self.multi.as_ref()?;
        let b = multi.add(indicatif::ProgressBar::new(total));
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:<22} {bar:30} {pos:>9}/{len:<9} {msg:>12} eta {eta}",
            )
            .expect("a valid template"),
        );
        b.set_prefix(table.sqlite);
        b.set_position(done);
        Some(b)
    }

    pub(crate) fn finish(self, mut report: BackfillReport, started: Instant) -> BackfillReport {
        if let Err(e) = self.checkpoints.flush() {
            tracing::error!(error = %e, "the last checkpoint could not be written; a rerun resends some rows");
        }
        report.rows_read = report.tables.iter().map(|t| t.rows_read).sum();
        report.rows_written = report.tables.iter().map(|t| t.rows_written).sum();
        report.rows_rejected = report.tables.iter().map(|t| t.rows_rejected).sum();
        report.seconds = started.elapsed().as_secs_f64();
        report.rows_per_second = report.rows_read as f64 / report.seconds.max(1e-9);
        report.sample_rejects = self.rejects.sample();
        report.rejects_file = (!self.opts.dry_run).then(|| self.rejects.path.display().to_string());
        report.peak_rss_bytes = peak_rss_bytes();
        report
    }
}

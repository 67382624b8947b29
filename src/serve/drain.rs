//! The drain loop: claim a batch, read the rows as they are now, make them durable, send (pipelined), acknowledge.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::backfill::{self, prepare_row_into, PreparedRows, Reject, RejectLog, RowsBuilder};
use crate::capture::{self, Claimed};
use crate::catalogue::{Table, TABLES};
use crate::coerced::{CoercedLog, CoercedValue};
use crate::db::SqliteDatabase;
use crate::error::{Error, Result};
use crate::rest::{content_range_total, RestClient};
use crate::retry::{retry, RetryPolicy};

use super::stats::{add, status_file_path, write_status, Stats};
use super::{blocking, notify, Conn, ServeOptions};

pub(super) struct Daemon {
    pub(super) opts: ServeOptions,
    pub(super) rest: RestClient,
    pub(super) conn: Conn,
    pub(super) reader: SqliteDatabase,
    pub(super) rejects: Arc<RejectLog>,
    pub(super) coerced: Arc<CoercedLog>,
    pub(super) stats: Arc<Stats>,
    /// systemd's `sd_notify` (nothing outside systemd).
    pub(super) notifier: notify::Notifier,
    /// The request body's bytes per row in the last batch read, to size the
    /// next one's (a body that grows is copied).
    pub(super) row_bytes: usize,
    /// `--concurrency` upsert requests in flight, over all the batches in flight.
    pub(super) slots: Arc<tokio::sync::Semaphore>,
    /// The change log connection's `PRAGMA data_version` read just before the
    /// last fsync of the WAL (see [`Sender::make_durable`]).
    pub(super) synced: Arc<tokio::sync::Mutex<Option<i64>>>,
}

impl Daemon {
    /// Check the triggers; re-install missing ones or fail.
    pub(super) async fn check_triggers(&mut self) -> Result<()> {
        let st = blocking(&self.conn, |c| capture::triggers_on(c)).await?;
        if st.missing.is_empty() && st.log_present {
            *crate::sync::lock(&self.stats.capture_problem) = None;
            return Ok(());
        }
        if !self.opts.repair_triggers {
            let why = format!(
                "capture triggers are missing on {} (was the table re-created?); writes to it are not captured",
                st.missing.join(", ")
            );
            *crate::sync::lock(&self.stats.capture_problem) = Some(why.clone());
            return Err(Error::Sqlite(why));
        }
        tracing::warn!(tables = ?st.missing, "capture triggers were missing; re-installing them");
        let r = blocking(&self.conn, capture::install_on).await?;
        tracing::info!(created = ?r.created, "capture re-installed");
        // The tables may have new columns: read them with a fresh layout.
        self.reader = SqliteDatabase::open_read_only(&self.opts.db_path).await?;
        *crate::sync::lock(&self.stats.capture_problem) = None;
        Ok(())
    }

    /// Probe Supabase in the background (a read of one row) and record
    /// whether it answers: `/ready` then tells an unreachable Supabase, or a
    /// rejected key, even while no change waits (a batch's outcome tells it
    /// otherwise).
    fn probe(&self) {
        let rest = self.rest.clone();
        let stats = Arc::clone(&self.stats);
        tokio::spawn(async move {
            match rest.probe(crate::catalogue::ARTIFACT.supabase).await {
                Ok(()) => stats.supabase_answered(),
                Err(e) => {
                    tracing::warn!(error = %e, "Supabase does not answer the daemon's probe");
                    stats.supabase_failed(&e);
                }
            }
        });
    }

    async fn refresh_pending(&self) -> Result<()> {
        let (n, lag) = blocking(&self.conn, |c| capture::pending(c)).await?;
        self.stats.set_pending(n, lag);
        Ok(())
    }

    /// Record how a batch ended. `Ok(true)`: it failed and its changes wait
    /// in the log; `Err`: a failure that needs an operator (SQLite, I/O).
    fn settle(&self, r: Result<()>) -> Result<bool> {
        match r {
            Ok(()) => {
                self.stats.supabase_answered();
                *crate::sync::lock(&self.stats.last_success) = Some(capture::now_secs());
                Ok(false)
            }
            Err(e) => {
                tracing::warn!(error = %e, "mirroring failed; the changes stay in the log and are retried");
                if matches!(
                    e,
                    Error::Sqlite(_) | Error::WorkerStopped { .. } | Error::Io { .. }
                ) {
                    self.stats.failed(&e);
                    return Err(e);
                }
                self.stats.supabase_failed(&e);
                Ok(true)
            }
        }
    }

    /// Wait for the oldest batch in flight; `Ok(true)` when it failed.
    async fn finish_one(&self, inflight: &mut VecDeque<InFlight>) -> Result<bool> {
        let Some((task, _)) = inflight.pop_front() else {
            return Ok(false);
        };
        let r = task
            .await
            .unwrap_or_else(|e| Err(Error::Sqlite(format!("a mirroring task failed: {e}"))));
        self.settle(r)
    }

    /// Wait for every batch in flight; `Ok(true)` when one failed.
    async fn finish_all(&self, inflight: &mut VecDeque<InFlight>) -> Result<bool> {
        let mut failed = false;
        while !inflight.is_empty() {
            failed |= self.finish_one(inflight).await?;
        }
        Ok(failed)
    }

    /// The drain loop. While a backlog drains, batches are claimed, read and
    /// handed to a sender at once (up to [`OUTSTANDING`] not yet
    /// acknowledged), and their requests share the `--concurrency` slots: a
    /// slot a batch's last request frees goes to the next batch's first,
    /// whatever the batch before still does. A key is in at most one
    /// batch in flight: a key changed again while its batch is out is skipped
    /// by the next claim and read once its batch is acknowledged, so a newer
    /// version of a row is never sent alongside an older one.
    pub(super) async fn drain(&mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let status_path = status_file_path(&self.opts.db_path);
        let mut last_check = Instant::now();
        let mut last_status = Instant::now() - Duration::from_secs(10);
        let mut version = blocking(&self.conn, |c| capture::data_version(c)).await?;
        // Whether Supabase answers, for `/ready`, before any change waits.
        self.probe();
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        // Every pending entry at or below this `seq` is in a batch in flight
        // or was left because its key is (see `claim_changes`).
        let mut resume_after: Option<i64> = None;
        loop {
            self.notifier.watchdog();
            if *stop.borrow() {
                // The batches in flight finish; their figures are recorded.
                self.finish_all(&mut inflight).await?;
                return Ok(());
            }
            if last_check.elapsed() >= self.opts.check_every {
                last_check = Instant::now();
                self.check_triggers().await?;
                if inflight.is_empty() {
                    // Idle: nothing else would notice Supabase going away.
                    self.probe();
                }
            }
            // Batches acknowledged leave the pipeline (their keys may be
            // claimed again); with `OUTSTANDING` batches out, the oldest is
            // waited for before the next claim.
            let mut failed = false;
            while inflight.front().is_some_and(|(t, _)| t.is_finished())
                || inflight.len() >= OUTSTANDING
            {
                failed |= self.finish_one(&mut inflight).await?;
            }
            let limit = self.opts.batch_rows.max(1);
            // With nothing in flight every pending entry may be claimed: read
            // from the start. Otherwise read on from the last claim (or from
            // the first entry it left because its key was busy).
            if inflight.is_empty() {
                resume_after = None;
            }
            let mut full = false;
            if !failed {
                let busy: HashSet<u64> = inflight
                    .iter()
                    .flat_map(|(_, k)| k.iter().copied())
                    .collect();
                let after = resume_after;
                let claim = blocking(&self.conn, move |c| {
                    capture::claim_changes(c, limit, after, &busy)
                })
                .await?;
                let changes = claim.changes;
                resume_after = match (claim.skipped_from, changes.last()) {
                    (Some(s), _) => s.checked_sub(1),
                    (None, Some(last)) => Some(last.seq),
                    (None, None) => after,
                };
                full = changes.len() >= limit;
                if !changes.is_empty() {
                    let keys: Vec<u64> = changes
                        .iter()
                        .map(|c| capture::key_hash(&c.tbl, &c.key))
                        .collect();
                    let batch = self.read_batch(changes, claim.runs).await?;
                    // Sent at once: its requests wait for the request slots,
                    // which the batches before it took first.
                    let sender = self.sender();
                    inflight
                        .push_back((tokio::spawn(async move { sender.send(batch).await }), keys));
                }
            }
            // A batch that emptied the log (or a failure) waits for them all.
            if !full || failed {
                failed |= self.finish_all(&mut inflight).await?;
            }
            // Refreshed once a second, and whenever the log may have run dry.
            if last_status.elapsed() >= Duration::from_secs(1) || failed || !full {
                self.refresh_pending().await?;
                write_status(&status_path, &self.stats.snapshot());
                last_status = Instant::now();
            }
            if failed {
                tokio::select! {
                    _ = tokio::time::sleep(self.opts.pause) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            if full {
                continue;
            }
            // Wait for somebody to commit (or the next trigger check). The
            // wait comes first: under a steady write load, batches then come
            // every `poll` instead of back to back, which keeps the daemon's
            // acknowledgements (the file's write lock) and fsyncs off the app's path.
            loop {
                self.notifier.watchdog();
                tokio::select! {
                    _ = tokio::time::sleep(self.opts.poll) => {}
                    _ = stop.changed() => {}
                }
                if *stop.borrow() {
                    return Ok(());
                }
                let v = blocking(&self.conn, |c| capture::data_version(c)).await?;
                if v != version {
                    version = v;
                    break;
                }
                if last_check.elapsed() >= self.opts.check_every {
                    break;
                }
                if last_status.elapsed() >= Duration::from_secs(1) {
                    self.refresh_pending().await?;
                    write_status(&status_path, &self.stats.snapshot());
                    last_status = Instant::now();
                }
            }
        }
    }

    fn sender(&self) -> Sender {
        Sender {
            opts: self.opts.clone(),
            rest: self.rest.clone(),
            conn: Arc::clone(&self.conn),
            rejects: Arc::clone(&self.rejects),
            coerced: Arc::clone(&self.coerced),
            stats: Arc::clone(&self.stats),
            slots: Arc::clone(&self.slots),
            synced: Arc::clone(&self.synced),
        }
    }

    /// Read one batch: group the changes by table, read the rows as they are
    /// now (short read transactions) and prepare them on the reader's thread,
    /// straight into the request body. The sender makes them durable first.
    async fn read_batch(&mut self, changes: Vec<Claimed>, runs: Vec<(i64, i64)>) -> Result<Batch> {
        let mut by_table: BTreeMap<usize, Vec<Claimed>> = BTreeMap::new();
        let mut corrupt = Vec::new();
        for c in changes {
            match capture::check_change(&c) {
                Ok(t) => {
                    let i = TABLES
                        .iter()
                        .position(|x| x.sqlite == t.sqlite)
                        .unwrap_or(0);
                    by_table.entry(i).or_default().push(c);
                }
                Err(reason) => corrupt.push((c, reason)),
            }
        }
        let mut work = Vec::new();
        for (i, changes) in by_table {
            let t: &'static Table = TABLES[i];
            if !self.reader.has_table(t) {
                // A table created after the daemon started: read it with a fresh layout.
                self.reader = SqliteDatabase::open_read_only(&self.opts.db_path).await?;
            }
            let keys: Vec<String> = changes.iter().map(|c| c.key.clone()).collect();
            let n = keys.len();
            let start = Prepare {
                rows: RowsBuilder::with_capacity(n * self.row_bytes + n * self.row_bytes / 8, n),
                bad: Vec::new(),
                lossy: Vec::new(),
                coerced: Vec::new(),
            };
            let policy = self.opts.unrepresentable;
            let p = self
                .reader
                .visit_by_keys(t, keys, start, move |p, row| {
                    if let Err(r) =
                        prepare_row_into(t, row, &mut p.lossy, &mut p.rows, policy, &mut p.coerced)
                    {
                        p.bad.push(*r);
                    }
                })
                .await?;
            if !p.rows.is_empty() {
                self.row_bytes = p.rows.bytes() / p.rows.len();
            }
            work.push(TableWork {
                t,
                changes,
                rows: p.rows.finish(),
                bad: p.bad,
                coerced: p.coerced,
            });
        }
        // After the reads: which commits of other connections they could see.
        let version = blocking(&self.conn, |c| capture::data_version(c)).await?;
        Ok(Batch {
            corrupt,
            work,
            runs: Arc::new(runs),
            version,
        })
    }
}

/// Batches claimed and not yet acknowledged while a backlog drains: the
/// requests of all of them share the `--concurrency` request slots, in the
/// order the batches were claimed, so the next batch's requests start as soon
/// as a slot frees, whatever the batches before it still do (fsync, the
/// deletes, the acknowledgement).
const OUTSTANDING: usize = 4;

/// A batch being sent, and the [`capture::key_hash`]es of the keys it holds.
type InFlight = (tokio::task::JoinHandle<Result<()>>, Vec<u64>);

/// One table's rows, being prepared on the reader's thread.
struct Prepare {
    rows: RowsBuilder,
    bad: Vec<Reject>,
    lossy: Vec<(&'static str, crate::normalise::Lossy)>,
    coerced: Vec<CoercedValue>,
}

/// One table's part of a batch: its changes, and the rows as they were read.
struct TableWork {
    t: &'static Table,
    changes: Vec<Claimed>,
    /// The rows that exist, ready to send.
    rows: PreparedRows,
    /// Rows Supabase cannot hold (dead letters).
    bad: Vec<Reject>,
    coerced: Vec<CoercedValue>,
}

/// One batch, read, ready to make durable and send.
struct Batch {
    /// Change rows that cannot be drained, with the reason.
    corrupt: Vec<(Claimed, String)>,
    work: Vec<TableWork>,
    /// The claim's `seq` ranges, by which each table's changes are acknowledged.
    runs: Arc<Vec<(i64, i64)>>,
    /// The change log connection's `PRAGMA data_version` once the rows were read.
    version: i64,
}

/// The sending half of the daemon, moved into a task per batch.
struct Sender {
    /// One per upsert request in flight, shared by the batches in flight.
    slots: Arc<tokio::sync::Semaphore>,
    synced: Arc<tokio::sync::Mutex<Option<i64>>>,
    opts: ServeOptions,
    rest: RestClient,
    conn: Conn,
    rejects: Arc<RejectLog>,
    coerced: Arc<CoercedLog>,
    stats: Arc<Stats>,
}

impl Sender {
    /// Make what was read durable, then send the batch; acknowledge the
    /// changes of the tables that landed, in one write transaction. (The fsync
    /// is here, not in the read: it overlaps the next batch's claim and read.)
    async fn send(self, batch: Batch) -> Result<()> {
        self.make_durable(batch.version).await?;
        let Batch {
            corrupt,
            work,
            runs,
            version: _,
        } = batch;
        if !corrupt.is_empty() {
            // Dead letters: recorded with the reason, counted, never blocking the rest.
            let rejects: Vec<Reject> = corrupt
                .iter()
                .map(|(c, reason)| Reject {
                    table: c.tbl.clone(),
                    key: c.key.clone(),
                    code: "corrupt_change".into(),
                    message: reason.clone(),
                    row: serde_json::Value::Null,
                })
                .collect();
            tracing::error!(
                count = rejects.len(),
                "corrupt change rows moved to the rejects file"
            );
            self.rejects.write(&rejects)?;
            for (c, _) in &corrupt {
                add(&self.stats.rejected, &c.tbl, 1);
            }
            let done: Vec<Claimed> = corrupt.into_iter().map(|(c, _)| c).collect();
            blocking(&self.conn, move |c| capture::ack(c, &done)).await?;
        }
        // The tables that landed are acknowledged together, in one write
        // transaction, once the batch is done (or failed part-way: those that
        // landed before the failure).
        let mut landed: Vec<&'static str> = Vec::with_capacity(work.len());
        let sent = self.send_tables(work, &mut landed).await;
        if !landed.is_empty() {
            blocking(&self.conn, move |c| capture::ack_runs(c, &landed, &runs)).await?;
        }
        sent
    }

    /// Upsert and delete each table's rows; push each table that landed.
    async fn send_tables(
        &self,
        work: Vec<TableWork>,
        landed: &mut Vec<&'static str>,
    ) -> Result<()> {
        for w in work {
            let TableWork {
                t,
                changes,
                rows,
                bad,
                coerced,
            } = w;
            let (written, refused) = backfill::land_rows(
                &self.rest,
                t,
                &rows,
                self.opts.request_rows,
                // `--concurrency` counts the requests of all the batches in
                // flight: a batch's last request leaves room for the next one's.
                &self.slots,
                self.opts.max_wait,
                &self.rejects,
            )
            .await?;
            self.rejects.write(&bad)?;
            self.coerced.write(&coerced)?;
            // The keys read (landed or refused) exist; the others are gone from SQLite.
            let present: HashSet<&str> = (0..rows.len())
                .map(|i| rows.key(i))
                .chain(bad.iter().map(|r| r.key.as_str()))
                .collect();
            let gone: Vec<&str> = changes
                .iter()
                .map(|c| c.key.as_str())
                .filter(|k| !present.contains(*k))
                .collect();
            let deleted = self.delete(t, &gone).await?;
            landed.push(t.sqlite);
            add(&self.stats.mirrored, t.sqlite, written + deleted);
            add(
                &self.stats.rejected,
                t.sqlite,
                (refused.len() + bad.len()) as u64,
            );
            tracing::debug!(
                table = t.sqlite,
                changes = changes.len(),
                upserted = written,
                deleted,
                "mirrored"
            );
        }
        Ok(())
    }
}

impl Sender {
    /// Make the rows of a batch durable before they are sent: fsync the WAL,
    /// unless an fsync since made every commit the batch could see durable.
    ///
    /// `version` is the change log connection's `PRAGMA data_version` read
    /// after the batch's rows were read; it changes with every commit of
    /// another connection (the app's). Equal to the value read just before a
    /// completed fsync, no other connection committed between that reading
    /// and this one, so every commit the read saw was made before the fsync
    /// began, and is covered by it. While a backlog drains with the app idle,
    /// one fsync so covers every batch; with the app writing, each batch
    /// has its own. (The daemon's own commits, claims and acknowledgements,
    /// need no fsync and do not change its connection's `data_version`.)
    async fn make_durable(&self, version: i64) -> Result<()> {
        let mut synced = self.synced.lock().await;
        if *synced == Some(version) {
            return Ok(());
        }
        *synced = None;
        let before = blocking(&self.conn, |c| capture::data_version(c)).await?;
        let db = self.opts.db_path.clone();
        crate::sync::blocking("capture", move || capture::make_durable(&db)).await?;
        *synced = Some(before);
        Ok(())
    }

    /// Delete rows that are gone from SQLite; returns the keys handled.
    async fn delete(&self, t: &'static Table, keys: &[&str]) -> Result<u64> {
        for chunk in crate::verify::key_chunks(keys) {
            let quoted: Vec<String> = chunk
                .iter()
                .map(|k| crate::verify::in_list_value(k))
                .collect();
            retry(RetryPolicy::for_up_to(self.opts.max_wait), || async {
                let req = self
                    .rest
                    .from(t.supabase)
                    .delete()
                    .in_(t.key().supabase, &quoted)
                    .build();
                let resp = self
                    .rest
                    .send(req, Some("return=minimal,count=exact"))
                    .await?;
                // The row may never have reached Supabase: 0 deleted is fine.
                Ok(content_range_total(resp.headers()).unwrap_or(0))
            })
            .await?;
        }
        Ok(keys.len() as u64)
    }
}

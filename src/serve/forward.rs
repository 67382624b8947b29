//! The forward direction: the SQLite file's change log ([`crate::capture`])
//! to Supabase. A batch's keys are grouped by table, their rows read as they
//! are now (one statement per table) straight into the request bodies, the
//! WAL made durable, rows that are gone deleted and the others upserted,
//! then the batch acknowledged by the `seq` ranges it claimed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::pipeline::{Claimed, Poll, Side};
use super::stats::{Backlog, BacklogReader, Landed, Stats};
use super::ServeOptions;
use crate::backfill::{
    land_rows, prepare_row_into, Prepared, PreparedRows, Reject, RejectLog, RowsBuilder,
};
use crate::capture::{self, Claimed as Change, Resync};
use crate::catalogue::{Table, TABLES};
use crate::db::{SqliteDatabase, SupabaseDatabase};
use crate::error::{Error, Result};
use crate::normalise::coerced::{CoercedLog, CoercedValue};

/// The drainer's connection to the file, used off the runtime's threads.
type Conn = Arc<Mutex<rusqlite::Connection>>;

async fn blocking<R: Send + 'static>(
    conn: &Conn,
    f: impl FnOnce(&mut rusqlite::Connection) -> Result<R> + Send + 'static,
) -> Result<R> {
    let conn = Arc::clone(conn);
    crate::sync::blocking("capture", move || f(&mut crate::sync::lock(&conn))).await
}

/// How many batches in a row a row may be refused on a unique value (23505)
/// before it is a dead letter. A unique value that moved from one row to
/// another (a skill renamed, another given its old name) is refused until
/// the row that gave it up has landed: in the same batch, after the rest of
/// it; in a later one when that row was in a batch still out.
const UNIQUE_RETRIES: u32 = 5;

const UNIQUE_VIOLATION: &str = "23505";

/// Rows PostgREST refused, with the error each got.
type Refused = Vec<(Prepared, Error)>;

pub(super) struct Forward {
    opts: ServeOptions,
    target: Arc<SupabaseDatabase>,
    conn: Conn,
    reader: SqliteDatabase,
    rejects: Arc<RejectLog>,
    coerced: Arc<CoercedLog>,
    stats: Arc<Stats>,
    /// The request body's bytes per row in the last batch read, to size the
    /// next one's (a body that grows is copied).
    row_bytes: usize,
    /// `--concurrency` upsert requests in flight, over all the batches out.
    slots: Arc<tokio::sync::Semaphore>,
    /// The change log connection's `PRAGMA data_version` read just before the
    /// last fsync of the WAL (see [`Sender::make_durable`]).
    synced: Arc<tokio::sync::Mutex<Option<i64>>>,
    /// Every pending entry at or below this `seq` is in a batch out or was
    /// left because its key is (see [`capture::claim_changes`]).
    resume_after: Option<i64>,
    /// Rows refused on a unique value, by (table, key): batches so far.
    unique_refusals: Arc<Mutex<HashMap<(&'static str, String), u32>>>,
    /// A batch left changes in the log to try again: claim again after the
    /// next poll, whether or not anybody commits.
    again: Arc<AtomicBool>,
    /// `PRAGMA data_version` and `schema_version` at the last poll.
    versions: (i64, i64),
}

/// The file's backlog, read from its change log on a connection of the
/// reader's own (opened at the first read): one scan of the log per read,
/// nothing worth caching (SQLite's default page cache is 2 MB).
pub(super) fn backlog_reader(db: PathBuf) -> BacklogReader {
    let conn: Arc<Mutex<Option<rusqlite::Connection>>> = Arc::default();
    Arc::new(move || {
        let (conn, db) = (Arc::clone(&conn), db.clone());
        Box::pin(crate::sync::blocking("status", move || {
            let mut slot = crate::sync::lock(&conn);
            let c = match &mut *slot {
                Some(c) => c,
                empty => {
                    let c = capture::open_ro(&db)?;
                    c.execute_batch("PRAGMA cache_size = -64")?;
                    empty.insert(c)
                }
            };
            let (pending, oldest_at) = capture::backlog(c)?;
            Ok(Backlog {
                pending,
                estimated: false,
                oldest_at,
            })
        }))
    })
}

impl Forward {
    /// Open the file for the daemon: capture must be installed on it.
    pub(super) async fn open(
        rest: crate::rest::RestClient,
        opts: &ServeOptions,
        stats: Arc<Stats>,
    ) -> Result<Forward> {
        let db = opts.db_path.clone();
        // The change log's connection and the reader open side by side (each
        // reads the file's schema); the change log's errors come first.
        let setup = {
            let db = db.clone();
            crate::sync::blocking("capture", move || {
                let c = capture::open_drainer(&db)?;
                if !capture::triggers_on(&c)?.log_present {
                    return Err(Error::invalid(format!(
                        "capture is not installed on {}: run `dualwrite capture install` first",
                        db.display()
                    )));
                }
                let versions = (capture::data_version(&c)?, capture::schema_version(&c)?);
                Ok((c, versions))
            })
        };
        let (setup, reader) = tokio::join!(setup, SqliteDatabase::open_read_only(&db));
        let (conn, versions) = setup?;
        let reader = reader?;
        let rejects = Arc::new(RejectLog::open(opts.state_dir.rejects(), true)?);
        let coerced = Arc::new(CoercedLog::new(opts.state_dir.coerced()));
        Ok(Forward {
            target: Arc::new(SupabaseDatabase::new(rest)),
            conn: Arc::new(Mutex::new(conn)),
            reader,
            rejects,
            coerced,
            stats,
            row_bytes: 256,
            slots: Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1))),
            synced: Arc::new(tokio::sync::Mutex::new(None)),
            resume_after: None,
            unique_refusals: Arc::default(),
            again: Arc::default(),
            versions,
            opts: opts.clone(),
        })
    }

    /// Carry on with every table marked for a resync ([`capture::Resync`]):
    /// queue the file's keys, then the keys Supabase holds that the file no
    /// longer does. Each step is short and recorded, so a stop or a crash
    /// resumes where it was.
    async fn resync(&mut self) -> Result<()> {
        let pending = blocking(&self.conn, |c| capture::pending_resyncs(c)).await?;
        for (t, state) in pending {
            self.stats
                .step("re-sending a table whose triggers were re-installed");
            if let Resync::FileKeys(mut after) = state {
                loop {
                    let from = after.clone();
                    let next = blocking(&self.conn, move |c| capture::queue_file_keys(c, t, &from))
                        .await?;
                    self.stats.progressed();
                    match next {
                        Some(k) => after = k,
                        None => break,
                    }
                }
            }
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .stats
                    .retried(self.opts.max_wait, || {
                        self.target.keys_page(t, after.as_deref(), 1000)
                    })
                    .await?;
                let Some(last) = page.last().cloned() else {
                    break;
                };
                blocking(&self.conn, move |c| capture::queue_gone_keys(c, t, &page)).await?;
                self.stats.progressed();
                after = Some(last);
            }
            blocking(&self.conn, move |c| capture::finish_resync(c, t)).await?;
            tracing::info!(table = t.sqlite, "table re-sent: every row it holds is queued, and every row Supabase holds that it lost");
        }
        Ok(())
    }

    /// Read one batch: group the changes by table, read the rows as they are
    /// now (short read transactions) and prepare them on the reader's thread,
    /// straight into the request body. The sender makes them durable first.
    async fn read_batch(&mut self, claim: capture::Claim) -> Result<Batch> {
        let capture::Claim {
            changes,
            runs,
            superseded,
            ..
        } = claim;
        // The tables named by the log only (a corrupt row's) have nothing of
        // theirs to acknowledge.
        let superseded = superseded
            .iter()
            .filter_map(|s| TABLES.iter().find(|t| t.sqlite == s.as_str()))
            .map(|t| t.sqlite)
            .collect();
        let mut by_table: BTreeMap<usize, Vec<Change>> = BTreeMap::new();
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
            runs,
            superseded,
            version,
        })
    }

    fn sender(&self) -> Sender {
        Sender {
            opts: self.opts.clone(),
            target: Arc::clone(&self.target),
            conn: Arc::clone(&self.conn),
            rejects: Arc::clone(&self.rejects),
            coerced: Arc::clone(&self.coerced),
            stats: Arc::clone(&self.stats),
            slots: Arc::clone(&self.slots),
            synced: Arc::clone(&self.synced),
            unique_refusals: Arc::clone(&self.unique_refusals),
            again: Arc::clone(&self.again),
        }
    }
}

impl Side for Forward {
    type Batch = Batch;

    /// Batches claimed and not yet acknowledged while a backlog drains: the
    /// requests of all of them share the `--concurrency` request slots, in
    /// the order the batches were claimed, so the next batch's requests
    /// start as soon as a slot frees, whatever the batches before it still
    /// do (fsync, the deletes, the acknowledgement).
    const OUTSTANDING: usize = 4;

    async fn check_capture(&mut self) -> Result<()> {
        let st = blocking(&self.conn, |c| capture::triggers_on(c)).await?;
        if !st.log_present {
            let why = format!(
                "capture was uninstalled from {} while the daemon ran: nothing is captured any more",
                self.opts.db_path.display()
            );
            self.stats.capture_problem(Some(why.clone()));
            return Err(Error::invalid(why));
        }
        let outdated = st.version != Some(capture::LOG_VERSION);
        if !st.missing.is_empty() || outdated {
            if !self.opts.repair_triggers {
                let why = if st.missing.is_empty() {
                    format!(
                        "capture on {} was installed by another version of dualwrite: run `dualwrite capture install` to bring it up to date",
                        self.opts.db_path.display()
                    )
                } else {
                    format!(
                        "capture triggers are missing on {} (was the table re-created?): writes to it are not captured; \
                         run `dualwrite capture install` (it re-installs them and re-sends those tables), \
                         or run serve without --no-repair-triggers",
                        st.missing.join(", ")
                    )
                };
                self.stats.capture_problem(Some(why.clone()));
                return Err(Error::invalid(why));
            }
            tracing::warn!(tables = %st.missing.join(","), outdated, "capture triggers were missing (a table re-created?); re-installing them, and re-sending those tables whole");
            let r = blocking(&self.conn, capture::install_on).await?;
            tracing::info!(created = %r.created.join(","), resynced = %r.resynced.join(","), "capture re-installed");
            // The tables may have new columns: read them with a fresh layout.
            self.reader = SqliteDatabase::open_read_only(&self.opts.db_path).await?;
            self.versions.1 = blocking(&self.conn, |c| capture::schema_version(c)).await?;
        }
        self.stats.capture_problem(None);
        self.resync().await
    }

    async fn poll(&mut self) -> Result<Poll> {
        let (data, schema) = blocking(&self.conn, |c| {
            Ok((capture::data_version(c)?, capture::schema_version(c)?))
        })
        .await?;
        let changed = data != self.versions.0 || self.again.swap(false, Ordering::Relaxed);
        let schema_changed = schema != self.versions.1;
        self.versions = (data, schema);
        Ok(Poll {
            changed,
            schema_changed,
        })
    }

    async fn next_batch(
        &mut self,
        limit: usize,
        busy: &HashSet<u64>,
    ) -> Result<Option<Claimed<Batch>>> {
        // With nothing out every pending entry may be claimed: read from the
        // start. Otherwise read on from the last claim (or from the first
        // entry it left because its key was busy).
        if busy.is_empty() {
            self.resume_after = None;
        }
        let after = self.resume_after;
        let busy = busy.clone();
        let claim = blocking(&self.conn, move |c| {
            capture::claim_changes(c, limit, after, &busy)
        })
        .await?;
        self.resume_after = match (claim.skipped_from, claim.changes.last()) {
            (Some(s), _) => s.checked_sub(1),
            (None, Some(last)) => Some(last.seq),
            (None, None) => after,
        };
        if claim.changes.is_empty() {
            return Ok(None);
        }
        let n = claim.changes.len();
        let keys = claim
            .changes
            .iter()
            .map(|c| capture::key_hash(&c.tbl, &c.key))
            .collect();
        let batch = self.read_batch(claim).await?;
        Ok(Some(Claimed {
            batch,
            keys,
            changes: n,
        }))
    }

    fn send(
        &self,
        batch: Batch,
    ) -> impl std::future::Future<Output = Result<Landed>> + Send + 'static {
        self.sender().send(batch)
    }

    fn probe(&self) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let rest = self.target.rest().clone();
        async move { rest.probe(crate::catalogue::ARTIFACT.supabase).await }
    }

    fn backlog_reader(&self) -> BacklogReader {
        backlog_reader(self.opts.db_path.clone())
    }

    async fn close(self) {
        // The file's connections are closed before the lease goes: an
        // embedding process may fork() once its background drainer stopped,
        // and a thread still inside SQLite at a fork deadlocks the child.
        // (The backlog reader's goes with the daemon's signals.)
        let Forward { conn, reader, .. } = self;
        drop(conn);
        reader.close().await;
    }
}

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
    changes: Vec<Change>,
    /// The rows that exist, ready to send.
    rows: PreparedRows,
    /// Rows Supabase cannot hold (dead letters).
    bad: Vec<Reject>,
    coerced: Vec<CoercedValue>,
}

/// One batch, read, ready to make durable and send.
pub(super) struct Batch {
    /// Change rows that cannot be drained, with the reason.
    corrupt: Vec<(Change, String)>,
    work: Vec<TableWork>,
    /// The claim's `seq` ranges, by which each table's changes are acknowledged.
    runs: Vec<(i64, i64)>,
    /// The tables of superseded entries in the ranges ([`capture::Claim::superseded`]).
    superseded: Vec<&'static str>,
    /// The change log connection's `PRAGMA data_version` once the rows were read.
    version: i64,
}

/// The sending half, moved into a task per batch.
struct Sender {
    opts: ServeOptions,
    target: Arc<SupabaseDatabase>,
    conn: Conn,
    rejects: Arc<RejectLog>,
    coerced: Arc<CoercedLog>,
    stats: Arc<Stats>,
    slots: Arc<tokio::sync::Semaphore>,
    synced: Arc<tokio::sync::Mutex<Option<i64>>>,
    unique_refusals: Arc<Mutex<HashMap<(&'static str, String), u32>>>,
    again: Arc<AtomicBool>,
}

/// A batch sent, not yet acknowledged.
pub(crate) struct Sent {
    pub(crate) landed: Landed,
    /// The `seq` ranges to acknowledge, by table (the tables that landed).
    pub(crate) acked: Vec<(&'static str, Vec<(i64, i64)>)>,
    /// Corrupt change rows, moved to the rejects file: to acknowledge one by one.
    pub(crate) corrupt: Vec<Change>,
    /// The failure that stopped the batch part-way, if one did.
    pub(crate) failure: Option<Error>,
}

/// The forward side's reading and sending for `cutover run`, which claims
/// and acknowledges the changes itself (in its fence, where the daemon's own
/// write transactions could not run).
pub(crate) struct Mirror {
    side: Forward,
}

impl Mirror {
    pub(crate) async fn open(rest: crate::rest::RestClient, opts: &ServeOptions) -> Result<Mirror> {
        let stats = Arc::new(Stats::new(crate::Direction::Forward, opts.max_lag));
        Ok(Mirror {
            side: Forward::open(rest, opts, stats).await?,
        })
    }

    /// Read the rows of a claim's changes as they are now and send them.
    pub(crate) async fn send(&mut self, claim: capture::Claim) -> Result<Sent> {
        let batch = self.side.read_batch(claim).await?;
        self.side.sender().send_unacknowledged(batch).await
    }

    pub(crate) async fn close(self) {
        self.side.close().await;
    }
}

/// What one table of a batch did.
struct TableDone {
    table: &'static str,
    /// Its ranges of the claim, without the changes left to try again.
    runs: Vec<(i64, i64)>,
    mirrored: u64,
    rejected: u64,
}

impl Sender {
    /// Make what was read durable, then send the batch; acknowledge the
    /// changes of the tables that landed, in one write transaction. (The
    /// fsync is here, not in the read: it overlaps the next batch's claim
    /// and read.)
    async fn send(self, batch: Batch) -> Result<Landed> {
        let sent = self.send_unacknowledged(batch).await?;
        if !sent.corrupt.is_empty() {
            let done = sent.corrupt;
            blocking(&self.conn, move |c| capture::ack(c, &done)).await?;
        }
        let acked = sent.acked;
        if !acked.is_empty() {
            blocking(&self.conn, move |c| capture::ack_runs(c, &acked)).await?;
        }
        match sent.failure {
            None => Ok(sent.landed),
            Some(e) => {
                // What landed before the failure counts (and is progress).
                if !sent.landed.mirrored.is_empty() {
                    self.stats.landed(&sent.landed);
                }
                Err(e)
            }
        }
    }

    /// [`Sender::send`] up to the acknowledgement, which is left to the caller.
    async fn send_unacknowledged(&self, batch: Batch) -> Result<Sent> {
        self.make_durable(batch.version).await?;
        let Batch {
            corrupt,
            work,
            runs,
            superseded,
            version: _,
        } = batch;
        // What the batch holds of a table it sends nothing of is superseded:
        // it goes whatever happens to the rest.
        let sends: Vec<&'static str> = work.iter().map(|w| w.t.sqlite).collect();
        let mut landed = Landed::default();
        let mut corrupt_done = Vec::new();
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
                landed.rejected.push((c.tbl.clone(), 1));
            }
            corrupt_done = corrupt.into_iter().map(|(c, _)| c).collect();
        }
        // The tables that landed are acknowledged together, in one write
        // transaction, once the batch is done (or failed part-way: those that
        // landed before the failure).
        let mut acked: Vec<(&'static str, Vec<(i64, i64)>)> = Vec::with_capacity(work.len());
        let mut failure = None;
        for w in work {
            match self.send_table(w, &runs).await {
                Ok(d) => {
                    landed.mirrored.push((d.table, d.mirrored));
                    landed.rejected.push((d.table.to_owned(), d.rejected));
                    acked.push((d.table, d.runs));
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        for t in superseded {
            if !sends.contains(&t) {
                acked.push((t, runs.clone()));
            }
        }
        Ok(Sent {
            landed,
            acked,
            corrupt: corrupt_done,
            failure,
        })
    }

    fn observer(&self) -> crate::retry::SharedObserver {
        let stats = Arc::clone(&self.stats);
        Arc::new(move |e: &Error| stats.failed(e))
    }

    /// One table: delete the rows that are gone, upsert the others, try the
    /// rows refused on a unique value again once the rest landed.
    async fn send_table(&self, w: TableWork, runs: &[(i64, i64)]) -> Result<TableDone> {
        let TableWork {
            t,
            changes,
            rows,
            bad,
            coerced,
        } = w;
        // The keys read (to send, or refused) exist; the others are gone from
        // SQLite. They are deleted first: a row that took the unique value of
        // one deleted in the same batch then lands.
        let present: HashSet<&str> = (0..rows.len())
            .map(|i| rows.key(i))
            .chain(bad.iter().map(|r| r.key.as_str()))
            .collect();
        let gone: Vec<&str> = changes
            .iter()
            .map(|c| c.key.as_str())
            .filter(|k| !present.contains(*k))
            .collect();
        let deleted = if gone.is_empty() {
            0
        } else {
            self.stats
                .retried(self.opts.max_wait, || self.target.delete_keys(t, &gone))
                .await?;
            // The row may never have reached Supabase: gone either way.
            gone.len() as u64
        };
        let land = |rows: PreparedRows| {
            let observer = self.observer();
            async move {
                land_rows(
                    self.target.rest(),
                    t,
                    &rows,
                    self.opts.request_rows,
                    // `--concurrency` counts the requests of all the batches
                    // out: a batch's last request leaves room for the next one's.
                    &self.slots,
                    self.opts.max_wait,
                    observer,
                )
                .await
            }
        };
        let (mut written, refused) = land(rows).await?;
        let (mut unique, mut dead): (Refused, Refused) = refused
            .into_iter()
            .partition(|(_, e)| e.code() == Some(UNIQUE_VIOLATION));
        if !unique.is_empty() {
            // A unique value that moved from one row to another in this batch
            // is free now that the rest of the batch has landed.
            let again: Vec<Prepared> = unique.iter().map(|(p, _)| p.clone()).collect();
            let (n, still) = land(PreparedRows::from_rows(&again)).await?;
            written += n;
            unique = still;
        }
        // Still refused on a unique value: left in the log for a later batch
        // (the row holding the value may be in a batch still out), a few times.
        let seq_of: HashMap<&str, i64> = changes.iter().map(|c| (c.key.as_str(), c.seq)).collect();
        let mut kept = Vec::new();
        {
            let mut refusals = crate::sync::lock(&self.unique_refusals);
            let left: HashSet<&str> = unique.iter().map(|(p, _)| p.key.as_str()).collect();
            for c in &changes {
                if !left.contains(c.key.as_str()) {
                    refusals.remove(&(t.sqlite, c.key.clone()));
                }
            }
            for (p, e) in unique {
                let n = refusals.entry((t.sqlite, p.key.clone())).or_insert(0);
                *n += 1;
                match seq_of.get(p.key.as_str()) {
                    Some(seq) if *n <= UNIQUE_RETRIES => kept.push(*seq),
                    _ => {
                        refusals.remove(&(t.sqlite, p.key.clone()));
                        dead.push((p, e));
                    }
                }
            }
        }
        if !kept.is_empty() {
            tracing::debug!(
                table = t.sqlite,
                rows = kept.len(),
                "rows refused on a unique value; tried again in a later batch"
            );
            self.again.store(true, Ordering::Relaxed);
        }
        let dead: Vec<Reject> = dead.iter().map(|(p, e)| Reject::refused(t, p, e)).collect();
        self.rejects.write(&dead)?;
        self.rejects.write(&bad)?;
        self.coerced.write(&coerced)?;
        tracing::debug!(
            table = t.sqlite,
            changes = changes.len(),
            upserted = written,
            deleted,
            "mirrored"
        );
        Ok(TableDone {
            table: t.sqlite,
            runs: capture::runs_without(runs, &kept),
            mirrored: written + deleted,
            rejected: (dead.len() + bad.len()) as u64,
        })
    }

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
    /// has its own. (The daemon's own commits, acknowledgements, need no
    /// fsync and do not change its connection's `data_version`.)
    async fn make_durable(&self, version: i64) -> Result<()> {
        let mut synced = self.synced.lock().await;
        if *synced == Some(version) {
            return Ok(());
        }
        *synced = None;
        let before = blocking(&self.conn, |c| capture::data_version(c)).await?;
        let db: PathBuf = self.opts.db_path.clone();
        crate::sync::blocking("capture", move || capture::make_durable(&db)).await?;
        *synced = Some(before);
        Ok(())
    }
}

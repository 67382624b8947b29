//! `dualwrite serve`: the long-running mirror of a captured DoX file.
//!
//! It drains the change log (see [`crate::capture`]) in commit order, state
//! based: the keys of a batch are grouped by table, the rows are read as they
//! are *now* (one statement per table), then the WAL is made durable, then
//! rows that exist are upserted and rows that are gone are deleted, through
//! the backfill's landing path (batches, retries, bisection, rejects file).
//! A change leaves the log only after Supabase confirmed it, and only if its
//! key was not changed again meanwhile (`seq`). Nothing is sent while a read
//! transaction is open.
//!
//! * Commits are noticed with `PRAGMA data_version`, polled every `poll`.
//! * Failures: each batch is retried with backoff (`retry.rs`) for up to
//!   `max_wait`; then the daemon records the error, waits `pause` and tries
//!   again, on its own timer, for as long as it takes. Changes wait in the log.
//! * One daemon per file ([`crate::capture::Lease`]).
//! * Shutdown: `/ready` turns 503 at once, the batch in flight finishes, `run` returns.

pub mod http;
pub mod notify;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::backfill::{self, prepare_row_with, Prepared, PreparedRows, Reject, RejectLog};
use crate::capture::{self, Change};
use crate::catalogue::{Table, TABLES};
use crate::coerced::CoercedLog;
use crate::db::SqliteDatabase;
use crate::error::{Error, Result};
use crate::normalise::UnrepresentablePolicy;
use crate::rest::{content_range_total, RestClient};
use crate::retry::{retry, RetryPolicy};

/// How `serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub db_path: PathBuf,
    /// Where the HTTP endpoint listens (`None`: no endpoint).
    pub listen: Option<SocketAddr>,
    /// Changes read per batch.
    pub batch_rows: usize,
    /// Rows per upsert request.
    pub request_rows: usize,
    /// Upsert requests in flight.
    pub concurrency: usize,
    /// How often to look for new commits when the log is empty.
    pub poll: Duration,
    /// `/ready` fails when the oldest pending change is older than this.
    pub max_lag: Duration,
    /// How long one batch is retried before the error is recorded.
    pub max_wait: Duration,
    /// The wait between failed batches.
    pub pause: Duration,
    /// How often the triggers are checked.
    pub check_every: Duration,
    /// Re-install missing triggers (else stop with an error).
    pub repair_triggers: bool,
    /// Where `rejects.ndjson` (dead letters) and `coerced.ndjson` are written.
    pub state_dir: PathBuf,
    /// Reject (the default) or coerce values Supabase cannot hold.
    pub unrepresentable: UnrepresentablePolicy,
}

impl ServeOptions {
    pub fn new(db_path: PathBuf, state_dir: PathBuf) -> ServeOptions {
        ServeOptions {
            db_path,
            listen: None,
            // Two batches are in flight while a backlog drains (the pipeline):
            // 2 x 2000 changes keep the peak RSS under 100 MB (BENCHMARKS.md).
            batch_rows: 2000,
            request_rows: 500,
            concurrency: 4,
            poll: Duration::from_millis(50),
            max_lag: Duration::from_secs(60),
            max_wait: Duration::from_secs(20),
            pause: Duration::from_secs(1),
            check_every: Duration::from_secs(60),
            repair_triggers: true,
            state_dir,
            unrepresentable: UnrepresentablePolicy::Reject,
        }
    }
}

/// The daemon's figures, shared with the HTTP endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    pub pending: AtomicU64,
    /// Lag in milliseconds.
    lag_ms: AtomicU64,
    pub mirrored: Mutex<BTreeMap<String, u64>>,
    pub failures: Mutex<BTreeMap<String, u64>>,
    pub rejected: Mutex<BTreeMap<String, u64>>,
    pub last_error: Mutex<Option<String>>,
    pub last_success: Mutex<Option<f64>>,
    /// Shutting down: not ready.
    pub stopping: AtomicBool,
    /// Why capture is not in place, when it is not.
    pub capture_problem: Mutex<Option<String>>,
    /// The last batch failed (Supabase unreachable, refusing the key, ...).
    pub supabase_failing: AtomicBool,
    pub max_lag_secs: f64,
}

fn add(m: &Mutex<BTreeMap<String, u64>>, k: &str, n: u64) {
    if n > 0 {
        *crate::sync::lock(m).entry(k.to_owned()).or_default() += n;
    }
}

impl Stats {
    pub fn lag_seconds(&self) -> f64 {
        self.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0
    }

    pub(crate) fn set_pending(&self, pending: u64, lag: f64) {
        self.pending.store(pending, Ordering::Relaxed);
        self.lag_ms.store((lag * 1000.0) as u64, Ordering::Relaxed);
    }

    /// Ready, or the reasons why not.
    pub fn ready(&self) -> std::result::Result<(), Vec<String>> {
        let mut why = Vec::new();
        if self.stopping.load(Ordering::Relaxed) {
            why.push("shutting down".to_owned());
        }
        if let Some(p) = crate::sync::lock(&self.capture_problem).clone() {
            why.push(p);
        }
        if self.supabase_failing.load(Ordering::Relaxed) {
            let e = crate::sync::lock(&self.last_error).clone();
            why.push(format!(
                "supabase is failing: {}",
                e.unwrap_or_else(|| "unknown error".into())
            ));
        }
        if self.lag_seconds() > self.max_lag_secs {
            why.push(format!(
                "lag {:.1}s is over the bound of {:.0}s",
                self.lag_seconds(),
                self.max_lag_secs
            ));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }

    pub fn snapshot(&self) -> StatusFile {
        StatusFile {
            pid: std::process::id(),
            updated_at: capture::now_secs(),
            pending: self.pending.load(Ordering::Relaxed),
            lag_seconds: self.lag_seconds(),
            ready: self.ready().is_ok(),
            not_ready_because: self.ready().err().unwrap_or_default(),
            last_error: crate::sync::lock(&self.last_error).clone(),
            last_success: *crate::sync::lock(&self.last_success),
            mirrored_rows: crate::sync::lock(&self.mirrored).clone(),
            failures: crate::sync::lock(&self.failures).clone(),
            rejected_rows: crate::sync::lock(&self.rejected).clone(),
        }
    }
}

/// What the daemon last reported, as written next to the file
/// (`<db>.dualwrite-serve.json`) and served on `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusFile {
    pub pid: u32,
    pub updated_at: f64,
    pub pending: u64,
    pub lag_seconds: f64,
    pub ready: bool,
    pub not_ready_because: Vec<String>,
    pub last_error: Option<String>,
    /// Seconds since the epoch of the last batch Supabase confirmed.
    pub last_success: Option<f64>,
    pub mirrored_rows: BTreeMap<String, u64>,
    pub failures: BTreeMap<String, u64>,
    pub rejected_rows: BTreeMap<String, u64>,
}

pub fn status_file_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".dualwrite-serve.json");
    PathBuf::from(p)
}

pub(crate) fn write_status(path: &Path, s: &StatusFile) {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(s).expect("status serialises");
    if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::debug!(error = %e, path = %path.display(), "cannot write the status file");
    }
}

/// A failure's kind, for `dualwrite_mirror_failures_total{kind}`.
pub fn failure_kind(e: &Error) -> &'static str {
    match e {
        Error::Unreachable { .. } => "unreachable",
        Error::Timeout(_) => "timeout",
        Error::Rest {
            status: 401 | 403, ..
        } => "auth",
        Error::Rest { status, .. } if *status >= 500 => "server",
        Error::Rest { status: 429, .. } => "throttled",
        Error::Rest { .. } => "refused",
        Error::Sqlite(_) => "sqlite",
        _ => "other",
    }
}

/// The capture connection, used from `spawn_blocking` only.
type Conn = Arc<Mutex<rusqlite::Connection>>;

async fn blocking<R: Send + 'static>(
    conn: &Conn,
    f: impl FnOnce(&mut rusqlite::Connection) -> Result<R> + Send + 'static,
) -> Result<R> {
    let conn = Arc::clone(conn);
    tokio::task::spawn_blocking(move || f(&mut crate::sync::lock(&conn)))
        .await
        .map_err(|e| Error::Sqlite(format!("the capture task failed: {e}")))?
}

struct Daemon {
    opts: ServeOptions,
    rest: RestClient,
    conn: Conn,
    reader: SqliteDatabase,
    rejects: Arc<RejectLog>,
    coerced: Arc<CoercedLog>,
    stats: Arc<Stats>,
    /// systemd's `sd_notify` (nothing outside systemd).
    notifier: notify::Notifier,
}

/// A daemon run's figures and its stop signal. When `shutdown` completes,
/// `/ready` turns 503 at once (so a load balancer stops sending first) and the
/// drain loop is told to stop after the batch in flight. Shared by both directions.
pub(crate) fn start(
    max_lag: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (Arc<Stats>, watch::Receiver<bool>) {
    let (stop_tx, stop) = watch::channel(false);
    let stats = Arc::new(Stats {
        max_lag_secs: max_lag.as_secs_f64(),
        ..Stats::default()
    });
    {
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            shutdown.await;
            stats.stopping.store(true, Ordering::SeqCst);
            let _ = stop_tx.send(true);
        });
    }
    (stats, stop)
}

async fn take_lease(db: &Path) -> Result<capture::Lease> {
    let db = db.to_path_buf();
    tokio::task::spawn_blocking(move || capture::Lease::take(&db))
        .await
        .map_err(|e| Error::Sqlite(e.to_string()))?
}

/// Run the daemon until `shutdown` completes (then finish the batch in flight).
/// Refuses to start while another daemon holds the file's lease.
pub async fn run(
    rest: RestClient,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let lease = take_lease(&opts.db_path).await?;
    run_with_lease(rest, opts, lease, notify::Notifier::from_env(), shutdown).await
}

/// How long the background drainer waits before it tries the lease again.
const BACKGROUND_RETRY: Duration = Duration::from_secs(10);

/// The background drainer of an embedding process (`dual.drain = "background"`):
/// the same drain loop as `serve`, under the same lease, so it never runs
/// alongside a `serve` (or another process's drainer) on the same file. While
/// another holds the lease it waits and tries again every few seconds; it
/// stops (after the batch in flight) when `stop` turns true or its sender is
/// dropped. A failure is logged and the drainer starts again later: the
/// changes wait in the log meanwhile.
pub async fn drain_in_background(
    rest: RestClient,
    opts: ServeOptions,
    mut stop: watch::Receiver<bool>,
) {
    let stopped = |s: &watch::Receiver<bool>| s.has_changed().is_err() || *s.borrow();
    loop {
        if stopped(&stop) {
            return;
        }
        match take_lease(&opts.db_path).await {
            Ok(lease) => {
                let mut s = stop.clone();
                let shutdown = async move {
                    let _ = s.wait_for(|v| *v).await;
                };
                // The embedding process's own systemd unit is not ours to notify.
                let quiet = notify::Notifier::new(None, None);
                match run_with_lease(rest.clone(), opts.clone(), lease, quiet, shutdown).await {
                    Ok(()) if stopped(&stop) => return,
                    Ok(()) => {}
                    Err(e) => {
                        tracing::error!(error = %e, db = %opts.db_path.display(), "the background drainer stopped; it starts again shortly")
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "another drainer holds the lease; the background drainer waits")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(BACKGROUND_RETRY) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn run_with_lease(
    rest: RestClient,
    opts: ServeOptions,
    lease: capture::Lease,
    notifier: notify::Notifier,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (stats, stop) = start(opts.max_lag, shutdown);
    let db = opts.db_path.clone();
    let conn = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || {
            let c = capture::open_rw(&db)?;
            // Acknowledgements take the file's write lock: keep them short. An
            // acknowledgement a power loss takes back only sends the row again
            // (idempotent), so it needs no fsync of its own.
            c.execute_batch("PRAGMA synchronous=NORMAL")?;
            Ok::<_, Error>(c)
        })
        .await
        .map_err(|e| Error::Sqlite(e.to_string()))??
    };
    let conn: Conn = Arc::new(Mutex::new(conn));
    let st = blocking(&conn, |c| capture::status_on(c)).await?;
    if !st.log_present {
        return Err(Error::invalid(format!(
            "capture is not installed on {}: run `dualwrite capture install` first",
            db.display()
        )));
    }
    let upgraded = blocking(&conn, capture::upgrade).await?;
    if !upgraded.is_empty() {
        tracing::info!(added = ?upgraded, "change log upgraded");
    }
    let rejects = Arc::new(RejectLog::open(
        opts.state_dir.join("rejects.ndjson"),
        true,
    )?);
    let coerced = Arc::new(CoercedLog::new(opts.state_dir.join("coerced.ndjson")));
    let reader = SqliteDatabase::open_read_only(&db).await?;
    let mut d = Daemon {
        opts,
        rest,
        conn,
        reader,
        rejects,
        coerced,
        stats: Arc::clone(&stats),
        notifier,
    };
    d.check_triggers().await?;
    let server = match d.opts.listen {
        Some(addr) => Some(http::spawn(addr, Arc::clone(&stats), stop.clone())?),
        None => None,
    };
    tracing::info!(db = %db.display(), listen = ?d.opts.listen, lease = %lease.path.display(), "serving");
    d.notifier.notify("READY=1");
    let result = d.drain(stop).await;
    d.notifier.notify("STOPPING=1");
    let status_path = status_file_path(&db);
    write_status(&status_path, &stats.snapshot());
    if let Some(s) = server {
        let _ = s.await;
    }
    drop(lease);
    result
}

impl Daemon {
    /// Check the triggers; re-install missing ones or fail.
    async fn check_triggers(&mut self) -> Result<()> {
        let st = blocking(&self.conn, |c| capture::status_on(c)).await?;
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
                self.stats.supabase_failing.store(false, Ordering::Relaxed);
                *crate::sync::lock(&self.stats.last_success) = Some(capture::now_secs());
                Ok(false)
            }
            Err(e) => {
                add(&self.stats.failures, failure_kind(&e), 1);
                tracing::warn!(error = %e, "mirroring failed; the changes stay in the log and are retried");
                *crate::sync::lock(&self.stats.last_error) = Some(e.to_string());
                if matches!(
                    e,
                    Error::Sqlite(_) | Error::WorkerStopped { .. } | Error::Io { .. }
                ) {
                    return Err(e);
                }
                self.stats.supabase_failing.store(true, Ordering::Relaxed);
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

    /// The drain loop. While a backlog drains, the next batch is claimed, read
    /// and made durable while the previous one is sent (up to [`PIPELINE`]
    /// batches in flight), so the requests of one batch start while the last
    /// requests of the previous one are still out. A key is in at most one
    /// batch in flight: a key changed again while its batch is out is skipped
    /// by the next claim and read once its batch is acknowledged, so a newer
    /// version of a row is never sent alongside an older one.
    async fn drain(&mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let status_path = status_file_path(&self.opts.db_path);
        let mut last_check = Instant::now();
        let mut last_status = Instant::now() - Duration::from_secs(10);
        let mut version = blocking(&self.conn, |c| capture::data_version(c)).await?;
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
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
            }
            let limit = self.opts.batch_rows.max(1);
            let busy: HashSet<(String, String)> = inflight
                .iter()
                .flat_map(|(_, k)| k.iter().cloned())
                .collect();
            let changes =
                blocking(&self.conn, move |c| capture::claim_changes(c, limit, &busy)).await?;
            let full = changes.len() >= limit;
            if !changes.is_empty() {
                let keys: HashSet<(String, String)> = changes
                    .iter()
                    .map(|c| (c.tbl.clone(), c.key.clone()))
                    .collect();
                let batch = self.read_batch(changes).await?;
                let sender = self.sender();
                inflight.push_back((tokio::spawn(async move { sender.send(batch).await }), keys));
            }
            let mut failed = false;
            // A full pipeline waits for its oldest batch; a batch that emptied
            // the log (or a failure) waits for them all.
            while inflight.len() >= PIPELINE {
                failed |= self.finish_one(&mut inflight).await?;
            }
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
        }
    }

    /// Read one batch: group the changes by table, read the rows as they are
    /// now (short read transactions), then make what was read durable.
    async fn read_batch(&mut self, changes: Vec<Change>) -> Result<Batch> {
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
        for (i, cs) in by_table {
            let t: &'static Table = TABLES[i];
            if !self.reader.has_table(t) {
                // A table created after the daemon started: read it with a fresh layout.
                self.reader = SqliteDatabase::open_read_only(&self.opts.db_path).await?;
            }
            let keys: Vec<String> = cs.iter().map(|c| c.key.clone()).collect();
            let rows = self.reader.rows_by_keys(t, keys).await?;
            work.push((t, cs, rows));
        }
        {
            let db = self.opts.db_path.clone();
            tokio::task::spawn_blocking(move || capture::make_durable(&db))
                .await
                .map_err(|e| Error::Sqlite(e.to_string()))??;
        }
        Ok(Batch { corrupt, work })
    }
}

/// Batches sent at once while a backlog drains.
const PIPELINE: usize = 2;

/// A batch being sent, and the (table, key) pairs it holds.
type InFlight = (
    tokio::task::JoinHandle<Result<()>>,
    HashSet<(String, String)>,
);

/// One batch, read and made durable, ready to send.
struct Batch {
    /// Change rows that cannot be drained, with the reason.
    corrupt: Vec<(Change, String)>,
    work: Vec<(&'static Table, Vec<Change>, Vec<crate::normalise::SqlRow>)>,
}

/// The sending half of the daemon, moved into a task per batch.
struct Sender {
    opts: ServeOptions,
    rest: RestClient,
    conn: Conn,
    rejects: Arc<RejectLog>,
    coerced: Arc<CoercedLog>,
    stats: Arc<Stats>,
}

impl Sender {
    /// Send one batch; acknowledge each table's changes once they landed.
    async fn send(self, batch: Batch) -> Result<()> {
        let Batch { corrupt, work } = batch;
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
            let done: Vec<Change> = corrupt.into_iter().map(|(c, _)| c).collect();
            blocking(&self.conn, move |c| capture::ack(c, &done)).await?;
        }
        for (t, cs, rows) in work {
            let mut present = HashSet::new();
            let mut prepared: Vec<Prepared> = Vec::with_capacity(rows.len());
            let mut bad: Vec<Reject> = Vec::new();
            let (mut lossy, mut coerced) = (Vec::new(), Vec::new());
            for row in &rows {
                match prepare_row_with(t, row, &mut lossy, self.opts.unrepresentable, &mut coerced)
                {
                    Ok(p) => {
                        present.insert(p.key.clone());
                        prepared.push(p);
                    }
                    Err(r) => {
                        present.insert(r.key.clone());
                        bad.push(*r);
                    }
                }
            }
            let body = PreparedRows::from_rows(&prepared);
            let (written, refused) = backfill::land_rows(
                &self.rest,
                t,
                &body,
                self.opts.request_rows,
                self.opts.concurrency,
                self.opts.max_wait,
                &self.rejects,
            )
            .await?;
            self.rejects.write(&bad)?;
            self.coerced.write(&coerced)?;
            let gone: Vec<&str> = cs
                .iter()
                .map(|c| c.key.as_str())
                .filter(|k| !present.contains(*k))
                .collect();
            let deleted = self.delete(t, &gone).await?;
            let n = cs.len();
            blocking(&self.conn, move |c| capture::ack(c, &cs)).await?;
            add(&self.stats.mirrored, t.sqlite, written + deleted);
            add(
                &self.stats.rejected,
                t.sqlite,
                (refused.len() + bad.len()) as u64,
            );
            tracing::debug!(
                table = t.sqlite,
                changes = n,
                upserted = written,
                deleted,
                "mirrored"
            );
        }
        Ok(())
    }
}

impl Sender {
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

/// `dualwrite status`: what the file and the daemon's last report say.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub db_path: String,
    pub capture: capture::CaptureStatus,
    pub pending: u64,
    pub lag_seconds: f64,
    /// The daemon holds the lease right now.
    pub daemon_running: bool,
    pub last_error: Option<String>,
    pub last_success: Option<f64>,
    pub daemon: Option<StatusFile>,
}

pub fn status(db: &Path) -> Result<Status> {
    let capture = capture::status(db)?;
    let daemon: Option<StatusFile> = std::fs::read(status_file_path(db))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    // Probed without taking the lease: a running daemon is never disturbed.
    let daemon_running = capture::Lease::held_on(db);
    Ok(Status {
        db_path: db.display().to_string(),
        pending: capture.pending,
        lag_seconds: capture.lag_seconds,
        daemon_running,
        last_error: daemon.as_ref().and_then(|d| d.last_error.clone()),
        last_success: daemon.as_ref().and_then(|d| d.last_success),
        capture,
        daemon,
    })
}

impl Status {
    pub fn render(&self) -> String {
        let mut s = format!(
            "{}\n  capture: {}\n  pending changes: {}\n  lag: {:.1}s\n  daemon: {}\n",
            self.db_path,
            if self.capture.installed {
                "installed".to_owned()
            } else if self.capture.log_present {
                format!(
                    "INCOMPLETE (no triggers on {})",
                    self.capture.missing.join(", ")
                )
            } else {
                "not installed".to_owned()
            },
            self.pending,
            self.lag_seconds,
            if self.daemon_running {
                "running"
            } else {
                "not running"
            },
        );
        if let Some(e) = &self.last_error {
            s.push_str(&format!("  last error: {e}\n"));
        }
        if let Some(d) = &self.daemon {
            if !d.not_ready_because.is_empty() {
                s.push_str(&format!(
                    "  not ready because: {}\n",
                    d.not_ready_because.join("; ")
                ));
            }
        }
        s
    }
}

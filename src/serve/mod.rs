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

mod drain;
mod stats;
mod status;

use drain::Daemon;
pub(crate) use stats::add;
pub(crate) use stats::write_status;
pub use stats::{failure_kind, read_status_file, status_file_path, Stats, StatusFile};
pub(crate) use status::render_problems;
pub use status::{status, Status};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::backfill::RejectLog;
use crate::capture::{self};
use crate::coerced::CoercedLog;
use crate::db::SqliteDatabase;
use crate::error::{Error, Result};
use crate::normalise::UnrepresentablePolicy;
use crate::rest::RestClient;

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
    /// Upsert requests in flight, over all the batches in flight (a request
    /// of the next batch starts as soon as one of the previous ends).
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
            // Each batch costs the app's commits (BENCHMARKS.md, "Where the
            // writer's p99 goes"): at 1,000 commits/s, batches every 50 ms
            // raised its p99 by half, every 250 ms not measurably.
            poll: Duration::from_millis(250),
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

/// The capture connection, used from `spawn_blocking` only.
type Conn = Arc<Mutex<rusqlite::Connection>>;

async fn blocking<R: Send + 'static>(
    conn: &Conn,
    f: impl FnOnce(&mut rusqlite::Connection) -> Result<R> + Send + 'static,
) -> Result<R> {
    let conn = Arc::clone(conn);
    crate::sync::blocking("capture", move || f(&mut crate::sync::lock(&conn))).await
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
    crate::sync::blocking("capture", move || capture::Lease::take(&db)).await
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

/// The WAL size, in pages, past which the daemon's own commits checkpoint it
/// (SQLite's default, which the app's connections keep, is 1,000). The daemon
/// commits twice per batch; when batches come often (a short `--poll-ms`) it
/// reaches the threshold first, and the checkpoints (with their fsync of the
/// database file) run on its commits instead of the app's.
const CHECKPOINT_PAGES: u32 = 300;

async fn run_with_lease(
    rest: RestClient,
    opts: ServeOptions,
    lease: capture::Lease,
    notifier: notify::Notifier,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (stats, stop) = start(opts.max_lag, shutdown);
    let db = opts.db_path.clone();
    // The change log's connection and the reader open side by side (each
    // reads the file's schema); the change log's errors come first.
    let setup = {
        let db = db.clone();
        crate::sync::blocking("capture", move || {
            let mut c = capture::open_rw(&db)?;
            // Acknowledgements take the file's write lock: keep them short. An
            // acknowledgement a power loss takes back only sends the row again
            // (idempotent), so it needs no fsync of its own.
            c.execute_batch("PRAGMA synchronous=NORMAL")?;
            c.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
            if !capture::triggers_on(&c)?.log_present {
                return Err(Error::invalid(format!(
                    "capture is not installed on {}: run `dualwrite capture install` first",
                    db.display()
                )));
            }
            let upgraded = capture::upgrade(&mut c)?;
            Ok((c, upgraded))
        })
    };
    let (setup, reader) = tokio::join!(setup, SqliteDatabase::open_read_only(&db));
    let (conn, upgraded) = setup?;
    let reader = reader?;
    if !upgraded.is_empty() {
        tracing::info!(added = ?upgraded, "change log upgraded");
    }
    let conn: Conn = Arc::new(Mutex::new(conn));
    let rejects = Arc::new(RejectLog::open(
        opts.state_dir.join("rejects.ndjson"),
        true,
    )?);
    let coerced = Arc::new(CoercedLog::new(opts.state_dir.join("coerced.ndjson")));
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let mut d = Daemon {
        opts,
        rest,
        conn,
        reader,
        rejects,
        coerced,
        stats: Arc::clone(&stats),
        notifier,
        row_bytes: 256,
        slots,
        synced: Arc::new(tokio::sync::Mutex::new(None)),
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
    // The file's connections are closed before the lease goes: an embedding
    // process may fork() once its background drainer stopped, and a thread
    // still inside SQLite at a fork deadlocks the child.
    let Daemon { conn, reader, .. } = d;
    drop(conn);
    reader.close().await;
    drop(lease);
    result
}

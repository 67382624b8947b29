//! `dualwrite serve`: the mirror daemon, in either direction. Forward, it
//! drains the SQLite file's change log ([`crate::capture`]) into Supabase;
//! reverse (after cutover), Supabase's change log into the file. One loop
//! (`pipeline`) over a small per-direction `pipeline::Side` (`forward.rs`,
//! `reverse.rs`), with one options type whose per-direction defaults live in
//! [`ServeOptions::new`].
//!
//! * State based: a batch's keys are read as they are *now*, so a newer
//!   version of a row is never overwritten by an older one; a change leaves
//!   the log only after the target confirmed it, and only if its key was not
//!   changed again meanwhile.
//! * Signals computed from the truth (`stats`): `pending` and the lag are
//!   read from the change log whenever `/ready`, `/metrics`, `/status`, the
//!   status file or `dualwrite status` asks, by a reader of their own; a
//!   failure (a timeout too) is counted and shown while it lasts; no progress
//!   while changes wait past `--max-lag-secs` turns `/ready` 503 with a WARN.
//! * Recover or die: what may pass is retried with a growing pause; anything
//!   else ends `run` with the error, so that `serve` exits non-zero.
//! * One daemon per file ([`crate::capture::Lease`], keyed on the real file).
//! * Shutdown: `/ready` turns 503 at once, the batches out finish, `run` returns.

pub(crate) mod http;
pub(crate) mod notify;

mod forward;
mod pipeline;
mod reverse;
mod stats;
mod status;

pub(crate) use forward::Mirror;
pub(crate) use reverse::ReverseMirror;
pub use stats::{read_status_file, status_file_path, Stats, StatusFile};
pub use status::{status, status_reverse, Status};

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::capture;
use crate::direction::Direction;
use crate::error::{Error, Result};
use crate::normalise::UnrepresentablePolicy;
use crate::rest::RestClient;
use crate::state_file::StateDir;
use pipeline::Side;
use stats::{write_status, Signals};

/// How `serve` runs. Every option means the same in both directions.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub direction: Direction,
    /// The SQLite file (the source forward, the copy reverse).
    pub db_path: PathBuf,
    /// Where the dead letters (`rejects.ndjson`, `reverse-rejects.ndjson`)
    /// and `coerced.ndjson` are written.
    pub state_dir: StateDir,
    /// Where `/health`, `/ready`, `/metrics` and `/status` are served (`None`: nowhere).
    pub listen: Option<SocketAddr>,
    /// Serve them on an address that is not loopback: anyone who reaches it
    /// reads the pid, the tables' figures and the last error.
    pub listen_public: bool,
    /// Changes claimed per batch.
    pub batch_rows: usize,
    /// Rows per request to Supabase (upserts forward, reads reverse; a read
    /// is cut further to keep its URL short).
    pub request_rows: usize,
    /// Requests to Supabase in flight, over all the batches out.
    pub concurrency: usize,
    /// How often to look for new commits when the log is empty.
    pub poll: Duration,
    /// `/ready` fails when the oldest pending change is older than this, or
    /// when the daemon made no progress for this long while changes wait.
    pub max_lag: Duration,
    /// How long one request is retried before its batch fails.
    pub max_wait: Duration,
    /// The first wait after a failure (it doubles while failures go on, up to 30 s).
    pub pause: Duration,
    /// How often capture (the triggers) is checked; forward also whenever the
    /// file's schema changes.
    pub check_every: Duration,
    /// Re-install missing triggers and re-send their tables (else stop with an error).
    pub repair_triggers: bool,
    /// Forward: reject (the default) or coerce values Supabase cannot hold.
    pub unrepresentable: UnrepresentablePolicy,
}

impl ServeOptions {
    /// The defaults of `direction`: the only place they are written.
    pub fn new(direction: Direction, db_path: PathBuf, state_dir: StateDir) -> ServeOptions {
        let forward = direction == Direction::Forward;
        ServeOptions {
            direction,
            db_path,
            state_dir,
            listen: None,
            listen_public: false,
            // Forward, four batches are out while a backlog drains (the
            // pipeline): 4 x 2000 changes keep the peak RSS under 100 MB
            // (BENCHMARKS.md). Reverse, one batch at a time.
            batch_rows: if forward { 2000 } else { 4000 },
            request_rows: if forward { 500 } else { 100 },
            concurrency: 4,
            // Forward, each batch costs the app's commits (BENCHMARKS.md,
            // "Where the writer's p99 goes"): at 1,000 commits/s, batches every
            // 50 ms raised its p99 by half, every 250 ms not measurably.
            // Reverse, a look at the log is one request to Supabase.
            poll: Duration::from_millis(if forward { 250 } else { 50 }),
            max_lag: Duration::from_secs(60),
            max_wait: Duration::from_secs(20),
            pause: Duration::from_secs(1),
            check_every: Duration::from_secs(60),
            repair_triggers: true,
            unrepresentable: UnrepresentablePolicy::Reject,
        }
    }

    /// `direction`'s defaults under the configured `[serve]` settings (and,
    /// forward, `dual.unrepresentable`): what `serve` runs with before its flags.
    pub fn configured(
        direction: Direction,
        db_path: PathBuf,
        state_dir: StateDir,
        settings: &crate::config::Settings,
    ) -> ServeOptions {
        let c = &settings.serve;
        let mut o = ServeOptions::new(direction, db_path, state_dir);
        o.listen = c.listen;
        o.listen_public = c.listen_public;
        o.batch_rows = c.batch_rows.unwrap_or(o.batch_rows);
        o.request_rows = c.request_rows.unwrap_or(o.request_rows);
        o.concurrency = c.concurrency.unwrap_or(o.concurrency);
        o.max_lag = c.max_lag.unwrap_or(o.max_lag);
        o.poll = c.poll.unwrap_or(o.poll);
        o.max_wait = c.max_wait.unwrap_or(o.max_wait);
        o.check_every = c
            .check_every
            .map_or(o.check_every, |d| d.max(Duration::from_millis(100)));
        o.repair_triggers = c.repair_triggers;
        if direction == Direction::Forward {
            o.unrepresentable = settings.unrepresentable;
        }
        o
    }

    /// The options each direction runs with, flags aside, as `dualwrite config`
    /// shows them.
    pub fn configured_json(settings: &crate::config::Settings) -> serde_json::Value {
        let one = |d: Direction| {
            let o =
                ServeOptions::configured(d, settings.db_path.clone(), StateDir::new(""), settings);
            serde_json::json!({
                "listen": o.listen.map_or_else(|| "none".to_owned(), |a| a.to_string()),
                "listen_public": o.listen_public,
                "batch_rows": o.batch_rows,
                "request_rows": o.request_rows,
                "concurrency": o.concurrency,
                "max_lag_secs": o.max_lag.as_secs_f64(),
                "poll_ms": o.poll.as_millis() as u64,
                "max_wait_secs": o.max_wait.as_secs_f64(),
                "check_secs": o.check_every.as_secs_f64(),
                "repair_triggers": o.repair_triggers,
            })
        };
        serde_json::json!({
            "state_dir": settings.serve.state_dir,
            "forward": one(Direction::Forward),
            "reverse": one(Direction::Reverse),
        })
    }

    /// Refuse a listen address that is not loopback unless asked for.
    fn check_listen(&self) -> Result<()> {
        match self.listen {
            Some(a) if !a.ip().is_loopback() && !self.listen_public => Err(Error::invalid(format!(
                "--listen {a} is not a loopback address: /status and /metrics would tell anyone who \
                 reaches it the process id, the tables' figures and the last error. Listen on \
                 127.0.0.1 (a healthcheck in the same container or host needs nothing more), or pass \
                 --listen-public to serve them there"
            ))),
            _ => Ok(()),
        }
    }
}

async fn take_lease(db: &Path) -> Result<capture::Lease> {
    let db = db.to_path_buf();
    crate::sync::blocking("capture", move || capture::Lease::take(&db)).await
}

/// Run the daemon until `shutdown` completes (then finish the batches out),
/// or until an error it cannot recover from (returned). Refuses to start
/// while another daemon holds the file's lease.
pub async fn run(
    rest: RestClient,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    opts.check_listen()?;
    let lease = take_lease(&opts.db_path).await?;
    run_with_lease(rest, opts, lease, notify::Notifier::from_env(), shutdown).await
}

/// How long the background drainer waits before it tries the lease again.
const BACKGROUND_RETRY: Duration = Duration::from_secs(10);

/// The background drainer of an embedding process (`dual.drain =
/// "background"`): the forward daemon's loop under the same lease, so it
/// never runs alongside a `serve` (or another process's drainer) on the same
/// file. While another holds the lease it waits and tries again every few
/// seconds; it stops (after the batches out) when `stop` turns true or its
/// sender is dropped. A failure is logged and the drainer starts again
/// later: the changes wait in the log meanwhile.
pub(crate) async fn drain_in_background(
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
    let stats = Arc::new(Stats::new(opts.direction, opts.max_lag));
    let (stop_tx, stop) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        // When `shutdown` completes, `/ready` turns 503 at once (so a load
        // balancer stops sending first) and the loop stops after the batches out.
        let (stats, stop_tx) = (Arc::clone(&stats), Arc::clone(&stop_tx));
        tokio::spawn(async move {
            shutdown.await;
            stats.stopping();
            let _ = stop_tx.send(true);
        });
    }
    let result = match opts.direction {
        Direction::Forward => {
            let side = forward::Forward::open(rest, &opts, Arc::clone(&stats)).await?;
            serve_side(side, &opts, &stats, &notifier, stop, &stop_tx, &lease.path).await
        }
        Direction::Reverse => {
            let side = reverse::Reverse::open(rest, &opts, Arc::clone(&stats)).await?;
            serve_side(side, &opts, &stats, &notifier, stop, &stop_tx, &lease.path).await
        }
    };
    drop(lease);
    result
}

async fn serve_side<S: Side>(
    mut side: S,
    opts: &ServeOptions,
    stats: &Arc<Stats>,
    notifier: &notify::Notifier,
    stop: watch::Receiver<bool>,
    stop_tx: &watch::Sender<bool>,
    lease: &Path,
) -> Result<()> {
    let signals = Signals {
        stats: Arc::clone(stats),
        backlog: side.backlog_reader(),
    };
    let status_path = status_file_path(&opts.db_path);
    let server = match opts.listen {
        Some(addr) => Some(http::spawn(addr, signals.clone(), stop.clone())?),
        None => None,
    };
    let reporter = tokio::spawn(report(signals.clone(), status_path.clone(), stop.clone()));
    tracing::info!(
        direction = opts.direction.as_str(),
        db = %opts.db_path.display(),
        listen = %opts.listen.map_or_else(|| "none".to_owned(), |a| a.to_string()),
        lease = %lease.display(),
        "serving"
    );
    notifier.notify("READY=1");
    let result = pipeline::drain(&mut side, opts, stats, notifier, stop).await;
    notifier.notify("STOPPING=1");
    // The endpoint and the reporter stop with the loop, whatever ended it: a
    // daemon that no longer drains does not go on answering.
    stats.stopping();
    let _ = stop_tx.send(true);
    if let Some(s) = server {
        let _ = s.await;
    }
    let _ = reporter.await;
    let mut last = signals.snapshot().await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "the daemon stops: it cannot go on without help (run it again once the cause is fixed)");
        last.exited = Some(e.to_string());
        last.ready = false;
    }
    write_status(&status_path, &last);
    side.close().await;
    result
}

/// How often a daemon that is not ready says so again.
const NOT_READY_REPEAT: Duration = Duration::from_secs(30);

/// Every second: the status file, from the truth; and a WARN when the daemon
/// turns not ready (again every half minute while it stays so), an INFO when
/// it is ready again. Apart from the drain loop, so that a stuck loop is told.
async fn report(signals: Signals, path: PathBuf, mut stop: watch::Receiver<bool>) {
    let mut warned: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let h = signals.health().await;
        write_status(&path, &stats::snapshot(&signals.stats, &h));
        if h.ready {
            if warned.take().is_some() {
                tracing::info!(direction = signals.stats.direction.as_str(), "ready again");
            }
        } else if warned.is_none_or(|w| w.elapsed() >= NOT_READY_REPEAT) {
            tracing::warn!(
                direction = signals.stats.direction.as_str(),
                pending = h.backlog.pending,
                lag_seconds = h.lag,
                "not ready: {}",
                h.why.join("; ")
            );
            warned = Some(std::time::Instant::now());
        }
    }
}

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

mod follow;
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
use follow::{Decision, Hold, Rule};
use pipeline::Side;
use stats::{write_status, Current, Signals};

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

async fn try_take_lease(db: &Path) -> Result<Option<capture::Lease>> {
    let db = db.to_path_buf();
    crate::sync::blocking("capture", move || capture::Lease::try_take(&db)).await
}

async fn take_lease(db: &Path) -> Result<capture::Lease> {
    let db = db.to_path_buf();
    crate::sync::blocking("capture", move || capture::Lease::take(&db)).await
}

/// Run the daemon in `opts.direction` (`--direction` given) until `shutdown`
/// completes (then finish the batches out), or until an error it cannot
/// recover from (returned). While the file's recorded primary contradicts
/// the direction it does not drain, and during another process's cutover it
/// stands down ([`follow`]). Refuses to start while another daemon holds the
/// file's lease. `rest` is the plain client: forward, the daemon marks its
/// writes as the file's copies itself ([`RestClient::mirroring_sqlite`]).
pub async fn run(
    rest: RestClient,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    opts.check_listen()?;
    let plan = Plan::fixed(opts);
    supervise(rest, plan, None, notify::Notifier::from_env(), shutdown).await
}

/// Run the daemon in the direction the file's recorded primary says (with
/// `forward`'s or `reverse`'s options), or, while the file records none, in
/// `unrecorded` (the configuration's): `serve` without `--direction`. When
/// the recorded primary changes, the daemon finishes its batches out and
/// drains the other way; during a cutover it stands down ([`follow`]).
pub async fn run_following(
    rest: RestClient,
    forward: ServeOptions,
    reverse: ServeOptions,
    unrecorded: Direction,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if forward.direction != Direction::Forward
        || reverse.direction != Direction::Reverse
        || forward.db_path != reverse.db_path
    {
        return Err(Error::invalid(
            "run_following needs the forward and the reverse options of one file",
        ));
    }
    forward.check_listen()?;
    let plan = Plan {
        rule: Rule {
            fixed: None,
            unrecorded,
        },
        base: forward,
        other: Some(reverse),
        background: false,
    };
    supervise(rest, plan, None, notify::Notifier::from_env(), shutdown).await
}

/// How long the background drainer waits before it tries the lease again.
const BACKGROUND_RETRY: Duration = Duration::from_secs(10);

/// The background drainer of an embedding process (`dual.drain =
/// "background"`): the forward daemon's loop under the same lease, so it
/// never runs alongside a `serve` (or another process's drainer) on the same
/// file, and stands down like it during a cutover. While another holds the
/// lease it waits and tries again every few seconds; it stops (after the
/// batches out) when `stop` turns true or its sender is dropped. A failure
/// is logged and the drainer starts again later: the changes wait in the log
/// meanwhile.
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
                let mut plan = Plan::fixed(opts.clone());
                plan.background = true;
                match supervise(rest.clone(), plan, Some(lease), quiet, shutdown).await {
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

/// What the daemon may run: the options of the directions it may drain in
/// (one when `--direction` is given), and the rule that picks one.
struct Plan {
    rule: Rule,
    /// The options of one direction, and what every direction shares (the
    /// file, the endpoint).
    base: ServeOptions,
    /// The other direction's, when it follows the recorded primary.
    other: Option<ServeOptions>,
    /// A background drainer: when another process took the lease while it
    /// stood down, it ends (its caller tries again later, quietly) instead
    /// of waiting and reporting.
    background: bool,
}

impl Plan {
    fn fixed(opts: ServeOptions) -> Plan {
        let d = opts.direction;
        Plan {
            rule: Rule {
                fixed: Some(d),
                unrecorded: d,
            },
            base: opts,
            other: None,
            background: false,
        }
    }

    /// `d`'s options (given a direction, the rule drains only that one).
    fn of(&self, d: Direction) -> &ServeOptions {
        match &self.other {
            Some(o) if o.direction == d => o,
            _ => &self.base,
        }
    }
}

/// The daemon: decides from the recorded primary what to do (drain one way,
/// or stand down), does it until the marker or `shutdown` says otherwise,
/// and again. The endpoint, the reporter and the status file outlive each
/// direction drained. The lease is held while the daemon drains, and let go
/// while it stands down (a cutover takes it).
async fn supervise(
    rest: RestClient,
    plan: Plan,
    mut lease: Option<capture::Lease>,
    notifier: notify::Notifier,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let base = plan.base.clone();
    let db = base.db_path.clone();
    let marker = follow::MarkerReader::open(&db).await?;
    let me = std::process::id();
    let (stop_tx, mut stop) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    // Until the first decision: not ready, "starting".
    let current = Current::new(held_signals(
        &rest,
        &db,
        plan.rule.fixed.unwrap_or(plan.rule.unrecorded),
        base.max_lag,
        ("starting", "starting".to_owned()),
        None,
    ));
    {
        // When `shutdown` completes, `/ready` turns 503 at once (so a load
        // balancer stops sending first) and the loop stops after the batches out.
        let (current, stop_tx) = (current.clone(), Arc::clone(&stop_tx));
        tokio::spawn(async move {
            shutdown.await;
            current.stop();
            let _ = stop_tx.send(true);
        });
    }
    let status_path = status_file_path(&db);
    let server = match base.listen {
        Some(addr) => Some(http::spawn(addr, current.clone(), stop.clone())?),
        None => None,
    };
    let reporter = tokio::spawn(report(current.clone(), status_path.clone(), stop.clone()));
    let mut liveness = follow::Liveness::default();
    // The hold in force, and when it was last logged.
    let mut held: Option<(Hold, std::time::Instant)> = None;
    let mut stood_down = false;
    let mut told_ready = false;
    let result = loop {
        notifier.watchdog();
        if *stop.borrow() {
            break Ok(());
        }
        let recorded = match marker.read().await {
            Ok(m) => m,
            Err(e) if pipeline::recoverable(&e) => {
                current.get().stats.failed(&e);
                pipeline::sleep(base.poll, &mut stop).await;
                continue;
            }
            Err(e) => break Err(e),
        };
        let abandoned = liveness.abandoned(recorded.as_ref(), &db, lease.is_some());
        let hold = match plan.rule.decide(recorded.as_ref(), me, abandoned) {
            Decision::Drain(d) if lease.is_some() => Ok(d),
            Decision::Drain(d) => match try_take_lease(&db).await {
                Ok(Some(l)) => {
                    if stood_down {
                        tracing::info!(lease = %l.path.display(), "took the file's lease back");
                    }
                    lease = Some(l);
                    Ok(d)
                }
                // At start, a lease held is another daemon.
                Ok(None) if !stood_down => match take_lease(&db).await {
                    Ok(l) => {
                        lease = Some(l);
                        Ok(d)
                    }
                    Err(e) => break Err(e),
                },
                Ok(None) if plan.background => break Ok(()),
                Ok(None) => Err(Hold {
                    why: "waiting for the file's lease, which another process holds (a `cutover run` \
                          finishing, or another daemon)"
                        .to_owned(),
                    backlog: d,
                    loud: false,
                }),
                Err(e) => break Err(e),
            },
            Decision::StandDown(h) => Err(h),
        };
        match hold {
            Ok(d) => {
                held = None;
                let opts = plan.of(d);
                let stats = Arc::new(Stats::new(d, opts.max_lag));
                stats.recorded(recorded);
                let unit = Unit {
                    opts,
                    stats: &stats,
                    current: &current,
                    marker: &marker,
                    rule: plan.rule,
                    notifier: &notifier,
                    stop: &stop,
                    lease: lease.as_ref().map(|l| l.path.as_path()),
                    told_ready: &mut told_ready,
                };
                let r = match d {
                    Direction::Forward => {
                        let rest = rest.clone().mirroring_sqlite();
                        match forward::Forward::open(rest, opts, Arc::clone(&stats)).await {
                            Ok(side) => unit.run(side).await,
                            Err(e) => Err(e),
                        }
                    }
                    Direction::Reverse => {
                        match reverse::Reverse::open(rest.clone(), opts, Arc::clone(&stats)).await {
                            Ok(side) => unit.run(side).await,
                            Err(e) => Err(e),
                        }
                    }
                };
                if let Err(e) = r {
                    break Err(e);
                }
            }
            Err(h) => {
                stood_down = true;
                if let Some(l) = lease.take() {
                    tracing::info!(lease = %l.path.display(), "let the file's lease go");
                }
                // Said once (an interrupted cutover again every half minute).
                let changed = held.as_ref().is_none_or(|(was, _)| *was != h);
                let repeat = !changed
                    && h.loud
                    && held
                        .as_ref()
                        .is_some_and(|(_, at)| at.elapsed() >= NOT_READY_REPEAT);
                if changed {
                    current.set(held_signals(
                        &rest,
                        &db,
                        h.backlog,
                        base.max_lag,
                        ("standing down", h.why.clone()),
                        recorded,
                    ));
                } else {
                    current.get().stats.recorded(recorded);
                }
                if changed || repeat {
                    if h.loud {
                        tracing::error!(direction = h.backlog.as_str(), "standing down: {}", h.why);
                    } else {
                        tracing::warn!(direction = h.backlog.as_str(), "standing down: {}", h.why);
                    }
                    held = Some((h, std::time::Instant::now()));
                }
                if !told_ready {
                    notifier.notify("READY=1");
                    told_ready = true;
                }
                pipeline::sleep(base.poll, &mut stop).await;
            }
        }
    };
    notifier.notify("STOPPING=1");
    // The endpoint and the reporter stop with the daemon, whatever ended it:
    // a daemon that no longer drains does not go on answering.
    current.stop();
    let _ = stop_tx.send(true);
    if let Some(s) = server {
        let _ = s.await;
    }
    let _ = reporter.await;
    let mut last = current.get().snapshot().await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "the daemon stops: it cannot go on without help (run it again once the cause is fixed)");
        last.exited = Some(e.to_string());
        last.ready = false;
    }
    write_status(&status_path, &last);
    // The file's connections close before the lease goes (see `Side::close`).
    drop(current);
    drop(marker);
    drop(lease);
    result
}

/// The signals while the daemon stands down (or starts): not ready for
/// `why`, the backlog read from `backlog`'s change log.
fn held_signals(
    rest: &RestClient,
    db: &Path,
    backlog: Direction,
    max_lag: Duration,
    (step, why): (&'static str, String),
    recorded: Option<crate::cutover::Marker>,
) -> Signals {
    let stats = Arc::new(Stats::new(backlog, max_lag));
    stats.hold(why);
    stats.step(step);
    stats.recorded(recorded);
    let backlog = match backlog {
        Direction::Forward => forward::backlog_reader(db.to_path_buf()),
        Direction::Reverse => reverse::backlog_reader(rest.clone()),
    };
    Signals { stats, backlog }
}

/// One direction drained, until the marker says otherwise or the daemon stops.
struct Unit<'a> {
    opts: &'a ServeOptions,
    stats: &'a Arc<Stats>,
    current: &'a Current,
    marker: &'a follow::MarkerReader,
    rule: Rule,
    notifier: &'a notify::Notifier,
    stop: &'a watch::Receiver<bool>,
    lease: Option<&'a Path>,
    told_ready: &'a mut bool,
}

impl Unit<'_> {
    async fn run<S: Side>(self, mut side: S) -> Result<()> {
        let d = self.opts.direction;
        self.current.set(Signals {
            stats: Arc::clone(self.stats),
            backlog: side.backlog_reader(),
        });
        tracing::info!(
            direction = d.as_str(),
            db = %self.opts.db_path.display(),
            listen = %self.opts.listen.map_or_else(|| "none".to_owned(), |a| a.to_string()),
            lease = %self.lease.map_or_else(String::new, |p| p.display().to_string()),
            "serving"
        );
        if !*self.told_ready {
            self.notifier.notify("READY=1");
            *self.told_ready = true;
        }
        // The drain loop stops (after its batches out) when the daemon does,
        // or when the recorded primary no longer says to drain this way.
        let (unit_tx, unit_stop) = watch::channel(false);
        let watcher = tokio::spawn(watch_marker(
            self.marker.clone(),
            self.rule,
            d,
            self.opts.poll,
            Arc::clone(self.stats),
            self.stop.clone(),
            unit_tx,
        ));
        let result =
            pipeline::drain(&mut side, self.opts, self.stats, self.notifier, unit_stop).await;
        watcher.abort();
        side.close().await;
        result
    }
}

/// Every `poll`, the recorded primary (a `PRAGMA data_version` unless
/// another connection committed): `unit` turns true when it no longer says
/// to drain `d`, or when the daemon stops.
async fn watch_marker(
    marker: follow::MarkerReader,
    rule: Rule,
    d: Direction,
    poll: Duration,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
    unit: watch::Sender<bool>,
) {
    let me = std::process::id();
    loop {
        pipeline::sleep(poll, &mut stop).await;
        if *stop.borrow() {
            let _ = unit.send(true);
            return;
        }
        match marker.read().await {
            Ok(m) => {
                let now = rule.decide(m.as_ref(), me, false);
                stats.recorded(m);
                if now != Decision::Drain(d) {
                    tracing::info!(
                        direction = d.as_str(),
                        "the recorded primary changed, or a cutover began: finishing the batches out"
                    );
                    let _ = unit.send(true);
                    return;
                }
            }
            Err(e) if pipeline::recoverable(&e) => stats.failed(&e),
            // The daemon reads it again, and ends on it.
            Err(_) => {
                let _ = unit.send(true);
                return;
            }
        }
    }
}

/// How often a daemon that is not ready says so again.
const NOT_READY_REPEAT: Duration = Duration::from_secs(30);

/// Every second: the status file, from the truth; and a WARN when the daemon
/// turns not ready (again every half minute while it stays so), an INFO when
/// it is ready again. Apart from the drain loop, so that a stuck loop is told.
/// (A daemon standing down has said why once, when it began.)
async fn report(current: Current, path: PathBuf, mut stop: watch::Receiver<bool>) {
    let mut warned: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let signals = current.get();
        let h = signals.health().await;
        write_status(&path, &stats::snapshot(&signals.stats, &h));
        if h.ready {
            if warned.take().is_some() {
                tracing::info!(direction = signals.stats.direction.as_str(), "ready again");
            }
        } else if h.held {
            warned = None;
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

//! What the daemon knows of itself (counters, the failure in force, the last
//! progress, the step it is on) and the signals computed from that and from
//! the change log itself, when they are asked for: `/ready`, `/metrics`,
//! `/status`, the status file, `dualwrite status`.
//!
//! `pending` and `lag_seconds` are never a figure kept from the last batch:
//! every read asks the log ([`Signals::backlog`]), through a connection (or a
//! request) of its own, so they tell the truth while the drain loop is stuck.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::capture;
use crate::cutover::Marker;
use crate::direction::Direction;
use crate::error::{Error, Result};

/// The change log's backlog, read from the log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Backlog {
    /// Changes (keys) not yet mirrored.
    pub pending: u64,
    /// `pending` is an estimate (a large Supabase log is not counted).
    pub estimated: bool,
    /// When the oldest pending change was made (seconds since the epoch).
    pub oldest_at: Option<f64>,
}

impl Backlog {
    /// The age of the oldest pending change at `now` (0 when none).
    pub(crate) fn lag(&self, now: f64) -> f64 {
        self.oldest_at.map_or(0.0, |at| (now - at).max(0.0))
    }
}

/// Reads the backlog from the log, apart from the drain loop.
pub(crate) type BacklogReader = Arc<dyn Fn() -> BoxFuture<'static, Result<Backlog>> + Send + Sync>;

/// The failure in force: set by a failed attempt, cleared by a success.
#[derive(Debug, Clone)]
struct Failing {
    kind: &'static str,
    message: String,
    since: Instant,
}

/// The last progress of the drain loop, and the step it is on.
#[derive(Debug, Clone, Copy)]
struct Progress {
    at: Instant,
    step: &'static str,
}

/// How often a failure that keeps coming back is logged again.
const REPEAT_LOG: Duration = Duration::from_secs(30);

/// Repeated identical failures: one line, then a summary now and then.
#[derive(Debug, Default)]
struct Quiet {
    last: Option<(String, Instant)>,
    suppressed: u64,
}

/// The daemon's figures, shared by the drain loop and every reader.
#[derive(Debug)]
pub struct Stats {
    pub direction: Direction,
    /// `/ready` fails past this lag, or this long without progress while
    /// changes wait.
    pub max_lag: Duration,
    mirrored: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<BTreeMap<String, u64>>,
    rejected: Mutex<BTreeMap<String, u64>>,
    failing: Mutex<Option<Failing>>,
    last_error: Mutex<Option<String>>,
    last_success: Mutex<Option<f64>>,
    progress: Mutex<Progress>,
    /// Shutting down: not ready.
    stopping: AtomicBool,
    /// Why capture is not in place, when it is not.
    capture_problem: Mutex<Option<String>>,
    /// Why the daemon stands down (does not drain), when it does.
    held: Mutex<Option<String>>,
    /// The file's recorded primary as last read (`None`: none recorded).
    recorded: Mutex<Option<Marker>>,
    /// The last backlog read, for a reader that cannot read it now.
    backlog: Mutex<Option<(Instant, Backlog)>>,
    quiet: Mutex<Quiet>,
}

/// Add `n` to the counter `k` of a labelled family.
fn add(m: &Mutex<BTreeMap<String, u64>>, k: &str, n: u64) {
    if n > 0 {
        *crate::sync::lock(m).entry(k.to_owned()).or_default() += n;
    }
}

/// What one batch did, by table.
#[derive(Debug, Default)]
pub(crate) struct Landed {
    pub mirrored: Vec<(&'static str, u64)>,
    /// By the table named in the change log (a corrupt entry's may be any).
    pub rejected: Vec<(String, u64)>,
}

impl Stats {
    pub fn new(direction: Direction, max_lag: Duration) -> Stats {
        Stats {
            direction,
            max_lag,
            mirrored: Mutex::default(),
            failures: Mutex::default(),
            rejected: Mutex::default(),
            failing: Mutex::default(),
            last_error: Mutex::default(),
            last_success: Mutex::default(),
            progress: Mutex::new(Progress {
                at: Instant::now(),
                step: "starting",
            }),
            stopping: AtomicBool::new(false),
            capture_problem: Mutex::default(),
            held: Mutex::default(),
            recorded: Mutex::default(),
            backlog: Mutex::default(),
            quiet: Mutex::default(),
        }
    }

    /// What the drain loop is doing now (for a report of no progress).
    pub(crate) fn step(&self, step: &'static str) {
        crate::sync::lock(&self.progress).step = step;
    }

    /// The loop made progress: a batch landed, or it found nothing to do.
    pub(crate) fn progressed(&self) {
        crate::sync::lock(&self.progress).at = Instant::now();
    }

    pub(crate) fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub(crate) fn capture_problem(&self, problem: Option<String>) {
        *crate::sync::lock(&self.capture_problem) = problem;
    }

    /// The daemon stands down (a cutover in progress, a recorded primary
    /// that contradicts `--direction`): not ready, for this reason.
    pub(crate) fn hold(&self, why: String) {
        *crate::sync::lock(&self.held) = Some(why);
    }

    /// The file's recorded primary, as the daemon last read it.
    pub(crate) fn recorded(&self, m: Option<Marker>) {
        *crate::sync::lock(&self.recorded) = m;
    }

    /// An attempt failed (a request, a statement, a batch): counted by kind,
    /// kept as the failure in force until something succeeds, and logged as
    /// a WARN (the same failure again only every half minute, with how many
    /// were not logged).
    pub(crate) fn failed(&self, e: &Error) {
        let kind = failure_kind(e);
        add(&self.failures, kind, 1);
        let message = e.to_string();
        *crate::sync::lock(&self.last_error) = Some(message.clone());
        {
            let mut f = crate::sync::lock(&self.failing);
            match &mut *f {
                Some(now) if now.kind == kind => now.message.clone_from(&message),
                _ => {
                    *f = Some(Failing {
                        kind,
                        message: message.clone(),
                        since: Instant::now(),
                    })
                }
            }
        }
        let mut q = crate::sync::lock(&self.quiet);
        let again = q
            .last
            .as_ref()
            .is_some_and(|(m, at)| *m == message && at.elapsed() < REPEAT_LOG);
        if again {
            q.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut q.suppressed);
        q.last = Some((message.clone(), Instant::now()));
        drop(q);
        tracing::warn!(
            direction = self.direction.as_str(),
            kind,
            error = %message,
            suppressed,
            "{} failed; the changes stay in the log and are tried again",
            failing_side(kind, self.direction)
        );
    }

    /// A request (to Supabase) retried for up to `max_wait`, every failed
    /// attempt counted here as it happens.
    pub(crate) async fn retried<T, F, Fut>(&self, max_wait: Duration, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let observe = |e: &Error| self.failed(e);
        crate::retry::retry_observed(
            crate::retry::RetryPolicy::for_up_to(max_wait),
            Error::is_transient,
            &observe,
            op,
        )
        .await
    }

    /// Something succeeded against the side that was failing (a batch
    /// landed, a probe answered): the failure is no longer in force.
    pub(crate) fn succeeded(&self) {
        if let Some(f) = crate::sync::lock(&self.failing).take() {
            tracing::info!(
                direction = self.direction.as_str(),
                after_secs = f.since.elapsed().as_secs(),
                "{} answers again",
                failing_side(f.kind, self.direction)
            );
            crate::sync::lock(&self.quiet).last = None;
        }
    }

    /// Supabase answered (a probe): a failure on its side is no longer in
    /// force (one of the SQLite file is, until a batch lands).
    pub(crate) fn supabase_answered(&self) {
        let on_supabase = crate::sync::lock(&self.failing)
            .as_ref()
            .is_some_and(|f| !matches!(f.kind, "busy" | "sqlite" | "io"));
        if on_supabase {
            self.succeeded();
        }
    }

    /// A batch landed: its figures, and progress.
    pub(crate) fn landed(&self, l: &Landed) {
        for (t, n) in &l.mirrored {
            add(&self.mirrored, t, *n);
        }
        for (t, n) in &l.rejected {
            add(&self.rejected, t, *n);
        }
        *crate::sync::lock(&self.last_success) = Some(capture::now_secs());
        self.succeeded();
        self.progressed();
    }

    fn remember(&self, b: Backlog) {
        *crate::sync::lock(&self.backlog) = Some((Instant::now(), b));
    }

    /// Ready, or the reasons why not, given the backlog read now.
    fn health(&self, read: &std::result::Result<Backlog, String>) -> Health {
        let now = capture::now_secs();
        let mut why = Vec::new();
        if self.stopping.load(Ordering::Relaxed) {
            why.push("shutting down".to_owned());
        }
        let held = crate::sync::lock(&self.held).clone();
        if let Some(h) = &held {
            why.push(h.clone());
        }
        if let Some(p) = crate::sync::lock(&self.capture_problem).clone() {
            why.push(p);
        }
        if let Some(f) = crate::sync::lock(&self.failing).clone() {
            why.push(format!(
                "{} is failing ({}, for {}s): {}",
                failing_side(f.kind, self.direction),
                f.kind,
                f.since.elapsed().as_secs(),
                f.message
            ));
        }
        // The backlog as read now; when it cannot be read, the last one read
        // (its oldest change, still pending as far as anybody knows, has aged).
        let backlog = match read {
            Ok(b) => Some(*b),
            Err(e) => {
                why.push(format!("cannot read the change log: {e}"));
                crate::sync::lock(&self.backlog).map(|(_, b)| b)
            }
        };
        let b = backlog.unwrap_or(Backlog {
            pending: 0,
            estimated: true,
            oldest_at: None,
        });
        let lag = b.lag(now);
        let bound = self.max_lag.as_secs_f64();
        if lag > bound {
            why.push(format!("lag {lag:.1}s is over the bound of {bound:.0}s"));
        }
        let progress = *crate::sync::lock(&self.progress);
        let idle = progress.at.elapsed();
        // Standing down, the daemon is not meant to progress: the hold says why.
        if held.is_none() && b.pending > 0 && idle > self.max_lag {
            why.push(format!(
                "no progress for {}s while {}{} changes wait (the daemon is {})",
                idle.as_secs(),
                if b.estimated { "about " } else { "" },
                b.pending,
                progress.step
            ));
        }
        Health {
            ready: why.is_empty(),
            held: held.is_some(),
            why,
            backlog: b,
            backlog_known: read.is_ok(),
            lag,
            idle,
            step: progress.step,
        }
    }

    fn counters(
        &self,
    ) -> (
        BTreeMap<String, u64>,
        BTreeMap<String, u64>,
        BTreeMap<String, u64>,
    ) {
        (
            crate::sync::lock(&self.mirrored).clone(),
            crate::sync::lock(&self.failures).clone(),
            crate::sync::lock(&self.rejected).clone(),
        )
    }
}

/// Which side a failure of this kind is on.
fn failing_side(kind: &str, direction: Direction) -> &'static str {
    match (kind, direction) {
        ("busy" | "sqlite" | "io", _) => "the SQLite file",
        (_, Direction::Forward) => "Supabase",
        (_, Direction::Reverse) => "Supabase (the primary)",
    }
}

/// Ready or not, and the figures it was decided on.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    pub ready: bool,
    /// The daemon stands down (the first of `why` says why).
    pub held: bool,
    pub why: Vec<String>,
    pub backlog: Backlog,
    /// The backlog was read now (else it is the last one read).
    pub backlog_known: bool,
    pub lag: f64,
    /// Since the last progress of the drain loop.
    pub idle: Duration,
    pub step: &'static str,
}

/// The figures and the backlog reader, for every reader of the signals.
#[derive(Clone)]
pub(crate) struct Signals {
    pub stats: Arc<Stats>,
    pub backlog: BacklogReader,
}

/// The signals of what the daemon does now (one direction drained, or
/// standing down), for the endpoint and the reporter, which outlive each.
#[derive(Clone)]
pub(crate) struct Current(Arc<(Mutex<Signals>, AtomicBool)>);

impl Current {
    pub(crate) fn new(s: Signals) -> Current {
        Current(Arc::new((Mutex::new(s), AtomicBool::new(false))))
    }

    pub(crate) fn get(&self) -> Signals {
        crate::sync::lock(&self.0 .0).clone()
    }

    pub(crate) fn set(&self, s: Signals) {
        if self.0 .1.load(Ordering::SeqCst) {
            s.stats.stopping();
        }
        *crate::sync::lock(&self.0 .0) = s;
    }

    /// Shutting down: not ready, whatever signals come next.
    pub(crate) fn stop(&self) {
        self.0 .1.store(true, Ordering::SeqCst);
        self.get().stats.stopping();
    }
}

/// A backlog read within this long is used again rather than read anew (a
/// scrape, `/ready` and the status file at the same moment read it once).
const FRESH: Duration = Duration::from_millis(200);

/// How long a read of the backlog may take before it counts as failed.
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(3);

impl Signals {
    /// The backlog, read from the log now (or within [`FRESH`]).
    pub(crate) async fn backlog(&self) -> std::result::Result<Backlog, String> {
        if let Some((at, b)) = *crate::sync::lock(&self.stats.backlog) {
            if at.elapsed() < FRESH {
                return Ok(b);
            }
        }
        match tokio::time::timeout(BACKLOG_TIMEOUT, (self.backlog)()).await {
            Ok(Ok(b)) => {
                self.stats.remember(b);
                Ok(b)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {BACKLOG_TIMEOUT:?}")),
        }
    }

    pub(crate) async fn health(&self) -> Health {
        let read = self.backlog().await;
        self.stats.health(&read)
    }

    /// The report served on `/status` and written to the status file.
    pub(crate) async fn snapshot(&self) -> StatusFile {
        let h = self.health().await;
        snapshot(&self.stats, &h)
    }
}

pub(crate) fn snapshot(stats: &Stats, h: &Health) -> StatusFile {
    let (mirrored_rows, failures, rejected_rows) = stats.counters();
    StatusFile {
        direction: stats.direction.as_str().to_owned(),
        pid: std::process::id(),
        updated_at: capture::now_secs(),
        pending: h.backlog.pending,
        pending_estimated: h.backlog.estimated,
        lag_seconds: h.lag,
        max_lag_seconds: stats.max_lag.as_secs_f64(),
        ready: h.ready,
        not_ready_because: h.why.clone(),
        doing: h.step.to_owned(),
        seconds_since_progress: h.idle.as_secs_f64(),
        last_error: crate::sync::lock(&stats.last_error).clone(),
        last_success: *crate::sync::lock(&stats.last_success),
        mirrored_rows,
        failures,
        rejected_rows,
        recorded_primary: crate::sync::lock(&stats.recorded).clone(),
        exited: None,
    }
}

/// What the daemon reports, as written next to the file
/// (`<db>.dualwrite-serve.json`, mode 0600, every second) and served on
/// `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusFile {
    pub direction: String,
    pub pid: u32,
    /// Seconds since the epoch: a report older than a few seconds comes from
    /// a daemon that is not running (or is paused).
    pub updated_at: f64,
    pub pending: u64,
    #[serde(default)]
    pub pending_estimated: bool,
    pub lag_seconds: f64,
    pub max_lag_seconds: f64,
    pub ready: bool,
    pub not_ready_because: Vec<String>,
    /// The step the drain loop is on.
    pub doing: String,
    pub seconds_since_progress: f64,
    pub last_error: Option<String>,
    /// Seconds since the epoch of the last batch that landed.
    pub last_success: Option<f64>,
    pub mirrored_rows: BTreeMap<String, u64>,
    pub failures: BTreeMap<String, u64>,
    pub rejected_rows: BTreeMap<String, u64>,
    /// The file's recorded primary and any cutover in progress, as the
    /// daemon last read them (`None`: the file records none).
    #[serde(default)]
    pub recorded_primary: Option<Marker>,
    /// Set in the last report of a daemon that ended on an error: the error.
    pub exited: Option<String>,
}

/// The daemon's last report on `db`, if there is a readable one.
pub fn read_status_file(db: &Path) -> Option<StatusFile> {
    std::fs::read(status_file_path(db))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// `<db>.dualwrite-serve.json` beside the real file (`capture::real_path`).
pub fn status_file_path(db: &Path) -> PathBuf {
    let mut p = capture::real_path(db).into_os_string();
    p.push(".dualwrite-serve.json");
    PathBuf::from(p)
}

/// Write the report atomically, owner-only (it names the file, the tables
/// and the last error). A failure is logged once in a while, never fatal:
/// the daemon's signals are also on its HTTP endpoint.
pub(crate) fn write_status(path: &Path, s: &StatusFile) {
    let body = serde_json::to_vec_pretty(s).expect("status serialises");
    if let Err(e) = crate::state_file::overwrite(path, &body) {
        tracing::debug!(error = %e, path = %path.display(), "cannot write the status file");
    }
}

/// A failure's kind, for `dualwrite_mirror_failures_total{kind}`.
pub(super) fn failure_kind(e: &Error) -> &'static str {
    match e.cause() {
        Error::Unreachable { .. } => "unreachable",
        Error::Timeout(_) => "timeout",
        Error::Rest {
            status: 401 | 403, ..
        } => "auth",
        Error::Rest { status, .. } if *status >= 500 => "server",
        Error::Rest { status: 429, .. } => "throttled",
        Error::Rest { .. } => "refused",
        Error::Protocol(_) => "protocol",
        Error::Busy(_) => "busy",
        Error::Sqlite(_) | Error::WorkerStopped { .. } => "sqlite",
        Error::Io { .. } => "io",
        _ => "other",
    }
}

/// Prometheus text exposition format.
pub(crate) fn render_metrics(stats: &Stats, h: &Health) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let (mirrored, failures, rejected) = stats.counters();
    let gauges: [(&str, &str, f64); 6] = [
        (
            "dualwrite_pending_changes",
            "Captured changes not yet mirrored, read from the change log.",
            h.backlog.pending as f64,
        ),
        (
            "dualwrite_lag_seconds",
            "Age of the oldest pending change, read from the change log (0 when none).",
            h.lag,
        ),
        (
            "dualwrite_ready",
            "1 when /ready answers 200.",
            f64::from(u8::from(h.ready)),
        ),
        (
            "dualwrite_backlog_known",
            "1 when the change log could be read for this scrape (else pending and lag are the last read).",
            f64::from(u8::from(h.backlog_known)),
        ),
        (
            "dualwrite_seconds_since_progress",
            "Since the drain loop last landed a batch or found nothing to do.",
            h.idle.as_secs_f64(),
        ),
        (
            "dualwrite_max_lag_seconds",
            "The bound on the lag (and on time without progress) /ready holds to.",
            stats.max_lag.as_secs_f64(),
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    for (name, help, label_name, map) in [
        (
            "dualwrite_mirrored_rows_total",
            "Rows written or deleted on the target.",
            "table",
            &mirrored,
        ),
        (
            "dualwrite_mirror_failures_total",
            "Failed attempts (requests, statements, batches), by kind; each retry that fails counts.",
            "kind",
            &failures,
        ),
        (
            "dualwrite_rejected_rows_total",
            "Rows written to the rejects file (dead letters).",
            "table",
            &rejected,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (k, v) in map {
            let _ = writeln!(out, "{name}{{{label_name}=\"{}\"}} {v}", label(k));
        }
    }
    out
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backlog(pending: u64, age: f64) -> std::result::Result<Backlog, String> {
        Ok(Backlog {
            pending,
            estimated: false,
            oldest_at: (pending > 0).then(|| capture::now_secs() - age),
        })
    }

    #[test]
    fn metrics_are_prometheus_text_and_ready_says_why() {
        let s = Stats::new(Direction::Forward, Duration::from_secs(60));
        s.landed(&Landed {
            mirrored: vec![("artifact", 3)],
            rejected: vec![],
        });
        s.failed(&Error::Unreachable {
            url: "u".into(),
            reason: "refused".into(),
        });
        let h = s.health(&backlog(7, 1.5));
        let m = render_metrics(&s, &h);
        assert!(m.contains("dualwrite_pending_changes 7\n"), "{m}");
        assert!(m.contains("dualwrite_lag_seconds 1.5"), "{m}");
        assert!(
            m.contains("dualwrite_mirrored_rows_total{table=\"artifact\"} 3\n"),
            "{m}"
        );
        assert!(
            m.contains("dualwrite_mirror_failures_total{kind=\"unreachable\"} 1\n"),
            "{m}"
        );
        assert!(m.contains("# TYPE dualwrite_rejected_rows_total counter"));
        // The failure is in force until something succeeds.
        assert!(
            h.why.join(";").contains("Supabase is failing (unreachable"),
            "{:?}",
            h.why
        );
        s.succeeded();
        assert!(s.health(&backlog(7, 1.5)).ready);
        let why = s.health(&backlog(7, 120.0)).why.join("; ");
        assert!(why.contains("over the bound"), "{why}");
        s.stopping();
        assert!(s.health(&backlog(0, 0.0)).why[0].contains("shutting down"));
    }

    #[test]
    fn no_progress_while_changes_wait_is_not_ready_and_an_unread_log_says_so() {
        let s = Stats::new(Direction::Reverse, Duration::from_millis(50));
        s.step("acknowledging a batch");
        std::thread::sleep(Duration::from_millis(80));
        // Nothing waits: an idle loop is fine.
        assert!(s.health(&backlog(0, 0.0)).ready);
        let h = s.health(&backlog(3, 0.01));
        assert!(!h.ready);
        assert!(
            h.why[0].contains("no progress") && h.why[0].contains("acknowledging a batch"),
            "{:?}",
            h.why
        );
        s.progressed();
        // The log cannot be read: the last backlog read keeps ageing.
        s.remember(Backlog {
            pending: 2,
            estimated: false,
            oldest_at: Some(capture::now_secs() - 10.0),
        });
        let h = s.health(&Err("no answer".into()));
        assert!(
            !h.backlog_known && h.backlog.pending == 2 && h.lag >= 10.0,
            "{h:?}"
        );
        assert!(h
            .why
            .iter()
            .any(|w| w.contains("cannot read the change log")));
    }

    #[test]
    fn a_daemon_standing_down_says_why_first_and_not_that_it_makes_no_progress() {
        let s = Stats::new(Direction::Forward, Duration::from_millis(10));
        s.hold("cutover in progress (pid 7)".into());
        std::thread::sleep(Duration::from_millis(30));
        let h = s.health(&backlog(4, 0.0));
        assert!(!h.ready && h.held, "{h:?}");
        assert_eq!(h.why, vec!["cutover in progress (pid 7)".to_owned()]);
        assert_eq!(h.backlog.pending, 4);
    }

    #[test]
    fn a_busy_file_is_the_sqlite_side_failing() {
        let s = Stats::new(Direction::Forward, Duration::from_secs(60));
        s.failed(&Error::Busy("database is locked".into()));
        let why = s.health(&backlog(1, 0.0)).why.join("; ");
        assert!(why.contains("the SQLite file is failing (busy"), "{why}");
        let timeout = Error::GaveUp {
            after: Duration::from_secs(3),
            last: Box::new(Error::Timeout(Duration::from_secs(2))),
            hint: "h",
        };
        assert_eq!(failure_kind(&timeout), "timeout");
    }
}

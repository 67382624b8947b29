//! The one drain loop, for both directions: check capture, wait for commits,
//! claim a batch, read its rows as they are now, send it (pipelined: up to
//! [`Side::OUTSTANDING`] batches out), acknowledge, and record every outcome
//! in the daemon's [`Stats`]. What differs between the directions is a
//! [`Side`]: where the change log is, how rows are read, written and
//! acknowledged.
//!
//! Recover or die: an error that may pass (a busy SQLite file, a timeout, an
//! unreachable or refusing Supabase: [`recoverable`]) is counted and shown
//! while it lasts, and the loop tries again with a growing pause; any other
//! (the file unreadable, a disk full, capture gone without repair) ends the
//! loop with the error, and `serve` exits non-zero so a supervisor sees it.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::notify::Notifier;
use super::stats::{BacklogReader, Landed, Stats};
use super::ServeOptions;
use crate::error::{Error, Result};

/// A batch claimed and read, ready to send.
pub(super) struct Claimed<B> {
    pub batch: B,
    /// The [`crate::capture::key_hash`]es of its keys: no other batch out
    /// may hold them.
    pub keys: Vec<u64>,
    /// Changes it holds (a batch of `limit` means more may wait).
    pub changes: usize,
}

/// What a cheap look at the source found.
pub(super) struct Poll {
    /// Somebody may have committed a change since the last look.
    pub changed: bool,
    /// The source's schema changed (a table re-created): check capture now.
    pub schema_changed: bool,
}

/// One direction: its change log, the rows it reads, the target it writes.
pub(super) trait Side: Send + 'static {
    type Batch: Send + 'static;

    /// Batches that may be out at once.
    const OUTSTANDING: usize;

    /// Check capture on the source: re-install what is missing (and re-send
    /// the tables it concerns), or fail when that is not allowed.
    fn check_capture(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// A cheap look for new commits.
    fn poll(&mut self) -> impl Future<Output = Result<Poll>> + Send;

    /// Claim the next batch (at most `limit` changes, none of `busy`'s keys)
    /// and read its rows as they are now; `None` when nothing is pending.
    fn next_batch(
        &mut self,
        limit: usize,
        busy: &HashSet<u64>,
    ) -> impl Future<Output = Result<Option<Claimed<Self::Batch>>>> + Send;

    /// Write a batch to the target and acknowledge what landed, in a task of
    /// its own.
    fn send(&self, batch: Self::Batch) -> impl Future<Output = Result<Landed>> + Send + 'static;

    /// Whether Supabase answers (while nothing else would tell).
    fn probe(&self) -> impl Future<Output = Result<()>> + Send + 'static;

    /// Reads the backlog from the log, apart from the loop.
    fn backlog_reader(&self) -> BacklogReader;

    /// Let go of the file's connections (before the lease goes).
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// Whether the loop may go on after `e`: the file busy past its timeout, and
/// whatever Supabase answers or fails to (unreachable, a timeout, a 5xx, a
/// refused key or a missing table, which its operator can fix while the
/// daemon waits). Not: SQLite errors other than busy, I/O (a full disk),
/// bad input or configuration, a stopped worker.
pub(super) fn recoverable(e: &Error) -> bool {
    matches!(
        e.cause(),
        Error::Busy(_)
            | Error::Unreachable { .. }
            | Error::Timeout(_)
            | Error::Rest { .. }
            | Error::Protocol(_)
    )
}

/// A batch being sent, and the key hashes it holds.
type InFlight = (tokio::task::JoinHandle<Result<Landed>>, Vec<u64>);

/// The longest pause between failed attempts.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// The pause after a failure: `pause`, doubling with each failure in a row up
/// to [`MAX_PAUSE`], with jitter; back to `pause` after a success.
struct Backoff {
    base: Duration,
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let d = self
            .base
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(MAX_PAUSE);
        // ±25 %, from the clock's low bits (no generator needed).
        let nanos = u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.subsec_nanos()),
        );
        let f = 0.75 + (nanos % 1000) as f64 / 2000.0;
        d.mul_f64(f)
    }
}

fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// Sleep `d`, or less if `stop` comes first.
pub(super) async fn sleep(d: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}

fn spawn_probe<S: Side>(side: &S, stats: &Arc<Stats>) {
    let probe = side.probe();
    let stats = Arc::clone(stats);
    tokio::spawn(async move {
        match probe.await {
            Ok(()) => stats.supabase_answered(),
            Err(e) => stats.failed(&e),
        }
    });
}

/// Wait for the oldest batch out; `Ok(true)` when it failed (recoverably).
async fn finish_one(inflight: &mut VecDeque<InFlight>, stats: &Stats) -> Result<bool> {
    let Some((task, _)) = inflight.pop_front() else {
        return Ok(false);
    };
    let outcome = task
        .await
        .unwrap_or_else(|e| Err(Error::Protocol(format!("a mirroring task failed: {e}"))));
    match outcome {
        Ok(landed) => {
            stats.landed(&landed);
            Ok(false)
        }
        Err(e) if recoverable(&e) => {
            stats.failed(&e);
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Wait for every batch out; `Ok(true)` when one failed.
async fn finish_all(inflight: &mut VecDeque<InFlight>, stats: &Stats) -> Result<bool> {
    let mut failed = false;
    let mut fatal = None;
    while !inflight.is_empty() {
        // Every batch out is waited for, even after a fatal error: its
        // acknowledgement must not be cut half-way by the process's exit.
        match finish_one(inflight, stats).await {
            Ok(f) => failed |= f,
            Err(e) => {
                fatal.get_or_insert(e);
            }
        }
    }
    match fatal {
        Some(e) => Err(e),
        None => Ok(failed),
    }
}

/// Drain until `stop` turns true (then finish the batches out), or until an
/// error that cannot be recovered from.
pub(super) async fn drain<S: Side>(
    side: &mut S,
    opts: &ServeOptions,
    stats: &Arc<Stats>,
    notifier: &Notifier,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let limit = opts.batch_rows.max(1);
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut backoff = Backoff {
        base: opts.pause,
        failures: 0,
    };
    let mut last_check = Instant::now();
    let mut check_due = true;
    // Whether the target answers, for `/ready`, before any change waits.
    spawn_probe(side, stats);
    loop {
        notifier.watchdog();
        if stopped(&stop) {
            stats.step("stopping: finishing the batches out");
            finish_all(&mut inflight, stats).await?;
            return Ok(());
        }
        if check_due || last_check.elapsed() >= opts.check_every {
            stats.step("checking capture");
            match side.check_capture().await {
                Ok(()) => {
                    check_due = false;
                    last_check = Instant::now();
                    if inflight.is_empty() {
                        // Idle, nothing else would notice the target going away.
                        spawn_probe(side, stats);
                    }
                }
                Err(e) if recoverable(&e) => {
                    stats.failed(&e);
                    check_due = true;
                    finish_all(&mut inflight, stats).await?;
                    stats.step("waiting after a failure (checking capture)");
                    sleep(backoff.next(), &mut stop).await;
                    continue;
                }
                Err(e) => {
                    finish_all(&mut inflight, stats).await?;
                    return Err(e);
                }
            }
        }
        // Batches acknowledged leave the pipeline (their keys may be claimed
        // again); with `OUTSTANDING` batches out, the oldest is waited for.
        let mut failed = false;
        while inflight.front().is_some_and(|(t, _)| t.is_finished())
            || inflight.len() >= S::OUTSTANDING
        {
            stats.step("sending a batch and acknowledging it");
            failed |= finish_one(&mut inflight, stats).await?;
        }
        let mut full = false;
        if !failed {
            let busy: HashSet<u64> = inflight
                .iter()
                .flat_map(|(_, k)| k.iter().copied())
                .collect();
            stats.step("claiming and reading a batch");
            match side.next_batch(limit, &busy).await {
                Ok(Some(c)) => {
                    full = c.changes >= limit;
                    inflight.push_back((tokio::spawn(side.send(c.batch)), c.keys));
                }
                Ok(None) => {}
                Err(e) if recoverable(&e) => {
                    stats.failed(&e);
                    failed = true;
                }
                Err(e) => {
                    finish_all(&mut inflight, stats).await?;
                    return Err(e);
                }
            }
        }
        // A batch that emptied the log (or a failure) waits for them all.
        if !full || failed {
            stats.step("sending a batch and acknowledging it");
            failed |= finish_all(&mut inflight, stats).await?;
        }
        if failed {
            stats.step("waiting after a failure");
            sleep(backoff.next(), &mut stop).await;
            continue;
        }
        backoff.failures = 0;
        if full {
            continue;
        }
        // Everything claimed has landed and nothing else was pending: wait
        // for somebody to commit (or the next check). The wait comes first:
        // under a steady write load, batches then come every `poll` instead
        // of back to back, which keeps the daemon's write transactions and
        // fsyncs off the app's path.
        stats.step("waiting for changes");
        stats.progressed();
        loop {
            notifier.watchdog();
            sleep(opts.poll, &mut stop).await;
            if stopped(&stop) {
                break;
            }
            match side.poll().await {
                Ok(p) if p.schema_changed => {
                    check_due = true;
                    break;
                }
                Ok(p) if p.changed => break,
                Ok(_) => {}
                Err(e) if recoverable(&e) => {
                    stats.failed(&e);
                    break;
                }
                Err(e) => return Err(e),
            }
            if last_check.elapsed() >= opts.check_every {
                break;
            }
            stats.progressed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_grows_to_a_bound_with_jitter() {
        let mut b = Backoff {
            base: Duration::from_secs(1),
            failures: 0,
        };
        let first = b.next();
        assert!((0.74..=1.26).contains(&first.as_secs_f64()), "{first:?}");
        let second = b.next();
        assert!((1.49..=2.51).contains(&second.as_secs_f64()), "{second:?}");
        for _ in 0..20 {
            b.next();
        }
        assert!(b.next() <= MAX_PAUSE.mul_f64(1.26));
    }

    #[test]
    fn supabase_and_a_busy_file_are_waited_out_other_errors_are_not() {
        assert!(recoverable(&Error::Busy("locked".into())));
        assert!(recoverable(&Error::Timeout(Duration::from_secs(1))));
        assert!(recoverable(&Error::GaveUp {
            after: Duration::from_secs(1),
            last: Box::new(Error::Timeout(Duration::from_secs(1))),
            hint: "",
        }));
        assert!(!recoverable(&Error::Sqlite("disk I/O error".into())));
        assert!(!recoverable(&Error::from(std::io::Error::other(
            "No space left on device"
        ))));
        assert!(!recoverable(&Error::invalid("capture is not installed")));
    }
}

//! `DualDatabase<P, S>`: write to a primary, mirror to a secondary.
//!
//! Behaviour (the original design's table, spec 8.1, made safe):
//!
//! | primary | secondary              | result                                            |
//! |---------|------------------------|---------------------------------------------------|
//! | ok      | ok                     | the primary's result                              |
//! | error   | (not attempted)        | the primary's error                               |
//! | ok      | error / timeout / down | the primary's result; the failure is logged, counted and recorded |
//!
//! Reads come from the primary. The write is prepared once ([`Write::prepare`])
//! so ids and timestamps the original generated on each side are the same on
//! both, and the secondary receives the write as the primary resolved it
//! ([`Applied::resolved`]). The secondary never holds the caller longer than the
//! configured timeout. Recorded failures can be inspected and replayed.
//!
//! A circuit breaker keeps a down or hung secondary from costing every app
//! write a timeout: after `breaker.failures` consecutive transient failures the
//! mirror is not attempted for `breaker.cooldown` (each skipped write is
//! recorded, like any failure); then one write tries again.
//!
//! A layer that follows the recorded primary ([`DualDatabase::following`]: a
//! SQLite primary, the factory's) asks the primary to write only while it is
//! the recorded one ([`Database::apply_followed`]: the file's marker, read
//! inside the write's transaction); once cutover has switched, the write and
//! every read go to the other side, as the primary, and nothing is mirrored
//! (docs/design/cutover.md, "The embedded module follows without a restart").
//!
//! With change capture on the primary (the write's transaction records it in
//! the change log), nothing is mirrored inline: the drainer (`dualwrite
//! serve`, or the background drainer) sends the row as it is then, in order
//! with every other change of its key, so a slow mirror can never land after
//! a newer version and leave Supabase older for good.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Applied, Database, Filter, Followed, Row};
use crate::catalogue::Table;
use crate::error::{Error, Result};
use crate::model::Write;

/// A mirror write that did not land.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SecondaryFailure {
    pub method: String,
    pub table: String,
    pub key: String,
    pub error: String,
    /// Whether trying again later may succeed ([`Error::is_transient`]).
    pub transient: bool,
    /// When it failed (RFC 3339 UTC).
    pub at: String,
    /// The write, as it must be replayed.
    pub write: Write,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DualStats {
    /// Writes applied to both sides.
    pub mirrored: u64,
    /// Writes recorded in a change log (change capture on the primary): a
    /// drainer (`dualwrite serve`, or the background drainer) mirrors them.
    pub left_to_drainer: u64,
    /// Writes that went to the secondary's side alone, the recorded primary
    /// since cutover ([`DualDatabase::following`]).
    pub promoted: u64,
    /// Secondary failures since start (including those replayed later).
    pub failed: u64,
    /// Failures not kept because the record was full (logged at ERROR: data at risk).
    pub dropped: u64,
    /// Failures recorded and not yet replayed.
    pub pending: u64,
}

/// What [`DualDatabase::replay_failures`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    pub attempted: u64,
    pub replayed: u64,
    pub still_failing: u64,
}

/// When to stop trying a failing secondary for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    /// Consecutive transient failures that open the breaker.
    pub failures: u32,
    /// How long it stays open before one write tries again.
    pub cooldown: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            failures: 3,
            cooldown: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Default)]
struct BreakerState {
    consecutive: u32,
    open_until: Option<tokio::time::Instant>,
}

pub struct DualDatabase<P, S> {
    primary: P,
    secondary: S,
    timeout: Duration,
    capacity: usize,
    breaker: Breaker,
    breaker_state: Mutex<BreakerState>,
    failures: Mutex<VecDeque<SecondaryFailure>>,
    log_path: Option<std::path::PathBuf>,
    mirrored: AtomicU64,
    left_to_drainer: AtomicU64,
    /// Every write is left to a drainer of the primary's change log, not
    /// only those the primary reports as captured ([`DualDatabase::drained`]).
    drained: bool,
    /// The secondary's side as a primary, when this layer follows the
    /// recorded primary ([`DualDatabase::following`]).
    promoted: Option<S>,
    promoted_writes: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    /// Writes to one row (same table and key) hold one of these across the
    /// primary and the mirror, so that both sides apply them in the same order.
    /// Without it, two threads' read-modify-writes of one row (`set_user_pref`,
    /// `update_artifact`) could reach the mirror in the other order and leave it
    /// with the older resolved value. Striped: unrelated rows rarely wait.
    order: Vec<tokio::sync::Mutex<()>>,
    /// Stops the background drainer (`dual.drain = "background"`) when the
    /// dual layer is dropped.
    drainer: Mutex<Option<tokio::sync::watch::Sender<bool>>>,
}

const ORDER_STRIPES: usize = 64;

impl<P: Database, S: Database> DualDatabase<P, S> {
    /// `timeout` bounds how long a mirror write may hold the caller; `capacity`
    /// bounds how many failures are kept for replay.
    pub fn new(primary: P, secondary: S, timeout: Duration, capacity: usize) -> Self {
        DualDatabase {
            primary,
            secondary,
            timeout,
            capacity,
            breaker: Breaker::default(),
            breaker_state: Mutex::new(BreakerState::default()),
            failures: Mutex::new(VecDeque::new()),
            log_path: None,
            mirrored: AtomicU64::new(0),
            left_to_drainer: AtomicU64::new(0),
            drained: false,
            promoted: None,
            promoted_writes: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            order: (0..ORDER_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            drainer: Mutex::new(None),
        }
    }

    /// Keep the stop signal of a background drainer: it stops (after its batch
    /// in flight) when this dual layer is dropped.
    pub fn with_drainer(self, stop: tokio::sync::watch::Sender<bool>) -> Self {
        self.set_drainer(stop);
        self
    }

    /// Keep the stop signal of a (re)started background drainer; the one kept
    /// before, if any, is told to stop.
    pub fn set_drainer(&self, stop: tokio::sync::watch::Sender<bool>) {
        crate::sync::lock(&self.drainer).replace(stop);
    }

    /// Stop the background drainer, if there is one, and wait until it has
    /// finished its batch in flight and let the lease go (every receiver of
    /// its stop signal is gone then). Idempotent; writes still mirror inline.
    pub async fn stop_drainer(&self) {
        if let Some(stop) = self.take_drainer() {
            stop.closed().await;
        }
    }

    /// Tell the background drainer, if there is one, to stop, without waiting:
    /// its stop signal is returned, closed once it has stopped.
    pub fn take_drainer(&self) -> Option<tokio::sync::watch::Sender<bool>> {
        let stop = crate::sync::lock(&self.drainer).take()?;
        stop.send_replace(true);
        Some(stop)
    }

    /// Whether a background drainer was started and has not stopped.
    pub fn drainer_running(&self) -> bool {
        crate::sync::lock(&self.drainer)
            .as_ref()
            .is_some_and(|s| !s.is_closed())
    }

    fn order_of(&self, w: &Write) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (w.table(), w.key()).hash(&mut h);
        &self.order[(h.finish() % ORDER_STRIPES as u64) as usize]
    }

    /// Persist failures to `path` (NDJSON, one [`SecondaryFailure`] per line), so
    /// that a restarted process can still replay them; failures already in the
    /// file are loaded. After a replay the file holds only what still fails.
    pub fn with_failure_log(mut self, path: std::path::PathBuf) -> Result<Self> {
        let pending = read_failures(&path)?;
        *crate::sync::lock(&self.failures) = pending.into();
        self.log_path = Some(path);
        Ok(self)
    }

    /// Leave every write's mirror to a drainer of the primary's change log
    /// (Supabase as the primary with capture on there: `serve --direction
    /// reverse` keeps the file current), instead of mirroring inline.
    pub fn drained(mut self) -> Self {
        self.drained = true;
        self
    }

    /// Follow the recorded primary: while the primary says it is no longer
    /// the recorded one ([`Database::apply_followed`], [`Database::fetch_followed`]),
    /// writes and reads go to `promoted` (the secondary's side, as a primary:
    /// for Supabase, a client whose writes capture on Supabase logs for the
    /// reverse mirror) and nothing is mirrored.
    pub fn following(mut self, promoted: S) -> Self {
        self.promoted = Some(promoted);
        self
    }

    /// Replace the default circuit breaker settings.
    pub fn with_breaker(mut self, breaker: Breaker) -> Self {
        self.breaker = breaker;
        self
    }

    pub fn primary(&self) -> &P {
        &self.primary
    }

    pub fn secondary(&self) -> &S {
        &self.secondary
    }

    pub fn stats(&self) -> DualStats {
        DualStats {
            mirrored: self.mirrored.load(Ordering::Relaxed),
            left_to_drainer: self.left_to_drainer.load(Ordering::Relaxed),
            promoted: self.promoted_writes.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            pending: crate::sync::lock(&self.failures).len() as u64,
        }
    }

    /// The recorded secondary failures, oldest first.
    pub fn failures(&self) -> Vec<SecondaryFailure> {
        crate::sync::lock(&self.failures).iter().cloned().collect()
    }

    /// `Some(until)` while the breaker is open. Once the cooldown is over, one
    /// caller gets through (half-open) and the breaker re-opens if it fails.
    fn open_until(&self) -> Option<tokio::time::Instant> {
        let mut b = crate::sync::lock(&self.breaker_state);
        match b.open_until {
            Some(t) if tokio::time::Instant::now() < t => Some(t),
            Some(_) => {
                b.open_until = None;
                b.consecutive = self.breaker.failures.saturating_sub(1);
                None
            }
            None => None,
        }
    }

    async fn mirror(&self, write: Write) -> Result<()> {
        match tokio::time::timeout(self.timeout, self.secondary.apply(write)).await {
            Ok(r) => r.map(drop),
            Err(_) => Err(Error::Timeout(self.timeout)),
        }
    }

    fn record(&self, write: Write, error: &Error) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let failure = SecondaryFailure {
            method: write.method().to_owned(),
            table: write.table().to_owned(),
            key: write.key(),
            error: error.to_string(),
            transient: error.is_transient(),
            at: crate::normalise::now_text(),
            write,
        };
        tracing::warn!(
            method = %failure.method,
            table = %failure.table,
            key = %failure.key,
            transient = failure.transient,
            error = %error,
            "secondary write failed; recorded for replay"
        );
        let mut log = crate::sync::lock(&self.failures);
        if log.len() >= self.capacity {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                method = %failure.method,
                table = %failure.table,
                key = %failure.key,
                capacity = self.capacity,
                "secondary failure record is full; this write will not be replayed"
            );
            return;
        }
        if let Some(path) = &self.log_path {
            if let Err(e) = append_failure(path, &failure) {
                tracing::error!(error = %e, path = %path.display(), "cannot persist a secondary failure; it is kept in memory only");
            }
        }
        log.push_back(failure);
    }

    /// Count a failed mirror for the circuit breaker.
    fn note_failure(&self, e: &Error) {
        if e.is_transient() {
            let mut b = crate::sync::lock(&self.breaker_state);
            b.consecutive += 1;
            if b.consecutive >= self.breaker.failures {
                b.open_until = Some(tokio::time::Instant::now() + self.breaker.cooldown);
            }
        }
    }

    /// Apply the recorded failures to the secondary again, oldest first,
    /// retrying transient errors with backoff (`crate::retry`). Those that
    /// still fail stay recorded, in order.
    pub async fn replay_failures(&self) -> ReplayReport {
        let pending: Vec<SecondaryFailure> = crate::sync::lock(&self.failures).drain(..).collect();
        let mut report = ReplayReport::default();
        let mut again = Vec::new();
        for f in pending {
            report.attempted += 1;
            let attempt = || self.mirror(f.write.clone());
            match crate::retry::retry(crate::retry::RetryPolicy::default(), attempt).await {
                Ok(()) => {
                    report.replayed += 1;
                    self.mirrored.fetch_add(1, Ordering::Relaxed);
                    // The secondary answers again: close the breaker.
                    *crate::sync::lock(&self.breaker_state) = BreakerState::default();
                }
                Err(e) => {
                    report.still_failing += 1;
                    again.push(SecondaryFailure {
                        error: e.to_string(),
                        transient: e.is_transient(),
                        ..f
                    });
                }
            }
        }
        let mut log = crate::sync::lock(&self.failures);
        for (i, f) in again.into_iter().enumerate() {
            log.insert(i, f);
        }
        if let Some(path) = &self.log_path {
            if let Err(e) = rewrite_failures(path, log.iter()) {
                tracing::error!(error = %e, path = %path.display(), "cannot rewrite the failure log");
            }
        }
        report
    }
}

/// The pending failures recorded in `path` (none when it does not exist).
pub(crate) fn read_failures(path: &std::path::Path) -> Result<Vec<SecondaryFailure>> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    Error::invalid(format!(
                        "{} line {}: not a recorded failure: {e}",
                        path.display(),
                        i + 1
                    ))
                })
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn append_failure(path: &std::path::Path, f: &SecondaryFailure) -> Result<()> {
    use std::io::Write as _;
    let mut line = serde_json::to_vec(f).expect("a failure serialises");
    line.push(b'\n');
    let mut file = crate::state_file::append(path)?;
    file.write_all(&line)?;
    Ok(())
}

fn rewrite_failures<'a>(
    path: &std::path::Path,
    pending: impl Iterator<Item = &'a SecondaryFailure>,
) -> Result<()> {
    let mut bytes = Vec::new();
    for f in pending {
        serde_json::to_writer(&mut bytes, f).expect("a failure serialises");
        bytes.push(b'\n');
    }
    crate::state_file::write_atomically(path, &bytes)?;
    Ok(())
}

impl<P: Database, S: Database> Database for DualDatabase<P, S> {
    fn backend(&self) -> String {
        format!(
            "dual:{}+{}",
            self.primary.backend(),
            self.secondary.backend()
        )
    }

    async fn apply(&self, mut write: Write) -> Result<Applied> {
        write.prepare();
        let _same_row_in_order = self.order_of(&write).lock().await;
        // A primary failure is the caller's error, and the secondary is not touched.
        let (applied, captured) = match &self.promoted {
            None => self.primary.apply_captured(write).await?,
            Some(promoted) => match self.primary.apply_followed(write).await? {
                Followed::Here { applied, captured } => (applied, captured),
                // Cutover switched: the other side is the primary, and the
                // only one written (the reverse mirror keeps this side).
                Followed::NotPrimary(write) => {
                    let applied = promoted.apply(write).await?;
                    self.promoted_writes.fetch_add(1, Ordering::Relaxed);
                    return Ok(applied);
                }
            },
        };
        if captured || self.drained {
            // The drainer sends the row as it is when it reads it, in order
            // with every other change of that key: an inline mirror could land
            // after the drainer sent a newer version, and nothing would ever
            // correct it (ARCHITECTURE.md, "The embedded layer with capture").
            self.left_to_drainer.fetch_add(1, Ordering::Relaxed);
            return Ok(applied);
        }
        let mirror = applied.resolved.clone();
        if let Some(until) = self.open_until() {
            let e = Error::Unreachable {
                url: self.secondary.backend(),
                reason: format!(
                    "not attempted: the secondary failed {} times in a row; next try in {:?}",
                    self.breaker.failures,
                    until.saturating_duration_since(tokio::time::Instant::now())
                ),
            };
            self.record(mirror, &e);
            return Ok(applied);
        }
        let record_copy = mirror.clone();
        match self.mirror(mirror).await {
            Ok(()) => {
                self.mirrored.fetch_add(1, Ordering::Relaxed);
                crate::sync::lock(&self.breaker_state).consecutive = 0;
            }
            Err(e) => {
                self.note_failure(&e);
                self.record(record_copy, &e);
            }
        }
        Ok(applied)
    }

    async fn fetch(&self, table: &'static Table, filters: &[Filter]) -> Result<Vec<Row>> {
        let Some(promoted) = &self.promoted else {
            return self.primary.fetch(table, filters).await;
        };
        match self.primary.fetch_followed(table, filters).await? {
            Some(rows) => Ok(rows),
            None => promoted.fetch(table, filters).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Dox;
    use crate::model::Artifact;
    use serde_json::{json, Value};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// An in-memory double: records writes, can be told to fail or hang.
    #[derive(Default)]
    struct Double {
        name: &'static str,
        fail: AtomicBool,
        hang: AtomicBool,
        /// The next write takes this many milliseconds (then back to 0).
        slow_once_ms: AtomicU64,
        /// No longer the recorded primary (a file after cutover).
        not_primary: AtomicBool,
        writes: Mutex<Vec<Write>>,
    }

    impl Database for Arc<Double> {
        fn backend(&self) -> String {
            self.name.into()
        }
        async fn apply(&self, mut write: Write) -> Result<Applied> {
            write.prepare();
            if self.hang.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            let slow = self.slow_once_ms.swap(0, Ordering::SeqCst);
            if slow > 0 {
                tokio::time::sleep(Duration::from_millis(slow)).await;
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(Error::Unreachable {
                    url: "double".into(),
                    reason: "down".into(),
                });
            }
            self.writes.lock().unwrap().push(write.clone());
            Ok(Applied {
                value: json!(write.key()),
                resolved: write,
            })
        }
        async fn fetch(&self, _t: &'static Table, _f: &[Filter]) -> Result<Vec<Row>> {
            Ok(vec![[("from".to_string(), json!(self.name))]
                .into_iter()
                .collect()])
        }
        async fn apply_followed(&self, write: Write) -> Result<Followed> {
            if self.not_primary.load(Ordering::SeqCst) {
                return Ok(Followed::NotPrimary(write));
            }
            let applied = self.apply(write).await?;
            Ok(Followed::Here {
                applied,
                captured: false,
            })
        }
        async fn fetch_followed(
            &self,
            t: &'static Table,
            f: &[Filter],
        ) -> Result<Option<Vec<Row>>> {
            if self.not_primary.load(Ordering::SeqCst) {
                return Ok(None);
            }
            self.fetch(t, f).await.map(Some)
        }
    }

    fn artifact(id: &str) -> Artifact {
        Artifact {
            id: id.into(),
            filename: "f".into(),
            filepath: "p".into(),
            filetype: ".pdf".into(),
            report_week: None,
            status: None,
            source_url: None,
            extras: None,
            extra_json: None,
        }
    }

    type Pair = (
        Arc<Double>,
        Arc<Double>,
        DualDatabase<Arc<Double>, Arc<Double>>,
    );

    fn pair() -> Pair {
        let p = Arc::new(Double {
            name: "p",
            ..Default::default()
        });
        let s = Arc::new(Double {
            name: "s",
            ..Default::default()
        });
        let d = DualDatabase::new(p.clone(), s.clone(), Duration::from_millis(200), 2);
        (p, s, d)
    }

    #[tokio::test]
    async fn both_succeed() {
        let (p, s, d) = pair();
        assert_eq!(d.add_artifact(artifact("a")).await.unwrap(), "a");
        assert_eq!(p.writes.lock().unwrap().len(), 1);
        assert_eq!(s.writes.lock().unwrap().len(), 1);
        assert_eq!(d.stats().mirrored, 1);
        assert_eq!(d.backend(), "dual:p+s");
    }

    #[tokio::test(start_paused = true)]
    async fn writes_to_one_row_reach_the_mirror_in_the_primary_order() {
        let (p, s, d) = pair();
        // The first mirror write is slow; the second write to the row starts meanwhile.
        s.slow_once_ms.store(100, Ordering::SeqCst);
        let (mut v1, mut v2) = (artifact("a"), artifact("a"));
        v1.status = Some("v1".into());
        v2.status = Some("v2".into());
        let second = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            d.add_artifact(v2).await
        };
        let (r1, r2) = tokio::join!(d.add_artifact(v1), second);
        r1.unwrap();
        r2.unwrap();
        let statuses = |db: &Double| -> Vec<String> {
            db.writes
                .lock()
                .unwrap()
                .iter()
                .map(|w| match w {
                    Write::AddArtifact { artifact } => artifact.status.clone().unwrap(),
                    other => panic!("unexpected {other:?}"),
                })
                .collect()
        };
        assert_eq!(statuses(&p), ["v1", "v2"]);
        assert_eq!(statuses(&s), ["v1", "v2"], "the mirror must end with v2");
        assert_eq!(d.stats().failed, 0);
    }

    #[tokio::test]
    async fn primary_failure_is_returned_and_secondary_untouched() {
        let (p, s, d) = pair();
        p.fail.store(true, Ordering::SeqCst);
        assert!(d.add_artifact(artifact("a")).await.is_err());
        assert!(s.writes.lock().unwrap().is_empty());
        assert_eq!(d.stats(), DualStats::default());
    }

    #[tokio::test]
    async fn secondary_failure_is_recorded_and_replayed() {
        let (_p, s, d) = pair();
        s.fail.store(true, Ordering::SeqCst);
        assert_eq!(d.add_artifact(artifact("a")).await.unwrap(), "a");
        let f = d.failures();
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].method.as_str(), f[0].table.as_str(), f[0].key.as_str()),
            ("add_artifact", "artifact", "a")
        );
        assert!(f[0].transient);
        s.fail.store(false, Ordering::SeqCst);
        let r = d.replay_failures().await;
        assert_eq!((r.attempted, r.replayed, r.still_failing), (1, 1, 0));
        assert_eq!(s.writes.lock().unwrap().len(), 1);
        assert_eq!(d.stats().pending, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_secondary_is_cut_off_at_the_timeout() {
        let (_p, s, d) = pair();
        s.hang.store(true, Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        d.add_artifact(artifact("a")).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        assert!(d.failures()[0].error.contains("did not answer"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_breaker_stops_paying_the_timeout_and_tries_again_later() {
        let (p, s, _) = pair();
        s.hang.store(true, Ordering::SeqCst);
        let d = DualDatabase::new(p, s.clone(), Duration::from_millis(200), 100).with_breaker(
            Breaker {
                failures: 2,
                cooldown: Duration::from_secs(10),
            },
        );
        let started = tokio::time::Instant::now();
        for id in ["a", "b", "c", "d"] {
            d.add_artifact(artifact(id)).await.unwrap();
        }
        // Two timeouts, then two writes recorded without waiting.
        assert_eq!(started.elapsed(), Duration::from_millis(400));
        assert_eq!(d.stats().failed, 4);
        assert!(d.failures()[3].error.contains("not attempted"));
        s.hang.store(false, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(11)).await;
        d.add_artifact(artifact("e")).await.unwrap();
        assert_eq!(
            d.stats().mirrored,
            1,
            "after the cooldown the mirror is tried again"
        );
        assert_eq!(d.replay_failures().await.replayed, 4);
    }

    #[tokio::test]
    async fn failures_persist_across_processes_and_replay_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failures.ndjson");
        let (p, s, _) = pair();
        s.fail.store(true, Ordering::SeqCst);
        let d = DualDatabase::new(p.clone(), s.clone(), Duration::from_secs(1), 100)
            .with_failure_log(path.clone())
            .unwrap();
        d.add_artifact(artifact("a")).await.unwrap();
        d.add_memory("fact", json!({}), None, None).await.unwrap();
        drop(d);
        // A new process: the failures are loaded from the file.
        let d = DualDatabase::new(p, s.clone(), Duration::from_secs(1), 100)
            .with_failure_log(path.clone())
            .unwrap();
        assert_eq!(d.failures().len(), 2);
        assert_eq!(read_failures(&path).unwrap(), d.failures());
        s.fail.store(false, Ordering::SeqCst);
        assert_eq!(d.replay_failures().await.replayed, 2);
        assert!(read_failures(&path).unwrap().is_empty());
        assert_eq!(s.writes.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn overflow_is_counted_not_silent() {
        let (_p, s, d) = pair();
        s.fail.store(true, Ordering::SeqCst);
        for id in ["a", "b", "c"] {
            d.add_artifact(artifact(id)).await.unwrap();
        }
        let st = d.stats();
        assert_eq!((st.failed, st.pending, st.dropped), (3, 2, 1));
    }

    #[tokio::test]
    async fn generated_ids_are_the_same_on_both_sides() {
        let (p, s, d) = pair();
        let id = d
            .add_memory("team_memory", json!({"k": 1}), None, None)
            .await
            .unwrap();
        assert!(!id.is_empty());
        let pw = p.writes.lock().unwrap()[0].clone();
        let sw = s.writes.lock().unwrap()[0].clone();
        assert_eq!(pw, sw);
        assert_eq!(pw.key(), id);
    }

    #[tokio::test]
    async fn stop_drainer_returns_once_the_drainer_has_ended() {
        let (_p, _s, d) = pair();
        d.stop_drainer().await; // none: nothing to wait for
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let ended = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ended);
        tokio::spawn(async move {
            let _ = rx.wait_for(|v| *v).await;
            // The batch in flight finishes, then the drainer lets go.
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, Ordering::SeqCst);
        });
        let d = d.with_drainer(stop);
        assert!(d.drainer_running());
        d.stop_drainer().await;
        assert!(
            ended.load(Ordering::SeqCst),
            "returned before the drainer ended"
        );
        assert!(!d.drainer_running());
        d.stop_drainer().await; // idempotent
    }

    #[tokio::test]
    async fn a_following_layer_writes_and_reads_the_other_side_alone_once_the_primary_stands_down()
    {
        let (p, s, _) = pair();
        let promoted = Arc::new(Double {
            name: "promoted",
            ..Default::default()
        });
        let d = DualDatabase::new(p.clone(), s.clone(), Duration::from_secs(1), 10)
            .following(promoted.clone());
        d.add_artifact(artifact("a")).await.unwrap();
        p.not_primary.store(true, Ordering::SeqCst);
        let id = d.add_memory("fact", json!({}), None, None).await.unwrap();
        let rows = d.fetch(&crate::catalogue::ARTIFACT, &[]).await.unwrap();
        assert_eq!(rows[0]["from"], Value::from("promoted"));
        let keys = |db: &Double| -> Vec<String> {
            db.writes.lock().unwrap().iter().map(Write::key).collect()
        };
        assert_eq!(keys(&p), ["a"]);
        assert_eq!(keys(&s), ["a"], "nothing is mirrored after the switch");
        assert_eq!(keys(&promoted), [id]);
        let st = d.stats();
        assert_eq!((st.mirrored, st.promoted, st.failed), (1, 1, 0));
        // Back (a rollback): the primary again, mirrored.
        p.not_primary.store(false, Ordering::SeqCst);
        d.add_artifact(artifact("b")).await.unwrap();
        assert_eq!((keys(&p).len(), keys(&s).len()), (2, 2));
    }

    #[tokio::test]
    async fn reads_come_from_the_primary() {
        let (_p, _s, d) = pair();
        let rows = d.fetch(&crate::catalogue::ARTIFACT, &[]).await.unwrap();
        assert_eq!(rows[0]["from"], Value::from("p"));
    }
}

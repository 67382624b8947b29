//! The embedded dual layer's acknowledgements, off the caller's path.
//!
//! With change capture installed, a mirrored write's change rows are removed
//! from the change log (`capture::ack_own`'s conditions). Instead of a second
//! write transaction while the caller waits, [`SqliteDatabase::acknowledge`]
//! queues them here, and the connection's thread applies them:
//! - inside the next write's own `BEGIN IMMEDIATE` transaction, before that
//!   write's statements (`apply_sync`), so the conditions are evaluated under
//!   the write lock and the next write to the same key finds no pending entry
//!   (its own change is then fresh, and its mirror acknowledges it in turn);
//! - alone, in one transaction, when no write came for [`ACK_DELAY`] after the
//!   oldest queued acknowledgement, or at once when more than [`ACK_MAX`] wait;
//! - when the last handle of the database is dropped (best effort, before the
//!   connection closes: dropping the database waits for it).
//!
//! A lost acknowledgement only means the drainer sends the row once more
//! (at-least-once, idempotent).
//!
//! [`SqliteDatabase::acknowledge`]: super::SqliteDatabase

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::capture::Change;

/// How long a queued acknowledgement waits for a write to carry it.
pub(super) const ACK_DELAY: Duration = Duration::from_millis(50);
/// Beyond this many queued acknowledgements they are applied at once.
pub(super) const ACK_MAX: usize = 1000;

/// The queue, shared by the handles and the connection's thread.
#[derive(Debug, Default)]
pub(super) struct Acks(Mutex<Pending>);

#[derive(Debug)]
struct Pending {
    changes: Vec<Change>,
    /// When the oldest queued change was queued.
    since: Option<Instant>,
    /// The connection's thread waits with a timeout (it will look at the
    /// queue without being woken). Cleared once it found the queue empty
    /// after [`ACK_DELAY`] without a job.
    armed: bool,
    /// [`ACK_DELAY`] (tests change it).
    delay: Duration,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            changes: Vec::new(),
            since: None,
            armed: false,
            delay: ACK_DELAY,
        }
    }
}

/// What the caller of [`Acks::push`] must do.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Push {
    /// Nothing: the thread will see the queue.
    Queued,
    /// Wake the thread (it is blocked without a timeout).
    Wake,
    /// Over [`ACK_MAX`]: have the thread apply the queue now.
    Flush,
}

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        crate::sync::lock(&self.0)
    }

    /// Queue the fresh ones of `changes` (only those may be acknowledged by
    /// the writer); returns how many, and what to do next.
    pub(super) fn push(&self, changes: Vec<Change>) -> (usize, Push) {
        let mut p = self.lock();
        let before = p.changes.len();
        p.changes.extend(changes.into_iter().filter(|c| c.fresh));
        let n = p.changes.len() - before;
        if n == 0 {
            return (0, Push::Queued);
        }
        p.since.get_or_insert_with(Instant::now);
        if p.changes.len() > ACK_MAX {
            p.armed = true;
            return (n, Push::Flush);
        }
        let wake = !p.armed;
        p.armed = true;
        (n, if wake { Push::Wake } else { Push::Queued })
    }

    /// Everything queued, to fold into a transaction; [`Acks::put_back`] if
    /// that transaction did not commit.
    pub(super) fn take(&self) -> (Vec<Change>, Option<Instant>) {
        let mut p = self.lock();
        (std::mem::take(&mut p.changes), p.since.take())
    }

    pub(super) fn put_back(&self, mut changes: Vec<Change>, since: Option<Instant>) {
        if changes.is_empty() {
            return;
        }
        let mut p = self.lock();
        changes.append(&mut p.changes);
        p.changes = changes;
        p.since = match (since, p.since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// How long the connection's thread may wait for a job: `None` for ever.
    pub(super) fn wait(&self) -> Option<Duration> {
        let p = self.lock();
        match p.since {
            Some(since) => Some((since + p.delay).saturating_duration_since(Instant::now())),
            None if p.armed => Some(p.delay),
            None => None,
        }
    }

    /// No job came in time: the queue if it is due (else nothing); an empty
    /// queue disarms the timer.
    pub(super) fn due(&self) -> Vec<Change> {
        let mut p = self.lock();
        match p.since {
            None => {
                p.armed = false;
                Vec::new()
            }
            Some(since) if since.elapsed() >= p.delay => {
                p.since = None;
                std::mem::take(&mut p.changes)
            }
            Some(_) => Vec::new(),
        }
    }

    #[cfg(test)]
    pub(super) fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }
}

/// Apply queued acknowledgements in their own transaction (idle, bound, close).
/// A failure is logged, never retried: the drainer sends those rows again.
pub(super) fn flush(conn: &mut Connection, changes: &[Change], when: &'static str) {
    if changes.is_empty() {
        return;
    }
    match crate::capture::ack_own(conn, changes) {
        Ok(n) => tracing::debug!(
            queued = changes.len(),
            removed = n,
            when,
            "acknowledged mirrored changes"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            queued = changes.len(),
            when,
            "cannot acknowledge mirrored changes; the drainer will send them again"
        ),
    }
}

/// Fold queued acknowledgements into the caller's write transaction, before
/// its own statements. On an error the queue is dropped (logged: the drainer
/// sends those rows again) and the caller must start its transaction afresh:
/// the error may have rolled it back (a trigger's `RAISE(ROLLBACK)`, a full
/// disk), and the app's write must never fail because of an acknowledgement.
pub(super) fn fold(tx: &Connection, changes: &mut Vec<Change>) -> bool {
    if changes.is_empty() {
        return true;
    }
    match crate::capture::ack_own_in(tx, changes) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(
                error = %e,
                queued = changes.len(),
                "cannot acknowledge mirrored changes with this write; the drainer will send them again"
            );
            changes.clear();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{SqliteDatabase, SqliteOptions};
    use super::*;
    use crate::catalogue::Table;
    use crate::db::{Applied, Database, DualDatabase, Filter, Row};
    use crate::model::Write;
    use std::path::{Path, PathBuf};

    /// A secondary that accepts every write (what it does with them does not
    /// matter here: only the primary's change log is looked at).
    struct Accepts;

    impl Database for Accepts {
        fn backend(&self) -> String {
            "accepts".into()
        }
        async fn apply(&self, mut write: Write) -> crate::Result<Applied> {
            write.prepare();
            Ok(Applied {
                value: serde_json::Value::Null,
                resolved: write,
            })
        }
        async fn fetch(&self, _t: &'static Table, _f: &[Filter]) -> crate::Result<Vec<Row>> {
            Ok(Vec::new())
        }
    }

    const NEVER: Duration = Duration::from_secs(3600);

    /// A DoX file with capture installed, its SqliteDatabase (acknowledgement
    /// delay `delay`) and a dual layer over it.
    async fn captured(
        dir: &Path,
        delay: Duration,
    ) -> (PathBuf, DualDatabase<SqliteDatabase, Accepts>) {
        let path = dir.join("app.sqlite3");
        let lite = SqliteDatabase::open(&path, SqliteOptions::default())
            .await
            .unwrap();
        crate::capture::install(&path, None).unwrap();
        lite.acks.set_delay(delay);
        let dual = DualDatabase::new(lite, Accepts, Duration::from_secs(5), 100);
        (path, dual)
    }

    fn tag(id: &str, text: &str) -> Write {
        Write::AddTag {
            tag: serde_json::from_value(
                serde_json::json!({"id": id, "document_id": "d", "tag": text}),
            )
            .unwrap(),
        }
    }

    fn pending_keys(path: &Path) -> Vec<String> {
        let c = Connection::open(path).unwrap();
        let mut s = c
            .prepare("SELECT key FROM _dualwrite_changes ORDER BY seq")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<Vec<String>>>()
            .unwrap()
    }

    #[tokio::test]
    async fn the_next_write_carries_the_acknowledgement() {
        let dir = tempfile::tempdir().unwrap();
        let (path, dual) = captured(dir.path(), NEVER).await;
        dual.apply(tag("k1", "v1")).await.unwrap();
        assert_eq!(
            pending_keys(&path),
            ["k1"],
            "the acknowledgement is not a transaction of its own on the caller's path"
        );
        dual.apply(tag("k2", "v1")).await.unwrap();
        assert_eq!(pending_keys(&path), ["k2"], "folded into the next write");
        // The same key again: acknowledged before this write's statements, so
        // its new entry is fresh and acknowledged in turn.
        dual.apply(tag("k2", "v2")).await.unwrap();
        dual.apply(tag("k3", "v1")).await.unwrap();
        assert_eq!(pending_keys(&path), ["k3"]);
        assert_eq!(dual.stats().mirrored, 4);
    }

    #[tokio::test]
    async fn without_a_next_write_the_thread_acknowledges_soon() {
        let dir = tempfile::tempdir().unwrap();
        let (path, dual) = captured(dir.path(), ACK_DELAY).await;
        dual.apply(tag("k1", "v1")).await.unwrap();
        let t = Instant::now();
        while !pending_keys(&path).is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "the change log is still not empty: {:?}",
                pending_keys(&path)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A later write still works, and its own acknowledgement follows.
        dual.apply(tag("k2", "v1")).await.unwrap();
        let t = Instant::now();
        while !pending_keys(&path).is_empty() {
            assert!(t.elapsed() < Duration::from_secs(1));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn closing_the_database_applies_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let (path, dual) = captured(dir.path(), NEVER).await;
        dual.apply(tag("k1", "v1")).await.unwrap();
        assert_eq!(pending_keys(&path), ["k1"]);
        drop(dual);
        assert!(
            pending_keys(&path).is_empty(),
            "dropping waits for the flush"
        );
    }

    #[tokio::test]
    async fn flush_and_close_apply_what_is_queued_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (path, dual) = captured(dir.path(), NEVER).await;
        dual.apply(tag("k1", "v1")).await.unwrap();
        assert_eq!(pending_keys(&path), ["k1"]);
        dual.flush_acknowledgements().await;
        assert!(pending_keys(&path).is_empty());
        dual.apply(tag("k2", "v1")).await.unwrap();
        let lite = dual.primary().clone();
        drop(dual);
        assert_eq!(pending_keys(&path), ["k2"], "another handle keeps it open");
        lite.close().await;
        assert!(pending_keys(&path).is_empty());
    }

    #[tokio::test]
    async fn a_key_changed_again_before_the_folded_ack_stays_pending() {
        let dir = tempfile::tempdir().unwrap();
        let (path, dual) = captured(dir.path(), NEVER).await;
        dual.apply(tag("k1", "v1")).await.unwrap();
        // Another process writes the key after the mirror, before the ack.
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE tagrow SET tag = 'v2' WHERE id = 'k1'", [])
            .unwrap();
        dual.apply(tag("k2", "v1")).await.unwrap();
        assert_eq!(
            pending_keys(&path),
            ["k1", "k2"],
            "k1 changed after its mirror: the drainer must send it"
        );
        drop(dual);
        assert_eq!(pending_keys(&path), ["k1"]);
    }

    #[tokio::test]
    async fn a_drainer_claim_before_the_folded_ack_keeps_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (path, dual) = captured(dir.path(), NEVER).await;
        dual.apply(tag("k1", "v1")).await.unwrap();
        // A drainer's claim of k1: the watermark `claim_changes` raises to the
        // highest `seq` it read (written here directly).
        let drainer = Connection::open(&path).unwrap();
        let claimed = drainer
            .execute(
                "INSERT INTO _dualwrite_claim (hi) SELECT max(seq) FROM _dualwrite_changes",
                [],
            )
            .unwrap();
        assert_eq!(claimed, 1);
        dual.apply(tag("k2", "v1")).await.unwrap();
        assert_eq!(
            pending_keys(&path),
            ["k1", "k2"],
            "a claimed entry is the drainer's to remove"
        );
        drop(dual);
        assert_eq!(pending_keys(&path), ["k1"]);
    }

    #[tokio::test]
    async fn a_failing_acknowledgement_never_fails_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let (path, dual) = captured(dir.path(), NEVER).await;
        dual.apply(tag("k1", "v1")).await.unwrap();
        // The acknowledgement's DELETE fails and rolls the whole transaction back.
        let app = Connection::open(&path).unwrap();
        app.execute_batch(
            "CREATE TRIGGER refuse BEFORE DELETE ON _dualwrite_changes \
             BEGIN SELECT RAISE(ROLLBACK, 'refused'); END",
        )
        .unwrap();
        dual.apply(tag("k2", "v1"))
            .await
            .expect("the write must not fail because of its folded acknowledgement");
        let tag_of = |id: &str| -> Option<String> {
            app.query_row("SELECT tag FROM tagrow WHERE id = ?1", [id], |r| r.get(0))
                .ok()
        };
        assert_eq!(tag_of("k2").as_deref(), Some("v1"), "the write committed");
        assert_eq!(
            pending_keys(&path),
            ["k1", "k2"],
            "the failed acknowledgement is dropped: the drainer sends k1 again"
        );
        // A DELETE failing on its own (the statement, not the transaction).
        app.execute_batch(
            "DROP TRIGGER refuse; CREATE TRIGGER refuse BEFORE DELETE ON _dualwrite_changes \
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .unwrap();
        dual.apply(tag("k3", "v1")).await.unwrap();
        assert_eq!(tag_of("k3").as_deref(), Some("v1"));
        app.execute_batch("DROP TRIGGER refuse").unwrap();
        dual.apply(tag("k4", "v1")).await.unwrap();
        assert_eq!(
            pending_keys(&path),
            ["k1", "k2", "k4"],
            "acknowledgements work again"
        );
    }

    #[tokio::test]
    async fn a_large_queue_is_applied_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (path, dual) = captured(dir.path(), NEVER).await;
        let lite = dual.primary();
        let mut changes = Vec::new();
        for i in 0..=ACK_MAX {
            let (_, c) = lite
                .apply_captured(tag(&format!("k{i}"), "v"))
                .await
                .unwrap();
            changes.extend(c);
        }
        assert_eq!(pending_keys(&path).len(), ACK_MAX + 1);
        assert_eq!(lite.acknowledge(changes).await.unwrap(), ACK_MAX + 1);
        let t = Instant::now();
        while !pending_keys(&path).is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{} still pending",
                pending_keys(&path).len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn capture_installed_or_removed_while_open_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sqlite3");
        let lite = SqliteDatabase::open(&path, SqliteOptions::default())
            .await
            .unwrap();
        lite.acks.set_delay(NEVER);
        let dual = DualDatabase::new(lite, Accepts, Duration::from_secs(5), 100);
        dual.apply(tag("k0", "v")).await.unwrap();
        crate::capture::install(&path, None).unwrap();
        dual.apply(tag("k1", "v")).await.unwrap();
        dual.apply(tag("k2", "v")).await.unwrap();
        assert_eq!(pending_keys(&path), ["k2"], "captured and acknowledged");
        crate::capture::uninstall(&path, true).unwrap();
        dual.apply(tag("k3", "v")).await.unwrap();
        let app = Connection::open(&path).unwrap();
        let n: i64 = app
            .query_row("SELECT count(*) FROM tagrow", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 4);
    }

    #[test]
    fn the_thread_is_woken_once_then_times_its_waits() {
        let acks = Acks::default();
        assert_eq!(acks.wait(), None, "nothing queued: it blocks");
        let fresh = |seq| Change {
            tbl: "tagrow".into(),
            key: format!("k{seq}"),
            seq,
            op: "I".into(),
            at: 0.0,
            fresh: true,
        };
        let stale = Change {
            fresh: false,
            ..fresh(0)
        };
        assert_eq!(acks.push(vec![stale]), (0, Push::Queued));
        assert_eq!(acks.push(vec![fresh(1)]), (1, Push::Wake));
        assert_eq!(acks.push(vec![fresh(2)]), (1, Push::Queued));
        assert!(acks.wait().is_some_and(|d| d <= ACK_DELAY));
        let (taken, since) = acks.take();
        assert_eq!(taken.len(), 2);
        // Emptied by a write: the thread still waits with a timeout, so the
        // next acknowledgement needs no wake-up ...
        assert_eq!(acks.wait(), Some(ACK_DELAY));
        acks.put_back(taken, since);
        assert_eq!(acks.take().0.len(), 2);
        // ... until a wait found nothing to do.
        assert!(acks.due().is_empty());
        assert_eq!(acks.wait(), None);
        assert_eq!(acks.push(vec![fresh(3)]), (1, Push::Wake));
    }
}

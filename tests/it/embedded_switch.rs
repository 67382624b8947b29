//! The embedded module follows the recorded primary without a restart
//! (docs/design/cutover.md, "The embedded module follows without a restart"):
//! writers of one `DualDatabase`, as the factory builds it, keep writing while
//! another connection plays the switch's fence and commit (`marker::Fence`)
//! and Supabase's side of it, then the rollback.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dualwrite::access::{access, AccessState};
use dualwrite::capture::supabase as supabase_capture;
use dualwrite::cutover::marker::{Fence, Primary};
use dualwrite::db::{AnyDatabase, Dox, LogFilter, RestClient};
use dualwrite::model::LogEntry;

use crate::harness::{unique, PrivateDb};

/// How long each fence holds the file's write lock.
const HOLD: Duration = Duration::from_secs(1);

/// One write of a writer: its key, when it began and ended, and when its
/// read-back ended if it did not find the row.
struct Done {
    key: String,
    started: Instant,
    ended: Instant,
    unread: Option<Instant>,
}

fn log(key: &str) -> LogEntry {
    // Its own document: `list_logs(document_id)` reads back this row alone.
    serde_json::from_value(serde_json::json!({
        "id": key, "document_id": key, "ts": "2026-12-07T10:00:00",
        "level": "INFO", "code": "C1", "component": "switch", "message": "written"
    }))
    .unwrap()
}

/// Write, then read the row back (read-your-writes), until `stop`.
async fn writer(
    app: Arc<AnyDatabase>,
    prefix: String,
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<Done>>>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let key = format!("{prefix}-{i}");
        let started = Instant::now();
        if let Err(e) = app.add_log(log(&key)).await {
            errors.lock().unwrap().push(format!("{key}: {e}"));
            continue;
        }
        let ended = Instant::now();
        let filter = LogFilter {
            document_id: Some(&key),
            ..LogFilter::default()
        };
        let unread = match app.list_logs(filter).await {
            Ok(rows) if rows.len() == 1 => None,
            Ok(_) => Some(Instant::now()),
            Err(e) => {
                errors.lock().unwrap().push(format!("{key} read: {e}"));
                None
            }
        };
        done.lock().unwrap().push(Done {
            key,
            started,
            ended,
            unread,
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Play a switch to `to` as `cutover run` (or `rollback`) commits it: the
/// file's fence for [`HOLD`], Supabase's side inside it, then the commit.
/// Returns when the fence was taken and when it committed, and, for a
/// rollback, the keys capture on Supabase logged (what the rollback would
/// drain into the file) with how often each was logged.
async fn switch(
    path: PathBuf,
    to: Primary,
    rest: RestClient,
    pg: &PrivateDb,
) -> (Instant, Instant, BTreeMap<String, i64>) {
    let fence = tokio::task::spawn_blocking(move || {
        let fence = Fence::take(&path).unwrap();
        (fence, Instant::now())
    });
    let (fence, taken) = fence.await.unwrap();
    tokio::time::sleep(HOLD).await;
    let mut logged = BTreeMap::new();
    match to {
        Primary::Supabase => {
            supabase_capture::enable(&rest).await.unwrap();
            access(&rest, Some(AccessState::Primary)).await.unwrap();
        }
        Primary::Sqlite => {
            let rows = pg
                .sql()
                .await
                .query(
                    "SELECT k, count(*) FROM dualwrite_capture.changes, unnest(keys) AS k \
                     WHERE tbl = 'log_entries' GROUP BY k",
                    &[],
                )
                .await
                .unwrap();
            logged = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            supabase_capture::disable(&rest, true).await.unwrap();
            access(&rest, Some(AccessState::Mirror)).await.unwrap();
        }
    }
    tokio::task::spawn_blocking(move || fence.commit(to))
        .await
        .unwrap()
        .unwrap();
    (taken, Instant::now(), logged)
}

fn file_keys(path: &Path, prefix: &str) -> BTreeSet<String> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut stmt = c
        .prepare("SELECT id FROM logentry WHERE id LIKE ?1 || '%'")
        .unwrap();
    let keys = stmt
        .query_map([prefix], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    keys
}

/// A write right after a switch is read back, from the side now primary.
async fn read_your_write(app: &AnyDatabase, key: &str) {
    app.add_log(log(key)).await.unwrap();
    let filter = LogFilter {
        document_id: Some(key),
        ..LogFilter::default()
    };
    assert_eq!(app.list_logs(filter).await.unwrap().len(), 1, "{key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_follow_a_cutover_and_a_rollback_with_no_error_loss_or_restart() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dox.sqlite3");
    let env = [
        ("DB_PATH", path.display().to_string()),
        ("DUALWRITE_REST_URL", pg.url.clone()),
        ("SUPABASE_SERVICE_KEY", pg.service_key()),
        ("SUPABASE_DUAL_WRITE", "true".to_owned()),
    ];
    let settings = dualwrite::config::Settings::load(&dualwrite::config::Sources {
        dir: dir.path().to_path_buf(),
        env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ..Default::default()
    })
    .unwrap();
    let (app, _) = dualwrite::factory::open(&settings).await.unwrap();
    assert!(matches!(app, AnyDatabase::SqliteFirst(_)));
    let app = Arc::new(app);
    let run = unique("switch");
    let rest = pg.rest(Duration::from_secs(10));

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            tokio::spawn(writer(
                Arc::clone(&app),
                format!("{run}-w{t}"),
                Arc::clone(&stop),
                Arc::clone(&done),
                Arc::clone(&errors),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cut_taken, cut_at, _) = switch(path.clone(), Primary::Supabase, rest.clone(), &pg).await;
    let right_after_cutover = format!("{run}-ryw-cutover");
    read_your_write(&app, &right_after_cutover).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (back_taken, back_at, logged) =
        switch(path.clone(), Primary::Sqlite, rest.clone(), &pg).await;
    let right_after_rollback = format!("{run}-ryw-rollback");
    read_your_write(&app, &right_after_rollback).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }

    let errors = std::mem::take(&mut *errors.lock().unwrap());
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let done = std::mem::take(&mut *done.lock().unwrap());
    let in_file = file_keys(&path, &run);
    let on_supabase: BTreeSet<String> = pg
        .sql()
        .await
        .query(
            "SELECT id FROM log_entries WHERE id LIKE $1 || '%'",
            &[&run],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut all: BTreeSet<String> = done.iter().map(|d| d.key.clone()).collect();
    all.extend([right_after_cutover.clone(), right_after_rollback.clone()]);

    // Every write landed once, on the side that was the primary when it
    // committed: the file (mirrored to Supabase, not logged there), or
    // Supabase as the primary (logged once by capture on Supabase for the
    // reverse mirror, never in the file).
    assert_eq!(on_supabase, all, "Supabase holds every write");
    let logged_keys: BTreeSet<String> = logged.keys().cloned().collect();
    assert!(
        in_file.is_disjoint(&logged_keys),
        "a write went to both sides"
    );
    let landed: BTreeSet<String> = in_file.union(&logged_keys).cloned().collect();
    assert_eq!(landed, all, "a write went to neither primary");
    assert!(logged.values().all(|&n| n == 1), "logged twice: {logged:?}");
    assert!(logged_keys.contains(&right_after_cutover));
    assert!(in_file.contains(&right_after_rollback));

    // Read-your-writes. A read queues behind the process's writes waiting on
    // a fence (one SQLite connection): the only misses are rows written to
    // Supabase as the primary and read back from the file after the rollback
    // committed, which the real rollback drains into the file inside its
    // fence (this one leaves that out; `logged` is what it would drain).
    let misses: Vec<&Done> = done.iter().filter(|d| d.unread.is_some()).collect();
    for d in &misses {
        assert!(
            logged_keys.contains(&d.key) && d.unread.unwrap() > back_at,
            "{} was not read back",
            d.key
        );
    }

    // Each phase wrote, each where it should.
    let before: Vec<&Done> = done.iter().filter(|d| d.ended < cut_taken).collect();
    let during: Vec<&Done> = done
        .iter()
        .filter(|d| d.started > cut_at && d.ended < back_taken)
        .collect();
    let after: Vec<&Done> = done.iter().filter(|d| d.started > back_at).collect();
    assert!(!before.is_empty() && !during.is_empty() && !after.is_empty());
    assert!(before.iter().all(|d| in_file.contains(&d.key)));
    assert!(during.iter().all(|d| logged_keys.contains(&d.key)));
    assert!(after.iter().all(|d| in_file.contains(&d.key)));

    // The fences held writes (each switch had writers waiting on it), never
    // longer than the fence and a margin. A held write was in progress when
    // the fence lifted and took at least half of it; when it began does not
    // matter (under load every writer may have begun before `taken` was
    // read, which is just after the lock was taken).
    for at in [cut_at, back_at] {
        let held = done
            .iter()
            .filter(|d| d.started < at && d.ended > at && d.ended - d.started >= HOLD / 2)
            .count();
        assert!(held >= 1, "no writer waited on a fence");
    }
    let longest = done.iter().map(|d| d.ended - d.started).max().unwrap();
    println!(
        "{} writes, {} before the cutover, {} with Supabase primary, {} after the rollback; \
         longest {longest:?}; {} read back from the file before the rollback's drain",
        done.len(),
        before.len(),
        during.len(),
        after.len(),
        misses.len()
    );
    assert!(
        longest >= HOLD / 2 && longest < HOLD + Duration::from_millis(1500),
        "longest write {longest:?} for a fence of {HOLD:?}"
    );
    let stats = app.dual_stats().unwrap();
    assert!(stats.promoted >= during.len() as u64, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
}

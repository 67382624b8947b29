//! `SqliteDatabase`: DoX's own SQLite files, read and written as the original
//! application does (exact table and column names, JSON as text, 0/1 booleans).
//!
//! The `rusqlite::Connection` lives on a dedicated thread and is reached over a
//! channel, so blocking SQLite calls never run on the async runtime. This is the
//! only module that touches rusqlite.
//!
//! Opening a file for writing does what DoX's own bootstrap does and nothing
//! more: it creates the DoX tables that are missing and adds the three columns
//! DoX patches in (`fact.evidence_id`, `artifact.source_url`,
//! `artifact.extra_json`). Existing tables are never altered otherwise; an
//! Alembic-built file keeps its `doctable.json` column, which is mapped. A file
//! opened read-only is not changed at all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::{Value as SqlParam, ValueRef};
use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use super::{check_filters, reads, Applied, Database, Filter, Followed, Row};
use crate::catalogue::{self as cat, Kind, Table, MAX_COLUMNS, TABLES};
use crate::cutover::marker::{MarkerWatch, Primary};
use crate::error::{Error, Result};
use crate::model::{skill_row, Step, Write};
use crate::normalise::{self, json_text, SqlRef, SqlRow, SqlValue};

mod layout;
pub(crate) mod mirror;
mod scan;
mod write;

use layout::*;
pub(crate) use scan::ScanFrom;
use scan::*;
use write::*;

/// How to open a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Open without any change to the file (no table creation, no pragmas that write).
    pub read_only: bool,
    /// Switch the file to write-ahead logging (persists in the file; readers and the
    /// writer no longer block each other). DoX's own code leaves the default.
    pub wal: bool,
    /// `synchronous=NORMAL`: with WAL, a commit is durable against a process crash
    /// and needs no fsync per write (an OS crash may lose the last commits).
    pub synchronous_normal: bool,
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            read_only: false,
            wal: true,
            synchronous_normal: true,
            // Longer than a cutover's fence (`--max-pause`, 4 s by default):
            // a write waits it out instead of failing.
            busy_timeout: Duration::from_secs(10),
        }
    }
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

#[derive(Clone)]
pub struct SqliteDatabase {
    jobs: Arc<Thread>,
    path: PathBuf,
    layout: Arc<Layout>,
    /// Whether the file has a change log, remembered while its schema stays.
    shape: Arc<Mutex<crate::capture::LogShape>>,
    /// The recorded primary as the connection last read it (the dual layer
    /// follows it: [`Database::apply_followed`]).
    watch: Arc<Mutex<Option<MarkerWatch>>>,
    /// This handle's writes copy Supabase's rows ([`SqliteDatabase::mirroring_supabase`]).
    mirror: bool,
}

/// The connection's thread. When the last handle is dropped, the thread runs
/// the jobs already sent and closes the connection; the drop waits for that
/// (a process that exits right after, like `dualwrite call`, has its writes
/// committed and the file closed).
struct Thread {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Thread {
    fn send(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok())
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            // Dropped by one of its own jobs: it ends by itself.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// The connection's thread: the jobs, in order.
fn worker(mut conn: Connection, rx: std::sync::mpsc::Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        job(&mut conn);
    }
}

impl std::fmt::Debug for SqliteDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDatabase")
            .field("path", &self.path)
            .finish()
    }
}

/// A value bound as a statement parameter in its own storage class. TEXT
/// whose bytes are not UTF-8 is bound as TEXT, bytes as they are: bound as a
/// BLOB, a keyset cursor `key > ?` would be false for every TEXT key (BLOBs
/// sort after all text), and a scan would end early at such a key.
#[derive(Debug, Clone)]
struct Param(SqlValue);

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ToSqlOutput::{Borrowed, Owned};
        Ok(match &self.0 {
            SqlValue::Null => Owned(SqlParam::Null),
            SqlValue::Integer(i) => Owned(SqlParam::Integer(*i)),
            SqlValue::Real(f) => Owned(SqlParam::Real(*f)),
            SqlValue::Text(s) => Borrowed(ValueRef::Text(s.as_bytes())),
            SqlValue::BadText(b) => Borrowed(ValueRef::Text(b)),
            SqlValue::Blob(b) => Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn to_param(v: &SqlValue) -> Param {
    Param(v.clone())
}

/// The SQLite thread is gone.
fn stopped(when: &'static str) -> Error {
    Error::WorkerStopped {
        worker: "SQLite",
        when,
    }
}

impl SqliteDatabase {
    /// Open (and, unless read-only, bootstrap) a DoX SQLite file.
    /// Open a DoX SQLite file without changing it in any way (jobs that copy or compare it).
    pub async fn open_read_only(path: impl AsRef<Path>) -> Result<SqliteDatabase> {
        let opts = SqliteOptions {
            read_only: true,
            ..SqliteOptions::default()
        };
        SqliteDatabase::open(path, opts).await
    }

    pub async fn open(path: impl AsRef<Path>, opts: SqliteOptions) -> Result<SqliteDatabase> {
        let path = path.as_ref().to_path_buf();
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<Layout>>();
        let thread_path = path.clone();
        let thread = std::thread::Builder::new()
            .name("dualwrite-sqlite".into())
            .spawn(move || {
                let opened = open_connection(&thread_path, &opts);
                let conn = match opened {
                    Ok((conn, layout)) => {
                        let _ = ready_tx.send(Ok(layout));
                        conn
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                worker(conn, rx);
            })?;
        let jobs = Arc::new(Thread {
            jobs: Some(jobs),
            thread: Some(thread),
        });
        let layout = ready_rx.await.map_err(|_| stopped("while opening"))??;
        Ok(SqliteDatabase {
            jobs,
            path,
            layout: Arc::new(layout),
            shape: Arc::default(),
            watch: Arc::default(),
            mirror: false,
        })
    }

    /// A handle (on the same connection) whose writes copy Supabase's rows,
    /// for a dual layer whose primary is Supabase: after cutover they pass the
    /// refusal triggers ([`crate::cutover::marker::write_as_mirror`]).
    pub fn mirroring_supabase(mut self) -> SqliteDatabase {
        self.mirror = true;
        self
    }

    /// Drop this handle; when it is the last one, wait until the connection
    /// is closed and its thread has ended (on a blocking thread: dropping the last handle waits too,
    /// where it is dropped). For callers that must know no thread of theirs
    /// is inside SQLite any more, e.g. before an embedding process forks.
    pub async fn close(self) {
        let SqliteDatabase { jobs, .. } = self;
        if let Some(thread) = Arc::into_inner(jobs) {
            let _ = crate::sync::blocking("SQLite", move || {
                drop(thread);
                Ok(())
            })
            .await;
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on the connection's thread.
    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &Layout) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = oneshot::channel();
        let layout = Arc::clone(&self.layout);
        if !self.jobs.send(Box::new(move |conn| {
            let _ = tx.send(f(conn, &layout));
        })) {
            return Err(stopped("before the call"));
        }
        rx.await.map_err(|_| stopped("during a call"))?
    }

    /// A write; with `with_capture`, whether the change log recorded it.
    /// `follow`: `Err(write)` when the file is no longer the recorded primary.
    async fn write(
        &self,
        write: Write,
        with_capture: bool,
        follow: bool,
    ) -> Result<std::result::Result<(Applied, bool), Write>> {
        let shape = Arc::clone(&self.shape);
        let watch = Arc::clone(&self.watch);
        let mirror = self.mirror;
        self.run(move |conn, layout| {
            let mut shape = crate::sync::lock(&shape);
            let mut watch = crate::sync::lock(&watch);
            let role = match (mirror, follow) {
                (true, _) => Role::Mirror,
                (false, true) => Role::Following(watched(&mut watch, conn)?),
                (false, false) => Role::App,
            };
            apply_sync(conn, layout, write, with_capture, &mut shape, role)
        })
        .await
    }

    /// A write that is not followed: never refused by the check.
    async fn write_here(&self, write: Write, with_capture: bool) -> Result<(Applied, bool)> {
        match self.write(write, with_capture, false).await? {
            Ok(done) => Ok(done),
            Err(_) => unreachable!("only a followed write is turned away"),
        }
    }

    /// Rows of a table in the SQLite shape (as stored), in key order. Used by
    /// tests and jobs that need the raw values.
    pub async fn raw_rows(&self, table: &'static Table) -> Result<Vec<SqlRow>> {
        self.run(move |conn, layout| match layout.get(table) {
            None => Ok(Vec::new()),
            Some(l) => {
                let mut rows = read_rows(conn, table, l, &[])?;
                rows.sort_by(|a, b| key_cmp(&a[0], &b[0]));
                Ok(rows)
            }
        })
        .await
    }
}

impl Database for SqliteDatabase {
    fn backend(&self) -> String {
        "sqlite".into()
    }

    async fn apply(&self, write: Write) -> Result<Applied> {
        self.write_here(write, false)
            .await
            .map(|(applied, _)| applied)
    }

    async fn apply_captured(&self, write: Write) -> Result<(Applied, bool)> {
        self.write_here(write, true).await
    }

    async fn apply_followed(&self, write: Write) -> Result<Followed> {
        Ok(match self.write(write, true, true).await? {
            Ok((applied, captured)) => Followed::Here { applied, captured },
            Err(write) => Followed::NotPrimary(write),
        })
    }

    async fn fetch_followed(
        &self,
        table: &'static Table,
        filters: &[Filter],
    ) -> Result<Option<Vec<Row>>> {
        check_filters(table, filters)?;
        let filters = filters.to_vec();
        let watch = Arc::clone(&self.watch);
        self.run(move |conn, layout| {
            let mut watch = crate::sync::lock(&watch);
            if watched(&mut watch, conn)?.current(conn)?.primary != Primary::Sqlite {
                return Ok(None);
            }
            Ok(Some(fetch_rows(conn, layout, table, &filters)?))
        })
        .await
    }

    async fn fetch(&self, table: &'static Table, filters: &[Filter]) -> Result<Vec<Row>> {
        check_filters(table, filters)?;
        let filters = filters.to_vec();
        self.run(move |conn, layout| fetch_rows(conn, layout, table, &filters))
            .await
    }
}

/// The rows of `table` matching `filters`, canonical, in key order.
fn fetch_rows(
    conn: &Connection,
    layout: &Layout,
    table: &'static Table,
    filters: &[Filter],
) -> Result<Vec<Row>> {
    let Some(l) = layout.get(table) else {
        return Ok(Vec::new());
    };
    let mut rows = read_rows(conn, table, l, filters)?;
    rows.sort_by(|a, b| key_cmp(&a[0], &b[0]));
    Ok(rows.iter().map(|r| lenient_canonical(table, r)).collect())
}

/// The connection's marker watch, made on first use.
fn watched<'a>(
    watch: &'a mut Option<MarkerWatch>,
    conn: &Connection,
) -> Result<&'a mut MarkerWatch> {
    if watch.is_none() {
        *watch = Some(MarkerWatch::new(conn)?);
    }
    Ok(watch.as_mut().expect("made above"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cutover::marker::{self, Fence};
    use std::time::Instant;

    fn tag(id: &str) -> Write {
        Write::from_call(
            "add_tag",
            json!({"tag": {"id": id, "document_id": "d", "tag": "t"}}),
        )
        .unwrap()
    }

    async fn tags(db: &SqliteDatabase) -> Vec<String> {
        db.raw_rows(&cat::TAGROW)
            .await
            .unwrap()
            .iter()
            .map(|r| r[0].display().to_string())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_followed_write_that_waited_on_the_fence_is_turned_away_once_the_switch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dox.sqlite3");
        let db = SqliteDatabase::open(&path, SqliteOptions::default())
            .await
            .unwrap();
        assert!(matches!(
            db.apply_followed(tag("before")).await.unwrap(),
            Followed::Here { .. }
        ));

        // The fence, switching the marker alone (no refusal triggers): only
        // the check inside the write's transaction can turn the write away.
        let mut fence = Connection::open(&path).unwrap();
        let fence = fence
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        let waiting = tokio::spawn({
            let db = db.clone();
            async move {
                let t = Instant::now();
                (db.apply_followed(tag("waited")).await.unwrap(), t.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            !waiting.is_finished(),
            "the write did not wait on the fence"
        );
        marker::record_primary(&fence, Primary::Supabase).unwrap();
        for name in marker::refusal_triggers(&fence).unwrap() {
            fence
                .execute_batch(&format!("DROP TRIGGER \"{name}\""))
                .unwrap();
        }
        fence.commit().unwrap();
        let (followed, waited) = waiting.await.unwrap();
        match followed {
            Followed::NotPrimary(w) => assert_eq!(w.key(), "waited"),
            other => panic!("written to the file after the switch: {other:?}"),
        }
        assert!(waited >= Duration::from_millis(400), "{waited:?}");
        assert_eq!(tags(&db).await, ["before"]);
        let table = &cat::TAGROW;
        assert!(db.fetch_followed(table, &[]).await.unwrap().is_none());

        // With the refusal triggers (as `cutover run` leaves the file), the
        // app's own write is refused; dualwrite's copy passes, and the
        // refusal stays for the next app write.
        Fence::take(&path)
            .unwrap()
            .commit(Primary::Supabase)
            .unwrap();
        let e = db.apply(tag("app")).await.unwrap_err();
        assert!(marker::is_refusal(&e), "{e}");
        db.clone()
            .mirroring_supabase()
            .apply(tag("copied"))
            .await
            .unwrap();
        assert!(db.apply(tag("app")).await.is_err());
        assert_eq!(tags(&db).await, ["before", "copied"]);

        // The rollback: the file is the primary again.
        Fence::take(&path).unwrap().commit(Primary::Sqlite).unwrap();
        assert!(matches!(
            db.apply_followed(tag("after")).await.unwrap(),
            Followed::Here { .. }
        ));
        assert_eq!(
            db.fetch_followed(table, &[]).await.unwrap().unwrap().len(),
            3
        );
    }

    #[tokio::test]
    async fn a_refused_write_is_turned_away_as_it_was_given_even_when_the_marker_reads_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dox.sqlite3");
        let db = SqliteDatabase::open(&path, SqliteOptions::default())
            .await
            .unwrap();
        let pref = |v: i64| Write::SetUserPref {
            user_id: "u".into(),
            key: "k".into(),
            value: json!(v),
            updated_at: None,
            preferences: None,
        };
        db.apply(pref(1)).await.unwrap();
        // Refusal triggers in place, the marker saying sqlite: the check lets
        // the write through, the triggers catch it.
        Fence::take(&path)
            .unwrap()
            .commit(Primary::Supabase)
            .unwrap();
        let c = Connection::open(&path).unwrap();
        c.execute("UPDATE _dualwrite_primary SET primary_side = 'sqlite'", [])
            .unwrap();
        match db.apply_followed(pref(2)).await.unwrap() {
            // Not resolved against the file's row: Supabase resolves it on its own.
            Followed::NotPrimary(Write::SetUserPref {
                preferences, value, ..
            }) => assert_eq!((preferences, value), (None, json!(2))),
            other => panic!("{other:?}"),
        }
    }
}

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
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::{Value as SqlParam, ValueRef};
use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use super::{check_filters, reads, Applied, Database, Filter, Row};
use crate::capture::Change;
use crate::catalogue::{self as cat, Kind, Table, MAX_COLUMNS, TABLES};
use crate::error::{Error, Result};
use crate::model::{skill_row, Step, Write};
use crate::normalise::{self, json_text, SqlRef, SqlRow, SqlValue};

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
            busy_timeout: Duration::from_secs(5),
        }
    }
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Where each catalogue column lives in this particular file.
#[derive(Debug)]
struct TableLayout {
    /// Physical column name per catalogue column; `None` when the file lacks it.
    physical: Vec<Option<String>>,
    select: String,
    upsert: Option<String>,
}

#[derive(Debug)]
struct Layout {
    tables: HashMap<&'static str, TableLayout>,
}

impl Layout {
    fn get(&self, t: &Table) -> Option<&TableLayout> {
        self.tables.get(t.sqlite)
    }

    fn writable(&self, t: &Table) -> Result<&TableLayout> {
        let l = self
            .get(t)
            .ok_or_else(|| Error::Sqlite(format!("the file has no table {}", t.sqlite)))?;
        if l.upsert.is_none() {
            let missing: Vec<_> = t
                .columns
                .iter()
                .zip(&l.physical)
                .filter(|(_, p)| p.is_none())
                .map(|(c, _)| c.sqlite)
                .collect();
            return Err(Error::Sqlite(format!(
                "table {} lacks column(s) {} that DoX writes",
                t.sqlite,
                missing.join(", ")
            )));
        }
        Ok(l)
    }
}

#[derive(Clone)]
pub struct SqliteDatabase {
    jobs: std::sync::mpsc::Sender<Job>,
    path: PathBuf,
    layout: Arc<Layout>,
}

impl std::fmt::Debug for SqliteDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDatabase")
            .field("path", &self.path)
            .finish()
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The DoX schema of a table as SQLModel creates it.
pub fn create_table_sql(t: &Table) -> String {
    let mut parts: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let ty = match c.kind {
                Kind::Integer => "INTEGER",
                Kind::Float => "FLOAT",
                Kind::Bool => "BOOLEAN",
                Kind::Text | Kind::Json | Kind::Timestamp => "VARCHAR",
            };
            let null = if c.not_null { " NOT NULL" } else { "" };
            format!("{} {ty}{null}", quote(c.sqlite))
        })
        .collect();
    parts.push(format!("PRIMARY KEY ({})", quote(t.key().sqlite)));
    if t.sqlite == cat::SKILLS_REGISTRY.sqlite {
        parts.push("UNIQUE (name)".into());
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n\t{}\n)",
        quote(t.sqlite),
        parts.join(", \n\t")
    )
}

/// Columns DoX's bootstrap adds to existing files (spec 1.1).
const PATCHES: [(&str, &str); 3] = [
    ("fact", "evidence_id"),
    ("artifact", "source_url"),
    ("artifact", "extra_json"),
];

fn table_columns(conn: &Connection, table: &str) -> Result<Option<Vec<String>>> {
    let exists: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(None);
    }
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({})", quote(table)))?;
    let cols = stmt
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(cols))
}

fn build_layout(conn: &Connection) -> Result<Layout> {
    let mut tables = HashMap::new();
    for t in TABLES {
        let Some(existing) = table_columns(conn, t.sqlite)? else {
            continue;
        };
        let physical: Vec<Option<String>> = t
            .columns
            .iter()
            .map(|c| {
                if existing.iter().any(|e| e == c.sqlite) {
                    return Some(c.sqlite.to_owned());
                }
                t.legacy_names
                    .iter()
                    .find(|(orm, legacy)| *orm == c.sqlite && existing.iter().any(|e| e == legacy))
                    .map(|(_, legacy)| (*legacy).to_owned())
            })
            .collect();
        let select_cols: Vec<String> = physical
            .iter()
            .map(|p| p.as_deref().map_or_else(|| "NULL".to_owned(), quote))
            .collect();
        let select = format!("SELECT {} FROM {}", select_cols.join(", "), quote(t.sqlite));
        let upsert = physical.iter().all(Option::is_some).then(|| {
            let cols: Vec<String> = physical.iter().flatten().map(|p| quote(p)).collect();
            let marks = vec!["?"; cols.len()].join(", ");
            let updates: Vec<String> = cols[1..]
                .iter()
                .map(|c| format!("{c} = excluded.{c}"))
                .collect();
            format!(
                "INSERT INTO {} ({}) VALUES ({marks}) ON CONFLICT ({}) DO UPDATE SET {}",
                quote(t.sqlite),
                cols.join(", "),
                cols[0],
                updates.join(", ")
            )
        });
        tables.insert(
            t.sqlite,
            TableLayout {
                physical,
                select,
                upsert,
            },
        );
    }
    Ok(Layout { tables })
}

fn bootstrap(conn: &Connection) -> Result<()> {
    for t in TABLES {
        conn.execute_batch(&create_table_sql(t))?;
    }
    for (table, column) in PATCHES {
        let cols = table_columns(conn, table)?.unwrap_or_default();
        if !cols.iter().any(|c| c == column) {
            conn.execute_batch(&format!(
                "ALTER TABLE {} ADD COLUMN {} VARCHAR",
                quote(table),
                quote(column)
            ))?;
        }
    }
    Ok(())
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

/// What [`SqliteDatabase::scan_page`] read: the state its rows were folded
/// into, how many rows, and the last row's key and rowid.
#[derive(Debug)]
pub struct ScanPage<S> {
    pub state: S,
    pub rows: usize,
    pub last: SqlValue,
    pub last_rowid: i64,
}

/// Where a scan continues: after a key (key order), or after a rowid (storage
/// order: sequential reads, several times faster on files whose keys are random).
#[derive(Debug, Clone, PartialEq)]
pub enum ScanFrom {
    Key(Option<SqlValue>),
    Rowid(Option<i64>),
}

fn ref_of(v: ValueRef<'_>) -> SqlRef<'_> {
    match v {
        ValueRef::Null => SqlRef::Null,
        ValueRef::Integer(i) => SqlRef::Integer(i),
        ValueRef::Real(f) => SqlRef::Real(f),
        // SIMD validation: whole-file scans validate hundreds of megabytes.
        ValueRef::Text(b) => match simdutf8::basic::from_utf8(b) {
            Ok(s) => SqlRef::Text(s),
            Err(_) => SqlRef::BadText(b),
        },
        ValueRef::Blob(b) => SqlRef::Blob(b),
    }
}

/// `*slot = v.to_value()`, reusing the slot's text buffer.
fn assign(slot: &mut SqlValue, v: SqlRef<'_>) {
    match (slot, v) {
        (SqlValue::Text(s), SqlRef::Text(t)) => {
            s.clear();
            s.push_str(t);
        }
        (slot, v) => *slot = v.to_value(),
    }
}

fn from_ref(v: ValueRef<'_>) -> SqlValue {
    match v {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Integer(i),
        ValueRef::Real(f) => SqlValue::Real(f),
        // SIMD validation: whole-file scans validate hundreds of megabytes.
        ValueRef::Text(b) => match simdutf8::basic::from_utf8(b) {
            Ok(s) => SqlValue::Text(s.to_owned()),
            Err(_) => SqlValue::BadText(b.to_vec()),
        },
        ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
    }
}

fn canonical_param(v: &Value) -> SqlParam {
    match v {
        Value::Bool(b) => SqlParam::Integer(i64::from(*b)),
        Value::Number(n) => n.as_i64().map_or_else(
            || SqlParam::Real(n.as_f64().unwrap_or(0.0)),
            SqlParam::Integer,
        ),
        Value::String(s) => SqlParam::Text(s.clone()),
        Value::Null => SqlParam::Null,
        other => SqlParam::Text(json_text(other)),
    }
}

/// The SQLite thread is gone.
fn stopped(when: &'static str) -> Error {
    Error::WorkerStopped {
        worker: "SQLite",
        when,
    }
}

/// A row as read from the file, lenient: a value the canonical form cannot hold
/// is shown as text rather than failing the read.
fn lenient_canonical(t: &'static Table, row: &SqlRow) -> Row {
    let mut out = Map::new();
    for (c, v) in t.columns.iter().zip(row) {
        let value = normalise::value_to_canonical(c, v)
            .map(|(v, _)| v)
            .unwrap_or_else(|_| Value::String(v.display()));
        out.insert(c.supabase.to_owned(), value);
    }
    out
}

fn read_rows(
    conn: &Connection,
    t: &'static Table,
    layout: &TableLayout,
    filters: &[Filter],
) -> Result<Vec<SqlRow>> {
    let mut sql = layout.select.clone();
    let mut params = Vec::new();
    let mut first = true;
    for (col, v) in filters {
        let idx = t.index_of(col);
        let Some(p) = &layout.physical[idx] else {
            // The file lacks the column: every value is NULL, which only a
            // filter on NULL matches.
            if v.is_null() {
                continue;
            }
            return Ok(Vec::new());
        };
        sql.push_str(if first { " WHERE " } else { " AND " });
        first = false;
        // An equality filter on NULL matches NULL (as PostgREST's `is.null`).
        if v.is_null() {
            sql.push_str(&format!("{} IS NULL", quote(p)));
            continue;
        }
        sql.push_str(&format!("{} = ?", quote(p)));
        params.push(canonical_param(v));
    }
    let mut stmt = conn.prepare_cached(&sql)?;
    let n = t.columns.len();
    let rows = stmt
        .query_map(params_from_iter(params), |r| {
            (0..n).map(|i| r.get_ref(i).map(from_ref)).collect()
        })?
        .collect::<rusqlite::Result<Vec<SqlRow>>>()?;
    Ok(rows)
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
        std::thread::Builder::new()
            .name("dualwrite-sqlite".into())
            .spawn(move || {
                let opened = open_connection(&thread_path, &opts);
                let mut conn = match opened {
                    Ok((conn, layout)) => {
                        let _ = ready_tx.send(Ok(layout));
                        conn
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for job in rx {
                    job(&mut conn);
                }
            })?;
        let layout = ready_rx.await.map_err(|_| stopped("while opening"))??;
        Ok(SqliteDatabase {
            jobs,
            path,
            layout: Arc::new(layout),
        })
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
        self.jobs
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn, &layout));
            }))
            .map_err(|_| stopped("before the call"))?;
        rx.await.map_err(|_| stopped("during a call"))?
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

impl SqliteDatabase {
    /// Up to `limit` rows of `table` with keys after `after`, in SQLite's key
    /// order (BINARY: byte-wise for text, as PostgreSQL's "C" collation on the
    /// Supabase keys). Each page is one statement, so one consistent snapshot.
    /// Memory stays bounded by `limit` whatever the table's size.
    pub async fn page(
        &self,
        table: &'static Table,
        after: Option<SqlValue>,
        limit: usize,
    ) -> Result<Vec<SqlRow>> {
        self.run(move |conn, layout| {
            let Some(l) = layout.get(table) else {
                return Ok(Vec::new());
            };
            let key = quote(l.physical[0].as_deref().unwrap_or(table.key().sqlite));
            let sql = match after {
                Some(_) => format!("{} WHERE {key} > ?1 ORDER BY {key} LIMIT ?2", l.select),
                None => format!("{} ORDER BY {key} LIMIT ?1", l.select),
            };
            let mut stmt = conn.prepare_cached(&sql)?;
            let n = table.columns.len();
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let after = Param(after.unwrap_or(SqlValue::Null));
            let map = |r: &rusqlite::Row<'_>| (0..n).map(|i| r.get_ref(i).map(from_ref)).collect();
            let rows = if sql.contains("?2") {
                stmt.query_map(rusqlite::params![after, limit], map)?
                    .collect::<rusqlite::Result<Vec<SqlRow>>>()?
            } else {
                stmt.query_map(rusqlite::params![limit], map)?
                    .collect::<rusqlite::Result<Vec<SqlRow>>>()?
            };
            Ok(rows)
        })
        .await
    }

    /// Insert or replace whole rows (SQLite shape) in one transaction. For bulk
    /// loads (fixture generation, tests); application writes go through `apply`.
    pub async fn upsert_rows(&self, table: &'static Table, rows: Vec<SqlRow>) -> Result<()> {
        self.run(move |conn, layout| {
            let tx = write_transaction(conn)?;
            exec_steps(&tx, layout, &[Step::Upsert { table, rows }])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Like [`SqliteDatabase::page`], but each row is handed to `f` on the
    /// connection's thread as borrowed values, without copying them out; `f`
    /// folds it into `state` and returns its size in bytes. Stops after
    /// `max_rows` rows, or once the sizes reach `max_bytes` (after at least one
    /// row). `None` at the end of the table.
    pub async fn scan_page<S: Send + 'static>(
        &self,
        table: &'static Table,
        after: ScanFrom,
        max_rows: usize,
        max_bytes: usize,
        mut state: S,
        mut f: impl FnMut(&mut S, &[SqlRef<'_>]) -> usize + Send + 'static,
    ) -> Result<Option<ScanPage<S>>> {
        self.run(move |conn, layout| {
            let Some(l) = layout.get(table) else {
                return Ok(None);
            };
            let key = quote(l.physical[0].as_deref().unwrap_or(table.key().sqlite));
            let limit = i64::try_from(max_rows.max(1)).unwrap_or(i64::MAX);
            // In storage order the rowid is read too, after the catalogue columns.
            let by_rowid = matches!(after, ScanFrom::Rowid(_));
            let select = if by_rowid {
                l.select.replacen(" FROM ", ", rowid FROM ", 1)
            } else {
                l.select.clone()
            };
            let (sql, after) = match after {
                ScanFrom::Key(Some(k)) => (
                    format!("{select} WHERE {key} > ?1 ORDER BY {key} LIMIT ?2"),
                    Some(to_param(&k)),
                ),
                ScanFrom::Key(None) => (format!("{select} ORDER BY {key} LIMIT ?1"), None),
                ScanFrom::Rowid(Some(r)) => (
                    format!("{select} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"),
                    Some(Param(SqlValue::Integer(r))),
                ),
                ScanFrom::Rowid(None) => (format!("{select} ORDER BY rowid LIMIT ?1"), None),
            };
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = match &after {
                Some(a) => stmt.query(rusqlite::params![a, limit])?,
                None => stmt.query(rusqlite::params![limit])?,
            };
            let n = table.columns.len();
            let (mut count, mut bytes) = (0usize, 0usize);
            let (mut last, mut last_rowid) = (SqlValue::Null, 0i64);
            while let Some(row) = rows.next()? {
                let mut refs = [SqlRef::Null; MAX_COLUMNS];
                for (i, r) in refs[..n].iter_mut().enumerate() {
                    *r = ref_of(row.get_ref(i)?);
                }
                bytes += f(&mut state, &refs[..n]);
                count += 1;
                assign(&mut last, refs[0]);
                if by_rowid {
                    last_rowid = row.get(n)?;
                }
                if bytes >= max_bytes {
                    break;
                }
            }
            Ok((count > 0).then_some(ScanPage {
                state,
                rows: count,
                last,
                last_rowid,
            }))
        })
        .await
    }

    /// Whether the table can be scanned by rowid (not a WITHOUT ROWID table).
    pub async fn has_rowid(&self, table: &'static Table) -> bool {
        self.run(move |conn, _| {
            Ok(conn
                .prepare(&format!(
                    "SELECT rowid FROM {} LIMIT 0",
                    quote(table.sqlite)
                ))
                .is_ok())
        })
        .await
        .unwrap_or(false)
    }

    /// The key of the row at `rowid`, if there is one.
    pub async fn key_at_rowid(
        &self,
        table: &'static Table,
        rowid: i64,
    ) -> Result<Option<SqlValue>> {
        self.run(move |conn, layout| {
            let Some(l) = layout.get(table) else {
                return Ok(None);
            };
            let key = quote(l.physical[0].as_deref().unwrap_or(table.key().sqlite));
            let sql = format!("SELECT {key} FROM {} WHERE rowid = ?1", quote(table.sqlite));
            Ok(conn
                .query_row(&sql, [rowid], |r| r.get_ref(0).map(from_ref))
                .optional()?)
        })
        .await
    }

    /// The current rows with these keys (those that still exist).
    pub async fn rows_by_keys(
        &self,
        table: &'static Table,
        keys: Vec<String>,
    ) -> Result<Vec<SqlRow>> {
        self.run(move |conn, layout| {
            let Some(l) = layout.get(table) else {
                return Ok(Vec::new());
            };
            let key = quote(l.physical[0].as_deref().unwrap_or(table.key().sqlite));
            let n = table.columns.len();
            let mut out = Vec::new();
            for chunk in keys.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(", ");
                let sql = format!("{} WHERE {key} IN ({marks})", l.select);
                let mut stmt = conn.prepare(&sql)?;
                let rows = stmt
                    .query_map(params_from_iter(chunk.iter()), |r| {
                        (0..n).map(|i| r.get_ref(i).map(from_ref)).collect()
                    })?
                    .collect::<rusqlite::Result<Vec<SqlRow>>>()?;
                out.extend(rows);
            }
            Ok(out)
        })
        .await
    }

    /// The rows with keys from `first` to `last` (both included), in key order.
    pub async fn range(
        &self,
        table: &'static Table,
        first: SqlValue,
        last: SqlValue,
    ) -> Result<Vec<SqlRow>> {
        self.run(move |conn, layout| {
            let Some(l) = layout.get(table) else {
                return Ok(Vec::new());
            };
            let key = quote(l.physical[0].as_deref().unwrap_or(table.key().sqlite));
            let sql = format!(
                "{} WHERE {key} >= ?1 AND {key} <= ?2 ORDER BY {key}",
                l.select
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let n = table.columns.len();
            let rows = stmt
                .query_map(rusqlite::params![to_param(&first), to_param(&last)], |r| {
                    (0..n).map(|i| r.get_ref(i).map(from_ref)).collect()
                })?
                .collect::<rusqlite::Result<Vec<SqlRow>>>()?;
            Ok(rows)
        })
        .await
    }

    /// `PRAGMA schema_version` (bumped by every schema change, and by VACUUM),
    /// and up to `n` keys of `table` from the start of its storage order (the
    /// oldest rows: new rows go after them). Together with the file's device
    /// and inode they tell a checkpoint's source from another file at its path.
    pub async fn fingerprint(&self, table: &'static Table, n: usize) -> Result<(i64, Vec<String>)> {
        self.run(move |conn, layout| {
            let version: i64 = conn.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
            let Some(l) = layout.get(table) else {
                return Ok((version, Vec::new()));
            };
            let key = quote(l.physical[0].as_deref().unwrap_or(table.key().sqlite));
            let t = quote(table.sqlite);
            let by_rowid = format!("SELECT {key} FROM {t} ORDER BY rowid LIMIT ?1");
            let mut stmt = match conn.prepare(&by_rowid) {
                Ok(s) => s,
                // A WITHOUT ROWID table: its key order is its storage order.
                Err(_) => {
                    conn.prepare(&format!("SELECT {key} FROM {t} ORDER BY {key} LIMIT ?1"))?
                }
            };
            let keys = stmt
                .query_map([n as i64], |r| r.get_ref(0).map(from_ref))?
                .map(|v| v.map(|v| format!("{v:?}")))
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok((version, keys))
        })
        .await
    }

    /// SQLite's `PRAGMA data_version` on this connection: it changes whenever
    /// another connection (or process) commits to the file.
    pub async fn data_version(&self) -> Result<i64> {
        self.run(|conn, _| Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?))
            .await
    }

    /// Rows in `table` (0 when the file lacks the table).
    pub async fn count(&self, table: &'static Table) -> Result<u64> {
        self.run(move |conn, layout| {
            if layout.get(table).is_none() {
                return Ok(0);
            }
            let n: i64 = conn.query_row(
                &format!("SELECT count(*) FROM {}", quote(table.sqlite)),
                [],
                |r| r.get(0),
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    /// Whether the file has this table at all.
    pub fn has_table(&self, table: &Table) -> bool {
        self.layout.get(table).is_some()
    }
}

fn key_cmp(a: &SqlValue, b: &SqlValue) -> std::cmp::Ordering {
    a.display().cmp(&b.display())
}

fn open_connection(path: &Path, opts: &SqliteOptions) -> Result<(Connection, Layout)> {
    open_connection_inner(path, opts).map_err(|e| match e {
        Error::Sqlite(m) if !m.contains(&path.display().to_string()) => {
            Error::Sqlite(format!("{}: {m}", path.display()))
        }
        other => other,
    })
}

fn open_connection_inner(path: &Path, opts: &SqliteOptions) -> Result<(Connection, Layout)> {
    let conn = if opts.read_only {
        Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
    } else {
        Connection::open(path)
    }
    .map_err(|e| {
        // rusqlite's message ends with the path: name it once, and say what to check.
        let p = path.display().to_string();
        let m = e.to_string();
        let m = m.strip_suffix(&format!(": {p}")).unwrap_or(&m);
        let hint = if path.exists() {
            ""
        } else {
            " (no such file: check DB_PATH or --from-sqlite)"
        };
        Error::Sqlite(format!("cannot open {p}: {m}{hint}"))
    })?;
    conn.busy_timeout(opts.busy_timeout)?;
    if !opts.read_only {
        if opts.wal {
            let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        }
        if opts.synchronous_normal {
            conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        }
        bootstrap(&conn)
            .map_err(|e| Error::Sqlite(format!("cannot prepare {}: {e}", path.display())))?;
    } else {
        // Fail early on a file that is not a database at all.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(|e| Error::Sqlite(format!("cannot read {}: {e}", path.display())))?;
    }
    let layout = build_layout(&conn)?;
    Ok((conn, layout))
}

fn exec_steps(conn: &Connection, layout: &Layout, steps: &[Step]) -> Result<()> {
    for step in steps {
        match step {
            // The search index lives only in Supabase; DoX's SQLite methods are no-ops.
            Step::Upsert { table, .. }
            | Step::DeleteAll { table }
            | Step::DeleteWhere { table, .. }
                if table.sqlite == cat::SEARCH_CHUNKS.sqlite => {}
            Step::Upsert { table, rows } => {
                let l = layout.writable(table)?;
                let sql = l.upsert.as_deref().expect("writable layout has an upsert");
                let mut stmt = conn.prepare_cached(sql)?;
                for row in rows {
                    if let SqlValue::Null = row[0] {
                        return Err(Error::invalid(format!(
                            "{}: the key is missing",
                            table.sqlite
                        )));
                    }
                    stmt.execute(params_from_iter(row.iter().map(to_param)))?;
                }
            }
            Step::DeleteWhere {
                table,
                column,
                value,
            } => {
                if let Some(l) = layout.get(table) {
                    let idx = table.index_of(column);
                    if let Some(p) = &l.physical[idx] {
                        conn.prepare_cached(&format!(
                            "DELETE FROM {} WHERE {} = ?",
                            quote(table.sqlite),
                            quote(p)
                        ))?
                        .execute([value])?;
                    }
                }
            }
            Step::DeleteAll { table } => {
                if layout.get(table).is_some() {
                    conn.execute(&format!("DELETE FROM {}", quote(table.sqlite)), [])?;
                }
            }
        }
    }
    Ok(())
}

fn one_row(
    conn: &Connection,
    layout: &Layout,
    t: &'static Table,
    column: &'static str,
    value: &str,
) -> Result<Option<SqlRow>> {
    let Some(l) = layout.get(t) else {
        return Ok(None);
    };
    Ok(read_rows(conn, t, l, &[(column, json!(value))])?
        .into_iter()
        .next())
}

/// Every write transaction takes the write lock at `BEGIN` (`IMMEDIATE`). A
/// DEFERRED one that reads first (`set_user_pref`, `register_skill`) and then
/// writes fails at once with `SQLITE_BUSY_SNAPSHOT` ("database is locked",
/// no busy wait) when the app committed in between; `BEGIN IMMEDIATE` waits
/// for the busy timeout instead.
fn write_transaction(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

/// Apply a write in one transaction. With change capture installed, also
/// returns the change rows its triggers recorded (read inside the transaction,
/// so never another writer's), for the dual layer to acknowledge once mirrored.
fn apply_sync(
    conn: &mut Connection,
    layout: &Layout,
    mut write: Write,
    with_capture: bool,
) -> Result<(Applied, Vec<Change>)> {
    write.prepare();
    let tx = write_transaction(conn)?;
    let log_mark = if with_capture {
        crate::capture::log_mark(&tx)?
    } else {
        None
    };
    // A read-modify-write reads its row in this transaction and resolves on it.
    let current = match write.current_row() {
        Some((t, column, key)) => {
            let key = key.to_owned();
            one_row(&tx, layout, t, column, &key)?
        }
        None => None,
    };
    if let Some((t, ..)) = write.current_row() {
        write.resolve(current.as_ref().map(|r| lenient_canonical(t, r)).as_ref());
    }
    let value = match &mut write {
        Write::RegisterSkill {
            name,
            description,
            parameters,
            workflow_def,
            enabled,
            id,
            created_at,
        } => {
            let t = &cat::SKILLS_REGISTRY;
            let l = layout.writable(t)?;
            // DoX keeps the id and created_at of a skill registered again under
            // the same name (`resolve` took them from `existing`).
            if let Some(existing) = &current {
                let p = |c: &str| quote(l.physical[t.index_of(c)].as_deref().unwrap_or(c));
                tx.execute(
                    &format!(
                        "UPDATE {} SET {} = ?, {} = ?, {} = ?, {} = ? WHERE {} = ?",
                        quote(t.sqlite),
                        p("description"),
                        p("parameters_json"),
                        p("workflow_def_json"),
                        p("enabled"),
                        p("id")
                    ),
                    rusqlite::params![
                        description.as_str(),
                        json_text(parameters),
                        json_text(workflow_def),
                        i64::from(*enabled),
                        to_param(&existing[0]),
                    ],
                )?;
            } else {
                let row = skill_row(
                    id.as_ref(),
                    name,
                    description,
                    parameters,
                    workflow_def,
                    *enabled,
                    created_at.as_ref(),
                );
                exec_steps(
                    &tx,
                    layout,
                    &[Step::Upsert {
                        table: t,
                        rows: vec![row],
                    }],
                )?;
            }
            json!(id)
        }
        Write::UpdateSkill { skill_id, enabled } => {
            let t = &cat::SKILLS_REGISTRY;
            let l = layout.writable(t)?;
            let p = |c: &str| quote(l.physical[t.index_of(c)].as_deref().unwrap_or(c));
            tx.execute(
                &format!(
                    "UPDATE {} SET {} = ? WHERE {} = ?",
                    quote(t.sqlite),
                    p("enabled"),
                    p("id")
                ),
                rusqlite::params![i64::from(*enabled), skill_id.as_str()],
            )?;
            match one_row(&tx, layout, t, "id", skill_id)? {
                Some(row) => reads::skill(&lenient_canonical(t, &row)),
                None => Value::Null,
            }
        }
        Write::UpdateArtifact {
            artifact_id,
            fields,
            ..
        } => {
            write_validate_fields(fields)?;
            let t = &cat::ARTIFACT;
            let l = layout.writable(t)?;
            match &current {
                // DoX silently ignores an update of a missing artifact.
                None => Value::Null,
                Some(_) => {
                    let mut sets = Vec::new();
                    let mut params = Vec::new();
                    for (k, v) in fields.iter() {
                        let col = if k == "extras" {
                            "extra_json"
                        } else {
                            k.as_str()
                        };
                        let idx = t.index_of(col);
                        let phys = l.physical[idx].as_deref().unwrap_or(col);
                        sets.push(format!("{} = ?", quote(phys)));
                        params.push(match (k.as_str(), v) {
                            (_, Value::Null) => SqlParam::Null,
                            ("extras", v) => SqlParam::Text(json_text(v)),
                            (_, Value::String(s)) => SqlParam::Text(s.clone()),
                            (_, v) => SqlParam::Text(json_text(v)),
                        });
                    }
                    if !sets.is_empty() {
                        params.push(SqlParam::Text(artifact_id.clone()));
                        tx.execute(
                            &format!(
                                "UPDATE {} SET {} WHERE {} = ?",
                                quote(t.sqlite),
                                sets.join(", "),
                                quote(l.physical[0].as_deref().unwrap_or("id"))
                            ),
                            params_from_iter(params),
                        )?;
                    }
                    Value::Null
                }
            }
        }
        other => {
            let steps = other
                .steps()
                .expect("every other write maps onto table steps");
            exec_steps(&tx, layout, &steps)?;
            other.return_value()
        }
    };
    let captured = match log_mark {
        Some((seq, current)) => crate::capture::changes_after(&tx, seq, current)?,
        None => Vec::new(),
    };
    tx.commit()?;
    Ok((
        Applied {
            value,
            resolved: write,
        },
        captured,
    ))
}

fn write_validate_fields(fields: &Map<String, Value>) -> Result<()> {
    Write::UpdateArtifact {
        artifact_id: String::new(),
        fields: fields.clone(),
        merge_extras: true,
    }
    .validate()
}

impl Database for SqliteDatabase {
    fn backend(&self) -> String {
        "sqlite".into()
    }

    async fn apply(&self, write: Write) -> Result<Applied> {
        self.run(move |conn, layout| apply_sync(conn, layout, write, false))
            .await
            .map(|(applied, _)| applied)
    }

    async fn apply_captured(&self, write: Write) -> Result<(Applied, Vec<Change>)> {
        self.run(move |conn, layout| apply_sync(conn, layout, write, true))
            .await
    }

    async fn acknowledge(&self, changes: Vec<Change>) -> Result<usize> {
        self.run(move |conn, _| crate::capture::ack_own(conn, &changes))
            .await
    }

    async fn fetch(&self, table: &'static Table, filters: &[Filter]) -> Result<Vec<Row>> {
        check_filters(table, filters)?;
        let filters = filters.to_vec();
        self.run(move |conn, layout| {
            let Some(l) = layout.get(table) else {
                return Ok(Vec::new());
            };
            let mut rows = read_rows(conn, table, l, &filters)?;
            rows.sort_by(|a, b| key_cmp(&a[0], &b[0]));
            Ok(rows.iter().map(|r| lenient_canonical(table, r)).collect())
        })
        .await
    }
}

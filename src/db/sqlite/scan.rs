//! Reading: keyset pages and scans, rows by key, key ranges, fingerprints;
//! values read from the file and bound as parameters.

use super::*;

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

pub(super) fn ref_of(v: ValueRef<'_>) -> SqlRef<'_> {
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
pub(super) fn assign(slot: &mut SqlValue, v: SqlRef<'_>) {
    match (slot, v) {
        (SqlValue::Text(s), SqlRef::Text(t)) => {
            s.clear();
            s.push_str(t);
        }
        (slot, v) => *slot = v.to_value(),
    }
}

pub(super) fn from_ref(v: ValueRef<'_>) -> SqlValue {
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

pub(super) fn canonical_param(v: &Value) -> SqlParam {
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

/// A row as read from the file, lenient: a value the canonical form cannot hold
/// is shown as text rather than failing the read.
pub(super) fn lenient_canonical(t: &'static Table, row: &SqlRow) -> Row {
    let mut out = Map::new();
    for (c, v) in t.columns.iter().zip(row) {
        let value = normalise::value_to_canonical(c, v)
            .map(|(v, _)| v)
            .unwrap_or_else(|_| Value::String(v.display()));
        out.insert(c.supabase.to_owned(), value);
    }
    out
}

pub(super) fn read_rows(
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
        self.visit_by_keys(table, keys, Vec::new(), |rows, row| {
            rows.push(row.iter().map(|v| v.to_value()).collect());
        })
        .await
    }

    /// Like [`SqliteDatabase::rows_by_keys`], but each row is handed to `f` on
    /// the connection's thread as borrowed values, without copying them out
    /// (as [`SqliteDatabase::scan_page`] does); `f` folds it into `state`.
    pub async fn visit_by_keys<S: Send + 'static>(
        &self,
        table: &'static Table,
        keys: Vec<String>,
        mut state: S,
        mut f: impl FnMut(&mut S, &[SqlRef<'_>]) + Send + 'static,
    ) -> Result<S> {
        self.run(move |conn, layout| {
            let Some(l) = layout.get(table) else {
                return Ok(state);
            };
            let key = quote(l.physical[0].as_deref().unwrap_or(table.key().sqlite));
            let n = table.columns.len();
            for chunk in keys.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(", ");
                let sql = format!("{} WHERE {key} IN ({marks})", l.select);
                // Cached: every chunk but a batch's last has the same statement.
                let mut stmt = conn.prepare_cached(&sql)?;
                let mut rows = stmt.query(params_from_iter(chunk.iter()))?;
                while let Some(row) = rows.next()? {
                    let mut refs = [SqlRef::Null; MAX_COLUMNS];
                    for (i, r) in refs[..n].iter_mut().enumerate() {
                        *r = ref_of(row.get_ref(i)?);
                    }
                    f(&mut state, &refs[..n]);
                }
            }
            Ok(state)
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

pub(super) fn key_cmp(a: &SqlValue, b: &SqlValue) -> std::cmp::Ordering {
    a.display().cmp(&b.display())
}

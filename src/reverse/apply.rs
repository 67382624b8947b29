//! Writing rows read from Supabase into the SQLite file, in DoX's own shape
//! (the inverse of the normaliser, [`crate::normalise::to_dox`]), in one
//! `BEGIN IMMEDIATE` transaction. Blocking: the daemon calls it from
//! `spawn_blocking`. With `capture.rs` and `db/sqlite.rs`, the only module
//! that touches rusqlite.

use std::collections::HashMap;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde_json::{Map, Value};

use crate::catalogue::Table;
use crate::error::{Error, Result};
use crate::normalise::{to_dox, SqlValue};

/// What one table of a batch brings: rows as they are now (canonical, after
/// [`crate::normalise::from_supabase_owned`]) and keys that are gone.
#[derive(Debug, Default)]
pub struct TableBatch {
    pub rows: Vec<Map<String, Value>>,
    pub gone: Vec<String>,
}

/// Rows written (changed or new), rows left as they were, rows deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub written: u64,
    pub unchanged: u64,
    pub deleted: u64,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A value bound in its own storage class (text that is not UTF-8 stays TEXT).
struct Param<'a>(&'a SqlValue);

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ToSqlOutput::Borrowed;
        Ok(Borrowed(match self.0 {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(i) => ValueRef::Integer(*i),
            SqlValue::Real(f) => ValueRef::Real(*f),
            SqlValue::Text(s) => ValueRef::Text(s.as_bytes()),
            SqlValue::BadText(b) => ValueRef::Text(b),
            SqlValue::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn owned(v: ValueRef<'_>) -> SqlValue {
    match v {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Integer(i),
        ValueRef::Real(f) => SqlValue::Real(f),
        ValueRef::Text(b) => match std::str::from_utf8(b) {
            Ok(s) => SqlValue::Text(s.to_owned()),
            Err(_) => SqlValue::BadText(b.to_vec()),
        },
        ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
    }
}

/// The file's names for the table's columns (older files use legacy names).
fn physical_columns(conn: &Connection, t: &Table) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({})", quote(t.sqlite)))?;
    let existing: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<_>>()?;
    if existing.is_empty() {
        return Err(Error::invalid(format!(
            "the SQLite file has no table {}: it is not the DoX database Supabase was migrated from",
            t.sqlite
        )));
    }
    t.columns
        .iter()
        .map(|c| {
            if existing.iter().any(|e| e == c.sqlite) {
                return Ok(c.sqlite.to_owned());
            }
            t.legacy_names
                .iter()
                .find(|(orm, legacy)| *orm == c.sqlite && existing.iter().any(|e| e == legacy))
                .map(|(_, legacy)| (*legacy).to_owned())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "the SQLite table {} has no column {}",
                        t.sqlite, c.sqlite
                    ))
                })
        })
        .collect()
}

/// [`apply`] on a connection of its own to the file at `path` (for callers
/// other than the reverse daemon: `verify --repair --direction reverse`).
/// Blocking: call it from `spawn_blocking`.
pub fn apply_to_file(
    path: &std::path::Path,
    batch: &[(&'static Table, TableBatch)],
) -> Result<HashMap<&'static str, Applied>> {
    let mut conn = crate::capture::open_rw(path)?;
    apply(&mut conn, batch)
}

/// Apply a batch in one write transaction: every row or none.
pub fn apply(
    conn: &mut Connection,
    batch: &[(&'static Table, TableBatch)],
) -> Result<HashMap<&'static str, Applied>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = HashMap::new();
    for (t, b) in batch {
        let cols = physical_columns(&tx, t)?;
        let qcols: Vec<String> = cols.iter().map(|c| quote(c)).collect();
        let key = &qcols[0];
        let select = format!(
            "SELECT {} FROM {} WHERE {key} = ?1",
            qcols.join(", "),
            quote(t.sqlite)
        );
        let updates: Vec<String> = qcols[1..]
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let upsert = format!(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({key}) DO UPDATE SET {}",
            quote(t.sqlite),
            qcols.join(", "),
            vec!["?"; qcols.len()].join(", "),
            updates.join(", ")
        );
        let delete = format!("DELETE FROM {} WHERE {key} = ?1", quote(t.sqlite));
        let mut applied = Applied::default();
        for row in &b.rows {
            let k = match row.get(t.key().supabase) {
                Some(Value::String(s)) => s.clone(),
                other => {
                    return Err(Error::Protocol(format!(
                        "a {} row from Supabase has no text key: {other:?}",
                        t.supabase
                    )))
                }
            };
            let existing: Option<Vec<SqlValue>> = tx
                .prepare_cached(&select)?
                .query_row([&k], |r| {
                    (0..cols.len())
                        .map(|i| r.get_ref(i).map(owned))
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .optional()?;
            let values = t
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let v = row.get(c.supabase).unwrap_or(&Value::Null);
                    to_dox(c, v, existing.as_ref().map(|e| &e[i]))
                        .map_err(|e| Error::invalid(format!("{} {k}: {e}", t.supabase)))
                })
                .collect::<Result<Vec<SqlValue>>>()?;
            if existing.as_ref() == Some(&values) {
                applied.unchanged += 1;
                continue;
            }
            tx.prepare_cached(&upsert)?
                .execute(rusqlite::params_from_iter(values.iter().map(Param)))?;
            applied.written += 1;
        }
        for k in &b.gone {
            applied.deleted += tx.prepare_cached(&delete)?.execute([k])? as u64;
        }
        out.insert(t.sqlite, applied);
    }
    tx.commit()?;
    Ok(out)
}

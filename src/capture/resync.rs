//! Re-sending a table whose triggers were gone: the app dropped and re-created
//! it (SQLite's 12-step `ALTER`, Alembic's batch mode), or created it after
//! capture was installed. Nothing written to it meanwhile was logged, so once
//! the triggers are back ([`super::install_on`] marks the table in the same
//! transaction) every key it holds is queued, then every key the target holds
//! that the file no longer has (deleted meanwhile). The drainer sends the rows
//! as they are, or deletes them where they are gone.
//!
//! The mark is a row of [`META`] (`resync:<table>`) whose value is how far
//! the file's keys were queued: `''` none yet, a key (those up to it), and
//! NULL all of them (the target's keys are left). It survives a crash: the
//! drainer carries on from it when it starts again.

use rusqlite::{params, Connection, OptionalExtension};

use super::{immediate, quote, META, NOW_SQL, QUEUE};
use crate::catalogue::{Table, TABLES};
use crate::error::Result;

/// Keys queued per transaction: a few milliseconds of the file's write lock.
pub(crate) const KEYS_PER_STEP: usize = 5000;

fn mark(t: &Table) -> String {
    format!("resync:{}", t.sqlite)
}

/// Mark `t` for a resync (inside the transaction that re-installs its triggers).
pub(super) fn mark_resync(tx: &Connection, t: &Table) -> Result<()> {
    tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO {META} (name, value) VALUES (?1, '')"
    ))?
    .execute([mark(t)])?;
    Ok(())
}

/// Where a table's resync stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resync {
    /// The file's keys are being queued; those up to this one are (`""`: none yet).
    FileKeys(String),
    /// Every key of the file is queued; the target's keys are left.
    TargetKeys,
}

/// The tables marked for a resync, and where each stands.
pub(crate) fn pending_resyncs(conn: &Connection) -> Result<Vec<(&'static Table, Resync)>> {
    if super::object_sql(conn, "table", META)?.is_none() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for t in TABLES {
        let v: Option<Option<String>> = conn
            .query_row(
                &format!("SELECT value FROM {META} WHERE name = ?1"),
                [mark(t)],
                |r| r.get(0),
            )
            .optional()?;
        match v {
            None => {}
            Some(Some(after)) => out.push((t, Resync::FileKeys(after))),
            Some(None) => out.push((t, Resync::TargetKeys)),
        }
    }
    Ok(out)
}

/// Queue the next [`KEYS_PER_STEP`] keys of `t` after `after`, in key order,
/// in one short write transaction that also records how far it got. Returns
/// the last key queued (`None`: every key is queued, and the mark says so).
pub(crate) fn queue_file_keys(
    conn: &mut Connection,
    t: &Table,
    after: &str,
) -> Result<Option<String>> {
    let key = quote(t.key().sqlite);
    let table = quote(t.sqlite);
    immediate(conn, |tx| {
        // Appended to the queue like the triggers' changes (each numbered
        // on from the last), folded into the log by the drainer.
        let n = tx.execute(
            &format!(
                "INSERT INTO {QUEUE} (tbl, key, op, at) SELECT ?1, k, 'U', {NOW_SQL} FROM \
                 (SELECT {key} AS k FROM {table} WHERE {key} > ?2 AND {key} IS NOT NULL \
                  ORDER BY {key} LIMIT ?3)"
            ),
            params![t.sqlite, after, KEYS_PER_STEP as i64],
        )?;
        let last: Option<String> = tx
            .query_row(
                &format!(
                    "SELECT max(k) FROM (SELECT CAST({key} AS TEXT) AS k FROM {table} \
                     WHERE {key} > ?1 ORDER BY {key} LIMIT ?2)"
                ),
                params![after, KEYS_PER_STEP as i64],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let next: Option<String> = if n == 0 { None } else { last };
        tx.prepare_cached(&format!("UPDATE {META} SET value = ?2 WHERE name = ?1"))?
            .execute(params![mark(t), next])?;
        Ok(next)
    })
}

/// Queue the keys among `keys` (the target's) that `t` no longer holds: the
/// drainer finds them gone and deletes them on the target. One transaction.
pub(crate) fn queue_gone_keys(conn: &mut Connection, t: &Table, keys: &[String]) -> Result<usize> {
    let key = quote(t.key().sqlite);
    let table = quote(t.sqlite);
    immediate(conn, |tx| {
        let mut stmt = tx.prepare_cached(&format!(
            "INSERT INTO {QUEUE} (tbl, key, op, at) SELECT ?1, ?2, 'D', {NOW_SQL} \
             WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE {key} = ?2)"
        ))?;
        let mut n = 0;
        for k in keys {
            n += stmt.execute(params![t.sqlite, k])?;
        }
        Ok(n)
    })
}

/// The resync of `t` is over: remove its mark.
pub(crate) fn finish_resync(conn: &mut Connection, t: &Table) -> Result<()> {
    immediate(conn, |tx| {
        tx.execute(&format!("DELETE FROM {META} WHERE name = ?1"), [mark(t)])?;
        Ok(())
    })
}

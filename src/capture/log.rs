//! Capture's status, and the changes: reading, claiming and acknowledging them.

use std::path::Path;

use rusqlite::{params, Connection};
use serde::Serialize;

use super::schema::{log_columns, triggers_sql};
use super::{dox_tables, immediate, object_sql, open_ro, CLAIM, LATER_COLUMNS, LOG};
use crate::catalogue::{Table, TABLES};
use crate::error::Result;

/// Capture's state in a file.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CaptureStatus {
    /// The change log exists and every DoX table present has its three triggers.
    pub installed: bool,
    pub log_present: bool,
    /// DoX tables that have all their triggers.
    pub tables: Vec<String>,
    /// DoX tables present whose triggers are missing or differ (e.g. the app
    /// dropped and re-created the table): their writes are NOT captured.
    pub missing: Vec<String>,
    pub pending: u64,
    /// Age of the oldest change not yet mirrored (0 when none).
    pub lag_seconds: f64,
}

pub(super) fn pending_on(conn: &Connection) -> Result<(u64, f64)> {
    let (n, oldest): (i64, Option<f64>) =
        conn.query_row(&format!("SELECT count(*), min(at) FROM {LOG}"), [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let lag = oldest.map_or(0.0, |at| (now_secs() - at).max(0.0));
    Ok((u64::try_from(n).unwrap_or(0), lag))
}

pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Which DoX tables have their triggers: [`CaptureStatus`] without the
/// pending changes (no scan of the log, so cheap whatever the backlog).
#[derive(Debug, Clone, PartialEq)]
pub struct Triggers {
    pub log_present: bool,
    /// DoX tables that have all their triggers.
    pub tables: Vec<String>,
    /// DoX tables present whose triggers are missing or differ.
    pub missing: Vec<String>,
}

pub fn triggers_on(conn: &Connection) -> Result<Triggers> {
    let log_present = object_sql(conn, "table", LOG)?.is_some();
    let mut tables = Vec::new();
    let mut missing = Vec::new();
    for t in dox_tables(conn)? {
        let mut ok = true;
        for (name, sql) in triggers_sql(t) {
            ok &= object_sql(conn, "trigger", &name)?.as_deref() == Some(sql.as_str());
        }
        if ok {
            tables.push(t.sqlite.to_owned());
        } else {
            missing.push(t.sqlite.to_owned());
        }
    }
    Ok(Triggers {
        log_present,
        tables,
        missing,
    })
}

pub fn status_on(conn: &Connection) -> Result<CaptureStatus> {
    let Triggers {
        log_present,
        tables,
        missing,
    } = triggers_on(conn)?;
    let (pending, lag_seconds) = if log_present {
        pending_on(conn)?
    } else {
        (0, 0.0)
    };
    Ok(CaptureStatus {
        installed: log_present && missing.is_empty(),
        log_present,
        tables,
        missing,
        pending,
        lag_seconds,
    })
}

pub fn status(path: &Path) -> Result<CaptureStatus> {
    status_on(&open_ro(path)?)
}

/// One pending change, as read from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub tbl: String,
    pub key: String,
    pub seq: i64,
    pub op: String,
    pub at: f64,
    /// Created by the transaction that read it, after the drainers' watermark
    /// (see [`changes_after`]); always false for the drainer's reads.
    pub fresh: bool,
}

/// A pending change as the drainer claims it: the row it names, and the `seq`
/// its acknowledgement must match (the entry's other columns are not read:
/// the claim is then a scan of the `seq` index alone).
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub tbl: String,
    pub key: String,
    pub seq: i64,
}

/// A change row that cannot be drained (unknown table, key not text): it is
/// moved to the rejects file with this reason instead of blocking the log.
pub fn check_change(c: &Claimed) -> std::result::Result<&'static Table, String> {
    TABLES
        .iter()
        .copied()
        .find(|t| t.sqlite == c.tbl)
        .ok_or_else(|| {
            format!(
                "corrupt change row: table `{}` is not a DoX table (seq {})",
                c.tbl, c.seq
            )
        })
}

/// The oldest `limit` pending changes, in commit order, with what the
/// triggers recorded (`op`, `at`). One statement: the read transaction ends
/// with it.
pub fn read_changes(conn: &Connection, limit: usize) -> Result<Vec<Change>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT tbl, key, seq, op, at FROM {LOG} ORDER BY seq LIMIT ?1"
    ))?;
    let rows = stmt
        .query_map([limit as i64], |r| {
            Ok(Change {
                tbl: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                key: lenient_key(r.get_ref(1)?),
                seq: r.get(2)?,
                op: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                at: r.get::<_, Option<f64>>(4)?.unwrap_or(0.0),
                fresh: false,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The oldest `limit` pending changes with a `seq` above `after` (all of
/// them: `None`), in commit order, as a claim reads them: the index on `seq`
/// holds every column read (`tbl` and `key` are the table's primary key), so
/// SQLite never visits the table itself.
fn read_claimable(
    conn: &Connection,
    after: Option<i64>,
    upto: i64,
    limit: usize,
) -> Result<Vec<Claimed>> {
    let bound = if after.is_some() {
        "seq > ?1"
    } else {
        "?1 IS NULL"
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT tbl, key, seq FROM {LOG} WHERE {bound} AND seq <= ?3 ORDER BY seq LIMIT ?2"
    ))?;
    let rows = stmt
        .query_map(params![after, limit as i64, upto], |r| {
            Ok(Claimed {
                tbl: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                key: lenient_key(r.get_ref(1)?),
                seq: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// A corrupt row (a key that is not text, say) must not stop the drain: it is
/// read leniently and reported by [`check_change`].
fn lenient_key(v: rusqlite::types::ValueRef<'_>) -> String {
    match v {
        rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        rusqlite::types::ValueRef::Integer(i) => i.to_string(),
        other => format!("<{:?}>", other.data_type()),
    }
}

/// A (table, key) pair as a number, for the set of keys in flight
/// ([`claim_changes`]). Two pairs with the same hash only hold one of them
/// back for a later claim.
pub fn key_hash(tbl: &str, key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (tbl, key).hash(&mut h);
    h.finish()
}

/// Where a write transaction's own change rows start: `None` when the file
/// has no change log (capture not installed), else the highest `seq` so far
/// and whether the log can tell which entries a transaction created (a log
/// from an older version cannot until `install` or `serve` upgrades it).
/// Called inside the write transaction (which holds the file's write lock)
/// before the write: see [`changes_after`].
pub fn log_mark(conn: &Connection) -> Result<Option<(i64, bool)>> {
    log_mark_cached(conn, &mut LogShape::default())
}

/// What [`log_mark`] learnt of a file's schema (whether it has a change log,
/// and of which version), valid while the file's `schema_version` stays the
/// same: a writer that marks every write (`SqliteDatabase`) keeps one per
/// connection and spares itself three reads of `sqlite_master` per write.
#[derive(Debug, Default)]
pub struct LogShape(Option<(i64, Option<bool>)>);

/// [`log_mark`], with the schema checks remembered in `shape`.
pub fn log_mark_cached(conn: &Connection, shape: &mut LogShape) -> Result<Option<(i64, bool)>> {
    // The schema cookie: any connection's schema change (install, uninstall,
    // upgrade, the app re-creating a table) changes it.
    let version: i64 = conn
        .prepare_cached("PRAGMA schema_version")?
        .query_row([], |r| r.get(0))?;
    let current = match shape.0 {
        Some((v, current)) if v == version => current,
        _ => {
            let current = log_shape(conn)?;
            shape.0 = Some((version, current));
            current
        }
    };
    let Some(current) = current else {
        return Ok(None);
    };
    let max: i64 = conn
        .prepare_cached(&format!("SELECT coalesce(max(seq), 0) FROM {LOG}"))?
        .query_row([], |r| r.get(0))?;
    Ok(Some((max, current)))
}

/// `None`: no change log; else whether it is of the current version.
fn log_shape(conn: &Connection) -> Result<Option<bool>> {
    let present: bool = conn
        .prepare_cached(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_dualwrite_changes'",
        )?
        .query_row([], |r| r.get(0))?;
    if !present {
        return Ok(None);
    }
    let cols = log_columns(conn)?;
    Ok(Some(
        LATER_COLUMNS.iter().all(|c| cols.iter().any(|h| h == c))
            && object_sql(conn, "table", CLAIM)?.is_some(),
    ))
}

/// The change rows with a `seq` above `after`. Read in the same write
/// transaction as [`log_mark`], after the write and before the commit, these
/// are exactly the rows the write's triggers recorded: no other connection can
/// write while the transaction holds the lock, and a trigger gives every key it
/// touches a new `seq` (max + 1), even a key already pending. `fresh` marks the
/// entries this transaction created (none was pending for the key before) and
/// no drainer has claimed: only those may be acknowledged by the writer.
pub fn changes_after(conn: &Connection, after: i64, current: bool) -> Result<Vec<Change>> {
    let fresh = if current {
        "first > ?1 AND first > coalesce((SELECT max(hi) FROM _dualwrite_claim), 0)"
    } else {
        "0"
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT tbl, key, seq, op, at, {fresh} FROM {LOG} WHERE seq > ?1 ORDER BY seq"
    ))?;
    let rows = stmt
        .query_map([after], |r| {
            Ok(Change {
                tbl: r.get(0)?,
                key: r.get(1)?,
                seq: r.get(2)?,
                op: r.get(3)?,
                at: r.get(4)?,
                fresh: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The writer's acknowledgement (the embedded dual layer, after its mirror
/// succeeded): remove its own fresh entries, unless the key changed again
/// (`seq`, `at`), or a drainer has claimed it since (its `first` is at or
/// below the [`CLAIM`] watermark). Entries that stay are sent by the drainer as
/// the rows are then, so a write mirrored out of order is corrected.
///
/// In its own short write transaction; `SqliteDatabase` folds its
/// acknowledgements into its next write's transaction instead
/// ([`ack_own_in`]).
pub fn ack_own(conn: &mut Connection, done: &[Change]) -> Result<usize> {
    if !done.iter().any(|c| c.fresh) {
        return Ok(0);
    }
    immediate(conn, |tx| ack_own_in(tx, done))
}

/// [`ack_own`]'s statements, inside a write transaction the caller holds (it
/// must hold the write lock: the conditions are evaluated on the log as that
/// transaction sees it).
pub fn ack_own_in(tx: &Connection, done: &[Change]) -> Result<usize> {
    let mut stmt = tx.prepare_cached(&format!(
        "DELETE FROM {LOG} WHERE tbl = ?1 AND key = ?2 AND seq = ?3 AND at = ?4 \
         AND first > coalesce((SELECT max(hi) FROM {CLAIM}), 0)"
    ))?;
    let mut n = 0;
    for c in done.iter().filter(|c| c.fresh) {
        n += stmt.execute(params![c.tbl, c.key, c.seq, c.at])?;
    }
    Ok(n)
}

/// The drainer's read: the oldest `limit` pending changes with a `seq` above
/// `after`, in commit order, claimed first. The claim raises the [`CLAIM`]
/// watermark to the newest entry's `seq` before anything is read; from then on
/// a writer no longer acknowledges those entries itself (its mirror may race
/// with the drainer's send of the same key) and only the drainer, which sends
/// the row as it is after the claim, removes them.
///
/// The watermark is the only thing written: one small row, in a short write
/// transaction of its own (none when it is already there), so the app's
/// commits wait for the file's write lock for that alone. The entries are then
/// read in a read transaction, which takes no lock, and only those at or below
/// the watermark: every one of them was claimed before it was read, so no
/// writer removed it in between, nor removes it afterwards. (Reading first and
/// claiming after would not do: a writer could acknowledge an entry read but
/// not yet claimed, write the key again, mirror and acknowledge that too,
/// while the drainer sent the older row it had read.) An entry at or below the
/// watermark that this claim does not reach (the `limit`) stays claimed for
/// the next one. A new or changed entry gets a `seq` above the watermark, so
/// it is not in the claim's ranges ([`ack_runs`]).
///
/// `busy`: the [`key_hash`]es of the keys in batches still in flight; their
/// entries are left for a later claim, so that a key is never in two batches
/// at once. `after`: `None` (from the first entry), or a `seq` at or below
/// which every pending entry is in flight or busy (the drainer reads on from
/// its last claim instead of reading its batches in flight again).
pub fn claim_changes(
    conn: &mut Connection,
    limit: usize,
    after: Option<i64>,
    busy: &std::collections::HashSet<u64>,
) -> Result<Claim> {
    let mut claim = Claim::default();
    let Some(hi) = raise_watermark(conn)? else {
        return Ok(claim);
    };
    let tx = conn.transaction()?;
    let mut from = after;
    // The run of entries claimed since the last one left (or the start).
    let mut run: Option<(i64, i64)> = None;
    while claim.changes.len() < limit {
        let want = limit - claim.changes.len();
        let read = read_claimable(&tx, from, hi, want)?;
        let Some(last) = read.last() else { break };
        from = Some(last.seq);
        let exhausted = read.len() < want;
        for c in read {
            if busy.is_empty() || !busy.contains(&key_hash(&c.tbl, &c.key)) {
                run = Some((run.map_or(c.seq, |(lo, _)| lo), c.seq));
                claim.changes.push(c);
            } else {
                claim.skipped_from.get_or_insert(c.seq);
                claim.runs.extend(run.take());
            }
        }
        if exhausted {
            break;
        }
    }
    claim.runs.extend(run);
    tx.commit()?;
    Ok(claim)
}

/// The claim: the [`CLAIM`] watermark raised to the newest entry's `seq`, if
/// it is below. Returns the watermark (`None`: the log is empty and nothing
/// was ever claimed). Looked at first with no lock (one statement): the write lock is
/// taken only when the watermark must rise.
fn raise_watermark(conn: &mut Connection) -> Result<Option<i64>> {
    let sql = format!("SELECT (SELECT max(seq) FROM {LOG}), (SELECT max(hi) FROM {CLAIM})");
    let read = |c: &Connection| -> Result<(Option<i64>, Option<i64>)> {
        Ok(c.prepare_cached(&sql)?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?)
    };
    // The newest entry's `seq`, when the watermark is below it.
    let rise =
        |(newest, hi): (Option<i64>, Option<i64>)| newest.filter(|n| hi.is_none_or(|h| h < *n));
    let now = read(conn)?;
    if rise(now).is_none() {
        return Ok(now.1);
    }
    immediate(conn, |tx| {
        let now = read(tx)?;
        let Some(n) = rise(now) else {
            return Ok(now.1);
        };
        tx.prepare_cached(&format!("DELETE FROM {CLAIM} WHERE hi < ?1"))?
            .execute([n])?;
        tx.prepare_cached(&format!(
            "INSERT INTO {CLAIM} (hi) SELECT ?1 WHERE NOT EXISTS (SELECT 1 FROM {CLAIM})"
        ))?
        .execute([n])?;
        Ok(Some(n))
    })
}

/// What [`claim_changes`] took, in commit order, and the lowest `seq` it left
/// because its key was busy.
#[derive(Debug, Default)]
pub struct Claim {
    pub changes: Vec<Claimed>,
    pub skipped_from: Option<i64>,
    /// The `seq` ranges (both ends included) the claimed entries fill: every
    /// entry pending in a range when the claim ran was claimed by it. One range
    /// unless a busy key's entry was left in between (see [`ack_runs`]).
    pub runs: Vec<(i64, i64)>,
}

/// Acknowledge the mirrored changes of the tables `tables` that a claim took,
/// by the ranges of `seq` they fill ([`Claim::runs`]), in one short write
/// transaction for them all: a range scan of the `seq` index per table and
/// range instead of a look-up per change.
///
/// Exact: an entry in a range when the claim ran was claimed by it (the claim
/// reads the log in `seq` order, and every entry it read and left ends a
/// range), and no entry enters a range later. A key that changes again gets a
/// new `seq` above the [`CLAIM`] watermark, which is at or above every range's
/// end, so it leaves the range and stays; so does an entry created anew.
pub fn ack_runs(conn: &mut Connection, tables: &[&str], runs: &[(i64, i64)]) -> Result<usize> {
    if runs.is_empty() || tables.is_empty() {
        return Ok(0);
    }
    immediate(conn, |tx| {
        // `+tbl`: the index on `seq`, not the primary key's `tbl` prefix (all
        // of a table's pending entries), is the one to walk.
        let mut stmt = tx.prepare_cached(&format!(
            "DELETE FROM {LOG} WHERE +tbl = ?1 AND seq BETWEEN ?2 AND ?3"
        ))?;
        let mut n = 0;
        for tbl in tables {
            for (lo, hi) in runs {
                n += stmt.execute(params![tbl, lo, hi])?;
            }
        }
        Ok(n)
    })
}

/// Acknowledge mirrored changes one by one, in one short write transaction. A
/// change whose key changed again since it was read has a new `seq` and stays.
pub fn ack(conn: &mut Connection, done: &[Claimed]) -> Result<usize> {
    if done.is_empty() {
        return Ok(0);
    }
    immediate(conn, |tx| {
        let mut stmt = tx.prepare_cached(&format!(
            "DELETE FROM {LOG} WHERE tbl = ?1 AND key = ?2 AND seq = ?3"
        ))?;
        let mut n = 0;
        for c in done {
            n += stmt.execute(params![c.tbl, c.key, c.seq])?;
        }
        Ok(n)
    })
}

/// Pending count and lag.
pub fn pending(conn: &Connection) -> Result<(u64, f64)> {
    pending_on(conn)
}

/// `PRAGMA data_version`: changes whenever another connection commits.
pub fn data_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_change_row_is_named() {
        let c = Claimed {
            tbl: "bogus".into(),
            key: "k".into(),
            seq: 7,
        };
        let e = check_change(&c).unwrap_err();
        assert!(
            e.contains("corrupt change row") && e.contains("bogus"),
            "{e}"
        );
    }
}

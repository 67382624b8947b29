//! Capture's status, and the changes: reading, claiming and acknowledging them.

use std::path::Path;

use rusqlite::{params, Connection};
use serde::Serialize;

use super::schema::{log_version, triggers_sql};
use super::{dox_tables, immediate, object_sql, open_ro, FOLDED_HI, LOG, META, QUEUE};
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
    /// Distinct keys waiting to be mirrored (a key changed many times counts once).
    pub pending: u64,
    /// Age of the oldest change not yet mirrored (0 when none).
    pub lag_seconds: f64,
}

pub(super) fn pending_on(conn: &Connection) -> Result<(u64, f64)> {
    let (n, oldest) = backlog(conn)?;
    let lag = oldest.map_or(0.0, |at| (now_secs() - at).max(0.0));
    Ok((n, lag))
}

/// The pending changes (distinct keys, in the log or in the queue not yet
/// folded) and when the oldest of them was made (seconds since the epoch),
/// read in one statement: what the daemon's signals report, read on a
/// connection of their own whenever asked.
pub(crate) fn backlog(conn: &Connection) -> Result<(u64, Option<f64>)> {
    // A log of version 1 (not upgraded yet) has no queue.
    let queued = if object_sql(conn, "table", QUEUE)?.is_some() {
        format!(
            "UNION ALL SELECT min(at) FROM {QUEUE} q WHERE seq > {FOLDED_HI} AND NOT EXISTS \
             (SELECT 1 FROM {LOG} c WHERE c.tbl = q.tbl AND c.key = q.key) GROUP BY tbl, key"
        )
    } else {
        String::new()
    };
    let (n, oldest): (i64, Option<f64>) = conn
        .prepare_cached(&format!(
            "SELECT count(*), min(at) FROM (SELECT at FROM {LOG} {queued})"
        ))?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((u64::try_from(n).unwrap_or(0), oldest))
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
    /// The log's recorded version (`LOG_VERSION` when current).
    pub version: Option<i64>,
    /// DoX tables that have all their triggers.
    pub tables: Vec<String>,
    /// DoX tables present whose triggers are missing or differ.
    pub missing: Vec<String>,
}

pub(crate) fn triggers_on(conn: &Connection) -> Result<Triggers> {
    let log_present = object_sql(conn, "table", LOG)?.is_some();
    let version = log_version(conn)?;
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
        version,
        tables,
        missing,
    })
}

pub(super) fn status_on(conn: &Connection) -> Result<CaptureStatus> {
    let Triggers {
        log_present,
        tables,
        missing,
        ..
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

/// The oldest `limit` pending changes of the file at `path`, coalesced by key
/// as the drainer will claim them; nothing is written.
pub fn pending_changes(path: &Path, limit: usize) -> Result<Vec<Change>> {
    read_changes(&open_ro(path)?, limit)
}

/// One pending change ([`pending_changes`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The DoX table (its SQLite name).
    pub tbl: String,
    pub key: String,
    /// Its latest position in the log.
    pub seq: i64,
    /// What the latest change was: `I`, `U` or `D`.
    pub op: String,
    /// When the earliest change still waiting was made (seconds since the epoch).
    pub at: f64,
}

/// A pending change as the drainer claims it: the row it names, and the `seq`
/// its acknowledgement must match (the entry's other columns are not read:
/// the claim is then a scan of the `seq` index alone).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Claimed {
    pub tbl: String,
    pub key: String,
    pub seq: i64,
}

/// A change row that cannot be drained (unknown table, key not text): it is
/// moved to the rejects file with this reason instead of blocking the log.
pub(crate) fn check_change(c: &Claimed) -> std::result::Result<&'static Table, String> {
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
/// triggers recorded (`op`, `at`), coalesced by key as a fold would (the
/// latest `seq` and `op`, the earliest `at`), without writing: the log and
/// the queue not yet folded, read in one read transaction.
pub(crate) fn read_changes(conn: &Connection, limit: usize) -> Result<Vec<Change>> {
    let change = |r: &rusqlite::Row<'_>| {
        Ok(Change {
            tbl: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
            key: lenient_key(r.get_ref(1)?),
            seq: r.get(2)?,
            op: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            at: r.get::<_, Option<f64>>(4)?.unwrap_or(0.0),
        })
    };
    let tx = conn.unchecked_transaction()?;
    let mut by_key: std::collections::HashMap<(String, String), Change> = tx
        .prepare_cached(&format!("SELECT tbl, key, seq, op, at FROM {LOG}"))?
        .query_map([], change)?
        .map(|c| c.map(|c| ((c.tbl.clone(), c.key.clone()), c)))
        .collect::<rusqlite::Result<_>>()?;
    if object_sql(&tx, "table", QUEUE)?.is_some() {
        let queued = tx
            .prepare_cached(&format!(
                "SELECT tbl, key, seq, op, at FROM {QUEUE} WHERE seq > {FOLDED_HI} ORDER BY seq"
            ))?
            .query_map([], change)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for c in queued {
            match by_key.entry((c.tbl.clone(), c.key.clone())) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    let e = e.get_mut();
                    e.seq = c.seq;
                    e.op = c.op;
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(c);
                }
            }
        }
    }
    tx.commit()?;
    let mut changes: Vec<Change> = by_key.into_values().collect();
    changes.sort_by_key(|c| c.seq);
    changes.truncate(limit);
    Ok(changes)
}

/// Queue entries folded into the log per write transaction: a few
/// milliseconds of the file's write lock.
pub(super) const FOLD_STEP: usize = 2000;

/// Fold the queue into the log: every entry committed before the call, in
/// `seq` order, [`FOLD_STEP`] at a time, each step in a short write
/// transaction of its own. A claim does it when the queue not folded spans
/// more than [`READ_QUEUE_MAX`] entries (a backlog: the daemon was stopped).
/// A key's entry takes the `seq` and `op` of its
/// latest change and keeps the time of its oldest pending one (the lag).
/// Returns the entries folded; none (and no write) when the queue holds
/// nothing new.
pub(super) fn fold(conn: &mut Connection) -> Result<usize> {
    let (top, folded) = queue_top(conn)?;
    let Some(top) = top.filter(|t| *t > folded) else {
        return Ok(0);
    };
    let mut n = 0;
    loop {
        let (step, hi) = immediate(conn, |tx| fold_step(tx, top))?;
        n += step;
        if hi >= top || step == 0 {
            return Ok(n);
        }
    }
}

/// Fold the queue inside the caller's write transaction: at least every
/// entry up to `upto`, [`FOLD_STEP`] at a time.
fn fold_in(tx: &Connection, upto: i64) -> Result<()> {
    let (Some(top), _) = queue_top(tx)? else {
        return Ok(());
    };
    loop {
        let (n, hi) = fold_step(tx, top)?;
        if n == 0 || hi >= upto || hi >= top {
            return Ok(());
        }
    }
}

/// One step of [`fold`]: the next [`FOLD_STEP`] entries up to `top`.
/// Returns how many, and the `seq` folded up to.
fn fold_step(tx: &Connection, top: i64) -> Result<(usize, i64)> {
    let folded: i64 = tx.query_row(&format!("SELECT {FOLDED_HI}"), [], |r| r.get(0))?;
    let hi: Option<i64> = tx
        .prepare_cached(&format!(
            "SELECT max(seq) FROM (SELECT seq FROM {QUEUE} WHERE seq > ?1 AND seq <= ?2 \
             ORDER BY seq LIMIT ?3)"
        ))?
        .query_row(params![folded, top, FOLD_STEP as i64], |r| r.get(0))?;
    let Some(hi) = hi else {
        return Ok((0, folded));
    };
    // In `seq` order: of a key's entries, the latest is upserted last.
    let n = tx
        .prepare_cached(&format!(
            "INSERT INTO {LOG} (tbl, key, seq, op, at) SELECT tbl, key, seq, op, at FROM {QUEUE} \
             WHERE seq > ?1 AND seq <= ?2 ORDER BY seq \
             ON CONFLICT (tbl, key) DO UPDATE SET seq = excluded.seq, op = excluded.op"
        ))?
        .execute(params![folded, hi])?;
    // The last row stays (folded, below the mark): SQLite numbers the next
    // change above it.
    tx.prepare_cached(&format!(
        "DELETE FROM {QUEUE} WHERE seq <= ?1 AND seq < (SELECT max(seq) FROM {QUEUE})"
    ))?
    .execute([hi])?;
    tx.prepare_cached(&format!(
        "INSERT INTO {META} (name, value) VALUES ('folded_hi', ?1) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value"
    ))?
    .execute([hi])?;
    Ok((n, hi))
}

/// The oldest `limit` pending changes with a `seq` above `after` (all of
/// them: `None`), in commit order, as a claim reads them: the index on `seq`
/// holds every column read (`tbl` and `key` are the table's primary key), so
/// SQLite never visits the table itself.
fn read_claimable(conn: &Connection, after: Option<i64>, limit: usize) -> Result<Vec<Claimed>> {
    let bound = if after.is_some() {
        "seq > ?1"
    } else {
        "?1 IS NULL"
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT tbl, key, seq FROM {LOG} WHERE {bound} ORDER BY seq LIMIT ?2"
    ))?;
    let rows = stmt
        .query_map(params![after, limit as i64], |r| {
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
pub(crate) fn key_hash(tbl: &str, key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (tbl, key).hash(&mut h);
    h.finish()
}

/// Whether the file has a change log (capture installed). A write checks it
/// inside its own transaction: every DoX table it writes then records its
/// changes there (or, for a table whose triggers are gone, is re-sent whole
/// once the drainer re-installs them: [`super::install_on`]).
pub(crate) fn log_present(conn: &Connection, shape: &mut LogShape) -> Result<bool> {
    // The schema cookie: any connection's schema change (install, uninstall,
    // the app re-creating a table) changes it.
    let version = schema_version(conn)?;
    if let Some((v, present)) = shape.0 {
        if v == version {
            return Ok(present);
        }
    }
    let present = object_sql(conn, "table", LOG)?.is_some();
    shape.0 = Some((version, present));
    Ok(present)
}

/// Whether a file has a change log, remembered by [`log_present`] while the file's
/// `schema_version` stays the same: a writer that checks every write
/// (`SqliteDatabase`) keeps one per connection and spares itself a read of
/// `sqlite_master` per write.
#[derive(Debug, Default)]
pub(crate) struct LogShape(Option<(i64, bool)>);

/// `PRAGMA schema_version`: changes whenever any connection changes the
/// schema (a table created, dropped or re-created, a trigger installed).
pub(crate) fn schema_version(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("PRAGMA schema_version")?
        .query_row([], |r| r.get(0))?)
}

/// The span of `seq` not folded yet (from `folded_hi` to the queue's last
/// row) past which a claim folds the queue first ([`fold`]) instead of
/// reading it: what a claim holds in memory stays bounded, and a backlog
/// coalesces in the log. A drainer that keeps up stays far below it, and so
/// never folds: its acknowledgements delete from the queue itself. Reading
/// drains faster than folding first (a 38,000-entry backlog 0.42 s against
/// 0.59 s, 95,000 entries 2.1 s against 2.6 s) but holds the queue in memory
/// for each claim (the daemon's peak RSS 57-64 MB at 38,000, 78-107 MB at
/// 95,000, against 36-39 MB folded): 40,000 keeps it well under 100 MB.
pub(super) const READ_QUEUE_MAX: i64 = 20 * FOLD_STEP as i64;

/// The queue's last `seq` and the `seq` it is folded up to.
fn queue_top(conn: &Connection) -> Result<(Option<i64>, i64)> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT (SELECT max(seq) FROM {QUEUE}), {FOLDED_HI}"
        ))?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?)
}

/// The queue's entries not folded yet (above `after` too, when given), in
/// `seq` order, each with whether it is its key's latest (what a fold would
/// keep: the others are superseded).
fn read_queued(conn: &Connection, after: Option<i64>) -> Result<Vec<(Claimed, bool)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT tbl, key, seq FROM {QUEUE} WHERE seq > max({FOLDED_HI}, coalesce(?1, 0)) \
         ORDER BY seq"
    ))?;
    let rows = stmt
        .query_map([after], |r| {
            Ok(Claimed {
                tbl: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                key: lenient_key(r.get_ref(1)?),
                seq: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut latest: std::collections::HashMap<(&str, &str), usize> =
        std::collections::HashMap::with_capacity(rows.len());
    let mut is_latest = vec![true; rows.len()];
    for (i, c) in rows.iter().enumerate() {
        if let Some(prev) = latest.insert((c.tbl.as_str(), c.key.as_str()), i) {
            is_latest[prev] = false;
        }
    }
    drop(latest);
    Ok(rows.into_iter().zip(is_latest).collect())
}

/// The drainer's claim: the oldest `limit` pending changes with a `seq`
/// above `after`, in commit order, in one read transaction: the log's
/// entries, then the queue's not folded yet (every entry of the log is
/// numbered at or below the mark `folded_hi`, every entry of the queue not
/// folded above it), coalesced by key as a fold would: a key of the log with
/// a newer change in the queue is pending at that change's `seq`. Nothing is
/// written: the acknowledgement deletes what the claim took ([`ack_runs`]).
/// Only when the queue not folded spans more than [`READ_QUEUE_MAX`] entries
/// (the daemon was stopped, say) does the claim fold it first ([`fold`]:
/// short write transactions of their own).
///
/// `busy`: the [`key_hash`]es of the keys in batches still in flight; their
/// entries are left for a later claim, so that a key is never in two batches
/// at once. `after`: `None` (from the first entry), or a `seq` at or below
/// which every pending entry is in flight or busy (the drainer reads on from
/// its last claim instead of reading its batches in flight again).
pub(crate) fn claim_changes(
    conn: &mut Connection,
    limit: usize,
    after: Option<i64>,
    busy: &std::collections::HashSet<u64>,
) -> Result<Claim> {
    let (top, folded) = queue_top(conn)?;
    if top.is_some_and(|t| t - folded > READ_QUEUE_MAX) {
        fold(conn)?;
    }
    let mut claim = Claim::default();
    let tx = conn.transaction()?;
    // When the log holds nothing above `after`, the queue is read on from
    // there too: a key's latest entry above it is found all the same, and
    // no entry of the log is read (whose key a newer entry would replace).
    let log_top: Option<i64> = tx
        .prepare_cached(&format!("SELECT max(seq) FROM {LOG}"))?
        .query_row([], |r| r.get(0))?;
    let from = after.filter(|a| log_top.is_none_or(|l| l <= *a));
    let queued = read_queued(&tx, from)?;
    let newer: std::collections::HashSet<(&str, &str)> = queued
        .iter()
        .map(|(c, _)| (c.tbl.as_str(), c.key.as_str()))
        .collect();
    // The run of entries claimed since the last one left (or the start).
    let mut run: Option<(i64, i64)> = None;
    let extend = |run: &mut Option<(i64, i64)>, seq: i64| {
        *run = Some((run.map_or(seq, |(lo, _)| lo), seq));
    };
    let take = |claim: &mut Claim, run: &mut Option<(i64, i64)>, c: Claimed| {
        if busy.is_empty() || !busy.contains(&key_hash(&c.tbl, &c.key)) {
            extend(run, c.seq);
            claim.changes.push(c);
        } else {
            claim.skipped_from.get_or_insert(c.seq);
            claim.runs.extend(run.take());
        }
    };
    let mut from = after;
    while claim.changes.len() < limit {
        let want = limit - claim.changes.len();
        let read = read_claimable(&tx, from, want)?;
        let Some(last) = read.last() else { break };
        from = Some(last.seq);
        let exhausted = read.len() < want;
        for c in read {
            if newer.is_empty() || !newer.contains(&(c.tbl.as_str(), c.key.as_str())) {
                take(&mut claim, &mut run, c);
            } else {
                // Pending at its newer `seq` (in the queue): this entry is in
                // the range, so that it leaves the log with the claim (the
                // newer one stays pending unless claimed too).
                extend(&mut run, c.seq);
                claim.superseded_in(&c.tbl);
            }
        }
        if exhausted {
            break;
        }
    }
    for (c, latest) in &queued {
        if claim.changes.len() >= limit {
            break;
        }
        if after.is_some_and(|a| c.seq <= a) {
            continue;
        }
        if *latest {
            take(&mut claim, &mut run, c.clone());
        } else {
            // Superseded by its key's newer entry: in the range as well.
            extend(&mut run, c.seq);
            claim.superseded_in(&c.tbl);
        }
    }
    claim.runs.extend(run);
    tx.commit()?;
    Ok(claim)
}

/// What [`claim_changes`] took, in commit order, and the lowest `seq` it left
/// because its key was busy.
#[derive(Debug, Default)]
pub(crate) struct Claim {
    pub changes: Vec<Claimed>,
    pub skipped_from: Option<i64>,
    /// The `seq` ranges (both ends included) the claimed entries fill: every
    /// entry pending in a range when the claim ran was claimed by it, or is
    /// superseded by a newer entry of its key (which stays pending unless
    /// claimed too). One range unless a busy key's entry was left in between
    /// (see [`ack_runs`]).
    pub runs: Vec<(i64, i64)>,
    /// The tables of the superseded entries in [`Claim::runs`]. Their
    /// entries in the ranges go with the acknowledgement of every table the
    /// batch sent, and of each of these it sent nothing of: a key's older
    /// change, in a batch that did not send the key, is never left behind
    /// (pending after its latest change was sent, with nobody to claim it).
    pub superseded: Vec<String>,
}

impl Claim {
    fn superseded_in(&mut self, tbl: &str) {
        if !self.superseded.iter().any(|t| t == tbl) {
            self.superseded.push(tbl.to_owned());
        }
    }
}

/// Acknowledge the mirrored changes of the tables `acked` names, by the
/// ranges of `seq` their claim filled ([`Claim::runs`]), in one short write
/// transaction, the drainer's one write per batch: range deletes from the
/// queue where it is not folded (rowids in a row: a few pages; its last row
/// stays, folded instead, and the mark `folded_hi` moves up past what is
/// gone), and from the log by a range scan of its `seq` index, instead of a
/// look-up per change.
///
/// Exact: an entry in a range when the claim ran was claimed by it or is
/// superseded by a newer entry of its key (the claim reads the log and then
/// the queue in `seq` order, and every entry it read and left ends a range),
/// and no entry enters a range later. A key that changes again gets a new
/// `seq` above every claimed entry (see [`QUEUE`]), in the queue or, once
/// folded, in the log: outside the ranges either way, it stays.
pub(crate) fn ack_runs(conn: &mut Connection, acked: &[(&str, Vec<(i64, i64)>)]) -> Result<usize> {
    if acked.iter().all(|(_, runs)| runs.is_empty()) {
        return Ok(0);
    }
    immediate(conn, |tx| ack_runs_in(tx, acked))
}

/// The deletes of [`ack_runs`], in the caller's write transaction. Returns
/// the entries removed (a key's older entries in the queue count too).
pub(crate) fn ack_runs_in(tx: &Connection, acked: &[(&str, Vec<(i64, i64)>)]) -> Result<usize> {
    let mut n = 0;
    let (top, folded) = queue_top(tx)?;
    if let Some(top) = top.filter(|t| *t > folded) {
        let mut stmt = tx.prepare_cached(&format!(
            "DELETE FROM {QUEUE} WHERE seq BETWEEN ?1 AND ?2 AND tbl = ?3"
        ))?;
        let mut last = false;
        for (tbl, runs) in acked {
            for &(lo, hi) in runs {
                let (lo, below_top) = (lo.max(folded + 1), hi.min(top - 1));
                last |= lo <= top && top <= hi;
                if lo <= below_top {
                    n += stmt.execute(params![lo, below_top, tbl])?;
                }
            }
        }
        if last {
            // The last row stays: it is folded (with the entries below it
            // not acknowledged), and leaves the log below.
            fold_in(tx, top)?;
        } else {
            // The mark moves up to the first entry left: everything below
            // it is gone.
            tx.prepare_cached(&format!(
                "UPDATE {META} SET value = (SELECT min(seq) - 1 FROM {QUEUE} WHERE seq > ?1) \
                 WHERE name = 'folded_hi' AND value < (SELECT min(seq) - 1 FROM {QUEUE} WHERE seq > ?1)"
            ))?
            .execute([folded])?;
        }
    }
    // `+tbl`: the index on `seq`, not the primary key's `tbl` prefix (all
    // of a table's pending entries), is the one to walk.
    let mut stmt = tx.prepare_cached(&format!(
        "DELETE FROM {LOG} WHERE +tbl = ?1 AND seq BETWEEN ?2 AND ?3"
    ))?;
    for (tbl, runs) in acked {
        for (lo, hi) in runs {
            n += stmt.execute(params![tbl, lo, hi])?;
        }
    }
    Ok(n)
}

/// A claim inside the caller's write transaction, where no other connection
/// can commit (`cutover run`'s fence): the whole queue is folded into the
/// log, and the oldest `limit` entries are read with the one `seq` range
/// they fill (every entry in it is claimed).
pub(crate) fn claim_in(tx: &Connection, limit: usize) -> Result<Claim> {
    fold_in(tx, i64::MAX)?;
    let changes = read_claimable(tx, None, limit)?;
    let runs = match (changes.first(), changes.last()) {
        (Some(a), Some(b)) => vec![(a.seq, b.seq)],
        _ => Vec::new(),
    };
    Ok(Claim {
        changes,
        skipped_from: None,
        runs,
        superseded: Vec::new(),
    })
}

/// The highest `seq` given so far (the change log's position: a change made
/// later is numbered above it).
pub(crate) fn position(conn: &Connection) -> Result<i64> {
    let (top, folded) = queue_top(conn)?;
    Ok(top.unwrap_or(folded).max(folded))
}

/// `runs` without the entries `seqs` (changes a batch leaves in the log, to
/// be sent again): each range holding one is cut around it.
pub(crate) fn runs_without(runs: &[(i64, i64)], seqs: &[i64]) -> Vec<(i64, i64)> {
    let mut out = Vec::with_capacity(runs.len() + seqs.len());
    for &(lo, hi) in runs {
        let mut cut: Vec<i64> = seqs
            .iter()
            .copied()
            .filter(|s| (lo..=hi).contains(s))
            .collect();
        cut.sort_unstable();
        let mut from = lo;
        for s in cut {
            if s > from {
                out.push((from, s - 1));
            }
            from = s + 1;
        }
        if from <= hi {
            out.push((from, hi));
        }
    }
    out
}

/// Acknowledge mirrored changes one by one, in one short write transaction
/// that first folds the queue up to them. A key changed again
/// since it was claimed stays pending: its entry in the log has a new `seq`
/// (folded since), or its change still waits in the queue.
pub(crate) fn ack(conn: &mut Connection, done: &[Claimed]) -> Result<usize> {
    if done.is_empty() {
        return Ok(0);
    }
    let upto = done.iter().map(|c| c.seq).max().unwrap_or(0);
    immediate(conn, |tx| {
        fold_in(tx, upto)?;
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

/// `PRAGMA data_version`: changes whenever another connection commits.
pub(crate) fn data_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_cut_around_the_entries_left() {
        assert_eq!(runs_without(&[(1, 10)], &[]), [(1, 10)]);
        assert_eq!(runs_without(&[(1, 10)], &[1, 5, 10]), [(2, 4), (6, 9)]);
        assert_eq!(runs_without(&[(1, 3), (7, 7)], &[7, 2]), [(1, 1), (3, 3)]);
    }

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

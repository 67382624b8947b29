//! Change capture: triggers on every DoX table append (table, key, operation)
//! to a change log inside the writer's own transaction, whoever the writer is
//! (DoX's Python code, `sqlite3`, another process). The row and its change
//! record commit or vanish together, so nothing the app commits can escape.
//!
//! The log is a dirty-key table, one row per (table, key) with the latest
//! sequence number: repeated changes to a key coalesce, so the log is bounded
//! by the number of distinct keys changed. The drainer (`serve`) reads keys,
//! reads the rows as they are now, mirrors them, and acknowledges with
//! `DELETE … WHERE tbl = ? AND key = ? AND seq = <seq read>`: a key changed
//! again during the send keeps its row and goes again.
//!
//! Every object this module creates is named `_dualwrite_…` (no DoX table
//! starts with an underscore); `uninstall` removes exactly those.
//!
//! This module and `db/sqlite/` are the only ones that touch rusqlite. The
//! functions here are blocking: async callers run them in `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use crate::catalogue::{Table, TABLES};
use crate::error::{Error, Result};

/// The prefix of every object capture creates.
pub const PREFIX: &str = "_dualwrite_";
/// The change log.
pub const LOG: &str = "_dualwrite_changes";
const LOG_SEQ_INDEX: &str = "_dualwrite_changes_seq";

/// How long a capture command waits for the app's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The next sequence number: above every pending entry and above the drainers'
/// watermark ([`CLAIM`]), so that `seq` never goes back, even when the log
/// empties, and an entry created after a claim is never taken for a claimed one.
const NEXT_SEQ: &str = "(max((SELECT coalesce(max(seq), 0) FROM _dualwrite_changes), \
     (SELECT coalesce(max(hi), 0) FROM _dualwrite_claim)) + 1)";

/// `now` as seconds since the epoch, in any SQLite version (`unixepoch('subsec')`
/// needs 3.42; the app's own SQLite library, which runs the triggers, may be older).
const NOW_SQL: &str = "((julianday('now') - 2440587.5) * 86400.0)";

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn log_sql() -> String {
    format!(
        "CREATE TABLE {LOG} (\n\
         \ttbl TEXT NOT NULL,\n\
         \tkey TEXT NOT NULL,\n\
         \tseq INTEGER NOT NULL,\n\
         \top TEXT NOT NULL,\n\
         \tat REAL NOT NULL,\n\
         \tfirst INTEGER,\n\
         \tPRIMARY KEY (tbl, key)\n) WITHOUT ROWID"
    )
}

fn index_sql() -> String {
    format!("CREATE INDEX {LOG_SEQ_INDEX} ON {LOG} (seq)")
}

/// The statement a trigger runs for one key: insert the key, or give the
/// pending entry a new sequence number. `at` (when the oldest pending change
/// was made) is kept, so the lag measures the oldest change not yet mirrored;
/// so are `first` (the `seq` the pending entry was created with: the embedded
/// dual layer acknowledges only entries its own transaction created) and
/// drainers record how far they have read in [`CLAIM`] (see [`claim_changes`]).
fn record(table: &str, key_expr: &str, op: &str) -> String {
    format!(
        "INSERT INTO {LOG} (tbl, key, seq, op, at, first) SELECT {}, {key_expr}, \
         {NEXT_SEQ}, '{op}', {NOW_SQL}, {NEXT_SEQ} WHERE {key_expr} IS NOT NULL \
         ON CONFLICT (tbl, key) DO UPDATE SET seq = excluded.seq, op = excluded.op;",
        sql_string(table)
    )
}

/// Columns added to the change log after its first release: a log created
/// before gets them on `install` (and when `serve` starts).
const LATER_COLUMNS: [&str; 1] = ["first"];

/// How far a drainer has read the log: one row, the highest `seq` it claimed.
/// An entry created at or below it (`first`) may be in a drainer's hands.
pub const CLAIM: &str = "_dualwrite_claim";

fn claim_sql() -> String {
    format!("CREATE TABLE {CLAIM} (hi INTEGER NOT NULL)")
}

fn log_columns(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT name FROM pragma_table_info({})",
        sql_string(LOG)
    ))?;
    let cols = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(cols)
}

/// Add what a change log created by an older version lacks.
fn upgrade_log(conn: &Connection) -> Result<Vec<String>> {
    let have = log_columns(conn)?;
    let mut added = Vec::new();
    if object_sql(conn, "table", CLAIM)?.is_none() {
        conn.execute_batch(&claim_sql())?;
        added.push(CLAIM.to_owned());
    }
    for c in LATER_COLUMNS {
        if !have.iter().any(|h| h == c) {
            conn.execute_batch(&format!("ALTER TABLE {LOG} ADD COLUMN {c} INTEGER"))?;
            added.push(format!("{LOG}.{c}"));
        }
    }
    Ok(added)
}

/// The three triggers of a table: (name, SQL as stored in sqlite_master).
fn triggers_sql(t: &Table) -> [(String, String); 3] {
    let name = t.sqlite;
    let key = quote(t.key().sqlite);
    let q = quote(name);
    let ins = format!("{PREFIX}{name}_ins");
    let upd = format!("{PREFIX}{name}_upd");
    let del = format!("{PREFIX}{name}_del");
    [
        (
            ins.clone(),
            format!(
                "CREATE TRIGGER {ins} AFTER INSERT ON {q} BEGIN {} END",
                record(name, &format!("NEW.{key}"), "I")
            ),
        ),
        (
            upd.clone(),
            // A key-changing update records the old key (gone) and the new one.
            format!(
                "CREATE TRIGGER {upd} AFTER UPDATE ON {q} BEGIN {} {} END",
                record(
                    name,
                    &format!("(CASE WHEN OLD.{key} IS NOT NEW.{key} THEN OLD.{key} END)"),
                    "D"
                ),
                record(name, &format!("NEW.{key}"), "U")
            ),
        ),
        (
            del.clone(),
            format!(
                "CREATE TRIGGER {del} AFTER DELETE ON {q} BEGIN {} END",
                record(name, &format!("OLD.{key}"), "D")
            ),
        ),
    ]
}

/// Open a DoX file for capture's own writes: it must exist, be a SQLite
/// database, be writable, and hold at least one DoX table.
pub fn open_rw(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(Error::invalid(format!(
            "{}: no such file (capture works on an existing DoX database; check DB_PATH / --db-path)",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::Sqlite(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    check_dox(&conn, path)?;
    if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) {
        return Err(Error::invalid(format!(
            "{}: the file is read-only for this user; capture needs to write to it",
            path.display()
        )));
    }
    Ok(conn)
}

/// Open a DoX file without changing it (status).
pub fn open_ro(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(Error::invalid(format!(
            "{}: no such file (check DB_PATH / --db-path)",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::Sqlite(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    check_dox(&conn, path)?;
    Ok(conn)
}

/// The catalogue tables this file has (real tables, not views or virtual tables).
fn dox_tables(conn: &Connection) -> Result<Vec<&'static Table>> {
    let mut out = Vec::new();
    for t in TABLES {
        let sql: Option<String> = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [t.sqlite],
                |r| r.get(0),
            )
            .optional()?;
        let Some(sql) = sql else { continue };
        if sql
            .trim_start()
            .to_ascii_uppercase()
            .starts_with("CREATE VIRTUAL")
        {
            continue;
        }
        // A trigger naming a column the table lacks would fail the app's writes.
        let has_key: bool = conn.query_row(
            &format!(
                "SELECT count(*) > 0 FROM pragma_table_info({}) WHERE name = ?1",
                sql_string(t.sqlite)
            ),
            [t.key().sqlite],
            |r| r.get(0),
        )?;
        if has_key {
            out.push(t);
        }
    }
    Ok(out)
}

fn check_dox(conn: &Connection, path: &Path) -> Result<()> {
    let tables = match dox_tables(conn) {
        Ok(t) => t,
        Err(e) => {
            return Err(Error::invalid(format!(
                "{} is not a SQLite database ({e})",
                path.display()
            )))
        }
    };
    if tables.is_empty() {
        let names: Vec<&str> = TABLES.iter().map(|t| t.sqlite).collect();
        return Err(Error::invalid(format!(
            "{} is not a DoX database: it has none of the DoX tables ({})",
            path.display(),
            names.join(", ")
        )));
    }
    Ok(())
}

/// Run `f` in a `BEGIN IMMEDIATE` transaction: it takes the write lock at once
/// (waiting up to the busy timeout), so it never fails half-way with
/// `SQLITE_BUSY_SNAPSHOT` because the app committed meanwhile.
fn immediate<R>(conn: &mut Connection, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let r = f(&tx)?;
    tx.commit()?;
    Ok(r)
}

fn object_sql(conn: &Connection, kind: &str, name: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = ?1 AND name = ?2",
            params![kind, name],
            |r| r.get(0),
        )
        .optional()?)
}

/// What `install` did.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    pub path: String,
    /// Objects created (or replaced because they differed); empty when all were in place.
    pub created: Vec<String>,
    /// Tables that carry capture triggers.
    pub tables: Vec<String>,
    pub journal_mode: String,
    /// The legacy failure log, imported into the change log.
    pub failure_log: Option<ImportReport>,
}

/// Install (or complete, or repair) capture on an open connection. Idempotent:
/// objects already in place are left untouched.
pub fn install_on(conn: &mut Connection) -> Result<InstallReport> {
    // WAL: the app's readers and writers and the drainer do not block each other.
    let journal_mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    let path = conn.path().unwrap_or_default().to_owned();
    let (created, tables) = immediate(conn, |tx| {
        let mut created = Vec::new();
        if object_sql(tx, "table", LOG)?.is_none() {
            tx.execute_batch(&log_sql())?;
            created.push(LOG.to_owned());
        } else {
            created.extend(upgrade_log(tx)?);
        }
        if object_sql(tx, "index", LOG_SEQ_INDEX)?.is_none() {
            tx.execute_batch(&index_sql())?;
            created.push(LOG_SEQ_INDEX.to_owned());
        }
        if object_sql(tx, "table", CLAIM)?.is_none() {
            tx.execute_batch(&claim_sql())?;
            created.push(CLAIM.to_owned());
        }
        let tables = dox_tables(tx)?;
        for t in &tables {
            for (name, sql) in triggers_sql(t) {
                match object_sql(tx, "trigger", &name)? {
                    Some(existing) if existing == sql => continue,
                    Some(_) => tx.execute_batch(&format!("DROP TRIGGER {name}"))?,
                    None => {}
                }
                tx.execute_batch(&sql)?;
                created.push(name);
            }
        }
        Ok((created, tables))
    })?;
    Ok(InstallReport {
        path,
        created,
        tables: tables.iter().map(|t| t.sqlite.to_owned()).collect(),
        journal_mode,
        failure_log: None,
    })
}

/// Install capture; then import the legacy failure log, when there is one.
pub fn install(path: &Path, failure_log: Option<&Path>) -> Result<InstallReport> {
    let mut conn = open_rw(path)?;
    let mut r = install_on(&mut conn)?;
    if let Some(f) = failure_log {
        r.failure_log = Some(import_failures(&mut conn, f)?);
    }
    Ok(r)
}

/// Every object in the file whose name starts with the capture prefix.
fn our_objects(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(
        "SELECT type, name FROM sqlite_master WHERE substr(name, 1, 11) = '_dualwrite_' \
         AND type IN ('trigger', 'table', 'index') ORDER BY type = 'table', name",
    )?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
    Ok(rows)
}

/// What `uninstall` removed.
#[derive(Debug, Clone, Serialize)]
pub struct UninstallReport {
    pub path: String,
    pub dropped: Vec<String>,
    /// Pending changes discarded (only with `force`).
    pub discarded_changes: u64,
}

/// Remove every object capture made (and nothing else). Refuses while changes
/// are pending, unless `force`: they would never reach Supabase.
pub fn uninstall(path: &Path, force: bool) -> Result<UninstallReport> {
    let mut conn = open_rw(path)?;
    immediate(&mut conn, |tx| {
        let pending = if object_sql(tx, "table", LOG)?.is_some() {
            pending_on(tx)?.0
        } else {
            0
        };
        if pending > 0 && !force {
            return Err(Error::invalid(format!(
                "{}: {pending} captured change(s) are not mirrored yet; let `dualwrite serve` drain them \
                 (`dualwrite capture status`), or pass --force to discard them",
                path.display()
            )));
        }
        let objects = our_objects(tx)?;
        for (kind, name) in &objects {
            // Dropping the table drops its index with it.
            if kind == "index" {
                continue;
            }
            tx.execute_batch(&format!(
                "DROP {} IF EXISTS {}",
                kind.to_uppercase(),
                quote(name)
            ))?;
        }
        Ok(UninstallReport {
            path: path.display().to_string(),
            dropped: objects.into_iter().map(|(_, n)| n).collect(),
            discarded_changes: pending,
        })
    })
}

/// What [`import_failures`] did with the legacy NDJSON failure log.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ImportReport {
    pub file: String,
    /// Failure records turned into pending changes (their lines leave the file).
    pub imported: u64,
    /// Records kept in the file for `dualwrite replay`: deletes by document or of
    /// whole tables name no row key, so the state-based log cannot express them.
    pub kept: u64,
}

/// The row keys a recorded failure touched, when it names them all.
fn failure_keys(line: &str) -> Option<Vec<(&'static Table, String)>> {
    let f: crate::db::SecondaryFailure = serde_json::from_str(line).ok()?;
    match f.write.steps() {
        // Read-modify-write methods: the record's table and key are the row's.
        None => {
            let t = TABLES.iter().copied().find(|t| t.sqlite == f.table)?;
            (!f.key.is_empty()).then(|| vec![(t, f.key)])
        }
        Some(steps) => {
            let mut keys = Vec::new();
            for st in steps {
                match st {
                    crate::model::Step::Upsert { table, rows } => {
                        for r in rows {
                            keys.push((table, r.first()?.display()));
                        }
                    }
                    _ => return None,
                }
            }
            Some(keys)
        }
    }
}

/// Import the legacy failure log (`dual.failure_log`) into the change log,
/// once: each record that names its rows becomes a pending change (the drainer
/// then sends those rows as they are now, so an old payload can never
/// overwrite a newer row) and leaves the file; the others stay for `replay`.
/// The file is rewritten atomically; with nothing left it is removed.
pub fn import_failures(conn: &mut Connection, file: &Path) -> Result<ImportReport> {
    let mut report = ImportReport {
        file: file.display().to_string(),
        ..ImportReport::default()
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(e.into()),
    };
    let mut keep = String::new();
    let mut marks = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let replayed = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("replayed").and_then(serde_json::Value::as_bool))
            .unwrap_or(false);
        match failure_keys(line) {
            Some(keys) if !replayed => {
                marks.extend(keys);
                report.imported += 1;
            }
            _ => {
                keep.push_str(line);
                keep.push('\n');
                report.kept += u64::from(!replayed);
            }
        }
    }
    if report.imported == 0 {
        return Ok(report);
    }
    immediate(conn, |tx| {
        let mut stmt = tx.prepare(&format!(
            "INSERT INTO {LOG} (tbl, key, seq, op, at) VALUES (?1, ?2, \
             {NEXT_SEQ}, 'U', {NOW_SQL}) \
             ON CONFLICT (tbl, key) DO UPDATE SET seq = excluded.seq"
        ))?;
        for (t, k) in &marks {
            stmt.execute(params![t.sqlite, k])?;
        }
        Ok(())
    })?;
    // After the commit: a crash in between imports the records twice, which
    // only marks the same keys again.
    if keep.is_empty() {
        std::fs::remove_file(file)?;
    } else {
        let tmp = file.with_extension("ndjson.tmp");
        std::fs::write(&tmp, keep)?;
        std::fs::rename(&tmp, file)?;
    }
    Ok(report)
}

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

fn pending_on(conn: &Connection) -> Result<(u64, f64)> {
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

pub fn status_on(conn: &Connection) -> Result<CaptureStatus> {
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

/// A change row that cannot be drained (unknown table, key not text): it is
/// moved to the rejects file with this reason instead of blocking the log.
pub fn check_change(c: &Change) -> std::result::Result<&'static Table, String> {
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

/// The oldest `limit` pending changes, in commit order. One statement: the
/// read transaction ends with it, before anything is sent.
pub fn read_changes(conn: &Connection, limit: usize) -> Result<Vec<Change>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT tbl, key, seq, op, at FROM {LOG} ORDER BY seq LIMIT ?1"
    ))?;
    let rows = stmt
        .query_map([limit as i64], |r| {
            // A corrupt row (a key that is not text, say) must not stop the drain:
            // it is read leniently and reported by check_change.
            let key = match r.get_ref(1)? {
                rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                other => format!("<{:?}>", other.data_type()),
            };
            Ok(Change {
                tbl: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                key,
                seq: r.get(2)?,
                op: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                at: r.get::<_, Option<f64>>(4)?.unwrap_or(0.0),
                fresh: false,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Where a write transaction's own change rows start: `None` when the file
/// has no change log (capture not installed), else the highest `seq` so far
/// and whether the log can tell which entries a transaction created (a log
/// from an older version cannot until `install` or `serve` upgrades it).
/// Called inside the write transaction (which holds the file's write lock)
/// before the write: see [`changes_after`].
pub fn log_mark(conn: &Connection) -> Result<Option<(i64, bool)>> {
    let present: bool = conn
        .prepare_cached(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_dualwrite_changes'",
        )?
        .query_row([], |r| r.get(0))?;
    if !present {
        return Ok(None);
    }
    let max: i64 = conn
        .prepare_cached(&format!("SELECT coalesce(max(seq), 0) FROM {LOG}"))?
        .query_row([], |r| r.get(0))?;
    let cols = log_columns(conn)?;
    let current = LATER_COLUMNS.iter().all(|c| cols.iter().any(|h| h == c))
        && object_sql(conn, "table", CLAIM)?.is_some();
    Ok(Some((max, current)))
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
pub fn ack_own(conn: &mut Connection, done: &[Change]) -> Result<usize> {
    let fresh: Vec<&Change> = done.iter().filter(|c| c.fresh).collect();
    if fresh.is_empty() {
        return Ok(0);
    }
    immediate(conn, |tx| {
        let mut stmt = tx.prepare_cached(&format!(
            "DELETE FROM {LOG} WHERE tbl = ?1 AND key = ?2 AND seq = ?3 AND at = ?4 \
             AND first > coalesce((SELECT max(hi) FROM {CLAIM}), 0)"
        ))?;
        let mut n = 0;
        for c in fresh {
            n += stmt.execute(params![c.tbl, c.key, c.seq, c.at])?;
        }
        Ok(n)
    })
}

/// The drainer's read: the oldest `limit` pending changes, in commit order,
/// claimed in the same short write transaction (the [`CLAIM`] watermark
/// rises to the highest `seq` read). From then on a
/// writer no longer acknowledges these entries itself: its mirror may race
/// with the drainer's send of the same key, and only the drainer, which sends
/// the row as it is after the claim, may remove them.
///
/// `skip`: (table, key) pairs of batches still in flight; their entries are
/// left for a later claim, so that a key is never in two batches at once.
pub fn claim_changes(
    conn: &mut Connection,
    limit: usize,
    skip: &std::collections::HashSet<(String, String)>,
) -> Result<Vec<Change>> {
    immediate(conn, |tx| {
        let mut rows = read_changes(tx, limit + skip.len())?;
        if !skip.is_empty() {
            rows.retain(|c| !skip.contains(&(c.tbl.clone(), c.key.clone())));
        }
        rows.truncate(limit);
        if let Some(last) = rows.last() {
            // One small row, whatever the batch's size: the watermark. Every
            // entry read has `first` <= its `seq` <= `last.seq`.
            tx.prepare_cached(&format!("DELETE FROM {CLAIM} WHERE hi < ?1"))?
                .execute([last.seq])?;
            tx.prepare_cached(&format!(
                "INSERT INTO {CLAIM} (hi) SELECT ?1 WHERE NOT EXISTS (SELECT 1 FROM {CLAIM})"
            ))?
            .execute([last.seq])?;
        }
        Ok(rows)
    })
}

/// Bring a change log created by an older version up to date (`serve` at start).
pub fn upgrade(conn: &mut Connection) -> Result<Vec<String>> {
    immediate(conn, upgrade_log)
}

/// Acknowledge mirrored changes, in one short write transaction. A change
/// whose key changed again since it was read has a new `seq` and stays.
pub fn ack(conn: &mut Connection, done: &[Change]) -> Result<usize> {
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

/// Make every commit read so far durable before it is mirrored: the app may
/// run with `synchronous=NORMAL`, where a commit in WAL mode reaches the disk
/// only at the next checkpoint, and Supabase must never hold a row a power
/// loss could take from SQLite. One fsync of the WAL file covers every frame
/// written to it, whoever wrote them (see ARCHITECTURE.md, "Durability").
/// Commits already copied into the database file by a checkpoint are durable:
/// SQLite syncs the database file when a checkpoint completes.
///
/// Never open (and close) the database file itself here: closing any file
/// descriptor of a file drops every POSIX lock the process holds on it,
/// including SQLite's. Another process could then believe it is the last
/// connection, checkpoint and delete the WAL under this process's open
/// connections, and this process's later commits would be lost (seen: the
/// daemon's acknowledgements vanished). SQLite takes no lock on the `-wal`
/// file, so opening and syncing that one is safe.
pub fn make_durable(db: &Path) -> Result<()> {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    match std::fs::File::open(PathBuf::from(wal)) {
        Ok(f) => f.sync_data()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The single-daemon lease: an exclusive SQLite lock on `<db>.dualwrite.lock`,
/// held for the daemon's life and released by the OS if it dies (even by `kill -9`).
pub struct Lease {
    conn: Connection,
    pub path: PathBuf,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("path", &self.path).finish()
    }
}

pub fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".dualwrite.lock");
    PathBuf::from(p)
}

impl Lease {
    pub fn take(db: &Path) -> Result<Lease> {
        let path = lock_path(db);
        let conn = Connection::open(&path).map_err(|e| {
            Error::Sqlite(format!("cannot open the lock file {}: {e}", path.display()))
        })?;
        // A daemon holds the lock for its whole life, so a short wait is enough
        // to refuse; it only rides out a momentary reader (`lease_held`).
        conn.busy_timeout(Duration::from_millis(500))?;
        // Rollback journal, exclusive locking mode: the lock is held from the
        // first write until the connection closes.
        conn.execute_batch("PRAGMA journal_mode=DELETE; PRAGMA locking_mode=EXCLUSIVE;")
            .ok();
        let taken = conn.execute_batch(
            "BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS lease (pid INTEGER); DELETE FROM lease; COMMIT;",
        );
        match taken {
            Ok(()) => {
                conn.execute("INSERT INTO lease (pid) VALUES (?1)", [std::process::id()])?;
                Ok(Lease { conn, path })
            }
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    || e.code == rusqlite::ErrorCode::DatabaseLocked =>
            {
                Err(Error::invalid(format!(
                    "another `dualwrite serve` is already running on {} (it holds {}); only one daemon may drain a file",
                    db.display(),
                    path.display()
                )))
            }
            Err(e) => Err(Error::Sqlite(format!(
                "cannot take the lock {}: {e}",
                path.display()
            ))),
        }
    }

    /// Whether a daemon (or a background drainer) holds the lease on `db`,
    /// found without taking it and without writing anything: a read of the
    /// lock file fails at once while the holder's exclusive lock is on it.
    /// The read holds a shared lock for an instant; a daemon starting at that
    /// moment waits for it (`take` waits up to half a second).
    pub fn held_on(db: &Path) -> bool {
        let path = lock_path(db);
        let Ok(conn) = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        ) else {
            return false;
        };
        if conn.busy_timeout(Duration::ZERO).is_err() {
            return false;
        }
        match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        }) {
            Ok(_) => false,
            Err(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DatabaseBusy
                    || e.code == rusqlite::ErrorCode::DatabaseLocked
            }
            Err(_) => false,
        }
    }

    /// Whether the lease is still held (the connection is alive).
    pub fn held(&self) -> bool {
        self.conn.is_autocommit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(c: &Connection) -> Vec<(String, String, Option<String>)> {
        let mut s = c
            .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap()
    }

    fn dox_file(dir: &Path, legacy: bool) -> PathBuf {
        let p = dir.join("dox.sqlite3");
        let c = Connection::open(&p).unwrap();
        let json_col = if legacy { "json" } else { "table_content_json" };
        c.execute_batch(&format!(
            "CREATE TABLE artifact (id VARCHAR NOT NULL PRIMARY KEY, filename VARCHAR, status VARCHAR);
             CREATE TABLE doctable (id VARCHAR NOT NULL PRIMARY KEY, document_id VARCHAR NOT NULL, \"order\" INTEGER NOT NULL, {json_col} VARCHAR NOT NULL);
             CREATE TABLE app_other (x INTEGER);
             CREATE TABLE tagrow (rowname VARCHAR);
             INSERT INTO artifact VALUES ('a1', 'f', 'new');"
        ))
        .unwrap();
        p
    }

    #[test]
    fn install_is_idempotent_captures_and_uninstall_restores_the_schema() {
        let d = tempfile::tempdir().unwrap();
        let p = dox_file(d.path(), true);
        let before = schema(&Connection::open(&p).unwrap());
        let r = install(&p, None).unwrap();
        assert_eq!(r.tables, vec!["artifact", "doctable"]);
        assert_eq!(r.created.len(), 3 + 6);
        let once = schema(&Connection::open(&p).unwrap());
        let again = install(&p, None).unwrap();
        assert!(again.created.is_empty(), "{:?}", again.created);
        assert_eq!(schema(&Connection::open(&p).unwrap()), once);
        let st = status(&p).unwrap();
        assert!(st.installed && st.missing.is_empty(), "{st:?}");

        let app = Connection::open(&p).unwrap();
        app.execute_batch(
            "INSERT INTO doctable VALUES ('t1', 'd1', 0, '{}');
             UPDATE artifact SET status = 'done' WHERE id = 'a1';
             UPDATE artifact SET id = 'a2' WHERE id = 'a1';
             DELETE FROM doctable;
             INSERT INTO app_other VALUES (1);",
        )
        .unwrap();
        let changes = read_changes(&app, 100).unwrap();
        let got: Vec<(&str, &str, &str)> = changes
            .iter()
            .map(|c| (c.tbl.as_str(), c.key.as_str(), c.op.as_str()))
            .collect();
        // Coalesced by key, in the order of each key's last change.
        assert_eq!(
            got,
            vec![
                ("artifact", "a1", "D"),
                ("artifact", "a2", "U"),
                ("doctable", "t1", "D")
            ]
        );
        let seqs: Vec<i64> = changes.iter().map(|c| c.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(status(&p).unwrap().pending, 3);

        // An ack of a seq that has moved on removes nothing.
        let mut c = open_rw(&p).unwrap();
        app.execute("UPDATE artifact SET status = 'x' WHERE id = 'a2'", [])
            .unwrap();
        assert_eq!(ack(&mut c, &changes).unwrap(), 2);
        let left = read_changes(&app, 100).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].key, "a2");
        assert!(left[0].seq > changes[1].seq);

        let e = uninstall(&p, false).unwrap_err().to_string();
        assert!(e.contains("not mirrored yet"), "{e}");
        let u = uninstall(&p, true).unwrap();
        assert_eq!(u.discarded_changes, 1);
        assert_eq!(schema(&Connection::open(&p).unwrap()), before);
        assert!(!status(&p).unwrap().log_present);
    }

    #[test]
    fn a_recreated_table_shows_as_missing_and_install_repairs_it() {
        let d = tempfile::tempdir().unwrap();
        let p = dox_file(d.path(), false);
        install(&p, None).unwrap();
        let app = Connection::open(&p).unwrap();
        app.execute_batch(
            "DROP TABLE artifact; CREATE TABLE artifact (id VARCHAR NOT NULL PRIMARY KEY, filename VARCHAR);",
        )
        .unwrap();
        let st = status(&p).unwrap();
        assert!(!st.installed);
        assert_eq!(st.missing, vec!["artifact"]);
        let r = install(&p, None).unwrap();
        assert_eq!(r.created.len(), 3, "{:?}", r.created);
        assert!(status(&p).unwrap().installed);
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope.sqlite3");
        let e = install(&missing, None).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
        assert!(!missing.exists(), "a missing file must not be created");

        let text = d.path().join("notes.txt");
        std::fs::write(
            &text,
            "hello, this is not a database at all, just some text",
        )
        .unwrap();
        let e = install(&text, None).unwrap_err().to_string();
        assert!(e.contains("not a SQLite database"), "{e}");

        let other = d.path().join("other.sqlite3");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let e = install(&other, None).unwrap_err().to_string();
        assert!(e.contains("not a DoX database"), "{e}");

        let p = dox_file(d.path(), false);
        let mut perms = std::fs::metadata(&p).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&p, perms).unwrap();
        // Root ignores file modes; only check where they apply.
        if std::fs::OpenOptions::new().write(true).open(&p).is_err() {
            let e = install(&p, None).unwrap_err().to_string();
            assert!(e.contains("read-only"), "{e}");
        }
    }

    /// One app transaction: upsert artifact `id` with `status`, returning the
    /// change rows it recorded (as `db/sqlite/write.rs` reads them).
    fn app_write(c: &mut Connection, id: &str, status: &str) -> Vec<Change> {
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        let (mark, current) = log_mark(&tx).unwrap().unwrap();
        tx.execute(
            "INSERT INTO artifact (id, filename, status) VALUES (?1, 'f', ?2) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status",
            [id, status],
        )
        .unwrap();
        let got = changes_after(&tx, mark, current).unwrap();
        tx.commit().unwrap();
        got
    }

    #[test]
    fn a_writer_acknowledges_only_its_own_unclaimed_entries() {
        let d = tempfile::tempdir().unwrap();
        let p = dox_file(d.path(), false);
        install(&p, None).unwrap();
        let mut a = Connection::open(&p).unwrap();
        let mut b = Connection::open(&p).unwrap();
        let keys = |c: &Connection| -> Vec<String> {
            read_changes(c, 100)
                .unwrap()
                .into_iter()
                .map(|c| c.key)
                .collect()
        };

        // Alone: the writer's entry is fresh and its acknowledgement removes it.
        let w = app_write(&mut a, "k1", "v1");
        assert_eq!(w.len(), 1);
        assert!(w[0].fresh);
        assert_eq!(ack_own(&mut a, &w).unwrap(), 1);
        assert!(keys(&a).is_empty());

        // Two writers of one key (two processes): the second finds the entry
        // pending, so neither may remove it; a mirror of v1 landing after v2
        // is then corrected by the drainer.
        let w1 = app_write(&mut a, "k2", "v1");
        let w2 = app_write(&mut b, "k2", "v2");
        assert!(w1[0].fresh && !w2[0].fresh, "{w1:?} {w2:?}");
        assert_eq!(ack_own(&mut b, &w2).unwrap(), 0);
        assert_eq!(ack_own(&mut a, &w1).unwrap(), 0, "the key changed since");
        assert_eq!(keys(&a), ["k2"]);

        // A drainer's claim: a writer no longer removes the entry, even its own.
        let claimed = claim_changes(&mut b, 100, &Default::default()).unwrap();
        assert_eq!(claimed.len(), 1);
        let w3 = app_write(&mut a, "k2", "v3");
        assert!(!w3[0].fresh);
        let fresh = app_write(&mut a, "k3", "v1");
        assert!(fresh[0].fresh);
        claim_changes(&mut b, 100, &Default::default()).unwrap();
        assert_eq!(
            ack_own(&mut a, &fresh).unwrap(),
            0,
            "claimed by the drainer"
        );
        // The drainer's own ack: k2 changed after its first claim and stays.
        assert_eq!(ack(&mut b, &claimed).unwrap(), 0);
        let again = claim_changes(&mut b, 100, &Default::default()).unwrap();
        assert_eq!(ack(&mut b, &again).unwrap(), 2);
        assert!(keys(&a).is_empty());

        // An entry drained and created anew is not the old writer's: `seq`
        // never goes back, even once the log is empty, and a fresh entry made
        // after a claim is the new writer's to acknowledge.
        let old = app_write(&mut a, "k4", "v1");
        let drained = claim_changes(&mut b, 100, &Default::default()).unwrap();
        ack(&mut b, &drained).unwrap();
        assert!(keys(&a).is_empty());
        let new = app_write(&mut b, "k4", "v2");
        assert!(new[0].seq > old[0].seq, "{new:?} {old:?}");
        assert!(new[0].fresh);
        assert_eq!(ack_own(&mut a, &old).unwrap(), 0);
        assert_eq!(keys(&a), ["k4"]);
        assert_eq!(ack_own(&mut b, &new).unwrap(), 1);
    }

    #[test]
    fn a_claim_skips_the_keys_of_batches_in_flight() {
        let d = tempfile::tempdir().unwrap();
        let p = dox_file(d.path(), false);
        install(&p, None).unwrap();
        let mut c = Connection::open(&p).unwrap();
        for k in ["k1", "k2", "k3"] {
            app_write(&mut c, k, "v");
        }
        let first = claim_changes(&mut c, 2, &Default::default()).unwrap();
        assert_eq!(first.len(), 2);
        // k1 changes again while its batch is out: the next claim leaves it.
        app_write(&mut c, "k1", "v2");
        let busy = first
            .iter()
            .map(|c| (c.tbl.clone(), c.key.clone()))
            .collect();
        let next = claim_changes(&mut c, 10, &busy).unwrap();
        let keys: Vec<&str> = next.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["k3"]);
    }

    #[test]
    fn an_older_change_log_is_upgraded_and_writes_never_fail_meanwhile() {
        let d = tempfile::tempdir().unwrap();
        let p = dox_file(d.path(), false);
        install(&p, None).unwrap();
        let mut c = Connection::open(&p).unwrap();
        // The log as the first release made it, with its triggers.
        c.execute_batch(&format!(
            "DROP TABLE {LOG}; CREATE TABLE {LOG} (tbl TEXT NOT NULL, key TEXT NOT NULL, \
             seq INTEGER NOT NULL, op TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID; \
             CREATE INDEX {LOG_SEQ_INDEX} ON {LOG} (seq); DROP TABLE {CLAIM};
             DROP TRIGGER _dualwrite_artifact_ins; DROP TRIGGER _dualwrite_artifact_upd;
             DROP TRIGGER _dualwrite_artifact_del; DROP TRIGGER _dualwrite_doctable_upd;
             DROP TRIGGER _dualwrite_doctable_ins; DROP TRIGGER _dualwrite_doctable_del;
             CREATE TRIGGER _dualwrite_artifact_ins AFTER INSERT ON artifact BEGIN \
             INSERT INTO {LOG} (tbl, key, seq, op, at) SELECT 'artifact', NEW.id, \
             (SELECT coalesce(max(seq), 0) + 1 FROM {LOG}), 'I', 0 ON CONFLICT (tbl, key) \
             DO UPDATE SET seq = excluded.seq; END;"
        ))
        .unwrap();
        let w = app_write(&mut c, "k1", "v1");
        assert_eq!(w.len(), 1);
        assert!(
            !w[0].fresh,
            "an old log cannot tell: nothing is acknowledged"
        );
        let r = install(&p, None).unwrap();
        assert!(
            r.created.contains(&format!("{LOG}.first")) && r.created.contains(&CLAIM.to_owned()),
            "{:?}",
            r.created
        );
        assert!(status(&p).unwrap().installed);
        let w = app_write(&mut c, "k2", "v1");
        assert!(w[0].fresh);
    }

    #[test]
    fn a_corrupt_change_row_is_named() {
        let c = Change {
            tbl: "bogus".into(),
            key: "k".into(),
            seq: 7,
            op: "I".into(),
            at: 0.0,
            fresh: false,
        };
        let e = check_change(&c).unwrap_err();
        assert!(
            e.contains("corrupt change row") && e.contains("bogus"),
            "{e}"
        );
    }

    #[test]
    fn a_second_lease_is_refused_until_the_first_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("x.sqlite3");
        let first = Lease::take(&db).unwrap();
        let e = Lease::take(&db).unwrap_err().to_string();
        assert!(e.contains("already running"), "{e}");
        assert!(Lease::held_on(&db));
        let lock_file = std::fs::read(lock_path(&db)).unwrap();
        drop(first);
        // The probe writes nothing and creates nothing.
        assert!(!Lease::held_on(&db));
        assert_eq!(std::fs::read(lock_path(&db)).unwrap(), lock_file);
        assert!(!Lease::held_on(&d.path().join("never-served.sqlite3")));
        assert!(!lock_path(&d.path().join("never-served.sqlite3")).exists());
        Lease::take(&db).unwrap();
    }
}

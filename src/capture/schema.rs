//! The change log, its version and the triggers: their SQL, and
//! install and uninstall.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use super::log::pending_on;
use super::resync::mark_resync;
use super::{
    dox_tables, immediate, import_failures, object_sql, open_rw, quote, sql_string, ImportReport,
    LOG, LOG_SEQ_INDEX, LOG_VERSION, META, NOW_SQL, PREFIX, QUEUE,
};
use crate::catalogue::Table;
use crate::error::{Error, Result};

fn log_sql() -> String {
    format!(
        "CREATE TABLE {LOG} (\n\
         \ttbl TEXT NOT NULL,\n\
         \tkey TEXT NOT NULL,\n\
         \tseq INTEGER NOT NULL,\n\
         \top TEXT NOT NULL,\n\
         \tat REAL NOT NULL,\n\
         \tPRIMARY KEY (tbl, key)\n) WITHOUT ROWID"
    )
}

fn index_sql() -> String {
    format!("CREATE INDEX {LOG_SEQ_INDEX} ON {LOG} (seq)")
}

/// No index but the rowid: a trigger's insert touches the last page alone.
fn queue_sql() -> String {
    format!(
        "CREATE TABLE {QUEUE} (\n\
         \tseq INTEGER PRIMARY KEY,\n\
         \ttbl TEXT NOT NULL,\n\
         \tkey TEXT NOT NULL,\n\
         \top TEXT NOT NULL,\n\
         \tat REAL NOT NULL\n)"
    )
}

/// Create the queue, numbered on from every `seq` the log holds or ever
/// acknowledged (a log of version 1 kept the highest in `acked_hi`): its
/// first row is a folded one at that `seq` ([`QUEUE`]).
fn create_queue(tx: &Connection) -> Result<()> {
    tx.execute_batch(&queue_sql())?;
    let top: i64 = tx.query_row(
        &format!(
            "SELECT max((SELECT coalesce(max(seq), 0) FROM {LOG}), \
             (SELECT coalesce(max(value), 0) FROM {META} WHERE name IN ('acked_hi', 'folded_hi')))"
        ),
        [],
        |r| r.get(0),
    )?;
    tx.execute(
        &format!("INSERT INTO {QUEUE} (seq, tbl, key, op, at) VALUES (?1, '', '', 'F', 0)"),
        [top],
    )?;
    tx.execute(
        &format!("INSERT OR REPLACE INTO {META} (name, value) VALUES ('folded_hi', ?1)"),
        [top],
    )?;
    tx.execute(&format!("DELETE FROM {META} WHERE name = 'acked_hi'"), [])?;
    Ok(())
}

fn meta_sql() -> String {
    format!("CREATE TABLE {META} (name TEXT PRIMARY KEY, value) WITHOUT ROWID")
}

/// The log's version, as recorded in [`META`] (`None`: not recorded, a log
/// made before versions were).
pub(super) fn log_version(conn: &Connection) -> Result<Option<i64>> {
    if object_sql(conn, "table", META)?.is_none() {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            &format!("SELECT value FROM {META} WHERE name = 'log_version'"),
            [],
            |r| r.get(0),
        )
        .optional()?)
}

/// The statement a trigger runs for one key: append it to the queue, numbered
/// by SQLite (`max(seq) + 1`).
fn record(table: &str, key_expr: &str, op: &str) -> String {
    format!(
        "INSERT INTO {QUEUE} (tbl, key, op, at) SELECT {}, {key_expr}, '{op}', {NOW_SQL} \
         WHERE {key_expr} IS NOT NULL;",
        sql_string(table)
    )
}

/// The three triggers of a table: (name, SQL as stored in sqlite_master).
pub(super) fn triggers_sql(t: &Table) -> [(String, String); 3] {
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

/// What `install` did.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    pub path: String,
    /// Objects created (or replaced because they differed); empty when all were in place.
    pub created: Vec<String>,
    /// Tables whose triggers were gone (re-created, or created after capture
    /// was installed): marked to be re-sent whole by the drainer.
    pub resynced: Vec<String>,
    /// Tables that carry capture triggers.
    pub tables: Vec<String>,
    pub journal_mode: String,
    /// The legacy failure log, imported into the change log.
    pub failure_log: Option<ImportReport>,
}

/// Install (or complete, or repair) capture on an open connection. Idempotent:
/// objects already in place are left untouched.
pub(crate) fn install_on(conn: &mut Connection) -> Result<InstallReport> {
    // WAL: the app's readers and writers and the drainer do not block each other.
    let journal_mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    let mut r = immediate(conn, install_in)?;
    r.journal_mode = journal_mode;
    Ok(r)
}

/// [`install_on`] in the caller's write transaction (`cutover rollback`'s
/// switch), the journal mode left as it is.
pub(crate) fn install_in(tx: &Connection) -> Result<InstallReport> {
    let path = tx.path().unwrap_or_default().to_owned();
    let mut resynced = Vec::new();
    let journal_mode: String = tx.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    let (created, tables) = {
        let mut created = Vec::new();
        // A first install copies nothing: what the file already holds is the
        // backfill's. Once the log exists, a table whose triggers were gone
        // had writes nobody logged: it is marked for a resync (`resync.rs`).
        let log_existed = object_sql(tx, "table", LOG)?.is_some();
        if !log_existed {
            tx.execute_batch(&log_sql())?;
            created.push(LOG.to_owned());
        }
        if object_sql(tx, "index", LOG_SEQ_INDEX)?.is_none() {
            tx.execute_batch(&index_sql())?;
            created.push(LOG_SEQ_INDEX.to_owned());
        }
        if object_sql(tx, "table", META)?.is_none() {
            tx.execute_batch(&meta_sql())?;
            created.push(META.to_owned());
        }
        if object_sql(tx, "table", QUEUE)?.is_none() {
            // Version 1 had no queue: its pending entries stay in the log,
            // where they are claimed as before.
            create_queue(tx)?;
            created.push(QUEUE.to_owned());
        }
        if log_version(tx)? != Some(LOG_VERSION) {
            // The triggers below are this version's, replaced in this
            // transaction: no write falls between the two versions. Entries
            // already pending (tbl, key, seq, op, at) mean the same in every
            // version.
            tx.execute(
                &format!("INSERT OR REPLACE INTO {META} (name, value) VALUES ('log_version', ?1)"),
                [LOG_VERSION],
            )?;
        }
        let tables = dox_tables(tx)?;
        for t in &tables {
            let mut absent = false;
            for (name, sql) in triggers_sql(t) {
                match object_sql(tx, "trigger", &name)? {
                    Some(existing) if existing == sql => continue,
                    // Another version's trigger: it logged the table's writes.
                    Some(_) => tx.execute_batch(&format!("DROP TRIGGER {name}"))?,
                    None => absent = true,
                }
                tx.execute_batch(&sql)?;
                created.push(name);
            }
            if absent && log_existed {
                mark_resync(tx, t)?;
                resynced.push(t.sqlite.to_owned());
            }
        }
        (created, tables)
    };
    Ok(InstallReport {
        path,
        created,
        resynced,
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
         AND substr(name, 1, length(?1)) <> ?1 \
         AND type IN ('trigger', 'table', 'index') ORDER BY type = 'table', name",
    )?;
    // The recorded primary and its refusal triggers are not capture's.
    let rows = stmt
        .query_map([crate::cutover::marker::MARKER_PREFIX], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
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
    immediate(&mut conn, |tx| uninstall_in(tx, path, force))
}

/// [`uninstall`] in the caller's write transaction (`cutover run`'s switch).
pub(crate) fn uninstall_in(tx: &Connection, path: &Path, force: bool) -> Result<UninstallReport> {
    {
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
    }
}

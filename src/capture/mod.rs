//! Change capture: triggers on every DoX table append (table, key, operation)
//! to a queue inside the writer's own transaction, whoever the writer is
//! (DoX's Python code, `sqlite3`, another process). The row and its change
//! record commit or vanish together, so nothing the app commits can escape.
//!
//! Two tables. The app's triggers only append to the queue
//! (`_dualwrite_queue`, rowid = `seq`, no other index): each commit touches
//! the queue's last page and nothing else of capture's. The drainer folds the
//! queue, in `seq` order, into the change log (`_dualwrite_changes`), a
//! dirty-key table of one row per (table, key) with its latest `seq`:
//! repeated changes to a key coalesce, so what is claimed is bounded by the
//! distinct keys changed, however many times each changed. The drainer
//! (`serve`) claims keys (a read: the log, then the queue entries not
//! folded yet, coalesced by key the same way), reads the rows as they are
//! now, mirrors them, and acknowledges by the `seq` ranges it claimed, in one
//! short write transaction of range deletes (from the queue itself where the
//! entries were not folded): a key changed again during the send has a new
//! `seq` (above the claim's ranges) and goes again. A claim folds first, in
//! short write transactions of its own, only when the queue holds many
//! entries (the daemon was stopped).
//!
//! Every object this module creates is named `_dualwrite_…` (no DoX table
//! starts with an underscore); `uninstall` removes exactly those.
//!
//! This module and `db/sqlite/` are the only ones that open the file with
//! rusqlite. The functions here are blocking: async callers run them off the
//! runtime's threads.
//!
//! The files: `schema.rs` the log, its version and the trigger SQL, install
//! and uninstall; `log.rs` status and the changes (folding, reading,
//! claiming, acknowledging); `resync.rs` re-sending a table whose triggers
//! were gone; `import.rs` the legacy failure-log import; `lease.rs` the
//! single-daemon lease and durability. This file holds the names and opens
//! the file.

mod import;
mod lease;
mod log;
mod resync;
mod schema;
#[cfg(test)]
mod tests;

/// Capture on Supabase (the reverse direction's change log), through rpc.
pub use crate::reverse::capture as supabase;
pub use import::{import_failures, ImportReport};
pub use lease::Lease;
pub(crate) use lease::{make_durable, real_path};
#[cfg(test)]
pub(crate) use log::read_changes;
pub(crate) use log::{
    ack, ack_runs, ack_runs_in, backlog, check_change, claim_changes, claim_in, data_version,
    key_hash, log_present, position, runs_without, schema_version, triggers_on, Claim, Claimed,
    LogShape,
};
pub use log::{now_secs, pending_changes, status, CaptureStatus, Change, Triggers};
#[cfg(test)]
pub(crate) use resync::KEYS_PER_STEP;
pub(crate) use resync::{finish_resync, pending_resyncs, queue_file_keys, queue_gone_keys, Resync};
pub use schema::{install, uninstall, InstallReport, UninstallReport};
pub(crate) use schema::{install_in, install_on, uninstall_in};

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::catalogue::{Table, TABLES};
use crate::error::{Error, Result};

/// The prefix of every object capture creates.
pub(crate) const PREFIX: &str = "_dualwrite_";
/// The change log: one row per changed key, as the drainer claims them.
pub(crate) const LOG: &str = "_dualwrite_changes";
const LOG_SEQ_INDEX: &str = "_dualwrite_changes_seq";
/// What the triggers append to: one row per change, `seq` its rowid. Folded
/// into [`LOG`] by the drainer when a backlog waits (`log::fold`); otherwise
/// its acknowledgements delete the entries they mirrored from here.
///
/// `seq` never goes back: SQLite numbers a new row `max(rowid) + 1`, and
/// neither a fold nor an acknowledgement deletes the queue's last row (it
/// stays, folded, at or below the mark `folded_hi` in [`META`], below which
/// every entry is folded or acknowledged), so every change is numbered above
/// every change taken before it, even once everything is acknowledged. A
/// claimed entry was in the log or the queue when the claim ran, so a change
/// made later is numbered above every claimed one: it is never taken for a
/// claimed entry (the acknowledgement by ranges), and a drainer reading on
/// from its last claim finds it.
pub(crate) const QUEUE: &str = "_dualwrite_queue";

/// How long a capture command waits for the app's write lock.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The `seq` up to which the queue is folded into the log (or acknowledged).
const FOLDED_HI: &str =
    "(SELECT coalesce(max(value), 0) FROM _dualwrite_meta WHERE name = 'folded_hi')";

/// `now` as seconds since the epoch, in any SQLite version (`unixepoch('subsec')`
/// needs 3.42; the app's own SQLite library, which runs the triggers, may be older).
const NOW_SQL: &str = "((julianday('now') - 2440587.5) * 86400.0)";

/// What capture records about itself: `log_version`, the layout of the change
/// log and its triggers ([`LOG_VERSION`]); `folded_hi` ([`QUEUE`]); the
/// tables being re-sent (`resync.rs`).
pub(crate) const META: &str = "_dualwrite_meta";

/// The version of the change log's layout and triggers this build writes and
/// drains. A file whose log has another is refused by the drainer until
/// `dualwrite capture install` brings it to this one.
///
/// 1: the triggers upserted into the dirty-key log. 2: they append to the
/// queue, which the drainer folds into the log.
pub(crate) const LOG_VERSION: i64 = 2;

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Open a DoX file for capture's own writes: it must exist, be a SQLite
/// database, be writable, and hold at least one DoX table.
pub(crate) fn open_rw(path: &Path) -> Result<Connection> {
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

/// How long a drainer's statement waits for the file's lock (the app's write
/// transaction) before it fails with [`Error::Busy`] and is tried again.
pub(crate) const DRAINER_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The WAL size, in pages, past which a drainer's own commits checkpoint it
/// (SQLite's default, which the app's connections keep, is 1,000). When the
/// daemon's batches come often (a short `--poll-ms`) it reaches the threshold
/// first, and the checkpoints (with their fsync of the database file) run on
/// its commits instead of the app's.
const DRAINER_CHECKPOINT_PAGES: u32 = 300;

/// Open a DoX file for a drainer (either direction's daemon): [`open_rw`],
/// with the drainer's settings in one place. Its acknowledgements take the
/// file's write lock, so they are short, and need no fsync of their own (an
/// acknowledgement a power loss takes back only sends a row again).
pub(crate) fn open_drainer(path: &Path) -> Result<Connection> {
    let c = open_rw(path)?;
    c.busy_timeout(DRAINER_BUSY_TIMEOUT)?;
    c.execute_batch("PRAGMA synchronous=NORMAL")?;
    c.pragma_update(None, "wal_autocheckpoint", DRAINER_CHECKPOINT_PAGES)?;
    Ok(c)
}

/// Open a DoX file without changing it (status).
pub(crate) fn open_ro(path: &Path) -> Result<Connection> {
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

/// The DoX tables a file lacks, read without changing it. An error naming the
/// problem when it is no file, not a SQLite database, or holds none of the
/// DoX tables (what every command that reads a DoX file refuses).
pub fn missing_tables(path: &Path) -> Result<Vec<&'static Table>> {
    let conn = open_ro(path)?;
    let present = dox_tables(&conn)?;
    Ok(TABLES
        .iter()
        .copied()
        .filter(|t| !present.iter().any(|p| p.sqlite == t.sqlite))
        .collect())
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

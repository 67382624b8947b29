//! The recorded primary: one row in the SQLite file, `_dualwrite_primary`,
//! that every dualwrite process reads (`serve`, `status`, the embedded
//! `DualDatabase`, `cutover`). It is the one answer to "which side is the
//! primary"; Supabase's access state follows it (docs/design/cutover.md).
//!
//! * No table (a file never cut over) means the file is the primary.
//! * `switching` is set while `cutover run` or `rollback` holds the drain:
//!   `serve` stands down until it is cleared.
//! * While Supabase is the primary, **refusal triggers** on every DoX table
//!   fail an app's write to the file with one clear message, so that nothing
//!   written there after the switch is lost silently. dualwrite's own writes
//!   to the file (the reverse mirror) go through [`write_as_mirror`].
//! * Neither the marker nor the refusal triggers are capture objects:
//!   `capture uninstall` keeps them (a file must not look primary again).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::capture;
use crate::catalogue::TABLES;
use crate::direction::Direction;
use crate::error::{Error, Result};

/// The marker's table (one row, id 1).
pub(crate) const MARKER: &str = "_dualwrite_primary";
/// The name prefix of every object the marker owns (the table and the
/// refusal triggers): `capture uninstall` leaves these alone.
pub(crate) const MARKER_PREFIX: &str = "_dualwrite_primary";
const REFUSE_PREFIX: &str = "_dualwrite_primary_refuse_";

/// Which side is the primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Primary {
    /// The SQLite file (before cutover, or after a rollback).
    #[default]
    Sqlite,
    /// Supabase (after cutover; the file is the rollback copy).
    Supabase,
}

impl Primary {
    pub fn as_str(self) -> &'static str {
        match self {
            Primary::Sqlite => "sqlite",
            Primary::Supabase => "supabase",
        }
    }

    pub fn parse(s: &str) -> Result<Primary> {
        match s {
            "sqlite" => Ok(Primary::Sqlite),
            "supabase" => Ok(Primary::Supabase),
            other => Err(Error::invalid(format!(
                "recorded primary `{other}` is neither sqlite nor supabase"
            ))),
        }
    }

    /// The direction the mirror runs in while this side is the primary.
    pub fn direction(self) -> Direction {
        match self {
            Primary::Sqlite => Direction::Forward,
            Primary::Supabase => Direction::Reverse,
        }
    }

    pub fn other(self) -> Primary {
        match self {
            Primary::Sqlite => Primary::Supabase,
            Primary::Supabase => Primary::Sqlite,
        }
    }
}

/// A cutover (or rollback) in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Switching {
    /// The side it makes the primary.
    pub to: Primary,
    /// The process running it.
    pub pid: u32,
    /// When it began (seconds since the epoch).
    pub since: f64,
}

/// What the file records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub primary: Primary,
    pub switching: Option<Switching>,
    /// When the primary last changed (`None`: never).
    pub changed_at: Option<f64>,
}

fn marker_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {MARKER} (\n\
         \tid INTEGER PRIMARY KEY CHECK (id = 1),\n\
         \tprimary_side TEXT NOT NULL CHECK (primary_side IN ('sqlite', 'supabase')),\n\
         \tchanged_at REAL,\n\
         \tswitching_to TEXT CHECK (switching_to IN ('sqlite', 'supabase')),\n\
         \tswitching_pid INTEGER,\n\
         \tswitching_since REAL\n)"
    )
}

fn has_marker(conn: &Connection) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [MARKER],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The marker as `conn` sees it now.
pub(crate) fn read(conn: &Connection) -> Result<Marker> {
    Ok(recorded(conn)?.unwrap_or_default())
}

/// The marker as `conn` sees it now, `None` when the file records none (it
/// was never cut over: the file is the primary, and `serve` and `status` go
/// by the configuration).
pub(crate) fn recorded(conn: &Connection) -> Result<Option<Marker>> {
    if !has_marker(conn)? {
        return Ok(None);
    }
    let row = conn
        .query_row(
            &format!(
                "SELECT primary_side, changed_at, switching_to, switching_pid, switching_since \
                 FROM {MARKER} WHERE id = 1"
            ),
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<f64>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<f64>>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((primary, changed_at, to, pid, since)) = row else {
        return Ok(None);
    };
    let switching = match to {
        Some(to) => Some(Switching {
            to: Primary::parse(&to)?,
            pid: pid.unwrap_or(0) as u32,
            since: since.unwrap_or(0.0),
        }),
        None => None,
    };
    Ok(Some(Marker {
        primary: Primary::parse(&primary)?,
        switching,
        changed_at,
    }))
}

/// The marker of the file at `path`, read without changing the file.
pub fn read_file(path: &Path) -> Result<Marker> {
    read(&capture::open_ro(path)?)
}

/// [`recorded`] for the file at `path`, read without changing the file.
pub fn recorded_in(path: &Path) -> Result<Option<Marker>> {
    recorded(&capture::open_ro(path)?)
}

/// A time of the marker (seconds since the epoch), as messages show it.
pub fn utc(secs: f64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(secs as i64, 0).map_or_else(
        || secs.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// The recorded primary, as `status` and `capture status` print it.
pub fn describe(m: Option<&Marker>) -> String {
    let Some(m) = m else {
        return "none recorded (never cut over: the file is the primary)".to_owned();
    };
    let mut s = m.primary.as_str().to_owned();
    if let Some(t) = m.changed_at {
        s.push_str(&format!(" since {}", utc(t)));
    }
    if let Some(sw) = &m.switching {
        s.push_str(&format!(
            "; cutover in progress (pid {}, since {}, making {} the primary)",
            sw.pid,
            utc(sw.since),
            sw.to.as_str()
        ));
    }
    s
}

/// Create the marker's row when there is none (the file is the primary).
fn ensure(conn: &Connection) -> Result<()> {
    conn.execute_batch(&marker_sql())?;
    conn.execute(
        &format!("INSERT OR IGNORE INTO {MARKER} (id, primary_side) VALUES (1, 'sqlite')"),
        [],
    )?;
    Ok(())
}

/// Record a cutover in progress (or its end, `None`), in the caller's
/// transaction. (Public for `cutover run` and the tests that play its part.)
pub fn set_switching(conn: &Connection, s: Option<&Switching>) -> Result<()> {
    ensure(conn)?;
    conn.execute(
        &format!(
            "UPDATE {MARKER} SET switching_to = ?1, switching_pid = ?2, switching_since = ?3 \
             WHERE id = 1"
        ),
        rusqlite::params![
            s.map(|s| s.to.as_str()),
            s.map(|s| i64::from(s.pid)),
            s.map(|s| s.since)
        ],
    )?;
    Ok(())
}

/// Record `primary` as the primary (clearing `switching`), and put the
/// refusal triggers in place (Supabase primary) or take them away (the file
/// primary), in the caller's transaction: the switch's commit point.
/// (Public for `cutover run` and the tests that play its part.)
pub fn record_primary(conn: &Connection, primary: Primary) -> Result<()> {
    ensure(conn)?;
    let now = capture::now_secs();
    conn.execute(
        &format!(
            "UPDATE {MARKER} SET primary_side = ?1, changed_at = ?2, switching_to = NULL, \
             switching_pid = NULL, switching_since = NULL WHERE id = 1"
        ),
        rusqlite::params![primary.as_str(), now],
    )?;
    drop_refusal(conn)?;
    if primary == Primary::Supabase {
        create_refusal(conn, now)?;
    }
    Ok(())
}

/// The refusal triggers the file has (their names).
pub(crate) fn refusal_triggers(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND substr(name, 1, ?2) = ?1 \
         ORDER BY name",
    )?;
    let names = stmt
        .query_map(
            rusqlite::params![REFUSE_PREFIX, REFUSE_PREFIX.len() as i64],
            |r| r.get(0),
        )?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(names)
}

fn drop_refusal(conn: &Connection) -> Result<()> {
    for name in refusal_triggers(conn)? {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS \"{name}\""))?;
    }
    Ok(())
}

/// How every refusal's message begins.
const REFUSAL: &str = "dualwrite: this file is no longer the primary";

/// Whether `e` is a refusal trigger's: a write to the file made after the
/// switch (the embedded layer sends it to Supabase instead).
pub(crate) fn is_refusal(e: &Error) -> bool {
    matches!(e, Error::Sqlite(m) if m.contains(REFUSAL))
}

/// The message an app's write to the file meets once Supabase is the primary.
fn refusal_message(since: f64) -> String {
    let at = utc(since);
    format!(
        "{REFUSAL} (Supabase is, since the cutover at {at}); \
         restart the app with DB_BACKEND=supabase, or run `dualwrite cutover rollback`"
    )
}

fn create_refusal(conn: &Connection, since: f64) -> Result<()> {
    let msg = refusal_message(since).replace('\'', "''");
    for t in TABLES {
        let exists = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [t.sqlite],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !exists {
            continue;
        }
        for (op, what) in [("ins", "INSERT"), ("upd", "UPDATE"), ("del", "DELETE")] {
            conn.execute_batch(&format!(
                "CREATE TRIGGER \"{REFUSE_PREFIX}{table}_{op}\" BEFORE {what} ON \"{table}\" \
                 BEGIN SELECT RAISE(ABORT, '{msg}'); END",
                table = t.sqlite.replace('"', "\"\""),
            ))?;
        }
    }
    Ok(())
}

/// Run `f` (dualwrite's own write to the file, in the caller's write
/// transaction) past the refusal triggers: they are dropped, `f` runs, and
/// they are made again, all in the one transaction, so no other connection
/// ever sees the file without them (SQLite's DDL is transactional).
pub(crate) fn write_as_mirror<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<R>,
) -> Result<R> {
    let m = read(conn)?;
    if m.primary != Primary::Supabase {
        return f(conn);
    }
    drop_refusal(conn)?;
    let r = f(conn)?;
    create_refusal(conn, m.changed_at.unwrap_or_else(capture::now_secs))?;
    Ok(r)
}

/// The switch's fence and commit point on the file, as `cutover run` and
/// `rollback` hold it: a `BEGIN IMMEDIATE` transaction on a connection of its
/// own (every other writer of the file waits in its busy handler; readers do
/// not), which records the primary when it commits. Dropped uncommitted, it
/// rolls back: nothing switched. Public for tests and drills that play a
/// switch (`examples/switch_primary.rs`).
pub struct Fence {
    conn: Connection,
}

impl Fence {
    /// Take the file's write lock (waiting up to capture's busy timeout).
    pub fn take(path: &Path) -> Result<Fence> {
        let conn = capture::open_rw(path)?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Fence { conn })
    }

    /// Record `primary` ([`record_primary`]: the marker and the refusal
    /// triggers) and commit: the switch.
    pub fn commit(self, primary: Primary) -> Result<()> {
        record_primary(&self.conn, primary)?;
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }
}

/// Follows the marker for a connection that writes often: `PRAGMA
/// data_version` (a number the connection keeps, which changes only when
/// another connection commits) is read before each use, and the marker only
/// when it changed.
pub(crate) struct MarkerWatch {
    data_version: i64,
    marker: Option<Marker>,
}

/// What a file with no marker reads as.
const UNRECORDED: Marker = Marker {
    primary: Primary::Sqlite,
    switching: None,
    changed_at: None,
};

impl MarkerWatch {
    pub(crate) fn new(conn: &Connection) -> Result<MarkerWatch> {
        let data_version = data_version(conn)?;
        Ok(MarkerWatch {
            data_version,
            marker: recorded(conn)?,
        })
    }

    /// The marker now (read again only if another connection committed).
    pub(crate) fn current(&mut self, conn: &Connection) -> Result<&Marker> {
        Ok(self.current_recorded(conn)?.unwrap_or(&UNRECORDED))
    }

    /// [`MarkerWatch::current`], `None` while the file records none.
    pub(crate) fn current_recorded(&mut self, conn: &Connection) -> Result<Option<&Marker>> {
        let v = data_version(conn)?;
        if v != self.data_version {
            self.marker = recorded(conn)?;
            self.data_version = v;
        }
        Ok(self.marker.as_ref())
    }
}

fn data_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dox_file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dox.sqlite3");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE logentry (id INTEGER PRIMARY KEY, message TEXT)",
        )
        .unwrap();
        (dir, path)
    }

    #[test]
    fn a_file_never_cut_over_is_the_primary_and_the_switch_refuses_the_apps_writes() {
        let (_d, path) = dox_file();
        assert_eq!(read_file(&path).unwrap(), Marker::default());
        let mut c = Connection::open(&path).unwrap();
        let tx = c.transaction().unwrap();
        set_switching(
            &tx,
            Some(&Switching {
                to: Primary::Supabase,
                pid: 7,
                since: 1.0,
            }),
        )
        .unwrap();
        tx.commit().unwrap();
        let m = read_file(&path).unwrap();
        assert_eq!((m.primary, m.switching.unwrap().pid), (Primary::Sqlite, 7));

        let tx = c.transaction().unwrap();
        record_primary(&tx, Primary::Supabase).unwrap();
        tx.commit().unwrap();
        let m = read_file(&path).unwrap();
        assert_eq!((m.primary, m.switching), (Primary::Supabase, None));

        let app = Connection::open(&path).unwrap();
        let e = app
            .execute("INSERT INTO logentry (message) VALUES ('x')", [])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no longer the primary") && e.contains("DB_BACKEND=supabase"),
            "{e}"
        );

        // dualwrite's own write passes, and the refusal is back after it.
        let tx = c.transaction().unwrap();
        write_as_mirror(&tx, |t| {
            t.execute("INSERT INTO logentry (message) VALUES ('mirrored')", [])?;
            Ok(())
        })
        .unwrap();
        tx.commit().unwrap();
        assert_eq!(refusal_triggers(&c).unwrap().len(), 3);
        assert!(app.execute("DELETE FROM logentry", []).is_err());

        let tx = c.transaction().unwrap();
        record_primary(&tx, Primary::Sqlite).unwrap();
        tx.commit().unwrap();
        assert!(refusal_triggers(&c).unwrap().is_empty());
        app.execute("INSERT INTO logentry (message) VALUES ('y')", [])
            .unwrap();
        let n: i64 = app
            .query_row("SELECT count(*) FROM logentry", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn the_watch_reads_the_marker_again_only_after_another_connection_committed() {
        let (_d, path) = dox_file();
        let reader = Connection::open(&path).unwrap();
        let mut w = MarkerWatch::new(&reader).unwrap();
        assert_eq!(w.current(&reader).unwrap().primary, Primary::Sqlite);
        let mut writer = Connection::open(&path).unwrap();
        let tx = writer.transaction().unwrap();
        record_primary(&tx, Primary::Supabase).unwrap();
        tx.commit().unwrap();
        assert_eq!(w.current(&reader).unwrap().primary, Primary::Supabase);
        let v = w.data_version;
        assert_eq!(w.current(&reader).unwrap().primary, Primary::Supabase);
        assert_eq!(w.data_version, v);
    }

    #[test]
    fn capture_uninstall_keeps_the_marker_and_the_refusal() {
        let (_d, path) = dox_file();
        capture::install(&path, None).unwrap();
        let mut c = Connection::open(&path).unwrap();
        let tx = c.transaction().unwrap();
        record_primary(&tx, Primary::Supabase).unwrap();
        tx.commit().unwrap();
        let r = capture::uninstall(&path, true).unwrap();
        assert!(
            r.dropped.iter().all(|n| !n.starts_with(MARKER_PREFIX)),
            "{:?}",
            r.dropped
        );
        assert_eq!(read_file(&path).unwrap().primary, Primary::Supabase);
        assert_eq!(refusal_triggers(&c).unwrap().len(), 3);
    }
}

//! The single-daemon lease, and making commits durable before they are mirrored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

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
pub(crate) fn make_durable(db: &Path) -> Result<()> {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    match std::fs::File::open(PathBuf::from(wal)) {
        Ok(f) => f.sync_data()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The single-daemon lease: an exclusive SQLite lock on `<db>.dualwrite.lock`
/// beside the real file (a symlink or another path to the same file finds the
/// same lock), held for the daemon's life and released by the OS if it dies
/// (even by `kill -9`).
pub struct Lease {
    conn: Connection,
    pub path: PathBuf,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("path", &self.path).finish()
    }
}

/// The file itself, whatever path names it: a symlink, a relative path or
/// `..` resolve to the one real path, so every process that names the file
/// finds the same lease and the same status file. (A file that does not exist
/// yet keeps the path as given, made absolute.)
pub(crate) fn real_path(db: &Path) -> PathBuf {
    std::fs::canonicalize(db).unwrap_or_else(|_| std::path::absolute(db).unwrap_or(db.into()))
}

/// `<db>.dualwrite.lock`, beside the real file ([`real_path`]).
pub(super) fn lock_path(db: &Path) -> PathBuf {
    let mut p = real_path(db).into_os_string();
    p.push(".dualwrite.lock");
    PathBuf::from(p)
}

impl Lease {
    pub fn take(db: &Path) -> Result<Lease> {
        Lease::try_take(db)?.ok_or_else(|| {
            Error::invalid(format!(
                "another `dualwrite serve` is already running on {} (it holds {}); only one daemon may drain a file",
                db.display(),
                lock_path(db).display()
            ))
        })
    }

    /// [`Lease::take`], `None` while another process holds it (a daemon
    /// standing down for a cutover waits for `cutover run` to let it go).
    pub fn try_take(db: &Path) -> Result<Option<Lease>> {
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
                Ok(Some(Lease { conn, path }))
            }
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    || e.code == rusqlite::ErrorCode::DatabaseLocked =>
            {
                Ok(None)
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

    #[test]
    fn the_lease_is_the_files_whatever_path_names_it() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("app.sqlite3");
        std::fs::write(&db, b"").unwrap();
        let link = d.path().join("link.sqlite3");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let dotted = d.path().join("sub/../app.sqlite3");
        let _first = Lease::take(&db).unwrap();
        for other in [&link, &dotted] {
            let e = Lease::take(other).unwrap_err().to_string();
            assert!(e.contains("already running"), "{}: {e}", other.display());
            assert!(Lease::held_on(other));
        }
    }
}

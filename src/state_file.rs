//! Files that hold rows or progress: checkpoints, `rejects.ndjson`, the
//! failure log, exports. They hold full rows (memories, preferences, user ids),
//! so they are created owner-only: files 0600, directories 0700, whatever the
//! umask. A rewrite (temp file, then rename) keeps that mode, and an existing
//! file that others could read is narrowed when it is opened again.
//!
//! Every failure names the file or directory it concerns ([`Error::Io`]'s
//! `path`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The state directory of a source file: where the jobs and the daemon keep
/// what they write beside the rows (the checkpoint, the dead letters of both
/// directions, the coerced values' originals). The one owner of those names;
/// the files are created through this module (0600, the directory 0700).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir(PathBuf);

impl From<PathBuf> for StateDir {
    fn from(dir: PathBuf) -> StateDir {
        StateDir(dir)
    }
}

impl StateDir {
    /// A directory given (`--state-dir`).
    pub fn new(dir: impl Into<PathBuf>) -> StateDir {
        StateDir(dir.into())
    }

    /// The default for a source: `dualwrite-state/<file name>-<digest>` beside
    /// its real path, so every command finds it wherever it runs from.
    pub fn of_source(source: &Path) -> StateDir {
        let real = crate::capture::real_path(source);
        let dir = real
            .parent()
            .unwrap_or(Path::new("/"))
            .join("dualwrite-state");
        StateDir::under(&dir, source)
    }

    /// `<base>/<file name>-<digest>`: the name and the first 16 hex digits of
    /// the SHA-256 of the source's real path (a symlink or another path to the
    /// same file finds the same directory).
    pub fn under(base: &Path, source: &Path) -> StateDir {
        use sha2::{Digest, Sha256};
        let real = crate::capture::real_path(source);
        let name = real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "source".into());
        let digest = Sha256::digest(real.as_os_str().as_encoded_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        StateDir(base.join(format!("{name}-{hex}")))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The backfill's progress (`checkpoint.json`).
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.json")
    }

    /// Rows Supabase refused (`rejects.ndjson`): the backfill's, the import's
    /// and the forward daemon's.
    pub fn rejects(&self) -> PathBuf {
        self.0.join("rejects.ndjson")
    }

    /// Rows the SQLite file refused (`reverse-rejects.ndjson`): the reverse daemon's.
    pub fn reverse_rejects(&self) -> PathBuf {
        self.0.join("reverse-rejects.ndjson")
    }

    /// The originals of values coerced on the way to Supabase (`coerced.ndjson`).
    pub fn coerced(&self) -> PathBuf {
        self.0.join("coerced.ndjson")
    }

    /// Where `--reset` sets the rejects file aside.
    pub fn rejects_before_reset(&self, stamp: &str) -> PathBuf {
        self.0.join(format!("rejects-before-reset-{stamp}.ndjson"))
    }
}

/// Mode of the files this module creates.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of the directories this module creates.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Create `dir` and its missing parents, each new one 0700. Existing
/// directories keep their mode (they may be shared, e.g. the current directory).
pub(crate) fn create_dir_all(dir: &Path) -> Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, DIR_MODE);
    b.create(dir).at(dir)
}

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, FILE_MODE);
    o
}

/// Narrow an existing file to 0600 if group or others could read it.
fn restrict(f: &File) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = f.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        }
    }
    #[cfg(not(unix))]
    let _ = f;
    Ok(())
}

/// Open `path` for appending (created 0600, with its directory 0700).
pub(crate) fn append(path: &Path) -> Result<File> {
    if let Some(d) = path.parent() {
        create_dir_all(d)?;
    }
    let f = options().create(true).append(true).open(path).at(path)?;
    restrict(&f).at(path)?;
    Ok(f)
}

/// Create or truncate `path` (0600, with its directory 0700).
pub(crate) fn create(path: &Path) -> Result<File> {
    if let Some(d) = path.parent() {
        create_dir_all(d)?;
    }
    let f = options()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .at(path)?;
    restrict(&f).at(path)?;
    Ok(f)
}

/// Replace `path` atomically with `bytes`: a 0600 temp file beside it, fsync,
/// rename, then fsync of the directory so the rename itself is durable.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = create(&tmp)?;
    f.write_all(bytes).at(&tmp)?;
    f.sync_all().at(&tmp)?;
    drop(f);
    std::fs::rename(&tmp, path).at(path)?;
    sync_dir(path)
}

/// Replace `path` with `bytes` through a 0600 temp file and a rename, without
/// fsync: for a report rewritten every second (the daemon's status file),
/// whose loss in a crash costs nothing, and whose fsyncs would share the disk
/// with the app's commits.
pub(crate) fn overwrite(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = create(&tmp)?;
    f.write_all(bytes).at(&tmp)?;
    drop(f);
    std::fs::rename(&tmp, path).at(path)
}

/// Move `from` to `to` (same directory) durably.
pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).at(from)?;
    sync_dir(to)
}

/// Remove `path` durably; an absent file is fine. Any other failure is an
/// error: callers rely on the file being gone (a reset must not leave a
/// checkpoint that says its tables are done).
pub(crate) fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io_at(e, path)),
    }
}

/// fsync the directory holding `path`, so a rename or removal survives a crash.
fn sync_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).at(dir)?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)] // a test helper outside #[test]: an unwrap is its assertion
mod tests {
    use super::*;

    #[test]
    fn a_state_dir_is_named_by_the_sha256_of_the_real_path_wherever_it_is_named_from() {
        use sha2::{Digest, Sha256};
        let base = tempfile::tempdir().unwrap();
        let source = base.path().join("app.sqlite3");
        std::fs::write(&source, b"").unwrap();
        let real = std::fs::canonicalize(&source).unwrap();
        let digest = Sha256::digest(real.as_os_str().as_encoded_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let dir = StateDir::of_source(&source);
        let want = real
            .parent()
            .unwrap()
            .join("dualwrite-state")
            .join(format!("app.sqlite3-{hex}"));
        assert_eq!(dir.path(), want);
        let link = base.path().join("link.sqlite3");
        std::os::unix::fs::symlink(&source, &link).unwrap();
        assert_eq!(StateDir::of_source(&link), dir);
        assert_eq!(dir.rejects(), want.join("rejects.ndjson"));
        assert_eq!(dir.reverse_rejects(), want.join("reverse-rejects.ndjson"));
        assert_eq!(dir.checkpoint(), want.join("checkpoint.json"));
    }
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_are_owner_only_and_stay_so_across_rewrites() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a/b");
        let f = dir.join("checkpoint.json");
        write_atomically(&f, b"1").unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&d.path().join("a")), 0o700);
        assert_eq!(mode(&f), 0o600);
        write_atomically(&f, b"2").unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(std::fs::read(&f).unwrap(), b"2");
        // A file left readable by others is narrowed when opened again.
        let g = dir.join("rejects.ndjson");
        std::fs::write(&g, b"").unwrap();
        std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o644)).unwrap();
        append(&g).unwrap();
        assert_eq!(mode(&g), 0o600);
        remove(&g).unwrap();
        assert!(!g.exists());
        remove(&g).unwrap();
    }
}

//! How a backfill runs (`BackfillOptions`, `Progress`) and where its state directory is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::catalogue::{Table, TABLES};
use crate::normalise::UnrepresentablePolicy;

/// How a backfill (or an import) runs.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// The tables to copy, in catalogue order; empty means all.
    pub tables: Vec<&'static Table>,
    /// Read, convert and validate everything; write nothing (not even a checkpoint).
    pub dry_run: bool,
    /// Batches in flight at once.
    pub concurrency: usize,
    /// Rows per batch at most (the starting size too).
    pub batch_rows: usize,
    /// Bytes of JSON per batch at most.
    pub batch_bytes: usize,
    /// Where the checkpoint and the rejects file live.
    pub state_dir: PathBuf,
    /// How long to keep retrying while Supabase is unreachable or overloaded.
    pub max_wait: Duration,
    /// Re-read each landed range from the source and resend what changed.
    pub stale_guard: bool,
    pub progress: Progress,
    /// Reject (the default) or coerce values Supabase cannot hold; coerced
    /// values are recorded in `coerced.ndjson` in the state directory.
    pub unrepresentable: UnrepresentablePolicy,
}

/// The defaults, which the command line's defaults are read from; the state
/// directory is empty (every run names one, see [`state_dir_for`]).
impl Default for BackfillOptions {
    fn default() -> Self {
        BackfillOptions {
            tables: Vec::new(),
            dry_run: false,
            concurrency: 4,
            batch_rows: 500,
            batch_bytes: 1 << 20,
            state_dir: PathBuf::new(),
            max_wait: Duration::from_secs(300),
            stale_guard: true,
            progress: Progress::Quiet,
            unrepresentable: UnrepresentablePolicy::Reject,
        }
    }
}

impl BackfillOptions {
    pub fn new(state_dir: PathBuf) -> BackfillOptions {
        BackfillOptions {
            state_dir,
            ..BackfillOptions::default()
        }
    }

    pub fn selected(&self) -> Vec<&'static Table> {
        if self.tables.is_empty() {
            TABLES.to_vec()
        } else {
            TABLES
                .iter()
                .copied()
                .filter(|t| self.tables.iter().any(|s| s.sqlite == t.sqlite))
                .collect()
        }
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A bar per table (for a terminal).
    Bars,
    /// A log line every few seconds (for logs and CI).
    Lines,
    Quiet,
}

/// The default state directory of a source: `dualwrite-state/<file name>-<hash>`
/// beside the source itself (absolute), so every command finds it wherever it
/// runs from.
pub fn state_dir_for(source: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(source)
        .or_else(|_| std::path::absolute(source))
        .unwrap_or_else(|_| source.to_path_buf());
    let dir = abs.parent().unwrap_or(Path::new("/"));
    default_state_dir(&dir.join("dualwrite-state"), source)
}

/// The state directory for a source file: `<dir>/<file name>-<digest>`, the
/// digest the first 16 hex digits of the SHA-256 of its absolute path (stable
/// across Rust releases).
pub fn default_state_dir(base: &Path, source: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let abs = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "source".into());
    let digest = Sha256::digest(abs.as_os_str().as_encoded_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    base.join(format!("{name}-{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_dir_is_named_by_sha256_of_the_real_path() {
        use sha2::{Digest, Sha256};
        let base = tempfile::tempdir().unwrap();
        let source = base.path().join("app.sqlite3");
        std::fs::write(&source, b"").unwrap();
        let abs = std::fs::canonicalize(&source).unwrap();
        let digest = Sha256::digest(abs.as_os_str().as_encoded_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let states = base.path().join("dualwrite-state");
        assert_eq!(
            default_state_dir(&states, &source),
            states.join(format!("app.sqlite3-{hex}"))
        );
        assert_eq!(
            state_dir_for(&source),
            abs.parent()
                .unwrap()
                .join("dualwrite-state")
                .join(format!("app.sqlite3-{hex}"))
        );
    }
}

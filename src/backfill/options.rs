//! How a backfill runs (`BackfillOptions`, `Progress`) and where its state directory is.

use std::time::Duration;

use crate::catalogue::{Table, TABLES};
use crate::normalise::UnrepresentablePolicy;
use crate::postgres::Postgres;
use crate::state_file::StateDir;

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
    pub state_dir: StateDir,
    /// How long to keep retrying while Supabase is unreachable or overloaded.
    pub max_wait: Duration,
    /// Re-read each landed range from the source and resend what changed.
    pub stale_guard: bool,
    pub progress: Progress,
    /// Reject (the default) or coerce values Supabase cannot hold; coerced
    /// values are recorded in `coerced.ndjson` in the state directory.
    pub unrepresentable: UnrepresentablePolicy,
    /// `--via postgres`: rows go in with COPY over the database connection
    /// string, and `--reset` truncates through it; `None`: PostgREST.
    pub postgres: Option<Postgres>,
}

/// The defaults, which the command line's defaults are read from; the state
/// directory is empty (every run names one, see [`StateDir::of_source`]).
impl Default for BackfillOptions {
    fn default() -> Self {
        BackfillOptions {
            tables: Vec::new(),
            dry_run: false,
            concurrency: 4,
            batch_rows: 500,
            batch_bytes: 1 << 20,
            state_dir: StateDir::new(""),
            max_wait: Duration::from_secs(300),
            stale_guard: true,
            progress: Progress::Quiet,
            unrepresentable: UnrepresentablePolicy::Reject,
            postgres: None,
        }
    }
}

impl BackfillOptions {
    pub fn new(state_dir: impl Into<StateDir>) -> BackfillOptions {
        BackfillOptions {
            state_dir: state_dir.into(),
            ..BackfillOptions::default()
        }
    }

    /// The target as a report names it: the REST endpoint, and the database
    /// (without its password) when rows go in over the connection string.
    pub fn target_name(&self, rest_url: &str) -> String {
        match &self.postgres {
            Some(pg) => format!("{rest_url} (rows via {})", pg.shown()),
            None => rest_url.to_owned(),
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

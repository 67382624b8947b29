//! `--restart` / `--reset`: forgetting recorded progress and emptying the target.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::catalogue::Table;
use crate::db::SupabaseDatabase;
use crate::error::{Error, Result};
use crate::retry::{retry, retry_when, RetryPolicy};
use crate::state_file::{self, StateDir};

use super::landing::transient_but_not_split;
use super::options::BackfillOptions;

/// How many rows a reset deletes per statement, at first.
pub(super) const RESET_CHUNK: usize = 10_000;

/// Forget the progress recorded in `state_dir`: the checkpoint is removed
/// (durably) and `rejects.ndjson` is set aside as
/// `rejects-before-reset-<time>.ndjson`. Every failure is an error.
///
/// `--reset` calls this *before* it deletes anything: a run killed between
/// the two then finds no checkpoint and copies every table again, where a
/// checkpoint left behind would call the emptied tables "done".
pub(super) fn forget_progress(state_dir: &StateDir) -> Result<()> {
    let checkpoint = state_dir.checkpoint();
    state_file::remove(&checkpoint).map_err(|e| match e {
        Error::Io { source, path } => Error::Io {
            source: std::io::Error::new(
                source.kind(),
                format!("cannot remove it ({source}); nothing was deleted"),
            ),
            path,
        },
        other => other,
    })?;
    let old = state_dir.rejects();
    if old.exists() {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        state_file::rename(&old, &state_dir.rejects_before_reset(&stamp))?;
    }
    Ok(())
}

/// `--reset`: forget the recorded progress first ([`forget_progress`]), then
/// empty the selected tables on the target ([`reset_target`]). The caller
/// has asked for confirmation. Returns how many rows were deleted.
pub(super) async fn reset(target: &SupabaseDatabase, opts: &BackfillOptions) -> Result<u64> {
    forget_progress(&opts.state_dir)?;
    let tables = opts.selected();
    if let Some(pg) = &opts.postgres {
        // The connection string's role may TRUNCATE: no function needed.
        return retry(RetryPolicy::for_up_to(opts.max_wait), || {
            pg.truncate(&tables)
        })
        .await;
    }
    match truncate_target(target, &tables, opts.max_wait).await? {
        Some(rows) => Ok(rows),
        None => reset_target(target, &tables, RESET_CHUNK, opts.max_wait).await,
    }
}

/// Empty the target tables with one TRUNCATE, through the service-role-only
/// `rpc/dualwrite_reset` (seconds, whatever their size). Returns how many rows
/// they held, or `None` when the function is missing (its migration,
/// `20261207000200_dox_reset_and_origin.sql`, not applied): the caller then
/// deletes row ranges instead, which a warning says.
pub async fn truncate_target(
    target: &SupabaseDatabase,
    tables: &[&'static Table],
    max_wait: Duration,
) -> Result<Option<u64>> {
    let names: Vec<&str> = tables.iter().map(|t| t.supabase).collect();
    let args = serde_json::json!({ "tables": names });
    let rest = target.rest();
    match retry(RetryPolicy::for_up_to(max_wait), || {
        rest.rpc("dualwrite_reset", &args)
    })
    .await
    {
        Ok(v) => Ok(Some(v.as_u64().unwrap_or(0))),
        Err(Error::Rest { code, .. }) if code.as_deref() == Some("PGRST202") => {
            tracing::warn!(
                "rpc/dualwrite_reset is missing: apply the migration \
                 20261207000200_dox_reset_and_origin.sql for a reset in seconds; \
                 deleting the rows range by range instead"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// How a run treats the state a previous run left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Continue from the checkpoint (the default).
    Resume,
    /// Forget the checkpoint and copy every table again; the target keeps its rows.
    Restart,
    /// Forget the checkpoint, then empty the selected target tables.
    Reset,
}

/// The housekeeping before a run (`--restart`, `--reset`): the checkpoint goes
/// first, so a run killed mid-reset never finds the emptied tables marked done.
/// A dry run changes nothing. The caller has asked for confirmation of a
/// reset. Returns how many target rows were deleted.
pub async fn prepare(
    target: &SupabaseDatabase,
    opts: &BackfillOptions,
    start: Start,
) -> Result<u64> {
    if opts.dry_run {
        return Ok(0);
    }
    match start {
        Start::Resume => Ok(0),
        Start::Restart => {
            forget_progress(&opts.state_dir)?;
            tracing::info!("restart: forgot the checkpoint; copying every table again");
            Ok(0)
        }
        Start::Reset => {
            let deleted = reset(target, opts).await?;
            tracing::info!(rows = deleted, "reset: emptied the target tables");
            Ok(deleted)
        }
    }
}

/// Empty the target tables (children first), `chunk` keys at a time: a single
/// DELETE of a large table could outlast a hosted project's statement timeout.
/// A chunk that times out is halved; transient failures are retried for up to
/// `max_wait`. Returns how many rows were deleted. The caller has asked for
/// confirmation.
pub async fn reset_target(
    target: &SupabaseDatabase,
    tables: &[&'static Table],
    mut chunk: usize,
    max_wait: Duration,
) -> Result<u64> {
    let rest = target.rest();
    let mut deleted = 0u64;
    for t in tables.iter().rev() {
        let key = t.key().supabase;
        let text_key = |row: &Map<String, Value>| {
            row.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    Error::Protocol(format!("{}: a key that is not text: {row:?}", t.supabase))
                })
        };
        let mut deleted_through: Option<String> = None;
        loop {
            let page = retry(RetryPolicy::for_up_to(max_wait), || {
                rest.select_page(t.supabase, key, &[], key, None, chunk.max(1))
            })
            .await?;
            let (Some(first), Some(row)) = (page.first(), page.last()) else {
                break;
            };
            // Keys up to the last chunk's are gone: if one is back, the
            // DELETE did not do what it should, and looping would not help.
            let first = text_key(first)?;
            if deleted_through.as_ref().is_some_and(|d| first <= *d) {
                return Err(Error::Protocol(format!(
                    "{}: rows deleted by the reset are still there",
                    t.supabase
                )));
            }
            let last = text_key(row)?;
            let last = last.as_str();
            let res = retry_when(
                RetryPolicy::for_up_to(max_wait),
                transient_but_not_split,
                || rest.delete_through(t.supabase, key, last),
            )
            .await;
            match res {
                Ok(()) => {
                    deleted += page.len() as u64;
                    deleted_through = Some(last.to_owned());
                }
                Err(e) if e.must_split() && chunk > 1 => chunk /= 2,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(deleted)
}

//! Change capture on Supabase. The objects (the `dualwrite_capture` schema, its
//! change log, the statement-level triggers and the rpc functions the service
//! role calls) are defined by
//! `supabase/migrations/20261128000100_dox_capture.sql` (with its backlog
//! function, `…000300_dox_capture_backlog.sql`, and the resync of a re-created
//! table, `20261207000100_dox_capture_resync.sql`); the triggers are only
//! present while the recorded state says capture is on. `install` and
//! `uninstall` switch that state through `POST /rpc/dualwrite_capture`, which
//! only the service role may call.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, Result};
use crate::rest::RestClient;

/// The migrations that define capture on Supabase, in order (`--print-sql`,
/// for `supabase db push` or `psql -f`). A migration already released is never
/// edited: a later change is a new file.
pub const MIGRATION_SQL: &str = concat!(
    include_str!("../../supabase/migrations/20261128000100_dox_capture.sql"),
    "\n",
    include_str!("../../supabase/migrations/20261128000300_dox_capture_backlog.sql"),
    "\n",
    include_str!("../../supabase/migrations/20261207000100_dox_capture_resync.sql"),
    "\n",
    include_str!("../../supabase/migrations/20261207000200_dox_reset_and_origin.sql"),
);
/// Their file names under `supabase/migrations/`.
pub const MIGRATION_FILES: &str = "20261128000100_dox_capture.sql, \
     20261128000300_dox_capture_backlog.sql, 20261207000100_dox_capture_resync.sql and \
     20261207000200_dox_reset_and_origin.sql";

/// What `public.dualwrite_capture` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureState {
    /// The recorded state: triggers wanted on every DoX table.
    pub enabled: bool,
    /// Tables whose three triggers are not all present (empty when disabled).
    pub missing: Vec<String>,
    /// Changes (keys) in the log not yet drained.
    pub pending: u64,
    /// `pending` is an estimate (a large log is not counted, [`backlog`]);
    /// it is 0 only when the log is empty.
    #[serde(default)]
    pub estimated: bool,
    /// When the oldest pending change was made (RFC 3339), if any.
    pub oldest_at: Option<String>,
}

/// What `public.dualwrite_changes_backlog` reports: the pending keys, counted
/// exactly while the log spans fewer than 10,000 entries and estimated from
/// its seq span beyond (two index lookups, never a scan of the log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backlog {
    pub pending: u64,
    pub estimated: bool,
    /// When the oldest pending change was made (RFC 3339), if any.
    pub oldest_at: Option<String>,
}

/// The backlog of the change log.
pub async fn backlog(rest: &RestClient) -> Result<Backlog> {
    let v = rest.rpc("dualwrite_changes_backlog", &json!({})).await?;
    serde_json::from_value(v.clone()).map_err(|e| {
        Error::Protocol(format!(
            "dualwrite_changes_backlog answered {v} instead of a backlog: {e}"
        ))
    })
}

impl CaptureState {
    /// On, with every trigger in place.
    pub fn installed(&self) -> bool {
        self.enabled && self.missing.is_empty()
    }
}

/// Capture's state on Supabase: on or off, missing triggers, the backlog.
pub async fn state(rest: &RestClient) -> Result<CaptureState> {
    call(rest, None).await
}

/// Switch capture on (idempotent). Switched on while already on, it
/// re-installs the triggers a table lost and queues that table's keys (the
/// reverse daemon's repair).
pub async fn enable(rest: &RestClient) -> Result<CaptureState> {
    call(rest, Some(true)).await
}

/// Switch capture off, which empties the log: it refuses while changes are
/// pending unless `force` (those changes would never reach the SQLite file).
pub async fn disable(rest: &RestClient, force: bool) -> Result<CaptureState> {
    if !force {
        let now = call(rest, None).await?;
        if now.pending > 0 {
            return Err(Error::invalid(format!(
                "{} change(s) on Supabase are not yet in the SQLite file: let \
                 `dualwrite serve --direction reverse` drain them, or pass --force to drop them",
                now.pending
            )));
        }
    }
    call(rest, Some(false)).await
}

async fn call(rest: &RestClient, to: Option<bool>) -> Result<CaptureState> {
    let args = match to {
        Some(on) => json!({ "set_enabled": on }),
        None => json!({}),
    };
    let answer = rest
        .rpc("dualwrite_capture", &args)
        .await
        .map_err(|e| match e.code() {
            Some("PGRST202") => Error::config(format!(
                "the database has no function dualwrite_capture: apply supabase/migrations/{MIGRATION_FILES} \
                 (`dualwrite capture install --target supabase --print-sql` prints it)"
            )),
            Some("42501") => Error::config(
                "only the service role may read or switch capture on Supabase: set SUPABASE_SERVICE_KEY",
            ),
            _ => e,
        })?;
    serde_json::from_value(answer.clone()).map_err(|e| {
        Error::Protocol(format!(
            "dualwrite_capture answered {answer} instead of a capture state: {e}"
        ))
    })
}

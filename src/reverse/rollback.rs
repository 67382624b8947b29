//! `cutover check --rollback`: may the app switch back to the SQLite file now?
//! READY needs all of:
//!
//! * capture on Supabase on, with triggers on every DoX table (otherwise a
//!   write made since cutover may never have reached the file);
//! * no change left in the Supabase change log (`serve --direction reverse`
//!   has drained everything);
//! * forward capture not installed on the file (its triggers would log the
//!   reverse mirror's own writes);
//! * every table verified equal by content, Supabase as the source
//!   ([`crate::verify`] with [`Direction::Reverse`], what `dualwrite verify
//!   --direction reverse` runs), with a key that sees every row (the service role).
//!
//! The check never writes. Stop the app first: writes in flight show up as
//! pending changes or differences.

use serde::Serialize;

use super::capture::{self as rc, CaptureState};
use crate::capture;
use crate::catalogue::TABLES;
use crate::db::{SqliteDatabase, SupabaseDatabase};
use crate::error::{Error, Result};
use crate::verify::{self, Check, Direction, KeyInfo, VerifyOptions};

pub const REPORT_SCHEMA: &str = "dualwrite.rollback/1";

#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub schema: &'static str,
    pub ready: bool,
    /// Why not, when not ready.
    pub reasons: Vec<String>,
    pub capture: CaptureState,
    /// The verification's verdict (EQUAL, DIFFERENT, ...).
    pub verify: String,
    pub rows_in_sqlite: u64,
    pub rows_in_supabase: u64,
}

impl RollbackReport {
    /// 0 READY, 1 NOT READY.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.ready)
    }

    pub fn render_text(&self) -> String {
        let mut s = format!(
            "rollback: {}\ncapture on Supabase: {}, {} change(s) pending\nverify: {} ({} rows in SQLite, {} in Supabase)\n",
            if self.ready { "READY" } else { "NOT READY" },
            if self.capture.installed() {
                "on"
            } else if self.capture.enabled {
                "incomplete"
            } else {
                "off"
            },
            self.capture.pending,
            self.verify,
            self.rows_in_sqlite,
            self.rows_in_supabase
        );
        for r in &self.reasons {
            s.push_str(&format!("  - {r}\n"));
        }
        s
    }
}

/// Check whether `sqlite` (the rollback copy) may become the primary again.
pub async fn check(
    db_path: &std::path::Path,
    sqlite: &SqliteDatabase,
    supabase: &SupabaseDatabase,
    key: KeyInfo,
) -> Result<RollbackReport> {
    let mut reasons = Vec::new();
    let cap = rc::switch(supabase.rest(), None, false).await?;
    if !cap.enabled {
        reasons.push(
            "capture is off on Supabase: writes made since cutover may be missing from the file \
             (`dualwrite capture install --target supabase`, then a fresh copy of the file)"
                .to_owned(),
        );
    } else if !cap.missing.is_empty() {
        reasons.push(format!(
            "capture triggers are missing on: {} (re-run `dualwrite capture install --target supabase`)",
            cap.missing.join(", ")
        ));
    }
    if cap.pending > 0 {
        reasons.push(format!(
            "{} change(s) on Supabase are not yet in the SQLite file: stop the app and let \
             `dualwrite serve --direction reverse` drain them",
            cap.pending
        ));
    }
    let path = db_path.to_owned();
    let forward = tokio::task::spawn_blocking(move || capture::status(&path))
        .await
        .map_err(|e| Error::Sqlite(e.to_string()))??;
    if forward.log_present {
        reasons.push(
            "forward capture is installed on the file: `dualwrite capture uninstall` it before \
             the reverse mirror writes there"
                .to_owned(),
        );
    }
    if !key.full_visibility {
        reasons.push(format!(
            "the key used ({}, role {}) cannot see every row; check with the service role key",
            key.variable, key.role
        ));
    }
    let mut vopts = VerifyOptions::new(key);
    vopts.tables = TABLES.to_vec();
    vopts.check = Check::Content;
    vopts.listed_rows = 5;
    vopts.direction = Direction::Reverse;
    let v = verify::run(sqlite, supabase, &vopts).await?;
    for t in v.unequal_tables() {
        let c = &t.counts;
        reasons.push(match &t.error {
            Some(e) => format!("{}: could not be verified: {e}", t.table),
            None => format!(
                "{}: not equal by content ({} missing in SQLite, {} extra in SQLite, {} different, {} cannot land in SQLite)",
                t.table, c.only_in_source, c.only_in_target, c.different, c.cannot_land
            ),
        });
    }
    Ok(RollbackReport {
        schema: REPORT_SCHEMA,
        ready: reasons.is_empty(),
        reasons,
        capture: cap,
        verify: v.verdict.as_str().to_owned(),
        rows_in_sqlite: v.totals.target_rows,
        rows_in_supabase: v.totals.source_rows,
    })
}

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
//!   --direction reverse` runs), with a key that sees every row (the service role);
//! * no dead letter left (a row the file refused, in the reverse mirror's
//!   `reverse-rejects.ndjson`, `--rejects` or the default state directory of
//!   the file) unless its table now verifies equal (the row was repaired since).
//!
//! The check never writes. Stop the app first: writes in flight show up as
//! pending changes or differences.

use serde::Serialize;

use super::capture::{self as rc, CaptureState};
use crate::backfill::Reject;
use crate::capture;
use crate::catalogue::TABLES;
use crate::cutover::{self, Record, RecordCheck};
use crate::db::{SqliteDatabase, SupabaseDatabase};
use crate::error::Result;
use crate::verify::{self, Check, KeyInfo, VerifyOptions};
use crate::Direction;

pub(crate) const REPORT_SCHEMA: &str = "dualwrite.rollback/1";

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
    /// The reverse mirror's dead letters (rows the file refused).
    pub dead_letters: RecordCheck,
    /// What was not checked, or settled.
    pub notes: Vec<String>,
}

impl RollbackReport {
    /// 0 READY, 3 NOT READY.
    pub fn exit_code(&self) -> u8 {
        if self.ready {
            0
        } else {
            3
        }
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
        if self.dead_letters.checked {
            s.push_str(&format!(
                "dead letters: {} recorded, {} left\n",
                self.dead_letters.records, self.dead_letters.left
            ));
        }
        for r in &self.reasons {
            s.push_str(&format!("  - {r}\n"));
        }
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
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
    dead_letters: Option<&std::path::Path>,
) -> Result<RollbackReport> {
    let mut reasons = Vec::new();
    let cap = rc::state(supabase.rest()).await?;
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
    let forward = crate::sync::blocking("capture", move || capture::status(&path)).await?;
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
    let mut notes = Vec::new();
    let mut refused = Vec::new();
    let rejects = dead_letters.map_or_else(
        || crate::state_file::StateDir::of_source(db_path).reverse_rejects(),
        std::path::Path::to_owned,
    );
    let mut dead_letters = cutover::read_records(
        Some(&rejects),
        "dead-letter",
        "--rejects",
        &mut notes,
        |r: Reject| Record {
            message: format!("{} {}", r.code, r.message),
            table: r.table,
            key: r.key,
        },
        |r| refused.push(r),
    )?;
    // A dead letter is settled once its table verifies equal by content.
    let equal: Vec<&str> = v
        .tables
        .iter()
        .filter(|t| t.status == verify::TableStatus::Equal)
        .flat_map(|t| [t.table, t.supabase_table])
        .collect();
    let left: Vec<&Record> = refused
        .iter()
        .filter(|r| !equal.contains(&r.table.as_str()))
        .collect();
    dead_letters.left = left.len() as u64;
    dead_letters.examples.extend(left.iter().take(5).map(|r| {
        format!(
            "{} {}: {}",
            r.table,
            crate::verify::compare::truncate(&r.key, 80),
            r.message
        )
    }));
    if !left.is_empty() {
        reasons.push(format!(
            "{} row(s) the SQLite file refused ({}) in tables that do not verify equal: fix the \
             cause, then `dualwrite verify --direction reverse --repair`",
            left.len(),
            rejects.display()
        ));
    }
    if dead_letters.malformed > 0 {
        reasons.push(format!(
            "{} line(s) of {} are not dead-letter records",
            dead_letters.malformed,
            rejects.display()
        ));
    }
    if refused.len() > left.len() {
        notes.push(format!(
            "{} dead letter(s) in tables that now verify equal: settled",
            refused.len() - left.len()
        ));
    }
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
        dead_letters,
        notes,
    })
}

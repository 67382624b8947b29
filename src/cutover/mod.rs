//! `cutover check`: may Supabase become the primary now? One verdict, READY or
//! NOT READY, with every reason. READY needs all of:
//!
//! * every table verified equal **by content** ([`crate::verify`], not counts);
//! * the key used has full visibility (the service role), since RLS would
//!   hide rows from any other key;
//! * no recorded secondary failure left unreplayed: every line of the failure
//!   file (NDJSON, one serialised [`crate::db::SecondaryFailure`] per line)
//!   counts (`replay` rewrites the file with only what still fails);
//! * no rejected row left: a line of the rejects file (NDJSON, one
//!   [`crate::backfill::Reject`] per line, as the backfill writes it) is
//!   left unless its table now verifies equal, which means the row has landed
//!   since (or left the source).
//!
//! Rows that landed coerced (`--unrepresentable coerce`) verify equal in their
//! coerced form, but block unless the operator accepts them (`--accept-coerced`).
//! * when change capture is installed on the source ([`crate::capture`]):
//!   no captured change left to mirror, and triggers on every table.
//!
//! A file not given, or absent, means nothing was recorded; the report says
//! that it was not checked. The check never writes.

/// `cutover check --rollback`: may the file become the primary again.
pub use crate::reverse::rollback::{check as check_rollback, RollbackReport};

mod fence;
pub mod marker;
mod rollback;
mod run;

pub use marker::{Marker, Primary};
pub use rollback::rollback;
pub use run::{run, RunOptions, RunReport, Step, RUN_SCHEMA};

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backfill::Reject;
use crate::catalogue::TABLES;
use crate::db::{SecondaryFailure, SqliteDatabase, SupabaseDatabase};
use crate::error::{Error, IoContext, Result};
use crate::normalise::UnrepresentablePolicy;
use crate::verify::{
    self, compare::truncate, Check, KeyInfo, TableStatus, VerifyOptions, VerifyReport,
};

pub const REPORT_SCHEMA: &str = "dualwrite.cutover/1";

#[derive(Debug, Clone)]
pub struct CutoverOptions {
    pub key: KeyInfo,
    /// NDJSON of recorded secondary failures.
    pub failures: Option<PathBuf>,
    /// NDJSON of rows the backfill could not land.
    pub rejects: Option<PathBuf>,
    /// `failures` was named by the operator (a flag or `dual.failure_log`),
    /// not a default: its absence is then a reason not to cut over, since a
    /// wrong path would otherwise read as "nothing recorded".
    pub failures_required: bool,
    /// The same for `rejects`.
    pub rejects_required: bool,
    /// The policy the rows were written with (see [`VerifyOptions::unrepresentable`]).
    pub unrepresentable: UnrepresentablePolicy,
    /// Whether rows that landed coerced may be READY (`--accept-coerced`);
    /// otherwise each blocks the cutover.
    pub accept_coerced: bool,
}

impl CutoverOptions {
    /// Check with `key`, reading the given record files (missing ones read as
    /// empty); coerced rows not accepted.
    pub fn new(key: KeyInfo, failures: Option<PathBuf>, rejects: Option<PathBuf>) -> Self {
        CutoverOptions {
            key,
            failures,
            rejects,
            failures_required: false,
            rejects_required: false,
            unrepresentable: UnrepresentablePolicy::Reject,
            accept_coerced: false,
        }
    }
}

/// What one record file held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecordCheck {
    pub file: Option<String>,
    /// Whether a file was read at all.
    pub checked: bool,
    pub records: u64,
    /// Records that still block the cutover.
    pub left: u64,
    /// Lines that are not records (they block too: the file cannot be trusted).
    pub malformed: u64,
    /// A few of the records left, as `table key: message`.
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CutoverReport {
    pub schema: &'static str,
    /// `READY` or `NOT READY`.
    pub verdict: &'static str,
    pub ready: bool,
    /// Why it is not ready (empty when ready).
    pub reasons: Vec<String>,
    /// What was not checked, or checked and fine but worth knowing.
    pub notes: Vec<String>,
    pub key: KeyInfo,
    pub failures: RecordCheck,
    pub rejects: RecordCheck,
    /// Change capture on the source, read after the verification (`None`: not installed).
    pub capture: Option<crate::capture::CaptureStatus>,
    /// The `serve` daemon's last error, when changes are pending.
    pub serve_last_error: Option<String>,
    /// The content verification the verdict rests on.
    pub verify: VerifyReport,
}

impl CutoverReport {
    /// 0 READY, 3 NOT READY.
    pub fn exit_code(&self) -> u8 {
        if self.ready {
            0
        } else {
            3
        }
    }

    pub fn render_text(&self) -> String {
        let mut o = format!("cutover check: {}\n", self.verdict);
        if !self.reasons.is_empty() {
            o.push_str("reasons:\n");
            for r in &self.reasons {
                o.push_str(&format!("  - {r}\n"));
            }
        }
        if !self.notes.is_empty() {
            o.push_str("notes:\n");
            for n in &self.notes {
                o.push_str(&format!("  - {n}\n"));
            }
        }
        let v = &self.verify;
        o.push_str(&format!(
            "key: {}\ncontent: {} ({} tables, {} rows compared, {:.1} s)\n",
            self.key.describe(),
            v.verdict.as_str(),
            v.tables.len(),
            v.totals.compared,
            v.duration_ms as f64 / 1000.0
        ));
        o
    }
}

/// One record line, reduced to what the check needs.
pub(crate) struct Record {
    pub(crate) table: String,
    pub(crate) key: String,
    pub(crate) message: String,
}

/// Read an NDJSON record file line by line (memory stays flat), each line
/// through the type its writer serialises (`T`: [`SecondaryFailure`] or
/// [`Reject`]); a line that is not one is counted as malformed.
pub(crate) fn read_records<T: serde::de::DeserializeOwned>(
    path: Option<&Path>,
    what: &str,
    flag: &str,
    notes: &mut Vec<String>,
    record: fn(T) -> Record,
    mut each: impl FnMut(Record),
) -> Result<RecordCheck> {
    let mut check = RecordCheck {
        file: path.map(|p| p.display().to_string()),
        ..RecordCheck::default()
    };
    let Some(path) = path else {
        notes.push(format!(
            "no {what} file was checked ({flag} FILE not given): none taken as recorded"
        ));
        return Ok(check);
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            notes.push(format!(
                "{what} file {} does not exist: none taken as recorded",
                path.display()
            ));
            return Ok(check);
        }
        Err(e) => {
            return Err(Error::invalid(format!(
                "cannot read {what} file {}: {e}",
                path.display()
            )))
        }
    };
    check.checked = true;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.at(path)?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(&line) {
            Ok(r) => {
                check.records += 1;
                let mut r = record(r);
                r.message = truncate(&r.message, 160);
                each(r);
            }
            _ => {
                check.malformed += 1;
                if check.examples.len() < 5 {
                    check
                        .examples
                        .push(format!("line {} is not a {what} record", i + 1));
                }
            }
        }
    }
    Ok(check)
}

/// Decide whether the target may become the primary. `Err` only when the
/// check cannot run (Supabase unreachable, a record file unreadable).
pub async fn check(
    source: &SqliteDatabase,
    target: &SupabaseDatabase,
    opts: &CutoverOptions,
) -> Result<CutoverReport> {
    let mut reasons = Vec::new();
    let mut notes = Vec::new();

    let mut failures_left = Vec::new();
    for (path, required, what) in [
        (&opts.failures, opts.failures_required, "failure"),
        (&opts.rejects, opts.rejects_required, "rejects"),
    ] {
        if let (Some(p), true) = (path, required) {
            if !p.exists() {
                reasons.push(format!(
                    "the {what} file {} does not exist: a wrong path would hide what was recorded",
                    p.display()
                ));
            }
        }
    }
    // The failure log holds only failures not yet replayed (replay rewrites it).
    let mut failures = read_records(
        opts.failures.as_deref(),
        "failure",
        "--failures",
        &mut notes,
        |f: SecondaryFailure| Record {
            message: format!("{} failed: {}", f.method, f.error),
            table: f.table,
            key: f.key,
        },
        |r| failures_left.push(r),
    )?;
    let mut rejected = Vec::new();
    let mut rejects = read_records(
        opts.rejects.as_deref(),
        "reject",
        "--rejects",
        &mut notes,
        |r: Reject| Record {
            message: format!("{} {}", r.code, r.message),
            table: r.table,
            key: r.key,
        },
        |r| rejected.push(r),
    )?;

    // Every table, by content, whatever the defaults become.
    let mut vopts = VerifyOptions::new(opts.key.clone());
    vopts.tables = TABLES.to_vec();
    vopts.check = Check::Content;
    vopts.listed_rows = 5;
    vopts.unrepresentable = if opts.accept_coerced {
        UnrepresentablePolicy::Coerce
    } else {
        opts.unrepresentable
    };
    let verify = verify::run(source, target, &vopts).await?;

    let coerced = verify.totals.coerced;
    if coerced > 0 && opts.accept_coerced {
        notes.push(format!(
            "{coerced} row(s) landed with coerced values (lossy; the originals are in coerced.ndjson): accepted"
        ));
    } else if coerced > 0 {
        reasons.push(format!(
            "{coerced} row(s) landed with coerced values (lossy; the originals are in coerced.ndjson); \
             pass --accept-coerced to accept them"
        ));
    }

    if !opts.key.full_visibility {
        reasons.push(format!(
            "the key used ({}, role {}) cannot see every row; check with the service role key",
            opts.key.variable, opts.key.role
        ));
    }
    for t in verify.unequal_tables() {
        let c = &t.counts;
        reasons.push(match (&t.error, t.status) {
            (Some(e), _) => format!("{}: could not be verified: {e}", t.table),
            (None, TableStatus::Different) => format!(
                "{}: not equal by content ({} missing on the target, {} extra, {} different, {} cannot land; {} rows in the source, {} in the target)",
                t.table,
                c.only_in_source,
                c.only_in_target,
                c.different,
                c.cannot_land,
                c.source_rows,
                c.target_rows
            ),
            (None, _) => format!("{}: not equal", t.table),
        });
    }

    failures.left = failures_left.len() as u64;
    failures.examples.extend(
        failures_left
            .iter()
            .take(5)
            .map(|r| format!("{} {}: {}", r.table, truncate(&r.key, 80), r.message)),
    );
    if failures.left > 0 {
        reasons.push(format!(
            "{} recorded secondary failure(s) not replayed ({}); replay them, then remove the file",
            failures.left,
            failures.file.as_deref().unwrap_or("")
        ));
    }
    if failures.malformed > 0 {
        reasons.push(format!(
            "{} line(s) of the failure file are not failure records",
            failures.malformed
        ));
    }

    // A rejected row is settled once its table verifies equal by content.
    let table_equal = |name: &str| {
        verify.tables.iter().any(|t| {
            (t.table == name || t.supabase_table == name) && t.status == TableStatus::Equal
        })
    };
    let (settled, left): (Vec<Record>, Vec<Record>) =
        rejected.into_iter().partition(|r| table_equal(&r.table));
    rejects.left = left.len() as u64;
    rejects.examples.extend(
        left.iter()
            .take(5)
            .map(|r| format!("{} {}: {}", r.table, truncate(&r.key, 80), r.message)),
    );
    if !left.is_empty() {
        reasons.push(format!(
            "{} rejected row(s) left ({}) in tables that do not verify equal",
            left.len(),
            rejects.file.as_deref().unwrap_or("")
        ));
    }
    if rejects.malformed > 0 {
        reasons.push(format!(
            "{} line(s) of the rejects file are not reject records",
            rejects.malformed
        ));
    }
    if !settled.is_empty() {
        notes.push(format!(
            "{} rejected row(s) recorded have landed since: their tables verify equal",
            settled.len()
        ));
    }

    // Read after the verification: a change committed during it shows here.
    let db = source.path().to_path_buf();
    let capture = crate::sync::blocking("capture", move || crate::capture::status(&db)).await?;
    let mut serve_last_error = None;
    let capture = if capture.log_present {
        if capture.pending > 0 {
            serve_last_error =
                crate::serve::read_status_file(source.path()).and_then(|s| s.last_error);
            reasons.push(format!(
                "{} captured change(s) not mirrored yet (the oldest {:.0}s old){}; let `dualwrite serve` drain them",
                capture.pending,
                capture.lag_seconds,
                serve_last_error
                    .as_deref()
                    .map(|e| format!("; serve's last error: {e}"))
                    .unwrap_or_default()
            ));
        }
        if !capture.missing.is_empty() {
            reasons.push(format!(
                "capture triggers are missing on {}: writes to them are not captured; run `dualwrite capture install`",
                capture.missing.join(", ")
            ));
        }
        Some(capture)
    } else {
        // Not installed: writes since the backfill reach Supabase only through
        // dual write (the report's `capture` is null).
        None
    };

    let ready = reasons.is_empty();
    Ok(CutoverReport {
        schema: REPORT_SCHEMA,
        verdict: if ready { "READY" } else { "NOT READY" },
        ready,
        reasons,
        notes,
        key: opts.key.clone(),
        failures,
        rejects,
        capture,
        serve_last_error,
        verify,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_files_are_read_through_the_writers_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failures.ndjson");
        let failure = SecondaryFailure {
            method: "add_tag".into(),
            table: "tagrow".into(),
            key: "t1".into(),
            error: "unreachable".into(),
            transient: true,
            at: "2026-01-01T00:00:00Z".into(),
            write: crate::model::Write::from_call(
                "add_tag",
                serde_json::json!({"tag": {"id": "t1", "document_id": "d", "tag": "x"}}),
            )
            .unwrap(),
        };
        let mut marked = serde_json::to_value(&failure).unwrap();
        // No writer produces `replayed`: such a line is a failure like any other.
        marked["replayed"] = true.into();
        let lines = [
            serde_json::to_string(&failure).unwrap(),
            marked.to_string(),
            // Has a table and a key, but is not a recorded failure.
            r#"{"table": "tagrow", "key": "t2"}"#.to_owned(),
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let mut left = Vec::new();
        let mut notes = Vec::new();
        let check = read_records(
            Some(&path),
            "failure",
            "--failures",
            &mut notes,
            |f: SecondaryFailure| Record {
                message: f.error,
                table: f.table,
                key: f.key,
            },
            |r| left.push(r.key),
        )
        .unwrap();
        assert_eq!((check.records, check.malformed), (2, 1));
        assert_eq!(left, ["t1", "t1"]);
    }
}

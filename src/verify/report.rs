//! The report: [`VerifyReport`], per table [`TableReport`], the counts and the verdict.

use serde::Serialize;

use super::compare;
use super::repair;
use super::{Check, KeyInfo};
use crate::catalogue::Table;
use crate::error::Error;
use crate::normalise::UnrepresentablePolicy;
use crate::Direction;

/// The `schema` field of the JSON report; bumped on any incompatible change.
pub const REPORT_SCHEMA: &str = "dualwrite.verify/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Counts,
    Content,
    Sample,
}

/// The overall result, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A table could not be verified (exit code 1: it could not be told).
    Incomplete,
    /// The key cannot see every row, so "equal" cannot be concluded (exit code 1).
    PartialVisibility,
    /// At least one difference (exit code 3: done, and the answer is no).
    Different,
    /// Both sides agree on everything checked (exit code 0).
    Equal,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Equal => 0,
            Verdict::Different => 3,
            Verdict::Incomplete | Verdict::PartialVisibility => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Equal => "EQUAL",
            Verdict::Different => "DIFFERENT",
            Verdict::PartialVisibility => "PARTIAL VISIBILITY",
            Verdict::Incomplete => "INCOMPLETE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableStatus {
    Equal,
    Different,
    Error,
}

/// Row counts. `source_rows` and `target_rows` are the exact counts; the others
/// count rows compared by content (all rows, or the sample).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub source_rows: u64,
    pub target_rows: u64,
    /// Source rows compared by content.
    pub compared: u64,
    pub equal: u64,
    pub only_in_source: u64,
    pub only_in_target: u64,
    pub different: u64,
    pub cannot_land: u64,
    /// Equal rows (counted in `equal` too) that land only coerced, under `--unrepresentable coerce`.
    pub coerced: u64,
}

impl Counts {
    pub(super) fn add(&mut self, o: &Counts) {
        self.source_rows += o.source_rows;
        self.target_rows += o.target_rows;
        self.compared += o.compared;
        self.equal += o.equal;
        self.only_in_source += o.only_in_source;
        self.only_in_target += o.only_in_target;
        self.different += o.different;
        self.cannot_land += o.cannot_land;
        self.coerced += o.coerced;
    }

    /// Rows that are not equal on both sides.
    pub fn differences(&self) -> u64 {
        self.only_in_source + self.only_in_target + self.different + self.cannot_land
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowKind {
    OnlyInSource,
    OnlyInTarget,
    Different,
    CannotLand,
    /// Equal, in the coerced form (not a difference): listed so that the
    /// operator sees which rows hold changed values.
    Coerced,
}

impl RowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RowKind::OnlyInSource => "only in source",
            RowKind::OnlyInTarget => "only in target",
            RowKind::Different => "different",
            RowKind::CannotLand => "cannot land",
            RowKind::Coerced => "coerced",
        }
    }
}

/// One row that is not equal on both sides.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowDiff {
    pub kind: RowKind,
    /// The key (truncated to 200 characters).
    pub key: String,
    /// For `different`: the columns that differ.
    pub columns: Vec<compare::ColumnDiff>,
    /// For `cannot_land`: why the normaliser refuses the row; for `coerced`:
    /// the coerced columns and how.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LossyCount {
    /// SQLite column name.
    pub column: &'static str,
    pub conversion: &'static str,
    pub rows: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableReport {
    /// SQLite table name.
    pub table: &'static str,
    pub supabase_table: &'static str,
    pub status: TableStatus,
    pub error: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
    /// Segments compared, and how many of them had to be compared row by row.
    pub segments: u64,
    pub segments_differing: u64,
    /// Documented lossy conversions the normaliser made to source rows (e.g. `NaN` in JSON).
    pub lossy: Vec<LossyCount>,
    pub notes: Vec<String>,
    /// The first differing rows (at most `listed_rows`), in key order.
    pub rows: Vec<RowDiff>,
    /// Differing rows counted but not listed.
    pub rows_not_listed: u64,
    pub duration_ms: u64,
}

impl TableReport {
    pub(super) fn new(t: &'static Table) -> TableReport {
        TableReport {
            table: t.sqlite,
            supabase_table: t.supabase,
            status: TableStatus::Equal,
            error: None,
            counts: Counts::default(),
            segments: 0,
            segments_differing: 0,
            lossy: Vec::new(),
            notes: Vec::new(),
            rows: Vec::new(),
            rows_not_listed: 0,
            duration_ms: 0,
        }
    }

    pub(super) fn fail(&mut self, e: &Error) {
        let msg = e.to_string();
        self.error = Some(match &self.error {
            Some(prev) => format!("{prev}; {msg}"),
            None => msg,
        });
    }

    pub(super) fn finish(&mut self, check: Check) {
        let c = &self.counts;
        self.status = if self.error.is_some() {
            TableStatus::Error
        } else if c.source_rows != c.target_rows || c.differences() > 0 {
            TableStatus::Different
        } else {
            TableStatus::Equal
        };
        if check == Check::Content && self.error.is_none() && !self.counts_agree() {
            self.notes.push(
                "the exact counts and the rows read differ: rows were written during verification"
                    .into(),
            );
        }
    }

    /// Whether the content pass agrees with the exact counts taken before it.
    /// When it does not, rows were written in between.
    pub(crate) fn counts_agree(&self) -> bool {
        let c = &self.counts;
        let differences = c.differences() > 0;
        c.compared == c.source_rows && (differences || c.source_rows == c.target_rows)
    }
}

/// Where a side lives (never with credentials).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub kind: &'static str,
    pub location: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tolerance {
    pub float_relative: f64,
    pub applies_to: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    /// [`REPORT_SCHEMA`].
    pub schema: &'static str,
    pub tool_version: &'static str,
    /// RFC 3339 UTC.
    pub generated_at: String,
    pub duration_ms: u64,
    /// Peak resident memory of the process so far (Linux), for benchmarks.
    pub peak_rss_bytes: Option<u64>,
    pub mode: Mode,
    /// Rows sampled per table in sample mode.
    pub sample_rows: Option<usize>,
    /// `forward` (SQLite is the source) or `reverse` (Supabase is the source).
    pub direction: Direction,
    pub source: Endpoint,
    pub target: Endpoint,
    pub key: KeyInfo,
    pub tolerance: Tolerance,
    /// The policy for values Supabase cannot hold that the comparison assumed.
    pub unrepresentable: UnrepresentablePolicy,
    pub verdict: Verdict,
    pub exit_code: u8,
    pub totals: Counts,
    pub tables: Vec<TableReport>,
    /// Set by `verify --repair` on the report of the second verification.
    pub repair: Option<repair::RepairOutcome>,
}

impl VerifyReport {
    pub(super) fn conclude(&mut self) {
        let mut totals = Counts::default();
        for t in &self.tables {
            totals.add(&t.counts);
        }
        self.totals = totals;
        // No table verified is no evidence of equality.
        let nothing = self.tables.is_empty();
        self.verdict = if nothing || self.tables.iter().any(|t| t.status == TableStatus::Error) {
            Verdict::Incomplete
        } else if !self.key.full_visibility {
            Verdict::PartialVisibility
        } else if self.tables.iter().any(|t| t.status != TableStatus::Equal) {
            Verdict::Different
        } else {
            Verdict::Equal
        };
        self.exit_code = self.verdict.exit_code();
    }

    /// How a report names a kind of row: in reverse, "missing in SQLite" and
    /// "extra in SQLite" (forward keeps the names it always had).
    pub fn kind_label(&self, kind: RowKind) -> String {
        match (self.direction, kind) {
            (Direction::Reverse, RowKind::OnlyInSource) => {
                format!("missing in {}", self.direction.target())
            }
            (Direction::Reverse, RowKind::OnlyInTarget) => {
                format!("extra in {}", self.direction.target())
            }
            (_, k) => k.as_str().to_owned(),
        }
    }

    /// Tables that are not equal (or could not be verified).
    pub fn unequal_tables(&self) -> impl Iterator<Item = &TableReport> {
        self.tables
            .iter()
            .filter(|t| t.status != TableStatus::Equal)
    }
}

//! `verify`: does Supabase hold what the SQLite file holds?
//!
//! [`run`] returns a [`VerifyReport`]; `Err` only when verification cannot run
//! at all (Supabase unreachable, the key rejected). Differences, tables that
//! could not be read and rows that cannot land are data in the report.
//!
//! Per table it takes exact counts on both sides (SQLite `count(*)`, PostgREST
//! `HEAD` with `count=exact`), then, in content mode, reads both sides once in
//! key order, concurrently: `SqliteDatabase::page` and `SupabaseDatabase::page`,
//! both keyset pages (PostgREST silently caps a read at max-rows, so every
//! read is paginated; the adapters build the requests, verify none). Keys sort identically on both sides
//! (SQLite BINARY, PostgreSQL `COLLATE "C"`: bytes), which makes a merge join
//! possible with memory bounded by a few pages whatever the table's size.
//!
//! The two ordered streams are cut into segments that cover the same key
//! range on both sides. A segment whose digests (over key and row digest of
//! every canonical row) agree is equal as a whole. In a segment whose digests
//! differ, the rows are merged by key one by one (a per-row compare, not a
//! bisection: the segment is already in memory, and a row digest settles most
//! rows) and each row is classified: only in source, only in target, different
//! (with the columns and short redacted samples), equal (digests equal, or
//! equal under [`compare::same_in`]: exact decimal values, and the float tolerance in float columns), or "cannot land" (a source
//! row the normaliser refuses, reported with its reason).
//!
//! Verify never writes. [`repair`] does, and only after the caller confirmed.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::catalogue::{self, Table, TABLES};
use crate::config::Settings;
use crate::db::supabase::PAGE_ROWS;
use crate::db::{SqliteDatabase, SupabaseDatabase};
use crate::error::{Error, Result};
use crate::normalise::{self, Lossy, SqlRow, SqlValue, UnrepresentablePolicy};
use crate::rest::KeyKind;
use crate::retry::{retry, RetryPolicy};

pub mod compare;
mod render;
pub mod repair;

pub use compare::FLOAT_RELATIVE_TOLERANCE;
// Their home is `rest` now; `serve` still reaches them here.
pub use crate::rest::{in_list_value, key_chunks};
pub use render::{render, Format};

/// The `schema` field of the JSON report; bumped on any incompatible change.
pub const REPORT_SCHEMA: &str = "dualwrite.verify/1";

/// Longest key a report shows, in characters.
const KEY_CHARS: usize = 200;

/// What to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Exact row counts only (fast).
    Counts,
    /// Every row, by content.
    Content,
    /// Counts, plus this many random source rows per table fetched from the target by key.
    Sample { rows: usize },
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Tables to verify, in this order.
    pub tables: Vec<&'static Table>,
    pub check: Check,
    /// The key the target client uses, as [`KeyInfo::of`] describes it.
    pub key: KeyInfo,
    /// Source rows per segment (also the SQLite page size).
    pub segment_rows: usize,
    /// Differing rows listed per table (all are counted).
    pub listed_rows: usize,
    /// The policy the rows were written with. Under `coerce`, a source row the
    /// normaliser coerces is compared in its coerced form: equal rows count as
    /// equal, and are listed (and counted) as "coerced".
    pub unrepresentable: UnrepresentablePolicy,
}

impl VerifyOptions {
    /// Every table, by content, segments of 1000 rows, 20 rows listed per table.
    pub fn new(key: KeyInfo) -> VerifyOptions {
        VerifyOptions {
            tables: TABLES.to_vec(),
            check: Check::Content,
            key,
            segment_rows: 1000,
            listed_rows: 20,
            unrepresentable: UnrepresentablePolicy::Reject,
        }
    }
}

/// Tables named on the command line (SQLite or Supabase names), in catalogue order.
pub fn tables_named(names: &[String]) -> Result<Vec<&'static Table>> {
    let wanted = catalogue::tables_named(names)?;
    if wanted.is_empty() {
        return Err(Error::invalid("--tables names no table"));
    }
    Ok(wanted)
}

/// Which key verification used. Never holds the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Where the key came from, e.g. `SUPABASE_SERVICE_KEY`.
    pub variable: String,
    /// `jwt`, `sb_secret` or `sb_publishable`.
    pub kind: &'static str,
    /// The role it acts as: the JWT's `role` claim, `service_role` for an
    /// `sb_secret_` key, `anon` for an `sb_publishable_` key, or `unknown`.
    pub role: String,
    /// Only the service role bypasses row level security and sees every row.
    pub full_visibility: bool,
}

impl KeyInfo {
    pub fn of(variable: impl Into<String>, key: &str) -> KeyInfo {
        let (kind, role) = match KeyKind::of(key) {
            KeyKind::Secret => ("sb_secret", "service_role".to_owned()),
            KeyKind::Publishable => ("sb_publishable", "anon".to_owned()),
            KeyKind::Jwt => (
                "jwt",
                crate::keys::decode(key)
                    .ok()
                    .and_then(|t| t["claims"]["role"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "unknown".to_owned()),
            ),
        };
        KeyInfo {
            variable: variable.into(),
            kind,
            full_visibility: role == "service_role",
            role,
        }
    }

    /// The key a Supabase client built from these settings uses (the service key if set).
    pub fn from_settings(s: &Settings) -> Option<KeyInfo> {
        use secrecy::ExposeSecret;
        match (&s.supabase.service_key, &s.supabase.anon_key) {
            (Some(k), _) => Some(KeyInfo::of("SUPABASE_SERVICE_KEY", k.expose_secret())),
            (None, Some(k)) => Some(KeyInfo::of("SUPABASE_ANON_KEY", k.expose_secret())),
            (None, None) => None,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({}, role {}): {}",
            self.variable,
            self.kind,
            self.role,
            if self.full_visibility {
                "full visibility"
            } else {
                "PARTIAL visibility (row level security hides rows from this key)"
            }
        )
    }
}

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
    /// A table could not be verified (exit code 2).
    Incomplete,
    /// The key cannot see every row, so "equal" cannot be concluded (exit code 2).
    PartialVisibility,
    /// At least one difference (exit code 1).
    Different,
    /// Both sides agree on everything checked (exit code 0).
    Equal,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Equal => 0,
            Verdict::Different => 1,
            Verdict::Incomplete | Verdict::PartialVisibility => 2,
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
    fn add(&mut self, o: &Counts) {
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
    fn new(t: &'static Table) -> TableReport {
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

    fn fail(&mut self, e: &Error) {
        let msg = e.to_string();
        self.error = Some(match &self.error {
            Some(prev) => format!("{prev}; {msg}"),
            None => msg,
        });
    }

    fn finish(&mut self, check: Check) {
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
    fn conclude(&mut self) {
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

    /// Tables that are not equal (or could not be verified).
    pub fn unequal_tables(&self) -> impl Iterator<Item = &TableReport> {
        self.tables
            .iter()
            .filter(|t| t.status != TableStatus::Equal)
    }
}

/// A URL as a report may show it: without user, password, query or fragment.
fn public_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string().trim_end_matches('/').to_owned()
        }
        Err(_) => "(unparseable URL)".into(),
    }
}

/// Errors after which no other table can be verified either.
fn fatal(e: &Error) -> bool {
    matches!(
        e,
        Error::Unreachable { .. } | Error::Timeout(_) | Error::Rest { status: 401, .. }
    )
}

/// Verify `target` against `source`. Never writes.
pub async fn run(
    source: &SqliteDatabase,
    target: &SupabaseDatabase,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    run_inner(source, target, opts, None).await
}

pub(crate) async fn run_inner(
    source: &SqliteDatabase,
    target: &SupabaseDatabase,
    opts: &VerifyOptions,
    mut plan: Option<&mut repair::RepairPlan>,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let (mode, sample_rows) = match opts.check {
        Check::Counts => (Mode::Counts, None),
        Check::Content => (Mode::Content, None),
        Check::Sample { rows } => (Mode::Sample, Some(rows)),
    };
    let mut report = VerifyReport {
        schema: REPORT_SCHEMA,
        tool_version: env!("CARGO_PKG_VERSION"),
        generated_at: normalise::now_text(),
        duration_ms: 0,
        peak_rss_bytes: None,
        mode,
        sample_rows,
        source: Endpoint {
            kind: "sqlite",
            location: source.path().display().to_string(),
        },
        target: Endpoint {
            kind: "supabase",
            location: public_url(target.rest().url()),
        },
        key: opts.key.clone(),
        tolerance: Tolerance {
            float_relative: FLOAT_RELATIVE_TOLERANCE,
            applies_to: "float columns; numbers inside JSON compare by exact decimal value",
        },
        unrepresentable: opts.unrepresentable,
        verdict: Verdict::Equal,
        exit_code: 0,
        totals: Counts::default(),
        tables: Vec::new(),
        repair: None,
    };
    let (source_counts, target_counts) = tokio::join!(
        count_source(source, &opts.tables),
        count_target(target, &opts.tables)
    );
    // One set of random digest keys per run: both sides hash alike, and nobody
    // can craft rows that collide.
    let digests = RandomState::new();
    for ((t, sc), tc) in opts
        .tables
        .iter()
        .copied()
        .zip(source_counts)
        .zip(target_counts)
    {
        let table_started = Instant::now();
        let mut tr = TableReport::new(t);
        if !source.has_table(t) {
            tr.notes
                .push("the SQLite file has no such table (counted as empty)".into());
        }
        match sc {
            Ok(n) => tr.counts.source_rows = n,
            Err(e) => tr.fail(&e),
        }
        match tc {
            Ok(n) => tr.counts.target_rows = n,
            Err(e) if fatal(&e) => return Err(e),
            Err(e) => tr.fail(&e),
        }
        if tr.error.is_none() {
            let table_plan = plan.as_deref_mut().map(|p| p.table_mut(t));
            let outcome = match opts.check {
                Check::Counts => Ok(()),
                Check::Content => {
                    let merger = Merger::new(t, &mut tr, table_plan, opts, &digests);
                    compare_content(source, target, opts.segment_rows, merger).await
                }
                Check::Sample { rows } => {
                    let merger = Merger::new(t, &mut tr, table_plan, opts, &digests);
                    compare_sample(source, target, rows, merger).await
                }
            };
            match outcome {
                Err(e) if fatal(&e) => return Err(e),
                Err(e) => tr.fail(&e),
                Ok(()) => {}
            }
        }
        tr.finish(opts.check);
        tr.duration_ms = millis(table_started);
        let c = &tr.counts;
        tracing::debug!(
            table = t.sqlite,
            status = ?tr.status,
            source_rows = c.source_rows,
            target_rows = c.target_rows,
            equal = c.equal,
            differences = c.differences(),
            ms = tr.duration_ms,
            "table verified"
        );
        report.tables.push(tr);
    }
    report.duration_ms = millis(started);
    report.peak_rss_bytes = crate::backfill::peak_rss_bytes();
    report.conclude();
    Ok(report)
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn count_source(source: &SqliteDatabase, tables: &[&'static Table]) -> Vec<Result<u64>> {
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        out.push(source.count(t).await);
    }
    out
}

/// Exact counts of every table at once: each is one `HEAD … count=exact`.
async fn count_target(target: &SupabaseDatabase, tables: &[&'static Table]) -> Vec<Result<u64>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in tables.iter().copied().enumerate() {
        let target = SupabaseDatabase::new(target.rest().clone());
        set.spawn(async move { (i, retry(RetryPolicy::default(), || target.count(t)).await) });
    }
    let mut out: Vec<Result<u64>> = tables
        .iter()
        .map(|_| Err(Error::Protocol("count not taken".into())))
        .collect();
    while let Some(done) = set.join_next().await {
        if let Ok((i, r)) = done {
            out[i] = r;
        }
    }
    out
}

/// A source row, canonical, or the reason it cannot land.
enum SourceItem {
    Row {
        /// The key is read from the row (`key_column`), not copied: at a
        /// million rows per table every allocation counts.
        key_column: &'static str,
        row: Map<String, Value>,
        digest: u64,
        lossy: Vec<(&'static str, Lossy)>,
    },
    CannotLand {
        /// `None` when the key itself cannot be a Supabase key (NULL, a blob,
        /// not UTF-8): such rows have no place in the key order.
        key: Option<String>,
        shown: String,
        reason: String,
    },
}

impl SourceItem {
    fn new(
        t: &'static Table,
        row: &SqlRow,
        digests: &RandomState,
        policy: UnrepresentablePolicy,
    ) -> SourceItem {
        let key_column = t.key().supabase;
        let reason = match normalise::to_canonical_with(t, row, policy) {
            Ok(c) if c.row.get(key_column).is_some_and(Value::is_string) => {
                return SourceItem::Row {
                    digest: compare::row_digest(digests, &c.row),
                    key_column,
                    row: c.row,
                    lossy: c.lossy,
                }
            }
            Ok(_) => None,
            Err(Error::Unrepresentable { column, reason, .. }) => {
                Some(format!("column {column}: {reason}"))
            }
            Err(e) => Some(e.to_string()),
        };
        let shown = row[0].display();
        match (normalise::value_to_canonical(t.key(), &row[0]), reason) {
            (Ok((Value::String(k), _)), Some(reason)) => SourceItem::CannotLand {
                key: Some(k),
                shown,
                reason,
            },
            (Err(why), _) => SourceItem::CannotLand {
                key: None,
                shown,
                reason: format!("the key {}: {why}", t.key().sqlite),
            },
            (_, _) => SourceItem::CannotLand {
                key: None,
                shown,
                reason: format!("the key {} is NULL", t.key().sqlite),
            },
        }
    }

    fn key(&self) -> Option<&str> {
        match self {
            SourceItem::Row {
                key_column, row, ..
            } => row.get(*key_column).and_then(Value::as_str),
            SourceItem::CannotLand { key, .. } => key.as_deref(),
        }
    }
}

/// A target row, canonical.
struct TargetRow {
    key_column: &'static str,
    row: Map<String, Value>,
    digest: u64,
}

impl TargetRow {
    fn new(t: &'static Table, raw: Map<String, Value>, digests: &RandomState) -> Result<Self> {
        let row = normalise::from_supabase_owned(t, raw);
        let key_column = t.key().supabase;
        if let Some(other) = row.get(key_column).filter(|k| !k.is_string()) {
            return Err(Error::Protocol(format!(
                "{}: a row whose key is not text: {other}",
                t.supabase
            )));
        }
        Ok(TargetRow {
            digest: compare::row_digest(digests, &row),
            key_column,
            row,
        })
    }

    fn key(&self) -> &str {
        // `new` checked that the key is text (from_supabase_owned fills every column).
        self.row
            .get(self.key_column)
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// Classifies rows and keeps the table report (and the repair plan) up to date.
struct Merger<'a> {
    t: &'static Table,
    tr: &'a mut TableReport,
    plan: Option<&'a mut repair::TablePlan>,
    listed: usize,
    digests: &'a RandomState,
    policy: UnrepresentablePolicy,
}

impl<'a> Merger<'a> {
    fn new(
        t: &'static Table,
        tr: &'a mut TableReport,
        plan: Option<&'a mut repair::TablePlan>,
        opts: &VerifyOptions,
        digests: &'a RandomState,
    ) -> Self {
        Merger {
            t,
            tr,
            plan,
            listed: opts.listed_rows,
            digests,
            policy: opts.unrepresentable,
        }
    }

    /// An equal row that holds coerced values: counted and listed, not a difference.
    fn note_coerced(&mut self, key: &str, lossy: &[(&'static str, Lossy)]) {
        let coerced: Vec<String> = lossy
            .iter()
            .filter(|(_, l)| l.is_coercion())
            .map(|(c, l)| format!("{c}: {}", l.as_str()))
            .collect();
        if !coerced.is_empty() {
            self.record(
                RowKind::Coerced,
                key,
                Vec::new(),
                Some(format!("equal as coerced ({})", coerced.join(", "))),
            );
        }
    }

    fn record(
        &mut self,
        kind: RowKind,
        key: &str,
        columns: Vec<compare::ColumnDiff>,
        reason: Option<String>,
    ) {
        let c = &mut self.tr.counts;
        match kind {
            RowKind::OnlyInSource => c.only_in_source += 1,
            RowKind::OnlyInTarget => c.only_in_target += 1,
            RowKind::Different => c.different += 1,
            RowKind::CannotLand => c.cannot_land += 1,
            RowKind::Coerced => c.coerced += 1,
        }
        if let Some(p) = self.plan.as_deref_mut() {
            p.note(kind, key);
        }
        if self.tr.rows.len() < self.listed {
            self.tr.rows.push(RowDiff {
                kind,
                key: compare::truncate(key, KEY_CHARS),
                columns,
                reason: reason.map(|r| {
                    if compare::looks_secret(&r) {
                        "[redacted]".into()
                    } else {
                        r
                    }
                }),
            });
        } else {
            self.tr.rows_not_listed += 1;
        }
    }

    fn count_lossy(&mut self, lossy: &[(&'static str, Lossy)]) {
        for (column, l) in lossy {
            let conversion = l.as_str();
            match self
                .tr
                .lossy
                .iter_mut()
                .find(|x| x.column == *column && x.conversion == conversion)
            {
                Some(x) => x.rows += 1,
                None => self.tr.lossy.push(LossyCount {
                    column,
                    conversion,
                    rows: 1,
                }),
            }
        }
    }

    /// A source row and the target row with the same key (or none).
    fn pair(&mut self, s: SourceItem, t: Option<TargetRow>) {
        self.tr.counts.compared += 1;
        let key = s.key().unwrap_or_default().to_owned();
        match (s, t) {
            (SourceItem::CannotLand { shown, reason, .. }, t) => {
                let reason = if t.is_some() {
                    format!("{reason} (the target holds a row with this key)")
                } else {
                    reason
                };
                self.record(RowKind::CannotLand, &shown, Vec::new(), Some(reason));
            }
            (SourceItem::Row { lossy, .. }, None) => {
                self.count_lossy(&lossy);
                self.record(RowKind::OnlyInSource, &key, Vec::new(), None);
            }
            (
                SourceItem::Row {
                    row, digest, lossy, ..
                },
                Some(t),
            ) => {
                self.count_lossy(&lossy);
                if digest == t.digest {
                    self.tr.counts.equal += 1;
                    self.note_coerced(&key, &lossy);
                    return;
                }
                let columns = compare::diff_row(self.t, &row, &t.row);
                if columns.is_empty() {
                    // Equal under the tolerance, in another representation.
                    self.tr.counts.equal += 1;
                    self.note_coerced(&key, &lossy);
                } else {
                    self.record(RowKind::Different, &key, columns, None);
                }
            }
        }
    }

    fn only_in_target(&mut self, t: TargetRow) {
        self.record(RowKind::OnlyInTarget, t.key(), Vec::new(), None);
    }

    fn segment_digest<'k>(&self, items: impl Iterator<Item = (&'k str, u64)>) -> u64 {
        let mut h = self.digests.build_hasher();
        for (k, d) in items {
            k.hash(&mut h);
            d.hash(&mut h);
        }
        h.finish()
    }

    /// Compare one segment: both sides' rows of the same key range, in key order.
    fn segment(&mut self, source: Vec<SourceItem>, target: Vec<TargetRow>) {
        self.tr.segments += 1;
        let all_rows = source.iter().all(|s| matches!(s, SourceItem::Row { .. }));
        if all_rows && source.len() == target.len() {
            let sd = self.segment_digest(source.iter().filter_map(|s| match s {
                SourceItem::Row { digest, .. } => Some((s.key().unwrap_or_default(), *digest)),
                SourceItem::CannotLand { .. } => None,
            }));
            let td = self.segment_digest(target.iter().map(|t| (t.key(), t.digest)));
            if sd == td {
                let n = source.len() as u64;
                self.tr.counts.compared += n;
                self.tr.counts.equal += n;
                for s in &source {
                    if let SourceItem::Row { lossy, .. } = s {
                        self.count_lossy(lossy);
                        self.note_coerced(s.key().unwrap_or_default(), lossy);
                    }
                }
                return;
            }
        }
        self.tr.segments_differing += 1;
        let mut s = source.into_iter().peekable();
        let mut t = target.into_iter().peekable();
        loop {
            let order = match (s.peek(), t.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(a), Some(b)) => a.key().unwrap_or_default().cmp(b.key()),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let a = s.next().expect("peeked");
                    self.pair(a, None);
                }
                std::cmp::Ordering::Greater => {
                    let b = t.next().expect("peeked");
                    self.only_in_target(b);
                }
                std::cmp::Ordering::Equal => {
                    let a = s.next().expect("peeked");
                    let b = t.next();
                    self.pair(a, b);
                }
            }
        }
    }

    /// A source row whose key cannot exist in Supabase: reported, outside the merge.
    fn unkeyed(&mut self, s: SourceItem) {
        self.pair(s, None);
    }
}

type Pages<T> = mpsc::Receiver<Result<Vec<T>>>;

/// Keys must arrive strictly increasing, page after page: the merge join
/// depends on it. `last` is the last key of the previous page (one copy per
/// page, not per row).
fn check_order<'k>(
    table: &Table,
    side: &str,
    last: &mut Option<String>,
    keys: impl Iterator<Item = &'k str>,
) -> Result<()> {
    let mut prev: Option<&str> = None;
    for key in keys {
        if let Some(before) = prev.or(last.as_deref()).filter(|b| key <= *b) {
            let why = if side == "SQLite" {
                "the key column holds non-text values (e.g. integers) or has a non-BINARY collation"
            } else {
                "the key column is not COLLATE \"C\": apply supabase/migrations/"
            };
            return Err(Error::invalid(format!(
                "{}: {side} returned key `{}` after `{}`: keys are not in byte order ({why}); content not verified",
                table.sqlite,
                compare::truncate(key, 80),
                compare::truncate(before, 80),
            )));
        }
        prev = Some(key);
    }
    if let Some(p) = prev {
        *last = Some(p.to_owned());
    }
    Ok(())
}

/// Aborts a spawned reader when the comparison stops early (on an error).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lost_worker(e: tokio::task::JoinError) -> Error {
    Error::Io(std::io::Error::other(format!(
        "a verification worker stopped: {e}"
    )))
}

/// Canonicalise a page of source rows off the async threads: parsing JSON
/// text and copying long texts is the largest CPU cost of a content run.
async fn canonical_page(
    t: &'static Table,
    page: Vec<SqlRow>,
    digests: RandomState,
    policy: UnrepresentablePolicy,
) -> Result<Vec<SourceItem>> {
    tokio::task::spawn_blocking(move || {
        page.iter()
            .map(|r| SourceItem::new(t, r, &digests, policy))
            .collect()
    })
    .await
    .map_err(lost_worker)
}

/// The target side, as a task of its own: HTTP, JSON parsing and
/// normalisation run on another core while the caller compares. The request
/// for page N+1 is in flight while page N is normalised.
async fn read_target(
    target: SupabaseDatabase,
    t: &'static Table,
    digests: RandomState,
    tx: mpsc::Sender<Result<Vec<TargetRow>>>,
) {
    let key = t.key().supabase;
    let target = &target;
    let fetch = |after: Option<String>| async move {
        retry(RetryPolicy::default(), || {
            target.page(t, after.as_deref(), PAGE_ROWS)
        })
        .await
    };
    let mut page = fetch(None).await;
    loop {
        let raw = match page {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        // Only an empty page ends the table: a server whose max-rows is
        // below TARGET_PAGE returns short pages before the end.
        let Some(last) = raw.last() else { return };
        let after = match last.get(key) {
            Some(Value::String(k)) => k.clone(),
            other => {
                let e = Error::Protocol(format!(
                    "{}: a row whose key is not text: {other:?}",
                    t.supabase
                ));
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let d = digests.clone();
        let normalise = tokio::task::spawn_blocking(move || {
            raw.into_iter()
                .map(|r| TargetRow::new(t, r, &d))
                .collect::<Result<Vec<_>>>()
        });
        let (rows, next) = tokio::join!(normalise, fetch(Some(after)));
        let rows = rows.map_err(lost_worker).and_then(|r| r);
        let failed = rows.is_err();
        if tx.send(rows).await.is_err() || failed {
            return;
        }
        page = next;
    }
}

/// Read both sides concurrently in key order and merge them segment by segment.
async fn compare_content(
    source: &SqliteDatabase,
    target: &SupabaseDatabase,
    segment_rows: usize,
    mut m: Merger<'_>,
) -> Result<()> {
    let t = m.t;
    let n = segment_rows.max(1);
    let digests = m.digests.clone();
    let policy = m.policy;
    // Two pages in flight per side: reading overlaps comparing, memory stays bounded.
    let (stx, mut srx) = mpsc::channel::<Result<Vec<SourceItem>>>(2);
    let (ttx, mut trx) = mpsc::channel::<Result<Vec<TargetRow>>>(2);
    // The reader task owns a handle of its own on the same HTTP client.
    let _target = AbortOnDrop(tokio::spawn(read_target(
        SupabaseDatabase::new(target.rest().clone()),
        t,
        digests.clone(),
        ttx,
    )));
    let read_source = async move {
        let mut page = source.page(t, None, n).await;
        loop {
            let rows = match page {
                Ok(p) => p,
                Err(e) => {
                    let _ = stx.send(Err(e)).await;
                    return;
                }
            };
            let Some(last) = rows.last() else { return };
            // A short page is the last one.
            let next_after = (rows.len() == n).then(|| last[0].clone());
            let canonical = canonical_page(t, rows, digests.clone(), policy);
            let (items, next) = match next_after {
                Some(after) => {
                    let (items, next) = tokio::join!(canonical, source.page(t, Some(after), n));
                    (items, Some(next))
                }
                None => (canonical.await, None),
            };
            let failed = items.is_err();
            if stx.send(items).await.is_err() || failed {
                return;
            }
            match next {
                Some(next) => page = next,
                None => return,
            }
        }
    };
    let merge = async move {
        let mut sbuf: VecDeque<SourceItem> = VecDeque::new();
        let mut tbuf: VecDeque<TargetRow> = VecDeque::new();
        let (mut s_open, mut t_open) = (true, true);
        let (mut s_last, mut t_last) = (None::<String>, None::<String>);
        loop {
            while s_open && sbuf.len() < n {
                match recv(&mut srx).await? {
                    None => s_open = false,
                    Some(items) => {
                        let from = sbuf.len();
                        for item in items {
                            match item.key() {
                                None => m.unkeyed(item),
                                Some(_) => sbuf.push_back(item),
                            }
                        }
                        let keys = sbuf.range(from..).filter_map(SourceItem::key);
                        check_order(t, "SQLite", &mut s_last, keys)?;
                    }
                }
            }
            while t_open && tbuf.len() < n {
                match recv(&mut trx).await? {
                    None => t_open = false,
                    Some(rows) => {
                        check_order(t, "Supabase", &mut t_last, rows.iter().map(TargetRow::key))?;
                        tbuf.extend(rows);
                    }
                }
            }
            if sbuf.is_empty() && tbuf.is_empty() && !s_open && !t_open {
                return Ok(());
            }
            // The segment ends at the smaller last key of a side that may still
            // have rows beyond it, so the segment holds every row of its range.
            let s_bound = if s_open {
                sbuf.back().and_then(SourceItem::key)
            } else {
                None
            };
            let t_bound = if t_open {
                tbuf.back().map(TargetRow::key)
            } else {
                None
            };
            let bound = match (s_bound, t_bound) {
                (Some(a), Some(b)) => Some(a.min(b).to_owned()),
                (a, b) => a.or(b).map(str::to_owned),
            };
            let within = |k: &str| bound.as_deref().is_none_or(|b| k <= b);
            let ns = sbuf
                .iter()
                .take_while(|i| within(i.key().unwrap_or_default()))
                .count();
            let nt = tbuf.iter().take_while(|r| within(r.key())).count();
            let seg_s: Vec<SourceItem> = sbuf.drain(..ns).collect();
            let seg_t: Vec<TargetRow> = tbuf.drain(..nt).collect();
            m.segment(seg_s, seg_t);
        }
    };
    let ((), merged) = tokio::join!(read_source, merge);
    merged
}

async fn recv<T>(rx: &mut Pages<T>) -> Result<Option<Vec<T>>> {
    rx.recv().await.transpose()
}

/// A uniform random sample of source rows (reservoir sampling over one pass of
/// the local file), each looked up on the target by key.
async fn compare_sample(
    source: &SqliteDatabase,
    target: &SupabaseDatabase,
    size: usize,
    mut m: Merger<'_>,
) -> Result<()> {
    let t = m.t;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut reservoir: Vec<SqlRow> = Vec::with_capacity(size.min(100_000));
    let mut seen: u64 = 0;
    let mut after: Option<SqlValue> = None;
    loop {
        let page = source.page(t, after.take(), 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last[0].clone());
        let full = page.len() == 1000;
        for row in page {
            seen += 1;
            if reservoir.len() < size {
                reservoir.push(row);
            } else {
                let j = rng.gen_range(0..seen);
                if let Ok(j) = usize::try_from(j) {
                    if j < size {
                        reservoir[j] = row;
                    }
                }
            }
        }
        if !full {
            break;
        }
    }
    let mut items: Vec<SourceItem> = reservoir
        .iter()
        .map(|r| SourceItem::new(t, r, m.digests, m.policy))
        .collect();
    drop(reservoir);
    items.sort_by(|a, b| a.key().cmp(&b.key()));
    let keys: Vec<&str> = items.iter().filter_map(SourceItem::key).collect();
    let mut found: std::collections::HashMap<String, TargetRow> = std::collections::HashMap::new();
    let rows = retry(RetryPolicy::default(), || target.rows_by_keys(t, &keys)).await?;
    for raw in rows {
        let r = TargetRow::new(t, raw, m.digests)?;
        found.insert(r.key().to_owned(), r);
    }
    m.tr.segments = 1;
    for item in items {
        let hit = item.key().and_then(|k| found.remove(k));
        m.pair(item, hit);
    }
    if m.tr.counts.differences() > 0 {
        m.tr.segments_differing = 1;
    }
    m.tr.notes.push(format!(
        "sample of {} of {seen} source rows; rows only in the target are seen only through the counts",
        m.tr.counts.compared
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_roles_from_jwt_claims_and_key_prefixes() {
        let secret = crate::keys::generate_secret();
        let ttl = std::time::Duration::from_secs(60);
        let service = crate::keys::sign(&secret, "service_role", None, ttl).unwrap();
        let anon = crate::keys::sign(&secret, "anon", None, ttl).unwrap();
        let k = KeyInfo::of("SUPABASE_SERVICE_KEY", &service);
        assert_eq!(
            (k.kind, k.role.as_str(), k.full_visibility),
            ("jwt", "service_role", true)
        );
        let k = KeyInfo::of("SUPABASE_SERVICE_KEY", &anon);
        assert_eq!((k.role.as_str(), k.full_visibility), ("anon", false));
        let k = KeyInfo::of("X", "sb_publishable_abc");
        assert_eq!(
            (k.kind, k.role.as_str(), k.full_visibility),
            ("sb_publishable", "anon", false)
        );
        let k = KeyInfo::of("X", "sb_secret_abc");
        assert_eq!((k.kind, k.full_visibility), ("sb_secret", true));
        let k = KeyInfo::of("X", "garbage");
        assert_eq!((k.role.as_str(), k.full_visibility), ("unknown", false));
        assert!(!format!(
            "{:?}{}",
            KeyInfo::of("X", &service),
            KeyInfo::of("X", &service).describe()
        )
        .contains(&service));
    }

    #[test]
    fn table_names_are_checked() {
        let t = tables_named(&["tags".into(), "artifact".into()]).unwrap();
        assert_eq!(
            t.iter().map(|t| t.sqlite).collect::<Vec<_>>(),
            ["artifact", "tagrow"]
        );
        assert!(tables_named(&["search_chunks".into()]).is_err());
        assert!(tables_named(&["nope".into()]).is_err());
        assert!(tables_named(&[" ".into()]).is_err());
    }

    #[test]
    fn urls_lose_credentials() {
        assert_eq!(
            public_url("https://u:p@x.supabase.co/rest/v1?apikey=k"),
            "https://x.supabase.co/rest/v1"
        );
    }

    #[test]
    fn out_of_order_keys_are_an_error_not_a_wrong_answer() {
        let t = &catalogue::TAGROW;
        let mut last = None;
        check_order(t, "SQLite", &mut last, ["1", "10"].into_iter()).unwrap();
        let e = check_order(t, "SQLite", &mut last, ["10"].into_iter()).unwrap_err();
        assert!(e.to_string().contains("not in byte order"), "{e}");
        check_order(t, "SQLite", &mut last, ["9"].into_iter()).unwrap();
        assert_eq!(last.as_deref(), Some("9"));
        assert!(check_order(t, "SQLite", &mut last, ["a", "b", "b"].into_iter()).is_err());
        let mut last = None;
        assert!(check_order(t, "Supabase", &mut last, ["2", "10"].into_iter()).is_err());
    }
}

//! `verify --repair`: rewrite on the target the rows that are missing or
//! differ, from the source, through the normal upsert path
//! ([`SupabaseDatabase::upsert_rows`], batched), and delete the rows found only
//! on the target when asked to.
//!
//! [`plan`] verifies by content and collects every key to change (keys only,
//! so memory grows with the number of differences, not with the table).
//! [`run`] is the whole workflow: plan, refuse an untrustworthy plan, show it
//! to the caller's `confirm`, and only then [`apply`] and verify again. Rows are re-read from the source at that moment, so what lands is the
//! source's current value; a row that cannot land is never sent.

use std::collections::BTreeSet;

mod reverse;

use serde::Serialize;
use serde_json::Value;

use super::{run_inner, Check, Counts, RowKind, Verdict, VerifyOptions, VerifyReport};
use crate::catalogue::Table;
use crate::db::{SqliteDatabase, SupabaseDatabase};
use crate::error::{Error, Result};
use crate::normalise::{self, SqlRow, SqlValue};
use crate::rest::key_chunks;
use crate::retry::{retry, RetryPolicy};
use crate::Direction;

/// What a repair would change, table by table.
#[derive(Debug, Default)]
pub struct RepairPlan {
    pub tables: Vec<TablePlan>,
    /// Which side is written: Supabase (forward) or the SQLite file (reverse).
    pub direction: Direction,
}

#[derive(Debug)]
pub struct TablePlan {
    pub table: &'static Table,
    /// Keys to upsert from the source: missing on the target, or different.
    pub upsert: BTreeSet<String>,
    pub missing: u64,
    pub different: u64,
    /// Keys only on the target (deleted only with `delete_extra`).
    pub delete: BTreeSet<String>,
    /// Source rows that cannot land: not repairable.
    pub cannot_land: u64,
}

impl TablePlan {
    pub(crate) fn note(&mut self, kind: RowKind, key: &str) {
        match kind {
            RowKind::OnlyInSource => {
                self.missing += 1;
                self.upsert.insert(key.to_owned());
            }
            RowKind::Different => {
                self.different += 1;
                self.upsert.insert(key.to_owned());
            }
            RowKind::OnlyInTarget => {
                self.delete.insert(key.to_owned());
            }
            RowKind::CannotLand => self.cannot_land += 1,
            // Equal (as coerced): nothing to repair.
            RowKind::Coerced => {}
        }
    }
}

impl RepairPlan {
    pub(crate) fn table_mut(&mut self, t: &'static Table) -> &mut TablePlan {
        match self.tables.iter().position(|p| p.table == t) {
            Some(i) => &mut self.tables[i],
            None => {
                self.tables.push(TablePlan {
                    table: t,
                    upsert: BTreeSet::new(),
                    missing: 0,
                    different: 0,
                    delete: BTreeSet::new(),
                    cannot_land: 0,
                });
                self.tables.last_mut().expect("just pushed")
            }
        }
    }

    /// Whether applying the plan would change nothing.
    pub fn changes_nothing(&self, opts: &RepairOptions) -> bool {
        self.tables
            .iter()
            .all(|p| p.upsert.is_empty() && (!opts.delete_extra || p.delete.is_empty()))
    }

    /// What applying the plan will do, one line per table that changes.
    pub fn describe(&self, opts: &RepairOptions) -> String {
        let mut out = String::new();
        for p in &self.tables {
            let mut parts = Vec::new();
            if !p.upsert.is_empty() {
                parts.push(format!(
                    "upsert {} row(s) from the source ({} missing, {} different)",
                    p.upsert.len(),
                    p.missing,
                    p.different
                ));
            }
            if !p.delete.is_empty() {
                parts.push(if opts.delete_extra {
                    format!("delete {} row(s) found only on the target", p.delete.len())
                } else {
                    format!(
                        "keep {} row(s) found only on the target (--delete-extra deletes them)",
                        p.delete.len()
                    )
                });
            }
            if p.cannot_land > 0 {
                parts.push(format!(
                    "{} source row(s) cannot land: not repairable",
                    p.cannot_land
                ));
            }
            if !parts.is_empty() {
                out.push_str(&format!("  {}: {}\n", p.table.sqlite, parts.join("; ")));
            }
        }
        out
    }
}

/// How to repair.
#[derive(Debug, Clone)]
pub struct RepairOptions {
    /// Also delete the rows found only on the target.
    pub delete_extra: bool,
    /// Rows per upsert request.
    pub batch_rows: usize,
    /// Approximate bytes per upsert request (long texts make few rows large).
    pub batch_bytes: usize,
}

impl Default for RepairOptions {
    fn default() -> Self {
        RepairOptions {
            delete_extra: false,
            batch_rows: 500,
            batch_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RepairStatus {
    /// The first verification found nothing to change.
    NothingToDo,
    /// Not confirmed (no terminal and no `--yes`, or declined): nothing changed.
    NotConfirmed,
    /// Not attempted: the first verification was incomplete or had partial
    /// visibility, so its differences cannot be trusted. Nothing changed.
    Refused,
    Applied,
}

/// What `verify --repair` did, attached to the report of the second verification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepairOutcome {
    pub status: RepairStatus,
    /// `--yes` or `terminal`.
    pub confirmed_by: Option<String>,
    pub delete_extra: bool,
    /// The first verification's result.
    pub before_verdict: Verdict,
    pub before: Counts,
    pub tables: Vec<TableRepair>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableRepair {
    pub table: &'static str,
    pub planned_upserts: u64,
    pub planned_deletes: u64,
    pub upserted: u64,
    pub deleted: u64,
    /// Rows only on the target left in place (no `--delete-extra`).
    pub extra_kept: u64,
    /// Source rows that cannot land, or no longer could when re-read.
    pub cannot_land: u64,
    /// Planned keys no longer in the source when re-read (deleted meanwhile).
    pub gone_from_source: u64,
    /// Rows planned for deletion that the source holds when re-read just
    /// before the delete (written by the app meanwhile): kept.
    pub now_in_source: u64,
}

impl RepairOutcome {
    /// The outcome before anything is applied.
    pub fn planned(before: &VerifyReport, plan: &RepairPlan, opts: &RepairOptions) -> Self {
        RepairOutcome {
            status: if plan.changes_nothing(opts) {
                RepairStatus::NothingToDo
            } else {
                RepairStatus::NotConfirmed
            },
            confirmed_by: None,
            delete_extra: opts.delete_extra,
            before_verdict: before.verdict,
            before: before.totals,
            tables: plan
                .tables
                .iter()
                .filter(|p| !p.upsert.is_empty() || !p.delete.is_empty() || p.cannot_land > 0)
                .map(|p| TableRepair {
                    table: p.table.sqlite,
                    planned_upserts: p.upsert.len() as u64,
                    planned_deletes: if opts.delete_extra {
                        p.delete.len() as u64
                    } else {
                        0
                    },
                    upserted: 0,
                    deleted: 0,
                    extra_kept: if opts.delete_extra {
                        0
                    } else {
                        p.delete.len() as u64
                    },
                    cannot_land: p.cannot_land,
                    gone_from_source: 0,
                    now_in_source: 0,
                })
                .collect(),
        }
    }
}

/// Verify by content and collect every key a repair would change.
pub async fn plan(
    source: &SqliteDatabase,
    target: &SupabaseDatabase,
    opts: &VerifyOptions,
) -> Result<(VerifyReport, RepairPlan)> {
    let mut opts = opts.clone();
    opts.check = Check::Content;
    let mut plan = RepairPlan {
        direction: opts.direction,
        ..RepairPlan::default()
    };
    let report = run_inner(source, target, &opts, Some(&mut plan)).await?;
    Ok((report, plan))
}

/// Apply a confirmed plan. Forward, writes go through
/// [`SupabaseDatabase::upsert_rows`] in batches, deletes through
/// [`SupabaseDatabase::delete_keys`]; in reverse, through the reverse mirror's
/// SQLite write (`crate::db::sqlite::mirror`).
pub async fn apply(
    source: &SqliteDatabase,
    target: &SupabaseDatabase,
    plan: &RepairPlan,
    opts: &RepairOptions,
    outcome: &mut RepairOutcome,
) -> Result<()> {
    let reverse = plan.direction == Direction::Reverse;
    for p in &plan.tables {
        let Some(done) = outcome
            .tables
            .iter_mut()
            .find(|d| d.table == p.table.sqlite)
        else {
            continue;
        };
        if !p.upsert.is_empty() {
            if reverse {
                reverse::rewrite(source, target, p, opts, done).await?;
            } else {
                rewrite(source, target, p, opts, done).await?;
            }
        }
        if opts.delete_extra && !p.delete.is_empty() {
            if reverse {
                reverse::delete(source, target, p, opts, done).await?;
            } else {
                delete(source, target, p, done).await?;
            }
        }
    }
    outcome.status = RepairStatus::Applied;
    Ok(())
}

/// Roughly what a row weighs in a request body.
fn weight(row: &SqlRow) -> usize {
    row.iter()
        .map(|v| match v {
            SqlValue::Text(s) => s.len() + 8,
            SqlValue::Blob(b) | SqlValue::BadText(b) => b.len() + 8,
            _ => 16,
        })
        .sum()
}

/// Re-read the source in key order and upsert the planned rows.
async fn rewrite(
    source: &SqliteDatabase,
    target: &SupabaseDatabase,
    p: &TablePlan,
    opts: &RepairOptions,
    done: &mut TableRepair,
) -> Result<()> {
    let t = p.table;
    let mut wanted: BTreeSet<&str> = p.upsert.iter().map(String::as_str).collect();
    let last_wanted = p.upsert.last().cloned().unwrap_or_default();
    let mut batch: Vec<SqlRow> = Vec::new();
    let mut bytes = 0;
    let mut after: Option<SqlValue> = None;
    const PAGE: usize = 1000;
    loop {
        let page = source.page(t, after.take(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last[0].clone());
        let full = page.len() == PAGE;
        let mut past_last = false;
        for row in page {
            let key = match normalise::value_to_canonical(t.key(), &row[0]) {
                Ok((Value::String(k), _)) => k,
                _ => continue,
            };
            past_last |= key > last_wanted;
            if !wanted.remove(key.as_str()) {
                continue;
            }
            // Under the target's policy: with `coerce`, a coerced row is rewritten coerced.
            if normalise::to_canonical_with(t, &row, target.unrepresentable()).is_err() {
                done.cannot_land += 1;
                continue;
            }
            bytes += weight(&row);
            batch.push(row);
            if batch.len() >= opts.batch_rows.max(1) || bytes >= opts.batch_bytes {
                done.upserted += upsert(target, t, &batch).await?;
                batch.clear();
                bytes = 0;
            }
        }
        // Pages come in key order: past the last planned key there is nothing left to find.
        if wanted.is_empty() || past_last || !full {
            break;
        }
    }
    if !batch.is_empty() {
        done.upserted += upsert(target, t, &batch).await?;
    }
    done.gone_from_source = wanted.len() as u64;
    Ok(())
}

async fn upsert(target: &SupabaseDatabase, t: &'static Table, rows: &[SqlRow]) -> Result<u64> {
    retry(RetryPolicy::default(), || target.upsert_rows(t, rows)).await
}

/// Delete the planned target-only rows, a chunk at a time. Each chunk's keys
/// are read from the source again just before its DELETE, and those the
/// source holds now are kept: the two scans of the plan are not one snapshot,
/// so a row the app committed after the source scan passed its key, and that
/// its mirror delivered before the target scan reached it, looks "only in
/// target" but is not.
async fn delete(
    source: &SqliteDatabase,
    target: &SupabaseDatabase,
    p: &TablePlan,
    done: &mut TableRepair,
) -> Result<()> {
    let t = p.table;
    let keys: Vec<&str> = p.delete.iter().map(String::as_str).collect();
    for chunk in key_chunks(&keys) {
        let present: BTreeSet<String> = source
            .rows_by_keys(t, chunk.iter().map(|k| (*k).to_owned()).collect())
            .await?
            .iter()
            .filter_map(|r| match &r[0] {
                SqlValue::Text(k) => Some(k.clone()),
                _ => None,
            })
            .collect();
        done.now_in_source += present.len() as u64;
        let gone: Vec<&str> = chunk
            .iter()
            .copied()
            .filter(|k| !present.contains(*k))
            .collect();
        if gone.is_empty() {
            continue;
        }
        done.deleted += retry(RetryPolicy::default(), || target.delete_keys(t, &gone)).await?;
    }
    Ok(())
}

/// `--delete-extra` is refused while a table it would delete from has exact
/// counts that the content pass does not account for: rows were written
/// during the verification (or a side was not read to its end), so "only in
/// target" cannot be trusted there. Run it again when writes are quiet.
pub fn check_delete_extra(report: &VerifyReport, plan: &RepairPlan) -> Result<()> {
    let doubtful: Vec<String> = plan
        .tables
        .iter()
        .filter(|p| !p.delete.is_empty())
        .filter_map(|p| report.tables.iter().find(|t| t.table == p.table.sqlite))
        .filter(|t| !t.counts_agree())
        .map(|t| {
            format!(
                "{} (exact counts: source {}, target {}; read by content: {} source rows, {} only in target)",
                t.table,
                t.counts.source_rows,
                t.counts.target_rows,
                t.counts.compared,
                t.counts.only_in_target
            )
        })
        .collect();
    if doubtful.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "--delete-extra refused: the exact counts disagree with the rows read in {}; rows were written \
         during verification. Nothing was changed; run it again when writes are quiet, or repair \
         without --delete-extra",
        doubtful.join(", ")
    )))
}

/// How long a confirmation may take before the plan is made again.
pub(crate) const REPLAN_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

impl RepairPlan {
    /// Keep only the changes `confirmed` also holds: a plan made again after a
    /// long confirmation never changes a row the operator was not shown.
    pub fn retain_confirmed(&mut self, confirmed: &RepairPlan) {
        for p in &mut self.tables {
            match confirmed.tables.iter().find(|c| c.table == p.table) {
                Some(c) => {
                    p.upsert.retain(|k| c.upsert.contains(k));
                    p.delete.retain(|k| c.delete.contains(k));
                }
                None => {
                    p.upsert.clear();
                    p.delete.clear();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{ARTIFACT, FACT};

    fn plan(t: &'static Table, upsert: &[&str], delete: &[&str]) -> RepairPlan {
        let mut p = RepairPlan::default();
        let tp = p.table_mut(t);
        tp.upsert = upsert.iter().map(|k| (*k).to_owned()).collect();
        tp.delete = delete.iter().map(|k| (*k).to_owned()).collect();
        p
    }

    #[test]
    fn a_plan_made_again_changes_only_what_was_confirmed() {
        let confirmed = plan(&ARTIFACT, &["a", "b"], &["x", "y"]);
        let mut fresh = plan(&ARTIFACT, &["b", "c"], &["y", "z"]);
        fresh.table_mut(&FACT).delete.insert("f".into());
        fresh.retain_confirmed(&confirmed);
        let a = &fresh.tables[0];
        assert_eq!(a.upsert.iter().collect::<Vec<_>>(), ["b"]);
        assert_eq!(a.delete.iter().collect::<Vec<_>>(), ["y"]);
        assert!(
            fresh.tables[1].delete.is_empty(),
            "a table not confirmed changes nothing"
        );
    }
}

/// How [`run`] ended.
#[derive(Debug)]
pub struct RepairRun {
    /// The report to show, its `repair` set: the second verification's when
    /// the plan was applied, else the first's.
    pub report: VerifyReport,
    /// Why nothing was changed, when a change was planned but not made.
    pub not_changed: Option<String>,
    /// 0 equal after all, 1 different (or not confirmed), 2 refused.
    pub exit_code: u8,
}

/// The whole `verify --repair` workflow: plan (a verification by content),
/// refuse when that verification cannot be trusted, ask `confirm` (it is shown
/// what will change and returns who confirmed, `None` for nobody), make the
/// plan again if the confirmation took longer than `REPLAN_AFTER` (keeping
/// only the changes shown), apply, and verify again.
pub async fn run(
    source: &SqliteDatabase,
    target: &SupabaseDatabase,
    opts: &VerifyOptions,
    ropts: &RepairOptions,
    confirm: impl FnOnce(&str) -> Result<Option<String>>,
) -> Result<RepairRun> {
    let (mut before, mut plan) = self::plan(source, target, opts).await?;
    let mut outcome = RepairOutcome::planned(&before, &plan, ropts);
    if let Some(why) = refusal(&before, &plan, ropts) {
        outcome.status = RepairStatus::Refused;
        before.repair = Some(outcome);
        return Ok(refused(before, why));
    }
    if outcome.status == RepairStatus::NothingToDo {
        before.repair = Some(outcome);
        let exit_code = before.exit_code;
        return Ok(RepairRun {
            report: before,
            not_changed: None,
            exit_code,
        });
    }
    let asked = std::time::Instant::now();
    let what = format!(
        "--repair will change {}:\n{}",
        before.target.location,
        plan.describe(ropts)
    );
    let Some(by) = confirm(&what)? else {
        before.repair = Some(outcome);
        let exit_code = before.exit_code.max(1);
        return Ok(RepairRun {
            report: before,
            not_changed: Some(crate::error::NOT_CONFIRMED.into()),
            exit_code,
        });
    };
    // A plan confirmed long ago is stale: make it again, and apply only the
    // changes both plans hold.
    if asked.elapsed() > REPLAN_AFTER {
        tracing::warn!(
            "the confirmation took {}s: verifying again before changing anything",
            asked.elapsed().as_secs()
        );
        let (mut again, mut fresh) = self::plan(source, target, opts).await?;
        fresh.retain_confirmed(&plan);
        let mut fresh_outcome = RepairOutcome::planned(&again, &fresh, ropts);
        if let Some(why) = refusal(&again, &fresh, ropts) {
            fresh_outcome.status = RepairStatus::Refused;
            again.repair = Some(fresh_outcome);
            return Ok(refused(again, why));
        }
        plan = fresh;
        outcome = fresh_outcome;
    }
    outcome.confirmed_by = Some(by);
    apply(source, target, &plan, ropts, &mut outcome).await?;
    let mut opts = opts.clone();
    opts.check = Check::Content;
    let mut after = super::run(source, target, &opts).await?;
    after.repair = Some(outcome);
    let exit_code = after.exit_code;
    Ok(RepairRun {
        report: after,
        not_changed: None,
        exit_code,
    })
}

fn refused(report: VerifyReport, why: String) -> RepairRun {
    RepairRun {
        report,
        not_changed: Some(format!("not repairing: {why}")),
        exit_code: 2,
    }
}

/// Why a repair must not run on this plan, if it must not: a verification
/// that could not see everything, or `--delete-extra` while the counts
/// disagree with what was read.
fn refusal(report: &VerifyReport, plan: &RepairPlan, opts: &RepairOptions) -> Option<String> {
    if matches!(
        report.verdict,
        Verdict::Incomplete | Verdict::PartialVisibility
    ) {
        return Some(report.verdict.as_str().to_lowercase());
    }
    if opts.delete_extra {
        if let Err(e) = check_delete_extra(report, plan) {
            return Some(e.to_string());
        }
    }
    None
}

//! `verify` (with `--repair`) and `cutover check`: comparisons of Supabase with
//! the SQLite file. A comparison that cannot run exits with 2, not 1 (1 means
//! "they differ").

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use dualwrite::backfill;
use dualwrite::config::Settings;
use dualwrite::db::{SqliteDatabase, SupabaseDatabase};
use dualwrite::normalise::UnrepresentablePolicy;
use dualwrite::{cutover, factory, verify};

use crate::args::{Cli, CutoverCommand, VerifyArgs};
use crate::shell::{cannot_run, policy, print_json, settings};

/// `cutover check`: READY or NOT READY.
pub async fn cutover(cli: &Cli, c: &CutoverCommand) -> ExitCode {
    let CutoverCommand::Check {
        from_sqlite,
        failures,
        rejects,
        format,
        unrepresentable,
        accept_coerced,
    } = c;
    let check = async {
        let s = settings(cli)?;
        let path = from_sqlite.clone().unwrap_or_else(|| s.db_path.clone());
        let (source, target, key) = verify_sides(&s, &path).await?;
        // By default, where dual write and the backfill record them.
        let default_rejects = || backfill::state_dir_for(&path).join("rejects.ndjson");
        let mut opts = cutover::CutoverOptions::new(
            key,
            // The failure log of the file checked: the configured one,
            // or the default beside that file (not beside DB_PATH).
            failures.clone().or_else(|| match from_sqlite {
                Some(p) if !s.failure_log_configured && s.failure_log.is_some() => {
                    Some(dualwrite::config::default_failure_log(p))
                }
                _ => s.failure_log.clone(),
            }),
            Some(rejects.clone().unwrap_or_else(default_rejects)),
        );
        opts.failures_required = failures.is_some() || s.failure_log_configured;
        opts.rejects_required = rejects.is_some();
        opts.unrepresentable = policy(unrepresentable.as_deref(), &s)?;
        opts.accept_coerced = *accept_coerced;
        let report = cutover::check(&source, &target, &opts).await?;
        match format.as_str() {
            "json" => print_json(&serde_json::to_value(&report)?),
            _ => print!("{}", report.render_text()),
        }
        Ok(ExitCode::from(report.exit_code()))
    };
    check.await.unwrap_or_else(cannot_run)
}

/// `verify`: compare, and with `--repair` rewrite what differs.
pub async fn verify(cli: &Cli, a: &VerifyArgs) -> ExitCode {
    verify_cmd(cli, a).await.unwrap_or_else(cannot_run)
}

/// The source (read-only) and the target of a verification, and the key used.
async fn verify_sides(
    s: &Settings,
    path: &Path,
) -> Result<(SqliteDatabase, SupabaseDatabase, verify::KeyInfo)> {
    let source = SqliteDatabase::open_read_only(path).await?;
    let target = factory::connect_supabase(s).await?;
    let key = verify::KeyInfo::from_settings(s).context("no Supabase key is configured")?;
    Ok((source, target, key))
}

/// Print the report, or write it to `out` and say where.
fn emit(report: &verify::VerifyReport, format: verify::Format, out: Option<&Path>) -> Result<()> {
    let text = verify::render(report, format);
    match out {
        None => print!("{text}"),
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
            println!(
                "{}: report written to {}",
                report.verdict.as_str(),
                p.display()
            );
        }
    }
    Ok(())
}

async fn verify_cmd(cli: &Cli, a: &VerifyArgs) -> Result<ExitCode> {
    use verify::repair::{self, RepairOptions, RepairOutcome};
    let s = settings(cli)?;
    let path = a.from_sqlite.clone().unwrap_or_else(|| s.db_path.clone());
    let (source, target, key) = verify_sides(&s, &path).await?;
    let mut opts = verify::VerifyOptions::new(key);
    opts.unrepresentable = policy(a.unrepresentable.as_deref(), &s)?;
    // A repair under `coerce` writes coerced rows, recording the originals where
    // the backfill of this source records them.
    let target = if opts.unrepresentable == UnrepresentablePolicy::Coerce {
        let log = backfill::state_dir_for(&path).join("coerced.ndjson");
        target.with_unrepresentable(
            UnrepresentablePolicy::Coerce,
            Some(std::sync::Arc::new(dualwrite::coerced::CoercedLog::new(
                log,
            ))),
        )
    } else {
        target
    };
    if !a.tables.is_empty() {
        opts.tables = verify::tables_named(&a.tables)?;
    }
    opts.check = match (a.counts_only, a.sample) {
        (true, _) => verify::Check::Counts,
        (false, Some(rows)) => verify::Check::Sample {
            rows: usize::try_from(rows).unwrap_or(usize::MAX),
        },
        (false, None) => verify::Check::Content,
    };
    if !a.repair {
        let report = verify::run(&source, &target, &opts).await?;
        emit(&report, a.format, a.out.as_deref())?;
        return Ok(ExitCode::from(report.exit_code));
    }
    let ropts = RepairOptions {
        delete_extra: a.delete_extra,
        ..RepairOptions::default()
    };
    let (mut before, mut plan) = repair::plan(&source, &target, &opts).await?;
    let mut outcome = RepairOutcome::planned(&before, &plan, &ropts);
    if let Some(why) = refusal(&before, &plan, &ropts) {
        outcome.status = repair::RepairStatus::Refused;
        before.repair = Some(outcome);
        emit(&before, a.format, a.out.as_deref())?;
        eprintln!("not repairing: {why}");
        return Ok(ExitCode::from(2));
    }
    if outcome.status == repair::RepairStatus::NothingToDo {
        before.repair = Some(outcome);
        emit(&before, a.format, a.out.as_deref())?;
        return Ok(ExitCode::from(before.exit_code));
    }
    eprint!(
        "--repair will change {}:\n{}",
        before.target.location,
        plan.describe(&ropts)
    );
    let asked = std::time::Instant::now();
    let confirmed_by = if a.yes {
        Some("--yes")
    } else if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("Apply these changes? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes").then_some("terminal")
    } else {
        None
    };
    let Some(by) = confirmed_by else {
        before.repair = Some(outcome);
        emit(&before, a.format, a.out.as_deref())?;
        eprintln!(
            "nothing was changed: not confirmed (no terminal to ask on and no --yes, or declined)"
        );
        return Ok(ExitCode::from(before.exit_code.max(1)));
    };
    // A plan confirmed long ago is stale: make it again, and apply only the
    // changes both plans hold.
    if asked.elapsed() > repair::REPLAN_AFTER {
        eprintln!(
            "the confirmation took {}s: verifying again before changing anything",
            asked.elapsed().as_secs()
        );
        let (mut again, mut fresh) = repair::plan(&source, &target, &opts).await?;
        fresh.retain_confirmed(&plan);
        let mut fresh_outcome = RepairOutcome::planned(&again, &fresh, &ropts);
        if let Some(why) = refusal(&again, &fresh, &ropts) {
            fresh_outcome.status = repair::RepairStatus::Refused;
            again.repair = Some(fresh_outcome);
            emit(&again, a.format, a.out.as_deref())?;
            eprintln!("not repairing: {why}");
            return Ok(ExitCode::from(2));
        }
        plan = fresh;
        outcome = fresh_outcome;
    }
    outcome.confirmed_by = Some(by.to_owned());
    repair::apply(&source, &target, &plan, &ropts, &mut outcome).await?;
    opts.check = verify::Check::Content;
    let mut after = verify::run(&source, &target, &opts).await?;
    after.repair = Some(outcome);
    emit(&after, a.format, a.out.as_deref())?;
    Ok(ExitCode::from(after.exit_code))
}

/// Why a repair must not run on this plan, if it must not: a verification
/// that could not see everything, or `--delete-extra` while the counts
/// disagree with what was read.
fn refusal(
    report: &verify::VerifyReport,
    plan: &verify::repair::RepairPlan,
    opts: &verify::repair::RepairOptions,
) -> Option<String> {
    if matches!(
        report.verdict,
        verify::Verdict::Incomplete | verify::Verdict::PartialVisibility
    ) {
        return Some(report.verdict.as_str().to_lowercase());
    }
    if opts.delete_extra {
        if let Err(e) = verify::repair::check_delete_extra(report, plan) {
            return Some(e.to_string());
        }
    }
    None
}

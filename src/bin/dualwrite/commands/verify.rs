//! `verify` (with `--repair`) and `cutover check`: comparisons of Supabase with
//! the SQLite file. A comparison that cannot run exits with 2, not 1 (1 means
//! "they differ").

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use dualwrite::config::Settings;
use dualwrite::db::{SqliteDatabase, SupabaseDatabase};
use dualwrite::normalise::UnrepresentablePolicy;
use dualwrite::StateDir;
use dualwrite::{cutover, factory, verify};

use crate::args::{Cli, CutoverCommand, CutoverRunArgs, VerifyArgs};
use crate::shell::{cannot_run, confirm, dox_source, policy, print_json, settings};

/// `cutover check`: READY or NOT READY.
pub async fn cutover(cli: &Cli, c: &CutoverCommand) -> ExitCode {
    match c {
        CutoverCommand::Run(a) => {
            return cutover_run(cli, a, false).await.unwrap_or_else(cannot_run)
        }
        CutoverCommand::Rollback(a) => {
            return cutover_run(cli, a, true).await.unwrap_or_else(cannot_run)
        }
        CutoverCommand::Check { .. } => {}
    }
    let CutoverCommand::Check {
        from_sqlite,
        failures,
        rejects,
        output,
        unrepresentable,
        accept_coerced,
        rollback,
        ..
    } = c
    else {
        unreachable!("`cutover run` is handled above")
    };
    if *rollback {
        let check = async {
            let s = settings(cli)?;
            let path = from_sqlite.clone().unwrap_or_else(|| s.db_path.clone());
            let (lite, supa, key) = verify_sides(&s, &path, false).await?;
            let r =
                dualwrite::cutover::check_rollback(&path, &lite, &supa, key, rejects.as_deref())
                    .await?;
            if output.json() {
                print_json(&serde_json::to_value(&r)?);
            } else {
                print!("{}", r.render_text());
            }
            Ok(ExitCode::from(r.exit_code()))
        };
        return check.await.unwrap_or_else(cannot_run);
    }
    let check = async {
        let s = settings(cli)?;
        let path = from_sqlite.clone().unwrap_or_else(|| s.db_path.clone());
        let (source, target, key) = verify_sides(&s, &path, false).await?;
        // By default, where dual write and the backfill record them.
        let default_rejects = || StateDir::of_source(&path).rejects();
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
        if output.json() {
            print_json(&serde_json::to_value(&report)?);
        } else {
            print!("{}", report.render_text());
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
    allow_missing_tables: bool,
) -> Result<(SqliteDatabase, SupabaseDatabase, verify::KeyInfo)> {
    dox_source(path, allow_missing_tables).await?;
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
    use verify::repair::{self, RepairOptions};
    // Parse before opening anything.
    let tables = (!a.tables.is_empty())
        .then(|| verify::tables_named(&a.tables))
        .transpose()?;
    let s = settings(cli)?;
    let path = a.from_sqlite.clone().unwrap_or_else(|| s.db_path.clone());
    let (source, target, key) = verify_sides(&s, &path, a.allow_missing_tables).await?;
    // A forward repair writes copies of the file's rows.
    let target = match a.direction {
        dualwrite::Direction::Forward => target.mirroring_sqlite(),
        dualwrite::Direction::Reverse => target,
    };
    let mut opts = verify::VerifyOptions::new(key);
    if let Some(tables) = tables {
        opts.tables = tables;
    }
    opts.unrepresentable = policy(a.unrepresentable.as_deref(), &s)?;
    opts.direction = a.direction;
    // A repair under `coerce` writes coerced rows, recording the originals where
    // the backfill of this source records them.
    let target = if opts.unrepresentable == UnrepresentablePolicy::Coerce {
        let log = StateDir::of_source(&path).coerced();
        target.with_unrepresentable(
            UnrepresentablePolicy::Coerce,
            Some(std::sync::Arc::new(
                dualwrite::normalise::coerced::CoercedLog::new(log),
            )),
        )
    } else {
        target
    };
    opts.check = match (a.counts_only, a.sample) {
        (true, _) => verify::Check::Counts,
        (false, Some(rows)) => verify::Check::Sample {
            rows: usize::try_from(rows).unwrap_or(usize::MAX),
        },
        (false, None) => verify::Check::Content,
    };
    if !a.repair {
        let report = verify::run(&source, &target, &opts).await?;
        emit(&report, a.output_format(), a.out.as_deref())?;
        return Ok(ExitCode::from(report.exit_code));
    }
    let ropts = RepairOptions {
        delete_extra: a.delete_extra,
        ..RepairOptions::default()
    };
    let yes = a.yes;
    let run = repair::run(&source, &target, &opts, &ropts, |what| {
        // The plan is shown even when nobody can confirm it.
        eprint!("{what}");
        Ok(confirm("", yes)?.map(str::to_owned))
    })
    .await?;
    emit(&run.report, a.output_format(), a.out.as_deref())?;
    if let Some(why) = &run.not_changed {
        eprintln!("{why}");
    }
    Ok(ExitCode::from(run.exit_code))
}

/// `cutover run` (Supabase becomes the primary) and `cutover rollback` (the file again).
async fn cutover_run(cli: &Cli, a: &CutoverRunArgs, back: bool) -> Result<ExitCode> {
    let CutoverRunArgs {
        dry_run,
        yes,
        max_pause,
        app_busy_timeout,
        max_pending,
        restart,
        failures,
        rejects,
        state_dir,
        output,
        ..
    } = a;
    let s = settings(cli)?;
    let path = s.db_path.clone();
    dox_source(&path, false).await?;
    let secs = |v: f64, flag: &str| {
        if v.is_finite() && v > 0.0 {
            Ok(std::time::Duration::from_secs_f64(v))
        } else {
            Err(dualwrite::Error::invalid(format!(
                "{flag} must be a positive number of seconds"
            )))
        }
    };
    let key = verify::KeyInfo::from_settings(&s).context("no Supabase key is configured")?;
    let dir = crate::shell::state_dir_of(state_dir.as_deref(), &path);
    let mut o = cutover::RunOptions::new(path.clone(), dir, key);
    o.max_pause = secs(*max_pause, "--max-pause")?;
    o.app_busy_timeout = app_busy_timeout
        .map(|v| secs(v, "--app-busy-timeout"))
        .transpose()?;
    o.max_pending = *max_pending;
    o.restart = restart.clone();
    o.dry_run = *dry_run;
    o.failures = failures.clone().or_else(|| s.failure_log.clone());
    o.rejects = Some(
        rejects
            .clone()
            .unwrap_or_else(|| StateDir::of_source(&path).rejects()),
    );
    o.unrepresentable = s.unrepresentable;
    let serve = dualwrite::serve::ServeOptions::configured(
        dualwrite::Direction::Forward,
        path.clone(),
        o.state_dir.clone(),
        &s,
    );
    o.serve.batch_rows = serve.batch_rows;
    o.serve.request_rows = serve.request_rows;
    o.serve.concurrency = serve.concurrency;
    if !*dry_run {
        let what = if back {
            format!(
                "rollback: the SQLite file {} becomes the primary again; the app's writes on Supabase are held \
                 for at most {:.1} s",
                path.display(),
                o.max_pause.as_secs_f64()
            )
        } else {
            format!(
                "cutover: Supabase becomes the primary of {}; the app's writes to the file are held for at most \
                 {:.1} s, then refused until it runs on Supabase",
                path.display(),
                o.max_pause.as_secs_f64()
            )
        };
        if confirm(&what, *yes)?.is_none() {
            eprintln!("not confirmed (pass --yes to run without a prompt): nothing changed");
            return Ok(ExitCode::from(2));
        }
    }
    let rest = dualwrite::db::RestClient::new(&s.rest_config()?)?;
    let json = output.json();
    let progress = |step: &cutover::Step| {
        if !json {
            eprintln!(
                "  {:<22} {:>7.3} s  {}",
                step.name,
                step.ms as f64 / 1000.0,
                step.detail
            );
        }
    };
    let report = if back {
        cutover::rollback(rest, &o, progress).await?
    } else {
        cutover::run(rest, &o, progress).await?
    };
    if json {
        print_json(&serde_json::to_value(&report)?);
    } else {
        let text = report.render_text();
        // The steps were printed as they ended.
        let tail: String = text
            .lines()
            .skip(report.steps.len())
            .map(|l| format!("{l}\n"))
            .collect();
        print!("{tail}");
    }
    Ok(ExitCode::from(report.exit_code()))
}

//! The commands that act through the configured backend: `config`, `check`,
//! `call`, `replay`, `demo` and `access`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::{json, Value};

use dualwrite::db::Dox;
use dualwrite::model::Call;
use dualwrite::{demo, factory, Error};

use crate::args::Cli;
use crate::shell::{print_json, settings};

/// `config`: the resolved configuration, secrets redacted.
pub fn config(cli: &Cli) -> Result<ExitCode> {
    print_json(&settings(cli)?.redacted());
    Ok(ExitCode::SUCCESS)
}

/// `check`: open the configured backend and print the init report; exit 1
/// when a check failed (Supabase asked for and not usable), with the report
/// still on stdout for a script to read.
pub async fn check(cli: &Cli) -> Result<ExitCode> {
    let s = settings(cli)?;
    let (_db, report) = factory::open(&s).await?;
    print_json(&serde_json::to_value(&report)?);
    if let Some(e) = &report.supabase_error {
        eprintln!("error: Supabase: {e}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `call`: one DoX write or read; exit 3 when the mirror failed.
pub async fn call(cli: &Cli, method: &str, json: &str) -> Result<ExitCode> {
    let args: Value = serde_json::from_str(json)
        .map_err(|e| Error::invalid(format!("--args for {method} is not valid JSON: {e}")))?;
    // Parse before opening anything, so bad input writes nothing.
    let call = Call::parse(method, args)?;
    let s = settings(cli)?;
    let (db, report) = factory::open(&s).await?;
    if let Some(e) = &report.supabase_error {
        eprintln!("warning: {e}");
    }
    let out = db.call(call).await?;
    print_json(&out);
    if db.dual_stats().is_some_and(|st| st.failed > 0) {
        if let Some(f) = db.failures().last() {
            eprintln!(
                "mirror failed: {} {} {}: {}",
                f.method, f.table, f.key, f.error
            );
        }
        if let Some(p) = &s.failure_log {
            eprintln!("recorded in {} for `dualwrite replay`", p.display());
        }
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// `replay`: resend the recorded secondary failures.
pub async fn replay(cli: &Cli) -> Result<ExitCode> {
    let s = settings(cli)?;
    let (db, _) = factory::open(&s).await?;
    let Some(report) = db.replay_failures().await else {
        return Err(Error::invalid("replay needs dual write (SUPABASE_DUAL_WRITE=true)").into());
    };
    print_json(&serde_json::to_value(&report)?);
    if report.still_failing > 0 {
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// `demo`: the sample records through dual write, shown on both sides.
pub async fn demo(cli: &Cli, db: &Path) -> Result<ExitCode> {
    let mut s = settings(cli)?;
    if cli.settings.db_path.is_none() {
        s.db_path = db.to_path_buf();
    }
    let report = demo::run(&s).await?;
    print!("{}", report.render());
    if !report.ok() {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `access`: switch or show the Data API access state.
pub async fn access(cli: &Cli, state: &str) -> Result<ExitCode> {
    let s = settings(cli)?;
    let target = factory::connect_supabase(&s).await?;
    let to = match state {
        "status" => None,
        other => Some(dualwrite::access::AccessState::parse(other)?),
    };
    let now = dualwrite::access::access(target.rest(), to).await?;
    print_json(&json!({"access": now.as_str()}));
    Ok(ExitCode::SUCCESS)
}

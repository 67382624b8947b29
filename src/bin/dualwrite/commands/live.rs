//! `capture`, `serve` and `status`: the live migration of a running DoX app.

use std::process::ExitCode;

use anyhow::Result;

use dualwrite::Direction;
use dualwrite::{capture, serve};

use crate::args::{CaptureCommand, Cli, Command};
use crate::shell::{print_json, settings, state_dir_of};

/// `capture`, `serve` and `status`: the live migration of a running DoX app.
pub async fn live(cli: &Cli) -> Result<ExitCode> {
    if let Command::Capture(c) = &cli.command {
        if c.on().target == "supabase" || c.on().print_sql {
            return reverse_capture(cli, c).await;
        }
    }
    let s = settings(cli)?;
    let db = s.db_path.clone();
    match &cli.command {
        Command::Capture(CaptureCommand::Install { .. }) => {
            let log = s.failure_log.clone();
            let r = tokio::task::spawn_blocking(move || capture::install(&db, log.as_deref()))
                .await??;
            print_json(&serde_json::to_value(&r)?);
        }
        Command::Capture(CaptureCommand::Uninstall { force, .. }) => {
            let force = *force;
            let r = tokio::task::spawn_blocking(move || capture::uninstall(&db, force)).await??;
            print_json(&serde_json::to_value(&r)?);
        }
        Command::Capture(CaptureCommand::Status { output, .. }) => {
            let recorded = recorded_primary(&db).await?;
            let st = tokio::task::spawn_blocking(move || capture::status(&db)).await??;
            if output.json() {
                let mut v = serde_json::to_value(&st)?;
                v["recorded_primary"] = serde_json::to_value(&recorded)?;
                print_json(&v);
            } else {
                println!(
                    "capture: {}\ntables captured: {}\nmissing triggers: {}\npending changes: {}\noldest pending: {:.1}s\nrecorded primary: {}",
                    if st.installed { "installed" } else if st.log_present { "incomplete" } else { "not installed" },
                    st.tables.join(", "),
                    if st.missing.is_empty() { "none".to_owned() } else { st.missing.join(", ") },
                    st.pending,
                    st.lag_seconds,
                    dualwrite::cutover::marker::describe(recorded.as_ref()),
                );
            }
            if !st.installed {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Status {
            output,
            direction,
            state_dir,
            ..
        } => {
            let (direction, _) = match direction.as_deref() {
                Some(given) => Direction::resolve(Some(given), &s)?,
                None => {
                    let recorded = recorded_primary(&db).await?;
                    Direction::follow(recorded.map(|m| m.primary), &s)?
                }
            };
            let dir = state_dir_of(state_dir.as_deref(), &db);
            let st = match direction {
                Direction::Forward => {
                    let rejects = dir.rejects();
                    tokio::task::spawn_blocking(move || serve::status(&db, &rejects)).await??
                }
                Direction::Reverse => {
                    let rest = dualwrite::db::RestClient::new(&s.rest_config()?)?;
                    serve::status_reverse(&rest, &db, &dir.reverse_rejects()).await?
                }
            };
            if output.json() {
                print_json(&serde_json::to_value(&st)?);
            } else {
                print!("{}", st.render());
            }
            if !st.healthy {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Serve(a) => {
            let rest = dualwrite::db::RestClient::new(&s.rest_config()?)?;
            match a.direction.as_deref() {
                Some(given) => {
                    let direction = serve_direction(Some(given), &s)?;
                    let o = a.options(direction, db, &s)?;
                    serve::run(rest, o, shutdown_signal()).await?;
                }
                None => {
                    // The recorded primary, else the configuration, decides
                    // where it starts; it follows the marker from then on.
                    let recorded = recorded_primary(&db).await?;
                    let (direction, note) =
                        Direction::follow(recorded.as_ref().map(|m| m.primary), &s)?;
                    if let Some(n) = note {
                        tracing::info!("{n}");
                    }
                    let (f, r) = a.options_both(db, &s)?;
                    serve::run_following(rest, f, r, direction, shutdown_signal()).await?;
                }
            }
        }
        _ => unreachable!("live() handles capture, serve and status only"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The file's recorded primary (`None`: the file records none).
async fn recorded_primary(db: &std::path::Path) -> Result<Option<dualwrite::cutover::Marker>> {
    let db = db.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || dualwrite::cutover::marker::recorded_in(&db)).await??)
}

/// The direction `serve` runs in ([`Direction::resolve`]), the
/// warning logged when `--direction` overrides the configuration.
fn serve_direction(explicit: Option<&str>, s: &dualwrite::config::Settings) -> Result<Direction> {
    let (d, warning) = Direction::resolve(explicit, s)?;
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    Ok(d)
}

/// `capture … --target supabase`: the change log the reverse mirror drains.
async fn reverse_capture(cli: &Cli, c: &CaptureCommand) -> Result<ExitCode> {
    use dualwrite::capture::supabase as rc;
    if c.on().target != "supabase" {
        return Err(dualwrite::Error::invalid("--print-sql goes with --target supabase").into());
    }
    if c.on().print_sql {
        print!("{}", rc::MIGRATION_SQL);
        return Ok(ExitCode::SUCCESS);
    }
    let s = settings(cli)?;
    let target = dualwrite::factory::connect_supabase(&s).await?;
    let st = match c {
        CaptureCommand::Install { .. } => rc::enable(target.rest()).await?,
        CaptureCommand::Uninstall { force, .. } => rc::disable(target.rest(), *force).await?,
        CaptureCommand::Status { .. } => rc::state(target.rest()).await?,
    };
    print_json(&serde_json::to_value(&st)?);
    if matches!(c, CaptureCommand::Status { .. }) && !st.installed() {
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("shutdown requested: finishing the batch in flight");
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

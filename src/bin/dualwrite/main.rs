//! The `dualwrite` command: parses the command line, sets up logging, loads the
//! settings and calls the library. Exit codes: 0 success; 1 error; 2 bad usage
//! or bad input; 3 the write succeeded on the primary but its mirror failed.
//!
//! `args` holds the flags, `commands` one function per command, `shell` what
//! they share (settings, printing, the confirmation prompt, table names).

mod args;
mod commands;
mod shell;

use std::process::ExitCode;

use anyhow::Result;

use args::{Cli, Command, FixturesCommand};
use commands::{app, fixtures, keys, live, load, verify};

// Backfill, export and verify allocate a string per SQLite value; mimalloc
// makes that a small share of their time (glibc malloc took about a fifth).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,dualwrite=info"));
    // Colours only on a terminal: a log file or journald gets plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Config(_) => app::config(&cli),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "dualwrite", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out_dir } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match out_dir {
                Some(dir) => {
                    std::fs::create_dir_all(dir)?;
                    clap_mangen::generate_to(cmd, dir)?;
                }
                None => {
                    let mut page = Vec::new();
                    clap_mangen::Man::new(cmd).render(&mut page)?;
                    std::io::Write::write_all(&mut std::io::stdout(), &page)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(_) => app::check(&cli).await,
        Command::Call { method, args, .. } => app::call(&cli, method, args).await,
        Command::Replay(_) => app::replay(&cli).await,
        Command::Demo { db, .. } => app::demo(&cli, db).await,
        Command::Access { state, .. } => app::access(&cli, state).await,
        Command::Fixtures(FixturesCommand::Generate { rows, out, seed }) => {
            fixtures::generate(*rows, out, *seed).await
        }
        Command::Keys(k) => keys::run(&cli, k),
        Command::Backfill {
            from_sqlite, load, ..
        } => load::backfill(&cli, from_sqlite, load).await,
        Command::Import { dir, load, .. } => load::import(&cli, dir, load).await,
        Command::Export {
            from_sqlite,
            out,
            compress,
            allow_missing_tables,
            tables,
            unrepresentable,
            ..
        } => {
            load::export(
                &cli,
                from_sqlite,
                out,
                (*compress, *allow_missing_tables),
                tables,
                unrepresentable.as_deref(),
            )
            .await
        }
        Command::Verify(a) => Ok(verify::verify(&cli, a).await),
        Command::Cutover(c) => Ok(verify::cutover(&cli, c).await),
        Command::Capture(_) | Command::Serve(_) | Command::Status { .. } => live::live(&cli).await,
    }
}

/// The daemon runs without transparent huge pages. mimalloc asks for them, and
/// the kernel then backs each fresh allocation region with a 2 MiB page it
/// zeroes first: a third of the drain's CPU, and a resident size twice what the
/// daemon uses (BENCHMARKS.md, "Change capture and `serve`"). The short jobs
/// (backfill, verify) keep them.
fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "cannot turn transparent huge pages off; running with them");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    init_tracing(cli.log_json);
    if matches!(cli.command, Command::Serve(_)) {
        without_huge_pages();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Each cause once: `{e:#}` would repeat the ones a message already holds.
            eprintln!("error: {}", dualwrite::error::chain(e.as_ref()));
            shell::exit_code_of(&e)
        }
    }
}

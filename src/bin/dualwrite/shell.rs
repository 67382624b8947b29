//! What every command shares: settings from the flags, printing, the
//! `--unrepresentable` policy, table names and the confirmation prompt.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use dualwrite::config::{Settings, Sources};
use dualwrite::normalise::UnrepresentablePolicy;
use dualwrite::Error;
use dualwrite::StateDir;

use crate::args::Cli;

/// The `--unrepresentable` flag, or the configured `dual.unrepresentable`.
pub fn policy(flag: Option<&str>, s: &Settings) -> Result<UnrepresentablePolicy> {
    Ok(match flag {
        Some(p) => p.parse()?,
        None => s.unrepresentable,
    })
}

/// A DoX file to read: refused (exit 2) when it is not one (no file, not a
/// SQLite database, none of the DoX tables), or when it lacks DoX tables and
/// `allow_missing` is not given (`--allow-missing-tables`), in which case the
/// missing tables are named on stderr and returned.
pub async fn dox_source(path: &std::path::Path, allow_missing: bool) -> Result<Vec<String>> {
    let p = path.to_path_buf();
    let missing =
        tokio::task::spawn_blocking(move || dualwrite::capture::missing_tables(&p)).await??;
    let names: Vec<String> = missing.iter().map(|t| t.sqlite.to_owned()).collect();
    if names.is_empty() {
        return Ok(names);
    }
    if !allow_missing {
        return Err(Error::invalid(format!(
            "{} lacks the DoX table(s) {}: is it the file DoX writes? \
             Pass --allow-missing-tables to go on without them",
            path.display(),
            names.join(", ")
        ))
        .into());
    }
    eprintln!(
        "warning: {} lacks the DoX table(s) {}: going on without them (--allow-missing-tables)",
        path.display(),
        names.join(", ")
    );
    Ok(names)
}

/// `--state-dir` if given, else the source file's default state directory.
pub fn state_dir_of(given: Option<&std::path::Path>, source: &std::path::Path) -> StateDir {
    given.map_or_else(|| StateDir::of_source(source), StateDir::new)
}

/// The one confirmation prompt of every command: `--yes`, or on a terminal a
/// typed `y` or `yes`. Returns who confirmed (`--yes` or `terminal`), or `None`
/// when nobody did (declined, or no terminal to ask on and no `--yes`).
/// `what` (if any) is printed above the question.
pub fn confirm(what: &str, yes: bool) -> std::io::Result<Option<&'static str>> {
    if yes {
        return Ok(Some("--yes"));
    }
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    if what.is_empty() {
        eprint!("Continue? [y/N] ");
    } else {
        eprint!("{what}\nContinue? [y/N] ");
    }
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes").then_some("terminal"))
}

pub fn settings(cli: &Cli) -> Result<Settings> {
    let mut src = Sources::from_process();
    let a = &cli.settings;
    src.config_file = a.file.config.clone();
    if let Some(p) = &a.db_path {
        src.flags.push(("db_path".into(), json!(p)));
    }
    if let Some(b) = &a.backend {
        src.flags.push(("db_backend".into(), json!(b)));
    }
    if let Some(d) = a.dual_write {
        src.flags.push(("dual_write".into(), json!(d)));
    }
    Settings::load(&src).map_err(|e| Usage(e).into())
}

/// An error in what the user gave (a setting, a variable, a file): exit 2, as
/// a bad flag.
#[derive(Debug)]
pub struct Usage(pub dualwrite::Error);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Usage {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON serialises")
    );
}

/// A token argument: `-` reads it from standard input, the documented form
/// (an argument is visible to every local user in `ps`).
pub fn token_arg(arg: &str) -> Result<String> {
    if arg != "-" {
        eprintln!("warning: a token given on the command line is visible in `ps`; pass `-` and the token on standard input");
        return Ok(arg.to_owned());
    }
    let mut token = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut token)?;
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::invalid("no token on standard input").into());
    }
    Ok(token.to_owned())
}

pub fn jwt_secret(s: &Settings) -> Result<String> {
    s.supabase
        .jwt_secret
        .as_ref()
        .map(|k| k.expose_secret().to_owned())
        .context("SUPABASE_JWT_SECRET is not set")
}

pub fn cannot_run(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {}", dualwrite::error::chain(e.as_ref()));
    exit_code_of(&e)
}

/// The exit code of an error (README.md, "Exit codes"): 2 when what the user
/// gave is wrong (a flag, a setting, an argument, a file that is not a DoX
/// database), else 1.
pub fn exit_code_of(e: &anyhow::Error) -> ExitCode {
    match e.downcast_ref::<dualwrite::Error>() {
        Some(dualwrite::Error::InvalidInput(_)) => ExitCode::from(2),
        // SQLite's SQLITE_NOTADB: the path given is not a database (every
        // command says so with 2, whichever layer found it).
        Some(dualwrite::Error::Sqlite(m)) if m.contains("file is not a database") => {
            ExitCode::from(2)
        }
        _ if e.is::<Usage>() => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

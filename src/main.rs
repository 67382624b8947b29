//! The `dualwrite` command: parses the command line, sets up logging, loads the
//! settings and calls the library. Exit codes: 0 success; 1 error; 2 bad usage
//! or bad input; 3 the write succeeded on the primary but its mirror failed.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use dualwrite::backfill::{self, BackfillOptions, BackfillReport, Progress};
use dualwrite::config::{Settings, Sources};
use dualwrite::db::{Dox, SqliteDatabase, SupabaseDatabase};
use dualwrite::model::Call;
use dualwrite::{capture, catalogue, cutover, demo, export, factory, keys, serve, verify, Error};

#[derive(Parser, Debug)]
#[command(
    name = "dualwrite",
    version,
    about = "Move DoX data from SQLite to Supabase without downtime"
)]
struct Cli {
    /// A TOML settings file layered over config/default.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The SQLite file (overrides DB_PATH).
    #[arg(long, global = true, value_name = "PATH")]
    db_path: Option<PathBuf>,
    /// The primary backend: sqlite or supabase (overrides DB_BACKEND).
    #[arg(long, global = true, value_name = "BACKEND")]
    backend: Option<String>,
    /// Mirror writes to the other backend (overrides SUPABASE_DUAL_WRITE).
    #[arg(long, global = true, value_name = "BOOL")]
    dual_write: Option<bool>,
    /// Log as JSON lines instead of text (logs go to stderr).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the resolved configuration, secrets redacted.
    Config,
    /// Open the configured backend and print the init report.
    Check,
    /// Apply one DoX write or read through the configured backend; print the result as JSON.
    Call {
        /// The method, e.g. add_artifact, add_memory, list_tags.
        method: String,
        /// The method's named arguments as a JSON object.
        #[arg(long, value_name = "ARGS", default_value = "{}")]
        json: String,
    },
    /// Replay the recorded secondary failures (dual write) to the mirror.
    Replay,
    /// Test and benchmark data.
    #[command(subcommand)]
    Fixtures(FixturesCommand),
    /// JWT secrets and API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Copy every DoX table from a SQLite file into Supabase (resumable).
    Backfill {
        /// The DoX SQLite file (opened read-only, never changed).
        #[arg(long, value_name = "PATH")]
        from_sqlite: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Write every DoX table as NDJSON in the Supabase shape, with a manifest.
    Export {
        /// The DoX SQLite file (opened read-only).
        #[arg(long, value_name = "PATH")]
        from_sqlite: PathBuf,
        /// The directory to write (must not hold an export already).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// zstd-compress the table files.
        #[arg(long)]
        compress: bool,
        /// Only these tables (comma-separated SQLite or Supabase names).
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
    },
    /// Check an export against its manifest and load it into Supabase (resumable).
    Import {
        /// The export directory.
        dir: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Write the sample DoX records through dual write and show them on both sides.
    Demo {
        /// The SQLite file the demo writes (default: dualwrite-demo.sqlite3).
        #[arg(long, value_name = "PATH", default_value = "dualwrite-demo.sqlite3")]
        db: PathBuf,
    },
    /// Compare Supabase with the SQLite file, row by row (exit 0 equal, 1 different, 2 could not verify).
    Verify(VerifyArgs),
    /// Decide whether Supabase may become the primary.
    #[command(subcommand)]
    Cutover(CutoverCommand),
    /// Change capture on the DoX file (DB_PATH / --db-path): triggers that log every committed change.
    #[command(subcommand)]
    Capture(CaptureCommand),
    /// Mirror every captured change to Supabase, for as long as it runs (the daemon).
    Serve(ServeArgs),
    /// Pending changes, lag and the daemon's last error, read from the file.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum CaptureCommand {
    /// Add the change log and the triggers (idempotent; also repairs missing triggers).
    Install,
    /// Remove every object `install` made, and nothing else.
    Uninstall {
        /// Also when changes are still pending (they will never be mirrored).
        #[arg(long)]
        force: bool,
    },
    /// Installed or not, pending changes, age of the oldest.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Where /health, /ready, /metrics and /status are served.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    listen: std::net::SocketAddr,
    /// Changes read and mirrored per batch.
    #[arg(long, value_name = "N", default_value_t = 4000)]
    batch_rows: usize,
    /// Rows per upsert request.
    #[arg(long, value_name = "N", default_value_t = 500)]
    request_rows: usize,
    /// Upsert requests in flight.
    #[arg(long, value_name = "N", default_value_t = 4)]
    concurrency: usize,
    /// /ready fails when the oldest pending change is older than this.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    max_lag_secs: f64,
    /// How often to look for new commits, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    poll_ms: u64,
    /// How long one batch is retried before the error is recorded (then it is retried again).
    #[arg(long, value_name = "SECS", default_value_t = 20.0)]
    max_wait_secs: f64,
    /// How often the triggers are checked, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    check_secs: f64,
    /// Stop with an error when triggers are missing, instead of re-installing them.
    #[arg(long)]
    no_repair_triggers: bool,
    /// Where rejects.ndjson goes (default: the backfill's state directory for the file).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// The SQLite file (default: DB_PATH). Opened read-only.
    #[arg(long, value_name = "PATH")]
    from_sqlite: Option<PathBuf>,
    /// Only these tables (SQLite or Supabase names).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    tables: Vec<String>,
    /// Compare exact row counts only (fast; content is not compared).
    #[arg(long, conflicts_with = "sample")]
    counts_only: bool,
    /// Compare N random source rows per table, plus exact counts.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    sample: Option<u64>,
    /// text, json, md or html.
    #[arg(long, default_value = "text")]
    format: verify::Format,
    /// Write the report to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Rewrite the missing and differing rows on Supabase from the source, after confirmation.
    #[arg(long, conflicts_with_all = ["counts_only", "sample"])]
    repair: bool,
    /// With --repair: also delete the rows found only on Supabase.
    #[arg(long, requires = "repair")]
    delete_extra: bool,
    /// With --repair: do not ask for confirmation.
    #[arg(long, requires = "repair")]
    yes: bool,
}

#[derive(Subcommand, Debug)]
enum CutoverCommand {
    /// READY or NOT READY, with the reasons (exit 0 only for READY).
    Check {
        /// The SQLite file (default: DB_PATH). Opened read-only.
        #[arg(long, value_name = "PATH")]
        from_sqlite: Option<PathBuf>,
        /// NDJSON of recorded secondary failures (default: the configured dual.failure_log).
        #[arg(long, value_name = "FILE")]
        failures: Option<PathBuf>,
        /// NDJSON of rows the backfill rejected (default: the backfill's rejects.ndjson for this source).
        #[arg(long, value_name = "FILE")]
        rejects: Option<PathBuf>,
        /// text or json.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
}

/// Options shared by `backfill` and `import`.
#[derive(Args, Debug)]
struct LoadArgs {
    /// Only these tables (comma-separated SQLite or Supabase names).
    #[arg(long, value_delimiter = ',')]
    tables: Vec<String>,
    /// Read, convert and validate everything; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Empty the target tables first (asks for confirmation, or --yes).
    #[arg(long)]
    reset: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Rows per batch at most (the batch size adapts below it).
    #[arg(long, default_value_t = 500)]
    batch_rows: usize,
    /// Bytes of JSON per batch at most.
    #[arg(long, default_value_t = 1 << 20)]
    batch_bytes: usize,
    /// Where the checkpoint and rejects.ndjson live (default: ./dualwrite-state/<source>-<hash>).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// How long to keep retrying while Supabase is unreachable, in seconds.
    #[arg(long, default_value_t = 300.0)]
    max_wait_secs: f64,
    /// Do not re-read landed ranges to resend rows the app changed meanwhile.
    #[arg(long)]
    no_stale_guard: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl LoadArgs {
    fn options(&self, source: &std::path::Path) -> Result<BackfillOptions> {
        let state_dir = self.state_dir.clone().unwrap_or_else(|| {
            backfill::default_state_dir(std::path::Path::new("dualwrite-state"), source)
        });
        let mut o = BackfillOptions::new(state_dir);
        o.tables = tables(&self.tables)?;
        o.dry_run = self.dry_run;
        o.concurrency = self.concurrency.max(1);
        o.batch_rows = self.batch_rows.max(1);
        o.batch_bytes = self.batch_bytes.max(1024);
        o.max_wait = Duration::try_from_secs_f64(self.max_wait_secs)
            .map_err(|_| Error::invalid("--max-wait-secs must be a positive number"))?;
        o.stale_guard = !self.no_stale_guard;
        o.progress = if self.json {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            Progress::Bars
        } else {
            Progress::Lines
        };
        Ok(o)
    }
}

fn tables(names: &[String]) -> Result<Vec<&'static catalogue::Table>> {
    Ok(names
        .iter()
        .filter(|n| !n.trim().is_empty())
        .map(|n| catalogue::table(n.trim()))
        .collect::<dualwrite::Result<Vec<_>>>()?)
}

/// Ask before emptying tables: on a terminal, a typed "yes"; otherwise only `--yes`.
fn confirm(what: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::invalid(format!(
            "{what}: confirm with --yes (there is no terminal to ask); nothing was changed"
        ))
        .into());
    }
    eprint!("{what}. Type yes to continue: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        return Err(Error::invalid("not confirmed; nothing was changed").into());
    }
    Ok(())
}

async fn load(
    cli: &Cli,
    args: &LoadArgs,
    source: &std::path::Path,
    run: impl AsyncFnOnce(
        &dualwrite::db::SupabaseDatabase,
        &BackfillOptions,
    ) -> dualwrite::Result<BackfillReport>,
) -> Result<ExitCode> {
    let opts = args.options(source)?;
    let s = settings(cli)?;
    let target = factory::connect_supabase(&s).await?;
    if args.reset && !args.dry_run {
        let selected = opts.selected();
        confirm(
            &format!(
                "--reset deletes every row of {} table(s) in {}",
                selected.len(),
                target.rest().url()
            ),
            args.yes,
        )?;
        let deleted =
            backfill::reset_target(&target, &selected, backfill::RESET_CHUNK, opts.max_wait)
                .await?;
        tracing::info!(rows = deleted, "reset: emptied the target tables");
        // Progress and rejects recorded earlier no longer describe the target.
        let _ = std::fs::remove_file(opts.state_dir.join("checkpoint.json"));
        let old = opts.state_dir.join("rejects.ndjson");
        if old.exists() {
            let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
            std::fs::rename(
                &old,
                opts.state_dir
                    .join(format!("rejects-before-reset-{stamp}.ndjson")),
            )?;
        }
    }
    let report = run(&target, &opts).await?;
    if args.json {
        print_json(&serde_json::to_value(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.rows_rejected > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Subcommand, Debug)]
enum FixturesCommand {
    /// Write a new DoX SQLite file of realistic shape (unicode, nulls, JSON, NaN, orphans, odd keys).
    Generate {
        /// Rows in all (spread over the 17 tables like real DoX data).
        #[arg(long)]
        rows: u64,
        /// The file to create (must not exist).
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// The same seed and row count give the same file.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Generate a JWT secret and anon / service_role keys signed with it (prints secrets).
    Generate {
        /// Validity of the keys, in days.
        #[arg(long, default_value_t = 3650)]
        days: u64,
    },
    /// Sign a token with SUPABASE_JWT_SECRET.
    Sign {
        /// anon, service_role or authenticated.
        #[arg(long)]
        role: String,
        /// The user id (JWT `sub`), required for authenticated.
        #[arg(long)]
        sub: Option<String>,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Check a token's signature and expiry against SUPABASE_JWT_SECRET; print its claims.
    Verify { token: String },
    /// Print a token's header and claims without checking them.
    Decode { token: String },
}

// Backfill, export and verify allocate a string per SQLite value; mimalloc
// makes that a small share of their time (glibc malloc took about a fifth).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,dualwrite=info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn settings(cli: &Cli) -> Result<Settings> {
    let mut src = Sources::from_process();
    src.config_file = cli.config.clone();
    if let Some(p) = &cli.db_path {
        src.flags.push(("db_path".into(), json!(p)));
    }
    if let Some(b) = &cli.backend {
        src.flags.push(("db_backend".into(), json!(b)));
    }
    if let Some(d) = cli.dual_write {
        src.flags.push(("dual_write".into(), json!(d)));
    }
    Ok(Settings::load(&src)?)
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON serialises")
    );
}

fn jwt_secret(s: &Settings) -> Result<String> {
    s.supabase
        .jwt_secret
        .as_ref()
        .map(|k| k.expose_secret().to_owned())
        .context("SUPABASE_JWT_SECRET is not set")
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Config => {
            print_json(&settings(&cli)?.redacted());
        }
        Command::Capture(_) | Command::Serve(_) | Command::Status { .. } => {
            return live(&cli).await;
        }
        Command::Check => {
            let s = settings(&cli)?;
            let (_db, report) = factory::open(&s).await?;
            print_json(&serde_json::to_value(&report)?);
        }
        Command::Call { method, json } => {
            let args: Value = serde_json::from_str(json).map_err(|e| {
                Error::invalid(format!("--json for {method} is not valid JSON: {e}"))
            })?;
            // Parse before opening anything, so bad input writes nothing.
            let call = Call::parse(method, args)?;
            let s = settings(&cli)?;
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
        }
        Command::Fixtures(FixturesCommand::Generate { rows, out, seed }) => {
            let opts = dualwrite::generate::GenerateOptions {
                rows: *rows,
                seed: *seed,
            };
            let report = dualwrite::generate::generate(out, &opts).await?;
            print!("{}", report.render());
        }
        Command::Replay => {
            let s = settings(&cli)?;
            let (db, _) = factory::open(&s).await?;
            let Some(report) = db.replay_failures().await else {
                return Err(
                    Error::invalid("replay needs dual write (SUPABASE_DUAL_WRITE=true)").into(),
                );
            };
            print_json(&serde_json::to_value(&report)?);
            if report.still_failing > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Keys(k) => match k {
            KeysCommand::Generate { days } => {
                let secret = keys::generate_secret();
                let ttl = Duration::from_secs(days * 86_400);
                eprintln!("# new secrets: store them safely; anyone holding them has full access");
                println!("SUPABASE_JWT_SECRET={secret}");
                println!(
                    "SUPABASE_ANON_KEY={}",
                    keys::sign(&secret, "anon", None, ttl)?
                );
                println!(
                    "SUPABASE_SERVICE_KEY={}",
                    keys::sign(&secret, "service_role", None, ttl)?
                );
            }
            KeysCommand::Sign { role, sub, ttl } => {
                let s = settings(&cli)?;
                let secret = jwt_secret(&s)?;
                println!(
                    "{}",
                    keys::sign(&secret, role, sub.as_deref(), Duration::from_secs(*ttl))?
                );
            }
            KeysCommand::Verify { token } => {
                let s = settings(&cli)?;
                let secret = jwt_secret(&s)?;
                match keys::verify(&secret, token) {
                    Ok(claims) => print_json(&json!({"valid": true, "claims": claims})),
                    Err(e) => {
                        print_json(&json!({"valid": false, "error": e.to_string()}));
                        return Ok(ExitCode::from(1));
                    }
                }
            }
            KeysCommand::Decode { token } => print_json(&keys::decode(token)?),
        },
        Command::Backfill {
            from_sqlite,
            load: args,
        } => {
            return load(&cli, args, from_sqlite, async |t, o| {
                backfill::run(from_sqlite, t, o).await
            })
            .await;
        }
        Command::Import { dir, load: args } => {
            return load(&cli, args, dir, async |t, o| {
                export::import(dir, t, o).await
            })
            .await;
        }
        Command::Export {
            from_sqlite,
            out,
            compress,
            tables: names,
        } => {
            let m = export::export(from_sqlite, out, &tables(names)?, *compress).await?;
            print_json(&serde_json::to_value(&m)?);
            if m.rejected_rows > 0 {
                eprintln!(
                    "{} rows could not be exported; each is in {}",
                    m.rejected_rows,
                    out.join("rejects.ndjson").display()
                );
                return Ok(ExitCode::from(3));
            }
        }
        Command::Demo { db } => {
            let mut s = settings(&cli)?;
            if cli.db_path.is_none() {
                s.db_path = db.clone();
            }
            let report = demo::run(&s).await?;
            print!("{}", report.render());
            if !report.ok() {
                return Ok(ExitCode::from(1));
            }
        }
        // Verification that cannot run exits with 2, not 1 (1 means "they differ").
        Command::Verify(a) => return Ok(verify_cmd(&cli, a).await.unwrap_or_else(cannot_run)),
        Command::Cutover(CutoverCommand::Check {
            from_sqlite,
            failures,
            rejects,
            format,
        }) => {
            let check = async {
                let s = settings(&cli)?;
                let path = from_sqlite.clone().unwrap_or_else(|| s.db_path.clone());
                let (source, target, key) = verify_sides(&s, &path).await?;
                // By default, where dual write and the backfill record them.
                let default_rejects = || {
                    backfill::default_state_dir(std::path::Path::new("dualwrite-state"), &path)
                        .join("rejects.ndjson")
                };
                let opts = cutover::CutoverOptions {
                    key,
                    failures: failures.clone().or_else(|| s.failure_log.clone()),
                    rejects: Some(rejects.clone().unwrap_or_else(default_rejects)),
                };
                let report = cutover::check(&source, &target, &opts).await?;
                match format.as_str() {
                    "json" => print_json(&serde_json::to_value(&report)?),
                    _ => print!("{}", report.render_text()),
                }
                Ok(ExitCode::from(report.exit_code()))
            };
            return Ok(check.await.unwrap_or_else(cannot_run));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cannot_run(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(2)
}

/// The source (read-only) and the target of a verification, and the key used.
async fn verify_sides(
    s: &Settings,
    path: &std::path::Path,
) -> Result<(SqliteDatabase, SupabaseDatabase, verify::KeyInfo)> {
    let source = SqliteDatabase::open_read_only(path).await?;
    let target = factory::connect_supabase(s).await?;
    let key = verify::KeyInfo::from_settings(s).context("no Supabase key is configured")?;
    Ok((source, target, key))
}

/// Print the report, or write it to `out` and say where.
fn emit(
    report: &verify::VerifyReport,
    format: verify::Format,
    out: Option<&std::path::Path>,
) -> Result<()> {
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
    let (mut before, plan) = repair::plan(&source, &target, &opts).await?;
    let mut outcome = RepairOutcome::planned(&before, &plan, &ropts);
    if matches!(
        before.verdict,
        verify::Verdict::Incomplete | verify::Verdict::PartialVisibility
    ) {
        outcome.status = repair::RepairStatus::Refused;
        before.repair = Some(outcome);
        emit(&before, a.format, a.out.as_deref())?;
        eprintln!("not repairing: {}", before.verdict.as_str().to_lowercase());
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
    outcome.confirmed_by = Some(by.to_owned());
    repair::apply(&source, &target, &plan, &ropts, &mut outcome).await?;
    opts.check = verify::Check::Content;
    let mut after = verify::run(&source, &target, &opts).await?;
    after.repair = Some(outcome);
    emit(&after, a.format, a.out.as_deref())?;
    Ok(ExitCode::from(after.exit_code))
}

/// `capture`, `serve` and `status`: the live migration of a running DoX app.
async fn live(cli: &Cli) -> Result<ExitCode> {
    let s = settings(cli)?;
    let db = s.db_path.clone();
    match &cli.command {
        Command::Capture(CaptureCommand::Install) => {
            let log = s.failure_log.clone();
            let r = tokio::task::spawn_blocking(move || capture::install(&db, log.as_deref()))
                .await??;
            print_json(&serde_json::to_value(&r)?);
        }
        Command::Capture(CaptureCommand::Uninstall { force }) => {
            let force = *force;
            let r = tokio::task::spawn_blocking(move || capture::uninstall(&db, force)).await??;
            print_json(&serde_json::to_value(&r)?);
        }
        Command::Capture(CaptureCommand::Status { json }) => {
            let st = tokio::task::spawn_blocking(move || capture::status(&db)).await??;
            if *json {
                print_json(&serde_json::to_value(&st)?);
            } else {
                println!(
                    "capture: {}\ntables captured: {}\nmissing triggers: {}\npending changes: {}\noldest pending: {:.1}s",
                    if st.installed { "installed" } else if st.log_present { "incomplete" } else { "not installed" },
                    st.tables.join(", "),
                    if st.missing.is_empty() { "none".to_owned() } else { st.missing.join(", ") },
                    st.pending,
                    st.lag_seconds
                );
            }
            if !st.installed {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Status { json } => {
            let st = tokio::task::spawn_blocking(move || serve::status(&db)).await??;
            if *json {
                print_json(&serde_json::to_value(&st)?);
            } else {
                print!("{}", st.render());
            }
        }
        Command::Serve(a) => {
            let rest = dualwrite::rest::RestClient::new(&s.rest_config()?)?;
            let state_dir = a.state_dir.clone().unwrap_or_else(|| {
                backfill::default_state_dir(std::path::Path::new("dualwrite-state"), &db)
            });
            let mut o = serve::ServeOptions::new(db, state_dir);
            o.listen = Some(a.listen);
            o.batch_rows = a.batch_rows.max(1);
            o.request_rows = a.request_rows.max(1);
            o.concurrency = a.concurrency.max(1);
            o.max_lag = Duration::from_secs_f64(a.max_lag_secs.max(0.0));
            o.poll = Duration::from_millis(a.poll_ms.max(1));
            o.max_wait = Duration::from_secs_f64(a.max_wait_secs.max(0.0));
            o.check_every = Duration::from_secs_f64(a.check_secs.max(0.1));
            o.repair_triggers = !a.no_repair_triggers;
            serve::run(rest, o, shutdown_signal()).await?;
        }
        _ => unreachable!("live() handles capture, serve and status only"),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
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
            eprintln!("error: {e:#}");
            match e.downcast_ref::<Error>() {
                Some(Error::InvalidInput(_)) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

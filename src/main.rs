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
use dualwrite::normalise::UnrepresentablePolicy;
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
        /// Values Supabase cannot hold (NUL, invalid UTF-8, \u0000 in JSON, text in an
        /// integer column): reject the row, or coerce the value and record the original
        /// (default: the configured dual.unrepresentable, itself reject by default).
        #[arg(long, value_name = "POLICY", value_parser = ["reject", "coerce"])]
        unrepresentable: Option<String>,
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
    /// Data API access for clients: mirror (read only, while SQLite is primary) or primary.
    Access {
        /// mirror, primary, or status (print the state in force).
        #[arg(value_parser = ["mirror", "primary", "status"])]
        state: String,
    },
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
    Install {
        #[command(flatten)]
        on: CaptureTarget,
    },
    /// Remove every object `install` made, and nothing else.
    Uninstall {
        /// Also when changes are still pending (they will never be mirrored).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        on: CaptureTarget,
    },
    /// Installed or not, pending changes, age of the oldest.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        on: CaptureTarget,
    },
}

/// Which side `capture` works on.
#[derive(clap::Args, Debug, Clone)]
struct CaptureTarget {
    /// sqlite (the DoX file, SQLite primary) or supabase (Supabase primary:
    /// the change log the reverse mirror drains, switched through the Data API).
    #[arg(long, value_parser = ["sqlite", "supabase"], default_value = "sqlite")]
    target: String,
    /// Print the SQL that defines capture on Supabase (for `supabase db push`
    /// or `psql -f`) and do nothing else; only with --target supabase.
    #[arg(long)]
    print_sql: bool,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// forward: the captured SQLite file to Supabase (SQLite primary); reverse:
    /// the Supabase change log to the SQLite file (Supabase primary, the file
    /// kept as the rollback copy; needs `capture install --target supabase`).
    #[arg(long, value_parser = ["forward", "reverse"], default_value = "forward")]
    direction: String,
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
    /// What to do with a value Supabase cannot hold: reject (a dead letter) or coerce
    /// (default: the configured dual.unrepresentable, itself reject by default).
    #[arg(long, value_name = "POLICY", value_parser = ["reject", "coerce"])]
    unrepresentable: Option<String>,
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
    /// Values Supabase cannot hold (NUL, invalid UTF-8, \u0000 in JSON, text in an
    /// integer column): compare as written with this policy: under coerce, rows equal in their
    /// coerced form are equal and listed as "coerced"
    /// (default: the configured dual.unrepresentable, itself reject by default).
    #[arg(long, value_name = "POLICY", value_parser = ["reject", "coerce"])]
    unrepresentable: Option<String>,
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
        /// Values Supabase cannot hold (NUL, invalid UTF-8, \u0000 in JSON, text in an
        /// integer column): the policy the rows were written with
        /// (default: the configured dual.unrepresentable, itself reject by default).
        #[arg(long, value_name = "POLICY", value_parser = ["reject", "coerce"])]
        unrepresentable: Option<String>,
        /// Rows that landed coerced may be READY (implies --unrepresentable coerce).
        #[arg(long)]
        accept_coerced: bool,
        /// The other way: may the app switch back to the SQLite file (Supabase
        /// primary, `serve --direction reverse` keeping the file current)?
        #[arg(long)]
        rollback: bool,
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
    /// Forget the checkpoint and copy every table again; the target keeps its rows.
    #[arg(long, conflicts_with = "reset")]
    restart: bool,
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
    /// Where the checkpoint and rejects.ndjson live (default: dualwrite-state/<source>-<hash> beside the source).
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
    /// Values Supabase cannot hold (NUL, invalid UTF-8, \u0000 in JSON, text in an
    /// integer column): reject the row, or coerce the value and record the original in
    /// coerced.ndjson beside rejects.ndjson
    /// (default: the configured dual.unrepresentable, itself reject by default).
    #[arg(long, value_name = "POLICY", value_parser = ["reject", "coerce"])]
    unrepresentable: Option<String>,
}

impl LoadArgs {
    fn options(&self, source: &std::path::Path) -> Result<BackfillOptions> {
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| backfill::state_dir_for(source));
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

/// The `--unrepresentable` flag, or the configured `dual.unrepresentable`.
fn policy(flag: Option<&str>, s: &Settings) -> Result<UnrepresentablePolicy> {
    Ok(match flag {
        Some(p) => p.parse()?,
        None => s.unrepresentable,
    })
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
    let mut opts = args.options(source)?;
    let s = settings(cli)?;
    opts.unrepresentable = policy(args.unrepresentable.as_deref(), &s)?;
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
        // The checkpoint goes first: a run killed mid-reset must not find
        // the emptied tables marked done.
        let deleted = backfill::reset(&target, &opts).await?;
        tracing::info!(rows = deleted, "reset: emptied the target tables");
    } else if args.restart && !args.dry_run {
        backfill::forget_progress(&opts.state_dir)?;
        tracing::info!("restart: forgot the checkpoint; copying every table again");
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
        /// Validity of the anon key, in days.
        #[arg(long, default_value_t = 3650)]
        days: u64,
        /// Validity of the service_role key, in days (it bypasses RLS: keep it short).
        #[arg(long, default_value_t = keys::DEFAULT_SERVICE_KEY_DAYS)]
        service_days: u64,
        /// Print docker-compose.yml's variables instead (JWT_SECRET, ANON_KEY, SERVICE_ROLE_KEY,
        /// PUBLISHABLE_KEY, SECRET_KEY, POSTGRES_PASSWORD), for `> .env`.
        #[arg(long)]
        compose: bool,
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
    /// Check a token's signature, expiry and not-before time against
    /// SUPABASE_JWT_SECRET; print its claims. Give `-` and the token on stdin.
    Verify {
        /// `-` reads the token from standard input (a token in argv shows in `ps`).
        token: String,
        /// Also require this audience (`aud` claim), e.g. authenticated.
        #[arg(long)]
        aud: Option<String>,
    },
    /// Print a token's header and claims without checking them. Give `-` and the token on stdin.
    Decode {
        /// `-` reads the token from standard input (a token in argv shows in `ps`).
        token: String,
    },
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

/// A token argument: `-` reads it from standard input, the documented form
/// (an argument is visible to every local user in `ps`).
fn token_arg(arg: &str) -> Result<String> {
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
        Command::Capture(c) if capture_on(c).target == "supabase" || capture_on(c).print_sql => {
            return reverse_capture(&cli, c).await;
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
            KeysCommand::Generate {
                days,
                service_days,
                compose,
            } => {
                let secret = keys::generate_secret();
                let ttl = Duration::from_secs(days.saturating_mul(86_400));
                let service_ttl = Duration::from_secs(service_days.saturating_mul(86_400));
                eprintln!("# new secrets: store them safely; anyone holding them has full access");
                if let Some(w) = keys::lifetime_warning("service_role", service_ttl) {
                    eprintln!("{w}");
                }
                let anon = keys::sign(&secret, "anon", None, ttl)?;
                let service = keys::sign(&secret, "service_role", None, service_ttl)?;
                if *compose {
                    println!("JWT_SECRET={secret}");
                    println!("ANON_KEY={anon}");
                    println!("SERVICE_ROLE_KEY={service}");
                    println!("PUBLISHABLE_KEY=sb_publishable_{}", keys::generate_secret());
                    println!("SECRET_KEY=sb_secret_{}", keys::generate_secret());
                    println!("POSTGRES_PASSWORD={}", keys::generate_secret());
                } else {
                    println!("SUPABASE_JWT_SECRET={secret}");
                    println!("SUPABASE_ANON_KEY={anon}");
                    println!("SUPABASE_SERVICE_KEY={service}");
                }
            }
            KeysCommand::Sign { role, sub, ttl } => {
                let s = settings(&cli)?;
                let secret = jwt_secret(&s)?;
                let ttl = Duration::from_secs(*ttl);
                if let Some(w) = keys::lifetime_warning(role, ttl) {
                    eprintln!("{w}");
                }
                println!("{}", keys::sign(&secret, role, sub.as_deref(), ttl)?);
            }
            KeysCommand::Verify { token, aud } => {
                let token = token_arg(token)?;
                let s = settings(&cli)?;
                let secret = jwt_secret(&s)?;
                match keys::verify(&secret, &token, aud.as_deref()) {
                    Ok(claims) => print_json(&json!({"valid": true, "claims": claims})),
                    Err(e) => {
                        print_json(&json!({"valid": false, "error": e.to_string()}));
                        return Ok(ExitCode::from(1));
                    }
                }
            }
            KeysCommand::Decode { token } => print_json(&keys::decode(&token_arg(token)?)?),
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
            unrepresentable,
        } => {
            let p = match unrepresentable {
                Some(p) => p.parse()?,
                None => settings(&cli)?.unrepresentable,
            };
            let m = export::export_with(from_sqlite, out, &tables(names)?, *compress, p).await?;
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
        Command::Access { state } => {
            let s = settings(&cli)?;
            let target = factory::connect_supabase(&s).await?;
            let to = match state.as_str() {
                "status" => None,
                other => Some(dualwrite::access::AccessState::parse(other)?),
            };
            let now = dualwrite::access::access(target.rest(), to).await?;
            print_json(&json!({"access": now.as_str()}));
        }
        // Verification that cannot run exits with 2, not 1 (1 means "they differ").
        Command::Verify(a) => return Ok(verify_cmd(&cli, a).await.unwrap_or_else(cannot_run)),
        Command::Cutover(CutoverCommand::Check {
            from_sqlite,
            failures,
            rejects,
            format,
            unrepresentable,
            accept_coerced,
            rollback,
        }) => {
            if *rollback {
                let check = async {
                    let s = settings(&cli)?;
                    let path = from_sqlite.clone().unwrap_or_else(|| s.db_path.clone());
                    let (lite, supa, key) = verify_sides(&s, &path).await?;
                    let r = dualwrite::reverse::rollback::check(&path, &lite, &supa, key).await?;
                    match format.as_str() {
                        "json" => print_json(&serde_json::to_value(&r)?),
                        _ => print!("{}", r.render_text()),
                    }
                    Ok(ExitCode::from(r.exit_code()))
                };
                return Ok(check.await.unwrap_or_else(cannot_run));
            }
            let check = async {
                let s = settings(&cli)?;
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
            return Ok(check.await.unwrap_or_else(cannot_run));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cannot_run(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {}", dualwrite::error::chain(e.as_ref()));
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

fn capture_on(c: &CaptureCommand) -> &CaptureTarget {
    match c {
        CaptureCommand::Install { on }
        | CaptureCommand::Uninstall { on, .. }
        | CaptureCommand::Status { on, .. } => on,
    }
}

/// `capture … --target supabase`: the change log the reverse mirror drains.
async fn reverse_capture(cli: &Cli, c: &CaptureCommand) -> Result<ExitCode> {
    use dualwrite::reverse::capture as rc;
    if capture_on(c).target != "supabase" {
        return Err(Error::invalid("--print-sql goes with --target supabase").into());
    }
    if capture_on(c).print_sql {
        print!("{}", rc::MIGRATION_SQL);
        return Ok(ExitCode::SUCCESS);
    }
    let s = settings(cli)?;
    let target = factory::connect_supabase(&s).await?;
    let (to, force) = match c {
        CaptureCommand::Install { .. } => (Some(true), false),
        CaptureCommand::Uninstall { force, .. } => (Some(false), *force),
        CaptureCommand::Status { .. } => (None, false),
    };
    let st = rc::switch(target.rest(), to, force).await?;
    print_json(&serde_json::to_value(&st)?);
    if matches!(c, CaptureCommand::Status { .. }) && !st.installed() {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `capture`, `serve` and `status`: the live migration of a running DoX app.
async fn live(cli: &Cli) -> Result<ExitCode> {
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
        Command::Capture(CaptureCommand::Status { json, .. }) => {
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
        Command::Serve(a) if a.direction == "reverse" => {
            let rest = dualwrite::rest::RestClient::new(&s.rest_config()?)?;
            let mut o = dualwrite::reverse::serve::ReverseOptions::new(db);
            o.listen = Some(a.listen);
            o.batch_rows = a.batch_rows.max(1);
            o.max_lag = Duration::from_secs_f64(a.max_lag_secs.max(0.0));
            o.poll = Duration::from_millis(a.poll_ms.max(1));
            o.max_wait = Duration::from_secs_f64(a.max_wait_secs.max(0.0));
            dualwrite::reverse::serve::run(rest, o, shutdown_signal()).await?;
        }
        Command::Serve(a) => {
            let rest = dualwrite::rest::RestClient::new(&s.rest_config()?)?;
            let state_dir = a
                .state_dir
                .clone()
                .unwrap_or_else(|| backfill::state_dir_for(&db));
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
            o.unrepresentable = policy(a.unrepresentable.as_deref(), &s)?;
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
            // Each cause once: `{e:#}` would repeat the ones a message already holds.
            eprintln!("error: {}", dualwrite::error::chain(e.as_ref()));
            match e.downcast_ref::<Error>() {
                Some(Error::InvalidInput(_)) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

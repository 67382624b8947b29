//! The command line: every command, its flags and their defaults.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use dualwrite::backfill::BackfillOptions;
use dualwrite::serve::ServeOptions;
use dualwrite::Direction;
use dualwrite::{keys, verify};

/// The defaults of `backfill` and `import`: the library's.
fn load_defaults() -> BackfillOptions {
    BackfillOptions::default()
}

/// `--via postgres`'s batches: a COPY costs a statement and a commit whatever its
/// size, so more rows per batch pay (BENCHMARKS.md, backfill_via: 2,000 rows needed
/// a fifth less CPU than 500 for the same 1M rows); the bytes stay the REST path's
/// (4 MiB batches took the peak RSS to 161 MB at 5M rows, against 105 MB with 1 MiB).
pub const COPY_BATCH_ROWS: usize = 2_000;
pub const COPY_BATCH_BYTES: usize = 1 << 20;

/// A `serve` option's help, with its default in each direction: the
/// library's ([`ServeOptions::new`]), the one place they are written.
fn per_direction(what: &str, env: &str, default: impl Fn(&ServeOptions) -> String) -> String {
    let of = |d| {
        default(&ServeOptions::new(
            d,
            PathBuf::new(),
            dualwrite::StateDir::new(""),
        ))
    };
    format!(
        "{what} [default: forward {}, reverse {}] [env: DUALWRITE_SERVE_{env}]",
        of(Direction::Forward),
        of(Direction::Reverse)
    )
}

/// The exit codes of every command, in `--help` and README.md.
const EXIT_CODES: &str = "\
Exit codes (every command):
  0  done; the answer is yes (EQUAL, READY, healthy, installed)
  1  failed at run time, or could not tell (Supabase or SQLite failed or could not be reached)
  2  bad usage or input (a flag, a setting, an argument, a file that is not a DoX database); nothing written
  3  done, and the answer is no or partial: verify DIFFERENT, cutover check NOT READY, status not
     healthy, capture not installed, rows rejected (backfill, import, export), a mirror write that
     failed (call), failures still failing (replay), a key that does not verify (keys verify)

Output: commands that report take --format text|json (--json is the same as --format json); config,
check, call, access, replay and capture install/uninstall print JSON.";

#[derive(Parser, Debug)]
#[command(
    name = "dualwrite",
    version,
    about = "Move DoX data from SQLite to Supabase without downtime",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Log as JSON lines instead of text (logs go to stderr).
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
    /// The settings flags of the command given ([`Command::settings`]), filled by [`Cli::parse_args`].
    #[arg(skip)]
    pub settings: SettingsArgs,
}

impl Cli {
    /// Parse the command line; the settings flags, wherever the command has them, end up in `settings`.
    pub fn parse_args() -> Cli {
        let mut cli = <Cli as Parser>::parse();
        cli.settings = cli.command.settings();
        cli
    }
}

/// `--config`: on every command that reads the settings.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArg {
    /// A TOML settings file layered over config/default.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The settings flags of the commands that work on the configured app storage.
#[derive(Args, Debug, Clone, Default)]
pub struct SettingsArgs {
    #[command(flatten)]
    pub file: ConfigArg,
    /// The SQLite file [env: DB_PATH]
    #[arg(long, value_name = "PATH")]
    pub db_path: Option<PathBuf>,
    /// The primary backend: sqlite or supabase [env: DB_BACKEND]
    #[arg(long, value_name = "BACKEND")]
    pub backend: Option<String>,
    /// Mirror writes to the other backend [env: SUPABASE_DUAL_WRITE]
    #[arg(long, value_name = "BOOL")]
    pub dual_write: Option<bool>,
}

impl From<&ConfigArg> for SettingsArgs {
    fn from(c: &ConfigArg) -> SettingsArgs {
        SettingsArgs {
            file: c.clone(),
            ..SettingsArgs::default()
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the resolved configuration, secrets redacted.
    Config(SettingsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout,
    /// e.g. `dualwrite completions bash > /etc/bash_completion.d/dualwrite`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, or write one page per command into a directory,
    /// e.g. `dualwrite man --out-dir /usr/local/share/man/man1`.
    Man {
        /// Write dualwrite.1 and a page per subcommand (dualwrite-serve.1 ...) here.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Open the configured backend and print the init report (exit 1 when Supabase,
    /// asked for, is not usable: the report says why).
    Check(SettingsArgs),
    /// Apply one DoX write or read through the configured backend; print the result as JSON.
    Call {
        /// The method, e.g. add_artifact, add_memory, list_tags.
        method: String,
        /// The method's named arguments, as a JSON object.
        #[arg(long, value_name = "JSON", default_value = "{}")]
        args: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Replay the recorded secondary failures (dual write) to the mirror.
    Replay(SettingsArgs),
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
        #[command(flatten)]
        config: ConfigArg,
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
        /// Go on when the source lacks some DoX tables; refused by default.
        #[arg(long)]
        allow_missing_tables: bool,
        /// Only these tables (comma-separated SQLite or Supabase names).
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
        /// Values Supabase cannot hold (NUL, invalid UTF-8, \u0000 in JSON, text in an
        /// integer column): reject the row, or coerce the value and record the original
        /// (default: the configured dual.unrepresentable, itself reject by default).
        #[arg(long, value_name = "POLICY", value_parser = ["reject", "coerce"])]
        unrepresentable: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check an export against its manifest and load it into Supabase (resumable).
    Import {
        /// The export directory.
        dir: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write the sample DoX records through dual write and show them on both sides.
    Demo {
        /// The SQLite file the demo writes (default: dualwrite-demo.sqlite3).
        #[arg(long, value_name = "PATH", default_value = "dualwrite-demo.sqlite3")]
        db: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Compare Supabase with the SQLite file, row by row (exit 0 EQUAL, 3 DIFFERENT, 1 could not verify).
    Verify(VerifyArgs),
    /// Switch the primary: check whether Supabase may become it, run the cutover, roll it back.
    #[command(subcommand)]
    Cutover(CutoverCommand),
    /// Data API access for clients: mirror (read only, while SQLite is primary) or primary.
    Access {
        /// mirror, primary, or status (print the state in force).
        #[arg(value_parser = ["mirror", "primary", "status"])]
        state: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Change capture on the DoX file (DB_PATH / --db-path): triggers that log every committed change.
    #[command(subcommand)]
    Capture(CaptureCommand),
    /// Mirror every captured change to Supabase, for as long as it runs (the daemon).
    Serve(ServeArgs),
    /// Whether the mirror is healthy: pending changes and lag read from the change
    /// log now (reverse: Supabase's), whether a daemon runs and what it last reported.
    ///
    /// Exit status: 0 healthy (capture complete, a daemon running, ready and within
    /// its lag bound); 3 not healthy (the reasons are printed); 1 it could not be
    /// told (the file or Supabase could not be read); 2 bad usage.
    Status {
        #[command(flatten)]
        output: Output,
        /// forward (the file's change log) or reverse (the Supabase change log;
        /// default: as `serve`, the recorded primary, else DB_BACKEND and dual write).
        #[arg(long, value_parser = ["forward", "reverse"])]
        direction: Option<String>,
        /// Where the dead letters are counted (default: as `serve`).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

/// How a command that reports prints it: the one output convention.
#[derive(Args, Debug, Clone)]
pub struct Output {
    /// text (for people) or json (one object, for scripts).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
    /// Same as --format json.
    #[arg(long)]
    pub json: bool,
}

impl Output {
    pub fn json(&self) -> bool {
        self.json || self.format == "json"
    }
}

impl Command {
    /// The settings flags given to this command (none for the commands that read no settings).
    pub fn settings(&self) -> SettingsArgs {
        match self {
            Command::Config(s)
            | Command::Check(s)
            | Command::Replay(s)
            | Command::Call { settings: s, .. }
            | Command::Access { settings: s, .. }
            | Command::Status { settings: s, .. }
            | Command::Serve(ServeArgs { settings: s, .. })
            | Command::Verify(VerifyArgs { settings: s, .. })
            | Command::Cutover(CutoverCommand::Check { settings: s, .. })
            | Command::Cutover(CutoverCommand::Run(CutoverRunArgs { settings: s, .. }))
            | Command::Cutover(CutoverCommand::Rollback(CutoverRunArgs { settings: s, .. })) => {
                s.clone()
            }
            Command::Capture(c) => c.on().settings.clone(),
            Command::Backfill { config, .. }
            | Command::Export { config, .. }
            | Command::Import { config, .. }
            | Command::Demo { config, .. }
            | Command::Keys(KeysCommand::Sign { config, .. })
            | Command::Keys(KeysCommand::Verify { config, .. }) => config.into(),
            Command::Completions { .. }
            | Command::Man { .. }
            | Command::Fixtures(_)
            | Command::Keys(KeysCommand::Generate { .. } | KeysCommand::Decode { .. }) => {
                SettingsArgs::default()
            }
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum CaptureCommand {
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
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        on: CaptureTarget,
    },
}

impl CaptureCommand {
    /// The side the command works on.
    pub fn on(&self) -> &CaptureTarget {
        match self {
            CaptureCommand::Install { on }
            | CaptureCommand::Uninstall { on, .. }
            | CaptureCommand::Status { on, .. } => on,
        }
    }
}

/// Which side `capture` works on.
#[derive(clap::Args, Debug, Clone)]
pub struct CaptureTarget {
    /// sqlite (the DoX file, SQLite primary) or supabase (Supabase primary:
    /// the change log the reverse mirror drains, switched through the Data API).
    #[arg(long, value_parser = ["sqlite", "supabase"], default_value = "sqlite")]
    pub target: String,
    /// Print the SQL that defines capture on Supabase (for `supabase db push`
    /// or `psql -f`) and do nothing else; only with --target supabase.
    #[arg(long)]
    pub print_sql: bool,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// `serve`'s flags. Each one given overrides the direction's default
/// ([`ServeArgs::options`]); one that does not apply to the direction is refused.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// forward: the captured SQLite file to Supabase (SQLite primary); reverse:
    /// the Supabase change log to the SQLite file (Supabase primary, the file
    /// kept as the rollback copy; needs `capture install --target supabase`).
    /// Default: the file's recorded primary (set by a cutover), followed while
    /// serve runs; with none recorded, reverse when DB_BACKEND=supabase with
    /// dual write on, forward when DB_BACKEND=sqlite. Given, it wins over the
    /// configuration (a warning says so), but serve does not drain while the
    /// recorded primary contradicts it.
    #[arg(long, value_parser = ["forward", "reverse"])]
    pub direction: Option<String>,
    /// Where /health, /ready, /metrics and /status are served [default: 127.0.0.1:8787]
    /// [env: DUALWRITE_SERVE_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Allow --listen on an address that is not loopback: whoever reaches it reads
    /// the process id, the tables' figures and the last error [env: DUALWRITE_SERVE_LISTEN_PUBLIC]
    #[arg(long)]
    pub listen_public: bool,
    #[arg(long, value_name = "N", help = per_direction(
        "Changes claimed per batch", "BATCH_ROWS", |o| o.batch_rows.to_string()))]
    pub batch_rows: Option<usize>,
    #[arg(long, value_name = "N", help = per_direction(
        "Rows per request to Supabase (upserts forward, reads reverse)", "REQUEST_ROWS",
        |o| o.request_rows.to_string()))]
    pub request_rows: Option<usize>,
    #[arg(long, value_name = "N", help = per_direction(
        "Requests to Supabase in flight, over all the batches out", "CONCURRENCY",
        |o| o.concurrency.to_string()))]
    pub concurrency: Option<usize>,
    #[arg(long, value_name = "SECS", help = per_direction(
        "/ready fails when the oldest pending change is older than this, or when the daemon \
         made no progress for this long while changes wait", "MAX_LAG_SECS",
         |o| o.max_lag.as_secs_f64().to_string()))]
    pub max_lag_secs: Option<f64>,
    #[arg(long, value_name = "MS", help = per_direction(
        "How often to look for new commits while the log is empty", "POLL_MS",
        |o| o.poll.as_millis().to_string()))]
    pub poll_ms: Option<u64>,
    #[arg(long, value_name = "SECS", help = per_direction(
        "How long one request is retried before its batch fails (the batch is tried again \
         after a pause that grows while failures go on)", "MAX_WAIT_SECS",
         |o| o.max_wait.as_secs_f64().to_string()))]
    pub max_wait_secs: Option<f64>,
    #[arg(long, value_name = "SECS", help = per_direction(
        "How often capture (the triggers) is checked and, while idle, Supabase probed; forward \
         also whenever the file's schema changes", "CHECK_SECS",
         |o| o.check_every.as_secs_f64().to_string()))]
    pub check_secs: Option<f64>,
    /// Stop with an error when triggers are missing, instead of re-installing them
    /// (and re-sending their tables) [env: DUALWRITE_SERVE_REPAIR_TRIGGERS=false]
    #[arg(long)]
    pub no_repair_triggers: bool,
    /// Where the dead letters go: rejects.ndjson forward, reverse-rejects.ndjson
    /// reverse [default: the backfill's state directory for the file]
    /// [env: DUALWRITE_SERVE_STATE_DIR]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Forward only: what to do with a value Supabase cannot hold, reject (a dead
    /// letter) or coerce [default: reject] [env: DUALWRITE_UNREPRESENTABLE]
    #[arg(long, value_name = "POLICY", value_parser = ["reject", "coerce"])]
    pub unrepresentable: Option<String>,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

impl ServeArgs {
    /// The options `serve` runs with: `direction`'s defaults, under the
    /// configured `[serve]` settings (file, then `DUALWRITE_SERVE_*`), under
    /// each flag given. The one conversion of `serve`'s flags.
    pub fn options(
        &self,
        direction: Direction,
        db: PathBuf,
        settings: &dualwrite::config::Settings,
    ) -> dualwrite::Result<ServeOptions> {
        self.build(direction, db, settings, true)
    }

    /// The options of both directions, for a daemon that follows the file's
    /// recorded primary (a forward-only flag applies to the forward one).
    pub fn options_both(
        &self,
        db: PathBuf,
        settings: &dualwrite::config::Settings,
    ) -> dualwrite::Result<(ServeOptions, ServeOptions)> {
        Ok((
            self.build(Direction::Forward, db.clone(), settings, true)?,
            self.build(Direction::Reverse, db, settings, false)?,
        ))
    }

    fn build(
        &self,
        direction: Direction,
        db: PathBuf,
        settings: &dualwrite::config::Settings,
        strict: bool,
    ) -> dualwrite::Result<ServeOptions> {
        use std::time::Duration;
        let secs = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(dualwrite::Error::invalid(format!(
                    "--{name} {v}: give a number of seconds, 0 or more"
                )))
            }
        };
        let state_dir = match (&self.state_dir, &settings.serve.state_dir) {
            (Some(d), _) | (None, Some(d)) => dualwrite::StateDir::new(d),
            (None, None) => dualwrite::StateDir::of_source(&db),
        };
        let mut o = ServeOptions::configured(direction, db, state_dir, settings);
        if let Some(a) = self.listen {
            o.listen = Some(a);
        }
        o.listen_public |= self.listen_public;
        if let Some(n) = self.batch_rows {
            o.batch_rows = n.max(1);
        }
        if let Some(n) = self.request_rows {
            o.request_rows = n.max(1);
        }
        if let Some(n) = self.concurrency {
            o.concurrency = n.max(1);
        }
        if let Some(v) = self.max_lag_secs {
            o.max_lag = secs("max-lag-secs", v)?;
        }
        if let Some(ms) = self.poll_ms {
            o.poll = Duration::from_millis(ms.max(1));
        }
        if let Some(v) = self.max_wait_secs {
            o.max_wait = secs("max-wait-secs", v)?;
        }
        if let Some(v) = self.check_secs {
            o.check_every = secs("check-secs", v)?.max(Duration::from_millis(100));
        }
        if self.no_repair_triggers {
            o.repair_triggers = false;
        }
        match (direction, self.unrepresentable.as_deref()) {
            (Direction::Forward, Some(p)) => o.unrepresentable = p.parse()?,
            (Direction::Reverse, Some(_)) if strict => {
                return Err(dualwrite::Error::invalid(
                    "--unrepresentable applies to the forward direction (values going into \
                     Supabase); reverse, a value the file cannot hold is a dead letter",
                ))
            }
            (Direction::Reverse, Some(_)) | (_, None) => {}
        }
        Ok(o)
    }
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The SQLite file (default: DB_PATH). Opened read-only.
    #[arg(long, value_name = "PATH")]
    pub from_sqlite: Option<PathBuf>,
    /// Go on when the file lacks some DoX tables; refused by default.
    #[arg(long)]
    pub allow_missing_tables: bool,
    /// Only these tables (SQLite or Supabase names).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub tables: Vec<String>,
    /// Compare exact row counts only (fast; content is not compared).
    #[arg(long, conflicts_with = "sample")]
    pub counts_only: bool,
    /// Compare N random source rows per table, plus exact counts.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub sample: Option<u64>,
    /// text, json, md or html.
    #[arg(long, default_value = "text")]
    pub format: verify::Format,
    /// Same as --format json.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Write the report to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// forward: SQLite is the source, Supabase the target (before cutover);
    /// reverse: Supabase is the source, the SQLite file the target (after
    /// cutover, with `serve --direction reverse` keeping the file current).
    #[arg(long, default_value = "forward")]
    pub direction: Direction,
    /// Rewrite the missing and differing rows on the target (Supabase; the SQLite
    /// file with --direction reverse) from the source, after confirmation.
    #[arg(long, conflicts_with_all = ["counts_only", "sample"])]
    pub repair: bool,
    /// With --repair: also delete the rows found only on the target.
    #[arg(long, requires = "repair")]
    pub delete_extra: bool,
    /// With --repair: do not ask for confirmation.
    #[arg(long, requires = "repair")]
    pub yes: bool,
    /// Values Supabase cannot hold (NUL, invalid UTF-8, \u0000 in JSON, text in an
    /// integer column): compare as written with this policy: under coerce, rows equal in their
    /// coerced form are equal and listed as "coerced"
    /// (default: the configured dual.unrepresentable, itself reject by default).
    #[arg(long, value_name = "POLICY", value_parser = ["reject", "coerce"])]
    pub unrepresentable: Option<String>,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

impl VerifyArgs {
    /// `--format`, or json with `--json`.
    pub fn output_format(&self) -> verify::Format {
        if self.json {
            verify::Format::Json
        } else {
            self.format
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum CutoverCommand {
    /// READY or NOT READY, with the reasons (exit 0 READY, 3 NOT READY).
    Check {
        /// The SQLite file (default: DB_PATH). Opened read-only.
        #[arg(long, value_name = "PATH")]
        from_sqlite: Option<PathBuf>,
        /// NDJSON of recorded secondary failures (default: the configured dual.failure_log).
        #[arg(long, value_name = "FILE")]
        failures: Option<PathBuf>,
        /// NDJSON of rows the backfill rejected (default: the backfill's rejects.ndjson for this source);
        /// with --rollback, the reverse mirror's dead letters (default: its reverse-rejects.ndjson).
        #[arg(long, value_name = "FILE")]
        rejects: Option<PathBuf>,
        #[command(flatten)]
        output: Output,
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
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Make Supabase the primary: take the drain from serve, verify by content, hold the app's
    /// writes (at most --max-pause) to drain and verify what changed, switch, release
    /// (exit 0 switched, 3 stopped with nothing switched).
    Run(CutoverRunArgs),
    /// Make the SQLite file the primary again: the same steps the other way, the app's writes
    /// on Supabase held by table locks (exit 0 switched back, 3 stopped with nothing switched).
    Rollback(CutoverRunArgs),
}

/// The options of `cutover run` and `cutover rollback`.
#[derive(Args, Debug)]
pub struct CutoverRunArgs {
    /// Print the plan and the preflight's findings; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// The longest the app's writes are held, in seconds (under the app's SQLite busy
    /// timeout: DoX's engine has Python's default, 5 s).
    #[arg(long, value_name = "SECS", default_value_t = 4.0)]
    pub max_pause: f64,
    /// The app's SQLite busy timeout in seconds, when it is not DoX's 5 s: --max-pause must stay under it.
    #[arg(long, value_name = "SECS")]
    pub app_busy_timeout: Option<f64>,
    /// Do not start with more changes than this pending.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub max_pending: u64,
    /// A shell command that restarts the app on the new primary (DB_BACKEND=supabase, or sqlite
    /// for a rollback), run right after the switch while the app's writes are still held.
    #[arg(long, value_name = "COMMAND")]
    pub restart: Option<String>,
    /// NDJSON of recorded secondary failures (default: the configured dual.failure_log).
    #[arg(long, value_name = "FILE")]
    pub failures: Option<PathBuf>,
    /// NDJSON of rows the backfill rejected, each verified in the fence (default: the backfill's
    /// rejects.ndjson for this source).
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,
    /// Where the journal of the run is kept (default: the file's state directory).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// Options shared by `backfill` and `import`.
#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Only these tables (comma-separated SQLite or Supabase names).
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,
    /// Read, convert and validate everything; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Empty the target tables first (asks for confirmation, or --yes).
    #[arg(long)]
    pub reset: bool,
    /// Forget the checkpoint and copy every table again; the target keeps its rows.
    #[arg(long, conflicts_with = "reset")]
    pub restart: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Batches in flight at once.
    #[arg(long, default_value_t = load_defaults().concurrency)]
    pub concurrency: usize,
    #[arg(long, help = format!(
        "Rows per batch at most (the batch size adapts below it) [default: {}; {COPY_BATCH_ROWS} with --via postgres]",
        load_defaults().batch_rows
    ))]
    pub batch_rows: Option<usize>,
    #[arg(long, help = format!(
        "Bytes of JSON per batch at most [default: {}; {COPY_BATCH_BYTES} with --via postgres]",
        load_defaults().batch_bytes
    ))]
    pub batch_bytes: Option<usize>,
    /// Where the checkpoint and rejects.ndjson live (default: dualwrite-state/<source>-<hash> beside the source).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How long to keep retrying while Supabase is unreachable, in seconds.
    #[arg(long, default_value_t = load_defaults().max_wait.as_secs_f64())]
    pub max_wait_secs: f64,
    /// Do not re-read landed ranges to resend rows the app changed meanwhile.
    #[arg(long)]
    pub no_stale_guard: bool,
    #[command(flatten)]
    pub output: Output,
    /// Go on when the source lacks some DoX tables (they are named in the report);
    /// refused by default.
    #[arg(long)]
    pub allow_missing_tables: bool,
    /// Values Supabase cannot hold (NUL, invalid UTF-8, \u0000 in JSON, text in an
    /// integer column): reject the row, or coerce the value and record the original in
    /// coerced.ndjson beside rejects.ndjson
    /// (default: the configured dual.unrepresentable, itself reject by default).
    #[arg(long, value_name = "POLICY", value_parser = ["reject", "coerce"])]
    pub unrepresentable: Option<String>,
    /// How rows go in: rest (PostgREST, with the service key) or postgres (COPY over the
    /// database connection string in SUPABASE_DB_URL, else DATABASE_URL; --reset then
    /// truncates through it). Direct or session-mode pooler; see docs/runbook.md.
    #[arg(long, value_name = "WAY", value_parser = ["rest", "postgres"], default_value = "rest")]
    pub via: String,
}

#[derive(Subcommand, Debug)]
pub enum FixturesCommand {
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
pub enum KeysCommand {
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
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check a token's signature, expiry and not-before time against
    /// SUPABASE_JWT_SECRET; print its claims. Give `-` and the token on stdin.
    Verify {
        /// `-` reads the token from standard input (a token in argv shows in `ps`).
        token: String,
        /// Also require this audience (`aud` claim), e.g. authenticated.
        #[arg(long)]
        aud: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a token's header and claims without checking them. Give `-` and the token on stdin.
    Decode {
        /// `-` reads the token from standard input (a token in argv shows in `ps`).
        token: String,
    },
}

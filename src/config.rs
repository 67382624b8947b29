//! Typed settings, layered once (lowest first):
//!
//! 1. embedded defaults (`DEFAULTS`);
//! 2. `config/default.toml` in the working directory, if present;
//! 3. a file named with `--config`, if given (must exist);
//! 4. `.env`, then `.env.local`, then the process environment, with the exact
//!    DoX variable names (`DB_BACKEND`, `DB_PATH`, `SUPABASE_URL`,
//!    `SUPABASE_ANON_KEY`, `SUPABASE_SERVICE_KEY`, `SUPABASE_JWT_SECRET`,
//!    `SUPABASE_SCHEMA`, `SUPABASE_DUAL_WRITE`, `SUPABASE_TIMEOUT`), Supabase's
//!    own name for the service key, `SUPABASE_SERVICE_ROLE_KEY` (DoX's
//!    `SUPABASE_SERVICE_KEY` wins when both are set), plus dualwrite's own
//!    `DUALWRITE_UNREPRESENTABLE`, `DUALWRITE_DRAIN` and `DUALWRITE_REST_URL`;
//! 5. command-line flags.
//!
//! Everything is validated here into the types the code uses; an unknown key,
//! an unknown backend or a malformed number is an error that names its source.
//! Secrets are [`SecretString`]s: their `Debug` is redacted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::db::Breaker;
use crate::error::{Error, Result};
use crate::normalise::UnrepresentablePolicy;
use crate::rest::RestConfig;

/// The embedded defaults (the same text as the repository's `config/default.toml`).
pub(crate) const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Supabase,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Supabase => "supabase",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SupabaseSettings {
    /// The project URL (`SUPABASE_URL`, e.g. `https://<ref>.supabase.co`), as
    /// every Supabase client takes it; the REST API is under `/rest/v1`.
    pub url: Option<String>,
    /// A PostgREST endpoint used as given (`DUALWRITE_REST_URL`), for a
    /// PostgREST not behind Supabase's gateway; wins over `url`.
    pub rest_url: Option<String>,
    pub anon_key: Option<SecretString>,
    pub service_key: Option<SecretString>,
    /// Where the service key came from (`SUPABASE_SERVICE_KEY`,
    /// `SUPABASE_SERVICE_ROLE_KEY` or the config file), for reports.
    pub service_key_source: &'static str,
    pub jwt_secret: Option<SecretString>,
    /// The database connection string (`SUPABASE_DB_URL`, else `DATABASE_URL`),
    /// for `--via postgres`.
    pub db_url: Option<SecretString>,
    pub schema: String,
    /// Per-request timeout (`SUPABASE_TIMEOUT`, seconds).
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// `DB_BACKEND`, as configured (before validation), for the init report.
    pub configured_backend: String,
    pub backend: BackendKind,
    pub db_path: PathBuf,
    pub dual_write: bool,
    pub supabase: SupabaseSettings,
    pub sqlite_wal: bool,
    pub sqlite_synchronous_normal: bool,
    /// The longest a mirror write may hold an application write.
    pub mirror_timeout: Duration,
    pub breaker: Breaker,
    pub max_recorded_failures: usize,
    /// Where secondary failures are persisted (`None`: memory only). Always
    /// absolute: a relative setting is resolved from the database file's
    /// directory, so every command finds the same file wherever it runs.
    pub failure_log: Option<PathBuf>,
    /// `dual.failure_log` names a file (not the default beside `DB_PATH`):
    /// `cutover check` then treats its absence as a reason not to cut over.
    pub failure_log_configured: bool,
    /// What the Supabase side does with a value it cannot hold
    /// (`dual.unrepresentable`, `DUALWRITE_UNREPRESENTABLE`).
    pub unrepresentable: UnrepresentablePolicy,
    /// Where coerced values are recorded with their originals (`dual.coerced_log`).
    pub coerced_log: PathBuf,
    /// Who drains the change log when capture is installed (`dual.drain`).
    pub drain: DrainMode,
    /// The `serve` daemon's options below its flags (`[serve]`).
    pub serve: ServeSettings,
}

/// `dual.drain` (`DUALWRITE_DRAIN`): with change capture installed, the dual
/// layer mirrors nothing inline (every write waits in the change log, in
/// order with the other writers'); who drains the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainMode {
    /// A `dualwrite serve` daemon (the default).
    Serve,
    /// Also a drainer task inside the embedding process, under `serve`'s lease:
    /// it drains only while no `serve` (or other drainer) holds the file.
    Background,
}

impl DrainMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DrainMode::Serve => "serve",
            DrainMode::Background => "background",
        }
    }
}

/// `serve` or `background`, in any case.
impl std::str::FromStr for DrainMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "serve" => Ok(DrainMode::Serve),
            "background" => Ok(DrainMode::Background),
            other => Err(Error::invalid(format!(
                "unknown drain mode `{other}`: use `serve` or `background`"
            ))),
        }
    }
}

/// The raw shape of the TOML layers; unknown keys are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    db_backend: String,
    db_path: String,
    dual_write: bool,
    supabase: RawSupabase,
    sqlite: RawSqlite,
    dual: RawDual,
    serve: RawServe,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupabase {
    url: String,
    rest_url: String,
    anon_key: String,
    service_key: String,
    jwt_secret: String,
    db_url: String,
    schema: String,
    timeout_secs: f64,
    connect_timeout_secs: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSqlite {
    wal: bool,
    synchronous_normal: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDual {
    mirror_timeout_secs: f64,
    breaker_failures: u32,
    breaker_cooldown_secs: f64,
    failure_log: String,
    max_recorded_failures: usize,
    unrepresentable: String,
    coerced_log: String,
    drain: String,
}

/// `[serve]`: an absent number is the direction's default ([`crate::serve::ServeOptions::new`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServe {
    listen: String,
    listen_public: bool,
    batch_rows: Option<u64>,
    request_rows: Option<u64>,
    concurrency: Option<u64>,
    max_lag_secs: Option<f64>,
    poll_ms: Option<u64>,
    max_wait_secs: Option<f64>,
    check_secs: Option<f64>,
    repair_triggers: bool,
    state_dir: String,
}

/// The `serve` daemon's settings (`[serve]`, `DUALWRITE_SERVE_*`), below its
/// flags. `None` is the direction's default.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeSettings {
    /// Where `/health`, `/ready`, `/metrics` and `/status` are served (`None`: nowhere).
    pub listen: Option<std::net::SocketAddr>,
    pub listen_public: bool,
    pub batch_rows: Option<usize>,
    pub request_rows: Option<usize>,
    pub concurrency: Option<usize>,
    pub max_lag: Option<Duration>,
    pub poll: Option<Duration>,
    pub max_wait: Option<Duration>,
    pub check_every: Option<Duration>,
    pub repair_triggers: bool,
    pub state_dir: Option<PathBuf>,
}

impl ServeSettings {
    fn validate(raw: RawServe, db_dir: &Path) -> Result<ServeSettings> {
        let listen = match raw.listen.trim() {
            "" | "none" => None,
            a => Some(a.parse().map_err(|e| {
                Error::config(format!(
                    "serve.listen (DUALWRITE_SERVE_LISTEN) = `{a}` is not an address such as \
                     127.0.0.1:8787 (or none): {e}"
                ))
            })?),
        };
        let count = |n: Option<u64>| n.map(|n| usize::try_from(n.max(1)).unwrap_or(usize::MAX));
        let dur = |name: &str, v: Option<f64>| v.map(|v| secs(name, v)).transpose();
        Ok(ServeSettings {
            listen,
            listen_public: raw.listen_public,
            batch_rows: count(raw.batch_rows),
            request_rows: count(raw.request_rows),
            concurrency: count(raw.concurrency),
            max_lag: dur("serve.max_lag_secs", raw.max_lag_secs)?,
            poll: raw.poll_ms.map(|ms| Duration::from_millis(ms.max(1))),
            max_wait: dur("serve.max_wait_secs", raw.max_wait_secs)?,
            check_every: dur("serve.check_secs", raw.check_secs)?,
            repair_triggers: raw.repair_triggers,
            state_dir: non_empty(raw.state_dir).map(|d| db_dir.join(d)),
        })
    }
}

/// Where settings come from. `env` is the process environment (injectable for tests).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Directory holding `config/default.toml`, `.env` and `.env.local`.
    pub dir: PathBuf,
    pub config_file: Option<PathBuf>,
    pub env: HashMap<String, String>,
    /// `(key, value)` overrides from flags, e.g. `("db_path", "x.sqlite3")`.
    pub flags: Vec<(String, Value)>,
}

impl Sources {
    /// The current directory and process environment.
    pub fn from_process() -> Sources {
        Sources {
            dir: PathBuf::from("."),
            config_file: None,
            env: std::env::vars().collect(),
            flags: Vec::new(),
        }
    }
}

/// DoX environment variables and where they go; a later one wins over an
/// earlier one for the same key.
const ENV_KEYS: &[(&str, &str)] = &[
    ("DB_BACKEND", "db_backend"),
    ("DB_PATH", "db_path"),
    ("SUPABASE_URL", "supabase.url"),
    ("SUPABASE_ANON_KEY", "supabase.anon_key"),
    // Supabase's own name (its CLI and documents); DoX's, next, wins.
    ("SUPABASE_SERVICE_ROLE_KEY", "supabase.service_key"),
    ("SUPABASE_SERVICE_KEY", "supabase.service_key"),
    ("SUPABASE_JWT_SECRET", "supabase.jwt_secret"),
    // The database connection string: the common name, then Supabase's, which wins.
    ("DATABASE_URL", "supabase.db_url"),
    ("SUPABASE_DB_URL", "supabase.db_url"),
    ("SUPABASE_SCHEMA", "supabase.schema"),
    ("SUPABASE_DUAL_WRITE", "dual_write"),
    ("SUPABASE_TIMEOUT", "supabase.timeout_secs"),
    // Not a DoX variable: dualwrite's own.
    ("DUALWRITE_UNREPRESENTABLE", "dual.unrepresentable"),
    ("DUALWRITE_DRAIN", "dual.drain"),
    ("DUALWRITE_REST_URL", "supabase.rest_url"),
    ("DUALWRITE_SERVE_LISTEN", "serve.listen"),
    ("DUALWRITE_SERVE_LISTEN_PUBLIC", "serve.listen_public"),
    ("DUALWRITE_SERVE_BATCH_ROWS", "serve.batch_rows"),
    ("DUALWRITE_SERVE_REQUEST_ROWS", "serve.request_rows"),
    ("DUALWRITE_SERVE_CONCURRENCY", "serve.concurrency"),
    ("DUALWRITE_SERVE_MAX_LAG_SECS", "serve.max_lag_secs"),
    ("DUALWRITE_SERVE_POLL_MS", "serve.poll_ms"),
    ("DUALWRITE_SERVE_MAX_WAIT_SECS", "serve.max_wait_secs"),
    ("DUALWRITE_SERVE_CHECK_SECS", "serve.check_secs"),
    ("DUALWRITE_SERVE_REPAIR_TRIGGERS", "serve.repair_triggers"),
    ("DUALWRITE_SERVE_STATE_DIR", "serve.state_dir"),
];

/// `v` without trailing `/`, refused unless it is an http(s) URL.
fn http_url(name: &str, v: &str) -> Result<String> {
    let u = v.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(u)
        .map_err(|e| Error::config(format!("{name}=`{u}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::config(format!(
            "{name}=`{u}` must start with http:// or https://"
        )));
    }
    Ok(u.to_owned())
}

/// Where Supabase serves PostgREST under a project URL.
const REST_PATH: &str = "/rest/v1";

/// The project URL from `SUPABASE_URL`: a value that already ends in
/// `/rest/v1` (dualwrite's old form) keeps working, with a note once per process.
fn project_url(u: &str) -> String {
    match u.strip_suffix(REST_PATH) {
        Some(project) => {
            static NOTED: std::sync::Once = std::sync::Once::new();
            NOTED.call_once(|| {
                tracing::info!(
                    "SUPABASE_URL ends in {REST_PATH}: read as the project URL {}, \
                     as Supabase's clients expect it (drop the suffix to silence this note)",
                    crate::rest::public_url(project)
                )
            });
            project.to_owned()
        }
        None => u.to_owned(),
    }
}

impl SupabaseSettings {
    /// The PostgREST endpoint: `DUALWRITE_REST_URL` if set, else the project
    /// URL's `/rest/v1`.
    pub fn rest_endpoint(&self) -> Option<String> {
        self.rest_url
            .clone()
            .or_else(|| self.url.as_ref().map(|u| format!("{u}{REST_PATH}")))
    }
}

fn parse_bool(name: &str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::config(format!(
            "{name}=`{v}` is not a boolean (use true/false, 1/0, yes/no, on/off)"
        ))),
    }
}

fn parse_secs(name: &str, v: &str) -> Result<f64> {
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err(Error::config(format!(
            "{name}=`{v}` is not a positive number of seconds"
        ))),
    }
}

fn parse_count(name: &str, v: &str) -> Result<u64> {
    match v.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::config(format!(
            "{name}=`{v}` is not a positive whole number"
        ))),
    }
}

fn secs(name: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| Error::config(format!("{name} = {s} is not a positive number of seconds")))
}

/// Where dual write records mirror failures for the database file at
/// `db_path` by default: `<DB_PATH>.failures.ndjson`, absolute.
pub fn default_failure_log(db_path: &Path) -> PathBuf {
    let abs = std::path::absolute(db_path).unwrap_or_else(|_| db_path.to_path_buf());
    let mut p = abs.into_os_string();
    p.push(".failures.ndjson");
    PathBuf::from(p)
}

/// Read a dotenv file into `into`, without overriding keys already there.
fn read_dotenv(path: &Path, into: &mut HashMap<String, String>) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let iter = dotenvy::from_path_iter(path)
        .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
    for item in iter {
        let (k, v) = item.map_err(|e| dotenv_error(path, e))?;
        into.entry(k).or_insert(v);
    }
    Ok(())
}

/// A dotenv error that names the file and line but never shows the line:
/// dotenvy's message quotes it whole, and it may hold a key.
fn dotenv_error(path: &Path, e: dotenvy::Error) -> Error {
    match e {
        dotenvy::Error::LineParse(text, _) => {
            // dotenvy reports the (possibly multi-line) text from the line
            // that starts the faulty entry: find that line in the file.
            let first = text.lines().next().unwrap_or_default();
            let line = std::fs::read_to_string(path).ok().and_then(|all| {
                all.lines()
                    .position(|l| !first.is_empty() && l.trim_end() == first.trim_end())
                    .map(|i| i + 1)
            });
            let at = line.map_or_else(String::new, |n| format!(" at line {n}"));
            Error::config(format!(
                "{}: syntax error{at} (an unterminated quote or a bad character?); the line is not shown because it may hold a secret",
                path.display()
            ))
        }
        dotenvy::Error::Io(io) => Error::config(format!("cannot read {}: {io}", path.display())),
        // Only the kinds above come from parsing a file; say no more than the file.
        _ => Error::config(format!(
            "{}: cannot be read as a dotenv file",
            path.display()
        )),
    }
}

fn non_empty(s: String) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

impl Settings {
    pub fn load(src: &Sources) -> Result<Settings> {
        use config::{Config, File, FileFormat};
        // Process environment first, so that dotenv files never override it.
        let mut env: HashMap<String, String> = ENV_KEYS
            .iter()
            .filter_map(|(k, _)| src.env.get(*k).map(|v| ((*k).to_owned(), v.clone())))
            .collect();
        read_dotenv(&src.dir.join(".env.local"), &mut env)?;
        read_dotenv(&src.dir.join(".env"), &mut env)?;

        let mut b = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from(src.dir.join("config/default.toml")).required(false));
        if let Some(f) = &src.config_file {
            if !f.exists() {
                return Err(Error::config(format!(
                    "config file {} does not exist",
                    f.display()
                )));
            }
            b = b.add_source(File::from(f.as_path()).required(true));
        }
        let blank = |var: &str| env.get(var).is_none_or(|v| v.trim().is_empty());
        // DoX's name wins over Supabase's, unless DoX's is there but empty.
        let service_key_source = if !blank("SUPABASE_SERVICE_KEY") {
            "SUPABASE_SERVICE_KEY"
        } else if !blank("SUPABASE_SERVICE_ROLE_KEY") {
            "SUPABASE_SERVICE_ROLE_KEY"
        } else {
            "supabase.service_key (config file)"
        };
        for &(var, key) in ENV_KEYS {
            let Some(v) = env.get(var) else { continue };
            if key == "supabase.service_key" && var != service_key_source && v.trim().is_empty() {
                continue;
            }
            // A blank SUPABASE_DB_URL leaves DATABASE_URL in force.
            if key == "supabase.db_url" && v.trim().is_empty() {
                continue;
            }
            b = match key {
                "dual_write" | "serve.listen_public" | "serve.repair_triggers" => {
                    b.set_override(key, parse_bool(var, v)?)
                }
                "supabase.timeout_secs" => b.set_override(key, parse_secs(var, v)?),
                "serve.max_lag_secs" | "serve.max_wait_secs" | "serve.check_secs" => {
                    b.set_override(key, parse_secs(var, v)?)
                }
                "serve.batch_rows" | "serve.request_rows" | "serve.concurrency"
                | "serve.poll_ms" => b.set_override(key, parse_count(var, v)?),
                _ => b.set_override(key, v.clone()),
            }
            .map_err(|e| Error::config(e.to_string()))?;
        }
        for (k, v) in &src.flags {
            let cv: config::Value = match v {
                Value::Bool(x) => (*x).into(),
                Value::Number(n) => n.as_f64().unwrap_or_default().into(),
                Value::String(s) => s.clone().into(),
                other => other.to_string().into(),
            };
            b = b
                .set_override(k.as_str(), cv)
                .map_err(|e| Error::config(e.to_string()))?;
        }
        let raw: Raw = b
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|e| Error::config(e.to_string()))?;
        let mut settings = Settings::validate(raw)?;
        settings.supabase.service_key_source = service_key_source;
        Ok(settings)
    }

    fn validate(raw: Raw) -> Result<Settings> {
        let configured = raw.db_backend.trim().to_ascii_lowercase();
        let backend = match configured.as_str() {
            "" | "sqlite" => BackendKind::Sqlite,
            "supabase" => BackendKind::Supabase,
            other => {
                return Err(Error::config(format!(
                    "DB_BACKEND=`{other}` is not a backend (use sqlite or supabase)"
                )))
            }
        };
        let db_path: PathBuf = non_empty(raw.db_path)
            .ok_or_else(|| Error::config("DB_PATH is empty"))?
            .into();
        let absolute_db = std::path::absolute(&db_path).map_err(|e| {
            Error::config(format!(
                "DB_PATH {} cannot be resolved: {e}",
                db_path.display()
            ))
        })?;
        let db_dir = absolute_db.parent().unwrap_or(Path::new("/")).to_path_buf();
        let failure_log_setting = raw.dual.failure_log.trim().to_owned();
        let failure_log = match failure_log_setting.as_str() {
            "none" => None,
            "" => Some(default_failure_log(&absolute_db)),
            other => Some(db_dir.join(other)),
        };
        let unrepresentable: UnrepresentablePolicy =
            raw.dual.unrepresentable.parse().map_err(|_| {
                Error::config(format!(
                    "dual.unrepresentable (DUALWRITE_UNREPRESENTABLE) = `{}` is not a policy \
                     (use reject or coerce)",
                    raw.dual.unrepresentable
                ))
            })?;
        let drain = match raw.dual.drain.trim() {
            "" => DrainMode::Serve,
            other => other.parse().map_err(|_| {
                Error::config(format!(
                    "dual.drain (DUALWRITE_DRAIN) = `{}` is not a drain mode (use serve or background)",
                    raw.dual.drain
                ))
            })?,
        };
        let coerced_log = match raw.dual.coerced_log.trim() {
            "" => {
                let mut p = db_path.clone().into_os_string();
                p.push(".coerced.ndjson");
                PathBuf::from(p)
            }
            other => PathBuf::from(other),
        };
        let secret = |s: String| non_empty(s).map(SecretString::from);
        let s = raw.supabase;
        let url = non_empty(s.url)
            .map(|u| http_url("SUPABASE_URL", &u))
            .transpose()?
            .map(|u| project_url(&u));
        let rest_url = non_empty(s.rest_url)
            .map(|u| http_url("DUALWRITE_REST_URL", &u))
            .transpose()?;
        let schema = non_empty(s.schema).unwrap_or_else(|| "public".into());
        if !schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(Error::config(format!(
                "SUPABASE_SCHEMA=`{schema}` is not a schema name"
            )));
        }
        let timeout = secs("supabase.timeout_secs (SUPABASE_TIMEOUT)", s.timeout_secs)?;
        let serve = ServeSettings::validate(raw.serve, &db_dir)?;
        Ok(Settings {
            configured_backend: configured,
            backend,
            db_path,
            dual_write: raw.dual_write,
            supabase: SupabaseSettings {
                url,
                rest_url,
                anon_key: secret(s.anon_key),
                service_key: secret(s.service_key),
                service_key_source: "supabase.service_key (config file)",
                jwt_secret: secret(s.jwt_secret),
                db_url: secret(s.db_url),
                schema,
                timeout,
                connect_timeout: secs("supabase.connect_timeout_secs", s.connect_timeout_secs)?,
            },
            sqlite_wal: raw.sqlite.wal,
            sqlite_synchronous_normal: raw.sqlite.synchronous_normal,
            mirror_timeout: secs("dual.mirror_timeout_secs", raw.dual.mirror_timeout_secs)?,
            breaker: Breaker {
                failures: raw.dual.breaker_failures.max(1),
                cooldown: secs("dual.breaker_cooldown_secs", raw.dual.breaker_cooldown_secs)?,
            },
            max_recorded_failures: raw.dual.max_recorded_failures.max(1),
            failure_log,
            failure_log_configured: !matches!(failure_log_setting.as_str(), "" | "none"),
            unrepresentable,
            coerced_log,
            drain,
            serve,
        })
    }

    /// Whether the configuration asks for Supabase at all.
    pub fn wants_supabase(&self) -> bool {
        self.backend == BackendKind::Supabase || self.dual_write
    }

    /// How to reach Supabase: the service key if set, else the anon key (as DoX does).
    pub fn rest_config(&self) -> Result<RestConfig> {
        let s = &self.supabase;
        let url = s.rest_endpoint().ok_or_else(|| {
            Error::config(
                "SUPABASE_URL is not set (the project URL, e.g. https://<ref>.supabase.co \
                 or http://localhost:54321)",
            )
        })?;
        let key = s
            .service_key
            .clone()
            .or_else(|| s.anon_key.clone())
            .ok_or_else(|| {
                Error::config(
                    "no Supabase key: set SUPABASE_SERVICE_KEY (or SUPABASE_SERVICE_ROLE_KEY, \
                     or SUPABASE_ANON_KEY)",
                )
            })?;
        Ok(RestConfig {
            url,
            key,
            user_jwt: None,
            schema: s.schema.clone(),
            timeout: s.timeout,
            connect_timeout: s.connect_timeout,
        })
    }

    /// The resolved configuration with secrets redacted, for `dualwrite config`.
    pub fn redacted(&self) -> Value {
        let red = |s: &Option<SecretString>| match s {
            None => Value::Null,
            Some(s) => json!(format!(
                "[redacted: {} chars{}]",
                s.expose_secret().chars().count(),
                match crate::rest::KeyKind::of(s.expose_secret()) {
                    crate::rest::KeyKind::Secret => ", sb_secret_",
                    crate::rest::KeyKind::Publishable => ", sb_publishable_",
                    crate::rest::KeyKind::Jwt => "",
                }
            )),
        };
        json!({
            "db_backend": self.backend.as_str(),
            "db_path": self.db_path,
            "dual_write": self.dual_write,
            "supabase": {
                "url": self.supabase.url,
                "rest_url": self.supabase.rest_url,
                "rest_endpoint": self.supabase.rest_endpoint(),
                "anon_key": red(&self.supabase.anon_key),
                "service_key": red(&self.supabase.service_key),
                "jwt_secret": red(&self.supabase.jwt_secret),
                "db_url": self.supabase.db_url.as_ref().map(|u| crate::postgres::shown_url(u.expose_secret())),
                "schema": self.supabase.schema,
                "timeout_secs": self.supabase.timeout.as_secs_f64(),
                "connect_timeout_secs": self.supabase.connect_timeout.as_secs_f64(),
            },
            "sqlite": {
                "wal": self.sqlite_wal,
                "synchronous_normal": self.sqlite_synchronous_normal,
            },
            "dual": {
                "mirror_timeout_secs": self.mirror_timeout.as_secs_f64(),
                "breaker_failures": self.breaker.failures,
                "breaker_cooldown_secs": self.breaker.cooldown.as_secs_f64(),
                "max_recorded_failures": self.max_recorded_failures,
                "failure_log": self.failure_log,
                "unrepresentable": self.unrepresentable.as_str(),
                "coerced_log": self.coerced_log,
                "drain": self.drain.as_str(),
            },
            "serve": crate::serve::ServeOptions::configured_json(self),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(env: &[(&str, &str)]) -> (tempfile::TempDir, Sources) {
        let dir = tempfile::tempdir().unwrap();
        let s = Sources {
            dir: dir.path().to_path_buf(),
            config_file: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags: vec![],
        };
        (dir, s)
    }

    #[test]
    fn the_connection_string_is_supabase_db_url_else_database_url_and_never_shown() {
        let db_url = |env: &[(&str, &str)]| {
            let (_d, s) = sources(env);
            let st = Settings::load(&s).unwrap();
            let shown = st.redacted()["supabase"]["db_url"].clone();
            (
                st.supabase.db_url.map(|u| u.expose_secret().to_owned()),
                shown,
            )
        };
        let (a, b) = (
            "postgres://postgres:pw-a@db.example.co:5432/postgres",
            "postgresql://postgres.ref:pw-b@pooler.example.com:5432/postgres",
        );
        assert_eq!(db_url(&[]), (None, Value::Null));
        assert_eq!(db_url(&[("DATABASE_URL", a)]).0.as_deref(), Some(a));
        let (url, shown) = db_url(&[("DATABASE_URL", a), ("SUPABASE_DB_URL", b)]);
        assert_eq!(url.as_deref(), Some(b));
        assert_eq!(
            shown,
            json!("postgres://postgres.ref@pooler.example.com:5432/postgres")
        );
        // A blank SUPABASE_DB_URL leaves DATABASE_URL in force.
        assert_eq!(
            db_url(&[("DATABASE_URL", a), ("SUPABASE_DB_URL", " ")])
                .0
                .as_deref(),
            Some(a)
        );
        let (_, shown) = db_url(&[("DATABASE_URL", "postgres://u:pw-c@[bad")]);
        assert!(!shown.to_string().contains("pw-c"), "{shown}");
    }

    #[test]
    fn defaults_are_sqlite_without_dual_write() {
        let (_d, s) = sources(&[]);
        let st = Settings::load(&s).unwrap();
        assert_eq!(st.backend, BackendKind::Sqlite);
        assert!(!st.dual_write);
        assert_eq!(st.db_path, PathBuf::from("db.sqlite3"));
        assert_eq!(st.supabase.schema, "public");
        assert_eq!(st.supabase.timeout, Duration::from_secs(10));
    }

    #[test]
    fn supabases_name_for_the_service_key_is_read_and_doxs_wins() {
        for (env, key, source) in [
            (
                &[("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_role")][..],
                "sb_secret_role",
                "SUPABASE_SERVICE_ROLE_KEY",
            ),
            (
                &[
                    ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_role"),
                    ("SUPABASE_SERVICE_KEY", "sb_secret_dox"),
                ][..],
                "sb_secret_dox",
                "SUPABASE_SERVICE_KEY",
            ),
            // DoX's `.env` with its own name left empty: Supabase's is used.
            (
                &[
                    ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_role"),
                    ("SUPABASE_SERVICE_KEY", ""),
                ][..],
                "sb_secret_role",
                "SUPABASE_SERVICE_ROLE_KEY",
            ),
        ] {
            let (_d, s) = sources(env);
            let st = Settings::load(&s).unwrap();
            let got = st.supabase.service_key.as_ref().map(|k| k.expose_secret());
            assert_eq!(got, Some(key), "{env:?}");
            assert_eq!(st.supabase.service_key_source, source, "{env:?}");
        }
    }

    #[test]
    fn dox_variables_are_read() {
        let (_d, s) = sources(&[
            ("DB_BACKEND", " Supabase "),
            ("SUPABASE_DUAL_WRITE", "on"),
            ("SUPABASE_URL", "http://127.0.0.1:54321/"),
            ("SUPABASE_SERVICE_KEY", "sb_secret_xyz"),
            ("SUPABASE_TIMEOUT", "2.5"),
            ("DB_PATH", "/tmp/x.sqlite3"),
        ]);
        let st = Settings::load(&s).unwrap();
        assert_eq!(st.backend, BackendKind::Supabase);
        assert!(st.dual_write);
        assert_eq!(st.supabase.url.as_deref(), Some("http://127.0.0.1:54321"));
        assert_eq!(
            st.rest_config().unwrap().url,
            "http://127.0.0.1:54321/rest/v1"
        );
        assert_eq!(st.supabase.timeout, Duration::from_millis(2500));
        assert_eq!(st.db_path, PathBuf::from("/tmp/x.sqlite3"));
    }

    #[test]
    fn a_dotenv_syntax_error_names_file_and_line_but_not_the_secret() {
        let (d, s) = sources(&[]);
        let secret = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl";
        std::fs::write(
            d.path().join(".env"),
            format!("DB_PATH=x.sqlite3\n# a comment\nSUPABASE_SERVICE_KEY=\"{secret}\nSUPABASE_SCHEMA=public\n"),
        )
        .unwrap();
        let e = Settings::load(&s).unwrap_err().to_string();
        assert!(!e.contains("eyJ"), "the key leaked: {e}");
        assert!(!e.contains("c2VjcmV0"), "the key leaked: {e}");
        assert!(e.contains(".env") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn record_files_are_absolute_and_resolved_from_the_database_directory() {
        let (_d, s) = sources(&[("DB_PATH", "rel/db.sqlite3")]);
        let st = Settings::load(&s).unwrap();
        let log = st.failure_log.unwrap();
        assert!(log.is_absolute(), "{}", log.display());
        assert!(log.ends_with("rel/db.sqlite3.failures.ndjson"));
        assert!(!st.failure_log_configured);
        let (d, mut s) = sources(&[("DB_PATH", "/srv/dox/db.sqlite3")]);
        let f = d.path().join("extra.toml");
        std::fs::write(&f, "[dual]\nfailure_log = \"log/f.ndjson\"\n").unwrap();
        s.config_file = Some(f);
        let st = Settings::load(&s).unwrap();
        assert!(st.failure_log_configured);
        assert_eq!(
            st.failure_log.unwrap(),
            PathBuf::from("/srv/dox/log/f.ndjson")
        );
    }

    #[test]
    fn layers_apply_in_order() {
        let (d, mut s) = sources(&[("DB_PATH", "from-env.sqlite3")]);
        std::fs::write(
            d.path().join(".env"),
            "DB_PATH=from-dotenv.sqlite3\nSUPABASE_SCHEMA=api\n",
        )
        .unwrap();
        std::fs::write(d.path().join(".env.local"), "SUPABASE_SCHEMA=local\n").unwrap();
        let f = d.path().join("extra.toml");
        std::fs::write(&f, "dual_write = true\n[supabase]\nschema = \"file\"\n").unwrap();
        s.config_file = Some(f);
        let st = Settings::load(&s).unwrap();
        assert_eq!(
            st.db_path,
            PathBuf::from("from-env.sqlite3"),
            "process env beats .env"
        );
        assert_eq!(
            st.supabase.schema, "local",
            ".env.local beats .env and files"
        );
        assert!(st.dual_write, "the file beats the defaults");
        s.flags.push(("db_path".into(), json!("from-flag.sqlite3")));
        assert_eq!(
            Settings::load(&s).unwrap().db_path,
            PathBuf::from("from-flag.sqlite3")
        );
    }

    #[test]
    fn unknown_values_are_errors_that_name_the_source() {
        for (env, want) in [
            (("DB_BACKEND", "postgres"), "DB_BACKEND=`postgres`"),
            (
                ("SUPABASE_DUAL_WRITE", "maybe"),
                "SUPABASE_DUAL_WRITE=`maybe`",
            ),
            (("SUPABASE_TIMEOUT", "soon"), "SUPABASE_TIMEOUT=`soon`"),
            (("SUPABASE_URL", "localhost:54321"), "SUPABASE_URL"),
        ] {
            let (_d, s) = sources(&[env]);
            let e = Settings::load(&s).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let (d, mut s) = sources(&[]);
        let f = d.path().join("bad.toml");
        std::fs::write(&f, "db_backnd = \"sqlite\"\n").unwrap();
        s.config_file = Some(f);
        let e = Settings::load(&s).unwrap_err().to_string();
        assert!(e.contains("db_backnd"), "{e}");
        s.config_file = Some(d.path().join("missing.toml"));
        assert!(Settings::load(&s)
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_report() {
        let (_d, s) = sources(&[
            ("SUPABASE_SERVICE_KEY", "sb_secret_TOPSECRET123"),
            ("SUPABASE_JWT_SECRET", "jwt-secret-TOPSECRET456"),
            ("SUPABASE_ANON_KEY", "eyJ.TOPSECRET789.x"),
        ]);
        let st = Settings::load(&s).unwrap();
        for text in [format!("{st:?}"), st.redacted().to_string()] {
            assert!(!text.contains("TOPSECRET"), "{text}");
        }
        assert!(st.redacted()["supabase"]["service_key"]
            .as_str()
            .unwrap()
            .contains("redacted"));
    }

    /// Supabase's project URL is what DoX and every Supabase client set; the
    /// old suffixed form still reaches the same endpoint; `DUALWRITE_REST_URL`
    /// is a bare PostgREST, used as given and winning over the project URL.
    #[test]
    fn supabase_url_is_the_project_url_and_the_suffixed_form_still_works() {
        for (env, endpoint) in [
            (
                vec![("SUPABASE_URL", "https://ab.supabase.co")],
                "https://ab.supabase.co/rest/v1",
            ),
            (
                vec![("SUPABASE_URL", "https://ab.supabase.co/rest/v1/")],
                "https://ab.supabase.co/rest/v1",
            ),
            (
                vec![("SUPABASE_URL", "http://localhost:54321/")],
                "http://localhost:54321/rest/v1",
            ),
            (
                vec![
                    ("SUPABASE_URL", "https://ab.supabase.co"),
                    ("DUALWRITE_REST_URL", "http://127.0.0.1:3000/"),
                ],
                "http://127.0.0.1:3000",
            ),
            (
                vec![("DUALWRITE_REST_URL", "http://127.0.0.1:3000")],
                "http://127.0.0.1:3000",
            ),
        ] {
            let mut env = env.clone();
            env.push(("SUPABASE_SERVICE_KEY", "sb_secret_x"));
            let (_d, s) = sources(&env);
            let st = Settings::load(&s).unwrap();
            assert_eq!(st.rest_config().unwrap().url, endpoint, "{env:?}");
            assert_eq!(st.redacted()["supabase"]["rest_endpoint"], endpoint);
        }
        let (_d, s) = sources(&[("DUALWRITE_REST_URL", "localhost:3000")]);
        let e = Settings::load(&s).unwrap_err().to_string();
        assert!(e.contains("DUALWRITE_REST_URL"), "{e}");
    }

    #[test]
    fn missing_url_or_key_is_named() {
        let (_d, s) = sources(&[]);
        let st = Settings::load(&s).unwrap();
        assert!(st
            .rest_config()
            .unwrap_err()
            .to_string()
            .contains("SUPABASE_URL"));
        let (_d, s) = sources(&[("SUPABASE_URL", "http://x")]);
        let st = Settings::load(&s).unwrap();
        assert!(st
            .rest_config()
            .unwrap_err()
            .to_string()
            .contains("SUPABASE_SERVICE_KEY"));
    }
}

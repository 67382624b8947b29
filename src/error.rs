//! The library's one error type.
//!
//! Variants are named by cause. [`Error::is_transient`] is the single place that
//! decides whether an operation may be retried; adapters never loop on their own.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What every command says when a change it asked to confirm was not confirmed.
pub const NOT_CONFIRMED: &str =
    "nothing was changed: not confirmed (no terminal to ask on and no --yes, or declined)";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Settings that cannot work: an unknown backend, a malformed URL, a missing key.
    #[error("configuration: {0}")]
    Config(String),

    /// A caller handed us something we cannot store: an unknown method, malformed
    /// JSON, a missing required field, an unknown field.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A value SQLite holds that the Supabase schema cannot represent faithfully
    /// (a blob in a text column, a NUL character, an unparseable timestamp ...).
    #[error("{table} row {key}: column {column} cannot be stored in Supabase: {reason}")]
    Unrepresentable {
        table: &'static str,
        key: String,
        column: &'static str,
        reason: String,
    },

    #[error("sqlite: {0}")]
    Sqlite(String),

    /// Another connection held the SQLite file's lock for longer than the
    /// busy timeout (`SQLITE_BUSY`, `SQLITE_LOCKED`): transient, the same
    /// statement succeeds once the lock is released.
    #[error("sqlite: {0} (another connection held the file's lock past the busy timeout)")]
    Busy(String),

    /// A worker thread that owns a resource (the SQLite connection) is gone:
    /// it panicked or was shut down. Not transient: the handle cannot recover.
    #[error("the {worker} thread stopped {when}")]
    WorkerStopped {
        worker: &'static str,
        /// `while opening`, `before the call`, `during a call`.
        when: &'static str,
    },

    /// PostgREST (or the gateway in front of it) answered with an error status.
    #[error("{}", describe_rest(*status, code.as_deref(), message, details.as_deref(), hint.as_deref()))]
    Rest {
        status: u16,
        /// PostgreSQL SQLSTATE or `PGRSTxxx`; `None` for gateway errors, which carry no code.
        code: Option<String>,
        message: String,
        details: Option<String>,
        hint: Option<String>,
        /// `Retry-After`, when the server sent one (429, 503).
        retry_after: Option<Duration>,
    },

    /// PostgreSQL refused a statement sent over the database connection string
    /// (`backfill --via postgres`); classified by its SQLSTATE like [`Error::Rest`].
    #[error("postgres ({code}): {message}")]
    Postgres { code: String, message: String },

    /// The request never got an HTTP answer: connection refused, reset, DNS.
    #[error("supabase unreachable at {url}: {reason}")]
    Unreachable { url: String, reason: String },

    /// No answer within the configured time.
    #[error("supabase did not answer within {0:?} (is it overloaded or paused? SUPABASE_TIMEOUT sets the limit)")]
    Timeout(Duration),

    /// A transient failure that kept failing for as long as the caller's
    /// retry budget allowed; `last` is the last attempt's error, `hint` what
    /// happens to the work now (a backfill resumes from its checkpoint, the
    /// daemon's changes stay in the change log).
    #[error("still failing after retrying for {after:?}: {last}; {hint}")]
    GaveUp {
        after: Duration,
        last: Box<Error>,
        hint: &'static str,
    },

    /// An answer we did not expect (a row count that does not match, a body that is not JSON).
    #[error("unexpected response from supabase: {0}")]
    Protocol(String),

    /// A file or directory could not be opened, created, read, written or
    /// renamed. `path` names it where there is one (see [`IoContext::at`]), so
    /// the message says what to check. Not transient.
    #[error("{}", describe_io(source, path.as_deref()))]
    Io {
        source: std::io::Error,
        path: Option<PathBuf>,
    },
}

fn describe_io(source: &std::io::Error, path: Option<&Path>) -> String {
    match path {
        Some(p) => format!("{}: {source}", p.display()),
        None => source.to_string(),
    }
}

/// An I/O error that concerns no one file (a worker that stopped, a pipe).
/// Where there is a file, name it with [`IoContext::at`] / [`Error::io_at`].
impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io { source, path: None }
    }
}

/// Names the file an I/O operation concerned in its error:
/// `std::fs::read(&path).at(&path)?` fails with "PATH: No such file or directory".
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, std::io::Error> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io_at(e, path))
    }
}

fn describe_rest(
    status: u16,
    code: Option<&str>,
    message: &str,
    details: Option<&str>,
    hint: Option<&str>,
) -> String {
    let mut s = format!("supabase answered HTTP {status}");
    if let Some(code) = code {
        s.push_str(&format!(" ({code})"));
    }
    s.push_str(": ");
    s.push_str(message);
    if let Some(d) = details {
        s.push_str(&format!("; details: {d}"));
    }
    if let Some(h) = hint {
        s.push_str(&format!("; hint: {h}"));
    }
    match (status, code) {
        (401, _) | (403, Some("42501")) => s.push_str(" [check the API key and the table grants]"),
        (404, None) => s.push_str(" [is the table created and the schema cache reloaded?]"),
        _ => {}
    }
    s
}

impl Error {
    /// Whether trying the same operation again later may succeed.
    ///
    /// Network failures, timeouts, 429, 502/503/504 and the PostgreSQL errors that
    /// come from load (statement timeout, deadlock, serialization, lock timeout) are
    /// transient, and so is a SQLite file locked past the busy timeout. Data
    /// errors (4xx), auth errors and configuration errors are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Timeout(_) | Error::Busy(_) => true,
            Error::Rest { status, code, .. } => match status {
                429 | 502 | 503 | 504 => true,
                500 => matches!(
                    code.as_deref(),
                    Some("57014" | "40P01" | "40001" | "55P03" | "53300" | "57P01" | "57P03")
                        | None
                ),
                _ => false,
            },
            Error::Postgres { code, .. } => {
                code.starts_with("08")
                    || code.starts_with("53")
                    || matches!(
                        code.as_str(),
                        "57014" | "40P01" | "40001" | "55P03" | "57P01" | "57P03"
                    )
            }
            Error::GaveUp { last, .. } => last.is_transient(),
            _ => false,
        }
    }

    /// The error behind a [`Error::GaveUp`] (itself otherwise).
    pub fn cause(&self) -> &Error {
        match self {
            Error::GaveUp { last, .. } => last.cause(),
            e => e,
        }
    }

    /// Whether the request was too large or too slow, so a smaller batch may pass.
    pub fn wants_smaller_batch(&self) -> bool {
        match self {
            Error::Rest { status, code, .. } => {
                *status == 413 || code.as_deref() == Some("57014") || *status >= 500
            }
            Error::Timeout(_) => true,
            Error::Postgres { code, .. } => code == "57014" || code.starts_with("53"),
            _ => false,
        }
    }

    /// Whether the failed request should be split before it is sent again:
    /// too large, or too slow for the server's statement timeout. A client
    /// timeout may be either a batch too slow or a server that does not
    /// answer; the landing halves a batch after one only a bounded number of
    /// times, counting each (`backfill/landing.rs`, `TIMEOUT_SPLITS`).
    pub fn must_split(&self) -> bool {
        match self {
            Error::Rest { status, code, .. } => *status == 413 || code.as_deref() == Some("57014"),
            Error::Postgres { code, .. } => code == "57014",
            _ => false,
        }
    }

    /// A refusal caused by the rows sent (a bad value, a constraint, a row too
    /// large), as opposed to one of the request as a whole (auth, a missing
    /// table or column), which no subset of the rows would get past.
    pub fn is_data_error(&self) -> bool {
        match self {
            Error::Rest { status, code, .. } if matches!(status, 400 | 409 | 413 | 422) => {
                match code.as_deref() {
                    Some(c) => {
                        c.starts_with("22")
                            || c.starts_with("23")
                            || c.starts_with("54")
                            || matches!(c, "21000" | "P0001" | "PGRST102")
                    }
                    None => *status == 413,
                }
            }
            Error::Postgres { code, .. } => {
                code.starts_with("22")
                    || code.starts_with("23")
                    || code.starts_with("54")
                    || matches!(code.as_str(), "21000" | "P0001")
            }
            Error::Unrepresentable { .. } => true,
            _ => false,
        }
    }

    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Rest { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The PostgREST / PostgreSQL error code, when there is one.
    pub fn code(&self) -> Option<&str> {
        match self.cause() {
            Error::Rest { code, .. } => code.as_deref(),
            Error::Postgres { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The message without the "supabase unreachable at URL" prefix, for a caller
    /// that wraps this error in another that names the URL already.
    pub fn detail(&self) -> String {
        match self {
            Error::Unreachable { reason, .. } => reason.clone(),
            e => e.to_string(),
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }

    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }

    /// An I/O error about the file or directory at `path`.
    pub fn io_at(source: std::io::Error, path: impl AsRef<Path>) -> Self {
        Error::Io {
            source,
            path: Some(path.as_ref().to_path_buf()),
        }
    }
}

/// An error and its causes as one line, each cause once.
///
/// Many errors (hyper's, `anyhow`'s context, a `thiserror` variant that prints
/// its source) already include their source's text in their own message; a naive
/// walk down `source()` then prints the same cause two to four times. A level is
/// added only when its text is not already part of the line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        src = s.source();
    }
    line
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                Error::Busy(e.to_string())
            }
            _ => Error::Sqlite(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest(status: u16, code: Option<&str>) -> Error {
        Error::Rest {
            status,
            code: code.map(str::to_owned),
            message: "m".into(),
            details: None,
            hint: None,
            retry_after: None,
        }
    }

    #[test]
    fn transient_classification_follows_status_and_code() {
        assert!(rest(503, Some("PGRST001")).is_transient());
        assert!(rest(504, Some("PGRST003")).is_transient());
        assert!(rest(500, Some("57014")).is_transient());
        assert!(rest(500, Some("40P01")).is_transient());
        assert!(rest(429, None).is_transient());
        assert!(!rest(400, Some("22P02")).is_transient());
        assert!(!rest(409, Some("23505")).is_transient());
        assert!(!rest(401, Some("PGRST301")).is_transient());
        assert!(!rest(413, Some("54000")).is_transient());
        assert!(!rest(500, Some("P0001")).is_transient());
        assert!(Error::Timeout(Duration::from_secs(1)).is_transient());
        assert!(Error::Unreachable {
            url: "u".into(),
            reason: "r".into()
        }
        .is_transient());
        assert!(!Error::invalid("x").is_transient());
    }

    #[test]
    fn data_errors_are_told_from_request_errors() {
        assert!(rest(400, Some("22P02")).is_data_error());
        assert!(rest(409, Some("23503")).is_data_error());
        assert!(rest(400, Some("23514")).is_data_error());
        assert!(rest(413, None).is_data_error());
        assert!(!rest(401, Some("PGRST301")).is_data_error());
        assert!(!rest(403, Some("42501")).is_data_error());
        assert!(!rest(404, None).is_data_error());
        assert!(!rest(400, Some("PGRST204")).is_data_error());
    }

    #[test]
    fn smaller_batch_on_size_and_timeouts() {
        assert!(rest(413, None).wants_smaller_batch());
        assert!(rest(500, Some("57014")).wants_smaller_batch());
        assert!(!rest(400, Some("23502")).wants_smaller_batch());
    }

    #[test]
    fn a_chain_prints_each_cause_once() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        // The shape of a refused connection in reqwest/hyper: the middle level
        // already prints its sources.
        let refused = E("Connection refused (os error 111)", None);
        let tcp = E(
            "tcp connect error: Connection refused (os error 111)",
            Some(Box::new(refused)),
        );
        let hyper = E(
            "error trying to connect: tcp connect error: Connection refused (os error 111)",
            Some(Box::new(tcp)),
        );
        let top = E("error sending request", Some(Box::new(hyper)));
        let line = chain(&top);
        assert_eq!(
            line,
            "error sending request: error trying to connect: tcp connect error: \
             Connection refused (os error 111)"
        );
        assert_eq!(line.matches("Connection refused").count(), 1);
    }

    #[test]
    fn an_io_error_names_its_file_and_is_not_transient() {
        let missing = Path::new("/nonexistent/dualwrite-test/rejects.ndjson");
        let e = std::fs::read(missing).at(missing).unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("/nonexistent/dualwrite-test/rejects.ndjson: "),
            "{s}"
        );
        assert!(matches!(&e, Error::Io { path: Some(p), .. } if p == missing));
        assert!(!e.is_transient());
        // Without a file, the message is the I/O error's own.
        let e = Error::from(std::io::Error::other("a pipe broke"));
        assert_eq!(e.to_string(), "a pipe broke");
        assert!(!e.is_transient());
    }

    #[test]
    fn messages_name_status_code_and_hint() {
        let e = Error::Rest {
            status: 400,
            code: Some("PGRST204".into()),
            message: "Could not find the 'x' column".into(),
            details: None,
            hint: Some("reload".into()),
            retry_after: None,
        };
        let s = e.to_string();
        assert!(s.contains("HTTP 400") && s.contains("PGRST204") && s.contains("hint: reload"));
    }
}

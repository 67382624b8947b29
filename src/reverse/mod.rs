//! The reverse direction: Supabase is the primary and the SQLite file is kept
//! current as the rollback copy. The same engine as `capture` + `serve`, the
//! sides swapped.
//!
//! [`capture`]: the change log on Supabase (triggers, switched through rpc);
//! [`serve`]: the daemon that drains it into the SQLite file ([`apply`]).

pub mod apply;
pub mod capture;
pub mod rollback;
pub mod serve;

use crate::config::{BackendKind, Settings};
use crate::error::{Error, Result};

/// Which way `dualwrite serve` (and `status`) work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The captured SQLite file to Supabase (SQLite primary).
    Forward,
    /// The Supabase change log to the SQLite file (Supabase primary).
    Reverse,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }
}

/// The direction `serve` and `status` work in, and a warning to log.
///
/// Without `--direction` (`explicit`), the configuration decides:
/// `DB_BACKEND=sqlite` is forward; `DB_BACKEND=supabase` with dual write on
/// (`SUPABASE_DUAL_WRITE`: the SQLite file kept as the copy) is reverse;
/// `DB_BACKEND=supabase` without dual write is an error (no copy is
/// configured, and forward would send the file's rows over the primary's).
/// An explicit `--direction` always wins: the runbook starts the reverse
/// mirror before the app's configuration is switched. When it contradicts
/// the configuration, the warning says so.
pub fn direction(explicit: Option<&str>, s: &Settings) -> Result<(Direction, Option<String>)> {
    let configured = match (s.backend, s.dual_write) {
        (BackendKind::Sqlite, _) => Some(Direction::Forward),
        (BackendKind::Supabase, true) => Some(Direction::Reverse),
        (BackendKind::Supabase, false) => None,
    };
    let explicit = match explicit {
        None => None,
        Some("forward") => Some(Direction::Forward),
        Some("reverse") => Some(Direction::Reverse),
        Some(other) => {
            return Err(Error::invalid(format!(
                "--direction {other}: use forward or reverse"
            )))
        }
    };
    match (explicit, configured) {
        (Some(d), Some(c)) if d == c => Ok((d, None)),
        (Some(d), c) => Ok((
            d,
            Some(format!(
                "--direction {} overrides the configuration (DB_BACKEND={}, dual write {}{})",
                d.as_str(),
                s.configured_backend.trim(),
                if s.dual_write { "on" } else { "off" },
                match c {
                    Some(c) => format!(": direction {}", c.as_str()),
                    None => String::new(),
                }
            )),
        )),
        (None, Some(c)) => Ok((c, None)),
        (None, None) => Err(Error::config(
            "DB_BACKEND=supabase without dual write: no SQLite copy is configured to keep current. \
             Set SUPABASE_DUAL_WRITE=true (Supabase primary, the file kept as the rollback copy: \
             `serve` runs the reverse direction), or pass --direction reverse",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;

    fn settings(backend: &str, dual: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        let env = [
            ("DB_BACKEND", backend),
            ("SUPABASE_DUAL_WRITE", dual),
            ("DB_PATH", "dox.sqlite3"),
            ("SUPABASE_URL", "http://127.0.0.1:1"),
            ("SUPABASE_SERVICE_KEY", "sb_secret_x"),
        ];
        Settings::load(&Sources {
            dir: dir.path().to_path_buf(),
            config_file: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags: vec![],
        })
        .unwrap()
    }

    #[test]
    fn the_configuration_decides_and_an_explicit_direction_wins_with_a_warning() {
        use Direction::*;
        let cases = [
            ("sqlite", "false", None, Forward, false),
            ("sqlite", "true", None, Forward, false),
            ("supabase", "true", None, Reverse, false),
            ("supabase", "true", Some("reverse"), Reverse, false),
            ("sqlite", "false", Some("forward"), Forward, false),
            ("sqlite", "true", Some("reverse"), Reverse, true),
            ("supabase", "true", Some("forward"), Forward, true),
            ("supabase", "false", Some("reverse"), Reverse, true),
        ];
        for (b, d, flag, want, warns) in cases {
            let (got, warning) = direction(flag, &settings(b, d)).unwrap();
            assert_eq!((got, warning.is_some()), (want, warns), "{b} {d} {flag:?}");
            if let Some(w) = warning {
                assert!(w.contains("overrides the configuration"), "{w}");
            }
        }
        let e = direction(None, &settings("supabase", "false")).unwrap_err();
        assert!(e.to_string().contains("SUPABASE_DUAL_WRITE=true"), "{e}");
        let e = direction(Some("sideways"), &settings("sqlite", "false")).unwrap_err();
        assert!(e.to_string().contains("forward or reverse"), "{e}");
    }
}

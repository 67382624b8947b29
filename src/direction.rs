//! Which way data flows: forward (the SQLite file is the primary, Supabase
//! the copy) or reverse (after cutover: Supabase the primary, the file the
//! rollback copy). One type for the daemon, `status`, `verify` and the repair.

use serde::Serialize;

use crate::config::{BackendKind, Settings};
use crate::cutover::Primary;
use crate::error::{Error, Result};

/// Which side is the source of truth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// SQLite is the source, Supabase the target (before cutover).
    #[default]
    Forward,
    /// Supabase is the source, the SQLite file the target: after cutover,
    /// with `serve --direction reverse` keeping the file as the rollback copy.
    Reverse,
}

impl Direction {
    /// The source's name, as reports show it.
    pub fn source(self) -> &'static str {
        match self {
            Direction::Forward => "SQLite",
            Direction::Reverse => "Supabase",
        }
    }

    /// The target's name, as reports show it.
    pub fn target(self) -> &'static str {
        match self {
            Direction::Forward => "Supabase",
            Direction::Reverse => "SQLite",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }
}

impl std::str::FromStr for Direction {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "forward" => Ok(Direction::Forward),
            "reverse" => Ok(Direction::Reverse),
            other => Err(Error::invalid(format!(
                "unknown direction `{other}`: forward (SQLite is the source) or reverse (Supabase is the source)"
            ))),
        }
    }
}

impl Direction {
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
    pub fn resolve(explicit: Option<&str>, s: &Settings) -> Result<(Direction, Option<String>)> {
        let configured = match (s.backend, s.dual_write) {
            (BackendKind::Sqlite, _) => Some(Direction::Forward),
            (BackendKind::Supabase, true) => Some(Direction::Reverse),
            (BackendKind::Supabase, false) => None,
        };
        let explicit = explicit.map(str::parse::<Direction>).transpose()?;
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
}

impl Direction {
    /// The direction `serve` and `status` work in without `--direction`, and
    /// a note to log. The file's recorded primary (`recorded`, see
    /// [`crate::cutover::marker`]) wins over the configuration: it is what a
    /// cutover changes, while `DB_BACKEND` is the app's and may lag behind.
    /// A file that records none goes by the configuration ([`Direction::resolve`]).
    pub fn follow(recorded: Option<Primary>, s: &Settings) -> Result<(Direction, Option<String>)> {
        let Some(p) = recorded else {
            return Direction::resolve(None, s);
        };
        let d = p.direction();
        let note = match Direction::resolve(None, s) {
            Ok((c, _)) if c == d => None,
            _ => Some(format!(
                "the file records {} as the primary: direction {}, whatever DB_BACKEND={} (dual write {}) says",
                p.as_str(),
                d.as_str(),
                s.configured_backend.trim(),
                if s.dual_write { "on" } else { "off" },
            )),
        };
        Ok((d, note))
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
            let (got, warning) = Direction::resolve(flag, &settings(b, d)).unwrap();
            assert_eq!((got, warning.is_some()), (want, warns), "{b} {d} {flag:?}");
            if let Some(w) = warning {
                assert!(w.contains("overrides the configuration"), "{w}");
            }
        }
        let e = Direction::resolve(None, &settings("supabase", "false")).unwrap_err();
        assert!(e.to_string().contains("SUPABASE_DUAL_WRITE=true"), "{e}");
        let e = Direction::resolve(Some("sideways"), &settings("sqlite", "false")).unwrap_err();
        assert!(e.to_string().contains("unknown direction"), "{e}");
    }

    #[test]
    fn a_recorded_primary_wins_over_the_configuration() {
        use Direction::*;
        let cases = [
            (None, "sqlite", "false", Forward, false),
            (None, "supabase", "true", Reverse, false),
            (Some(Primary::Supabase), "sqlite", "false", Reverse, true),
            (Some(Primary::Supabase), "supabase", "true", Reverse, false),
            // No copy configured: the marker still says which way.
            (Some(Primary::Supabase), "supabase", "false", Reverse, true),
            (Some(Primary::Sqlite), "supabase", "true", Forward, true),
            (Some(Primary::Sqlite), "sqlite", "true", Forward, false),
        ];
        for (recorded, b, d, want, notes) in cases {
            let (got, note) = Direction::follow(recorded, &settings(b, d)).unwrap();
            assert_eq!((got, note.is_some()), (want, notes), "{recorded:?} {b} {d}");
        }
        let e = Direction::follow(None, &settings("supabase", "false")).unwrap_err();
        assert!(e.to_string().contains("SUPABASE_DUAL_WRITE=true"), "{e}");
    }
}

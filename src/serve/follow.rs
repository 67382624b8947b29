//! Which way the daemon drains, read from the file's recorded primary
//! ([`crate::cutover::marker`]) on its poll, never per row.
//!
//! * With a primary recorded, it decides: forward while the file is the
//!   primary, reverse once Supabase is. Without one (a file never cut over),
//!   the configuration does ([`Direction::resolve`]). `--direction` given
//!   fixes the direction: while the recorded primary contradicts it, the
//!   daemon does not drain (and says why) rather than push rows the wrong way.
//! * While a cutover (or rollback) of another process is in progress
//!   (`switching`), the daemon stands down: its batches out finish, it lets
//!   the file's lease go (`cutover run` takes it), and waits. When `switching`
//!   clears it takes the lease back and drains the way the marker now says.
//! * A `switching` whose process is gone (for [`ABANDONED_AFTER`]) is an
//!   interrupted cutover: the daemon says so loudly and goes on standing
//!   down. It never clears the marker itself: running `dualwrite cutover run`
//!   or `rollback` again finishes or undoes the switch from its journal.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::capture;
use crate::cutover::marker::{self, Marker, MarkerWatch, Switching};
use crate::direction::Direction;
use crate::error::Result;

/// How long a `switching` process may look gone before the daemon calls the
/// cutover interrupted (a read of the marker may predate its last commit).
pub(super) const ABANDONED_AFTER: Duration = Duration::from_secs(5);

/// What the daemon does while the marker stays as it is.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Decision {
    Drain(Direction),
    StandDown(Hold),
}

/// Not draining, and why. A daemon standing down holds no lease (a cutover
/// takes it; a daemon that may not drain has no claim on it).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Hold {
    /// What `/ready`, `/status` and the status file say.
    pub why: String,
    /// The change log `pending` and the lag are read from meanwhile: the
    /// recorded primary's, where the changes not yet copied wait.
    pub backlog: Direction,
    /// Said as an error: the cutover's process is gone.
    pub loud: bool,
}

/// The direction given (`--direction`), or none (follow the marker); and
/// the configuration's, for a file that records no primary.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rule {
    pub fixed: Option<Direction>,
    pub unrecorded: Direction,
}

impl Rule {
    /// What to do under `recorded` (`None`: no marker in the file), for the
    /// process `me`; `abandoned`: the `switching` process has been gone for
    /// [`ABANDONED_AFTER`].
    pub(super) fn decide(&self, recorded: Option<&Marker>, me: u32, abandoned: bool) -> Decision {
        let Some(m) = recorded else {
            return Decision::Drain(self.fixed.unwrap_or(self.unrecorded));
        };
        let wanted = m.primary.direction();
        if let Some(s) = m.switching.as_ref().filter(|s| s.pid != me) {
            return Decision::StandDown(Hold {
                why: cutover_why(s, abandoned),
                backlog: wanted,
                loud: abandoned,
            });
        }
        match self.fixed {
            Some(d) if d != wanted => Decision::StandDown(Hold {
                why: format!(
                    "--direction {} contradicts the recorded primary ({}{}): the daemon does not drain; \
                     run serve without --direction (it follows the recorded primary) or with --direction {}",
                    d.as_str(),
                    m.primary.as_str(),
                    m.changed_at
                        .map_or_else(String::new, |t| format!(" since {}", marker::utc(t))),
                    wanted.as_str()
                ),
                backlog: wanted,
                loud: false,
            }),
            _ => Decision::Drain(wanted),
        }
    }
}

/// What `/ready` says during a cutover.
pub(super) fn cutover_why(s: &Switching, abandoned: bool) -> String {
    let what = format!(
        "cutover in progress (pid {}, since {}, making {} the primary)",
        s.pid,
        marker::utc(s.since),
        s.to.as_str()
    );
    if abandoned {
        format!(
            "{what}, but pid {} is gone: the cutover was interrupted. The daemon stands down until \
             `dualwrite cutover run` or `dualwrite cutover rollback` is run again (either finishes \
             or undoes the switch)",
            s.pid
        )
    } else {
        format!("{what}: the daemon stands down and lets it drain")
    }
}

/// Whether process `pid` exists (`kill(pid, 0)`; a process of another user
/// exists too). Unknown (pid 0, or not Linux) counts as alive: the daemon
/// never calls a cutover interrupted without seeing it.
fn pid_alive(pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Some(p) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return true;
        };
        !matches!(
            rustix::process::test_kill_process(p),
            Err(rustix::io::Errno::SRCH)
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        true
    }
}

/// Tells an interrupted cutover: the `switching` process gone, and nobody
/// holding the file's lease (a `cutover run` in another PID namespace is not
/// seen by `kill`, but its lease is), for [`ABANDONED_AFTER`].
#[derive(Debug, Default)]
pub(super) struct Liveness {
    /// The switching seen (pid, since's bits), and since when it looks gone.
    seen: Option<(u32, u64, Option<Instant>)>,
}

impl Liveness {
    /// `holding`: this daemon holds the lease (so it cannot tell another's).
    pub(super) fn abandoned(&mut self, m: Option<&Marker>, db: &Path, holding: bool) -> bool {
        let Some(s) = m.and_then(|m| m.switching.as_ref()) else {
            self.seen = None;
            return false;
        };
        let id = (s.pid, s.since.to_bits());
        let gone_since = match self.seen {
            Some((pid, since, gone)) if (pid, since) == id => gone,
            _ => None,
        };
        let alive = pid_alive(s.pid) || (!holding && capture::Lease::held_on(db));
        let gone_since = if alive {
            None
        } else {
            Some(gone_since.unwrap_or_else(Instant::now))
        };
        self.seen = Some((id.0, id.1, gone_since));
        gone_since.is_some_and(|t| t.elapsed() >= ABANDONED_AFTER)
    }
}

/// The marker, read through a read-only connection of the daemon's own:
/// `PRAGMA data_version` first, the marker only after another connection
/// committed ([`MarkerWatch`]).
#[derive(Clone)]
pub(super) struct MarkerReader {
    inner: Arc<Mutex<(rusqlite::Connection, MarkerWatch)>>,
}

impl MarkerReader {
    pub(super) async fn open(db: &Path) -> Result<MarkerReader> {
        let path = db.to_path_buf();
        let inner = crate::sync::blocking("SQLite", move || {
            let c = capture::open_ro(&path)?;
            let w = MarkerWatch::new(&c)?;
            Ok((c, w))
        })
        .await?;
        Ok(MarkerReader {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// The marker now, `None` when the file records none.
    pub(super) async fn read(&self) -> Result<Option<Marker>> {
        let inner = Arc::clone(&self.inner);
        crate::sync::blocking("SQLite", move || {
            let mut g = crate::sync::lock(&inner);
            let (c, w) = &mut *g;
            Ok(w.current_recorded(c)?.cloned())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cutover::marker::Primary;
    use Direction::*;

    fn marker(primary: Primary, switching: Option<u32>) -> Marker {
        Marker {
            primary,
            switching: switching.map(|pid| Switching {
                to: primary.other(),
                pid,
                since: 1_700_000_000.0,
            }),
            changed_at: Some(1_600_000_000.0),
        }
    }

    #[test]
    fn the_marker_decides_over_the_configuration_and_a_given_direction_never_drains_against_it() {
        let follow = Rule {
            fixed: None,
            unrecorded: Reverse,
        };
        // No marker: the configuration.
        assert_eq!(follow.decide(None, 1, false), Decision::Drain(Reverse));
        // A marker: it wins over the configuration.
        let m = marker(Primary::Sqlite, None);
        assert_eq!(follow.decide(Some(&m), 1, false), Decision::Drain(Forward));
        let m = marker(Primary::Supabase, None);
        assert_eq!(follow.decide(Some(&m), 1, false), Decision::Drain(Reverse));

        let given = Rule {
            fixed: Some(Forward),
            unrecorded: Reverse,
        };
        assert_eq!(given.decide(None, 1, false), Decision::Drain(Forward));
        let Decision::StandDown(h) = given.decide(Some(&m), 1, false) else {
            panic!("drains against the recorded primary")
        };
        assert!(
            h.why
                .contains("--direction forward contradicts the recorded primary (supabase")
                && h.backlog == Reverse,
            "{h:?}"
        );
        let m = marker(Primary::Sqlite, None);
        assert_eq!(given.decide(Some(&m), 1, false), Decision::Drain(Forward));
    }

    #[test]
    fn a_cutover_of_another_process_stands_the_daemon_down_and_frees_the_lease() {
        for rule in [
            Rule {
                fixed: None,
                unrecorded: Forward,
            },
            Rule {
                fixed: Some(Forward),
                unrecorded: Forward,
            },
        ] {
            let m = marker(Primary::Sqlite, Some(42));
            let Decision::StandDown(h) = rule.decide(Some(&m), 1, false) else {
                panic!("drains during a cutover")
            };
            assert!(
                h.why
                    .starts_with("cutover in progress (pid 42, since 2023-11-14 22:13:20 UTC")
                    && !h.loud
                    && h.backlog == Forward,
                "{h:?}"
            );
            let Decision::StandDown(h) = rule.decide(Some(&m), 1, true) else {
                panic!("drains after an interrupted cutover")
            };
            assert!(
                h.why.contains("pid 42 is gone")
                    && h.why.contains("dualwrite cutover run")
                    && h.why.contains("dualwrite cutover rollback")
                    && h.loud,
                "{h:?}"
            );
            // Its own cutover does not stop a process.
            assert_eq!(rule.decide(Some(&m), 42, false), Decision::Drain(Forward));
        }
    }

    #[test]
    fn a_cutover_is_called_interrupted_only_once_its_process_is_gone_past_the_grace() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("x.sqlite3");
        let mut l = Liveness::default();
        // A live process (this one).
        let alive = marker(Primary::Sqlite, Some(std::process::id()));
        assert!(!l.abandoned(Some(&alive), &db, false));
        // A gone one: a child that exited and was reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let gone = marker(Primary::Sqlite, Some(pid));
        assert!(!pid_alive(pid));
        assert!(!l.abandoned(Some(&gone), &db, false), "no grace");
        let backdate = |l: &mut Liveness| {
            if let Some((_, _, Some(t))) = &mut l.seen {
                *t -= ABANDONED_AFTER;
            }
        };
        backdate(&mut l);
        assert!(l.abandoned(Some(&gone), &db, false));
        // Its lease held (a `cutover run` in another PID namespace): alive.
        let lease = capture::Lease::take(&db).unwrap();
        assert!(!l.abandoned(Some(&gone), &db, false));
        // ... unless the lease is this daemon's own.
        assert!(
            !l.abandoned(Some(&gone), &db, true),
            "the grace starts again"
        );
        backdate(&mut l);
        assert!(l.abandoned(Some(&gone), &db, true));
        drop(lease);
        // Cleared: forgotten.
        assert!(!l.abandoned(Some(&marker(Primary::Supabase, None)), &db, false));
        assert!(l.seen.is_none());
    }
}

//! `dualwrite status`: the change log's backlog read now, capture, whether a
//! daemon holds the file and what it last reported, and one verdict a
//! healthcheck can gate on ([`Status::healthy`]).

use std::path::Path;

use serde::Serialize;

use super::reverse::epoch_of;
use super::stats::{read_status_file, StatusFile};
use crate::capture;
use crate::cutover::marker::{self, Marker};
use crate::direction::Direction;
use crate::error::Result;
use crate::rest::RestClient;
use crate::reverse::capture as rc;

/// A daemon writes its report every second: one older than this comes from
/// a daemon that does not run its reporter (paused, hung) or no longer runs.
const STALE_SECS: f64 = 5.0;

/// The lag bound when no daemon has said which it uses (`serve`'s default).
const DEFAULT_MAX_LAG: f64 = 60.0;

/// What `dualwrite status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub direction: &'static str,
    pub db_path: String,
    /// Capture on the source (the file forward, Supabase reverse).
    pub capture: serde_json::Value,
    /// Capture is on, with every trigger in place.
    pub capture_complete: bool,
    /// Read from the change log now.
    pub pending: u64,
    /// `pending` is an estimate (a large Supabase log is not counted).
    pub pending_estimated: bool,
    /// The age of the oldest pending change, read from the change log now.
    pub lag_seconds: f64,
    /// A daemon holds the file's lease right now.
    pub daemon_running: bool,
    /// Running, ready, within its lag bound, capture complete: what a
    /// healthcheck gates on (`dualwrite status` exits 0 only then).
    pub healthy: bool,
    /// Why not, when not.
    pub problems: Vec<String>,
    pub last_error: Option<String>,
    pub last_success: Option<f64>,
    /// Dead letters recorded so far (lines of `rejects_file`).
    pub rejected_rows_recorded: u64,
    pub rejects_file: String,
    /// The daemon's last report (the status file beside the file).
    pub daemon: Option<StatusFile>,
    /// The file's recorded primary and any cutover in progress (`None`: the
    /// file records none, it was never cut over).
    pub recorded_primary: Option<Marker>,
}

/// The forward direction's status: the file's change log.
pub fn status(db: &Path, rejects: &Path) -> Result<Status> {
    let capture = capture::status(db)?;
    let recorded = marker::recorded_in(db)?;
    let oldest = capture::now_secs() - capture.lag_seconds;
    Ok(assemble(
        Direction::Forward,
        db,
        recorded,
        rejects,
        serde_json::to_value(&capture).expect("capture status serialises"),
        capture.installed,
        capture.pending,
        false,
        (capture.pending > 0).then_some(oldest),
    ))
}

/// The reverse direction's status: Supabase's change log, through the service key.
pub async fn status_reverse(rest: &RestClient, db: &Path, rejects: &Path) -> Result<Status> {
    let capture = rc::state(rest).await?;
    let (db, rejects) = (db.to_path_buf(), rejects.to_path_buf());
    crate::sync::blocking("status", move || {
        let recorded = if db.exists() {
            marker::recorded_in(&db)?
        } else {
            None
        };
        Ok(assemble(
            Direction::Reverse,
            &db,
            recorded,
            &rejects,
            serde_json::to_value(&capture).expect("capture state serialises"),
            capture.installed(),
            capture.pending,
            capture.estimated,
            capture.oldest_at.as_deref().and_then(epoch_of),
        ))
    })
    .await
}

#[allow(clippy::too_many_arguments)] // the figures of either direction, each named at the call
fn assemble(
    direction: Direction,
    db: &Path,
    recorded: Option<Marker>,
    rejects: &Path,
    capture: serde_json::Value,
    capture_complete: bool,
    pending: u64,
    pending_estimated: bool,
    oldest_at: Option<f64>,
) -> Status {
    let now = capture::now_secs();
    let lag_seconds = oldest_at.map_or(0.0, |at| (now - at).max(0.0));
    let report = read_status_file(db);
    let fresh = |d: &StatusFile| now - d.updated_at <= STALE_SECS;
    let daemon = report.clone().filter(|d| d.direction == direction.as_str());
    // Probed without taking the lease: a running daemon is never disturbed.
    let daemon_running = capture::Lease::held_on(db);
    let mut problems = Vec::new();
    if let Some(m) = &recorded {
        if m.primary.direction() != direction {
            problems.push(format!(
                "the recorded primary is {}: {} is not the direction to drain (the {} one is; \
                 run `dualwrite status` and `dualwrite serve` without --direction to follow it)",
                m.primary.as_str(),
                direction.as_str(),
                m.primary.direction().as_str()
            ));
        }
    }
    // A daemon standing down (a cutover, a contradicting --direction) holds
    // no lease: its fresh report says why.
    let standing_down = report
        .as_ref()
        .filter(|d| fresh(d) && d.exited.is_none() && !d.ready && !d.not_ready_because.is_empty());
    if !capture_complete {
        problems.push(format!(
            "capture on {} is not complete (see `capture`)",
            direction.source()
        ));
    }
    match (&daemon, daemon_running) {
        (_, false) => match standing_down {
            Some(d) => problems.push(format!(
                "the daemon (pid {}) does not drain: {}",
                d.pid,
                d.not_ready_because.join("; ")
            )),
            None => {
                let mut p = "no daemon is running (`dualwrite serve` holds no lease on the file)"
                    .to_owned();
                if let Some(e) = daemon.as_ref().and_then(|d| d.exited.as_deref()) {
                    p.push_str(&format!("; the last one exited on: {e}"));
                }
                problems.push(p);
            }
        },
        (None, true) => match report.as_ref().filter(|d| fresh(d)) {
            Some(d) => problems.push(format!("the daemon drains the {} direction", d.direction)),
            None => problems.push("the daemon has not reported yet".to_owned()),
        },
        (Some(d), true) if !fresh(d) => problems.push(format!(
            "the daemon's last report is {:.0}s old: is it paused (SIGSTOP) or hung?",
            now - d.updated_at
        )),
        (Some(d), true) => problems.extend(d.not_ready_because.iter().cloned()),
    }
    let bound = daemon
        .as_ref()
        .map_or(DEFAULT_MAX_LAG, |d| d.max_lag_seconds);
    if lag_seconds > bound && !problems.iter().any(|p| p.contains("over the bound")) {
        problems.push(format!(
            "lag {lag_seconds:.1}s is over the bound of {bound:.0}s"
        ));
    }
    let rejected_rows_recorded = std::fs::read(rejects)
        .map(|b| b.split(|c| *c == b'\n').filter(|l| !l.is_empty()).count() as u64)
        .unwrap_or(0);
    Status {
        direction: direction.as_str(),
        db_path: db.display().to_string(),
        capture,
        capture_complete,
        pending,
        pending_estimated,
        lag_seconds,
        daemon_running,
        healthy: problems.is_empty(),
        problems,
        last_error: daemon.as_ref().and_then(|d| d.last_error.clone()),
        last_success: daemon.as_ref().and_then(|d| d.last_success),
        rejected_rows_recorded,
        rejects_file: rejects.display().to_string(),
        daemon,
        recorded_primary: recorded,
    }
}

impl Status {
    pub fn render(&self) -> String {
        let mut s = format!(
            "{} ({})\n  capture on {}: {}\n  pending changes: {}{}\n  lag: {:.1}s\n  daemon: {}\n  dead letters: {} ({})\n",
            self.db_path,
            match self.direction {
                "reverse" => "reverse: Supabase primary, this file the rollback copy",
                _ => "forward: this file primary, Supabase the copy",
            },
            if self.direction == "reverse" { "Supabase" } else { "the file" },
            if self.capture_complete { "complete" } else { "NOT COMPLETE" },
            if self.pending_estimated { "about " } else { "" },
            self.pending,
            self.lag_seconds,
            if self.daemon_running { "running" } else { "not running" },
            self.rejected_rows_recorded,
            self.rejects_file,
        );
        s.push_str(&format!(
            "  recorded primary: {}\n",
            marker::describe(self.recorded_primary.as_ref())
        ));
        if let Some(e) = &self.last_error {
            s.push_str(&format!("  last error: {e}\n"));
        }
        if self.healthy {
            s.push_str("  healthy: yes\n");
        } else {
            s.push_str(&format!("  healthy: NO: {}\n", self.problems.join("; ")));
        }
        s
    }
}

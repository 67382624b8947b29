//! `dualwrite status`: what the file and the daemon's last report say, with or without a running daemon.

use std::path::Path;

use serde::Serialize;

use crate::capture;
use crate::error::Result;

use super::stats::{read_status_file, StatusFile};

/// `dualwrite status`: what the file and the daemon's last report say.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub db_path: String,
    pub capture: capture::CaptureStatus,
    pub pending: u64,
    pub lag_seconds: f64,
    /// The daemon holds the lease right now.
    pub daemon_running: bool,
    pub last_error: Option<String>,
    pub last_success: Option<f64>,
    pub daemon: Option<StatusFile>,
}

pub fn status(db: &Path) -> Result<Status> {
    let capture = capture::status(db)?;
    let daemon = read_status_file(db);
    // Probed without taking the lease: a running daemon is never disturbed.
    let daemon_running = capture::Lease::held_on(db);
    Ok(Status {
        db_path: db.display().to_string(),
        pending: capture.pending,
        lag_seconds: capture.lag_seconds,
        daemon_running,
        last_error: daemon.as_ref().and_then(|d| d.last_error.clone()),
        last_success: daemon.as_ref().and_then(|d| d.last_success),
        capture,
        daemon,
    })
}

impl Status {
    pub fn render(&self) -> String {
        let mut s = format!(
            "{}\n  capture: {}\n  pending changes: {}\n  lag: {:.1}s\n  daemon: {}\n",
            self.db_path,
            if self.capture.installed {
                "installed".to_owned()
            } else if self.capture.log_present {
                format!(
                    "INCOMPLETE (no triggers on {})",
                    self.capture.missing.join(", ")
                )
            } else {
                "not installed".to_owned()
            },
            self.pending,
            self.lag_seconds,
            if self.daemon_running {
                "running"
            } else {
                "not running"
            },
        );
        render_problems(&mut s, self.last_error.as_deref(), self.daemon.as_ref());
        s
    }
}

/// The last error and why the daemon is not ready, as `status` shows them
/// (forward and reverse).
pub(crate) fn render_problems(
    s: &mut String,
    last_error: Option<&str>,
    daemon: Option<&StatusFile>,
) {
    if let Some(e) = last_error {
        s.push_str(&format!("  last error: {e}\n"));
    }
    if let Some(d) = daemon.filter(|d| !d.not_ready_because.is_empty()) {
        s.push_str(&format!(
            "  not ready because: {}\n",
            d.not_ready_because.join("; ")
        ));
    }
}

//! The daemon's figures (`Stats`, shared with the HTTP endpoint), the status file, and failure kinds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::capture::{self};
use crate::error::Error;

/// The daemon's figures, shared with the HTTP endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    pub pending: AtomicU64,
    /// Lag in milliseconds.
    pub(super) lag_ms: AtomicU64,
    pub mirrored: Mutex<BTreeMap<String, u64>>,
    pub failures: Mutex<BTreeMap<String, u64>>,
    pub rejected: Mutex<BTreeMap<String, u64>>,
    pub last_error: Mutex<Option<String>>,
    pub last_success: Mutex<Option<f64>>,
    /// Shutting down: not ready.
    pub stopping: AtomicBool,
    /// Why capture is not in place, when it is not.
    pub capture_problem: Mutex<Option<String>>,
    /// The last batch failed (Supabase unreachable, refusing the key, ...).
    pub supabase_failing: AtomicBool,
    pub max_lag_secs: f64,
}

/// Add `n` to the counter `k` of a labelled family (both directions).
pub(crate) fn add(m: &Mutex<BTreeMap<String, u64>>, k: &str, n: u64) {
    if n > 0 {
        *crate::sync::lock(m).entry(k.to_owned()).or_default() += n;
    }
}

impl Stats {
    pub fn lag_seconds(&self) -> f64 {
        self.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// A batch or a probe failed: counted by kind, the last error kept.
    pub(crate) fn failed(&self, e: &Error) {
        add(&self.failures, failure_kind(e), 1);
        *crate::sync::lock(&self.last_error) = Some(e.to_string());
    }

    /// Supabase failed a batch or a probe: [`Stats::failed`], and `/ready`
    /// says so until it answers again.
    pub(crate) fn supabase_failed(&self, e: &Error) {
        self.failed(e);
        self.supabase_failing.store(true, Ordering::Relaxed);
    }

    /// Supabase answered (a batch landed, or a probe).
    pub(crate) fn supabase_answered(&self) {
        self.supabase_failing.store(false, Ordering::Relaxed);
    }

    pub(crate) fn set_pending(&self, pending: u64, lag: f64) {
        self.pending.store(pending, Ordering::Relaxed);
        self.lag_ms.store((lag * 1000.0) as u64, Ordering::Relaxed);
    }

    /// Ready, or the reasons why not.
    pub fn ready(&self) -> std::result::Result<(), Vec<String>> {
        let mut why = Vec::new();
        if self.stopping.load(Ordering::Relaxed) {
            why.push("shutting down".to_owned());
        }
        if let Some(p) = crate::sync::lock(&self.capture_problem).clone() {
            why.push(p);
        }
        if self.supabase_failing.load(Ordering::Relaxed) {
            let e = crate::sync::lock(&self.last_error).clone();
            why.push(format!(
                "supabase is failing: {}",
                e.unwrap_or_else(|| "unknown error".into())
            ));
        }
        if self.lag_seconds() > self.max_lag_secs {
            why.push(format!(
                "lag {:.1}s is over the bound of {:.0}s",
                self.lag_seconds(),
                self.max_lag_secs
            ));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }

    pub fn snapshot(&self) -> StatusFile {
        StatusFile {
            pid: std::process::id(),
            updated_at: capture::now_secs(),
            pending: self.pending.load(Ordering::Relaxed),
            lag_seconds: self.lag_seconds(),
            ready: self.ready().is_ok(),
            not_ready_because: self.ready().err().unwrap_or_default(),
            last_error: crate::sync::lock(&self.last_error).clone(),
            last_success: *crate::sync::lock(&self.last_success),
            mirrored_rows: crate::sync::lock(&self.mirrored).clone(),
            failures: crate::sync::lock(&self.failures).clone(),
            rejected_rows: crate::sync::lock(&self.rejected).clone(),
        }
    }
}

/// What the daemon last reported, as written next to the file
/// (`<db>.dualwrite-serve.json`) and served on `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusFile {
    pub pid: u32,
    pub updated_at: f64,
    pub pending: u64,
    pub lag_seconds: f64,
    pub ready: bool,
    pub not_ready_because: Vec<String>,
    pub last_error: Option<String>,
    /// Seconds since the epoch of the last batch Supabase confirmed.
    pub last_success: Option<f64>,
    pub mirrored_rows: BTreeMap<String, u64>,
    pub failures: BTreeMap<String, u64>,
    pub rejected_rows: BTreeMap<String, u64>,
}

/// The daemon's last report on `db`, if there is a readable one.
pub fn read_status_file(db: &Path) -> Option<StatusFile> {
    std::fs::read(status_file_path(db))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

pub fn status_file_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".dualwrite-serve.json");
    PathBuf::from(p)
}

pub(crate) fn write_status(path: &Path, s: &StatusFile) {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(s).expect("status serialises");
    if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::debug!(error = %e, path = %path.display(), "cannot write the status file");
    }
}

/// A failure's kind, for `dualwrite_mirror_failures_total{kind}`.
pub fn failure_kind(e: &Error) -> &'static str {
    match e {
        Error::Unreachable { .. } => "unreachable",
        Error::Timeout(_) => "timeout",
        Error::Rest {
            status: 401 | 403, ..
        } => "auth",
        Error::Rest { status, .. } if *status >= 500 => "server",
        Error::Rest { status: 429, .. } => "throttled",
        Error::Rest { .. } => "refused",
        Error::Sqlite(_) => "sqlite",
        _ => "other",
    }
}

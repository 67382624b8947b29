//! `dualwrite serve --direction reverse`: Supabase is the primary, the SQLite
//! file the rollback copy. The forward daemon with the sides swapped:
//!
//! 1. read the oldest pending changes from the Supabase change log
//!    (`rpc/dualwrite_changes`, service key), in seq order;
//! 2. coalesce them to distinct keys per table and read those rows as they
//!    are *now* (`key=in.(…)`), so a batch always writes the newest version;
//! 3. write them to SQLite in DoX's shape ([`crate::normalise::to_dox`]) and
//!    delete the keys that are gone, in one `BEGIN IMMEDIATE` transaction;
//! 4. only after that commit, acknowledge exactly the seqs read
//!    (`rpc/dualwrite_changes_ack`): a change committed meanwhile keeps its
//!    entry and goes in the next batch.
//!
//! A crash anywhere before 4 leaves the changes in the log (they are applied
//! again, idempotently); an outage of Supabase or a locked SQLite file only
//! delays. A row the file refuses for its data (a constraint, a trigger's
//! `RAISE`, a value with no DoX form) does not hold up the others: it is set
//! aside ([`apply::apply`]), written to `reverse-rejects.ndjson` in the state
//! directory (the forward rejects' format, [`crate::backfill::Reject`]),
//! counted in `dualwrite_rejected_rows_total{table}`, and its change is
//! acknowledged with the rest. One daemon per file ([`crate::capture::Lease`],
//! shared with the forward direction). Metrics, `/ready`, `/status` and the
//! status file are the forward daemon's ([`crate::serve::Stats`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::apply::{self, TableBatch};
use super::capture as rc;
use crate::backfill::{Reject, RejectLog};
use crate::capture;
use crate::catalogue::{Table, TABLES};
use crate::error::{Error, Result};
use crate::normalise::from_supabase_owned;
use crate::rest::RestClient;
use crate::retry::{retry, RetryPolicy};
use crate::serve::add;
use crate::serve::{http, read_status_file, status_file_path, write_status, Stats, StatusFile};

/// How the reverse daemon runs.
#[derive(Debug, Clone)]
pub struct ReverseOptions {
    pub db_path: PathBuf,
    /// Where `/health`, `/ready`, `/metrics`, `/status` listen (`None`: nowhere).
    pub listen: Option<SocketAddr>,
    /// Changes read per batch.
    pub batch_rows: usize,
    /// Keys per row read (`key=in.(…)`).
    pub request_rows: usize,
    /// How often to look at the log when it was empty.
    pub poll: Duration,
    /// `/ready` fails when the oldest pending change is older than this.
    pub max_lag: Duration,
    /// How long one request is retried before the batch fails.
    pub max_wait: Duration,
    /// The wait between failed batches.
    pub pause: Duration,
    /// How long a write waits for the SQLite file's lock before the batch fails.
    pub busy_timeout: Duration,
    /// Where rows the file refused are written (dead letters, NDJSON).
    pub rejects: PathBuf,
}

impl ReverseOptions {
    pub fn new(db_path: PathBuf) -> ReverseOptions {
        ReverseOptions {
            rejects: default_rejects_path(&db_path),
            db_path,
            listen: None,
            batch_rows: 4000,
            request_rows: 200,
            poll: Duration::from_millis(50),
            max_lag: Duration::from_secs(60),
            max_wait: Duration::from_secs(20),
            pause: Duration::from_secs(1),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The reverse direction's dead letters in a state directory (by default the
/// backfill's for the file, [`crate::backfill::state_dir_for`]): beside the
/// forward `rejects.ndjson`, in the same format.
pub fn rejects_path(state_dir: &Path) -> PathBuf {
    state_dir.join("reverse-rejects.ndjson")
}

/// Where `serve --direction reverse` writes the dead letters of `db` without
/// `--state-dir`.
pub fn default_rejects_path(db: &Path) -> PathBuf {
    rejects_path(&crate::backfill::state_dir_for(db))
}

/// One entry of the change log.
#[derive(Debug, Clone, Deserialize)]
pub struct RemoteChange {
    pub seq: i64,
    pub tbl: String,
    pub key: String,
    pub op: String,
}

type Conn = Arc<Mutex<rusqlite::Connection>>;

/// Quote a key for PostgREST's `in.(…)` list.
fn in_list(keys: &[&str]) -> String {
    let quoted: Vec<String> = keys
        .iter()
        .map(|k| format!("\"{}\"", k.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("in.({})", quoted.join(","))
}

fn lag_of(oldest_at: Option<&str>) -> f64 {
    oldest_at
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map_or(0.0, |t| {
            ((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64
                / 1000.0)
                .max(0.0)
        })
}

struct Daemon {
    opts: ReverseOptions,
    rest: RestClient,
    conn: Conn,
    rejects: RejectLog,
    stats: Arc<Stats>,
    /// When the backlog was last read.
    backlog_at: Instant,
}

/// Run the reverse mirror until `shutdown` completes (then finish the batch in flight).
pub async fn run(
    rest: RestClient,
    opts: ReverseOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (stats, stop) = crate::serve::start(opts.max_lag, shutdown);
    let db = opts.db_path.clone();
    let busy = opts.busy_timeout;
    let (lease, conn) = {
        let db = db.clone();
        crate::sync::blocking("SQLite", move || {
            let lease = capture::Lease::take(&db)?;
            let c = capture::open_rw(&db)?;
            c.busy_timeout(busy)?;
            if capture::triggers_on(&c)?.log_present {
                return Err(Error::invalid(format!(
                    "forward capture is installed on {}: its triggers would log every row the reverse \
                     mirror writes; run `dualwrite capture uninstall` first (after its changes are drained)",
                    db.display()
                )));
            }
            Ok((lease, c))
        })
        .await?
    };
    let policy = RetryPolicy::for_up_to(opts.max_wait);
    let st = retry(policy, || rc::switch(&rest, None, false)).await?;
    if !st.enabled {
        return Err(Error::invalid(
            "capture is off on Supabase: run `dualwrite capture install --target supabase` \
             (before the app writes to Supabase) first",
        ));
    }
    let rejects = RejectLog::open(opts.rejects.clone(), true)?;
    let server = match opts.listen {
        Some(addr) => Some(http::spawn(addr, Arc::clone(&stats), stop.clone())?),
        None => None,
    };
    tracing::info!(db = %db.display(), listen = ?opts.listen, rejects = %opts.rejects.display(), "serving the reverse direction");
    let mut d = Daemon {
        opts,
        rest,
        conn: Arc::new(Mutex::new(conn)),
        rejects,
        stats: Arc::clone(&stats),
        backlog_at: Instant::now(),
    };
    let result = d.drain(stop).await;
    write_status(&status_file_path(&db), &stats.snapshot());
    if let Some(s) = server {
        let _ = s.await;
    }
    drop(lease);
    result
}

impl Daemon {
    async fn drain(&mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let status_path = status_file_path(&self.opts.db_path);
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let wait = match self.batch().await {
                Ok(n) => {
                    self.stats.supabase_failing.store(false, Ordering::Relaxed);
                    *crate::sync::lock(&self.stats.last_error) = None;
                    (n == 0).then_some(self.opts.poll)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reverse batch failed; the changes stay in the log");
                    self.stats.failed(&e);
                    self.stats
                        .supabase_failing
                        .store(!matches!(e, Error::Sqlite(_)), Ordering::Relaxed);
                    Some(self.opts.pause)
                }
            };
            write_status(&status_path, &self.stats.snapshot());
            if let Some(w) = wait {
                tokio::select! {
                    _ = tokio::time::sleep(w) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }

    /// One batch; returns the number of changes drained.
    async fn batch(&mut self) -> Result<usize> {
        let policy = RetryPolicy::for_up_to(self.opts.max_wait);
        let max = self.opts.batch_rows;
        let rest = &self.rest;
        let changes: Vec<RemoteChange> = retry(policy, || async {
            let v = rest
                .rpc("dualwrite_changes", &json!({ "max_rows": max }))
                .await?;
            serde_json::from_value(v).map_err(|e| {
                Error::Protocol(format!("dualwrite_changes answered something else: {e}"))
            })
        })
        .await?;
        if changes.is_empty() {
            self.stats.set_pending(0, 0.0);
            return Ok(0);
        }
        // Coalesce: the distinct keys of each table.
        let mut keys: BTreeMap<&'static str, (&'static Table, BTreeSet<&str>)> = BTreeMap::new();
        for c in &changes {
            match TABLES.iter().find(|t| t.supabase == c.tbl) {
                Some(t) => {
                    keys.entry(t.supabase)
                        .or_insert((t, BTreeSet::new()))
                        .1
                        .insert(c.key.as_str());
                }
                None => {
                    tracing::warn!(seq = c.seq, tbl = %c.tbl, "a change for a table that is not DoX's: dropped")
                }
            }
        }
        // Read the rows as they are now.
        let mut batch = Vec::new();
        for (t, ks) in keys.values() {
            let ks: Vec<&str> = ks.iter().copied().collect();
            let mut tb = TableBatch::default();
            for chunk in ks.chunks(self.opts.request_rows.max(1)) {
                let rows = self.read_rows(t, chunk).await?;
                let found: BTreeSet<String> = rows
                    .iter()
                    .filter_map(|r| r.get(t.key().supabase).and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect();
                tb.gone.extend(
                    chunk
                        .iter()
                        .filter(|k| !found.contains(**k))
                        .map(|k| (*k).to_owned()),
                );
                tb.rows.extend(rows);
            }
            batch.push((*t, tb));
        }
        // Write them in one SQLite transaction.
        let conn = Arc::clone(&self.conn);
        let (applied, refused) = crate::sync::blocking("SQLite", move || {
            apply::apply(&mut crate::sync::lock(&conn), &batch)
        })
        .await?;
        for (t, a) in &applied {
            add(&self.stats.mirrored, t, a.written + a.deleted);
        }
        // Dead letters: recorded before their changes leave the log.
        let dead: Vec<Reject> = refused
            .into_iter()
            .map(|r| Reject {
                table: r.table.sqlite.to_owned(),
                key: r.key,
                code: r.code.to_owned(),
                message: r.message,
                row: r.row,
            })
            .collect();
        self.rejects.write(&dead)?;
        for r in &dead {
            add(&self.stats.rejected, &r.table, 1);
        }
        // Committed: now, and only now, the changes may leave the log.
        let seqs: Vec<i64> = changes.iter().map(|c| c.seq).collect();
        let args = json!({ "seqs": seqs });
        let policy = RetryPolicy::for_up_to(self.opts.max_wait);
        retry(policy, || self.rest.rpc("dualwrite_changes_ack", &args)).await?;
        *crate::sync::lock(&self.stats.last_success) = Some(capture::now_secs());
        // The backlog (cheap: never a count of a large log), once a second
        // while batches come back to back, and whenever the log may be dry.
        let full = changes.len() >= max;
        if !full || self.backlog_at.elapsed() >= Duration::from_secs(1) {
            let b = rc::backlog(&self.rest).await?;
            self.stats
                .set_pending(b.pending, lag_of(b.oldest_at.as_deref()));
            self.backlog_at = Instant::now();
        }
        Ok(changes.len())
    }

    /// The current rows of `keys` (canonical shape).
    async fn read_rows(&self, t: &'static Table, keys: &[&str]) -> Result<Vec<Map<String, Value>>> {
        let policy = RetryPolicy::for_up_to(self.opts.max_wait);
        let filter = in_list(keys);
        let rows: Vec<Map<String, Value>> = retry(policy, || async {
            let req = self
                .rest
                .from(t.supabase)
                .select(t.supabase_columns())
                .build()
                .query(&[(t.key().supabase, filter.as_str())]);
            let resp = self.rest.send(req, None).await?;
            resp.json::<Vec<Map<String, Value>>>().await.map_err(|e| {
                Error::Protocol(format!("reading {} answered no rows: {e}", t.supabase))
            })
        })
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| from_supabase_owned(t, r))
            .collect())
    }
}

/// `dualwrite status --direction reverse`: the Supabase change log's backlog,
/// the capture state there, and the daemon's last report (the status file
/// beside the SQLite file, as forward).
#[derive(Debug, Clone, Serialize)]
pub struct ReverseStatus {
    pub direction: &'static str,
    pub db_path: String,
    /// Capture on Supabase: on/off, missing triggers, the backlog.
    pub capture: rc::CaptureState,
    pub pending: u64,
    /// `pending` is an estimate (a large log is not counted).
    pub pending_estimated: bool,
    pub lag_seconds: f64,
    /// A daemon holds the file's lease right now.
    pub daemon_running: bool,
    pub last_error: Option<String>,
    pub last_success: Option<f64>,
    /// The dead letters recorded so far (lines of `rejects_file`).
    pub rejected_rows_recorded: u64,
    pub rejects_file: String,
    pub daemon: Option<StatusFile>,
}

/// Read the reverse direction's status (the log through the service key).
pub async fn status(rest: &RestClient, db: &Path, rejects: &Path) -> Result<ReverseStatus> {
    let capture = rc::switch(rest, None, false).await?;
    let (db_path, rejects_path) = (db.to_path_buf(), rejects.to_path_buf());
    let (daemon, daemon_running, recorded) = crate::sync::blocking("status", move || {
        let daemon = read_status_file(&db_path);
        // Probed without taking the lease: a running daemon is never disturbed.
        let running = capture::Lease::held_on(&db_path);
        let recorded = std::fs::read(&rejects_path)
            .map(|b| b.split(|c| *c == b'\n').filter(|l| !l.is_empty()).count() as u64)
            .unwrap_or(0);
        Ok((daemon, running, recorded))
    })
    .await?;
    Ok(ReverseStatus {
        direction: "reverse",
        db_path: db.display().to_string(),
        pending: capture.pending,
        pending_estimated: capture.estimated,
        lag_seconds: lag_of(capture.oldest_at.as_deref()),
        daemon_running,
        last_error: daemon.as_ref().and_then(|d| d.last_error.clone()),
        last_success: daemon.as_ref().and_then(|d| d.last_success),
        rejected_rows_recorded: recorded,
        rejects_file: rejects.display().to_string(),
        capture,
        daemon,
    })
}

impl ReverseStatus {
    pub fn render(&self) -> String {
        let mut s = format!(
            "{} (reverse: Supabase primary, this file the rollback copy)\n  capture on Supabase: {}\n  \
             pending changes: {}{}\n  lag: {:.1}s\n  daemon: {}\n  dead letters: {} ({})\n",
            self.db_path,
            if self.capture.installed() {
                "on".to_owned()
            } else if self.capture.enabled {
                format!("INCOMPLETE (no triggers on {})", self.capture.missing.join(", "))
            } else {
                "off".to_owned()
            },
            if self.pending_estimated { "about " } else { "" },
            self.pending,
            self.lag_seconds,
            if self.daemon_running {
                "running"
            } else {
                "not running"
            },
            self.rejected_rows_recorded,
            self.rejects_file,
        );
        crate::serve::render_problems(&mut s, self.last_error.as_deref(), self.daemon.as_ref());
        s
    }
}

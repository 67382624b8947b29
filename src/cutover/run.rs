//! `cutover run`: Supabase becomes the primary in one command, with the app's
//! writes to the file held (not failed) for at most `--max-pause`. The design
//! and its arguments are in docs/design/cutover.md; in order:
//!
//! 1. preflight: the key sees every row, no secondary failure left, capture
//!    complete, pending under a bound;
//! 2. take the drain: the marker says `switching`, `serve` stands down and
//!    releases the file's lease, this process takes it (from now on it alone
//!    acknowledges changes, and remembers every key it does);
//! 3. a full verification by content while the app keeps writing;
//! 4. drain what is pending (outside the fence, the app writing);
//! 5. the fence, `BEGIN IMMEDIATE` on the file: drain the rest, verify by
//!    content every key changed since step 2 (and those step 3 found
//!    different), switch Supabase (capture on, access `primary`), remove the
//!    file's capture and record Supabase as the primary (refusal triggers
//!    on), COMMIT: the switch, and the fence lifts;
//! 6. with `--restart`, hold the file's write lock again while the command
//!    restarts the app on Supabase.
//!
//! Any failure before the COMMIT rolls the file's transaction back (a fence
//! never outlives this process: the OS frees the lock), sets Supabase back,
//! and says why; nothing has switched. The journal (`cutover.json` in the
//! state directory) lets a run killed part-way be run again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::marker::{self, Primary, Switching};
use super::{read_records, Record};
use crate::access::{access, AccessState};
use crate::backfill::Reject;
use crate::capture::{self, Claimed};
use crate::catalogue::{Table, TABLES};
use crate::db::{SecondaryFailure, SqliteDatabase, SupabaseDatabase};
use crate::error::{Error, Result};
use crate::normalise::UnrepresentablePolicy;
use crate::rest::RestClient;
use crate::reverse::capture as supabase_capture;
use crate::serve::{Mirror, ServeOptions};
use crate::state_file::StateDir;
use crate::verify::{self, Check, KeyInfo, VerifyOptions};

/// The report's schema name.
pub const RUN_SCHEMA: &str = "dualwrite.cutover-run/1";

/// How `cutover run` runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub db_path: PathBuf,
    /// Where the journal is kept (and the dead letters, as `serve`'s).
    pub state_dir: StateDir,
    pub key: KeyInfo,
    /// The dual-write failure log: every line must be replayed first.
    pub failures: Option<PathBuf>,
    /// Rejected rows: each must verify equal in the fence.
    pub rejects: Option<PathBuf>,
    pub unrepresentable: UnrepresentablePolicy,
    /// The longest the app's writes are held.
    pub max_pause: Duration,
    /// The app's SQLite busy timeout, when known: `max_pause` must stay under it.
    pub app_busy_timeout: Option<Duration>,
    /// Pending changes above which the run does not start.
    pub max_pending: u64,
    /// How long `serve` has to stand down and release the file's lease.
    pub stand_down: Duration,
    /// A shell command that restarts the app on Supabase, run while the
    /// file's write lock is held once more after the switch.
    pub restart: Option<String>,
    /// Print the plan, change nothing.
    pub dry_run: bool,
    /// How rows are sent (the forward daemon's options).
    pub serve: ServeOptions,
}

impl RunOptions {
    pub fn new(db_path: PathBuf, state_dir: StateDir, key: KeyInfo) -> RunOptions {
        let mut serve = ServeOptions::new(
            crate::Direction::Forward,
            db_path.clone(),
            state_dir.clone(),
        );
        serve.max_wait = Duration::from_secs(10);
        RunOptions {
            db_path,
            state_dir,
            key,
            failures: None,
            rejects: None,
            unrepresentable: UnrepresentablePolicy::Reject,
            // Under DoX's busy timeout (Python sqlite3's default, 5 s).
            max_pause: Duration::from_secs(4),
            app_busy_timeout: None,
            max_pending: 100_000,
            stand_down: Duration::from_secs(30),
            restart: None,
            dry_run: false,
            serve,
        }
    }
}

/// One step, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: &'static str,
    pub ms: u64,
    pub detail: String,
}

/// What `cutover run` did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub schema: &'static str,
    /// The side the run makes the primary.
    pub to: Primary,
    /// `to` is the primary now (this run switched, or an earlier one had).
    pub switched: bool,
    /// Why the run stopped without switching.
    pub stopped: Option<String>,
    /// `--dry-run`: the preflight ran and nothing changed (`next` is the plan).
    pub dry_run: bool,
    pub steps: Vec<Step>,
    /// The change log's position when this run took the drain.
    pub watermark: Option<i64>,
    /// Rows the full verification compared.
    pub rows_verified: u64,
    /// Keys changed since the watermark (and keys found different), verified in the fence.
    pub keys_verified_in_fence: u64,
    pub drained_before_fence: u64,
    pub drained_in_fence: u64,
    /// How long the app's writes were held (the fence), in milliseconds.
    pub pause_ms: Option<u64>,
    /// What the operator (or the app) must do now.
    pub next: String,
}

impl RunReport {
    pub(super) fn new(to: Primary) -> RunReport {
        RunReport {
            schema: RUN_SCHEMA,
            to,
            switched: false,
            stopped: None,
            dry_run: false,
            steps: Vec::new(),
            watermark: None,
            rows_verified: 0,
            keys_verified_in_fence: 0,
            drained_before_fence: 0,
            drained_in_fence: 0,
            pause_ms: None,
            next: String::new(),
        }
    }

    /// 0 switched (or a dry run the preflight passed), 3 stopped without switching.
    pub fn exit_code(&self) -> u8 {
        if self.stopped.is_some() {
            3
        } else {
            0
        }
    }

    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            out.push_str(&format!(
                "  {:<22} {:>7.3} s  {}\n",
                s.name,
                s.ms as f64 / 1000.0,
                s.detail
            ));
        }
        match (&self.stopped, self.switched) {
            (Some(why), _) => out.push_str(&format!(
                "STOPPED: {why}\nNothing switched: {} is still the primary.\n",
                side(self.to.other())
            )),
            (None, true) => {
                out.push_str(&format!("SWITCHED: {} is the primary.", side(self.to)));
                if let Some(p) = self.pause_ms {
                    out.push_str(&format!(
                        " The app's writes were held {:.3} s; {} key(s) verified in the fence.",
                        p as f64 / 1000.0,
                        self.keys_verified_in_fence
                    ));
                }
                out.push('\n');
            }
            (None, false) => {}
        }
        if self.dry_run {
            out.push_str(&format!("DRY RUN, nothing changed: {}\n", self.next));
        } else if !self.next.is_empty() {
            out.push_str(&format!("Next: {}\n", self.next));
        }
        out
    }
}

fn side(p: Primary) -> &'static str {
    match p {
        Primary::Sqlite => "the SQLite file",
        Primary::Supabase => "Supabase",
    }
}

/// The journal: the step a run reached, for a run killed part-way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Journal {
    pub(super) pid: u32,
    pub(super) to: String,
    pub(super) step: String,
    /// Supabase's capture and access were switched in the fence (and must be
    /// set back if the file did not commit).
    pub(super) supabase_switched: bool,
}

pub(super) fn journal_path(dir: &StateDir) -> PathBuf {
    dir.path().join("cutover.json")
}

pub(super) fn write_journal(dir: &StateDir, j: &Journal) -> Result<()> {
    crate::state_file::create_dir_all(dir.path())?;
    crate::state_file::write_atomically(
        &journal_path(dir),
        &serde_json::to_vec_pretty(j).map_err(|e| Error::Protocol(e.to_string()))?,
    )
}

pub(super) fn read_journal(dir: &StateDir) -> Option<Journal> {
    let bytes = std::fs::read(journal_path(dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A test's fault injection (debug builds only): `DUALWRITE_TEST_STALL_AT`
/// = `step` stalls at the named step (for a test to kill the process there),
/// `step:MS` pauses there that long.
pub(super) fn stall_at(step: &str) {
    #[cfg(debug_assertions)]
    if let Ok(v) = std::env::var("DUALWRITE_TEST_STALL_AT") {
        let (name, ms) = v.split_once(':').unwrap_or((v.as_str(), "600000"));
        if name == step {
            eprintln!("dualwrite: stalled at {step} (DUALWRITE_TEST_STALL_AT)");
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(600_000)));
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Open the file for the run's own writes (the marker, the fence).
pub(super) fn open_file(path: &Path) -> Result<Connection> {
    let c = capture::open_rw(path)?;
    c.execute_batch("PRAGMA synchronous=FULL")?;
    Ok(c)
}

pub(super) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R> + Send + 'static,
) -> Result<R> {
    crate::sync::blocking("cutover", f).await
}

/// Set Supabase back to follower (access `mirror`, capture off): the file is the primary.
async fn supabase_back(rest: &RestClient) -> Result<()> {
    access(rest, Some(AccessState::Mirror)).await?;
    supabase_capture::disable(rest, true).await?;
    Ok(())
}

/// What records each step of a run or rollback in its report, timed from the
/// end of the one before (or the start), and tells `progress`.
pub(super) fn stepper(
    progress: impl Fn(&Step),
) -> impl FnMut(&mut RunReport, &'static str, String) {
    let mut started = Instant::now();
    move |report, name, detail| {
        let s = Step {
            name,
            ms: ms(started.elapsed()),
            detail,
        };
        progress(&s);
        report.steps.push(s);
        started = Instant::now();
    }
}

/// Run the cutover. `progress` is told each step as it ends. `Err` only
/// when it could not run at all; a stop without switching is a report.
pub async fn run(
    rest: RestClient,
    opts: &RunOptions,
    progress: impl Fn(&Step),
) -> Result<RunReport> {
    let mut report = RunReport::new(Primary::Supabase);
    let mut step = stepper(progress);
    let db = opts.db_path.clone();

    // An earlier run killed part-way: the file's marker says whether it switched.
    let marker_now = {
        let db = db.clone();
        blocking(move || marker::read_file(&db)).await?
    };
    let journal = read_journal(&opts.state_dir);
    if marker_now.primary == Primary::Supabase {
        // Switched (by this command or another): bring Supabase in line.
        if !opts.dry_run {
            access(&rest, Some(AccessState::Primary)).await?;
            supabase_capture::enable(&rest).await?;
            crate::state_file::remove(&journal_path(&opts.state_dir)).ok();
        }
        report.switched = true;
        step(
            &mut report,
            "already switched",
            "the file records Supabase as the primary; Supabase's capture and access match it"
                .into(),
        );
        report.next = next_step(opts);
        return Ok(report);
    }
    if let Some(j) = &journal {
        if j.supabase_switched && !opts.dry_run {
            // Killed in the fence after switching Supabase, before the file's
            // commit: the file stayed the primary, so Supabase goes back.
            supabase_back(&rest).await?;
        }
        tracing::warn!(pid = j.pid, step = %j.step, "an earlier cutover run stopped at this step without switching; starting again");
    }

    // 1. Preflight.
    let reasons = preflight(&rest, opts).await?;
    let pending = {
        let db = db.clone();
        blocking(move || capture::status(&db)).await?.pending
    };
    step(
        &mut report,
        "preflight",
        format!("{pending} change(s) pending"),
    );
    if !reasons.is_empty() {
        report.stopped = Some(reasons.join("; "));
        return Ok(report);
    }
    if opts.dry_run {
        report.dry_run = true;
        report.next = format!(
            "the run would take the drain from serve, verify by content, drain, then hold the \
             app's writes for at most {:.1} s to drain the rest, verify what changed, switch Supabase \
             (capture on, access primary) and record it as the primary in the file{}",
            opts.max_pause.as_secs_f64(),
            match &opts.restart {
                Some(c) => format!(", then run `{c}`"),
                None => String::new(),
            }
        );
        return Ok(report);
    }

    // 2. Take the drain.
    let me = std::process::id();
    let mut journal = Journal {
        pid: me,
        to: Primary::Supabase.as_str().into(),
        step: "taking the drain".into(),
        supabase_switched: false,
    };
    write_journal(&opts.state_dir, &journal)?;
    let conn = begin_switching(&db, Primary::Supabase).await?;
    let outcome = switch(
        rest.clone(),
        opts,
        &conn,
        &mut report,
        &mut journal,
        &mut step,
    )
    .await;
    let switched = matches!(outcome, Ok(true));
    if !switched {
        // Nothing switched: serve may take the drain again.
        end_switching(&conn).await?;
        crate::state_file::remove(&journal_path(&opts.state_dir)).ok();
    }
    match outcome {
        Ok(true) => {
            report.switched = true;
            report.next = next_step(opts);
            crate::state_file::remove(&journal_path(&opts.state_dir)).ok();
            Ok(report)
        }
        Ok(false) => Ok(report),
        Err(e) => Err(e),
    }
}

fn next_step(opts: &RunOptions) -> String {
    match &opts.restart {
        Some(_) => "nothing: the app was restarted by --restart; `serve` follows the switch (reverse: the file stays current as the way back)".into(),
        None => "restart the app with DB_BACKEND=supabase (an app on the embedded dualwrite module follows by itself); until then its writes to the file are refused with a clear error. `serve` follows the switch".into(),
    }
}

/// What stops the run before it takes anything.
async fn preflight(rest: &RestClient, opts: &RunOptions) -> Result<Vec<String>> {
    let mut reasons = Vec::new();
    if !opts.key.full_visibility {
        reasons.push(format!(
            "the key used ({}, role {}) cannot see every row; use the service role key",
            opts.key.variable, opts.key.role
        ));
    }
    if let Some(app) = opts.app_busy_timeout {
        if opts.max_pause >= app {
            reasons.push(format!(
                "--max-pause {:.1}s is not under the app's busy timeout {:.1}s: the app's writes would fail instead of waiting",
                opts.max_pause.as_secs_f64(),
                app.as_secs_f64()
            ));
        }
    }
    let mut notes = Vec::new();
    let mut left = 0u64;
    let _ = read_records(
        opts.failures.as_deref(),
        "failure",
        "--failures",
        &mut notes,
        |f: SecondaryFailure| Record {
            message: f.error,
            table: f.table,
            key: f.key,
        },
        |_| left += 1,
    )?;
    if left > 0 {
        reasons.push(format!(
            "{left} recorded secondary failure(s) not replayed; replay them first (`dualwrite replay`)"
        ));
    }
    let db = opts.db_path.clone();
    let st = blocking(move || capture::status(&db)).await?;
    if !st.log_present {
        reasons.push(
            "capture is not installed on the file: the writes made during the cutover would not be \
             known; run `dualwrite capture install` and `dualwrite serve` first"
                .into(),
        );
    } else {
        if !st.missing.is_empty() {
            reasons.push(format!(
                "capture triggers are missing on {}; run `dualwrite capture install`",
                st.missing.join(", ")
            ));
        }
        if st.pending > opts.max_pending {
            reasons.push(format!(
                "{} changes pending (more than --max-pending {}): let `dualwrite serve` catch up first",
                st.pending, opts.max_pending
            ));
        }
    }
    reasons.extend(daemon_not_ready(&opts.db_path));
    // Supabase answers, and has what the switch calls.
    access(rest, None).await?;
    supabase_capture::state(rest).await?;
    Ok(reasons)
}

/// A `serve` that runs, reports, and is not ready for a reason of its own
/// (not a cutover it stands down for): the run does not start.
pub(super) fn daemon_not_ready(db: &Path) -> Option<String> {
    let sf = crate::serve::read_status_file(db)?;
    let fresh = capture::now_secs() - sf.updated_at < 5.0 && sf.exited.is_none();
    (fresh && !sf.ready && sf.doing != "standing down").then(|| {
        format!(
            "the daemon (pid {}) is not ready: {}; see `dualwrite status`",
            sf.pid,
            sf.not_ready_because.join("; ")
        )
    })
}

/// Open the file and record, in a short transaction of its own, that a run
/// making `to` the primary takes the drain: `serve` stands down.
pub(super) async fn begin_switching(db: &Path, to: Primary) -> Result<Shared> {
    let db = db.to_path_buf();
    let conn = blocking(move || {
        let mut c = open_file(&db)?;
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        marker::set_switching(
            &tx,
            Some(&Switching {
                to,
                pid: std::process::id(),
                since: capture::now_secs(),
            }),
        )?;
        tx.commit()?;
        Ok(c)
    })
    .await?;
    Ok(std::sync::Arc::new(std::sync::Mutex::new(conn)))
}

/// Clear `switching`: nothing switched, and `serve` may take the drain again.
pub(super) async fn end_switching(conn: &Shared) -> Result<()> {
    on_conn(conn, |c| {
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        marker::set_switching(&tx, None)?;
        tx.commit()?;
        Ok(())
    })
    .await
}

/// The file's lease, once `serve` let it go; `Err` with the reason when it
/// did not within `stand_down`.
pub(super) async fn take_lease(
    db: &Path,
    stand_down: Duration,
) -> Result<std::result::Result<capture::Lease, String>> {
    let deadline = Instant::now() + stand_down;
    loop {
        let d = db.to_path_buf();
        match blocking(move || capture::Lease::take(&d)).await {
            Ok(l) => return Ok(Ok(l)),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Ok(Err(format!(
                    "the daemon holding the file's lease did not stand down within {:.0} s ({e}); \
                     is it a `serve` of an older version? Stop it, or run again",
                    stand_down.as_secs_f64()
                )))
            }
        }
    }
}

pub(super) type Shared = std::sync::Arc<std::sync::Mutex<Connection>>;

pub(super) async fn on_conn<R: Send + 'static>(
    conn: &Shared,
    f: impl FnOnce(&mut Connection) -> Result<R> + Send + 'static,
) -> Result<R> {
    let c = std::sync::Arc::clone(conn);
    crate::sync::blocking("cutover", move || f(&mut crate::sync::lock(&c))).await
}

/// The keys a run acknowledged, by table.
#[derive(Default)]
pub(super) struct Keys(BTreeMap<&'static str, BTreeSet<String>>);

impl Keys {
    pub(super) fn add(&mut self, changes: &[Claimed]) {
        for c in changes {
            if let Ok(t) = capture::check_change(c) {
                self.0.entry(t.sqlite).or_default().insert(c.key.clone());
            }
        }
    }

    pub(super) fn add_key(&mut self, t: &'static Table, key: String) {
        self.0.entry(t.sqlite).or_default().insert(key);
    }

    pub(super) fn by_table(&self) -> Vec<(&'static Table, Vec<String>)> {
        TABLES
            .iter()
            .copied()
            .filter_map(|t| {
                self.0
                    .get(t.sqlite)
                    .map(|k| (t, k.iter().cloned().collect()))
            })
            .collect()
    }
}

/// Steps 2 to 6, once the marker says `switching`. `Ok(true)`: switched.
async fn switch(
    rest: RestClient,
    opts: &RunOptions,
    conn: &Shared,
    report: &mut RunReport,
    journal: &mut Journal,
    step: &mut impl FnMut(&mut RunReport, &'static str, String),
) -> Result<bool> {
    let db = opts.db_path.clone();
    // `serve` sees `switching` on its next poll and releases the lease.
    let lease = match take_lease(&db, opts.stand_down).await? {
        Ok(l) => l,
        Err(why) => {
            report.stopped = Some(why);
            return Ok(false);
        }
    };
    let watermark = on_conn(conn, |c| capture::position(c)).await?;
    report.watermark = Some(watermark);
    journal.step = "drain taken".into();
    write_journal(&opts.state_dir, journal)?;
    step(
        report,
        "take the drain",
        format!("the drain is this run's (serve stands down); change log at seq {watermark}"),
    );
    stall_at("drain-taken");

    // 3. The full verification, the app writing.
    let sqlite = SqliteDatabase::open_read_only(&db).await?;
    let supabase = SupabaseDatabase::new(rest.clone());
    let mut vopts = VerifyOptions::new(opts.key.clone());
    vopts.tables = TABLES.to_vec();
    vopts.check = Check::Content;
    vopts.unrepresentable = opts.unrepresentable;
    let (full, plan) = verify::repair::plan(&sqlite, &supabase, &vopts).await?;
    report.rows_verified = full.totals.compared;
    let mut keys = Keys::default();
    let mut differing = 0u64;
    for p in &plan.tables {
        for k in p.upsert.iter().chain(p.delete.iter()) {
            keys.add_key(p.table, k.clone());
            differing += 1;
        }
        if p.cannot_land > 0 {
            report.stopped = Some(format!(
                "{}: {} row(s) cannot land on Supabase (see `dualwrite verify`)",
                p.table.sqlite, p.cannot_land
            ));
            return Ok(false);
        }
    }
    if full.tables.iter().any(|t| t.error.is_some()) {
        let errs: Vec<String> = full
            .tables
            .iter()
            .filter_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.table)))
            .collect();
        report.stopped = Some(format!(
            "the verification could not read {}",
            errs.join("; ")
        ));
        return Ok(false);
    }
    // Rejected rows must have landed since: verified in the fence.
    let mut notes = Vec::new();
    let mut rejected = Vec::new();
    read_records(
        opts.rejects.as_deref(),
        "reject",
        "--rejects",
        &mut notes,
        |r: Reject| Record {
            message: r.message,
            table: r.table,
            key: r.key,
        },
        |r| rejected.push(r),
    )?;
    for r in rejected {
        if let Ok(t) = crate::catalogue::table(&r.table) {
            keys.add_key(t, r.key);
        }
    }
    journal.step = "verified".into();
    write_journal(&opts.state_dir, journal)?;
    step(
        report,
        "verify by content",
        format!(
            "{} rows compared, {differing} not equal yet (verified again in the fence)",
            full.totals.compared
        ),
    );
    stall_at("verified");

    // 4. Drain, the app writing: short transactions, as serve's.
    // Marked as the file's copies: reverse capture never echoes them.
    let mut mirror = Mirror::open(rest.clone().mirroring_sqlite(), &opts.serve).await?;
    let limit = opts.serve.batch_rows.max(1);
    loop {
        let claim = on_conn(conn, move |c| {
            capture::claim_changes(c, limit, None, &Default::default())
        })
        .await?;
        if claim.changes.is_empty() {
            break;
        }
        let n = claim.changes.len();
        keys.add(&claim.changes);
        let sent = mirror.send(claim).await?;
        if let Some(e) = sent.failure {
            mirror.close().await;
            report.stopped = Some(format!("Supabase refused the drain: {e}"));
            return Ok(false);
        }
        let (acked, corrupt) = (sent.acked, sent.corrupt);
        on_conn(conn, move |c| {
            capture::ack(c, &corrupt)?;
            capture::ack_runs(c, &acked)
        })
        .await?;
        report.drained_before_fence += n as u64;
        if n < limit {
            break;
        }
    }
    step(
        report,
        "drain",
        format!("{} change(s) mirrored", report.drained_before_fence),
    );
    stall_at("drained");

    // 5. The fence.
    let fence = fence(
        &rest,
        opts,
        conn,
        &mut mirror,
        &sqlite,
        &supabase,
        keys,
        report,
        journal,
    )
    .await;
    mirror.close().await;
    sqlite.close().await;
    let pause = match fence {
        Ok(Fenced::Switched(pause)) => pause,
        Ok(Fenced::Stopped(why)) => {
            report.stopped = Some(why);
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    report.pause_ms = Some(ms(pause));
    journal.step = "switched".into();
    write_journal(&opts.state_dir, journal)?;
    step(
        report,
        "fence and switch",
        format!(
            "{} change(s) drained and {} key(s) verified in the fence; the app's writes held {:.3} s",
            report.drained_in_fence,
            report.keys_verified_in_fence,
            pause.as_secs_f64()
        ),
    );
    stall_at("switched");

    // 6. The restart, the file's write lock held again since the commit
    // (writes wait, then end with the app's process).
    if let Some(cmd) = &opts.restart {
        let held = on_conn(conn, |c| Ok(!c.is_autocommit())).await?;
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .kill_on_drop(false)
            .status();
        let status = tokio::time::timeout(opts.max_pause, run).await;
        if held {
            on_conn(conn, |c| {
                c.execute_batch("ROLLBACK")?;
                Ok(())
            })
            .await?;
        }
        let detail = match status {
            Ok(Ok(s)) if s.success() => "the restart command succeeded".to_owned(),
            Ok(Ok(s)) => format!("the restart command failed ({s}): restart the app with DB_BACKEND=supabase"),
            Ok(Err(e)) => format!("the restart command could not run ({e}): restart the app with DB_BACKEND=supabase"),
            Err(_) => format!(
                "the restart command was still running after {:.1} s; the file's lock is released (writes to the file are refused)",
                opts.max_pause.as_secs_f64()
            ),
        };
        step(report, "restart", detail);
    }
    drop(lease);
    Ok(true)
}

enum Fenced {
    Switched(Duration),
    Stopped(String),
}

/// Step 5: everything between `BEGIN IMMEDIATE` and COMMIT, within `max_pause`.
#[allow(clippy::too_many_arguments)]
async fn fence(
    rest: &RestClient,
    opts: &RunOptions,
    conn: &Shared,
    mirror: &mut Mirror,
    sqlite: &SqliteDatabase,
    supabase: &SupabaseDatabase,
    mut keys: Keys,
    report: &mut RunReport,
    journal: &mut Journal,
) -> Result<Fenced> {
    // The lock may wait for an app's transaction in progress.
    on_conn(conn, |c| {
        c.busy_timeout(Duration::from_secs(10))?;
        c.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    })
    .await?;
    let held = Instant::now();
    let deadline = held + opts.max_pause;
    let inner = async {
        let limit = opts.serve.batch_rows.max(1);
        loop {
            let claim = on_conn(conn, move |c| capture::claim_in(c, limit)).await?;
            if claim.changes.is_empty() {
                break;
            }
            let n = claim.changes.len();
            keys.add(&claim.changes);
            let sent = mirror.send(claim).await?;
            if let Some(e) = sent.failure {
                return Ok::<_, Error>(Some(format!("Supabase refused the drain: {e}")));
            }
            let (acked, corrupt) = (sent.acked, sent.corrupt);
            on_conn(conn, move |c| {
                let single: Vec<(&str, Vec<(i64, i64)>)> = corrupt
                    .iter()
                    .map(|c| (c.tbl.as_str(), vec![(c.seq, c.seq)]))
                    .collect();
                capture::ack_runs_in(c, &single)?;
                capture::ack_runs_in(c, &acked)
            })
            .await?;
            report.drained_in_fence += n as u64;
        }
        stall_at("fence-drained");
        let mut vopts = VerifyOptions::new(opts.key.clone());
        vopts.unrepresentable = opts.unrepresentable;
        let (n, unequal) = verify::verify_keys(sqlite, supabase, &vopts, &keys.by_table()).await?;
        report.keys_verified_in_fence = n;
        if !unequal.is_empty() {
            let shown: Vec<&str> = unequal.iter().take(5).map(String::as_str).collect();
            return Ok(Some(format!(
                "{} row(s) not equal by content after the drain: {}{}",
                unequal.len(),
                shown.join("; "),
                if unequal.len() > 5 { "; …" } else { "" }
            )));
        }
        // Supabase first: the file's commit below is the switch.
        journal.supabase_switched = true;
        journal.step = "fence: switching Supabase".into();
        write_journal(&opts.state_dir, journal)?;
        supabase_capture::enable(rest).await?;
        access(rest, Some(AccessState::Primary)).await?;
        stall_at("supabase-switched");
        Ok(None)
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    let outcome = match tokio::time::timeout(remaining, inner).await {
        Ok(Ok(None)) => None,
        Ok(Ok(Some(why))) => Some(why),
        Ok(Err(e)) => Some(format!("{e}")),
        Err(_) => Some(format!(
            "the fence reached --max-pause ({:.1} s) before the switch (Supabase slow or unreachable, or too much to drain)",
            opts.max_pause.as_secs_f64()
        )),
    };
    if let Some(why) = outcome {
        on_conn(conn, |c| {
            c.execute_batch("ROLLBACK")?;
            Ok(())
        })
        .await?;
        let pause = held.elapsed();
        if journal.supabase_switched {
            if let Err(e) = supabase_back(rest).await {
                tracing::error!(error = %e, "could not set Supabase back to follower; run `dualwrite cutover run` again or `dualwrite access mirror`");
            }
            journal.supabase_switched = false;
        }
        return Ok(Fenced::Stopped(format!(
            "{why}; the fence lifted after {:.3} s",
            pause.as_secs_f64()
        )));
    }
    // The switch: the file's capture goes, the marker records Supabase, the
    // refusal triggers come; one commit.
    let db = opts.db_path.clone();
    let hold_on = opts.restart.is_some();
    let committed = on_conn(conn, move |c| {
        let r = (|| {
            capture::uninstall_in(c, &db, false)?;
            marker::record_primary(c, Primary::Supabase)?;
            c.execute_batch("COMMIT")?;
            Ok(())
        })();
        match r {
            // With a restart to run, the write lock is taken again at once:
            // the app's writes keep waiting instead of meeting the refusal.
            Ok(()) if hold_on => {
                if let Err(e) = c.execute_batch("BEGIN IMMEDIATE") {
                    tracing::warn!(error = %e, "could not hold the file's writes for the restart; they are refused meanwhile");
                }
            }
            Ok(()) => {}
            Err(_) => {
                c.execute_batch("ROLLBACK").ok();
            }
        }
        r
    })
    .await;
    let pause = held.elapsed();
    match committed {
        Ok(()) => Ok(Fenced::Switched(pause)),
        Err(e) => {
            if let Err(e2) = supabase_back(rest).await {
                tracing::error!(error = %e2, "could not set Supabase back to follower");
            }
            journal.supabase_switched = false;
            Ok(Fenced::Stopped(format!(
                "the file's switch did not commit ({e}); the fence lifted after {:.3} s",
                pause.as_secs_f64()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_run_says_nothing_switched_and_exits_3() {
        let mut r = RunReport::new(Primary::Supabase);
        r.stopped = Some("Supabase refused".into());
        assert_eq!(r.exit_code(), 3);
        assert!(r.render_text().contains("Nothing switched"));
        r.stopped = None;
        r.switched = true;
        r.pause_ms = Some(120);
        assert_eq!(r.exit_code(), 0);
        assert!(
            r.render_text().contains("held 0.120 s"),
            "{}",
            r.render_text()
        );
    }
}

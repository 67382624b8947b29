//! `cutover rollback`: the SQLite file becomes the primary again, the same
//! steps as [`super::run`] the other way (docs/design/cutover.md, "Rollback is
//! the same steps reversed"):
//!
//! 1. preflight: the file records Supabase as the primary, capture is on
//!    there, the key sees every row, pending under a bound;
//! 2. take the drain from the reverse `serve` (the marker's `switching`, the
//!    file's lease);
//! 3. a full verification by content (Supabase the source), the app writing;
//! 4. drain Supabase's log into the file, remembering every key;
//! 5. the fence on Supabase ([`super::fence`]: table locks every writer
//!    waits on): drain the rest, verify every key changed since step 2 (and
//!    those step 3 found different), then one file transaction installs
//!    capture and records the file as the primary (the refusal triggers go),
//!    the access state returns to `mirror`; with `--restart` the command
//!    runs before the fence lifts;
//! 6. capture on Supabase goes off. A write that reached Supabase after the
//!    fence lifted (an app not restarted) keeps it on and is named: it is
//!    not in the file, and is never dropped silently.

use std::time::{Duration, Instant};

use super::fence::SupabaseFence;
use super::marker::{self, Primary};
use super::run::{
    begin_switching, blocking, daemon_not_ready, end_switching, journal_path, ms, on_conn,
    read_journal, stall_at, stepper, take_lease, write_journal, Journal, Keys, RunOptions,
    RunReport, Shared, Step,
};
use crate::access::{access, AccessState};
use crate::capture;
use crate::catalogue::TABLES;
use crate::db::{SqliteDatabase, SupabaseDatabase};
use crate::error::Result;
use crate::rest::RestClient;
use crate::reverse::capture as supabase_capture;
use crate::serve::{ReverseMirror, ServeOptions};
use crate::verify::{self, Check, VerifyOptions};
use crate::Direction;

/// Run the rollback. `progress` is told each step as it ends. `Err` only
/// when it could not run at all; a stop without switching is a report.
pub async fn rollback(
    rest: RestClient,
    opts: &RunOptions,
    progress: impl Fn(&Step),
) -> Result<RunReport> {
    let mut report = RunReport::new(Primary::Sqlite);
    let mut step = stepper(progress);
    let db = opts.db_path.clone();
    let m = {
        let db = db.clone();
        blocking(move || marker::read_file(&db)).await?
    };
    if m.primary == Primary::Sqlite {
        // Never cut over, or rolled back already (by a run killed after its commit).
        if !opts.dry_run && read_journal(&opts.state_dir).is_some() {
            access(&rest, Some(AccessState::Mirror)).await?;
            finish_supabase_capture(&rest, &mut report).await?;
            crate::state_file::remove(&journal_path(&opts.state_dir)).ok();
        }
        report.switched = true;
        step(
            &mut report,
            "already the primary",
            "the file records itself as the primary".into(),
        );
        return Ok(report);
    }

    // 1. Preflight.
    let mut reasons = Vec::new();
    if !opts.key.full_visibility {
        reasons.push(format!(
            "the key used ({}, role {}) cannot see every row; use the service role key",
            opts.key.variable, opts.key.role
        ));
    }
    let st = supabase_capture::state(&rest).await?;
    if !st.enabled {
        reasons.push(
            "capture is off on Supabase: the writes made there are not known; run \
             `dualwrite capture install --target supabase` and the reverse `serve` first"
                .into(),
        );
    } else if st.pending > opts.max_pending {
        reasons.push(format!(
            "{} changes pending on Supabase (more than --max-pending {}): let `dualwrite serve` catch up first",
            st.pending, opts.max_pending
        ));
    }
    reasons.extend(daemon_not_ready(&db));
    step(
        &mut report,
        "preflight",
        format!("{} change(s) pending on Supabase", st.pending),
    );
    if !reasons.is_empty() {
        report.stopped = Some(reasons.join("; "));
        return Ok(report);
    }
    if opts.dry_run {
        report.dry_run = true;
        report.next = format!(
            "the run would take the drain from serve, verify by content, drain Supabase into \
             the file, then hold the app's writes on Supabase for at most {:.1} s to drain the rest, verify \
             what changed and record the file as the primary{}",
            opts.max_pause.as_secs_f64(),
            match &opts.restart {
                Some(c) => format!(", running `{c}` before the writes are released"),
                None => String::new(),
            }
        );
        return Ok(report);
    }

    // 2. Take the drain.
    let me = std::process::id();
    let mut journal = Journal {
        pid: me,
        to: Primary::Sqlite.as_str().into(),
        step: "taking the drain".into(),
        supabase_switched: false,
    };
    write_journal(&opts.state_dir, &journal)?;
    let conn = begin_switching(&db, Primary::Sqlite).await?;
    let outcome = switch_back(&rest, opts, &conn, &mut report, &mut journal, &mut step).await;
    if !matches!(outcome, Ok(true)) {
        end_switching(&conn).await?;
    }
    crate::state_file::remove(&journal_path(&opts.state_dir)).ok();
    match outcome {
        Ok(true) => {
            report.switched = true;
            report.next = match &opts.restart {
                Some(_) => "nothing: the app was restarted by --restart; `serve` follows (forward)".into(),
                None => "restart the app with DB_BACKEND=sqlite (an app on the embedded dualwrite module follows by itself); `serve` follows (forward)".into(),
            };
            Ok(report)
        }
        Ok(false) => Ok(report),
        Err(e) => Err(e),
    }
}

/// Capture on Supabase off, unless writes reached it after the switch: then
/// it stays on, and the report names them.
async fn finish_supabase_capture(rest: &RestClient, report: &mut RunReport) -> Result<()> {
    match supabase_capture::disable(rest, false).await {
        Ok(_) => Ok(()),
        Err(e) => {
            report.next = format!(
                "writes reached Supabase after the rollback (an app instance still on Supabase?): {e}; \
                 they are not in the file. Capture on Supabase stays on so that they are kept"
            );
            Ok(())
        }
    }
}

async fn switch_back(
    rest: &RestClient,
    opts: &RunOptions,
    conn: &Shared,
    report: &mut RunReport,
    journal: &mut Journal,
    step: &mut impl FnMut(&mut RunReport, &'static str, String),
) -> Result<bool> {
    let db = opts.db_path.clone();
    let lease = match take_lease(&db, opts.stand_down).await? {
        Ok(l) => l,
        Err(why) => {
            report.stopped = Some(why);
            return Ok(false);
        }
    };
    journal.step = "drain taken".into();
    write_journal(&opts.state_dir, journal)?;
    step(
        report,
        "take the drain",
        "the drain is this run's (serve stands down)".into(),
    );
    stall_at("drain-taken");

    // 3. The full verification, Supabase the source.
    let sqlite = SqliteDatabase::open_read_only(&db).await?;
    let supabase = SupabaseDatabase::new(rest.clone());
    let mut vopts = VerifyOptions::new(opts.key.clone());
    vopts.tables = TABLES.to_vec();
    vopts.check = Check::Content;
    vopts.direction = Direction::Reverse;
    let (full, plan) = verify::repair::plan(&sqlite, &supabase, &vopts).await?;
    report.rows_verified = full.totals.compared;
    let mut keys = Keys::default();
    let mut differing = 0u64;
    for p in &plan.tables {
        for k in p.upsert.iter().chain(p.delete.iter()) {
            keys.add_key(p.table, k.clone());
            differing += 1;
        }
    }
    if let Some(t) = full.tables.iter().find(|t| t.error.is_some()) {
        report.stopped = Some(format!(
            "the verification could not read {}: {}",
            t.table,
            t.error.as_deref().unwrap_or_default()
        ));
        return Ok(false);
    }
    step(
        report,
        "verify by content",
        format!(
            "{} rows compared, {differing} not equal yet (verified again in the fence)",
            full.totals.compared
        ),
    );
    stall_at("verified");

    // 4. Drain Supabase into the file, the app writing.
    let mut sopts = ServeOptions::new(Direction::Reverse, db.clone(), opts.state_dir.clone());
    sopts.max_wait = opts.serve.max_wait;
    let mut mirror = ReverseMirror::open(rest.clone(), &sopts).await?;
    let limit = sopts.batch_rows;
    loop {
        let batch = mirror.drain_batch(limit).await?;
        if batch.is_empty() {
            break;
        }
        for (t, ks) in batch {
            report.drained_before_fence += ks.len() as u64;
            for k in ks {
                keys.add_key(t, k);
            }
        }
    }
    step(
        report,
        "drain",
        format!("{} key(s) written to the file", report.drained_before_fence),
    );
    stall_at("drained");

    // 5. The fence on Supabase.
    // A second of margin: the command's own deadline, not the fence's, ends the pause.
    let fence = SupabaseFence::raise(rest, opts.max_pause + Duration::from_secs(1)).await?;
    let held = Instant::now();
    let inner = async {
        loop {
            let batch = mirror.drain_batch(limit).await?;
            if batch.is_empty() {
                break;
            }
            for (t, ks) in batch {
                report.drained_in_fence += ks.len() as u64;
                for k in ks {
                    keys.add_key(t, k);
                }
            }
        }
        stall_at("fence-drained");
        let (n, unequal) =
            verify::verify_keys(&sqlite, &supabase, &vopts, &keys.by_table()).await?;
        report.keys_verified_in_fence = n;
        if !unequal.is_empty() {
            let shown: Vec<&str> = unequal.iter().take(5).map(String::as_str).collect();
            return Ok::<_, crate::Error>(Some(format!(
                "{} row(s) not equal by content after the drain: {}",
                unequal.len(),
                shown.join("; ")
            )));
        }
        // The writers on Supabase must still be held when the file takes over.
        if !fence.is_up().await? {
            return Ok(Some(
                "the fence on Supabase lifted early (expired)".to_owned(),
            ));
        }
        // The switch: one file transaction.
        let d = db.clone();
        on_conn(conn, move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            capture::install_in(&tx)?;
            marker::record_primary(&tx, Primary::Sqlite)?;
            tx.commit()?;
            let _ = d;
            Ok(())
        })
        .await?;
        Ok(None)
    };
    let remaining = opts.max_pause.saturating_sub(held.elapsed());
    let outcome = match tokio::time::timeout(remaining, inner).await {
        Ok(Ok(None)) => None,
        Ok(Ok(Some(why))) => Some(why),
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "the fence reached --max-pause ({:.1} s) before the switch",
            opts.max_pause.as_secs_f64()
        )),
    };
    sqlite.close().await;
    if let Some(why) = outcome {
        mirror.close().await;
        let _ = fence.lift().await;
        report.stopped = Some(format!(
            "{why}; the fence lifted after {:.3} s",
            held.elapsed().as_secs_f64()
        ));
        return Ok(false);
    }
    journal.step = "switched".into();
    write_journal(&opts.state_dir, journal)?;
    stall_at("switched");
    access(rest, Some(AccessState::Mirror)).await?;
    if let Some(cmd) = &opts.restart {
        let left = fence.remaining();
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status();
        let detail = match tokio::time::timeout(left, run).await {
            Ok(Ok(s)) if s.success() => "the restart command succeeded".to_owned(),
            Ok(Ok(s)) => {
                format!("the restart command failed ({s}): restart the app with DB_BACKEND=sqlite")
            }
            Ok(Err(e)) => format!("the restart command could not run ({e})"),
            Err(_) => "the restart command outlasted the fence".to_owned(),
        };
        step(report, "restart", detail);
    }
    let raised_in = fence.up_after();
    let lifted = fence.lift().await?;
    report.pause_ms = Some(ms(lifted.held));
    step(
        report,
        "fence and switch",
        format!(
            "fence up in {:.3} s; {} key(s) drained and {} verified in it; the app's writes held {:.3} s{}",
            raised_in.as_secs_f64(),
            report.drained_in_fence,
            report.keys_verified_in_fence,
            lifted.held.as_secs_f64(),
            if lifted.lifted_early() {
                " (it expired before its release: writes went through after the file's switch)"
            } else {
                ""
            }
        ),
    );
    // 6. Writes the fence held land as it lifts (their requests were made
    // before the switch): carried over into the file, then capture off on
    // Supabase (it stays on, and is named, if writes still come).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut carried = 0u64;
    loop {
        let batch = mirror.drain_batch(limit).await?;
        if batch.is_empty() {
            break;
        }
        carried += batch.iter().map(|(_, k)| k.len() as u64).sum::<u64>();
    }
    mirror.close().await;
    if carried > 0 {
        step(
            report,
            "carry over",
            format!("{carried} write(s) held by the fence landed on Supabase as it lifted: now in the file"),
        );
    }
    finish_supabase_capture(rest, report).await?;
    drop(lease);
    Ok(true)
}

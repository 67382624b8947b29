//! Open the configured backend, as DoX's `init_database` does (spec 8.2), but
//! check Supabase at start and say clearly what is wrong.

use serde::Serialize;

use crate::config::{BackendKind, Settings};
use crate::db::{AnyDatabase, DualDatabase, SqliteDatabase, SqliteOptions, SupabaseDatabase};
use crate::error::{Error, Result};
use crate::rest::RestClient;

/// What `init_database` reports: `{configured, active, dual_write, supabase_error}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InitReport {
    pub configured: String,
    pub active: String,
    pub dual_write: bool,
    pub supabase_error: Option<String>,
}

pub fn sqlite_options(s: &Settings) -> SqliteOptions {
    SqliteOptions {
        wal: s.sqlite_wal,
        synchronous_normal: s.sqlite_synchronous_normal,
        ..SqliteOptions::default()
    }
}

/// A Supabase backend from the settings, checked with one request.
pub async fn connect_supabase(s: &Settings) -> Result<SupabaseDatabase> {
    let rest = RestClient::new(&s.rest_config()?)?;
    check(&rest).await?;
    Ok(SupabaseDatabase::new(rest))
}

/// One cheap read that tells reachable / key accepted / schema present apart.
pub async fn check(rest: &RestClient) -> Result<()> {
    match rest.probe(crate::catalogue::ARTIFACT.supabase).await {
        Ok(()) => Ok(()),
        Err(Error::Rest { status: 401, .. }) | Err(Error::Rest { status: 403, .. }) => {
            Err(Error::config(format!(
                "Supabase at {} rejected the API key (HTTP 401/403): check SUPABASE_SERVICE_KEY (or SUPABASE_SERVICE_ROLE_KEY) / SUPABASE_ANON_KEY",
                rest.url()
            )))
        }
        Err(Error::Rest { code, .. })
            if matches!(code.as_deref(), Some("PGRST205" | "42P01" | "PGRST106")) =>
        {
            Err(Error::config(format!(
                "Supabase at {} has no DoX tables (table `artifacts` not found): apply supabase/migrations/",
                rest.url()
            )))
        }
        // Not PostgREST's answer: nothing serves the API at this path.
        Err(Error::Rest { status: 404, .. }) => Err(Error::config(format!(
            "nothing serves PostgREST at {}: SUPABASE_URL is the project URL \
             (https://<ref>.supabase.co, http://localhost:54321), /rest/v1 is added to it; \
             for a PostgREST that is not behind Supabase's gateway set DUALWRITE_REST_URL instead",
            rest.url()
        ))),
        Err(e) => Err(e),
    }
}

/// A dual layer with the configured timeout, breaker and failure record size.
pub fn dual<P: crate::db::Database, S: crate::db::Database>(
    s: &Settings,
    primary: P,
    secondary: S,
) -> Result<DualDatabase<P, S>> {
    let d = DualDatabase::new(
        primary,
        secondary,
        s.mirror_timeout,
        s.max_recorded_failures,
    )
    .with_breaker(s.breaker);
    match &s.failure_log {
        Some(path) => d.with_failure_log(path.clone()),
        None => Ok(d),
    }
}

/// The Supabase backend with the configured policy for values it cannot hold.
pub fn supabase(s: &Settings, rest: RestClient) -> SupabaseDatabase {
    let log = (s.unrepresentable == crate::normalise::UnrepresentablePolicy::Coerce).then(|| {
        std::sync::Arc::new(crate::normalise::coerced::CoercedLog::new(
            s.coerced_log.clone(),
        ))
    });
    SupabaseDatabase::new(rest).with_unrepresentable(s.unrepresentable, log)
}

/// Open the configured backend. With `DB_BACKEND=supabase`, any Supabase problem
/// fails. With SQLite primary and dual write: a configuration problem (no URL,
/// no key, key rejected, schema missing) leaves SQLite alone and says why; an
/// unreachable Supabase still dual-writes, recording every mirror failure for
/// replay, so no row is lost while it is down.
pub async fn open(s: &Settings) -> Result<(AnyDatabase, InitReport)> {
    let mut report = InitReport {
        configured: s.configured_backend.clone(),
        active: String::new(),
        dual_write: false,
        supabase_error: None,
    };
    let supabase = if s.wants_supabase() {
        let client = s.rest_config().and_then(|c| RestClient::new(&c));
        match client {
            Err(e) => Err(e),
            Ok(rest) => match check(&rest).await {
                Ok(()) => Ok(supabase(s, rest)),
                // A mirror that is down at start still gets every write, recorded for replay.
                Err(e) if e.is_transient() && s.backend == BackendKind::Sqlite => {
                    report.supabase_error = Some(format!(
                        "{e} (mirror writes are recorded for replay until it answers)"
                    ));
                    Ok(supabase(s, rest))
                }
                Err(e) => Err(e),
            },
        }
    } else {
        Err(Error::config("not requested"))
    };
    let db = match (s.backend, s.dual_write, supabase) {
        (BackendKind::Supabase, _, Err(e)) => return Err(e),
        (BackendKind::Supabase, false, Ok(sb)) => AnyDatabase::Supabase(sb),
        (BackendKind::Supabase, true, Ok(sb)) => {
            let lite = SqliteDatabase::open(&s.db_path, sqlite_options(s)).await?;
            report.dual_write = true;
            let rest = sb.rest().clone();
            let mirror = lite.mirroring_supabase();
            AnyDatabase::SupabaseFirst(dual_supabase_first(s, &rest, sb, mirror).await?)
        }
        (BackendKind::Sqlite, true, Ok(sb)) => {
            let lite = SqliteDatabase::open(&s.db_path, sqlite_options(s)).await?;
            report.dual_write = true;
            // The mirror's writes copy the file's rows; after cutover, the
            // primary's are Supabase's own.
            let own = self::supabase(s, sb.rest().clone());
            AnyDatabase::SqliteFirst(dual_sqlite_first(s, lite, sb.mirroring_sqlite(), own).await?)
        }
        (BackendKind::Sqlite, dual, sb) => {
            if dual {
                let mut e = sb.err().map(|e| e.to_string()).unwrap_or_default();
                if capture_installed(s).await {
                    e.push_str(" (change capture is installed: every write waits in the change log for `dualwrite serve`)");
                }
                tracing::warn!(error = %e, "dual write requested but Supabase is not usable; continuing with SQLite alone");
                report.supabase_error = Some(e);
            }
            AnyDatabase::Sqlite(SqliteDatabase::open(&s.db_path, sqlite_options(s)).await?)
        }
    };
    report.active = crate::db::Database::backend(&db);
    Ok((db, report))
}

/// The dual layer of a SQLite primary (the file `s.db_path`) mirrored to
/// Supabase: [`dual`], following the recorded primary (after cutover, writes
/// and reads go to `promoted`, Supabase as the primary:
/// [`DualDatabase::following`]), plus what change capture on the file changes. With
/// capture installed, every write is in the change log, committed with it,
/// and nothing is mirrored inline (a drainer sends the rows as they are, in
/// order: [`DualDatabase`]): no payload failure log either, and with
/// `dual.drain = "background"` a drainer task in this process (see
/// `crate::serve::drain_in_background`), stopped when the layer is dropped.
/// With `serve` as the drainer and none running, a warning says that the
/// writes wait. A background drain without capture is a configuration
/// error. Used by [`open`] and by the Python module's `DualDatabase`.
pub async fn dual_sqlite_first<P: crate::db::Database, S: crate::db::Database>(
    s: &Settings,
    primary: P,
    secondary: S,
    promoted: S,
) -> Result<DualDatabase<P, S>> {
    let background = s.drain == crate::config::DrainMode::Background;
    if !capture_installed(s).await {
        if background {
            return Err(Error::config(format!(
                "dual.drain (DUALWRITE_DRAIN) = background needs change capture on {}: run `dualwrite capture install` first",
                s.db_path.display()
            )));
        }
        return Ok(dual(s, primary, secondary)?.following(promoted));
    }
    let mut s = s.clone();
    s.failure_log = None;
    let d = dual(&s, primary, secondary)?.following(promoted);
    if background {
        return Ok(d.with_drainer(background_drainer(&s)?));
    }
    let db = s.db_path.clone();
    let served = crate::sync::blocking("capture", move || Ok(crate::capture::Lease::held_on(&db)))
        .await
        .unwrap_or(false);
    if !served {
        tracing::warn!(
            db = %s.db_path.display(),
            "change capture is installed and no `dualwrite serve` drains the file yet: writes wait in \
             the change log until one runs (or set DUALWRITE_DRAIN=background to drain from this process)"
        );
    }
    Ok(d)
}

/// The dual layer of a Supabase primary (reached through `rest`) mirrored to
/// the SQLite file (`secondary`: its inline copies pass the refusal triggers,
/// [`SqliteDatabase::mirroring_supabase`]): [`dual`]; with capture on Supabase, `serve --direction
/// reverse` keeps the file current, in order with every other writer, so
/// nothing is mirrored inline (it could land after the daemon wrote a newer
/// version). Used by [`open`] and by the Python module's `DualDatabase`.
pub async fn dual_supabase_first<P: crate::db::Database, S: crate::db::Database>(
    s: &Settings,
    rest: &RestClient,
    primary: P,
    secondary: S,
) -> Result<DualDatabase<P, S>> {
    let captured = crate::reverse::capture::state(rest)
        .await
        .is_ok_and(|st| st.enabled);
    let d = dual(s, primary, secondary)?;
    Ok(if captured { d.drained() } else { d })
}

/// Start the background drainer of `dual.drain = "background"` on the
/// current tokio runtime; it stops when the returned sender is dropped.
pub fn background_drainer(s: &Settings) -> Result<tokio::sync::watch::Sender<bool>> {
    let rest = RestClient::new(&s.rest_config()?)?.mirroring_sqlite();
    let mut opts = crate::serve::ServeOptions::new(
        crate::direction::Direction::Forward,
        s.db_path.clone(),
        crate::state_file::StateDir::of_source(&s.db_path),
    );
    opts.unrepresentable = s.unrepresentable;
    // Stopping (the app closes or drops its dual layer, or forks) waits for the
    // batches out: while Supabase is down, a request gives up after the
    // mirror timeout rather than serve's 20 s, pauses and tries again.
    opts.max_wait = s.mirror_timeout;
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::serve::drain_in_background(rest, opts, rx));
    Ok(stop)
}

/// Whether change capture is installed on the configured SQLite file.
async fn capture_installed(s: &Settings) -> bool {
    let path = s.db_path.clone();
    crate::sync::blocking("capture", move || crate::capture::status(&path))
        .await
        .is_ok_and(|st| st.log_present)
}

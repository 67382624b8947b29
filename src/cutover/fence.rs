//! The rollback's fence on Supabase (docs/design/cutover.md, "Rollback is the
//! same steps reversed"): while Supabase is the primary, the app writes
//! through PostgREST with the service key, which neither RLS nor the access
//! state holds back; every writer honours a table lock. The fence is the rpc
//! `dualwrite_fence` (migration [`MIGRATION`]), which takes `SHARE ROW
//! EXCLUSIVE` on the DoX tables ([`TABLES`](crate::catalogue::TABLES): those
//! the file holds too) and holds it, in a request of its own, until
//! `dualwrite_fence_release` is committed for its token or its time is up:
//! writes wait behind it (held, not failed), reads do not.
//!
//! [`SupabaseFence::raise`] starts that request in a task and returns once
//! `dualwrite_fence_held` says every lock is held; [`SupabaseFence::lift`]
//! releases it and returns the request's answer. A fence that expired before
//! it was lifted let writers through early: its [`FenceOutcome`] says so, and
//! the cutover must then abort. A fence dropped without `lift` is released
//! (best effort) and otherwise expires by itself.
//!
//! Each blocked writer keeps one of PostgREST's pool connections and the
//! fence one more: the release itself needs a free one (see the design note).

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::rest::RestClient;

/// The migration that defines the fence's functions.
pub(crate) const MIGRATION: &str = "supabase/migrations/20261208000100_dox_fence.sql";

/// The longest fence the database accepts.
pub(crate) const MAX_FENCE: Duration = Duration::from_secs(600);

/// How much longer than the fence its request may take: the fence ends at
/// most `max` after it began; this is for its answer to come back.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// How often `raise` asks whether the fence is up.
const POLL: Duration = Duration::from_millis(5);

/// How a fence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FenceEnd {
    /// Lifted by [`SupabaseFence::lift`]: writers were held throughout.
    Released,
    /// Its time ran out first: writers went on before the lift.
    Expired,
}

/// What the fence's request answered.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a fence that expired let writers through before it was lifted"]
pub(crate) struct FenceOutcome {
    pub(crate) ended: FenceEnd,
    /// How long every lock was held (measured by the database).
    pub(crate) held: Duration,
    /// How long the fence waited for the tables to be free of writers.
    pub(crate) waited: Duration,
}

impl FenceOutcome {
    /// The fence lifted before it was released: writers were not held throughout.
    pub(crate) fn lifted_early(&self) -> bool {
        self.ended == FenceEnd::Expired
    }
}

/// A fence that is up on Supabase.
#[derive(Debug)]
pub(crate) struct SupabaseFence {
    rest: RestClient,
    token: String,
    max: Duration,
    started: Instant,
    up_after: Duration,
    /// The fence's request; `None` once its answer was taken.
    call: Option<JoinHandle<Result<Value>>>,
}

impl SupabaseFence {
    /// Raise a fence that lasts at most `max` (0 < `max` <= [`MAX_FENCE`]),
    /// and return once it holds all its tables. Fails, with the fence
    /// released, when it is not up within `max` (another fence is up, the
    /// tables were never free of writers, PostgREST's pool is full) or the
    /// database lacks the [`MIGRATION`].
    pub(crate) async fn raise(rest: &RestClient, max: Duration) -> Result<SupabaseFence> {
        if max.is_zero() || max > MAX_FENCE {
            return Err(Error::invalid(format!(
                "a fence lasts more than 0 s and at most {} s, not {max:?}",
                MAX_FENCE.as_secs()
            )));
        }
        let token = format!("dualwrite-{}", uuid::Uuid::new_v4());
        let started = Instant::now();
        let call = tokio::spawn({
            let rest = rest.clone();
            let args = json!({"token": token, "seconds": max.as_secs_f64()});
            async move {
                rest.rpc_within("dualwrite_fence", &args, max + ANSWER_MARGIN)
                    .await
                    .map_err(|e| named(e, "dualwrite_fence"))
            }
        });
        // From here on, a failure drops `fence`, which releases it.
        let mut fence = SupabaseFence {
            rest: rest.clone(),
            token,
            max,
            started,
            up_after: Duration::ZERO,
            call: Some(call),
        };
        loop {
            if fence.call.as_ref().is_none_or(JoinHandle::is_finished) {
                return Err(match fence.answer().await {
                    Err(e) => e,
                    Ok(o) => Error::Protocol(format!(
                        "the fence ended ({:?} after {:?}) before it was seen up",
                        o.ended, o.held
                    )),
                });
            }
            if held(&fence.rest, &fence.token).await? {
                break;
            }
            if started.elapsed() >= max {
                return Err(Error::Protocol(format!(
                    "the fence was not up within {max:?}; its request may be waiting for \
                     one of PostgREST's connections (each write waiting behind a fence keeps one)"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        fence.up_after = started.elapsed();
        tracing::debug!(up_after = ?fence.up_after, ?max, "the fence on Supabase is up");
        Ok(fence)
    }

    /// How long `raise` took until the fence held every table.
    pub(crate) fn up_after(&self) -> Duration {
        self.up_after
    }

    /// At least how much longer the fence holds unless lifted (counted from
    /// before its request was sent, so the fence may hold a little longer).
    pub(crate) fn remaining(&self) -> Duration {
        self.max.saturating_sub(self.started.elapsed())
    }

    /// Whether the fence still holds all its tables (ask before a step that
    /// needs the writers held, e.g. the file's COMMIT).
    pub(crate) async fn is_up(&self) -> Result<bool> {
        if self.call.as_ref().is_none_or(JoinHandle::is_finished) {
            return Ok(false);
        }
        held(&self.rest, &self.token).await
    }

    /// Release the fence and return how it ended: [`FenceEnd::Expired`] when
    /// its time ran out before this call (writers went on early).
    pub(crate) async fn lift(mut self) -> Result<FenceOutcome> {
        if self.call.as_ref().is_some_and(|c| !c.is_finished()) {
            release(&self.rest, &self.token).await?;
        }
        let outcome = self.answer().await?;
        tracing::debug!(?outcome, "the fence on Supabase is lifted");
        Ok(outcome)
    }

    /// The fence request's answer (awaited).
    async fn answer(&mut self) -> Result<FenceOutcome> {
        let Some(call) = self.call.take() else {
            return Err(Error::Protocol(
                "the fence's answer was already taken".into(),
            ));
        };
        let value = match call.await {
            Ok(answer) => answer?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {
                return Err(Error::WorkerStopped {
                    worker: "fence",
                    when: "during a call",
                })
            }
        };
        outcome(&value)
    }
}

impl Drop for SupabaseFence {
    /// A fence dropped without `lift` (its caller failed) is released at
    /// once, if a runtime is still there to send the request; it otherwise
    /// expires by itself.
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        if call.is_finished() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let rest = self.rest.clone();
            let token = std::mem::take(&mut self.token);
            rt.spawn(async move {
                if let Err(e) = release(&rest, &token).await {
                    tracing::warn!(
                        "releasing an abandoned fence failed (it expires by itself): {e}"
                    );
                }
            });
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    ended: FenceEnd,
    held_seconds: f64,
    waited_seconds: f64,
}

fn outcome(v: &Value) -> Result<FenceOutcome> {
    let bad = |e: String| Error::Protocol(format!("dualwrite_fence answered {v}: {e}"));
    let a = Answer::deserialize(v).map_err(|e| bad(e.to_string()))?;
    let secs = |s: f64| Duration::try_from_secs_f64(s).map_err(|e| bad(e.to_string()));
    Ok(FenceOutcome {
        ended: a.ended,
        held: secs(a.held_seconds)?,
        waited: secs(a.waited_seconds)?,
    })
}

/// Whether the fence `token` holds all its tables.
async fn held(rest: &RestClient, token: &str) -> Result<bool> {
    let v = rest
        .rpc("dualwrite_fence_held", &json!({"token": token}))
        .await
        .map_err(|e| named(e, "dualwrite_fence_held"))?;
    v.as_bool().ok_or_else(|| {
        Error::Protocol(format!(
            "dualwrite_fence_held answered {v} instead of true or false"
        ))
    })
}

/// Commit the release of the fence `token`.
async fn release(rest: &RestClient, token: &str) -> Result<()> {
    rest.rpc("dualwrite_fence_release", &json!({"token": token}))
        .await
        .map(drop)
        .map_err(|e| named(e, "dualwrite_fence_release"))
}

/// A missing function or a key without the service role, said once.
fn named(e: Error, function: &str) -> Error {
    match e.code() {
        // Not in PostgREST's schema cache; or in it, but no longer in the database.
        Some("PGRST202" | "42883") => Error::config(format!(
            "the database has no function {function}: apply {MIGRATION}"
        )),
        Some("42501") => Error::config(
            "only the service role may raise or lift the fence: set SUPABASE_SERVICE_KEY",
        ),
        _ => e,
    }
}

// The one launcher of private PostgRESTs (tests/it and the benches include it too).
// Its items are `pub` for the test crates that include it.
#[cfg(test)]
#[allow(unreachable_pub)]
#[path = "../../tests/support/postgrest.rs"]
mod test_postgrest;

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use crate::catalogue::TABLES;
    use crate::db::{Dox, SupabaseDatabase};

    /// The migration, for the table list it locks.
    const MIGRATION_SQL: &str =
        include_str!("../../supabase/migrations/20261208000100_dox_fence.sql");

    #[test]
    fn the_fence_locks_every_table_of_the_catalogue() {
        let list = MIGRATION_SQL
            .split("select array[")
            .nth(1)
            .and_then(|s| s.split(']').next())
            .unwrap();
        let locked: Vec<&str> = list
            .split(',')
            .map(|t| t.trim().trim_matches('\''))
            .collect();
        let catalogue: Vec<&str> = TABLES.iter().map(|t| t.supabase).collect();
        assert_eq!(locked, catalogue);
    }

    #[test]
    fn answers_are_read_and_anything_else_is_named() {
        let o = outcome(&json!({"ended": "expired", "held_seconds": 1.5, "waited_seconds": 0.002}))
            .unwrap();
        assert_eq!(o.ended, FenceEnd::Expired);
        assert!(o.lifted_early());
        assert_eq!(o.held, Duration::from_millis(1500));
        let e = outcome(&json!({"ended": "gone"})).unwrap_err().to_string();
        assert!(e.contains("dualwrite_fence answered"), "{e}");
    }

    #[tokio::test]
    async fn a_fence_of_no_time_or_longer_than_the_limit_is_refused_before_any_request() {
        // Nothing listens there: a request would fail differently.
        let rest = RestClient::new(&crate::rest::RestConfig {
            url: "http://127.0.0.1:9/rest/v1".into(),
            key: secrecy::SecretString::from("sb_secret_x".to_owned()),
            user_jwt: None,
            schema: "public".into(),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        })
        .unwrap();
        for max in [Duration::ZERO, MAX_FENCE + Duration::from_millis(1)] {
            let e = SupabaseFence::raise(&rest, max).await.unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)), "{e}");
            assert!(e.to_string().contains("at most 600 s"), "{e}");
        }
    }

    // ---- against the local stack: a database and a PostgREST of their own ----

    use super::test_postgrest as postgrest;

    /// Whether the tests that need the local stack run (`DUALWRITE_TEST_STACK=1`,
    /// as for `tests/it`).
    fn stack_enabled() -> bool {
        std::env::var("DUALWRITE_TEST_STACK").is_ok_and(|v| v == "1")
    }

    /// The variables `scripts/stack.sh env` prints.
    fn stack_var(name: &str) -> String {
        static VARS: std::sync::OnceLock<std::collections::HashMap<String, String>> =
            std::sync::OnceLock::new();
        let vars = VARS.get_or_init(postgrest::stack_env);
        vars.get(name)
            .unwrap_or_else(|| panic!("scripts/stack.sh env did not print {name}"))
            .clone()
    }

    /// A database cloned from the migrated template, served by a PostgREST of
    /// its own with a pool of 5 (as `tests/it`'s `PrivateDb`): a fence must
    /// never hold the shared stack's tables.
    struct Project {
        name: String,
        postgrest: postgrest::Postgrest,
    }

    impl Project {
        async fn new() -> Project {
            let name = format!("dw_fence_{}", uuid::Uuid::new_v4().simple());
            let admin = Project::connect(&stack_var("DUALWRITE_PG_ADMIN_URL")).await;
            admin
                .batch_execute(&format!(
                    "CREATE DATABASE {name} TEMPLATE {}",
                    stack_var("DUALWRITE_TEMPLATE_DB")
                ))
                .await
                .unwrap();
            let postgrest = postgrest::Postgrest::launch(postgrest::PostgrestSettings {
                bin: stack_var("DUALWRITE_POSTGREST_BIN").into(),
                db_uri: format!("{}/{name}", stack_var("DUALWRITE_AUTHENTICATOR_URL")),
                jwt_secret: stack_var("SUPABASE_JWT_SECRET"),
                pool: 5,
            })
            .await;
            Project { name, postgrest }
        }

        async fn connect(url: &str) -> tokio_postgres::Client {
            let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c
        }

        /// SQL on this database, as the stack's superuser.
        async fn sql(&self) -> tokio_postgres::Client {
            let admin = stack_var("DUALWRITE_PG_ADMIN_URL");
            let base = admin.rsplit_once('/').unwrap().0;
            Project::connect(&format!("{base}/{}", self.name)).await
        }

        fn rest(&self) -> RestClient {
            let key = crate::keys::sign(
                &stack_var("SUPABASE_JWT_SECRET"),
                "service_role",
                None,
                Duration::from_secs(3600),
            )
            .unwrap();
            RestClient::new(&crate::rest::RestConfig {
                url: self.postgrest.url.clone(),
                key: secrecy::SecretString::from(key),
                user_jwt: None,
                schema: "public".into(),
                timeout: Duration::from_secs(15),
                connect_timeout: Duration::from_secs(2),
            })
            .unwrap()
        }
    }

    impl Drop for Project {
        fn drop(&mut self) {
            self.postgrest.stop();
            let name = self.name.clone();
            let admin = stack_var("DUALWRITE_PG_ADMIN_URL");
            // Drop cannot await: a thread with a runtime of its own.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async move {
                        let c = Project::connect(&admin).await;
                        let _ = c
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .await;
                    });
            })
            .join();
        }
    }

    /// An app's write through PostgREST (the atomic `set_user_pref`), timed.
    fn app_write(
        db: &Arc<SupabaseDatabase>,
        user: &str,
    ) -> tokio::task::JoinHandle<(Result<()>, Instant)> {
        let db = db.clone();
        let user = user.to_owned();
        tokio::spawn(async move {
            let r = db.set_user_pref(&user, "theme", json!("dark")).await;
            (r, Instant::now())
        })
    }

    /// Wait until `n` writes wait on the fence's locks (5 s at most).
    async fn waiting_writes(p: &Project, n: i64) {
        let sql = p.sql().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let waiting: i64 = sql
                .query_one(
                    "select count(distinct pid) from pg_locks \
                     where locktype = 'relation' and not granted",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if waiting >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{waiting} writes wait, not {n}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    const HOLD: Duration = Duration::from_millis(800);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_wait_behind_the_fence_until_it_is_lifted_and_reads_do_not() {
        if !stack_enabled() {
            return;
        }
        let p = Project::new().await;
        let db = Arc::new(SupabaseDatabase::new(p.rest()));
        db.set_user_pref("reader", "theme", json!("light"))
            .await
            .unwrap();

        let fence = SupabaseFence::raise(&p.rest(), Duration::from_secs(4))
            .await
            .unwrap();
        assert!(fence.is_up().await.unwrap());
        let raised = Instant::now();
        let write = app_write(&db, "writer");

        waiting_writes(&p, 1).await;
        let t = Instant::now();
        let prefs = db.get_user_prefs("reader").await.unwrap();
        let read_took = t.elapsed();
        assert_eq!(prefs["theme"], json!("light"));
        assert!(
            fence.is_up().await.unwrap(),
            "the read did not wait for the lift"
        );
        tokio::time::sleep(HOLD.saturating_sub(raised.elapsed())).await;
        assert!(!write.is_finished(), "a write went through the fence");

        let lifting = Instant::now();
        let outcome = fence.lift().await.unwrap();
        let lift_took = lifting.elapsed();
        let (written, done) = write.await.unwrap();
        written.unwrap();
        assert_eq!(outcome.ended, FenceEnd::Released);
        assert!(outcome.held >= HOLD, "{outcome:?}");
        assert!(done.duration_since(raised) >= HOLD, "the write waited");
        assert!(done >= lifting, "the write was done before the lift");
        let resumed = done.duration_since(lifting);
        assert_eq!(
            db.get_user_prefs("writer").await.unwrap()["theme"],
            json!("dark")
        );
        eprintln!(
            "fence: read during it {read_took:?}; lift answered in {lift_took:?}, \
             the held write done {resumed:?} after the lift began; {outcome:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raising_takes_milliseconds_and_each_fence_lifts() {
        if !stack_enabled() {
            return;
        }
        let p = Project::new().await;
        let rest = p.rest();
        let mut up = Vec::new();
        let mut lifted = Vec::new();
        for _ in 0..10 {
            let fence = SupabaseFence::raise(&rest, Duration::from_secs(4))
                .await
                .unwrap();
            up.push(fence.up_after());
            let t = Instant::now();
            assert_eq!(fence.lift().await.unwrap().ended, FenceEnd::Released);
            lifted.push(t.elapsed());
        }
        up.sort_unstable();
        lifted.sort_unstable();
        eprintln!("fence: raise to held {up:?}; lift to answer {lifted:?}");
        // The medians: a loaded machine may stretch a few of them.
        assert!(up[5] < Duration::from_millis(250), "{up:?}");
        assert!(lifted[5] < Duration::from_millis(250), "{lifted:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fence_never_lifted_expires_by_itself_and_lift_says_so() {
        if !stack_enabled() {
            return;
        }
        let p = Project::new().await;
        let db = Arc::new(SupabaseDatabase::new(p.rest()));
        let max = Duration::from_secs(1);
        let raised = Instant::now();
        let fence = SupabaseFence::raise(&p.rest(), max).await.unwrap();
        let write = app_write(&db, "writer");
        let (written, done) = write.await.unwrap();
        written.unwrap();
        assert!(!fence.is_up().await.unwrap());
        assert_eq!(fence.remaining(), Duration::ZERO);
        let outcome = fence.lift().await.unwrap();
        assert_eq!(outcome.ended, FenceEnd::Expired, "{outcome:?}");
        assert!(outcome.lifted_early());
        // It ends `max` after it began: the wait for the locks and the hold.
        let life = outcome.held + outcome.waited;
        assert!(
            life >= max && life < max + Duration::from_secs(1),
            "{outcome:?}"
        );
        assert!(done.duration_since(raised) < max + Duration::from_secs(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fence_dropped_without_lift_is_released_at_once() {
        if !stack_enabled() {
            return;
        }
        let p = Project::new().await;
        let db = Arc::new(SupabaseDatabase::new(p.rest()));
        let max = Duration::from_secs(6);
        let fence = SupabaseFence::raise(&p.rest(), max).await.unwrap();
        let write = app_write(&db, "writer");
        waiting_writes(&p, 1).await;
        let dropped = Instant::now();
        let remaining = fence.remaining();
        drop(fence);
        let (written, done) = write.await.unwrap();
        written.unwrap();
        let after = done.duration_since(dropped);
        assert!(after < remaining / 2, "{after:?}, {remaining:?} left");
    }

    /// PostgREST's pool (5 here): the fence keeps one connection, and each
    /// write waiting behind it one more. With three waiting, a read and the
    /// release still find one; with a fourth, the pool is full: the read and
    /// the release wait for a connection until the fence expires, and `lift`
    /// then says it expired.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_serves_reads_and_the_release_until_waiting_writes_fill_it() {
        if !stack_enabled() {
            return;
        }
        let p = Project::new().await;
        let db = Arc::new(SupabaseDatabase::new(p.rest()));

        let fence = SupabaseFence::raise(&p.rest(), Duration::from_secs(3))
            .await
            .unwrap();
        let writes: Vec<_> = (0..3).map(|i| app_write(&db, &format!("w{i}"))).collect();
        waiting_writes(&p, 3).await;
        let t = Instant::now();
        db.get_user_prefs("nobody").await.unwrap();
        let read_took = t.elapsed();
        assert!(
            fence.is_up().await.unwrap(),
            "the read did not wait for the lift"
        );
        let outcome = fence.lift().await.unwrap();
        assert_eq!(outcome.ended, FenceEnd::Released, "{outcome:?}");
        for w in writes {
            w.await.unwrap().0.unwrap();
        }

        let fence = SupabaseFence::raise(&p.rest(), Duration::from_secs(3))
            .await
            .unwrap();
        let writes: Vec<_> = (0..4).map(|i| app_write(&db, &format!("w{i}"))).collect();
        waiting_writes(&p, 4).await;
        let remaining = fence.remaining();
        assert!(remaining > Duration::from_millis(500), "{remaining:?}");
        let t = Instant::now();
        let outcome = fence.lift().await.unwrap();
        let starved = t.elapsed();
        // Released in time, it would have said so: the release found no connection.
        assert_eq!(outcome.ended, FenceEnd::Expired, "{outcome:?}");
        for w in writes {
            w.await.unwrap().0.unwrap();
        }
        eprintln!(
            "fence, pool of 5: with 3 writes waiting a read took {read_took:?}; with 4 \
             the lift waited {starved:?} for a connection and found the fence expired"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_the_migration_raising_names_it_once() {
        if !stack_enabled() {
            return;
        }
        let p = Project::new().await;
        p.sql()
            .await
            .batch_execute(
                "drop function public.dualwrite_fence(text, double precision); \
                 drop function public.dualwrite_fence_release(text); \
                 drop function public.dualwrite_fence_held(text); \
                 notify pgrst, 'reload schema';",
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let e = SupabaseFence::raise(&p.rest(), Duration::from_secs(2))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("configuration: the database has no function dualwrite_fence"),
            "{e}"
        );
        assert_eq!(e.matches("20261208000100_dox_fence.sql").count(), 1, "{e}");
    }
}

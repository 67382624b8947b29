//! The rollback's fence on Supabase as any client of the Data API meets it:
//! the three functions of `supabase/migrations/20261208000100_dox_fence.sql`
//! called through a private PostgREST 12.0.2. (`SupabaseFence`, the crate's
//! use of them, is tested in `src/cutover/fence.rs`: a writer held until the
//! lift, a read at once, expiry, the pool.)

use std::time::{Duration, Instant};

use dualwrite::db::{Dox, RestClient, RestConfig, SupabaseDatabase};
use dualwrite::keys;
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::harness::{stack, PrivateDb};

fn client(db: &PrivateDb, role: &str, timeout: Duration) -> RestClient {
    let sub = (role == "authenticated").then_some("dev_user");
    let jwt = keys::sign(stack().jwt_secret(), role, sub, Duration::from_secs(600)).unwrap();
    RestClient::new(&RestConfig {
        url: db.url.clone(),
        key: SecretString::from(jwt),
        user_jwt: None,
        schema: "public".into(),
        timeout,
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap()
}

/// `dualwrite_fence(token, seconds)` in a task of its own, timed.
fn fence(
    rest: &RestClient,
    token: &str,
    seconds: f64,
) -> tokio::task::JoinHandle<(dualwrite::Result<Value>, Duration)> {
    let rest = rest.clone();
    let args = json!({"token": token, "seconds": seconds});
    tokio::spawn(async move {
        let t = Instant::now();
        let r = rest.rpc("dualwrite_fence", &args).await;
        (r, t.elapsed())
    })
}

async fn held(rest: &RestClient, token: &str) -> bool {
    rest.rpc("dualwrite_fence_held", &json!({"token": token}))
        .await
        .unwrap()
        .as_bool()
        .unwrap()
}

async fn wait_held(rest: &RestClient, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !held(rest, token).await {
        assert!(Instant::now() < deadline, "the fence {token} never held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn release(rest: &RestClient, token: &str) -> bool {
    rest.rpc("dualwrite_fence_release", &json!({"token": token}))
        .await
        .unwrap()
        .as_bool()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_service_role_may_raise_see_or_release_the_fence() {
    needs_stack!();
    let db = PrivateDb::new().await;
    for role in ["anon", "authenticated"] {
        let c = client(&db, role, Duration::from_secs(5));
        for (function, args) in [
            ("dualwrite_fence", json!({"token": "t", "seconds": 1})),
            ("dualwrite_fence_held", json!({"token": "t"})),
            ("dualwrite_fence_release", json!({"token": "t"})),
        ] {
            let e = c.rpc(function, &args).await.unwrap_err();
            let dualwrite::Error::Rest { status, code, .. } = &e else {
                panic!("{role} {function}: {e}");
            };
            assert_eq!(code.as_deref(), Some("42501"), "{role} {function}: {e}");
            assert!(matches!(status, 401 | 403), "{role} {function}: {e}");
        }
    }
    // Nothing was released for the service role's fence "t" by them.
    let service = db.rest(Duration::from_secs(5));
    let (answer, took) = fence(&service, "t", 0.3).await.unwrap();
    assert_eq!(answer.unwrap()["ended"], "expired");
    assert!(took >= Duration::from_millis(300), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fence_at_a_time_a_second_is_refused_at_once_whatever_its_token() {
    needs_stack!();
    let db = PrivateDb::new().await;
    let rest = db.rest(Duration::from_secs(10));
    let first = fence(&rest, "first", 5.0);
    wait_held(&rest, "first").await;

    for token in ["second", "first"] {
        let (answer, took) = fence(&rest, token, 2.0).await.unwrap();
        let e = answer.unwrap_err();
        assert_eq!(e.code(), Some("55P03"), "{e}");
        assert!(e.to_string().contains("another fence is up"), "{e}");
        // At once, not after the first one's 5 s.
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    assert!(!held(&rest, "second").await);

    // The release is seen by the fence's request (READ COMMITTED, through PostgREST).
    assert!(release(&rest, "first").await, "it was holding");
    let answer = first.await.unwrap().0.unwrap();
    assert_eq!(answer["ended"], "released", "{answer}");
    assert!(!held(&rest, "first").await);

    // Then another may go up.
    let second = fence(&rest, "second", 5.0);
    wait_held(&rest, "second").await;
    release(&rest, "second").await;
    assert_eq!(second.await.unwrap().0.unwrap()["ended"], "released");
    // Each fence deleted its release row.
    let rows: i64 = db
        .sql()
        .await
        .query_one("select count(*) from dualwrite.fence_release", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_whose_caller_vanished_holds_writers_no_longer_than_its_seconds() {
    needs_stack!();
    let db = PrivateDb::new().await;
    let service = db.rest(Duration::from_secs(10));
    // The caller gives up on its request after 200 ms; the fence goes on.
    let impatient = client(&db, "service_role", Duration::from_millis(200));
    let seconds = 1.5;
    let started = Instant::now();
    let (answer, _) = fence(&impatient, "orphan", seconds).await.unwrap();
    assert!(
        matches!(answer, Err(dualwrite::Error::Timeout(_))),
        "{answer:?}"
    );
    // Still up without its caller.
    wait_held(&service, "orphan").await;

    let app = SupabaseDatabase::new(db.rest(Duration::from_secs(10)));
    app.set_user_pref("writer", "theme", json!("dark"))
        .await
        .unwrap();
    let written = started.elapsed();
    assert!(
        written >= Duration::from_secs_f64(seconds - 0.1)
            && written < Duration::from_secs_f64(seconds + 3.0),
        "the write waited {written:?} for a fence of {seconds} s"
    );
    assert!(!held(&service, "orphan").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_committed_before_its_fence_starts_ends_it_at_once() {
    needs_stack!();
    let db = PrivateDb::new().await;
    let rest = db.rest(Duration::from_secs(10));
    // A caller that gave up on raising releases its token; its request may still start.
    assert!(!release(&rest, "late").await, "nothing was holding");
    let (answer, took) = fence(&rest, "late", 5.0).await.unwrap();
    let answer = answer.unwrap();
    assert_eq!(answer["ended"], "released", "{answer}");
    // At once, not after its 5 s.
    assert!(took < Duration::from_millis(2500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_and_a_fence_the_statement_timeout_would_cut_are_one_clear_error() {
    needs_stack!();
    let db = PrivateDb::new().await;
    let rest = db.rest(Duration::from_secs(10));
    for (args, says) in [
        (
            json!({"token": "t", "seconds": 0}),
            "seconds must be more than 0",
        ),
        (
            json!({"token": "t", "seconds": -1}),
            "seconds must be more than 0",
        ),
        (json!({"token": "t", "seconds": 601}), "at most 600"),
        (
            json!({"token": "", "seconds": 1}),
            "token must be a non-empty text",
        ),
        (
            json!({"token": null, "seconds": 1}),
            "token must be a non-empty text",
        ),
        // The service role keeps the authenticator's 8 s (as on Supabase).
        (
            json!({"token": "t", "seconds": 7.5}),
            "the statement timeout (8s) would cut a fence of 7.5 s",
        ),
    ] {
        let e = rest.rpc("dualwrite_fence", &args).await.unwrap_err();
        let dualwrite::Error::Rest { status, code, .. } = &e else {
            panic!("{args}: {e}");
        };
        assert_eq!(
            (*status, code.as_deref()),
            (400, Some("22023")),
            "{args}: {e}"
        );
        assert_eq!(e.to_string().matches(says).count(), 1, "{args}: {e}");
    }
    assert!(!held(&rest, "t").await);
}

/// A writer in the middle of a transaction over two tables, the second earlier
/// in the fence's order: a fence that queued for its locks one by one would
/// hold the first and wait on the writer, which would wait on the fence (a
/// deadlock PostgreSQL ends by cancelling one, possibly the app's write). The
/// fence takes its locks only when all are free: the writer finishes, then the
/// fence holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_mid_transaction_finishes_before_the_fence_holds_and_never_deadlocks() {
    needs_stack!();
    let db = PrivateDb::new().await;
    let rest = db.rest(Duration::from_secs(10));
    let mut sql = db.sql().await;
    let tx = sql.transaction().await.unwrap();
    tx.execute(
        "insert into public.tags (id, tag) values ('fence-t', 'x')",
        &[],
    )
    .await
    .unwrap();

    let raised = Instant::now();
    let f = fence(&rest, "mid", 5.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held(&rest, "mid").await, "it waits for the writer");
    // Queued, the fence would now hold artifacts and wait on tags, and this
    // insert would wait on the fence until PostgreSQL cancelled one of the
    // two: the writer's error would fail here, the fence's below.
    tx.execute(
        "insert into public.artifacts (id, filename) values ('fence-a', 'x')",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    wait_held(&rest, "mid").await;
    let up = raised.elapsed();
    assert!(up >= Duration::from_millis(300), "{up:?}");
    release(&rest, "mid").await;
    let answer = f.await.unwrap().0.unwrap();
    assert_eq!(answer["ended"], "released", "{answer}");
    assert!(
        answer["waited_seconds"].as_f64().unwrap() >= 0.1,
        "{answer}"
    );
}

//! Supabase as primary: multi-step writes are one transaction on the server
//! (`supabase/migrations/20261128000200_dox_atomic_writes.sql`), through a
//! private database with its own PostgREST.

use serde_json::{json, Value};

use dualwrite::db::Dox;
use dualwrite::model::Call;

use crate::harness::PrivateDb;

const ATOMIC_SQL: &str =
    include_str!("../../supabase/migrations/20261128000200_dox_atomic_writes.sql");

fn call(m: &str, a: Value) -> Call {
    Call::parse(m, a).unwrap()
}

async fn entity_texts(pg: &PrivateDb, doc: &str) -> Vec<String> {
    let rows = pg
        .sql()
        .await
        .query(
            "select text from document_entities where document_id = $1 order by text",
            &[&doc],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn a_failing_store_entities_keeps_the_old_rows_and_concurrent_prefs_keep_every_key() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    // A row the server refuses half-way through the write (after the delete).
    pg.ddl(&format!(
        "{ATOMIC_SQL}\nalter table document_entities add constraint no_boom check (text <> 'boom');"
    ))
    .await;
    let db = pg.supabase();
    let ents = |texts: &[&str]| json!({"document_id": "doc-1", "entities": texts.iter().map(|t| json!({"label": "L", "text": t})).collect::<Vec<_>>()});
    db.call(call("store_entities", ents(&["a", "b"])))
        .await
        .unwrap();
    assert_eq!(entity_texts(&pg, "doc-1").await, ["a", "b"]);
    let e = db
        .call(call("store_entities", ents(&["c", "boom"])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("23514"), "{e}");
    // Step by step, the delete had already removed a and b.
    assert_eq!(entity_texts(&pg, "doc-1").await, ["a", "b"]);
    db.call(call("store_entities", ents(&["c"]))).await.unwrap();
    assert_eq!(entity_texts(&pg, "doc-1").await, ["c"]);

    // reset: every DoX table emptied in one go.
    db.call(call("reset", json!({}))).await.unwrap();
    assert!(entity_texts(&pg, "doc-1").await.is_empty());

    // Concurrent set_user_pref for different keys of one user keep every key.
    let keys: Vec<String> = (0..16).map(|i| format!("k{i}")).collect();
    let writes = keys.iter().map(|k| {
        let db = &db;
        async move {
            db.call(call(
                "set_user_pref",
                json!({"user_id": "u-1", "key": k, "value": {"v": k}}),
            ))
            .await
            .unwrap()
        }
    });
    futures::future::join_all(writes).await;
    let prefs = db
        .call(call("get_user_prefs", json!({"user_id": "u-1"})))
        .await
        .unwrap();
    for k in &keys {
        assert_eq!(prefs[k.as_str()], json!({"v": k}), "{k} lost: {prefs}");
    }

    // Concurrent update_artifact extras merges (and a status) keep every key.
    db.call(call(
        "add_artifact",
        json!({"artifact": {"id": "art-1", "filename": "f", "filepath": "p", "filetype": "pdf", "extras": {"x": 0}}}),
    ))
    .await
    .unwrap();
    let merges = keys.iter().map(|k| {
        let db = &db;
        async move {
            db.call(call(
                "update_artifact",
                json!({"artifact_id": "art-1", "status": k, "extras": {k: 1}}),
            ))
            .await
            .unwrap()
        }
    });
    futures::future::join_all(merges).await;
    let row = pg
        .sql()
        .await
        .query_one(
            "select extras::text, status from artifacts where id = 'art-1'",
            &[],
        )
        .await
        .unwrap();
    let extras: Value = serde_json::from_str(&row.get::<_, String>(0)).unwrap();
    assert_eq!(extras["x"], json!(0), "{extras}");
    for k in &keys {
        assert_eq!(extras[k.as_str()], json!(1), "{k} lost: {extras}");
    }
    assert!(keys.contains(&row.get::<_, String>(1)));
    // No such artifact: nothing written, no error.
    db.call(call(
        "update_artifact",
        json!({"artifact_id": "nope", "extras": {"a": 1}}),
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_killed_on_the_server_half_way_keeps_the_old_rows_and_only_the_service_role_calls_the_functions(
) {
    needs_stack!();
    let pg = PrivateDb::new().await;
    // Inserting the entity 'slow' takes 3 s: the write is caught after its
    // delete, inside the server's transaction.
    pg.ddl(&format!(
        "{ATOMIC_SQL}
         create or replace function public.test_slow() returns trigger language plpgsql as $$
         begin if new.text = 'slow' then perform pg_sleep(3); end if; return new; end $$;
         create trigger test_slow before insert on document_entities
           for each row execute function public.test_slow();"
    ))
    .await;
    let db = pg.supabase();
    let ents = |texts: &[&str]| json!({"document_id": "doc-k", "entities": texts.iter().map(|t| json!({"label": "L", "text": t})).collect::<Vec<_>>()});
    db.call(call("store_entities", ents(&["a", "b"])))
        .await
        .unwrap();
    let write = {
        let db = pg.supabase();
        let c = call("store_entities", ents(&["c", "slow"]));
        tokio::spawn(async move { db.call(c).await })
    };
    // Kill the backend running it (as a crash of the server process would).
    let sql = pg.sql().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n: i64 = sql
            .query_one(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity \
                 where pid <> pg_backend_pid() and query like '%dualwrite_apply_steps%' \
                   and wait_event = 'PgSleep'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the write never reached its slow step"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(write.await.unwrap().is_err(), "the killed write failed");
    // Step by step, a and b would be gone and c written; here nothing changed.
    assert_eq!(entity_texts(&pg, "doc-k").await, ["a", "b"]);

    // anon and authenticated cannot call the functions (SECURITY INVOKER:
    // even granted, RLS would apply; they are not granted at all).
    let sub = uuid::Uuid::new_v4().to_string();
    for c in [
        crate::reverse::client_as(&pg, "anon", None, "public"),
        crate::reverse::client_as(&pg, "authenticated", Some(&sub), "public"),
    ] {
        for (f, args) in [
            (
                "dualwrite_apply_steps",
                json!({"steps": [{"op": "delete_all", "table": "document_entities"}]}),
            ),
            (
                "dualwrite_set_user_pref",
                json!({"p_user_id": sub, "p_key": "k", "p_value": 1}),
            ),
            (
                "dualwrite_update_artifact",
                json!({"p_id": "x", "p_fields": {"status": "s"}}),
            ),
        ] {
            let e = c.rpc(f, &args).await.unwrap_err();
            assert_eq!(e.code(), Some("42501"), "{f}: {e}");
        }
    }
    assert_eq!(entity_texts(&pg, "doc-k").await, ["a", "b"]);
}

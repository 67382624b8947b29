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

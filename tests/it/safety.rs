//! The safety review (issue 9): each test reproduces one way the code could
//! lose rows, diverge silently, stall or leak, against the real stack.

use serde_json::{json, Value};

use dualwrite::catalogue;
use dualwrite::db::{Database, SupabaseDatabase};
use dualwrite::model::Write;

use crate::harness::{stack, temp_sqlite, unique};

fn shared_supabase() -> SupabaseDatabase {
    SupabaseDatabase::new(stack().service_client())
}

/// A repeated key inside one write: SQLite keeps the last row; PostgREST used
/// to refuse the whole upsert (21000) after the delete step had already run.
#[tokio::test]
async fn a_key_repeated_inside_one_write_lands_once_last_wins_on_both_sides() {
    let (_dir, sqlite) = temp_sqlite().await;
    let supabase = shared_supabase();
    let doc = unique("doc");
    let (e1, m1, c1) = (unique("ent"), unique("metric"), unique("chunk"));
    let writes = || {
        vec![
            Write::from_call(
                "store_entities",
                json!({"document_id": doc, "entities": [
                    {"id": e1, "label": "ORG", "text": "first"},
                    {"id": e1, "label": "ORG", "text": "last"}]}),
            )
            .unwrap(),
            Write::from_call(
                "store_metric_hits",
                json!({"document_id": doc, "metrics": [
                    {"id": m1, "type": "revenue", "value": "1"},
                    {"id": m1, "type": "revenue", "value": "2"}]}),
            )
            .unwrap(),
            Write::from_call(
                "store_search_chunks",
                json!({"chunks": [
                    {"id": c1, "text": "first", "meta": {"artifact_id": doc}, "embedding": [0.1]},
                    {"id": c1, "text": "last", "meta": {"artifact_id": doc}, "embedding": [0.2]}]}),
            )
            .unwrap(),
        ]
    };
    for w in writes() {
        sqlite.apply(w).await.unwrap();
    }
    for w in writes() {
        supabase.apply(w).await.unwrap();
    }
    for (table, key, col, want) in [
        (&catalogue::DOCUMENT_ENTITIES, &e1, "text", json!("last")),
        (&catalogue::DOCUMENT_METRIC_HITS, &m1, "value", json!("2")),
        (&catalogue::SEARCH_CHUNKS, &c1, "text", json!("last")),
    ] {
        let filter = [(table.key().sqlite, Value::String(key.clone()))];
        let b = supabase.fetch(table, &filter).await.unwrap();
        assert_eq!(b.len(), 1, "{}: {b:?}", table.sqlite);
        let c = table.columns[table.index_of(col)].supabase;
        assert_eq!(b[0][c], want, "{}", table.sqlite);
        // DoX's SQLite files have no search_chunks table (Supabase only).
        if table.sqlite != "search_chunks" {
            let a = sqlite.fetch(table, &filter).await.unwrap();
            assert_eq!(a, b, "{}: both sides hold the same row", table.sqlite);
        }
    }
}

/// An equality filter on NULL matches NULL on both sides, never the text 'null'.
#[tokio::test]
async fn a_filter_on_null_matches_null_not_the_text_null() {
    let (_dir, sqlite) = temp_sqlite().await;
    let supabase = shared_supabase();
    let category = unique("cat");
    let write = |user: Value| {
        Write::from_call(
            "add_memory",
            json!({"category": category, "content": {"u": user.clone()}, "user_id": user}),
        )
        .unwrap()
    };
    for mut w in [write(Value::Null), write(json!("null"))] {
        w.prepare();
        sqlite.apply(w.clone()).await.unwrap();
        supabase.apply(w).await.unwrap();
    }
    let filter = [
        ("category", Value::String(category.clone())),
        ("user_id", Value::Null),
    ];
    let t = &catalogue::CIPHER_MEMORY;
    let a = sqlite.fetch(t, &filter).await.unwrap();
    let b = supabase.fetch(t, &filter).await.unwrap();
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["user_id"], Value::Null);
    assert_eq!(a, b);
}

/// Read-modify-write methods run in `BEGIN IMMEDIATE` transactions: with
/// another connection committing to the file in a loop (as DoX does), none of
/// them fails with "database is locked" (a DEFERRED transaction failed at once
/// with SQLITE_BUSY_SNAPSHOT when a commit came between its read and its write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_modify_writes_do_not_fail_while_another_connection_commits() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let (dir, db) = temp_sqlite().await;
    let path = dir.path().join("dox.sqlite3");
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let app = {
        let (stop, commits) = (stop.clone(), commits.clone());
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                c.execute(
                    "INSERT INTO logentry (id, document_id, message) VALUES (?1, 'd', 'm')",
                    [format!("app-{i}")],
                )
                .unwrap();
                commits.fetch_add(1, Ordering::SeqCst);
                // About 200 small commits a second, like a busy DoX.
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let mut failures = Vec::new();
    let started = std::time::Instant::now();
    let mut calls = 0;
    while started.elapsed() < std::time::Duration::from_secs(2) {
        calls += 1;
        let i = calls;
        let w = Write::from_call(
            "set_user_pref",
            json!({"user_id": "racer", "key": format!("k{}", i % 7), "value": i}),
        )
        .unwrap();
        if let Err(e) = db.apply(w).await {
            failures.push(e.to_string());
        }
    }
    stop.store(true, Ordering::SeqCst);
    app.join().unwrap();
    assert!(
        commits.load(Ordering::SeqCst) > 100,
        "the other connection kept committing"
    );
    assert!(
        failures.is_empty(),
        "{} of {calls} failed: {:?}",
        failures.len(),
        failures.first()
    );
}

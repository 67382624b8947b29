//! Every write and read method on SQLite and on Supabase, with the sample
//! records of spec section 9: both sides hold equal rows and answer every read
//! equally after normalisation.

use serde_json::{json, Value};

use dualwrite::catalogue::{self, TABLES};
use dualwrite::db::{Database, Dox};
use dualwrite::model::{Read, Write};
use dualwrite::samples;

use crate::harness::{temp_sqlite, PrivateDb};

const PDF: &str = "a7d41b02-6c3e-4f5a-8e19-2b7c9d0e1f23";
const URL_ARTIFACT: &str = "c0e5f6a7-1b2c-4d3e-9f40-5a6b7c8d9e01";
const OPENAPI: &str = "2a3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d";
const XML: &str = "1f2e3d4c-5b6a-4978-8a9b-0c1d2e3f4a5b";
const WEB_SEARCH: &str = "0a1b2c3d-4e5f-4a6b-9c7d-9e0f1a2b3c4d";
const EXTRACT_TABLES: &str = "9f0a1b2c-3d4e-4f5a-8b6c-8d9e0f1a2b3c";

/// The samples, then a write of every other method and of every kind of change.
pub fn script() -> Vec<Write> {
    let mut w = samples::writes().unwrap();
    let call = |m: &str, a: Value| Write::from_call(m, a).unwrap();
    w.extend([
        call("update_artifact", json!({"artifact_id": PDF, "status": "processed"})),
        call(
            "update_artifact",
            json!({"artifact_id": URL_ARTIFACT, "extras": {"media": {"kind": "html"}}}),
        ),
        call("update_artifact", json!({"artifact_id": "no-such-artifact", "status": "x"})),
        call(
            "register_skill",
            json!({"name": "extract_tables", "description": "v2", "parameters": {"x": 1},
                   "workflow_def": {"steps": []}, "enabled": false}),
        ),
        call(
            "register_skill",
            json!({"name": "brand_new", "description": "d", "parameters": {}, "workflow_def": {}}),
        ),
        call("update_skill", json!({"skill_id": WEB_SEARCH, "enabled": true})),
        call("update_skill", json!({"skill_id": "missing", "enabled": true})),
        call("set_user_pref", json!({"user_id": "agent-zero", "key": "theme", "value": "light"})),
        call("set_user_pref", json!({"user_id": "new-user", "key": "n", "value": [1, 2]})),
        call(
            "store_entities",
            json!({"document_id": PDF, "entities": [{"id": "ent-1", "label": "ORG", "text": "Acme"}]}),
        ),
        call("store_metric_hits", json!({"document_id": PDF, "metrics": []})),
        call(
            "store_metric_hits",
            json!({"document_id": XML, "metrics": [{"type": "revenue", "value": 12.4, "position": 1}]}),
        ),
        call("store_structure", json!({"document_id": PDF, "structure": null})),
        call("store_structure", json!({"document_id": OPENAPI, "structure": [{"title": "an array"}]})),
        call(
            "store_search_chunks",
            json!({"chunks": [{"id": "md:x:1", "text": "t", "meta": {"artifact_id": PDF, "type": "pdf"},
                               "embedding": [0.1, 0.2]},
                              {"id": "md:x:2", "text": "no embedding: skipped"}]}),
        ),
        call("reset_search_chunks", json!({})),
        call("save_tag_prompt", json!({"document_id": OPENAPI, "prompt_text": "second"})),
        call("add_memory", json!({"category": "reasoning_step", "content": "plain string", "user_id": "dev_user"})),
        call("store_summary", json!({"summary": {"summary_text": "defaults"}})),
        // Writing the same record again is harmless on both sides (idempotent).
        call(
            "add_artifact",
            json!({"artifact": {"id": PDF, "filename": "annual_report.pdf", "filepath": "p",
                                "filetype": ".pdf", "status": "processed"}}),
        ),
        call(
            "add_log",
            json!({"log": {"id": "log-nan", "document_id": XML, "message": "NaN inside attrs",
                           "attrs_json": "{\"v\": NaN, \"w\": [Infinity, -Infinity]}"}}),
        ),
    ]);
    w
}

pub fn reads() -> Vec<Read> {
    let r = |m: &str, a: Value| Read::from_call(m, a).unwrap();
    vec![
        r("get_artifacts", json!({})),
        r("get_facts", json!({})),
        r("get_facts", json!({"report_week": "2025-W38"})),
        r(
            "get_evidence",
            json!({"evidence_id": "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"}),
        ),
        r("get_evidence", json!({"evidence_id": "missing"})),
        r("get_all_evidence", json!({})),
        r(
            "get_summary",
            json!({"scope_key": "workspace", "style": "bullet"}),
        ),
        r("list_summaries", json!({})),
        r("list_summaries", json!({"scope": "artifact"})),
        r("list_documents", json!({})),
        r("list_documents", json!({"type": "pdf"})),
        r("list_entities", json!({})),
        r("list_entities", json!({"document_id": PDF, "label": "ORG"})),
        r("get_structure", json!({"document_id": PDF})),
        r("get_structure", json!({"document_id": OPENAPI})),
        r("list_metric_hits", json!({"metric_type": "growth"})),
        r("list_logs", json!({})),
        r("list_logs", json!({"level": "ERROR", "q": "payment"})),
        r(
            "list_logs",
            json!({"ts_from": "2025-09-18T00:00:00", "ts_to": "2025-09-19T00:00:00"}),
        ),
        r("list_apis", json!({})),
        r(
            "list_apis",
            json!({"tag": "pets", "method": "get", "path_like": "pet"}),
        ),
        r("list_tags", json!({})),
        r("list_tags", json!({"document_id": OPENAPI, "q": "AUTH"})),
        r(
            "has_tag",
            json!({"document_id": OPENAPI, "tag": "  Pet Inventory "}),
        ),
        r("has_tag", json!({"document_id": OPENAPI, "tag": "absent"})),
        r("get_latest_tag_prompt", json!({"document_id": OPENAPI})),
        r(
            "list_tag_prompt_history",
            json!({"document_id": OPENAPI, "limit": 5}),
        ),
        r("list_log_messages", json!({"document_id": XML})),
        r("search_memory", json!({})),
        r("search_memory", json!({"category": "fact", "q": "revenue"})),
        r("search_memory", json!({"user_id": "dev_user", "limit": 1})),
        r("get_user_prefs", json!({"user_id": "agent-zero"})),
        r("get_user_prefs", json!({"user_id": "nobody"})),
        r("list_skills", json!({})),
        r("list_skills", json!({"enabled_only": false})),
    ]
}

#[tokio::test]
async fn every_method_gives_equal_results_on_sqlite_and_supabase() {
    needs_stack!();
    let (_dir, lite) = temp_sqlite().await;
    let pg = PrivateDb::new().await;
    let sb = pg.supabase();

    for mut w in script() {
        // Prepared once, as the dual layer does, so generated ids agree.
        w.prepare();
        let a = lite
            .apply(w.clone())
            .await
            .unwrap_or_else(|e| panic!("sqlite {}: {e}", w.method()));
        let b = sb
            .apply(w.clone())
            .await
            .unwrap_or_else(|e| panic!("supabase {}: {e}", w.method()));
        assert_eq!(a.value, b.value, "return value of {}", w.method());
        assert_eq!(a.resolved, b.resolved, "resolved form of {}", w.method());
    }

    for t in TABLES.iter().copied().chain([&catalogue::SEARCH_CHUNKS]) {
        let left = lite.fetch(t, &[]).await.unwrap();
        let right = sb.fetch(t, &[]).await.unwrap();
        if t.sqlite == "search_chunks" {
            assert!(
                left.is_empty() && right.is_empty(),
                "reset_search_chunks emptied it"
            );
            continue;
        }
        assert!(!left.is_empty(), "{} has rows", t.sqlite);
        assert_eq!(left, right, "rows of {}", t.sqlite);
    }
    for r in reads() {
        let a = lite.read(r.clone()).await.unwrap();
        let b = sb.read(r.clone()).await.unwrap();
        assert_eq!(a, b, "{r:?}");
    }

    // What the extra writes did, observed through the reads.
    let skills = sb.list_skills(false).await.unwrap();
    let et = skills
        .iter()
        .find(|s| s["name"] == "extract_tables")
        .unwrap();
    assert_eq!(et["id"], EXTRACT_TABLES, "re-registering keeps the id");
    assert_eq!(et["created_at"], "2025-09-20T16:00:00Z", "and created_at");
    assert_eq!(et["description"], "v2");
    let ws = skills.iter().find(|s| s["name"] == "web_search").unwrap();
    assert_eq!(ws["enabled"], true);
    let prefs = lite.get_user_prefs("agent-zero").await.unwrap();
    assert_eq!(prefs, json!({"verbosity": 2, "theme": "light"}));
    let arts = sb.get_artifacts().await.unwrap();
    let web = arts.iter().find(|a| a["id"] == URL_ARTIFACT).unwrap();
    assert_eq!(web["extras"]["media"]["kind"], "html");
    assert_eq!(
        web["extras"]["web"]["status"], "processed",
        "extras merged, not replaced"
    );
    assert_eq!(sb.get_structure(PDF).await.unwrap(), None);
    let ents = sb
        .read(Read::ListEntities {
            document_id: Some(PDF.into()),
            label: None,
        })
        .await
        .unwrap();
    assert_eq!(ents.as_array().unwrap().len(), 1, "store_entities replaces");
    assert!(sb.has_tag(OPENAPI, "AUTHENTICATION").await.unwrap());
    let tags = sb.list_tags(Some(OPENAPI), None).await.unwrap();
    let legacy = tags
        .iter()
        .find(|t| t["source_ptr"] == "hrm-refined:steps3")
        .unwrap();
    assert_eq!(legacy["hrm_steps"], 3);
    let logs = sb
        .read(Read::ListLogs {
            level: None,
            code: None,
            q: Some("nan inside".into()),
            ts_from: None,
            ts_to: None,
            document_id: None,
        })
        .await
        .unwrap();
    assert_eq!(
        logs[0]["attrs"],
        json!({"v": null, "w": [null, null]}),
        "NaN/Infinity mapped to null"
    );
    let memories = sb.search_memory(None, 10, None, None).await.unwrap();
    let team = memories
        .iter()
        .find(|m| m["category"] == "team_memory")
        .unwrap();
    assert_eq!(team["context"]["author"], "dana");
    assert_eq!(
        sb.lossy_counts().values().sum::<u64>(),
        2,
        "one NaN in the evidence sample, one log with non-finite attrs: {:?}",
        sb.lossy_counts()
    );

    // jsonb holds objects, not JSON strings (spec S6).
    let c = pg.sql().await;
    for (table, col) in [
        ("document_sections", "bbox_json"),
        ("api_endpoints", "params_json"),
        ("api_endpoints", "responses_json"),
        ("evidence", "full_data"),
        ("artifacts", "extras"),
    ] {
        let n: i64 = c
            .query_one(
                &format!("select count(*) from {table} where jsonb_typeof({col}) = 'string'"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table}.{col} holds JSON strings");
    }

    // reset clears the same document tables on both sides and keeps the cipher tables.
    lite.reset().await.unwrap();
    sb.reset().await.unwrap();
    for t in TABLES {
        let (l, r) = (
            lite.fetch(t, &[]).await.unwrap(),
            sb.fetch(t, &[]).await.unwrap(),
        );
        assert_eq!(l.len(), r.len(), "{} after reset", t.sqlite);
        assert_eq!(l.is_empty(), t.document_data, "{} after reset", t.sqlite);
    }
}

#[tokio::test]
async fn values_supabase_cannot_hold_are_refused_by_row_and_nothing_is_sent() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let sb = pg.supabase();
    let w = Write::from_call(
        "add_tag",
        json!({"tag": {"id": "nul-tag", "document_id": "d", "tag": "a\u{0}b"}}),
    )
    .unwrap();
    let e = sb.apply(w).await.unwrap_err().to_string();
    assert!(e.contains("tagrow row nul-tag") && e.contains("NUL"), "{e}");
    assert!(sb.fetch(&catalogue::TAGROW, &[]).await.unwrap().is_empty());
}

/// The typed `Dox` reads answer exactly what the generic `read` answers, for
/// the reads that gained a typed method (SQLite only: the backends are compared
/// above).
#[tokio::test]
async fn the_typed_reads_answer_what_the_generic_read_answers() {
    use dualwrite::db::LogFilter;
    let (_dir, db) = temp_sqlite().await;
    for w in script() {
        db.apply(w).await.unwrap();
    }
    let read = |m: &str, a: Value| Read::from_call(m, a).unwrap();
    let items = |v: Value| v.as_array().cloned().unwrap_or_default();
    let mut answered = 0;
    for (typed, generic) in [
        (
            db.list_summaries(None, None).await.unwrap(),
            read("list_summaries", json!({})),
        ),
        (
            db.list_entities(Some(PDF), None).await.unwrap(),
            read("list_entities", json!({"document_id": PDF})),
        ),
        (
            db.list_metric_hits(Some(XML), None).await.unwrap(),
            read("list_metric_hits", json!({"document_id": XML})),
        ),
        (
            db.list_logs(LogFilter::default()).await.unwrap(),
            read("list_logs", json!({})),
        ),
        (
            db.list_apis(None, None, None).await.unwrap(),
            read("list_apis", json!({})),
        ),
        (
            db.list_tag_prompt_history(PDF, 20).await.unwrap(),
            read("list_tag_prompt_history", json!({"document_id": PDF})),
        ),
        (
            db.list_log_messages(PDF).await.unwrap(),
            read("list_log_messages", json!({"document_id": PDF})),
        ),
    ] {
        let expected = items(db.read(generic).await.unwrap());
        answered += usize::from(!expected.is_empty());
        assert_eq!(typed, expected);
    }
    assert!(
        answered >= 4,
        "the samples hold rows for most of these reads"
    );
    let latest = db.get_latest_tag_prompt(PDF).await.unwrap();
    let generic = db
        .read(read("get_latest_tag_prompt", json!({"document_id": PDF})))
        .await
        .unwrap();
    assert_eq!(latest.unwrap_or(Value::Null), generic);
}

//! The sample DoX records of spec section 9 (`fixtures/samples.json`), as the
//! writes DoX would make to store them. Used by the demo and the tests.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::model::Write;
use crate::normalise::parse_json_text;

pub const SAMPLES: &str = include_str!("../fixtures/samples.json");

/// The sample rows per SQLite table, as stored.
pub fn rows() -> BTreeMap<String, Vec<Map<String, Value>>> {
    let v: Value = serde_json::from_str(SAMPLES).expect("fixtures/samples.json is JSON");
    serde_json::from_value(v["tables"].clone()).expect("fixtures/samples.json has tables")
}

fn parsed(row: &Map<String, Value>, key: &str) -> Value {
    match row.get(key) {
        Some(Value::String(s)) => parse_json_text(s).0,
        _ => Value::Null,
    }
}

/// Every sample record as the DoX write that stores it, parents first.
pub fn writes() -> Result<Vec<Write>> {
    let rows = rows();
    let mut out = Vec::new();
    let call = |m: &str, args: Value| Write::from_call(m, args);
    let direct = [
        ("artifact", "add_artifact", "artifact"),
        ("document", "add_document", "doc"),
        ("section", "add_section", "section"),
        ("doctable", "add_table", "table"),
        ("apiendpoint", "add_api", "api"),
        ("logentry", "add_log", "log"),
        ("tagrow", "add_tag", "tag"),
        ("evidence", "add_evidence", "evidence"),
        ("fact", "add_fact", "fact"),
        ("summaries", "store_summary", "summary"),
    ];
    for (table, method, arg) in direct {
        for r in &rows[table] {
            out.push(call(method, json!({ arg: r }))?);
        }
    }
    for r in &rows["tagprompt"] {
        out.push(call(
            "save_tag_prompt",
            json!({"document_id": r["document_id"], "prompt_text": r["prompt_text"],
                   "examples": parsed(r, "examples_json"), "author": r["author"],
                   "id": r["id"], "created_at": r["created_at"]}),
        )?);
    }
    for (table, method, list) in [
        ("document_entities", "store_entities", "entities"),
        ("document_metric_hits", "store_metric_hits", "metrics"),
    ] {
        let mut by_doc: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for r in &rows[table] {
            let doc = r["document_id"].as_str().unwrap_or_default().to_owned();
            by_doc
                .entry(doc)
                .or_default()
                .push(Value::Object(r.clone()));
        }
        for (doc, items) in by_doc {
            out.push(call(method, json!({"document_id": doc, list: items}))?);
        }
    }
    for r in &rows["document_structure"] {
        out.push(call(
            "store_structure",
            json!({"document_id": r["document_id"], "structure": parsed(r, "hierarchy_json")}),
        )?);
    }
    for r in &rows["cipher_memory"] {
        out.push(call(
            "add_memory",
            json!({"category": r["category"], "content": parsed(r, "content_json"),
                   "context": parsed(r, "context_json"), "user_id": r["user_id"],
                   "id": r["id"], "created_at": r["created_at"]}),
        )?);
    }
    for r in &rows["user_prefs"] {
        let Value::Object(prefs) = parsed(r, "preferences_json") else {
            return Err(Error::invalid("sample user_prefs must hold an object"));
        };
        for (k, v) in prefs {
            out.push(call(
                "set_user_pref",
                json!({"user_id": r["user_id"], "key": k, "value": v, "updated_at": r["updated_at"]}),
            )?);
        }
    }
    for r in &rows["skills_registry"] {
        out.push(call(
            "register_skill",
            json!({"name": r["name"], "description": r["description"],
                   "parameters": parsed(r, "parameters_json"), "workflow_def": parsed(r, "workflow_def_json"),
                   "enabled": r["enabled"] == json!(1), "id": r["id"], "created_at": r["created_at"]}),
        )?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_becomes_a_write() {
        let w = writes().unwrap();
        let methods: std::collections::BTreeSet<_> = w.iter().map(Write::method).collect();
        assert_eq!(methods.len(), 17, "{methods:?}");
        assert!(w.len() > 35);
    }
}

//! The record types, deserialised from the dicts the DoX application passes
//! (spec section 4), and the lenient field types they use.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::normalise::json_text;

/// JSON carried as text, as DoX stores it in `*_json` columns. Accepts either a
/// string (kept verbatim, even if it is not valid JSON: SQLite stores it so) or
/// any other JSON value (serialised).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct JsonText(pub String);

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::String(s) => JsonText(s),
            other => JsonText(json_text(&other)),
        })
    }
}

/// A string the original code coerced with `str()`: null becomes `""`, numbers
/// and booleans their text (spec B15).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[serde(transparent)]
pub struct LooseString(pub String);

impl<'de> Deserialize<'de> for LooseString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(LooseString(match Value::deserialize(d)? {
            Value::Null => String::new(),
            Value::String(s) => s,
            other => json_text(&other),
        }))
    }
}

fn loose_opt<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(json_text(&other)),
    })
}

fn empty_string() -> String {
    String::new()
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

pub(super) fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub id: String,
    pub filename: String,
    pub filepath: String,
    pub filetype: String,
    #[serde(default)]
    pub report_week: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub source_url: Option<String>,
    /// Free-form metadata (`extras`, or its alias `metadata`), stored as `extra_json`.
    #[serde(default, alias = "metadata")]
    pub extras: Option<Value>,
    /// The stored form: `extras` as JSON text (wins over `extras` when both are given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_json: Option<JsonText>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    pub id: String,
    #[serde(default = "empty_string")]
    pub artifact_id: String,
    #[serde(default)]
    pub report_week: Option<String>,
    #[serde(default)]
    pub entity: Option<String>,
    #[serde(default = "empty_object")]
    pub metrics: Value,
    /// The stored form of `metrics` (JSON text, wins when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_json: Option<JsonText>,
    #[serde(default)]
    pub evidence_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub id: String,
    #[serde(default = "empty_string")]
    pub artifact_id: String,
    #[serde(default)]
    pub locator: Option<String>,
    #[serde(default)]
    pub preview: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub coordinates: Option<Value>,
    #[serde(default)]
    pub full_data: Option<Value>,
    /// Stored forms (JSON text, which may hold Python's `NaN`); they win when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinates_json: Option<JsonText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_data_json: Option<JsonText>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub id: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub id: String,
    pub document_id: String,
    pub order: i64,
    pub text: String,
    #[serde(default)]
    pub page: Option<i64>,
    #[serde(default)]
    pub bbox_json: Option<JsonText>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocTable {
    pub id: String,
    pub document_id: String,
    pub order: i64,
    /// The table content; the key `json` (Supabase's column name) is accepted too.
    #[serde(alias = "json")]
    pub table_content_json: JsonText,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiEndpoint {
    pub id: String,
    pub document_id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub tags_json: Option<JsonText>,
    #[serde(default)]
    pub params_json: Option<JsonText>,
    #[serde(default)]
    pub responses_json: Option<JsonText>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub id: String,
    pub document_id: String,
    #[serde(default)]
    pub ts: Option<String>,
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub component: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, alias = "attrs")]
    pub attrs_json: Option<JsonText>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagRow {
    pub id: String,
    pub document_id: String,
    pub tag: String,
    #[serde(default)]
    pub score: Option<f64>,
    #[serde(default)]
    pub source_ptr: Option<String>,
    #[serde(default)]
    pub hrm_steps: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub scope_key: Option<String>,
    #[serde(default)]
    pub style: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub summary_text: Option<String>,
    #[serde(default)]
    pub artifact_ids: Option<Value>,
    #[serde(default)]
    pub evidence_ids: Option<Value>,
    /// Stored forms (JSON text); they win when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_ids_json: Option<JsonText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_ids_json: Option<JsonText>,
    #[serde(default)]
    pub created_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    #[serde(default, deserialize_with = "loose_opt")]
    pub id: Option<String>,
    #[serde(default)]
    pub label: LooseString,
    #[serde(default)]
    pub text: LooseString,
    #[serde(default)]
    pub start_char: Option<i64>,
    #[serde(default)]
    pub end_char: Option<i64>,
    #[serde(default)]
    pub page: Option<i64>,
    #[serde(default, alias = "entity_context")]
    pub context: Option<String>,
    #[serde(default)]
    pub source_index: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricHit {
    #[serde(default, deserialize_with = "loose_opt")]
    pub id: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: LooseString,
    #[serde(default, deserialize_with = "loose_opt")]
    pub value: Option<String>,
    #[serde(default, alias = "metric_context")]
    pub context: Option<String>,
    #[serde(default)]
    pub position: Option<i64>,
    #[serde(default)]
    pub page: Option<i64>,
    #[serde(default)]
    pub source_index: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchChunk {
    pub id: String,
    #[serde(default)]
    pub document_id: Option<String>,
    #[serde(default)]
    pub source_type: Option<String>,
    #[serde(default)]
    pub chunk_index: Option<i64>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub meta: Option<Value>,
    #[serde(default)]
    pub embedding: Option<Vec<f64>>,
}

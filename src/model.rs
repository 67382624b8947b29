//! The DoX storage interface as data.
//!
//! Every named write method is a variant of [`Write`], every read a variant of
//! [`Read`]. The dual layer mirrors a `Write` value, a later outbox can record it
//! in the primary's transaction and replay it, and the command line builds one
//! from `METHOD --json ARGS`. The typed methods of [`crate::db::Dox`] are thin
//! wrappers that build these values.
//!
//! Records deserialise from the dicts the DoX application passes (spec section 4).
//! As the original SQLite layer did, record keys that are not columns are
//! ignored; the method's own arguments, however, are checked strictly.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::catalogue::{self, Table};
use crate::error::{Error, Result};
use crate::normalise::{json_text, now_text, SqlRow, SqlValue};

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

fn yes() -> bool {
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

/// One named write of the DoX storage interface (the 21 of `WRITE_METHODS` plus
/// `update_artifact`). Fields that the original generated separately on each
/// side (ids, timestamps) are filled once by [`Write::prepare`], so both sides
/// store the same values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "method",
    content = "args",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum Write {
    AddArtifact {
        artifact: Artifact,
    },
    AddFact {
        fact: Fact,
    },
    AddEvidence {
        evidence: Evidence,
    },
    AddDocument {
        doc: Document,
    },
    AddSection {
        section: Section,
    },
    AddTable {
        table: DocTable,
    },
    AddApi {
        api: ApiEndpoint,
    },
    AddLog {
        log: LogEntry,
    },
    AddTag {
        tag: TagRow,
    },
    SaveTagPrompt {
        document_id: String,
        prompt_text: String,
        #[serde(default)]
        examples: Option<Value>,
        #[serde(default)]
        author: Option<String>,
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        created_at: Option<String>,
    },
    Reset {},
    ResetSearchChunks {},
    StoreSearchChunks {
        chunks: Vec<SearchChunk>,
    },
    StoreEntities {
        document_id: String,
        entities: Vec<Entity>,
    },
    StoreStructure {
        document_id: String,
        #[serde(default)]
        structure: Option<Value>,
    },
    StoreMetricHits {
        document_id: String,
        metrics: Vec<MetricHit>,
    },
    StoreSummary {
        summary: Summary,
    },
    AddMemory {
        category: String,
        content: Value,
        #[serde(default)]
        context: Option<Value>,
        #[serde(default)]
        user_id: Option<String>,
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        created_at: Option<String>,
    },
    SetUserPref {
        user_id: String,
        key: String,
        value: Value,
        #[serde(default)]
        updated_at: Option<String>,
        /// The whole preferences object after the change, when the primary has
        /// resolved it; a mirror then writes it as is instead of merging.
        #[serde(default)]
        preferences: Option<Map<String, Value>>,
    },
    RegisterSkill {
        name: String,
        description: String,
        parameters: Value,
        workflow_def: Value,
        #[serde(default = "yes")]
        enabled: bool,
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        created_at: Option<String>,
    },
    UpdateSkill {
        skill_id: String,
        enabled: bool,
    },
    UpdateArtifact {
        artifact_id: String,
        /// Columns to set (`filename`, `filepath`, `filetype`, `report_week`,
        /// `status`, `source_url`, `extras`).
        fields: Map<String, Value>,
        /// `extras` is shallow-merged into the stored extras (the DoX behaviour)
        /// unless this is false, which a primary sets once it has resolved the
        /// merged object.
        #[serde(default = "yes")]
        merge_extras: bool,
    },
}

/// The write method names, in the order of spec section 4, plus `update_artifact`.
pub const WRITE_METHODS: [&str; 22] = [
    "add_artifact",
    "add_fact",
    "add_evidence",
    "add_document",
    "add_section",
    "add_table",
    "add_api",
    "add_log",
    "add_tag",
    "save_tag_prompt",
    "reset",
    "reset_search_chunks",
    "store_search_chunks",
    "store_entities",
    "store_structure",
    "store_metric_hits",
    "store_summary",
    "add_memory",
    "set_user_pref",
    "register_skill",
    "update_skill",
    "update_artifact",
];

const ARTIFACT_FIELDS: [&str; 7] = [
    "filename",
    "filepath",
    "filetype",
    "report_week",
    "status",
    "source_url",
    "extras",
];

/// One step of a write that maps directly onto table rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Insert or replace whole rows by key.
    Upsert {
        table: &'static Table,
        rows: Vec<SqlRow>,
    },
    /// Delete the rows whose `column` equals `value`.
    DeleteWhere {
        table: &'static Table,
        column: &'static str,
        value: String,
    },
    /// Delete every row of the table.
    DeleteAll { table: &'static Table },
}

impl Write {
    /// The method name (`add_artifact`, ...).
    pub fn method(&self) -> &'static str {
        match self {
            Write::AddArtifact { .. } => "add_artifact",
            Write::AddFact { .. } => "add_fact",
            Write::AddEvidence { .. } => "add_evidence",
            Write::AddDocument { .. } => "add_document",
            Write::AddSection { .. } => "add_section",
            Write::AddTable { .. } => "add_table",
            Write::AddApi { .. } => "add_api",
            Write::AddLog { .. } => "add_log",
            Write::AddTag { .. } => "add_tag",
            Write::SaveTagPrompt { .. } => "save_tag_prompt",
            Write::Reset {} => "reset",
            Write::ResetSearchChunks {} => "reset_search_chunks",
            Write::StoreSearchChunks { .. } => "store_search_chunks",
            Write::StoreEntities { .. } => "store_entities",
            Write::StoreStructure { .. } => "store_structure",
            Write::StoreMetricHits { .. } => "store_metric_hits",
            Write::StoreSummary { .. } => "store_summary",
            Write::AddMemory { .. } => "add_memory",
            Write::SetUserPref { .. } => "set_user_pref",
            Write::RegisterSkill { .. } => "register_skill",
            Write::UpdateSkill { .. } => "update_skill",
            Write::UpdateArtifact { .. } => "update_artifact",
        }
    }

    /// The SQLite table the write is about (for logs and failure records).
    pub fn table(&self) -> &'static str {
        use catalogue as c;
        match self {
            Write::AddArtifact { .. } | Write::UpdateArtifact { .. } => c::ARTIFACT.sqlite,
            Write::AddFact { .. } => c::FACT.sqlite,
            Write::AddEvidence { .. } => c::EVIDENCE.sqlite,
            Write::AddDocument { .. } => c::DOCUMENT.sqlite,
            Write::AddSection { .. } => c::SECTION.sqlite,
            Write::AddTable { .. } => c::DOCTABLE.sqlite,
            Write::AddApi { .. } => c::APIENDPOINT.sqlite,
            Write::AddLog { .. } => c::LOGENTRY.sqlite,
            Write::AddTag { .. } => c::TAGROW.sqlite,
            Write::SaveTagPrompt { .. } => c::TAGPROMPT.sqlite,
            Write::Reset {} => "*",
            Write::ResetSearchChunks {} | Write::StoreSearchChunks { .. } => {
                c::SEARCH_CHUNKS.sqlite
            }
            Write::StoreEntities { .. } => c::DOCUMENT_ENTITIES.sqlite,
            Write::StoreStructure { .. } => c::DOCUMENT_STRUCTURE.sqlite,
            Write::StoreMetricHits { .. } => c::DOCUMENT_METRIC_HITS.sqlite,
            Write::StoreSummary { .. } => c::SUMMARIES.sqlite,
            Write::AddMemory { .. } => c::CIPHER_MEMORY.sqlite,
            Write::SetUserPref { .. } => c::USER_PREFS.sqlite,
            Write::RegisterSkill { .. } | Write::UpdateSkill { .. } => c::SKILLS_REGISTRY.sqlite,
        }
    }

    /// The key of the row (or document) the write touches, for logs and records.
    pub fn key(&self) -> String {
        let k: Option<&str> = match self {
            Write::AddArtifact { artifact } => Some(&artifact.id),
            Write::AddFact { fact } => Some(&fact.id),
            Write::AddEvidence { evidence } => Some(&evidence.id),
            Write::AddDocument { doc } => Some(&doc.id),
            Write::AddSection { section } => Some(&section.id),
            Write::AddTable { table } => Some(&table.id),
            Write::AddApi { api } => Some(&api.id),
            Write::AddLog { log } => Some(&log.id),
            Write::AddTag { tag } => Some(&tag.id),
            Write::SaveTagPrompt { id, .. } | Write::AddMemory { id, .. } => id.as_deref(),
            Write::Reset {} | Write::ResetSearchChunks {} => Some("*"),
            Write::StoreSearchChunks { chunks } => {
                return format!("{} chunks", chunks.len());
            }
            Write::StoreEntities { document_id, .. }
            | Write::StoreStructure { document_id, .. }
            | Write::StoreMetricHits { document_id, .. } => Some(document_id),
            Write::StoreSummary { summary } => summary.id.as_deref(),
            Write::SetUserPref { user_id, .. } => Some(user_id),
            Write::RegisterSkill { name, .. } => Some(name),
            Write::UpdateSkill { skill_id, .. } => Some(skill_id),
            Write::UpdateArtifact { artifact_id, .. } => Some(artifact_id),
        };
        k.unwrap_or("(new)").to_owned()
    }

    /// Parse `METHOD` and its JSON arguments, as `dualwrite call` and scripts pass them.
    ///
    /// `update_artifact` also takes its fields flattened, like the Python
    /// signature `update_artifact(artifact_id, **fields)`.
    pub fn from_call(method: &str, args: Value) -> Result<Write> {
        if !WRITE_METHODS.contains(&method) {
            return Err(Error::invalid(format!("unknown write method `{method}`")));
        }
        let mut args = match args {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                return Err(Error::invalid(format!(
                    "{method}: arguments must be a JSON object, got {}",
                    type_name(&other)
                )))
            }
        };
        if method == "update_artifact" && !args.contains_key("fields") {
            let id = args.remove("artifact_id");
            let merge = args.remove("merge_extras");
            let fields = Value::Object(std::mem::take(&mut args));
            args.insert("fields".into(), fields);
            if let Some(id) = id {
                args.insert("artifact_id".into(), id);
            }
            if let Some(m) = merge {
                args.insert("merge_extras".into(), m);
            }
        }
        let call = serde_json::json!({"method": method, "args": args});
        let w: Write =
            serde_json::from_value(call).map_err(|e| Error::invalid(format!("{method}: {e}")))?;
        w.validate()?;
        Ok(w)
    }

    /// Checks serde cannot express.
    pub fn validate(&self) -> Result<()> {
        if let Write::UpdateArtifact { fields, .. } = self {
            for k in fields.keys() {
                if !ARTIFACT_FIELDS.contains(&k.as_str()) {
                    return Err(Error::invalid(format!(
                        "update_artifact: unknown field `{k}` (allowed: {})",
                        ARTIFACT_FIELDS.join(", ")
                    )));
                }
            }
            if let Some(e) = fields.get("extras") {
                if !(e.is_object() || e.is_null()) {
                    return Err(Error::invalid(
                        "update_artifact: `extras` must be an object",
                    ));
                }
            }
            for (k, v) in fields {
                if k != "extras" && !(v.is_string() || v.is_null()) {
                    return Err(Error::invalid(format!(
                        "update_artifact: `{k}` must be a string or null"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Fill in, once, the values the original generated separately on each side
    /// (ids, timestamps, summary defaults), so that primary and mirror store the
    /// same row. Idempotent: values already present are kept.
    pub fn prepare(&mut self) {
        let new_id = || uuid::Uuid::new_v4().to_string();
        match self {
            Write::SaveTagPrompt { id, created_at, .. }
            | Write::AddMemory { id, created_at, .. } => {
                id.get_or_insert_with(new_id);
                created_at.get_or_insert_with(now_text);
            }
            Write::RegisterSkill { id, created_at, .. } => {
                id.get_or_insert_with(new_id);
                created_at.get_or_insert_with(now_text);
            }
            Write::StoreSummary { summary } => {
                summary.id.get_or_insert_with(new_id);
                let scope = summary
                    .scope
                    .get_or_insert_with(|| "workspace".into())
                    .clone();
                summary.scope_key.get_or_insert(scope);
                summary.style.get_or_insert_with(|| "bullet".into());
                summary.summary_text.get_or_insert_with(String::new);
                if summary.artifact_ids_json.is_none() {
                    summary
                        .artifact_ids
                        .get_or_insert_with(|| Value::Array(vec![]));
                }
                if summary.evidence_ids_json.is_none() {
                    summary
                        .evidence_ids
                        .get_or_insert_with(|| Value::Array(vec![]));
                }
                summary.created_at.get_or_insert_with(now_text);
            }
            Write::StoreEntities { entities, .. } => {
                for e in entities {
                    e.id.get_or_insert_with(new_id);
                }
            }
            Write::StoreMetricHits { metrics, .. } => {
                for m in metrics {
                    m.id.get_or_insert_with(new_id);
                }
            }
            Write::SetUserPref { updated_at, .. } => {
                updated_at.get_or_insert_with(now_text);
            }
            _ => {}
        }
    }

    /// The row a read-modify-write depends on, as `(table, key column (its
    /// name, the same in SQLite and Supabase), key value)`: the backend reads
    /// it (in the same transaction where it can) and hands it to
    /// [`Write::resolve`]. `update_artifact` needs it even once resolved (an
    /// update of a missing artifact does nothing). `None` for every other write.
    pub fn current_row(&self) -> Option<(&'static Table, &'static str, &str)> {
        use catalogue as c;
        match self {
            Write::SetUserPref {
                user_id,
                preferences: None,
                ..
            } => Some((&c::USER_PREFS, "user_id", user_id)),
            Write::RegisterSkill { name, .. } => Some((&c::SKILLS_REGISTRY, "name", name)),
            Write::UpdateArtifact { artifact_id, .. } => Some((&c::ARTIFACT, "id", artifact_id)),
            _ => None,
        }
    }

    /// Resolve a read-modify-write against the current row (canonical form,
    /// keyed by Supabase column names; `None`: there is none). Pure: every
    /// backend resolves the same way, and the resolved write is what a mirror
    /// receives. `set_user_pref` gets the merged preferences (after which
    /// [`Write::steps`] maps it onto a row); `register_skill` keeps an existing
    /// skill's `id` and `created_at`; `update_artifact` gets its `extras`
    /// shallow-merged into the stored ones. Other writes are left as they are.
    pub fn resolve(&mut self, current: Option<&Map<String, Value>>) {
        match self {
            Write::SetUserPref {
                key,
                value,
                preferences: preferences @ None,
                ..
            } => {
                let mut prefs = stored_object(current.and_then(|r| r.get("preferences")));
                prefs.insert(key.clone(), value.clone());
                *preferences = Some(prefs);
            }
            Write::RegisterSkill { id, created_at, .. } => {
                // Like DoX's SQLite layer: a skill registered again keeps its id and created_at.
                if let Some(row) = current {
                    let text = |c: &str| match row.get(c) {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(v) => Some(v.to_string()),
                    };
                    *id = text("id");
                    *created_at = text("created_at");
                }
            }
            Write::UpdateArtifact {
                fields,
                merge_extras,
                ..
            } if *merge_extras => {
                if let Some(extras) = fields.get_mut("extras") {
                    let mut merged = stored_object(current.and_then(|r| r.get("extras")));
                    if let Value::Object(new) = extras.take() {
                        merged.extend(new);
                    }
                    *extras = Value::Object(merged);
                }
                *merge_extras = false;
            }
            _ => {}
        }
    }

    /// What the method returns to its caller once the write is applied, for
    /// the writes that map onto rows (spec section 4, "returns").
    pub fn return_value(&self) -> Value {
        match self {
            Write::AddArtifact { artifact } => serde_json::json!(artifact.id),
            Write::AddDocument { doc } => serde_json::json!(doc.id),
            Write::SaveTagPrompt { id, .. } | Write::AddMemory { id, .. } => serde_json::json!(id),
            Write::StoreSummary { summary } => serde_json::json!(summary.id),
            _ => Value::Null,
        }
    }

    /// The write as table steps, for every write that maps directly onto rows.
    /// `None` for the read-modify-write methods (`set_user_pref` before
    /// [`Write::resolve`], `register_skill`, `update_skill`, `update_artifact`:
    /// updates of existing rows), which each backend executes itself after
    /// resolving them the shared way. Call [`Write::prepare`] first.
    pub fn steps(&self) -> Option<Vec<Step>> {
        use catalogue as c;
        let one = |table: &'static Table, row: SqlRow| {
            Some(vec![Step::Upsert {
                table,
                rows: vec![row],
            }])
        };
        match self {
            Write::AddArtifact { artifact: a } => one(
                &c::ARTIFACT,
                vec![
                    SqlValue::text(&a.id),
                    SqlValue::text(&a.filename),
                    SqlValue::text(&a.filepath),
                    SqlValue::text(&a.filetype),
                    SqlValue::opt_text(a.report_week.as_ref()),
                    SqlValue::opt_text(a.status.as_ref()),
                    SqlValue::opt_text(a.source_url.as_ref()),
                    json_or_text(a.extras.as_ref(), a.extra_json.as_ref()),
                ],
            ),
            Write::AddFact { fact: f } => one(
                &c::FACT,
                vec![
                    SqlValue::text(&f.id),
                    SqlValue::text(&f.artifact_id),
                    SqlValue::opt_text(f.report_week.as_ref()),
                    SqlValue::opt_text(f.entity.as_ref()),
                    match &f.metrics_json {
                        Some(t) => SqlValue::text(&t.0),
                        None => SqlValue::Text(json_text(&f.metrics)),
                    },
                    SqlValue::opt_text(f.evidence_id.as_ref()),
                ],
            ),
            Write::AddEvidence { evidence: e } => one(
                &c::EVIDENCE,
                vec![
                    SqlValue::text(&e.id),
                    SqlValue::text(&e.artifact_id),
                    SqlValue::opt_text(e.locator.as_ref()),
                    SqlValue::opt_text(e.preview.as_ref()),
                    SqlValue::opt_text(e.content_type.as_ref()),
                    json_or_text(e.coordinates.as_ref(), e.coordinates_json.as_ref()),
                    json_or_text(e.full_data.as_ref(), e.full_data_json.as_ref()),
                ],
            ),
            Write::AddDocument { doc: d } => one(
                &c::DOCUMENT,
                vec![
                    SqlValue::text(&d.id),
                    SqlValue::text(&d.path),
                    SqlValue::text(&d.kind),
                    SqlValue::opt_text(d.title.as_ref()),
                    SqlValue::opt_text(d.source.as_ref()),
                    SqlValue::opt_text(d.created_at.as_ref()),
                ],
            ),
            Write::AddSection { section: s } => one(
                &c::SECTION,
                vec![
                    SqlValue::text(&s.id),
                    SqlValue::text(&s.document_id),
                    SqlValue::Integer(s.order),
                    SqlValue::text(&s.text),
                    SqlValue::opt_int(s.page),
                    opt_json_text(s.bbox_json.as_ref()),
                ],
            ),
            Write::AddTable { table: t } => one(
                &c::DOCTABLE,
                vec![
                    SqlValue::text(&t.id),
                    SqlValue::text(&t.document_id),
                    SqlValue::Integer(t.order),
                    SqlValue::text(&t.table_content_json.0),
                ],
            ),
            Write::AddApi { api: a } => one(
                &c::APIENDPOINT,
                vec![
                    SqlValue::text(&a.id),
                    SqlValue::text(&a.document_id),
                    SqlValue::opt_text(a.name.as_ref()),
                    SqlValue::text(&a.method),
                    SqlValue::text(&a.path),
                    SqlValue::opt_text(a.summary.as_ref()),
                    opt_json_text(a.tags_json.as_ref()),
                    opt_json_text(a.params_json.as_ref()),
                    opt_json_text(a.responses_json.as_ref()),
                ],
            ),
            Write::AddLog { log: l } => one(
                &c::LOGENTRY,
                vec![
                    SqlValue::text(&l.id),
                    SqlValue::text(&l.document_id),
                    SqlValue::opt_text(l.ts.as_ref()),
                    SqlValue::opt_text(l.level.as_ref()),
                    SqlValue::opt_text(l.code.as_ref()),
                    SqlValue::opt_text(l.component.as_ref()),
                    SqlValue::opt_text(l.message.as_ref()),
                    opt_json_text(l.attrs_json.as_ref()),
                ],
            ),
            Write::AddTag { tag: t } => one(
                &c::TAGROW,
                vec![
                    SqlValue::text(&t.id),
                    SqlValue::text(&t.document_id),
                    SqlValue::text(&t.tag),
                    t.score.map_or(SqlValue::Null, SqlValue::Real),
                    SqlValue::opt_text(t.source_ptr.as_ref()),
                    SqlValue::opt_int(t.hrm_steps),
                ],
            ),
            Write::SaveTagPrompt {
                document_id,
                prompt_text,
                examples,
                author,
                id,
                created_at,
            } => one(
                &c::TAGPROMPT,
                vec![
                    SqlValue::opt_text(id.as_ref()),
                    SqlValue::text(document_id),
                    SqlValue::text(prompt_text),
                    opt_json(examples.as_ref()),
                    SqlValue::opt_text(created_at.as_ref()),
                    SqlValue::opt_text(author.as_ref()),
                ],
            ),
            Write::Reset {} => Some(
                catalogue::TABLES
                    .iter()
                    .filter(|t| t.document_data)
                    .map(|t| Step::DeleteAll { table: t })
                    .collect(),
            ),
            Write::ResetSearchChunks {} => Some(vec![Step::DeleteAll {
                table: &c::SEARCH_CHUNKS,
            }]),
            Write::StoreSearchChunks { chunks } => {
                let rows = last_per_key(chunks.iter().filter_map(search_chunk_row).collect());
                Some(vec![Step::Upsert {
                    table: &c::SEARCH_CHUNKS,
                    rows,
                }])
            }
            Write::StoreEntities {
                document_id,
                entities,
            } => {
                let rows = entities
                    .iter()
                    .map(|e| {
                        vec![
                            SqlValue::opt_text(e.id.as_ref()),
                            SqlValue::text(document_id),
                            SqlValue::text(&e.label.0),
                            SqlValue::text(&e.text.0),
                            SqlValue::opt_int(e.start_char),
                            SqlValue::opt_int(e.end_char),
                            SqlValue::opt_int(e.page),
                            SqlValue::opt_text(e.context.as_ref()),
                            SqlValue::opt_int(e.source_index),
                        ]
                    })
                    .collect();
                Some(replace_steps(&c::DOCUMENT_ENTITIES, document_id, rows))
            }
            Write::StoreMetricHits {
                document_id,
                metrics,
            } => {
                let rows = metrics
                    .iter()
                    .map(|m| {
                        vec![
                            SqlValue::opt_text(m.id.as_ref()),
                            SqlValue::text(document_id),
                            SqlValue::text(&m.kind.0),
                            SqlValue::opt_text(m.value.as_ref()),
                            SqlValue::opt_text(m.context.as_ref()),
                            SqlValue::opt_int(m.position),
                            SqlValue::opt_int(m.page),
                            SqlValue::opt_int(m.source_index),
                        ]
                    })
                    .collect();
                Some(replace_steps(&c::DOCUMENT_METRIC_HITS, document_id, rows))
            }
            Write::StoreStructure {
                document_id,
                structure,
            } => Some(match structure {
                None | Some(Value::Null) => vec![Step::DeleteWhere {
                    table: &c::DOCUMENT_STRUCTURE,
                    column: "document_id",
                    value: document_id.clone(),
                }],
                Some(s) => vec![Step::Upsert {
                    table: &c::DOCUMENT_STRUCTURE,
                    rows: vec![vec![
                        SqlValue::text(document_id),
                        SqlValue::Text(json_text(s)),
                    ]],
                }],
            }),
            Write::StoreSummary { summary: s } => one(
                &c::SUMMARIES,
                vec![
                    SqlValue::opt_text(s.id.as_ref()),
                    SqlValue::opt_text(s.scope.as_ref()),
                    SqlValue::opt_text(s.scope_key.as_ref()),
                    SqlValue::opt_text(s.style.as_ref()),
                    SqlValue::opt_text(s.provider.as_ref()),
                    SqlValue::opt_text(s.prompt.as_ref()),
                    SqlValue::opt_text(s.summary_text.as_ref()),
                    json_or_text(s.artifact_ids.as_ref(), s.artifact_ids_json.as_ref()),
                    json_or_text(s.evidence_ids.as_ref(), s.evidence_ids_json.as_ref()),
                    SqlValue::opt_text(s.created_at.as_ref()),
                ],
            ),
            Write::AddMemory {
                category,
                content,
                context,
                user_id,
                id,
                created_at,
            } => one(
                &c::CIPHER_MEMORY,
                vec![
                    SqlValue::opt_text(id.as_ref()),
                    SqlValue::text(category),
                    SqlValue::Text(json_text(content)),
                    // DoX stores the context only when it is truthy.
                    match context {
                        Some(v) if truthy(v) => SqlValue::Text(json_text(v)),
                        _ => SqlValue::Null,
                    },
                    SqlValue::opt_text(user_id.as_ref()),
                    SqlValue::opt_text(created_at.as_ref()),
                ],
            ),
            Write::SetUserPref {
                user_id,
                preferences: Some(prefs),
                updated_at,
                ..
            } => one(
                &c::USER_PREFS,
                user_prefs_row(user_id, prefs, updated_at.as_deref()),
            ),
            Write::SetUserPref { .. }
            | Write::RegisterSkill { .. }
            | Write::UpdateSkill { .. }
            | Write::UpdateArtifact { .. } => None,
        }
    }
}

/// The `skills_registry` row of a newly registered skill.
pub fn skill_row(
    id: Option<&String>,
    name: &str,
    description: &str,
    parameters: &Value,
    workflow_def: &Value,
    enabled: bool,
    created_at: Option<&String>,
) -> SqlRow {
    vec![
        SqlValue::opt_text(id),
        SqlValue::text(name),
        SqlValue::text(description),
        SqlValue::Text(json_text(parameters)),
        SqlValue::Text(json_text(workflow_def)),
        SqlValue::Integer(i64::from(enabled)),
        SqlValue::opt_text(created_at),
    ]
}

/// The `user_prefs` row holding a whole preferences object.
pub fn user_prefs_row(
    user_id: &str,
    prefs: &Map<String, Value>,
    updated_at: Option<&str>,
) -> SqlRow {
    vec![
        SqlValue::text(user_id),
        SqlValue::Text(json_text(&Value::Object(prefs.clone()))),
        SqlValue::opt_text(updated_at),
    ]
}

fn replace_steps(table: &'static Table, document_id: &str, rows: Vec<SqlRow>) -> Vec<Step> {
    let rows = last_per_key(rows);
    let mut steps = vec![Step::DeleteWhere {
        table,
        column: "document_id",
        value: document_id.to_owned(),
    }];
    if !rows.is_empty() {
        steps.push(Step::Upsert { table, rows });
    }
    steps
}

/// One row per key (the key is the first value), the last one given winning,
/// in the order of those last ones. SQLite would keep the last of a repeated
/// key, while PostgreSQL refuses a whole upsert that names a key twice (21000,
/// after the write's delete step already ran): so both get the rows deduplicated.
/// Rows without a text key yet (not prepared) are all kept.
fn last_per_key(rows: Vec<SqlRow>) -> Vec<SqlRow> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<SqlRow> = rows
        .into_iter()
        .rev()
        .filter(|r| match r.first() {
            Some(SqlValue::Text(k)) => seen.insert(k.clone()),
            _ => true,
        })
        .collect();
    out.reverse();
    out
}

/// Supabase's adapter skips chunks without an embedding and falls back to `meta`
/// for `document_id` and `source_type` (spec 4, #13).
fn search_chunk_row(c: &SearchChunk) -> Option<SqlRow> {
    let embedding = c.embedding.as_ref()?;
    let meta = c.meta.as_ref();
    let meta_str = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let document_id = c
        .document_id
        .clone()
        .or_else(|| meta_str("artifact_id"))
        .or_else(|| meta_str("document_id"));
    let source_type = c.source_type.clone().or_else(|| meta_str("type"));
    Some(vec![
        SqlValue::text(&c.id),
        SqlValue::opt_text(document_id),
        SqlValue::opt_text(source_type),
        SqlValue::opt_int(c.chunk_index),
        SqlValue::opt_text(c.text.as_ref()),
        opt_json(c.meta.as_ref()),
        SqlValue::Text(json_text(&serde_json::json!(embedding))),
    ])
}

fn opt_json(v: Option<&Value>) -> SqlValue {
    match v {
        None | Some(Value::Null) => SqlValue::Null,
        Some(v) => SqlValue::Text(json_text(v)),
    }
}

/// A JSON argument given either as a value or in its stored form (text).
fn json_or_text(v: Option<&Value>, text: Option<&JsonText>) -> SqlValue {
    match text {
        Some(t) => SqlValue::text(&t.0),
        None => opt_json(v),
    }
}

fn opt_json_text(v: Option<&JsonText>) -> SqlValue {
    v.map_or(SqlValue::Null, |t| SqlValue::text(&t.0))
}

/// Python truthiness of a JSON value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One read of the DoX storage interface (spec section 5), plus `has_tag` on
/// every backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "method",
    content = "args",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum Read {
    GetArtifacts {},
    GetFacts {
        #[serde(default)]
        report_week: Option<String>,
    },
    GetEvidence {
        evidence_id: String,
    },
    GetAllEvidence {},
    GetSummary {
        scope_key: String,
        style: String,
    },
    ListSummaries {
        #[serde(default)]
        scope: Option<String>,
        #[serde(default)]
        style: Option<String>,
    },
    ListDocuments {
        #[serde(default, rename = "type")]
        kind: Option<String>,
    },
    ListEntities {
        #[serde(default)]
        document_id: Option<String>,
        #[serde(default)]
        label: Option<String>,
    },
    GetStructure {
        document_id: String,
    },
    ListMetricHits {
        #[serde(default)]
        document_id: Option<String>,
        #[serde(default)]
        metric_type: Option<String>,
    },
    ListLogs {
        #[serde(default)]
        level: Option<String>,
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        q: Option<String>,
        #[serde(default)]
        ts_from: Option<String>,
        #[serde(default)]
        ts_to: Option<String>,
        #[serde(default)]
        document_id: Option<String>,
    },
    ListApis {
        #[serde(default)]
        tag: Option<String>,
        #[serde(default)]
        method: Option<String>,
        #[serde(default)]
        path_like: Option<String>,
    },
    ListTags {
        #[serde(default)]
        document_id: Option<String>,
        #[serde(default)]
        q: Option<String>,
    },
    HasTag {
        document_id: String,
        tag: String,
    },
    GetLatestTagPrompt {
        document_id: String,
    },
    ListTagPromptHistory {
        document_id: String,
        #[serde(default = "twenty")]
        limit: usize,
    },
    ListLogMessages {
        document_id: String,
    },
    SearchMemory {
        #[serde(default)]
        category: Option<String>,
        #[serde(default = "ten")]
        limit: usize,
        #[serde(default)]
        q: Option<String>,
        #[serde(default)]
        user_id: Option<String>,
    },
    GetUserPrefs {
        user_id: String,
    },
    ListSkills {
        #[serde(default = "yes")]
        enabled_only: bool,
    },
}

fn ten() -> usize {
    10
}

fn twenty() -> usize {
    20
}

pub const READ_METHODS: [&str; 20] = [
    "get_artifacts",
    "get_facts",
    "get_evidence",
    "get_all_evidence",
    "get_summary",
    "list_summaries",
    "list_documents",
    "list_entities",
    "get_structure",
    "list_metric_hits",
    "list_logs",
    "list_apis",
    "list_tags",
    "has_tag",
    "get_latest_tag_prompt",
    "list_tag_prompt_history",
    "list_log_messages",
    "search_memory",
    "get_user_prefs",
    "list_skills",
];

impl Read {
    pub fn from_call(method: &str, args: Value) -> Result<Read> {
        if !READ_METHODS.contains(&method) {
            return Err(Error::invalid(format!("unknown read method `{method}`")));
        }
        let args = match args {
            Value::Null => Value::Object(Map::new()),
            Value::Object(m) => Value::Object(m),
            other => {
                return Err(Error::invalid(format!(
                    "{method}: arguments must be a JSON object, got {}",
                    type_name(&other)
                )))
            }
        };
        serde_json::from_value(serde_json::json!({"method": method, "args": args}))
            .map_err(|e| Error::invalid(format!("{method}: {e}")))
    }
}

/// A write or a read, as named on the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Write(Write),
    Read(Read),
}

impl Call {
    pub fn parse(method: &str, args: Value) -> Result<Call> {
        if WRITE_METHODS.contains(&method) {
            Write::from_call(method, args).map(Call::Write)
        } else if READ_METHODS.contains(&method) {
            Read::from_call(method, args).map(Call::Read)
        } else {
            Err(Error::invalid(format!(
                "unknown method `{method}`; writes: {}; reads: {}",
                WRITE_METHODS.join(", "),
                READ_METHODS.join(", ")
            )))
        }
    }
}

/// A stored JSON object (preferences, extras): an object as is, a JSON string
/// holding an object decoded (DoX decodes extras stored as a string), anything
/// else empty.
fn stored_object(v: Option<&Value>) -> Map<String, Value> {
    match v {
        Some(Value::Object(o)) => o.clone(),
        Some(Value::String(s)) => match crate::normalise::parse_json_text(s) {
            (Value::Object(o), None) => o,
            _ => Map::new(),
        },
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_merges_preferences_and_extras_and_keeps_an_existing_skill() {
        let mut w = Write::from_call(
            "set_user_pref",
            serde_json::json!({"user_id": "u", "key": "b", "value": 2}),
        )
        .unwrap();
        assert!(w.steps().is_none(), "unresolved: no steps yet");
        let current = serde_json::json!({"user_id": "u", "preferences": {"a": 1, "b": 0}});
        w.resolve(current.as_object());
        let Write::SetUserPref { preferences, .. } = &w else {
            unreachable!()
        };
        assert_eq!(
            Value::Object(preferences.clone().unwrap()),
            serde_json::json!({"a": 1, "b": 2})
        );
        assert!(w.steps().is_some(), "resolved: a plain upsert");
        assert!(w.current_row().is_none(), "resolved once");

        let mut w = Write::from_call(
            "update_artifact",
            serde_json::json!({"artifact_id": "a1", "fields": {"extras": {"n": 1}}}),
        )
        .unwrap();
        // Extras stored as a JSON string are decoded (DoX does).
        let current = serde_json::json!({"id": "a1", "extras": "{\"m\": 0, \"n\": 0}"});
        w.resolve(current.as_object());
        let Write::UpdateArtifact {
            fields,
            merge_extras,
            ..
        } = &w
        else {
            unreachable!()
        };
        assert_eq!(fields["extras"], serde_json::json!({"m": 0, "n": 1}));
        assert!(!merge_extras, "a mirror writes the merged object as is");

        let args = serde_json::json!({"name": "s", "description": "d", "parameters": {},
            "workflow_def": {}, "id": "new", "created_at": "2026-01-01T00:00:00Z"});
        let mut w = Write::from_call("register_skill", args.clone()).unwrap();
        w.resolve(None);
        let Write::RegisterSkill { id, .. } = &w else {
            unreachable!()
        };
        assert_eq!(id.as_deref(), Some("new"), "a new skill keeps its own id");
        let mut w = Write::from_call("register_skill", args).unwrap();
        let current =
            serde_json::json!({"id": "old", "name": "s", "created_at": "2020-01-01T00:00:00Z"});
        w.resolve(current.as_object());
        let Write::RegisterSkill { id, created_at, .. } = &w else {
            unreachable!()
        };
        assert_eq!(id.as_deref(), Some("old"));
        assert_eq!(created_at.as_deref(), Some("2020-01-01T00:00:00Z"));
    }
    use serde_json::json;

    #[test]
    fn every_method_name_round_trips() {
        for m in WRITE_METHODS {
            let err = Write::from_call(m, json!({})).err();
            // Methods without required arguments parse; the others name a missing field.
            if let Some(e) = err {
                assert!(e.to_string().contains("missing field"), "{m}: {e}");
            }
        }
        for m in READ_METHODS {
            if let Err(e) = Read::from_call(m, json!({})) {
                assert!(e.to_string().contains("missing field"), "{m}: {e}");
            }
        }
    }

    #[test]
    fn bad_calls_get_clear_errors() {
        let e = Call::parse("add_artifcat", json!({}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown method `add_artifcat`"), "{e}");
        let e = Call::parse("add_artifact", json!({"artifact": {"id": "a"}}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("add_artifact") && e.contains("missing field `filename`"),
            "{e}"
        );
        let e = Call::parse(
            "add_memory",
            json!({"category": "x", "content": {}, "bogus": 1}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let e = Call::parse(
            "update_artifact",
            json!({"artifact_id": "a", "colour": "red"}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = Call::parse("add_fact", json!([1])).unwrap_err().to_string();
        assert!(e.contains("must be a JSON object"), "{e}");
    }

    #[test]
    fn update_artifact_takes_flattened_fields() {
        let w = Write::from_call(
            "update_artifact",
            json!({"artifact_id": "a", "status": "processed"}),
        )
        .unwrap();
        match w {
            Write::UpdateArtifact {
                artifact_id,
                fields,
                merge_extras,
            } => {
                assert_eq!(artifact_id, "a");
                assert_eq!(fields["status"], json!("processed"));
                assert!(merge_extras);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prepare_fills_ids_once() {
        let mut w = Write::from_call(
            "add_memory",
            json!({"category": "team_memory", "content": {"a": 1}}),
        )
        .unwrap();
        w.prepare();
        let first = w.clone();
        w.prepare();
        assert_eq!(w, first, "prepare is idempotent");
        let Write::AddMemory { id, created_at, .. } = &w else {
            unreachable!()
        };
        assert!(uuid::Uuid::parse_str(id.as_ref().unwrap()).is_ok());
        assert!(created_at.as_ref().unwrap().ends_with('Z'));
    }

    #[test]
    fn summary_defaults_follow_dox() {
        let mut w =
            Write::from_call("store_summary", json!({"summary": {"summary_text": "x"}})).unwrap();
        w.prepare();
        let Write::StoreSummary { summary } = &w else {
            unreachable!()
        };
        assert_eq!(summary.scope.as_deref(), Some("workspace"));
        assert_eq!(summary.scope_key.as_deref(), Some("workspace"));
        assert_eq!(summary.style.as_deref(), Some("bullet"));
        assert_eq!(summary.artifact_ids, Some(json!([])));
    }

    #[test]
    fn memory_context_is_stored_only_when_truthy() {
        let mut w = Write::from_call(
            "add_memory",
            json!({"category": "fact", "content": {}, "context": {}}),
        )
        .unwrap();
        w.prepare();
        let steps = w.steps().unwrap();
        let Step::Upsert { rows, .. } = &steps[0] else {
            unreachable!()
        };
        assert_eq!(rows[0][3], SqlValue::Null);
    }

    #[test]
    fn json_text_fields_accept_text_or_values() {
        let w = Write::from_call(
            "add_api",
            json!({"api": {"id": "1", "document_id": "d", "method": "GET", "path": "/",
                           "tags_json": "[\"pets\"]", "params_json": [{"name": "limit"}]}}),
        )
        .unwrap();
        let steps = w.steps().unwrap();
        let Step::Upsert { rows, .. } = &steps[0] else {
            unreachable!()
        };
        assert_eq!(rows[0][6], SqlValue::text("[\"pets\"]"));
        assert_eq!(rows[0][7], SqlValue::text("[{\"name\":\"limit\"}]"));
    }

    #[test]
    fn entities_coerce_like_dox() {
        let mut w = Write::from_call(
            "store_entities",
            json!({"document_id": "d", "entities": [{"label": null, "text": 42}]}),
        )
        .unwrap();
        w.prepare();
        let steps = w.steps().unwrap();
        assert!(matches!(&steps[0], Step::DeleteWhere { value, .. } if value == "d"));
        let Step::Upsert { rows, .. } = &steps[1] else {
            unreachable!()
        };
        assert_eq!(rows[0][2], SqlValue::text(""));
        assert_eq!(rows[0][3], SqlValue::text("42"));
        assert!(matches!(&rows[0][0], SqlValue::Text(id) if !id.is_empty()));
    }
}

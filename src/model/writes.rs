//! `Write`: one named write of the DoX interface as data; parsing it from a call,
//! preparing it once (ids, timestamps), and resolving a read-modify-write against the
//! current row.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::catalogue::{self, Table};
use crate::error::{Error, Result};
use crate::normalise::now_text;

use super::records::{
    yes, ApiEndpoint, Artifact, DocTable, Document, Entity, Evidence, Fact, LogEntry, MetricHit,
    SearchChunk, Section, Summary, TagRow,
};
use super::type_name;

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
    use serde_json::json;

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
}

//! `Read`: one read of the DoX interface as data.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

use super::records::yes;
use super::type_name;

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

//! The read methods of DoX (spec section 5), written once over
//! [`Database::fetch`], so every backend returns the same shapes: the dicts the
//! original SQLite layer returned, with JSON decoded.
//!
//! Where the original backends disagreed, one behaviour is chosen and documented
//! in docs/behaviour.md: lists come in key order unless "newest first" is part of
//! the method; `list_logs` applies its time window (B7); `search_memory` filters
//! by `q` before applying `limit` (B9); `has_tag` exists everywhere (B5).

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::{Database, Filter, Row};
use crate::catalogue as cat;
use crate::error::{Error, Result};
use crate::model::Read;
use crate::normalise::canonical_timestamp;

pub(crate) async fn run<D: Database + ?Sized>(db: &D, read: &Read) -> Result<Value> {
    let s = |v: &Option<String>| v.as_ref().map(|s| json!(s));
    Ok(match read {
        Read::GetArtifacts {} => {
            let rows = db.fetch(&cat::ARTIFACT, &[]).await?;
            Value::Array(rows.iter().map(artifact).collect())
        }
        Read::GetFacts { report_week } => {
            let filters = match report_week.as_deref() {
                Some(w) if !w.is_empty() => vec![("report_week", json!(w))],
                _ => vec![],
            };
            let rows = db.fetch(&cat::FACT, &filters).await?;
            shape_all(
                &rows,
                &[
                    ("id", "id"),
                    ("artifact_id", "artifact_id"),
                    ("report_week", "report_week"),
                    ("entity", "entity"),
                    ("metrics", "metrics"),
                    ("evidence_id", "evidence_id"),
                ],
            )
        }
        Read::GetEvidence { evidence_id } => {
            let rows = db
                .fetch(&cat::EVIDENCE, &[("id", json!(evidence_id))])
                .await?;
            rows.first().map_or(Value::Null, evidence)
        }
        Read::GetAllEvidence {} => {
            let rows = db.fetch(&cat::EVIDENCE, &[]).await?;
            Value::Array(rows.iter().map(evidence).collect())
        }
        Read::GetSummary { scope_key, style } => {
            let filters = [("scope_key", json!(scope_key)), ("style", json!(style))];
            let rows = newest_first(db.fetch(&cat::SUMMARIES, &filters).await?);
            rows.first().map_or(Value::Null, summary)
        }
        Read::ListSummaries { scope, style } => {
            let filters = filters(&[("scope", s(scope)), ("style", s(style))]);
            let rows = newest_first(db.fetch(&cat::SUMMARIES, &filters).await?);
            Value::Array(rows.iter().map(summary).collect())
        }
        Read::ListDocuments { kind } => {
            let rows = db
                .fetch(&cat::DOCUMENT, &filters(&[("type", s(kind))]))
                .await?;
            shape_all(
                &rows,
                &[
                    ("id", "id"),
                    ("path", "path"),
                    ("type", "type"),
                    ("title", "title"),
                    ("source", "source"),
                    ("created_at", "created_at"),
                ],
            )
        }
        Read::ListEntities { document_id, label } => {
            let f = filters(&[("document_id", s(document_id)), ("label", s(label))]);
            let rows = db.fetch(&cat::DOCUMENT_ENTITIES, &f).await?;
            shape_all(
                &rows,
                &[
                    ("id", "id"),
                    ("document_id", "document_id"),
                    ("label", "label"),
                    ("text", "text"),
                    ("start_char", "start_char"),
                    ("end_char", "end_char"),
                    ("page", "page"),
                    ("context", "context"),
                    ("source_index", "source_index"),
                ],
            )
        }
        Read::GetStructure { document_id } => {
            let f = [("document_id", json!(document_id))];
            let rows = db.fetch(&cat::DOCUMENT_STRUCTURE, &f).await?;
            rows.first()
                .and_then(|r| r.get("hierarchy").cloned())
                .unwrap_or(Value::Null)
        }
        Read::ListMetricHits {
            document_id,
            metric_type,
        } => {
            let f = filters(&[("document_id", s(document_id)), ("type", s(metric_type))]);
            let rows = db.fetch(&cat::DOCUMENT_METRIC_HITS, &f).await?;
            shape_all(
                &rows,
                &[
                    ("id", "id"),
                    ("document_id", "document_id"),
                    ("type", "type"),
                    ("value", "value"),
                    ("context", "context"),
                    ("position", "position"),
                    ("page", "page"),
                    ("source_index", "source_index"),
                ],
            )
        }
        Read::ListLogs {
            level,
            code,
            q,
            ts_from,
            ts_to,
            document_id,
        } => {
            let f = filters(&[
                ("level", s(level)),
                ("code", s(code)),
                ("document_id", s(document_id)),
            ]);
            let from = parse_bound("ts_from", ts_from.as_deref())?;
            let to = parse_bound("ts_to", ts_to.as_deref())?;
            let q = q
                .as_deref()
                .filter(|q| !q.is_empty())
                .map(str::to_lowercase);
            let rows = db.fetch(&cat::LOGENTRY, &f).await?;
            let kept = rows.iter().filter(|r| {
                let text_ok = q.as_ref().is_none_or(|q| {
                    str_of(r, "message").is_some_and(|m| m.to_lowercase().contains(q.as_str()))
                });
                let window_ok = if from.is_none() && to.is_none() {
                    true
                } else {
                    match str_of(r, "ts").and_then(parse_time) {
                        Some(t) => from.is_none_or(|f| t >= f) && to.is_none_or(|e| t <= e),
                        None => false,
                    }
                };
                text_ok && window_ok
            });
            Value::Array(
                kept.map(|r| {
                    shape(
                        r,
                        &[
                            ("id", "id"),
                            ("document_id", "document_id"),
                            ("ts", "ts"),
                            ("level", "level"),
                            ("code", "code"),
                            ("component", "component"),
                            ("message", "message"),
                            ("attrs", "attrs"),
                        ],
                    )
                })
                .collect(),
            )
        }
        Read::ListApis {
            tag,
            method,
            path_like,
        } => {
            let rows = db.fetch(&cat::APIENDPOINT, &[]).await?;
            let kept = rows.iter().filter(|r| {
                let tag_ok = tag.as_ref().is_none_or(|t| {
                    r.get("tags")
                        .and_then(Value::as_array)
                        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(t.as_str())))
                });
                let method_ok = method
                    .as_ref()
                    .is_none_or(|m| str_of(r, "method").is_some_and(|x| x.eq_ignore_ascii_case(m)));
                let path_ok = path_like
                    .as_ref()
                    .is_none_or(|p| str_of(r, "path").is_some_and(|x| x.contains(p.as_str())));
                tag_ok && method_ok && path_ok
            });
            Value::Array(
                kept.map(|r| {
                    shape(
                        r,
                        &[
                            ("id", "id"),
                            ("document_id", "document_id"),
                            ("name", "name"),
                            ("method", "method"),
                            ("path", "path"),
                            ("summary", "summary"),
                            ("tags", "tags"),
                        ],
                    )
                })
                .collect(),
            )
        }
        Read::ListTags { document_id, q } => {
            let rows = db
                .fetch(&cat::TAGROW, &filters(&[("document_id", s(document_id))]))
                .await?;
            let q = q
                .as_deref()
                .filter(|q| !q.is_empty())
                .map(str::to_lowercase);
            Value::Array(
                rows.iter()
                    .filter(|r| {
                        q.as_ref().is_none_or(|q| {
                            str_of(r, "tag").is_some_and(|t| t.to_lowercase().contains(q.as_str()))
                        })
                    })
                    .map(tag)
                    .collect(),
            )
        }
        Read::HasTag { document_id, tag } => {
            let rows = db
                .fetch(&cat::TAGROW, &[("document_id", json!(document_id))])
                .await?;
            let want = tag.trim().to_lowercase();
            Value::Bool(
                rows.iter()
                    .any(|r| str_of(r, "tag").is_some_and(|t| t.trim().to_lowercase() == want)),
            )
        }
        Read::GetLatestTagPrompt { document_id } => {
            let rows = prompts(db, document_id).await?;
            rows.first().map_or(Value::Null, prompt)
        }
        Read::ListTagPromptHistory { document_id, limit } => {
            let rows = prompts(db, document_id).await?;
            Value::Array(rows.iter().take(*limit).map(prompt).collect())
        }
        Read::ListLogMessages { document_id } => {
            let rows = db
                .fetch(&cat::LOGENTRY, &[("document_id", json!(document_id))])
                .await?;
            Value::Array(
                rows.iter()
                    .filter_map(|r| str_of(r, "message"))
                    .filter(|m| !m.is_empty())
                    .map(|m| json!(m))
                    .collect(),
            )
        }
        Read::SearchMemory {
            category,
            limit,
            q,
            user_id,
        } => {
            let f = filters(&[("category", s(category)), ("user_id", s(user_id))]);
            let rows = newest_first(db.fetch(&cat::CIPHER_MEMORY, &f).await?);
            let q = q
                .as_deref()
                .filter(|q| !q.is_empty())
                .map(str::to_lowercase);
            Value::Array(
                rows.iter()
                    .filter(|r| {
                        q.as_ref().is_none_or(|q| {
                            let text = serde_json::to_string(&r["content"]).unwrap_or_default();
                            text.to_lowercase().contains(q.as_str())
                        })
                    })
                    .take(*limit)
                    .map(memory)
                    .collect(),
            )
        }
        Read::GetUserPrefs { user_id } => {
            let rows = db
                .fetch(&cat::USER_PREFS, &[("user_id", json!(user_id))])
                .await?;
            match rows.first().and_then(|r| r.get("preferences")) {
                Some(Value::Object(o)) => Value::Object(o.clone()),
                _ => Value::Object(Map::new()),
            }
        }
        Read::ListSkills { enabled_only } => {
            let f = if *enabled_only {
                vec![("enabled", Value::Bool(true))]
            } else {
                vec![]
            };
            let mut rows = db.fetch(&cat::SKILLS_REGISTRY, &f).await?;
            rows.sort_by(|a, b| str_of(a, "name").cmp(&str_of(b, "name")));
            Value::Array(rows.iter().map(skill).collect())
        }
    })
}

fn filters(pairs: &[(&'static str, Option<Value>)]) -> Vec<Filter> {
    pairs
        .iter()
        .filter_map(|(c, v)| v.clone().map(|v| (*c, v)))
        .collect()
}

fn str_of<'a>(r: &'a Row, k: &str) -> Option<&'a str> {
    r.get(k).and_then(Value::as_str)
}

fn shape(r: &Row, keys: &[(&str, &str)]) -> Value {
    let mut m = Map::new();
    for (out, col) in keys {
        m.insert(
            (*out).to_owned(),
            r.get(*col).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(m)
}

fn shape_all(rows: &[Row], keys: &[(&str, &str)]) -> Value {
    Value::Array(rows.iter().map(|r| shape(r, keys)).collect())
}

/// Sort by `created_at` descending, then by key descending for a stable order.
fn newest_first(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by(|a, b| {
        let ka = (str_of(a, "created_at"), str_of(a, "id"));
        let kb = (str_of(b, "created_at"), str_of(b, "id"));
        kb.cmp(&ka)
    });
    rows
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    canonical_timestamp(s).and_then(|c| {
        DateTime::parse_from_rfc3339(&c)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    })
}

fn parse_bound(name: &str, v: Option<&str>) -> Result<Option<DateTime<Utc>>> {
    match v.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => parse_time(s)
            .map(Some)
            .ok_or_else(|| Error::invalid(format!("list_logs: {name} `{s}` is not a timestamp"))),
    }
}

fn artifact(r: &Row) -> Value {
    let mut v = shape(
        r,
        &[
            ("id", "id"),
            ("filename", "filename"),
            ("filepath", "filepath"),
            ("filetype", "filetype"),
            ("report_week", "report_week"),
            ("status", "status"),
            ("source_url", "source_url"),
            ("extras", "extras"),
        ],
    );
    // DoX returns None for an empty extra_json.
    if v["extras"] == json!("") {
        v["extras"] = Value::Null;
    }
    v
}

fn evidence(r: &Row) -> Value {
    shape(
        r,
        &[
            ("id", "id"),
            ("artifact_id", "artifact_id"),
            ("locator", "locator"),
            ("preview", "preview"),
            ("content_type", "content_type"),
            ("coordinates", "coordinates"),
            ("full_data", "full_data"),
        ],
    )
}

fn summary(r: &Row) -> Value {
    shape(
        r,
        &[
            ("id", "id"),
            ("scope", "scope"),
            ("scope_key", "scope_key"),
            ("style", "style"),
            ("provider", "provider"),
            ("prompt", "prompt"),
            ("summary_text", "summary_text"),
            ("artifact_ids", "artifact_ids"),
            ("evidence_ids", "evidence_ids"),
            ("created_at", "created_at"),
        ],
    )
}

/// DoX omits `hrm_steps` when null and derives it from a legacy
/// `hrm-refined:steps<N>` source pointer.
fn tag(r: &Row) -> Value {
    let mut v = shape(
        r,
        &[
            ("id", "id"),
            ("document_id", "document_id"),
            ("tag", "tag"),
            ("score", "score"),
            ("source_ptr", "source_ptr"),
        ],
    );
    let steps = match r.get("hrm_steps") {
        Some(Value::Null) | None => str_of(r, "source_ptr")
            .and_then(|p| p.strip_prefix("hrm-refined:steps"))
            .and_then(|n| n.parse::<i64>().ok())
            .map(Value::from),
        Some(v) => Some(v.clone()),
    };
    if let Some(s) = steps {
        v["hrm_steps"] = s;
    }
    v
}

async fn prompts<D: Database + ?Sized>(db: &D, document_id: &str) -> Result<Vec<Row>> {
    let rows = db
        .fetch(&cat::TAGPROMPT, &[("document_id", json!(document_id))])
        .await?;
    Ok(newest_first(rows))
}

fn prompt(r: &Row) -> Value {
    shape(
        r,
        &[
            ("id", "id"),
            ("document_id", "document_id"),
            ("prompt_text", "prompt_text"),
            ("examples", "examples"),
            ("created_at", "created_at"),
            ("author", "author"),
        ],
    )
}

fn memory(r: &Row) -> Value {
    let mut v = shape(
        r,
        &[
            ("id", "id"),
            ("category", "category"),
            ("content", "content"),
            ("context", "context"),
            ("user_id", "user_id"),
            ("created_at", "created_at"),
        ],
    );
    if v["context"].is_null() {
        v["context"] = json!({});
    }
    v
}

/// The shape `list_skills` and `update_skill` return.
pub(crate) fn skill(r: &Row) -> Value {
    shape(
        r,
        &[
            ("id", "id"),
            ("name", "name"),
            ("description", "description"),
            ("parameters", "parameters"),
            ("workflow_def", "workflow_def"),
            ("enabled", "enabled"),
            ("created_at", "created_at"),
        ],
    )
}

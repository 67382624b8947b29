//! `Write::steps`: a write as SQLite-shaped row steps, and the row builders it uses.

use serde_json::{Map, Value};

use crate::catalogue::{self, Table};
use crate::normalise::{json_text, SqlRow, SqlValue};

use super::records::{JsonText, SearchChunk};
use super::truthy;
use super::writes::Write;

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
pub(crate) fn skill_row(
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
pub(crate) fn user_prefs_row(
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

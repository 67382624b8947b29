//! `SupabaseDatabase`: DoX stored in Supabase through PostgREST.
//!
//! Rows are built by the same code as SQLite rows ([`Write::steps`]) and turned
//! into the Supabase shape by the one normaliser, so a row written here is the
//! canonical form of the row SQLite stores. Every write is an idempotent upsert
//! (`resolution=merge-duplicates`, `return=minimal`, `count=exact`) of complete
//! rows, checked against the count PostgREST reports.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

use super::{check_filters, reads, Applied, Database, Filter, Row};
use crate::catalogue::{self as cat, Table};
use crate::coerced::CoercedLog;
use crate::error::{Error, Result};
use crate::model::{skill_row, Step, Write};
use crate::normalise::{self, Lossy, SqlRow, UnrepresentablePolicy};
use crate::rest::{filter_text, RestClient};

/// Lossy conversions counted per (table, column, kind).
pub type LossyCounts = BTreeMap<(&'static str, &'static str, Lossy), u64>;

#[derive(Debug)]
pub struct SupabaseDatabase {
    rest: RestClient,
    lossy: Mutex<LossyCounts>,
    unrepresentable: UnrepresentablePolicy,
    coerced: Option<Arc<CoercedLog>>,
}

impl SupabaseDatabase {
    pub fn new(rest: RestClient) -> SupabaseDatabase {
        SupabaseDatabase {
            rest,
            lossy: Mutex::new(BTreeMap::new()),
            unrepresentable: UnrepresentablePolicy::Reject,
            coerced: None,
        }
    }

    /// Write values Supabase cannot hold under `policy` (reject by default).
    /// Under `coerce`, each coerced value is recorded with its original in `log`
    /// before the write is sent.
    pub fn with_unrepresentable(
        mut self,
        policy: UnrepresentablePolicy,
        log: Option<Arc<CoercedLog>>,
    ) -> SupabaseDatabase {
        self.unrepresentable = policy;
        self.coerced = log;
        self
    }

    /// The policy for values Supabase cannot hold that writes use.
    pub fn unrepresentable(&self) -> UnrepresentablePolicy {
        self.unrepresentable
    }

    pub fn rest(&self) -> &RestClient {
        &self.rest
    }

    /// Lossy but documented conversions made so far (see [`crate::normalise`]).
    pub fn lossy_counts(&self) -> LossyCounts {
        crate::sync::lock(&self.lossy).clone()
    }

    /// Convert SQLite-shaped rows to the Supabase JSON array body, counting lossy
    /// conversions. Fails on the first value Supabase cannot hold.
    pub fn body(&self, table: &'static Table, rows: &[SqlRow]) -> Result<String> {
        let mut out = Vec::with_capacity(rows.len());
        let mut lossy = Vec::new();
        let mut coerced = Vec::new();
        for r in rows {
            let c = normalise::to_canonical_with(table, r, self.unrepresentable)?;
            if c.lossy.iter().any(|(_, l)| l.is_coercion()) {
                let refs: Vec<_> = r.iter().map(normalise::SqlValue::as_ref).collect();
                coerced.extend(crate::coerced::records(table, &refs, &c.lossy));
            }
            for (col, l) in c.lossy {
                tracing::debug!(table = table.sqlite, column = col, conversion = l.as_str(), key = %r[0].display(), "lossy conversion");
                lossy.push((col, l));
            }
            out.push(Value::Object(c.row));
        }
        if !lossy.is_empty() {
            let mut counts = crate::sync::lock(&self.lossy);
            for (col, l) in lossy {
                *counts.entry((table.sqlite, col, l)).or_default() += 1;
            }
        }
        if let Some(log) = &self.coerced {
            log.write(&coerced)?;
        }
        Ok(serde_json::to_string(&out).expect("JSON values serialise"))
    }

    /// Upsert SQLite-shaped rows; checks that PostgREST wrote them all.
    pub async fn upsert_rows(&self, table: &'static Table, rows: &[SqlRow]) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let body = self.body(table, rows)?;
        let n = self.rest.upsert(table, body).await?;
        if n != rows.len() as u64 {
            return Err(Error::Protocol(format!(
                "{}: sent {} rows, PostgREST reports {n} written",
                table.supabase,
                rows.len()
            )));
        }
        Ok(n)
    }

    async fn exec_steps(&self, steps: &[Step]) -> Result<()> {
        // Several steps: one transaction on the server (issue 13), unless the
        // database predates supabase/migrations/20261128000200_dox_atomic_writes.sql.
        if steps.len() > 1 {
            match self.exec_steps_atomic(steps).await {
                Err(e) if e.code() == Some("PGRST202") => {
                    tracing::warn!("dualwrite_apply_steps is missing: apply the migration 20261128000200_dox_atomic_writes.sql; writing step by step (not atomic)");
                }
                done => return done,
            }
        }
        for step in steps {
            match step {
                Step::Upsert { table, rows } => {
                    self.upsert_rows(table, rows).await?;
                }
                Step::DeleteWhere {
                    table,
                    column,
                    value,
                } => {
                    let col = table.columns[table.index_of(column)].supabase;
                    self.rest
                        .delete(table.supabase, &[(col, Some(value.clone()))])
                        .await?;
                }
                Step::DeleteAll { table } => {
                    self.rest
                        .delete_all(table.supabase, table.key().supabase)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// All steps in one call of `rpc/dualwrite_apply_steps` (one transaction).
    async fn exec_steps_atomic(&self, steps: &[Step]) -> Result<()> {
        let mut body = Vec::with_capacity(steps.len());
        for step in steps {
            body.push(match step {
                Step::Upsert { table, rows } => {
                    let cols: Vec<&str> = table.columns.iter().map(|c| c.supabase).collect();
                    let rows: Value = serde_json::from_str(&self.body(table, rows)?)
                        .map_err(|e| Error::Protocol(format!("a row body is not JSON: {e}")))?;
                    json!({"op": "upsert", "table": table.supabase, "columns": cols, "rows": rows})
                }
                Step::DeleteWhere {
                    table,
                    column,
                    value,
                } => json!({"op": "delete_where", "table": table.supabase,
                            "column": table.columns[table.index_of(column)].supabase, "value": value}),
                Step::DeleteAll { table } => json!({"op": "delete_all", "table": table.supabase}),
            });
        }
        self.rest
            .rpc("dualwrite_apply_steps", &json!({ "steps": body }))
            .await
            .map(drop)
    }

    /// set_user_pref as one statement on the server (`rpc/dualwrite_set_user_pref`);
    /// `None` when the database predates the function.
    async fn set_user_pref_atomic(
        &self,
        user_id: &str,
        key: &str,
        value: &Value,
        updated_at: Option<&str>,
    ) -> Result<Option<Map<String, Value>>> {
        let args = json!({"p_user_id": user_id, "p_key": key, "p_value": value, "p_updated_at": updated_at});
        match self.rest.rpc("dualwrite_set_user_pref", &args).await {
            Ok(Value::Object(prefs)) => Ok(Some(prefs)),
            Ok(other) => Err(Error::Protocol(format!(
                "dualwrite_set_user_pref answered {other} instead of the preferences"
            ))),
            Err(e) if e.code() == Some("PGRST202") => {
                tracing::warn!("dualwrite_set_user_pref is missing: apply the migration 20261128000200_dox_atomic_writes.sql; read then write (not atomic)");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// update_artifact with an extras merge as one statement on the server
    /// (`rpc/dualwrite_update_artifact`): on success `fields` holds the merged
    /// extras and `merge_extras` is false (the write as applied). `false` when
    /// the database predates the function (the caller reads then writes).
    async fn update_artifact_atomic(
        &self,
        artifact_id: &str,
        fields: &mut Map<String, Value>,
        merge_extras: &mut bool,
    ) -> Result<bool> {
        let args = json!({"p_id": artifact_id, "p_fields": fields, "p_merge_extras": true});
        match self.rest.rpc("dualwrite_update_artifact", &args).await {
            // No such artifact: nothing written, as step by step.
            Ok(Value::Null) => Ok(true),
            Ok(extras) => {
                fields.insert("extras".into(), extras);
                *merge_extras = false;
                Ok(true)
            }
            Err(e) if e.code() == Some("PGRST202") => {
                tracing::warn!("dualwrite_update_artifact is missing: apply the migration 20261128000200_dox_atomic_writes.sql; read then write (not atomic)");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    async fn first(
        &self,
        table: &'static Table,
        column: &str,
        value: &str,
    ) -> Result<Option<Map<String, Value>>> {
        let page = self
            .rest
            .select_page(
                table.supabase,
                "*",
                &[(column, Some(value.to_owned()))],
                table.key().supabase,
                None,
                1,
            )
            .await?;
        Ok(page.into_iter().next())
    }
}

impl Database for SupabaseDatabase {
    fn backend(&self) -> String {
        "supabase".into()
    }

    async fn apply(&self, mut write: Write) -> Result<Applied> {
        write.prepare();
        // Read-modify-writes in one statement on the server, when the database
        // has the functions (migration 20261128000200_dox_atomic_writes.sql);
        // otherwise read, resolve and write below.
        if let Write::UpdateArtifact {
            artifact_id,
            fields,
            merge_extras: merge @ true,
        } = &mut write
        {
            if fields.contains_key("extras")
                && self
                    .update_artifact_atomic(artifact_id, fields, merge)
                    .await?
            {
                return Ok(Applied {
                    value: Value::Null,
                    resolved: write,
                });
            }
        }
        if let Write::SetUserPref {
            user_id,
            key,
            value,
            updated_at,
            preferences: preferences @ None,
        } = &mut write
        {
            if let Some(prefs) = self
                .set_user_pref_atomic(user_id, key, value, updated_at.as_deref())
                .await?
            {
                *preferences = Some(prefs);
                return Ok(Applied {
                    value: Value::Null,
                    resolved: write,
                });
            }
        }
        // A read-modify-write reads its row and resolves on it; register_skill
        // resolves on the row its PATCH returns instead (one request, no read).
        let current = match write.current_row() {
            Some((t, column, key)) if !std::ptr::eq(t, &cat::SKILLS_REGISTRY) => self
                .first(t, column, key)
                .await?
                .map(|r| normalise::from_supabase(t, &r)),
            _ => None,
        };
        if !matches!(write, Write::RegisterSkill { .. }) {
            write.resolve(current.as_ref());
        }
        let mut resolved_skill = None;
        let value = match &mut write {
            Write::RegisterSkill {
                name,
                description,
                parameters,
                workflow_def,
                enabled,
                id,
                created_at,
            } => {
                // Like DoX's SQLite layer: keep the id and created_at of an existing skill.
                let mut patch = Map::new();
                patch.insert("description".into(), json!(description));
                patch.insert("parameters".into(), parameters.clone());
                patch.insert("workflow_def".into(), workflow_def.clone());
                patch.insert("enabled".into(), json!(enabled));
                let updated = self
                    .rest
                    .patch(
                        cat::SKILLS_REGISTRY.supabase,
                        &[("name", Some(name.clone()))],
                        &patch,
                    )
                    .await?;
                if let Some(row) = updated.first() {
                    let canon = normalise::from_supabase(&cat::SKILLS_REGISTRY, row);
                    resolved_skill = Some(canon);
                } else {
                    let row = skill_row(
                        id.as_ref(),
                        name,
                        description,
                        parameters,
                        workflow_def,
                        *enabled,
                        created_at.as_ref(),
                    );
                    self.upsert_rows(&cat::SKILLS_REGISTRY, &[row]).await?;
                }
                Value::Null
            }
            Write::UpdateSkill { skill_id, enabled } => {
                let mut patch = Map::new();
                patch.insert("enabled".into(), json!(enabled));
                let rows = self
                    .rest
                    .patch(
                        cat::SKILLS_REGISTRY.supabase,
                        &[("id", Some(skill_id.clone()))],
                        &patch,
                    )
                    .await?;
                rows.first().map_or(Value::Null, |r| {
                    reads::skill(&normalise::from_supabase(&cat::SKILLS_REGISTRY, r))
                })
            }
            Write::UpdateArtifact {
                artifact_id,
                fields,
                ..
            } => {
                // An update of a missing artifact does nothing (DoX).
                if current.is_some() && !fields.is_empty() {
                    self.rest
                        .patch(
                            cat::ARTIFACT.supabase,
                            &[("id", Some(artifact_id.clone()))],
                            fields,
                        )
                        .await?;
                }
                Value::Null
            }
            other => {
                let steps = other
                    .steps()
                    .expect("every other write maps onto table steps");
                self.exec_steps(&steps).await?;
                other.return_value()
            }
        };
        if let Some(row) = resolved_skill {
            write.resolve(Some(&row));
        }
        let value = match &write {
            Write::RegisterSkill { id, .. } => json!(id),
            _ => value,
        };
        Ok(Applied {
            value,
            resolved: write,
        })
    }

    async fn fetch(&self, table: &'static Table, filters: &[Filter]) -> Result<Vec<Row>> {
        check_filters(table, filters)?;
        let f: Vec<(&str, Option<String>)> = filters
            .iter()
            .map(|(c, v)| (table.columns[table.index_of(c)].supabase, filter_text(v)))
            .collect();
        let rows = self
            .rest
            .select_all(table.supabase, &f, table.key().supabase)
            .await?;
        let key = table.key().supabase;
        let mut out: Vec<Row> = rows
            .iter()
            .map(|r| normalise::from_supabase(table, r))
            .collect();
        // PostgreSQL orders by its collation; SQLite and Rust by bytes. Reads use bytes.
        out.sort_by(|a, b| a[key].as_str().cmp(&b[key].as_str()));
        Ok(out)
    }
}

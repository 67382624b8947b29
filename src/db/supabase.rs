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

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
use crate::catalogue::{self as cat, Kind, Table};
use crate::error::{Error, Result};
use crate::model::{skill_row, Step, Write};
use crate::normalise::coerced::CoercedLog;
use crate::normalise::{self, Lossy, SqlRow, UnrepresentablePolicy};
use crate::rest::{filter_text, EqFilters, RestClient};

/// Lossy conversions counted per (table, column, kind).
pub(crate) type LossyCounts = BTreeMap<(&'static str, &'static str, Lossy), u64>;

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

    /// Its writes copy the SQLite file's rows: capture on Supabase does not log
    /// them ([`RestClient::mirroring_sqlite`]).
    pub fn mirroring_sqlite(self) -> SupabaseDatabase {
        SupabaseDatabase {
            rest: self.rest.mirroring_sqlite(),
            ..self
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
                coerced.extend(crate::normalise::coerced::records(table, &refs, &c.lossy));
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

/// Rows per page when reading a table: Supabase's default max-rows.
pub(crate) const PAGE_ROWS: usize = 1000;

/// Marks a jsonb value that serde_json cannot read (nested deeper than its 128
/// levels) in the rows [`SupabaseDatabase::page`] and
/// [`SupabaseDatabase::rows_by_keys`] return: the value is this prefix and the
/// jsonb's text, so that verify reports the row as different instead of the
/// table as unreadable.
pub(crate) const UNREADABLE_JSON: &str = "(jsonb serde_json cannot read) ";

/// What a JSON column's text becomes when serde_json cannot read it.
type Unreadable = fn(String) -> Value;

fn marked(text: String) -> Value {
    Value::String(format!("{UNREADABLE_JSON}{text}"))
}

/// DoX's own reads see such a value as the SQLite backend does: JSON text it
/// cannot parse is a JSON string ([`normalise::parse_json_text`]).
fn as_sqlite_reads(text: String) -> Value {
    normalise::parse_json_text(&text).0
}

/// One read of rows, `select=*` first. serde_json keeps numbers as exact
/// decimal text (`arbitrary_precision`), so jsonb numbers of any size (beyond
/// double precision too) parse; an answer that still does not parse
/// (`Error::Protocol`: JSON nested deeper than serde_json's 128 levels) is
/// read again with the JSON columns cast to text, and each value is parsed on
/// its own, so that one such value changes its row instead of failing the read.
async fn read_rows<F, Fut>(
    t: &'static Table,
    unreadable: Unreadable,
    read: F,
) -> Result<Vec<Map<String, Value>>>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Map<String, Value>>>>,
{
    match read("*".to_owned()).await {
        Err(Error::Protocol(_)) => {}
        other => return other,
    }
    let select: Vec<String> = t
        .columns
        .iter()
        .map(|c| match c.kind {
            Kind::Json => format!("{}::text", c.supabase),
            _ => c.supabase.to_owned(),
        })
        .collect();
    let mut rows = read(select.join(",")).await?;
    for row in &mut rows {
        for c in t.columns.iter().filter(|c| c.kind == Kind::Json) {
            if let Some(v) = row.get_mut(c.supabase) {
                if let Value::String(text) = v.take() {
                    *v = serde_json::from_str(&text).unwrap_or_else(|_| unreadable(text));
                }
            }
        }
    }
    Ok(rows)
}

/// The reads of whole tables that `verify` and `repair` are built on, the
/// counterparts of `SqliteDatabase`'s `page`, `rows_by_keys` and `range`.
/// Rows come as PostgREST returns them (turn them canonical with
/// `normalise::from_supabase_owned`); a jsonb value serde_json cannot read
/// is marked with `UNREADABLE_JSON`. Adapters never retry: callers wrap
/// these in `crate::retry::retry`.
impl SupabaseDatabase {
    /// Exact row count of `table` as this key sees it (`HEAD`, `count=exact`).
    pub async fn count(&self, table: &'static Table) -> Result<u64> {
        self.rest.count(table.supabase).await
    }

    /// Up to `limit` rows of `table` with keys after `after`, in key order
    /// (bytes: the keys are `COLLATE "C"`, as SQLite's BINARY). PostgREST caps
    /// a read at its max-rows, which may be below `limit`: a short page is not
    /// the end of the table, only an empty one is.
    pub async fn page(
        &self,
        table: &'static Table,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Map<String, Value>>> {
        let key = table.key().supabase;
        read_rows(table, marked, |select| async move {
            self.rest
                .select_page(table.supabase, &select, &[], key, after, limit)
                .await
        })
        .await
    }

    /// The rows with these keys (those that exist), in requests of
    /// `<key>=in.(…)` short enough for any proxy (`crate::rest::key_chunks`).
    pub async fn rows_by_keys(
        &self,
        table: &'static Table,
        keys: &[&str],
    ) -> Result<Vec<Map<String, Value>>> {
        let key = table.key().supabase;
        let mut out = Vec::new();
        for chunk in crate::rest::key_chunks(keys) {
            let chunk = &chunk;
            let rows = read_rows(table, marked, |select| async move {
                self.rest
                    .select_in(table.supabase, &select, key, chunk)
                    .await
            })
            .await?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// The rows with keys from `first` to `last` (both included), in key order.
    pub async fn range(
        &self,
        table: &'static Table,
        first: &str,
        last: &str,
    ) -> Result<Vec<Map<String, Value>>> {
        let key = table.key().supabase;
        let mut out: Vec<Map<String, Value>> = Vec::new();
        let mut from = (first.to_owned(), false);
        loop {
            let (start, after) = (&from.0, from.1);
            let page = read_rows(table, marked, |select| async move {
                self.rest
                    .select_between(table.supabase, &select, key, start, after, last, PAGE_ROWS)
                    .await
            })
            .await?;
            let Some(next) = page.last().and_then(|r| r.get(key)).and_then(Value::as_str) else {
                return Ok(out);
            };
            from = (next.to_owned(), true);
            out.extend(page);
        }
    }

    /// Up to `limit` keys of `table` after `after`, in key order (the key
    /// column alone: the resync of a re-created table compares them with the
    /// file's). A short page is not the end; an empty one is.
    pub async fn keys_page(
        &self,
        table: &'static Table,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let key = table.key().supabase;
        let rows = self
            .rest
            .select_page(table.supabase, key, &[], key, after, limit)
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get(key).and_then(filter_text))
            .collect())
    }

    /// Delete the rows with these keys (chunked like [`Self::rows_by_keys`]);
    /// returns how many were deleted.
    pub async fn delete_keys(&self, table: &'static Table, keys: &[&str]) -> Result<u64> {
        let mut deleted = 0;
        for chunk in crate::rest::key_chunks(keys) {
            deleted += self
                .rest
                .delete_in(table.supabase, table.key().supabase, &chunk)
                .await?;
        }
        Ok(deleted)
    }

    /// Every row matching `filters` (Supabase column names), paging through
    /// max-rows; what [`Database::fetch`] reads.
    async fn select_where(
        &self,
        table: &'static Table,
        filters: &EqFilters<'_>,
    ) -> Result<Vec<Map<String, Value>>> {
        let key = table.key().supabase;
        let mut out: Vec<Map<String, Value>> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let from = after.as_deref();
            let page = read_rows(table, as_sqlite_reads, |select| async move {
                self.rest
                    .select_page(table.supabase, &select, filters, key, from, PAGE_ROWS)
                    .await
            })
            .await?;
            // Only an empty page is the end (max-rows may be below PAGE_ROWS).
            let Some(last) = page.last() else {
                return Ok(out);
            };
            after = filter_text(last.get(key).unwrap_or(&Value::Null));
            if after.is_none() {
                return Err(Error::Protocol(format!(
                    "{}: a row without its key {key}",
                    table.supabase
                )));
            }
            out.extend(page);
        }
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
        let rows = self.select_where(table, &f).await?;
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

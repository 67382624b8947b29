//! One Supabase project holds one DoX deployment: the preflight that finds,
//! before anything is written, the rows another deployment already holds under
//! the same unique value.
//!
//! The only DoX column unique beyond a key is `skills_registry.name`
//! (`skills_registry_name_key`): two deployments that both know a skill
//! (`extract_tables`) under their own ids cannot share a project, and a
//! backfill would see every such row refused (exit 3, a reject each). The
//! preflight names them instead and writes nothing. Rows of the same id are
//! this file's own (a resumed or repeated run): not a collision.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::catalogue::{Table, SKILLS_REGISTRY};
use crate::db::{Database, SqliteDatabase, SupabaseDatabase};
use crate::error::{Error, Result};

/// One unique value held on the target by a row of another key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub table: &'static str,
    pub column: &'static str,
    pub value: String,
    /// The row's key in the file.
    pub here: String,
    /// The key of the row that holds the value on the target.
    pub there: String,
}

/// The unique values of `source`'s selected tables that the target holds under
/// another key. Tables the file lacks are skipped.
pub async fn unique_collisions(
    source: &Path,
    target: &SupabaseDatabase,
    tables: &[&'static Table],
) -> Result<Vec<Collision>> {
    if !tables.iter().any(|t| std::ptr::eq(*t, &SKILLS_REGISTRY)) {
        return Ok(Vec::new());
    }
    let t = &SKILLS_REGISTRY;
    let lite = SqliteDatabase::open_read_only(source).await?;
    let mine = match lite.fetch(t, &[]).await {
        Ok(rows) => rows,
        Err(Error::Sqlite(m)) if m.contains("no such table") => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let theirs: HashMap<String, String> = target
        .fetch(t, &[])
        .await?
        .iter()
        .filter_map(|r| Some((text(r.get("name"))?, text(r.get("id"))?)))
        .collect();
    let mut out: Vec<Collision> = mine
        .iter()
        .filter_map(|r| {
            let (id, name) = (text(r.get("id"))?, text(r.get("name"))?);
            let there = theirs.get(&name).filter(|other| **other != id)?;
            Some(Collision {
                table: t.supabase,
                column: "name",
                value: name,
                here: id,
                there: there.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.value.cmp(&b.value));
    Ok(out)
}

/// Refuse (bad input, before anything is written) when the target holds
/// another deployment's rows under this file's unique values.
pub fn refuse_collisions(collisions: &[Collision], target_url: &str) -> Result<()> {
    let Some(first) = collisions.first() else {
        return Ok(());
    };
    let examples: Vec<String> = collisions
        .iter()
        .take(5)
        .map(|c| format!("`{}` (id {} here, {} there)", c.value, c.here, c.there))
        .collect();
    Err(Error::invalid(format!(
        "{} holds {} {} row(s) whose {} this file gives to another id: {}{}. One Supabase project \
         holds one DoX deployment: backfill this file into a project of its own. If these rows are this \
         deployment's own older ones (a skill deleted and made again), delete them there, or run \
         with --reset, which empties the target first; nothing was written",
        target_url,
        collisions.len(),
        first.table,
        first.column,
        examples.join(", "),
        if collisions.len() > 5 { ", …" } else { "" }
    )))
}

//! `verify --repair --direction reverse`: the SQLite file is the target.
//! Rows are re-read from Supabase by key at the moment of the repair and
//! written in DoX's own shape through the reverse mirror's write
//! ([`crate::db::sqlite::mirror`]: the inverse normaliser, `BEGIN IMMEDIATE`, one
//! transaction per chunk). Supabase is only read.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{RepairOptions, TablePlan, TableRepair};
use crate::catalogue::Table;
use crate::db::sqlite::mirror::{self as file, RowsApplied, TableBatch};
use crate::db::supabase::UNREADABLE_JSON;
use crate::db::{SqliteDatabase, SupabaseDatabase};
use crate::error::{Error, Result};
use crate::normalise;
use crate::retry::{retry, RetryPolicy};

/// Whether a canonical Supabase row can be written in DoX's shape: every
/// value passes the inverse normaliser, and no jsonb was unreadable.
fn lands(t: &'static Table, row: &serde_json::Map<String, Value>) -> bool {
    t.columns.iter().all(|c| {
        let v = row.get(c.supabase).unwrap_or(&Value::Null);
        let unreadable = matches!(v, Value::String(s) if s.starts_with(UNREADABLE_JSON));
        !unreadable && normalise::to_dox(c, v, None).is_ok()
    })
}

/// Read the planned rows from Supabase now and write them to the file.
pub(super) async fn rewrite(
    sqlite: &SqliteDatabase,
    supabase: &SupabaseDatabase,
    p: &TablePlan,
    opts: &RepairOptions,
    done: &mut TableRepair,
) -> Result<()> {
    let t = p.table;
    let keys: Vec<&str> = p.upsert.iter().map(String::as_str).collect();
    for chunk in keys.chunks(opts.batch_rows.max(1)) {
        let rows = retry(RetryPolicy::default(), || supabase.rows_by_keys(t, chunk)).await?;
        done.gone_from_source += (chunk.len() - rows.len().min(chunk.len())) as u64;
        let mut batch = TableBatch::default();
        for raw in rows {
            let row = normalise::from_supabase_owned(t, raw);
            if lands(t, &row) {
                batch.rows.push(row);
            } else {
                done.cannot_land += 1;
            }
        }
        done.upserted += write(sqlite, t, batch).await?.written;
    }
    Ok(())
}

/// Delete the planned rows found only in the file, a chunk at a time. Each
/// chunk's keys are read from Supabase again just before, and the rows
/// Supabase holds now are kept (written meanwhile: the two scans of the plan
/// are not one snapshot).
pub(super) async fn delete(
    sqlite: &SqliteDatabase,
    supabase: &SupabaseDatabase,
    p: &TablePlan,
    opts: &RepairOptions,
    done: &mut TableRepair,
) -> Result<()> {
    let t = p.table;
    let key = t.key().supabase;
    let keys: Vec<&str> = p.delete.iter().map(String::as_str).collect();
    for chunk in keys.chunks(opts.batch_rows.max(1)) {
        let present: BTreeSet<String> =
            retry(RetryPolicy::default(), || supabase.rows_by_keys(t, chunk))
                .await?
                .iter()
                .filter_map(|r| r.get(key).and_then(Value::as_str).map(str::to_owned))
                .collect();
        done.now_in_source += present.len() as u64;
        let gone: Vec<String> = chunk
            .iter()
            .filter(|k| !present.contains(**k))
            .map(|k| (*k).to_owned())
            .collect();
        if gone.is_empty() {
            continue;
        }
        let batch = TableBatch {
            rows: Vec::new(),
            gone,
        };
        done.deleted += write(sqlite, t, batch).await?.deleted;
    }
    Ok(())
}

/// One transaction on the file, off the async threads.
async fn write(
    sqlite: &SqliteDatabase,
    t: &'static Table,
    batch: TableBatch,
) -> Result<RowsApplied> {
    let path = sqlite.path().to_owned();
    let (applied, refused) =
        crate::sync::blocking("SQLite", move || file::apply_to_file(&path, &[(t, batch)])).await?;
    // The rows the file accepted are written; a refused one is no repair.
    if let Some(r) = refused.first() {
        return Err(Error::invalid(format!(
            "the SQLite file refused {} row(s) of {}; first: key {} ({}: {})",
            refused.len(),
            t.sqlite,
            r.key,
            r.code,
            r.message
        )));
    }
    Ok(applied.get(t.sqlite).copied().unwrap_or_default())
}

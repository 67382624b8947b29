//! `--sample N`: a uniform random sample of source rows, each looked up on the
//! target by key ([`compare_sample`]).

use rand::{Rng, SeedableRng};

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::merge::{Merger, SqliteItem, SupabaseRow};
use crate::db::supabase::PAGE_ROWS;
use crate::db::{SqliteDatabase, SupabaseDatabase};
use crate::error::Result;
use crate::normalise::{SqlRow, SqlValue};
use crate::retry::{retry, RetryPolicy};

/// A uniform random sample of source rows (reservoir sampling over one pass of
/// the local file), each looked up on the target by key.
pub(super) async fn compare_sample(
    source: &SqliteDatabase,
    target: &SupabaseDatabase,
    size: usize,
    mut m: Merger<'_>,
) -> Result<()> {
    let t = m.t;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut reservoir: Vec<SqlRow> = Vec::with_capacity(size.min(100_000));
    let mut seen: u64 = 0;
    let mut after: Option<SqlValue> = None;
    loop {
        let page = source.page(t, after.take(), 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last[0].clone());
        let full = page.len() == 1000;
        for row in page {
            seen += 1;
            if reservoir.len() < size {
                reservoir.push(row);
            } else {
                let j = rng.gen_range(0..seen);
                if let Ok(j) = usize::try_from(j) {
                    if j < size {
                        reservoir[j] = row;
                    }
                }
            }
        }
        if !full {
            break;
        }
    }
    let mut items: Vec<SqliteItem> = reservoir
        .iter()
        .map(|r| SqliteItem::new(t, r, m.digests, m.policy))
        .collect();
    drop(reservoir);
    items.sort_by(|a, b| a.key().cmp(&b.key()));
    let keys: Vec<&str> = items.iter().filter_map(SqliteItem::key).collect();
    let mut found: std::collections::HashMap<String, SupabaseRow> =
        std::collections::HashMap::new();
    let rows = retry(RetryPolicy::default(), || target.rows_by_keys(t, &keys)).await?;
    for raw in rows {
        let r = SupabaseRow::new(t, raw, m.digests, m.direction)?;
        found.insert(r.key().to_owned(), r);
    }
    m.tr.segments = 1;
    for item in items {
        let hit = item.key().and_then(|k| found.remove(k));
        m.pair(item, hit);
    }
    if m.tr.counts.differences() > 0 {
        m.tr.segments_differing = 1;
    }
    m.tr.notes.push(format!(
        "sample of {} of {seen} source rows; rows only in the target are seen only through the counts",
        m.tr.counts.compared
    ));
    Ok(())
}

/// In reverse: a uniform random sample of Supabase rows (reservoir sampling
/// over one pass of the table), each looked up in the SQLite file by key.
pub(super) async fn compare_sample_reverse(
    sqlite: &SqliteDatabase,
    supabase: &SupabaseDatabase,
    size: usize,
    mut m: Merger<'_>,
) -> Result<()> {
    let t = m.t;
    let key = t.key().supabase;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut reservoir: Vec<Map<String, Value>> = Vec::with_capacity(size.min(100_000));
    let mut seen: u64 = 0;
    let mut after: Option<String> = None;
    loop {
        let from = after.as_deref();
        let page = retry(RetryPolicy::default(), || supabase.page(t, from, PAGE_ROWS)).await?;
        // Only an empty page is the end (max-rows may be below PAGE_ROWS).
        let Some(last) = page.last().and_then(|r| r.get(key)).and_then(Value::as_str) else {
            break;
        };
        after = Some(last.to_owned());
        for row in page {
            seen += 1;
            if reservoir.len() < size {
                reservoir.push(row);
            } else if let Ok(j) = usize::try_from(rng.gen_range(0..seen)) {
                if j < size {
                    reservoir[j] = row;
                }
            }
        }
    }
    let mut rows: Vec<SupabaseRow> = reservoir
        .into_iter()
        .map(|r| SupabaseRow::new(t, r, m.digests, m.direction))
        .collect::<Result<_>>()?;
    rows.sort_by(|a, b| a.key().cmp(b.key()));
    let keys: Vec<String> = rows.iter().map(|r| r.key().to_owned()).collect();
    let mut found: HashMap<String, SqliteItem> = HashMap::new();
    for row in sqlite.rows_by_keys(t, keys).await? {
        let item = SqliteItem::new(t, &row, m.digests, m.policy);
        if let Some(k) = item.key() {
            found.insert(k.to_owned(), item);
        }
    }
    m.tr.segments = 1;
    for r in rows {
        match found.remove(r.key()) {
            Some(item) => m.pair(item, Some(r)),
            None => m.only_in_supabase(r),
        }
    }
    if m.tr.counts.differences() > 0 {
        m.tr.segments_differing = 1;
    }
    m.tr.notes.push(format!(
        "sample of {} of {seen} source rows; rows only in the target are seen only through the counts",
        m.tr.counts.compared
    ));
    Ok(())
}

/// The rows of `keys` only, looked up on both sides by key and compared as
/// every other mode compares them (`cutover run`'s verification of what
/// changed since its full one). A key on neither side is equal: deleted on
/// both. Works in both directions.
pub(super) async fn compare_keys(
    sqlite: &SqliteDatabase,
    supabase: &SupabaseDatabase,
    keys: &[String],
    mut m: Merger<'_>,
) -> Result<()> {
    let t = m.t;
    let mut on_supabase: HashMap<String, SupabaseRow> = HashMap::new();
    for chunk in keys.chunks(PAGE_ROWS.clamp(1, 500)) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let rows = retry(RetryPolicy::default(), || supabase.rows_by_keys(t, &refs)).await?;
        for raw in rows {
            let r = SupabaseRow::new(t, raw, m.digests, m.direction)?;
            on_supabase.insert(r.key().to_owned(), r);
        }
    }
    let mut on_sqlite: Vec<SqliteItem> = sqlite
        .rows_by_keys(t, keys.to_vec())
        .await?
        .iter()
        .map(|r| SqliteItem::new(t, r, m.digests, m.policy))
        .collect();
    on_sqlite.sort_by(|a, b| a.key().cmp(&b.key()));
    m.tr.segments = 1;
    for item in on_sqlite {
        let hit = item.key().and_then(|k| on_supabase.remove(k));
        m.pair(item, hit);
    }
    let mut left: Vec<SupabaseRow> = on_supabase.into_values().collect();
    left.sort_by(|a, b| a.key().cmp(b.key()));
    for r in left {
        m.only_in_supabase(r);
    }
    if m.tr.counts.differences() > 0 {
        m.tr.segments_differing = 1;
    }
    Ok(())
}

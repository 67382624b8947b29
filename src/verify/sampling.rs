//! `--sample N`: a uniform random sample of source rows, each looked up on the
//! target by key ([`compare_sample`]).

use rand::{Rng, SeedableRng};

use super::merge::{Merger, SourceItem, TargetRow};
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
    let mut items: Vec<SourceItem> = reservoir
        .iter()
        .map(|r| SourceItem::new(t, r, m.digests, m.policy))
        .collect();
    drop(reservoir);
    items.sort_by(|a, b| a.key().cmp(&b.key()));
    let keys: Vec<&str> = items.iter().filter_map(SourceItem::key).collect();
    let mut found: std::collections::HashMap<String, TargetRow> = std::collections::HashMap::new();
    let rows = retry(RetryPolicy::default(), || target.rows_by_keys(t, &keys)).await?;
    for raw in rows {
        let r = TargetRow::new(t, raw, m.digests)?;
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

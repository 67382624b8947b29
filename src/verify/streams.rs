//! Both sides read in key order, concurrently, and cut into segments for the
//! merge ([`compare_content`]).

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;

use serde_json::Value;
use tokio::sync::mpsc;

use super::merge::{check_order, Merger, SqliteItem, SupabaseRow};
use crate::catalogue::Table;
use crate::db::supabase::PAGE_ROWS;
use crate::db::{SqliteDatabase, SupabaseDatabase};
use crate::error::{Error, Result};
use crate::normalise::{SqlRow, UnrepresentablePolicy};
use crate::retry::{retry, RetryPolicy};
use crate::Direction;

type Pages<T> = mpsc::Receiver<Result<Vec<T>>>;

/// Aborts a spawned reader when the comparison stops early (on an error).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lost_worker(e: tokio::task::JoinError) -> Error {
    Error::from(std::io::Error::other(format!(
        "a verification worker stopped: {e}"
    )))
}

/// Canonicalise a page of source rows off the async threads: parsing JSON
/// text and copying long texts is the largest CPU cost of a content run.
async fn canonical_page(
    t: &'static Table,
    page: Vec<SqlRow>,
    digests: RandomState,
    policy: UnrepresentablePolicy,
) -> Result<Vec<SqliteItem>> {
    tokio::task::spawn_blocking(move || {
        page.iter()
            .map(|r| SqliteItem::new(t, r, &digests, policy))
            .collect()
    })
    .await
    .map_err(lost_worker)
}

/// The target side, as a task of its own: HTTP, JSON parsing and
/// normalisation run on another core while the caller compares. The request
/// for page N+1 is in flight while page N is normalised.
async fn read_target(
    target: SupabaseDatabase,
    t: &'static Table,
    digests: RandomState,
    direction: Direction,
    tx: mpsc::Sender<Result<Vec<SupabaseRow>>>,
) {
    let key = t.key().supabase;
    let target = &target;
    let fetch = |after: Option<String>| async move {
        retry(RetryPolicy::default(), || {
            target.page(t, after.as_deref(), PAGE_ROWS)
        })
        .await
    };
    let mut page = fetch(None).await;
    loop {
        let raw = match page {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        // Only an empty page ends the table: a server whose max-rows is
        // below PAGE_ROWS returns short pages before the end.
        let Some(last) = raw.last() else { return };
        let after = match last.get(key) {
            Some(Value::String(k)) => k.clone(),
            other => {
                let e = Error::Protocol(format!(
                    "{}: a row whose key is not text: {other:?}",
                    t.supabase
                ));
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let d = digests.clone();
        let normalise = tokio::task::spawn_blocking(move || {
            raw.into_iter()
                .map(|r| SupabaseRow::new(t, r, &d, direction))
                .collect::<Result<Vec<_>>>()
        });
        let (rows, next) = tokio::join!(normalise, fetch(Some(after)));
        let rows = rows.map_err(lost_worker).and_then(|r| r);
        let failed = rows.is_err();
        if tx.send(rows).await.is_err() || failed {
            return;
        }
        page = next;
    }
}

/// Read both sides concurrently in key order and merge them segment by segment.
pub(super) async fn compare_content(
    source: &SqliteDatabase,
    target: &SupabaseDatabase,
    segment_rows: usize,
    mut m: Merger<'_>,
) -> Result<()> {
    let t = m.t;
    let n = segment_rows.max(1);
    let digests = m.digests.clone();
    let policy = m.policy;
    // Two pages in flight per side: reading overlaps comparing, memory stays bounded.
    let (stx, mut srx) = mpsc::channel::<Result<Vec<SqliteItem>>>(2);
    let (ttx, mut trx) = mpsc::channel::<Result<Vec<SupabaseRow>>>(2);
    // The reader task owns a handle of its own on the same HTTP client.
    let _target = AbortOnDrop(tokio::spawn(read_target(
        SupabaseDatabase::new(target.rest().clone()),
        t,
        digests.clone(),
        m.direction,
        ttx,
    )));
    let read_source = async move {
        let mut page = source.page(t, None, n).await;
        loop {
            let rows = match page {
                Ok(p) => p,
                Err(e) => {
                    let _ = stx.send(Err(e)).await;
                    return;
                }
            };
            let Some(last) = rows.last() else { return };
            // A short page is the last one.
            let next_after = (rows.len() == n).then(|| last[0].clone());
            let canonical = canonical_page(t, rows, digests.clone(), policy);
            let (items, next) = match next_after {
                Some(after) => {
                    let (items, next) = tokio::join!(canonical, source.page(t, Some(after), n));
                    (items, Some(next))
                }
                None => (canonical.await, None),
            };
            let failed = items.is_err();
            if stx.send(items).await.is_err() || failed {
                return;
            }
            match next {
                Some(next) => page = next,
                None => return,
            }
        }
    };
    let merge = async move {
        let mut sbuf: VecDeque<SqliteItem> = VecDeque::new();
        let mut tbuf: VecDeque<SupabaseRow> = VecDeque::new();
        let (mut s_open, mut t_open) = (true, true);
        let (mut s_last, mut t_last) = (None::<String>, None::<String>);
        loop {
            while s_open && sbuf.len() < n {
                match recv(&mut srx).await? {
                    None => s_open = false,
                    Some(items) => {
                        let from = sbuf.len();
                        for item in items {
                            match item.key() {
                                None => m.unkeyed(item),
                                Some(_) => sbuf.push_back(item),
                            }
                        }
                        let keys = sbuf.range(from..).filter_map(SqliteItem::key);
                        check_order(t, "SQLite", &mut s_last, keys)?;
                    }
                }
            }
            while t_open && tbuf.len() < n {
                match recv(&mut trx).await? {
                    None => t_open = false,
                    Some(rows) => {
                        check_order(
                            t,
                            "Supabase",
                            &mut t_last,
                            rows.iter().map(SupabaseRow::key),
                        )?;
                        tbuf.extend(rows);
                    }
                }
            }
            if sbuf.is_empty() && tbuf.is_empty() && !s_open && !t_open {
                return Ok(());
            }
            // The segment ends at the smaller last key of a side that may still
            // have rows beyond it, so the segment holds every row of its range.
            let s_bound = if s_open {
                sbuf.back().and_then(SqliteItem::key)
            } else {
                None
            };
            let t_bound = if t_open {
                tbuf.back().map(SupabaseRow::key)
            } else {
                None
            };
            let bound = match (s_bound, t_bound) {
                (Some(a), Some(b)) => Some(a.min(b).to_owned()),
                (a, b) => a.or(b).map(str::to_owned),
            };
            let within = |k: &str| bound.as_deref().is_none_or(|b| k <= b);
            let ns = sbuf
                .iter()
                .take_while(|i| within(i.key().unwrap_or_default()))
                .count();
            let nt = tbuf.iter().take_while(|r| within(r.key())).count();
            let seg_s: Vec<SqliteItem> = sbuf.drain(..ns).collect();
            let seg_t: Vec<SupabaseRow> = tbuf.drain(..nt).collect();
            m.segment(seg_s, seg_t);
        }
    };
    let ((), merged) = tokio::join!(read_source, merge);
    merged
}

async fn recv<T>(rx: &mut Pages<T>) -> Result<Option<Vec<T>>> {
    rx.recv().await.transpose()
}

//! Landing: sending a batch (adaptive size, retries, bisection down to the rows
//! at fault) and the stale guard after it lands; `land_rows` for `serve`.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalogue::Table;
use crate::db::SqliteDatabase;
use crate::error::{Error, Result};
use crate::normalise::coerced::CoercedLog;
use crate::normalise::{Lossy, UnrepresentablePolicy};
use crate::postgres::{CopyMode, Postgres};
use crate::rest::RestClient;
use crate::retry::{retry_observed, retry_when, Observer, RetryPolicy, SharedObserver};

use super::checkpoint::Cursor;
use super::prepare::{prepare_row_with, Prepared, PreparedRows};
use super::rejects::{Reject, RejectLog};
use super::source::SourceBatch;

/// A batch whose rows have landed (or been rejected), before the stale guard.
pub(super) struct Sent {
    seq: u64,
    batch: SourceBatch,
    written: u64,
    rejects: u64,
    /// Keys of the rows Supabase refused.
    refused: Vec<String>,
}

/// What one landed batch produced.
pub(super) struct Landed {
    pub(super) seq: u64,
    pub(super) cursor: Cursor,
    pub(super) read: u64,
    pub(super) written: u64,
    pub(super) rejects: u64,
    pub(super) resynced: u64,
    pub(super) lossy: Vec<(&'static str, Lossy)>,
}

/// Everything a batch task needs; cheap to clone.
#[derive(Clone)]
pub(super) struct Lander {
    pub(super) rest: RestClient,
    pub(super) table: &'static Table,
    pub(super) size: Arc<AtomicUsize>,
    pub(super) max_rows: usize,
    pub(super) max_wait: Duration,
    pub(super) rejects: Arc<RejectLog>,
    pub(super) source: Option<SqliteDatabase>,
    pub(super) policy: UnrepresentablePolicy,
    pub(super) coerced: Arc<CoercedLog>,
    /// What happens to the rows of a request that kept failing (the end of
    /// [`Error::GaveUp`]'s message).
    pub(super) gave_up: &'static str,
    /// Told of every failed attempt that is tried again (the daemon's figures).
    pub(super) observe: Option<SharedObserver>,
    /// `--via postgres`: rows go in with COPY over the connection string
    /// instead of PostgREST (everything else is the same).
    pub(super) copy: Option<CopySink>,
}

/// `--via postgres`: the database, and whether the table is still copied
/// straight in (until a row's key is found there already: from then on, into a
/// staging table and upserted).
#[derive(Clone)]
pub(super) struct CopySink {
    pub(super) db: Postgres,
    pub(super) direct: Arc<AtomicBool>,
}

impl CopySink {
    pub(super) fn new(db: Postgres, direct: bool) -> CopySink {
        CopySink {
            db,
            direct: Arc::new(AtomicBool::new(direct)),
        }
    }

    async fn send(&self, table: &'static Table, rows: bytes::Bytes) -> Result<u64> {
        if self.direct.load(Ordering::Relaxed) {
            match self.db.copy(table, rows.clone(), CopyMode::Direct).await {
                Err(Error::Postgres { code, .. }) if code == "23505" => {
                    // A resumed or repeated run, or rows the app mirrored meanwhile.
                    self.direct.store(false, Ordering::Relaxed);
                    tracing::debug!(
                        table = table.sqlite,
                        "rows already there: upserting from now on"
                    );
                }
                other => return other,
            }
        }
        self.db.copy(table, rows, CopyMode::Upsert).await
    }
}

/// [`Lander::gave_up`] for a backfill or an import.
pub(super) const RESUME_HINT: &str =
    "progress is checkpointed: run the same command again to resume";

pub(super) fn transient_but_not_split(e: &Error) -> bool {
    !e.must_split()
}

/// How many times a batch is halved after a client timeout. A timeout may come
/// from a batch too slow for the server (then halves pass), or from a server
/// that does not answer (then every half waits a full timeout too): after
/// this many halvings it is retried as it is, with backoff, and counted as the
/// failure it is (the daemon shows it), until the time budget is spent.
const TIMEOUT_SPLITS: u32 = 2;

/// Retried in place: not what splitting is for (a size or a slowness the
/// server reports), nor a client timeout while it may still be split.
fn transient_but_not_split_nor_slow(e: &Error) -> bool {
    !e.must_split() && !matches!(e, Error::Timeout(_))
}

impl Lander {
    fn shrink(&self) {
        let cur = self.size.load(Ordering::Relaxed);
        self.size.store((cur / 2).max(1), Ordering::Relaxed);
    }

    fn grow(&self) {
        let cur = self.size.load(Ordering::Relaxed);
        self.size
            .store((cur + cur / 4 + 1).min(self.max_rows), Ordering::Relaxed);
    }

    /// Land `rows`; returns how many landed. Rows PostgREST refuses for good are
    /// isolated by bisection and pushed to `rejected`.
    fn land<'a>(
        &'a self,
        all: &'a PreparedRows,
        range: Range<usize>,
        rejected: &'a mut Vec<(Prepared, Error)>,
        timeouts: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64>> + Send + 'a>> {
        Box::pin(async move {
            let n_rows = range.len();
            if n_rows == 0 {
                return Ok(0);
            }
            let started = Instant::now();
            // A single row is retried for every transient error; a batch is split
            // instead when it was too large or too slow (a timeout: a few times).
            let splits_on_timeout = n_rows > 1 && timeouts < TIMEOUT_SPLITS;
            let when: fn(&Error) -> bool = match (n_rows, splits_on_timeout) {
                (1, _) => |_| true,
                (_, true) => transient_but_not_split_nor_slow,
                (_, false) => transient_but_not_split,
            };
            let observe: Observer<'_> = match &self.observe {
                Some(o) => o.as_ref(),
                None => &|_: &Error| {},
            };
            let policy = RetryPolicy::for_up_to(self.max_wait);
            let res = match &self.copy {
                None => {
                    let body = all.body(range.clone());
                    retry_observed(policy, when, observe, || {
                        self.rest.upsert(self.table, body.clone())
                    })
                    .await
                }
                Some(sink) => {
                    let rows = super::copy::copy_text(self.table, all, range.clone())?;
                    retry_observed(policy, when, observe, || {
                        sink.send(self.table, rows.clone())
                    })
                    .await
                }
            };
            match res {
                Ok(n) if n == n_rows as u64 => {
                    if started.elapsed() < Duration::from_secs(1)
                        && n_rows >= self.size.load(Ordering::Relaxed)
                    {
                        self.grow();
                    }
                    Ok(n)
                }
                Ok(n) => Err(Error::Protocol(format!(
                    "{}: sent {} rows, PostgREST reports {n} written",
                    self.table.supabase, n_rows
                ))),
                Err(e) if n_rows > 1 && e.must_split() => {
                    self.shrink();
                    self.split(all, range, rejected, timeouts).await
                }
                Err(e @ Error::Timeout(_)) if splits_on_timeout => {
                    // A failure all the same: counted and shown at once.
                    observe(&e);
                    self.shrink();
                    self.split(all, range, rejected, timeouts + 1).await
                }
                Err(e) if e.is_transient() => {
                    if e.wants_smaller_batch() {
                        self.shrink();
                    }
                    Err(Error::GaveUp {
                        after: self.max_wait,
                        last: Box::new(e),
                        hint: self.gave_up,
                    })
                }
                // Auth, a missing table or column: no subset of the rows would pass.
                Err(e) if !e.is_data_error() => Err(e),
                Err(e) if n_rows == 1 => {
                    rejected.push((all.get(range.start), e));
                    Ok(0)
                }
                // Bisect to find the rows at fault; the others land.
                Err(_) => self.split(all, range, rejected, timeouts).await,
            }
        })
    }

    async fn split(
        &self,
        all: &PreparedRows,
        range: Range<usize>,
        rejected: &mut Vec<(Prepared, Error)>,
        timeouts: u32,
    ) -> Result<u64> {
        let mid = range.start + range.len() / 2;
        let n = self.land(all, range.start..mid, rejected, timeouts).await?;
        Ok(n + self.land(all, mid..range.end, rejected, timeouts).await?)
    }

    /// Send a batch: its rows land or are rejected. What follows (the stale
    /// guard, [`Lander::settle`]) runs apart, so the next batch can take the
    /// request slot at once.
    pub(super) async fn send(self, seq: u64, batch: SourceBatch) -> Result<Sent> {
        let mut refused = Vec::new();
        let written = self
            .land(&batch.rows, 0..batch.rows.len(), &mut refused, 0)
            .await?;
        let rejects: Vec<Reject> = refused
            .iter()
            .map(|(p, e)| Reject::refused(self.table, p, e))
            .collect();
        self.rejects.write(&rejects)?;
        Ok(Sent {
            seq,
            written,
            rejects: (batch.rejects.len() + rejects.len()) as u64,
            refused: refused.into_iter().map(|(p, _)| p.key).collect(),
            batch,
        })
    }

    /// The stale guard for a sent batch, when it is on: if anybody committed
    /// to the source since the batch was read, read its rows again.
    pub(super) async fn settle(self, sent: Sent) -> Result<Landed> {
        let Sent {
            seq,
            batch,
            written,
            rejects,
            refused,
        } = sent;
        let resynced = match (&self.source, batch.check_stale) {
            // Nobody committed to the source since the batch was read: nothing can be stale.
            (Some(db), true)
                if batch.version.is_some() && db.data_version().await.ok() == batch.version =>
            {
                0
            }
            (Some(db), true) => {
                let refused: Vec<&str> = refused.iter().map(String::as_str).collect();
                self.resync(db, &batch.rows, &refused).await?
            }
            _ => 0,
        };
        Ok(Landed {
            seq,
            cursor: batch.cursor,
            read: batch.read,
            written,
            rejects,
            resynced,
            lossy: batch.lossy,
        })
    }

    /// The stale guard: read the landed rows again by key; send the current
    /// version of rows that changed since they were read, delete the ones that
    /// are gone, and repeat until they are stable.
    async fn resync(
        &self,
        db: &SqliteDatabase,
        sent: &PreparedRows,
        refused: &[&str],
    ) -> Result<u64> {
        // What was sent, by key: a row changed if it now prepares to other JSON.
        let mut known: HashMap<String, Vec<u8>> = (0..sent.len())
            .filter(|&i| !refused.contains(&sent.key(i)))
            .map(|i| (sent.key(i).to_owned(), sent.json(i).to_vec()))
            .collect();
        let mut resent = 0u64;
        for _round in 0..5 {
            let now = db
                .rows_by_keys(self.table, known.keys().cloned().collect())
                .await?;
            let mut changed = Vec::new();
            let mut present = std::collections::HashSet::new();
            for row in &now {
                let key = row[0].display();
                present.insert(key.clone());
                // Rows the app added in the range are the mirror's business, not ours.
                if let Some(sent_json) = known.get(&key) {
                    let (mut lossy, mut coerced) = (Vec::new(), Vec::new());
                    if let Ok(p) =
                        prepare_row_with(self.table, row, &mut lossy, self.policy, &mut coerced)
                    {
                        if p.json.as_bytes() != sent_json.as_slice() {
                            // The app changed it: a coerced value is a new original.
                            self.coerced.write(&coerced)?;
                            changed.push(p);
                        }
                    }
                }
            }
            let gone: Vec<String> = known
                .keys()
                .filter(|k| !present.contains(*k))
                .cloned()
                .collect();
            if changed.is_empty() && gone.is_empty() {
                return Ok(resent);
            }
            let mut refused = Vec::new();
            let rows = PreparedRows::from_rows(&changed);
            // Rows sent again are there already: upserted, never copied straight in.
            let mut again = self.clone();
            if let Some(sink) = &mut again.copy {
                sink.direct = Arc::new(AtomicBool::new(false));
            }
            again.land(&rows, 0..rows.len(), &mut refused, 0).await?;
            for k in &gone {
                let filter = [(self.table.key().supabase, Some(k.clone()))];
                retry_when(
                    RetryPolicy::for_up_to(self.max_wait),
                    transient_but_not_split,
                    || async {
                        match &self.copy {
                            Some(sink) => sink.db.delete_key(self.table, k).await,
                            None => self.rest.delete(self.table.supabase, &filter).await,
                        }
                    },
                )
                .await?;
                known.remove(k);
            }
            for p in changed.iter() {
                known.insert(p.key.clone(), p.json.clone().into_bytes());
            }
            resent += (changed.len() + gone.len()) as u64;
            tracing::debug!(
                table = self.table.sqlite,
                changed = changed.len(),
                gone = gone.len(),
                "resent rows changed during the copy"
            );
        }
        tracing::warn!(table = self.table.sqlite, "rows kept changing during the copy; the dual-write mirror carries their latest version");
        Ok(resent)
    }
}

/// Land one table's prepared rows through the backfill's path (requests of
/// `max_rows` rows, as many in flight as `slots` allows, a request halving on
/// 413 or a statement timeout, retries for up to `max_wait`, bisection down to
/// the rows at fault). Used by `serve`. Returns the rows written and the rows
/// PostgREST refused for good, with their errors (the caller decides whether
/// they are dead letters: [`Reject::refused`]). `observe` is told of every
/// failed attempt that is tried again.
pub(crate) async fn land_rows(
    rest: &RestClient,
    table: &'static Table,
    rows: &PreparedRows,
    max_rows: usize,
    slots: &tokio::sync::Semaphore,
    max_wait: Duration,
    observe: SharedObserver,
) -> Result<(u64, Vec<(Prepared, Error)>)> {
    use futures::{StreamExt, TryStreamExt};
    let lander = Lander {
        rest: rest.clone(),
        table,
        size: Arc::new(AtomicUsize::new(max_rows.max(1))),
        max_rows: max_rows.max(1),
        max_wait,
        // Sent here only by a backfill's `Lander::send`.
        rejects: Arc::new(RejectLog::open(PathBuf::new(), false)?),
        // Without a source there is no stale guard, so rows are never
        // prepared again here: the policy and its log are not used.
        source: None,
        policy: UnrepresentablePolicy::Reject,
        coerced: Arc::new(CoercedLog::new(PathBuf::new())),
        gave_up: "the changes stay in the change log and are sent again",
        observe: Some(observe),
        copy: None,
    };
    // Requests of `max_rows` rows, each holding one of `slots` while it is out
    // (the keys are distinct; the slots may be shared with other batches).
    let step = max_rows.max(1);
    let chunks: Vec<Range<usize>> = (0..rows.len())
        .step_by(step)
        .map(|s| s..(s + step).min(rows.len()))
        .collect();
    let landed: Vec<(u64, Vec<(Prepared, Error)>)> = futures::stream::iter(chunks)
        .map(|range| {
            let lander = &lander;
            async move {
                let _slot = slots
                    .acquire()
                    .await
                    .map_err(|_| Error::Protocol("the request slots were closed".into()))?;
                let mut refused = Vec::new();
                let n = lander.land(rows, range, &mut refused, 0).await?;
                Ok::<_, Error>((n, refused))
            }
        })
        .buffer_unordered(usize::MAX)
        .try_collect()
        .await?;
    let written = landed.iter().map(|(n, _)| n).sum();
    let refused = landed.into_iter().flat_map(|(_, r)| r).collect();
    Ok((written, refused))
}

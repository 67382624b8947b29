//! The reverse direction: Supabase is the primary, the SQLite file the
//! rollback copy. The change log is on Supabase ([`crate::reverse::capture`]):
//!
//! 1. read the oldest pending changes (`rpc/dualwrite_changes`, service key),
//!    in seq order;
//! 2. coalesce them to distinct keys per table and read those rows as they
//!    are *now* (`key=in.(…)`, in requests short enough for any proxy), so a
//!    batch always writes the newest version;
//! 3. write them to SQLite in DoX's shape ([`crate::normalise::to_dox`]) and
//!    delete the keys that are gone, in one `BEGIN IMMEDIATE` transaction;
//! 4. only after that commit, acknowledge exactly the seqs read
//!    (`rpc/dualwrite_changes_ack`): a change committed meanwhile keeps its
//!    entry and goes in the next batch.
//!
//! A crash anywhere before 4 leaves the changes in the log (they are applied
//! again, idempotently). A row the file refuses for its data is set aside
//! ([`crate::db::sqlite::mirror`]), written to `reverse-rejects.ndjson`, counted,
//! and its change acknowledged with the rest. One batch is out at a time: the
//! log has no cursor (a transaction that took a lower seq but committed later
//! is still found at its head), so a second claim would read the first again.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::pipeline::{Claimed, Poll, Side};
use super::stats::{Backlog, BacklogReader, Landed, Stats};
use super::ServeOptions;
use crate::backfill::{Reject, RejectLog};
use crate::capture;
use crate::catalogue::{Table, TABLES};
use crate::db::sqlite::mirror::{self as apply, TableBatch};
use crate::db::SupabaseDatabase;
use crate::error::{Error, Result};
use crate::normalise::from_supabase_owned;
use crate::rest::RestClient;
use crate::reverse::capture as rc;

/// One entry of the change log.
#[derive(Debug, Clone, Deserialize)]
struct RemoteChange {
    seq: i64,
    tbl: String,
    key: String,
}

/// The time of a change as Supabase writes it (RFC 3339), in seconds since the epoch.
pub(crate) fn epoch_of(at: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.timestamp_millis() as f64 / 1000.0)
}

pub(super) struct Reverse {
    opts: ServeOptions,
    rest: RestClient,
    source: SupabaseDatabase,
    conn: Arc<Mutex<rusqlite::Connection>>,
    rejects: Arc<RejectLog>,
    stats: Arc<Stats>,
}

impl Reverse {
    /// Open the file for the reverse mirror: forward capture must be off on it.
    pub(super) async fn open(
        rest: RestClient,
        opts: &ServeOptions,
        stats: Arc<Stats>,
    ) -> Result<Reverse> {
        let db = opts.db_path.clone();
        let conn = crate::sync::blocking("SQLite", move || {
            let c = capture::open_drainer(&db)?;
            if capture::triggers_on(&c)?.log_present {
                return Err(Error::invalid(format!(
                    "forward capture is installed on {}: its triggers would log every row the reverse \
                     mirror writes; run `dualwrite capture uninstall` first (after its changes are drained)",
                    db.display()
                )));
            }
            Ok(c)
        })
        .await?;
        let rejects = Arc::new(RejectLog::open(opts.state_dir.reverse_rejects(), true)?);
        Ok(Reverse {
            opts: opts.clone(),
            source: SupabaseDatabase::new(rest.clone()),
            rest,
            conn: Arc::new(Mutex::new(conn)),
            rejects,
            stats,
        })
    }

    /// The rows of `keys` of `t` as they are now (canonical shape), in
    /// requests of `--request-rows` keys, `--concurrency` at a time.
    async fn read_rows(&self, t: &'static Table, keys: &[&str]) -> Result<Vec<Map<String, Value>>> {
        let chunks: Vec<Vec<String>> = keys
            .chunks(self.opts.request_rows.max(1))
            .map(|c| c.iter().map(|k| (*k).to_owned()).collect())
            .collect();
        let pages: Vec<Vec<Map<String, Value>>> = futures::stream::iter(chunks)
            .map(|chunk: Vec<String>| async move {
                let keys: Vec<&str> = chunk.iter().map(String::as_str).collect();
                self.stats
                    .retried(self.opts.max_wait, || self.source.rows_by_keys(t, &keys))
                    .await
            })
            .buffer_unordered(self.opts.concurrency.max(1))
            .try_collect()
            .await?;
        Ok(pages
            .into_iter()
            .flatten()
            .map(|r| from_supabase_owned(t, r))
            .collect())
    }
}

/// One batch: the seqs read, and per table the rows as they are now and the
/// keys that are gone.
pub(super) struct Batch {
    seqs: Vec<i64>,
    tables: Vec<(&'static Table, TableBatch)>,
}

impl Side for Reverse {
    type Batch = Batch;
    const OUTSTANDING: usize = 1;

    async fn check_capture(&mut self) -> Result<()> {
        let rest = &self.rest;
        let st = self
            .stats
            .retried(self.opts.max_wait, || rc::state(rest))
            .await?;
        if !st.enabled {
            let why =
                "capture is off on Supabase: run `dualwrite capture install --target supabase` \
                       (before the app writes to Supabase) first"
                    .to_owned();
            self.stats.capture_problem(Some(why.clone()));
            return Err(Error::invalid(why));
        }
        if !st.missing.is_empty() {
            if !self.opts.repair_triggers {
                let why = format!(
                    "capture triggers are missing on Supabase on {} (was the table re-created?): writes to it \
                     are not captured; run `dualwrite capture install --target supabase`, or run serve \
                     without --no-repair-triggers",
                    st.missing.join(", ")
                );
                self.stats.capture_problem(Some(why.clone()));
                return Err(Error::invalid(why));
            }
            tracing::warn!(tables = %st.missing.join(","), "capture triggers were missing on Supabase (a table re-created?); re-installing them, and re-sending those tables whole");
            let r = rc::enable(&self.rest).await?;
            tracing::info!(missing = %r.missing.join(","), "capture re-installed on Supabase");
        }
        self.stats.capture_problem(None);
        Ok(())
    }

    async fn poll(&mut self) -> Result<Poll> {
        // The log is on Supabase: looking is claiming (one request).
        Ok(Poll {
            changed: true,
            schema_changed: false,
        })
    }

    async fn next_batch(
        &mut self,
        limit: usize,
        _busy: &HashSet<u64>,
    ) -> Result<Option<Claimed<Batch>>> {
        let rest = &self.rest;
        let changes: Vec<RemoteChange> = self
            .stats
            .retried(self.opts.max_wait, || async {
                let v = rest
                    .rpc("dualwrite_changes", &json!({ "max_rows": limit }))
                    .await?;
                serde_json::from_value(v).map_err(|e| {
                    Error::Protocol(format!("dualwrite_changes answered something else: {e}"))
                })
            })
            .await?;
        if changes.is_empty() {
            return Ok(None);
        }
        // Coalesce: the distinct keys of each table.
        let mut keys: BTreeMap<&'static str, (&'static Table, BTreeSet<&str>)> = BTreeMap::new();
        for c in &changes {
            match TABLES.iter().find(|t| t.supabase == c.tbl) {
                Some(t) => {
                    keys.entry(t.supabase)
                        .or_insert((t, BTreeSet::new()))
                        .1
                        .insert(c.key.as_str());
                }
                None => {
                    tracing::warn!(seq = c.seq, tbl = %c.tbl, "a change for a table that is not DoX's: dropped")
                }
            }
        }
        // Read the rows as they are now.
        let mut tables = Vec::new();
        for (t, ks) in keys.values() {
            let ks: Vec<&str> = ks.iter().copied().collect();
            let rows = self.read_rows(t, &ks).await?;
            let found: BTreeSet<&str> = rows
                .iter()
                .filter_map(|r| r.get(t.key().supabase).and_then(Value::as_str))
                .collect();
            let gone = ks
                .iter()
                .filter(|k| !found.contains(**k))
                .map(|k| (*k).to_owned())
                .collect();
            tables.push((*t, TableBatch { rows, gone }));
        }
        let n = changes.len();
        Ok(Some(Claimed {
            batch: Batch {
                seqs: changes.iter().map(|c| c.seq).collect(),
                tables,
            },
            keys: Vec::new(),
            changes: n,
        }))
    }

    fn send(
        &self,
        batch: Batch,
    ) -> impl std::future::Future<Output = Result<Landed>> + Send + 'static {
        let conn = Arc::clone(&self.conn);
        let rejects = Arc::clone(&self.rejects);
        let rest = self.rest.clone();
        let stats = Arc::clone(&self.stats);
        let max_wait = self.opts.max_wait;
        async move {
            let Batch { seqs, tables } = batch;
            // Written in one SQLite transaction.
            let (applied, refused) = crate::sync::blocking("SQLite", move || {
                apply::apply(&mut crate::sync::lock(&conn), &tables)
            })
            .await?;
            let mut landed = Landed::default();
            for (t, a) in &applied {
                landed.mirrored.push((t, a.written + a.deleted));
            }
            // Dead letters: recorded before their changes leave the log.
            let dead: Vec<Reject> = refused
                .into_iter()
                .map(|r| Reject {
                    table: r.table.sqlite.to_owned(),
                    key: r.key,
                    code: r.code.to_owned(),
                    message: r.message,
                    row: r.row,
                })
                .collect();
            rejects.write(&dead)?;
            landed
                .rejected
                .extend(dead.iter().map(|r| (r.table.clone(), 1)));
            // Committed: now, and only now, the changes may leave the log.
            let args = json!({ "seqs": seqs });
            stats
                .retried(max_wait, || rest.rpc("dualwrite_changes_ack", &args))
                .await?;
            Ok(landed)
        }
    }

    fn probe(&self) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let rest = self.rest.clone();
        async move { rest.probe(crate::catalogue::ARTIFACT.supabase).await }
    }

    fn backlog_reader(&self) -> BacklogReader {
        backlog_reader(self.rest.clone())
    }

    async fn close(self) {
        drop(self.conn);
    }
}

/// The reverse side's claim, read, write and acknowledgement for `cutover
/// rollback`, which drains Supabase's log into the file itself (the daemon
/// stood down) and remembers every key it wrote.
pub(crate) struct ReverseMirror {
    side: Reverse,
}

impl ReverseMirror {
    pub(crate) async fn open(rest: RestClient, opts: &ServeOptions) -> Result<ReverseMirror> {
        let stats = Arc::new(Stats::new(crate::Direction::Reverse, opts.max_lag));
        Ok(ReverseMirror {
            side: Reverse::open(rest, opts, stats).await?,
        })
    }

    /// One batch of at most `limit` changes into the file, acknowledged on
    /// Supabase once committed: the keys it held, by table (empty when the
    /// log was).
    pub(crate) async fn drain_batch(
        &mut self,
        limit: usize,
    ) -> Result<Vec<(&'static Table, Vec<String>)>> {
        let Some(c) = self.side.next_batch(limit, &HashSet::new()).await? else {
            return Ok(Vec::new());
        };
        let keys = c
            .batch
            .tables
            .iter()
            .map(|(t, b)| {
                let mut k: Vec<String> = b
                    .rows
                    .iter()
                    .filter_map(|r| r.get(t.key().supabase).and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect();
                k.extend(b.gone.iter().cloned());
                (*t, k)
            })
            .collect();
        self.side.send(c.batch).await?;
        Ok(keys)
    }

    pub(crate) async fn close(self) {
        self.side.close().await;
    }
}

/// Supabase's backlog, read from its change log through `rest` (the service key).
pub(super) fn backlog_reader(rest: RestClient) -> BacklogReader {
    Arc::new(move || {
        let rest = rest.clone();
        Box::pin(async move {
            let b = rc::backlog(&rest).await?;
            Ok(Backlog {
                pending: b.pending,
                estimated: b.estimated,
                oldest_at: b.oldest_at.as_deref().and_then(epoch_of),
            })
        })
    })
}

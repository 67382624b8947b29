//! Backfill: copy every DoX table into Supabase, fast, resumable, and without
//! losing or silently dropping a row.
//!
//! * The source is read in storage (rowid) order where the table has rowids
//!   (sequential reads; key order for the others), one page at a time (each
//!   page one consistent snapshot), and read ahead while batches are in flight,
//!   so memory stays flat whatever the file's size. The source is opened
//!   read-only and never changed.
//! * Rows go through the shared normaliser; a row Supabase cannot hold is a
//!   reject, written to `rejects.ndjson` with its error, and counted.
//! * Batches are bounded by rows and bytes and sent as idempotent upserts
//!   (`merge-duplicates`, `return=minimal`, `count=exact`), several in flight.
//!   The batch size halves on 413, statement timeout or 5xx and grows back when
//!   requests are fast. Transient failures are retried with backoff for up to
//!   `max_wait`; then the run stops with a clear error and can be resumed.
//! * A batch PostgREST refuses for good is bisected down to the rows at fault,
//!   which become rejects; the others land.
//! * Progress is checkpointed per table outside the source (`checkpoint.json`
//!   in the state directory), only up to the last batch below which every batch
//!   has landed (`backfill/watermark.rs`). A killed run resumes there (a storage-order
//!   position is checked against the key found there, since VACUUM may
//!   renumber rowids); finished tables are not redone.
//! * Stale rows: while the app keeps dual-writing, a row read by the backfill
//!   may be updated (or deleted) by the app and mirrored before the backfill's
//!   older copy lands. After a batch lands, if anybody committed to the source
//!   since it was read (`PRAGMA data_version`), the backfill reads its rows
//!   again by key and sends the current version of every row that changed (or
//!   deletes the ones that are gone), until they are stable; when nobody
//!   committed, nothing is re-read. See docs/backfill.md, "Backfill while the
//!   app dual-writes".

mod watermark;
use watermark::Watermark;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::task::JoinSet;

use crate::catalogue::{Table, TABLES};
use crate::coerced::{CoercedLog, CoercedValue};
use crate::db::sqlite::ScanFrom;
use crate::db::{SqliteDatabase, SupabaseDatabase};
use crate::error::{Error, Result};
use crate::normalise::{self, Lossy, SqlRef, SqlRow, SqlValue, UnrepresentablePolicy};
use crate::rest::RestClient;
use crate::retry::{retry, retry_when, RetryPolicy};
use crate::state_file;

/// How a backfill (or an import) runs.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// The tables to copy, in catalogue order; empty means all.
    pub tables: Vec<&'static Table>,
    /// Read, convert and validate everything; write nothing (not even a checkpoint).
    pub dry_run: bool,
    /// Batches in flight at once.
    pub concurrency: usize,
    /// Rows per batch at most (the starting size too).
    pub batch_rows: usize,
    /// Bytes of JSON per batch at most.
    pub batch_bytes: usize,
    /// Where the checkpoint and the rejects file live.
    pub state_dir: PathBuf,
    /// How long to keep retrying while Supabase is unreachable or overloaded.
    pub max_wait: Duration,
    /// Re-read each landed range from the source and resend what changed.
    pub stale_guard: bool,
    pub progress: Progress,
    /// Reject (the default) or coerce values Supabase cannot hold; coerced
    /// values are recorded in `coerced.ndjson` in the state directory.
    pub unrepresentable: UnrepresentablePolicy,
}

/// The defaults, which the command line's defaults are read from; the state
/// directory is empty (every run names one, see [`state_dir_for`]).
impl Default for BackfillOptions {
    fn default() -> Self {
        BackfillOptions {
            tables: Vec::new(),
            dry_run: false,
            concurrency: 4,
            batch_rows: 500,
            batch_bytes: 1 << 20,
            state_dir: PathBuf::new(),
            max_wait: Duration::from_secs(300),
            stale_guard: true,
            progress: Progress::Quiet,
            unrepresentable: UnrepresentablePolicy::Reject,
        }
    }
}

impl BackfillOptions {
    pub fn new(state_dir: PathBuf) -> BackfillOptions {
        BackfillOptions {
            state_dir,
            ..BackfillOptions::default()
        }
    }

    pub fn selected(&self) -> Vec<&'static Table> {
        if self.tables.is_empty() {
            TABLES.to_vec()
        } else {
            TABLES
                .iter()
                .copied()
                .filter(|t| self.tables.iter().any(|s| s.sqlite == t.sqlite))
                .collect()
        }
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A bar per table (for a terminal).
    Bars,
    /// A log line every few seconds (for logs and CI).
    Lines,
    Quiet,
}

/// The default state directory of a source: `dualwrite-state/<file name>-<hash>`
/// beside the source itself (absolute), so every command finds it wherever it
/// runs from.
pub fn state_dir_for(source: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(source)
        .or_else(|_| std::path::absolute(source))
        .unwrap_or_else(|_| source.to_path_buf());
    let dir = abs.parent().unwrap_or(Path::new("/"));
    default_state_dir(&dir.join("dualwrite-state"), source)
}

/// The state directory for a source file: `<dir>/<file name>-<digest>`, the
/// digest the first 16 hex digits of the SHA-256 of its absolute path (stable
/// across Rust releases). A directory written by an older version under the
/// name derived with `DefaultHasher` (whose output may change between
/// releases) is still found and used when it exists and the new one does not,
/// so an upgrade never silently loses a resume.
pub fn default_state_dir(base: &Path, source: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let abs = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "source".into());
    let digest = Sha256::digest(abs.as_os_str().as_encoded_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let dir = base.join(format!("{name}-{hex}"));
    if !dir.exists() {
        let legacy = base.join(format!("{name}-{:08x}", legacy_digest(&abs)));
        if legacy.is_dir() {
            return legacy;
        }
    }
    dir
}

/// The digest state directories were named with before SHA-256: only to find
/// them again.
fn legacy_digest(abs: &Path) -> u32 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    abs.hash(&mut h);
    // Only the low 32 bits were ever used.
    h.finish() as u32
}

/// A row that did not land, as written to `rejects.ndjson`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    pub table: String,
    pub key: String,
    /// PostgREST / PostgreSQL code, or `unrepresentable` for values refused before sending.
    pub code: String,
    pub message: String,
    pub row: Value,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TableReport {
    pub table: String,
    pub supabase_table: String,
    /// `copied`, `already done` (finished by an earlier run), or `dry run`.
    pub status: String,
    /// Where this run started, when it resumed an earlier one.
    pub resumed_from: Option<String>,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_rejected: u64,
    /// Rows sent again because the app changed them while they were copied.
    pub rows_resynced: u64,
    /// Lossy conversions: column → kind → count.
    pub lossy: BTreeMap<String, BTreeMap<String, u64>>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BackfillReport {
    pub source: String,
    pub target: String,
    pub dry_run: bool,
    /// Whether this run continued an interrupted one.
    pub resumed: bool,
    pub tables: Vec<TableReport>,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_rejected: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    pub rejects_file: Option<String>,
    /// The first rejects (all of them are in the rejects file).
    pub sample_rejects: Vec<Reject>,
    pub peak_rss_bytes: Option<u64>,
}

impl BackfillReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "{}{} → {}{}\n\n",
            if self.dry_run { "dry run: " } else { "" },
            self.source,
            self.target,
            if self.resumed { " (resumed)" } else { "" }
        );
        s.push_str(&format!(
            "{:<22} {:<14} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}\n",
            "table", "status", "read", "written", "rejected", "resynced", "lossy", "seconds"
        ));
        for t in &self.tables {
            let lossy: u64 = t.lossy.values().flat_map(|m| m.values()).sum();
            s.push_str(&format!(
                "{:<22} {:<14} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8.2}\n",
                t.table,
                t.status,
                t.rows_read,
                t.rows_written,
                t.rows_rejected,
                t.rows_resynced,
                lossy,
                t.seconds
            ));
        }
        s.push_str(&format!(
            "\n{} rows read, {} written, {} rejected in {:.1} s ({:.0} rows/s)\n",
            self.rows_read,
            self.rows_written,
            self.rows_rejected,
            self.seconds,
            self.rows_per_second
        ));
        for t in &self.tables {
            for (col, kinds) in &t.lossy {
                for (k, n) in kinds {
                    s.push_str(&format!("lossy conversion: {}.{col}: {k} x{n}\n", t.table));
                }
            }
        }
        if self.rows_rejected > 0 {
            s.push_str(&format!(
                "{} rows did not land; each is in {}\n",
                self.rows_rejected,
                self.rejects_file.as_deref().unwrap_or("the report")
            ));
        }
        s
    }
}

/// Where a table's copy stands. Persisted in `checkpoint.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableCheckpoint {
    /// Every row up to and including this position has landed.
    pub after: Option<Cursor>,
    pub done: bool,
    pub rows_written: u64,
    pub rows_rejected: u64,
}

/// A position in a source: a key (SQLite) or a line number (an export file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Cursor {
    Text(String),
    Integer(i64),
    Real(f64),
    /// Hex of the bytes.
    Blob(String),
    Line(u64),
    /// A position in storage order, with the key found there (checked on resume,
    /// since VACUUM may renumber rowids).
    Rowid {
        rowid: i64,
        key: String,
    },
}

impl Cursor {
    fn from_key(v: &SqlValue) -> Cursor {
        match v {
            SqlValue::Integer(i) => Cursor::Integer(*i),
            SqlValue::Real(f) => Cursor::Real(*f),
            SqlValue::Text(s) => Cursor::Text(s.clone()),
            SqlValue::Blob(b) | SqlValue::BadText(b) => {
                Cursor::Blob(b.iter().map(|x| format!("{x:02x}")).collect())
            }
            SqlValue::Null => Cursor::Text(String::new()),
        }
    }

    fn to_key(&self) -> Option<SqlValue> {
        match self {
            Cursor::Text(s) => Some(SqlValue::Text(s.clone())),
            Cursor::Integer(i) => Some(SqlValue::Integer(*i)),
            Cursor::Real(f) => Some(SqlValue::Real(*f)),
            Cursor::Blob(h) => (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()
                .map(SqlValue::Blob),
            Cursor::Line(_) | Cursor::Rowid { .. } => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Cursor::Line(n) => format!("line {n}"),
            Cursor::Rowid { rowid, key } => format!("row {rowid} (key {key})"),
            other => format!(
                "key {}",
                other.to_key().map(|k| k.display()).unwrap_or_default()
            ),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CheckpointFile {
    source: String,
    /// What identifies the source beyond its path (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<SourceIdentity>,
    tables: BTreeMap<String, TableCheckpoint>,
}

/// What tells a source file from another one later found at the same path
/// (restored from a backup, re-created): its device and inode, its
/// `PRAGMA schema_version`, and a digest of the first keys in storage order
/// of the first catalogue table that has rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIdentity {
    pub device: u64,
    pub inode: u64,
    pub schema_version: i64,
    /// The table whose first keys are digested (`None`: every table was empty).
    pub keys_table: Option<String>,
    /// SHA-256 (hex) of those keys.
    pub first_keys_sha256: String,
}

/// Keys digested into [`SourceIdentity::first_keys_sha256`].
const IDENTITY_KEYS: usize = 16;

impl SourceIdentity {
    /// The identity of the SQLite file at `path`, opened as `db`. With a
    /// `keys_table`, the keys are read from that table (to compare with a
    /// recorded identity); otherwise from the first table that has rows.
    pub async fn of(
        path: &Path,
        db: &SqliteDatabase,
        keys_table: Option<&str>,
    ) -> Result<SourceIdentity> {
        use sha2::{Digest, Sha256};
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        let (device, inode) = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (device, inode) = {
            let _ = meta;
            (0, 0)
        };
        let candidates: Vec<&'static Table> = match keys_table {
            Some(name) => TABLES
                .iter()
                .copied()
                .filter(|t| t.sqlite == name)
                .collect(),
            None => TABLES.to_vec(),
        };
        let mut schema_version = None;
        let mut found = None;
        for t in candidates {
            let (v, keys) = db.fingerprint(t, IDENTITY_KEYS).await?;
            schema_version = Some(v);
            if !keys.is_empty() || keys_table.is_some() {
                found = Some((t.sqlite.to_owned(), keys));
                break;
            }
        }
        let schema_version = match schema_version {
            Some(v) => v,
            None => db.fingerprint(&crate::catalogue::ARTIFACT, 0).await?.0,
        };
        let mut h = Sha256::new();
        for k in found.iter().flat_map(|(_, k)| k) {
            h.update(k.as_bytes());
            h.update([0u8]);
        }
        Ok(SourceIdentity {
            device,
            inode,
            schema_version,
            keys_table: found.map(|(t, _)| t),
            first_keys_sha256: format!("{:x}", h.finalize()),
        })
    }

    /// How `now` differs from `self` (the recorded identity), in words.
    fn differences(&self, now: &SourceIdentity) -> Vec<String> {
        let mut out = Vec::new();
        if (self.device, self.inode) != (now.device, now.inode) {
            out.push(format!(
                "it is another file (device {} inode {}, was device {} inode {})",
                now.device, now.inode, self.device, self.inode
            ));
        }
        if self.schema_version != now.schema_version {
            out.push(format!(
                "its schema_version is {} (was {}; a schema change or VACUUM)",
                now.schema_version, self.schema_version
            ));
        }
        if self.keys_table.is_some() && self.first_keys_sha256 != now.first_keys_sha256 {
            out.push(format!(
                "its first rows of {} are not the same",
                self.keys_table.as_deref().unwrap_or_default()
            ));
        }
        out
    }
}

/// The checkpoint file of one source in its state directory.
pub struct Checkpoints {
    path: PathBuf,
    data: CheckpointFile,
    /// The writer thread (none for a dry run): saving never stalls the copy.
    writer: Option<CheckpointWriter>,
}

enum WriterMsg {
    Save(Vec<u8>),
    Flush(std::sync::mpsc::Sender<std::result::Result<(), String>>),
}

/// Writes checkpoints on a thread of its own, the latest one only, atomically
/// (temp file, fsync, rename). A killed process leaves the last one written:
/// resuming from a slightly older position only resends rows (upserts).
struct CheckpointWriter {
    tx: std::sync::mpsc::Sender<WriterMsg>,
}

impl CheckpointWriter {
    fn start(path: PathBuf) -> CheckpointWriter {
        let (tx, rx) = std::sync::mpsc::channel::<WriterMsg>();
        std::thread::spawn(move || {
            let mut last_error: Option<String> = None;
            while let Ok(msg) = rx.recv() {
                let mut latest = None;
                let mut flushes = Vec::new();
                let mut next = Some(msg);
                while let Some(m) = next {
                    match m {
                        WriterMsg::Save(b) => latest = Some(b),
                        WriterMsg::Flush(ack) => flushes.push(ack),
                    }
                    next = rx.try_recv().ok();
                }
                if let Some(bytes) = latest {
                    if let Err(e) = state_file::write_atomically(&path, &bytes) {
                        last_error = Some(format!("cannot write {}: {e}", path.display()));
                    }
                }
                for ack in flushes {
                    let _ = ack.send(last_error.clone().map_or(Ok(()), Err));
                }
            }
        });
        CheckpointWriter { tx }
    }

    fn flush(&self) -> Result<()> {
        let (ack, done) = std::sync::mpsc::channel();
        if self.tx.send(WriterMsg::Flush(ack)).is_err() {
            return Err(Error::Protocol("the checkpoint writer stopped".into()));
        }
        done.recv()
            .map_err(|_| Error::Protocol("the checkpoint writer stopped".into()))?
            .map_err(Error::Protocol)
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl Checkpoints {
    /// Load (or start) the checkpoint of `source` in `dir`. Refuses a checkpoint
    /// that belongs to another source.
    pub fn open(dir: &Path, source: &str, persist: bool) -> Result<Checkpoints> {
        let path = dir.join("checkpoint.json");
        let data = match std::fs::read(&path) {
            Ok(bytes) => {
                let data: CheckpointFile = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::invalid(format!(
                        "{} is not a dualwrite checkpoint: {e}",
                        path.display()
                    ))
                })?;
                if data.source != source {
                    return Err(Error::invalid(format!(
                        "{} belongs to {}, not {source}: use another --state-dir",
                        path.display(),
                        data.source
                    )));
                }
                data
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CheckpointFile {
                source: source.to_owned(),
                identity: None,
                tables: BTreeMap::new(),
            },
            Err(e) => return Err(e.into()),
        };
        let writer = persist.then(|| CheckpointWriter::start(path.clone()));
        Ok(Checkpoints { path, data, writer })
    }

    pub fn table(&self, t: &Table) -> TableCheckpoint {
        self.data.tables.get(t.sqlite).cloned().unwrap_or_default()
    }

    /// The identity the checkpoint recorded for its source, if any.
    pub fn identity(&self) -> Option<&SourceIdentity> {
        self.data.identity.as_ref()
    }

    /// Resume only from the source the progress was recorded for: a checkpoint
    /// with progress whose recorded identity differs from `now` is refused (a
    /// file restored or re-created at the same path would otherwise resume
    /// with its tables "done"). Records `now` from here on.
    pub fn check_identity(&mut self, now: SourceIdentity) -> Result<()> {
        let progress = self
            .data
            .tables
            .values()
            .any(|c| c.done || c.after.is_some());
        if let (true, Some(old)) = (progress, &self.data.identity) {
            let diff = old.differences(&now);
            if !diff.is_empty() {
                return Err(Error::invalid(format!(
                    "{} records progress for {}, but that file has changed since: {}. \
                     Resuming could skip rows. Run again with --restart to copy every table again \
                     into the target as it is (upserts: harmless), or --reset to empty the target first",
                    self.path.display(),
                    self.data.source,
                    diff.join("; ")
                )));
            }
        }
        if self.data.identity.as_ref() != Some(&now) {
            self.data.identity = Some(now);
            self.save()?;
        }
        Ok(())
    }

    fn set(&mut self, t: &Table, c: TableCheckpoint) -> Result<()> {
        self.data.tables.insert(t.sqlite.to_owned(), c);
        self.save()
    }

    /// Forget the progress of these tables (after `--reset`).
    pub fn clear(&mut self, tables: &[&'static Table]) -> Result<()> {
        for t in tables {
            self.data.tables.remove(t.sqlite);
        }
        self.save()
    }

    /// Hand the current state to the writer thread.
    fn save(&self) -> Result<()> {
        if let Some(w) = &self.writer {
            let bytes = serde_json::to_vec_pretty(&self.data).expect("checkpoint serialises");
            w.tx.send(WriterMsg::Save(bytes))
                .map_err(|_| Error::Protocol("the checkpoint writer stopped".into()))?;
        }
        Ok(())
    }

    /// Wait until everything saved so far is on disk.
    pub fn flush(&self) -> Result<()> {
        match &self.writer {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The rejects file: NDJSON, one line per row that did not land, flushed as written.
pub struct RejectLog {
    file: Option<Mutex<std::fs::File>>,
    pub path: PathBuf,
    sample: Mutex<Vec<Reject>>,
}

impl RejectLog {
    pub fn open(path: PathBuf, persist: bool) -> Result<RejectLog> {
        let file = if persist {
            Some(Mutex::new(state_file::append(&path)?))
        } else {
            None
        };
        Ok(RejectLog {
            file,
            path,
            sample: Mutex::new(Vec::new()),
        })
    }

    pub fn write(&self, rejects: &[Reject]) -> Result<()> {
        if rejects.is_empty() {
            return Ok(());
        }
        for r in rejects {
            tracing::warn!(table = %r.table, key = %r.key, code = %r.code, error = %r.message, "row rejected; written to the rejects file");
        }
        let mut sample = crate::sync::lock(&self.sample);
        for r in rejects {
            if sample.len() < 20 {
                sample.push(r.clone());
            }
        }
        if let Some(f) = &self.file {
            let mut buf = Vec::new();
            for r in rejects {
                serde_json::to_writer(&mut buf, r).expect("a reject serialises");
                buf.push(b'\n');
            }
            let mut f = crate::sync::lock(f);
            f.write_all(&buf)?;
            f.flush()?;
        }
        Ok(())
    }

    pub fn sample(&self) -> Vec<Reject> {
        crate::sync::lock(&self.sample).clone()
    }
}

/// A row ready to send: its key and its canonical JSON.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub key: String,
    pub json: String,
}

/// A batch's rows, prepared for the wire and stored together: the request
/// body (a JSON array) is written as the rows are read, so sending the whole
/// batch copies nothing and no row has an allocation of its own.
#[derive(Debug, Clone)]
pub struct PreparedRows {
    /// `[row,row,...]`.
    body: Bytes,
    /// Where each row's JSON object lies in `body`.
    spans: Vec<(usize, usize)>,
    /// The rows' keys, end to end; row i's ends at `key_ends[i]`.
    keys: String,
    key_ends: Vec<usize>,
}

impl PreparedRows {
    pub fn from_rows(rows: &[Prepared]) -> PreparedRows {
        let mut b = RowsBuilder::default();
        for p in rows {
            b.push(p);
        }
        b.finish()
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn key(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.key_ends[i - 1] };
        &self.keys[start..self.key_ends[i]]
    }

    /// Row `i`'s JSON object.
    pub fn json(&self, i: usize) -> &[u8] {
        let (s, e) = self.spans[i];
        &self.body[s..e]
    }

    /// Row `i`, copied out.
    pub fn get(&self, i: usize) -> Prepared {
        Prepared {
            key: self.key(i).to_owned(),
            json: String::from_utf8_lossy(self.json(i)).into_owned(),
        }
    }

    /// The request body for the rows in `range`: the batch's own, not a copy,
    /// when that is all of them.
    pub fn body(&self, range: Range<usize>) -> Bytes {
        if range == (0..self.len()) {
            return self.body.clone();
        }
        if range.is_empty() {
            return Bytes::from_static(b"[]");
        }
        let (s, e) = (self.spans[range.start].0, self.spans[range.end - 1].1);
        let mut b = Vec::with_capacity(e - s + 2);
        b.push(b'[');
        b.extend_from_slice(&self.body[s..e]);
        b.push(b']');
        Bytes::from(b)
    }
}

/// Builds [`PreparedRows`] one row at a time.
#[derive(Debug)]
pub struct RowsBuilder {
    body: String,
    spans: Vec<(usize, usize)>,
    keys: String,
    key_ends: Vec<usize>,
}

impl Default for RowsBuilder {
    fn default() -> RowsBuilder {
        RowsBuilder::with_capacity(0, 0)
    }
}

impl RowsBuilder {
    /// Room for `rows` rows of `bytes` bytes in all, so that the body is not
    /// copied as it grows.
    pub fn with_capacity(bytes: usize, rows: usize) -> RowsBuilder {
        let mut body = String::with_capacity(bytes + 2);
        body.push('[');
        RowsBuilder {
            body,
            spans: Vec::with_capacity(rows),
            keys: String::with_capacity(rows * 40),
            key_ends: Vec::with_capacity(rows),
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// The body's size so far, in bytes.
    pub fn bytes(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Append a row whose JSON object `write` writes; when it fails, nothing
    /// of the row is kept.
    pub fn push_with<T, E>(
        &mut self,
        key: &str,
        write: impl FnOnce(&mut String) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mark = self.body.len();
        let start = self.open();
        match write(&mut self.body) {
            Ok(t) => {
                self.close(start, key);
                Ok(t)
            }
            Err(e) => {
                self.body.truncate(mark);
                Err(e)
            }
        }
    }

    pub fn push(&mut self, p: &Prepared) {
        let start = self.open();
        self.body.push_str(&p.json);
        self.close(start, &p.key);
    }

    /// Where the next row starts, after its comma.
    fn open(&mut self) -> usize {
        if !self.spans.is_empty() {
            self.body.push(',');
        }
        self.body.len()
    }

    /// Record the row written since `start`.
    fn close(&mut self, start: usize, key: &str) {
        self.spans.push((start, self.body.len()));
        self.keys.push_str(key);
        self.key_ends.push(self.keys.len());
    }

    pub fn finish(mut self) -> PreparedRows {
        self.body.push(']');
        PreparedRows {
            body: Bytes::from(self.body),
            spans: self.spans,
            keys: self.keys,
            key_ends: self.key_ends,
        }
    }
}

/// What a source hands over for one batch.
pub struct SourceBatch {
    pub rows: PreparedRows,
    pub rejects: Vec<Reject>,
    pub read: u64,
    pub lossy: Vec<(&'static str, Lossy)>,
    /// Values coerced to land (under `--unrepresentable coerce`), with their originals.
    pub coerced: Vec<CoercedValue>,
    /// The source position after this batch.
    pub cursor: Cursor,
    /// Whether the stale guard should check this batch's rows against the source.
    pub check_stale: bool,
    /// The source's `data_version` taken before the batch was read.
    pub version: Option<i64>,
}

/// A sequential reader of one table's rows.
pub trait BatchSource: Send {
    fn next(
        &mut self,
        max_rows: usize,
        max_bytes: usize,
    ) -> impl std::future::Future<Output = Result<Option<SourceBatch>>> + Send;
}

/// A SQLite row as JSON for the rejects file (lenient: blobs as hex).
pub fn raw_row_json(t: &Table, row: &SqlRow) -> Value {
    let mut m = Map::new();
    for (c, v) in t.columns.iter().zip(row) {
        let j = match v {
            SqlValue::Null => Value::Null,
            SqlValue::Integer(i) => Value::from(*i),
            SqlValue::Real(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(f.to_string())),
            SqlValue::Text(s) => Value::String(s.clone()),
            other => Value::String(other.display()),
        };
        m.insert(c.sqlite.to_owned(), j);
    }
    Value::Object(m)
}

/// Prepare one SQLite row, or say why it cannot land.
pub fn prepare_row(
    t: &'static Table,
    row: &SqlRow,
    lossy: &mut Vec<(&'static str, Lossy)>,
) -> std::result::Result<Prepared, Box<Reject>> {
    prepare_row_with(
        t,
        row,
        lossy,
        UnrepresentablePolicy::Reject,
        &mut Vec::new(),
    )
}

/// [`prepare_row`] under a policy; coerced values are appended to `coerced`.
pub fn prepare_row_with(
    t: &'static Table,
    row: &SqlRow,
    lossy: &mut Vec<(&'static str, Lossy)>,
    policy: UnrepresentablePolicy,
    coerced: &mut Vec<CoercedValue>,
) -> std::result::Result<Prepared, Box<Reject>> {
    let refs: Vec<SqlRef<'_>> = row.iter().map(SqlValue::as_ref).collect();
    match normalise::to_json_row_ref(t, &refs, policy) {
        Ok(c) => {
            if policy == UnrepresentablePolicy::Coerce {
                coerced.extend(crate::coerced::records(t, &refs, &c.lossy));
            }
            lossy.extend(c.lossy);
            Ok(Prepared {
                key: row[0].display(),
                json: c.row,
            })
        }
        Err(e) => Err(unrepresentable(t, &refs, e)),
    }
}

/// [`prepare_row`] over borrowed values, written straight into a batch.
pub fn prepare_row_into(
    t: &'static Table,
    row: &[SqlRef<'_>],
    lossy: &mut Vec<(&'static str, Lossy)>,
    rows: &mut RowsBuilder,
    policy: UnrepresentablePolicy,
    coerced: &mut Vec<CoercedValue>,
) -> std::result::Result<(), Box<Reject>> {
    let key = match row[0] {
        SqlRef::Text(s) => std::borrow::Cow::Borrowed(s),
        other => std::borrow::Cow::Owned(other.to_value().display()),
    };
    match rows.push_with(&key, |out| {
        normalise::to_json_row_into_with(t, row, out, policy)
    }) {
        Ok(l) => {
            if policy == UnrepresentablePolicy::Coerce && l.iter().any(|(_, k)| k.is_coercion()) {
                coerced.extend(crate::coerced::records(t, row, &l));
            }
            lossy.extend(l);
            Ok(())
        }
        Err(e) => Err(unrepresentable(t, row, e)),
    }
}

fn unrepresentable(t: &'static Table, row: &[SqlRef<'_>], e: Error) -> Box<Reject> {
    let owned: SqlRow = row.iter().map(|v| v.to_value()).collect();
    Box::new(Reject {
        table: t.sqlite.to_owned(),
        key: owned[0].display(),
        code: "unrepresentable".into(),
        message: e.to_string(),
        row: raw_row_json(t, &owned),
    })
}

/// Reads one table of a DoX SQLite file, in storage (rowid) order where the
/// table has rowids: sequential reads, several times cheaper than key order on
/// files whose keys are random (uuids).
pub struct SqliteSource {
    db: SqliteDatabase,
    /// A second connection (thread) for `data_version`: asking the reading one
    /// would wait behind the page it is preparing and hold up every batch.
    watch: SqliteDatabase,
    table: &'static Table,
    from: ScanFrom,
    /// The last batch's size (bytes, rows).
    last_batch: (usize, usize),
    /// What to do with values Supabase cannot hold (reject by default).
    pub policy: UnrepresentablePolicy,
}

impl SqliteSource {
    /// Position a reader after `after` (a checkpoint), or at the start.
    pub async fn open(
        db: SqliteDatabase,
        watch: SqliteDatabase,
        table: &'static Table,
        after: Option<&Cursor>,
    ) -> Result<SqliteSource> {
        let from = match after {
            Some(Cursor::Rowid { rowid, key }) => match db.key_at_rowid(table, *rowid).await? {
                Some(k) if k.display() == *key => ScanFrom::Rowid(Some(*rowid)),
                // VACUUM renumbered the rows: copying the table again is safe (upserts).
                _ => {
                    tracing::warn!(table = table.sqlite, "the checkpoint's row moved (VACUUM?); copying the table again from the start");
                    ScanFrom::Rowid(None)
                }
            },
            Some(c) => ScanFrom::Key(c.to_key()),
            None if db.has_rowid(table).await => ScanFrom::Rowid(None),
            None => ScanFrom::Key(None),
        };
        Ok(SqliteSource {
            db,
            watch,
            table,
            from,
            last_batch: (0, 0),
            policy: UnrepresentablePolicy::Reject,
        })
    }
}

impl BatchSource for SqliteSource {
    async fn next(&mut self, max_rows: usize, max_bytes: usize) -> Result<Option<SourceBatch>> {
        // Taken before the read: a commit in between shows as a change, never as none.
        let version = self.watch.data_version().await?;
        let table = self.table;
        // Rows are prepared on the connection's thread, straight from SQLite's
        // buffers into the request body.
        // Sized like the last batch, plus a margin: a body that grows is copied.
        let hint = self.last_batch;
        let rows = RowsBuilder::with_capacity(hint.0 + hint.0 / 8, hint.1 + hint.1 / 8);
        let start = (rows, Vec::new(), Vec::new(), Vec::new());
        let policy = self.policy;
        let page = self
            .db
            .scan_page(
                table,
                self.from.clone(),
                max_rows,
                max_bytes,
                start,
                move |(rows, rejects, lossy, coerced), row| {
                    let before = rows.bytes();
                    if let Err(r) = prepare_row_into(table, row, lossy, rows, policy, coerced) {
                        rejects.push(*r);
                    }
                    rows.bytes() - before
                },
            )
            .await?;
        let Some(page) = page else {
            return Ok(None);
        };
        let (from, cursor) = match self.from {
            ScanFrom::Rowid(_) => (
                ScanFrom::Rowid(Some(page.last_rowid)),
                Cursor::Rowid {
                    rowid: page.last_rowid,
                    key: page.last.display(),
                },
            ),
            ScanFrom::Key(_) => (
                ScanFrom::Key(Some(page.last.clone())),
                Cursor::from_key(&page.last),
            ),
        };
        self.from = from;
        let (rows, rejects, lossy, coerced) = page.state;
        self.last_batch = (rows.bytes(), rows.len());
        Ok(Some(SourceBatch {
            rows: rows.finish(),
            rejects,
            read: page.rows as u64,
            lossy,
            coerced,
            cursor,
            check_stale: true,
            version: Some(version),
        }))
    }
}

/// A batch whose rows have landed (or been rejected), before the stale guard.
struct Sent {
    seq: u64,
    batch: SourceBatch,
    written: u64,
    rejects: u64,
    /// Keys of the rows Supabase refused.
    refused: Vec<String>,
}

/// What one landed batch produced.
struct Landed {
    seq: u64,
    cursor: Cursor,
    read: u64,
    written: u64,
    rejects: u64,
    resynced: u64,
    lossy: Vec<(&'static str, Lossy)>,
}

/// Everything a batch task needs; cheap to clone.
#[derive(Clone)]
struct Lander {
    rest: RestClient,
    table: &'static Table,
    size: Arc<AtomicUsize>,
    max_rows: usize,
    max_wait: Duration,
    rejects: Arc<RejectLog>,
    source: Option<SqliteDatabase>,
    policy: UnrepresentablePolicy,
    coerced: Arc<CoercedLog>,
}

fn transient_but_not_split(e: &Error) -> bool {
    !e.must_split()
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
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64>> + Send + 'a>> {
        Box::pin(async move {
            let n_rows = range.len();
            if n_rows == 0 {
                return Ok(0);
            }
            let body = all.body(range.clone());
            let started = Instant::now();
            // A single row is retried for every transient error; a batch is split
            // instead when it was too large or too slow.
            let when: fn(&Error) -> bool = if n_rows == 1 {
                |_| true
            } else {
                transient_but_not_split
            };
            let res = retry_when(RetryPolicy::for_up_to(self.max_wait), when, || {
                self.rest.upsert(self.table, body.clone())
            })
            .await;
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
                    self.split(all, range, rejected).await
                }
                Err(e) if e.is_transient() => {
                    if e.wants_smaller_batch() {
                        self.shrink();
                    }
                    Err(Error::Unreachable {
                        url: self.rest.url().to_owned(),
                        reason: format!(
                            "still failing after retrying for {:?} ({}); progress is checkpointed: run the same command again to resume",
                            self.max_wait,
                            e.detail()
                        ),
                    })
                }
                // Auth, a missing table or column: no subset of the rows would pass.
                Err(e) if !e.is_data_error() => Err(e),
                Err(e) if n_rows == 1 => {
                    rejected.push((all.get(range.start), e));
                    Ok(0)
                }
                // Bisect to find the rows at fault; the others land.
                Err(_) => self.split(all, range, rejected).await,
            }
        })
    }

    async fn split(
        &self,
        all: &PreparedRows,
        range: Range<usize>,
        rejected: &mut Vec<(Prepared, Error)>,
    ) -> Result<u64> {
        let mid = range.start + range.len() / 2;
        let n = self.land(all, range.start..mid, rejected).await?;
        Ok(n + self.land(all, mid..range.end, rejected).await?)
    }

    /// Send a batch: its rows land or are rejected. What follows (the stale
    /// guard, [`Lander::settle`]) runs apart, so the next batch can take the
    /// request slot at once.
    async fn send(self, seq: u64, batch: SourceBatch) -> Result<Sent> {
        let mut refused = Vec::new();
        let written = self
            .land(&batch.rows, 0..batch.rows.len(), &mut refused)
            .await?;
        let rejects: Vec<Reject> = refused
            .iter()
            .map(|(p, e)| Reject {
                table: self.table.sqlite.to_owned(),
                key: p.key.clone(),
                code: e.code().unwrap_or("error").to_owned(),
                message: e.to_string(),
                row: serde_json::from_str(&p.json).unwrap_or(Value::Null),
            })
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
    async fn settle(self, sent: Sent) -> Result<Landed> {
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
            self.land(&rows, 0..rows.len(), &mut refused).await?;
            for k in &gone {
                let filter = [(self.table.key().supabase, Some(k.clone()))];
                retry_when(
                    RetryPolicy::for_up_to(self.max_wait),
                    transient_but_not_split,
                    || self.rest.delete(self.table.supabase, &filter),
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
/// `max_rows` rows, `concurrency` in flight, a request halving on 413 or timeouts, retries for up to
/// `max_wait`, bisection, rows refused for good written to `rejects`). Used by
/// `serve`. Returns the rows written and the rejects.
pub async fn land_rows(
    rest: &RestClient,
    table: &'static Table,
    rows: &PreparedRows,
    max_rows: usize,
    concurrency: usize,
    max_wait: Duration,
    rejects: &Arc<RejectLog>,
) -> Result<(u64, Vec<Reject>)> {
    use futures::{StreamExt, TryStreamExt};
    let lander = Lander {
        rest: rest.clone(),
        table,
        size: Arc::new(AtomicUsize::new(max_rows.max(1))),
        max_rows: max_rows.max(1),
        max_wait,
        rejects: Arc::clone(rejects),
        // Without a source there is no stale guard, so rows are never
        // prepared again here: the policy and its log are not used.
        source: None,
        policy: UnrepresentablePolicy::Reject,
        coerced: Arc::new(CoercedLog::new(PathBuf::new())),
    };
    // Requests of `max_rows` rows, `concurrency` in flight (the keys are distinct).
    let step = max_rows.max(1);
    let chunks: Vec<Range<usize>> = (0..rows.len())
        .step_by(step)
        .map(|s| s..(s + step).min(rows.len()))
        .collect();
    let landed: Vec<(u64, Vec<(Prepared, Error)>)> = futures::stream::iter(chunks)
        .map(|range| {
            let lander = &lander;
            async move {
                let mut refused = Vec::new();
                let n = lander.land(rows, range, &mut refused).await?;
                Ok::<_, Error>((n, refused))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    let written = landed.iter().map(|(n, _)| n).sum();
    let refused: Vec<(Prepared, Error)> = landed.into_iter().flat_map(|(_, r)| r).collect();
    let out: Vec<Reject> = refused
        .iter()
        .map(|(p, e)| Reject {
            table: table.sqlite.to_owned(),
            key: p.key.clone(),
            code: e.code().unwrap_or("error").to_owned(),
            message: e.to_string(),
            row: serde_json::from_str(&p.json).unwrap_or(Value::Null),
        })
        .collect();
    rejects.write(&out)?;
    Ok((written, out))
}

/// Copies tables from sources into Supabase, with checkpoints, rejects and reports.
pub struct Loader<'a> {
    pub target: &'a SupabaseDatabase,
    pub opts: &'a BackfillOptions,
    pub checkpoints: Checkpoints,
    pub rejects: Arc<RejectLog>,
    /// `coerced.ndjson` beside the rejects (created on the first coerced value).
    pub coerced: Arc<CoercedLog>,
    multi: Option<indicatif::MultiProgress>,
}

impl<'a> Loader<'a> {
    pub fn new(
        target: &'a SupabaseDatabase,
        opts: &'a BackfillOptions,
        source_id: &str,
    ) -> Result<Loader<'a>> {
        let persist = !opts.dry_run;
        let checkpoints = Checkpoints::open(&opts.state_dir, source_id, persist)?;
        let rejects = Arc::new(RejectLog::open(
            opts.state_dir.join("rejects.ndjson"),
            persist,
        )?);
        let multi = (opts.progress == Progress::Bars).then(indicatif::MultiProgress::new);
        let coerced = Arc::new(CoercedLog::new(opts.state_dir.join("coerced.ndjson")));
        Ok(Loader {
            target,
            opts,
            checkpoints,
            rejects,
            coerced,
            multi,
        })
    }

    /// Copy one table from `source` (positioned at the checkpoint by the caller).
    pub async fn copy_table<S: BatchSource + 'static>(
        &mut self,
        table: &'static Table,
        mut source: S,
        total: u64,
        stale_source: Option<SqliteDatabase>,
    ) -> Result<TableReport> {
        let started = Instant::now();
        let mut ck = self.checkpoints.table(table);
        let mut report = TableReport {
            table: table.sqlite.to_owned(),
            supabase_table: table.supabase.to_owned(),
            status: if self.opts.dry_run {
                "dry run"
            } else {
                "copied"
            }
            .into(),
            resumed_from: ck.after.as_ref().map(Cursor::describe),
            ..Default::default()
        };
        if ck.done && !self.opts.dry_run {
            report.status = "already done".into();
            report.rows_written = ck.rows_written;
            report.rows_rejected = ck.rows_rejected;
            return Ok(report);
        }
        let bar = self.bar(table, total, ck.rows_written + ck.rows_rejected);
        let lander = Lander {
            rest: self.target.rest().clone(),
            table,
            size: Arc::new(AtomicUsize::new(self.opts.batch_rows.max(1))),
            max_rows: self.opts.batch_rows.max(1),
            max_wait: self.opts.max_wait,
            rejects: Arc::clone(&self.rejects),
            source: if self.opts.stale_guard {
                stale_source
            } else {
                None
            },
            policy: self.opts.unrepresentable,
            coerced: Arc::clone(&self.coerced),
        };
        let mut lossy: BTreeMap<(String, String), u64> = BTreeMap::new();
        // The reader runs ahead of the senders, so a batch is ready whenever a slot frees.
        let (ahead_tx, mut ahead) = tokio::sync::mpsc::channel(self.opts.concurrency.max(1));
        let reader = {
            let size = Arc::clone(&lander.size);
            let max_bytes = self.opts.batch_bytes;
            tokio::spawn(async move {
                loop {
                    let next = source.next(size.load(Ordering::Relaxed), max_bytes).await;
                    let more = matches!(next, Ok(Some(_)));
                    if ahead_tx.send(next).await.is_err() || !more {
                        return;
                    }
                }
            })
        };
        // Batches in flight (at most `concurrency`), and batches sent whose stale
        // guard is still running: those hold no request slot.
        let mut tasks: JoinSet<Result<Sent>> = JoinSet::new();
        let mut settling: JoinSet<Result<Landed>> = JoinSet::new();
        let mut watermark = Watermark::new();
        let mut seq = 0u64;
        let mut reading = true;
        let mut last_save = Instant::now();
        let mut last_line = Instant::now();
        let mut failure: Option<Error> = None;
        loop {
            while reading && failure.is_none() && tasks.len() < self.opts.concurrency.max(1) {
                match ahead.recv().await.unwrap_or(Ok(None)) {
                    Ok(Some(batch)) => {
                        if let Err(e) = self.rejects.write(&batch.rejects) {
                            failure = Some(e);
                            break;
                        }
                        // Recorded before the batch is sent: an original is never
                        // lost, though a resumed run may record a value again.
                        if !self.opts.dry_run {
                            if let Err(e) = self.coerced.write(&batch.coerced) {
                                failure = Some(e);
                                break;
                            }
                        }
                        if self.opts.dry_run {
                            let landed = Landed {
                                seq,
                                cursor: batch.cursor,
                                read: batch.read,
                                written: 0,
                                rejects: batch.rejects.len() as u64,
                                resynced: 0,
                                lossy: batch.lossy,
                            };
                            settling.spawn(async move { Ok(landed) });
                        } else {
                            tasks.spawn(lander.clone().send(seq, batch));
                        }
                        seq += 1;
                    }
                    Ok(None) => reading = false,
                    Err(e) => failure = Some(e),
                }
            }
            let joined = tokio::select! {
                Some(sent) = tasks.join_next(), if !tasks.is_empty() => {
                    match sent {
                        Ok(Ok(sent)) => {
                            settling.spawn(lander.clone().settle(sent));
                        }
                        Ok(Err(e)) => {
                            failure.get_or_insert(e);
                        }
                        Err(join) => {
                            failure.get_or_insert(Error::Protocol(format!("a batch task failed: {join}")));
                        }
                    }
                    continue;
                }
                Some(landed) = settling.join_next(), if !settling.is_empty() => landed,
                else => break,
            };
            let landed = match joined {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                    continue;
                }
                Err(join) => {
                    failure.get_or_insert(Error::Protocol(format!("a batch task failed: {join}")));
                    continue;
                }
            };
            // Advance the checkpoint over every batch below which all have landed.
            for l in watermark.land(landed.seq, landed) {
                report.rows_read += l.read;
                report.rows_written += l.written;
                report.rows_rejected += l.rejects;
                report.rows_resynced += l.resynced;
                for (col, k) in l.lossy {
                    *lossy
                        .entry((col.to_owned(), k.as_str().to_owned()))
                        .or_default() += 1;
                }
                ck.after = Some(l.cursor);
                ck.rows_written += l.written;
                ck.rows_rejected += l.rejects;
                if let Some(b) = &bar {
                    b.inc(l.written + l.rejects);
                    let rate = report.rows_read as f64 / started.elapsed().as_secs_f64().max(1e-3);
                    b.set_message(format!("{rate:.0} rows/s"));
                }
            }
            if last_save.elapsed() > Duration::from_secs(1) {
                self.checkpoints.set(table, ck.clone())?;
                last_save = Instant::now();
            }
            if self.opts.progress == Progress::Lines && last_line.elapsed() > Duration::from_secs(5)
            {
                let secs = started.elapsed().as_secs_f64();
                tracing::info!(
                    table = table.sqlite,
                    done = ck.rows_written + ck.rows_rejected,
                    total,
                    rows_per_s = (report.rows_read as f64 / secs) as u64,
                    "backfill progress"
                );
                last_line = Instant::now();
            }
        }
        reader.abort();
        if let Some(e) = failure {
            self.checkpoints.set(table, ck)?;
            if let Some(b) = bar {
                b.abandon();
            }
            return Err(e);
        }
        ck.done = true;
        self.checkpoints.set(table, ck)?;
        if let Some(b) = bar {
            b.finish();
        }
        for ((col, k), n) in lossy {
            report.lossy.entry(col).or_default().insert(k, n);
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    fn bar(&self, table: &Table, total: u64, done: u64) -> Option<indicatif::ProgressBar> {
        let multi = self.multi.as_ref()?;
        let b = multi.add(indicatif::ProgressBar::new(total));
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:<22} {bar:30} {pos:>9}/{len:<9} {msg:>12} eta {eta}",
            )
            .expect("a valid template"),
        );
        b.set_prefix(table.sqlite);
        b.set_position(done);
        Some(b)
    }

    pub fn finish(self, mut report: BackfillReport, started: Instant) -> BackfillReport {
        if let Err(e) = self.checkpoints.flush() {
            tracing::error!(error = %e, "the last checkpoint could not be written; a rerun resends some rows");
        }
        report.rows_read = report.tables.iter().map(|t| t.rows_read).sum();
        report.rows_written = report.tables.iter().map(|t| t.rows_written).sum();
        report.rows_rejected = report.tables.iter().map(|t| t.rows_rejected).sum();
        report.seconds = started.elapsed().as_secs_f64();
        report.rows_per_second = report.rows_read as f64 / report.seconds.max(1e-9);
        report.sample_rejects = self.rejects.sample();
        report.rejects_file = (!self.opts.dry_run).then(|| self.rejects.path.display().to_string());
        report.peak_rss_bytes = peak_rss_bytes();
        report
    }
}

/// How many rows a reset deletes per statement, at first.
pub const RESET_CHUNK: usize = 10_000;

/// Forget the progress recorded in `state_dir`: the checkpoint is removed
/// (durably) and `rejects.ndjson` is set aside as
/// `rejects-before-reset-<time>.ndjson`. Every failure is an error.
///
/// `--reset` calls this *before* it deletes anything: a run killed between
/// the two then finds no checkpoint and copies every table again, where a
/// checkpoint left behind would call the emptied tables "done".
pub fn forget_progress(state_dir: &Path) -> Result<()> {
    let checkpoint = state_dir.join("checkpoint.json");
    state_file::remove(&checkpoint).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!(
                "cannot remove {} ({e}); nothing was deleted",
                checkpoint.display()
            ),
        ))
    })?;
    let old = state_dir.join("rejects.ndjson");
    if old.exists() {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        state_file::rename(
            &old,
            &state_dir.join(format!("rejects-before-reset-{stamp}.ndjson")),
        )?;
    }
    Ok(())
}

/// `--reset`: forget the recorded progress first ([`forget_progress`]), then
/// empty the selected tables on the target ([`reset_target`]). The caller
/// has asked for confirmation. Returns how many rows were deleted.
pub async fn reset(target: &SupabaseDatabase, opts: &BackfillOptions) -> Result<u64> {
    forget_progress(&opts.state_dir)?;
    reset_target(target, &opts.selected(), RESET_CHUNK, opts.max_wait).await
}

/// How a run treats the state a previous run left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Continue from the checkpoint (the default).
    Resume,
    /// Forget the checkpoint and copy every table again; the target keeps its rows.
    Restart,
    /// Forget the checkpoint, then empty the selected target tables.
    Reset,
}

/// The housekeeping before a run (`--restart`, `--reset`): the checkpoint goes
/// first, so a run killed mid-reset never finds the emptied tables marked done.
/// A dry run changes nothing. The caller has asked for confirmation of a
/// reset. Returns how many target rows were deleted.
pub async fn prepare(
    target: &SupabaseDatabase,
    opts: &BackfillOptions,
    start: Start,
) -> Result<u64> {
    if opts.dry_run {
        return Ok(0);
    }
    match start {
        Start::Resume => Ok(0),
        Start::Restart => {
            forget_progress(&opts.state_dir)?;
            tracing::info!("restart: forgot the checkpoint; copying every table again");
            Ok(0)
        }
        Start::Reset => {
            let deleted = reset(target, opts).await?;
            tracing::info!(rows = deleted, "reset: emptied the target tables");
            Ok(deleted)
        }
    }
}

/// Empty the target tables (children first), `chunk` keys at a time: a single
/// DELETE of a large table could outlast a hosted project's statement timeout.
/// A chunk that times out is halved; transient failures are retried for up to
/// `max_wait`. Returns how many rows were deleted. The caller has asked for
/// confirmation.
pub async fn reset_target(
    target: &SupabaseDatabase,
    tables: &[&'static Table],
    mut chunk: usize,
    max_wait: Duration,
) -> Result<u64> {
    let rest = target.rest();
    let mut deleted = 0u64;
    for t in tables.iter().rev() {
        let key = t.key().supabase;
        let text_key = |row: &Map<String, Value>| {
            row.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    Error::Protocol(format!("{}: a key that is not text: {row:?}", t.supabase))
                })
        };
        let mut deleted_through: Option<String> = None;
        loop {
            let page = retry(RetryPolicy::for_up_to(max_wait), || {
                rest.select_page(t.supabase, key, &[], key, None, chunk.max(1))
            })
            .await?;
            let (Some(first), Some(row)) = (page.first(), page.last()) else {
                break;
            };
            // Keys up to the last chunk's are gone: if one is back, the
            // DELETE did not do what it should, and looping would not help.
            let first = text_key(first)?;
            if deleted_through.as_ref().is_some_and(|d| first <= *d) {
                return Err(Error::Protocol(format!(
                    "{}: rows deleted by the reset are still there",
                    t.supabase
                )));
            }
            let last = text_key(row)?;
            let last = last.as_str();
            let res = retry_when(
                RetryPolicy::for_up_to(max_wait),
                transient_but_not_split,
                || rest.delete_through(t.supabase, key, last),
            )
            .await;
            match res {
                Ok(()) => {
                    deleted += page.len() as u64;
                    deleted_through = Some(last.to_owned());
                }
                Err(e) if e.must_split() && chunk > 1 => chunk /= 2,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(deleted)
}

/// The process's peak resident memory (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Backfill every selected table of a DoX SQLite file into Supabase.
pub async fn run(
    source_path: &Path,
    target: &SupabaseDatabase,
    opts: &BackfillOptions,
) -> Result<BackfillReport> {
    let started = Instant::now();
    let source = SqliteDatabase::open_read_only(source_path).await?;
    let watch = SqliteDatabase::open_read_only(source_path).await?;
    let source_id = std::fs::canonicalize(source_path)
        .unwrap_or_else(|_| source_path.to_path_buf())
        .display()
        .to_string();
    let mut loader = Loader::new(target, opts, &source_id)?;
    if !opts.dry_run {
        let recorded = loader
            .checkpoints
            .identity()
            .and_then(|i| i.keys_table.clone());
        let now = SourceIdentity::of(source_path, &source, recorded.as_deref()).await?;
        loader.checkpoints.check_identity(now)?;
    }
    let tables = opts.selected();
    let mut report = BackfillReport {
        source: source_path.display().to_string(),
        target: target.rest().url().to_owned(),
        dry_run: opts.dry_run,
        resumed: tables.iter().any(|t| {
            let c = loader.checkpoints.table(t);
            c.done || c.after.is_some()
        }) && !opts.dry_run,
        ..Default::default()
    };
    for t in tables {
        if !source.has_table(t) {
            continue;
        }
        let ck = loader.checkpoints.table(t);
        let after = if opts.dry_run { None } else { ck.after.clone() };
        let mut src = SqliteSource::open(source.clone(), watch.clone(), t, after.as_ref()).await?;
        src.policy = opts.unrepresentable;
        // Counting scans the table: only worth it when someone watches the progress.
        let total = if opts.progress == Progress::Quiet {
            0
        } else {
            source.count(t).await?
        };
        let r = loader
            .copy_table(t, src, total, Some(watch.clone()))
            .await?;
        report.tables.push(r);
    }
    Ok(loader.finish(report, started))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_dir_is_named_by_sha256_and_an_old_defaulthasher_dir_is_still_found() {
        use sha2::{Digest, Sha256};
        let base = tempfile::tempdir().unwrap();
        let source = base.path().join("app.sqlite3");
        std::fs::write(&source, b"").unwrap();
        let abs = std::fs::canonicalize(&source).unwrap();
        let digest = Sha256::digest(abs.as_os_str().as_encoded_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let states = base.path().join("dualwrite-state");
        let new = states.join(format!("app.sqlite3-{hex}"));
        assert_eq!(default_state_dir(&states, &source), new);
        // A directory an older version wrote is used while no new one exists.
        let legacy = states.join(format!("app.sqlite3-{:08x}", legacy_digest(&abs)));
        std::fs::create_dir_all(&legacy).unwrap();
        assert_eq!(default_state_dir(&states, &source), legacy);
        assert_eq!(state_dir_for(&source), legacy);
        // Once the new one exists, it wins.
        std::fs::create_dir_all(&new).unwrap();
        assert_eq!(default_state_dir(&states, &source), new);
    }

    fn row(key: &str, json: &str) -> Prepared {
        Prepared {
            key: key.into(),
            json: json.into(),
        }
    }

    #[test]
    fn a_batch_is_its_own_request_body_and_halves_are_copied_out() {
        let rows = PreparedRows::from_rows(&[
            row("a", r#"{"id":"a"}"#),
            row("b,c", r#"{"id":"b,c"}"#),
            row("é", r#"{"id":"é"}"#),
        ]);
        assert_eq!(rows.len(), 3);
        let text = |b: Bytes| String::from_utf8(b.to_vec()).unwrap();
        assert_eq!(
            text(rows.body(0..3)),
            r#"[{"id":"a"},{"id":"b,c"},{"id":"é"}]"#
        );
        assert_eq!(text(rows.body(1..3)), r#"[{"id":"b,c"},{"id":"é"}]"#);
        assert_eq!(&rows.body(0..1)[..], br#"[{"id":"a"}]"#.as_slice());
        assert_eq!(
            (rows.key(1), rows.json(1)),
            ("b,c", br#"{"id":"b,c"}"#.as_slice())
        );
        assert_eq!(rows.get(2).key, "é");
        // Every sub-body is a JSON array of its rows.
        let all: Vec<Value> = serde_json::from_slice(&rows.body(0..3)).unwrap();
        assert_eq!(all[1]["id"], "b,c");
        assert_eq!(&PreparedRows::from_rows(&[]).body(0..0)[..], b"[]");
    }

    #[test]
    fn a_row_that_fails_to_write_leaves_nothing_behind() {
        let mut b = RowsBuilder::default();
        b.push(&row("a", "{}"));
        let failed: std::result::Result<(), &str> = b.push_with("bad", |out| {
            out.push_str(r#"{"half":"#);
            Err("refused")
        });
        assert!(failed.is_err());
        b.push(&row("c", "[]"));
        let rows = b.finish();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows.body(0..2)[..], b"[{},[]]");
        assert_eq!(rows.key(1), "c");
    }
}

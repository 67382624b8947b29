//! Checkpoints: where each table's copy stands, which source file they belong to,
//! and the thread that writes them atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalogue::{Table, TABLES};
use crate::db::SqliteDatabase;
use crate::error::{Error, IoContext, Result};
use crate::normalise::SqlValue;
use crate::state_file;

/// Where a table's copy stands. Persisted in `checkpoint.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct TableCheckpoint {
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
    pub(super) fn from_key(v: &SqlValue) -> Cursor {
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

    pub(super) fn to_key(&self) -> Option<SqlValue> {
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

    pub(super) fn describe(&self) -> String {
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
pub(crate) struct SourceIdentity {
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
    pub(crate) async fn of(
        path: &Path,
        db: &SqliteDatabase,
        keys_table: Option<&str>,
    ) -> Result<SourceIdentity> {
        use sha2::{Digest, Sha256};
        let meta = std::fs::metadata(path).at(path)?;
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
pub(crate) struct Checkpoints {
    path: PathBuf,
    data: CheckpointFile,
    /// The writer thread (none for a dry run): saving never stalls the copy.
    writer: Option<CheckpointWriter>,
}

enum WriterMsg {
    Save(Vec<u8>),
    Flush(std::sync::mpsc::Sender<std::result::Result<(), WriteFailure>>),
}

/// The last checkpoint write that failed, kept by the writer thread and
/// handed to every flush after it (an `Error` is not `Clone`).
#[derive(Clone)]
struct WriteFailure {
    kind: std::io::ErrorKind,
    message: String,
    path: Option<PathBuf>,
}

impl From<WriteFailure> for Error {
    fn from(f: WriteFailure) -> Error {
        Error::Io {
            source: std::io::Error::new(
                f.kind,
                format!("cannot save the checkpoint: {}", f.message),
            ),
            path: f.path,
        }
    }
}

/// What every command sees once the writer thread is gone.
fn writer_stopped() -> Error {
    Error::WorkerStopped {
        worker: "checkpoint writer",
        when: "during a call",
    }
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
            let mut last_error: Option<WriteFailure> = None;
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
                        last_error = Some(match e {
                            Error::Io { source, path } => WriteFailure {
                                kind: source.kind(),
                                message: source.to_string(),
                                path,
                            },
                            other => WriteFailure {
                                kind: std::io::ErrorKind::Other,
                                message: other.to_string(),
                                path: Some(path.clone()),
                            },
                        });
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
            return Err(writer_stopped());
        }
        done.recv()
            .map_err(|_| writer_stopped())?
            .map_err(Error::from)
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
    pub(crate) fn open(
        dir: &crate::state_file::StateDir,
        source: &str,
        persist: bool,
    ) -> Result<Checkpoints> {
        let path = dir.checkpoint();
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
            Err(e) => return Err(Error::io_at(e, &path)),
        };
        let writer = persist.then(|| CheckpointWriter::start(path.clone()));
        Ok(Checkpoints { path, data, writer })
    }

    pub(crate) fn table(&self, t: &Table) -> TableCheckpoint {
        self.data.tables.get(t.sqlite).cloned().unwrap_or_default()
    }

    /// The identity the checkpoint recorded for its source, if any.
    pub(crate) fn identity(&self) -> Option<&SourceIdentity> {
        self.data.identity.as_ref()
    }

    /// Resume only from the source the progress was recorded for: a checkpoint
    /// with progress whose recorded identity differs from `now` is refused (a
    /// file restored or re-created at the same path would otherwise resume
    /// with its tables "done"). Records `now` from here on.
    pub(crate) fn check_identity(&mut self, now: SourceIdentity) -> Result<()> {
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

    pub(super) fn set(&mut self, t: &Table, c: TableCheckpoint) -> Result<()> {
        self.data.tables.insert(t.sqlite.to_owned(), c);
        self.save()
    }

    /// Hand the current state to the writer thread.
    fn save(&self) -> Result<()> {
        if let Some(w) = &self.writer {
            let bytes = serde_json::to_vec_pretty(&self.data).expect("checkpoint serialises");
            w.tx.send(WriterMsg::Save(bytes))
                .map_err(|_| writer_stopped())?;
        }
        Ok(())
    }

    /// Wait until everything saved so far is on disk.
    pub(crate) fn flush(&self) -> Result<()> {
        match &self.writer {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_that_cannot_be_saved_is_an_io_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let mut c =
            Checkpoints::open(&crate::state_file::StateDir::new(d.path()), "src", true).unwrap();
        // The temp file the writer renames into place is a directory.
        let tmp = d.path().join("checkpoint.json.tmp");
        std::fs::create_dir(&tmp).unwrap();
        c.set(&crate::catalogue::ARTIFACT, TableCheckpoint::default())
            .unwrap();
        let e = c.flush().unwrap_err();
        assert!(
            matches!(&e, Error::Io { path: Some(p), .. } if *p == tmp),
            "{e:?}"
        );
        let s = e.to_string();
        assert!(
            s.starts_with(&format!("{}: cannot save the checkpoint: ", tmp.display())),
            "{s}"
        );
        assert!(!e.is_transient());
    }
}

//! Rejects: the rows that did not land, and the `rejects.ndjson` file they are written to.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Result;
use crate::state_file;

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

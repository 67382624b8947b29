//! Rejects: the rows that did not land, and the `rejects.ndjson` file they are written to.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{IoContext, Result};
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

impl Reject {
    /// A row PostgREST refused for good, with the error it gave.
    pub fn refused(
        table: &crate::catalogue::Table,
        row: &super::Prepared,
        e: &crate::Error,
    ) -> Reject {
        Reject {
            table: table.sqlite.to_owned(),
            key: row.key.clone(),
            code: e.code().unwrap_or("error").to_owned(),
            message: e.to_string(),
            row: serde_json::from_str(&row.json).unwrap_or(Value::Null),
        }
    }
}

/// The rejects file: NDJSON, one line per row that did not land, flushed as written.
pub(crate) struct RejectLog {
    file: Option<Mutex<std::fs::File>>,
    pub path: PathBuf,
    sample: Mutex<Vec<Reject>>,
}

impl RejectLog {
    pub(crate) fn open(path: PathBuf, persist: bool) -> Result<RejectLog> {
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

    pub(crate) fn write(&self, rejects: &[Reject]) -> Result<()> {
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
            f.write_all(&buf).at(&self.path)?;
            f.flush().at(&self.path)?;
        }
        Ok(())
    }

    pub(crate) fn sample(&self) -> Vec<Reject> {
        crate::sync::lock(&self.sample).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backfill::Checkpoints;
    use crate::Error;

    #[test]
    fn a_rejects_file_or_checkpoint_that_cannot_be_opened_is_named() {
        let d = tempfile::tempdir().unwrap();
        // The state "directory" is a regular file: nothing can be created in it.
        let not_a_dir = d.path().join("state");
        std::fs::write(&not_a_dir, b"").unwrap();
        let rejects = not_a_dir.join("rejects.ndjson");
        let e = RejectLog::open(rejects.clone(), true).err().unwrap();
        assert!(matches!(&e, Error::Io { path: Some(_), .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("{}: ", not_a_dir.display())),
            "{e}"
        );
        // A checkpoint that is a directory cannot be read.
        std::fs::create_dir(d.path().join("checkpoint.json")).unwrap();
        let e = Checkpoints::open(&crate::state_file::StateDir::new(d.path()), "src", false)
            .err()
            .unwrap();
        let path = d.path().join("checkpoint.json");
        assert!(
            e.to_string().starts_with(&format!("{}: ", path.display())),
            "{e}"
        );
        assert!(!e.is_transient());
    }
}

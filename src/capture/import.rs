//! The legacy failure log (`dual.failure_log`), imported into the change log.

use std::path::Path;

use rusqlite::{params, Connection};
use serde::Serialize;

use super::{immediate, NOW_SQL, QUEUE};
use crate::catalogue::{Table, TABLES};
use crate::error::Result;

/// What [`import_failures`] did with the legacy NDJSON failure log.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ImportReport {
    pub file: String,
    /// Failure records turned into pending changes (their lines leave the file).
    pub imported: u64,
    /// Records kept in the file for `dualwrite replay`: deletes by document or of
    /// whole tables name no row key, so the state-based log cannot express them.
    pub kept: u64,
}

/// The row keys a recorded failure touched, when it names them all.
fn failure_keys(line: &str) -> Option<Vec<(&'static Table, String)>> {
    let f: crate::db::SecondaryFailure = serde_json::from_str(line).ok()?;
    match f.write.steps() {
        // Read-modify-write methods: the record's table and key are the row's.
        None => {
            let t = TABLES.iter().copied().find(|t| t.sqlite == f.table)?;
            (!f.key.is_empty()).then(|| vec![(t, f.key)])
        }
        Some(steps) => {
            let mut keys = Vec::new();
            for st in steps {
                match st {
                    crate::model::Step::Upsert { table, rows } => {
                        for r in rows {
                            keys.push((table, r.first()?.display()));
                        }
                    }
                    _ => return None,
                }
            }
            Some(keys)
        }
    }
}

/// Import the legacy failure log (`dual.failure_log`) into the change log,
/// once: each record that names its rows becomes a pending change (the drainer
/// then sends those rows as they are now, so an old payload can never
/// overwrite a newer row) and leaves the file; the others stay for `replay`.
/// The file is rewritten atomically; with nothing left it is removed.
pub fn import_failures(conn: &mut Connection, file: &Path) -> Result<ImportReport> {
    let mut report = ImportReport {
        file: file.display().to_string(),
        ..ImportReport::default()
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(e.into()),
    };
    let mut keep = String::new();
    let mut marks = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let replayed = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("replayed").and_then(serde_json::Value::as_bool))
            .unwrap_or(false);
        match failure_keys(line) {
            Some(keys) if !replayed => {
                marks.extend(keys);
                report.imported += 1;
            }
            _ => {
                keep.push_str(line);
                keep.push('\n');
                report.kept += u64::from(!replayed);
            }
        }
    }
    if report.imported == 0 {
        return Ok(report);
    }
    immediate(conn, |tx| {
        let mut stmt = tx.prepare(&format!(
            "INSERT INTO {QUEUE} (tbl, key, op, at) VALUES (?1, ?2, 'U', {NOW_SQL})"
        ))?;
        for (t, k) in &marks {
            stmt.execute(params![t.sqlite, k])?;
        }
        Ok(())
    })?;
    // After the commit: a crash in between imports the records twice, which
    // only marks the same keys again.
    if keep.is_empty() {
        std::fs::remove_file(file)?;
    } else {
        let tmp = file.with_extension("ndjson.tmp");
        std::fs::write(&tmp, keep)?;
        std::fs::rename(&tmp, file)?;
    }
    Ok(report)
}

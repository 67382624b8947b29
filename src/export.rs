//! Export a DoX SQLite file as NDJSON (already in the Supabase shape), and
//! import such an export through the same batched upsert path as the backfill.
//!
//! An export directory holds one `<table>.ndjson` (or `.ndjson.zst`) per table,
//! `rejects.ndjson` for rows Supabase could not hold, and `manifest.json`,
//! written last, with per-table row counts and SHA-256 digests of the files.
//! An import checks every file against the manifest first and refuses a
//! truncated or altered export before it writes anything.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::backfill::{
    self, BackfillOptions, BackfillReport, BatchSource, Cursor, Loader, Prepared, PreparedRows,
    Reject, SourceBatch,
};
use crate::catalogue::{self, Table};
use crate::db::{SqliteDatabase, SupabaseDatabase};
use crate::error::{Error, IoContext, Result};
use crate::normalise::coerced::CoercedLog;
use crate::normalise::UnrepresentablePolicy;
use crate::state_file;

pub const FORMAT: &str = "dualwrite-export/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub tool_version: String,
    pub created_at: String,
    pub source: SourceInfo,
    pub compressed: bool,
    pub tables: Vec<ManifestTable>,
    pub rejected_rows: u64,
    /// Lossy conversions made while exporting: "table.column: kind" → count.
    pub lossy: std::collections::BTreeMap<String, u64>,
    /// The policy the export ran with: under `coerce`, values Supabase cannot
    /// hold were changed, and `coerced.ndjson` holds their originals.
    #[serde(default)]
    pub unrepresentable: UnrepresentablePolicy,
    #[serde(default)]
    pub coerced_values: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub name: String,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestTable {
    pub table: String,
    pub supabase_table: String,
    pub file: String,
    pub rows: u64,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Export the selected tables of `source` into `out` (which must not hold an export yet).
pub async fn export(
    source: &Path,
    out: &Path,
    tables: &[&'static Table],
    compress: bool,
) -> Result<Manifest> {
    export_with(source, out, tables, compress, UnrepresentablePolicy::Reject).await
}

/// [`export`] under a policy for values Supabase cannot hold. Under `coerce`,
/// the coerced values' originals go to `<out>/coerced.ndjson`.
pub async fn export_with(
    source: &Path,
    out: &Path,
    tables: &[&'static Table],
    compress: bool,
    policy: UnrepresentablePolicy,
) -> Result<Manifest> {
    if out.join("manifest.json").exists() {
        return Err(Error::invalid(format!(
            "{} already holds an export; choose another --out",
            out.display()
        )));
    }
    state_file::create_dir_all(out)?;
    let db = SqliteDatabase::open_read_only(source).await?;
    let selected: Vec<&'static Table> = if tables.is_empty() {
        catalogue::TABLES.to_vec()
    } else {
        tables.to_vec()
    };
    let rejects_path = out.join("rejects.ndjson");
    let mut rejects = std::io::BufWriter::new(state_file::create(&rejects_path)?);
    let mut manifest = Manifest {
        format: FORMAT.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        created_at: crate::normalise::now_text(),
        source: SourceInfo {
            name: source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            size_bytes: std::fs::metadata(source).at(source)?.len(),
        },
        compressed: compress,
        tables: Vec::new(),
        rejected_rows: 0,
        lossy: Default::default(),
        unrepresentable: policy,
        coerced_values: 0,
    };
    let coerced_log = CoercedLog::new(out.join("coerced.ndjson"));
    for t in selected {
        if !db.has_table(t) {
            continue;
        }
        let file = format!("{}.ndjson{}", t.sqlite, if compress { ".zst" } else { "" });
        let path = out.join(&file);
        let f = std::io::BufWriter::new(state_file::create(&path)?);
        let mut sink: Box<dyn Write> = if compress {
            Box::new(zstd::Encoder::new(f, 3).at(&path)?.auto_finish())
        } else {
            Box::new(f)
        };
        let mut rows = 0u64;
        let mut after = None;
        loop {
            let page = db.page(t, after.clone(), 2000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last[0].clone());
            let (mut lossy, mut coerced) = (Vec::new(), Vec::new());
            for row in &page {
                match backfill::prepare_row_with(t, row, &mut lossy, policy, &mut coerced) {
                    Ok(p) => {
                        sink.write_all(p.json.as_bytes()).at(&path)?;
                        sink.write_all(b"\n").at(&path)?;
                        rows += 1;
                    }
                    Err(r) => {
                        serde_json::to_writer(&mut rejects, &*r).expect("a reject serialises");
                        rejects.write_all(b"\n").at(&rejects_path)?;
                        manifest.rejected_rows += 1;
                    }
                }
            }
            manifest.coerced_values += coerced.len() as u64;
            coerced_log.write(&coerced)?;
            for (col, k) in lossy {
                *manifest
                    .lossy
                    .entry(format!("{}.{col}: {}", t.sqlite, k.as_str()))
                    .or_default() += 1;
            }
        }
        sink.flush().at(&path)?;
        drop(sink);
        manifest.tables.push(ManifestTable {
            table: t.sqlite.into(),
            supabase_table: t.supabase.into(),
            sha256: file_sha256(&path)?,
            file,
            rows,
        });
    }
    rejects.flush().at(&rejects_path)?;
    state_file::write_atomically(
        &out.join("manifest.json"),
        &serde_json::to_vec_pretty(&manifest).expect("a manifest serialises"),
    )?;
    Ok(manifest)
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).at(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn open_lines(path: &Path, compressed: bool) -> Result<Box<dyn BufRead + Send>> {
    let f = std::fs::File::open(path).at(path)?;
    Ok(if compressed {
        Box::new(BufReader::new(zstd::Decoder::new(f).at(path)?))
    } else {
        Box::new(BufReader::new(f))
    })
}

/// Read and check an export: the manifest, every file's digest and row count.
pub fn check(dir: &Path) -> Result<Manifest> {
    let bad = |what: String| Error::invalid(format!("the export in {} is {what}", dir.display()));
    // A missing or unreadable directory is named as such, not as a bad export.
    std::fs::read_dir(dir).at(dir)?;
    let manifest = dir.join("manifest.json");
    let bytes = match std::fs::read(&manifest) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(
                "incomplete or not an export: it has no manifest.json".into()
            ))
        }
        Err(e) => return Err(Error::io_at(e, &manifest)),
    };
    let m: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("damaged: manifest.json: {e}")))?;
    if m.format != FORMAT {
        return Err(bad(format!("in format `{}`, not {FORMAT}", m.format)));
    }
    for t in &m.tables {
        catalogue::table(&t.table)?;
        let path = dir.join(&t.file);
        if !path.exists() {
            return Err(bad(format!("incomplete: {} is missing", t.file)));
        }
        let digest = file_sha256(&path)?;
        if digest != t.sha256 {
            return Err(bad(format!(
                "truncated or altered: {} has SHA-256 {digest}, the manifest says {}",
                t.file, t.sha256
            )));
        }
        let mut lines = 0u64;
        for line in open_lines(&path, m.compressed)?.lines() {
            line.map_err(|e| bad(format!("damaged: {}: {e}", t.file)))?;
            lines += 1;
        }
        if lines != t.rows {
            return Err(bad(format!(
                "truncated or altered: {} has {lines} rows, the manifest says {}",
                t.file, t.rows
            )));
        }
    }
    Ok(m)
}

/// Lines of one export file, read on a thread of its own (file reading blocks),
/// handed over in chunks through a bounded channel so memory stays flat.
pub struct NdjsonSource {
    table: &'static Table,
    rx: tokio::sync::mpsc::Receiver<std::io::Result<(u64, String)>>,
    buffered: Option<(u64, String)>,
}

impl NdjsonSource {
    pub fn open(
        table: &'static Table,
        path: PathBuf,
        compressed: bool,
        skip: u64,
    ) -> Result<NdjsonSource> {
        let reader = open_lines(&path, compressed)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        std::thread::spawn(move || {
            for (i, line) in reader.lines().enumerate() {
                let n = i as u64 + 1;
                if n <= skip {
                    continue;
                }
                if tx.blocking_send(line.map(|l| (n, l))).is_err() {
                    return;
                }
            }
        });
        Ok(NdjsonSource {
            table,
            rx,
            buffered: None,
        })
    }

    fn prepare(&self, line: &str) -> std::result::Result<Prepared, Box<Reject>> {
        let reject = |message: String| Reject {
            table: self.table.sqlite.into(),
            key: String::new(),
            code: "invalid_row".into(),
            message,
            row: Value::String(line.chars().take(2000).collect()),
        };
        let row: Map<String, Value> = serde_json::from_str(line)
            .map_err(|e| Box::new(reject(format!("not a JSON object: {e}"))))?;
        // Complete rows only: exactly the table's columns.
        let complete = row.len() == self.table.columns.len()
            && self
                .table
                .columns
                .iter()
                .all(|c| row.contains_key(c.supabase));
        let key = row
            .get(self.table.key().supabase)
            .and_then(Value::as_str)
            .map(str::to_owned);
        match (complete, key) {
            (true, Some(key)) => Ok(Prepared {
                key,
                json: line.to_owned(),
            }),
            (_, key) => Err(Box::new(Reject {
                key: key.unwrap_or_default(),
                ..reject(format!("not a complete {} row", self.table.supabase))
            })),
        }
    }
}

impl BatchSource for NdjsonSource {
    async fn next(&mut self, max_rows: usize, max_bytes: usize) -> Result<Option<SourceBatch>> {
        let mut rows: Vec<Prepared> = Vec::new();
        let mut rejects = Vec::new();
        let (mut read, mut bytes) = (0usize, 0usize);
        let mut index = std::collections::HashMap::<String, usize>::new();
        let mut last_line = None;
        while read < max_rows.max(1) && (bytes < max_bytes || read == 0) {
            let item = match self.buffered.take() {
                Some(x) => x,
                None => match self.rx.recv().await {
                    Some(r) => r?,
                    None => break,
                },
            };
            let (n, line) = item;
            read += 1;
            last_line = Some(n);
            match self.prepare(&line) {
                Ok(p) => {
                    bytes += p.json.len() + 1;
                    // Deduplicate by key within the batch: the last one wins.
                    if let Some(&i) = index.get(&p.key) {
                        rows[i] = p;
                    } else {
                        index.insert(p.key.clone(), rows.len());
                        rows.push(p);
                    }
                }
                Err(r) => rejects.push(*r),
            }
        }
        Ok(last_line.map(|n| SourceBatch {
            rows: PreparedRows::from_rows(&rows),
            rejects,
            read: read as u64,
            lossy: Vec::new(),
            coerced: Vec::new(),
            cursor: Cursor::Line(n),
            check_stale: false,
            version: None,
        }))
    }
}

/// Whether an earlier run of this import got as far as loading a table (its
/// coerced values are recorded already).
fn report_was_imported(loader: &Loader<'_>, manifest: &Manifest) -> bool {
    manifest.tables.iter().any(|m| {
        catalogue::table(&m.table).is_ok_and(|t| {
            let c = loader.checkpoints.table(t);
            c.done || c.after.is_some()
        })
    })
}

/// Load a checked export into Supabase, with checkpoints, rejects and a report.
pub async fn import(
    dir: &Path,
    target: &SupabaseDatabase,
    opts: &BackfillOptions,
) -> Result<BackfillReport> {
    let started = Instant::now();
    let manifest = check(dir)?;
    if manifest.unrepresentable == UnrepresentablePolicy::Coerce
        && manifest.coerced_values > 0
        && opts.unrepresentable != UnrepresentablePolicy::Coerce
    {
        return Err(Error::invalid(format!(
            "{} holds {} coerced values (their originals are in coerced.ndjson there): \
             import it with --unrepresentable coerce to accept them",
            dir.display(),
            manifest.coerced_values
        )));
    }
    let dir_id = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let source_id = format!("export {} ({})", dir_id.display(), manifest.created_at);
    let mut loader = Loader::new(target, opts, &source_id)?;
    // The export's record of coerced values joins the import's, beside its rejects.
    let coerced = dir.join("coerced.ndjson");
    if coerced.exists() && !opts.dry_run && !report_was_imported(&loader, &manifest) {
        loader
            .coerced
            .write(&crate::normalise::coerced::read(&coerced)?)?;
    }
    let selected = opts.selected();
    let mut report = BackfillReport {
        source: dir.display().to_string(),
        target: opts.target_name(target.rest().url()),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    for t in selected {
        let Some(entry) = manifest.tables.iter().find(|m| m.table == t.sqlite) else {
            continue;
        };
        let ck = loader.checkpoints.table(t);
        report.resumed |= (ck.done || ck.after.is_some()) && !opts.dry_run;
        let skip = match (&ck.after, opts.dry_run) {
            (Some(Cursor::Line(n)), false) => *n,
            _ => 0,
        };
        let src = NdjsonSource::open(t, dir.join(&entry.file), manifest.compressed, skip)?;
        let r = loader.copy_table(t, src, entry.rows, None).await?;
        report.tables.push(r);
    }
    Ok(loader.finish(report, started))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_export_directory_is_named() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("no-such-export");
        let e = check(&missing).unwrap_err();
        assert!(
            matches!(&e, Error::Io { path: Some(p), source } if *p == missing
                && source.kind() == std::io::ErrorKind::NotFound),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("{}: ", missing.display())),
            "{e}"
        );
        // A directory that exists but holds no manifest is told apart.
        let e = check(d.path()).unwrap_err().to_string();
        assert!(e.contains("no manifest.json"), "{e}");
    }
}

//! The record of coerced values: under `--unrepresentable coerce`, each value
//! the normaliser changed so that Supabase can hold it is written, with its
//! original, to `coerced.ndjson` (next to `rejects.ndjson`, mode 0600), so that
//! nothing is lost silently.
//!
//! One line per value: `{"table", "key", "column", "conversion", "original",
//! "original_base64", "coerced"}`. `original` is the value as SQLite held it
//! when that is UTF-8 text (or a number); otherwise it is null and
//! `original_base64` holds the bytes (standard alphabet, padded).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalogue::Table;
use crate::error::{IoContext, Result};
use crate::normalise::{self, Lossy, SqlRef, SqlValue, UnrepresentablePolicy};

/// One coerced value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoercedValue {
    /// SQLite table name.
    pub table: String,
    pub key: String,
    /// SQLite column name.
    pub column: String,
    /// The lossy conversion (`nul_removed`, `invalid_utf8_replaced`, …).
    pub conversion: String,
    /// The original value, when it is UTF-8 text or a number.
    pub original: Value,
    /// The original bytes, base64, when they are not UTF-8.
    pub original_base64: Option<String>,
    /// What Supabase holds instead.
    pub coerced: Value,
}

impl CoercedValue {
    /// The original bytes of the value (text as UTF-8, or the decoded base64).
    pub fn original_bytes(&self) -> Option<Vec<u8>> {
        match (&self.original_base64, &self.original) {
            (Some(b), _) => base64::engine::general_purpose::STANDARD.decode(b).ok(),
            (None, Value::String(s)) => Some(s.as_bytes().to_vec()),
            (None, Value::Null) => None,
            (None, other) => Some(other.to_string().into_bytes()),
        }
    }
}

/// The coerced values of one row: one record per coercion in `lossy` (the
/// conversions the normaliser reported for this row).
pub fn records(
    table: &'static Table,
    row: &[SqlRef<'_>],
    lossy: &[(&'static str, Lossy)],
) -> Vec<CoercedValue> {
    lossy
        .iter()
        .filter(|(_, l)| l.is_coercion())
        .filter_map(|(column, l)| {
            let i = table.columns.iter().position(|c| c.sqlite == *column)?;
            let col = &table.columns[i];
            let v = row[i].to_value();
            let coerced =
                normalise::value_to_canonical_with(col, &v, UnrepresentablePolicy::Coerce)
                    .map(|(v, _)| v)
                    .unwrap_or(Value::Null);
            let (original, original_base64) = match &v {
                SqlValue::Text(s) => (Value::String(s.clone()), None),
                SqlValue::Integer(n) => (Value::from(*n), None),
                SqlValue::Real(f) => (Value::String(f.to_string()), None),
                SqlValue::BadText(b) | SqlValue::Blob(b) => (
                    Value::Null,
                    Some(base64::engine::general_purpose::STANDARD.encode(b)),
                ),
                SqlValue::Null => (Value::Null, None),
            };
            Some(CoercedValue {
                table: table.sqlite.to_owned(),
                key: row[0].to_value().display(),
                column: (*column).to_owned(),
                conversion: l.as_str().to_owned(),
                original,
                original_base64,
                coerced,
            })
        })
        .collect()
}

/// The `coerced.ndjson` file: appended to, flushed as written, mode 0600.
#[derive(Debug)]
pub struct CoercedLog {
    file: Mutex<Option<std::fs::File>>,
    pub path: PathBuf,
}

impl CoercedLog {
    /// The file is created (with its directory) on the first record only.
    pub fn new(path: PathBuf) -> CoercedLog {
        CoercedLog {
            file: Mutex::new(None),
            path,
        }
    }

    pub fn write(&self, records: &[CoercedValue]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in records {
            tracing::info!(table = %r.table, key = %r.key, column = %r.column, conversion = %r.conversion, "value coerced; original recorded in {}", self.path.display());
            serde_json::to_writer(&mut buf, r).expect("a record serialises");
            buf.push(b'\n');
        }
        let mut f = crate::sync::lock(&self.file);
        if f.is_none() {
            *f = Some(crate::state_file::append(&self.path)?);
        }
        let file = f.as_mut().expect("opened above");
        file.write_all(&buf).at(&self.path)?;
        file.flush().at(&self.path)?;
        Ok(())
    }
}

/// Read a `coerced.ndjson` file (for tests and tools).
pub fn read(path: &Path) -> Result<Vec<CoercedValue>> {
    let text = std::fs::read_to_string(path).at(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| {
                crate::Error::invalid(format!("{}: a malformed line: {e}", path.display()))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{ARTIFACT, DOCUMENT_METRIC_HITS, DOCUMENT_STRUCTURE};
    use crate::normalise::to_canonical_with;

    const COERCE: UnrepresentablePolicy = UnrepresentablePolicy::Coerce;

    fn refs(row: &[SqlValue]) -> Vec<SqlRef<'_>> {
        row.iter().map(SqlValue::as_ref).collect()
    }

    #[test]
    fn each_kind_is_refused_by_default_and_coerced_on_request() {
        let bad = vec![b'a', 0xff, b'b'];
        let cases: Vec<(&'static Table, Vec<SqlValue>, &str, Value, &str)> = vec![
            (
                &ARTIFACT,
                artifact(SqlValue::text("x\0y.pdf")),
                "filename",
                Value::String("xy.pdf".into()),
                "nul_removed",
            ),
            (
                &ARTIFACT,
                artifact(SqlValue::BadText(bad.clone())),
                "filename",
                Value::String("a\u{FFFD}b".into()),
                "invalid_utf8_replaced",
            ),
            (
                &DOCUMENT_STRUCTURE,
                vec![
                    SqlValue::text("d1"),
                    SqlValue::text(r#"{"k\u0000": "v\u0000w", "n": [1, "\u0000"]}"#),
                ],
                "hierarchy_json",
                serde_json::json!({"k": "vw", "n": [1, ""]}),
                "json_nul_removed",
            ),
        ];
        for (t, row, column, want, conversion) in cases {
            assert!(to_canonical_with(t, &row, UnrepresentablePolicy::Reject).is_err());
            let c = to_canonical_with(t, &row, COERCE).unwrap();
            let supabase = t
                .columns
                .iter()
                .find(|c| c.sqlite == column)
                .unwrap()
                .supabase;
            assert_eq!(c.row[supabase], want, "{column}");
            let recs = records(t, &refs(&row), &c.lossy);
            assert_eq!(recs.len(), 1, "{recs:?}");
            assert_eq!(recs[0].conversion, conversion);
            assert_eq!(recs[0].coerced, want);
            // The fast path (the backfill's) agrees with the slow one.
            let fast = normalise::to_json_row_ref(t, &refs(&row), COERCE).unwrap();
            let fast: Value = serde_json::from_str(&fast.row).unwrap();
            assert_eq!(fast, Value::Object(c.row.clone()));
        }
        let rec = &records(
            &ARTIFACT,
            &refs(&artifact(SqlValue::BadText(bad.clone()))),
            &[("filename", Lossy::InvalidUtf8Replaced)],
        )[0];
        assert_eq!(rec.original, Value::Null);
        assert_eq!(rec.original_bytes().unwrap(), bad);
    }

    #[test]
    fn text_in_an_integer_column_becomes_its_integer_or_null() {
        let row = |v: SqlValue| {
            let mut r = vec![SqlValue::Null; DOCUMENT_METRIC_HITS.columns.len()];
            r[0] = SqlValue::text("h1");
            let i = DOCUMENT_METRIC_HITS
                .columns
                .iter()
                .position(|c| c.kind == crate::catalogue::Kind::Integer)
                .unwrap();
            r[i] = v;
            (r, DOCUMENT_METRIC_HITS.columns[i].supabase)
        };
        let (r, col) = row(SqlValue::text("3a"));
        let c = to_canonical_with(&DOCUMENT_METRIC_HITS, &r, COERCE).unwrap();
        assert_eq!(c.row[col], Value::Null);
        assert_eq!(c.lossy[0].1, Lossy::IntegerTextNulled);
        let rec = &records(&DOCUMENT_METRIC_HITS, &refs(&r), &c.lossy)[0];
        assert_eq!(rec.original, Value::String("3a".into()));
        let (r, col) = row(SqlValue::text(" 42 "));
        let c = to_canonical_with(&DOCUMENT_METRIC_HITS, &r, COERCE).unwrap();
        assert_eq!(c.row[col], Value::from(42));
        assert_eq!(c.lossy[0].1, Lossy::IntegerFromText);
        // Blobs are never coerced.
        let (r, _) = row(SqlValue::Blob(vec![1, 2]));
        assert!(to_canonical_with(&DOCUMENT_METRIC_HITS, &r, COERCE).is_err());
    }

    #[test]
    fn keys_are_never_coerced() {
        // "a\0" and "a" would become one key, and one row would overwrite the other.
        for key in [SqlValue::text("a\0"), SqlValue::BadText(vec![b'a', 0xff])] {
            let mut row = artifact(SqlValue::text("f.pdf"));
            row[0] = key;
            let e = to_canonical_with(&ARTIFACT, &row, COERCE).unwrap_err();
            assert!(e.to_string().contains("column id"), "{e}");
            assert!(normalise::to_json_row_ref(&ARTIFACT, &refs(&row), COERCE).is_err());
        }
    }

    fn artifact(filename: SqlValue) -> Vec<SqlValue> {
        let mut r = vec![SqlValue::Null; ARTIFACT.columns.len()];
        r[0] = SqlValue::text("a1");
        r[ARTIFACT.index_of("filename")] = filename;
        r
    }

    #[test]
    fn the_log_is_private_and_reads_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let log = CoercedLog::new(dir.path().join("s/coerced.ndjson"));
        log.write(&[]).unwrap();
        assert!(!log.path.exists(), "no record, no file");
        let rec = CoercedValue {
            table: "artifact".into(),
            key: "a1".into(),
            column: "filename".into(),
            conversion: "nul_removed".into(),
            original: Value::String("x\0y".into()),
            original_base64: None,
            coerced: Value::String("xy".into()),
        };
        log.write(std::slice::from_ref(&rec)).unwrap();
        let mode = std::fs::metadata(&log.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read(&log.path).unwrap(), vec![rec]);
    }
}

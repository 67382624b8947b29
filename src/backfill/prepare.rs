//! Batch preparation: SQLite rows through the normaliser into a batch's request
//! body, or into rejects.

use std::ops::Range;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::catalogue::Table;
use crate::error::Error;
use crate::normalise::coerced::CoercedValue;
use crate::normalise::{self, Lossy, SqlRef, SqlRow, SqlValue, UnrepresentablePolicy};

use super::rejects::Reject;

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
pub(crate) struct RowsBuilder {
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
    pub(crate) fn with_capacity(bytes: usize, rows: usize) -> RowsBuilder {
        let mut body = String::with_capacity(bytes + 2);
        body.push('[');
        RowsBuilder {
            body,
            spans: Vec::with_capacity(rows),
            keys: String::with_capacity(rows * 40),
            key_ends: Vec::with_capacity(rows),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    /// The body's size so far, in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.body.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Append a row whose JSON object `write` writes; when it fails, nothing
    /// of the row is kept.
    pub(crate) fn push_with<T, E>(
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

    pub(crate) fn push(&mut self, p: &Prepared) {
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

    pub(crate) fn finish(mut self) -> PreparedRows {
        self.body.push(']');
        PreparedRows {
            body: Bytes::from(self.body),
            spans: self.spans,
            keys: self.keys,
            key_ends: self.key_ends,
        }
    }
}

/// A SQLite row as JSON for the rejects file (lenient: blobs as hex).
pub(super) fn raw_row_json(t: &Table, row: &SqlRow) -> Value {
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

/// [`prepare_row`] under a policy; coerced values are appended to `coerced`.
pub(crate) fn prepare_row_with(
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
                coerced.extend(crate::normalise::coerced::records(t, &refs, &c.lossy));
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
pub(crate) fn prepare_row_into(
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
                coerced.extend(crate::normalise::coerced::records(t, row, &l));
            }
            lossy.extend(l);
            Ok(())
        }
        Err(e) => Err(unrepresentable(t, row, e)),
    }
}

pub(super) fn unrepresentable(t: &'static Table, row: &[SqlRef<'_>], e: Error) -> Box<Reject> {
    let owned: SqlRow = row.iter().map(|v| v.to_value()).collect();
    Box::new(Reject {
        table: t.sqlite.to_owned(),
        key: owned[0].display(),
        code: "unrepresentable".into(),
        message: e.to_string(),
        row: raw_row_json(t, &owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! A batch's rows in `COPY`'s text format, for `--via postgres`.
//!
//! The batch is prepared as for PostgREST (the one normaliser writes each row's
//! canonical JSON, which the rejects, the bisection and the stale guard use
//! too); each row is then rewritten as one line of COPY text, its columns in
//! catalogue order, so the rows PostgreSQL stores are the ones PostgREST would
//! have stored from the same JSON.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::catalogue::{Kind, Table};
use crate::error::{Error, Result};

use super::prepare::PreparedRows;

/// The rows of `range` as COPY text.
pub(super) fn copy_text(table: &Table, rows: &PreparedRows, range: Range<usize>) -> Result<Bytes> {
    let mut out = Vec::with_capacity(range.clone().map(|i| rows.json(i).len()).sum());
    for i in range {
        row_line(table, rows.json(i), &mut out)?;
    }
    Ok(Bytes::from(out))
}

/// One canonical JSON row (`{"column": value, …}`) as a line of COPY text.
fn row_line(table: &Table, json: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let fields = serde_json::Deserializer::from_slice(json)
        .deserialize_map(Fields(Vec::with_capacity(table.columns.len())))
        .map_err(|e| {
            Error::Protocol(format!(
                "{}: a prepared row is not JSON: {e}",
                table.supabase
            ))
        })?;
    for (i, col) in table.columns.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        // The normaliser writes every column in catalogue order; look further only if not.
        let value = match fields.get(i) {
            Some((name, v)) if name == col.supabase => Some(*v),
            _ => fields
                .iter()
                .find(|(name, _)| name == col.supabase)
                .map(|(_, v)| *v),
        };
        let raw = value.map_or("null", RawValue::get);
        if raw == "null" {
            out.extend_from_slice(b"\\N");
        } else if col.kind == Kind::Json {
            // jsonb reads the JSON text itself.
            escape(raw, out);
        } else if raw.starts_with('"') {
            let s: Cow<'_, str> = serde_json::from_str(raw).map_err(|e| {
                Error::Protocol(format!("{}.{}: {e}", table.supabase, col.supabase))
            })?;
            escape(&s, out);
        } else {
            // Numbers and booleans: PostgreSQL reads JSON's spelling.
            escape(raw, out);
        }
    }
    out.push(b'\n');
    Ok(())
}

/// COPY text's escapes: backslash, and the characters that end a field or a line.
fn escape(s: &str, out: &mut Vec<u8>) {
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
}

/// A JSON object's members in order, each value as its JSON text.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Visitor<'de> for Fields<'de> {
    type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(
        mut self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        while let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
            self.0.push(entry);
        }
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backfill::Prepared;
    use crate::catalogue::TABLES;

    #[test]
    fn each_kind_is_written_as_copy_reads_it() {
        let t = TABLES
            .iter()
            .find(|t| t.columns.iter().any(|c| c.kind == Kind::Json))
            .unwrap();
        let mut obj = serde_json::Map::new();
        let mut want = Vec::new();
        for c in t.columns {
            let (v, w) = match c.kind {
                Kind::Text => (serde_json::json!("a\tb\\c\nd é"), "a\\tb\\\\c\\nd é"),
                Kind::Integer => (serde_json::json!(42), "42"),
                Kind::Float => (serde_json::json!(1.5), "1.5"),
                Kind::Bool => (serde_json::json!(true), "true"),
                Kind::Json => (
                    serde_json::json!({"k": "x\\y", "n": null}),
                    "{\"k\":\"x\\\\\\\\y\",\"n\":null}",
                ),
                Kind::Timestamp => (serde_json::Value::Null, "\\N"),
            };
            obj.insert(c.supabase.to_owned(), v);
            want.push(w);
        }
        let rows = PreparedRows::from_rows(&[Prepared {
            key: "k".into(),
            json: serde_json::Value::Object(obj).to_string(),
        }]);
        let text = copy_text(t, &rows, 0..1).unwrap();
        assert_eq!(
            String::from_utf8(text.to_vec()).unwrap(),
            format!("{}\n", want.join("\t"))
        );
    }
}

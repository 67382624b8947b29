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
    let mark = out.len();
    if fast_line(table, json, out).is_some() {
        return Ok(());
    }
    out.truncate(mark);
    slow_line(table, json, out)
}

/// [`slow_line`]'s answer in one pass over the bytes, for the rows the
/// normaliser writes (every column, in catalogue order, compact, no `\u`
/// escape in a text value); `None` for anything else, which the caller sends
/// to [`slow_line`]. The rewrite costs the backfill's process CPU on the cores
/// PostgreSQL needs, and a parser building each value costs more.
fn fast_line(table: &Table, json: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut i = 0;
    let expect = |i: &mut usize, b: &[u8]| -> Option<()> {
        json.get(*i..*i + b.len()).filter(|s| *s == b)?;
        *i += b.len();
        Some(())
    };
    expect(&mut i, b"{")?;
    for (n, col) in table.columns.iter().enumerate() {
        if n > 0 {
            expect(&mut i, b",")?;
            out.push(b'\t');
        }
        expect(&mut i, b"\"")?;
        expect(&mut i, col.supabase.as_bytes())?;
        expect(&mut i, b"\":")?;
        let start = i;
        match *json.get(i)? {
            b'n' => {
                expect(&mut i, b"null")?;
                out.extend_from_slice(b"\\N");
            }
            b'"' if col.kind != Kind::Json => {
                i += 1;
                let mut run = i;
                loop {
                    match *json.get(i)? {
                        b'"' => break,
                        b'\\' => {
                            out.extend_from_slice(&json[run..i]);
                            let esc: &[u8] = match *json.get(i + 1)? {
                                b'"' => b"\"",
                                b'\\' => b"\\\\",
                                b'/' => b"/",
                                b'n' => b"\\n",
                                b't' => b"\\t",
                                b'r' => b"\\r",
                                b'b' => b"\\b",
                                b'f' => b"\\f",
                                // \uXXXX (a control character, a surrogate pair): the slow path.
                                _ => return None,
                            };
                            out.extend_from_slice(esc);
                            i += 2;
                            run = i;
                        }
                        _ => i += 1,
                    }
                }
                out.extend_from_slice(&json[run..i]);
                i += 1;
            }
            // jsonb reads the JSON text itself (a string value included).
            b'"' | b'{' | b'[' => {
                i = value_end(json, i)?;
                escape_bytes(&json[start..i], out);
            }
            // Numbers and booleans: PostgreSQL reads JSON's spelling.
            _ => {
                while !matches!(*json.get(i)?, b',' | b'}') {
                    i += 1;
                }
                out.extend_from_slice(&json[start..i]);
            }
        }
    }
    expect(&mut i, b"}")?;
    (i == json.len()).then_some(())?;
    out.push(b'\n');
    Some(())
}

/// Where the JSON string, object or array starting at `i` ends (one past it).
fn value_end(json: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    loop {
        let c = *json.get(i)?;
        i += 1;
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => {
                    in_string = false;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
}

/// The same as [`row_line`], by a JSON parser: any JSON object.
fn slow_line(table: &Table, json: &[u8], out: &mut Vec<u8>) -> Result<()> {
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
    escape_bytes(s.as_bytes(), out)
}

fn escape_bytes(b: &[u8], out: &mut Vec<u8>) {
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

    /// The one-pass rewrite says what the parser says, or leaves the row to it.
    #[test]
    fn the_fast_rewrite_agrees_with_the_parser() {
        let t = TABLES
            .iter()
            .find(|t| t.columns.iter().any(|c| c.kind == Kind::Json))
            .unwrap();
        let texts = [
            "plain",
            "tab\there\nnew \\ back \"q\" / é ✓ 😀",
            "\u{1}ctl\u{8}\u{c}",
            "",
        ];
        let jsons = [
            serde_json::json!({"a": [1, "x\"}]", {"b": null}], "c": "\\"}),
            serde_json::json!("a string in jsonb \n"),
            serde_json::json!([]),
            serde_json::json!(1.5e300),
            serde_json::json!(true),
        ];
        let mut fast_taken = 0;
        for (n, text) in texts.iter().enumerate() {
            for (m, json) in jsons.iter().enumerate() {
                // Every column, in catalogue order, as the normaliser writes them.
                let mut row = String::from("{");
                for (i, c) in t.columns.iter().enumerate() {
                    if i > 0 {
                        row.push(',');
                    }
                    let v = match c.kind {
                        Kind::Json => json.clone(),
                        Kind::Integer => serde_json::json!(-(n as i64) * 7),
                        Kind::Float => serde_json::json!(m as f64 / 3.0),
                        Kind::Bool => serde_json::json!(n % 2 == 0),
                        _ if (n + m + i) % 5 == 0 => serde_json::Value::Null,
                        _ => serde_json::json!(text),
                    };
                    row.push_str(&format!("\"{}\":{}", c.supabase, v));
                }
                row.push('}');
                let (mut fast, mut slow) = (Vec::new(), Vec::new());
                slow_line(t, row.as_bytes(), &mut slow).unwrap();
                if fast_line(t, row.as_bytes(), &mut fast).is_some() {
                    fast_taken += 1;
                    assert_eq!(
                        String::from_utf8_lossy(&fast),
                        String::from_utf8_lossy(&slow),
                        "{row}"
                    );
                }
                let mut both = Vec::new();
                row_line(t, row.as_bytes(), &mut both).unwrap();
                assert_eq!(both, slow, "{row}");
            }
        }
        assert!(
            fast_taken >= 10,
            "the fast path was taken {fast_taken} times"
        );
        // Not the normaliser's shape: left to the parser.
        assert!(fast_line(t, br#"{"x":1}"#, &mut Vec::new()).is_none());
    }
}

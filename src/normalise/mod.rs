//! The one value normaliser.
//!
//! A DoX row exists in two shapes: the SQLite shape ([`SqlRow`], values as the
//! original application stores them: JSON as text, booleans as 0/1, timestamps as
//! text) and the canonical shape (a JSON object keyed by Supabase column names,
//! holding what the Supabase schema stores). The writer sends canonical rows to
//! Supabase; the readers turn both sides into canonical rows before shaping
//! results; the verifier compares canonical rows. Because there is one
//! conversion, the three cannot disagree.
//!
//! Documented conversions (see docs/behaviour.md, "Value conversions"):
//! * JSON text is parsed into a JSON value. `NaN`, `Infinity` and `-Infinity`
//!   tokens (Python's `json.dumps` writes them) become `null`: counted as lossy
//!   `non_finite_json`. Text that is not JSON at all is kept as a JSON string:
//!   counted as lossy `invalid_json_as_string`.
//! * 0/1 become booleans; an integer other than 0/1 in a boolean column becomes
//!   `true` (lossy `bool_from_integer`).
//! * Non-finite floats in a float column are sent as the strings `NaN`,
//!   `Infinity`, `-Infinity`, which PostgreSQL's double precision stores exactly.
//! * Timestamps are parsed and written as RFC 3339 UTC with `Z`, rounded to the
//!   microsecond PostgreSQL keeps.
//!
//! Values the Supabase schema cannot hold at all (a blob, text with a NUL
//! character or that is not UTF-8, a non-number in an integer column, text that
//! is not a timestamp) are refused with [`Error::Unrepresentable`], naming the
//! table, key and column, so that callers can report the row instead of
//! dropping it. Under [`UnrepresentablePolicy::Coerce`] four of them are changed
//! instead, deterministically, and counted as lossy (the caller records the
//! original, see [`crate::normalise::coerced`]): NUL characters are removed from text, bytes
//! that are not UTF-8 become U+FFFD, `\u0000` is removed from JSON strings and
//! keys, and text in an integer column becomes that integer, or NULL when it is
//! not one. A key is never coerced: two keys could become one.

pub mod coerced;
mod inverse;
mod json;
mod values;

pub use inverse::to_dox;
pub use json::parse_json_text;
pub use values::{Lossy, SqlRef, SqlRow, SqlValue, UnrepresentablePolicy};

use std::fmt::Write as _;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, SubsecRound, Utc};
use serde_json::{Map, Number, Value};

use crate::catalogue::{Column, Kind, Table};
use crate::error::{Error, Result};

use json::{embeddable_json, push_json_str};

/// A canonical row (a map, or its JSON text for the wire) plus the lossy
/// conversions made to build it.
#[derive(Debug, Clone, PartialEq)]
pub struct Canonical<R = Map<String, Value>> {
    pub row: R,
    /// (SQLite column name, what happened), one entry per converted value.
    pub lossy: Vec<(&'static str, Lossy)>,
}

/// Convert a SQLite-shaped row into the canonical (Supabase) shape, refusing
/// values Supabase cannot hold.
pub fn to_canonical(table: &'static Table, row: &[SqlValue]) -> Result<Canonical> {
    to_canonical_with(table, row, UnrepresentablePolicy::Reject)
}

/// [`to_canonical`] under a policy for values Supabase cannot hold.
pub(crate) fn to_canonical_with(
    table: &'static Table,
    row: &[SqlValue],
    policy: UnrepresentablePolicy,
) -> Result<Canonical> {
    debug_assert_eq!(row.len(), table.columns.len());
    let mut out = Map::new();
    let mut lossy = Vec::new();
    for (i, (col, v)) in table.columns.iter().zip(row).enumerate() {
        match value_to_canonical_with(col, v, column_policy(i, policy)) {
            Ok((value, l)) => {
                if let Some(l) = l {
                    lossy.push((col.sqlite, l));
                }
                out.insert(col.supabase.to_owned(), value);
            }
            Err(reason) => {
                return Err(Error::Unrepresentable {
                    table: table.sqlite,
                    key: row[0].display(),
                    column: col.sqlite,
                    reason,
                })
            }
        }
    }
    Ok(Canonical { row: out, lossy })
}

/// The canonical row of [`to_canonical`], serialised as one JSON object for the
/// wire, and faster: JSON text that is valid JSON (and holds nothing jsonb
/// refuses) is embedded as it is instead of being parsed into a tree and
/// printed again. PostgreSQL parses it into the same jsonb value either way.
#[cfg(test)]
pub(crate) fn to_json_row(table: &'static Table, row: &[SqlValue]) -> Result<Canonical<String>> {
    let refs: Vec<SqlRef<'_>> = row.iter().map(SqlValue::as_ref).collect();
    to_json_row_ref(table, &refs, UnrepresentablePolicy::Reject)
}

thread_local! {
    /// Where [`to_json_row_ref`] builds a row before copying it out at its exact
    /// size: one allocation per row instead of a growing buffer's several.
    static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The canonical row serialised as one JSON object ([`to_canonical`]'s, with
/// valid JSON text embedded as it is), over borrowed values, under a policy.
pub(crate) fn to_json_row_ref(
    table: &'static Table,
    row: &[SqlRef<'_>],
    policy: UnrepresentablePolicy,
) -> Result<Canonical<String>> {
    SCRATCH.with_borrow_mut(|out| {
        out.clear();
        let lossy = to_json_row_into_with(table, row, out, policy)?;
        let row = out.as_str().to_owned();
        // A huge row's buffer is not kept for the rest of the run.
        if out.capacity() > 1 << 20 {
            *out = String::new();
        }
        Ok(Canonical { row, lossy })
    })
}

/// Append `row` as one JSON object to `out`, under a policy for values Supabase
/// cannot hold; returns its lossy conversions. On `Err`, `out` holds part of
/// the object: the caller truncates it.
pub(crate) fn to_json_row_into_with(
    table: &'static Table,
    row: &[SqlRef<'_>],
    out: &mut String,
    policy: UnrepresentablePolicy,
) -> Result<Vec<(&'static str, Lossy)>> {
    let refuse = |column: &'static str, reason: String| Error::Unrepresentable {
        table: table.sqlite,
        key: row[0].to_value().display(),
        column,
        reason,
    };
    let mut lossy = Vec::new();
    out.push('{');
    for (i, (col, v)) in table.columns.iter().zip(row).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let policy = column_policy(i, policy);
        out.push('"');
        out.push_str(col.supabase);
        out.push_str("\":");
        match (col.kind, v) {
            (_, SqlRef::Null) => {
                out.push_str("null");
                continue;
            }
            // The bulk of the data: escaped straight into the output, no copy.
            (Kind::Text, SqlRef::Text(s)) => {
                let mark = out.len();
                if push_json_str(out, s).is_ok() {
                    continue;
                }
                if policy == UnrepresentablePolicy::Reject {
                    // push_json_str refuses exactly what check_text refuses.
                    let why = check_text(s).err().unwrap_or_default();
                    return Err(refuse(col.sqlite, why));
                }
                // Coerced on the slow path below.
                out.truncate(mark);
            }
            (Kind::Integer, SqlRef::Integer(n)) => {
                write!(out, "{n}").expect("writing to a String cannot fail");
                continue;
            }
            // Escapes jsonb may refuse (NUL, surrogates) and invalid JSON take the slow path.
            (Kind::Json, SqlRef::Text(s)) if embeddable_json(s) => {
                out.push_str(s);
                continue;
            }
            _ => {}
        }
        let (value, l) = value_to_canonical_with(col, &v.to_value(), policy)
            .map_err(|r| refuse(col.sqlite, r))?;
        if let Some(l) = l {
            lossy.push((col.sqlite, l));
        }
        out.push_str(&serde_json::to_string(&value).expect("JSON values serialise"));
    }
    out.push('}');
    Ok(lossy)
}

/// The policy for the column at `index`: a key (the first column) is never
/// coerced, since two keys could then become one and a row overwrite another.
fn column_policy(index: usize, policy: UnrepresentablePolicy) -> UnrepresentablePolicy {
    if index == 0 {
        UnrepresentablePolicy::Reject
    } else {
        policy
    }
}

/// Convert one SQLite value. `Err` carries the reason it cannot be represented.
pub(crate) fn value_to_canonical(
    col: &Column,
    v: &SqlValue,
) -> std::result::Result<(Value, Option<Lossy>), String> {
    value_to_canonical_with(col, v, UnrepresentablePolicy::Reject)
}

/// [`value_to_canonical`] under a policy: with `Coerce`, the values it names
/// are changed (and the change returned as the lossy conversion) instead of
/// refused. Everything else converts exactly as under `Reject`.
pub(crate) fn value_to_canonical_with(
    col: &Column,
    v: &SqlValue,
    policy: UnrepresentablePolicy,
) -> std::result::Result<(Value, Option<Lossy>), String> {
    let refused = match value_to_canonical_strict(col, v) {
        Err(reason) if policy == UnrepresentablePolicy::Coerce => reason,
        done => return done,
    };
    use SqlValue as S;
    match (col.kind, v) {
        (Kind::Integer, S::Text(s)) => Ok(match s.trim().parse::<i64>() {
            Ok(i) => (Value::from(i), Some(Lossy::IntegerFromText)),
            Err(_) => (Value::Null, Some(Lossy::IntegerTextNulled)),
        }),
        (Kind::Integer, S::BadText(_)) => Ok((Value::Null, Some(Lossy::IntegerTextNulled))),
        (_, S::BadText(b)) => {
            let text = String::from_utf8_lossy(b).into_owned();
            let (value, _) = value_to_canonical_with(col, &S::Text(text), policy)?;
            Ok((value, Some(Lossy::InvalidUtf8Replaced)))
        }
        (Kind::Text, S::Text(s)) if s.contains('\0') => {
            Ok((Value::String(s.replace('\0', "")), Some(Lossy::NulRemoved)))
        }
        (Kind::Json, S::Text(s)) => {
            // A raw NUL byte in the text, or `\u0000` inside the JSON.
            let (mut value, _) = parse_json_text(&s.replace('\0', ""));
            remove_json_nul(&mut value);
            check_json(&value)?;
            Ok((value, Some(Lossy::JsonNulRemoved)))
        }
        _ => Err(refused),
    }
}

/// Remove NUL characters from every string and key of a JSON value.
fn remove_json_nul(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', ""),
        Value::Array(a) => a.iter_mut().for_each(remove_json_nul),
        Value::Object(o) => {
            let members = std::mem::take(o);
            for (k, mut x) in members {
                remove_json_nul(&mut x);
                o.insert(k.replace('\0', ""), x);
            }
        }
        _ => {}
    }
}

fn value_to_canonical_strict(
    col: &Column,
    v: &SqlValue,
) -> std::result::Result<(Value, Option<Lossy>), String> {
    use SqlValue as S;
    match (col.kind, v) {
        (_, S::Null) => Ok((Value::Null, None)),
        (_, S::Blob(b)) => Err(format!(
            "a {}-byte blob where {} is expected",
            b.len(),
            kind_name(col.kind)
        )),
        (_, S::BadText(_)) => Err("text that is not valid UTF-8".into()),
        (Kind::Text, S::Text(s)) => Ok((Value::String(check_text(s)?.to_owned()), None)),
        (Kind::Text, S::Integer(i)) => Ok((Value::String(i.to_string()), None)),
        (Kind::Text, S::Real(f)) => Ok((Value::String(float_text(*f)), None)),
        (Kind::Integer, S::Integer(i)) => Ok((Value::from(*i), None)),
        (Kind::Integer, S::Real(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => {
            Ok((Value::from(*f as i64), None))
        }
        (Kind::Integer, other) => Err(format!("{} in an integer column", describe(other))),
        (Kind::Float, S::Real(f)) => Ok((float_value(*f), None)),
        (Kind::Float, S::Integer(i)) => Ok((float_value(*i as f64), None)),
        (Kind::Float, other) => Err(format!("{} in a float column", describe(other))),
        (Kind::Bool, S::Integer(0)) => Ok((Value::Bool(false), None)),
        (Kind::Bool, S::Integer(1)) => Ok((Value::Bool(true), None)),
        (Kind::Bool, S::Integer(_)) => Ok((Value::Bool(true), Some(Lossy::BoolFromInteger))),
        (Kind::Bool, S::Real(f)) if *f == 0.0 || *f == 1.0 => Ok((Value::Bool(*f == 1.0), None)),
        (Kind::Bool, S::Text(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "t" | "yes" | "on" => Ok((Value::Bool(true), None)),
            "false" | "0" | "f" | "no" | "off" => Ok((Value::Bool(false), None)),
            _ => Err(format!("{} in a boolean column", describe(v))),
        },
        (Kind::Bool, other) => Err(format!("{} in a boolean column", describe(other))),
        (Kind::Json, S::Text(s)) => {
            check_text(s)?;
            let (value, lossy) = parse_json_text(s);
            check_json(&value)?;
            Ok((value, lossy))
        }
        // Numbers in a JSON column are valid JSON documents themselves.
        (Kind::Json, S::Integer(i)) => Ok((Value::from(*i), None)),
        (Kind::Json, S::Real(f)) if f.is_finite() => Ok((float_value(*f), None)),
        (Kind::Json, S::Real(_)) => Ok((Value::Null, Some(Lossy::NonFiniteJson))),
        (Kind::Timestamp, S::Text(s)) => canonical_timestamp(s)
            .map(|t| (Value::String(t), None))
            .ok_or_else(|| format!("`{}` is not a timestamp", truncate(s, 60))),
        (Kind::Timestamp, other) => Err(format!("{} in a timestamp column", describe(other))),
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Text => "text",
        Kind::Integer => "an integer",
        Kind::Float => "a float",
        Kind::Bool => "a boolean",
        Kind::Json => "JSON text",
        Kind::Timestamp => "a timestamp",
    }
}

fn describe(v: &SqlValue) -> String {
    match v {
        SqlValue::Null => "NULL".into(),
        SqlValue::Integer(i) => format!("the integer {i}"),
        SqlValue::Real(f) => format!("the real {f}"),
        SqlValue::Text(s) => format!("the text `{}`", truncate(s, 60)),
        SqlValue::Blob(b) => format!("a {}-byte blob", b.len()),
        SqlValue::BadText(_) => "non-UTF-8 text".into(),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let t: String = s.chars().take(n).collect();
        format!("{t}…")
    }
}

/// PostgreSQL text cannot hold the NUL character.
fn check_text(s: &str) -> std::result::Result<&str, String> {
    if s.contains('\0') {
        Err("text containing a NUL character (PostgreSQL text cannot hold it)".into())
    } else {
        Ok(s)
    }
}

/// jsonb cannot hold `\u0000` in strings or keys either.
fn check_json(v: &Value) -> std::result::Result<(), String> {
    let bad = match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => return a.iter().try_for_each(check_json),
        Value::Object(o) => {
            if o.keys().any(|k| k.contains('\0')) {
                true
            } else {
                return o.values().try_for_each(check_json);
            }
        }
        _ => false,
    };
    if bad {
        Err("JSON containing \\u0000 (jsonb cannot hold it)".into())
    } else {
        Ok(())
    }
}

fn float_value(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None => Value::String(
            if f.is_nan() {
                "NaN"
            } else if f > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            }
            .into(),
        ),
    }
}

fn float_text(f: f64) -> String {
    match float_value(f) {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s,
        _ => unreachable!(),
    }
}

/// Canonical timestamp text: RFC 3339 in UTC with `Z`, microsecond precision,
/// fraction only when there is one. Text without an offset is taken as UTC, as
/// DoX writes UTC everywhere.
pub(crate) fn canonical_timestamp(s: &str) -> Option<String> {
    let s = s.trim();
    let dt: DateTime<Utc> = if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        d.with_timezone(&Utc)
    } else if let Ok(d) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z") {
        d.with_timezone(&Utc)
    } else {
        let naive = [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
        ]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())?;
        naive.and_utc()
    };
    Some(
        dt.round_subsecs(6)
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
    )
}

/// Turn a row read from Supabase (PostgREST JSON) into the canonical shape, so
/// it compares equal to the canonical form of the SQLite row it came from.
pub fn from_supabase(table: &Table, row: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for col in table.columns {
        let v = row.get(col.supabase).cloned().unwrap_or(Value::Null);
        out.insert(col.supabase.to_owned(), canonical_supabase_value(col, v));
    }
    out
}

/// [`from_supabase`] for a row the caller owns: converts it in place instead
/// of copying every value, for jobs that read every row.
pub(crate) fn from_supabase_owned(
    table: &Table,
    mut row: Map<String, Value>,
) -> Map<String, Value> {
    row.retain(|name, _| table.columns.iter().any(|c| c.supabase == name));
    for col in table.columns {
        match row.get_mut(col.supabase) {
            Some(v) => *v = canonical_supabase_value(col, v.take()),
            None => {
                row.insert(col.supabase.to_owned(), Value::Null);
            }
        }
    }
    row
}

fn canonical_supabase_value(col: &Column, v: Value) -> Value {
    match (col.kind, v) {
        (_, Value::Null) => Value::Null,
        (Kind::Float, Value::Number(n)) => n.as_f64().map_or(Value::Null, float_value),
        (Kind::Integer, Value::Number(n)) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => Value::Number(n),
        },
        (Kind::Timestamp, Value::String(s)) => Value::String(canonical_timestamp(&s).unwrap_or(s)),
        // pgvector columns come back as the text "[1,2,3]".
        (Kind::Json, Value::String(s)) if col.supabase == "embedding" && s.starts_with('[') => {
            serde_json::from_str(&s).unwrap_or(Value::String(s))
        }
        (_, v) => v,
    }
}

/// Canonical SQLite → JSON text, as the writer stores JSON arguments in SQLite.
pub(crate) fn json_text(v: &Value) -> String {
    serde_json::to_string(v).expect("serde_json::Value always serialises")
}

/// Current time as DoX writes it: `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::catalogue::{CIPHER_MEMORY, EVIDENCE, SKILLS_REGISTRY, TAGROW};
    use serde_json::json;

    #[test]
    fn evidence_row_maps_columns_and_parses_json() {
        let row = vec![
            SqlValue::text("e1"),
            SqlValue::text("a1"),
            SqlValue::Null,
            SqlValue::text("p"),
            SqlValue::text("csv"),
            SqlValue::text("{\"page\": 3}"),
            SqlValue::text("[1, NaN]"),
        ];
        let c = to_canonical(&EVIDENCE, &row).unwrap();
        assert_eq!(c.row["coordinates"], json!({"page": 3}));
        assert_eq!(c.row["full_data"], json!([1, null]));
        assert_eq!(c.lossy, vec![("full_data_json", Lossy::NonFiniteJson)]);
        assert!(!c.row.contains_key("full_data_json"));
    }

    #[test]
    fn the_wire_form_holds_the_canonical_row() {
        let rows = [
            vec![
                SqlValue::text("e1"),
                SqlValue::text("a\"1"),
                SqlValue::Null,
                SqlValue::text("p\u{1F600}\n"),
                SqlValue::text("csv"),
                SqlValue::text("{\"page\": 3, \"b\": [1.50, \"x\"]}"),
                SqlValue::text("[1, NaN]"),
            ],
            vec![
                SqlValue::text("e2"),
                SqlValue::text(""),
                SqlValue::Null,
                SqlValue::Null,
                SqlValue::Null,
                SqlValue::text("not json"),
                SqlValue::text("{\"k\": \"\\u0000\"}"),
            ],
        ];
        let fast = to_json_row(&EVIDENCE, &rows[0]).unwrap();
        let slow = to_canonical(&EVIDENCE, &rows[0]).unwrap();
        let parsed: Map<String, Value> = serde_json::from_str(&fast.row).unwrap();
        assert_eq!(parsed, slow.row);
        assert_eq!(fast.lossy, slow.lossy);
        assert_eq!(
            to_json_row(&EVIDENCE, &rows[1]).unwrap_err().to_string(),
            to_canonical(&EVIDENCE, &rows[1]).unwrap_err().to_string()
        );
    }

    #[test]
    fn booleans_and_timestamps() {
        let row = vec![
            SqlValue::text("s1"),
            SqlValue::text("n"),
            SqlValue::text("d"),
            SqlValue::text("{}"),
            SqlValue::text("{}"),
            SqlValue::Integer(0),
            SqlValue::text("2025-09-20T16:00:00Z"),
        ];
        let c = to_canonical(&SKILLS_REGISTRY, &row).unwrap();
        assert_eq!(c.row["enabled"], json!(false));
        assert_eq!(c.row["created_at"], json!("2025-09-20T16:00:00Z"));
    }

    #[test]
    fn timestamp_representations_agree() {
        let a = canonical_timestamp("2025-09-20T15:00:00Z").unwrap();
        assert_eq!(canonical_timestamp("2025-09-20T15:00:00+00:00").unwrap(), a);
        assert_eq!(canonical_timestamp("2025-09-20 15:00:00").unwrap(), a);
        assert_eq!(canonical_timestamp("2025-09-20T17:00:00+02:00").unwrap(), a);
        assert_eq!(canonical_timestamp("2025-09-20 15:00:00+00").unwrap(), a);
        assert_ne!(canonical_timestamp("2025-09-20T15:00:01Z").unwrap(), a);
        assert_eq!(
            canonical_timestamp("2025-09-20T15:00:00.1234567Z").unwrap(),
            "2025-09-20T15:00:00.123457Z"
        );
        assert_eq!(canonical_timestamp("yesterday"), None);
    }

    #[test]
    fn unrepresentable_values_name_table_key_and_column() {
        let row = vec![
            SqlValue::text("m1"),
            SqlValue::text("fact"),
            SqlValue::text("{}"),
            SqlValue::Null,
            SqlValue::text("dev_user"),
            SqlValue::text("not a time"),
        ];
        let e = to_canonical(&CIPHER_MEMORY, &row).unwrap_err().to_string();
        assert!(
            e.contains("cipher_memory row m1") && e.contains("created_at"),
            "{e}"
        );

        let mut row = vec![
            SqlValue::text("t1"),
            SqlValue::text("d"),
            SqlValue::text("x\0y"),
        ];
        row.extend([SqlValue::Null, SqlValue::Null, SqlValue::Null]);
        let e = to_canonical(&TAGROW, &row).unwrap_err().to_string();
        assert!(e.contains("NUL"), "{e}");

        let row = vec![
            SqlValue::text("t1"),
            SqlValue::text("d"),
            SqlValue::text("tag"),
            SqlValue::Blob(vec![1, 2]),
            SqlValue::Null,
            SqlValue::Null,
        ];
        let e = to_canonical(&TAGROW, &row).unwrap_err().to_string();
        assert!(e.contains("blob") && e.contains("score"), "{e}");
    }

    #[test]
    fn floats_round_trip_through_supabase_shape() {
        let col = TAGROW.columns[3];
        let (v, _) = value_to_canonical(&col, &SqlValue::Real(0.82)).unwrap();
        assert_eq!(canonical_supabase_value(&col, json!(0.82)), v);
        let (inf, _) = value_to_canonical(&col, &SqlValue::Real(f64::INFINITY)).unwrap();
        assert_eq!(inf, json!("Infinity"));
        let (two, _) = value_to_canonical(&col, &SqlValue::Integer(2)).unwrap();
        assert_eq!(canonical_supabase_value(&col, json!(2)), two);
    }

    #[test]
    fn supabase_rows_normalise_timestamps_and_vectors() {
        let row = json!({"id": "m", "category": "fact", "content": {"b": 1, "a": 2},
                         "context": null, "user_id": null, "created_at": "2025-09-20T15:00:00+00:00"});
        let c = from_supabase(&CIPHER_MEMORY, row.as_object().unwrap());
        assert_eq!(c["created_at"], json!("2025-09-20T15:00:00Z"));
        let mut extra = row.as_object().unwrap().clone();
        extra.insert("not_a_column".into(), json!(1));
        assert_eq!(from_supabase_owned(&CIPHER_MEMORY, extra), c);
        assert_eq!(
            serde_json::to_string(&c["content"]).unwrap(),
            r#"{"a":2,"b":1}"#
        );
    }
}

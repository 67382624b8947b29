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
//! original, see [`crate::coerced`]): NUL characters are removed from text, bytes
//! that are not UTF-8 become U+FFFD, `\u0000` is removed from JSON strings and
//! keys, and text in an integer column becomes that integer, or NULL when it is
//! not one. A key is never coerced: two keys could become one.

use std::fmt::Write as _;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, SubsecRound, Utc};
use serde_json::{Map, Number, Value};

use crate::catalogue::{Column, Kind, Table};
use crate::error::{Error, Result};

/// A value as SQLite stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    /// Text whose bytes are not UTF-8 (SQLite does not check).
    BadText(Vec<u8>),
}

impl SqlValue {
    pub fn text(s: impl Into<String>) -> Self {
        SqlValue::Text(s.into())
    }

    pub fn opt_text(s: Option<impl Into<String>>) -> Self {
        s.map_or(SqlValue::Null, |s| SqlValue::Text(s.into()))
    }

    pub fn opt_int(i: Option<i64>) -> Self {
        i.map_or(SqlValue::Null, SqlValue::Integer)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            SqlValue::Text(s) => Some(s),
            _ => None,
        }
    }

    /// A readable rendering for keys in reports and errors.
    pub fn display(&self) -> String {
        match self {
            SqlValue::Null => "NULL".into(),
            SqlValue::Integer(i) => i.to_string(),
            SqlValue::Real(f) => f.to_string(),
            SqlValue::Text(s) => s.clone(),
            SqlValue::Blob(b) => format!("x'{}'", hex(b)),
            SqlValue::BadText(b) => String::from_utf8_lossy(b).into_owned(),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A row in the SQLite shape, values in catalogue column order.
pub type SqlRow = Vec<SqlValue>;

/// A value as SQLite stores it, borrowed (straight from a statement's row, no copy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SqlRef<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
    BadText(&'a [u8]),
}

impl SqlRef<'_> {
    pub fn to_value(self) -> SqlValue {
        match self {
            SqlRef::Null => SqlValue::Null,
            SqlRef::Integer(i) => SqlValue::Integer(i),
            SqlRef::Real(f) => SqlValue::Real(f),
            SqlRef::Text(s) => SqlValue::Text(s.to_owned()),
            SqlRef::Blob(b) => SqlValue::Blob(b.to_vec()),
            SqlRef::BadText(b) => SqlValue::BadText(b.to_vec()),
        }
    }
}

impl SqlValue {
    pub fn as_ref(&self) -> SqlRef<'_> {
        match self {
            SqlValue::Null => SqlRef::Null,
            SqlValue::Integer(i) => SqlRef::Integer(*i),
            SqlValue::Real(f) => SqlRef::Real(*f),
            SqlValue::Text(s) => SqlRef::Text(s),
            SqlValue::Blob(b) => SqlRef::Blob(b),
            SqlValue::BadText(b) => SqlRef::BadText(b),
        }
    }
}

/// A lossy but documented conversion that happened to one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lossy {
    NonFiniteJson,
    InvalidJsonAsString,
    BoolFromInteger,
    /// Coerced: NUL characters removed from text.
    NulRemoved,
    /// Coerced: bytes that are not UTF-8 replaced by U+FFFD.
    InvalidUtf8Replaced,
    /// Coerced: `\u0000` removed from the strings and keys of a JSON value.
    JsonNulRemoved,
    /// Coerced: integer text in an integer column stored as that integer.
    IntegerFromText,
    /// Coerced: text that is not an integer, in an integer column, stored as NULL.
    IntegerTextNulled,
}

impl Lossy {
    pub fn as_str(self) -> &'static str {
        match self {
            Lossy::NonFiniteJson => "non_finite_json",
            Lossy::InvalidJsonAsString => "invalid_json_as_string",
            Lossy::BoolFromInteger => "bool_from_integer",
            Lossy::NulRemoved => "nul_removed",
            Lossy::InvalidUtf8Replaced => "invalid_utf8_replaced",
            Lossy::JsonNulRemoved => "json_nul_removed",
            Lossy::IntegerFromText => "integer_from_text",
            Lossy::IntegerTextNulled => "integer_text_nulled",
        }
    }

    /// Whether this conversion is one that only [`UnrepresentablePolicy::Coerce`]
    /// makes (the original value is recorded, and verify lists the row).
    pub fn is_coercion(self) -> bool {
        matches!(
            self,
            Lossy::NulRemoved
                | Lossy::InvalidUtf8Replaced
                | Lossy::JsonNulRemoved
                | Lossy::IntegerFromText
                | Lossy::IntegerTextNulled
        )
    }
}

/// What to do with a value the Supabase schema cannot hold as it is.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum UnrepresentablePolicy {
    /// Refuse the row ([`Error::Unrepresentable`]): it is reported, never sent.
    #[default]
    Reject,
    /// Land the row with a documented, deterministic change (see the module
    /// docs), counted as lossy and recorded with the original value.
    Coerce,
}

impl UnrepresentablePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            UnrepresentablePolicy::Reject => "reject",
            UnrepresentablePolicy::Coerce => "coerce",
        }
    }
}

impl std::fmt::Display for UnrepresentablePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for UnrepresentablePolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reject" => Ok(UnrepresentablePolicy::Reject),
            "coerce" => Ok(UnrepresentablePolicy::Coerce),
            other => Err(Error::invalid(format!(
                "unknown unrepresentable-value policy `{other}`: use `reject` or `coerce`"
            ))),
        }
    }
}

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
pub fn to_canonical_with(
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
pub fn to_json_row(table: &'static Table, row: &[SqlValue]) -> Result<Canonical<String>> {
    let refs: Vec<SqlRef<'_>> = row.iter().map(SqlValue::as_ref).collect();
    to_json_row_ref(table, &refs, UnrepresentablePolicy::Reject)
}

thread_local! {
    /// Where [`to_json_row_ref`] builds a row before copying it out at its exact
    /// size: one allocation per row instead of a growing buffer's several.
    static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// [`to_json_row`] over borrowed values, under a policy.
pub fn to_json_row_ref(
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

/// Append `row` as one JSON object to `out`; returns its lossy conversions.
/// On `Err`, `out` holds part of the object: the caller truncates it.
pub fn to_json_row_into(
    table: &'static Table,
    row: &[SqlRef<'_>],
    out: &mut String,
) -> Result<Vec<(&'static str, Lossy)>> {
    to_json_row_into_with(table, row, out, UnrepresentablePolicy::Reject)
}

/// [`to_json_row_into`] under a policy for values Supabase cannot hold.
pub fn to_json_row_into_with(
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

/// Append `s` as a JSON string, escaped as serde_json escapes it. `Err` (and
/// `out` partly written) when `s` holds a NUL, which PostgreSQL text cannot.
fn push_json_str(out: &mut String, s: &str) -> std::result::Result<(), ()> {
    let b = s.as_bytes();
    out.reserve(s.len() + 2);
    out.push('"');
    let mut done = 0;
    let mut i = 0;
    while i < b.len() {
        i = skip_plain(b, i);
        let Some(&c) = b.get(i) else { break };
        // Every byte that needs an escape is ASCII: the slices stay on char boundaries.
        out.push_str(&s[done..i]);
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            0 => return Err(()),
            _ => {
                write!(out, "\\u{c:04x}").expect("writing to a String cannot fail");
            }
        }
        i += 1;
        done = i;
    }
    out.push_str(&s[done..]);
    out.push('"');
    Ok(())
}

/// The index of the first byte at or after `i` that a JSON string cannot hold
/// as it is (`"`, `\`, a control character), or `b.len()`. Eight bytes at a time.
fn skip_plain(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // Any byte below 0x20, equal to `"` or to `\`.
        let special = (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
            | zero_byte(w ^ (ONES * u64::from(b'"')))
            | zero_byte(w ^ (ONES * u64::from(b'\\')));
        if special != 0 {
            break;
        }
        i += 8;
    }
    while i < b.len() && !matches!(b[i], b'"' | b'\\' | 0..=0x1f) {
        i += 1;
    }
    i
}

/// Whether JSON text can be embedded in a request as it is, in one pass: it is
/// valid JSON as serde_json reads it (RFC 8259), it has no `\u0000` escape
/// and no unpaired surrogate escape (jsonb refuses both), and every number is
/// surely within a double's range (no literal over 300 characters, no exponent
/// beyond ±300). `false` only sends the value
/// down the slow path, which decides exactly.
fn embeddable_json(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    // Open containers: `[` or `{`.
    let mut open: Vec<u8> = Vec::new();
    let ws = |i: &mut usize| {
        while matches!(b.get(*i), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            *i += 1;
        }
    };
    // A key and its colon, at `i`.
    let key = |i: &mut usize| {
        if !json_string(b, i) {
            return false;
        }
        ws(i);
        if b.get(*i) != Some(&b':') {
            return false;
        }
        *i += 1;
        true
    };
    ws(&mut i);
    loop {
        // A value at `i`.
        match b.get(i) {
            Some(&c @ (b'{' | b'[')) => {
                i += 1;
                ws(&mut i);
                let close = if c == b'{' { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    i += 1;
                } else {
                    open.push(c);
                    if c == b'{' && !key(&mut i) {
                        return false;
                    }
                    ws(&mut i);
                    continue;
                }
            }
            Some(b'"') => {
                if !json_string(b, &mut i) {
                    return false;
                }
            }
            Some(b't') if b[i..].starts_with(b"true") => i += 4,
            Some(b'f') if b[i..].starts_with(b"false") => i += 5,
            Some(b'n') if b[i..].starts_with(b"null") => i += 4,
            Some(b'-' | b'0'..=b'9') => {
                if !json_number(b, &mut i) {
                    return false;
                }
            }
            _ => return false,
        }
        // After a value: close containers until a comma asks for the next one.
        loop {
            ws(&mut i);
            let Some(&c) = open.last() else {
                return i == b.len();
            };
            match (c, b.get(i)) {
                (_, Some(b',')) => {
                    i += 1;
                    ws(&mut i);
                    if c == b'{' && !key(&mut i) {
                        return false;
                    }
                    ws(&mut i);
                    break;
                }
                (b'[', Some(b']')) | (b'{', Some(b'}')) => {
                    i += 1;
                    open.pop();
                }
                _ => return false,
            }
        }
    }
}

/// A JSON string at `b[*i]` (its opening quote); moves `i` past it.
fn json_string(b: &[u8], i: &mut usize) -> bool {
    if b.get(*i) != Some(&b'"') {
        return false;
    }
    let mut j = *i + 1;
    loop {
        j = skip_plain(b, j);
        match b.get(j) {
            Some(b'"') => {
                *i = j + 1;
                return true;
            }
            Some(b'\\') => match b.get(j + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => j += 2,
                Some(b'u') => match hex4(b, j + 2) {
                    Some(0) | None => return false,
                    // A surrogate pair, as Python's json.dumps escapes emoji.
                    Some(0xd800..=0xdbff) => {
                        if b.get(j + 6..j + 8) != Some(b"\\u")
                            || !matches!(hex4(b, j + 8), Some(0xdc00..=0xdfff))
                        {
                            return false;
                        }
                        j += 12;
                    }
                    // A lone low surrogate: jsonb refuses it.
                    Some(0xdc00..=0xdfff) => return false,
                    Some(_) => j += 6,
                },
                _ => return false,
            },
            // A control character, or the end of the text.
            _ => return false,
        }
    }
}

/// The four hex digits at `b[at..]`, as a number.
fn hex4(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)?
        .iter()
        .try_fold(0u32, |n, &d| Some(n * 16 + char::from(d).to_digit(16)?))
}

/// A JSON number at `b[*i]`; moves `i` past it. `false` also when it may not
/// fit a double (see [`embeddable_json`]).
fn json_number(b: &[u8], i: &mut usize) -> bool {
    let start = *i;
    let mut j = *i;
    let digits = |j: &mut usize| {
        let from = *j;
        while b.get(*j).is_some_and(u8::is_ascii_digit) {
            *j += 1;
        }
        *j > from
    };
    if b.get(j) == Some(&b'-') {
        j += 1;
    }
    match b.get(j) {
        Some(b'0') => j += 1,
        Some(b'1'..=b'9') => {
            digits(&mut j);
        }
        _ => return false,
    }
    if b.get(j) == Some(&b'.') {
        j += 1;
        if !digits(&mut j) {
            return false;
        }
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let from = j;
        if !digits(&mut j) {
            return false;
        }
        let exp = b[from..j].iter().try_fold(0u32, |n, d| {
            n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        });
        if exp.is_none_or(|e| e > 300) {
            return false;
        }
    }
    *i = j;
    j - start <= 300
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
pub fn value_to_canonical(
    col: &Column,
    v: &SqlValue,
) -> std::result::Result<(Value, Option<Lossy>), String> {
    value_to_canonical_with(col, v, UnrepresentablePolicy::Reject)
}

/// [`value_to_canonical`] under a policy: with `Coerce`, the values it names
/// are changed (and the change returned as the lossy conversion) instead of
/// refused. Everything else converts exactly as under `Reject`.
pub fn value_to_canonical_with(
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

/// Parse JSON text the way DoX wrote it. Python's encoder may emit `NaN`,
/// `Infinity` and `-Infinity`; those become `null` (lossy). Text that is not
/// JSON is kept as a JSON string (lossy).
pub fn parse_json_text(s: &str) -> (Value, Option<Lossy>) {
    if let Ok(v) = serde_json::from_str::<Value>(s) {
        return (v, None);
    }
    if let Some(fixed) = replace_non_finite(s) {
        if let Ok(v) = serde_json::from_str::<Value>(&fixed) {
            return (v, Some(Lossy::NonFiniteJson));
        }
    }
    (
        Value::String(s.to_owned()),
        Some(Lossy::InvalidJsonAsString),
    )
}

/// Tracks, byte by byte, whether a scan of JSON text is inside a string.
#[derive(Default)]
struct Strings {
    inside: bool,
    escaped: bool,
}

impl Strings {
    /// Feed the next byte; true when it belongs to a string (its quotes included).
    fn inside(&mut self, c: u8) -> bool {
        if self.inside {
            match (self.escaped, c) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.inside = false,
                _ => {}
            }
            true
        } else if c == b'"' {
            self.inside = true;
            true
        } else {
            false
        }
    }
}

/// Replace bare `NaN`, `Infinity`, `-Infinity` tokens (outside strings) with `null`.
/// Returns `None` when there is none.
fn replace_non_finite(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut strings = Strings::default();
    let mut changed = false;
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if strings.inside(b[i]) {
            i += 1;
            continue;
        }
        let token = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|t| b[i..].starts_with(t));
        if let Some(t) = token {
            out.push_str(&s[copied..i]);
            out.push_str("null");
            i += t.len();
            copied = i;
            changed = true;
            continue;
        }
        i += 1;
    }
    if !changed {
        return None;
    }
    out.push_str(&s[copied..]);
    Some(out)
}

/// Canonical timestamp text: RFC 3339 in UTC with `Z`, microsecond precision,
/// fraction only when there is one. Text without an offset is taken as UTC, as
/// DoX writes UTC everywhere.
pub fn canonical_timestamp(s: &str) -> Option<String> {
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
pub fn from_supabase_owned(table: &Table, mut row: Map<String, Value>) -> Map<String, Value> {
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
pub fn json_text(v: &Value) -> String {
    serde_json::to_string(v).expect("serde_json::Value always serialises")
}

/// Current time as DoX writes it: `YYYY-MM-DDTHH:MM:SSZ`.
pub fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

// ---- The inverse: canonical (Supabase) values back to DoX's SQLite form ----

/// The inverse of the normaliser, for the reverse mirror (Supabase primary,
/// SQLite the rollback copy): the value of `col` in a canonical row (read from
/// Supabase and passed through [`from_supabase`]) as DoX writes it to SQLite:
/// JSON as text (compact), booleans as 0/1, timestamps as RFC 3339 UTC with
/// `Z` (`YYYY-MM-DDTHH:MM:SSZ` for whole seconds, as DoX writes them), the
/// strings `NaN` / `Infinity` / `-Infinity` of a float column as those floats.
///
/// `existing` is what the SQLite file holds now for the column. When it stands
/// for the same canonical value, it is kept byte for byte: the key order and
/// spacing of the JSON text DoX wrote, or its `Z` rather than `+00:00`, are
/// information jsonb and timestamptz do not keep, and the app must read back
/// what it wrote.
pub fn to_dox(col: &Column, v: &Value, existing: Option<&SqlValue>) -> Result<SqlValue> {
    if let Some(old) = existing {
        if let Ok((canon, _)) = value_to_canonical(col, old) {
            if same_canonical(col, &canon, v) {
                return Ok(old.clone());
            }
        }
    }
    let bad = |what: &str| {
        Error::invalid(format!(
            "column {} holds {v} in Supabase, which is not {what}",
            col.supabase
        ))
    };
    Ok(match (col.kind, v) {
        (_, Value::Null) => SqlValue::Null,
        (Kind::Json, v) => SqlValue::Text(json_text(v)),
        (Kind::Bool, Value::Bool(b)) => SqlValue::Integer(i64::from(*b)),
        (Kind::Bool, _) => return Err(bad("a boolean")),
        (Kind::Integer, Value::Number(n)) => {
            SqlValue::Integer(n.as_i64().ok_or_else(|| bad("a 64-bit integer"))?)
        }
        (Kind::Integer, _) => return Err(bad("an integer")),
        (Kind::Float, Value::Number(n)) => {
            SqlValue::Real(n.as_f64().ok_or_else(|| bad("a float"))?)
        }
        (Kind::Float, Value::String(s)) => SqlValue::Real(match s.as_str() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            _ => return Err(bad("a float")),
        }),
        (Kind::Float, _) => return Err(bad("a float")),
        (Kind::Timestamp, Value::String(s)) => {
            SqlValue::Text(canonical_timestamp(s).unwrap_or_else(|| s.clone()))
        }
        (Kind::Text, Value::String(s)) => SqlValue::Text(s.clone()),
        (Kind::Text | Kind::Timestamp, other) => SqlValue::Text(json_text(other)),
    })
}

/// Two canonical values of `col` are the same value (numbers by value, so
/// `1.0` read back from jsonb equals the `1.0` DoX wrote whatever the digits).
fn same_canonical(col: &Column, a: &Value, b: &Value) -> bool {
    match (col.kind, a, b) {
        (Kind::Timestamp, Value::String(x), Value::String(y)) => {
            canonical_timestamp(x).unwrap_or_else(|| x.clone())
                == canonical_timestamp(y).unwrap_or_else(|| y.clone())
        }
        _ => json_equal(a, b),
    }
}

/// JSON equality with numbers compared by value (serde_json's
/// `arbitrary_precision` would compare their digits).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64() || x.to_string() == y.to_string(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| json_equal(p, q)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_dox_inverts_the_normaliser_and_keeps_what_dox_wrote() {
        use crate::catalogue::{ARTIFACT, CIPHER_MEMORY, SKILLS_REGISTRY};
        let extras = ARTIFACT.column("extra_json").unwrap().1;
        let created = CIPHER_MEMORY.column("created_at").unwrap().1;
        let enabled = SKILLS_REGISTRY.column("enabled").unwrap().1;
        // jsonb gives keys back in its own order: what DoX wrote is kept when equal.
        let dox = SqlValue::text(r#"{"zeta": 1.0, "a": [1, 2]}"#);
        let from_pg: Value = serde_json::from_str(r#"{"a": [1, 2], "zeta": 1.0}"#).unwrap();
        assert_eq!(to_dox(extras, &from_pg, Some(&dox)).unwrap(), dox);
        // A changed value is written anew, as compact JSON text.
        let changed: Value = serde_json::from_str(r#"{"a": [1, 3]}"#).unwrap();
        assert_eq!(
            to_dox(extras, &changed, Some(&dox)).unwrap(),
            SqlValue::text(r#"{"a":[1,3]}"#)
        );
        // Timestamps: PostgREST's +00:00 becomes DoX's Z; an equal one is kept as it was.
        let pg = Value::String("2025-01-02T03:04:05+00:00".into());
        assert_eq!(
            to_dox(created, &pg, None).unwrap(),
            SqlValue::text("2025-01-02T03:04:05Z")
        );
        let odd = SqlValue::text("2025-01-02 03:04:05");
        assert_eq!(to_dox(created, &pg, Some(&odd)).unwrap(), odd);
        // Booleans back to 0/1; null stays null.
        assert_eq!(
            to_dox(enabled, &Value::Bool(true), None).unwrap(),
            SqlValue::Integer(1)
        );
        assert_eq!(
            to_dox(enabled, &Value::Bool(false), Some(&SqlValue::Integer(1))).unwrap(),
            SqlValue::Integer(0)
        );
        assert_eq!(to_dox(extras, &Value::Null, None).unwrap(), SqlValue::Null);
        assert!(to_dox(enabled, &Value::String("yes".into()), None).is_err());
    }
    use crate::catalogue::{CIPHER_MEMORY, EVIDENCE, SKILLS_REGISTRY, TAGROW};
    use serde_json::json;

    /// What [`embeddable_json`] decides in one pass, decided the slow way: the
    /// reference it must agree with. serde_json refuses unpaired surrogates
    /// when it decodes strings into a `Value`.
    fn old_embeddable(s: &str) -> bool {
        !s.contains('\0')
            && !s.contains("\\u0000")
            && numbers_fit_f64(s)
            && serde_json::from_str::<&serde_json::value::RawValue>(s).is_ok()
            && (!s.to_ascii_lowercase().contains("\\ud")
                || serde_json::from_str::<Value>(s).is_ok())
    }

    /// Whether every number in JSON text (outside strings) is surely within a
    /// double's range, as the canonical form needs: no exponent beyond ±300 and no
    /// literal of more than 300 characters. Conservative: `false` only sends the
    /// value down the slow path, which decides exactly.
    fn numbers_fit_f64(s: &str) -> bool {
        let b = s.as_bytes();
        let mut strings = Strings::default();
        let mut i = 0;
        while i < b.len() {
            if strings.inside(b[i]) {
                i += 1;
                continue;
            }
            let c = b[i];
            if c == b'-' || c.is_ascii_digit() {
                let start = i;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                let token = &s[start..i];
                if token.len() > 300 {
                    return false;
                }
                if let Some(pos) = token.find(['e', 'E']) {
                    match token[pos + 1..].parse::<i32>() {
                        Ok(exp) if exp.abs() <= 300 => {}
                        _ => return false,
                    }
                }
                continue;
            }
            i += 1;
        }
        true
    }

    fn json_corpus() -> Vec<String> {
        let mut v: Vec<String> = [
            "",
            " ",
            "null",
            "true",
            "false",
            "nul",
            "truex",
            "0",
            "-0",
            "01",
            "-",
            "1.",
            ".5",
            "1.5",
            "1e5",
            "1E+5",
            "1e-300",
            "1e301",
            "1e-301",
            "1e",
            "1e+",
            "2.5e0300",
            "1e99999999999",
            "-1.25E-7",
            "123456789012345678901234567890",
            "[]",
            "{}",
            "[ ]",
            "{ }",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{\"a\":}",
            "{1:2}",
            "{\"a\":1",
            "[[[]]]",
            "[[[]]",
            "]",
            "}",
            "\"abc",
            "\"a\\\"b\"",
            "\"\\u0041\"",
            "\"\\u0000\"",
            "\"\\ud83d\\ude00\"",
            "\"\\uD7FF\"",
            "\"\\u00e9\"",
            "\"\\u12\"",
            "\"\\x\"",
            "\"\\/\\b\\f\\n\\r\\t\"",
            "\"tab\there\"",
            "\"nul\u{0}\"",
            "NaN",
            "[NaN]",
            "Infinity",
            "{\"k\": [1, 2.5, {\"x\": null}], \"é\": \"日本\"}",
            " \n\t\r[1]\r\n ",
            "[1]x",
            "[1] [2]",
            "\u{feff}[1]",
            "\"\u{7f}\"",
            "{\"a\":{\"b\":[true,false,null,\"s\",-1.5e-3]}}",
            "[\"\\\\\"]",
            "[\"\\\\\\\"]",
            "\"\\ud83d\"",
            "\"\\ud83dx\"",
            "\"\\ud83d\\u0041\"",
            "\"\\ude00\\ud83d\"",
            "\"\\uDBFF\\uDFFF\"",
            "\"\\ud83d\\ude0\"",
            "\"\\ud83d\\\\ude00\"",
            "[\"\\uD83D\\uDE00\", \"\\u00e9\\ud800\\udc00x\"]",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push("[".repeat(300) + &"]".repeat(300));
        v.push(format!("[{}]", "9".repeat(301)));
        v.push(format!("[{}]", "9".repeat(299)));
        v
    }

    #[test]
    fn the_one_pass_json_test_agrees_with_the_reference() {
        // Python's escaped emoji go the fast way; what jsonb refuses does not.
        assert!(embeddable_json(
            r#"{"e": "\ud83d\ude00", "n": [1.5e3, -0, null]}"#
        ));
        for refused in [
            r#""\ude00""#,
            r#""\ud83d""#,
            r#""\u0000""#,
            "[1e400]",
            "[NaN]",
        ] {
            assert!(!embeddable_json(refused), "{refused}");
        }
        for s in json_corpus() {
            assert_eq!(embeddable_json(&s), old_embeddable(&s), "{s:?}");
        }
        // Every prefix, and every single-byte change, of well-formed documents.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = b"{}[]:,\"\\ -+.0123456789eEtrufalsn\tuxdDcC8";
        for base in json_corpus()
            .iter()
            .filter(|s| serde_json::from_str::<Value>(s).is_ok())
        {
            for cut in 0..=base.len() {
                if let Some(p) = base.get(..cut) {
                    assert_eq!(embeddable_json(p), old_embeddable(p), "{p:?}");
                }
            }
            for _ in 0..200 {
                let mut bytes = base.clone().into_bytes();
                if bytes.is_empty() {
                    break;
                }
                let at = rng.gen_range(0..bytes.len());
                bytes[at] = alphabet[rng.gen_range(0..alphabet.len())];
                if let Ok(m) = String::from_utf8(bytes) {
                    assert_eq!(embeddable_json(&m), old_embeddable(&m), "{m:?}");
                }
            }
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = (1u8..0x80).map(|c| format!("a{}b", c as char)).collect();
        cases.extend(
            [
                "",
                "plain",
                "quote\" and \\ back",
                "日本語 ü 🎉",
                "\u{7f}\u{80}\u{2028}",
                "12345678\"1234567\n",
            ]
            .map(String::from),
        );
        cases.push("x".repeat(1000) + "\u{1}" + &"y".repeat(17));
        for s in cases {
            let mut out = String::new();
            push_json_str(&mut out, &s).unwrap();
            assert_eq!(out, serde_json::to_string(&s).unwrap(), "{s:?}");
        }
        assert!(push_json_str(&mut String::new(), "before\0after").is_err());
    }

    #[test]
    fn python_non_finite_tokens_become_null_and_are_counted() {
        let (v, l) = parse_json_text(
            r#"[{"Spend": 80.0, "Revenue": NaN, "x": -Infinity, "s": "NaN Infinity"}]"#,
        );
        assert_eq!(
            v,
            json!([{"Spend": 80.0, "Revenue": null, "x": null, "s": "NaN Infinity"}])
        );
        assert_eq!(l, Some(Lossy::NonFiniteJson));
    }

    #[test]
    fn tokens_inside_strings_with_escapes_are_left_alone() {
        let s = r#"{"a": "say \"NaN\"", "b": Infinity}"#;
        let (v, l) = parse_json_text(s);
        assert_eq!(v, json!({"a": "say \"NaN\"", "b": null}));
        assert_eq!(l, Some(Lossy::NonFiniteJson));
    }

    #[test]
    fn invalid_json_is_kept_as_a_string() {
        let (v, l) = parse_json_text("not json {");
        assert_eq!(v, json!("not json {"));
        assert_eq!(l, Some(Lossy::InvalidJsonAsString));
        let (v, l) = parse_json_text("{\"a\": 1}");
        assert_eq!(v, json!({"a": 1}));
        assert_eq!(l, None);
    }

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
    fn numbers_beyond_a_double_take_the_slow_path() {
        assert!(numbers_fit_f64(
            r#"{"a": [1, -2.5e-7, 3E+10], "s": "1e999"}"#
        ));
        assert!(!numbers_fit_f64(r#"{"a": 1e400}"#));
        assert!(!numbers_fit_f64(&format!("[{}]", "9".repeat(400))));
        let row = vec![SqlValue::text("d"), SqlValue::text("{\"x\": 1e400}")];
        let fast: Value = serde_json::from_str(
            &to_json_row(&crate::catalogue::DOCUMENT_STRUCTURE, &row)
                .unwrap()
                .row,
        )
        .unwrap();
        let slow = to_canonical(&crate::catalogue::DOCUMENT_STRUCTURE, &row).unwrap();
        assert_eq!(fast, Value::Object(slow.row));
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

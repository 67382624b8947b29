//! How two canonical rows are compared: a row digest for the fast path, the
//! tolerant value comparison that decides, and the short, redacted samples a
//! report shows for a difference.
//!
//! Rules (docs/verify.md, "Verification"):
//! * rows are compared in their canonical form ([`crate::normalise`]), so 0/1
//!   against booleans, `Z` against `+00:00` and JSON key order never differ;
//! * numbers compare by exact decimal value, never by their text: jsonb keeps
//!   numbers as exact decimals but prints them in its own notation, so `1e-300`,
//!   `1E+2`, `100`, `1.0` and `-0.0` read back as `0.000…1`, `100`, `100`, `1.0`
//!   and `0.0`. Inside JSON that is the whole rule: a 17th significant digit or an
//!   integer beyond 2^53 that differs is a difference;
//! * in a float column (double precision on both sides) numbers within a
//!   relative [`FLOAT_RELATIVE_TOLERANCE`] are also equal;
//! * everything else (text, booleans, timestamps, nulls, JSON structure) must
//!   be identical.

use std::borrow::Cow;
use std::hash::{BuildHasher, Hash, Hasher};

use serde_json::{Map, Number, Value};

use crate::catalogue::{Kind, Table};

/// Two values of a float column closer than this, relative to the larger, are
/// equal. Double precision holds about 16 significant digits; 1e-12 leaves room
/// for the decimal round trips of a `double precision` column while still
/// catching any change in the 12 leading digits. JSON numbers are exact decimals
/// on both sides and get no tolerance.
pub(crate) const FLOAT_RELATIVE_TOLERANCE: f64 = 1e-12;

/// Longest sample value a report shows, in characters.
const SAMPLE_CHARS: usize = 120;

/// A digest of one canonical row. Rows with equal digests are equal (up to a
/// 2^-64 collision, with keys chosen at random per run); rows with different
/// digests may still be equal under the tolerance, which [`same`] decides.
pub(crate) fn row_digest(state: &impl BuildHasher, row: &Map<String, Value>) -> u64 {
    let mut h = state.build_hasher();
    // serde_json maps are sorted, and both sides hold every catalogue column.
    for (k, v) in row {
        k.hash(&mut h);
        hash_value(v, &mut h);
    }
    h.finish()
}

fn hash_value(v: &Value, h: &mut impl Hasher) {
    match v {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, *b).hash(h),
        // Numbers of equal value hash alike, whatever their notation.
        Value::Number(n) => match decimal(n) {
            Some((negative, digits, exp)) => (2u8, negative, &*digits, exp).hash(h),
            None => (3u8, n.as_str()).hash(h),
        },
        Value::String(s) => (4u8, s).hash(h),
        Value::Array(a) => {
            (5u8, a.len()).hash(h);
            a.iter().for_each(|x| hash_value(x, h));
        }
        Value::Object(o) => {
            (6u8, o.len()).hash(h);
            for (k, x) in o {
                k.hash(h);
                hash_value(x, h);
            }
        }
    }
}

/// A JSON number as an exact decimal `(negative, significant digits, exponent)`:
/// the value is `±digits × 10^exponent`, with no leading or trailing zero in
/// `digits`. Zero (`0`, `-0.0`, `0e5`) is `(false, "", 0)`. `None` for text that is
/// not a JSON number, or an exponent beyond ±2^62. Borrows from the number's
/// text unless digits on both sides of the point must be joined: every row's
/// numbers are hashed with it.
fn decimal(n: &Number) -> Option<(bool, Cow<'_, str>, i64)> {
    // serde_json keeps a number's text as it was written (`arbitrary_precision`).
    let text = n.as_str();
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !(int.bytes().chain(frac.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    if exp.unsigned_abs() > 1 << 62 {
        return None;
    }
    let int = int.trim_start_matches('0');
    let mut exp = exp - frac.len() as i64;
    let digits: Cow<'_, str> = if int.is_empty() {
        Cow::Borrowed(frac.trim_start_matches('0'))
    } else if frac.is_empty() {
        Cow::Borrowed(int)
    } else {
        Cow::Owned(format!("{int}{frac}"))
    };
    let keep = digits.trim_end_matches('0').len();
    if keep == 0 {
        return Some((false, Cow::Borrowed(""), 0));
    }
    exp += (digits.len() - keep) as i64;
    let digits = match digits {
        Cow::Borrowed(d) => Cow::Borrowed(&d[..keep]),
        Cow::Owned(mut d) => {
            d.truncate(keep);
            Cow::Owned(d)
        }
    };
    Some((negative, digits, exp))
}

/// Whether two canonical values are equal under the comparison rules. Numbers
/// compare by exact decimal value, at any depth.
pub(crate) fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => numbers_equal(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Whether two values of a column are equal: [`same`], plus the float tolerance
/// in a float column.
pub(crate) fn same_in(kind: Kind, a: &Value, b: &Value) -> bool {
    if same(a, b) {
        return true;
    }
    match (kind, a, b) {
        (Kind::Float, Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(a), Some(b)) => (a - b).abs() <= FLOAT_RELATIVE_TOLERANCE * a.abs().max(b.abs()),
            _ => false,
        },
        _ => false,
    }
}

fn numbers_equal(x: &Number, y: &Number) -> bool {
    match (decimal(x), decimal(y)) {
        (Some(a), Some(b)) => a == b,
        _ => x.as_str() == y.as_str(),
    }
}

/// One column that differs, as a report shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ColumnDiff {
    /// Supabase column name.
    pub column: &'static str,
    /// Inside a JSON column: where the first difference is (`$.a.b[2]`).
    pub path: Option<String>,
    /// Short, redacted renderings; `(absent)` when the path exists on one side only.
    pub source: String,
    pub target: String,
}

/// The columns of `table` in which two canonical rows differ.
pub(crate) fn diff_row(
    table: &'static Table,
    source: &Map<String, Value>,
    target: &Map<String, Value>,
) -> Vec<ColumnDiff> {
    let null = Value::Null;
    let mut out = Vec::new();
    for col in table.columns {
        let a = source.get(col.supabase).unwrap_or(&null);
        let b = target.get(col.supabase).unwrap_or(&null);
        if same_in(col.kind, a, b) {
            continue;
        }
        let secret = sensitive_name(col.supabase);
        let (path, a, b) = if col.kind == Kind::Json {
            let (p, x, y) = first_difference(a, b, "$".to_owned());
            let secret = secret || p.split(['.', '[']).any(sensitive_name);
            (
                Some(p).filter(|p| p != "$"),
                sample(x, secret),
                sample(y, secret),
            )
        } else {
            (None, sample(Some(a), secret), sample(Some(b), secret))
        };
        out.push(ColumnDiff {
            column: col.supabase,
            path,
            source: a,
            target: b,
        });
    }
    out
}

/// Descend into two JSON values while they have the same shape, to the first
/// place where they differ. `None` is a member or element absent on that side.
fn first_difference<'a>(
    a: &'a Value,
    b: &'a Value,
    path: String,
) -> (String, Option<&'a Value>, Option<&'a Value>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) if same(v, w) => {}
                    (Some(v), Some(w)) => return first_difference(v, w, p),
                    (v, w) => return (p, v, w),
                }
            }
            (path, Some(a), Some(b))
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                if !same(v, w) {
                    return first_difference(v, w, format!("{path}[{i}]"));
                }
            }
            let i = x.len().min(y.len());
            (format!("{path}[{i}]"), x.get(i), y.get(i))
        }
        _ => (path, Some(a), Some(b)),
    }
}

/// Names whose values a report never shows.
pub(crate) fn sensitive_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace(['-', ' '], "_");
    [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "authorization",
        "credential",
        "private_key",
        "cookie",
        "session",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Text that looks like a credential: a JWT or a Supabase secret key.
pub(crate) fn looks_secret(s: &str) -> bool {
    let s = s.trim();
    let jwt = s.starts_with("eyJ")
        && s.split('.').count() == 3
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '='));
    jwt || s.contains("sb_secret_")
}

/// A short rendering of a value for a report: JSON text, truncated, with
/// credentials and values under sensitive names replaced by `[redacted]`.
pub(crate) fn sample(v: Option<&Value>, secret: bool) -> String {
    let Some(v) = v else {
        return "(absent)".into();
    };
    if secret && !v.is_null() {
        return "[redacted]".into();
    }
    let text = match v {
        // Long texts are cut before they are copied.
        Value::String(s) if looks_secret(s) => return "[redacted]".into(),
        Value::String(s) => serde_json::to_string(&truncate(s, SAMPLE_CHARS)).unwrap_or_default(),
        Value::Array(_) | Value::Object(_) => redact(v).to_string(),
        other => other.to_string(),
    };
    truncate(&text, SAMPLE_CHARS)
}

fn redact(v: &Value) -> Value {
    match v {
        Value::String(s) if looks_secret(s) => Value::String("[redacted]".into()),
        Value::String(s) => Value::String(truncate(s, SAMPLE_CHARS)),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    let x = if sensitive_name(k) && !x.is_null() {
                        Value::String("[redacted]".into())
                    } else {
                        redact(x)
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// At most `n` characters, with `…` when cut.
pub(crate) fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{ARTIFACT, TAGROW};
    use serde_json::json;
    use std::collections::hash_map::RandomState;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn representations_of_one_value_are_equal() {
        assert!(same(&json!(1.0), &json!(1)));
        assert!(same(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": 2, "x": 3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":1}"#).unwrap();
        assert!(same(&a, &b));
        let s = RandomState::new();
        assert_eq!(
            row_digest(&s, &row(json!({"k": a, "n": 2}))),
            row_digest(&s, &row(json!({"k": b, "n": 2.0})))
        );
    }

    #[test]
    fn float_tolerance_is_relative_and_only_in_float_columns() {
        let f = Kind::Float;
        assert!(same_in(f, &json!(0.82), &json!(0.82 * (1.0 + 1e-14))));
        assert!(!same_in(f, &json!(0.82), &json!(0.82 * (1.0 + 1e-10))));
        assert!(same_in(f, &json!(1e300), &json!(1e300 * (1.0 + 1e-15))));
        // Inside JSON, numbers are exact decimals on both sides: no tolerance.
        assert!(!same_in(
            Kind::Json,
            &json!(0.82),
            &json!(0.82 * (1.0 + 1e-14))
        ));
        assert!(!same(&json!({"x": 1.5}), &json!({"x": 1.5000001})));
        assert!(!same(
            &json!(9007199254740993_i64),
            &json!(9007199254740992_i64)
        ));
        assert!(!same(&json!(0), &json!(1e-300)));
        assert!(same(&json!("NaN"), &json!("NaN")));
        assert!(!same(&json!(true), &json!(1)));
        assert!(!same(&json!(null), &json!({})));
    }

    fn num(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// What jsonb prints for what SQLite held: the same values in other notations.
    #[test]
    fn numbers_in_jsonb_notation_are_equal_by_exact_value() {
        let tiny = format!("0.{}1", "0".repeat(299));
        let max = format!("17976931348623157{}", "0".repeat(292));
        let huge = format!("1{}", "0".repeat(400));
        for (a, b) in [
            ("1e-300", tiny.as_str()),
            ("1.7976931348623157e+308", max.as_str()),
            ("12345678901234567890", "12345678901234567890"),
            (
                "123456789012345678901234567890",
                "1.2345678901234567890123456789E+29",
            ),
            ("-0.0", "0.0"),
            ("-0", "0"),
            ("1.0", "1"),
            ("1E+2", "100"),
            ("0.50", "5e-1"),
            ("1e400", huge.as_str()),
        ] {
            let (x, y) = (num(a), num(b));
            assert!(same(&x, &y), "{a} = {b}");
            let s = RandomState::new();
            assert_eq!(
                row_digest(&s, &row(json!({"n": x}))),
                row_digest(&s, &row(json!({"n": y}))),
                "{a} and {b} hash alike"
            );
        }
    }

    #[test]
    fn numbers_that_really_differ_are_different() {
        for (a, b) in [
            // The 17th significant digit.
            ("0.12345678901234567", "0.12345678901234568"),
            ("1.7976931348623157e+308", "1.7976931348623156e+308"),
            // Integers beyond 2^53 (and beyond u64).
            ("9007199254740993", "9007199254740992"),
            ("12345678901234567890", "12345678901234567891"),
            (
                "123456789012345678901234567890",
                "123456789012345678901234567891",
            ),
            ("1e-300", "1e-301"),
            ("-1", "1"),
            ("0.1", "0.10000000000000001"),
        ] {
            assert!(!same(&num(a), &num(b)), "{a} <> {b}");
            assert!(!same_in(Kind::Json, &num(a), &num(b)), "{a} <> {b}");
        }
    }

    #[test]
    fn diffs_name_the_column_and_the_json_path() {
        let s = row(
            json!({"id": "a", "filename": "x.pdf", "filepath": "/p", "filetype": "pdf",
            "report_week": null, "status": null, "source_url": null,
            "extras": {"pages": 3, "meta": {"lang": "en", "api_key": "k1"}}}),
        );
        let mut t = s.clone();
        t["extras"]["meta"]["lang"] = json!("fr");
        let d = diff_row(&ARTIFACT, &s, &t);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].column, "extras");
        assert_eq!(d[0].path.as_deref(), Some("$.meta.lang"));
        assert_eq!(
            (d[0].source.as_str(), d[0].target.as_str()),
            ("\"en\"", "\"fr\"")
        );

        let mut t = s.clone();
        t["extras"]["meta"]["api_key"] = json!("k2");
        t["filename"] = json!("y.pdf");
        let d = diff_row(&ARTIFACT, &s, &t);
        assert_eq!(d[0].column, "filename");
        assert_eq!(d[1].path.as_deref(), Some("$.meta.api_key"));
        assert_eq!(d[1].source, "[redacted]");

        let mut t = s.clone();
        t["extras"].as_object_mut().unwrap().remove("pages");
        let d = diff_row(&ARTIFACT, &s, &t);
        assert_eq!(d[0].path.as_deref(), Some("$.pages"));
        assert_eq!(
            (d[0].source.as_str(), d[0].target.as_str()),
            ("3", "(absent)")
        );
    }

    #[test]
    fn samples_are_short_and_never_show_credentials() {
        let long = "é".repeat(500);
        let s = sample(Some(&json!(long)), false);
        assert!(
            s.chars().count() <= SAMPLE_CHARS + 1 && s.ends_with('…'),
            "{s}"
        );
        assert_eq!(
            sample(Some(&json!("eyJhbGc.eyJyb2xl.c2ln")), false),
            "[redacted]"
        );
        assert_eq!(sample(Some(&json!("x sb_secret_abc")), false), "[redacted]");
        let o = sample(Some(&json!({"password": "hunter2", "user": "bob"})), false);
        assert!(!o.contains("hunter2") && o.contains("bob"), "{o}");
        assert_eq!(sample(Some(&json!("v")), true), "[redacted]");
        let t = row(
            json!({"id": "t", "document_id": "d", "tag": "x", "score": 0.5,
                           "source_ptr": null, "hrm_steps": 1}),
        );
        let mut u = t.clone();
        u["score"] = json!(0.6);
        assert_eq!(diff_row(&TAGROW, &t, &u)[0].source, "0.5");
    }
}

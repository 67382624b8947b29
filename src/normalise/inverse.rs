//! The inverse of the normaliser, for the reverse mirror: canonical (Supabase)
//! values back to DoX's SQLite form (`to_dox`).

use serde_json::Value;

use crate::catalogue::{Column, Kind};
use crate::error::{Error, Result};

use super::values::SqlValue;
use super::{canonical_timestamp, json_text, value_to_canonical};

/// The inverse of the normaliser, for the reverse mirror (Supabase primary,
/// SQLite the rollback copy): the value of `col` in a canonical row (read from
/// Supabase and passed through [`from_supabase`](super::from_supabase)) as DoX
/// writes it to SQLite: JSON as text (compact), booleans as 0/1, timestamps as
/// RFC 3339 UTC with `Z` (`YYYY-MM-DDTHH:MM:SSZ` for whole seconds, as DoX
/// writes them), the strings `NaN` / `Infinity` / `-Infinity` of a float column
/// as those floats.
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
}

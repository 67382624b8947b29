//! The SQLite shape of a value (`SqlValue`, `SqlRef`, `SqlRow`), the lossy
//! conversions the normaliser counts (`Lossy`), and what it does with a value
//! Supabase cannot hold (`UnrepresentablePolicy`).

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

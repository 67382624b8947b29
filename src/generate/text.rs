//! Values: Python-style JSON text (`J`, written the way `json.dumps` writes it),
//! words and sentences in many scripts, numbers, timestamps, and row helpers.

use std::fmt::Write as _;

use rand::rngs::StdRng;
use rand::Rng;

use crate::catalogue::Table;
use crate::normalise::{SqlRow, SqlValue};

/// A JSON value that keeps key order (as Python's dicts do) and can hold the
/// non-finite floats Python's encoder writes as `NaN`, `Infinity`, `-Infinity`.
#[derive(Debug, Clone)]
pub(super) enum J {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl From<&str> for J {
    fn from(s: &str) -> J {
        J::Str(s.to_owned())
    }
}
impl From<String> for J {
    fn from(s: String) -> J {
        J::Str(s)
    }
}
impl From<i64> for J {
    fn from(i: i64) -> J {
        J::Int(i)
    }
}
impl From<f64> for J {
    fn from(f: f64) -> J {
        J::Float(f)
    }
}
impl From<bool> for J {
    fn from(b: bool) -> J {
        J::Bool(b)
    }
}
impl From<Vec<J>> for J {
    fn from(v: Vec<J>) -> J {
        J::Arr(v)
    }
}

pub(super) fn obj(pairs: Vec<(&str, J)>) -> J {
    J::Obj(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

pub(super) fn strs<S: AsRef<str>>(v: &[S]) -> J {
    J::Arr(v.iter().map(|s| J::Str(s.as_ref().to_owned())).collect())
}

impl J {
    /// `json.dumps(value, ensure_ascii=ascii)`: `", "` and `": "` separators.
    pub(super) fn dumps(&self, ascii: bool) -> String {
        let mut s = String::new();
        self.write(&mut s, ascii);
        s
    }

    pub(super) fn write(&self, out: &mut String, ascii: bool) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Int(i) => {
                let _ = write!(out, "{i}");
            }
            J::Float(f) => py_float(*f, out),
            J::Str(s) => py_str(s, out, ascii),
            J::Arr(a) => {
                out.push('[');
                for (n, v) in a.iter().enumerate() {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    v.write(out, ascii);
                }
                out.push(']');
            }
            J::Obj(o) => {
                out.push('{');
                for (n, (k, v)) in o.iter().enumerate() {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    py_str(k, out, ascii);
                    out.push_str(": ");
                    v.write(out, ascii);
                }
                out.push('}');
            }
        }
    }
}

/// Python's `repr(float)`. The generator's finite floats stay within 1e-4 ..
/// 1e16, where Python prints no exponent and the shortest round-trip digits are
/// the ones Rust prints.
fn py_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        let start = out.len();
        let _ = write!(out, "{f}");
        if !out[start..].contains('.') {
            out.push_str(".0");
        }
    }
}

fn py_str(s: &str, out: &mut String, ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

pub(super) const WORDS: &[&str] = &[
    "revenue",
    "margin",
    "forecast",
    "pipeline",
    "equity",
    "liability",
    "dividend",
    "segment",
    "region",
    "quarter",
    "growth",
    "churn",
    "retention",
    "invoice",
    "ledger",
    "accrual",
    "budget",
    "spend",
    "clicks",
    "impressions",
    "conversions",
    "campaign",
    "subsidiary",
    "consolidated",
    "depreciation",
    "amortization",
    "variance",
    "enrollment",
    "payment",
    "account",
];

/// CJK, Cyrillic, Arabic, Hebrew, Devanagari, Latin with diacritics (one
/// decomposed), a zero-width space and a right-to-left mark.
const WORDS_INTL: &[&str] = &[
    "收入",
    "利润",
    "季度",
    "增长率",
    "報告書",
    "データ",
    "東京",
    "매출",
    "분기",
    "выручка",
    "доход",
    "квартал",
    "Отчёт",
    "الإيرادات",
    "ربع",
    "הכנסות",
    "רבעון",
    "राजस्व",
    "तिमाही",
    "Umsatz",
    "Größe",
    "Zürich",
    "façade",
    "naïve",
    "smörgåsbord",
    "Ærø",
    "Cafe\u{301}",
    "İstanbul",
    "zero\u{200b}width",
    "\u{200f}שלום",
];

/// Emoji (with variation selectors, ZWJ sequences and a flag), currency and
/// typographic symbols.
const SYMBOLS: &[&str] = &[
    "🚀",
    "📈",
    "📉",
    "✅",
    "⚠️",
    "👩‍💻",
    "👨‍👩‍👧‍👦",
    "🏳️‍🌈",
    "🧑🏽‍🔬",
    "🇩🇪",
    "€",
    "£",
    "¥",
    "₹",
    "™",
    "½",
    "—",
    "…",
    "“quoted”",
    "‘single’",
];

const ENDINGS: &[&str] = &[".", ".", ".", "!", "?", "…", ""];

pub(super) fn pick<'a, T: ?Sized>(rng: &mut StdRng, items: &'a [&'a T]) -> &'a T {
    items[rng.gen_range(0..items.len())]
}

pub(super) fn push_word(rng: &mut StdRng, out: &mut String) {
    let r = rng.gen_range(0..100);
    out.push_str(if r < 74 {
        pick(rng, WORDS)
    } else if r < 92 {
        pick(rng, WORDS_INTL)
    } else {
        pick(rng, SYMBOLS)
    });
}

fn push_sentence(rng: &mut StdRng, out: &mut String, lo: usize, hi: usize) {
    let n = rng.gen_range(lo..=hi);
    let start = out.len();
    for k in 0..n {
        if k > 0 {
            out.push(' ');
        }
        push_word(rng, out);
    }
    if let Some(c) = out[start..].chars().next() {
        if c.is_ascii_lowercase() {
            out[start..start + 1].make_ascii_uppercase();
        }
    }
    out.push_str(pick(rng, ENDINGS));
}

pub(super) fn sentence(rng: &mut StdRng, lo: usize, hi: usize) -> String {
    let mut s = String::with_capacity(hi * 8);
    push_sentence(rng, &mut s, lo, hi);
    s
}

pub(super) fn paragraph(rng: &mut StdRng, sentences: usize) -> String {
    let mut s = String::new();
    for k in 0..sentences {
        if k > 0 {
            s.push(' ');
        }
        push_sentence(rng, &mut s, 4, 16);
    }
    s
}

/// A long text of 20-120 KB in paragraphs.
pub(super) fn long_text(rng: &mut StdRng) -> String {
    let target = rng.gen_range(20_000..120_000);
    let mut s = String::with_capacity(target + 200);
    while s.len() < target {
        if !s.is_empty() {
            s.push_str(if rng.gen_bool(0.2) { "\n\n" } else { " " });
        }
        push_sentence(rng, &mut s, 4, 16);
    }
    s
}

/// Money-like values, rounded to cents.
pub(super) fn amount(rng: &mut StdRng) -> f64 {
    (rng.gen_range(-500_000.0..5_000_000.0_f64) * 100.0).round() / 100.0
}

/// A PDF coordinate in points, to a thousandth.
pub(super) fn coordinate(rng: &mut StdRng) -> J {
    J::Float((rng.gen_range(0.0..800.0_f64) * 1000.0).round() / 1000.0)
}

pub(super) fn bbox(rng: &mut StdRng) -> J {
    J::Arr((0..4).map(|_| coordinate(rng)).collect())
}

pub(super) fn ratio(rng: &mut StdRng) -> f64 {
    (rng.gen_range(0.0..1.0_f64) * 10_000.0).round() / 10_000.0
}

/// `YYYY-MM-DDTHH:MM:SSZ`, as DoX writes timestamps, between 2024-01 and 2026-06.
pub(super) fn timestamp(rng: &mut StdRng) -> String {
    let secs = rng.gen_range(1_704_067_200..1_782_777_600);
    let t = chrono::DateTime::from_timestamp(secs, 0).expect("in range");
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(super) fn report_week(rng: &mut StdRng) -> SqlValue {
    match rng.gen_range(0..100) {
        0..10 => SqlValue::Null,
        10..45 => SqlValue::text(""),
        _ => SqlValue::Text(format!(
            "{}-W{:02}",
            rng.gen_range(2024..=2026),
            rng.gen_range(1..=52)
        )),
    }
}

pub(super) fn text(s: impl Into<String>) -> SqlValue {
    SqlValue::Text(s.into())
}

pub(super) fn json(v: &J, ascii: bool) -> SqlValue {
    SqlValue::Text(v.dumps(ascii))
}

/// A row from (column name, value) pairs, placed in catalogue order.
pub(super) fn row<const N: usize>(t: &'static Table, values: [(&str, SqlValue); N]) -> SqlRow {
    debug_assert_eq!(N, t.columns.len(), "{}", t.sqlite);
    let mut out = vec![SqlValue::Null; t.columns.len()];
    for (name, v) in values {
        out[t.index_of(name)] = v;
    }
    out
}

pub(super) fn row_bytes(r: &SqlRow) -> usize {
    r.iter()
        .map(|v| match v {
            SqlValue::Text(s) => s.len(),
            _ => 8,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_text_is_written_as_python_writes_it() {
        let v = obj(vec![
            (
                "a",
                J::Arr(vec![
                    J::Int(1),
                    J::Float(2.5),
                    J::Float(120.0),
                    J::Float(f64::NAN),
                ]),
            ),
            ("é", "naïve \"q\" \\ 👩‍💻\n".into()),
            (
                "inf",
                J::Arr(vec![J::Float(f64::INFINITY), J::Float(f64::NEG_INFINITY)]),
            ),
            ("n", J::Null),
            ("t", true.into()),
            ("e", J::Obj(vec![])),
        ]);
        assert_eq!(
            v.dumps(false),
            "{\"a\": [1, 2.5, 120.0, NaN], \"é\": \"naïve \\\"q\\\" \\\\ 👩‍💻\\n\", \
             \"inf\": [Infinity, -Infinity], \"n\": null, \"t\": true, \"e\": {}}"
        );
        assert_eq!(
            obj(vec![("é", "👩‍💻".into())]).dumps(true),
            "{\"\\u00e9\": \"\\ud83d\\udc69\\u200d\\ud83d\\udcbb\"}"
        );
        let mut s = String::new();
        py_float(0.0001, &mut s);
        py_float(-0.0, &mut s);
        assert_eq!(s, "0.0001-0.0");
    }
}

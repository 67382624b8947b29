//! A DoX fixture generator: a new DoX SQLite file of realistic shape at any
//! size, for tests and benchmarks.
//!
//! Rows are spread over the 17 DoX tables in the proportions of the real
//! `dox-medium.sqlite3` fixture, and their values have the shapes of the spec
//! (section 9) and of the real fixtures: uuid-like ids, text in many scripts with
//! emoji ZWJ sequences, many NULLs, JSON text written the way Python's
//! `json.dumps` writes it (with `NaN`/`Infinity` tokens in some
//! `full_data_json` and `metrics_json`), a few long texts, orphans, non-uuid
//! user ids, and keys made of odd characters.
//!
//! Two properties make it deterministic and flat in memory:
//! * every id is a pure function of (seed, table, row index), so a child names
//!   its parent without any parent row being kept;
//! * each table draws its values from its own seeded PRNG, in row order.
//!
//! Rows are produced in batches on a blocking thread while the previous batch is
//! written, one transaction per batch.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::catalogue::{self as cat, Table};
use crate::db::{SqliteDatabase, SqliteOptions};
use crate::error::{Error, Result};
use crate::normalise::{SqlRow, SqlValue};

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Total rows over all tables; the file holds exactly this many.
    pub rows: u64,
    /// The same seed (and row count) gives the same rows.
    pub seed: u64,
}

/// Rows written to one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableRows {
    pub table: &'static str,
    pub rows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenerateReport {
    pub path: PathBuf,
    pub seed: u64,
    /// One line per DoX table, in copy order (parents first).
    pub tables: Vec<TableRows>,
    pub total: u64,
}

impl GenerateReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "generated {} (seed {}): {} rows\n",
            self.path.display(),
            self.seed,
            self.total
        );
        for t in &self.tables {
            let _ = writeln!(s, "  {:<22} {:>12}", t.table, t.rows);
        }
        s
    }
}

/// Rows per table in `dox-medium.sqlite3` (19,453 rows; see
/// `fixtures/README.md`), in [`TABLES`](cat::TABLES) order.
static MEDIUM: [(&Table, u64); 17] = [
    (&cat::ARTIFACT, 160),
    (&cat::DOCUMENT, 110),
    (&cat::SECTION, 1200),
    (&cat::DOCTABLE, 300),
    (&cat::APIENDPOINT, 800),
    (&cat::LOGENTRY, 7500),
    (&cat::TAGROW, 900),
    (&cat::FACT, 3078),
    (&cat::EVIDENCE, 3650),
    (&cat::TAGPROMPT, 60),
    (&cat::SUMMARIES, 20),
    (&cat::DOCUMENT_ENTITIES, 900),
    (&cat::DOCUMENT_STRUCTURE, 55),
    (&cat::DOCUMENT_METRIC_HITS, 600),
    (&cat::CIPHER_MEMORY, 100),
    (&cat::USER_PREFS, 10),
    (&cat::SKILLS_REGISTRY, 10),
];

/// How many rows each table gets: `rows` split in the proportions of the real
/// medium fixture (largest remainder, so the total is exact), in [`TABLES`](cat::TABLES)
/// order. From 17 rows up every table gets at least one row, taken from the
/// largest tables.
pub fn plan(rows: u64) -> Vec<(&'static Table, u64)> {
    let weight: u64 = MEDIUM.iter().map(|(_, w)| w).sum();
    let share = |w: u64| u128::from(rows) * u128::from(w);
    let mut counts: Vec<u64> = MEDIUM
        .iter()
        .map(|(_, w)| u64::try_from(share(*w) / u128::from(weight)).expect("at most `rows`"))
        .collect();
    let mut order: Vec<usize> = (0..MEDIUM.len()).collect();
    // Largest remainder first; ties in table order.
    order.sort_by_key(|&i| std::cmp::Reverse(share(MEDIUM[i].1) % u128::from(weight)));
    let missing = rows - counts.iter().sum::<u64>();
    for &i in order
        .iter()
        .take(usize::try_from(missing).expect("fewer than 17"))
    {
        counts[i] += 1;
    }
    if rows >= MEDIUM.len() as u64 {
        for i in 0..counts.len() {
            if counts[i] == 0 {
                let largest = (0..counts.len())
                    .max_by_key(|&j| (counts[j], std::cmp::Reverse(j)))
                    .expect("17 tables");
                counts[largest] -= 1;
                counts[i] = 1;
            }
        }
    }
    MEDIUM.iter().map(|(t, _)| *t).zip(counts).collect()
}

/// Rows per `upsert_rows` call (one transaction each), unless the batch reaches
/// [`BATCH_BYTES`] of values first.
const BATCH_ROWS: usize = 4096;
const BATCH_BYTES: usize = 8 << 20;

/// Write a new DoX SQLite file at `path` holding exactly `opts.rows` generated
/// rows. Refuses a path that exists. On failure the partly written file is
/// removed.
pub async fn generate(path: &Path, opts: &GenerateOptions) -> Result<GenerateReport> {
    let owned = path.to_path_buf();
    blocking(move || create_new(&owned)).await?;
    let result = write_rows(path, opts).await;
    if result.is_err() {
        // Best effort: a half-written fixture must not pass for a whole one.
        let owned = path.to_path_buf();
        let _ = blocking(move || {
            let _ = std::fs::remove_file(suffixed(&owned, "-journal"));
            std::fs::remove_file(&owned).map_err(Error::from)
        })
        .await;
    }
    result
}

/// Create `path` as a new empty file (SQLite takes it as an empty database).
/// `create_new` refuses an existing file atomically.
fn create_new(path: &Path) -> Result<()> {
    for leftover in [suffixed(path, "-journal"), suffixed(path, "-wal")] {
        if leftover.try_exists()? {
            return Err(Error::invalid(format!(
                "{} exists (left over from another database); remove it first",
                leftover.display()
            )));
        }
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::invalid(format!(
            "{} already exists; fixtures are only generated into a new file",
            path.display()
        ))),
        Err(e) => Err(Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot create {}: {e}", path.display()),
        ))),
    }
}

/// Run a blocking file-system call off the async runtime.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> Result<R> + Send + 'static) -> Result<R> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(join_error(e)),
    }
}

/// A blocking task that panicked passes the panic on; one that was cancelled (the
/// runtime is shutting down) is an error.
fn join_error(e: tokio::task::JoinError) -> Error {
    if e.is_panic() {
        std::panic::resume_unwind(e.into_panic());
    }
    Error::Io(std::io::Error::other(format!(
        "fixture generation stopped: {e}"
    )))
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

async fn write_rows(path: &Path, opts: &GenerateOptions) -> Result<GenerateReport> {
    let plan = plan(opts.rows);
    // A rollback journal rather than WAL: after each commit the file alone is the
    // whole database, so it can be copied as soon as this returns, and it has the
    // journal mode of the files DoX writes.
    let db = SqliteDatabase::open(
        path,
        SqliteOptions {
            wal: false,
            ..SqliteOptions::default()
        },
    )
    .await?;
    // At most three batches in memory: one being written, one waiting in the
    // channel, one being generated.
    let (tx, mut rx) = mpsc::channel::<(&'static Table, Vec<SqlRow>)>(1);
    let mut generator = Generator::new(opts.seed, &plan);
    let producer = tokio::task::spawn_blocking(move || {
        while let Some(batch) = generator.next_batch() {
            if tx.blocking_send(batch).is_err() {
                // The writer stopped on an error, which it returns.
                break;
            }
        }
    });
    let mut written: Vec<TableRows> = plan
        .iter()
        .map(|(t, _)| TableRows {
            table: t.sqlite,
            rows: 0,
        })
        .collect();
    let mut table_idx = 0;
    while let Some((table, rows)) = rx.recv().await {
        let n = rows.len() as u64;
        db.upsert_rows(table, rows).await?;
        while written[table_idx].table != table.sqlite {
            table_idx += 1;
        }
        written[table_idx].rows += n;
        if written[table_idx].rows == plan[table_idx].1 {
            tracing::debug!(
                table = table.sqlite,
                rows = written[table_idx].rows,
                "generated table"
            );
        }
    }
    producer.await.map_err(join_error)?;
    let total = written.iter().map(|t| t.rows).sum();
    debug_assert_eq!(total, opts.rows);
    Ok(GenerateReport {
        path: path.to_path_buf(),
        seed: opts.seed,
        tables: written,
        total,
    })
}

// ---------------------------------------------------------------------------
// Stateless hashing: ids and parent attributes as functions of (seed, salt, i).

/// SplitMix64's finaliser: a good 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn h(seed: u64, salt: u64, i: u64) -> u64 {
    mix(seed ^ mix(salt ^ mix(i)))
}

/// FNV-1a, to derive a salt from a name at compile time.
const fn salt(name: &str) -> u64 {
    let b = name.as_bytes();
    let mut x: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < b.len() {
        x ^= b[i] as u64;
        x = x.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    x
}

const S_ARTIFACT: u64 = salt("artifact");
const S_DOCUMENT: u64 = salt("document");
const S_EVIDENCE: u64 = salt("evidence");
const S_USER: u64 = salt("user");
const S_DOCTYPE: u64 = salt("doctype");
const S_KIND: u64 = salt("kind");
const S_STEM: u64 = salt("stem");
const S_ODD: u64 = salt("odd");
const S_TABLE_RNG: u64 = salt("table rng");

const M48: u64 = (1 << 48) - 1;

/// A bijection on 48 bits (odd multipliers and xorshifts), so the last uuid
/// group is distinct for every row index of a table: ids never collide.
fn permute48(mut x: u64) -> u64 {
    x &= M48;
    x = x.wrapping_mul(0x9e37_79b9_7f4b) & M48;
    x ^= x >> 23;
    x = x.wrapping_mul(0x2545_f491_4f6d) & M48;
    x ^= x >> 21;
    x
}

/// A uuid-shaped id (`version` 4 or 5), unique per (salt, i).
fn uuid_like(seed: u64, salt: u64, i: u64, version: u8) -> String {
    let a = h(seed, salt, i);
    let b = h(seed, salt ^ 0x5555_5555, i);
    let node = permute48(i ^ h(seed, salt, u64::MAX));
    format!(
        "{:08x}-{:04x}-{version:x}{:03x}-{:04x}-{node:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b & 0x3fff),
    )
}

/// One row index in this many gets a key made of odd characters.
const ODD_EVERY: u64 = 257;

/// Keys made of characters that trip URL filters, CSV, SQL quoting and
/// collations. `{n}` is the row index, which keeps each key unique.
const ODD_KEYS: &[&str] = &[
    "key with spaces {n}",
    "quote \"double\" and 'single' {n}",
    "comma,separated,{n}",
    "(parenthesised) [bracketed] {braced} {n}",
    "100% done, 50%25 encoded {n}",
    "a=b&c=d?e#frag {n}",
    "path/to\\key {n}",
    "in.(a,b) {n}",
    "eq.{n}",
    "Ærø naïve café — 日本語キー {n}",
    "ключ {n}",
    "مفتاح {n}",
    "מפתח {n}",
    "कुंजी {n}",
    "👩‍💻 key 🏳️‍🌈 {n}",
    "  padded {n}  ",
    "null {n}",
    "*star* +plus+ :colon: ;semi; {n}",
    "tab\there {n}",
    "line\nbreak {n}",
    "Cafe\u{301} (decomposed) {n}",
];

fn odd_key(seed: u64, salt: u64, i: u64) -> String {
    let t = ODD_KEYS[(h(seed, salt ^ S_ODD, i) % ODD_KEYS.len() as u64) as usize];
    t.replace("{n}", &i.to_string())
}

// ---------------------------------------------------------------------------
// Python-style JSON text.

/// A JSON value that keeps key order (as Python's dicts do) and can hold the
/// non-finite floats Python's encoder writes as `NaN`, `Infinity`, `-Infinity`.
#[derive(Debug, Clone)]
enum J {
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

fn obj(pairs: Vec<(&str, J)>) -> J {
    J::Obj(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn strs<S: AsRef<str>>(v: &[S]) -> J {
    J::Arr(v.iter().map(|s| J::Str(s.as_ref().to_owned())).collect())
}

impl J {
    /// `json.dumps(value, ensure_ascii=ascii)`: `", "` and `": "` separators.
    fn dumps(&self, ascii: bool) -> String {
        let mut s = String::new();
        self.write(&mut s, ascii);
        s
    }

    fn write(&self, out: &mut String, ascii: bool) {
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

// ---------------------------------------------------------------------------
// Text.

const WORDS: &[&str] = &[
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

fn pick<'a, T: ?Sized>(rng: &mut StdRng, items: &'a [&'a T]) -> &'a T {
    items[rng.gen_range(0..items.len())]
}

fn push_word(rng: &mut StdRng, out: &mut String) {
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

fn sentence(rng: &mut StdRng, lo: usize, hi: usize) -> String {
    let mut s = String::with_capacity(hi * 8);
    push_sentence(rng, &mut s, lo, hi);
    s
}

fn paragraph(rng: &mut StdRng, sentences: usize) -> String {
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
fn long_text(rng: &mut StdRng) -> String {
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
fn amount(rng: &mut StdRng) -> f64 {
    (rng.gen_range(-500_000.0..5_000_000.0_f64) * 100.0).round() / 100.0
}

/// A PDF coordinate in points, to a thousandth.
fn coordinate(rng: &mut StdRng) -> J {
    J::Float((rng.gen_range(0.0..800.0_f64) * 1000.0).round() / 1000.0)
}

fn bbox(rng: &mut StdRng) -> J {
    J::Arr((0..4).map(|_| coordinate(rng)).collect())
}

fn ratio(rng: &mut StdRng) -> f64 {
    (rng.gen_range(0.0..1.0_f64) * 10_000.0).round() / 10_000.0
}

/// `YYYY-MM-DDTHH:MM:SSZ`, as DoX writes timestamps, between 2024-01 and 2026-06.
fn timestamp(rng: &mut StdRng) -> String {
    let secs = rng.gen_range(1_704_067_200..1_782_777_600);
    let t = chrono::DateTime::from_timestamp(secs, 0).expect("in range");
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn report_week(rng: &mut StdRng) -> SqlValue {
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

fn text(s: impl Into<String>) -> SqlValue {
    SqlValue::Text(s.into())
}

fn json(v: &J, ascii: bool) -> SqlValue {
    SqlValue::Text(v.dumps(ascii))
}

/// A row from (column name, value) pairs, placed in catalogue order.
fn row<const N: usize>(t: &'static Table, values: [(&str, SqlValue); N]) -> SqlRow {
    debug_assert_eq!(N, t.columns.len(), "{}", t.sqlite);
    let mut out = vec![SqlValue::Null; t.columns.len()];
    for (name, v) in values {
        out[t.index_of(name)] = v;
    }
    out
}

fn row_bytes(r: &SqlRow) -> usize {
    r.iter()
        .map(|v| match v {
            SqlValue::Text(s) => s.len(),
            _ => 8,
        })
        .sum()
}

// ---------------------------------------------------------------------------
// Parents.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DocType {
    Pdf,
    Xml,
    OpenApi,
    Postman,
}

impl DocType {
    fn as_str(self) -> &'static str {
        match self {
            DocType::Pdf => "pdf",
            DocType::Xml => "xml",
            DocType::OpenApi => "openapi",
            DocType::Postman => "postman",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Pdf,
    Xml,
    OpenApi,
    Postman,
    Csv,
    Xlsx,
    Url,
    Audio,
    Image,
    Docx,
}

impl FileKind {
    fn filetype(self) -> &'static str {
        match self {
            FileKind::Pdf => ".pdf",
            FileKind::Xml => ".xml",
            FileKind::OpenApi => ".yaml",
            FileKind::Postman => ".json",
            FileKind::Csv => ".csv",
            FileKind::Xlsx => ".xlsx",
            FileKind::Url => "url",
            FileKind::Audio => ".mp3",
            FileKind::Image => ".png",
            FileKind::Docx => ".docx",
        }
    }

    fn stems(self) -> &'static [&'static str] {
        match self {
            FileKind::Pdf => &[
                "annual_report",
                "Q3_Financials",
                "Jahresbericht_2024",
                "Отчёт",
                "rapport_trimestriel",
                "Board deck — final",
                "報告書_第3四半期",
                "التقرير_السنوي",
                "דוח_רבעוני",
                "वार्षिक_रिपोर्ट",
            ],
            FileKind::Xml => &["app_errors", "lms_events", "payment_logs", "システムログ"],
            FileKind::OpenApi => &["petstore", "openapi", "学习平台接口", "billing-api"],
            FileKind::Postman => &["lending.postman_collection", "crm.postman_collection"],
            FileKind::Csv => &[
                "q3_campaigns",
                "ad_spend",
                "выручка_по_регионам",
                "ventes 2025",
            ],
            FileKind::Xlsx => &["budget", "forecast_FY26", "売上"],
            FileKind::Audio => &["standup", "earnings_call", "podcast 🎙️ ep"],
            FileKind::Image => &["chart", "whiteboard", "scan"],
            FileKind::Docx => &["contract", "memo (draft)", "policy, v2"],
            FileKind::Url => &[
                "https://example.com/pricing/{n}",
                "https://例子.测试/报告/page-{n}?q=a&b=ü",
                "https://docs.example.org/api?id={n}&lang=ru#section-2",
            ],
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Pool {
    Pdf,
    Xml,
    Api,
    Any,
}

/// Row generation state: the plan, the parents' indices by kind, and the current
/// table's PRNG.
struct Generator {
    seed: u64,
    plan: Vec<(&'static Table, u64)>,
    n_artifact: u64,
    n_document: u64,
    n_evidence: u64,
    /// User ids cipher rows draw from: every `user_prefs` key and some more.
    n_users: u64,
    pdf_docs: Vec<u64>,
    xml_docs: Vec<u64>,
    api_docs: Vec<u64>,
    table: usize,
    next: u64,
    rng: StdRng,
}

impl Generator {
    fn new(seed: u64, plan: &[(&'static Table, u64)]) -> Generator {
        let count = |t: &Table| plan.iter().find(|(p, _)| *p == t).map_or(0, |(_, n)| *n);
        let n_prefs = count(&cat::USER_PREFS);
        let mut g = Generator {
            seed,
            plan: plan.to_vec(),
            n_artifact: count(&cat::ARTIFACT),
            n_document: count(&cat::DOCUMENT),
            n_evidence: count(&cat::EVIDENCE),
            n_users: n_prefs + n_prefs / 2 + 3,
            pdf_docs: Vec::new(),
            xml_docs: Vec::new(),
            api_docs: Vec::new(),
            table: 0,
            next: 0,
            rng: StdRng::seed_from_u64(h(seed, S_TABLE_RNG, 0)),
        };
        for i in 0..g.n_document {
            match g.doc_type(i) {
                DocType::Pdf => g.pdf_docs.push(i),
                DocType::Xml => g.xml_docs.push(i),
                DocType::OpenApi | DocType::Postman => g.api_docs.push(i),
            }
        }
        g
    }

    /// The next batch of rows of one table, tables in plan order.
    fn next_batch(&mut self) -> Option<(&'static Table, Vec<SqlRow>)> {
        loop {
            let (table, n) = *self.plan.get(self.table)?;
            if self.next >= n {
                self.table += 1;
                self.next = 0;
                self.rng = StdRng::seed_from_u64(h(self.seed, S_TABLE_RNG, self.table as u64));
                continue;
            }
            let left = usize::try_from(n - self.next).unwrap_or(usize::MAX);
            let mut rows = Vec::with_capacity(left.min(BATCH_ROWS));
            let mut bytes = 0;
            while self.next < n && rows.len() < BATCH_ROWS && bytes < BATCH_BYTES {
                let r = self.row(table, self.next);
                bytes += row_bytes(&r);
                rows.push(r);
                self.next += 1;
            }
            return Some((table, rows));
        }
    }

    fn row(&mut self, t: &'static Table, i: u64) -> SqlRow {
        match t.sqlite {
            "artifact" => self.artifact(i),
            "document" => self.document(i),
            "section" => self.section(i),
            "doctable" => self.doctable(i),
            "apiendpoint" => self.apiendpoint(i),
            "logentry" => self.logentry(i),
            "tagrow" => self.tagrow(i),
            "fact" => self.fact(i),
            "evidence" => self.evidence(i),
            "tagprompt" => self.tagprompt(i),
            "summaries" => self.summary(i),
            "document_entities" => self.entity(i),
            "document_structure" => self.structure(i),
            "document_metric_hits" => self.metric_hit(i),
            "cipher_memory" => self.memory(i),
            "user_prefs" => self.user_pref(i),
            "skills_registry" => self.skill(i),
            other => unreachable!("the plan holds only DoX tables, not {other}"),
        }
    }

    // --- ids and parent attributes (pure functions of seed and index) ---

    /// The key of row `i` of a table: uuid-like, or (one in [`ODD_EVERY`]) made
    /// of odd characters.
    fn key(&self, salt: u64, i: u64, version: u8) -> String {
        if i % ODD_EVERY == 1 {
            odd_key(self.seed, salt, i)
        } else {
            uuid_like(self.seed, salt, i, version)
        }
    }

    fn artifact_id(&self, i: u64) -> String {
        uuid_like(self.seed, S_ARTIFACT, i, 4)
    }

    /// The first four documents have one type each, so small files hold them all.
    fn doc_type(&self, i: u64) -> DocType {
        match i {
            0 => DocType::Pdf,
            1 => DocType::Xml,
            2 => DocType::OpenApi,
            3 => DocType::Postman,
            _ => match h(self.seed, S_DOCTYPE, i) % 100 {
                0..50 => DocType::Pdf,
                50..70 => DocType::Xml,
                70..88 => DocType::OpenApi,
                _ => DocType::Postman,
            },
        }
    }

    /// Document `i` (existing when `i < n_document`). DoX gives a PDF's document
    /// the id of its artifact.
    fn doc_id(&self, i: u64) -> String {
        if self.doc_type(i) == DocType::Pdf && i < self.n_artifact {
            self.artifact_id(i)
        } else {
            self.key(S_DOCUMENT, i, 4)
        }
    }

    /// The first artifacts are the documents' files; the rest are other uploads.
    fn artifact_kind(&self, i: u64) -> FileKind {
        if i < self.n_document {
            return match self.doc_type(i) {
                DocType::Pdf => FileKind::Pdf,
                DocType::Xml => FileKind::Xml,
                DocType::OpenApi => FileKind::OpenApi,
                DocType::Postman => FileKind::Postman,
            };
        }
        match h(self.seed, S_KIND, i) % 100 {
            0..30 => FileKind::Pdf,
            30..50 => FileKind::Csv,
            50..60 => FileKind::Xlsx,
            60..75 => FileKind::Url,
            75..83 => FileKind::Audio,
            83..91 => FileKind::Image,
            _ => FileKind::Docx,
        }
    }

    /// The file name (for URL artifacts: the URL).
    fn artifact_filename(&self, i: u64) -> String {
        let kind = self.artifact_kind(i);
        let stems = kind.stems();
        let stem = stems[(h(self.seed, S_STEM, i) % stems.len() as u64) as usize];
        match kind {
            FileKind::Url => stem.replace("{n}", &i.to_string()),
            _ => format!("{stem}_{i}{}", kind.filetype()),
        }
    }

    fn evidence_id(&self, i: u64) -> String {
        self.key(S_EVIDENCE, i, 4)
    }

    /// User ids as DoX holds them: `dev_user`, agent names, e-mail addresses, odd
    /// strings, and mostly uuids.
    fn user_id(&self, i: u64) -> String {
        match i {
            0 => "dev_user".into(),
            1 => "agent-zero".into(),
            2 => "analyst@example.com".into(),
            _ => match h(self.seed, S_USER, i) % 100 {
                0..10 => format!("user{i}@example.com"),
                10..18 => format!("agent-{i}"),
                18..24 => odd_key(self.seed, S_USER, i),
                _ => uuid_like(self.seed, S_USER, i, 4),
            },
        }
    }

    // --- references drawn from the table's PRNG ---

    /// A document id for a child row: mostly an existing document of the
    /// pool's type; about 1% are orphans (a document that does not exist, which
    /// may be the id of a non-document artifact).
    fn doc_ref(&mut self, pool: Pool) -> String {
        if self.n_document == 0 || self.rng.gen_range(0..1000) < 10 {
            let i = self.n_document + self.rng.gen_range(0..self.n_document.max(64));
            return self.doc_id(i);
        }
        let pool: &[u64] = match pool {
            Pool::Pdf => &self.pdf_docs,
            Pool::Xml => &self.xml_docs,
            Pool::Api => &self.api_docs,
            Pool::Any => &[],
        };
        let i = if pool.is_empty() {
            self.rng.gen_range(0..self.n_document)
        } else {
            pool[self.rng.gen_range(0..pool.len())]
        };
        self.doc_id(i)
    }

    /// An artifact index for a child row; indices past `n_artifact` are orphans.
    fn artifact_ref(&mut self) -> u64 {
        if self.n_artifact == 0 || self.rng.gen_range(0..1000) < 10 {
            self.n_artifact + self.rng.gen_range(0..self.n_artifact.max(64))
        } else {
            self.rng.gen_range(0..self.n_artifact)
        }
    }

    fn maybe(&mut self, p_null: f64, f: impl FnOnce(&mut Self) -> SqlValue) -> SqlValue {
        if self.rng.gen_bool(p_null) {
            SqlValue::Null
        } else {
            f(self)
        }
    }

    fn ts(&mut self) -> SqlValue {
        text(timestamp(&mut self.rng))
    }

    // --- tables ---

    fn artifact(&mut self, i: u64) -> SqlRow {
        let id = self.artifact_id(i);
        let kind = self.artifact_kind(i);
        let filename = self.artifact_filename(i);
        let r = &mut self.rng;
        let filepath = match kind {
            FileKind::Url => filename.clone(),
            _ if r.gen_bool(0.5) => format!("/app/uploads/{id}_{filename}"),
            _ => format!("uploads/{id}_{filename}"),
        };
        let status = match r.gen_range(0..100) {
            0 => SqlValue::Null,
            1..4 => text("error"),
            4..6 => text("queued"),
            6..16 => text("processing"),
            _ => text("processed"),
        };
        let extra = match kind {
            FileKind::Url => Some(obj(vec![(
                "web",
                obj(vec![
                    ("status", "processed".into()),
                    ("preview", sentence(r, 4, 12).into()),
                    ("metadata", obj(vec![("title", sentence(r, 2, 6).into())])),
                    ("artifacts", J::Arr(vec![])),
                    ("warnings", J::Arr(vec![])),
                    ("chars", J::Int(r.gen_range(200..40_000))),
                ]),
            )])),
            FileKind::Audio => Some(obj(vec![(
                "media",
                obj(vec![
                    ("kind", "audio".into()),
                    ("transcript_preview", sentence(r, 3, 10).into()),
                    ("artifacts", J::Obj(vec![])),
                    ("engine", "whisper".into()),
                    (
                        "metadata",
                        obj(vec![(
                            "duration_seconds",
                            J::Float((r.gen_range(5.0..4000.0_f64) * 10.0).round() / 10.0),
                        )]),
                    ),
                    ("status", "ok".into()),
                    ("warnings", J::Arr(vec![])),
                ]),
            )])),
            FileKind::Image if r.gen_bool(0.6) => Some(obj(vec![(
                "ocr",
                obj(vec![
                    ("text", sentence(r, 3, 12).into()),
                    ("confidence", J::Float(ratio(r))),
                    ("lang", pick(r, &["eng", "deu", "jpn", "ara", "rus"]).into()),
                ]),
            )])),
            _ if r.gen_bool(0.15) => Some(obj(vec![
                (
                    "uploaded_by",
                    pick(r, &["dana", "李雷", "bob", "Zoë"]).into(),
                ),
                ("labels", strs(&[sentence(r, 1, 2), sentence(r, 1, 2)])),
            ])),
            _ => None,
        };
        let source_url = match kind {
            FileKind::Url => text(filename.clone()),
            _ => SqlValue::Null,
        };
        let report_week = report_week(r);
        row(
            &cat::ARTIFACT,
            [
                ("id", text(id)),
                ("filename", text(filename)),
                ("filepath", text(filepath)),
                ("filetype", text(kind.filetype())),
                ("report_week", report_week),
                ("status", status),
                ("source_url", source_url),
                (
                    "extra_json",
                    extra.map_or(SqlValue::Null, |e| json(&e, false)),
                ),
            ],
        )
    }

    fn document(&mut self, i: u64) -> SqlRow {
        let doc_type = self.doc_type(i);
        let file = if i < self.n_artifact {
            format!("{}_{}", self.artifact_id(i), self.artifact_filename(i))
        } else {
            format!("{:04x}_upload_{i}.{}", i & 0xffff, doc_type.as_str())
        };
        let r = &mut self.rng;
        let path = if r.gen_bool(0.5) {
            format!("/app/uploads/{file}")
        } else {
            format!("uploads/{file}")
        };
        let title = match (doc_type, r.gen_range(0..10)) {
            (_, 0) => SqlValue::Null,
            (DocType::OpenApi | DocType::Postman, 1..6) => text(pick(
                r,
                &[
                    "Swagger Petstore",
                    "Lending API",
                    "学习平台接口",
                    "API de facturación",
                ],
            )),
            _ => text(file.clone()),
        };
        let source = if r.gen_bool(0.95) {
            text("watch|upload")
        } else {
            SqlValue::Null
        };
        let created_at = self.maybe(0.65, Self::ts);
        row(
            &cat::DOCUMENT,
            [
                ("id", text(self.doc_id(i))),
                ("path", text(path)),
                ("type", text(doc_type.as_str())),
                ("title", title),
                ("source", source),
                ("created_at", created_at),
            ],
        )
    }

    fn section(&mut self, i: u64) -> SqlRow {
        let id = if i % 10 == 3 {
            format!("sec-{i:06}")
        } else {
            self.key(salt("section"), i, 4)
        };
        let document_id = self.doc_ref(Pool::Pdf);
        let r = &mut self.rng;
        let body = if r.gen_range(0..1000) == 0 {
            long_text(r)
        } else {
            let n = r.gen_range(1..=5);
            paragraph(r, n)
        };
        let page = self.maybe(0.14, |g| SqlValue::Integer(g.rng.gen_range(1..400)));
        let bbox = self.maybe(0.31, |g| {
            let r = &mut g.rng;
            let v = if r.gen_bool(0.7) {
                obj(vec![
                    ("l", coordinate(r)),
                    ("t", coordinate(r)),
                    ("r", coordinate(r)),
                    ("b", coordinate(r)),
                    ("coord_origin", "BOTTOMLEFT".into()),
                ])
            } else {
                bbox(r)
            };
            json(&v, true)
        });
        row(
            &cat::SECTION,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("order", SqlValue::Integer(self.rng.gen_range(0..80))),
                ("text", text(body)),
                ("page", page),
                ("bbox_json", bbox),
            ],
        )
    }

    /// A table cell as pandas hands it to `json.dumps`: numbers, text or None,
    /// and sometimes NaN or an infinity when `non_finite` is set.
    fn cell(&mut self, non_finite: bool) -> J {
        let r = &mut self.rng;
        match r.gen_range(0..100) {
            0..40 => J::Float(amount(r)),
            40..60 => J::Int(r.gen_range(0..100_000)),
            60..80 => J::Str(sentence(r, 1, 4)),
            80..88 => J::Null,
            88..92 if non_finite => J::Float(f64::NAN),
            92 if non_finite => J::Float(if r.gen_bool(0.5) {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            }),
            _ => J::Float(ratio(r)),
        }
    }

    /// Distinct column names (object keys must not repeat).
    fn columns(&mut self, lo: usize, hi: usize) -> Vec<String> {
        let n = self.rng.gen_range(lo..=hi);
        let mut cols: Vec<String> = Vec::with_capacity(n);
        while cols.len() < n {
            let mut w = String::new();
            push_word(&mut self.rng, &mut w);
            if cols.contains(&w) {
                let _ = write!(w, "_{}", cols.len());
            }
            cols.push(w);
        }
        cols
    }

    fn doctable(&mut self, i: u64) -> SqlRow {
        let id = if i % 10 == 3 {
            format!("tbl-{i:06}")
        } else {
            self.key(salt("doctable"), i, 4)
        };
        let document_id = self.doc_ref(Pool::Pdf);
        let cols = self.columns(2, 6);
        let n_rows = self.rng.gen_range(1..=8);
        let as_objects = self.rng.gen_bool(0.6);
        let mut rows = Vec::with_capacity(n_rows);
        for _ in 0..n_rows {
            if as_objects {
                let mut o = Vec::with_capacity(cols.len());
                for c in &cols {
                    o.push((c.clone(), self.cell(false)));
                }
                rows.push(J::Obj(o));
            } else {
                rows.push(J::Arr((0..cols.len()).map(|_| self.cell(false)).collect()));
            }
        }
        let content = obj(vec![("columns", strs(&cols)), ("rows", J::Arr(rows))]);
        row(
            &cat::DOCTABLE,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("order", SqlValue::Integer(self.rng.gen_range(0..12))),
                ("table_content_json", json(&content, false)),
            ],
        )
    }

    fn apiendpoint(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("apiendpoint"), i, 4);
        let document_id = self.doc_ref(Pool::Api);
        let r = &mut self.rng;
        let method = pick(
            r,
            &[
                "GET", "GET", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD",
            ],
        );
        let resource = pick(
            r,
            &["pets", "users", "loans", "grades", "courses", "invoices"],
        );
        let mut word = String::new();
        push_word(r, &mut word);
        let path = format!(
            "/v{}/{resource}/{{id}}/{}",
            r.gen_range(1..=3),
            word.replace(' ', "-")
        );
        let name = match r.gen_range(0..100) {
            0..22 => SqlValue::Null,
            22..40 => text(format!(
                "list{}",
                resource[..1].to_uppercase() + &resource[1..]
            )),
            40..60 => text(format!("{method} {}", sentence(r, 1, 3))),
            _ => text(format!("op_{i}_{word}")),
        };
        let summary = self.maybe(0.12, |g| text(sentence(&mut g.rng, 2, 14)));
        let r = &mut self.rng;
        let tags = strs(&match r.gen_range(0..4) {
            0 => vec![],
            1 => vec![resource.to_owned()],
            2 => vec![pick(r, &["🚀 Launch", "Webhooks", "Enrollment", "Платежи"]).to_owned()],
            _ => vec![resource.to_owned(), sentence(r, 1, 2)],
        });
        let postman = r.gen_bool(0.3);
        let params = if postman {
            obj(vec![
                ("raw", format!("{{{{base}}}}/v2/{resource}").into()),
                ("host", strs(&["{{base}}"])),
                ("path", strs(&["v2", resource])),
            ])
        } else {
            let n = r.gen_range(0..4);
            J::Arr(
                (0..n)
                    .map(|_| {
                        obj(vec![
                            (
                                "name",
                                pick(
                                    r,
                                    &["limit", "page", "id", "größe", "filter[name]", "courseId"],
                                )
                                .into(),
                            ),
                            ("in", pick(r, &["query", "path", "header"]).into()),
                            ("required", r.gen_bool(0.4).into()),
                            (
                                "schema",
                                obj(vec![(
                                    "type",
                                    pick(r, &["integer", "string", "boolean"]).into(),
                                )]),
                            ),
                        ])
                    })
                    .collect(),
            )
        };
        let responses = if postman {
            J::Arr(vec![])
        } else {
            let mut o = vec![(
                "200".to_owned(),
                obj(vec![("description", sentence(r, 2, 8).into())]),
            )];
            if r.gen_bool(0.5) {
                o.push((
                    pick(r, &["400", "401", "404", "409"]).to_owned(),
                    obj(vec![("description", sentence(r, 2, 8).into())]),
                ));
            }
            if r.gen_bool(0.3) {
                o.push((
                    "x_security".to_owned(),
                    obj(vec![("schemes", strs(&["bearerAuth"]))]),
                ));
            }
            J::Obj(o)
        };
        row(
            &cat::APIENDPOINT,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("name", name),
                ("method", text(method)),
                ("path", text(path)),
                ("summary", summary),
                ("tags_json", json(&tags, true)),
                ("params_json", json(&params, true)),
                ("responses_json", json(&responses, true)),
            ],
        )
    }

    fn logentry(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("logentry"), i, 4);
        let document_id = self.doc_ref(Pool::Xml);
        let r = &mut self.rng;
        // Free-form text from the XML, in every format seen.
        let ts = match r.gen_range(0..100) {
            0..10 => SqlValue::Null,
            n => {
                let t = timestamp(r);
                text(match n {
                    10..40 => t[..19].to_owned(),
                    40..60 => t,
                    60..80 => t[..19].replace('T', " "),
                    80..88 => format!("{}.{:03}+02:00", &t[..19], r.gen_range(0..1000)),
                    88..95 => chrono::DateTime::parse_from_rfc3339(&t)
                        .map(|d| d.format("%d/%b/%Y:%H:%M:%S +0000").to_string())
                        .unwrap_or(t),
                    _ => chrono::DateTime::parse_from_rfc3339(&t)
                        .map(|d| d.timestamp().to_string())
                        .unwrap_or(t),
                })
            }
        };
        let level = match r.gen_range(0..100) {
            0..11 => SqlValue::Null,
            11..50 => text("INFO"),
            50..70 => text("WARN"),
            70..88 => text("ERROR"),
            88..95 => text("DEBUG"),
            95..98 => text("warning"),
            _ => text("FATAL"),
        };
        let code = match r.gen_range(0..100) {
            0..5 => SqlValue::Null,
            n => text(match n % 4 {
                0 => format!("E{}", r.gen_range(1000..2000)),
                1 => format!("W{}", r.gen_range(100..400)),
                2 => r.gen_range(200..600).to_string(),
                _ => format!("LMS-{:03}", r.gen_range(0..50)),
            }),
        };
        let component = match r.gen_range(0..100) {
            0..11 => SqlValue::Null,
            _ => text(pick(
                r,
                &[
                    "payment-service",
                    "scheduler",
                    "auth",
                    "note",
                    "lms-sync",
                    "gateway",
                    "通知",
                ],
            )),
        };
        let message = match r.gen_range(0..1000) {
            0..30 => SqlValue::Null,
            // About one in 500: a stack trace of about 8 KB.
            30..32 => {
                let mut s = sentence(r, 4, 10);
                while s.len() < 8_000 {
                    let _ = write!(
                        s,
                        "\n    at com.example.{}.Service.handle(Service.java:{})",
                        pick(r, WORDS),
                        r.gen_range(1..2000)
                    );
                }
                text(s)
            }
            _ => text(sentence(r, 4, 22)),
        };
        let attrs = self.maybe(0.85, |g| {
            let r = &mut g.rng;
            json(
                &obj(vec![
                    (
                        "thread",
                        pick(r, &["main", "worker-1", "worker-2", "io"]).into(),
                    ),
                    ("pid", J::Int(r.gen_range(100..65_000))),
                    ("retry", r.gen_bool(0.2).into()),
                ]),
                true,
            )
        });
        row(
            &cat::LOGENTRY,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("ts", ts),
                ("level", level),
                ("code", code),
                ("component", component),
                ("message", message),
                ("attrs_json", attrs),
            ],
        )
    }

    fn tagrow(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("tagrow"), i, 4);
        let document_id = self.doc_ref(Pool::Any);
        let r = &mut self.rng;
        let tag = match r.gen_range(0..10) {
            0..6 => pick(
                r,
                &[
                    "pet inventory",
                    "authentication",
                    "payments",
                    "Ledger",
                    "🚀 Launch",
                    "LMS Integration",
                    "Revenue Recognition",
                    "Выручка",
                    "決済",
                    "ضريبة",
                ],
            )
            .to_owned(),
            _ => sentence(r, 1, 3),
        };
        let score = if r.gen_bool(0.62) {
            SqlValue::Null
        } else {
            SqlValue::Real(ratio(r))
        };
        let (source_ptr, hrm_steps) = match r.gen_range(0..100) {
            0..23 => (SqlValue::Null, None),
            23..50 => (text("langextract"), None),
            50..62 => (text("mangle"), None),
            62..72 => (text("hrm-refined"), Some(r.gen_range(1..=8))),
            72..90 => {
                let n = r.gen_range(1..=12);
                (text(format!("hrm-refined:steps{n}")), Some(n))
            }
            _ => (text(pick(r, &["tag", "topic", "entity"])), None),
        };
        let hrm_steps = match hrm_steps {
            Some(n) => SqlValue::Integer(n),
            None if r.gen_bool(0.9) => SqlValue::Null,
            None => SqlValue::Integer(r.gen_range(1..=8)),
        };
        row(
            &cat::TAGROW,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("tag", text(tag)),
                ("score", score),
                ("source_ptr", source_ptr),
                ("hrm_steps", hrm_steps),
            ],
        )
    }

    fn fact(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("fact"), i, 4);
        let artifact_id = if self.rng.gen_range(0..100) < 2 {
            // DoX's write method stores "" when the artifact is absent.
            String::new()
        } else {
            let a = self.artifact_ref();
            self.artifact_id(a)
        };
        let entity = match self.rng.gen_range(0..100) {
            0..40 => None,
            40..70 => Some("table"),
            70..80 => Some("chart"),
            80..88 => Some("formula"),
            _ => Some("document_summary"),
        };
        let metrics = match entity {
            None => {
                // Campaign metrics; ROAS of zero spend is an infinity, missing
                // values are NaN (Python writes both as bare tokens).
                let r = &mut self.rng;
                let spend = if r.gen_range(0..100) < 2 {
                    0.0
                } else {
                    amount(r).abs()
                };
                let revenue = if r.gen_range(0..100) < 2 {
                    f64::NAN
                } else {
                    amount(r).abs()
                };
                let roas = if spend == 0.0 {
                    f64::INFINITY
                } else {
                    (revenue / spend * 100.0).round() / 100.0
                };
                obj(vec![
                    ("spend", J::Float(spend)),
                    ("revenue", J::Float(revenue)),
                    ("roas", J::Float(roas)),
                ])
            }
            Some("table") => {
                let cols = self.columns(1, 7);
                obj(vec![
                    ("rows", J::Int(self.rng.gen_range(1..200))),
                    ("columns", J::Int(cols.len() as i64)),
                    ("column_names", strs(&cols)),
                ])
            }
            Some("chart") => obj(vec![
                ("type", pick(&mut self.rng, &["bar", "line", "pie"]).into()),
                ("series", J::Int(self.rng.gen_range(1..6))),
                ("title", sentence(&mut self.rng, 2, 6).into()),
            ]),
            Some("formula") => obj(vec![
                ("latex", "\\frac{a}{b} = c".into()),
                ("value", J::Float(ratio(&mut self.rng))),
            ]),
            Some(_) => {
                let r = &mut self.rng;
                obj(vec![
                    ("pages", J::Int(r.gen_range(1..400))),
                    ("text_sections", J::Int(r.gen_range(0..300))),
                    ("tables", J::Int(r.gen_range(0..40))),
                    ("charts", J::Int(r.gen_range(0..20))),
                    ("formulas", J::Int(r.gen_range(0..10))),
                    ("total_evidence", J::Int(r.gen_range(0..400))),
                    ("total_facts", J::Int(r.gen_range(0..60))),
                ])
            }
        };
        let evidence_id = if entity == Some("document_summary")
            || self.n_evidence == 0
            || self.rng.gen_range(0..100) < 5
        {
            SqlValue::Null
        } else {
            let e = self.rng.gen_range(0..self.n_evidence);
            text(self.evidence_id(e))
        };
        let report_week = report_week(&mut self.rng);
        row(
            &cat::FACT,
            [
                ("id", text(id)),
                ("artifact_id", text(artifact_id)),
                ("report_week", report_week),
                ("entity", SqlValue::opt_text(entity)),
                ("metrics_json", json(&metrics, false)),
                ("evidence_id", evidence_id),
            ],
        )
    }

    fn evidence(&mut self, i: u64) -> SqlRow {
        let id = self.evidence_id(i);
        let (artifact_id, kind, filename) = if self.rng.gen_range(0..1000) < 5 {
            (String::new(), FileKind::Docx, "document.docx".to_owned())
        } else {
            let a = self.artifact_ref();
            (
                self.artifact_id(a),
                self.artifact_kind(a),
                self.artifact_filename(a),
            )
        };
        let r = &mut self.rng;
        let k: u32 = r.gen_range(0..200);
        let content_type = match kind {
            FileKind::Pdf => match r.gen_range(0..100) {
                0..55 => "text",
                55..75 => "table",
                75..83 => "financial_table",
                83..93 => "chart",
                _ => "formula",
            },
            FileKind::Csv => "csv",
            FileKind::Xlsx => "xlsx",
            FileKind::Audio if r.gen_bool(0.8) => "media_transcript",
            FileKind::Audio => "media_metadata",
            FileKind::Image => "image_ocr",
            FileKind::Url => "web_page",
            _ => "text",
        };
        let locator = match content_type {
            "csv" => format!("{filename}#data"),
            "xlsx" => format!("{filename}#{}", pick(r, &["Sheet1", "Лист1", "Q3 (final)"])),
            "media_transcript" | "media_metadata" => format!("{filename}#transcript"),
            "web_page" => filename.clone(),
            "image_ocr" => format!("{filename}#ocr"),
            "text" => format!("{filename}#section{k}"),
            other => format!("{filename}#{}{k}", other.trim_start_matches("financial_")),
        };
        let long = r.gen_range(0..1000) == 0;
        let preview = sentence(r, 6, 40);
        let page = r.gen_range(1..300);
        let coordinates = match (content_type, r.gen_range(0..100)) {
            (_, 0..16) => None,
            ("table" | "financial_table", n) if n < 90 => Some(J::Arr(vec![obj(vec![
                ("page", J::Int(page)),
                ("bbox", bbox(r)),
            ])])),
            ("text" | "chart" | "formula" | "table" | "financial_table", _) => {
                Some(obj(vec![("page", J::Int(page)), ("bbox", bbox(r))]))
            }
            ("media_transcript", _) => Some(J::Arr(vec![obj(vec![
                ("start", J::Float(f64::from(k))),
                ("end", J::Float(f64::from(k) + 4.5)),
            ])])),
            _ => Some(J::Arr(vec![])),
        };
        let full_data = if r.gen_range(0..100) < 3 {
            None
        } else if long {
            Some(obj(vec![
                ("text", long_text(r).into()),
                ("metrics", J::Obj(vec![])),
            ]))
        } else {
            Some(match content_type {
                "csv" | "xlsx" | "table" | "financial_table" => {
                    let cols = self.columns(2, 5);
                    let n = self.rng.gen_range(1..=4);
                    // pandas turns missing cells into NaN.
                    let rows: Vec<J> = (0..n)
                        .map(|_| {
                            J::Obj(cols.iter().map(|c| (c.clone(), self.cell(true))).collect())
                        })
                        .collect();
                    match content_type {
                        "csv" => J::Arr(rows),
                        "xlsx" => obj(vec![("sheets", obj(vec![("Sheet1", J::Arr(rows))]))]),
                        _ => obj(vec![
                            ("rows", J::Arr(rows)),
                            ("pages", J::Arr(vec![J::Int(page)])),
                            ("merged", self.rng.gen_bool(0.1).into()),
                            ("header_detected", self.rng.gen_bool(0.8).into()),
                            ("columns", strs(&cols)),
                        ]),
                    }
                }
                "media_transcript" => obj(vec![(
                    "segments",
                    J::Arr(vec![obj(vec![
                        ("start", J::Float(f64::from(k))),
                        ("end", J::Float(f64::from(k) + 4.5)),
                        ("text", preview.clone().into()),
                    ])]),
                )]),
                "media_metadata" => obj(vec![
                    ("duration_seconds", J::Float(f64::from(k) * 3.5)),
                    ("codec", "mp3".into()),
                    ("sample_rate", J::Int(44_100)),
                ]),
                "web_page" => obj(vec![
                    ("url", filename.clone().into()),
                    ("title", sentence(&mut self.rng, 2, 6).into()),
                    ("text", preview.clone().into()),
                ]),
                "chart" => obj(vec![
                    ("caption", preview.clone().into()),
                    (
                        "series",
                        J::Arr((0..4).map(|_| self.cell(true)).collect::<Vec<_>>()),
                    ),
                ]),
                _ => obj(vec![
                    ("text", preview.clone().into()),
                    (
                        "metrics",
                        if self.rng.gen_bool(0.3) {
                            obj(vec![("revenue", J::Float(ratio(&mut self.rng) * 10.0))])
                        } else {
                            J::Obj(vec![])
                        },
                    ),
                ]),
            })
        };
        row(
            &cat::EVIDENCE,
            [
                ("id", text(id)),
                ("artifact_id", text(artifact_id)),
                ("locator", text(locator)),
                ("preview", text(preview)),
                ("content_type", text(content_type)),
                (
                    "coordinates_json",
                    coordinates.map_or(SqlValue::Null, |c| json(&c, true)),
                ),
                (
                    "full_data_json",
                    full_data.map_or(SqlValue::Null, |d| json(&d, true)),
                ),
            ],
        )
    }

    fn tagprompt(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("tagprompt"), i, 4);
        let document_id = self.doc_ref(Pool::Any);
        let r = &mut self.rng;
        let prompt = format!(
            "{}\n{}",
            pick(
                r,
                &[
                    "Extract concise domain tags.",
                    "Extract short domain tags for each endpoint.",
                    "Извлеки теги."
                ]
            ),
            paragraph(r, 2)
        );
        let examples = if r.gen_bool(0.3) {
            SqlValue::Null
        } else {
            let n = r.gen_range(1..=2);
            let ex: Vec<J> = (0..n)
                .map(|_| {
                    obj(vec![
                        ("text", sentence(r, 4, 14).into()),
                        (
                            "extractions",
                            J::Arr(vec![obj(vec![
                                ("extraction_class", "tag".into()),
                                ("extraction_text", sentence(r, 1, 2).into()),
                            ])]),
                        ),
                    ])
                })
                .collect();
            json(&J::Arr(ex), true)
        };
        let created_at = text(timestamp(r));
        let author = match r.gen_range(0..100) {
            0..22 => SqlValue::Null,
            _ => text(pick(
                r,
                &["analyst@example.com", "李雷", "bob", "dana", "Zoë O'Brien"],
            )),
        };
        row(
            &cat::TAGPROMPT,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("prompt_text", text(prompt)),
                ("examples_json", examples),
                ("created_at", created_at),
                ("author", author),
            ],
        )
    }

    fn summary(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("summaries"), i, 4);
        let n_artifacts = self.rng.gen_range(0..=5);
        let mut artifact_ids: Vec<String> = (0..n_artifacts)
            .map(|_| {
                let a = self.artifact_ref();
                self.artifact_id(a)
            })
            .collect();
        let n_evidence = if self.n_evidence == 0 {
            0
        } else {
            self.rng.gen_range(0..=3)
        };
        let evidence_ids: Vec<String> = (0..n_evidence)
            .map(|_| {
                let e = self.rng.gen_range(0..self.n_evidence);
                self.evidence_id(e)
            })
            .collect();
        let r = &mut self.rng;
        let (scope, scope_key) = if artifact_ids.is_empty() || r.gen_bool(0.4) {
            ("workspace", "workspace".to_owned())
        } else {
            artifact_ids.sort();
            artifact_ids.dedup();
            ("artifact", format!("artifact:{}", artifact_ids.join(",")))
        };
        let style = pick(r, &["bullet", "executive", "action_items", "detailed"]);
        let provider = match r.gen_range(0..100) {
            0..25 => SqlValue::Null,
            _ => text(pick(r, &["heuristic", "langextract", "ollama", "openai"])),
        };
        let prompt = if r.gen_bool(0.5) {
            SqlValue::Null
        } else {
            text(sentence(r, 4, 16))
        };
        let body = if r.gen_range(0..40) == 0 {
            long_text(r)
        } else {
            let n = r.gen_range(1..=6);
            (0..n)
                .map(|_| format!("• {}", sentence(r, 3, 14)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let created_at = text(timestamp(r));
        row(
            &cat::SUMMARIES,
            [
                ("id", text(id)),
                ("scope", text(scope)),
                ("scope_key", text(scope_key)),
                ("style", text(style)),
                ("provider", provider),
                ("prompt", prompt),
                ("summary_text", text(body)),
                ("artifact_ids_json", json(&strs(&artifact_ids), false)),
                ("evidence_ids_json", json(&strs(&evidence_ids), false)),
                ("created_at", created_at),
            ],
        )
    }

    fn entity(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("document_entities"), i, 5);
        let document_id = self.doc_ref(Pool::Pdf);
        let r = &mut self.rng;
        let label = pick(
            r,
            &[
                "ORG", "MONEY", "DATE", "GPE", "PERSON", "PRODUCT", "EVENT", "PERCENT",
            ],
        );
        let entity = sentence(r, 1, 3);
        let start = r.gen_range(0..40_000);
        let end = start + entity.chars().count() as i64;
        let page = self.maybe(0.18, |g| SqlValue::Integer(g.rng.gen_range(1..300)));
        let context = self.maybe(0.2, |g| text(sentence(&mut g.rng, 4, 18)));
        row(
            &cat::DOCUMENT_ENTITIES,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("label", text(label)),
                ("text", text(entity)),
                ("start_char", SqlValue::Integer(start)),
                ("end_char", SqlValue::Integer(end)),
                ("page", page),
                ("entity_context", context),
                ("source_index", SqlValue::Integer(self.rng.gen_range(0..20))),
            ],
        )
    }

    fn heading(&mut self, level: i64, depth: u32) -> J {
        let n_children = if depth == 0 {
            0
        } else {
            self.rng.gen_range(0..3)
        };
        let children: Vec<J> = (0..n_children)
            .map(|_| self.heading(level + 1, depth - 1))
            .collect();
        let r = &mut self.rng;
        let n_content = r.gen_range(0..3);
        obj(vec![
            ("level", J::Int(level)),
            ("title", sentence(r, 1, 6).into()),
            (
                "content",
                J::Arr((0..n_content).map(|_| sentence(r, 4, 14).into()).collect()),
            ),
            ("subsections", J::Arr(children)),
        ])
    }

    fn structure(&mut self, i: u64) -> SqlRow {
        // One row per document; rows past the documents are orphans.
        let document_id = self.doc_id(i);
        let hierarchy = if self.rng.gen_range(0..100) < 3 {
            SqlValue::Null
        } else {
            let big = self.rng.gen_range(0..50) == 0;
            let n = if big {
                self.rng.gen_range(60..350)
            } else {
                self.rng.gen_range(1..5)
            };
            let sections: Vec<J> = (0..n).map(|_| self.heading(1, 2)).collect();
            let title = if i < self.n_artifact {
                self.artifact_filename(i)
            } else {
                sentence(&mut self.rng, 2, 5)
            };
            json(
                &obj(vec![
                    ("title", title.into()),
                    ("sections", J::Arr(sections)),
                ]),
                false,
            )
        };
        row(
            &cat::DOCUMENT_STRUCTURE,
            [
                ("document_id", text(document_id)),
                ("hierarchy_json", hierarchy),
            ],
        )
    }

    fn metric_hit(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("document_metric_hits"), i, 5);
        let document_id = self.doc_ref(Pool::Pdf);
        let r = &mut self.rng;
        let kind = pick(
            r,
            &["revenue", "growth", "margin", "profit", "date", "ratio"],
        );
        let value = match r.gen_range(0..100) {
            0..17 => SqlValue::Null,
            17..50 => text(format!("{:.1}M", r.gen_range(0.1..900.0_f64))),
            50..80 => text(format!("{:.1}", r.gen_range(0.0..100.0_f64))),
            _ => text(r.gen_range(0..1_000_000).to_string()),
        };
        let context = text(sentence(r, 3, 16));
        let position = SqlValue::Integer(r.gen_range(0..40_000));
        let page = self.maybe(0.2, |g| SqlValue::Integer(g.rng.gen_range(1..300)));
        row(
            &cat::DOCUMENT_METRIC_HITS,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("type", text(kind)),
                ("value", value),
                ("metric_context", context),
                ("position", position),
                ("page", page),
                ("source_index", SqlValue::Integer(self.rng.gen_range(0..20))),
            ],
        )
    }

    fn memory(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("cipher_memory"), i, 4);
        let user_id = if self.rng.gen_range(0..100) < 16 {
            SqlValue::Null
        } else {
            let u = self.rng.gen_range(0..self.n_users);
            text(self.user_id(u))
        };
        let r = &mut self.rng;
        // Free text: no CHECK constraint (spec S8).
        let category = pick(
            r,
            &[
                "fact",
                "preference",
                "team_memory",
                "skill_learned",
                "workflow",
                "other",
                "Custom category 🧪",
            ],
        );
        let content = match category {
            "team_memory" => obj(vec![
                (
                    "memory_id",
                    uuid_like(self.seed, salt("memory_id"), i, 4).into(),
                ),
                ("workspace_id", "ws-finance".into()),
                ("key", sentence(r, 1, 3).into()),
                // A JSON document inside a JSON string.
                (
                    "content",
                    obj(vec![("owner", pick(r, &["dana", "李雷", "bob"]).into())])
                        .dumps(false)
                        .into(),
                ),
            ]),
            "preference" => obj(vec![
                ("key", pick(r, &["theme", "language", "density"]).into()),
                (
                    "value",
                    pick(r, &["dark", "light", "de-DE", "ja-JP"]).into(),
                ),
            ]),
            "fact" => obj(vec![
                ("entity", sentence(r, 1, 3).into()),
                (
                    "value",
                    format!("${:.1} million", r.gen_range(0.1..90.0_f64)).into(),
                ),
                (
                    "period",
                    format!("Q{} {}", r.gen_range(1..=4), r.gen_range(2023..=2026)).into(),
                ),
            ]),
            _ => obj(vec![
                ("text", sentence(r, 4, 24).into()),
                ("confidence", J::Float(ratio(r))),
                (
                    "entities",
                    J::Arr(
                        (0..r.gen_range(0..3))
                            .map(|_| sentence(r, 1, 1).into())
                            .collect(),
                    ),
                ),
            ]),
        };
        let context = if r.gen_bool(0.27) {
            SqlValue::Null
        } else if category == "team_memory" {
            json(
                &obj(vec![
                    ("type", "team_memory".into()),
                    ("author", pick(r, &["dana", "李雷", "bob"]).into()),
                ]),
                false,
            )
        } else {
            json(
                &obj(vec![
                    (
                        "source",
                        pick(r, &["cli", "chat", "financial_report.pdf"]).into(),
                    ),
                    ("session", J::Int(r.gen_range(1..10_000))),
                ]),
                false,
            )
        };
        let created_at = self.maybe(0.02, Self::ts);
        row(
            &cat::CIPHER_MEMORY,
            [
                ("id", text(id)),
                ("category", text(category)),
                ("content_json", json(&content, false)),
                ("context_json", context),
                ("user_id", user_id),
                ("created_at", created_at),
            ],
        )
    }

    fn user_pref(&mut self, i: u64) -> SqlRow {
        let user_id = self.user_id(i);
        let r = &mut self.rng;
        let keys = ["theme", "language", "timezone", "density", "default_model"];
        let n = r.gen_range(1..=keys.len());
        let prefs: Vec<(String, J)> = keys[..n]
            .iter()
            .map(|k| {
                let v = match r.gen_range(0..10) {
                    0 => J::Int(r.gen_range(0..100)),
                    1 => J::Bool(r.gen_bool(0.5)),
                    2 => obj(vec![(
                        "nested",
                        J::Arr(vec![J::Int(1), J::Int(2), J::Int(3)]),
                    )]),
                    _ => pick(
                        r,
                        &[
                            "dark",
                            "light",
                            "de-DE",
                            "ja-JP",
                            "Asia/Tokyo",
                            "gemini-2.5-flash",
                        ],
                    )
                    .into(),
                };
                ((*k).to_owned(), v)
            })
            .collect();
        let updated_at = self.maybe(0.05, Self::ts);
        row(
            &cat::USER_PREFS,
            [
                ("user_id", text(user_id)),
                ("preferences_json", json(&J::Obj(prefs), false)),
                ("updated_at", updated_at),
            ],
        )
    }

    fn skill(&mut self, i: u64) -> SqlRow {
        const NAMES: &[&str] = &[
            "extract_tables",
            "web_search",
            "summarize_pdf",
            "tag_documents",
        ];
        let id = self.key(salt("skills_registry"), i, 4);
        let r = &mut self.rng;
        // `name` is UNIQUE: past the well-known names, the index makes it so.
        let name = match NAMES.get(usize::try_from(i).unwrap_or(usize::MAX)) {
            Some(n) => (*n).to_owned(),
            None => {
                let mut w = String::new();
                push_word(r, &mut w);
                format!("skill_{i}_{w}")
            }
        };
        let parameters = if r.gen_bool(0.3) {
            J::Obj(vec![])
        } else {
            obj(vec![
                (
                    "input",
                    obj(vec![("type", "string".into()), ("required", true.into())]),
                ),
                ("max_items", J::Int(r.gen_range(1..50))),
            ])
        };
        let n = r.gen_range(1..=5);
        let steps: Vec<J> = (0..n)
            .map(|_| {
                obj(vec![
                    (
                        "tool",
                        pick(r, &["search", "summarize", "extract_tags", "docling"]).into(),
                    ),
                    ("args", obj(vec![("k", J::Int(r.gen_range(1..10)))])),
                ])
            })
            .collect();
        let workflow = obj(vec![("steps", J::Arr(steps))]);
        let description = sentence(r, 4, 20);
        let enabled = SqlValue::Integer(i64::from(r.gen_bool(0.75)));
        let created_at = self.maybe(0.05, Self::ts);
        row(
            &cat::SKILLS_REGISTRY,
            [
                ("id", text(id)),
                ("name", text(name)),
                ("description", text(description)),
                ("parameters_json", json(&parameters, false)),
                ("workflow_def_json", json(&workflow, false)),
                ("enabled", enabled),
                ("created_at", created_at),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::catalogue::TABLES;
    use crate::normalise::{to_canonical, Lossy};

    fn all_rows(rows: u64, seed: u64) -> Vec<(&'static Table, SqlRow)> {
        let mut g = Generator::new(seed, &plan(rows));
        let mut out = Vec::new();
        while let Some((t, batch)) = g.next_batch() {
            out.extend(batch.into_iter().map(|r| (t, r)));
        }
        out
    }

    #[test]
    fn plan_is_exact_and_covers_every_table() {
        for rows in [
            0,
            1,
            5,
            16,
            17,
            18,
            50,
            100,
            999,
            5000,
            19_453,
            1_000_000,
            123_456_789,
        ] {
            let p = plan(rows);
            assert_eq!(p.len(), 17);
            assert_eq!(p.iter().map(|(_, n)| n).sum::<u64>(), rows, "{rows}");
            for ((t, _), want) in p.iter().zip(TABLES) {
                assert_eq!(t.sqlite, want.sqlite);
            }
            if rows >= 17 {
                assert!(p.iter().all(|(_, n)| *n > 0), "{rows}: {p:?}");
            }
        }
    }

    #[test]
    fn plan_follows_the_medium_fixture() {
        // At the medium fixture's own size, its exact counts.
        let p = plan(19_453);
        for ((_, n), (_, want)) in p.iter().zip(MEDIUM.iter()) {
            assert_eq!(n, want);
        }
        // Elsewhere, within one row of the exact share.
        for rows in [1000, 5000, 100_000] {
            for ((t, n), (_, w)) in plan(rows).iter().zip(MEDIUM.iter()) {
                let exact = rows as f64 * *w as f64 / 19_453.0;
                assert!(
                    (*n as f64 - exact).abs() <= 1.0 || (exact < 1.0 && *n == 1),
                    "{rows} {}: {n} vs {exact}",
                    t.sqlite
                );
            }
        }
        let p = plan(10_000);
        let top: Vec<_> = {
            let mut v = p.clone();
            v.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
            v.iter().take(4).map(|(t, _)| t.sqlite).collect()
        };
        assert_eq!(top, ["logentry", "evidence", "fact", "section"]);
    }

    #[test]
    fn the_same_seed_gives_the_same_rows() {
        let a = all_rows(1500, 7);
        let b = all_rows(1500, 7);
        assert_eq!(a.len(), 1500);
        assert!(a == b);
        let c = all_rows(1500, 8);
        assert!(a != c);
    }

    #[test]
    fn batches_stay_within_one_table_and_count_exactly() {
        let p = plan(20_000);
        let mut g = Generator::new(1, &p);
        let mut per_table = vec![0u64; 17];
        while let Some((t, batch)) = g.next_batch() {
            assert!(!batch.is_empty() && batch.len() <= BATCH_ROWS);
            let i = TABLES.iter().position(|x| *x == t).unwrap();
            per_table[i] += batch.len() as u64;
        }
        let want: Vec<u64> = p.iter().map(|(_, n)| *n).collect();
        assert_eq!(per_table, want);
    }

    #[test]
    fn every_row_is_canonical_and_keys_are_unique() {
        for seed in [0, 1, 42] {
            let rows = all_rows(4000, seed);
            let mut keys = HashSet::new();
            let (mut nan, mut odd, mut unicode) = (0, 0, 0);
            for (t, r) in &rows {
                assert_eq!(r.len(), t.columns.len());
                let c = to_canonical(t, r).unwrap_or_else(|e| panic!("{e}"));
                assert!(
                    keys.insert((t.sqlite, r[0].display())),
                    "{} {:?}",
                    t.sqlite,
                    r[0]
                );
                nan += c
                    .lossy
                    .iter()
                    .filter(|(_, l)| *l == Lossy::NonFiniteJson)
                    .count();
                assert!(c.lossy.iter().all(|(_, l)| *l == Lossy::NonFiniteJson));
                let key = r[0].display();
                odd += usize::from(key.contains([' ', '"', ',', '(', '%']));
                unicode += r
                    .iter()
                    .filter(|v| v.as_str().is_some_and(|s| !s.is_ascii()))
                    .count();
            }
            assert!(
                nan > 0 && odd > 0 && unicode > 1000,
                "{nan} {odd} {unicode}"
            );
        }
    }

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

    #[test]
    fn ids_are_uuid_shaped_and_distinct() {
        let mut seen = HashSet::new();
        for i in 0..200_000 {
            let id = uuid_like(9, S_DOCUMENT, i, 4);
            assert!(seen.insert(id.clone()), "{id}");
            let b = id.as_bytes();
            assert_eq!(b.len(), 36);
            assert_eq!((b[8], b[13], b[18], b[23]), (b'-', b'-', b'-', b'-'));
            assert_eq!(b[14], b'4');
            assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'));
        }
    }
}

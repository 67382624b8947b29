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

mod generator;
mod ids;
mod rows_analysis;
mod rows_documents;
mod rows_findings;
mod rows_user;
mod text;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::catalogue::{self as cat, Table};
use crate::db::{SqliteDatabase, SqliteOptions};
use crate::error::{Error, IoContext, Result};
use crate::normalise::SqlRow;

use generator::Generator;

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
    crate::sync::blocking("fixture generation", move || create_new(&owned)).await?;
    let result = write_rows(path, opts).await;
    if result.is_err() {
        // Best effort: a half-written fixture must not pass for a whole one.
        let owned = path.to_path_buf();
        let _ = crate::sync::blocking("fixture generation", move || {
            let _ = std::fs::remove_file(suffixed(&owned, "-journal"));
            std::fs::remove_file(&owned).at(&owned)
        })
        .await;
    }
    result
}

/// Create `path` as a new empty file (SQLite takes it as an empty database).
/// `create_new` refuses an existing file atomically.
fn create_new(path: &Path) -> Result<()> {
    for leftover in [suffixed(path, "-journal"), suffixed(path, "-wal")] {
        if leftover.try_exists().at(&leftover)? {
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
        Err(e) => Err(Error::io_at(e, path)),
    }
}

/// A blocking task that panicked passes the panic on; one that was cancelled (the
/// runtime is shutting down) is an error.
fn join_error(e: tokio::task::JoinError) -> Error {
    if e.is_panic() {
        std::panic::resume_unwind(e.into_panic());
    }
    Error::from(std::io::Error::other(format!(
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
}

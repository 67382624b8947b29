//! The fixture generator writes a DoX file the SQLite backend reads back in full,
//! with exactly the planned rows, every one accepted by the normaliser.

use std::collections::HashSet;
use std::path::Path;

use dualwrite::catalogue::{self, Table, TABLES};
use dualwrite::db::SqliteDatabase;
use dualwrite::generate::{generate, plan, GenerateOptions};
use dualwrite::normalise::{to_canonical, Lossy, SqlRow, SqlValue};
use dualwrite::Error;

const ROWS: u64 = 5_000;

async fn open_read_only(path: &Path) -> SqliteDatabase {
    SqliteDatabase::open_read_only(path).await.unwrap()
}

/// Every row of a table, page by page.
async fn all_rows(db: &SqliteDatabase, t: &'static Table) -> Vec<SqlRow> {
    let mut out: Vec<SqlRow> = Vec::new();
    loop {
        let after = out.last().map(|r| r[0].clone());
        let page = db.page(t, after, 1000).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

fn text<'a>(t: &Table, row: &'a SqlRow, column: &str) -> Option<&'a str> {
    row[t.index_of(column)].as_str()
}

#[tokio::test]
async fn generated_file_has_exact_counts_and_every_row_normalises() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gen.sqlite3");
    let opts = GenerateOptions {
        rows: ROWS,
        seed: 42,
    };
    let report = generate(&path, &opts).await.unwrap();
    assert_eq!(report.total, ROWS);
    assert_eq!(report.tables.iter().map(|t| t.rows).sum::<u64>(), ROWS);

    // A second run never overwrites.
    let err = generate(&path, &opts).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("already exists")),
        "{err}"
    );

    let db = open_read_only(&path).await;
    let planned = plan(ROWS);
    let mut total = 0;
    let (mut non_finite, mut odd_keys, mut non_ascii) = (0, 0, 0);
    let mut tables = Vec::new();
    for ((t, want), line) in planned.iter().zip(&report.tables) {
        assert_eq!(line.table, t.sqlite);
        assert_eq!(line.rows, *want, "{}", t.sqlite);
        assert_eq!(db.count(t).await.unwrap(), *want, "{}", t.sqlite);
        let rows = all_rows(&db, t).await;
        assert_eq!(rows.len() as u64, *want, "{}", t.sqlite);
        total += rows.len() as u64;
        for r in &rows {
            let c = to_canonical(t, r).unwrap_or_else(|e| panic!("{e}"));
            non_finite += c
                .lossy
                .iter()
                .filter(|(_, l)| *l == Lossy::NonFiniteJson)
                .count();
            let key = r[0].display();
            if key.contains([' ', '"', ',', '(', ')', '%']) || !key.is_ascii() {
                odd_keys += 1;
            }
            non_ascii += r
                .iter()
                .filter(|v| v.as_str().is_some_and(|s| !s.is_ascii()))
                .count();
        }
        tables.push((*t, rows));
    }
    assert_eq!(total, ROWS);
    assert!(non_finite > 0, "no NaN/Infinity token");
    assert!(odd_keys > 0, "no key made of odd characters");
    assert!(non_ascii > 0, "no non-ASCII text");

    // Orphans: children whose parent does not exist, and facts with artifact_id "".
    let rows_of = |t: &Table| &tables.iter().find(|(x, _)| *x == t).unwrap().1;
    let ids =
        |t: &Table| -> HashSet<String> { rows_of(t).iter().map(|r| r[0].display()).collect() };
    let documents = ids(&catalogue::DOCUMENT);
    let artifacts = ids(&catalogue::ARTIFACT);
    let orphan_children: usize = TABLES
        .iter()
        .filter(|t| t.column("document_id").is_some() && t.key().sqlite != "document_id")
        .map(|t| {
            rows_of(t)
                .iter()
                .filter(|r| !documents.contains(text(t, r, "document_id").unwrap()))
                .count()
        })
        .sum();
    assert!(orphan_children > 0, "no orphan child of a document");
    let facts = rows_of(&catalogue::FACT);
    assert!(facts
        .iter()
        .any(|r| text(&catalogue::FACT, r, "artifact_id") == Some("")));
    assert!(facts.iter().any(|r| {
        let a = text(&catalogue::FACT, r, "artifact_id").unwrap();
        !a.is_empty() && !artifacts.contains(a)
    }));

    // Shapes the spec calls out.
    let tags = rows_of(&catalogue::TAGROW);
    assert!(tags.iter().any(|r| {
        text(&catalogue::TAGROW, r, "source_ptr")
            .is_some_and(|s| s.starts_with("hrm-refined:steps"))
    }));
    let memory = rows_of(&catalogue::CIPHER_MEMORY);
    assert!(memory
        .iter()
        .any(|r| text(&catalogue::CIPHER_MEMORY, r, "category") == Some("team_memory")));
    let users: HashSet<_> = rows_of(&catalogue::USER_PREFS)
        .iter()
        .map(|r| r[0].display())
        .collect();
    assert!(users.contains("dev_user"));
    let skills = rows_of(&catalogue::SKILLS_REGISTRY);
    assert!(skills
        .iter()
        .all(|r| matches!(r[5], SqlValue::Integer(0 | 1))));
    let artifact_rows = rows_of(&catalogue::ARTIFACT);
    assert!(artifact_rows
        .iter()
        .any(|r| text(&catalogue::ARTIFACT, r, "report_week") == Some("")));
    // Python's separators in JSON text.
    let evidence = rows_of(&catalogue::EVIDENCE);
    assert!(evidence.iter().any(|r| {
        text(&catalogue::EVIDENCE, r, "full_data_json").is_some_and(|s| s.contains("\": "))
    }));
}

#[tokio::test]
async fn the_same_seed_generates_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.sqlite3"),
        dir.path().join("b.sqlite3"),
        dir.path().join("c.sqlite3"),
    );
    let opts = GenerateOptions {
        rows: ROWS,
        seed: 7,
    };
    generate(&a, &opts).await.unwrap();
    generate(&b, &opts).await.unwrap();
    generate(&c, &GenerateOptions { seed: 8, ..opts })
        .await
        .unwrap();
    let (a, b, c) = (
        open_read_only(&a).await,
        open_read_only(&b).await,
        open_read_only(&c).await,
    );
    let mut differs = false;
    for t in TABLES {
        let rows_a = a.raw_rows(t).await.unwrap();
        assert!(
            rows_a == b.raw_rows(t).await.unwrap(),
            "{} differs",
            t.sqlite
        );
        differs |= rows_a != c.raw_rows(t).await.unwrap();
    }
    assert!(differs, "another seed gave the same rows");
}

#[tokio::test]
async fn tiny_files_hold_exactly_the_rows_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    for rows in [0, 1, 16, 17, 40] {
        let path = dir.path().join(format!("tiny-{rows}.sqlite3"));
        let report = generate(&path, &GenerateOptions { rows, seed: rows })
            .await
            .unwrap();
        assert_eq!(report.total, rows);
        let db = open_read_only(&path).await;
        let mut total = 0;
        for t in TABLES {
            assert!(db.has_table(t), "{}", t.sqlite);
            let n = db.count(t).await.unwrap();
            if rows >= 17 {
                assert!(n > 0, "{rows}: {} is empty", t.sqlite);
            }
            total += n;
        }
        assert_eq!(total, rows);
    }
}

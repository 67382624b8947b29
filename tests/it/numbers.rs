//! JSON numbers through the real stack: jsonb keeps them as exact decimals and
//! prints them in its own notation. `verify` compares them by value, both ways,
//! and `SupabaseDatabase::fetch` reads every one of them.

use std::path::Path;

use dualwrite::backfill::{self, BackfillOptions};
use dualwrite::catalogue::{self, TABLES};
use dualwrite::db::{Database, SqliteDatabase, SqliteOptions};
use dualwrite::verify::{self, Format, KeyInfo, Verdict, VerifyOptions};

use crate::harness::PrivateDb;

/// `(key, the number as SQLite's JSON text holds it)`.
const NUMBERS: [(&str, &str); 10] = [
    ("n01-tiny", "1e-300"),
    ("n02-max", "1.7976931348623157e+308"),
    ("n03-u64", "12345678901234567890"),
    ("n04-negzero", "-0.0"),
    ("n05-beyond-double", "1e400"),
    ("n06-beyond-u64", "123456789012345678901234567890"),
    ("n07-digits17", "0.12345678901234567"),
    ("n08-2pow53", "9007199254740993"),
    ("n09-exp", "1E+2"),
    ("n10-trailing", "2.50"),
];

async fn numbers_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("numbers.sqlite3");
    // Opening for writing creates DoX's tables.
    drop(
        SqliteDatabase::open(&path, SqliteOptions::default())
            .await
            .unwrap(),
    );
    let c = rusqlite::Connection::open(&path).unwrap();
    for (key, n) in NUMBERS {
        c.execute(
            "INSERT INTO document_structure (document_id, hierarchy_json) VALUES (?1, ?2)",
            [key, &format!("{{\"v\": {n}, \"in\": [{n}]}}")],
        )
        .unwrap();
    }
    path
}

fn options(pg: &PrivateDb) -> VerifyOptions {
    let mut o = VerifyOptions::new(KeyInfo::of("SUPABASE_SERVICE_KEY", &pg.service_key()));
    o.tables = vec![&catalogue::DOCUMENT_STRUCTURE];
    o.listed_rows = 100;
    o
}

#[tokio::test]
async fn json_numbers_in_jsonb_notation_verify_equal_and_real_changes_differ() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let path = numbers_file(dir.path()).await;
    let pg = PrivateDb::new().await;
    let sb = pg.supabase();
    let mut bo = BackfillOptions::new(dir.path().join("state"));
    bo.tables = vec![&catalogue::DOCUMENT_STRUCTURE];
    let r = backfill::run(&path, &sb, &bo).await.unwrap();
    assert_eq!(
        (r.rows_rejected, r.rows_written),
        (0, NUMBERS.len() as u64),
        "{r:?}"
    );

    // jsonb really holds them in another notation.
    let sql = pg.sql().await;
    let stored = |key: &'static str| {
        let sql = &sql;
        async move {
            let row = sql
                .query_one(
                    "SELECT hierarchy->>'v' FROM document_structure WHERE document_id = $1",
                    &[&key],
                )
                .await
                .unwrap();
            row.get::<_, String>(0)
        }
    };
    assert_eq!(stored("n01-tiny").await, format!("0.{}1", "0".repeat(299)));
    assert!(stored("n02-max").await.starts_with("17976931348623157000"));
    assert_eq!(stored("n04-negzero").await, "0.0");
    assert_eq!(stored("n09-exp").await, "100");

    // Equal numbers in other notations are equal.
    let lite = SqliteDatabase::open_read_only(&path).await.unwrap();
    let report = verify::run(&lite, &sb, &options(&pg)).await.unwrap();
    let text = verify::render(&report, Format::Text);
    assert_eq!(report.verdict, Verdict::Equal, "{text}");
    assert_eq!(report.totals.equal, NUMBERS.len() as u64, "{text}");

    // The library's own reader reads every such row, numbers exact.
    let rows = sb.fetch(&catalogue::DOCUMENT_STRUCTURE, &[]).await.unwrap();
    assert_eq!(rows.len(), NUMBERS.len());
    let huge = rows
        .iter()
        .find(|r| r["document_id"] == "n05-beyond-double")
        .unwrap();
    assert_eq!(
        huge["hierarchy"]["v"].to_string(),
        format!("1{}", "0".repeat(400))
    );
    let big = rows
        .iter()
        .find(|r| r["document_id"] == "n06-beyond-u64")
        .unwrap();
    assert_eq!(
        big["hierarchy"]["v"].to_string(),
        "123456789012345678901234567890"
    );
    for t in TABLES {
        sb.fetch(t, &[]).await.unwrap();
    }

    // Numbers whose values really differ are different, and only those.
    for (key, other) in [
        ("n07-digits17", "0.12345678901234568"),
        ("n08-2pow53", "9007199254740992"),
        ("n03-u64", "12345678901234567891"),
        ("n06-beyond-u64", "123456789012345678901234567891"),
    ] {
        let n = sql
            .execute(
                &format!(
                    "UPDATE document_structure SET hierarchy = jsonb_set(hierarchy, '{{in,0}}', '{other}') \
                     WHERE document_id = $1"
                ),
                &[&key],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    let report = verify::run(&lite, &sb, &options(&pg)).await.unwrap();
    let text = verify::render(&report, Format::Text);
    assert_eq!(report.verdict, Verdict::Different, "{text}");
    let t = &report.tables[0];
    let mut differing: Vec<(&str, Option<&str>)> = t
        .rows
        .iter()
        .map(|d| {
            assert_eq!(d.kind.as_str(), "different", "{text}");
            (d.key.as_str(), d.columns[0].path.as_deref())
        })
        .collect();
    differing.sort();
    assert_eq!(
        differing,
        vec![
            ("n03-u64", Some("$.in[0]")),
            ("n06-beyond-u64", Some("$.in[0]")),
            ("n07-digits17", Some("$.in[0]")),
            ("n08-2pow53", Some("$.in[0]")),
        ],
        "{text}"
    );
    assert_eq!(report.totals.equal, NUMBERS.len() as u64 - 4, "{text}");

    // JSON deeper than serde_json parses (128 levels) still leaves the table
    // verifiable: the page is read again as text, and the row differs.
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    sql.execute(
        "UPDATE document_structure SET hierarchy = $1::text::jsonb WHERE document_id = 'n09-exp'",
        &[&deep],
    )
    .await
    .unwrap();
    let report = verify::run(&lite, &sb, &options(&pg)).await.unwrap();
    let text = verify::render(&report, Format::Text);
    assert_eq!(report.tables[0].error, None, "{text}");
    let row = report.tables[0]
        .rows
        .iter()
        .find(|d| d.key == "n09-exp")
        .unwrap();
    assert!(
        row.columns[0].target.contains("serde_json cannot read"),
        "{text}"
    );
    assert_eq!(report.totals.different, 5, "{text}");
}

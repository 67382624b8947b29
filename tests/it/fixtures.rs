//! Real DoX files written by the original application, and files holding every
//! kind of value SQLite accepts.

use std::collections::BTreeMap;

use serde_json::json;

use dualwrite::catalogue::{self, TABLES};
use dualwrite::db::{Database, Dox, SqliteDatabase, SqliteOptions};
use dualwrite::model::Read;
use dualwrite::normalise;
use dualwrite::Error;

use crate::harness::{fixture, fixture_copy, PrivateDb};

fn schema(path: &std::path::Path) -> Vec<(String, Option<String>)> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut s = c
        .prepare("SELECT name, sql FROM sqlite_master ORDER BY name")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

const SMALL: [(&str, usize); 17] = [
    ("artifact", 16),
    ("document", 11),
    ("section", 72),
    ("doctable", 18),
    ("apiendpoint", 40),
    ("logentry", 300),
    ("tagrow", 60),
    ("fact", 133),
    ("evidence", 155),
    ("tagprompt", 6),
    ("summaries", 4),
    ("document_entities", 48),
    ("document_metric_hits", 30),
    ("document_structure", 3),
    ("cipher_memory", 10),
    ("user_prefs", 3),
    ("skills_registry", 3),
];

fn all_reads() -> Vec<Read> {
    [
        "get_artifacts",
        "get_facts",
        "get_all_evidence",
        "list_summaries",
        "list_documents",
        "list_entities",
        "list_metric_hits",
        "list_logs",
        "list_apis",
        "list_tags",
        "search_memory",
        "list_skills",
    ]
    .iter()
    .map(|m| Read::from_call(m, json!({})).unwrap())
    .collect()
}

#[tokio::test]
async fn real_dox_files_open_without_schema_changes_and_read_fully() {
    for name in [
        "dox-small.sqlite3",
        "dox-small-alembic.sqlite3",
        "dox-medium.sqlite3",
    ] {
        let (_d, path) = fixture_copy(name);
        let before = schema(&path);
        let db = SqliteDatabase::open(&path, SqliteOptions::default())
            .await
            .unwrap();
        let mut total = 0;
        for t in TABLES {
            let rows = db.fetch(t, &[]).await.unwrap();
            if name != "dox-medium.sqlite3" {
                let want = SMALL.iter().find(|(n, _)| *n == t.sqlite).unwrap().1;
                assert_eq!(rows.len(), want, "{name} {}", t.sqlite);
            }
            total += rows.len();
        }
        assert_eq!(
            total,
            if name == "dox-medium.sqlite3" {
                19_453
            } else {
                912
            },
            "{name}"
        );
        for r in all_reads() {
            db.read(r.clone())
                .await
                .unwrap_or_else(|e| panic!("{name} {r:?}: {e}"));
        }
        drop(db);
        assert_eq!(before, schema(&path), "{name}: the schema was changed");
    }
}

#[tokio::test]
async fn a_read_only_open_leaves_the_file_byte_for_byte() {
    let path = fixture("dox-small.sqlite3");
    let before = std::fs::read(&path).unwrap();
    let db = SqliteDatabase::open_read_only(&path).await.unwrap();
    assert_eq!(db.get_artifacts().await.unwrap().len(), 16);
    drop(db);
    assert_eq!(before, std::fs::read(&path).unwrap());
}

#[tokio::test]
async fn the_alembic_variant_reads_and_writes_its_json_column() {
    let (_d, path) = fixture_copy("dox-small-alembic.sqlite3");
    let db = SqliteDatabase::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    let small = SqliteDatabase::open_read_only(fixture("dox-small.sqlite3"))
        .await
        .unwrap();
    assert_eq!(
        db.fetch(&catalogue::DOCTABLE, &[]).await.unwrap(),
        small.fetch(&catalogue::DOCTABLE, &[]).await.unwrap(),
        "same content under the legacy column name"
    );
    let w = dualwrite::model::Write::from_call(
        "add_table",
        json!({"table": {"id": "tbl-new", "document_id": "d", "order": 1, "json": {"rows": [[1]]}}}),
    )
    .unwrap();
    db.apply(w).await.unwrap();
    drop(db);
    let c = rusqlite::Connection::open(&path).unwrap();
    let stored: String = c
        .query_row("SELECT json FROM doctable WHERE id = 'tbl-new'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored, r#"{"rows":[[1]]}"#);
}

#[tokio::test]
async fn every_fixture_row_round_trips_through_supabase_equal_after_normalisation() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let sb = pg.supabase();
    for name in ["dox-small.sqlite3", "dox-small-alembic.sqlite3"] {
        let lite = SqliteDatabase::open_read_only(fixture(name)).await.unwrap();
        for t in TABLES {
            let raw = lite.raw_rows(t).await.unwrap();
            for chunk in raw.chunks(200) {
                sb.upsert_rows(t, chunk)
                    .await
                    .unwrap_or_else(|e| panic!("{name} {}: {e}", t.sqlite));
            }
            let (l, r) = (
                lite.fetch(t, &[]).await.unwrap(),
                sb.fetch(t, &[]).await.unwrap(),
            );
            assert_eq!(l.len(), r.len(), "{name} {}", t.sqlite);
            for (a, b) in l.iter().zip(&r) {
                assert_eq!(a, b, "{name} {}", t.sqlite);
            }
        }
    }
    let lossy: BTreeMap<_, _> = sb.lossy_counts();
    assert!(
        lossy
            .keys()
            .all(|(_, _, k)| k.as_str() == "non_finite_json"),
        "{lossy:?}"
    );
}

/// Values SQLite accepts in any column: blobs, numbers in text columns, text in
/// integer columns, invalid UTF-8, NUL characters, huge and non-finite numbers.
#[tokio::test]
async fn any_value_sqlite_accepts_is_read_and_unrepresentable_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = odd_values_file(dir.path()).await;
    let db = SqliteDatabase::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    for t in TABLES {
        db.fetch(t, &[]).await.unwrap();
    }
    for r in all_reads() {
        db.read(r).await.unwrap();
    }
    let mut verdicts = BTreeMap::new();
    for t in TABLES {
        for row in db.raw_rows(t).await.unwrap() {
            let key = row[0].display();
            let v = match normalise::to_canonical(t, &row) {
                Ok(_) => "ok".to_owned(),
                Err(Error::Unrepresentable { column, .. }) => format!("refused:{column}"),
                Err(e) => panic!("{e}"),
            };
            verdicts.insert(key, v);
        }
    }
    assert_eq!(verdicts, odd_values_verdicts());
    needs_stack!();
    odd_values_land(&db).await;
}

/// The verdict of the normaliser on each row of [`odd_values_file`], by key.
pub fn odd_values_verdicts() -> BTreeMap<String, String> {
    [
        ("s-text-order", "refused:order"),
        ("s-ok", "ok"),
        ("t-blob", "refused:tag"),
        ("t-inf", "ok"),
        ("t-bad-utf8", "refused:tag"),
        ("t-nul", "refused:tag"),
        ("k", "refused:created_at"),
        ("x'6964'", "refused:id"),
        ("doc-odd", "ok"),
        ("🔑 \"quoted\", (paren) & ?=", "ok"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A DoX file holding values of every kind SQLite accepts, keys of odd characters.
pub async fn odd_values_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("odd.sqlite3");
    drop(
        SqliteDatabase::open(&path, SqliteOptions::default())
            .await
            .unwrap(),
    );
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "INSERT INTO section VALUES ('s-text-order', 'd', 'first', 'x', 2.5, 'not json');
         INSERT INTO section VALUES ('s-ok', 'd', 3, 'fine', 9223372036854775807, '[1, 2]');
         INSERT INTO tagrow VALUES ('t-blob', 'd', X'00FF', 1e999, NULL, NULL);
         INSERT INTO tagrow VALUES ('t-inf', 'd', 'inf', 1e999, NULL, 4.0);
         INSERT INTO tagrow VALUES ('t-bad-utf8', 'd', CAST(X'C328' AS TEXT), NULL, NULL, NULL);
         INSERT INTO tagrow VALUES ('t-nul', 'd', 'a' || char(0) || 'b', NULL, NULL, NULL);
         INSERT INTO skills_registry VALUES ('k', 'n', 'd', '{}', '{}', 'yes', 'not a time');
         INSERT INTO document VALUES (X'6964', 'p', 'pdf', NULL, NULL, NULL);
         INSERT INTO document VALUES ('doc-odd', 'p', 'pdf', 42, 1.5, NULL);
         INSERT INTO logentry VALUES ('🔑 \"quoted\", (paren) & ?=', 'd', NULL, NULL, NULL, NULL, NULL, NULL);",
    )
    .unwrap();
    drop(c);
    path
}

pub async fn odd_values_land(db: &SqliteDatabase) {
    // What can land does land, exactly, keys of any characters included.
    let pg = PrivateDb::new().await;
    let sb = pg.supabase();
    for t in [
        &catalogue::SECTION,
        &catalogue::TAGROW,
        &catalogue::LOGENTRY,
        &catalogue::DOCUMENT,
    ] {
        let ok: Vec<_> = db
            .raw_rows(t)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| normalise::to_canonical(t, r).is_ok())
            .collect();
        sb.upsert_rows(t, &ok).await.unwrap();
    }
    let tags = sb.fetch(&catalogue::TAGROW, &[]).await.unwrap();
    assert_eq!(tags.len(), 1);
    assert_eq!(tags[0]["score"], json!("Infinity"));
    assert_eq!(tags[0]["hrm_steps"], json!(4));
    let logs = sb.fetch(&catalogue::LOGENTRY, &[]).await.unwrap();
    assert_eq!(logs[0]["id"], json!("🔑 \"quoted\", (paren) & ?="));
    let docs = sb.fetch(&catalogue::DOCUMENT, &[]).await.unwrap();
    assert_eq!(
        (docs[0]["title"].clone(), docs[0]["source"].clone()),
        (json!("42"), json!("1.5"))
    );
    let secs = sb.fetch(&catalogue::SECTION, &[]).await.unwrap();
    assert_eq!(secs[0]["page"], json!(i64::MAX));
}

#[tokio::test]
async fn keyset_pages_cover_a_table_once_in_key_order() {
    let db = SqliteDatabase::open_read_only(fixture("dox-medium.sqlite3"))
        .await
        .unwrap();
    let t = &catalogue::LOGENTRY;
    let mut after = None;
    let mut keys = Vec::new();
    loop {
        let page = db.page(t, after.clone(), 777).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last[0].clone());
        keys.extend(page.iter().map(|r| r[0].display()));
    }
    assert_eq!(keys.len() as u64, db.count(t).await.unwrap());
    assert_eq!(keys.len(), 7_500);
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted, "strictly increasing, no duplicates");
}

/// The tracked files of this checkout (plus new ones not ignored), or `None`
/// when it is not a git checkout.
fn checkout_files() -> Option<Vec<String>> {
    let out = std::process::Command::new("git")
        .current_dir(crate::harness::repo())
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .split('\0')
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

#[test]
fn a_copy_of_the_repository_alone_in_a_temp_dir_loads_every_fixture() {
    // What a user's clone is: the repository's files, nothing beside them.
    let repo = crate::harness::repo();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("dualwrite");
    let files = checkout_files().unwrap_or_else(|| {
        std::fs::read_dir(repo.join("fixtures"))
            .unwrap()
            .map(|e| format!("fixtures/{}", e.unwrap().file_name().to_string_lossy()))
            .collect()
    });
    assert!(files.iter().any(|f| f == "fixtures/README.md"), "{files:?}");
    for f in &files {
        let src = repo.join(f);
        if !src.is_file() {
            continue; // deleted in the work tree
        }
        let dst = root.join(f);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&src, &dst).unwrap();
    }
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "only the copy lies in the temp dir"
    );
    let cache = tmp.path().join("cache");
    for (name, rows) in [
        ("dox-small.sqlite3", 912),
        ("dox-small-alembic.sqlite3", 912),
        ("dox-medium.sqlite3", 19_453),
    ] {
        let path = crate::harness::materialise_fixture(&root, &cache, name).unwrap();
        assert!(path.starts_with(&cache));
        let c = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let tables: Vec<String> = c
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let total: i64 = tables
            .iter()
            .map(|t| {
                c.query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| {
                    r.get::<_, i64>(0)
                })
                .unwrap()
            })
            .sum();
        assert_eq!(total, rows, "{name}");
        // A second call reuses the checked file.
        let again = crate::harness::materialise_fixture(&root, &cache, name).unwrap();
        assert_eq!(again, path);
    }

    // A damaged fixture is refused by name, never handed out.
    let zst = root.join("fixtures/dox-small.sqlite3.zst");
    let mut bytes = std::fs::read(&zst).unwrap();
    let mid = bytes.len() / 2;
    bytes.truncate(mid);
    std::fs::write(&zst, bytes).unwrap();
    let other = tmp.path().join("cache2");
    let err = crate::harness::materialise_fixture(&root, &other, "dox-small.sqlite3").unwrap_err();
    assert!(err.contains("dox-small.sqlite3.zst"), "{err}");
    assert!(!other.join("dox-small.sqlite3").exists());
}

#[test]
fn no_file_of_the_repository_names_a_path_outside_it() {
    let Some(files) = checkout_files() else {
        return;
    };
    // Spelled in pieces so that this file does not match itself.
    let outside = [
        format!("{}/shared", ".."),
        format!("/{}/", "work"),
        format!("/{}/", "home"),
    ];
    let mut found = Vec::new();
    for f in files
        .iter()
        .filter(|f| !f.ends_with(".zst") && f.as_str() != "Cargo.lock")
    {
        let Ok(text) = std::fs::read_to_string(crate::harness::repo().join(f)) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            if outside.iter().any(|o| line.contains(o.as_str())) {
                found.push(format!("{f}:{}: {line}", n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "paths outside the repository:\n{}",
        found.join("\n")
    );
}

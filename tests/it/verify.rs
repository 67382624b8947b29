//! `dualwrite verify`, `verify --repair` and `cutover check` against real DoX
//! files and a private Supabase (its own database and PostgREST).
//!
//! Until the backfill lands, a target is loaded here with
//! `SupabaseDatabase::upsert_rows` over `SqliteDatabase::page` batches.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{json, Value};

use dualwrite::catalogue::{self, Table, TABLES};
use dualwrite::cutover::{self, CutoverOptions};
use dualwrite::db::{Database, SecondaryFailure, SqliteDatabase, SupabaseDatabase};
use dualwrite::db::{RestClient, RestConfig};
use dualwrite::normalise;
use dualwrite::verify::{self, Check, Format, KeyInfo, Verdict, VerifyOptions, VerifyReport};

use crate::harness::{fixture_copy, stack, PrivateDb};

async fn open_read_only(path: &Path) -> SqliteDatabase {
    SqliteDatabase::open_read_only(path).await.unwrap()
}

/// Copy every row that can land from `path` into `target` (a stand-in for the backfill).
async fn load(path: &Path, target: &SupabaseDatabase) {
    let lite = open_read_only(path).await;
    for t in TABLES {
        let mut after = None;
        loop {
            let page = lite.page(t, after.clone(), 300).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last[0].clone());
            let ok: Vec<_> = page
                .into_iter()
                .filter(|r| normalise::to_canonical(t, r).is_ok())
                .collect();
            target
                .upsert_rows(t, &ok)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", t.sqlite));
        }
    }
}

fn service_key(pg: &PrivateDb) -> KeyInfo {
    KeyInfo::of("SUPABASE_SERVICE_KEY", &pg.service_key())
}

fn anon_jwt() -> String {
    dualwrite::keys::sign(
        stack().jwt_secret(),
        "anon",
        None,
        Duration::from_secs(3600),
    )
    .unwrap()
}

fn options(key: KeyInfo) -> VerifyOptions {
    let mut o = VerifyOptions::new(key);
    o.listed_rows = 1000;
    o
}

/// A copy of a fixture and a private Supabase loaded with it.
async fn loaded(fixture: &str) -> (tempfile::TempDir, PathBuf, PrivateDb) {
    let (dir, path) = fixture_copy(fixture);
    let pg = PrivateDb::new().await;
    load(&path, &pg.supabase()).await;
    (dir, path, pg)
}

type Found = BTreeSet<(String, &'static str, String, Vec<String>)>;

/// Every differing row of a report: (table, kind, key, columns).
fn found(r: &VerifyReport) -> Found {
    r.tables
        .iter()
        .flat_map(|t| {
            assert_eq!(t.rows_not_listed, 0, "{}: rows not listed", t.table);
            t.rows.iter().map(move |d| {
                (
                    t.table.to_owned(),
                    d.kind.as_str(),
                    d.key.clone(),
                    d.columns.iter().map(|c| c.column.to_owned()).collect(),
                )
            })
        })
        .collect()
}

fn nth_key(path: &Path, t: &Table, n: usize) -> String {
    let c = rusqlite::Connection::open(path).unwrap();
    let key = t.key().sqlite;
    c.query_row(
        &format!(
            "SELECT \"{key}\" FROM \"{}\" ORDER BY \"{key}\" LIMIT 1 OFFSET {n}",
            t.sqlite
        ),
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn dualwrite_bin(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    // A clean environment: only what the test gives, so no stack variable
    // or .env file can point the command elsewhere.
    let mut c = Command::new(env!("CARGO_BIN_EXE_dualwrite"));
    c.current_dir(dir)
        .env_clear()
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn each_fixture_loaded_verifies_equal_with_no_false_difference() {
    needs_stack!();
    for name in ["dox-small.sqlite3", "dox-small-alembic.sqlite3"] {
        let (_d, path, pg) = loaded(name).await;
        let lite = open_read_only(&path).await;
        let sb = pg.supabase();
        let r = verify::run(&lite, &sb, &options(service_key(&pg)))
            .await
            .unwrap();
        assert_eq!(found(&r), Found::new(), "{name}: false differences");
        assert_eq!(
            r.verdict,
            Verdict::Equal,
            "{name}\n{}",
            verify::render(&r, Format::Text)
        );
        assert_eq!(r.exit_code, 0);
        assert_eq!((r.totals.compared, r.totals.equal), (912, 912), "{name}");
        assert_eq!((r.totals.source_rows, r.totals.target_rows), (912, 912));
        assert_eq!(r.tables.len(), 17);

        let mut o = options(service_key(&pg));
        o.check = Check::Counts;
        let counts = verify::run(&lite, &sb, &o).await.unwrap();
        assert_eq!(counts.verdict, Verdict::Equal);
        assert_eq!(counts.totals.compared, 0, "counts only compares no content");
        o.check = Check::Sample { rows: 7 };
        let sample = verify::run(&lite, &sb, &o).await.unwrap();
        assert_eq!(
            sample.verdict,
            Verdict::Equal,
            "{}",
            verify::render(&sample, Format::Text)
        );
        assert_eq!(sample.tables[0].counts.compared, 7);
        for f in [Format::Text, Format::Json, Format::Markdown, Format::Html] {
            assert!(verify::render(&r, f).contains("artifact"));
        }
    }
}

#[tokio::test]
async fn planted_differences_are_found_exactly_and_representations_are_not() {
    needs_stack!();
    let (_d, path, pg) = loaded("dox-small.sqlite3").await;
    let (art, log, cm) = (
        &catalogue::ARTIFACT,
        &catalogue::LOGENTRY,
        &catalogue::CIPHER_MEMORY,
    );
    let (skills, tags, prefs) = (
        &catalogue::SKILLS_REGISTRY,
        &catalogue::TAGROW,
        &catalogue::USER_PREFS,
    );
    let a1 = nth_key(&path, art, 0);
    let (l1, l2) = (nth_key(&path, log, 1), nth_key(&path, log, 2));
    let (c1, c2, c3, c4) = (
        nth_key(&path, cm, 0),
        nth_key(&path, cm, 1),
        nth_key(&path, cm, 2),
        nth_key(&path, cm, 3),
    );
    let (s1, s2) = (nth_key(&path, skills, 0), nth_key(&path, skills, 1));
    let (t1, t2) = (nth_key(&path, tags, 0), nth_key(&path, tags, 1));
    let u3 = nth_key(&path, prefs, 2);

    // Equal values in other representations, on the SQLite side.
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        let at: String = c
            .query_row(
                "SELECT created_at FROM cipher_memory WHERE id = ?1",
                [&c3],
                |r| r.get(0),
            )
            .unwrap();
        assert!(at.ends_with('Z'), "{at}");
        let plus = at.replace('Z', "+00:00");
        c.execute(
            "UPDATE cipher_memory SET created_at = ?1 WHERE id = ?2",
            [&plus, &c3],
        )
        .unwrap();
        let at: String = c
            .query_row(
                "SELECT created_at FROM cipher_memory WHERE id = ?1",
                [&c4],
                |r| r.get(0),
            )
            .unwrap();
        let spaced = at.replace('T', " ").replace('Z', "");
        c.execute(
            "UPDATE cipher_memory SET created_at = ?1 WHERE id = ?2",
            [&spaced, &c4],
        )
        .unwrap();
        c.execute(
            "UPDATE skills_registry SET enabled = 'true' WHERE id = ?1 AND enabled = 1",
            [&s1],
        )
        .unwrap();
        let p: String = c
            .query_row(
                "SELECT preferences_json FROM user_prefs WHERE user_id = ?1",
                [&u3],
                |r| r.get(0),
            )
            .unwrap();
        let obj: serde_json::Map<String, Value> = serde_json::from_str(&p).unwrap();
        assert!(obj.len() >= 2, "{p}");
        // Keys reversed, odd spacing, and 1.0 where the target will hold 1.
        let mut members: Vec<String> = obj
            .iter()
            .rev()
            .map(|(k, v)| format!("{} :  {}", json!(k), v))
            .collect();
        members.push("\"n\": 1.0".into());
        let reordered = format!("{{ {} }}", members.join(" ,\n "));
        c.execute(
            "UPDATE user_prefs SET preferences_json = ?1 WHERE user_id = ?2",
            [&reordered, &u3],
        )
        .unwrap();
    }
    let sql = pg.sql().await;
    sql.execute(
        "UPDATE user_prefs SET preferences = preferences || '{\"n\": 1}' WHERE user_id = $1",
        &[&u3],
    )
    .await
    .unwrap();

    // Real differences, on the Supabase side.
    let extra = "zz-planted-extra";
    for (q, key) in [
        ("DELETE FROM log_entries WHERE id = $1", l1.as_str()),
        ("INSERT INTO tags (id, document_id, tag) VALUES ($1, 'd', 'planted')", extra),
        ("UPDATE artifacts SET filename = filename || ' (edited)' WHERE id = $1", &a1),
        ("UPDATE cipher_memory SET content = jsonb_set(content, '{confidence}', '0.5') WHERE id = $1", &c1),
        ("UPDATE cipher_memory SET created_at = created_at + interval '1 second' WHERE id = $1", &c2),
        ("UPDATE skills_registry SET enabled = NOT enabled WHERE id = $1", &s2),
        ("UPDATE tags SET score = score * (1 + 1e-9) WHERE id = $1", &t1),
        // A jsonb number no double can hold: the page stays readable, the row differs.
        ("UPDATE log_entries SET attrs = '{\"big\": 1e400}' WHERE id = $1", &l2),
        // Within the documented tolerance (relative 1e-12): not a difference.
        ("UPDATE tags SET score = score * (1 + 1e-14) WHERE id = $1", &t2),
    ] {
        let n = sql.execute(q, &[&key]).await.unwrap();
        assert_eq!(n, 1, "{q}");
    }
    let changed = sql
        .query_one(
            "SELECT score <> score * (1 + 1e-14) FROM tags WHERE id = $1",
            &[&t2],
        )
        .await
        .unwrap();
    assert!(
        changed.get::<_, bool>(0),
        "the in-tolerance change must change the stored float"
    );

    let want: Found = [
        ("logentry", "only in source", l1.clone(), vec![]),
        ("tagrow", "only in target", extra.to_owned(), vec![]),
        ("artifact", "different", a1.clone(), vec!["filename"]),
        ("cipher_memory", "different", c1.clone(), vec!["content"]),
        ("cipher_memory", "different", c2.clone(), vec!["created_at"]),
        ("skills_registry", "different", s2.clone(), vec!["enabled"]),
        ("tagrow", "different", t1.clone(), vec!["score"]),
        ("logentry", "different", l2.clone(), vec!["attrs"]),
    ]
    .into_iter()
    .map(|(t, k, key, cols)| {
        (
            t.to_owned(),
            k,
            key,
            cols.into_iter().map(str::to_owned).collect(),
        )
    })
    .collect();

    let lite = open_read_only(&path).await;
    let sb = pg.supabase();
    // Segments of 1000 rows (one per table here) and of 7 rows (many, with
    // differences on their edges) must find the same rows.
    for segment_rows in [1000, 7] {
        let mut o = options(service_key(&pg));
        o.segment_rows = segment_rows;
        let r = verify::run(&lite, &sb, &o).await.unwrap();
        assert_eq!(
            found(&r),
            want,
            "segments of {segment_rows}\n{}",
            verify::render(&r, Format::Text)
        );
        assert_eq!(r.verdict, Verdict::Different);
        assert_eq!(r.exit_code, 3);
        let t = &r.totals;
        assert_eq!(
            (
                t.only_in_source,
                t.only_in_target,
                t.different,
                t.cannot_land
            ),
            (1, 1, 6, 0)
        );
        assert_eq!(t.equal, 912 - 1 - 6);
        let cm_report = r
            .tables
            .iter()
            .find(|t| t.table == "cipher_memory")
            .unwrap();
        let diff = |key: &str| {
            &cm_report
                .rows
                .iter()
                .find(|d| d.key == key)
                .unwrap()
                .columns[0]
        };
        let content = diff(&c1);
        assert_eq!(content.path.as_deref(), Some("$.confidence"));
        assert_eq!(content.target, "0.5");
        let ts = diff(&c2);
        assert!(
            ts.source.ends_with(":46Z\"") && ts.target.ends_with(":47Z\""),
            "{ts:?}"
        );
    }

    // A sample as large as the table finds the same rows by key lookups.
    let mut o = options(service_key(&pg));
    o.tables = vec![log];
    o.check = Check::Sample { rows: 1000 };
    let r = verify::run(&lite, &sb, &o).await.unwrap();
    let sampled: Found = want.iter().filter(|w| w.0 == "logentry").cloned().collect();
    assert_eq!(found(&r), sampled, "{}", verify::render(&r, Format::Text));
    let big = &r.tables[0]
        .rows
        .iter()
        .find(|d| d.key == l2)
        .unwrap()
        .columns[0];
    // Read as the exact number jsonb holds (no double can), never as text.
    assert!(big.target.contains("10000000000"), "{big:?}");

    // The JSON report keeps to its documented shape.
    let r = verify::run(&lite, &sb, &options(service_key(&pg)))
        .await
        .unwrap();
    let j: Value = serde_json::from_str(&verify::render(&r, Format::Json)).unwrap();
    assert_eq!(j["schema"], "dualwrite.verify/1");
    assert_eq!(j["verdict"], "different");
    assert_eq!(j["key"]["role"], "service_role");
    assert_eq!(j["totals"]["only_in_target"], 1);
    let tags_json = j["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "tagrow")
        .unwrap();
    assert_eq!(tags_json["status"], "different");
    assert!(tags_json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["kind"] == "only_in_target" && d["key"] == extra));
    let md = verify::render(&r, Format::Markdown);
    assert!(
        md.contains("| `zz-planted-extra` | only in target |"),
        "{md}"
    );
}

#[tokio::test]
async fn rows_that_cannot_land_are_reported_by_row_and_keys_of_any_characters_verify() {
    needs_stack!();
    let (_d, db) = crate::harness::temp_sqlite().await;
    let path = db.path().to_path_buf();
    drop(db);
    let odd = [
        "🔑 \"quoted\", (paren) & ?=",
        "a,b.c:d",
        "back\\slash",
        " leading and trailing ",
        "%20+plus",
        "in.(x)",
        "",
    ];
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        for (i, k) in odd.iter().enumerate() {
            c.execute(
                "INSERT INTO logentry (id, document_id, message) VALUES (?1, 'd', ?2)",
                rusqlite::params![k, format!("m{i}")],
            )
            .unwrap();
        }
        // Python's NaN in JSON text lands as null: equal, and reported as a lossy conversion.
        c.execute(
            "UPDATE logentry SET attrs_json = '{\"x\": NaN, \"y\": 1}' WHERE id = 'a,b.c:d'",
            [],
        )
        .unwrap();
        c.execute_batch(
            "INSERT INTO tagrow VALUES ('t-nul', 'd', 'a' || char(0) || 'b', NULL, NULL, NULL);
             INSERT INTO tagrow VALUES ('t-blob', 'd', X'00FF', NULL, NULL, NULL);
             INSERT INTO tagrow VALUES ('t-ok', 'd', 'fine', 0.5, NULL, 1);
             INSERT INTO document VALUES (X'6964', 'p', 'pdf', NULL, NULL, NULL);
             INSERT INTO skills_registry VALUES ('k', 'n', 'd', '{}', '{}', 1, 'not a time');",
        )
        .unwrap();
    }
    let pg = PrivateDb::new().await;
    let sb = pg.supabase();
    load(&path, &sb).await;
    let lite = open_read_only(&path).await;
    let mut o = options(service_key(&pg));
    o.tables = verify::tables_named(&[
        "logentry".into(),
        "tagrow".into(),
        "document".into(),
        "skills_registry".into(),
    ])
    .unwrap();
    for check in [Check::Content, Check::Sample { rows: 100 }] {
        o.check = check;
        let r = verify::run(&lite, &sb, &o).await.unwrap();
        let logs = &r.tables[r.tables.iter().position(|t| t.table == "logentry").unwrap()];
        assert_eq!(
            logs.counts.equal,
            odd.len() as u64,
            "{check:?}: {}",
            verify::render(&r, Format::Text)
        );
        assert_eq!(logs.lossy.len(), 1);
        assert_eq!(
            (
                logs.lossy[0].column,
                logs.lossy[0].conversion,
                logs.lossy[0].rows
            ),
            ("attrs_json", "non_finite_json", 1)
        );
        let cannot: BTreeSet<(String, String)> = r
            .tables
            .iter()
            .flat_map(|t| {
                t.rows
                    .iter()
                    .map(move |d| (t.table.to_owned(), d.key.clone()))
            })
            .collect();
        let want: BTreeSet<(String, String)> = [
            ("tagrow", "t-nul"),
            ("tagrow", "t-blob"),
            ("document", "x'6964'"),
            ("skills_registry", "k"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(cannot, want, "{check:?}");
        for t in &r.tables {
            for d in &t.rows {
                assert_eq!(d.kind.as_str(), "cannot land");
                assert!(d.reason.as_deref().is_some_and(|r| !r.is_empty()));
            }
        }
        let tags = r.tables.iter().find(|t| t.table == "tagrow").unwrap();
        let nul = tags.rows.iter().find(|d| d.key == "t-nul").unwrap();
        assert!(nul.reason.as_deref().unwrap().contains("NUL"), "{nul:?}");
        assert_eq!(r.totals.cannot_land, 4);
        assert_eq!(
            r.verdict,
            Verdict::Different,
            "rows that cannot land are a difference"
        );
    }
}

#[tokio::test]
async fn a_deleted_and_an_extra_row_deep_in_a_table_of_thousands_are_found() {
    needs_stack!();
    let (_d, path, pg) = loaded("dox-medium.sqlite3").await;
    let log = &catalogue::LOGENTRY;
    let gone = nth_key(&path, log, 5_123);
    let sql = pg.sql().await;
    sql.execute("DELETE FROM log_entries WHERE id = $1", &[&gone])
        .await
        .unwrap();
    let extra = format!("{}-extra", nth_key(&path, log, 6_001));
    sql.execute(
        "INSERT INTO log_entries (id, document_id) VALUES ($1, 'd')",
        &[&extra],
    )
    .await
    .unwrap();
    let lite = open_read_only(&path).await;
    let r = verify::run(&lite, &pg.supabase(), &options(service_key(&pg)))
        .await
        .unwrap();
    assert_eq!(r.totals.compared, 19_453);
    let want: Found = [
        ("logentry".to_owned(), "only in source", gone, vec![]),
        ("logentry".to_owned(), "only in target", extra, vec![]),
    ]
    .into_iter()
    .collect();
    assert_eq!(found(&r), want);
    let t = r.tables.iter().find(|t| t.table == "logentry").unwrap();
    assert_eq!((t.counts.source_rows, t.counts.target_rows), (7_500, 7_500));
    assert_eq!(t.counts.equal, 7_499);
    assert!(t.segments >= 7 && t.segments_differing <= 2, "{t:?}");
}

#[tokio::test]
async fn repair_needs_confirmation_then_makes_a_drifted_target_equal() {
    needs_stack!();
    let (dir, path, pg) = loaded("dox-small.sqlite3").await;
    let (a1, a2) = (
        nth_key(&path, &catalogue::ARTIFACT, 0),
        nth_key(&path, &catalogue::ARTIFACT, 1),
    );
    let f1 = nth_key(&path, &catalogue::FACT, 3);
    let sql = pg.sql().await;
    sql.execute("DELETE FROM artifacts WHERE id = $1", &[&a1])
        .await
        .unwrap();
    sql.execute(
        "UPDATE artifacts SET status = 'drifted' WHERE id = $1",
        &[&a2],
    )
    .await
    .unwrap();
    sql.execute("DELETE FROM facts WHERE id = $1", &[&f1])
        .await
        .unwrap();
    sql.execute(
        "INSERT INTO tags (id, document_id, tag) VALUES ('zz-extra', 'd', 'x')",
        &[],
    )
    .await
    .unwrap();
    let key = pg.service_key();
    let env = [
        ("DUALWRITE_REST_URL", pg.url.as_str()),
        ("SUPABASE_SERVICE_KEY", key.as_str()),
    ];
    let p = path.to_str().unwrap();
    let lite = open_read_only(&path).await;
    let sb = pg.supabase();
    let before = found(
        &verify::run(&lite, &sb, &options(service_key(&pg)))
            .await
            .unwrap(),
    );
    assert_eq!(before.len(), 4);

    // No terminal, no --yes: nothing changes, and it says so.
    let o = dualwrite_bin(
        dir.path(),
        &env,
        &["verify", "--from-sqlite", p, "--repair", "--format", "json"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("nothing was changed"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        text(&o.stderr).contains("artifact: upsert 2 row(s)"),
        "{}",
        text(&o.stderr)
    );
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["repair"]["status"], "not_confirmed");
    let again = verify::run(&lite, &sb, &options(service_key(&pg)))
        .await
        .unwrap();
    assert_eq!(found(&again), before, "the target must be unchanged");

    // --yes: missing and different rows rewritten; the extra row kept without --delete-extra.
    let o = dualwrite_bin(
        dir.path(),
        &env,
        &[
            "verify",
            "--from-sqlite",
            p,
            "--repair",
            "--yes",
            "--format",
            "json",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["repair"]["status"], "applied");
    assert_eq!(j["repair"]["before_verdict"], "different");
    assert_eq!(j["totals"]["only_in_source"], 0);
    assert_eq!(j["totals"]["different"], 0);
    assert_eq!(j["totals"]["only_in_target"], 1);
    let upserted: u64 = j["repair"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["upserted"].as_u64().unwrap())
        .sum();
    assert_eq!(upserted, 3);

    let o = dualwrite_bin(
        dir.path(),
        &env,
        &[
            "verify",
            "--from-sqlite",
            p,
            "--repair",
            "--yes",
            "--delete-extra",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(
        text(&o.stdout).contains("verdict: EQUAL"),
        "{}",
        text(&o.stdout)
    );
    let after = verify::run(&lite, &sb, &options(service_key(&pg)))
        .await
        .unwrap();
    assert_eq!(after.verdict, Verdict::Equal);
    for out in [text(&o.stdout), text(&o.stderr)] {
        assert!(!out.contains(&key), "the key leaked");
    }
}

#[tokio::test]
async fn an_anon_key_gives_a_partial_visibility_report_never_equal() {
    needs_stack!();
    let (dir, path, pg) = loaded("dox-small.sqlite3").await;
    let anon = anon_jwt();
    let client = RestClient::new(&RestConfig {
        url: pg.url.clone(),
        key: SecretString::from(anon.clone()),
        user_jwt: None,
        schema: "public".into(),
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap();
    let sb = SupabaseDatabase::new(client);
    let lite = open_read_only(&path).await;
    let key = KeyInfo::of("SUPABASE_ANON_KEY", &anon);
    assert!(!key.full_visibility);
    let r = verify::run(&lite, &sb, &options(key.clone()))
        .await
        .unwrap();
    assert_eq!(r.verdict, Verdict::PartialVisibility);
    assert_eq!(r.exit_code, 1);
    assert_eq!(r.totals.target_rows, 0, "RLS hides every row from anon");
    assert!(verify::render(&r, Format::Html).contains("Visibility is partial"));

    // Even where everything it can see agrees, the verdict is not "equal".
    let (_e, empty) = crate::harness::temp_sqlite().await;
    let empty_pg = PrivateDb::new().await;
    let empty_sb = SupabaseDatabase::new(
        RestClient::new(&RestConfig {
            url: empty_pg.url.clone(),
            key: SecretString::from(anon.clone()),
            user_jwt: None,
            schema: "public".into(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
        })
        .unwrap(),
    );
    let r = verify::run(&empty, &empty_sb, &options(key)).await.unwrap();
    assert_eq!(r.totals.differences(), 0);
    assert_eq!(r.verdict, Verdict::PartialVisibility);

    let o = dualwrite_bin(
        dir.path(),
        &[
            ("DUALWRITE_REST_URL", &pg.url),
            ("SUPABASE_ANON_KEY", &anon),
        ],
        &["verify", "--from-sqlite", path.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("PARTIAL visibility") && out.contains("role anon"),
        "{out}"
    );
    assert!(!out.contains(&anon));

    // A repair from a view that cannot see every row would be wrong: refused, nothing written.
    let o = dualwrite_bin(
        dir.path(),
        &[
            ("DUALWRITE_REST_URL", &pg.url),
            ("SUPABASE_ANON_KEY", &anon),
        ],
        &[
            "verify",
            "--from-sqlite",
            path.to_str().unwrap(),
            "--repair",
            "--yes",
            "--format",
            "json",
        ],
    );
    // Refused: the key given cannot see every row (bad input, exit 2).
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["repair"]["status"], "refused");
    let service = verify::run(&lite, &pg.supabase(), &options(service_key(&pg)))
        .await
        .unwrap();
    assert_eq!(service.verdict, Verdict::Equal, "the target is unchanged");
}

fn write_lines(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn cutover_check_says_ready_only_when_everything_holds() {
    needs_stack!();
    let (dir, path, pg) = loaded("dox-small.sqlite3").await;
    let lite = open_read_only(&path).await;
    let sb = pg.supabase();
    let failures = dir.path().join("failures.ndjson");
    let rejects = dir.path().join("rejects.ndjson");
    std::fs::write(&failures, "").unwrap();
    std::fs::write(&rejects, "").unwrap();
    let opts = |f: Option<&Path>, r: Option<&Path>| {
        CutoverOptions::new(
            service_key(&pg),
            f.map(Path::to_path_buf),
            r.map(Path::to_path_buf),
        )
    };

    let r = cutover::check(&lite, &sb, &opts(Some(&failures), Some(&rejects)))
        .await
        .unwrap();
    assert!(r.ready, "{}", r.render_text());
    assert_eq!((r.verdict, r.exit_code()), ("READY", 0));
    assert!(r.failures.checked && r.rejects.checked);
    assert!(r.notes.is_empty(), "{:?}", r.notes);

    // No files given: still ready, but it says nothing was checked.
    let r = cutover::check(&lite, &sb, &opts(None, None)).await.unwrap();
    assert!(r.ready);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("no failure file was checked")),
        "{:?}",
        r.notes
    );
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("no reject file was checked")),
        "{:?}",
        r.notes
    );

    // A recorded secondary failure, not replayed.
    let w = dualwrite::model::Write::from_call(
        "add_tag",
        json!({"tag": {"id": "t-failed", "document_id": "d", "tag": "x"}}),
    )
    .unwrap();
    let failure = SecondaryFailure {
        method: "add_tag".into(),
        table: "tagrow".into(),
        key: "t-failed".into(),
        error: "supabase unreachable".into(),
        transient: true,
        at: "2025-09-20T15:00:00Z".into(),
        write: w,
    };
    write_lines(&failures, &[serde_json::to_value(&failure).unwrap()]);
    let r = cutover::check(&lite, &sb, &opts(Some(&failures), Some(&rejects)))
        .await
        .unwrap();
    assert!(!r.ready);
    assert_eq!(r.failures.left, 1);
    assert!(
        r.reasons.iter().any(|x| x.contains("secondary failure")),
        "{:?}",
        r.reasons
    );
    // Replayed: `replay` rewrites the log without it (no writer marks a line
    // "replayed"; such a mark is not honoured).
    let mut marked = serde_json::to_value(&failure).unwrap();
    marked["replayed"] = json!(true);
    write_lines(&failures, &[marked]);
    assert!(
        !cutover::check(&lite, &sb, &opts(Some(&failures), None))
            .await
            .unwrap()
            .ready
    );
    write_lines(&failures, &[]);
    assert!(
        cutover::check(&lite, &sb, &opts(Some(&failures), None))
            .await
            .unwrap()
            .ready
    );

    // A rejected row: settled while its table verifies equal, left once it does not.
    let a1 = nth_key(&path, &catalogue::ARTIFACT, 0);
    write_lines(
        &rejects,
        &[
            json!({"table": "artifact", "key": a1, "code": "22P02", "message": "invalid input", "row": {"id": a1}}),
        ],
    );
    let r = cutover::check(&lite, &sb, &opts(None, Some(&rejects)))
        .await
        .unwrap();
    assert!(r.ready, "{}", r.render_text());
    assert!(
        r.notes.iter().any(|n| n.contains("landed since")),
        "{:?}",
        r.notes
    );
    pg.sql()
        .await
        .execute("DELETE FROM artifacts WHERE id = $1", &[&a1])
        .await
        .unwrap();
    let r = cutover::check(&lite, &sb, &opts(None, Some(&rejects)))
        .await
        .unwrap();
    assert!(!r.ready);
    assert_eq!(r.rejects.left, 1);
    assert!(
        r.reasons
            .iter()
            .any(|x| x.starts_with("artifact: not equal by content")),
        "{:?}",
        r.reasons
    );
    assert!(
        r.reasons.iter().any(|x| x.contains("rejected row(s) left")),
        "{:?}",
        r.reasons
    );

    // The binary: exit 1 for NOT READY, JSON; a malformed record file blocks too.
    let key = pg.service_key();
    let env = [
        ("DUALWRITE_REST_URL", pg.url.as_str()),
        ("SUPABASE_SERVICE_KEY", key.as_str()),
    ];
    std::fs::write(&failures, "not json\n").unwrap();
    let o = dualwrite_bin(
        dir.path(),
        &env,
        &[
            "cutover",
            "check",
            "--from-sqlite",
            path.to_str().unwrap(),
            "--failures",
            failures.to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["verdict"], "NOT READY");
    assert_eq!(j["failures"]["malformed"], 1);
    assert_eq!(j["verify"]["schema"], "dualwrite.verify/1");

    // Repaired, every check passes: READY, exit 0.
    load(&path, &sb).await;
    let o = dualwrite_bin(
        dir.path(),
        &env,
        &[
            "cutover",
            "check",
            "--from-sqlite",
            path.to_str().unwrap(),
            "--rejects",
            rejects.to_str().unwrap(),
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(
        text(&o.stdout).starts_with("cutover check: READY"),
        "{}",
        text(&o.stdout)
    );

    // Without --failures, the failure log dual write keeps beside the file
    // checked (`<DB_PATH>.failures.ndjson`) is read.
    let default_log = dualwrite::config::default_failure_log(&path);
    write_lines(&default_log, &[serde_json::to_value(&failure).unwrap()]);
    let o = dualwrite_bin(
        dir.path(),
        &env,
        &["cutover", "check", "--from-sqlite", path.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("1 recorded secondary failure(s) not replayed"),
        "{}",
        text(&o.stdout)
    );
    std::fs::remove_file(&default_log).unwrap();

    // An anon key can never be READY.
    let anon = anon_jwt();
    let o = dualwrite_bin(
        dir.path(),
        &[
            ("DUALWRITE_REST_URL", &pg.url),
            ("SUPABASE_ANON_KEY", &anon),
        ],
        &["cutover", "check", "--from-sqlite", path.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("cannot see every row"),
        "{}",
        text(&o.stdout)
    );
}

/// The whole path as an operator runs it: a generated DoX file of odd shape
/// (odd keys, unicode, NaN, long texts), the real backfill, then verify and
/// the cutover check with their defaults.
#[tokio::test]
async fn generate_backfill_verify_and_cutover_through_the_binary() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let pg = PrivateDb::new().await;
    let key = pg.service_key();
    let env = [
        ("DUALWRITE_REST_URL", pg.url.as_str()),
        ("SUPABASE_SERVICE_KEY", key.as_str()),
    ];
    let file = dir.path().join("generated.sqlite3");
    let f = file.to_str().unwrap();
    let run = |args: &[&str]| {
        let o = dualwrite_bin(dir.path(), &env, args);
        (o.status.code(), text(&o.stdout), text(&o.stderr))
    };
    let (code, _, err) = run(&["fixtures", "generate", "--rows", "4000", "--out", f]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&["backfill", "--from-sqlite", f]);
    assert_eq!(code, Some(0), "{err}");

    let (code, out, err) = run(&["verify", "--from-sqlite", f, "--format", "json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["verdict"], "equal");
    assert_eq!(j["totals"]["equal"], 4000);
    let (code, out, _) = run(&["verify", "--from-sqlite", f, "--sample", "50"]);
    assert_eq!(code, Some(0), "{out}");

    let (code, out, err) = run(&["cutover", "check", "--from-sqlite", f]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("cutover check: READY"), "{out}");

    // A row the backfill recorded as rejected, and missing on the target: the
    // check finds the backfill's rejects.ndjson on its own.
    let state = std::fs::read_dir(dir.path().join("dualwrite-state"))
        .unwrap()
        .next()
        .expect("the backfill's state directory")
        .unwrap()
        .path();
    let gone = nth_key(&file, &catalogue::FACT, 7);
    pg.sql()
        .await
        .execute("DELETE FROM facts WHERE id = $1", &[&gone])
        .await
        .unwrap();
    write_lines(
        &state.join("rejects.ndjson"),
        &[json!({"table": "fact", "key": gone, "code": "23502", "message": "planted", "row": {}})],
    );
    let (code, out, _) = run(&["cutover", "check", "--from-sqlite", f]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("1 rejected row(s) left"), "{out}");
    assert!(
        out.contains("fact: not equal by content (1 missing"),
        "{out}"
    );
}

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        if let Ok(o) = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
        {
            let p = text(&o.stdout).trim().to_owned();
            if o.status.success() && !p.is_empty() {
                return PathBuf::from(p);
            }
        }
    }
    panic!("chromium is not installed: `apt-get install -y chromium` (.ci/run installs it)");
}

fn headless(chromium: &Path, profile: &Path, extra: &[&str], page: &Path) -> Output {
    Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_html_report_renders_in_headless_chromium() {
    needs_stack!();
    let chromium = chromium();
    let (dir, path, pg) = loaded("dox-small.sqlite3").await;
    let a1 = nth_key(&path, &catalogue::ARTIFACT, 2);
    let sql = pg.sql().await;
    sql.execute(
        "UPDATE artifacts SET filename = '<b>edited</b> & co' WHERE id = $1",
        &[&a1],
    )
    .await
    .unwrap();
    sql.execute(
        "INSERT INTO tags (id, document_id, tag) VALUES ('<script>x</script>', 'd', 't')",
        &[],
    )
    .await
    .unwrap();
    let page = dir.path().join("report.html");
    let key = pg.service_key();
    let o = dualwrite_bin(
        dir.path(),
        &[
            ("DUALWRITE_REST_URL", &pg.url),
            ("SUPABASE_SERVICE_KEY", &key),
        ],
        &[
            "verify",
            "--from-sqlite",
            path.to_str().unwrap(),
            "--format",
            "html",
            "--out",
            page.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("report written to"),
        "{}",
        text(&o.stdout)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("<script"), "no script; keys are escaped");
    for external in ["src=", "href=", "@import", "url("] {
        assert!(
            !html.contains(external),
            "the page must not load anything ({external})"
        );
    }

    let profile = tempfile::tempdir().unwrap();
    let png = dir.path().join("report.png");
    let shot = headless(
        &chromium,
        profile.path(),
        &[&format!("--screenshot={}", png.display())],
        &page,
    );
    assert!(shot.status.success(), "{}", text(&shot.stderr));
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(size > 20_000, "screenshot of {size} bytes");
    let png_bytes = std::fs::read(&png).unwrap();
    assert_eq!(&png_bytes[1..4], b"PNG");
    if let Ok(keep) = std::env::var("DUALWRITE_KEEP_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }

    let dom = headless(&chromium, profile.path(), &["--dump-dom"], &page);
    assert!(dom.status.success(), "{}", text(&dom.stderr));
    let dom = text(&dom.stdout);
    for t in TABLES {
        assert!(
            dom.contains(&format!("id=\"t-{}\"", t.sqlite)),
            "{} missing from the page",
            t.sqlite
        );
    }
    assert!(dom.contains(&a1), "the differing key is shown");
    assert!(
        dom.contains("&lt;script&gt;x&lt;/script&gt;"),
        "keys are escaped"
    );
    assert!(
        dom.contains("&lt;b&gt;edited&lt;/b&gt; &amp; co"),
        "values are escaped"
    );
    assert!(dom.contains("DIFFERENT"));
    assert!(dom.contains("class=\"b\""), "per-table bars");
}

/// The Supabase backend's reads are built on the same adapter reads as verify
/// (`SupabaseDatabase::page` / `rows_by_keys`): `dualwrite call get_artifacts`
/// returns every row verify reads, past PostgREST's max-rows, a number beyond
/// double precision, and jsonb nested deeper than serde_json parses.
#[tokio::test]
async fn supabase_reads_return_every_row_verify_reads() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let sql = pg.sql().await;
    sql.batch_execute(
        "INSERT INTO artifacts (id, filename, filepath, filetype, extras) \
         SELECT 'a' || lpad(i::text, 5, '0'), 'f' || i, '/p/' || i, 'pdf', \
                jsonb_build_object('i', i) FROM generate_series(1, 1005) i;
         UPDATE artifacts SET extras = '{\"big\": 1e400, \"tiny\": 1e-400}' WHERE id = 'a00007';",
    )
    .await
    .unwrap();
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    sql.execute(
        "UPDATE artifacts SET extras = jsonb_build_object('deep', $1::text::jsonb) WHERE id = 'a01003'",
        &[&deep],
    )
    .await
    .unwrap();

    // What verify reads: every row, in pages, through the adapter.
    let sb = pg.supabase();
    let t = &catalogue::ARTIFACT;
    let (mut pages, mut after) = (0, None::<String>);
    let mut read = 0;
    loop {
        let page = sb.page(t, after.as_deref(), 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last["id"].as_str().unwrap().to_owned());
        read += page.len();
        pages += 1;
    }
    assert_eq!((read, pages), (1005, 2));
    let by_key = sb
        .rows_by_keys(t, &["a00007", "a01003", "nope"])
        .await
        .unwrap();
    assert_eq!(by_key.len(), 2);
    // A key range, both ends included, past one max-rows page.
    let range = sb.range(t, "a00002", "a01004").await.unwrap();
    assert_eq!(range.len(), 1003);
    assert_eq!(
        (&range[0]["id"], &range[1002]["id"]),
        (&json!("a00002"), &json!("a01004"))
    );

    // What the Supabase backend's reads return: the same rows.
    let dir = tempfile::tempdir().unwrap();
    let key = pg.service_key();
    let db = dir.path().join("app.sqlite3");
    let o = dualwrite_bin(
        dir.path(),
        &[
            ("DB_BACKEND", "supabase"),
            ("DB_PATH", db.to_str().unwrap()),
            ("DUALWRITE_REST_URL", pg.url.as_str()),
            ("SUPABASE_SERVICE_KEY", key.as_str()),
        ],
        &["call", "get_artifacts", "--args", "{}"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let all: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(all.len(), 1005, "{}", text(&o.stderr));
    let ids: BTreeSet<&str> = all.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1005);
    let extras = |id: &str| all.iter().find(|a| a["id"] == id).unwrap()["extras"].clone();
    let big = extras("a00007");
    let big_text = big["big"].to_string();
    assert!(
        big_text.len() == 401 && big_text.starts_with("10000"),
        "1e400 read exactly: {big}"
    );
    // jsonb deeper than serde_json's 128 levels: the row is there, its value
    // read as the SQLite backend reads JSON text it cannot parse (a string).
    let deep_read = extras("a01003").to_string();
    assert!(
        deep_read.contains("[[[[") && deep_read.contains("1]]]]"),
        "{deep_read}"
    );
}

/// An artifact row of the SQLite file, as stored (every column as text).
fn artifact_row(path: &Path, id: &str) -> Option<Vec<Option<String>>> {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row(
        "SELECT id, filename, filepath, filetype, report_week, status, source_url, extra_json \
         FROM artifact WHERE id = ?1",
        [id],
        |r| (0..8).map(|i| r.get::<_, Option<String>>(i)).collect(),
    )
    .ok()
}

/// After cutover Supabase is the source: `verify --direction reverse` reports
/// what the SQLite file lacks or holds in excess with the right names, and
/// `--repair --direction reverse` fixes the file (never Supabase) through the
/// reverse mirror's write, after confirmation, then the file verifies EQUAL.
#[tokio::test]
async fn reverse_verify_names_sqlite_differences_and_repair_fixes_the_file() {
    needs_stack!();
    let (dir, path, pg) = loaded("dox-small.sqlite3").await;
    let (changed, missing) = (
        nth_key(&path, &catalogue::ARTIFACT, 0),
        nth_key(&path, &catalogue::ARTIFACT, 1),
    );
    let (changed_row, missing_row) = (
        artifact_row(&path, &changed).unwrap(),
        artifact_row(&path, &missing).unwrap(),
    );
    let key = service_key(&pg);
    let lite = open_read_only(&path).await;
    let sb = pg.supabase();
    let mut reverse = options(key.clone());
    reverse.direction = dualwrite::Direction::Reverse;
    let r = verify::run(&lite, &sb, &reverse).await.unwrap();
    assert_eq!(
        r.verdict,
        Verdict::Equal,
        "{}",
        verify::render(&r, Format::Text)
    );

    // Three differences made in the SQLite file.
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute(
            "UPDATE artifact SET status = 'drifted' WHERE id = ?1",
            [&changed],
        )
        .unwrap();
        c.execute("DELETE FROM artifact WHERE id = ?1", [&missing])
            .unwrap();
        c.execute(
            "INSERT INTO artifact (id, filename, filepath, filetype) VALUES ('zz-extra', 'x', '/x', 'pdf')",
            [],
        )
        .unwrap();
    }
    let supabase_before = sb.fetch(&catalogue::ARTIFACT, &[]).await.unwrap();

    let r = verify::run(&lite, &sb, &reverse).await.unwrap();
    let shown = verify::render(&r, Format::Text);
    assert_eq!(r.verdict, Verdict::Different, "{shown}");
    assert_eq!((r.source.kind, r.target.kind), ("supabase", "sqlite"));
    let labels: BTreeSet<(String, String)> = r
        .tables
        .iter()
        .flat_map(|t| t.rows.iter().map(|d| (r.kind_label(d.kind), d.key.clone())))
        .collect();
    assert_eq!(
        labels,
        BTreeSet::from([
            ("different".to_owned(), changed.clone()),
            ("missing in SQLite".to_owned(), missing.clone()),
            ("extra in SQLite".to_owned(), "zz-extra".to_owned()),
        ]),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("missing in SQLite {missing}")),
        "{shown}"
    );
    assert!(shown.contains("extra in SQLite zz-extra"), "{shown}");
    // The changed column, Supabase's value first (the source).
    let art = r.tables.iter().find(|t| t.table == "artifact").unwrap();
    let diff = art.rows.iter().find(|d| d.key == changed).unwrap();
    assert_eq!(diff.columns[0].column, "status");
    assert!(diff.columns[0].target.contains("drifted"), "{shown}");
    assert_eq!(
        (art.counts.source_rows, art.counts.target_rows),
        (art.counts.target_rows, art.counts.target_rows),
        "one missing and one extra: the same count on both sides"
    );
    let json: Value = serde_json::from_str(&verify::render(&r, Format::Json)).unwrap();
    assert_eq!(json["direction"], "reverse");
    assert_eq!(json["source"]["kind"], "supabase");

    // A forward verify still names the sides as before.
    let forward = verify::run(&lite, &sb, &options(key.clone()))
        .await
        .unwrap();
    let labels: BTreeSet<(&str, String)> = forward
        .tables
        .iter()
        .flat_map(|t| t.rows.iter().map(|d| (d.kind.as_str(), d.key.clone())))
        .collect();
    assert_eq!(
        labels,
        BTreeSet::from([
            ("different", changed.clone()),
            ("only in target", missing.clone()),
            ("only in source", "zz-extra".to_owned()),
        ])
    );
    assert_eq!(
        serde_json::from_str::<Value>(&verify::render(&forward, Format::Json)).unwrap()
            ["direction"],
        "forward"
    );

    // A reverse sample draws Supabase rows and finds them in the file: the
    // changed and the missing row, never the extra one (only through counts).
    let mut sample = reverse.clone();
    sample.check = Check::Sample { rows: 100_000 };
    sample.tables = vec![&catalogue::ARTIFACT];
    let r = verify::run(&lite, &sb, &sample).await.unwrap();
    let c = r.tables[0].counts;
    assert_eq!(
        (c.compared, c.different, c.only_in_source, c.only_in_target),
        (c.source_rows, 1, 1, 0),
        "{}",
        verify::render(&r, Format::Text)
    );

    let env = [
        ("DUALWRITE_REST_URL", pg.url.as_str()),
        ("SUPABASE_SERVICE_KEY", &pg.service_key()),
    ]
    .map(|(k, v)| (k, v.to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let p = path.to_str().unwrap();
    let repair = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            "--direction",
            "reverse",
            "--from-sqlite",
            p,
            "--repair",
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        dualwrite_bin(dir.path(), &env, &args)
    };
    // Not confirmed: nothing changes.
    let o = repair(&[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("nothing was changed"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        text(&o.stderr).contains(p),
        "the plan names the file: {}",
        text(&o.stderr)
    );
    assert_eq!(artifact_row(&path, &missing), None);

    // Confirmed, without --delete-extra: the changed and the missing row are
    // back as DoX stored them; the extra row stays.
    let o = repair(&["--yes"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let after: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(after["direction"], "reverse");
    assert_eq!(after["repair"]["status"], "applied");
    let t = &after["repair"]["tables"][0];
    assert_eq!(
        (&t["table"], &t["upserted"], &t["deleted"], &t["extra_kept"]),
        (&json!("artifact"), &json!(2), &json!(0), &json!(1)),
        "{after}"
    );
    assert_eq!(artifact_row(&path, &changed).unwrap(), changed_row);
    assert_eq!(artifact_row(&path, &missing).unwrap(), missing_row);
    assert!(artifact_row(&path, "zz-extra").is_some());

    // With --delete-extra: the file is equal.
    let o = repair(&["--yes", "--delete-extra"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let after: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(after["verdict"], "equal", "{after}");
    assert_eq!(after["repair"]["tables"][0]["deleted"], 1, "{after}");
    assert_eq!(artifact_row(&path, "zz-extra"), None);
    let o = dualwrite_bin(
        dir.path(),
        &env,
        &["verify", "--direction", "reverse", "--from-sqlite", p],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    assert!(text(&o.stdout).contains("EQUAL"), "{}", text(&o.stdout));

    // Supabase was only read.
    assert_eq!(
        sb.fetch(&catalogue::ARTIFACT, &[]).await.unwrap(),
        supabase_before
    );
}

//! `--unrepresentable coerce`: every kind of value PostgreSQL cannot hold lands
//! changed, through the backfill, an export and import, and the dual layer;
//! `verify` is EQUAL with the rows listed as "coerced", `cutover check` is READY
//! only with `--accept-coerced`, and `coerced.ndjson` holds the original bytes.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use dualwrite::backfill::{self, BackfillOptions};
use dualwrite::catalogue;
use dualwrite::cutover::{self, CutoverOptions};
use dualwrite::db::{Database, Dox, DualDatabase, SqliteDatabase, SqliteOptions};
use dualwrite::export;
use dualwrite::model::TagRow;
use dualwrite::normalise::coerced::{self, CoercedLog};
use dualwrite::normalise::UnrepresentablePolicy;
use dualwrite::verify::repair::{self, RepairOptions, RepairOutcome};
use dualwrite::verify::{self, Format, KeyInfo, RowKind, Verdict, VerifyOptions, VerifyReport};

use crate::harness::PrivateDb;

const COERCE: UnrepresentablePolicy = UnrepresentablePolicy::Coerce;

/// One row per kind of unrepresentable value, plus plain rows.
async fn unrepresentable_file(dir: &Path) -> PathBuf {
    let path = dir.join("unrepresentable.sqlite3");
    drop(
        SqliteDatabase::open(&path, SqliteOptions::default())
            .await
            .unwrap(),
    );
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "INSERT INTO tagrow VALUES ('t-nul', 'd', 'a' || char(0) || 'b', NULL, NULL, NULL);
         INSERT INTO tagrow VALUES ('t-bad-utf8', 'd', CAST(X'61FF28' AS TEXT), NULL, NULL, NULL);
         INSERT INTO tagrow VALUES ('t-plain', 'd', 'plain', 0.5, NULL, 2);
         INSERT INTO document_structure VALUES ('ds-json-nul', '{\"k\\u0000\": \"a\\u0000b\", \"n\": [1]}');
         INSERT INTO document_structure VALUES ('ds-plain', '{\"k\": 1}');
         INSERT INTO section VALUES ('s-int-text', 'd', '3a', 'x', 7, NULL);
         INSERT INTO section VALUES ('s-plain', 'd', 1, 'y', 2, NULL);",
    )
    .unwrap();
    path
}

/// (key, SQLite column) → (conversion, original bytes, coerced value).
fn expected() -> BTreeMap<(&'static str, &'static str), (&'static str, Vec<u8>, Value)> {
    [
        (
            ("t-nul", "tag"),
            ("nul_removed", b"a\0b".to_vec(), json!("ab")),
        ),
        (
            ("t-bad-utf8", "tag"),
            (
                "invalid_utf8_replaced",
                vec![b'a', 0xff, b'('],
                json!("a\u{FFFD}("),
            ),
        ),
        (
            ("ds-json-nul", "hierarchy_json"),
            (
                "json_nul_removed",
                br#"{"k\u0000": "a\u0000b", "n": [1]}"#.to_vec(),
                json!({"k": "ab", "n": [1]}),
            ),
        ),
        (
            ("s-int-text", "order"),
            ("integer_text_nulled", b"3a".to_vec(), Value::Null),
        ),
    ]
    .into_iter()
    .collect()
}

const COERCED_ROWS: [&str; 4] = ["ds-json-nul", "s-int-text", "t-bad-utf8", "t-nul"];
const ALL_ROWS: u64 = 7;

/// The record holds every coerced value with its original bytes, privately.
fn check_record(path: &Path) {
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    let got: BTreeMap<(String, String), _> = coerced::read(path)
        .unwrap()
        .into_iter()
        .map(|r| ((r.key.clone(), r.column.clone()), r))
        .collect();
    let want = expected();
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for ((key, column), (conversion, original, value)) in want {
        let r = &got[&(key.to_owned(), column.to_owned())];
        assert_eq!(r.conversion, conversion, "{key}.{column}");
        assert_eq!(r.original_bytes().unwrap(), original, "{key}.{column}");
        assert_eq!(r.coerced, value, "{key}.{column}");
    }
    let bad = &got[&("t-bad-utf8".to_owned(), "tag".to_owned())];
    assert_eq!(bad.original_base64.as_deref(), Some("Yf8o"));
}

async fn verify_with(path: &Path, pg: &PrivateDb, policy: UnrepresentablePolicy) -> VerifyReport {
    let lite = SqliteDatabase::open_read_only(path).await.unwrap();
    let mut o = VerifyOptions::new(KeyInfo::of("SUPABASE_SERVICE_KEY", &pg.service_key()));
    o.tables = vec![
        &catalogue::SECTION,
        &catalogue::TAGROW,
        &catalogue::DOCUMENT_STRUCTURE,
    ];
    o.unrepresentable = policy;
    verify::run(&lite, &pg.supabase(), &o).await.unwrap()
}

/// EQUAL under coerce, with exactly the coerced rows listed; under reject, the
/// same rows cannot land.
async fn check_verify(path: &Path, pg: &PrivateDb) {
    let r = verify_with(path, pg, COERCE).await;
    let text = verify::render(&r, Format::Text);
    assert_eq!(r.verdict, Verdict::Equal, "{text}");
    assert_eq!((r.totals.equal, r.totals.coerced), (ALL_ROWS, 4), "{text}");
    let mut listed: Vec<&str> = r
        .tables
        .iter()
        .flat_map(|t| t.rows.iter())
        .map(|d| {
            assert_eq!(d.kind, RowKind::Coerced, "{text}");
            d.key.as_str()
        })
        .collect();
    listed.sort();
    assert_eq!(listed, COERCED_ROWS, "{text}");
    assert!(
        text.contains("coerced") && text.contains("nul_removed"),
        "{text}"
    );
    for f in [Format::Json, Format::Markdown, Format::Html] {
        let out = verify::render(&r, f);
        assert!(
            out.contains("coerced") && out.contains("t-bad-utf8"),
            "{f:?}"
        );
    }

    let r = verify_with(path, pg, UnrepresentablePolicy::Reject).await;
    assert_eq!(r.verdict, Verdict::Different);
    assert_eq!((r.totals.cannot_land, r.totals.coerced), (4, 0));
}

fn opts(state: &Path, policy: UnrepresentablePolicy) -> BackfillOptions {
    let mut o = BackfillOptions::new(state.to_path_buf());
    o.tables = vec![
        &catalogue::SECTION,
        &catalogue::TAGROW,
        &catalogue::DOCUMENT_STRUCTURE,
    ];
    o.unrepresentable = policy;
    o
}

#[tokio::test]
async fn backfill_coerces_every_kind_and_verify_and_cutover_see_it() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let path = unrepresentable_file(dir.path()).await;
    let pg = PrivateDb::new().await;
    let sb = pg.supabase();

    // The default still rejects each such row whole.
    let st = dir.path().join("reject-state");
    let r = backfill::run(&path, &sb, &opts(&st, UnrepresentablePolicy::Reject))
        .await
        .unwrap();
    assert_eq!((r.rows_written, r.rows_rejected), (3, 4), "{r:?}");
    assert!(!st.join("coerced.ndjson").exists());

    let st = dir.path().join("coerce-state");
    let r = backfill::run(&path, &sb, &opts(&st, COERCE)).await.unwrap();
    assert_eq!((r.rows_written, r.rows_rejected), (ALL_ROWS, 0), "{r:?}");
    let tags = r.tables.iter().find(|t| t.table == "tagrow").unwrap();
    assert_eq!(tags.lossy["tag"]["nul_removed"], 1, "{tags:?}");
    assert_eq!(tags.lossy["tag"]["invalid_utf8_replaced"], 1, "{tags:?}");
    let secs = r.tables.iter().find(|t| t.table == "section").unwrap();
    assert_eq!(secs.lossy["order"]["integer_text_nulled"], 1, "{secs:?}");
    check_record(&st.join("coerced.ndjson"));

    // What Supabase holds is the documented coerced form.
    let sql = pg.sql().await;
    let tag: String = sql
        .query_one("SELECT tag FROM tags WHERE id = 't-bad-utf8'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tag, "a\u{FFFD}(");
    check_verify(&path, &pg).await;

    // A repair under coerce rewrites a lost coerced row in its coerced form.
    sql.execute("DELETE FROM tags WHERE id = 't-nul'", &[])
        .await
        .unwrap();
    let lite = SqliteDatabase::open_read_only(&path).await.unwrap();
    let log = dir.path().join("repair-coerced.ndjson");
    let target = pg.supabase().with_unrepresentable(
        COERCE,
        Some(std::sync::Arc::new(CoercedLog::new(log.clone()))),
    );
    let mut vo = VerifyOptions::new(KeyInfo::of("SUPABASE_SERVICE_KEY", &pg.service_key()));
    vo.tables = vec![&catalogue::TAGROW];
    vo.unrepresentable = COERCE;
    let (before, plan) = repair::plan(&lite, &target, &vo).await.unwrap();
    assert_eq!(before.totals.only_in_source, 1);
    let ro = RepairOptions::default();
    let mut outcome = RepairOutcome::planned(&before, &plan, &ro);
    repair::apply(&lite, &target, &plan, &ro, &mut outcome)
        .await
        .unwrap();
    assert_eq!(outcome.tables[0].upserted, 1, "{outcome:?}");
    assert_eq!(
        coerced::read(&log).unwrap()[0].original_bytes().unwrap(),
        b"a\0b"
    );
    check_verify(&path, &pg).await;

    // cutover: READY only when the operator accepts coerced rows.
    let lite = SqliteDatabase::open_read_only(&path).await.unwrap();
    let key = KeyInfo::of("SUPABASE_SERVICE_KEY", &pg.service_key());
    let mut co = CutoverOptions::new(key, None, Some(st.join("rejects.ndjson")));
    co.unrepresentable = COERCE;
    let c = cutover::check(&lite, &sb, &co).await.unwrap();
    assert!(!c.ready, "{}", c.render_text());
    assert!(
        c.reasons.iter().any(|r| r.contains("--accept-coerced")),
        "{}",
        c.render_text()
    );
    co.accept_coerced = true;
    co.unrepresentable = UnrepresentablePolicy::Reject; // implied by accept_coerced
    let c = cutover::check(&lite, &sb, &co).await.unwrap();
    assert!(c.ready, "{}", c.render_text());
    assert!(c.notes.iter().any(|n| n.contains("coerced")), "{c:?}");
}

#[tokio::test]
async fn a_coerced_export_imports_only_when_coercion_is_accepted() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let path = unrepresentable_file(dir.path()).await;
    let out = dir.path().join("export");
    let m = export::export_with(&path, &out, &[], false, COERCE)
        .await
        .unwrap();
    assert_eq!((m.rejected_rows, m.coerced_values), (0, 4), "{m:?}");
    assert_eq!(m.unrepresentable, COERCE);
    check_record(&out.join("coerced.ndjson"));

    let pg = PrivateDb::new().await;
    let sb = pg.supabase();
    let st = dir.path().join("import-state");
    let e = export::import(&out, &sb, &opts(&st, UnrepresentablePolicy::Reject))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("coerced") && e.contains("--unrepresentable coerce"),
        "{e}"
    );
    assert!(sb.fetch(&catalogue::TAGROW, &[]).await.unwrap().is_empty());

    let r = export::import(&out, &sb, &opts(&st, COERCE)).await.unwrap();
    assert_eq!((r.rows_written, r.rows_rejected), (ALL_ROWS, 0), "{r:?}");
    // The record sits beside the import's rejects too.
    check_record(&st.join("coerced.ndjson"));
    check_verify(&path, &pg).await;
}

#[tokio::test]
async fn the_dual_layer_mirrors_coerced_values_and_records_the_originals() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sqlite3");
    let lite = SqliteDatabase::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    let pg = PrivateDb::new().await;
    let log_path = dir.path().join("app.sqlite3.coerced.ndjson");
    let log = std::sync::Arc::new(CoercedLog::new(log_path.clone()));
    let mirror = pg.supabase().with_unrepresentable(COERCE, Some(log));
    let db = DualDatabase::new(lite, mirror, Duration::from_secs(5), 100);

    // Through the app's writes, text with NUL and JSON with \u0000 can arrive;
    // invalid UTF-8 and text in an integer field cannot (the write API is typed).
    db.add_tag(TagRow {
        id: "t-nul".into(),
        document_id: "d".into(),
        tag: "a\0b".into(),
        score: None,
        source_ptr: None,
        hrm_steps: Some(3),
    })
    .await
    .unwrap();
    let id = db
        .add_memory("fact", json!({"k\u{0}": "x\u{0}y"}), None, Some("dev_user"))
        .await
        .unwrap();
    assert!(db.failures().is_empty(), "{:?}", db.failures());

    let records = coerced::read(&log_path).unwrap();
    let mut got: Vec<(String, String, Vec<u8>)> = records
        .iter()
        .map(|r| {
            (
                r.key.clone(),
                r.conversion.clone(),
                r.original_bytes().unwrap(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (
            "t-nul".to_owned(),
            "nul_removed".to_owned(),
            b"a\0b".to_vec(),
        ),
        (
            id.clone(),
            "json_nul_removed".to_owned(),
            br#"{"k\u0000":"x\u0000y"}"#.to_vec(),
        ),
    ];
    want.sort();
    assert_eq!(got, want);

    let lite = SqliteDatabase::open_read_only(&path).await.unwrap();
    let mut o = VerifyOptions::new(KeyInfo::of("SUPABASE_SERVICE_KEY", &pg.service_key()));
    o.tables = vec![&catalogue::TAGROW, &catalogue::CIPHER_MEMORY];
    o.unrepresentable = COERCE;
    let r = verify::run(&lite, &pg.supabase(), &o).await.unwrap();
    let text = verify::render(&r, Format::Text);
    assert_eq!(r.verdict, Verdict::Equal, "{text}");
    assert_eq!((r.totals.equal, r.totals.coerced), (2, 2), "{text}");
}

/// The binary, in a clean environment with only what the test gives.
fn bin(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .current_dir(dir)
        .env_clear()
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_policy_is_configured_by_a_variable_and_chosen_by_flags() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let pg = PrivateDb::new().await;
    let key = pg.service_key();
    let db = dir.path().join("app.sqlite3");
    let env = [
        ("DUALWRITE_REST_URL", pg.url.as_str()),
        ("SUPABASE_SERVICE_KEY", key.as_str()),
        ("SUPABASE_DUAL_WRITE", "true"),
        ("DB_PATH", db.to_str().unwrap()),
    ];
    let coerce: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain([("DUALWRITE_UNREPRESENTABLE", "coerce")])
        .collect();
    let tag =
        |id: &str| json!({"tag": {"id": id, "document_id": "d", "tag": "a\u{0}b"}}).to_string();

    // By default the mirror refuses the value: a recorded mirror failure (exit 3).
    let (code, _, err) = bin(
        dir.path(),
        &env,
        &["call", "add_tag", "--args", &tag("t-1")],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("NUL"), "{err}");
    let (code, out, err) = bin(dir.path(), &env, &["replay"]);
    assert_ne!(code, 0, "{out}{err}");

    // Configured to coerce, the mirror stores it changed and records the original.
    let (code, _, err) = bin(
        dir.path(),
        &coerce,
        &["call", "add_tag", "--args", &tag("t-2")],
    );
    assert_eq!(code, 0, "{err}");
    let log = dir.path().join("app.sqlite3.coerced.ndjson");
    let records = coerced::read(&log).unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].original_bytes().unwrap(), b"a\0b");
    let (code, out, _) = bin(dir.path(), &coerce, &["config"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"unrepresentable\": \"coerce\""), "{out}");

    // t-1 was never mirrored: replay it under coerce, then everything is equal.
    let (code, out, err) = bin(dir.path(), &coerce, &["replay"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = bin(
        dir.path(),
        &env,
        &[
            "verify",
            "--tables",
            "tagrow",
            "--unrepresentable",
            "coerce",
            "--format",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["totals"]["coerced"], 2, "{out}");
    assert_eq!(report["unrepresentable"], "coerce", "{out}");
    assert_eq!(report["tables"][0]["rows"][0]["kind"], "coerced", "{out}");
    // Under the default policy the same rows cannot land.
    let (code, out, _) = bin(dir.path(), &env, &["verify", "--tables", "tagrow"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("cannot land"), "{out}");

    let failures = dir.path().join("app.sqlite3.failures.ndjson");
    std::fs::write(&failures, "").unwrap(); // replayed: nothing left
    let (code, out, _) = bin(dir.path(), &coerce, &["cutover", "check"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("--accept-coerced"), "{out}");
    let (code, out, err) = bin(dir.path(), &env, &["cutover", "check", "--accept-coerced"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("READY"), "{out}");

    // A policy that does not exist is named with its source.
    let (code, _, err) = bin(
        dir.path(),
        &[("DUALWRITE_UNREPRESENTABLE", "maybe")],
        &["config"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("DUALWRITE_UNREPRESENTABLE") && err.contains("maybe"),
        "{err}"
    );
    let (code, _, err) = bin(dir.path(), &env, &["verify", "--unrepresentable", "maybe"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("reject") && err.contains("coerce"), "{err}");
}

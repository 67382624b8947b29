//! Backfill, export and import against the real stack.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use dualwrite::backfill::{self, BackfillOptions, Reject};
use dualwrite::catalogue::{self, Table, TABLES};
use dualwrite::db::{Database, Dox, DualDatabase, SqliteDatabase, SqliteOptions, SupabaseDatabase};
use dualwrite::export;
use dualwrite::model::Write;
use dualwrite::samples;

use crate::harness::{fixture, fixture_copy, PrivateDb};

fn opts(state: &Path) -> BackfillOptions {
    let mut o = BackfillOptions::new(state.to_path_buf());
    o.max_wait = Duration::from_secs(30);
    o
}

async fn read_only(path: &Path) -> SqliteDatabase {
    SqliteDatabase::open_read_only(path).await.unwrap()
}

/// Every table equal on both sides after normalisation (and the same row count).
pub(crate) async fn assert_same(lite: &SqliteDatabase, sb: &SupabaseDatabase, what: &str) {
    for t in TABLES {
        let (l, r) = (
            lite.fetch(t, &[]).await.unwrap(),
            sb.fetch(t, &[]).await.unwrap(),
        );
        assert_eq!(l.len(), r.len(), "{what}: {} row count", t.sqlite);
        for (a, b) in l.iter().zip(&r) {
            assert_eq!(a, b, "{what}: {}", t.sqlite);
        }
    }
}

fn rejects(state: &Path) -> Vec<Reject> {
    std::fs::read_to_string(state.join("rejects.ndjson"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn every_fixture_lands_exactly_and_a_second_run_redoes_nothing() {
    needs_stack!();
    for name in [
        "dox-small.sqlite3",
        "dox-small-alembic.sqlite3",
        "dox-medium.sqlite3",
    ] {
        let pg = PrivateDb::new().await;
        let sb = pg.supabase();
        let state = tempfile::tempdir().unwrap();
        let before = std::fs::read(fixture(name)).unwrap();
        let r = backfill::run(&fixture(name), &sb, &opts(state.path()))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(fixture(name)).unwrap(),
            before,
            "{name}: the source changed"
        );
        assert!(!r.resumed);
        assert_eq!(r.rows_rejected, 0, "{name}: {:?}", r.sample_rejects);
        assert_eq!(r.rows_written, r.rows_read);
        assert_eq!(r.tables.len(), 17);
        let lite = read_only(&fixture(name)).await;
        assert_same(&lite, &sb, name).await;
        // These files hold no non-finite JSON tokens: nothing may be reported lossy.
        let lossy: u64 = r
            .tables
            .iter()
            .flat_map(|t| t.lossy.values().flat_map(|m| m.values()))
            .sum();
        assert_eq!(lossy, 0, "{name}: {:?}", r.tables);
        let again = backfill::run(&fixture(name), &sb, &opts(state.path()))
            .await
            .unwrap();
        assert!(again.resumed);
        assert!(
            again.tables.iter().all(|t| t.status == "already done"),
            "{:?}",
            again.tables
        );
        assert_eq!(again.rows_read, 0);
    }
}

fn binary(pg: &PrivateDb, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dualwrite"));
    c.current_dir(dir)
        .args(args)
        .env("DUALWRITE_REST_URL", &pg.url)
        .env("SUPABASE_SERVICE_KEY", pg.service_key())
        .env_remove("SUPABASE_ANON_KEY")
        .env("DB_PATH", dir.join("unused.sqlite3"))
        .stdin(Stdio::null());
    c
}

pub(crate) fn checkpoint(state: &Path) -> Value {
    std::fs::read(state.join("checkpoint.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(json!({"tables": {}}))
}

pub(crate) fn tables_done(state: &Path) -> usize {
    checkpoint(state)["tables"]
        .as_object()
        .map(|m| m.values().filter(|t| t["done"] == true).count())
        .unwrap_or(0)
}

#[tokio::test]
async fn killed_with_sigkill_at_several_points_it_resumes_without_duplicates_or_gaps() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = fixture("dox-medium.sqlite3");
    let args = [
        "backfill",
        "--from-sqlite",
        src.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--batch-rows",
        "40",
        "--concurrency",
        "2",
        "--json",
    ];
    // Kill once the first table is done, then again after six tables.
    for done in [1, 6] {
        let mut child = binary(&pg, work.path(), &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while tables_done(&state) < done && Instant::now() < deadline {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run finished before it could be killed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(tables_done(&state) >= done);
        assert!(tables_done(&state) < 17, "killed before the end");
    }
    let out = binary(&pg, work.path(), &args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["resumed"], true);
    let statuses: Vec<&str> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses.iter().filter(|s| **s == "already done").count() >= 6,
        "{statuses:?}"
    );
    assert!(statuses.contains(&"copied"));
    let sb = pg.supabase();
    assert_same(&read_only(&src).await, &sb, "after kill -9 and resume").await;
}

#[tokio::test]
async fn rows_supabase_refuses_go_to_the_rejects_file_and_the_rest_lands() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    pg.ddl("ALTER TABLE tags ADD CONSTRAINT no_payments CHECK (tag <> 'payments')")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sqlite3");
    let lite = SqliteDatabase::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    for w in samples::writes().unwrap() {
        lite.apply(w).await.unwrap();
    }
    // And a value no Supabase column can hold.
    lite.upsert_rows(
        &catalogue::TAGROW,
        vec![vec![
            dualwrite::normalise::SqlValue::text("tag-nul"),
            dualwrite::normalise::SqlValue::text("d"),
            dualwrite::normalise::SqlValue::text("a\u{0}b"),
            dualwrite::normalise::SqlValue::Null,
            dualwrite::normalise::SqlValue::Null,
            dualwrite::normalise::SqlValue::Null,
        ]],
    )
    .await
    .unwrap();
    drop(lite);
    let state = dir.path().join("state");
    let out = binary(
        &pg,
        dir.path(),
        &[
            "backfill",
            "--from-sqlite",
            path.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--json",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows_rejected"], 2);
    let mut r = rejects(&state);
    r.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].key.as_str(), r[0].code.as_str()),
        ("0c1d2e3f-4a5b-4c6d-9e7f-8a9b0c1d2e3f", "23514")
    );
    assert_eq!(r[0].row["tag"], "payments");
    assert_eq!(
        (r[1].key.as_str(), r[1].code.as_str()),
        ("tag-nul", "unrepresentable")
    );
    let sb = pg.supabase();
    assert_eq!(
        sb.fetch(&catalogue::TAGROW, &[]).await.unwrap().len(),
        3,
        "the other tags landed"
    );
    assert_eq!(sb.fetch(&catalogue::ARTIFACT, &[]).await.unwrap().len(), 4);
}

#[tokio::test]
async fn postgrest_down_mid_run_the_backfill_waits_or_stops_clearly_and_resumes() {
    needs_stack!();
    let mut pg = PrivateDb::new().await;
    let sb = pg.supabase();
    let src = fixture("dox-medium.sqlite3");
    let state = tempfile::tempdir().unwrap();
    let mut o = opts(state.path());
    o.batch_rows = 40;
    o.concurrency = 2;
    // Down for a while, back before max_wait: the run waits and completes.
    let run = {
        let (src, o, sb) = (
            src.clone(),
            o.clone(),
            SupabaseDatabase::new(sb.rest().clone()),
        );
        tokio::spawn(async move { backfill::run(&src, &sb, &o).await })
    };
    while tables_done(state.path()) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pg.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg.start().await;
    let r = run.await.unwrap().unwrap_or_else(|e| {
        panic!(
            "the backfill did not resume after the outage: {e}\nPostgREST's log:\n{}",
            pg.postgrest_log()
        )
    });
    assert_eq!(r.rows_rejected, 0);
    assert_same(&read_only(&src).await, &pg.supabase(), "after an outage").await;

    // Down for longer than max_wait: a clear error, then a resumed run completes.
    pg.ddl("TRUNCATE artifacts, documents, document_sections, log_entries")
        .await;
    let state2 = tempfile::tempdir().unwrap();
    let mut o2 = opts(state2.path());
    o2.max_wait = Duration::from_secs(1);
    pg.stop();
    let e = backfill::run(&src, &pg.supabase(), &o2)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("run the same command again to resume"), "{e}");
    pg.start().await;
    // The resumed run waits as long as a user's would: PostgREST can answer
    // 503 (PGRST002) while it loads its schema cache right after a restart.
    let r = backfill::run(&src, &pg.supabase(), &opts(state2.path()))
        .await
        .unwrap_or_else(|e| panic!("{e}\nPostgREST's log:\n{}", pg.postgrest_log()));
    assert!(r.resumed || r.tables.iter().all(|t| t.status == "copied"));
    assert_same(
        &read_only(&src).await,
        &pg.supabase(),
        "after max_wait and resume",
    )
    .await;
}

#[tokio::test]
async fn export_then_import_equals_a_direct_backfill_and_a_damaged_export_is_refused() {
    needs_stack!();
    let src = fixture("dox-small.sqlite3");
    let direct = PrivateDb::new().await;
    let state = tempfile::tempdir().unwrap();
    backfill::run(&src, &direct.supabase(), &opts(state.path()))
        .await
        .unwrap();
    for compress in [false, true] {
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("export");
        let m = export::export(&src, &dir, &[], compress).await.unwrap();
        assert_eq!(m.tables.iter().map(|t| t.rows).sum::<u64>(), 912);
        assert_eq!(m.source.name, "dox-small.sqlite3");
        let again = export::export(&src, &dir, &[], compress)
            .await
            .unwrap_err()
            .to_string();
        assert!(again.contains("already holds an export"), "{again}");
        let imported = PrivateDb::new().await;
        let st = tempfile::tempdir().unwrap();
        let r = export::import(&dir, &imported.supabase(), &opts(st.path()))
            .await
            .unwrap();
        assert_eq!((r.rows_written, r.rows_rejected), (912, 0));
        for t in TABLES {
            assert_eq!(
                imported.supabase().fetch(t, &[]).await.unwrap(),
                direct.supabase().fetch(t, &[]).await.unwrap(),
                "{} (compress={compress})",
                t.sqlite
            );
        }
        // Damaged copies are refused before anything is written.
        let file = dir.join(
            &m.tables
                .iter()
                .find(|t| t.table == "logentry")
                .unwrap()
                .file,
        );
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        let fresh = PrivateDb::new().await;
        let st = tempfile::tempdir().unwrap();
        let e = export::import(&dir, &fresh.supabase(), &opts(st.path()))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("truncated or altered") && e.contains("logentry"),
            "{e}"
        );
        assert!(fresh
            .supabase()
            .fetch(&catalogue::ARTIFACT, &[])
            .await
            .unwrap()
            .is_empty());
        std::fs::write(&file, &bytes).unwrap();
        let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
        std::fs::write(
            dir.join("manifest.json"),
            manifest.replace("\"rows\": 300", "\"rows\": 301"),
        )
        .unwrap();
        let e = export::import(&dir, &fresh.supabase(), &opts(st.path()))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("300 rows, the manifest says 301"), "{e}");
        std::fs::remove_file(dir.join("manifest.json")).unwrap();
        let e = export::import(&dir, &fresh.supabase(), &opts(st.path()))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no manifest.json"), "{e}");
    }
}

#[tokio::test]
async fn a_dry_run_writes_nothing_and_reset_needs_confirmation() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = fixture("dox-small.sqlite3");
    let s = src.to_str().unwrap();
    let out = binary(
        &pg,
        work.path(),
        &[
            "backfill",
            "--from-sqlite",
            s,
            "--state-dir",
            state.to_str().unwrap(),
            "--dry-run",
            "--json",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["rows_read"].as_u64(), r["rows_written"].as_u64()),
        (Some(912), Some(0))
    );
    assert!(!state.join("checkpoint.json").exists());
    for t in TABLES {
        assert!(
            pg.supabase().fetch(t, &[]).await.unwrap().is_empty(),
            "{}",
            t.sqlite
        );
    }
    binary(
        &pg,
        work.path(),
        &[
            "backfill",
            "--from-sqlite",
            s,
            "--state-dir",
            state.to_str().unwrap(),
            "--tables",
            "artifact",
        ],
    )
    .output()
    .unwrap();
    let out = binary(
        &pg,
        work.path(),
        &[
            "backfill",
            "--from-sqlite",
            s,
            "--state-dir",
            state.to_str().unwrap(),
            "--reset",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(
        pg.supabase()
            .fetch(&catalogue::ARTIFACT, &[])
            .await
            .unwrap()
            .len(),
        16,
        "nothing was deleted"
    );
    let out = binary(
        &pg,
        work.path(),
        &[
            "backfill",
            "--from-sqlite",
            s,
            "--state-dir",
            state.to_str().unwrap(),
            "--reset",
            "--yes",
            "--tables",
            "tagrow,artifact",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success());
    assert_eq!(
        pg.supabase()
            .fetch(&catalogue::TAGROW, &[])
            .await
            .unwrap()
            .len(),
        60
    );
}

/// The app keeps dual-writing (updates and deletes) while the backfill copies:
/// no stale row may remain on Supabase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_app_writes_during_a_backfill_leave_no_stale_row() {
    needs_stack!();
    app_writes_during_a_backfill(false).await;
}

/// The same with the rows going in over the connection string (`--via postgres`):
/// the stale guard's re-sends upsert, its deletes go through the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_app_writes_during_a_backfill_via_postgres_leave_no_stale_row() {
    needs_stack!();
    app_writes_during_a_backfill(true).await;
}

async fn app_writes_during_a_backfill(via_postgres: bool) {
    let pg = PrivateDb::new().await;
    let (_d, path) = fixture_copy("dox-medium.sqlite3");
    let app_db = SqliteDatabase::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    let app = DualDatabase::new(app_db, pg.supabase(), Duration::from_secs(5), 100_000);
    let ids = |t: &'static Table, rows: Vec<dualwrite::db::Row>| -> Vec<String> {
        rows.iter()
            .map(|r| r[t.key().supabase].as_str().unwrap().to_owned())
            .collect()
    };
    let artifacts = ids(
        &catalogue::ARTIFACT,
        app.fetch(&catalogue::ARTIFACT, &[]).await.unwrap(),
    );
    let tags = app.fetch(&catalogue::TAGROW, &[]).await.unwrap();
    let docs = ids(
        &catalogue::DOCUMENT,
        app.fetch(&catalogue::DOCUMENT, &[]).await.unwrap(),
    );

    let state = tempfile::tempdir().unwrap();
    let mut o = opts(state.path());
    o.batch_rows = 25;
    o.concurrency = 2;
    if via_postgres {
        let url = secrecy::SecretString::from(pg.database_url());
        o.postgres = Some(dualwrite::db::Postgres::connect(&url).await.unwrap());
    }
    let (src, target) = (
        path.clone(),
        SupabaseDatabase::new(pg.supabase().rest().clone()),
    );
    let run = tokio::spawn(async move { backfill::run(&src, &target, &o).await });
    let mut i = 0u64;
    while !run.is_finished() {
        let a = &artifacts[(i as usize * 7) % artifacts.len()];
        app.write(
            Write::from_call(
                "update_artifact",
                json!({"artifact_id": a, "status": format!("v{i}")}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
        let t = &tags[(i as usize * 13) % tags.len()];
        let mut tag = t.clone();
        tag.insert("tag".into(), json!(format!("retagged {i}")));
        app.write(Write::from_call("add_tag", json!({"tag": tag})).unwrap())
            .await
            .unwrap();
        let d = &docs[(i as usize) % docs.len()];
        // Replace-style writes delete rows the backfill may already have read.
        app.store_entities(d, vec![]).await.unwrap();
        app.store_metric_hits(d, vec![]).await.unwrap();
        i += 1;
    }
    let r = run.await.unwrap().unwrap();
    assert_eq!(app.stats().failed, 0);
    assert!(i > 20, "the app wrote during the backfill ({i} rounds)");
    assert_eq!(r.target.contains("rows via postgres://"), via_postgres);
    eprintln!(
        "{i} app rounds; {} rows resent by the stale guard",
        r.tables.iter().map(|t| t.rows_resynced).sum::<u64>()
    );
    assert_same(app.primary(), app.secondary(), "after concurrent writes").await;
    let _: PathBuf = path;
}

#[tokio::test]
async fn batches_shrink_when_supabase_says_too_large_and_every_row_still_lands() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    // PostgREST 12.0.2 answers SQLSTATE 54000 (program limit) with 413.
    pg.ddl(
        "CREATE FUNCTION too_big() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF (SELECT count(*) FROM new_rows) > 7 THEN
             RAISE EXCEPTION 'statement too large' USING ERRCODE = '54000';
           END IF;
           RETURN NULL;
         END $$;
         CREATE TRIGGER too_big AFTER INSERT ON log_entries
           REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION too_big();",
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let mut o = opts(state.path());
    o.tables = vec![&catalogue::LOGENTRY];
    let r = backfill::run(&fixture("dox-small.sqlite3"), &pg.supabase(), &o)
        .await
        .unwrap();
    assert_eq!(
        (r.rows_written, r.rows_rejected),
        (300, 0),
        "{:?}",
        r.sample_rejects
    );
    assert_eq!(
        pg.supabase()
            .fetch(&catalogue::LOGENTRY, &[])
            .await
            .unwrap()
            .len(),
        300
    );
}

#[tokio::test]
async fn a_rejected_key_stops_the_run_instead_of_rejecting_every_row() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = fixture("dox-small.sqlite3");
    let out = binary(
        &pg,
        work.path(),
        &[
            "backfill",
            "--from-sqlite",
            src.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
    )
    .env(
        "SUPABASE_SERVICE_KEY",
        "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.bad",
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rejected the API key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rejects(&state).is_empty());
}

#[tokio::test]
async fn any_value_and_any_key_either_lands_or_is_reported_by_row() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let path = crate::fixtures::odd_values_file(dir.path()).await;
    let pg = PrivateDb::new().await;
    let state = dir.path().join("state");
    let r = backfill::run(&path, &pg.supabase(), &opts(&state))
        .await
        .unwrap();
    let verdicts = crate::fixtures::odd_values_verdicts();
    let refused: Vec<&String> = verdicts
        .iter()
        .filter(|(_, v)| v.starts_with("refused"))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(r.rows_rejected as usize, refused.len());
    assert_eq!(r.rows_written as usize, verdicts.len() - refused.len());
    let mut rejected: Vec<String> = rejects(&state).into_iter().map(|r| r.key).collect();
    rejected.sort();
    let mut want: Vec<String> = refused.into_iter().cloned().collect();
    want.sort();
    assert_eq!(rejected, want);
    let logs = pg
        .supabase()
        .fetch(&catalogue::LOGENTRY, &[])
        .await
        .unwrap();
    assert_eq!(logs[0]["id"], "🔑 \"quoted\", (paren) & ?=");
}

#[tokio::test]
async fn a_generated_database_lands_equal_with_its_lossy_conversions_counted() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gen.sqlite3");
    dualwrite::generate::generate(
        &path,
        &dualwrite::generate::GenerateOptions {
            rows: 6_000,
            seed: 7,
        },
    )
    .await
    .unwrap();
    let pg = PrivateDb::new().await;
    let mut o = opts(&dir.path().join("state"));
    o.batch_rows = 300;
    let r = backfill::run(&path, &pg.supabase(), &o).await.unwrap();
    assert_eq!(
        (r.rows_read, r.rows_written, r.rows_rejected),
        (6_000, 6_000, 0)
    );
    let lossy: u64 = r
        .tables
        .iter()
        .flat_map(|t| t.lossy.values().flat_map(|m| m.values()))
        .sum();
    assert!(lossy > 0, "generated data holds NaN tokens");
    assert_same(&read_only(&path).await, &pg.supabase(), "generated").await;
}

/// A checkpoint in storage order resumes after its row, unless VACUUM moved
/// the rows: then the table is copied again from the start (upserts: harmless).
#[tokio::test]
async fn a_storage_order_checkpoint_resumes_and_survives_renumbered_rows() {
    needs_stack!();
    let (_d, path) = fixture_copy("dox-small.sqlite3");
    let c = rusqlite::Connection::open(&path).unwrap();
    let (rowid, key): (i64, String) = c
        .query_row(
            "SELECT rowid, id FROM logentry ORDER BY rowid LIMIT 1 OFFSET 99",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    drop(c);
    let pg = PrivateDb::new().await;
    let source = std::fs::canonicalize(&path).unwrap().display().to_string();
    for (key, want_read) in [(key.clone(), 200u64), ("not the key there".to_owned(), 300)] {
        let state = tempfile::tempdir().unwrap();
        let ck = json!({"source": source, "tables": {"logentry": {
            "after": {"kind": "rowid", "value": {"rowid": rowid, "key": key}},
            "done": false, "rows_written": 100, "rows_rejected": 0}}});
        std::fs::write(state.path().join("checkpoint.json"), ck.to_string()).unwrap();
        let mut o = opts(state.path());
        o.tables = vec![&catalogue::LOGENTRY];
        let r = backfill::run(&path, &pg.supabase(), &o).await.unwrap();
        assert_eq!(r.rows_read, want_read, "{key}");
        assert!(r.resumed);
    }
    assert_eq!(
        pg.supabase()
            .fetch(&catalogue::LOGENTRY, &[])
            .await
            .unwrap()
            .len(),
        300
    );
}

/// `--reset` deletes a key range at a time (a single DELETE of a large table
/// could outlast a hosted statement timeout): every row goes, whatever its key,
/// and tables not asked for stay.
#[tokio::test]
async fn reset_deletes_in_key_ranges_and_only_the_tables_asked_for() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let sb = pg.supabase();
    let keys = [
        "a", "a,b", "a b", "a\"q", "é", "(x)", "lte.1", "%2C", "k&x=1", "Z", "0", "~", "日本",
    ];
    artifacts_and_a_document(&sb, keys.iter().map(|k| k.to_string())).await;

    // Chunks of 3 keys: five DELETEs for the 13 artifacts.
    let deleted = backfill::reset_target(&sb, &[&catalogue::ARTIFACT], 3, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(deleted, keys.len() as u64);
    assert!(sb
        .fetch(&catalogue::ARTIFACT, &[])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(sb.fetch(&catalogue::DOCUMENT, &[]).await.unwrap().len(), 1);
}

/// `--reset` empties the target with one TRUNCATE through the service-role-only
/// `rpc/dualwrite_reset`: only the tables asked for, only DoX tables, and only
/// for the service role.
#[tokio::test]
async fn reset_truncates_only_the_dox_tables_asked_for() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let sb = pg.supabase();
    artifacts_and_a_document(&sb, (0..50).map(|i| format!("a{i}"))).await;
    let emptied = backfill::truncate_target(&sb, &[&catalogue::ARTIFACT], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(emptied, Some(50));
    assert!(sb
        .fetch(&catalogue::ARTIFACT, &[])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(sb.fetch(&catalogue::DOCUMENT, &[]).await.unwrap().len(), 1);
    // Not a DoX table: refused, nothing emptied.
    let e = sb
        .rest()
        .rpc(
            "dualwrite_reset",
            &json!({"tables": ["documents", "pg_class"]}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("22023"), "{e}");
    assert_eq!(sb.fetch(&catalogue::DOCUMENT, &[]).await.unwrap().len(), 1);
    // Only the service role may call it.
    for role in ["anon", "authenticated"] {
        let c = crate::reverse::client_as(&pg, role, Some("u"), "public");
        let e = c
            .rpc("dualwrite_reset", &json!({"tables": ["documents"]}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("42501"), "{role}: {e}");
    }
    assert_eq!(sb.fetch(&catalogue::DOCUMENT, &[]).await.unwrap().len(), 1);
}

/// Artifacts with these keys and one document, `kept`, on `sb`: what the reset
/// tests empty and keep.
async fn artifacts_and_a_document(sb: &SupabaseDatabase, keys: impl Iterator<Item = String>) {
    let rows: Vec<Value> = keys
        .map(|k| json!({"id": k, "filename": "f", "filepath": "p", "filetype": ".pdf"}))
        .collect();
    sb.rest()
        .upsert(&catalogue::ARTIFACT, serde_json::to_string(&rows).unwrap())
        .await
        .unwrap();
    let doc = json!([{"id": "kept", "path": "p", "type": "pdf"}]);
    sb.rest()
        .upsert(&catalogue::DOCUMENT, doc.to_string())
        .await
        .unwrap();
}

/// One Supabase project holds one DoX deployment: a second deployment's file
/// whose skills share names with the first's under other ids is refused before
/// anything is written, naming them; `--reset` (the project emptied first) and
/// a repeated run of the same file (the same ids) go through.
#[tokio::test]
async fn a_second_deployment_into_the_same_project_is_refused_before_writing() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for seed in [1, 2] {
        let path = dir.path().join(format!("deployment-{seed}.sqlite3"));
        let opts = dualwrite::generate::GenerateOptions { rows: 400, seed };
        dualwrite::generate::generate(&path, &opts).await.unwrap();
        files.push(path.display().to_string());
    }
    let skills = || async {
        pg.supabase()
            .fetch(&catalogue::SKILLS_REGISTRY, &[])
            .await
            .unwrap()
    };
    let run = |file: &str, extra: &[&str]| {
        let state = dir.path().join(format!("state-{}", extra.len()));
        let mut args = vec![
            "backfill",
            "--from-sqlite",
            file,
            "--tables",
            "skills_registry",
        ];
        args.extend(["--state-dir", state.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let o = binary(&pg, dir.path(), &args).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = run(&files[0], &[]);
    assert_eq!(code, Some(0), "{err}");
    let first = skills().await;
    assert!(!first.is_empty());

    let (code, err) = run(&files[1], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("skills_registry row(s) whose name this file gives to another id")
            && err.contains("One Supabase project holds one DoX deployment")
            && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(skills().await, first, "a refused run wrote");

    // The same file again: its own rows, not a collision.
    let (code, err) = run(&files[0], &["--restart"]);
    assert_eq!(code, Some(0), "{err}");
    // The second deployment with the project emptied first.
    let (code, err) = run(&files[1], &["--reset", "--yes"]);
    assert_eq!(code, Some(0), "{err}");
    assert_ne!(skills().await, first);
}

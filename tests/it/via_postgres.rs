//! `backfill --via postgres` (and `import --via postgres`): rows in with COPY over
//! the database connection string, against a private database of the stack.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use dualwrite::capture::supabase as rc;
use dualwrite::catalogue::TABLES;
use dualwrite::db::{Database, SqliteDatabase, SupabaseDatabase};

use crate::backfill::tables_done;
use crate::harness::{fixture, PrivateDb};

/// The binary against `pg`: the REST settings as every command takes them, and
/// the connection string in `SUPABASE_DB_URL` (unless `db_url` is `None`).
fn dualwrite(pg: &PrivateDb, dir: &Path, db_url: Option<&str>, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dualwrite"));
    c.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("DB_PATH", dir.join("unused.sqlite3"))
        .env("DUALWRITE_REST_URL", &pg.url)
        .env("SUPABASE_SERVICE_KEY", pg.service_key())
        .env("SUPABASE_TIMEOUT", "10")
        .args(args)
        .stdin(Stdio::null());
    if let Some(u) = db_url {
        c.env("SUPABASE_DB_URL", u);
    }
    c
}

fn run(pg: &PrivateDb, dir: &Path, args: &[&str]) -> Output {
    dualwrite(pg, dir, Some(&pg.database_url()), args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n{}\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn backfill_args<'a>(src: &'a Path, state: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "backfill",
        "--via",
        "postgres",
        "--from-sqlite",
        src.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--json",
    ];
    a.extend_from_slice(extra);
    a
}

/// Every table equal on both sides after normalisation (read back through PostgREST).
/// The file at `src` and Supabase hold the same rows ([`crate::backfill::assert_same`]).
async fn assert_same(src: &Path, sb: &SupabaseDatabase, what: &str) {
    let lite = SqliteDatabase::open_read_only(src).await.unwrap();
    crate::backfill::assert_same(&lite, sb, what).await;
}

/// Rows per table, counted in the database itself (a duplicate would show).
async fn counts(pg: &PrivateDb) -> Vec<(String, i64)> {
    let c = pg.sql().await;
    let mut out = Vec::new();
    for t in TABLES {
        let n: i64 = c
            .query_one(
                &format!("select count(*) from public.\"{}\"", t.supabase),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        out.push((t.supabase.to_owned(), n));
    }
    out
}

#[tokio::test]
async fn via_postgres_lands_a_fixture_verify_says_equal_and_a_second_run_upserts() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = fixture("dox-medium.sqlite3");
    let o = run(&pg, dir.path(), &backfill_args(&src, &state, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["rows_written"].as_u64().unwrap() > 1000, "{r}");
    assert_eq!(r["rows_written"], r["rows_read"], "{r}");
    let target = r["target"].as_str().unwrap();
    assert!(target.contains("rows via postgres://"), "{target}");
    let password = pg.database_url();
    let password = password
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap();
    assert!(!text(&o).contains(password), "the password was shown");
    let sb = pg.supabase();
    assert_same(&src, &sb, "via postgres").await;
    let v = run(
        &pg,
        dir.path(),
        &["verify", "--from-sqlite", src.to_str().unwrap(), "--json"],
    );
    assert_eq!(v.status.code(), Some(0), "verify: {}", text(&v));
    let before = counts(&pg).await;

    // Again from the start, into the full target: every row upserted, none doubled.
    let o = run(
        &pg,
        dir.path(),
        &backfill_args(&src, &state, &["--restart"]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let again: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again["rows_written"], r["rows_written"], "{again}");
    assert_eq!(counts(&pg).await, before);
    assert_same(&src, &sb, "repeated via postgres").await;

    // A changed row in the target is put back by a repeated run (an upsert, not an insert that skips).
    let c = pg.sql().await;
    let changed = c
        .execute(
            "update public.artifacts set status = 'drifted' where id = (select min(id) from public.artifacts)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
    let o = run(
        &pg,
        dir.path(),
        &backfill_args(&src, &state, &["--restart", "--tables", "artifacts"]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_same(&src, &sb, "a drifted row upserted").await;
}

#[tokio::test]
async fn via_postgres_killed_with_sigkill_resumes_without_duplicates_or_gaps() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = fixture("dox-medium.sqlite3");
    let extra = ["--batch-rows", "40", "--concurrency", "2"];
    let args = backfill_args(&src, &state, &extra);
    for done in [1, 6] {
        let mut child = dualwrite(&pg, dir.path(), Some(&pg.database_url()), &args)
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
    let o = run(&pg, dir.path(), &args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["resumed"], true);
    assert_same(
        &src,
        &pg.supabase(),
        "after kill -9 and resume via postgres",
    )
    .await;
}

#[tokio::test]
async fn via_postgres_rows_postgres_refuses_are_rejects_and_the_rest_lands() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    pg.ddl("ALTER TABLE tags ADD CONSTRAINT no_payments CHECK (tag <> 'payments')")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sqlite3");
    let lite = SqliteDatabase::open(&path, Default::default())
        .await
        .unwrap();
    for w in dualwrite::samples::writes().unwrap() {
        lite.apply(w).await.unwrap();
    }
    use dualwrite::normalise::SqlValue;
    lite.upsert_rows(
        &dualwrite::catalogue::TAGROW,
        vec![vec![
            SqlValue::text("tag-nul"),
            SqlValue::text("d"),
            SqlValue::text("a\u{0}b"),
            SqlValue::Null,
            SqlValue::Null,
            SqlValue::Null,
        ]],
    )
    .await
    .unwrap();
    drop(lite);
    let state = dir.path().join("state");
    let o = run(&pg, dir.path(), &backfill_args(&path, &state, &[]));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["rows_rejected"], 2, "{report}");
    let mut r: Vec<dualwrite::backfill::Reject> =
        std::fs::read_to_string(state.join("rejects.ndjson"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    r.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(
        r.iter()
            .map(|r| (r.key.as_str(), r.code.as_str()))
            .collect::<Vec<_>>(),
        [
            ("0c1d2e3f-4a5b-4c6d-9e7f-8a9b0c1d2e3f", "23514"),
            ("tag-nul", "unrepresentable")
        ]
    );
    assert_eq!(r[0].row["tag"], "payments");
    let sb = pg.supabase();
    let tags = sb.fetch(&dualwrite::catalogue::TAGROW, &[]).await.unwrap();
    assert_eq!(tags.len(), 3, "the other tags landed");
}

#[tokio::test]
async fn via_postgres_a_wrong_password_or_host_is_one_clear_error_without_the_password() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = fixture("dox-small.sqlite3");
    let good = pg.database_url();
    let (user_part, host_part) = good.split_once('@').unwrap();
    let user = user_part
        .trim_start_matches("postgres://")
        .split(':')
        .next()
        .unwrap();
    let wrong = format!("postgres://{user}:Wr0ng-pa55word@{host_part}");
    let port = crate::harness::free_port();
    let unreachable =
        format!("postgres://{user}:Wr0ng-pa55word@127.0.0.1:{port}/x?connect_timeout=3");
    let args = backfill_args(&src, &state, &[]);
    for (url, code, says) in [
        (&wrong, 2, "password authentication failed"),
        (&unreachable, 1, "unreachable"),
    ] {
        let o = dualwrite(&pg, dir.path(), Some(url), &args)
            .output()
            .unwrap();
        let all = text(&o);
        assert_eq!(o.status.code(), Some(code), "{all}");
        assert!(all.contains(says), "{all}");
        assert!(
            !all.contains("Wr0ng-pa55word"),
            "the password was shown: {all}"
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(stderr.matches(says).count(), 1, "said once: {stderr}");
    }
    // Nothing was written.
    assert!(counts(&pg).await.iter().all(|(_, n)| *n == 0));
    // And no connection string at all is a usage error naming the variable.
    let o = dualwrite(&pg, dir.path(), None, &args).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("SUPABASE_DB_URL"), "{}", text(&o));
}

#[tokio::test]
async fn via_postgres_reset_truncates_through_the_connection_string() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = fixture("dox-small.sqlite3");
    let o = run(&pg, dir.path(), &backfill_args(&src, &state, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The REST path's function gone: the reset can only go through the connection.
    let c = pg.sql().await;
    c.batch_execute(
        "drop function public.dualwrite_reset(text[]);
         insert into public.tags (id, document_id, tag) values ('extra-tag', 'd', 'x');",
    )
    .await
    .unwrap();
    let o = run(
        &pg,
        dir.path(),
        &backfill_args(&src, &state, &["--reset", "--yes"]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        !text(&o).contains("dualwrite_reset"),
        "went through REST: {}",
        text(&o)
    );
    let n: i64 = c
        .query_one(
            "select count(*) from public.tags where id = 'extra-tag'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the reset emptied the table");
    assert_same(&src, &pg.supabase(), "after --reset via postgres").await;
}

#[tokio::test]
async fn via_postgres_copies_are_not_queued_by_capture_on_supabase() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    pg.ddl(rc::MIGRATION_SQL).await;
    let dir = tempfile::tempdir().unwrap();
    let o = dualwrite(
        &pg,
        dir.path(),
        None,
        &["capture", "install", "--target", "supabase"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let src: PathBuf = dir.path().join("src.sqlite3");
    let o = dualwrite(
        &pg,
        dir.path(),
        None,
        &[
            "fixtures",
            "generate",
            "--rows",
            "2000",
            "--seed",
            "5",
            "--out",
            src.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let state = dir.path().join("state");
    let c = pg.sql().await;
    let queued = || async {
        pg.sql()
            .await
            .query_one("select count(*) from dualwrite_capture.changes", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    for extra in [&[][..], &["--restart"][..], &["--reset", "--yes"][..]] {
        let o = run(&pg, dir.path(), &backfill_args(&src, &state, extra));
        assert!(matches!(o.status.code(), Some(0 | 3)), "{}", text(&o));
        let r: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(r["rows_written"].as_u64().unwrap() > 1000, "{r}");
        assert_eq!(
            queued().await,
            0,
            "{extra:?}: the backfill's rows were queued"
        );
    }
    // Any other writer over a direct connection is queued: the check above can fail.
    c.batch_execute("insert into public.tags (id, document_id, tag) values ('by-psql', 'd', 'x')")
        .await
        .unwrap();
    assert!(queued().await > 0, "capture is not on");
}

#[tokio::test]
async fn import_via_postgres_of_an_export_lands_equal() {
    needs_stack!();
    let pg = PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("dox-small-alembic.sqlite3");
    let out = dir.path().join("export");
    let o = run(
        &pg,
        dir.path(),
        &[
            "export",
            "--from-sqlite",
            src.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--compress",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let state = dir.path().join("state");
    let o = run(
        &pg,
        dir.path(),
        &[
            "import",
            out.to_str().unwrap(),
            "--via",
            "postgres",
            "--state-dir",
            state.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        r["target"]
            .as_str()
            .unwrap()
            .contains("rows via postgres://"),
        "{r}"
    );
    assert_eq!(r["rows_written"], r["rows_read"], "{r}");
    assert_same(&src, &pg.supabase(), "import via postgres").await;
}

//! The reverse direction (Supabase primary): change capture on Supabase,
//! switched by the real binary, fed by writes through PostgREST and psql, and
//! closed to the anon and authenticated keys (checked through the REST API).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{json, Value};

use dualwrite::catalogue;
use dualwrite::keys;
use dualwrite::rest::{RestClient, RestConfig};
use dualwrite::reverse::capture::{self as rc, CaptureState};

use crate::harness::{stack, unique, PrivateDb};

/// A private database with the capture migration applied (the shared
/// template may predate it; the migration is re-runnable).
async fn db_with_capture() -> PrivateDb {
    let pg = PrivateDb::new().await;
    pg.ddl(rc::MIGRATION_SQL).await;
    pg
}

fn run(dir: &Path, pg: &PrivateDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .env_clear()
        .env("RUST_LOG", "warn")
        .env("DB_PATH", dir.join("dox.sqlite3"))
        .env("SUPABASE_URL", &pg.url)
        .env("SUPABASE_SERVICE_KEY", pg.service_key())
        .env("SUPABASE_TIMEOUT", "5")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn state(o: &Output) -> CaptureState {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// A client of the private PostgREST with a JWT for `role`.
fn client_as(pg: &PrivateDb, role: &str, sub: Option<&str>, schema: &str) -> RestClient {
    let jwt = keys::sign(stack().jwt_secret(), role, sub, Duration::from_secs(600)).unwrap();
    RestClient::new(&RestConfig {
        url: pg.url.clone(),
        key: SecretString::from(jwt),
        user_jwt: None,
        schema: schema.into(),
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap()
}

/// (tbl, key, op) of every pending change, in seq order.
async fn pending(service: &RestClient) -> Vec<(String, String, String)> {
    let rows = service
        .rpc("dualwrite_changes", &json!({"max_rows": 1000}))
        .await
        .unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            (s("tbl"), s("key"), s("op"))
        })
        .collect()
}

fn change(tbl: &str, key: &str, op: &str) -> (String, String, String) {
    (tbl.to_owned(), key.to_owned(), op.to_owned())
}

#[tokio::test]
async fn capture_on_supabase_logs_every_writer_and_only_the_service_role_reaches_it() {
    needs_stack!();
    let pg = db_with_capture().await;
    let dir = tempfile::tempdir().unwrap();
    let service = pg.rest(Duration::from_secs(10));

    // Off after the migration: nothing installed, status exits 1.
    let o = run(
        dir.path(),
        &pg,
        &["capture", "status", "--target", "supabase"],
    );
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(!state(&o).enabled);
    let a = unique("rev-art");
    let body = |v: Value| serde_json::to_string(&v).unwrap();
    let art = |id: &str| json!([{"id": id, "filename": "f", "filepath": "p", "filetype": ".pdf"}]);
    service
        .upsert(&catalogue::ARTIFACT, body(art(&a)))
        .await
        .unwrap();
    assert!(pending(&service).await.is_empty(), "capture is off");

    // Install, twice (idempotent): every trigger present.
    for _ in 0..2 {
        let o = run(
            dir.path(),
            &pg,
            &["capture", "install", "--target", "supabase"],
        );
        assert!(o.status.success(), "{o:?}");
        let st = state(&o);
        assert!(st.installed(), "{st:?}");
        assert_eq!(st.pending, 0);
    }
    let o = run(
        dir.path(),
        &pg,
        &["capture", "status", "--target", "supabase"],
    );
    assert!(o.status.success(), "{o:?}");

    // Writes through PostgREST (an upsert that updates, one that inserts) ...
    let b = unique("rev-art");
    service
        .upsert(&catalogue::ARTIFACT, body(art(&a)))
        .await
        .unwrap();
    service
        .upsert(&catalogue::ARTIFACT, body(art(&b)))
        .await
        .unwrap();
    // ... and by SQL: a key-changing update, a delete, a rolled-back insert.
    let sql = pg.sql().await;
    let c = unique("rev-art");
    sql.execute("update artifacts set id = $1 where id = $2", &[&c, &b])
        .await
        .unwrap();
    sql.execute("delete from artifacts where id = $1", &[&a])
        .await
        .unwrap();
    sql.batch_execute(
        "begin; insert into artifacts (id, filename, filepath, filetype) \
         values ('rolled-back', 'f', 'p', '.pdf'); rollback;",
    )
    .await
    .unwrap();
    // A multi-row statement logs every row.
    sql.batch_execute(
        "insert into user_prefs (user_id, preferences) values ('rev-u1', '{}'), ('rev-u2', '{}')",
    )
    .await
    .unwrap();
    let expect = vec![
        change("artifacts", &a, "U"),
        change("artifacts", &b, "I"),
        change("artifacts", &b, "D"),
        change("artifacts", &c, "U"),
        change("artifacts", &a, "D"),
        change("user_prefs", "rev-u1", "I"),
        change("user_prefs", "rev-u2", "I"),
    ];
    assert_eq!(pending(&service).await, expect);

    // anon and authenticated: no rpc, no table, no ack.
    let sub = unique("user");
    for c in [
        client_as(&pg, "anon", None, "public"),
        client_as(&pg, "authenticated", Some(&sub), "public"),
    ] {
        for (f, args) in [
            ("dualwrite_changes", json!({"max_rows": 10})),
            (
                "dualwrite_changes_ack",
                json!({"seqs": [1, 2, 3, 4, 5, 6, 7, 8]}),
            ),
            ("dualwrite_capture", json!({"set_enabled": false})),
            ("dualwrite_capture", json!({})),
        ] {
            let e = c.rpc(f, &args).await.unwrap_err();
            assert_eq!(e.code(), Some("42501"), "{f}: {e}");
        }
    }
    for role in ["anon", "authenticated"] {
        let c = client_as(&pg, role, Some(&sub), "dualwrite_capture");
        let e = c
            .select_page("changes", "*", &[], "seq", None, 10)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("PGRST106") || e.code() == Some("PGRST106"),
            "{e}"
        );
        let e = c
            .send(
                c.from("changes")
                    .insert(r#"[{"tbl":"artifacts","key":"x","op":"I"}]"#)
                    .build(),
                None,
            )
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("PGRST106") || e.code() == Some("PGRST106"),
            "{e}"
        );
    }
    // Nothing they tried changed the log or the switch.
    assert_eq!(pending(&service).await, expect);

    // Acknowledging removes exactly the seqs given.
    let rows = service
        .rpc("dualwrite_changes", &json!({"max_rows": 2}))
        .await
        .unwrap();
    let seqs: Vec<i64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    let n = service
        .rpc("dualwrite_changes_ack", &json!({ "seqs": seqs }))
        .await
        .unwrap();
    assert_eq!(n, json!(2));
    assert_eq!(pending(&service).await, expect[2..].to_vec());

    // Uninstall refuses while changes are pending, then drops them with --force.
    let o = run(
        dir.path(),
        &pg,
        &["capture", "uninstall", "--target", "supabase"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("5 change(s)") && err.contains("--force"),
        "{err}"
    );
    let o = run(
        dir.path(),
        &pg,
        &["capture", "uninstall", "--target", "supabase", "--force"],
    );
    assert!(o.status.success(), "{o:?}");
    let st = state(&o);
    assert!(!st.enabled && st.pending == 0, "{st:?}");
    service
        .upsert(&catalogue::ARTIFACT, body(art(&a)))
        .await
        .unwrap();
    assert!(pending(&service).await.is_empty(), "triggers removed");
}

#[test]
fn print_sql_prints_the_migration_and_needs_the_supabase_target() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .env_clear()
        .current_dir(dir.path())
        .args(["capture", "install", "--target", "supabase", "--print-sql"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out, rc::MIGRATION_SQL);
    assert!(out.contains("create table if not exists dualwrite_capture.changes"));
    let o = Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .env_clear()
        .current_dir(dir.path())
        .args(["capture", "install", "--print-sql"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--target supabase"));
}

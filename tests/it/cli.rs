//! The built binary, run the way an operator runs it.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::harness::{stack, unique};

fn dualwrite(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dualwrite"));
    c.current_dir(dir).args(args);
    // Start from the stack's variables; tests override what they need.
    for (k, v) in stack().env() {
        c.env(k, v);
    }
    c.env("DB_PATH", dir.join("app.sqlite3"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn call_writes_through_dual_and_prints_the_result() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let user = unique("cli-user");
    let args =
        json!({"category": "team_memory", "content": {"k": "v"}, "user_id": user}).to_string();
    let o = dualwrite(
        dir.path(),
        &[("SUPABASE_DUAL_WRITE", "true")],
        &["call", "add_memory", "--args", &args],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let id: String = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    // On the SQLite primary, read back through the same door...
    let o = dualwrite(
        dir.path(),
        &[],
        &[
            "call",
            "search_memory",
            "--args",
            &json!({"user_id": user}).to_string(),
        ],
    );
    let found: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(found[0]["id"], id);
    // ...and on Supabase, with the same id.
    let rows = stack()
        .service_client()
        .select_page(
            "cipher_memory",
            "*",
            &[("id", Some(id.clone()))],
            "id",
            None,
            5,
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["category"], "team_memory");
}

#[test]
fn bad_input_gets_a_clear_error_and_writes_nothing() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.sqlite3");
    for (args, code, want) in [
        (
            vec!["call", "add_artifcat", "--args", "{}"],
            2,
            "unknown method `add_artifcat`",
        ),
        (
            vec!["call", "add_artifact", "--args", "{\"artifact\": "],
            2,
            "not valid JSON",
        ),
        (
            vec![
                "call",
                "add_artifact",
                "--args",
                "{\"artifact\": {\"id\": \"a\"}}",
            ],
            2,
            "missing field `filename`",
        ),
        (
            vec![
                "call",
                "add_memory",
                "--args",
                "{\"category\": \"x\", \"content\": 1, \"colour\": 2}",
            ],
            2,
            "unknown field `colour`",
        ),
    ] {
        let o = dualwrite(dir.path(), &[], &args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(!db.exists(), "{args:?} created the database");
    }
    let o = dualwrite(
        dir.path(),
        &[("DB_BACKEND", "postgres")],
        &["call", "get_artifacts"],
    );
    // A bad setting is bad input, as a bad flag.
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("DB_BACKEND=`postgres`"),
        "{}",
        stderr(&o)
    );
    assert!(!db.exists());
}

#[test]
fn secrets_never_appear_in_output_or_logs() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let s = stack();
    let secrets = [
        s.var("SUPABASE_SERVICE_KEY"),
        s.var("SUPABASE_JWT_SECRET"),
        s.var("SUPABASE_ANON_KEY"),
    ];
    let o = dualwrite(dir.path(), &[("RUST_LOG", "trace")], &["config"]);
    assert!(o.status.success());
    let cfg: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(cfg["supabase"]["service_key"]
        .as_str()
        .unwrap()
        .starts_with("[redacted"));
    // A mirror that cannot be reached: the failure is logged with method, table and key.
    let o = dualwrite(
        dir.path(),
        &[
            ("RUST_LOG", "trace"),
            ("SUPABASE_DUAL_WRITE", "true"),
            ("SUPABASE_URL", "http://127.0.0.1:9"),
        ],
        &[
            "call",
            "add_tag",
            "--args",
            r#"{"tag": {"id": "t-1", "document_id": "d", "tag": "x"}}"#,
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("secondary write failed"), "{err}");
    assert!(
        err.contains("add_tag") && err.contains("tagrow") && err.contains("t-1"),
        "{err}"
    );
    for out in [
        stdout(&o),
        err,
        stdout(&dualwrite(dir.path(), &[], &["config"])),
    ] {
        for secret in secrets {
            assert!(!out.contains(secret), "a secret leaked: {out}");
        }
    }
}

#[test]
fn check_says_what_is_wrong_with_supabase() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let dual = ("SUPABASE_DUAL_WRITE", "true");
    // A failed check exits 1, its report still on stdout.
    let o = dualwrite(dir.path(), &[dual, ("SUPABASE_URL", "")], &["check"]);
    assert_eq!(o.status.code(), Some(1));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["active"], "sqlite");
    assert_eq!(r["dual_write"], false);
    assert!(r["supabase_error"]
        .as_str()
        .unwrap()
        .contains("SUPABASE_URL is not set"));

    let o = dualwrite(
        dir.path(),
        &[dual, ("SUPABASE_SERVICE_KEY", "eyJ.bad.key")],
        &["check"],
    );
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(
        r["supabase_error"]
            .as_str()
            .unwrap()
            .contains("rejected the API key"),
        "{r}"
    );

    let o = dualwrite(dir.path(), &[dual], &["check"]);
    assert_eq!(o.status.code(), Some(0));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        r,
        json!({"configured": "sqlite", "active": "dual:sqlite+supabase", "dual_write": true, "supabase_error": null})
    );

    // Merely unreachable: dual write stays on, failures are recorded for
    // replay; the check still failed.
    let o = dualwrite(
        dir.path(),
        &[dual, ("SUPABASE_URL", "http://127.0.0.1:9")],
        &["check"],
    );
    assert_eq!(o.status.code(), Some(1));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["active"], "dual:sqlite+supabase");
    assert!(
        r["supabase_error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{r}"
    );

    let o = dualwrite(dir.path(), &[dual, ("DB_PATH", "/etc/passwd")], &["check"]);
    // Not a database: bad input.
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("/etc/passwd") && err.contains("not a database"),
        "{err}"
    );

    let o = dualwrite(
        dir.path(),
        &[
            ("DB_BACKEND", "supabase"),
            ("SUPABASE_URL", "http://127.0.0.1:9"),
        ],
        &["check"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unreachable"), "{}", stderr(&o));
}

/// DoX's own `.env`, as Supabase's documents write it: `SUPABASE_URL` is the
/// project URL and the key may be `SUPABASE_SERVICE_ROLE_KEY` alone. The old
/// suffixed form reaches the same API, with one note; a bare PostgREST in
/// `SUPABASE_URL` is named as such, and reached with `DUALWRITE_REST_URL`.
#[test]
fn doxs_own_environment_reaches_supabase_in_either_url_form() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let project = stack().var("SUPABASE_URL").to_owned();
    let bare = stack().var("DUALWRITE_POSTGREST_URL").to_owned();
    let key = stack().var("SUPABASE_SERVICE_KEY").to_owned();
    let run = |env: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dualwrite"));
        c.current_dir(dir.path()).arg("check");
        for (k, _) in std::env::vars() {
            if k.starts_with("SUPABASE_") || k.starts_with("DUALWRITE_") || k == "RUST_LOG" {
                c.env_remove(k);
            }
        }
        c.env("DB_PATH", dir.path().join("app.sqlite3"))
            .env("SUPABASE_DUAL_WRITE", "true")
            .env("SUPABASE_SERVICE_ROLE_KEY", &key)
            .envs(env.iter().copied());
        c.output().unwrap()
    };
    let note = "ends in /rest/v1";
    let suffixed = format!("{project}/rest/v1");
    let slashed = format!("{project}/rest/v1/");
    for (url, noted) in [(&project, false), (&suffixed, true), (&slashed, true)] {
        let o = run(&[("SUPABASE_URL", url)]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(0), "{url}: {} {err}", stdout(&o));
        let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(r["supabase_error"], Value::Null, "{url}: {r}");
        assert_eq!(
            err.matches(note).count(),
            usize::from(noted),
            "{url}: {err}"
        );
        assert!(!err.contains(&key), "the key leaked: {err}");
    }
    // PostgREST itself, not the project URL: the path is wrong, not the schema.
    let o = run(&[("SUPABASE_URL", &bare)]);
    assert_eq!(o.status.code(), Some(1));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let e = r["supabase_error"].as_str().unwrap();
    assert!(
        e.contains("nothing serves PostgREST") && e.contains("DUALWRITE_REST_URL"),
        "{e}"
    );
    assert!(!e.contains("no DoX tables"), "{e}");
    // Named as what it is, it is reached.
    let o = run(&[("SUPABASE_URL", &project), ("DUALWRITE_REST_URL", &bare)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// An anon key where the service role is needed: the error names the role
/// the key has and the one it needs, for either kind of anon key.
#[test]
fn an_anon_key_is_named_by_its_role() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let src = crate::harness::fixture("dox-small.sqlite3");
    for anon in ["SUPABASE_ANON_KEY", "SUPABASE_PUBLISHABLE_KEY"] {
        let key = stack().var(anon).to_owned();
        let state = dir.path().join(anon);
        let o = dualwrite(
            dir.path(),
            &[("SUPABASE_SERVICE_KEY", ""), ("SUPABASE_ANON_KEY", &key)],
            &[
                "backfill",
                "--from-sqlite",
                src.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
            ],
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{anon}: {err}");
        assert!(
            err.contains("the key's role is anon; dualwrite needs service_role"),
            "{anon}: {err}"
        );
        assert!(!err.contains(&key), "the key leaked: {err}");
    }
}

#[test]
fn keys_generate_sign_verify_decode() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let o = dualwrite(dir.path(), &[], &["keys", "generate"]);
    assert!(o.status.success());
    let out = stdout(&o);
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("SUPABASE_JWT_SECRET="))
        .unwrap();
    assert!(out.contains("SUPABASE_SERVICE_KEY=ey"));
    let env = [("SUPABASE_JWT_SECRET", secret)];
    let o = dualwrite(
        dir.path(),
        &env,
        &[
            "keys",
            "sign",
            "--role",
            "authenticated",
            "--sub",
            "dev_user",
            "--ttl",
            "60",
        ],
    );
    let token = stdout(&o).trim().to_owned();
    let o = dualwrite(dir.path(), &env, &["keys", "verify", &token]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (v["valid"].clone(), v["claims"]["sub"].clone()),
        (json!(true), json!("dev_user"))
    );
    // Verified with another secret: refused, exit 3 (the answer is no).
    let o = dualwrite(dir.path(), &[], &["keys", "verify", &token]);
    assert_eq!(o.status.code(), Some(3));
    let o = dualwrite(dir.path(), &[], &["keys", "decode", &token]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["claims"]["role"], "authenticated");
    // A token the stack accepts: the stack's own secret signs a working service key.
    let o = dualwrite(dir.path(), &[], &["keys", "sign", "--role", "service_role"]);
    assert!(o.status.success());
    let key = stdout(&o).trim().to_owned();
    let check = dualwrite(
        dir.path(),
        &[
            ("SUPABASE_DUAL_WRITE", "true"),
            ("SUPABASE_SERVICE_KEY", &key),
        ],
        &["check"],
    );
    let r: Value = serde_json::from_str(&stdout(&check)).unwrap();
    assert_eq!(r["supabase_error"], Value::Null, "{r}");
}

#[test]
fn the_demo_shows_every_sample_on_both_sides() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let o = dualwrite(dir.path(), &[], &["demo", "--db", "demo.sqlite3"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("every sample row is on both sides and equal"),
        "{out}"
    );
    assert!(
        out.contains("cipher_memory") && out.contains("non_finite_json"),
        "{out}"
    );
    assert!(dir.path().join("demo.sqlite3").exists());
}

#[tokio::test]
async fn failures_recorded_by_one_call_are_replayed_by_another() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let id = unique("replayed-tag");
    let args = json!({"tag": {"id": id, "document_id": "d", "tag": "x"}}).to_string();
    let down = [
        ("SUPABASE_DUAL_WRITE", "true"),
        ("SUPABASE_URL", "http://127.0.0.1:9"),
    ];
    let o = dualwrite(dir.path(), &down, &["call", "add_tag", "--args", &args]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("app.sqlite3.failures.ndjson"),
        "{}",
        stderr(&o)
    );
    // Replaying while still down keeps it recorded.
    let o = dualwrite(dir.path(), &down, &["replay"]);
    assert_eq!(o.status.code(), Some(3));
    // Back up: the replay lands it and empties the record.
    let o = dualwrite(dir.path(), &[("SUPABASE_DUAL_WRITE", "true")], &["replay"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (r["replayed"].clone(), r["still_failing"].clone()),
        (json!(1), json!(0))
    );
    let rows = stack()
        .service_client()
        .select_page("tags", "*", &[("id", Some(id.clone()))], "id", None, 5)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let log = std::fs::read_to_string(dir.path().join("app.sqlite3.failures.ndjson")).unwrap();
    assert!(log.trim().is_empty(), "{log}");
}

/// Needs no stack: the point is a Supabase nobody answers for.
#[test]
fn an_unreachable_supabase_is_named_once_with_its_cause_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again: connections are refused
    let url = format!("http://127.0.0.1:{port}");
    let key = dualwrite::keys::sign(
        "a-test-secret-of-at-least-thirty-two-chars",
        "service_role",
        None,
        std::time::Duration::from_secs(600),
    )
    .unwrap();
    let source = crate::harness::fixture("dox-small.sqlite3");
    let src = source.to_str().unwrap();
    let tag = json!({"tag": {"id": "t", "document_id": "d", "tag": "x"}}).to_string();
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Env, Vec<&str>); 4] = [
        (&[("DB_BACKEND", "supabase")], vec!["check"]),
        (&[], vec!["verify", "--from-sqlite", src]),
        (
            &[],
            vec!["backfill", "--from-sqlite", src, "--max-wait-secs", "1"],
        ),
        (
            &[("SUPABASE_DUAL_WRITE", "true")],
            vec!["call", "add_tag", "--args", &tag],
        ),
    ];
    for (env, args) in cases {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dualwrite"));
        c.current_dir(dir.path()).args(&args);
        for (k, _) in std::env::vars() {
            if k.starts_with("SUPABASE_") || k.starts_with("DB_") || k == "RUST_LOG" {
                c.env_remove(k);
            }
        }
        c.env("DB_PATH", dir.path().join("app.sqlite3"))
            .env("SUPABASE_URL", &url)
            .env("SUPABASE_SERVICE_KEY", &key)
            .env("NO_COLOR", "1");
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        let err = stderr(&o);
        assert_ne!(o.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.contains("Connection refused"), "{args:?}: {err}");
        assert!(
            err.contains(&url) && err.contains("SUPABASE_URL"),
            "{args:?}: {err}"
        );
        assert!(!err.contains(&key), "{args:?}: the key leaked: {err}");
        for line in err.lines() {
            assert!(
                line.matches("Connection refused").count() <= 1 && line.matches(&url).count() <= 1,
                "{args:?}: a line repeats the cause or the URL: {line}"
            );
        }
    }
}

#[test]
fn a_missing_source_file_is_named_once_with_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere/app.sqlite3");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["verify", "--from-sqlite", m],
        vec!["export", "--from-sqlite", m, "--out", "export"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_dualwrite"))
            .current_dir(dir.path())
            .args(&args)
            .env("SUPABASE_URL", "http://127.0.0.1:9")
            .env("SUPABASE_SERVICE_KEY", "sb_secret_not_used_here")
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_ne!(o.status.code(), Some(0), "{args:?}: {err}");
        assert_eq!(err.matches(m).count(), 1, "{args:?}: {err}");
        assert!(err.contains("no such file"), "{args:?}: {err}");
    }
    // An output that cannot be written is named too.
    let src = crate::harness::fixture("dox-small.sqlite3");
    std::fs::write(dir.path().join("blocker"), "").unwrap();
    let out = dir.path().join("blocker/export");
    let o = Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .current_dir(dir.path())
        .args(["export", "--from-sqlite", src.to_str().unwrap(), "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.matches(out.to_str().unwrap()).count(), 1, "{err}");
}

/// `--tables` is parsed once for every command: an unknown table, or one that
/// is not copied (`search_chunks`, which Supabase derives), is an error listing
/// the valid names, before anything is opened or written.
#[test]
fn a_table_that_is_not_copied_is_an_error_listing_the_valid_names() {
    needs_stack!();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for (cmd, table) in [
        ("backfill", "search_chunks"),
        ("backfill", "no_such_table"),
        ("verify", "search_chunks"),
        ("export", "search_chunks"),
    ] {
        let mut args = vec![cmd, "--from-sqlite", "absent.sqlite3", "--tables", table];
        match cmd {
            "backfill" => args.extend(["--state-dir", state.to_str().unwrap()]),
            "export" => args.extend(["--out", "out"]),
            _ => {}
        }
        let o = dualwrite(dir.path(), &[], &args);
        assert_eq!(o.status.code(), Some(2), "{cmd} {table}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(table), "{cmd}: {e}");
        assert!(
            e.contains("artifact") && e.contains("skills_registry"),
            "{cmd}: the valid names are listed: {e}"
        );
        assert!(!state.exists(), "{cmd}: nothing was written");
        assert!(
            !dir.path().join("out").exists(),
            "{cmd}: nothing was written"
        );
    }
}

/// Every command that reads a DoX file refuses one that is not (exit 2, the
/// message `capture install` gives), and one that lacks DoX tables unless
/// `--allow-missing-tables`, which then names them in the report. Nothing is
/// written to Supabase meanwhile (the private database stays empty).
#[tokio::test]
async fn a_file_that_is_not_doxs_or_lacks_tables_is_refused() {
    needs_stack!();
    let pg = crate::harness::PrivateDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.sqlite3");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT); INSERT INTO notes VALUES ('n', 'b');")
        .unwrap();
    let env = [
        ("DUALWRITE_REST_URL", pg.url.as_str()),
        ("SUPABASE_SERVICE_KEY", &pg.service_key()),
    ];
    let path = other.display().to_string();
    let out = dir.path().join("export").display().to_string();
    for args in [
        vec!["backfill", "--from-sqlite", &path],
        vec!["verify", "--counts-only", "--from-sqlite", &path],
        vec!["export", "--from-sqlite", &path, "--out", &out],
    ] {
        let o = dualwrite(dir.path(), &env, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("is not a DoX database: it has none of the DoX tables"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // A file that is not a database at all: 2 from every command, `call` too.
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a database, ".repeat(64)).unwrap();
    let text = text.display().to_string();
    for args in [
        vec!["call", "list_tags", "--db-path", &text],
        vec!["capture", "install", "--db-path", &text],
        vec!["verify", "--counts-only", "--from-sqlite", &text],
    ] {
        let o = dualwrite(dir.path(), &env, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("not a"), "{args:?}: {}", stderr(&o));
    }
    // The daemon, either way, refuses it too (within seconds: it does not start).
    for direction in ["forward", "reverse"] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dualwrite"));
        for (k, v) in stack().env() {
            c.env(k, v);
        }
        let mut child = c
            .current_dir(dir.path())
            .envs(env.iter().copied())
            .args(["serve", "--direction", direction, "--db-path", &path])
            .args(["--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve --direction {direction} runs on a file that is not DoX's");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(2), "{direction}: {err}");
        assert!(err.contains("is not a DoX database"), "{direction}: {err}");
    }
    // A DoX file without fact and evidence.
    let partial = dir.path().join("partial.sqlite3");
    drop(
        dualwrite::db::SqliteDatabase::open(&partial, dualwrite::db::SqliteOptions::default())
            .await
            .unwrap(),
    );
    rusqlite::Connection::open(&partial)
        .unwrap()
        .execute_batch("DROP TABLE fact; DROP TABLE evidence;")
        .unwrap();
    let path = partial.display().to_string();
    let o = dualwrite(dir.path(), &env, &["backfill", "--from-sqlite", &path]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("lacks the DoX table(s) fact, evidence")
            && stderr(&o).contains("--allow-missing-tables"),
        "{}",
        stderr(&o)
    );
    let o = dualwrite(
        dir.path(),
        &env,
        &[
            "backfill",
            "--from-sqlite",
            &path,
            "--allow-missing-tables",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["missing_tables"], json!(["fact", "evidence"]), "{r}");
    let o = dualwrite(
        dir.path(),
        &env,
        &[
            "verify",
            "--counts-only",
            "--from-sqlite",
            &path,
            "--allow-missing-tables",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
}

/// `serve`'s options come from the config file's `[serve]`, then
/// `DUALWRITE_SERVE_*`, then the flags; `dualwrite config` shows what each
/// direction runs with, and a bad value names its variable.
#[test]
fn serve_is_configured_like_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dw.toml"),
        "[serve]\nrequest_rows = 7\nbatch_rows = 9\nlisten = \"127.0.0.1:9999\"\n",
    )
    .unwrap();
    let config = |env: &[(&str, &str)]| {
        let o = Command::new(env!("CARGO_BIN_EXE_dualwrite"))
            .current_dir(dir.path())
            .env_clear()
            .envs(env.iter().copied())
            .args(["config", "--config", "dw.toml"])
            .output()
            .unwrap();
        (o.status.code(), stdout(&o), stderr(&o))
    };
    let (code, out, err) = config(&[("DUALWRITE_SERVE_BATCH_ROWS", "123")]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for d in ["forward", "reverse"] {
        let o = &v["serve"][d];
        assert_eq!(o["batch_rows"], 123, "the variable wins over the file: {o}");
        assert_eq!(o["request_rows"], 7, "the file wins over the default: {o}");
        assert_eq!(o["listen"], "127.0.0.1:9999", "{o}");
    }
    // Defaults differ by direction where nothing is configured.
    assert_ne!(
        v["serve"]["forward"]["poll_ms"],
        v["serve"]["reverse"]["poll_ms"]
    );
    let (code, _, err) = config(&[("DUALWRITE_SERVE_POLL_MS", "soon")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("DUALWRITE_SERVE_POLL_MS=`soon`"), "{err}");
    let (code, _, err) = config(&[("DUALWRITE_SERVE_LISTEN", "localhost")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("DUALWRITE_SERVE_LISTEN"), "{err}");
}

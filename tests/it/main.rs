//! Integration tests against a real temp-file SQLite and the real local
//! PostgreSQL + PostgREST (+ nginx) stack started by `scripts/stack.sh up`.
//!
//! The tests that need the stack begin with `needs_stack!()`: they run only with
//! `DUALWRITE_TEST_STACK=1` (scripts/test.sh sets it) and otherwise return at
//! once, after one note on stderr. The other tests (SQLite, the generator, the
//! fixtures) always run.

// Test and benchmark helpers fail loudly by design: an unwrap is their assertion
// (clippy.toml allows it inside #[test] functions only).
#![allow(clippy::unwrap_used)]

/// Return from the test unless the local stack is enabled (see `harness::stack_enabled`).
macro_rules! needs_stack {
    () => {
        if !crate::harness::stack_enabled() {
            return;
        }
    };
}

mod harness;

mod atomic;
mod backends;
mod backfill;
mod cli;
mod coerce;
mod cutover_run;
mod deploy;
mod dual;
mod embedded_switch;
mod faults;
mod fence;
mod fixtures;
mod generate;
mod numbers;
mod reverse;
mod rls;
mod safety;
mod serve;
mod verify;
mod via_postgres;

/// Every test that reaches the stack (a private database, the shared stack, or
/// a helper that reads its variables) is gated, so that `cargo test` without the
/// stack skips it instead of failing: a test body that names one of those and
/// not `needs_stack!()` is reported by file and name.
#[test]
fn every_test_that_needs_the_stack_is_gated() {
    let dir = harness::repo().join("tests/it");
    let mut ungated = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if file == "harness.rs" || file == "main.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Helpers of this file that reach the stack: their callers need the gate too.
        let mut reaching = vec!["PrivateDb::new".to_owned(), "stack()".to_owned()];
        for chunk in text.split("\nfn ").skip(1) {
            let name = chunk.split('(').next().unwrap_or("").trim().to_owned();
            if reaching[..2]
                .iter()
                .any(|r| chunk.split("\n}\n").next().unwrap().contains(r))
            {
                reaching.push(format!("{name}("));
            }
        }
        for test in text
            .split("#[tokio::test")
            .skip(1)
            .chain(text.split("#[test]").skip(1))
        {
            let Some(start) = test.find("fn ") else {
                continue;
            };
            let body = test[start..].split("\n}\n").next().unwrap();
            let name = body[3..].split('(').next().unwrap().trim();
            if reaching.iter().any(|r| body.contains(r.as_str()))
                && !body.contains("needs_stack!()")
            {
                ungated.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(
        ungated.is_empty(),
        "tests that need the stack but lack needs_stack!(): {ungated:#?}"
    );
}

/// One home per boundary: only `src/rest.rs` builds requests to PostgREST
/// (every other module asks it, or `db/supabase.rs` on top of it), and only
/// `src/db/sqlite/` and `src/capture/` open a SQLite connection (every other
/// module is handed one, or asks them). Unit tests inside `src/` are not
/// looked at (what follows `#[cfg(test)]`).
#[test]
fn each_boundary_has_one_home() {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = harness::repo().join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut strays = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let requests = ["reqwest::Client", "RequestBuilder", "postgrest::"];
        if rel != "rest.rs" && requests.iter().any(|r| code.contains(r)) {
            strays.push(format!("{rel} builds a PostgREST request"));
        }
        let opens = ["Connection::open", "open_with_flags"];
        let sqlite_home = rel.starts_with("db/sqlite/") || rel.starts_with("capture/");
        if !sqlite_home && opens.iter().any(|o| code.contains(o)) {
            strays.push(format!("{rel} opens a SQLite connection"));
        }
    }
    assert!(strays.is_empty(), "{strays:#?}");
}

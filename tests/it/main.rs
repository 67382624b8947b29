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
mod deploy;
mod dual;
mod fixtures;
mod generate;
mod numbers;
mod reverse;
mod rls;
mod safety;
mod serve;
mod verify;

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

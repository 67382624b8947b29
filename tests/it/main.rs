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
mod dual;
mod fixtures;
mod generate;
mod numbers;
mod reverse;
mod rls;
mod safety;
mod serve;
mod verify;

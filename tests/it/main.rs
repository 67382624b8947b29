//! Integration tests against a real temp-file SQLite and the real local
//! PostgreSQL + PostgREST (+ nginx) stack started by `scripts/stack.sh up`.

mod harness;

mod backends;
mod backfill;
mod cli;
mod dual;
mod fixtures;
mod generate;
mod rls;
mod serve;
mod verify;

//! dualwrite: move a DoX application's data from SQLite to Supabase without
//! downtime and without losing a row.
//!
//! * [`db`]: the [`db::Database`] contract, the DoX interface [`db::Dox`], and
//!   the SQLite, Supabase and dual backends ([`db::RestClient`] under Supabase's).
//! * [`model`]: every DoX write and read as data ([`model::Write`], [`model::Read`]).
//! * [`catalogue`] and [`normalise`]: the one table catalogue and the one value
//!   normaliser, shared by the writer, the readers and the verifier.
//! * [`config`] and [`factory`]: layered settings and opening the configured backend.
//! * [`backfill`] and [`export`]: the resumable bulk copy; NDJSON export and import.
//! * [`verify`] and [`cutover`]: compare both sides by content (and repair);
//!   decide whether Supabase (or, for a rollback, the file) may become the primary.
//! * [`capture`] and [`serve`]: change capture on the DoX file (and, in
//!   [`capture::supabase`], on Supabase) and the daemon that mirrors every change.
//! * [`access`], [`keys`], [`error`]: the Data API access state, JWT secrets and
//!   API keys, the one error type.
//! * `generate`, `samples`, `demo` (feature `tooling`, on by default): fixture
//!   data, the spec's sample records, the dual-write demo.
//!
//! The rest (the PostgREST layer, retries, state files) is private: an item no
//! public path reaches is `pub(crate)`, which the `unreachable_pub` lint keeps true.
//!
//! The `dualwrite` binary (`src/bin/dualwrite/`) is a thin shell over these.
//!
//! Embedded in a Rust program, with DoX's settings (environment, `.env`,
//! `config/default.toml`), as the README shows it:
//!
//! ```no_run
//! use dualwrite::{config::{Settings, Sources}, db::Dox, factory};
//!
//! # async fn example() -> dualwrite::Result<()> {
//! let settings = Settings::load(&Sources::from_process())?;
//! let (db, report) = factory::open(&settings).await?; // SQLite, Supabase or dual, as configured
//! assert!(report.supabase_error.is_none());
//! let id = db.add_memory("fact", serde_json::json!({"k": 1}), None, Some("dev_user")).await?;
//! let tags = db.list_tags(Some("doc-id"), None).await?;
//! # let _ = (id, tags);
//! # Ok(())
//! # }
//! ```
//!
//! See ARCHITECTURE.md for the code map and the invariants.

#![warn(unreachable_pub)]

// The public surface: what the CLI, the Python module and an embedding program
// use. The other modules are the implementation; the few of their types the
// surface needs are re-exported where a user looks for them (`db::RestClient`,
// `capture::supabase`, `cutover::check_rollback`, `normalise::coerced`).
pub mod access;
pub mod backfill;
pub mod capture;
pub mod catalogue;
pub mod config;
pub mod cutover;
pub mod db;
pub mod error;
pub mod export;
pub mod factory;
pub mod keys;
pub mod model;
pub mod normalise;
pub mod serve;
pub mod verify;

#[cfg(feature = "tooling")]
pub mod demo;
#[cfg(feature = "tooling")]
pub mod generate;
#[cfg(feature = "tooling")]
pub mod samples;

mod direction;
mod postgres;
mod rest;
mod retry;
mod reverse;
mod state_file;
mod sync;

pub use direction::Direction;
pub use error::{Error, Result};
pub use state_file::StateDir;

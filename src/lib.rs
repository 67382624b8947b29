//! dualwrite: move a DoX application's data from SQLite to Supabase without
//! downtime and without losing a row.
//!
//! * [`db`]: the [`db::Database`] contract, the DoX interface [`db::Dox`], and
//!   the SQLite, Supabase and dual backends.
//! * [`model`]: every DoX write and read as data ([`model::Write`], [`model::Read`]).
//! * [`catalogue`] and [`normalise`]: the one table catalogue and the one value
//!   normaliser, shared by the writer, the readers and the verifier.
//! * [`config`] and [`factory`]: layered settings and opening the configured backend.
//! * [`keys`]: JWT secrets and Supabase-style API keys.
//! * [`rest`] and [`retry`]: the typed PostgREST layer; the one place that retries.
//! * [`backfill`] and [`export`]: the resumable bulk copy; NDJSON export and import.
//! * [`verify`] and [`cutover`]: compare both sides by content (and repair);
//!   decide whether Supabase may become the primary.
//! * [`capture`] and [`serve`]: change capture on the DoX file and the daemon
//!   that mirrors every captured change.
//! * [`coerced`], [`state_file`], [`access`]: the coerced-values record, state
//!   files with safe permissions, the Data API access state.
//! * `generate`, `samples`, `demo` (feature `tooling`, on by default): fixture
//!   data, the spec's sample records, the dual-write demo.
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

pub mod access;
pub mod backfill;
pub mod capture;
pub mod catalogue;
pub mod coerced;
pub mod config;
pub mod cutover;
pub mod db;
#[cfg(feature = "tooling")]
pub mod demo;
pub mod direction;
pub mod error;
pub mod export;
pub mod factory;
#[cfg(feature = "tooling")]
pub mod generate;
pub mod keys;
pub mod model;
pub mod normalise;
pub mod postgres;
pub mod rest;
pub mod retry;
pub mod reverse;
#[cfg(feature = "tooling")]
pub mod samples;
pub mod serve;
pub mod state_file;
mod sync;
pub mod verify;

pub use error::{Error, Result};

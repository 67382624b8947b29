//! The reverse direction's own parts: Supabase is the primary and the SQLite
//! file is kept current as the rollback copy by `serve --direction reverse`
//! (the daemon is [`crate::serve`], both directions).
//!
//! [`capture`]: the change log on Supabase (triggers, switched through rpc);
//! [`rollback`]: the rollback check. Writing rows read from Supabase into the
//! file is the file's own business: [`crate::db::sqlite::mirror`].

pub mod capture;
pub(crate) mod rollback;

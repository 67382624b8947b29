//! The reverse direction: Supabase is the primary and the SQLite file is kept
//! current as the rollback copy. The same engine as `capture` + `serve`, the
//! sides swapped.
//!
//! [`capture`]: the change log on Supabase (triggers, switched through rpc);
//! [`serve`]: the daemon that drains it into the SQLite file ([`apply`]).

pub mod apply;
pub mod capture;
pub mod rollback;
pub mod serve;

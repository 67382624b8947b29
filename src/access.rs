//! The Data API access state: `mirror` while SQLite is the primary (clients
//! only read Supabase: a write there would never reach SQLite and a repair
//! would overwrite it), `primary` after cutover (authenticated users write
//! their own `cipher_memory` and `user_prefs` rows). The state lives in the
//! database (`dualwrite.access_state`, from
//! `supabase/migrations/20261127000300_dox_access_states.sql`) and is switched
//! by the SQL function `public.dualwrite_access`, which only the service role
//! may call.

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::rest::RestClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessState {
    /// Clients read only (SQLite is the primary).
    Mirror,
    /// Authenticated users write their own rows (Supabase is the primary).
    Primary,
}

impl AccessState {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessState::Mirror => "mirror",
            AccessState::Primary => "primary",
        }
    }

    pub fn parse(s: &str) -> Result<AccessState> {
        match s {
            "mirror" => Ok(AccessState::Mirror),
            "primary" => Ok(AccessState::Primary),
            other => Err(Error::invalid(format!(
                "access state `{other}` is neither mirror nor primary"
            ))),
        }
    }
}

/// Read the access state, or switch it to `to` first; returns the state now in force.
pub async fn access(rest: &RestClient, to: Option<AccessState>) -> Result<AccessState> {
    let args = match to {
        Some(s) => json!({"set_state": s.as_str()}),
        None => json!({}),
    };
    let answer = rest
        .rpc("dualwrite_access", &args)
        .await
        .map_err(|e| match e.code() {
            Some("PGRST202") => Error::config(
                "the database has no function dualwrite_access: apply \
                 supabase/migrations/20261127000300_dox_access_states.sql",
            ),
            Some("42501") => Error::config(
                "only the service role may read or switch the access state: set SUPABASE_SERVICE_KEY",
            ),
            _ => e,
        })?;
    match answer {
        Value::String(s) => AccessState::parse(&s),
        other => Err(Error::Protocol(format!(
            "dualwrite_access answered {other} instead of a state"
        ))),
    }
}

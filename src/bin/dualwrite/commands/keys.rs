//! `keys`: JWT secrets and API keys.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use dualwrite::keys;

use crate::args::{Cli, KeysCommand};
use crate::shell::{jwt_secret, print_json, settings, token_arg};

/// `keys generate|sign|verify|decode`.
pub fn run(cli: &Cli, k: &KeysCommand) -> Result<ExitCode> {
    match k {
        KeysCommand::Generate {
            days,
            service_days,
            compose,
        } => {
            let secret = keys::generate_secret();
            let ttl = Duration::from_secs(days.saturating_mul(86_400));
            let service_ttl = Duration::from_secs(service_days.saturating_mul(86_400));
            eprintln!("# new secrets: store them safely; anyone holding them has full access");
            if let Some(w) = keys::lifetime_warning("service_role", service_ttl) {
                eprintln!("{w}");
            }
            let anon = keys::sign(&secret, "anon", None, ttl)?;
            let service = keys::sign(&secret, "service_role", None, service_ttl)?;
            if *compose {
                println!("JWT_SECRET={secret}");
                println!("ANON_KEY={anon}");
                println!("SERVICE_ROLE_KEY={service}");
                println!("PUBLISHABLE_KEY=sb_publishable_{}", keys::generate_secret());
                println!("SECRET_KEY=sb_secret_{}", keys::generate_secret());
                println!("POSTGRES_PASSWORD={}", keys::generate_secret());
            } else {
                println!("SUPABASE_JWT_SECRET={secret}");
                println!("SUPABASE_ANON_KEY={anon}");
                println!("SUPABASE_SERVICE_KEY={service}");
            }
        }
        KeysCommand::Sign { role, sub, ttl, .. } => {
            let s = settings(cli)?;
            let secret = jwt_secret(&s)?;
            let ttl = Duration::from_secs(*ttl);
            if let Some(w) = keys::lifetime_warning(role, ttl) {
                eprintln!("{w}");
            }
            println!("{}", keys::sign(&secret, role, sub.as_deref(), ttl)?);
        }
        KeysCommand::Verify { token, aud, .. } => {
            let token = token_arg(token)?;
            let s = settings(cli)?;
            let secret = jwt_secret(&s)?;
            match keys::verify(&secret, &token, aud.as_deref()) {
                Ok(claims) => print_json(&json!({"valid": true, "claims": claims})),
                Err(e) => {
                    print_json(&json!({"valid": false, "error": e.to_string()}));
                    return Ok(ExitCode::from(3));
                }
            }
        }
        KeysCommand::Decode { token } => print_json(&keys::decode(&token_arg(token)?)?),
    }
    Ok(ExitCode::SUCCESS)
}

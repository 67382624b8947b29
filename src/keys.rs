//! Supabase-style API keys: a JWT secret and HS256 tokens for the `anon`,
//! `service_role` and `authenticated` roles (the original project's
//! `gen_jwt.py`), and verification / decoding of a token.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// PostgREST 13+ refuses secrets shorter than 32 characters.
pub const MIN_SECRET_LEN: usize = 32;

/// A new random JWT secret (48 alphanumeric characters).
pub fn generate_secret() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(48)
        .map(char::from)
        .collect()
}

fn check_secret(secret: &str) -> Result<()> {
    if secret.chars().count() < MIN_SECRET_LEN {
        return Err(Error::invalid(format!(
            "the JWT secret is shorter than {MIN_SECRET_LEN} characters"
        )));
    }
    Ok(())
}

/// Sign a token for `role` (and a user `sub` for `authenticated`), valid for `ttl`.
pub fn sign(secret: &str, role: &str, sub: Option<&str>, ttl: Duration) -> Result<String> {
    check_secret(secret)?;
    if !matches!(role, "anon" | "service_role" | "authenticated") {
        return Err(Error::invalid(format!(
            "role `{role}` is not one of anon, service_role, authenticated"
        )));
    }
    if role == "authenticated" && sub.is_none() {
        return Err(Error::invalid(
            "an authenticated token needs a subject (--sub USER_ID)",
        ));
    }
    let now = chrono::Utc::now().timestamp();
    let ttl = i64::try_from(ttl.as_secs()).map_err(|_| Error::invalid("expiry too far away"))?;
    let mut claims = Map::new();
    claims.insert("iss".into(), json!("dualwrite"));
    claims.insert("role".into(), json!(role));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now.saturating_add(ttl)));
    if let Some(s) = sub {
        claims.insert("sub".into(), json!(s));
        claims.insert("aud".into(), json!("authenticated"));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Value::Object(claims),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| Error::invalid(format!("cannot sign: {e}")))
}

/// Check a token's signature and expiry; returns its claims.
pub fn verify(secret: &str, token: &str) -> Result<Value> {
    let mut v = Validation::new(Algorithm::HS256);
    v.validate_aud = false;
    v.leeway = 0;
    jsonwebtoken::decode::<Value>(
        token.trim(),
        &DecodingKey::from_secret(secret.as_bytes()),
        &v,
    )
    .map(|d| d.claims)
    .map_err(|e| Error::invalid(format!("token rejected: {e}")))
}

/// Header and claims of a token, without checking anything.
pub fn decode(token: &str) -> Result<Value> {
    let header = jsonwebtoken::decode_header(token.trim())
        .map_err(|e| Error::invalid(format!("not a JWT: {e}")))?;
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token.trim())
        .map_err(|e| Error::invalid(format!("not a JWT: {e}")))?;
    Ok(json!({"header": {"alg": format!("{:?}", header.alg), "typ": header.typ}, "claims": claims}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_decode() {
        let secret = generate_secret();
        assert_eq!(secret.len(), 48);
        let t = sign(
            &secret,
            "authenticated",
            Some("dev_user"),
            Duration::from_secs(60),
        )
        .unwrap();
        let c = verify(&secret, &t).unwrap();
        assert_eq!(c["role"], "authenticated");
        assert_eq!(c["sub"], "dev_user");
        assert!(
            verify(&generate_secret(), &t).is_err(),
            "another secret must not verify"
        );
        assert_eq!(decode(&t).unwrap()["claims"]["sub"], "dev_user");
        let s = sign(&secret, "service_role", None, Duration::from_secs(60)).unwrap();
        assert!(verify(&secret, &s).unwrap().get("sub").is_none());
    }

    #[test]
    fn expired_tokens_are_rejected() {
        let secret = generate_secret();
        let t = sign(&secret, "anon", None, Duration::from_secs(0)).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let e = verify(&secret, &t).unwrap_err().to_string();
        assert!(e.contains("Expired") || e.contains("expired"), "{e}");
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(sign("short", "anon", None, Duration::from_secs(1)).is_err());
        let s = generate_secret();
        assert!(sign(&s, "admin", None, Duration::from_secs(1)).is_err());
        assert!(sign(&s, "authenticated", None, Duration::from_secs(1)).is_err());
        assert!(decode("not-a-token").is_err());
    }
}

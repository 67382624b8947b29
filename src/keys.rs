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
pub(crate) const MIN_SECRET_LEN: usize = 32;

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

/// Service keys valid longer than this get a warning: a `service_role` key
/// bypasses row level security, and a leaked one works until it expires.
pub(crate) const LONG_LIVED_SERVICE_KEY: Duration = Duration::from_secs(365 * 86_400);

/// The default lifetime of a generated service key (anon keys: ten years).
pub const DEFAULT_SERVICE_KEY_DAYS: u64 = 90;

/// A warning for a token of `role` valid for `ttl`, when it is a long-lived service key.
pub fn lifetime_warning(role: &str, ttl: Duration) -> Option<String> {
    (role == "service_role" && ttl > LONG_LIVED_SERVICE_KEY).then(|| {
        format!(
            "warning: this service_role key is valid for {} days; it bypasses row level \
             security, and a leaked one works until it expires. Prefer a short lifetime \
             (the default is {DEFAULT_SERVICE_KEY_DAYS} days) and rotate it.",
            ttl.as_secs() / 86_400
        )
    })
}

/// Check a token's signature, expiry (`exp`), not-before time (`nbf`) and,
/// when `aud` is given, its audience; returns its claims.
pub fn verify(secret: &str, token: &str, aud: Option<&str>) -> Result<Value> {
    let mut v = Validation::new(Algorithm::HS256);
    v.validate_nbf = true;
    match aud {
        Some(a) => {
            v.set_audience(&[a]);
            // A token without `aud` must not pass a check that asks for one.
            v.set_required_spec_claims(&["exp", "aud"]);
        }
        None => v.validate_aud = false,
    }
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
        let c = verify(&secret, &t, None).unwrap();
        assert_eq!(c["role"], "authenticated");
        assert_eq!(c["sub"], "dev_user");
        assert!(
            verify(&generate_secret(), &t, None).is_err(),
            "another secret must not verify"
        );
        assert_eq!(decode(&t).unwrap()["claims"]["sub"], "dev_user");
        let s = sign(&secret, "service_role", None, Duration::from_secs(60)).unwrap();
        assert!(verify(&secret, &s, None).unwrap().get("sub").is_none());
    }

    fn signed(secret: &str, claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn not_before_and_audience_are_checked() {
        let secret = generate_secret();
        let now = chrono::Utc::now().timestamp();
        let early = signed(
            &secret,
            json!({"role": "anon", "exp": now + 3600, "nbf": now + 600}),
        );
        let e = verify(&secret, &early, None).unwrap_err().to_string();
        assert!(e.contains("ImmatureSignature"), "{e}");
        let t = sign(&secret, "authenticated", Some("u"), Duration::from_secs(60)).unwrap();
        assert!(verify(&secret, &t, Some("authenticated")).is_ok());
        let e = verify(&secret, &t, Some("other")).unwrap_err().to_string();
        assert!(e.contains("InvalidAudience"), "{e}");
        // A token without `aud` fails a check that asks for one.
        let anon = sign(&secret, "anon", None, Duration::from_secs(60)).unwrap();
        assert!(verify(&secret, &anon, Some("authenticated")).is_err());
    }

    #[test]
    fn long_lived_service_keys_get_a_warning() {
        let day = Duration::from_secs(86_400);
        assert!(lifetime_warning("service_role", day * 3650).is_some());
        assert!(lifetime_warning("service_role", day * DEFAULT_SERVICE_KEY_DAYS as u32).is_none());
        assert!(lifetime_warning("anon", day * 3650).is_none());
    }

    #[test]
    fn expired_tokens_are_rejected() {
        let secret = generate_secret();
        let t = sign(&secret, "anon", None, Duration::from_secs(0)).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let e = verify(&secret, &t, None).unwrap_err().to_string();
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

//! What to verify: [`Check`], [`VerifyOptions`], the key's visibility ([`KeyInfo`]).

use serde::Serialize;

use crate::catalogue::{self, Table, TABLES};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::normalise::UnrepresentablePolicy;
use crate::rest::KeyKind;

use crate::direction::Direction;

/// What to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Exact row counts only (fast).
    Counts,
    /// Every row, by content.
    Content,
    /// Counts, plus this many random source rows per table fetched from the target by key.
    Sample { rows: usize },
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Tables to verify, in this order.
    pub tables: Vec<&'static Table>,
    pub check: Check,
    /// The key the target client uses, as [`KeyInfo::of`] describes it.
    pub key: KeyInfo,
    /// Source rows per segment (also the SQLite page size).
    pub segment_rows: usize,
    /// Differing rows listed per table (all are counted).
    pub listed_rows: usize,
    /// The policy the rows were written with. Under `coerce`, a source row the
    /// normaliser coerces is compared in its coerced form: equal rows count as
    /// equal, and are listed (and counted) as "coerced".
    pub unrepresentable: UnrepresentablePolicy,
    /// Which side is the source of truth (forward: SQLite).
    pub direction: Direction,
}

impl VerifyOptions {
    /// Every table, by content, segments of 1000 rows, 20 rows listed per table.
    pub fn new(key: KeyInfo) -> VerifyOptions {
        VerifyOptions {
            tables: TABLES.to_vec(),
            check: Check::Content,
            key,
            segment_rows: 1000,
            listed_rows: 20,
            unrepresentable: UnrepresentablePolicy::Reject,
            direction: Direction::Forward,
        }
    }
}

/// Tables named on the command line (SQLite or Supabase names), in catalogue order.
pub fn tables_named(names: &[String]) -> Result<Vec<&'static Table>> {
    let wanted = catalogue::tables_named(names)?;
    if wanted.is_empty() {
        return Err(Error::invalid("--tables names no table"));
    }
    Ok(wanted)
}

/// Which key verification used. Never holds the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Where the key came from, e.g. `SUPABASE_SERVICE_KEY`.
    pub variable: String,
    /// `jwt`, `sb_secret` or `sb_publishable`.
    pub kind: &'static str,
    /// The role it acts as: the JWT's `role` claim, `service_role` for an
    /// `sb_secret_` key, `anon` for an `sb_publishable_` key, or `unknown`.
    pub role: String,
    /// Only the service role bypasses row level security and sees every row.
    pub full_visibility: bool,
}

impl KeyInfo {
    pub fn of(variable: impl Into<String>, key: &str) -> KeyInfo {
        let kind = match KeyKind::of(key) {
            KeyKind::Secret => "sb_secret",
            KeyKind::Publishable => "sb_publishable",
            KeyKind::Jwt => "jwt",
        };
        let role = crate::rest::key_role(key);
        KeyInfo {
            variable: variable.into(),
            kind,
            full_visibility: role == "service_role",
            role,
        }
    }

    /// The key a Supabase client built from these settings uses (the service key if set).
    pub fn from_settings(s: &Settings) -> Option<KeyInfo> {
        use secrecy::ExposeSecret;
        match (&s.supabase.service_key, &s.supabase.anon_key) {
            (Some(k), _) => Some(KeyInfo::of(
                s.supabase.service_key_source,
                k.expose_secret(),
            )),
            (None, Some(k)) => Some(KeyInfo::of("SUPABASE_ANON_KEY", k.expose_secret())),
            (None, None) => None,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({}, role {}): {}",
            self.variable,
            self.kind,
            self.role,
            if self.full_visibility {
                "full visibility"
            } else {
                "PARTIAL visibility (row level security hides rows from this key)"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_roles_from_jwt_claims_and_key_prefixes() {
        let secret = crate::keys::generate_secret();
        let ttl = std::time::Duration::from_secs(60);
        let service = crate::keys::sign(&secret, "service_role", None, ttl).unwrap();
        let anon = crate::keys::sign(&secret, "anon", None, ttl).unwrap();
        let k = KeyInfo::of("SUPABASE_SERVICE_KEY", &service);
        assert_eq!(
            (k.kind, k.role.as_str(), k.full_visibility),
            ("jwt", "service_role", true)
        );
        let k = KeyInfo::of("SUPABASE_SERVICE_KEY", &anon);
        assert_eq!((k.role.as_str(), k.full_visibility), ("anon", false));
        let k = KeyInfo::of("X", "sb_publishable_abc");
        assert_eq!(
            (k.kind, k.role.as_str(), k.full_visibility),
            ("sb_publishable", "anon", false)
        );
        let k = KeyInfo::of("X", "sb_secret_abc");
        assert_eq!((k.kind, k.full_visibility), ("sb_secret", true));
        let k = KeyInfo::of("X", "garbage");
        assert_eq!((k.role.as_str(), k.full_visibility), ("unknown", false));
        assert!(!format!(
            "{:?}{}",
            KeyInfo::of("X", &service),
            KeyInfo::of("X", &service).describe()
        )
        .contains(&service));
    }

    #[test]
    fn directions_parse_and_name_their_sides() {
        let d: Direction = "reverse".parse().unwrap();
        assert_eq!((d.source(), d.target()), ("Supabase", "SQLite"));
        assert_eq!(Direction::default(), Direction::Forward);
        let e = "backwards".parse::<Direction>().unwrap_err().to_string();
        assert!(e.contains("forward") && e.contains("reverse"), "{e}");
    }

    #[test]
    fn table_names_are_checked() {
        let t = tables_named(&["tags".into(), "artifact".into()]).unwrap();
        assert_eq!(
            t.iter().map(|t| t.sqlite).collect::<Vec<_>>(),
            ["artifact", "tagrow"]
        );
        assert!(tables_named(&["search_chunks".into()]).is_err());
        assert!(tables_named(&["nope".into()]).is_err());
        assert!(tables_named(&[" ".into()]).is_err());
    }
}

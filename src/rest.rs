//! A thin typed layer over the `postgrest` crate for Supabase's Data API.
//!
//! `postgrest` 1.6 builds URLs and filters; this module adds what it lacks
//! (spec supabase-rest.md §4): our own `reqwest` client with timeouts and a
//! non-browser User-Agent, the key rules (`apikey` always; `Authorization:
//! Bearer` for JWT keys only, since an `sb_` key is not a JWT), `Prefer` headers
//! that replace the crate's `return=representation`, status and PostgREST error
//! codes turned into [`Error`], and `Content-Range` parsing.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

use crate::catalogue::Table;
use crate::error::{Error, Result};

/// Which kind of API key the client holds (spec supabase-rest.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A legacy JWT key (anon or service_role) or a user's JWT.
    Jwt,
    /// `sb_secret_…`: service role through the gateway.
    Secret,
    /// `sb_publishable_…`: anon through the gateway.
    Publishable,
}

impl KeyKind {
    pub fn of(key: &str) -> KeyKind {
        if key.starts_with("sb_secret_") {
            KeyKind::Secret
        } else if key.starts_with("sb_publishable_") {
            KeyKind::Publishable
        } else {
            KeyKind::Jwt
        }
    }
}

/// The role a key acts as: `service_role` for an `sb_secret_` key, `anon`
/// for an `sb_publishable_` key, a JWT's `role` claim (read, not verified),
/// or `unknown`.
pub(crate) fn key_role(key: &str) -> String {
    match KeyKind::of(key) {
        KeyKind::Secret => "service_role".to_owned(),
        KeyKind::Publishable => "anon".to_owned(),
        KeyKind::Jwt => crate::keys::decode(key)
            .ok()
            .and_then(|t| t["claims"]["role"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned()),
    }
}

/// What a client needs to reach the Data API.
#[derive(Debug, Clone)]
pub struct RestConfig {
    /// e.g. `https://<ref>.supabase.co/rest/v1` (a trailing `/` is removed).
    pub url: String,
    pub key: SecretString,
    /// A user's JWT to send as `Authorization` with a publishable/anon `key`.
    pub user_jwt: Option<SecretString>,
    pub schema: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

/// The request header that marks a write as a copy of the SQLite file's rows
/// ([`RestClient::mirroring_sqlite`]).
pub(crate) const ORIGIN_HEADER: &str = "x-dualwrite-origin";

#[derive(Clone)]
pub struct RestClient {
    base: String,
    schema: String,
    headers: HeaderMap,
    http: reqwest::Client,
    timeout: Duration,
    key_kind: KeyKind,
    /// The role requests act as ([`key_role`] of the bearer), to name it when
    /// PostgreSQL refuses a privilege.
    role: String,
}

impl std::fmt::Debug for RestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestClient")
            .field("url", &self.base)
            .field("schema", &self.schema)
            .field("key_kind", &self.key_kind)
            .field("key", &"[redacted]")
            .finish()
    }
}

fn sensitive(v: &str, what: &str) -> Result<HeaderValue> {
    let mut h = HeaderValue::from_str(v).map_err(|_| {
        Error::config(format!(
            "{what} contains characters not allowed in an HTTP header"
        ))
    })?;
    h.set_sensitive(true);
    Ok(h)
}

/// The rows a write reports in `Content-Range: */N` (or `a-b/N`).
pub(crate) fn content_range_total(h: &HeaderMap) -> Option<u64> {
    let v = h.get("content-range")?.to_str().ok()?;
    v.rsplit('/').next()?.parse().ok()
}

/// A filter value as PostgREST's `eq.` operator takes it; `None` for NULL,
/// which equality filters match with `is.null` (`eq.null` would match the
/// text `'null'`).
pub(crate) fn filter_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Equality filters: `column=eq.value`, or `column=is.null` for `None`.
pub(crate) type EqFilters<'a> = [(&'a str, Option<String>)];

fn with_eq(mut b: postgrest::Builder, filters: &EqFilters<'_>) -> postgrest::Builder {
    for (c, v) in filters {
        b = match v {
            Some(v) => b.eq(*c, v),
            None => b.is(*c, "null"),
        };
    }
    b
}

impl RestClient {
    pub fn new(cfg: &RestConfig) -> Result<RestClient> {
        let base = cfg.url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| Error::config(format!("SUPABASE_URL `{base}` is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::config(format!(
                "SUPABASE_URL `{base}` must start with http:// or https://"
            )));
        }
        if cfg.schema.is_empty()
            || !cfg
                .schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(Error::config(format!(
                "SUPABASE_SCHEMA `{}` is not a schema name",
                cfg.schema
            )));
        }
        let key = cfg.key.expose_secret();
        if key.is_empty() {
            return Err(Error::config("the Supabase API key is empty"));
        }
        let key_kind = KeyKind::of(key);
        let role = key_role(cfg.user_jwt.as_ref().map_or(key, |j| j.expose_secret()));
        let mut headers = HeaderMap::new();
        headers.insert("apikey", sensitive(key, "the API key")?);
        let bearer = match (&cfg.user_jwt, key_kind) {
            (Some(jwt), _) => Some(jwt.expose_secret().to_owned()),
            (None, KeyKind::Jwt) => Some(key.to_owned()),
            // An sb_ key is not a JWT: the gateway maps it to one (spec §1).
            (None, _) => None,
        };
        if let Some(b) = bearer {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                sensitive(&format!("Bearer {b}"), "the bearer token")?,
            );
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.connect_timeout)
            // Supabase rejects secret keys from browser-like user agents.
            .user_agent(concat!("dualwrite/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::config(format!("cannot build the HTTP client: {e}")))?;
        Ok(RestClient {
            base,
            schema: cfg.schema.clone(),
            headers,
            http,
            timeout: cfg.timeout,
            key_kind,
            role,
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// This client's writes copy the SQLite file's rows (the backfill, an
    /// import, the forward daemon, a forward repair, a dual layer with SQLite
    /// primary): each request says so in `ORIGIN_HEADER`, and capture on
    /// Supabase does not log them when they come with the service role's key
    /// (migration `20261207000200_dox_reset_and_origin.sql`), so the reverse
    /// mirror never sends the file its own rows back.
    pub fn mirroring_sqlite(mut self) -> RestClient {
        self.headers.insert(
            HeaderName::from_static(ORIGIN_HEADER),
            HeaderValue::from_static("sqlite"),
        );
        self
    }

    pub fn key_kind(&self) -> KeyKind {
        self.key_kind
    }

    /// A `postgrest` builder for `table`, on our client and headers.
    fn from(&self, table: &str) -> postgrest::Builder {
        postgrest::Builder::new(
            format!("{}/{}", self.base, table),
            Some(self.schema.clone()),
            self.headers.clone(),
            self.http.clone(),
        )
    }

    /// Call the SQL function `function` (`POST /rpc/<function>`) with named
    /// arguments; returns its JSON result.
    pub async fn rpc(&self, function: &str, args: &Value) -> Result<Value> {
        self.rpc_request(function, args, None).await
    }

    /// [`RestClient::rpc`] for a call meant to last: it may take up to
    /// `timeout` instead of the client's timeout (the fence's call, held for
    /// as long as the fence is up).
    pub(crate) async fn rpc_within(
        &self,
        function: &str,
        args: &Value,
        timeout: Duration,
    ) -> Result<Value> {
        self.rpc_request(function, args, Some(timeout))
            .await
            .map_err(|e| match e {
                Error::Timeout(_) => Error::Timeout(timeout),
                e => e,
            })
    }

    async fn rpc_request(
        &self,
        function: &str,
        args: &Value,
        timeout: Option<Duration>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .post(format!("{}/rpc/{function}", self.base))
            .headers(self.headers.clone())
            .header("Content-Profile", self.schema.as_str())
            .json(args);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = self.send(req, None).await?;
        resp.json()
            .await
            .map_err(|e| Error::Protocol(format!("rpc {function} answered with no JSON: {e}")))
    }

    /// Send a request, replacing any `Prefer` the builder set, and turn an error
    /// status into [`Error`].
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        prefer: Option<&str>,
    ) -> Result<reqwest::Response> {
        let mut req = req;
        if let Some(p) = prefer {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_static("prefer"),
                HeaderValue::from_str(p).expect("Prefer values are ASCII"),
            );
            // `headers` replaces; `header` would append, and PostgREST honours the first.
            req = req.headers(h);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.status_error(resp).await)
    }

    fn transport_error(&self, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::Timeout(self.timeout)
        } else {
            // The cause once (hyper's messages repeat their sources), then what to do.
            let reason = format!(
                "{}; is Supabase running there, and is SUPABASE_URL right?",
                // The URL is named once, by the variant: not reqwest's own copy with the query.
                crate::error::chain(&e.without_url())
            );
            Error::Unreachable {
                url: self.base.clone(),
                reason,
            }
        }
    }

    async fn status_error(&self, resp: reqwest::Response) -> Error {
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let is_json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let body = match resp.text().await {
            Ok(b) => b,
            Err(e) => return self.transport_error(e),
        };
        let parsed: Option<Map<String, Value>> = if is_json {
            serde_json::from_str(&body).ok()
        } else {
            None
        };
        let field =
            |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
        match parsed {
            Some(m) => {
                let code = field(&m, "code");
                let mut hint = field(&m, "hint");
                // "permission denied for table …": say which role the key is.
                if code.as_deref() == Some("42501") && self.role != "service_role" && hint.is_none()
                {
                    hint = Some(format!(
                        "the key's role is {}; dualwrite needs service_role \
                         (SUPABASE_SERVICE_KEY or SUPABASE_SERVICE_ROLE_KEY)",
                        self.role
                    ));
                }
                Error::Rest {
                    status: status.as_u16(),
                    code,
                    message: field(&m, "message").unwrap_or_else(|| reason(status)),
                    details: field(&m, "details"),
                    hint,
                    retry_after,
                }
            }
            // Proxies answer with HTML or plain text; keep a short excerpt.
            None => {
                let excerpt: String = body.chars().filter(|c| !c.is_control()).take(200).collect();
                let message = if excerpt.trim().is_empty() {
                    reason(status)
                } else {
                    format!("{} ({})", reason(status), excerpt.trim())
                };
                Error::Rest {
                    status: status.as_u16(),
                    code: None,
                    message,
                    details: None,
                    hint: None,
                    retry_after,
                }
            }
        }
    }

    /// Idempotent bulk upsert of complete rows of `table` (a JSON array);
    /// returns the rows PostgREST reports as written (`count=exact`).
    ///
    /// The request names every column (`columns=`): PostgREST then hands the
    /// body to PostgreSQL as it is instead of parsing it to find the keys,
    /// which halves the server's work on large batches. A key missing from a
    /// row is written as null, so rows must be complete (the normaliser's are).
    pub async fn upsert(&self, table: &Table, body: impl Into<Bytes>) -> Result<u64> {
        let req = self
            .from(table.supabase)
            .insert(String::new())
            .on_conflict(table.key().supabase)
            .build()
            .query(&[("columns", table.supabase_columns())])
            .body(body.into());
        let resp = self
            .send(
                req,
                Some("resolution=merge-duplicates,return=minimal,count=exact"),
            )
            .await?;
        content_range_total(resp.headers())
            .ok_or_else(|| Error::Protocol("an upsert answered without Content-Range".into()))
    }

    /// One page of rows: `filters` by equality, keyset-paginated on `key`.
    pub async fn select_page(
        &self,
        table: &str,
        select: &str,
        filters: &EqFilters<'_>,
        key: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Map<String, Value>>> {
        let mut b = with_eq(self.from(table).select(select), filters);
        if let Some(a) = after {
            b = b.gt(key, a);
        }
        let req = b
            .order(format!("{key}.asc"))
            .build()
            .query(&[("limit", limit.to_string())]);
        let resp = self.send(req, None).await?;
        resp.json::<Vec<Map<String, Value>>>()
            .await
            .map_err(|e| Error::Protocol(format!("rows of {table} are not a JSON array: {e}")))
    }

    /// Rows whose `key` is in `keys` (`<key>=in.(…)`), at most one request's
    /// worth: split longer lists with `key_chunks`.
    pub async fn select_in(
        &self,
        table: &str,
        select: &str,
        key: &str,
        keys: &[&str],
    ) -> Result<Vec<Map<String, Value>>> {
        let quoted: Vec<String> = keys.iter().map(|k| in_list_value(k)).collect();
        let req = self.from(table).select(select).in_(key, &quoted).build();
        let resp = self.send(req, None).await?;
        resp.json::<Vec<Map<String, Value>>>()
            .await
            .map_err(|e| Error::Protocol(format!("rows of {table} are not a JSON array: {e}")))
    }

    /// Up to `limit` rows whose `key` is from `first` to `last` (both
    /// included; `first` excluded when `after_first`), in key order.
    #[allow(clippy::too_many_arguments)] // a query's parts, each named at the call
    pub async fn select_between(
        &self,
        table: &str,
        select: &str,
        key: &str,
        first: &str,
        after_first: bool,
        last: &str,
        limit: usize,
    ) -> Result<Vec<Map<String, Value>>> {
        let b = self.from(table).select(select);
        let b = if after_first {
            b.gt(key, first)
        } else {
            b.gte(key, first)
        };
        let req = b
            .lte(key, last)
            .order(format!("{key}.asc"))
            .build()
            .query(&[("limit", limit.to_string())]);
        let resp = self.send(req, None).await?;
        resp.json::<Vec<Map<String, Value>>>()
            .await
            .map_err(|e| Error::Protocol(format!("rows of {table} are not a JSON array: {e}")))
    }

    /// DELETE the rows whose `key` is in `keys` (one chunk, see
    /// `key_chunks`); returns how many were deleted.
    pub async fn delete_in(&self, table: &str, key: &str, keys: &[&str]) -> Result<u64> {
        let quoted: Vec<String> = keys.iter().map(|k| in_list_value(k)).collect();
        let req = self.from(table).delete().in_(key, &quoted).build();
        let resp = self.send(req, Some("return=minimal,count=exact")).await?;
        content_range_total(resp.headers()).ok_or_else(|| {
            Error::Protocol(format!(
                "a delete on {table} answered without Content-Range"
            ))
        })
    }

    /// DELETE with equality filters (never unfiltered: hosted Supabase rejects that).
    pub async fn delete(&self, table: &str, filters: &EqFilters<'_>) -> Result<()> {
        let b = with_eq(self.from(table).delete(), filters);
        self.send(b.build(), Some("return=minimal")).await.map(drop)
    }

    /// DELETE the rows whose `key` is at most `last` (byte order, as the keys
    /// are `COLLATE "C"`): one chunk of a reset.
    pub async fn delete_through(&self, table: &str, key: &str, last: &str) -> Result<()> {
        let b = self.from(table).delete().lte(key, last);
        self.send(b.build(), Some("return=minimal")).await.map(drop)
    }

    /// DELETE every row, filtered on the key so that pg-safeupdate accepts it.
    pub async fn delete_all(&self, table: &str, key: &str) -> Result<()> {
        let b = self.from(table).delete().not("is", key, "null");
        self.send(b.build(), Some("return=minimal")).await.map(drop)
    }

    /// PATCH the rows matching `filters`; returns them as updated.
    pub async fn patch(
        &self,
        table: &str,
        filters: &EqFilters<'_>,
        body: &Map<String, Value>,
    ) -> Result<Vec<Map<String, Value>>> {
        let b = with_eq(
            self.from(table)
                .update(serde_json::to_string(body).expect("a map serialises")),
            filters,
        );
        let resp = self.send(b.build(), Some("return=representation")).await?;
        resp.json()
            .await
            .map_err(|e| Error::Protocol(format!("PATCH {table} answered with no rows: {e}")))
    }

    /// Exact row count of a table as this key sees it (RLS applies).
    pub async fn count(&self, table: &str) -> Result<u64> {
        let req = self
            .from(table)
            .select("*")
            .build()
            .query(&[("limit", "0")])
            .build()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let mut req = req;
        *req.method_mut() = Method::HEAD;
        let rb = reqwest::RequestBuilder::from_parts(self.http.clone(), req);
        let resp = self.send(rb, Some("count=exact")).await?;
        content_range_total(resp.headers())
            .ok_or_else(|| Error::Protocol(format!("no row count for {table}")))
    }

    /// Check that the Data API answers and the key and table are usable.
    pub async fn probe(&self, table: &str) -> Result<()> {
        self.select_page(table, "*", &[], "id", None, 1)
            .await
            .map(drop)
    }
}

/// A PostgREST `in.(…)` list element: always double-quoted, so that commas,
/// dots, parentheses and spaces in a key are taken literally; `\` and `"`
/// escaped with a backslash.
pub(crate) fn in_list_value(key: &str) -> String {
    format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Bytes a value takes once percent-encoded in a URL.
fn encoded_len(s: &str) -> usize {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                1
            } else {
                3
            }
        })
        .sum()
}

/// Keys in chunks small enough for one request line, and for the answer's
/// headers: at most 100 keys and about 3 KB of encoded URL each. PostgREST
/// echoes the query in its `Content-Location` header, and a gateway refuses
/// an answer whose headers outgrow its buffer (nginx: 4 KB, "upstream sent
/// too big header", a 502), as it refuses a request line that outgrows its
/// own (a 414).
pub(crate) fn key_chunks<'k>(keys: &[&'k str]) -> Vec<Vec<&'k str>> {
    const MAX_KEYS: usize = 100;
    const MAX_BYTES: usize = 3000;
    let mut out: Vec<Vec<&str>> = Vec::new();
    let mut bytes = 0;
    for k in keys {
        let len = encoded_len(&in_list_value(k)) + 3;
        let start_new = match out.last() {
            None => true,
            Some(c) => c.len() >= MAX_KEYS || bytes + len > MAX_BYTES,
        };
        if start_new {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += len;
        out.last_mut().expect("a chunk").push(k);
    }
    out
}

fn reason(s: StatusCode) -> String {
    s.canonical_reason().unwrap_or("error").to_owned()
}

/// A URL as a report or a log may show it: without user, password, query or fragment.
pub(crate) fn public_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string().trim_end_matches('/').to_owned()
        }
        Err(_) => "(unparseable URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials() {
        assert_eq!(
            public_url("https://u:p@x.supabase.co/rest/v1?apikey=k"),
            "https://x.supabase.co/rest/v1"
        );
    }

    fn cfg(key: &str) -> RestConfig {
        RestConfig {
            url: "http://127.0.0.1:9/rest/v1/".into(),
            key: SecretString::from(key.to_owned()),
            user_jwt: None,
            schema: "public".into(),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn key_rules() {
        let c = RestClient::new(&cfg("eyJhbGciOi.x.y")).unwrap();
        assert_eq!(c.key_kind(), KeyKind::Jwt);
        assert!(c.headers.contains_key("authorization"));
        let c = RestClient::new(&cfg("sb_secret_abc")).unwrap();
        assert_eq!(c.key_kind(), KeyKind::Secret);
        assert!(
            !c.headers.contains_key("authorization"),
            "an sb_ key is not a bearer token"
        );
        assert_eq!(
            c.url(),
            "http://127.0.0.1:9/rest/v1",
            "trailing slash removed"
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let c = RestClient::new(&cfg("sb_secret_supersecretvalue")).unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("supersecretvalue"), "{d}");
        let d = format!("{:?}", cfg("sb_secret_supersecretvalue"));
        assert!(!d.contains("supersecretvalue"), "{d}");
    }

    #[test]
    fn bad_settings_are_named() {
        let mut c = cfg("k");
        c.url = "ftp://x".into();
        assert!(RestClient::new(&c)
            .unwrap_err()
            .to_string()
            .contains("http://"));
        let mut c = cfg("k");
        c.schema = "pub lic".into();
        assert!(RestClient::new(&c)
            .unwrap_err()
            .to_string()
            .contains("SUPABASE_SCHEMA"));
        assert!(RestClient::new(&cfg(""))
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    #[test]
    fn in_lists_quote_any_key() {
        assert_eq!(in_list_value("a,b"), r#""a,b""#);
        assert_eq!(in_list_value(r#"q"u\o"#), r#""q\"u\\o""#);
        let long = "x".repeat(1000);
        let keys: Vec<&str> = (0..30).map(|_| long.as_str()).collect();
        let chunks = key_chunks(&keys);
        assert!(chunks.len() > 1 && chunks.iter().all(|c| !c.is_empty()));
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 30);
        let short: Vec<&str> = vec!["k"; 250];
        assert_eq!(key_chunks(&short).len(), 3);
    }

    #[test]
    fn content_range_parsing() {
        let mut h = HeaderMap::new();
        h.insert("content-range", HeaderValue::from_static("*/42"));
        assert_eq!(content_range_total(&h), Some(42));
        h.insert("content-range", HeaderValue::from_static("0-999/1506"));
        assert_eq!(content_range_total(&h), Some(1506));
        h.insert("content-range", HeaderValue::from_static("*/*"));
        assert_eq!(content_range_total(&h), None);
    }
}

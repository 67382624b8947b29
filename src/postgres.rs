//! The database connection string (`SUPABASE_DB_URL`, `DATABASE_URL`): the one
//! place that talks to Supabase's PostgreSQL directly, for `backfill --via
//! postgres` (rows in with `COPY`) and its `--reset` (one `TRUNCATE`).
//!
//! * The URL is a secret: it is held as a [`SecretString`] and shown (logs,
//!   errors, `Debug`) as `postgres://user@host:port/database`, never with its
//!   password.
//! * TLS is rustls (the 0.21 reqwest already builds). `sslmode` is the URL's,
//!   as libpq reads it: `disable`; `prefer` (the default) and `require` encrypt
//!   without checking the certificate; `verify-ca` and `verify-full` check it
//!   (and the host name) against the web's roots plus `sslrootcert`, a PEM file
//!   (Supabase's own CA, which the dashboard offers for download).
//! * Every session marks its writes as copies of the SQLite file, exactly as the
//!   REST path's `X-Dualwrite-Origin: sqlite` header with the service role's key
//!   does: it sets `request.headers` and `request.jwt.claims` (the settings
//!   PostgREST sets per request), so `dualwrite_capture.record()` on Supabase
//!   logs nothing for them (migration `20261207000200_dox_reset_and_origin.sql`).
//!   A direct session may set them because whoever holds the connection string
//!   is trusted with the database already.
//! * Row-level security: the role in the URL writes the tables itself. Supabase's
//!   `postgres` role owns them and bypasses RLS; another role needs `BYPASSRLS`
//!   or policies that let it write, else its rows are refused (not rejects: the
//!   run stops).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::SinkExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::Host;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{Client, Socket};

use crate::catalogue::Table;
use crate::error::{Error, Result};

/// What a session sets first: its writes are copies of the SQLite file.
const MARK_ORIGIN: &str = "select pg_catalog.set_config('request.headers', \
     '{\"x-dualwrite-origin\":\"sqlite\"}', false), \
     pg_catalog.set_config('request.jwt.claims', '{\"role\":\"service_role\"}', false)";

/// A connection string's database: a few sessions, opened as needed and reused.
/// Cheap to clone.
#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    tls: MakeRustls,
    /// `postgres://user@host:port/database`: what logs and errors name.
    shown: String,
    idle: Mutex<Vec<Session>>,
}

/// One connection, with the staging tables it has created.
struct Session {
    client: Client,
    staged: Vec<&'static str>,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.inner.shown)
            .finish_non_exhaustive()
    }
}

/// How rows go into a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// `COPY` straight into the table: the fastest, refused (23505) when a
    /// row's key is already there.
    Direct,
    /// `COPY` into a session's temporary table, then `INSERT … ON CONFLICT
    /// (key) DO UPDATE`: rows already there are replaced (a resumed or
    /// repeated run), as the REST path's upsert does.
    Upsert,
}

impl Postgres {
    /// Read the connection string and open a first session, so that a wrong
    /// password or an unreachable host is told at once, by name.
    pub async fn connect(url: &SecretString) -> Result<Postgres> {
        let (url, verify) = tls_options(url.expose_secret())?;
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            Error::Config(format!(
                "the database connection string (SUPABASE_DB_URL or DATABASE_URL) cannot be read: {e}"
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("dualwrite");
        let shown = shown(&config);
        let pg = Postgres {
            inner: Arc::new(Inner {
                tls: MakeRustls::new(&verify)?,
                config,
                shown,
                idle: Mutex::new(Vec::new()),
            }),
        };
        let first = pg.open().await?;
        pg.put(first);
        Ok(pg)
    }

    /// `postgres://user@host:port/database`, without the password.
    pub fn shown(&self) -> &str {
        &self.inner.shown
    }

    async fn open(&self) -> Result<Session> {
        let (client, conn) = self
            .inner
            .config
            .connect(self.inner.tls.clone())
            .await
            .map_err(|e| self.error(e))?;
        let shown = self.inner.shown.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, database = %shown, "a PostgreSQL session ended");
            }
        });
        client
            .batch_execute(MARK_ORIGIN)
            .await
            .map_err(|e| self.error(e))?;
        Ok(Session {
            client,
            staged: Vec::new(),
        })
    }

    async fn take(&self) -> Result<Session> {
        let idle = crate::sync::lock(&self.inner.idle).pop();
        match idle {
            Some(s) if !s.client.is_closed() => Ok(s),
            _ => self.open().await,
        }
    }

    /// A session back to the idle list, after a statement that succeeded (one
    /// that failed is dropped: its transaction goes with it).
    fn put(&self, s: Session) {
        crate::sync::lock(&self.inner.idle).push(s);
    }

    /// What a failure from the driver is, naming the database but never the
    /// password: a refusal of the statement (its SQLSTATE), a refused login
    /// (not transient), or a database that could not be reached (transient).
    fn error(&self, e: tokio_postgres::Error) -> Error {
        let shown = &self.inner.shown;
        match e.as_db_error() {
            Some(db) => {
                let code = db.code().code().to_owned();
                let mut message = db.message().to_owned();
                if let Some(d) = db.detail() {
                    message.push_str("; details: ");
                    message.push_str(d);
                }
                if code.starts_with("28") || code == "3D000" {
                    Error::Config(format!(
                        "PostgreSQL at {shown} refused the connection: {message} \
                         (check the user, password and database of SUPABASE_DB_URL or DATABASE_URL)"
                    ))
                } else {
                    Error::Postgres { code, message }
                }
            }
            None => {
                let mut reason = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    let text = c.to_string();
                    if !reason.contains(&text) {
                        reason.push_str(": ");
                        reason.push_str(&text);
                    }
                    cause = c.source();
                }
                Error::Unreachable {
                    url: shown.clone(),
                    reason,
                }
            }
        }
    }

    /// `rows`, in COPY's text format (one line per row, the table's columns in
    /// catalogue order), into `table`. Returns how many rows were written.
    pub async fn copy(&self, table: &'static Table, rows: Bytes, mode: CopyMode) -> Result<u64> {
        let mut s = self.take().await?;
        let done = match mode {
            CopyMode::Direct => {
                copy_in(&s.client, &copy_into(table, "public", table.supabase), rows).await
            }
            CopyMode::Upsert => self.upsert(&mut s, table, rows).await,
        };
        match done {
            Ok(n) => {
                self.put(s);
                Ok(n)
            }
            Err(e) => Err(self.error(e)),
        }
    }

    async fn upsert(
        &self,
        s: &mut Session,
        table: &'static Table,
        rows: Bytes,
    ) -> std::result::Result<u64, tokio_postgres::Error> {
        let stage = format!("dualwrite_stage_{}", table.supabase);
        if !s.staged.contains(&table.supabase) {
            s.client
                .batch_execute(&format!(
                    "create temporary table if not exists {} (like public.{}) on commit delete rows",
                    ident(&stage),
                    ident(table.supabase)
                ))
                .await?;
            s.staged.push(table.supabase);
        }
        let columns = columns(table);
        let key = ident(table.key().supabase);
        let set: Vec<String> = table.columns[1..]
            .iter()
            .map(|c| format!("{0} = excluded.{0}", ident(c.supabase)))
            .collect();
        let on_conflict = if set.is_empty() {
            "do nothing".to_owned()
        } else {
            format!("do update set {}", set.join(", "))
        };
        s.client.batch_execute("begin").await?;
        copy_in(&s.client, &copy_into(table, "pg_temp", &stage), rows).await?;
        let n = s
            .client
            .execute(
                &format!(
                    "insert into public.{} ({columns}) select {columns} from pg_temp.{} \
                     on conflict ({key}) {on_conflict}",
                    ident(table.supabase),
                    ident(&stage)
                ),
                &[],
            )
            .await?;
        s.client.batch_execute("commit").await?;
        Ok(n)
    }

    /// Delete one row by key (the stale guard: a row the app deleted meanwhile).
    pub async fn delete_key(&self, table: &'static Table, key: &str) -> Result<()> {
        let s = self.take().await?;
        let sql = format!(
            "delete from public.{} where {}::text = $1",
            ident(table.supabase),
            ident(table.key().supabase)
        );
        match s.client.execute(&sql, &[&key]).await {
            Ok(_) => {
                self.put(s);
                Ok(())
            }
            Err(e) => Err(self.error(e)),
        }
    }

    /// Empty `tables` with one `TRUNCATE` (no DELETE triggers fire: capture on
    /// Supabase logs nothing for it). Returns how many rows they held.
    pub async fn truncate(&self, tables: &[&'static Table]) -> Result<u64> {
        if tables.is_empty() {
            return Ok(0);
        }
        let mut s = self.take().await?;
        let names: Vec<String> = tables
            .iter()
            .map(|t| format!("public.{}", ident(t.supabase)))
            .collect();
        let count = names
            .iter()
            .map(|n| format!("(select count(*) from {n})"))
            .collect::<Vec<_>>()
            .join(" + ");
        let done = async {
            let tx = s.client.transaction().await?;
            let n: i64 = tx
                .query_one(&format!("select ({count})::bigint"), &[])
                .await?
                .get(0);
            tx.batch_execute(&format!("truncate table {}", names.join(", ")))
                .await?;
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(n)
        }
        .await;
        match done {
            Ok(n) => {
                self.put(s);
                Ok(u64::try_from(n).unwrap_or(0))
            }
            Err(e) => Err(self.error(e)),
        }
    }
}

async fn copy_in(
    client: &Client,
    statement: &str,
    rows: Bytes,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in::<_, Bytes>(statement).await?;
    futures::pin_mut!(sink);
    sink.send(rows).await?;
    sink.as_mut().finish().await
}

fn copy_into(table: &Table, schema: &str, name: &str) -> String {
    format!(
        "copy {schema}.{} ({}) from stdin",
        ident(name),
        columns(table)
    )
}

fn columns(table: &Table) -> String {
    table
        .columns
        .iter()
        .map(|c| ident(c.supabase))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A connection string as reports show it: `postgres://user@host:port/database`
/// (`dualwrite config`), or that it cannot be read; never its password.
pub(crate) fn shown_url(url: &str) -> String {
    match tls_options(url).ok().and_then(|(u, _)| u.parse().ok()) {
        Some(config) => shown(&config),
        None => format!("[unreadable: {} chars]", url.chars().count()),
    }
}

/// `postgres://user@host:port/database`.
fn shown(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(h) => h.clone(),
                Host::Unix(p) => p.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// How the server's certificate is checked.
#[derive(Debug, Default, PartialEq)]
struct Verify {
    /// `sslmode=verify-ca` or `verify-full`.
    certificate: bool,
    /// `sslrootcert`: more roots, a PEM file.
    root_cert: Option<String>,
}

/// The URL without what tokio-postgres does not read (`sslmode=verify-ca`,
/// `verify-full`, which become `require` with the certificate checked here;
/// `sslrootcert`), and how to check the certificate.
fn tls_options(url: &str) -> Result<(String, Verify)> {
    let mut verify = Verify::default();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), verify));
    };
    let mut kept = Vec::new();
    for param in query.split('&') {
        match param.split_once('=') {
            Some(("sslmode", "verify-ca" | "verify-full")) => {
                verify.certificate = true;
                kept.push("sslmode=require".to_owned());
            }
            Some(("sslrootcert", path)) => verify.root_cert = Some(percent_decode(path)),
            _ => kept.push(param.to_owned()),
        }
    }
    if verify.root_cert.is_some() && !verify.certificate {
        // libpq: a root certificate given with no sslmode means verify-ca.
        if !kept.iter().any(|p| p.starts_with("sslmode=")) {
            verify.certificate = true;
            kept.push("sslmode=require".to_owned());
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, verify))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => match std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                None => out.push(b'%'),
            },
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// tokio-postgres's TLS through rustls.
#[derive(Clone)]
struct MakeRustls(Arc<rustls::ClientConfig>);

impl MakeRustls {
    fn new(verify: &Verify) -> Result<MakeRustls> {
        let builder = rustls::ClientConfig::builder().with_safe_defaults();
        let config = if verify.certificate {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_trust_anchors(webpki_roots::TLS_SERVER_ROOTS.iter().map(|ta| {
                rustls::OwnedTrustAnchor::from_subject_spki_name_constraints(
                    ta.subject,
                    ta.spki,
                    ta.name_constraints,
                )
            }));
            if let Some(path) = &verify.root_cert {
                let pem = std::fs::read(path).map_err(|e| Error::io_at(e, path))?;
                let certs = rustls_pemfile::certs(&mut pem.as_slice())
                    .map_err(|e| Error::io_at(e, path))?;
                for der in certs {
                    roots.add(&rustls::Certificate(der)).map_err(|e| {
                        Error::Config(format!("sslrootcert {path}: not a usable certificate: {e}"))
                    })?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .with_custom_certificate_verifier(Arc::new(EncryptOnly))
                .with_no_client_auth()
        };
        Ok(MakeRustls(Arc::new(config)))
    }
}

/// `sslmode=prefer` / `require`: encrypted, the certificate not checked (libpq's meaning).
struct EncryptOnly;

impl rustls::client::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::Certificate,
        _intermediates: &[rustls::Certificate],
        _server_name: &rustls::ServerName,
        _scts: &mut dyn Iterator<Item = &[u8]>,
        _ocsp_response: &[u8],
        _now: SystemTime,
    ) -> std::result::Result<rustls::client::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::ServerCertVerified::assertion())
    }
}

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = rustls::ServerName::try_from(domain).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a host name: {domain}"),
            )
        })?;
        Ok(RustlsConnect {
            config: Arc::clone(&self.0),
            name,
        })
    }
}

struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: rustls::ServerName,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let s = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(s))
        })
    }
}

struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl AsyncRead for RustlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_become_require_with_the_certificate_checked_here() {
        let (url, v) =
            tls_options("postgres://u:p@db.x.supabase.co:5432/postgres?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.crt")
                .unwrap();
        assert_eq!(
            url,
            "postgres://u:p@db.x.supabase.co:5432/postgres?sslmode=require"
        );
        assert!(v.certificate);
        assert_eq!(v.root_cert.as_deref(), Some("/tmp/ca.crt"));
        let (url, v) = tls_options("postgres://u:p@h/db?sslmode=require").unwrap();
        assert_eq!(url, "postgres://u:p@h/db?sslmode=require");
        assert_eq!(v, Verify::default());
        assert_eq!(tls_options("postgres://h/db").unwrap().0, "postgres://h/db");
    }

    #[tokio::test]
    async fn the_password_is_never_shown() {
        let url = SecretString::from(
            "postgres://postgres:s3cret-pw@127.0.0.1:1/postgres?connect_timeout=2",
        );
        let e = Postgres::connect(&url).await.unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains("s3cret-pw"), "{text}");
        assert!(
            text.contains("postgres://postgres@127.0.0.1:1/postgres"),
            "{text}"
        );
        assert!(e.is_transient(), "{text}");
    }
}

//! A small harness for tests against the real local stack (scripts/stack.sh):
//! the shared stack through nginx, and private databases, each cloned from
//! `dox_template` and served by its own PostgREST process, for tests that stop,
//! pause or constrain their Supabase.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dualwrite::db::{SqliteDatabase, SqliteOptions, SupabaseDatabase};
use dualwrite::keys;
use dualwrite::rest::{RestClient, RestConfig};
use secrecy::SecretString;

/// The stack's variables (from the environment, or from `scripts/stack.sh env`).
pub struct Stack {
    vars: HashMap<String, String>,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let out = Command::new(repo().join("scripts/stack.sh"))
            .arg("env")
            .output()
            .expect("run scripts/stack.sh env");
        assert!(
            out.status.success(),
            "the local stack is not set up; run `scripts/stack.sh up` first:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut vars = HashMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                vars.insert(k.to_owned(), v.trim_matches('\'').replace('\\', ""));
            }
        }
        Stack { vars }
    })
}

impl Stack {
    pub fn var(&self, k: &str) -> &str {
        self.vars
            .get(k)
            .unwrap_or_else(|| panic!("scripts/stack.sh env did not print {k}"))
    }

    /// Environment for running the binary against the shared stack.
    pub fn env(&self) -> Vec<(String, String)> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn jwt_secret(&self) -> &str {
        self.var("SUPABASE_JWT_SECRET")
    }

    /// A client of the shared stack, through nginx at /rest/v1, with `key`.
    pub fn client(&self, key: &str, user_jwt: Option<String>) -> RestClient {
        RestClient::new(&RestConfig {
            url: self.var("SUPABASE_URL").to_owned(),
            key: SecretString::from(key.to_owned()),
            user_jwt: user_jwt.map(SecretString::from),
            schema: "public".into(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
        })
        .unwrap()
    }

    pub fn service_client(&self) -> RestClient {
        self.client(self.var("SUPABASE_SERVICE_KEY"), None)
    }

    pub async fn admin(&self, url_var: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(self.var(url_var), tokio_postgres::NoTls)
            .await
            .expect("connect to the stack's PostgreSQL");
        tokio::spawn(conn);
        client
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A database of its own, cloned from the migrated template, served by a
/// PostgREST process of its own (no nginx in front).
pub struct PrivateDb {
    pub name: String,
    pub url: String,
    port: u16,
    admin_port: u16,
    conf: tempfile::NamedTempFile,
    child: Option<Child>,
    log: PathBuf,
}

impl PrivateDb {
    pub async fn new() -> PrivateDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let s = stack();
        let name = format!(
            "dw_it_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let admin = s.admin("DUALWRITE_PG_ADMIN_URL").await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .expect("drop a leftover database");
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {name} TEMPLATE {}",
                s.var("DUALWRITE_TEMPLATE_DB")
            ))
            .await
            .expect("clone the template database");
        let port = free_port();
        let admin_port = free_port();
        let conf = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            conf.path(),
            format!(
                "db-uri = \"{}/{name}\"\ndb-schemas = \"public\"\ndb-anon-role = \"anon\"\n\
                 db-max-rows = 1000\ndb-extra-search-path = \"public, extensions\"\n\
                 db-pool = 5\njwt-secret = \"{}\"\nserver-host = \"127.0.0.1\"\n\
                 server-port = {port}\nadmin-server-port = {admin_port}\n",
                s.var("DUALWRITE_AUTHENTICATOR_URL"),
                s.jwt_secret()
            ),
        )
        .unwrap();
        let log = std::env::temp_dir().join(format!("{name}.postgrest.log"));
        let mut db = PrivateDb {
            url: format!("http://127.0.0.1:{port}"),
            name,
            port,
            admin_port,
            conf,
            child: None,
            log,
        };
        db.start().await;
        db
    }

    /// Start (or restart) PostgREST and wait until it is ready.
    pub async fn start(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(stack().var("DUALWRITE_POSTGREST_BIN"))
            .arg(self.conf.path())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start postgrest");
        self.child = Some(child);
        let ready = format!("http://127.0.0.1:{}/ready", self.admin_port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(&ready).await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "private PostgREST on port {} not ready: {}",
            self.port,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Stop PostgREST (the API becomes unreachable; the database keeps its rows).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP / SIGCONT: the port still accepts connections but nothing answers.
    pub fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().expect("running").id();
        let sig = if paused { "-STOP" } else { "-CONT" };
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    pub fn service_key(&self) -> String {
        keys::sign(
            stack().jwt_secret(),
            "service_role",
            None,
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    pub fn rest(&self, timeout: Duration) -> RestClient {
        RestClient::new(&RestConfig {
            url: self.url.clone(),
            key: SecretString::from(self.service_key()),
            user_jwt: None,
            schema: "public".into(),
            timeout,
            connect_timeout: Duration::from_secs(2),
        })
        .unwrap()
    }

    pub fn supabase(&self) -> SupabaseDatabase {
        SupabaseDatabase::new(self.rest(Duration::from_secs(10)))
    }

    /// Direct SQL on this database (as the stack's superuser).
    pub async fn sql(&self) -> tokio_postgres::Client {
        let base = stack().var("DUALWRITE_PG_ADMIN_URL");
        let url = format!("{}/{}", base.rsplit_once('/').unwrap().0, self.name);
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    /// Run SQL and tell PostgREST to reload its schema cache, then wait for it.
    pub async fn ddl(&self, sql: &str) {
        let c = self.sql().await;
        c.batch_execute(sql).await.unwrap();
        c.batch_execute("NOTIFY pgrst, 'reload schema'")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

impl Drop for PrivateDb {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A paused process must be resumed to die cleanly.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.stop();
        let name = self.name.clone();
        let url = stack().var("DUALWRITE_PG_ADMIN_URL").to_owned();
        // Drop the database from a thread with its own runtime: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok((c, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A fresh SQLite file in a temp dir (kept alive by the returned guard).
pub async fn temp_sqlite() -> (tempfile::TempDir, SqliteDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDatabase::open(dir.path().join("dox.sqlite3"), SqliteOptions::default())
        .await
        .unwrap();
    (dir, db)
}

/// A copy of one of the shared DoX fixtures in a temp dir.
pub fn fixture_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let src = fixture(name);
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join(name);
    std::fs::copy(&src, &dst).unwrap();
    (dir, dst)
}

pub fn fixture(name: &str) -> PathBuf {
    let p = repo().join("../shared/fixtures").join(name);
    assert!(Path::new(&p).exists(), "missing fixture {}", p.display());
    p
}

/// A unique prefix for ids written to the shared stack.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

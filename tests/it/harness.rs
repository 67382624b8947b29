//! A small harness for tests against the real local stack (scripts/stack.sh):
//! the shared stack through nginx, and private databases, each cloned from
//! `dox_template` and served by its own PostgREST process, for tests that stop,
//! pause or constrain their Supabase.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use dualwrite::db::{RestClient, RestConfig};
use dualwrite::db::{SqliteDatabase, SqliteOptions, SupabaseDatabase};
use dualwrite::keys;
use secrecy::SecretString;

// The PostgREST launcher shared with the benchmarks.
#[path = "../support/postgrest.rs"]
mod postgrest;
pub use postgrest::free_port;
use postgrest::{Postgrest, PostgrestSettings};

// The delaying TCP proxy (a slow or distant Supabase).
#[path = "../support/proxy.rs"]
mod proxy;
pub use proxy::Proxy;

// A private /rest/v1 gateway (nginx with the project's gateway configuration).
#[path = "../support/gateway.rs"]
mod gateway;
pub use gateway::Gateway;

/// The stack's variables (from the environment, or from `scripts/stack.sh env`).
pub struct Stack {
    vars: HashMap<String, String>,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The environment variable that turns on the tests that need the local stack.
pub const STACK_VAR: &str = "DUALWRITE_TEST_STACK";

/// Whether the tests that need the local stack run: only when `DUALWRITE_TEST_STACK=1`
/// (`scripts/test.sh` sets it after `scripts/stack.sh up`). Otherwise, the first
/// test to ask says once, on the real stderr (libtest does not capture that), that
/// it and the others like it are skipped, and why.
pub fn stack_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let on = std::env::var(STACK_VAR).is_ok_and(|v| v == "1");
        if !on {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\nnote: the integration tests that need the local Supabase stack are SKIPPED \
                 (they pass without checking anything).\n      To run them: `scripts/stack.sh up`, \
                 then `{STACK_VAR}=1 cargo test`, or simply `scripts/test.sh`, which does both.\n"
            );
        }
        on
    })
}

pub fn stack() -> &'static Stack {
    assert!(
        stack_enabled(),
        "this test needs the local stack: start it with `scripts/stack.sh up` and set \
         {STACK_VAR}=1 (scripts/test.sh does both); a test that needs the stack begins \
         with `needs_stack!();`"
    );
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| Stack {
        vars: postgrest::stack_env(),
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

    /// The stack's PostgREST endpoint: the project URL (`SUPABASE_URL`, as
    /// Supabase's clients take it) and `/rest/v1`.
    pub fn rest_url(&self) -> String {
        format!("{}/rest/v1", self.var("SUPABASE_URL"))
    }

    pub fn jwt_secret(&self) -> &str {
        self.var("SUPABASE_JWT_SECRET")
    }

    /// A client of the shared stack, through nginx at /rest/v1, with `key`.
    pub fn client(&self, key: &str, user_jwt: Option<String>) -> RestClient {
        RestClient::new(&RestConfig {
            url: self.rest_url(),
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

/// A database of its own, cloned from the migrated template, served by a
/// PostgREST process of its own (no nginx in front).
pub struct PrivateDb {
    pub name: String,
    pub url: String,
    postgrest: Postgrest,
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
        let postgrest = Postgrest::launch(PostgrestSettings {
            bin: s.var("DUALWRITE_POSTGREST_BIN").into(),
            db_uri: format!("{}/{name}", s.var("DUALWRITE_AUTHENTICATOR_URL")),
            jwt_secret: s.jwt_secret().to_owned(),
            pool: 5,
        })
        .await;
        PrivateDb {
            url: postgrest.url.clone(),
            name,
            postgrest,
        }
    }

    /// Start (or restart) PostgREST and wait until it is ready.
    pub async fn start(&mut self) {
        self.postgrest.start().await;
    }

    /// Stop PostgREST (the API becomes unreachable; the database keeps its rows).
    pub fn stop(&mut self) {
        self.postgrest.stop();
    }

    /// SIGSTOP / SIGCONT: the port still accepts connections but nothing answers.
    pub fn pause(&self, paused: bool) {
        self.postgrest.pause(paused);
    }

    /// PostgREST's log, for a failure's message.
    pub fn postgrest_log(&self) -> String {
        self.postgrest.log()
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

    /// nginx in front of this database's PostgREST, as the stack's and
    /// Supabase's gateway (`/rest/v1`, their limits on a request line).
    pub async fn gateway(&self) -> Gateway {
        Gateway::start(self.url.trim_start_matches("http://"), free_port()).await
    }

    /// This database's connection string (the stack's superuser, as a hosted
    /// project's `postgres` role: it bypasses row-level security).
    pub fn database_url(&self) -> String {
        let base = stack().var("DUALWRITE_PG_ADMIN_URL");
        format!("{}/{}", base.rsplit_once('/').unwrap().0, self.name)
    }

    /// Direct SQL on this database (as the stack's superuser).
    pub async fn sql(&self) -> tokio_postgres::Client {
        let url = self.database_url();
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

/// A copy of one of the real DoX fixtures (`fixtures/*.sqlite3.zst`) in a temp
/// dir, for a test that opens it for writing.
pub fn fixture_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let src = fixture(name);
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join(name);
    std::fs::copy(&src, &dst).unwrap();
    // The cached original is read-only; the copy is the test's to write.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, dst)
}

/// The real DoX fixtures kept in the repository, compressed, with the SHA-256 of
/// each decompressed file (fixtures/README.md says where they come from).
pub const FIXTURES: [(&str, &str); 3] = [
    (
        "dox-small.sqlite3",
        "fedbe3777f294d022004da1bd0c8ff2637d910fe94718daa9410f6814c2d0959",
    ),
    (
        "dox-small-alembic.sqlite3",
        "de9c2cf6f8a1063a5bc109024369b0d990681dc212181d287899628040147280",
    ),
    (
        "dox-medium.sqlite3",
        "147a8c30f6da25e0eed73bff2d202bc6b8c78deb6b2383f43a80896bc60478c9",
    ),
];

/// The path of a real DoX fixture, decompressed from the repository's
/// `fixtures/NAME.zst` into Cargo's test temp dir once and checked against its
/// SHA-256. Read-only: use [`fixture_copy`] to write.
pub fn fixture(name: &str) -> PathBuf {
    // Checked once per test process: hashing 13 MB on every call adds up.
    static READY: OnceLock<std::sync::Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let ready = READY.get_or_init(Default::default);
    if let Some(p) = ready.lock().unwrap().get(name) {
        return p.clone();
    }
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    let p = materialise_fixture(&repo(), &cache, name).unwrap_or_else(|e| panic!("{e}"));
    ready.lock().unwrap().insert(name.to_owned(), p.clone());
    p
}

/// Decompress `<root>/fixtures/<name>.zst` to `<cache>/<name>` unless a file with
/// the right digest is already there. Concurrent test processes are safe: each
/// writes its own temp file and renames it into place.
pub fn materialise_fixture(root: &Path, cache: &Path, name: &str) -> Result<PathBuf, String> {
    use sha2::{Digest, Sha256};
    let want = FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, d)| *d)
        .ok_or_else(|| format!("unknown fixture {name}; known: {FIXTURES:?}"))?;
    let digest = |p: &Path| -> Option<String> {
        let mut f = std::fs::File::open(p).ok()?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).ok()?;
        Some(format!("{:x}", h.finalize()))
    };
    let dst = cache.join(name);
    if digest(&dst).as_deref() == Some(want) {
        return Ok(dst);
    }
    let src = root.join("fixtures").join(format!("{name}.zst"));
    let input = std::fs::File::open(&src)
        .map_err(|e| format!("cannot open the fixture {}: {e}", src.display()))?;
    std::fs::create_dir_all(cache).map_err(|e| format!("create {}: {e}", cache.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(cache)
        .map_err(|e| format!("temp file in {}: {e}", cache.display()))?;
    zstd::stream::copy_decode(input, &mut tmp)
        .map_err(|e| format!("decompress {}: {e}", src.display()))?;
    let got = digest(tmp.path()).unwrap_or_default();
    if got != want {
        return Err(format!(
            "{} decompresses to a file with SHA-256 {got}, expected {want}: the fixture is damaged",
            src.display()
        ));
    }
    let mut perms = tmp.as_file().metadata().unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(tmp.path(), perms).unwrap();
    tmp.persist(&dst)
        .map_err(|e| format!("move the fixture to {}: {e}", dst.display()))?;
    Ok(dst)
}

/// A unique prefix for ids written to the shared stack.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

/// A daemon started by a test: killed (and reaped) when dropped, so a test
/// that fails half-way leaves no `serve` running against its database.
pub struct Spawned(pub std::process::Child);

impl std::ops::Deref for Spawned {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Already gone (the test stopped it) makes both of these no-ops.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! What the benchmarks share: the local stack's variables, the cached
//! generated data set, and the PostgREST launcher of the tests
//! (`tests/support/postgrest.rs`).

// Each bench uses only part of what is shared here.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use dualwrite::catalogue::TABLES;

#[path = "../../tests/support/postgrest.rs"]
mod postgrest;
use dualwrite::generate::{generate, GenerateOptions};
// Not every bench uses free_port (capture.rs has its own) or the proxy, and an unused
// re-export is a warning.
#[allow(unused_imports)]
pub use postgrest::free_port;
pub use postgrest::{Postgrest, PostgrestSettings};

#[path = "../../tests/support/proxy.rs"]
mod proxy;
#[allow(unused_imports)]
pub use proxy::Proxy;

/// A number from the environment variable `k`, else `d`.
pub fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// The variables `scripts/stack.sh env` prints (keys, URLs, DATABASE_URL).
///
/// Under `cargo test` (a smoke run, no `--bench`) the benchmark needs
/// `DUALWRITE_TEST_STACK=1`, like the integration tests; without it, it says so and
/// exits successfully. `cargo bench` always runs it.
pub fn stack_env() -> HashMap<String, String> {
    let bench = std::env::args().any(|a| a == "--bench");
    if !bench && std::env::var("DUALWRITE_TEST_STACK").map_or(true, |v| v != "1") {
        eprintln!(
            "note: this benchmark's smoke run needs the local stack and is SKIPPED; run \
             `scripts/stack.sh up`, then set DUALWRITE_TEST_STACK=1 (scripts/test.sh does both)"
        );
        std::process::exit(0);
    }
    postgrest::stack_env()
}

/// The stack's PostgREST endpoint: its project URL (`SUPABASE_URL`) + `/rest/v1`.
pub fn rest_endpoint(env: &HashMap<String, String>) -> String {
    format!("{}/rest/v1", env["SUPABASE_URL"])
}

/// A client of the stack's Supabase with the service key.
pub fn service_rest(
    env: &HashMap<String, String>,
    timeout: std::time::Duration,
) -> dualwrite::db::RestClient {
    dualwrite::db::RestClient::new(&dualwrite::db::RestConfig {
        url: rest_endpoint(env),
        key: env["SUPABASE_SERVICE_KEY"].clone().into(),
        user_jwt: None,
        schema: "public".into(),
        timeout,
        connect_timeout: std::time::Duration::from_secs(2),
    })
    .unwrap()
}

/// A generated DoX file of `rows` rows (seed 1), cached under target/bench-data.
pub async fn dataset(rows: u64) -> PathBuf {
    dataset_seeded(rows, 1).await
}

/// A generated DoX file of `rows` rows made with `seed`, cached under target/bench-data.
pub async fn dataset_seeded(rows: u64, seed: u64) -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-data"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("dox-{rows}-seed{seed}.sqlite3"));
    if !path.exists() {
        let started = std::time::Instant::now();
        let tmp = dir.join(format!("dox-{rows}-seed{seed}.partial.sqlite3"));
        let _ = std::fs::remove_file(&tmp);
        generate(&tmp, &GenerateOptions { rows, seed })
            .await
            .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        println!(
            "generated {rows} rows (seed {seed}) in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    path
}

/// A PostgreSQL client on `url` (its connection driven by a task of its own).
pub async fn pg(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

/// One value of a `serve` daemon's `/metrics` on `port` (None while it does not answer).
pub async fn metric(port: u16, name: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Empty every DoX table of the stack (through DATABASE_URL) and end with a
/// CHECKPOINT, so every measured run starts with the same WAL state: no
/// checkpoint owed by the previous run lands in the middle of the next.
pub async fn truncate(env: &HashMap<String, String>) {
    let (c, conn) = tokio_postgres::connect(&env["DATABASE_URL"], tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let names: Vec<_> = TABLES.iter().map(|t| t.supabase).collect();
    c.batch_execute(&format!("TRUNCATE {}", names.join(", ")))
        .await
        .unwrap();
    c.batch_execute("VACUUM ANALYZE").await.unwrap();
    c.batch_execute("CHECKPOINT").await.unwrap();
}

/// A PostgREST of the bench's own on `database` of the stack (`pool`
/// connections), so that pausing or stopping it leaves the shared one alone.
pub async fn own_postgrest(env: &HashMap<String, String>, database: &str, pool: u32) -> Postgrest {
    Postgrest::launch(PostgrestSettings {
        bin: env["DUALWRITE_POSTGREST_BIN"].clone().into(),
        db_uri: format!("{}/{database}", env["DUALWRITE_AUTHENTICATOR_URL"]),
        jwt_secret: env["SUPABASE_JWT_SECRET"].clone(),
        pool,
    })
    .await
}

/// A project of the bench's own: a database cloned from the stack's template
/// and a PostgREST of its own (dropped with the database by [`Project::drop_all`]).
pub struct Project {
    pub name: String,
    pub postgrest: Postgrest,
    pub sql: tokio_postgres::Client,
    /// The database's URL as its superuser.
    pub db_url: String,
}

impl Project {
    /// The database `name` cloned from the template, `setup_sql` run in it,
    /// then its PostgREST started (so its schema cache sees what the SQL made).
    pub async fn new(
        env: &HashMap<String, String>,
        name: String,
        pool: u32,
        setup_sql: &str,
    ) -> Project {
        let admin = pg(&env["DUALWRITE_PG_ADMIN_URL"]).await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {name} TEMPLATE {}",
                env["DUALWRITE_TEMPLATE_DB"]
            ))
            .await
            .unwrap();
        let base = env["DUALWRITE_PG_ADMIN_URL"].rsplit_once('/').unwrap().0;
        let db_url = format!("{base}/{name}");
        let sql = pg(&db_url).await;
        if !setup_sql.is_empty() {
            sql.batch_execute(setup_sql).await.unwrap();
        }
        let postgrest = own_postgrest(env, &name, pool).await;
        Project {
            name,
            postgrest,
            sql,
            db_url,
        }
    }

    pub async fn empty(&self) {
        let names: Vec<_> = TABLES.iter().map(|t| t.supabase).collect();
        self.sql
            .batch_execute(&format!("TRUNCATE {}", names.join(", ")))
            .await
            .unwrap();
        self.sql.batch_execute("VACUUM ANALYZE").await.unwrap();
    }

    pub async fn rows(&self, table: &str) -> i64 {
        self.sql
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0)
    }

    /// 5xx responses in PostgREST's log (its log level `error` logs exactly those).
    pub fn server_errors(&self) -> usize {
        self.postgrest
            .log()
            .lines()
            .filter(|l| l.contains("\" 5"))
            .count()
    }

    /// Stop the projects' PostgRESTs and drop their databases.
    pub async fn drop_all(env: &HashMap<String, String>, projects: Vec<Project>) {
        let names: Vec<_> = projects.iter().map(|p| p.name.clone()).collect();
        drop(projects);
        let admin = pg(&env["DUALWRITE_PG_ADMIN_URL"]).await;
        for name in names {
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .unwrap();
        }
    }
}

//! The one launcher of private PostgREST processes, shared by the integration
//! tests (`tests/it/harness.rs`, `PrivateDb`) and the benchmarks
//! (`benches/common`), which both include this file with `#[path]`: a test or a
//! benchmark that stops, pauses or constrains its Supabase gets a PostgREST of
//! its own, so the shared stack is never touched. Also what `scripts/stack.sh
//! env` exports, for all of them.
//!
//! Every PostgREST runs with the project's one configuration file,
//! `deploy/postgrest/postgrest.conf` (also used by `scripts/stack.sh` and
//! `docker-compose.yml`); PostgREST fills in its `$(DW_PGRST_*)` references
//! from the environment given here, which holds nothing else.

// Each includer uses part of what is here.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What `scripts/stack.sh env` exports (the local stack's URLs, keys and
/// paths), as name and value; a stack never set up is one clear panic.
pub fn stack_env() -> std::collections::HashMap<String, String> {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack.sh"))
        .arg("env")
        .output()
        .expect("run scripts/stack.sh env");
    assert!(
        out.status.success(),
        "the local stack is not set up; run `scripts/stack.sh up` first:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').replace('\\', "")))
        .collect()
}

/// The configuration file of every PostgREST this project runs.
pub fn config_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/postgrest/postgrest.conf")
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What differs between the PostgREST processes: the rest is the shared file.
pub struct PostgrestSettings {
    /// The PostgREST 12.0.2 binary (`DUALWRITE_POSTGREST_BIN` of `scripts/stack.sh env`).
    pub bin: PathBuf,
    /// `postgres://authenticator:…@host:port/database`.
    pub db_uri: String,
    /// The JWT secret the stack's keys are signed with.
    pub jwt_secret: String,
    /// Connections to PostgreSQL.
    pub pool: u32,
}

/// A running PostgREST on 127.0.0.1, killed when dropped. It keeps its ports
/// across [`Postgrest::stop`] and [`Postgrest::start`].
pub struct Postgrest {
    settings: PostgrestSettings,
    /// `http://127.0.0.1:PORT`, without nginx in front.
    pub url: String,
    admin_port: u16,
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

impl Postgrest {
    /// Start PostgREST on two free ports and wait until it is ready.
    pub async fn launch(settings: PostgrestSettings) -> Postgrest {
        let port = free_port();
        let mut p = Postgrest {
            settings,
            url: format!("http://127.0.0.1:{port}"),
            admin_port: free_port(),
            child: None,
            log: tempfile::NamedTempFile::new().unwrap(),
        };
        p.start().await;
        p
    }

    /// What the process (and the ones before it, on restarts) printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn append_log(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.log.path())
            .unwrap()
    }

    fn port(&self) -> &str {
        self.url.rsplit(':').next().unwrap()
    }

    /// Start (or restart) the process and wait until `/ready` answers and the
    /// API serves its schema (no 503 PGRST002 at `/`), 20 s at most.
    pub async fn start(&mut self) {
        self.stop();
        let s = &self.settings;
        let child = Command::new(&s.bin)
            .arg(config_file())
            // PGRST_* variables of the caller would override the file.
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("DW_PGRST_DB_URI", &s.db_uri)
            .env("DW_PGRST_JWT_SECRET", &s.jwt_secret)
            .env("DW_PGRST_DB_POOL", s.pool.to_string())
            .env("DW_PGRST_SERVER_HOST", "127.0.0.1")
            .env("DW_PGRST_SERVER_PORT", self.port())
            .env("DW_PGRST_ADMIN_PORT", self.admin_port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(self.append_log()))
            .stderr(Stdio::from(self.append_log()))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", s.bin.display()));
        self.child = Some(child);
        let ready = format!("http://127.0.0.1:{}/ready", self.admin_port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
                && reqwest::get(&self.url)
                    .await
                    .is_ok_and(|r| r.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE)
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "PostgREST on {} exited ({status}): {}",
                    self.url,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "PostgREST on {} not ready after 20 s: {}",
            self.url,
            self.log()
        );
    }

    /// Kill the process (the API becomes unreachable; the database keeps its rows).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused process must be resumed to die cleanly.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP / SIGCONT: the port still accepts connections but nothing answers.
    pub fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().expect("PostgREST is running").id();
        let sig = if paused { "-STOP" } else { "-CONT" };
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig} {pid} failed");
    }
}

impl Drop for Postgrest {
    fn drop(&mut self) {
        self.stop();
    }
}

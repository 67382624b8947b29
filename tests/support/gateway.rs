//! A private `/rest/v1` gateway for a test's own PostgREST: nginx with the
//! project's one gateway configuration (`deploy/nginx/gateway.conf.template`,
//! the file `scripts/stack.sh` and `docker-compose.yml` use), so a request
//! meets the same limits as through the stack's or Supabase's gateway (a
//! request line too long is a 414 there). One process, no daemon, killed when
//! dropped. Included with `#[path]` by `tests/it`.

// Each includer uses part of what is here.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Gateway {
    /// The project URL, `http://127.0.0.1:PORT` (the API is its `/rest/v1`).
    pub url: String,
    child: Child,
    dir: tempfile::TempDir,
}

fn template() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/gateway.conf.template")
}

/// Fill in `${SB_*}` placeholders; one left outside a comment is an error.
fn render(text: &str, values: &[(&str, String)]) -> String {
    let mut t = text.to_owned();
    for (k, v) in values {
        t = t.replace(&format!("${{{k}}}"), v);
    }
    for line in t.lines() {
        assert!(
            line.trim_start().starts_with('#') || !line.contains("${SB_"),
            "gateway template: no value for a placeholder in `{line}`"
        );
    }
    t
}

impl Gateway {
    /// Its PostgREST endpoint, `<url>/rest/v1`.
    pub fn rest_url(&self) -> String {
        format!("{}/rest/v1", self.url)
    }

    /// nginx in front of `upstream` (`127.0.0.1:PORT`), on a free port.
    /// Requests carry their own JWT in `apikey` (the sb_ key rules of the
    /// template are given values nobody uses).
    pub async fn start(upstream: &str, port: u16) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(d.join("tmp").join(sub)).unwrap();
        }
        let gateway = render(
            &std::fs::read_to_string(template()).unwrap(),
            &[
                ("SB_LISTEN", format!("127.0.0.1:{port}")),
                ("SB_UPSTREAM", upstream.to_owned()),
                ("SB_SECRET_KEY", "sb_secret_unused_in_tests".into()),
                (
                    "SB_PUBLISHABLE_KEY",
                    "sb_publishable_unused_in_tests".into(),
                ),
                ("SB_SERVICE_ROLE_KEY", "unused".into()),
                ("SB_ANON_KEY", "unused".into()),
            ],
        );
        std::fs::write(d.join("gateway.conf"), gateway).unwrap();
        let p = |s: &str| d.join(s).display().to_string();
        let main = format!(
            "daemon off;\nmaster_process off;\npid {};\nerror_log {} warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {};\n  proxy_temp_path {};\n  fastcgi_temp_path {};\n  \
             uwsgi_temp_path {};\n  scgi_temp_path {};\n  include {};\n}}\n",
            p("nginx.pid"),
            p("error.log"),
            p("tmp/client_body"),
            p("tmp/proxy"),
            p("tmp/fastcgi"),
            p("tmp/uwsgi"),
            p("tmp/scgi"),
            p("gateway.conf"),
        );
        std::fs::write(d.join("nginx.conf"), main).unwrap();
        let child = Command::new(nginx())
            .args(["-p", &format!("{}/", d.display()), "-c", &p("nginx.conf")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let g = Gateway {
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        };
        // Up when it answers (401 without an API key, as Supabase's).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/", g.rest_url())).await {
                assert_eq!(r.status().as_u16(), 401, "the gateway answers");
                return g;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(g.dir.path().join("error.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// nginx from the stack's install (Debian's package).
fn nginx() -> &'static Path {
    Path::new("/usr/sbin/nginx")
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

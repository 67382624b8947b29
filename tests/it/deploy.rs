//! The stack's configuration has one source (`deploy/`), used by
//! `scripts/stack.sh`, `docker-compose.yml` and the PostgREST launcher of the
//! tests and benchmarks; its keys come from `dualwrite keys`. These tests fail
//! when a template and one of its users drift apart.

use std::collections::BTreeSet;
use std::process::Command;

use crate::harness::{repo, stack};

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The names between `open` and `close` in `text`'s lines that are not comments
/// (`${SB_X}` in the nginx template, `$(DW_PGRST_X)` in PostgREST's file).
fn placeholders(text: &str, open: &str, close: char) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for part in line.split(open).skip(1) {
            if let Some(name) = part.split(close).next() {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// The variables that `service` sets in docker-compose.yml (`NAME: value` lines
/// under its `environment:`).
fn compose_environment(compose: &str, service: &str) -> BTreeSet<String> {
    let header = format!("  {service}:");
    let service_lines: Vec<&str> = compose
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        // The service ends where the next key of the same or a lower level starts.
        .take_while(|l| l.is_empty() || l.starts_with("   ") || l.trim_start().starts_with('#'))
        .collect();
    assert!(
        !service_lines.is_empty(),
        "docker-compose.yml has no service {service}"
    );
    service_lines
        .iter()
        .skip_while(|l| **l != "    environment:")
        .skip(1)
        .take_while(|l| l.starts_with("      "))
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k.to_owned()))
        .collect()
}

#[test]
fn every_placeholder_of_the_templates_is_set_by_each_user() {
    let compose = read("docker-compose.yml");
    let gateway = placeholders(&read("deploy/nginx/gateway.conf.template"), "${", '}');
    assert!(
        gateway.contains("SB_LISTEN") && gateway.contains("SB_ANON_KEY"),
        "{gateway:?}"
    );
    let api = compose_environment(&compose, "api");
    let nginx_sh = read("scripts/stack/nginx.sh");
    for name in &gateway {
        assert!(
            api.contains(name),
            "docker-compose.yml's api does not set {name}: {api:?}"
        );
        assert!(
            nginx_sh.contains(&format!("{name}=")),
            "scripts/stack/nginx.sh does not set {name}"
        );
    }
    let main = placeholders(&read("deploy/nginx/stack.conf.template"), "${", '}');
    for name in &main {
        assert!(
            nginx_sh.contains(&format!("{name}=")),
            "scripts/stack/nginx.sh does not set {name}"
        );
    }

    let conf = placeholders(&read("deploy/postgrest/postgrest.conf"), "$(", ')');
    assert_eq!(conf.len(), 6, "{conf:?}");
    let rest = compose_environment(&compose, "rest");
    let postgrest_sh = read("scripts/stack/postgrest.sh");
    let launcher = read("tests/support/postgrest.rs");
    let python = read("python/tests/conftest.py");
    for name in &conf {
        assert!(
            rest.contains(name),
            "docker-compose.yml's rest does not set {name}: {rest:?}"
        );
        let short = name.strip_prefix("DW_PGRST_").unwrap();
        assert!(
            postgrest_sh.contains(&format!("\n    {short} ")),
            "scripts/stack/postgrest.sh does not set {name}"
        );
        assert!(
            launcher.contains(&format!("\"{name}\"")),
            "the launcher does not set {name}"
        );
        assert!(
            python.contains(&format!("\"{name}\"")),
            "conftest.py does not set {name}"
        );
    }
    // docker-compose.yml mounts these very files.
    for file in [
        "deploy/nginx/gateway.conf.template",
        "deploy/postgrest/postgrest.conf",
    ] {
        assert!(
            compose.contains(&format!("./{file}:")),
            "docker-compose.yml does not mount {file}"
        );
    }
}

/// Run a function of scripts/stack/lib.sh in bash.
fn lib_sh(script: &str) -> std::process::Output {
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail; REPO_DIR={}; . \"$REPO_DIR/scripts/stack/lib.sh\"; {script}",
            repo().display()
        ))
        .env(
            "DUALWRITE_STACK_DIR",
            std::env::temp_dir().join("dw-lib-sh"),
        )
        .output()
        .unwrap()
}

const GATEWAY_VALUES: &str = "SB_LISTEN=127.0.0.1:1 SB_UPSTREAM=127.0.0.1:2 \
    SB_SECRET_KEY=sb_secret_s SB_PUBLISHABLE_KEY=sb_publishable_p \
    SB_SERVICE_ROLE_KEY=service.jwt.x SB_ANON_KEY=anon.jwt.y";

#[test]
fn the_stack_renders_the_gateway_and_refuses_a_missing_value() {
    let out = lib_sh(&format!(
        "render_template \"$NGINX_GATEWAY_TEMPLATE\" {GATEWAY_VALUES}"
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(placeholders(&text, "${", '}').is_empty(), "{text}");
    assert!(text.contains("listen 127.0.0.1:1;"), "{text}");
    assert!(text.contains("\"Bearer service.jwt.x\""), "{text}");

    // Without SB_ANON_KEY: an error naming it, and nothing on stdout.
    let partial = GATEWAY_VALUES.replace("SB_ANON_KEY=anon.jwt.y", "");
    let out = lib_sh(&format!(
        "render_template \"$NGINX_GATEWAY_TEMPLATE\" {partial}"
    ));
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no value for ${SB_ANON_KEY}"), "{err}");
}

/// The gateway rendered the way the nginx image does it (envsubst of the
/// `SB_` variables docker-compose.yml sets; the rest left alone) is a
/// configuration nginx accepts.
#[test]
fn the_gateway_rendered_like_the_nginx_image_passes_nginx_t() {
    needs_stack!();
    let mut text = read("deploy/nginx/gateway.conf.template");
    for pair in GATEWAY_VALUES.split_whitespace() {
        let (k, v) = pair.split_once('=').unwrap();
        text = text.replace(&format!("${{{k}}}"), v);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("default.conf"), text).unwrap();
    std::fs::write(
        dir.path().join("nginx.conf"),
        format!("pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  include {d}/default.conf;\n}}\n"),
    )
    .unwrap();
    let out = Command::new("/usr/sbin/nginx")
        .args([
            "-t",
            "-q",
            "-p",
            &format!("{d}/"),
            "-e",
            &format!("{d}/error.log"),
            "-c",
        ])
        .arg(dir.path().join("nginx.conf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `scripts/stack.sh jwt` signs with `dualwrite keys` (iss "dualwrite"), with the
/// stack's secret; a role keys.rs does not know is refused, naming it.
#[test]
fn stack_jwt_is_signed_by_dualwrite_keys() {
    needs_stack!();
    let s = stack();
    let jwt = |args: &[&str]| {
        Command::new(repo().join("scripts/stack.sh"))
            .arg("jwt")
            .args(args)
            .env("DUALWRITE_STACK_DIR", s.var("DUALWRITE_STACK_DIR"))
            .env("DUALWRITE_BIN", env!("CARGO_BIN_EXE_dualwrite"))
            .output()
            .unwrap()
    };
    let out = jwt(&["authenticated", "user-42"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let claims =
        dualwrite::keys::verify(s.jwt_secret(), token.trim(), Some("authenticated")).unwrap();
    assert_eq!(claims["sub"], "user-42");
    assert_eq!(claims["iss"], "dualwrite");
    let exp = claims["exp"].as_i64().unwrap() - chrono::Utc::now().timestamp();
    assert!((3500..=3600).contains(&exp), "valid one hour, not {exp} s");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(s.jwt_secret()),
        "the secret must not be logged"
    );

    let out = jwt(&["admin"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("role `admin`"));
}

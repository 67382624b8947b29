//! The daemon's HTTP endpoint: `/health`, `/ready`, `/metrics` (Prometheus
//! text format), `/status` (JSON).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::service::{make_service_fn, service_fn};
use hyper::{Body, Request, Response, Server, StatusCode};
use tokio::sync::watch;

use super::Stats;
use crate::error::{Error, Result};

/// Bind `addr` (an error at once if it is taken) and serve until `stop`.
pub fn spawn(
    addr: SocketAddr,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>> {
    let builder = Server::try_bind(&addr)
        .map_err(|e| Error::invalid(format!("cannot listen on {addr}: {e}")))?;
    let make = make_service_fn(move |_| {
        let stats = Arc::clone(&stats);
        async move {
            Ok::<_, Infallible>(service_fn(move |req| {
                let stats = Arc::clone(&stats);
                async move { Ok::<_, Infallible>(handle(&stats, &req)) }
            }))
        }
    });
    let server = builder.serve(make).with_graceful_shutdown(async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    });
    Ok(tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the HTTP endpoint stopped");
        }
    }))
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Body::from(body))
        .expect("a valid response")
}

fn handle(stats: &Stats, req: &Request<Body>) -> Response<Body> {
    match req.uri().path() {
        "/health" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/ready" => match stats.ready() {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {}\n", why.join("; ")),
            ),
        },
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            render_metrics(stats),
        ),
        "/status" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&stats.snapshot()).expect("status serialises"),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition format.
pub fn render_metrics(stats: &Stats) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP dualwrite_pending_changes Captured changes not yet mirrored.\n\
         # TYPE dualwrite_pending_changes gauge\n\
         dualwrite_pending_changes {}",
        stats.pending.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP dualwrite_lag_seconds Age of the oldest pending change (0 when none).\n\
         # TYPE dualwrite_lag_seconds gauge\n\
         dualwrite_lag_seconds {}",
        stats.lag_seconds()
    );
    let _ = writeln!(
        out,
        "# HELP dualwrite_ready 1 when /ready answers 200.\n# TYPE dualwrite_ready gauge\ndualwrite_ready {}",
        u8::from(stats.ready().is_ok())
    );
    for (name, help, label_name, map) in [
        (
            "dualwrite_mirrored_rows_total",
            "Rows upserted or deleted in Supabase.",
            "table",
            &stats.mirrored,
        ),
        (
            "dualwrite_mirror_failures_total",
            "Batches that failed after their retries, by kind.",
            "kind",
            &stats.failures,
        ),
        (
            "dualwrite_rejected_rows_total",
            "Rows written to the rejects file (dead letters).",
            "table",
            &stats.rejected,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (k, v) in crate::sync::lock(map).iter() {
            let _ = writeln!(out, "{name}{{{label_name}=\"{}\"}} {v}", label(k));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prometheus_text_and_ready_says_why() {
        let s = Stats {
            max_lag_secs: 60.0,
            ..Stats::default()
        };
        super::super::stats::add(&s.mirrored, "artifact", 3);
        super::super::stats::add(&s.failures, "unreachable", 1);
        s.set_pending(7, 1.5);
        let m = render_metrics(&s);
        assert!(m.contains("dualwrite_pending_changes 7\n"), "{m}");
        assert!(m.contains("dualwrite_lag_seconds 1.5\n"), "{m}");
        assert!(
            m.contains("dualwrite_mirrored_rows_total{table=\"artifact\"} 3\n"),
            "{m}"
        );
        assert!(
            m.contains("dualwrite_mirror_failures_total{kind=\"unreachable\"} 1\n"),
            "{m}"
        );
        assert!(m.contains("# TYPE dualwrite_rejected_rows_total counter"));
        assert!(s.ready().is_ok());
        s.set_pending(7, 120.0);
        let why = s.ready().unwrap_err().join("; ");
        assert!(why.contains("over the bound"), "{why}");
        s.stopping.store(true, Ordering::SeqCst);
        assert!(s.ready().unwrap_err()[0].contains("shutting down"));
    }
}

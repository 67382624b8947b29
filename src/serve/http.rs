//! The daemon's HTTP endpoint: `/health` (the process answers), `/ready`
//! (200 only while the daemon drains and is within its bounds; 503 with the
//! reasons otherwise), `/metrics` (Prometheus text format), `/status` (JSON).
//! Every answer reads the change log's backlog when it is asked
//! ([`Signals::backlog`]), not a figure the drain loop left behind.

use std::convert::Infallible;
use std::net::SocketAddr;

use hyper::service::{make_service_fn, service_fn};
use hyper::{Body, Request, Response, Server, StatusCode};
use tokio::sync::watch;

use super::stats::{render_metrics, snapshot, Current, Signals};
use crate::error::{Error, Result};

/// Bind `addr` (an error at once if it is taken) and serve until `stop`,
/// each answer from the signals `current` holds when it is asked.
pub(crate) fn spawn(
    addr: SocketAddr,
    current: Current,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>> {
    let builder = Server::try_bind(&addr)
        .map_err(|e| Error::invalid(format!("cannot listen on {addr}: {e}")))?;
    let make = make_service_fn(move |_| {
        let current = current.clone();
        async move {
            Ok::<_, Infallible>(service_fn(move |req| {
                let signals = current.get();
                async move { Ok::<_, Infallible>(handle(&signals, &req).await) }
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

async fn handle(signals: &Signals, req: &Request<Body>) -> Response<Body> {
    match req.uri().path() {
        "/health" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/ready" => {
            let h = signals.health().await;
            if h.ready {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {}\n", h.why.join("; ")),
                )
            }
        }
        "/metrics" => {
            let h = signals.health().await;
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                render_metrics(&signals.stats, &h),
            )
        }
        "/status" => {
            let h = signals.health().await;
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&snapshot(&signals.stats, &h))
                    .expect("status serialises"),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

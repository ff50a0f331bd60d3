//! The operators' HTTP endpoint, off the mail ports: `/metrics`, `/healthz` and `/readyz`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::{TcpListener, TcpStream};

use crate::gateway::Gateway;

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(gateway);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gateway.metrics.render(),
    )
}

/// How long each readiness check may take.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Ready when the store answers and every configured upstream accepts a TCP connection
/// (the listeners are bound before this endpoint starts), and the instance is not shutting
/// down: from SIGTERM on it says `draining`, so a load balancer sends new clients elsewhere
/// while the sessions here end. One line per check.
async fn ready(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    let mut report = String::new();
    let mut ready = true;
    if gateway.drain.is_cancelled() {
        ready = false;
        report.push_str("draining\n");
    }
    match tokio::time::timeout(READY_CHECK_TIMEOUT, gateway.store.ping()).await {
        Ok(Ok(())) => report.push_str("store ok\n"),
        _ => {
            ready = false;
            report.push_str("store unreachable\n");
        }
    }
    for (protocol, upstream) in [
        ("imap", gateway.imap_upstream()),
        ("smtp", gateway.smtp_upstream()),
    ] {
        let Some(upstream) = upstream else { continue };
        let connect = TcpStream::connect(upstream.address.as_str());
        match tokio::time::timeout(READY_CHECK_TIMEOUT, connect).await {
            Ok(Ok(_)) => report.push_str(&format!("{protocol} upstream ok\n")),
            _ => {
                ready = false;
                report.push_str(&format!("{protocol} upstream unreachable\n"));
            }
        }
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, report)
}

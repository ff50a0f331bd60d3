//! The running gateway: starts an accept loop per already-bound listener, the HTTP
//! endpoint, the warm upstream connections and the change follower, and drains on
//! shutdown. Binding is the caller's job, so tests bind port 0.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::auth::changes;
use crate::config::{Config, ListenerConfig};
use crate::gateway::{Gateway, ServeError};
use crate::imap::warm;
use crate::net::listener;
use crate::ops::http;

/// At shutdown, the audit queue is written within what remains of the grace once the
/// sessions have ended, and at least this long.
pub const AUDIT_FLUSH_MINIMUM: std::time::Duration = std::time::Duration::from_secs(1);

/// Binds every configured listener and the HTTP endpoint.
pub async fn bind(
    config: &Config,
) -> Result<(Vec<(ListenerConfig, TcpListener)>, TcpListener), ServeError> {
    let mut bound = Vec::new();
    for listener in &config.listeners {
        let socket = TcpListener::bind(listener.bind)
            .await
            .map_err(|source| ServeError::Bind {
                what: format!("listener {:?}", listener.name),
                address: listener.bind,
                source,
            })?;
        bound.push((listener.clone(), socket));
    }
    let http = TcpListener::bind(config.http.bind)
        .await
        .map_err(|source| ServeError::Bind {
            what: "[http]".into(),
            address: config.http.bind,
            source,
        })?;
    Ok((bound, http))
}

/// Serves until `shutdown` completes, then stops accepting, closes sessions, writes the
/// queued audit events (within what is left of the grace, at least
/// [`AUDIT_FLUSH_MINIMUM`]) and returns once every session task has ended.
pub async fn run(
    gateway: Arc<Gateway>,
    listeners: Vec<(ListenerConfig, TcpListener)>,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    // Connections (accept loops and sessions) drain within the grace; the services
    // (metrics endpoint, change follower) keep running until the end.
    let tasks = TaskTracker::new();
    let services = TaskTracker::new();
    for (config, socket) in listeners {
        if let Ok(address) = socket.local_addr() {
            tracing::info!(listener = %config.name, protocol = config.protocol.as_str(), %address, "listening");
        }
        tasks.spawn(listener::accept_loop(
            socket,
            Arc::new(config),
            gateway.clone(),
            tasks.clone(),
        ));
    }
    if let Some(http) = http {
        let http_gateway = gateway.clone();
        let stop = gateway.shutdown.clone().cancelled_owned();
        if let Ok(address) = http.local_addr() {
            tracing::info!(%address, "metrics and health on http");
        }
        services.spawn(async move {
            if let Err(error) = http::serve(http, http_gateway, stop).await {
                tracing::error!(%error, "http endpoint failed");
            }
        });
    }
    let current = gateway.clone();
    services.spawn(warm::keep_ready(
        gateway.imap_warm.clone(),
        move || current.imap_upstream(),
        gateway.metrics.upstream_errors.clone(),
        gateway.drain.clone(),
    ));
    services.spawn(changes::follow(
        gateway.store.clone(),
        gateway.verifier.clone(),
        gateway.sessions.clone(),
        gateway.metrics.clone(),
        gateway.change_poll_interval,
        gateway.shutdown.clone().cancelled_owned(),
    ));

    shutdown.await;
    let grace_ends = tokio::time::Instant::now() + gateway.shutdown_grace;
    tracing::info!(
        grace = ?gateway.shutdown_grace,
        sessions = gateway.sessions.len(),
        "shutting down: no new connections; sessions end at their next command boundary"
    );
    gateway.drain.cancel();
    tasks.close();
    if tokio::time::timeout(gateway.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            sessions = gateway.sessions.len(),
            "shutdown grace is over; closing the remaining sessions"
        );
    }
    gateway.shutdown.cancel();
    services.close();
    tasks.wait().await;
    // Every session has ended, so no more audit events come: write the queued ones.
    let flush = grace_ends
        .saturating_duration_since(tokio::time::Instant::now())
        .max(AUDIT_FLUSH_MINIMUM);
    let waiting = gateway.audit.waiting();
    let lost = gateway.audit.finish(flush).await;
    if lost > 0 {
        tracing::warn!(
            lost,
            "shutdown: audit events could not be written to the store in time; they are lost"
        );
    } else if waiting > 0 {
        tracing::info!(written = waiting, "shutdown: queued audit events written");
    }
    services.wait().await;
    tracing::info!("stopped");
}

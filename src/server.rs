//! The running gateway: starts an accept loop per already-bound listener, the HTTP
//! endpoint, the warm upstream connections and the change follower, and drains on
//! shutdown. Binding is the caller's job, so tests bind port 0.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::auth::changes;
use crate::config::{
    AcmeConfig, Config, DirectoryConfig, ListenerConfig, PortalConfig, ScimConfig,
};
use crate::gateway::{Gateway, ServeError};
use crate::net::listener;
use crate::ops::http;
use crate::portal::{self, Portal};
use crate::upstream::warm;

/// At shutdown, the audit queue is written within what remains of the grace once the
/// sessions have ended, and at least this long.
pub const AUDIT_FLUSH_MINIMUM: std::time::Duration = std::time::Duration::from_secs(1);

/// The sockets postern serves on, bound by [`bind`] (or by a test, on port 0).
pub struct Bound {
    /// The mail listeners.
    pub listeners: Vec<(ListenerConfig, TcpListener)>,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub http: Option<TcpListener>,
    /// The self-service portal, when `[portal]` is configured.
    pub portal: Option<(PortalConfig, TcpListener)>,
    /// What the portal does with the directory's people (`[directory]`).
    pub directory: DirectoryConfig,
    /// SCIM provisioning on the portal (`[scim]`).
    pub scim: Option<ScimConfig>,
    /// `[tls.acme]` and its HTTP-01 responder's socket (with `challenge = "http-01"`).
    pub acme: Option<(AcmeConfig, Option<TcpListener>)>,
}

/// Binds `[tls.acme] http_challenge_bind`, when ACME is configured.
pub async fn bind_acme(
    config: &Config,
) -> Result<Option<(AcmeConfig, Option<TcpListener>)>, ServeError> {
    let Some(acme) = &config.tls.acme else {
        return Ok(None);
    };
    let socket = match acme.http_challenge_bind {
        Some(address) => {
            Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|source| ServeError::Bind {
                        what: "[tls.acme] http_challenge_bind".into(),
                        address,
                        source,
                    })?,
            )
        }
        None => None,
    };
    Ok(Some((acme.clone(), socket)))
}

/// Binds every configured listener, the HTTP endpoint and the portal.
pub async fn bind(config: &Config) -> Result<Bound, ServeError> {
    let mut listeners = Vec::new();
    for listener in &config.listeners {
        let socket = TcpListener::bind(listener.bind)
            .await
            .map_err(|source| ServeError::Bind {
                what: format!("listener {:?}", listener.name),
                address: listener.bind,
                source,
            })?;
        listeners.push((listener.clone(), socket));
    }
    let http = TcpListener::bind(config.http.bind)
        .await
        .map_err(|source| ServeError::Bind {
            what: "[http]".into(),
            address: config.http.bind,
            source,
        })?;
    let portal = match &config.portal {
        Some(portal) => {
            let socket =
                TcpListener::bind(portal.bind)
                    .await
                    .map_err(|source| ServeError::Bind {
                        what: "[portal]".into(),
                        address: portal.bind,
                        source,
                    })?;
            Some((portal.clone(), socket))
        }
        None => None,
    };
    Ok(Bound {
        listeners,
        http: Some(http),
        portal,
        directory: config.directory.clone(),
        scim: config.scim.clone(),
        acme: bind_acme(config).await?,
    })
}

/// Serves until `shutdown` completes, then stops accepting, closes sessions, writes the
/// queued audit events (within what is left of the grace, at least
/// [`AUDIT_FLUSH_MINIMUM`]) and returns once every session task has ended.
pub async fn run(gateway: Arc<Gateway>, bound: Bound, shutdown: impl Future<Output = ()>) {
    let Bound {
        listeners,
        http,
        portal,
        directory,
        scim,
        acme,
    } = bound;
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
    if let Some((config, socket)) = portal {
        match Portal::new(gateway.clone(), config, &directory, scim).await {
            Ok(portal) => {
                if let Ok(address) = socket.local_addr() {
                    tracing::info!(%address, "portal on https");
                }
                if let (Some(ldap), false) = (&portal.directory, directory.sync_interval.is_zero())
                {
                    tasks.spawn(crate::directory::sync::run(
                        ldap.clone(),
                        gateway.store.clone(),
                        portal.accounts.clone(),
                        directory.sync_interval,
                        gateway.drain.clone(),
                    ));
                }
                tasks.spawn(portal::serve(portal, socket, tasks.clone()));
            }
            Err(error) => tracing::error!(%error, "the portal cannot start"),
        }
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
    if let Some((config, socket)) = acme {
        if let Some(socket) = socket {
            let stop = gateway.shutdown.clone().cancelled_owned();
            let store = gateway.store.clone();
            services.spawn(async move {
                if let Err(error) = crate::acme::challenge::serve(socket, store, stop).await {
                    tracing::error!(%error, "the ACME challenge responder failed");
                }
            });
        }
        services.spawn(crate::acme::run(
            gateway.clone(),
            config,
            gateway.shutdown.clone().cancelled_owned(),
        ));
    }
    let current = gateway.clone();
    services.spawn(warm::keep_ready(
        gateway.imap_warm.clone(),
        "imap",
        move || current.imap_upstream(),
        |upstream| async move { crate::imap::upstream::connect(&upstream).await },
        gateway.metrics.upstream_errors.clone(),
        gateway.drain.clone(),
    ));
    let current = gateway.clone();
    services.spawn(warm::keep_ready(
        gateway.pop3_warm.clone(),
        "pop3",
        move || current.pop3_upstream(),
        |upstream| async move { crate::pop3::upstream::connect(&upstream).await },
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

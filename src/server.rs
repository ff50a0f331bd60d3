//! The running gateway: builds the shared services once ([`Gateway`]), starts an accept
//! loop per already-bound listener, the HTTP endpoint and the change follower, and drains
//! on shutdown. Binding is the caller's job, so tests bind port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditWriter;
use crate::auth::hasher::{HashError, PasswordHasher};
use crate::auth::verifier::{AuthError, VerifierOptions};
use crate::auth::{changes, Verifier};
use crate::config::{Config, Limits, ListenerConfig, NetworkConfig, SmtpConfig};
use crate::connections::ConnectionCaps;
use crate::imap::warm::{self, WarmConnections};
use crate::listener;
use crate::metrics::{self, Metrics};
use crate::sessions::LiveSessions;
use crate::smtp::quota::{QuotaLimits, Quotas};
use crate::smtp::upstream::{self as smtp_upstream, Capabilities};
use crate::store::Store;
use crate::stream::Stream;
use crate::tls::{self, TlsError};
use crate::tls_stream::ServerTls;
use crate::upstream::Upstream;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("[upstream.{protocol}]: {source}")]
    UpstreamTls {
        protocol: &'static str,
        source: TlsError,
    },
    #[error("password hashing: {0}")]
    Hash(#[from] HashError),
    #[error("verifier: {0}")]
    Auth(#[from] AuthError),
    #[error("cannot bind {address} for {what}: {source}")]
    Bind {
        what: String,
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Everything a session needs, built once and shared.
pub struct Gateway {
    pub limits: Limits,
    /// Swapped by [`Gateway::reload`]; read once per handshake.
    server_tls: RwLock<Arc<rustls::ServerConfig>>,
    pub verifier: Verifier,
    pub sessions: Arc<LiveSessions>,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    /// Login and message audit events, queued in front of the store.
    pub audit: AuditWriter,
    imap_upstream: RwLock<Option<Arc<Upstream>>>,
    /// IMAP upstream connections greeted ahead of logins.
    pub imap_warm: WarmConnections,
    smtp_upstream: RwLock<Option<Arc<Upstream>>>,
    pub smtp: SmtpConfig,
    /// Trusted networks, PROXY header sources, per-address caps.
    pub network: NetworkConfig,
    /// Per-app-password sending quotas.
    pub quotas: Quotas,
    /// Connections each client address holds per listener.
    pub connection_caps: Arc<ConnectionCaps>,
    /// The upstream SMTP server's EHLO capabilities and when they were read.
    smtp_capabilities: tokio::sync::Mutex<Option<(Instant, Capabilities)>>,
    /// Cancelled when shutdown begins: stop accepting, and sessions say goodbye at their
    /// next command boundary.
    pub drain: CancellationToken,
    /// Cancelled when the shutdown grace ends: whatever still runs stops now.
    pub shutdown: CancellationToken,
    shutdown_grace: std::time::Duration,
    change_poll_interval: std::time::Duration,
}

impl Gateway {
    /// Builds TLS configurations, the hasher and the verifier. Generates the development
    /// certificate when none exists.
    pub async fn new(config: &Config, store: Store) -> Result<Arc<Gateway>, ServeError> {
        if tls::ensure_development_certificate(&config.tls)? {
            tracing::warn!(
                cert = %config.tls.cert.display(),
                key = %config.tls.key.display(),
                "NO CERTIFICATE FOUND: generated a self-signed development certificate. \
                 Mail clients will warn about it; configure a real certificate for production."
            );
        }
        let server_tls = tls::server_config(&config.tls)?;
        let metrics = Metrics::new();
        let hasher = password_hasher(config)?.with_histogram(metrics.password_hash_seconds.clone());
        let audit = AuditWriter::start(store.clone(), &metrics, config.store.audit_queue);
        let verifier = Verifier::new(
            store.clone(),
            hasher,
            metrics.clone(),
            audit.clone(),
            VerifierOptions {
                cache_ttl: config.auth.cache_ttl,
                cache_capacity: config.auth.cache_capacity,
                trusted_networks: config.network.trusted_networks.clone(),
            },
        )
        .await?;
        let (imap_upstream, smtp_upstream) = upstreams(config)?;
        let quota = |n: u32| (n > 0).then_some(n);
        Ok(Arc::new(Gateway {
            limits: config.limits.clone(),
            smtp_upstream: RwLock::new(smtp_upstream),
            smtp: config.smtp.clone(),
            network: config.network.clone(),
            connection_caps: ConnectionCaps::new(config.network.max_connections_per_ip),
            quotas: Quotas::new(QuotaLimits {
                messages_per_hour: quota(config.smtp.messages_per_hour),
                recipients_per_hour: quota(config.smtp.recipients_per_hour),
            }),
            smtp_capabilities: tokio::sync::Mutex::new(None),
            server_tls: RwLock::new(server_tls),
            verifier,
            sessions: LiveSessions::new(),
            metrics,
            store,
            audit,
            imap_upstream: RwLock::new(imap_upstream),
            imap_warm: WarmConnections::default(),
            drain: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            shutdown_grace: config.limits.shutdown_grace,
            change_poll_interval: config.auth.change_poll_interval,
        }))
    }
}

impl Gateway {
    /// The IMAP upstream as configured now.
    pub fn imap_upstream(&self) -> Option<Arc<Upstream>> {
        read(&self.imap_upstream).clone()
    }

    /// The SMTP upstream as configured now.
    pub fn smtp_upstream(&self) -> Option<Arc<Upstream>> {
        read(&self.smtp_upstream).clone()
    }

    /// Applies what can change without a restart (SIGHUP): the certificate and key, and
    /// the upstream sections (address, TLS, CA, login mode, master user, timeouts). New
    /// connections and logins use them; established sessions keep what they have. All or
    /// nothing: if anything fails to load, nothing changes.
    pub async fn reload(&self, config: &Config) -> Result<(), ServeError> {
        let server_tls = tls::server_config(&config.tls)?;
        let (imap, smtp) = upstreams(config)?;
        *write(&self.server_tls) = server_tls;
        *write(&self.imap_upstream) = imap;
        *write(&self.smtp_upstream) = smtp;
        *self.smtp_capabilities.lock().await = None;
        Ok(())
    }

    /// The TLS handshake with a client, under the configured timeout; interrupted by
    /// shutdown. The error names what went wrong, for the connection's log line.
    pub async fn accept_tls(&self, tcp: TcpStream) -> Result<Stream, &'static str> {
        let config = read(&self.server_tls).clone();
        let accept = tokio::time::timeout(
            self.limits.tls_handshake_timeout,
            ServerTls::accept(config, tcp),
        );
        let result = tokio::select! {
            result = accept => result,
            () = self.drain.cancelled() => return Err("shutdown during TLS handshake"),
        };
        match result {
            Ok(Ok(tls)) => Ok(Stream::TlsServer(Box::new(tls))),
            Ok(Err(error)) => {
                tracing::debug!(%error, "TLS handshake failed");
                Err("TLS handshake failed")
            }
            Err(_) => Err("TLS handshake timed out"),
        }
    }

    /// What the upstream SMTP server offers (SIZE, SMTPUTF8, DSN), read with a probe
    /// connection at most every `capabilities_refresh`. When the probe fails, nothing
    /// optional is advertised and postern asks again after a short pause.
    pub async fn smtp_capabilities(&self) -> Capabilities {
        let mut cached = self.smtp_capabilities.lock().await;
        if let Some((read_at, capabilities)) = cached.as_ref() {
            if read_at.elapsed() < self.smtp.capabilities_refresh {
                return capabilities.clone();
            }
        }
        let Some(upstream) = self.smtp_upstream() else {
            return Capabilities::default();
        };
        let (capabilities, valid_for) =
            match smtp_upstream::probe(&upstream, &self.smtp.hostname).await {
                Ok(capabilities) => (capabilities, self.smtp.capabilities_refresh),
                Err(error) => {
                    tracing::warn!(%error, "cannot read the upstream SMTP capabilities");
                    (Capabilities::default(), CAPABILITY_RETRY)
                }
            };
        // Stamp it so that it expires `valid_for` from now.
        let stamp = Instant::now()
            .checked_sub(self.smtp.capabilities_refresh.saturating_sub(valid_for))
            .unwrap_or_else(Instant::now);
        *cached = Some((stamp, capabilities.clone()));
        capabilities
    }
}

/// The configured upstreams, if any: (IMAP, SMTP).
type Upstreams = (Option<Arc<Upstream>>, Option<Arc<Upstream>>);

fn upstreams(config: &Config) -> Result<Upstreams, ServeError> {
    let build = |section: &Option<crate::config::UpstreamConfig>, protocol: &'static str| {
        section
            .as_ref()
            .map(|c| Upstream::new(c).map(Arc::new))
            .transpose()
            .map_err(|source| ServeError::UpstreamTls { protocol, source })
    };
    Ok((
        build(&config.upstream.imap, "imap")?,
        build(&config.upstream.smtp, "smtp")?,
    ))
}

/// A read lock; the values behind these locks are replaced whole, so a poisoned lock
/// still holds a consistent value.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// At shutdown, the audit queue is written within what remains of the grace once the
/// sessions have ended, and at least this long.
pub const AUDIT_FLUSH_MINIMUM: std::time::Duration = std::time::Duration::from_secs(1);

/// How soon a failed capability probe is retried.
const CAPABILITY_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// The argon2id pool configured in `[auth]`.
pub fn password_hasher(config: &Config) -> Result<PasswordHasher, HashError> {
    PasswordHasher::new(
        config.auth.argon2_memory_kib,
        config.auth.argon2_iterations,
        config.auth.argon2_parallelism,
        config.auth.hash_workers,
        config.auth.hash_queue_timeout,
    )
}

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
            if let Err(error) = metrics::serve_http(http, http_gateway, stop).await {
                tracing::error!(%error, "http endpoint failed");
            }
        });
    }
    services.spawn(warm::keep_ready(gateway.clone(), gateway.drain.clone()));
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

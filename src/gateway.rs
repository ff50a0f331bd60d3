//! The shared services every session uses, built once from the configuration: TLS
//! configurations, the verifier, the live-session registry, metrics, the store and audit
//! queue, the upstreams (reloadable), the limits and the shutdown signals.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::auth::hasher::{HashError, PasswordHasher};
use crate::auth::verifier::{AuthError, VerifierOptions};
use crate::auth::Verifier;
use crate::config::{Config, Limits, NetworkConfig, SmtpConfig};
use crate::limits::penalty::MemoryPenalties;
use crate::limits::quota::{MemoryQuotas, QuotaLimits};
use crate::limits::{shared, Penalties, Quotas};
use crate::net::caps::{AddressCaps, SessionCaps};
use crate::net::stream::Stream;
use crate::ops::audit::AuditWriter;
use crate::ops::metrics::Metrics;
use crate::session::live::LiveSessions;
use crate::smtp::capabilities::CapabilityCache;
use crate::smtp::upstream::Capabilities;
use crate::store::{Backend, Store};
use crate::tls::stream::ServerTls;
use crate::tls::{self, TlsError};
use crate::upstream::warm::WarmConnections;
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
    #[error("[oauth2]: {0}")]
    OAuth2(#[from] crate::oauth2::TokenError),
    #[error("password hashing: {0}")]
    Hash(#[from] HashError),
    #[error("verifier: {0}")]
    Auth(#[from] AuthError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
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
    /// `[tls]` as configured now, and the certificate ACME obtained, if any: what
    /// `server_tls` is built from.
    tls: RwLock<(crate::config::TlsConfig, Option<Arc<tls::Issued>>)>,
    /// TLS-ALPN-01 challenges of ACME orders under way, and the configuration a CA's
    /// validation handshakes with (`[tls.acme] challenge = "tls-alpn-01"`).
    pub alpn_challenges: Option<(
        Arc<tls::alpn_challenge::Challenges>,
        Arc<rustls::ServerConfig>,
    )>,
    pub verifier: Verifier,
    /// Login penalties, shared by the verifier and the portal's sign-in.
    pub penalties: Arc<dyn Penalties>,
    /// Live app passwords a user may hold (`[auth] max_app_passwords`).
    pub max_app_passwords: u32,
    pub sessions: Arc<LiveSessions>,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    /// Login and message audit events, queued in front of the store.
    pub audit: AuditWriter,
    imap_upstream: RwLock<Option<Arc<Upstream>>>,
    /// IMAP upstream connections greeted ahead of logins.
    pub imap_warm: Arc<WarmConnections<crate::imap::upstream::Greeted>>,
    smtp_upstream: RwLock<Option<Arc<Upstream>>>,
    pop3_upstream: RwLock<Option<Arc<Upstream>>>,
    /// POP3 upstream connections greeted ahead of logins.
    pub pop3_warm: Arc<WarmConnections<crate::pop3::upstream::Greeted>>,
    pub smtp: SmtpConfig,
    /// Trusted networks, PROXY header sources, per-address caps.
    pub network: NetworkConfig,
    /// Per-app-password sending quotas.
    pub quotas: Arc<dyn Quotas>,
    /// Connections each client address holds per listener.
    pub connection_caps: Arc<AddressCaps>,
    /// Sessions each login holds per address and protocol.
    pub session_caps: Arc<SessionCaps>,
    /// The upstream SMTP server's EHLO capabilities, read ahead of logins.
    pub smtp_capabilities: CapabilityCache,
    /// Cancelled when shutdown begins: stop accepting, and sessions say goodbye at their
    /// next command boundary.
    pub drain: CancellationToken,
    /// Cancelled when the shutdown grace ends: whatever still runs stops now.
    pub shutdown: CancellationToken,
    /// On SIGTERM, how long sessions may finish before they are cut.
    pub shutdown_grace: std::time::Duration,
    /// How often the store's change feed is polled.
    pub change_poll_interval: std::time::Duration,
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
        let alpn_challenges = match &config.tls.acme {
            Some(acme) if acme.challenge == crate::config::AcmeChallenge::TlsAlpn01 => {
                let challenges = Arc::new(tls::alpn_challenge::Challenges::default());
                let config = tls::alpn_challenge::challenge_config(challenges.clone())?;
                Some((challenges, config))
            }
            _ => None,
        };
        let metrics = Metrics::new();
        let hasher = password_hasher(config)?.with_histogram(metrics.password_hash_seconds.clone());
        let audit = AuditWriter::start(store.clone(), &metrics, config.store.audit_queue);
        let quota = |n: u32| (n > 0).then_some(n);
        let quota_limits = QuotaLimits {
            messages_per_hour: quota(config.smtp.messages_per_hour),
            recipients_per_hour: quota(config.smtp.recipients_per_hour),
        };
        let trusted = config.network.trusted_networks.clone();
        let (penalties, quotas): (Arc<dyn Penalties>, Arc<dyn Quotas>) = match store.backend() {
            Backend::Postgres => {
                let (penalties, quotas) =
                    shared::start(store.clone(), trusted, quota_limits, &metrics).await?;
                (penalties, quotas)
            }
            Backend::Sqlite => (
                Arc::new(MemoryPenalties::new(trusted)),
                Arc::new(MemoryQuotas::new(quota_limits)),
            ),
        };
        let verifier = Verifier::new(
            store.clone(),
            hasher,
            metrics.clone(),
            audit.clone(),
            VerifierOptions {
                cache_ttl: config.auth.cache_ttl,
                cache_capacity: config.auth.cache_capacity,
                penalties: penalties.clone(),
            },
        )
        .await?;
        let (imap_upstream, smtp_upstream, pop3_upstream) = upstreams(config, &metrics)?;
        Ok(Arc::new(Gateway {
            limits: config.limits.clone(),
            smtp_upstream: RwLock::new(smtp_upstream),
            pop3_upstream: RwLock::new(pop3_upstream),
            smtp: config.smtp.clone(),
            network: config.network.clone(),
            connection_caps: AddressCaps::new(
                config.network.max_connections_per_ip,
                config.network.trusted_networks.clone(),
            ),
            session_caps: SessionCaps::new(config.network.max_sessions_per_user_ip, Vec::new()),
            quotas,
            smtp_capabilities: CapabilityCache::new(config.smtp.capabilities_refresh),
            server_tls: RwLock::new(server_tls),
            tls: RwLock::new((config.tls.clone(), None)),
            alpn_challenges,
            verifier,
            penalties,
            max_app_passwords: config.auth.max_app_passwords,
            sessions: LiveSessions::new(),
            metrics,
            store,
            audit,
            imap_upstream: RwLock::new(imap_upstream),
            imap_warm: Arc::default(),
            pop3_warm: Arc::default(),
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

    /// The POP3 upstream as configured now.
    pub fn pop3_upstream(&self) -> Option<Arc<Upstream>> {
        read(&self.pop3_upstream).clone()
    }

    /// Applies what can change without a restart (SIGHUP): the certificate and key, and
    /// the upstream sections (address, TLS, CA, login mode, master user, timeouts). New
    /// connections and logins use them; established sessions keep what they have. All or
    /// nothing: if anything fails to load, nothing changes.
    pub async fn reload(&self, config: &Config) -> Result<(), ServeError> {
        let issued = read(&self.tls).1.clone();
        let server_tls = tls::server_config_with(&config.tls, issued.as_deref())?;
        let (imap, smtp, pop3) = upstreams(config, &self.metrics)?;
        *write(&self.tls) = (config.tls.clone(), issued);
        *write(&self.server_tls) = server_tls;
        *write(&self.imap_upstream) = imap;
        *write(&self.smtp_upstream) = smtp;
        *write(&self.pop3_upstream) = pop3;
        self.smtp_capabilities.forget().await;
        Ok(())
    }

    /// Serves `issued` (a certificate ACME obtained) to new connections from now on, before
    /// the configured certificates.
    pub fn install_certificate(&self, issued: tls::Issued) -> Result<(), tls::TlsError> {
        let mut current = write(&self.tls);
        let server_tls = tls::server_config_with(&current.0, Some(&issued))?;
        current.1 = Some(Arc::new(issued));
        *write(&self.server_tls) = server_tls;
        Ok(())
    }

    /// The TLS handshake with a client, under the configured timeout; interrupted by
    /// shutdown. The error names what went wrong, for the connection's log line.
    pub async fn accept_tls(&self, tcp: TcpStream) -> Result<Stream, &'static str> {
        let handshake = async {
            // A CA validating TLS-ALPN-01 gets the challenge, and nothing more.
            if let Some((_, challenge)) = &self.alpn_challenges {
                if tls::alpn_challenge::offers_acme_alpn(&tcp).await {
                    return match ServerTls::accept(challenge.clone(), tcp).await {
                        Ok(_) => Err(std::io::Error::other("TLS-ALPN-01 validation answered")),
                        Err(error) => Err(error),
                    };
                }
            }
            let config = read(&self.server_tls).clone();
            ServerTls::accept(config, tcp).await
        };
        let accept = tokio::time::timeout(self.limits.tls_handshake_timeout, handshake);
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

    /// What the upstream SMTP server offers before login (SIZE, SMTPUTF8, DSN).
    pub async fn smtp_capabilities(&self) -> Capabilities {
        self.smtp_capabilities
            .get(self.smtp_upstream(), &self.smtp.hostname)
            .await
    }
}

/// The configured upstreams, if any: (IMAP, SMTP).
type Upstreams = (
    Option<Arc<Upstream>>,
    Option<Arc<Upstream>>,
    Option<Arc<Upstream>>,
);

/// The upstreams, sharing one token cache when `[oauth2.*]` providers are configured (a
/// reload starts it afresh: each provider is asked once more).
fn upstreams(config: &Config, metrics: &Arc<Metrics>) -> Result<Upstreams, ServeError> {
    let tokens = if config.oauth2.is_empty() {
        None
    } else {
        Some(crate::oauth2::Tokens::new(&config.oauth2, metrics.clone())?)
    };
    let build = |section: &Option<crate::config::UpstreamConfig>, protocol: &'static str| {
        section
            .as_ref()
            .map(|c| Upstream::new(c, tokens.clone()).map(Arc::new))
            .transpose()
            .map_err(|source| ServeError::UpstreamTls { protocol, source })
    };
    Ok((
        build(&config.upstream.imap, "imap")?,
        build(&config.upstream.smtp, "smtp")?,
        build(&config.upstream.pop3, "pop3")?,
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

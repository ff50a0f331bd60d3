//! The road to the real mail server: TCP connect and TLS under named timeouts, the
//! credentials postern logs in with ([`credentials`]) and the connections kept greeted
//! ahead of logins ([`warm`]). The protocol-specific login lives with each protocol
//! (`imap::upstream`, `smtp::upstream`, `pop3::upstream`).

pub mod credentials;
pub mod probe;
pub mod warm;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;

use crate::config::{UpstreamConfig, UpstreamTls};
use crate::net::stream::Stream;
use crate::tls::stream::ClientTls;
use crate::tls::{self, TlsError};
use credentials::UpstreamLogin;

/// Why the upstream could not be used. Each variant names the phase, so a log line says
/// where it broke; `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {phase} timed out after {after:?}")]
    Timeout {
        phase: &'static str,
        after: Duration,
    },
    #[error("cannot connect to upstream {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("upstream TLS handshake failed: {}", tls::trust::describe(.0))]
    Tls(std::io::Error),
    #[error("upstream I/O error during {phase}: {source}")]
    Io {
        phase: &'static str,
        source: std::io::Error,
    },
    #[error("upstream closed the connection during {0}")]
    Closed(&'static str),
    #[error("upstream answered {phase} with something postern cannot parse")]
    Protocol { phase: &'static str },
    #[error("upstream does not offer {0}")]
    Unsupported(&'static str),
    /// A well-formed reply that is neither success nor a refusal of the user: a 4xx
    /// (try later) or a 5xx to something other than the user's credentials.
    #[error("upstream answered {phase} with {code}")]
    Rejected { phase: &'static str, code: u16 },
    #[error("upstream refused the login for the user")]
    Refused,
    /// The user's mailbox is held by another session upstream (POP3's `[IN-USE]`, RFC
    /// 3206): the client is told so, and may try again when that session ends.
    #[error("upstream says the mailbox is in use by another session")]
    InUse,
    #[error("cannot read the master password file {path}: {source}")]
    MasterPassword {
        path: PathBuf,
        source: std::io::Error,
    },
    /// No token from the identity provider: the upstream is unavailable for now.
    #[error("no OAuth 2.0 token: {0}")]
    Token(Arc<crate::oauth2::TokenError>),
}

impl UpstreamError {
    /// The `reason` label of `postern_upstream_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Tls(_) => "tls",
            UpstreamError::Io { .. } | UpstreamError::Closed(_) => "io",
            UpstreamError::Protocol { .. } | UpstreamError::Unsupported(_) => "protocol",
            UpstreamError::Rejected { .. } => "rejected",
            UpstreamError::Refused => "refused",
            UpstreamError::InUse => "in_use",
            UpstreamError::MasterPassword { .. } => "master_password",
            UpstreamError::Token(_) => "oauth2",
        }
    }
}

/// One configured upstream, ready to connect to.
#[derive(Clone)]
pub struct Upstream {
    pub address: String,
    pub tls: UpstreamTls,
    /// How postern logs in there on a user's behalf.
    pub login: UpstreamLogin,
    server_name: ServerName<'static>,
    client_tls: Arc<ClientConfig>,
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    /// Connections to keep ready ahead of logins, and for how long each.
    pub warm_connections: usize,
    pub warm_max_age: Duration,
}

impl Upstream {
    /// Builds the TLS client configuration once; `tokens` serve the token login modes.
    pub fn new(
        config: &UpstreamConfig,
        tokens: Option<Arc<crate::oauth2::Tokens>>,
    ) -> Result<Self, TlsError> {
        let server_name = ServerName::try_from(config.server_name().to_string())
            .unwrap_or_else(|_| ServerName::try_from("invalid.invalid").expect("valid constant")); // Unwrap: validate() rejects invalid names first
        let client = tls::client_config(config.ca_file.as_deref(), &config.pins())?;
        Ok(Self {
            address: config.address.clone(),
            tls: config.tls,
            login: UpstreamLogin::new(config, tokens),
            server_name,
            client_tls: client,
            connect_timeout: config.connect_timeout,
            reply_timeout: config.reply_timeout,
            warm_connections: config.warm_connections,
            warm_max_age: config.warm_max_age,
        })
    }

    /// TCP connect, then TLS when the upstream is implicit TLS. Returns the stream and how
    /// long it took.
    pub async fn connect(&self) -> Result<(Stream, Duration), UpstreamError> {
        let started = Instant::now();
        let tcp = within("connect", self.connect_timeout, async {
            TcpStream::connect(&self.address)
                .await
                .map_err(|source| UpstreamError::Connect {
                    address: self.address.clone(),
                    source,
                })
        })
        .await?;
        // Logins and small commands must not wait on Nagle.
        let _ = tcp.set_nodelay(true);
        let stream = match self.tls {
            UpstreamTls::Implicit => self.start_tls(tcp).await?,
            UpstreamTls::Starttls | UpstreamTls::None => Stream::Plain(tcp),
        };
        Ok((stream, started.elapsed()))
    }

    /// STARTTLS: the handshake on a connection whose STARTTLS the upstream accepted.
    /// Anything it sent after accepting would be a plaintext injection: it stays behind in
    /// the caller's old buffer.
    pub async fn upgrade(&self, stream: Stream) -> Result<Stream, UpstreamError> {
        let tcp = stream
            .into_plain()
            .map_err(|_| UpstreamError::Protocol { phase: "STARTTLS" })?;
        self.start_tls(tcp).await
    }

    /// The TLS handshake on an established TCP connection (implicit TLS or after STARTTLS).
    pub async fn start_tls(&self, tcp: TcpStream) -> Result<Stream, UpstreamError> {
        let tls = within("TLS handshake", self.reply_timeout, async {
            ClientTls::connect(self.client_tls.clone(), self.server_name.clone(), tcp)
                .await
                .map_err(UpstreamError::Tls)
        })
        .await?;
        tracing::debug!(resumed = tls.resumed(), "upstream TLS handshake");
        Ok(Stream::TlsClient(Box::new(tls)))
    }
}

/// Runs `future` under a deadline whose expiry names the phase.
pub async fn within<T>(
    phase: &'static str,
    after: Duration,
    future: impl Future<Output = Result<T, UpstreamError>>,
) -> Result<T, UpstreamError> {
    tokio::time::timeout(after, future)
        .await
        .map_err(|_| UpstreamError::Timeout { phase, after })?
}

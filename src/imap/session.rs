//! IMAP on the session driver: the pre-auth machine ([`super::preauth`]) as a
//! [`Machine`], the upstream login starting from a warm connection, and the relay once the
//! upstream accepted.

use std::net::SocketAddr;
use std::sync::Arc;

use super::preauth::{Action, PreAuth, PreAuthOptions};
use super::upstream::{self as imap_upstream, LoggedIn, LoginRequest};
use crate::auth::Grant;
use crate::gateway::Gateway;
use crate::protocol::Protocol;
use crate::session::login::{self, UpstreamSession};
use crate::session::{AfterLogin, Machine, ProtocolSession, Relaying, Replies, Step};
use crate::upstream::UpstreamError;

/// Invalid commands tolerated before login.
const MAX_BAD_COMMANDS: u32 = 10;

impl Machine for PreAuth {
    type Step = std::convert::Infallible;

    fn greeting(&self) -> Vec<u8> {
        PreAuth::greeting(self)
    }

    fn feed(&mut self, bytes: &[u8]) {
        PreAuth::feed(self, bytes)
    }

    fn next_step(&mut self) -> Option<Step<Self::Step>> {
        Some(match self.next_action()? {
            Action::Send(bytes) => Step::Send(bytes),
            Action::StartTls => Step::StartTls,
            Action::Close => Step::Close,
            // The tag stays with the machine: `into_authenticated` gives it back.
            Action::Login { credentials, .. } => Step::LogIn(credentials),
        })
    }

    fn tls_established(&mut self) {
        PreAuth::tls_established(self)
    }

    fn login_refused(&mut self) {
        PreAuth::login_refused(self)
    }

    fn login_unavailable(&mut self) {
        PreAuth::login_unavailable(self)
    }

    fn login_limited(&mut self) {
        PreAuth::login_limited(self)
    }

    fn client_id(&self) -> Option<String> {
        describe_client(PreAuth::client_id(self))
    }
}

/// An IMAP connection: nothing of its own beyond the gateway and the client's address.
pub struct ImapSession {
    gateway: Arc<Gateway>,
    client: SocketAddr,
}

impl ProtocolSession for ImapSession {
    const PROTOCOL: Protocol = Protocol::Imap;
    const REPLIES: Replies = Replies {
        too_many_connections: b"* BYE Too many connections from your address\r\n",
        idle: b"* BYE Autologout; idle for too long\r\n",
        shutting_down: b"* BYE Server shutting down, reconnect shortly\r\n",
        revoked: b"* BYE Credential revoked\r\n",
        expired: b"* BYE App password expired\r\n",
    };
    const READ_BUFFER: usize = 4096;
    type Machine = PreAuth;
    type Upstream = LoggedIn;

    fn new(gateway: &Arc<Gateway>, client: SocketAddr) -> Self {
        Self {
            gateway: gateway.clone(),
            client,
        }
    }

    async fn machine(&self, tls_active: bool, starttls_available: bool) -> PreAuth {
        let limits = &self.gateway.limits;
        PreAuth::new(PreAuthOptions {
            tls_active,
            starttls_available,
            max_line: limits.max_line,
            max_failures: limits.max_failed_logins,
            max_bad_commands: MAX_BAD_COMMANDS,
        })
    }

    async fn log_in_upstream(
        &self,
        grant: &Grant,
        machine: &PreAuth,
    ) -> Result<UpstreamSession<LoggedIn>, UpstreamError> {
        let request = LoginRequest {
            upstream_user: &grant.upstream_user,
            client: self.client,
            client_id: machine.client_id().unwrap_or(&[]),
        };
        upstream_login(&self.gateway, &request).await
    }

    fn logged_in(
        &mut self,
        machine: PreAuth,
        upstream: LoggedIn,
        _grant: &Arc<Grant>,
        output: &mut Vec<u8>,
    ) -> AfterLogin<PreAuth> {
        let (tag, pipelined) = machine.into_authenticated();
        let LoggedIn {
            stream,
            ok_text,
            pending,
        } = upstream;
        output.extend_from_slice(format!("{tag} OK {ok_text}\r\n").as_bytes());
        output.extend_from_slice(&pending);
        AfterLogin::Relay(Relaying {
            upstream: stream,
            to_client: Vec::new(),
            to_upstream: pipelined,
        })
    }
}

/// Logs in upstream, from a warm connection when one is ready.
async fn upstream_login(
    gateway: &Gateway,
    request: &LoginRequest<'_>,
) -> Result<UpstreamSession<LoggedIn>, UpstreamError> {
    let Some(upstream) = gateway.imap_upstream() else {
        return Err(UpstreamError::Unsupported(
            "IMAP (no [upstream.imap] configured)",
        ));
    };
    login::warm_or_new(
        gateway.imap_warm.take(&upstream),
        |warm| imap_upstream::log_in(warm, &upstream, request),
        || imap_upstream::login(&upstream, request),
    )
    .await
}

/// The client's ID fields as one line for the audit trail: `name=Mac OS X Mail; version=16.0`.
fn describe_client(fields: Option<&[(String, Option<String>)]>) -> Option<String> {
    let fields = fields?;
    let text: Vec<String> = fields
        .iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| format!("{key}={v}")))
        .collect();
    (!text.is_empty()).then(|| text.join("; ").chars().take(512).collect())
}

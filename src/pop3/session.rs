//! POP3 on the session driver: the pre-auth machine ([`super::preauth`]), the upstream
//! login ([`super::upstream`]), and the relay once the upstream accepted.

use std::net::SocketAddr;
use std::sync::Arc;

use super::preauth::{PreAuth, PreAuthOptions};
use super::upstream::{self as pop3_upstream, LoggedIn, LoginRequest};
use crate::auth::Grant;
use crate::gateway::Gateway;
use crate::protocol::Protocol;
use crate::session::login::{self, UpstreamSession};
use crate::session::{AfterLogin, ProtocolSession, Relaying, Replies};
use crate::upstream::UpstreamError;

/// Invalid commands tolerated before login.
const MAX_BAD_COMMANDS: u32 = 10;

/// A POP3 connection: the gateway and the client's address.
pub struct Pop3Session {
    gateway: Arc<Gateway>,
    client: SocketAddr,
}

impl ProtocolSession for Pop3Session {
    const PROTOCOL: Protocol = Protocol::Pop3;
    const REPLIES: Replies = Replies {
        too_many_connections: b"-ERR [SYS/TEMP] Too many connections from your address\r\n",
        idle: b"-ERR Autologout; idle for too long\r\n",
        shutting_down: b"-ERR [SYS/TEMP] Server shutting down, reconnect shortly\r\n",
        revoked: b"-ERR [AUTH] Credential revoked\r\n",
        expired: b"-ERR [AUTH] App password expired\r\n",
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
        _machine: &PreAuth,
    ) -> Result<UpstreamSession<LoggedIn>, UpstreamError> {
        let Some(upstream) = self.gateway.pop3_upstream() else {
            return Err(UpstreamError::Unsupported(
                "POP3 (no [upstream.pop3] configured)",
            ));
        };
        let request = LoginRequest {
            upstream_user: &grant.upstream_user,
            client: self.client,
        };
        login::warm_or_new(
            self.gateway.pop3_warm.take(&upstream),
            |warm| pop3_upstream::log_in(warm, &upstream, &request),
            || pop3_upstream::login(&upstream, &request),
        )
        .await
    }

    fn logged_in(
        &mut self,
        machine: PreAuth,
        upstream: LoggedIn,
        _grant: &Arc<Grant>,
        output: &mut Vec<u8>,
    ) -> AfterLogin<PreAuth> {
        let LoggedIn {
            stream,
            ok_line,
            pending,
        } = upstream;
        output.extend_from_slice(&ok_line);
        output.extend_from_slice(&pending);
        AfterLogin::Relay(Relaying {
            upstream: stream,
            to_client: Vec::new(),
            to_upstream: machine.into_authenticated(),
        })
    }
}

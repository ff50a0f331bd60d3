//! A client session, whatever its protocol. A protocol brings a sans-I/O pre-auth machine
//! ([`Machine`]), an upstream login and what happens after it ([`ProtocolSession`]); the
//! driver here ([`serve`]) does the rest for every protocol alike: the TLS handshake, the
//! per-address cap, reading and writing the client's socket, STARTTLS, the login step
//! ([`login`]), the idle and login deadlines, the goodbye on shutdown, and the end of the
//! session when its credential is revoked or expires ([`live`]); then the byte relay
//! ([`relay`]) for protocols that only relay once logged in.

pub mod live;
pub mod login;
pub mod relay;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

pub use crate::auth::ClientLogin;
use crate::auth::{Grant, LoginAttempt};
use crate::config::{ListenerConfig, ListenerTls};
use crate::gateway::Gateway;
use crate::net::caps::Admitted;
use crate::net::stream::Stream;
use crate::protocol::Protocol;
use crate::upstream::UpstreamError;
use live::{Authenticated, CredentialEnd};
use login::{LoginOutcome, UpstreamSession};
use relay::{RelayCounters, RelayEnd};
use std::net::IpAddr;

/// What a pre-auth machine asks the driver to do next.
#[derive(Debug)]
pub enum Step<P> {
    /// Write these bytes to the client.
    Send(Vec<u8>),
    /// Flush what was sent, run the TLS handshake, then call [`Machine::tls_established`].
    StartTls,
    /// Flush what was sent and close the connection.
    Close,
    /// Verify these credentials and log in upstream; then call [`Machine::login_refused`],
    /// [`Machine::login_unavailable`] or [`ProtocolSession::logged_in`].
    LogIn(ClientLogin),
    /// Something only this protocol does (SMTP's transactions), for
    /// [`ProtocolSession::handle`].
    Protocol(P),
}

/// A protocol's sans-I/O conversation with the client, as the driver sees it.
pub trait Machine: Send {
    /// The steps only this protocol knows.
    type Step: Send;

    /// The first bytes the client receives.
    fn greeting(&self) -> Vec<u8>;
    /// Bytes read from the client.
    fn feed(&mut self, bytes: &[u8]);
    /// The next step, or `None` until more bytes or a verdict arrive.
    fn next_step(&mut self) -> Option<Step<Self::Step>>;
    /// The handshake of a [`Step::StartTls`] succeeded.
    fn tls_established(&mut self);
    /// The credentials of the pending login were refused, for whatever reason of the
    /// client's; the machine answers with its one fixed refusal.
    fn login_refused(&mut self);
    /// The pending login could not be decided or completed now (penalty, store or
    /// upstream down); the machine answers with its temporary failure.
    fn login_unavailable(&mut self);
    /// The login is right but its user holds as many sessions from this address as
    /// allowed; by default the temporary failure.
    fn login_limited(&mut self) {
        self.login_unavailable()
    }
    /// The login is right but the upstream says another session holds the mailbox; by
    /// default the temporary failure.
    fn login_in_use(&mut self) {
        self.login_unavailable()
    }
    /// Whether a goodbye may be said now without cutting a command or message in half.
    fn between_commands(&self) -> bool {
        true
    }
    /// The client's description of itself for the audit trail (IMAP ID, SMTP EHLO).
    fn client_id(&self) -> Option<String>;
}

/// The fixed replies the driver sends for a protocol.
pub struct Replies {
    /// The per-address cap is full.
    pub too_many_connections: &'static [u8],
    /// Silent for too long before login (or, conversing after login, for the protocol's
    /// idle timeout).
    pub idle: &'static [u8],
    /// Draining for shutdown.
    pub shutting_down: &'static [u8],
    /// The session's app password was revoked or its user disabled or removed, while the
    /// machine converses after login (relayed sessions are just closed).
    pub revoked: &'static [u8],
    /// The session's app password expired, ditto.
    pub expired: &'static [u8],
}

/// What happens once the upstream accepted the login.
pub enum AfterLogin<M> {
    /// Relay bytes both ways from now on (IMAP, POP3).
    Relay(Relaying),
    /// The machine keeps conversing with the client (SMTP transactions).
    Converse(M),
}

/// A logged-in connection handed to the byte relay.
pub struct Relaying {
    /// The upstream connection, logged in.
    pub upstream: crate::net::stream::Stream,
    /// Bytes the client must receive first (the login's reply and what followed it).
    pub to_client: Vec<u8>,
    /// What the client pipelined after its login, for the upstream.
    pub to_upstream: Vec<u8>,
}

/// What a protocol plugs into the driver: its machine, its upstream login and what a
/// logged-in session does. One value per connection.
pub trait ProtocolSession: Sized + Send {
    /// Labels, scopes and logs.
    const PROTOCOL: Protocol;
    /// Replies the driver sends for this protocol.
    const REPLIES: Replies;
    /// Bytes read from the client at a time.
    const READ_BUFFER: usize;
    type Machine: Machine;
    /// A connection logged in upstream.
    type Upstream: Send;

    /// The state for one connection from `client`.
    fn new(gateway: &Arc<Gateway>, client: SocketAddr) -> Self;

    /// The machine for this connection; `tls_active` when it is encrypted already,
    /// `starttls_available` when it may upgrade.
    fn machine(
        &self,
        tls_active: bool,
        starttls_available: bool,
    ) -> impl Future<Output = Self::Machine> + Send;

    /// Logs in upstream as `grant`'s user, telling the upstream what the machine learned
    /// of the client.
    fn log_in_upstream(
        &self,
        grant: &Grant,
        machine: &Self::Machine,
    ) -> impl Future<Output = Result<UpstreamSession<Self::Upstream>, UpstreamError>> + Send;

    /// The upstream accepted: answer the client's login (into `output`) and say how the
    /// session goes on.
    fn logged_in(
        &mut self,
        machine: Self::Machine,
        upstream: Self::Upstream,
        grant: &Arc<Grant>,
        output: &mut Vec<u8>,
    ) -> AfterLogin<Self::Machine>;

    /// A protocol step of the machine's.
    fn handle(
        &mut self,
        step: <Self::Machine as Machine>::Step,
        machine: &mut Self::Machine,
    ) -> impl Future<Output = ()> + Send {
        let _ = (step, machine);
        async {}
    }

    /// Before the client is read again: write what was queued upstream.
    fn before_read(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The idle timeout of a session that converses after login.
    fn idle_timeout(&self) -> Duration {
        Duration::MAX
    }

    /// The connection is over: say goodbye upstream.
    fn finish(self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// How a connection ended, for the one log line each connection gets.
#[derive(Debug)]
enum Outcome {
    /// The client logged out, quit or went away.
    ClientLeft,
    /// Closed by postern: limits, timeouts, protocol errors, shutdown.
    Dropped(&'static str),
    /// The credential stopped being valid.
    Ended(CredentialEnd),
    /// Relayed until this.
    Relayed(RelayEnd),
    /// The client's socket failed.
    ClientError(std::io::Error),
}

/// Serves one client connection with protocol `P` to completion; never returns an error,
/// logs the outcome.
pub async fn serve<P: ProtocolSession>(
    gateway: Arc<Gateway>,
    listener: Arc<ListenerConfig>,
    tcp: TcpStream,
    client: SocketAddr,
) {
    let started = Instant::now();
    // Replies are small and answer a waiting client: send them now, not after an ACK.
    let _ = tcp.set_nodelay(true);
    let span = tracing::info_span!("session", protocol = P::PROTOCOL.as_str(), listener = %listener.name, client = %client);
    // The conversation (TLS, parsing, verification, the upstream login) is boxed so its
    // memory is freed before the relay, which is what an idle session keeps for hours.
    let (outcome, session) = match Box::pin(converse::<P>(&gateway, &listener, tcp, client))
        .instrument(span.clone())
        .await
    {
        Conversed::Done(outcome, session) => (outcome, session),
        Conversed::Relay(relaying) => {
            let outcome = relay_session(&gateway, relaying, P::PROTOCOL, &P::REPLIES)
                .instrument(span.clone())
                .await;
            (outcome.0, Some(outcome.1))
        }
    };
    let _enter = span.enter();
    let duration_ms = started.elapsed().as_millis() as u64;
    let login = session.as_ref().map(|s| s.grant.login.as_str());
    let app_password_id = session.as_ref().map(|s| s.grant.app_password_id);
    match outcome {
        Outcome::ClientError(error) => {
            tracing::debug!(duration_ms, %error, login = ?login, "client connection failed")
        }
        Outcome::ClientLeft => {
            tracing::info!(duration_ms, login = ?login, app_password_id, "connection closed")
        }
        Outcome::Dropped(reason) => {
            tracing::info!(duration_ms, login = ?login, app_password_id, reason, "connection dropped")
        }
        Outcome::Ended(end) => tracing::info!(
            duration_ms,
            login = ?login,
            app_password_id,
            reason = end.as_str(),
            "session closed: the credential is no longer valid"
        ),
        Outcome::Relayed(end) => {
            tracing::info!(duration_ms, login = ?login, app_password_id, end = ?end, "session ended")
        }
    }
}

/// How the conversation ended: the connection is done, or logged in and ready to relay.
enum Conversed {
    Done(Outcome, Option<Authenticated>),
    Relay(Box<RelaySession>),
}

/// A connection to relay, with what it holds until it ends.
struct RelaySession {
    client: Stream,
    relaying: Relaying,
    session: Authenticated,
    /// The client's place under the per-address cap.
    _admitted: Admitted<(Arc<str>, IpAddr)>,
}

impl RelaySession {
    /// Its fields, with the box freed now: moving out of a box in place would keep the
    /// allocation until the end of the scope, which is the end of the session.
    fn unbox(relay: Box<Self>) -> Self {
        *relay
    }
}

/// The conversation with the client, from the TLS handshake to the end or to the relay.
async fn converse<P: ProtocolSession>(
    gateway: &Arc<Gateway>,
    listener: &ListenerConfig,
    tcp: TcpStream,
    client: SocketAddr,
) -> Conversed {
    let mut protocol = P::new(gateway, client);
    let mut session = None;
    let outcome = converse_with(gateway, listener, tcp, client, &mut protocol, &mut session).await;
    protocol.finish().await;
    match outcome {
        Ok(relay) => Conversed::Relay(relay),
        Err(outcome) => Conversed::Done(outcome, session),
    }
}

/// The driver's loop: `Ok` hands the connection to the relay, `Err` is how it ended.
async fn converse_with<P: ProtocolSession>(
    gateway: &Gateway,
    listener: &ListenerConfig,
    tcp: TcpStream,
    client: SocketAddr,
    protocol: &mut P,
    session: &mut Option<Authenticated>,
) -> Result<Box<RelaySession>, Outcome> {
    let limits = &gateway.limits;
    let replies = &P::REPLIES;
    let login_deadline = Instant::now() + limits.login_deadline;
    let mut stream = match listener.tls {
        ListenerTls::Implicit => gateway.accept_tls(tcp).await.map_err(Outcome::Dropped)?,
        ListenerTls::Starttls => Stream::Plain(tcp),
    };
    let listener_name: Arc<str> = listener.name.as_str().into();
    let Some(admitted) = gateway
        .connection_caps
        .admit_connection(&listener_name, client.ip())
    else {
        let _ = stream.write_all(replies.too_many_connections).await;
        let _ = stream.shutdown().await;
        return Err(Outcome::Dropped("too many connections from the address"));
    };
    let mut machine = protocol
        .machine(stream.is_tls(), listener.tls == ListenerTls::Starttls)
        .await;
    let mut output = machine.greeting();
    let mut buffer = vec![0u8; P::READ_BUFFER];

    loop {
        while let Some(step) = machine.next_step() {
            match step {
                Step::Send(bytes) => output.extend_from_slice(&bytes),
                Step::Close => {
                    let _ = stream.send_queued(&mut output).await;
                    let _ = stream.shutdown().await;
                    return Err(Outcome::ClientLeft);
                }
                Step::StartTls => {
                    stream
                        .send_queued(&mut output)
                        .await
                        .map_err(Outcome::ClientError)?;
                    let Ok(tcp) = stream.into_plain() else {
                        return Err(Outcome::Dropped("STARTTLS inside TLS"));
                    };
                    stream = gateway.accept_tls(tcp).await.map_err(Outcome::Dropped)?;
                    machine.tls_established();
                }
                Step::LogIn(credentials) => {
                    stream
                        .send_queued(&mut output)
                        .await
                        .map_err(Outcome::ClientError)?;
                    let client_id = machine.client_id();
                    let attempt = LoginAttempt {
                        protocol: P::PROTOCOL,
                        mechanism: credentials.mechanism,
                        login: &credentials.login,
                        password: &credentials.password,
                        client,
                        client_id: client_id.as_deref(),
                        started: Instant::now(),
                    };
                    let (this, machine_now) = (&*protocol, &machine);
                    let outcome = login::log_in(gateway, &attempt, move |grant| async move {
                        this.log_in_upstream(&grant, machine_now).await
                    })
                    .await;
                    // The password is not needed any more, however long the session lasts.
                    drop(credentials);
                    let (grant, upstream, slot) = match outcome {
                        LoginOutcome::LoggedIn {
                            grant,
                            upstream,
                            slot,
                        } => (grant, upstream, slot),
                        LoginOutcome::Refused => {
                            machine.login_refused();
                            continue;
                        }
                        LoginOutcome::Unavailable => {
                            machine.login_unavailable();
                            continue;
                        }
                        LoginOutcome::TooManySessions => {
                            machine.login_limited();
                            continue;
                        }
                        LoginOutcome::MailboxInUse => {
                            machine.login_in_use();
                            continue;
                        }
                    };
                    let authenticated = Authenticated::new(
                        &gateway.sessions,
                        &gateway.metrics,
                        grant.clone(),
                        P::PROTOCOL,
                        slot,
                    );
                    match protocol.logged_in(machine, upstream, &grant, &mut output) {
                        AfterLogin::Relay(relaying) => {
                            let mut relaying = relaying;
                            let mut to_client = std::mem::take(&mut output);
                            to_client.append(&mut relaying.to_client);
                            relaying.to_client = to_client;
                            // The pre-auth read buffer goes now, not when the session ends.
                            drop(buffer);
                            return Ok(Box::new(RelaySession {
                                client: stream,
                                relaying,
                                session: authenticated,
                                _admitted: admitted,
                            }));
                        }
                        AfterLogin::Converse(conversing) => {
                            machine = conversing;
                            *session = Some(authenticated);
                        }
                    }
                }
                Step::Protocol(step) => protocol.handle(step, &mut machine).await,
            }
        }
        protocol.before_read().await;
        stream
            .send_queued(&mut output)
            .await
            .map_err(Outcome::ClientError)?;

        let idle = match session {
            Some(_) => protocol.idle_timeout(),
            None => limits
                .preauth_idle_timeout
                .min(login_deadline.saturating_duration_since(Instant::now())),
        };
        // Draining: goodbye between commands; a message in flight is finished first,
        // unless the grace runs out.
        let goodbye_now = machine.between_commands();
        let read = tokio::select! {
            () = gateway.drain.cancelled(), if goodbye_now => {
                let _ = stream.write_all(replies.shutting_down).await;
                let _ = stream.shutdown().await;
                return Err(Outcome::Dropped("shutdown"));
            }
            () = gateway.shutdown.cancelled() => {
                let _ = stream.write_all(replies.shutting_down).await;
                return Err(Outcome::Dropped("shutdown grace over"));
            }
            end = credential_ended(session.as_ref()) => {
                let reply = match end {
                    CredentialEnd::Revoked => replies.revoked,
                    CredentialEnd::Expired => replies.expired,
                };
                let _ = stream.write_all(reply).await;
                let _ = stream.shutdown().await;
                return Err(Outcome::Ended(end));
            }
            read = tokio::time::timeout(idle, stream.read(&mut buffer)) => read,
        };
        match read {
            Err(_) => {
                let _ = stream.write_all(replies.idle).await;
                let _ = stream.shutdown().await;
                return Err(Outcome::Dropped("idle timeout"));
            }
            Ok(Ok(0)) => return Err(Outcome::ClientLeft),
            Ok(Ok(n)) => machine.feed(&buffer[..n]),
            Ok(Err(error)) => return Err(Outcome::ClientError(error)),
        }
    }
}

/// Completes when a logged-in session's credential stops being valid; never before login.
async fn credential_ended(session: Option<&Authenticated>) -> CredentialEnd {
    match session {
        Some(session) => session.ended().await,
        None => std::future::pending().await,
    }
}

/// Relays until the client or upstream leaves, the session idles out, its credential is
/// revoked or expires, or the gateway shuts down.
async fn relay_session(
    gateway: &Gateway,
    relay: Box<RelaySession>,
    protocol: Protocol,
    replies: &Replies,
) -> (Outcome, Authenticated) {
    let RelaySession {
        mut client,
        relaying,
        session,
        _admitted,
    } = RelaySession::unbox(relay);
    let Relaying {
        mut upstream,
        mut to_client,
        to_upstream,
    } = relaying;
    if let Err(error) = client.send_queued(&mut to_client).await {
        return (Outcome::ClientError(error), session);
    }
    // Everything but the two streams goes before the relay starts: a session may sit in
    // IDLE for days, and a field left behind by a partial move would live as long.
    drop(to_client);
    if !to_upstream.is_empty() {
        if let Err(error) = upstream.write_all(&to_upstream).await {
            return (Outcome::Relayed(RelayEnd::Failed(error)), session);
        }
    }
    drop(to_upstream);
    let ended = std::sync::Mutex::new(None);
    let end = {
        // Pinned here and passed by reference, so the relay's future does not hold a copy.
        let stop = std::pin::pin!(async {
            tokio::select! {
                end = session.ended() => {
                    *ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(end);
                }
                () = gateway.shutdown.cancelled() => {}
            }
        });
        let goodbye = relay::Goodbye {
            when: std::pin::pin!(gateway.drain.cancelled()),
            message: replies.shutting_down,
        };
        let label = protocol.as_str();
        let counters = RelayCounters {
            to_upstream: gateway
                .metrics
                .relay_bytes
                .with_label_values(&[label, "to_upstream"]),
            to_client: gateway
                .metrics
                .relay_bytes
                .with_label_values(&[label, "to_client"]),
        };
        relay::relay(
            &mut client,
            &mut upstream,
            gateway.limits.authenticated_idle_timeout,
            counters,
            stop,
            goodbye,
        )
        .await
    };
    let outcome = match ended.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(end) => Outcome::Ended(end),
        None => Outcome::Relayed(end),
    };
    (outcome, session)
}

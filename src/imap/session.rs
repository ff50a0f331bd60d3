//! One IMAP client connection, from accept to close: TLS, the pre-auth state machine
//! driven over the socket, verification, the upstream login, then the byte relay. This is
//! the only place in the IMAP flow that touches the client's socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

use super::preauth::{Action, PreAuth, PreAuthOptions};
use super::upstream::{self as imap_upstream, LoggedIn, LoginRequest};
use crate::auth::{Grant, LoginAttempt, Verdict};
use crate::config::{ListenerConfig, ListenerTls, Protocol};
use crate::connections::Admitted;
use crate::relay::{self, RelayCounters, RelayEnd};
use crate::server::Gateway;
use crate::stream::Stream;
use crate::upstream::UpstreamError;

const BYE_SHUTDOWN: &[u8] = b"* BYE Server shutting down, reconnect shortly\r\n";
const TOO_MANY_CONNECTIONS: &[u8] = b"* BYE Too many connections from your address\r\n";

/// Invalid commands tolerated before login.
const MAX_BAD_COMMANDS: u32 = 10;

/// How a connection ended, for the one log line each connection gets.
#[derive(Debug)]
enum Outcome {
    /// The client logged out or went away before logging in.
    ClientLeft,
    /// Closed by postern before login: limits, timeouts, protocol errors.
    Dropped(&'static str),
    /// Logged in and relayed until `end`.
    Relayed {
        login: String,
        app_password_id: i64,
        end: RelayEnd,
    },
    /// The client's socket failed.
    ClientError(std::io::Error),
}

/// Serves one client connection to completion; never returns an error, logs the outcome.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: Arc<ListenerConfig>,
    tcp: TcpStream,
    client: SocketAddr,
) {
    let started = Instant::now();
    // Replies are small and answer a waiting client: send them now, not after an ACK.
    let _ = tcp.set_nodelay(true);
    let span = tracing::info_span!("imap", listener = %listener.name, client = %client);
    // The pre-auth phase (TLS, parsing, verification, the upstream login) is boxed so its
    // memory is freed before the relay, which is what an idle session keeps for hours.
    let outcome = match Box::pin(pre_auth(&gateway, &listener, tcp, client))
        .instrument(span.clone())
        .await
    {
        PreAuthEnd::Done(outcome) => outcome,
        PreAuthEnd::Relay(session) => {
            relay_session(&gateway, session)
                .instrument(span.clone())
                .await
        }
    };
    let _enter = span.enter();
    let duration_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Outcome::ClientLeft => tracing::info!(duration_ms, "connection closed before login"),
        Outcome::Dropped(why) => {
            tracing::info!(duration_ms, reason = why, "connection dropped before login")
        }
        Outcome::ClientError(error) => {
            tracing::debug!(duration_ms, %error, "client connection failed")
        }
        Outcome::Relayed {
            login,
            app_password_id,
            end,
        } => tracing::info!(
            duration_ms,
            login = ?login,
            app_password_id,
            end = ?end,
            "session ended"
        ),
    }
}

/// How the pre-auth phase ended: the connection is done, or logged in and ready to relay.
enum PreAuthEnd {
    Done(Outcome),
    Relay(LoggedInSession),
}

impl From<Outcome> for PreAuthEnd {
    fn from(outcome: Outcome) -> Self {
        PreAuthEnd::Done(outcome)
    }
}

/// A client logged in upstream, with what the relay starts from.
struct LoggedInSession {
    client: Stream,
    /// The tagged OK and whatever the upstream sent after it, not yet sent to the client.
    to_client: Vec<u8>,
    /// What the client pipelined after its login command, not yet sent upstream.
    pipelined: Vec<u8>,
    logged_in: LoggedIn,
    grant: Arc<Grant>,
    /// The client's place under the per-address connection cap, held until the end.
    _admitted: Admitted,
}

async fn pre_auth(
    gateway: &Gateway,
    listener: &ListenerConfig,
    tcp: TcpStream,
    client: SocketAddr,
) -> PreAuthEnd {
    let limits = &gateway.limits;
    let deadline = Instant::now() + limits.login_deadline;
    let mut stream = match listener.tls {
        ListenerTls::Implicit => match gateway.accept_tls(tcp).await {
            Ok(stream) => stream,
            Err(why) => return Outcome::Dropped(why).into(),
        },
        ListenerTls::Starttls => Stream::Plain(tcp),
    };
    let listener_name: Arc<str> = listener.name.as_str().into();
    let Some(admitted) = gateway.connection_caps.admit(&listener_name, client.ip()) else {
        let _ = stream.write_all(TOO_MANY_CONNECTIONS).await;
        let _ = stream.shutdown().await;
        return Outcome::Dropped("too many connections from the address").into();
    };
    let mut machine = PreAuth::new(PreAuthOptions {
        tls_active: stream.is_tls(),
        starttls_available: listener.tls == ListenerTls::Starttls,
        max_line: limits.max_line,
        max_failures: limits.max_failed_logins,
        max_bad_commands: MAX_BAD_COMMANDS,
    });
    let mut output = machine.greeting();
    let mut buffer = vec![0u8; 4096];

    loop {
        while let Some(action) = machine.next_action() {
            match action {
                Action::Send(bytes) => output.extend_from_slice(&bytes),
                Action::Close => {
                    let _ = stream.send_queued(&mut output).await;
                    let _ = stream.shutdown().await;
                    return Outcome::ClientLeft.into();
                }
                Action::StartTls => {
                    if let Err(error) = stream.send_queued(&mut output).await {
                        return Outcome::ClientError(error).into();
                    }
                    let Ok(tcp) = stream.into_plain() else {
                        return Outcome::Dropped("STARTTLS inside TLS").into();
                    };
                    stream = match gateway.accept_tls(tcp).await {
                        Ok(stream) => stream,
                        Err(why) => return Outcome::Dropped(why).into(),
                    };
                    machine.tls_established();
                }
                Action::Login {
                    tag,
                    mechanism,
                    login,
                    password,
                } => {
                    if let Err(error) = stream.send_queued(&mut output).await {
                        return Outcome::ClientError(error).into();
                    }
                    let client_id = describe_client(machine.client_id());
                    let attempt = LoginAttempt {
                        protocol: Protocol::Imap,
                        mechanism: mechanism.as_str(),
                        login: &login,
                        password: &password,
                        client,
                        client_id: client_id.as_deref(),
                        started: Instant::now(),
                    };
                    let verdict = gateway.verifier.verify(&attempt).await;
                    let grant = match verdict {
                        Ok(Verdict::Granted(grant)) => grant,
                        Ok(Verdict::Refused(refusal, app_password_id)) => {
                            gateway
                                .verifier
                                .record(&attempt, refusal.as_str(), app_password_id);
                            machine.login_refused();
                            continue;
                        }
                        Ok(Verdict::RateLimited) => {
                            gateway.verifier.record(&attempt, "rate_limited", None);
                            machine.login_unavailable();
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "login could not be verified");
                            gateway.verifier.record(&attempt, "temporary_failure", None);
                            machine.login_unavailable();
                            continue;
                        }
                    };
                    let request = LoginRequest {
                        upstream_user: &grant.upstream_user,
                        client,
                        client_id: machine.client_id().unwrap_or(&[]),
                    };
                    match upstream_login(gateway, &request).await {
                        Ok(logged_in) => {
                            gateway
                                .verifier
                                .record(&attempt, "ok", Some(grant.app_password_id));
                            let (tag_, pipelined) = machine.into_authenticated();
                            debug_assert_eq!(tag_, tag);
                            let reply = format!("{tag} OK {}\r\n", logged_in.ok_text);
                            output.extend_from_slice(reply.as_bytes());
                            output.extend_from_slice(&logged_in.pending);
                            // A session may relay for days: the password and the
                            // pre-auth read buffer go now, not when it ends.
                            drop(password);
                            drop(buffer);
                            return PreAuthEnd::Relay(LoggedInSession {
                                client: stream,
                                to_client: output,
                                pipelined,
                                logged_in,
                                grant,
                                _admitted: admitted,
                            });
                        }
                        Err(error) => {
                            let result = match error {
                                UpstreamError::Refused => "upstream_refused",
                                _ => "upstream_unavailable",
                            };
                            tracing::error!(%error, login = ?login, "upstream login failed");
                            gateway
                                .verifier
                                .record(&attempt, result, Some(grant.app_password_id));
                            machine.login_unavailable();
                        }
                    }
                }
            }
        }

        if let Err(error) = stream.send_queued(&mut output).await {
            return Outcome::ClientError(error).into();
        }
        let wait = limits
            .preauth_idle_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let read = tokio::select! {
            () = gateway.drain.cancelled() => {
                let _ = stream.write_all(BYE_SHUTDOWN).await;
                return Outcome::Dropped("shutdown").into();
            }
            read = tokio::time::timeout(wait, stream.read(&mut buffer)) => read,
        };
        match read {
            Err(_) => {
                let _ = stream
                    .write_all(b"* BYE Autologout; idle for too long\r\n")
                    .await;
                let _ = stream.shutdown().await;
                return Outcome::Dropped("pre-auth timeout").into();
            }
            Ok(Ok(0)) => return Outcome::ClientLeft.into(),
            Ok(Ok(n)) => machine.feed(&buffer[..n]),
            Ok(Err(error)) => return Outcome::ClientError(error).into(),
        }
    }
}

async fn upstream_login(
    gateway: &Gateway,
    request: &LoginRequest<'_>,
) -> Result<LoggedIn, UpstreamError> {
    let Some(upstream) = gateway.imap_upstream() else {
        return Err(UpstreamError::Unsupported(
            "IMAP (no [upstream.imap] configured)",
        ));
    };
    let result = match gateway.imap_warm.take(&upstream) {
        Some(warm) => {
            let connect_time = warm.connect_time;
            match imap_upstream::log_in(warm, &upstream, request).await {
                // The upstream dropped the warm connection just before it was taken.
                Err(UpstreamError::Io { .. } | UpstreamError::Closed(_)) => {
                    tracing::debug!("warm upstream connection was gone; connecting anew");
                    imap_upstream::login(&upstream, request)
                        .await
                        .map(|(logged_in, connect_time)| (logged_in, connect_time, "new"))
                }
                result => result.map(|logged_in| (logged_in, connect_time, "warm")),
            }
        }
        None => imap_upstream::login(&upstream, request)
            .await
            .map(|(logged_in, connect_time)| (logged_in, connect_time, "new")),
    };
    match result {
        Ok((logged_in, connect_time, connection)) => {
            gateway
                .metrics
                .upstream_logins
                .with_label_values(&["imap", connection])
                .inc();
            gateway
                .metrics
                .upstream_connect_seconds
                .with_label_values(&["imap"])
                .observe(connect_time.as_secs_f64());
            Ok(logged_in)
        }
        Err(error) => {
            gateway
                .metrics
                .upstream_errors
                .with_label_values(&["imap", error.reason()])
                .inc();
            Err(error)
        }
    }
}

/// Relays until the client or upstream leaves, the session idles out, its credential is
/// revoked or expires, or the gateway shuts down.
async fn relay_session(gateway: &Gateway, session: LoggedInSession) -> Outcome {
    let LoggedInSession {
        mut client,
        mut to_client,
        pipelined,
        logged_in,
        grant,
        _admitted,
    } = session;
    let outcome = |end| Outcome::Relayed {
        login: grant.login.clone(),
        app_password_id: grant.app_password_id,
        end,
    };
    // Everything but the two streams goes before the relay starts: a session may sit in
    // IDLE for days, and a field left behind by a partial move would live as long.
    let LoggedIn {
        stream: mut upstream,
        ok_text,
        pending,
    } = logged_in;
    drop((ok_text, pending));
    if let Err(error) = client.send_queued(&mut to_client).await {
        return Outcome::ClientError(error);
    }
    drop(to_client);
    if !pipelined.is_empty() {
        if let Err(error) = upstream.write_all(&pipelined).await {
            return outcome(RelayEnd::Failed(error));
        }
    }
    drop(pipelined);
    let live = gateway
        .sessions
        .register(grant.user_id, grant.app_password_id);
    let active = gateway.metrics.sessions_active.with_label_values(&["imap"]);
    active.inc();
    let expiry = grant.expires_at.map(|at| {
        let left = at.saturating_sub(crate::auth::verifier::now()).max(0) as u64;
        Instant::now() + Duration::from_secs(left)
    });
    let stop = async {
        tokio::select! {
            () = live.revoked() => {
                tracing::info!("credential revoked; closing session");
            }
            () = sleep_until_option(expiry) => {
                gateway.metrics.revoked_sessions_closed.inc();
                tracing::info!("app password expired; closing session");
            }
            () = gateway.shutdown.cancelled() => {}
        }
    };
    let goodbye = relay::Goodbye {
        when: gateway.drain.cancelled(),
        message: BYE_SHUTDOWN,
    };
    let counters = RelayCounters {
        to_upstream: gateway
            .metrics
            .relay_bytes
            .with_label_values(&["imap", "to_upstream"]),
        to_client: gateway
            .metrics
            .relay_bytes
            .with_label_values(&["imap", "to_client"]),
    };
    let end = relay::relay(
        client,
        upstream,
        gateway.limits.authenticated_idle_timeout,
        counters,
        stop,
        goodbye,
    )
    .await;
    active.dec();
    outcome(end)
}

async fn sleep_until_option(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
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

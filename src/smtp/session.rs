//! One SMTP submission connection, from accept to close: TLS, the client conversation
//! ([`super::conversation`]) driven over the socket, AUTH verified with the app password,
//! the upstream login, then each transaction relayed command by command with the sender
//! policy and quotas enforced and the message streamed. The only place in the SMTP flow
//! that touches the client's socket.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

use super::conversation::{Action, Conversation, ConversationOptions};
use super::policy::{self, HeaderFacts};
use super::upstream::{self as smtp_upstream, LoginRequest, SmtpUpstream};
use crate::audit;
use crate::auth::verifier::now;
use crate::auth::{Grant, LoginAttempt, Verdict};
use crate::config::{ListenerConfig, ListenerTls, Protocol};
use crate::server::Gateway;
use crate::sessions::LiveSession;
use crate::stream::Stream;
use crate::upstream::UpstreamError;

const SENDER_REFUSED: &[u8] = b"553 5.7.1 Sender address not allowed for this user\r\n";
const HEADER_SENDER_REFUSED: &[u8] =
    b"553 5.7.1 From: or Sender: header is not an address of this user\r\n";
const MESSAGE_QUOTA: &[u8] = b"451 4.7.1 Message quota exceeded, try again later\r\n";
const RECIPIENT_QUOTA: &[u8] = b"451 4.7.1 Recipient quota exceeded, try again later\r\n";
const UPSTREAM_LOST: &[u8] = b"451 4.4.2 Upstream connection lost, try again\r\n";
const REVOKED: &[u8] = b"421 4.7.0 Credential revoked, closing connection\r\n";
const SHUTTING_DOWN: &[u8] = b"421 4.3.2 Service shutting down\r\n";
const TOO_MANY_CONNECTIONS: &[u8] = b"421 4.7.0 Too many connections from your address\r\n";
const IDLE: &[u8] = b"421 4.4.2 Idle for too long, closing connection\r\n";

/// How long the upstream may take to answer the final dot: it may scan or relay the
/// message first (RFC 5321 §4.5.3.2.6 gives it 10 minutes).
const FINAL_REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Invalid commands tolerated on one connection.
const MAX_BAD_COMMANDS: u32 = 20;

/// How a connection ended, for its one log line.
#[derive(Debug)]
enum Outcome {
    Closed,
    Dropped(&'static str),
    ClientError(std::io::Error),
}

/// Serves one client connection to completion; logs the outcome.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: Arc<ListenerConfig>,
    tcp: TcpStream,
    client: SocketAddr,
) {
    let started = Instant::now();
    let _ = tcp.set_nodelay(true);
    let span = tracing::info_span!("smtp", listener = %listener.name, client = %client);
    let mut session = Session {
        gateway: &gateway,
        client,
        grant: None,
        live: None,
        upstream: None,
        message: None,
        messages: 0,
    };
    let outcome = session.run(&listener, tcp).instrument(span.clone()).await;
    if let Some(upstream) = session.upstream.take() {
        upstream.quit().await;
    }
    if session.live.is_some() {
        gateway
            .metrics
            .sessions_active
            .with_label_values(&["smtp"])
            .dec();
    }
    let _enter = span.enter();
    let duration_ms = started.elapsed().as_millis() as u64;
    let login = session.grant.as_ref().map(|g| g.login.clone());
    match outcome {
        Outcome::Closed => {
            tracing::info!(duration_ms, login = ?login, messages = session.messages, "connection closed")
        }
        Outcome::Dropped(why) => {
            tracing::info!(duration_ms, login = ?login, reason = why, "connection dropped")
        }
        Outcome::ClientError(error) => {
            tracing::debug!(duration_ms, %error, "client connection failed")
        }
    }
}

/// The message being relayed.
#[derive(Debug, Default)]
struct Message {
    envelope_sender: String,
    recipients: u32,
    size: u64,
    facts: HeaderFacts,
}

struct Session<'g> {
    gateway: &'g Gateway,
    client: SocketAddr,
    grant: Option<Arc<Grant>>,
    live: Option<LiveSession>,
    upstream: Option<SmtpUpstream>,
    message: Option<Message>,
    messages: u32,
}

impl Session<'_> {
    async fn run(&mut self, listener: &ListenerConfig, tcp: TcpStream) -> Outcome {
        let gateway = self.gateway;
        let mut stream = match listener.tls {
            ListenerTls::Implicit => match gateway.accept_tls(tcp).await {
                Ok(stream) => stream,
                Err(why) => return Outcome::Dropped(why),
            },
            ListenerTls::Starttls => Stream::Plain(tcp),
        };
        let listener_name: Arc<str> = listener.name.as_str().into();
        let Some(_admitted) = gateway
            .connection_caps
            .admit(&listener_name, self.client.ip())
        else {
            let _ = stream.write_all(TOO_MANY_CONNECTIONS).await;
            let _ = stream.shutdown().await;
            return Outcome::Dropped("too many connections from the address");
        };
        let capabilities = gateway.smtp_capabilities().await;
        let config = &gateway.smtp;
        let mut conversation = Conversation::new(ConversationOptions {
            tls_active: stream.is_tls(),
            starttls_available: listener.tls == ListenerTls::Starttls,
            hostname: config.hostname.clone(),
            max_line: gateway.limits.max_line,
            max_failures: gateway.limits.max_failed_logins,
            max_bad_commands: MAX_BAD_COMMANDS,
            max_header_bytes: config.max_header_bytes,
            // SIZE 0 (or none) means the upstream sets no limit (RFC 1870): use ours.
            max_message_size: capabilities
                .size
                .filter(|&size| size > 0)
                .unwrap_or(config.max_message_size),
            smtputf8: capabilities.smtputf8,
            dsn: capabilities.dsn,
        });
        let mut output = conversation.greeting();
        let mut buffer = vec![0u8; 16 * 1024];
        let login_deadline = Instant::now() + gateway.limits.login_deadline;

        loop {
            while let Some(action) = conversation.next_action() {
                match action {
                    Action::Send(bytes) => output.extend_from_slice(&bytes),
                    Action::Close => {
                        let _ = stream.send_queued(&mut output).await;
                        let _ = stream.shutdown().await;
                        return Outcome::Closed;
                    }
                    Action::Quit => {}
                    Action::StartTls => {
                        if let Err(error) = stream.send_queued(&mut output).await {
                            return Outcome::ClientError(error);
                        }
                        let Ok(tcp) = stream.into_plain() else {
                            return Outcome::Dropped("STARTTLS inside TLS");
                        };
                        stream = match gateway.accept_tls(tcp).await {
                            Ok(stream) => stream,
                            Err(why) => return Outcome::Dropped(why),
                        };
                        conversation.tls_established();
                    }
                    Action::Authenticate {
                        mechanism,
                        login,
                        password,
                    } => {
                        if let Err(error) = stream.send_queued(&mut output).await {
                            return Outcome::ClientError(error);
                        }
                        let attempt = LoginAttempt {
                            protocol: Protocol::Smtp,
                            mechanism: mechanism.as_str(),
                            login: &login,
                            password: &password,
                            client: self.client,
                            client_id: conversation.helo(),
                            started: Instant::now(),
                        };
                        match self.authenticate(&attempt, conversation.helo()).await {
                            AuthOutcome::Granted => {
                                if let Some(upstream) = &self.upstream {
                                    let size = upstream.capabilities().size.unwrap_or(0);
                                    conversation.limit_message_size(size);
                                }
                                conversation.auth_granted();
                            }
                            AuthOutcome::Refused => conversation.auth_refused(),
                            AuthOutcome::Unavailable => conversation.auth_unavailable(),
                        }
                    }
                    Action::MailFrom { address, line } => {
                        let reply = self.mail_from(address, &line, conversation.helo()).await;
                        conversation.reply(reply);
                    }
                    Action::RcptTo { address: _, line } => {
                        let reply = self.rcpt_to(&line, conversation.recipients()).await;
                        conversation.reply(reply);
                    }
                    Action::Data => {
                        self.open_data().await;
                        conversation.data_accepted();
                    }
                    Action::MessageHeader(header) => match self.start_message(&header).await {
                        Ok(()) => conversation.accept_message(),
                        Err(reply) => conversation.reject_message(reply),
                    },
                    Action::MessageBody(bytes) => {
                        if let Some(message) = &mut self.message {
                            message.size += bytes.len() as u64;
                        }
                        self.send_body(&bytes).await;
                    }
                    Action::MessageEnd => {
                        let reply = self.end_message().await;
                        conversation.reply(reply);
                    }
                    Action::MessageTooLarge => {
                        // Part of it may be upstream: drop that connection without the
                        // final dot, so the upstream discards it. The next MAIL logs in anew.
                        self.upstream = None;
                        self.finish_message("too_large", None);
                    }
                    Action::Reset => {
                        let reply = self.reset().await;
                        conversation.reply(reply);
                    }
                }
            }
            self.flush_upstream().await;
            if let Err(error) = stream.send_queued(&mut output).await {
                return Outcome::ClientError(error);
            }

            let idle = if self.grant.is_some() {
                self.gateway.smtp.idle_timeout
            } else {
                gateway
                    .limits
                    .preauth_idle_timeout
                    .min(login_deadline.saturating_duration_since(Instant::now()))
            };
            // Draining: goodbye between commands; a message in flight is finished first,
            // unless the grace runs out.
            let goodbye_now = conversation.between_commands();
            let read = tokio::select! {
                () = gateway.drain.cancelled(), if goodbye_now => {
                    let _ = stream.write_all(SHUTTING_DOWN).await;
                    let _ = stream.shutdown().await;
                    return Outcome::Dropped("shutdown");
                }
                () = gateway.shutdown.cancelled() => {
                    let _ = stream.write_all(SHUTTING_DOWN).await;
                    return Outcome::Dropped("shutdown grace over");
                }
                () = revoked(&self.live) => {
                    let _ = stream.write_all(REVOKED).await;
                    let _ = stream.shutdown().await;
                    return Outcome::Dropped("credential revoked");
                }
                read = tokio::time::timeout(idle, stream.read(&mut buffer)) => read,
            };
            match read {
                Err(_) => {
                    let _ = stream.write_all(IDLE).await;
                    let _ = stream.shutdown().await;
                    return Outcome::Dropped("idle timeout");
                }
                Ok(Ok(0)) => return Outcome::Closed,
                Ok(Ok(n)) => conversation.feed(&buffer[..n]),
                Ok(Err(error)) => return Outcome::ClientError(error),
            }
        }
    }

    async fn authenticate(
        &mut self,
        attempt: &LoginAttempt<'_>,
        helo: Option<&str>,
    ) -> AuthOutcome {
        let gateway = self.gateway;
        let outcome = match gateway.verifier.verify(attempt).await {
            Ok(Verdict::Granted(grant)) => match self.login_upstream(&grant, helo).await {
                Ok(upstream) => {
                    gateway
                        .verifier
                        .record(attempt, "ok", Some(grant.app_password_id));
                    self.upstream = Some(upstream);
                    self.live = Some(
                        gateway
                            .sessions
                            .register(grant.user_id, grant.app_password_id),
                    );
                    gateway
                        .metrics
                        .sessions_active
                        .with_label_values(&["smtp"])
                        .inc();
                    self.grant = Some(grant);
                    AuthOutcome::Granted
                }
                Err(error) => {
                    let result = match error {
                        UpstreamError::Refused => "upstream_refused",
                        _ => "upstream_unavailable",
                    };
                    tracing::error!(%error, login = ?attempt.login, "upstream login failed");
                    gateway
                        .verifier
                        .record(attempt, result, Some(grant.app_password_id));
                    AuthOutcome::Unavailable
                }
            },
            Ok(Verdict::RateLimited) => {
                gateway.verifier.record(attempt, "rate_limited", None);
                AuthOutcome::Unavailable
            }
            Ok(Verdict::Refused(refusal, app_password_id)) => {
                gateway
                    .verifier
                    .record(attempt, refusal.as_str(), app_password_id);
                AuthOutcome::Refused
            }
            Err(error) => {
                tracing::warn!(%error, "login could not be verified");
                gateway.verifier.record(attempt, "temporary_failure", None);
                AuthOutcome::Unavailable
            }
        };
        outcome
    }

    async fn login_upstream(
        &self,
        grant: &Grant,
        helo: Option<&str>,
    ) -> Result<SmtpUpstream, UpstreamError> {
        let gateway = self.gateway;
        let Some(upstream) = gateway.smtp_upstream() else {
            return Err(UpstreamError::Unsupported(
                "SMTP (no [upstream.smtp] configured)",
            ));
        };
        let request = LoginRequest {
            upstream_user: &grant.upstream_user,
            client: self.client,
            client_helo: helo,
            login: &grant.login,
        };
        match smtp_upstream::login(&upstream, &gateway.smtp.hostname, &request).await {
            Ok((logged_in, connect_time)) => {
                gateway
                    .metrics
                    .upstream_connect_seconds
                    .with_label_values(&["smtp"])
                    .observe(connect_time.as_secs_f64());
                gateway
                    .metrics
                    .upstream_logins
                    .with_label_values(&["smtp", "new"])
                    .inc();
                Ok(logged_in)
            }
            Err(error) => {
                gateway
                    .metrics
                    .upstream_errors
                    .with_label_values(&["smtp", error.reason()])
                    .inc();
                Err(error)
            }
        }
    }

    /// The upstream session, logging in again if a previous one was dropped.
    async fn upstream(&mut self, helo: Option<&str>) -> Option<&mut SmtpUpstream> {
        if self.upstream.is_none() {
            let grant = self.grant.clone()?;
            match self.login_upstream(&grant, helo).await {
                Ok(upstream) => self.upstream = Some(upstream),
                Err(error) => {
                    tracing::warn!(%error, "upstream login for a new transaction failed");
                    return None;
                }
            }
        }
        self.upstream.as_mut()
    }

    /// Runs `line` upstream; on any failure drops the upstream and answers 451.
    async fn relay_command(&mut self, line: &[u8], helo: Option<&str>) -> Vec<u8> {
        let Some(upstream) = self.upstream(helo).await else {
            return UPSTREAM_LOST.to_vec();
        };
        match upstream.command(line).await {
            Ok(reply) => reply.raw,
            Err(error) => {
                tracing::warn!(%error, "upstream failed during a transaction");
                self.upstream = None;
                UPSTREAM_LOST.to_vec()
            }
        }
    }

    async fn mail_from(&mut self, address: String, line: &[u8], helo: Option<&str>) -> Vec<u8> {
        let Some(grant) = self.grant.clone() else {
            return b"530 5.7.0 Authentication required\r\n".to_vec();
        };
        if !policy::envelope_sender_allowed(&grant, &address) {
            self.count_message("sender_refused");
            tracing::info!(login = ?grant.login, sender = ?address, "envelope sender refused");
            return SENDER_REFUSED.to_vec();
        }
        if !self.gateway.quotas.may_send_message(grant.app_password_id) {
            self.count_message("quota_exceeded");
            return MESSAGE_QUOTA.to_vec();
        }
        let reply = self.relay_command(line, helo).await;
        if reply.starts_with(b"2") {
            self.message = Some(Message {
                envelope_sender: address,
                ..Message::default()
            });
        }
        reply
    }

    async fn rcpt_to(&mut self, line: &[u8], accepted_so_far: u32) -> Vec<u8> {
        let Some(grant) = self.grant.clone() else {
            return b"530 5.7.0 Authentication required\r\n".to_vec();
        };
        if !self
            .gateway
            .quotas
            .may_add_recipients(grant.app_password_id, accepted_so_far + 1)
        {
            self.count_message("quota_exceeded");
            return RECIPIENT_QUOTA.to_vec();
        }
        // Lost in this transaction: a new upstream login would not know its MAIL and
        // would answer a permanent 503 to what only needs a retry.
        if self.upstream.is_none() {
            return UPSTREAM_LOST.to_vec();
        }
        let reply = self.relay_command(line, None).await;
        if reply.starts_with(b"2") {
            if let Some(message) = &mut self.message {
                message.recipients += 1;
            }
        }
        reply
    }

    /// Sends DATA upstream as soon as the client sends it, without waiting: its `354`
    /// arrives while the client sends the message, and is read with the header. The client
    /// gets its `354` at once; an upstream refusal of DATA is its reply after the dot.
    async fn open_data(&mut self) {
        let Some(upstream) = self.upstream.as_mut() else {
            return; // the header will answer 451
        };
        if let Err(error) = upstream.send_command(b"DATA\r\n").await {
            tracing::warn!(%error, "upstream failed at DATA");
            self.upstream = None;
        }
    }

    /// Checks the header block, then reads the upstream's reply to DATA and queues the
    /// header after it.
    async fn start_message(&mut self, header: &[u8]) -> Result<(), Vec<u8>> {
        let Some(grant) = self.grant.clone() else {
            return Err(b"530 5.7.0 Authentication required\r\n".to_vec());
        };
        let facts = policy::header_facts(header);
        if let Some(message) = &mut self.message {
            message.size = header.len() as u64;
            message.facts = facts.clone();
        }
        if !policy::header_senders_allowed(&grant, &facts) {
            tracing::info!(login = ?grant.login, senders = ?facts.senders, "header sender refused");
            // The upstream is inside DATA: closing it without the final dot discards the
            // message, and the next MAIL logs in anew.
            self.upstream = None;
            self.finish_message("sender_refused", None);
            return Err(HEADER_SENDER_REFUSED.to_vec());
        }
        let Some(upstream) = self.upstream.as_mut() else {
            self.finish_message("upstream_failed", None);
            return Err(UPSTREAM_LOST.to_vec());
        };
        let reply = match upstream.read_reply().await {
            Ok(reply) => reply,
            Err(error) => {
                tracing::warn!(%error, "upstream failed at DATA");
                self.upstream = None;
                self.finish_message("upstream_failed", None);
                return Err(UPSTREAM_LOST.to_vec());
            }
        };
        if !reply.is_intermediate() {
            self.finish_message("rejected", Some(reply.code));
            return Err(reply.raw);
        }
        if let Err(error) = upstream.send(header).await {
            tracing::warn!(%error, "upstream failed while receiving the message");
            self.upstream = None;
        }
        Ok(())
    }

    /// Writes the message data queued in this round, before the client is read again.
    async fn flush_upstream(&mut self) {
        let Some(upstream) = self.upstream.as_mut() else {
            return;
        };
        if let Err(error) = upstream.flush().await {
            tracing::warn!(%error, "upstream failed while receiving the message");
            self.upstream = None;
        }
    }

    async fn send_body(&mut self, bytes: &[u8]) {
        let Some(upstream) = self.upstream.as_mut() else {
            return; // already lost: the end of the message will say so
        };
        if let Err(error) = upstream.send(bytes).await {
            tracing::warn!(%error, "upstream failed while receiving the message");
            self.upstream = None;
        }
    }

    /// The final dot upstream; the client's reply is the upstream's, or 451 if it is gone.
    async fn end_message(&mut self) -> Vec<u8> {
        let Some(upstream) = self.upstream.as_mut() else {
            self.finish_message("upstream_failed", None);
            return UPSTREAM_LOST.to_vec();
        };
        let reply = match upstream.send(b".\r\n").await {
            Ok(()) => upstream.read_reply_within(FINAL_REPLY_TIMEOUT).await,
            Err(error) => Err(error),
        };
        match reply {
            Ok(reply) => {
                let result = if reply.is_positive_completion() {
                    "accepted"
                } else {
                    "rejected"
                };
                self.finish_message(result, Some(reply.code));
                reply.raw
            }
            Err(error) => {
                tracing::warn!(%error, "upstream failed after the message");
                self.upstream = None;
                self.finish_message("upstream_failed", None);
                UPSTREAM_LOST.to_vec()
            }
        }
    }

    async fn reset(&mut self) -> Vec<u8> {
        self.message = None;
        if self.upstream.is_none() {
            return b"250 2.0.0 OK\r\n".to_vec();
        }
        self.relay_command(b"RSET\r\n", None).await
    }

    fn count_message(&self, result: &str) {
        self.gateway
            .metrics
            .smtp_messages
            .with_label_values(&[result])
            .inc();
    }

    /// Counts, audits and (when accepted) charges the quota for the message just ended.
    fn finish_message(&mut self, result: &'static str, upstream_code: Option<u16>) {
        self.count_message(result);
        let Some(message) = self.message.take() else {
            return;
        };
        let Some(grant) = self.grant.clone() else {
            return;
        };
        if result == "accepted" {
            self.messages += 1;
            self.gateway
                .quotas
                .record(grant.app_password_id, message.recipients);
        }
        tracing::info!(
            login = ?grant.login,
            app_password_id = grant.app_password_id,
            sender = ?message.envelope_sender,
            recipients = message.recipients,
            size = message.size,
            message_id = ?message.facts.message_id,
            upstream_code,
            result,
            "message"
        );
        let detail = format!(
            "from=<{}> recipients={} size={} message_id={} upstream={}",
            message.envelope_sender,
            message.recipients,
            message.size,
            message.facts.message_id.as_deref().unwrap_or("-"),
            upstream_code.map_or("-".to_string(), |c| c.to_string()),
        );
        self.gateway.audit.record(audit::Event {
            at: now(),
            kind: "message",
            login: grant.login.clone(),
            app_password_id: Some(grant.app_password_id),
            protocol: Some("smtp"),
            client_ip: Some(self.client.ip().to_string()),
            client_id: None,
            result: Some(result),
            detail: Some(detail),
        });
    }
}

enum AuthOutcome {
    Granted,
    Refused,
    Unavailable,
}

async fn revoked(live: &Option<LiveSession>) {
    match live {
        Some(live) => live.revoked().await,
        None => std::future::pending().await,
    }
}

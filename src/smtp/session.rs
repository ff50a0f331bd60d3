//! SMTP submission on the session driver: the conversation ([`super::conversation`]) as a
//! [`Machine`], the upstream login, and each transaction after AUTH relayed command by
//! command, with the sender policy and quotas enforced and the message streamed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::conversation::{Action, Conversation, ConversationOptions};
use super::policy::{self, HeaderFacts};
use super::upstream::{self as smtp_upstream, LoginRequest, SmtpUpstream};
use crate::auth::Grant;
use crate::clock::now;
use crate::gateway::Gateway;
use crate::ops::audit;
use crate::protocol::Protocol;
use crate::session::login::{self, UpstreamSession};
use crate::session::{AfterLogin, Machine, ProtocolSession, Replies, Step};
use crate::upstream::UpstreamError;

const SENDER_REFUSED: &[u8] = b"553 5.7.1 Sender address not allowed for this user\r\n";
const HEADER_SENDER_REFUSED: &[u8] =
    b"553 5.7.1 From: or Sender: header is not an address of this user\r\n";
const MESSAGE_QUOTA: &[u8] = b"451 4.7.1 Message quota exceeded, try again later\r\n";
const RECIPIENT_QUOTA: &[u8] = b"451 4.7.1 Recipient quota exceeded, try again later\r\n";
const UPSTREAM_LOST: &[u8] = b"451 4.4.2 Upstream connection lost, try again\r\n";

/// How long the upstream may take to answer the final dot: it may scan or relay the
/// message first (RFC 5321 §4.5.3.2.6 gives it 10 minutes).
const FINAL_REPLY_TIMEOUT: Duration = Duration::from_secs(600);

/// Invalid commands tolerated on one connection.
const MAX_BAD_COMMANDS: u32 = 20;

impl Machine for Conversation {
    type Step = Action;

    fn greeting(&self) -> Vec<u8> {
        Conversation::greeting(self)
    }

    fn feed(&mut self, bytes: &[u8]) {
        Conversation::feed(self, bytes)
    }

    fn next_step(&mut self) -> Option<Step<Action>> {
        loop {
            return Some(match self.next_action()? {
                Action::Send(bytes) => Step::Send(bytes),
                Action::StartTls => Step::StartTls,
                Action::Close => Step::Close,
                Action::Quit => continue, // the 221 is queued; Close follows
                Action::Authenticate(credentials) => Step::LogIn(credentials),
                transaction => Step::Protocol(transaction),
            });
        }
    }

    fn tls_established(&mut self) {
        Conversation::tls_established(self)
    }

    fn login_refused(&mut self) {
        self.auth_refused()
    }

    fn login_unavailable(&mut self) {
        self.auth_unavailable()
    }

    fn between_commands(&self) -> bool {
        Conversation::between_commands(self)
    }

    fn client_id(&self) -> Option<String> {
        self.helo().map(str::to_owned)
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

/// An SMTP connection: after AUTH, its upstream session and the transaction in progress.
pub struct SmtpSession {
    gateway: Arc<Gateway>,
    client: SocketAddr,
    grant: Option<Arc<Grant>>,
    upstream: Option<SmtpUpstream>,
    message: Option<Message>,
}

impl ProtocolSession for SmtpSession {
    const PROTOCOL: Protocol = Protocol::Smtp;
    const REPLIES: Replies = Replies {
        too_many_connections: b"421 4.7.0 Too many connections from your address\r\n",
        idle: b"421 4.4.2 Idle for too long, closing connection\r\n",
        shutting_down: b"421 4.3.2 Service shutting down\r\n",
        revoked: b"421 4.7.0 Credential revoked, closing connection\r\n",
        expired: b"421 4.7.0 App password expired, closing connection\r\n",
    };
    const READ_BUFFER: usize = 16 * 1024;
    type Machine = Conversation;
    type Upstream = SmtpUpstream;

    fn new(gateway: &Arc<Gateway>, client: SocketAddr) -> Self {
        Self {
            gateway: gateway.clone(),
            client,
            grant: None,
            upstream: None,
            message: None,
        }
    }

    async fn machine(&self, tls_active: bool, starttls_available: bool) -> Conversation {
        let gateway = &self.gateway;
        let capabilities = gateway.smtp_capabilities().await;
        let config = &gateway.smtp;
        Conversation::new(ConversationOptions {
            tls_active,
            starttls_available,
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
        })
    }

    async fn log_in_upstream(
        &self,
        grant: &Grant,
        machine: &Conversation,
    ) -> Result<UpstreamSession<SmtpUpstream>, UpstreamError> {
        self.login_upstream(grant, machine.helo()).await
    }

    fn logged_in(
        &mut self,
        mut machine: Conversation,
        upstream: SmtpUpstream,
        grant: &Arc<Grant>,
        _output: &mut Vec<u8>,
    ) -> AfterLogin<Conversation> {
        machine.limit_message_size(upstream.capabilities().size.unwrap_or(0));
        machine.auth_granted();
        self.upstream = Some(upstream);
        self.grant = Some(grant.clone());
        AfterLogin::Converse(machine)
    }

    async fn handle(&mut self, step: Action, conversation: &mut Conversation) {
        match step {
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
                // Part of it may be upstream: drop that connection without the final dot,
                // so the upstream discards it. The next MAIL logs in anew.
                self.upstream = None;
                self.finish_message("too_large", None).await;
            }
            Action::Reset => {
                let reply = self.reset().await;
                conversation.reply(reply);
            }
            // The driver's steps never come here.
            Action::Send(_)
            | Action::StartTls
            | Action::Close
            | Action::Quit
            | Action::Authenticate(_) => {}
        }
    }

    async fn before_read(&mut self) {
        self.flush_upstream().await;
    }

    fn idle_timeout(&self) -> Duration {
        self.gateway.smtp.idle_timeout
    }

    async fn finish(mut self) {
        if let Some(upstream) = self.upstream.take() {
            upstream.quit().await;
        }
    }
}

impl SmtpSession {
    /// Logs in upstream as `grant`'s user, passing the client's address and EHLO name.
    async fn login_upstream(
        &self,
        grant: &Grant,
        helo: Option<&str>,
    ) -> Result<UpstreamSession<SmtpUpstream>, UpstreamError> {
        let gateway = &self.gateway;
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
        let (session, connect_time) =
            smtp_upstream::login(&upstream, &gateway.smtp.hostname, &request).await?;
        Ok(UpstreamSession {
            session,
            connect_time,
            warm: false,
        })
    }

    /// The upstream session, logging in again, if the verifier still allows it, when a
    /// previous one was dropped.
    async fn upstream(&mut self, helo: Option<&str>) -> Option<&mut SmtpUpstream> {
        if self.upstream.is_none() {
            let grant = self.grant.clone()?;
            let login = self.login_upstream(&grant, helo);
            self.upstream = login::log_in_again(&self.gateway, "smtp", &grant, login).await;
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
        if !self
            .gateway
            .quotas
            .may_send_message(grant.app_password_id)
            .await
        {
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
            .await
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
            self.finish_message("sender_refused", None).await;
            return Err(HEADER_SENDER_REFUSED.to_vec());
        }
        let Some(upstream) = self.upstream.as_mut() else {
            self.finish_message("upstream_failed", None).await;
            return Err(UPSTREAM_LOST.to_vec());
        };
        let reply = match upstream.read_reply().await {
            Ok(reply) => reply,
            Err(error) => {
                tracing::warn!(%error, "upstream failed at DATA");
                self.upstream = None;
                self.finish_message("upstream_failed", None).await;
                return Err(UPSTREAM_LOST.to_vec());
            }
        };
        if !reply.is_intermediate() {
            self.finish_message("rejected", Some(reply.code)).await;
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
            self.finish_message("upstream_failed", None).await;
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
                self.finish_message(result, Some(reply.code)).await;
                reply.raw
            }
            Err(error) => {
                tracing::warn!(%error, "upstream failed after the message");
                self.upstream = None;
                self.finish_message("upstream_failed", None).await;
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
    async fn finish_message(&mut self, result: &'static str, upstream_code: Option<u16>) {
        self.count_message(result);
        let Some(message) = self.message.take() else {
            return;
        };
        let Some(grant) = self.grant.clone() else {
            return;
        };
        if result == "accepted" {
            self.gateway
                .quotas
                .record(grant.app_password_id, message.recipients)
                .await;
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

//! The client's side of an SMTP submission conversation (RFC 5321, 6409, 4954, 3207, 2920),
//! as a sans-I/O state machine.
//!
//! The session task feeds received bytes in with [`Conversation::feed`] and carries out the
//! [`Action`]s that [`Conversation::next_action`] returns: write bytes, start TLS, verify
//! credentials, relay a command or message data upstream, close. Nothing here touches a
//! socket, a clock or a log; client input is never logged, and `Debug` shows no buffer.
//!
//! Replies are generated in two places. The machine answers everything it can decide alone:
//! the greeting, EHLO/HELO, NOOP, HELP, VRFY, QUIT, RSET before login, the AUTH exchange up
//! to the credential check, every refusal of a command out of sequence or malformed, and the
//! limits. Everything that needs a verdict or the upstream becomes an action, and the machine
//! then waits, parsing nothing, until the session answers with the matching call
//! ([`Conversation::auth_granted`], [`Conversation::reply`], ...). One command is in flight at
//! a time, so pipelined replies (RFC 2920) leave in order however the input is split.
//!
//! Command lines are framed here and parsed with smtp-proto:
//!
//! - A line ends in CRLF or a bare LF (netcat, some scripts). The `line` handed to the
//!   session for MAIL and RCPT always ends in CRLF. Any other control character in a command
//!   line, a lone CR in particular, makes it a syntax error, so nothing relayed upstream can
//!   carry a second command the upstream might split off. Empty lines are ignored.
//! - A line (including its ending) is at most `max_line` bytes, before and after login. A
//!   longer one gets `500 5.5.2 Line too long` and is discarded through its LF without being
//!   buffered.
//! - Lines read at an AUTH prompt are base64 (or `*`), never commands.
//!
//! Message data (after the `354`) is framed byte by byte:
//!
//! - The terminator is a line consisting of a single `.`. Line endings are normalized on the
//!   way through: CRLF stays, a bare LF or a bare CR becomes CRLF. The upstream therefore sees
//!   only CRLF line endings and finds the end of the message exactly where postern did; no
//!   `<LF>.<LF>` or `<CR>.<CR>` variant can end the message early upstream and smuggle a
//!   second, unchecked transaction past the sender policy (SMTP smuggling, CVE-2023-51764).
//! - Dot-stuffing is kept: the session relays the bytes as they are and then sends `.\r\n`.
//! - The header block (up to and including the empty line ending it) is collected, bounded by
//!   `max_header_bytes`, and handed over whole for the sender check; the body then streams in
//!   chunks as it arrives. The whole message is bounded by `max_message_size`.
//!
//! While an action waits for its answer the session should stop reading once
//! [`Conversation::wants_input`] says so; buffered input then stays below about twice
//! `max_line` plus one read.

use std::collections::VecDeque;
use std::fmt;

use smtp_proto::{Error as ParseError, MailFrom, RcptTo, Request, AUTH_LOGIN, AUTH_PLAIN};

use super::data::{scan, Scan, ScanStop};
use crate::auth::{ClientLogin, Secret};
use crate::sasl::{self, SaslError};

/// Default longest command line (SPEC: "line ... at most 8 KiB" before login; kept after).
pub const DEFAULT_MAX_LINE: usize = 8 * 1024;
/// Default failed AUTHs per connection (SPEC: "at most 3 failed logins per connection").
pub const DEFAULT_MAX_FAILURES: u32 = 3;
/// Default refused commands per connection before giving up on the client (Postfix's
/// `smtpd_hard_error_limit`).
pub const DEFAULT_MAX_BAD_COMMANDS: u32 = 20;
/// Default largest header block buffered for the sender check.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default largest message, advertised as `SIZE`.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 25 * 1024 * 1024;

/// A smaller `max_line` would make ordinary commands impossible.
const MIN_LINE: usize = 64;
/// Longest EHLO/HELO name kept for [`Conversation::helo`] (a domain is at most 255 octets).
const MAX_HELO: usize = 255;

const CRLF: &[u8] = b"\r\n";

const READY_TLS: &[u8] = b"220 2.0.0 Ready to start TLS\r\n";
const BYE: &[u8] = b"221 2.0.0 Bye\r\n";
const HELP: &[u8] = b"214 2.0.0 See RFC 5321 and RFC 6409\r\n";
const OK: &[u8] = b"250 2.0.0 OK\r\n";
const CANNOT_VRFY: &[u8] = b"252 2.1.5 Cannot VRFY user\r\n";
const AUTH_SUCCESSFUL: &[u8] = b"235 2.7.0 Authentication successful\r\n";
const START_MAIL_INPUT: &[u8] = b"354 Start mail input; end with <CRLF>.<CRLF>\r\n";
/// The empty challenge of AUTH PLAIN without an initial response.
const PROMPT_PLAIN: &[u8] = b"334 \r\n";
/// `334 Username:`, byte for byte what Outlook expects.
const PROMPT_USERNAME: &[u8] = b"334 VXNlcm5hbWU6\r\n";
/// `334 Password:`, byte for byte what Outlook expects.
const PROMPT_PASSWORD: &[u8] = b"334 UGFzc3dvcmQ6\r\n";

const TOO_MANY_FAILURES: &[u8] = b"421 4.7.0 Too many failed authentications\r\n";
const TOO_MANY_ERRORS: &[u8] = b"421 4.7.0 Too many errors\r\n";
const AUTH_UNAVAILABLE: &[u8] = b"454 4.7.0 Temporary authentication failure\r\n";
const AUTH_INVALID: &[u8] = b"535 5.7.8 Authentication credentials invalid\r\n";

const LINE_TOO_LONG: &[u8] = b"500 5.5.2 Line too long\r\n";
const SYNTAX_ERROR: &[u8] = b"500 5.5.2 Syntax error\r\n";
const UNRECOGNIZED_COMMAND: &[u8] = b"500 5.5.1 Command unrecognized\r\n";
const ARGUMENT_SYNTAX_ERROR: &[u8] = b"501 5.5.2 Syntax error in parameters or arguments\r\n";
const INVALID_PARAMETER: &[u8] = b"501 5.5.4 Invalid parameter\r\n";
const INVALID_SENDER: &[u8] = b"501 5.1.7 Invalid sender address\r\n";
const INVALID_RECIPIENT: &[u8] = b"501 5.1.3 Invalid recipient address\r\n";
const AUTH_CANCELLED: &[u8] = b"501 5.0.0 Authentication cancelled\r\n";
const INVALID_AUTH_DATA: &[u8] = b"501 5.5.2 Invalid authentication data\r\n";
const NOT_IMPLEMENTED: &[u8] = b"502 5.5.1 Command not implemented\r\n";
const BDAT_NOT_SUPPORTED: &[u8] = b"502 5.5.1 BDAT not supported, use DATA\r\n";
const STARTTLS_UNAVAILABLE: &[u8] = b"502 5.5.1 STARTTLS not available\r\n";
const TLS_ALREADY_ACTIVE: &[u8] = b"503 5.5.1 TLS already active\r\n";
const EHLO_FIRST: &[u8] = b"503 5.5.1 EHLO first\r\n";
const ALREADY_AUTHENTICATED: &[u8] = b"503 5.5.1 Already authenticated\r\n";
const NESTED_MAIL: &[u8] = b"503 5.5.1 Nested MAIL command\r\n";
const NEED_MAIL: &[u8] = b"503 5.5.1 Need MAIL command\r\n";
const UNRECOGNIZED_MECHANISM: &[u8] = b"504 5.5.4 Unrecognized authentication type\r\n";
const AUTH_REQUIRED: &[u8] = b"530 5.7.0 Authentication required\r\n";
const ENCRYPTION_REQUIRED: &[u8] =
    b"538 5.7.11 Encryption required for requested authentication mechanism\r\n";
const SIZE_EXCEEDED: &[u8] = b"552 5.3.4 Message size exceeds fixed limit\r\n";
const HEADER_TOO_LARGE: &[u8] = b"552 5.3.4 Message header too large\r\n";
const NO_VALID_RECIPIENTS: &[u8] = b"554 5.5.1 No valid recipients\r\n";
const UNSUPPORTED_PARAMETER: &[u8] = b"555 5.5.4 Unsupported parameter\r\n";

/// `421`: the server is closing the connection; a reply with this code ends it.
const CODE_CLOSING: u16 = 421;

/// How a connection's conversation is limited and what its transport and upstream offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationOptions {
    /// The connection is encrypted from the start (port 465): AUTH is allowed and advertised.
    pub tls_active: bool,
    /// The listener can upgrade with STARTTLS (port 587); until it does, AUTH gets `538`.
    pub starttls_available: bool,
    /// postern's name, in the greeting and the first EHLO line.
    pub hostname: String,
    /// Longest command line or AUTH response, including its line ending: 8 KiB per SPEC,
    /// before and after login; at least 64.
    pub max_line: usize,
    /// Failed AUTHs before `421` and close (3 per SPEC), so one connection cannot be used to
    /// try many passwords.
    pub max_failures: u32,
    /// Refused commands before `421` and close: generous, because real clients probe, but a
    /// client that only sends garbage is not worth a connection slot.
    pub max_bad_commands: u32,
    /// Largest header block buffered for the sender check. A message whose header block is
    /// larger is refused (`552`) without any of it going upstream.
    pub max_header_bytes: usize,
    /// Largest message in bytes (dot-stuffed, CRLF line endings), advertised as `SIZE` and
    /// enforced while reading. Use the smaller of the configured limit and the upstream's.
    pub max_message_size: u64,
    /// Advertise SMTPUTF8: only when the upstream has it.
    pub smtputf8: bool,
    /// Advertise DSN: only when the upstream has it.
    pub dsn: bool,
}

impl Default for ConversationOptions {
    /// The SPEC limits on a plaintext connection without STARTTLS, named `localhost`, with
    /// neither SMTPUTF8 nor DSN; set the TLS fields from the listener and the extensions from
    /// the upstream.
    fn default() -> Self {
        Self {
            tls_active: false,
            starttls_available: false,
            hostname: "localhost".to_owned(),
            max_line: DEFAULT_MAX_LINE,
            max_failures: DEFAULT_MAX_FAILURES,
            max_bad_commands: DEFAULT_MAX_BAD_COMMANDS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            smtputf8: false,
            dsn: false,
        }
    }
}

/// The SASL mechanism the client authenticated with (the `mechanism` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// AUTH PLAIN, with or without an initial response.
    Plain,
    /// AUTH LOGIN, with or without the username as initial response.
    Login,
}

impl Mechanism {
    /// The metric label: `plain` or `login`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "plain",
            Mechanism::Login => "login",
        }
    }
}

/// What the session must do next.
///
/// `Debug` shows the variant and sizes only: the payloads are the client's.
#[derive(Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the client.
    Send(Vec<u8>),
    /// `220 2.0.0 Ready to start TLS` was queued in a prior `Send`; flush it, run the TLS
    /// handshake, then call [`Conversation::tls_established`]. Bytes that arrived after the
    /// STARTTLS line have been discarded (CVE-2011-0411), and after TLS the client must EHLO
    /// again (RFC 3207: the state is reset).
    StartTls,
    /// Verify these credentials, then answer with [`Conversation::auth_granted`],
    /// [`Conversation::auth_refused`] or [`Conversation::auth_unavailable`].
    /// PLAIN (`plain`) or LOGIN (`login`), the login as sent (PLAIN's authzid, if any,
    /// equals it) and the app password.
    Authenticate(ClientLogin),
    /// MAIL FROM after AUTH, to check against the sender policy and relay upstream. Answer
    /// with [`Conversation::reply`].
    MailFrom {
        /// The reverse-path as smtp-proto decodes it (quotes and source route removed; ""
        /// for the null sender `<>`). Valid UTF-8 on the wire.
        address: String,
        /// The command line as received with its ending rewritten to CRLF, to relay upstream
        /// verbatim. Contains no other CR, LF or control character.
        line: Vec<u8>,
    },
    /// RCPT TO inside a transaction, to count against the quotas and relay upstream. Answer
    /// with [`Conversation::reply`].
    RcptTo {
        /// The forward-path as smtp-proto decodes it; `postmaster` for `<Postmaster>`.
        address: String,
        /// The command line, as for `MailFrom`.
        line: Vec<u8>,
    },
    /// DATA after at least one accepted RCPT. Answer with [`Conversation::data_accepted`]
    /// (the upstream said `354`: the machine queues its own `354` and reads the message) or
    /// [`Conversation::reply`] (a refusal such as `451 4.7.1` for a quota).
    Data,
    /// The header block of the message: dot-stuffed, CRLF line endings, through and including
    /// the empty line that ends it, or the whole message if it ends before any empty line
    /// (then `MessageEnd` follows the acceptance at once). Answer with
    /// [`Conversation::accept_message`] to receive the body, or
    /// [`Conversation::reject_message`]: the machine discards the rest of the message and then
    /// sends that reply. The upstream is inside DATA then, and must be dropped without the
    /// terminating dot.
    MessageHeader(Vec<u8>),
    /// Message bytes after the header block, in order: dot-stuffed, CRLF line endings, never
    /// the terminating `.\r\n` (the CRLF before it is included, as the end of the last line).
    /// Each chunk comes from the input of one `next_action` round: at most twice the bytes
    /// fed since the previous round (a bare LF grows to CRLF) plus two held back.
    MessageBody(Vec<u8>),
    /// The terminating `<CRLF>.<CRLF>` was seen. Send `.\r\n` upstream and answer with
    /// [`Conversation::reply`] carrying the upstream's reply: the client's reply to the
    /// message is the upstream's. The transaction is over after it.
    MessageEnd,
    /// The message (or its header block) exceeded `max_message_size` (or `max_header_bytes`).
    /// Nothing more of it is emitted; part of it may already have been streamed upstream, so
    /// drop the upstream connection without sending the terminating dot, and the upstream
    /// discards the partial message. No answer is expected: the machine discards the rest up
    /// to the terminator and then queues `552 5.3.4` itself, ending the transaction.
    MessageTooLarge,
    /// RSET after AUTH: reset the upstream too and answer with [`Conversation::reply`]. Before
    /// AUTH the machine answers RSET itself.
    Reset,
    /// QUIT: `221 2.0.0 Bye` was queued; `Close` follows.
    Quit,
    /// Close the connection after flushing the previous `Send`s.
    Close,
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Send(bytes) => write!(f, "Send({} bytes)", bytes.len()),
            Action::StartTls => f.write_str("StartTls"),
            Action::Authenticate(credentials) => {
                write!(f, "Authenticate({})", credentials.mechanism)
            }
            Action::MailFrom { line, .. } => write!(f, "MailFrom({} bytes)", line.len()),
            Action::RcptTo { line, .. } => write!(f, "RcptTo({} bytes)", line.len()),
            Action::Data => f.write_str("Data"),
            Action::MessageHeader(bytes) => write!(f, "MessageHeader({} bytes)", bytes.len()),
            Action::MessageBody(bytes) => write!(f, "MessageBody({} bytes)", bytes.len()),
            Action::MessageEnd => f.write_str("MessageEnd"),
            Action::MessageTooLarge => f.write_str("MessageTooLarge"),
            Action::Reset => f.write_str("Reset"),
            Action::Quit => f.write_str("Quit"),
            Action::Close => f.write_str("Close"),
        }
    }
}

/// Where the conversation stands.
#[derive(Clone, PartialEq, Eq)]
enum Phase {
    /// Reading command lines.
    Commands,
    /// A line was too long and has been answered; input is dropped through its LF.
    DiscardingLine,
    /// BDAT was refused; its chunk (this many bytes still) is dropped rather than read as
    /// commands.
    DiscardingChunk { remaining: u64 },
    /// A `334` prompt is out; the next line is the client's base64 response.
    SaslResponse(SaslStep),
    /// An `Authenticate` action is out.
    AwaitingVerdict { login: String },
    /// An action answered by [`Conversation::reply`] is out.
    AwaitingReply(Pending),
    /// `StartTls` is out; plaintext input is dropped until the handshake is done.
    AwaitingTls,
    /// After `354`: collecting the header block.
    ReadingHeader,
    /// `MessageHeader` is out; `ended` if the message ended within it.
    AwaitingHeaderVerdict { ended: bool },
    /// Streaming the body.
    ReadingBody,
    /// Dropping the rest of a refused message; `reply` goes out at its terminator.
    DiscardingMessage { reply: Vec<u8> },
    /// `Close` is queued; nothing more happens.
    Closed,
}

impl Phase {
    /// For `Debug`: the phase without its data.
    fn name(&self) -> &'static str {
        match self {
            Phase::Commands => "Commands",
            Phase::DiscardingLine => "DiscardingLine",
            Phase::DiscardingChunk { .. } => "DiscardingChunk",
            Phase::SaslResponse(_) => "SaslResponse",
            Phase::AwaitingVerdict { .. } => "AwaitingVerdict",
            Phase::AwaitingReply(_) => "AwaitingReply",
            Phase::AwaitingTls => "AwaitingTls",
            Phase::ReadingHeader => "ReadingHeader",
            Phase::AwaitingHeaderVerdict { .. } => "AwaitingHeaderVerdict",
            Phase::ReadingBody => "ReadingBody",
            Phase::DiscardingMessage { .. } => "DiscardingMessage",
            Phase::Closed => "Closed",
        }
    }
}

/// Which `334` prompt the client is answering.
#[derive(Clone, PartialEq, Eq)]
enum SaslStep {
    /// AUTH PLAIN without an initial response.
    Plain,
    /// AUTH LOGIN, username.
    LoginUsername,
    /// AUTH LOGIN, password for this username.
    LoginPassword { login: String },
}

/// What a [`Conversation::reply`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Mail,
    Rcpt,
    Data,
    Reset,
    MessageEnd,
}

/// Which limit a message broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overflow {
    Size,
    Header,
}

/// The SMTP submission conversation for one connection. See the module documentation.
///
/// `Debug` shows the state, counters and buffer sizes, never the buffered input, which may
/// hold a password or a message.
pub struct Conversation {
    options: ConversationOptions,
    tls_active: bool,
    phase: Phase,
    /// Received bytes not yet processed, verbatim.
    input: Input,
    actions: VecDeque<Action>,
    failed_auths: u32,
    bad_commands: u32,
    helo: Option<String>,
    login: Option<String>,
    /// A MAIL FROM was accepted and the transaction has not ended.
    transaction: bool,
    recipients: u32,
    /// Message reading: the scanner state, bytes emitted so far, and the header block.
    scan: Scan,
    message_size: u64,
    header: Vec<u8>,
}

impl fmt::Debug for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conversation")
            .field("tls_active", &self.tls_active)
            .field("phase", &self.phase.name())
            .field("authenticated", &self.login.is_some())
            .field("transaction", &self.transaction)
            .field("recipients", &self.recipients)
            .field("buffered", &(self.input.len() + self.header.len()))
            .field("failed_auths", &self.failed_auths)
            .field("bad_commands", &self.bad_commands)
            .finish_non_exhaustive()
    }
}

impl Conversation {
    /// A machine for a new connection; send [`Conversation::greeting`] first.
    pub fn new(mut options: ConversationOptions) -> Self {
        options.max_line = options.max_line.max(MIN_LINE);
        Self {
            tls_active: options.tls_active,
            options,
            phase: Phase::Commands,
            input: Input::default(),
            actions: VecDeque::new(),
            failed_auths: 0,
            bad_commands: 0,
            helo: None,
            login: None,
            transaction: false,
            recipients: 0,
            scan: Scan::LineStart,
            message_size: 0,
            header: Vec::new(),
        }
    }

    /// `220 {hostname} ESMTP postern`, the first bytes the client receives.
    pub fn greeting(&self) -> Vec<u8> {
        format!("220 {} ESMTP postern\r\n", self.options.hostname).into_bytes()
    }

    /// Enqueues bytes received from the client. Bytes during the TLS handshake and after the
    /// machine has closed are dropped. Call [`Conversation::next_action`] until it returns
    /// `None` after each feed.
    pub fn feed(&mut self, bytes: &[u8]) {
        match self.phase {
            Phase::AwaitingTls | Phase::Closed => {}
            Phase::DiscardingLine if self.input.is_empty() => self.discard_through_line_end(bytes),
            Phase::DiscardingChunk { .. } if self.input.is_empty() => {
                self.input.extend(bytes);
                self.discard_chunk();
            }
            _ => self.input.extend(bytes),
        }
    }

    /// The next thing to do, or `None` when the machine needs more bytes or waits for the
    /// session's answer to the last action (or for the TLS handshake).
    pub fn next_action(&mut self) -> Option<Action> {
        loop {
            if let Some(action) = self.actions.pop_front() {
                return Some(action);
            }
            if !self.advance() {
                return None;
            }
        }
    }

    /// Whether the session should read more from the client. False once closed, during the
    /// TLS handshake, and while an answer is pending with enough pipelined input buffered.
    pub fn wants_input(&self) -> bool {
        match self.phase {
            Phase::Closed | Phase::AwaitingTls => false,
            Phase::AwaitingVerdict { .. }
            | Phase::AwaitingReply(_)
            | Phase::AwaitingHeaderVerdict { .. } => self.input.len() < self.max_buffered(),
            Phase::Commands
            | Phase::DiscardingLine
            | Phase::DiscardingChunk { .. }
            | Phase::SaslResponse(_)
            | Phase::ReadingHeader
            | Phase::ReadingBody
            | Phase::DiscardingMessage { .. } => true,
        }
    }

    /// The TLS handshake requested by [`Action::StartTls`] succeeded: AUTH is allowed now, and
    /// the client starts over with EHLO.
    pub fn tls_established(&mut self) {
        if self.phase == Phase::AwaitingTls {
            self.tls_active = true;
            self.input.clear();
            self.helo = None;
            self.end_transaction();
            self.phase = Phase::Commands;
        }
    }

    /// The pending credentials are good and the upstream accepted the login: replies
    /// `235 2.7.0`.
    pub fn auth_granted(&mut self) {
        if let Phase::AwaitingVerdict { login } = &self.phase {
            self.login = Some(login.clone());
            self.phase = Phase::Commands;
            self.send(AUTH_SUCCESSFUL);
        }
    }

    /// The pending credentials were wrong (or refused for any reason that is the client's):
    /// replies `535 5.7.8`, counts a failure, and after `max_failures` also `421 4.7.0` and
    /// closes.
    pub fn auth_refused(&mut self) {
        if matches!(self.phase, Phase::AwaitingVerdict { .. }) {
            self.phase = Phase::Commands;
            self.refuse_auth();
        }
    }

    /// The pending credentials could not be checked (rate limited, upstream down): replies
    /// `454 4.7.0`, not counted as a failure.
    pub fn auth_unavailable(&mut self) {
        if matches!(self.phase, Phase::AwaitingVerdict { .. }) {
            self.phase = Phase::Commands;
            self.send(AUTH_UNAVAILABLE);
        }
    }

    /// The answer to `MailFrom`, `RcptTo`, `Data` (a refusal), `Reset` or `MessageEnd`: these
    /// bytes (one or more complete reply lines; a missing final CRLF is added) go to the
    /// client. The code (first three digits) moves the transaction on: a `2xx` to MAIL opens
    /// it, a `2xx` to RCPT counts a recipient, any reply to RSET or to the end of a message
    /// ends it, a refused MAIL leaves none and a refused RCPT or DATA leaves it as it was. A
    /// `3xx` to DATA counts as [`Conversation::data_accepted`] with these bytes as the `354`.
    /// A `421` closes the connection after it. Ignored when no such answer is pending.
    pub fn reply(&mut self, bytes: Vec<u8>) {
        let Phase::AwaitingReply(pending) = self.phase else {
            return;
        };
        let code = reply_code(&bytes);
        let positive = matches!(code, Some(200..=299));
        self.phase = Phase::Commands;
        match pending {
            Pending::Mail => {
                self.transaction = positive;
                self.recipients = 0;
            }
            Pending::Rcpt => {
                if positive {
                    self.recipients = self.recipients.saturating_add(1);
                }
            }
            Pending::Data => {
                if matches!(code, Some(300..=399)) {
                    self.send_vec(with_crlf(bytes));
                    self.start_message();
                    return;
                }
            }
            Pending::Reset | Pending::MessageEnd => self.end_transaction(),
        }
        self.send_session_reply(bytes);
    }

    /// The upstream answered DATA with `354`: the machine sends its own `354` and reads the
    /// message.
    pub fn data_accepted(&mut self) {
        if self.phase == Phase::AwaitingReply(Pending::Data) {
            self.send(START_MAIL_INPUT);
            self.start_message();
        }
    }

    /// The header block passed the sender check: the body follows as `MessageBody` chunks
    /// (or `MessageEnd` at once if the message ended within the header block).
    pub fn accept_message(&mut self) {
        if let Phase::AwaitingHeaderVerdict { ended } = self.phase {
            if ended {
                self.actions.push_back(Action::MessageEnd);
                self.phase = Phase::AwaitingReply(Pending::MessageEnd);
            } else {
                self.phase = Phase::ReadingBody;
            }
        }
    }

    /// The header block failed the sender check: the rest of the message is discarded and
    /// then `reply` (e.g. `553 5.7.1 ...`) is sent; the transaction is over. A `421` closes
    /// the connection after it.
    pub fn reject_message(&mut self, reply: Vec<u8>) {
        if let Phase::AwaitingHeaderVerdict { ended } = self.phase {
            if ended {
                self.end_message(reply);
            } else {
                self.phase = Phase::DiscardingMessage { reply };
            }
        }
    }

    /// The login of a granted AUTH.
    pub fn login(&self) -> Option<&str> {
        self.login.as_deref()
    }

    /// The name the client gave in its last EHLO or HELO since the connection (or TLS)
    /// started: at most 255 characters, anything but printable ASCII replaced by `?`.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// Lowers the message size limit, e.g. to the upstream's own limit learned after its
    /// AUTH: a message over it is then refused with 552 here, instead of the upstream
    /// cutting the transfer (which the client would see as a temporary failure). The
    /// limit never rises.
    pub fn limit_message_size(&mut self, max: u64) {
        if max > 0 {
            self.options.max_message_size = self.options.max_message_size.min(max);
        }
    }

    /// Whether the client is between commands (not inside DATA or an AUTH exchange) with
    /// nothing buffered: the moment to say goodbye when draining for shutdown.
    pub fn between_commands(&self) -> bool {
        self.phase == Phase::Commands && self.input.is_empty() && self.actions.is_empty()
    }

    /// Recipients the upstream accepted in the current transaction.
    pub fn recipients(&self) -> u32 {
        self.recipients
    }

    /// How much pipelined input is buffered before [`Conversation::wants_input`] says stop.
    fn max_buffered(&self) -> usize {
        self.options.max_line.saturating_mul(2)
    }

    /// Makes one step of progress; false when nothing can happen without new input or a
    /// call from the session.
    fn advance(&mut self) -> bool {
        match self.phase {
            Phase::Commands => self.advance_command(),
            Phase::SaslResponse(_) => self.advance_sasl_response(),
            Phase::ReadingHeader => self.advance_header(),
            Phase::ReadingBody => self.advance_body(),
            Phase::DiscardingMessage { .. } => self.advance_discarding_message(),
            Phase::DiscardingLine => {
                let rest = self.input.take();
                self.discard_through_line_end(&rest);
                self.phase != Phase::DiscardingLine
            }
            Phase::DiscardingChunk { .. } => {
                self.discard_chunk();
                !matches!(self.phase, Phase::DiscardingChunk { .. })
            }
            Phase::AwaitingVerdict { .. }
            | Phase::AwaitingReply(_)
            | Phase::AwaitingTls
            | Phase::AwaitingHeaderVerdict { .. }
            | Phase::Closed => false,
        }
    }

    // ----- command lines -----

    fn advance_command(&mut self) -> bool {
        match self.take_line() {
            None => false,
            Some(Err(LineTooLong)) => {
                self.reject_long_line();
                true
            }
            Some(Ok(line)) => {
                self.execute(&line);
                true
            }
        }
    }

    /// The first line of `input` including its LF, if complete; an error if it is (or would
    /// be) longer than `max_line`.
    fn take_line(&mut self) -> Option<Result<Vec<u8>, LineTooLong>> {
        self.input.take_line(self.options.max_line)
    }

    fn reject_long_line(&mut self) {
        let rest = self.input.take();
        self.phase = Phase::DiscardingLine;
        self.discard_through_line_end(&rest);
        self.error(LINE_TOO_LONG);
    }

    /// Drops bytes up to and including the next LF; what follows it is input again.
    fn discard_through_line_end(&mut self, bytes: &[u8]) {
        if let Some(lf) = bytes.iter().position(|&byte| byte == b'\n') {
            self.phase = Phase::Commands;
            self.input.extend(&bytes[lf + 1..]);
        }
    }

    /// Drops the buffered part of a refused BDAT chunk.
    fn discard_chunk(&mut self) {
        if let Phase::DiscardingChunk { remaining } = self.phase {
            let available = remaining.min(self.input.len() as u64);
            self.input.consume(available as usize);
            let remaining = remaining - available;
            self.phase = if remaining == 0 {
                Phase::Commands
            } else {
                Phase::DiscardingChunk { remaining }
            };
        }
    }

    fn execute(&mut self, raw: &[u8]) {
        let content = strip_line_ending(raw);
        if content.is_empty() {
            return;
        }
        if content.iter().any(|&byte| is_forbidden_in_line(byte)) {
            self.error(SYNTAX_ERROR);
            return;
        }
        let mut line = Vec::with_capacity(content.len() + CRLF.len());
        line.extend_from_slice(content);
        line.extend_from_slice(CRLF);
        let request = Request::parse(&mut line.iter()).map(Request::into_owned);
        match request {
            Ok(request) => self.dispatch(request, line),
            Err(error) => self.error(parse_error_reply(&error)),
        }
    }

    fn dispatch(&mut self, request: Request<String>, line: Vec<u8>) {
        match request {
            Request::Ehlo { host } => self.ehlo(&host),
            Request::Helo { host } => self.helo_command(&host),
            Request::StartTls => self.starttls(),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response),
            Request::Mail { from } => self.mail(from, line),
            Request::Rcpt { to } => self.rcpt(to, line),
            Request::Data => self.data(),
            Request::Bdat { chunk_size, .. } => {
                self.phase = Phase::DiscardingChunk {
                    remaining: chunk_size as u64,
                };
                self.discard_chunk();
                self.error(BDAT_NOT_SUPPORTED);
            }
            Request::Rset => self.rset(),
            Request::Noop { .. } => self.send(OK),
            Request::Help { .. } => self.send(HELP),
            Request::Vrfy { .. } => self.send(CANNOT_VRFY),
            Request::Quit => {
                self.send(BYE);
                self.actions.push_back(Action::Quit);
                self.close();
            }
            Request::Lhlo { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.error(NOT_IMPLEMENTED),
        }
    }

    /// EHLO: remembers the name and lists the extensions. An open transaction (after AUTH)
    /// is left as it is, since the upstream's is too; RSET ends both.
    fn ehlo(&mut self, host: &str) {
        self.helo = Some(sanitize_helo(host));
        let mut lines = vec![
            self.options.hostname.clone(),
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.options.max_message_size),
            "8BITMIME".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
        ];
        if self.options.smtputf8 {
            lines.push("SMTPUTF8".to_owned());
        }
        if self.options.dsn {
            lines.push("DSN".to_owned());
        }
        if self.tls_active {
            lines.push("AUTH PLAIN LOGIN".to_owned());
        } else if self.options.starttls_available {
            lines.push("STARTTLS".to_owned());
        }
        let mut reply = String::new();
        let last = lines.len() - 1;
        for (index, line) in lines.iter().enumerate() {
            let separator = if index == last { ' ' } else { '-' };
            reply.push_str(&format!("250{separator}{line}\r\n"));
        }
        self.send_vec(reply.into_bytes());
    }

    fn helo_command(&mut self, host: &str) {
        self.helo = Some(sanitize_helo(host));
        self.send_vec(format!("250 {}\r\n", self.options.hostname).into_bytes());
    }

    fn starttls(&mut self) {
        if self.tls_active {
            self.error(TLS_ALREADY_ACTIVE);
        } else if !self.options.starttls_available {
            self.error(STARTTLS_UNAVAILABLE);
        } else {
            self.send(READY_TLS);
            self.actions.push_back(Action::StartTls);
            // CVE-2011-0411: whatever followed STARTTLS was sent in the clear.
            self.input.clear();
            self.phase = Phase::AwaitingTls;
        }
    }

    // ----- AUTH -----

    fn auth(&mut self, mechanism: u64, initial_response: &str) {
        if self.login.is_some() {
            self.error(ALREADY_AUTHENTICATED);
        } else if !self.tls_active {
            self.error(ENCRYPTION_REQUIRED);
        } else if self.helo.is_none() {
            self.error(EHLO_FIRST);
        } else if mechanism == AUTH_PLAIN {
            if initial_response.is_empty() {
                self.send(PROMPT_PLAIN);
                self.phase = Phase::SaslResponse(SaslStep::Plain);
            } else {
                self.plain_response(initial_response.as_bytes());
            }
        } else if mechanism == AUTH_LOGIN {
            if initial_response.is_empty() {
                self.send(PROMPT_USERNAME);
                self.phase = Phase::SaslResponse(SaslStep::LoginUsername);
            } else {
                self.login_username(initial_response.as_bytes());
            }
        } else {
            self.error(UNRECOGNIZED_MECHANISM);
        }
    }

    /// Reads the client's answer to a `334` prompt.
    fn advance_sasl_response(&mut self) -> bool {
        let line = match self.take_line() {
            None => return false,
            Some(Err(LineTooLong)) => {
                self.reject_long_line();
                return true;
            }
            Some(Ok(line)) => line,
        };
        let Phase::SaslResponse(step) = std::mem::replace(&mut self.phase, Phase::Commands) else {
            return true;
        };
        if line.trim_ascii() == b"*" {
            self.error(AUTH_CANCELLED);
            return true;
        }
        match step {
            SaslStep::Plain => self.plain_response(&line),
            SaslStep::LoginUsername => self.login_username(&line),
            SaslStep::LoginPassword { login } => self.login_password(login, &line),
        }
        true
    }

    /// A base64 SASL PLAIN message, from the AUTH line or the prompt.
    fn plain_response(&mut self, base64: &[u8]) {
        match sasl::decode_base64(base64).and_then(|message| sasl::decode_plain(&message)) {
            Ok(credentials) => {
                self.request_verdict(Mechanism::Plain, credentials.login, credentials.password)
            }
            Err(SaslError::AuthzidMismatch) => self.refuse_auth(),
            Err(_) => self.error(INVALID_AUTH_DATA),
        }
    }

    /// The base64 username of AUTH LOGIN, from the AUTH line or the prompt.
    fn login_username(&mut self, base64: &[u8]) {
        match login_field(base64) {
            Ok(login) => {
                self.send(PROMPT_PASSWORD);
                self.phase = Phase::SaslResponse(SaslStep::LoginPassword { login });
            }
            Err(_) => self.error(INVALID_AUTH_DATA),
        }
    }

    fn login_password(&mut self, login: String, base64: &[u8]) {
        match login_field(base64) {
            Ok(password) => self.request_verdict(Mechanism::Login, login, Secret::new(password)),
            Err(_) => self.error(INVALID_AUTH_DATA),
        }
    }

    fn request_verdict(&mut self, mechanism: Mechanism, login: String, password: Secret<String>) {
        self.actions.push_back(Action::Authenticate(ClientLogin {
            mechanism: mechanism.as_str(),
            login: login.clone(),
            password,
        }));
        self.phase = Phase::AwaitingVerdict { login };
    }

    fn refuse_auth(&mut self) {
        self.failed_auths = self.failed_auths.saturating_add(1);
        self.send(AUTH_INVALID);
        if self.failed_auths >= self.options.max_failures {
            self.send(TOO_MANY_FAILURES);
            self.close();
        }
    }

    // ----- transactions -----

    fn mail(&mut self, from: MailFrom<String>, line: Vec<u8>) {
        if self.login.is_none() {
            self.error(AUTH_REQUIRED);
        } else if self.transaction {
            self.error(NESTED_MAIL);
        } else if std::str::from_utf8(&line).is_err() {
            self.error(ARGUMENT_SYNTAX_ERROR);
        } else if from.address.is_empty() && !is_null_path(&line) {
            // smtp-proto reads `<postmaster>` as "", which is not a valid reverse-path and
            // would otherwise pass for the null sender.
            self.error(INVALID_SENDER);
        } else if from.size as u64 > self.options.max_message_size {
            self.error(SIZE_EXCEEDED);
        } else {
            self.actions.push_back(Action::MailFrom {
                address: from.address,
                line,
            });
            self.phase = Phase::AwaitingReply(Pending::Mail);
        }
    }

    fn rcpt(&mut self, to: RcptTo<String>, line: Vec<u8>) {
        if self.login.is_none() {
            self.error(AUTH_REQUIRED);
        } else if !self.transaction {
            self.error(NEED_MAIL);
        } else if std::str::from_utf8(&line).is_err() {
            self.error(ARGUMENT_SYNTAX_ERROR);
        } else if to.address.is_empty() && is_null_path(&line) {
            self.error(INVALID_RECIPIENT);
        } else {
            let address = if to.address.is_empty() {
                // smtp-proto's reading of `<Postmaster>` (RFC 5321 section 4.5.1).
                "postmaster".to_owned()
            } else {
                to.address
            };
            self.actions.push_back(Action::RcptTo { address, line });
            self.phase = Phase::AwaitingReply(Pending::Rcpt);
        }
    }

    /// DATA: `503` without a transaction, `554` when no recipient was accepted (RFC 2920
    /// section 3.1: a pipelined DATA after refused RCPTs must fail), else to the session.
    fn data(&mut self) {
        if self.login.is_none() {
            self.error(AUTH_REQUIRED);
        } else if !self.transaction {
            self.error(NEED_MAIL);
        } else if self.recipients == 0 {
            self.error(NO_VALID_RECIPIENTS);
        } else {
            self.actions.push_back(Action::Data);
            self.phase = Phase::AwaitingReply(Pending::Data);
        }
    }

    fn rset(&mut self) {
        if self.login.is_none() {
            self.send(OK);
        } else {
            self.actions.push_back(Action::Reset);
            self.phase = Phase::AwaitingReply(Pending::Reset);
        }
    }

    fn end_transaction(&mut self) {
        self.transaction = false;
        self.recipients = 0;
    }

    // ----- message data -----

    fn start_message(&mut self) {
        self.scan = Scan::LineStart;
        self.message_size = 0;
        self.header = Vec::new();
        self.phase = Phase::ReadingHeader;
    }

    /// Collects the header block, a bounded slice of input at a time so that it never grows
    /// far past `max_header_bytes`.
    fn advance_header(&mut self) -> bool {
        if self.input.is_empty() {
            return false;
        }
        let budget = self
            .options
            .max_header_bytes
            .saturating_sub(self.header.len())
            .saturating_add(1);
        let take = self.input.len().min(budget);
        let before = self.header.len();
        let (consumed, stop) = scan(&mut self.scan, &self.input[..take], &mut self.header, true);
        self.input.consume(consumed);
        self.message_size = self
            .message_size
            .saturating_add((self.header.len() - before) as u64);
        if self.message_size > self.options.max_message_size {
            self.overflow(Overflow::Size, stop == ScanStop::End);
        } else if self.header.len() > self.options.max_header_bytes {
            self.overflow(Overflow::Header, stop == ScanStop::End);
        } else if stop != ScanStop::NeedMore {
            let header = std::mem::take(&mut self.header);
            self.actions.push_back(Action::MessageHeader(header));
            self.phase = Phase::AwaitingHeaderVerdict {
                ended: stop == ScanStop::End,
            };
        }
        true
    }

    fn advance_body(&mut self) -> bool {
        if self.input.is_empty() {
            return false;
        }
        // Unstuffing only shrinks and line-end repair rarely grows: one allocation.
        let mut chunk = Vec::with_capacity(self.input.len() + 2);
        let (consumed, stop) = scan(&mut self.scan, &self.input, &mut chunk, false);
        self.input.consume(consumed);
        self.message_size = self.message_size.saturating_add(chunk.len() as u64);
        if self.message_size > self.options.max_message_size {
            self.overflow(Overflow::Size, stop == ScanStop::End);
            return true;
        }
        if !chunk.is_empty() {
            self.actions.push_back(Action::MessageBody(chunk));
        }
        if stop == ScanStop::End {
            self.actions.push_back(Action::MessageEnd);
            self.phase = Phase::AwaitingReply(Pending::MessageEnd);
        }
        true
    }

    fn advance_discarding_message(&mut self) -> bool {
        if self.input.is_empty() {
            return false;
        }
        let mut discarded = Vec::new();
        let (consumed, stop) = scan(&mut self.scan, &self.input, &mut discarded, false);
        self.input.consume(consumed);
        if stop == ScanStop::End {
            if let Phase::DiscardingMessage { reply } =
                std::mem::replace(&mut self.phase, Phase::Commands)
            {
                self.end_message(reply);
            }
        }
        true
    }

    /// A limit was broken: tell the session, then drop the rest of the message.
    fn overflow(&mut self, overflow: Overflow, ended: bool) {
        self.header = Vec::new();
        self.actions.push_back(Action::MessageTooLarge);
        let reply = match overflow {
            Overflow::Size => SIZE_EXCEEDED,
            Overflow::Header => HEADER_TOO_LARGE,
        }
        .to_vec();
        if ended {
            self.end_message(reply);
        } else {
            self.phase = Phase::DiscardingMessage { reply };
        }
    }

    /// A refused message is over: its reply goes out and the transaction ends.
    fn end_message(&mut self, reply: Vec<u8>) {
        self.phase = Phase::Commands;
        self.end_transaction();
        self.send_session_reply(reply);
    }

    // ----- replies -----

    /// Sends a reply the machine generated for a refused command, closing after
    /// `max_bad_commands` of them.
    fn error(&mut self, reply: &[u8]) {
        self.bad_commands = self.bad_commands.saturating_add(1);
        self.send(reply);
        if self.bad_commands >= self.options.max_bad_commands {
            self.send(TOO_MANY_ERRORS);
            self.close();
        }
    }

    /// Sends a reply that came from the session (or the upstream); `421` closes.
    fn send_session_reply(&mut self, reply: Vec<u8>) {
        let closing = reply_code(&reply) == Some(CODE_CLOSING);
        self.send_vec(with_crlf(reply));
        if closing {
            self.close();
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.send_vec(bytes.to_vec());
    }

    fn send_vec(&mut self, bytes: Vec<u8>) {
        self.actions.push_back(Action::Send(bytes));
    }

    fn close(&mut self) {
        self.actions.push_back(Action::Close);
        self.phase = Phase::Closed;
        self.input = Input::default();
        self.header = Vec::new();
    }
}

/// A command line longer than `max_line`.
struct LineTooLong;

/// Bytes received and not yet consumed, and how far a line end has been looked for in
/// them: a command line trickled in a byte per read is searched once in all, not once per
/// read (which would make an 8 KiB line cost 32 million comparisons).
#[derive(Debug, Default)]
struct Input {
    bytes: Vec<u8>,
    /// `bytes[..searched]` holds no LF. Every change at the front resets it.
    searched: usize,
}

impl std::ops::Deref for Input {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Input {
    fn extend(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Drops the first `n` bytes.
    fn consume(&mut self, n: usize) {
        self.bytes.drain(..n);
        self.searched = 0;
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.searched = 0;
    }

    /// All of it, leaving nothing.
    fn take(&mut self) -> Vec<u8> {
        self.searched = 0;
        std::mem::take(&mut self.bytes)
    }

    /// The first line including its LF, if complete; an error if it is (or would be)
    /// longer than `limit`.
    fn take_line(&mut self, limit: usize) -> Option<Result<Vec<u8>, LineTooLong>> {
        let window = self.bytes.len().min(limit);
        let from = self.searched.min(window);
        match self.bytes[from..window]
            .iter()
            .position(|&byte| byte == b'\n')
        {
            Some(lf) => {
                self.searched = 0;
                Some(Ok(self.bytes.drain(..=from + lf).collect()))
            }
            None if self.bytes.len() >= limit => {
                self.searched = 0;
                Some(Err(LineTooLong))
            }
            None => {
                self.searched = window;
                None
            }
        }
    }
}

/// The reply code of a reply (its first three digits), if it has one.
fn reply_code(reply: &[u8]) -> Option<u16> {
    match reply {
        [a, b, c, ..] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

fn with_crlf(mut reply: Vec<u8>) -> Vec<u8> {
    if !reply.ends_with(b"\n") {
        reply.extend_from_slice(CRLF);
    }
    reply
}

/// The line without its LF or CRLF.
fn strip_line_ending(line: &[u8]) -> &[u8] {
    let content = line.strip_suffix(b"\n").unwrap_or(line);
    content.strip_suffix(b"\r").unwrap_or(content)
}

/// Control characters other than HT have no place in a command line; a lone CR in particular
/// could end the line early for the upstream.
fn is_forbidden_in_line(byte: u8) -> bool {
    (byte < 0x20 && byte != b'\t') || byte == 0x7f
}

/// Whether the path in a MAIL or RCPT line is `<>`.
fn is_null_path(line: &[u8]) -> bool {
    match line.iter().position(|&byte| byte == b'<') {
        Some(open) => line.get(open + 1) == Some(&b'>'),
        None => false,
    }
}

/// An AUTH LOGIN username or password: base64 of non-empty UTF-8, at most
/// [`sasl::MAX_FIELD_LEN`] bytes.
fn login_field(base64: &[u8]) -> Result<String, SaslError> {
    let bytes = sasl::decode_base64(base64)?;
    if bytes.is_empty() {
        return Err(SaslError::WrongFieldCount);
    }
    if bytes.len() > sasl::MAX_FIELD_LEN {
        return Err(SaslError::FieldTooLong);
    }
    String::from_utf8(bytes).map_err(|_| SaslError::InvalidUtf8)
}

/// The EHLO/HELO name as kept: printable ASCII only, at most [`MAX_HELO`] characters.
fn sanitize_helo(host: &str) -> String {
    host.chars()
        .take(MAX_HELO)
        .map(|ch| if ch.is_ascii_graphic() { ch } else { '?' })
        .collect()
}

/// The reply to a line smtp-proto could not parse.
fn parse_error_reply(error: &ParseError) -> &'static [u8] {
    match error {
        ParseError::UnknownCommand => UNRECOGNIZED_COMMAND,
        ParseError::InvalidSenderAddress => INVALID_SENDER,
        ParseError::InvalidRecipientAddress => INVALID_RECIPIENT,
        ParseError::SyntaxError { .. } => ARGUMENT_SYNTAX_ERROR,
        ParseError::InvalidParameter { .. } => INVALID_PARAMETER,
        ParseError::UnsupportedParameter { .. } => UNSUPPORTED_PARAMETER,
        ParseError::NeedsMoreData { .. }
        | ParseError::ResponseTooLong
        | ParseError::InvalidResponse { .. } => SYNTAX_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(tls_active: bool) -> ConversationOptions {
        ConversationOptions {
            tls_active,
            starttls_available: !tls_active,
            hostname: "mx.example.org".to_owned(),
            ..ConversationOptions::default()
        }
    }

    /// Port 465.
    fn implicit_tls() -> Conversation {
        Conversation::new(options(true))
    }

    /// Port 587 before STARTTLS.
    fn starttls_listener() -> Conversation {
        Conversation::new(options(false))
    }

    /// The actions available now, rendered as one string: replies as text, others in `<>`.
    fn drain(m: &mut Conversation) -> String {
        let mut out = String::new();
        while let Some(action) = m.next_action() {
            match action {
                Action::Send(bytes) => out.push_str(&String::from_utf8_lossy(&bytes)),
                Action::StartTls => out.push_str("<starttls>"),
                Action::Authenticate(ClientLogin {
                    mechanism,
                    login,
                    password,
                }) => out.push_str(&format!("<auth {mechanism} {login} {}>", password.expose())),
                Action::MailFrom { address, line } => out.push_str(&format!(
                    "<mail {address:?} {:?}>",
                    String::from_utf8_lossy(&line)
                )),
                Action::RcptTo { address, line } => out.push_str(&format!(
                    "<rcpt {address:?} {:?}>",
                    String::from_utf8_lossy(&line)
                )),
                Action::Data => out.push_str("<data>"),
                Action::MessageHeader(bytes) => {
                    out.push_str(&format!("<header {:?}>", String::from_utf8_lossy(&bytes)))
                }
                Action::MessageBody(bytes) => {
                    out.push_str(&format!("<body {:?}>", String::from_utf8_lossy(&bytes)))
                }
                Action::MessageEnd => out.push_str("<end>"),
                Action::MessageTooLarge => out.push_str("<too large>"),
                Action::Reset => out.push_str("<reset>"),
                Action::Quit => out.push_str("<quit>"),
                Action::Close => out.push_str("<close>"),
            }
        }
        out
    }

    fn exchange(m: &mut Conversation, input: &[u8]) -> String {
        m.feed(input);
        drain(m)
    }

    /// A machine past EHLO and a granted AUTH PLAIN as alice.
    fn authenticated() -> Conversation {
        let mut m = implicit_tls();
        exchange(
            &mut m,
            b"EHLO client.example\r\nAUTH PLAIN AGFsaWNlAHB3\r\n",
        );
        m.auth_granted();
        assert_eq!(drain(&mut m), "235 2.7.0 Authentication successful\r\n");
        m
    }

    /// An authenticated machine inside a transaction with one recipient, after DATA's 354.
    fn in_message() -> Conversation {
        let mut m = authenticated();
        exchange(&mut m, b"MAIL FROM:<alice@example.org>\r\n");
        m.reply(b"250 2.1.0 Ok\r\n".to_vec());
        exchange(&mut m, b"RCPT TO:<bob@example.net>\r\n");
        m.reply(b"250 2.1.5 Ok\r\n".to_vec());
        drain(&mut m);
        assert_eq!(exchange(&mut m, b"DATA\r\n"), "<data>");
        m.data_accepted();
        assert_eq!(
            drain(&mut m),
            "354 Start mail input; end with <CRLF>.<CRLF>\r\n"
        );
        m
    }

    const EHLO_TLS: &str = "250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n\
                            250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n";
    const EHLO_STARTTLS: &str = "250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n\
                                 250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n";

    // ----- greeting, EHLO, HELO -----

    #[test]
    fn greeting_names_the_host() {
        assert_eq!(
            implicit_tls().greeting(),
            b"220 mx.example.org ESMTP postern\r\n"
        );
    }

    #[test]
    fn ehlo_over_tls_advertises_auth() {
        let mut m = implicit_tls();
        assert_eq!(exchange(&mut m, b"EHLO client.example\r\n"), EHLO_TLS);
        assert_eq!(m.helo(), Some("client.example"));
    }

    #[test]
    fn ehlo_before_tls_advertises_starttls_not_auth() {
        assert_eq!(
            exchange(&mut starttls_listener(), b"EHLO client.example\r\n"),
            EHLO_STARTTLS
        );
    }

    #[test]
    fn ehlo_on_plaintext_without_starttls_advertises_neither() {
        let mut m = Conversation::new(ConversationOptions {
            max_message_size: 1000,
            ..ConversationOptions::default()
        });
        assert_eq!(
            exchange(&mut m, b"EHLO x\r\n"),
            "250-localhost\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n\
             250 ENHANCEDSTATUSCODES\r\n"
        );
    }

    #[test]
    fn ehlo_advertises_smtputf8_and_dsn_when_the_upstream_has_them() {
        let mut m = Conversation::new(ConversationOptions {
            smtputf8: true,
            dsn: true,
            ..options(true)
        });
        assert_eq!(
            exchange(&mut m, b"ehlo client.example\r\n"),
            "250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n250-8BITMIME\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-DSN\r\n250 AUTH PLAIN LOGIN\r\n"
        );
    }

    #[test]
    fn helo_gets_one_line() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"HELO printer\r\n"),
            "250 mx.example.org\r\n"
        );
        assert_eq!(m.helo(), Some("printer"));
    }

    #[test]
    fn helo_name_is_sanitized_and_capped() {
        let mut m = implicit_tls();
        exchange(&mut m, "EHLO h\u{e9}llo\r\n".as_bytes());
        assert_eq!(m.helo(), Some("h?llo"));
        let mut m = implicit_tls();
        let mut long = b"EHLO ".to_vec();
        long.extend([b'a'; 255]);
        long.extend(b"\r\n");
        exchange(&mut m, &long);
        assert_eq!(m.helo().map(str::len), Some(255));
    }

    #[test]
    fn ehlo_without_a_name_is_a_syntax_error() {
        assert_eq!(
            exchange(&mut implicit_tls(), b"EHLO\r\n"),
            "501 5.5.2 Syntax error in parameters or arguments\r\n"
        );
    }

    // ----- STARTTLS -----

    #[test]
    fn starttls_then_ehlo_again() {
        let mut m = starttls_listener();
        assert_eq!(exchange(&mut m, b"EHLO client\r\n"), EHLO_STARTTLS);
        assert_eq!(
            exchange(&mut m, b"STARTTLS\r\n"),
            "220 2.0.0 Ready to start TLS\r\n<starttls>"
        );
        assert!(!m.wants_input());
        m.tls_established();
        assert_eq!(m.helo(), None);
        assert_eq!(
            exchange(&mut m, b"AUTH PLAIN AGFsaWNlAHB3\r\n"),
            "503 5.5.1 EHLO first\r\n"
        );
        assert_eq!(exchange(&mut m, b"EHLO client\r\n"), EHLO_TLS);
        assert_eq!(
            exchange(&mut m, b"AUTH PLAIN AGFsaWNlAHB3\r\n"),
            "<auth plain alice pw>"
        );
    }

    #[test]
    fn input_pipelined_after_starttls_is_discarded() {
        // CVE-2011-0411: the injected command must not run inside the TLS session.
        let mut m = starttls_listener();
        assert_eq!(
            exchange(&mut m, b"EHLO c\r\nSTARTTLS\r\nRSET\r\n"),
            format!("{EHLO_STARTTLS}220 2.0.0 Ready to start TLS\r\n<starttls>")
        );
        assert_eq!(exchange(&mut m, b"NOOP\r\n"), "");
        m.tls_established();
        assert_eq!(drain(&mut m), "");
        assert_eq!(exchange(&mut m, b"NOOP\r\n"), "250 2.0.0 OK\r\n");
    }

    #[test]
    fn starttls_refused_when_active_or_unavailable() {
        assert_eq!(
            exchange(&mut implicit_tls(), b"STARTTLS\r\n"),
            "503 5.5.1 TLS already active\r\n"
        );
        assert_eq!(
            exchange(
                &mut Conversation::new(ConversationOptions::default()),
                b"STARTTLS\r\n"
            ),
            "502 5.5.1 STARTTLS not available\r\n"
        );
    }

    // ----- AUTH -----

    #[test]
    fn auth_before_tls_requires_encryption() {
        let mut m = starttls_listener();
        exchange(&mut m, b"EHLO c\r\n");
        assert_eq!(
            exchange(&mut m, b"AUTH LOGIN\r\nAUTH PLAIN AGFsaWNlAHB3\r\n"),
            "538 5.7.11 Encryption required for requested authentication mechanism\r\n\
             538 5.7.11 Encryption required for requested authentication mechanism\r\n"
        );
    }

    #[test]
    fn auth_before_ehlo() {
        assert_eq!(
            exchange(&mut implicit_tls(), b"AUTH LOGIN\r\n"),
            "503 5.5.1 EHLO first\r\n"
        );
    }

    #[test]
    fn auth_after_helo_is_allowed() {
        assert_eq!(
            exchange(
                &mut implicit_tls(),
                b"HELO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\n"
            ),
            "250 mx.example.org\r\n<auth plain alice pw>"
        );
    }

    #[test]
    fn auth_login_prompts_exactly_as_outlook_expects() {
        let mut m = implicit_tls();
        exchange(&mut m, b"EHLO c\r\n");
        assert_eq!(exchange(&mut m, b"AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
        assert_eq!(exchange(&mut m, b"YWxpY2U=\r\n"), "334 UGFzc3dvcmQ6\r\n");
        assert_eq!(exchange(&mut m, b"cHc=\r\n"), "<auth login alice pw>");
        m.auth_granted();
        assert_eq!(drain(&mut m), "235 2.7.0 Authentication successful\r\n");
        assert_eq!(m.login(), Some("alice"));
    }

    #[test]
    fn auth_login_with_initial_response_skips_the_username_prompt() {
        let mut m = implicit_tls();
        exchange(&mut m, b"EHLO c\r\n");
        assert_eq!(
            exchange(&mut m, b"AUTH LOGIN YWxpY2U=\r\n"),
            "334 UGFzc3dvcmQ6\r\n"
        );
        assert_eq!(exchange(&mut m, b"cHc\r\n"), "<auth login alice pw>");
    }

    #[test]
    fn auth_plain_with_and_without_initial_response() {
        let mut m = implicit_tls();
        exchange(&mut m, b"EHLO c\r\n");
        assert_eq!(exchange(&mut m, b"AUTH PLAIN\r\n"), "334 \r\n");
        assert_eq!(exchange(&mut m, b"AGFsaWNl"), "");
        assert_eq!(exchange(&mut m, b"AHB3\r\n"), "<auth plain alice pw>");
        m.auth_unavailable();
        assert_eq!(
            exchange(&mut m, b"auth plain AGFsaWNlAHB3\r\n"),
            "454 4.7.0 Temporary authentication failure\r\n<auth plain alice pw>"
        );
    }

    #[test]
    fn auth_prompt_lines_are_not_commands() {
        let mut m = implicit_tls();
        exchange(&mut m, b"EHLO c\r\n");
        // "QUIT" is not base64 of anything useful: the AUTH fails, the connection stays.
        assert_eq!(
            exchange(&mut m, b"AUTH LOGIN\r\nQUIT\r\nNOOP\r\n"),
            "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n501 5.5.2 Invalid authentication data\r\n"
        );
    }

    #[test]
    fn auth_cancelled_at_any_prompt() {
        let mut m = implicit_tls();
        exchange(&mut m, b"EHLO c\r\n");
        assert_eq!(
            exchange(
                &mut m,
                b"AUTH PLAIN\r\n*\r\nAUTH LOGIN\r\n*\r\nAUTH LOGIN YWxpY2U=\r\n*\r\nNOOP\r\n"
            ),
            "334 \r\n501 5.0.0 Authentication cancelled\r\n\
             334 VXNlcm5hbWU6\r\n501 5.0.0 Authentication cancelled\r\n\
             334 UGFzc3dvcmQ6\r\n501 5.0.0 Authentication cancelled\r\n\
             250 2.0.0 OK\r\n"
        );
        assert_eq!(m.failed_auths, 0);
    }

    #[test]
    fn malformed_auth_data_is_a_bad_command_not_a_failed_login() {
        let mut m = implicit_tls();
        exchange(&mut m, b"EHLO c\r\n");
        // bad base64; base64("alice") without NULs; "=" (empty); empty LOGIN username
        assert_eq!(
            exchange(
                &mut m,
                b"AUTH PLAIN !!!\r\nAUTH PLAIN YWxpY2U=\r\nAUTH PLAIN =\r\nAUTH LOGIN\r\n=\r\n"
            ),
            "501 5.5.2 Invalid authentication data\r\n\
             501 5.5.2 Invalid authentication data\r\n\
             501 5.5.2 Invalid authentication data\r\n\
             334 VXNlcm5hbWU6\r\n501 5.5.2 Invalid authentication data\r\n"
        );
        assert_eq!(m.failed_auths, 0);
        assert_eq!(m.bad_commands, 4);
    }

    #[test]
    fn auth_as_another_user_is_a_failed_login() {
        // base64("bob\0alice\0pw")
        let mut m = implicit_tls();
        exchange(&mut m, b"EHLO c\r\n");
        assert_eq!(
            exchange(&mut m, b"AUTH PLAIN Ym9iAGFsaWNlAHB3\r\n"),
            "535 5.7.8 Authentication credentials invalid\r\n"
        );
        assert_eq!(m.failed_auths, 1);
    }

    #[test]
    fn unknown_mechanisms_are_refused() {
        let mut m = implicit_tls();
        exchange(&mut m, b"EHLO c\r\n");
        assert_eq!(
            exchange(
                &mut m,
                b"AUTH CRAM-MD5\r\nAUTH XOAUTH2 dXNlcg==\r\nAUTH FOOBAR\r\n"
            ),
            "504 5.5.4 Unrecognized authentication type\r\n\
             504 5.5.4 Unrecognized authentication type\r\n\
             504 5.5.4 Unrecognized authentication type\r\n"
        );
    }

    #[test]
    fn auth_after_success_is_refused() {
        let mut m = authenticated();
        assert_eq!(
            exchange(&mut m, b"AUTH PLAIN AGFsaWNlAHB3\r\n"),
            "503 5.5.1 Already authenticated\r\n"
        );
    }

    #[test]
    fn refused_auths_close_after_three() {
        let mut m = implicit_tls();
        exchange(&mut m, b"EHLO c\r\n");
        for _ in 0..2 {
            exchange(&mut m, b"AUTH PLAIN AGFsaWNlAHB3\r\n");
            m.auth_refused();
            assert_eq!(
                drain(&mut m),
                "535 5.7.8 Authentication credentials invalid\r\n"
            );
        }
        exchange(&mut m, b"AUTH PLAIN AGFsaWNlAHB3\r\nNOOP\r\n");
        m.auth_refused();
        assert_eq!(
            drain(&mut m),
            "535 5.7.8 Authentication credentials invalid\r\n\
             421 4.7.0 Too many failed authentications\r\n<close>"
        );
        assert!(!m.wants_input());
        assert_eq!(m.login(), None);
    }

    #[test]
    fn unavailable_is_not_a_failure() {
        let mut m = Conversation::new(ConversationOptions {
            max_failures: 1,
            ..options(true)
        });
        exchange(&mut m, b"EHLO c\r\n");
        for _ in 0..3 {
            exchange(&mut m, b"AUTH PLAIN AGFsaWNlAHB3\r\n");
            m.auth_unavailable();
            assert_eq!(
                drain(&mut m),
                "454 4.7.0 Temporary authentication failure\r\n"
            );
        }
        assert_eq!(m.login(), None);
    }

    #[test]
    fn input_after_auth_waits_for_the_verdict() {
        let mut m = implicit_tls();
        exchange(&mut m, b"EHLO c\r\n");
        assert_eq!(
            exchange(
                &mut m,
                b"AUTH PLAIN AGFsaWNlAHB3\r\nMAIL FROM:<alice@example.org>\r\n"
            ),
            "<auth plain alice pw>"
        );
        assert_eq!(exchange(&mut m, b"NOOP\r\n"), "");
        m.auth_granted();
        assert_eq!(
            drain(&mut m),
            "235 2.7.0 Authentication successful\r\n\
             <mail \"alice@example.org\" \"MAIL FROM:<alice@example.org>\\r\\n\">"
        );
    }

    #[test]
    fn verdict_calls_without_pending_auth_are_ignored() {
        let mut m = implicit_tls();
        m.auth_granted();
        m.auth_refused();
        m.auth_unavailable();
        assert_eq!(drain(&mut m), "");
        assert_eq!(m.login(), None);
        assert_eq!(m.failed_auths, 0);
    }

    #[test]
    fn debug_never_shows_credentials_or_buffers() {
        let mut m = implicit_tls();
        // base64("\0alice\0hunter2"), then a pipelined line still buffered
        exchange(
            &mut m,
            b"EHLO c\r\nAUTH PLAIN AGFsaWNlAGh1bnRlcjI=\r\nMAIL FROM:<secret@example.org>\r\n",
        );
        let debug = format!("{m:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("secret"),
            "{debug}"
        );
        let action = Action::Authenticate(ClientLogin {
            mechanism: Mechanism::Plain.as_str(),
            login: "alice".to_owned(),
            password: Secret::new("hunter2".to_owned()),
        });
        assert_eq!(format!("{action:?}"), "Authenticate(plain)");
        let header = Action::MessageHeader(b"Subject: secret\r\n\r\n".to_vec());
        assert_eq!(format!("{header:?}"), "MessageHeader(19 bytes)");
    }

    // ----- commands before AUTH -----

    #[test]
    fn transaction_commands_need_auth() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(
                &mut m,
                b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
            ),
            format!(
                "{EHLO_TLS}530 5.7.0 Authentication required\r\n\
                 530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n"
            )
        );
    }

    #[test]
    fn local_commands_before_auth() {
        let mut m = starttls_listener();
        assert_eq!(
            exchange(
                &mut m,
                b"NOOP\r\nRSET\r\nHELP\r\nVRFY alice\r\nEXPN staff\r\nQUIT\r\nNOOP\r\n"
            ),
            "250 2.0.0 OK\r\n250 2.0.0 OK\r\n214 2.0.0 See RFC 5321 and RFC 6409\r\n\
             252 2.1.5 Cannot VRFY user\r\n502 5.5.1 Command not implemented\r\n\
             221 2.0.0 Bye\r\n<quit><close>"
        );
        assert!(!m.wants_input());
        assert_eq!(exchange(&mut m, b"NOOP\r\n"), "");
    }

    // ----- transactions -----

    #[test]
    fn mail_rcpt_data_message() {
        let mut m = authenticated();
        assert_eq!(
            exchange(&mut m, b"MAIL FROM:<alice@example.org> SIZE=42 BODY=8BITMIME\r\n"),
            "<mail \"alice@example.org\" \"MAIL FROM:<alice@example.org> SIZE=42 BODY=8BITMIME\\r\\n\">"
        );
        m.reply(b"250 2.1.0 Ok\r\n".to_vec());
        assert_eq!(
            exchange(&mut m, b"RCPT TO:<bob@example.net>\r\n"),
            "250 2.1.0 Ok\r\n<rcpt \"bob@example.net\" \"RCPT TO:<bob@example.net>\\r\\n\">"
        );
        m.reply(b"250 2.1.5 Ok\r\n".to_vec());
        assert_eq!(m.recipients(), 1);
        assert_eq!(exchange(&mut m, b"DATA\r\n"), "250 2.1.5 Ok\r\n<data>");
        m.data_accepted();
        assert_eq!(
            exchange(
                &mut m,
                b"From: alice@example.org\r\nSubject: hi\r\n\r\nHello\r\n..dot\r\n.\r\n"
            ),
            "354 Start mail input; end with <CRLF>.<CRLF>\r\n\
             <header \"From: alice@example.org\\r\\nSubject: hi\\r\\n\\r\\n\">"
        );
        m.accept_message();
        assert_eq!(drain(&mut m), "<body \"Hello\\r\\n..dot\\r\\n\"><end>");
        m.reply(b"250 2.0.0 Ok: queued as 12345\r\n".to_vec());
        assert_eq!(drain(&mut m), "250 2.0.0 Ok: queued as 12345\r\n");
        assert_eq!(m.recipients(), 0);
        // The transaction is over: a new one may start.
        assert_eq!(
            exchange(&mut m, b"MAIL FROM:<>\r\n"),
            "<mail \"\" \"MAIL FROM:<>\\r\\n\">"
        );
    }

    #[test]
    fn nested_mail_and_missing_mail_or_rcpt() {
        let mut m = authenticated();
        assert_eq!(
            exchange(&mut m, b"RCPT TO:<bob@example.net>\r\nDATA\r\n"),
            "503 5.5.1 Need MAIL command\r\n503 5.5.1 Need MAIL command\r\n"
        );
        exchange(&mut m, b"MAIL FROM:<alice@example.org>\r\n");
        m.reply(b"250 2.1.0 Ok\r\n".to_vec());
        assert_eq!(
            exchange(&mut m, b"MAIL FROM:<alice@example.org>\r\nDATA\r\n"),
            "250 2.1.0 Ok\r\n503 5.5.1 Nested MAIL command\r\n554 5.5.1 No valid recipients\r\n"
        );
    }

    #[test]
    fn refused_mail_opens_no_transaction() {
        let mut m = authenticated();
        exchange(&mut m, b"MAIL FROM:<ceo@example.org>\r\n");
        m.reply(b"553 5.7.1 Sender address not yours\r\n".to_vec());
        assert_eq!(
            exchange(&mut m, b"RCPT TO:<bob@example.net>\r\n"),
            "553 5.7.1 Sender address not yours\r\n503 5.5.1 Need MAIL command\r\n"
        );
    }

    #[test]
    fn refused_rcpt_is_not_counted_and_data_fails() {
        let mut m = authenticated();
        exchange(&mut m, b"MAIL FROM:<alice@example.org>\r\n");
        m.reply(b"250 2.1.0 Ok\r\n".to_vec());
        exchange(&mut m, b"RCPT TO:<bob@example.net>\r\n");
        m.reply(b"451 4.7.1 Recipient quota exceeded\r\n".to_vec());
        assert_eq!(m.recipients(), 0);
        assert_eq!(
            exchange(&mut m, b"DATA\r\n"),
            "451 4.7.1 Recipient quota exceeded\r\n554 5.5.1 No valid recipients\r\n"
        );
    }

    #[test]
    fn refused_data_keeps_the_transaction() {
        let mut m = authenticated();
        exchange(&mut m, b"MAIL FROM:<alice@example.org>\r\n");
        m.reply(b"250 2.1.0 Ok\r\n".to_vec());
        exchange(&mut m, b"RCPT TO:<bob@example.net>\r\n");
        m.reply(b"250 2.1.5 Ok\r\n".to_vec());
        assert_eq!(exchange(&mut m, b"DATA\r\n"), "250 2.1.5 Ok\r\n<data>");
        m.reply(b"451 4.7.1 Message quota exceeded".to_vec());
        assert_eq!(drain(&mut m), "451 4.7.1 Message quota exceeded\r\n");
        assert_eq!(m.recipients(), 1);
        assert_eq!(exchange(&mut m, b"DATA\r\n"), "<data>");
    }

    #[test]
    fn a_354_given_as_reply_starts_the_message() {
        let mut m = authenticated();
        exchange(&mut m, b"MAIL FROM:<alice@example.org>\r\n");
        m.reply(b"250 2.1.0 Ok\r\n".to_vec());
        exchange(&mut m, b"RCPT TO:<bob@example.net>\r\n");
        m.reply(b"250 2.1.5 Ok\r\n".to_vec());
        exchange(&mut m, b"DATA\r\n");
        m.reply(b"354 go ahead\r\n".to_vec());
        assert_eq!(
            exchange(&mut m, b"\r\n.\r\n"),
            "354 go ahead\r\n<header \"\\r\\n\">"
        );
    }

    #[test]
    fn rset_after_auth_goes_to_the_session_and_ends_the_transaction() {
        let mut m = authenticated();
        exchange(&mut m, b"MAIL FROM:<alice@example.org>\r\n");
        m.reply(b"250 2.1.0 Ok\r\n".to_vec());
        exchange(&mut m, b"RCPT TO:<bob@example.net>\r\n");
        m.reply(b"250 2.1.5 Ok\r\n".to_vec());
        assert_eq!(exchange(&mut m, b"RSET\r\n"), "250 2.1.5 Ok\r\n<reset>");
        m.reply(b"250 2.0.0 Ok\r\n".to_vec());
        assert_eq!(m.recipients(), 0);
        assert_eq!(
            exchange(&mut m, b"DATA\r\n"),
            "250 2.0.0 Ok\r\n503 5.5.1 Need MAIL command\r\n"
        );
    }

    #[test]
    fn mail_size_over_the_limit_is_refused_locally() {
        let mut m = authenticated();
        assert_eq!(
            exchange(&mut m, b"MAIL FROM:<alice@example.org> SIZE=26214401\r\n"),
            "552 5.3.4 Message size exceeds fixed limit\r\n"
        );
        assert_eq!(
            exchange(&mut m, b"MAIL FROM:<alice@example.org> SIZE=26214400\r\n"),
            "<mail \"alice@example.org\" \"MAIL FROM:<alice@example.org> SIZE=26214400\\r\\n\">"
        );
    }

    #[test]
    fn postmaster_is_no_null_sender() {
        let mut m = authenticated();
        assert_eq!(
            exchange(&mut m, b"MAIL FROM:<Postmaster>\r\n"),
            "501 5.1.7 Invalid sender address\r\n"
        );
        assert_eq!(
            exchange(&mut m, b"MAIL FROM: <>\r\n"),
            "<mail \"\" \"MAIL FROM: <>\\r\\n\">"
        );
        m.reply(b"250 2.1.0 Ok\r\n".to_vec());
        assert_eq!(
            exchange(&mut m, b"RCPT TO:<>\r\nRCPT TO:<Postmaster>\r\n"),
            "250 2.1.0 Ok\r\n501 5.1.3 Invalid recipient address\r\n\
             <rcpt \"postmaster\" \"RCPT TO:<Postmaster>\\r\\n\">"
        );
    }

    #[test]
    fn malformed_mail_and_rcpt() {
        let mut m = authenticated();
        assert_eq!(
            exchange(
                &mut m,
                b"MAIL FROM:alice@example.org\r\nMAIL FROM:<alice@@x>\r\n\
                  MAIL FROM:<a@example.org> FROBNICATE=1\r\nMAIL FROM:<a@example.org> SIZE=x\r\n\
                  MAIL FROM:<a\xff@example.org>\r\n"
            ),
            "501 5.5.2 Syntax error in parameters or arguments\r\n\
             501 5.1.7 Invalid sender address\r\n\
             555 5.5.4 Unsupported parameter\r\n\
             501 5.5.4 Invalid parameter\r\n\
             501 5.5.2 Syntax error in parameters or arguments\r\n"
        );
    }

    #[test]
    fn control_characters_in_commands_are_refused() {
        // A lone CR could end the line early for the upstream and smuggle a second command.
        let mut m = authenticated();
        assert_eq!(
            exchange(
                &mut m,
                b"MAIL FROM:<alice@example.org>\rRCPT TO:<x@example.net>\r\n\
                  MAIL FROM:<alice@example.org>\x00\r\nNOOP\r\r\n"
            ),
            "500 5.5.2 Syntax error\r\n500 5.5.2 Syntax error\r\n500 5.5.2 Syntax error\r\n"
        );
    }

    #[test]
    fn bdat_is_refused_and_its_chunk_skipped() {
        let mut m = authenticated();
        assert_eq!(
            exchange(&mut m, b"BDAT 12 LAST\r\nQUIT\r\nQUIT\r\nNOOP\r\n"),
            "502 5.5.1 BDAT not supported, use DATA\r\n250 2.0.0 OK\r\n"
        );
        assert_eq!(
            exchange(&mut m, b"BDAT 10\r\nabc"),
            "502 5.5.1 BDAT not supported, use DATA\r\n"
        );
        assert_eq!(exchange(&mut m, b"defghij"), "");
        assert_eq!(exchange(&mut m, b"NOOP\r\n"), "250 2.0.0 OK\r\n");
    }

    #[test]
    fn bdat_with_a_huge_chunk_is_discarded_without_buffering() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"BDAT 100000 LAST\r\n"),
            "502 5.5.1 BDAT not supported, use DATA\r\n"
        );
        for _ in 0..99 {
            assert_eq!(exchange(&mut m, &[b'x'; 1000]), "");
            assert!(m.input.is_empty());
        }
        let mut last = vec![b'y'; 1000];
        last.extend(b"NOOP\r\n");
        assert_eq!(exchange(&mut m, &last), "250 2.0.0 OK\r\n");
    }

    #[test]
    fn ehlo_after_auth_keeps_login_and_transaction() {
        let mut m = authenticated();
        exchange(&mut m, b"MAIL FROM:<alice@example.org>\r\n");
        m.reply(b"250 2.1.0 Ok\r\n".to_vec());
        assert_eq!(
            exchange(&mut m, b"EHLO c\r\nMAIL FROM:<alice@example.org>\r\n"),
            format!("250 2.1.0 Ok\r\n{EHLO_TLS}503 5.5.1 Nested MAIL command\r\n")
        );
        assert_eq!(m.login(), Some("alice"));
    }

    #[test]
    fn upstream_421_closes() {
        let mut m = authenticated();
        exchange(&mut m, b"MAIL FROM:<alice@example.org>\r\nNOOP\r\n");
        m.reply(b"421 4.3.2 Service shutting down\r\n".to_vec());
        assert_eq!(drain(&mut m), "421 4.3.2 Service shutting down\r\n<close>");
    }

    #[test]
    fn replies_without_a_pending_action_are_ignored() {
        let mut m = authenticated();
        m.reply(b"250 ok\r\n".to_vec());
        m.data_accepted();
        m.accept_message();
        m.reject_message(b"553 no\r\n".to_vec());
        assert_eq!(drain(&mut m), "");
        assert_eq!(
            exchange(&mut m, b"DATA\r\n"),
            "503 5.5.1 Need MAIL command\r\n"
        );
    }

    // ----- message data -----

    #[test]
    fn an_empty_message_is_an_empty_header_then_its_end() {
        // "DATA" then at once "." (found by the fuzzer): the upstream judges an empty
        // message, as it would without postern.
        let mut m = in_message();
        assert_eq!(exchange(&mut m, b".\r\n"), "<header \"\">");
        m.accept_message();
        assert_eq!(drain(&mut m), "<end>");
        m.reply(b"250 2.0.0 queued\r\n".to_vec());
        assert_eq!(drain(&mut m), "250 2.0.0 queued\r\n");
        assert!(m.between_commands());
    }

    #[test]
    fn message_without_an_empty_line_is_all_header() {
        let mut m = in_message();
        assert_eq!(
            exchange(&mut m, b"Subject: x\r\n.\r\nQUIT\r\n"),
            "<header \"Subject: x\\r\\n\">"
        );
        m.accept_message();
        assert_eq!(drain(&mut m), "<end>");
        m.reply(b"250 2.0.0 queued\r\n".to_vec());
        assert_eq!(
            drain(&mut m),
            "250 2.0.0 queued\r\n221 2.0.0 Bye\r\n<quit><close>"
        );
    }

    #[test]
    fn empty_message() {
        let mut m = in_message();
        assert_eq!(exchange(&mut m, b".\r\n"), "<header \"\">");
        m.accept_message();
        assert_eq!(drain(&mut m), "<end>");
    }

    #[test]
    fn message_split_at_every_byte() {
        let message: &[u8] = b"From: a\r\n.Dotted: x\r\n\r\nbody\r\n..\r\n.x\r\n\r\n.\r\nNOOP\r\n";
        let mut m = in_message();
        let mut transcript = String::new();
        let mut body = Vec::new();
        for byte in message {
            m.feed(&[*byte]);
            while let Some(action) = m.next_action() {
                match action {
                    Action::MessageHeader(header) => {
                        transcript
                            .push_str(&format!("<header {:?}>", String::from_utf8_lossy(&header)));
                        m.accept_message();
                    }
                    Action::MessageBody(chunk) => body.extend(chunk),
                    Action::MessageEnd => {
                        transcript.push_str("<end>");
                        m.reply(b"250 2.0.0 queued\r\n".to_vec());
                    }
                    Action::Send(bytes) => transcript.push_str(&String::from_utf8_lossy(&bytes)),
                    other => transcript.push_str(&format!("{other:?}")),
                }
            }
        }
        assert_eq!(
            transcript,
            "<header \"From: a\\r\\n.Dotted: x\\r\\n\\r\\n\"><end>250 2.0.0 queued\r\n250 2.0.0 OK\r\n"
        );
        assert_eq!(body, b"body\r\n..\r\n.x\r\n\r\n");
    }

    #[test]
    fn bare_line_endings_in_messages_become_crlf() {
        // Anti-smuggling: <LF>.<LF>, <CR>.<CR> and mixtures end the message here too, and the
        // upstream only ever sees CRLF, so its idea of the end is postern's.
        let mut m = in_message();
        assert_eq!(
            exchange(
                &mut m,
                b"A: b\n\nline\rmore\n.\nMAIL FROM:<ceo@example.org>\r\n"
            ),
            "<header \"A: b\\r\\n\\r\\n\">"
        );
        m.accept_message();
        assert_eq!(drain(&mut m), "<body \"line\\r\\nmore\\r\\n\"><end>");
        m.reply(b"250 2.0.0 queued\r\n".to_vec());
        assert_eq!(
            drain(&mut m),
            "250 2.0.0 queued\r\n\
             <mail \"ceo@example.org\" \"MAIL FROM:<ceo@example.org>\\r\\n\">"
        );
        for terminator in [&b"\r\n.\r"[..], b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"] {
            let mut m = in_message();
            m.feed(b"\r\nx");
            m.feed(terminator);
            m.feed(b"NOOP\r\n");
            let mut body = String::new();
            while let Some(action) = m.next_action() {
                match action {
                    Action::MessageHeader(_) => m.accept_message(),
                    Action::MessageBody(chunk) => body.push_str(&String::from_utf8_lossy(&chunk)),
                    Action::MessageEnd => {
                        body.push_str("<end>");
                        m.reply(b"250 ok\r\n".to_vec());
                    }
                    Action::Send(bytes) => body.push_str(&String::from_utf8_lossy(&bytes)),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(
                body, "x\r\n<end>250 ok\r\n250 2.0.0 OK\r\n",
                "{terminator:?}"
            );
        }
    }

    #[test]
    fn message_body_streams_in_chunks_as_fed() {
        let mut m = in_message();
        assert_eq!(
            exchange(&mut m, b"Subject: x\r\n\r\nfirst "),
            "<header \"Subject: x\\r\\n\\r\\n\">"
        );
        m.accept_message();
        assert_eq!(drain(&mut m), "<body \"first \">");
        assert_eq!(exchange(&mut m, b"line\r\n."), "<body \"line\\r\\n\">");
        assert_eq!(exchange(&mut m, b"\r"), "");
        assert_eq!(exchange(&mut m, b"\n"), "<end>");
    }

    #[test]
    fn rejected_message_is_discarded_then_answered() {
        let mut m = in_message();
        assert_eq!(
            exchange(&mut m, b"From: ceo@example.org\r\n\r\nbody\r\n"),
            "<header \"From: ceo@example.org\\r\\n\\r\\n\">"
        );
        m.reject_message(b"553 5.7.1 From: not yours\r\n".to_vec());
        assert_eq!(drain(&mut m), "");
        assert_eq!(
            exchange(&mut m, b"more\r\n.\r\nNOOP\r\n"),
            "553 5.7.1 From: not yours\r\n250 2.0.0 OK\r\n"
        );
        assert_eq!(m.recipients(), 0);
        assert_eq!(
            exchange(&mut m, b"DATA\r\n"),
            "503 5.5.1 Need MAIL command\r\n"
        );
    }

    #[test]
    fn rejected_message_that_already_ended() {
        let mut m = in_message();
        exchange(&mut m, b"From: ceo@example.org\r\n.\r\n");
        m.reject_message(b"553 5.7.1 From: not yours\r\n".to_vec());
        assert_eq!(drain(&mut m), "553 5.7.1 From: not yours\r\n");
    }

    #[test]
    fn message_over_the_size_limit() {
        let mut m = Conversation::new(ConversationOptions {
            max_message_size: 40,
            ..options(true)
        });
        exchange(&mut m, b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\n");
        m.auth_granted();
        exchange(&mut m, b"MAIL FROM:<alice@example.org>\r\n");
        m.reply(b"250 ok\r\n".to_vec());
        exchange(&mut m, b"RCPT TO:<bob@example.net>\r\n");
        m.reply(b"250 ok\r\n".to_vec());
        exchange(&mut m, b"DATA\r\n");
        m.data_accepted();
        drain(&mut m);
        assert_eq!(
            exchange(&mut m, b"Subject: x\r\n\r\n0123456789"),
            "<header \"Subject: x\\r\\n\\r\\n\">"
        );
        m.accept_message();
        assert_eq!(drain(&mut m), "<body \"0123456789\">");
        assert_eq!(exchange(&mut m, b"0123456789abcdefg"), "<too large>");
        assert_eq!(exchange(&mut m, &[b'x'; 1000]), "");
        assert_eq!(
            exchange(&mut m, b"\r\n.\r\nNOOP\r\n"),
            "552 5.3.4 Message size exceeds fixed limit\r\n250 2.0.0 OK\r\n"
        );
        assert_eq!(m.recipients(), 0);
    }

    #[test]
    fn message_at_the_size_limit_passes() {
        let mut m = Conversation::new(ConversationOptions {
            max_message_size: 10,
            ..options(true)
        });
        exchange(&mut m, b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\n");
        m.auth_granted();
        exchange(&mut m, b"MAIL FROM:<alice@example.org>\r\n");
        m.reply(b"250 ok\r\n".to_vec());
        exchange(&mut m, b"RCPT TO:<bob@example.net>\r\n");
        m.reply(b"250 ok\r\n".to_vec());
        exchange(&mut m, b"DATA\r\n");
        m.data_accepted();
        drain(&mut m);
        // "\r\n" + "0123456" + "\r\n" = 11 bytes would be over; 10 is not.
        assert_eq!(
            exchange(&mut m, b"\r\n012345\r\n.\r\n"),
            "<header \"\\r\\n\">"
        );
        m.accept_message();
        assert_eq!(drain(&mut m), "<body \"012345\\r\\n\"><end>");
    }

    #[test]
    fn header_over_its_limit_is_refused_without_going_upstream() {
        let mut m = Conversation::new(ConversationOptions {
            max_header_bytes: 100,
            ..options(true)
        });
        exchange(&mut m, b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\n");
        m.auth_granted();
        exchange(&mut m, b"MAIL FROM:<alice@example.org>\r\n");
        m.reply(b"250 ok\r\n".to_vec());
        exchange(&mut m, b"RCPT TO:<bob@example.net>\r\n");
        m.reply(b"250 ok\r\n".to_vec());
        exchange(&mut m, b"DATA\r\n");
        m.data_accepted();
        drain(&mut m);
        let mut header = Vec::new();
        for _ in 0..20 {
            header.extend(b"X-Long: 0123456789\r\n");
        }
        assert_eq!(exchange(&mut m, &header), "<too large>");
        assert!(m.header.is_empty());
        for _ in 0..100 {
            assert_eq!(exchange(&mut m, &header), "");
        }
        assert_eq!(
            exchange(&mut m, b"\r\nbody\r\n.\r\n"),
            "552 5.3.4 Message header too large\r\n"
        );
    }

    #[test]
    fn header_buffer_stays_bounded_when_fed_at_once() {
        let mut m = Conversation::new(ConversationOptions {
            max_header_bytes: 100,
            ..options(true)
        });
        exchange(&mut m, b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\n");
        m.auth_granted();
        exchange(&mut m, b"MAIL FROM:<alice@example.org>\r\n");
        m.reply(b"250 ok\r\n".to_vec());
        exchange(&mut m, b"RCPT TO:<bob@example.net>\r\n");
        m.reply(b"250 ok\r\n".to_vec());
        exchange(&mut m, b"DATA\r\n");
        m.data_accepted();
        drain(&mut m);
        m.feed(&[b'\n'; 1000]);
        // The first empty line ends the header; with no empty line, the limit holds.
        assert_eq!(drain(&mut m), "<header \"\\r\\n\">");
        m.reject_message(b"550 no\r\n".to_vec());
        drain(&mut m);
        let mut m = in_message();
        m.feed(&vec![b'h'; 200_000]);
        let mut header_max = 0;
        while let Some(action) = m.next_action() {
            header_max = header_max.max(m.header.len());
            assert_eq!(action, Action::MessageTooLarge);
        }
        assert!(header_max <= DEFAULT_MAX_HEADER_BYTES + 2);
    }

    // ----- pipelining -----

    #[test]
    fn apple_mail_like_pipelined_session() {
        let mut m = implicit_tls();
        assert_eq!(exchange(&mut m, b"EHLO [192.168.1.20]\r\n"), EHLO_TLS);
        assert_eq!(
            exchange(&mut m, b"AUTH PLAIN AGFsaWNlAHB3\r\n"),
            "<auth plain alice pw>"
        );
        m.auth_granted();
        assert_eq!(drain(&mut m), "235 2.7.0 Authentication successful\r\n");
        assert_eq!(
            exchange(
                &mut m,
                b"MAIL FROM:<alice@example.org> SIZE=120 BODY=8BITMIME\r\n\
                  RCPT TO:<bob@example.net>\r\nRCPT TO:<carol@example.net>\r\nDATA\r\n"
            ),
            "<mail \"alice@example.org\" \"MAIL FROM:<alice@example.org> SIZE=120 BODY=8BITMIME\\r\\n\">"
        );
        m.reply(b"250 2.1.0 Ok\r\n".to_vec());
        assert_eq!(
            drain(&mut m),
            "250 2.1.0 Ok\r\n<rcpt \"bob@example.net\" \"RCPT TO:<bob@example.net>\\r\\n\">"
        );
        m.reply(b"250 2.1.5 Ok\r\n".to_vec());
        assert_eq!(
            drain(&mut m),
            "250 2.1.5 Ok\r\n<rcpt \"carol@example.net\" \"RCPT TO:<carol@example.net>\\r\\n\">"
        );
        m.reply(b"550 5.1.1 No such user\r\n".to_vec());
        assert_eq!(drain(&mut m), "550 5.1.1 No such user\r\n<data>");
        assert_eq!(m.recipients(), 1);
        m.data_accepted();
        assert_eq!(
            exchange(
                &mut m,
                b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n\r\nHi Bob\r\n.\r\nQUIT\r\n"
            ),
            "354 Start mail input; end with <CRLF>.<CRLF>\r\n\
             <header \"From: Alice <alice@example.org>\\r\\nTo: bob@example.net\\r\\n\\r\\n\">"
        );
        m.accept_message();
        assert_eq!(drain(&mut m), "<body \"Hi Bob\\r\\n\"><end>");
        m.reply(b"250 2.0.0 Ok: queued as ABC\r\n".to_vec());
        assert_eq!(
            drain(&mut m),
            "250 2.0.0 Ok: queued as ABC\r\n221 2.0.0 Bye\r\n<quit><close>"
        );
    }

    #[test]
    fn outlook_like_session_on_587() {
        let mut m = starttls_listener();
        assert_eq!(m.greeting(), b"220 mx.example.org ESMTP postern\r\n");
        assert_eq!(exchange(&mut m, b"EHLO DESKTOP-1234\r\n"), EHLO_STARTTLS);
        assert_eq!(
            exchange(&mut m, b"STARTTLS\r\n"),
            "220 2.0.0 Ready to start TLS\r\n<starttls>"
        );
        m.tls_established();
        assert_eq!(exchange(&mut m, b"EHLO DESKTOP-1234\r\n"), EHLO_TLS);
        assert_eq!(exchange(&mut m, b"AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
        // base64("alice@example.org"), base64("abcd efgh ijkl mnop")
        assert_eq!(
            exchange(&mut m, b"YWxpY2VAZXhhbXBsZS5vcmc=\r\n"),
            "334 UGFzc3dvcmQ6\r\n"
        );
        assert_eq!(
            exchange(&mut m, b"YWJjZCBlZmdoIGlqa2wgbW5vcA==\r\n"),
            "<auth login alice@example.org abcd efgh ijkl mnop>"
        );
        m.auth_granted();
        assert_eq!(drain(&mut m), "235 2.7.0 Authentication successful\r\n");
        assert_eq!(m.login(), Some("alice@example.org"));
        // Outlook pipelines MAIL and RCPT, then waits before DATA.
        assert_eq!(
            exchange(
                &mut m,
                b"MAIL FROM: <alice@example.org> SIZE=900\r\nRCPT TO: <bob@example.net>\r\n"
            ),
            "<mail \"alice@example.org\" \"MAIL FROM: <alice@example.org> SIZE=900\\r\\n\">"
        );
        m.reply(b"250 2.1.0 Ok\r\n".to_vec());
        assert_eq!(
            drain(&mut m),
            "250 2.1.0 Ok\r\n<rcpt \"bob@example.net\" \"RCPT TO: <bob@example.net>\\r\\n\">"
        );
        m.reply(b"250 2.1.5 Ok\r\n".to_vec());
        assert_eq!(drain(&mut m), "250 2.1.5 Ok\r\n");
        assert_eq!(exchange(&mut m, b"DATA\r\n"), "<data>");
        m.data_accepted();
        drain(&mut m);
        assert_eq!(
            exchange(&mut m, b"From: \"Alice\" <alice@example.org>\r\nMIME-Version: 1.0\r\n\r\n"),
            "<header \"From: \\\"Alice\\\" <alice@example.org>\\r\\nMIME-Version: 1.0\\r\\n\\r\\n\">"
        );
        m.accept_message();
        assert_eq!(
            exchange(&mut m, b"Hello\r\n.\r\n"),
            "<body \"Hello\\r\\n\"><end>"
        );
        m.reply(b"250 2.0.0 Ok: queued\r\n".to_vec());
        assert_eq!(
            exchange(&mut m, b"QUIT\r\n"),
            "250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n<quit><close>"
        );
    }

    #[test]
    fn commands_split_at_every_byte() {
        let input: &[u8] =
            b"EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\ncHc=\r\nNOOP\r\nMAIL FROM:<alice@example.org>\r\n";
        let mut m = implicit_tls();
        let mut transcript = String::new();
        for byte in input {
            m.feed(&[*byte]);
            while let Some(action) = m.next_action() {
                match action {
                    Action::Send(bytes) => transcript.push_str(&String::from_utf8_lossy(&bytes)),
                    Action::Authenticate(credentials) => {
                        transcript.push_str(&format!("<auth {}>", credentials.login));
                        m.auth_granted();
                    }
                    Action::MailFrom { address, .. } => {
                        transcript.push_str(&format!("<mail {address}>"))
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(
            transcript,
            format!(
                "{EHLO_TLS}334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n<auth alice>\
                 235 2.7.0 Authentication successful\r\n250 2.0.0 OK\r\n<mail alice@example.org>"
            )
        );
    }

    #[test]
    fn wants_input_pauses_while_waiting_with_a_full_buffer() {
        let mut m = Conversation::new(ConversationOptions {
            max_line: 64,
            ..options(true)
        });
        exchange(&mut m, b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\n");
        assert!(m.wants_input());
        m.feed(&[b'x'; 128]);
        assert!(!m.wants_input());
        m.auth_refused();
        drain(&mut m);
        assert!(m.wants_input());
    }

    // ----- errors and limits -----

    #[test]
    fn bare_lf_commands_are_accepted() {
        let mut m = authenticated();
        assert_eq!(
            exchange(&mut m, b"NOOP\nMAIL FROM:<alice@example.org>\n"),
            "250 2.0.0 OK\r\n<mail \"alice@example.org\" \"MAIL FROM:<alice@example.org>\\r\\n\">"
        );
    }

    #[test]
    fn blank_lines_are_ignored() {
        assert_eq!(
            exchange(&mut implicit_tls(), b"\r\n\n\r\nNOOP\r\n"),
            "250 2.0.0 OK\r\n"
        );
    }

    #[test]
    fn unknown_commands_and_syntax_errors_keep_the_connection() {
        assert_eq!(
            exchange(
                &mut implicit_tls(),
                b"FOO bar\r\nMAILFROM:<a@b>\r\nNOOP\r\n"
            ),
            "500 5.5.1 Command unrecognized\r\n500 5.5.1 Command unrecognized\r\n250 2.0.0 OK\r\n"
        );
    }

    #[test]
    fn too_many_bad_commands_close() {
        let mut m = Conversation::new(ConversationOptions {
            max_bad_commands: 2,
            ..options(true)
        });
        assert_eq!(
            exchange(&mut m, b"BOGUS\r\nBOGUS\r\nNOOP\r\n"),
            "500 5.5.1 Command unrecognized\r\n500 5.5.1 Command unrecognized\r\n\
             421 4.7.0 Too many errors\r\n<close>"
        );
    }

    #[test]
    fn long_line_is_refused_and_discarded_without_buffering() {
        let mut m = Conversation::new(ConversationOptions {
            max_line: 64,
            ..options(true)
        });
        assert_eq!(exchange(&mut m, b"NOOP "), "");
        assert_eq!(
            exchange(&mut m, &[b'x'; 100]),
            "500 5.5.2 Line too long\r\n"
        );
        for _ in 0..100 {
            assert_eq!(exchange(&mut m, &[b'y'; 1000]), "");
            assert!(m.input.len() <= 64);
        }
        assert_eq!(exchange(&mut m, b"yyy\r\nNOOP\r\n"), "250 2.0.0 OK\r\n");
    }

    #[test]
    fn a_line_trickled_a_byte_at_a_time_is_searched_once() {
        let mut m = implicit_tls();
        assert!(exchange(&mut m, b"EHLO c\r\n").starts_with("250"));
        for &byte in b"NOOP xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" {
            assert_eq!(exchange(&mut m, &[byte]), "");
            assert_eq!(m.input.searched, m.input.len(), "searched up to the end");
        }
        assert_eq!(exchange(&mut m, b"\r"), "");
        assert_eq!(exchange(&mut m, b"\nNO"), "250 2.0.0 OK\r\n");
        // The next line is searched from its own start: "NO" so far.
        assert_eq!(m.input.searched, 2);
        assert_eq!(exchange(&mut m, b"OP\r\n"), "250 2.0.0 OK\r\n");
    }

    #[test]
    fn long_line_in_one_piece_and_at_a_prompt() {
        let mut m = Conversation::new(ConversationOptions {
            max_line: 64,
            ..options(true)
        });
        let mut input = b"EHLO c\r\nAUTH PLAIN\r\n".to_vec();
        input.extend([b'A'; 100]);
        input.extend(b"\r\nNOOP\r\n");
        assert_eq!(
            exchange(&mut m, &input),
            format!("{EHLO_TLS}334 \r\n500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n")
        );
    }

    #[test]
    fn line_at_the_limit_is_accepted() {
        let mut m = Conversation::new(ConversationOptions {
            max_line: 64,
            ..options(true)
        });
        let mut input = b"NOOP ".to_vec();
        input.extend([b'x'; 57]);
        input.extend(b"\r\n");
        assert_eq!(input.len(), 64);
        assert_eq!(exchange(&mut m, &input), "250 2.0.0 OK\r\n");
    }

    #[test]
    fn never_panics_and_stays_bounded_on_random_input() {
        const MAX_LINE: usize = 256;
        const MAX_HEADER: usize = 512;
        const TOKENS: &[&[u8]] = &[
            b"EHLO c\r\n",
            b"HELO ",
            b"AUTH PLAIN",
            b"AUTH LOGIN",
            b" AGFsaWNlAHB3",
            b" YWxpY2U=",
            b"cHc=\r\n",
            b"AUTH CRAM-MD5\r\n",
            b"MAIL FROM:<alice@example.org>",
            b"MAIL FROM:<>",
            b" SIZE=99999999999",
            b" BODY=8BITMIME",
            b"RCPT TO:<bob@example.net>",
            b"RCPT TO:<Postmaster>",
            b"DATA\r\n",
            b"BDAT 5\r\n",
            b"BDAT 300 LAST\r\n",
            b"RSET\r\n",
            b"NOOP\r\n",
            b"STARTTLS\r\n",
            b"QUIT\r\n",
            b"VRFY x\r\n",
            b"Subject: x\r\n",
            b"\r\n.\r\n",
            b"\n.\n",
            b".\r\n",
            b"..",
            b".",
            b"\r\n",
            b"\n",
            b"\r",
            b"*",
            b"=",
            b" ",
            b"<",
            b">",
            b"@",
            b"\"",
            b"\\",
            b"\0",
            b"\xff",
            b"x",
            b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\n",
            b"AUTH LOGIN\r\nYWxpY2U=\r\ncHc=\r\n",
            b"MAIL FROM:<alice@example.org>\r\n",
            b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n",
            b"RCPT TO:<bob@example.net>\r\n",
            b"From: alice@example.org\r\n\r\nbody\r\n",
        ];
        let mut seed: u64 = 0x5eed;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        let options = |tls_active| ConversationOptions {
            tls_active,
            starttls_available: !tls_active,
            hostname: "mx".to_owned(),
            max_line: MAX_LINE,
            max_failures: 3,
            max_bad_commands: 1000,
            max_header_bytes: MAX_HEADER,
            max_message_size: 4096,
            smtputf8: false,
            dsn: false,
        };
        const REPLIES: &[&[u8]] = &[
            b"250 2.0.0 Ok\r\n",
            b"550 5.1.1 No\r\n",
            b"451 4.7.1 Quota\r\n",
            b"354 go\r\n",
            b"250 2.0.0 Ok\r\n",
            b"250 2.0.0 Ok\r\n",
            b"",
            b"2",
        ];
        let mut machine = Conversation::new(options(false));
        let mut seen = [0usize; 8];
        for round in 0..20_000 {
            let mut chunk = Vec::new();
            for _ in 0..next() % 16 {
                if next() % 12 == 0 {
                    chunk.extend((0..next() % 400).map(|_| next() as u8));
                } else {
                    chunk.extend_from_slice(TOKENS[next() % TOKENS.len()]);
                }
            }
            let buffered = machine.input.len() + chunk.len();
            machine.feed(&chunk);
            while let Some(action) = machine.next_action() {
                let reply = REPLIES[next() % REPLIES.len()].to_vec();
                match action {
                    Action::Authenticate(_) => {
                        seen[0] += 1;
                        match next() % 3 {
                            0 => machine.auth_granted(),
                            1 => machine.auth_refused(),
                            _ => machine.auth_unavailable(),
                        }
                    }
                    Action::MailFrom { line, .. } | Action::RcptTo { line, .. } => {
                        seen[1] += 1;
                        assert!(line.ends_with(b"\r\n"));
                        assert!(!line[..line.len() - 2]
                            .iter()
                            .any(|&byte| byte == b'\r' || byte == b'\n'));
                        machine.reply(reply);
                    }
                    Action::Data => {
                        seen[2] += 1;
                        if next() % 4 == 0 {
                            machine.reply(reply);
                        } else {
                            machine.data_accepted();
                        }
                    }
                    Action::MessageHeader(header) => {
                        seen[3] += 1;
                        assert!(header.len() <= MAX_HEADER);
                        if next() % 3 == 0 {
                            machine.reject_message(reply);
                        } else {
                            machine.accept_message();
                        }
                    }
                    Action::MessageBody(body) => {
                        assert!(!body.is_empty() && body.len() <= 2 * buffered + 2);
                    }
                    Action::MessageEnd => {
                        seen[4] += 1;
                        machine.reply(reply);
                    }
                    Action::MessageTooLarge => seen[5] += 1,
                    Action::Reset => {
                        let reply = if next() % 50 == 0 {
                            b"421 4.3.2 Bye\r\n".to_vec()
                        } else {
                            reply
                        };
                        machine.reply(reply)
                    }
                    Action::StartTls => {
                        seen[6] += 1;
                        machine.tls_established();
                    }
                    Action::Close => {
                        seen[7] += 1;
                        // A 421 now and then; mostly implicit TLS, so that AUTH is reachable.
                        machine = Conversation::new(options(round % 4 != 0));
                    }
                    Action::Send(_) | Action::Quit => {}
                }
            }
            assert!(
                machine.input.len() <= 2 * MAX_LINE + chunk.len(),
                "input {}",
                machine.input.len()
            );
            assert!(machine.header.len() <= 3 * MAX_HEADER + 4);
        }
        eprintln!("actions reached: {seen:?}");
        assert!(
            seen.iter().all(|&count| count > 0),
            "the generator should reach every action: {seen:?}"
        );
    }
}

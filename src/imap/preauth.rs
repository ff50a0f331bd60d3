//! The IMAP conversation before login, as a sans-I/O state machine.
//!
//! The session task feeds received bytes in with [`PreAuth::feed`] and carries out the
//! [`Action`]s that [`PreAuth::next_action`] returns: write bytes, start TLS, verify
//! credentials, close. Nothing here touches a socket, a clock or a log; client input is never
//! logged.
//!
//! Framing is done here rather than by imap-codec's `Fragmentizer`, so that the bytes a
//! client pipelines after its login stay untouched and can be handed to the upstream
//! ([`PreAuth::into_authenticated`]). A command is assembled from lines and literals, then
//! parsed whole by imap-codec's `CommandCodec`:
//!
//! - Lines may end in CRLF or a bare LF (netcat, some scripts); a bare LF is rewritten to
//!   CRLF before parsing, literal data is never rewritten. Empty lines are ignored.
//! - A line (including its ending) and a literal are each at most `max_line` bytes; a whole
//!   command at most twice that. A longer line gets a BAD and is discarded through its LF
//!   without being buffered. A too-large synchronizing literal is refused with a BAD before
//!   the client sends it; a too-large non-synchronizing one closes the connection (RFC 7888).
//! - Synchronizing literals are answered with `+` only for commands that may carry them
//!   before login (LOGIN after TLS, ID), so a client never sends a password in the clear
//!   just to be told to use STARTTLS.
//!
//! While a login waits for its verdict the machine parses nothing; the session should stop
//! reading once [`PreAuth::wants_input`] says so. Buffered input then stays below about twice
//! `max_line` plus one read.

use std::collections::VecDeque;
use std::fmt;

use imap_codec::decode::{CommandDecodeError, Decoder};
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{IString, LiteralMode, NString};
use imap_codec::CommandCodec;

use crate::auth::{ClientLogin, Secret};
use crate::sasl::{self, SaslError};

/// Default longest line and literal (SPEC: "line and literal at most 8 KiB").
pub const DEFAULT_MAX_LINE: usize = 8 * 1024;
/// Default failed logins per connection (SPEC: "at most 3 failed logins per connection").
pub const DEFAULT_MAX_FAILURES: u32 = 3;
/// Default BAD replies per connection before giving up on the client.
pub const DEFAULT_MAX_BAD_COMMANDS: u32 = 10;

/// A smaller `max_line` would make ordinary commands impossible.
const MIN_LINE: usize = 16;

/// Capabilities once the connection is encrypted.
const CAPABILITIES_TLS: &str = "IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN";
/// Capabilities before STARTTLS: logins are refused until the upgrade.
const CAPABILITIES_STARTTLS: &str = "IMAP4rev1 SASL-IR LITERAL+ ID STARTTLS LOGINDISABLED";
/// Capabilities on a plaintext connection that cannot be upgraded (not a supported listener
/// configuration, but logins must stay refused).
const CAPABILITIES_PLAINTEXT: &str = "IMAP4rev1 SASL-IR LITERAL+ ID LOGINDISABLED";

const CONTINUE_LITERAL: &[u8] = b"+ Ready for literal data\r\n";
const CONTINUE_AUTHENTICATE: &[u8] = b"+ \r\n";
const SERVER_ID: &[u8] = b"* ID (\"name\" \"postern\")\r\n";
const BYE_LOGOUT: &[u8] = b"* BYE Logging out\r\n";
const BYE_TOO_MANY_FAILURES: &[u8] = b"* BYE Too many failed logins\r\n";
const BYE_TOO_MANY_BAD_COMMANDS: &[u8] = b"* BYE Too many invalid commands\r\n";
const BYE_LITERAL_TOO_LARGE: &[u8] = b"* BYE Literal too large\r\n";

const OK_CAPABILITY: &str = "OK CAPABILITY completed";
const OK_NOOP: &str = "OK NOOP completed";
const OK_LOGOUT: &str = "OK LOGOUT completed";
const OK_ID: &str = "OK ID completed";
const OK_STARTTLS: &str = "OK Begin TLS negotiation now";
const NO_PRIVACY_REQUIRED: &str = "NO [PRIVACYREQUIRED] Log in after STARTTLS";
const NO_AUTHENTICATION_FAILED: &str = "NO [AUTHENTICATIONFAILED] Authentication failed";
const NO_UNAVAILABLE: &str = "NO [UNAVAILABLE] Service temporarily unavailable, try again later";
const NO_LIMIT: &str = "NO [LIMIT] Too many sessions for this user from your address";
const NO_UNSUPPORTED_MECHANISM: &str = "NO [CANNOT] Unsupported authentication mechanism";

const BAD_SYNTAX: &str = "Syntax error";
const BAD_LOG_IN_FIRST: &str = "Log in first";
const BAD_STARTTLS_UNAVAILABLE: &str = "STARTTLS not available";
const BAD_LINE_TOO_LONG: &str = "Line too long";
const BAD_COMMAND_TOO_LONG: &str = "Command too long";
const BAD_LITERAL_TOO_LARGE: &str = "Literal too large";
const BAD_AUTHENTICATION_CANCELLED: &str = "Authentication cancelled";
const BAD_INVALID_SASL: &str = "Invalid SASL message";

/// The tag used for replies to input whose tag cannot be found.
const UNTAGGED: &str = "*";

/// RFC 2971: at most 30 field-value pairs, field names at most 30 bytes, values at most
/// 1024 bytes. Longer ones are truncated rather than refused.
const MAX_ID_FIELDS: usize = 30;
const MAX_ID_FIELD_NAME: usize = 30;
const MAX_ID_FIELD_VALUE: usize = 1024;

/// How a connection's pre-auth conversation is limited and what its transport offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreAuthOptions {
    /// The connection is encrypted from the start (implicit TLS listener): logins are
    /// allowed and `AUTH=PLAIN` is advertised.
    pub tls_active: bool,
    /// The listener can upgrade with STARTTLS; until it does, logins are refused.
    pub starttls_available: bool,
    /// Longest line (including its CRLF) and longest literal, in bytes; a whole command may
    /// use twice this. 8 KiB per SPEC; at least 16.
    pub max_line: usize,
    /// Failed logins before `* BYE` and close (3 per SPEC), so one connection cannot be used
    /// to try many passwords.
    pub max_failures: u32,
    /// BAD replies before `* BYE` and close: generous, because real clients probe, but a
    /// client that only sends garbage is not worth a connection slot.
    pub max_bad_commands: u32,
}

impl Default for PreAuthOptions {
    /// The SPEC limits on a plaintext connection without STARTTLS; set the TLS fields from
    /// the listener.
    fn default() -> Self {
        Self {
            tls_active: false,
            starttls_available: false,
            max_line: DEFAULT_MAX_LINE,
            max_failures: DEFAULT_MAX_FAILURES,
            max_bad_commands: DEFAULT_MAX_BAD_COMMANDS,
        }
    }
}

/// How the client presented its credentials (the `mechanism` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// The IMAP LOGIN command.
    Login,
    /// AUTHENTICATE PLAIN, with or without an initial response.
    Plain,
}

impl Mechanism {
    /// The metric label: `login` or `plain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Login => "login",
            Mechanism::Plain => "plain",
        }
    }
}

/// What the session must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the client.
    Send(Vec<u8>),
    /// The STARTTLS reply has been queued as a prior `Send`; flush it, run the TLS handshake,
    /// then call [`PreAuth::tls_established`]. Bytes that arrived after the STARTTLS command
    /// line have been discarded (CVE-2011-0411: pipelined plaintext must not be executed
    /// after TLS).
    StartTls,
    /// Verify these credentials. The machine then waits (returns no further actions, buffers
    /// input) until the session calls [`PreAuth::login_refused`] or
    /// [`PreAuth::login_unavailable`], or consumes it with [`PreAuth::into_authenticated`]
    /// after the upstream accepted.
    Login {
        /// The tag the client's login command carried; the final reply must use it.
        tag: String,
        /// LOGIN (`login`) or AUTHENTICATE PLAIN (`plain`), the login and the app
        /// password as sent.
        credentials: ClientLogin,
    },
    /// Close the connection after flushing the previous `Send`s: LOGOUT done, too many
    /// failures or invalid commands, or an unrecoverable protocol error.
    Close,
}

/// Where the conversation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Reading commands.
    Commands,
    /// A line was too long and has been answered; input is dropped through its LF.
    DiscardingLine,
    /// `+` was sent for AUTHENTICATE PLAIN; the next line is the client's SASL response.
    AuthenticateResponse { tag: String },
    /// A `Login` action is out; input waits for the verdict.
    AwaitingVerdict { tag: String },
    /// `StartTls` is out; plaintext input is dropped until the handshake is done.
    AwaitingTls,
    /// `Close` is queued; nothing more happens.
    Closed,
}

/// What framing found at the front of the input.
#[derive(Debug)]
enum Frame {
    /// The current line or literal is not complete yet.
    NeedMore,
    /// An empty line outside a command, dropped.
    BlankLine,
    /// `command` holds a complete command.
    Complete,
    /// `command` ends with a line announcing a literal of this size.
    LiteralAnnounced { length: u64, mode: LiteralMode },
    /// The line at the front of `input` is longer than `max_line`.
    LineTooLong,
    /// `command` (whose last line has been consumed) is longer than twice `max_line`.
    CommandTooLong,
}

/// Why a synchronizing literal is not wanted.
enum LiteralRefusal {
    /// Reply `BAD` with this text.
    Bad { tag: String, reason: &'static str },
    /// A LOGIN before TLS: refuse it before the client sends the password.
    PrivacyRequired { tag: String },
}

/// The pre-auth IMAP server for one connection. See the module documentation.
///
/// `Debug` shows the state and buffer sizes, never the buffered input, which may hold a
/// password.
pub struct PreAuth {
    options: PreAuthOptions,
    tls_active: bool,
    phase: Phase,
    /// Received bytes not yet framed, verbatim.
    input: Vec<u8>,
    /// The command being assembled: its lines (endings rewritten to CRLF) and literals.
    command: Vec<u8>,
    /// Literal bytes still to move from `input` to `command`.
    literal_remaining: usize,
    actions: VecDeque<Action>,
    failed_logins: u32,
    bad_commands: u32,
    client_id: Option<Vec<(String, Option<String>)>>,
}

impl fmt::Debug for PreAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreAuth")
            .field("tls_active", &self.tls_active)
            .field("phase", &self.phase)
            .field("buffered", &(self.input.len() + self.command.len()))
            .field("failed_logins", &self.failed_logins)
            .field("bad_commands", &self.bad_commands)
            .finish_non_exhaustive()
    }
}

impl PreAuth {
    /// A machine for a new connection; send [`PreAuth::greeting`] first.
    pub fn new(mut options: PreAuthOptions) -> Self {
        options.max_line = options.max_line.max(MIN_LINE);
        Self {
            tls_active: options.tls_active,
            options,
            phase: Phase::Commands,
            input: Vec::new(),
            command: Vec::new(),
            literal_remaining: 0,
            actions: VecDeque::new(),
            failed_logins: 0,
            bad_commands: 0,
            client_id: None,
        }
    }

    /// `* OK [CAPABILITY ...] postern ready`, the first bytes the client receives.
    pub fn greeting(&self) -> Vec<u8> {
        format!(
            "* OK [CAPABILITY {}] postern ready\r\n",
            self.capabilities()
        )
        .into_bytes()
    }

    /// Enqueues bytes received from the client. Bytes after a STARTTLS command, and after
    /// the machine has closed, are dropped.
    pub fn feed(&mut self, bytes: &[u8]) {
        match self.phase {
            Phase::AwaitingTls | Phase::Closed => {}
            Phase::DiscardingLine => self.discard_through_line_end(bytes),
            Phase::Commands
            | Phase::AuthenticateResponse { .. }
            | Phase::AwaitingVerdict { .. } => self.input.extend_from_slice(bytes),
        }
    }

    /// The next thing to do, or `None` when the machine needs more bytes or is waiting for
    /// a login verdict or the TLS handshake.
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

    /// The TLS handshake requested by [`Action::StartTls`] succeeded: logins are allowed now.
    pub fn tls_established(&mut self) {
        if self.phase == Phase::AwaitingTls {
            self.tls_active = true;
            self.input.clear();
            self.phase = Phase::Commands;
        }
    }

    /// The credentials of the pending login were wrong (or refused for any reason that is
    /// the client's): replies `NO [AUTHENTICATIONFAILED]`, counts a failure, and closes
    /// after `max_failures`. Input pipelined after the login is processed next.
    pub fn login_refused(&mut self) {
        if let Some(tag) = self.take_pending_login() {
            self.refuse_login(&tag);
        }
    }

    /// The pending login could not be decided (rate limited, upstream down): replies
    /// `NO [UNAVAILABLE]`, not counted as a failure.
    pub fn login_unavailable(&mut self) {
        if let Some(tag) = self.take_pending_login() {
            self.send_tagged(&tag, NO_UNAVAILABLE);
        }
    }

    /// The credentials are right but the user holds as many sessions from this address as
    /// allowed: replies `NO [LIMIT]` (RFC 5530), not counted as a failure.
    pub fn login_limited(&mut self) {
        if let Some(tag) = self.take_pending_login() {
            self.send_tagged(&tag, NO_LIMIT);
        }
    }

    /// The fields of the client's last ID command (`Some(&[])` for `ID NIL`), at most 30
    /// pairs, names and values truncated and control characters replaced.
    pub fn client_id(&self) -> Option<&[(String, Option<String>)]> {
        self.client_id.as_deref()
    }

    /// A `Login` action is out and the machine waits for its verdict.
    pub fn is_awaiting_verdict(&self) -> bool {
        matches!(self.phase, Phase::AwaitingVerdict { .. })
    }

    /// Whether the session should read more from the client. False once closed, during the
    /// TLS handshake, and while a login verdict is pending with enough pipelined input
    /// buffered (reading resumes after the verdict, or the bytes go upstream).
    pub fn wants_input(&self) -> bool {
        match self.phase {
            Phase::Closed | Phase::AwaitingTls => false,
            Phase::AwaitingVerdict { .. } => self.input.len() < self.max_command(),
            Phase::Commands | Phase::DiscardingLine | Phase::AuthenticateResponse { .. } => true,
        }
    }

    /// After the upstream accepted the login: the tag of the pending login command and the
    /// bytes the client sent after it, verbatim, which belong to the upstream now.
    ///
    /// Call only after [`Action::Login`]; otherwise the tag is empty.
    pub fn into_authenticated(self) -> (String, Vec<u8>) {
        let tag = match self.phase {
            Phase::AwaitingVerdict { tag } => tag,
            _ => String::new(),
        };
        (tag, self.input)
    }

    fn capabilities(&self) -> &'static str {
        if self.tls_active {
            CAPABILITIES_TLS
        } else if self.options.starttls_available {
            CAPABILITIES_STARTTLS
        } else {
            CAPABILITIES_PLAINTEXT
        }
    }

    fn max_command(&self) -> usize {
        self.options.max_line.saturating_mul(2)
    }

    /// Makes one step of progress; false when nothing can happen without new input or a
    /// call from the session.
    fn advance(&mut self) -> bool {
        match self.phase {
            Phase::Commands => self.advance_command(),
            Phase::AuthenticateResponse { .. } => self.advance_authenticate_response(),
            Phase::DiscardingLine
            | Phase::AwaitingVerdict { .. }
            | Phase::AwaitingTls
            | Phase::Closed => false,
        }
    }

    // ----- framing -----

    fn advance_command(&mut self) -> bool {
        match self.frame() {
            Frame::NeedMore => false,
            Frame::BlankLine => true,
            Frame::Complete => {
                let command = std::mem::take(&mut self.command);
                self.execute(&command);
                true
            }
            Frame::LiteralAnnounced { length, mode } => {
                self.literal_announced(length, mode);
                true
            }
            Frame::LineTooLong => {
                let tag = if self.command.is_empty() {
                    self.reply_tag(&self.input)
                } else {
                    self.reply_tag(&self.command)
                };
                self.reject_long_line(&tag);
                true
            }
            Frame::CommandTooLong => {
                let tag = self.reply_tag(&self.command);
                self.command.clear();
                self.bad(&tag, BAD_COMMAND_TOO_LONG);
                true
            }
        }
    }

    /// Moves the next literal or line from `input` to `command`.
    fn frame(&mut self) -> Frame {
        if self.literal_remaining > 0 {
            let available = self.literal_remaining.min(self.input.len());
            self.command.extend(self.input.drain(..available));
            self.literal_remaining -= available;
            if self.literal_remaining > 0 {
                return Frame::NeedMore;
            }
        }
        let Some(line_end) = self.line_end() else {
            return if self.input.len() >= self.options.max_line {
                Frame::LineTooLong
            } else {
                Frame::NeedMore
            };
        };
        let line: Vec<u8> = self.input.drain(..line_end).collect();
        if self.command.is_empty() && (line == b"\r\n" || line == b"\n") {
            return Frame::BlankLine;
        }
        push_line_with_crlf(&mut self.command, &line);
        if self.command.len() > self.max_command() {
            return Frame::CommandTooLong;
        }
        match literal_announcement(&line) {
            Some((length, mode)) => Frame::LiteralAnnounced { length, mode },
            None => Frame::Complete,
        }
    }

    /// The length of the first line of `input` including its LF, if it is complete and not
    /// longer than `max_line`.
    fn line_end(&self) -> Option<usize> {
        self.input
            .iter()
            .take(self.options.max_line)
            .position(|&byte| byte == b'\n')
            .map(|lf| lf + 1)
    }

    fn reject_long_line(&mut self, tag: &str) {
        self.command.clear();
        self.literal_remaining = 0;
        let rest = std::mem::take(&mut self.input);
        self.phase = Phase::DiscardingLine;
        self.discard_through_line_end(&rest);
        self.bad(tag, BAD_LINE_TOO_LONG);
    }

    /// Drops bytes up to and including the next LF; what follows it is input again.
    fn discard_through_line_end(&mut self, bytes: &[u8]) {
        if let Some(lf) = bytes.iter().position(|&byte| byte == b'\n') {
            self.phase = Phase::Commands;
            self.input.extend_from_slice(&bytes[lf + 1..]);
        }
    }

    fn literal_announced(&mut self, length: u64, mode: LiteralMode) {
        let fits = length <= self.options.max_line as u64
            && self.command.len() as u64 + length <= self.max_command() as u64;
        match (mode, fits) {
            (LiteralMode::NonSync, true) => self.literal_remaining = length as usize,
            (LiteralMode::NonSync, false) => {
                self.command.clear();
                self.send(BYE_LITERAL_TOO_LARGE.to_vec());
                self.close();
            }
            (LiteralMode::Sync, false) => {
                let tag = self.reply_tag(&self.command);
                self.command.clear();
                self.bad(&tag, BAD_LITERAL_TOO_LARGE);
            }
            (LiteralMode::Sync, true) => match self.screen_literal() {
                Ok(()) => {
                    self.send(CONTINUE_LITERAL.to_vec());
                    self.literal_remaining = length as usize;
                }
                Err(refusal) => {
                    self.command.clear();
                    match refusal {
                        LiteralRefusal::Bad { tag, reason } => self.bad(&tag, reason),
                        LiteralRefusal::PrivacyRequired { tag } => {
                            self.send_tagged(&tag, NO_PRIVACY_REQUIRED)
                        }
                    }
                }
            },
        }
    }

    /// Decides whether the partial command in `command` deserves a `+` for its literal.
    fn screen_literal(&self) -> Result<(), LiteralRefusal> {
        let tag = match CommandCodec::default().decode(&self.command) {
            Err(CommandDecodeError::LiteralFound { tag, .. }) => tag.inner().to_owned(),
            _ => {
                return Err(LiteralRefusal::Bad {
                    tag: self.reply_tag(&self.command),
                    reason: BAD_SYNTAX,
                })
            }
        };
        let name = command_name(&self.command);
        if name.eq_ignore_ascii_case(b"LOGIN") {
            if self.tls_active {
                Ok(())
            } else {
                Err(LiteralRefusal::PrivacyRequired { tag })
            }
        } else if name.eq_ignore_ascii_case(b"ID") {
            Ok(())
        } else {
            Err(LiteralRefusal::Bad {
                tag,
                reason: BAD_LOG_IN_FIRST,
            })
        }
    }

    /// The tag to answer `bytes` with: its leading tag if it has one, else `*`.
    fn reply_tag(&self, bytes: &[u8]) -> String {
        let head = &bytes[..bytes.len().min(self.options.max_line)];
        let end = head
            .iter()
            .position(|&byte| !is_tag_char(byte))
            .unwrap_or(head.len());
        if end > 0 && head.get(end) == Some(&b' ') {
            // Tag characters are ASCII.
            String::from_utf8_lossy(&head[..end]).into_owned()
        } else {
            UNTAGGED.to_owned()
        }
    }

    // ----- commands -----

    fn execute(&mut self, bytes: &[u8]) {
        match CommandCodec::default().decode(bytes) {
            Ok((b"", command)) => self.dispatch(command),
            _ => {
                let tag = self.reply_tag(bytes);
                self.bad(&tag, BAD_SYNTAX);
            }
        }
    }

    fn dispatch(&mut self, command: Command<'_>) {
        let tag = command.tag.inner().to_owned();
        match command.body {
            CommandBody::Capability => self.capability(&tag),
            CommandBody::Noop => self.send_tagged(&tag, OK_NOOP),
            CommandBody::Logout => self.logout(&tag),
            CommandBody::StartTLS => self.starttls(&tag),
            CommandBody::Id { parameters } => self.id(&tag, parameters),
            CommandBody::Login { username, password } => {
                self.login(tag, username.as_ref(), password.declassify().as_ref())
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => self.authenticate(
                tag,
                &mechanism,
                initial_response.as_ref().map(|ir| ir.declassify().as_ref()),
            ),
            _ => self.bad(&tag, BAD_LOG_IN_FIRST),
        }
    }

    fn capability(&mut self, tag: &str) {
        let reply = format!(
            "* CAPABILITY {}\r\n{tag} {OK_CAPABILITY}\r\n",
            self.capabilities()
        );
        self.send(reply.into_bytes());
    }

    fn logout(&mut self, tag: &str) {
        let mut reply = BYE_LOGOUT.to_vec();
        reply.extend(tagged(tag, OK_LOGOUT));
        self.send(reply);
        self.close();
    }

    fn starttls(&mut self, tag: &str) {
        if self.tls_active || !self.options.starttls_available {
            self.bad(tag, BAD_STARTTLS_UNAVAILABLE);
            return;
        }
        self.send_tagged(tag, OK_STARTTLS);
        self.actions.push_back(Action::StartTls);
        // CVE-2011-0411: whatever followed STARTTLS was sent in the clear.
        self.input.clear();
        self.phase = Phase::AwaitingTls;
    }

    fn id(&mut self, tag: &str, parameters: Option<Vec<(IString<'_>, NString<'_>)>>) {
        let fields = parameters
            .unwrap_or_default()
            .into_iter()
            .take(MAX_ID_FIELDS)
            .map(|(name, value)| {
                (
                    id_text(name.as_ref(), MAX_ID_FIELD_NAME),
                    value
                        .0
                        .map(|value| id_text(value.as_ref(), MAX_ID_FIELD_VALUE)),
                )
            })
            .collect();
        self.client_id = Some(fields);
        let mut reply = SERVER_ID.to_vec();
        reply.extend(tagged(tag, OK_ID));
        self.send(reply);
    }

    fn login(&mut self, tag: String, login: &[u8], password: &[u8]) {
        if !self.tls_active {
            self.send_tagged(&tag, NO_PRIVACY_REQUIRED);
            return;
        }
        match (std::str::from_utf8(login), std::str::from_utf8(password)) {
            (Ok(login), Ok(password)) if !login.is_empty() && !password.is_empty() => self
                .request_verdict(
                    tag,
                    Mechanism::Login,
                    login.to_owned(),
                    Secret::new(password.to_owned()),
                ),
            _ => self.refuse_login(&tag),
        }
    }

    fn authenticate(
        &mut self,
        tag: String,
        mechanism: &AuthMechanism<'_>,
        initial_response: Option<&[u8]>,
    ) {
        if !self.tls_active {
            self.send_tagged(&tag, NO_PRIVACY_REQUIRED);
        } else if *mechanism != AuthMechanism::Plain {
            self.send_tagged(&tag, NO_UNSUPPORTED_MECHANISM);
        } else if let Some(message) = initial_response {
            self.plain_message(tag, message);
        } else {
            self.send(CONTINUE_AUTHENTICATE.to_vec());
            self.phase = Phase::AuthenticateResponse { tag };
        }
    }

    /// Reads the client's one-line answer to the AUTHENTICATE continuation.
    fn advance_authenticate_response(&mut self) -> bool {
        let Phase::AuthenticateResponse { tag } = &self.phase else {
            return false;
        };
        let tag = tag.clone();
        let Some(line_end) = self.line_end() else {
            if self.input.len() < self.options.max_line {
                return false;
            }
            self.reject_long_line(&tag);
            return true;
        };
        let line: Vec<u8> = self.input.drain(..line_end).collect();
        self.phase = Phase::Commands;
        if line.trim_ascii_end() == b"*" {
            self.bad(&tag, BAD_AUTHENTICATION_CANCELLED);
        } else {
            match sasl::decode_base64(&line) {
                Ok(message) => self.plain_message(tag, &message),
                Err(_) => self.bad(&tag, BAD_INVALID_SASL),
            }
        }
        true
    }

    /// Handles a decoded SASL PLAIN message.
    fn plain_message(&mut self, tag: String, message: &[u8]) {
        match sasl::decode_plain(message) {
            Ok(credentials) => self.request_verdict(
                tag,
                Mechanism::Plain,
                credentials.login,
                credentials.password,
            ),
            Err(SaslError::AuthzidMismatch) => self.refuse_login(&tag),
            Err(_) => self.bad(&tag, BAD_INVALID_SASL),
        }
    }

    // ----- verdicts and replies -----

    fn request_verdict(
        &mut self,
        tag: String,
        mechanism: Mechanism,
        login: String,
        password: Secret<String>,
    ) {
        self.actions.push_back(Action::Login {
            tag: tag.clone(),
            credentials: ClientLogin {
                mechanism: mechanism.as_str(),
                login,
                password,
            },
        });
        self.phase = Phase::AwaitingVerdict { tag };
    }

    fn take_pending_login(&mut self) -> Option<String> {
        match std::mem::replace(&mut self.phase, Phase::Commands) {
            Phase::AwaitingVerdict { tag } => Some(tag),
            other => {
                self.phase = other;
                None
            }
        }
    }

    fn refuse_login(&mut self, tag: &str) {
        self.failed_logins += 1;
        self.send_tagged(tag, NO_AUTHENTICATION_FAILED);
        if self.failed_logins >= self.options.max_failures {
            self.send(BYE_TOO_MANY_FAILURES.to_vec());
            self.close();
        }
    }

    /// Replies `<tag> BAD <reason>`, closing after `max_bad_commands` of them.
    fn bad(&mut self, tag: &str, reason: &str) {
        self.bad_commands += 1;
        self.send(format!("{tag} BAD {reason}\r\n").into_bytes());
        if self.bad_commands >= self.options.max_bad_commands {
            self.send(BYE_TOO_MANY_BAD_COMMANDS.to_vec());
            self.close();
        }
    }

    fn send_tagged(&mut self, tag: &str, text: &str) {
        self.send(tagged(tag, text));
    }

    fn send(&mut self, bytes: Vec<u8>) {
        self.actions.push_back(Action::Send(bytes));
    }

    fn close(&mut self) {
        self.actions.push_back(Action::Close);
        self.phase = Phase::Closed;
        self.input = Vec::new();
        self.command = Vec::new();
        self.literal_remaining = 0;
    }
}

fn tagged(tag: &str, text: &str) -> Vec<u8> {
    format!("{tag} {text}\r\n").into_bytes()
}

/// `tag = 1*<any ASTRING-CHAR except "+">` (RFC 3501/9051).
fn is_tag_char(byte: u8) -> bool {
    matches!(byte, 0x21..=0x7e) && !b"(){%*\"\\+".contains(&byte)
}

/// Appends a line to a command, ending it with CRLF whether it ended in CRLF or a bare LF.
fn push_line_with_crlf(command: &mut Vec<u8>, line: &[u8]) {
    let content = line.strip_suffix(b"\n").unwrap_or(line);
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    command.extend_from_slice(content);
    command.extend_from_slice(b"\r\n");
}

/// The literal a line announces at its end (`{n}` or `{n+}` before the line ending).
/// Lengths too large for `u64` become `u64::MAX`, which no limit admits.
fn literal_announcement(line: &[u8]) -> Option<(u64, LiteralMode)> {
    let content = line.strip_suffix(b"\n")?;
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    let content = content.strip_suffix(b"}")?;
    let open = content.iter().rposition(|&byte| byte == b'{')?;
    let spec = &content[open + 1..];
    let (digits, mode) = match spec.strip_suffix(b"+") {
        Some(digits) => (digits, LiteralMode::NonSync),
        None => (spec, LiteralMode::Sync),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let length = digits
        .iter()
        .try_fold(0u64, |length, digit| {
            length.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
        })
        .unwrap_or(u64::MAX);
    Some((length, mode))
}

/// The command name of a (partial) command: the word after the tag.
fn command_name(command: &[u8]) -> &[u8] {
    let Some(space) = command.iter().position(|&byte| byte == b' ') else {
        return b"";
    };
    let rest = &command[space + 1..];
    let end = rest
        .iter()
        .position(|&byte| matches!(byte, b' ' | b'\r' | b'\n'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// An ID field name or value as text for logs and the upstream: lossy UTF-8, control
/// characters replaced, truncated to `max` bytes on a character boundary.
fn id_text(bytes: &[u8], max: usize) -> String {
    let mut text = String::new();
    for ch in String::from_utf8_lossy(bytes).chars() {
        let ch = if ch.is_control() {
            char::REPLACEMENT_CHARACTER
        } else {
            ch
        };
        if text.len() + ch.len_utf8() > max {
            break;
        }
        text.push(ch);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn implicit_tls() -> PreAuth {
        PreAuth::new(PreAuthOptions {
            tls_active: true,
            ..PreAuthOptions::default()
        })
    }

    fn starttls_listener() -> PreAuth {
        PreAuth::new(PreAuthOptions {
            starttls_available: true,
            ..PreAuthOptions::default()
        })
    }

    /// Feeds `input` and renders every action until the machine stops: sent bytes verbatim,
    /// other actions as `<starttls>`, `<close>`, `<login TAG MECH LOGIN PASSWORD>`.
    fn exchange(machine: &mut PreAuth, input: &[u8]) -> String {
        machine.feed(input);
        drain(machine)
    }

    fn drain(machine: &mut PreAuth) -> String {
        let mut transcript = String::new();
        while let Some(action) = machine.next_action() {
            match action {
                Action::Send(bytes) => transcript.push_str(&String::from_utf8(bytes).unwrap()),
                Action::StartTls => transcript.push_str("<starttls>"),
                Action::Close => transcript.push_str("<close>"),
                Action::Login {
                    tag,
                    credentials:
                        ClientLogin {
                            mechanism,
                            login,
                            password,
                        },
                } => transcript.push_str(&format!(
                    "<login {tag} {mechanism} {login} {}>",
                    password.expose()
                )),
            }
        }
        transcript
    }

    // ----- greeting and simple commands -----

    #[test]
    fn greeting_over_tls_offers_auth_plain() {
        assert_eq!(
            implicit_tls().greeting(),
            b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN] postern ready\r\n"
        );
    }

    #[test]
    fn greeting_before_starttls_disables_login() {
        assert_eq!(
            starttls_listener().greeting(),
            b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID STARTTLS LOGINDISABLED] postern ready\r\n"
        );
    }

    #[test]
    fn capability() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"a1 CAPABILITY\r\n"),
            "* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN\r\na1 OK CAPABILITY completed\r\n"
        );
        let mut m = starttls_listener();
        assert_eq!(
            exchange(&mut m, b"a1 capability\r\n"),
            "* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID STARTTLS LOGINDISABLED\r\na1 OK CAPABILITY completed\r\n"
        );
    }

    #[test]
    fn noop() {
        assert_eq!(
            exchange(&mut implicit_tls(), b"x NOOP\r\n"),
            "x OK NOOP completed\r\n"
        );
    }

    #[test]
    fn logout_says_bye_and_closes() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"z LOGOUT\r\nz2 NOOP\r\n"),
            "* BYE Logging out\r\nz OK LOGOUT completed\r\n<close>"
        );
        assert_eq!(exchange(&mut m, b"z3 NOOP\r\n"), "");
        assert!(!m.wants_input());
    }

    // ----- STARTTLS -----

    #[test]
    fn starttls_then_login_allowed() {
        let mut m = starttls_listener();
        assert_eq!(
            exchange(&mut m, b"s STARTTLS\r\n"),
            "s OK Begin TLS negotiation now\r\n<starttls>"
        );
        assert!(!m.wants_input());
        m.tls_established();
        assert_eq!(
            exchange(&mut m, b"c CAPABILITY\r\n"),
            "* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN\r\nc OK CAPABILITY completed\r\n"
        );
        assert_eq!(
            exchange(&mut m, b"l LOGIN alice pw\r\n"),
            "<login l login alice pw>"
        );
    }

    #[test]
    fn starttls_discards_pipelined_plaintext() {
        // CVE-2011-0411: a command injected after STARTTLS must not run after the upgrade.
        let mut m = starttls_listener();
        assert_eq!(
            exchange(&mut m, b"s STARTTLS\r\nevil LOGOUT\r\n"),
            "s OK Begin TLS negotiation now\r\n<starttls>"
        );
        m.feed(b"evil2 LOGOUT\r\n");
        m.tls_established();
        assert_eq!(drain(&mut m), "");
        assert_eq!(exchange(&mut m, b"n NOOP\r\n"), "n OK NOOP completed\r\n");
    }

    #[test]
    fn starttls_refused_when_not_available() {
        assert_eq!(
            exchange(&mut implicit_tls(), b"s STARTTLS\r\n"),
            "s BAD STARTTLS not available\r\n"
        );
        let mut m = starttls_listener();
        exchange(&mut m, b"s STARTTLS\r\n");
        m.tls_established();
        assert_eq!(
            exchange(&mut m, b"t STARTTLS\r\n"),
            "t BAD STARTTLS not available\r\n"
        );
    }

    // ----- ID -----

    #[test]
    fn id_is_answered_and_remembered() {
        let mut m = starttls_listener();
        assert_eq!(m.client_id(), None);
        assert_eq!(
            exchange(
                &mut m,
                b"i ID (\"name\" \"Mac OS X Mail\" \"version\" \"16.0\" \"os\" NIL)\r\n"
            ),
            "* ID (\"name\" \"postern\")\r\ni OK ID completed\r\n"
        );
        assert_eq!(
            m.client_id().unwrap(),
            [
                ("name".to_owned(), Some("Mac OS X Mail".to_owned())),
                ("version".to_owned(), Some("16.0".to_owned())),
                ("os".to_owned(), None),
            ]
        );
    }

    #[test]
    fn id_nil() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"i ID NIL\r\n"),
            "* ID (\"name\" \"postern\")\r\ni OK ID completed\r\n"
        );
        assert_eq!(m.client_id(), Some(&[][..]));
    }

    #[test]
    fn id_keeps_at_most_thirty_fields() {
        let mut command = b"i ID (".to_vec();
        for n in 0..40 {
            command.extend(format!("\"k{n}\" \"v\" ").as_bytes());
        }
        command.extend(b"\"last\" NIL)\r\n");
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, &command),
            "* ID (\"name\" \"postern\")\r\ni OK ID completed\r\n"
        );
        let fields = m.client_id().unwrap();
        assert_eq!(fields.len(), 30);
        assert_eq!(fields[29], ("k29".to_owned(), Some("v".to_owned())));
    }

    #[test]
    fn id_values_are_truncated_and_control_characters_replaced() {
        let mut command = b"i ID (\"long\" {1500+}\r\n".to_vec();
        command.extend([b'x'; 1500]);
        command.extend(b" \"ctl\" {4+}\r\na\r\nb)\r\n");
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, &command),
            "* ID (\"name\" \"postern\")\r\ni OK ID completed\r\n"
        );
        let fields = m.client_id().unwrap();
        assert_eq!(fields[0].1.as_deref(), Some("x".repeat(1024).as_str()));
        assert_eq!(fields[1].1.as_deref(), Some("a\u{fffd}\u{fffd}b"));
    }

    // ----- LOGIN -----

    #[test]
    fn login_quoted_and_atom() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(
                &mut m,
                b"a LOGIN \"alice@example.org\" \"abcd efgh ijkl mnop\"\r\n"
            ),
            "<login a login alice@example.org abcd efgh ijkl mnop>"
        );
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"a login alice secret\r\n"),
            "<login a login alice secret>"
        );
    }

    #[test]
    fn login_with_synchronizing_literals() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"a LOGIN {5}\r\n"),
            "+ Ready for literal data\r\n"
        );
        assert_eq!(
            exchange(&mut m, b"alice {6}\r\n"),
            "+ Ready for literal data\r\n"
        );
        assert_eq!(
            exchange(&mut m, b"p\"w d)\r\n"),
            "<login a login alice p\"w d)>"
        );
    }

    #[test]
    fn login_with_non_synchronizing_literals() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"a LOGIN {5+}\r\nalice {2+}\r\npw\r\n"),
            "<login a login alice pw>"
        );
    }

    #[test]
    fn login_before_tls_requires_privacy() {
        let mut m = starttls_listener();
        assert_eq!(
            exchange(&mut m, b"a LOGIN alice pw\r\n"),
            "a NO [PRIVACYREQUIRED] Log in after STARTTLS\r\n"
        );
        // No continuation: the password is never sent in the clear.
        assert_eq!(
            exchange(&mut m, b"b LOGIN {5}\r\n"),
            "b NO [PRIVACYREQUIRED] Log in after STARTTLS\r\n"
        );
        assert_eq!(exchange(&mut m, b"c NOOP\r\n"), "c OK NOOP completed\r\n");
    }

    #[test]
    fn login_with_non_utf8_name_is_refused_and_counted() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"a LOGIN {2+}\r\n\xff\xfe pw\r\n"),
            "a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
        );
        assert_eq!(m.failed_logins, 1);
    }

    #[test]
    fn login_with_empty_password_is_refused() {
        assert_eq!(
            exchange(&mut implicit_tls(), b"a LOGIN alice \"\"\r\n"),
            "a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
        );
    }

    // ----- AUTHENTICATE PLAIN -----

    #[test]
    fn authenticate_plain_with_initial_response() {
        // base64("\0alice\0pw")
        assert_eq!(
            exchange(
                &mut implicit_tls(),
                b"a AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n"
            ),
            "<login a plain alice pw>"
        );
    }

    #[test]
    fn authenticate_plain_with_continuation() {
        let mut m = implicit_tls();
        assert_eq!(exchange(&mut m, b"a AUTHENTICATE PLAIN\r\n"), "+ \r\n");
        assert_eq!(exchange(&mut m, b"AGFsaWNl"), "");
        assert_eq!(exchange(&mut m, b"AHB3\r\n"), "<login a plain alice pw>");
    }

    #[test]
    fn authenticate_cancelled() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"a AUTHENTICATE PLAIN\r\n*\r\nb NOOP\r\n"),
            "+ \r\na BAD Authentication cancelled\r\nb OK NOOP completed\r\n"
        );
    }

    #[test]
    fn authenticate_with_malformed_sasl() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"a AUTHENTICATE PLAIN\r\n!!!\r\n"),
            "+ \r\na BAD Invalid SASL message\r\n"
        );
        // base64("alice") has no NULs
        assert_eq!(
            exchange(&mut m, b"b AUTHENTICATE PLAIN YWxpY2U=\r\n"),
            "b BAD Invalid SASL message\r\n"
        );
        assert_eq!(
            exchange(&mut m, b"c AUTHENTICATE PLAIN =\r\n"),
            "c BAD Invalid SASL message\r\n"
        );
        assert_eq!(m.failed_logins, 0);
        assert_eq!(m.bad_commands, 3);
    }

    #[test]
    fn authenticate_as_another_user_is_a_failed_login() {
        // base64("bob\0alice\0pw")
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"a AUTHENTICATE PLAIN Ym9iAGFsaWNlAHB3\r\n"),
            "a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
        );
        assert_eq!(m.failed_logins, 1);
    }

    #[test]
    fn authenticate_other_mechanisms_unsupported() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(
                &mut m,
                b"a AUTHENTICATE CRAM-MD5\r\nb AUTHENTICATE XOAUTH2 dXNlcg==\r\n"
            ),
            "a NO [CANNOT] Unsupported authentication mechanism\r\n\
             b NO [CANNOT] Unsupported authentication mechanism\r\n"
        );
    }

    #[test]
    fn authenticate_before_tls_requires_privacy() {
        assert_eq!(
            exchange(&mut starttls_listener(), b"a AUTHENTICATE PLAIN\r\n"),
            "a NO [PRIVACYREQUIRED] Log in after STARTTLS\r\n"
        );
    }

    // ----- verdicts -----

    #[test]
    fn refused_logins_close_after_three() {
        let mut m = implicit_tls();
        for tag in ["a", "b"] {
            exchange(&mut m, format!("{tag} LOGIN alice wrong\r\n").as_bytes());
            m.login_refused();
            assert_eq!(
                drain(&mut m),
                format!("{tag} NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
            );
        }
        exchange(&mut m, b"c LOGIN alice wrong\r\n");
        m.login_refused();
        assert_eq!(
            drain(&mut m),
            "c NO [AUTHENTICATIONFAILED] Authentication failed\r\n* BYE Too many failed logins\r\n<close>"
        );
    }

    #[test]
    fn unavailable_is_not_a_failure() {
        let mut m = PreAuth::new(PreAuthOptions {
            tls_active: true,
            max_failures: 1,
            ..PreAuthOptions::default()
        });
        for _ in 0..3 {
            exchange(&mut m, b"a LOGIN alice pw\r\n");
            m.login_unavailable();
            assert_eq!(
                drain(&mut m),
                "a NO [UNAVAILABLE] Service temporarily unavailable, try again later\r\n"
            );
        }
        assert_eq!(m.failed_logins, 0);
    }

    #[test]
    fn debug_never_shows_buffered_input() {
        let mut m = implicit_tls();
        exchange(
            &mut m,
            b"a LOGIN alice first\r\nb LOGIN alice hunter2\r\nc LOGIN {7}\r\n",
        );
        assert!(!format!("{m:?}").contains("hunter2"));
    }

    #[test]
    fn verdict_calls_without_pending_login_are_ignored() {
        let mut m = implicit_tls();
        m.login_refused();
        m.login_unavailable();
        assert_eq!(drain(&mut m), "");
        assert_eq!(m.failed_logins, 0);
    }

    // ----- pipelining -----

    #[test]
    fn pipelined_commands_are_answered_in_order() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(
                &mut m,
                b"1 NOOP\r\n2 ID NIL\r\n3 SELECT INBOX\r\n4 NOOP\r\n"
            ),
            "1 OK NOOP completed\r\n\
             * ID (\"name\" \"postern\")\r\n2 OK ID completed\r\n\
             3 BAD Log in first\r\n\
             4 OK NOOP completed\r\n"
        );
    }

    #[test]
    fn commands_split_at_every_byte() {
        let input = b"1 NOOP\r\n2 LOGIN {5}\r\nalice {2+}\r\npw\r\n3 NOOP\r\n";
        let mut m = implicit_tls();
        let mut transcript = String::new();
        for byte in input {
            transcript.push_str(&exchange(&mut m, &[*byte]));
        }
        assert_eq!(
            transcript,
            "1 OK NOOP completed\r\n+ Ready for literal data\r\n<login 2 login alice pw>"
        );
        assert_eq!(
            m.into_authenticated(),
            ("2".to_owned(), b"3 NOOP\r\n".to_vec())
        );
    }

    #[test]
    fn input_after_login_waits_for_verdict_then_runs() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"a LOGIN alice wrong\r\nb NOOP\r\n"),
            "<login a login alice wrong>"
        );
        assert!(m.is_awaiting_verdict());
        assert_eq!(exchange(&mut m, b"c NOOP\r\n"), "");
        m.login_refused();
        assert_eq!(
            drain(&mut m),
            "a NO [AUTHENTICATIONFAILED] Authentication failed\r\n\
             b OK NOOP completed\r\nc OK NOOP completed\r\n"
        );
    }

    #[test]
    fn input_after_login_goes_upstream_verbatim() {
        let mut m = implicit_tls();
        let pipelined: &[u8] = b"b SELECT INBOX\nc APPEND x {3+}\r\n\xff\x00\r\r\n";
        let mut input = b"a AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n".to_vec();
        input.extend_from_slice(pipelined);
        assert_eq!(exchange(&mut m, &input), "<login a plain alice pw>");
        m.feed(b"d NOOP\r\n");
        let (tag, rest) = m.into_authenticated();
        assert_eq!(tag, "a");
        assert_eq!(rest, [pipelined, b"d NOOP\r\n"].concat());
    }

    #[test]
    fn wants_input_pauses_while_verdict_pending_and_buffer_full() {
        let mut m = PreAuth::new(PreAuthOptions {
            tls_active: true,
            max_line: 64,
            ..PreAuthOptions::default()
        });
        exchange(&mut m, b"a LOGIN alice pw\r\n");
        assert!(m.wants_input());
        m.feed(&[b'x'; 128]);
        assert!(!m.wants_input());
    }

    // ----- errors and limits -----

    #[test]
    fn bare_lf_line_endings_are_accepted() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"a NOOP\nb LOGIN {5}\n"),
            "a OK NOOP completed\r\n+ Ready for literal data\r\n"
        );
        assert_eq!(exchange(&mut m, b"alice pw\n"), "<login b login alice pw>");
    }

    #[test]
    fn blank_lines_are_ignored() {
        assert_eq!(
            exchange(&mut implicit_tls(), b"\r\n\n\r\na NOOP\r\n"),
            "a OK NOOP completed\r\n"
        );
    }

    #[test]
    fn syntax_errors_keep_the_connection() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"a FOO bar\r\n(garbage\r\nb LOGIN\r\nc NOOP\r\n"),
            "a BAD Syntax error\r\n* BAD Syntax error\r\nb BAD Syntax error\r\nc OK NOOP completed\r\n"
        );
    }

    #[test]
    fn other_commands_need_login_first() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(
                &mut m,
                b"a SELECT INBOX\r\nb ENABLE UTF8=ACCEPT\r\nc APPEND INBOX {10}\r\n"
            ),
            "a BAD Log in first\r\nb BAD Log in first\r\nc BAD Log in first\r\n"
        );
    }

    #[test]
    fn too_many_bad_commands_close() {
        let mut m = PreAuth::new(PreAuthOptions {
            tls_active: true,
            max_bad_commands: 2,
            ..PreAuthOptions::default()
        });
        assert_eq!(
            exchange(&mut m, b"a BOGUS\r\nb BOGUS\r\nc NOOP\r\n"),
            "a BAD Syntax error\r\nb BAD Syntax error\r\n* BYE Too many invalid commands\r\n<close>"
        );
    }

    #[test]
    fn long_line_is_refused_and_discarded_without_buffering() {
        let mut m = PreAuth::new(PreAuthOptions {
            tls_active: true,
            max_line: 64,
            ..PreAuthOptions::default()
        });
        assert_eq!(exchange(&mut m, b"a NOOP "), "");
        assert_eq!(exchange(&mut m, &[b'x'; 100]), "a BAD Line too long\r\n");
        for _ in 0..100 {
            assert_eq!(exchange(&mut m, &[b'y'; 1000]), "");
            assert!(m.input.len() + m.command.len() <= 64);
        }
        assert_eq!(
            exchange(&mut m, b"yyy\r\nb NOOP\r\n"),
            "b OK NOOP completed\r\n"
        );
    }

    #[test]
    fn long_line_in_one_piece() {
        let mut m = PreAuth::new(PreAuthOptions {
            tls_active: true,
            max_line: 64,
            ..PreAuthOptions::default()
        });
        let mut input = b"a LOGIN ".to_vec();
        input.extend([b'x'; 100]);
        input.extend(b"\r\nb NOOP\r\n");
        assert_eq!(
            exchange(&mut m, &input),
            "a BAD Line too long\r\nb OK NOOP completed\r\n"
        );
    }

    #[test]
    fn long_command_of_many_lines_is_refused() {
        let mut m = PreAuth::new(PreAuthOptions {
            tls_active: true,
            max_line: 64,
            ..PreAuthOptions::default()
        });
        let mut input = b"a ID (".to_vec();
        for _ in 0..10 {
            input.extend(b"\"k\" {1+}\r\nv ");
        }
        input.extend(b"\"k\" NIL)\r\nb NOOP\r\n");
        let transcript = exchange(&mut m, &input);
        assert!(
            transcript.contains("a BAD Command too long\r\n"),
            "{transcript}"
        );
        assert!(m.command.len() <= 128);
    }

    #[test]
    fn synchronizing_literal_too_large_is_refused() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(
                &mut m,
                b"a LOGIN {8193}\r\nb LOGIN {99999999999999999999999}\r\nc NOOP\r\n"
            ),
            "a BAD Literal too large\r\nb BAD Literal too large\r\nc OK NOOP completed\r\n"
        );
    }

    #[test]
    fn non_synchronizing_literal_too_large_closes() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"a LOGIN {8193+}\r\nxxxx"),
            "* BYE Literal too large\r\n<close>"
        );
    }

    #[test]
    fn literal_at_the_limit_is_accepted() {
        let mut m = implicit_tls();
        let mut input = b"a LOGIN alice {8192+}\r\n".to_vec();
        input.extend([b'p'; 8192]);
        input.extend(b"\r\n");
        let transcript = exchange(&mut m, &input);
        assert!(
            transcript.starts_with("<login a login alice ppp"),
            "{transcript}"
        );
    }

    #[test]
    fn literal_in_garbage_gets_no_continuation() {
        let mut m = implicit_tls();
        assert_eq!(
            exchange(&mut m, b"a NOOP {5}\r\n"),
            "a BAD Syntax error\r\n"
        );
    }

    #[test]
    fn never_panics_and_stays_bounded_on_random_input() {
        const MAX_LINE: usize = 256;
        const TOKENS: &[&[u8]] = &[
            b"a ",
            b"LOGIN ",
            b"AUTHENTICATE PLAIN",
            b" AGFsaWNlAHB3",
            b"ID (",
            b"\"x\" ",
            b"NIL",
            b")",
            b"{5}",
            b"{3+}",
            b"{999999}",
            b"{300+}",
            b"\r\n",
            b"\n",
            b"\r",
            b"*",
            b"STARTTLS",
            b"NOOP",
            b"CAPABILITY",
            b"LOGOUT",
            b"\"",
            b"\\",
            b"=",
            b" ",
            b"\0",
            b"\xff",
            b"SELECT ",
            b"{0}",
            b"(",
            b"x",
            b"s STARTTLS\r\n",
            b"l LOGIN alice pw\r\n",
            b"p AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n",
            b"q AUTHENTICATE PLAIN\r\n",
            b"AGFsaWNlAHB3\r\n",
            b"r LOGIN {5}\r\nalice {2+}\r\npw\r\n",
        ];
        let mut seed: u64 = 0x5eed;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        let options = |tls_active| PreAuthOptions {
            tls_active,
            starttls_available: !tls_active,
            max_line: MAX_LINE,
            max_failures: 3,
            max_bad_commands: 1000,
        };
        let mut machine = PreAuth::new(options(false));
        let mut logins = 0;
        for round in 0..5000 {
            let mut chunk = Vec::new();
            for _ in 0..next() % 16 {
                if next() % 4 == 0 {
                    chunk.extend((0..next() % 400).map(|_| next() as u8));
                } else {
                    chunk.extend_from_slice(TOKENS[next() % TOKENS.len()]);
                }
            }
            machine.feed(&chunk);
            while let Some(action) = machine.next_action() {
                match action {
                    Action::Login { .. } => {
                        logins += 1;
                        if round % 2 == 0 {
                            machine.login_refused();
                        } else {
                            machine.login_unavailable();
                        }
                    }
                    Action::StartTls => machine.tls_established(),
                    Action::Close => machine = PreAuth::new(options(round % 3 == 0)),
                    Action::Send(_) => {}
                }
            }
            assert!(
                machine.input.len() <= MAX_LINE,
                "input {}",
                machine.input.len()
            );
            assert!(machine.command.len() <= 2 * MAX_LINE);
        }
        assert!(logins > 0, "the generator should reach logins");
    }
}

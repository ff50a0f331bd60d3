//! The POP3 conversation before login (RFC 1939, CAPA from RFC 2449, STLS from RFC 2595,
//! AUTH from RFC 5034, response codes from RFC 3206), as a sans-I/O state machine the
//! session driver runs ([`Machine`]). Nothing here touches a socket, a clock or a log;
//! client input is never logged.
//!
//! - Lines end in CRLF or a bare LF. A line longer than `max_line` gets `-ERR` and is
//!   discarded through its LF without being buffered.
//! - Before TLS, USER, PASS and AUTH are refused (`-ERR [AUTH]`), so a password is never
//!   sent in the clear; bytes pipelined after STLS are discarded (RFC 2595 section 4).
//! - Every credential problem gets one fixed `-ERR [AUTH]` text; a store or upstream that
//!   cannot be reached gets `-ERR [SYS/TEMP]`, a mailbox another session holds upstream
//!   `-ERR [IN-USE]`. After `max_failures` refusals, or `max_bad_commands` invalid
//!   commands, the connection is closed.
//! - While a login waits for its verdict nothing more is parsed; the bytes after it are
//!   handed to the upstream with the session ([`PreAuth::into_authenticated`]).

use std::collections::VecDeque;
use std::convert::Infallible;

use crate::auth::{ClientLogin, Secret};
use crate::sasl;
use crate::session::{Machine, Step};

/// A smaller `max_line` would make ordinary commands impossible.
const MIN_LINE: usize = 16;

const GREETING: &[u8] = b"+OK postern POP3 ready\r\n";
const OK: &[u8] = b"+OK\r\n";
const OK_STLS: &[u8] = b"+OK Begin TLS negotiation\r\n";
const OK_QUIT: &[u8] = b"+OK Logging out\r\n";
const OK_MECHANISMS: &[u8] = b"+OK\r\nPLAIN\r\n.\r\n";
const CONTINUE: &[u8] = b"+ \r\n";
const ERR_AUTH_FAILED: &[u8] = b"-ERR [AUTH] Authentication failed\r\n";
const ERR_PRIVACY: &[u8] = b"-ERR [AUTH] Log in after STLS: no password in the clear\r\n";
const ERR_UNAVAILABLE: &[u8] =
    b"-ERR [SYS/TEMP] Service temporarily unavailable, try again later\r\n";
const ERR_IN_USE: &[u8] = b"-ERR [IN-USE] Mailbox in use by another session, try again later\r\n";
const ERR_CANCELLED: &[u8] = b"-ERR Authentication cancelled\r\n";
const ERR_MECHANISM: &[u8] = b"-ERR Unsupported authentication mechanism\r\n";
const ERR_USER_FIRST: &[u8] = b"-ERR USER first\r\n";
const ERR_SYNTAX: &[u8] = b"-ERR Syntax error\r\n";
const ERR_LOG_IN_FIRST: &[u8] = b"-ERR Log in first\r\n";
const ERR_UNKNOWN: &[u8] = b"-ERR Unknown command\r\n";
const ERR_APOP: &[u8] = b"-ERR APOP is not supported; use USER and PASS\r\n";
const ERR_TLS_ACTIVE: &[u8] = b"-ERR TLS is already active\r\n";
const ERR_STLS_UNAVAILABLE: &[u8] = b"-ERR STLS not available\r\n";
const ERR_LINE_TOO_LONG: &[u8] = b"-ERR Line too long\r\n";
const ERR_TOO_MANY_FAILURES: &[u8] = b"-ERR [AUTH] Too many failed logins\r\n";
const ERR_TOO_MANY_BAD_COMMANDS: &[u8] = b"-ERR Too many invalid commands\r\n";

/// The machine's limits and the connection's TLS state.
#[derive(Debug, Clone, Copy)]
pub struct PreAuthOptions {
    pub tls_active: bool,
    pub starttls_available: bool,
    /// Longest line, its ending included.
    pub max_line: usize,
    /// Refused logins before the connection is closed.
    pub max_failures: u32,
    /// Invalid commands before the connection is closed.
    pub max_bad_commands: u32,
}

/// One POP3 connection before login.
pub struct PreAuth {
    options: PreAuthOptions,
    tls_active: bool,
    input: Vec<u8>,
    /// Dropping the rest of a too-long line, through its LF.
    discarding: bool,
    /// The name USER gave, waiting for PASS.
    user: Option<String>,
    /// AUTH PLAIN came without an initial response: the next line is the response.
    awaiting_response: bool,
    /// A login waits for its verdict.
    pending: bool,
    /// STLS was accepted: nothing more is read until the handshake is done.
    starting_tls: bool,
    failures: u32,
    bad_commands: u32,
    steps: VecDeque<Step<Infallible>>,
    closing: bool,
}

impl std::fmt::Debug for PreAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No input, no user name: nothing the client typed.
        f.debug_struct("PreAuth")
            .field("tls_active", &self.tls_active)
            .field("pending", &self.pending)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl PreAuth {
    pub fn new(options: PreAuthOptions) -> PreAuth {
        PreAuth {
            options: PreAuthOptions {
                max_line: options.max_line.max(MIN_LINE),
                ..options
            },
            tls_active: options.tls_active,
            input: Vec::new(),
            discarding: false,
            user: None,
            awaiting_response: false,
            pending: false,
            starting_tls: false,
            failures: 0,
            bad_commands: 0,
            steps: VecDeque::new(),
            closing: false,
        }
    }

    /// The bytes the client sent after its login, for the upstream.
    pub fn into_authenticated(self) -> Vec<u8> {
        self.input
    }

    fn capabilities(&self) -> Vec<u8> {
        let mut text = String::from("+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n");
        if self.tls_active {
            text.push_str("USER\r\nSASL PLAIN\r\n");
        } else if self.options.starttls_available {
            text.push_str("STLS\r\n");
        }
        text.push_str("IMPLEMENTATION postern\r\n.\r\n");
        text.into_bytes()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.steps.push_back(Step::Send(bytes.to_vec()));
    }

    fn close(&mut self) {
        self.closing = true;
        self.steps.push_back(Step::Close);
    }

    /// An invalid command: answered, and counted towards closing the connection.
    fn bad(&mut self, reply: &[u8]) {
        self.send(reply);
        self.bad_commands += 1;
        if self.bad_commands >= self.options.max_bad_commands {
            self.send(ERR_TOO_MANY_BAD_COMMANDS);
            self.close();
        }
    }

    fn log_in(&mut self, mechanism: &'static str, login: String, password: Secret<String>) {
        if login.is_empty() || password.expose().is_empty() {
            self.refuse();
            return;
        }
        self.pending = true;
        self.steps.push_back(Step::LogIn(ClientLogin {
            mechanism,
            login,
            password,
        }));
    }

    fn refuse(&mut self) {
        self.failures += 1;
        if self.failures >= self.options.max_failures {
            self.send(ERR_TOO_MANY_FAILURES);
            self.close();
        } else {
            self.send(ERR_AUTH_FAILED);
        }
    }

    /// The next complete line, without its ending; `None` until one has arrived.
    fn next_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.closing {
                return None;
            }
            let Some(end) = self.input.iter().position(|&b| b == b'\n') else {
                if self.input.len() > self.options.max_line || self.discarding {
                    if !self.discarding {
                        self.bad(ERR_LINE_TOO_LONG);
                    }
                    self.discarding = true;
                    self.input.clear();
                }
                return None;
            };
            let mut line: Vec<u8> = self.input.drain(..=end).collect();
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            if line.len() > self.options.max_line {
                self.bad(ERR_LINE_TOO_LONG);
                continue;
            }
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Some(line);
        }
    }

    fn command(&mut self, line: &[u8]) {
        if std::mem::take(&mut self.awaiting_response) {
            self.sasl_response(line);
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (verb, argument) = match text.split_once(' ') {
            Some((verb, argument)) => (verb.to_ascii_uppercase(), argument),
            None => (text.to_ascii_uppercase(), ""),
        };
        let plaintext = !self.tls_active;
        match verb.as_str() {
            "" => {}
            "CAPA" => {
                let capabilities = self.capabilities();
                self.send(&capabilities);
            }
            "QUIT" => {
                self.send(OK_QUIT);
                self.close();
            }
            "STLS" if self.tls_active => self.bad(ERR_TLS_ACTIVE),
            "STLS" if !self.options.starttls_available => self.bad(ERR_STLS_UNAVAILABLE),
            "STLS" => {
                self.send(OK_STLS);
                self.starting_tls = true;
                self.steps.push_back(Step::StartTls);
            }
            "USER" | "PASS" | "AUTH" if plaintext && !(verb == "AUTH" && argument.is_empty()) => {
                self.send(ERR_PRIVACY)
            }
            "USER" if argument.is_empty() => self.bad(ERR_SYNTAX),
            "USER" => {
                self.user = Some(argument.to_string());
                self.send(OK);
            }
            "PASS" => match self.user.take() {
                None => self.bad(ERR_USER_FIRST),
                // The password is the rest of the line, spaces and all (RFC 1939).
                Some(user) => self.log_in("user", user, Secret::new(argument.to_string())),
            },
            "AUTH" if argument.is_empty() => self.send(OK_MECHANISMS),
            "AUTH" => {
                let (mechanism, initial) = match argument.split_once(' ') {
                    Some((mechanism, initial)) => (mechanism, Some(initial)),
                    None => (argument, None),
                };
                if !mechanism.eq_ignore_ascii_case("PLAIN") {
                    self.bad(ERR_MECHANISM);
                } else if let Some(initial) = initial {
                    self.sasl_response(initial.as_bytes());
                } else {
                    self.awaiting_response = true;
                    self.send(CONTINUE);
                }
            }
            "APOP" => self.bad(ERR_APOP),
            "STAT" | "LIST" | "RETR" | "DELE" | "NOOP" | "RSET" | "TOP" | "UIDL" | "LAST" => {
                self.bad(ERR_LOG_IN_FIRST)
            }
            _ => self.bad(ERR_UNKNOWN),
        }
    }

    /// The client's answer to AUTH PLAIN: `*` cancels, `=` is an empty response.
    fn sasl_response(&mut self, line: &[u8]) {
        if line == b"*" {
            self.send(ERR_CANCELLED);
            return;
        }
        let decoded = match line {
            b"=" => Ok(Vec::new()),
            _ => sasl::decode_base64(line),
        };
        match decoded.and_then(|message| sasl::decode_plain(&message)) {
            Ok(credentials) => self.log_in("plain", credentials.login, credentials.password),
            Err(_) => self.refuse(),
        }
    }
}

impl Machine for PreAuth {
    type Step = Infallible;

    fn greeting(&self) -> Vec<u8> {
        GREETING.to_vec()
    }

    fn feed(&mut self, bytes: &[u8]) {
        if self.discarding && !bytes.contains(&b'\n') {
            return;
        }
        self.input.extend_from_slice(bytes);
    }

    fn next_step(&mut self) -> Option<Step<Infallible>> {
        loop {
            if let Some(step) = self.steps.pop_front() {
                return Some(step);
            }
            if self.pending || self.closing || self.starting_tls {
                return None;
            }
            match self.next_line() {
                Some(line) => self.command(&line),
                // A too-long line may have queued its refusal.
                None => return self.steps.pop_front(),
            }
        }
    }

    fn tls_established(&mut self) {
        self.tls_active = true;
        self.starting_tls = false;
        // Anything sent with the STLS command was sent in the clear: never act on it.
        self.input.clear();
        self.discarding = false;
        self.user = None;
    }

    fn login_refused(&mut self) {
        self.pending = false;
        self.refuse();
    }

    fn login_unavailable(&mut self) {
        self.pending = false;
        self.send(ERR_UNAVAILABLE);
    }

    fn login_in_use(&mut self) {
        self.pending = false;
        self.send(ERR_IN_USE);
    }

    fn between_commands(&self) -> bool {
        !self.pending && !self.awaiting_response
    }

    fn client_id(&self) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(tls_active: bool) -> PreAuth {
        PreAuth::new(PreAuthOptions {
            tls_active,
            starttls_available: !tls_active,
            max_line: 100,
            max_failures: 3,
            max_bad_commands: 5,
        })
    }

    /// Feeds `input` and runs the machine until it waits: what it sent, and the login
    /// it asks for, if any.
    fn run(m: &mut PreAuth, input: &[u8]) -> (String, Option<ClientLogin>, bool) {
        m.feed(input);
        let mut sent = Vec::new();
        let mut login = None;
        let mut closed = false;
        while let Some(step) = m.next_step() {
            match step {
                Step::Send(bytes) => sent.extend(bytes),
                Step::LogIn(credentials) => login = Some(credentials),
                Step::Close => closed = true,
                Step::StartTls => sent.extend_from_slice(b"<TLS>"),
                Step::Protocol(never) => match never {},
            }
        }
        (String::from_utf8(sent).unwrap(), login, closed)
    }

    #[test]
    fn outlook_capa_user_pass() {
        let mut m = machine(true);
        let (sent, _, _) = run(&mut m, b"CAPA\r\n");
        assert_eq!(
            sent,
            "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n\
             PIPELINING\r\nUSER\r\nSASL PLAIN\r\nIMPLEMENTATION postern\r\n.\r\n"
        );
        let (sent, login, _) = run(
            &mut m,
            b"USER alice@example.test\r\nPASS abcd efgh ijkl mnop\r\nSTAT\r\n",
        );
        assert_eq!(sent, "+OK\r\n");
        let login = login.expect("a login");
        assert_eq!(
            (login.mechanism, login.login.as_str()),
            ("user", "alice@example.test")
        );
        assert_eq!(login.password.expose(), "abcd efgh ijkl mnop");
        assert!(!m.between_commands());
        assert_eq!(
            m.into_authenticated(),
            b"STAT\r\n",
            "pipelined bytes go upstream"
        );
    }

    #[test]
    fn auth_plain_with_and_without_initial_response_and_cancel() {
        let response = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            b"\0alice\0secret words",
        );
        let mut m = machine(true);
        let (sent, login, _) = run(&mut m, format!("AUTH PLAIN {response}\r\n").as_bytes());
        assert_eq!(sent, "");
        assert_eq!(login.unwrap().password.expose(), "secret words");

        let mut m = machine(true);
        let (sent, login, _) = run(&mut m, b"AUTH PLAIN\r\n");
        assert_eq!((sent.as_str(), login.is_none()), ("+ \r\n", true));
        let (sent, login, _) = run(&mut m, b"*\r\n");
        assert_eq!(
            (sent.as_str(), login.is_none()),
            ("-ERR Authentication cancelled\r\n", true)
        );
        run(&mut m, b"AUTH plain\r\n");
        let (_, login, _) = run(&mut m, format!("{response}\r\n").as_bytes());
        assert_eq!(login.unwrap().login, "alice");

        let (sent, _, _) = run(&mut machine(true), b"AUTH\r\n");
        assert_eq!(sent, "+OK\r\nPLAIN\r\n.\r\n");
        let (sent, _, _) = run(&mut machine(true), b"AUTH CRAM-MD5\r\n");
        assert_eq!(sent, "-ERR Unsupported authentication mechanism\r\n");
    }

    #[test]
    fn before_stls_no_credentials_and_pipelined_bytes_are_dropped() {
        let mut m = machine(false);
        let (sent, _, _) = run(&mut m, b"CAPA\r\n");
        assert!(
            sent.contains("STLS\r\n") && !sent.contains("USER") && !sent.contains("SASL"),
            "{sent}"
        );
        for command in [
            "USER alice\r\n",
            "PASS secret\r\n",
            "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
        ] {
            let (sent, login, _) = run(&mut m, command.as_bytes());
            assert_eq!(
                sent,
                "-ERR [AUTH] Log in after STLS: no password in the clear\r\n"
            );
            assert!(login.is_none());
        }
        let (sent, _, _) = run(&mut m, b"STLS\r\nUSER mallory\r\nPASS injected\r\n");
        assert_eq!(sent, "+OK Begin TLS negotiation\r\n<TLS>");
        m.tls_established();
        let (sent, login, _) = run(&mut m, b"PASS x\r\n");
        assert_eq!(
            sent, "-ERR USER first\r\n",
            "the plaintext USER was discarded"
        );
        assert!(login.is_none());
        let (sent, _, _) = run(&mut m, b"STLS\r\n");
        assert_eq!(sent, "-ERR TLS is already active\r\n");
    }

    #[test]
    fn refusals_unavailability_in_use_and_the_failure_limit() {
        let mut m = machine(true);
        for n in 1..=3 {
            let (_, login, _) = run(&mut m, b"USER alice\nPASS wrong\n");
            assert!(login.is_some(), "bare LF lines work");
            m.login_refused();
            let (sent, _, closed) = run(&mut m, b"");
            if n < 3 {
                assert_eq!(
                    (sent.as_str(), closed),
                    ("-ERR [AUTH] Authentication failed\r\n", false)
                );
            } else {
                assert_eq!(
                    (sent.as_str(), closed),
                    ("-ERR [AUTH] Too many failed logins\r\n", true)
                );
            }
        }
        let mut m = machine(true);
        run(&mut m, b"USER alice\r\nPASS right\r\n");
        m.login_unavailable();
        let (sent, _, closed) = run(&mut m, b"");
        assert_eq!(
            sent,
            "-ERR [SYS/TEMP] Service temporarily unavailable, try again later\r\n"
        );
        assert!(!closed);
        let (_, login, _) = run(&mut m, b"USER alice\r\nPASS \r\n");
        assert!(
            login.is_none(),
            "an empty password is refused without a lookup"
        );
        run(&mut m, b"USER alice\r\nPASS right\r\n");
        m.login_in_use();
        let (sent, _, closed) = run(&mut m, b"");
        assert_eq!(
            (sent.as_str(), closed),
            (
                "-ERR [IN-USE] Mailbox in use by another session, try again later\r\n",
                false
            )
        );
    }

    #[test]
    fn long_lines_unknown_commands_and_quit() {
        let mut m = machine(true);
        let mut long = vec![b'x'; 300];
        long.extend_from_slice(b"\r\nCAPA\r\n");
        let (sent, _, _) = run(&mut m, &long[..150]);
        assert_eq!(sent, "-ERR Line too long\r\n");
        let (sent, _, _) = run(&mut m, &long[150..]);
        assert!(sent.starts_with("+OK Capability list"), "{sent}");
        let (sent, _, _) = run(&mut m, b"RETR 1\r\nXYZZY\r\nAPOP a b\r\n");
        assert_eq!(
            sent,
            "-ERR Log in first\r\n-ERR Unknown command\r\n\
             -ERR APOP is not supported; use USER and PASS\r\n"
        );
        let (sent, _, closed) = run(&mut m, b"NOOP\r\n");
        assert_eq!(
            (sent.as_str(), closed),
            (
                "-ERR Log in first\r\n-ERR Too many invalid commands\r\n",
                true
            )
        );
        let (sent, _, closed) = run(&mut machine(true), b"quit\r\nCAPA\r\n");
        assert_eq!((sent.as_str(), closed), ("+OK Logging out\r\n", true));
    }

    #[test]
    fn nothing_follows_the_close_after_too_many_long_lines() {
        let mut m = machine(true);
        let mut input = Vec::new();
        for _ in 0..6 {
            input.extend_from_slice(&[b'x'; 120]);
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b"CAPA\r\n");
        let (sent, _, closed) = run(&mut m, &input);
        assert!(closed);
        assert!(
            sent.ends_with("-ERR Too many invalid commands\r\n"),
            "{sent}"
        );
        assert!(!sent.contains("Capability"), "{sent}");
    }

    #[test]
    fn garbage_never_panics() {
        let mut m = machine(true);
        let inputs: [&[u8]; 6] = [
            b"\xff\xfe\r\n",
            b"AUTH PLAIN !!!\r\n",
            b"AUTH PLAIN =\r\n",
            b"USER \r\n",
            b"\r\n\n\n",
            b"PASS\r\n",
        ];
        for input in inputs {
            run(&mut m, input);
        }
    }
}

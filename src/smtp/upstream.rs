//! postern as an SMTP client of the real submission server: greeting, EHLO, STARTTLS,
//! XCLIENT with the client's address, then AUTH PLAIN with an authorization identity or
//! as the master user; afterwards the transaction commands the session relays. Replies
//! are parsed strictly and bounded, and kept byte for byte, because the client's reply
//! to its transaction is the upstream's own.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::Secret;
use crate::config::UpstreamTls;
use crate::net::stream::Stream;
use crate::upstream::credentials::Credentials;
use crate::upstream::{within, Upstream, UpstreamError};

/// Most bytes in one reply, every line with its CRLF. An EHLO reply is well under 1 KiB.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Most lines in one reply; an EHLO reply has about a dozen.
const MAX_REPLY_LINES: usize = 100;

/// Longest command line postern composes itself, CRLF included (RFC 5321 4.5.3.1.4).
const MAX_COMMAND_LINE: usize = 512;

/// What the upstream's EHLO offered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// SIZE: the largest message accepted, in octets; `Some(0)` when offered without a
    /// number, which RFC 1870 reads as "no fixed limit".
    pub size: Option<u64>,
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub chunking: bool,
    pub enhanced_status_codes: bool,
    pub starttls: bool,
    /// SASL mechanisms, uppercase, in the order offered.
    pub auth: Vec<String>,
    /// XCLIENT's attribute names, uppercase; offered only to trusted clients.
    pub xclient: Option<Vec<String>>,
}

impl Capabilities {
    /// Reads the extension lines of an EHLO reply: every line after the first, which
    /// names the server. Keywords are case-insensitive; unknown ones are ignored.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut capabilities = Capabilities::default();
        for line in reply.lines().skip(1) {
            let line = String::from_utf8_lossy(line);
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            match keyword.as_str() {
                "SIZE" => {
                    capabilities.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0))
                }
                "PIPELINING" => capabilities.pipelining = true,
                "8BITMIME" => capabilities.eight_bit_mime = true,
                "SMTPUTF8" => capabilities.smtputf8 = true,
                "DSN" => capabilities.dsn = true,
                "CHUNKING" => capabilities.chunking = true,
                "ENHANCEDSTATUSCODES" => capabilities.enhanced_status_codes = true,
                "STARTTLS" => capabilities.starttls = true,
                "AUTH" => capabilities.add_mechanisms(words),
                "XCLIENT" => {
                    capabilities.xclient = Some(words.map(str::to_ascii_uppercase).collect())
                }
                // `AUTH=PLAIN LOGIN`: the pre-RFC 4954 spelling some servers add.
                other => {
                    if let Some(first) = other.strip_prefix("AUTH=") {
                        capabilities.add_mechanisms(std::iter::once(first).chain(words));
                    }
                }
            }
        }
        capabilities
    }

    /// Whether AUTH offers `mechanism` (uppercase).
    pub fn offers_auth(&self, mechanism: &str) -> bool {
        self.auth.iter().any(|m| m == mechanism)
    }

    fn add_mechanisms<'a>(&mut self, mechanisms: impl Iterator<Item = &'a str>) {
        for mechanism in mechanisms {
            let mechanism = mechanism.to_ascii_uppercase();
            if !mechanism.is_empty() && !self.auth.contains(&mechanism) {
                self.auth.push(mechanism);
            }
        }
    }
}

/// One complete (possibly multi-line) reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code, the same on every line.
    pub code: u16,
    /// Every line exactly as received, line endings included: what the client is sent.
    pub raw: Vec<u8>,
}

impl Reply {
    /// 2xx: the command succeeded.
    pub fn is_positive_completion(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx: the upstream waits for more (354 after DATA, 334 during AUTH).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// The text of each line, after `ddd-` or `ddd `, without its line ending.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.raw
            .split_inclusive(|&b| b == b'\n')
            .map(|line| strip_line_ending(line).get(4..).unwrap_or_default())
    }

    /// For logs: the text of every line joined by spaces, without codes or control
    /// characters.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for (i, line) in self.lines().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            text.extend(String::from_utf8_lossy(line).chars().map(|c| {
                if c.is_control() {
                    '?'
                } else {
                    c
                }
            }));
        }
        text
    }
}

/// What the upstream login needs to know about the client.
#[derive(Debug, Clone)]
pub struct LoginRequest<'a> {
    /// The upstream account to act as.
    pub upstream_user: &'a str,
    /// The client's address, passed in XCLIENT as ADDR and PORT.
    pub client: SocketAddr,
    /// The name the client gave in EHLO or HELO, passed in XCLIENT as HELO.
    pub client_helo: Option<&'a str>,
    /// The postern login, for the caller's logs; it never goes upstream.
    pub login: &'a str,
}

/// Connects, reads the greeting, says EHLO (and STARTTLS and EHLO again when the upstream
/// is configured so), then QUIT. What it returns is what postern may advertise to clients
/// before they log in: SIZE, SMTPUTF8, DSN and the like. Some servers (Dovecot) say more
/// after AUTH; [`SmtpUpstream::capabilities`] has that.
pub async fn probe(upstream: &Upstream, hostname: &str) -> Result<Capabilities, UpstreamError> {
    let (conn, _) = open(upstream, hostname).await?;
    let capabilities = conn.capabilities.clone();
    conn.quit().await;
    Ok(capabilities)
}

/// Connects and logs in: greeting, EHLO, STARTTLS and EHLO when configured, XCLIENT with
/// the client's address when the upstream offers it (then EHLO once more, after its new
/// greeting), AUTH, and a last EHLO for the capabilities that hold after AUTH. Returns
/// the session, ready for MAIL FROM, and how long the connect took.
///
/// After XCLIENT postern speaks for the client, so the EHLOs that follow carry the
/// client's own EHLO name when it is a valid one (Postfix's XCLIENT_README does the same):
/// the upstream's Received header and HELO checks see the client, as if it had connected
/// directly. Dovecot, for one, takes the name of the last EHLO, not XCLIENT's HELO.
///
/// `Err(UpstreamError::Refused)` means the upstream refused the credentials or the
/// authorization (a 5xx to AUTH); every other error means the upstream is unavailable,
/// and `Rejected` carries a 4xx or an unexpected 5xx with the phase it answered.
pub async fn login(
    upstream: &Upstream,
    hostname: &str,
    request: &LoginRequest<'_>,
) -> Result<(SmtpUpstream, Duration), UpstreamError> {
    let (mut conn, connect_time) = open(upstream, hostname).await?;

    let mut ehlo_name = hostname;
    let xclient = conn
        .capabilities
        .xclient
        .as_deref()
        .and_then(|offered| xclient_command(offered, request.client, request.client_helo));
    if let Some(command) = xclient {
        let reply = conn.exchange(command.as_bytes(), "XCLIENT").await?;
        if !reply.is_positive_completion() {
            return Err(UpstreamError::Rejected {
                phase: "XCLIENT",
                code: reply.code,
            });
        }
        // That reply was a fresh 220 greeting: the session starts over, EHLO first.
        ehlo_name = request
            .client_helo
            .filter(|name| is_ehlo_argument(name))
            .unwrap_or(hostname);
        conn.ehlo(ehlo_name).await?;
    }

    authenticate(&mut conn, upstream, request.upstream_user).await?;
    // EHLO keeps the authentication; Dovecot announces its real SIZE limit only now.
    conn.ehlo(ehlo_name).await?;
    Ok((conn, connect_time))
}

/// Connect, greeting, EHLO, and STARTTLS with a second EHLO when configured.
async fn open(
    upstream: &Upstream,
    hostname: &str,
) -> Result<(SmtpUpstream, Duration), UpstreamError> {
    let (stream, connect_time) = upstream.connect().await?;
    let mut conn = SmtpUpstream::new(stream, upstream.reply_timeout);

    let greeting = conn.reply("greeting", upstream.reply_timeout).await?;
    if greeting.code != 220 {
        return Err(UpstreamError::Rejected {
            phase: "greeting",
            code: greeting.code,
        });
    }
    conn.ehlo(hostname).await?;

    if upstream.tls == UpstreamTls::Starttls {
        if !conn.capabilities.starttls {
            return Err(UpstreamError::Unsupported("STARTTLS"));
        }
        let reply = conn.exchange(b"STARTTLS\r\n", "STARTTLS").await?;
        if reply.code != 220 {
            return Err(UpstreamError::Rejected {
                phase: "STARTTLS",
                code: reply.code,
            });
        }
        // What the upstream sent after its 220 is dropped with the old buffer.
        let tls = upstream.upgrade(conn.stream).await?;
        conn = SmtpUpstream::new(tls, upstream.reply_timeout);
        conn.ehlo(hostname).await?;
    }
    Ok((conn, connect_time))
}

/// AUTH as the configured master user on the user's behalf.
async fn authenticate(
    conn: &mut SmtpUpstream,
    upstream: &Upstream,
    user: &str,
) -> Result<(), UpstreamError> {
    if conn.capabilities.auth.is_empty() {
        return Err(UpstreamError::Unsupported("AUTH"));
    }
    let mut credentials = upstream.login.credentials(user).await?;
    let mut outcome = present(conn, &credentials)
        .await
        .and_then(|r| auth_outcome(&r));
    if matches!(outcome, Err(UpstreamError::Refused)) && upstream.login.refused(&credentials).await
    {
        // A refused token may have been revoked or expired early: one fresh try.
        credentials = upstream.login.credentials(user).await?;
        outcome = present(conn, &credentials)
            .await
            .and_then(|r| auth_outcome(&r));
        if matches!(outcome, Err(UpstreamError::Refused)) {
            upstream.login.refused(&credentials).await;
        }
    }
    outcome
}

/// Presents `credentials` by the SASL mechanism they need, or AUTH LOGIN for a master
/// login where PLAIN is not offered. Returns the last reply.
async fn present(
    conn: &mut SmtpUpstream,
    credentials: &Credentials,
) -> Result<Reply, UpstreamError> {
    let mechanism = credentials.mechanism();
    if conn.capabilities.offers_auth(mechanism) {
        return auth_sasl(conn, credentials).await;
    }
    match credentials {
        Credentials::MasterLogin { name, password } if conn.capabilities.offers_auth("LOGIN") => {
            auth_login(conn, name, password).await
        }
        Credentials::MasterLogin { .. } => Err(UpstreamError::Unsupported("AUTH PLAIN or LOGIN")),
        Credentials::Authzid { .. } => Err(UpstreamError::Unsupported("AUTH PLAIN")),
        Credentials::Bearer {
            oauthbearer: false, ..
        } => Err(UpstreamError::Unsupported("AUTH XOAUTH2")),
        Credentials::Bearer { .. } => Err(UpstreamError::Unsupported("AUTH OAUTHBEARER")),
    }
}

/// `AUTH <mechanism>` with the response on the command line, or after the empty
/// challenge when the line would be too long for it (RFC 4954 section 4: a token always
/// is). A challenge after the response is a bearer token's refusal (RFC 7628 3.2.2): its
/// JSON goes to the log and the answer the mechanism expects brings the final reply.
/// Returns the last reply.
async fn auth_sasl(
    conn: &mut SmtpUpstream,
    credentials: &Credentials,
) -> Result<Reply, UpstreamError> {
    let mechanism = credentials.mechanism();
    let response = credentials.sasl_response();
    let command = Secret::new(format!("AUTH {mechanism} {}\r\n", response.expose()));
    let reply = if command.expose().len() <= MAX_COMMAND_LINE {
        conn.exchange(command.expose().as_bytes(), "login").await?
    } else {
        let challenge = conn
            .exchange(format!("AUTH {mechanism}\r\n").as_bytes(), "login")
            .await?;
        if challenge.code != 334 {
            return Ok(challenge);
        }
        let line = Secret::new(format!("{}\r\n", response.expose()));
        conn.exchange(line.expose().as_bytes(), "login").await?
    };
    if reply.code != 334 {
        return Ok(reply);
    }
    if credentials.is_token() {
        let challenge = reply.text();
        tracing::warn!(
            mechanism,
            challenge = %crate::sasl::bearer_challenge_text(&challenge),
            "upstream refused the token"
        );
    }
    let answer = format!("{}\r\n", credentials.challenge_answer());
    conn.exchange(answer.as_bytes(), "login").await
}

/// `AUTH LOGIN`: the name, then the password, each after a 334 challenge (whatever its
/// text). Returns the last reply.
async fn auth_login(
    conn: &mut SmtpUpstream,
    name: &str,
    password: &Secret<String>,
) -> Result<Reply, UpstreamError> {
    let base64 = &base64::engine::general_purpose::STANDARD;
    let challenge = conn.exchange(b"AUTH LOGIN\r\n", "login").await?;
    if challenge.code != 334 {
        return Ok(challenge);
    }
    let line = format!("{}\r\n", base64.encode(name));
    let challenge = conn.exchange(line.as_bytes(), "login").await?;
    if challenge.code != 334 {
        return Ok(challenge);
    }
    let line = Secret::new(format!("{}\r\n", base64.encode(password.expose())));
    conn.exchange(line.expose().as_bytes(), "login").await
}

/// What the last reply to AUTH means.
fn auth_outcome(reply: &Reply) -> Result<(), UpstreamError> {
    match reply.code {
        200..=299 => Ok(()),
        // A challenge where PLAIN and LOGIN expect none.
        300..=399 => Err(UpstreamError::Protocol { phase: "login" }),
        // Syntax errors and unknown mechanisms are postern's or the configuration's fault,
        // not the user's.
        500..=504 => Err(UpstreamError::Rejected {
            phase: "login",
            code: reply.code,
        }),
        505..=599 => Err(UpstreamError::Refused),
        code => Err(UpstreamError::Rejected {
            phase: "login",
            code,
        }),
    }
}

/// `XCLIENT ADDR=… PORT=… HELO=…` with those of the attributes the upstream listed,
/// telling it who the real client is; `None` when it listed none of them. An IPv6 address
/// carries the `IPV6:` prefix of Postfix's XCLIENT_README, which Dovecot accepts too; an
/// IPv4-mapped address is sent as IPv4. A HELO name that would push the line past 512
/// octets is left out.
fn xclient_command(offered: &[String], client: SocketAddr, helo: Option<&str>) -> Option<String> {
    let offers = |name: &str| offered.iter().any(|o| o.eq_ignore_ascii_case(name));
    let mut command = String::from("XCLIENT");
    if offers("ADDR") {
        let address = match client.ip().to_canonical() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("IPV6:{v6}"),
        };
        command.push_str(" ADDR=");
        command.push_str(&xtext(address.as_bytes()));
    }
    if offers("PORT") {
        command.push_str(&format!(" PORT={}", client.port()));
    }
    if let Some(helo) = helo.filter(|h| !h.is_empty() && offers("HELO")) {
        let attribute = format!(" HELO={}", xtext(helo.as_bytes()));
        if command.len() + attribute.len() + 2 <= MAX_COMMAND_LINE {
            command.push_str(&attribute);
        }
    }
    if command.len() == "XCLIENT".len() {
        return None;
    }
    command.push_str("\r\n");
    Some(command)
}

/// Whether `name` may follow EHLO (RFC 5321 4.1.1.1): a domain of letter-digit-hyphen
/// labels, or an IPv4 or `IPv6:` address literal in brackets.
fn is_ehlo_argument(name: &str) -> bool {
    if let Some(literal) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return match literal.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
                literal[5..].parse::<std::net::Ipv6Addr>().is_ok()
            }
            _ => literal.parse::<std::net::Ipv4Addr>().is_ok(),
        };
    }
    name.len() <= 255
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// xtext (RFC 3461 section 4): printable ASCII except `+` and `=` as is, every other
/// octet as `+XX`.
fn xtext(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// A connection to the upstream submission server, logged in (from [`login`]) and between
/// commands.
#[derive(Debug)]
pub struct SmtpUpstream {
    stream: Stream,
    /// Bytes read but not yet returned as a reply: the rest of a pipelined batch.
    buffer: Vec<u8>,
    /// Bytes queued by [`SmtpUpstream::send`], not yet written: a message's header, body
    /// and final dot go out together, as few TLS records and writes as the size allows.
    pending: Vec<u8>,
    capabilities: Capabilities,
    reply_timeout: Duration,
}

impl SmtpUpstream {
    fn new(stream: Stream, reply_timeout: Duration) -> Self {
        Self {
            stream,
            buffer: Vec::with_capacity(1024),
            pending: Vec::new(),
            capabilities: Capabilities::default(),
            reply_timeout,
        }
    }

    /// What the upstream's last EHLO offered (after AUTH, once logged in).
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Writes `line` (which must end in CRLF) and reads one reply, each within the reply
    /// timeout; a timeout's phase is the command's verb.
    pub async fn command(&mut self, line: &[u8]) -> Result<Reply, UpstreamError> {
        debug_assert!(line.ends_with(b"\r\n"), "an SMTP command line ends in CRLF");
        self.exchange(line, command_phase(line)).await
    }

    /// Writes `line` (which must end in CRLF) without reading its reply: DATA, whose `354`
    /// is read by [`SmtpUpstream::read_reply`] once the client's message arrives.
    pub async fn send_command(&mut self, line: &[u8]) -> Result<(), UpstreamError> {
        debug_assert!(line.ends_with(b"\r\n"), "an SMTP command line ends in CRLF");
        self.write(line, command_phase(line)).await
    }

    /// Queues raw bytes (message data, a pipelined command) without reading. They are
    /// written once [`SEND_BATCH`] bytes are queued, by [`SmtpUpstream::flush`], or before
    /// the next command or reply is read.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= SEND_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what [`SmtpUpstream::send`] queued.
    pub async fn flush(&mut self) -> Result<(), UpstreamError> {
        self.write_pending("message data").await
    }

    async fn write_pending(&mut self, phase: &'static str) -> Result<(), UpstreamError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written =
            write_within(&mut self.stream, self.reply_timeout, &self.pending, phase).await;
        self.pending.clear();
        // A big message's batch is not kept for the rest of the session.
        if self.pending.capacity() > SEND_BATCH {
            self.pending = Vec::new();
        }
        written
    }

    /// Reads one reply (to a pipelined command, or to the final dot) within the reply
    /// timeout.
    pub async fn read_reply(&mut self) -> Result<Reply, UpstreamError> {
        self.reply("reply", self.reply_timeout).await
    }

    /// Reads one reply within `after`: for the reply to the final dot, which RFC 5321
    /// 4.5.3.2.6 allows 10 minutes because the upstream may scan or relay the message
    /// first.
    pub async fn read_reply_within(&mut self, after: Duration) -> Result<Reply, UpstreamError> {
        self.reply("reply", after).await
    }

    /// QUIT and close, best effort, bounded by the reply timeout.
    pub async fn quit(mut self) {
        let after = self.reply_timeout;
        let _ = tokio::time::timeout(after, async {
            if self.write(b"QUIT\r\n", "QUIT").await.is_ok() {
                let _ = self.reply("QUIT", after).await;
            }
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    async fn ehlo(&mut self, name: &str) -> Result<(), UpstreamError> {
        // Nothing in the name may end the line early.
        let name: String = name.chars().filter(char::is_ascii_graphic).collect();
        let reply = self
            .exchange(format!("EHLO {name}\r\n").as_bytes(), "EHLO")
            .await?;
        if !reply.is_positive_completion() {
            return Err(UpstreamError::Rejected {
                phase: "EHLO",
                code: reply.code,
            });
        }
        self.capabilities = Capabilities::from_ehlo(&reply);
        Ok(())
    }

    async fn exchange(
        &mut self,
        bytes: &[u8],
        phase: &'static str,
    ) -> Result<Reply, UpstreamError> {
        self.write(bytes, phase).await?;
        self.reply(phase, self.reply_timeout).await
    }

    /// Writes `bytes` after whatever is queued, in one go.
    async fn write(&mut self, bytes: &[u8], phase: &'static str) -> Result<(), UpstreamError> {
        if self.pending.is_empty() {
            return write_within(&mut self.stream, self.reply_timeout, bytes, phase).await;
        }
        self.pending.extend_from_slice(bytes);
        self.write_pending(phase).await
    }

    /// One whole reply within `after`, however slowly its bytes arrive.
    async fn reply(
        &mut self,
        phase: &'static str,
        after: Duration,
    ) -> Result<Reply, UpstreamError> {
        // What was queued is what the reply answers.
        self.flush().await?;
        let stream = &mut self.stream;
        let buffer = &mut self.buffer;
        within(phase, after, async {
            loop {
                match parse_reply(buffer) {
                    Ok(Some((reply, used))) => {
                        buffer.drain(..used);
                        return Ok(reply);
                    }
                    Ok(None) => {}
                    Err(Malformed) => return Err(UpstreamError::Protocol { phase }),
                }
                buffer.reserve(4096);
                let read = stream
                    .read_buf(buffer)
                    .await
                    .map_err(|source| UpstreamError::Io { phase, source })?;
                if read == 0 {
                    return Err(UpstreamError::Closed(phase));
                }
            }
        })
        .await
    }
}

/// Writes and flushes `bytes` (TLS may hold the last record back until flushed) within
/// `after`.
async fn write_within(
    stream: &mut Stream,
    after: Duration,
    bytes: &[u8],
    phase: &'static str,
) -> Result<(), UpstreamError> {
    within(phase, after, async {
        let io = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        io.await
            .map_err(|source| UpstreamError::Io { phase, source })
    })
    .await
}

/// Queued message bytes that are written without waiting for the end of the round: 64 KiB
/// is four full TLS records in one write.
const SEND_BATCH: usize = 64 * 1024;

/// The phase a command's timeout or failure is reported under: its verb.
fn command_phase(line: &[u8]) -> &'static str {
    const VERBS: [&str; 10] = [
        "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "EHLO", "HELO", "VRFY",
    ];
    let verb = line
        .split(|&b| b == b' ' || b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    VERBS
        .into_iter()
        .find(|v| verb.eq_ignore_ascii_case(v.as_bytes()))
        .unwrap_or("command")
}

/// Bytes from the upstream that are not an SMTP reply, or a reply too large to be honest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// The first complete reply at the start of `buffer` and how many bytes it took, or
/// `Ok(None)` while more bytes are needed. Each line is `ddd-text` (more follow) or
/// `ddd text` / `ddd` (the last), ended by CRLF or a bare LF, with the same code on every
/// line; at most [`MAX_REPLY_LINES`] lines and [`MAX_REPLY_BYTES`] bytes. Garbage fails as
/// soon as it is seen, not when the reply timeout runs out.
pub fn parse_reply(buffer: &[u8]) -> Result<Option<(Reply, usize)>, Malformed> {
    let mut code = None;
    let mut at = 0;
    for _ in 0..MAX_REPLY_LINES {
        let rest = &buffer[at..];
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            let partial = rest.strip_suffix(b"\r").unwrap_or(rest);
            check_line(partial, code)?;
            if buffer.len() >= MAX_REPLY_BYTES {
                return Err(Malformed);
            }
            return Ok(None);
        };
        let end = at + lf + 1;
        if end > MAX_REPLY_BYTES {
            return Err(Malformed);
        }
        let line = strip_line_ending(&rest[..=lf]);
        if line.len() < 3 {
            return Err(Malformed);
        }
        let (line_code, last) = check_line(line, code)?;
        code = line_code;
        at = end;
        if last {
            let code = line_code.ok_or(Malformed)?;
            let reply = Reply {
                code,
                raw: buffer[..at].to_vec(),
            };
            return Ok(Some((reply, at)));
        }
    }
    Err(Malformed)
}

/// Checks as much of one line (without its line ending) as is there. Returns its code
/// once three digits are in, and whether it is the last line of its reply.
fn check_line(line: &[u8], expected: Option<u16>) -> Result<(Option<u16>, bool), Malformed> {
    for (i, &b) in line.iter().take(3).enumerate() {
        let allowed = match i {
            0 => b'2'..=b'5',
            1 => b'0'..=b'5',
            _ => b'0'..=b'9',
        };
        if !allowed.contains(&b) {
            return Err(Malformed);
        }
    }
    let code = match line.get(..3) {
        Some(digits) => {
            let code = digits
                .iter()
                .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
            if expected.is_some_and(|e| e != code) {
                return Err(Malformed);
            }
            Some(code)
        }
        None => expected,
    };
    let last = match line.get(3) {
        None | Some(b' ') => true,
        Some(b'-') => false,
        Some(_) => return Err(Malformed),
    };
    if line.iter().any(|&b| b == 0 || b == b'\r') {
        return Err(Malformed);
    }
    Ok((code, last))
}

/// `line` without its LF or CRLF.
fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dovecot 2.3.19's EHLO reply on its STARTTLS port, before TLS.
    const DOVECOT_EHLO: &[u8] = b"250-vm\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n\
        250-BURL imap\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE\r\n\
        250-STARTTLS\r\n250-PIPELINING\r\n\
        250 XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT FORWARD\r\n";

    /// And after AUTH: the real SIZE, no AUTH mechanisms, no XCLIENT.
    const DOVECOT_EHLO_AFTER_AUTH: &[u8] = b"250-vm\r\n250-8BITMIME\r\n250-AUTH\r\n\
        250-BURL imap imap://vm\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n\
        250-PIPELINING\r\n250 SIZE 41943040\r\n";

    fn reply(raw: &[u8]) -> Reply {
        let (reply, used) = parse_reply(raw).unwrap().unwrap();
        assert_eq!(used, raw.len());
        reply
    }

    #[test]
    fn a_multi_line_reply_is_one_reply_kept_byte_for_byte() {
        let mut buffer = DOVECOT_EHLO.to_vec();
        buffer.extend_from_slice(b"220 2.0.0 Begin TLS\r\n");
        let (ehlo, used) = parse_reply(&buffer).unwrap().unwrap();
        assert_eq!(ehlo.code, 250);
        assert_eq!(used, DOVECOT_EHLO.len());
        assert_eq!(ehlo.raw, DOVECOT_EHLO);
        assert!(ehlo.is_positive_completion() && !ehlo.is_intermediate());
        let (next, _) = parse_reply(&buffer[used..]).unwrap().unwrap();
        assert_eq!(next.code, 220);
        assert_eq!(next.text(), "2.0.0 Begin TLS");
    }

    #[test]
    fn a_reply_split_across_reads_waits_for_its_last_line() {
        let stream = b"250-first\r\n250 second\r\n354 go ahead\r\n";
        // Fed one byte at a time, a reply appears exactly when its last LF arrives.
        let mut buffer = Vec::new();
        let mut replies = Vec::new();
        for &b in stream {
            buffer.push(b);
            if let Some((reply, used)) = parse_reply(&buffer).unwrap() {
                buffer.drain(..used);
                replies.push(reply);
            }
        }
        assert!(buffer.is_empty());
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0].raw, b"250-first\r\n250 second\r\n");
        assert_eq!(replies[0].text(), "first second");
        assert_eq!(replies[1].code, 354);
        assert!(replies[1].is_intermediate());
        assert_eq!(parse_reply(b"250-first\r\n250 sec"), Ok(None));
        assert_eq!(parse_reply(b"250-first\r"), Ok(None));
        assert_eq!(parse_reply(b""), Ok(None));
    }

    #[test]
    fn bare_lf_and_code_only_lines_are_accepted() {
        let r = reply(b"250-a\n250\n");
        assert_eq!(r.code, 250);
        assert_eq!(r.raw, b"250-a\n250\n");
        assert_eq!(r.lines().collect::<Vec<_>>(), [&b"a"[..], &b""[..]]);
        assert_eq!(reply(b"221\r\n").code, 221);
        assert_eq!(reply(b"250-\r\n250 \r\n").text(), " ");
        // 8-bit text (SMTPUTF8 servers) is kept; text() is lossy and printable.
        let r = reply("550 5.1.1 <jösé@example.test>\tunknown\r\n".as_bytes());
        assert_eq!(r.text(), "5.1.1 <jösé@example.test>?unknown");
    }

    #[test]
    fn malformed_replies_are_refused() {
        for bad in [
            &b"hello\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\n",
            b"25\r\n",
            b"2500 x\r\n",
            b"250x\r\n",
            b"150 old\r\n",
            b"650 no\r\n",
            b"260 no\r\n",
            b"250-a\r\n251 b\r\n",
            b"250-a\r\n\r\n",
            b"250 a\0b\r\n",
            b"250 a\rb\r\n",
            // Garbage fails before its line ends, not at the timeout.
            b"SSH-2.0-OpenSSH",
            b"250-ok\r\n251",
            b"250+",
        ] {
            assert_eq!(
                parse_reply(bad),
                Err(Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn replies_are_bounded() {
        let many: Vec<u8> = b"250-x\r\n".repeat(MAX_REPLY_LINES);
        assert_eq!(parse_reply(&many), Err(Malformed));
        let mut enough = b"250-x\r\n".repeat(MAX_REPLY_LINES - 1);
        enough.extend_from_slice(b"250 x\r\n");
        assert_eq!(reply(&enough).code, 250);

        let mut long = b"250 ".to_vec();
        long.resize(MAX_REPLY_BYTES, b'x');
        assert_eq!(parse_reply(&long), Err(Malformed));
        long.truncate(MAX_REPLY_BYTES - 1);
        assert_eq!(parse_reply(&long), Ok(None));
        long.push(b'\n');
        assert_eq!(parse_reply(&long).unwrap().unwrap().1, MAX_REPLY_BYTES);
        long.insert(5, b'x');
        assert_eq!(parse_reply(&long), Err(Malformed));
    }

    #[test]
    fn ehlo_capabilities_before_and_after_auth() {
        let before = Capabilities::from_ehlo(&reply(DOVECOT_EHLO));
        assert_eq!(
            before,
            Capabilities {
                size: Some(0),
                pipelining: true,
                eight_bit_mime: true,
                smtputf8: false,
                dsn: false,
                chunking: true,
                enhanced_status_codes: true,
                starttls: true,
                auth: vec!["PLAIN".into(), "LOGIN".into()],
                xclient: Some(
                    "ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT FORWARD"
                        .split(' ')
                        .map(String::from)
                        .collect()
                ),
            }
        );
        assert!(before.offers_auth("PLAIN") && !before.offers_auth("CRAM-MD5"));

        let after = Capabilities::from_ehlo(&reply(DOVECOT_EHLO_AFTER_AUTH));
        assert_eq!(after.size, Some(41_943_040));
        assert!(after.auth.is_empty());
        assert_eq!(after.xclient, None);
        assert!(!after.starttls);
    }

    #[test]
    fn ehlo_keywords_are_case_insensitive_and_old_auth_is_read() {
        let caps = Capabilities::from_ehlo(&reply(
            b"250-mx.example.test greets you\r\n250-smtputf8\r\n250-Dsn\r\n\
              250-AUTH=LOGIN plain\r\n250-AUTH PLAIN LOGIN XOAUTH2\r\n250-SIZE junk\r\n\
              250-XCLIENT addr port\r\n250 X-UNKNOWN whatever\r\n",
        ));
        assert!(caps.smtputf8 && caps.dsn && !caps.pipelining);
        assert_eq!(caps.auth, ["LOGIN", "PLAIN", "XOAUTH2"]);
        assert_eq!(caps.size, Some(0));
        assert_eq!(caps.xclient, Some(vec!["ADDR".into(), "PORT".into()]));
        // The first line names the server, whatever it says.
        let caps = Capabilities::from_ehlo(&reply(b"250 STARTTLS\r\n"));
        assert!(!caps.starttls);
    }

    fn offered(names: &str) -> Vec<String> {
        names.split(' ').map(String::from).collect()
    }

    #[test]
    fn xclient_sends_the_listed_attributes_xtext_encoded() {
        let all = offered("ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT FORWARD");
        let client: SocketAddr = "192.0.2.9:50123".parse().unwrap();
        assert_eq!(
            xclient_command(&all, client, Some("laptop.example")).as_deref(),
            Some("XCLIENT ADDR=192.0.2.9 PORT=50123 HELO=laptop.example\r\n")
        );
        assert_eq!(
            xclient_command(&all, client, Some("[192.0.2.9] a+b=c\r\nQUIT é")).as_deref(),
            Some(concat!(
                "XCLIENT ADDR=192.0.2.9 PORT=50123 ",
                "HELO=[192.0.2.9]+20a+2Bb+3Dc+0D+0AQUIT+20+C3+A9\r\n"
            ))
        );
        assert_eq!(
            xclient_command(&all, client, None).as_deref(),
            Some("XCLIENT ADDR=192.0.2.9 PORT=50123\r\n")
        );
        assert_eq!(
            xclient_command(&offered("addr"), client, Some("x")).as_deref(),
            Some("XCLIENT ADDR=192.0.2.9\r\n")
        );
        assert_eq!(
            xclient_command(&offered("NAME PROTO"), client, Some("x")),
            None
        );
        assert_eq!(xclient_command(&[], client, None), None);
    }

    #[test]
    fn xclient_marks_ipv6_and_unmaps_ipv4() {
        let all = offered("ADDR PORT HELO");
        let v6: SocketAddr = "[2001:db8::1]:465".parse().unwrap();
        assert_eq!(
            xclient_command(&all, v6, None).as_deref(),
            Some("XCLIENT ADDR=IPV6:2001:db8::1 PORT=465\r\n")
        );
        let mapped: SocketAddr = "[::ffff:192.0.2.9]:587".parse().unwrap();
        assert_eq!(
            xclient_command(&all, mapped, None).as_deref(),
            Some("XCLIENT ADDR=192.0.2.9 PORT=587\r\n")
        );
    }

    #[test]
    fn xclient_leaves_out_a_helo_too_long_for_the_line() {
        let all = offered("ADDR PORT HELO");
        let client: SocketAddr = "[2001:db8::1]:465".parse().unwrap();
        let long = "+".repeat(200);
        let command = xclient_command(&all, client, Some(&long)).unwrap();
        assert_eq!(command, "XCLIENT ADDR=IPV6:2001:db8::1 PORT=465\r\n");
        let fits = "h".repeat(400);
        let command = xclient_command(&all, client, Some(&fits)).unwrap();
        assert!(command.contains(&fits) && command.len() <= MAX_COMMAND_LINE);
    }

    #[test]
    fn only_valid_client_names_follow_ehlo() {
        for good in [
            "laptop.example",
            "DESKTOP-4F2K9",
            "localhost",
            "[192.0.2.9]",
            "[IPv6:2001:db8::1]",
            "[ipv6:::1]",
        ] {
            assert!(is_ehlo_argument(good), "{good}");
        }
        for bad in [
            "",
            "my_pc",
            "laptop.example.",
            "-x.example",
            "a b",
            "a\r\nRSET",
            "[300.1.1.1]",
            "[2001:db8::1]",
            "[IPv6:192.0.2.9]",
            "jösé.example",
            &"a".repeat(64),
        ] {
            assert!(!is_ehlo_argument(bad), "{bad:?}");
        }
    }

    #[test]
    fn auth_replies_say_who_refused() {
        let outcome = |raw: &[u8]| auth_outcome(&reply(raw));
        assert!(outcome(b"235 2.7.0 Logged in.\r\n").is_ok());
        for refused in [
            &b"535 5.7.8 Authentication failed\r\n"[..],
            b"554 5.7.0 Not allowed\r\n",
            b"534 5.7.9 Mechanism too weak\r\n",
        ] {
            assert!(matches!(outcome(refused), Err(UpstreamError::Refused)));
        }
        assert!(matches!(
            outcome(b"454 4.7.0 Temporary authentication failure\r\n"),
            Err(UpstreamError::Rejected {
                phase: "login",
                code: 454
            })
        ));
        assert!(matches!(
            outcome(b"504 5.5.4 Unrecognized mechanism\r\n"),
            Err(UpstreamError::Rejected { code: 504, .. })
        ));
        assert!(matches!(
            outcome(b"334 \r\n"),
            Err(UpstreamError::Protocol { phase: "login" })
        ));
    }

    #[test]
    fn command_timeouts_are_named_by_verb() {
        assert_eq!(command_phase(b"MAIL FROM:<a@example.test>\r\n"), "MAIL");
        assert_eq!(command_phase(b"rcpt TO:<b@example.test>\r\n"), "RCPT");
        assert_eq!(command_phase(b"DATA\r\n"), "DATA");
        assert_eq!(command_phase(b"BDAT 100 LAST\r\n"), "BDAT");
        assert_eq!(command_phase(b"XYZZY\r\n"), "command");
    }
}

//! Logging in to the upstream IMAP server on the user's behalf: greeting, STARTTLS, ID
//! with the client's address, then AUTHENTICATE PLAIN with an authorization identity or
//! a master-user LOGIN. What it returns is ready for the byte relay.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::Secret;
use crate::config::UpstreamTls;
use crate::net::stream::Stream;
use crate::upstream::credentials::Credentials;
use crate::upstream::warm::{self, WarmConnection};
use crate::upstream::{within, Upstream, UpstreamError};

/// Longest upstream response line (with literals) read during login.
const MAX_RESPONSE: usize = 64 * 1024;

/// Longest ID value passed upstream; ID values are informational.
const MAX_ID_VALUE: usize = 256;

/// What the upstream login needs to know about the client.
#[derive(Debug, Clone)]
pub struct LoginRequest<'a> {
    /// The upstream account to act as.
    pub upstream_user: &'a str,
    /// The client's address, passed in ID as x-originating-ip/port.
    pub client: SocketAddr,
    /// The fields of the client's own ID command, if it sent one.
    pub client_id: &'a [(String, Option<String>)],
}

/// A session logged in upstream, ready to relay.
#[derive(Debug)]
pub struct LoggedIn {
    pub stream: Stream,
    /// The tagged OK's text after the status, e.g. `[CAPABILITY IMAP4rev1 …] Logged in`,
    /// always carrying the post-login capabilities.
    pub ok_text: String,
    /// Bytes the upstream sent after its tagged OK; they belong to the client.
    pub pending: Vec<u8>,
}

/// An upstream connection that is connected, upgraded to TLS where configured and
/// greeted, with the capabilities it announced: ready for a login. Made ahead of time by
/// the warm pool (`upstream::warm`) or on demand.
pub struct Greeted {
    conn: Conversation,
    capabilities: String,
    /// How long the TCP connect and TLS handshake took.
    pub connect_time: Duration,
    /// When it became ready.
    pub ready_at: Instant,
}

impl WarmConnection for Greeted {
    fn ready_at(&self) -> Instant {
        self.ready_at
    }

    fn connect_time(&self) -> Duration {
        self.connect_time
    }

    fn is_usable(&self, max_age: Duration) -> bool {
        warm::waiting(&self.conn.stream, &self.conn.buffer, self.ready_at, max_age)
    }
}

/// Connects and waits for the greeting, doing STARTTLS when configured, and learns the
/// capabilities.
pub async fn connect(upstream: &Upstream) -> Result<Greeted, UpstreamError> {
    let (stream, connect_time) = upstream.connect().await?;
    let mut conn = Conversation::new(stream, upstream.reply_timeout);

    let greeting = conn.read_line("greeting").await?;
    let mut capabilities = match parse_greeting(&greeting) {
        Some(Greeting::Ok(capabilities)) => capabilities,
        Some(Greeting::Bye) | None => return Err(UpstreamError::Protocol { phase: "greeting" }),
    };

    if upstream.tls == UpstreamTls::Starttls {
        let reply = conn.command("p0", b"p0 STARTTLS\r\n", "STARTTLS").await?;
        if reply.status != Status::Ok {
            return Err(UpstreamError::Unsupported("STARTTLS"));
        }
        // What the upstream sent after its OK is dropped with the old conversation.
        let tls = upstream.upgrade(conn.stream).await?;
        conn = Conversation::new(tls, upstream.reply_timeout);
        capabilities = None;
    }

    if capabilities.is_none() {
        let reply = conn
            .command("p1", b"p1 CAPABILITY\r\n", "CAPABILITY")
            .await?;
        capabilities = reply.capabilities;
    }
    Ok(Greeted {
        conn,
        capabilities: capabilities.unwrap_or_default(),
        connect_time,
        ready_at: Instant::now(),
    })
}

/// Logs in on a greeted connection: ID with the client's address, then the login, sent
/// together so that the client waits for one upstream round trip. `Err(UpstreamError::Refused)`
/// means the upstream rejected the user (the master login or the authorization); every
/// other error means unavailable.
pub async fn log_in(
    greeted: Greeted,
    upstream: &Upstream,
    request: &LoginRequest<'_>,
) -> Result<LoggedIn, UpstreamError> {
    let Greeted {
        mut conn,
        capabilities,
        ..
    } = greeted;
    let has = |name: &str| {
        capabilities
            .split_ascii_whitespace()
            .any(|c| c.eq_ignore_ascii_case(name))
    };

    // Pipelined in front of the login command; its reply is read first.
    let id = if has("ID") {
        id_command("p2", request)
    } else {
        String::new()
    };

    let mut credentials = upstream.login.credentials(request.upstream_user).await?;
    let sasl_ir = has("SASL-IR");
    let mut reply = present(&mut conn, &credentials, &id, sasl_ir, "p3").await?;
    if reply.status == Status::No && upstream.login.refused(&credentials).await {
        // A refused token may have been revoked or expired early: one fresh try.
        credentials = upstream.login.credentials(request.upstream_user).await?;
        reply = present(&mut conn, &credentials, "", sasl_ir, "p5").await?;
        if reply.status == Status::No {
            upstream.login.refused(&credentials).await;
        }
    }
    match reply.status {
        Status::Ok => {}
        Status::No => return Err(UpstreamError::Refused),
        Status::Bad => return Err(UpstreamError::Protocol { phase: "login" }),
    }

    let ok_text = if reply.text.starts_with("[CAPABILITY ") {
        reply.text
    } else {
        let caps = conn
            .command("p4", b"p4 CAPABILITY\r\n", "CAPABILITY")
            .await?
            .capabilities
            .ok_or(UpstreamError::Protocol {
                phase: "CAPABILITY",
            })?;
        format!("[CAPABILITY {caps}] {}", reply.text)
    };
    let (stream, pending) = conn.into_parts();
    Ok(LoggedIn {
        stream,
        ok_text,
        pending,
    })
}

/// Presents `credentials` with tag `tag`: `AUTHENTICATE` (the response on the command line
/// with SASL-IR) or `LOGIN`, behind `pipelined` (the ID command, whose reply is read
/// first). A challenge after the response is a bearer token's refusal (RFC 7628 3.2.2):
/// its JSON goes to the log, and the answer the mechanism expects brings the tagged NO.
async fn present(
    conn: &mut Conversation,
    credentials: &Credentials,
    pipelined: &str,
    sasl_ir: bool,
    tag: &str,
) -> Result<Reply, UpstreamError> {
    let id_sent = !pipelined.is_empty();
    if let Credentials::MasterLogin { name, password } = credentials {
        let command = Secret::new(format!(
            "{pipelined}{tag} LOGIN {} {}\r\n",
            quoted(name),
            quoted(password.expose())
        ));
        conn.send(command.expose().as_bytes(), "login").await?;
        if id_sent {
            conn.read_tagged("p2", "ID").await?;
        }
        return conn.read_tagged(tag, "login").await;
    }
    let mechanism = credentials.mechanism();
    let response = credentials.sasl_response();
    if sasl_ir {
        let command = Secret::new(format!(
            "{pipelined}{tag} AUTHENTICATE {mechanism} {}\r\n",
            response.expose()
        ));
        conn.send(command.expose().as_bytes(), "login").await?;
        if id_sent {
            conn.read_tagged("p2", "ID").await?;
        }
    } else {
        conn.send(
            format!("{pipelined}{tag} AUTHENTICATE {mechanism}\r\n").as_bytes(),
            "login",
        )
        .await?;
        if id_sent {
            conn.read_tagged("p2", "ID").await?;
        }
        conn.expect_continuation().await?;
        let line = Secret::new(format!("{}\r\n", response.expose()));
        conn.send(line.expose().as_bytes(), "login").await?;
    }
    match conn.read_tagged_or_challenge(tag, "login").await? {
        Ok(reply) => Ok(reply),
        Err(challenge) => {
            if credentials.is_token() {
                tracing::warn!(
                    mechanism,
                    challenge = %crate::sasl::bearer_challenge_text(&challenge),
                    "upstream refused the token"
                );
            }
            let answer = format!("{}\r\n", credentials.challenge_answer());
            conn.send(answer.as_bytes(), "login").await?;
            match conn.read_tagged_or_challenge(tag, "login").await? {
                Ok(reply) => Ok(reply),
                Err(_) => Err(UpstreamError::Protocol { phase: "login" }),
            }
        }
    }
}

/// Connects and logs in: [`connect`] then [`log_in`]. Returns how long connecting took.
pub async fn login(
    upstream: &Upstream,
    request: &LoginRequest<'_>,
) -> Result<(LoggedIn, Duration), UpstreamError> {
    let greeted = connect(upstream).await?;
    let connect_time = greeted.connect_time;
    Ok((log_in(greeted, upstream, request).await?, connect_time))
}

/// Whether the upstream accepts `password` as `user`'s own (the portal's sign-in with the
/// primary password): LOGIN as the user, then LOGOUT. `Ok(false)` is the upstream's NO;
/// the password is never stored, cached or logged.
pub async fn check_password(
    upstream: &Upstream,
    user: &str,
    password: &Secret<String>,
) -> Result<bool, UpstreamError> {
    let Greeted { mut conn, .. } = connect(upstream).await?;
    let secret = password.expose();
    let quotable =
        secret.len() <= MAX_ID_VALUE && secret.bytes().all(|b| (0x20..0x7f).contains(&b));
    if quotable {
        let command = Secret::new(format!("s1 LOGIN {} {}\r\n", quoted(user), quoted(secret)));
        conn.send(command.expose().as_bytes(), "sign-in").await?;
    } else {
        // Anything else goes as a literal, byte for byte.
        let command = format!("s1 LOGIN {} {{{}}}\r\n", quoted(user), secret.len());
        conn.send(command.as_bytes(), "sign-in").await?;
        conn.expect_continuation().await?;
        let line = Secret::new(format!("{secret}\r\n"));
        conn.send(line.expose().as_bytes(), "sign-in").await?;
    }
    let reply = conn.read_tagged("s1", "sign-in").await?;
    let accepted = match reply.status {
        Status::Ok => true,
        Status::No => false,
        Status::Bad => return Err(UpstreamError::Protocol { phase: "sign-in" }),
    };
    if accepted {
        let _ = conn.command("s2", b"s2 LOGOUT\r\n", "LOGOUT").await;
    }
    Ok(accepted)
}

/// The ID command that tells the upstream who the real client is. Dovecot honours the
/// x-originating fields from hosts in its `login_trusted_networks`.
fn id_command(tag: &str, request: &LoginRequest<'_>) -> String {
    let mut fields = vec![
        (
            "x-originating-ip".to_string(),
            request.client.ip().to_string(),
        ),
        (
            "x-originating-port".to_string(),
            request.client.port().to_string(),
        ),
    ];
    for (key, value) in request.client_id.iter().take(30) {
        if key.to_ascii_lowercase().starts_with("x-originating-")
            || key.eq_ignore_ascii_case("x-connected-ip")
            || key.eq_ignore_ascii_case("x-connected-port")
        {
            continue; // the client must not speak for postern
        }
        if let Some(value) = value {
            fields.push((key.clone(), value.clone()));
        }
    }
    let mut command = format!("{tag} ID (");
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            command.push(' ');
        }
        command.push_str(&quoted(key));
        command.push(' ');
        command.push_str(&quoted(value));
    }
    command.push_str(")\r\n");
    command
}

/// An IMAP quoted string; characters a quoted string cannot carry (CR, LF, NUL) are
/// dropped and the length capped, which is right for informational values.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n' | '\0'))
        .take(MAX_ID_VALUE)
    {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    No,
    Bad,
}

/// The end of one upstream command.
#[derive(Debug)]
struct Reply {
    status: Status,
    /// The text after the status word, with any response code.
    text: String,
    /// Capabilities from the tagged code or an untagged CAPABILITY response.
    capabilities: Option<String>,
}

enum Greeting {
    Ok(Option<String>),
    Bye,
}

fn parse_greeting(line: &str) -> Option<Greeting> {
    let rest = line.strip_prefix("* ")?;
    let (status, text) = rest.split_once(' ').unwrap_or((rest, ""));
    if status.eq_ignore_ascii_case("OK") {
        Some(Greeting::Ok(capability_code(text)))
    } else if status.eq_ignore_ascii_case("BYE") {
        Some(Greeting::Bye)
    } else {
        None // PREAUTH would skip the login we must do; treat as unusable
    }
}

/// The capabilities in a `[CAPABILITY …]` response code at the start of `text`.
fn capability_code(text: &str) -> Option<String> {
    let rest = strip_prefix_ignore_case(text, "[CAPABILITY ")?;
    let end = rest.find(']')?;
    Some(rest[..end].to_string())
}

/// `text` without `prefix`, compared ASCII-case-insensitively; never splits a character.
fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// A bounded line-oriented conversation with the upstream.
struct Conversation {
    stream: Stream,
    buffer: Vec<u8>,
    timeout: Duration,
}

impl Conversation {
    fn new(stream: Stream, timeout: Duration) -> Self {
        Self {
            stream,
            buffer: Vec::with_capacity(1024),
            timeout,
        }
    }

    fn into_parts(self) -> (Stream, Vec<u8>) {
        (self.stream, self.buffer)
    }

    async fn send(&mut self, bytes: &[u8], phase: &'static str) -> Result<(), UpstreamError> {
        let stream = &mut self.stream;
        within(phase, self.timeout, async {
            stream
                .write_all(bytes)
                .await
                .map_err(|source| UpstreamError::Io { phase, source })
        })
        .await
    }

    async fn command(
        &mut self,
        tag: &str,
        bytes: &[u8],
        phase: &'static str,
    ) -> Result<Reply, UpstreamError> {
        self.send(bytes, phase).await?;
        self.read_tagged(tag, phase).await
    }

    /// Reads responses up to and including the tagged one for `tag`.
    async fn read_tagged(
        &mut self,
        tag: &str,
        phase: &'static str,
    ) -> Result<Reply, UpstreamError> {
        self.read_until(tag, phase, false)
            .await?
            .map_err(|_| UpstreamError::Protocol { phase })
    }

    /// Reads responses up to the tagged one for `tag`, or a continuation request: its
    /// text (`Err`) when the server asks for more during an AUTHENTICATE.
    async fn read_tagged_or_challenge(
        &mut self,
        tag: &str,
        phase: &'static str,
    ) -> Result<Result<Reply, String>, UpstreamError> {
        self.read_until(tag, phase, true).await
    }

    async fn read_until(
        &mut self,
        tag: &str,
        phase: &'static str,
        challenges: bool,
    ) -> Result<Result<Reply, String>, UpstreamError> {
        let mut untagged_capabilities = None;
        loop {
            let line = self.read_line(phase).await?;
            if challenges {
                if let Some(challenge) = line.strip_prefix('+') {
                    return Ok(Err(challenge.trim_start().to_string()));
                }
            }
            if let Some(rest) = line.strip_prefix("* ") {
                if let Some(capabilities) = strip_prefix_ignore_case(rest, "CAPABILITY ") {
                    untagged_capabilities = Some(capabilities.to_string());
                } else if strip_prefix_ignore_case(rest, "BYE").is_some() {
                    return Err(UpstreamError::Closed(phase));
                }
                continue;
            }
            let Some(rest) = line.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) else {
                continue; // a continuation or another tag: not ours
            };
            let (status, text) = rest.split_once(' ').unwrap_or((rest, ""));
            let status = match status.to_ascii_uppercase().as_str() {
                "OK" => Status::Ok,
                "NO" => Status::No,
                "BAD" => Status::Bad,
                _ => return Err(UpstreamError::Protocol { phase }),
            };
            let capabilities = capability_code(text).or(untagged_capabilities);
            return Ok(Ok(Reply {
                status,
                text: text.to_string(),
                capabilities,
            }));
        }
    }

    async fn expect_continuation(&mut self) -> Result<(), UpstreamError> {
        let line = self.read_line("login").await?;
        if line.starts_with('+') {
            Ok(())
        } else {
            Err(UpstreamError::Refused)
        }
    }

    /// One response line without its CRLF; literals inside it are kept in the text.
    async fn read_line(&mut self, phase: &'static str) -> Result<String, UpstreamError> {
        loop {
            if let Some(end) = line_end(&self.buffer) {
                let line: Vec<u8> = self.buffer.drain(..end).collect();
                let text = String::from_utf8_lossy(&line);
                return Ok(text.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.buffer.len() > MAX_RESPONSE {
                return Err(UpstreamError::Protocol { phase });
            }
            let stream = &mut self.stream;
            let buffer = &mut self.buffer;
            // Read into the buffer's spare room, not a stack array: this future's size is
            // what every login task carries.
            buffer.reserve(4096);
            let read = within(phase, self.timeout, async {
                stream
                    .read_buf(buffer)
                    .await
                    .map_err(|source| UpstreamError::Io { phase, source })
            })
            .await?;
            if read == 0 {
                return Err(UpstreamError::Closed(phase));
            }
        }
    }
}

/// The index just past the LF ending the first complete response in `buffer`, skipping
/// over `{n}` literals.
fn line_end(buffer: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let lf = at + buffer[at..].iter().position(|&b| b == b'\n')?;
        let line = &buffer[..lf];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match literal_length(line) {
            Some(length) => {
                at = lf + 1 + length;
                if at > buffer.len() {
                    return None;
                }
            }
            None => return Some(lf + 1),
        }
    }
}

/// `n` when `line` ends with a literal announcement `{n}` or `{n+}`.
fn literal_length(line: &[u8]) -> Option<usize> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_capabilities_are_read_from_the_code() {
        let Some(Greeting::Ok(caps)) =
            parse_greeting("* OK [CAPABILITY IMAP4rev1 SASL-IR ID] Dovecot ready.")
        else {
            panic!("not an OK greeting");
        };
        assert_eq!(caps.as_deref(), Some("IMAP4rev1 SASL-IR ID"));
        assert!(matches!(
            parse_greeting("* OK ready"),
            Some(Greeting::Ok(None))
        ));
        assert!(matches!(parse_greeting("* BYE busy"), Some(Greeting::Bye)));
        assert!(parse_greeting("* PREAUTH hi").is_none());
        assert!(parse_greeting("garbage").is_none());
    }

    #[test]
    fn hostile_text_never_splits_a_character() {
        for line in [
            "* CAPABILITé x",
            "* BYé",
            "* ééééééééééé",
            "[CAPABILITé",
            "é",
        ] {
            let _ = capability_code(line);
            let _ = parse_greeting(line);
            let _ = strip_prefix_ignore_case(line, "CAPABILITY ");
        }
        assert_eq!(
            capability_code("[capability IMAP4rev1] hi").as_deref(),
            Some("IMAP4rev1")
        );
    }

    #[test]
    fn responses_with_literals_are_one_line() {
        let buffer = b"* ID (\"name\" {7}\r\nDovecot)\r\np2 OK done\r\n";
        let end = line_end(buffer).unwrap();
        assert_eq!(&buffer[..end], b"* ID (\"name\" {7}\r\nDovecot)\r\n");
        assert_eq!(line_end(b"* ID {100}\r\nshort"), None);
        assert_eq!(line_end(b"no newline"), None);
    }

    #[test]
    fn id_carries_the_client_address_and_never_lets_the_client_forge_it() {
        let client_id = vec![
            ("name".to_string(), Some("Mac OS X Mail".to_string())),
            ("x-originating-ip".to_string(), Some("6.6.6.6".to_string())),
            (
                "version".to_string(),
                Some("16.0 \"quoted\"\r\n".to_string()),
            ),
        ];
        let request = LoginRequest {
            upstream_user: "alice",
            client: "192.0.2.7:50123".parse().unwrap(),
            client_id: &client_id,
        };
        assert_eq!(
            id_command("p2", &request),
            "p2 ID (\"x-originating-ip\" \"192.0.2.7\" \"x-originating-port\" \"50123\" \
             \"name\" \"Mac OS X Mail\" \"version\" \"16.0 \\\"quoted\\\"\")\r\n"
        );
    }
}

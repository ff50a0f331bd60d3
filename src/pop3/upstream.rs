//! Logging in to the upstream POP3 server on the user's behalf: the greeting, STLS, CAPA,
//! XCLIENT with the client's address (Dovecot honours it from its
//! `login_trusted_networks`), then AUTH PLAIN with an authorization identity, USER and
//! PASS with a master-user name, or AUTH XOAUTH2 / OAUTHBEARER with a token. What it
//! returns is ready for the byte relay.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::auth::Secret;
use crate::config::UpstreamTls;
use crate::net::stream::Stream;
use crate::upstream::credentials::Credentials;
use crate::upstream::warm::{self, WarmConnection};
use crate::upstream::{within, Upstream, UpstreamError};

/// Longest upstream line read during login.
const MAX_LINE: usize = 8 * 1024;

/// Longest CAPA answer, in lines.
const MAX_CAPABILITIES: usize = 100;

/// What the upstream login needs to know.
#[derive(Debug, Clone)]
pub struct LoginRequest<'a> {
    /// The upstream account to act as.
    pub upstream_user: &'a str,
    /// The client's address, passed in XCLIENT.
    pub client: SocketAddr,
}

/// A session logged in upstream, ready to relay.
#[derive(Debug)]
pub struct LoggedIn {
    pub stream: Stream,
    /// The upstream's `+OK` line to the login, for the client.
    pub ok_line: Vec<u8>,
    /// Bytes the upstream sent after it; they belong to the client.
    pub pending: Vec<u8>,
}

/// How the upstream answered a command: `+OK`, `-ERR` (with its line), or a SASL
/// continuation (`+ ` and a challenge).
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Ok(Vec<u8>),
    Err(String),
    Continue(String),
}

/// One upstream connection during login: a stream and what was read ahead.
struct Conversation {
    stream: Stream,
    buffer: Vec<u8>,
    timeout: Duration,
}

impl Conversation {
    fn new(stream: Stream, timeout: Duration) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
            timeout,
        }
    }

    /// The next line, with its ending.
    async fn read_line(&mut self, phase: &'static str) -> Result<Vec<u8>, UpstreamError> {
        within(phase, self.timeout, async {
            loop {
                if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                    return Ok(self.buffer.drain(..=end).collect());
                }
                if self.buffer.len() > MAX_LINE {
                    return Err(UpstreamError::Protocol { phase });
                }
                let mut chunk = [0u8; 4096];
                let read = self
                    .stream
                    .read(&mut chunk)
                    .await
                    .map_err(|source| UpstreamError::Io { phase, source })?;
                if read == 0 {
                    return Err(UpstreamError::Closed(phase));
                }
                self.buffer.extend_from_slice(&chunk[..read]);
            }
        })
        .await
    }

    async fn reply(&mut self, phase: &'static str) -> Result<Reply, UpstreamError> {
        let line = self.read_line(phase).await?;
        if line.starts_with(b"+OK") {
            return Ok(Reply::Ok(line));
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if let Some(error) = text.strip_prefix("-ERR") {
            return Ok(Reply::Err(error.trim_start().to_string()));
        }
        match text.strip_prefix('+') {
            Some(challenge) => Ok(Reply::Continue(challenge.trim_start().to_string())),
            None => Err(UpstreamError::Protocol { phase }),
        }
    }

    async fn send(&mut self, bytes: &[u8], phase: &'static str) -> Result<(), UpstreamError> {
        within(phase, self.timeout, async {
            self.stream
                .write_all(bytes)
                .await
                .map_err(|source| UpstreamError::Io { phase, source })
        })
        .await
    }

    async fn command(&mut self, line: &[u8], phase: &'static str) -> Result<Reply, UpstreamError> {
        self.send(line, phase).await?;
        self.reply(phase).await
    }

    /// The capabilities CAPA lists; none when the upstream refuses CAPA.
    async fn capabilities(&mut self) -> Result<Vec<String>, UpstreamError> {
        if !matches!(self.command(b"CAPA\r\n", "CAPA").await?, Reply::Ok(_)) {
            return Ok(Vec::new());
        }
        let mut capabilities = Vec::new();
        loop {
            let line = self.read_line("CAPA").await?;
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if line == "." {
                return Ok(capabilities);
            }
            if capabilities.len() == MAX_CAPABILITIES {
                return Err(UpstreamError::Protocol { phase: "CAPA" });
            }
            capabilities.push(line);
        }
    }
}

/// A greeted upstream connection (after STLS where configured) and its capabilities
/// (with `XCLIENT` when the greeting offered it).
pub struct Greeted {
    conn: Conversation,
    capabilities: Vec<String>,
    /// How long the TCP connect and TLS handshake took.
    pub connect_time: Duration,
    /// When it became ready.
    ready_at: Instant,
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

/// Connects, reads the greeting, does STLS when configured, and learns the capabilities.
pub async fn connect(upstream: &Upstream) -> Result<Greeted, UpstreamError> {
    let (stream, connect_time) = upstream.connect().await?;
    let mut conn = Conversation::new(stream, upstream.reply_timeout);
    let Reply::Ok(greeting) = conn.reply("greeting").await? else {
        return Err(UpstreamError::Protocol { phase: "greeting" });
    };
    // Dovecot says it takes XCLIENT from this host in its greeting: `+OK [XCLIENT] …`.
    let xclient_greeting = greeting
        .windows(b"[XCLIENT]".len())
        .any(|w| w.eq_ignore_ascii_case(b"[XCLIENT]"));
    if upstream.tls == UpstreamTls::Starttls {
        if !matches!(conn.command(b"STLS\r\n", "STLS").await?, Reply::Ok(_)) {
            return Err(UpstreamError::Unsupported("STLS"));
        }
        // What the upstream sent after its +OK is dropped with the old conversation.
        let tls = upstream.upgrade(conn.stream).await?;
        conn = Conversation::new(tls, upstream.reply_timeout);
    }
    let mut capabilities = conn.capabilities().await?;
    if xclient_greeting {
        capabilities.push("XCLIENT".to_string());
    }
    Ok(Greeted {
        conn,
        capabilities,
        connect_time,
        ready_at: Instant::now(),
    })
}

/// Connects and logs in. `Err(UpstreamError::Refused)` means the upstream refused the
/// user; every other error means unavailable for now.
pub async fn login(
    upstream: &Upstream,
    request: &LoginRequest<'_>,
) -> Result<(LoggedIn, Duration), UpstreamError> {
    let greeted = connect(upstream).await?;
    let connect_time = greeted.connect_time;
    Ok((log_in(greeted, upstream, request).await?, connect_time))
}

/// Logs in on a greeted connection (a warm one, or one just made): XCLIENT with the
/// client's address where offered, then the credentials.
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
        capabilities.iter().any(|line| {
            line.split_ascii_whitespace()
                .next()
                .is_some_and(|first| first.eq_ignore_ascii_case(name))
        })
    };
    if has("XCLIENT") {
        let command = format!(
            "XCLIENT ADDR={} PORT={}\r\n",
            request.client.ip(),
            request.client.port()
        );
        if let Reply::Err(error) = conn.command(command.as_bytes(), "XCLIENT").await? {
            tracing::debug!(%error, "the upstream refused XCLIENT; it sees postern's address");
        }
    }
    let mut credentials = upstream.login.credentials(request.upstream_user).await?;
    let mut reply = present(&mut conn, &credentials).await?;
    if matches!(reply, Reply::Err(_)) && upstream.login.refused(&credentials).await {
        // A refused token may have been revoked or expired early: one fresh try.
        credentials = upstream.login.credentials(request.upstream_user).await?;
        reply = present(&mut conn, &credentials).await?;
        if matches!(reply, Reply::Err(_)) {
            upstream.login.refused(&credentials).await;
        }
    }
    match reply {
        Reply::Ok(ok_line) => Ok(LoggedIn {
            stream: conn.stream,
            ok_line,
            pending: conn.buffer,
        }),
        Reply::Err(error) => Err(refusal(&error)),
        Reply::Continue(_) => Err(UpstreamError::Protocol { phase: "login" }),
    }
}

/// What a `-ERR` to the login means (RFC 3206): `[SYS/…]` is the server's state, for
/// later; `[IN-USE]` is another session holding the mailbox; anything else refuses the
/// user.
fn refusal(error: &str) -> UpstreamError {
    let code = error
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .map(|(code, _)| code.to_ascii_uppercase());
    match code.as_deref() {
        Some(code) if code.starts_with("SYS/") => UpstreamError::Rejected {
            phase: "login",
            code: 0,
        },
        Some("IN-USE") => UpstreamError::InUse,
        _ => UpstreamError::Refused,
    }
}

/// Presents `credentials`: USER and PASS for a master-user name, else AUTH with the
/// response on the command line (RFC 5034). A challenge after a token is its refusal
/// (RFC 7628 3.2.2): logged, then answered as the mechanism expects, which brings the -ERR.
async fn present(
    conn: &mut Conversation,
    credentials: &Credentials,
) -> Result<Reply, UpstreamError> {
    if let Credentials::MasterLogin { name, password } = credentials {
        match conn
            .command(format!("USER {name}\r\n").as_bytes(), "login")
            .await?
        {
            Reply::Ok(_) => {}
            other => return Ok(other),
        }
        let command = Secret::new(format!("PASS {}\r\n", password.expose()));
        return conn.command(command.expose().as_bytes(), "login").await;
    }
    let mechanism = credentials.mechanism();
    let response = credentials.sasl_response();
    let command = Secret::new(format!("AUTH {mechanism} {}\r\n", response.expose()));
    match conn.command(command.expose().as_bytes(), "login").await? {
        Reply::Continue(challenge) => {
            if credentials.is_token() {
                tracing::warn!(
                    mechanism,
                    challenge = %crate::sasl::bearer_challenge_text(&challenge),
                    "upstream refused the token"
                );
            }
            let answer = format!("{}\r\n", credentials.challenge_answer());
            conn.command(answer.as_bytes(), "login").await
        }
        reply => Ok(reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_codes_say_whose_problem_it_is() {
        assert!(matches!(
            refusal("[AUTH] Authentication failed."),
            UpstreamError::Refused
        ));
        assert!(matches!(
            refusal("Authentication failed."),
            UpstreamError::Refused
        ));
        assert!(matches!(
            refusal("[SYS/TEMP] Try later"),
            UpstreamError::Rejected { .. }
        ));
        assert!(matches!(
            refusal("[in-use] Mailbox locked"),
            UpstreamError::InUse
        ));
    }
}

//! Hostile clients end to end: malformed, oversized, slow, silent and injected input against
//! the running gateway. Every test checks for a clean reply or a clean close, that no
//! credential was accepted, and that a new client is still served afterwards.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern::store::Scope;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::imap_client::{connector, ImapClient};
use support::postern::{metric, Options, Postern};
use support::smtp_client::SmtpClient;
use support::Dovecot;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const LIVENESS: Duration = Duration::from_secs(20);

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Dovecot with alice and bob; postern login alice@example.test with an imap+smtp password.
async fn setup(options: Options) -> (Dovecot, Postern, String) {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    dovecot.add_user("bob", "bob-direct-password");
    let postern = Postern::start_with(&dovecot, options).await;
    postern.add_user("alice@example.test", "alice").await;
    let (_, password) = postern
        .issue("alice@example.test", &[Scope::Imap, Scope::Smtp], None)
        .await;
    (dovecot, postern, password)
}

fn limits(extra: &str) -> Options {
    Options {
        extra_config: extra.to_string(),
        ..Options::default()
    }
}

/// Successful logins so far, over every protocol and mechanism.
fn accepted_logins(postern: &Postern) -> f64 {
    postern
        .metrics()
        .lines()
        .filter(|l| l.starts_with("postern_auth_attempts_total{") && l.contains("result=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn assert_nothing_accepted(postern: &Postern) {
    assert_eq!(
        accepted_logins(postern),
        0.0,
        "a credential was accepted: {}",
        postern.metrics()
    );
}

/// A fresh IMAP client gets its greeting and logs in; a fresh SMTP client gets its greeting.
async fn still_serves(postern: &Postern, password: &str) {
    let before = accepted_logins(postern);
    let (mut client, greeting) = tokio::time::timeout(
        LIVENESS,
        ImapClient::connect_tls(postern.imaps, &postern.ca_path),
    )
    .await
    .expect("a new IMAP client is served in time");
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let login = client
        .command("z1", &format!("LOGIN alice@example.test \"{password}\""))
        .await;
    assert!(login.last().unwrap().starts_with("z1 OK"), "{login:?}");
    let logout = client.command("z2", "LOGOUT").await;
    assert!(logout.last().unwrap().starts_with("z2 OK"), "{logout:?}");
    assert_eq!(accepted_logins(postern), before + 1.0);

    let (mut smtp, greeting) =
        tokio::time::timeout(LIVENESS, SmtpClient::connect_plain(postern.submission))
            .await
            .expect("a new SMTP client is served in time");
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(smtp.command("QUIT").await.starts_with("221"));
}

/// The resident set of this process (postern runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Memory tests run one at a time so that their RSS readings do not include each other.
static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Generous: other tests of this binary run concurrently in the same process.
const RSS_GROWTH_LIMIT_KIB: u64 = 96 * 1024;

/// A byte-level connection that reads one byte at a time, so nothing past a line is
/// consumed (the TLS handshake after STARTTLS must see every byte).
struct Raw<S> {
    stream: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// Writes what the peer takes; errors (it closed) are ignored.
    async fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(LIVENESS, async {
            let _ = self.stream.write_all(bytes).await;
            let _ = self.stream.flush().await;
        })
        .await;
    }

    /// One line without its CRLF; `None` once closed.
    async fn line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        let read = tokio::time::timeout(LIVENESS, async {
            let mut byte = [0u8; 1];
            loop {
                match self.stream.read(&mut byte).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {
                        line.push(byte[0]);
                        if byte[0] == b'\n' {
                            return true;
                        }
                    }
                }
            }
        })
        .await
        .expect("a line or a close in time");
        read.then(|| {
            String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_string()
        })
    }

    async fn expect_line(&mut self) -> String {
        self.line().await.expect("postern closed the connection")
    }

    /// A whole SMTP reply, lines joined with '\n'.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let line = self.expect_line().await;
            let last = line.len() < 4 || line.as_bytes()[3] != b'-';
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    /// Reads everything until the peer closes; `None` if it stays open past `deadline`.
    async fn until_closed(&mut self, deadline: Duration) -> Option<Vec<u8>> {
        let mut seen = Vec::new();
        tokio::time::timeout(deadline, async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .ok()
        .map(|_| seen)
    }
}

async fn raw(address: SocketAddr) -> Raw<TcpStream> {
    Raw {
        stream: TcpStream::connect(address).await.expect("connect"),
    }
}

async fn raw_tls(
    tcp: TcpStream,
    ca_path: &std::path::Path,
) -> std::io::Result<Raw<tokio_rustls::client::TlsStream<TcpStream>>> {
    let tls = connector(ca_path)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    Ok(Raw { stream: tls })
}

/// The bytes of a real TLS ClientHello for "localhost".
fn client_hello(ca_path: &std::path::Path) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_path).expect("read CA") {
        roots.add(cert.expect("CA cert")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut connection =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .expect("client connection");
    let mut hello = Vec::new();
    while connection.wants_write() {
        connection.write_tls(&mut hello).expect("write ClientHello");
    }
    assert!(hello.len() > 50 && hello[0] == 0x16, "a handshake record");
    hello
}

// 1. Overlong lines.

#[tokio::test(flavor = "multi_thread")]
async fn an_overlong_imap_line_gets_bad_and_nothing_else() {
    let (_dovecot, postern, password) = setup(Options::default()).await;
    let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let mut line = b"a LOGIN ".to_vec();
    line.extend(std::iter::repeat_n(b'x', 100 * 1024));
    client.send(&line).await;
    client.send(b"\r\n").await;
    let reply = client.read_line().await;
    assert!(
        reply.starts_with("a BAD") || reply.starts_with("* BAD"),
        "{reply}"
    );
    // Usable afterwards, or closed.
    client.send(b"b NOOP\r\n").await;
    if let Some(next) = client.next_line().await {
        assert_eq!(next, "b OK NOOP completed", "{:?}", client.transcript);
    }
    assert_nothing_accepted(&postern);
    still_serves(&postern, &password).await;
    postern.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overlong_smtp_line_gets_500() {
    let (_dovecot, postern, password) = setup(Options::default()).await;
    let (mut client, _) = SmtpClient::connect_plain(postern.submission).await;
    assert!(client
        .command("EHLO client.example")
        .await
        .starts_with("250"));
    let mut line = b"EHLO ".to_vec();
    line.extend(std::iter::repeat_n(b'x', 100 * 1024));
    line.extend(b"\r\n");
    client.send(&line).await;
    let reply = client.read_reply().await;
    assert_eq!(reply, "500 5.5.2 Line too long");
    assert!(client.command("NOOP").await.starts_with("250"));
    assert_nothing_accepted(&postern);
    still_serves(&postern, &password).await;
    postern.stop().await;
}

// 2. Literal bombs.

#[tokio::test(flavor = "multi_thread")]
async fn literal_bombs_are_refused_without_allocating() {
    let _serial = MEMORY.lock().await;
    let (_dovecot, postern, password) = setup(Options::default()).await;
    let before = rss_kib();

    // Synchronizing: refused before the client sends it.
    for size in [
        "4294967295",
        "18446744073709551615",
        "99999999999999999999999",
    ] {
        let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
        client
            .send(format!("a LOGIN {{{size}}}\r\n").as_bytes())
            .await;
        let reply = client.read_line().await;
        assert!(
            reply.starts_with("a BAD") || reply.starts_with("* BYE"),
            "{size}: {reply}"
        );
        client.send(b"xxxxxxxxxxxxxxxxxxxxxxxx\r\n").await;
        while let Some(line) = tokio::time::timeout(Duration::from_secs(2), client.next_line())
            .await
            .ok()
            .flatten()
        {
            assert!(!line.contains(" OK"), "{size}: {:?}", client.transcript);
        }
    }

    // Non-synchronizing: BYE and closed.
    for size in ["100000000", "4294967295", "18446744073709551615"] {
        let tcp = TcpStream::connect(postern.imaps).await.expect("connect");
        let mut client = raw_tls(tcp, &postern.ca_path).await.expect("handshake");
        assert!(client.expect_line().await.starts_with("* OK"));
        let mut bytes = format!("a LOGIN {{{size}+}}\r\n").into_bytes();
        bytes.extend(std::iter::repeat_n(b'p', 64 * 1024));
        bytes.extend(b" \"password\"\r\n");
        // postern may close while this is still being written.
        client.send_lossy(&bytes).await;
        let seen = client
            .until_closed(LIVENESS)
            .await
            .expect("closed after a literal too large");
        let seen = String::from_utf8_lossy(&seen);
        assert!(!seen.contains(" OK"), "{size}: {seen}");
        // A reset racing our writes may swallow the BYE; a close is what matters.
        assert!(
            seen.is_empty() || seen.contains("BYE") || seen.contains("BAD"),
            "{size}: {seen}"
        );
    }
    assert_nothing_accepted(&postern);
    let after = rss_kib();
    assert!(
        after < before + RSS_GROWTH_LIMIT_KIB,
        "RSS grew from {before} KiB to {after} KiB"
    );
    still_serves(&postern, &password).await;
    postern.stop().await;
}

// 3. NUL bytes and invalid UTF-8 in credentials.

#[tokio::test(flavor = "multi_thread")]
async fn nul_and_invalid_utf8_in_imap_logins_are_never_accepted() {
    let (_dovecot, postern, password) = setup(Options::default()).await;
    let users: [&[u8]; 5] = [
        b"alice@example.test\0",
        b"alice@example.test\0x",
        b"\0alice@example.test",
        b"alice@example.test\xff",
        b"alice\xc3\x28@example.test",
    ];
    for user in users {
        let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
        let mut bytes = format!("a LOGIN {{{}+}}\r\n", user.len()).into_bytes();
        bytes.extend_from_slice(user);
        bytes.extend(format!(" \"{password}\"\r\n").as_bytes());
        client.send(&bytes).await;
        let reply = client.read_tagged("a").await;
        let last = reply.last().unwrap();
        assert!(
            last.starts_with("a NO [AUTHENTICATIONFAILED]") || last.starts_with("a BAD"),
            "{user:?}: {reply:?}"
        );
    }
    // The right user with a NUL or invalid byte in the password.
    for suffix in [&b"\0"[..], b"\xff"] {
        let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
        let mut secret = password.as_bytes().to_vec();
        secret.extend_from_slice(suffix);
        let mut bytes =
            format!("a LOGIN alice@example.test {{{}+}}\r\n", secret.len()).into_bytes();
        bytes.extend_from_slice(&secret);
        bytes.extend(b"\r\n");
        client.send(&bytes).await;
        let reply = client.read_tagged("a").await;
        let last = reply.last().unwrap();
        assert!(
            last.starts_with("a NO [AUTHENTICATIONFAILED]") || last.starts_with("a BAD"),
            "{suffix:?}: {reply:?}"
        );
    }
    assert_nothing_accepted(&postern);
    still_serves(&postern, &password).await;
    postern.stop().await;
}

// 4. Malformed SASL.

#[tokio::test(flavor = "multi_thread")]
async fn malformed_sasl_plain_is_refused_in_imap() {
    let (_dovecot, postern, password) = setup(Options::default()).await;
    let responses = [
        "!!!not*base64!!!".to_string(),
        "YWxpY2U".to_string(), // bad padding
        base64(format!("alice@example.test{password}").as_bytes()),
        base64(format!("alice@example.test\0{password}").as_bytes()),
        base64(format!("\0\0alice@example.test\0{password}").as_bytes()),
        base64(b""),
    ];
    for response in &responses {
        // As an initial response (SASL-IR).
        let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
        let reply = client
            .command("a", &format!("AUTHENTICATE PLAIN {response}"))
            .await;
        let last = reply.last().unwrap();
        assert!(
            last.starts_with("a BAD") || last.starts_with("a NO"),
            "{response}: {reply:?}"
        );
        // At the continuation.
        client.send(b"b AUTHENTICATE PLAIN\r\n").await;
        assert_eq!(client.read_line().await, "+ ");
        client.send(format!("{response}\r\n").as_bytes()).await;
        let reply = client.read_tagged("b").await;
        let last = reply.last().unwrap();
        assert!(
            last.starts_with("b BAD") || last.starts_with("b NO"),
            "{response}: {reply:?}"
        );
    }
    assert_nothing_accepted(&postern);
    still_serves(&postern, &password).await;
    postern.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_sasl_plain_is_refused_in_smtp() {
    let (_dovecot, postern, password) = setup(Options::default()).await;
    let invalid = ["!!!not*base64!!!".to_string(), "YWxpY2U".to_string()];
    let malformed = [
        base64(format!("alice@example.test{password}").as_bytes()),
        base64(format!("alice@example.test\0{password}").as_bytes()),
        base64(format!("\0\0alice@example.test\0{password}").as_bytes()),
    ];
    for (response, must_be_501) in invalid
        .iter()
        .map(|r| (r, true))
        .chain(malformed.iter().map(|r| (r, false)))
    {
        let (mut client, _) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
        client.command("EHLO client.example").await;
        let reply = client.command(&format!("AUTH PLAIN {response}")).await;
        assert!(
            reply.starts_with("501") || (!must_be_501 && reply.starts_with("535")),
            "{response}: {reply}"
        );
        let prompt = client.command("AUTH PLAIN").await;
        assert!(prompt.starts_with("334"), "{prompt}");
        let reply = client.command(response).await;
        assert!(
            reply.starts_with("501") || (!must_be_501 && reply.starts_with("535")),
            "{response}: {reply}"
        );
        assert!(client.command("NOOP").await.starts_with("250"));
    }
    assert_nothing_accepted(&postern);
    still_serves(&postern, &password).await;
    postern.stop().await;
}

// 5. Commands pipelined before the greeting is read.

#[tokio::test(flavor = "multi_thread")]
async fn imap_commands_sent_before_the_greeting_are_answered_in_order() {
    let (_dovecot, postern, password) = setup(Options::default()).await;
    let mut client = raw(postern.imap).await;
    client
        .send(b"a CAPABILITY\r\nb NOOP\r\nc ID NIL\r\nd LOGOUT\r\n")
        .await;
    assert!(client.expect_line().await.starts_with("* OK"));
    let mut lines = Vec::new();
    while let Some(line) = client.line().await {
        lines.push(line);
    }
    let tagged: Vec<&String> = lines.iter().filter(|l| !l.starts_with("* ")).collect();
    assert_eq!(
        tagged,
        [
            "a OK CAPABILITY completed",
            "b OK NOOP completed",
            "c OK ID completed",
            "d OK LOGOUT completed"
        ],
        "{lines:?}"
    );
    assert!(lines[0].starts_with("* CAPABILITY"), "{lines:?}");
    assert_nothing_accepted(&postern);
    still_serves(&postern, &password).await;
    postern.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_commands_sent_before_the_greeting_are_answered_in_order() {
    let (_dovecot, postern, password) = setup(Options::default()).await;
    let mut client = raw(postern.submission).await;
    client
        .send(b"EHLO client.example\r\nNOOP\r\nRSET\r\nQUIT\r\n")
        .await;
    let greeting = client.reply().await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    let ehlo = client.reply().await;
    assert!(
        ehlo.starts_with("250-") && ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(client.reply().await.starts_with("250"), "NOOP");
    assert!(client.reply().await.starts_with("250"), "RSET");
    assert!(client.reply().await.starts_with("221"), "QUIT");
    assert!(client.until_closed(LIVENESS).await.is_some());
    still_serves(&postern, &password).await;
    postern.stop().await;
}

// 6. The wrong protocol on each kind of port.

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_on_implicit_tls_ports_is_closed_without_a_greeting() {
    let (_dovecot, postern, password) = setup(Options::default()).await;
    for (address, bytes) in [
        (postern.imaps, &b"a CAPABILITY\r\n"[..]),
        (postern.smtps, b"EHLO client.example\r\n"),
    ] {
        let mut client = raw(address).await;
        client.send_lossy(bytes).await;
        let seen = client
            .until_closed(LIVENESS)
            .await
            .expect("closed after plaintext on a TLS port");
        assert!(
            !seen.starts_with(b"* OK") && !seen.starts_with(b"220"),
            "{:?}",
            String::from_utf8_lossy(&seen)
        );
    }
    assert_nothing_accepted(&postern);
    still_serves(&postern, &password).await;
    postern.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_handshake_on_starttls_ports_fails_cleanly() {
    let (_dovecot, postern, password) = setup(Options::default()).await;
    for address in [postern.imap, postern.submission] {
        let tcp = TcpStream::connect(address).await.expect("connect");
        let handshake = tokio::time::timeout(LIVENESS, raw_tls(tcp, &postern.ca_path))
            .await
            .expect("the handshake ends in time");
        assert!(handshake.is_err(), "no TLS on a STARTTLS port");
        // And the raw ClientHello bytes, read by postern as commands.
        let mut client = raw(address).await;
        let greeting = client.expect_line().await;
        assert!(
            greeting.starts_with("* OK") || greeting.starts_with("220"),
            "{greeting}"
        );
        client.send_lossy(&client_hello(&postern.ca_path)).await;
        client.send_lossy(b"\r\n").await;
        // Answered with errors or closed; never OK-ed into a login.
        if let Some(seen) = client.until_closed(Duration::from_secs(3)).await {
            let seen = String::from_utf8_lossy(&seen);
            assert!(!seen.contains(" OK"), "{seen}");
        }
    }
    assert_nothing_accepted(&postern);
    still_serves(&postern, &password).await;
    postern.stop().await;
}

// 7. A handshake that stops half way.

#[tokio::test(flavor = "multi_thread")]
async fn a_half_handshake_is_closed_by_the_handshake_timeout() {
    let (_dovecot, postern, password) =
        setup(limits("[limits]\ntls_handshake_timeout = \"1s\"\n")).await;
    let hello = client_hello(&postern.ca_path);
    let mut stalled = Vec::new();
    for address in [postern.imaps, postern.smtps] {
        let mut client = raw(address).await;
        client.send(&hello[..50]).await;
        stalled.push(client);
    }
    // Others are served meanwhile.
    still_serves(&postern, &password).await;
    for mut client in stalled {
        let seen = client
            .until_closed(LIVENESS)
            .await
            .expect("closed by the handshake timeout");
        assert!(!seen.starts_with(b"* OK") && !seen.starts_with(b"220"));
    }
    assert_nothing_accepted_but(&postern, 1.0);
    still_serves(&postern, &password).await;
    postern.stop().await;
}

fn assert_nothing_accepted_but(postern: &Postern, expected: f64) {
    assert_eq!(accepted_logins(postern), expected, "{}", postern.metrics());
}

// 8. Slowloris.

#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_is_closed_by_the_login_deadline() {
    let (_dovecot, postern, password) = setup(limits(
        "[limits]\nlogin_deadline = \"2s\"\npreauth_idle_timeout = \"1s\"\n",
    ))
    .await;
    for address in [postern.imap, postern.submission] {
        let mut client = raw(address).await;
        let greeting = client.expect_line().await;
        assert!(
            greeting.starts_with("* OK") || greeting.starts_with("220"),
            "{greeting}"
        );
        let started = Instant::now();
        let command = b"a LOGIN alice@example.test \"aaaa bbbb cccc dddd\"";
        let mut closed = false;
        let mut i = 0;
        // One byte every 200 ms (never a whole line) until postern hangs up.
        while started.elapsed() < LIVENESS {
            let byte = [command[i % command.len()]];
            i += 1;
            if client.stream.write_all(&byte).await.is_err() {
                closed = true;
                break;
            }
            if let Ok(read) = tokio::time::timeout(
                Duration::from_millis(200),
                client.stream.read(&mut [0u8; 512]),
            )
            .await
            {
                match read {
                    Ok(0) | Err(_) => {
                        closed = true;
                        break;
                    }
                    Ok(_) => {} // e.g. a BYE
                }
            }
        }
        assert!(closed, "the slowloris on {address} was never closed");
    }
    assert_nothing_accepted(&postern);
    // Other clients get the whole deadline: a prompt login still works.
    still_serves(&postern, &password).await;
    postern.stop().await;
}

// 9. A client that never reads.

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_does_not_grow_memory() {
    let _serial = MEMORY.lock().await;
    let (_dovecot, postern, password) = setup(Options::default()).await;
    let before = rss_kib();
    let mut client = raw(postern.imap).await;
    assert!(client.expect_line().await.starts_with("* OK"));
    let chunk: Vec<u8> = b"a NOOP\r\n".repeat(8 * 1024);
    let mut sent = 0usize;
    // Up to 32 MiB of commands (4 million NOOPs); stop once postern stops taking them.
    while sent < 32 * 1024 * 1024 {
        match tokio::time::timeout(Duration::from_secs(2), client.stream.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let after = rss_kib();
    assert!(
        after < before + RSS_GROWTH_LIMIT_KIB,
        "RSS grew from {before} KiB to {after} KiB after {sent} bytes of NOOPs"
    );
    still_serves(&postern, &password).await;
    drop(client);
    still_serves(&postern, &password).await;
    postern.stop().await;
}

// 10. Many connections that do nothing.

#[tokio::test(flavor = "multi_thread")]
async fn many_silent_connections_are_closed_and_do_not_starve_others() {
    let options = Options {
        network_extra: "max_connections_per_ip = 1000",
        extra_config: "[limits]\ntls_handshake_timeout = \"2s\"\n".into(),
        ..Options::default()
    };
    let (_dovecot, postern, password) = setup(options).await;
    let mut silent = Vec::new();
    for _ in 0..500 {
        silent.push(raw(postern.imaps).await);
    }
    still_serves(&postern, &password).await;
    let closes = silent
        .into_iter()
        .map(|mut client| async move { client.until_closed(LIVENESS).await.is_some() });
    let closed = futures_join_all(closes).await;
    assert!(
        closed.iter().all(|c| *c),
        "{} of 500 silent connections still open",
        closed.iter().filter(|c| !**c).count()
    );
    still_serves(&postern, &password).await;
    postern.stop().await;
}

async fn futures_join_all<F: std::future::Future<Output = bool> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<bool> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await.expect("task"));
    }
    results
}

// 11 and 12. SMTP messages that must not be delivered.

async fn smtp_authenticated(postern: &Postern, password: &str) -> SmtpClient {
    let (mut client, _) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
    client.command("EHLO client.example").await;
    let response = base64(format!("\0alice@example.test\0{password}").as_bytes());
    let auth = client.command(&format!("AUTH PLAIN {response}")).await;
    assert!(auth.starts_with("235"), "{auth}");
    client
}

fn delivered(dovecot: &Dovecot, user: &str) -> Vec<String> {
    match std::fs::read_dir(dovecot.maildir(user).join("new")) {
        Ok(entries) => entries
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn accepted_messages(postern: &Postern) -> f64 {
    metric(
        &postern.metrics(),
        "postern_smtp_messages_total{result=\"accepted\"}",
    )
}

async fn send_complete(client: &mut SmtpClient, subject: &str) {
    client
        .send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        .await;
    for expected in ["250", "250", "354"] {
        let reply = client.read_reply().await;
        assert!(reply.starts_with(expected), "{reply}");
    }
    let message = format!(
        "From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\r\nbody\r\n.\r\n"
    );
    client.send(message.as_bytes()).await;
    let reply = client.read_reply().await;
    assert!(reply.starts_with("250"), "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn data_without_the_final_dot_delivers_nothing() {
    let (dovecot, postern, password) = setup(Options::default()).await;
    let mut client = smtp_authenticated(&postern, &password).await;
    client
        .send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        .await;
    for expected in ["250", "250", "354"] {
        let reply = client.read_reply().await;
        assert!(reply.starts_with(expected), "{reply}");
    }
    client
        .send(b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: truncated\r\n\r\nno end in sight\r\n")
        .await;
    drop(client);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(delivered(&dovecot, "bob").is_empty());
    assert_eq!(accepted_messages(&postern), 0.0, "{}", postern.metrics());

    // A complete message afterwards is the only one delivered.
    let mut client = smtp_authenticated(&postern, &password).await;
    send_complete(&mut client, "complete").await;
    assert!(client.command("QUIT").await.starts_with("221"));
    let bob = delivered(&dovecot, "bob");
    assert_eq!(bob.len(), 1, "{bob:?}");
    assert!(bob[0].contains("Subject: complete") && !bob[0].contains("truncated"));
    assert_eq!(accepted_messages(&postern), 1.0);
    still_serves(&postern, &password).await;
    postern.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_header_block_is_refused_with_552() {
    let (dovecot, postern, password) = setup(limits("[smtp]\nmax_header_bytes = 2048\n")).await;
    let mut client = smtp_authenticated(&postern, &password).await;
    client
        .send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        .await;
    for expected in ["250", "250", "354"] {
        let reply = client.read_reply().await;
        assert!(reply.starts_with(expected), "{reply}");
    }
    let mut message =
        b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: huge\r\n".to_vec();
    for i in 0..100 {
        message.extend(format!("X-Filler-{i}: {}\r\n", "f".repeat(60)).as_bytes());
    }
    message.extend(b"\r\nbody\r\n.\r\n");
    client.send(&message).await;
    let reply = client.read_reply().await;
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    // The session goes on: a normal message is accepted.
    send_complete(&mut client, "normal").await;
    assert!(client.command("QUIT").await.starts_with("221"));
    let bob = delivered(&dovecot, "bob");
    assert_eq!(bob.len(), 1, "{bob:?}");
    assert!(bob[0].contains("Subject: normal"));
    assert_eq!(accepted_messages(&postern), 1.0);
    still_serves(&postern, &password).await;
    postern.stop().await;
}

// 13. STARTTLS command injection (CVE-2011-0411).

#[tokio::test(flavor = "multi_thread")]
async fn imap_commands_injected_before_starttls_are_not_executed() {
    let (_dovecot, postern, password) = setup(Options::default()).await;
    let mut client = raw(postern.imap).await;
    assert!(client.expect_line().await.starts_with("* OK"));
    client
        .send(format!("a STARTTLS\r\nb LOGIN alice@example.test \"{password}\"\r\n").as_bytes())
        .await;
    let reply = client.expect_line().await;
    if reply == "a OK Begin TLS negotiation now" {
        let tcp = client.stream;
        let mut tls = raw_tls(tcp, &postern.ca_path)
            .await
            .expect("TLS after STARTTLS");
        tls.send(b"c NOOP\r\n").await;
        let first = tls.expect_line().await;
        assert_eq!(first, "c OK NOOP completed", "the injected LOGIN ran");
    } else {
        assert!(!reply.starts_with("b "), "{reply}");
    }
    assert_nothing_accepted(&postern);
    still_serves(&postern, &password).await;
    postern.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_commands_injected_before_starttls_are_not_executed() {
    let (_dovecot, postern, password) = setup(Options::default()).await;
    let mut client = raw(postern.submission).await;
    assert!(client.reply().await.starts_with("220 "));
    client.send(b"EHLO client.example\r\n").await;
    assert!(client.reply().await.starts_with("250"));
    client
        .send(b"STARTTLS\r\nMAIL FROM:<alice@example.test>\r\n")
        .await;
    let reply = client.reply().await;
    if reply.starts_with("220") {
        let tcp = client.stream;
        let mut tls = raw_tls(tcp, &postern.ca_path)
            .await
            .expect("TLS after STARTTLS");
        tls.send(b"EHLO client.example\r\n").await;
        let first = tls.reply().await;
        assert!(first.starts_with("250-"), "the injected MAIL ran: {first}");
    } else {
        assert!(!reply.starts_with("250"), "{reply}");
    }
    assert_nothing_accepted(&postern);
    still_serves(&postern, &password).await;
    postern.stop().await;
}

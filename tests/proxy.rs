//! PROXY protocol listeners end to end: a real haproxy (`send-proxy`, `send-proxy-v2`) in
//! front of postern, a real Dovecot behind. The client address the header carries must
//! reach Dovecot (IMAP ID x-originating-ip, SMTP and POP3 XCLIENT) and postern's audit
//! trail; peers outside `[network] proxy_sources`, and trusted peers that send no header,
//! are closed without a greeting while the listener goes on serving.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use postern::store::Scope;
use rustls::pki_types::ServerName;
use support::haproxy::{Haproxy, Route};
use support::imap_client::{connector, ImapClient};
use support::postern::{Options, Postern};
use support::smtp_client::SmtpClient;
use support::Dovecot;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long a test waits for an audit event, written in the background.
const AUDIT_DEADLINE: Duration = Duration::from_secs(10);

/// Dovecot with user alice; postern (every listener expecting a PROXY header) with login
/// alice@example.test and an imap+smtp app password.
async fn setup(options: Options) -> (Dovecot, Postern, String) {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    let postern = Postern::start_with(
        &dovecot,
        Options {
            proxy_protocol: true,
            ..options
        },
    )
    .await;
    postern.add_user("alice@example.test", "alice").await;
    let (_, password) = postern
        .issue(
            "alice@example.test",
            &[Scope::Imap, Scope::Smtp, Scope::Pop3],
            None,
        )
        .await;
    (dovecot, postern, password)
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A TCP connection to `to` from the local address `from` (any of 127.0.0.0/8).
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind client address");
    socket.connect(to).await.expect("connect")
}

/// Polls postern's audit trail (through the real CLI) until it holds a successful login
/// over `protocol` from `client_ip`.
async fn assert_audited_login(postern: &Postern, protocol: &str, client_ip: &str) {
    let deadline = Instant::now() + AUDIT_DEADLINE;
    loop {
        let output = postern.cli(&["audit", "--json"]);
        assert!(output.status.success(), "{output:?}");
        let records: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("audit --json is JSON");
        let found = records.as_array().unwrap().iter().any(|r| {
            r["kind"] == "login"
                && r["result"] == "ok"
                && r["protocol"] == protocol
                && r["client_ip"] == client_ip
        });
        if found {
            return;
        }
        if Instant::now() > deadline {
            panic!("no {protocol} login from {client_ip} in the audit trail:\n{records:#}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// True when Dovecot logged a login of alice by `service` (imap-login, submission-login)
/// with `rip=<client_ip>`.
fn dovecot_saw(dovecot: &Dovecot, service: &str, client_ip: &str) -> bool {
    let rip = format!("rip={client_ip},");
    dovecot
        .log()
        .lines()
        .any(|l| l.contains(service) && l.contains("Login: user=<alice>") && l.contains(&rip))
}

/// Every byte the server sends until it closes the connection (a reset counts as closed:
/// the server may close with our bytes unread); panics if it stays open past `deadline`.
async fn bytes_until_closed(tcp: &mut TcpStream, deadline: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(deadline, async {
        let mut chunk = [0u8; 4096];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("still open after {deadline:?}; received {received:?}"));
    received
}

/// An IMAP login over implicit TLS through haproxy from `from`: Dovecot and the audit
/// trail must see `from`, not haproxy's 127.0.0.1.
async fn imap_login_through(route: fn(SocketAddr) -> Route, from: &str) {
    let (dovecot, postern, password) = setup(Options::default()).await;
    let haproxy = Haproxy::start(&[route(postern.imaps)]);
    let (mut client, greeting) =
        ImapClient::connect_tls_from(ip(from), haproxy.frontends[0], &postern.ca_path).await;
    assert!(
        greeting.starts_with("* OK"),
        "{greeting}\n{}",
        haproxy.log()
    );
    let reply = client
        .command("a1", &format!("LOGIN alice@example.test \"{password}\""))
        .await;
    assert!(reply.last().unwrap().starts_with("a1 OK"), "{reply:?}");
    client.command("a2", "LOGOUT").await;
    assert!(client.closed_within(Duration::from_secs(10)).await);
    assert!(
        dovecot_saw(&dovecot, "imap-login", from),
        "Dovecot should log the address from the PROXY header ({from}):\n{}\n{}",
        dovecot.all_logs(),
        haproxy.log()
    );
    assert_audited_login(&postern, "imap", from).await;
    postern.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn imap_through_haproxy_send_proxy_v1() {
    imap_login_through(Route::v1, "127.0.0.2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn imap_through_haproxy_send_proxy_v2() {
    imap_login_through(Route::v2, "127.0.0.3").await;
}

/// POP3 through haproxy: XCLIENT carries the header's address to Dovecot's pop3-login.
#[tokio::test(flavor = "multi_thread")]
async fn pop3_through_haproxy_send_proxy_v2() {
    let from = "127.0.0.6";
    let (dovecot, postern, password) = setup(Options::default()).await;
    let haproxy = Haproxy::start(&[Route::v2(postern.pop3s)]);
    let (mut client, greeting) =
        ImapClient::connect_tls_from(ip(from), haproxy.frontends[0], &postern.ca_path).await;
    assert!(greeting.starts_with("+OK"), "{greeting}\n{}", haproxy.log());
    client.send(b"USER alice@example.test\r\n").await;
    assert_eq!(client.read_line().await, "+OK");
    client.send(format!("PASS {password}\r\n").as_bytes()).await;
    let reply = client.read_line().await;
    assert!(reply.starts_with("+OK"), "{reply}");
    client.send(b"QUIT\r\n").await;
    assert!(client.read_line().await.starts_with("+OK"));
    assert!(client.closed_within(Duration::from_secs(10)).await);
    assert!(
        dovecot_saw(&dovecot, "pop3-login", from),
        "Dovecot should log the address from the PROXY header ({from}):\n{}\n{}",
        dovecot.all_logs(),
        haproxy.log()
    );
    assert_audited_login(&postern, "pop3", from).await;
    postern.stop().await;
}

/// Just enough SMTP over a TLS stream that the test connected itself (from an address of
/// its choosing).
struct SmtpOverTls {
    tls: BufReader<tokio_rustls::client::TlsStream<TcpStream>>,
    transcript: String,
}

impl SmtpOverTls {
    /// Sends `command` (unless empty) and checks that the reply's last line starts with
    /// `expect`.
    async fn exchange(&mut self, command: &str, expect: &str) {
        if !command.is_empty() {
            self.tls
                .get_mut()
                .write_all(command.as_bytes())
                .await
                .unwrap();
        }
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(Duration::from_secs(20), self.tls.read_line(&mut line))
                .await
                .expect("SMTP reply in time")
                .expect("read SMTP reply");
            assert!(read > 0, "closed; transcript:\n{}", self.transcript);
            self.transcript.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                assert!(line.starts_with(expect), "transcript:\n{}", self.transcript);
                return;
            }
        }
    }
}

/// SMTP over implicit TLS through `send-proxy-v2` from 127.0.0.4: AUTH works and Dovecot's
/// submission service logs 127.0.0.4 (postern's XCLIENT). Then `send-proxy` (v1) in front
/// of the STARTTLS listener, where postern speaks first: the greeting comes only after the
/// header, and the header is consumed exactly (EHLO, STARTTLS and AUTH work after it).
#[tokio::test(flavor = "multi_thread")]
async fn smtp_through_haproxy() {
    let (dovecot, postern, password) = setup(Options::default()).await;
    let haproxy = Haproxy::start(&[Route::v2(postern.smtps), Route::v1(postern.submission)]);
    let auth = format!(
        "AUTH PLAIN {}\r\n",
        base64(format!("\0alice@example.test\0{password}").as_bytes())
    );

    let tcp = connect_from(ip("127.0.0.4"), haproxy.frontends[0]).await;
    let tls = connector(&postern.ca_path)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with postern through haproxy");
    let mut smtp = SmtpOverTls {
        tls: BufReader::new(tls),
        transcript: String::new(),
    };
    smtp.exchange("", "220 ").await;
    smtp.exchange("EHLO client.example.test\r\n", "250 ").await;
    smtp.exchange(&auth, "235 ").await;
    smtp.exchange("QUIT\r\n", "221 ").await;
    assert!(
        dovecot_saw(&dovecot, "submission-login", "127.0.0.4"),
        "Dovecot should log the address from the PROXY header (XCLIENT):\n{}\n{}",
        dovecot.all_logs(),
        haproxy.log()
    );
    assert_audited_login(&postern, "smtp", "127.0.0.4").await;

    let (mut client, greeting) = SmtpClient::connect_plain(haproxy.frontends[1]).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(client.command("EHLO x").await.contains("STARTTLS"));
    client.starttls(&postern.ca_path).await;
    assert!(client.command("EHLO x").await.contains("AUTH"));
    let reply = client.command(auth.trim_end()).await;
    assert!(reply.starts_with("235 "), "{reply}");
    postern.stop().await;
}

/// A peer outside `[network] proxy_sources` is closed at once without a greeting, even
/// with a well-formed header: it could name any client it liked.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_outside_proxy_sources_is_refused() {
    // A header timeout far beyond the 10 s the test waits: a refusal seen within the
    // wait was made on sight.
    let (_dovecot, postern, _) = setup(Options {
        proxy_sources: r#"["192.0.2.0/24"]"#,
        extra_config: "[limits]\nproxy_header_timeout = \"120s\"\n".into(),
        ..Options::default()
    })
    .await;
    for listener in [
        postern.imap,
        postern.submission,
        postern.imaps,
        postern.smtps,
    ] {
        let mut tcp = TcpStream::connect(listener).await.unwrap();
        tcp.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 50000 143\r\n")
            .await
            .unwrap();
        let received = bytes_until_closed(&mut tcp, Duration::from_secs(10)).await;
        assert_eq!(
            String::from_utf8_lossy(&received),
            "",
            "{listener}: nothing, not even a greeting"
        );
    }
    postern.stop().await;
}

/// A trusted peer that sends no header is closed: silent, after `proxy_header_timeout`,
/// without the greeting a STARTTLS listener would otherwise send at once; a TLS client let
/// straight through, at its ClientHello. Meanwhile and afterwards the listener serves a
/// client whose header names it (127.0.0.9, as the audit trail shows).
#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_peer_without_a_header_is_closed() {
    let (_dovecot, postern, password) = setup(Options {
        extra_config: "[limits]\nproxy_header_timeout = \"1s\"\n".into(),
        ..Options::default()
    })
    .await;

    let started = Instant::now();
    let mut silent = TcpStream::connect(postern.imap).await.unwrap();
    let mut silent_smtp = TcpStream::connect(postern.submission).await.unwrap();

    let tcp = TcpStream::connect(postern.imaps).await.unwrap();
    let handshake = connector(&postern.ca_path)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    assert!(
        handshake.is_err(),
        "a ClientHello instead of a PROXY header"
    );

    let mut tcp = TcpStream::connect(postern.imaps).await.unwrap();
    tcp.write_all(b"PROXY TCP4 127.0.0.9 127.0.0.1 40000 993\r\n")
        .await
        .unwrap();
    let (mut client, greeting) = ImapClient::handshake(tcp, connector(&postern.ca_path)).await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let reply = client
        .command("a1", &format!("LOGIN alice@example.test \"{password}\""))
        .await;
    assert!(reply.last().unwrap().starts_with("a1 OK"), "{reply:?}");

    for silent in [&mut silent, &mut silent_smtp] {
        let received = bytes_until_closed(silent, Duration::from_secs(10)).await;
        assert_eq!(String::from_utf8_lossy(&received), "", "no greeting");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );

    let mut tcp = TcpStream::connect(postern.imaps).await.unwrap();
    tcp.write_all(b"PROXY UNKNOWN\r\n").await.unwrap();
    let (_, greeting) = ImapClient::handshake(tcp, connector(&postern.ca_path)).await;
    assert!(greeting.starts_with("* OK"), "{greeting}");

    assert_audited_login(&postern, "imap", "127.0.0.9").await;
    postern.stop().await;
}

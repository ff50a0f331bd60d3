//! postern as an SMTP client of a real Dovecot submission service: what `probe` reports,
//! both login styles over STARTTLS and implicit TLS with a message relayed into the
//! recipient's Maildir, refusals, XCLIENT carrying the client's address into Dovecot's
//! log and Received header; and, against scripted servers, what Dovecot cannot be made
//! to do (AUTH LOGIN only, 4xx, no STARTTLS, silence).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use postern::config::UpstreamConfig;
use postern::smtp::upstream::{self, Capabilities, LoginRequest, SmtpUpstream};
use postern::upstream::{Upstream, UpstreamError};
use support::{Dovecot, TestCa};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The name postern gives in EHLO.
const HOSTNAME: &str = "postern.test";

/// A message with a dot-led line (stuffed on the wire) and 8-bit text in the body.
const MESSAGE: &[u8] = "From: Alice <alice@example.test>\r\n\
To: Bob <bob@example.test>\r\n\
Subject: Through postern's upstream\r\n\
Message-ID: <upstream-1@example.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Grüße from the SMTP upstream.\r\n\
.a line that starts with a dot\r\n\
..and one with two\r\n\
.\r\n\
The end.\r\n"
    .as_bytes();

/// An `Upstream` built from an `[upstream.smtp]` TOML table, and the temp dir holding its
/// master password file.
struct Setup {
    upstream: Upstream,
    _dir: tempfile::TempDir,
}

/// `[upstream.smtp]` pointing at `address`; `extra` is more TOML for the table.
fn setup(
    address: &str,
    tls: &str,
    auth: &str,
    ca: &Path,
    master: (&str, &str),
    extra: &str,
) -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("postern-smtp-upstream-")
        .tempdir()
        .expect("temp dir");
    let password_file = dir.path().join("master-password");
    std::fs::write(&password_file, format!("{}\n", master.1)).expect("write master password");
    let text = format!(
        r#"
address = "{address}"
tls = "{tls}"
server_name = "localhost"
ca_file = "{ca}"
auth = "{auth}"
master_user = "{user}"
master_password_file = "{password_file}"
{extra}
"#,
        ca = ca.display(),
        user = master.0,
        password_file = password_file.display(),
    );
    let config: UpstreamConfig = toml::from_str(&text).expect("[upstream.smtp] parses");
    Setup {
        upstream: Upstream::new(&config, None).expect("upstream TLS config"),
        _dir: dir,
    }
}

/// Dovecot's submission (`tls = "starttls"`) or submissions (`"implicit"`) port.
fn dovecot_setup(dovecot: &Dovecot, tls: &str, auth: &str) -> Setup {
    dovecot_setup_with_password(dovecot, tls, auth, &dovecot.master_password)
}

fn dovecot_setup_with_password(dovecot: &Dovecot, tls: &str, auth: &str, password: &str) -> Setup {
    let port = match tls {
        "implicit" => dovecot.submissions_port,
        _ => dovecot.submission_port,
    };
    setup(
        &format!("127.0.0.1:{port}"),
        tls,
        auth,
        &dovecot.ca_path,
        (&dovecot.master_user, password),
        "",
    )
}

fn request<'a>(user: &'a str, client: &str, helo: Option<&'a str>) -> LoginRequest<'a> {
    LoginRequest {
        upstream_user: user,
        client: client.parse().expect("client address"),
        client_helo: helo,
        login: "alice@example.test",
    }
}

/// Dot-stuffing as a client does it (RFC 5321 4.5.2), then the final dot.
fn stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out
}

/// One transaction the way the session relays it: MAIL and RCPT pipelined, DATA, the
/// stuffed message in pieces, the final dot; returns the final reply.
async fn relay_message(conn: &mut SmtpUpstream, to: &str) -> upstream::Reply {
    assert!(conn.capabilities().pipelining, "{:?}", conn.capabilities());
    conn.send(
        format!("MAIL FROM:<alice@example.test> BODY=8BITMIME\r\nRCPT TO:<{to}>\r\n").as_bytes(),
    )
    .await
    .expect("send MAIL and RCPT");
    let mail = conn.read_reply().await.expect("MAIL reply");
    assert_eq!(lossy(&mail.raw), "250 2.1.0 Ok\r\n");
    let rcpt = conn.read_reply().await.expect("RCPT reply");
    assert_eq!(lossy(&rcpt.raw), "250 2.1.5 Ok\r\n");
    let data = conn.command(b"DATA\r\n").await.expect("DATA");
    assert_eq!(data.code, 354, "{}", data.text());
    let wire = stuffed(MESSAGE);
    for piece in wire.chunks(37) {
        conn.send(piece).await.expect("message data");
    }
    conn.send(b".\r\n").await.expect("final dot");
    conn.read_reply().await.expect("reply to the final dot")
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every message in the user's Maildir/new.
fn delivered(dovecot: &Dovecot, user: &str) -> Vec<Vec<u8>> {
    let new = dovecot.maildir(user).join("new");
    let Ok(entries) = std::fs::read_dir(&new) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Asserts the one message in `user`'s Maildir is [`MESSAGE`] after the Received header
/// Dovecot prepends, and returns that header.
fn assert_delivered_intact(dovecot: &Dovecot, user: &str) -> String {
    let messages = delivered(dovecot, user);
    assert_eq!(messages.len(), 1, "{}", dovecot.all_logs());
    let message = &messages[0];
    assert!(
        message.starts_with(b"Received: ") && message.ends_with(MESSAGE),
        "not byte-identical:\n{}",
        String::from_utf8_lossy(message)
    );
    String::from_utf8_lossy(&message[..message.len() - MESSAGE.len()]).into_owned()
}

/// Polls Dovecot's log for a line containing every one of `parts`.
fn wait_for_log_line(dovecot: &Dovecot, parts: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = dovecot.log();
        if let Some(line) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return line.to_string();
        }
        if Instant::now() > deadline {
            panic!("no log line with {parts:?}:\n{}", dovecot.all_logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_reports_what_dovecot_offers_before_login() {
    let dovecot = Dovecot::start();
    // Dovecot 2.3.19's submission-login, to a client in login_trusted_networks: SIZE
    // without a number (its limit is announced after AUTH), no SMTPUTF8, no DSN, XCLIENT.
    let expected = Capabilities {
        size: Some(0),
        pipelining: true,
        eight_bit_mime: true,
        smtputf8: false,
        dsn: false,
        chunking: true,
        enhanced_status_codes: true,
        starttls: false, // not offered again once TLS is on
        auth: vec!["PLAIN".into(), "LOGIN".into()],
        xclient: Some(
            "ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT FORWARD"
                .split(' ')
                .map(String::from)
                .collect(),
        ),
    };
    for tls in ["starttls", "implicit"] {
        let setup = dovecot_setup(&dovecot, tls, "sasl-plain-authzid");
        let capabilities = upstream::probe(&setup.upstream, HOSTNAME)
            .await
            .unwrap_or_else(|e| panic!("probe over {tls}: {e}\n{}", dovecot.all_logs()));
        assert_eq!(capabilities, expected, "over {tls}");
    }
    // Both probes ended with QUIT, not a dropped connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = dovecot.log();
        let quits = log
            .lines()
            .filter(|l| {
                l.contains("submission-login")
                    && l.contains("Disconnected: Aborted login by logging out")
            })
            .count();
        if quits == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{quits} QUITs logged:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn authzid_login_over_starttls_relays_a_message_intact() {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    dovecot.add_user("bob", "bob-direct-password");
    let setup = dovecot_setup(&dovecot, "starttls", "sasl-plain-authzid");

    let (mut conn, connect_time) = upstream::login(
        &setup.upstream,
        HOSTNAME,
        &request("alice", "127.0.0.1:40000", None),
    )
    .await
    .unwrap_or_else(|e| panic!("login: {e}\n{}", dovecot.all_logs()));
    assert!(connect_time < Duration::from_secs(5));
    // After AUTH, Dovecot's submission service announces its real limit
    // (submission_max_mail_size, 40M by default) and no more AUTH or XCLIENT.
    let capabilities = conn.capabilities().clone();
    assert_eq!(
        capabilities.size,
        Some(40 * 1024 * 1024),
        "{capabilities:?}"
    );
    assert!(capabilities.auth.is_empty() && capabilities.xclient.is_none());

    let done = relay_message(&mut conn, "bob@example.test").await;
    assert_eq!(done.code, 250, "{}\n{}", done.text(), dovecot.all_logs());
    conn.quit().await;

    assert_delivered_intact(&dovecot, "bob");
    let login = wait_for_log_line(&dovecot, &["submission-login", "Login: user=<alice>"]);
    assert!(
        login.contains("method=PLAIN") && login.contains("TLS"),
        "{login}"
    );
    wait_for_log_line(&dovecot, &["submission(alice)", "Disconnected: Logged out"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn master_login_over_implicit_tls_relays_a_message_intact() {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    dovecot.add_user("bob", "bob-direct-password");
    let setup = dovecot_setup(&dovecot, "implicit", "master-login");

    let (mut conn, _) = upstream::login(
        &setup.upstream,
        HOSTNAME,
        &request("alice", "127.0.0.1:40001", None),
    )
    .await
    .unwrap_or_else(|e| panic!("login: {e}\n{}", dovecot.all_logs()));
    let done = relay_message(&mut conn, "bob@example.test").await;
    assert_eq!(
        lossy(&done.raw),
        "250 2.0.0 Ok: delivered\r\n",
        "{}",
        dovecot.all_logs()
    );

    // The session goes on. Dovecot refuses a recipient without a domain itself, and the
    // refusal comes back as sent; RSET, then a second transaction.
    let mail = conn
        .command(b"MAIL FROM:<alice@example.test>\r\n")
        .await
        .expect("MAIL");
    assert_eq!(mail.code, 250);
    let bare = conn.command(b"RCPT TO:<bob>\r\n").await.expect("RCPT");
    assert_eq!(lossy(&bare.raw), "501 5.5.4 Invalid TO: Missing domain\r\n");
    let rset = conn.command(b"RSET\r\n").await.expect("RSET");
    assert_eq!(rset.code, 250);
    let again = relay_message(&mut conn, "bob@example.test").await;
    assert_eq!(again.code, 250);
    conn.quit().await;

    let messages = delivered(&dovecot, "bob");
    assert_eq!(messages.len(), 2);
    assert!(messages.iter().all(|m| m.ends_with(MESSAGE)));
    // `alice*proxy` logged in as alice.
    wait_for_log_line(&dovecot, &["submission-login", "Login: user=<alice>"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_refusing_the_user_is_refused() {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    for auth in ["sasl-plain-authzid", "master-login"] {
        for tls in ["starttls", "implicit"] {
            let wrong = dovecot_setup_with_password(&dovecot, tls, auth, "not-the-master-password");
            let result = upstream::login(
                &wrong.upstream,
                HOSTNAME,
                &request("alice", "127.0.0.1:40002", None),
            )
            .await;
            assert!(
                matches!(result, Err(UpstreamError::Refused)),
                "{auth} over {tls}, wrong master password: {:?}",
                result.map(|_| ())
            );

            let right = dovecot_setup(&dovecot, tls, auth);
            let result = upstream::login(
                &right.upstream,
                HOSTNAME,
                &request("mallory", "127.0.0.1:40003", None),
            )
            .await;
            assert!(
                matches!(result, Err(UpstreamError::Refused)),
                "{auth} over {tls}, unknown user: {:?}",
                result.map(|_| ())
            );
        }
    }
    assert_eq!(UpstreamError::Refused.reason(), "refused");
    // The master password never reaches Dovecot's log, even on failure.
    assert!(!dovecot.log().contains("not-the-master-password"));
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_listening_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let port = support::free_port();
    for tls in ["starttls", "implicit"] {
        let setup = setup(
            &format!("127.0.0.1:{port}"),
            tls,
            "sasl-plain-authzid",
            &ca.ca_path,
            ("proxy", "pw"),
            "",
        );
        let result = upstream::login(
            &setup.upstream,
            HOSTNAME,
            &request("alice", "127.0.0.1:40004", None),
        )
        .await;
        match result {
            Err(error @ UpstreamError::Connect { .. }) => assert_eq!(error.reason(), "connect"),
            other => panic!("expected a connect error, got {:?}", other.map(|_| ())),
        }
        let probed = upstream::probe(&setup.upstream, HOSTNAME).await;
        assert!(
            matches!(probed, Err(UpstreamError::Connect { .. })),
            "{probed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn xclient_hands_dovecot_the_client_address_and_helo() {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    dovecot.add_user("bob", "bob-direct-password");
    let setup = dovecot_setup(&dovecot, "starttls", "sasl-plain-authzid");

    let (mut conn, _) = upstream::login(
        &setup.upstream,
        HOSTNAME,
        &request("alice", "192.0.2.9:51515", Some("laptop.example")),
    )
    .await
    .unwrap_or_else(|e| panic!("login: {e}\n{}", dovecot.all_logs()));
    let done = relay_message(&mut conn, "bob@example.test").await;
    assert_eq!(done.code, 250);
    conn.quit().await;

    // Dovecot logs the real client, not postern's 127.0.0.1 ...
    let login = wait_for_log_line(&dovecot, &["Login: user=<alice>"]);
    assert!(login.contains("rip=192.0.2.9,"), "{login}");
    // ... and stamps it, with the client's HELO name, on the message.
    let received = assert_delivered_intact(&dovecot, "bob");
    assert!(
        received.starts_with("Received: from laptop.example ([192.0.2.9])"),
        "{received}"
    );

    // An IPv6 client goes as ADDR=IPV6:…; a name EHLO cannot carry is replaced by
    // postern's own.
    let (mut conn, _) = upstream::login(
        &setup.upstream,
        HOSTNAME,
        &request("alice", "[2001:db8::7]:443", Some("my_pc")),
    )
    .await
    .unwrap_or_else(|e| panic!("login from IPv6: {e}\n{}", dovecot.all_logs()));
    let done = relay_message(&mut conn, "bob@example.test").await;
    assert_eq!(done.code, 250);
    conn.quit().await;
    wait_for_log_line(&dovecot, &["Login: user=<alice>", "rip=2001:db8::7,"]);
    let messages = delivered(&dovecot, "bob");
    assert_eq!(messages.len(), 2);
    let second = messages
        .iter()
        .map(|m| lossy(m))
        .find(|m| !m.starts_with("Received: from laptop.example"))
        .unwrap();
    assert!(
        second.starts_with("Received: from postern.test ([2001:db8::7])"),
        "{second}"
    );
}

/// A scripted SMTP server on 127.0.0.1 for one connection: sends `greeting`, then answers
/// each line it reads with the next of `replies`, then waits for the client to close.
/// Returns its address and, at the end, the lines it read.
async fn scripted(
    greeting: &'static str,
    replies: Vec<&'static str>,
) -> (SocketAddr, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, mut write) = socket.into_split();
        let mut read = BufReader::new(read);
        write.write_all(greeting.as_bytes()).await.unwrap();
        let mut lines = Vec::new();
        let mut replies = replies.into_iter();
        loop {
            let mut line = String::new();
            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                return lines;
            }
            lines.push(line.trim_end().to_string());
            if let Some(reply) = replies.next() {
                write.write_all(reply.as_bytes()).await.unwrap();
            }
        }
    });
    (address, task)
}

/// `[upstream.smtp]` for a scripted server: plaintext on loopback, short timeouts.
fn scripted_setup(address: SocketAddr, tls: &str, auth: &str, dir: &Path) -> Setup {
    let ca = TestCa::new(dir);
    setup(
        &address.to_string(),
        tls,
        auth,
        &ca.ca_path,
        ("proxy", "master-secret"),
        "reply_timeout = \"500ms\"",
    )
}

fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread")]
async fn master_login_falls_back_to_auth_login() {
    let (address, server) = scripted(
        "220 mx ESMTP\r\n",
        vec![
            "250-mx\r\n250-XCLIENT NAME ADDR\r\n250 AUTH LOGIN\r\n",
            "220 mx ESMTP again\r\n",
            "250-mx\r\n250 AUTH LOGIN\r\n",
            "334 VXNlcm5hbWU6\r\n",
            "334 UGFzc3dvcmQ6\r\n",
            "235 2.7.0 Authentication successful\r\n",
            "250-mx\r\n250 SIZE 1000\r\n",
            "221 Bye\r\n",
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let setup = scripted_setup(address, "none", "master-login", dir.path());
    let (conn, _) = upstream::login(
        &setup.upstream,
        HOSTNAME,
        &request(
            "alice",
            "[::ffff:198.51.100.4]:2525",
            Some("laptop.example"),
        ),
    )
    .await
    .expect("login with AUTH LOGIN");
    assert_eq!(conn.capabilities().size, Some(1000));
    conn.quit().await;
    assert_eq!(
        server.await.unwrap(),
        [
            "EHLO postern.test".to_string(),
            // HELO is not among the attributes offered, so only EHLO carries the name.
            "XCLIENT ADDR=198.51.100.4".into(),
            "EHLO laptop.example".into(),
            "AUTH LOGIN".into(),
            base64("alice*proxy"),
            base64("master-secret"),
            "EHLO laptop.example".into(),
            "QUIT".into(),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_temporary_auth_failure_is_not_a_refusal() {
    let (address, server) = scripted(
        "220 mx ESMTP\r\n",
        vec![
            "250-mx\r\n250 AUTH PLAIN LOGIN\r\n",
            "454 4.7.0 Temporary authentication failure\r\n",
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let setup = scripted_setup(address, "none", "sasl-plain-authzid", dir.path());
    let result = upstream::login(
        &setup.upstream,
        HOSTNAME,
        &request("alice", "127.0.0.1:1", None),
    )
    .await;
    match result {
        Err(
            error @ UpstreamError::Rejected {
                phase: "login",
                code: 454,
            },
        ) => {
            assert_eq!(error.reason(), "rejected");
            assert_eq!(error.to_string(), "upstream answered login with 454");
        }
        other => panic!("expected Rejected, got {:?}", other.map(|_| ())),
    }
    let lines = server.await.unwrap();
    assert_eq!(
        lines[1],
        format!("AUTH PLAIN {}", base64("alice\0proxy\0master-secret"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_credentials_go_out_without_starttls() {
    let (address, server) =
        scripted("220 mx ESMTP\r\n", vec!["250-mx\r\n250 AUTH PLAIN\r\n"]).await;
    let dir = tempfile::tempdir().unwrap();
    let setup = scripted_setup(address, "starttls", "sasl-plain-authzid", dir.path());
    let result = upstream::login(
        &setup.upstream,
        HOSTNAME,
        &request("alice", "127.0.0.1:1", None),
    )
    .await;
    assert!(
        matches!(result, Err(UpstreamError::Unsupported("STARTTLS"))),
        "{:?}",
        result.map(|_| ())
    );
    drop(setup);
    assert_eq!(server.await.unwrap(), ["EHLO postern.test"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_greetings_and_silence_are_named_by_phase() {
    let dir = tempfile::tempdir().unwrap();

    let (address, _server) = scripted("421 4.3.2 Too busy\r\n", vec![]).await;
    let setup = scripted_setup(address, "none", "sasl-plain-authzid", dir.path());
    let result = upstream::probe(&setup.upstream, HOSTNAME).await;
    assert!(
        matches!(
            result,
            Err(UpstreamError::Rejected {
                phase: "greeting",
                code: 421
            })
        ),
        "{result:?}"
    );

    let (address, _server) = scripted("* OK IMAP4rev1 ready\r\n", vec![]).await;
    let setup = scripted_setup(address, "none", "sasl-plain-authzid", dir.path());
    let result = upstream::probe(&setup.upstream, HOSTNAME).await;
    assert!(
        matches!(result, Err(UpstreamError::Protocol { phase: "greeting" })),
        "{result:?}"
    );

    // Accepts, then says nothing: the greeting's deadline (500 ms here) names the phase.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(socket);
    });
    let setup = scripted_setup(address, "none", "sasl-plain-authzid", dir.path());
    let started = Instant::now();
    let result = upstream::login(
        &setup.upstream,
        HOSTNAME,
        &request("alice", "127.0.0.1:1", None),
    )
    .await;
    match result {
        Err(
            error @ UpstreamError::Timeout {
                phase: "greeting", ..
            },
        ) => {
            assert_eq!(error.to_string(), "upstream greeting timed out after 500ms");
        }
        other => panic!("expected a greeting timeout, got {:?}", other.map(|_| ())),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

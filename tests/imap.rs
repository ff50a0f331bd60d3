//! The IMAP gateway end to end: real Dovecot behind, postern in the middle, byte-level
//! scripts of Outlook 2016 and Apple Mail in front, over both listener kinds.

mod support;

use std::time::Duration;

use postern::store::Scope;
use rustls::pki_types::pem::PemObject;
use support::imap_client::ImapClient;
use support::postern::{metric, Options, Postern};
use support::Dovecot;

const MESSAGE: &[u8] = b"From: Bob <bob@example.test>\r\n\
To: Alice <alice@example.test>\r\n\
Subject: Quarterly numbers\r\n\
Message-ID: <numbers-1@example.test>\r\n\
\r\n\
The numbers are in.\r\n";

/// Dovecot with user `alice` and one message; postern with login `alice@example.test`.
async fn setup(options: Options) -> (Dovecot, Postern, String, i64) {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    dovecot.deliver("alice", MESSAGE);
    let postern = Postern::start_with(&dovecot, options).await;
    postern.add_user("alice@example.test", "alice").await;
    let (id, password) = postern
        .issue("alice@example.test", &[Scope::Imap, Scope::Smtp], None)
        .await;
    (dovecot, postern, password, id)
}

/// Connects to the listener of `kind` and returns a client ready to log in (after STARTTLS
/// on the STARTTLS listener), with the capabilities it was shown.
async fn ready_to_login(postern: &Postern, kind: &str) -> (ImapClient, String) {
    match kind {
        "implicit" => {
            let (client, greeting) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
            assert_eq!(
                greeting,
                "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN] postern ready"
            );
            (client, greeting)
        }
        _ => {
            let (mut client, greeting) = ImapClient::connect_plain(postern.imap).await;
            assert_eq!(
                greeting,
                "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID STARTTLS LOGINDISABLED] postern ready"
            );
            client.starttls("s0", &postern.ca_path).await;
            (client, greeting)
        }
    }
}

/// Outlook 2016: CAPABILITY, LOGIN with quoted strings, CAPABILITY again (it must see the
/// upstream's), LIST, SELECT, UID FETCH, IDLE, LOGOUT.
async fn outlook_session(postern: &Postern, password: &str, kind: &str) {
    let (mut client, _) = ready_to_login(postern, kind).await;
    let caps = client.command("a1", "CAPABILITY").await;
    assert_eq!(
        caps[0],
        "* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN"
    );
    assert!(!caps.iter().any(|l| l.contains("CRAM-MD5")));

    let login = client
        .command(
            "a2",
            &format!("LOGIN \"alice@example.test\" \"{password}\""),
        )
        .await;
    let ok = login.last().unwrap();
    assert!(ok.starts_with("a2 OK [CAPABILITY IMAP4rev1"), "{login:?}");
    assert!(
        ok.contains("IDLE"),
        "post-login capabilities come from Dovecot: {ok}"
    );

    let caps = client.command("a3", "CAPABILITY").await;
    assert!(caps[0].starts_with("* CAPABILITY IMAP4rev1"), "{caps:?}");
    assert!(
        caps[0].contains("IDLE") && !caps[0].contains("LOGINDISABLED"),
        "{caps:?}"
    );

    let list = client.command("a4", "LIST \"\" \"*\"").await;
    assert!(
        list.iter()
            .any(|l| l.starts_with("* LIST") && l.contains("INBOX")),
        "{list:?}"
    );
    let select = client.command("a5", "SELECT INBOX").await;
    assert!(select.iter().any(|l| l == "* 1 EXISTS"), "{select:?}");
    assert!(select.last().unwrap().starts_with("a5 OK"), "{select:?}");

    let fetch = client
        .command("a6", "UID FETCH 1:* (UID RFC822.SIZE BODY.PEEK[])")
        .await;
    let joined = fetch.join("\n");
    assert!(joined.contains("The numbers are in."), "{fetch:?}");
    assert!(fetch.last().unwrap().starts_with("a6 OK"), "{fetch:?}");

    client.send(b"a7 IDLE\r\n").await;
    assert_eq!(client.read_line().await, "+ idling");
    client.send(b"DONE\r\n").await;
    let done = client.read_tagged("a7").await;
    assert!(done.last().unwrap().starts_with("a7 OK"), "{done:?}");

    let logout = client.command("a8", "LOGOUT").await;
    assert!(logout.iter().any(|l| l.starts_with("* BYE")), "{logout:?}");
    assert!(logout.last().unwrap().starts_with("a8 OK"), "{logout:?}");
    assert!(client.closed_within(Duration::from_secs(10)).await);
}

/// Apple Mail: CAPABILITY, ID, AUTHENTICATE PLAIN with SASL-IR, ENABLE, SELECT, UID FETCH,
/// IDLE, LOGOUT.
async fn apple_mail_session(postern: &Postern, password: &str, kind: &str) {
    let (mut client, _) = ready_to_login(postern, kind).await;
    client.command("1", "CAPABILITY").await;
    let id = client
        .command(
            "2",
            "ID (\"name\" \"Mac OS X Mail\" \"version\" \"16.0 (3776.700.51)\" \"os\" \"Mac OS X\")",
        )
        .await;
    assert_eq!(id, vec!["* ID (\"name\" \"postern\")", "2 OK ID completed"]);

    let response = base64(&format!("\0alice@example.test\0{password}"));
    let auth = client
        .command("3", &format!("AUTHENTICATE PLAIN {response}"))
        .await;
    assert!(
        auth.last()
            .unwrap()
            .starts_with("3 OK [CAPABILITY IMAP4rev1"),
        "{auth:?}"
    );

    let enable = client.command("4", "ENABLE QRESYNC").await;
    assert!(enable.last().unwrap().starts_with("4 OK"), "{enable:?}");
    let select = client.command("5", "SELECT INBOX").await;
    assert!(select.iter().any(|l| l == "* 1 EXISTS"), "{select:?}");
    let fetch = client
        .command(
            "6",
            "UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
        )
        .await;
    assert!(fetch.join("\n").contains("Quarterly numbers"), "{fetch:?}");
    client.send(b"7 IDLE\r\n").await;
    assert_eq!(client.read_line().await, "+ idling");
    client.send(b"DONE\r\n").await;
    client.read_tagged("7").await;
    let logout = client.command("8", "LOGOUT").await;
    assert!(logout.last().unwrap().starts_with("8 OK"), "{logout:?}");
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread")]
async fn outlook_and_apple_mail_scripts_work_over_both_listener_kinds() {
    let (dovecot, postern, password, _) = setup(Options::default()).await;
    for kind in ["implicit", "starttls"] {
        outlook_session(&postern, &password, kind).await;
        apple_mail_session(&postern, &password, kind).await;
    }
    let ready = postern.http_get("/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(
        ready.ends_with("store ok\nimap upstream ok\nsmtp upstream ok\n"),
        "{ready}"
    );
    // Apple Mail's ID reached Dovecot with the client's real address.
    let log = dovecot.all_logs();
    assert!(
        log.contains("Mac OS X Mail"),
        "ID fields forwarded upstream:\n{log}"
    );
    let metrics = postern.metrics();
    assert_eq!(
        metric(
            &metrics,
            "postern_auth_attempts_total{mechanism=\"login\",protocol=\"imap\",result=\"ok\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "postern_auth_attempts_total{mechanism=\"plain\",protocol=\"imap\",result=\"ok\"}"
        ),
        2.0
    );
    assert!(
        metric(&metrics, "postern_auth_cache_hits_total") >= 3.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "postern_relay_bytes_total{direction=\"to_client\",protocol=\"imap\"}"
        ) > 0.0
    );
    postern.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn master_login_mode_and_starttls_upstream_work_too() {
    let options = Options {
        upstream_auth: "master-login",
        upstream_tls: "starttls",
        ..Options::default()
    };
    let (_dovecot, postern, password, _) = setup(options).await;
    outlook_session(&postern, &password, "implicit").await;
    postern.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_is_accepted_however_it_is_retyped() {
    let (_dovecot, postern, password, _) = setup(Options::default()).await;
    let retyped = password.replace(' ', "").to_uppercase();
    let (mut client, _) = ready_to_login(&postern, "implicit").await;
    let login = client
        .command(
            "a1",
            &format!(
                "LOGIN {{18}}\r\nALICE@EXAMPLE.TEST {{{}+}}\r\n{retyped}",
                retyped.len()
            ),
        )
        .await;
    // The synchronizing literal got its continuation; the LITERAL+ one did not need one.
    assert_eq!(login[0], "+ Ready for literal data");
    assert!(
        login.last().unwrap().starts_with("a1 OK [CAPABILITY"),
        "{login:?}"
    );
    postern.stop().await;
}

/// Logins take the upstream connections made ahead of them (TLS to Dovecot, greeting
/// read), and the pool refills: a warm connection must still look idle after its greeting.
#[tokio::test(flavor = "multi_thread")]
async fn logins_use_warm_upstream_connections() {
    let (_dovecot, postern, password, _) = setup(Options::default()).await;
    for round in 1..=3 {
        // Readiness, not a sleep: the pool (4 by default) refills in the background.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while postern.gateway.imap_warm.is_empty() {
            assert!(std::time::Instant::now() < deadline, "no warm connection");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (mut client, _) = ready_to_login(&postern, "implicit").await;
        let login = client
            .command("a1", &format!("LOGIN alice@example.test \"{password}\""))
            .await;
        assert!(login.last().unwrap().starts_with("a1 OK"), "{login:?}");
        let logout = client.command("a2", "LOGOUT").await;
        assert!(logout.last().unwrap().starts_with("a2 OK"), "{logout:?}");
        let metrics = postern.metrics();
        let warm = r#"postern_upstream_logins_total{connection="warm",protocol="imap"}"#;
        let new = r#"postern_upstream_logins_total{connection="new",protocol="imap"}"#;
        assert_eq!(metric(&metrics, warm), f64::from(round), "{metrics}");
        assert_eq!(metric(&metrics, new), 0.0, "{metrics}");
    }
    postern.stop().await;
}

/// TLS 1.2 clients (older Outlook, printers) are served too.
#[tokio::test(flavor = "multi_thread")]
async fn tls_1_2_clients_are_served() {
    let (_dovecot, postern, password, _) = setup(Options::default()).await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&postern.ca_path).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(postern.imaps).await.unwrap();
    let (mut client, greeting) = ImapClient::handshake(
        tcp,
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
    )
    .await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let reply = client
        .command("a1", &format!("LOGIN alice@example.test \"{password}\""))
        .await;
    assert!(reply.last().unwrap().starts_with("a1 OK"), "{reply:?}");
    postern.stop().await;
}

/// A client that connects and never starts its TLS handshake holds only its own task:
/// others are greeted meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_client_does_not_stall_the_listener() {
    let (_dovecot, postern, _, _) = setup(Options::default()).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(postern.imaps).await.unwrap());
    }
    let (_client, greeting) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    postern.stop().await;
}

/// Dovecot sees the real client's address (sent in ID as x-originating-ip), not
/// postern's, so its logs and penalties apply to the right host.
#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_sees_the_clients_address() {
    let (dovecot, postern, password, _) = setup(Options::default()).await;
    let from: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let (mut client, _) = ImapClient::connect_tls_from(from, postern.imaps, &postern.ca_path).await;
    let reply = client
        .command("a1", &format!("LOGIN alice@example.test \"{password}\""))
        .await;
    assert!(reply.last().unwrap().starts_with("a1 OK"), "{reply:?}");
    client.command("a2", "LOGOUT").await;
    assert!(client.closed_within(Duration::from_secs(10)).await);
    let log = dovecot.all_logs();
    assert!(
        log.lines()
            .any(|l| l.contains("Login: user=<alice>") && l.contains("rip=127.0.0.2")),
        "Dovecot should log the client's address:\n{log}"
    );
    postern.stop().await;
}

/// After login, COMPRESS=DEFLATE is negotiated with the upstream and the compressed
/// stream passes through postern untouched.
#[tokio::test(flavor = "multi_thread")]
async fn compress_deflate_passes_through() {
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

    let (_dovecot, postern, password, _) = setup(Options::default()).await;
    let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let login = client
        .command("a1", &format!("LOGIN alice@example.test \"{password}\""))
        .await;
    assert!(
        login.last().unwrap().contains("COMPRESS=DEFLATE"),
        "{login:?}"
    );
    let reply = client.command("a2", "COMPRESS DEFLATE").await;
    assert!(reply.last().unwrap().starts_with("a2 OK"), "{reply:?}");

    // From here on both directions are raw deflate streams (RFC 4978).
    let mut deflate = Compress::new(Compression::default(), false);
    let mut inflate = Decompress::new(false);
    let mut compressed = Vec::with_capacity(1024);
    deflate
        .compress_vec(
            b"a3 SELECT INBOX\r\na4 FETCH 1 BODY[TEXT]\r\na5 LOGOUT\r\n",
            &mut compressed,
            FlushCompress::Sync,
        )
        .unwrap();
    client.send(&compressed).await;
    let mut text = Vec::new();
    while let Some(bytes) = client.read_raw().await {
        let mut out = Vec::with_capacity(64 * 1024);
        inflate
            .decompress_vec(&bytes, &mut out, FlushDecompress::Sync)
            .unwrap();
        text.extend_from_slice(&out);
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("* 1 EXISTS"), "{text}");
    assert!(text.contains("The numbers are in."), "{text}");
    assert!(text.contains("a5 OK"), "{text}");
    postern.stop().await;
}

//! SMTP submission end to end: Outlook- and Apple-like sessions as byte-level scripts
//! through postern to a real Dovecot submission service, which relays into the
//! recipient's Maildir; then the message read back through postern's IMAP side.

mod support;

use std::time::Duration;

use postern::clock::now;
use postern::store::Scope;
use support::imap_client::ImapClient;
use support::postern::{metric, Options, Postern};
use support::smtp_client::SmtpClient;
use support::Dovecot;

const AUTH_OK: &str = "235 2.7.0 Authentication successful";
const AUTH_REFUSED: &str = "535 5.7.8 Authentication credentials invalid";

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Dovecot with users alice and bob; postern login alice@example.test (address
/// alice@example.test) with an imap+smtp app password.
async fn setup(options: Options) -> (Dovecot, Postern, String, i64) {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    dovecot.add_user("bob", "bob-direct-password");
    let postern = Postern::start_with(&dovecot, options).await;
    postern.add_user("alice@example.test", "alice").await;
    let (id, password) = postern
        .issue("alice@example.test", &[Scope::Imap, Scope::Smtp], None)
        .await;
    (dovecot, postern, password, id)
}

fn message(subject: &str, from: &str) -> String {
    format!(
        "From: Alice <{from}>\r\nTo: Bob <bob@example.test>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.test>\r\n\r\nHello Bob,\r\n..a line that starts with a dot\r\n\
         regards\r\n"
    )
}

/// Fetches the bodies of every message in `user`'s INBOX through postern's IMAP side.
async fn inbox_through_postern(postern: &Postern, password: &str) -> String {
    let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let login = client
        .command("a1", &format!("LOGIN alice@example.test \"{password}\""))
        .await;
    assert!(login.last().unwrap().starts_with("a1 OK"), "{login:?}");
    client.command("a2", "SELECT INBOX").await;
    client
        .command("a3", "FETCH 1:* BODY.PEEK[]")
        .await
        .join("\n")
}

/// Outlook 2016: EHLO, STARTTLS, EHLO, AUTH LOGIN with the exact prompts, one message.
#[tokio::test(flavor = "multi_thread")]
async fn outlook_sends_over_starttls_with_auth_login() {
    let (_dovecot, postern, password, _) = setup(Options::default()).await;
    let (mut client, greeting) = SmtpClient::connect_plain(postern.submission).await;
    assert!(greeting.starts_with("220 localhost ESMTP"), "{greeting}");
    let ehlo = client.command("EHLO DESKTOP-OUTLOOK").await;
    assert!(ehlo.lines().any(|l| &l[4..] == "STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "no AUTH before TLS: {ehlo}");
    let auth = client.command("AUTH LOGIN").await;
    assert!(auth.starts_with("538 5.7.11"), "{auth}");
    let mail = client.command("MAIL FROM:<alice@example.test>").await;
    assert!(mail.starts_with("530 5.7.0"), "{mail}");
    client.starttls(&postern.ca_path).await;
    let ehlo = client.command("EHLO DESKTOP-OUTLOOK").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(
        ehlo.contains("PIPELINING")
            && ehlo.contains("8BITMIME")
            && ehlo.contains("ENHANCEDSTATUSCODES")
    );
    assert!(ehlo.contains("SIZE "), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");

    assert_eq!(client.command("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(
        client.command(&base64(b"alice@example.test")).await,
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(client.command(&base64(password.as_bytes())).await, AUTH_OK);

    assert!(client
        .command("MAIL FROM:<alice@example.test>")
        .await
        .starts_with("250"));
    assert!(client
        .command("RCPT TO:<alice@example.test>")
        .await
        .starts_with("250"));
    assert!(client.command("DATA").await.starts_with("354"));
    client
        .send(message("outlook", "alice@example.test").as_bytes())
        .await;
    let accepted = client.command(".").await;
    assert!(accepted.starts_with("250"), "{accepted}");
    assert!(client.command("QUIT").await.starts_with("221"));

    // The message is in alice's mailbox, read back through postern, body unchanged
    // (dot-stuffing removed exactly once).
    let inbox = inbox_through_postern(&postern, &password).await;
    assert!(inbox.contains("Subject: outlook"), "{inbox}");
    assert!(
        inbox.contains("Hello Bob,\r\n.a line that starts with a dot\r\nregards"),
        "{inbox}"
    );
    let metrics = postern.metrics();
    assert_eq!(
        metric(&metrics, "postern_smtp_messages_total{result=\"accepted\"}"),
        1.0,
        "{metrics}"
    );
    postern.stop().await;
}

/// Apple Mail: implicit TLS, `EHLO smtpclient.apple`, AUTH PLAIN with an initial
/// response, MAIL/RCPT/DATA pipelined in one packet.
#[tokio::test(flavor = "multi_thread")]
async fn apple_mail_pipelines_over_implicit_tls_with_auth_plain() {
    let (dovecot, postern, password, _) = setup(Options::default()).await;
    let (mut client, _) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
    let ehlo = client.command("EHLO smtpclient.apple").await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    let response = base64(format!("\0alice@example.test\0{password}").as_bytes());
    assert_eq!(
        client.command(&format!("AUTH PLAIN {response}")).await,
        AUTH_OK
    );

    client
        .send(b"MAIL FROM:<alice@example.test> BODY=8BITMIME\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        .await;
    assert!(client.read_reply().await.starts_with("250"), "MAIL");
    assert!(client.read_reply().await.starts_with("250"), "RCPT bob");
    assert!(client.read_reply().await.starts_with("250"), "RCPT alice");
    assert!(client.read_reply().await.starts_with("354"), "DATA");
    let mut body = message("apple", "alice@example.test");
    body.push_str(".\r\n");
    client.send(body.as_bytes()).await;
    assert!(client.read_reply().await.starts_with("250"));
    // A second transaction on the same connection.
    client
        .send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        .await;
    for expected in ["250", "250", "354"] {
        assert!(client.read_reply().await.starts_with(expected));
    }
    client
        .send(format!("{}.\r\n", message("apple-2", "alice@example.test")).as_bytes())
        .await;
    assert!(client.read_reply().await.starts_with("250"));
    assert!(client.command("QUIT").await.starts_with("221"));

    let bob = std::fs::read_dir(dovecot.maildir("bob").join("new"))
        .unwrap()
        .count();
    assert_eq!(bob, 2, "both messages reached bob");
    postern.stop().await;
}

async fn authenticated(postern: &Postern, password: &str) -> SmtpClient {
    let (mut client, _) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
    client.command("EHLO client.example").await;
    let response = base64(format!("\0alice@example.test\0{password}").as_bytes());
    assert_eq!(
        client.command(&format!("AUTH PLAIN {response}")).await,
        AUTH_OK
    );
    client
}

/// MAIL FROM and From:/Sender: must be the user's own addresses.
#[tokio::test(flavor = "multi_thread")]
async fn spoofed_senders_are_refused() {
    let (dovecot, postern, password, _) = setup(Options::default()).await;
    let mut client = authenticated(&postern, &password).await;
    let mail = client.command("MAIL FROM:<ceo@example.test>").await;
    assert!(mail.starts_with("553 5.7.1"), "{mail}");

    assert!(client
        .command("MAIL FROM:<alice@example.test>")
        .await
        .starts_with("250"));
    assert!(client
        .command("RCPT TO:<bob@example.test>")
        .await
        .starts_with("250"));
    assert!(client.command("DATA").await.starts_with("354"));
    client
        .send(message("spoof", "ceo@example.test").as_bytes())
        .await;
    let refused = client.command(".").await;
    assert!(refused.starts_with("553 5.7.1"), "{refused}");

    // The connection and the upstream session still work.
    assert!(client
        .command("MAIL FROM:<alice@example.test>")
        .await
        .starts_with("250"));
    assert!(client
        .command("RCPT TO:<bob@example.test>")
        .await
        .starts_with("250"));
    assert!(client.command("DATA").await.starts_with("354"));
    client
        .send(message("honest", "alice@example.test").as_bytes())
        .await;
    assert!(client.command(".").await.starts_with("250"));
    let delivered: Vec<String> = std::fs::read_dir(dovecot.maildir("bob").join("new"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0].contains("Subject: honest"));
    let metrics = postern.metrics();
    assert_eq!(
        metric(
            &metrics,
            "postern_smtp_messages_total{result=\"sender_refused\"}"
        ),
        2.0,
        "{metrics}"
    );
    postern.stop().await;
}

/// The upstream's rejection after DATA is the client's reply: never a 250 for a
/// message the upstream did not take.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_rejection_at_data_reaches_the_client() {
    let (_dovecot, postern, password, _) = setup(Options::default()).await;
    let mut client = authenticated(&postern, &password).await;
    assert!(client
        .command("MAIL FROM:<alice@example.test>")
        .await
        .starts_with("250"));
    assert!(client
        .command("RCPT TO:<bob@example.test>")
        .await
        .starts_with("250"));
    assert!(client.command("DATA").await.starts_with("354"));
    let marker = String::from_utf8_lossy(support::smtp_relay::REJECT_MARKER).into_owned();
    client
        .send(format!("From: alice@example.test\r\n{marker}\r\n\r\nplease reject\r\n").as_bytes())
        .await;
    let reply = client.command(".").await;
    assert!(reply.starts_with("554"), "{reply}");
    let metrics = postern.metrics();
    assert_eq!(
        metric(&metrics, "postern_smtp_messages_total{result=\"accepted\"}"),
        0.0
    );
    assert_eq!(
        metric(&metrics, "postern_smtp_messages_total{result=\"rejected\"}"),
        1.0
    );
    postern.stop().await;
}

/// Quotas: beyond the configured messages per hour, 451 4.7.1.
#[tokio::test(flavor = "multi_thread")]
async fn quotas_answer_451() {
    let options = Options {
        extra_config: "[smtp]\nmessages_per_hour = 1\nrecipients_per_hour = 2\n".into(),
        ..Options::default()
    };
    let (_dovecot, postern, password, _) = setup(options).await;
    let mut client = authenticated(&postern, &password).await;
    assert!(client
        .command("MAIL FROM:<alice@example.test>")
        .await
        .starts_with("250"));
    assert!(client
        .command("RCPT TO:<bob@example.test>")
        .await
        .starts_with("250"));
    assert!(client
        .command("RCPT TO:<alice@example.test>")
        .await
        .starts_with("250"));
    let third = client.command("RCPT TO:<bob@example.test>").await;
    assert!(third.starts_with("451 4.7.1"), "{third}");
    assert!(client.command("DATA").await.starts_with("354"));
    client
        .send(message("quota", "alice@example.test").as_bytes())
        .await;
    assert!(client.command(".").await.starts_with("250"));
    let again = client.command("MAIL FROM:<alice@example.test>").await;
    assert!(again.starts_with("451 4.7.1"), "{again}");
    postern.stop().await;
}

/// Wrong password, unknown user and an app password without the smtp scope all get the
/// same 535; an unreachable upstream gets 454.
#[tokio::test(flavor = "multi_thread")]
async fn refusals() {
    let (_dovecot, postern, _, _) = setup(Options::default()).await;
    let (_, imap_only) = postern
        .issue("alice@example.test", &[Scope::Imap], None)
        .await;
    for (user, password) in [
        ("alice@example.test", "aaaa bbbb cccc dddd"),
        ("nobody@example.test", "aaaa bbbb cccc dddd"),
        ("alice@example.test", imap_only.as_str()),
    ] {
        let (mut client, _) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
        client.command("EHLO x").await;
        let response = base64(format!("\0{user}\0{password}").as_bytes());
        assert_eq!(
            client.command(&format!("AUTH PLAIN {response}")).await,
            AUTH_REFUSED
        );
    }
    let metrics = postern.metrics();
    assert_eq!(
        metric(&metrics, "postern_auth_attempts_total{mechanism=\"plain\",protocol=\"smtp\",result=\"scope_denied\"}"),
        1.0,
        "{metrics}"
    );
    postern.stop().await;

    let (_dovecot, postern, password, _) = setup(Options {
        upstream_port: Some(support::free_port()),
        ..Options::default()
    })
    .await;
    let (mut client, _) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
    client.command("EHLO x").await;
    let response = base64(format!("\0alice@example.test\0{password}").as_bytes());
    let reply = client.command(&format!("AUTH PLAIN {response}")).await;
    assert!(reply.starts_with("454 4.7.0"), "{reply}");
    postern.stop().await;
}

/// Revoking the app password closes its SMTP session too.
#[tokio::test(flavor = "multi_thread")]
async fn revocation_closes_an_smtp_session() {
    let (_dovecot, postern, password, id) = setup(Options::default()).await;
    let mut client = authenticated(&postern, &password).await;
    let output = postern.cli(&["app-password", "revoke", &id.to_string()]);
    assert!(output.status.success());
    assert_eq!(
        client.read_reply().await,
        "421 4.7.0 Credential revoked, closing connection"
    );
    assert!(client.closed_within(Duration::from_secs(10)).await);
    postern.stop().await;
}

/// An app password that expires while its SMTP session is open ends that session with a
/// 421, as an IMAP session is closed.
#[tokio::test(flavor = "multi_thread")]
async fn expiry_closes_an_smtp_session() {
    let (_dovecot, postern, _, _) = setup(Options::default()).await;
    let (_, expiring) = postern
        .issue("alice@example.test", &[Scope::Smtp], Some(now() + 2))
        .await;
    let mut client = authenticated(&postern, &expiring).await;
    assert_eq!(
        client.read_reply().await,
        "421 4.7.0 App password expired, closing connection"
    );
    assert!(client.closed_within(Duration::from_secs(10)).await);
    let metrics = postern.metrics();
    assert_eq!(
        metric(&metrics, "postern_revoked_sessions_closed_total"),
        1.0,
        "{metrics}"
    );
    postern.stop().await;
}

/// When an SMTP session logs in upstream again (its upstream connection was dropped, here
/// by a refused From: header inside DATA), the verifier is asked again: a credential
/// revoked meanwhile gets no new upstream session, even before the change feed has closed
/// the client's session.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_upstream_login_asks_the_verifier_again() {
    let (_dovecot, postern, password, id) = setup(Options {
        change_poll_interval: "1h",
        ..Options::default()
    })
    .await;
    let mut client = authenticated(&postern, &password).await;
    assert!(client
        .command("MAIL FROM:<alice@example.test>")
        .await
        .starts_with("250"));
    assert!(client
        .command("RCPT TO:<bob@example.test>")
        .await
        .starts_with("250"));
    assert!(client.command("DATA").await.starts_with("354"));
    client
        .send(message("spoof", "ceo@example.test").as_bytes())
        .await;
    assert!(client.command(".").await.starts_with("553 5.7.1"));

    let output = postern.cli(&["app-password", "revoke", &id.to_string()]);
    assert!(output.status.success());
    assert_eq!(
        client.command("MAIL FROM:<alice@example.test>").await,
        "451 4.4.2 Upstream connection lost, try again"
    );
    let metrics = postern.metrics();
    assert_eq!(
        metric(
            &metrics,
            "postern_upstream_logins_total{connection=\"new\",protocol=\"smtp\"}"
        ),
        1.0,
        "only AUTH's own upstream login: {metrics}"
    );
    postern.stop().await;
}

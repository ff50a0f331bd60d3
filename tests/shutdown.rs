//! Shutting down gracefully: `/readyz` says `draining`, no new connections, every session
//! says goodbye at its next command boundary, and a message already being sent is
//! finished first.

mod support;

use std::time::Duration;

use postern::store::Scope;
use support::imap_client::ImapClient;
use support::postern::{Options, Postern};
use support::smtp_client::SmtpClient;
use support::Dovecot;

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_say_goodbye_at_a_command_boundary() {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "x");
    dovecot.add_user("bob", "y");
    let postern = Postern::start_with(&dovecot, Options::default()).await;
    postern.add_user("alice@example.test", "alice").await;
    let (_, password) = postern
        .issue("alice@example.test", &[Scope::Imap, Scope::Smtp], None)
        .await;

    // An IMAP session idling, one not logged in yet.
    let (mut idler, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let login = idler
        .command("a1", &format!("LOGIN alice@example.test \"{password}\""))
        .await;
    assert!(login.last().unwrap().starts_with("a1 OK"));
    idler.command("a2", "SELECT INBOX").await;
    idler.send(b"a3 IDLE\r\n").await;
    assert_eq!(idler.read_line().await, "+ idling");
    let (mut anonymous, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;

    // An SMTP session between transactions, and one in the middle of a message.
    let auth = format!(
        "AUTH PLAIN {}",
        base64(format!("\0alice@example.test\0{password}").as_bytes())
    );
    let (mut smtp_idle, _) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
    smtp_idle.command("EHLO a").await;
    assert!(smtp_idle.command(&auth).await.starts_with("235"));
    let (mut sending, _) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
    sending.command("EHLO b").await;
    assert!(sending.command(&auth).await.starts_with("235"));
    assert!(sending
        .command("MAIL FROM:<alice@example.test>")
        .await
        .starts_with("250"));
    assert!(sending
        .command("RCPT TO:<bob@example.test>")
        .await
        .starts_with("250"));
    assert!(sending.command("DATA").await.starts_with("354"));
    sending
        .send(b"From: alice@example.test\r\nSubject: in flight\r\n\r\nfirst half\r\n")
        .await;

    let imaps = postern.imaps;
    let http = postern.http;
    let ready = support::postern::http_get(http, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let gateway = postern.gateway.clone();
    let stopping = tokio::spawn(postern.stop());
    gateway.drain.cancelled().await;

    // A load balancer asking now is told to send new clients elsewhere.
    let ready = support::postern::http_get(http, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("draining"), "{ready}");

    assert_eq!(
        idler.read_line().await,
        "* BYE Server shutting down, reconnect shortly"
    );
    assert!(idler.closed_within(Duration::from_secs(10)).await);
    assert_eq!(
        anonymous.read_line().await,
        "* BYE Server shutting down, reconnect shortly"
    );
    assert_eq!(
        smtp_idle.read_reply().await,
        "421 4.3.2 Service shutting down"
    );

    // The message in flight is finished and accepted, then the session ends.
    sending.send(b"second half\r\n.\r\n").await;
    assert!(
        sending.read_reply().await.starts_with("250"),
        "the message completes"
    );
    assert_eq!(
        sending.read_reply().await,
        "421 4.3.2 Service shutting down"
    );

    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(imaps).await.is_err(),
        "no longer listening"
    );
    let delivered = std::fs::read_dir(dovecot.maildir("bob").join("new"))
        .unwrap()
        .count();
    assert_eq!(delivered, 1);
}

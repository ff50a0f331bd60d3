//! POP3 end to end against Dovecot's real pop3 service: an Outlook 2016-like session
//! byte by byte (CAPA, USER, PASS, STAT, UIDL, LIST, RETR, DELE, QUIT) and a
//! Thunderbird-like one (CAPA, AUTH PLAIN, UIDL, TOP) through postern over implicit TLS;
//! Python's poplib and curl as real clients; each refusal; STLS on the plain listener.

mod support;

use std::process::Command;

use postern::store::Scope;
use support::imap_client::ImapClient;
use support::postern::{metric, Options, Postern};
use support::Dovecot;

const LOGIN: &str = "alice@example.test";
const REFUSED: &str = "-ERR [AUTH] Authentication failed";

fn message(n: usize) -> String {
    format!(
        "From: Bob <bob@example.test>\r\nTo: Alice <alice@example.test>\r\nSubject: note {n}\r\n\
         Message-ID: <note-{n}@example.test>\r\n\r\nHello Alice, this is note {n}.\r\n\
         .a line that starts with a dot\r\n"
    )
}

/// Dovecot with alice and three messages; postern; an app password with the pop3 scope.
async fn setup() -> (Dovecot, Postern, String) {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    for n in 1..=3 {
        dovecot.deliver("alice", message(n).as_bytes());
    }
    let postern = Postern::start_with(&dovecot, Options::default()).await;
    postern.add_user(LOGIN, "alice").await;
    let (_, password) = postern.issue(LOGIN, &[Scope::Pop3], None).await;
    (dovecot, postern, password)
}

/// A POP3 command and its one-line reply.
async fn command(client: &mut ImapClient, line: &str) -> String {
    client.send(format!("{line}\r\n").as_bytes()).await;
    client.read_line().await
}

/// The lines of a multi-line answer, after its `+OK` line, up to the final `.`.
async fn multiline(client: &mut ImapClient) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = client.read_line().await;
        if line == "." {
            return lines;
        }
        lines.push(line);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn outlook_2016_fetches_and_deletes() {
    let (dovecot, postern, password) = setup().await;
    let from = "127.0.0.9".parse().unwrap();
    let (mut client, greeting) =
        ImapClient::connect_tls_from(from, postern.pop3s, &postern.ca_path).await;
    assert!(greeting.starts_with("+OK"), "{greeting}");
    assert!(command(&mut client, "CAPA").await.starts_with("+OK"));
    let capabilities = multiline(&mut client).await;
    for wanted in [
        "USER",
        "SASL PLAIN",
        "UIDL",
        "TOP",
        "RESP-CODES",
        "AUTH-RESP-CODE",
    ] {
        assert!(capabilities.iter().any(|c| c == wanted), "{capabilities:?}");
    }
    assert_eq!(command(&mut client, &format!("USER {LOGIN}")).await, "+OK");
    let logged_in = command(&mut client, &format!("PASS {password}")).await;
    assert!(logged_in.starts_with("+OK"), "{logged_in}");
    let stat = command(&mut client, "STAT").await;
    assert!(stat.starts_with("+OK 3 "), "{stat}");
    assert!(command(&mut client, "UIDL").await.starts_with("+OK"));
    assert_eq!(multiline(&mut client).await.len(), 3);
    assert!(command(&mut client, "LIST").await.starts_with("+OK"));
    assert_eq!(multiline(&mut client).await.len(), 3);
    assert!(command(&mut client, "RETR 1").await.starts_with("+OK"));
    let body = multiline(&mut client).await.join("\r\n");
    assert!(body.contains("Subject: note 1"), "{body}");
    assert!(
        body.contains("..a line that starts with a dot"),
        "dot-stuffed: {body}"
    );
    assert!(command(&mut client, "DELE 1").await.starts_with("+OK"));
    assert!(command(&mut client, "QUIT").await.starts_with("+OK"));
    // Dovecot saw the client's own address (XCLIENT), not postern's.
    let log = dovecot.log();
    assert!(
        log.lines()
            .any(|l| l.contains("pop3-login: Info: Login: user=<alice>")
                && l.contains("rip=127.0.0.9")),
        "{log}"
    );

    // The deletion was committed upstream: two messages left.
    let (mut again, _) = ImapClient::connect_tls(postern.pop3s, &postern.ca_path).await;
    let auth = base64(&format!("\0{LOGIN}\0{password}"));
    let reply = command(&mut again, &format!("AUTH PLAIN {auth}")).await;
    assert!(reply.starts_with("+OK"), "{reply}");
    assert!(command(&mut again, "STAT").await.starts_with("+OK 2 "));
    let metrics = postern.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"postern_auth_attempts_total{mechanism="user",protocol="pop3",result="ok"}"#
        ),
        1.0
    );
    postern.stop().await;
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread")]
async fn thunderbird_authenticates_with_plain_and_reads_headers() {
    let (_dovecot, postern, password) = setup().await;
    let (mut client, _) = ImapClient::connect_tls(postern.pop3s, &postern.ca_path).await;
    assert!(command(&mut client, "AUTH PLAIN").await.starts_with('+'));
    let reply = command(&mut client, &base64(&format!("\0{LOGIN}\0{password}"))).await;
    assert!(reply.starts_with("+OK"), "{reply}");
    assert!(command(&mut client, "UIDL").await.starts_with("+OK"));
    assert_eq!(multiline(&mut client).await.len(), 3);
    assert!(command(&mut client, "TOP 2 0").await.starts_with("+OK"));
    let headers = multiline(&mut client).await.join("\n");
    assert!(
        headers.contains("Subject: note 2") && !headers.contains("Hello"),
        "{headers}"
    );
    assert!(command(&mut client, "QUIT").await.starts_with("+OK"));
    postern.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_and_stls() {
    let (_dovecot, postern, password) = setup().await;
    let (_, imap_only) = postern.issue(LOGIN, &[Scope::Imap], None).await;
    for (user, secret) in [
        (LOGIN, "aaaa bbbb cccc dddd"),
        ("nobody@example.test", "aaaa bbbb cccc dddd"),
        (LOGIN, imap_only.as_str()),
    ] {
        let (mut client, _) = ImapClient::connect_tls(postern.pop3s, &postern.ca_path).await;
        command(&mut client, &format!("USER {user}")).await;
        assert_eq!(
            command(&mut client, &format!("PASS {secret}")).await,
            REFUSED
        );
    }

    // The plain listener: nothing before STLS, then the same login works.
    let (mut client, greeting) = ImapClient::connect_plain(postern.pop3).await;
    assert!(greeting.starts_with("+OK"));
    let refused = command(&mut client, &format!("USER {LOGIN}")).await;
    assert!(refused.starts_with("-ERR [AUTH]"), "{refused}");
    assert!(command(&mut client, "CAPA").await.starts_with("+OK"));
    let capabilities = multiline(&mut client).await;
    assert!(capabilities.iter().any(|c| c == "STLS"), "{capabilities:?}");
    assert!(
        !capabilities.iter().any(|c| c == "USER"),
        "{capabilities:?}"
    );
    let (curl_ok, _) = curl_retr(&postern, &password, "pop3", 1);
    assert!(curl_ok, "curl with --ssl-reqd over STLS");
    postern.stop().await;
}

/// curl fetching message `n`: (success, the message).
fn curl_retr(postern: &Postern, password: &str, scheme: &str, n: usize) -> (bool, String) {
    let port = match scheme {
        "pop3s" => postern.pop3s.port(),
        _ => postern.pop3.port(),
    };
    let output = Command::new("curl")
        .args(["-sS", "--ssl-reqd", "--cacert"])
        .arg(&postern.ca_path)
        .args(["-u", &format!("{LOGIN}:{password}")])
        .arg(format!("{scheme}://localhost:{port}/{n}"))
        .output()
        .expect("run curl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn real_clients_poplib_and_curl() {
    let (_dovecot, postern, password) = setup().await;
    let (ok, fetched) = curl_retr(&postern, &password, "pop3s", 2);
    assert!(ok && fetched.contains("Subject: note 2"), "{fetched}");

    let script = "import poplib, ssl, sys\n\
        context = ssl.create_default_context(cafile=sys.argv[2])\n\
        box = poplib.POP3_SSL('localhost', int(sys.argv[1]), context=context)\n\
        box.user(sys.argv[3]); box.pass_(sys.argv[4])\n\
        count, _ = box.stat()\n\
        lines = box.retr(3)[1]\n\
        print(count, b'\\r\\n'.join(lines).decode())\n\
        box.quit()\n";
    let output = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(postern.pop3s.port().to_string())
        .arg(&postern.ca_path)
        .args([LOGIN, &password])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        text.starts_with("3 ") && text.contains("Subject: note 3"),
        "{text}"
    );
    postern.stop().await;
}

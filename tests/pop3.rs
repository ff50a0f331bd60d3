//! POP3 end to end against Dovecot's real pop3 service: an Outlook 2016-like session
//! byte by byte (CAPA, USER, PASS, STAT, UIDL, LIST, RETR, DELE, QUIT) and a
//! Thunderbird-like one (CAPA, AUTH PLAIN, UIDL, TOP) through postern over implicit TLS;
//! Python's poplib, curl and fetchmail as real clients, fetchmail's pull (a 20 MiB message
//! among them) byte-identical to its pull straight from Dovecot; each refusal; STLS on the
//! plain listener; `[IN-USE]` from Dovecot; revocation, penalties, shutdown and hostile
//! input on POP3 sessions.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use postern::store::Scope;
use support::dovecot::DovecotOptions;
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
    let (dovecot, postern, password, _) =
        setup_with(DovecotOptions::default(), Options::default()).await;
    (dovecot, postern, password)
}

/// [`setup`] with options for both, and the app password's id.
async fn setup_with(
    dovecot_options: DovecotOptions,
    options: Options,
) -> (Dovecot, Postern, String, i64) {
    let dovecot = Dovecot::start_with(dovecot_options);
    dovecot.add_user("alice", "alice-direct-password");
    for n in 1..=3 {
        dovecot.deliver("alice", message(n).as_bytes());
    }
    let postern = Postern::start_with(&dovecot, options).await;
    postern.add_user(LOGIN, "alice").await;
    let (id, password) = postern.issue(LOGIN, &[Scope::Pop3], None).await;
    (dovecot, postern, password, id)
}

/// A client logged in through postern's pop3s listener with USER and PASS.
async fn logged_in(postern: &Postern, password: &str) -> ImapClient {
    let (mut client, _) = ImapClient::connect_tls(postern.pop3s, &postern.ca_path).await;
    assert_eq!(command(&mut client, &format!("USER {LOGIN}")).await, "+OK");
    let reply = command(&mut client, &format!("PASS {password}")).await;
    assert!(reply.starts_with("+OK"), "{reply}");
    client
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
    let (mut client, _) = ImapClient::connect_tls(postern.pop3s, &postern.ca_path).await;
    let reply = command(&mut client, "AUTH PLAIN !!!").await;
    assert!(reply.starts_with("-ERR"), "{reply}");
    assert!(command(&mut client, "CAPA").await.starts_with("+OK"));
    assert!(multiline(&mut client).await.iter().any(|c| c == "USER"));
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

/// Messages that test a relay's care: 8-bit text, a 998-octet line, lines that are a lone
/// dot or start with dots, an empty body, no final line break, and 20 MiB of base64.
fn awkward_messages() -> Vec<Vec<u8>> {
    let header = |subject: &str| {
        format!("From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n")
    };
    let mut messages = vec![
        format!(
            "{}Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
             Grüße aus Köln, 東京からこんにちは\r\n",
            header("8bit")
        )
        .into_bytes(),
        format!("{}\r\n{}\r\n", header("long line"), "x".repeat(998)).into_bytes(),
        format!(
            "{}\r\n.\r\n..\r\n. \r\n.leading dot\r\nend\r\n",
            header("dots")
        )
        .into_bytes(),
        format!("{}\r\n", header("empty body")).into_bytes(),
        format!("{}\r\nno final line break", header("unterminated")).into_bytes(),
    ];
    let mut big = format!(
        "{}Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n",
        header("twenty MiB")
    )
    .into_bytes();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    while big.len() < 20 << 20 {
        for _ in 0..76 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            big.push(alphabet[(state >> 58) as usize]);
        }
        big.extend_from_slice(b"\r\n");
    }
    messages.push(big);
    messages
}

/// Runs fetchmail once against `port` (implicit TLS, the certificate checked against
/// `ca`), keeping the messages upstream; returns each message as its MDA received it, in
/// order.
fn fetchmail_pull(dir: &Path, port: u16, user: &str, password: &str, ca: &Path) -> Vec<Vec<u8>> {
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let mda = dir.join("mda.sh");
    std::fs::write(
        &mda,
        format!(
            "n=$(ls '{0}' | wc -l)\ncat > '{0}'/$(printf %04d \"$n\")\n",
            inbox.display()
        ),
    )
    .unwrap();
    let rc = dir.join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "poll 127.0.0.1 service {port} protocol POP3 auth password timeout 120\n  \
             user \"{user}\" there with password \"{password}\"\n  \
             ssl sslcertck sslcertfile \"{}\" sslcommonname \"localhost\"\n  \
             keep fetchall\n  mda \"/bin/sh {}\"\n",
            ca.display(),
            mda.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = Command::new("fetchmail")
        .env("HOME", dir)
        .args(["--nodetach", "--nosyslog", "--invisible", "--fetchmailrc"])
        .arg(&rc)
        .arg("--pidfile")
        .arg(dir.join("fetchmail.pid"))
        .output()
        .expect("run fetchmail (scripts/test installs it)");
    assert!(output.status.success(), "fetchmail: {output:?}");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&inbox)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    names.sort();
    names
        .iter()
        .map(|name| std::fs::read(name).unwrap())
        .collect()
}

/// The message as fetchmail hands it to an MDA: LF line ends, and a final line break.
fn as_delivered(message: &[u8]) -> Vec<u8> {
    let mut text = String::from_utf8(message.to_vec())
        .unwrap()
        .replace("\r\n", "\n");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn fetchmail_pulls_every_message_byte_identical_to_dovecot() {
    let (dovecot, postern, password) = setup().await;
    let mut sent: Vec<Vec<u8>> = (1..=3).map(|n| message(n).into_bytes()).collect();
    for message in awkward_messages() {
        dovecot.deliver("alice", &message);
        sent.push(message);
    }
    let work = tempfile::tempdir().unwrap();
    let (direct_dir, gateway_dir) = (work.path().join("direct"), work.path().join("gateway"));
    let direct = fetchmail_pull(
        &direct_dir,
        dovecot.pop3s_port,
        "alice",
        "alice-direct-password",
        &dovecot.ca_path,
    );
    let through_postern = fetchmail_pull(
        &gateway_dir,
        postern.pop3s.port(),
        LOGIN,
        &password,
        &postern.ca_path,
    );
    assert_eq!(direct.len(), sent.len(), "fetchmail fetched every message");
    assert_eq!(through_postern.len(), direct.len());
    for (n, (gateway, direct)) in through_postern.iter().zip(&direct).enumerate() {
        assert!(
            gateway == direct,
            "message {} differs from Dovecot's",
            n + 1
        );
    }
    let mut sorted_sent: Vec<Vec<u8>> = sent.iter().map(|m| as_delivered(m)).collect();
    let mut sorted_fetched = through_postern.clone();
    sorted_sent.sort();
    sorted_fetched.sort();
    assert!(
        sorted_sent == sorted_fetched,
        "the messages fetched are the messages delivered"
    );
    let to_client = metric(
        &postern.metrics(),
        r#"postern_relay_bytes_total{direction="to_client",protocol="pop3"}"#,
    );
    assert!(to_client > (20 << 20) as f64, "{to_client}");
    postern.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mailbox_in_use_upstream_is_passed_on() {
    let (_dovecot, postern, password, _) = setup_with(
        DovecotOptions {
            pop3_lock_session: true,
            ..DovecotOptions::default()
        },
        Options::default(),
    )
    .await;
    let mut first = logged_in(&postern, &password).await;
    let (mut second, _) = ImapClient::connect_tls(postern.pop3s, &postern.ca_path).await;
    command(&mut second, &format!("USER {LOGIN}")).await;
    assert_eq!(
        command(&mut second, &format!("PASS {password}")).await,
        "-ERR [IN-USE] Mailbox in use by another session, try again later"
    );
    assert!(command(&mut first, "QUIT").await.starts_with("+OK"));
    assert!(first.closed_within(Duration::from_secs(10)).await);
    // The same connection logs in once the first session has ended.
    command(&mut second, &format!("USER {LOGIN}")).await;
    let reply = command(&mut second, &format!("PASS {password}")).await;
    assert!(reply.starts_with("+OK"), "{reply}");
    let metrics = postern.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"postern_upstream_errors_total{protocol="pop3",reason="in_use"}"#
        ),
        1.0
    );
    postern.stop().await;
}

/// In master-login mode (`USER alice*master`) the session works as with AUTH PLAIN, and
/// revoking the app password ends it.
#[tokio::test(flavor = "multi_thread")]
async fn revocation_closes_a_master_login_session() {
    let (dovecot, postern, password, id) = setup_with(
        DovecotOptions::default(),
        Options {
            upstream_auth: "master-login",
            ..Options::default()
        },
    )
    .await;
    let mut client = logged_in(&postern, &password).await;
    assert!(command(&mut client, "STAT").await.starts_with("+OK 3 "));
    let log = dovecot.log();
    assert!(
        log.contains("auth: Info: Master user logging in as alice")
            && log.contains("pop3-login: Info: Login: user=<alice>"),
        "{log}"
    );
    let output = postern.cli(&["app-password", "revoke", &id.to_string()]);
    assert!(output.status.success(), "{output:?}");
    // A relayed session is closed as it stands (a reply may be half sent).
    assert!(client.closed_within(Duration::from_secs(10)).await);
    assert_eq!(
        metric(&postern.metrics(), "postern_revoked_sessions_closed_total"),
        1.0
    );
    let (mut again, _) = ImapClient::connect_tls(postern.pop3s, &postern.ca_path).await;
    command(&mut again, &format!("USER {LOGIN}")).await;
    assert_eq!(
        command(&mut again, &format!("PASS {password}")).await,
        REFUSED
    );
    postern.stop().await;
}

/// Untrusted addresses: a guess is answered after its penalty, and meanwhile another
/// guess for the login is held back without being hashed; a cached login still passes.
#[tokio::test(flavor = "multi_thread")]
async fn penalties_hold_back_pop3_guesses() {
    let (_dovecot, postern, password, _) = setup_with(
        DovecotOptions::default(),
        Options {
            trusted_networks: "[]",
            ..Options::default()
        },
    )
    .await;
    let mut phone = logged_in(&postern, &password).await;
    assert!(command(&mut phone, "QUIT").await.starts_with("+OK"));
    let attempts = |result: &str| {
        metric(
            &postern.metrics(),
            &format!(
                r#"postern_auth_attempts_total{{mechanism="user",protocol="pop3",result="{result}"}}"#
            ),
        )
    };
    let hashes = || metric(&postern.metrics(), "postern_password_hash_seconds_count");
    let baseline = hashes();
    let (mut guesser, _) = ImapClient::connect_tls(postern.pop3s, &postern.ca_path).await;
    command(&mut guesser, &format!("USER {LOGIN}")).await;
    guesser.send(b"PASS aaaa bbbb cccc dddd\r\n").await;
    // Once the guess is hashed its answer waits out the penalty; meanwhile another guess
    // is held back.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while hashes() < baseline + 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the guess was never hashed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut second, _) = ImapClient::connect_tls(postern.pop3s, &postern.ca_path).await;
    command(&mut second, &format!("USER {LOGIN}")).await;
    let held_back = command(&mut second, "PASS eeee ffff gggg hhhh").await;
    assert!(held_back.starts_with("-ERR [SYS/TEMP]"), "{held_back}");
    assert_eq!(
        hashes(),
        baseline + 1.0,
        "a held-back guess is never hashed"
    );
    assert_eq!(attempts("rate_limited"), 1.0);
    let mut phone = logged_in(&postern, &password).await;
    assert!(command(&mut phone, "STAT").await.starts_with("+OK 3 "));
    assert_eq!(guesser.read_line().await, REFUSED);
    postern.stop().await;
}

/// On shutdown, a logged-in POP3 session and one not logged in yet are told so.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_says_goodbye_to_pop3_sessions() {
    let (_dovecot, postern, password) = setup().await;
    let mut reading = logged_in(&postern, &password).await;
    assert!(command(&mut reading, "STAT").await.starts_with("+OK 3 "));
    let (mut anonymous, _) = ImapClient::connect_tls(postern.pop3s, &postern.ca_path).await;
    postern.stop().await;
    for client in [&mut reading, &mut anonymous] {
        assert_eq!(
            client.read_line().await,
            "-ERR [SYS/TEMP] Server shutting down, reconnect shortly"
        );
        assert!(client.closed_within(Duration::from_secs(10)).await);
    }
}

/// Hostile input gets a clean `-ERR` on a connection that keeps working, and never logs
/// anyone in.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_gets_clean_errors() {
    let (_dovecot, postern, password) = setup().await;
    let (mut client, _) = ImapClient::connect_tls(postern.pop3s, &postern.ca_path).await;
    let mut long = vec![b'A'; 100_000];
    long.extend_from_slice(b"\r\n");
    client.send(&long).await;
    assert_eq!(client.read_line().await, "-ERR Line too long");
    client.send(b"USER alice@example.test\0admin\r\n").await;
    client.read_line().await;
    client.send(b"PASS \xff\xfe\0\r\n").await;
    assert_eq!(client.read_line().await, REFUSED);
    let plain = base64(&format!("admin\0{LOGIN}\0{password}"));
    let reply = command(&mut client, &format!("AUTH PLAIN {plain}")).await;
    assert_eq!(reply, REFUSED, "an authorization identity is refused");
    assert!(command(&mut client, "APOP alice 0123")
        .await
        .starts_with("-ERR"));
    assert!(command(&mut client, "RETR 1").await.starts_with("-ERR"));
    assert_eq!(command(&mut client, &format!("USER {LOGIN}")).await, "+OK");
    let reply = command(&mut client, &format!("PASS {password}")).await;
    assert!(
        reply.starts_with("+OK"),
        "the connection still works: {reply}"
    );
    let metrics = postern.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"postern_auth_attempts_total{mechanism="user",protocol="pop3",result="ok"}"#
        ),
        1.0
    );
    let (mut client, _) = ImapClient::connect_tls(postern.pop3s, &postern.ca_path).await;
    let reply = command(&mut client, "AUTH PLAIN !!!").await;
    assert!(reply.starts_with("-ERR"), "{reply}");
    assert!(command(&mut client, "CAPA").await.starts_with("+OK"));
    assert!(multiline(&mut client).await.iter().any(|c| c == "USER"));
    postern.stop().await;
}

/// Logins start from upstream connections greeted ahead (the pool refills between them),
/// and XCLIENT still gives Dovecot each client's own address.
#[tokio::test(flavor = "multi_thread")]
async fn logins_use_warm_upstream_connections() {
    let (dovecot, postern, password) = setup().await;
    for round in 1..=3u8 {
        // Readiness, not a sleep: the pool (4 by default) fills in the background.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while postern.gateway.pop3_warm.is_empty() {
            assert!(std::time::Instant::now() < deadline, "no warm connection");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let from = format!("127.0.1.{round}");
        let (mut client, _) =
            ImapClient::connect_tls_from(from.parse().unwrap(), postern.pop3s, &postern.ca_path)
                .await;
        command(&mut client, &format!("USER {LOGIN}")).await;
        let reply = command(&mut client, &format!("PASS {password}")).await;
        assert!(reply.starts_with("+OK"), "{reply}");
        assert!(command(&mut client, "STAT").await.starts_with("+OK 3 "));
        assert!(command(&mut client, "QUIT").await.starts_with("+OK"));
        let metrics = postern.metrics();
        let warm = r#"postern_upstream_logins_total{connection="warm",protocol="pop3"}"#;
        let new = r#"postern_upstream_logins_total{connection="new",protocol="pop3"}"#;
        assert_eq!(metric(&metrics, warm), f64::from(round), "{metrics}");
        assert_eq!(metric(&metrics, new), 0.0, "{metrics}");
        let log = dovecot.log();
        assert!(
            log.lines()
                .any(|l| l.contains("pop3-login: Info: Login: user=<alice>")
                    && l.contains(&format!("rip={from},"))),
            "{log}"
        );
    }
    postern.stop().await;
}

//! Proves the test harness: the real Dovecot and PostgreSQL started by `support` behave
//! as the end-to-end tests expect.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use support::{Dovecot, Postgres};

/// A minimal blocking IMAP client: enough to check logins, SELECT and FETCH.
struct Imap<S: Read + Write> {
    io: BufReader<S>,
    tag: u32,
    greeting: String,
}

impl<S: Read + Write> Imap<S> {
    fn new(stream: S) -> Self {
        let mut imap = Imap {
            io: BufReader::new(stream),
            tag: 0,
            greeting: String::new(),
        };
        imap.greeting = imap.read_response_line();
        assert!(
            imap.greeting.starts_with("* OK"),
            "unexpected greeting {:?}",
            imap.greeting
        );
        imap
    }

    /// One response line, with any literals ({n}\r\n + n bytes) folded in.
    fn read_response_line(&mut self) -> String {
        let mut out = Vec::new();
        loop {
            let start = out.len();
            let n = self
                .io
                .read_until(b'\n', &mut out)
                .expect("read from IMAP server");
            assert!(
                n > 0,
                "IMAP server closed the connection; so far: {:?}",
                String::from_utf8_lossy(&out)
            );
            let line = &out[start..];
            let literal = line
                .strip_suffix(b"}\r\n")
                .and_then(|l| l.iter().rposition(|&b| b == b'{').map(|i| &l[i + 1..]))
                .and_then(|digits| std::str::from_utf8(digits).ok()?.parse::<usize>().ok());
            match literal {
                Some(len) => {
                    let mut buf = vec![0; len];
                    self.io.read_exact(&mut buf).expect("read literal");
                    out.extend_from_slice(&buf);
                }
                None => return String::from_utf8_lossy(&out).into_owned(),
            }
        }
    }

    fn send(&mut self, raw: &str) {
        let s = self.io.get_mut();
        s.write_all(raw.as_bytes()).expect("write to IMAP server");
        s.flush().expect("flush");
    }

    /// Sends a command; returns (tagged status line, everything before it).
    fn command(&mut self, command: &str) -> (String, String) {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        self.send(&format!("{tag} {command}\r\n"));
        self.read_until_tagged(&tag)
    }

    fn read_until_tagged(&mut self, tag: &str) -> (String, String) {
        let mut untagged = String::new();
        loop {
            let line = self.read_response_line();
            if line.starts_with(&format!("{tag} ")) {
                return (line, untagged);
            }
            untagged.push_str(&line);
        }
    }

    fn ok(&mut self, command: &str) -> String {
        let (status, untagged) = self.command(command);
        assert!(
            status.split_whitespace().nth(1) == Some("OK"),
            "{command:?} failed: {status:?} after {untagged:?}"
        );
        untagged
    }

    /// AUTHENTICATE PLAIN with the initial response sent after the continuation.
    fn authenticate_plain(&mut self, authzid: &str, authcid: &str, password: &str) -> String {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        self.send(&format!("{tag} AUTHENTICATE PLAIN\r\n"));
        let cont = self.read_response_line();
        assert!(cont.starts_with('+'), "expected continuation, got {cont:?}");
        let ir = base64::engine::general_purpose::STANDARD
            .encode(format!("{authzid}\0{authcid}\0{password}"));
        self.send(&format!("{ir}\r\n"));
        self.read_until_tagged(&tag).0
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn imap(port: u16) -> Imap<TcpStream> {
    Imap::new(connect(port))
}

fn is_ok(status: &str) -> bool {
    status.split_whitespace().nth(1) == Some("OK")
}

#[test]
fn dovecot_direct_and_master_user_logins() {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "secret");

    let mut c = imap(dovecot.imap_port);
    assert!(c.greeting.contains("STARTTLS"), "greeting: {}", c.greeting);
    let (status, _) = c.command("LOGIN alice secret");
    assert!(is_ok(&status), "direct login: {status}\n{}", dovecot.log());
    c.ok("LOGOUT");

    let mut c = imap(dovecot.imap_port);
    let (status, _) = c.command(&format!(
        "LOGIN alice*{} {}",
        dovecot.master_user, dovecot.master_password
    ));
    assert!(is_ok(&status), "master LOGIN: {status}\n{}", dovecot.log());
    // Logged in as alice, not as the master user.
    let namespace = c.ok("NAMESPACE");
    assert!(namespace.contains("NAMESPACE"), "{namespace}");

    let mut c = imap(dovecot.imap_port);
    let status = c.authenticate_plain("alice", &dovecot.master_user, &dovecot.master_password);
    assert!(
        is_ok(&status),
        "master AUTHENTICATE PLAIN: {status}\n{}",
        dovecot.log()
    );

    let mut c = imap(dovecot.imap_port);
    let (status, _) = c.command("LOGIN alice wrong");
    assert!(status.contains("NO"), "wrong password must fail: {status}");

    let mut c = imap(dovecot.imap_port);
    let (status, _) = c.command(&format!("LOGIN alice*{} wrong", dovecot.master_user));
    assert!(
        status.contains("NO"),
        "wrong master password must fail: {status}"
    );

    // The master user only works for users that exist.
    let mut c = imap(dovecot.imap_port);
    let status = c.authenticate_plain(
        "nobody-here",
        &dovecot.master_user,
        &dovecot.master_password,
    );
    assert!(
        status.contains("NO"),
        "master login as unknown user must fail: {status}"
    );

    let log = dovecot.log();
    assert!(log.contains("Master user logging in as alice"), "{log}");
    assert!(log.contains("user=<alice>"), "{log}");
}

#[test]
fn dovecot_users_change_without_restart() {
    let dovecot = Dovecot::start();
    dovecot.add_user("bob", "first-pw");
    let (status, _) = imap(dovecot.imap_port).command("LOGIN bob first-pw");
    assert!(is_ok(&status), "{status}\n{}", dovecot.log());

    // Same length, same second: must still be picked up.
    dovecot.add_user("bob", "other-pw");
    let (status, _) = imap(dovecot.imap_port).command("LOGIN bob first-pw");
    assert!(status.contains("NO"), "old password must fail: {status}");
    let (status, _) = imap(dovecot.imap_port).command("LOGIN bob other-pw");
    assert!(is_ok(&status), "{status}\n{}", dovecot.log());

    dovecot.add_user("carol", "pw3");
    let status = imap(dovecot.imap_port).authenticate_plain(
        "carol",
        &dovecot.master_user,
        &dovecot.master_password,
    );
    assert!(is_ok(&status), "{status}\n{}", dovecot.log());
}

#[test]
fn dovecot_deliver_is_visible_and_fetchable() {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "secret");
    let message = b"From: a@example.org\r\nTo: alice@example.org\r\nSubject: hello peers\r\n\r\nbody line\r\n";
    dovecot.deliver("alice", message);
    assert!(
        dovecot
            .maildir("alice")
            .join("new")
            .read_dir()
            .unwrap()
            .count()
            == 1
    );

    let mut c = imap(dovecot.imap_port);
    c.ok("LOGIN alice secret");
    let select = c.ok("SELECT INBOX");
    assert!(select.contains("* 1 EXISTS"), "{select}\n{}", dovecot.log());
    let fetch = c.ok("FETCH 1 BODY.PEEK[]");
    assert!(fetch.contains("Subject: hello peers"), "{fetch}");
    assert!(fetch.contains(&format!("{{{}}}", message.len())), "{fetch}");

    // A second delivery shows up in the selected mailbox on NOOP.
    dovecot.deliver("alice", b"Subject: second\r\n\r\nx\r\n");
    let noop = c.ok("NOOP");
    assert!(noop.contains("* 2 EXISTS"), "{noop}");
    c.ok("LOGOUT");
}

#[test]
fn dovecot_imaps_with_test_ca_and_id_logging() {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "secret");

    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&dovecot.ca_path).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let config = Arc::new(config);

    for name in ["localhost", "127.0.0.1"] {
        let conn = rustls::ClientConnection::new(
            config.clone(),
            ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let tls = rustls::StreamOwned::new(conn, connect(dovecot.imaps_port));
        let mut c = Imap::new(tls);
        c.ok("ID (\"name\" \"postern-test\" \"x-originating-ip\" \"192.0.2.7\")");
        c.ok("LOGIN alice secret");
        c.ok("LOGOUT");
    }
    let log = dovecot.log();
    // Trusted network: the forwarded client address is used as the remote IP.
    assert!(log.contains("rip=192.0.2.7"), "{log}");
    assert!(log.contains("postern-test"), "imap_id_log: {log}");
    assert!(log.contains("TLS"), "{log}");
}

/// Reads one (possibly multi-line) SMTP reply.
fn smtp_reply(s: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        s.read_line(&mut line).expect("read SMTP reply");
        assert!(
            !line.is_empty(),
            "SMTP server closed the connection after {all:?}"
        );
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return all;
        }
    }
}

fn smtp(
    s: &mut BufReader<TcpStream>,
    command: &str,
    expect: &str,
    log: impl Fn() -> String,
) -> String {
    s.get_mut()
        .write_all(format!("{command}\r\n").as_bytes())
        .unwrap();
    let reply = smtp_reply(s);
    assert!(
        reply.starts_with(expect),
        "{command:?} -> {reply:?}\n{}",
        log()
    );
    reply
}

#[test]
fn dovecot_submission_auth_and_relay_delivery() {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "secret");
    dovecot.add_user("bob@example.org", "pw");
    let log = || dovecot.all_logs();

    let mut s = BufReader::new(connect(dovecot.submission_port));
    assert!(smtp_reply(&mut s).starts_with("220"));
    let ehlo = smtp(&mut s, "EHLO test", "250", log);
    assert!(ehlo.contains("STARTTLS") && ehlo.contains("AUTH"), "{ehlo}");
    let bad = base64::engine::general_purpose::STANDARD.encode("\0alice\0wrong");
    smtp(&mut s, &format!("AUTH PLAIN {bad}"), "535", log);
    let ir = base64::engine::general_purpose::STANDARD.encode(format!(
        "alice\0{}\0{}",
        dovecot.master_user, dovecot.master_password
    ));
    smtp(&mut s, &format!("AUTH PLAIN {ir}"), "235", log);
    smtp(&mut s, "MAIL FROM:<alice@example.org>", "250", log);
    smtp(&mut s, "RCPT TO:<alice@example.org>", "250", log);
    smtp(&mut s, "RCPT TO:<bob@example.org>", "250", log);
    smtp(&mut s, "RCPT TO:<nobody@example.org>", "550", log);
    smtp(&mut s, "DATA", "354", log);
    smtp(
        &mut s,
        "From: alice@example.org\r\nSubject: via submission\r\n\r\n..dot-stuffed line\r\n.",
        "250",
        log,
    );
    smtp(&mut s, "QUIT", "221", log);

    for (user, password) in [("alice", "secret"), ("bob@example.org", "pw")] {
        let mut c = imap(dovecot.imap_port);
        c.ok(&format!("LOGIN {user} {password}"));
        let select = c.ok("SELECT INBOX");
        assert!(select.contains("* 1 EXISTS"), "{user}: {select}\n{}", log());
        let fetch = c.ok("FETCH 1 BODY.PEEK[]");
        assert!(fetch.contains("Subject: via submission"), "{fetch}");
        assert!(fetch.contains("\r\n.dot-stuffed line\r\n"), "{fetch}");
    }

    // Implicit-TLS submissions and LMTP listen too.
    assert!(support::port_open(dovecot.submissions_port));
    let mut lmtp = BufReader::new(connect(dovecot.lmtp_port));
    assert!(smtp_reply(&mut lmtp).starts_with("220"));
}

#[test]
fn dovecot_stop_closes_ports() {
    let mut dovecot = Dovecot::start();
    dovecot.add_user("alice", "secret");
    imap(dovecot.imap_port).ok("LOGIN alice secret");
    dovecot.stop();
    for port in [
        dovecot.imap_port,
        dovecot.imaps_port,
        dovecot.submission_port,
        dovecot.submissions_port,
        dovecot.lmtp_port,
    ] {
        let err = TcpStream::connect(("127.0.0.1", port)).expect_err("stopped dovecot must refuse");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "port {port}: {err}"
        );
    }
    dovecot.stop(); // idempotent
}

#[tokio::test]
async fn postgres_create_database_and_query() {
    use sqlx::Connection as _;
    let mut pg = Postgres::start();
    let url = pg.create_database("peers_test");
    assert_eq!(
        url,
        format!("postgres://postgres@127.0.0.1:{}/peers_test", pg.port)
    );

    let mut conn = sqlx::postgres::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}\n{}", pg.log()));
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(db, "peers_test");
    conn.close().await.unwrap();

    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = 'peers_test'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(n, 1);
    pool.close().await;

    let port = pg.port;
    pg.stop();
    assert!(
        !support::port_open(port),
        "stopped postgres must refuse connections"
    );
}

//! Faults of the upstream mail server, end to end: the real Dovecot behind a
//! fault-injecting proxy (`support::faulty`) that hangs up, resets, stalls or swallows an
//! answer at exact moments of postern's upstream login and of live sessions; upstream
//! certificates postern must not trust; an upstream host that accepts no connection.
//! Each test names the reply the client gets, checks the metrics that tell the operator
//! why, that nothing was accepted that should not have been, that no postern task
//! panicked, and that a fresh client is served afterwards.
//!
//! Covered elsewhere, not repeated here: an upstream refusing connections (nothing
//! listening, Dovecot stopped) in `tests/imap_refusals.rs` (`upstream_down_is_unavailable`,
//! `upstream_stopped_mid_life_is_unavailable`) and `tests/smtp.rs` (`refusals`, 454); the
//! upstream rejecting a message after DATA in `tests/smtp.rs`
//! (`an_upstream_rejection_at_data_reaches_the_client`).

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use postern::config::{Config, UpstreamConfig, UpstreamTls};
use postern::store::Scope;
use rustls::pki_types::ServerName;
use support::faulty::{FaultyProxy, FullListener, Then, When};
use support::imap_client::{connector, ImapClient};
use support::postern::Postern;
use support::smtp_client::SmtpClient;
use support::{Dovecot, TestCa};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The IMAP login's reply when the upstream cannot be used.
const UNAVAILABLE: &str = "NO [UNAVAILABLE] Service temporarily unavailable, try again later";
/// The SMTP AUTH's reply when the upstream cannot be used.
const AUTH_UNAVAILABLE: &str = "454 4.7.0 Temporary authentication failure";
const AUTH_OK: &str = "235 2.7.0 Authentication successful";
/// The reply to an SMTP command or message that found the upstream gone.
const UPSTREAM_LOST: &str = "451 4.4.2 Upstream connection lost, try again";

/// How long anything a test waits for may take before it fails: generous on purpose,
/// never a measure of speed.
const PATIENCE: Duration = Duration::from_secs(30);

/// Upstream deadlines for the tests of silence: long enough for a loaded machine's
/// Dovecot to answer a real login, short enough not to wait for the defaults (5 s, 15 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// Panics on tokio worker threads, where postern's sessions (and the fault proxy) run; a
/// test's own assertions fail on its main thread and are not counted.
static TASK_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_task_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("tokio-runtime-worker") {
                TASK_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

fn assert_no_task_panicked() {
    assert_eq!(
        TASK_PANICS.load(Ordering::SeqCst),
        0,
        "a postern task panicked (see stderr)"
    );
}

/// Dovecot with users alice and bob; postern (SQLite store, upstreams straight to Dovecot
/// over implicit TLS) with the login alice@example.test and an imap+smtp app password.
async fn setup() -> (Dovecot, Postern, String) {
    count_task_panics();
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    dovecot.add_user("bob", "bob-direct-password");
    let postern = Postern::start(&dovecot).await;
    postern.add_user("alice@example.test", "alice").await;
    let (_, password) = postern
        .issue("alice@example.test", &[Scope::Imap, Scope::Smtp], None)
        .await;
    (dovecot, postern, password)
}

fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// postern's configuration as a test changes it, applied as SIGHUP applies it: the next
/// upstream login uses it, and IMAP warm connections made before are retired.
struct Upstreams<'p> {
    postern: &'p Postern,
    config: Config,
}

impl<'p> Upstreams<'p> {
    fn of(postern: &'p Postern) -> Self {
        Upstreams {
            postern,
            config: postern.config.clone(),
        }
    }

    /// Changes `[upstream.<protocol>]`, then applies the whole configuration.
    async fn change(&mut self, protocol: &str, edit: impl FnOnce(&mut UpstreamConfig)) {
        let section = match protocol {
            "imap" => &mut self.config.upstream.imap,
            _ => &mut self.config.upstream.smtp,
        };
        edit(
            section
                .as_mut()
                .expect("the harness configures both upstreams"),
        );
        self.apply().await;
    }

    async fn apply(&self) {
        self.config
            .validate()
            .expect("the changed configuration is valid");
        self.postern
            .gateway
            .reload(&self.config)
            .await
            .expect("the changed upstream sections load");
    }

    /// Arms `proxy` and applies the configuration anew, so that the next login's upstream
    /// connection is made under this fault, not taken warm from before it.
    async fn arm(&self, proxy: &FaultyProxy, when: When, then: Then) {
        proxy.arm(when, then);
        self.apply().await;
    }

    /// Disarms `proxy`; warm connections made under the fault are retired.
    async fn disarm(&self, proxy: &FaultyProxy) {
        proxy.disarm();
        self.apply().await;
    }

    /// Sends postern's `protocol` upstream to `address` with `tls`; the certificate
    /// checks stay the harness's (Dovecot's CA, "localhost").
    async fn route(&mut self, protocol: &str, address: String, tls: UpstreamTls) {
        self.change(protocol, |section| {
            section.address = address;
            section.tls = tls;
        })
        .await;
    }

    /// Like [`Upstreams::route`], with the short deadlines [`CONNECT_TIMEOUT`] and
    /// [`REPLY_TIMEOUT`].
    async fn route_impatiently(&mut self, protocol: &str, address: String, tls: UpstreamTls) {
        self.change(protocol, |section| {
            section.address = address;
            section.tls = tls;
            section.connect_timeout = CONNECT_TIMEOUT;
            section.reply_timeout = REPLY_TIMEOUT;
        })
        .await;
    }
}

fn upstream_errors(postern: &Postern, protocol: &str, reason: &str) -> u64 {
    postern
        .gateway
        .metrics
        .upstream_errors
        .with_label_values(&[protocol, reason])
        .get()
}

fn attempts(postern: &Postern, protocol: &str, mechanism: &str, result: &str) -> u64 {
    postern
        .gateway
        .metrics
        .auth_attempts
        .with_label_values(&[protocol, mechanism, result])
        .get()
}

fn sessions_active(postern: &Postern, protocol: &str) -> i64 {
    postern
        .gateway
        .metrics
        .sessions_active
        .with_label_values(&[protocol])
        .get()
}

fn messages(postern: &Postern, result: &str) -> u64 {
    postern
        .gateway
        .metrics
        .smtp_messages
        .with_label_values(&[result])
        .get()
}

/// Waits until `check` holds; fails after [`PATIENCE`].
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still not so after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// --- IMAP -------------------------------------------------------------------------------

async fn imap_client(postern: &Postern) -> ImapClient {
    ImapClient::connect_tls(postern.imaps, &postern.ca_path)
        .await
        .0
}

/// `tag LOGIN` as alice; the tagged reply line.
async fn imap_login(client: &mut ImapClient, tag: &str, password: &str) -> String {
    let reply = client
        .command(tag, &format!("LOGIN alice@example.test \"{password}\""))
        .await;
    reply.last().cloned().unwrap_or_default()
}

/// A LOGIN on `client` that an upstream fault turns into `NO [UNAVAILABLE]`: counted as
/// `upstream_unavailable`, with upstream errors of `reason` (at least one: IMAP warm
/// connections made in the background may meet the fault too); the connection is still
/// not logged in afterwards.
async fn imap_login_unavailable(
    postern: &Postern,
    client: &mut ImapClient,
    tag: &str,
    password: &str,
    reason: &str,
    moment: &str,
) {
    let errors = upstream_errors(postern, "imap", reason);
    let unavailable = attempts(postern, "imap", "login", "upstream_unavailable");
    let reply = imap_login(client, tag, password).await;
    assert_eq!(reply, format!("{tag} {UNAVAILABLE}"), "{moment}");
    assert!(
        upstream_errors(postern, "imap", reason) > errors,
        "{moment}: no upstream error with reason {reason}"
    );
    assert_eq!(
        attempts(postern, "imap", "login", "upstream_unavailable"),
        unavailable + 1,
        "{moment}"
    );
    let select_tag = format!("{tag}s");
    let select = client.command(&select_tag, "SELECT INBOX").await;
    assert!(
        !select
            .last()
            .is_some_and(|l| l.starts_with(&format!("{select_tag} OK"))),
        "{moment}: not logged in, yet SELECT was answered {select:?}"
    );
}

/// A new client logs in, selects INBOX and logs out: postern serves as before. Returns
/// once the session is over.
async fn fresh_imap_session(postern: &Postern, password: &str) {
    let mut client = imap_client(postern).await;
    let reply = imap_login(&mut client, "n1", password).await;
    assert!(reply.starts_with("n1 OK [CAPABILITY"), "{reply}");
    let select = client.command("n2", "SELECT INBOX").await;
    assert!(select.last().unwrap().starts_with("n2 OK"), "{select:?}");
    let logout = client.command("n3", "LOGOUT").await;
    assert!(logout.last().unwrap().starts_with("n3 OK"), "{logout:?}");
    eventually("the fresh session is over", || {
        sessions_active(postern, "imap") == 0
    })
    .await;
}

/// The upstream hanging up in the middle of postern's login: just after its greeting, or
/// just after postern's ID and AUTHENTICATE went out (a FIN, then a RST). Each time the
/// client's LOGIN gets `NO [UNAVAILABLE]`, counted as `upstream_unavailable` with an `io`
/// upstream error; the connection stays unauthenticated, and since an unusable upstream
/// is no failed login, the same connection logs in once the upstream is whole again.
#[tokio::test(flavor = "multi_thread")]
async fn imap_upstream_hanging_up_during_the_login_is_unavailable() {
    let (dovecot, postern, password) = setup().await;
    let proxy = FaultyProxy::start(loopback(dovecot.imap_port)).await;
    let mut upstreams = Upstreams::of(&postern);
    upstreams
        .route("imap", proxy.host_port(), UpstreamTls::None)
        .await;

    let mut client = imap_client(&postern).await;
    let faults = [
        (
            "after the greeting",
            When::UpstreamSaid(b"\r\n"),
            Then::Close,
        ),
        (
            "after AUTHENTICATE (FIN)",
            When::PosternSaid(b"AUTHENTICATE PLAIN"),
            Then::Close,
        ),
        (
            "after AUTHENTICATE (RST)",
            When::PosternSaid(b"AUTHENTICATE PLAIN"),
            Then::Reset,
        ),
    ];
    for (i, (moment, when, then)) in faults.into_iter().enumerate() {
        upstreams.arm(&proxy, when, then).await;
        let fired = proxy.fired();
        let tag = format!("f{i}");
        imap_login_unavailable(&postern, &mut client, &tag, &password, "io", moment).await;
        assert!(proxy.fired() > fired, "{moment}: the fault never struck");
    }
    assert_eq!(attempts(&postern, "imap", "login", "ok"), 0);
    assert_eq!(sessions_active(&postern, "imap"), 0);

    upstreams.disarm(&proxy).await;
    let reply = imap_login(&mut client, "a1", &password).await;
    assert!(reply.starts_with("a1 OK [CAPABILITY"), "{reply}");
    let logout = client.command("a2", "LOGOUT").await;
    assert!(logout.last().unwrap().starts_with("a2 OK"), "{logout:?}");
    fresh_imap_session(&postern, &password).await;
    assert_eq!(attempts(&postern, "imap", "login", "ok"), 2);
    postern.stop().await;
    assert_no_task_panicked();
}

/// An upstream that says nothing, at each step of the login: no TCP handshake (a host
/// whose accept queue is full), no TLS handshake, no greeting, no answer to
/// AUTHENTICATE. Each LOGIN gets `NO [UNAVAILABLE]` once postern's deadline
/// (`connect_timeout`, `reply_timeout`) has passed, with an upstream error of reason
/// `timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn imap_upstream_silent_past_the_deadlines_is_unavailable() {
    let (dovecot, postern, password) = setup().await;
    let plain = FaultyProxy::start(loopback(dovecot.imap_port)).await;
    let tls = FaultyProxy::start(loopback(dovecot.imaps_port)).await;
    let full = FullListener::start().await;
    let mut upstreams = Upstreams::of(&postern);
    let mut client = imap_client(&postern).await;

    upstreams
        .route_impatiently("imap", full.address.to_string(), UpstreamTls::None)
        .await;
    let moment = "no TCP handshake (connect_timeout)";
    imap_login_unavailable(&postern, &mut client, "t1", &password, "timeout", moment).await;

    tls.arm(When::Accepted, Then::Stall);
    upstreams
        .route_impatiently("imap", tls.host_port(), UpstreamTls::Implicit)
        .await;
    let moment = "no TLS handshake";
    imap_login_unavailable(&postern, &mut client, "t2", &password, "timeout", moment).await;
    assert!(tls.fired() > 0, "{moment}: the fault never struck");

    plain.arm(When::Accepted, Then::Stall);
    upstreams
        .route_impatiently("imap", plain.host_port(), UpstreamTls::None)
        .await;
    let moment = "no greeting";
    imap_login_unavailable(&postern, &mut client, "t3", &password, "timeout", moment).await;
    let fired = plain.fired();
    assert!(fired > 0, "{moment}: the fault never struck");

    let when = When::PosternSaid(b"AUTHENTICATE PLAIN");
    upstreams.arm(&plain, when, Then::Stall).await;
    let moment = "no answer to AUTHENTICATE";
    imap_login_unavailable(&postern, &mut client, "t4", &password, "timeout", moment).await;
    assert!(plain.fired() > fired, "{moment}: the fault never struck");
    assert_eq!(attempts(&postern, "imap", "login", "ok"), 0);

    // Whole again, with the same short deadlines: the same connection logs in over the
    // plaintext route, and a fresh client over the TLS one.
    upstreams.disarm(&plain).await;
    let reply = imap_login(&mut client, "a1", &password).await;
    assert!(reply.starts_with("a1 OK [CAPABILITY"), "{reply}");
    let logout = client.command("a2", "LOGOUT").await;
    assert!(logout.last().unwrap().starts_with("a2 OK"), "{logout:?}");
    tls.disarm();
    upstreams
        .route_impatiently("imap", tls.host_port(), UpstreamTls::Implicit)
        .await;
    fresh_imap_session(&postern, &password).await;
    postern.stop().await;
    assert_no_task_panicked();
}

/// An IMAP client over TLS that reads raw lines and can tell a clean end (close_notify,
/// then EOF) from a torn connection.
struct RawImap {
    tls: BufReader<tokio_rustls::client::TlsStream<TcpStream>>,
}

impl RawImap {
    async fn connect(postern: &Postern) -> RawImap {
        let tcp = TcpStream::connect(postern.imaps).await.expect("connect");
        let tls = connector(&postern.ca_path)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake with postern");
        let mut client = RawImap {
            tls: BufReader::new(tls),
        };
        let greeting = client.line().await;
        assert!(greeting.starts_with("* OK"), "{greeting}");
        client
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        let read = tokio::time::timeout(PATIENCE, self.tls.read_line(&mut line)).await;
        match read {
            Ok(Ok(n)) if n > 0 => line.trim_end_matches(['\r', '\n']).to_string(),
            other => panic!("no line from postern: {other:?}"),
        }
    }

    /// `tag command`; the tagged reply line.
    async fn command(&mut self, tag: &str, command: &str) -> String {
        self.send(&format!("{tag} {command}\r\n")).await;
        let prefix = format!("{tag} ");
        loop {
            let line = self.line().await;
            if line.starts_with(&prefix) {
                return line;
            }
        }
    }

    async fn send(&mut self, text: &str) {
        let tls = self.tls.get_mut();
        tls.write_all(text.as_bytes()).await.expect("write");
        tls.flush().await.expect("flush");
    }

    /// Whatever postern still sends until the connection ends; an error if it ends
    /// without close_notify.
    async fn rest(&mut self) -> std::io::Result<Vec<u8>> {
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, self.tls.read_to_end(&mut rest))
            .await
            .expect("postern ends the session")?;
        Ok(rest)
    }
}

/// The upstream going away under a logged-in session, as when it restarts: every
/// connection to it cut (the session's and the warm ones), with a FIN between commands,
/// then with a RST during IDLE, over upstream TLS. postern ends the client's connection
/// at once and cleanly (TLS close_notify, then EOF) and adds nothing of its own: no
/// `* BYE`, as Dovecot's own login proxy does; a client reconnects as after any dropped
/// connection. The session gauge returns to 0, and the next login is served.
#[tokio::test(flavor = "multi_thread")]
async fn imap_session_cut_by_the_upstream_ends_cleanly() {
    let (dovecot, postern, password) = setup().await;
    let proxy = FaultyProxy::start(loopback(dovecot.imaps_port)).await;
    let mut upstreams = Upstreams::of(&postern);
    upstreams
        .route("imap", proxy.host_port(), UpstreamTls::Implicit)
        .await;

    for (moment, then, idle) in [
        ("a FIN between commands", Then::Close, false),
        ("a RST during IDLE", Then::Reset, true),
    ] {
        let mut client = RawImap::connect(&postern).await;
        let reply = client
            .command("a1", &format!("LOGIN alice@example.test \"{password}\""))
            .await;
        assert!(reply.starts_with("a1 OK [CAPABILITY"), "{moment}: {reply}");
        let select = client.command("a2", "SELECT INBOX").await;
        assert!(select.starts_with("a2 OK"), "{moment}: {select}");
        if idle {
            client.send("a3 IDLE\r\n").await;
            assert_eq!(client.line().await, "+ idling", "{moment}");
        } else {
            let noop = client.command("a3", "NOOP").await;
            assert!(noop.starts_with("a3 OK"), "{moment}: {noop}");
        }
        eventually("the session is counted", || {
            sessions_active(&postern, "imap") == 1
        })
        .await;

        assert!(proxy.cut_all(then).await >= 1, "{moment}: nothing to cut");
        let rest = client
            .rest()
            .await
            .unwrap_or_else(|e| panic!("{moment}: not a clean TLS close: {e}"));
        assert!(
            rest.is_empty(),
            "{moment}: postern sent {:?}",
            String::from_utf8_lossy(&rest)
        );
        eventually("the session gauge returns to 0", || {
            sessions_active(&postern, "imap") == 0
        })
        .await;
    }
    fresh_imap_session(&postern, &password).await;
    postern.stop().await;
    assert_no_task_panicked();
}

// --- SMTP -------------------------------------------------------------------------------

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Connected over implicit TLS, EHLO said.
async fn smtp_client(postern: &Postern) -> SmtpClient {
    let (mut client, greeting) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    let ehlo = client.command("EHLO client.example").await;
    assert!(ehlo.starts_with("250"), "{ehlo}");
    client
}

async fn smtp_auth(client: &mut SmtpClient, password: &str) -> String {
    let response = base64(&format!("\0alice@example.test\0{password}"));
    client.command(&format!("AUTH PLAIN {response}")).await
}

/// An AUTH on `client` that an upstream fault turns into `454 4.7.0`: counted as
/// `upstream_unavailable` with one upstream error of `reason`; MAIL is still refused
/// afterwards.
async fn smtp_auth_unavailable(
    postern: &Postern,
    client: &mut SmtpClient,
    password: &str,
    reason: &str,
    moment: &str,
) {
    let errors = upstream_errors(postern, "smtp", reason);
    let unavailable = attempts(postern, "smtp", "plain", "upstream_unavailable");
    assert_eq!(
        smtp_auth(client, password).await,
        AUTH_UNAVAILABLE,
        "{moment}"
    );
    assert_eq!(
        upstream_errors(postern, "smtp", reason),
        errors + 1,
        "{moment}: one upstream error with reason {reason}"
    );
    assert_eq!(
        attempts(postern, "smtp", "plain", "upstream_unavailable"),
        unavailable + 1,
        "{moment}"
    );
    let mail = client.command("MAIL FROM:<alice@example.test>").await;
    assert!(mail.starts_with("530 5.7.0"), "{moment}: {mail}");
}

fn message(subject: &str) -> String {
    format!(
        "From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\n\
         Subject: {subject}\r\nMessage-ID: <{subject}@example.test>\r\n\r\n\
         Hello Bob,\r\nthis is {subject}.\r\n"
    )
}

/// MAIL, RCPT, DATA and one message from alice to bob; the reply to its final dot.
async fn send_message(client: &mut SmtpClient, subject: &str) -> String {
    let mail = client.command("MAIL FROM:<alice@example.test>").await;
    assert!(mail.starts_with("250"), "{subject}: MAIL {mail}");
    let rcpt = client.command("RCPT TO:<bob@example.test>").await;
    assert!(rcpt.starts_with("250"), "{subject}: RCPT {rcpt}");
    let data = client.command("DATA").await;
    assert!(data.starts_with("354"), "{subject}: DATA {data}");
    client.send(message(subject).as_bytes()).await;
    client.command(".").await
}

/// The subjects of the messages in the Maildir's `new`.
fn delivered(maildir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .filter_map(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect()
}

/// A new client authenticates, sends a message that reaches bob, and quits; returns once
/// the session is over.
async fn fresh_smtp_session(postern: &Postern, dovecot: &Dovecot, password: &str, subject: &str) {
    let mut client = smtp_client(postern).await;
    assert_eq!(smtp_auth(&mut client, password).await, AUTH_OK);
    let reply = send_message(&mut client, subject).await;
    assert!(reply.starts_with("250"), "{reply}");
    assert!(client.command("QUIT").await.starts_with("221"));
    let maildir = dovecot.maildir("bob");
    eventually("the fresh session's message reaches bob", || {
        delivered(&maildir).iter().any(|s| s == subject)
    })
    .await;
    eventually("the fresh session is over", || {
        sessions_active(postern, "smtp") == 0
    })
    .await;
}

/// The upstream hanging up in the middle of postern's SMTP login: just after its
/// greeting, or just after postern's AUTH went out (a FIN, then a RST). Each time the
/// client's AUTH gets `454 4.7.0`, counted as `upstream_unavailable` with an `io`
/// upstream error; MAIL is still refused, and the same connection authenticates and sends
/// once the upstream is whole again.
#[tokio::test(flavor = "multi_thread")]
async fn smtp_upstream_hanging_up_during_the_login_is_454() {
    let (dovecot, postern, password) = setup().await;
    let proxy = FaultyProxy::start(loopback(dovecot.submission_port)).await;
    let mut upstreams = Upstreams::of(&postern);
    upstreams
        .route("smtp", proxy.host_port(), UpstreamTls::None)
        .await;
    // A client's connection first reads the upstream's capabilities, through the proxy;
    // they are read here, before any fault, and kept for `capabilities_refresh`.
    let mut client = smtp_client(&postern).await;

    let faults = [
        (
            "after the greeting",
            When::UpstreamSaid(b"\r\n"),
            Then::Close,
        ),
        (
            "after AUTH (FIN)",
            When::PosternSaid(b"AUTH PLAIN"),
            Then::Close,
        ),
        (
            "after AUTH (RST)",
            When::PosternSaid(b"AUTH PLAIN"),
            Then::Reset,
        ),
    ];
    for (moment, when, then) in faults {
        proxy.arm(when, then);
        let fired = proxy.fired();
        smtp_auth_unavailable(&postern, &mut client, &password, "io", moment).await;
        assert_eq!(proxy.fired(), fired + 1, "{moment}: the fault struck once");
    }
    assert_eq!(attempts(&postern, "smtp", "plain", "ok"), 0);
    assert_eq!(sessions_active(&postern, "smtp"), 0);

    proxy.disarm();
    assert_eq!(smtp_auth(&mut client, &password).await, AUTH_OK);
    let reply = send_message(&mut client, "after-login-faults").await;
    assert!(reply.starts_with("250"), "{reply}");
    assert!(client.command("QUIT").await.starts_with("221"));
    fresh_smtp_session(&postern, &dovecot, &password, "fresh").await;
    assert_eq!(messages(&postern, "accepted"), 2);
    postern.stop().await;
    assert_no_task_panicked();
}

/// An SMTP upstream that says nothing: no TCP handshake, no greeting, no answer to AUTH.
/// Each AUTH gets `454 4.7.0` once postern's deadline has passed, with an upstream error
/// of reason `timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn smtp_upstream_silent_past_the_deadlines_is_454() {
    let (dovecot, postern, password) = setup().await;
    let proxy = FaultyProxy::start(loopback(dovecot.submission_port)).await;
    let full = FullListener::start().await;
    let mut upstreams = Upstreams::of(&postern);
    upstreams
        .route_impatiently("smtp", proxy.host_port(), UpstreamTls::None)
        .await;
    // The client's connection reads the capabilities through the proxy while it passes
    // everything; the routes and faults that follow meet AUTH only.
    let mut client = smtp_client(&postern).await;

    upstreams
        .route_impatiently("smtp", full.address.to_string(), UpstreamTls::None)
        .await;
    let moment = "no TCP handshake (connect_timeout)";
    smtp_auth_unavailable(&postern, &mut client, &password, "timeout", moment).await;

    upstreams
        .route_impatiently("smtp", proxy.host_port(), UpstreamTls::None)
        .await;
    proxy.arm(When::Accepted, Then::Stall);
    smtp_auth_unavailable(&postern, &mut client, &password, "timeout", "no greeting").await;
    proxy.arm(When::PosternSaid(b"AUTH PLAIN"), Then::Stall);
    let moment = "no answer to AUTH";
    smtp_auth_unavailable(&postern, &mut client, &password, "timeout", moment).await;
    assert_eq!(proxy.fired(), 2);
    assert_eq!(attempts(&postern, "smtp", "plain", "ok"), 0);

    proxy.disarm();
    assert_eq!(smtp_auth(&mut client, &password).await, AUTH_OK);
    assert!(client.command("QUIT").await.starts_with("221"));
    fresh_smtp_session(&postern, &dovecot, &password, "fresh").await;
    postern.stop().await;
    assert_no_task_panicked();
}

/// The upstream connection of a logged-in SMTP session reset (over upstream TLS, through
/// the proxy): between transactions, then twice after a RCPT. postern notices when it
/// next needs the upstream: the command that finds it gone, and every later command of
/// the same transaction, gets `451 4.4.2` (for a message, after its final dot: postern
/// answers DATA with its own 354 to read the header first); a lost message is counted as
/// `upstream_failed` and never delivered, and the next transaction logs in upstream anew
/// on the same client connection.
#[tokio::test(flavor = "multi_thread")]
async fn smtp_session_cut_by_the_upstream_fails_one_command_then_recovers() {
    let (dovecot, postern, password) = setup().await;
    let proxy = FaultyProxy::start(loopback(dovecot.submissions_port)).await;
    let mut upstreams = Upstreams::of(&postern);
    upstreams
        .route("smtp", proxy.host_port(), UpstreamTls::Implicit)
        .await;
    let mut client = smtp_client(&postern).await;
    assert_eq!(smtp_auth(&mut client, &password).await, AUTH_OK);
    eventually("the session is counted", || {
        sessions_active(&postern, "smtp") == 1
    })
    .await;

    // Between transactions.
    assert!(proxy.cut_all(Then::Reset).await >= 1);
    let mail = client.command("MAIL FROM:<alice@example.test>").await;
    assert_eq!(mail, UPSTREAM_LOST);
    let reply = send_message(&mut client, "after-reset").await;
    assert!(reply.starts_with("250"), "{reply}");

    // In the middle of a transaction, found at DATA.
    let mail = client.command("MAIL FROM:<alice@example.test>").await;
    assert!(mail.starts_with("250"), "{mail}");
    let rcpt = client.command("RCPT TO:<bob@example.test>").await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    assert!(proxy.cut_all(Then::Reset).await >= 1);
    let data = client.command("DATA").await;
    assert!(data.starts_with("354"), "{data}");
    client.send(message("cut-before-data").as_bytes()).await;
    assert_eq!(client.command(".").await, UPSTREAM_LOST);
    assert_eq!(messages(&postern, "upstream_failed"), 1);

    // In the middle of a transaction, found at the next RCPT: the rest of the
    // transaction died with the upstream connection, so no later command of it may go
    // to a new upstream session that never saw its MAIL (that one would answer a
    // permanent 503, and the client would bounce a message that only needs a retry).
    let mail = client.command("MAIL FROM:<alice@example.test>").await;
    assert!(mail.starts_with("250"), "{mail}");
    let rcpt = client.command("RCPT TO:<bob@example.test>").await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    assert!(proxy.cut_all(Then::Reset).await >= 1);
    for to in ["alice@example.test", "bob@example.test"] {
        let rcpt = client.command(&format!("RCPT TO:<{to}>")).await;
        assert_eq!(rcpt, UPSTREAM_LOST, "RCPT {to}");
    }
    let data = client.command("DATA").await;
    assert!(data.starts_with("354"), "{data}");
    client
        .send(message("cut-between-recipients").as_bytes())
        .await;
    assert_eq!(client.command(".").await, UPSTREAM_LOST);
    assert_eq!(messages(&postern, "upstream_failed"), 2);

    let reply = send_message(&mut client, "after-cut").await;
    assert!(reply.starts_with("250"), "{reply}");
    assert!(client.command("QUIT").await.starts_with("221"));
    eventually("the session gauge returns to 0", || {
        sessions_active(&postern, "smtp") == 0
    })
    .await;
    let maildir = dovecot.maildir("bob");
    eventually("both later messages reach bob", || {
        let subjects = delivered(&maildir);
        subjects.iter().any(|s| s == "after-reset") && subjects.iter().any(|s| s == "after-cut")
    })
    .await;
    assert_eq!(delivered(&maildir).len(), 2, "{:?}", delivered(&maildir));
    assert_eq!(messages(&postern, "accepted"), 2);
    fresh_smtp_session(&postern, &dovecot, &password, "fresh").await;
    postern.stop().await;
    assert_no_task_panicked();
}

/// The upstream connection lost after DATA, before the upstream's reply to the final dot
/// reached postern: the client gets `451 4.4.2`, never a 250, and the message is counted
/// as `upstream_failed`. Cut while the body is on its way, the message is never
/// delivered. Cut after the upstream took the final dot and answered 250 (the proxy
/// swallows that answer), the message *is* delivered, once: postern cannot know, and its
/// 451 may at worst make the client send the message again (a duplicate), where a 250
/// could lose one (RFC 5321 section 6.1 prefers the duplicate).
#[tokio::test(flavor = "multi_thread")]
async fn smtp_upstream_lost_after_data_never_gets_a_250() {
    let (dovecot, postern, password) = setup().await;
    let proxy = FaultyProxy::start(loopback(dovecot.submission_port)).await;
    let mut upstreams = Upstreams::of(&postern);
    upstreams
        .route("smtp", proxy.host_port(), UpstreamTls::None)
        .await;
    let maildir = dovecot.maildir("bob");
    let mut client = smtp_client(&postern).await;

    // Armed before AUTH: the session's upstream connection, opened by AUTH, carries it.
    proxy.arm(When::PosternSaid(b"this is cut-in-the-body"), Then::Reset);
    assert_eq!(smtp_auth(&mut client, &password).await, AUTH_OK);
    let reply = send_message(&mut client, "cut-in-the-body").await;
    assert_eq!(reply, UPSTREAM_LOST);
    assert_eq!(proxy.fired(), 1);
    assert_eq!(messages(&postern, "upstream_failed"), 1);

    // The next MAIL logs in upstream anew, over a connection that loses the answer.
    proxy.arm(When::PosternSaid(b"\r\n.\r\n"), Then::LoseTheAnswer);
    assert_eq!(
        send_message(&mut client, "lost-answer").await,
        UPSTREAM_LOST
    );
    assert_eq!(proxy.fired(), 2);
    assert!(
        proxy.swallowed().starts_with("250 "),
        "the upstream accepted: {:?}",
        proxy.swallowed()
    );
    assert_eq!(messages(&postern, "upstream_failed"), 2);
    assert_eq!(messages(&postern, "accepted"), 0);

    proxy.disarm();
    let reply = send_message(&mut client, "after-faults").await;
    assert!(reply.starts_with("250"), "{reply}");
    assert!(client.command("QUIT").await.starts_with("221"));
    eventually("the last message reaches bob", || {
        delivered(&maildir).iter().any(|s| s == "after-faults")
    })
    .await;
    let mut subjects = delivered(&maildir);
    subjects.sort();
    assert_eq!(subjects, ["after-faults", "lost-answer"]);
    assert_eq!(messages(&postern, "accepted"), 1);
    fresh_smtp_session(&postern, &dovecot, &password, "fresh").await;
    postern.stop().await;
    assert_no_task_panicked();
}

// --- Certificates -----------------------------------------------------------------------

/// An upstream whose certificate postern must not trust: issued by a CA that is not in
/// `ca_file`, or not carrying the configured `server_name`. IMAP (implicit TLS) answers
/// `NO [UNAVAILABLE]`, SMTP (STARTTLS) `454 4.7.0`, each with an upstream error of reason
/// `tls`; the same upstream is used once `ca_file` and `server_name` are right.
#[tokio::test(flavor = "multi_thread")]
async fn untrusted_upstream_certificates_are_refused_until_configured() {
    let (dovecot, postern, password) = setup().await;
    let stranger_dir = tempfile::tempdir().expect("temp dir");
    let stranger = TestCa::new(stranger_dir.path());
    let mut upstreams = Upstreams::of(&postern);
    upstreams
        .route(
            "imap",
            loopback(dovecot.imaps_port).to_string(),
            UpstreamTls::Implicit,
        )
        .await;
    upstreams
        .route(
            "smtp",
            loopback(dovecot.submission_port).to_string(),
            UpstreamTls::Starttls,
        )
        .await;

    for (moment, ca, name) in [
        (
            "a certificate from a CA not in ca_file",
            &stranger.ca_path,
            "localhost",
        ),
        (
            "a certificate without the server_name",
            &dovecot.ca_path,
            "mail.example.test",
        ),
    ] {
        for protocol in ["imap", "smtp"] {
            upstreams
                .change(protocol, |section| {
                    section.ca_file = Some(ca.clone());
                    section.server_name = Some(name.to_string());
                })
                .await;
        }
        let mut imap = imap_client(&postern).await;
        imap_login_unavailable(&postern, &mut imap, "c1", &password, "tls", moment).await;
        let mut smtp = smtp_client(&postern).await;
        smtp_auth_unavailable(&postern, &mut smtp, &password, "tls", moment).await;
    }
    assert_eq!(attempts(&postern, "imap", "login", "ok"), 0);
    assert_eq!(attempts(&postern, "smtp", "plain", "ok"), 0);

    for protocol in ["imap", "smtp"] {
        upstreams
            .change(protocol, |section| {
                section.ca_file = Some(dovecot.ca_path.clone());
                section.server_name = Some("localhost".to_string());
            })
            .await;
    }
    fresh_imap_session(&postern, &password).await;
    fresh_smtp_session(&postern, &dovecot, &password, "trusted").await;
    postern.stop().await;
    assert_no_task_panicked();
}

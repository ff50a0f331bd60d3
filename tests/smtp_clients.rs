//! Real SMTP clients that nobody on this project wrote, submitting mail through postern.
//!
//! `tests/smtp.rs` checks byte-level scripts of what we think Outlook and Apple Mail
//! send; these tests run installed clients as child processes against postern's two
//! submission listeners, in front of a private Dovecot whose submission service relays
//! into the recipients' Maildirs:
//!
//! - **swaks** (`/usr/bin/swaks`): STARTTLS + AUTH LOGIN and implicit TLS + AUTH PLAIN,
//!   certificate verified against postern's CA; a custom header and a UTF-8 body arrive
//!   in bob's Maildir byte for byte. Refusals map to swaks' documented exit codes: a
//!   spoofed envelope sender (23, 553 at MAIL), a spoofed From: header (26, 553 after the
//!   message), a wrong app password and alice's primary password (28, 535 at AUTH); none
//!   of them delivers anything. (Ignored until fixed: a 45 MiB message, under postern's
//!   advertised SIZE but over Dovecot's post-AUTH limit, must fail with a permanent 5xx.)
//! - **curl** (`/usr/bin/curl`): `smtps://` with the mechanism curl picks itself, and
//!   `smtp://` on the STARTTLS listener with `--ssl-reqd`, AUTH LOGIN forced and an
//!   initial response (`--sasl-ir`); the uploaded file (dot-stuffed by curl, lines that
//!   start with dots included) arrives identical. A message the upstream rejects after DATA
//!   makes curl fail and is never delivered.
//! - **Python's smtplib** (`tests/smtp_clients/smtplib_client.py`): `SMTP_SSL` and
//!   `SMTP` + `starttls()`, with `login()` and every forced variant of AUTH PLAIN and AUTH
//!   LOGIN (with and without initial response); `send_message` of an EmailMessage with a
//!   UTF-8 body and a 1 MiB binary attachment, sent to alice herself; then imaplib reads
//!   each message back through postern's IMAP side: the raw bytes equal the Maildir file,
//!   the body part equals what smtplib sent, the text and the attachment's SHA-256 match.
//!
//! Each test starts its own Dovecot (users alice and bob) and postern (login
//! `alice@example.test`, address `alice@example.test`, one imap+smtp app password in its
//! display form with spaces). Every client runs under [`CLIENT_DEADLINE`]; when one fails
//! or hangs, the panic carries its exit status, stdout, stderr and Dovecot's and the
//! relay's logs. Assertions are about content and exit codes, never about timing.

mod support;

use std::path::{Path, PathBuf};

use postern::store::Scope;
use sha2::{Digest, Sha256};
use support::client_run::{run_client, Run};
use support::postern::{metric, Postern};
use support::Dovecot;

const LOGIN: &str = "alice@example.test";
const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
const ALICE_DIRECT_PASSWORD: &str = "alice-direct-password";

/// One test's world: Dovecot, postern in front of it, alice's app password (display form,
/// with spaces) and a scratch directory for client input and output.
struct World {
    dovecot: Dovecot,
    postern: Postern,
    password: String,
    scratch: tempfile::TempDir,
}

/// Dovecot with users alice and bob; postern login alice@example.test (address
/// alice@example.test) with an imap+smtp app password.
async fn setup() -> World {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", ALICE_DIRECT_PASSWORD);
    dovecot.add_user("bob", "bob-direct-password");
    let postern = Postern::start(&dovecot).await;
    postern.add_user(LOGIN, "alice").await;
    let (_id, password) = postern
        .issue(LOGIN, &[Scope::Imap, Scope::Smtp], None)
        .await;
    assert!(
        password.contains(' '),
        "display form has spaces: {password}"
    );
    let scratch = tempfile::Builder::new()
        .prefix("postern-smtp-clients-")
        .tempdir()
        .expect("scratch dir");
    World {
        dovecot,
        postern,
        password,
        scratch,
    }
}

impl World {
    /// Every message in `user`'s Maildir (new and cur), in file name (= delivery) order.
    fn delivered(&self, user: &str) -> Vec<Vec<u8>> {
        let maildir = self.dovecot.maildir(user);
        let mut files: Vec<PathBuf> = ["new", "cur"]
            .iter()
            .filter_map(|d| std::fs::read_dir(maildir.join(d)).ok())
            .flatten()
            .map(|e| e.expect("read Maildir entry").path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display())))
            .collect()
    }

    /// The one message in `user`'s Maildir whose header block contains `needle`.
    fn delivered_with(&self, user: &str, needle: &str, run: &Run) -> Vec<u8> {
        let found: Vec<Vec<u8>> = self
            .delivered(user)
            .into_iter()
            .filter(|m| contains(header_block(m), needle.as_bytes()))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one message with {needle:?} in {user}'s Maildir\n{}",
            run.report(&self.dovecot)
        );
        found.into_iter().next().unwrap()
    }

    fn metric(&self, series: &str) -> f64 {
        metric(&self.postern.metrics(), series)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Everything before the first empty line (CRLF CRLF), without it.
fn header_block(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &message[..end + 2],
        None => message,
    }
}

/// Everything after the first empty line.
fn body_part(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &message[end + 4..],
        None => panic!(
            "no empty line after the header block in {:?}",
            String::from_utf8_lossy(&message[..message.len().min(2000)])
        ),
    }
}

/// Where `got` first differs from `expected`, with the bytes around it.
fn difference(got: &[u8], expected: &[u8]) -> String {
    let at = got
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(expected.len()));
    let around = |bytes: &[u8]| {
        let from = at.saturating_sub(80);
        String::from_utf8_lossy(&bytes[from..bytes.len().min(at + 80)]).into_owned()
    };
    format!(
        "{} bytes vs {} expected; first difference at offset {at}:\n  got      {:?}\n  expected {:?}",
        got.len(),
        expected.len(),
        around(got),
        around(expected)
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn accepted_series() -> &'static str {
    "postern_smtp_messages_total{result=\"accepted\"}"
}

// ---------------------------------------------------------------------------------------
// swaks

/// The body swaks sends (`--body`); swaks turns each LF into CRLF on the wire and its
/// DATA template ends `%BODY%` with two more line ends (see [`swaks_delivered_body`]).
const SWAKS_BODY: &str = "Hello Bob,\n\
this came through postern from swaks.\n\
Grüße aus Köln, naïve café, 日本語 ✓\n\
\x20a line with a leading space\n\
regards\n";

/// What swaks 20201014 puts after the header block for `--body SWAKS_BODY`, as its
/// transcript shows: the body with CRLF line ends, then two empty lines.
fn swaks_delivered_body() -> String {
    format!("{}\r\n\r\n", SWAKS_BODY.replace('\n', "\r\n"))
}

/// How swaks reaches postern.
#[derive(Clone, Copy)]
enum SwaksTls {
    /// `--tls`: STARTTLS on the submission listener (required, or swaks exits 29).
    Starttls,
    /// `--tls-on-connect`: the smtps listener.
    Implicit,
}

/// swaks to one of postern's listeners at 127.0.0.1, verifying postern's certificate
/// with its CA, as `auth_user` with `password` (mechanism `auth`), sending from
/// `from` to bob with an `X-Postern-Test: <tag>` header and `Subject: <tag>`.
fn swaks(
    w: &World,
    tls: SwaksTls,
    auth: &str,
    auth_user: &str,
    password: &str,
    from: &str,
    tag: &str,
) -> tokio::process::Command {
    let (port, tls_flag) = match tls {
        SwaksTls::Starttls => (w.postern.submission.port(), "--tls"),
        SwaksTls::Implicit => (w.postern.smtps.port(), "--tls-on-connect"),
    };
    let mut cmd = tokio::process::Command::new("/usr/bin/swaks");
    cmd.arg("--server")
        .arg("127.0.0.1")
        .arg("--port")
        .arg(port.to_string())
        .arg(tls_flag)
        .arg("--tls-verify")
        .arg("--tls-ca-path")
        .arg(&w.postern.ca_path)
        .arg("--timeout")
        .arg("30")
        .arg("--helo")
        .arg("swaks.example")
        .arg("--auth")
        .arg(auth)
        .arg("--auth-user")
        .arg(auth_user)
        .arg("--auth-password")
        .arg(password)
        .arg("--from")
        .arg(from)
        .arg("--to")
        .arg(BOB)
        .arg("--header")
        .arg(format!("Subject: {tag}"))
        .arg("--header")
        .arg(format!("X-Postern-Test: {tag}"))
        .arg("--body")
        .arg(SWAKS_BODY);
    cmd
}

/// Checks one successful swaks submission: exit 0, the mechanism and prompts seen in the
/// transcript, and the message in bob's Maildir with the header and the exact body.
async fn swaks_delivers(tls: SwaksTls, auth: &str, tag: &str) {
    let w = setup().await;
    let run = run_client(
        &format!("swaks {tag}"),
        &mut swaks(&w, tls, auth, LOGIN, &w.password, ALICE, tag),
        w.scratch.path(),
        &w.dovecot,
    )
    .await;
    run.assert_success(&w.dovecot);
    let transcript = run.stdout_text();
    let expect_in_transcript: &[&str] = match (tls, auth) {
        (SwaksTls::Starttls, _) => &[
            "~> AUTH LOGIN",
            "<~  334 VXNlcm5hbWU6",
            "<~  334 UGFzc3dvcmQ6",
        ],
        (SwaksTls::Implicit, _) => &["~> AUTH PLAIN "],
    };
    for expected in expect_in_transcript
        .iter()
        .chain(&["<~  235 2.7.0 Authentication successful", "<~  221 "])
    {
        assert!(
            transcript.contains(expected),
            "{expected:?} in the transcript\n{}",
            run.report(&w.dovecot)
        );
    }
    if let SwaksTls::Starttls = tls {
        // The upgrade came before AUTH, and EHLO before it offered no AUTH.
        let starttls = transcript.find(" -> STARTTLS").expect("STARTTLS sent");
        assert!(
            transcript.find("~> AUTH").unwrap() > starttls,
            "{}",
            run.report(&w.dovecot)
        );
        assert!(
            !transcript[..starttls].contains("AUTH"),
            "no AUTH advertised before TLS\n{}",
            run.report(&w.dovecot)
        );
    }

    let message = w.delivered_with("bob", &format!("X-Postern-Test: {tag}"), &run);
    let headers = String::from_utf8_lossy(header_block(&message)).into_owned();
    assert!(
        headers.contains(&format!("Subject: {tag}\r\n"))
            && headers.contains(&format!("From: {ALICE}\r\n"))
            && headers.contains(&format!("To: {BOB}\r\n")),
        "{headers}"
    );
    let expected_body = swaks_delivered_body();
    assert_eq!(
        String::from_utf8_lossy(body_part(&message)),
        expected_body,
        "{}",
        run.report(&w.dovecot)
    );
    assert_eq!(w.delivered("bob").len(), 1);
    assert_eq!(w.metric(accepted_series()), 1.0, "{}", w.postern.metrics());
    w.postern.stop().await;
}

/// swaks on the STARTTLS listener (`--tls`), certificate verified, AUTH LOGIN answered
/// after the exact `334 VXNlcm5hbWU6` / `334 UGFzc3dvcmQ6` prompts.
#[tokio::test(flavor = "multi_thread")]
async fn swaks_sends_over_starttls_with_auth_login() {
    swaks_delivers(SwaksTls::Starttls, "LOGIN", "swaks-starttls-login").await;
}

/// swaks on the implicit-TLS listener (`--tls-on-connect`), AUTH PLAIN.
#[tokio::test(flavor = "multi_thread")]
async fn swaks_sends_over_implicit_tls_with_auth_plain() {
    swaks_delivers(SwaksTls::Implicit, "PLAIN", "swaks-implicit-plain").await;
}

/// A spoofed envelope sender is refused at MAIL (553, swaks exit 23); a spoofed From:
/// header with an honest envelope is refused after the message (553, exit 26); a wrong
/// app password and alice's primary Dovecot password are refused at AUTH (535, exit 28).
/// Nothing reaches bob, and the metrics count each refusal.
#[tokio::test(flavor = "multi_thread")]
async fn swaks_spoofed_senders_and_wrong_passwords_fail_and_deliver_nothing() {
    let w = setup().await;
    let scratch = w.scratch.path();

    let spoofed_envelope = run_client(
        "swaks --from ceo@example.test",
        &mut swaks(
            &w,
            SwaksTls::Implicit,
            "PLAIN",
            LOGIN,
            &w.password,
            "ceo@example.test",
            "spoofed-envelope",
        ),
        scratch,
        &w.dovecot,
    )
    .await;
    spoofed_envelope.assert_exit(23, &w.dovecot);
    assert!(
        spoofed_envelope
            .stdout_text()
            .contains("553 5.7.1 Sender address not allowed"),
        "{}",
        spoofed_envelope.report(&w.dovecot)
    );

    let mut header_only = swaks(
        &w,
        SwaksTls::Starttls,
        "LOGIN",
        LOGIN,
        &w.password,
        ALICE,
        "spoofed-header",
    );
    header_only
        .arg("--header")
        .arg("From: The CEO <ceo@example.test>");
    let spoofed_header = run_client(
        "swaks with From: ceo@example.test",
        &mut header_only,
        scratch,
        &w.dovecot,
    )
    .await;
    spoofed_header.assert_exit(26, &w.dovecot);
    let transcript = spoofed_header.stdout_text();
    assert!(
        transcript.contains("> From: The CEO <ceo@example.test>")
            && transcript.contains(" 553 5.7.1 "),
        "{}",
        spoofed_header.report(&w.dovecot)
    );

    for (what, password) in [
        ("a wrong app password", "abcd efgh ijkl mnop"),
        ("alice's primary password", ALICE_DIRECT_PASSWORD),
    ] {
        for (tls, auth) in [(SwaksTls::Implicit, "PLAIN"), (SwaksTls::Starttls, "LOGIN")] {
            let run = run_client(
                &format!("swaks AUTH {auth} with {what}"),
                &mut swaks(&w, tls, auth, LOGIN, password, ALICE, "wrong-password"),
                scratch,
                &w.dovecot,
            )
            .await;
            run.assert_exit(28, &w.dovecot);
            assert!(
                run.stdout_text()
                    .contains(" 535 5.7.8 Authentication credentials invalid"),
                "{}",
                run.report(&w.dovecot)
            );
            assert!(
                !run.stdout_text().contains("MAIL FROM"),
                "{}",
                run.report(&w.dovecot)
            );
        }
    }

    assert!(
        w.delivered("bob").is_empty(),
        "nothing delivered\n{}",
        w.dovecot.all_logs()
    );
    let metrics = w.postern.metrics();
    assert_eq!(metric(&metrics, accepted_series()), 0.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "postern_smtp_messages_total{result=\"sender_refused\"}"
        ),
        2.0,
        "{metrics}"
    );
    let bad = |mechanism: &str| {
        metric(
            &metrics,
            &format!(
                "postern_auth_attempts_total{{mechanism=\"{mechanism}\",protocol=\"smtp\",result=\"bad_password\"}}"
            ),
        )
    };
    assert_eq!(bad("plain") + bad("login"), 4.0, "{metrics}");
    w.postern.stop().await;
}

/// A message under the SIZE postern advertises (its `max_message_size`, 50 MiB by default)
/// but over the upstream's own limit (Dovecot 2.3.19 submission: 40M, announced only in
/// its EHLO after AUTH), sent without a SIZE= parameter: the upstream drops the connection
/// mid-DATA, and the client must get a permanent 5xx (552 5.3.4) so that it does not retry
/// the same 45 MiB forever. postern lowers its limit to the upstream's post-AUTH SIZE and
/// refuses the message itself.
#[tokio::test(flavor = "multi_thread")]
async fn swaks_message_over_the_upstream_size_limit_fails_permanently() {
    let w = setup().await;
    let file = w.scratch.path().join("45-mib.txt");
    let line = format!("{}\n", "x".repeat(76));
    std::fs::write(&file, line.repeat(45 * 1024 * 1024 / line.len())).unwrap();
    let mut cmd = swaks(
        &w,
        SwaksTls::Implicit,
        "PLAIN",
        LOGIN,
        &w.password,
        ALICE,
        "45-mib",
    );
    cmd.arg("--body")
        .arg(format!("@{}", file.display()))
        .arg("--suppress-data");
    let run = run_client("swaks 45 MiB", &mut cmd, w.scratch.path(), &w.dovecot).await;
    run.assert_exit(26, &w.dovecot);
    let transcript = run.stdout_text();
    let reply = transcript
        .lines()
        .skip_while(|l| !l.ends_with(" lines sent"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        reply.starts_with("<~* 5"),
        "a permanent failure after the message, got {reply:?}\n{}",
        run.report(&w.dovecot)
    );
    assert!(w.delivered("bob").is_empty());
    w.postern.stop().await;
}

// ---------------------------------------------------------------------------------------
// curl

/// The file curl uploads: CRLF lines, with lines that start with dots (curl dot-stuffs
/// them, postern must pass the stuffing through and Dovecot undo it once) and 8-bit text.
fn curl_message(tag: &str, extra_header: &str) -> String {
    format!(
        "From: Alice <{ALICE}>\r\n\
         To: Bob <{BOB}>\r\n\
         Subject: {tag}\r\n\
         Message-ID: <{tag}@example.test>\r\n\
         X-Postern-Test: {tag}\r\n\
         {extra_header}\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         Hello Bob,\r\n\
         .a line that starts with a dot\r\n\
         ..and one with two\r\n\
         .\r\n\
         Grüße aus Köln ✓\r\n\
         regards\r\n"
    )
}

/// curl (verbose, so stderr shows the SMTP conversation) submitting `file` to bob as
/// alice, trusting postern's CA; `localhost:port` resolves to 127.0.0.1.
fn curl(w: &World, port: u16, url: &str, file: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("/usr/bin/curl");
    cmd.arg("--silent")
        .arg("--show-error")
        .arg("--verbose")
        .arg("--max-time")
        .arg("50")
        .arg("--cacert")
        .arg(&w.postern.ca_path)
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg("--user")
        .arg(format!("{LOGIN}:{}", w.password))
        .arg("--mail-from")
        .arg(ALICE)
        .arg("--mail-rcpt")
        .arg(BOB)
        .arg("--upload-file")
        .arg(file)
        .arg(url);
    cmd
}

/// curl over implicit TLS (`smtps://`), with the mechanism it picks from postern's EHLO
/// (PLAIN, its response sent after postern's empty `334 ` challenge).
#[tokio::test(flavor = "multi_thread")]
async fn curl_sends_over_implicit_tls() {
    let w = setup().await;
    let port = w.postern.smtps.port();
    let content = curl_message("curl-smtps", "");
    let file = w.scratch.path().join("curl-smtps.eml");
    std::fs::write(&file, &content).unwrap();
    let run = run_client(
        "curl smtps",
        &mut curl(
            &w,
            port,
            &format!("smtps://localhost:{port}/curl.example"),
            &file,
        ),
        w.scratch.path(),
        &w.dovecot,
    )
    .await;
    run.assert_success(&w.dovecot);
    let verbose = run.stderr_text();
    assert!(
        verbose.lines().any(|l| l.trim_end() == "> AUTH PLAIN")
            && verbose.lines().any(|l| l.trim_end() == "< 334"),
        "curl picks PLAIN and, without --sasl-ir, answers an empty 334\n{}",
        run.report(&w.dovecot)
    );
    assert!(
        verbose.contains("< 235 2.7.0 Authentication successful"),
        "{}",
        run.report(&w.dovecot)
    );
    let message = w.delivered_with("bob", "X-Postern-Test: curl-smtps", &run);
    assert_eq!(
        String::from_utf8_lossy(body_part(&message)),
        String::from_utf8_lossy(body_part(content.as_bytes())),
        "{}",
        run.report(&w.dovecot)
    );
    assert!(
        contains(&message, header_block(content.as_bytes())),
        "headers intact\n{}",
        String::from_utf8_lossy(&message)
    );
    assert_eq!(w.metric(accepted_series()), 1.0);
    w.postern.stop().await;
}

/// curl on the STARTTLS listener with `smtp://` and `--ssl-reqd` (upgrade or fail),
/// AUTH LOGIN forced with `--login-options` and sent with an initial response
/// (`--sasl-ir`): the upgrade comes before AUTH, postern asks only for the password.
#[tokio::test(flavor = "multi_thread")]
async fn curl_sends_over_starttls_with_ssl_reqd_and_auth_login() {
    let w = setup().await;
    let port = w.postern.submission.port();
    let content = curl_message("curl-starttls", "");
    let file = w.scratch.path().join("curl-starttls.eml");
    std::fs::write(&file, &content).unwrap();
    let mut cmd = curl(
        &w,
        port,
        &format!("smtp://localhost:{port}/curl.example"),
        &file,
    );
    cmd.arg("--ssl-reqd")
        .arg("--login-options")
        .arg("AUTH=LOGIN")
        .arg("--sasl-ir");
    let run = run_client("curl STARTTLS", &mut cmd, w.scratch.path(), &w.dovecot).await;
    run.assert_success(&w.dovecot);
    let verbose = run.stderr_text();
    let upgraded = verbose.find("> STARTTLS");
    let auth = verbose.find("> AUTH LOGIN ");
    assert!(
        upgraded.is_some() && auth.is_some() && upgraded < auth,
        "{}",
        run.report(&w.dovecot)
    );
    assert!(
        verbose.contains("< 334 UGFzc3dvcmQ6") && !verbose.contains("< 334 VXNlcm5hbWU6"),
        "{}",
        run.report(&w.dovecot)
    );
    let message = w.delivered_with("bob", "X-Postern-Test: curl-starttls", &run);
    assert_eq!(
        String::from_utf8_lossy(body_part(&message)),
        String::from_utf8_lossy(body_part(content.as_bytes())),
        "{}",
        run.report(&w.dovecot)
    );
    assert_eq!(w.metric(accepted_series()), 1.0);
    w.postern.stop().await;
}

/// The upstream refuses the message after DATA (the test relay's reject marker): curl
/// sees the 554 and exits non-zero; nothing is delivered and postern counts a rejection.
#[tokio::test(flavor = "multi_thread")]
async fn curl_fails_when_the_upstream_rejects_the_message() {
    let w = setup().await;
    let port = w.postern.smtps.port();
    let marker = String::from_utf8_lossy(support::smtp_relay::REJECT_MARKER).into_owned();
    let content = curl_message("curl-rejected", &format!("{marker}\r\n"));
    let file = w.scratch.path().join("curl-rejected.eml");
    std::fs::write(&file, &content).unwrap();
    let run = run_client(
        "curl smtps (rejected)",
        &mut curl(
            &w,
            port,
            &format!("smtps://localhost:{port}/curl.example"),
            &file,
        ),
        w.scratch.path(),
        &w.dovecot,
    )
    .await;
    assert!(
        !run.status.success(),
        "curl must not succeed\n{}",
        run.report(&w.dovecot)
    );
    // CURLE_WEIRD_SERVER_REPLY: curl's exit for a non-250 reply to the final dot.
    run.assert_exit(8, &w.dovecot);
    assert!(
        run.stderr_text().contains("< 554 "),
        "{}",
        run.report(&w.dovecot)
    );
    assert!(
        w.delivered("bob").is_empty(),
        "nothing delivered\n{}",
        w.dovecot.all_logs()
    );
    let metrics = w.postern.metrics();
    assert_eq!(metric(&metrics, accepted_series()), 0.0, "{metrics}");
    assert_eq!(
        metric(&metrics, "postern_smtp_messages_total{result=\"rejected\"}"),
        1.0,
        "{metrics}"
    );
    w.postern.stop().await;
}

// ---------------------------------------------------------------------------------------
// Python smtplib (and imaplib to read back)

fn smtplib_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_clients/smtplib_client.py")
}

/// The UTF-8 text body: 8-bit lines, one that starts with a dot (smtplib stuffs it), one
/// that is a lone dot and one that starts with "From " (smtplib mangles it to ">From ").
fn python_body(n: usize) -> String {
    format!(
        "Hallo Alice, message {n}.\n\
         Grüße aus Köln, naïve café, Ελληνικά, 日本語 ✓\n\
         .a line that starts with a dot\n\
         .\n\
         From the beginning of a line\n\
         — regards\n"
    )
}

/// About 1 MiB of deterministic bytes covering every octet value.
fn attachment(n: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (n as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
    (0..1024 * 1024 + 17)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// One smtplib submission to alice herself and its read-back through postern's IMAP side.
async fn smtplib_round_trip(w: &World, tls: &str, auth: &str, n: usize) {
    let port = match tls {
        "implicit" => w.postern.smtps.port(),
        _ => w.postern.submission.port(),
    };
    let dir = w.scratch.path();
    let body_file = dir.join(format!("body{n}.txt"));
    let attachment_file = dir.join(format!("attachment{n}.bin"));
    let sent_file = dir.join(format!("sent{n}.eml"));
    let raw_file = dir.join(format!("fetched{n}.eml"));
    let body = python_body(n);
    let data = attachment(n);
    std::fs::write(&body_file, &body).unwrap();
    std::fs::write(&attachment_file, &data).unwrap();
    let message_id = format!("<smtplib-{n}-{tls}-{auth}@example.test>");
    let subject = format!("smtplib {tls} {auth} — {n}");

    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(smtplib_script())
        .arg("send")
        .args(["--port", &port.to_string()])
        .arg("--ca")
        .arg(&w.postern.ca_path)
        .args(["--tls", tls, "--auth", auth, "--user", LOGIN])
        .args(["--password", &w.password])
        .args(["--sender", ALICE, "--to", ALICE])
        .args(["--subject", &subject, "--message-id", &message_id])
        .arg("--body-file")
        .arg(&body_file)
        .arg("--attachment-file")
        .arg(&attachment_file)
        .arg("--save-sent")
        .arg(&sent_file);
    let what = format!("smtplib send {tls} auth={auth}");
    let run = run_client(&what, &mut cmd, dir, &w.dovecot).await;
    run.assert_success(&w.dovecot);
    let out: serde_json::Value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: not JSON\n{}", run.report(&w.dovecot)));
    let context = format!("{what}: {out}");

    // The SASL exchange smtplib chose or was forced into.
    let expected_auth = match auth {
        // smtplib's preference: CRAM-MD5 (never offered), then PLAIN, with an initial response.
        "auto" | "plain" => "AUTH PLAIN +ir",
        "plain-no-ir" => "AUTH PLAIN",
        "login" => "AUTH LOGIN +ir",
        "login-no-ir" => "AUTH LOGIN",
        other => panic!("unknown auth {other}"),
    };
    let commands: Vec<&str> = out["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let tls_part: &[&str] = if tls == "implicit" {
        &[]
    } else {
        &["EHLO", "STARTTLS"]
    };
    let expected_commands: Vec<&str> = tls_part
        .iter()
        .copied()
        .chain(["EHLO", expected_auth, "MAIL", "RCPT", "DATA", "QUIT"])
        .collect();
    assert_eq!(commands, expected_commands, "{context}");
    let auth_offer = out["ehlo"]["auth"].as_str().unwrap_or_default().trim();
    assert_eq!(auth_offer, "PLAIN LOGIN", "{context}");
    assert!(out["ehlo"].get("8bitmime").is_some(), "{context}");
    assert!(out["ehlo"].get("starttls").is_none(), "{context}");

    // In alice's Maildir: what smtplib sent, body part byte for byte.
    let sent = std::fs::read(&sent_file).unwrap();
    let stored = w.delivered_with("alice", &format!("Message-ID: {message_id}"), &run);
    assert!(
        body_part(&stored) == body_part(&sent),
        "body part differs: {}\n{context}",
        difference(body_part(&stored), body_part(&sent))
    );
    let sent_headers = String::from_utf8_lossy(header_block(&sent)).into_owned();
    for line in sent_headers.split("\r\n").filter(|l| !l.is_empty()) {
        assert!(
            contains(header_block(&stored), line.as_bytes()),
            "header line {line:?} kept\n{}",
            String::from_utf8_lossy(header_block(&stored))
        );
    }

    // Read back through postern's IMAP side with imaplib.
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(smtplib_script())
        .arg("fetch")
        .args(["--port", &w.postern.imaps.port().to_string()])
        .arg("--ca")
        .arg(&w.postern.ca_path)
        .args(["--user", LOGIN, "--password", &w.password])
        .args(["--message-id", &message_id])
        .arg("--save-raw")
        .arg(&raw_file);
    let what = format!("imaplib fetch of {message_id}");
    let fetch = run_client(&what, &mut cmd, dir, &w.dovecot).await;
    fetch.assert_success(&w.dovecot);
    let read: serde_json::Value = serde_json::from_slice(&fetch.stdout)
        .unwrap_or_else(|e| panic!("{e}: not JSON\n{}", fetch.report(&w.dovecot)));
    let fetched = std::fs::read(&raw_file).unwrap();
    assert!(
        fetched == stored,
        "IMAP through postern returns the stored message byte for byte ({} vs {} bytes)",
        fetched.len(),
        stored.len()
    );
    assert_eq!(read["subject"], subject.as_str(), "{read}");
    // smtplib's send_message() writes body lines that start with "From " as ">From ".
    assert_eq!(
        read["body"].as_str().unwrap().replace("\r\n", "\n"),
        body.replace("\nFrom ", "\n>From "),
        "{read}"
    );
    let attachments = read["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1, "{read}");
    assert_eq!(attachments[0]["filename"], "data.bin", "{read}");
    assert_eq!(attachments[0]["size"], data.len(), "{read}");
    assert_eq!(
        attachments[0]["sha256"],
        sha256_hex(&data).as_str(),
        "{read}"
    );
}

/// smtplib over implicit TLS (`SMTP_SSL`): `login()` (AUTH PLAIN with an initial
/// response), then AUTH LOGIN forced, with the user name as initial response and after
/// both prompts. Each sends a UTF-8 + 1 MiB attachment message that reads back identical
/// through postern's IMAP side.
#[tokio::test(flavor = "multi_thread")]
async fn python_smtplib_over_implicit_tls_round_trips_through_imap() {
    let w = setup().await;
    for (n, auth) in ["auto", "login", "login-no-ir"].into_iter().enumerate() {
        smtplib_round_trip(&w, "implicit", auth, n).await;
    }
    assert_eq!(w.delivered("alice").len(), 3);
    assert_eq!(w.metric(accepted_series()), 3.0);
    w.postern.stop().await;
}

/// smtplib over STARTTLS (`SMTP` + `starttls(context=ctx)`): `login()`, then AUTH PLAIN
/// forced with and without an initial response (the latter answered after an empty 334).
#[tokio::test(flavor = "multi_thread")]
async fn python_smtplib_over_starttls_round_trips_through_imap() {
    let w = setup().await;
    for (n, auth) in ["auto", "plain", "plain-no-ir"].into_iter().enumerate() {
        smtplib_round_trip(&w, "starttls", auth, n).await;
    }
    assert_eq!(w.delivered("alice").len(), 3);
    assert_eq!(w.metric(accepted_series()), 3.0);
    w.postern.stop().await;
}

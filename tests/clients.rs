//! Real IMAP clients that nobody on this project wrote, driven through postern.
//!
//! The byte-level scripts in `tests/imap.rs` check what we think Outlook and Apple Mail
//! send; these tests run installed clients as child processes and let them speak their
//! own dialect of IMAP to postern, in front of a private Dovecot:
//!
//! - **curl** (`/usr/bin/curl`): LIST, a whole message by UID, the STARTTLS listener with
//!   `--ssl-reqd`, and refused logins (exit code 67, and the failure counted in metrics).
//! - **Python's imaplib** (`tests/clients/imaplib_client.py`, standard library only):
//!   implicit TLS and STARTTLS, LOGIN with the password typed with its spaces and
//!   AUTHENTICATE PLAIN answered after a continuation, ID before login, SEARCH and FETCH,
//!   and a 2 MiB APPEND that is read back byte-identical straight from Dovecot.
//! - **mbsync** (isync, `/usr/bin/mbsync`): a full pull of 20 messages up to 1 MiB
//!   through postern and then an incremental one, compared with the same pull made
//!   directly against Dovecot; and a push that creates a folder upstream and uploads
//!   into it, checked straight in Dovecot.
//!
//! Each test starts its own Dovecot (user `alice`, direct password
//! `alice-direct-password`) and postern (login `alice@example.test` with one app
//! password). Every client runs under [`CLIENT_DEADLINE`]; when one fails or hangs, the
//! panic carries its exit status, stdout, stderr and Dovecot's log. Assertions are about
//! content and exit codes, never about timing.

mod support;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use postern::store::Scope;
use sha2::{Digest, Sha256};
use support::client_run::{run_client, Run};
use support::postern::{metric, Postern};
use support::Dovecot;

const LOGIN: &str = "alice@example.test";
const DIRECT_PASSWORD: &str = "alice-direct-password";

const MESSAGE: &[u8] = b"From: Bob <bob@example.test>\r\n\
To: Alice <alice@example.test>\r\n\
Subject: Quarterly numbers\r\n\
Message-ID: <numbers-1@example.test>\r\n\
\r\n\
The numbers are in.\r\n";

/// One test's world: Dovecot, postern in front of it, alice's app password (display form,
/// with spaces) and a scratch directory for client configs and output.
struct World {
    dovecot: Dovecot,
    postern: Postern,
    password: String,
    scratch: tempfile::TempDir,
}

/// Dovecot with user `alice` holding `messages`; postern with login `alice@example.test`.
async fn setup(messages: &[Vec<u8>]) -> World {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", DIRECT_PASSWORD);
    for message in messages {
        dovecot.deliver("alice", message);
    }
    let postern = Postern::start(&dovecot).await;
    postern.add_user(LOGIN, "alice").await;
    let (_id, password) = postern.issue(LOGIN, &[Scope::Imap], None).await;
    assert!(
        password.contains(' '),
        "display form has spaces: {password}"
    );
    let scratch = tempfile::Builder::new()
        .prefix("postern-clients-")
        .tempdir()
        .expect("scratch dir");
    World {
        dovecot,
        postern,
        password,
        scratch,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A deterministic message of about `size` bytes: headers, then lines of pseudo-random
/// printable text (CRLF, at most 78 characters) with a line of UTF-8 every so often, so
/// that 8-bit bytes pass through too.
fn message(n: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Bob <bob@example.test>\r\n\
         To: Alice <alice@example.test>\r\n\
         Subject: Message number {n}\r\n\
         Message-ID: <message-{n}@example.test>\r\n\
         Date: Mon, 2 Jun 2025 10:{:02}:00 +0000\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         Body of message {n}.\r\n",
        n % 60
    )
    .into_bytes();
    const ALPHABET: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,;:-_()";
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (n as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut line = 0usize;
    while m.len() < size {
        line += 1;
        if line.is_multiple_of(50) {
            m.extend_from_slice("Grüße aus Köln, naïve café, Ελληνικά, 日本語 ✓\r\n".as_bytes());
            continue;
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = 20 + (state % 59) as usize;
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            m.push(ALPHABET[(state % ALPHABET.len() as u64) as usize]);
        }
        m.extend_from_slice(b"\r\n");
    }
    m
}

// ---------------------------------------------------------------------------------------
// curl

/// curl (verbose, so stderr shows the IMAP conversation) logging in to one of postern's
/// listeners as `user:password`, trusting postern's CA; `localhost:port` resolves to
/// 127.0.0.1, where postern listens.
fn curl(postern: &Postern, port: u16, user_password: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("/usr/bin/curl");
    cmd.arg("--silent")
        .arg("--show-error")
        .arg("--verbose")
        .arg("--max-time")
        .arg("50")
        .arg("--cacert")
        .arg(&postern.ca_path)
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg("--user")
        .arg(user_password);
    cmd
}

/// curl over implicit TLS: the LIST it gets after AUTHENTICATE PLAIN (SASL-IR) shows
/// INBOX, and fetching `INBOX;UID=1` returns the delivered message byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn curl_lists_and_fetches_over_implicit_tls() {
    let w = setup(&[MESSAGE.to_vec()]).await;
    let port = w.postern.imaps.port();
    let user = format!("{LOGIN}:{}", w.password);

    let list = run_client(
        "curl LIST",
        curl(&w.postern, port, &user).arg(format!("imaps://localhost:{port}/")),
        w.scratch.path(),
        &w.dovecot,
    )
    .await;
    list.assert_success(&w.dovecot);
    assert!(
        list.stdout_text()
            .lines()
            .any(|l| l.starts_with("* LIST") && l.ends_with(" INBOX")),
        "{}",
        list.report(&w.dovecot)
    );
    // curl took the SASL-IR path postern advertised.
    let verbose = String::from_utf8_lossy(&list.stderr);
    assert!(
        verbose.contains("AUTHENTICATE PLAIN "),
        "{}",
        list.report(&w.dovecot)
    );

    let fetch = run_client(
        "curl FETCH",
        curl(&w.postern, port, &user).arg(format!("imaps://localhost:{port}/INBOX;UID=1")),
        w.scratch.path(),
        &w.dovecot,
    )
    .await;
    fetch.assert_success(&w.dovecot);
    assert_eq!(
        fetch.stdout_text(),
        String::from_utf8_lossy(MESSAGE),
        "{}",
        fetch.report(&w.dovecot)
    );
    w.postern.stop().await;
}

/// curl over the STARTTLS listener with `imap://` and `--ssl-reqd` (so it must upgrade or
/// fail), connecting to 127.0.0.1 and checking the certificate's IP address entry: the
/// STARTTLS upgrade comes before AUTHENTICATE, and the message arrives byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn curl_fetches_over_starttls_with_ssl_reqd() {
    let w = setup(&[MESSAGE.to_vec()]).await;
    let port = w.postern.imap.port();
    let mut cmd = curl(&w.postern, port, &format!("{LOGIN}:{}", w.password));
    cmd.arg("--ssl-reqd")
        .arg(format!("imap://127.0.0.1:{port}/INBOX;UID=1"));
    let fetch = run_client(
        "curl STARTTLS FETCH",
        &mut cmd,
        w.scratch.path(),
        &w.dovecot,
    )
    .await;
    fetch.assert_success(&w.dovecot);
    assert_eq!(
        fetch.stdout_text(),
        String::from_utf8_lossy(MESSAGE),
        "{}",
        fetch.report(&w.dovecot)
    );
    // The upgrade happened, and before the login.
    let verbose = String::from_utf8_lossy(&fetch.stderr);
    let upgraded = verbose.find("< A002 OK Begin TLS negotiation now");
    let login = verbose.find("> A004 AUTHENTICATE PLAIN ");
    assert!(
        upgraded.is_some() && login.is_some() && upgraded < login,
        "{}",
        fetch.report(&w.dovecot)
    );
    w.postern.stop().await;
}

/// Refused logins: a wrong app password, and alice's real Dovecot password (postern never
/// accepts a primary password), both make curl exit 67 ("login denied") and are counted
/// as bad_password in the metrics; an unknown login is counted as unknown_user. The right
/// password still works afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn curl_is_denied_a_wrong_password_and_metrics_count_it() {
    let w = setup(&[MESSAGE.to_vec()]).await;
    let port = w.postern.imaps.port();
    let url = format!("imaps://localhost:{port}/");
    let attempts = [
        ("wrong app password", format!("{LOGIN}:abcd efgh ijkl mnop")),
        ("primary password", format!("{LOGIN}:{DIRECT_PASSWORD}")),
        ("unknown login", format!("alice:{}", w.password)),
    ];
    for (what, user) in &attempts {
        let run = run_client(
            &format!("curl with {what}"),
            curl(&w.postern, port, user).arg(&url),
            w.scratch.path(),
            &w.dovecot,
        )
        .await;
        assert_eq!(run.status.code(), Some(67), "{}", run.report(&w.dovecot));
        assert!(
            !run.stdout_text().contains("INBOX"),
            "{}",
            run.report(&w.dovecot)
        );
    }
    let metrics = w.postern.metrics();
    let series = |result: &str| {
        format!("postern_auth_attempts_total{{mechanism=\"plain\",protocol=\"imap\",result=\"{result}\"}}")
    };
    assert_eq!(metric(&metrics, &series("bad_password")), 2.0, "{metrics}");
    assert_eq!(metric(&metrics, &series("unknown_user")), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, &series("ok")), 0.0, "{metrics}");

    let ok = run_client(
        "curl with the right password",
        curl(&w.postern, port, &format!("{LOGIN}:{}", w.password)).arg(&url),
        w.scratch.path(),
        &w.dovecot,
    )
    .await;
    ok.assert_success(&w.dovecot);
    assert!(
        ok.stdout_text().contains("INBOX"),
        "{}",
        ok.report(&w.dovecot)
    );
    assert_eq!(metric(&w.postern.metrics(), &series("ok")), 1.0);
    w.postern.stop().await;
}

// ---------------------------------------------------------------------------------------
// Python imaplib

fn imaplib_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/imaplib_client.py")
}

/// One run of `python3 tests/clients/imaplib_client.py`: where it connects and how.
struct Imaplib<'a> {
    port: u16,
    /// The CA to trust for "localhost".
    ca: &'a Path,
    /// `implicit` (IMAP4_SSL) or `starttls` (IMAP4 + starttls()).
    tls: &'a str,
    /// `login` (LOGIN command) or `plain` (AUTHENTICATE PLAIN).
    auth: &'a str,
    user: &'a str,
    password: &'a str,
    /// Offer TLS 1.2 at most (as Outlook 2016 on older Windows does).
    max_tls12: bool,
}

impl<'a> Imaplib<'a> {
    /// alice through postern's listener of kind `tls`, with her app password (spaces in).
    fn postern(w: &'a World, tls: &'a str, auth: &'a str) -> Self {
        let port = match tls {
            "implicit" => w.postern.imaps.port(),
            _ => w.postern.imap.port(),
        };
        Imaplib {
            port,
            ca: &w.postern.ca_path,
            tls,
            auth,
            user: LOGIN,
            password: &w.password,
            max_tls12: false,
        }
    }

    /// alice straight to Dovecot's imaps port with her own password, no postern.
    fn dovecot(w: &'a World) -> Self {
        Imaplib {
            port: w.dovecot.imaps_port,
            ca: &w.dovecot.ca_path,
            tls: "implicit",
            auth: "login",
            user: "alice",
            password: DIRECT_PASSWORD,
            max_tls12: false,
        }
    }

    /// Runs the script with `action` (`read [MAILBOX]` or `append FILE`); panics unless it
    /// exits 0; returns the JSON object it printed.
    async fn run(&self, w: &World, action: &[&str]) -> serde_json::Value {
        let what = format!(
            "imaplib {} {} {} on port {} {action:?}",
            self.tls, self.auth, self.user, self.port
        );
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(imaplib_script())
            .arg("localhost")
            .arg(self.port.to_string())
            .arg(self.ca)
            .arg(self.tls)
            .arg(self.auth)
            .arg(self.user)
            .arg(self.password)
            .args(action);
        if self.max_tls12 {
            cmd.env("IMAPLIB_MAX_TLS", "1.2");
        }
        let run = run_client(&what, &mut cmd, w.scratch.path(), &w.dovecot).await;
        run.assert_success(&w.dovecot);
        serde_json::from_slice(&run.stdout)
            .unwrap_or_else(|e| panic!("{e}: not JSON\n{}", run.report(&w.dovecot)))
    }
}

/// The messages of an imaplib "read" result, in UID order: (uid, content).
fn read_messages(out: &serde_json::Value) -> Vec<(u64, Vec<u8>)> {
    out["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {}", brief(out)))
        .iter()
        .map(|m| {
            let content = base64::engine::general_purpose::STANDARD
                .decode(m["base64"].as_str().expect("content in script output"))
                .expect("base64 from script");
            assert_eq!(m["sha256"].as_str(), Some(sha256_hex(&content).as_str()));
            (m["uid"].as_u64().unwrap(), content)
        })
        .collect()
}

/// The script's output without message contents, for assertion messages.
fn brief(out: &serde_json::Value) -> String {
    let mut out = out.clone();
    if let Some(messages) = out["messages"].as_array_mut() {
        for m in messages {
            m.as_object_mut().unwrap().remove("base64");
        }
    }
    if let Some(m) = out["fetched_back"].as_object_mut() {
        m.remove("base64");
    }
    out.to_string()
}

/// imaplib reads the mailbox through both listeners with both ways of logging in:
/// implicit TLS + LOGIN (the password typed with its spaces, so imaplib quotes it) and
/// STARTTLS + AUTHENTICATE PLAIN (answered after the continuation, no SASL-IR), the two
/// other combinations, and once more over TLS 1.2. Every run sees exactly the delivered
/// messages, byte for byte, and the ID it sent before login reached Dovecot.
#[tokio::test(flavor = "multi_thread")]
async fn python_imaplib_reads_the_mailbox_over_both_listeners_and_both_logins() {
    let second = message(2, 40_000);
    let w = setup(&[MESSAGE.to_vec(), second.clone()]).await;
    let expected = vec![(1, MESSAGE.to_vec()), (2, second)];

    let mut runs = Vec::new();
    for tls in ["implicit", "starttls"] {
        for auth in ["login", "plain"] {
            runs.push(Imaplib::postern(&w, tls, auth));
        }
    }
    runs.push(Imaplib {
        max_tls12: true,
        ..Imaplib::postern(&w, "implicit", "login")
    });
    for client in runs {
        let out = client.run(&w, &["read"]).await;
        let context = format!(
            "{} {} max_tls12={}: {}",
            client.tls,
            client.auth,
            client.max_tls12,
            brief(&out)
        );
        assert_eq!(out["exists"], 2, "{context}");
        assert!(read_messages(&out) == expected, "{context}");
        assert!(
            out["login"]
                .as_str()
                .unwrap()
                .starts_with("[CAPABILITY IMAP4rev1"),
            "the login's OK carries the upstream capabilities: {context}"
        );
        assert_eq!(
            out["id"],
            serde_json::json!(["(\"name\" \"postern\")"]),
            "{context}"
        );
        let caps: Vec<&str> = out["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert!(caps.contains(&"AUTH=PLAIN"), "{context}");
        assert!(!caps.contains(&"LOGINDISABLED"), "{context}");
        if client.tls == "starttls" {
            let before = out["capabilities_before_tls"].to_string();
            assert!(
                before.contains("\"STARTTLS\"") && before.contains("\"LOGINDISABLED\""),
                "{context}"
            );
            assert!(!before.contains("AUTH="), "{context}");
        }
        if client.max_tls12 {
            assert_eq!(out["tls_version"], "TLSv1.2", "{context}");
        }
    }
    let log = w.dovecot.all_logs();
    assert!(
        log.contains("python-imaplib"),
        "imaplib's ID fields were forwarded upstream:\n{log}"
    );
    w.postern.stop().await;
}

/// imaplib APPENDs a ~2 MiB message (one synchronizing literal, 8-bit text included)
/// through postern, fetches it back through postern by its APPENDUID, and then reads it
/// directly from Dovecot as alice with her own password: identical bytes all three ways,
/// so the literal went upstream intact.
#[tokio::test(flavor = "multi_thread")]
async fn python_imaplib_appends_2_mib_that_lands_upstream_byte_identical() {
    let w = setup(&[MESSAGE.to_vec()]).await;
    let big = message(7, 2 * 1024 * 1024 + 123);
    let file = w.scratch.path().join("big.eml");
    std::fs::write(&file, &big).expect("write big message");

    let out = Imaplib::postern(&w, "implicit", "login")
        .run(&w, &["append", file.to_str().unwrap()])
        .await;
    let context = brief(&out);
    assert!(
        out["append"].as_str().unwrap().starts_with("[APPENDUID "),
        "{context}"
    );
    assert_eq!(out["fetched_back"]["uid"], 2, "{context}");
    assert_eq!(out["fetched_back"]["size"], big.len(), "{context}");
    assert_eq!(
        out["fetched_back"]["sha256"],
        sha256_hex(&big).as_str(),
        "{context}"
    );

    // Straight from Dovecot, without postern in the way.
    let direct = Imaplib::dovecot(&w).run(&w, &["read"]).await;
    let upstream = read_messages(&direct);
    assert!(
        upstream == vec![(1, MESSAGE.to_vec()), (2, big)],
        "the appended message is in Dovecot, byte-identical: {}",
        brief(&direct)
    );
    w.postern.stop().await;
}

// ---------------------------------------------------------------------------------------
// mbsync

/// mbsync's channel options for a full download (far side to the local Maildirs).
const PULL: &str = "Create Near\nSync Pull";
/// ... and for an upload (local Maildirs to the far side).
const PUSH: &str = "Create Far\nSync Push";

/// Writes an mbsync config with one channel, `sync`, between every folder (`Patterns *`)
/// of `user`@localhost:`port` (implicit TLS, certificate checked against `ca` and
/// "localhost", `AuthMechs mech`) and Maildirs under `<root>/mail`, sync state kept in
/// those Maildirs, `direction` being [`PULL`] or [`PUSH`]. Returns the config's path.
fn mbsync_config(
    root: &Path,
    port: u16,
    ca: &Path,
    (user, pass): (&str, &str),
    mech: &str,
    direction: &str,
) -> PathBuf {
    std::fs::create_dir_all(root.join("mail")).expect("mkdir mbsync mail");
    let mail = root.join("mail");
    let config = format!(
        "IMAPAccount account\n\
         Host localhost\n\
         Port {port}\n\
         User {user}\n\
         Pass \"{pass}\"\n\
         SSLType IMAPS\n\
         CertificateFile {ca}\n\
         AuthMechs {mech}\n\
         Timeout 50\n\
         \n\
         IMAPStore far\n\
         Account account\n\
         \n\
         MaildirStore near\n\
         Path {mail}/\n\
         Inbox {mail}/INBOX\n\
         SubFolders Verbatim\n\
         \n\
         Channel sync\n\
         Far :far:\n\
         Near :near:\n\
         Patterns *\n\
         {direction}\n\
         SyncState *\n",
        ca = ca.display(),
        mail = mail.display(),
    );
    let path = root.join("mbsyncrc");
    std::fs::write(&path, config).expect("write mbsyncrc");
    path
}

/// Runs `mbsync -V -c <config> sync` with HOME in `root`; panics unless it exits 0.
async fn mbsync(w: &World, what: &str, root: &Path, config: &Path) -> Run {
    let mut cmd = tokio::process::Command::new("/usr/bin/mbsync");
    cmd.env("HOME", root)
        .arg("-V")
        .arg("-c")
        .arg(config)
        .arg("sync");
    let run = run_client(what, &mut cmd, w.scratch.path(), &w.dovecot).await;
    run.assert_success(&w.dovecot);
    run
}

/// The messages mbsync stored under `<root>/mail/INBOX` (cur and new), as sorted
/// contents without mbsync's `X-TUID` line (see [`without_tuid`]). mbsync stores lines
/// ending in LF.
fn maildir_contents(root: &Path) -> Vec<Vec<u8>> {
    let mut contents = Vec::new();
    for sub in ["cur", "new"] {
        let dir = root.join("mail/INBOX").join(sub);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            contents.push(without_tuid(&std::fs::read(entry.unwrap().path()).unwrap()));
        }
    }
    contents.sort();
    contents
}

/// `message` without the `X-TUID: <random>` line that mbsync adds at the end of the
/// header of every message it copies (its own bookkeeping, different on every run).
fn without_tuid(message: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(message).expect("test messages are UTF-8");
    let mut out = String::new();
    let mut in_header = true;
    for line in text.split_inclusive('\n') {
        if in_header && (line == "\n" || line == "\r\n") {
            in_header = false;
        }
        if !(in_header && line.starts_with("X-TUID: ")) {
            out.push_str(line);
        }
    }
    out.into_bytes()
}

/// Panics, describing the first difference, unless two sorted lists of messages are equal.
fn assert_same_messages(what: &str, got: &[Vec<u8>], expected: &[Vec<u8>]) {
    if got == expected {
        return;
    }
    let mut why = format!(
        "{what}: {} messages, expected {}\n",
        got.len(),
        expected.len()
    );
    if let Some((g, e)) = got.iter().zip(expected).find(|(g, e)| g != e) {
        let at = g.iter().zip(e.iter()).take_while(|(a, b)| a == b).count();
        let around = |m: &[u8]| {
            let from = at.saturating_sub(40);
            String::from_utf8_lossy(&m[from..(at + 80).min(m.len())]).into_owned()
        };
        why += &format!(
            "first difference: message of {} bytes vs {} bytes, at byte {at}:\n got: {:?}\n expected: {:?}\n",
            g.len(),
            e.len(),
            around(g),
            around(e)
        );
    }
    panic!("{why}");
}

fn crlf_to_lf(message: &[u8]) -> Vec<u8> {
    String::from_utf8(message.to_vec())
        .expect("test messages are UTF-8")
        .replace("\r\n", "\n")
        .into_bytes()
}

/// mbsync pulls 20 messages (150 bytes to 1 MiB) through postern with SASL PLAIN, then
/// one more message incrementally with the IMAP LOGIN command (state reused, a second
/// session); a separate pull made directly against Dovecot as alice yields the same
/// message contents, and both equal what was delivered.
#[tokio::test(flavor = "multi_thread")]
async fn mbsync_through_postern_matches_mbsync_straight_to_dovecot() {
    let sizes = [
        150, 600, 1_000, 2_000, 3_000, 4_096, 5_000, 8_000, 10_000, 16_384, 20_000, 32_000, 50_000,
        64_000, 100_000, 128_000, 200_000, 300_000, 500_000, 1_048_576,
    ];
    let mut delivered: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(n, &size)| message(100 + n, size))
        .collect();
    let w = setup(&delivered).await;
    let via_postern = w.scratch.path().join("via-postern");
    let direct = w.scratch.path().join("direct");

    let config = mbsync_config(
        &via_postern,
        w.postern.imaps.port(),
        &w.postern.ca_path,
        (LOGIN, &w.password),
        "PLAIN",
        PULL,
    );
    let first = mbsync(&w, "mbsync through postern (PLAIN)", &via_postern, &config).await;
    let expected: Vec<Vec<u8>> = {
        let mut e: Vec<_> = delivered.iter().map(|m| crlf_to_lf(m)).collect();
        e.sort();
        e
    };
    let text = first.stdout_text() + &String::from_utf8_lossy(&first.stderr);
    assert!(
        text.contains("Authenticating with SASL mechanism PLAIN"),
        "first run used SASL PLAIN:\n{text}"
    );
    let got = maildir_contents(&via_postern);
    assert_eq!(got.len(), sizes.len(), "{}", first.report(&w.dovecot));
    assert_same_messages("mbsync through postern", &got, &expected);

    // A new message, then an incremental pull with the LOGIN command.
    let late = message(999, 12_345);
    w.dovecot.deliver("alice", &late);
    delivered.push(late);
    let config = mbsync_config(
        &via_postern,
        w.postern.imaps.port(),
        &w.postern.ca_path,
        (LOGIN, &w.password),
        "LOGIN",
        PULL,
    );
    let second = mbsync(&w, "mbsync through postern (LOGIN)", &via_postern, &config).await;
    let text = second.stdout_text() + &String::from_utf8_lossy(&second.stderr);
    assert!(
        !text.contains("Authenticating with SASL"),
        "second run used the LOGIN command:\n{text}"
    );
    let got = maildir_contents(&via_postern);
    assert_eq!(got.len(), delivered.len(), "{}", second.report(&w.dovecot));

    let config = mbsync_config(
        &direct,
        w.dovecot.imaps_port,
        &w.dovecot.ca_path,
        ("alice", DIRECT_PASSWORD),
        "PLAIN",
        PULL,
    );
    mbsync(&w, "mbsync straight to Dovecot", &direct, &config).await;
    let straight = maildir_contents(&direct);
    assert_eq!(straight.len(), delivered.len());
    assert_same_messages(
        "mbsync through postern vs straight to Dovecot",
        &got,
        &straight,
    );
    let mut expected: Vec<_> = delivered.iter().map(|m| crlf_to_lf(m)).collect();
    expected.sort();
    assert!(
        got == expected,
        "stored contents differ from what was delivered"
    );

    let metrics = w.postern.metrics();
    for mechanism in ["plain", "login"] {
        assert_eq!(
            metric(
                &metrics,
                &format!(
                    "postern_auth_attempts_total{{mechanism=\"{mechanism}\",protocol=\"imap\",result=\"ok\"}}"
                )
            ),
            1.0,
            "{metrics}"
        );
    }
    w.postern.stop().await;
}

/// mbsync pushes a local folder `Sent` (3 messages, up to 1 MiB) through postern with
/// `Create Far`: it CREATEs the folder upstream and APPENDs each message with a LITERAL+
/// literal. Read straight from Dovecot by imaplib, `Sent` holds exactly those messages
/// (with CRLF line ends, as mbsync uploads them).
#[tokio::test(flavor = "multi_thread")]
async fn mbsync_pushes_a_new_folder_upstream_through_postern() {
    let w = setup(&[MESSAGE.to_vec()]).await;
    let root = w.scratch.path().join("push");
    let mut sent: Vec<Vec<u8>> = [700, 70_000, 1_048_576]
        .iter()
        .enumerate()
        .map(|(n, &size)| message(200 + n, size))
        .collect();
    for folder in ["INBOX", "Sent"] {
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(root.join("mail").join(folder).join(sub)).unwrap();
        }
    }
    for (n, m) in sent.iter().enumerate() {
        let path = root.join(format!("mail/Sent/cur/{n}.postern-test:2,S"));
        std::fs::write(path, crlf_to_lf(m)).unwrap();
    }
    let config = mbsync_config(
        &root,
        w.postern.imaps.port(),
        &w.postern.ca_path,
        (LOGIN, &w.password),
        "PLAIN",
        PUSH,
    );
    let run = mbsync(&w, "mbsync push through postern", &root, &config).await;
    let text = run.stdout_text() + &String::from_utf8_lossy(&run.stderr);
    assert!(
        text.contains("Creating far side box Sent"),
        "{}",
        run.report(&w.dovecot)
    );

    let direct = Imaplib::dovecot(&w).run(&w, &["read", "Sent"]).await;
    let mut upstream: Vec<Vec<u8>> = read_messages(&direct)
        .into_iter()
        .map(|(_, m)| without_tuid(&m))
        .collect();
    upstream.sort();
    sent.sort();
    assert_same_messages("Sent, straight from Dovecot", &upstream, &sent);
    w.postern.stop().await;
}

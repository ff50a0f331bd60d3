//! The upstream's certificate, as new users set it up: a self-signed one made with
//! `openssl req -x509` (a CA certificate) trusted by putting it in `ca_file`, a CA-signed
//! one, one pinned by its SHA-256 fingerprint, and the ones postern must refuse (expired,
//! for another name, from a CA nobody trusts), each explained in one plain sentence in the
//! log and by `postern check-config --probe`. Against a real Dovecot serving each.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use postern::store::Scope;
use support::certs::TestCa;
use support::dovecot::{DovecotOptions, TlsFiles};
use support::imap_client::ImapClient;
use support::postern::{logged_lines, Options, Postern};
use support::smtp_client::SmtpClient;
use support::Dovecot;

const UNAVAILABLE: &str = "NO [UNAVAILABLE] Service temporarily unavailable, try again later";

/// Dovecot serving `tls`, with user alice.
fn dovecot_serving(tls: TlsFiles) -> Dovecot {
    let dovecot = Dovecot::start_with(DovecotOptions {
        tls: Some(tls),
        ..DovecotOptions::default()
    });
    dovecot.add_user("alice", "alice-direct-password");
    dovecot
}

/// postern in front of `dovecot` (its `ca_file` is `dovecot.ca_path`), with an app
/// password for alice.
async fn postern_for(dovecot: &Dovecot, upstream_extra: String) -> (Postern, String) {
    let postern = Postern::start_with(
        dovecot,
        Options {
            upstream_extra,
            ..Options::default()
        },
    )
    .await;
    postern.add_user("alice@example.test", "alice").await;
    let (_, password) = postern
        .issue("alice@example.test", &[Scope::Imap, Scope::Smtp], None)
        .await;
    (postern, password)
}

async fn imap_login(postern: &Postern, password: &str) -> String {
    let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let reply = client
        .command("a1", &format!("LOGIN alice@example.test \"{password}\""))
        .await;
    reply.last().cloned().unwrap_or_default()
}

async fn smtp_auth(postern: &Postern, password: &str) -> String {
    use base64::Engine;
    let (mut client, _) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
    client.command("EHLO client.example").await;
    let response = base64::engine::general_purpose::STANDARD
        .encode(format!("\0alice@example.test\0{password}"));
    client.command(&format!("AUTH PLAIN {response}")).await
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `openssl req -x509`, as set-up guides write it: a self-signed certificate for
/// localhost that OpenSSL's default configuration marks as a CA (`CA:TRUE`).
fn openssl_self_signed(dir: &Path) -> TlsFiles {
    let (cert, key) = (dir.join("dovecot.pem"), dir.join("dovecot.key"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(status.status.success(), "openssl: {}", text(&status));
    let shown = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        text(&shown).contains("CA:TRUE"),
        "the guide's certificate is a CA certificate: {}",
        text(&shown)
    );
    TlsFiles {
        ca: cert.clone(),
        cert,
        key,
    }
}

/// The certificate a guide makes, in `ca_file`: trusted exactly as it is. (It used to
/// fail every login with `CaUsedAsEndEntity`.)
#[tokio::test(flavor = "multi_thread")]
async fn a_self_signed_certificate_in_ca_file_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let dovecot = dovecot_serving(openssl_self_signed(dir.path()));
    let (postern, password) = postern_for(&dovecot, String::new()).await;
    let login = imap_login(&postern, &password).await;
    assert!(login.starts_with("a1 OK"), "{login}");
    let auth = smtp_auth(&postern, &password).await;
    assert!(auth.starts_with("235 "), "{auth}");
    let probe = postern.cli(&["check-config", "--probe"]);
    assert!(probe.status.success(), "{}", text(&probe));
    assert!(
        text(&probe).contains("[upstream.imap]") && text(&probe).contains("IMAP greeting ok"),
        "{}",
        text(&probe)
    );
    postern.stop().await;
}

/// A certificate from a CA in `ca_file` is trusted as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_ca_signed_certificate_is_trusted() {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    let (postern, password) = postern_for(&dovecot, String::new()).await;
    let login = imap_login(&postern, &password).await;
    assert!(login.starts_with("a1 OK"), "{login}");
    let probe = postern.cli(&["check-config", "--probe"]);
    assert!(probe.status.success(), "{}", text(&probe));
    assert!(text(&probe).contains("AUTH PLAIN"), "{}", text(&probe));
    postern.stop().await;
}

/// An expired certificate and one for another name are refused, each with a sentence
/// that says so, in the log and from `check-config --probe`; the client gets the
/// temporary failure.
#[tokio::test(flavor = "multi_thread")]
async fn expired_and_misnamed_certificates_are_refused_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let expired = ca.issue_with(dir.path(), "expired", &[], |params| {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 31);
    });
    let misnamed = ca.issue(dir.path(), "misnamed", &["mail.internal"]);
    for ((cert, key), sentence) in [
        (expired, "the upstream's certificate expired on 2021-01-31"),
        (
            misnamed,
            "the upstream's certificate is for mail.internal, not localhost: set server_name",
        ),
    ] {
        let dovecot = dovecot_serving(TlsFiles {
            ca: ca.ca_path.clone(),
            cert,
            key,
        });
        let (postern, password) = postern_for(&dovecot, String::new()).await;
        assert_eq!(
            imap_login(&postern, &password).await,
            format!("a1 {UNAVAILABLE}")
        );
        assert!(
            logged_lines(sentence)
                .iter()
                .any(|l| l.contains("upstream login failed")),
            "the log explains: {sentence}"
        );
        let probe = postern.cli(&["check-config", "--probe"]);
        assert!(!probe.status.success());
        assert!(text(&probe).contains(sentence), "{}", text(&probe));
        assert!(!text(&probe).contains("OtherError"), "{}", text(&probe));
        postern.stop().await;
    }
}

/// A certificate from a CA that is not in `ca_file` is refused with the fingerprint to
/// pin; pinned with `pin_sha256`, the same certificate is trusted.
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_certificate_is_trusted_once_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let stranger = TestCa::new(dir.path());
    let (cert, key) = stranger.issue(dir.path(), "stranger", &[]);
    let trusted_dir = tempfile::tempdir().unwrap();
    let trusted = TestCa::new(trusted_dir.path());
    // postern's ca_file names a CA that did not sign what Dovecot serves.
    let dovecot = dovecot_serving(TlsFiles {
        ca: trusted.ca_path.clone(),
        cert,
        key,
    });
    let (postern, password) = postern_for(&dovecot, String::new()).await;
    assert_eq!(
        imap_login(&postern, &password).await,
        format!("a1 {UNAVAILABLE}")
    );
    let probe = postern.cli(&["check-config", "--probe"]);
    assert!(!probe.status.success());
    let said = text(&probe);
    assert!(
        said.contains("is signed by a CA that is not trusted: set ca_file"),
        "{said}"
    );
    let pin = said
        .split("pin_sha256 = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no fingerprint offered: {said}"))
        .to_string();
    postern.stop().await;

    let (postern, password) = postern_for(&dovecot, format!("pin_sha256 = [\"{pin}\"]")).await;
    let login = imap_login(&postern, &password).await;
    assert!(login.starts_with("a1 OK"), "{login}");
    let probe = postern.cli(&["check-config", "--probe"]);
    assert!(probe.status.success(), "{}", text(&probe));
    postern.stop().await;
}

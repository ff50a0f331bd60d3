//! The certificates postern serves, seen by `openssl s_client`: an ECDSA and an RSA
//! certificate for the same names side by side (a TLS 1.2 client offering only RSA
//! signature schemes, as old Outlook on Windows 7 does, gets the RSA chain; a TLS 1.3
//! client the ECDSA one), another name's certificate chosen by SNI, and the default for a
//! client that names none. Each chain is verified against its issuer.

mod support;

use std::process::Command;

use support::openssl::{s_client, subject};
use support::postern::{Options, Postern};
use support::{Dovecot, TestCa};

#[tokio::test(flavor = "multi_thread")]
async fn key_types_side_by_side_and_names_by_sni() {
    let dir = tempfile::tempdir().unwrap();
    // An RSA certificate for the default certificate's names, made as admins make them.
    let rsa = dir.path().join("rsa.pem");
    let rsa_key = dir.path().join("rsa-key.pem");
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args(["-subj", "/CN=postern-rsa"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&rsa_key)
        .arg("-out")
        .arg(&rsa)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    // Another name, from a CA of its own.
    let other_ca = TestCa::new(dir.path());
    let (other, other_key) = other_ca.issue(dir.path(), "postern-other", &["mail.other.test"]);

    let dovecot = Dovecot::start();
    let options = Options {
        extra_config: format!(
            "[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n\n\
             [[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            rsa.display(),
            rsa_key.display(),
            other.display(),
            other_key.display()
        ),
        ..Options::default()
    };
    let postern = Postern::start_with(&dovecot, options).await;
    let port = postern.imaps.port();
    let ecdsa_ca = &postern.ca_path;

    let old_outlook = s_client(
        port,
        &rsa,
        &[
            "-tls1_2",
            "-servername",
            "localhost",
            "-sigalgs",
            "RSA-PSS+SHA256:RSA+SHA256:RSA+SHA1",
        ],
    );
    assert!(
        subject(&old_outlook).contains("postern-rsa"),
        "{old_outlook}"
    );
    assert!(old_outlook.contains("Protocol  : TLSv1.2"), "{old_outlook}");

    let modern = s_client(port, ecdsa_ca, &["-tls1_3", "-servername", "localhost"]);
    assert_eq!(subject(&modern), "subject=CN = postern", "{modern}");
    assert!(modern.contains("Peer signature type: ECDSA"), "{modern}");

    let other_name = s_client(port, &other_ca.ca_path, &["-servername", "mail.other.test"]);
    assert!(
        subject(&other_name).contains("postern-other"),
        "{other_name}"
    );

    let nameless = s_client(port, ecdsa_ca, &["-noservername"]);
    assert_eq!(subject(&nameless), "subject=CN = postern", "{nameless}");
    let unknown = s_client(port, ecdsa_ca, &["-servername", "unknown.test"]);
    assert_eq!(subject(&unknown), "subject=CN = postern", "{unknown}");
    postern.stop().await;
}

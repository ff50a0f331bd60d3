//! `openssl s_client` as a TLS client: which certificate a server shows, and whether it
//! verifies.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// `openssl s_client` against loopback `port`, trusting `ca`, saying one IMAP command;
/// its output. Panics unless the chain verifies and the IMAP greeting comes through.
pub fn s_client(port: u16, ca: &Path, args: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-ign_eof"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a1 LOGOUT\r\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(
        text.contains("* OK"),
        "the IMAP greeting came through: {text}"
    );
    text
}

/// The leaf's subject line as s_client prints it.
pub fn subject(text: &str) -> &str {
    text.lines()
        .find(|line| line.starts_with("subject="))
        .unwrap_or_else(|| panic!("no subject in {text}"))
}

/// The leaf certificate s_client printed, PEM.
pub fn leaf(text: &str) -> String {
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text[begin..]
        .find("-----END CERTIFICATE-----")
        .expect("its end")
        + begin;
    text[begin..end].to_string()
}

//! Upstreams that take OAuth 2.0 tokens instead of passwords, end to end: a real identity
//! provider (npm oidc-provider, `tests/oauth/provider.mjs`) issues the tokens postern asks
//! for, and a real Dovecot validates them (XOAUTH2, OAUTHBEARER; `tests/oauth/
//! dovecot-oauth2.md`), while the clients log in to postern with app passwords.
//!
//! - Microsoft 365's shape: one client-credentials app token serves every mailbox, asked
//!   for once however many logins wait; the app proves itself with a secret or with an
//!   assertion its certificate's key signs.
//! - Google's shape: a JWT bearer grant per user, signed by a service account's JSON key.
//! - The identity provider down, failing or refusing postern is the client's temporary
//!   failure (`NO [UNAVAILABLE]`, `454 4.7.0`), never a wrong password; a token the
//!   upstream refuses is dropped and asked for once more.
//! - `postern oauth2 test` and `check-config` say what is wrong in one sentence.

mod support;

use std::sync::Arc;

use base64::Engine;
use support::dovecot::{DovecotOAuth2, DovecotOptions};
use support::imap_client::ImapClient;
use support::oauth::{IdentityProvider, M365_APP, M365_CERT_APP, SERVICE_ACCOUNT};
use support::postern::{metric, remember_secrets, Options, Postern};
use support::smtp_client::SmtpClient;
use support::Dovecot;

/// Dovecot that accepts the provider's tokens, with users alice and bob.
fn dovecot(idp: &IdentityProvider) -> Dovecot {
    let dovecot = Dovecot::start_with(DovecotOptions {
        oauth2: Some(DovecotOAuth2 {
            issuer: idp.issuer.clone(),
            keys_dir: idp.keys_dir.clone(),
        }),
        ..DovecotOptions::default()
    });
    for user in ["alice", "bob"] {
        dovecot.add_user(user, &format!("{user}-direct-password"));
    }
    dovecot
}

/// postern in front of `dovecot`, logging in upstream with `auth` and the provider
/// section `section` (named `idp`).
async fn postern(dovecot: &Dovecot, auth: &'static str, section: String) -> Postern {
    let postern = Postern::start_with(
        dovecot,
        Options {
            upstream_auth: auth,
            upstream_extra: "oauth2 = \"idp\"".to_string(),
            extra_config: format!("[oauth2.idp]\n{section}"),
            ..Options::default()
        },
    )
    .await;
    for user in ["alice", "bob"] {
        postern
            .add_user(&format!("{user}@example.test"), user)
            .await;
    }
    postern
}

/// The Microsoft 365 preset, pointed at the test provider, authenticated by the secret.
fn microsoft365(idp: &IdentityProvider) -> String {
    format!(
        "preset = \"microsoft365\"\ntenant = \"contoso.onmicrosoft.com\"\n\
         token_url = \"{}\"\nclient_id = \"{M365_APP}\"\nclient_secret_file = \"{}\"\n",
        idp.token_url,
        idp.secret_file.display()
    )
}

/// An IMAP LOGIN through postern: the tagged reply.
async fn imap_login(postern: &Postern, login: &str, password: &str) -> String {
    let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let reply = client
        .command("a1", &format!("LOGIN {login} \"{password}\""))
        .await;
    reply.last().cloned().unwrap_or_default()
}

/// AUTH PLAIN through postern's submission listener: the reply.
async fn smtp_auth(postern: &Postern, login: &str, password: &str) -> String {
    let (mut smtp, _) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
    smtp.command("EHLO client.example").await;
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{login}\0{password}"));
    smtp.command(&format!("AUTH PLAIN {plain}")).await
}

/// One app token for everyone: sixteen logins at once (alice and bob) ask the provider
/// once, and SMTP uses the same token; the metrics say so.
#[tokio::test(flavor = "multi_thread")]
async fn one_app_token_serves_every_mailbox_and_is_asked_for_once() {
    let idp = IdentityProvider::start();
    let dovecot = dovecot(&idp);
    let postern = Arc::new(postern(&dovecot, "xoauth2", microsoft365(&idp)).await);
    let alice = postern
        .issue(
            "alice@example.test",
            &[postern::store::Scope::Imap, postern::store::Scope::Smtp],
            None,
        )
        .await
        .1;
    let bob = postern
        .issue("bob@example.test", &[postern::store::Scope::Imap], None)
        .await
        .1;
    let mut logins = Vec::new();
    for i in 0..16 {
        let postern = postern.clone();
        let (login, password) = if i % 2 == 0 {
            ("alice@example.test", alice.clone())
        } else {
            ("bob@example.test", bob.clone())
        };
        logins.push(tokio::spawn(async move {
            imap_login(&postern, login, &password).await
        }));
    }
    for login in logins {
        let reply = login.await.unwrap();
        assert!(
            reply.starts_with("a1 OK"),
            "{reply}\n{}",
            dovecot.all_logs()
        );
    }
    let auth = smtp_auth(&postern, "alice@example.test", &alice).await;
    assert!(auth.starts_with("235 "), "{auth}\n{}", dovecot.all_logs());
    assert_eq!(idp.token_requests(), 1, "{}", idp.log());
    let requests = idp.hook("GET", "/__test/requests");
    assert_eq!(
        requests[0]["client_auth"], "client_secret_post",
        "{requests}"
    );
    assert_eq!(
        requests[0]["scope"], "https://outlook.office365.com/.default",
        "{requests}"
    );
    let metrics = postern.metrics();
    assert_eq!(
        metric(
            &metrics,
            "postern_oauth2_token_requests_total{provider=\"idp\",result=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "postern_oauth2_token_age_seconds_count{provider=\"idp\"}"
        ),
        17.0,
        "{metrics}"
    );
    let log = dovecot.all_logs();
    assert!(
        log.contains("mech=XOAUTH2") || log.contains("XOAUTH2"),
        "{log}"
    );
    Arc::try_unwrap(postern).ok().unwrap().stop().await;
}

/// An app that proves itself with its certificate's key: the client assertion carries the
/// certificate's thumbprint and the provider accepts it.
#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_signs_the_apps_assertion() {
    let idp = IdentityProvider::start();
    let dovecot = dovecot(&idp);
    let section = format!(
        "preset = \"microsoft365\"\ntenant = \"contoso.onmicrosoft.com\"\n\
         token_url = \"{}\"\nclient_id = \"{M365_CERT_APP}\"\nprivate_key_file = \"{}\"\n\
         certificate_file = \"{}\"\n",
        idp.token_url,
        idp.app_key_file.display(),
        idp.app_cert_file.display()
    );
    let postern = postern(&dovecot, "oauthbearer", section).await;
    let alice = postern
        .issue("alice@example.test", &[postern::store::Scope::Imap], None)
        .await
        .1;
    let reply = imap_login(&postern, "alice@example.test", &alice).await;
    assert!(
        reply.starts_with("a1 OK"),
        "{reply}\n{}\n{}",
        dovecot.all_logs(),
        idp.log()
    );
    let requests = idp.hook("GET", "/__test/requests");
    assert_eq!(requests[0]["client_auth"], "private_key_jwt", "{requests}");
    assert!(
        dovecot.all_logs().contains("OAUTHBEARER"),
        "{}",
        dovecot.all_logs()
    );
    postern.stop().await;
}

/// Google's shape: a token per user, from a JWT bearer grant the service account's JSON
/// key signs, `sub` = the user; XOAUTH2 for IMAP, OAUTHBEARER for SMTP.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_account_gets_a_token_per_user() {
    let idp = IdentityProvider::start();
    let dovecot = dovecot(&idp);
    let section = format!(
        "preset = \"google\"\ntoken_url = \"{}\"\nclient_id = \"{SERVICE_ACCOUNT}\"\n\
         private_key_file = \"{}\"\n",
        idp.token_url,
        idp.service_account_file.display()
    );
    let postern = postern(&dovecot, "xoauth2", section).await;
    let scopes = [postern::store::Scope::Imap, postern::store::Scope::Smtp];
    let alice = postern.issue("alice@example.test", &scopes, None).await.1;
    let bob = postern.issue("bob@example.test", &scopes, None).await.1;
    for _ in 0..2 {
        for (login, password) in [("alice@example.test", &alice), ("bob@example.test", &bob)] {
            let reply = imap_login(&postern, login, password).await;
            assert!(
                reply.starts_with("a1 OK"),
                "{reply}\n{}\n{}",
                dovecot.all_logs(),
                idp.log()
            );
        }
    }
    let auth = smtp_auth(&postern, "bob@example.test", &bob).await;
    assert!(auth.starts_with("235 "), "{auth}\n{}", dovecot.all_logs());
    assert_eq!(idp.token_requests(), 2, "one per user: {}", idp.log());
    let requests = idp.hook("GET", "/__test/requests");
    let mut subjects: Vec<String> = requests
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["subject"].as_str().unwrap_or_default().to_string())
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["alice", "bob"], "{requests}");
    postern.stop().await;
}

/// The identity provider answering an error, failing or gone: the client is told to try
/// later (IMAP `NO [UNAVAILABLE]`, SMTP `454 4.7.0`), never that its password is wrong,
/// and earns no penalty; once the provider is back, the same client logs in.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_identity_provider_is_a_temporary_failure() {
    let idp = IdentityProvider::start();
    let dovecot = dovecot(&idp);
    let section = microsoft365(&idp) + "timeout = \"1s\"\n";
    let postern = postern(&dovecot, "xoauth2", section).await;
    let alice = postern
        .issue(
            "alice@example.test",
            &[postern::store::Scope::Imap, postern::store::Scope::Smtp],
            None,
        )
        .await
        .1;
    for (hook, expected) in [
        ("/__test/fail?status=503", "unavailable"),
        ("/__test/fail?status=401&error=invalid_client", "refused"),
        ("/__test/fail?status=502&body=html", "unavailable"),
        // Slower than the section's timeout (1 s).
        ("/__test/delay?ms=3000", "unavailable"),
    ] {
        idp.hook("POST", "/__test/ok");
        idp.hook("POST", hook);
        let reply = imap_login(&postern, "alice@example.test", &alice).await;
        assert!(reply.starts_with("a1 NO [UNAVAILABLE]"), "{hook}: {reply}");
        let auth = smtp_auth(&postern, "alice@example.test", &alice).await;
        assert!(auth.starts_with("454 4.7.0"), "{hook}: {auth}");
        let metrics = postern.metrics();
        let series = format!(
            "postern_oauth2_token_requests_total{{provider=\"idp\",result=\"{expected}\"}}"
        );
        assert!(
            metric(&metrics, &series) >= 1.0,
            "{hook}: {series}\n{metrics}"
        );
    }
    idp.hook("POST", "/__test/ok");
    let reply = imap_login(&postern, "alice@example.test", &alice).await;
    assert!(reply.starts_with("a1 OK"), "no penalty was earned: {reply}");

    // Gone altogether: with the token cached, logins go on; a user needing a new token
    // (a per-user provider would) is told to try later.
    idp.stop();
    let reply = imap_login(&postern, "alice@example.test", &alice).await;
    assert!(
        reply.starts_with("a1 OK"),
        "the cached token still serves: {reply}"
    );
    let metrics = postern.metrics();
    assert_eq!(
        metric(
            &metrics,
            "postern_auth_attempts_total{mechanism=\"login\",protocol=\"imap\",result=\"bad_password\"}"
        ),
        0.0,
        "{metrics}"
    );
    postern.stop().await;
}

/// A token the upstream refuses is dropped and asked for once more; when the upstream
/// refuses that one too, the login fails as `upstream_refused` (the client is told to try
/// later: its app password was right), the XOAUTH2 error challenge answered and logged.
/// Here Dovecot cannot find the provider's key until it is put back.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_is_asked_for_once_more() {
    let idp = IdentityProvider::start();
    let dovecot = dovecot(&idp);
    let postern = postern(&dovecot, "xoauth2", microsoft365(&idp)).await;
    let alice = postern
        .issue("alice@example.test", &[postern::store::Scope::Imap], None)
        .await
        .1;
    let keys = idp.keys_dir.join("default/RS256");
    let aside = idp.dir.path().join("keys-aside");
    std::fs::rename(&keys, &aside).unwrap();
    let reply = imap_login(&postern, "alice@example.test", &alice).await;
    // The app password was right: the client is told to try later, as for any upstream
    // refusal of postern's own credentials.
    assert!(reply.starts_with("a1 NO [UNAVAILABLE]"), "{reply}");
    let metrics = postern.metrics();
    assert_eq!(
        metric(
            &metrics,
            "postern_auth_attempts_total{mechanism=\"login\",protocol=\"imap\",result=\"upstream_refused\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(idp.token_requests(), 2, "asked once more: {}", idp.log());
    assert!(
        !support::postern::logged_lines("\"status\":\"401\"").is_empty(),
        "the challenge is logged"
    );

    std::fs::rename(&aside, &keys).unwrap();
    let reply = imap_login(&postern, "alice@example.test", &alice).await;
    assert!(
        reply.starts_with("a1 OK"),
        "{reply}\n{}",
        dovecot.all_logs()
    );
    assert_eq!(
        idp.token_requests(),
        3,
        "the refused second token was dropped too; a third one serves"
    );
    let metrics = postern.metrics();
    assert!(
        metric(
            &metrics,
            "postern_upstream_errors_total{protocol=\"imap\",reason=\"refused\"}"
        ) >= 1.0,
        "{metrics}"
    );
    postern.stop().await;
}

/// The token endpoint over HTTPS: its certificate is verified, against `ca_file` when
/// given; a certificate postern does not trust gets no request sent, and the client is
/// told to try later.
#[tokio::test(flavor = "multi_thread")]
async fn the_token_endpoints_certificate_is_verified() {
    let idp = IdentityProvider::start_with(true);
    let dovecot = dovecot(&idp);
    let trusted = microsoft365(&idp) + &format!("ca_file = \"{}\"\n", idp.ca_path.display());
    let verified = postern(&dovecot, "xoauth2", trusted).await;
    let alice = verified
        .issue("alice@example.test", &[postern::store::Scope::Imap], None)
        .await
        .1;
    let reply = imap_login(&verified, "alice@example.test", &alice).await;
    assert!(reply.starts_with("a1 OK"), "{reply}\n{}", idp.log());
    verified.stop().await;

    let untrusted = postern(&dovecot, "xoauth2", microsoft365(&idp)).await;
    let alice = untrusted
        .issue("alice@example.test", &[postern::store::Scope::Imap], None)
        .await
        .1;
    let reply = imap_login(&untrusted, "alice@example.test", &alice).await;
    assert!(reply.starts_with("a1 NO [UNAVAILABLE]"), "{reply}");
    assert_eq!(idp.token_requests(), 1, "no request reached the provider");
    assert!(
        !support::postern::logged_lines("certificate").is_empty(),
        "the log says why"
    );
    untrusted.stop().await;
}

/// `postern oauth2 test` fetches a token and logs in upstream with it, one line per step;
/// with a wrong secret it says what the provider answered. `check-config` reads the keys.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_can_test_a_provider_from_the_command_line() {
    let idp = IdentityProvider::start();
    let dovecot = dovecot(&idp);
    let postern = postern(&dovecot, "xoauth2", microsoft365(&idp)).await;
    let output = postern.cli(&["oauth2", "test", "idp", "--user", "alice@example.test"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("[oauth2.idp]: a token to act as alice was issued"),
        "{stdout}"
    );
    assert!(
        stdout.contains("logged in as alice with XOAUTH2"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("logged in as alice").count(),
        2,
        "IMAP and SMTP: {stdout}"
    );

    std::fs::write(&idp.secret_file, "not-the-secret\n").unwrap();
    remember_secrets(["not-the-secret".to_string()]);
    let output = postern.cli(&["oauth2", "test", "idp", "--user", "alice@example.test"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("the token endpoint answered 401: invalid_client"),
        "{stderr}"
    );

    let check = postern.cli(&["check-config"]);
    assert!(check.status.success(), "{check:?}");
    std::fs::write(&idp.secret_file, "").unwrap();
    let broken = postern.dir.path().join("broken.toml");
    let config = std::fs::read_to_string(&postern.config_path)
        .unwrap()
        .replace(
            &format!("client_secret_file = \"{}\"", idp.secret_file.display()),
            &format!("private_key_file = \"{}\"", idp.app_cert_file.display()),
        );
    std::fs::write(&broken, config).unwrap();
    let check = support::postern::cli(&broken, &["check-config"]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not hold a usable key"), "{stderr}");
    postern.stop().await;
}

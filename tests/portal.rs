//! The self-service portal end to end: a person in a real browser (Debian's chromium,
//! headless, through chromedriver and selenium: `tests/portal/browser.py`) signs in with
//! the primary password that the real Dovecot checks, sets up TOTP, keeps the recovery
//! codes, creates an app password, copies it, and that password then logs in over IMAP
//! through postern. Forms without the CSRF token are refused; a wrong password and an
//! unknown user get the same answer; `postern user reset-mfa` makes the user set up anew.

mod support;

use std::path::PathBuf;
use std::process::Command;

use base64::Engine;
use support::imap_client::ImapClient;
use support::postern::{logged_lines, metric, remember_secrets, Options, Postern};
use support::smtp_client::SmtpClient;
use support::Dovecot;

const PRIMARY_PASSWORD: &str = "alice-direct-password";

/// Dovecot with alice, postern with the portal and user alice@example.test.
async fn setup() -> (Dovecot, Postern) {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", PRIMARY_PASSWORD);
    remember_secrets([PRIMARY_PASSWORD.to_string()]);
    let postern = with_portal(&dovecot, None).await;
    postern.add_user("alice@example.test", "alice").await;
    (dovecot, postern)
}

/// postern with the portal on `store_url` (SQLite in its temp dir when `None`).
async fn with_portal(dovecot: &Dovecot, store_url: Option<String>) -> Postern {
    Postern::start_with(
        dovecot,
        Options {
            store_url,
            extra_config: "[portal]\nbind = \"127.0.0.1:0\"\n\
                           [portal.client_settings]\nimap = \"mail.example.test:993\"\n\
                           smtp = \"mail.example.test:465\"\n"
                .to_string(),
            ..Options::default()
        },
    )
    .await
}

fn base_url(postern: &Postern) -> String {
    let port = postern.portal.expect("the portal listens").port();
    format!("https://localhost:{port}")
}

/// `curl` against the portal: `args` then the path; returns (status, headers and body).
fn curl(postern: &Postern, args: &[&str], path: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "-i", "--cacert"])
        .arg(&postern.ca_path)
        .args(args)
        .arg(format!("{}{path}", base_url(postern)))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Runs `tests/portal/browser.py` as alice, with `more` arguments: what it printed.
async fn browser(postern: &Postern, more: &[&str]) -> serde_json::Value {
    support::browser::run(
        &base_url(postern),
        "alice@example.test",
        PRIMARY_PASSWORD,
        more,
    )
    .await
}

/// The whole flow in chromium; the app password it created logs in over IMAP and SMTP,
/// and revoking it from the page closes a live IDLE session.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_sets_up_totp_and_gets_an_app_password_in_a_browser() {
    let (_dovecot, postern) = setup().await;
    let result = browser(&postern, &[]).await;
    let field = |name: &str| result[name].as_str().unwrap_or_default().to_string();

    assert_eq!(
        field("wrong_password"),
        "The email address or password is not right."
    );
    let shown = field("shown");
    // None of these may reach postern's log (checked when it stops).
    remember_secrets([shown.clone(), field("totp_secret")]);
    for code in result["recovery_codes"].as_array().unwrap() {
        remember_secrets([code.as_str().unwrap().to_string()]);
    }
    assert_eq!(shown.len(), 19, "four groups of four: {shown}");
    assert_eq!(
        field("copied"),
        shown.replace(' ', ""),
        "Copy put it on the clipboard"
    );
    assert_eq!(field("copy_button_after"), "Copied");
    assert!(field("listed").contains("Outlook on the office PC"));
    assert_eq!(field("japanese_title"), "アプリパスワード");
    assert_eq!(
        field("replayed_code"),
        "コードが正しくないか、すでに使用されています。次のコードをお試しください。"
    );
    assert_eq!(field("after_recovery_code"), "アプリパスワード");
    assert_eq!(
        field("reused_recovery_code"),
        "コードが正しくないか、すでに使用されています。次のコードをお試しください。"
    );

    // The new app password works in a mail client.
    let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let login = client
        .command("a1", &format!("LOGIN alice@example.test \"{shown}\""))
        .await;
    assert!(login.last().unwrap().starts_with("a1 OK"), "{login:?}");
    let (mut smtp, _) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
    smtp.command("EHLO client.example").await;
    let plain =
        base64::engine::general_purpose::STANDARD.encode(format!("\0alice@example.test\0{shown}"));
    let auth = smtp.command(&format!("AUTH PLAIN {plain}")).await;
    assert!(auth.starts_with("235 "), "{auth}");

    // Revoked from the page, the live IDLE session closes.
    client.command("a2", "SELECT INBOX").await;
    client.send(b"a3 IDLE\r\n").await;
    assert_eq!(client.read_line().await, "+ idling");
    let recovery = result["recovery_codes"][1].as_str().unwrap().to_string();
    let revoked = browser(&postern, &["revoke", &recovery]).await;
    assert!(
        revoked["listed_after"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{revoked}"
    );
    let since = std::time::Instant::now();
    assert!(
        client
            .closed_within(std::time::Duration::from_secs(10))
            .await
    );
    eprintln!(
        "IDLE session closed {:?} after the page's revocation returned",
        since.elapsed()
    );

    let metrics = postern.metrics();
    for (series, expected) in [
        (
            "postern_portal_sign_ins_total{result=\"bad_password\"}",
            1.0,
        ),
        ("postern_portal_sign_ins_total{result=\"ok\"}", 4.0),
        (
            "postern_portal_mfa_total{method=\"totp\",result=\"ok\"}",
            1.0,
        ),
        (
            "postern_portal_mfa_total{method=\"totp\",result=\"refused\"}",
            1.0,
        ),
        (
            "postern_portal_mfa_total{method=\"recovery\",result=\"ok\"}",
            2.0,
        ),
        (
            "postern_portal_mfa_total{method=\"recovery\",result=\"refused\"}",
            1.0,
        ),
        (
            "postern_portal_app_passwords_total{action=\"created\"}",
            1.0,
        ),
        (
            "postern_portal_app_passwords_total{action=\"revoked\"}",
            1.0,
        ),
    ] {
        assert_eq!(metric(&metrics, series), expected, "{series}\n{metrics}");
    }

    // Every sign-in is in the audit trail, the failed one too.
    let audit = postern.cli(&["audit", "--user", "alice@example.test", "--json"]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("portal_sign_in"), "{audit}");
    assert!(audit.contains("bad_password"), "{audit}");
    assert!(audit.contains("app_password_created"), "{audit}");
    postern.stop().await;
}

/// A user sets up a passkey instead of TOTP (Chromium's virtual authenticator), adds a
/// second one, signs in with it, removes the first, and cannot remove the last.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_sets_up_passkeys_and_signs_in_with_one() {
    let (dovecot, postern) = setup().await;
    let result = browser(&postern, &["passkeys"]).await;
    let field = |name: &str| result[name].as_str().unwrap_or_default().to_string();
    for code in result["recovery_codes"].as_array().unwrap() {
        remember_secrets([code.as_str().unwrap().to_string()]);
    }
    assert!(field("first_listed").contains("Passkey"), "{result}");
    assert_eq!(field("totp_state"), "Not set up.");
    assert!(field("both_listed").contains("Security key"), "{result}");
    assert_eq!(field("after_passkey"), "App passwords");
    assert_eq!(
        field("verify_intro"),
        "No passkey at hand? Enter one of your recovery codes."
    );
    assert!(!field("one_left").contains("\nPasskey"), "{result}");
    assert!(field("one_left").contains("Security key"), "{result}");
    assert_eq!(
        field("last_kept"),
        "This is your only sign-in method. Add another before you remove it."
    );
    assert!(field("still_listed").contains("Security key"));
    assert_eq!(field("japanese_title"), "サインイン方法");
    assert_eq!(field("home_after_switch"), "アプリパスワード");

    let user = postern
        .store
        .user("alice@example.test")
        .await
        .unwrap()
        .unwrap();
    let keys = postern.store.passkeys(user.id).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].last_used_at.is_some(), "the sign-in is recorded");
    let metrics = postern.metrics();
    assert_eq!(
        metric(
            &metrics,
            "postern_portal_mfa_total{method=\"passkey\",result=\"ok\"}"
        ),
        1.0
    );
    let audit = postern.cli(&["audit", "--user", "alice@example.test", "--json"]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("method=passkey"), "{audit}");
    assert!(audit.contains("mfa_removed"), "{audit}");
    // Two added, one removed: three mails, on top of none for TOTP.
    assert_eq!(mails(&dovecot, "alice", 3).await.len(), 3);
    postern.stop().await;
}

/// Every form needs its CSRF token; a wrong password and an unknown user are answered
/// alike; the sign-in page follows Accept-Language.
#[tokio::test(flavor = "multi_thread")]
async fn forms_need_their_token_and_refusals_say_nothing_more() {
    let (_dovecot, postern) = setup().await;
    let (status, page) = curl(&postern, &["-H", "Accept-Language: ja,en;q=0.5"], "/");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("lang=\"ja\""), "{page}");
    assert!(page.contains("サインイン"), "{page}");

    let jar = tempfile::NamedTempFile::new().unwrap();
    let jar = jar.path().to_str().unwrap().to_string();
    let (_, page) = curl(&postern, &["-c", &jar], "/");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the form carries a token")
        .to_string();

    for path in [
        "/sign-in",
        "/mfa/verify",
        "/app-passwords",
        "/app-passwords/revoke-all",
        "/sign-out",
    ] {
        let (status, _) = curl(
            &postern,
            &["-b", &jar, "-d", "login=alice@example.test&password=x"],
            path,
        );
        assert_eq!(status, 403, "{path} without a token");
    }

    let attempt = |login: &str, password: &str| {
        curl(
            &postern,
            &[
                "-b",
                &jar,
                "--data-urlencode",
                &format!("csrf={csrf}"),
                "--data-urlencode",
                &format!("login={login}"),
                "--data-urlencode",
                &format!("password={password}"),
            ],
            "/sign-in",
        )
    };
    let (wrong_status, wrong) = attempt("alice@example.test", "wrong-password");
    let (unknown_status, unknown) = attempt("nobody@example.test", "wrong-password");
    assert_eq!((wrong_status, unknown_status), (200, 200));
    let error = |page: &str| {
        page.split("id=\"error\">")
            .nth(1)
            .and_then(|rest| rest.split('<').next())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(error(&wrong), "The email address or password is not right.");
    assert_eq!(error(&wrong), error(&unknown));
    assert!(
        !wrong.contains("__Host-postern="),
        "no session for a refusal"
    );

    let (status, signed_in) = attempt("alice@example.test", PRIMARY_PASSWORD);
    assert_eq!(status, 303, "{signed_in}");
    assert!(signed_in.contains("location: /mfa"), "{signed_in}");
    assert!(signed_in.contains("__Host-postern="), "{signed_in}");

    let (status, _) = curl(&postern, &[], "/no-such-page");
    assert_eq!(status, 404);
    assert!(!logged_lines("portal sign-in").is_empty());
    postern.stop().await;
}

/// The helpdesk's reset: the user's TOTP is forgotten, and the next sign-in sets up anew.
#[tokio::test(flavor = "multi_thread")]
async fn reset_mfa_forgets_the_second_factor() {
    let (_dovecot, postern) = setup().await;
    let user = postern
        .store
        .user("alice@example.test")
        .await
        .unwrap()
        .unwrap();
    assert!(postern
        .store
        .begin_totp(user.id, "JBSWY3DPEHPK3PXP", 0)
        .await
        .unwrap());
    assert!(postern.store.use_totp_step(user.id, 1, 0).await.unwrap());
    assert!(
        !postern.store.use_totp_step(user.id, 1, 0).await.unwrap(),
        "a step is used once"
    );
    let output = postern.cli(&["user", "reset-mfa", "alice@example.test"]);
    assert!(output.status.success(), "{output:?}");
    assert!(postern.store.totp(user.id).await.unwrap().is_none());
    let refused = postern.cli(&["user", "reset-mfa", "nobody@example.test"]);
    assert_eq!(refused.status.code(), Some(1));
    postern.stop().await;
}

/// A device sets itself up: Thunderbird's autoconfig and Outlook's autodiscover name the
/// configured servers, implicit TLS, the address as the login.
#[tokio::test(flavor = "multi_thread")]
async fn devices_find_their_settings() {
    let (_dovecot, postern) = setup().await;
    for path in [
        "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=alice%40example.test",
        "/mail/config-v1.1.xml?emailaddress=alice%40example.test",
    ] {
        let (status, xml) = curl(&postern, &[], path);
        assert_eq!(status, 200, "{xml}");
        assert!(xml.contains("<domain>example.test</domain>"), "{xml}");
        assert!(
            xml.contains("<hostname>mail.example.test</hostname>\n      <port>993</port>"),
            "{xml}"
        );
        assert!(xml.contains("<port>465</port>"), "{xml}");
        assert!(xml.contains("<username>%EMAILADDRESS%</username>"), "{xml}");
    }
    let request = "<?xml version=\"1.0\"?><Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006\"><Request><EMailAddress>alice@example.test</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>";
    let (status, xml) = curl(
        &postern,
        &["-H", "Content-Type: text/xml", "--data-binary", request],
        "/autodiscover/autodiscover.xml",
    );
    assert_eq!(status, 200, "{xml}");
    assert!(
        xml.contains("<LoginName>alice@example.test</LoginName>"),
        "{xml}"
    );
    assert!(xml.contains("<Server>mail.example.test</Server>"), "{xml}");
    let (status, _) = curl(
        &postern,
        &["--data-binary", "<EMailAddress><script></EMailAddress>"],
        "/autodiscover/autodiscover.xml",
    );
    assert_eq!(status, 400);
    postern.stop().await;
}

/// A curl "browser" signed in as alice and past TOTP: its cookie jar and CSRF token.
struct SignedIn<'p> {
    postern: &'p Postern,
    jar: tempfile::NamedTempFile,
    csrf: String,
}

/// The value of a form's `csrf` field on `page`.
fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the form carries a token")
        .to_string()
}

/// The text of the element `id` on `page` (up to the next tag).
fn element(page: &str, id: &str) -> Option<String> {
    page.split(&format!("id=\"{id}\""))
        .nth(1)
        .and_then(|rest| rest.split_once('>'))
        .and_then(|(_, rest)| rest.split('<').next())
        .map(str::to_string)
}

impl<'p> SignedIn<'p> {
    /// Signs alice in with curl and sets up TOTP with a code computed from the key on
    /// the page.
    fn new(postern: &'p Postern) -> Self {
        let mut browser = SignedIn {
            postern,
            jar: tempfile::NamedTempFile::new().unwrap(),
            csrf: String::new(),
        };
        let (_, page) = browser.get("/");
        browser.csrf = csrf_of(&page);
        let (status, _) = browser.post(
            "/sign-in",
            &[
                "login=alice@example.test",
                &format!("password={PRIMARY_PASSWORD}"),
            ],
        );
        assert_eq!(status, 303);
        let (_, setup) = browser.get("/mfa");
        let secret = element(&setup, "totp-secret").expect("the key is on the page");
        remember_secrets([secret.clone()]);
        let totp = totp_rs::TOTP::new(
            totp_rs::Algorithm::SHA1,
            6,
            1,
            30,
            totp_rs::Secret::Encoded(secret).to_bytes().unwrap(),
            None,
            "alice".to_string(),
        )
        .unwrap();
        browser.csrf = csrf_of(&setup);
        // A code of ten minutes ago is refused, and the key stays the same.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let stale = format!("code={}", totp.generate(now - 600));
        let (status, refused) = browser.post("/mfa/verify", &[&stale]);
        assert_eq!(status, 200);
        assert_eq!(
            element(&refused, "error").as_deref(),
            Some("That code is not right, or was already used. Try the next one.")
        );
        assert_eq!(
            element(&refused, "totp-secret"),
            element(&setup, "totp-secret")
        );
        let code = format!("code={}", totp.generate_current().unwrap());
        let (status, recovery) = browser.post("/mfa/verify", &[&code]);
        assert_eq!(status, 200);
        assert!(recovery.contains("id=\"recovery-codes\""), "{recovery}");
        browser
    }

    fn jar(&self) -> &str {
        self.jar.path().to_str().unwrap()
    }

    /// Sends the next requests to another instance, as a load balancer may.
    fn through(&mut self, postern: &'p Postern) {
        self.postern = postern;
    }

    fn get(&self, path: &str) -> (u16, String) {
        curl(self.postern, &["-c", self.jar(), "-b", self.jar()], path)
    }

    /// Posts `fields` (`name=value`, URL-encoded here) with the session's token.
    fn post(&self, path: &str, fields: &[&str]) -> (u16, String) {
        let csrf = format!("csrf={}", self.csrf);
        let mut args = vec!["-c", self.jar(), "-b", self.jar()];
        for field in std::iter::once(&csrf.as_str()).chain(fields) {
            args.extend(["--data-urlencode", field]);
        }
        curl(self.postern, &args, path)
    }

    /// Creates an app password for IMAP and SMTP; returns the page that shows it.
    fn create(&self, name: &str) -> String {
        let (status, page) = self.post(
            "/app-passwords",
            &[&format!("name={name}"), "scopes=imap", "scopes=smtp"],
        );
        assert_eq!(status, 200, "{page}");
        page
    }
}

/// Runs one SQL statement on postern's store, as a clock moving on would.
async fn store_sql(postern: &Postern, statement: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&postern.config.store.url)
        .await
        .expect("open the store");
    sqlx::query(statement)
        .execute(&pool)
        .await
        .expect("run the statement");
    pool.close().await;
}

/// A user who already holds 40 live app passwords (the limit) is told to revoke one first;
/// the 41st is not created.
#[tokio::test(flavor = "multi_thread")]
async fn the_41st_app_password_is_refused_with_a_clear_page() {
    let (_dovecot, postern) = setup().await;
    for _ in 0..40 {
        postern
            .issue("alice@example.test", &[postern::store::Scope::Imap], None)
            .await;
    }
    let browser = SignedIn::new(&postern);
    let page = browser.create("one too many");
    assert!(
        page.contains("You have as many app passwords as allowed."),
        "{page}"
    );
    assert!(!page.contains("id=\"new-app-password\""));
    let listed = postern.cli(&["app-password", "list", "alice@example.test", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 40);
    postern.stop().await;
}

/// Creating needs a sign-in within 10 minutes: later, the page asks to sign in again and
/// nothing is made. A session idle past its time is over: the pages ask to sign in, and
/// its forms change nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_sign_in_or_an_idle_session_creates_nothing() {
    let (_dovecot, postern) = setup().await;
    let browser = SignedIn::new(&postern);
    store_sql(
        &postern,
        "UPDATE portal_sessions SET password_at = password_at - 660, mfa_at = mfa_at - 660",
    )
    .await;
    let page = browser.create("too late");
    assert!(
        page.contains("For your security, sign in again to create an app password."),
        "{page}"
    );
    assert!(!page.contains("id=\"new-app-password\""));

    store_sql(
        &postern,
        "UPDATE portal_sessions SET last_seen_at = last_seen_at - 16 * 60",
    )
    .await;
    let (status, page) = browser.get("/app-passwords");
    assert_eq!(status, 303);
    assert!(page.contains("location: /"), "{page}");
    let (status, page) = browser.post("/app-passwords/revoke-all", &[]);
    assert_eq!(
        status, 403,
        "the session's token is no longer this browser's: {page}"
    );
    let listed = postern.cli(&["app-password", "list", "alice@example.test", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 0);
    postern.stop().await;
}

/// Right after creation the page offers an Apple configuration profile behind a
/// single-use link (also as a QR code): it parses (Python's plistlib) into IMAP and SMTP
/// accounts with the configured hosts and ports, the login and the new password, which
/// logs in; the link works once; a revoked password's link gives nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_phone_gets_its_profile_once() {
    let (_dovecot, postern) = setup().await;
    let browser = SignedIn::new(&postern);
    let page = browser.create("iPhone");
    let shown = element(&page, "new-app-password").expect("the password is shown");
    remember_secrets([shown.clone()]);
    assert!(page.contains("id=\"profile-qr\"><svg"), "{page}");
    let link = page
        .split("id=\"profile\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a profile link")
        .to_string();
    let path = link
        .split_once("/device/")
        .map(|(_, token)| format!("/device/{token}"))
        .unwrap();
    assert!(link.starts_with("https://localhost:"), "{link}");

    let profile = tempfile::NamedTempFile::new().unwrap();
    let fetched = Command::new("curl")
        .args(["-sS", "-o"])
        .arg(profile.path())
        .args(["-w", "%{http_code} %{content_type}", "--cacert"])
        .arg(&postern.ca_path)
        .arg(format!("{}{path}", base_url(&postern)))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&fetched.stdout),
        "200 application/x-apple-aspen-config"
    );
    let parsed = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, plistlib, sys\n\
             p = plistlib.load(open(sys.argv[1], 'rb'))\n\
             m = p['PayloadContent'][0]\n\
             print(json.dumps([p['PayloadType'], m['PayloadType'], m['EmailAccountType'],\n\
               m['IncomingMailServerHostName'], m['IncomingMailServerPortNumber'],\n\
               m['IncomingMailServerUseSSL'], m['IncomingMailServerUsername'],\n\
               m['IncomingPassword'], m['OutgoingMailServerHostName'],\n\
               m['OutgoingMailServerPortNumber'], m['OutgoingMailServerUsername'],\n\
               m['OutgoingPassword'], m['EmailAddress']]))",
        ])
        .arg(profile.path())
        .output()
        .unwrap();
    assert!(parsed.status.success(), "{parsed:?}");
    let parsed: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    assert_eq!(
        parsed,
        serde_json::json!([
            "Configuration",
            "com.apple.mail.managed",
            "EmailTypeIMAP",
            "mail.example.test",
            993,
            true,
            "alice@example.test",
            shown,
            "mail.example.test",
            465,
            "alice@example.test",
            shown,
            "alice@example.test"
        ])
    );
    let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    client
        .command("a0", "ID (\"name\" \"iPhone Mail\" \"version\" \"18.1\")")
        .await;
    let login = client
        .command("a1", &format!("LOGIN alice@example.test \"{shown}\""))
        .await;
    assert!(login.last().unwrap().starts_with("a1 OK"), "{login:?}");
    // The list says which app used it last (the use is stamped beside the login).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let listed = loop {
        let (_, listed) = browser.get("/app-passwords");
        if listed.contains("iPhone Mail 18.1") || std::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(listed.contains("127.0.0.1 · iPhone Mail 18.1"), "{listed}");

    let (status, again) = curl(&postern, &[], &path);
    assert_eq!(status, 410, "a link works once: {again}");
    assert!(again.contains("already used or has expired"), "{again}");

    // A link whose password was revoked before it was opened gives nothing.
    let page = browser.create("iPad");
    let second = page
        .split("id=\"profile\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split_once("/device/"))
        .and_then(|(_, rest)| rest.split('"').next())
        .map(|token| format!("/device/{token}"))
        .unwrap();
    let (status, _) = browser.post("/app-passwords/revoke-all", &[]);
    assert_eq!(status, 303);
    let (status, _) = curl(&postern, &[], &second);
    assert_eq!(status, 410);
    let (status, _) = curl(&postern, &[], "/device/not-a-token");
    assert_eq!(status, 410);
    let audit = postern.cli(&["audit", "--user", "alice@example.test", "--json"]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("device_profile_fetched"), "{audit}");
    assert!(audit.contains("source=portal"), "{audit}");
    postern.stop().await;
}

/// Every message in `user`'s Maildir/new once there are at least `n` (polled, 10 s at
/// most: the portal sends beside the page).
async fn mails(dovecot: &Dovecot, user: &str, n: usize) -> Vec<String> {
    let new = dovecot.maildir(user).join("new");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&new)
            .map(|entries| entries.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        if paths.len() >= n || std::time::Instant::now() > deadline {
            paths.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
            return paths
                .iter()
                .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
                .collect();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Setting up TOTP and creating an app password each send the user a mail through the
/// real Dovecot submission path, in the page's language: what, when, from where, where to
/// undo it; never the password.
#[tokio::test(flavor = "multi_thread")]
async fn changes_are_mailed_to_the_user() {
    let (dovecot, postern) = setup().await;
    let browser = SignedIn::new(&postern);
    let (status, _) = browser.get("/app-passwords?lang=ja");
    assert_eq!(status, 200);
    let page = browser.create("Laptop");
    let shown = element(&page, "new-app-password").expect("the password is shown");
    remember_secrets([shown.clone()]);

    let delivered = mails(&dovecot, "alice", 2).await;
    assert_eq!(delivered.len(), 2, "{}", dovecot.all_logs());
    let parsed: Vec<_> = delivered
        .iter()
        .map(|raw| {
            mail_parser::MessageParser::default()
                .parse(raw.as_bytes())
                .unwrap()
        })
        .collect();
    let (mfa, created) = (&parsed[0], &parsed[1]);
    assert_eq!(
        mfa.subject(),
        Some("Two-step verification changed for your account")
    );
    let body = mfa.body_text(0).unwrap();
    assert!(body.contains("What: Authenticator app set up"), "{body}");
    assert!(body.contains("From: 127.0.0.1 (curl/"), "{body}");
    let public_url = &postern.config.portal.as_ref().unwrap().public_url;
    assert!(body.contains(public_url.as_str()), "{body}");
    assert_eq!(
        created.subject(),
        Some("アカウントに新しいアプリパスワードが作成されました")
    );
    let body = created.body_text(0).unwrap();
    assert!(body.contains("内容: アプリパスワード: Laptop"), "{body}");
    for (message, raw) in parsed.iter().zip(&delivered) {
        assert_eq!(
            message
                .to()
                .and_then(|a| a.first())
                .and_then(|a| a.address()),
            Some("alice@example.test")
        );
        assert_eq!(
            message.header("Auto-Submitted").and_then(|h| h.as_text()),
            Some("auto-generated")
        );
        assert!(!raw.contains(&shown) && !raw.contains(&shown.replace(' ', "")));
    }
    // Counted once the upstream session has ended, a moment after the delivery.
    let series = "postern_portal_notifications_total{result=\"sent\"}";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(&postern.metrics(), series) < 2.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&postern.metrics(), series), 2.0);
    let audit = postern.cli(&["audit", "--user", "alice@example.test", "--json"]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("mfa_added"), "{audit}");
    assert!(audit.contains("method=totp"), "{audit}");
    postern.stop().await;
}

/// Two instances on one PostgreSQL: a browser signed in on one goes on, with the same
/// session and form token, on the other (the session, the sign-in's recency and the
/// second factor are in the store); a device link made on one is taken on the other, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_browser_moves_between_instances() {
    let postgres = support::Postgres::start();
    let url = postgres.create_database("portal");
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", PRIMARY_PASSWORD);
    remember_secrets([PRIMARY_PASSWORD.to_string()]);
    let first = with_portal(&dovecot, Some(url.clone())).await;
    let second = with_portal(&dovecot, Some(url)).await;
    first.add_user("alice@example.test", "alice").await;

    let mut browser = SignedIn::new(&first);
    browser.through(&second);
    let (status, list) = browser.get("/app-passwords");
    assert_eq!(status, 200, "{list}");
    assert!(
        list.contains("name=\"csrf\""),
        "signed in on the other instance: {list}"
    );
    let page = browser.create("iPhone");
    let shown = element(&page, "new-app-password").expect("created on the other instance");
    remember_secrets([shown]);
    let link = page
        .split("id=\"profile\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a profile link")
        .to_string();
    let path = format!("/device/{}", link.split_once("/device/").unwrap().1);

    browser.through(&first);
    let (status, _) = browser.get(&path);
    assert_eq!(
        status, 200,
        "the link made on the second instance works on the first"
    );
    browser.through(&second);
    let (status, _) = browser.get(&path);
    assert_ne!(status, 200, "and only once, wherever it is tried again");
    first.stop().await;
    second.stop().await;
}

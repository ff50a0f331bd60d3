//! Portal sign-in through an OpenID Connect provider (npm oidc-provider,
//! `tests/oauth/provider.mjs`), the flow driven over HTTP as a browser would (curl, one
//! cookie jar for postern and one for the provider): the authorization code flow with
//! PKCE, state and nonce; the user made at the first sign-in from the ID token's claims;
//! the provider's MFA (`amr` with `mfa`) passes postern's second factor, a password-only
//! sign-in still asks for postern's own; a tampered ID token, a wrong nonce or audience,
//! a replayed callback and another browser's callback are refused; the provider down is
//! "try again later".

mod support;

use std::process::Command;

use support::oauth::IdentityProvider;
use support::postern::{remember_secrets, Options, Postern};
use support::Dovecot;

/// Where the provider sends browsers back: postern's `public_url` (its default), whatever
/// port the test portal has; the tests carry the query to the real port.
const REDIRECT: &str = "https://localhost:10443/oidc/callback";

fn provider() -> IdentityProvider {
    remember_secrets(["alice-idp-password".into(), "bob-idp-password".into()]);
    IdentityProvider::start_with_config(
        false,
        serde_json::json!({
            "oidc_clients": [{ "client_id": "postern", "client_secret": "postern-oidc-secret",
                               "redirect_uris": [REDIRECT] }],
            "accounts": [
                { "id": "alice", "email": "alice@example.test", "name": "Alice",
                  "password": "alice-idp-password", "amr": ["pwd"] },
                { "id": "bob", "email": "Bob@Example.test", "name": "Bob",
                  "password": "bob-idp-password", "amr": ["pwd", "mfa"] },
            ],
        }),
    )
}

async fn postern(dovecot: &Dovecot, idp: &IdentityProvider) -> Postern {
    let secret = idp.dir.path().join("oidc-secret");
    std::fs::write(&secret, "postern-oidc-secret\n").unwrap();
    remember_secrets(["postern-oidc-secret".into()]);
    Postern::start_with(
        dovecot,
        Options {
            extra_config: format!(
                "[portal]\nbind = \"127.0.0.1:0\"\nsign_in = \"oidc\"\n\
                 [portal.notifications]\nenabled = false\n\
                 [portal.oidc]\nissuer = \"{}\"\nclient_id = \"postern\"\n\
                 client_secret_file = \"{}\"\n",
                idp.issuer,
                secret.display()
            ),
            ..Options::default()
        },
    )
    .await
}

/// A browser: its cookie jar.
struct Browser(tempfile::NamedTempFile);

impl Browser {
    fn new() -> Browser {
        Browser(tempfile::NamedTempFile::new().unwrap())
    }

    /// GET (or POST `form`) `url` without following redirects: status, headers and body.
    fn fetch(&self, url: &str, form: &[String], ca: &std::path::Path) -> (u16, String) {
        let jar = self.0.path().to_str().unwrap();
        let mut command = Command::new("curl");
        command
            .args(["-sS", "-i", "--cacert"])
            .arg(ca)
            .args(["-c", jar, "-b", jar]);
        for field in form {
            command.args(["--data-urlencode", field]);
        }
        let output = command.arg(url).output().expect("run curl");
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    }
}

fn location(answer: &str) -> String {
    answer
        .lines()
        .find_map(|line| {
            line.strip_prefix("location: ")
                .or_else(|| line.strip_prefix("Location: "))
        })
        .map(|value| value.trim().to_string())
        .unwrap_or_else(|| panic!("no Location in {answer}"))
}

/// Where a signed-in page goes on to (its refresh and its Continue link).
fn next(page: &str) -> String {
    assert!(page.contains("__Host-postern="), "a session: {page}");
    page.split("content=\"0;url=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no refresh in {page}"))
        .to_string()
}

/// The portal's base URL.
fn portal(postern: &Postern) -> String {
    format!("https://localhost:{}", postern.portal.unwrap().port())
}

/// Runs the flow as `who` up to the provider's redirect back: the callback URL, moved to
/// the test portal's real port.
fn to_provider_and_back(
    postern: &Postern,
    idp: &IdentityProvider,
    browser: &Browser,
    who: &str,
    password: &str,
) -> String {
    let (status, answer) = browser.fetch(
        &format!("{}/oidc/start", portal(postern)),
        &[],
        &postern.ca_path,
    );
    assert_eq!(status, 303, "{answer}");
    let authorize = location(&answer);
    assert!(authorize.contains("code_challenge="), "PKCE: {authorize}");
    assert!(authorize.contains("nonce="), "{authorize}");
    let absolute = |path: String| {
        if path.starts_with("http") {
            path
        } else {
            format!("{}{path}", idp.issuer)
        }
    };
    let provider_browser = Browser::new();
    let (_, answer) = provider_browser.fetch(&authorize, &[], &idp.ca_path);
    let interaction = absolute(location(&answer));
    let (status, form) = provider_browser.fetch(&interaction, &[], &idp.ca_path);
    assert_eq!(status, 200, "{form}");
    let (status, answer) = provider_browser.fetch(
        &format!("{interaction}/login"),
        &[format!("login={who}"), format!("password={password}")],
        &idp.ca_path,
    );
    assert_eq!(status, 303, "{answer}");
    let (_, answer) = provider_browser.fetch(&absolute(location(&answer)), &[], &idp.ca_path);
    let back = location(&answer);
    assert!(back.starts_with(REDIRECT), "{back}");
    back.replacen("https://localhost:10443", &portal(postern), 1)
}

#[tokio::test(flavor = "multi_thread")]
async fn people_sign_in_through_the_provider() {
    let idp = provider();
    let dovecot = Dovecot::start();
    let postern = postern(&dovecot, &idp).await;

    // The sign-in page offers the provider, not a password form.
    let browser = Browser::new();
    let (_, page) = browser.fetch(&format!("{}/", portal(&postern)), &[], &postern.ca_path);
    assert!(page.contains("id=\"sign-in-oidc\""), "{page}");
    assert!(!page.contains("id=\"password\""), "{page}");

    // alice: password only at the provider, so postern's own MFA is asked.
    let back = to_provider_and_back(&postern, &idp, &browser, "alice", "alice-idp-password");
    let (status, answer) = browser.fetch(&back, &[], &postern.ca_path);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(next(&answer), "/mfa");
    let alice = postern
        .store
        .user("alice@example.test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice.addresses, ["alice@example.test"]);
    assert_eq!(alice.upstream_user, "alice@example.test");

    // bob: the provider did MFA; the app passwords page at once.
    let browser = Browser::new();
    let back = to_provider_and_back(&postern, &idp, &browser, "bob", "bob-idp-password");
    let (status, answer) = browser.fetch(&back, &[], &postern.ca_path);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(next(&answer), "/app-passwords");
    let (status, page) = browser.fetch(
        &format!("{}/app-passwords", portal(&postern)),
        &[],
        &postern.ca_path,
    );
    assert_eq!(status, 200, "{page}");
    assert!(postern
        .store
        .user("bob@example.test")
        .await
        .unwrap()
        .is_some());

    // The provider rotates its signing key: the next sign-in is verified with the new one.
    idp.hook("POST", "/__test/rotate-keys?keep_old=0");
    let rotated = Browser::new();
    let back = to_provider_and_back(&postern, &idp, &rotated, "bob", "bob-idp-password");
    let (status, answer) = rotated.fetch(&back, &[], &postern.ca_path);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(next(&answer), "/app-passwords");

    // The same callback once more: the state is spent.
    let (status, page) = browser.fetch(&back, &[], &postern.ca_path);
    assert_eq!(status, 200);
    assert!(
        page.contains("The email address or password is not right."),
        "{page}"
    );
    postern.stop().await;
}

/// In a real browser: the sign-in page's button leads to the provider's own login page;
/// bob signs in there (with the provider's MFA) and lands on his app passwords.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_through_the_provider_in_a_browser() {
    // The browser follows the redirect back, so the portal listens where public_url says.
    let port = support::free_port();
    let base = format!("https://localhost:{port}");
    remember_secrets(["bob-idp-password".into(), "postern-oidc-secret".into()]);
    let idp = IdentityProvider::start_with_config(
        false,
        serde_json::json!({
            "oidc_clients": [{ "client_id": "postern", "client_secret": "postern-oidc-secret",
                               "redirect_uris": [format!("{base}/oidc/callback")] }],
            "accounts": [{ "id": "bob", "email": "bob@example.test", "name": "Bob",
                           "password": "bob-idp-password", "amr": ["pwd", "mfa"] }],
        }),
    );
    let dovecot = Dovecot::start();
    let secret = idp.dir.path().join("oidc-secret");
    std::fs::write(&secret, "postern-oidc-secret\n").unwrap();
    let postern = Postern::start_with(
        &dovecot,
        Options {
            extra_config: format!(
                "[portal]\nbind = \"127.0.0.1:{port}\"\npublic_url = \"{base}\"\nsign_in = \"oidc\"\n\
                 [portal.notifications]\nenabled = false\n\
                 [portal.oidc]\nissuer = \"{}\"\nclient_id = \"postern\"\n\
                 client_secret_file = \"{}\"\n",
                idp.issuer,
                secret.display()
            ),
            ..Options::default()
        },
    )
    .await;
    let result = support::browser::run(&base, "bob", "bob-idp-password", &["oidc"]).await;
    assert!(
        result["provider_page"]
            .as_str()
            .unwrap()
            .starts_with(&idp.issuer),
        "{result}"
    );
    assert_eq!(result["landed"], "/app-passwords", "{result}");
    assert_eq!(result["title"], "App passwords");
    postern.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_id_tokens_and_strangers_callbacks_are_refused() {
    let idp = provider();
    let dovecot = Dovecot::start();
    let postern = postern(&dovecot, &idp).await;
    for mode in [
        "bad_signature",
        "wrong_nonce",
        "wrong_aud",
        "expired",
        "alg_none",
    ] {
        idp.hook("POST", &format!("/__test/id-token?mode={mode}"));
        let browser = Browser::new();
        let back = to_provider_and_back(&postern, &idp, &browser, "bob", "bob-idp-password");
        let (status, page) = browser.fetch(&back, &[], &postern.ca_path);
        assert_eq!(status, 200, "{mode}: {page}");
        assert!(
            page.contains("The email address or password is not right."),
            "{mode}: {page}"
        );
        assert!(!page.contains("__Host-postern="), "{mode}: no session");
    }
    assert!(postern
        .store
        .user("bob@example.test")
        .await
        .unwrap()
        .is_none());

    // A callback carried to another browser (login CSRF) is refused.
    let victim = Browser::new();
    let back = to_provider_and_back(&postern, &idp, &Browser::new(), "bob", "bob-idp-password");
    let (_, _) = victim.fetch(&format!("{}/", portal(&postern)), &[], &postern.ca_path);
    let (status, page) = victim.fetch(&back, &[], &postern.ca_path);
    assert_eq!(status, 200);
    assert!(!page.contains("__Host-postern="), "{page}");

    idp.stop();
    let browser = Browser::new();
    let (status, page) = browser.fetch(
        &format!("{}/oidc/start", portal(&postern)),
        &[],
        &postern.ca_path,
    );
    assert_eq!(status, 200);
    assert!(
        page.contains("Signing in is not possible right now. Try again in a few minutes."),
        "{page}"
    );
    postern.stop().await;
}

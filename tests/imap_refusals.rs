//! Every way an IMAP login is refused, and revocation reaching live sessions: the client
//! sees one fixed reply per kind of failure, while metrics and the audit trail see why.

mod support;

use std::time::{Duration, Instant};

use postern::clock::now;
use postern::store::Scope;
use support::imap_client::ImapClient;
use support::postern::{metric, Options, Postern};
use support::{free_port, Dovecot};

const REFUSED: &str = "NO [AUTHENTICATIONFAILED] Authentication failed";
const UNAVAILABLE: &str = "NO [UNAVAILABLE] Service temporarily unavailable, try again later";

async fn setup(options: Options) -> (Dovecot, Postern) {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    dovecot.deliver("alice", b"Subject: hi\r\n\r\nhello\r\n");
    let postern = Postern::start_with(&dovecot, options).await;
    postern.add_user("alice@example.test", "alice").await;
    (dovecot, postern)
}

async fn login(postern: &Postern, user: &str, password: &str) -> (ImapClient, String) {
    let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let reply = client
        .command("a1", &format!("LOGIN \"{user}\" \"{password}\""))
        .await;
    (client, reply.last().unwrap().clone())
}

fn attempts(postern: &Postern, result: &str) -> f64 {
    metric(
        &postern.metrics(),
        &format!("postern_auth_attempts_total{{mechanism=\"login\",protocol=\"imap\",result=\"{result}\"}}"),
    )
}

fn cli_ok(postern: &Postern, args: &[&str]) -> String {
    let output = postern.cli(args);
    assert!(
        output.status.success(),
        "postern {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Wrong password, unknown user, revoked, expired, disabled and out-of-scope logins all
/// get the same reply; each is counted under its own result and audited.
#[tokio::test(flavor = "multi_thread")]
async fn credential_problems_share_one_reply_and_are_told_apart_inside() {
    let (_dovecot, postern) = setup(Options::default()).await;
    let (_, good) = postern
        .issue("alice@example.test", &[Scope::Imap], None)
        .await;
    let (revoked_id, revoked) = postern
        .issue("alice@example.test", &[Scope::Imap], None)
        .await;
    let (_, expired) = postern
        .issue("alice@example.test", &[Scope::Imap], Some(now() - 60))
        .await;
    let (_, smtp_only) = postern
        .issue("alice@example.test", &[Scope::Smtp], None)
        .await;
    cli_ok(
        &postern,
        &["app-password", "revoke", &revoked_id.to_string()],
    );

    let wrong = "aaaa bbbb cccc dddd";
    for (user, password, result) in [
        ("alice@example.test", wrong, "bad_password"),
        ("alice@example.test", "not an app password", "bad_password"),
        ("nobody@example.test", wrong, "unknown_user"),
        ("alice@example.test", revoked.as_str(), "revoked"),
        ("alice@example.test", expired.as_str(), "expired"),
        ("alice@example.test", smtp_only.as_str(), "scope_denied"),
    ] {
        let before = attempts(&postern, result);
        let (mut client, reply) = login(&postern, user, password).await;
        assert_eq!(reply, format!("a1 {REFUSED}"), "{result}");
        assert_eq!(attempts(&postern, result), before + 1.0, "{result}");
        // The connection stays usable after a refusal.
        let noop = client.command("a2", "NOOP").await;
        assert_eq!(noop, vec!["a2 OK NOOP completed"]);
    }

    cli_ok(&postern, &["user", "disable", "alice@example.test"]);
    let (_, reply) = login(&postern, "alice@example.test", &good).await;
    assert_eq!(reply, format!("a1 {REFUSED}"));
    assert_eq!(attempts(&postern, "disabled"), 1.0);
    cli_ok(&postern, &["user", "enable", "alice@example.test"]);
    let (_, reply) = login(&postern, "alice@example.test", &good).await;
    assert!(reply.starts_with("a1 OK [CAPABILITY"), "{reply}");

    // Each attempt is in the audit trail, with the client's address and the result. The
    // events are written after the reply, so wait for the last one to land.
    let expected = [
        "ok",
        "bad_password",
        "revoked",
        "expired",
        "scope_denied",
        "disabled",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let audit = cli_ok(
            &postern,
            &[
                "audit",
                "--user",
                "alice@example.test",
                "--json",
                "--limit",
                "100",
            ],
        );
        let events: serde_json::Value = serde_json::from_str(&audit).unwrap();
        let logins: Vec<&serde_json::Value> = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "login")
            .collect();
        let results: Vec<&str> = logins
            .iter()
            .map(|e| e["result"].as_str().unwrap())
            .collect();
        if expected.iter().all(|r| results.contains(r)) {
            assert!(
                logins.iter().all(|e| e["client_ip"] == "127.0.0.1"),
                "{logins:?}"
            );
            // A right password that may no longer be used names its app password.
            let revoked_event = logins.iter().find(|e| e["result"] == "revoked").unwrap();
            assert_eq!(
                revoked_event["app_password_id"], revoked_id,
                "{revoked_event}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit events missing: {results:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    postern.stop().await;
}

/// Three failed logins end the connection with BYE.
#[tokio::test(flavor = "multi_thread")]
async fn three_failures_close_the_connection() {
    let (_dovecot, postern) = setup(Options::default()).await;
    let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    for tag in ["a1", "a2"] {
        let reply = client
            .command(tag, "LOGIN alice@example.test wrongpassword")
            .await;
        assert_eq!(reply, vec![format!("{tag} {REFUSED}")]);
    }
    client
        .send(b"a3 LOGIN alice@example.test wrongpassword\r\n")
        .await;
    assert_eq!(client.read_line().await, format!("a3 {REFUSED}"));
    assert_eq!(client.read_line().await, "* BYE Too many failed logins");
    assert!(client.closed_within(Duration::from_secs(10)).await);
    postern.stop().await;
}

/// An upstream that does not answer is a temporary failure, not a wrong password.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_is_unavailable() {
    let options = Options {
        upstream_port: Some(free_port()),
        ..Options::default()
    };
    let (_dovecot, postern) = setup(options).await;
    let (_, password) = postern
        .issue("alice@example.test", &[Scope::Imap], None)
        .await;
    let (mut client, reply) = login(&postern, "alice@example.test", &password).await;
    assert_eq!(reply, format!("a1 {UNAVAILABLE}"));
    assert_eq!(attempts(&postern, "upstream_unavailable"), 1.0);
    // The login's connect failed, and so may have the warm connections' attempts.
    let metrics = postern.metrics();
    assert!(
        metric(
            &metrics,
            "postern_upstream_errors_total{protocol=\"imap\",reason=\"connect\"}"
        ) >= 1.0,
        "{metrics}"
    );
    // Not counted as a failed login: the client may retry on the same connection.
    let reply = client
        .command("a2", &format!("LOGIN alice@example.test \"{password}\""))
        .await;
    assert_eq!(reply, vec![format!("a2 {UNAVAILABLE}")]);
    postern.stop().await;
}

/// A stopped Dovecot: the same temporary failure.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_stopped_mid_life_is_unavailable() {
    let (mut dovecot, postern) = setup(Options::default()).await;
    let (_, password) = postern
        .issue("alice@example.test", &[Scope::Imap], None)
        .await;
    dovecot.stop();
    let (_, reply) = login(&postern, "alice@example.test", &password).await;
    assert_eq!(reply, format!("a1 {UNAVAILABLE}"));
    postern.stop().await;
}

/// Dovecot refusing postern's master login is postern's misconfiguration: the user gets a
/// temporary failure, the operator an `upstream_refused` count and an error log.
#[tokio::test(flavor = "multi_thread")]
async fn master_login_refused_upstream_is_unavailable_for_the_user() {
    for mode in ["sasl-plain-authzid", "master-login"] {
        let options = Options {
            upstream_auth: mode,
            master_password: Some("not-the-master-password".into()),
            ..Options::default()
        };
        let (_dovecot, postern) = setup(options).await;
        let (_, password) = postern
            .issue("alice@example.test", &[Scope::Imap], None)
            .await;
        let (_, reply) = login(&postern, "alice@example.test", &password).await;
        assert_eq!(reply, format!("a1 {UNAVAILABLE}"), "{mode}");
        assert_eq!(attempts(&postern, "upstream_refused"), 1.0, "{mode}");
        postern.stop().await;
    }
}

async fn idling_session(postern: &Postern, password: &str) -> ImapClient {
    let (mut client, reply) = login(postern, "alice@example.test", password).await;
    assert!(reply.starts_with("a1 OK"), "{reply}");
    client.command("a2", "SELECT INBOX").await;
    client.send(b"a3 IDLE\r\n").await;
    assert_eq!(client.read_line().await, "+ idling");
    client
}

/// Revoking an app password with the CLI, in another process, closes its live IDLE
/// session and refuses it from then on, while another app password's session lives on.
#[tokio::test(flavor = "multi_thread")]
async fn revocation_by_the_cli_closes_live_idle_sessions() {
    let (_dovecot, postern) = setup(Options::default()).await;
    let (phone_id, phone) = postern
        .issue("alice@example.test", &[Scope::Imap], None)
        .await;
    let (_, laptop) = postern
        .issue("alice@example.test", &[Scope::Imap], None)
        .await;
    let mut phone_session = idling_session(&postern, &phone).await;
    let mut laptop_session = idling_session(&postern, &laptop).await;

    let revoked_at = Instant::now();
    cli_ok(&postern, &["app-password", "revoke", &phone_id.to_string()]);
    assert!(
        phone_session.closed_within(Duration::from_secs(10)).await,
        "the revoked session was not closed"
    );
    eprintln!(
        "revoked session closed {:?} after the CLI was started",
        revoked_at.elapsed()
    );
    assert_eq!(
        metric(&postern.metrics(), "postern_revoked_sessions_closed_total"),
        1.0
    );

    // The cached verification is gone too.
    let (_, reply) = login(&postern, "alice@example.test", &phone).await;
    assert_eq!(reply, format!("a1 {REFUSED}"));

    // The other app password's session is untouched.
    laptop_session.send(b"DONE\r\n").await;
    let done = laptop_session.read_tagged("a3").await;
    assert!(done.last().unwrap().starts_with("a3 OK"), "{done:?}");

    // Disabling the user closes the rest.
    laptop_session.send(b"a4 IDLE\r\n").await;
    assert_eq!(laptop_session.read_line().await, "+ idling");
    cli_ok(&postern, &["user", "disable", "alice@example.test"]);
    assert!(laptop_session.closed_within(Duration::from_secs(10)).await);
    postern.stop().await;
}

/// An app password that expires while its session is open closes that session.
#[tokio::test(flavor = "multi_thread")]
async fn expiry_closes_the_session() {
    let (_dovecot, postern) = setup(Options::default()).await;
    let (_, password) = postern
        .issue("alice@example.test", &[Scope::Imap], Some(now() + 2))
        .await;
    let mut session = idling_session(&postern, &password).await;
    assert!(session.closed_within(Duration::from_secs(10)).await);
    let (_, reply) = login(&postern, "alice@example.test", &password).await;
    assert_eq!(reply, format!("a1 {REFUSED}"));
    postern.stop().await;
}

/// The same gateway on a PostgreSQL store: logins work, and a revocation made by the CLI
/// in another process closes the live session.
#[tokio::test(flavor = "multi_thread")]
async fn on_a_postgresql_store_revocation_reaches_live_sessions() {
    let postgres = support::Postgres::start();
    let options = Options {
        store_url: Some(postgres.create_database("postern")),
        ..Options::default()
    };
    let (_dovecot, postern) = setup(options).await;
    let (id, password) = postern
        .issue("alice@example.test", &[Scope::Imap], None)
        .await;
    let mut session = idling_session(&postern, &password).await;
    cli_ok(&postern, &["app-password", "revoke", &id.to_string()]);
    assert!(session.closed_within(Duration::from_secs(10)).await);
    let (_, reply) = login(&postern, "alice@example.test", &password).await;
    assert_eq!(reply, format!("a1 {REFUSED}"));
    postern.stop().await;
}

/// Two instances sharing one PostgreSQL store: an app password revoked through one is
/// refused by the other, and its live sessions on both are closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_through_one_instance_reaches_the_other() {
    let postgres = support::Postgres::start();
    let url = postgres.create_database("shared");
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    let options = || Options {
        store_url: Some(url.clone()),
        ..Options::default()
    };
    let first = Postern::start_with(&dovecot, options()).await;
    let second = Postern::start_with(&dovecot, options()).await;
    first.add_user("alice@example.test", "alice").await;
    let (id, password) = first
        .issue("alice@example.test", &[Scope::Imap], None)
        .await;

    let mut on_first = idling_session(&first, &password).await;
    let mut on_second = idling_session(&second, &password).await;
    cli_ok(&first, &["app-password", "revoke", &id.to_string()]);
    assert!(on_first.closed_within(Duration::from_secs(10)).await);
    assert!(on_second.closed_within(Duration::from_secs(10)).await);
    let (_, reply) = login(&second, "alice@example.test", &password).await;
    assert_eq!(reply, format!("a1 {REFUSED}"));
    first.stop().await;
    second.stop().await;
}

/// With PostgreSQL a revocation is pushed (LISTEN/NOTIFY): two instances that poll the
/// change feed only every 30 s close the revoked sessions at once. The time it takes is
/// printed (`-- --nocapture`).
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_is_pushed_to_every_instance() {
    let postgres = support::Postgres::start();
    let url = postgres.create_database("pushed");
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    let options = || Options {
        store_url: Some(url.clone()),
        change_poll_interval: "30s",
        ..Options::default()
    };
    let first = Postern::start_with(&dovecot, options()).await;
    let second = Postern::start_with(&dovecot, options()).await;
    first.add_user("alice@example.test", "alice").await;
    let (id, password) = first
        .issue("alice@example.test", &[Scope::Imap], None)
        .await;
    let mut on_first = idling_session(&first, &password).await;
    let mut on_second = idling_session(&second, &password).await;
    let since = std::time::Instant::now();
    cli_ok(&first, &["app-password", "revoke", &id.to_string()]);
    assert!(on_first.closed_within(Duration::from_secs(10)).await);
    assert!(on_second.closed_within(Duration::from_secs(10)).await);
    eprintln!(
        "both sessions closed {:?} after the CLI's revocation began (poll interval 30 s)",
        since.elapsed()
    );
    first.stop().await;
    second.stop().await;
}

//! The store going away under a running postern, against real peers: PostgreSQL stopped
//! and started again on the same port and data directory, and a SQLite file locked by
//! another writer. Logins already in the cache keep working through IMAP to a real
//! Dovecot; new ones get the protocol's temporary failure when the store cannot be read;
//! the audit events of the outage are written, in order, once the store is back; a full
//! audit queue drops exactly its overflow and counts it.

mod support;

use std::future::Future;
use std::time::Duration;

use base64::Engine as _;
use postern::ops::audit::{self, AuditWriter};
use postern::ops::metrics::Metrics;
use postern::store::{Scope, Store};
use serde_json::Value;
use sqlx::{Connection as _, Executor as _};
use support::imap_client::ImapClient;
use support::postern::{metric, Options, Postern};
use support::smtp_client::SmtpClient;
use support::{Dovecot, Postgres};

const LOGIN: &str = "alice@example.test";
const UNAVAILABLE: &str = "NO [UNAVAILABLE] Service temporarily unavailable, try again later";
const REFUSED: &str = "NO [AUTHENTICATIONFAILED] Authentication failed";

/// Generous: a condition polled for this long that never holds is a failure.
const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `check` until it returns `Some`, or panics after [`DEADLINE`] naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {DEADLINE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Dovecot with alice and one message; postern in front of it on `store_url` (SQLite in
/// its temp dir when `None`), with penalties on for loopback so that a store outage
/// punishing the client would show.
async fn setup(store_url: Option<String>) -> (Dovecot, Postern) {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    dovecot.deliver("alice", b"Subject: hi\r\n\r\nhello\r\n");
    let postern = Postern::start_with(
        &dovecot,
        Options {
            store_url,
            trusted_networks: "[]",
            ..Options::default()
        },
    )
    .await;
    postern.add_user(LOGIN, "alice").await;
    (dovecot, postern)
}

async fn issue(postern: &Postern) -> (i64, String) {
    postern
        .issue(LOGIN, &[Scope::Imap, Scope::Smtp], None)
        .await
}

/// An IMAP LOGIN over implicit TLS; the client and the tagged reply.
async fn imap_login(postern: &Postern, password: &str) -> (ImapClient, String) {
    let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let reply = client
        .command("a1", &format!("LOGIN \"{LOGIN}\" \"{password}\""))
        .await;
    (client, reply.last().unwrap().clone())
}

/// An SMTP AUTH PLAIN over implicit TLS; the reply.
async fn smtp_auth(postern: &Postern, password: &str) -> String {
    let (mut client, _) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
    client.command("EHLO client.example").await;
    let response =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{LOGIN}\0{password}"));
    client.command(&format!("AUTH PLAIN {response}")).await
}

/// The mailbox is really there behind a login.
async fn assert_mailbox_served(client: &mut ImapClient) {
    let select = client.command("a2", "SELECT INBOX").await;
    assert!(select.iter().any(|l| l == "* 1 EXISTS"), "{select:?}");
    assert!(select.last().unwrap().starts_with("a2 OK"), "{select:?}");
}

fn attempts(postern: &Postern, protocol: &str, mechanism: &str, result: &str) -> f64 {
    metric(
        &postern.metrics(),
        &format!(
            "postern_auth_attempts_total{{mechanism=\"{mechanism}\",protocol=\"{protocol}\",result=\"{result}\"}}"
        ),
    )
}

fn backlog(metrics: &str) -> f64 {
    metric(metrics, "postern_audit_backlog")
}

fn dropped(metrics: &str) -> f64 {
    metric(metrics, "postern_audit_events_dropped_total")
}

/// `(protocol, result, app_password_id)` of the user's login events in the store, oldest
/// first; `None` when the store cannot be read.
async fn stored_logins(postern: &Postern) -> Option<Vec<(String, String, Option<i64>)>> {
    let records = postern.store.audit(Some(LOGIN), 1000).await.ok()?;
    Some(
        records
            .into_iter()
            .rev()
            .filter(|r| r.kind == "login")
            .map(|r| {
                (
                    r.protocol.unwrap_or_default(),
                    r.result.unwrap_or_default(),
                    r.app_password_id,
                )
            })
            .collect(),
    )
}

/// The user's audit trail as `postern audit --json` prints it, oldest first.
fn cli_audit(postern: &Postern) -> Vec<Value> {
    let output = postern.cli(&["audit", "--user", LOGIN, "--json", "--limit", "1000"]);
    assert!(
        output.status.success(),
        "postern audit: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut events = events.as_array().unwrap().clone();
    events.reverse();
    events
}

/// The login events of the trail as `(protocol, result, app_password_id)`.
fn logins(events: &[Value]) -> Vec<(String, String, Option<i64>)> {
    events
        .iter()
        .filter(|e| e["kind"] == "login")
        .map(|e| {
            (
                e["protocol"].as_str().unwrap().to_owned(),
                e["result"].as_str().unwrap().to_owned(),
                e["app_password_id"].as_i64(),
            )
        })
        .collect()
}

fn row(protocol: &str, result: &str, id: Option<i64>) -> (String, String, Option<i64>) {
    (protocol.to_owned(), result.to_owned(), id)
}

/// PostgreSQL stops under a running postern and starts again on the same port.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_and_started_again() {
    let (pg, url) = tokio::task::spawn_blocking(|| {
        let pg = Postgres::start();
        let url = pg.create_database("postern");
        (pg, url)
    })
    .await
    .unwrap();
    let (_dovecot, postern) = setup(Some(url)).await;
    let (cached_id, cached) = issue(&postern).await;
    let (_, fresh) = issue(&postern).await;

    // The user logs in once, so the verification is cached; its event is written.
    let (_, reply) = imap_login(&postern, &cached).await;
    assert!(reply.starts_with("a1 OK [CAPABILITY"), "{reply}");
    let before = vec![row("imap", "ok", Some(cached_id))];
    eventually("the first login's audit event", || async {
        (stored_logins(&postern).await? == before).then_some(())
    })
    .await;

    let mut pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.stop();
        pg
    })
    .await
    .unwrap();

    // (a) The cached login still works, to the real mailbox; its session stays open
    // through the outage. SMTP finds the same verification in the cache.
    let hits = metric(&postern.metrics(), "postern_auth_cache_hits_total");
    let (mut session, reply) = imap_login(&postern, &cached).await;
    assert!(reply.starts_with("a1 OK [CAPABILITY"), "{reply}");
    assert_mailbox_served(&mut session).await;
    let reply = smtp_auth(&postern, &cached).await;
    assert!(reply.starts_with("235 "), "{reply}");
    assert_eq!(
        metric(&postern.metrics(), "postern_auth_cache_hits_total"),
        hits + 2.0
    );

    // (b) A password that is not cached needs the store: a temporary failure, counted as
    // such, and no penalty for the client.
    let (_, reply) = imap_login(&postern, &fresh).await;
    assert_eq!(reply, format!("a1 {UNAVAILABLE}"));
    let reply = smtp_auth(&postern, &fresh).await;
    assert!(reply.starts_with("454 4.7.0"), "{reply}");
    assert_eq!(
        attempts(&postern, "imap", "login", "temporary_failure"),
        1.0
    );
    assert_eq!(
        attempts(&postern, "smtp", "plain", "temporary_failure"),
        1.0
    );
    assert_eq!(attempts(&postern, "imap", "login", "rate_limited"), 0.0);

    // (c) Not ready while the store is down.
    let ready = postern.http_get("/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("store unreachable"), "{ready}");

    // The four attempts of the outage wait in memory.
    let metrics = postern.metrics();
    assert_eq!(backlog(&metrics), 4.0, "{metrics}");
    assert_eq!(dropped(&metrics), 0.0, "{metrics}");

    // (d) The store comes back: the outage's events are written, in order, none lost.
    let mut pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();
    let outage = vec![
        row("imap", "ok", Some(cached_id)),
        row("smtp", "ok", Some(cached_id)),
        row("imap", "temporary_failure", None),
        row("smtp", "temporary_failure", None),
    ];
    let expected: Vec<_> = before.iter().chain(&outage).cloned().collect();
    eventually("the outage's audit events in the store", || async {
        (stored_logins(&postern).await? == expected).then_some(())
    })
    .await;
    assert_eq!(logins(&cli_audit(&postern)), expected);
    let metrics = postern.metrics();
    assert_eq!(backlog(&metrics), 0.0, "{metrics}");
    assert_eq!(dropped(&metrics), 0.0, "{metrics}");
    eventually("/readyz says ready again", || async {
        postern
            .http_get("/readyz")
            .await
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;

    // (e) A new login works again, at once: the outage left no penalty behind.
    let (mut client, reply) = imap_login(&postern, &fresh).await;
    assert!(reply.starts_with("a1 OK [CAPABILITY"), "{reply}");
    assert_mailbox_served(&mut client).await;

    // The change follower came through the outage: a revocation made now closes the
    // session opened during it and refuses the password.
    let output = postern.cli(&["app-password", "revoke", &cached_id.to_string()]);
    assert!(output.status.success(), "{output:?}");
    assert!(session.closed_within(DEADLINE).await, "session not closed");
    let (_, reply) = imap_login(&postern, &cached).await;
    assert_eq!(reply, format!("a1 {REFUSED}"));

    postern.stop().await;
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
}

/// Another process holds SQLite's write lock. With the file in WAL mode, reads go on,
/// so every login is answered, new ones too; only writes wait, so the audit events
/// wait in memory until the lock is released. The CLI, which writes synchronously,
/// fails instead of waiting forever.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_locked_by_another_writer() {
    let (_dovecot, postern) = setup(None).await;
    let (cached_id, cached) = issue(&postern).await;
    let (fresh_imap_id, fresh_imap) = issue(&postern).await;
    let (fresh_smtp_id, fresh_smtp) = issue(&postern).await;
    let (_, reply) = imap_login(&postern, &cached).await;
    assert!(reply.starts_with("a1 OK [CAPABILITY"), "{reply}");
    let before = vec![row("imap", "ok", Some(cached_id))];
    eventually("the first login's audit event", || async {
        (stored_logins(&postern).await? == before).then_some(())
    })
    .await;

    let file = postern.dir.path().join("postern.db");
    let mut locker = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    locker.execute("BEGIN EXCLUSIVE").await.unwrap();

    // (a) The cached login works.
    let (mut session, reply) = imap_login(&postern, &cached).await;
    assert!(reply.starts_with("a1 OK [CAPABILITY"), "{reply}");
    assert_mailbox_served(&mut session).await;

    // (b) New logins work as well: finding the credential is a read.
    let (mut client, reply) = imap_login(&postern, &fresh_imap).await;
    assert!(reply.starts_with("a1 OK [CAPABILITY"), "{reply}");
    assert_mailbox_served(&mut client).await;
    let reply = smtp_auth(&postern, &fresh_smtp).await;
    assert!(reply.starts_with("235 "), "{reply}");
    assert_eq!(
        attempts(&postern, "imap", "login", "temporary_failure"),
        0.0
    );
    assert_eq!(
        attempts(&postern, "smtp", "plain", "temporary_failure"),
        0.0
    );

    // (c) The store answers, so postern is ready; the events wait.
    let ready = postern.http_get("/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains("store ok"), "{ready}");
    let metrics = postern.metrics();
    assert_eq!(backlog(&metrics), 3.0, "{metrics}");
    assert_eq!(stored_logins(&postern).await.unwrap(), before);

    // An administrator's revocation is not queued: it fails, loudly.
    let output = postern.cli(&["app-password", "revoke", &cached_id.to_string()]);
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("locked"), "{stderr}");

    // (d) The lock is released: the events are written in order, none lost.
    locker.execute("ROLLBACK").await.unwrap();
    locker.close().await.unwrap();
    let expected: Vec<_> = before
        .iter()
        .cloned()
        .chain([
            row("imap", "ok", Some(cached_id)),
            row("imap", "ok", Some(fresh_imap_id)),
            row("smtp", "ok", Some(fresh_smtp_id)),
        ])
        .collect();
    eventually("the lock's audit events in the store", || async {
        (stored_logins(&postern).await? == expected).then_some(())
    })
    .await;
    assert_eq!(logins(&cli_audit(&postern)), expected);
    let metrics = postern.metrics();
    assert_eq!(backlog(&metrics), 0.0, "{metrics}");
    assert_eq!(dropped(&metrics), 0.0, "{metrics}");

    // (e) The failed revocation changed nothing; a new one works, and reaches the session
    // opened under the lock.
    let (_, reply) = imap_login(&postern, &cached).await;
    assert!(reply.starts_with("a1 OK [CAPABILITY"), "{reply}");
    let output = postern.cli(&["app-password", "revoke", &cached_id.to_string()]);
    assert!(output.status.success(), "{output:?}");
    assert!(session.closed_within(DEADLINE).await, "session not closed");

    postern.stop().await;
}

fn event(login: &str) -> audit::Event {
    audit::Event {
        at: postern::clock::now(),
        kind: "login",
        login: login.to_owned(),
        app_password_id: None,
        protocol: Some("imap"),
        client_ip: Some("192.0.2.7".into()),
        client_id: None,
        result: Some("ok"),
        detail: None,
    }
}

/// An audit queue of 3 in front of a real SQLite store that another writer has locked:
/// of 10 events, the first 3 wait (the one being retried included) and are written
/// once the lock goes; the 7 others are dropped and counted, exactly.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_audit_queue_drops_and_counts_exactly_the_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("postern.db").display());
    let store = Store::open(&url).await.unwrap();
    store.migrate().await.unwrap();
    let metrics = Metrics::new();
    let writer = AuditWriter::start(store.clone(), &metrics, 3);

    let mut locker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    locker.execute("BEGIN EXCLUSIVE").await.unwrap();
    for n in 0..10 {
        writer.record(event(&format!("user{n}@example.test")));
    }
    assert_eq!(metrics.audit_events_dropped.get(), 7);
    assert_eq!(metrics.audit_backlog.get(), 3);
    assert_eq!(writer.waiting(), 3);

    locker.execute("ROLLBACK").await.unwrap();
    locker.close().await.unwrap();
    eventually("the queued events written", || async {
        (writer.waiting() == 0).then_some(())
    })
    .await;
    let mut written: Vec<String> = store
        .audit(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.login)
        .collect();
    written.reverse();
    assert_eq!(
        written,
        [
            "user0@example.test",
            "user1@example.test",
            "user2@example.test"
        ]
    );
    assert_eq!(metrics.audit_events_dropped.get(), 7);
    assert_eq!(metrics.audit_backlog.get(), 0);
    assert!(metrics
        .render()
        .contains("postern_audit_events_dropped_total 7"));
}

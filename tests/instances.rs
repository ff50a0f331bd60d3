//! Several instances as one gateway: three `postern serve` processes on one PostgreSQL
//! behind a real haproxy (round robin, PROXY v2, so each instance sees the client's own
//! address). Wrong passwords spread over the three earn the penalty of one gateway, per
//! login and per address; a sending quota holds across the three; a revocation closes live
//! sessions on all three at once (the time is printed with `-- --nocapture`); with
//! PostgreSQL stopped underneath they keep serving cached logins, and once it is back a
//! revocation reaches all three again.

mod support;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use support::haproxy::{Haproxy, Route};
use support::imap_client::ImapClient;
use support::postern::{metric, remember_secrets, Options, PosternProcess};
use support::smtp_client::SmtpClient;
use support::{Dovecot, Postgres};

const REFUSED: &str = "a1 NO [AUTHENTICATIONFAILED] Authentication failed";
const UNAVAILABLE: &str = "a1 NO [UNAVAILABLE] Service temporarily unavailable, try again later";
/// Wrong passwords the harness knows never to find in a log.
const WRONG: [&str; 2] = ["aaaa bbbb cccc dddd", "eeee ffff gggg hhhh"];
const DATABASE: &str = "gateway";

/// haproxy's frontends, each round robin over the three instances on its own.
const LOGINS: usize = 0;
const ADDRESSES: usize = 1;
const SESSIONS: usize = 2;
const SUBMISSION: usize = 3;

struct Deployment {
    postgres: Postgres,
    _dovecot: Dovecot,
    instances: Vec<PosternProcess>,
    haproxy: Haproxy,
    /// The three instances' CAs in one file: a client may land on any of them.
    trust: PathBuf,
    _dir: tempfile::TempDir,
}

impl Deployment {
    async fn start() -> Deployment {
        let postgres = Postgres::start();
        let url = postgres.create_database(DATABASE);
        let dovecot = Dovecot::start();
        for user in ["alice", "bob"] {
            dovecot.add_user(user, "direct-password");
        }
        let options = || Options {
            store_url: Some(url.clone()),
            trusted_networks: "[]",
            proxy_protocol: true,
            change_poll_interval: "30s",
            extra_config: "[smtp]\nmessages_per_hour = 2\n".into(),
            ..Options::default()
        };
        let mut instances = Vec::new();
        for _ in 0..3 {
            instances.push(PosternProcess::start(&dovecot, options()).await);
        }
        let imaps: Vec<_> = instances.iter().map(|i| i.imaps).collect();
        let smtps: Vec<_> = instances.iter().map(|i| i.smtps).collect();
        let haproxy = Haproxy::start(&[
            Route::round_robin(&imaps),
            Route::round_robin(&imaps),
            Route::round_robin(&imaps),
            Route::round_robin(&smtps),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let trust = dir.path().join("trust.pem");
        let bundle: String = instances
            .iter()
            .map(|i| std::fs::read_to_string(&i.ca_path).unwrap())
            .collect();
        std::fs::write(&trust, bundle).unwrap();
        Deployment {
            postgres,
            _dovecot: dovecot,
            instances,
            haproxy,
            trust,
            _dir: dir,
        }
    }

    /// Runs the CLI (another process, on the same store); panics unless it succeeds.
    fn cli(&self, args: &[&str]) -> String {
        let output = self.instances[0].cli(args);
        assert!(
            output.status.success(),
            "postern {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn add_user(&self, login: &str, upstream: &str) {
        let address = format!("{upstream}@example.test");
        self.cli(&[
            "user",
            "add",
            login,
            "--upstream-user",
            upstream,
            "--address",
            &address,
        ]);
    }

    /// A new app password for `login`: (id, password).
    fn issue(&self, login: &str) -> (i64, String) {
        let json = self.cli(&[
            "app-password",
            "create",
            login,
            "--name",
            "phone",
            "--scopes",
            "imap,smtp",
            "--json",
        ]);
        let issued: Value = serde_json::from_str(&json).unwrap();
        let password = issued["password"].as_str().unwrap().to_string();
        remember_secrets([password.clone()]);
        (issued["id"].as_i64().unwrap(), password)
    }

    /// An IMAP LOGIN through haproxy's `frontend`, from `from`: the session and the
    /// tagged reply.
    async fn login(
        &self,
        frontend: usize,
        from: &str,
        login: &str,
        password: &str,
    ) -> (ImapClient, String) {
        imap_login(
            self.haproxy.frontends[frontend],
            &self.trust,
            from,
            login,
            password,
        )
        .await
    }

    /// The same, in a task of its own: its tagged reply, when it comes.
    fn login_in_background(
        &self,
        frontend: usize,
        from: &'static str,
        login: &'static str,
        password: &'static str,
    ) -> tokio::task::JoinHandle<String> {
        let (address, trust) = (self.haproxy.frontends[frontend], self.trust.clone());
        tokio::spawn(async move { imap_login(address, &trust, from, login, password).await.1 })
    }

    /// The failures the store counts for a penalty key (`l:login`, `a:address`).
    fn failures(&self, key: &str) -> String {
        let sql = format!("SELECT failures FROM penalties WHERE key = '{key}'");
        self.postgres.psql(DATABASE, &sql).trim().to_string()
    }

    async fn until_failures(&self, key: &str, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.failures(key) != expected {
            assert!(
                Instant::now() < deadline,
                "{key} never had {expected} failures"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Each instance's count of IMAP logins with `result`.
    async fn logins(&self, result: &str) -> Vec<f64> {
        let series = format!(
            r#"postern_auth_attempts_total{{mechanism="login",protocol="imap",result="{result}"}}"#
        );
        let mut counts = Vec::new();
        for instance in &self.instances {
            counts.push(metric(&instance.metrics().await, &series));
        }
        counts
    }

    fn stop(mut self) {
        self.haproxy.stop();
        for instance in &mut self.instances {
            instance.stop();
        }
    }
}

/// Three wrong passwords for one login from three addresses, and two for three logins
/// from one address, over the three instances: the counts are the gateway's, and a penalty
/// earned on one instance holds on another.
#[tokio::test(flavor = "multi_thread")]
async fn guesses_spread_over_three_instances_earn_the_penalty_of_one() {
    let gateway = Deployment::start().await;
    for (login, upstream) in [("alice@example.test", "alice"), ("bob@example.test", "bob")] {
        gateway.add_user(login, upstream);
    }
    let (_, alice) = gateway.issue("alice@example.test");
    let (_, bob) = gateway.issue("bob@example.test");

    // One login: the first guess lands on instance X and is answered after 2 s; meanwhile
    // the right password, on instance Y, is held back by X's penalty.
    let first = gateway.login_in_background(LOGINS, "127.0.0.11", "alice@example.test", WRONG[0]);
    gateway.until_failures("l:alice@example.test", "1").await;
    let (_, held) = gateway
        .login(LOGINS, "127.0.0.12", "alice@example.test", &alice)
        .await;
    assert_eq!(held, UNAVAILABLE, "the penalty holds on another instance");
    assert_eq!(first.await.unwrap(), REFUSED);
    // The second guess, on instance Z, is the gateway's second: 4 s. Retyped on X, it
    // counts once.
    let (_, reply) = gateway
        .login(LOGINS, "127.0.0.13", "alice@example.test", WRONG[1])
        .await;
    assert_eq!(reply, REFUSED);
    assert_eq!(gateway.failures("l:alice@example.test"), "2");
    let (_, reply) = gateway
        .login(LOGINS, "127.0.0.14", "alice@example.test", WRONG[1])
        .await;
    assert_eq!(reply, REFUSED);
    assert_eq!(
        gateway.failures("l:alice@example.test"),
        "2",
        "a retyped password counts once"
    );
    // The right password, on Y again, clears the login for all.
    let (_, reply) = gateway
        .login(LOGINS, "127.0.0.15", "alice@example.test", &alice)
        .await;
    assert!(reply.starts_with("a1 OK"), "{reply}");
    gateway.until_failures("l:alice@example.test", "").await;
    // Each instance served logins, and the one that held the right password back had not
    // seen a wrong one itself.
    let bad = gateway.logins("bad_password").await;
    let limited = gateway.logins("rate_limited").await;
    let ok = gateway.logins("ok").await;
    assert_eq!(bad.iter().sum::<f64>(), 3.0, "{bad:?}");
    let y = limited
        .iter()
        .position(|&n| n == 1.0)
        .expect("one login held back");
    assert_eq!(
        bad[y], 0.0,
        "held back by another instance's penalty: {bad:?} {limited:?}"
    );
    assert_eq!(ok[y], 1.0, "{ok:?}");

    // One address: a guess for one login holds back another login from that address on
    // another instance, and the next guess, for a third login, is the address's second.
    let first =
        gateway.login_in_background(ADDRESSES, "127.0.0.21", "mallory@example.test", WRONG[0]);
    gateway.until_failures("a:127.0.0.21", "1").await;
    let (_, held) = gateway
        .login(ADDRESSES, "127.0.0.21", "bob@example.test", &bob)
        .await;
    assert_eq!(
        held, UNAVAILABLE,
        "the address's penalty holds on another instance"
    );
    assert_eq!(first.await.unwrap(), REFUSED);
    let (_, reply) = gateway
        .login(ADDRESSES, "127.0.0.21", "trent@example.test", WRONG[1])
        .await;
    assert_eq!(reply, REFUSED);
    assert_eq!(gateway.failures("a:127.0.0.21"), "2");
    gateway.stop();
}

/// A quota of two messages an hour holds over three instances; a revocation closes the
/// sessions on all three at once; PostgreSQL restarted underneath leaves cached logins
/// working, and revocations reach all three again once it is back.
#[tokio::test(flavor = "multi_thread")]
async fn quotas_revocations_and_a_store_restart_across_three_instances() {
    let mut gateway = Deployment::start().await;
    gateway.add_user("alice@example.test", "alice");
    let (id, password) = gateway.issue("alice@example.test");

    // Three messages, one per instance: the third is over the gateway's quota.
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("\0alice@example.test\0{password}"));
    let mut replies = Vec::new();
    for n in 0..3 {
        let (mut client, _) =
            SmtpClient::connect_tls(gateway.haproxy.frontends[SUBMISSION], &gateway.trust).await;
        client.command("EHLO phone").await;
        let reply = client.command(&format!("AUTH PLAIN {auth}")).await;
        assert!(reply.starts_with("235"), "{reply}");
        let mail = client.command("MAIL FROM:<alice@example.test>").await;
        if !mail.starts_with("250") {
            replies.push(mail);
            continue;
        }
        assert!(client
            .command("RCPT TO:<bob@example.test>")
            .await
            .starts_with("250"));
        assert!(client.command("DATA").await.starts_with("354"));
        client
            .send(format!("From: alice@example.test\r\nSubject: {n}\r\n\r\nhello\r\n").as_bytes())
            .await;
        replies.push(client.command(".").await);
    }
    assert!(
        replies[0].starts_with("250") && replies[1].starts_with("250"),
        "{replies:?}"
    );
    assert!(replies[2].starts_with("451 4.7.1"), "{replies:?}");

    // One IDLE session on each instance; the CLI revokes; all three close.
    let mut sessions = idling_on_each(&gateway, &password).await;
    let since = Instant::now();
    gateway.cli(&["app-password", "revoke", &id.to_string()]);
    for session in &mut sessions {
        assert!(session.closed_within(Duration::from_secs(10)).await);
    }
    eprintln!(
        "three instances closed the revoked sessions {:?} after the CLI began (poll every 30 s)",
        since.elapsed()
    );

    // PostgreSQL stops: logins each instance verified before keep working, a new one gets
    // a temporary failure.
    let (id, password) = gateway.issue("alice@example.test");
    drop(idling_on_each(&gateway, &password).await);
    gateway.postgres.stop();
    let mut sessions = idling_on_each(&gateway, &password).await;
    let (_, reply) = gateway
        .login(SESSIONS, "127.0.0.31", "alice@example.test", WRONG[0])
        .await;
    assert_eq!(reply, UNAVAILABLE);

    // Back again: a revocation reaches every instance as before.
    gateway.postgres.start_again();
    let since = Instant::now();
    gateway.cli(&["app-password", "revoke", &id.to_string()]);
    let revoked = since.elapsed();
    for (n, session) in sessions.iter_mut().enumerate() {
        let closed = session.closed_within(Duration::from_secs(10)).await;
        assert!(closed, "{}", gateway.instances[n].log());
    }
    eprintln!(
        "after PostgreSQL's restart, the three instances closed the revoked sessions {:?} \
         after the CLI began (the CLI took {revoked:?})",
        since.elapsed()
    );
    gateway.stop();
}

/// Three IMAP sessions through haproxy, idling: one on each instance (round robin), which
/// the instances' gauges confirm once earlier sessions have ended.
async fn idling_on_each(gateway: &Deployment, password: &str) -> Vec<ImapClient> {
    let mut sessions = Vec::new();
    for n in 0..3 {
        let from = format!("127.0.0.{}", 40 + n);
        let (mut client, reply) = gateway
            .login(SESSIONS, &from, "alice@example.test", password)
            .await;
        assert!(reply.starts_with("a1 OK"), "{reply}");
        client.command("a2", "SELECT INBOX").await;
        client.send(b"a3 IDLE\r\n").await;
        assert_eq!(client.read_line().await, "+ idling");
        sessions.push(client);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for instance in &gateway.instances {
        loop {
            let text = instance.metrics().await;
            if metric(&text, r#"postern_sessions_active{protocol="imap"}"#) == 1.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not one session on each instance:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    sessions
}

/// An IMAP LOGIN at `address` from `from`, trusting `trust`: the session and the tagged
/// reply.
async fn imap_login(
    address: std::net::SocketAddr,
    trust: &std::path::Path,
    from: &str,
    login: &str,
    password: &str,
) -> (ImapClient, String) {
    let from: IpAddr = from.parse().unwrap();
    let (mut client, greeting) = ImapClient::connect_tls_from(from, address, trust).await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let reply = client
        .command("a1", &format!("LOGIN {login} \"{password}\""))
        .await;
    (client, reply.last().cloned().unwrap_or_default())
}

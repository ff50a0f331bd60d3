//! The defences against password guessing and resource exhaustion, end to end: login
//! penalties, the bounded hash pool, equal time for unknown users, per-address caps.

mod support;

use std::time::{Duration, Instant};

use postern::store::Scope;
use support::dovecot::DovecotOptions;
use support::imap_client::ImapClient;
use support::postern::{metric, Options, Postern};
use support::smtp_client::SmtpClient;
use support::Dovecot;

const REFUSED: &str = "NO [AUTHENTICATIONFAILED] Authentication failed";
const UNAVAILABLE: &str = "NO [UNAVAILABLE] Service temporarily unavailable, try again later";

async fn setup(options: Options) -> (Dovecot, Postern, String) {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    let postern = Postern::start_with(&dovecot, options).await;
    postern.add_user("alice@example.test", "alice").await;
    let (_, password) = postern
        .issue("alice@example.test", &[Scope::Imap, Scope::Smtp], None)
        .await;
    (dovecot, postern, password)
}

fn hashes(postern: &Postern) -> f64 {
    metric(&postern.metrics(), "postern_password_hash_seconds_count")
}

fn attempts(postern: &Postern, result: &str) -> f64 {
    metric(
        &postern.metrics(),
        &format!("postern_auth_attempts_total{{mechanism=\"login\",protocol=\"imap\",result=\"{result}\"}}"),
    )
}

/// Waits until `condition` holds, polling the in-process gateway; panics after 20 s.
async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A failed login earns a penalty: while it runs, other attempts from the address or for
/// the login are answered at once with a temporary failure and never hashed; a login
/// whose password is already verified in the cache still gets in.
#[tokio::test(flavor = "multi_thread")]
async fn penalties_rate_limit_without_hashing_but_spare_cached_logins() {
    let options = Options {
        trusted_networks: "[]",
        ..Options::default()
    };
    let (_dovecot, postern, password) = setup(options).await;
    // The phone logged in before: its password is in the cache.
    let (mut phone, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let ok = phone
        .command("p1", &format!("LOGIN alice@example.test \"{password}\""))
        .await;
    assert!(ok.last().unwrap().starts_with("p1 OK"), "{ok:?}");

    let baseline = hashes(&postern);
    let (mut guesser, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    guesser
        .send(b"g1 LOGIN alice@example.test \"aaaa bbbb cccc dddd\"\r\n")
        .await;
    // The guess has been hashed; its answer now waits out the 2 s penalty.
    until("the guess to be hashed", || {
        hashes(&postern) == baseline + 1.0
    })
    .await;

    let (mut second, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let reply = second
        .command("s1", "LOGIN alice@example.test \"eeee ffff gggg hhhh\"")
        .await;
    assert_eq!(reply, vec![format!("s1 {UNAVAILABLE}")]);
    assert_eq!(attempts(&postern, "rate_limited"), 1.0);
    assert_eq!(
        hashes(&postern),
        baseline + 1.0,
        "a rate-limited attempt is never hashed"
    );

    let (mut phone_again, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let reply = phone_again
        .command("p2", &format!("LOGIN alice@example.test \"{password}\""))
        .await;
    assert!(
        reply.last().unwrap().starts_with("p2 OK"),
        "cached logins pass: {reply:?}"
    );

    assert_eq!(guesser.read_line().await, format!("g1 {REFUSED}"));
    assert_eq!(attempts(&postern, "bad_password"), 1.0);
    postern.stop().await;
}

/// With one hash worker busy, new unverified attempts wait the queue timeout and then get
/// a temporary failure; a cached login is answered meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_saturated_hash_pool_fails_fast_and_cached_logins_still_pass() {
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "x");
    // Expensive hashes (about half a second) and a single worker.
    let options = Options {
        auth_extra: "hash_workers = 1\nhash_queue_timeout = \"100ms\"\n\
                     argon2_memory_kib = 65536\nargon2_iterations = 8\n",
        ..Options::default()
    };
    let postern = Postern::start_with(&dovecot, options).await;
    postern.add_user("alice@example.test", "alice").await;
    let (_, password) = postern
        .issue("alice@example.test", &[Scope::Imap], None)
        .await;
    let (mut cached, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let ok = cached
        .command("c1", &format!("LOGIN alice@example.test \"{password}\""))
        .await;
    assert!(ok.last().unwrap().starts_with("c1 OK"), "{ok:?}");

    let mut guessers = Vec::new();
    for n in 0..4 {
        let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
        client
            .send(
                format!("g{n} LOGIN nobody{n}@example.test \"aaaa bbbb cccc dddd\"\r\n").as_bytes(),
            )
            .await;
        guessers.push(client);
    }
    let (mut cached_again, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let ok = cached_again
        .command("c2", &format!("LOGIN alice@example.test \"{password}\""))
        .await;
    assert!(ok.last().unwrap().starts_with("c2 OK"), "{ok:?}");

    let mut unavailable = 0;
    for (n, client) in guessers.iter_mut().enumerate() {
        let reply = client.read_line().await;
        if reply == format!("g{n} {UNAVAILABLE}") {
            unavailable += 1;
        } else {
            assert_eq!(reply, format!("g{n} {REFUSED}"));
        }
    }
    assert!(
        unavailable >= 2,
        "the pool turned attempts away: {unavailable}"
    );
    assert_eq!(attempts(&postern, "temporary_failure"), unavailable as f64);
    postern.stop().await;
}

/// Unknown users cost what wrong passwords cost: each spends exactly one argon2id
/// verification, and their answer times have the same distribution.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_users_take_as_long_as_wrong_passwords() {
    let (_dovecot, postern, _) = setup(Options::default()).await;
    let mut unknown = Vec::new();
    let mut wrong = Vec::new();
    // Interleaved, so machine noise hits both alike; a fresh connection per pair, as
    // three failures close a connection.
    for round in 0..20 {
        let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
        for (user, times) in [
            ("nobody@example.test", &mut unknown),
            ("alice@example.test", &mut wrong),
        ] {
            let tag = format!("r{round}");
            let before = hashes(&postern);
            let started = Instant::now();
            let reply = client
                .command(&tag, &format!("LOGIN {user} \"aaaa bbbb cccc dddd\""))
                .await;
            times.push(started.elapsed());
            assert_eq!(reply, vec![format!("{tag} {REFUSED}")]);
            assert_eq!(hashes(&postern), before + 1.0, "{user}: one verification");
        }
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (unknown, wrong) = (median(&mut unknown), median(&mut wrong));
    eprintln!("median answer: unknown user {unknown:?}, wrong password {wrong:?}");
    let ratio = unknown.as_secs_f64() / wrong.as_secs_f64();
    assert!(
        (0.6..1.6).contains(&ratio),
        "unknown {unknown:?} vs wrong {wrong:?}"
    );
    postern.stop().await;
}

/// One address may hold `max_connections_per_ip` connections per listener; the next one
/// gets the protocol's "too many connections" reply.
#[tokio::test(flavor = "multi_thread")]
async fn connections_per_address_are_capped() {
    let options = Options {
        network_extra: "max_connections_per_ip = 2\n",
        trusted_networks: "[]",
        ..Options::default()
    };
    let (_dovecot, postern, _) = setup(options).await;
    let (_a, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let (_b, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let (mut c, greeting) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    assert_eq!(greeting, "* BYE Too many connections from your address");
    assert!(c.closed_within(Duration::from_secs(10)).await);
    let from = "127.0.0.2".parse().unwrap();
    let (_d, greeting) = ImapClient::connect_tls_from(from, postern.imaps, &postern.ca_path).await;
    assert!(greeting.starts_with("* OK"), "another address: {greeting}");

    let (_s1, _) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
    let (_s2, _) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
    let (_s3, greeting) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
    assert_eq!(greeting, "421 4.7.0 Too many connections from your address");
    postern.stop().await;
}

/// A full listener answers the connections over its cap with the protocol's temporary
/// refusal instead of leaving them hanging, and takes clients again once there is room.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_listener_says_so() {
    let options = Options {
        max_connections: 2,
        ..Options::default()
    };
    let (_dovecot, postern, _) = setup(options).await;
    let (a, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let (_b, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let (_, greeting) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    assert_eq!(greeting, "* BYE Too many connections, try again later");
    let (_, greeting) = SmtpClient::connect_plain(postern.submission).await;
    assert!(
        greeting.starts_with("220 "),
        "another listener has room: {greeting}"
    );
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, greeting) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
        if greeting.starts_with("* OK") {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = postern.metrics();
    assert!(
        metric(
            &metrics,
            "postern_connections_total{listener=\"imaps\",protocol=\"imap\"}"
        ) >= 4.0
    );
    postern.stop().await;
}

/// Trusted networks are exempt from the per-address cap: the office that is trusted holds
/// as many connections as it needs.
#[tokio::test(flavor = "multi_thread")]
async fn trusted_addresses_are_not_capped() {
    let options = Options {
        network_extra: "max_connections_per_ip = 2\n",
        ..Options::default()
    };
    let (_dovecot, postern, _) = setup(options).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let (client, greeting) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
        assert!(greeting.starts_with("* OK"), "{greeting}");
        held.push(client);
    }
    postern.stop().await;
}

/// An office of 200 people behind one NAT address, each mail client holding ten IMAP
/// sessions: with the default caps all 2,000 log in. One login still cannot take more
/// than its share of the address: the session over `max_sessions_per_user_ip` (20 by
/// default) gets `NO [LIMIT]`, and a place frees when a session ends.
#[tokio::test(flavor = "multi_thread")]
async fn an_office_behind_one_address_logs_everyone_in_with_the_defaults() {
    const USERS: usize = 200;
    const SESSIONS_EACH: usize = 10;
    support::system::raise_nofile();
    let dovecot = Dovecot::start_with(DovecotOptions {
        max_sessions: Some((USERS * SESSIONS_EACH + 100) as u32),
        login_high_performance: true,
        ..DovecotOptions::default()
    });
    let options = Options {
        trusted_networks: "[]",
        // Cheap hashes: issuing 200 app passwords is not what this test is about.
        auth_extra: "argon2_memory_kib = 1024\nargon2_iterations = 1",
        ..Options::default()
    };
    let postern = Postern::start_with(&dovecot, options).await;
    let mut passwords = Vec::new();
    for user in 0..USERS {
        dovecot.add_user(&format!("user{user}"), "direct-password");
        let login = format!("user{user}@example.test");
        postern.add_user(&login, &format!("user{user}")).await;
        let (_, password) = postern.issue(&login, &[Scope::Imap], None).await;
        passwords.push((login, password));
    }

    let log_in = |login: String, password: String| {
        let (address, ca) = (postern.imaps, postern.ca_path.clone());
        async move {
            let (mut client, greeting) = ImapClient::connect_tls(address, &ca).await;
            assert!(greeting.starts_with("* OK"), "{greeting}");
            let reply = client
                .command("a1", &format!("LOGIN {login} \"{password}\""))
                .await;
            (client, reply.last().cloned().unwrap_or_default())
        }
    };
    let jobs: Vec<(String, String)> = (0..SESSIONS_EACH)
        .flat_map(|_| passwords.iter().cloned())
        .collect();
    let mut sessions = Vec::new();
    let mut pending = tokio::task::JoinSet::new();
    for (login, password) in jobs {
        if pending.len() >= 64 {
            sessions.push(pending.join_next().await.unwrap().unwrap());
        }
        pending.spawn(log_in(login, password));
    }
    while let Some(done) = pending.join_next().await {
        sessions.push(done.unwrap());
    }
    let refused: Vec<&String> = sessions
        .iter()
        .map(|(_, reply)| reply)
        .filter(|reply| !reply.starts_with("a1 OK"))
        .collect();
    assert!(
        refused.is_empty(),
        "{} refused: {:?}; postern warned: {:?}",
        refused.len(),
        &refused[..refused.len().min(5)],
        support::postern::logged_lines("ERROR")
            .iter()
            .take(5)
            .collect::<Vec<_>>()
    );
    let _ = std::fs::write("/tmp/dovecot-office.log", dovecot.log());
    assert_eq!(sessions.len(), USERS * SESSIONS_EACH);
    let metrics = postern.metrics();
    assert_eq!(
        metric(&metrics, "postern_sessions_active{protocol=\"imap\"}"),
        (USERS * SESSIONS_EACH) as f64
    );

    // user0's share: ten more sessions fit (20 in all), the next one does not.
    let (login, password) = passwords[0].clone();
    let mut more = Vec::new();
    for _ in SESSIONS_EACH..20 {
        let (client, reply) = log_in(login.clone(), password.clone()).await;
        assert!(reply.starts_with("a1 OK"), "{reply}");
        more.push(client);
    }
    let (_, reply) = log_in(login.clone(), password.clone()).await;
    assert_eq!(
        reply,
        "a1 NO [LIMIT] Too many sessions for this user from your address"
    );
    let (_other, reply) = log_in(passwords[1].0.clone(), passwords[1].1.clone()).await;
    assert!(
        reply.starts_with("a1 OK"),
        "another login has its own share: {reply}"
    );
    let active = |postern: &Postern| {
        metric(
            &postern.metrics(),
            "postern_sessions_active{protocol=\"imap\"}",
        )
    };
    let before = active(&postern);
    let mut ended = more.pop().unwrap();
    let logout = ended.command("a2", "LOGOUT").await;
    assert!(logout.last().unwrap().starts_with("a2 OK"), "{logout:?}");
    drop(ended);
    until("the logged-out session has ended", || {
        active(&postern) == before - 1.0
    })
    .await;
    let (client, reply) = log_in(login.clone(), password.clone()).await;
    assert!(reply.starts_with("a1 OK"), "a place freed: {reply}");
    more.push(client);
    let metrics = postern.metrics();
    assert_eq!(
        metric(
            &metrics,
            "postern_auth_attempts_total{mechanism=\"login\",protocol=\"imap\",result=\"session_limit\"}"
        ),
        1.0,
        "{metrics}"
    );
    drop((sessions, more));
    postern.stop().await;
}

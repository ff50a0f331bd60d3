//! The soak: postern in front of a real Dovecot under a mixed load for a bounded time
//! (issue #5), run on demand, not in CI:
//!
//!     cargo bench --bench soak                     # 10 minutes of load
//!     SOAK_SECONDS=120 cargo bench --bench soak    # a shorter run
//!
//! What runs at once, all on loopback against the release `postern` binary as a separate
//! process (so its RSS is its own):
//! - `SOAK_IDLE` (2000) authenticated IMAP sessions sitting in IDLE for the whole run,
//!   opened first; each must still answer DONE with OK at the end;
//! - logins with a cached credential: `SOAK_CACHED_RATE` (10) full cycles a second
//!   (connect, TLS, LOGIN, SELECT, LOGOUT), each must succeed;
//! - logins with an uncached credential (a fresh app password each, so a store lookup
//!   and one argon2id): `SOAK_UNCACHED_RATE` (1) a second;
//! - SMTP submissions of 10 KiB messages over implicit TLS: `SOAK_SMTP_RATE` (4) a
//!   second on 4 sessions that log in again every 50 messages; each must get 250, and at
//!   the end exactly the accepted messages must be in the recipient's Maildir;
//! - after a baseline of `SOAK_BASELINE_SECONDS` (120) without it, a flood of wrong
//!   passwords as fast as postern answers: 32 connections from 8 untrusted addresses
//!   (127.0.0.2–.9) against 8 logins, real and unknown. No wrong password may get in.
//!
//! Every 30 s it prints postern's RSS and what has been done so far. At the end it
//! prints the errors of the legitimate clients (must be 0), RSS over time (after the
//! warm-up it must stay flat), and the latency percentiles of the legitimate logins,
//! without and with the flood; it exits 1 when a legitimate client failed, a wrong
//! password got in, a session was lost or postern logged a panic. Nothing here asserts a
//! time.

#[path = "../tests/support/mod.rs"]
mod support;

mod load;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use load::accounts::Issuer;
use load::flood::Flood;
use load::imap::{idle_session, ImapClient};
use load::message::Generator;
use load::net::{connector, Target};
use load::postern::{metric, PosternProcess, Settings};
use load::procfs;
use load::smtp::SmtpClient;
use load::stats::{ms, Latencies};
use postern::store::{NewUser, Store};
use support::dovecot::DovecotOptions;
use support::Dovecot;
use tokio::task::JoinSet;

const DOMAIN: &str = "example.test";
const KIB: u64 = 1024;
/// Users the idle sessions log in as (round-robin).
const IDLE_USERS: usize = 100;
/// Concurrent openers of the idle sessions.
const IDLE_OPENERS: usize = 32;
/// Workers sharing the cached login rate, each with its own user.
const CACHED_WORKERS: usize = 4;
const SMTP_SESSIONS: usize = 4;
const SMTP_MESSAGE: u64 = 10 * KIB;
/// Messages per SMTP session before it quits and logs in again.
const SMTP_PER_SESSION: usize = 50;
const FLOOD_CONNECTIONS: usize = 32;
const FLOOD_SOURCES: u8 = 8;
/// How often the progress line (and an RSS sample) is printed.
const SAMPLE_EVERY: Duration = Duration::from_secs(30);

fn main() {
    let seconds: u64 = env_parse("SOAK_SECONDS", 600);
    let idle_sessions: usize = env_parse("SOAK_IDLE", 2000);
    let cached_rate: f64 = env_parse("SOAK_CACHED_RATE", 10.0);
    let uncached_rate: f64 = env_parse("SOAK_UNCACHED_RATE", 1.0);
    let smtp_rate: f64 = env_parse("SOAK_SMTP_RATE", 4.0);
    let baseline = Duration::from_secs(env_parse("SOAK_BASELINE_SECONDS", 120).min(seconds));
    let duration = Duration::from_secs(seconds);

    let (soft, hard) = support::system::raise_nofile();
    let mut sysctls = Vec::new();
    for (name, value) in [
        (
            "fs.inotify.max_user_instances",
            2 * idle_sessions as u64 + 1024,
        ),
        (
            "fs.inotify.max_user_watches",
            8 * idle_sessions as u64 + 65536,
        ),
    ] {
        match support::system::Sysctl::raise(name, value) {
            Ok(guard) => sysctls.extend(guard),
            Err(why) => eprintln!("WARNING: cannot raise {name} to {value} ({why})"),
        }
    }
    println!(
        "soak: {seconds} s of load ({} s baseline, then the flood), {idle_sessions} idle \
         sessions, {cached_rate}/s cached and {uncached_rate}/s uncached logins, \
         {smtp_rate}/s submissions; open files {soft}/{hard}",
        baseline.as_secs()
    );

    let dovecot = Dovecot::start_with(DovecotOptions {
        max_sessions: Some(idle_sessions as u32 + 200),
        ..DovecotOptions::default()
    });
    let postern = PosternProcess::start(
        &dovecot,
        Settings {
            max_connections: idle_sessions + 2000,
            extra: "[smtp]\nmessages_per_hour = 0\nrecipients_per_hour = 0\n\n\
                    [network]\nmax_connections_per_ip = 0\nmax_sessions_per_user_ip = 0\n"
                .to_string(),
            ..Settings::default()
        },
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let imap = Target::new(
        "postern",
        postern.imaps.unwrap(),
        connector(&postern.ca_path, false),
    );
    let smtp = Target::new(
        "postern",
        postern.smtps.unwrap(),
        connector(&postern.ca_path, false),
    );

    let uncached_needed = (uncached_rate * seconds as f64).ceil() as usize + 10;
    let accounts = runtime.block_on(create_accounts(&dovecot, &postern, uncached_needed));
    let soak = Arc::new(Soak {
        imap,
        smtp,
        accounts,
        stop: AtomicBool::new(false),
        flooding: AtomicBool::new(false),
        errors: Mutex::new(Vec::new()),
        error_count: AtomicU64::new(0),
        cached: Mutex::new(Windows::default()),
        uncached: Mutex::new(Windows::default()),
        submitted: AtomicU64::new(0),
    });
    let outcome = runtime.block_on(soak.clone().run(
        &postern,
        idle_sessions,
        duration,
        baseline,
        Rates {
            cached: cached_rate,
            uncached: uncached_rate,
            smtp: smtp_rate,
        },
    ));

    // Nothing lost: every accepted message is in the sink's Maildir.
    let delivered = count_messages(&dovecot.maildir("sink"));
    let submitted = soak.submitted.load(Ordering::SeqCst);
    let log = postern.log();
    let panics = log.matches("panicked").count();
    let error_lines = log.lines().filter(|l| l.contains("ERROR")).count();

    println!("\n== soak results ({seconds} s) ==");
    let errors = soak.error_count.load(Ordering::SeqCst);
    println!("legitimate client errors: {errors}");
    for e in soak.errors.lock().unwrap().iter().take(10) {
        println!("  {e}");
    }
    println!(
        "idle sessions: {} opened, {} still answering DONE at the end",
        outcome.idle_opened, outcome.idle_alive
    );
    println!("messages: {submitted} accepted (250), {delivered} in the recipient's Maildir");
    if let Some(flood) = &outcome.flood {
        println!("flood: {flood}");
    }
    println!("postern log: {panics} panics, {error_lines} ERROR lines");
    for line in log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("panicked"))
        .take(5)
    {
        println!("  {line}");
    }
    println!("\npostern RSS over time:");
    for sample in &outcome.samples {
        println!(
            "  t={:>5.0} s  RSS {:>7.1} MiB  sessions {:>5}  {}",
            sample.at.as_secs_f64(),
            sample.rss_kib as f64 / 1024.0,
            sample.sessions,
            sample.note
        );
    }
    if let (Some(warm), Some(last)) = (
        outcome.samples.iter().find(|s| s.at >= baseline),
        outcome.samples.last(),
    ) {
        println!(
            "  after warm-up (t={:.0} s): {:.1} MiB; at the end: {:.1} MiB ({:+.1} MiB)",
            warm.at.as_secs_f64(),
            warm.rss_kib as f64 / 1024.0,
            last.rss_kib as f64 / 1024.0,
            (last.rss_kib as f64 - warm.rss_kib as f64) / 1024.0
        );
    }
    println!(
        "\nlogin cycles of the legitimate clients, ms (connect + TLS + LOGIN + SELECT + LOGOUT):"
    );
    println!(
        "  {:<34} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "", "count", "p50", "p90", "p99", "max"
    );
    for (name, windows) in [("cached", &soak.cached), ("uncached", &soak.uncached)] {
        let mut guard = windows.lock().unwrap();
        let Windows { before, during } = &mut *guard;
        for (when, latencies) in [("before the flood", before), ("during the flood", during)] {
            println!(
                "  {:<34} {:>7} {}",
                format!("{name}, {when}"),
                latencies.len(),
                percentiles(latencies)
            );
        }
    }

    let failed = errors > 0
        || outcome.idle_alive != idle_sessions
        || delivered != submitted
        || panics > 0
        || outcome.flood.as_ref().is_some_and(|f| f.accepted > 0);
    postern.stop();
    drop(sysctls);
    if failed {
        println!("\nSOAK FAILED");
        std::process::exit(1);
    }
    println!("\nsoak passed: no errors, nothing lost");
}

fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentiles(latencies: &mut Latencies) -> String {
    if latencies.is_empty() {
        return "      —".into();
    }
    format!(
        "{:>7.1} {:>7.1} {:>7.1} {:>7.1}",
        ms(latencies.p50()),
        ms(latencies.quantile(0.90)),
        ms(latencies.p99()),
        ms(latencies.max())
    )
}

/// Files in a Maildir's new/ and cur/.
fn count_messages(maildir: &std::path::Path) -> u64 {
    ["new", "cur"]
        .iter()
        .filter_map(|d| std::fs::read_dir(maildir.join(d)).ok())
        .map(|entries| entries.count() as u64)
        .sum()
}

// ---------------------------------------------------------------------------------------
// Accounts

struct Accounts {
    /// (login, app password) for the idle sessions.
    idle: Vec<(String, String)>,
    /// One per cached-login worker.
    cached: Vec<(String, String)>,
    /// Single-use credentials for the uncached logins.
    fresh: Mutex<Vec<(String, String)>>,
    /// (login, app password, sender address) per SMTP session.
    smtp: Vec<(String, String, String)>,
    /// The recipient of every message.
    sink: String,
    /// What the flood attacks: real logins and unknown ones.
    flooded: Vec<String>,
}

/// Users in Dovecot and postern's store, and their app passwords.
async fn create_accounts(dovecot: &Dovecot, postern: &PosternProcess, fresh: usize) -> Accounts {
    let started = Instant::now();
    let store = Store::open(&postern.store_url)
        .await
        .expect("open postern's store");
    let issuer = Issuer::new(&store, &postern.config_path, DOMAIN).await;
    let max_live = 40;
    let mut users: Vec<(String, usize)> = Vec::new();
    users.extend((0..IDLE_USERS).map(|i| (format!("i{i}"), 1)));
    users.extend((0..CACHED_WORKERS).map(|i| (format!("c{i}"), 1)));
    users.extend((0..fresh.div_ceil(max_live)).map(|i| (format!("n{i}"), max_live)));
    users.extend((0..SMTP_SESSIONS).map(|i| (format!("m{i}"), 1)));
    users.extend((0..4).map(|i| (format!("v{i}"), 1)));
    dovecot.add_user("sink", "sink-direct-password");
    let now = postern::clock::now();
    let mut jobs = Vec::new();
    for (name, count) in &users {
        dovecot.add_user(name, &format!("{name}-direct-pw"));
        let login = format!("{name}@{DOMAIN}");
        store
            .add_user(
                &NewUser {
                    login: &login,
                    upstream_user: name,
                    addresses: std::slice::from_ref(&login),
                },
                now,
            )
            .await
            .expect("add user");
        jobs.extend((0..*count).map(|i| (name.clone(), i)));
    }
    let issued = issuer.issue_all(jobs).await;
    let of = |prefix: &str| -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = issued
            .iter()
            .filter(|(name, _)| {
                name.strip_prefix(prefix)
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
            })
            .map(|(name, password)| (format!("{name}@{DOMAIN}"), password.clone()))
            .collect();
        found.sort();
        found
    };
    let mut flooded: Vec<String> = of("v").into_iter().map(|(login, _)| login).collect();
    flooded.extend((0..4).map(|i| format!("nobody{i}@{DOMAIN}")));
    let accounts = Accounts {
        idle: of("i"),
        cached: of("c"),
        fresh: Mutex::new(of("n")),
        smtp: of("m")
            .into_iter()
            .map(|(login, password)| (login.clone(), password, login))
            .collect(),
        sink: format!("sink@{DOMAIN}"),
        flooded,
    };
    println!(
        "setup: {} users, {} app passwords in {:.1} s",
        users.len() + 1,
        issued.len(),
        started.elapsed().as_secs_f64()
    );
    accounts
}

// ---------------------------------------------------------------------------------------
// The run

struct Rates {
    cached: f64,
    uncached: f64,
    smtp: f64,
}

/// Latencies before and during the flood.
#[derive(Default)]
struct Windows {
    before: Latencies,
    during: Latencies,
}

struct Sample {
    at: Duration,
    rss_kib: u64,
    sessions: i64,
    note: String,
}

struct Outcome {
    idle_opened: usize,
    idle_alive: usize,
    flood: Option<load::flood::FloodSummary>,
    samples: Vec<Sample>,
}

struct Soak {
    imap: Target,
    smtp: Target,
    accounts: Accounts,
    stop: AtomicBool,
    flooding: AtomicBool,
    errors: Mutex<Vec<String>>,
    error_count: AtomicU64,
    cached: Mutex<Windows>,
    uncached: Mutex<Windows>,
    submitted: AtomicU64,
}

impl Soak {
    async fn run(
        self: Arc<Self>,
        postern: &PosternProcess,
        idle_sessions: usize,
        duration: Duration,
        baseline: Duration,
        rates: Rates,
    ) -> Outcome {
        let opening = Instant::now();
        let idle = self.open_idle(idle_sessions).await;
        let idle_opened = idle.len();
        println!(
            "opened {idle_opened} idle sessions in {:.1} s",
            opening.elapsed().as_secs_f64()
        );

        let started = Instant::now();
        let mut workers = JoinSet::new();
        for (i, credentials) in self.accounts.cached.iter().enumerate() {
            let period = Duration::from_secs_f64(self.accounts.cached.len() as f64 / rates.cached);
            let (soak, credentials) = (self.clone(), credentials.clone());
            workers.spawn(async move { soak.cached_logins(i, credentials, period).await });
        }
        {
            let period = Duration::from_secs_f64(1.0 / rates.uncached);
            let soak = self.clone();
            workers.spawn(async move { soak.uncached_logins(period).await });
        }
        for i in 0..self.accounts.smtp.len() {
            let period = Duration::from_secs_f64(self.accounts.smtp.len() as f64 / rates.smtp);
            let soak = self.clone();
            workers.spawn(async move { soak.submissions(i, period).await });
        }

        let pid = postern.pid();
        let mut samples = Vec::new();
        let mut flood = None;
        let mut flood_summary = None;
        let mut next_sample = Duration::ZERO;
        loop {
            let at = started.elapsed();
            if flood.is_none() && at >= baseline && at < duration {
                let sources: Vec<IpAddr> = (0..FLOOD_SOURCES)
                    .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i)))
                    .collect();
                flood = Some(Flood::start(
                    &self.imap,
                    &sources,
                    &self.accounts.flooded,
                    FLOOD_CONNECTIONS,
                ));
                self.flooding.store(true, Ordering::SeqCst);
                println!("t={:.0} s: the flood starts", at.as_secs_f64());
            }
            if at >= next_sample || at >= duration {
                let metrics = tokio::task::block_in_place(|| postern.metrics());
                let rss_kib = procfs::try_memory(pid).map_or(0, |m| m.rss_kib);
                let note = format!(
                    "logins ok {:.0}, refused {:.0}, rate limited {:.0}; messages {:.0}; errors {}",
                    metric(&metrics, "postern_auth_attempts_total{mechanism=\"login\",protocol=\"imap\",result=\"ok\"}"),
                    metric(&metrics, "postern_auth_attempts_total{mechanism=\"login\",protocol=\"imap\",result=\"bad_password\"}")
                        + metric(&metrics, "postern_auth_attempts_total{mechanism=\"login\",protocol=\"imap\",result=\"unknown_user\"}"),
                    metric(&metrics, "postern_auth_attempts_total{mechanism=\"login\",protocol=\"imap\",result=\"rate_limited\"}"),
                    metric(&metrics, "postern_smtp_messages_total{result=\"accepted\"}"),
                    self.error_count.load(Ordering::SeqCst),
                );
                let sample = Sample {
                    at,
                    rss_kib,
                    sessions: metric(&metrics, "postern_sessions_active{protocol=\"imap\"}") as i64,
                    note,
                };
                println!(
                    "t={:>4.0} s  RSS {:.1} MiB  imap sessions {}  {}",
                    at.as_secs_f64(),
                    rss_kib as f64 / 1024.0,
                    sample.sessions,
                    sample.note
                );
                samples.push(sample);
                next_sample += SAMPLE_EVERY;
            }
            if at >= duration {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(flood) = flood.take() {
            flood_summary = Some(flood.stop().await);
        }
        while let Some(done) = workers.join_next().await {
            done.expect("a load worker panicked");
        }

        // Every idle session must still be there: DONE gets its OK.
        let mut alive = 0;
        let mut closing = JoinSet::new();
        for mut session in idle {
            closing.spawn(async move {
                let ok = matches!(session.done().await, Ok(r) if r.is_ok())
                    && session.logout().await.is_ok();
                session.close().await;
                ok
            });
        }
        while let Some(done) = closing.join_next().await {
            if done.unwrap_or(false) {
                alive += 1;
            } else {
                self.error("an idle session did not answer DONE at the end".into());
            }
        }
        Outcome {
            idle_opened,
            idle_alive: alive,
            flood: flood_summary,
            samples,
        }
    }

    fn error(&self, what: String) {
        self.error_count.fetch_add(1, Ordering::SeqCst);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 100 {
            errors.push(what);
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn record(&self, windows: &Mutex<Windows>, elapsed: Duration) {
        let mut windows = windows.lock().unwrap();
        if self.flooding.load(Ordering::SeqCst) {
            windows.during.record(elapsed);
        } else {
            windows.before.record(elapsed);
        }
    }

    async fn open_idle(&self, count: usize) -> Vec<ImapClient> {
        let next = Arc::new(AtomicU64::new(0));
        let mut openers = JoinSet::new();
        for _ in 0..IDLE_OPENERS {
            let (next, target) = (next.clone(), self.imap.clone());
            let accounts = self.accounts.idle.clone();
            openers.spawn(async move {
                let mut opened = Vec::new();
                let mut failed = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                    if i >= count {
                        return (opened, failed);
                    }
                    let (login, password) = &accounts[i % accounts.len()];
                    match idle_session(&target, login, password).await {
                        Ok(session) => opened.push(session),
                        Err(e) => failed.push(format!("idle session {i}: {e:#}")),
                    }
                }
            });
        }
        let mut all = Vec::new();
        while let Some(done) = openers.join_next().await {
            let (opened, failed) = done.unwrap();
            all.extend(opened);
            for e in failed {
                self.error(e);
            }
        }
        all
    }

    /// One login cycle as a mail client does it at startup.
    async fn login_cycle(&self, login: &str, password: &str) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut client = ImapClient::connect(&self.imap, None).await?;
        client.login_ok(login, password).await?;
        client.select("INBOX").await?;
        client.logout().await?;
        let elapsed = started.elapsed();
        client.close().await;
        Ok(elapsed)
    }

    async fn cached_logins(
        &self,
        worker: usize,
        (login, password): (String, String),
        period: Duration,
    ) {
        let mut ticker = ticker(period, worker, self.accounts.cached.len());
        while !self.stopped() {
            ticker.tick().await;
            match self.login_cycle(&login, &password).await {
                Ok(elapsed) => self.record(&self.cached, elapsed),
                Err(e) => self.error(format!("cached login as {login}: {e:#}")),
            }
        }
    }

    async fn uncached_logins(&self, period: Duration) {
        let mut ticker = ticker(period, 0, 1);
        while !self.stopped() {
            ticker.tick().await;
            let Some((login, password)) = self.accounts.fresh.lock().unwrap().pop() else {
                self.error("ran out of fresh app passwords".into());
                return;
            };
            match self.login_cycle(&login, &password).await {
                Ok(elapsed) => self.record(&self.uncached, elapsed),
                Err(e) => self.error(format!("uncached login as {login}: {e:#}")),
            }
        }
    }

    async fn submissions(&self, worker: usize, period: Duration) {
        let (login, password, from) = &self.accounts.smtp[worker];
        let mut ticker = ticker(period, worker, self.accounts.smtp.len());
        let mut n = 0u64;
        while !self.stopped() {
            let mut session =
                match SmtpClient::connect_and_auth(&self.smtp, None, login, password).await {
                    Ok(session) => session,
                    Err(e) => {
                        self.error(format!("SMTP login as {login}: {e:#}"));
                        ticker.tick().await;
                        continue;
                    }
                };
            for _ in 0..SMTP_PER_SESSION {
                if self.stopped() {
                    break;
                }
                ticker.tick().await;
                n += 1;
                let message = Generator::new(SMTP_MESSAGE, from, &self.accounts.sink);
                match session
                    .send_generated(from, &self.accounts.sink, message)
                    .await
                {
                    Ok(_) => {
                        self.submitted.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        self.error(format!("message {n} from {login}: {e:#}"));
                        break;
                    }
                }
            }
            if let Err(e) = session.quit().await {
                self.error(format!("SMTP QUIT as {login}: {e:#}"));
            }
        }
    }
}

/// A ticker firing every `period`, offset so that `count` workers spread over it.
fn ticker(period: Duration, worker: usize, count: usize) -> tokio::time::Interval {
    let offset = period.mul_f64(worker as f64 / count.max(1) as f64);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

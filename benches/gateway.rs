//! postern against direct Dovecot, side by side in one run (issue #6).
//!
//!     cargo bench --bench gateway                      # every row, 3 runs each
//!     cargo bench --bench gateway -- login relay       # only these rows
//!     BENCH_RUNS=5 cargo bench --bench gateway         # more runs
//!
//! Rows: `login`, `relay`, `pop3`, `nginx`, `xoauth2`, `instances`, `portal`, `idle`,
//! `smtp`, `flood`, `growth`. The nginx row needs `apt-get install nginx-core
//! libnginx-mod-mail` and is skipped with a warning without them. It starts a private
//! Dovecot (IMAP, POP3 and submission; tests/support) and the release `postern` binary as a separate
//! process in front of it (so its RSS and CPU are its own), then measures every row
//! through postern and straight against Dovecot, alternating which goes first from run to
//! run, and prints medians over the runs (min–max in brackets) and the ratio
//! postern/direct. Clients are Rust (benches/load/): full TLS handshakes (no session
//! resumption), TCP_NODELAY. Nothing here asserts a time: it measures.
//!
//! Environment:
//! - `BENCH_RUNS` (3): repetitions of every row but idle;
//! - `BENCH_IDLE_SESSIONS` ("1000,8000"): the idle session counts, ascending;
//! - `BENCH_IDLE_PROTOCOL` (`imap`): `imap` (sessions in IDLE) or `pop3` (logged-in
//!   sessions, silent) for the idle row, one per run;
//! - `BENCH_TLS_KEY` (`rsa`): `rsa` (RSA-2048, as the issue's reference numbers) or
//!   `ecdsa` (P-256 from the test CA) for both servers' certificates;
//! - `BENCH_TLS_RESUME` (unset): set to 1 to let the load clients resume TLS sessions;
//! - `BENCH_DOVECOT_LOGIN` (`performance`): `performance` (`service_count = 0`, one
//!   long-lived login process per core, as sites with many users run Dovecot) or
//!   `security` (a login process per connection, Dovecot's default);
//! - `BENCH_GROWTH_USERS` (1000000): the store size of the growth row's big case;
//! - `BENCH_PERF` (unset): `imap-c1`, `imap-c32`, `pop3-c1` or `pop3-c32` records a
//!   `perf record -g` profile of postern during that phase of cached logins, and
//!   `pop3-retr` during the RETRs of 10 MiB (whose MiB/s then include perf's start), in
//!   `target/perf-<label>.data` (the last run's).
//!
//! Choices worth knowing when reading the numbers:
//! - Dovecot's auth cache is off (`auth_cache_size = 0`, the harness's setting), so a
//!   direct login is always "uncached"; the same direct numbers stand against both the
//!   cached and the uncached postern rows. Dovecot's passwords are PLAIN (no hashing).
//! - Uncached postern logins use a fresh app password per cycle (issued up front, many
//!   per user, each used once), so every cycle pays the store lookup and one argon2id.
//! - Penalties: postern's `trusted_networks` is only 127.0.0.3/32. Measured clients
//!   connect from 127.0.0.1 and never fail a login; the flood row's penalised flooder
//!   connects from 127.0.0.2 (penalties apply to it, and to the login it attacks), the
//!   unpenalised one from 127.0.0.3 (every attempt reaches argon2: the worst case for
//!   the hash pool). `max_connections_per_ip = 0`, `max_sessions_per_user_ip = 0` and
//!   `messages_per_hour = 0`.

#[path = "../tests/support/mod.rs"]
mod support;

mod load;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use load::accounts::Issuer;
use load::flood::Flood;
use load::imap::{idle_session, login_cycle, ImapClient};
use load::message::{mailbox_message, Generator};
use load::net::{connector, rsa_chain, Target};
use load::nginx::Nginx;
use load::postern::{metric, PosternProcess, Settings};
use load::procfs;
use load::smtp::{measure_big_message, SmtpClient};
use load::stats::{median, ms, Latencies};
use postern::auth::digest::DigestKey;
use postern::auth::password;
use postern::store::{NewUser, Store};
use rand::Rng;
use support::dovecot::DovecotOptions;
use support::Dovecot;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

const MIB: u64 = 1024 * 1024;
const DOMAIN: &str = "example.test";

const ROWS: [&str; 11] = [
    "login",
    "relay",
    "pop3",
    "nginx",
    "xoauth2",
    "instances",
    "portal",
    "idle",
    "smtp",
    "flood",
    "growth",
];

// Work per run (defaults sized for ~10 minutes in all on a 2-core machine).
const CACHED_C1_CYCLES: usize = 150;
const UNCACHED_C1_CYCLES: usize = 30;
const C32: usize = 32;
const CACHED_C32_PER_WORKER: usize = 15;
const UNCACHED_C32_PER_WORKER: usize = 3;
const RELAY_MAILBOX: usize = 2000;
const RELAY_BIG_MIB: u64 = 10;
const RELAY_BIG_FETCHES: usize = 4;
const RELAY_LIST_FETCHES: usize = 3;
const IDLE_USERS: usize = 200;
const C16: usize = 16;
const PORTAL_C1_REQUESTS: usize = 200;
const PORTAL_C16_PER_WORKER: usize = 40;
const PORTAL_C1_SIGN_INS: usize = 30;
const PORTAL_C16_SIGN_INS_PER_WORKER: usize = 4;
const PORTAL_APP_PASSWORDS: usize = 5;
const IDLE_OPENERS: usize = 32;
const SMTP_CONNECTIONS: usize = 8;
const SMTP_SMALL: (u64, usize) = (10 * 1024, 300);
const SMTP_LARGE: (u64, usize) = (MIB, 40);
const SMTP_HUGE_MIB: u64 = 50;
const FLOOD_CYCLES: usize = 150;
const FLOODERS: usize = 8;
const GROWTH_CACHED_CYCLES: usize = 150;
const GROWTH_UNCACHED_CYCLES: usize = 30;
const LOOKUPS: usize = 2000;
const SMALL_STORE_USERS: u64 = 1000;

/// The postern process, whose CPU time each login phase reads.
static POSTERN_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

const PENALISED_FLOODER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const TRUSTED_FLOODER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

fn main() {
    let wall = Instant::now();
    let rows = selected_rows();
    let runs: usize = env_parse("BENCH_RUNS", 3).max(1);
    let idle_sizes: Vec<usize> = std::env::var("BENCH_IDLE_SESSIONS")
        .unwrap_or_else(|_| "1000,8000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rsa = std::env::var("BENCH_TLS_KEY").map_or(true, |v| v != "ecdsa");
    let resume = std::env::var_os("BENCH_TLS_RESUME").is_some_and(|v| v == "1");
    let login_performance =
        !std::env::var("BENCH_DOVECOT_LOGIN").is_ok_and(|v| v.starts_with("sec"));
    let growth_users: u64 = env_parse("BENCH_GROWTH_USERS", 1_000_000);
    let has = |row: &str| rows.iter().any(|r| r == row);

    let (soft, hard) = support::system::raise_nofile();
    let mut sysctls = Vec::new();
    if has("idle") {
        let max_idle = idle_sizes.iter().copied().max().unwrap_or(0) as u64;
        for (name, value) in [
            ("fs.inotify.max_user_instances", 2 * max_idle + 1024),
            ("fs.inotify.max_user_watches", 8 * max_idle + 65536),
        ] {
            match support::system::Sysctl::raise(name, value) {
                Ok(guard) => sysctls.extend(guard),
                Err(why) => eprintln!(
                    "WARNING: cannot raise {name} to {value} ({why}): Dovecot's IDLE may \
                     fall back to polling"
                ),
            }
        }
    }

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "postern vs direct Dovecot: rows {rows:?}, {runs} run(s), {cores} cores, open files \
         {soft}/{hard}, TLS {} ({}), Dovecot login processes: {}",
        if rsa { "RSA-2048" } else { "ECDSA P-256" },
        if resume {
            "clients may resume"
        } else {
            "full handshakes"
        },
        if login_performance {
            "high-performance"
        } else {
            "one per connection (BENCH_DOVECOT_LOGIN=security)"
        }
    );

    let tls_dir = tempfile::Builder::new()
        .prefix("postern-bench-tls-")
        .tempdir()
        .unwrap();
    let tls = rsa.then(|| rsa_chain(tls_dir.path()));
    let idle_max = idle_sizes.iter().copied().max().unwrap_or(0) as u32;
    // The xoauth2 row: a real identity provider (npm oidc-provider) whose tokens Dovecot
    // takes, as in tests/oauth2.rs.
    let idp = has("xoauth2").then(support::oauth::IdentityProvider::start);
    let dovecot = Dovecot::start_with(DovecotOptions {
        oauth2: idp.as_ref().map(|idp| support::dovecot::DovecotOAuth2 {
            issuer: idp.issuer.clone(),
            keys_dir: idp.keys_dir.clone(),
        }),
        max_sessions: has("idle").then_some(idle_max + 200),
        login_high_performance: login_performance,
        imap_client_limit: None,
        submission_max_mail_size_mib: Some(SMTP_HUGE_MIB + 8),
        tls: tls.clone(),
        ..DovecotOptions::default()
    });
    let network = "[network]\ntrusted_networks = [\"127.0.0.3/32\"]\nmax_connections_per_ip = 0\n\
                   max_sessions_per_user_ip = 0\n";
    let postern = PosternProcess::start(
        &dovecot,
        Settings {
            imaps: true,
            smtps: true,
            pop3s: has("pop3") || has("nginx") || has("idle"),
            portal: has("portal"),
            tls: tls.clone(),
            max_connections: 30_000,
            extra: format!(
                "[smtp]\nmax_message_size = {}\nmessages_per_hour = 0\nrecipients_per_hour = 0\n\n{network}",
                (SMTP_HUGE_MIB + 8) * MIB
            ),
            ..Settings::default()
        },
    );
    // A second postern for the xoauth2 row: the same, logging in upstream with a
    // Microsoft 365-style app token from the provider instead of the master user.
    let token_postern = idp.as_ref().map(|idp| {
        PosternProcess::start(
            &dovecot,
            Settings {
                imaps: true,
                smtps: false,
                tls: tls.clone(),
                max_connections: 30_000,
                upstream_auth: "xoauth2",
                upstream_extra: "oauth2 = \"idp\"\n".into(),
                extra: format!(
                    "[oauth2.idp]\npreset = \"microsoft365\"\ntenant = \"contoso.onmicrosoft.com\"\n\
                     token_url = \"{}\"\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\n\n{network}",
                    idp.token_url,
                    support::oauth::M365_APP,
                    idp.secret_file.display()
                ),
                ..Settings::default()
            },
        )
    });
    let _ = POSTERN_PID.set(postern.pid());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.max(2))
        .enable_all()
        .build()
        .unwrap();

    let imap_postern = Target::new(
        "postern",
        postern.imaps.unwrap(),
        connector(&postern.ca_path, resume),
    );
    let imap_direct = Target::new(
        "direct",
        ([127, 0, 0, 1], dovecot.imaps_port).into(),
        connector(&dovecot.ca_path, resume),
    );
    let smtp_postern = Target::new(
        "postern",
        postern.smtps.unwrap(),
        connector(&postern.ca_path, resume),
    );
    let smtp_direct = Target::new(
        "direct",
        ([127, 0, 0, 1], dovecot.submissions_port).into(),
        connector(&dovecot.ca_path, resume),
    );

    let pop3_postern = postern
        .pop3s
        .map(|address| Target::new("postern", address, connector(&postern.ca_path, resume)));
    let pop3_direct = Target::new(
        "direct",
        ([127, 0, 0, 1], dovecot.pop3s_port).into(),
        connector(&dovecot.ca_path, resume),
    );

    // The nginx row: nginx's mail proxy in front of the same Dovecot, with the same kind
    // of certificate as postern's.
    let nginx = has("nginx").then(|| {
        if !Nginx::installed() {
            eprintln!("WARNING: nginx row skipped: apt-get install nginx-core libnginx-mod-mail");
            return None;
        }
        let (cert, key) = match &tls {
            Some(tls) => (tls.cert.clone(), tls.key.clone()),
            None => dovecot
                .ca
                .issue(tls_dir.path(), "nginx", &["localhost", "127.0.0.1"]),
        };
        let nginx = Nginx::start(
            &cert,
            &key,
            ([127, 0, 0, 1], dovecot.imap_port).into(),
            ([127, 0, 0, 1], dovecot.pop3_port).into(),
            cores,
        );
        let imaps = Target::new("nginx", nginx.imaps, connector(&dovecot.ca_path, resume));
        let pop3s = Target::new("nginx", nginx.pop3s, connector(&dovecot.ca_path, resume));
        Some(NginxTargets {
            _nginx: nginx,
            imaps,
            pop3s,
        })
    });
    let nginx = nginx.flatten();

    let setup_started = Instant::now();
    let store = runtime
        .block_on(Store::open(&postern.store_url))
        .expect("open postern's store");
    let mut plan = Plan::default();
    if has("login") || has("growth") {
        plan.fresh = runs * (UNCACHED_C1_CYCLES + C32 * UNCACHED_C32_PER_WORKER) + 8;
    }
    if has("growth") {
        plan.fresh += runs * GROWTH_UNCACHED_CYCLES + 1;
        plan.singles = runs * 2 * GROWTH_UNCACHED_CYCLES + 4;
    }
    let accounts = runtime.block_on(create_accounts(&dovecot, &postern, &store, &plan, &rows));
    let instances = has("instances").then(|| {
        let postgres = support::postgres::Postgres::start();
        let store_url = postgres.create_database("postern");
        let processes: Vec<PosternProcess> = (0..3)
            .map(|_| {
                PosternProcess::start(
                    &dovecot,
                    Settings {
                        imaps: true,
                        smtps: false,
                        tls: tls.clone(),
                        max_connections: 30_000,
                        store_url: Some(store_url.clone()),
                        proxy_protocol: true,
                        extra: format!("{network}proxy_sources = [\"127.0.0.1/32\"]\n"),
                        ..Settings::default()
                    },
                )
            })
            .collect();
        let haproxy = support::haproxy::Haproxy::start(&[support::haproxy::Route::round_robin(
            &processes
                .iter()
                .map(|p| p.imaps.unwrap())
                .collect::<Vec<_>>(),
        )]);
        let target = Target::new(
            "postern",
            haproxy.frontends[0],
            connector(&processes[0].ca_path, resume),
        );
        let accounts = runtime.block_on(mirror_accounts(&processes[0], &accounts.cached));
        Instances {
            processes,
            haproxy,
            target,
            accounts,
            postgres,
        }
    });
    let tokens = token_postern.map(|postern| {
        let accounts = runtime.block_on(mirror_accounts(&postern, &accounts.cached));
        let target = Target::new(
            "postern",
            postern.imaps.unwrap(),
            connector(&postern.ca_path, resume),
        );
        TokenBench {
            postern,
            target,
            accounts,
            idp: idp.expect("started with the token postern"),
        }
    });
    if has("relay") || has("pop3") {
        fill_mailboxes(&dovecot);
    }
    if has("growth") {
        let now = runtime.block_on(count_users(&postern.store_url));
        if now < SMALL_STORE_USERS {
            runtime.block_on(bulk_users(&postern.store_url, SMALL_STORE_USERS - now));
        }
    }
    println!(
        "setup: {:.1} s (accounts, app passwords, mailboxes)",
        setup_started.elapsed().as_secs_f64()
    );

    let bench = Bench {
        dovecot,
        postern,
        store,
        imap_postern,
        imap_direct,
        smtp_postern,
        smtp_direct,
        pop3_postern,
        pop3_direct,
        nginx,
        tokens,
        instances,
        accounts,
        runs,
        report: Mutex::new(Report::default()),
    };
    runtime.block_on(bench.warm_up());
    for row in &rows {
        let started = Instant::now();
        match row.as_str() {
            "login" => runtime.block_on(bench.login()),
            "relay" => runtime.block_on(bench.relay()),
            "pop3" => runtime.block_on(bench.pop3()),
            "nginx" => runtime.block_on(bench.nginx()),
            "xoauth2" => runtime.block_on(bench.xoauth2()),
            "instances" => runtime.block_on(bench.instances()),
            "portal" => runtime.block_on(bench.portal()),
            "idle" => bench.idle(&runtime, &idle_sizes),
            "smtp" => runtime.block_on(bench.smtp()),
            "flood" => runtime.block_on(bench.flood()),
            "growth" => runtime.block_on(bench.growth(growth_users)),
            _ => unreachable!(),
        }
        println!("row {row}: {:.1} s", started.elapsed().as_secs_f64());
    }

    println!();
    bench.report.lock().unwrap().print(runs);
    println!(
        "\nwhole run: {:.1} s (cargo bench --bench gateway{})",
        wall.elapsed().as_secs_f64(),
        if rows.len() == ROWS.len() {
            String::new()
        } else {
            format!(" -- {}", rows.join(" "))
        }
    );
    let errors = bench.postern.log();
    let warnings = errors
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("could not"))
        .count();
    if warnings > 0 {
        println!("postern logged {warnings} error/could-not line(s); first ones:");
        for line in errors
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("could not"))
            .take(5)
        {
            println!("  {line}");
        }
    }
    bench.postern.stop();
    if let Some(mut instances) = bench.instances {
        for process in instances.processes {
            process.stop();
        }
        drop(instances.haproxy);
        instances.postgres.stop();
    }
    if let Some(tokens) = bench.tokens {
        tokens.postern.stop();
        tokens.idp.stop();
    }
    drop(sysctls);
}

fn selected_rows() -> Vec<String> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if args.is_empty() {
        return ROWS.iter().map(|s| s.to_string()).collect();
    }
    for a in &args {
        assert!(
            ROWS.contains(&a.as_str()),
            "unknown row {a:?}; rows: {}",
            ROWS.join(" ")
        );
    }
    // In the suite's order.
    ROWS.iter()
        .filter(|r| args.iter().any(|a| a == *r))
        .map(|s| s.to_string())
        .collect()
}

fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// Accounts

/// One user as postern knows it and as Dovecot does.
#[derive(Clone, Debug)]
struct Account {
    /// postern login (`name@example.test`).
    login: String,
    /// App password.
    password: String,
    /// Dovecot user name.
    upstream: String,
    /// Dovecot password.
    direct_password: String,
}

impl Account {
    fn address(&self) -> String {
        format!("{}@{DOMAIN}", self.upstream)
    }

    /// (login, password) for `target`.
    fn credentials(&self, target: &Target) -> (String, String) {
        if target.name == "postern" {
            (self.login.clone(), self.password.clone())
        } else {
            (self.upstream.clone(), self.direct_password.clone())
        }
    }
}

#[derive(Default)]
struct Plan {
    /// Single-use app passwords on users holding 40 each.
    fresh: usize,
    /// Users with exactly one app password, each used once uncached.
    singles: usize,
}

#[derive(Default)]
struct Accounts {
    /// c0..c31: one app password each, logged in cached.
    cached: Vec<Account>,
    /// Single-use credentials on users with 40 app passwords each.
    fresh: Mutex<VecDeque<Account>>,
    /// A user with 40 app passwords, used cached.
    forty: Option<Account>,
    /// Users with one app password, each used once.
    singles: Mutex<VecDeque<Account>>,
    relay_list: Option<Account>,
    relay_big: Option<Account>,
    idle: Vec<Account>,
    smtp: Vec<Account>,
    /// w0..w15: portal users with five app passwords each.
    portal: Vec<Account>,
    sink: String,
    victim: Option<Account>,
}

impl Accounts {
    fn take_fresh(&self) -> Option<Account> {
        self.fresh.lock().unwrap().pop_front()
    }

    fn take_single(&self) -> Option<Account> {
        self.singles.lock().unwrap().pop_front()
    }
}

/// Users in postern's store and Dovecot, and their app passwords, issued in-process
/// (argon2id on the configured pool) before anything is measured.
async fn create_accounts(
    dovecot: &Dovecot,
    postern: &PosternProcess,
    store: &Store,
    plan: &Plan,
    rows: &[String],
) -> Accounts {
    let has = |row: &str| rows.iter().any(|r| r == row);
    let issuer = Issuer::new(store, &postern.config_path, DOMAIN).await;
    // (user, number of app passwords) to create.
    let mut users: Vec<(String, usize)> = Vec::new();
    let cached_users = if ["login", "growth", "pop3", "xoauth2", "instances"]
        .iter()
        .any(|row| has(row))
    {
        C32
    } else {
        1
    };
    users.extend((0..cached_users).map(|i| (format!("c{i}"), 1)));
    let fresh_users = plan.fresh.div_ceil(40);
    users.extend((0..fresh_users).map(|i| (format!("n{i}"), 40)));
    users.extend((0..plan.singles).map(|i| (format!("s{i}"), 1)));
    if has("relay") || has("pop3") {
        users.push(("r".into(), 1));
        users.push(("big".into(), 1));
    }
    if has("idle") {
        users.extend((0..IDLE_USERS).map(|i| (format!("i{i}"), 1)));
    }
    if has("smtp") {
        users.extend((0..SMTP_CONNECTIONS).map(|i| (format!("m{i}"), 1)));
    }
    if has("flood") {
        users.push(("v".into(), 1));
    }
    if has("portal") {
        users.extend((0..C16).map(|i| (format!("w{i}"), PORTAL_APP_PASSWORDS)));
    }
    let sink = "sink".to_string();
    dovecot.add_user(&sink, "sink-direct-password");

    let now = postern::clock::now();
    let mut jobs: Vec<(String, usize)> = Vec::new();
    for (name, count) in &users {
        let direct_password = format!("{name}-direct-pw");
        dovecot.add_user(name, &direct_password);
        let login = format!("{name}@{DOMAIN}");
        let addresses = vec![login.clone()];
        store
            .add_user(
                &NewUser {
                    login: &login,
                    upstream_user: name,
                    addresses: &addresses,
                },
                now,
            )
            .await
            .expect("add user");
        for i in 0..*count {
            jobs.push((name.clone(), i));
        }
    }
    let total = jobs.len();
    let started = Instant::now();
    let issued = issuer.issue_all(jobs).await;
    println!(
        "issued {total} app passwords (argon2id) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let account = |name: &str, password: &str| Account {
        login: format!("{name}@{DOMAIN}"),
        password: password.to_string(),
        upstream: name.to_string(),
        direct_password: format!("{name}-direct-pw"),
    };
    let of = |name: &str| -> Vec<Account> {
        issued
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(n, p)| account(n, p))
            .collect()
    };
    let one = |name: &str| of(name).into_iter().next();
    let mut fresh: VecDeque<Account> = (0..fresh_users)
        .flat_map(|i| of(&format!("n{i}")))
        .collect();
    let forty = fresh.pop_front();
    Accounts {
        cached: (0..cached_users)
            .filter_map(|i| one(&format!("c{i}")))
            .collect(),
        fresh: Mutex::new(fresh),
        forty,
        singles: Mutex::new(
            (0..plan.singles)
                .filter_map(|i| one(&format!("s{i}")))
                .collect(),
        ),
        relay_list: one("r"),
        relay_big: one("big"),
        idle: (0..IDLE_USERS)
            .filter_map(|i| one(&format!("i{i}")))
            .collect(),
        smtp: (0..SMTP_CONNECTIONS)
            .filter_map(|i| one(&format!("m{i}")))
            .collect(),
        portal: (0..C16).filter_map(|i| one(&format!("w{i}"))).collect(),
        sink,
        victim: one("v"),
    }
}

fn fill_mailboxes(dovecot: &Dovecot) {
    let started = Instant::now();
    for n in 0..RELAY_MAILBOX {
        dovecot.deliver("r", &mailbox_message(n, &format!("r@{DOMAIN}")));
    }
    let big = Generator::new(
        RELAY_BIG_MIB * MIB,
        &format!("a@{DOMAIN}"),
        &format!("big@{DOMAIN}"),
    );
    dovecot.deliver("big", &big.into_bytes());
    println!(
        "delivered {RELAY_MAILBOX} messages and one of {RELAY_BIG_MIB} MiB in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The instances row: three postern processes on one PostgreSQL behind haproxy (round
/// robin, PROXY v2), and the cached accounts as their shared store knows them.
struct Instances {
    processes: Vec<PosternProcess>,
    haproxy: support::haproxy::Haproxy,
    target: Target,
    accounts: Vec<Account>,
    postgres: support::postgres::Postgres,
}

/// The xoauth2 row's postern (tokens upstream), its identity provider, and the cached
/// accounts as its own store knows them.
struct TokenBench {
    postern: PosternProcess,
    target: Target,
    accounts: Vec<Account>,
    idp: support::oauth::IdentityProvider,
}

/// The users of `cached` in another postern's store, each with a new app password.
async fn mirror_accounts(postern: &PosternProcess, cached: &[Account]) -> Vec<Account> {
    let store = Store::open(&postern.store_url)
        .await
        .expect("open the other postern's store");
    let now = postern::clock::now();
    for account in cached {
        let addresses = vec![account.login.clone()];
        store
            .add_user(
                &NewUser {
                    login: &account.login,
                    upstream_user: &account.upstream,
                    addresses: &addresses,
                },
                now,
            )
            .await
            .expect("add user");
    }
    let issuer = Issuer::new(&store, &postern.config_path, DOMAIN).await;
    let issued = issuer
        .issue_all(cached.iter().map(|a| (a.upstream.clone(), 0)).collect())
        .await;
    cached
        .iter()
        .map(|account| Account {
            password: issued
                .iter()
                .find(|(name, _)| *name == account.upstream)
                .map(|(_, password)| password.clone())
                .expect("issued"),
            ..account.clone()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The store, in bulk

async fn sqlite(url: &str) -> sqlx::SqliteConnection {
    use sqlx::Connection as _;
    let mut conn = sqlx::SqliteConnection::connect(url)
        .await
        .expect("open the SQLite store");
    sqlx::query("PRAGMA busy_timeout = 30000")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn count_users(url: &str) -> u64 {
    use sqlx::Row as _;
    let mut conn = sqlite(url).await;
    let row = sqlx::query("SELECT COUNT(*) FROM users")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    row.get::<i64, _>(0) as u64
}

/// Adds `count` users straight into postern's SQLite store in one transaction, each
/// with an address and one app password (a random lookup tag, a real-looking hash):
/// what the lookup walks through. Never logged in.
async fn bulk_users(url: &str, count: u64) {
    use sqlx::Connection as _;
    use sqlx::Row as _;
    let mut conn = sqlite(url).await;
    let mut tx = conn.begin().await.unwrap();
    let row = sqlx::query(
        "SELECT COALESCE(MAX(id), 0), (SELECT hash FROM app_passwords LIMIT 1) FROM users",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let first: i64 = row.get(0);
    let hash: Option<String> = row.get(1);
    let hash = hash.unwrap_or_else(|| "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into());
    sqlx::query(
        "WITH RECURSIVE seq(x) AS (SELECT $1 UNION ALL SELECT x + 1 FROM seq WHERE x < $2) \
         INSERT INTO users (login, upstream_user, created_at) \
         SELECT 'bulk' || x || '@example.test', 'bulk' || x, 0 FROM seq",
    )
    .bind(first + 1)
    .bind(first + count as i64)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO user_addresses (user_id, address) SELECT id, login FROM users WHERE id > $1",
    )
    .bind(first)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO app_passwords (user_id, name, scopes, tag, hash, created_at) \
         SELECT id, 'bulk', 'imap,smtp', lower(hex(randomblob(3))), $2, 0 FROM users WHERE id > $1",
    )
    .bind(first)
    .bind(&hash)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// The report

#[derive(Default)]
struct Report {
    sections: Vec<(String, Vec<Line>)>,
}

struct Line {
    label: String,
    decimals: usize,
    postern: Vec<f64>,
    direct: Vec<f64>,
    note: String,
}

impl Report {
    fn section(&mut self, title: &str) {
        self.sections.push((title.to_string(), Vec::new()));
    }

    fn add(
        &mut self,
        label: &str,
        decimals: usize,
        postern: Vec<f64>,
        direct: Vec<f64>,
        note: String,
    ) {
        let line = Line {
            label: label.to_string(),
            decimals,
            postern,
            direct,
            note,
        };
        println!("  {}", line.render());
        self.sections.last_mut().unwrap().1.push(line);
    }

    fn print(&self, runs: usize) {
        println!(
            "postern vs direct Dovecot: medians of {runs} run(s) [min–max]; ratio = postern / direct"
        );
        for (title, lines) in &self.sections {
            println!("\n{title}");
            println!(
                "  {:<48} {:>22} {:>22} {:>8}",
                "", "postern", "direct", "ratio"
            );
            for line in lines {
                println!("  {}", line.render());
            }
        }
    }
}

impl Line {
    fn render(&self) -> String {
        let p = summary(&self.postern, self.decimals);
        let d = summary(&self.direct, self.decimals);
        let ratio = if self.postern.is_empty() || self.direct.is_empty() {
            "—".to_string()
        } else {
            format!("{:.2}", median(&self.postern) / median(&self.direct))
        };
        format!(
            "{:<48} {:>22} {:>22} {:>8}  {}",
            self.label, p, d, ratio, self.note
        )
    }
}

fn summary(values: &[f64], decimals: usize) -> String {
    if values.is_empty() {
        return "—".into();
    }
    let m = median(values);
    if values.len() == 1 {
        return format!("{m:.decimals$}");
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{m:.decimals$} [{lo:.decimals$}–{hi:.decimals$}]")
}

// ---------------------------------------------------------------------------------------
// Login phases

#[derive(Clone)]
enum Creds {
    /// Worker `w` always logs in as `accounts[w % len]`.
    Fixed(Arc<Vec<(String, String)>>),
    /// Each cycle takes the next unused credential.
    Queue(Arc<Mutex<VecDeque<(String, String)>>>),
}

impl Creds {
    fn next(&self, worker: usize) -> Option<(String, String)> {
        match self {
            Creds::Fixed(list) => Some(list[worker % list.len()].clone()),
            Creds::Queue(queue) => queue.lock().unwrap().pop_front(),
        }
    }
}

#[derive(Default)]
struct Phase {
    elapsed: Duration,
    latencies: Latencies,
    errors: usize,
    first_error: Option<String>,
    /// CPU seconds the whole machine was busy during the phase.
    machine_cpu: f64,
    /// CPU seconds the postern process used during the phase.
    postern_cpu: f64,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn warn(&self, what: &str) {
        if self.errors > 0 {
            eprintln!(
                "WARNING: {what}: {} of {} cycles failed; first: {}",
                self.errors,
                self.errors + self.latencies.len(),
                self.first_error.as_deref().unwrap_or("?")
            );
        }
    }
}

/// With `BENCH_PERF=<label>` (e.g. `imap-c32`), runs `perf record -g` on the postern
/// process while `phase` runs; the profile goes to `target/perf-<label>.data`.
async fn profiled<T>(label: &str, phase: impl std::future::Future<Output = T>) -> T {
    let wanted = std::env::var("BENCH_PERF").is_ok_and(|v| v == label);
    let Some(&pid) = POSTERN_PID.get().filter(|_| wanted) else {
        return phase.await;
    };
    let path = format!("target/perf-{label}.data");
    let mut perf = std::process::Command::new("perf")
        .args([
            "record",
            "-F",
            "1999",
            "-g",
            "-p",
            &pid.to_string(),
            "-o",
            &path,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run perf record");
    // perf attaches within a few milliseconds; the phase is seconds long.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let result = phase.await;
    let _ = std::process::Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let _ = perf.wait();
    println!("  perf profile of {label}: {path}");
    result
}

/// nginx's mail proxy and its IMAPS and POP3S listeners as load targets.
struct NginxTargets {
    _nginx: Nginx,
    imaps: Target,
    pop3s: Target,
}

/// One side of a comparison of cached logins: where, as whom, and the label of its
/// phases' profile (`BENCH_PERF=<label>-c32`) when it is the postern process.
struct Side<'a> {
    target: &'a Target,
    accounts: &'a [Account],
    profile: Option<&'a str>,
}

impl<'a> Side<'a> {
    /// A side that is not profiled.
    fn new(target: &'a Target, accounts: &'a [Account]) -> Self {
        Side {
            target,
            accounts,
            profile: None,
        }
    }
}

/// Which protocol's login cycle a phase runs.
#[derive(Clone, Copy)]
enum Cycle {
    /// connect, TLS, LOGIN, LOGOUT
    Imap,
    /// connect, TLS, USER, PASS, QUIT
    Pop3,
}

impl Cycle {
    async fn run(self, target: &Target, login: &str, password: &str) -> anyhow::Result<Duration> {
        match self {
            Cycle::Imap => login_cycle(target, None, login, password).await,
            Cycle::Pop3 => load::pop3::login_cycle(target, None, login, password).await,
        }
    }
}

/// `concurrency` workers, each running `per_worker` IMAP login cycles back to back.
async fn login_phase(
    target: &Target,
    creds: Creds,
    concurrency: usize,
    per_worker: usize,
) -> Phase {
    cycle_phase(Cycle::Imap, target, creds, concurrency, per_worker).await
}

/// `concurrency` workers, each running `per_worker` login cycles of `cycle` back to back.
async fn cycle_phase(
    cycle: Cycle,
    target: &Target,
    creds: Creds,
    concurrency: usize,
    per_worker: usize,
) -> Phase {
    let postern_cpu = || {
        POSTERN_PID
            .get()
            .and_then(|&pid| procfs::cpu_seconds(pid))
            .unwrap_or(0.0)
    };
    let (machine_before, postern_before) = (procfs::machine_busy_seconds(), postern_cpu());
    let started = Instant::now();
    let mut set = JoinSet::new();
    for worker in 0..concurrency {
        let (target, creds) = (target.clone(), creds.clone());
        set.spawn(async move {
            let mut latencies = Latencies::new();
            let mut errors = 0;
            let mut first_error = None;
            for _ in 0..per_worker {
                let Some((login, password)) = creds.next(worker) else {
                    break;
                };
                match cycle.run(&target, &login, &password).await {
                    Ok(d) => latencies.record(d),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (latencies, errors, first_error)
        });
    }
    let mut phase = Phase::default();
    while let Some(done) = set.join_next().await {
        let (latencies, errors, first_error) = done.unwrap();
        phase.latencies.extend(&latencies);
        phase.errors += errors;
        if phase.first_error.is_none() {
            phase.first_error = first_error;
        }
    }
    phase.elapsed = started.elapsed();
    phase.machine_cpu = procfs::machine_busy_seconds() - machine_before;
    phase.postern_cpu = postern_cpu() - postern_before;
    phase
}

/// Per-run values of one measured phase.
#[derive(Default, Clone)]
struct Series {
    rate: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    /// Machine CPU ms per login.
    machine_cpu: Vec<f64>,
    /// postern's CPU ms per login.
    postern_cpu: Vec<f64>,
}

impl Series {
    fn push(&mut self, phase: &mut Phase) {
        self.rate.push(phase.rate());
        self.p50.push(ms(phase.latencies.p50()));
        self.p99.push(ms(phase.latencies.p99()));
        let logins = phase.latencies.len().max(1) as f64;
        self.machine_cpu.push(phase.machine_cpu * 1000.0 / logins);
        self.postern_cpu.push(phase.postern_cpu * 1000.0 / logins);
    }

    /// Where a cached login's CPU goes: the whole machine's per login against direct's,
    /// and postern's own share.
    fn cpu_lines(&self, bench: &Bench, label: &str, direct: &Series, postern_cpu: bool) {
        bench.add(
            &format!("{label}: machine CPU ms/login"),
            2,
            self.machine_cpu.clone(),
            direct.machine_cpu.clone(),
            "clients, postern and Dovecot: /proc/stat".into(),
        );
        if !postern_cpu {
            return;
        }
        bench.add(
            &format!("{label}: postern CPU ms/login"),
            2,
            self.postern_cpu.clone(),
            Vec::new(),
            "utime+stime of the postern process".into(),
        );
    }
}

// ---------------------------------------------------------------------------------------
// The rows

struct Bench {
    dovecot: Dovecot,
    postern: PosternProcess,
    store: Store,
    imap_postern: Target,
    imap_direct: Target,
    smtp_postern: Target,
    smtp_direct: Target,
    /// `None` unless the pop3 row runs.
    pop3_postern: Option<Target>,
    pop3_direct: Target,
    /// `None` unless the nginx row runs and nginx is installed.
    nginx: Option<NginxTargets>,
    /// `None` unless the xoauth2 row runs.
    tokens: Option<TokenBench>,
    /// `None` unless the instances row runs.
    instances: Option<Instances>,
    accounts: Accounts,
    runs: usize,
    report: Mutex<Report>,
}

impl Bench {
    fn section(&self, title: &str) {
        println!("\n{title}");
        self.report.lock().unwrap().section(title);
    }

    fn add(&self, label: &str, decimals: usize, postern: Vec<f64>, direct: Vec<f64>, note: String) {
        self.report
            .lock()
            .unwrap()
            .add(label, decimals, postern, direct, note);
    }

    /// Both targets in an order that alternates from run to run.
    fn order(&self, run: usize) -> [&Target; 2] {
        if run.is_multiple_of(2) {
            [&self.imap_postern, &self.imap_direct]
        } else {
            [&self.imap_direct, &self.imap_postern]
        }
    }

    fn fixed(&self, accounts: &[Account], target: &Target) -> Creds {
        Creds::Fixed(Arc::new(
            accounts.iter().map(|a| a.credentials(target)).collect(),
        ))
    }

    fn fresh(&self, n: usize) -> Creds {
        let list: VecDeque<(String, String)> = (0..n)
            .filter_map(|_| self.accounts.take_fresh())
            .map(|a| (a.login, a.password))
            .collect();
        Creds::Queue(Arc::new(Mutex::new(list)))
    }

    fn singles(&self, n: usize) -> Creds {
        let list: VecDeque<(String, String)> = (0..n)
            .filter_map(|_| self.accounts.take_single())
            .map(|a| (a.login, a.password))
            .collect();
        Creds::Queue(Arc::new(Mutex::new(list)))
    }

    /// Every account that is used cached logs in once through postern (so its
    /// verification is cached), and both targets serve a few cycles.
    async fn warm_up(&self) {
        let a = &self.accounts;
        let mut cached: Vec<Account> = a.cached.clone();
        cached.extend(a.forty.clone());
        cached.extend(a.relay_list.clone());
        cached.extend(a.relay_big.clone());
        cached.extend(a.idle.iter().cloned());
        cached.extend(a.victim.clone());
        let n = cached.len();
        let creds = self.fixed(&cached, &self.imap_postern);
        let phase = login_phase(&self.imap_postern, creds, n.min(8), n.div_ceil(8)).await;
        // Workers cycle over `w % len`: make sure every account got its turn.
        for account in &cached {
            let (login, password) = account.credentials(&self.imap_postern);
            if let Err(e) = login_cycle(&self.imap_postern, None, &login, &password).await {
                panic!("warm-up login as {login}: {e:#}\n{}", self.postern.log());
            }
        }
        phase.warn("warm-up");
        let creds = self.fixed(&a.cached, &self.imap_direct);
        login_phase(&self.imap_direct, creds, 4, 5)
            .await
            .warn("warm-up direct");
        for account in &a.smtp {
            for target in [&self.smtp_postern, &self.smtp_direct] {
                let (login, password) = account.credentials(target);
                let client = SmtpClient::connect_and_auth(target, None, &login, &password)
                    .await
                    .unwrap_or_else(|e| panic!("SMTP warm-up as {login}: {e:#}"));
                let _ = client.quit().await;
            }
        }
    }

    async fn login(&self) {
        self.section("login: connect + TLS + LOGIN + LOGOUT, one connection per cycle");
        let a = &self.accounts;
        let mut results: Vec<(usize, Series, Series, Series)> = Vec::new();
        for concurrency in [1, C32] {
            let (cached_n, uncached_n) = if concurrency == 1 {
                (CACHED_C1_CYCLES, UNCACHED_C1_CYCLES)
            } else {
                (CACHED_C32_PER_WORKER, UNCACHED_C32_PER_WORKER)
            };
            let (mut cached, mut uncached, mut direct) =
                (Series::default(), Series::default(), Series::default());
            for run in 0..self.runs {
                for target in self.order(run) {
                    if target.name == "postern" {
                        let creds = self.fixed(&a.cached, target);
                        let mut phase = profiled(
                            &format!("imap-c{concurrency}"),
                            login_phase(target, creds, concurrency, cached_n),
                        )
                        .await;
                        phase.warn("login cached");
                        cached.push(&mut phase);
                        let creds = self.fresh(concurrency * uncached_n);
                        let mut phase = login_phase(target, creds, concurrency, uncached_n).await;
                        phase.warn("login uncached");
                        uncached.push(&mut phase);
                    } else {
                        let creds = self.fixed(&a.cached, target);
                        let mut phase = login_phase(target, creds, concurrency, cached_n).await;
                        phase.warn("login direct");
                        direct.push(&mut phase);
                    }
                }
            }
            results.push((concurrency, cached, uncached, direct));
        }
        for (c, cached, uncached, direct) in results {
            cached.cpu_lines(self, &format!("c={c} cached"), &direct, true);
            for (kind, series) in [("cached", &cached), ("uncached", &uncached)] {
                self.add(
                    &format!("c={c} {kind}: logins/s"),
                    1,
                    series.rate.clone(),
                    direct.rate.clone(),
                    String::new(),
                );
                self.add(
                    &format!("c={c} {kind}: p50 ms"),
                    2,
                    series.p50.clone(),
                    direct.p50.clone(),
                    String::new(),
                );
                self.add(
                    &format!("c={c} {kind}: p99 ms"),
                    2,
                    series.p99.clone(),
                    direct.p99.clone(),
                    String::new(),
                );
            }
        }
    }

    async fn relay(&self) {
        self.section("relay: one logged-in session, SELECT INBOX, then FETCH");
        let (list, big) = (
            self.accounts.relay_list.clone().unwrap(),
            self.accounts.relay_big.clone().unwrap(),
        );
        let mut sessions = Vec::new();
        for target in [&self.imap_postern, &self.imap_direct] {
            let open = |account: Account| async move {
                let (login, password) = account.credentials(target);
                let mut c = ImapClient::connect(target, None).await?;
                c.login_ok(&login, &password).await?;
                let selected = c.select("INBOX").await?;
                anyhow::Ok((c, selected.untagged))
            };
            let (mut list_session, _) = open(list.clone()).await.expect("relay session");
            let (mut big_session, _) = open(big.clone()).await.expect("relay session");
            // Warm-up: Dovecot builds its index and cache on the first FETCHes.
            let r = list_session
                .command("FETCH 1:* (FLAGS ENVELOPE)")
                .await
                .expect("FETCH");
            assert!(r.is_ok() && r.untagged >= RELAY_MAILBOX, "{r:?}");
            let r = big_session
                .command("UID FETCH 1:* BODY.PEEK[]")
                .await
                .expect("UID FETCH");
            assert!(r.is_ok() && r.literal_bytes >= RELAY_BIG_MIB * MIB, "{r:?}");
            sessions.push((target.name, list_session, big_session));
        }
        let (mut mibs_p, mut mibs_d, mut list_p, mut list_d) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..self.runs {
            let order: Vec<usize> = if run % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
            for i in order {
                let (name, list_session, big_session) = &mut sessions[i];
                let started = Instant::now();
                let mut bytes = 0;
                for _ in 0..RELAY_BIG_FETCHES {
                    let r = big_session
                        .command("UID FETCH 1:* BODY.PEEK[]")
                        .await
                        .expect("UID FETCH");
                    assert!(r.is_ok());
                    bytes += r.literal_bytes;
                }
                let mibs = bytes as f64 / MIB as f64 / started.elapsed().as_secs_f64();
                let mut times = Vec::new();
                for _ in 0..RELAY_LIST_FETCHES {
                    let started = Instant::now();
                    let r = list_session
                        .command("FETCH 1:* (FLAGS ENVELOPE)")
                        .await
                        .expect("FETCH");
                    assert!(r.is_ok() && r.untagged >= RELAY_MAILBOX);
                    times.push(ms(started.elapsed()));
                }
                let list_ms = median(&times);
                if *name == "postern" {
                    mibs_p.push(mibs);
                    list_p.push(list_ms);
                } else {
                    mibs_d.push(mibs);
                    list_d.push(list_ms);
                }
            }
        }
        self.add(
            &format!("UID FETCH BODY[] of {RELAY_BIG_MIB} MiB: MiB/s"),
            1,
            mibs_p,
            mibs_d,
            format!("{RELAY_BIG_FETCHES} fetches per run"),
        );
        self.add(
            &format!("FETCH 1:* (FLAGS ENVELOPE), {RELAY_MAILBOX} msgs: ms"),
            1,
            list_p,
            list_d,
            format!("median of {RELAY_LIST_FETCHES} per run"),
        );
        for (_, list_session, big_session) in sessions {
            for mut s in [list_session, big_session] {
                let _ = s.logout().await;
            }
        }
    }

    /// Cached login cycles of `cycle` at c = 1 and c = 32 through `first` (the report's
    /// postern column) and `second` (its direct column), alternating which goes first
    /// from run to run; adds their rate, p50, p99 and CPU lines. `postern_cpu`: `first`
    /// is the postern process whose own CPU is reported.
    async fn compare_cached_logins(
        &self,
        cycle: Cycle,
        first: Side<'_>,
        second: Side<'_>,
        postern_cpu: bool,
    ) {
        for (concurrency, per_worker) in [(1, CACHED_C1_CYCLES), (C32, CACHED_C32_PER_WORKER)] {
            let (mut first_series, mut second_series) = (Series::default(), Series::default());
            for run in 0..self.runs {
                let first_now = run.is_multiple_of(2);
                for (side, series) in if first_now {
                    [(&first, &mut first_series), (&second, &mut second_series)]
                } else {
                    [(&second, &mut second_series), (&first, &mut first_series)]
                } {
                    let creds = self.fixed(side.accounts, side.target);
                    let phase = cycle_phase(cycle, side.target, creds, concurrency, per_worker);
                    let mut phase = match side.profile {
                        Some(label) => profiled(&format!("{label}-c{concurrency}"), phase).await,
                        None => phase.await,
                    };
                    phase.warn("cached login");
                    series.push(&mut phase);
                }
            }
            let label = format!("c={concurrency} cached");
            first_series.cpu_lines(self, &label, &second_series, postern_cpu);
            for (what, decimals, f, s) in [
                ("logins/s", 1, &first_series.rate, &second_series.rate),
                ("p50 ms", 2, &first_series.p50, &second_series.p50),
                ("p99 ms", 2, &first_series.p99, &second_series.p99),
            ] {
                self.add(
                    &format!("{label}: {what}"),
                    decimals,
                    f.clone(),
                    s.clone(),
                    String::new(),
                );
            }
        }
    }

    /// Cached IMAP and POP3 logins through postern against the same through nginx's mail
    /// proxy.
    async fn nginx(&self) {
        let Some(nginx) = &self.nginx else {
            return;
        };
        let postern_pop3 = self.pop3_postern.as_ref().expect("pop3s listener");
        let a = &self.accounts;
        for (cycle, postern, nginx, what) in [
            (
                Cycle::Imap,
                &self.imap_postern,
                &nginx.imaps,
                "IMAP: connect + TLS + LOGIN + LOGOUT",
            ),
            (
                Cycle::Pop3,
                postern_pop3,
                &nginx.pop3s,
                "POP3: connect + TLS + USER + PASS + QUIT",
            ),
        ] {
            self.section(&format!(
                "nginx {what}; the direct column is nginx's mail proxy (TLS to clients, \
                 plaintext to Dovecot, an auth_http that lets every login in)"
            ));
            for target in [postern, nginx] {
                let creds = self.fixed(&a.cached, target);
                cycle_phase(cycle, target, creds, 4, 10)
                    .await
                    .warn("nginx row warm-up");
            }
            let (postern, nginx) = (Side::new(postern, &a.cached), Side::new(nginx, &a.cached));
            self.compare_cached_logins(cycle, postern, nginx, true)
                .await;
        }
    }

    /// POP3 through postern and straight to Dovecot's pop3s: login cycles at c = 1 and
    /// c = 32 (cached), RETR of the 10 MiB message, and UIDL of the 2,000-message
    /// mailbox, each on a logged-in session.
    async fn pop3(&self) {
        use load::pop3::Pop3Client;
        self.section("pop3: connect + TLS + USER + PASS + QUIT; RETR and UIDL on one session");
        let postern = self.pop3_postern.as_ref().expect("pop3s listener");
        let targets = |run: usize| -> [&Target; 2] {
            if run.is_multiple_of(2) {
                [postern, &self.pop3_direct]
            } else {
                [&self.pop3_direct, postern]
            }
        };
        let a = &self.accounts;
        for target in [postern, &self.pop3_direct] {
            let creds = self.fixed(&a.cached, target);
            cycle_phase(Cycle::Pop3, target, creds, 4, 10)
                .await
                .warn("pop3 warm-up");
        }
        self.compare_cached_logins(
            Cycle::Pop3,
            Side {
                target: postern,
                accounts: &a.cached,
                profile: Some("pop3"),
            },
            Side::new(&self.pop3_direct, &a.cached),
            true,
        )
        .await;

        let (list, big) = (a.relay_list.clone().unwrap(), a.relay_big.clone().unwrap());
        let (mut mibs_p, mut mibs_d, mut uidl_p, mut uidl_d) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut cpu_p, mut cpu_d, mut postern_cpu) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..self.runs {
            for target in targets(run) {
                // A POP3 session sees the mailbox as it was at login: one per run.
                let open = |account: &Account| {
                    let (login, password) = account.credentials(target);
                    async move {
                        let mut client = Pop3Client::connect(target, None).await?;
                        client.login(&login, &password).await?;
                        anyhow::Ok(client)
                    }
                };
                let mut session = open(&big).await.expect("pop3 session");
                let warm = session.listing("RETR 1").await.expect("RETR");
                assert!(warm.bytes >= RELAY_BIG_MIB * MIB, "{warm:?}");
                let started = Instant::now();
                let (machine_before, postern_before) = (
                    procfs::machine_busy_seconds(),
                    procfs::cpu_seconds(self.postern.pid()).unwrap_or(0.0),
                );
                let retrs = async {
                    let mut bytes = 0;
                    for _ in 0..RELAY_BIG_FETCHES {
                        bytes += session.listing("RETR 1").await.expect("RETR").bytes;
                    }
                    bytes
                };
                let bytes = if target.name == "postern" {
                    profiled("pop3-retr", retrs).await
                } else {
                    retrs.await
                };
                let mib = bytes as f64 / MIB as f64;
                let mibs = mib / started.elapsed().as_secs_f64();
                let machine_ms = (procfs::machine_busy_seconds() - machine_before) * 1e3 / mib;
                let postern_ms =
                    (procfs::cpu_seconds(self.postern.pid()).unwrap_or(0.0) - postern_before) * 1e3
                        / mib;
                let _ = session.quit().await;
                let mut session = open(&list).await.expect("pop3 session");
                let warm = session.listing("UIDL").await.expect("UIDL");
                assert!(warm.lines >= RELAY_MAILBOX, "{warm:?}");
                let mut times = Vec::new();
                for _ in 0..RELAY_LIST_FETCHES {
                    let started = Instant::now();
                    let listing = session.listing("UIDL").await.expect("UIDL");
                    assert!(listing.lines >= RELAY_MAILBOX);
                    times.push(ms(started.elapsed()));
                }
                let _ = session.quit().await;
                if target.name == "postern" {
                    mibs_p.push(mibs);
                    uidl_p.push(median(&times));
                    cpu_p.push(machine_ms);
                    postern_cpu.push(postern_ms);
                } else {
                    mibs_d.push(mibs);
                    uidl_d.push(median(&times));
                    cpu_d.push(machine_ms);
                }
            }
        }
        self.add(
            &format!("RETR of {RELAY_BIG_MIB} MiB: MiB/s"),
            1,
            mibs_p,
            mibs_d,
            format!("{RELAY_BIG_FETCHES} RETRs per run"),
        );
        self.add(
            &format!("RETR of {RELAY_BIG_MIB} MiB: machine CPU ms/MiB"),
            2,
            cpu_p,
            cpu_d,
            "clients, postern and Dovecot: /proc/stat".into(),
        );
        self.add(
            &format!("RETR of {RELAY_BIG_MIB} MiB: postern CPU ms/MiB"),
            2,
            postern_cpu,
            Vec::new(),
            "utime+stime of the postern process".into(),
        );
        self.add(
            &format!("UIDL of {RELAY_MAILBOX} msgs: ms"),
            1,
            uidl_p,
            uidl_d,
            format!("median of {RELAY_LIST_FETCHES} per run"),
        );
    }

    /// Cached logins through the postern that logs in upstream with an app token (XOAUTH2,
    /// the token cached) against the same logins through the one with the master user.
    async fn xoauth2(&self) {
        self.section(
            "xoauth2: cached logins, upstream XOAUTH2 with a cached app token (direct column: \
             the same logins through postern with the master user)",
        );
        let tokens = self.tokens.as_ref().expect("the token postern");
        let creds = self.fixed(&tokens.accounts, &tokens.target);
        login_phase(&tokens.target, creds, 4, 10)
            .await
            .warn("xoauth2 warm-up");
        // Workers cycle over `w % len`: every account logs in once, so that each one's
        // verification is cached before the row (an uncached login pays argon2id, and a
        // few of them queued behind each other at c = 32 were the row's p99 outliers).
        for account in &tokens.accounts {
            let (login, password) = account.credentials(&tokens.target);
            if let Err(e) = login_cycle(&tokens.target, None, &login, &password).await {
                panic!("xoauth2 warm-up login as {login}: {e:#}");
            }
        }
        let requests_before = tokens.idp.token_requests();
        self.compare_cached_logins(
            Cycle::Imap,
            Side::new(&tokens.target, &tokens.accounts),
            Side::new(&self.imap_postern, &self.accounts.cached),
            false,
        )
        .await;
        println!(
            "  token requests to the provider during the row: {}",
            tokens.idp.token_requests() - requests_before
        );
    }

    /// Cached logins spread over three instances on one PostgreSQL behind haproxy against
    /// the same logins on the one instance on SQLite, at c = 1 and c = 32.
    async fn instances(&self) {
        self.section(
            "instances: cached logins over three postern instances on PostgreSQL behind \
             haproxy (direct column: one instance on SQLite, no haproxy)",
        );
        let three = self.instances.as_ref().expect("the three instances");
        // Round robin sends an account's three logins in a row to three instances, so
        // every instance verifies every account once.
        for _ in 0..3 {
            for account in &three.accounts {
                let (login, password) = account.credentials(&three.target);
                if let Err(e) = login_cycle(&three.target, None, &login, &password).await {
                    panic!(
                        "warm-up through haproxy as {login}: {e:#}\n{}",
                        three.haproxy.log()
                    );
                }
            }
        }
        self.compare_cached_logins(
            Cycle::Imap,
            Side::new(&three.target, &three.accounts),
            Side::new(&self.imap_postern, &self.accounts.cached),
            false,
        )
        .await;
    }

    /// The portal, postern only: the sign-in page, a sign-in (its primary password checked
    /// by a login to Dovecot's IMAP), and the app-password page of a signed-in user with
    /// five app passwords, each at c = 1 and c = 16 on keep-alive connections.
    async fn portal(&self) {
        use load::portal::PortalClient;
        self.section("portal: HTTPS, keep-alive connections (postern only)");
        let base = self.postern.portal.clone().expect("portal");
        let ca = self.postern.ca_path.clone();
        let users = self.accounts.portal.clone();
        // What one worker does: `requests` timed requests of `kind`.
        let worker = |kind: &'static str, user: Account, requests: usize| {
            let (base, ca) = (base.clone(), ca.clone());
            async move {
                let mut latencies = Latencies::new();
                let mut browser = PortalClient::new(&base, &ca)?;
                if kind == "app-password page" {
                    browser
                        .sign_in(&user.address(), &user.direct_password)
                        .await?;
                }
                for _ in 0..requests {
                    let took = match kind {
                        "sign-in page" => {
                            let (status, page, took) = browser.get("/").await?;
                            anyhow::ensure!(status == 200 && page.contains("password"), "{status}");
                            took
                        }
                        "app-password page" => {
                            let (status, page, took) = browser.get("/").await?;
                            anyhow::ensure!(status == 200 && page.contains("revoke"), "{status}");
                            took
                        }
                        _ => {
                            let mut fresh = PortalClient::new(&base, &ca)?;
                            fresh
                                .sign_in(&user.address(), &user.direct_password)
                                .await?
                        }
                    };
                    latencies.record(took);
                }
                anyhow::Ok(latencies)
            }
        };
        for kind in [
            "sign-in page",
            "sign-in (upstream check)",
            "app-password page",
        ] {
            for concurrency in [1, C16] {
                let requests = match (kind, concurrency) {
                    ("sign-in (upstream check)", 1) => PORTAL_C1_SIGN_INS,
                    ("sign-in (upstream check)", _) => PORTAL_C16_SIGN_INS_PER_WORKER,
                    (_, 1) => PORTAL_C1_REQUESTS,
                    _ => PORTAL_C16_PER_WORKER,
                };
                let mut series = Series::default();
                for _ in 0..self.runs {
                    let started = Instant::now();
                    let mut set = JoinSet::new();
                    for user in users.iter().take(concurrency) {
                        set.spawn(worker(kind, user.clone(), requests));
                    }
                    let mut phase = Phase::default();
                    while let Some(done) = set.join_next().await {
                        match done.unwrap() {
                            Ok(latencies) => phase.latencies.extend(&latencies),
                            Err(e) => {
                                phase.errors += 1;
                                phase.first_error.get_or_insert_with(|| format!("{e:#}"));
                            }
                        }
                    }
                    phase.elapsed = started.elapsed();
                    phase.warn(kind);
                    series.push(&mut phase);
                }
                for (what, decimals, values) in [
                    ("requests/s", 1, &series.rate),
                    ("p50 ms", 2, &series.p50),
                    ("p99 ms", 2, &series.p99),
                ] {
                    self.add(
                        &format!("{kind} c={concurrency}: {what}"),
                        decimals,
                        values.clone(),
                        Vec::new(),
                        String::new(),
                    );
                }
            }
        }
    }

    /// Opens sessions up to each size in `sizes` through each target, measuring memory
    /// at each step; runs its own futures on `runtime` so the sessions outlive them.
    fn idle(&self, runtime: &Runtime, sizes: &[usize]) {
        // One protocol per run: the RSS a process gave back to its heap is not returned to
        // the system, so a second protocol's sessions would fill the first one's.
        match std::env::var("BENCH_IDLE_PROTOCOL").as_deref() {
            Ok("pop3") => self.idle_sessions(runtime, sizes, Cycle::Pop3),
            _ => self.idle_sessions(runtime, sizes, Cycle::Imap),
        }
    }

    /// One protocol's part of the idle row: IMAP sessions in IDLE on INBOX, or POP3
    /// sessions logged in and silent.
    fn idle_sessions(&self, runtime: &Runtime, sizes: &[usize], protocol: Cycle) {
        let (what, postern, direct) = match protocol {
            Cycle::Imap => (
                "idle: authenticated IMAP sessions in IDLE on INBOX",
                &self.imap_postern,
                &self.imap_direct,
            ),
            Cycle::Pop3 => (
                "idle: authenticated POP3 sessions, silent after login",
                self.pop3_postern.as_ref().expect("pop3s listener"),
                &self.pop3_direct,
            ),
        };
        self.section(&format!("{what} (TLS on both sides for postern)"));
        let postern_pid = self.postern.pid();
        let dovecot_pid = self.dovecot.pid().expect("dovecot pid");
        let mut rows: Vec<(usize, f64, f64, f64, String)> = Vec::new();
        // (sessions, postern KiB/session, dovecot RSS KiB/session, dovecot PSS KiB/session)
        let mut postern_kib: Vec<(usize, f64, String)> = Vec::new();
        let mut direct_kib: Vec<(usize, f64, f64, String)> = Vec::new();
        for target in [postern, direct] {
            let is_postern = target.name == "postern";
            std::thread::sleep(Duration::from_secs(1));
            let before_p = procfs::memory(postern_pid);
            let before_d = procfs::tree_memory(dovecot_pid);
            let mut sessions: Vec<IdleSession> = Vec::new();
            for &size in sizes {
                let started = Instant::now();
                let opened = runtime.block_on(open_idle(
                    protocol,
                    target,
                    &self.accounts.idle,
                    sessions.len(),
                    size,
                ));
                let (new, errors, first_error) = opened;
                let opening = started.elapsed();
                sessions.extend(new);
                if errors > 0 {
                    eprintln!(
                        "WARNING: idle via {}: {errors} sessions failed to open; first: {}",
                        target.name,
                        first_error.unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_secs(2));
                let n = sessions.len();
                let note = format!(
                    "{n} open ({:.0}/s while opening)",
                    (n as f64 - 0.0) / opening.as_secs_f64().max(1e-9)
                );
                if is_postern {
                    let now = procfs::memory(postern_pid);
                    let per = (now.rss_kib as f64 - before_p.rss_kib as f64) / n as f64;
                    println!(
                        "  postern with {n} idle sessions: RSS {:.1} MiB (before {:.1}), {per:.1} KiB/session",
                        now.rss_kib as f64 / 1024.0,
                        before_p.rss_kib as f64 / 1024.0
                    );
                    postern_kib.push((size, per, note));
                } else {
                    let now = procfs::tree_memory(dovecot_pid);
                    let rss = (now.rss_kib as f64 - before_d.rss_kib as f64) / n as f64;
                    let pss = (now.pss_kib as f64 - before_d.pss_kib as f64) / n as f64;
                    println!(
                        "  dovecot with {n} idle sessions: {} processes, RSS sum {:.0} MiB, PSS sum {:.0} MiB; {rss:.1} KiB RSS, {pss:.1} KiB PSS per session",
                        now.processes,
                        now.rss_kib as f64 / 1024.0,
                        now.pss_kib as f64 / 1024.0
                    );
                    direct_kib.push((size, rss, pss, note));
                }
            }
            // Close everything and wait until both servers are back to their baseline.
            runtime.block_on(async move {
                drop(sessions);
            });
            self.wait_quiet(before_d.processes);
        }
        for (size, per, note) in &postern_kib {
            let direct = direct_kib.iter().find(|d| d.0 == *size);
            rows.push((
                *size,
                *per,
                direct.map_or(f64::NAN, |d| d.1),
                direct.map_or(f64::NAN, |d| d.2),
                format!(
                    "postern: {note}; direct: {}",
                    direct.map_or(String::new(), |d| d.3.clone())
                ),
            ));
        }
        for (size, per, rss, pss, note) in rows {
            self.add(
                &format!("{size} sessions: KiB RSS per session"),
                1,
                vec![per],
                if rss.is_nan() { vec![] } else { vec![rss] },
                format!("direct = Dovecot's process tree (PSS {pss:.1} KiB); {note}"),
            );
        }
        let log = self.dovecot.log();
        let inotify: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("notify"))
            .take(3)
            .collect();
        if !inotify.is_empty() {
            eprintln!("WARNING: Dovecot logged about inotify: {inotify:?}");
        }
    }

    /// Waits (up to 2 minutes) until postern has no IMAP session left and Dovecot is
    /// back to about `processes` processes.
    fn wait_quiet(&self, processes: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let dovecot_pid = self.dovecot.pid().unwrap();
        loop {
            let active = metric(
                &self.postern.metrics(),
                "postern_sessions_active{protocol=\"imap\"}",
            );
            let now = procfs::process_tree(dovecot_pid).len();
            if active < 1.0 && now <= processes + 8 {
                return;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "WARNING: still {active} postern sessions and {now} Dovecot processes \
                     (baseline {processes}) after 2 minutes"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    async fn smtp(&self) {
        self.section(&format!(
            "smtp: {SMTP_CONNECTIONS} connections, each AUTH once then transactions back to back"
        ));
        let mut series = Vec::new();
        for (size, count) in [SMTP_SMALL, SMTP_LARGE] {
            let (mut p, mut d) = (Vec::new(), Vec::new());
            for run in 0..self.runs {
                let order = if run % 2 == 0 {
                    [&self.smtp_postern, &self.smtp_direct]
                } else {
                    [&self.smtp_direct, &self.smtp_postern]
                };
                for target in order {
                    let rate = self.submissions(target, size, count).await;
                    if target.name == "postern" {
                        p.push(rate);
                    } else {
                        d.push(rate);
                    }
                }
            }
            series.push((size, count, p, d));
        }
        for (size, count, p, d) in series {
            let label = if size >= MIB {
                format!("{} MiB messages: submissions/s", size / MIB)
            } else {
                format!("{} KiB messages: submissions/s", size / 1024)
            };
            self.add(&label, 1, p, d, format!("{count} messages per run"));
        }
        // One big message: postern's memory while it passes, and the time.
        let account = &self.accounts.smtp[0];
        let sink = format!("{}@{DOMAIN}", self.accounts.sink);
        let mut growth = Vec::new();
        let mut rate_p = Vec::new();
        let mut rate_d = Vec::new();
        for target in [&self.smtp_postern, &self.smtp_direct] {
            let (login, password) = account.credentials(target);
            let message = Generator::new(SMTP_HUGE_MIB * MIB, &account.address(), &sink);
            let pid = if target.name == "postern" {
                self.postern.pid()
            } else {
                self.dovecot.pid().unwrap()
            };
            let measured = measure_big_message(
                pid,
                target,
                &login,
                &password,
                (&account.address(), &sink),
                message,
            )
            .await
            .unwrap_or_else(|e| panic!("{SMTP_HUGE_MIB} MiB message via {}: {e:#}", target.name));
            let rate = SMTP_HUGE_MIB as f64 / measured.data_time.as_secs_f64();
            if target.name == "postern" {
                growth.push(measured.growth_mib());
                rate_p.push(rate);
            } else {
                rate_d.push(rate);
            }
        }
        self.add(
            &format!("{SMTP_HUGE_MIB} MiB message: MiB/s (DATA to 250)"),
            1,
            rate_p,
            rate_d,
            "one message".into(),
        );
        self.add(
            &format!("{SMTP_HUGE_MIB} MiB message: postern RSS growth MiB"),
            2,
            growth,
            vec![],
            "VmHWM after clear_refs=5, minus RSS before (as benches/smtp_memory.rs)".into(),
        );
    }

    /// `SMTP_CONNECTIONS` sessions (connected and authenticated first, untimed), then
    /// `count` messages of `size` bytes shared among them; submissions per second.
    async fn submissions(&self, target: &Target, size: u64, count: usize) -> f64 {
        let sink = format!("{}@{DOMAIN}", self.accounts.sink);
        let mut clients = Vec::new();
        for account in &self.accounts.smtp {
            let (login, password) = account.credentials(target);
            let client = SmtpClient::connect_and_auth(target, None, &login, &password)
                .await
                .unwrap_or_else(|e| panic!("SMTP session via {}: {e:#}", target.name));
            let header_len = Generator::new(0, &account.address(), &sink).header().len() as u64;
            let message =
                Generator::new(size.saturating_sub(header_len), &account.address(), &sink)
                    .into_bytes();
            clients.push((client, account.address(), message));
        }
        let left = Arc::new(AtomicUsize::new(count));
        let started = Instant::now();
        let mut set = JoinSet::new();
        for (mut client, from, message) in clients {
            let (left, sink) = (left.clone(), sink.clone());
            set.spawn(async move {
                let mut sent = 0usize;
                while left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    client.send_message(&from, &sink, &message).await?;
                    sent += 1;
                }
                let _ = client.quit().await;
                anyhow::Ok(sent)
            });
        }
        let mut sent = 0;
        while let Some(done) = set.join_next().await {
            match done.unwrap() {
                Ok(n) => sent += n,
                Err(e) => eprintln!("WARNING: submission via {} failed: {e:#}", target.name),
            }
        }
        sent as f64 / started.elapsed().as_secs_f64()
    }

    async fn flood(&self) {
        self.section(&format!(
            "flood: cached login cycles (c=1) while {FLOODERS} connections send wrong passwords"
        ));
        let victim = self.accounts.victim.clone().unwrap();
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut unloaded = (Series::default(), Series::default());
        let mut penalised = (Series::default(), Series::default());
        let mut trusted = Series::default();
        let (mut flood_rate_pen, mut flood_rate_direct, mut flood_rate_trusted) =
            (Vec::new(), Vec::new(), Vec::new());
        let (mut hash_rate, mut pool_busy, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..self.runs {
            for target in self.order(run) {
                let is_postern = target.name == "postern";
                let creds = self.fixed(std::slice::from_ref(&victim), target);
                let (login, _) = victim.credentials(target);
                let mut phase = login_phase(target, creds.clone(), 1, FLOOD_CYCLES).await;
                phase.warn("flood unloaded");
                if is_postern {
                    unloaded.0.push(&mut phase);
                } else {
                    unloaded.1.push(&mut phase);
                }
                let flood = Flood::start(
                    target,
                    &[PENALISED_FLOODER],
                    std::slice::from_ref(&login),
                    FLOODERS,
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut phase = login_phase(target, creds.clone(), 1, FLOOD_CYCLES).await;
                let summary = flood.stop().await;
                let rate = summary.rate();
                println!(
                    "  flood via {} from {PENALISED_FLOODER}: {summary}",
                    target.name
                );
                phase.warn("flood penalised");
                if is_postern {
                    penalised.0.push(&mut phase);
                    flood_rate_pen.push(rate);
                } else {
                    penalised.1.push(&mut phase);
                    flood_rate_direct.push(rate);
                }
                if is_postern {
                    let pid = self.postern.pid();
                    let flood = Flood::start(
                        target,
                        &[TRUSTED_FLOODER],
                        std::slice::from_ref(&login),
                        FLOODERS,
                    );
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let before = self.postern.metrics();
                    let cpu_before = procfs::cpu_seconds(pid).unwrap_or(0.0);
                    let started = Instant::now();
                    let mut phase = login_phase(target, creds.clone(), 1, FLOOD_CYCLES).await;
                    let elapsed = started.elapsed().as_secs_f64();
                    let after = self.postern.metrics();
                    let cpu_after = procfs::cpu_seconds(pid).unwrap_or(0.0);
                    let summary = flood.stop().await;
                    let rate = summary.rate();
                    println!("  flood via postern from {TRUSTED_FLOODER}: {summary}");
                    phase.warn("flood trusted");
                    trusted.push(&mut phase);
                    flood_rate_trusted.push(rate);
                    let count = metric(&after, "postern_password_hash_seconds_count")
                        - metric(&before, "postern_password_hash_seconds_count");
                    let sum = metric(&after, "postern_password_hash_seconds_sum")
                        - metric(&before, "postern_password_hash_seconds_sum");
                    hash_rate.push(count / elapsed);
                    pool_busy.push(100.0 * sum / (elapsed * workers as f64));
                    cpu.push((cpu_after - cpu_before) / elapsed);
                }
            }
        }
        let ratio = |a: &[f64], b: &[f64]| median(a) / median(b);
        self.add(
            "unloaded: p50 ms",
            2,
            unloaded.0.p50.clone(),
            unloaded.1.p50.clone(),
            String::new(),
        );
        self.add(
            "unloaded: p99 ms",
            2,
            unloaded.0.p99.clone(),
            unloaded.1.p99.clone(),
            String::new(),
        );
        self.add(
            "flood from 127.0.0.2 (penalised): p50 ms",
            2,
            penalised.0.p50.clone(),
            penalised.1.p50.clone(),
            String::new(),
        );
        self.add(
            "flood from 127.0.0.2 (penalised): p99 ms",
            2,
            penalised.0.p99.clone(),
            penalised.1.p99.clone(),
            format!(
                "postern loaded/unloaded p99 {:.2}x, direct {:.2}x; wrong attempts/s: postern {:.0}, direct {:.0}",
                ratio(&penalised.0.p99, &unloaded.0.p99),
                ratio(&penalised.1.p99, &unloaded.1.p99),
                median(&flood_rate_pen),
                median(&flood_rate_direct)
            ),
        );
        self.add(
            "flood from 127.0.0.3 (trusted: all hashed): p50",
            2,
            trusted.p50.clone(),
            vec![],
            String::new(),
        );
        self.add(
            "flood from 127.0.0.3 (trusted: all hashed): p99",
            2,
            trusted.p99.clone(),
            vec![],
            format!(
                "loaded/unloaded p99 {:.2}x; wrong attempts/s {:.0}",
                ratio(&trusted.p99, &unloaded.0.p99),
                median(&flood_rate_trusted)
            ),
        );
        self.add(
            "  argon2 verifications/s during that flood",
            1,
            hash_rate,
            vec![],
            format!("postern_password_hash_seconds_count; pool = {workers} workers"),
        );
        self.add(
            "  argon2 pool busy, % of workers' time",
            1,
            pool_busy,
            vec![],
            "postern_password_hash_seconds_sum / (time x workers)".into(),
        );
        self.add(
            "  postern CPU, cores",
            2,
            cpu,
            vec![],
            "utime+stime from /proc/<pid>/stat".into(),
        );
    }

    async fn growth(&self, big_store: u64) {
        self.section("growth: postern only (direct column: the baseline it is compared with)");
        let one = self.accounts.cached[0].clone();
        let forty = self.accounts.forty.clone().unwrap();
        let target = &self.imap_postern;
        let (mut cached1, mut cached40) = (Series::default(), Series::default());
        let (mut uncached1, mut uncached40) = (Series::default(), Series::default());
        for run in 0..self.runs {
            let first_one = run % 2 == 0;
            for which in if first_one { [1, 40] } else { [40, 1] } {
                let (account, series) = if which == 1 {
                    (&one, &mut cached1)
                } else {
                    (&forty, &mut cached40)
                };
                let creds = self.fixed(std::slice::from_ref(account), target);
                let mut phase = login_phase(target, creds, 1, GROWTH_CACHED_CYCLES).await;
                phase.warn("growth cached");
                series.push(&mut phase);
                let (creds, series) = if which == 1 {
                    (self.singles(GROWTH_UNCACHED_CYCLES), &mut uncached1)
                } else {
                    (self.fresh(GROWTH_UNCACHED_CYCLES), &mut uncached40)
                };
                let mut phase = login_phase(target, creds, 1, GROWTH_UNCACHED_CYCLES).await;
                phase.warn("growth uncached");
                series.push(&mut phase);
            }
        }
        self.add(
            "cached login p50 ms: 40 app passwords (vs 1)",
            2,
            cached40.p50.clone(),
            cached1.p50.clone(),
            "c=1".into(),
        );
        self.add(
            "uncached login p50 ms: 40 app passwords (vs 1)",
            2,
            uncached40.p50.clone(),
            uncached1.p50.clone(),
            "c=1, a fresh app password per cycle".into(),
        );

        // The store: 1k users now, then a million.
        let users_small = count_users(&self.postern.store_url).await;
        let lookups_small = self.lookups(users_small).await;
        let started = Instant::now();
        if users_small < big_store {
            bulk_users(&self.postern.store_url, big_store - users_small).await;
        }
        let users_big = count_users(&self.postern.store_url).await;
        let size = std::fs::metadata(self.postern.store_url.trim_start_matches("sqlite://"))
            .map_or(0, |m| m.len());
        println!(
            "  bulk insert to {users_big} users: {:.1} s, store file {:.0} MiB",
            started.elapsed().as_secs_f64(),
            size as f64 / MIB as f64
        );
        let lookups_big = self.lookups(users_big).await;
        let mut uncached_big = Series::default();
        // Warm postern's connections to the grown file first.
        login_phase(target, self.singles(2), 1, 2)
            .await
            .warn("growth warm-up");
        for _ in 0..self.runs {
            let mut phase = login_phase(
                target,
                self.singles(GROWTH_UNCACHED_CYCLES),
                1,
                GROWTH_UNCACHED_CYCLES,
            )
            .await;
            phase.warn("growth uncached big store");
            uncached_big.push(&mut phase);
        }
        self.add(
            &format!("store lookup p50 µs: {users_big} users (vs {users_small})"),
            1,
            lookups_big.0.clone(),
            lookups_small.0.clone(),
            format!(
                "Store::credential in-process, random users, {LOOKUPS} per run; p99 {:.1} vs {:.1} µs",
                median(&lookups_big.1),
                median(&lookups_small.1)
            ),
        );
        self.add(
            &format!("uncached login p50 ms: {users_big} users (vs {users_small})"),
            2,
            uncached_big.p50.clone(),
            uncached1.p50.clone(),
            "c=1, users with one app password".into(),
        );
    }

    /// `LOOKUPS` credential lookups of random existing users, in-process against
    /// postern's store (what a cache miss costs before argon2), per run: (p50 µs, p99 µs).
    async fn lookups(&self, users: u64) -> (Vec<f64>, Vec<f64>) {
        use sqlx::Row as _;
        let mut conn = sqlite(&self.postern.store_url).await;
        let max_id: i64 = sqlx::query("SELECT MAX(id) FROM users")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
        let key = DigestKey::new(self.store.lookup_key().await.unwrap());
        let mut logins = Vec::new();
        let mut rng = rand::thread_rng();
        for _ in 0..LOOKUPS {
            let id = rng.gen_range(1..=max_id);
            let row = sqlx::query("SELECT login FROM users WHERE id >= $1 ORDER BY id LIMIT 1")
                .bind(id)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            logins.push(row.get::<String, _>(0));
        }
        let typed = password::normalize("abcd efgh ijkl mnop").unwrap();
        let (mut p50, mut p99) = (Vec::new(), Vec::new());
        for _ in 0..self.runs {
            let mut latencies = Latencies::new();
            for login in &logins {
                let tag = key.tag(login, &typed);
                let started = Instant::now();
                let found = self.store.credential(login, &tag).await.unwrap();
                latencies.record(started.elapsed());
                assert!(found.is_some(), "{login} in the store");
            }
            p50.push(latencies.p50().as_secs_f64() * 1e6);
            p99.push(latencies.p99().as_secs_f64() * 1e6);
        }
        let _ = users;
        (p50, p99)
    }
}

/// Opens IDLE sessions number `from..to` (round-robin over `accounts`) with
/// `IDLE_OPENERS` concurrent openers: (sessions, failures, first failure).
/// A session opened by [`open_idle`], held open.
enum IdleSession {
    Imap(#[allow(dead_code)] ImapClient),
    Pop3(#[allow(dead_code)] load::pop3::Pop3Client),
}

/// A POP3 session: logged in, then silent.
async fn pop3_idle_session(
    target: &Target,
    login: &str,
    password: &str,
) -> anyhow::Result<load::pop3::Pop3Client> {
    let mut client = load::pop3::Pop3Client::connect(target, None).await?;
    client.login(login, password).await?;
    Ok(client)
}

async fn open_idle(
    protocol: Cycle,
    target: &Target,
    accounts: &[Account],
    from: usize,
    to: usize,
) -> (Vec<IdleSession>, usize, Option<String>) {
    let next = Arc::new(AtomicUsize::new(from));
    let accounts: Arc<Vec<(String, String)>> =
        Arc::new(accounts.iter().map(|a| a.credentials(target)).collect());
    let mut set = JoinSet::new();
    for _ in 0..IDLE_OPENERS {
        let (next, accounts, target) = (next.clone(), accounts.clone(), target.clone());
        set.spawn(async move {
            let mut opened = Vec::new();
            let mut errors = 0;
            let mut first_error = None;
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= to {
                    return (opened, errors, first_error);
                }
                let (login, password) = &accounts[i % accounts.len()];
                let session = match protocol {
                    Cycle::Imap => idle_session(&target, login, password)
                        .await
                        .map(IdleSession::Imap),
                    Cycle::Pop3 => pop3_idle_session(&target, login, password)
                        .await
                        .map(IdleSession::Pop3),
                };
                match session {
                    Ok(session) => opened.push(session),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
        });
    }
    let mut all = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    while let Some(done) = set.join_next().await {
        let (opened, e, first) = done.unwrap();
        all.extend(opened);
        errors += e;
        if first_error.is_none() {
            first_error = first;
        }
    }
    (all, errors, first_error)
}

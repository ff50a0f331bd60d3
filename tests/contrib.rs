//! The operator files in `contrib/`, checked with the real tools they are written for:
//! fail2ban-regex and fail2ban-client on the fail2ban filter and jail, promtool on the
//! alert rules and on postern's live `/metrics`, systemd-analyze on the unit.
//!
//! The fail2ban filter is run over real postern logs: the binary serves in a temp dir (no
//! upstream behind it), and clients from 127.0.0.1 and 127.0.0.2 fail to log in in every
//! way that is their fault, try logins crafted to forge a log field, and log in with a
//! right password that then fails upstream (not their fault). Once with
//! `[log] format = "text"`, once with "json".
//!
//! The tools come from Debian's fail2ban, prometheus and systemd packages (`scripts/test`
//! installs them).

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use support::imap_client::ImapClient;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn contrib(path: &str) -> PathBuf {
    repo().join("contrib").join(path)
}

/// Runs a tool to completion; a missing tool fails the test with the package to install.
fn run_tool(command: &mut Command, package: &str) -> Output {
    let program = command.get_program().to_string_lossy().into_owned();
    match command.output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "{program} is not installed: apt-get install --no-install-recommends {package} \
             (scripts/test does)"
        ),
        Err(error) => panic!("running {program}: {error}"),
    }
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `result` values of `Refusal::as_str` in src/auth/verifier.rs: the client's fault.
fn refusal_results() -> Vec<String> {
    let source = std::fs::read_to_string(repo().join("src/auth/verifier.rs")).unwrap();
    let results: Vec<String> = source
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("Refusal::")?;
            let (_, value) = rest.split_once(" => \"")?;
            Some(value.split('"').next()?.to_string())
        })
        .collect();
    assert!(
        results.len() >= 6,
        "could not read Refusal::as_str from src/auth/verifier.rs: {results:?}"
    );
    results
}

// ---------------------------------------------------------------------------------------
// A real postern producing real log lines.

const WRONG: &str = "wxyz wxyz wxyz wxyz";

/// Logins crafted to forge fields of the log line they end up in.
const FORGED_TEXT: &str =
    "mallory\" mechanism=\"login\" result=\"bad_password\" client_ip=6.6.6.6 duration_ms=1 x=\"";
const FORGED_JSON: &str =
    "mallory\",\"result\":\"bad_password\",\"client_ip\":\"6.6.6.6\",\"x\":\"";
const FORGED_LINES: &str = "mallory\n\
    2026-01-01T00:00:00.000000Z  WARN postern::auth::verifier: login failed protocol=\"imap\" \
    login=\"m\" mechanism=\"login\" result=\"bad_password\" client_ip=6.6.6.6 duration_ms=1\n\
    {\"timestamp\":\"2026-01-01T00:00:00.000000Z\",\"level\":\"WARN\",\"message\":\"login failed\",\
    \"login\":\"m\",\"result\":\"bad_password\",\"client_ip\":\"6.6.6.6\",\"duration_ms\":1}\n";

#[derive(Clone, Copy)]
enum Mechanism {
    Login,
    Plain,
}

struct Attempt {
    from: IpAddr,
    login: String,
    password: String,
    mechanism: Mechanism,
    /// The `result` postern must log.
    result: &'static str,
}

/// `postern serve` in a temp dir, its stderr in `log`; killed on drop if still running.
struct Server {
    dir: tempfile::TempDir,
    child: Option<Child>,
    imaps: u16,
    http: u16,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Server {
    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("POSTERN_CONFIG")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "postern {args:?}: {}",
            text(&output)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Creates an app password and returns (id, password).
    fn app_password(&self, login: &str, extra: &[&str]) -> (i64, String) {
        let mut args = vec!["app-password", "create", login, "--name", "x", "--json"];
        args.extend_from_slice(extra);
        let created: serde_json::Value = serde_json::from_str(&self.cli(&args)).unwrap();
        (
            created["id"].as_i64().unwrap(),
            created["password"].as_str().unwrap().to_string(),
        )
    }

    /// The example config with free ports, nothing listening upstream, the given log
    /// format, and loopback exempt from login penalties (so every attempt is checked and
    /// logged with its real result, without waiting).
    fn prepare(format: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        std::fs::write(dir.path().join("config/master-password"), "secret\n").unwrap();
        let mut config = std::fs::read_to_string(repo().join("config/postern.toml")).unwrap();
        let (imaps, http) = (support::free_port(), support::free_port());
        let mut edit = |from: &str, to: String| {
            assert!(config.contains(from), "the example config has no {from:?}");
            config = config.replacen(from, &to, 1);
        };
        edit("127.0.0.1:10993", format!("127.0.0.1:{imaps}"));
        edit(
            "127.0.0.1:10143",
            format!("127.0.0.1:{}", support::free_port()),
        );
        edit(
            "127.0.0.1:10465",
            format!("127.0.0.1:{}", support::free_port()),
        );
        edit(
            "127.0.0.1:10587",
            format!("127.0.0.1:{}", support::free_port()),
        );
        edit("127.0.0.1:9898", format!("127.0.0.1:{http}"));
        edit(
            "address = \"127.0.0.1:993\"",
            format!("address = \"127.0.0.1:{}\"", support::free_port()),
        );
        edit(
            "address = \"127.0.0.1:465\"",
            format!("address = \"127.0.0.1:{}\"", support::free_port()),
        );
        edit("format = \"text\"", format!("format = \"{format}\""));
        // Loopback is trusted, so failed logins are not slowed or rate-limited by the
        // penalties: every attempt produces its own line.
        let example = "trusted_networks = []";
        assert!(
            config.contains(example),
            "the example config sets trusted_networks"
        );
        config = config.replacen(example, "trusted_networks = [\"127.0.0.0/8\"]", 1);
        std::fs::write(dir.path().join("config/postern.toml"), config).unwrap();
        let log = dir.path().join("postern.log");
        Server {
            dir,
            child: None,
            imaps,
            http,
            log,
        }
    }

    fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_postern"))
            .arg("serve")
            .current_dir(self.dir.path())
            .env_remove("POSTERN_CONFIG")
            .env("POSTERN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::create(&self.log).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + support::STARTUP_DEADLINE;
        while http_get(self.http, "/healthz").is_none() {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "postern serve did not come up ({exited:?}):\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, a clean exit, and the whole log.
    fn stop(&mut self) -> String {
        let mut child = self.child.take().unwrap();
        support::signal(child.id(), support::SIGTERM);
        let status = child.wait().unwrap();
        let log = std::fs::read_to_string(&self.log).unwrap();
        assert!(status.success(), "postern exited with {status:?}:\n{log}");
        log
    }

    async fn attempt(&self, attempt: &Attempt) {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.imaps));
        let cert = self.dir.path().join("certs/postern.crt");
        let (mut client, greeting) =
            ImapClient::connect_tls_from(attempt.from, address, &cert).await;
        assert!(greeting.starts_with("* OK"), "{greeting}");
        let command = match attempt.mechanism {
            Mechanism::Login => format!(
                "LOGIN {} {}",
                imap_quoted(&attempt.login),
                imap_quoted(&attempt.password)
            ),
            Mechanism::Plain => format!(
                "AUTHENTICATE PLAIN {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("\0{}\0{}", attempt.login, attempt.password))
            ),
        };
        let reply = client.command("a1", &command).await;
        assert!(
            reply.last().unwrap().starts_with("a1 NO"),
            "{:?} for {:?}: {reply:?}",
            attempt.result,
            attempt.login
        );
    }
}

fn imap_quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// GET `path` from the HTTP endpoint; `None` while nothing listens.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// What one postern run left behind.
struct Run {
    dir: tempfile::TempDir,
    log: String,
    metrics: String,
    attempts: Vec<Attempt>,
}

/// Starts postern with `format` logs, makes every kind of login attempt, fetches
/// `/metrics`, stops it with SIGTERM.
async fn run_postern(format: &str) -> Run {
    let mut server = Server::prepare(format);
    server.cli(&["user", "add", "dave@example.com"]);
    server.cli(&["user", "add", "carol@example.com"]);
    let (_, right) = server.app_password("dave@example.com", &[]);
    let (revoked_id, revoked) = server.app_password("dave@example.com", &[]);
    server.cli(&["app-password", "revoke", &revoked_id.to_string()]);
    let (_, smtp_only) = server.app_password("dave@example.com", &["--scopes", "smtp"]);
    let (_, expiring) = server.app_password("dave@example.com", &["--expires-in", "1s"]);
    let expiring_created = Instant::now();
    let (_, carols) = server.app_password("carol@example.com", &[]);
    server.cli(&["user", "disable", "carol@example.com"]);
    server.start();

    let one = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let two = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let attempt = |from, login: &str, password: &str, mechanism, result| Attempt {
        from,
        login: login.to_string(),
        password: password.to_string(),
        mechanism,
        result,
    };
    use Mechanism::{Login, Plain};
    let dave = "dave@example.com";
    let attempts = vec![
        attempt(one, dave, WRONG, Login, "bad_password"),
        attempt(one, "nobody@example.com", &right, Plain, "unknown_user"),
        attempt(one, "carol@example.com", &carols, Login, "disabled"),
        attempt(one, dave, &revoked, Plain, "revoked"),
        attempt(one, dave, &expiring, Login, "expired"),
        attempt(one, dave, &smtp_only, Login, "scope_denied"),
        attempt(one, dave, &right, Login, "upstream_unavailable"),
        attempt(two, dave, "abcd abcd abcd abcd", Plain, "bad_password"),
        attempt(two, FORGED_TEXT, WRONG, Login, "unknown_user"),
        attempt(two, FORGED_JSON, WRONG, Login, "unknown_user"),
        attempt(two, FORGED_LINES, WRONG, Plain, "unknown_user"),
        attempt(two, dave, &right, Plain, "upstream_unavailable"),
    ];
    // The expiring password was created with one second to live.
    if let Some(wait) = Duration::from_millis(2100).checked_sub(expiring_created.elapsed()) {
        tokio::time::sleep(wait).await;
    }
    for attempt in &attempts {
        server.attempt(attempt).await;
    }
    let metrics = http_get(server.http, "/metrics").expect("GET /metrics");
    let log = server.stop();
    let metrics = metrics
        .split_once("\r\n\r\n")
        .map(|(head, body)| {
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            body.to_string()
        })
        .unwrap();
    Run {
        dir: std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap()),
        log,
        metrics,
        attempts,
    }
}

/// (result, client_ip) of every "login failed" line, read without fail2ban: from the JSON
/// fields, or in text from the last ` result="` and ` client_ip=` (the login, the only
/// field a client controls, comes before both).
fn logged_failures(log: &str, format: &str) -> Vec<(String, String)> {
    let mut failures = Vec::new();
    for line in log.lines() {
        if format == "json" {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if value["message"] == "login failed" {
                failures.push((
                    value["result"].as_str().unwrap().to_string(),
                    value["client_ip"].as_str().unwrap().to_string(),
                ));
            }
        } else if line.contains(": login failed ") {
            let after = |key: &str| {
                let rest = &line[line.rfind(key).unwrap() + key.len()..];
                rest.split([' ', '"']).next().unwrap().to_string()
            };
            failures.push((after(" result=\""), after(" client_ip=")));
        }
    }
    failures
}

/// What fail2ban-regex made of a log: the summary's line counts and the matched hosts.
#[derive(Debug)]
struct Verdict {
    lines: usize,
    matched: usize,
    /// Lines whose timestamp the filter's datepattern found.
    dated: usize,
    /// Matched lines per host.
    hosts: BTreeMap<String, usize>,
    report: String,
}

fn fail2ban_regex(log: &Path) -> Verdict {
    let filter = contrib("fail2ban/filter.d/postern.conf");
    let summary = run_tool(
        Command::new("fail2ban-regex").arg(log).arg(&filter),
        "fail2ban",
    );
    let report = text(&summary);
    assert!(summary.status.success(), "fail2ban-regex: {report}");
    let stdout = String::from_utf8_lossy(&summary.stdout).into_owned();
    // "Lines: 17 lines, 0 ignored, 10 matched, 7 missed"
    let counts = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Lines: "))
        .unwrap_or_else(|| panic!("no Lines: summary in {report}"));
    let count = |what: &str| -> usize {
        counts
            .split(", ")
            .find_map(|part| part.strip_suffix(what)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {what:?} count in {counts:?}"))
    };
    let (lines, matched, ignored) = (count(" lines"), count(" matched"), count(" ignored"));
    assert_eq!(ignored, 0, "{report}");
    // "Date template hits:" then "|  [17] Year-Month-DayT24hour:...".
    let dated = stdout
        .split("Date template hits:")
        .nth(1)
        .and_then(|rest| {
            rest.lines()
                .find_map(|l| l.trim_start_matches("|  ").strip_prefix('['))
        })
        .and_then(|rest| rest.split(']').next()?.parse().ok())
        .unwrap_or(0);
    let ips = run_tool(
        Command::new("fail2ban-regex")
            .args(["-o", "ip"])
            .arg(log)
            .arg(&filter),
        "fail2ban",
    );
    assert!(ips.status.success(), "fail2ban-regex -o ip: {}", text(&ips));
    let mut hosts = BTreeMap::new();
    for ip in String::from_utf8_lossy(&ips.stdout).lines() {
        *hosts.entry(ip.trim().to_string()).or_insert(0) += 1;
    }
    Verdict {
        lines,
        matched,
        dated,
        hosts,
        report,
    }
}

/// The whole chain for one log format: postern's lines, then the filter over them as a
/// log file, as the journal hands them over, and over variants of a real line.
async fn filter_matches_exactly_the_clients_failures(format: &str) {
    let run = run_postern(format).await;
    let clients_fault = refusal_results();

    // postern logged one "login failed" line per attempt, with the result and address
    // the test expects (else the counts below would mean nothing).
    let logged = logged_failures(&run.log, format);
    let expected: Vec<(String, String)> = run
        .attempts
        .iter()
        .map(|a| (a.result.to_string(), a.from.to_string()))
        .collect();
    assert_eq!(logged, expected, "postern's login lines:\n{}", run.log);
    let mut want = BTreeMap::new();
    for attempt in &run.attempts {
        if clients_fault.iter().any(|r| r == attempt.result) {
            *want.entry(attempt.from.to_string()).or_insert(0) += 1;
        }
    }
    assert_eq!(want.len(), 2, "failures from both addresses");
    let failed: usize = want.values().sum();
    // Every result that is the client's fault was really produced.
    for result in &clients_fault {
        assert!(
            run.attempts.iter().any(|a| a.result == result),
            "no attempt ends in {result}"
        );
    }

    // 1. The log file as postern wrote it.
    let file = run.dir.path().join("postern.log");
    let verdict = fail2ban_regex(&file);
    let total = run.log.lines().count();
    assert_eq!(verdict.lines, total, "{}", verdict.report);
    assert_eq!(
        verdict.dated, total,
        "every timestamp found: {}",
        verdict.report
    );
    assert_eq!(verdict.matched, failed, "{}\n{}", verdict.report, run.log);
    assert_eq!(verdict.hosts, want, "{}\n{}", verdict.report, run.log);

    // 2. As fail2ban's systemd backend formats journal entries: "host ident[pid]: line".
    let journal = run.dir.path().join("journal.log");
    let prefixed: String = run
        .log
        .lines()
        .map(|line| format!("mailhost postern[4242]: {line}\n"))
        .collect();
    std::fs::write(&journal, prefixed).unwrap();
    let verdict = fail2ban_regex(&journal);
    assert_eq!(verdict.matched, failed, "journal form: {}", verdict.report);
    assert_eq!(verdict.hosts, want, "journal form: {}", verdict.report);

    // 3. Variants of a real bad_password line: an IPv6 client matches; the same line with
    // a postern-side result, or as a success, does not.
    let json = format == "json";
    let result_field = |r: &str| {
        if json {
            format!("\"result\":\"{r}\"")
        } else {
            format!(" result=\"{r}\"")
        }
    };
    let ip_field = |ip: &str| {
        if json {
            format!("\"client_ip\":\"{ip}\"")
        } else {
            format!(" client_ip={ip} ")
        }
    };
    let real = run
        .log
        .lines()
        .find(|l| l.contains(&result_field("bad_password")) && l.contains(&ip_field("127.0.0.1")))
        .expect("a bad_password line from 127.0.0.1");
    let mut variants = vec![real.replace(&ip_field("127.0.0.1"), &ip_field("2001:db8::7"))];
    for result in [
        "rate_limited",
        "temporary_failure",
        "upstream_refused",
        "upstream_unavailable",
    ] {
        variants.push(real.replace(&result_field("bad_password"), &result_field(result)));
    }
    variants.push(
        real.replace("WARN", "INFO")
            .replace("login failed", "login")
            .replace(&result_field("bad_password"), &result_field("ok")),
    );
    let file = run.dir.path().join("variants.log");
    std::fs::write(&file, variants.join("\n") + "\n").unwrap();
    let verdict = fail2ban_regex(&file);
    assert_eq!(verdict.matched, 1, "{}", verdict.report);
    assert_eq!(
        verdict.hosts,
        BTreeMap::from([("2001:db8::7".to_string(), 1)]),
        "{}",
        verdict.report
    );

    // promtool's linter has nothing to say about the live /metrics, labelled series
    // included.
    assert!(
        run.metrics.contains("result=\"bad_password\"")
            && run.metrics.contains("postern_upstream_errors_total{"),
        "{}",
        run.metrics
    );
    promtool_check_metrics(&run.metrics);
}

fn promtool_check_metrics(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool (apt-get install prometheus): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool check metrics: {}\n--- /metrics ---\n{body}",
        text(&output)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fail2ban_filter_counts_text_log_failures_per_client() {
    filter_matches_exactly_the_clients_failures("text").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fail2ban_filter_counts_json_log_failures_per_client() {
    filter_matches_exactly_the_clients_failures("json").await;
}

/// The filter's list of results is exactly postern's refusals.
#[test]
fn fail2ban_filter_lists_every_refusal_and_nothing_else() {
    let filter = std::fs::read_to_string(contrib("fail2ban/filter.d/postern.conf")).unwrap();
    let listed = filter
        .lines()
        .find_map(|l| l.strip_prefix("_result = (?:"))
        .and_then(|l| l.strip_suffix(')'))
        .expect("_result = (?:...) in the filter");
    let mut listed: Vec<&str> = listed.split('|').collect();
    let mut refusals = refusal_results();
    listed.sort();
    refusals.sort();
    assert_eq!(listed, refusals);
}

// ---------------------------------------------------------------------------------------
// fail2ban jail

/// Copies a directory tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `fail2ban-client -t` and `-d` on Debian's /etc/fail2ban with only our jail enabled and
/// `jail` as its text; returns the dumped configuration.
fn fail2ban_client_config(jail: &str) -> String {
    let system = Path::new("/etc/fail2ban");
    assert!(
        system.join("jail.conf").is_file(),
        "/etc/fail2ban/jail.conf missing: apt-get install fail2ban (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("fail2ban");
    copy_tree(system, &conf);
    // Debian enables sshd in jail.d; only ours should be there.
    std::fs::remove_dir_all(conf.join("jail.d")).unwrap();
    std::fs::create_dir(conf.join("jail.d")).unwrap();
    std::fs::write(conf.join("jail.d/postern.conf"), jail).unwrap();
    std::fs::copy(
        contrib("fail2ban/filter.d/postern.conf"),
        conf.join("filter.d/postern.conf"),
    )
    .unwrap();
    let test = run_tool(
        Command::new("fail2ban-client")
            .arg("-c")
            .arg(&conf)
            .arg("-t"),
        "fail2ban",
    );
    assert!(
        test.status.success() && String::from_utf8_lossy(&test.stdout).contains("OK"),
        "fail2ban-client -t: {}",
        text(&test)
    );
    let dump = run_tool(
        Command::new("fail2ban-client")
            .arg("-c")
            .arg(&conf)
            .arg("-d"),
        "fail2ban",
    );
    assert!(dump.status.success(), "fail2ban-client -d: {}", text(&dump));
    String::from_utf8_lossy(&dump.stdout).into_owned()
}

#[test]
fn fail2ban_jail_loads_with_the_journal_and_with_a_log_file() {
    let jail = std::fs::read_to_string(contrib("fail2ban/jail.d/postern.conf")).unwrap();
    let dump = fail2ban_client_config(&jail);
    for expected in [
        "['add', 'postern', 'systemd']",
        "['set', 'postern', 'addjournalmatch', '_SYSTEMD_UNIT=postern.service']",
        "['set', 'postern', 'maxretry', 6]",
        "--dports 993,143,465,587",
        "'addfailregex'",
        "['start', 'postern']",
    ] {
        assert!(dump.contains(expected), "no {expected} in\n{dump}");
    }

    // The documented alternative: comment out the journal lines, uncomment the log file.
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut swapped = String::new();
    for line in jail.lines() {
        let line = if line.starts_with("backend ") || line.starts_with("journalmatch ") {
            format!("# {line}")
        } else if line == "# backend = auto" {
            "backend = auto".to_string()
        } else if line.starts_with("# logpath = ") {
            format!("logpath = {}", log.path().display())
        } else {
            line.to_string()
        };
        swapped.push_str(&line);
        swapped.push('\n');
    }
    assert!(
        swapped.contains("\nbackend = auto\nlogpath = "),
        "{swapped}"
    );
    let dump = fail2ban_client_config(&swapped);
    assert!(dump.contains("['add', 'postern', 'auto']"), "{dump}");
    assert!(
        dump.contains(&format!("'addlogpath', '{}'", log.path().display())),
        "{dump}"
    );
}

// ---------------------------------------------------------------------------------------
// Prometheus rules

#[test]
fn prometheus_rules_pass_promtool_check_and_their_unit_tests() {
    let rules = contrib("prometheus/postern-alerts.yml");
    let check = run_tool(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(&rules),
        "prometheus",
    );
    assert!(
        check.status.success() && String::from_utf8_lossy(&check.stdout).contains("SUCCESS"),
        "promtool check rules: {}",
        text(&check)
    );
    let tests = run_tool(
        Command::new("promtool")
            .args(["test", "rules", "postern-alerts.test.yml"])
            .current_dir(contrib("prometheus")),
        "prometheus",
    );
    assert!(
        tests.status.success(),
        "promtool test rules: {}",
        text(&tests)
    );
}

/// Every metric and label value the rules use is one postern exports (a rule over a
/// renamed series would silently never fire).
#[test]
fn prometheus_rules_use_only_postern_metric_names_and_results() {
    let rules = std::fs::read_to_string(contrib("prometheus/postern-alerts.yml")).unwrap();
    let metrics_source = std::fs::read_to_string(repo().join("src/ops/metrics.rs")).unwrap();
    let mut names = Vec::new();
    let mut rest = rules.as_str();
    while let Some(at) = rest.find("postern_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    assert!(names.len() > 5, "{names:?}");
    for name in &names {
        // Histograms are exported as name_bucket/_sum/_count.
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            metrics_source.contains(&format!("\"{name}\""))
                || metrics_source.contains(&format!("\"{base}\"")),
            "{name} is not a metric of src/metrics.rs"
        );
    }
    // Label values of result= and reason= matchers: string literals somewhere in src/.
    let mut sources = String::new();
    let mut dirs = vec![repo().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let mut values = Vec::new();
    for key in ["result=~\"", "result=\"", "reason!=\"", "reason=\""] {
        for piece in rules.split(key).skip(1) {
            let matcher = piece.split('"').next().unwrap();
            values.extend(matcher.split('|').map(str::to_string));
        }
    }
    assert!(values.len() > 10, "{values:?}");
    for value in values {
        assert!(
            sources.contains(&format!("\"{value}\"")),
            "label value {value:?} used by the rules appears nowhere in src/"
        );
    }
}

// ---------------------------------------------------------------------------------------
// systemd unit

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(contrib("systemd/postern.service")).unwrap();
    assert!(
        unit.contains(
            "ExecStart=/usr/local/bin/postern serve --config /etc/postern/postern.toml\n"
        ),
        "{unit}"
    );
    for directive in [
        "User=postern",
        "WorkingDirectory=/var/lib/postern",
        "StateDirectory=postern",
        "ReadWritePaths=/var/lib/postern",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "SystemCallArchitectures=native",
        "LimitNOFILE=65536",
    ] {
        assert!(
            unit.lines().any(|line| line == directive),
            "no {directive} in the unit"
        );
    }
    // Room for [limits] shutdown_grace (30 s by default) before systemd's SIGKILL.
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.strip_suffix('s')?.parse::<u64>().ok())
        .expect("TimeoutStopSec=<n>s");
    assert!(stop > 30, "TimeoutStopSec={stop}s");

    // systemd-analyze checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postern.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/postern", env!("CARGO_BIN_EXE_postern")),
    )
    .unwrap();
    let verify = run_tool(
        Command::new("systemd-analyze").arg("verify").arg(&path),
        "systemd",
    );
    // Unknown keys and bad values are warnings on stderr with exit 0: none allowed.
    assert!(
        verify.status.success() && verify.stderr.is_empty() && verify.stdout.is_empty(),
        "systemd-analyze verify: {}",
        text(&verify)
    );
    // The exposure score of systemd's own checklist, 0 (locked down) to 10; --threshold
    // is in tenths. Fails if the hardening directives go.
    let security = run_tool(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--threshold=20"])
            .arg(&path),
        "systemd",
    );
    assert!(
        security.status.success(),
        "systemd-analyze security: {}",
        text(&security)
    );
}

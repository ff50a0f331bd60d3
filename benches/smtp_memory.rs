//! postern's memory while a 50 MiB message passes through its SMTP submission relay.
//!
//! Runs the real `postern` binary as a separate process (its own config in a temp dir, in
//! front of a private Dovecot whose submission service relays into the recipients'
//! Maildirs), then:
//!
//! 1. reads postern's VmRSS / VmHWM from `/proc/<pid>/status` after startup;
//! 2. sends one small message through the smtps listener (warm-up: TLS, the upstream
//!    session, the argon2 verification and the SMTP code paths are all exercised once);
//! 3. resets the high-water mark (`echo 5 > /proc/<pid>/clear_refs`) and reads VmRSS;
//! 4. streams a 50 MiB message (generated on the fly, 64 KiB writes) from alice to bob
//!    through the smtps listener, sampling VmRSS every 10 ms meanwhile;
//! 5. reads VmHWM: the peak during the message; growth = peak - baseline.
//!
//! Then checks that the message landed in bob's Maildir with an identical body (SHA-256),
//! and prints a table. The target (README) is growth <= 4 MiB: postern holds at most the
//! header block (64 KiB by default) and streams the rest.
//!
//! Run with `cargo bench --bench smtp_memory`. Set `SMTP_MEMORY_MIB` to change the size.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::smtp_client::SmtpClient;
use support::{free_port, Dovecot, TestCa};

const MIB: u64 = 1024 * 1024;
const TARGET_GROWTH_MIB: f64 = 4.0;

fn main() {
    let size_mib: u64 = std::env::var("SMTP_MEMORY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dovecot = Dovecot::start();
    dovecot.add_user("alice", "alice-direct-password");
    dovecot.add_user("bob", "bob-direct-password");

    raise_submission_limit(&dovecot, size_mib + 8);

    let postern = PosternProcess::start(&dovecot, size_mib);
    let pid = postern.pid();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let started = memory(pid);

    // Warm-up: one small message through the same listener.
    let small = Generator::new(8 * 1024);
    let small_sha = small.body_sha256();
    runtime.block_on(submit(&postern, small));
    let warm = memory(pid);
    if std::env::var_os("SMTP_MEMORY_SMAPS").is_some() {
        print_largest_mappings(pid, "after startup and the warm-up message");
    }

    // Reset the high-water mark; fall back to the sampled peak when that is impossible.
    let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    std::thread::sleep(Duration::from_millis(50));
    let baseline = memory(pid);

    let sampler = Sampler::start(pid);
    let big = Generator::new(size_mib * MIB);
    let big_sha = big.body_sha256();
    let started_at = Instant::now();
    let data_time = runtime.block_on(submit(&postern, big));
    let total_time = started_at.elapsed();
    let sampled_peak_kib = sampler.stop();
    let after = memory(pid);
    std::thread::sleep(Duration::from_millis(500));
    let settled = memory(pid);
    if std::env::var_os("SMTP_MEMORY_SMAPS").is_some() {
        print_largest_mappings(pid, "after the big message");
    }

    // The message landed, body identical.
    let delivered = delivered(&dovecot, "bob");
    assert_eq!(
        delivered.len(),
        2,
        "two messages in bob's Maildir\n{}\n{}",
        dovecot.all_logs(),
        postern.log()
    );
    let (small_file, big_file) = (&delivered[0], &delivered[1]);
    let big_len = std::fs::metadata(big_file).unwrap().len();
    assert_eq!(body_sha256(small_file), small_sha, "warm-up body intact");
    assert_eq!(body_sha256(big_file), big_sha, "big body intact");
    let expected_len = size_mib * MIB;
    assert!(
        big_len >= expected_len && big_len < expected_len + 4096,
        "delivered {big_len} bytes, generated {expected_len} plus headers"
    );

    let peak_kib = if hwm_reset {
        after.hwm_kib
    } else {
        sampled_peak_kib
    };
    let growth_mib = (peak_kib as f64 - baseline.rss_kib as f64) / 1024.0;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let rate = (size_mib as f64) / data_time.as_secs_f64();

    println!();
    println!("postern RSS while a {size_mib} MiB message passes (smtps -> Dovecot submission)");
    println!("  {:<44} {:>10}", "measurement", "MiB");
    println!(
        "  {:<44} {:>10.1}",
        "RSS after startup",
        mib(started.rss_kib)
    );
    println!(
        "  {:<44} {:>10.1}",
        "RSS after the warm-up message",
        mib(warm.rss_kib)
    );
    println!(
        "  {:<44} {:>10.1}",
        "HWM before reset (startup + warm-up)",
        mib(warm.hwm_kib)
    );
    println!(
        "  {:<44} {:>10.1}",
        "baseline RSS (after HWM reset)",
        mib(baseline.rss_kib)
    );
    println!(
        "  {:<44} {:>10.1}",
        if hwm_reset {
            "peak RSS during the message (VmHWM)"
        } else {
            "peak RSS during the message (sampled)"
        },
        mib(peak_kib)
    );
    println!(
        "  {:<44} {:>10.1}",
        "peak RSS sampled every 10 ms",
        mib(sampled_peak_kib)
    );
    println!("  {:<44} {:>10.1}", "RSS right after", mib(after.rss_kib));
    println!("  {:<44} {:>10.1}", "RSS 0.5 s later", mib(settled.rss_kib));
    println!(
        "  {:<44} {:>10.2}   (target <= {TARGET_GROWTH_MIB} MiB: {})",
        "growth (peak - baseline)",
        growth_mib,
        if growth_mib <= TARGET_GROWTH_MIB {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  {:<44} {:>10.2} s   ({rate:.1} MiB/s; whole session {:.2} s)",
        "DATA to the 250 after the final dot",
        data_time.as_secs_f64(),
        total_time.as_secs_f64()
    );
    println!(
        "  delivered to bob: {} bytes ({:.2} MiB), body SHA-256 identical",
        big_len,
        big_len as f64 / MIB as f64
    );
    if !hwm_reset {
        println!("  (could not write /proc/{pid}/clear_refs: peak is the 10 ms sample)");
    }
    postern.stop();
}

/// Dovecot's submission service refuses messages over `submission_max_mail_size` (40M
/// in 2.3.19, announced after AUTH) with `552 5.2.3`; the test Dovecot's config has no
/// knob for it, so append the setting to its config file and reload it.
fn raise_submission_limit(dovecot: &Dovecot, mib: u64) {
    let conf = dovecot.dir.join("dovecot.conf");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .expect("open dovecot.conf");
    writeln!(file, "submission_max_mail_size = {mib}M").unwrap();
    drop(file);
    let out = Command::new("/usr/sbin/dovecot")
        .arg("-c")
        .arg(&conf)
        .arg("reload")
        .output()
        .expect("run dovecot reload");
    assert!(
        out.status.success(),
        "dovecot reload: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dovecot.all_logs()
    );
    let deadline = Instant::now() + support::STARTUP_DEADLINE;
    while !dovecot.log().contains("reloading configuration") {
        assert!(
            Instant::now() < deadline,
            "dovecot did not reload\n{}",
            dovecot.all_logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    support::wait_for_port(dovecot.submissions_port, "dovecot", || dovecot.all_logs());
}

// ---------------------------------------------------------------------------------------
// postern as a separate process

struct PosternProcess {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    smtps: SocketAddr,
    ca_path: PathBuf,
    password: String,
}

impl PosternProcess {
    /// Writes the config, creates alice and an smtp app password with the CLI, starts
    /// `postern serve` and waits until /healthz answers.
    fn start(dovecot: &Dovecot, size_mib: u64) -> PosternProcess {
        let dir = tempfile::Builder::new()
            .prefix("postern-bench-")
            .tempdir()
            .expect("temp dir");
        let ca = TestCa::new(dir.path());
        let (cert, key) = ca.issue(dir.path(), "postern", &["localhost", "127.0.0.1"]);
        let master_password_file = dir.path().join("master-password");
        std::fs::write(
            &master_password_file,
            format!("{}\n", dovecot.master_password),
        )
        .unwrap();
        let smtps_port = free_port();
        let http_port = free_port();
        // Room above the message for headers and line ends.
        let max_message_size = (size_mib + 8) * MIB;
        let text = format!(
            r#"
[store]
url = "sqlite://{db}"

[tls]
cert = "{cert}"
key = "{key}"

[[listener]]
name = "smtps"
protocol = "smtp"
bind = "127.0.0.1:{smtps_port}"
tls = "implicit"

[upstream.smtp]
address = "127.0.0.1:{submissions}"
tls = "implicit"
server_name = "localhost"
ca_file = "{ca_file}"
auth = "sasl-plain-authzid"
master_user = "{master_user}"
master_password_file = "{master_password_file}"

[upstream.imap]
address = "127.0.0.1:{imaps}"
tls = "implicit"
server_name = "localhost"
ca_file = "{ca_file}"
auth = "sasl-plain-authzid"
master_user = "{master_user}"
master_password_file = "{master_password_file}"

[smtp]
max_message_size = {max_message_size}

[http]
bind = "127.0.0.1:{http_port}"
"#,
            db = dir.path().join("postern.db").display(),
            cert = cert.display(),
            key = key.display(),
            submissions = dovecot.submissions_port,
            imaps = dovecot.imaps_port,
            ca_file = dovecot.ca_path.display(),
            master_user = dovecot.master_user,
            master_password_file = master_password_file.display(),
        );
        let config = dir.path().join("postern.toml");
        std::fs::write(&config, text).unwrap();

        cli(&config, &["check-config"]);
        cli(&config, &["migrate"]);
        cli(
            &config,
            &[
                "user",
                "add",
                "alice@example.test",
                "--upstream-user",
                "alice",
                "--address",
                "alice@example.test",
            ],
        );
        let issued = cli(
            &config,
            &[
                "app-password",
                "create",
                "alice@example.test",
                "--name",
                "bench",
                "--scopes",
                "smtp",
                "--json",
            ],
        );
        let issued: serde_json::Value =
            serde_json::from_str(&issued).expect("app-password create --json prints JSON");
        let password = issued["password"]
            .as_str()
            .expect("password in JSON")
            .to_string();

        let log = std::fs::File::create(dir.path().join("postern.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_postern"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run postern serve");
        let mut postern = PosternProcess {
            child,
            dir,
            config,
            smtps: SocketAddr::from(([127, 0, 0, 1], smtps_port)),
            ca_path: ca.ca_path.clone(),
            password,
        };
        let deadline = Instant::now() + support::STARTUP_DEADLINE;
        loop {
            if let Ok(Some(status)) = postern.child.try_wait() {
                panic!("postern exited ({status}) at startup\n{}", postern.log());
            }
            if healthz(http_port) && support::port_open(smtps_port) {
                break;
            }
            if Instant::now() > deadline {
                panic!("postern not healthy in time\n{}", postern.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        postern
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        format!(
            "--- postern log ({}) ---\n{}",
            self.config.display(),
            support::read_lossy(&self.dir.path().join("postern.log"))
        )
    }

    fn stop(mut self) {
        support::signal(self.child.id(), support::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PosternProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `postern --config <config> args...`; panics unless it succeeds; returns stdout.
fn cli(config: &Path, args: &[&str]) -> String {
    let out = support::postern::cli(config, args);
    assert!(
        out.status.success(),
        "postern {args:?} failed ({})\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET /healthz answers 200.
fn healthz(port: u16) -> bool {
    let Ok(mut tcp) = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    if tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = tcp.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200")
}

// ---------------------------------------------------------------------------------------
// /proc

#[derive(Clone, Copy)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

fn memory(pid: u32) -> Memory {
    try_memory(pid).unwrap_or_else(|| panic!("VmRSS and VmHWM in /proc/{pid}/status"))
}

fn try_memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// With `SMTP_MEMORY_SMAPS` set: the mappings holding the most resident memory, to see
/// where RSS sits (heap arenas, thread stacks, the binary).
fn print_largest_mappings(pid: u32, when: &str) {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return;
    };
    let mut mappings: Vec<(u64, String)> = Vec::new();
    let mut current = String::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            current = line.to_string();
        } else if let Some(rss) = line.strip_prefix("Rss:") {
            let kib = rss
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            mappings.push((kib, current.clone()));
        }
    }
    mappings.sort_by_key(|m| std::cmp::Reverse(m.0));
    println!("largest resident mappings of postern {when}:");
    for (kib, mapping) in mappings.iter().take(8) {
        println!("  {:>8} KiB  {mapping}", kib);
    }
}

/// Samples VmRSS every 10 ms on a thread; `stop` returns the largest value seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Some(now) = try_memory(pid) else { return };
                    peak.fetch_max(now.rss_kib, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Sampler { stop, peak, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        self.peak.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------
// The message

/// A message whose body is exactly `body_len` bytes of CRLF lines of 76 printable
/// characters (none starting with a dot), produced chunk by chunk from a seeded xorshift.
struct Generator {
    body_len: u64,
    produced: u64,
    state: u64,
    column: usize,
}

const LINE: usize = 76;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl Generator {
    fn new(body_len: u64) -> Generator {
        Generator {
            body_len,
            produced: 0,
            state: 0x9e37_79b9_7f4a_7c15 ^ body_len,
            column: 0,
        }
    }

    fn header(&self) -> Vec<u8> {
        format!(
            "From: Alice <alice@example.test>\r\n\
             To: Bob <bob@example.test>\r\n\
             Subject: {} bytes\r\n\
             Message-ID: <bench-{}@example.test>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\
             \r\n",
            self.body_len, self.body_len
        )
        .into_bytes()
    }

    /// Appends up to `max` body bytes to `out`; false when the body is complete.
    fn next_chunk(&mut self, out: &mut Vec<u8>, max: usize) -> bool {
        let remaining = self.body_len - self.produced;
        if remaining == 0 {
            return false;
        }
        let n = (max as u64).min(remaining) as usize;
        for i in 0..n {
            let left = remaining - i as u64;
            let byte = if left <= 2 {
                // The body ends with CRLF.
                if left == 2 {
                    b'\r'
                } else {
                    b'\n'
                }
            } else if self.column == LINE {
                b'\r'
            } else if self.column == LINE + 1 {
                b'\n'
            } else {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                ALPHABET[(self.state % ALPHABET.len() as u64) as usize]
            };
            self.column = if byte == b'\n' { 0 } else { self.column + 1 };
            out.push(byte);
        }
        self.produced += n as u64;
        true
    }

    /// The SHA-256 of the body this generator will produce.
    fn body_sha256(&self) -> String {
        let mut copy = Generator::new(self.body_len);
        let mut hasher = Sha256::new();
        let mut chunk = Vec::with_capacity(1 << 20);
        while copy.next_chunk(&mut chunk, 1 << 20) {
            hasher.update(&chunk);
            chunk.clear();
        }
        hex(&hasher.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One session through postern's smtps listener: AUTH PLAIN, MAIL/RCPT to bob, DATA
/// streamed in 64 KiB writes, QUIT. Returns the time from DATA to the reply after the dot.
async fn submit(postern: &PosternProcess, mut message: Generator) -> Duration {
    use base64::Engine as _;
    let (mut client, greeting) = SmtpClient::connect_tls(postern.smtps, &postern.ca_path).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    let ehlo = client.command("EHLO bench.example").await;
    assert!(ehlo.contains("AUTH PLAIN"), "{ehlo}");
    let response = base64::engine::general_purpose::STANDARD
        .encode(format!("\0alice@example.test\0{}", postern.password));
    let auth = client.command(&format!("AUTH PLAIN {response}")).await;
    assert!(auth.starts_with("235 "), "{auth}\n{}", postern.log());
    let size = message.body_len + message.header().len() as u64;
    let mail = client
        .command(&format!("MAIL FROM:<alice@example.test> SIZE={size}"))
        .await;
    assert!(mail.starts_with("250 "), "{mail}");
    let rcpt = client.command("RCPT TO:<bob@example.test>").await;
    assert!(rcpt.starts_with("250 "), "{rcpt}");
    let started = Instant::now();
    let data = client.command("DATA").await;
    assert!(data.starts_with("354 "), "{data}");
    client.send(&message.header()).await;
    let mut chunk = Vec::with_capacity(64 * 1024);
    while message.next_chunk(&mut chunk, 64 * 1024) {
        client.send(&chunk).await;
        chunk.clear();
    }
    let reply = client.command(".").await;
    let elapsed = started.elapsed();
    assert!(reply.starts_with("250 "), "{reply}\n{}", postern.log());
    let quit = client.command("QUIT").await;
    assert!(quit.starts_with("221 "), "{quit}");
    elapsed
}

/// The files in `user`'s Maildir/new, smallest first.
fn delivered(dovecot: &Dovecot, user: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dovecot.maildir(user).join("new"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort_by_key(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0));
    files
}

/// SHA-256 of everything after the first empty line of a stored message.
fn body_sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let start = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header block")
        + 4;
    hex(&Sha256::digest(&bytes[start..]))
}

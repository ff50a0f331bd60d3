//! Real peers for end-to-end tests: a private Dovecot and a private PostgreSQL cluster,
//! each started from the installed binaries with a generated config in a temp dir, on
//! ephemeral loopback ports, and torn down on Drop.
//!
//! Works as root (CI) and as a normal user:
//! - root: Dovecot runs as root with its usual privilege separation (login processes as
//!   `dovenull`, auth as `dovecot`, mail processes as `nobody:nogroup`); PostgreSQL runs
//!   as the `postgres` user through `setpriv`.
//! - normal user: everything runs as the current user.
#![allow(dead_code, unused_imports)]

pub mod browser;
pub mod certs;
pub mod client_run;
pub mod dovecot;
pub mod faulty;
pub mod haproxy;
pub mod imap_client;
pub mod ldap;
pub mod oauth;
pub mod openssl;
pub mod pebble;
pub mod postern;
pub mod postgres;
pub mod smtp_client;
pub mod smtp_relay;
pub mod system;

pub use certs::TestCa;
pub use dovecot::Dovecot;
pub use postgres::Postgres;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// A test client's connection: plaintext, or TLS through tokio-rustls, a driver of rustls
/// independent of postern's own TLS stream.
pub type ClientStream = tokio_util::either::Either<
    tokio::net::TcpStream,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
>;

/// The plaintext connection underneath, for a STARTTLS upgrade.
pub fn into_plain(stream: ClientStream) -> tokio::net::TcpStream {
    match stream {
        tokio_util::either::Either::Left(tcp) => tcp,
        tokio_util::either::Either::Right(_) => panic!("plaintext before STARTTLS"),
    }
}

/// How long a peer may take to become ready (or to stop) before the harness panics.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// A loopback TCP port that was free a moment ago. Ports are never handed out twice by
/// this process, so concurrent tests do not race each other for the same one.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    // Keep the listeners of rejected ports open so the kernel offers another one.
    let mut held = Vec::new();
    for _ in 0..1000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if handed.insert(port) {
            return port;
        }
        held.push(listener);
    }
    panic!("free_port: no unused loopback port found");
}

/// Polls until something accepts TCP connections on 127.0.0.1:`port`; panics after
/// [`STARTUP_DEADLINE`] with `log()` in the message.
pub fn wait_for_port(port: u16, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + STARTUP_DEADLINE;
    while !port_open(port) {
        if Instant::now() > deadline {
            panic!(
                "{what}: nothing accepted connections on 127.0.0.1:{port} within {:?}\n\
                 --- {what} log ---\n{}",
                STARTUP_DEADLINE,
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True when a TCP connection to 127.0.0.1:`port` succeeds right now.
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Polls until `port` refuses connections; panics after the deadline.
pub(crate) fn wait_for_port_closed(port: u16, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + STARTUP_DEADLINE;
    while port_open(port) {
        if Instant::now() > deadline {
            panic!(
                "{what}: 127.0.0.1:{port} still accepts connections after stop\n\
                 --- {what} log ---\n{}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// Process plumbing (no libc crate among the dependencies: declare the few calls we need).

mod ffi {
    extern "C" {
        pub fn geteuid() -> u32;
        pub fn kill(pid: i32, sig: i32) -> i32;
        pub fn atexit(cb: extern "C" fn()) -> i32;
        pub fn prctl(option: i32, ...) -> i32;
        pub fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    }
}

pub(crate) const SIGINT: i32 = 2;
pub(crate) const SIGKILL: i32 = 9;
pub(crate) const SIGTERM: i32 = 15;
pub(crate) const SIGSTOP: i32 = 19;

pub(crate) fn is_root() -> bool {
    unsafe { ffi::geteuid() == 0 }
}

pub(crate) fn signal(pid: u32, sig: i32) {
    unsafe {
        ffi::kill(pid as i32, sig);
    }
}

/// How a peer process is stopped.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stop {
    /// Send this signal to the process and wait for it to exit.
    Signal(i32),
    /// SIGKILL the process and all its descendants at once (Dovecot: its graceful
    /// shutdown holds the listeners open for a fixed second).
    KillTree,
}

/// Returns pids of killed descendants (to reap once the process itself is reaped).
fn send_stop(pid: u32, how: Stop) -> Vec<u32> {
    match how {
        Stop::Signal(sig) => {
            signal(pid, sig);
            Vec::new()
        }
        Stop::KillTree => kill_tree(pid),
    }
}

/// Freezes `pid` (so it cannot fork any more), kills its descendants, then kills it.
/// Returns the descendants' pids.
fn kill_tree(pid: u32) -> Vec<u32> {
    signal(pid, SIGSTOP);
    // kill() only queues SIGSTOP: wait until the process is really stopped (or gone).
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match process_state(pid) {
            Some('T') | Some('t') | Some('Z') | Some('X') | None => break,
            _ => std::thread::yield_now(),
        }
    }
    let mut killed = Vec::new();
    for child in children_of(pid) {
        killed.extend(kill_tree(child));
        killed.push(child);
    }
    signal(pid, SIGKILL);
    killed
}

/// Reaps processes that were reparented to us (we are a child subreaper, see
/// `register_live`) after their parent was killed, so they don't linger as zombies
/// under a PID 1 that never reaps (containers). Bounded; ignores pids that are not ours.
fn reap(pids: &[u32]) {
    const WNOHANG: i32 = 1;
    let deadline = Instant::now() + Duration::from_secs(5);
    for &pid in pids {
        loop {
            let mut status = 0;
            let r = unsafe { ffi::waitpid(pid as i32, &mut status, WNOHANG) };
            if r != 0 || Instant::now() > deadline {
                break; // reaped, or not our child (ECHILD), or giving up
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Direct children of `pid`, from /proc/<n>/stat.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&n| {
            std::fs::read_to_string(format!("/proc/{n}/stat"))
                .ok()
                .and_then(|stat| {
                    // "pid (comm) state ppid ...": comm may contain spaces and parens.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Peer processes still running: how to stop them and their temp dir. An atexit hook
/// stops whatever is left when the test binary exits and removes its dir, so peers kept
/// in statics (never dropped) or leaked do not outlive the tests.
static LIVE: Mutex<Option<HashMap<u32, (Stop, PathBuf)>>> = Mutex::new(None);

extern "C" fn stop_leftovers() {
    const WNOHANG: i32 = 1;
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(live) = live.as_ref() else { return };
    for (&pid, (how, _)) in live {
        let _ = send_stop(pid, *how);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (&pid, (_, dir)) in live {
        loop {
            let mut status = 0;
            if unsafe { ffi::waitpid(pid as i32, &mut status, WNOHANG) } != 0 {
                break;
            }
            if Instant::now() > deadline {
                kill_tree(pid);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub(crate) fn register_live(pid: u32, how: Stop, dir: &Path) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| unsafe {
        ffi::atexit(stop_leftovers);
        // Become the child subreaper: orphans of killed peers are reparented to us and
        // reaped in `stop_child`, instead of piling up as zombies.
        const PR_SET_CHILD_SUBREAPER: i32 = 36;
        ffi::prctl(PR_SET_CHILD_SUBREAPER, 1 as std::ffi::c_ulong);
    });
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(pid, (how, dir.to_path_buf()));
}

pub(crate) fn unregister_live(pid: u32) {
    if let Some(live) = LIVE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        live.remove(&pid);
    }
}

/// Stops `child` as `how` says and waits for it to exit; escalates to killing its whole
/// tree after the deadline. Returns false when the escalation was needed.
pub(crate) fn stop_child(child: &mut Child, how: Stop) -> bool {
    let pid = child.id();
    if let Ok(Some(_)) = child.try_wait() {
        unregister_live(pid);
        return true;
    }
    let mut descendants = send_stop(pid, how);
    let deadline = Instant::now() + STARTUP_DEADLINE;
    let graceful = loop {
        match child.try_wait() {
            Ok(Some(_)) => break true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                descendants.extend(kill_tree(pid));
                let _ = child.wait();
                break false;
            }
        }
    };
    unregister_live(pid);
    reap(&descendants);
    graceful
}

/// Numeric (uid, gid) of a user, via `id` (works with any NSS source).
pub(crate) fn user_ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = run(
            Command::new("id").arg(flag).arg(user),
            &format!("id {flag} {user}"),
        );
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("id {flag} {user}: {out:?}: {e}"))
    };
    (id("-u"), id("-g"))
}

/// Name of the current user and of its primary group.
pub(crate) fn current_user_and_group() -> (String, String) {
    let user = run(Command::new("id").arg("-un"), "id -un")
        .trim()
        .to_string();
    let group = run(Command::new("id").arg("-gn"), "id -gn")
        .trim()
        .to_string();
    (user, group)
}

/// Runs a command to completion; panics with its output when it fails. Returns stdout.
pub(crate) fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what}: {cmd:?} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn chown(path: &Path, ids: Option<(u32, u32)>) {
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {uid}:{gid} {}: {e}", path.display()));
    }
}

pub(crate) fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

pub(crate) fn read_lossy(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

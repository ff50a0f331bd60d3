//! A private haproxy (Debian's 2.6) in TCP mode in front of postern's listeners, sending
//! the PROXY header postern's `proxy_protocol` listeners expect: one loopback frontend per
//! [`Route`], each with its own PROXY version. Started in the foreground from a generated
//! config in a temp dir (no chroot, no user switch, so root and non-root alike), stopped
//! on Drop.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    free_port, port_open, read_lossy, register_live, stop_child, unregister_live,
    wait_for_port_closed, Stop, SIGTERM, STARTUP_DEADLINE,
};

const HAPROXY: &str = "/usr/sbin/haproxy";

/// Which PROXY header haproxy sends to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyVersion {
    /// `send-proxy`: the text line.
    V1,
    /// `send-proxy-v2`: the binary header.
    V2,
}

/// One frontend: haproxy listens on a loopback port and forwards to `to` with a header,
/// round robin when there are several.
#[derive(Clone, Debug)]
pub struct Route {
    pub to: Vec<SocketAddr>,
    pub version: ProxyVersion,
}

impl Route {
    pub fn v1(to: SocketAddr) -> Route {
        Route {
            to: vec![to],
            version: ProxyVersion::V1,
        }
    }

    pub fn v2(to: SocketAddr) -> Route {
        Route {
            to: vec![to],
            version: ProxyVersion::V2,
        }
    }

    /// Round robin over several instances, with the binary header.
    pub fn round_robin(to: &[SocketAddr]) -> Route {
        Route {
            to: to.to_vec(),
            version: ProxyVersion::V2,
        }
    }
}

/// A running haproxy.
pub struct Haproxy {
    /// The frontends, in the order of the routes given to [`Haproxy::start`].
    pub frontends: Vec<SocketAddr>,
    dir: PathBuf,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl Haproxy {
    /// Starts haproxy with one frontend per route and waits until each accepts
    /// connections; panics with haproxy's log when it does not.
    pub fn start(routes: &[Route]) -> Haproxy {
        let tmp = tempfile::Builder::new()
            .prefix("postern-haproxy-")
            .tempdir()
            .expect("temp dir for haproxy");
        let mut haproxy = Haproxy {
            frontends: Vec::new(),
            dir: tmp.path().to_path_buf(),
            child: None,
            _tmp: tmp,
        };
        // A port picked as free may be taken by another process before haproxy binds it.
        for attempt in 1..=3 {
            haproxy.frontends = routes
                .iter()
                .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
                .collect();
            std::fs::write(haproxy.config_path(), haproxy.config(routes))
                .expect("write haproxy.cfg");
            match haproxy.spawn() {
                Ok(()) => return haproxy,
                Err(log) if attempt < 3 && log.contains("cannot bind") => continue,
                Err(log) => panic!("haproxy failed to start\n{log}"),
            }
        }
        unreachable!()
    }

    fn config(&self, routes: &[Route]) -> String {
        let mut text = String::from(
            "global\n\
             \x20   log stderr format short local0 info\n\
             \x20   maxconn 200\n\
             \n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   log global\n\
             \x20   option tcplog\n\
             \x20   timeout connect 5s\n\
             \x20   timeout client 120s\n\
             \x20   timeout server 120s\n",
        );
        for (i, (route, frontend)) in routes.iter().zip(&self.frontends).enumerate() {
            let send = match route.version {
                ProxyVersion::V1 => "send-proxy",
                ProxyVersion::V2 => "send-proxy-v2",
            };
            text.push_str(&format!(
                "\nlisten route{i}\n    bind {frontend}\n    balance roundrobin\n"
            ));
            for (n, to) in route.to.iter().enumerate() {
                text.push_str(&format!("    server postern{n} {to} {send}\n"));
            }
        }
        text
    }

    /// Runs `haproxy -db -f haproxy.cfg` (foreground, no daemon) and polls every frontend.
    /// Err(log) when haproxy exited first.
    fn spawn(&mut self) -> Result<(), String> {
        let log = File::create(self.log_path()).expect("create haproxy.log");
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(self.config_path())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup haproxy.log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {HAPROXY}: {e} (is haproxy installed?)"));
        register_live(child.id(), Stop::Signal(SIGTERM), &self.dir);
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let mut pending: Vec<u16> = self.frontends.iter().map(|a| a.port()).collect();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().ok().flatten() {
                let pid = self.child.take().unwrap().id();
                unregister_live(pid);
                return Err(format!(
                    "haproxy exited ({status}) during startup\n{}",
                    self.log()
                ));
            }
            pending.retain(|&port| !port_open(port));
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.log();
                self.stop();
                panic!(
                    "haproxy not ready within {STARTUP_DEADLINE:?} (frontends not accepting \
                     connections: {pending:?})\n{log}"
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("haproxy.log")
    }

    /// The config and everything haproxy printed (warnings, one line per connection).
    pub fn log(&self) -> String {
        format!(
            "--- haproxy.cfg ---\n{}\n--- haproxy log ---\n{}",
            read_lossy(&self.config_path()),
            read_lossy(&self.log_path())
        )
    }

    /// Stops haproxy (SIGTERM: immediate stop) and waits until its frontends refuse
    /// connections. Idempotent; also done on Drop.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        stop_child(&mut child, Stop::Signal(SIGTERM));
        for frontend in &self.frontends {
            wait_for_port_closed(frontend.port(), "haproxy", || self.log());
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(mut child) = self.child.take() {
                stop_child(&mut child, Stop::Signal(SIGTERM));
            }
        } else {
            self.stop();
        }
    }
}

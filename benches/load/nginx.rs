//! nginx's mail proxy (Debian's nginx-core with libnginx-mod-mail), the benchmark's other
//! gateway: IMAP and POP3 over implicit TLS in front of the same Dovecot, as sites put it
//! in front of their mail servers. Its `auth_http` is a small server here that answers
//! "OK, go to Dovecot" at once, as postern's verification cache does for a cached login;
//! nginx then logs in upstream with the client's own name and password, in plaintext
//! (its mail proxy speaks no TLS upstream). Started in the foreground from a generated
//! config in a temp dir, one worker process per core, stopped on Drop.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    free_port, is_root, port_open, read_lossy, register_live, stop_child, unregister_live, Stop,
    SIGTERM, STARTUP_DEADLINE,
};

const NGINX: &str = "/usr/sbin/nginx";
const MAIL_MODULE: &str = "/usr/lib/nginx/modules/ngx_mail_module.so";

/// Threads answering nginx's auth requests (one short HTTP/1.0 connection per login).
const AUTH_THREADS: usize = 4;

/// A running nginx mail proxy.
pub struct Nginx {
    pub imaps: SocketAddr,
    pub pop3s: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl Nginx {
    /// Whether nginx and its mail module are installed (`apt-get install nginx-core
    /// libnginx-mod-mail`).
    pub fn installed() -> bool {
        Path::new(NGINX).exists() && Path::new(MAIL_MODULE).exists()
    }

    /// Starts nginx with `workers` worker processes, serving `cert`/`key` on an IMAPS and
    /// a POP3S port and proxying to Dovecot's plaintext `imap` and `pop3` ports.
    pub fn start(
        cert: &Path,
        key: &Path,
        imap: SocketAddr,
        pop3: SocketAddr,
        workers: usize,
    ) -> Nginx {
        let tmp = tempfile::Builder::new()
            .prefix("postern-bench-nginx-")
            .tempdir()
            .expect("temp dir for nginx");
        let auth = start_auth(imap, pop3);
        let mut nginx = Nginx {
            imaps: SocketAddr::from(([127, 0, 0, 1], free_port())),
            pop3s: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir: tmp.path().to_path_buf(),
            child: None,
            _tmp: tmp,
        };
        let config = nginx.config(cert, key, auth, workers);
        std::fs::write(nginx.config_path(), config).expect("write nginx.conf");
        nginx.spawn();
        nginx
    }

    fn config(&self, cert: &Path, key: &Path, auth: SocketAddr, workers: usize) -> String {
        let dir = self.dir.display();
        // As root, nginx's workers would switch to "nobody"; they need nothing from the
        // temp dir, but staying root keeps the run free of permission surprises.
        let user = if is_root() { "user root;\n" } else { "" };
        format!(
            "load_module {MAIL_MODULE};\n\
             {user}worker_processes {workers};\n\
             pid {dir}/nginx.pid;\n\
             error_log {dir}/error.log warn;\n\
             events {{ worker_connections 30000; }}\n\
             mail {{\n\
             \x20   server_name localhost;\n\
             \x20   auth_http {auth}/auth;\n\
             \x20   proxy_pass_error_message on;\n\
             \x20   ssl_certificate {cert};\n\
             \x20   ssl_certificate_key {key};\n\
             \x20   ssl_protocols TLSv1.2 TLSv1.3;\n\
             \x20   ssl_session_cache shared:MAIL:10m;\n\
             \x20   server {{ listen {imaps} ssl; protocol imap; imap_auth login plain; }}\n\
             \x20   server {{ listen {pop3s} ssl; protocol pop3; pop3_auth plain; }}\n\
             }}\n",
            cert = cert.display(),
            key = key.display(),
            imaps = self.imaps,
            pop3s = self.pop3s,
        )
    }

    /// Runs `nginx -g "daemon off;"` and polls both listeners.
    fn spawn(&mut self) {
        let log = File::create(self.dir.join("stderr.log")).expect("create nginx stderr.log");
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(&self.dir)
            .arg("-e")
            .arg(self.dir.join("error.log"))
            .arg("-c")
            .arg(self.config_path())
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup nginx stderr.log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {NGINX}: {e}"));
        register_live(child.id(), Stop::Signal(SIGTERM), &self.dir);
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let mut pending = vec![self.imaps.port(), self.pop3s.port()];
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().ok().flatten() {
                let pid = self.child.take().unwrap().id();
                unregister_live(pid);
                panic!("nginx exited ({status}) during startup\n{}", self.log());
            }
            pending.retain(|&port| !port_open(port));
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx not ready within {STARTUP_DEADLINE:?} (ports {pending:?})\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("nginx.conf")
    }

    /// The config and nginx's error log.
    pub fn log(&self) -> String {
        format!(
            "--- nginx.conf ---\n{}\n--- error.log ---\n{}\n--- stderr ---\n{}",
            read_lossy(&self.config_path()),
            read_lossy(&self.dir.join("error.log")),
            read_lossy(&self.dir.join("stderr.log"))
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Stop::Signal(SIGTERM));
        }
    }
}

/// The `auth_http` server: every login is let in and sent to Dovecot's port for its
/// protocol. Runs on threads of its own for the rest of the process.
fn start_auth(imap: SocketAddr, pop3: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the auth_http server");
    let address = listener.local_addr().expect("auth_http address");
    for _ in 0..AUTH_THREADS {
        let listener = listener.try_clone().expect("clone the auth_http listener");
        std::thread::spawn(move || {
            for connection in listener.incoming().flatten() {
                let _ = answer(connection, imap, pop3);
            }
        });
    }
    address
}

/// Reads one request's headers and answers it.
fn answer(mut connection: TcpStream, imap: SocketAddr, pop3: SocketAddr) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = connection.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let upstream = if text.to_ascii_lowercase().contains("auth-protocol: pop3") {
        pop3
    } else {
        imap
    };
    let reply = format!(
        "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: {}\r\nAuth-Port: {}\r\n\r\n",
        upstream.ip(),
        upstream.port()
    );
    connection.write_all(reply.as_bytes())
}

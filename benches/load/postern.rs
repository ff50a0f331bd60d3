//! The real `postern` binary (the release build under `cargo bench`) as a separate
//! process in front of a test Dovecot, so its RSS and CPU are its own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::dovecot::TlsFiles;
use crate::support::{self, free_port, Dovecot, TestCa};

/// How postern is configured.
pub struct Settings {
    /// An implicit-TLS IMAP listener (`imaps`).
    pub imaps: bool,
    /// An implicit-TLS SMTP submission listener (`smtps`).
    pub smtps: bool,
    /// An implicit-TLS POP3 listener (`pop3s`).
    pub pop3s: bool,
    /// The self-service portal, signing in with the upstream IMAP password and no second
    /// factor (`require_mfa = false`).
    pub portal: bool,
    /// The listeners' certificate; `None`: a fresh leaf from a test CA in postern's dir.
    pub tls: Option<TlsFiles>,
    /// `max_connections` of every listener.
    pub max_connections: usize,
    /// More TOML appended to the config: whole tables other than `[store]`, `[tls]`,
    /// `[[listener]]`, `[upstream.*]` and `[http]` (e.g. `[smtp]`, `[auth]`,
    /// `[network]`, `[limits]`).
    pub extra: String,
    /// `POSTERN_LOG` for the server (`None`: postern's default, info).
    pub log_filter: Option<String>,
    /// How postern logs in upstream: `sasl-plain-authzid` with the master user (the
    /// default), or a token mode (`xoauth2`) with `upstream_extra` naming the provider.
    pub upstream_auth: &'static str,
    /// More lines for every `[upstream.*]` table.
    pub upstream_extra: String,
    /// The store (`None`: SQLite in the temp dir).
    pub store_url: Option<String>,
    /// The listeners expect a PROXY header (`extra` then names `proxy_sources`).
    pub proxy_protocol: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            imaps: true,
            smtps: true,
            pop3s: false,
            portal: false,
            tls: None,
            max_connections: 10_000,
            extra: String::new(),
            log_filter: None,
            upstream_auth: "sasl-plain-authzid",
            upstream_extra: String::new(),
            store_url: None,
            proxy_protocol: false,
        }
    }
}

pub struct PosternProcess {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub store_url: String,
    pub imaps: Option<SocketAddr>,
    pub smtps: Option<SocketAddr>,
    pub pop3s: Option<SocketAddr>,
    /// The portal's base URL (`https://localhost:port`).
    pub portal: Option<String>,
    pub http: SocketAddr,
    /// The CA that issued the listeners' certificate.
    pub ca_path: PathBuf,
}

impl PosternProcess {
    /// Writes the config (upstreams: `dovecot`'s imaps, submissions and pop3s ports, implicit
    /// TLS, SASL PLAIN with the master user), starts `postern serve` and waits until
    /// /healthz answers and the listeners accept connections. The store (SQLite in the
    /// temp dir) is created and migrated by postern itself.
    pub fn start(dovecot: &Dovecot, settings: Settings) -> PosternProcess {
        let dir = tempfile::Builder::new()
            .prefix("postern-bench-")
            .tempdir()
            .expect("temp dir");
        let (ca_path, cert, key) = match &settings.tls {
            Some(tls) => (tls.ca.clone(), tls.cert.clone(), tls.key.clone()),
            None => {
                let ca = TestCa::new(dir.path());
                let (cert, key) = ca.issue(dir.path(), "postern", &["localhost", "127.0.0.1"]);
                (ca.ca_path.clone(), cert, key)
            }
        };
        let master_password_file = dir.path().join("master-password");
        std::fs::write(
            &master_password_file,
            format!("{}\n", dovecot.master_password),
        )
        .unwrap();
        let http_port = free_port();
        let store_url = settings
            .store_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("postern.db").display()));
        let mut text = format!(
            r#"
[store]
url = "{store_url}"

[tls]
cert = "{cert}"
key = "{key}"
"#,
            cert = cert.display(),
            key = key.display(),
        );
        let mut ports = Vec::new();
        let mut listener = |name: &str, protocol: &str| -> SocketAddr {
            let port = free_port();
            ports.push(port);
            text.push_str(&format!(
                r#"
[[listener]]
name = "{name}"
protocol = "{protocol}"
bind = "127.0.0.1:{port}"
tls = "implicit"
max_connections = {max}
proxy_protocol = {proxy}
"#,
                max = settings.max_connections,
                proxy = settings.proxy_protocol,
            ));
            SocketAddr::from(([127, 0, 0, 1], port))
        };
        let imaps = settings.imaps.then(|| listener("imaps", "imap"));
        let smtps = settings.smtps.then(|| listener("smtps", "smtp"));
        let pop3s = settings.pop3s.then(|| listener("pop3s", "pop3"));
        for (section, port) in [
            ("imap", dovecot.imaps_port),
            ("smtp", dovecot.submissions_port),
            ("pop3", dovecot.pop3s_port),
        ] {
            let credentials = if settings.upstream_auth == "sasl-plain-authzid" {
                format!(
                    "master_user = \"{}\"\nmaster_password_file = \"{}\"\n",
                    dovecot.master_user,
                    master_password_file.display()
                )
            } else {
                String::new()
            };
            text.push_str(&format!(
                r#"
[upstream.{section}]
address = "127.0.0.1:{port}"
tls = "implicit"
server_name = "localhost"
ca_file = "{ca_file}"
auth = "{auth}"
{credentials}{extra}
"#,
                ca_file = dovecot.ca_path.display(),
                auth = settings.upstream_auth,
                extra = settings.upstream_extra,
            ));
        }
        let portal = settings.portal.then(|| {
            let port = free_port();
            ports.push(port);
            let url = format!("https://localhost:{port}");
            text.push_str(&format!(
                "\n[portal]\nbind = \"127.0.0.1:{port}\"\npublic_url = \"{url}\"\nrequire_mfa = false\n"
            ));
            url
        });
        text.push_str(&format!(
            "\n[http]\nbind = \"127.0.0.1:{http_port}\"\n\n{}\n",
            settings.extra
        ));
        let config_path = dir.path().join("postern.toml");
        std::fs::write(&config_path, text).unwrap();
        run_cli(&config_path, &["check-config"]);

        let log = std::fs::File::create(dir.path().join("postern.log")).unwrap();
        // BENCH_POSTERN_WRAPPER runs postern under a profiler, e.g. "heaptrack -o
        // /tmp/postern": the numbers measured on the process are then the wrapper's.
        let wrapper = std::env::var("BENCH_POSTERN_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(env!("CARGO_BIN_EXE_postern"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_postern")),
        };
        command
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(filter) = &settings.log_filter {
            command.env("POSTERN_LOG", filter);
        }
        let child = command.spawn().expect("run postern serve");
        let mut postern = PosternProcess {
            child,
            dir,
            config_path,
            store_url,
            imaps,
            smtps,
            pop3s,
            portal,
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            ca_path,
        };
        let deadline = Instant::now() + support::STARTUP_DEADLINE;
        loop {
            if let Ok(Some(status)) = postern.child.try_wait() {
                panic!("postern exited ({status}) at startup\n{}", postern.log());
            }
            if healthz(http_port) && ports.iter().all(|&p| support::port_open(p)) {
                break;
            }
            if Instant::now() > deadline {
                panic!("postern not healthy in time\n{}", postern.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        postern
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// postern's log so far, headed by its config path.
    pub fn log(&self) -> String {
        format!(
            "--- postern log ({}) ---\n{}",
            self.config_path.display(),
            support::read_lossy(&self.dir.path().join("postern.log"))
        )
    }

    /// Runs `postern --config <config> args...` (the CLI on the same store); panics
    /// unless it succeeds; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        run_cli(&self.config_path, args)
    }

    /// GET /metrics (blocking).
    pub fn metrics(&self) -> String {
        http_get(self.http, "/metrics").unwrap_or_default()
    }

    /// SIGTERM, then wait up to 10 s; kill after that.
    pub fn stop(mut self) {
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

fn run_cli(config: &Path, args: &[&str]) -> String {
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

/// GET `path` over HTTP/1.1; the body of a 200 answer.
pub fn http_get(address: SocketAddr, path: &str) -> Option<String> {
    let mut tcp = TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut reply = String::new();
    let _ = tcp.read_to_string(&mut reply);
    if !reply.starts_with("HTTP/1.1 200") {
        return None;
    }
    let body = reply.split_once("\r\n\r\n")?.1;
    Some(body.to_string())
}

fn healthz(port: u16) -> bool {
    http_get(SocketAddr::from(([127, 0, 0, 1], port)), "/healthz").is_some()
}

/// The value of a Prometheus series (`name{labels}` exactly as exposed, or a bare
/// name), summed over every line that starts with it; 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(series)?;
            // `series` must end at a label set or the value.
            if !(rest.starts_with(' ') || rest.starts_with('{') || series.ends_with('}')) {
                return None;
            }
            line.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

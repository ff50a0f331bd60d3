//! postern itself, in-process: the real server on ephemeral loopback ports in front of a
//! test Dovecot, with its config file written out so the real CLI binary can administer
//! the same store from another process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use postern::accounts::{Accounts, IssueRequest};
use postern::clock::now;
use postern::config::{Config, ListenerConfig};
use postern::gateway::{self, Gateway};
use postern::server;
use postern::store::{NewUser, Scope, Store};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Dovecot, TestCa};

/// Everything postern logged in this test process: its own events at trace level.
static CAPTURED: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// Credentials used in this process: none may ever appear in [`CAPTURED`].
static SECRETS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Wrong passwords the tests type; they are credentials too.
const WRONG_PASSWORDS: &[&str] = &[
    "aaaa bbbb cccc dddd",
    "eeee ffff gggg hhhh",
    "wxyz wxyz wxyz wxyz",
];

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends postern's logs (trace level) and everyone else's (info) to [`CAPTURED`].
fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,postern=trace"))
            .with_ansi(false)
            .with_writer(|| Capture)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        remember_secrets(WRONG_PASSWORDS.iter().map(|s| s.to_string()));
    });
}

/// Adds credentials that must never be logged, in every form a client may type them.
pub fn remember_secrets(secrets: impl IntoIterator<Item = String>) {
    let mut known = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    for secret in secrets {
        let compact = secret.replace(' ', "");
        known.push(compact.to_uppercase());
        known.push(compact);
        known.push(secret);
    }
}

/// The lines logged so far that contain `needle`, for a failing test's message.
pub fn logged_lines(needle: &str) -> Vec<String> {
    let log = CAPTURED.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Panics if any remembered credential appears in anything logged so far.
pub fn assert_no_secret_logged() {
    let log = CAPTURED.lock().unwrap_or_else(|p| p.into_inner());
    let log = String::from_utf8_lossy(&log);
    for secret in SECRETS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        assert!(
            !log.contains(secret.as_str()),
            "a credential reached the log"
        );
    }
}

/// How postern is set up for a test.
pub struct Options {
    /// `None`: a SQLite file in the temp dir.
    pub store_url: Option<String>,
    /// `sasl-plain-authzid` or `master-login`.
    pub upstream_auth: &'static str,
    /// `implicit` (Dovecot's imaps port) or `starttls` (its imap port).
    pub upstream_tls: &'static str,
    /// Overrides the upstream port (e.g. one where nothing listens).
    pub upstream_port: Option<u16>,
    /// Overrides the master password postern sends.
    pub master_password: Option<String>,
    /// `[network] trusted_networks`: loopback by default, so tests that fail logins on
    /// purpose are not slowed by penalties; `[]` to test the penalties.
    pub trusted_networks: &'static str,
    /// `[network] proxy_sources`.
    pub proxy_sources: &'static str,
    /// `max_connections` of every listener.
    pub max_connections: usize,
    /// More lines for both `[upstream.*]` tables.
    pub upstream_extra: String,
    /// Ports for the imaps, imap, smtps and submission listeners (`scripts/demo`); `None`:
    /// ephemeral ones.
    pub listener_ports: Option<[u16; 4]>,
    /// `[auth] change_poll_interval`: how soon revocations made elsewhere reach sessions.
    pub change_poll_interval: &'static str,
    /// More lines for the `[auth]` table.
    pub auth_extra: &'static str,
    /// More lines for the `[network]` table.
    pub network_extra: &'static str,
    /// Extra TOML appended to the config (must not repeat a table written here:
    /// `[store]`, `[tls]`, `[upstream.*]`, `[http]`, `[auth]`, `[network]`).
    pub extra_config: String,
    /// `proxy_protocol` on all four listeners (they then expect a PROXY header first).
    pub proxy_protocol: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            store_url: None,
            upstream_auth: "sasl-plain-authzid",
            upstream_tls: "implicit",
            upstream_port: None,
            master_password: None,
            trusted_networks: r#"["127.0.0.0/8", "::1/128"]"#,
            proxy_sources: r#"["127.0.0.0/8", "::1/128"]"#,
            max_connections: 10_000,
            upstream_extra: String::new(),
            listener_ports: None,
            change_poll_interval: "100ms",
            auth_extra: "",
            network_extra: "",
            extra_config: String::new(),
            proxy_protocol: false,
        }
    }
}

/// A running postern.
pub struct Postern {
    /// Implicit-TLS IMAP listener.
    pub imaps: SocketAddr,
    /// STARTTLS IMAP listener.
    pub imap: SocketAddr,
    /// Implicit-TLS SMTP submission listener (465-style).
    pub smtps: SocketAddr,
    /// STARTTLS SMTP submission listener (587-style).
    pub submission: SocketAddr,
    /// Implicit-TLS POP3 listener (995-style).
    pub pop3s: SocketAddr,
    /// STLS POP3 listener (110-style).
    pub pop3: SocketAddr,
    /// /metrics, /healthz, /readyz.
    pub http: SocketAddr,
    /// The portal, when the config has `[portal]` (`Options::extra_config`).
    pub portal: Option<SocketAddr>,
    /// The CA that issued postern's certificate (for "localhost").
    pub ca_path: PathBuf,
    pub config_path: PathBuf,
    pub config: Config,
    pub store: Store,
    pub gateway: Arc<Gateway>,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Postern {
    /// postern with a SQLite store in front of `dovecot`'s imaps port.
    pub async fn start(dovecot: &Dovecot) -> Postern {
        Self::start_with(dovecot, Options::default()).await
    }

    pub async fn start_with(dovecot: &Dovecot, options: Options) -> Postern {
        capture_logs();
        let Prepared { dir, text, ca_path } = prepare(dovecot, &options, 0);
        let config_path = dir.path().join("postern.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let config = Config::parse(&text).expect("test config parses");
        config.validate().expect("test config is valid");

        let store = Store::open(&config.store.url).await.expect("open store");
        store.migrate().await.expect("migrate store");
        let gateway = Gateway::new(&config, store.clone())
            .await
            .expect("gateway starts");
        let mut listeners: Vec<(ListenerConfig, TcpListener)> = Vec::new();
        for listener in &config.listeners {
            let socket = TcpListener::bind(listener.bind).await.expect("bind");
            listeners.push((listener.clone(), socket));
        }
        let imaps = listeners[0].1.local_addr().unwrap();
        let imap = listeners[1].1.local_addr().unwrap();
        let smtps = listeners[2].1.local_addr().unwrap();
        let submission = listeners[3].1.local_addr().unwrap();
        let pop3s = listeners[4].1.local_addr().unwrap();
        let pop3 = listeners[5].1.local_addr().unwrap();
        let http_socket = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let http = http_socket.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let portal = match &config.portal {
            Some(portal) => {
                let socket = TcpListener::bind(portal.bind).await.expect("bind portal");
                Some((portal.clone(), socket))
            }
            None => None,
        };
        let portal_address = portal.as_ref().map(|(_, s)| s.local_addr().unwrap());
        let bound = server::Bound {
            listeners,
            http: Some(http_socket),
            portal,
            directory: config.directory.clone(),
            scim: config.scim.clone(),
            acme: server::bind_acme(&config)
                .await
                .expect("bind the ACME responder"),
        };
        let task = tokio::spawn(server::run(gateway.clone(), bound, async {
            let _ = stopped.await;
        }));
        Postern {
            imaps,
            imap,
            smtps,
            submission,
            pop3s,
            pop3,
            http,
            portal: portal_address,
            ca_path,
            config_path,
            config,
            store,
            gateway,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Adds a user whose upstream account is `upstream_user`.
    pub async fn add_user(&self, login: &str, upstream_user: &str) {
        let addresses = vec![format!("{upstream_user}@example.test")];
        self.store
            .add_user(
                &NewUser {
                    login,
                    upstream_user,
                    addresses: &addresses,
                },
                now(),
            )
            .await
            .expect("add user");
    }

    /// Issues an app password; returns its id and display form.
    pub async fn issue(
        &self,
        login: &str,
        scopes: &[Scope],
        expires_at: Option<i64>,
    ) -> (i64, String) {
        let hasher = gateway::password_hasher(&self.config).expect("hasher");
        let accounts = Accounts::new(self.store.clone(), hasher, 40)
            .await
            .expect("accounts");
        let issued = accounts
            .issue_app_password(IssueRequest {
                login,
                name: "test device",
                scopes,
                expires_at,
                actor: postern::accounts::Actor::Cli,
            })
            .await
            .expect("issue app password");
        remember_secrets([issued.password.expose().clone()]);
        (issued.app_password.id, issued.password.expose().clone())
    }

    /// Runs the real `postern` binary against this instance's config and store.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.config_path, args)
    }

    /// GETs `path` from the HTTP endpoint; returns the whole response.
    pub async fn http_get(&self, path: &str) -> String {
        http_get(self.http, path).await
    }

    /// The Prometheus text exposition, as /metrics serves it.
    pub fn metrics(&self) -> String {
        self.gateway.metrics.render()
    }

    /// Stops the server and waits for every session to end; then checks that no
    /// credential this process used reached postern's logs.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
        assert_no_secret_logged();
    }
}

/// A config written for a test, with its CA.
struct Prepared {
    dir: tempfile::TempDir,
    text: String,
    ca_path: PathBuf,
}

/// Writes the certificate, the master password and the config text for `options`, with the
/// HTTP endpoint on `http_port` (0: any).
fn prepare(dovecot: &Dovecot, options: &Options, http_port: u16) -> Prepared {
    let dir = tempfile::Builder::new()
        .prefix("postern-gateway-")
        .tempdir()
        .expect("temp dir for postern");
    let ca = TestCa::new(dir.path());
    let (cert, key) = ca.issue(dir.path(), "postern", &["localhost", "127.0.0.1"]);
    let master_password_file = dir.path().join("master-password");
    let master_password = options
        .master_password
        .clone()
        .unwrap_or_else(|| dovecot.master_password.clone());
    std::fs::write(&master_password_file, format!("{master_password}\n"))
        .expect("write master password");
    remember_secrets([master_password.clone()]);
    let store_url = options
        .store_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("postern.db").display()));
    // Each protocol's upstream: Dovecot's implicit-TLS or STARTTLS port, with the same
    // login settings.
    let upstreams: String = [
        ("smtp", dovecot.submissions_port, dovecot.submission_port),
        ("imap", dovecot.imaps_port, dovecot.imap_port),
        ("pop3", dovecot.pop3s_port, dovecot.pop3_port),
    ]
    .iter()
    .map(|(protocol, implicit, starttls)| {
        let port = options.upstream_port.unwrap_or(match options.upstream_tls {
            "implicit" => *implicit,
            _ => *starttls,
        });
        format!(
            "[upstream.{protocol}]\naddress = \"127.0.0.1:{port}\"\ntls = \"{}\"\n\
             server_name = \"localhost\"\nca_file = \"{}\"\nauth = \"{}\"\n\
             master_user = \"{}\"\nmaster_password_file = \"{}\"\n{}\n\n",
            options.upstream_tls,
            dovecot.ca_path.display(),
            options.upstream_auth,
            dovecot.master_user,
            master_password_file.display(),
            options.upstream_extra,
        )
    })
    .collect();
    let ports = options.listener_ports.unwrap_or([0; 4]);
    // The order is the one `Postern` reads the bound sockets back in.
    let listeners: String = [
        ("imaps", "imap", ports[0], "implicit"),
        ("imap", "imap", ports[1], "starttls"),
        ("smtps", "smtp", ports[2], "implicit"),
        ("submission", "smtp", ports[3], "starttls"),
        ("pop3s", "pop3", 0, "implicit"),
        ("pop3", "pop3", 0, "starttls"),
    ]
    .iter()
    .map(|(name, protocol, port, tls)| {
        format!(
            "[[listener]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\n\
             bind = \"127.0.0.1:{port}\"\ntls = \"{tls}\"\nproxy_protocol = {}\n\
             max_connections = {}\n\n",
            options.proxy_protocol, options.max_connections
        )
    })
    .collect();
    let text = format!(
        r#"
[store]
url = "{store_url}"

[tls]
cert = "{cert}"
key = "{key}"

{listeners}
{upstreams}
[http]
bind = "127.0.0.1:{http_port}"

[auth]
change_poll_interval = "{change_poll_interval}"
{auth_extra}

[network]
trusted_networks = {trusted_networks}
proxy_sources = {proxy_sources}
{network_extra}

{extra}
"#,
        cert = cert.display(),
        key = key.display(),
        trusted_networks = options.trusted_networks,
        proxy_sources = options.proxy_sources,
        change_poll_interval = options.change_poll_interval,
        auth_extra = options.auth_extra,
        network_extra = options.network_extra,
        extra = options.extra_config,
    );
    Prepared {
        dir,
        text,
        ca_path: ca.ca_path.clone(),
    }
}

/// Runs the `postern` binary with `--config path`.
pub fn cli(config_path: &Path, args: &[&str]) -> Output {
    // Cargo names the binary for tests and benches; an example (scripts/demo) prints the
    // release binary's path instead of running it.
    let binary = option_env!("CARGO_BIN_EXE_postern").unwrap_or("target/release/postern");
    Command::new(binary)
        .arg("--config")
        .arg(config_path)
        .args(args)
        .output()
        .expect("run the postern binary")
}

/// The value of a metric line (`name{labels} value`), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// GETs `path` from an HTTP endpoint at `address`; returns the whole response.
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect http");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    tcp.read_to_string(&mut response)
        .await
        .expect("read response");
    response
}

/// postern as its own process (`postern serve`), for tests of several instances that
/// must not share anything but the store: its memory, its tasks, its listeners.
pub struct PosternProcess {
    pub imaps: SocketAddr,
    pub smtps: SocketAddr,
    pub http: SocketAddr,
    /// The CA that issued this instance's certificate.
    pub ca_path: PathBuf,
    pub config_path: PathBuf,
    child: Option<std::process::Child>,
    log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl PosternProcess {
    /// Runs `postern serve` on free loopback ports and waits for `/readyz`; panics with
    /// the log when it does not come up. Migrate the store first.
    pub async fn start(dovecot: &Dovecot, mut options: Options) -> PosternProcess {
        let ports = [(); 4].map(|_| super::free_port());
        options.listener_ports = Some(ports);
        let http_port = super::free_port();
        let Prepared { dir, text, ca_path } = prepare(dovecot, &options, http_port);
        let config_path = dir.path().join("postern.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let log_path = dir.path().join("postern.log");
        let binary = option_env!("CARGO_BIN_EXE_postern").unwrap_or("target/release/postern");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .env("POSTERN_LOG", "info,postern=debug")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path).expect("create postern.log"))
            .spawn()
            .expect("run postern serve");
        super::register_live(child.id(), super::Stop::Signal(super::SIGTERM), dir.path());
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let mut process = PosternProcess {
            imaps: at(ports[0]),
            smtps: at(ports[2]),
            http: at(http_port),
            ca_path,
            config_path,
            child: Some(child),
            log_path,
            dir,
        };
        let deadline = std::time::Instant::now() + super::STARTUP_DEADLINE;
        loop {
            if super::port_open(http_port)
                && http_get(process.http, "/readyz")
                    .await
                    .starts_with("HTTP/1.1 200")
            {
                return process;
            }
            let exited = process
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || std::time::Instant::now() > deadline {
                panic!(
                    "postern serve did not come up ({exited:?})\n{}",
                    process.log()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The Prometheus text exposition.
    pub async fn metrics(&self) -> String {
        http_get(self.http, "/metrics").await
    }

    /// Runs the real `postern` binary against this instance's config and store.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.config_path, args)
    }

    /// Everything this process logged.
    pub fn log(&self) -> String {
        super::read_lossy(&self.log_path)
    }

    /// SIGTERM, a clean exit; then checks that no remembered credential reached the log.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let clean = super::stop_child(&mut child, super::Stop::Signal(super::SIGTERM));
        let log = self.log();
        assert!(clean, "postern did not exit on SIGTERM\n{log}");
        for secret in SECRETS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            assert!(
                !log.contains(secret.as_str()),
                "a credential reached the log"
            );
        }
    }
}

impl Drop for PosternProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::stop_child(&mut child, super::Stop::Signal(super::SIGTERM));
        }
    }
}

//! The `postern` command line as admins use it: the real binary, a SQLite store in a temp
//! dir, and the output formats other tools rely on.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::imap_client::ImapClient;

/// A working directory holding a copy of the example config and a master password file,
/// so relative paths resolve as they do in a fresh checkout.
struct Workdir {
    dir: tempfile::TempDir,
}

impl Workdir {
    fn new() -> Workdir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        let example = std::fs::read_to_string(repo().join("config/postern.toml")).unwrap();
        std::fs::write(dir.path().join("config/postern.toml"), example).unwrap();
        std::fs::write(dir.path().join("config/master-password"), "secret\n").unwrap();
        Workdir { dir }
    }

    /// Replaces one setting of the copied example config.
    fn edit(&self, from: &str, to: &str) {
        let path = self.path().join("config/postern.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "the example config has no {from:?}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(args)
            .current_dir(self.path())
            .env_remove("POSTERN_CONFIG")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "postern {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs a command that must be refused: exit 1 and one sentence on stderr.
    fn refused(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "postern {args:?} should be refused"
        );
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "one sentence: {stderr}"
        );
        stderr
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_config_accepts_the_example_and_lists_every_problem() {
    let work = Workdir::new();
    assert_eq!(work.ok(&["check-config"]), "ok\n");

    std::fs::remove_file(work.path().join("config/master-password")).unwrap();
    let output = work.run(&["check-config"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("master-password does not exist"));

    let broken = Workdir::new();
    broken.edit(
        "authenticated_idle_timeout = \"35m\"",
        "authenticated_idle_timeout = \"5m\"",
    );
    broken.edit("max_line = 8192", "max_line = 10");
    let output = broken.run(&["check-config"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("authenticated_idle_timeout") && stderr.contains("max_line"),
        "{stderr}"
    );

    let output = work.run(&["--config", "config/nope.toml", "check-config"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("config/nope.toml"));
}

#[test]
fn usage_errors_exit_with_2() {
    let work = Workdir::new();
    assert_eq!(work.run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        work.run(&["app-password", "create", "x"]).status.code(),
        Some(2)
    );
    assert_eq!(
        work.run(&[
            "app-password",
            "create",
            "x",
            "--name",
            "n",
            "--scopes",
            "jmap"
        ])
        .status
        .code(),
        Some(2)
    );
}

#[test]
fn users_are_added_listed_disabled_and_removed() {
    let work = Workdir::new();
    work.ok(&[
        "user",
        "add",
        "Alice@Example.COM",
        "--upstream-user",
        "alice",
    ]);
    work.refused(&["user", "add", "alice@example.com"]);
    let users = work.json(&["user", "list", "--json"]);
    assert_eq!(users[0]["login"], "alice@example.com");
    assert_eq!(users[0]["upstream_user"], "alice");
    assert_eq!(users[0]["addresses"][0], "alice@example.com");

    work.ok(&["user", "disable", "alice@example.com"]);
    let shown = work.json(&["user", "show", "alice@example.com", "--json"]);
    assert!(shown["disabled_at"].is_i64());
    work.ok(&["user", "enable", "alice@example.com"]);
    let shown = work.json(&["user", "show", "alice@example.com", "--json"]);
    assert!(shown["disabled_at"].is_null());

    work.ok(&["user", "remove", "alice@example.com"]);
    let error = work.refused(&["user", "show", "alice@example.com"]);
    assert!(error.contains("no such user"), "{error}");
    assert_eq!(
        work.json(&["user", "list", "--json"]),
        serde_json::json!([])
    );
}

#[test]
fn app_passwords_are_shown_once_listed_without_secrets_and_revoked() {
    let work = Workdir::new();
    work.ok(&["user", "add", "bob@example.com"]);
    let created = work.json(&[
        "app-password",
        "create",
        "bob@example.com",
        "--name",
        "iPhone",
        "--scopes",
        "imap",
        "--expires-in",
        "30d",
        "--json",
    ]);
    let password = created["password"].as_str().unwrap();
    assert_eq!(password.len(), 19, "{password}");
    assert!(password
        .split(' ')
        .all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_lowercase())));
    assert_eq!(created["login"], "bob@example.com");
    assert_eq!(created["name"], "iPhone");
    assert_eq!(created["scopes"], serde_json::json!(["imap"]));
    let id = created["id"].as_i64().unwrap();

    let text = work.ok(&[
        "app-password",
        "create",
        "bob@example.com",
        "--name",
        "Outlook",
    ]);
    assert!(text.contains("shown only this once"), "{text}");

    let listed = work.ok(&["app-password", "list", "bob@example.com", "--json"]);
    assert!(!listed.contains(password) && !listed.contains("argon2") && !listed.contains("hash"));
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let first = &listed[0];
    for key in [
        "id",
        "name",
        "scopes",
        "created_at",
        "last_used_at",
        "last_used_ip",
        "last_used_client",
        "expires_at",
        "revoked_at",
    ] {
        assert!(first.get(key).is_some(), "{key} missing from {first}");
    }
    assert!(first["expires_at"].is_string() && first["revoked_at"].is_null());

    work.ok(&["app-password", "revoke", &id.to_string()]);
    let listed = work.json(&["app-password", "list", "bob@example.com", "--json"]);
    assert!(listed[0]["revoked_at"].is_string());
    assert!(listed[1]["revoked_at"].is_null());
    let all = work.ok(&["app-password", "revoke", "--all", "bob@example.com"]);
    assert!(all.contains("revoked 1 app passwords"), "{all}");
    work.refused(&["app-password", "revoke", "999"]);
    work.refused(&["app-password", "list", "nobody@example.com"]);

    let audit = work.json(&["audit", "--user", "bob@example.com", "--json"]);
    let kinds: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "app_password_revoked",
            "app_password_revoked",
            "app_password_created",
            "app_password_created",
            "user_added"
        ]
    );
    assert!(!work.ok(&["audit"]).is_empty());
}

#[test]
fn the_live_app_password_limit_is_enforced() {
    let work = Workdir::new();
    let config = work.path().join("config/postern.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_app_passwords = 40", "max_app_passwords = 2");
    std::fs::write(&config, text).unwrap();
    work.ok(&["user", "add", "carol@example.com"]);
    for name in ["one", "two"] {
        work.ok(&[
            "app-password",
            "create",
            "carol@example.com",
            "--name",
            name,
        ]);
    }
    let error = work.refused(&[
        "app-password",
        "create",
        "carol@example.com",
        "--name",
        "three",
    ]);
    assert!(
        error.contains("already has 2 live app passwords"),
        "{error}"
    );
    work.ok(&["app-password", "revoke", "--all", "carol@example.com"]);
    work.ok(&[
        "app-password",
        "create",
        "carol@example.com",
        "--name",
        "three",
    ]);
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

/// `postern serve` from a fresh checkout's layout: creates the SQLite file and a
/// development certificate that clients can pin, serves IMAP and health checks, and exits
/// 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn serve_starts_from_nothing_and_stops_cleanly_on_sigterm() {
    let work = Workdir::new();
    let Serving {
        mut server,
        imaps,
        http,
        health,
    } = serve(&work);
    work.ok(&["user", "add", "dave@example.com"]);
    let created = work.json(&[
        "app-password",
        "create",
        "dave@example.com",
        "--name",
        "x",
        "--json",
    ]);
    let password = created["password"].as_str().unwrap().to_string();
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    // The store answers; the upstream (nothing listens there) does not.
    let ready = http_get(http, "/readyz").unwrap();
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(
        ready.contains("store ok\nimap upstream unreachable\n"),
        "{ready}"
    );
    let metrics = http_get(http, "/metrics").unwrap();
    assert!(
        metrics.contains("postern_build_info{version=\""),
        "{metrics}"
    );
    assert!(work.path().join("data/postern.db").is_file());

    // The generated certificate is the one served: a client that pins it gets the greeting.
    let cert = work.path().join("certs/postern.crt");
    let (mut client, greeting) =
        ImapClient::connect_tls(format!("127.0.0.1:{imaps}").parse().unwrap(), &cert).await;
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1"),
        "{greeting}"
    );

    // Logins with the right and a wrong password, both ways of sending them.
    let wrong = "wxyz wxyz wxyz wxyz";
    for (tag, secret) in [("a1", password.as_str()), ("a2", wrong)] {
        let reply = client
            .command(tag, &format!("LOGIN dave@example.com \"{secret}\""))
            .await;
        assert!(
            reply.last().unwrap().starts_with(&format!("{tag} NO")),
            "{reply:?}"
        );
    }
    let plain = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("\0dave@example.com\0{password}"),
    );
    let reply = client
        .command("a3", &format!("AUTHENTICATE PLAIN {plain}"))
        .await;
    assert!(reply.last().unwrap().starts_with("a3 NO"), "{reply:?}");

    let status = Command::new("kill")
        .arg(server.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let status = server.wait().unwrap();
    let mut log = String::new();
    server
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(
        log.contains("generated a self-signed development certificate"),
        "{log}"
    );
    // Trace level logs everything postern and its libraries say: no secret is in it.
    assert!(log.contains("upstream login failed"), "{log}");
    for secret in [
        password.clone(),
        password.replace(' ', ""),
        wrong.to_string(),
        wrong.replace(' ', ""),
        plain,
    ] {
        assert!(!log.contains(&secret), "a credential reached the log");
    }
}

/// The real binary serving from `work`: every port moved to a free one, nothing listening
/// upstream (logins get as far as the upstream connect), logging at trace level.
struct Serving {
    server: std::process::Child,
    imaps: u16,
    http: u16,
    /// The first /healthz response.
    health: String,
}

fn serve(work: &Workdir) -> Serving {
    let (imaps, http) = (support::free_port(), support::free_port());
    work.edit("127.0.0.1:10993", &format!("127.0.0.1:{imaps}"));
    work.edit("127.0.0.1:9898", &format!("127.0.0.1:{http}"));
    for port in ["127.0.0.1:10143", "127.0.0.1:10465", "127.0.0.1:10587"] {
        work.edit(port, &format!("127.0.0.1:{}", support::free_port()));
    }
    work.edit(
        "address = \"127.0.0.1:993\"",
        &format!("address = \"127.0.0.1:{}\"", support::free_port()),
    );
    let mut server = Command::new(env!("CARGO_BIN_EXE_postern"))
        .arg("serve")
        .current_dir(work.path())
        .env_remove("POSTERN_CONFIG")
        .env("POSTERN_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        if let Some(response) = http_get(http, "/healthz") {
            break response;
        }
        assert!(Instant::now() < deadline, "serve did not come up");
        assert!(server.try_wait().unwrap().is_none(), "serve exited early");
        std::thread::sleep(Duration::from_millis(20));
    };
    Serving {
        server,
        imaps,
        http,
        health,
    }
}

/// SIGHUP swaps in a renewed certificate for new connections; a session that was
/// already open keeps working, and the process keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_certificate_without_dropping_sessions() {
    let work = Workdir::new();
    let Serving {
        mut server, imaps, ..
    } = serve(&work);
    let address = format!("127.0.0.1:{imaps}").parse().unwrap();
    let old_cert = work.path().join("old.pem");
    std::fs::copy(work.path().join("certs/postern.crt"), &old_cert).unwrap();
    let (mut open_session, _) = ImapClient::connect_tls(address, &old_cert).await;

    // The renewed pair, from a CA of its own, written over the configured files.
    let ca = support::TestCa::new(work.path());
    let (chain, key) = ca.issue(work.path(), "renewed", &["localhost", "127.0.0.1"]);
    std::fs::copy(chain, work.path().join("certs/postern.crt")).unwrap();
    std::fs::copy(key, work.path().join("certs/postern.key")).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // Poll until new handshakes present the renewed certificate.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let renewed = support::imap_client::connector(&ca.ca_path)
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await;
        if renewed.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        assert!(
            server.try_wait().unwrap().is_none(),
            "SIGHUP ended the process"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        open_session.command("a1", "NOOP").await,
        vec!["a1 OK NOOP completed"]
    );
    Command::new("kill")
        .arg(server.id().to_string())
        .status()
        .unwrap();
    assert!(server.wait().unwrap().success());
}

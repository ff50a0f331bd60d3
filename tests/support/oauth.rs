//! The test identity provider: `tests/oauth/provider.mjs`, a real OAuth 2.0 authorization
//! server on npm's oidc-provider (pinned by `tests/oauth/package-lock.json`), started from
//! a generated CONFIG in a temp dir on a free loopback port. Its clients are the shapes
//! postern's presets speak to: a Microsoft 365 app with a secret and one with a
//! certificate (client assertion), and a Google service account (JWT bearer, per user).
//! Its `/__test/` hooks make the token endpoint fail or slow down, and count requests.
//! Keys are made with `openssl` (Debian's), each run afresh.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use super::{register_live, stop_child, Stop, SIGTERM};

/// The Microsoft 365-style app authenticated by its secret.
pub const M365_APP: &str = "m365-app";
/// The Microsoft 365-style app authenticated by a certificate's key.
pub const M365_CERT_APP: &str = "m365-cert";
/// The Google-style service account (JWT bearer, one token per user).
pub const SERVICE_ACCOUNT: &str = "gateway@project.iam.gserviceaccount.com";

pub struct IdentityProvider {
    pub port: u16,
    /// The tokens' `iss`.
    pub issuer: String,
    pub token_url: String,
    /// Where the provider writes its public key for Dovecot.
    pub keys_dir: PathBuf,
    /// The app's secret, in a file.
    pub secret_file: PathBuf,
    /// The certificate app's private key and certificate (PEM).
    pub app_key_file: PathBuf,
    pub app_cert_file: PathBuf,
    /// The service account's JSON key file, as Google hands it out.
    pub service_account_file: PathBuf,
    /// The CA of the provider's certificate (with `start_with(true)`).
    pub ca_path: PathBuf,
    pub dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
}

impl IdentityProvider {
    /// Starts the provider on plain HTTP; returns once it has said `ready PORT`.
    pub fn start() -> IdentityProvider {
        Self::start_with(false)
    }

    /// Starts the provider, on HTTPS with a certificate from its own test CA (`ca_path`)
    /// when `tls`.
    pub fn start_with(tls: bool) -> IdentityProvider {
        Self::start_with_config(tls, serde_json::json!({}))
    }

    /// Starts the provider with more CONFIG keys (`oidc_clients`, `accounts`: the OpenID
    /// Connect sign-in, `tests/oauth/README.md`).
    pub fn start_with_config(tls: bool, more: serde_json::Value) -> IdentityProvider {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oauth");
        install_packages(&root);
        let dir = tempfile::tempdir().expect("temp dir");
        super::chmod(dir.path(), 0o755);
        let path = |name: &str| dir.path().join(name);
        let keys_dir = path("keys");
        std::fs::create_dir(&keys_dir).expect("mkdir keys");
        super::chmod(&keys_dir, 0o755);

        let secret = "app-secret-".to_string() + &random_hex();
        std::fs::write(path("app-secret"), format!("{secret}\n")).expect("write secret");
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ],
            &path("app-key.pem"),
        );
        let cert = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-new",
                "-subj",
                "/CN=m365-cert",
                "-days",
                "2",
                "-key",
            ])
            .arg(path("app-key.pem"))
            .arg("-out")
            .arg(path("app-cert.pem"))
            .output()
            .expect("run openssl");
        assert!(cert.status.success(), "openssl req: {cert:?}");
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ],
            &path("sa-key.pem"),
        );
        let sa_pem = std::fs::read_to_string(path("sa-key.pem")).expect("read sa key");
        let service_account = serde_json::json!({
            "type": "service_account",
            "project_id": "project",
            "private_key_id": "sa-key-1",
            "private_key": sa_pem,
            "client_email": SERVICE_ACCOUNT,
            "client_id": "1234567890",
            "token_uri": "https://oauth2.googleapis.com/token",
        });
        std::fs::write(path("sa.json"), service_account.to_string()).expect("write sa.json");

        let ca = super::TestCa::new(dir.path());
        let (cert, key) = ca.issue(dir.path(), "idp", &["localhost", "127.0.0.1"]);
        let mut config = serde_json::json!({
            "port": 0,
            "host": "127.0.0.1",
            "token_ttl_seconds": 3600,
            "dovecot_keys_dir": keys_dir,
            "clients": [
                { "client_id": M365_APP, "grant": "client_credentials",
                  "auth": "client_secret_post", "client_secret": secret },
                { "client_id": M365_CERT_APP, "grant": "client_credentials",
                  "auth": "private_key_jwt", "public_key_file": path("app-cert.pem") },
                { "client_id": SERVICE_ACCOUNT, "grant": "jwt_bearer",
                  "public_key_file": path("sa.json") },
            ],
        });
        if tls {
            config["tls"] = serde_json::json!({ "cert_file": cert, "key_file": key });
        }
        if let serde_json::Value::Object(more) = more {
            for (key, value) in more {
                config[key] = value;
            }
        }
        std::fs::write(path("provider.json"), config.to_string()).expect("write config");
        let stderr = std::fs::File::create(path("provider.log")).expect("create log");
        let mut child = Command::new("node")
            .arg(root.join("provider.mjs"))
            .arg(path("provider.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("run node (is nodejs installed?)");
        register_live(child.id(), Stop::Signal(SIGTERM), dir.path());
        let mut first = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        let _ = BufReader::new(stdout).read_line(&mut first);
        let port: u16 = first
            .trim()
            .strip_prefix("ready ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "the identity provider did not start: {first:?}\n{}",
                    std::fs::read_to_string(path("provider.log")).unwrap_or_default()
                )
            });
        let scheme = if tls { "https" } else { "http" };
        let issuer = format!("{scheme}://127.0.0.1:{port}");
        IdentityProvider {
            port,
            token_url: format!("{issuer}/token"),
            issuer,
            keys_dir,
            secret_file: path("app-secret"),
            app_key_file: path("app-key.pem"),
            app_cert_file: path("app-cert.pem"),
            service_account_file: path("sa.json"),
            ca_path: ca.ca_path.clone(),
            dir,
            child: Mutex::new(Some(child)),
        }
    }

    /// Calls a `/__test/` hook (`POST /__test/fail?status=503`, `GET /__test/count`);
    /// returns the JSON answer.
    pub fn hook(&self, method: &str, path: &str) -> serde_json::Value {
        let output = Command::new("curl")
            .args(["-sS", "-X", method, "--cacert"])
            .arg(&self.ca_path)
            .arg(format!("{}{path}", self.issuer))
            .output()
            .expect("run curl");
        serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("hook {path}: {output:?}"))
    }

    /// Token requests answered so far (failures included).
    pub fn token_requests(&self) -> u64 {
        self.hook("GET", "/__test/count")["total"]
            .as_u64()
            .unwrap_or(0)
    }

    /// The provider's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }

    /// Stops the provider: its port refuses connections afterwards.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            stop_child(&mut child, Stop::Signal(SIGTERM));
        }
    }
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `npm ci` in `tests/oauth` once (scripts/test does it too), from the lockfile.
fn install_packages(root: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if root.join("node_modules/oidc-provider").is_dir() {
            return;
        }
        let output = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(root)
            .output()
            .expect("run npm (is npm installed?)");
        assert!(output.status.success(), "npm ci: {output:?}");
    });
}

fn openssl(args: &[&str], out: &Path) {
    let output = Command::new("openssl")
        .args(args)
        .arg(out)
        .output()
        .expect("run openssl");
    assert!(output.status.success(), "openssl {args:?}: {output:?}");
}

fn random_hex() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

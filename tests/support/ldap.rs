//! A private OpenLDAP (Debian's slapd) for the directory tests: `tests/ldap/slapd.conf.in`
//! and the LDIF files filled in and written to a temp dir, slapd started on two free
//! loopback ports (`ldap://` with StartTLS, `ldaps://`) with a certificate from a fresh
//! test CA, ready once it logs "slapd starting", the entries loaded as the admin. People
//! (see `tests/ldap/README.md`): OpenLDAP-style alice, carol (locked), dave (three
//! addresses), erin (`uid` with filter metacharacters); Active Directory-style bob and
//! dan (disabled). Changes during a test go through `ldapmodify` and `ldapdelete`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{free_port, register_live, stop_child, Stop, TestCa, SIGTERM};

const SLAPD: &str = "/usr/sbin/slapd";
const ADMIN: &str = "cn=admin,dc=example,dc=test";
pub const BASE_DN: &str = "ou=people,dc=example,dc=test";
pub const SERVICE_DN: &str = "cn=postern,ou=services,dc=example,dc=test";
/// The people the LDIF files define.
pub const PEOPLE: [&str; 6] = ["alice", "carol", "dave", "erin", "bob", "dan"];

pub struct Slapd {
    pub port: u16,
    pub tls_port: u16,
    /// The CA of slapd's certificate.
    pub ca_path: PathBuf,
    /// The service account's password, as postern reads it.
    pub service_password_file: PathBuf,
    passwords: HashMap<&'static str, String>,
    admin_password: String,
    pub dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
}

impl Slapd {
    /// Starts slapd with every person loaded.
    pub fn start() -> Slapd {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ldap");
        let dir = tempfile::tempdir().expect("temp dir");
        super::chmod(dir.path(), 0o755);
        let path = |name: &str| dir.path().join(name);
        std::fs::create_dir(path("db")).expect("mkdir db");
        let ca = TestCa::new(dir.path());
        let (cert, key) = ca.issue(dir.path(), "ldap", &["127.0.0.1", "localhost"]);
        let secret = || random_hex();
        let admin_password = secret();
        let service_password = secret();
        std::fs::write(path("service-password"), format!("{service_password}\n"))
            .expect("write service password");
        let passwords: HashMap<&'static str, String> =
            PEOPLE.iter().map(|who| (*who, secret())).collect();
        let mut values: Vec<(String, String)> = vec![
            ("@DIR@".into(), dir.path().display().to_string()),
            (
                "@AD_LITE_SCHEMA@".into(),
                source.join("ad-lite.schema").display().to_string(),
            ),
            ("@TLS_CA@".into(), ca.ca_path.display().to_string()),
            ("@TLS_CERT@".into(), cert.display().to_string()),
            ("@TLS_KEY@".into(), key.display().to_string()),
            ("@ADMIN_PASSWORD@".into(), admin_password.clone()),
            ("@SERVICE_PASSWORD@".into(), service_password),
        ];
        for (who, password) in &passwords {
            values.push((
                format!("@{}_PASSWORD@", who.to_uppercase()),
                password.clone(),
            ));
        }
        let fill = |name: &str, out: &str| {
            let mut text = std::fs::read_to_string(source.join(name)).expect("read template");
            for (placeholder, value) in &values {
                text = text.replace(placeholder.as_str(), value);
            }
            std::fs::write(path(out), text).expect("write filled template");
        };
        fill("slapd.conf.in", "slapd.conf");
        for ldif in ["base", "service", "people-openldap", "people-ad"] {
            fill(&format!("{ldif}.ldif"), &format!("{ldif}.ldif"));
        }
        let mut slapd = Slapd {
            port: 0,
            tls_port: 0,
            ca_path: ca.ca_path.clone(),
            service_password_file: path("service-password"),
            passwords,
            admin_password,
            dir,
            child: Mutex::new(None),
        };
        for attempt in 1..=3 {
            slapd.port = free_port();
            slapd.tls_port = free_port();
            match slapd.spawn() {
                Ok(()) => break,
                Err(log) if attempt < 3 && log.contains("errno=98") => continue,
                Err(log) => panic!("slapd did not start:\n{log}"),
            }
        }
        for ldif in ["base", "service", "people-openldap", "people-ad"] {
            slapd.admin_tool(
                "ldapadd",
                &["-f"],
                Some(&slapd.dir.path().join(format!("{ldif}.ldif"))),
                None,
            );
        }
        slapd
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("slapd.log");
        let _ = std::fs::remove_file(&log);
        let stderr = std::fs::File::create(&log).expect("create slapd.log");
        let child = Command::new(SLAPD)
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .arg("-h")
            .arg(format!(
                "ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/",
                self.port, self.tls_port
            ))
            .args(["-d", "stats"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {SLAPD}: {e} (is slapd installed?)"));
        register_live(child.id(), Stop::Signal(SIGTERM), self.dir.path());
        let mut child = child;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.log().contains("slapd starting") {
                break;
            }
            if let Ok(Some(_)) = child.try_wait() {
                super::unregister_live(child.id());
                return Err(self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("not ready within 20 s\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        *self.child.lock().unwrap() = Some(child);
        Ok(())
    }

    /// A person's password.
    pub fn password(&self, who: &str) -> &str {
        &self.passwords[who]
    }

    /// `ldaps://127.0.0.1:PORT`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    /// `ldap://127.0.0.1:PORT` (for StartTLS).
    pub fn ldap_url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// The `[portal.ldap]` lines for `preset`, over LDAPS.
    pub fn portal_config(&self, preset: &str) -> String {
        format!(
            "[portal.ldap]\nurl = \"{}\"\nca_file = \"{}\"\npreset = \"{preset}\"\n\
             base_dn = \"{BASE_DN}\"\nbind_dn = \"{SERVICE_DN}\"\nbind_password_file = \"{}\"\n\
             timeout = \"2s\"\n",
            self.ldaps_url(),
            self.ca_path.display(),
            self.service_password_file.display()
        )
    }

    /// The `[portal.ldap]` lines for `preset`, over plain LDAP upgraded with StartTLS.
    pub fn portal_config_starttls(&self, preset: &str) -> String {
        self.portal_config(preset)
            .replace(&self.ldaps_url(), &self.ldap_url())
            .replace("timeout = ", "starttls = true\ntimeout = ")
    }

    /// Applies an LDIF change as the admin (`ldapmodify`).
    pub fn modify(&self, ldif: &str) {
        self.admin_tool("ldapmodify", &[], None, Some(ldif));
    }

    /// Deletes an entry as the admin.
    pub fn delete(&self, dn: &str) {
        self.admin_tool("ldapdelete", &[dn], None, None);
    }

    fn admin_tool(&self, tool: &str, args: &[&str], file: Option<&Path>, input: Option<&str>) {
        let mut command = Command::new(tool);
        command
            .args([
                "-x",
                "-H",
                &self.ldap_url(),
                "-D",
                ADMIN,
                "-w",
                &self.admin_password,
            ])
            .args(args);
        if let Some(file) = file {
            command.arg(file);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e} (is ldap-utils installed?)"));
        let mut stdin = child.stdin.take().unwrap();
        if let Some(input) = input {
            stdin.write_all(input.as_bytes()).unwrap();
        }
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{tool} {args:?}: {output:?}\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// Stops slapd: the directory is down.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            stop_child(&mut child, Stop::Signal(SIGTERM));
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn random_hex() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

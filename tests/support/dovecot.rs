//! A private Dovecot (imap, imaps, submission, submissions, lmtp) on loopback ports.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::distributions::{Alphanumeric, DistString};

use super::smtp_relay::SmtpRelay;
use super::{
    chmod, chown, current_user_and_group, free_port, is_root, port_open, read_lossy, register_live,
    stop_child, user_ids, wait_for_port_closed, Stop, TestCa, STARTUP_DEADLINE,
};

const DOVECOT: &str = "/usr/sbin/dovecot";

/// Optional settings for [`Dovecot::start_with`] (the benchmarks). `Default` is exactly
/// the configuration [`Dovecot::start`] writes, which the tests rely on.
#[derive(Clone, Debug, Default)]
pub struct DovecotOptions {
    /// Provision for this many concurrent IMAP (or POP3) sessions: `process_limit` of the
    /// login services, imap and pop3, `default_client_limit` for the shared services (auth, anvil, log, stats)
    /// and `mail_max_userip_connections`. `None`: Dovecot's limits (100 processes per
    /// service) and 1000 connections per user and address.
    pub max_sessions: Option<u32>,
    /// The login services (imap-login, submission-login, pop3-login) in Dovecot's
    /// "high-performance" mode (`service_count = 0`, one long-lived login process per
    /// core, each proxying many clients' TLS) instead of the default "high-security" mode
    /// (a new login process per connection).
    pub login_high_performance: bool,
    /// IMAP sessions served by one imap process (`client_limit`); `None`: 1, Dovecot's
    /// default.
    pub imap_client_limit: Option<u32>,
    /// `pop3_lock_session = yes`: one POP3 session per mailbox at a time, a second gets
    /// `-ERR [IN-USE]`.
    pub pop3_lock_session: bool,
    /// `submission_max_mail_size` in MiB (`None`: Dovecot's default, 40M in 2.3.19).
    pub submission_max_mail_size_mib: Option<u64>,
    /// Serve this certificate chain and key instead of a fresh leaf from the test CA;
    /// `Dovecot::ca_path` then names `tls.ca`.
    pub tls: Option<TlsFiles>,
    /// Accept XOAUTH2 and OAUTHBEARER tokens from this identity provider (see
    /// `tests/oauth/dovecot-oauth2.md`).
    pub oauth2: Option<DovecotOAuth2>,
}

/// The identity provider whose tokens Dovecot validates itself (JWTs, with the keys the
/// provider writes): per-user tokens (`sub` = the login, Google's scope) and app tokens
/// for every mailbox (Microsoft 365's scope).
#[derive(Clone, Debug)]
pub struct DovecotOAuth2 {
    /// The tokens' `iss`.
    pub issuer: String,
    /// Where the provider writes its public keys (`<dir>/default/RS256/<kid>`).
    pub keys_dir: PathBuf,
}

/// A certificate chain, its key and the CA that issued it (PEM files).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct Dovecot {
    pub imap_port: u16,
    pub imaps_port: u16,
    pub submission_port: u16,
    pub submissions_port: u16,
    pub lmtp_port: u16,
    /// POP3 with STLS, and POP3 over implicit TLS.
    pub pop3_port: u16,
    pub pop3s_port: u16,
    /// The CA that issued Dovecot's certificate (for "localhost" and 127.0.0.1).
    pub ca: TestCa,
    /// Same as `ca.ca_path` (or `DovecotOptions::tls`'s CA when given).
    pub ca_path: PathBuf,
    /// Master user: `LOGIN user*<master_user> <master_password>`, or SASL PLAIN with
    /// authzid=user, authcid=master_user.
    pub master_user: String,
    pub master_password: String,
    /// The temp dir holding config, logs, passwd files and mail.
    pub dir: PathBuf,
    /// Port of the in-process SMTP relay that submission relays to (127.0.0.1); it
    /// delivers into the recipients' Maildirs (see `smtp_relay.rs`), logging to
    /// `<dir>/relay.log`.
    pub relay_port: u16,
    relay: SmtpRelay,
    child: Option<Child>,
    /// (uid, gid) that mail files must belong to when we are root; None otherwise.
    mail_owner: Option<(u32, u32)>,
    users_generation: AtomicU64,
    options: DovecotOptions,
    _tmp: tempfile::TempDir,
}

impl Dovecot {
    /// Starts Dovecot with a fresh CA, certificate, empty user list and a random master
    /// password; returns once every listener accepts connections.
    pub fn start() -> Dovecot {
        Self::start_with(DovecotOptions::default())
    }

    /// Like [`Dovecot::start`], with the optional settings in `options`.
    pub fn start_with(options: DovecotOptions) -> Dovecot {
        let tmp = tempfile::Builder::new()
            .prefix("postern-dovecot-")
            .tempdir()
            .expect("create temp dir for dovecot");
        let dir = tmp.path().to_path_buf();
        // Dovecot's unprivileged processes (login, auth, mail) must reach into it.
        chmod(&dir, 0o755);

        let ca = TestCa::new(&dir);
        let (ca_path, cert, key) = match &options.tls {
            Some(tls) => (tls.ca.clone(), tls.cert.clone(), tls.key.clone()),
            None => {
                let (cert, key) = ca.issue(&dir, "dovecot", &["localhost", "127.0.0.1"]);
                (ca.ca_path.clone(), cert, key)
            }
        };

        let root = is_root();
        let identity = if root {
            let (uid, gid) = user_ids("nobody");
            Identity {
                login_user: "dovenull".into(),
                internal_user: "dovecot".into(),
                internal_group: "dovecot".into(),
                mail_uid: uid,
                mail_gid: gid,
            }
        } else {
            let (user, group) = current_user_and_group();
            let (uid, gid) = user_ids(&user);
            Identity {
                login_user: user.clone(),
                internal_user: user,
                internal_group: group,
                mail_uid: uid,
                mail_gid: gid,
            }
        };
        let mail_owner = root.then_some((identity.mail_uid, identity.mail_gid));

        fs::create_dir(dir.join("mail")).expect("mkdir mail");
        chown(&dir.join("mail"), mail_owner);

        fs::create_dir(dir.join("passwd.d")).expect("mkdir passwd.d");
        let relay = SmtpRelay::start(
            dir.join("passwd.d"),
            dir.join("mail"),
            mail_owner,
            dir.join("relay.log"),
        );

        let master_user = "proxy".to_string();
        let master_password = Alphanumeric.sample_string(&mut rand::thread_rng(), 24);
        write_file(
            &dir.join("masters"),
            format!("{master_user}:{{PLAIN}}{master_password}::::::\n").as_bytes(),
        );

        let mut dovecot = Dovecot {
            imap_port: 0,
            imaps_port: 0,
            submission_port: 0,
            submissions_port: 0,
            lmtp_port: 0,
            pop3_port: 0,
            pop3s_port: 0,
            ca,
            ca_path,
            master_user,
            master_password,
            dir,
            relay_port: relay.port,
            relay,
            child: None,
            mail_owner,
            users_generation: AtomicU64::new(0),
            options,
            _tmp: tmp,
        };

        // Ports are picked as free then released; another process may grab one in
        // between, so retry a few times on EADDRINUSE.
        for attempt in 1..=3 {
            dovecot.imap_port = free_port();
            dovecot.imaps_port = free_port();
            dovecot.submission_port = free_port();
            dovecot.submissions_port = free_port();
            dovecot.lmtp_port = free_port();
            dovecot.pop3_port = free_port();
            dovecot.pop3s_port = free_port();
            let conf = dovecot.config(&identity, &cert, &key);
            write_file(&dovecot.dir.join("dovecot.conf"), conf.as_bytes());
            match dovecot.spawn() {
                Ok(()) => return dovecot,
                Err(log) if attempt < 3 && log.contains("Address already in use") => continue,
                Err(log) => panic!("dovecot failed to start\n{log}"),
            }
        }
        unreachable!()
    }

    /// Starts `dovecot -F` and waits until all listeners accept connections. Err(log)
    /// when the process exited before that.
    fn spawn(&mut self) -> Result<(), String> {
        let _ = fs::remove_file(self.log_path());
        let stderr = File::create(self.stderr_path()).expect("create dovecot.stderr");
        let child = Command::new(DOVECOT)
            .arg("-F")
            .arg("-c")
            .arg(self.dir.join("dovecot.conf"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("dup stderr file"))
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {DOVECOT}: {e} (is dovecot-imapd installed?)"));
        register_live(child.id(), Stop::KillTree, &self.dir);
        self.child = Some(child);

        let ports = [
            self.imap_port,
            self.imaps_port,
            self.submission_port,
            self.submissions_port,
            self.lmtp_port,
            self.pop3_port,
            self.pop3s_port,
        ];
        // Ready = the master logged "starting up" (it does so only after binding every
        // listener, so the ports are ours and not another process's) and each port
        // accepts connections.
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let mut pending: Vec<u16> = ports.to_vec();
        loop {
            let exited = self.child.as_mut().unwrap().try_wait().ok().flatten();
            if let Some(status) = exited {
                let pid = self.child.take().unwrap().id();
                super::unregister_live(pid);
                return Err(format!(
                    "dovecot exited ({status}) during startup\n{}",
                    self.all_logs()
                ));
            }
            if self.log().contains("starting up for") {
                pending.retain(|&port| !port_open(port));
                if pending.is_empty() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let log = self.all_logs();
                self.stop();
                panic!(
                    "dovecot not ready within {STARTUP_DEADLINE:?} (ports not accepting \
                     connections: {pending:?})\n{log}"
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn config(&self, id: &Identity, cert: &Path, key: &Path) -> String {
        let dir = self.dir.display();
        let mut c = String::new();
        let mut line = |s: &str| {
            c.push_str(s);
            c.push('\n');
        };
        // A complete standalone config: nothing from /etc/dovecot is included.
        line(&format!("base_dir = {dir}/run"));
        line(&format!("state_dir = {dir}/state"));
        line(&format!("instance_name = postern-test-{}", self.imap_port));
        line("protocols = imap submission lmtp pop3");
        line("listen = 127.0.0.1");
        line(&format!("log_path = {dir}/dovecot.log"));
        line(&format!("info_log_path = {dir}/dovecot.log"));
        line("auth_verbose = yes");
        if self.options.oauth2.is_some() {
            line("auth_mechanisms = plain login xoauth2 oauthbearer");
        } else {
            line("auth_mechanisms = plain login");
        }
        line("auth_cache_size = 0");
        // Dovecot's default 2s delay on failed auth only slows tests down.
        line("auth_failure_delay = 0");
        line("auth_master_user_separator = *");
        line("disable_plaintext_auth = no");
        line("ssl = yes");
        line(&format!("ssl_cert = <{}", cert.display()));
        line(&format!("ssl_key = <{}", key.display()));
        line("ssl_min_protocol = TLSv1.2");
        line("login_trusted_networks = 127.0.0.0/8 ::1");
        line("imap_id_log = *");
        line(&format!("mail_location = maildir:{dir}/mail/%u/Maildir"));
        line("mail_fsync = never");
        line(&format!("default_login_user = {}", id.login_user));
        line(&format!("default_internal_user = {}", id.internal_user));
        line(&format!("default_internal_group = {}", id.internal_group));
        line(&format!("mail_uid = {}", id.mail_uid));
        line(&format!("mail_gid = {}", id.mail_gid));
        line("first_valid_uid = 1");
        line(&format!("first_valid_gid = {}", id.mail_gid.min(1)));
        line("submission_relay_host = 127.0.0.1");
        line(&format!("submission_relay_port = {}", self.relay_port));
        // zlib + imap_zlib: COMPRESS=DEFLATE, which clients negotiate through postern.
        line("mail_plugins = $mail_plugins zlib");
        let options = &self.options;
        let userip = options.max_sessions.unwrap_or(0).max(1000);
        line(&format!(
            "protocol imap {{\n  mail_max_userip_connections = {userip}\n  \
             mail_plugins = $mail_plugins imap_zlib\n}}"
        ));
        line(&format!(
            "protocol pop3 {{\n  mail_max_userip_connections = {userip}\n}}"
        ));
        if options.pop3_lock_session {
            line("pop3_lock_session = yes");
        }
        if let Some(mib) = options.submission_max_mail_size_mib {
            line(&format!("submission_max_mail_size = {mib}M"));
        }
        // Settings of imap-login and imap for many sessions (none by default).
        let mut login_settings = String::new();
        if let Some(sessions) = options.max_sessions {
            line(&format!("default_client_limit = {}", 2 * sessions + 1000));
            let processes = if options.login_high_performance {
                4
            } else {
                sessions + 100
            };
            login_settings.push_str(&format!("  process_limit = {processes}\n"));
            // A pop3 process serves one session.
            line(&format!(
                "service pop3 {{\n  process_limit = {processes_for_all}\n}}",
                processes_for_all = sessions + 100
            ));
            let per_process = options.imap_client_limit.unwrap_or(1).max(1);
            line(&format!(
                "service imap {{\n  process_limit = {}\n  client_limit = {per_process}\n}}",
                sessions / per_process + 100
            ));
        } else if let Some(per_process) = options.imap_client_limit {
            line(&format!(
                "service imap {{\n  client_limit = {}\n}}",
                per_process.max(1)
            ));
        }
        if options.login_high_performance {
            let clients = options.max_sessions.unwrap_or(0).max(1000) + 100;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            login_settings.push_str(&format!(
                "  service_count = 0\n  process_min_avail = {cores}\n  \
                 client_limit = {clients}\n  vsz_limit = 2G\n"
            ));
        }
        // With tokens, passwords go to the passwd-files only and tokens to the oauth2 ones.
        let password_mechanisms = if options.oauth2.is_some() {
            "  mechanisms = plain login\n"
        } else {
            ""
        };
        line(&format!(
            "passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {dir}/masters\n  \
             master = yes\n  pass = yes\n{password_mechanisms}}}"
        ));
        line(&format!(
            "passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {dir}/passwd.d/%u\n{password_mechanisms}}}"
        ));
        if let Some(oauth2) = &options.oauth2 {
            // Per-user tokens: `sub` must be the login. App tokens: a literal format,
            // so any mailbox (Dovecot compares the two expansions of the format).
            for (name, username_format, scope) in [
                ("user", "%Lu", "https://mail.google.com/"),
                ("app", "any-user", "https://outlook.office365.com/.default"),
            ] {
                let path = self.dir.join(format!("oauth2-{name}.conf.ext"));
                let keys = oauth2.keys_dir.display();
                write_file(
                    &path,
                    format!(
                        "introspection_mode = local\n\
                         local_validation_key_dict = fs:posix:prefix={keys}/\n\
                         issuers = {}\nusername_attribute = sub\n\
                         username_format = {username_format}\nscope = {scope}\n\
                         active_attribute =\nactive_value =\n",
                        oauth2.issuer
                    )
                    .as_bytes(),
                );
                line(&format!(
                    "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  \
                     args = {}\n}}",
                    path.display()
                ));
            }
        }
        line(&format!(
            "userdb {{\n  driver = passwd-file\n  args = {dir}/passwd.d/%u\n  \
             default_fields = home={dir}/mail/%u\n}}"
        ));
        // Without root, chroot is impossible: disable it where the defaults use it.
        let chroot = if is_root() { "" } else { "  chroot =\n" };
        line(&format!(
            "service imap-login {{\n{chroot}{login_settings}  inet_listener imap {{\n    address = 127.0.0.1\n    \
             port = {}\n  }}\n  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {}\n    \
             ssl = yes\n  }}\n}}",
            self.imap_port, self.imaps_port
        ));
        line(&format!(
            "service submission-login {{\n{chroot}{login_settings}  inet_listener submission {{\n    address = 127.0.0.1\n    \
             port = {}\n  }}\n  inet_listener submissions {{\n    address = 127.0.0.1\n    port = {}\n    \
             ssl = yes\n  }}\n}}",
            self.submission_port, self.submissions_port
        ));
        line(&format!(
            "service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {}\n  }}\n}}",
            self.lmtp_port
        ));
        line(&format!(
            "service pop3-login {{\n{chroot}{login_settings}  inet_listener pop3 {{\n    address = 127.0.0.1\n    \
             port = {}\n  }}\n  inet_listener pop3s {{\n    address = 127.0.0.1\n    port = {}\n    \
             ssl = yes\n  }}\n}}",
            self.pop3_port, self.pop3s_port
        ));
        // No auth penalty (2 s, 4 s, ... delays per IP after failed logins, which Dovecot
        // 2.3.19 applies even to login_trusted_networks): without its anvil socket the
        // auth process silently disables it.
        line(&format!(
            "service anvil {{\n{chroot}  unix_listener anvil-auth-penalty {{\n    mode = 0\n  }}\n}}"
        ));
        c
    }

    /// Adds (or replaces) a user with a plain password, usable immediately (no restart)
    /// for direct logins and through the master user.
    ///
    /// Each user has its own passwd-file (`<dir>/passwd.d/<name>`, found through `%u`):
    /// Dovecot opens a file it has not seen on the next lookup, but re-checks a file it
    /// already knows at most once per second. So replacing the password of an existing
    /// user returns only once the wall clock has moved past the second of the write
    /// (at most ~1 s); adding a new user returns at once.
    pub fn add_user(&self, name: &str, password: &str) {
        for (what, v) in [("user name", name), ("password", password)] {
            assert!(
                !v.is_empty() && !v.contains([':', '\n', '\r', '\0']),
                "Dovecot::add_user: {what} {v:?} cannot go into a passwd-file"
            );
        }
        assert!(
            !name.contains(['*', '/', '%']) && name != "." && name != "..",
            "Dovecot::add_user: user name {name:?} must not contain '*', '/' or '%'"
        );
        let path = self.dir.join("passwd.d").join(name);
        let existed = path.exists();
        // A distinct mtime per write: Dovecot reloads when mtime or size changed.
        let generation = self.users_generation.fetch_add(1, Ordering::SeqCst) + 1;
        let tmp = self.dir.join("passwd.d").join(format!(".tmp{generation}"));
        write_file(
            &tmp,
            format!("{name}:{{PLAIN}}{password}::::::\n").as_bytes(),
        );
        let file = File::options()
            .write(true)
            .open(&tmp)
            .expect("open passwd tmp file");
        file.set_modified(UNIX_EPOCH + Duration::from_secs(1_000_000_000 + generation))
            .expect("set mtime of passwd file");
        drop(file);
        fs::rename(&tmp, &path).expect("rename passwd file into place");
        let written_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if existed {
            while SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                <= written_at
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// The pid of the Dovecot master process (its services are its children).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The user's Maildir (`<dir>/mail/<user>/Maildir`); may not exist yet.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.join("mail").join(user).join("Maildir")
    }

    /// Drops `raw_message` into the user's Maildir/new under a unique name, owned by the
    /// mail user. The next SELECT (or NOOP on a selected INBOX) sees it.
    pub fn deliver(&self, user: &str, raw_message: &[u8]) {
        deliver_to_maildir(&self.dir.join("mail"), self.mail_owner, user, raw_message)
            .unwrap_or_else(|e| panic!("Dovecot::deliver to {user}: {e}"));
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("dovecot.log")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.join("dovecot.stderr")
    }

    /// Content of Dovecot's log file (all services, info and errors).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// Log file, whatever the master wrote to stderr before its log was set up, and the
    /// SMTP relay's log.
    pub fn all_logs(&self) -> String {
        format!(
            "--- dovecot.log ---\n{}\n--- dovecot stderr ---\n{}\n--- relay.log ---\n{}",
            self.log(),
            read_lossy(&self.stderr_path()),
            read_lossy(&self.dir.join("relay.log"))
        )
    }

    /// Stops Dovecot: kills the master and all its processes at once (open sessions
    /// are cut), then waits until every port refuses connections. Idempotent; also done
    /// on Drop.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        stop_child(&mut child, Stop::KillTree);
        for port in [
            self.imap_port,
            self.imaps_port,
            self.submission_port,
            self.submissions_port,
            self.lmtp_port,
            self.pop3_port,
            self.pop3s_port,
        ] {
            wait_for_port_closed(port, "dovecot", || self.all_logs());
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Don't turn a failing test into an abort with a second panic.
            if let Some(mut child) = self.child.take() {
                stop_child(&mut child, Stop::KillTree);
            }
        } else {
            self.stop();
        }
    }
}

struct Identity {
    login_user: String,
    internal_user: String,
    internal_group: String,
    mail_uid: u32,
    mail_gid: u32,
}

fn write_file(path: &Path, content: &[u8]) {
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chmod(path, 0o644);
}

/// Writes a message into `<mail_root>/<user>/Maildir/new` the Maildir way (tmp/, then
/// rename), creating the Maildir if needed; files and dirs belong to `owner` if given.
pub(crate) fn deliver_to_maildir(
    mail_root: &Path,
    owner: Option<(u32, u32)>,
    user: &str,
    raw_message: &[u8],
) -> std::io::Result<()> {
    use std::os::unix::fs::{chown, DirBuilderExt, OpenOptionsExt};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let maildir = mail_root.join(user).join("Maildir");
    let mut dirs = vec![mail_root.join(user), maildir.clone()];
    dirs.extend(["cur", "new", "tmp"].map(|d| maildir.join(d)));
    for d in &dirs {
        match fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {
                if let Some((uid, gid)) = owner {
                    chown(d, Some(uid), Some(gid))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let name = format!(
        "{}.M{}P{}Q{}.postern-test,S={}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        raw_message.len()
    );
    let tmp = maildir.join("tmp").join(&name);
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(raw_message)?;
    drop(f);
    if let Some((uid, gid)) = owner {
        chown(&tmp, Some(uid), Some(gid))?;
    }
    fs::rename(&tmp, maildir.join("new").join(&name))
}

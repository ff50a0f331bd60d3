//! A private PostgreSQL 15 cluster on a loopback port (trust auth, superuser `postgres`).

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    chmod, chown, free_port, is_root, read_lossy, register_live, run, stop_child, user_ids,
    wait_for_port_closed, Stop, SIGINT, STARTUP_DEADLINE,
};

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Postgres {
    pub port: u16,
    /// The temp dir holding the cluster (`data/`), its socket dir and `postgres.log`.
    pub dir: PathBuf,
    child: Option<Child>,
    /// (uid, gid) of the `postgres` user when we are root (initdb/postgres refuse root).
    run_as: Option<(u32, u32)>,
    _tmp: tempfile::TempDir,
}

impl Postgres {
    /// initdb (trust auth, UTF8, C locale) into a temp dir and start `postgres` on
    /// 127.0.0.1:<free port> with fsync off; returns once it accepts queries.
    pub fn start() -> Postgres {
        let tmp = tempfile::Builder::new()
            .prefix("postern-postgres-")
            .tempdir()
            .expect("create temp dir for postgres");
        let dir = tmp.path().to_path_buf();
        let run_as = is_root().then(|| user_ids("postgres"));
        // The postgres user must reach into the dir; data/ and sock/ are its own.
        chmod(&dir, 0o755);
        for sub in ["data", "sock"] {
            fs::create_dir(dir.join(sub)).expect("mkdir");
            chmod(&dir.join(sub), 0o700);
            chown(&dir.join(sub), run_as);
        }
        let mut pg = Postgres {
            port: 0,
            dir,
            child: None,
            run_as,
            _tmp: tmp,
        };

        let initdb_log = pg.dir.join("initdb.log");
        let status = pg
            .command("initdb")
            .args(["-D"])
            .arg(pg.dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ])
            .stdout(File::create(&initdb_log).expect("create initdb.log"))
            .stderr(File::create(pg.dir.join("initdb.stderr")).expect("create initdb.stderr"))
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run {BIN}/initdb: {e} (is postgresql-15 installed?)")
            });
        if !status.success() {
            panic!(
                "initdb failed ({status})\n--- initdb output ---\n{}\n{}",
                read_lossy(&initdb_log),
                read_lossy(&pg.dir.join("initdb.stderr"))
            );
        }

        for attempt in 1..=3 {
            pg.port = free_port();
            match pg.spawn() {
                Ok(()) => return pg,
                Err(log) if attempt < 3 && log.contains("Address already in use") => continue,
                Err(log) => panic!("postgres failed to start\n{log}"),
            }
        }
        unreachable!()
    }

    /// A command from the PostgreSQL bin dir, run as `postgres` when we are root.
    fn command(&self, program: &str) -> Command {
        let program = format!("{BIN}/{program}");
        let mut cmd = match self.run_as {
            Some((uid, gid)) => {
                // setpriv execs (no fork), so the child's pid is the program's pid.
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.current_dir(&self.dir).stdin(Stdio::null());
        cmd
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The server log.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = File::create(self.log_path()).expect("create postgres.log");
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-h", "127.0.0.1", "-k"])
            .arg(self.dir.join("sock"))
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "logging_collector=off",
            ])
            .stdout(log.try_clone().expect("dup log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BIN}/postgres: {e}"));
        register_live(child.id(), Stop::Signal(SIGINT), &self.dir);
        self.child = Some(child);

        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().ok().flatten() {
                let pid = self.child.take().unwrap().id();
                super::unregister_live(pid);
                return Err(format!(
                    "postgres exited ({status}) during startup\n--- postgres.log ---\n{}",
                    self.log()
                ));
            }
            // pg_isready: 0 = accepting, 1 = rejecting (starting up), 2 = no response.
            let ready = Command::new(format!("{BIN}/pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-t",
                    "2",
                ])
                .arg("-p")
                .arg(self.port.to_string())
                .stdin(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            // pg_isready alone could be answered by another process's server that took
            // the port; our own log says when *this* server is ready.
            if ready && self.log().contains("ready to accept connections") {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.log();
                self.stop();
                panic!(
                    "postgres did not accept connections on 127.0.0.1:{} within \
                     {STARTUP_DEADLINE:?}\n--- postgres.log ---\n{log}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/<db>`
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// URL of the default `postgres` database.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        run(
            Command::new(format!("{BIN}/createdb"))
                .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
                .arg(self.port.to_string())
                .arg("--")
                .arg(name)
                .stdin(Stdio::null()),
            &format!("create database {name:?} (postgres log:\n{})", self.log()),
        );
        self.url_for(name)
    }

    /// Runs SQL through psql against database `db` (ON_ERROR_STOP); returns psql's
    /// unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        run(
            Command::new(format!("{BIN}/psql"))
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
                .arg(self.port.to_string())
                .arg("-d")
                .arg(db)
                .arg("-c")
                .arg(sql)
                .stdin(Stdio::null()),
            "psql",
        )
    }

    /// Starts a stopped server again on the same port and data dir, so clients that
    /// knew it (a pool, postern) reconnect; returns once it accepts queries. The previous
    /// run's log is kept as `postgres.log.1`, `.2`, …
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "postgres is still running");
        let kept = (1..)
            .map(|n| self.dir.join(format!("postgres.log.{n}")))
            .find(|path| !path.exists())
            .expect("a free log name");
        let _ = fs::rename(self.log_path(), kept);
        if let Err(log) = self.spawn() {
            panic!(
                "postgres did not start again on 127.0.0.1:{}\n{log}",
                self.port
            );
        }
    }

    /// Fast shutdown (SIGINT to the postmaster, like `pg_ctl stop -m fast`) and wait for
    /// it to exit and the port to close. Idempotent; also done on Drop.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !stop_child(&mut child, Stop::Signal(SIGINT)) {
            eprintln!("postgres did not exit on SIGINT; killed\n{}", self.log());
        }
        wait_for_port_closed(self.port, "postgres", || self.log());
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(mut child) = self.child.take() {
                stop_child(&mut child, Stop::Signal(SIGINT));
            }
        } else {
            self.stop();
        }
    }
}

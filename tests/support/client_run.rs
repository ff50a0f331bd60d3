//! Real client programs (curl, swaks, python, mbsync) run as child processes, with what
//! they printed kept for failure messages.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use super::Dovecot;

/// How long one client run may take.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

/// What a finished client run left behind.
pub struct Run {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Run {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Everything needed to understand a failure.
    pub fn report(&self, dovecot: &Dovecot) -> String {
        format!(
            "{} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
            self.what,
            self.status,
            self.stdout_text(),
            self.stderr_text(),
            dovecot.all_logs()
        )
    }

    /// Panics with the report unless the client exited 0.
    pub fn assert_success(&self, dovecot: &Dovecot) {
        assert!(self.status.success(), "{}", self.report(dovecot));
    }

    /// Panics with the report unless the client exited with `code`.
    pub fn assert_exit(&self, code: i32, dovecot: &Dovecot) {
        assert_eq!(self.status.code(), Some(code), "{}", self.report(dovecot));
    }
}

/// Runs a client to completion with stdout and stderr in files under `scratch` (so that
/// what it printed survives a kill), stdin closed. Panics when it outlives
/// [`CLIENT_DEADLINE`], with whatever it printed and Dovecot's log.
pub async fn run_client(
    what: &str,
    cmd: &mut tokio::process::Command,
    scratch: &Path,
    dovecot: &Dovecot,
) -> Run {
    use std::sync::atomic::{AtomicU32, Ordering};
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let n = RUNS.fetch_add(1, Ordering::SeqCst);
    let out_path = scratch.join(format!("run{n}.stdout"));
    let err_path = scratch.join(format!("run{n}.stderr"));
    let out = std::fs::File::create(&out_path).expect("create stdout file");
    let err = std::fs::File::create(&err_path).expect("create stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    let waited = tokio::time::timeout(CLIENT_DEADLINE, child.wait()).await;
    let status = match waited {
        Ok(status) => status.unwrap_or_else(|e| panic!("{what}: wait: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            panic!(
                "{what} did not finish within {CLIENT_DEADLINE:?}\n--- stdout ---\n{}\n\
                 --- stderr ---\n{}\n{}",
                String::from_utf8_lossy(&std::fs::read(&out_path).unwrap_or_default()),
                String::from_utf8_lossy(&std::fs::read(&err_path).unwrap_or_default()),
                dovecot.all_logs()
            );
        }
    };
    Run {
        what: what.to_string(),
        status,
        stdout: std::fs::read(&out_path).expect("read stdout file"),
        stderr: std::fs::read(&err_path).expect("read stderr file"),
    }
}

//! The tiny SMTP server that Dovecot's submission service relays to
//! (`submission_relay_host`): it delivers each accepted message straight into the
//! recipients' Maildirs, so mail sent through submission shows up over IMAP.
//!
//! A recipient `local@domain` is the Dovecot user `local@domain` if that user exists,
//! else the user `local`; unknown recipients are refused with 550, and a message carrying
//! [`REJECT_MARKER`] is refused with 554 after DATA.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A message containing this header line is refused with 554 after DATA.
pub const REJECT_MARKER: &[u8] = b"X-Test-Reject: yes";

pub(crate) struct SmtpRelay {
    pub port: u16,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Clone)]
struct Target {
    /// Dir with one passwd-file per Dovecot user (existence = user exists).
    users_dir: PathBuf,
    mail_root: PathBuf,
    owner: Option<(u32, u32)>,
    log: Arc<Mutex<std::fs::File>>,
}

impl SmtpRelay {
    /// Listens on 127.0.0.1:<ephemeral>; appends what it does to `log_path`.
    pub fn start(
        users_dir: PathBuf,
        mail_root: PathBuf,
        owner: Option<(u32, u32)>,
        log_path: PathBuf,
    ) -> SmtpRelay {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("smtp relay: bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("smtp relay: open {}: {e}", log_path.display()));
        let target = Target {
            users_dir,
            mail_root,
            owner,
            log: Arc::new(Mutex::new(log)),
        };
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name(format!("smtp-relay-{port}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let target = target.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = session(conn, &target) {
                            target.log(&format!("session error: {e}"));
                        }
                    });
                }
            })
            .expect("spawn smtp relay thread");
        SmtpRelay {
            port,
            stopping,
            thread: Some(thread),
        }
    }

    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stopping.store(true, Ordering::SeqCst);
            // Wake the blocking accept().
            let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
            let _ = thread.join();
        }
    }
}

impl Drop for SmtpRelay {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Target {
    fn log(&self, line: &str) {
        let mut f = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(f, "smtp-relay: {line}");
    }

    fn user_for(&self, address: &str) -> Option<String> {
        let valid = |u: &str| {
            !u.is_empty()
                && !u.contains(['/', '\0'])
                && u != "."
                && u != ".."
                && self.users_dir.join(u).is_file()
        };
        if valid(address) {
            return Some(address.to_string());
        }
        let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
        valid(local).then(|| local.to_string())
    }
}

/// `<addr> [params]` after "MAIL FROM:" / "RCPT TO:".
fn path_arg(rest: &str) -> Option<String> {
    let rest = rest.trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_string())
}

fn session(stream: TcpStream, target: &Target) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    let mut reply = |s: &str| out.write_all(s.as_bytes());
    reply("220 postern-test-relay ESMTP\r\n")?;
    let mut from: Option<String> = None;
    let mut rcpts: Vec<(String, String)> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let upper = text.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            reply("250-postern-test-relay\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n")?;
        } else if upper.starts_with("HELO") {
            reply("250 postern-test-relay\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            match path_arg(&text[10..]) {
                Some(addr) => {
                    from = Some(addr);
                    rcpts.clear();
                    reply("250 2.1.0 Ok\r\n")?;
                }
                None => reply("501 5.5.4 Bad MAIL FROM\r\n")?,
            }
        } else if upper.starts_with("RCPT TO:") {
            match path_arg(&text[8..]) {
                None => reply("501 5.5.4 Bad RCPT TO\r\n")?,
                Some(_) if from.is_none() => reply("503 5.5.1 MAIL first\r\n")?,
                Some(addr) => match target.user_for(&addr) {
                    Some(user) => {
                        rcpts.push((addr, user));
                        reply("250 2.1.5 Ok\r\n")?;
                    }
                    None => {
                        target.log(&format!("refused RCPT TO:<{addr}>: no such user"));
                        reply("550 5.1.1 No such user\r\n")?;
                    }
                },
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                reply("503 5.5.1 RCPT first\r\n")?;
                continue;
            }
            reply("354 End data with <CR><LF>.<CR><LF>\r\n")?;
            let mut message = Vec::new();
            loop {
                line.clear();
                if input.read_until(b'\n', &mut line)? == 0 {
                    return Ok(());
                }
                if line == b".\r\n" || line == b".\n" {
                    break;
                }
                let body = if line.starts_with(b"..") {
                    &line[1..]
                } else {
                    &line[..]
                };
                message.extend_from_slice(body);
            }
            // A test asks for a rejection after DATA with this header.
            if message
                .windows(REJECT_MARKER.len())
                .any(|w| w.eq_ignore_ascii_case(REJECT_MARKER))
            {
                target.log("rejected a message carrying the reject marker");
                from = None;
                rcpts.clear();
                reply("554 5.6.0 Message rejected by the test relay\r\n")?;
                continue;
            }
            let mut failed = None;
            for (addr, user) in &rcpts {
                match super::dovecot::deliver_to_maildir(
                    &target.mail_root,
                    target.owner,
                    user,
                    &message,
                ) {
                    Ok(()) => target.log(&format!(
                        "MAIL FROM:<{}> RCPT TO:<{addr}>: delivered {} bytes to {user}",
                        from.as_deref().unwrap_or(""),
                        message.len()
                    )),
                    Err(e) => {
                        target.log(&format!("delivery to {user} failed: {e}"));
                        failed = Some(e);
                    }
                }
            }
            from = None;
            rcpts.clear();
            match failed {
                None => reply("250 2.0.0 Ok: delivered\r\n")?,
                Some(_) => reply("451 4.3.0 Delivery failed\r\n")?,
            }
        } else if upper == "RSET" {
            from = None;
            rcpts.clear();
            reply("250 2.0.0 Ok\r\n")?;
        } else if upper == "NOOP" {
            reply("250 2.0.0 Ok\r\n")?;
        } else if upper == "QUIT" {
            reply("221 2.0.0 Bye\r\n")?;
            return Ok(());
        } else {
            reply("502 5.5.2 Command not implemented\r\n")?;
        }
    }
}

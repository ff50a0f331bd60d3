//! A small POP3 client for load: greeting, USER/PASS, UIDL, RETR, QUIT. Multi-line
//! answers are read to their final dot and counted, not kept.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::net::{Buffered, Target, Tls};

pub struct Pop3Client {
    conn: Buffered<Tls>,
}

/// What a multi-line answer held.
#[derive(Clone, Copy, Debug)]
pub struct Listing {
    /// Lines between the `+OK` line and the final dot.
    pub lines: usize,
    /// Their bytes, line ends included (dot-stuffing not undone).
    pub bytes: u64,
}

impl Pop3Client {
    /// TCP + TLS + the greeting, which must be `+OK`.
    pub async fn connect(target: &Target, from: Option<IpAddr>) -> Result<Pop3Client> {
        let tls = target.connect(from).await?;
        let mut conn = Buffered::new(tls);
        let greeting = conn.read_line().await?;
        if !greeting.starts_with("+OK") {
            bail!("{} greeted with {greeting:?}", target.name);
        }
        Ok(Pop3Client { conn })
    }

    /// Sends `command` and reads its one-line answer, which must be `+OK`.
    pub async fn command(&mut self, command: &str) -> Result<String> {
        self.conn.send(format!("{command}\r\n").as_bytes()).await?;
        let line = self.conn.read_line().await?;
        if !line.starts_with("+OK") {
            let shown = if command.starts_with("PASS") {
                "PASS"
            } else {
                command
            };
            bail!("{shown}: {line}");
        }
        Ok(line)
    }

    /// USER and PASS, which must succeed.
    pub async fn login(&mut self, login: &str, password: &str) -> Result<()> {
        self.command(&format!("USER {login}")).await?;
        self.command(&format!("PASS {password}")).await?;
        Ok(())
    }

    /// A command with a multi-line answer (UIDL, LIST, RETR n, TOP n m).
    pub async fn listing(&mut self, command: &str) -> Result<Listing> {
        self.command(command).await?;
        let mut listing = Listing { lines: 0, bytes: 0 };
        loop {
            let (end, len) = self
                .conn
                .with_line(|line| (line == b".\r\n" || line == b".\n", line.len()))
                .await?;
            if end {
                return Ok(listing);
            }
            listing.lines += 1;
            listing.bytes += len as u64;
        }
    }

    /// QUIT, then close.
    pub async fn quit(mut self) -> Result<()> {
        self.command("QUIT").await?;
        self.conn.shutdown().await;
        Ok(())
    }
}

/// One whole login cycle, timed: connect, TLS, greeting, USER, PASS, QUIT.
pub async fn login_cycle(
    target: &Target,
    from: Option<IpAddr>,
    login: &str,
    password: &str,
) -> Result<Duration> {
    let started = Instant::now();
    let mut client = Pop3Client::connect(target, from).await?;
    client.login(login, password).await?;
    client.quit().await?;
    Ok(started.elapsed())
}

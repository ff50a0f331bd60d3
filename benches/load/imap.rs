//! A small IMAP client for load: greeting, LOGIN, SELECT, IDLE/DONE, FETCH, LOGOUT.
//! Responses are read to their tagged line and counted, not kept; literals (message
//! bodies) are skipped as they stream in.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::net::{Buffered, Target, Tls};
use crate::support::imap_client::literal_length;

/// The tagged status of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
}

/// What a command's response held.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: Status,
    /// The tagged line, without CRLF.
    pub tagged: String,
    /// Untagged (`* ...`) responses.
    pub untagged: usize,
    /// Bytes of literals in the response (message data).
    pub literal_bytes: u64,
}

impl Response {
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}

pub struct ImapClient {
    conn: Buffered<Tls>,
    next_tag: u32,
    idle_tag: Option<String>,
    /// The greeting line.
    pub greeting: String,
}

impl ImapClient {
    /// TCP + TLS + the greeting, which must be `* OK`.
    pub async fn connect(target: &Target, from: Option<IpAddr>) -> Result<ImapClient> {
        let tls = target.connect(from).await?;
        let mut conn = Buffered::new(tls);
        let greeting = conn.read_line().await?;
        if !greeting.starts_with("* OK") {
            bail!("{} greeted with {greeting:?}", target.name);
        }
        Ok(ImapClient {
            conn,
            next_tag: 1,
            idle_tag: None,
            greeting,
        })
    }

    fn tag(&mut self) -> String {
        let tag = format!("a{}", self.next_tag);
        self.next_tag += 1;
        tag
    }

    /// Sends `tag command` and reads the response up to its tagged line.
    pub async fn command(&mut self, command: &str) -> Result<Response> {
        let tag = self.tag();
        self.conn
            .send(format!("{tag} {command}\r\n").as_bytes())
            .await?;
        self.read_response(&tag).await
    }

    /// `LOGIN "login" "password"`: `Ok(response)` with the tagged status (NO for a refused
    /// login), `Err` when the connection failed.
    pub async fn login(&mut self, login: &str, password: &str) -> Result<Response> {
        self.command(&format!("LOGIN {} {}", quote(login), quote(password)))
            .await
    }

    /// LOGIN that must succeed.
    pub async fn login_ok(&mut self, login: &str, password: &str) -> Result<()> {
        let response = self.login(login, password).await?;
        if !response.is_ok() {
            bail!("login as {login} refused: {}", response.tagged);
        }
        Ok(())
    }

    /// SELECT that must succeed.
    pub async fn select(&mut self, mailbox: &str) -> Result<Response> {
        let response = self.command(&format!("SELECT {}", quote(mailbox))).await?;
        if !response.is_ok() {
            bail!("SELECT {mailbox}: {}", response.tagged);
        }
        Ok(response)
    }

    /// Starts IDLE and waits for the server's continuation (`+ idling`).
    pub async fn idle(&mut self) -> Result<()> {
        let tag = self.tag();
        self.conn.send(format!("{tag} IDLE\r\n").as_bytes()).await?;
        loop {
            let line = self.conn.read_line().await?;
            if line.starts_with('+') {
                self.idle_tag = Some(tag);
                return Ok(());
            }
            if line.starts_with(&format!("{tag} ")) {
                bail!("IDLE refused: {line}");
            }
        }
    }

    /// Ends IDLE (`DONE`) and reads its tagged response.
    pub async fn done(&mut self) -> Result<Response> {
        let Some(tag) = self.idle_tag.take() else {
            bail!("DONE without IDLE");
        };
        self.conn.send(b"DONE\r\n").await?;
        self.read_response(&tag).await
    }

    /// LOGOUT and its response.
    pub async fn logout(&mut self) -> Result<()> {
        let response = self.command("LOGOUT").await?;
        if !response.is_ok() {
            bail!("LOGOUT: {}", response.tagged);
        }
        Ok(())
    }

    /// Sends close_notify and FIN, best effort.
    pub async fn close(mut self) {
        self.conn.shutdown().await;
    }

    /// Lines up to the one tagged `tag`; literals skipped and counted.
    pub async fn read_response(&mut self, tag: &str) -> Result<Response> {
        let prefix = format!("{tag} ");
        let mut untagged = 0;
        let mut literal_bytes = 0;
        loop {
            let first = self.conn.read_line_bytes().await?;
            // A line ending in a literal continues after the literal's bytes.
            let mut current = first.clone();
            while let Some(n) = literal_length(&current).map(|n| n as u64) {
                self.conn.skip(n).await?;
                literal_bytes += n;
                current = self.conn.read_line_bytes().await?;
            }
            if first.starts_with(prefix.as_bytes()) {
                let tagged = String::from_utf8_lossy(&first)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                let rest = &tagged[prefix.len()..];
                let status = if rest.starts_with("OK") {
                    Status::Ok
                } else if rest.starts_with("NO") {
                    Status::No
                } else {
                    Status::Bad
                };
                return Ok(Response {
                    status,
                    tagged,
                    untagged,
                    literal_bytes,
                });
            }
            if first.starts_with(b"* ") {
                untagged += 1;
            }
        }
    }
}

/// One whole login cycle, timed: connect, TLS, greeting, LOGIN, LOGOUT.
pub async fn login_cycle(
    target: &Target,
    from: Option<IpAddr>,
    login: &str,
    password: &str,
) -> Result<Duration> {
    let started = Instant::now();
    let mut client = ImapClient::connect(target, from).await?;
    client.login_ok(login, password).await?;
    client.logout().await?;
    let elapsed = started.elapsed();
    drop(client);
    Ok(elapsed)
}

/// An authenticated session sitting in IDLE on INBOX.
pub async fn idle_session(target: &Target, login: &str, password: &str) -> Result<ImapClient> {
    let mut client = ImapClient::connect(target, None).await?;
    client.login_ok(login, password).await?;
    client.select("INBOX").await?;
    client.idle().await?;
    Ok(client)
}

/// An IMAP quoted string.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

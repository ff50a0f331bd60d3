//! A small SMTP submission client for load (EHLO, AUTH PLAIN, MAIL/RCPT/DATA, QUIT), and
//! the measurement of a server's RSS while one big message passes.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use base64::Engine as _;

use super::message::Generator;
use super::net::{Buffered, Target, Tls};
use super::procfs;

/// One SMTP reply: its code and its lines joined with '\n'.
#[derive(Clone, Debug)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

pub struct SmtpClient {
    conn: Buffered<Tls>,
    /// The greeting.
    pub greeting: String,
}

/// Body bytes per write.
const CHUNK: usize = 64 * 1024;

impl SmtpClient {
    /// TCP + TLS (implicit, 465-style) + a 220 greeting.
    pub async fn connect(target: &Target, from: Option<IpAddr>) -> Result<SmtpClient> {
        let tls = target.connect(from).await?;
        let mut client = SmtpClient {
            conn: Buffered::new(tls),
            greeting: String::new(),
        };
        let greeting = client.reply().await?;
        if greeting.code != 220 {
            bail!("{} greeted with {}", target.name, greeting.text);
        }
        client.greeting = greeting.text;
        Ok(client)
    }

    /// Connect, EHLO, AUTH PLAIN: a session ready for transactions.
    pub async fn connect_and_auth(
        target: &Target,
        from: Option<IpAddr>,
        login: &str,
        password: &str,
    ) -> Result<SmtpClient> {
        let mut client = Self::connect(target, from).await?;
        client.expect("EHLO bench.example.test", 250).await?;
        client.auth_plain(login, password).await?;
        Ok(client)
    }

    /// One complete reply.
    pub async fn reply(&mut self) -> Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self.conn.read_line().await?;
            let last = line.len() < 4 || line.as_bytes()[3] != b'-';
            lines.push(line);
            if last {
                break;
            }
        }
        let code = lines[0].get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok(Reply {
            code,
            text: lines.join("\n"),
        })
    }

    /// Sends `line` + CRLF and reads the reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply> {
        self.conn.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// A command whose reply must have `code`.
    pub async fn expect(&mut self, line: &str, code: u16) -> Result<Reply> {
        let reply = self.command(line).await?;
        if reply.code != code {
            let shown = line.split_whitespace().next().unwrap_or("");
            bail!("{shown}: expected {code}, got {}", reply.text);
        }
        Ok(reply)
    }

    /// AUTH PLAIN with an initial response; must succeed (235).
    pub async fn auth_plain(&mut self, login: &str, password: &str) -> Result<()> {
        let response =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{login}\0{password}"));
        let reply = self.command(&format!("AUTH PLAIN {response}")).await?;
        if reply.code != 235 {
            bail!("AUTH PLAIN as {login}: {}", reply.text);
        }
        Ok(())
    }

    /// MAIL FROM (with SIZE), RCPT TO, DATA: up to the 354.
    async fn begin(&mut self, from: &str, to: &str, size: u64) -> Result<()> {
        self.expect(&format!("MAIL FROM:<{from}> SIZE={size}"), 250)
            .await?;
        self.expect(&format!("RCPT TO:<{to}>"), 250).await?;
        self.expect("DATA", 354).await?;
        Ok(())
    }

    /// The final dot, and a 250 for it.
    async fn finish(&mut self) -> Result<()> {
        let reply = self.command(".").await?;
        if reply.code != 250 {
            bail!("message refused: {}", reply.text);
        }
        Ok(())
    }

    /// One transaction with a message in memory (CRLF lines, none starting with a dot,
    /// ending with CRLF).
    pub async fn send_message(&mut self, from: &str, to: &str, message: &[u8]) -> Result<()> {
        self.begin(from, to, message.len() as u64).await?;
        for chunk in message.chunks(CHUNK) {
            self.conn.write(chunk).await?;
        }
        self.finish().await
    }

    /// One transaction with a generated message streamed in 64 KiB writes. Returns the
    /// time from DATA to the reply after the dot.
    pub async fn send_generated(
        &mut self,
        from: &str,
        to: &str,
        mut message: Generator,
    ) -> Result<Duration> {
        self.begin(from, to, message.total_len()).await?;
        let started = Instant::now();
        self.conn.write(&message.header()).await?;
        let mut chunk = Vec::with_capacity(CHUNK);
        while message.next_chunk(&mut chunk, CHUNK) {
            self.conn.write(&chunk).await?;
            chunk.clear();
        }
        self.finish().await?;
        Ok(started.elapsed())
    }

    /// QUIT and its 221.
    pub async fn quit(mut self) -> Result<()> {
        self.expect("QUIT", 221).await?;
        Ok(())
    }
}

/// A server process's memory while one big message passed through it.
#[derive(Clone, Copy, Debug)]
pub struct BigMessage {
    /// VmRSS right after the high-water mark was reset.
    pub baseline_kib: u64,
    /// VmHWM after the message (or the sampled peak when the reset was not permitted).
    pub peak_kib: u64,
    /// The largest VmRSS seen every 10 ms.
    pub sampled_peak_kib: u64,
    /// Whether /proc/<pid>/clear_refs accepted the reset.
    pub hwm_reset: bool,
    /// VmRSS right after the message.
    pub after_kib: u64,
    /// DATA to the reply after the dot.
    pub data_time: Duration,
    /// The whole session: connect to QUIT.
    pub total_time: Duration,
}

impl BigMessage {
    pub fn growth_mib(&self) -> f64 {
        (self.peak_kib as f64 - self.baseline_kib as f64) / 1024.0
    }
}

/// Resets `pid`'s high-water mark, then sends one generated message through `target`
/// (connect, EHLO, AUTH PLAIN, one transaction, QUIT) while sampling `pid`'s RSS.
pub async fn measure_big_message(
    pid: u32,
    target: &Target,
    login: &str,
    password: &str,
    (from, to): (&str, &str),
    message: Generator,
) -> Result<BigMessage> {
    let hwm_reset = procfs::reset_hwm(pid);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let baseline = procfs::memory(pid);
    let sampler = procfs::Sampler::start(pid);
    let started = Instant::now();
    let sent = async {
        let mut client = SmtpClient::connect_and_auth(target, None, login, password).await?;
        let data_time = client.send_generated(from, to, message).await?;
        client.quit().await?;
        anyhow::Ok(data_time)
    }
    .await;
    let total_time = started.elapsed();
    let sampled_peak_kib = sampler.stop();
    let after = procfs::memory(pid);
    let data_time = sent?;
    Ok(BigMessage {
        baseline_kib: baseline.rss_kib,
        peak_kib: if hwm_reset {
            after.hwm_kib
        } else {
            sampled_peak_kib
        },
        sampled_peak_kib,
        hwm_reset,
        after_kib: after.rss_kib,
        data_time,
        total_time,
    })
}

//! A small async SMTP client for byte-level scripts: send exact bytes, read whole replies.

use std::net::SocketAddr;
use std::path::Path;

use tokio_util::either::Either;

use super::ClientStream as Stream;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::imap_client::{connector, REPLY_DEADLINE};

pub struct SmtpClient {
    stream: Stream,
    buffer: Vec<u8>,
    /// Every reply line read so far, for failure messages.
    pub transcript: Vec<String>,
}

impl SmtpClient {
    /// Implicit TLS; returns the client and the greeting.
    pub async fn connect_tls(address: SocketAddr, ca_path: &Path) -> (SmtpClient, String) {
        let tcp = TcpStream::connect(address).await.expect("connect");
        let tls = connector(ca_path)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake with postern");
        let mut client = SmtpClient::new(Either::Right(tls));
        let greeting = client.read_reply().await;
        (client, greeting)
    }

    /// Plaintext; returns the client and the greeting.
    pub async fn connect_plain(address: SocketAddr) -> (SmtpClient, String) {
        let tcp = TcpStream::connect(address).await.expect("connect");
        let mut client = SmtpClient::new(Either::Left(tcp));
        let greeting = client.read_reply().await;
        (client, greeting)
    }

    fn new(stream: Stream) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
            transcript: Vec::new(),
        }
    }

    /// STARTTLS, its 220, then the handshake.
    pub async fn starttls(&mut self, ca_path: &Path) {
        let reply = self.command("STARTTLS").await;
        assert!(reply.starts_with("220 "), "{reply}");
        let placeholder = Either::Left(placeholder_tcp().await);
        let tcp = super::into_plain(std::mem::replace(&mut self.stream, placeholder));
        let tls = connector(ca_path)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake after STARTTLS");
        self.stream = Either::Right(tls);
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("write to postern");
        self.stream.flush().await.expect("flush");
    }

    /// Sends `command` + CRLF and returns the whole reply (lines joined with '\n').
    pub async fn command(&mut self, command: &str) -> String {
        self.send(format!("{command}\r\n").as_bytes()).await;
        self.read_reply().await
    }

    /// One complete reply, its lines joined with '\n', without CRLFs.
    pub async fn read_reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await;
            let last = line.len() < 4 || line.as_bytes()[3] != b'-';
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    async fn read_line(&mut self) -> String {
        let read = tokio::time::timeout(REPLY_DEADLINE, async {
            loop {
                if let Some(lf) = self.buffer.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.buffer.drain(..=lf).collect();
                    return Some(
                        String::from_utf8_lossy(&line)
                            .trim_end_matches(['\r', '\n'])
                            .to_string(),
                    );
                }
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        match read {
            Ok(Some(line)) => {
                self.transcript.push(line.clone());
                line
            }
            Ok(None) => panic!(
                "postern closed the connection; transcript: {:#?}",
                self.transcript
            ),
            Err(_) => panic!(
                "no reply within {REPLY_DEADLINE:?}; transcript: {:#?}",
                self.transcript
            ),
        }
    }

    /// Whether postern closes the connection within `deadline`.
    pub async fn closed_within(&mut self, deadline: std::time::Duration) -> bool {
        tokio::time::timeout(deadline, async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }
}

async fn placeholder_tcp() -> TcpStream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap()
}

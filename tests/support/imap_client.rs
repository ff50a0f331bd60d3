//! A small async IMAP client for byte-level scripts: send exact bytes, read exact lines.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::either::Either;

use super::ClientStream as Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long one expected reply may take before the test fails with what it saw.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(20);

pub struct ImapClient {
    stream: Stream,
    buffer: Vec<u8>,
    /// Every line read so far, for failure messages.
    pub transcript: Vec<String>,
}

/// A rustls connector trusting only the CA at `ca_path`.
pub fn connector(ca_path: &Path) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_path).expect("read CA") {
        roots.add(cert.expect("CA cert")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

impl ImapClient {
    /// Connects with implicit TLS and reads the greeting.
    pub async fn connect_tls(address: SocketAddr, ca_path: &Path) -> (ImapClient, String) {
        let tcp = TcpStream::connect(address).await.expect("connect");
        Self::handshake(tcp, connector(ca_path)).await
    }

    /// Like `connect_tls`, from the local address `from` (any of 127.0.0.0/8), so the
    /// client's address differs from postern's.
    pub async fn connect_tls_from(
        from: std::net::IpAddr,
        address: SocketAddr,
        ca_path: &Path,
    ) -> (ImapClient, String) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(from, 0))
            .expect("bind client address");
        let tcp = socket.connect(address).await.expect("connect");
        Self::handshake(tcp, connector(ca_path)).await
    }

    /// The TLS handshake with `connector`, then the greeting.
    pub async fn handshake(tcp: TcpStream, connector: TlsConnector) -> (ImapClient, String) {
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake with postern");
        let mut client = ImapClient::new(Either::Right(tls));
        let greeting = client.read_line().await;
        (client, greeting)
    }

    /// Connects in plaintext and reads the greeting.
    pub async fn connect_plain(address: SocketAddr) -> (ImapClient, String) {
        let tcp = TcpStream::connect(address).await.expect("connect");
        let mut client = ImapClient::new(Either::Left(tcp));
        let greeting = client.read_line().await;
        (client, greeting)
    }

    fn new(stream: Stream) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
            transcript: Vec::new(),
        }
    }

    /// `tag STARTTLS`, its OK, then the TLS handshake.
    pub async fn starttls(&mut self, tag: &str, ca_path: &Path) {
        let reply = self.command(tag, "STARTTLS").await;
        assert_eq!(
            reply.last().unwrap(),
            &format!("{tag} OK Begin TLS negotiation now")
        );
        assert!(self.buffer.is_empty(), "bytes after the STARTTLS reply");
        let stream = std::mem::replace(&mut self.stream, Either::Left(dummy_tcp().await));
        let tcp = super::into_plain(stream);
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

    /// Sends `tag command\r\n` and returns every line up to and including the tagged one.
    pub async fn command(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        self.read_tagged(tag).await
    }

    /// Lines up to and including the one tagged `tag`.
    pub async fn read_tagged(&mut self, tag: &str) -> Vec<String> {
        let prefix = format!("{tag} ");
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await;
            let done = line.starts_with(&prefix);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// One response line without CRLF; literals are folded in.
    pub async fn read_line(&mut self) -> String {
        match tokio::time::timeout(REPLY_DEADLINE, self.next_line()).await {
            Ok(Some(line)) => line,
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

    /// `None` when the connection closed cleanly before a full line.
    pub async fn next_line(&mut self) -> Option<String> {
        let mut from = 0;
        loop {
            if let Some(lf) = self.buffer[from..].iter().position(|&b| b == b'\n') {
                let end = from + lf + 1;
                let line = &self.buffer[..end];
                if let Some(length) = literal_length(line) {
                    if self.buffer.len() >= end + length {
                        from = end + length;
                        continue;
                    }
                } else {
                    let text = String::from_utf8_lossy(&self.buffer[..end])
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    self.buffer.drain(..end);
                    self.transcript.push(text.clone());
                    return Some(text);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Raw bytes as they arrive (buffered ones first); `None` once the connection closed.
    pub async fn read_raw(&mut self) -> Option<Vec<u8>> {
        if !self.buffer.is_empty() {
            return Some(std::mem::take(&mut self.buffer));
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(REPLY_DEADLINE, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => None,
            Ok(Ok(n)) => Some(chunk[..n].to_vec()),
            Err(_) => panic!("no bytes within {REPLY_DEADLINE:?}"),
        }
    }

    /// Waits until postern closes the connection; false if it stays open past `deadline`.
    pub async fn closed_within(&mut self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, async {
            while self.next_line().await.is_some() {}
        })
        .await
        .is_ok()
    }
}

/// `{N}` or `{N+}` at the end of a line: the length of the literal that follows.
pub fn literal_length(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&inner[open + 1..])
        .ok()?
        .trim_end_matches('+')
        .parse()
        .ok()
}

async fn dummy_tcp() -> TcpStream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap()
}

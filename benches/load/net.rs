//! Connections: TLS connectors trusting one CA, TCP with TCP_NODELAY from an optional
//! source address, and a buffered reader for line protocols that can skip bulk bytes.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// A TLS client stream.
pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// How long one read may wait before the operation fails (a stuck peer must not hang a
/// whole benchmark).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a load client connects: an address, the TLS settings to trust it, and a name
/// for reports ("postern", "direct").
#[derive(Clone)]
pub struct Target {
    pub name: &'static str,
    pub address: SocketAddr,
    pub connector: TlsConnector,
}

impl Target {
    pub fn new(name: &'static str, address: SocketAddr, connector: TlsConnector) -> Target {
        Target {
            name,
            address,
            connector,
        }
    }

    /// TCP (TCP_NODELAY, from `from` when given), then the TLS handshake for "localhost".
    pub async fn connect(&self, from: Option<IpAddr>) -> Result<Tls> {
        let tcp = connect_tcp(self.address, from).await?;
        let tls = self
            .connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .with_context(|| format!("TLS handshake with {}", self.name))?;
        Ok(tls)
    }
}

/// A rustls connector trusting only the CA(s) in `ca_path`. With `resume` false the
/// client never resumes a TLS session, so every connection pays a full handshake.
pub fn connector(ca_path: &Path, resume: bool) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_path).expect("read CA file") {
        roots.add(cert.expect("CA certificate")).expect("add CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    TlsConnector::from(Arc::new(config))
}

/// Connects to `address` with TCP_NODELAY set, from the local address `from` (any of
/// 127.0.0.0/8 on loopback) when given.
pub async fn connect_tcp(address: SocketAddr, from: Option<IpAddr>) -> Result<TcpStream> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_nodelay(true)?;
    if let Some(ip) = from {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let tcp = socket
        .connect(address)
        .await
        .with_context(|| format!("connect {address}"))?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// A stream with a read buffer: whole lines, or bytes skipped in bulk.
pub struct Buffered<S> {
    pub stream: S,
    buf: Vec<u8>,
    start: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Buffered<S> {
    pub fn new(stream: S) -> Self {
        Buffered {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            start: 0,
        }
    }

    /// Reads more bytes into the buffer; an error at end of stream.
    async fn fill(&mut self) -> Result<()> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + 32 * 1024, 0);
        let read = tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut self.buf[len..])).await;
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                self.buf.truncate(len);
                return Err(e.into());
            }
            Err(_) => {
                self.buf.truncate(len);
                bail!("no data within {READ_TIMEOUT:?}");
            }
        };
        self.buf.truncate(len + n);
        if n == 0 {
            bail!("connection closed by the peer");
        }
        Ok(())
    }

    /// The next line, CRLF included, as bytes.
    pub async fn read_line_bytes(&mut self) -> Result<Vec<u8>> {
        self.with_line(<[u8]>::to_vec).await
    }

    /// Hands the next line, CRLF included, to `f` without copying it.
    pub async fn with_line<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        let mut scanned = self.start;
        loop {
            if let Some(lf) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + lf + 1;
                let result = f(&self.buf[self.start..end]);
                self.start = end;
                return Ok(result);
            }
            scanned = self.buf.len();
            let offset = scanned - self.start;
            self.fill().await?;
            scanned = self.start + offset;
        }
    }

    /// The next line without its CRLF, lossily decoded.
    pub async fn read_line(&mut self) -> Result<String> {
        let bytes = self.read_line_bytes().await?;
        Ok(String::from_utf8_lossy(&bytes)
            .trim_end_matches(['\r', '\n'])
            .to_string())
    }

    /// Reads and discards exactly `n` bytes.
    pub async fn skip(&mut self, mut n: u64) -> Result<()> {
        loop {
            let buffered = (self.buf.len() - self.start) as u64;
            if buffered >= n {
                self.start += n as usize;
                return Ok(());
            }
            n -= buffered;
            self.start = self.buf.len();
            self.fill().await?;
        }
    }

    /// Writes all of `bytes` and flushes.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Writes without flushing (a TLS stream still encrypts and sends what it can).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Sends close_notify / FIN, best effort.
    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}

/// A throw-away RSA-2048 CA and a leaf for "localhost" / 127.0.0.1 signed by it, made
/// with the `openssl` command (rcgen on ring cannot generate RSA keys). The chain file
/// holds the leaf then the CA.
pub fn rsa_chain(dir: &Path) -> crate::support::dovecot::TlsFiles {
    use std::process::Command;
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (needed for RSA certificates; BENCH_TLS_KEY=ecdsa avoids it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "rsa-ca.key",
        "-out",
        "rsa-ca.pem",
        "-days",
        "7",
        "-subj",
        "/CN=postern bench RSA CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "rsa-leaf.key",
        "-out",
        "rsa-leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("rsa-leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "rsa-leaf.csr",
        "-CA",
        "rsa-ca.pem",
        "-CAkey",
        "rsa-ca.key",
        "-CAcreateserial",
        "-out",
        "rsa-leaf.pem",
        "-days",
        "7",
        "-extfile",
        "rsa-leaf.ext",
    ]);
    let leaf = std::fs::read_to_string(dir.join("rsa-leaf.pem")).unwrap();
    let ca = std::fs::read_to_string(dir.join("rsa-ca.pem")).unwrap();
    std::fs::write(dir.join("rsa-chain.pem"), format!("{leaf}{ca}")).unwrap();
    crate::support::chmod(dir, 0o755);
    for file in ["rsa-chain.pem", "rsa-ca.pem"] {
        crate::support::chmod(&dir.join(file), 0o644);
    }
    crate::support::dovecot::TlsFiles {
        ca: dir.join("rsa-ca.pem"),
        cert: dir.join("rsa-chain.pem"),
        key: dir.join("rsa-leaf.key"),
    }
}

//! A TCP connection that may be upgraded to TLS in place (STARTTLS), on either side.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::tls::stream::{ClientTls, ServerTls};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client or upstream connection, plaintext or TLS.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    /// A client's TLS connection to postern.
    TlsServer(Box<ServerTls>),
    /// postern's TLS connection to the upstream.
    TlsClient(Box<ClientTls>),
}

impl Stream {
    /// Whether TLS is active.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::TlsServer(tls) => tls.tcp(),
            Stream::TlsClient(tls) => tls.tcp(),
        }
    }

    /// The plaintext TCP connection, for a STARTTLS upgrade; `None` if TLS is already on.
    pub fn into_plain(self) -> Result<TcpStream, Stream> {
        match self {
            Stream::Plain(tcp) => Ok(tcp),
            tls => Err(tls),
        }
    }

    /// Writes the replies queued in `output`, empties it, and flushes (TLS needs the
    /// flush to put the record on the wire).
    pub async fn send_queued(&mut self, output: &mut Vec<u8>) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if !output.is_empty() {
            self.write_all(output).await?;
            output.clear();
        }
        self.flush().await
    }

    /// The negotiated TLS version, for logs.
    pub fn tls_version(&self) -> Option<&'static str> {
        let version = match self {
            Stream::Plain(_) => None,
            Stream::TlsServer(tls) => tls.protocol_version(),
            Stream::TlsClient(tls) => tls.protocol_version(),
        };
        version.and_then(|v| v.as_str())
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

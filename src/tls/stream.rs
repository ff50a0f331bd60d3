//! TLS over TCP on rustls' unbuffered API, for both sides: clients connecting to postern
//! and postern connecting upstream. It holds a buffer only while bytes are in flight, so a
//! session idling in IMAP IDLE for hours keeps its TLS state and nothing more; rustls'
//! buffered connection (as tokio-rustls drives it) keeps a 4 KiB read buffer for the
//! connection's whole life, on each side of every session.

use std::io;
use std::ops::DerefMut;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedConnectionCommon,
    UnbufferedStatus,
};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Ciphertext read from the socket at a time: one full TLS record and its header.
const READ_SIZE: usize = 16 * 1024 + 512;

/// Incoming ciphertext held at most: a handshake flight rustls joins (64 KiB) and a
/// record. A peer that sends more without completing a record is refused.
const MAX_INCOMING: usize = 64 * 1024 + READ_SIZE;

/// Plaintext encrypted per write call: four full records.
const MAX_WRITE: usize = 64 * 1024;

/// Bytes of TLS framing per record on top of its plaintext, a first guess at the size
/// of the ciphertext (rustls names the exact size when the guess is short).
const RECORD_OVERHEAD: usize = 64;

/// Plaintext bytes per TLS record.
const RECORD_PAYLOAD: usize = 16 * 1024;

/// One side of a connection: what the stream needs of rustls' two unbuffered connections.
pub trait Side: DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> + Send + Unpin {
    type Data;

    /// [`UnbufferedConnectionCommon::process_tls_records`] of this side.
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Side for UnbufferedServerConnection {
    type Data = ServerConnectionData;

    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.deref_mut().process_tls_records(incoming)
    }
}

impl Side for UnbufferedClientConnection {
    type Data = ClientConnectionData;

    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.deref_mut().process_tls_records(incoming)
    }
}

/// A TLS connection over TCP, server or client side. Reads and writes plaintext.
pub struct TlsStream<S> {
    conn: S,
    io: Io,
}

impl<S: Side> std::fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.io.tcp)
            .field("version", &self.conn.protocol_version())
            .field("incoming", &self.io.incoming.len())
            .field(
                "outgoing",
                &(self.io.outgoing.len() - self.io.outgoing_sent),
            )
            .field(
                "plaintext",
                &(self.io.plaintext.len() - self.io.plaintext_read),
            )
            .finish_non_exhaustive()
    }
}

/// A client's connection to postern.
pub type ServerTls = TlsStream<UnbufferedServerConnection>;
/// postern's connection to the upstream.
pub type ClientTls = TlsStream<UnbufferedClientConnection>;

/// The socket and the bytes in flight, each buffer freed when it empties.
#[derive(Debug)]
struct Io {
    tcp: TcpStream,
    /// Ciphertext read and not yet processed (a partial record, or records not yet read).
    incoming: Vec<u8>,
    /// Ciphertext encoded and not yet written, from `outgoing_sent` on.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    /// Plaintext decrypted and not yet read, from `plaintext_read` on.
    plaintext: Vec<u8>,
    plaintext_read: usize,
    /// The peer's close_notify came: the end of its data.
    close_notify_received: bool,
    /// The socket's end of file came (after close_notify, or without it: a truncation).
    eof: bool,
    /// Our close_notify is queued.
    write_closed: bool,
}

/// What the caller of [`TlsStream::step`] is doing, which decides what a connection
/// ready for application data means.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// Completing the handshake: ready means done, once what it produced is sent.
    Handshake,
    /// Reading: ready means more ciphertext is needed.
    Read,
    /// Writing these bytes: ready means encrypt (some of) them.
    Write(&'a [u8]),
    /// Closing: ready means queue a close_notify.
    Close,
}

/// What to do after one state of the connection was handled.
enum Step {
    /// Ask the connection for its next state.
    Again,
    /// More ciphertext from the peer is needed.
    NeedInput,
    /// Done: the handshake is over, or this many bytes of the write (0 for a close) were
    /// encrypted into `outgoing`.
    Done(usize),
    /// Waiting for the socket.
    Pending,
    Failed(io::Error),
}

impl TlsStream<UnbufferedServerConnection> {
    /// The server side of a handshake on `tcp`: a client connecting to postern.
    pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        TlsStream::new(conn, tcp).handshake().await
    }
}

impl TlsStream<UnbufferedClientConnection> {
    /// The client side of a handshake on `tcp`: postern connecting to `name`.
    pub async fn connect(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> io::Result<Self> {
        let conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
        TlsStream::new(conn, tcp).handshake().await
    }
}

impl<S: Side> TlsStream<S> {
    fn new(conn: S, tcp: TcpStream) -> Self {
        TlsStream {
            conn,
            io: Io {
                tcp,
                incoming: Vec::new(),
                outgoing: Vec::new(),
                outgoing_sent: 0,
                plaintext: Vec::new(),
                plaintext_read: 0,
                close_notify_received: false,
                eof: false,
                write_closed: false,
            },
        }
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.io.tcp
    }

    /// Whether the handshake resumed an earlier session (no certificate, no signature).
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// The negotiated protocol version, once the handshake is over.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Drives the handshake until application data may flow both ways and everything the
    /// handshake produced (a server's session tickets too) is on the wire.
    async fn handshake(mut self) -> io::Result<Self> {
        let shook = std::future::poll_fn(|cx| self.poll_until_done(cx, Mode::Handshake)).await;
        if let Err(error) = shook {
            self.send_alert();
            return Err(error);
        }
        Ok(self)
    }

    /// Steps through the connection's states until `mode` is done.
    fn poll_until_done(&mut self, cx: &mut Context<'_>, mode: Mode<'_>) -> Poll<io::Result<usize>> {
        loop {
            match self.step(cx, mode) {
                Step::Again => {}
                Step::NeedInput => ready!(self.io.poll_fill(cx))?,
                Step::Done(n) => return Poll::Ready(Ok(n)),
                Step::Pending => return Poll::Pending,
                Step::Failed(error) => return Poll::Ready(Err(error)),
            }
        }
    }

    /// Handles the connection's next state: decrypted data goes to `plaintext`, encoded
    /// records to `outgoing`, which is sent when the connection asks for it. Every state
    /// is handled whatever the mode, and the processed bytes are discarded before the
    /// connection is asked again, as rustls requires.
    fn step(&mut self, cx: &mut Context<'_>, mode: Mode<'_>) -> Step {
        let Self { conn, io } = self;
        let UnbufferedStatus { mut discard, state } = conn.process(&mut io.incoming);
        let step = match state {
            Err(error) => Step::Failed(tls_error(error)),
            Ok(ConnectionState::ReadTraffic(mut traffic)) => loop {
                match traffic.next_record() {
                    None => break Step::Again,
                    Some(Ok(record)) => {
                        discard += record.discard;
                        io.plaintext.extend_from_slice(record.payload);
                    }
                    Some(Err(error)) => break Step::Failed(tls_error(error)),
                }
            },
            Ok(ConnectionState::PeerClosed) => {
                io.close_notify_received = true;
                Step::Again
            }
            Ok(ConnectionState::Closed) => match mode {
                Mode::Read => {
                    io.close_notify_received = true;
                    Step::Done(0)
                }
                _ => Step::Failed(io::ErrorKind::BrokenPipe.into()),
            },
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                match grow_into(&mut io.outgoing, RECORD_OVERHEAD, |out| encode.encode(out)) {
                    Ok(()) => Step::Again,
                    Err(error) => Step::Failed(error),
                }
            }
            Ok(ConnectionState::TransmitTlsData(transmit)) => match io.poll_send(cx) {
                Poll::Ready(Ok(())) => {
                    transmit.done();
                    Step::Again
                }
                Poll::Ready(Err(error)) => Step::Failed(error),
                Poll::Pending => Step::Pending,
            },
            Ok(ConnectionState::BlockedHandshake) => Step::NeedInput,
            Ok(ConnectionState::WriteTraffic(mut traffic)) => match mode {
                Mode::Handshake => match io.poll_send(cx) {
                    Poll::Ready(Ok(())) => Step::Done(0),
                    Poll::Ready(Err(error)) => Step::Failed(error),
                    Poll::Pending => Step::Pending,
                },
                Mode::Read => Step::NeedInput,
                Mode::Write(data) => {
                    let data = &data[..data.len().min(MAX_WRITE)];
                    let overhead = RECORD_OVERHEAD * (data.len() / RECORD_PAYLOAD + 1);
                    let encrypted = grow_into(&mut io.outgoing, data.len() + overhead, |out| {
                        traffic.encrypt(data, out)
                    });
                    match encrypted {
                        Ok(()) => Step::Done(data.len()),
                        Err(error) => Step::Failed(error),
                    }
                }
                Mode::Close => {
                    let queued = grow_into(&mut io.outgoing, RECORD_OVERHEAD, |out| {
                        traffic.queue_close_notify(out)
                    });
                    match queued {
                        Ok(()) => Step::Done(0),
                        Err(error) => Step::Failed(error),
                    }
                }
            },
            // 0-RTT is never offered; any other state is one this code does not know.
            Ok(_) => Step::Failed(io::Error::other("unexpected TLS connection state")),
        };
        io.discard(discard);
        step
    }

    /// After a failed handshake: sends the alert rustls queued for the peer (why it was
    /// refused), if the socket takes it at once.
    fn send_alert(&mut self) {
        let Self { conn, io } = self;
        let UnbufferedStatus { discard, state } = conn.process(&mut io.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            if grow_into(&mut io.outgoing, RECORD_OVERHEAD, |out| encode.encode(out)).is_ok() {
                let _ = io.tcp.try_write(&io.outgoing[io.outgoing_sent..]);
            }
        }
        io.discard(discard);
    }
}

impl Io {
    /// Reads what the socket has, once it is readable; the read buffer is allocated only
    /// then. More input wanted after the end of file is a truncation.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.eof {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed connection without sending TLS close_notify",
            )));
        }
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS peer sent too much without completing a record",
            )));
        }
        // Readable first, so an idle connection holds no read buffer. The read itself is
        // tokio's: a short read marks the socket drained, so the next wait starts without
        // a read that would block, and the readiness flag tells the truth.
        ready!(self.tcp.poll_read_ready(cx))?;
        self.incoming.reserve(READ_SIZE);
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.tcp), cx, &mut self.incoming);
        if !matches!(read, Poll::Ready(Ok(n)) if n > 0) {
            self.release_incoming();
        }
        if ready!(read)? == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Drops `discard` processed bytes from the front of `incoming`.
    fn discard(&mut self, discard: usize) {
        if discard > 0 {
            self.incoming.drain(..discard);
        }
        self.release_incoming();
    }

    fn release_incoming(&mut self) {
        if self.incoming.is_empty() && self.incoming.capacity() > 0 {
            self.incoming = Vec::new();
        }
    }

    /// Writes `outgoing` to the socket, all of it, then frees it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.outgoing_sent < self.outgoing.len() {
            let unsent = &self.outgoing[self.outgoing_sent..];
            let written = ready!(Pin::new(&mut self.tcp).poll_write(cx, unsent))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing_sent += written;
        }
        self.outgoing = Vec::new();
        self.outgoing_sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Copies decrypted bytes to `buf`; whether there were any.
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let unread = &self.plaintext[self.plaintext_read..];
        if unread.is_empty() {
            return false;
        }
        let n = unread.len().min(buf.remaining());
        buf.put_slice(&unread[..n]);
        self.plaintext_read += n;
        if self.plaintext_read == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plaintext_read = 0;
        }
        true
    }
}

/// Runs `encode` on room at the end of `buffer` (first `guess` bytes, then what it says it
/// needs) and keeps what it wrote.
fn grow_into<E: TooSmall>(
    buffer: &mut Vec<u8>,
    guess: usize,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()> {
    let start = buffer.len();
    let mut room = guess;
    loop {
        buffer.resize(start + room, 0);
        match encode(&mut buffer[start..]) {
            Ok(written) => {
                buffer.truncate(start + written);
                return Ok(());
            }
            Err(error) => match error.needs() {
                Some(needed) if needed > room => room = needed,
                _ => {
                    buffer.truncate(start);
                    return Err(io::Error::other(error.to_string()));
                }
            },
        }
    }
}

/// rustls' two "the buffer is too small" errors, for [`grow_into`].
trait TooSmall: std::fmt::Display {
    /// The room needed, when the buffer was too small.
    fn needs(&self) -> Option<usize>;
}

impl TooSmall for EncodeError {
    fn needs(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        }
    }
}

impl TooSmall for EncryptError {
    fn needs(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        }
    }
}

/// A rustls error as an I/O error, as tokio-rustls reports it (InvalidData, the rustls
/// error as the source).
fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl<S: Side> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.io.take_plaintext(buf) || this.io.close_notify_received {
                return Poll::Ready(Ok(()));
            }
            match this.step(cx, Mode::Read) {
                Step::Again | Step::Done(_) => {}
                Step::NeedInput => ready!(this.io.poll_fill(cx))?,
                Step::Pending => return Poll::Pending,
                Step::Failed(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl<S: Side> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.io.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // What an earlier write encrypted goes first: at most one batch is held.
        ready!(this.io.poll_send(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let written = ready!(this.poll_until_done(cx, Mode::Write(buf)))?;
        // Start sending now; what the socket does not take goes with the next write or
        // flush.
        if let Poll::Ready(Err(error)) = this.io.poll_send(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io.poll_send(cx)
    }

    /// Sends close_notify, then closes the socket's sending side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.io.poll_send(cx))?;
        if !this.io.write_closed {
            if !this.conn.is_handshaking() {
                ready!(this.poll_until_done(cx, Mode::Close))?;
            }
            this.io.write_closed = true;
            ready!(this.io.poll_send(cx))?;
        }
        match ready!(Pin::new(&mut this.io.tcp).poll_shutdown(cx)) {
            // Not connected any more is closed enough.
            Err(error) if error.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(error)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::RootCertStore;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A self-signed certificate for localhost, and configurations that use and trust it.
    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = CertificateDer::from(generated.cert.der().to_vec());
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()));
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        (connected.unwrap(), accepted.unwrap().0)
    }

    fn localhost() -> ServerName<'static> {
        ServerName::try_from("localhost").unwrap()
    }

    /// Deterministic bytes that show a reordering or a lost chunk.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn holds_no_buffer<S: Side>(tls: &TlsStream<S>) {
        assert_eq!(tls.io.incoming.capacity(), 0, "read buffer kept");
        assert_eq!(tls.io.outgoing.capacity(), 0, "write buffer kept");
        assert_eq!(tls.io.plaintext.capacity(), 0, "plaintext buffer kept");
    }

    #[tokio::test]
    async fn serves_a_tokio_rustls_client_and_keeps_no_buffer_between_exchanges() {
        let (server_config, client_config) = configs();
        let (client_tcp, server_tcp) = tcp_pair().await;
        let connector = tokio_rustls::TlsConnector::from(client_config);
        let (client, server) = tokio::join!(
            connector.connect(localhost(), client_tcp),
            ServerTls::accept(server_config, server_tcp)
        );
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        holds_no_buffer(&server);

        // A greeting, a small command, then 1 MiB each way.
        server.write_all(b"* OK ready\r\n").await.unwrap();
        server.flush().await.unwrap();
        let mut greeting = [0u8; 12];
        client.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"* OK ready\r\n");
        client.write_all(b"a1 NOOP\r\n").await.unwrap();
        client.flush().await.unwrap();
        let mut command = [0u8; 9];
        server.read_exact(&mut command).await.unwrap();
        assert_eq!(&command, b"a1 NOOP\r\n");
        holds_no_buffer(&server);

        let big = pattern(1 << 20);
        let to_server = async {
            client.write_all(&big).await.unwrap();
            client.flush().await.unwrap();
            let mut back = vec![0u8; big.len()];
            client.read_exact(&mut back).await.unwrap();
            (client, back)
        };
        let echo = async {
            let mut got = vec![0u8; big.len()];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(&got).await.unwrap();
            server.flush().await.unwrap();
            (server, got)
        };
        let ((mut client, back), (mut server, got)) = tokio::join!(to_server, echo);
        assert!(got == big, "server read what the client wrote");
        assert!(back == big, "client read what the server wrote");
        holds_no_buffer(&server);

        // The client's close_notify is the server's end of file; the server closes too.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
        server.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn connects_to_a_tokio_rustls_server_and_follows_key_updates() {
        let (server_config, client_config) = configs();
        let (client_tcp, server_tcp) = tcp_pair().await;
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
        let (client, server) = tokio::join!(
            ClientTls::connect(client_config, localhost(), client_tcp),
            acceptor.accept(server_tcp)
        );
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        assert_eq!(
            client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );

        // The server greets in the same flight as its handshake's end.
        server.write_all(b"220 hello\r\n").await.unwrap();
        server.flush().await.unwrap();
        let mut greeting = [0u8; 11];
        client.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"220 hello\r\n");

        for round in 0..3u8 {
            // The server renews its keys and asks the client to renew its own.
            server.get_mut().1.refresh_traffic_keys().unwrap();
            let line = format!("250 round {round}\r\n");
            server.write_all(line.as_bytes()).await.unwrap();
            server.flush().await.unwrap();
            let mut got = vec![0u8; line.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, line.as_bytes());
            client.write_all(b"NOOP\r\n").await.unwrap();
            client.flush().await.unwrap();
            let mut got = [0u8; 6];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"NOOP\r\n");
        }
        holds_no_buffer(&client);
    }

    #[tokio::test]
    async fn the_next_connection_resumes_with_a_ticket_read_after_the_handshake() {
        let (server_config, client_config) = configs();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
        let mut resumed = Vec::new();
        for _ in 0..2 {
            let (client_tcp, server_tcp) = tcp_pair().await;
            let (client, server) = tokio::join!(
                ClientTls::connect(client_config.clone(), localhost(), client_tcp),
                acceptor.accept(server_tcp)
            );
            let (mut client, mut server) = (client.unwrap(), server.unwrap());
            resumed.push(client.resumed());
            // The tickets come after the handshake, ahead of the greeting.
            server.write_all(b"* OK\r\n").await.unwrap();
            server.flush().await.unwrap();
            let mut greeting = [0u8; 6];
            client.read_exact(&mut greeting).await.unwrap();
        }
        assert_eq!(resumed, [false, true]);
    }

    #[tokio::test]
    async fn a_truncated_connection_is_an_error_not_an_end_of_file() {
        let (server_config, client_config) = configs();
        let (client_tcp, server_tcp) = tcp_pair().await;
        let connector = tokio_rustls::TlsConnector::from(client_config);
        let (client, server) = tokio::join!(
            connector.connect(localhost(), client_tcp),
            ServerTls::accept(server_config, server_tcp)
        );
        let (client, mut server) = (client.unwrap(), server.unwrap());
        // TCP ends without a close_notify: an attacker cutting a message short.
        let (mut tcp, _) = client.into_inner();
        tcp.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let error = server.read_to_end(&mut rest).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        drop(tcp);
    }

    #[tokio::test]
    async fn an_untrusted_server_is_refused() {
        let (server_config, _) = configs();
        let (_, other_client_config) = configs();
        let (client_tcp, server_tcp) = tcp_pair().await;
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
        let (client, server) = tokio::join!(
            ClientTls::connect(other_client_config, localhost(), client_tcp),
            acceptor.accept(server_tcp)
        );
        let error = client.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("certificate"), "{error}");
        // The server heard why: the alert was sent before the socket closed.
        let server_error = server.unwrap_err().to_string();
        assert!(
            server_error.contains("UnknownCA") || server_error.contains("alert"),
            "{server_error}"
        );
    }

    #[tokio::test]
    async fn garbage_instead_of_a_client_hello_fails_the_handshake() {
        let (server_config, _) = configs();
        let (mut client_tcp, server_tcp) = tcp_pair().await;
        let (written, accepted) = tokio::join!(
            async {
                client_tcp.write_all(b"a1 LOGIN user pass\r\n").await?;
                client_tcp.shutdown().await
            },
            ServerTls::accept(server_config, server_tcp)
        );
        written.unwrap();
        let error = accepted.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }

    #[tokio::test]
    async fn a_client_that_leaves_mid_handshake_ends_it() {
        let (server_config, _) = configs();
        let (client_tcp, server_tcp) = tcp_pair().await;
        drop(client_tcp);
        let error = ServerTls::accept(server_config, server_tcp)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
    }
}

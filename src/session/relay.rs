//! The byte relay after login: copies both ways without parsing, counts bytes, closes
//! an idle session, and stops at once when told to (revocation, shutdown). An idle
//! direction holds no buffer: most sessions sit in IDLE for hours, and their memory is
//! what a gateway with thousands of them pays.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::net::stream::Stream;

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The upstream closed, after LOGOUT or on its own; everything it sent was delivered.
    Closed { to_client: u64 },
    /// The client closed and the upstream did not follow within the linger time.
    ClientClosed,
    /// No byte either way for the idle timeout.
    IdleTimeout,
    /// The stop future completed (revocation, the end of the shutdown grace).
    Stopped,
    /// Draining for shutdown: the goodbye was sent at a quiet line boundary.
    SaidGoodbye,
    /// A socket failed; the error says which side.
    Failed(io::Error),
}

/// Byte counters for one relay, by direction.
#[derive(Clone)]
pub struct RelayCounters {
    pub to_upstream: IntCounter,
    pub to_client: IntCounter,
}

/// A parting message for the client, sent once `when` completes and the upstream has
/// gone quiet at the end of a line that announces no literal: then no response is cut
/// in half by it (an IMAP `* BYE` may come between any two responses).
pub struct Goodbye<F> {
    pub when: F,
    pub message: &'static [u8],
}

/// How long the upstream must have said nothing before the goodbye goes out.
const QUIET_BEFORE_GOODBYE: Duration = Duration::from_millis(300);

/// After the client closed its side, how long the upstream may take to finish and close
/// its own.
const LINGER_AFTER_CLIENT_CLOSED: Duration = Duration::from_secs(5);

/// Copies `client` ⇄ `upstream` until the upstream closes (it has said its last word, so
/// the session is over), the client closes and the upstream follows, the idle timeout
/// passes with no traffic, `stop` completes, or the goodbye is said. Both streams are shut
/// down on return.
pub async fn relay<S, G>(
    client: Stream,
    upstream: Stream,
    idle_timeout: Duration,
    counters: RelayCounters,
    stop: S,
    goodbye: Goodbye<G>,
) -> RelayEnd
where
    S: Future<Output = ()>,
    G: Future<Output = ()>,
{
    let activity = AtomicU64::new(0);
    let started = Instant::now();
    let from_upstream = Tail::default();
    let client = Counted::new(client, counters.to_upstream, &activity, started, None);
    let upstream = Counted::new(
        upstream,
        counters.to_client,
        &activity,
        started,
        Some(&from_upstream),
    );
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);

    let end = {
        let to_client = copy(&mut upstream_read, &mut client_write);
        let to_upstream = async {
            let copied = copy(&mut client_read, &mut upstream_write).await;
            // Pass the client's close on: the upstream sees EOF and ends its side.
            let _ = upstream_write.shutdown().await;
            copied
        };
        tokio::pin!(to_client, to_upstream, stop);
        let when = goodbye.when;
        tokio::pin!(when);
        let mut draining = false;
        let mut client_closed_at = None;
        loop {
            let last = Duration::from_millis(activity.load(Ordering::Relaxed));
            let mut next_check = started + last + idle_timeout;
            if draining {
                let quiet_since = Duration::from_millis(from_upstream.at.load(Ordering::Relaxed));
                next_check = (started + quiet_since + QUIET_BEFORE_GOODBYE)
                    .max(Instant::now() + Duration::from_millis(50));
            }
            if let Some(closed_at) = client_closed_at {
                next_check = next_check.min(closed_at + LINGER_AFTER_CLIENT_CLOSED);
            }
            tokio::select! {
                copied = &mut to_client => break match copied {
                    Ok(to_client) => RelayEnd::Closed { to_client },
                    Err(error) => RelayEnd::Failed(error),
                },
                copied = &mut to_upstream, if client_closed_at.is_none() => match copied {
                    Ok(_) => client_closed_at = Some(Instant::now()),
                    Err(error) => break RelayEnd::Failed(error),
                },
                () = &mut stop => break RelayEnd::Stopped,
                () = &mut when, if !draining => draining = true,
                () = tokio::time::sleep_until(next_check) => {
                    if client_closed_at.is_some_and(|at| at.elapsed() >= LINGER_AFTER_CLIENT_CLOSED) {
                        break RelayEnd::ClientClosed;
                    }
                    if draining && from_upstream.quiet_at_line_end(started, QUIET_BEFORE_GOODBYE) {
                        break RelayEnd::SaidGoodbye;
                    }
                    let now_last = Duration::from_millis(activity.load(Ordering::Relaxed));
                    if !draining && now_last == last && client_closed_at.is_none() {
                        break RelayEnd::IdleTimeout;
                    }
                }
            }
        }
    };
    if matches!(end, RelayEnd::SaidGoodbye) {
        let _ = client_write.write_all(goodbye.message).await;
    }
    // Best effort: the peer may already be gone.
    let _ = client_write.shutdown().await;
    let _ = upstream_write.shutdown().await;
    end
}

/// Size of a relay buffer: a full TLS record's plaintext.
const BUFFER_SIZE: usize = 16 * 1024;

/// How many free buffers each worker thread keeps for the next read.
const SPARE_BUFFERS: usize = 32;

thread_local! {
    /// Free relay buffers of this worker thread.
    static SPARES: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A relay buffer, lent from this thread's spares and given back when dropped.
struct Buffer(Option<Box<[u8]>>);

impl Buffer {
    fn lend() -> Self {
        let spare = SPARES.with(|spares| spares.borrow_mut().pop());
        Buffer(Some(
            spare.unwrap_or_else(|| vec![0; BUFFER_SIZE].into_boxed_slice()),
        ))
    }

    fn bytes(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(buffer) = self.0.take() {
            SPARES.with(|spares| {
                let mut spares = spares.borrow_mut();
                if spares.len() < SPARE_BUFFERS {
                    spares.push(buffer);
                }
            });
        }
    }
}

/// Bytes read and not yet all written.
struct InFlight {
    buffer: Buffer,
    written: usize,
    filled: usize,
}

/// Copies `reader` to `writer` until the reader's end of file, and returns how many bytes
/// it copied. Like `tokio::io::copy`, it flushes whenever the reader has nothing more for
/// now; unlike it, it holds a buffer only while bytes are in flight: a read that would
/// block gives its buffer back. What the reader has ready is gathered into one buffer
/// before it is written, so a peer that sends many small TLS records (Dovecot answering
/// `FETCH 1:* ENVELOPE`) costs one record and one write on the other side, not one each.
async fn copy<R, W>(reader: &mut R, writer: &mut W) -> io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut in_flight: Option<InFlight> = None;
    let mut copied = 0u64;
    let mut unflushed = false;
    let mut at_end = false;
    // A read error met after some bytes were gathered: reported once they are written.
    let mut failed: Option<io::Error> = None;
    poll_fn(|cx| loop {
        if let Some(flight) = &mut in_flight {
            let bytes = &flight.buffer.bytes()[flight.written..flight.filled];
            let written = std::task::ready!(Pin::new(&mut *writer).poll_write(cx, bytes))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            flight.written += written;
            copied += written as u64;
            unflushed = true;
            if flight.written == flight.filled {
                in_flight = None;
            }
            continue;
        }
        if let Some(error) = failed.take() {
            return Poll::Ready(Err(error));
        }
        if at_end {
            std::task::ready!(Pin::new(&mut *writer).poll_flush(cx))?;
            return Poll::Ready(Ok(copied));
        }
        let mut buffer = Buffer::lend();
        let mut filled = 0;
        let mut pending = false;
        while filled < BUFFER_SIZE {
            let mut read = ReadBuf::new(&mut buffer.bytes()[filled..]);
            match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    at_end = true;
                    break;
                }
                Poll::Ready(Ok(())) => filled += read.filled().len(),
                Poll::Ready(Err(error)) if filled == 0 => return Poll::Ready(Err(error)),
                Poll::Ready(Err(error)) => {
                    failed = Some(error);
                    break;
                }
                Poll::Pending => {
                    pending = true;
                    break;
                }
            }
        }
        if filled > 0 {
            in_flight = Some(InFlight {
                buffer,
                written: 0,
                filled,
            });
            continue;
        }
        if pending {
            drop(buffer);
            if unflushed {
                std::task::ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                unflushed = false;
            }
            return Poll::Pending;
        }
    })
    .await
}

/// The end of what one side sent: when, and its last bytes, to find line boundaries.
#[derive(Debug, Default)]
struct Tail {
    /// Milliseconds since the relay started, of the last read.
    at: AtomicU64,
    /// The last (up to) eight bytes read, oldest first, in the low bytes.
    bytes: AtomicU64,
}

impl Tail {
    fn record(&self, read: &[u8], at_ms: u64) {
        let mut tail = self.bytes.load(Ordering::Relaxed);
        for &byte in read.iter().rev().take(8).rev() {
            tail = (tail << 8) | u64::from(byte);
        }
        self.bytes.store(tail, Ordering::Relaxed);
        self.at.store(at_ms, Ordering::Relaxed);
    }

    /// Quiet for `quiet`, and the last thing sent ended a line that announces no literal.
    fn quiet_at_line_end(&self, started: Instant, quiet: Duration) -> bool {
        let at = Duration::from_millis(self.at.load(Ordering::Relaxed));
        if started + at + quiet > Instant::now() {
            return false;
        }
        let tail = self.bytes.load(Ordering::Relaxed).to_be_bytes();
        match tail {
            [.., b'}', b'\r', b'\n'] => false,
            [.., b'\r', b'\n'] => true,
            // Nothing relayed yet: the login reply ended a line.
            [0, 0, 0, 0, 0, 0, 0, 0] => true,
            _ => false,
        }
    }
}

/// A stream that counts the bytes read from it and stamps the time of the last read.
struct Counted<'a> {
    inner: Stream,
    read_bytes: IntCounter,
    activity: &'a AtomicU64,
    started: Instant,
    tail: Option<&'a Tail>,
}

impl<'a> Counted<'a> {
    fn new(
        inner: Stream,
        read_bytes: IntCounter,
        activity: &'a AtomicU64,
        started: Instant,
        tail: Option<&'a Tail>,
    ) -> Self {
        Self {
            inner,
            read_bytes,
            activity,
            started,
            tail,
        }
    }
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.read_bytes.inc_by(read as u64);
            let elapsed = this.started.elapsed().as_millis() as u64;
            this.activity.store(elapsed, Ordering::Relaxed);
            if let Some(tail) = this.tail {
                tail.record(&buf.filled()[before..], elapsed);
            }
        }
        poll
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(address), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    fn never() -> Goodbye<std::future::Pending<()>> {
        Goodbye {
            when: std::future::pending(),
            message: b"",
        }
    }

    /// A reader with these chunks ready, then nothing for now.
    struct Chunks(std::collections::VecDeque<&'static [u8]>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.0.pop_front() {
                Some(chunk) => {
                    buf.put_slice(chunk);
                    Poll::Ready(Ok(()))
                }
                None => Poll::Pending,
            }
        }
    }

    /// A writer that keeps each write separately.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn what_is_ready_goes_out_in_one_write() {
        let mut reader = Chunks(
            [
                &b"* 1 FETCH (FLAGS ())\r\n"[..],
                b"* 2 FETCH (FLAGS ())\r\n",
                b"a1 OK\r\n",
            ]
            .into(),
        );
        let mut writer = Writes::default();
        {
            let copying = copy(&mut reader, &mut writer);
            tokio::pin!(copying);
            // The reader has nothing more: the copy waits, after writing what it had.
            assert!(futures_poll_once(&mut copying).await.is_none());
        }
        assert_eq!(
            writer.0,
            [b"* 1 FETCH (FLAGS ())\r\n* 2 FETCH (FLAGS ())\r\na1 OK\r\n".to_vec()]
        );
    }

    /// Polls `future` once: its output if it was ready.
    async fn futures_poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
        poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *future).poll(cx) {
                Poll::Ready(output) => Some(output),
                Poll::Pending => None,
            })
        })
        .await
    }

    #[tokio::test]
    async fn draining_says_goodbye_only_at_a_quiet_line_end_outside_a_literal() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut server) = pair().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let relay = tokio::spawn(relay(
            Stream::Plain(client_side),
            Stream::Plain(upstream_side),
            Duration::from_secs(1800),
            counters(),
            std::future::pending(),
            Goodbye {
                when: async {
                    let _ = rx.await;
                },
                message: b"* BYE bye\r\n",
            },
        ));
        // A literal is announced and only half sent when the drain starts.
        server
            .write_all(b"* 1 FETCH (BODY[] {10}\r\n")
            .await
            .unwrap();
        let mut got = [0u8; 24];
        client.read_exact(&mut got).await.unwrap();
        tx.send(()).unwrap();
        tokio::time::sleep(QUIET_BEFORE_GOODBYE * 2).await;
        assert!(!relay.is_finished(), "no goodbye inside a literal");
        server.write_all(b"0123456789)\r\n").await.unwrap();
        let end = relay.await.unwrap();
        assert!(matches!(end, RelayEnd::SaidGoodbye), "{end:?}");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"0123456789)\r\n* BYE bye\r\n");
    }

    fn counters() -> RelayCounters {
        RelayCounters {
            to_upstream: IntCounter::new("up", "up").unwrap(),
            to_client: IntCounter::new("down", "down").unwrap(),
        }
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_are_counted() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut server) = pair().await;
        let counters = counters();
        let relay = tokio::spawn(relay(
            Stream::Plain(client_side),
            Stream::Plain(upstream_side),
            Duration::from_secs(60),
            counters.clone(),
            std::future::pending(),
            never(),
        ));
        client.write_all(b"a1 NOOP\r\n").await.unwrap();
        let mut got = [0u8; 9];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"a1 NOOP\r\n");
        server.write_all(b"a1 OK\r\n").await.unwrap();
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"a1 OK\r\n");
        drop(client);
        drop(server);
        assert!(matches!(
            relay.await.unwrap(),
            RelayEnd::Closed { .. } | RelayEnd::Failed(_)
        ));
        assert_eq!(counters.to_upstream.get(), 9);
        assert_eq!(counters.to_client.get(), 7);
    }

    #[tokio::test]
    async fn large_transfers_arrive_intact_both_ways_at_once() {
        let (client, client_side) = pair().await;
        let (upstream_side, server) = pair().await;
        let relay = tokio::spawn(relay(
            Stream::Plain(client_side),
            Stream::Plain(upstream_side),
            Duration::from_secs(60),
            counters(),
            std::future::pending(),
            never(),
        ));
        // Not a multiple of the buffer size, and different each way.
        let up: Vec<u8> = (0..3_000_017u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..2_500_009u32).map(|i| (i % 241) as u8).collect();
        // The client closes its sending side when done; the upstream closes only once it
        // has everything, since the upstream's close ends the relay.
        let upstream = async {
            let (mut read, mut write) = server.into_split();
            let mut got = Vec::new();
            let (received, sent) = tokio::join!(read.read_to_end(&mut got), write.write_all(&down));
            received.unwrap();
            sent.unwrap();
            write.shutdown().await.unwrap();
            got
        };
        let client = async {
            let (mut read, mut write) = client.into_split();
            let sending = async {
                write.write_all(&up).await.unwrap();
                write.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let ((), received) = tokio::join!(sending, read.read_to_end(&mut got));
            received.unwrap();
            got
        };
        let (at_server, at_client) = tokio::join!(upstream, client);
        assert!(at_server == up, "client to upstream");
        assert!(at_client == down, "upstream to client");
        let end = relay.await.unwrap();
        assert!(
            matches!(end, RelayEnd::Closed { to_client } if to_client == down.len() as u64),
            "{end:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_session_ends_at_the_idle_timeout_and_traffic_extends_it() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, _server) = pair().await;
        let relay = tokio::spawn(relay(
            Stream::Plain(client_side),
            Stream::Plain(upstream_side),
            Duration::from_secs(1800),
            counters(),
            std::future::pending(),
            never(),
        ));
        tokio::time::sleep(Duration::from_secs(1000)).await;
        client.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1000)).await;
        assert!(
            !relay.is_finished(),
            "traffic at 1000 s moved the deadline to 2800 s"
        );
        let end = relay.await.unwrap();
        assert!(matches!(end, RelayEnd::IdleTimeout), "{end:?}");
    }

    #[tokio::test]
    async fn stop_ends_the_relay_and_closes_the_client() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, _server) = pair().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let relay = tokio::spawn(relay(
            Stream::Plain(client_side),
            Stream::Plain(upstream_side),
            Duration::from_secs(1800),
            counters(),
            async {
                let _ = rx.await;
            },
            never(),
        ));
        tx.send(()).unwrap();
        assert!(matches!(relay.await.unwrap(), RelayEnd::Stopped));
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    }
}

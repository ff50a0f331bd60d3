//! The byte relay after login: copies both ways without parsing, counts bytes, closes
//! an idle session, and stops at once when told to (revocation, shutdown). An idle
//! direction holds no buffer: most sessions sit in IDLE for hours, and their memory is
//! what a gateway with thousands of them pays.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
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
///
/// One poll drives both directions, the stop, the goodbye and one timer, with no task,
/// lock or buffer of their own: what an idle session keeps is its two streams and these
/// few hundred bytes. Callers keep the streams, and `stop` and `goodbye.when` pinned
/// (`std::pin::pin!`), in their own frame, so that this future does not hold copies.
pub async fn relay<S, G>(
    client: &mut Stream,
    upstream: &mut Stream,
    idle_timeout: Duration,
    counters: RelayCounters,
    stop: S,
    goodbye: Goodbye<G>,
) -> RelayEnd
where
    S: Future<Output = ()>,
    G: Future<Output = ()>,
{
    let mut to_client = Pump::new(counters.to_client);
    let mut to_upstream = Pump::new(counters.to_upstream);
    let mut seen = Seen::new();
    let timer = tokio::time::sleep(idle_timeout);
    let Goodbye { when, message } = goodbye;
    tokio::pin!(timer, stop, when);
    let mut draining = false;
    // When the client closed its side, and whether that close was passed upstream.
    let mut client_closed: Option<(Instant, bool)> = None;
    let end = poll_fn(|cx| {
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(RelayEnd::Stopped);
        }
        let mut deadline_moved = false;
        if !draining && when.as_mut().poll(cx).is_ready() {
            draining = true;
            deadline_moved = true;
        }
        match to_client.poll_copy(cx, upstream, client, &mut seen, true) {
            Poll::Ready(Ok(to_client)) => return Poll::Ready(RelayEnd::Closed { to_client }),
            Poll::Ready(Err(error)) => return Poll::Ready(RelayEnd::Failed(error)),
            Poll::Pending => {}
        }
        if client_closed.is_none() {
            match to_upstream.poll_copy(cx, client, upstream, &mut seen, false) {
                Poll::Ready(Ok(_)) => {
                    client_closed = Some((Instant::now(), false));
                    deadline_moved = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(RelayEnd::Failed(error)),
                Poll::Pending => {}
            }
        }
        // Pass the client's close on: the upstream sees EOF and ends its side.
        if let Some((_, passed_on @ false)) = &mut client_closed {
            if Pin::new(&mut *upstream).poll_shutdown(cx).is_ready() {
                *passed_on = true;
            }
        }
        let check = |seen: &Seen, draining: bool, closed: Option<(Instant, bool)>| {
            next_check(seen, draining, closed.map(|c| c.0), idle_timeout)
        };
        if deadline_moved {
            timer.as_mut().reset(check(&seen, draining, client_closed));
        }
        // The timer fires at the deadline it was set to; traffic since then only moves
        // the next one.
        while timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if client_closed.is_some_and(|(at, _)| now >= at + LINGER_AFTER_CLIENT_CLOSED) {
                return Poll::Ready(RelayEnd::ClientClosed);
            }
            if draining && seen.quiet_at_line_end(now, QUIET_BEFORE_GOODBYE) {
                return Poll::Ready(RelayEnd::SaidGoodbye);
            }
            if !draining && client_closed.is_none() && now >= seen.last + idle_timeout {
                return Poll::Ready(RelayEnd::IdleTimeout);
            }
            timer.as_mut().reset(check(&seen, draining, client_closed));
        }
        Poll::Pending
    })
    .await;
    if matches!(end, RelayEnd::SaidGoodbye) {
        let _ = client.write_all(message).await;
    }
    // Best effort: the peer may already be gone.
    let _ = client.shutdown().await;
    let _ = upstream.shutdown().await;
    end
}

/// When the relay must next look at the clock: the linger once the client closed, the
/// next chance of a quiet line end while draining, else the idle deadline. Always later
/// than now unless that moment has come.
fn next_check(
    seen: &Seen,
    draining: bool,
    client_closed: Option<Instant>,
    idle_timeout: Duration,
) -> Instant {
    if let Some(at) = client_closed {
        return at + LINGER_AFTER_CLIENT_CLOSED;
    }
    if draining {
        return (seen.from_upstream_at + QUIET_BEFORE_GOODBYE)
            .max(Instant::now() + Duration::from_millis(50));
    }
    seen.last + idle_timeout
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

/// What the relay saw of the traffic: when the last byte went either way, and the end
/// of what the upstream sent (when, and its last bytes, to find line boundaries).
struct Seen {
    last: Instant,
    from_upstream_at: Instant,
    /// The last (up to) eight bytes from the upstream, oldest first, in the low bytes.
    upstream_tail: u64,
}

impl Seen {
    fn new() -> Self {
        let now = Instant::now();
        Seen {
            last: now,
            from_upstream_at: now,
            upstream_tail: 0,
        }
    }

    fn record(&mut self, read: &[u8], from_upstream: bool) {
        let now = Instant::now();
        self.last = now;
        if from_upstream {
            for &byte in read.iter().rev().take(8).rev() {
                self.upstream_tail = (self.upstream_tail << 8) | u64::from(byte);
            }
            self.from_upstream_at = now;
        }
    }

    /// The upstream has been quiet for `quiet`, and the last thing it sent ended a line
    /// that announces no literal.
    fn quiet_at_line_end(&self, now: Instant, quiet: Duration) -> bool {
        if self.from_upstream_at + quiet > now {
            return false;
        }
        match self.upstream_tail.to_be_bytes() {
            [.., b'}', b'\r', b'\n'] => false,
            [.., b'\r', b'\n'] => true,
            // Nothing relayed yet: the login reply ended a line.
            [0, 0, 0, 0, 0, 0, 0, 0] => true,
            _ => false,
        }
    }
}

/// One direction of the relay. Like `tokio::io::copy`, it flushes whenever the reader has
/// nothing more for now; unlike it, it holds a buffer only while bytes are in flight: a
/// read that would block gives its buffer back. What the reader has ready is gathered
/// into one buffer before it is written, so a peer that sends many small TLS records
/// (Dovecot answering `FETCH 1:* ENVELOPE`) costs one record and one write on the other
/// side, not one each.
struct Pump {
    in_flight: Option<InFlight>,
    copied: u64,
    unflushed: bool,
    at_end: bool,
    /// A read error met after some bytes were gathered: reported once they are written.
    failed: Option<io::Error>,
    counter: IntCounter,
}

impl Pump {
    fn new(counter: IntCounter) -> Self {
        Pump {
            in_flight: None,
            copied: 0,
            unflushed: false,
            at_end: false,
            failed: None,
            counter,
        }
    }

    /// Copies what `reader` has ready to `writer`; ready with the count once the reader
    /// ended and all was written and flushed.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        seen: &mut Seen,
        from_upstream: bool,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if let Some(flight) = &mut self.in_flight {
                let bytes = &flight.buffer.bytes()[flight.written..flight.filled];
                let written = std::task::ready!(Pin::new(&mut *writer).poll_write(cx, bytes))?;
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                flight.written += written;
                self.copied += written as u64;
                self.unflushed = true;
                if flight.written == flight.filled {
                    self.in_flight = None;
                }
                continue;
            }
            if let Some(error) = self.failed.take() {
                return Poll::Ready(Err(error));
            }
            if self.at_end {
                std::task::ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                return Poll::Ready(Ok(self.copied));
            }
            let mut buffer = Buffer::lend();
            let mut filled = 0;
            let mut pending = false;
            while filled < BUFFER_SIZE {
                let mut read = ReadBuf::new(&mut buffer.bytes()[filled..]);
                match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) if read.filled().is_empty() => {
                        self.at_end = true;
                        break;
                    }
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        seen.record(read.filled(), from_upstream);
                        self.counter.inc_by(n as u64);
                        filled += n;
                    }
                    Poll::Ready(Err(error)) if filled == 0 => return Poll::Ready(Err(error)),
                    Poll::Ready(Err(error)) => {
                        self.failed = Some(error);
                        break;
                    }
                    Poll::Pending => {
                        pending = true;
                        break;
                    }
                }
            }
            if filled > 0 {
                self.in_flight = Some(InFlight {
                    buffer,
                    written: 0,
                    filled,
                });
                continue;
            }
            if pending {
                drop(buffer);
                if self.unflushed {
                    std::task::ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    self.unflushed = false;
                }
                return Poll::Pending;
            }
        }
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

    /// The relay between two plain connections, on a task of its own.
    fn spawn_relay<S, G>(
        client: TcpStream,
        upstream: TcpStream,
        idle_timeout: Duration,
        counters: RelayCounters,
        stop: S,
        goodbye: Goodbye<G>,
    ) -> tokio::task::JoinHandle<RelayEnd>
    where
        S: Future<Output = ()> + Send + 'static,
        G: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(async move {
            let (mut client, mut upstream) = (Stream::Plain(client), Stream::Plain(upstream));
            relay(
                &mut client,
                &mut upstream,
                idle_timeout,
                counters,
                stop,
                goodbye,
            )
            .await
        })
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
        let mut pump = Pump::new(IntCounter::new("t", "t").unwrap());
        let mut seen = Seen::new();
        let polled = poll_fn(|cx| {
            Poll::Ready(pump.poll_copy(cx, &mut reader, &mut writer, &mut seen, true))
        })
        .await;
        // The reader has nothing more: the copy waits, after writing what it had.
        assert!(polled.is_pending());
        assert_eq!(
            writer.0,
            [b"* 1 FETCH (FLAGS ())\r\n* 2 FETCH (FLAGS ())\r\na1 OK\r\n".to_vec()]
        );
        assert_eq!(pump.counter.get(), 51);
        assert_eq!(&seen.upstream_tail.to_be_bytes(), b"\na1 OK\r\n");
    }

    #[tokio::test]
    async fn draining_says_goodbye_only_at_a_quiet_line_end_outside_a_literal() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut server) = pair().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let relay = spawn_relay(
            client_side,
            upstream_side,
            Duration::from_secs(1800),
            counters(),
            std::future::pending(),
            Goodbye {
                when: async {
                    let _ = rx.await;
                },
                message: b"* BYE bye\r\n",
            },
        );
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
        let relay = spawn_relay(
            client_side,
            upstream_side,
            Duration::from_secs(60),
            counters.clone(),
            std::future::pending(),
            never(),
        );
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
        let relay = spawn_relay(
            client_side,
            upstream_side,
            Duration::from_secs(60),
            counters(),
            std::future::pending(),
            never(),
        );
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
        let relay = spawn_relay(
            client_side,
            upstream_side,
            Duration::from_secs(1800),
            counters(),
            std::future::pending(),
            never(),
        );
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
        let relay = spawn_relay(
            client_side,
            upstream_side,
            Duration::from_secs(1800),
            counters(),
            async {
                let _ = rx.await;
            },
            never(),
        );
        tx.send(()).unwrap();
        assert!(matches!(relay.await.unwrap(), RelayEnd::Stopped));
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    }
}

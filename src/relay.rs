//! The byte relay after login: copies both ways without parsing, counts bytes, closes
//! an idle session, and stops at once when told to (revocation, shutdown).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::stream::Stream;

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides closed in turn (LOGOUT, QUIT).
    Closed { to_upstream: u64, to_client: u64 },
    /// No byte either way for the idle timeout.
    IdleTimeout,
    /// The stop future completed (revocation, shutdown).
    Stopped,
    /// A socket failed; the error says which side.
    Failed(io::Error),
}

/// Byte counters for one relay, by direction.
#[derive(Clone)]
pub struct RelayCounters {
    pub to_upstream: IntCounter,
    pub to_client: IntCounter,
}

/// Copies `client` ⇄ `upstream` until both close, the idle timeout passes with no
/// traffic, or `stop` completes. Both streams are shut down on return.
pub async fn relay(
    client: Stream,
    upstream: Stream,
    idle_timeout: Duration,
    counters: RelayCounters,
    stop: impl Future<Output = ()>,
) -> RelayEnd {
    let activity = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut client = Counted::new(client, counters.to_upstream, &activity, started);
    let mut upstream = Counted::new(upstream, counters.to_client, &activity, started);

    let end = {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        tokio::pin!(stop);
        loop {
            let last = Duration::from_millis(activity.load(Ordering::Relaxed));
            let deadline = started + last + idle_timeout;
            tokio::select! {
                result = &mut copy => break match result {
                    Ok((to_upstream, to_client)) => RelayEnd::Closed { to_upstream, to_client },
                    Err(error) => RelayEnd::Failed(error),
                },
                () = &mut stop => break RelayEnd::Stopped,
                () = tokio::time::sleep_until(deadline) => {
                    let now_last = Duration::from_millis(activity.load(Ordering::Relaxed));
                    if now_last == last {
                        break RelayEnd::IdleTimeout;
                    }
                }
            }
        }
    };
    // Best effort: the peer may already be gone.
    let _ = client.inner.shutdown().await;
    let _ = upstream.inner.shutdown().await;
    end
}

/// A stream that counts the bytes read from it and stamps the time of the last read.
struct Counted<'a> {
    inner: Stream,
    read_bytes: IntCounter,
    activity: &'a AtomicU64,
    started: Instant,
}

impl<'a> Counted<'a> {
    fn new(
        inner: Stream,
        read_bytes: IntCounter,
        activity: &'a AtomicU64,
        started: Instant,
    ) -> Self {
        Self {
            inner,
            read_bytes,
            activity,
            started,
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
        ));
        tx.send(()).unwrap();
        assert!(matches!(relay.await.unwrap(), RelayEnd::Stopped));
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    }
}

//! Upstream connections made ahead of logins, for any protocol: connected, TLS done,
//! greeted and kept for a short while, so that a client's login waits only for the
//! upstream's login and not for a second TCP and TLS handshake. Refilled in the
//! background as logins take them.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::net::stream::Stream;
use crate::upstream::{Upstream, UpstreamError};

/// The first pause after a failed connect; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A greeted connection a protocol keeps warm.
pub trait WarmConnection: Send + 'static {
    /// When it became ready.
    fn ready_at(&self) -> Instant;
    /// How long its TCP connect and TLS handshake took.
    fn connect_time(&self) -> Duration;
    /// Younger than `max_age` and still waiting for a command (see [`waiting`]).
    fn is_usable(&self, max_age: Duration) -> bool;
}

/// Whether a greeted connection still waits for a command: younger than `max_age`,
/// nothing read ahead, and nothing to read and no end of file on the socket (a server
/// that closed the connection, or said goodbye, has made it readable). A peek, not the
/// socket's readiness flag, which may still be set after the last read.
pub fn waiting(stream: &Stream, read_ahead: &[u8], ready_at: Instant, max_age: Duration) -> bool {
    if ready_at.elapsed() >= max_age || !read_ahead.is_empty() {
        return false;
    }
    let mut context = Context::from_waker(std::task::Waker::noop());
    let mut byte = [0u8; 1];
    let mut peeked = tokio::io::ReadBuf::new(&mut byte);
    stream
        .tcp()
        .poll_peek(&mut context, &mut peeked)
        .is_pending()
}

/// Warm connections, each with the upstream configuration it was made for (a reload
/// retires the others).
pub struct WarmConnections<G> {
    ready: Mutex<VecDeque<(Arc<Upstream>, G)>>,
    /// Wakes the refiller when one is taken.
    taken: Notify,
}

impl<G> Default for WarmConnections<G> {
    fn default() -> Self {
        Self {
            ready: Mutex::new(VecDeque::new()),
            taken: Notify::new(),
        }
    }
}

impl<G: WarmConnection> WarmConnections<G> {
    /// A usable warm connection to `upstream`, if one is ready. Stale ones met on the way
    /// are dropped.
    pub fn take(&self, upstream: &Arc<Upstream>) -> Option<G> {
        let found = {
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            let mut found = None;
            while let Some((made_for, greeted)) = ready.pop_front() {
                if Arc::ptr_eq(&made_for, upstream) && greeted.is_usable(upstream.warm_max_age) {
                    found = Some(greeted);
                    break;
                }
            }
            found
        };
        self.taken.notify_one();
        found
    }

    /// How many are ready now.
    pub fn len(&self) -> usize {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the stale ones and those made for another configuration than `current`;
    /// returns how many remain and when the oldest of them goes stale.
    fn prune(&self, current: &Arc<Upstream>) -> (usize, Option<Instant>) {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        ready.retain(|(made_for, greeted)| {
            Arc::ptr_eq(made_for, current) && greeted.is_usable(current.warm_max_age)
        });
        let oldest = ready
            .iter()
            .map(|(_, greeted)| greeted.ready_at() + current.warm_max_age)
            .min();
        (ready.len(), oldest)
    }

    fn put(&self, upstream: Arc<Upstream>, greeted: G) {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        ready.push_back((upstream, greeted));
    }

    fn clear(&self) {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Keeps `warm_connections` of the upstream that `current` names (it changes on reload)
/// ready in `warm` until `stop`, made by `connect`: one connect at a time, replacing those
/// taken or gone stale, pausing with a growing backoff while the upstream fails. Failures
/// count in `upstream_errors` (`postern_upstream_errors_total{protocol}`) like a login's.
pub async fn keep_ready<G, C, F>(
    warm: Arc<WarmConnections<G>>,
    protocol: &'static str,
    current: impl Fn() -> Option<Arc<Upstream>>,
    connect: C,
    upstream_errors: IntCounterVec,
    stop: CancellationToken,
) where
    G: WarmConnection,
    C: Fn(Arc<Upstream>) -> F,
    F: Future<Output = Result<G, UpstreamError>>,
{
    let mut backoff = MIN_BACKOFF;
    loop {
        let upstream = current();
        let wanted = upstream.as_ref().map_or(0, |u| u.warm_connections);
        let (count, stale_at) = match &upstream {
            Some(upstream) => warm.prune(upstream),
            None => (0, None),
        };
        if let Some(upstream) = upstream.filter(|_| count < wanted) {
            let connected = tokio::select! {
                () = stop.cancelled() => break,
                connected = connect(upstream.clone()) => connected,
            };
            match connected {
                Ok(greeted) => {
                    warm.put(upstream, greeted);
                    backoff = MIN_BACKOFF;
                }
                Err(error) => {
                    upstream_errors
                        .with_label_values(&[protocol, error.reason()])
                        .inc();
                    tracing::debug!(%error, protocol, retry_in = ?backoff, "could not make a warm upstream connection");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            continue;
        }
        // Full (or off): wait for a take, the oldest going stale, or a reload's effect on
        // the next take.
        let stale = async {
            match stale_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = warm.taken.notified() => {}
            () = stale => {}
        }
    }
    warm.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use crate::config::UpstreamConfig;

    const GREETING: &[u8] = b"+OK ready\r\n";

    /// A connection whose greeting was read, as a protocol's own would be.
    struct Greeted {
        stream: Stream,
        ready_at: Instant,
    }

    impl WarmConnection for Greeted {
        fn ready_at(&self) -> Instant {
            self.ready_at
        }

        fn connect_time(&self) -> Duration {
            Duration::ZERO
        }

        fn is_usable(&self, max_age: Duration) -> bool {
            waiting(&self.stream, &[], self.ready_at, max_age)
        }
    }

    async fn connect(upstream: &Upstream) -> Greeted {
        use tokio::io::AsyncReadExt;
        let (mut stream, _) = upstream.connect().await.unwrap();
        let mut greeting = [0u8; GREETING.len()];
        stream.read_exact(&mut greeting).await.unwrap();
        Greeted {
            stream,
            ready_at: Instant::now(),
        }
    }

    /// A scripted upstream on loopback without TLS, and its configuration.
    async fn scripted_upstream(max_age: &str) -> (Arc<Upstream>, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config: UpstreamConfig = toml::from_str(&format!(
            r#"
            address = "{}"
            tls = "none"
            auth = "sasl-plain-authzid"
            master_user = "proxy"
            master_password_file = "/nonexistent"
            warm_max_age = "{max_age}"
            "#,
            listener.local_addr().unwrap()
        ))
        .unwrap();
        (Arc::new(Upstream::new(&config, None).unwrap()), listener)
    }

    /// A greeted connection and the upstream's end of it.
    async fn greeted(upstream: &Upstream, listener: &TcpListener) -> (Greeted, TcpStream) {
        let (greeted, accepted) = tokio::join!(connect(upstream), async {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.write_all(GREETING).await.unwrap();
            socket
        });
        (greeted, accepted)
    }

    #[tokio::test]
    async fn a_live_connection_is_taken_once() {
        let (upstream, listener) = scripted_upstream("20s").await;
        let (connection, _server) = greeted(&upstream, &listener).await;
        let warm = WarmConnections::default();
        warm.put(upstream.clone(), connection);
        assert!(warm.take(&upstream).is_some());
        assert!(warm.take(&upstream).is_none());
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_taken() {
        let (upstream, listener) = scripted_upstream("20s").await;
        let (connection, server) = greeted(&upstream, &listener).await;
        drop(server);
        // The FIN arrives through the reactor; wait for it with a generous bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        while connection.is_usable(upstream.warm_max_age) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let warm = WarmConnections::default();
        warm.put(upstream.clone(), connection);
        assert!(warm.take(&upstream).is_none());
        assert!(warm.is_empty(), "the dead connection was dropped");
    }

    #[tokio::test]
    async fn a_connection_for_a_replaced_configuration_is_not_taken() {
        let (old, listener) = scripted_upstream("20s").await;
        let (connection, _server) = greeted(&old, &listener).await;
        let warm = WarmConnections::default();
        warm.put(old.clone(), connection);
        let (reloaded, _other) = scripted_upstream("20s").await;
        assert!(warm.take(&reloaded).is_none());
        assert!(warm.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_older_than_the_max_age_is_not_taken() {
        let (upstream, listener) = scripted_upstream("20s").await;
        let (connection, _server) = greeted(&upstream, &listener).await;
        let warm = WarmConnections::default();
        warm.put(upstream.clone(), connection);
        tokio::time::advance(Duration::from_secs(21)).await;
        assert!(warm.take(&upstream).is_none());
    }
}

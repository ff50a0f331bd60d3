//! Upstream IMAP connections made ahead of logins: connected, TLS done, greeted and kept
//! for a short while, so that a client's login waits only for the upstream's login and not
//! for a second TCP and TLS handshake. Refilled in the background as logins take them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::imap::upstream::{self, Greeted};
use crate::upstream::Upstream;

/// The first pause after a failed connect; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Warm connections, each with the upstream configuration it was made for (a reload
/// retires the others).
#[derive(Default)]
pub struct WarmConnections {
    ready: Mutex<VecDeque<(Arc<Upstream>, Greeted)>>,
    /// Wakes the refiller when one is taken.
    taken: Notify,
}

impl WarmConnections {
    /// A usable warm connection to `upstream`, if one is ready. Stale ones met on the way
    /// are dropped.
    pub fn take(&self, upstream: &Arc<Upstream>) -> Option<Greeted> {
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
            .map(|(_, greeted)| greeted.ready_at + current.warm_max_age)
            .min();
        (ready.len(), oldest)
    }

    fn put(&self, upstream: Arc<Upstream>, greeted: Greeted) {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        ready.push_back((upstream, greeted));
    }

    fn clear(&self) {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Keeps `warm_connections` of the upstream that `current` names (it changes on reload)
/// ready in `warm` until `stop`: one connect at a time, replacing those taken or gone
/// stale, pausing with a growing backoff while the upstream fails. Failures count in
/// `upstream_errors` (`postern_upstream_errors_total{protocol="imap"}`) like a login's.
pub async fn keep_ready(
    warm: Arc<WarmConnections>,
    current: impl Fn() -> Option<Arc<Upstream>>,
    upstream_errors: IntCounterVec,
    stop: CancellationToken,
) {
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
                connected = upstream::connect(&upstream) => connected,
            };
            match connected {
                Ok(greeted) => {
                    warm.put(upstream, greeted);
                    backoff = MIN_BACKOFF;
                }
                Err(error) => {
                    upstream_errors
                        .with_label_values(&["imap", error.reason()])
                        .inc();
                    tracing::debug!(%error, retry_in = ?backoff, "could not make a warm upstream connection");
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

    const GREETING: &[u8] = b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN] ready\r\n";

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
        let (greeted, accepted) = tokio::join!(upstream::connect(upstream), async {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.write_all(GREETING).await.unwrap();
            socket
        });
        (greeted.unwrap(), accepted)
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

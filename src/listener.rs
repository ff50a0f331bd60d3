//! The accept loop, and nothing else: cap concurrent connections, back off when accept
//! fails (out of file descriptors), and spawn a task per client. The PROXY header, TLS
//! handshakes and everything slow happen inside that task, so one slow client never
//! stalls the loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{ListenerConfig, Protocol};
use crate::server::Gateway;
use crate::{imap, proxy, smtp};

/// Longest pause after repeated accept failures.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts until the gateway shuts down.
pub async fn accept_loop(
    socket: TcpListener,
    config: Arc<ListenerConfig>,
    gateway: Arc<Gateway>,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        let slot = tokio::select! {
            () = gateway.drain.cancelled() => return,
            // Unwrap-free: the semaphore is never closed.
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = gateway.drain.cancelled() => return,
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(listener = %config.name, %error, ?backoff, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(5);
        gateway
            .metrics
            .connections
            .with_label_values(&[&config.name, config.protocol.as_str()])
            .inc();
        let gateway = gateway.clone();
        let config = config.clone();
        tasks.spawn(async move {
            let _slot = slot;
            if !config.proxy_protocol {
                return serve(gateway, config, tcp, peer).await;
            }
            let mut tcp = tcp;
            let Some(client) = client_behind_balancer(&gateway, &config, &mut tcp, peer).await
            else {
                return;
            };
            // Every line the session logs names the balancer too.
            let span = tracing::info_span!("proxied", via = %peer);
            serve(gateway, config, tcp, client).instrument(span).await
        });
    }
}

/// Runs the listener's protocol for `client`.
async fn serve(
    gateway: Arc<Gateway>,
    config: Arc<ListenerConfig>,
    tcp: TcpStream,
    client: SocketAddr,
) {
    match config.protocol {
        Protocol::Imap => imap::session::serve(gateway, config, tcp, client).await,
        Protocol::Smtp => smtp::session::serve(gateway, config, tcp, client).await,
    }
}

/// On a `proxy_protocol` listener: the client that the balancer at `peer` forwards, from
/// its PROXY header (the peer itself for a header without an address, as in a health
/// check). `None` when the connection must be closed: the peer is not one of
/// `[network] proxy_sources`, or its header is missing, late or malformed.
async fn client_behind_balancer(
    gateway: &Gateway,
    config: &ListenerConfig,
    tcp: &mut TcpStream,
    peer: SocketAddr,
) -> Option<SocketAddr> {
    let listener = config.name.as_str();
    let peer_ip = peer.ip().to_canonical();
    if !gateway
        .network
        .proxy_sources
        .iter()
        .any(|net| net.contains(&peer_ip))
    {
        tracing::info!(listener, %peer, "refused: not a PROXY source ([network] proxy_sources)");
        return None;
    }
    let header = tokio::select! {
        // Nothing to say goodbye to yet: just close.
        () = gateway.drain.cancelled() => return None,
        header = proxy::read_header(tcp, gateway.limits.proxy_header_timeout) => header,
    };
    match header {
        Ok(Some(client)) => {
            tracing::debug!(listener, %client, via = %peer, "PROXY header");
            Some(client)
        }
        Ok(None) => {
            tracing::debug!(listener, client = %peer, via = %peer, "PROXY header without a client address");
            Some(peer)
        }
        Err(error @ (proxy::ProxyError::Closed | proxy::ProxyError::Io(_))) => {
            tracing::debug!(listener, %peer, %error, "connection closed");
            None
        }
        Err(error) => {
            tracing::warn!(listener, %peer, %error, "PROXY header refused; closing");
            None
        }
    }
}

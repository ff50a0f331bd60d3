//! The accept loop, and nothing else: cap concurrent connections (telling the ones over
//! the cap so, from a task of their own), back off when accept fails (out of file
//! descriptors), and spawn a task per client. The PROXY header, TLS
//! handshakes and everything slow happen inside that task, so one slow client never
//! stalls the loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{ListenerConfig, ListenerTls};
use crate::gateway::Gateway;
use crate::imap::session::ImapSession;
use crate::net::proxy;
use crate::net::stream::Stream;
use crate::pop3::session::Pop3Session;
use crate::protocol::Protocol;
use crate::session;
use crate::smtp::session::SmtpSession;

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
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let mut backoff = Duration::from_millis(5);
    loop {
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: tell the client so, from a task of its own (a TLS listener needs a
            // handshake first); when even those are many, just close.
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                let (gateway, config) = (gateway.clone(), config.clone());
                tasks.spawn(async move {
                    refuse(&gateway, &config, tcp).await;
                    drop(refusal);
                });
            }
            tracing::warn!(listener = %config.name, %peer, "listener full (max_connections); refused");
            continue;
        };
        let gateway = gateway.clone();
        let config = config.clone();
        tasks.spawn(async move {
            let _slot = slot;
            if !config.proxy_protocol {
                return serve(gateway, config, tcp, peer).await;
            }
            let mut tcp = tcp;
            // Boxed: its header buffer is done with before the session starts.
            let Some(client) =
                Box::pin(client_behind_balancer(&gateway, &config, &mut tcp, peer)).await
            else {
                return;
            };
            // Every line the session logs names the balancer too.
            let span = tracing::info_span!("proxied", via = %peer);
            serve(gateway, config, tcp, client).instrument(span).await
        });
    }
}

/// Connections being told "too many connections" at once, per listener.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// Answers a connection the listener has no room for with the protocol's temporary
/// refusal. On a PROXY listener it just closes: the header would come first.
async fn refuse(gateway: &Gateway, config: &ListenerConfig, tcp: TcpStream) {
    use tokio::io::AsyncWriteExt;
    if config.proxy_protocol {
        return;
    }
    let mut stream = match config.tls {
        ListenerTls::Implicit => match gateway.accept_tls(tcp).await {
            Ok(stream) => stream,
            Err(_) => return,
        },
        ListenerTls::Starttls => Stream::Plain(tcp),
    };
    let message: &[u8] = match config.protocol {
        Protocol::Imap => b"* BYE Too many connections, try again later\r\n",
        Protocol::Smtp => b"421 4.7.0 Too many connections, try again later\r\n",
        Protocol::Pop3 => b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
    };
    let _ = stream.write_all(message).await;
    let _ = stream.shutdown().await;
}

/// Runs the listener's protocol for `client`.
async fn serve(
    gateway: Arc<Gateway>,
    config: Arc<ListenerConfig>,
    tcp: TcpStream,
    client: SocketAddr,
) {
    // A task is as large as the largest future it may run, for as long as it runs. IMAP's
    // is kept small for the idle sessions that last for days (its pre-auth phase is boxed
    // inside); SMTP's, which holds a whole conversation, is boxed here so it costs the IMAP
    // tasks nothing.
    match config.protocol {
        Protocol::Imap => session::serve::<ImapSession>(gateway, config, tcp, client).await,
        Protocol::Smtp => {
            Box::pin(session::serve::<SmtpSession>(gateway, config, tcp, client)).await
        }
        Protocol::Pop3 => session::serve::<Pop3Session>(gateway, config, tcp, client).await,
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

//! The accept loop, and nothing else: cap concurrent connections, back off when accept
//! fails (out of file descriptors), and spawn a task per client. TLS handshakes and
//! everything slow happen inside that task, so one slow client never stalls the loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::config::{ListenerConfig, Protocol};
use crate::server::Gateway;
use crate::{imap, smtp};

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
            () = gateway.shutdown.cancelled() => return,
            // Unwrap-free: the semaphore is never closed.
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (tcp, client) = tokio::select! {
            () = gateway.shutdown.cancelled() => return,
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
            match config.protocol {
                Protocol::Imap => imap::session::serve(gateway, config, tcp, client).await,
                Protocol::Smtp => smtp::session::serve(gateway, config, tcp, client).await,
            }
            drop(slot);
        });
    }
}

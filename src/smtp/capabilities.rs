//! What the upstream SMTP server offers before login (SIZE, SMTPUTF8, DSN), read with a
//! probe connection ahead of the clients that need it and reused for a while, so that a
//! client's EHLO does not wait for the upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::upstream::{self as smtp_upstream, Capabilities};
use crate::upstream::Upstream;

/// How soon a failed probe is retried.
const RETRY: Duration = Duration::from_secs(10);

/// The last probe's answer and when it goes stale.
pub struct CapabilityCache {
    /// How long an answer is reused.
    refresh: Duration,
    cached: Mutex<Option<(Instant, Capabilities)>>,
}

impl CapabilityCache {
    pub fn new(refresh: Duration) -> Self {
        Self {
            refresh,
            cached: Mutex::new(None),
        }
    }

    /// What `upstream` offers, probed at most every `refresh`. When the probe fails,
    /// nothing optional is advertised and postern asks again after a short pause.
    pub async fn get(&self, upstream: Option<Arc<Upstream>>, hostname: &str) -> Capabilities {
        let mut cached = self.cached.lock().await;
        if let Some((stale_at, capabilities)) = cached.as_ref() {
            if Instant::now() < *stale_at {
                return capabilities.clone();
            }
        }
        let Some(upstream) = upstream else {
            return Capabilities::default();
        };
        let (capabilities, valid_for) = match smtp_upstream::probe(&upstream, hostname).await {
            Ok(capabilities) => (capabilities, self.refresh),
            Err(error) => {
                tracing::warn!(%error, "cannot read the upstream SMTP capabilities");
                (Capabilities::default(), RETRY.min(self.refresh))
            }
        };
        *cached = Some((Instant::now() + valid_for, capabilities.clone()));
        capabilities
    }

    /// Drops the answer (after a reload): the next client's EHLO probes again.
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }
}

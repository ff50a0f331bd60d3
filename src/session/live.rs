//! The registry of live, logged-in sessions, so that revoking an app password, disabling
//! or removing a user closes the sessions it opened; and [`Authenticated`], what a
//! logged-in session holds: its grant, its registration, and the moment its credential
//! stops being valid (revoked, or expired by the clock).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::auth::Grant;
use crate::clock::now;
use crate::net::caps::Admitted;
use crate::ops::metrics::Metrics;
use crate::protocol::Protocol;

#[derive(Debug)]
struct Entry {
    user_id: i64,
    app_password_id: i64,
    closing: Arc<Notify>,
}

/// Every session that is past login on this instance.
#[derive(Debug, Default)]
pub struct LiveSessions {
    next_id: AtomicU64,
    entries: Mutex<HashMap<u64, Entry>>,
}

/// A registered session; dropping it unregisters.
#[derive(Debug)]
pub struct LiveSession {
    id: u64,
    registry: Arc<LiveSessions>,
    closing: Arc<Notify>,
}

impl LiveSession {
    /// Completes when the session must close because its credential stopped being valid.
    pub async fn revoked(&self) {
        self.closing.notified().await
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl LiveSessions {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent (single
        // inserts and removes), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a logged-in session.
    pub fn register(self: &Arc<Self>, user_id: i64, app_password_id: i64) -> LiveSession {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let closing = Arc::new(Notify::new());
        self.lock().insert(
            id,
            Entry {
                user_id,
                app_password_id,
                closing: closing.clone(),
            },
        );
        LiveSession {
            id,
            registry: self.clone(),
            closing,
        }
    }

    /// Signals every session of this app password to close; returns how many.
    pub fn close_app_password(&self, app_password_id: i64) -> usize {
        self.close_where(|e| e.app_password_id == app_password_id)
    }

    /// Signals every session of this user to close; returns how many.
    pub fn close_user(&self, user_id: i64) -> usize {
        self.close_where(|e| e.user_id == user_id)
    }

    /// Sessions currently registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn close_where(&self, matches: impl Fn(&Entry) -> bool) -> usize {
        let entries = self.lock();
        let mut closed = 0;
        for entry in entries.values().filter(|e| matches(e)) {
            // notify_one stores a permit, so a session that is not waiting right now
            // still sees the signal at its next wait.
            entry.closing.notify_one();
            closed += 1;
        }
        closed
    }
}

/// Why a logged-in session's credential stopped being valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialEnd {
    /// Revoked, or its user disabled or removed, anywhere (the change feed).
    Revoked,
    /// The app password's expiry time came.
    Expired,
}

impl CredentialEnd {
    /// For log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialEnd::Revoked => "revoked",
            CredentialEnd::Expired => "expired",
        }
    }
}

/// A session's place under the per-login cap (`max_sessions_per_user_ip`).
pub type SessionSlot = Admitted<(Protocol, std::net::IpAddr, i64)>;

/// A session past login: counted in `postern_sessions_active` and registered for
/// revocation until dropped.
#[derive(Debug)]
pub struct Authenticated {
    pub grant: Arc<Grant>,
    live: LiveSession,
    /// When the app password expires, on the runtime's clock.
    expires: Option<Instant>,
    active: IntGauge,
    closed_at_expiry: IntCounter,
    _slot: SessionSlot,
}

impl Authenticated {
    /// Registers a session of `protocol` that logged in with `grant`.
    pub fn new(
        sessions: &Arc<LiveSessions>,
        metrics: &Metrics,
        grant: Arc<Grant>,
        protocol: Protocol,
        slot: SessionSlot,
    ) -> Self {
        let live = sessions.register(grant.user_id, grant.app_password_id);
        let active = metrics
            .sessions_active
            .with_label_values(&[protocol.as_str()]);
        active.inc();
        let expires = grant.expires_at.map(|at| {
            let left = at.saturating_sub(now()).max(0) as u64;
            Instant::now() + std::time::Duration::from_secs(left)
        });
        Self {
            grant,
            live,
            expires,
            active,
            closed_at_expiry: metrics.revoked_sessions_closed.clone(),
            _slot: slot,
        }
    }

    /// Completes when the session must end: its credential was revoked (or its user
    /// disabled or removed) or it expired. The change feed counts revocations in
    /// `postern_revoked_sessions_closed_total`; expiries are counted here.
    pub async fn ended(&self) -> CredentialEnd {
        // Polled by hand rather than with `select!`: a relayed session holds this future
        // for as long as it idles.
        let mut revoked = std::pin::pin!(self.live.revoked());
        let mut expiry = std::pin::pin!(self.expires.map(tokio::time::sleep_until));
        std::future::poll_fn(|cx| {
            if revoked.as_mut().poll(cx).is_ready() {
                return Poll::Ready(CredentialEnd::Revoked);
            }
            if let Some(expiry) = expiry.as_mut().as_pin_mut() {
                if expiry.poll(cx).is_ready() {
                    self.closed_at_expiry.inc();
                    return Poll::Ready(CredentialEnd::Expired);
                }
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for Authenticated {
    fn drop(&mut self) {
        self.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revoking_closes_exactly_the_matching_sessions() {
        let sessions = LiveSessions::new();
        let a = sessions.register(1, 10);
        let b = sessions.register(1, 11);
        let c = sessions.register(2, 20);
        assert_eq!(sessions.close_app_password(10), 1);
        a.revoked().await; // completes: the permit was stored
        assert_eq!(sessions.close_user(1), 2);
        b.revoked().await;
        let untouched = tokio::time::timeout(std::time::Duration::from_millis(10), c.revoked());
        assert!(untouched.await.is_err(), "user 2 was not revoked");
        drop(a);
        drop(b);
        assert_eq!(sessions.len(), 1);
    }
}

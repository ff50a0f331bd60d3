//! The registry of live, logged-in sessions, so that revoking an app password, disabling
//! or removing a user closes the sessions it opened.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

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

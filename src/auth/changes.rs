//! Follows the store's change feed so that a revocation made anywhere (the CLI, another
//! instance) drops cached verifications and closes the affected live sessions here.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::verifier::Verifier;
use crate::metrics::Metrics;
use crate::sessions::LiveSessions;
use crate::store::{self, Change, Store, StoreError};

/// Changes are re-read this far back on every poll: on PostgreSQL a transaction can
/// commit a lower id after a higher one, and re-reading catches it. Seen ids are skipped.
const OVERLAP: i64 = 64;

/// Polls the change feed every `interval` until `shutdown` completes.
pub async fn follow(
    store: Store,
    verifier: Verifier,
    sessions: Arc<LiveSessions>,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut feed = match Feed::start(&store).await {
        Ok(feed) => feed,
        Err(error) => {
            tracing::warn!(%error, "cannot read the change feed; starting from the beginning");
            Feed::default()
        }
    };
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticker.tick() => {}
        }
        let changes = match feed.poll(&store).await {
            Ok(changes) => changes,
            Err(error) => {
                tracing::warn!(%error, "cannot poll the change feed");
                continue;
            }
        };
        if changes.is_empty() {
            continue;
        }
        verifier.forget_all();
        for change in &changes {
            let closed = apply(&sessions, change);
            metrics.revoked_sessions_closed.inc_by(closed as u64);
            tracing::info!(
                kind = %change.kind,
                user_id = change.user_id,
                app_password_id = change.app_password_id,
                sessions_closed = closed,
                "credential change applied"
            );
        }
    }
}

/// Closes the sessions a change ends; returns how many.
fn apply(sessions: &LiveSessions, change: &Change) -> usize {
    match (change.kind.as_str(), change.app_password_id) {
        (store::CHANGE_APP_PASSWORD_REVOKED, Some(id)) => sessions.close_app_password(id),
        (store::CHANGE_USER_DISABLED | store::CHANGE_USER_REMOVED, _) => {
            sessions.close_user(change.user_id)
        }
        _ => 0,
    }
}

/// Where this instance is in the change feed.
#[derive(Debug, Default)]
struct Feed {
    last: i64,
    seen: BTreeSet<i64>,
}

impl Feed {
    async fn start(store: &Store) -> Result<Self, StoreError> {
        let last = store.last_change_id().await?;
        Ok(Self {
            last,
            seen: BTreeSet::new(),
        })
    }

    /// The changes not handled yet.
    async fn poll(&mut self, store: &Store) -> Result<Vec<Change>, StoreError> {
        let mut fresh = Vec::new();
        loop {
            let from = self.last.saturating_sub(OVERLAP);
            let page = store.changes_after(from).await?;
            let full = page.len() >= store::CHANGES_PAGE as usize;
            let before = self.last;
            for change in page {
                if change.id <= before.saturating_sub(OVERLAP) || !self.seen.insert(change.id) {
                    continue;
                }
                self.last = self.last.max(change.id);
                fresh.push(change);
            }
            let floor = self.last.saturating_sub(OVERLAP);
            self.seen = self.seen.split_off(&floor);
            if !full || self.last == before {
                return Ok(fresh);
            }
        }
    }
}

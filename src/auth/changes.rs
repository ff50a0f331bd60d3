//! Follows the store's change feed so that a revocation made anywhere (the CLI, another
//! instance, SCIM) drops cached verifications and closes the affected live sessions here.
//! With PostgreSQL each change is also pushed (LISTEN/NOTIFY): the feed is read at once
//! instead of at the next poll, which stays the fallback.

use std::sync::Arc;
use std::time::Duration;

use super::verifier::Verifier;
use crate::ops::metrics::Metrics;
use crate::session::live::LiveSessions;
use crate::store::{self, Backend, Change, ChangeSignal, Store, StoreError};

/// How often to try listening again after the push was lost.
const RELISTEN_EVERY: Duration = Duration::from_secs(1);

/// Reads the change feed every `interval`, and at once when the store pushes a change,
/// until `shutdown` completes. A store outage is logged once, and its end once; polling
/// goes on through it and picks up where it left off, so no change is missed.
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
    // Since when polls have failed, while they do.
    let mut failing: Option<tokio::time::Instant> = None;
    // PostgreSQL's push; while it is lost, every second tries to listen again (and the
    // feed is read after each try, so what was pushed meanwhile is not missed).
    let mut signal = listen(&store).await;
    let pushes = store.backend() == Backend::Postgres;
    let mut relisten = tokio::time::interval(RELISTEN_EVERY);
    relisten.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticker.tick() => {}
            _ = relisten.tick(), if pushes && signal.is_none() => {
                signal = listen(&store).await;
            }
            woken = pushed(&mut signal) => {
                if let Err(error) = woken {
                    tracing::warn!(%error, "lost the change notifications; polling until they are back");
                    signal = None;
                }
            }
        }
        let changes = match feed.poll(&store).await {
            Ok(changes) => changes,
            Err(error) => {
                if failing.is_none() {
                    failing = Some(tokio::time::Instant::now());
                    tracing::warn!(%error, "cannot poll the change feed; retrying until the store answers");
                }
                continue;
            }
        };
        if let Some(since) = failing.take() {
            tracing::info!(unavailable_for = ?since.elapsed(), "the change feed answers again");
        }
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

/// Where this instance is in the change feed. The store commits changes in id order (on
/// PostgreSQL, each change insert locks the table until commit), so remembering the last
/// id seen is enough.
#[derive(Debug, Default)]
struct Feed {
    last: i64,
}

impl Feed {
    async fn start(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            last: store.last_change_id().await?,
        })
    }

    /// The changes not handled yet. Moves on only when every page was read: after a
    /// failure, the next poll reads again from where this one started.
    async fn poll(&mut self, store: &Store) -> Result<Vec<Change>, StoreError> {
        let mut fresh = Vec::new();
        let mut last = self.last;
        loop {
            let page = store.changes_after(last).await?;
            let full = page.len() >= store::CHANGES_PAGE as usize;
            if let Some(change) = page.last() {
                last = change.id;
            }
            fresh.extend(page);
            if !full {
                self.last = last;
                return Ok(fresh);
            }
        }
    }
}

/// The store's change notifications, when it has them (PostgreSQL).
async fn listen(store: &Store) -> Option<ChangeSignal> {
    match store.listen_for_changes().await {
        Ok(signal) => signal,
        Err(error) => {
            tracing::debug!(%error, "cannot listen for change notifications yet");
            None
        }
    }
}

/// The next notification; never, without a listener.
async fn pushed(signal: &mut Option<ChangeSignal>) -> Result<(), StoreError> {
    match signal {
        Some(signal) => signal.next().await,
        None => std::future::pending().await,
    }
}

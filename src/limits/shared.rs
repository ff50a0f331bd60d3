//! Penalties and quotas shared by every instance on one PostgreSQL store, so that guesses
//! spread over instances behind a load balancer earn the penalty of one gateway and a quota
//! holds across all of them.
//!
//! Penalties: each instance keeps a copy of the shared counts in its memory
//! ([`MemoryPenalties`]), kept current by the store's announcements (LISTEN/NOTIFY), so
//! asking whether a login may be verified costs no round trip. A failure is counted in the
//! store in one statement that also announces it; a correct password clears the counts in
//! one statement, and only when there is something to clear. While the store cannot be
//! reached, failures are counted in this instance's memory: a guesser still waits.
//!
//! Quotas: one indexed read when a message starts and for each recipient, one insert when
//! the upstream accepts a message. While the store cannot be reached, this instance's own
//! count of the last hour decides.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use prometheus::IntCounter;
use sqlx::postgres::PgListener;
use tokio::task::JoinHandle;

use super::penalty::{delay_after, Key, MemoryPenalties};
use super::quota::{MemoryQuotas, QuotaLimits};
use super::{Penalties, Pending, Quotas};
use crate::ops::metrics::Metrics;
use crate::store::{Store, StoreError};

/// How long to wait before listening again after the store's connection is lost.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

/// How often the counts that no longer matter are deleted.
const TIDY_EVERY: Duration = Duration::from_secs(5 * 60);

/// Starts the shared penalties and quotas: loads the counts not yet forgotten, then
/// follows the store's announcements for as long as the penalties live.
pub async fn start(
    store: Store,
    trusted: Vec<IpNet>,
    limits: QuotaLimits,
    metrics: &Metrics,
) -> Result<(Arc<SharedPenalties>, Arc<SharedQuotas>), StoreError> {
    let book = Arc::new(MemoryPenalties::new(trusted));
    // Listening first, then loading, so that no count falls between the two.
    let listener = store.listen_for_penalties().await?;
    load(&store, &book).await?;
    let follower = tokio::spawn(follow(store.clone(), Arc::downgrade(&book), listener));
    let penalties = Arc::new(SharedPenalties {
        store: store.clone(),
        book,
        fallbacks: metrics
            .shared_limits_fallbacks
            .with_label_values(&["penalty"]),
        follower,
    });
    let quotas = Arc::new(SharedQuotas {
        store,
        limits,
        local: MemoryQuotas::new(limits),
        fallbacks: metrics
            .shared_limits_fallbacks
            .with_label_values(&["quota"]),
    });
    Ok((penalties, quotas))
}

/// Login penalties counted in the shared store.
pub struct SharedPenalties {
    store: Store,
    /// This instance's copy of the shared counts; also where failures are counted while
    /// the store cannot be reached.
    book: Arc<MemoryPenalties>,
    fallbacks: IntCounter,
    follower: JoinHandle<()>,
}

impl Drop for SharedPenalties {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl Penalties for SharedPenalties {
    fn blocked_for<'a>(&'a self, ip: IpAddr, login: &'a str) -> Pending<'a, Option<Duration>> {
        Box::pin(std::future::ready(self.book.blocked_for(ip, login)))
    }

    fn failed<'a>(
        &'a self,
        ip: IpAddr,
        login: &'a str,
        password_digest: [u8; 32],
    ) -> Pending<'a, Duration> {
        Box::pin(async move {
            let Some(keys) = self.book.keys(ip, login) else {
                return Duration::ZERO;
            };
            let names = keys.clone().map(|key| key.to_text());
            let fingerprint = u16::from_be_bytes([password_digest[0], password_digest[1]]);
            match self.store.count_failure(&names, fingerprint).await {
                Ok(counts) => {
                    let mut delay = Duration::ZERO;
                    for (name, failures) in counts {
                        if let Some(key) = Key::from_text(&name) {
                            self.book.set_failures(key, failures, Duration::ZERO);
                        }
                        delay = delay.max(delay_after(failures));
                    }
                    delay
                }
                Err(error) => {
                    tracing::warn!(%error, "shared store unreachable: failed login counted in this instance's memory");
                    self.fallbacks.inc();
                    self.book.failed(ip, login, password_digest)
                }
            }
        })
    }

    fn succeeded<'a>(&'a self, ip: IpAddr, login: &'a str) -> Pending<'a, ()> {
        Box::pin(async move {
            let Some(keys) = self.book.keys(ip, login) else {
                return;
            };
            // Nothing on record here means nothing in the store either (every count is
            // announced), so a good login costs no round trip.
            if !self.book.has_failures(&keys) {
                return;
            }
            if let Err(error) = self
                .store
                .clear_failures(&keys.map(|key| key.to_text()))
                .await
            {
                tracing::warn!(%error, "shared store unreachable: penalties cleared in this instance's memory only");
                self.fallbacks.inc();
            }
            self.book.succeeded(ip, login);
        })
    }
}

/// Reads the counts not yet forgotten into the book.
async fn load(store: &Store, book: &MemoryPenalties) -> Result<(), StoreError> {
    for count in store.recent_failures().await? {
        if let Some(key) = Key::from_text(&count.key) {
            let since = Duration::try_from_secs_f64(count.since_seconds).unwrap_or_default();
            book.set_failures(key, count.failures, since);
        }
    }
    Ok(())
}

/// Follows the store's announcements into the book, listening again (and reloading what
/// was announced meanwhile) after a lost connection; tidies the tables now and then. Ends
/// with the book, or at once with SQLite.
async fn follow(
    store: Store,
    book: std::sync::Weak<MemoryPenalties>,
    listener: Option<PgListener>,
) {
    let Some(mut listener) = listener else {
        return;
    };
    let mut tidy = tokio::time::interval(TIDY_EVERY);
    loop {
        tokio::select! {
            notification = listener.try_recv() => match notification {
                Ok(Some(notification)) => {
                    let Some(book) = book.upgrade() else { return };
                    apply(&book, notification.payload());
                }
                Ok(None) | Err(_) => {
                    tracing::warn!("lost the shared penalties' connection; listening again");
                    let Some(again) = listen_again(&store, &book).await else { return };
                    listener = again;
                }
            },
            _ = tidy.tick() => {
                if let Err(error) = store.tidy_limits().await {
                    tracing::warn!(%error, "cannot tidy the shared penalties and quotas");
                }
            }
        }
    }
}

/// Listens again and reloads the counts, retrying until the store answers; `None` when
/// the book is gone meanwhile.
async fn listen_again(
    store: &Store,
    book: &std::sync::Weak<MemoryPenalties>,
) -> Option<PgListener> {
    loop {
        tokio::time::sleep(RELISTEN_AFTER).await;
        let listener = match store.listen_for_penalties().await {
            Ok(listener) => listener?,
            Err(error) => {
                tracing::debug!(%error, "cannot listen for shared penalties yet");
                continue;
            }
        };
        let book = book.upgrade()?;
        match load(store, &book).await {
            Ok(()) => {
                tracing::info!("listening for shared penalties again");
                return Some(listener);
            }
            Err(error) => tracing::debug!(%error, "cannot reload shared penalties yet"),
        }
    }
}

/// Applies one announcement, `"<failures> <key>"`; anything else is ignored.
fn apply(book: &MemoryPenalties, payload: &str) {
    let Some((failures, name)) = payload.split_once(' ') else {
        return;
    };
    if let (Ok(failures), Some(key)) = (failures.parse(), Key::from_text(name)) {
        book.set_failures(key, failures, Duration::ZERO);
    }
}

/// Sending quotas counted in the shared store.
pub struct SharedQuotas {
    store: Store,
    limits: QuotaLimits,
    /// This instance's own count, which decides while the store cannot be reached.
    local: MemoryQuotas,
    fallbacks: IntCounter,
}

impl SharedQuotas {
    /// Whether what was sent in the last hour, plus `more`, stays within the quotas;
    /// `None` when the store cannot say.
    async fn within(&self, app_password_id: i64, more: impl Fn(i64, i64) -> bool) -> Option<bool> {
        match self.store.sent_last_hour(app_password_id).await {
            Ok(sent) => Some(more(sent.messages, sent.recipients)),
            Err(error) => {
                tracing::warn!(%error, "shared store unreachable: quota checked against this instance's count");
                self.fallbacks.inc();
                None
            }
        }
    }
}

impl Quotas for SharedQuotas {
    fn may_send_message(&self, app_password_id: i64) -> Pending<'_, bool> {
        Box::pin(async move {
            let Some(limit) = self.limits.messages_per_hour else {
                return true;
            };
            match self
                .within(app_password_id, |messages, _| messages < i64::from(limit))
                .await
            {
                Some(answer) => answer,
                None => self.local.may_send_message(app_password_id),
            }
        })
    }

    fn may_add_recipients(&self, app_password_id: i64, recipients: u32) -> Pending<'_, bool> {
        Box::pin(async move {
            let Some(limit) = self.limits.recipients_per_hour else {
                return true;
            };
            let fits = |_, sent: i64| sent + i64::from(recipients) <= i64::from(limit);
            match self.within(app_password_id, fits).await {
                Some(answer) => answer,
                None => self.local.may_add_recipients(app_password_id, recipients),
            }
        })
    }

    fn record(&self, app_password_id: i64, recipients: u32) -> Pending<'_, ()> {
        Box::pin(async move {
            self.local.record(app_password_id, recipients);
            if self.limits.messages_per_hour.is_none() && self.limits.recipients_per_hour.is_none()
            {
                return;
            }
            if let Err(error) = self.store.record_sent(app_password_id, recipients).await {
                tracing::warn!(%error, "shared store unreachable: message counted in this instance's memory only");
                self.fallbacks.inc();
            }
        })
    }
}

//! Per-app-password sending quotas: messages and recipients in the last hour, counted in
//! this instance's memory (one instance on SQLite; a restart forgets the counts).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{Pending, Quotas};

const WINDOW: Duration = Duration::from_secs(3600);

/// The configured limits; `None` means unlimited.
#[derive(Debug, Clone, Copy)]
pub struct QuotaLimits {
    pub messages_per_hour: Option<u32>,
    pub recipients_per_hour: Option<u32>,
}

/// Sent messages per app password, in a sliding one-hour window.
#[derive(Debug)]
pub struct MemoryQuotas {
    limits: QuotaLimits,
    sent: Mutex<HashMap<i64, VecDeque<(Instant, u32)>>>,
}

impl MemoryQuotas {
    pub fn new(limits: QuotaLimits) -> Self {
        Self {
            limits,
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// Whether one more message may start.
    pub fn may_send_message(&self, app_password_id: i64) -> bool {
        let Some(limit) = self.limits.messages_per_hour else {
            return true;
        };
        self.with_window(app_password_id, |window| window.len() < limit as usize)
    }

    /// Whether a message may have `recipients` recipients (those of the transaction so far
    /// plus the one being added).
    pub fn may_add_recipients(&self, app_password_id: i64, recipients: u32) -> bool {
        let Some(limit) = self.limits.recipients_per_hour else {
            return true;
        };
        self.with_window(app_password_id, |window| {
            let sent: u32 = window.iter().map(|(_, n)| n).sum();
            sent.saturating_add(recipients) <= limit
        })
    }

    /// Counts a message the upstream accepted.
    pub fn record(&self, app_password_id: i64, recipients: u32) {
        self.with_window(app_password_id, |window| {
            window.push_back((Instant::now(), recipients))
        });
    }

    fn with_window<T>(&self, id: i64, f: impl FnOnce(&mut VecDeque<(Instant, u32)>) -> T) -> T {
        // Each operation leaves the map consistent, so a poisoned lock is still usable.
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sent.retain(|_, window| {
            while window
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW)
            {
                window.pop_front();
            }
            !window.is_empty()
        });
        f(sent.entry(id).or_default())
    }
}

impl Quotas for MemoryQuotas {
    fn may_send_message(&self, app_password_id: i64) -> Pending<'_, bool> {
        Box::pin(std::future::ready(MemoryQuotas::may_send_message(
            self,
            app_password_id,
        )))
    }

    fn may_add_recipients(&self, app_password_id: i64, recipients: u32) -> Pending<'_, bool> {
        Box::pin(std::future::ready(MemoryQuotas::may_add_recipients(
            self,
            app_password_id,
            recipients,
        )))
    }

    fn record(&self, app_password_id: i64, recipients: u32) -> Pending<'_, ()> {
        MemoryQuotas::record(self, app_password_id, recipients);
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limits_hold_for_an_hour_then_free_up() {
        let quotas = MemoryQuotas::new(QuotaLimits {
            messages_per_hour: Some(2),
            recipients_per_hour: Some(5),
        });
        assert!(quotas.may_send_message(1));
        quotas.record(1, 3);
        assert!(quotas.may_add_recipients(1, 2));
        assert!(!quotas.may_add_recipients(1, 3));
        quotas.record(1, 1);
        assert!(!quotas.may_send_message(1), "two messages this hour");
        assert!(quotas.may_send_message(2), "quotas are per app password");
        tokio::time::advance(WINDOW).await;
        assert!(quotas.may_send_message(1));
        assert!(quotas.may_add_recipients(1, 5));
    }

    #[test]
    fn no_limit_means_unlimited() {
        let quotas = MemoryQuotas::new(QuotaLimits {
            messages_per_hour: None,
            recipients_per_hour: None,
        });
        quotas.record(1, 1000);
        assert!(quotas.may_send_message(1) && quotas.may_add_recipients(1, u32::MAX));
    }
}

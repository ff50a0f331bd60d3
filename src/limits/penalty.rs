//! Login penalties, like Dovecot's: every failed login from a client address (IPv6
//! grouped by /64) and for a login name makes the next answer wait longer: 2, 4, 8, then
//! 15 seconds. While a penalty runs, further attempts from that address or for that login
//! never reach the password hash: they are answered with a temporary failure once the
//! penalty has run out, so a flood of guesses gets one answer per penalty and
//! connection, not thousands a second.
//! Retyping the same wrong password is counted once (a phone retrying with a stale
//! password is not an attack). Trusted networks are exempt.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;

use super::{Penalties, Pending};
use crate::net::caps::address_group;
use moka::sync::Cache;
use tokio::time::Instant;

/// The delay after the n-th counted failure (n ≥ 1).
const DELAYS: [Duration; 4] = [
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(15),
];

/// A key's failures are forgotten after this long without a new one.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// Distinct wrong passwords remembered per key, to count a repeated one once.
const REMEMBERED_PASSWORDS: usize = 8;

/// Keys tracked at most; the least recently used are forgotten first.
const MAX_KEYS: u64 = 200_000;

/// What a penalty is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Key {
    Address(IpAddr),
    Login(String),
}

impl Key {
    /// The key as the shared store names it: `a:` and the address group, or `l:` and the
    /// login.
    pub(super) fn to_text(&self) -> String {
        match self {
            Key::Address(ip) => format!("a:{ip}"),
            Key::Login(login) => format!("l:{login}"),
        }
    }

    /// The key of a name from the shared store; `None` for a name this version does not
    /// know.
    pub(super) fn from_text(text: &str) -> Option<Key> {
        match text.split_once(':')? {
            ("a", ip) => ip.parse().ok().map(Key::Address),
            ("l", login) => Some(Key::Login(login.to_string())),
            _ => None,
        }
    }
}

/// The delay after the `failures`-th counted failure (none before the first).
pub(super) fn delay_after(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => DELAYS[(n as usize - 1).min(DELAYS.len() - 1)],
    }
}

#[derive(Debug, Default)]
struct Record {
    failures: u32,
    /// Until when this key is answered with a temporary failure.
    blocked_until: Option<Instant>,
    /// Digests of the wrong passwords already counted.
    passwords: Vec<[u8; 32]>,
}

/// The penalty book of this instance, in its memory.
pub struct MemoryPenalties {
    trusted: Vec<IpNet>,
    records: Cache<Key, Arc<Mutex<Record>>>,
}

impl std::fmt::Debug for MemoryPenalties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPenalties")
            .field("trusted", &self.trusted)
            .field("keys", &self.records.entry_count())
            .finish()
    }
}

impl MemoryPenalties {
    pub fn new(trusted: Vec<IpNet>) -> Self {
        Self {
            trusted,
            records: Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_idle(FORGET_AFTER)
                .build(),
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The keys an attempt is counted against; `None` from a trusted network.
    pub(super) fn keys(&self, ip: IpAddr, login: &str) -> Option<[Key; 2]> {
        if self.is_trusted(ip) {
            return None;
        }
        Some([
            Key::Address(address_group(ip)),
            Key::Login(login.to_string()),
        ])
    }

    /// Whether an attempt may be verified now; `false` means answer with a temporary
    /// failure without hashing. `login` is the canonical (lowercased) login.
    pub fn may_attempt(&self, ip: IpAddr, login: &str) -> bool {
        self.blocked_for(ip, login).is_none()
    }

    /// How long the penalties on the address and the login still run (the longer of the
    /// two), or `None` when an attempt may be verified now.
    pub fn blocked_for(&self, ip: IpAddr, login: &str) -> Option<Duration> {
        let keys = self.keys(ip, login)?;
        let now = Instant::now();
        keys.iter()
            .filter_map(|key| self.records.get(key))
            .filter_map(|record| lock(&record).blocked_until)
            .filter(|&until| until > now)
            .map(|until| until - now)
            .max()
    }

    /// Counts a failed login and returns how long to wait before answering it. A wrong
    /// password already counted for a key does not count again.
    pub fn failed(&self, ip: IpAddr, login: &str, password_digest: [u8; 32]) -> Duration {
        let Some(keys) = self.keys(ip, login) else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let mut delay = Duration::ZERO;
        for key in keys {
            let record = self.records.get_with(key, Arc::default);
            let mut record = lock(&record);
            if !record.passwords.contains(&password_digest) {
                record.failures = record.failures.saturating_add(1);
                if record.passwords.len() == REMEMBERED_PASSWORDS {
                    record.passwords.remove(0);
                }
                record.passwords.push(password_digest);
            }
            let key_delay = delay_after(record.failures.max(1));
            record.blocked_until = Some(now + key_delay);
            delay = delay.max(key_delay);
        }
        delay
    }

    /// Takes a key's count from the shared store: `failures` counted, the last one
    /// `since` ago (the penalty runs for what is left of its delay); zero forgets the key.
    pub(super) fn set_failures(&self, key: Key, failures: u32, since: Duration) {
        if failures == 0 {
            self.records.invalidate(&key);
            return;
        }
        let record = self.records.get_with(key, Arc::default);
        let mut record = lock(&record);
        record.failures = failures;
        record.blocked_until = delay_after(failures)
            .checked_sub(since)
            .map(|left| Instant::now() + left);
    }

    /// Whether either key has failures on record (a correct password then has something
    /// to clear).
    pub(super) fn has_failures(&self, keys: &[Key; 2]) -> bool {
        keys.iter().any(|key| self.records.contains_key(key))
    }

    /// A correct password clears the address's and the login's penalties.
    pub fn succeeded(&self, ip: IpAddr, login: &str) {
        if let Some(keys) = self.keys(ip, login) {
            for key in keys {
                self.records.invalidate(&key);
            }
        }
    }
}

impl Penalties for MemoryPenalties {
    fn blocked_for<'a>(&'a self, ip: IpAddr, login: &'a str) -> Pending<'a, Option<Duration>> {
        Box::pin(std::future::ready(MemoryPenalties::blocked_for(
            self, ip, login,
        )))
    }

    fn failed<'a>(
        &'a self,
        ip: IpAddr,
        login: &'a str,
        password_digest: [u8; 32],
    ) -> Pending<'a, Duration> {
        Box::pin(std::future::ready(MemoryPenalties::failed(
            self,
            ip,
            login,
            password_digest,
        )))
    }

    fn succeeded<'a>(&'a self, ip: IpAddr, login: &'a str) -> Pending<'a, ()> {
        MemoryPenalties::succeeded(self, ip, login);
        Box::pin(std::future::ready(()))
    }
}

fn lock(record: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    // Records are plain counters; a poisoned one is still consistent.
    record.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn delays_grow_2_4_8_15_and_block_meanwhile() {
        let penalties = MemoryPenalties::new(vec![]);
        let client = ip("192.0.2.1");
        let mut delays = Vec::new();
        for n in 0..5u8 {
            assert!(penalties.may_attempt(client, "alice"));
            let delay = penalties.failed(client, "alice", [n; 32]);
            assert!(
                !penalties.may_attempt(client, "alice"),
                "blocked during the delay"
            );
            assert!(
                !penalties.may_attempt(ip("198.51.100.7"), "alice"),
                "the login is blocked too"
            );
            assert!(
                !penalties.may_attempt(client, "bob"),
                "the address is blocked too"
            );
            assert!(penalties.may_attempt(ip("198.51.100.7"), "bob"));
            assert_eq!(penalties.blocked_for(client, "alice"), Some(delay));
            tokio::time::advance(delay / 2).await;
            assert_eq!(
                penalties.blocked_for(client, "bob"),
                Some(delay - delay / 2)
            );
            tokio::time::advance(delay - delay / 2).await;
            assert_eq!(penalties.blocked_for(client, "alice"), None);
            delays.push(delay.as_secs());
        }
        assert_eq!(delays, [2, 4, 8, 15, 15]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_wrong_password_counts_once() {
        let penalties = MemoryPenalties::new(vec![]);
        let client = ip("192.0.2.1");
        for _ in 0..4 {
            assert_eq!(
                penalties.failed(client, "alice", [1; 32]),
                Duration::from_secs(2)
            );
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        assert_eq!(
            penalties.failed(client, "alice", [2; 32]),
            Duration::from_secs(4)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn success_clears_and_trusted_networks_are_exempt() {
        let penalties = MemoryPenalties::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let client = ip("192.0.2.1");
        penalties.failed(client, "alice", [1; 32]);
        tokio::time::advance(Duration::from_secs(2)).await;
        penalties.succeeded(client, "alice");
        assert_eq!(
            penalties.failed(client, "alice", [2; 32]),
            Duration::from_secs(2)
        );

        let office = ip("10.1.2.3");
        for n in 0..10u8 {
            assert_eq!(penalties.failed(office, "carol", [n; 32]), Duration::ZERO);
            assert!(penalties.may_attempt(office, "carol"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_clients_are_grouped_by_their_64() {
        let penalties = MemoryPenalties::new(vec![]);
        penalties.failed(ip("2001:db8:1:2::1"), "alice", [1; 32]);
        assert!(!penalties.may_attempt(ip("2001:db8:1:2:ffff::9"), "dave"));
        assert!(penalties.may_attempt(ip("2001:db8:1:3::1"), "dave"));
    }
}

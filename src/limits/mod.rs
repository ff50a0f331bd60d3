//! Limits that hold across a user's connections, behind small interfaces so that where
//! they are counted can change without their callers: login penalties ([`Penalties`],
//! asked by the verifier) and sending quotas ([`Quotas`], asked by SMTP sessions). One
//! instance on SQLite keeps them in its memory ([`penalty::MemoryPenalties`],
//! [`quota::MemoryQuotas`]); instances sharing PostgreSQL count them there
//! ([`shared::SharedPenalties`], [`shared::SharedQuotas`]).

pub mod penalty;
pub mod quota;
pub mod shared;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

/// What a backend's operation returns: a shared store answers after a round trip.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Login penalties, like Dovecot's: per client address (IPv6 by /64) and per login.
pub trait Penalties: Send + Sync {
    /// How long attempts from `ip` or for `login` (canonical) must still wait, or `None`
    /// when one may be verified now.
    fn blocked_for<'a>(&'a self, ip: IpAddr, login: &'a str) -> Pending<'a, Option<Duration>>;
    /// Counts a failed login (a wrong password already counted, by its digest, does not
    /// count again) and returns how long to wait before answering it.
    fn failed<'a>(
        &'a self,
        ip: IpAddr,
        login: &'a str,
        password_digest: [u8; 32],
    ) -> Pending<'a, Duration>;
    /// A correct password clears the address's and the login's penalties.
    fn succeeded<'a>(&'a self, ip: IpAddr, login: &'a str) -> Pending<'a, ()>;
}

/// Per-app-password sending quotas in a sliding hour.
pub trait Quotas: Send + Sync {
    /// Whether one more message may start.
    fn may_send_message(&self, app_password_id: i64) -> Pending<'_, bool>;
    /// Whether a message may have `recipients` recipients (those of the transaction so
    /// far plus the one being added).
    fn may_add_recipients(&self, app_password_id: i64, recipients: u32) -> Pending<'_, bool>;
    /// Counts a message the upstream accepted.
    fn record(&self, app_password_id: i64, recipients: u32) -> Pending<'_, ()>;
}

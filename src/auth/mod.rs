//! Decides whether a login may proceed: cache, then store lookup, then one argon2id
//! verification on a bounded pool; and follows revocations made elsewhere.

pub mod changes;
pub mod digest;
pub mod hasher;
pub mod password;
pub mod secret;
pub mod verifier;

pub use secret::Secret;
pub use verifier::{Grant, LoginAttempt, Refusal, Verdict, Verifier};

/// Credentials a client presented, as its protocol's pre-auth machine decoded them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLogin {
    /// How they were presented: the `mechanism` metric label (`login`, `plain`, …).
    pub mechanism: &'static str,
    /// The login as sent (UTF-8, non-empty).
    pub login: String,
    /// The app password as sent (UTF-8, non-empty).
    pub password: Secret<String>,
}

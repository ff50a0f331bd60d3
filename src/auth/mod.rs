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

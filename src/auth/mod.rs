//! Decides whether a login may proceed.

pub mod secret;

pub use secret::Secret;

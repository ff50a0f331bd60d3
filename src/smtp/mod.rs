//! SMTP submission: the client conversation, upstream login and transaction relay.

pub mod capabilities;
pub mod conversation;
pub mod data;
pub mod policy;
pub mod session;
pub mod upstream;

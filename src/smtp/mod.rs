//! SMTP submission: the client conversation, upstream login and transaction relay.

pub mod conversation;
pub mod policy;
pub mod quota;
pub mod session;
pub mod upstream;

//! IMAP: the pre-auth state machine, the session that drives it, and the upstream login.

pub mod preauth;
pub mod session;
pub mod upstream;

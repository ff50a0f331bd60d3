//! IMAP: the pre-auth state machine, the session that drives it, and the upstream login
//! (from a warm connection when one is ready, `upstream::warm`).

pub mod preauth;
pub mod session;
pub mod upstream;

//! IMAP: the pre-auth state machine and the session that drives it.

pub mod preauth;

//! IMAP: the pre-auth state machine, the session that drives it, the upstream login and
//! the warm upstream connections it starts from.

pub mod preauth;
pub mod session;
pub mod upstream;
pub mod warm;

//! POP3, the third protocol on the session driver: the pre-auth machine ([`preauth`]),
//! the upstream login ([`upstream`]) and the session that joins them ([`session`]).

pub mod preauth;
pub mod session;
pub mod upstream;

//! Accepting clients: the accept loop, the PROXY header a balancer sends first, the caps on
//! what one address may hold, and the socket that may become TLS.

pub mod caps;
pub mod listener;
pub mod proxy;
pub mod stream;

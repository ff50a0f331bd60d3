//! postern: an app-password gateway for IMAP and SMTP submission.
//!
//! A connection flows through these modules, in order:
//!
//! - [`server`] binds nothing itself: it takes already-bound listeners, starts one accept
//!   loop per listener ([`listener`]), the HTTP endpoint ([`metrics`]) and the change
//!   follower, and drains on shutdown.
//! - [`listener`] only accepts: it caps concurrent connections and spawns a task per client.
//! - [`proxy`] reads the PROXY header a trusted load balancer sends first, naming the client.
//! - [`connections`] caps the connections one client address may hold.
//! - [`tls`] holds the rustls configurations; [`stream`] is a socket that may become TLS.
//! - [`imap`] runs the pre-auth conversation as a sans-I/O state machine
//!   ([`imap::preauth`]) and drives it from the connection's task ([`imap::session`]);
//!   [`smtp`] does the same for submission ([`smtp::conversation`], [`smtp::session`]),
//!   with the sender policy and quotas.
//! - [`auth`] decides whether a login may proceed: cache, then penalties, then store
//!   lookup, then one argon2id verification on a bounded pool ([`sasl`] decodes SASL).
//! - [`upstream`] connects to the real mail server; [`imap::upstream`] and
//!   [`smtp::upstream`] log in there as the user.
//! - [`relay`] copies IMAP bytes both ways once the user is logged in.
//! - [`store`] keeps users, app passwords, the change feed and the audit trail in SQLite or
//!   PostgreSQL; [`admin`] is what the CLI does with them; [`audit`] queues the gateway's
//!   login and message events in front of the store, so an outage delays them.
//! - [`sessions`] tracks live sessions so that revoking an app password closes them.

pub mod accounts;
pub mod auth;
pub mod clock;
pub mod config;
pub mod gateway;
pub mod imap;
pub mod limits;
pub mod net;
pub mod ops;
pub mod protocol;
pub mod sasl;
pub mod server;
pub mod session;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod upstream;

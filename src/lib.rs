//! postern: an app-password gateway for IMAP (and, later, SMTP submission).
//!
//! A connection flows through these modules, in order:
//!
//! - [`server`] binds nothing itself: it takes already-bound listeners, starts one accept
//!   loop per listener ([`listener`]) and the HTTP endpoint ([`metrics`]), and drains on
//!   shutdown.
//! - [`listener`] only accepts: it caps concurrent connections and spawns a task per client.
//! - [`proxy`] reads the PROXY header a trusted load balancer sends first, naming the client.
//! - [`tls`] holds the rustls configurations, built once and shared.
//! - [`imap`] runs the pre-auth conversation as a sans-I/O state machine
//!   ([`imap::preauth`]) and drives it from the connection's task ([`imap::session`]).
//! - [`auth`] decides whether a login may proceed: cache, then store lookup, then one
//!   argon2id verification on a bounded pool.
//! - [`upstream`] connects to the real mail server and logs in as the user.
//! - [`relay`] copies bytes both ways once the user is logged in.
//! - [`store`] keeps users, app passwords and the audit trail in SQLite or PostgreSQL.
//! - [`sessions`] tracks live sessions so that revoking an app password closes them.

pub mod admin;
pub mod auth;
pub mod config;
pub mod connections;
pub mod imap;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod relay;
pub mod sasl;
pub mod server;
pub mod sessions;
pub mod smtp;
pub mod store;
pub mod stream;
pub mod tls;
pub mod upstream;

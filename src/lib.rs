//! postern: an app-password gateway for IMAP and SMTP submission.
//!
//! A connection flows through these modules, in order:
//!
//! - [`server`] binds nothing itself: it takes already-bound listeners and starts an accept
//!   loop per listener, the HTTP endpoint ([`ops::http`]), the warm upstream connections
//!   and the change follower, all sharing the services of [`gateway`]; it drains on
//!   shutdown.
//! - [`net`] accepts: the accept loop ([`net::listener`]) only accepts and spawns; the PROXY
//!   header a trusted balancer sends first ([`net::proxy`]); the caps on what one address
//!   and one login may hold ([`net::caps`]).
//! - [`tls`] holds the rustls configurations, the TLS stream, and the trust in the
//!   upstream's certificate ([`tls::trust`]).
//! - [`session`] is the driver every protocol runs on: it feeds the client's bytes to the
//!   protocol's sans-I/O machine and carries out its steps (send, STARTTLS, close, log
//!   in), runs the login step ([`session::login`]) and ends the session when its
//!   credential is revoked or expires ([`session::live`]), then relays bytes
//!   ([`session::relay`]) or lets the protocol converse.
//! - [`imap`] and [`smtp`] are the protocols: each a pre-auth machine
//!   ([`imap::preauth`], [`smtp::conversation`]), its session ([`imap::session`],
//!   [`smtp::session`], SMTP with the sender policy and quotas) and its upstream login
//!   ([`imap::upstream`], [`smtp::upstream`]).
//! - [`auth`] decides whether a login may proceed: cache, then penalties ([`limits`]), then
//!   store lookup, then one argon2id verification on a bounded pool ([`sasl`] decodes
//!   SASL, and encodes it for the upstream).
//! - [`upstream`] connects to the real mail server and holds the credentials postern logs
//!   in with there ([`upstream::credentials`]): the master password, or an OAuth 2.0
//!   token that [`oauth2`] obtains from the organisation's identity provider.
//! - [`store`] keeps users, app passwords, the change feed and the audit trail in SQLite or
//!   PostgreSQL; [`accounts`] is what the CLI (and later the portal) does with them;
//!   [`ops`] has the metrics, the HTTP endpoint and the audit queue in front of the store.
//! - [`portal`] is where users sign in, pass a second factor and make their own app
//!   passwords, over HTTPS on the same certificate; [`directory`] is the organisation's
//!   LDAP directory people sign in with, and the sync that follows it when they leave.
//! - [`config`], [`protocol`] and [`clock`] are the leaves everything reads.

pub mod accounts;
pub mod acme;
pub mod auth;
pub mod clock;
pub mod config;
pub mod directory;
pub mod gateway;
pub mod imap;
pub mod limits;
pub mod net;
pub mod oauth2;
pub mod ops;
pub mod pop3;
pub mod portal;
pub mod protocol;
pub mod sasl;
pub mod server;
pub mod session;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod upstream;

//! Load clients and measuring tools for postern's benchmarks: `benches/gateway.rs` (the
//! side-by-side suite against direct Dovecot), `benches/smtp_memory.rs`, and whatever
//! `benches/soak.rs` (the long mixed run).
//!
//! - [`accounts`]: app passwords issued in-process before a run;
//! - [`net`]: TLS connectors and connections (TCP_NODELAY, optional source address), a
//!   buffered line reader;
//! - [`imap`]: a small IMAP client (greeting, LOGIN, SELECT, IDLE/DONE, FETCH, LOGOUT)
//!   that skips literals without keeping them, and a whole login cycle;
//! - [`pop3`]: a small POP3 client (USER/PASS, UIDL, RETR, QUIT) that counts multi-line
//!   answers without keeping them, and a whole login cycle;
//! - [`portal`]: a browser for the self-service portal (cookies, form token, sign-in);
//! - [`flood`]: wrong passwords as fast as the server answers them;
//! - [`smtp`]: a small submission client (EHLO, AUTH PLAIN, MAIL/RCPT/DATA), and the
//!   "RSS while a big message passes" measurement;
//! - [`stats`]: latency recording (sorted samples, percentiles) and medians;
//! - [`procfs`]: RSS/HWM/CPU of a process or a process tree, an RSS sampler;
//! - [`message`]: generated messages (bodies streamed, checksummed);
//! - [`postern`]: the release `postern` binary as a separate process, with its config.
//!
//! The including crate declares `mod support;` (tests/support) at its root as well.
#![allow(dead_code)]

pub mod accounts;
pub mod flood;
pub mod imap;
pub mod message;
pub mod net;
pub mod nginx;
pub mod pop3;
pub mod portal;
pub mod postern;
pub mod procfs;
pub mod smtp;
pub mod stats;

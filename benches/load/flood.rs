//! A flood of wrong passwords: connections sending IMAP LOGIN with random well-formed
//! app passwords as fast as the server answers, each from one of a set of source
//! addresses and for one of a set of logins, reconnecting whenever the server closes the
//! connection. An answer held longer than [`PATIENCE`] (a penalty delay) is given up on:
//! the flooder drops the connection and opens another, as an impatient attacker would.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::task::JoinSet;

use super::imap::ImapClient;
use super::net::Target;

/// How long a flooder waits for one answer before it reconnects.
pub const PATIENCE: Duration = Duration::from_millis(500);

/// A running flood; [`Flood::stop`] ends it.
pub struct Flood {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    started: Instant,
    tasks: JoinSet<()>,
}

#[derive(Default)]
struct Counts {
    /// Answered `NO` (a refusal after verification).
    refused: AtomicU64,
    /// Answered `NO [UNAVAILABLE]` (rate limited, or the hash pool timed out).
    unavailable: AtomicU64,
    /// Given up after `PATIENCE`.
    held: AtomicU64,
    /// Accepted: a wrong password let in. Must stay 0.
    accepted: AtomicU64,
    connections: AtomicU64,
    /// Connections that failed, and the first error.
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// What a flood did, when it stopped.
#[derive(Clone, Debug)]
pub struct FloodSummary {
    pub seconds: f64,
    pub refused: u64,
    pub unavailable: u64,
    pub held: u64,
    /// Wrong passwords that were accepted: anything but 0 is a hole.
    pub accepted: u64,
    pub connections: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl FloodSummary {
    /// Answered wrong attempts per second.
    pub fn rate(&self) -> f64 {
        (self.refused + self.unavailable) as f64 / self.seconds
    }
}

impl std::fmt::Display for FloodSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} s: {} refused, {} unavailable, {} held > {:?}, {} accepted, {} connections",
            self.seconds,
            self.refused,
            self.unavailable,
            self.held,
            PATIENCE,
            self.accepted,
            self.connections
        )?;
        if self.errors > 0 {
            write!(
                f,
                ", {} failed (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            )?;
        }
        Ok(())
    }
}

impl Flood {
    /// Starts `connections` flooders; flooder `i` connects from `sources[i % len]` and
    /// attacks `logins[i % len]`.
    pub fn start(
        target: &Target,
        sources: &[IpAddr],
        logins: &[String],
        connections: usize,
    ) -> Flood {
        assert!(!sources.is_empty() && !logins.is_empty());
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut tasks = JoinSet::new();
        for i in 0..connections {
            let (stop, counts, target) = (stop.clone(), counts.clone(), target.clone());
            let from = sources[i % sources.len()];
            let login = logins[i % logins.len()].clone();
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut client = match ImapClient::connect(&target, Some(from)).await {
                        Ok(client) => client,
                        Err(e) => {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                            counts
                                .first_error
                                .lock()
                                .unwrap()
                                .get_or_insert_with(|| format!("{e:#}"));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    counts.connections.fetch_add(1, Ordering::Relaxed);
                    while !stop.load(Ordering::Relaxed) {
                        let wrong: String = {
                            let mut rng = rand::thread_rng();
                            (0..16)
                                .map(|_| rng.gen_range(b'a'..=b'z') as char)
                                .collect()
                        };
                        match tokio::time::timeout(PATIENCE, client.login(&login, &wrong)).await {
                            Err(_) => {
                                counts.held.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Ok(Ok(r)) if r.is_ok() => {
                                counts.accepted.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Ok(Ok(r)) if r.tagged.contains("UNAVAILABLE") => {
                                counts.unavailable.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Ok(_)) => {
                                counts.refused.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(_)) => break,
                        }
                    }
                }
            });
        }
        Flood {
            stop,
            counts,
            started: Instant::now(),
            tasks,
        }
    }

    /// Stops the flood and says what it did.
    pub async fn stop(mut self) -> FloodSummary {
        self.stop.store(true, Ordering::Relaxed);
        let seconds = self.started.elapsed().as_secs_f64();
        // Penalty delays can hold an answer for seconds: don't wait for them.
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let c = &self.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FloodSummary {
            seconds,
            refused: get(&c.refused),
            unavailable: get(&c.unavailable),
            held: get(&c.held),
            accepted: get(&c.accepted),
            connections: get(&c.connections),
            errors: get(&c.errors),
            first_error: c.first_error.lock().unwrap().clone(),
        }
    }
}

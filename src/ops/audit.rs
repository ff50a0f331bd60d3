//! The audit writer: login and message events, queued in memory and written to the store
//! in order by one background task, so that a client's reply never waits on the store and
//! a store outage delays the audit trail instead of losing it.
//!
//! - A successful login's event also stamps its app password's last use (time, client
//!   address, and the mail app's IMAP ID); the stamp rides in the same queue entry.
//! - What has queued up is written in batches of up to [`BATCH`], each in one
//!   transaction, so a backlog drains quickly and a retry never writes an event twice.
//! - While the store cannot be written ([`StoreError::is_unavailable`]: PostgreSQL down or
//!   restarting, a SQLite file locked by another writer), the task keeps the events it
//!   holds and tries again after 100 ms, doubling up to 5 s. It logs the outage once and
//!   the recovery once, not once per event.
//! - At most `capacity` events wait, the one being retried included
//!   (`postern_audit_backlog`); when that many wait, new events are dropped and counted in
//!   `postern_audit_events_dropped_total`. So is an event the store refuses for good (a
//!   statement error, not an outage): one bad row must not hold up the trail.
//! - On shutdown, [`AuditWriter::finish`] writes what waits within a deadline, then says
//!   how many events were not written.
//!
//! The administrator's events (app password created, revoked) do not come here: the CLI
//! writes them itself, and fails loudly when it cannot.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ops::metrics::Metrics;
use crate::store::{AuditEvent, Store, StoreError};

/// The first pause after a failed write; it doubles after each failure, up to
/// [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The longest pause between two attempts while the store is unavailable.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The most events written in one transaction.
pub const BATCH: usize = 256;

/// An app password use to stamp: (id, unix seconds, client address, the client's IMAP ID).
type Use<'a> = (i64, i64, Option<&'a str>, Option<&'a str>);

/// An audit event that owns its text, so it can wait in the queue. Kind, protocol and
/// result come from fixed vocabularies, so they stay static strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unix seconds: when it happened, not when it is written.
    pub at: i64,
    /// `login` or `message`.
    pub kind: &'static str,
    /// As attempted; the store lowercases it.
    pub login: String,
    pub app_password_id: Option<i64>,
    pub protocol: Option<&'static str>,
    pub client_ip: Option<String>,
    pub client_id: Option<String>,
    /// The `result` metric label of the attempt or message.
    pub result: Option<&'static str>,
    pub detail: Option<String>,
}

impl Event {
    /// The borrowed form the store writes.
    pub fn as_store_event(&self) -> AuditEvent<'_> {
        AuditEvent {
            at: self.at,
            kind: self.kind,
            login: &self.login,
            app_password_id: self.app_password_id,
            protocol: self.protocol,
            client_ip: self.client_ip.as_deref(),
            client_id: self.client_id.as_deref(),
            result: self.result,
            detail: self.detail.as_deref(),
        }
    }
}

/// One queue entry: an event, and whether writing it also stamps the app password's
/// last use.
#[derive(Debug)]
struct Entry {
    event: Event,
    stamp_use: bool,
}

#[derive(Debug)]
enum Item {
    Entry(Entry),
    /// Answered once every entry queued before it has been handled.
    Flush(oneshot::Sender<()>),
}

/// Where the writer writes: the store, or a fake in the unit tests. All or nothing.
trait Destination: Send + Sync + 'static {
    fn write(
        &self,
        events: &[AuditEvent<'_>],
        uses: &[Use<'_>],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl Destination for Store {
    fn write(
        &self,
        events: &[AuditEvent<'_>],
        uses: &[Use<'_>],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.record_audit_batch(events, uses)
    }
}

/// What producers and the writer task share.
struct Shared {
    capacity: usize,
    /// Entries queued or being written; never more than `capacity`.
    waiting: AtomicUsize,
    /// Set while new events are being dropped, so that is logged once.
    dropping: AtomicBool,
    /// Set by [`AuditWriter::finish`]: nothing is written any more.
    closed: AtomicBool,
    dropped: IntCounter,
    backlog: IntGauge,
}

impl Shared {
    /// `n` entries left the queue (written, refused, or lost).
    fn done(&self, n: usize) {
        self.waiting.fetch_sub(n, Ordering::AcqRel);
        self.backlog.sub(n as i64);
    }

    fn overflow(&self) {
        self.dropped.inc();
        if !self.dropping.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                capacity = self.capacity,
                "the audit queue is full: new audit events are dropped \
                 (postern_audit_events_dropped_total) until the store takes them again"
            );
        }
    }
}

/// The queue in front of the store's audit trail. Cheap to clone; clones share the queue
/// and its one writer task.
#[derive(Clone)]
pub struct AuditWriter {
    queue: mpsc::UnboundedSender<Item>,
    shared: Arc<Shared>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("capacity", &self.shared.capacity)
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl AuditWriter {
    /// Starts the writer task (on the current tokio runtime) in front of `store`, keeping
    /// at most `capacity` events (at least one) while the store cannot be written.
    pub fn start(store: Store, metrics: &Metrics, capacity: usize) -> AuditWriter {
        Self::start_with(store, metrics, capacity)
    }

    fn start_with<D: Destination>(destination: D, metrics: &Metrics, capacity: usize) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            capacity: capacity.max(1),
            waiting: AtomicUsize::new(0),
            dropping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            dropped: metrics.audit_events_dropped.clone(),
            backlog: metrics.audit_backlog.clone(),
        });
        let task = tokio::spawn(write_all(destination, receiver, shared.clone()));
        AuditWriter {
            queue,
            shared,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Queues an event.
    pub fn record(&self, event: Event) {
        self.push(Entry {
            event,
            stamp_use: false,
        });
    }

    /// Queues a successful login's event; its app password's last use is stamped with
    /// the event's time and client address in the same transaction.
    pub fn record_use(&self, event: Event) {
        self.push(Entry {
            event,
            stamp_use: true,
        });
    }

    /// Events queued or being written.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Acquire)
    }

    fn push(&self, entry: Entry) {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            // Stopped at shutdown: nothing is written any more.
            shared.dropped.inc();
            return;
        }
        let admitted = shared
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.capacity).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            shared.overflow();
            return;
        }
        shared.backlog.inc();
        if self.queue.send(Item::Entry(entry)).is_err() {
            // The writer task is gone (stopped at shutdown): the event is lost.
            shared.done(1);
            shared.dropped.inc();
        }
    }

    /// Writes what waits, for at most `within`, then stops the writer. Returns how many
    /// events were not written; they (and any recorded afterwards) are counted as
    /// dropped. A write that was in flight when the time ran out may still land.
    pub async fn finish(&self, within: Duration) -> usize {
        let (flushed, done) = oneshot::channel();
        if self.queue.send(Item::Flush(flushed)).is_ok() {
            let _ = tokio::time::timeout(within, done).await;
        }
        self.shared.closed.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            // Wait until the task and its queue are gone: it starts no write after this.
            let _ = task.await;
        }
        let lost = self.shared.waiting.swap(0, Ordering::AcqRel);
        self.shared.backlog.sub(lost as i64);
        self.shared.dropped.inc_by(lost as u64);
        lost
    }
}

/// The writer task: every entry in queue order, in batches of what has queued up, each
/// until it is written or refused for good.
async fn write_all<D: Destination>(
    destination: D,
    mut queue: mpsc::UnboundedReceiver<Item>,
    shared: Arc<Shared>,
) {
    // Since when the store has been unavailable, while it is.
    let mut outage: Option<Instant> = None;
    let mut items = Vec::with_capacity(BATCH);
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut items, BATCH).await > 0 {
        for item in items.drain(..) {
            match item {
                Item::Entry(entry) => batch.push(entry),
                Item::Flush(flushed) => {
                    write_batch(&destination, &batch, &shared, &mut outage).await;
                    batch.clear();
                    let _ = flushed.send(());
                }
            }
        }
        write_batch(&destination, &batch, &shared, &mut outage).await;
        batch.clear();
    }
}

/// Writes `batch` in one transaction, retrying with a capped backoff while the store is
/// unavailable. If the store refuses it for good, writes the entries one by one, so that
/// only the one it refuses is dropped.
async fn write_batch<D: Destination>(
    destination: &D,
    batch: &[Entry],
    shared: &Shared,
    outage: &mut Option<Instant>,
) {
    if batch.is_empty() {
        return;
    }
    match write_until_answered(destination, batch, shared, outage).await {
        Ok(()) => {}
        Err(_) if batch.len() > 1 => {
            for entry in batch {
                let one = std::slice::from_ref(entry);
                if let Err(error) = write_until_answered(destination, one, shared, outage).await {
                    refuse(entry, &error, shared);
                }
            }
        }
        Err(error) => refuse(&batch[0], &error, shared),
    }
    shared.done(batch.len());
    // Hysteresis: say the queue has room again only once it is half empty.
    if shared.waiting.load(Ordering::Acquire) <= shared.capacity / 2
        && shared.dropping.swap(false, Ordering::AcqRel)
    {
        tracing::info!(
            dropped_total = shared.dropped.get(),
            "the audit queue has room again"
        );
    }
}

fn refuse(entry: &Entry, error: &StoreError, shared: &Shared) {
    tracing::error!(%error, kind = entry.event.kind, login = ?entry.event.login, "the store refused an audit event; it is dropped");
    shared.dropped.inc();
}

/// Tries until the store answers: `Ok` once written, or the error it refused with.
async fn write_until_answered<D: Destination>(
    destination: &D,
    batch: &[Entry],
    shared: &Shared,
    outage: &mut Option<Instant>,
) -> Result<(), StoreError> {
    let events: Vec<AuditEvent<'_>> = batch.iter().map(|e| e.event.as_store_event()).collect();
    let uses: Vec<Use<'_>> = events
        .iter()
        .zip(batch)
        .filter(|(_, entry)| entry.stamp_use)
        .filter_map(|(event, _)| {
            // Over IMAP the client describes itself in ID; SMTP's EHLO name is no app's name.
            let client = event.client_id.filter(|_| event.protocol == Some("imap"));
            Some((event.app_password_id?, event.at, event.client_ip, client))
        })
        .collect();
    let mut pause = FIRST_RETRY;
    loop {
        let error = match destination.write(&events, &uses).await {
            Ok(()) => {
                answered(outage, shared);
                return Ok(());
            }
            Err(error) => error,
        };
        if !error.is_unavailable() {
            answered(outage, shared);
            return Err(error);
        }
        if outage.is_none() {
            *outage = Some(Instant::now());
            tracing::warn!(
                %error,
                waiting = shared.waiting.load(Ordering::Acquire),
                "cannot write audit events: the store is unavailable; keeping them in memory \
                 (postern_audit_backlog) and retrying"
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RETRY);
    }
}

/// The store answered: if it had been unavailable, say once that it is back.
fn answered(outage: &mut Option<Instant>, shared: &Shared) {
    if let Some(since) = outage.take() {
        tracing::info!(
            unavailable_for = ?since.elapsed(),
            waiting = shared.waiting.load(Ordering::Acquire),
            "the store takes audit events again; writing those kept meanwhile"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that can be taken down, refuses chosen logins for good, and remembers
    /// what was written and when each attempt came.
    #[derive(Clone, Default)]
    struct Fake(Arc<FakeState>);

    #[derive(Default)]
    struct FakeState {
        down: AtomicBool,
        /// Writes that stamp a use fail (unavailable) this many more times.
        use_failures: AtomicUsize,
        refused_login: Mutex<Option<String>>,
        written: Mutex<Vec<String>>,
        stamps: Mutex<Vec<(i64, i64, Option<String>)>>,
        attempts: Mutex<Vec<Instant>>,
    }

    fn unavailable() -> StoreError {
        StoreError::Database(sqlx::Error::Io(
            std::io::ErrorKind::ConnectionRefused.into(),
        ))
    }

    impl Fake {
        fn set_down(&self, down: bool) {
            self.0.down.store(down, Ordering::SeqCst);
        }

        fn written(&self) -> Vec<String> {
            self.0.written.lock().unwrap().clone()
        }
    }

    impl Destination for Fake {
        fn write(
            &self,
            events: &[AuditEvent<'_>],
            uses: &[Use<'_>],
        ) -> impl Future<Output = Result<(), StoreError>> + Send {
            let state = &self.0;
            state.attempts.lock().unwrap().push(Instant::now());
            let refused = state.refused_login.lock().unwrap().clone();
            let result = if state.down.load(Ordering::SeqCst) {
                Err(unavailable())
            } else if events.iter().any(|e| Some(e.login) == refused.as_deref()) {
                Err(StoreError::Database(sqlx::Error::RowNotFound))
            } else if !uses.is_empty()
                && state
                    .use_failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                Err(unavailable())
            } else {
                // All or nothing, like the store's transaction.
                let mut written = state.written.lock().unwrap();
                written.extend(events.iter().map(|e| e.login.to_owned()));
                let mut stamps = state.stamps.lock().unwrap();
                stamps.extend(
                    uses.iter()
                        .map(|&(id, at, ip, _)| (id, at, ip.map(str::to_owned))),
                );
                Ok(())
            };
            std::future::ready(result)
        }
    }

    fn event(login: &str) -> Event {
        Event {
            at: 1_700_000_000,
            kind: "login",
            login: login.to_owned(),
            app_password_id: Some(7),
            protocol: Some("imap"),
            client_ip: Some("192.0.2.1".into()),
            client_id: None,
            result: Some("ok"),
            detail: None,
        }
    }

    /// Lets the writer task run until it waits on the queue or a timer; with the clock
    /// paused, a sleep here moves time forward only as far as the writer's own timers.
    async fn settle(time: Duration) {
        tokio::time::sleep(time).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_delays_events_and_loses_none_in_order() {
        let _serial = SERIAL.lock().await;
        let metrics = Metrics::new();
        let fake = Fake::default();
        let writer = AuditWriter::start_with(fake.clone(), &metrics, 100);
        writer.record(event("before"));
        settle(Duration::from_millis(1)).await;
        assert_eq!(fake.written(), ["before"]);
        assert_eq!(metrics.audit_backlog.get(), 0);

        fake.set_down(true);
        for login in ["one", "two", "three"] {
            writer.record(event(login));
        }
        settle(Duration::from_secs(60)).await;
        assert_eq!(fake.written(), ["before"]);
        assert_eq!(writer.waiting(), 3);
        assert_eq!(metrics.audit_backlog.get(), 3);

        fake.set_down(false);
        settle(Duration::from_secs(10)).await;
        assert_eq!(fake.written(), ["before", "one", "two", "three"]);
        assert_eq!(writer.waiting(), 0);
        assert_eq!(metrics.audit_backlog.get(), 0);
        assert_eq!(metrics.audit_events_dropped.get(), 0);
    }

    /// Held by every test here: tracing caches per log call site whether anyone listens,
    /// so a test without a subscriber hitting the writer's outage lines while
    /// [`capture_logs`]'s test sets its own could leave them unheard there.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// Captures this thread's log lines (the test runtime polls the writer task here).
    fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
        #[derive(Clone)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer(Arc::default());
        let lines = buffer.0.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || buffer.clone())
            .finish();
        (lines, tracing::subscriber::set_default(subscriber))
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_logged_once_and_its_end_once() {
        let _serial = SERIAL.lock().await;
        let (lines, _guard) = capture_logs();
        let metrics = Metrics::new();
        let fake = Fake::default();
        fake.set_down(true);
        let writer = AuditWriter::start_with(fake.clone(), &metrics, 100);
        for login in ["one", "two", "three"] {
            writer.record(event(login));
        }
        settle(Duration::from_secs(30)).await;
        fake.set_down(false);
        settle(Duration::from_secs(10)).await;
        assert_eq!(fake.written(), ["one", "two", "three"]);
        let log = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        assert_eq!(log.matches("the store is unavailable").count(), 1, "{log}");
        assert_eq!(
            log.matches("the store takes audit events again").count(),
            1,
            "{log}"
        );
        assert_eq!(log.lines().count(), 2, "{log}");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_from_100ms_doubling_to_5s() {
        let _serial = SERIAL.lock().await;
        let metrics = Metrics::new();
        let fake = Fake::default();
        fake.set_down(true);
        let writer = AuditWriter::start_with(fake.clone(), &metrics, 100);
        writer.record(event("a"));
        settle(Duration::from_millis(
            100 + 200 + 400 + 800 + 1600 + 3200 + 5000 + 5000 + 50,
        ))
        .await;
        let attempts = fake.0.attempts.lock().unwrap().clone();
        let pauses: Vec<u128> = attempts
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).as_millis())
            .collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        fake.set_down(false);
        settle(Duration::from_secs(5)).await;
        assert_eq!(fake.written(), ["a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_drops_and_counts_exactly_the_overflow() {
        let _serial = SERIAL.lock().await;
        let metrics = Metrics::new();
        let fake = Fake::default();
        fake.set_down(true);
        let writer = AuditWriter::start_with(fake.clone(), &metrics, 3);
        for n in 0..10 {
            writer.record(event(&format!("e{n}")));
        }
        settle(Duration::from_secs(1)).await;
        assert_eq!(metrics.audit_events_dropped.get(), 7);
        assert_eq!(metrics.audit_backlog.get(), 3);
        // The one being retried counts against the capacity too.
        writer.record(event("late"));
        assert_eq!(metrics.audit_events_dropped.get(), 8);

        fake.set_down(false);
        settle(Duration::from_secs(10)).await;
        assert_eq!(fake.written(), ["e0", "e1", "e2"]);
        assert_eq!(metrics.audit_backlog.get(), 0);
        writer.record(event("after"));
        settle(Duration::from_millis(1)).await;
        assert_eq!(fake.written(), ["e0", "e1", "e2", "after"]);
        assert_eq!(metrics.audit_events_dropped.get(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_the_store_refuses_is_dropped_and_the_next_written() {
        let _serial = SERIAL.lock().await;
        let metrics = Metrics::new();
        let fake = Fake::default();
        *fake.0.refused_login.lock().unwrap() = Some("bad".into());
        let writer = AuditWriter::start_with(fake.clone(), &metrics, 10);
        for login in ["a", "bad", "b"] {
            writer.record(event(login));
        }
        settle(Duration::from_millis(1)).await;
        assert_eq!(fake.written(), ["a", "b"]);
        assert_eq!(metrics.audit_events_dropped.get(), 1);
        assert_eq!(metrics.audit_backlog.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_login_stamps_last_use_with_its_event_and_a_retry_writes_neither_twice() {
        let _serial = SERIAL.lock().await;
        let metrics = Metrics::new();
        let fake = Fake::default();
        fake.0.use_failures.store(2, Ordering::SeqCst);
        let writer = AuditWriter::start_with(fake.clone(), &metrics, 10);
        writer.record_use(event("user"));
        writer.record(event("no-stamp"));
        settle(Duration::from_secs(5)).await;
        assert_eq!(fake.written(), ["user", "no-stamp"]);
        assert_eq!(
            fake.0.stamps.lock().unwrap().as_slice(),
            [(7, 1_700_000_000, Some("192.0.2.1".to_owned()))]
        );
        assert_eq!(metrics.audit_events_dropped.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn what_queued_up_is_written_in_batches() {
        let _serial = SERIAL.lock().await;
        let metrics = Metrics::new();
        let fake = Fake::default();
        fake.set_down(true);
        let writer = AuditWriter::start_with(fake.clone(), &metrics, 1000);
        let logins: Vec<String> = (0..600).map(|n| format!("e{n}")).collect();
        for login in &logins {
            writer.record(event(login));
        }
        settle(Duration::from_secs(1)).await;
        let failed = fake.0.attempts.lock().unwrap().len();
        fake.set_down(false);
        settle(Duration::from_secs(10)).await;
        assert_eq!(fake.written(), logins);
        // The one taken first (alone, or with what had queued by then), then full batches.
        let writes = fake.0.attempts.lock().unwrap().len() - failed;
        assert!(writes <= 1 + 600 / BATCH + 1, "{writes} writes");
    }

    #[tokio::test(start_paused = true)]
    async fn finish_writes_what_it_can_within_the_deadline_and_counts_the_rest() {
        let _serial = SERIAL.lock().await;
        let metrics = Metrics::new();
        let fake = Fake::default();
        let writer = AuditWriter::start_with(fake.clone(), &metrics, 10);
        writer.record(event("a"));
        settle(Duration::from_millis(1)).await;
        fake.set_down(true);
        writer.record(event("b"));
        writer.record(event("c"));
        let started = Instant::now();
        assert_eq!(writer.finish(Duration::from_secs(3)).await, 2);
        assert!(started.elapsed() >= Duration::from_secs(3));
        assert_eq!(metrics.audit_events_dropped.get(), 2);
        assert_eq!(metrics.audit_backlog.get(), 0);
        fake.set_down(false);
        writer.record(event("after"));
        settle(Duration::from_secs(10)).await;
        assert_eq!(fake.written(), ["a"]);
        assert_eq!(metrics.audit_events_dropped.get(), 3);

        let metrics = Metrics::new();
        let fake = Fake::default();
        let writer = AuditWriter::start_with(fake.clone(), &metrics, 10);
        for login in ["x", "y"] {
            writer.record(event(login));
        }
        assert_eq!(writer.finish(Duration::from_secs(3)).await, 0);
        assert_eq!(fake.written(), ["x", "y"]);
        assert_eq!(metrics.audit_events_dropped.get(), 0);
    }
}

//! A fault-injecting TCP proxy between postern and a real upstream (Dovecot): a plain pipe
//! both ways until a fault is armed, then, on each new connection, at an exact moment
//! (when it is accepted, after the upstream said something, when postern says something)
//! it closes the connection, resets it, stalls it, or lets postern's command through and
//! swallows the upstream's answer. It can also cut every live connection on demand, and
//! [`FullListener`] stands for an upstream host that accepts nothing at all.
//!
//! Patterns are only visible when postern talks to the upstream in plaintext
//! (`tls = "none"`, allowed on loopback); `Accepted` and on-demand cuts work under TLS too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// When a fault strikes a connection.
#[derive(Clone, Copy, Debug)]
pub enum When {
    /// As soon as postern's connection is accepted, before the upstream is dialled: for
    /// postern, an upstream that never says a word (no greeting, no TLS handshake).
    Accepted,
    /// Right after the upstream's bytes containing this pattern were passed on to postern
    /// (`b"\r\n"`: just after the greeting line).
    UpstreamSaid(&'static [u8]),
    /// When postern's bytes contain this pattern. They are held back from the upstream,
    /// unless the fault is [`Then::LoseTheAnswer`].
    PosternSaid(&'static [u8]),
}

/// What a fault does to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Close both sides: postern sees a FIN.
    Close,
    /// Reset postern's side (SO_LINGER 0, then close): postern sees a RST.
    Reset,
    /// Pass nothing more either way and hold both sides open until postern gives up.
    Stall,
    /// Pass postern's bytes on, swallow the upstream's answer (up to its first line end),
    /// then close: the upstream did what postern asked and postern never hears of it.
    LoseTheAnswer,
}

/// One armed fault: applies to every connection accepted while it is armed.
#[derive(Clone, Copy, Debug)]
pub struct Fault {
    pub when: When,
    pub then: Then,
}

/// The proxy; listens on 127.0.0.1 and forwards to `upstream` until dropped.
pub struct FaultyProxy {
    /// Where postern should connect (127.0.0.1, an ephemeral port).
    pub address: SocketAddr,
    shared: Arc<Shared>,
    accept_loop: JoinHandle<()>,
}

struct Shared {
    upstream: SocketAddr,
    armed: Mutex<Option<Fault>>,
    fired: AtomicUsize,
    accepted: AtomicUsize,
    swallowed: Mutex<Vec<u8>>,
    /// Each live connection's inbox for on-demand cuts.
    live: Mutex<HashMap<u64, mpsc::UnboundedSender<Cut>>>,
    next_id: AtomicU64,
}

/// An on-demand cut of one live connection; `done` is answered once it is cut.
struct Cut {
    then: Then,
    done: oneshot::Sender<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl FaultyProxy {
    /// A proxy to `upstream`, passing everything through until a fault is armed.
    pub async fn start(upstream: SocketAddr) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let address = listener.local_addr().expect("fault proxy address");
        let shared = Arc::new(Shared {
            upstream,
            armed: Mutex::new(None),
            fired: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            swallowed: Mutex::new(Vec::new()),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let accept_loop = tokio::spawn(accept_loop(listener, shared.clone()));
        FaultyProxy {
            address,
            shared,
            accept_loop,
        }
    }

    /// `127.0.0.1:port`, for an `address =` in postern's configuration.
    pub fn host_port(&self) -> String {
        self.address.to_string()
    }

    /// Every connection accepted from now on gets this fault.
    pub fn arm(&self, when: When, then: Then) {
        *lock(&self.shared.armed) = Some(Fault { when, then });
    }

    /// Connections accepted from now on pass through untouched.
    pub fn disarm(&self) {
        *lock(&self.shared.armed) = None;
    }

    /// How many times an armed fault struck so far.
    pub fn fired(&self) -> usize {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// How many connections were accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Every answer [`Then::LoseTheAnswer`] kept from postern, in order.
    pub fn swallowed(&self) -> String {
        String::from_utf8_lossy(&lock(&self.shared.swallowed)).into_owned()
    }

    /// Cuts every live connection (`Close` or `Reset`); returns how many, once all are cut.
    pub async fn cut_all(&self, then: Then) -> usize {
        let inboxes: Vec<_> = lock(&self.shared.live).values().cloned().collect();
        let mut cut = 0;
        for inbox in inboxes {
            let (done, cut_done) = oneshot::channel();
            if inbox.send(Cut { then, done }).is_ok() && cut_done.await.is_ok() {
                cut += 1;
            }
        }
        cut
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((postern, _)) = listener.accept().await else {
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let fault = *lock(&shared.armed);
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let (inbox, cuts) = mpsc::unbounded_channel();
        lock(&shared.live).insert(id, inbox);
        let shared = shared.clone();
        tokio::spawn(async move {
            connection(&shared, postern, fault, cuts).await;
            lock(&shared.live).remove(&id);
        });
    }
}

/// One proxied connection, from accept to close.
async fn connection(
    shared: &Shared,
    mut postern: TcpStream,
    fault: Option<Fault>,
    mut cuts: mpsc::UnboundedReceiver<Cut>,
) {
    let _ = postern.set_nodelay(true);
    if let Some(Fault {
        when: When::Accepted,
        then,
    }) = fault
    {
        shared.fired.fetch_add(1, Ordering::SeqCst);
        strike(then, postern, None).await;
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(shared.upstream).await else {
        return; // postern sees its connection closed
    };
    let _ = upstream.set_nodelay(true);
    let mut from_postern = vec![0u8; 16 * 1024];
    let mut from_upstream = vec![0u8; 16 * 1024];
    let mut postern_tail = Vec::new();
    let mut upstream_tail = Vec::new();
    let (mut postern_open, mut upstream_open) = (true, true);
    loop {
        tokio::select! {
            read = postern.read(&mut from_postern), if postern_open => {
                let n = match read {
                    Ok(0) | Err(_) => {
                        postern_open = false;
                        let _ = upstream.shutdown().await;
                        if !upstream_open {
                            return;
                        }
                        continue;
                    }
                    Ok(n) => n,
                };
                let chunk = &from_postern[..n];
                if let Some(Fault { when: When::PosternSaid(pattern), then }) = fault {
                    if seen(&mut postern_tail, chunk, pattern) {
                        shared.fired.fetch_add(1, Ordering::SeqCst);
                        if then == Then::LoseTheAnswer {
                            if upstream.write_all(chunk).await.is_ok() {
                                let answer = first_line(&mut upstream).await;
                                lock(&shared.swallowed).extend_from_slice(&answer);
                            }
                            strike(Then::Close, postern, Some(upstream)).await;
                        } else {
                            strike(then, postern, Some(upstream)).await;
                        }
                        return;
                    }
                }
                if upstream.write_all(chunk).await.is_err() {
                    return;
                }
            }
            read = upstream.read(&mut from_upstream), if upstream_open => {
                let n = match read {
                    Ok(0) | Err(_) => {
                        upstream_open = false;
                        let _ = postern.shutdown().await;
                        if !postern_open {
                            return;
                        }
                        continue;
                    }
                    Ok(n) => n,
                };
                let chunk = &from_upstream[..n];
                if postern.write_all(chunk).await.is_err() {
                    return;
                }
                if let Some(Fault { when: When::UpstreamSaid(pattern), then }) = fault {
                    if seen(&mut upstream_tail, chunk, pattern) {
                        shared.fired.fetch_add(1, Ordering::SeqCst);
                        strike(then, postern, Some(upstream)).await;
                        return;
                    }
                }
            }
            Some(cut) = cuts.recv() => {
                strike(cut.then, postern, Some(upstream)).await;
                let _ = cut.done.send(());
                return;
            }
        }
    }
}

/// Applies `then` to a connection; returns once it is closed.
async fn strike(then: Then, mut postern: TcpStream, upstream: Option<TcpStream>) {
    match then {
        Then::Close | Then::LoseTheAnswer => {}
        Then::Reset => {
            let _ = postern.set_zero_linger();
        }
        Then::Stall => {
            // Read and drop whatever postern still sends, until it gives up and closes.
            let mut sink = vec![0u8; 4096];
            while matches!(postern.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    }
    drop(postern);
    drop(upstream);
}

/// Whether `pattern` occurs in what came before (`tail`) followed by `chunk`; keeps in
/// `tail` the bytes a match spanning the next chunk could start with.
fn seen(tail: &mut Vec<u8>, chunk: &[u8], pattern: &[u8]) -> bool {
    tail.extend_from_slice(chunk);
    let found = tail.windows(pattern.len()).any(|w| w == pattern);
    let keep = pattern.len().saturating_sub(1).min(tail.len());
    tail.drain(..tail.len() - keep);
    found
}

/// The upstream's bytes up to its first line end (or until it closes).
async fn first_line(upstream: &mut TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answer.contains(&b'\n') {
        match upstream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    answer
}

/// A listening socket whose accept queue is full and which never accepts: a connect to it
/// neither succeeds nor fails (the SYN is dropped) until the caller gives up, as with an
/// upstream host too busy to take connections. Linux keeps `backlog + 1` connections
/// waiting; with a backlog of 0 one filler connection fills the queue.
pub struct FullListener {
    pub address: SocketAddr,
    _listener: TcpListener,
    _filler: TcpStream,
}

impl FullListener {
    pub async fn start() -> FullListener {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("loopback address"))
            .expect("bind 127.0.0.1:0");
        let listener = socket.listen(0).expect("listen with a backlog of 0");
        let address = listener.local_addr().expect("local address");
        let filler = TcpStream::connect(address)
            .await
            .expect("the one connection the accept queue holds");
        FullListener {
            address,
            _listener: listener,
            _filler: filler,
        }
    }
}

//! The TCP side of the protocol, for workers started elsewhere (Slurm job steps) that connect
//! back to the runner.
//!
//! The runner listens on one socket. Each worker it launches gets a fresh random token (128
//! bits from the OS) through its environment; a connection must present it in a first `HELLO`
//! frame within 2 s, and the runner answers with a `HELLO` frame of its own
//! (accepted or refused). A token is good for one accepted connection only; anything else (no
//! token, a wrong one, an announced frame larger than a hello can be) is dropped and logged,
//! and never reaches the pool. After the handshake, the same frames flow as over local pipes.
//!
//! Anyone who can reach the port can open connections, so none of them may hold up a real
//! worker. One thread reads every hello, without blocking, with a small cap on connections
//! still to say hello; when it is reached, the *oldest* is dropped to make room. A real worker
//! sends its hello within a round trip of connecting, so a flood of silent or dribbling
//! connections only churns: the worker's own connection is read before it is the oldest. And
//! if it is pushed out all the same, the worker sees its connection closed without an answer
//! and connects again with the same token (which only an accepted handshake uses up), until its
//! own deadline. What was dropped is counted, for the message of a step that never connected.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::console::Console;
use crate::events::{Event, EventLog};
use crate::protocol::tag;

/// Environment variables a remote worker reads (and removes before loading plugins).
pub const CONNECT_ENV: &str = "LOKY_RUN_CONNECT";
pub const TOKEN_ENV: &str = "LOKY_RUN_TOKEN";

/// A hello is a tag and a 32-character token: anything announcing more is not one of ours.
const MAX_HELLO_LEN: usize = 256;
/// How long a fresh connection may take to say hello, all of it (a peer dribbling a byte at a
/// time gets no longer). A real worker sends it within a round trip of connecting, and connects
/// again if it was cut off: this only bounds how long a silent peer holds a place.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections still to say hello at once, each holding a descriptor; past it, the oldest goes.
const MAX_PENDING_HELLOS: usize = 64;
/// Connections accepted in one go before the hellos already waiting are read again, so that a
/// burst of new connections cannot push out one whose hello has arrived but is not read yet.
const ACCEPT_BATCH: usize = 16;

/// How long a worker keeps trying to have its hello accepted.
pub const WORKER_CONNECT_DEADLINE: Duration = Duration::from_secs(60);
/// A worker's pause between attempts doubles from the first to the last (plus some jitter, so
/// that workers cut off together do not come back together).
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// One TCP connect may take this long (a lost SYN is resent after 1 s, 3 s, ...).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The runner answers a hello with a HELLO frame of one byte: whether it took the token.
const ACCEPTED: u8 = 1;
const REFUSED: u8 = 0;

/// Rejections warned about one by one in a window; the rest are summed up when it ends (each is
/// still in the event log): a flood must not flood the terminal too.
const WARNINGS_PER_WINDOW: u64 = 10;
/// `connection_rejected` events per window; the rest are counted in `connections_rejected`.
const EVENTS_PER_WINDOW: u64 = 100;
const WARNING_WINDOW: Duration = Duration::from_secs(10);

type Waiting = Arc<Mutex<HashMap<String, Sender<TcpStream>>>>;

/// The limits of the gate (tests shrink them).
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_pending: usize,
    hello_timeout: Duration,
}

const LIMITS: Limits = Limits {
    max_pending: MAX_PENDING_HELLOS,
    hello_timeout: HELLO_TIMEOUT,
};

/// The runner's listening socket and the workers it is waiting for.
pub struct Listener {
    advertised: String,
    waiting: Waiting,
    dropped: Arc<DropCounters>,
    /// Rejections past the event budget not yet summed up in an event (shared with the
    /// accepting thread, which sums them up when its window ends, and the rest on drop).
    unlogged: Arc<AtomicU64>,
    events: EventLog,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // The run ends before the window does: the last count must still reach the log.
        flush_unlogged(&self.unlogged, &self.events);
    }
}

/// Emits one `connections_rejected` event for the rejections counted but not logged, if any.
fn flush_unlogged(unlogged: &AtomicU64, events: &EventLog) {
    let count = unlogged.swap(0, Ordering::Relaxed);
    if count > 0 {
        events.emit(&Event::ConnectionsRejected {
            count,
            seconds: WARNING_WINDOW.as_secs(),
        });
    }
}

impl Listener {
    /// Binds `listen` (`host:port`), or by default every interface on a port chosen by the OS,
    /// advertised as this host's name; rejected connections are reported on `console`.
    ///
    /// The default binds the wildcard address, not the address the host name resolves to here:
    /// on many systems that is a loopback address (`127.0.1.1` in Debian's `/etc/hosts`), which
    /// workers on other nodes cannot reach, while they resolve the name to the real address.
    pub fn bind(listen: Option<&str>, console: Arc<Console>, events: EventLog) -> io::Result<Self> {
        Self::bind_with(listen, console, events, LIMITS)
    }

    fn bind_with(
        listen: Option<&str>,
        console: Arc<Console>,
        events: EventLog,
        limits: Limits,
    ) -> io::Result<Self> {
        let listener = match listen {
            Some(host) => {
                let addr: SocketAddr = host.to_socket_addrs()?.next().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::AddrNotAvailable,
                        format!("{host} does not resolve"),
                    )
                })?;
                TcpListener::bind(addr)?
            }
            // IPv6 and IPv4 on one socket where the kernel has IPv6 and maps IPv4 onto it
            // (`bindv6only` 0, Linux's default), else IPv4 only.
            None if dual_stack_by_default() => TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0))
                .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))?,
            None => TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))?,
        };
        let local = listener.local_addr()?;
        let advertised = advertised_address(listen, local);
        listener.set_nonblocking(true)?;
        widen_backlog(&listener);
        let waiting: Waiting = Arc::default();
        let dropped = Arc::<DropCounters>::default();
        let unlogged = Arc::<AtomicU64>::default();
        let gate = Gate {
            epoll: Epoll::new()?,
            listener,
            pending: BTreeMap::new(),
            next: 0,
            waiting: waiting.clone(),
            reports: Reports::new(console, events.clone(), dropped.clone(), unlogged.clone()),
            limits,
        };
        gate.epoll.add(gate.listener.as_raw_fd(), LISTENER)?;
        std::thread::Builder::new()
            .name("tcp-accept".into())
            .spawn(move || gate.run())?;
        Ok(Self {
            advertised,
            waiting,
            dropped,
            unlogged,
            events,
        })
    }

    /// `host:port` workers connect to.
    pub fn advertised(&self) -> &str {
        &self.advertised
    }

    /// Registers a new one-use token; the connection presenting it arrives through the ticket.
    /// Dropping the ticket withdraws the token.
    pub fn expect(&self) -> io::Result<Ticket> {
        let token = new_token()?;
        let (tx, connection) = channel();
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(token.clone(), tx);
        Ok(Ticket {
            token,
            connection,
            waiting: self.waiting.clone(),
            dropped: self.dropped.clone(),
            issued: self.dropped.snapshot(),
        })
    }

    /// Connections without a valid token dropped so far.
    pub fn dropped(&self) -> Dropped {
        self.dropped.snapshot()
    }
}

/// A token given to one worker, and where its connection arrives.
pub struct Ticket {
    token: String,
    connection: Receiver<TcpStream>,
    waiting: Waiting,
    dropped: Arc<DropCounters>,
    /// The listener's drops when the ticket was issued.
    issued: Dropped,
}

impl Ticket {
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The worker's connection, once it presented the token (`Ok(None)` after `timeout`; an
    /// error if it presented the token but the connection failed before it was handed over).
    pub fn wait(&self, timeout: Duration) -> io::Result<Option<TcpStream>> {
        match self.connection.recv_timeout(timeout) {
            Ok(stream) => Ok(Some(stream)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(io::Error::other(
                "the worker's connection failed during its hello",
            )),
        }
    }

    /// Connections without a valid token the listener dropped since this ticket was issued
    /// (the worker's own attempts, if they were cut off, among them).
    pub fn dropped_meanwhile(&self) -> Dropped {
        self.dropped.snapshot().since(&self.issued)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A worker that never came must not be able to use its token later.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.token);
    }
}

/// Connections dropped before presenting a valid token, by why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Pushed out, still silent, by newer connections when the pending hellos were at the cap.
    pub evicted: u64,
    /// No complete hello within the hello timeout.
    pub silent: u64,
    /// Closed or reset by the peer before a complete hello (or while it was answered).
    pub closed: u64,
    /// Their first frame was not a hello.
    pub malformed: u64,
    /// A hello with a wrong, used or withdrawn token.
    pub refused: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.evicted + self.silent + self.closed + self.malformed + self.refused
    }

    fn since(&self, earlier: &Dropped) -> Dropped {
        Dropped {
            evicted: self.evicted.saturating_sub(earlier.evicted),
            silent: self.silent.saturating_sub(earlier.silent),
            closed: self.closed.saturating_sub(earlier.closed),
            malformed: self.malformed.saturating_sub(earlier.malformed),
            refused: self.refused.saturating_sub(earlier.refused),
        }
    }
}

impl fmt::Display for Dropped {
    /// "12 connections without a valid token (10 pushed out by newer ones, 2 silent for 2 s)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total();
        write!(
            f,
            "{total} connection{} without a valid token",
            if total == 1 { "" } else { "s" }
        )?;
        let silent = format!("silent for {} s", HELLO_TIMEOUT.as_secs());
        let parts: Vec<String> = [
            (self.evicted, "pushed out by newer ones before their hello"),
            (self.silent, silent.as_str()),
            (self.closed, "closed before a whole hello"),
            (self.malformed, "sent something else"),
            (self.refused, "with a wrong or used token"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum DropKind {
    Evicted,
    Silent,
    Closed,
    Malformed,
    Refused,
}

/// [`Dropped`], shared between the gate thread and the tickets.
#[derive(Default)]
struct DropCounters {
    evicted: AtomicU64,
    silent: AtomicU64,
    closed: AtomicU64,
    malformed: AtomicU64,
    refused: AtomicU64,
}

impl DropCounters {
    fn count(&self, kind: DropKind) {
        let counter = match kind {
            DropKind::Evicted => &self.evicted,
            DropKind::Silent => &self.silent,
            DropKind::Closed => &self.closed,
            DropKind::Malformed => &self.malformed,
            DropKind::Refused => &self.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Dropped {
        Dropped {
            evicted: self.evicted.load(Ordering::Relaxed),
            silent: self.silent.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// Why a connection was dropped.
struct Rejection {
    kind: DropKind,
    why: String,
}

impl Rejection {
    fn new(kind: DropKind, why: impl Into<String>) -> Self {
        Self {
            kind,
            why: why.into(),
        }
    }
}

/// Reports dropped connections: counted, each in the event log, on the terminal one by one up
/// to a budget per window and then summed up.
struct Reports {
    console: Arc<Console>,
    events: EventLog,
    counters: Arc<DropCounters>,
    window_start: Instant,
    /// The drops when the window started.
    window_dropped: Dropped,
    shown: u64,
    hidden: u64,
    /// `connection_rejected` events emitted in this window, and those left out.
    logged: u64,
    unlogged: Arc<AtomicU64>,
}

impl Reports {
    fn new(
        console: Arc<Console>,
        events: EventLog,
        counters: Arc<DropCounters>,
        unlogged: Arc<AtomicU64>,
    ) -> Self {
        Self {
            console,
            events,
            counters,
            window_start: Instant::now(),
            window_dropped: Dropped::default(),
            shown: 0,
            hidden: 0,
            logged: 0,
            unlogged,
        }
    }

    fn reject(&mut self, peer: &str, rejection: Rejection) {
        self.counters.count(rejection.kind);
        self.end_window(Instant::now());
        // A flood must not fill the disk with events either: one each up to a budget per
        // window, then a count when the window ends.
        if self.logged < EVENTS_PER_WINDOW {
            self.logged += 1;
            self.events.emit(&Event::ConnectionRejected {
                peer,
                reason: &rejection.why,
            });
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
        }
        if self.shown < WARNINGS_PER_WINDOW {
            self.shown += 1;
            self.console.warn(&format!(
                "rejected a worker connection from {peer}: {}",
                rejection.why
            ));
        } else {
            self.hidden += 1;
        }
    }

    /// Closes the warning window if it is over, summing up what it did not show.
    fn end_window(&mut self, now: Instant) {
        if now.saturating_duration_since(self.window_start) < WARNING_WINDOW {
            return;
        }
        let dropped = self.counters.snapshot();
        flush_unlogged(&self.unlogged, &self.events);
        if self.hidden > 0 {
            self.console.warn(&format!(
                "rejected {} in the last {} s, {} of them not shown one by one",
                dropped.since(&self.window_dropped),
                WARNING_WINDOW.as_secs(),
                self.hidden,
            ));
        }
        self.window_start = now;
        self.window_dropped = dropped;
        self.shown = 0;
        self.hidden = 0;
        self.logged = 0;
    }

    /// When the window must be closed to sum up hidden rejections.
    fn due(&self) -> Option<Instant> {
        (self.hidden > 0 || self.unlogged.load(Ordering::Relaxed) > 0)
            .then(|| self.window_start + WARNING_WINDOW)
    }
}

/// The epoll token of the listening socket (pending connections count up from 0).
const LISTENER: u64 = u64::MAX;

/// The thread that accepts connections and reads their hellos, all without blocking.
struct Gate {
    listener: TcpListener,
    epoll: Epoll,
    /// Connections still to say hello, by arrival: the first is the oldest, and the first to
    /// time out (they all get the same time).
    pending: BTreeMap<u64, Hello>,
    next: u64,
    waiting: Waiting,
    reports: Reports,
    limits: Limits,
}

/// A connection saying hello: what arrived of it so far.
struct Hello {
    stream: TcpStream,
    peer: String,
    deadline: Instant,
    buf: [u8; 4 + MAX_HELLO_LEN],
    filled: usize,
}

impl Gate {
    fn run(mut self) {
        let mut ready = Vec::new();
        loop {
            let now = Instant::now();
            self.expire(now);
            self.reports.end_window(now);
            let wake = [
                self.pending.first_key_value().map(|(_, h)| h.deadline),
                self.reports.due(),
            ]
            .into_iter()
            .flatten()
            .min();
            if self
                .epoll
                .wait(wake.map(|t| t.saturating_duration_since(now)), &mut ready)
                .is_err()
            {
                // Not expected on a valid epoll set; do not spin on it.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            // The hellos that arrived first, then new connections: see ACCEPT_BATCH.
            let mut accept = false;
            for &token in &ready {
                if token == LISTENER {
                    accept = true;
                } else {
                    self.read_hello(token);
                }
            }
            if accept {
                self.accept_some();
            }
        }
    }

    /// Drops the connections whose time to say hello is over.
    fn expire(&mut self, now: Instant) {
        while let Some((&seq, hello)) = self.pending.first_key_value() {
            if hello.deadline > now {
                break;
            }
            if let Some(hello) = self.take(seq) {
                let why = format!(
                    "{} within {} s",
                    hello.what(),
                    self.limits.hello_timeout.as_secs_f64()
                );
                self.reports
                    .reject(&hello.peer, Rejection::new(DropKind::Silent, why));
            }
        }
    }

    fn take(&mut self, seq: u64) -> Option<Hello> {
        let hello = self.pending.remove(&seq)?;
        // The stream may live on (handed to the pool): it must leave the set explicitly.
        self.epoll.remove(hello.stream.as_raw_fd());
        Some(hello)
    }

    fn accept_some(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => {
                    // Out of descriptors or similar: do not spin on it.
                    std::thread::sleep(Duration::from_millis(50));
                    return;
                }
            }
        }
    }

    /// A new connection: its hello is read at once (it has often arrived already), else it
    /// waits, pushing out the oldest waiting connection if there are too many.
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) {
        let mut hello = Hello {
            stream,
            peer: peer.to_string(),
            deadline: Instant::now() + self.limits.hello_timeout,
            buf: [0; 4 + MAX_HELLO_LEN],
            filled: 0,
        };
        if let Err(e) = hello.stream.set_nonblocking(true) {
            let why = format!("the runner could not read it: {e}");
            return self
                .reports
                .reject(&hello.peer, Rejection::new(DropKind::Closed, why));
        }
        match hello.read_available() {
            Ok(true) => return self.answer(hello),
            Ok(false) => {}
            Err(rejection) => return self.reports.reject(&hello.peer, rejection),
        }
        while self.pending.len() >= self.limits.max_pending.max(1) {
            let Some((&oldest, _)) = self.pending.first_key_value() else {
                break;
            };
            if let Some(old) = self.take(oldest) {
                let why = format!(
                    "no hello yet when {} connections were waiting to say hello (the oldest gives way to a new one)",
                    self.limits.max_pending
                );
                self.reports
                    .reject(&old.peer, Rejection::new(DropKind::Evicted, why));
            }
        }
        let seq = self.next;
        self.next += 1;
        if let Err(e) = self.epoll.add(hello.stream.as_raw_fd(), seq) {
            let why = format!("the runner could not watch it: {e}");
            return self
                .reports
                .reject(&hello.peer, Rejection::new(DropKind::Closed, why));
        }
        self.pending.insert(seq, hello);
    }

    /// A waiting connection has input (or hung up).
    fn read_hello(&mut self, seq: u64) {
        let Some(hello) = self.pending.get_mut(&seq) else {
            // Pushed out or timed out in this round already.
            return;
        };
        match hello.read_available() {
            Ok(false) => {}
            Ok(true) => {
                if let Some(hello) = self.take(seq) {
                    self.answer(hello);
                }
            }
            Err(rejection) => {
                if let Some(hello) = self.take(seq) {
                    self.reports.reject(&hello.peer, rejection);
                }
            }
        }
    }

    /// A whole hello arrived: checks the token, answers, and hands the stream to whoever waits
    /// for it.
    fn answer(&mut self, hello: Hello) {
        let Hello {
            mut stream,
            peer,
            buf,
            filled,
            ..
        } = hello;
        let body = &buf[4..filled];
        if body.first() != Some(&tag::HELLO) {
            let why = "its first frame is not a hello (no token)";
            return self
                .reports
                .reject(&peer, Rejection::new(DropKind::Malformed, why));
        }
        let Ok(presented) = std::str::from_utf8(&body[1..]) else {
            return self.reports.reject(
                &peer,
                Rejection::new(DropKind::Malformed, "malformed token"),
            );
        };
        let found = {
            let mut waiting = self
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = waiting
                .keys()
                .find(|k| constant_time_eq(k.as_bytes(), presented.as_bytes()))
                .cloned();
            key.and_then(|k| waiting.remove(&k).map(|sender| (k, sender)))
        };
        let Some((token, sender)) = found else {
            // Said, so that a worker with a stale token stops at once instead of retrying.
            let _ = stream.write(&answer_frame(REFUSED));
            let why = "wrong or already used token";
            return self
                .reports
                .reject(&peer, Rejection::new(DropKind::Refused, why));
        };
        // The pool wants a blocking stream; the answer (6 bytes into an empty send buffer)
        // cannot block. Only an answered hello uses up the token: a connection that failed
        // here gives it back, and the worker's next attempt can still present it.
        let answered = stream
            .set_nonblocking(false)
            .and_then(|()| stream.write_all(&answer_frame(ACCEPTED)));
        if let Err(e) = answered {
            self.waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(token, sender);
            let why = format!("the connection failed while its hello was answered: {e}");
            return self
                .reports
                .reject(&peer, Rejection::new(DropKind::Closed, why));
        }
        let _ = stream.set_nodelay(true);
        keep_alive(&stream);
        if sender.send(stream).is_err() {
            let why = "the runner stopped waiting for it";
            self.reports
                .reject(&peer, Rejection::new(DropKind::Refused, why));
        }
    }
}

impl Hello {
    /// Reads what has arrived of the hello, never past it (what follows is the pool's):
    /// whether it is complete, or why the connection must go.
    fn read_available(&mut self) -> Result<bool, Rejection> {
        loop {
            let needed = if self.filled < 4 {
                4
            } else {
                let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len == 0 || len > MAX_HELLO_LEN {
                    let why = format!("its first frame announces {len} bytes, not a hello");
                    return Err(Rejection::new(DropKind::Malformed, why));
                }
                4 + len
            };
            if self.filled == needed && needed > 4 {
                return Ok(true);
            }
            match self.stream.read(&mut self.buf[self.filled..needed]) {
                Ok(0) => {
                    let why = format!("{} (closed)", self.what());
                    return Err(Rejection::new(DropKind::Closed, why));
                }
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => {
                    let why = format!("{}: {e}", self.what());
                    return Err(Rejection::new(DropKind::Closed, why));
                }
            }
        }
    }

    fn what(&self) -> &'static str {
        if self.filled < 4 {
            "no hello"
        } else {
            "truncated hello"
        }
    }
}

/// The runner's answer to a hello.
fn answer_frame(verdict: u8) -> [u8; 6] {
    [2, 0, 0, 0, tag::HELLO, verdict]
}

/// Asks for the longest accept queue the system allows (std asks for 128): connections that
/// arrive in a burst wait in the kernel instead of being refused.
fn widen_backlog(listener: &TcpListener) {
    // SAFETY: listen(2) on a socket we own that is already listening only resizes its queue.
    unsafe { libc::listen(listener.as_raw_fd(), libc::SOMAXCONN) };
}

/// A small epoll set: level-triggered input, each descriptor with a token.
struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: a plain syscall; the descriptor is checked, then owned.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 64],
        })
    }

    fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: valid epoll and target descriptors, and a valid event.
        let r =
            unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn remove(&self, fd: RawFd) {
        // SAFETY: valid epoll descriptor; removing an unknown descriptor just fails.
        unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// Waits up to `timeout` (`None`: for ever) and puts the tokens that are ready in `ready`.
    fn wait(&mut self, timeout: Option<Duration>, ready: &mut Vec<u64>) -> io::Result<()> {
        ready.clear();
        // Round up so that a sub-millisecond wait does not become a busy loop.
        let ms = timeout.map_or(-1, |t| {
            t.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
        });
        // SAFETY: the buffer holds `events.len()` entries for the kernel to fill.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        ready.extend(self.events[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

/// Whether an IPv6 wildcard socket also accepts IPv4 here.
fn dual_stack_by_default() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|v| v.trim() == "0")
}

/// What workers are told to connect to: the address as given, with the port the OS chose if
/// it asked for port 0, and this host's name in place of a wildcard address.
fn advertised_address(listen: Option<&str>, local: SocketAddr) -> String {
    let port = local.port();
    let Some(given) = listen else {
        return format!("{}:{port}", hostname());
    };
    if local.ip().is_unspecified() {
        return format!("{}:{port}", hostname());
    }
    match given.rsplit_once(':') {
        Some((host, "0")) => format!("{host}:{port}"),
        _ => given.to_owned(),
    }
}

/// How long a connection's peer may stay silent before the connection ends (ETIMEDOUT): 10 s
/// idle, then 3 keepalive probes 5 s apart; and the same for data sent and not acknowledged.
pub const PEER_SILENCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(25);

/// Turns on TCP keepalive with short timers, so that a peer that vanished without closing the
/// connection (a node that lost power, a cut network) ends it within about half a minute
/// instead of after the kernel's default two hours; and bounds how long data sent may go
/// unacknowledged the same way (`TCP_USER_TIMEOUT`: keepalive probes only an idle connection,
/// and one with data in flight would retransmit for a quarter of an hour).
pub fn keep_alive(stream: &TcpStream) {
    const PEER_SILENCE_LIMIT_MS: libc::c_int = PEER_SILENCE_LIMIT.as_millis() as libc::c_int;
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 10),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
        (
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            PEER_SILENCE_LIMIT_MS,
        ),
    ] {
        let value: libc::c_int = value;
        // SAFETY: setsockopt on an open socket with a pointer to a c_int and its size.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 128 random bits from the OS, as 32 hex digits.
pub fn new_token() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        match rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// This machine's host name.
pub fn hostname() -> String {
    let name = rustix::system::uname();
    match name.nodename().to_bytes() {
        b"" => "localhost".into(),
        bytes => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Why a worker could not have its hello accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "the runner refused the token (already used, or the runner gave up on this worker) after {attempts} attempt(s)"
    )]
    Refused { attempts: u32 },
    #[error("no accepted hello within {} s, {attempts} attempt(s); the last: {last}", .waited.as_secs())]
    GaveUp {
        waited: Duration,
        attempts: u32,
        last: String,
    },
}

/// How one attempt to connect and say hello failed.
enum Attempt {
    /// The runner answered, and does not take the token: trying again is pointless.
    Refused,
    /// Cut off or not reached: worth another try.
    Failed(String),
}

/// Worker side: connects and presents the token, until the runner accepts it. A connection the
/// runner closes without an answer (it was pushed out by a flood of others, or timed out) is
/// tried again with the same token, with growing pauses, for [`WORKER_CONNECT_DEADLINE`].
pub fn connect(addr: &str, token: &str) -> Result<TcpStream, ConnectError> {
    connect_until(
        addr,
        token,
        Instant::now() + WORKER_CONNECT_DEADLINE,
        |_| {},
    )
}

/// [`connect`] with its deadline; `before_hello` is called on each connection before its
/// hello is sent, with the attempt's number (from 1).
fn connect_until(
    addr: &str,
    token: &str,
    deadline: Instant,
    mut before_hello: impl FnMut(u32),
) -> Result<TcpStream, ConnectError> {
    let started = Instant::now();
    let mut pause = RETRY_FIRST;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let last = match attempt(addr, token, deadline, || before_hello(attempts)) {
            Ok(stream) => return Ok(stream),
            Err(Attempt::Refused) => return Err(ConnectError::Refused { attempts }),
            Err(Attempt::Failed(why)) => why,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnectError::GaveUp {
                waited: started.elapsed(),
                attempts,
                last,
            });
        }
        std::thread::sleep(jittered(pause).min(left));
        pause = (pause * 2).min(RETRY_MAX);
        if Instant::now() >= deadline {
            return Err(ConnectError::GaveUp {
                waited: started.elapsed(),
                attempts,
                last,
            });
        }
    }
}

/// `pause` give or take a quarter, from the clock's nanoseconds (no need for good randomness).
fn jittered(pause: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let quarter = pause / 4;
    let offset = quarter.mul_f64(f64::from(nanos % 1000) / 500.0);
    pause - quarter + offset
}

/// One connection: connect, hello, and the runner's answer.
fn attempt(
    addr: &str,
    token: &str,
    deadline: Instant,
    before_hello: impl FnOnce(),
) -> Result<TcpStream, Attempt> {
    // Resolved every time: the runner is listening before it launches us, but name resolution
    // on a fresh node may be slow to come up.
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| Attempt::Failed(format!("cannot resolve {addr}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Attempt::Failed(format!("{addr} resolves to no address")));
    }
    let mut failed = Attempt::Failed("no time left to connect".into());
    let mut connected = None;
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&a, left.min(CONNECT_TIMEOUT)) {
            Ok(stream) => {
                connected = Some(stream);
                break;
            }
            Err(e) => failed = Attempt::Failed(format!("cannot connect to {a}: {e}")),
        }
    }
    let mut stream = connected.ok_or(failed)?;
    let _ = stream.set_nodelay(true);
    keep_alive(&stream);
    before_hello();
    let lost = |what: &str, e: io::Error| Attempt::Failed(format!("{what}: {e}"));
    let mut hello = crate::protocol::FrameBuf::new();
    hello.begin(tag::HELLO);
    hello.put_raw(token.as_bytes());
    stream
        .set_write_timeout(Some(time_left(deadline)))
        .map_err(|e| lost("cannot set a timeout", e))?;
    crate::protocol::send(&mut stream, hello.finish())
        .map_err(|e| lost("the connection failed while sending the hello", e))?;
    // The runner answers or closes the connection within its hello timeout of accepting it:
    // waiting for that (rather than giving up on the connection sooner) means a late answer is
    // never lost on a connection this side abandoned, which would use up the token.
    let mut answer = [0u8; 6];
    let mut filled = 0;
    while filled < answer.len() {
        stream
            .set_read_timeout(Some(time_left(deadline)))
            .map_err(|e| lost("cannot set a timeout", e))?;
        match stream.read(&mut answer[filled..]) {
            Ok(0) => {
                return Err(Attempt::Failed(
                    "the runner closed the connection before answering the hello".into(),
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= deadline {
                    return Err(Attempt::Failed("no answer to the hello".into()));
                }
            }
            Err(e) => {
                return Err(lost(
                    "the connection failed before the hello was answered",
                    e,
                ));
            }
        }
    }
    if answer == answer_frame(REFUSED) {
        return Err(Attempt::Refused);
    }
    if answer != answer_frame(ACCEPTED) {
        return Err(Attempt::Failed(format!(
            "the answer to the hello is not one ({answer:?}): is {addr} a loky-run runner?"
        )));
    }
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(|e| lost("cannot clear the timeouts", e))?;
    Ok(stream)
}

/// What is left until `deadline`, never zero (a zero timeout is an error for sockets).
fn time_left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn listener() -> Listener {
        listener_with(LIMITS, EventLog::disabled())
    }

    fn listener_with(limits: Limits, events: EventLog) -> Listener {
        Listener::bind_with(
            Some("127.0.0.1:0"),
            Arc::new(Console::new(crate::console::Verbosity::Quiet)),
            events,
            limits,
        )
        .unwrap()
    }

    /// Waits (bounded, generously) until `ready` says yes.
    fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready() {
            assert!(Instant::now() < deadline, "waited in vain for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A HELLO frame carrying `token`, as a worker sends it.
    fn hello_frame(token: &str) -> Vec<u8> {
        let mut frame = ((token.len() + 1) as u32).to_le_bytes().to_vec();
        frame.push(tag::HELLO);
        frame.extend_from_slice(token.as_bytes());
        frame
    }

    fn raw_hello(l: &Listener, token: &str) -> TcpStream {
        let mut s = TcpStream::connect(l.advertised()).unwrap();
        s.write_all(&hello_frame(token)).unwrap();
        s
    }

    /// What the server sent until it closed the connection (`None`: it did not close it).
    fn read_until_closed(mut s: TcpStream) -> Option<Vec<u8>> {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 64];
        loop {
            match s.read(&mut b) {
                Ok(0) => return Some(got),
                Ok(n) => got.extend_from_slice(&b[..n]),
                // A read timeout is not a close.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(_) => return Some(got),
            }
        }
    }

    fn closed_by_server(s: TcpStream) -> bool {
        read_until_closed(s).is_some()
    }

    /// The peers of the `connection_rejected` events in a log, in order.
    fn rejected_peers(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["event"] == "connection_rejected")
            .map(|e| e["peer"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn connections_give_up_on_a_silent_peer_after_the_limit() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        keep_alive(&stream);
        let get = |level, name| {
            let mut value: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt on an open socket into a c_int with its size.
            let rc = unsafe {
                libc::getsockopt(
                    stream.as_raw_fd(),
                    level,
                    name,
                    (&raw mut value).cast(),
                    &raw mut len,
                )
            };
            assert_eq!(rc, 0);
            value
        };
        let (idle, interval, count) = (
            get(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
            get(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
            get(libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
        );
        assert_eq!(get(libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        // Idle or with data in flight, the same limit.
        let limit = PEER_SILENCE_LIMIT.as_secs() as libc::c_int;
        assert_eq!(idle + interval * count, limit);
        assert_eq!(get(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT), limit * 1000);
    }

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn the_right_token_gets_through_once() {
        let l = listener();
        let ticket = l.expect().unwrap();
        let _client = connect(l.advertised(), ticket.token()).unwrap();
        assert!(ticket.wait(Duration::from_secs(10)).unwrap().is_some());
        // The same token again is refused, with an answer that says so: a worker gives up at
        // once instead of trying again, and nothing is delivered.
        let again = connect(l.advertised(), ticket.token());
        assert!(
            matches!(again, Err(ConnectError::Refused { attempts: 1 })),
            "{again:?}"
        );
        let raw = raw_hello(&l, ticket.token());
        assert_eq!(read_until_closed(raw), Some(answer_frame(REFUSED).to_vec()));
        assert!(!matches!(ticket.wait(Duration::ZERO), Ok(Some(_))));
        assert_eq!(l.dropped().refused, 2);
    }

    #[test]
    fn two_connections_with_one_token_at_once_only_one_is_taken() {
        let l = listener();
        let ticket = l.expect().unwrap();
        let (a, b) = (raw_hello(&l, ticket.token()), raw_hello(&l, ticket.token()));
        let accepted = answer_frame(ACCEPTED).to_vec();
        let answers = [a, b].map(|mut s| {
            let mut answer = [0u8; 6];
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.read_exact(&mut answer).unwrap();
            answer.to_vec()
        });
        assert_eq!(
            answers.iter().filter(|a| **a == accepted).count(),
            1,
            "{answers:?}"
        );
        assert!(answers.contains(&answer_frame(REFUSED).to_vec()));
        assert!(ticket.wait(Duration::from_secs(10)).unwrap().is_some());
    }

    #[test]
    fn wrong_missing_and_oversized_hellos_are_dropped() {
        let l = listener();
        let ticket = l.expect().unwrap();
        let wrong = raw_hello(&l, "0123456789abcdef0123456789abcdef");
        assert_eq!(
            read_until_closed(wrong),
            Some(answer_frame(REFUSED).to_vec())
        );
        let wrong = connect(l.advertised(), "0123456789abcdef0123456789abcdef");
        assert!(
            matches!(wrong, Err(ConnectError::Refused { .. })),
            "{wrong:?}"
        );

        let mut no_token = TcpStream::connect(l.advertised()).unwrap();
        let mut frame = crate::protocol::FrameBuf::new();
        no_token.write_all(frame.json(tag::INIT, &"hi")).unwrap();
        assert_eq!(read_until_closed(no_token), Some(Vec::new()));

        let mut huge = TcpStream::connect(l.advertised()).unwrap();
        huge.write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert!(closed_by_server(huge));

        // None of them consumed the real token.
        let _ok = connect(l.advertised(), ticket.token()).unwrap();
        assert!(ticket.wait(Duration::from_secs(10)).unwrap().is_some());
        // Dropped for what they sent, none for being slow: the 4 GiB header at once.
        let dropped = l.dropped();
        assert_eq!((dropped.refused, dropped.malformed), (2, 2), "{dropped:?}");
        assert_eq!(dropped.silent, 0, "{dropped:?}");
        assert_eq!(ticket.dropped_meanwhile(), dropped);
    }

    #[test]
    fn a_withdrawn_token_is_refused() {
        let l = listener();
        let ticket = l.expect().unwrap();
        let token = ticket.token().to_owned();
        drop(ticket);
        let late = connect(l.advertised(), &token);
        assert!(
            matches!(late, Err(ConnectError::Refused { .. })),
            "{late:?}"
        );
    }

    #[test]
    fn a_hello_dribbled_byte_by_byte_gets_one_deadline() {
        let l = listener();
        let _ticket = l.expect().unwrap();
        let mut slow = TcpStream::connect(l.advertised()).unwrap();
        // A hello of the largest size, then its body a byte every 100 ms (25 s in all): a
        // timeout per read would wait for all of it; one deadline cuts it off after 2 s.
        slow.write_all(&(MAX_HELLO_LEN as u32).to_le_bytes())
            .unwrap();
        slow.write_all(&[tag::HELLO]).unwrap();
        let cut_off = (1..MAX_HELLO_LEN).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            slow.write_all(b"a").is_err()
        });
        assert!(cut_off, "the runner waited for the whole dribbled hello");
        assert_eq!(l.dropped().silent, 1);
    }

    #[test]
    fn the_oldest_silent_connection_makes_room_for_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("events.jsonl");
        let limits = Limits {
            max_pending: 3,
            hello_timeout: Duration::from_secs(600),
        };
        let l = listener_with(limits, EventLog::create(&log).unwrap());
        let ticket = l.expect().unwrap();
        // Connections are accepted in the order they were made: a, b and c fill the places,
        // d pushes out a, e pushes out b; c (a worker slow to say hello) is still there.
        let open = || TcpStream::connect(l.advertised()).unwrap();
        let (a, b, mut c) = (open(), open(), open());
        let names = |s: &[&TcpStream]| -> Vec<String> {
            s.iter()
                .map(|s| s.local_addr().unwrap().to_string())
                .collect()
        };
        let (first, second) = (names(&[&a]), names(&[&a, &b]));
        let _d = open();
        wait_until("a pushed out", || rejected_peers(&log) == first);
        let _e = open();
        wait_until("b pushed out", || rejected_peers(&log) == second);
        assert!(closed_by_server(a) && closed_by_server(b));
        c.write_all(&hello_frame(ticket.token())).unwrap();
        let mut answer = [0u8; 6];
        c.read_exact(&mut answer).unwrap();
        assert_eq!(answer, answer_frame(ACCEPTED));
        assert!(ticket.wait(Duration::from_secs(10)).unwrap().is_some());
        assert_eq!(ticket.dropped_meanwhile().evicted, 2);
    }

    #[test]
    fn a_worker_whose_first_connection_was_pushed_out_tries_again_with_its_token() {
        let limits = Limits {
            max_pending: 1,
            hello_timeout: Duration::from_secs(600),
        };
        let l = listener_with(limits, EventLog::disabled());
        let ticket = l.expect().unwrap();
        let mut intruder = None;
        let mut attempts = 0;
        // Before the first hello, an intruder takes the only place: the worker's connection
        // is closed without an answer, and the worker connects again.
        let stream = connect_until(
            l.advertised(),
            ticket.token(),
            Instant::now() + Duration::from_secs(120),
            |n| {
                attempts = n;
                if n == 1 {
                    intruder = Some(TcpStream::connect(l.advertised()).unwrap());
                    wait_until("the worker pushed out", || l.dropped().evicted == 1);
                }
            },
        );
        assert!(stream.is_ok(), "{stream:?}");
        assert_eq!(attempts, 2);
        assert!(ticket.wait(Duration::from_secs(10)).unwrap().is_some());
        // The intruder gave way to the second attempt, unless its hello was read at once.
        assert!(matches!(l.dropped().evicted, 1 | 2), "{:?}", l.dropped());
        drop(intruder);
    }

    /// Keeps `idle` silent and `slow` dribbling connections open to `addr` (each one the
    /// runner closes is opened again) until `stop`, counting those it opened in `opened`.
    fn flood(
        addr: String,
        idle: usize,
        slow: usize,
        stop: Arc<AtomicBool>,
        opened: Arc<AtomicU64>,
    ) {
        let open = |dribble: bool| -> Option<(TcpStream, bool)> {
            let mut s = TcpStream::connect(&addr).ok()?;
            if dribble {
                s.write_all(&(MAX_HELLO_LEN as u32).to_le_bytes()).ok()?;
            }
            s.set_nonblocking(true).ok()?;
            Some((s, dribble))
        };
        let mut conns: Vec<Option<(TcpStream, bool)>> = Vec::new();
        conns.resize_with(idle + slow, || None);
        while !stop.load(Ordering::Relaxed) {
            for (i, slot) in conns.iter_mut().enumerate() {
                let closed = match slot {
                    None => true,
                    Some((s, dribble)) => {
                        let mut b = [0u8; 16];
                        let gone = match s.read(&mut b) {
                            Ok(_) => true,
                            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                        };
                        gone || (*dribble && s.write(&[tag::HELLO]).is_err())
                    }
                };
                if closed {
                    *slot = open(i >= idle);
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn hundreds_of_idle_and_dribbling_connections_do_not_keep_workers_out() {
        let l = listener();
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let flooder = {
            let (addr, stop, opened) = (l.advertised().to_owned(), stop.clone(), opened.clone());
            std::thread::spawn(move || flood(addr, 300, 30, stop, opened))
        };
        // The flood is in place once it opened its connections, and again those the runner
        // pushed out.
        wait_until("a flood", || opened.load(Ordering::Relaxed) > 2 * 330);
        for _ in 0..5 {
            let ticket = l.expect().unwrap();
            let worker = connect(l.advertised(), ticket.token());
            assert!(worker.is_ok(), "{worker:?}");
            assert!(ticket.wait(Duration::from_secs(10)).unwrap().is_some());
        }
        stop.store(true, Ordering::Relaxed);
        flooder.join().unwrap();
        // Each connection it opened again had been dropped first, most pushed out.
        let dropped = l.dropped();
        assert!(dropped.total() > 330 && dropped.evicted > 0, "{dropped:?}");
    }

    #[test]
    fn a_worker_that_cannot_reach_the_runner_tries_again_then_says_why() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let result = connect_until(&addr, "t", Instant::now() + Duration::from_secs(3), |_| {});
        let Err(ConnectError::GaveUp { attempts, last, .. }) = result else {
            panic!("{result:?}");
        };
        assert!(attempts >= 2, "{attempts}");
        assert!(
            last.contains(&format!("cannot connect to {addr}")),
            "{last}"
        );
    }

    #[test]
    fn what_was_dropped_reads_as_a_phrase() {
        let none = Dropped::default();
        assert_eq!(none.to_string(), "0 connections without a valid token");
        let some = Dropped {
            evicted: 250,
            silent: 64,
            refused: 1,
            ..Dropped::default()
        };
        assert_eq!(
            some.to_string(),
            "315 connections without a valid token (250 pushed out by newer ones before their \
             hello, 64 silent for 2 s, 1 with a wrong or used token)"
        );
    }

    #[test]
    fn a_wildcard_address_is_advertised_as_the_host_name() {
        let local: SocketAddr = "0.0.0.0:4321".parse().unwrap();
        let name = hostname();
        assert_eq!(advertised_address(None, local), format!("{name}:4321"));
        assert_eq!(
            advertised_address(Some("0.0.0.0:0"), local),
            format!("{name}:4321")
        );
        let lo: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        assert_eq!(
            advertised_address(Some("127.0.0.1:0"), lo),
            "127.0.0.1:4321"
        );
        assert_eq!(
            advertised_address(Some("localhost:4321"), lo),
            "localhost:4321"
        );
    }
}

//! The TCP side of the protocol, for workers started elsewhere (Slurm job steps) that connect
//! back to the runner.
//!
//! The runner listens on one socket. Each worker it launches gets a fresh random token (128
//! bits from the OS) through its environment; a connection must present it in a first `HELLO`
//! frame within a few seconds. A token is good for one connection only; anything else (no
//! token, a wrong one, an announced frame larger than a hello can be) is dropped and logged,
//! and never reaches the pool. After the hello, the same frames flow as over local pipes.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::console::Console;
use crate::events::{Event, EventLog};
use crate::protocol::tag;

/// Environment variables a remote worker reads (and removes before loading plugins).
pub const CONNECT_ENV: &str = "LOKY_RUN_CONNECT";
pub const TOKEN_ENV: &str = "LOKY_RUN_TOKEN";

/// A hello is a tag and a 32-character token: anything announcing more is not one of ours.
const MAX_HELLO_LEN: usize = 256;
/// How long a fresh connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Hellos read at once: a flood of silent connections cannot start unbounded threads.
const MAX_PENDING_HELLOS: usize = 64;

type Waiting = Arc<Mutex<HashMap<String, Sender<TcpStream>>>>;

/// The runner's listening socket and the workers it is waiting for.
pub struct Listener {
    advertised: String,
    waiting: Waiting,
}

impl Listener {
    /// Binds `listen` (`host:port`), or by default every interface on a port chosen by the OS,
    /// advertised as this host's name; rejected connections are reported on `console`.
    ///
    /// The default binds the wildcard address, not the address the host name resolves to here:
    /// on many systems that is a loopback address (`127.0.1.1` in Debian's `/etc/hosts`), which
    /// workers on other nodes cannot reach, while they resolve the name to the real address.
    pub fn bind(listen: Option<&str>, console: Arc<Console>, events: EventLog) -> io::Result<Self> {
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
        let waiting: Waiting = Arc::default();
        let accepted = waiting.clone();
        let pending = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("tcp-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else {
                        // Out of descriptors or similar: do not spin on it.
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    let peer = stream
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_else(|_| "?".into());
                    if pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_HELLOS {
                        pending.fetch_sub(1, Ordering::AcqRel);
                        reject(
                            &console,
                            &events,
                            &peer,
                            &format!("{MAX_PENDING_HELLOS} connections are already saying hello"),
                        );
                        continue;
                    }
                    let waiting = accepted.clone();
                    let console = console.clone();
                    let events = events.clone();
                    let in_thread = pending.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("tcp-hello".into())
                            .spawn(move || {
                                if let Err(why) = handshake(stream, &waiting) {
                                    reject(&console, &events, &peer, &why);
                                }
                                in_thread.fetch_sub(1, Ordering::AcqRel);
                            });
                    if spawned.is_err() {
                        pending.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            })?;
        Ok(Self {
            advertised,
            waiting,
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
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.clone(), tx);
        Ok(Ticket {
            token,
            connection,
            waiting: self.waiting.clone(),
        })
    }
}

/// A token given to one worker, and where its connection arrives.
pub struct Ticket {
    token: String,
    connection: Receiver<TcpStream>,
    waiting: Waiting,
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
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A worker that never came must not be able to use its token later.
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.token);
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

/// Turns on TCP keepalive with short timers, so that a peer that vanished without closing the
/// connection (a node that lost power, a cut network) ends it within about half a minute
/// instead of after the kernel's default two hours.
pub fn keep_alive(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 10),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
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

/// Logs a refused connection, on the terminal and in the event log.
fn reject(console: &Console, events: &EventLog, peer: &str, why: &str) {
    console.warn(&format!("rejected a worker connection from {peer}: {why}"));
    events.emit(&Event::ConnectionRejected { peer, reason: why });
}

/// Reads and checks the hello; hands the stream to whoever waits for its token.
fn handshake(mut stream: TcpStream, waiting: &Waiting) -> Result<(), String> {
    // One deadline for the whole hello: a peer dribbling a byte at a time gets no longer.
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let mut read_by_deadline = |buf: &mut [u8], what: &str| -> Result<(), String> {
        let mut filled = 0;
        while filled < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("{what} within {} s", HELLO_TIMEOUT.as_secs()));
            }
            stream
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            match stream.read(&mut buf[filled..]) {
                Ok(0) => return Err(format!("{what} (closed)")),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("{what}: {e}")),
            }
        }
        Ok(())
    };
    let mut header = [0u8; 4];
    read_by_deadline(&mut header, "no hello")?;
    let len = u32::from_le_bytes(header) as usize;
    if len == 0 || len > MAX_HELLO_LEN {
        return Err(format!(
            "its first frame announces {len} bytes, more than a hello"
        ));
    }
    let mut body = vec![0u8; len];
    read_by_deadline(&mut body, "truncated hello")?;
    if body[0] != tag::HELLO {
        return Err("its first frame is not a hello (no token)".into());
    }
    let presented = std::str::from_utf8(&body[1..]).map_err(|_| "malformed token".to_owned())?;
    let sender = {
        let mut waiting = waiting.lock().unwrap_or_else(|e| e.into_inner());
        let key = waiting
            .keys()
            .find(|k| constant_time_eq(k.as_bytes(), presented.as_bytes()))
            .cloned();
        key.and_then(|k| waiting.remove(&k))
    };
    let Some(sender) = sender else {
        return Err("wrong or already used token".into());
    };
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    keep_alive(&stream);
    sender
        .send(stream)
        .map_err(|_| "the runner stopped waiting for it".to_owned())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 128 random bits from the OS, as 32 hex digits.
pub fn new_token() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: writing into the unfilled part of a local buffer of the given length.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its length.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Worker side: connects and presents the token.
pub fn connect(addr: &str, token: &str) -> io::Result<TcpStream> {
    let mut last = None;
    // The runner is listening before it launches us; retry briefly for slow name resolution.
    for _ in 0..20 {
        match TcpStream::connect(addr) {
            Ok(mut stream) => {
                let _ = stream.set_nodelay(true);
                keep_alive(&stream);
                let mut hello = crate::protocol::FrameBuf::new();
                hello.begin(tag::HELLO);
                hello.put_raw(token.as_bytes());
                crate::protocol::send(&mut stream, hello.finish())?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(last.unwrap_or_else(|| io::Error::other("could not connect")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Instant;

    fn listener() -> Listener {
        Listener::bind(
            Some("127.0.0.1:0"),
            Arc::new(Console::new(crate::console::Verbosity::Quiet)),
            EventLog::disabled(),
        )
        .unwrap()
    }

    /// Whether the server closed the connection (read returns 0 or an error) in time.
    fn closed_by_server(mut s: TcpStream) -> bool {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(n) => n == 0,
            // A read timeout is not a close.
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
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
        // The same token again is refused: the connection is closed, nothing is delivered.
        let again = connect(l.advertised(), ticket.token()).unwrap();
        assert!(closed_by_server(again));
    }

    #[test]
    fn wrong_missing_and_oversized_hellos_are_dropped() {
        let l = listener();
        let ticket = l.expect().unwrap();
        let wrong = connect(l.advertised(), "0123456789abcdef0123456789abcdef").unwrap();
        assert!(closed_by_server(wrong));

        let mut no_token = TcpStream::connect(l.advertised()).unwrap();
        let mut frame = crate::protocol::FrameBuf::new();
        no_token.write_all(frame.json(tag::INIT, &"hi")).unwrap();
        assert!(closed_by_server(no_token));

        let mut huge = TcpStream::connect(l.advertised()).unwrap();
        huge.write_all(&u32::MAX.to_le_bytes()).unwrap();
        let started = Instant::now();
        assert!(closed_by_server(huge));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "dropped at once, not after reading 4 GiB"
        );

        // None of them consumed the real token.
        let _ok = connect(l.advertised(), ticket.token()).unwrap();
        assert!(ticket.wait(Duration::from_secs(10)).unwrap().is_some());
    }

    #[test]
    fn a_withdrawn_token_is_refused() {
        let l = listener();
        let ticket = l.expect().unwrap();
        let token = ticket.token().to_owned();
        drop(ticket);
        let late = connect(l.advertised(), &token).unwrap();
        assert!(closed_by_server(late));
    }

    #[test]
    fn a_hello_dribbled_byte_by_byte_gets_one_deadline() {
        let l = listener();
        let _ticket = l.expect().unwrap();
        let mut slow = TcpStream::connect(l.advertised()).unwrap();
        // A hello of the largest size, then its body a byte every 100 ms (25 s in all): a
        // timeout per read would wait for all of it; one deadline cuts it off after 5 s.
        slow.write_all(&(MAX_HELLO_LEN as u32).to_le_bytes())
            .unwrap();
        slow.write_all(&[tag::HELLO]).unwrap();
        let cut_off = (1..MAX_HELLO_LEN).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            slow.write_all(b"a").is_err()
        });
        assert!(cut_off, "the runner waited for the whole dribbled hello");
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

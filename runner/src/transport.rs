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
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Binds `listen` (`host:port`), or by default this host's name resolved, on a port chosen
    /// by the OS; rejected connections are reported on `console`.
    pub fn bind(listen: Option<&str>, console: Arc<Console>, events: EventLog) -> io::Result<Self> {
        let host = match listen {
            Some(addr) => addr.to_owned(),
            None => format!("{}:0", hostname()),
        };
        let addr: SocketAddr = host.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("{host} does not resolve"),
            )
        })?;
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        // Workers connect to the name they can resolve, with the port the OS chose.
        let advertised = match listen {
            Some(a) if !a.ends_with(":0") => a.to_owned(),
            Some(a) => format!("{}:{}", a.trim_end_matches(":0"), local.port()),
            None => format!("{}:{}", hostname(), local.port()),
        };
        let waiting: Waiting = Arc::default();
        let accepted = waiting.clone();
        let pending = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("tcp-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
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

    /// Registers a new one-use token; the connection presenting it arrives on the receiver.
    pub fn expect(&self) -> io::Result<(String, Receiver<TcpStream>)> {
        let token = new_token()?;
        let (tx, rx) = channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.clone(), tx);
        Ok((token, rx))
    }

    /// Forgets a token whose worker will never come (it failed to start).
    pub fn forget(&self, token: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }
}

/// Logs a refused connection, on the terminal and in the event log.
fn reject(console: &Console, events: &EventLog, peer: &str, why: &str) {
    console.warn(&format!("rejected a worker connection from {peer}: {why}"));
    events.emit(&Event::ConnectionRejected { peer, reason: why });
}

/// Reads and checks the hello; hands the stream to whoever waits for its token.
fn handshake(mut stream: TcpStream, waiting: &Waiting) -> Result<(), String> {
    stream
        .set_read_timeout(Some(HELLO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut header = [0u8; 4];
    stream
        .read_exact(&mut header)
        .map_err(|_| "no hello within 5 s".to_owned())?;
    let len = u32::from_le_bytes(header) as usize;
    if len == 0 || len > MAX_HELLO_LEN {
        return Err(format!(
            "its first frame announces {len} bytes, more than a hello"
        ));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .map_err(|_| "truncated hello".to_owned())?;
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
        let (token, rx) = l.expect().unwrap();
        let _client = connect(l.advertised(), &token).unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok());
        // The same token again is refused: the connection is closed, nothing is delivered.
        let again = connect(l.advertised(), &token).unwrap();
        assert!(closed_by_server(again));
    }

    #[test]
    fn wrong_missing_and_oversized_hellos_are_dropped() {
        let l = listener();
        let (token, rx) = l.expect().unwrap();
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
        let _ok = connect(l.advertised(), &token).unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok());
    }
}

//! Frames from the workers, read by the dispatcher's own thread.
//!
//! Every worker's result descriptor (a pipe, or the TCP connection of a remote worker) is in one
//! epoll set that the dispatcher waits on, so a result wakes the thread that handles it directly:
//! no reader thread per worker and no channel hop in between (each hop cost a thread wakeup, a
//! third of a one-at-a-time round trip). Worker exits, which need a blocking `waitid`, still come
//! from small reaper threads; they wake the same epoll through an eventfd.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::{
    LONG_HEADER, MAX_FRAME_LEN, frame_limit, long_body_len, long_header, reserve_exact, tag,
};
use crate::spin::{self, SpinPolicy};

/// The epoll set and the eventfd that other threads use to wake it.
pub struct Poller {
    epoll: OwnedFd,
    waker: Arc<Waker>,
    events: Vec<libc::epoll_event>,
    spin: SpinPolicy,
}

/// Wakes a [`Poller`] from another thread.
pub struct Waker {
    fd: OwnedFd,
}

/// The token of the waker's eventfd in the epoll set (worker ids are small).
pub const WAKE_TOKEN: u64 = u64::MAX;

impl Waker {
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd; a full counter (EAGAIN) is
        // still a pending wakeup, so the result does not matter.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn drain(&self) {
        let mut n: u64 = 0;
        // SAFETY: reading 8 bytes into a valid u64 from our non-blocking eventfd.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscalls; the returned descriptors are checked, then owned.
        let (epoll, wake) = unsafe {
            let epoll = OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?);
            let wake = OwnedFd::from_raw_fd(cvt(libc::eventfd(
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
            ))?);
            (epoll, wake)
        };
        let poller = Self {
            epoll,
            waker: Arc::new(Waker { fd: wake }),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 64],
            spin: SpinPolicy::default(),
        };
        poller.add(poller.waker.fd.as_raw_fd(), WAKE_TOKEN)?;
        Ok(poller)
    }

    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// Watches `fd` for input (level-triggered), reported with `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: valid epoll and target descriptors, and a valid event.
        cvt(unsafe {
            libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event)
        })?;
        Ok(())
    }

    /// Watches `fd` for room to write, reported with `token`.
    pub fn add_writable(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLOUT as u32,
            u64: token,
        };
        // SAFETY: valid epoll and target descriptors, and a valid event.
        cvt(unsafe {
            libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event)
        })?;
        Ok(())
    }

    pub fn remove(&self, fd: RawFd) {
        // SAFETY: valid epoll descriptor; removing an unknown fd just fails.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    fn epoll_wait(&mut self, ms: libc::c_int) -> libc::c_int {
        // SAFETY: the buffer holds `events.len()` entries for the kernel to fill.
        unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                ms,
            )
        }
    }

    /// Waits up to `timeout` and calls `ready` with the token of each descriptor that has
    /// input (or hung up). The waker's token is handled here.
    pub fn wait(&mut self, timeout: Duration, mut ready: impl FnMut(u64)) -> io::Result<usize> {
        let started = Instant::now();
        let mut n = 0;
        // After a short wait (one task at a time), look for events briefly before sleeping.
        if self.spin.should_spin() && timeout >= spin::SPIN_BUDGET {
            spin::spin_until(spin::SPIN_BUDGET, || {
                n = self.epoll_wait(0);
                n != 0
            });
        }
        if n == 0 {
            // Round up so that a sub-millisecond wait does not become a busy loop.
            let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
            n = self.epoll_wait(ms);
        }
        self.spin.record(if n > 0 {
            started.elapsed()
        } else {
            Duration::MAX
        });
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        for event in &self.events[..n as usize] {
            let token = event.u64;
            if token == WAKE_TOKEN {
                self.waker.drain();
            } else {
                ready(token);
            }
        }
        Ok(n as usize)
    }
}

/// Frames to one worker, written without ever blocking the dispatcher: what the pipe (or
/// socket) cannot take now waits here and goes out when it has room (a busy worker reads its
/// commands only between chunks, and a blocked write would stop the dispatcher from reading
/// the results that worker is trying to write: a deadlock).
pub struct Outbox {
    fd: OwnedFd,
    socket: bool,
    /// Frames not fully written, each with how much of it was. Shared with their owner (the
    /// dispatcher keeps a chunk's frame until it is answered): waiting costs no copy.
    queue: std::collections::VecDeque<Queued>,
    /// Registered in the poller for room to write.
    pub watching: bool,
    /// A write failed: the worker is gone (its exit is seen on the result side).
    broken: bool,
    /// Frame bodies above this go as long frames ([`frame_limit`]; lower in tests).
    limit: usize,
}

impl Outbox {
    pub fn new(fd: OwnedFd, socket: bool) -> io::Result<Self> {
        if !socket {
            set_nonblocking(&fd)?;
        }
        Ok(Self {
            fd,
            socket,
            queue: std::collections::VecDeque::new(),
            watching: false,
            broken: false,
            limit: frame_limit(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Writes `frame` now as far as possible and queues the rest. Returns whether something
    /// waits for room.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        self.push_with(frame, || Arc::new(frame.to_vec()))
    }

    /// Like [`Self::push`], keeping a reference to the frame instead of a copy if it must wait.
    pub fn push_shared(&mut self, frame: &Arc<Vec<u8>>) -> bool {
        self.push_with(frame, || Arc::clone(frame))
    }

    fn push_with(&mut self, frame: &[u8], keep: impl FnOnce() -> Arc<Vec<u8>>) -> bool {
        if self.broken {
            return false;
        }
        let body = frame.len().saturating_sub(4);
        let long = (body > self.limit).then(|| long_header(body));
        if long.is_some() && !self.socket {
            grow_pipe(&self.fd);
        }
        if !self.queue.is_empty() {
            self.queue.push_back(Queued {
                frame: keep(),
                long,
                done: 0,
            });
            return true;
        }
        let total = wire_len(frame.len(), long.as_ref());
        let mut done = 0;
        while done < total {
            match self.write(piece(frame, long.as_ref(), done)) {
                Ok(Some(n)) => done += n,
                Ok(None) => break,
                Err(_) => {
                    self.broken = true;
                    return false;
                }
            }
        }
        if done == total {
            return false;
        }
        self.queue.push_back(Queued {
            frame: keep(),
            long,
            done,
        });
        true
    }

    /// Writes what is queued as far as possible. Returns whether something still waits.
    pub fn flush(&mut self) -> bool {
        while let Some(front) = self.queue.front_mut() {
            let bytes = piece(&front.frame, front.long.as_ref(), front.done);
            match write_to(self.fd.as_raw_fd(), self.socket, bytes) {
                Ok(Some(n)) => {
                    front.done += n;
                    if front.done == wire_len(front.frame.len(), front.long.as_ref()) {
                        self.queue.pop_front();
                    }
                }
                Ok(None) => return true,
                Err(_) => {
                    self.broken = true;
                    self.queue.clear();
                    return false;
                }
            }
        }
        false
    }

    /// One non-blocking write: `None` when there is no room now.
    fn write(&self, bytes: &[u8]) -> io::Result<Option<usize>> {
        write_to(self.fd.as_raw_fd(), self.socket, bytes)
    }
}

/// A frame waiting in an [`Outbox`]: on the wire it is `long` (a long frame's header) and the
/// frame after its length, or the frame as it is; `done` bytes of that went out.
struct Queued {
    frame: Arc<Vec<u8>>,
    long: Option<[u8; LONG_HEADER]>,
    done: usize,
}

/// Bytes on the wire of a frame of `len` bytes.
fn wire_len(len: usize, long: Option<&[u8; LONG_HEADER]>) -> usize {
    match long {
        None => len,
        Some(_) => LONG_HEADER + len - 4,
    }
}

/// The next contiguous bytes to write of a frame of which `done` wire bytes went out.
fn piece<'a>(frame: &'a [u8], long: Option<&'a [u8; LONG_HEADER]>, done: usize) -> &'a [u8] {
    match long {
        None => &frame[done..],
        Some(header) if done < LONG_HEADER => &header[done..],
        Some(_) => &frame[4 + done - LONG_HEADER..],
    }
}

/// One non-blocking write (`send` with MSG_DONTWAIT for a socket): `None` when there is no
/// room now.
fn write_to(fd: RawFd, socket: bool, bytes: &[u8]) -> io::Result<Option<usize>> {
    // SAFETY: writing from a valid slice to a descriptor the caller owns.
    let n = unsafe {
        if socket {
            libc::send(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        } else {
            libc::write(fd, bytes.as_ptr().cast(), bytes.len())
        }
    };
    outcome(n)
}

/// A pipe's buffer for big frames: 16 times fewer writes, reads and wakeups than the default
/// 64 KiB. Asked for when a long frame comes, not for every pipe (big pipe buffers count
/// against a per-user limit); refused, the pipe keeps its size.
const BIG_PIPE_BYTES: libc::c_int = 1 << 20;

fn grow_pipe(fd: &OwnedFd) {
    // SAFETY: fcntl on a valid descriptor we own; F_SETPIPE_SZ only resizes the pipe's buffer
    // (at most what is already in it is kept), and failing leaves it as it was.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, BIG_PIPE_BYTES) };
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a valid descriptor we own.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        cvt(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_NONBLOCK,
        ))?;
    }
    Ok(())
}

/// What a [`Inbox::pump`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// Read everything there was; more may come.
    Open,
    /// Read its share for this wakeup; more is waiting (level-triggered: the next wait says so).
    More,
    /// The worker closed its side (it exited), or the stream failed ([`Inbox::timed_out`]
    /// tells whether its peer stopped answering).
    Closed,
    /// The worker sent something that is not a frame: nothing more can be read from it.
    Corrupt,
}

/// Incoming frames of one worker: a staging buffer for small frames, and a buffer of its own
/// for a frame larger than the staging space (read into directly, without a copy).
pub struct Inbox {
    fd: OwnedFd,
    /// A socket is read with MSG_DONTWAIT: O_NONBLOCK would also make the writes of its
    /// duplicate (the command side) non-blocking.
    socket: bool,
    stage: Vec<u8>,
    start: usize,
    end: usize,
    /// A large frame being read: its buffer (tag first) and its full length.
    big: Option<(Vec<u8>, usize)>,
    /// The stream ended because the peer stopped answering (a socket's keepalive or user
    /// timeout gave up: ETIMEDOUT), not because it closed its side.
    timed_out: bool,
}

const STAGE_BYTES: usize = 1 << 16;
/// Bytes read from one worker per wakeup before the others get their turn.
const PUMP_BUDGET: usize = 4 << 20;

impl Inbox {
    /// Takes the read side of a worker's result stream. Pipes are made non-blocking.
    pub fn new(fd: OwnedFd, socket: bool) -> io::Result<Self> {
        if !socket {
            set_nonblocking(&fd)?;
        }
        Ok(Self {
            fd,
            socket,
            stage: vec![0; STAGE_BYTES],
            start: 0,
            end: 0,
            big: None,
            timed_out: false,
        })
    }

    /// Whether the stream ended because its peer stopped answering (see [`Pumped::Closed`]).
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// A read failed: the stream is over; notes whether the peer had gone silent.
    fn failed(&mut self, e: &io::Error) -> Pumped {
        self.timed_out = e.raw_os_error() == Some(libc::ETIMEDOUT);
        Pumped::Closed
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether part of a frame has been read and the rest not yet.
    pub fn holds_partial(&self) -> bool {
        self.big.is_some() || self.start != self.end
    }

    /// Reads what is available without blocking, handing each complete frame (tag at index
    /// 0) to `frame`.
    pub fn pump(&mut self, mut frame: impl FnMut(Vec<u8>)) -> Pumped {
        let mut budget = PUMP_BUDGET;
        loop {
            if let Some((buf, len)) = &mut self.big {
                let want = *len - buf.len();
                let n = match read_spare(self.fd.as_raw_fd(), self.socket, buf, want) {
                    Ok(Some(0)) => return Pumped::Closed,
                    Err(e) => return self.failed(&e),
                    Ok(Some(n)) => n,
                    Ok(None) => return Pumped::Open,
                };
                budget = budget.saturating_sub(n);
                if buf.len() == *len {
                    let (buf, _) = self.big.take().expect("checked above");
                    if !body_ok(&buf) {
                        return Pumped::Corrupt;
                    }
                    frame(buf);
                }
            } else {
                // Hand out every complete frame already staged.
                loop {
                    let staged = &self.stage[self.start..self.end];
                    // The length and the tag, checked before anything is set aside for the
                    // body: text a plugin printed on the descriptor reads as a length of
                    // hundreds of MB, but its next byte is not a tag.
                    if staged.len() < 4 {
                        break;
                    }
                    let len = u32::from_le_bytes(staged[..4].try_into().expect("4 bytes")) as usize;
                    if len == 0 || len > MAX_FRAME_LEN {
                        return Pumped::Corrupt;
                    }
                    let Some(&first) = staged.get(4) else { break };
                    if !tag::from_worker(first) {
                        return Pumped::Corrupt;
                    }
                    if first == tag::LONG {
                        if staged.len() < LONG_HEADER {
                            if len != 9 {
                                return Pumped::Corrupt;
                            }
                            break;
                        }
                        // Its body gets a buffer of its final size, read into directly.
                        let Ok(n) = long_body_len(&staged[4..LONG_HEADER]) else {
                            return Pumped::Corrupt;
                        };
                        if len != 9 {
                            return Pumped::Corrupt;
                        }
                        let Ok(mut buf) = reserve_exact(n) else {
                            return Pumped::Corrupt;
                        };
                        if !self.socket {
                            grow_pipe(&self.fd);
                        }
                        let have = (staged.len() - LONG_HEADER).min(n);
                        buf.extend_from_slice(&staged[LONG_HEADER..LONG_HEADER + have]);
                        self.start += LONG_HEADER + have;
                        if have == n {
                            if !body_ok(&buf) {
                                return Pumped::Corrupt;
                            }
                            frame(buf);
                            continue;
                        }
                        self.start = 0;
                        self.end = 0;
                        self.big = Some((buf, n));
                        break;
                    }
                    if staged.len() >= 4 + len {
                        frame(staged[4..4 + len].to_vec());
                        self.start += 4 + len;
                        continue;
                    }
                    if len > STAGE_BYTES / 2 {
                        // Large: its own buffer, read into directly from now on.
                        let mut buf = Vec::with_capacity(len);
                        buf.extend_from_slice(&staged[4..]);
                        self.start = 0;
                        self.end = 0;
                        self.big = Some((buf, len));
                    }
                    break;
                }
                if self.big.is_some() {
                    continue;
                }
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                } else if self.end == self.stage.len() {
                    self.stage.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                }
                let n = match self.read_stage() {
                    Ok(Some(0)) => return Pumped::Closed,
                    Err(e) => return self.failed(&e),
                    Ok(Some(n)) => n,
                    Ok(None) => return Pumped::Open,
                };
                self.end += n;
                budget = budget.saturating_sub(n);
            }
            if budget == 0 {
                // Level-triggered: the rest is read on the next wait.
                return Pumped::More;
            }
        }
    }

    /// One non-blocking read into the staging space: `None` when nothing is available.
    fn read_stage(&mut self) -> io::Result<Option<usize>> {
        let space = &mut self.stage[self.end..];
        // SAFETY: `space` is valid, initialized, writable memory of its length.
        let n = unsafe {
            raw_read(
                self.fd.as_raw_fd(),
                self.socket,
                space.as_mut_ptr(),
                space.len(),
            )
        };
        outcome(n)
    }
}

/// Whether a frame read whole (tag first) is one a worker may send: a long frame's body is
/// checked once it is all there.
fn body_ok(frame: &[u8]) -> bool {
    frame
        .first()
        .is_some_and(|&t| t != tag::LONG && tag::from_worker(t))
}

/// One non-blocking read of at most `want` bytes appended to `buf`'s spare capacity.
fn read_spare(
    fd: RawFd,
    socket: bool,
    buf: &mut Vec<u8>,
    want: usize,
) -> io::Result<Option<usize>> {
    let spare = buf.spare_capacity_mut();
    let want = want.min(spare.len());
    // SAFETY: the kernel writes at most `want` bytes into spare capacity of that size.
    let n = unsafe { raw_read(fd, socket, spare.as_mut_ptr().cast(), want) };
    let read = outcome(n)?;
    if let Some(k) = read {
        // SAFETY: the read initialized exactly `k` more bytes after the current length.
        unsafe { buf.set_len(buf.len() + k) };
    }
    Ok(read)
}

/// A non-blocking read (`recv` with MSG_DONTWAIT for a socket).
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn raw_read(fd: RawFd, socket: bool, ptr: *mut u8, len: usize) -> isize {
    // SAFETY: forwarded from the caller.
    unsafe {
        if socket {
            libc::recv(fd, ptr.cast(), len, libc::MSG_DONTWAIT)
        } else {
            libc::read(fd, ptr.cast(), len)
        }
    }
}

fn outcome(n: isize) -> io::Result<Option<usize>> {
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    fn pipe() -> (OwnedFd, std::fs::File) {
        let (r, w) = crate::pool::spawn::pipe().unwrap();
        (r, std::fs::File::from(w))
    }

    #[test]
    fn small_and_large_frames_in_pieces_arrive_whole_and_in_order() {
        let (r, mut w) = pipe();
        let mut inbox = Inbox::new(r, false).unwrap();
        let mut big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        big[0] = 11; // RESULTS
        let mut got = Vec::new();
        let writer = std::thread::spawn(move || {
            let mut all = frame(b"\x0babc");
            all.extend(frame(&big));
            all.extend(frame(b"\x0bz"));
            // Dribble it in odd pieces.
            for piece in all.chunks(7_777) {
                w.write_all(piece).unwrap();
            }
            big
        });
        let mut poller = Poller::new().unwrap();
        poller.add(inbox.fd(), 1).unwrap();
        let mut closed = false;
        while !closed {
            poller.wait(Duration::from_secs(10), |_| {}).unwrap();
            closed = inbox.pump(|f| got.push(f)) == Pumped::Closed;
        }
        let big = writer.join().unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], b"\x0babc");
        assert_eq!(got[1], big);
        assert_eq!(got[2], b"\x0bz");
    }

    #[test]
    fn an_oversized_or_empty_header_or_unknown_tag_is_corrupt() {
        for bytes in [
            &[0xff, 0xff, 0xff, 0xff][..],
            &[0, 0, 0, 0],
            // Text printed on the descriptor: a plausible length, then no tag.
            b"abc\nd",
        ] {
            let (r, mut w) = pipe();
            let mut inbox = Inbox::new(r, false).unwrap();
            w.write_all(bytes).unwrap();
            assert_eq!(inbox.pump(|_| panic!("no frame")), Pumped::Corrupt);
        }
    }

    #[test]
    fn an_outbox_never_blocks_and_delivers_everything_in_order() {
        let (r, w) = crate::pool::spawn::pipe().unwrap();
        let mut outbox = Outbox::new(w, false).unwrap();
        // Far more than a pipe holds, with nobody reading yet: queued, not blocking.
        let frames: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 100_000]).collect();
        let mut waiting = false;
        for f in &frames {
            waiting |= outbox.push(f);
        }
        assert!(waiting);
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut all = Vec::new();
            std::fs::File::from(r).read_to_end(&mut all).unwrap();
            all
        });
        while outbox.flush() {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(outbox);
        assert_eq!(reader.join().unwrap(), frames.concat());
    }

    #[test]
    fn long_frames_cross_an_outbox_and_an_inbox_in_pieces() {
        let (r, w) = pipe();
        let (out_r, out_w) = crate::pool::spawn::pipe().unwrap();
        let mut outbox = Outbox::new(out_w, false).unwrap();
        outbox.limit = 1000;
        let mut f = crate::protocol::FrameBuf::new();
        let mut frames = Vec::new();
        for (i, n) in [10usize, 5000, 3, 300_000, 999, 1000]
            .into_iter()
            .enumerate()
        {
            f.begin(tag::RESULTS);
            f.put_raw(&vec![i as u8; n]);
            frames.push(Arc::new(f.finish().to_vec()));
        }
        // What the outbox writes is what the inbox reads: move the bytes across by hand.
        let mut source = std::fs::File::from(out_r);
        let mut sink = w;
        let copier = std::thread::spawn(move || std::io::copy(&mut source, &mut sink).unwrap());
        let mut inbox = Inbox::new(r, false).unwrap();
        let mut poller = Poller::new().unwrap();
        poller.add(inbox.fd(), 1).unwrap();
        let mut got = Vec::new();
        let mut waiting = false;
        for frame in &frames {
            waiting |= outbox.push_shared(frame);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < frames.len() {
            assert!(
                Instant::now() < deadline,
                "{} of {} frames",
                got.len(),
                frames.len()
            );
            if waiting {
                waiting = outbox.flush();
            }
            poller.wait(Duration::from_millis(10), |_| {}).unwrap();
            assert_ne!(inbox.pump(|f| got.push(f)), Pumped::Corrupt);
        }
        drop(outbox);
        copier.join().unwrap();
        for (g, f) in got.iter().zip(&frames) {
            assert_eq!(&g[..], &f[4..], "the frame after its length");
        }
    }

    #[test]
    fn a_long_frame_with_a_bad_body_or_header_is_corrupt() {
        for bytes in [
            // A long header announcing 0 bytes, or more than a message may be.
            [&9u32.to_le_bytes()[..], &[tag::LONG], &0u64.to_le_bytes()].concat(),
            [
                &9u32.to_le_bytes()[..],
                &[tag::LONG],
                &u64::MAX.to_le_bytes(),
            ]
            .concat(),
            // A header of the wrong size.
            [&10u32.to_le_bytes()[..], &[tag::LONG], &[0; 9]].concat(),
            // A body that is not a frame a worker sends.
            [&long_header(2)[..], &[tag::CHUNK, 0]].concat(),
            [&long_header(2)[..], &[tag::LONG, 0]].concat(),
        ] {
            let (r, mut w) = pipe();
            let mut inbox = Inbox::new(r, false).unwrap();
            w.write_all(&bytes).unwrap();
            assert_eq!(
                inbox.pump(|_| panic!("no frame")),
                Pumped::Corrupt,
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn the_waker_wakes_the_poller() {
        let mut poller = Poller::new().unwrap();
        let waker = poller.waker();
        std::thread::spawn(move || waker.wake());
        let mut tokens = Vec::new();
        // The wake token is consumed inside: wait returns with one event and no worker token.
        let n = poller
            .wait(Duration::from_secs(10), |t| tokens.push(t))
            .unwrap();
        assert_eq!((n, tokens.len()), (1, 0));
    }
}

//! Frames between the runner and its workers.
//!
//! A frame is `[u32 LE body length][u8 tag][payload]`. Control messages (rare) carry JSON
//! payloads; the hot messages (chunks of task inputs and their results) use a hand-rolled binary
//! layout so that encoding costs a few copies and no per-item allocation. The same frames travel
//! over any byte stream: pipes for local workers, TCP for remote ones.
//!
//! A frame whose body is larger than [`frame_limit`] (a chunk or a result holding a big item)
//! goes as a *long frame*: the short frame `[u32 9][tag::LONG][u64 body length]`, then the body
//! itself (`[u8 tag][payload]`). The reader reserves the body's final size once and reads
//! straight into it, and the writer writes it from where it already is: an item costs its own
//! size on each side, not a copy per hop, and may be larger than 4 GiB. Byte strings inside a
//! payload have a u32 length, or `u32::MAX` and a u64 length for 4 GiB and more.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// Largest (short) frame body accepted from a peer; a larger announced length is a protocol
/// error (a peer announcing 4 GiB this way is dropped, not trusted).
pub const MAX_FRAME_LEN: usize = 1 << 30;

/// Largest body a long frame may announce. A bound on what a garbled header can make a reader
/// reserve; the reservation itself is tried (`try_reserve_exact`), never assumed.
pub const MAX_MESSAGE_LEN: u64 = 1 << 36;

/// Bytes of a long frame's header: `[u32 9][tag::LONG][u64 body length]`.
pub const LONG_HEADER: usize = 13;

/// A reader keeps a buffer this large for the next frame; a larger one (a big item's) is
/// released rather than kept resident.
const KEEP_BUFFER: usize = 32 << 20;

/// Largest task input or result: what a long frame carries less its headers. A larger one gets
/// a `too_large` record instead of breaking the stream.
pub fn max_item_bytes() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    knob(
        &LIMIT,
        "LOKY_RUN_TEST_ITEM_BYTES",
        (MAX_MESSAGE_LEN - 64) as usize,
    )
}

/// Frame bodies above this size are sent as long frames.
pub fn frame_limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    knob(&LIMIT, "LOKY_RUN_TEST_FRAME_BYTES", MAX_FRAME_LEN)
}

/// A task's result longer than this is streamed from the plugin to the runner (encoded twice,
/// never held whole in the worker), when the plugin can (loky-run-plugin 0.2.1 on).
pub fn stream_above() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    knob(&LIMIT, "LOKY_RUN_TEST_STREAM_BYTES", 16 << 20)
}

/// A limit that a test may lower through the environment (inherited by workers), so that long
/// frames and `too_large` are exercised with megabytes instead of gigabytes. Read once.
fn knob(cell: &OnceLock<usize>, name: &str, default: usize) -> usize {
    *cell.get_or_init(|| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n >= 64)
            .map_or(default, |n| n.min(default))
    })
}

/// Runner → worker.
pub mod tag {
    pub const INIT: u8 = 1;
    pub const CHUNK: u8 = 2;
    pub const SHUTDOWN: u8 = 3;
    pub const STAGE: u8 = 4;
    /// Finish the item in progress, report what is done, and exit (an interrupt).
    pub const STOP: u8 = 5;
    /// Worker → runner.
    pub const READY: u8 = 10;
    /// First frame of a worker connecting over TCP: its token.
    pub const HELLO: u8 = 9;
    pub const RESULTS: u8 = 11;
    /// Either way: the header of a long frame (see the module docs); its body follows.
    pub const LONG: u8 = 12;

    /// Whether a worker may send a frame with this tag (anything else means its stream is
    /// not ours: a plugin wrote on the descriptor, or a peer is broken).
    pub fn from_worker(tag: u8) -> bool {
        matches!(tag, READY | RESULTS | LONG)
    }
}

/// Per-item status in a results frame; the values are those of `loky_run_plugin::CallStatus`.
pub mod status {
    pub const OK: u8 = 0;
    pub const TASK_ERROR: u8 = 1;
    pub const PANIC: u8 = 2;
    pub const BAD_INPUT: u8 = 3;
    pub const UNKNOWN_TASK: u8 = 4;
    /// Set by the worker, not the plugin: the result does not fit in a frame (the payload is
    /// the message).
    pub const TOO_LARGE: u8 = 16;
}

/// First message to a new worker: what to load and which initializer to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InitMsg {
    pub worker_id: u32,
    pub plugins: Vec<PathBuf>,
    pub initializer: Option<InitCall>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InitCall {
    /// `plugin::name`, for messages.
    pub name: String,
    pub plugin: u16,
    pub task: u32,
    /// JSON text of the initializer's args.
    pub args: String,
}

/// The worker's answer to [`InitMsg`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ReadyMsg {
    Ready {
        pid: u32,
        /// Host name, and the Slurm job and step the worker runs in, if any.
        #[serde(default)]
        host: String,
        #[serde(default)]
        slurm_job: Option<String>,
        #[serde(default)]
        slurm_step: Option<String>,
    },
    /// A plugin failed to load (`kind = "plugin"`) or the initializer failed
    /// (`kind = "initializer"`).
    Failed { kind: String, message: String },
}

/// Sent when a stage starts on a worker (and to every worker started for it), so it can
/// expose `LOKY_STAGE` to tasks, and whether to time each task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageMsg {
    pub name: String,
    /// Report when each task started and how long it ran (for the joblog).
    #[serde(default)]
    pub timing: bool,
}

/// Builds one frame in place: reserve the header, append payload, patch the length.
#[derive(Default)]
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a new frame, discarding anything not yet sent.
    pub fn begin(&mut self, tag: u8) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0, 0, 0, 0, tag]);
    }

    pub fn put_u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn put_u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn put_u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn put_u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Bytes as they are (no length prefix).
    pub fn put_raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// The length of a byte string: u32, or `u32::MAX` and a u64 from 4 GiB on.
    pub fn put_len(&mut self, n: usize) {
        match u32::try_from(n) {
            Ok(v) if v != u32::MAX => self.put_u32(v),
            _ => {
                self.put_u32(u32::MAX);
                self.put_u64(n as u64);
            }
        }
    }
    /// A length-prefixed byte string.
    pub fn put_bytes(&mut self, v: &[u8]) {
        self.put_len(v.len());
        self.buf.extend_from_slice(v);
    }
    /// A length-prefixed byte string that `fill` appends to the buffer itself (no intermediate
    /// copy). When `fill` returns `false` (or an error) nothing is added.
    pub fn put_bytes_with(
        &mut self,
        fill: impl FnOnce(&mut Vec<u8>) -> io::Result<bool>,
    ) -> io::Result<bool> {
        let at = self.buf.len();
        self.put_u32(0);
        let outcome = fill(&mut self.buf);
        if !matches!(outcome, Ok(true)) {
            self.buf.truncate(at);
            return outcome;
        }
        let len = self.buf.len() - at - 4;
        match u32::try_from(len) {
            Ok(v) if v != u32::MAX => self.patch_u32(at, v),
            _ => {
                // 4 GiB or more: the u64 length goes after the marker (the bytes move up by
                // 8, once per such item).
                self.buf.splice(at + 4..at + 4, (len as u64).to_le_bytes());
                self.patch_u32(at, u32::MAX);
            }
        }
        Ok(true)
    }

    /// Overwrites a u32 written earlier at `offset` (from [`Self::len`]).
    pub fn patch_u32(&mut self, offset: usize, v: u32) {
        self.buf[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Overwrites a u64 written earlier at `offset`.
    pub fn patch_u64(&mut self, offset: usize, v: u64) {
        self.buf[offset..offset + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Drops everything from `len` on (a length from [`Self::len`]).
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len.max(5));
    }

    /// The bytes from `offset` on.
    pub fn bytes_from(&self, offset: usize) -> &[u8] {
        &self.buf[offset.min(self.buf.len())..]
    }

    /// Bytes in the frame so far, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.len() <= 5
    }

    /// Patches the length and returns the whole frame, ready to write with [`send`] (or an
    /// outbox), which turns a body over [`frame_limit`] into a long frame.
    pub fn finish(&mut self) -> &[u8] {
        let body = u32::try_from(self.buf.len() - 4).unwrap_or(u32::MAX);
        self.buf[..4].copy_from_slice(&body.to_le_bytes());
        &self.buf
    }

    /// Finishes the frame and hands its buffer over (no copy), keeping `replacement` (cleared)
    /// as the buffer for the next frame.
    pub fn finish_take(&mut self, mut replacement: Vec<u8>) -> Vec<u8> {
        self.finish();
        replacement.clear();
        std::mem::replace(&mut self.buf, replacement)
    }

    /// Appends a JSON control message as a whole frame.
    pub fn json<T: Serialize>(&mut self, tag: u8, msg: &T) -> &[u8] {
        self.begin(tag);
        serde_json::to_writer(&mut self.buf, msg).expect("control messages serialize");
        self.finish()
    }
}

/// The header of a long frame for a body of `body` bytes.
pub fn long_header(body: usize) -> [u8; LONG_HEADER] {
    let mut h = [0u8; LONG_HEADER];
    h[..4].copy_from_slice(&9u32.to_le_bytes());
    h[4] = tag::LONG;
    h[5..].copy_from_slice(&(body as u64).to_le_bytes());
    h
}

/// How a frame built by [`FrameBuf`] (`frame_len` bytes, its 4-byte length first) goes on the
/// wire: `None` as it is; `Some(header)`: that long header, then the frame after its length.
pub fn wire_header(frame_len: usize) -> Option<[u8; LONG_HEADER]> {
    let body = frame_len.saturating_sub(4);
    (body > frame_limit()).then(|| long_header(body))
}

/// Writes one complete frame built by [`FrameBuf`].
pub fn send(w: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    match wire_header(frame.len()) {
        None => w.write_all(frame)?,
        Some(header) => {
            w.write_all(&header)?;
            w.write_all(&frame[4..])?;
        }
    }
    w.flush()
}

/// Writes one frame whose body is `head`'s (a frame from [`FrameBuf`], its length not patched)
/// followed by `tail`, which is written from where it is (a big result is not copied into the
/// frame first).
pub fn send_parts(w: &mut impl Write, head: &[u8], tail: &[u8]) -> io::Result<()> {
    send_head(w, head, tail.len())?;
    w.write_all(tail)?;
    w.flush()
}

/// Writes the start of a frame like [`send_parts`]'s: its length, then `head`'s bytes; the
/// caller writes the `tail_len` bytes of its tail next.
pub fn send_head(w: &mut impl Write, head: &[u8], tail_len: usize) -> io::Result<()> {
    let body = head.len() - 4 + tail_len;
    let mut first = Vec::with_capacity(LONG_HEADER + head.len());
    if body > frame_limit() {
        first.extend_from_slice(&long_header(body));
    } else {
        first.extend_from_slice(&(body as u32).to_le_bytes());
    }
    first.extend_from_slice(&head[4..]);
    w.write_all(&first)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The body length a long frame's header announces, if it is one and within bounds.
pub fn long_body_len(header_body: &[u8]) -> io::Result<usize> {
    let n = u64::from_le_bytes(
        header_body
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| invalid("long frame header of the wrong size".into()))?,
    );
    if n == 0 || n > MAX_MESSAGE_LEN || header_body.len() != 9 {
        return Err(invalid(format!("long frame length {n} out of bounds")));
    }
    usize::try_from(n).map_err(|_| invalid(format!("long frame length {n} out of bounds")))
}

/// A buffer of exactly `n` bytes' capacity, or an error if it cannot be had (a length no
/// allocation satisfies must not abort the process).
pub fn reserve_exact(n: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(n).map_err(|e| {
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("cannot reserve {n} bytes for a frame: {e}"),
        )
    })?;
    Ok(buf)
}

/// Reads frames from a byte stream.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
        }
    }

    /// The next frame as `(tag, payload)`, or `None` at a clean end of stream. A long frame
    /// comes as the frame it carries.
    pub fn next_frame(&mut self) -> io::Result<Option<(u8, &[u8])>> {
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        let mut header = [0u8; 4];
        match read_full(&mut self.inner, &mut header)? {
            0 => return Ok(None),
            4 => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated frame header",
                ));
            }
        }
        let len = u32::from_le_bytes(header) as usize;
        if len == 0 || len > MAX_FRAME_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame length {len} out of bounds"),
            ));
        }
        // Read into spare capacity: no zero-filling of a buffer about to be overwritten (a
        // fresh one after every `take_frame`).
        self.buf.clear();
        self.buf.reserve_exact(len);
        let got = (&mut self.inner)
            .take(len as u64)
            .read_to_end(&mut self.buf)?;
        if got < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated frame",
            ));
        }
        if self.buf[0] == tag::LONG {
            let len = long_body_len(&self.buf)?;
            self.buf = reserve_exact(len)?;
            let got = (&mut self.inner)
                .take(len as u64)
                .read_to_end(&mut self.buf)?;
            if got < len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated long frame",
                ));
            }
            if self.buf[0] == tag::LONG {
                return Err(invalid("a long frame inside a long frame".into()));
            }
        }
        Ok(Some((self.buf[0], &self.buf[1..])))
    }

    /// The last frame read, tag included at index 0.
    pub fn frame(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the buffer of the last frame (tag included at index 0), to hand it to another thread.
    pub fn take_frame(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// Like `read_exact`, but tells a clean EOF before the first byte (returns 0) from a short read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads the binary payloads of hot frames.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.data.len() < n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame payload too short",
            ));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> io::Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    pub fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn bytes(&mut self) -> io::Result<&'a [u8]> {
        let n = match self.u32()? {
            u32::MAX => usize::try_from(self.u64()?)
                .map_err(|_| invalid("byte string longer than memory".into()))?,
            n => n as usize,
        };
        self.take(n)
    }
    pub fn rest(&self) -> &'a [u8] {
        self.data
    }
}

/// Header of a chunk frame: `chunk_id u64, plugin u16, task u32, count u32`, then `count`
/// length-prefixed inputs.
pub struct ChunkHeader {
    pub chunk_id: u64,
    pub plugin: u16,
    pub task: u32,
    pub count: u32,
}

impl ChunkHeader {
    pub fn write(&self, f: &mut FrameBuf) {
        f.begin(tag::CHUNK);
        f.put_u64(self.chunk_id);
        f.put_u16(self.plugin);
        f.put_u32(self.task);
        f.put_u32(self.count);
    }

    pub fn read(c: &mut Cursor<'_>) -> io::Result<Self> {
        Ok(Self {
            chunk_id: c.u64()?,
            plugin: c.u16()?,
            task: c.u32()?,
            count: c.u32()?,
        })
    }
}

/// Header of a results frame: `chunk_id u64, first u32, count u32, busy_ns u64, rss u64,
/// flags u32`, then `count` items for the chunk's positions `first..first+count`: `status u8`,
/// with [`ResultsHeader::TIMED`] `start_us u64` (wall clock, µs since the Unix epoch) and
/// `ran_ns u64`, then the len-prefixed bytes.
pub struct ResultsHeader {
    pub chunk_id: u64,
    pub first: u32,
    pub count: u32,
    /// Time the worker spent running these items.
    pub busy_ns: u64,
    /// The worker's own RSS in bytes, sampled at most every few tens of ms; 0 when the runner
    /// reads it itself (local workers, unless timed). Remote workers' memory is not in the
    /// runner's /proc.
    pub rss: u64,
    pub flags: u32,
}

impl ResultsHeader {
    pub const COUNT_OFFSET: usize = 5 + 8 + 4;
    pub const BUSY_OFFSET: usize = 5 + 8 + 4 + 4;
    pub const RSS_OFFSET: usize = 5 + 8 + 4 + 4 + 8;
    /// Bytes of the header, frame length and tag included.
    pub const LEN: usize = 5 + 8 + 4 + 4 + 8 + 8 + 4;
    /// Each item carries when its task started and how long it ran.
    pub const TIMED: u32 = 1;

    pub fn write(&self, f: &mut FrameBuf) {
        f.begin(tag::RESULTS);
        f.put_u64(self.chunk_id);
        f.put_u32(self.first);
        f.put_u32(self.count);
        f.put_u64(self.busy_ns);
        f.put_u64(self.rss);
        f.put_u32(self.flags);
    }

    pub fn read(c: &mut Cursor<'_>) -> io::Result<Self> {
        Ok(Self {
            chunk_id: c.u64()?,
            first: c.u32()?,
            count: c.u32()?,
            busy_ns: c.u64()?,
            rss: c.u64()?,
            flags: c.u32()?,
        })
    }

    pub fn timed(&self) -> bool {
        self.flags & Self::TIMED != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut f = FrameBuf::new();
        let mut wire = Vec::new();
        ChunkHeader {
            chunk_id: 7,
            plugin: 1,
            task: 3,
            count: 2,
        }
        .write(&mut f);
        f.put_bytes(b"12");
        f.put_bytes(b"\"x\"");
        send(&mut wire, f.finish()).unwrap();
        let msg = InitMsg {
            worker_id: 1,
            plugins: vec!["/a.so".into()],
            initializer: None,
        };
        send(&mut wire, f.json(tag::INIT, &msg)).unwrap();

        let mut r = FrameReader::new(&wire[..]);
        let (t, payload) = r.next_frame().unwrap().unwrap();
        assert_eq!(t, tag::CHUNK);
        let mut c = Cursor::new(payload);
        let h = ChunkHeader::read(&mut c).unwrap();
        assert_eq!((h.chunk_id, h.plugin, h.task, h.count), (7, 1, 3, 2));
        assert_eq!(c.bytes().unwrap(), b"12");
        assert_eq!(c.bytes().unwrap(), b"\"x\"");
        let (t, payload) = r.next_frame().unwrap().unwrap();
        assert_eq!(t, tag::INIT);
        assert_eq!(serde_json::from_slice::<InitMsg>(payload).unwrap(), msg);
        assert!(r.next_frame().unwrap().is_none());
    }

    #[test]
    fn long_frames_arrive_as_the_frame_they_carry_and_big_buffers_are_not_kept() {
        let mut f = FrameBuf::new();
        f.begin(tag::CHUNK);
        f.put_raw(&vec![7u8; (KEEP_BUFFER + 10) - 1]);
        let frame = f.finish().to_vec();
        let mut wire = long_header(frame.len() - 4).to_vec();
        wire.extend_from_slice(&frame[4..]);
        send(&mut wire, f.json(tag::STAGE, &"x")).unwrap();
        let mut r = FrameReader::new(&wire[..]);
        let (t, payload) = r.next_frame().unwrap().unwrap();
        assert_eq!((t, payload.len()), (tag::CHUNK, KEEP_BUFFER + 9));
        assert!(payload.iter().all(|&b| b == 7));
        let (t, _) = r.next_frame().unwrap().unwrap();
        assert_eq!(t, tag::STAGE);
        assert!(r.buf.capacity() <= KEEP_BUFFER, "the big buffer went");
        // Cut short, nested, or announcing too much: errors, never a huge reservation.
        assert!(
            FrameReader::new(&wire[..wire.len() / 2])
                .next_frame()
                .is_err()
        );
        let nested = [&long_header(2)[..], &[tag::LONG, 0]].concat();
        assert!(FrameReader::new(&nested[..]).next_frame().is_err());
        let mut absurd = long_header(1).to_vec();
        absurd[5..].copy_from_slice(&(MAX_MESSAGE_LEN + 1).to_le_bytes());
        assert!(FrameReader::new(&absurd[..]).next_frame().is_err());
    }

    #[test]
    fn byte_strings_of_4_gib_and_more_have_a_u64_length() {
        let mut f = FrameBuf::new();
        f.begin(tag::CHUNK);
        f.put_len(u32::MAX as usize - 1);
        f.put_len(u32::MAX as usize);
        f.put_len(5 << 30);
        let frame = f.finish();
        let mut c = Cursor::new(&frame[5..]);
        assert_eq!(c.u32().unwrap(), u32::MAX - 1);
        assert_eq!(
            (c.u32().unwrap(), c.u64().unwrap()),
            (u32::MAX, u64::from(u32::MAX))
        );
        assert_eq!((c.u32().unwrap(), c.u64().unwrap()), (u32::MAX, 5 << 30));
        // Read back: the marker, then the u64, then that many bytes.
        let mut wire = u32::MAX.to_le_bytes().to_vec();
        wire.extend_from_slice(&3u64.to_le_bytes());
        wire.extend_from_slice(b"abcd");
        let mut c = Cursor::new(&wire);
        assert_eq!(c.bytes().unwrap(), b"abc");
        assert_eq!(c.rest(), b"d");
    }

    #[test]
    fn send_parts_is_one_frame_of_head_and_tail() {
        let mut f = FrameBuf::new();
        f.begin(tag::RESULTS);
        f.put_u8(1);
        let mut wire = Vec::new();
        send_parts(&mut wire, f.bytes_from(0), b"tail").unwrap();
        let mut r = FrameReader::new(&wire[..]);
        assert_eq!(
            r.next_frame().unwrap().unwrap(),
            (tag::RESULTS, &b"\x01tail"[..])
        );
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let huge = (u32::MAX).to_le_bytes();
        assert!(FrameReader::new(&huge[..]).next_frame().is_err());
        let short = [5u8, 0, 0];
        assert!(FrameReader::new(&short[..]).next_frame().is_err());
        let cut = [5u8, 0, 0, 0, 1, 2];
        assert!(FrameReader::new(&cut[..]).next_frame().is_err());
    }
}

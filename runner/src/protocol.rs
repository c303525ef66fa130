//! Frames between the runner and its workers.
//!
//! A frame is `[u32 LE body length][u8 tag][payload]`. Control messages (rare) carry JSON
//! payloads; the hot messages (chunks of task inputs and their results) use a hand-rolled binary
//! layout so that encoding costs a few copies and no per-item allocation. The same frames travel
//! over any byte stream: pipes for local workers, TCP for remote ones.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Largest frame body accepted from a peer; a larger announced length is a protocol error
/// (a peer announcing 4 GiB is dropped, not trusted).
pub const MAX_FRAME_LEN: usize = 1 << 30;

/// Largest task input or result that fits in a frame of its own (the frame's headers take the
/// rest). A larger one gets a `too_large` record instead of breaking the stream.
pub const MAX_ITEM_BYTES: usize = MAX_FRAME_LEN - 64;

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

    /// Whether a worker may send a frame with this tag (anything else means its stream is
    /// not ours: a plugin wrote on the descriptor, or a peer is broken).
    pub fn from_worker(tag: u8) -> bool {
        matches!(tag, READY | RESULTS)
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
    /// A length-prefixed byte string.
    pub fn put_bytes(&mut self, v: &[u8]) {
        self.put_u32(v.len() as u32);
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
        let len = (self.buf.len() - at - 4) as u32;
        self.patch_u32(at, len);
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

    /// Patches the length and returns the whole frame, ready to write.
    pub fn finish(&mut self) -> &[u8] {
        let body = (self.buf.len() - 4) as u32;
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

/// Writes one complete frame built by [`FrameBuf`].
pub fn send(w: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    w.write_all(frame)?;
    w.flush()
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

    /// The next frame as `(tag, payload)`, or `None` at a clean end of stream.
    pub fn next_frame(&mut self) -> io::Result<Option<(u8, &[u8])>> {
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
        let n = self.u32()? as usize;
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
    fn oversized_and_truncated_frames_are_errors() {
        let huge = (u32::MAX).to_le_bytes();
        assert!(FrameReader::new(&huge[..]).next_frame().is_err());
        let short = [5u8, 0, 0];
        assert!(FrameReader::new(&short[..]).next_frame().is_err());
        let cut = [5u8, 0, 0, 0, 1, 2];
        assert!(FrameReader::new(&cut[..]).next_frame().is_err());
    }
}

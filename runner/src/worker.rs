//! The worker process: `loky-run __worker`.
//!
//! Started by the pool with the protocol on inherited descriptors (3: commands in, 4: results
//! out, 5: the progress slot), never on stdout: whatever a plugin prints goes to stdout/stderr,
//! which the runner forwards. The worker loads every plugin of the pipeline, runs its
//! initializer once, then runs chunks of task inputs until told to stop or until the runner
//! goes away (end of the command stream), whichever comes first.

use std::ffi::c_void;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use abi_stable::std_types::{RSlice, RVec};
use loky_run_plugin::{CallStatus, OutputSink};

use crate::plugin::host::{self, LoadedPlugin};
use crate::progress::ProgressSlot;
use crate::protocol::{
    ChunkHeader, Cursor, FrameBuf, FrameReader, InitMsg, ReadyMsg, ResultsHeader, StageMsg,
    max_item_bytes, send, send_head, send_parts, status, stream_above, tag,
};
use crate::sys;
use crate::transport;

/// The hidden subcommand that runs a worker.
pub const WORKER_ARG: &str = "__worker";
pub const COMMAND_FD: i32 = 3;
pub const RESULT_FD: i32 = 4;
pub const PROGRESS_FD: i32 = 5;

/// Exit codes a worker uses for its own failures (the runner reads the reason from the
/// `Failed` message; these only make `ps`/logs clearer).
const EXIT_PROTOCOL: i32 = 70;
const EXIT_INIT_FAILED: i32 = 71;

/// Results are sent when a chunk ends, or earlier when this much time or data has piled up, so
/// that slow chunks still report steadily.
const FLUSH_AFTER_NS: u64 = 2_000_000;
const FLUSH_BYTES: usize = 1 << 20;
/// A result this large goes in a frame of its own, written from the plugin's buffer (not
/// copied into the frame).
const OWN_FRAME_BYTES: usize = 1 << 20;
/// The plugin's output buffer is released after a result larger than this (a big result's
/// memory does not stay resident until the next one).
const KEEP_OUT_BYTES: usize = 32 << 20;

/// Set by the command thread on `STOP`: the task loop stops before its next item.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

pub fn worker_main() -> i32 {
    // A worker launched elsewhere (a Slurm step) connects back over TCP; a local one finds the
    // protocol on inherited descriptors.
    if let (Ok(addr), Ok(token)) = (
        std::env::var(transport::CONNECT_ENV),
        std::env::var(transport::TOKEN_ENV),
    ) {
        // SAFETY: no other thread exists yet; plugins must not see the token.
        unsafe {
            std::env::remove_var(transport::CONNECT_ENV);
            std::env::remove_var(transport::TOKEN_ENV);
        }
        // What it prints reaches the user through srun's output when the step fails to start.
        let stream = match transport::connect(&addr, &token) {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("loky-run worker: cannot connect to the runner at {addr}: {e}");
                return EXIT_PROTOCOL;
            }
        };
        let Ok(commands) = stream.try_clone() else {
            return EXIT_PROTOCOL;
        };
        return exit_code(run(commands, stream, None));
    }
    // SAFETY: F_GETFD on an fd number only queries it.
    if unsafe { libc::fcntl(COMMAND_FD, libc::F_GETFD) } < 0 {
        eprintln!(
            "loky-run {WORKER_ARG}: started without the runner's descriptors or {} in the environment; \
             workers are started by `loky-run run`, not by hand",
            transport::CONNECT_ENV
        );
        return 2;
    }
    if let Some(parent) = std::env::var_os(crate::pool::spawn::PARENT_ENV) {
        // SAFETY: no other thread exists yet; plugins need not see it.
        unsafe { std::env::remove_var(crate::pool::spawn::PARENT_ENV) };
        let parent = parent.to_str().and_then(|p| p.parse::<libc::pid_t>().ok());
        // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid only set and read this process's state.
        // The runner may have died before the signal was set: then nobody would ever kill us.
        let orphan = unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
                || Some(libc::getppid()) != parent
        };
        if orphan {
            return 1;
        }
    }
    for fd in [COMMAND_FD, RESULT_FD, PROGRESS_FD] {
        // SAFETY: fcntl on an fd number; harmless if the fd is not open. Keeps the protocol
        // descriptors out of processes a plugin starts.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: the pool passes these descriptors open; this process takes ownership of them once.
    let (commands, results) =
        unsafe { (File::from_raw_fd(COMMAND_FD), File::from_raw_fd(RESULT_FD)) };
    let progress = ProgressSlot::map(PROGRESS_FD).ok();
    exit_code(run(commands, results, progress))
}

fn exit_code(result: Result<(), WorkerExit>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(WorkerExit(code)) => code,
    }
}

struct WorkerExit(i32);

impl From<io::Error> for WorkerExit {
    fn from(_: io::Error) -> Self {
        // The runner is gone or the stream is corrupt: nothing useful can be reported.
        WorkerExit(EXIT_PROTOCOL)
    }
}

fn run<R: Read + Send + 'static, W: Write>(
    commands: R,
    mut results: W,
    progress: Option<ProgressSlot>,
) -> Result<(), WorkerExit> {
    let mut commands = Commands::new(commands, progress.is_some())?;
    let mut frame = FrameBuf::new();
    let first = commands
        .next()
        .map_err(|_| WorkerExit(EXIT_PROTOCOL))?
        .ok_or(WorkerExit(EXIT_PROTOCOL))?;
    if first[0] != tag::INIT {
        return Err(WorkerExit(EXIT_PROTOCOL));
    }
    let init: InitMsg =
        serde_json::from_slice(&first[1..]).map_err(|_| WorkerExit(EXIT_PROTOCOL))?;
    let plugins = match init
        .plugins
        .iter()
        .map(|p| host::load(p, false))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(plugins) => plugins,
        Err(e) => {
            let msg = ReadyMsg::Failed {
                kind: "plugin".into(),
                message: e.to_string(),
            };
            send(&mut results, frame.json(tag::READY, &msg))?;
            return Err(WorkerExit(EXIT_INIT_FAILED));
        }
    };
    let mut out = RVec::with_capacity(256);
    if let Some(call) = &init.initializer {
        let status = match plugins.get(call.plugin as usize) {
            Some(p) => p.call(call.task, call.args.as_bytes(), &mut out),
            None => loky_run_plugin::CallStatus::UNKNOWN_TASK,
        };
        if status != loky_run_plugin::CallStatus::OK {
            let message = format!(
                "initializer {} failed: {}",
                call.name,
                String::from_utf8_lossy(&out)
            );
            send(
                &mut results,
                frame.json(
                    tag::READY,
                    &ReadyMsg::Failed {
                        kind: "initializer".into(),
                        message,
                    },
                ),
            )?;
            return Err(WorkerExit(EXIT_INIT_FAILED));
        }
    }
    send(
        &mut results,
        frame.json(
            tag::READY,
            &ReadyMsg::Ready {
                pid: std::process::id(),
                host: transport::hostname(),
                slurm_job: std::env::var("SLURM_JOB_ID").ok(),
                slurm_step: std::env::var("SLURM_STEP_ID").ok(),
            },
        ),
    )?;

    let mut runner = ChunkRunner {
        plugins,
        out,
        results: ResultSender {
            frame,
            timed: false,
            progress,
            rss: None,
            written: 0,
        },
    };
    while let Ok(Some(msg)) = commands.next() {
        if runner.stop_requested() {
            break;
        }
        match msg[0] {
            tag::CHUNK => runner.run_chunk(&msg[1..], &mut results)?,
            tag::STAGE => {
                if let Ok(stage) = serde_json::from_slice::<StageMsg>(&msg[1..]) {
                    runner.results.timed = stage.timing;
                    // SAFETY: tasks run on this thread only, between which this is called; the
                    // command thread never reads the environment.
                    unsafe { std::env::set_var("LOKY_STAGE", stage.name) };
                }
            }
            tag::SHUTDOWN | tag::STOP => break,
            _ => return Err(WorkerExit(EXIT_PROTOCOL)),
        }
    }
    let _ = io::stdout().flush();
    Ok(())
}

/// Where a worker's commands come from.
enum Commands {
    /// Local workers read on the main thread, between chunks: no thread hop per round trip.
    /// While a task runs, a STOP arrives through the progress slot and the runner's death
    /// through the parent-death signal.
    Direct(FrameReader<BufReader<Box<dyn Read + Send>>>),
    /// Remote workers have a thread reading ahead, so that a STOP or the end of the connection
    /// is seen while a task runs (there is no parent-death signal across machines).
    Threaded {
        rx: mpsc::Receiver<Vec<u8>>,
        current: Vec<u8>,
    },
}

impl Commands {
    fn new<R: Read + Send + 'static>(commands: R, direct: bool) -> Result<Self, WorkerExit> {
        let commands: Box<dyn Read + Send> = Box::new(commands);
        if direct {
            return Ok(Self::Direct(FrameReader::new(BufReader::with_capacity(
                1 << 16,
                commands,
            ))));
        }
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name("commands".into())
            .spawn(move || {
                let mut reader = FrameReader::new(BufReader::with_capacity(1 << 16, commands));
                while let Ok(Some((tag, _))) = reader.next_frame() {
                    if tag == tag::STOP {
                        STOP_REQUESTED.store(true, Ordering::Release);
                    }
                    if tx.send(reader.take_frame()).is_err() {
                        break;
                    }
                }
                // SAFETY: _exit has no preconditions; it skips destructors and atexit handlers
                // on purpose, since the main thread may be inside a task.
                unsafe { libc::_exit(0) }
            })
            .map_err(|_| WorkerExit(EXIT_PROTOCOL))?;
        Ok(Self::Threaded {
            rx,
            current: Vec::new(),
        })
    }

    /// The next command frame (tag at index 0); `None` at the end of the stream.
    fn next(&mut self) -> io::Result<Option<&[u8]>> {
        match self {
            Self::Direct(reader) => {
                if reader.next_frame()?.is_none() {
                    return Ok(None);
                }
                Ok(Some(reader.frame()))
            }
            Self::Threaded { rx, current } => {
                // The last frame is done with: a big one is not kept while the next arrives.
                drop(std::mem::take(current));
                match rx.recv() {
                    Ok(frame) => {
                        *current = frame;
                        Ok(Some(current.as_slice()))
                    }
                    Err(_) => Ok(None),
                }
            }
        }
    }
}

struct ChunkRunner {
    plugins: Vec<LoadedPlugin>,
    out: RVec<u8>,
    results: ResultSender,
}

/// Writes results frames and says how many results went out.
struct ResultSender {
    frame: FrameBuf,
    /// Each result carries when its task started and how long it ran (a joblog is kept).
    timed: bool,
    progress: Option<ProgressSlot>,
    /// Remote workers report their own RSS: the last sample and when it was taken.
    rss: Option<(u64, Instant)>,
    /// Results written to the result stream so far (published in the progress slot).
    written: u64,
}

/// How often a remote worker reads its RSS for the results it sends.
const RSS_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

impl ChunkRunner {
    /// The runner asked to stop after the current item (STOP frame read by the command thread,
    /// or the flag in the progress slot).
    #[inline]
    fn stop_requested(&self) -> bool {
        self.results.stop_requested()
    }

    fn run_chunk<W: Write>(&mut self, payload: &[u8], results: &mut W) -> io::Result<()> {
        let mut cursor = Cursor::new(payload);
        let chunk = ChunkHeader::read(&mut cursor)?;
        let Self {
            plugins,
            out,
            results: sender,
        } = self;
        let plugin = plugins
            .get(chunk.plugin as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no such plugin"))?;
        let remote = sender.progress.is_none();
        // One clock reading per item, after its call: it is also when the next item starts
        // (read again after a send, which may wait for the runner). Two per item were 13 % of
        // a worker's CPU on tiny tasks. (CLOCK_MONOTONIC_COARSE would be cheaper still, but
        // it trails this clock by up to two ticks here: a timeout could fire early, and a
        // result of a short item wait for the end of its chunk.)
        let mut now_ns = sys::monotonic_ns();
        let mut batch = sender.begin(chunk.chunk_id, 0, now_ns);
        for position in 0..chunk.count {
            if sender.stop_requested() {
                // Interrupted: report what is done; the rest of the chunk is left unrun.
                break;
            }
            let input = cursor.bytes()?;
            // The joblog times the call alone.
            let started_ns = if sender.timed {
                sys::monotonic_ns()
            } else {
                now_ns
            };
            let started_us = if sender.timed { sys::unix_micros() } else { 0 };
            if let Some(progress) = &sender.progress {
                progress.start(chunk.chunk_id, position, started_ns);
            }
            let mut stream = StreamCtx {
                sender: &mut *sender,
                batch: &mut batch,
                results: &mut *results,
                chunk_id: chunk.chunk_id,
                position,
                started_us,
                started_ns,
                announced: None,
                written: 0,
                too_large: None,
                error: None,
            };
            let mut sink = OutputSink {
                inline_limit: stream_above() as u64,
                ctx: (&raw mut stream).cast(),
                begin: stream_begin::<W>,
                write: stream_write::<W>,
            };
            let streamed = plugin.call_streamed(chunk.task, input, &mut sink, out);
            let StreamCtx {
                announced,
                written,
                too_large,
                error,
                ..
            } = stream;
            let mut status = match streamed {
                Some(status) => status,
                None => plugin.call(chunk.task, input, out),
            };
            if let Some(progress) = &sender.progress {
                progress.finish(chunk.chunk_id, position);
            }
            if let Some(e) = error {
                return Err(e);
            }
            let last = position + 1 == chunk.count;
            if let Some(len) = announced {
                if status != CallStatus::OK || written != len {
                    // The frame's head is out and its body cannot be completed: end the stream
                    // (the runner retries the item as after a crash).
                    eprintln!(
                        "loky-run worker: the result of item {position} of chunk {} broke off \
                         after {written} of its {len} bytes: {}",
                        chunk.chunk_id,
                        String::from_utf8_lossy(out)
                    );
                    return Err(io::Error::other("a streamed result broke off"));
                }
                sender.finish_stream(&mut batch, results)?;
                now_ns = sys::monotonic_ns();
                if !last {
                    batch = sender.begin(chunk.chunk_id, position + 1, now_ns);
                }
                continue;
            }
            if let Some(len) = too_large {
                status = replace_too_large(out, "result", len);
            }
            now_ns = sys::monotonic_ns();
            let ran_ns = match sender.timed {
                true => now_ns.saturating_sub(started_ns),
                false => 0,
            };
            if out.len() > max_item_bytes() {
                let what = match status {
                    CallStatus::OK => "result",
                    _ => "error message",
                };
                status = replace_too_large(out, what, out.len() as u64);
            }
            if out.len() >= OWN_FRAME_BYTES {
                // A frame of its own, its bytes written from the plugin's buffer.
                if batch.count > 0 {
                    sender.send(&mut batch, results)?;
                    batch = sender.begin(chunk.chunk_id, position, sys::monotonic_ns());
                }
                sender.put_head(status.0, started_us, ran_ns, out.len());
                batch.count += 1;
                sender.send_with(&mut batch, results, out)?;
                if out.capacity() > KEEP_OUT_BYTES {
                    *out = RVec::with_capacity(256);
                }
                now_ns = sys::monotonic_ns();
                if !last {
                    batch = sender.begin(chunk.chunk_id, position + 1, now_ns);
                }
                continue;
            }
            sender.put_head(status.0, started_us, ran_ns, out.len());
            sender.frame.put_raw(out);
            batch.count += 1;

            // Without a progress slot (remote workers) every result goes out before the next
            // item starts, so the first unreported item is the one running.
            if !last
                && (remote
                    || sender.frame.len() >= FLUSH_BYTES
                    || now_ns.saturating_sub(batch.opened_ns) >= FLUSH_AFTER_NS)
            {
                sender.send(&mut batch, results)?;
                now_ns = sys::monotonic_ns();
                batch = sender.begin(chunk.chunk_id, position + 1, now_ns);
            }
        }
        // The chunk's last results (or, for an empty chunk, an empty frame: it tells the
        // runner the chunk is over).
        if batch.count > 0 || chunk.count == 0 {
            sender.send(&mut batch, results)?;
        }
        Ok(())
    }
}

impl ResultSender {
    /// The runner asked to stop after the current item.
    #[inline]
    fn stop_requested(&self) -> bool {
        STOP_REQUESTED.load(Ordering::Relaxed)
            || self
                .progress
                .as_ref()
                .is_some_and(super::progress::ProgressSlot::stop_requested)
    }

    /// A results frame for the chunk's items from `first` on, opened at `now_ns`.
    fn begin(&mut self, chunk_id: u64, first: u32, now_ns: u64) -> Batch {
        let flags = if self.timed { ResultsHeader::TIMED } else { 0 };
        Batch::begin(&mut self.frame, chunk_id, first, flags, now_ns)
    }

    /// One result's status, timing (when timed) and length; its bytes follow.
    fn put_head(&mut self, status: u8, started_us: u64, ran_ns: u64, len: usize) {
        self.frame.put_u8(status);
        if self.timed {
            self.frame.put_u64(started_us);
            self.frame.put_u64(ran_ns);
        }
        self.frame.put_len(len);
    }

    /// Sends the results gathered in the frame, then publishes how many have been written.
    fn send(&mut self, batch: &mut Batch, results: &mut impl Write) -> io::Result<()> {
        self.send_with(batch, results, &[])
    }

    /// Like [`Self::send`], the frame's last result's bytes being `tail` (written from where
    /// they are).
    fn send_with(
        &mut self,
        batch: &mut Batch,
        results: &mut impl Write,
        tail: &[u8],
    ) -> io::Result<()> {
        self.patch(batch);
        let sent = if tail.is_empty() {
            send(results, self.frame.finish())
        } else {
            send_parts(results, self.frame.bytes_from(0), tail)
        };
        self.sent(batch, sent)
    }

    /// Writes the frame's head for a last result of `tail_len` bytes that the plugin streams
    /// next ([`StreamCtx`]); [`Self::finish_stream`] once they are written.
    fn send_head(
        &mut self,
        batch: &Batch,
        results: &mut impl Write,
        tail_len: usize,
    ) -> io::Result<()> {
        self.patch(batch);
        send_head(results, self.frame.bytes_from(0), tail_len).inspect_err(report_send_error)
    }

    /// The streamed result is written: the frame is complete.
    fn finish_stream(&mut self, batch: &mut Batch, results: &mut impl Write) -> io::Result<()> {
        let flushed = results.flush();
        self.sent(batch, flushed)
    }

    /// The header's count, busy time and RSS, before the frame goes out.
    fn patch(&mut self, batch: &Batch) {
        let busy = sys::monotonic_ns().saturating_sub(batch.opened_ns);
        self.frame
            .patch_u32(ResultsHeader::COUNT_OFFSET, batch.count);
        self.frame.patch_u64(ResultsHeader::BUSY_OFFSET, busy);
        // Remote workers' memory is not in the runner's /proc; the joblog wants it per task.
        if self.progress.is_none() || self.timed {
            let rss = self.sample_rss();
            self.frame.patch_u64(ResultsHeader::RSS_OFFSET, rss);
        }
    }

    /// Counts the frame's results as written once it went out.
    fn sent(&mut self, batch: &mut Batch, sent: io::Result<()>) -> io::Result<()> {
        if let Err(e) = sent {
            report_send_error(&e);
            return Err(e);
        }
        self.written += u64::from(batch.count);
        if let Some(progress) = &self.progress {
            progress.written(self.written);
        }
        batch.count = 0;
        Ok(())
    }

    /// This worker's RSS for the results header, for workers the runner cannot see (no
    /// progress slot: started elsewhere). Rate-limited, off the per-item path.
    fn sample_rss(&mut self) -> u64 {
        match self.rss {
            Some((rss, at)) if at.elapsed() < RSS_SAMPLE_EVERY => rss,
            _ => {
                let rss = sys::rss_bytes(std::process::id()).unwrap_or(0);
                self.rss = Some((rss, Instant::now()));
                rss
            }
        }
    }
}

/// Replaces an output over the item limit (`what` of `len` bytes) with the message of its
/// `too_large` record.
fn replace_too_large(out: &mut RVec<u8>, what: &str, len: u64) -> CallStatus {
    let message = format!(
        "the {what} is {len} bytes, more than a frame carries ({} bytes)",
        max_item_bytes()
    );
    *out = RVec::with_capacity(256);
    out.extend_from_slice(message.as_bytes());
    CallStatus(status::TOO_LARGE)
}

/// Says why on stderr (forwarded to the user): the exit status alone would not.
fn report_send_error(e: &io::Error) {
    eprintln!(
        "loky-run worker: cannot write results to the runner ({e}); was the result descriptor \
         closed by a task?"
    );
}

/// The worker's side of a streamed call ([`OutputSink`]): a result over [`stream_above`] goes
/// out in a frame of its own, its head written when the plugin announces its length and its
/// bytes as the plugin encodes them.
struct StreamCtx<'a, W: Write> {
    sender: &'a mut ResultSender,
    batch: &'a mut Batch,
    results: &'a mut W,
    chunk_id: u64,
    position: u32,
    started_us: u64,
    started_ns: u64,
    /// The length the plugin announced, once the frame's head is out.
    announced: Option<u64>,
    written: u64,
    /// Declined: longer than an item may be (a `too_large` record instead).
    too_large: Option<u64>,
    /// The result stream failed: the worker ends.
    error: Option<io::Error>,
}

impl<W: Write> StreamCtx<'_, W> {
    fn begin(&mut self, len: u64) -> bool {
        if self.announced.is_some() || self.error.is_some() {
            return false;
        }
        if len > max_item_bytes() as u64 {
            self.too_large = Some(len);
            return false;
        }
        let now = sys::monotonic_ns();
        let ran_ns = match self.sender.timed {
            true => now.saturating_sub(self.started_ns),
            false => 0,
        };
        // The results before this one go first, in their own frame.
        if self.batch.count > 0
            && let Err(e) = self.sender.send(self.batch, self.results)
        {
            self.error = Some(e);
            return false;
        }
        *self.batch = self.sender.begin(self.chunk_id, self.position, now);
        self.sender
            .put_head(status::OK, self.started_us, ran_ns, len as usize);
        self.batch.count = 1;
        match self
            .sender
            .send_head(self.batch, self.results, len as usize)
        {
            Ok(()) => {
                self.announced = Some(len);
                true
            }
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> bool {
        let Some(len) = self.announced else {
            return false;
        };
        if self.error.is_some() || self.written + bytes.len() as u64 > len {
            return false;
        }
        match self.results.write_all(bytes) {
            Ok(()) => {
                self.written += bytes.len() as u64;
                true
            }
            Err(e) => {
                report_send_error(&e);
                self.error = Some(e);
                false
            }
        }
    }
}

extern "C" fn stream_begin<W: Write>(ctx: *mut c_void, len: u64) -> bool {
    // SAFETY: `ctx` is the `StreamCtx<W>` that `run_chunk` made for this call: alive until the
    // call returns, and touched by nothing else while the plugin runs it.
    let ctx = unsafe { &mut *ctx.cast::<StreamCtx<'_, W>>() };
    ctx.begin(len)
}

extern "C" fn stream_write<W: Write>(ctx: *mut c_void, bytes: RSlice<'_, u8>) -> bool {
    // SAFETY: as in `stream_begin`.
    let ctx = unsafe { &mut *ctx.cast::<StreamCtx<'_, W>>() };
    ctx.write(bytes.as_slice())
}

/// The results frame being filled: which positions of the chunk it holds, since when.
struct Batch {
    count: u32,
    /// When it was opened (on [`sys::monotonic_ns`]): about when its first item started.
    opened_ns: u64,
}

impl Batch {
    fn begin(frame: &mut FrameBuf, chunk_id: u64, first: u32, flags: u32, now_ns: u64) -> Self {
        ResultsHeader {
            chunk_id,
            first,
            count: 0,
            busy_ns: 0,
            rss: 0,
            flags,
        }
        .write(frame);
        debug_assert_eq!(frame.len(), ResultsHeader::LEN);
        Self {
            count: 0,
            opened_ns: now_ns,
        }
    }
}

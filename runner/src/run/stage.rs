//! The dispatcher of one stage: hands chunks of inputs to workers, collects results in input
//! order, and turns failures (task errors, panics, crashed workers) into records and retries.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{ChunkSize, OnError, Stage};
use crate::console::{Console, PoolStatus, StageProgress};
use crate::events::{Event, EventLog};
use crate::input::InputSource;
use crate::interrupt;
use crate::output::{ErrorKind, OrderedWriter};
use crate::pool::{Pool, WorkerEvent, WorkerState};
use crate::protocol::{self, ChunkHeader, Cursor, FrameBuf, ReadyMsg, ResultsHeader, status, tag};
use crate::sys::{self, ProcessEnd};

/// Chunks a worker holds at once: one running, one queued behind it, so it never waits for a
/// round trip to the runner.
const CHUNKS_PER_WORKER: usize = 2;
/// Automatic chunks aim at this much work each.
const TARGET_CHUNK_NS: f64 = 2_000_000.0;
const MAX_AUTO_CHUNK: usize = 65_536;
/// Inputs are not handed out further than this ahead of the next index to write, and not while
/// the reorder buffer holds this many bytes: memory stays flat however many tasks a stage has.
const WINDOW_ITEMS: u64 = 1 << 18;
const WINDOW_BYTES: usize = 32 << 20;
/// How long the dispatcher sleeps when nothing happens (timers are checked at least this often).
const TICK: Duration = Duration::from_millis(50);
/// How often a worker's RSS is read (only while it reports results), for `max_memory_growth`.
const RSS_CHECK_EVERY: Duration = Duration::from_millis(50);
/// After SIGTERM for a timeout, how long before SIGKILL.
const TIMEOUT_KILL_GRACE: Duration = Duration::from_millis(500);
/// How many failures the summary keeps.
const KEEP_ERRORS: usize = 5;
/// Offset of the item count in a chunk frame (after length, tag, id, plugin and task).
/// Chunk buffers kept for reuse, and the largest kept (a few chunks in flight per worker).
const SPARE_FRAMES: usize = 16;
const SPARE_FRAME_BYTES: usize = 8 << 20;
const CHUNK_COUNT_OFFSET: usize = 5 + 8 + 2 + 4;

/// What the plan knows about a stage before it runs.
pub struct StageJob<'a> {
    pub stage: &'a Stage,
    pub plugin: u16,
    pub task: u32,
    pub total: u64,
    pub input: Box<dyn InputSource>,
    /// After a first interrupt, how long running tasks may finish before they are killed.
    pub grace: Duration,
}

#[derive(Debug, Clone)]
pub struct FailureSummary {
    pub index: u64,
    pub kind: ErrorKind,
    pub message: String,
}

/// Keeps the [`KEEP_ERRORS`] failures with the lowest input indices, in index order, whatever
/// order they completed in: the summary reads like the output file.
fn keep_lowest(errors: &mut Vec<FailureSummary>, index: u64, kind: ErrorKind, message: &str) {
    let at = errors.partition_point(|e| e.index < index);
    if at < KEEP_ERRORS {
        errors.insert(
            at,
            FailureSummary {
                index,
                kind,
                message: message.to_owned(),
            },
        );
        errors.truncate(KEEP_ERRORS);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// `on_error = "fail"` and a task failed.
    FirstFailure,
    /// A worker could not load the plugins or run the initializer.
    WorkerStart(String),
    /// SIGINT, SIGTERM or SIGHUP (the signal number).
    Interrupted(i32),
}

#[derive(Debug, Clone)]
pub struct StageOutcome {
    pub total: u64,
    pub ok: u64,
    pub failed: u64,
    pub retried: u64,
    pub wall: Duration,
    pub stopped: Option<StopReason>,
    pub first_errors: Vec<FailureSummary>,
}

impl StageOutcome {
    pub fn not_run(&self) -> u64 {
        self.total.saturating_sub(self.ok + self.failed)
    }
}

/// A chunk sent to a worker and not fully answered.
struct InFlight {
    /// The frame as sent: kept to re-send single inputs after a crash (shared with the pool
    /// while it waits to be written).
    frame: Arc<Vec<u8>>,
    indices: Vec<u64>,
    /// Attempts already made for each item before this one.
    attempts: Vec<u32>,
    /// Results received so far (positions `0..received`).
    received: u32,
}

impl InFlight {
    fn input(&self, position: u32) -> Vec<u8> {
        let mut c = Cursor::new(&self.frame[5..]);
        ChunkHeader::read(&mut c).expect("own frame");
        for _ in 0..position {
            c.bytes().expect("own frame");
        }
        c.bytes().expect("own frame").to_vec()
    }
}

/// An input waiting to be (re)sent.
struct Pending {
    index: u64,
    input: Vec<u8>,
    attempts: u32,
    /// After a crash or timeout the retry goes to a worker started after this one.
    newer_than: Option<u32>,
}

struct ChunkSizer {
    fixed: Option<usize>,
    ns_per_item: Option<f64>,
}

impl ChunkSizer {
    fn next(&self, remaining: u64, workers: usize) -> usize {
        if let Some(fixed) = self.fixed {
            return fixed.min(protocol::MAX_CHUNK_ITEMS);
        }
        let Some(ns) = self.ns_per_item else { return 1 };
        let by_time = (TARGET_CHUNK_NS / ns.max(1.0)) as usize;
        // Near the end, smaller chunks keep every worker busy until the last item.
        let tail = (remaining / (workers.max(1) as u64 * 4)).max(1) as usize;
        by_time.clamp(1, MAX_AUTO_CHUNK).min(tail)
    }

    fn observe(&mut self, busy_ns: u64, count: u32) {
        if count == 0 {
            return;
        }
        let sample = busy_ns as f64 / count as f64;
        self.ns_per_item = Some(match self.ns_per_item {
            Some(old) => old * 0.7 + sample * 0.3,
            None => sample,
        });
    }
}

pub struct Dispatcher<'a> {
    job: StageJob<'a>,
    pool: &'a mut Pool,
    writer: &'a mut OrderedWriter,
    events: &'a EventLog,
    console: &'a Arc<Console>,
    frame: FrameBuf,
    /// Buffers of answered chunks, reused for the next ones.
    spare_frames: Vec<Vec<u8>>,
    next_chunk: u64,
    in_flight: HashMap<u64, InFlight>,
    requeue: VecDeque<Pending>,
    next_index: u64,
    inputs_done: bool,
    sizer: ChunkSizer,
    outcome: StageOutcome,
    /// Interrupting signals already acted on.
    signals_seen: usize,
    /// After a first interrupt: when the workers still running get killed.
    interrupt_kill_at: Option<Instant>,
    /// Workers stopped for a timeout, and the cursor of the item that timed out.
    timed_out: HashMap<u32, u64>,
    progress: StageProgress,
    /// Results already recorded by the run being resumed (counted in the bar).
    resumed_done: u64,
}

impl<'a> Dispatcher<'a> {
    pub fn new(
        job: StageJob<'a>,
        pool: &'a mut Pool,
        writer: &'a mut OrderedWriter,
        events: &'a EventLog,
        console: &'a Arc<Console>,
    ) -> Self {
        let fixed = match job.stage.settings.chunksize {
            ChunkSize::Auto => None,
            ChunkSize::Fixed(n) => Some(n.get()),
        };
        let total = job.total;
        let progress = console.stage_progress(&job.stage.name, total);
        let resumed_done = writer.resumed().ok + writer.resumed().failed;
        Self {
            job,
            pool,
            writer,
            events,
            console,
            frame: FrameBuf::new(),
            spare_frames: Vec::new(),
            next_chunk: 1,
            in_flight: HashMap::new(),
            requeue: VecDeque::new(),
            next_index: 0,
            inputs_done: total == 0,
            sizer: ChunkSizer {
                fixed,
                ns_per_item: None,
            },
            outcome: StageOutcome {
                total,
                ok: 0,
                failed: 0,
                retried: 0,
                wall: Duration::ZERO,
                stopped: None,
                first_errors: Vec::new(),
            },
            signals_seen: 0,
            interrupt_kill_at: None,
            timed_out: HashMap::new(),
            progress,
            resumed_done,
        }
    }

    fn stage_name(&self) -> &'a str {
        &self.job.stage.name
    }

    fn has_work(&self) -> bool {
        self.outcome.stopped.is_none() && (!self.inputs_done || !self.requeue.is_empty())
    }

    pub fn run(mut self) -> io::Result<StageOutcome> {
        let started = Instant::now();
        loop {
            self.check_interrupt();
            if self.has_work() {
                self.pool
                    .fill(self.stage_name(), self.events, self.console)?;
                self.dispatch()?;
            }
            let next_timer = self.check_timers();
            if self.in_flight.is_empty() && !self.has_work() {
                break;
            }
            let wait = next_timer.map_or(TICK, |at| {
                at.saturating_duration_since(Instant::now()).min(TICK)
            });
            if let Some(event) = self.pool.recv_timeout(wait) {
                self.handle(event)?;
            }
            // [journal] What this event recorded reaches the kernel now (a no-op when nothing).
            self.writer.flush()?;
            self.show_progress(false);
        }
        self.show_progress(true);
        self.progress.finish();
        self.outcome.wall = started.elapsed();
        Ok(self.outcome)
    }

    fn show_progress(&self, force: bool) {
        let o = &self.outcome;
        let pool = &*self.pool;
        self.progress.update(
            self.resumed_done + o.ok + o.failed,
            o.failed,
            o.retried,
            || PoolStatus {
                alive: pool.workers().count(),
                busy: pool.workers().filter(|w| !w.in_flight.is_empty()).count(),
                restarts: pool.restarts,
                replaced: pool.replaced,
            },
            force,
        );
    }

    /// First signal: stop handing out work and let running tasks finish for the grace period;
    /// second signal (or the end of the grace period): kill every worker at once.
    fn check_interrupt(&mut self) {
        let count = interrupt::count();
        if count > self.signals_seen {
            if self.signals_seen == 0 {
                let sig = interrupt::first_signal().unwrap_or(libc::SIGINT);
                self.outcome.stopped = Some(StopReason::Interrupted(sig));
                self.console.warn(&format!(
                    "{} received: finishing running tasks (at most {}); interrupt again to stop at once",
                    crate::sys::signal_name(sig),
                    humantime::format_duration(self.job.grace)
                ));
                for id in self.pool.ids() {
                    self.pool.stop_after_current(id, "interrupted");
                }
                self.interrupt_kill_at = Some(Instant::now() + self.job.grace);
            }
            if count >= 2 {
                self.kill_all_workers();
            }
            self.signals_seen = count;
        }
        if self
            .interrupt_kill_at
            .is_some_and(|at| Instant::now() >= at)
        {
            self.kill_all_workers();
        }
    }

    fn kill_all_workers(&mut self) {
        self.interrupt_kill_at = None;
        for id in self.pool.ids() {
            self.pool.kill(id, "killed");
        }
    }

    /// Idle timeouts, task timeouts, recycling and kill escalation. Returns the earliest time
    /// something is due, so the event wait can end then.
    fn check_timers(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let settings = &self.job.stage.settings;
        let mut next = self.pool.escalate_kills(now);
        let mut due = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        if let Some(at) = self.interrupt_kill_at {
            due(at);
        }
        let now_ns = sys::monotonic_ns();
        let mut retire = Vec::new();
        let mut timeouts = Vec::new();
        for w in self.pool.workers() {
            if w.state != WorkerState::Ready {
                continue;
            }
            if w.in_flight.is_empty() {
                if let Some(reason) = w.recycle {
                    retire.push((w.id, reason));
                } else if let Some(idle) = settings.idle_timeout {
                    let at = w.idle_since + idle;
                    if at <= now {
                        retire.push((w.id, "idle_timeout"));
                    } else {
                        due(at);
                    }
                }
            } else if let Some(limit) = settings.task_timeout {
                // Remote workers have no progress slot: their item started when the last
                // result arrived (they send each result at once).
                let (cursor, started_ns) = match &w.progress {
                    Some(slot) => slot.read(),
                    None => {
                        let front = w
                            .in_flight
                            .front()
                            .and_then(|id| self.in_flight.get(id).map(|c| (*id, c.received)));
                        let started =
                            now_ns.saturating_sub(w.item_started.elapsed().as_nanos() as u64);
                        front.map_or((0, 0), |(id, pos)| {
                            (protocol::pack_cursor(id, pos), started)
                        })
                    }
                };
                if cursor != 0 {
                    let limit_ns = limit.as_nanos() as u64;
                    let ran = now_ns.saturating_sub(started_ns);
                    if ran >= limit_ns {
                        timeouts.push((w.id, cursor));
                    } else {
                        due(now + Duration::from_nanos(limit_ns - ran));
                    }
                }
            }
        }
        for (id, reason) in retire {
            self.pool.retire(id, reason);
        }
        for (id, cursor) in timeouts {
            self.timed_out.insert(id, cursor);
            self.pool.terminate(id, "timeout", TIMEOUT_KILL_GRACE);
            due(now + TIMEOUT_KILL_GRACE);
        }
        next
    }

    /// Reads a worker's RSS (rate-limited) and marks it for recycling when it grew too much.
    fn check_memory(&mut self, worker: u32) {
        let Some(limit) = self.job.stage.settings.max_memory_growth else {
            return;
        };
        let Some(w) = self.pool.worker_mut(worker) else {
            return;
        };
        if w.recycle.is_some()
            || (w.rss_baseline.is_some() && w.rss_checked.elapsed() < RSS_CHECK_EVERY)
        {
            return;
        }
        w.rss_checked = Instant::now();
        let rss = if w.is_remote() {
            w.reported_rss
        } else {
            sys::rss_bytes(w.pid)
        };
        let Some(rss) = rss else {
            return;
        };
        match w.rss_baseline {
            None => w.rss_baseline = Some(rss),
            Some(base) if rss > base.saturating_add(limit) => w.recycle = Some("memory_growth"),
            Some(_) => {}
        }
    }

    /// Tops up every ready worker to its chunk allowance.
    fn dispatch(&mut self) -> io::Result<()> {
        let ready: Vec<u32> = self
            .pool
            .workers()
            .filter(|w| w.is_available() && w.in_flight.len() < CHUNKS_PER_WORKER)
            .map(|w| w.id)
            .collect();
        for id in ready {
            while self
                .pool
                .worker(id)
                .is_some_and(|w| w.in_flight.len() < CHUNKS_PER_WORKER)
            {
                if !self.send_chunk(id)? {
                    break;
                }
            }
        }
        Ok(())
    }

    fn window_open(&self) -> bool {
        self.next_index < self.writer.next_index() + WINDOW_ITEMS
            && self.writer.pending_bytes() < WINDOW_BYTES
    }

    /// Builds and sends one chunk to `worker`; `false` when there was nothing to send.
    fn send_chunk(&mut self, worker: u32) -> io::Result<bool> {
        let chunk_id = self.next_chunk;
        let header = ChunkHeader {
            chunk_id,
            plugin: self.job.plugin,
            task: self.job.task,
            count: 0,
        };
        header.write(&mut self.frame);
        let mut indices = Vec::new();
        let mut attempts = Vec::new();

        // Retries and requeued inputs first, one chunk of them at a time.
        if let Some(pos) = self
            .requeue
            .iter()
            .position(|p| p.newer_than.is_none_or(|w| worker > w))
        {
            let p = self.requeue.remove(pos).expect("position is valid");
            self.frame.put_bytes(&p.input);
            indices.push(p.index);
            attempts.push(p.attempts);
        } else {
            let remaining = self.job.total.saturating_sub(self.next_index);
            let mut size = self.sizer.next(remaining, self.pool.size());
            let max_tasks = self.job.stage.settings.max_tasks_per_worker;
            if max_tasks > 0 {
                let assigned = self.pool.worker(worker).map_or(0, |w| w.tasks_assigned);
                size = size.min(max_tasks.saturating_sub(assigned) as usize);
            }
            // [resume] Inputs whose result an interrupted run already recorded are consumed
            // from the source and skipped (`OrderedWriter::is_done`).
            let mut skipped: Option<FrameBuf> = None;
            while indices.len() < size && !self.inputs_done && self.window_open() {
                if self.writer.is_done(self.next_index) {
                    let scratch = skipped.get_or_insert_with(FrameBuf::new);
                    scratch.begin(tag::CHUNK);
                    if self.job.input.next_into(scratch)? {
                        self.next_index += 1;
                    } else {
                        self.inputs_done = true;
                    }
                    continue;
                }
                if self.job.input.next_into(&mut self.frame)? {
                    indices.push(self.next_index);
                    attempts.push(0);
                    self.next_index += 1;
                } else {
                    self.inputs_done = true;
                }
            }
            if self.next_index >= self.job.total {
                self.inputs_done = true;
            }
        }
        if indices.is_empty() {
            return Ok(false);
        }
        self.frame
            .patch_u32(CHUNK_COUNT_OFFSET, indices.len() as u32);
        let frame = Arc::new(
            self.frame
                .finish_take(self.spare_frames.pop().unwrap_or_default()),
        );
        self.next_chunk += 1;
        let sent = self.pool.send_shared(worker, &frame);
        let max_tasks = self.job.stage.settings.max_tasks_per_worker;
        if let Some(w) = self.pool.worker_mut(worker) {
            if w.in_flight.is_empty() {
                w.item_started = Instant::now();
            }
            w.in_flight.push_back(chunk_id);
            w.tasks_assigned += indices.len() as u64;
            if max_tasks > 0 && w.tasks_assigned >= max_tasks {
                w.recycle = Some("max_tasks");
            }
        }
        self.in_flight.insert(
            chunk_id,
            InFlight {
                frame,
                indices,
                attempts,
                received: 0,
            },
        );
        // A failed write means the worker died: its exit event requeues this chunk.
        let _ = sent;
        Ok(true)
    }

    fn handle(&mut self, event: WorkerEvent) -> io::Result<()> {
        match event {
            WorkerEvent::Frame { worker, frame } => match frame[0] {
                tag::READY => self.on_ready(worker, &frame[1..]),
                tag::RESULTS => self.on_results(worker, &frame[1..])?,
                _ => {}
            },
            WorkerEvent::Exited {
                worker,
                end,
                peak_rss,
            } => self.on_exit(worker, end, peak_rss)?,
        }
        Ok(())
    }

    fn on_ready(&mut self, worker: u32, payload: &[u8]) {
        match serde_json::from_slice::<ReadyMsg>(payload) {
            Ok(ReadyMsg::Ready {
                pid,
                host,
                slurm_job,
                slurm_step,
            }) => {
                if let Some(w) = self.pool.worker_mut(worker) {
                    if w.state == WorkerState::Starting {
                        w.state = WorkerState::Ready;
                        w.idle_since = Instant::now();
                    }
                    if let (Some(job), Some(step)) = (&slurm_job, &slurm_step) {
                        w.slurm_step = Some(format!("{job}.{step}"));
                    }
                    if w.is_remote() {
                        w.location = Some(match &w.slurm_step {
                            Some(step) => format!("pid {pid} on {host}, step {step}"),
                            None => format!("pid {pid} on {host}"),
                        });
                    }
                }
                self.events.emit(&Event::WorkerReady {
                    worker,
                    pid,
                    host: &host,
                    slurm_job: slurm_job.as_deref(),
                    slurm_step: slurm_step.as_deref(),
                });
            }
            Ok(ReadyMsg::Failed { kind, message }) => {
                if let Some(w) = self.pool.worker_mut(worker) {
                    w.state = WorkerState::Stopping;
                    w.stop_reason = Some(if kind == "initializer" {
                        "initializer"
                    } else {
                        "plugin"
                    });
                }
                self.stop_for_worker_start(message);
            }
            Err(_) => self.pool.kill(worker, "killed"),
        }
    }

    /// No worker can start: stop the stage, with one record saying why at the first index that
    /// has no result yet.
    fn stop_for_worker_start(&mut self, message: String) {
        if self.outcome.stopped.is_some() {
            return;
        }
        self.console
            .error(&format!("stage {}: {message}", self.stage_name()));
        self.outcome.stopped = Some(StopReason::WorkerStart(message.clone()));
        let index = self
            .requeue
            .iter()
            .map(|p| p.index)
            .min()
            .unwrap_or(self.next_index)
            .min(self.next_index);
        if index < self.job.total && self.in_flight.is_empty() {
            let _ = self
                .writer
                .error(index, ErrorKind::Initializer, &message, 1);
            self.record_failure(index, ErrorKind::Initializer, &message, 1, None);
        }
    }

    fn on_results(&mut self, worker: u32, payload: &[u8]) -> io::Result<()> {
        let mut c = Cursor::new(payload);
        let header = ResultsHeader::read(&mut c)?;
        let Some(mut chunk) = self.in_flight.remove(&header.chunk_id) else {
            return Ok(()); // a chunk already written off (its worker was killed)
        };
        self.sizer.observe(header.busy_ns, header.count);
        for position in header.first..header.first + header.count {
            let code = c.u8()?;
            let bytes = c.bytes()?;
            let index = chunk.indices[position as usize];
            let attempts = chunk.attempts[position as usize] + 1;
            if code == status::OK {
                self.writer.ok(index, bytes)?;
                self.outcome.ok += 1;
            } else {
                let kind = if code == status::PANIC {
                    ErrorKind::Panic
                } else {
                    ErrorKind::TaskError
                };
                let message = String::from_utf8_lossy(bytes).into_owned();
                let input = chunk.input(position);
                self.fail(index, input, attempts, kind, message, worker, false)?;
            }
        }
        chunk.received = header.first + header.count;
        if let Some(w) = self.pool.worker_mut(worker) {
            w.report_rss(header.rss);
            w.tasks_done += u64::from(header.count);
            w.item_started = Instant::now();
        }
        self.check_memory(worker);
        if chunk.received as usize >= chunk.indices.len() {
            // Its buffer carries the next chunk (no allocation per chunk on the hot path).
            // (Answered, so fully written: the pool holds no reference any more.)
            if let Ok(frame) = Arc::try_unwrap(chunk.frame) {
                if self.spare_frames.len() < SPARE_FRAMES && frame.capacity() <= SPARE_FRAME_BYTES {
                    self.spare_frames.push(frame);
                }
            }
            if let Some(w) = self.pool.worker_mut(worker) {
                w.in_flight.retain(|id| *id != header.chunk_id);
                if w.in_flight.is_empty() {
                    w.idle_since = Instant::now();
                }
            }
        } else {
            self.in_flight.insert(header.chunk_id, chunk);
        }
        Ok(())
    }

    /// A failed attempt: retry it if attempts remain, else record it.
    #[allow(clippy::too_many_arguments)]
    fn fail(
        &mut self,
        index: u64,
        input: Vec<u8>,
        attempts: u32,
        kind: ErrorKind,
        message: String,
        worker: u32,
        needs_fresh_worker: bool,
    ) -> io::Result<()> {
        if attempts <= self.job.stage.settings.retries && self.outcome.stopped.is_none() {
            self.outcome.retried += 1;
            self.events.emit(&Event::TaskRetried {
                stage: self.stage_name(),
                index,
                attempt: attempts + 1,
                kind: kind.as_str(),
                message: &message,
            });
            let pending = Pending {
                index,
                input,
                attempts,
                newer_than: needs_fresh_worker.then_some(worker),
            };
            self.requeue.push_back(pending);
            return Ok(());
        }
        self.writer.error(index, kind, &message, attempts)?;
        self.record_failure(index, kind, &message, attempts, Some(worker));
        if self.job.stage.settings.on_error == OnError::Fail && self.outcome.stopped.is_none() {
            self.outcome.stopped = Some(StopReason::FirstFailure);
        }
        Ok(())
    }

    fn record_failure(
        &mut self,
        index: u64,
        kind: ErrorKind,
        message: &str,
        attempts: u32,
        worker: Option<u32>,
    ) {
        self.outcome.failed += 1;
        keep_lowest(&mut self.outcome.first_errors, index, kind, message);
        self.events.emit(&Event::TaskFailed {
            stage: self.stage_name(),
            index,
            kind: kind.as_str(),
            message,
            attempts,
            worker,
        });
    }

    fn on_exit(&mut self, worker: u32, end: ProcessEnd, peak_rss: u64) -> io::Result<()> {
        let Some(w) = self.pool.on_exit(worker, end, peak_rss, self.events) else {
            return Ok(());
        };
        let peak_rss = w.peak_rss(peak_rss);
        let expected = w.stop_reason.is_some();
        if w.state == WorkerState::Starting && !expected {
            // Died before it was ready: loading a plugin or the initializer crashed it.
            let what = match self.pool.spec().and_then(|s| s.initializer.as_ref()) {
                Some(init) => format!("while loading plugins or running initializer {}", init.name),
                None => "while loading plugins".to_owned(),
            };
            self.stop_for_worker_start(format!(
                "worker {worker} ({}) {end} {what}",
                w.describe_process()
            ));
        }
        // The item it was running: from the progress slot for a crash, or the one that timed
        // out. A worker stopped on purpose (interrupt, retire) is blamed for nothing.
        let running = match w.stop_reason {
            None => match &w.progress {
                Some(slot) => protocol::unpack_cursor(slot.read().0),
                // Remote workers report every result at once: the first unreported item ran.
                None => w
                    .in_flight
                    .front()
                    .and_then(|id| self.in_flight.get(id).map(|c| (*id, c.received))),
            },
            Some("timeout") => self
                .timed_out
                .remove(&worker)
                .and_then(protocol::unpack_cursor),
            Some(_) => None,
        };
        let chunk_ids: Vec<u64> = w.in_flight.iter().copied().collect();
        for chunk_id in chunk_ids {
            let Some(chunk) = self.in_flight.remove(&chunk_id) else {
                continue;
            };
            let blamed = match running {
                Some((id, pos)) if id == chunk_id && pos >= chunk.received => Some(pos),
                _ => None,
            };
            for position in chunk.received..chunk.indices.len() as u32 {
                let index = chunk.indices[position as usize];
                let prior = chunk.attempts[position as usize];
                let input = chunk.input(position);
                if Some(position) == blamed {
                    let (kind, message) = self.crash_record(&w, end, peak_rss, index);
                    self.fail(index, input, prior + 1, kind, message, worker, true)?;
                } else if self.outcome.stopped.is_none() {
                    // Never started, or finished but not yet reported: run it again elsewhere.
                    self.requeue.push_back(Pending {
                        index,
                        input,
                        attempts: prior,
                        newer_than: None,
                    });
                }
            }
        }
        Ok(())
    }

    fn crash_record(
        &self,
        w: &crate::pool::Worker,
        end: ProcessEnd,
        peak_rss: u64,
        index: u64,
    ) -> (ErrorKind, String) {
        let task = self.job.stage.task.to_string();
        match w.stop_reason {
            Some("timeout") => (
                ErrorKind::Timeout,
                format!(
                    "task {task} on input {index} exceeded the task timeout; worker {} ({}) was stopped",
                    w.id,
                    w.describe_process()
                ),
            ),
            _ => (
                ErrorKind::Crashed,
                format!(
                    "worker {} ({}) {end} while running task {task} on input {index}; its peak RSS was {}",
                    w.id,
                    w.describe_process(),
                    if peak_rss > 0 {
                        sys::format_bytes(peak_rss)
                    } else {
                        "unknown (a remote worker that had not reported it)".to_owned()
                    }
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_keeps_the_lowest_failed_indices_in_order() {
        let mut errors = Vec::new();
        for index in [40, 7, 99, 3, 12, 8, 1, 500] {
            keep_lowest(&mut errors, index, ErrorKind::TaskError, "boom");
        }
        let kept: Vec<u64> = errors.iter().map(|e| e.index).collect();
        assert_eq!(kept, [1, 3, 7, 8, 12]);
    }
}

//! The dispatcher of one stage: hands chunks of inputs to workers, collects results in input
//! order, and turns failures (task errors, panics, crashed or silent workers) into records and
//! retries.
//!
//! It owns the book of chunks in flight ([`Book`]) and makes every scheduling decision; it
//! reaches the workers only through [`WorkerPool`] (the real [`crate::pool::Pool`], or a fake
//! in the tests next to this file) and learns what they did from [`PoolEvent`]s.
//!
//! The rules:
//! - **Work-conserving.** Every idle ready worker gets a chunk before any busy worker gets a
//!   second. A second chunk is prefetched (to hide the round trip) only when no worker is idle
//!   or starting, the busy worker's held work is short (under [`PREFETCH_HORIZON`] by the
//!   measured time per item) and not overrunning, and enough inputs remain for every other
//!   worker: the stage's last tasks never wait behind a busy worker. Chunks shrink near the
//!   end ([`ChunkSizer`]).
//! - **Every failure is an attempt of someone, or of no one, decided once** ([`Book::blame`]):
//!   a worker that dies, times out or loses results charges the item it was running (or, of
//!   several that may have, none: they run again alone). `retries` bounds the attempts, so a
//!   task that kills every worker it touches costs `retries + 1` workers and gets one
//!   `crashed` record.
//! - **Nothing loops.** Workers that die while starting are replaced [`START_DEATH_LIMIT`]
//!   times in a row at most, workers that die holding nothing that ran
//!   [`lost_death_limit`] times; then the stage stops and says why.
//! - **Nothing waits forever.** A task running past `task_timeout`, or whose result has not
//!   arrived `task_timeout` after it started, is a `timeout`; results a worker wrote that never
//!   arrive end the worker at once (the pool finds them).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::{ChunkSize, OnError, Stage};
use crate::console::{Console, PoolStatus, StageProgress};
use crate::events::{Event, EventLog};
use crate::input::InputSource;
use crate::interrupt;
use crate::joblog::{Attempt, Joblog};
use crate::live::{self, LiveFile, StageProgress as LiveProgress};
use crate::output::{ErrorKind, OrderedWriter};
use crate::pool::{
    Phase, PoolEvent, Progress, StartFailure, StopReason, WorkerExit, WorkerId, WorkerPool,
    WorkerView,
};
use crate::protocol::{ChunkHeader, Cursor, FrameBuf, ResultsHeader, max_item_bytes, status};
use crate::sys::{self, ProcessEnd};

use super::book::{Blame, Book, Chunk, Item};
use super::error::RunError;
use super::outcome::{StageOutcome, StageStop};
use super::sizer::ChunkSizer;

/// Chunks a worker holds at once: one running, one queued behind it.
const CHUNKS_PER_WORKER: usize = 2;
/// A busy worker gets a second chunk only if what it holds should take at most this long.
pub const PREFETCH_HORIZON: Duration = Duration::from_millis(20);
/// An item running this many times longer than the measured time per item (plus a
/// millisecond) is overrunning: nothing is queued behind it.
const OVERRUN_FACTOR: u32 = 4;
/// Inputs are not handed out further than this ahead of the next index to write, and not while
/// the reorder buffer holds this many bytes: memory stays flat however many tasks a stage has.
const WINDOW_ITEMS: u64 = 1 << 18;
const WINDOW_BYTES: usize = 32 << 20;
/// A chunk stops taking inputs once its frame is this large (one large input may follow).
const CHUNK_SOFT_BYTES: usize = 16 << 20;
/// How long the dispatcher sleeps when nothing happens (timers are checked at least this often).
const TICK: Duration = Duration::from_millis(50);
/// After SIGTERM for a timeout, how long before SIGKILL.
const TIMEOUT_KILL_GRACE: Duration = Duration::from_millis(500);
/// Failures and retries of a stage shown one line each as they happen.
pub const LIVE_LINES: usize = 5;
/// Workers that die while starting, in a row, before the stage gives up.
pub const START_DEATH_LIMIT: u32 = 3;
/// Chunk buffers kept for reuse, and the largest kept (a few chunks in flight per worker).
const SPARE_FRAMES: usize = 16;
const SPARE_FRAME_BYTES: usize = 8 << 20;
/// Offset of the item count in a chunk frame (after length, tag, id, plugin and task).
const CHUNK_COUNT_OFFSET: usize = 5 + 8 + 2 + 4;

/// Workers that die in a row holding nothing that ran, with no result in between, before the
/// stage gives up (they are not any task's fault, but they must not be replaced forever).
pub fn lost_death_limit(workers: usize) -> u32 {
    3 + 2 * workers as u32
}

/// Chunk ids are unique for the life of the runner: a reused worker's progress slot still
/// names the last chunk of the stage before.
static NEXT_CHUNK: AtomicU64 = AtomicU64::new(1);

/// What the plan knows about a stage before it runs.
pub struct StageJob<'a> {
    pub stage: &'a Stage,
    pub plugin: u16,
    pub task: u32,
    pub total: u64,
    pub input: Box<dyn InputSource>,
    /// After a first interrupt, how long running tasks may finish before they are killed.
    pub grace: Duration,
    /// When no bars are drawn: how often a line says how the stage is doing (`None`: never).
    pub progress_every: Option<Duration>,
}

/// An input waiting to be (re)sent.
struct Pending {
    item: Item,
    input: Vec<u8>,
    /// After a crash or timeout the retry goes to a worker started after this one (the
    /// instant: when it was queued for that).
    newer_than: Option<(WorkerId, Instant)>,
}

/// How long a retry after a crash or timeout waits for a worker newer than the one that
/// failed, while such a worker is starting; past that, any worker takes it. A local worker is
/// ready within milliseconds (plus its initializer), and so is a Slurm step when the allocation
/// has CPUs free; but a step may wait for CPUs that only the pool's older workers can give
/// back (an allocation that lost a node, whose steps' CPUs are gone), and the retry with it.
pub const FRESH_WORKER_WAIT: Duration = Duration::from_secs(5);

impl Pending {
    /// Whether `worker` may run it: a retry after a crash goes to a worker started after the
    /// one that crashed, unless no such worker is there or coming (`newest`: the newest live or
    /// starting worker), which would leave it waiting forever, or none came within
    /// [`FRESH_WORKER_WAIT`].
    fn fits(&self, worker: WorkerId, newest: WorkerId, now: Instant) -> bool {
        self.newer_than.is_none_or(|(w, queued)| {
            worker > w || newest <= w || now.saturating_duration_since(queued) >= FRESH_WORKER_WAIT
        })
    }
}

pub struct Dispatcher<'a, P: WorkerPool> {
    job: StageJob<'a>,
    pool: &'a mut P,
    writer: &'a mut OrderedWriter,
    events: &'a EventLog,
    console: &'a Console,
    frame: FrameBuf,
    /// Buffers of answered chunks, reused for the next ones.
    spare_frames: Vec<Vec<u8>>,
    book: Book,
    requeue: VecDeque<Pending>,
    next_index: u64,
    inputs_done: bool,
    sizer: ChunkSizer,
    outcome: StageOutcome,
    /// Interrupting signals already acted on.
    signals_seen: usize,
    /// After a first interrupt: when the workers still running get killed.
    interrupt_kill_at: Option<Instant>,
    progress: StageProgress,
    /// Results already recorded by the run being resumed (counted in the bar).
    resumed_done: u64,
    /// Workers in a row that died while starting, and how the last one ended.
    start_deaths: u32,
    last_start_death: Option<ProcessEnd>,
    /// Workers in a row that died holding nothing that ran, with no result in between.
    lost_deaths: u32,
    /// Scratch list of the pool's workers.
    views: Vec<WorkerView>,
    /// The newest worker live or starting, as of the last dispatch.
    newest: WorkerId,
    joblog: Option<&'a mut Joblog>,
    /// Workers' own pids and hosts, for the joblog (asked once each).
    identities: HashMap<WorkerId, (u32, String)>,
    /// Failure and retry lines shown so far, and when the last progress line was.
    live_shown: usize,
    last_progress_line: Instant,
    /// Where `loky-run status` reads how the stage is doing.
    live: Option<&'a mut LiveFile>,
    /// Called after each event: the run's own bookkeeping between stages that must not wait
    /// for the stage's end (see [`Dispatcher::with_tick`]).
    tick: Option<&'a mut dyn FnMut()>,
    /// Results recorded by the run being resumed: ok and failed.
    resumed_ok_failed: (u64, u64),
    started: Instant,
    started_at: String,
}

impl<'a, P: WorkerPool> Dispatcher<'a, P> {
    pub fn new(
        job: StageJob<'a>,
        pool: &'a mut P,
        writer: &'a mut OrderedWriter,
        events: &'a EventLog,
        console: &'a Console,
    ) -> Self {
        let fixed = match job.stage.settings.chunksize {
            ChunkSize::Auto => None,
            ChunkSize::Fixed(n) => Some(n.get()),
        };
        let total = job.total;
        let progress = console.stage_progress(&job.stage.name, total);
        let resumed = writer.resumed();
        let resumed_done = resumed.records();
        let resumed_ok_failed = (resumed.ok, resumed.failed);
        Self {
            job,
            pool,
            writer,
            events,
            console,
            frame: FrameBuf::new(),
            spare_frames: Vec::new(),
            book: Book::default(),
            requeue: VecDeque::new(),
            next_index: 0,
            inputs_done: total == 0,
            sizer: ChunkSizer::new(fixed),
            outcome: StageOutcome::new(total),
            signals_seen: 0,
            interrupt_kill_at: None,
            progress,
            resumed_done,
            start_deaths: 0,
            last_start_death: None,
            lost_deaths: 0,
            views: Vec::new(),
            newest: 0,
            joblog: None,
            identities: HashMap::new(),
            live_shown: 0,
            last_progress_line: Instant::now(),
            live: None,
            tick: None,
            resumed_ok_failed,
            started: Instant::now(),
            started_at: crate::events::now_rfc3339(),
        }
    }

    fn stage_name(&self) -> &'a str {
        &self.job.stage.name
    }

    fn has_work(&self) -> bool {
        self.outcome.stopped.is_none() && (!self.inputs_done || !self.requeue.is_empty())
    }

    /// Runs the stage to its end.
    pub fn run(mut self) -> Result<StageOutcome, RunError> {
        // Signals are this loop's to handle now; the watchdog only steps in if it hangs.
        let _signals = interrupt::guard_stage(self.job.grace);
        while self.step(Instant::now())? {}
        Ok(self.finish())
    }

    /// One turn: act on signals and timers, hand out work, wait for one event and handle it.
    /// Returns `false` once the stage is over.
    pub fn step(&mut self, now: Instant) -> Result<bool, RunError> {
        self.check_interrupt(now);
        if self.has_work() {
            self.pool.fill().map_err(|source| RunError::Pool {
                stage: self.stage_name().to_owned(),
                source,
            })?;
            self.dispatch(now)?;
        }
        let next_timer = self.tick(now);
        if self.book.is_empty() && !self.has_work() {
            return Ok(false);
        }
        let wait = next_timer.map_or(TICK, |at| at.saturating_duration_since(now).min(TICK));
        if let Some(event) = self.pool.next_event(wait) {
            self.handle(event, Instant::now())?;
        }
        // [journal] What this event recorded reaches the kernel now (a no-op when nothing).
        if let Err(e) = self.writer.flush() {
            return Err(self.write_error(e));
        }
        if let Some(joblog) = self.joblog.as_deref_mut() {
            joblog.flush();
        }
        self.show_progress(false);
        let now = Instant::now();
        self.progress_line(now);
        self.update_live(now);
        if let Some(tick) = self.tick.as_deref_mut() {
            tick();
        }
        Ok(true)
    }

    /// The stage is over: workers due for recycling retire (they hold nothing now).
    /// How the stage is doing, for `status` (and the progress lines).
    fn stage_progress(&self, now: Instant) -> LiveProgress {
        let o = &self.outcome;
        let done_now = o.ok + o.failed;
        let done = self.resumed_done + done_now;
        let elapsed = now.saturating_duration_since(self.started).as_secs_f64();
        let tasks_per_s = if elapsed > 0.0 {
            done_now as f64 / elapsed
        } else {
            0.0
        };
        LiveProgress {
            name: self.stage_name().to_owned(),
            started_at: self.started_at.clone(),
            total: o.total,
            done,
            ok: self.resumed_ok_failed.0 + o.ok,
            failed: self.resumed_ok_failed.1 + o.failed,
            retried: o.retried,
            workers: self.pool.workers().count(),
            busy: self.book.busy(),
            tasks_per_s,
            eta_s: live::eta_seconds(o.total.saturating_sub(done), done_now, tasks_per_s),
            allocations: self.pool.allocations(),
        }
    }

    /// Rewrites `.live.json` when due.
    fn update_live(&mut self, now: Instant) {
        if !self.live.as_ref().is_some_and(|l| l.due(now)) {
            return;
        }
        let progress = self.stage_progress(now);
        if let Some(live) = self.live.as_deref_mut() {
            live.write(Some(progress), now);
        }
    }

    fn finish(mut self) -> StageOutcome {
        let due: Vec<(WorkerId, StopReason)> = self
            .book
            .seats()
            .filter_map(|(id, s)| s.recycle.map(|r| (id, r)))
            .collect();
        for (id, reason) in due {
            self.pool.retire(id, reason);
        }
        self.show_progress(true);
        self.progress.finish();
        self.outcome.wall = self.started.elapsed();
        self.outcome
    }

    /// Keeps `.live.json` up to date for `loky-run status` (at most once a second, from the
    /// stage's start on: a tiny stage does not rewrite it).
    pub fn with_live(mut self, live: Option<&'a mut LiveFile>) -> Self {
        self.live = live;
        self.update_live(Instant::now());
        self
    }

    /// Keeps a joblog of every attempt (the pool must have been told to time tasks).
    pub fn with_joblog(mut self, joblog: Option<&'a mut Joblog>) -> Self {
        self.joblog = joblog;
        self
    }

    /// Calls `tick` after each event the stage handles (it must be cheap).
    pub fn with_tick(mut self, tick: Option<&'a mut dyn FnMut()>) -> Self {
        self.tick = tick;
        self
    }

    /// The outcome so far (for tests).
    #[cfg(test)]
    pub fn outcome(&self) -> &StageOutcome {
        &self.outcome
    }

    /// The error for a failed write of the stage's output (built only when one fails).
    fn write_error(&self, source: std::io::Error) -> RunError {
        let path = self.writer.path();
        RunError::Io {
            context: format!(
                "cannot record the results of stage {} in {} (or its journal {})",
                self.job.stage.name,
                path.display(),
                crate::output::journal_path(path).display()
            ),
            source,
            resumable: true,
        }
    }

    /// The error for a failed read of the stage's input.
    fn read_error(&self, source: std::io::Error) -> RunError {
        let context = format!("cannot read the input of stage {}", self.job.stage.name);
        // A damaged input (the message says where and what to do) is not a disk's fault:
        // retrying the same run cannot help.
        if source.kind() == std::io::ErrorKind::InvalidData {
            return RunError::Refused(format!("{context}: {source}"));
        }
        RunError::Io {
            context,
            source,
            resumable: true,
        }
    }

    fn show_progress(&self, force: bool) {
        let o = &self.outcome;
        let (pool, book) = (&*self.pool, &self.book);
        self.progress.update(
            self.resumed_done + o.ok + o.failed,
            o.failed,
            o.retried,
            || {
                let counters = pool.counters();
                PoolStatus {
                    alive: pool.workers().count(),
                    busy: book.busy(),
                    restarts: counters.restarts,
                    replaced: counters.replaced,
                    allocations: crate::live::allocations_summary(&pool.allocations()),
                }
            },
            force,
        );
    }

    /// First signal: stop handing out work and let running tasks finish for the grace period;
    /// second signal (or the end of the grace period): kill every worker at once.
    fn check_interrupt(&mut self, now: Instant) {
        let count = interrupt::count();
        if count > self.signals_seen {
            if self.signals_seen == 0 {
                let sig = interrupt::first_signal().unwrap_or(libc::SIGINT);
                self.outcome.stopped = Some(StageStop::Interrupted(sig));
                self.console.warn(&format!(
                    "{} received: finishing running tasks (at most {}); interrupt again to stop at once",
                    sys::signal_name(sig),
                    humantime::format_duration(self.job.grace)
                ));
                self.refresh_views();
                for w in std::mem::take(&mut self.views) {
                    self.pool.stop_after_current(w.id, StopReason::Interrupted);
                }
                self.interrupt_kill_at = Some(now + self.job.grace);
            }
            if count >= 2 {
                self.kill_all_workers();
            }
            self.signals_seen = count;
        }
        if self.interrupt_kill_at.is_some_and(|at| now >= at) {
            self.kill_all_workers();
        }
    }

    fn kill_all_workers(&mut self) {
        self.interrupt_kill_at = None;
        self.refresh_views();
        for w in std::mem::take(&mut self.views) {
            self.pool.kill(w.id, StopReason::Killed);
        }
    }

    fn refresh_views(&mut self) {
        self.views.clear();
        self.views.extend(self.pool.workers());
    }

    // ---- handing out work --------------------------------------------------------------

    /// Whether a ready worker may be given work (not due for recycling).
    fn takes_work(&mut self, worker: WorkerId, now: Instant) -> bool {
        let max_tasks = self.job.stage.settings.max_tasks_per_worker;
        if max_tasks > 0 && self.pool.tasks_sent(worker) >= max_tasks {
            self.book.seat(worker, now).recycle = Some(StopReason::MaxTasks);
        }
        self.book
            .seat_ref(worker)
            .is_none_or(|s| s.recycle.is_none())
    }

    /// Inputs not yet handed out.
    fn remaining(&self) -> u64 {
        self.job.total.saturating_sub(self.next_index) + self.requeue.len() as u64
    }

    /// Gives work to workers, by the rules in the module docs.
    fn dispatch(&mut self, now: Instant) -> Result<(), RunError> {
        self.refresh_views();
        let views = std::mem::take(&mut self.views);
        self.newest = views
            .iter()
            .filter(|w| w.phase != Phase::Stopping)
            .map(|w| w.id)
            .max()
            .unwrap_or(0);
        let mut starting = false;
        let mut live = 0u64;
        // Whether every idle worker got work (an idle one that got none means there is none it
        // may take: nothing to prefetch either).
        let mut sent_all = true;
        for w in &views {
            match w.phase {
                Phase::Starting => starting = true,
                Phase::Ready if self.takes_work(w.id, now) => {
                    live += 1;
                    // Keep trying the others: an isolated retry may wait for a newer worker.
                    if self.book.held(w.id) == 0 && !self.send_chunk(w.id, now)? {
                        sent_all = false;
                    }
                }
                Phase::Ready | Phase::Stopping => {}
            }
        }
        if sent_all && !starting {
            // Every live worker has work: prefetch to those that will be done soonest.
            let mut busy: Vec<(u64, WorkerId)> = views
                .iter()
                .filter(|w| w.phase == Phase::Ready)
                .filter(|w| self.prefetch_ok(w.id, now))
                .map(|w| (self.book.held(w.id), w.id))
                .collect();
            busy.sort_unstable();
            for (_, id) in busy {
                if self.remaining() <= live || !self.send_chunk(id, now)? {
                    break;
                }
            }
        }
        self.views = views;
        Ok(())
    }

    /// Whether a busy worker should get a second chunk now.
    fn prefetch_ok(&self, worker: WorkerId, now: Instant) -> bool {
        let Some(seat) = self.book.seat_ref(worker) else {
            return false;
        };
        if seat.chunks.len() >= CHUNKS_PER_WORKER
            || seat.recycle.is_some()
            || self.book.holds_isolated(worker)
        {
            return false;
        }
        // Nothing is queued behind a big item: the next input may be as big, and the runner
        // would hold both (a big item costs it its size per worker, not twice that).
        if self.book.held_bytes(worker) > CHUNK_SOFT_BYTES {
            return false;
        }
        let Some(per_item) = self.sizer.per_item() else {
            return false;
        };
        let held = self.book.held(worker);
        if held == 0 || per_item.saturating_mul(held.min(u32::MAX as u64) as u32) > PREFETCH_HORIZON
        {
            return false;
        }
        // How long it has been on its current item: a local worker between calls is moving on;
        // a remote one sends every result, so its current item began with its last result.
        let on_current = match self.pool.progress(worker) {
            Progress::Running { since, .. } => now.saturating_duration_since(since),
            Progress::Between { .. } => Duration::ZERO,
            Progress::Unknown => now.saturating_duration_since(seat.active_since),
        };
        on_current <= per_item * OVERRUN_FACTOR + Duration::from_millis(1)
    }

    fn window_open(&self) -> bool {
        self.next_index < self.writer.next_index() + WINDOW_ITEMS
            && self.writer.pending_bytes() < WINDOW_BYTES
    }

    /// Builds and sends one chunk to `worker`; `false` when there was nothing to send.
    fn send_chunk(&mut self, worker: WorkerId, now: Instant) -> Result<bool, RunError> {
        let chunk_id = NEXT_CHUNK.fetch_add(1, Ordering::Relaxed);
        ChunkHeader {
            chunk_id,
            plugin: self.job.plugin,
            task: self.job.task,
            count: 0,
        }
        .write(&mut self.frame);
        let idle = self.book.held(worker) == 0;
        let mut size = self.sizer.next(self.remaining(), self.pool.target_size());
        let max_tasks = self.job.stage.settings.max_tasks_per_worker;
        if max_tasks > 0 {
            let left = max_tasks.saturating_sub(self.pool.tasks_sent(worker));
            size = size.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        let mut items = Vec::new();
        self.take_requeued(worker, size, idle, now, &mut items);
        if items.is_empty() {
            self.read_inputs(size, &mut items)?;
        }
        if items.is_empty() {
            return Ok(false);
        }
        self.frame.patch_u32(CHUNK_COUNT_OFFSET, items.len() as u32);
        let frame = Arc::new(
            self.frame
                .finish_take(self.spare_frames.pop().unwrap_or_default()),
        );
        self.pool.send_chunk(worker, &frame, items.len() as u32);
        if max_tasks > 0 && self.pool.tasks_sent(worker) >= max_tasks {
            self.book.seat(worker, now).recycle = Some(StopReason::MaxTasks);
        }
        self.book.add(
            chunk_id,
            Chunk {
                worker,
                frame,
                items,
                received: 0,
            },
            now,
        );
        Ok(true)
    }

    /// Retries and requeued inputs first. An isolated one goes alone, and only to an idle
    /// worker. The frame stays within the same bounds as one of fresh inputs.
    fn take_requeued(
        &mut self,
        worker: WorkerId,
        size: usize,
        idle: bool,
        now: Instant,
        items: &mut Vec<Item>,
    ) {
        let mut i = 0;
        while i < self.requeue.len() && items.len() < size {
            let p = &self.requeue[i];
            if !p.fits(worker, self.newest, now) || (p.item.isolated && !(idle && items.is_empty()))
            {
                i += 1;
                continue;
            }
            let grows = self.frame.len() + 4 + p.input.len();
            if !items.is_empty() && grows > CHUNK_SOFT_BYTES {
                break;
            }
            let isolated = p.item.isolated;
            let Some(p) = self.requeue.remove(i) else {
                break;
            };
            let at = self.frame.len() as u32;
            self.frame.put_bytes(&p.input);
            items.push(Item { at, ..p.item });
            if isolated {
                break;
            }
        }
    }

    /// Fresh inputs from the source, up to `size` (and a bounded frame).
    fn read_inputs(&mut self, size: usize, items: &mut Vec<Item>) -> Result<(), RunError> {
        // [resume] Inputs whose result an interrupted run already recorded are consumed from
        // the source and skipped (`OrderedWriter::is_done`).
        let mut skipped: Option<FrameBuf> = None;
        while items.len() < size
            && !self.inputs_done
            && self.window_open()
            && self.frame.len() < CHUNK_SOFT_BYTES
        {
            if self.writer.is_done(self.next_index) {
                let scratch = skipped.get_or_insert_with(FrameBuf::new);
                scratch.begin(0);
                let more = match self.job.input.next_into(scratch) {
                    Ok(more) => more,
                    Err(e) => return Err(self.read_error(e)),
                };
                if more {
                    self.next_index += 1;
                } else {
                    self.inputs_done = true;
                }
                continue;
            }
            let before = self.frame.len();
            let more = match self.job.input.next_into(&mut self.frame) {
                Ok(more) => more,
                Err(e) => return Err(self.read_error(e)),
            };
            if !more {
                self.inputs_done = true;
                break;
            }
            let item = Item {
                at: before as u32,
                source: self.job.input.source(),
                ..Item::fresh(self.next_index)
            };
            self.next_index += 1;
            // Its length prefix is 4 bytes, or 12 from 4 GiB on (`FrameBuf::put_len`).
            let mut len = self.frame.len() - before - 4;
            if len >= u32::MAX as usize {
                len -= 8;
            }
            let limit = max_item_bytes();
            if len > limit {
                self.frame.truncate(before);
                let message = format!(
                    "input {} is {len} bytes, more than a frame carries ({limit} bytes)",
                    item.index
                );
                self.log_attempt(item, None, None, ErrorKind::TooLarge.as_str(), None);
                self.record(item, ErrorKind::TooLarge, &message, None)?;
                continue;
            }
            // A big input joins the chunk whatever its size (a long frame carries it): moving
            // it to a chunk of its own would copy it.
            items.push(item);
        }
        if self.next_index >= self.job.total {
            self.inputs_done = true;
        }
        Ok(())
    }

    // ---- what happened -------------------------------------------------------------------

    /// Handles one event from the pool.
    pub fn handle(&mut self, event: PoolEvent, now: Instant) -> Result<(), RunError> {
        match event {
            PoolEvent::Ready { worker } => {
                self.start_deaths = 0;
                self.last_start_death = None;
                self.book.seat(worker, now).idle_since = now;
            }
            PoolEvent::StartFailed {
                failure, message, ..
            } => {
                // Both fail every worker the same way: the stage stops, with an `initializer`
                // record (the kinds of SPEC §5) that says which.
                let message = match failure {
                    StartFailure::Initializer => message,
                    StartFailure::Plugin => {
                        format!("a worker could not load the plugins: {message}")
                    }
                };
                self.stop(
                    StageStop::WorkerStart(message.clone()),
                    ErrorKind::Initializer,
                    &message,
                )?;
            }
            PoolEvent::Results { worker, frame } => self.on_results(worker, &frame[1..], now)?,
            PoolEvent::Exited(exit) => self.on_exit(exit, now)?,
        }
        Ok(())
    }

    fn on_results(
        &mut self,
        worker: WorkerId,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), RunError> {
        let mut c = Cursor::new(payload);
        let Ok(header) = ResultsHeader::read(&mut c) else {
            self.pool.kill(worker, StopReason::BrokenStream);
            return Ok(());
        };
        let Some(mut chunk) = self.book.take(header.chunk_id) else {
            return Ok(()); // a chunk already written off (its worker was killed)
        };
        let fits = chunk.worker == worker
            && header.first == chunk.received
            && header.first as usize + header.count as usize <= chunk.items.len();
        if !fits {
            // Results for positions it was not running: its stream cannot be trusted.
            self.book.put_back(header.chunk_id, chunk);
            self.pool.kill(worker, StopReason::BrokenStream);
            return Ok(());
        }
        self.sizer.observe(header.busy_ns, header.count);
        if header.count > 0 {
            self.lost_deaths = 0;
        }
        let outcome = self.record_results(worker, &mut chunk, &header, &mut c);
        self.book.seat(worker, now).active_since = now;
        if chunk.received as usize >= chunk.items.len() {
            self.book.forget(header.chunk_id, worker, now);
            self.recycle_frame(chunk.frame);
        } else {
            self.book.put_back(header.chunk_id, chunk);
        }
        outcome?;
        self.check_memory(worker, now);
        Ok(())
    }

    /// Records the `count` results that follow in `c`, for the chunk's next positions.
    fn record_results(
        &mut self,
        worker: WorkerId,
        chunk: &mut Chunk,
        header: &ResultsHeader,
        c: &mut Cursor<'_>,
    ) -> Result<(), RunError> {
        for _ in 0..header.count {
            let Ok(code) = c.u8() else {
                self.pool.kill(worker, StopReason::BrokenStream);
                return Ok(());
            };
            let timing = if header.timed() {
                match (c.u64(), c.u64()) {
                    (Ok(start_us), Ok(ran_ns)) => Some((start_us, ran_ns)),
                    _ => {
                        self.pool.kill(worker, StopReason::BrokenStream);
                        return Ok(());
                    }
                }
            } else {
                None
            };
            let Ok(bytes) = c.bytes() else {
                self.pool.kill(worker, StopReason::BrokenStream);
                return Ok(());
            };
            let position = chunk.received;
            let item = chunk.items[position as usize];
            chunk.received += 1;
            if self.joblog.is_some() {
                let outcome = match code {
                    status::OK => "ok",
                    status::TOO_LARGE => ErrorKind::TooLarge.as_str(),
                    status::PANIC => ErrorKind::Panic.as_str(),
                    _ => ErrorKind::TaskError.as_str(),
                };
                let rss = (header.rss > 0).then_some(header.rss);
                self.log_attempt(item, Some(worker), timing, outcome, rss);
            }
            match code {
                status::OK => {
                    self.writer
                        .ok(item.index, item.source, bytes)
                        .map_err(|e| self.write_error(e))?;
                    self.outcome.ok += 1;
                }
                status::TOO_LARGE => {
                    let message = String::from_utf8_lossy(bytes).into_owned();
                    self.record(item, ErrorKind::TooLarge, &message, Some(worker))?;
                }
                _ => {
                    let kind = if code == status::PANIC {
                        ErrorKind::Panic
                    } else {
                        ErrorKind::TaskError
                    };
                    let message = String::from_utf8_lossy(bytes).into_owned();
                    self.fail(item, chunk.input(position), kind, message, worker, None)?;
                }
            }
        }
        Ok(())
    }

    /// One line of the joblog (when it is kept): `timing` is when the task started (µs since
    /// the epoch) and how long it ran (ns).
    fn log_attempt(
        &mut self,
        item: Item,
        worker: Option<WorkerId>,
        timing: Option<(u64, u64)>,
        outcome: &str,
        rss: Option<u64>,
    ) {
        let Some(joblog) = self.joblog.as_deref_mut() else {
            return;
        };
        let identity = match worker {
            Some(w) => {
                if !self.identities.contains_key(&w) {
                    if let Some(id) = self.pool.identity(w) {
                        self.identities.insert(w, id);
                    }
                }
                self.identities.get(&w)
            }
            None => None,
        };
        joblog.record(&Attempt {
            index: item.index,
            source: item.source,
            attempt: item.attempts + 1,
            worker,
            pid: identity.map(|(pid, _)| *pid),
            host: identity.map(|(_, host)| host.as_str()),
            start_us: timing.map(|(start, _)| start),
            duration_ns: timing.map(|(_, ran)| ran),
            outcome,
            rss,
        });
    }

    /// Keeps an answered chunk's buffer for the next chunk (no allocation per chunk on the hot
    /// path). Answered, so fully written: the pool holds no reference any more.
    fn recycle_frame(&mut self, frame: Arc<Vec<u8>>) {
        if let Ok(frame) = Arc::try_unwrap(frame) {
            if self.spare_frames.len() < SPARE_FRAMES && frame.capacity() <= SPARE_FRAME_BYTES {
                self.spare_frames.push(frame);
            }
        }
    }

    fn on_exit(&mut self, exit: WorkerExit, now: Instant) -> Result<(), RunError> {
        if let Some(identity) = exit.identity.clone() {
            self.identities.insert(exit.worker, identity);
        }
        let died = exit.reason.is_none_or(StopReason::is_failure);
        let decided = self.book.seat(exit.worker, now).blame.take();
        let blame = match exit.reason {
            None | Some(StopReason::BrokenStream) => self.book.blame(exit.worker, exit.progress),
            Some(StopReason::LostResults) => self.book.blame_lost(exit.worker, exit.progress),
            Some(StopReason::Timeout) => decided.unwrap_or(Blame::Nobody),
            Some(_) => Blame::Nobody,
        };
        let bystanders = if died {
            self.book.bystanders(exit.worker, &blame)
        } else {
            Vec::new()
        };
        let (_, chunks) = self.book.remove_worker(exit.worker);
        if died && !exit.was_ready {
            self.start_death(&exit)?;
        } else if died && blame == Blame::Nobody {
            self.lost_death(&exit)?;
        }
        for (id, chunk) in chunks {
            for position in chunk.received..chunk.items.len() as u32 {
                let mut item = chunk.items[position as usize];
                let input = chunk.input(position);
                match &blame {
                    Blame::Item {
                        chunk: c,
                        position: p,
                        running,
                    } if *c == id && *p == position => {
                        let (kind, message) = self.exit_record(&exit, item.index, *running);
                        // When it started, if the runner saw it run.
                        let timing = match exit.progress {
                            Progress::Running { since, .. } if *running => {
                                let ran = now.saturating_duration_since(since);
                                let start =
                                    sys::unix_micros().saturating_sub(ran.as_micros() as u64);
                                Some((start, ran.as_nanos() as u64))
                            }
                            _ => None,
                        };
                        self.log_attempt(
                            item,
                            Some(exit.worker),
                            timing,
                            kind.as_str(),
                            exit.peak_rss,
                        );
                        // A crash needs a fresh worker for the retry; a lost node does not
                        // (the task did nothing to the worker).
                        let fresh = (!exit.node_lost).then_some(now);
                        self.fail(item, input, kind, message, exit.worker, fresh)?;
                        continue;
                    }
                    Blame::Suspects(suspects) if suspects.contains(&(id, position)) => {
                        self.log_attempt(item, Some(exit.worker), None, "lost", None);
                        item.witnessed = item.witnessed.saturating_add(1);
                        item.isolated = true;
                    }
                    _ if bystanders.contains(&(id, position)) => {
                        self.log_attempt(item, Some(exit.worker), None, "lost", None);
                        // Its result was lost with the worker. Twice is no coincidence: it
                        // runs alone from now on (a task that kills its worker after returning).
                        item.witnessed = item.witnessed.saturating_add(1);
                        item.isolated |= item.witnessed >= 2;
                    }
                    _ => {}
                }
                // Never started, or its result was lost: it runs again, no attempt counted.
                if self.outcome.stopped.is_none() {
                    self.requeue.push_back(Pending {
                        item,
                        input: input.to_vec(),
                        newer_than: None,
                    });
                }
            }
            self.recycle_frame(chunk.frame);
        }
        Ok(())
    }

    /// A worker died before it was ready: replaced, unless it is the second death in a row of
    /// the same kind (an initializer that segfaults, not a kill from outside), or the
    /// [`START_DEATH_LIMIT`]th in a row of any kind.
    fn start_death(&mut self, exit: &WorkerExit) -> Result<(), RunError> {
        self.start_deaths += 1;
        let again = self.last_start_death.replace(exit.end) == Some(exit.end);
        let what = match self.job.stage.settings.initializer.as_ref() {
            Some(init) => format!("while loading plugins or running initializer {}", init.task),
            None => "while loading plugins".to_owned(),
        };
        let last = format!(
            "worker {} ({}) {} {what}",
            exit.worker, exit.process, exit.end
        );
        if self.start_deaths < START_DEATH_LIMIT && !again {
            self.console.debug(&format!(
                "stage {}: {last}; starting another",
                self.stage_name()
            ));
            return Ok(());
        }
        let message = if again {
            format!("{last}; the worker before it died the same way")
        } else {
            format!(
                "{} workers in a row died while starting; the last: {last}",
                self.start_deaths
            )
        };
        self.stop(
            StageStop::WorkerStart(message.clone()),
            ErrorKind::Initializer,
            &message,
        )
    }

    /// A worker died holding nothing that ran: replaced, unless that keeps happening.
    fn lost_death(&mut self, exit: &WorkerExit) -> Result<(), RunError> {
        self.lost_deaths += 1;
        let limit = lost_death_limit(self.pool.target_size());
        if self.lost_deaths < limit {
            return Ok(());
        }
        let message = format!(
            "{} workers in a row died without running a task; the last: worker {} ({}) {}{}",
            self.lost_deaths,
            exit.worker,
            exit.process,
            exit.end,
            exit.detail
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        );
        self.stop(
            StageStop::WorkersLost(message.clone()),
            ErrorKind::Crashed,
            &message,
        )
    }

    /// Stops the stage for good; says why with one record at the first index that has none
    /// yet, when nothing is in flight that could still fill it.
    fn stop(&mut self, why: StageStop, kind: ErrorKind, message: &str) -> Result<(), RunError> {
        if self.outcome.stopped.is_some() {
            return Ok(());
        }
        self.outcome.stopped = Some(why);
        // The lowest index without a record: a requeued one, or the next not handed out (past
        // those a resumed run already recorded).
        let mut next = self.next_index;
        while next < self.job.total && self.writer.is_done(next) {
            next += 1;
        }
        // (An input not read yet has no known source record.)
        let (index, source) = self
            .requeue
            .iter()
            .map(|p| (p.item.index, p.item.source))
            .min_by_key(|(index, _)| *index)
            .filter(|(index, _)| *index < next)
            .unwrap_or((next, None));
        if index < self.job.total && self.book.is_empty() {
            self.writer
                .error(index, source, kind, message, 1)
                .map_err(|e| self.write_error(e))?;
            // Its FAIL line says it: said once.
            self.count_failure(index, kind, message, 1, None);
        } else {
            self.console
                .error(&format!("stage {}: {message}", self.stage_name()));
        }
        self.requeue.clear();
        Ok(())
    }

    /// The record of the item a worker's end is blamed on.
    fn exit_record(&self, exit: &WorkerExit, index: u64, running: bool) -> (ErrorKind, String) {
        let task = &self.job.stage.task;
        let worker = format!("worker {} ({})", exit.worker, exit.process);
        match exit.reason {
            Some(StopReason::Timeout) => {
                let limit = self
                    .job
                    .stage
                    .settings
                    .task_timeout
                    .map(|t| humantime::format_duration(t).to_string())
                    .unwrap_or_default();
                let message = if running {
                    format!(
                        "task {task} on input {index} exceeded the task timeout ({limit}); {worker} was stopped"
                    )
                } else {
                    format!(
                        "the result of task {task} on input {index} did not arrive within the task timeout ({limit}); {worker} was stopped"
                    )
                };
                (ErrorKind::Timeout, message)
            }
            Some(StopReason::BrokenStream | StopReason::LostResults) => {
                let why = exit.detail.as_deref().unwrap_or("its result stream broke");
                let message = if running {
                    format!(
                        "{worker} {} while running task {task} on input {index}: the runner ended it because {why}",
                        exit.end
                    )
                } else {
                    format!(
                        "the result of task {task} on input {index} was lost: the runner ended {worker} ({}) because {why}",
                        exit.end
                    )
                };
                (ErrorKind::Crashed, message)
            }
            _ => {
                let peak = exit
                    .peak_rss
                    .map_or_else(|| "unknown".to_owned(), sys::format_bytes);
                let when = if running {
                    "while running"
                } else {
                    "after running (before its result arrived)"
                };
                // The runner ended it (its end says nothing of what happened): say why.
                let how = match &exit.detail {
                    Some(why) => format!("was lost {when} task {task} on input {index}: {why}"),
                    None => format!("{} {when} task {task} on input {index}", exit.end),
                };
                (
                    ErrorKind::Crashed,
                    format!("{worker} {how}; its peak RSS was {peak}"),
                )
            }
        }
    }

    /// A failed attempt: retry it if attempts remain, else record it.
    fn fail(
        &mut self,
        item: Item,
        input: &[u8],
        kind: ErrorKind,
        message: String,
        worker: WorkerId,
        // Some(now): it needs a worker newer than `worker` (it crashed or timed out there).
        needs_fresh_worker: Option<Instant>,
    ) -> Result<(), RunError> {
        let attempts = item.attempts + 1;
        if attempts <= self.job.stage.settings.retries && self.outcome.stopped.is_none() {
            self.outcome.retried += 1;
            self.events.emit(&Event::TaskRetried {
                stage: self.stage_name(),
                index: item.index,
                attempt: attempts + 1,
                kind: kind.as_str(),
                message: &message,
            });
            self.live_line(format_args!(
                "RETRY {}[{}] (attempt {} next): {}: {message}",
                self.stage_name(),
                item.index,
                attempts + 1,
                kind.as_str()
            ));
            self.requeue.push_back(Pending {
                item: Item { attempts, ..item },
                input: input.to_vec(),
                newer_than: needs_fresh_worker.map(|at| (worker, at)),
            });
            return Ok(());
        }
        self.record(Item { attempts, ..item }, kind, &message, Some(worker))
    }

    /// Writes a failure record (no retry).
    fn record(
        &mut self,
        item: Item,
        kind: ErrorKind,
        message: &str,
        worker: Option<WorkerId>,
    ) -> Result<(), RunError> {
        let attempts = item.attempts.max(1);
        self.writer
            .error(item.index, item.source, kind, message, attempts)
            .map_err(|e| self.write_error(e))?;
        self.count_failure(item.index, kind, message, attempts, worker);
        if self.job.stage.settings.on_error == OnError::Fail && self.outcome.stopped.is_none() {
            self.outcome.stopped = Some(StageStop::FirstFailure);
            self.requeue.clear();
            // What runs now finishes and is recorded; nothing queued behind it starts.
            self.refresh_views();
            for w in std::mem::take(&mut self.views) {
                if w.phase != Phase::Stopping {
                    self.pool.stop_after_current(w.id, StopReason::StageStopped);
                }
            }
        }
        Ok(())
    }

    fn count_failure(
        &mut self,
        index: u64,
        kind: ErrorKind,
        message: &str,
        attempts: u32,
        worker: Option<WorkerId>,
    ) {
        self.outcome.count_failure(index, kind, message);
        self.events.emit(&Event::TaskFailed {
            stage: self.stage_name(),
            index,
            kind: kind.as_str(),
            message,
            attempts,
            worker,
        });
        self.live_line(format_args!(
            "FAIL  {}[{index}]: {}: {message}",
            self.stage_name(),
            kind.as_str()
        ));
    }

    /// A failure or a retry as it happens, for the first [`LIVE_LINES`] of a stage (the bars
    /// and progress lines count the rest; the summary lists the first failures by index).
    fn live_line(&mut self, line: std::fmt::Arguments<'_>) {
        self.live_shown += 1;
        if self.live_shown <= LIVE_LINES {
            self.console.notice(&line.to_string());
        } else if self.live_shown == LIVE_LINES + 1 {
            self.console.notice(&format!(
                "      (more failures and retries of stage {} are counted, not shown; they are in its records)",
                self.stage_name()
            ));
        }
    }

    /// Without bars (a log file, a batch job): a line every `progress_every` saying how far the
    /// stage is, so a long stage is not silent.
    fn progress_line(&mut self, now: Instant) {
        let Some(every) = self.job.progress_every else {
            return;
        };
        if self.console.draws_bars()
            || now.saturating_duration_since(self.last_progress_line) < every
        {
            return;
        }
        self.last_progress_line = now;
        let p = self.stage_progress(now);
        let eta = match p.eta_s {
            None => "?".to_owned(),
            Some(s) => humantime::format_duration(Duration::from_secs(s.ceil() as u64)).to_string(),
        };
        let pct = if p.total == 0 {
            100.0
        } else {
            p.done as f64 * 100.0 / p.total as f64
        };
        let allocations = live::allocations_summary(&p.allocations)
            .map(|a| format!("; {a}"))
            .unwrap_or_default();
        self.console.info(&format!(
            "      {}: {}/{} ({pct:.0}%), {} failed, {} retried, {:.0} tasks/s, ETA {eta}{allocations}",
            p.name, p.done, p.total, p.failed, p.retried, p.tasks_per_s
        ));
    }

    // ---- timers --------------------------------------------------------------------------

    /// Task timeouts, idle timeouts and recycling. Returns the earliest time something is due,
    /// so the event wait can end then.
    pub fn tick(&mut self, now: Instant) -> Option<Instant> {
        let settings = &self.job.stage.settings;
        let (task_timeout, idle_timeout) = (settings.task_timeout, settings.idle_timeout);
        let mut next = self.interrupt_kill_at;
        let mut due = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        self.refresh_views();
        let views = std::mem::take(&mut self.views);
        for w in views.iter().filter(|w| w.phase == Phase::Ready) {
            let held = self.book.held(w.id) > 0;
            if held {
                if let Some(limit) = task_timeout {
                    if let Some(at) = self.check_timeout(w.id, limit, now) {
                        due(at);
                    }
                }
                continue;
            }
            let seat = self.book.seat(w.id, now);
            if let Some(reason) = seat.recycle {
                self.pool.retire(w.id, reason);
            } else if let Some(idle) = idle_timeout {
                let at = seat.idle_since + idle;
                if at <= now {
                    self.pool.retire(w.id, StopReason::IdleTimeout);
                } else {
                    due(at);
                }
            }
        }
        self.views = views;
        next
    }

    /// Stops a worker whose item ran past the limit, or whose result is that late; returns
    /// when it will be due otherwise.
    fn check_timeout(
        &mut self,
        worker: WorkerId,
        limit: Duration,
        now: Instant,
    ) -> Option<Instant> {
        let progress = self.pool.progress(worker);
        let seat = self.book.seat_ref(worker)?;
        if seat.blame.is_some() {
            return None;
        }
        // The running item's own start when the runner can see it; otherwise the oldest
        // unreported item started after the worker's last results (or after it got work).
        let started = match progress {
            Progress::Running { since, .. } => since,
            Progress::Between { .. } | Progress::Unknown => seat.active_since,
        };
        let at = started + limit;
        if now < at {
            return Some(at);
        }
        let blame = self.book.blame(worker, progress);
        self.book.seat(worker, now).blame = Some(blame);
        self.pool
            .terminate(worker, StopReason::Timeout, TIMEOUT_KILL_GRACE);
        Some(now + TIMEOUT_KILL_GRACE)
    }

    /// Marks a worker for recycling when its RSS grew too much (the pool rate-limits the reads).
    fn check_memory(&mut self, worker: WorkerId, now: Instant) {
        let Some(limit) = self.job.stage.settings.max_memory_growth else {
            return;
        };
        if self.book.seat(worker, now).recycle.is_some() {
            return;
        }
        if let Some(m) = self.pool.memory(worker) {
            if m.rss > m.baseline.saturating_add(limit) {
                self.book.seat(worker, now).recycle = Some(StopReason::MemoryGrowth);
            }
        }
    }
}

#[cfg(test)]
mod tests;

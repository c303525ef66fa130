//! The pool of worker processes, kept alive across stages like loky's reusable executor.
//!
//! The pool is the one owner of its workers: their processes, pipes or connections, state,
//! and what can be seen of them (progress slot, RSS, where they run). The dispatcher of the
//! running stage reaches it through [`WorkerPool`] and hears from it through [`PoolEvent`]s
//! (see [`api`]). Results are read by the dispatcher's own thread through one epoll set
//! ([`inbox`]); exits come from small reaper threads that wake the same epoll; each worker's
//! stdout/stderr is forwarded line by line by a thread of its own.
//!
//! The pool also guards the result streams: a worker that writes something that is not a
//! frame, or whose results never arrive although it wrote them (a task closed or redirected
//! its result descriptor), is ended with [`StopReason::BrokenStream`], and its exit says so.

pub mod alloc;
pub mod api;
pub mod decision;
pub mod inbox;
pub mod slurm;
pub mod spawn;
mod worker;

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, BufReader};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

pub use api::{
    Memory, Phase, PoolCounters, PoolError, PoolEvent, Progress, StartFailure, StopReason,
    WorkerExit, WorkerId, WorkerPool, WorkerView,
};
pub use decision::{Decision, WorkerSpec, decide};

use crate::config::Launcher;
use crate::console::Console;
use crate::events::{Event, EventLog};
use crate::guardian::Guardian;
use crate::protocol::{Cursor, FrameBuf, InitMsg, ReadyMsg, ResultsHeader, StageMsg, tag};
use crate::sys::{self, ProcessEnd};
use crate::transport::Listener;
use inbox::{Inbox, Outbox, Poller, Pumped};
use worker::{Drained, Endpoint, Worker};

/// A worker's exit as its reaper thread saw it.
struct Reaped {
    worker: WorkerId,
    end: ProcessEnd,
    peak_rss: u64,
}

pub struct Pool {
    spec: Option<WorkerSpec>,
    size: usize,
    /// The stage the pool works for (`LOKY_STAGE` of new workers), and its STAGE frame (sent
    /// to every worker, new ones after their INIT).
    stage: String,
    stage_frame: Vec<u8>,
    workers: BTreeMap<WorkerId, Worker>,
    next_id: WorkerId,
    events: EventLog,
    console: Arc<Console>,
    reaped_tx: Sender<Reaped>,
    reaped_rx: Receiver<Reaped>,
    /// Waits on every worker's result stream and on the reapers' wakeups.
    poller: Poller,
    /// Events worked out and not yet handed out, oldest first.
    ready: VecDeque<PoolEvent>,
    woken: Vec<u64>,
    frame: FrameBuf,
    counters: PoolCounters,
    /// Bound on first use by a remote launcher, kept for the pool's life.
    listener: Option<Listener>,
    /// Worker steps submitted and not yet connected, with the ids they will have.
    starting: Vec<(WorkerId, slurm::PendingStep)>,
    /// When the result streams were last checked for lost results.
    lost_checked: Instant,
    /// Ends the local workers' process groups if the runner dies (started with the first).
    guardian: Option<Arc<Guardian>>,
    guardian_tried: bool,
    /// Slurm outside an allocation: the allocations the pool asked for (see [`alloc`]).
    allocs: Option<alloc::Allocations>,
    /// When the allocations were last looked after.
    allocs_tended: Option<Instant>,
}

/// Poller token bit: a worker's command side has room (the low bits are its id).
const WRITABLE: u64 = 1 << 32;

/// How long an exited worker's last output may take to be forwarded.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// How long a graceful stop may take before the workers are killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// How often the allocations are looked after when the dispatcher does not ask for workers.
const TEND_BETWEEN_EVERY: Duration = Duration::from_secs(1);

/// How often the pool looks for results that workers wrote and that never arrived.
const LOST_CHECK_EVERY: Duration = Duration::from_millis(100);

impl Pool {
    pub fn new(events: EventLog, console: Arc<Console>) -> io::Result<Self> {
        let (reaped_tx, reaped_rx) = crossbeam_channel::unbounded();
        Ok(Self {
            spec: None,
            size: 0,
            stage: String::new(),
            stage_frame: Vec::new(),
            workers: BTreeMap::new(),
            next_id: 1,
            events,
            console,
            reaped_tx,
            reaped_rx,
            poller: Poller::new()?,
            ready: VecDeque::new(),
            woken: Vec::new(),
            frame: FrameBuf::new(),
            counters: PoolCounters::default(),
            listener: None,
            starting: Vec::new(),
            lost_checked: Instant::now(),
            guardian: None,
            guardian_tried: false,
            allocs: None,
            allocs_tended: None,
        })
    }

    pub fn spec(&self) -> Option<&WorkerSpec> {
        self.spec.as_ref()
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Workers that are alive and not being stopped.
    fn active_count(&self) -> usize {
        self.workers.values().filter(|w| !w.is_stopping()).count()
    }

    /// Carries out a decision before a stage: stop everything for a restart, retire extra
    /// workers for a shrink; new workers are started on demand by [`WorkerPool::fill`].
    /// `timing`: workers report when each task started and how long it ran (a joblog is
    /// kept).
    pub fn apply(
        &mut self,
        decision: &Decision,
        spec: WorkerSpec,
        size: usize,
        stage: &str,
        timing: bool,
    ) {
        if matches!(decision, Decision::Restart { .. }) {
            self.counters.restarts += 1;
            self.stop_all(StopReason::Restart);
        }
        // A stage that no longer runs on allocations asked for on demand (back to the local
        // launcher, say) has no use for them: they are not held for later stages.
        if spec.on_demand.is_none() {
            self.end_allocations();
        }
        self.spec = Some(spec);
        self.size = size;
        stage.clone_into(&mut self.stage);
        // Shrink: steps still starting are given up first, then the extra workers retire,
        // newest first (older ones are warmer).
        let keep = size
            .saturating_sub(self.active_count())
            .min(self.starting.len());
        if keep < self.starting.len() {
            slurm::abandon(self.starting.drain(keep..).map(|(_, step)| step));
        }
        let extra = self.active_count().saturating_sub(size);
        let victims: Vec<WorkerId> = self
            .workers
            .iter()
            .rev()
            .filter(|(_, w)| !w.is_stopping())
            .take(extra)
            .map(|(id, _)| *id)
            .collect();
        for id in victims {
            self.retire(id, StopReason::Resize);
        }
        self.stage_frame = self
            .frame
            .json(
                tag::STAGE,
                &StageMsg {
                    name: stage.to_owned(),
                    timing,
                },
            )
            .to_vec();
        let ids: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.is_stopping())
            .map(|(id, _)| *id)
            .collect();
        let frame = self.stage_frame.clone();
        for id in ids {
            self.send_to(id, &frame);
        }
    }

    /// Takes in the worker steps that connected, and drops those that failed: a warning, and
    /// the pool goes on with fewer workers, unless it has none (then the error is the run's).
    /// Waits only while the pool has no worker at all; with one, the stage runs and slower
    /// steps join later (a step may wait for CPUs that the allocation does not have free).
    fn poll_starting(&mut self) -> Result<(), PoolError> {
        while !self.starting.is_empty() {
            let block = self.active_count() == 0;
            let mut failed = None;
            let mut i = 0;
            while i < self.starting.len() {
                // With no worker yet, wait in short slices on the first step: any of them may
                // connect first (2-step start: 23.5 ms median; 29.3 with 20 ms slices).
                let wait = if block && i == 0 {
                    Duration::from_millis(2)
                } else {
                    Duration::ZERO
                };
                match self.starting[i].1.poll(wait) {
                    Ok(None) => i += 1,
                    Ok(Some(spawned)) => {
                        let (id, _spent) = self.starting.remove(i);
                        self.register(id, spawned).map_err(PoolError::Slurm)?;
                    }
                    // The stage sees the interrupt next (and reports it as one, whatever else
                    // failed): the steps not yet connected are ended, all at once.
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                        self.abandon_starting();
                        return Ok(());
                    }
                    Err(e) => {
                        self.starting.remove(i);
                        failed.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = failed {
                let left = self.active_count() + self.starting.len();
                if left == 0 {
                    return Err(PoolError::Slurm(e));
                }
                self.console.warn(&format!(
                    "a worker step could not start ({e}); going on with {left} of {} workers",
                    self.size
                ));
                // The next stage that asks for the full size tries again.
                self.size = left;
            }
            if self.active_count() > 0 {
                break;
            }
        }
        Ok(())
    }

    /// Ends the worker steps still starting.
    fn abandon_starting(&mut self) {
        if !self.starting.is_empty() {
            slurm::abandon(self.starting.drain(..).map(|(_, step)| step));
        }
    }

    /// The guardian, started on first use (once: a failure is not retried).
    fn guardian(&mut self) -> Option<&Arc<Guardian>> {
        if !self.guardian_tried {
            self.guardian_tried = true;
            self.guardian = Guardian::start().map(Arc::new);
        }
        self.guardian.as_ref()
    }

    fn take_id(&mut self) -> WorkerId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Takes a started worker into the pool: its output thread, its INIT message. If that
    /// fails (out of threads or descriptors), the process is ended, not left behind.
    fn register(&mut self, id: WorkerId, spawned: spawn::SpawnedWorker) -> io::Result<()> {
        let (pid, remote) = (spawned.pid, spawned.remote.is_some());
        self.try_register(id, spawned).inspect_err(|_| {
            if remote {
                // srun ends its step on SIGTERM; SIGKILL only if it does not.
                spawn::end_gracefully(&[pid], STOP_GRACE);
            } else {
                spawn::kill_group(pid, libc::SIGKILL);
            }
            spawn::reap(pid);
        })
    }

    fn try_register(&mut self, id: WorkerId, spawned: spawn::SpawnedWorker) -> io::Result<()> {
        let spec = self
            .spec
            .clone()
            .ok_or_else(|| io::Error::other("the pool has no worker settings"))?;
        let pid = spawned.pid;
        let socket = spawned.remote.is_some();
        let endpoint = match (spawned.progress, spawned.remote) {
            (_, Some(conn)) => Endpoint::remote(conn),
            (Some(slot), None) => Endpoint::local(slot),
            (None, None) => return Err(io::Error::other("a local worker without a slot")),
        };
        let inbox = Inbox::new(spawned.results, socket)?;
        self.poller.add(inbox.fd(), u64::from(id))?;
        let output = spawned.output;
        let console = self.console.clone();
        let drained = Arc::new(Drained::default());
        let signal = drained.clone();
        let spawned_thread = std::thread::Builder::new()
            .name(format!("worker-{id}-output"))
            .spawn(move || {
                for line in BufReader::new(output).split(b'\n') {
                    let Ok(line) = line else { break };
                    if socket {
                        if let Some(failure) = slurm::node_failure(&line) {
                            signal.note_node_failure(failure);
                        }
                    }
                    console.worker_line(id, &line);
                }
                signal.set();
            });
        if let Err(e) = spawned_thread {
            self.poller.remove(inbox.fd());
            return Err(e);
        }
        let commands = Outbox::new(spawned.commands, socket)?;
        self.workers
            .insert(id, Worker::new(id, pid, endpoint, commands, inbox, drained));
        let init = InitMsg {
            worker_id: id,
            plugins: spec.plugins.clone(),
            initializer: spec.initializer.clone(),
        };
        // A worker that died at once shows up as an exit; a failed write says nothing more.
        let init = self.frame.json(tag::INIT, &init).to_vec();
        self.send_to(id, &init);
        if !self.stage_frame.is_empty() {
            let stage = self.stage_frame.clone();
            self.send_to(id, &stage);
        }
        self.events.emit(&Event::WorkerStarted {
            worker: id,
            pid,
            stage: &self.stage,
            launcher: launcher_name(spec.launcher),
        });
        Ok(())
    }

    /// Sends a prepared frame to a worker, never blocking: what its pipe cannot take now goes
    /// out as it reads (see [`Outbox`]). A failed write means the worker died; its exit event
    /// follows and is handled there.
    fn send_to(&mut self, id: WorkerId, frame: &[u8]) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let waits = w.commands().push(frame);
        self.watch_commands(id, waits);
    }

    /// Registers a worker's command side for room to write when something waits for it.
    fn watch_commands(&mut self, id: WorkerId, waits: bool) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let commands = w.commands();
        if waits && !commands.watching {
            commands.watching = self
                .poller
                .add_writable(commands.fd(), u64::from(id) | WRITABLE)
                .is_ok();
        }
    }

    /// A worker's command pipe has room: writes what waits for it.
    fn flush_commands(&mut self, id: WorkerId) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let commands = w.commands();
        if !commands.flush() && commands.watching {
            self.poller.remove(commands.fd());
            commands.watching = false;
        }
    }

    /// A control frame without payload.
    fn bare_frame(&mut self, tag: u8) -> Vec<u8> {
        self.frame.begin(tag);
        self.frame.finish().to_vec()
    }

    /// Reads what a worker sent; when its stream closes, a reaper thread waits for its exit.
    fn pump(&mut self, id: WorkerId) -> Pumped {
        let Some(w) = self.workers.get_mut(&id) else {
            return Pumped::Closed;
        };
        let Some(inbox) = w.inbox() else {
            return Pumped::Closed;
        };
        let mut frames = Vec::new();
        let pumped = inbox.pump(|frame| frames.push(frame));
        for frame in frames {
            self.on_frame(id, frame);
        }
        match pumped {
            Pumped::Open | Pumped::More => return pumped,
            Pumped::Closed => {
                if let Some(w) = self.workers.get_mut(&id) {
                    // Everything the stream carried was read: results it wrote and that did
                    // not come went elsewhere (its descriptor was redirected).
                    let timed_out = w.inbox().is_some_and(|i| i.timed_out());
                    match w.lost_results() {
                        Some(missing) => w.lose_results(missing),
                        None => w.stream_closed(timed_out),
                    }
                }
            }
            Pumped::Corrupt => {
                if let Some(w) = self.workers.get_mut(&id) {
                    // Nothing it says can be trusted any more, and it may be waiting for us.
                    w.break_stream(
                        "it wrote something that is not a frame on its result descriptor".into(),
                    );
                }
            }
        }
        self.start_reaper(id);
        pumped
    }

    /// One frame read from a worker.
    fn on_frame(&mut self, id: WorkerId, frame: Vec<u8>) {
        match frame[0] {
            tag::RESULTS => {
                let header = ResultsHeader::read(&mut Cursor::new(&frame[1..]));
                let Some(w) = self.workers.get_mut(&id) else {
                    return;
                };
                match header {
                    Ok(h) => {
                        w.on_results(h.count, h.rss);
                        self.ready
                            .push_back(PoolEvent::Results { worker: id, frame });
                    }
                    Err(_) => w.break_stream("it sent a results frame that is too short".into()),
                }
            }
            tag::READY => self.on_ready(id, &frame[1..]),
            _ => {}
        }
    }

    fn on_ready(&mut self, id: WorkerId, payload: &[u8]) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        match serde_json::from_slice::<ReadyMsg>(payload) {
            // Said once, at the start: a worker saying it again is not following the protocol.
            Ok(_) if w.is_ready() => w.break_stream("it sent a second ready message".into()),
            Ok(ReadyMsg::Ready {
                pid,
                host,
                slurm_job,
                slurm_step,
            }) => {
                let step = match (&slurm_job, &slurm_step) {
                    (Some(job), Some(step)) => Some(format!("{job}.{step}")),
                    _ => None,
                };
                w.on_ready(pid, &host, step);
                self.events.emit(&Event::WorkerReady {
                    worker: id,
                    pid,
                    host: &host,
                    slurm_job: slurm_job.as_deref(),
                    slurm_step: slurm_step.as_deref(),
                });
                self.ready.push_back(PoolEvent::Ready { worker: id });
            }
            Ok(ReadyMsg::Failed { kind, message }) => {
                let failure = if kind == "initializer" {
                    StartFailure::Initializer
                } else {
                    StartFailure::Plugin
                };
                w.mark_stopping(match failure {
                    StartFailure::Initializer => StopReason::Initializer,
                    StartFailure::Plugin => StopReason::Plugin,
                });
                self.ready.push_back(PoolEvent::StartFailed {
                    worker: id,
                    failure,
                    message,
                });
            }
            Err(e) => w.break_stream(format!("its ready message is not valid ({e})")),
        }
    }

    /// The worker's result stream is closed: stop watching it, and wait for its exit on a
    /// thread (a blocking `waitid`), which wakes the poller when it is reaped.
    fn start_reaper(&mut self, id: WorkerId) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if let Some(inbox) = w.close_inbox() {
            self.poller.remove(inbox.fd());
        }
        let commands = w.commands();
        if commands.watching {
            self.poller.remove(commands.fd());
            commands.watching = false;
        }
        let (pid, reaped, read_end) = (w.pid(), w.exited_flag(), w.end_reader());
        let (tx, waker) = (self.reaped_tx.clone(), self.poller.waker());
        let guardian = (!w.is_remote()).then(|| self.guardian.clone()).flatten();
        let reap = move || {
            let (end, peak_rss) = wait_and_reap(pid, &reaped, guardian.as_deref());
            Reaped {
                worker: id,
                end: read_end(end),
                peak_rss,
            }
        };
        let reap_now = std::thread::Builder::new()
            .name(format!("worker-{id}-reaper"))
            .spawn({
                let reap = reap.clone();
                move || {
                    let _ = tx.send(reap());
                    waker.wake();
                }
            })
            .is_err();
        if reap_now {
            // No thread to spare: reap here (the stream closed, so the process is ending).
            let reaped = reap();
            let _ = self.reaped_tx.send(reaped);
        }
    }

    /// Takes a reaped worker out of the pool and works out its exit, once.
    fn on_reaped(&mut self, reaped: Reaped) -> Option<PoolEvent> {
        let mut w = self.workers.remove(&reaped.worker)?;
        // Its slot is final now: results it wrote after the last check and that never came.
        if w.stop_reason().is_none() {
            if let Some(missing) = w.lost_results() {
                w.lose_results(missing);
            }
        }
        // What it printed last is forwarded before its exit is reported (and before the run
        // ends). Bounded: a plugin's daemonized child could keep the pipe open.
        w.output_drained().wait(OUTPUT_DRAIN_LIMIT);
        let peak_rss = w.peak_rss(reaped.peak_rss);
        let reason = w.stop_reason();
        if reason.is_none_or(StopReason::is_replacement) {
            self.counters.replaced += 1;
        }
        let (signal, exit_code) = match reaped.end {
            ProcessEnd::Signal(s) => (Some(sys::signal_name(s)), None),
            ProcessEnd::Exit(c) => (None, Some(c)),
        };
        self.events.emit(&Event::WorkerExited {
            worker: reaped.worker,
            pid: w.pid(),
            reason: reason.map_or("crashed", StopReason::as_str),
            signal,
            exit_code,
            peak_rss: peak_rss.unwrap_or(0),
            tasks: w.results_read(),
        });
        let detail = w.take_detail();
        Some(PoolEvent::Exited(WorkerExit {
            worker: reaped.worker,
            reason,
            detail,
            node_lost: w.node_lost(),
            end: reaped.end,
            peak_rss,
            was_ready: w.was_ready(),
            progress: w.progress(),
            process: w.describe(),
            identity: w.identity(),
        }))
    }

    /// Local workers whose slot says they wrote more results than arrived: after reading
    /// everything their pipe holds, any still missing went somewhere else (a task closed or
    /// redirected the result descriptor), and would be waited for forever.
    fn check_lost_results(&mut self) {
        let suspects: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.has_exited())
            .filter(|(_, w)| w.results_written().is_some_and(|n| n > w.results_read()))
            .map(|(id, _)| *id)
            .collect();
        for id in suspects {
            // Read first what was written before the count was published (it is in the pipe).
            let Some(written) = self.workers.get(&id).and_then(Worker::results_written) else {
                continue;
            };
            let closed = self
                .workers
                .get_mut(&id)
                .is_some_and(|w| w.inbox().is_none());
            if closed {
                // Its stream was read to its end: what it wrote since went elsewhere.
                if let Some(w) = self.workers.get_mut(&id) {
                    w.lose_results(written.saturating_sub(w.results_read()));
                }
                continue;
            }
            if self.pump(id) != Pumped::Open {
                continue;
            }
            let Some(w) = self.workers.get_mut(&id) else {
                continue;
            };
            let partial = w.inbox().is_none_or(|inbox| inbox.holds_partial());
            if !partial && written > w.results_read() {
                w.lose_results(written.saturating_sub(w.results_read()));
            }
        }
    }

    /// The next event worked out: frames first, then exits (a worker's frames were all read
    /// before its reaper started, so its exit comes after them).
    fn take_ready(&mut self) -> Option<PoolEvent> {
        if let Some(event) = self.ready.pop_front() {
            return Some(event);
        }
        while let Ok(reaped) = self.reaped_rx.try_recv() {
            if let Some(event) = self.on_reaped(reaped) {
                return Some(event);
            }
        }
        None
    }

    /// SIGKILLs stopped workers whose grace period is over; returns the earliest pending
    /// deadline.
    fn escalate_kills(&mut self, now: Instant) -> Option<Instant> {
        self.workers
            .values_mut()
            .filter_map(|w| w.escalate(now))
            .min()
    }

    /// Waits up to `timeout` for results, exits, or room to write.
    fn wait(&mut self, timeout: Duration) {
        let mut woken = std::mem::take(&mut self.woken);
        woken.clear();
        if self
            .poller
            .wait(timeout, |token| woken.push(token))
            .is_err()
        {
            // Not expected (EBADF, EINVAL); do not spin.
            std::thread::sleep(timeout.min(Duration::from_millis(10)));
        }
        for token in &woken {
            if token & WRITABLE != 0 {
                self.flush_commands(*token as WorkerId);
            } else {
                self.pump(*token as WorkerId);
            }
        }
        self.woken = woken;
    }

    /// Stops every worker: a graceful shutdown message, then SIGKILL for those still alive
    /// after a grace period. Waits until all are reaped.
    pub fn stop_all(&mut self, reason: StopReason) {
        // First, so that no step takes a CPU a retiring worker frees.
        self.abandon_starting();
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in &ids {
            self.retire(*id, reason);
        }
        self.wait_until_empty(STOP_GRACE);
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            self.kill(id, reason);
        }
        self.wait_until_empty(Duration::from_secs(10));
        // Nothing is listening for these any more.
        self.ready.clear();
    }

    fn wait_until_empty(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.workers.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = self.next_event(left);
        }
    }

    /// Ends the pool at the end of a run.
    pub fn shutdown(&mut self) {
        self.stop_all(StopReason::Shutdown);
        self.end_allocations();
        self.spec = None;
        self.size = 0;
    }

    /// Cancels every allocation the pool asked for (its workers are gone or going).
    fn end_allocations(&mut self) {
        let Some(allocs) = self.allocs.as_mut() else {
            return;
        };
        let changes = allocs.cancel_all();
        for change in changes {
            self.on_allocation_change(change);
        }
    }

    /// Looks after the allocations asked for on demand: what squeue says of them, then
    /// what [`alloc::plan`] decides; `start`: worker steps may be started (else only the
    /// allocations themselves are looked after, between the dispatcher's calls to fill).
    fn tend_allocations(
        &mut self,
        on_demand: alloc::OnDemand,
        start: bool,
    ) -> Result<(), PoolError> {
        let now = Instant::now();
        let alive: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.has_exited())
            .map(|(id, _)| *id)
            .chain(self.starting.iter().map(|(id, _)| *id))
            .collect();
        let missing = self
            .size
            .saturating_sub(self.active_count() + self.starting.len());
        let allocs = self
            .allocs
            .get_or_insert_with(|| alloc::Allocations::new(on_demand));
        let changes = allocs.refresh(now);
        let actions = allocs.plan(alive.into_iter(), self.size, missing, now);
        self.allocs_tended = Some(now);
        for change in changes {
            self.on_allocation_change(change);
        }
        for action in actions {
            match action {
                alloc::Action::Drain(job) => self.drain_allocation(&job, now),
                alloc::Action::Cancel(job) => {
                    if let Some(change) = self.allocs.as_mut().and_then(|a| a.cancel(&job)) {
                        self.on_allocation_change(change);
                    }
                }
                alloc::Action::Start { job, count } if start => {
                    self.start_steps_in(&job, count)?;
                }
                alloc::Action::Start { .. } => {}
                alloc::Action::Submit(count) => self.submit_allocations(count, now)?,
            }
        }
        if let Some(why) = self.allocs.as_ref().and_then(|a| a.given_up()) {
            if self.has_nothing_to_go_on() && self.size > 0 {
                return Err(PoolError::Slurm(io::Error::other(format!(
                    "no allocation could be had: {why}"
                ))));
            }
        }
        Ok(())
    }

    /// Between the dispatcher's calls to fill (a stage without work left, between stages):
    /// allocations still drain, are cancelled when not needed and are watched.
    fn tend_allocations_between(&mut self) {
        let due = self
            .allocs_tended
            .is_some_and(|at| at.elapsed() >= TEND_BETWEEN_EVERY);
        let on_demand = self.spec.as_ref().and_then(|s| s.on_demand.clone());
        if let (true, Some(on_demand)) = (due, on_demand) {
            // An error here (no allocation could be had) is the next fill's to report.
            let _ = self.tend_allocations(on_demand, false);
        }
    }

    /// No worker, no step starting, no allocation: an allocation that cannot be had is the
    /// run's error, not a warning.
    fn has_nothing_to_go_on(&self) -> bool {
        self.active_count() == 0
            && self.starting.is_empty()
            && self.allocs.as_ref().is_some_and(|a| a.list().is_empty())
    }

    /// Submits allocations; a failure is the run's error only when the pool has nothing
    /// else to go on with (no worker, no allocation), else a warning and a later try.
    fn submit_allocations(&mut self, count: usize, now: Instant) -> Result<(), PoolError> {
        let Some(allocs) = self.allocs.as_mut() else {
            return Ok(());
        };
        let (nodes, tasks) = (
            allocs.on_demand().settings.nodes,
            allocs.on_demand().settings.tasks,
        );
        match allocs.submit(count, now) {
            Ok(jobs) => {
                for job in jobs {
                    if let Some(guardian) = self.guardian() {
                        guardian.watch_job(&job);
                    }
                    self.events.emit(&Event::AllocationSubmitted {
                        job: &job,
                        nodes,
                        tasks,
                    });
                    self.console.info(&format!(
                        "      submitted Slurm allocation {job} ({nodes} node{}, {tasks} task{})",
                        if nodes == 1 { "" } else { "s" },
                        if tasks == 1 { "" } else { "s" },
                    ));
                }
                Ok(())
            }
            Err(e) => {
                if self.has_nothing_to_go_on() {
                    return Err(PoolError::Slurm(io::Error::other(format!(
                        "cannot submit an allocation: {e}"
                    ))));
                }
                self.console.warn(&format!(
                    "cannot submit another Slurm allocation ({e}); going on with what the pool has"
                ));
                Ok(())
            }
        }
    }

    /// Its time limit is near: its workers finish the item they run and exit; a successor
    /// allocation takes their place.
    fn drain_allocation(&mut self, job: &str, now: Instant) {
        let Some(change) = self.allocs.as_mut().and_then(|a| a.drain(job, now)) else {
            return;
        };
        let ids: Vec<WorkerId> = self
            .workers
            .keys()
            .copied()
            .filter(|id| self.allocs.as_ref().and_then(|a| a.home_of(*id)) == Some(job))
            .collect();
        for id in ids {
            self.stop_after_current(id, StopReason::TimeLimit);
        }
        self.on_allocation_change(change);
    }

    /// Starts `count` worker steps in a granted allocation.
    fn start_steps_in(&mut self, job: &str, count: usize) -> Result<(), PoolError> {
        let Some(spec) = self.spec.clone() else {
            return Ok(());
        };
        let Some(cpus) = self
            .allocs
            .as_ref()
            .map(|a| a.on_demand().settings.cpus_per_task)
        else {
            return Ok(());
        };
        let mut srun_args = vec![format!("--jobid={job}")];
        if let Some(cpus) = cpus {
            srun_args.push(format!("--cpus-per-task={cpus}"));
        }
        srun_args.extend(spec.srun_args.iter().cloned());
        for _ in 0..count {
            let id = self.take_id();
            let request = spawn::SpawnRequest {
                worker_id: id,
                env: &spec.env,
                threads_per_worker: cpus.unwrap_or(1).max(1) as usize,
                stage: &self.stage,
                workdir: spec.workdir.as_deref(),
            };
            let Some(listener) = self.listener.as_ref() else {
                break;
            };
            let step = slurm::start(&request, listener, &srun_args).map_err(PoolError::Slurm)?;
            self.starting.push((id, step));
            if let Some(allocs) = self.allocs.as_mut() {
                allocs.home(id, job);
            }
        }
        Ok(())
    }

    /// An event (and, for what people wait on, a line) for what happened to an allocation.
    fn on_allocation_change(&mut self, change: alloc::Change) {
        match change {
            alloc::Change::Started { job, nodes, waited } => {
                self.events.emit(&Event::AllocationStarted {
                    job: &job,
                    nodes: &nodes,
                    waited_s: waited.as_secs_f64(),
                });
                self.console.info(&format!(
                    "      Slurm allocation {job} granted on {nodes} after {:.1} s",
                    waited.as_secs_f64()
                ));
            }
            alloc::Change::Draining { job, time_left } => {
                self.events.emit(&Event::AllocationDraining {
                    job: &job,
                    time_left_s: time_left.as_secs_f64(),
                });
                self.console.info(&format!(
                    "      Slurm allocation {job} ends in {} s: its workers finish their task and are replaced",
                    time_left.as_secs()
                ));
            }
            alloc::Change::Ended { job, state, .. } => {
                if let Some(guardian) = self.guardian.as_ref() {
                    guardian.forget_job(&job);
                }
                self.events.emit(&Event::AllocationEnded {
                    job: &job,
                    state: &state,
                });
            }
        }
    }
}

impl WorkerPool for Pool {
    fn target_size(&self) -> usize {
        self.size
    }

    fn workers(&self) -> impl Iterator<Item = WorkerView> + '_ {
        let connecting = self.starting.iter().map(|(id, _)| WorkerView {
            id: *id,
            phase: Phase::Starting,
        });
        // Ids are increasing; steps still connecting have the newest.
        self.workers.values().map(Worker::view).chain(connecting)
    }

    fn fill(&mut self) -> Result<(), PoolError> {
        let missing = self
            .size
            .saturating_sub(self.active_count() + self.starting.len());
        if missing == 0 {
            // Steps still starting may have connected (a no-op when there are none).
            return self.poll_starting();
        }
        let Some(spec) = self.spec.clone() else {
            return Ok(());
        };
        match spec.launcher {
            Launcher::Local => {
                let threads = (sys::usable_cpus() / self.size.max(1)).max(1);
                for _ in 0..missing {
                    let id = self.take_id();
                    let request = spawn::SpawnRequest {
                        worker_id: id,
                        env: &spec.env,
                        threads_per_worker: threads,
                        stage: &self.stage,
                        workdir: spec.workdir.as_deref(),
                    };
                    let spawned = spawn::spawn_worker(&request).map_err(PoolError::Spawn)?;
                    if let Some(guardian) = self.guardian() {
                        guardian.watch(spawned.pid);
                    }
                    self.register(id, spawned).map_err(PoolError::Spawn)?;
                }
            }
            Launcher::Slurm => {
                if self.listener.is_none() {
                    let listen = std::env::var("LOKY_RUN_LISTEN").ok();
                    let listener = Listener::bind(
                        listen.as_deref(),
                        self.console.clone(),
                        self.events.clone(),
                    )
                    .map_err(PoolError::Listen)?;
                    self.events.emit(&Event::Listening {
                        address: listener.advertised(),
                    });
                    self.listener = Some(listener);
                }
                if let Some(on_demand) = spec.on_demand.clone() {
                    self.tend_allocations(on_demand, true)?;
                    return self.poll_starting();
                }
                // A step gets the CPUs of one Slurm task.
                let threads = std::env::var("SLURM_CPUS_PER_TASK")
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(1)
                    .max(1);
                // Submitted together, they start in parallel; see `poll_starting`.
                for _ in 0..missing {
                    let id = self.take_id();
                    let request = spawn::SpawnRequest {
                        worker_id: id,
                        env: &spec.env,
                        threads_per_worker: threads,
                        stage: &self.stage,
                        workdir: spec.workdir.as_deref(),
                    };
                    let Some(listener) = self.listener.as_ref() else {
                        break;
                    };
                    let step = slurm::start(&request, listener, &spec.srun_args)
                        .map_err(PoolError::Slurm)?;
                    self.starting.push((id, step));
                }
            }
        }
        self.poll_starting()
    }

    fn send_chunk(&mut self, worker: WorkerId, frame: &Arc<Vec<u8>>, items: u32) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        w.count_sent(items);
        let waits = w.commands().push_shared(frame);
        self.watch_commands(worker, waits);
    }

    fn identity(&self, worker: WorkerId) -> Option<(u32, String)> {
        self.workers.get(&worker).and_then(Worker::identity)
    }

    fn tasks_sent(&self, worker: WorkerId) -> u64 {
        self.workers.get(&worker).map_or(0, Worker::tasks_sent)
    }

    fn progress(&self, worker: WorkerId) -> Progress {
        self.workers
            .get(&worker)
            .map_or(Progress::Between { last: None }, Worker::progress)
    }

    fn memory(&mut self, worker: WorkerId) -> Option<Memory> {
        let (rss, baseline) = self.workers.get_mut(&worker)?.memory()?;
        Some(Memory { rss, baseline })
    }

    fn retire(&mut self, worker: WorkerId, reason: StopReason) {
        let frame = self.bare_frame(tag::SHUTDOWN);
        if self
            .workers
            .get_mut(&worker)
            .is_some_and(|w| w.mark_stopping(reason))
        {
            self.send_to(worker, &frame);
        }
    }

    fn stop_after_current(&mut self, worker: WorkerId, reason: StopReason) {
        let frame = self.bare_frame(tag::STOP);
        if let Some(w) = self.workers.get_mut(&worker) {
            w.mark_stopping(reason);
            w.request_stop();
            self.send_to(worker, &frame);
        }
    }

    fn terminate(&mut self, worker: WorkerId, reason: StopReason, grace: Duration) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.mark_stopping(reason);
            w.terminate(grace);
        }
    }

    fn kill(&mut self, worker: WorkerId, reason: StopReason) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.mark_stopping(reason);
            w.end_now();
        }
    }

    fn next_event(&mut self, timeout: Duration) -> Option<PoolEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.take_ready() {
                return Some(event);
            }
            let now = Instant::now();
            if now.duration_since(self.lost_checked) >= LOST_CHECK_EVERY {
                self.lost_checked = now;
                self.check_lost_results();
                self.tend_allocations_between();
                if let Some(event) = self.take_ready() {
                    return Some(event);
                }
            }
            let mut wait = deadline.saturating_duration_since(now);
            if let Some(at) = self.escalate_kills(now) {
                wait = wait.min(at.saturating_duration_since(now));
            }
            if !self.workers.is_empty() {
                wait = wait.min(LOST_CHECK_EVERY);
            }
            self.wait(wait);
            if let Some(event) = self.take_ready() {
                return Some(event);
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    fn counters(&self) -> PoolCounters {
        self.counters
    }

    fn allocations(&self) -> Vec<crate::live::AllocationView> {
        let Some(allocs) = self.allocs.as_ref() else {
            return Vec::new();
        };
        allocs
            .list()
            .iter()
            .map(|a| match &a.state {
                alloc::AllocState::Queued { reason } => crate::live::AllocationView {
                    job: a.job.clone(),
                    state: "queued".into(),
                    reason: reason.clone(),
                    nodes: None,
                },
                alloc::AllocState::Running { nodes, .. } => crate::live::AllocationView {
                    job: a.job.clone(),
                    state: if a.draining { "draining" } else { "running" }.into(),
                    reason: None,
                    nodes: Some(nodes.clone()),
                },
                alloc::AllocState::Ended { state } => crate::live::AllocationView {
                    job: a.job.clone(),
                    state: state.to_lowercase(),
                    reason: None,
                    nodes: None,
                },
            })
            .collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Whatever path led here (an error, a panic), no worker may outlive the pool. A local
        // worker is killed at once. A remote one's srun gets SIGTERM, which ends its step
        // cleanly; SIGKILL would leave the step running until Slurm notices, so that comes
        // only after a grace period, with a `scancel` of the step.
        self.abandon_starting();
        let remote: Vec<u32> = self.workers.values().filter_map(Worker::abandon).collect();
        let killed = spawn::end_gracefully(&remote, STOP_GRACE);
        let steps: Vec<String> = self
            .workers
            .values()
            .filter(|w| killed.contains(&w.pid()))
            .filter_map(|w| w.slurm_step().map(str::to_owned))
            .collect();
        if !steps.is_empty() {
            slurm::cancel_steps(&steps, true);
        }
        if let Some(allocs) = self.allocs.as_mut() {
            allocs.cancel_all();
        }
    }
}

/// Waits for the worker to become a zombie, kills what is left of its process group (a plugin's
/// own children), tells the guardian the group is gone (while the zombie still holds its id),
/// then reaps it. The flag tells the pool not to signal a reaped pid.
fn wait_and_reap(
    pid: u32,
    reaped: &std::sync::atomic::AtomicBool,
    guardian: Option<&Guardian>,
) -> (ProcessEnd, u64) {
    spawn::wait_exited(pid);
    spawn::kill_group(pid, libc::SIGKILL);
    if let Some(guardian) = guardian {
        guardian.forget(pid);
    }
    reaped.store(true, std::sync::atomic::Ordering::Release);
    spawn::reap(pid)
}

pub fn launcher_name(launcher: Launcher) -> &'static str {
    match launcher {
        Launcher::Local => "local",
        Launcher::Slurm => "slurm",
    }
}

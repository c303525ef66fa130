//! The pool of worker processes, kept alive across stages like loky's reusable executor.
//!
//! The pool owns the worker processes and their pipes. Each worker has a reader thread (frames
//! in, then its exit status) and an output thread (its stdout/stderr, forwarded line by line);
//! both report to one channel that the dispatcher of the running stage drains. Nothing else is
//! shared: the dispatcher is the single owner of the state a user sees.

pub mod decision;
pub mod inbox;
pub mod slurm;
pub mod spawn;

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, BufReader};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

pub use decision::{Decision, WorkerSpec, decide};

use crate::config::Launcher;
use crate::events::{Event, EventLog};
use crate::progress::ProgressSlot;
use crate::protocol::{FrameBuf, InitMsg, StageMsg, tag};
use crate::sys::{self, ProcessEnd};
use crate::transport::Listener;
use inbox::{Inbox, Outbox, Poller, Pumped};

/// What the pool reports: frames read from the workers, and their exits (from reaper threads).
pub enum WorkerEvent {
    /// A frame from a worker (tag at index 0).
    Frame { worker: u32, frame: Vec<u8> },
    /// The worker's result stream ended and the process was reaped.
    Exited {
        worker: u32,
        end: ProcessEnd,
        peak_rss: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Spawned, loading plugins / running the initializer.
    Starting,
    Ready,
    /// Told to exit (or killed); its exit is expected.
    Stopping,
}

pub struct Worker {
    pub id: u32,
    pub pid: u32,
    commands: Outbox,
    /// Local workers: the shared word saying which item runs. Remote workers have none.
    pub progress: Option<ProgressSlot>,
    /// Remote workers: their connection (cut to stop them at once).
    remote: Option<TcpStream>,
    /// Slurm workers: `JOB.STEP`, once the worker said where it runs (cancelled on a kill).
    pub slurm_step: Option<String>,
    /// Remote workers: where they run (`pid P on HOST, step J.S`), once they said so.
    pub location: Option<String>,
    /// Remote workers: the RSS they last reported with their results, and the largest.
    pub reported_rss: Option<u64>,
    reported_peak: u64,
    /// Its result stream, read by the dispatcher (`None` once closed: the exit follows).
    inbox: Option<Inbox>,
    /// Set when everything it printed was forwarded.
    output_drained: Arc<Drained>,
    /// When the item in progress started, as far as the runner can tell without a progress
    /// slot (remote workers flush every result, so this is the last result's arrival).
    pub item_started: Instant,
    pub state: WorkerState,
    /// Chunk ids sent and not fully answered, oldest first.
    pub in_flight: VecDeque<u64>,
    pub tasks_done: u64,
    /// Tasks sent to it (done or in flight), for `max_tasks_per_worker`.
    pub tasks_assigned: u64,
    pub idle_since: Instant,
    /// The reason reported when this worker's exit is seen, if it was asked to stop.
    pub stop_reason: Option<&'static str>,
    /// Due for recycling (`max_tasks`, `memory_growth`): gets no new work, retires once idle.
    pub recycle: Option<&'static str>,
    /// RSS after its first task, and when RSS was last read.
    pub rss_baseline: Option<u64>,
    pub rss_checked: Instant,
    /// When a terminated worker gets SIGKILL if it is still alive.
    pub kill_at: Option<Instant>,
    exited: Arc<AtomicBool>,
}

impl Worker {
    /// Ready for more work.
    pub fn is_available(&self) -> bool {
        self.state == WorkerState::Ready && self.recycle.is_none()
    }

    pub fn has_exited(&self) -> bool {
        self.exited.load(Ordering::Acquire)
    }

    /// `pid P` for a local worker, `pid P on HOST[, step J.S]` for a remote one.
    pub fn describe_process(&self) -> String {
        match &self.location {
            Some(location) => location.clone(),
            None => format!("pid {}", self.pid),
        }
    }

    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Ends the process at once, without a stop reason: a local worker's group gets SIGKILL; a
    /// remote worker's connection is cut (which ends it), its srun gets SIGTERM (which ends the
    /// step) and its step is cancelled, with SIGKILL to srun after 2 s if needed.
    fn end_now(&mut self) {
        if self.exited.load(Ordering::Acquire) {
            return;
        }
        match &self.remote {
            Some(conn) => {
                let _ = conn.shutdown(std::net::Shutdown::Both);
                spawn::kill_group(self.pid, libc::SIGTERM);
                if let Some(step) = &self.slurm_step {
                    slurm::cancel_steps(std::slice::from_ref(step), false);
                }
                self.kill_at
                    .get_or_insert(Instant::now() + Duration::from_secs(2));
            }
            None => spawn::kill_group(self.pid, libc::SIGKILL),
        }
    }

    /// Records the RSS a remote worker reported (0: not reported).
    pub fn report_rss(&mut self, rss: u64) {
        if rss > 0 {
            self.reported_rss = Some(rss);
            self.reported_peak = self.reported_peak.max(rss);
        }
    }

    /// The worker's peak RSS: what the kernel reported when it was reaped for a local worker;
    /// for a remote one (the local process is `srun`), the largest RSS it reported.
    pub fn peak_rss(&self, reaped: u64) -> u64 {
        if self.is_remote() {
            self.reported_peak
        } else {
            reaped
        }
    }
}

pub struct Pool {
    spec: Option<WorkerSpec>,
    size: usize,
    workers: BTreeMap<u32, Worker>,
    next_id: u32,
    tx: Sender<WorkerEvent>,
    rx: Receiver<WorkerEvent>,
    /// Waits on every worker's result stream and on the reapers' wakeups.
    poller: Poller,
    /// Frames read and not yet handed out, oldest first.
    ready: VecDeque<WorkerEvent>,
    woken: Vec<u64>,
    frame: FrameBuf,
    /// Restarts of the whole pool, and workers replaced after a crash, timeout or recycling.
    pub restarts: u64,
    pub replaced: u64,
    /// Bound on first use by a remote launcher, kept for the pool's life.
    listener: Option<Listener>,
    /// Worker steps submitted and not yet connected, with the ids they will have.
    starting: Vec<(u32, slurm::PendingStep)>,
}

/// Poller token bit: a worker's command side has room (the low bits are its id).
const WRITABLE: u64 = 1 << 32;

/// A flag set once, waited for with a time limit.
#[derive(Default)]
struct Drained {
    done: std::sync::Mutex<bool>,
    cond: std::sync::Condvar,
}

impl Drained {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cond.notify_all();
    }

    fn wait(&self, limit: Duration) {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .cond
            .wait_timeout_while(done, limit, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
    }
}

/// How long an exited worker's last output may take to be forwarded.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// How long a remote worker's srun may live on after its connection ended.
const REMOTE_EXIT_WAIT: Duration = Duration::from_secs(10);

/// How long a graceful stop may take before the workers are killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}

impl Pool {
    pub fn new() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self {
            spec: None,
            size: 0,
            workers: BTreeMap::new(),
            next_id: 1,
            tx,
            rx,
            poller: Poller::new().expect("epoll and eventfd are available"),
            ready: VecDeque::new(),
            woken: Vec::new(),
            frame: FrameBuf::new(),
            restarts: 0,
            replaced: 0,
            listener: None,
            starting: Vec::new(),
        }
    }

    pub fn spec(&self) -> Option<&WorkerSpec> {
        self.spec.as_ref()
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    pub fn worker(&self, id: u32) -> Option<&Worker> {
        self.workers.get(&id)
    }

    pub fn worker_mut(&mut self, id: u32) -> Option<&mut Worker> {
        self.workers.get_mut(&id)
    }

    /// Workers that are alive and not being stopped.
    pub fn active_count(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.state != WorkerState::Stopping)
            .count()
    }

    /// Carries out a decision before a stage: stop everything for a restart, retire extra
    /// workers for a shrink; new workers are started on demand by [`Self::fill`].
    pub fn apply(
        &mut self,
        decision: &Decision,
        spec: WorkerSpec,
        size: usize,
        stage: &str,
        events: &EventLog,
    ) {
        if matches!(decision, Decision::Restart { .. }) {
            self.restarts += 1;
            self.stop_all("restart", events);
        }
        self.spec = Some(spec);
        self.size = size;
        // Shrink: steps still starting are given up first, then the extra workers retire,
        // newest first (older ones are warmer).
        let keep = size
            .saturating_sub(self.active_count())
            .min(self.starting.len());
        if keep < self.starting.len() {
            slurm::abandon(self.starting.drain(keep..).map(|(_, step)| step));
        }
        let extra = self.active_count().saturating_sub(size);
        let victims: Vec<u32> = self
            .workers
            .values()
            .rev()
            .filter(|w| w.state != WorkerState::Stopping)
            .take(extra)
            .map(|w| w.id)
            .collect();
        for id in victims {
            self.retire(id, "resize");
        }
        let msg = StageMsg {
            name: stage.to_owned(),
        };
        let frame = self.frame.json(tag::STAGE, &msg).to_vec();
        let ids: Vec<u32> = self
            .workers
            .values()
            .filter(|w| w.state != WorkerState::Stopping)
            .map(|w| w.id)
            .collect();
        for id in ids {
            self.send_to(id, &frame);
        }
    }

    /// Starts workers until the pool has its target size, and takes in the worker steps that
    /// connected since the last call. Returns the ids started. Called again and again while a
    /// stage has work: Slurm steps still starting join when they connect.
    pub fn fill(
        &mut self,
        stage: &str,
        events: &EventLog,
        console: &Arc<crate::console::Console>,
    ) -> io::Result<Vec<u32>> {
        let missing = self
            .size
            .saturating_sub(self.active_count() + self.starting.len());
        if missing == 0 {
            // Steps still starting may have connected (a no-op when there are none).
            let mut started = Vec::new();
            self.poll_starting(stage, events, console, &mut started)?;
            return Ok(started);
        }
        let spec = self
            .spec
            .clone()
            .expect("a pool is configured before it starts workers");
        let mut started = Vec::with_capacity(missing);
        match spec.launcher {
            Launcher::Local => {
                let threads = (sys::usable_cpus() / self.size.max(1)).max(1);
                for _ in 0..missing {
                    let id = self.take_id();
                    let request = spawn::SpawnRequest {
                        worker_id: id,
                        env: &spec.env,
                        threads_per_worker: threads,
                        stage,
                    };
                    let spawned = spawn::spawn_worker(&request)?;
                    self.register(id, spawned, &spec, stage, events, console)?;
                    started.push(id);
                }
            }
            Launcher::Slurm => {
                if self.listener.is_none() {
                    let listen = std::env::var("LOKY_RUN_LISTEN").ok();
                    let listener =
                        Listener::bind(listen.as_deref(), console.clone(), events.clone())?;
                    events.emit(&Event::Listening {
                        address: listener.advertised(),
                    });
                    self.listener = Some(listener);
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
                        stage,
                    };
                    let listener = self.listener.as_ref().expect("bound above");
                    let step = slurm::start(&request, listener, &spec.srun_args)?;
                    self.starting.push((id, step));
                }
            }
        }
        self.poll_starting(stage, events, console, &mut started)?;
        Ok(started)
    }

    /// Takes in the worker steps that connected, and drops those that failed: a warning, and
    /// the pool goes on with fewer workers, unless it has none (then the error is the run's).
    /// Waits only while the pool has no worker at all; with one, the stage runs and slower
    /// steps join later (a step may wait for CPUs that the allocation does not have free).
    fn poll_starting(
        &mut self,
        stage: &str,
        events: &EventLog,
        console: &Arc<crate::console::Console>,
        started: &mut Vec<u32>,
    ) -> io::Result<()> {
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
                        let spec = self.spec.clone().expect("configured before starting");
                        self.register(id, spawned, &spec, stage, events, console)?;
                        started.push(id);
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
                    return Err(e);
                }
                console.warn(&format!(
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

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Takes a started worker into the pool: its reader threads, its INIT message. If that
    /// fails (out of threads or descriptors), the process is ended, not left behind.
    fn register(
        &mut self,
        id: u32,
        spawned: spawn::SpawnedWorker,
        spec: &WorkerSpec,
        stage: &str,
        events: &EventLog,
        console: &Arc<crate::console::Console>,
    ) -> io::Result<()> {
        let (pid, remote) = (spawned.pid, spawned.remote.is_some());
        self.try_register(id, spawned, spec, stage, events, console)
            .inspect_err(|_| {
                if remote {
                    // srun ends its step on SIGTERM; SIGKILL only if it does not.
                    spawn::end_gracefully(&[pid], STOP_GRACE);
                } else {
                    spawn::kill_group(pid, libc::SIGKILL);
                }
                spawn::reap(pid);
            })
    }

    fn try_register(
        &mut self,
        id: u32,
        spawned: spawn::SpawnedWorker,
        spec: &WorkerSpec,
        stage: &str,
        events: &EventLog,
        console: &Arc<crate::console::Console>,
    ) -> io::Result<()> {
        let exited = Arc::new(AtomicBool::new(false));

        let pid = spawned.pid;
        let inbox = Inbox::new(spawned.results, spawned.remote.is_some())?;
        self.poller.add(inbox.fd(), u64::from(id))?;
        let output = spawned.output;
        let console = console.clone();
        let drained = Arc::new(Drained::default());
        let signal = drained.clone();
        std::thread::Builder::new()
            .name(format!("worker-{id}-output"))
            .spawn(move || {
                for line in BufReader::new(output).split(b'\n') {
                    let Ok(line) = line else { break };
                    console.worker_line(id, &line);
                }
                signal.set();
            })?;

        let commands = Outbox::new(spawned.commands, spawned.remote.is_some())?;
        self.workers.insert(
            id,
            Worker {
                id,
                pid,
                commands,
                progress: spawned.progress,
                remote: spawned.remote,
                inbox: Some(inbox),
                output_drained: drained,
                slurm_step: None,
                location: None,
                reported_rss: None,
                reported_peak: 0,
                item_started: Instant::now(),
                state: WorkerState::Starting,
                in_flight: VecDeque::new(),
                tasks_done: 0,
                tasks_assigned: 0,
                idle_since: Instant::now(),
                stop_reason: None,
                recycle: None,
                rss_baseline: None,
                rss_checked: Instant::now(),
                kill_at: None,
                exited,
            },
        );
        let init = InitMsg {
            worker_id: id,
            plugins: spec.plugins.clone(),
            initializer: spec.initializer.clone(),
        };
        // A worker that died at once shows up as an exit; a failed write says nothing more.
        let init = self.frame.json(tag::INIT, &init).to_vec();
        self.send_to(id, &init);
        events.emit(&Event::WorkerStarted {
            worker: id,
            pid,
            stage,
            launcher: launcher_name(spec.launcher),
        });
        Ok(())
    }

    /// Sends a prepared frame to a worker, never blocking: what its pipe cannot take now goes
    /// out as it reads (see [`Outbox`]). A failed write means the worker died; its exit event
    /// follows and is handled there. Returns whether the worker is still there.
    pub fn send_to(&mut self, id: u32, frame: &[u8]) -> bool {
        let Some(w) = self.workers.get_mut(&id) else {
            return false;
        };
        if w.commands.push(frame) && !w.commands.watching {
            w.commands.watching = self
                .poller
                .add_writable(w.commands.fd(), u64::from(id) | WRITABLE)
                .is_ok();
        }
        true
    }

    /// Like [`Self::send_to`] for a frame its owner keeps (a chunk, kept until answered):
    /// if it must wait for room, the pool holds a reference, not a copy.
    pub fn send_shared(&mut self, id: u32, frame: &Arc<Vec<u8>>) -> bool {
        let Some(w) = self.workers.get_mut(&id) else {
            return false;
        };
        if w.commands.push_shared(frame) && !w.commands.watching {
            w.commands.watching = self
                .poller
                .add_writable(w.commands.fd(), u64::from(id) | WRITABLE)
                .is_ok();
        }
        true
    }

    /// A worker's command pipe has room: writes what waits for it.
    fn flush_commands(&mut self, id: u32) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if !w.commands.flush() && w.commands.watching {
            self.poller.remove(w.commands.fd());
            w.commands.watching = false;
        }
    }

    /// Asks a worker to exit once it has finished what it holds.
    pub fn retire(&mut self, id: u32, reason: &'static str) {
        let frame = {
            self.frame.begin(tag::SHUTDOWN);
            self.frame.finish().to_vec()
        };
        if let Some(w) = self.workers.get_mut(&id) {
            if w.state != WorkerState::Stopping {
                w.state = WorkerState::Stopping;
                w.stop_reason = Some(reason);
                self.send_to(id, &frame);
            }
        }
    }

    /// Asks a worker to finish the item in progress and exit (an interrupt): it reports what
    /// it completed and leaves the rest of its chunks unrun.
    pub fn stop_after_current(&mut self, id: u32, reason: &'static str) {
        let frame = {
            self.frame.begin(tag::STOP);
            self.frame.finish().to_vec()
        };
        if let Some(w) = self.workers.get_mut(&id) {
            w.state = WorkerState::Stopping;
            w.stop_reason.get_or_insert(reason);
            // A local worker reads commands between chunks: the shared flag reaches it between
            // items. A remote one reads the STOP frame on its command thread.
            if let Some(progress) = &w.progress {
                progress.request_stop();
            }
            self.send_to(id, &frame);
        }
    }

    /// SIGTERM to a worker's process group now, SIGKILL after `grace` (see
    /// [`Self::escalate_kills`]).
    pub fn terminate(&mut self, id: u32, reason: &'static str, grace: Duration) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.state = WorkerState::Stopping;
            w.stop_reason.get_or_insert(reason);
            w.kill_at.get_or_insert(Instant::now() + grace);
            if !w.exited.load(Ordering::Acquire) {
                if let Some(conn) = &w.remote {
                    let _ = conn.shutdown(std::net::Shutdown::Both);
                }
                spawn::kill_group(w.pid, libc::SIGTERM);
            }
        }
    }

    /// SIGKILLs terminated workers whose grace period is over; returns the earliest pending
    /// deadline.
    pub fn escalate_kills(&mut self, now: Instant) -> Option<Instant> {
        let mut next = None::<Instant>;
        for w in self.workers.values_mut() {
            match w.kill_at {
                Some(at) if at <= now => {
                    if !w.exited.load(Ordering::Acquire) {
                        spawn::kill_group(w.pid, libc::SIGKILL);
                        // A killed `srun` leaves its step behind: cancel it in Slurm.
                        if let Some(step) = &w.slurm_step {
                            slurm::cancel_steps(std::slice::from_ref(step), false);
                        }
                    }
                    w.kill_at = None;
                }
                Some(at) => next = Some(next.map_or(at, |n| n.min(at))),
                None => {}
            }
        }
        next
    }

    pub fn ids(&self) -> Vec<u32> {
        self.workers.keys().copied().collect()
    }

    /// Kills a worker's process group at once (a remote worker: its connection is cut, which
    /// ends it, and its `srun` gets SIGTERM, which ends the step; SIGKILL follows if needed).
    pub fn kill(&mut self, id: u32, reason: &'static str) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.state = WorkerState::Stopping;
            w.stop_reason.get_or_insert(reason);
            w.end_now();
        }
    }

    /// The next event, waiting at most `timeout`. A worker's frames always come before its
    /// exit.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<WorkerEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            if let Ok(event) = self.rx.try_recv() {
                return Some(event);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut woken = std::mem::take(&mut self.woken);
            woken.clear();
            if self.poller.wait(left, |token| woken.push(token)).is_err() {
                // Not expected (EBADF, EINVAL); do not spin.
                std::thread::sleep(left.min(Duration::from_millis(10)));
            }
            for token in &woken {
                if token & WRITABLE != 0 {
                    self.flush_commands(*token as u32);
                } else {
                    self.pump(*token as u32);
                }
            }
            self.woken = woken;
            if self.ready.is_empty() && self.rx.is_empty() && Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// Reads what a worker sent; when its stream closes, a reaper thread waits for its exit.
    fn pump(&mut self, id: u32) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let Some(inbox) = &mut w.inbox else { return };
        let ready = &mut self.ready;
        let pumped = inbox.pump(|frame| ready.push_back(WorkerEvent::Frame { worker: id, frame }));
        let inbox_fd = inbox.fd();
        match pumped {
            Pumped::Open => return,
            // A remote worker's connection can end while its srun lives on: keepalive gave
            // up on a vanished node, which Slurm may take minutes to notice. Its exit is
            // waited for a while, then forced.
            Pumped::Closed => {
                if w.remote.is_some() && !w.exited.load(Ordering::Acquire) {
                    // No stop reason: if it held a task, that task crashed.
                    w.kill_at.get_or_insert(Instant::now() + REMOTE_EXIT_WAIT);
                }
            }
            // Nothing it says can be trusted any more, and it may be waiting for us: end it
            // (its exit is then reported as a crash of what it held).
            Pumped::Corrupt => w.end_now(),
        }
        self.poller.remove(inbox_fd);
        w.inbox = None;
        if w.commands.watching {
            self.poller.remove(w.commands.fd());
            w.commands.watching = false;
        }
        let (pid, reaped, remote) = (w.pid, w.exited.clone(), w.remote.is_some());
        let (tx, waker) = (self.tx.clone(), self.poller.waker());
        let reaper = move || {
            let (mut end, peak_rss) = wait_and_reap(pid, &reaped);
            if remote {
                end = remote_end(end);
            }
            let _ = tx.send(WorkerEvent::Exited {
                worker: id,
                end,
                peak_rss,
            });
            waker.wake();
        };
        if std::thread::Builder::new()
            .name(format!("worker-{id}-reaper"))
            .spawn(reaper)
            .is_err()
        {
            // No thread to spare: reap here (the stream closed, so the process is ending).
            let (mut end, peak_rss) = wait_and_reap(pid, &w.exited);
            if w.remote.is_some() {
                end = remote_end(end);
            }
            self.ready.push_back(WorkerEvent::Exited {
                worker: id,
                end,
                peak_rss,
            });
        }
    }

    /// Takes a worker out of the pool once its exit is seen, and reports it. Returns the worker
    /// (with the reason it was stopped, if it was) so the dispatcher can handle its chunks.
    pub fn on_exit(
        &mut self,
        id: u32,
        end: ProcessEnd,
        peak_rss: u64,
        events: &EventLog,
    ) -> Option<Worker> {
        let w = self.workers.remove(&id)?;
        // What it printed last is forwarded before its exit is reported (and before the run
        // ends). Bounded: a plugin's daemonized child could keep the pipe open.
        w.output_drained.wait(OUTPUT_DRAIN_LIMIT);
        let peak_rss = w.peak_rss(peak_rss);
        let reason = w.stop_reason.unwrap_or("crashed");
        if matches!(
            reason,
            "crashed" | "timeout" | "max_tasks" | "memory_growth"
        ) {
            self.replaced += 1;
        }
        let (signal, exit_code) = match end {
            ProcessEnd::Signal(s) => (Some(sys::signal_name(s)), None),
            ProcessEnd::Exit(c) => (None, Some(c)),
        };
        events.emit(&Event::WorkerExited {
            worker: id,
            pid: w.pid,
            reason,
            signal,
            exit_code,
            peak_rss,
            tasks: w.tasks_done,
        });
        Some(w)
    }

    /// Stops every worker: a graceful shutdown message, then SIGKILL for those still alive
    /// after a grace period. Waits until all are reaped.
    pub fn stop_all(&mut self, reason: &'static str, events: &EventLog) {
        // First, so that no step takes a CPU a retiring worker frees.
        self.abandon_starting();
        let ids: Vec<u32> = self.workers.keys().copied().collect();
        for id in &ids {
            self.retire(*id, reason);
        }
        self.wait_until_empty(STOP_GRACE, events);
        let ids: Vec<u32> = self.workers.keys().copied().collect();
        for id in ids {
            self.kill(id, reason);
        }
        self.wait_until_empty(Duration::from_secs(10), events);
    }

    fn wait_until_empty(&mut self, limit: Duration, events: &EventLog) {
        let deadline = Instant::now() + limit;
        while !self.workers.is_empty() {
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                break;
            }
            // A remote worker that ignored SIGTERM gets its SIGKILL (and scancel) on time.
            let wait = self
                .escalate_kills(now)
                .map_or(left, |at| at.saturating_duration_since(now).min(left))
                .max(Duration::from_millis(1));
            match self.recv_timeout(wait) {
                Some(WorkerEvent::Exited {
                    worker,
                    end,
                    peak_rss,
                }) => {
                    self.on_exit(worker, end, peak_rss, events);
                }
                Some(WorkerEvent::Frame { .. }) | None => {}
            }
        }
    }

    /// Ends the pool at the end of a run.
    pub fn shutdown(&mut self, events: &EventLog) {
        self.stop_all("shutdown", events);
        self.spec = None;
        self.size = 0;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Whatever path led here (an error, a panic), no worker may outlive the pool. A local
        // worker is killed at once. A remote one's srun gets SIGTERM, which ends its step
        // cleanly; SIGKILL would leave the step running until Slurm notices, so that comes
        // only after a grace period, with a `scancel` of the step.
        self.abandon_starting();
        let mut remote = Vec::new();
        for w in self.workers.values() {
            if w.exited.load(Ordering::Acquire) {
                continue;
            }
            match &w.remote {
                Some(conn) => {
                    let _ = conn.shutdown(std::net::Shutdown::Both);
                    remote.push(w.pid);
                }
                None => spawn::kill_group(w.pid, libc::SIGKILL),
            }
        }
        let killed = spawn::end_gracefully(&remote, STOP_GRACE);
        let steps: Vec<String> = self
            .workers
            .values()
            .filter(|w| killed.contains(&w.pid))
            .filter_map(|w| w.slurm_step.clone())
            .collect();
        if !steps.is_empty() {
            slurm::cancel_steps(&steps, true);
        }
    }
}

/// Waits for the worker to become a zombie, kills what is left of its process group (a plugin's
/// own children), then reaps it. The flag tells the pool not to signal a reaped pid.
fn wait_and_reap(pid: u32, reaped: &AtomicBool) -> (ProcessEnd, u64) {
    spawn::wait_exited(pid);
    spawn::kill_group(pid, libc::SIGKILL);
    reaped.store(true, Ordering::Release);
    spawn::reap(pid)
}

/// `srun` reports a task killed by signal N as exit status 128 + N: name the signal, as for a
/// local worker.
fn remote_end(end: ProcessEnd) -> ProcessEnd {
    match end {
        ProcessEnd::Exit(code) if code > 128 && code < 128 + 32 => ProcessEnd::Signal(code - 128),
        other => other,
    }
}

pub fn launcher_name(launcher: Launcher) -> &'static str {
    match launcher {
        Launcher::Local => "local",
        Launcher::Slurm => "slurm",
    }
}

//! The boundary between the pool and the dispatcher of a stage.
//!
//! The pool owns the worker processes and everything about them (state, pipes, pids, where they
//! run, their memory); the dispatcher owns the book of chunks in flight and makes every
//! scheduling decision. They meet here: the dispatcher reaches the pool only through
//! [`WorkerPool`], and the pool tells it what happened only through [`PoolEvent`]s, each worked
//! out once (an exit carries its reason, how the process ended, its peak RSS and what it was
//! doing). That is what lets the scheduling core be tested against a fake pool with no
//! processes (`run/dispatcher/tests.rs`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sys::ProcessEnd;

/// A worker's id: unique for the life of the runner, increasing (a larger id started later).
pub type WorkerId = u32;

/// Where a worker is in its life, as the dispatcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started: loading plugins and running the initializer. Gets no work yet.
    Starting,
    /// Takes work.
    Ready,
    /// Asked to stop (or being killed): gets no more work; its exit is expected.
    Stopping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerView {
    pub id: WorkerId,
    pub phase: Phase,
}

/// Why the runner stopped a worker. A worker that ends without one died on its own
/// (`crashed` in events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    IdleTimeout,
    MaxTasks,
    MemoryGrowth,
    /// Killed at once: a second interrupt, or the interrupt's grace period ran out.
    Killed,
    /// Its task ran past `task_timeout` (or its result did not arrive in that time).
    Timeout,
    Shutdown,
    Resize,
    Restart,
    Interrupted,
    /// Its initializer failed.
    Initializer,
    /// A plugin failed to load.
    Plugin,
    /// Its result stream broke: it wrote something that is not a frame, or out of turn.
    BrokenStream,
    /// Results it wrote never arrived (its result descriptor was redirected or closed).
    LostResults,
    /// Its stage stopped for good (`on_error = "fail"`): it finishes the item it runs.
    StageStopped,
    /// Its Slurm allocation nears its time limit (`[slurm] renew_before`): it finishes the
    /// item it runs and is replaced from another allocation.
    TimeLimit,
}

impl StopReason {
    /// The `reason` of `worker_exited` events.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::IdleTimeout => "idle_timeout",
            StopReason::MaxTasks => "max_tasks",
            StopReason::MemoryGrowth => "memory_growth",
            StopReason::Killed => "killed",
            StopReason::Timeout => "timeout",
            StopReason::Shutdown => "shutdown",
            StopReason::Resize => "resize",
            StopReason::Restart => "restart",
            StopReason::Interrupted => "interrupted",
            StopReason::Initializer => "initializer",
            StopReason::Plugin => "plugin",
            StopReason::BrokenStream => "broken_stream",
            StopReason::LostResults => "lost_results",
            StopReason::StageStopped => "stage_stopped",
            StopReason::TimeLimit => "time_limit",
        }
    }

    /// Whether a fresh worker takes the place of this one in the same pool (counted as
    /// "replaced" in the pool line), as opposed to the pool shrinking or ending.
    pub fn is_replacement(self) -> bool {
        matches!(
            self,
            StopReason::Timeout
                | StopReason::MaxTasks
                | StopReason::MemoryGrowth
                | StopReason::BrokenStream
                | StopReason::LostResults
                | StopReason::TimeLimit
        )
    }

    /// Whether the worker failed (a fault of it or of a task it ran), as opposed to being
    /// stopped by a decision of the runner.
    pub fn is_failure(self) -> bool {
        matches!(self, StopReason::BrokenStream | StopReason::LostResults)
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a worker is doing, as far as the runner can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Inside the task call of item `position` of chunk `chunk` since `since`.
    Running {
        chunk: u64,
        position: u32,
        since: Instant,
    },
    /// Between task calls; `last` is the item whose call returned last (none yet: `None`).
    Between { last: Option<(u64, u32)> },
    /// A worker whose progress the runner cannot see (remote). It sends every result before it
    /// starts the next item, so its first unreported item is the one it is on.
    Unknown,
}

/// A worker's memory, for `max_memory_growth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub rss: u64,
    /// Its RSS after its first task.
    pub baseline: u64,
}

/// Why a worker could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFailure {
    Plugin,
    Initializer,
}

/// How a worker ended, worked out once by the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerExit {
    pub worker: WorkerId,
    /// `None`: it died on its own.
    pub reason: Option<StopReason>,
    /// What broke, when the reason is [`StopReason::BrokenStream`] or
    /// [`StopReason::LostResults`]; with no reason, why the runner ended a worker that had
    /// died in all but name (a remote worker whose connection ended while its srun lived on).
    pub detail: Option<String>,
    /// It was lost with its node (a Slurm step whose node failed or went silent), not by
    /// anything it ran: what it held needs no fresh worker to run again.
    pub node_lost: bool,
    pub end: ProcessEnd,
    /// `None` when unknown (a remote worker that never reported it).
    pub peak_rss: Option<u64>,
    /// Whether it had become ready (a worker that dies while starting ran no task).
    pub was_ready: bool,
    /// What it was doing when it ended.
    pub progress: Progress,
    /// `pid P`, or `pid P on HOST, step J.S` for a remote worker.
    pub process: String,
    /// Its own pid and host, if known (see [`WorkerPool::identity`]).
    pub identity: Option<(u32, String)>,
}

/// What the pool tells the dispatcher.
#[derive(Debug)]
pub enum PoolEvent {
    /// A worker loaded its plugins and ran its initializer: it takes work.
    Ready { worker: WorkerId },
    /// A worker could not start (it is being stopped).
    StartFailed {
        worker: WorkerId,
        failure: StartFailure,
        message: String,
    },
    /// A results frame, tag at index 0 (see `protocol::ResultsHeader` for what follows).
    Results { worker: WorkerId, frame: Vec<u8> },
    /// A worker is gone; its frames all came before this.
    Exited(WorkerExit),
}

/// What the pool line shows beside the dispatcher's own counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounters {
    pub restarts: u64,
    pub replaced: u64,
}

/// Starting workers failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot start a worker process: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("no worker step could start: {0}")]
    Slurm(#[source] std::io::Error),
    #[error("cannot listen for remote workers: {0}")]
    Listen(#[source] std::io::Error),
}

/// What the dispatcher may ask of a pool.
pub trait WorkerPool {
    /// How many workers the stage should have.
    fn target_size(&self) -> usize;
    /// The live workers, oldest first (remote workers still being started count, as
    /// [`Phase::Starting`]).
    fn workers(&self) -> impl Iterator<Item = WorkerView> + '_;
    /// Starts workers until the pool has its target size (they appear as [`Phase::Starting`]),
    /// and takes in remote workers that connected since the last call.
    fn fill(&mut self) -> Result<(), PoolError>;
    /// Sends a chunk frame of `items` inputs to a worker, never blocking. A worker that is gone
    /// is reported by its exit.
    fn send_chunk(&mut self, worker: WorkerId, frame: &Arc<Vec<u8>>, items: u32);
    /// A worker's own pid and the host it runs on, once known (a remote worker says so when it
    /// is ready).
    fn identity(&self, worker: WorkerId) -> Option<(u32, String)>;
    /// Tasks sent to a worker since it started (all stages), for `max_tasks_per_worker`.
    fn tasks_sent(&self, worker: WorkerId) -> u64;
    fn progress(&self, worker: WorkerId) -> Progress;
    /// A worker's memory, read at most every few tens of ms (`None` in between, and before
    /// its first task).
    fn memory(&mut self, worker: WorkerId) -> Option<Memory>;
    /// Asks a worker to exit once it has run what it holds.
    fn retire(&mut self, worker: WorkerId, reason: StopReason);
    /// Asks a worker to finish the item it runs and exit, leaving the rest unrun.
    fn stop_after_current(&mut self, worker: WorkerId, reason: StopReason);
    /// SIGTERM now, SIGKILL after `grace`.
    fn terminate(&mut self, worker: WorkerId, reason: StopReason, grace: Duration);
    /// Ends a worker at once.
    fn kill(&mut self, worker: WorkerId, reason: StopReason);
    /// The next event, waiting at most `timeout`.
    fn next_event(&mut self, timeout: Duration) -> Option<PoolEvent>;
    fn counters(&self) -> PoolCounters;
    /// The Slurm allocations the pool asked for itself, for `status` and the progress line
    /// (none unless `[slurm]` allocations are on demand).
    fn allocations(&self) -> Vec<crate::live::AllocationView> {
        Vec::new()
    }
}

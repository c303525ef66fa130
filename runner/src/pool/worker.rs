//! One worker process as the pool keeps it: its state, its streams, and what differs between a
//! local worker and a remote one (all of which lives in [`Endpoint`]).

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::api::{Phase, Progress, StopReason, WorkerId, WorkerView};
use super::inbox::{Inbox, Outbox};
use super::{slurm, spawn};
use crate::progress::ProgressSlot;
use crate::sys::{self, ProcessEnd};

/// How long a remote worker's srun may live on after its connection ended. A worker that
/// exits closes its connection a moment before its step ends and srun exits (milliseconds,
/// tenths of a second on a loaded node); an srun still running after this is waiting on a node
/// that died or lost its network (Slurm may take a minute or more to say so), and a task the
/// worker held would wait with it for its retry.
const REMOTE_EXIT_WAIT: Duration = Duration::from_secs(3);
/// How long a local worker may live on after its result stream closed.
const LOCAL_EXIT_WAIT: Duration = Duration::from_secs(2);

/// Why a remote worker whose connection ended while its srun lived on was ended.
fn lost_connection_detail() -> String {
    format!(
        "its connection to the runner ended and its srun was still running {} s later (its node failed or lost its network?), so the runner ended the step",
        REMOTE_EXIT_WAIT.as_secs()
    )
}

/// Why a remote worker whose connection went silent was ended.
fn silent_peer_detail() -> String {
    format!(
        "nothing came through its connection for {} s (its node failed or lost its network?), so the runner ended the step",
        crate::transport::PEER_SILENCE_LIMIT.as_secs()
    )
}

/// This host's name (read once).
fn local_host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(crate::transport::hostname)
}

/// How a worker is reached, and what the runner can see of it.
pub(super) enum Endpoint {
    /// A child process on this machine: its progress slot is shared memory, its RSS is in
    /// `/proc`, its process group can be signalled.
    Local { slot: ProgressSlot },
    /// A worker elsewhere (a Slurm step), connected over TCP; the local process is its `srun`.
    Remote(Remote),
}

pub(super) struct Remote {
    /// Cut to stop the worker at once.
    conn: TcpStream,
    /// `JOB.STEP`, once the worker said where it runs (cancelled on a kill).
    step: Option<String>,
    /// `pid P on HOST[, step J.S]`, once it said so.
    location: Option<String>,
    /// The RSS it last reported with its results, and the largest.
    rss: Option<u64>,
    peak: u64,
}

impl Endpoint {
    pub(super) fn local(slot: ProgressSlot) -> Self {
        Endpoint::Local { slot }
    }

    pub(super) fn remote(conn: TcpStream) -> Self {
        Endpoint::Remote(Remote {
            conn,
            step: None,
            location: None,
            rss: None,
            peak: 0,
        })
    }

    pub(super) fn is_remote(&self) -> bool {
        matches!(self, Endpoint::Remote(_))
    }
}

/// What a worker's output thread tells the pool: a flag set once it forwarded everything,
/// waited for with a time limit; and for a Slurm step, srun's report that its node failed.
#[derive(Default)]
pub(super) struct Drained {
    done: Mutex<bool>,
    cond: Condvar,
    node_failure: Mutex<Option<String>>,
}

impl Drained {
    /// srun said the step's node failed (the line it printed).
    pub(super) fn note_node_failure(&self, line: String) {
        *self
            .node_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(line);
    }

    fn node_failure(&self) -> Option<String> {
        self.node_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(super) fn set(&self) {
        *self
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.cond.notify_all();
    }

    pub(super) fn wait(&self, limit: Duration) {
        let done = self
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = self
            .cond
            .wait_timeout_while(done, limit, |done| !*done)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
}

pub(super) struct Worker {
    id: WorkerId,
    /// The local process to signal and wait for: the worker, or the `srun` running it.
    pid: u32,
    endpoint: Endpoint,
    commands: Outbox,
    /// Its result stream (`None` once closed: the exit follows).
    inbox: Option<Inbox>,
    /// Set when everything it printed was forwarded.
    output_drained: Arc<Drained>,
    /// Set by its reaper once it is reaped: its pid must not be signalled any more.
    exited: Arc<AtomicBool>,
    ready: bool,
    stop: Option<StopReason>,
    /// What broke, for [`StopReason::BrokenStream`] and [`StopReason::LostResults`], or why the
    /// runner ended a remote worker that lost its connection.
    detail: Option<String>,
    /// When a terminated worker gets SIGKILL if it is still alive.
    kill_at: Option<Instant>,
    /// Its result stream ended while the process lived on.
    closed_alive: bool,
    /// A remote worker lost with its node (see [`Worker::node_lost`]).
    node_lost: bool,
    tasks_sent: u64,
    /// Results read from its stream (the lost-results check compares it with what it wrote).
    results_read: u64,
    rss_baseline: Option<u64>,
    /// Its own pid and host, for the joblog (a remote worker's are known once it is ready).
    identity: Option<(u32, String)>,
    /// When its memory was last read (reading `/proc` costs a few µs: rate-limited).
    memory_read: Option<Instant>,
}

/// How often a worker's memory is read at most.
const MEMORY_READ_EVERY: Duration = Duration::from_millis(50);

impl Worker {
    pub(super) fn new(
        id: WorkerId,
        pid: u32,
        endpoint: Endpoint,
        commands: Outbox,
        inbox: Inbox,
        output_drained: Arc<Drained>,
    ) -> Self {
        // A local worker is this host's process `pid`; a remote one says where it is.
        let identity = match &endpoint {
            Endpoint::Local { .. } => Some((pid, local_host().to_owned())),
            Endpoint::Remote(_) => None,
        };
        Self {
            id,
            pid,
            endpoint,
            commands,
            inbox: Some(inbox),
            output_drained,
            exited: Arc::new(AtomicBool::new(false)),
            ready: false,
            stop: None,
            detail: None,
            kill_at: None,
            closed_alive: false,
            node_lost: false,
            tasks_sent: 0,
            results_read: 0,
            rss_baseline: None,
            identity,
            memory_read: None,
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    pub(super) fn view(&self) -> WorkerView {
        // A worker whose result stream has ended can take nothing more: its exit follows.
        let phase = match (self.stop, self.ready) {
            _ if self.inbox.is_none() => Phase::Stopping,
            (Some(_), _) => Phase::Stopping,
            (None, true) => Phase::Ready,
            (None, false) => Phase::Starting,
        };
        WorkerView { id: self.id, phase }
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stop.is_some()
    }

    pub(super) fn was_ready(&self) -> bool {
        self.ready
    }

    pub(super) fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// What the exit needs said besides its reason: what broke, or, for a remote worker that
    /// ended on its own, that Slurm reported its node failed (srun then exits 0, which alone
    /// would read as a clean exit).
    pub(super) fn take_detail(&mut self) -> Option<String> {
        if self.detail.is_none() && self.stop.is_none() && self.is_remote() {
            if let Some(line) = self.output_drained.node_failure() {
                self.detail = Some(format!("Slurm reported that its node failed ({line})"));
                self.node_lost = true;
            }
        }
        self.detail.take()
    }

    /// Whether it was lost with its node, not by anything it ran: Slurm said the node failed,
    /// or its connection went silent or ended while its srun lived on. Call after
    /// [`Worker::take_detail`].
    pub(super) fn node_lost(&self) -> bool {
        self.node_lost
    }

    pub(super) fn is_remote(&self) -> bool {
        self.endpoint.is_remote()
    }

    pub(super) fn has_exited(&self) -> bool {
        self.exited.load(Ordering::Acquire)
    }

    pub(super) fn exited_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.exited)
    }

    pub(super) fn output_drained(&self) -> &Drained {
        &self.output_drained
    }

    pub(super) fn commands(&mut self) -> &mut Outbox {
        &mut self.commands
    }

    pub(super) fn inbox(&mut self) -> Option<&mut Inbox> {
        self.inbox.as_mut()
    }

    pub(super) fn close_inbox(&mut self) -> Option<Inbox> {
        self.inbox.take()
    }

    pub(super) fn tasks_sent(&self) -> u64 {
        self.tasks_sent
    }

    pub(super) fn count_sent(&mut self, items: u32) {
        self.tasks_sent += u64::from(items);
    }

    pub(super) fn results_read(&self) -> u64 {
        self.results_read
    }

    /// Marks it stopping for `reason`, unless it already has a reason. Returns whether this
    /// call set it.
    pub(super) fn mark_stopping(&mut self, reason: StopReason) -> bool {
        if self.stop.is_some() {
            return false;
        }
        self.stop = Some(reason);
        true
    }

    /// Its result stream cannot be trusted any more: ends it, with what broke (unless it was
    /// already being stopped for another reason, which stands).
    pub(super) fn break_stream(&mut self, detail: String) {
        self.fail_with(StopReason::BrokenStream, detail);
    }

    fn fail_with(&mut self, reason: StopReason, detail: String) {
        if self.stop.is_none_or(StopReason::is_failure) && self.detail.is_none() {
            self.stop = Some(reason);
            self.detail = Some(detail);
        }
        self.end_now();
    }

    /// Whether it had said it was ready.
    pub(super) fn is_ready(&self) -> bool {
        self.ready
    }

    pub(super) fn identity(&self) -> Option<(u32, String)> {
        self.identity.clone()
    }

    /// The worker said it is ready: where it runs.
    pub(super) fn on_ready(&mut self, pid: u32, host: &str, step: Option<String>) {
        self.ready = true;
        self.identity = Some((pid, host.to_owned()));
        if let Endpoint::Remote(r) = &mut self.endpoint {
            r.location = Some(match &step {
                Some(step) => format!("pid {pid} on {host}, step {step}"),
                None => format!("pid {pid} on {host}"),
            });
            r.step = step;
        }
    }

    /// A results frame with `count` items was read; `rss` is what a remote worker reported
    /// (0: not reported).
    pub(super) fn on_results(&mut self, count: u32, rss: u64) {
        self.results_read += u64::from(count);
        if let (Endpoint::Remote(r), true) = (&mut self.endpoint, rss > 0) {
            r.rss = Some(rss);
            r.peak = r.peak.max(rss);
        }
    }

    /// `pid P` for a local worker, `pid P on HOST[, step J.S]` for a remote one.
    pub(super) fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Remote(Remote {
                location: Some(location),
                ..
            }) => location.clone(),
            _ => format!("pid {}", self.pid),
        }
    }

    pub(super) fn progress(&self) -> Progress {
        match &self.endpoint {
            Endpoint::Local { slot } => {
                let reading = slot.read();
                match (reading.last, reading.running) {
                    (Some((chunk, position)), true) => {
                        let ran = sys::monotonic_ns().saturating_sub(reading.started_ns);
                        let since = Instant::now()
                            .checked_sub(Duration::from_nanos(ran))
                            .unwrap_or_else(Instant::now);
                        Progress::Running {
                            chunk,
                            position,
                            since,
                        }
                    }
                    (last, _) => Progress::Between { last },
                }
            }
            Endpoint::Remote(_) => Progress::Unknown,
        }
    }

    /// Results it wrote to its stream, as far as the runner can see (local workers only).
    pub(super) fn results_written(&self) -> Option<u64> {
        match &self.endpoint {
            Endpoint::Local { slot } => Some(slot.read().written),
            Endpoint::Remote(_) => None,
        }
    }

    /// Results it wrote that were not read, once everything its stream carried was read (a
    /// local worker only): they went somewhere else.
    pub(super) fn lost_results(&self) -> Option<u64> {
        let written = self.results_written()?;
        (written > self.results_read).then(|| written - self.results_read)
    }

    /// Marks it as ended for results that never arrived (`missing` of them), and ends it.
    pub(super) fn lose_results(&mut self, missing: u64) {
        self.fail_with(
            StopReason::LostResults,
            format!(
                "{missing} result(s) it wrote never reached the runner: its result descriptor \
                 (4) was redirected or closed, most likely by a task"
            ),
        );
    }

    /// Its RSS now: read from `/proc` for a local worker, the last report of a remote one.
    pub(super) fn rss(&self) -> Option<u64> {
        match &self.endpoint {
            Endpoint::Local { .. } => sys::rss_bytes(self.pid),
            Endpoint::Remote(r) => r.rss,
        }
    }

    /// Its RSS now and after its first task (taken on the first call after one); `None` when
    /// it has done no task yet, or was read less than [`MEMORY_READ_EVERY`] ago.
    pub(super) fn memory(&mut self) -> Option<(u64, u64)> {
        if self.results_read == 0
            || self
                .memory_read
                .is_some_and(|at| at.elapsed() < MEMORY_READ_EVERY)
        {
            return None;
        }
        self.memory_read = Some(Instant::now());
        let rss = self.rss()?;
        let baseline = *self.rss_baseline.get_or_insert(rss);
        Some((rss, baseline))
    }

    /// Its peak RSS: what the kernel reported when a local worker was reaped, or the largest
    /// RSS a remote one reported (the local process is `srun`).
    pub(super) fn peak_rss(&self, reaped: u64) -> Option<u64> {
        match &self.endpoint {
            Endpoint::Local { .. } => (reaped > 0).then_some(reaped),
            Endpoint::Remote(r) => (r.peak > 0).then_some(r.peak),
        }
    }

    /// Asks it to stop after the item it runs: a local worker reads commands between chunks,
    /// so the shared flag reaches it between items; a remote one reads the STOP frame on its
    /// command thread.
    pub(super) fn request_stop(&self) {
        if let Endpoint::Local { slot } = &self.endpoint {
            slot.request_stop();
        }
    }

    /// SIGTERM to its process group (a remote worker's connection is cut first), SIGKILL at
    /// `kill_at` if it is still alive.
    pub(super) fn terminate(&mut self, grace: Duration) {
        self.kill_at.get_or_insert(Instant::now() + grace);
        if self.has_exited() {
            return;
        }
        if let Endpoint::Remote(r) = &self.endpoint {
            let _ = r.conn.shutdown(Shutdown::Both);
        }
        spawn::kill_group(self.pid, libc::SIGTERM);
    }

    /// Ends the process at once: a local worker's group gets SIGKILL; a remote worker's
    /// connection is cut (which ends it), its srun gets SIGTERM (which ends the step) and its
    /// step is cancelled, with SIGKILL to srun after 2 s if needed.
    pub(super) fn end_now(&mut self) {
        if self.has_exited() {
            return;
        }
        match &self.endpoint {
            Endpoint::Remote(r) => {
                let _ = r.conn.shutdown(Shutdown::Both);
                spawn::kill_group(self.pid, libc::SIGTERM);
                if let Some(step) = &r.step {
                    slurm::cancel_steps(std::slice::from_ref(step), false);
                }
                self.kill_at
                    .get_or_insert(Instant::now() + Duration::from_secs(2));
            }
            Endpoint::Local { .. } => spawn::kill_group(self.pid, libc::SIGKILL),
        }
    }

    /// Its result stream ended: nothing more can come from it, so it must end too. Normally it
    /// is already exiting; a local worker whose task closed the descriptor exits at its next
    /// write; a remote worker's connection can end while its srun lives on (keepalive gave up
    /// on a vanished node, which Slurm may take minutes to notice). Its exit is forced after
    /// a while. No stop reason: if it held a task, that task crashed.
    /// `timed_out`: the connection ended because its peer stopped answering (TCP gave up
    /// after [`crate::transport::PEER_SILENCE_LIMIT`]): srun is not going to end soon, so a
    /// remote worker is ended at once.
    pub(super) fn stream_closed(&mut self, timed_out: bool) {
        let silent = timed_out && self.is_remote();
        let wait = match (self.is_remote(), silent) {
            (true, true) => Duration::ZERO,
            (true, false) => REMOTE_EXIT_WAIT,
            (false, _) => LOCAL_EXIT_WAIT,
        };
        if !self.has_exited() {
            self.kill_at.get_or_insert(Instant::now() + wait);
            self.closed_alive = true;
            if silent && self.stop.is_none() {
                self.detail.get_or_insert_with(silent_peer_detail);
                self.node_lost = true;
            }
        }
    }

    /// SIGKILL if its grace period is over; otherwise returns when it will be.
    pub(super) fn escalate(&mut self, now: Instant) -> Option<Instant> {
        match self.kill_at {
            Some(at) if at <= now => {
                if !self.has_exited() {
                    // A local worker still alive long after its result stream ended: a task
                    // closed the descriptor, and whatever it ran since is lost.
                    if self.closed_alive && self.stop.is_none() {
                        if self.is_remote() {
                            // Not a crash reason of its own: what it held crashed with it.
                            self.detail.get_or_insert_with(lost_connection_detail);
                            self.node_lost = true;
                        } else {
                            self.stop = Some(StopReason::LostResults);
                            self.detail = Some(
                                "its result descriptor (4) was redirected or closed, most likely by a task, and it went on running"
                                    .into(),
                            );
                        }
                    }
                    spawn::kill_group(self.pid, libc::SIGKILL);
                    // A killed `srun` leaves its step behind: cancel it in Slurm.
                    if let Endpoint::Remote(Remote {
                        step: Some(step), ..
                    }) = &self.endpoint
                    {
                        slurm::cancel_steps(std::slice::from_ref(step), false);
                    }
                }
                self.kill_at = None;
                None
            }
            other => other,
        }
    }

    /// When the pool is dropped: a local worker is killed at once; a remote one's connection is
    /// cut and its srun pid returned, to be ended gracefully (SIGKILL would leave the step
    /// running until Slurm notices).
    pub(super) fn abandon(&self) -> Option<u32> {
        if self.has_exited() {
            return None;
        }
        match &self.endpoint {
            Endpoint::Remote(r) => {
                let _ = r.conn.shutdown(Shutdown::Both);
                Some(self.pid)
            }
            Endpoint::Local { .. } => {
                spawn::kill_group(self.pid, libc::SIGKILL);
                None
            }
        }
    }

    /// How its exit status reads as the worker's: `srun` reports a task killed by signal N as
    /// exit status 128 + N; a local worker's status is its own.
    pub(super) fn end_reader(&self) -> fn(ProcessEnd) -> ProcessEnd {
        fn as_is(end: ProcessEnd) -> ProcessEnd {
            end
        }
        fn through_srun(end: ProcessEnd) -> ProcessEnd {
            match end {
                ProcessEnd::Exit(code) if code > 128 && code < 128 + 32 => {
                    ProcessEnd::Signal(code - 128)
                }
                other => other,
            }
        }
        match self.endpoint {
            Endpoint::Local { .. } => as_is,
            Endpoint::Remote(_) => through_srun,
        }
    }

    pub(super) fn slurm_step(&self) -> Option<&str> {
        match &self.endpoint {
            Endpoint::Remote(r) => r.step.as_deref(),
            Endpoint::Local { .. } => None,
        }
    }
}

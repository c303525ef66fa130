//! Allocations on demand: with `launcher = "slurm"` outside an allocation and a `[slurm]`
//! table, the pool submits its own allocations (`sbatch` of a batch script that only holds
//! the allocation), starts its worker steps in them as they are granted (`srun --jobid`),
//! grows and shrinks with the stages, replaces an allocation that nears its time limit, and
//! cancels every allocation it made when it stops (the guardian does it if the runner dies).
//!
//! [`plan`] decides, from a snapshot, what should happen (pure: unit-tested without Slurm);
//! [`Allocations`] holds the allocations and carries the decisions out with `sbatch`,
//! `squeue` and `scancel`.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::SlurmAlloc;

/// A Slurm job id, as Slurm prints it.
pub type JobId = String;

/// Where an allocation is, as the last `squeue` (or `sbatch`) said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocState {
    /// Waiting for resources; `reason` is squeue's (`Resources`, `Priority`, `BeginTime`).
    Queued { reason: Option<String> },
    /// Granted: worker steps may start in it. `ends_at`: its time limit, when it has one.
    Running {
        nodes: String,
        ends_at: Option<Instant>,
    },
    /// Over (time limit, cancelled, failed, node failure, or no longer known to Slurm).
    Ended { state: String },
}

#[derive(Debug, Clone)]
pub struct Allocation {
    pub job: JobId,
    pub state: AllocState,
    pub submitted: Instant,
    /// Cancelled by us: no more steps; it ends soon.
    pub cancelled: bool,
    /// Near its time limit: its workers stop taking tasks.
    pub draining: bool,
    /// Whether a worker ever started in it (an allocation that ends without one counts
    /// towards giving up).
    pub used_once: bool,
    /// Its time left when it was first seen granted: one granted with no more than
    /// `renew_before` is never drained (its successor would be no better off).
    pub granted_left: Option<Duration>,
}

impl Allocation {
    fn running(&self) -> bool {
        matches!(self.state, AllocState::Running { .. })
    }

    fn ended(&self) -> bool {
        matches!(self.state, AllocState::Ended { .. })
    }

    fn time_left(&self, now: Instant) -> Option<Duration> {
        self.time_left_at(&self.state, now)
    }

    fn time_left_at(&self, state: &AllocState, now: Instant) -> Option<Duration> {
        match state {
            AllocState::Running {
                ends_at: Some(at), ..
            } => Some(at.saturating_duration_since(now)),
            _ => None,
        }
    }

    /// Due to drain: granted with more than `renew_before`, and now within it.
    fn due_to_drain(&self, now: Instant, renew_before: Duration) -> bool {
        self.granted_left.is_some_and(|g| g > renew_before)
            && self.time_left(now).is_some_and(|left| left <= renew_before)
    }

    /// Due to be replaced: it will drain within `lead` (a successor asked for now is granted
    /// by then, and the workers move over without waiting for Slurm). The lead is at most half
    /// the time it runs before draining, so a short allocation is not replaced as it starts.
    fn due_for_successor(&self, now: Instant, limits: &Limits) -> bool {
        let Some(granted) = self.granted_left.filter(|g| *g > limits.renew_before) else {
            return false;
        };
        let lead = limits.lead.min((granted - limits.renew_before) / 2);
        self.time_left(now)
            .is_some_and(|left| left <= limits.renew_before + lead)
    }

    /// Counts towards the pool's capacity and `max_allocations`, and gets new steps: not
    /// over, not cancelled, not draining, and not due for a successor.
    fn counts(&self, now: Instant, limits: &Limits) -> bool {
        !self.ended()
            && !self.cancelled
            && !self.draining
            && !self.due_to_drain(now, limits.renew_before)
            && !self.due_for_successor(now, limits)
    }
}

/// What the planner needs of `[slurm]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Workers per allocation.
    pub tasks: usize,
    pub max_allocations: usize,
    pub renew_before: Duration,
    /// How long before an allocation drains its successor is asked for: the longest grant
    /// wait seen in this run plus [`STEP_MARGIN`] (see [`Allocations::plan`]).
    pub lead: Duration,
}

impl Limits {
    pub fn of(settings: &SlurmAlloc) -> Self {
        Self {
            tasks: settings.tasks.max(1) as usize,
            max_allocations: settings.max_allocations.max(1) as usize,
            renew_before: settings.renew_before,
            lead: STEP_MARGIN,
        }
    }
}

/// Time for a worker step to start in a granted allocation, added to the grant wait in
/// [`Limits::lead`].
pub const STEP_MARGIN: Duration = Duration::from_secs(5);

/// One thing to do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Its workers stop taking tasks: its time limit is near.
    Drain(JobId),
    /// `scancel` it: not needed any more (or drained and empty).
    Cancel(JobId),
    /// Start this many worker steps in it.
    Start { job: JobId, count: usize },
    /// Submit this many new allocations.
    Submit(usize),
}

/// What should happen now. `size`: the workers the pool wants; `used`: per allocation, its
/// workers not yet exited and its steps starting (a stopping worker still holds its step's
/// CPUs); `missing`: workers the pool lacks (size minus those alive, not stopping, and
/// starting, everywhere).
pub fn plan(
    allocs: &[Allocation],
    used: &BTreeMap<JobId, usize>,
    size: usize,
    missing: usize,
    now: Instant,
    limits: Limits,
) -> Vec<Action> {
    let used_by = |job: &str| used.get(job).copied().unwrap_or(0);
    let renew = limits.renew_before;
    let mut actions = Vec::new();
    for a in allocs.iter().filter(|a| a.running() && !a.cancelled) {
        let due = !a.draining && a.due_to_drain(now, renew);
        if due {
            actions.push(Action::Drain(a.job.clone()));
        }
        // Drained and empty: of no more use (its successor is asked for below).
        if (a.draining || due) && used_by(&a.job) == 0 {
            actions.push(Action::Cancel(a.job.clone()));
        }
    }
    let counted: Vec<&Allocation> = allocs.iter().filter(|a| a.counts(now, &limits)).collect();
    // Steps go to granted allocations with room, oldest first.
    let mut missing = missing;
    let mut started: BTreeMap<&str, usize> = BTreeMap::new();
    for a in counted.iter().filter(|a| a.running()) {
        let room = limits.tasks.saturating_sub(used_by(&a.job));
        let count = room.min(missing);
        if count > 0 {
            missing -= count;
            started.insert(&a.job, count);
            actions.push(Action::Start {
                job: a.job.clone(),
                count,
            });
        }
    }
    // Capacity: the allocations that count, granted or queued, keep those in use first, then
    // granted ones, then queued ones; the rest is cancelled if unused.
    let mut order: Vec<&&Allocation> = counted.iter().collect();
    order.sort_by_key(|a| {
        let in_use = used_by(&a.job) + started.get(a.job.as_str()).copied().unwrap_or(0);
        (in_use == 0, !a.running(), a.submitted)
    });
    let mut capacity = 0usize;
    let mut kept = 0usize;
    for a in order {
        let in_use = used_by(&a.job) + started.get(a.job.as_str()).copied().unwrap_or(0);
        if capacity >= size && in_use == 0 {
            actions.push(Action::Cancel(a.job.clone()));
        } else {
            capacity += limits.tasks;
            kept += 1;
        }
    }
    let wanted = size.saturating_sub(capacity).div_ceil(limits.tasks);
    let allowed = limits.max_allocations.saturating_sub(kept);
    if wanted.min(allowed) > 0 {
        actions.push(Action::Submit(wanted.min(allowed)));
    }
    actions
}

/// `squeue`'s `%L`, time left: `days-hours:minutes:seconds` with leading parts left out
/// (`5:00`, `1:00:00`, `2-00:00:00`); `None` for `UNLIMITED`, `NOT_SET`, `INVALID`.
pub fn parse_time_left(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (days, clock) = match text.split_once('-') {
        Some((d, rest)) => (d.parse::<u64>().ok()?, rest),
        None => (0, text),
    };
    let parts: Vec<u64> = clock
        .split(':')
        .map(|p| p.parse::<u64>().ok())
        .collect::<Option<_>>()?;
    let (h, m, s) = match parts.as_slice() {
        [s] => (0, 0, *s),
        [m, s] => (0, *m, *s),
        [h, m, s] => (*h, *m, *s),
        _ => return None,
    };
    Some(Duration::from_secs(((days * 24 + h) * 60 + m) * 60 + s))
}

/// The squeue format [`parse_squeue`] reads: job id, state, time left, nodes, reason.
pub const SQUEUE_FORMAT: &str = "%i|%T|%L|%N|%r";

/// One job as `squeue -o SQUEUE_FORMAT` printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLine {
    pub job: JobId,
    pub state: String,
    pub time_left: Option<Duration>,
    pub nodes: String,
    pub reason: Option<String>,
}

pub fn parse_squeue(output: &str) -> Vec<QueueLine> {
    output
        .lines()
        .filter_map(|line| {
            let mut f = line.trim().splitn(5, '|');
            let job = f.next()?.trim().to_owned();
            let state = f.next()?.trim().to_owned();
            let time_left = parse_time_left(f.next()?);
            let nodes = f.next()?.trim().to_owned();
            let reason = f
                .next()
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty() && r != "None" && r != "(null)");
            (!job.is_empty()).then_some(QueueLine {
                job,
                state,
                time_left,
                nodes,
                reason,
            })
        })
        .collect()
}

/// The state an allocation is in, from its squeue line (`None`: squeue does not list it).
pub fn state_of(line: Option<&QueueLine>, now: Instant) -> AllocState {
    let Some(line) = line else {
        return AllocState::Ended {
            state: "ENDED".into(),
        };
    };
    match line.state.as_str() {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "RESIZING" | "SUSPENDED" => {
            AllocState::Queued {
                reason: line.reason.clone(),
            }
        }
        "RUNNING" => AllocState::Running {
            nodes: line.nodes.clone(),
            ends_at: line.time_left.map(|left| now + left),
        },
        other => AllocState::Ended {
            state: other.to_owned(),
        },
    }
}

/// `sbatch`'s arguments for one allocation: ours first, the user's `sbatch_args` last (they
/// may override ours).
pub fn sbatch_args(settings: &SlurmAlloc, pipeline: &str) -> Vec<String> {
    let mut args = vec![
        "--parsable".to_owned(),
        format!("--job-name=loky-run:{pipeline}"),
        format!("--nodes={}", settings.nodes.max(1)),
        format!("--ntasks={}", settings.tasks.max(1)),
        // The batch script only holds the allocation: nothing to keep of its output.
        "--output=/dev/null".to_owned(),
        // A failed node costs retries, not a requeued allocation that nobody waits for.
        "--no-requeue".to_owned(),
    ];
    let mut push = |flag: &str, value: &Option<String>| {
        if let Some(v) = value {
            args.push(format!("{flag}={v}"));
        }
    };
    push("--partition", &settings.partition);
    push("--account", &settings.account);
    push("--qos", &settings.qos);
    if let Some(limit) = settings.time_limit {
        args.push(format!("--time={}", minutes_up(limit)));
    }
    if let Some(cpus) = settings.cpus_per_task {
        args.push(format!("--cpus-per-task={cpus}"));
    }
    args.extend(settings.sbatch_args.iter().cloned());
    // Held until cancelled or the time limit; `exec` so the job step is the sleep itself.
    args.push("--wrap=exec sleep infinity".to_owned());
    args
}

/// Slurm takes whole minutes; a limit is never shortened.
fn minutes_up(limit: Duration) -> u64 {
    limit.as_secs().div_ceil(60).max(1)
}

/// How long one `sbatch`, `squeue` or `scancel` may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(30);

/// Runs a Slurm command to its end or [`COMMAND_DEADLINE`]: its stdout, or what went wrong
/// (with its stderr).
fn run_command(program: &str, args: &[String]) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    // Read on threads: a full pipe must not keep the command from exiting.
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + COMMAND_DEADLINE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} did not answer within {} s",
                    COMMAND_DEADLINE.as_secs()
                ));
            }
            Err(e) => return Err(format!("{program}: {e}")),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        let said = stderr.trim();
        Err(format!(
            "{program} {}{}",
            crate::sys::describe_exit(status),
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            }
        ))
    }
}

/// Submits one allocation: its job id.
pub fn submit(settings: &SlurmAlloc, pipeline: &str) -> Result<JobId, String> {
    let out = run_command("sbatch", &sbatch_args(settings, pipeline))?;
    // `--parsable`: `JOBID` or `JOBID;CLUSTER`.
    let job = out.trim().split(';').next().unwrap_or("").trim().to_owned();
    if job.is_empty() || !job.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return Err(format!(
            "sbatch printed no job id (it printed {:?})",
            out.trim()
        ));
    }
    Ok(job)
}

/// What squeue says of these jobs (those it does not list are over).
pub fn query(jobs: &[JobId]) -> Result<Vec<QueueLine>, String> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let args = vec![
        "--noheader".to_owned(),
        "--states=all".to_owned(),
        format!("--jobs={}", jobs.join(",")),
        format!("--format={SQUEUE_FORMAT}"),
    ];
    run_command("squeue", &args).map(|out| parse_squeue(&out))
}

/// `scancel` of these jobs; `wait`: until done (bounded), else on a thread.
pub fn cancel(jobs: Vec<JobId>, wait: bool) {
    if jobs.is_empty() {
        return;
    }
    let mut args = vec!["--quiet".to_owned()];
    args.extend(jobs);
    if wait {
        let _ = run_command("scancel", &args);
    } else {
        let _ = std::thread::Builder::new()
            .name("scancel".into())
            .spawn(move || run_command("scancel", &args));
    }
}

/// What `[slurm]` and the pipeline give the pool's allocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDemand {
    pub settings: SlurmAlloc,
    /// The pipeline's name, in the allocations' job name.
    pub pipeline: String,
}

/// Something that happened to an allocation, for events and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Started {
        job: JobId,
        nodes: String,
        waited: Duration,
    },
    Draining {
        job: JobId,
        time_left: Duration,
    },
    Ended {
        job: JobId,
        state: String,
        worked: bool,
    },
}

/// How often squeue is asked while an allocation is queued (more often in its first
/// seconds: a cluster with free nodes grants at once), and otherwise.
const POLL_QUEUED: Duration = Duration::from_secs(1);
const POLL_JUST_SUBMITTED: Duration = Duration::from_millis(200);
const JUST_SUBMITTED: Duration = Duration::from_secs(5);
const POLL_RUNNING: Duration = Duration::from_secs(10);
/// After a failed `sbatch`, the next try waits this long times the failures in a row.
const SUBMIT_BACKOFF: Duration = Duration::from_secs(5);
/// Allocations in a row that end before a worker started in them, or failed `sbatch`es in
/// a row, before the pool gives up asking.
const GIVE_UP_AFTER: u32 = 3;

/// The allocations the pool made, and the worker each of its steps belongs to.
pub struct Allocations {
    on_demand: OnDemand,
    limits: Limits,
    list: Vec<Allocation>,
    /// The allocation of every live worker and starting step.
    homes: BTreeMap<u32, JobId>,
    next_poll: Instant,
    submit_failures: u32,
    submit_after: Option<Instant>,
    /// Allocations in a row that ended with no worker started in them.
    wasted: u32,
    /// Why the pool stopped asking for allocations, once it did.
    given_up: Option<String>,
    /// The longest an allocation of this run waited in the queue (successors are asked for
    /// that long ahead).
    longest_wait: Duration,
}

impl Allocations {
    pub fn new(on_demand: OnDemand) -> Self {
        Self {
            limits: Limits::of(&on_demand.settings),
            on_demand,
            list: Vec::new(),
            homes: BTreeMap::new(),
            next_poll: Instant::now(),
            submit_failures: 0,
            submit_after: None,
            wasted: 0,
            given_up: None,
            longest_wait: Duration::ZERO,
        }
    }

    pub fn on_demand(&self) -> &OnDemand {
        &self.on_demand
    }

    pub fn list(&self) -> &[Allocation] {
        &self.list
    }

    /// Why no more allocations are asked for, if so.
    pub fn given_up(&self) -> Option<&str> {
        self.given_up.as_deref()
    }

    /// Asks squeue about the allocations when due; what changed.
    pub fn refresh(&mut self, now: Instant) -> Vec<Change> {
        if self.list.is_empty() || now < self.next_poll {
            return Vec::new();
        }
        let jobs: Vec<JobId> = self.list.iter().map(|a| a.job.clone()).collect();
        // squeue failed (slurmctld busy): the allocations stay as they were; next time.
        let Ok(lines) = query(&jobs) else {
            self.next_poll = now + POLL_QUEUED;
            return Vec::new();
        };
        let mut changes = Vec::new();
        for a in &mut self.list {
            let line = lines.iter().find(|l| l.job == a.job);
            let state = state_of(line, now);
            match (&a.state, &state) {
                (AllocState::Queued { .. }, AllocState::Running { nodes, .. }) => {
                    changes.push(Change::Started {
                        job: a.job.clone(),
                        nodes: nodes.clone(),
                        waited: now.saturating_duration_since(a.submitted),
                    });
                }
                (_, AllocState::Ended { state }) if !a.ended() => {
                    changes.push(Change::Ended {
                        job: a.job.clone(),
                        state: state.clone(),
                        worked: a.used_once,
                    });
                }
                _ => {}
            }
            if a.granted_left.is_none() {
                a.granted_left = a.time_left_at(&state, now);
            }
            a.state = state;
        }
        for change in &changes {
            if let Change::Started { waited, .. } = change {
                self.longest_wait = self.longest_wait.max(*waited);
            }
            if let Change::Ended { worked, state, .. } = change {
                if *worked {
                    self.wasted = 0;
                } else {
                    self.wasted += 1;
                    if self.wasted >= GIVE_UP_AFTER {
                        self.given_up = Some(format!(
                            "{} allocations in a row ended before a worker started in them (the last: {state})",
                            self.wasted
                        ));
                    }
                }
            }
        }
        self.list.retain(|a| !a.ended());
        let queued = self
            .list
            .iter()
            .filter(|a| matches!(a.state, AllocState::Queued { .. }));
        let every = queued
            .map(|a| {
                if now.saturating_duration_since(a.submitted) < JUST_SUBMITTED {
                    POLL_JUST_SUBMITTED
                } else {
                    POLL_QUEUED
                }
            })
            .min()
            .unwrap_or(POLL_RUNNING);
        self.next_poll = now + every;
        changes
    }

    /// What to do now, for a pool of `size` that lacks `missing` workers; `alive`: the
    /// workers not yet exited (stopping ones too) and the steps starting.
    pub fn plan(
        &mut self,
        alive: impl Iterator<Item = u32>,
        size: usize,
        missing: usize,
        now: Instant,
    ) -> Vec<Action> {
        let alive: std::collections::BTreeSet<u32> = alive.collect();
        // Workers that exited hold no room in their allocation any more.
        self.homes.retain(|id, _| alive.contains(id));
        let mut used: BTreeMap<JobId, usize> = BTreeMap::new();
        for job in self.homes.values() {
            *used.entry(job.clone()).or_default() += 1;
        }
        let limits = Limits {
            lead: self.longest_wait + STEP_MARGIN,
            ..self.limits
        };
        let mut actions = plan(&self.list, &used, size, missing, now, limits);
        if self.given_up.is_some() || self.submit_after.is_some_and(|at| now < at) {
            actions.retain(|a| !matches!(a, Action::Submit(_)));
        }
        actions
    }

    /// Submits `count` allocations; the job ids, or sbatch's complaint (the first one).
    pub fn submit(&mut self, count: usize, now: Instant) -> Result<Vec<JobId>, String> {
        let mut jobs = Vec::new();
        for _ in 0..count {
            match submit(&self.on_demand.settings, &self.on_demand.pipeline) {
                Ok(job) => {
                    self.submit_failures = 0;
                    self.submit_after = None;
                    self.list.push(Allocation {
                        job: job.clone(),
                        state: AllocState::Queued { reason: None },
                        submitted: now,
                        cancelled: false,
                        draining: false,
                        used_once: false,
                        granted_left: None,
                    });
                    jobs.push(job);
                }
                Err(e) => {
                    self.submit_failures += 1;
                    self.submit_after =
                        Some(now + SUBMIT_BACKOFF.saturating_mul(self.submit_failures));
                    if self.submit_failures >= GIVE_UP_AFTER {
                        self.given_up = Some(format!(
                            "sbatch failed {} times in a row: {e}",
                            self.submit_failures
                        ));
                    }
                    if jobs.is_empty() {
                        return Err(e);
                    }
                    break;
                }
            }
        }
        // Asked about soon: a free cluster grants at once.
        self.next_poll = now;
        Ok(jobs)
    }

    /// A step started for worker `id` in allocation `job`.
    pub fn home(&mut self, id: u32, job: &str) {
        self.homes.insert(id, job.to_owned());
        if let Some(a) = self.list.iter_mut().find(|a| a.job == job) {
            a.used_once = true;
        }
    }

    /// The allocation a worker's step runs in.
    pub fn home_of(&self, id: u32) -> Option<&str> {
        self.homes.get(&id).map(String::as_str)
    }

    /// Marks an allocation as draining: its workers are to stop taking tasks.
    pub fn drain(&mut self, job: &str, now: Instant) -> Option<Change> {
        let a = self.list.iter_mut().find(|a| a.job == job)?;
        a.draining = true;
        Some(Change::Draining {
            job: job.to_owned(),
            time_left: a.time_left(now).unwrap_or_default(),
        })
    }

    /// Cancels an allocation (scancel on a thread) and forgets it.
    pub fn cancel(&mut self, job: &str) -> Option<Change> {
        let at = self.list.iter().position(|a| a.job == job)?;
        let a = self.list.remove(at);
        cancel(vec![a.job.clone()], false);
        Some(Change::Ended {
            job: a.job,
            state: "CANCELLED".into(),
            worked: a.used_once,
        })
    }

    /// Cancels every allocation, waiting (bounded) for scancel; what ended.
    pub fn cancel_all(&mut self) -> Vec<Change> {
        let gone: Vec<Allocation> = self.list.drain(..).collect();
        cancel(gone.iter().map(|a| a.job.clone()).collect(), true);
        gone.into_iter()
            .map(|a| Change::Ended {
                job: a.job,
                state: "CANCELLED".into(),
                worked: a.used_once,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        tasks: 2,
        max_allocations: 3,
        renew_before: Duration::from_secs(60),
        lead: Duration::ZERO,
    };

    fn alloc(job: &str, state: AllocState, age: u64, now: Instant) -> Allocation {
        Allocation {
            job: job.into(),
            state,
            submitted: now - Duration::from_secs(age),
            cancelled: false,
            draining: false,
            used_once: false,
            granted_left: None,
        }
    }

    fn running(left: Option<u64>, now: Instant) -> AllocState {
        AllocState::Running {
            nodes: "node1".into(),
            ends_at: left.map(|s| now + Duration::from_secs(s)),
        }
    }

    /// Allocation `job`, granted with `with` seconds and `left` seconds left now.
    fn granted(job: &str, left: u64, with: u64, now: Instant) -> Allocation {
        let mut a = alloc(job, running(Some(left), now), 9, now);
        a.granted_left = Some(Duration::from_secs(with));
        a
    }

    fn queued() -> AllocState {
        AllocState::Queued { reason: None }
    }

    fn used(pairs: &[(&str, usize)]) -> BTreeMap<JobId, usize> {
        pairs.iter().map(|(j, n)| ((*j).to_owned(), *n)).collect()
    }

    #[test]
    fn an_empty_pool_submits_what_its_size_needs_within_max_allocations() {
        let now = Instant::now();
        assert_eq!(
            plan(&[], &used(&[]), 3, 3, now, LIMITS),
            [Action::Submit(2)]
        );
        // 10 workers want 5 allocations of 2; 3 are allowed.
        assert_eq!(
            plan(&[], &used(&[]), 10, 10, now, LIMITS),
            [Action::Submit(3)]
        );
    }

    #[test]
    fn queued_allocations_count_as_capacity_and_are_not_submitted_again() {
        let now = Instant::now();
        let allocs = [alloc("1", queued(), 5, now), alloc("2", queued(), 5, now)];
        assert_eq!(plan(&allocs, &used(&[]), 4, 4, now, LIMITS), []);
    }

    #[test]
    fn granted_allocations_get_steps_up_to_their_tasks_and_the_pool_missing() {
        let now = Instant::now();
        let allocs = [
            alloc("1", running(None, now), 9, now),
            alloc("2", running(None, now), 5, now),
        ];
        assert_eq!(
            plan(&allocs, &used(&[("1", 1)]), 4, 3, now, LIMITS),
            [
                Action::Start {
                    job: "1".into(),
                    count: 1
                },
                Action::Start {
                    job: "2".into(),
                    count: 2
                },
            ]
        );
    }

    #[test]
    fn a_shrink_cancels_allocations_left_empty_and_keeps_those_in_use() {
        let now = Instant::now();
        let allocs = [
            alloc("1", running(None, now), 9, now),
            alloc("2", running(None, now), 8, now),
            alloc("3", queued(), 1, now),
        ];
        assert_eq!(
            plan(&allocs, &used(&[("2", 2)]), 2, 0, now, LIMITS),
            [Action::Cancel("1".into()), Action::Cancel("3".into())]
        );
    }

    #[test]
    fn a_restart_between_stages_keeps_its_allocations() {
        // Every worker stopped (kill_workers): the allocations are not cancelled, new steps
        // start in them.
        let now = Instant::now();
        let allocs = [alloc("1", running(None, now), 9, now)];
        assert_eq!(
            plan(&allocs, &used(&[]), 2, 2, now, LIMITS),
            [Action::Start {
                job: "1".into(),
                count: 2
            }]
        );
    }

    #[test]
    fn an_allocation_near_its_time_limit_drains_gets_a_successor_and_is_cancelled_once_empty() {
        let now = Instant::now();
        let granted = |left, with| granted("1", left, with, now);
        // 100 s left of 600: the workers go on.
        assert_eq!(
            plan(&[granted(100, 600)], &used(&[("1", 2)]), 2, 0, now, LIMITS),
            []
        );
        // 50 s left: it drains and a successor is asked for.
        assert_eq!(
            plan(&[granted(50, 600)], &used(&[("1", 2)]), 2, 0, now, LIMITS),
            [Action::Drain("1".into()), Action::Submit(1)]
        );
        // Its workers gone, it is cancelled; the successor gets the steps.
        let mut drained = granted(40, 600);
        drained.draining = true;
        let allocs = [drained, alloc("2", running(None, now), 1, now)];
        assert_eq!(
            plan(&allocs, &used(&[]), 2, 2, now, LIMITS),
            [
                Action::Cancel("1".into()),
                Action::Start {
                    job: "2".into(),
                    count: 2
                }
            ]
        );
        // Granted with less than renew_before: never drained (a successor would not do
        // better), and no endless chain of successors.
        assert_eq!(
            plan(&[granted(30, 50)], &used(&[("1", 2)]), 2, 0, now, LIMITS),
            []
        );
    }

    #[test]
    fn a_successor_is_asked_for_ahead_of_the_drain_and_the_workers_move_to_it() {
        let now = Instant::now();
        let limits = Limits {
            lead: Duration::from_secs(20),
            ..LIMITS
        };
        let granted = |left, with| granted("1", left, with, now);
        // 81 s left (renew_before 60 + lead 20 = 80): nothing yet.
        assert_eq!(
            plan(&[granted(81, 600)], &used(&[("1", 2)]), 2, 0, now, limits),
            []
        );
        // 79 s left: a successor, and the workers go on where they are.
        assert_eq!(
            plan(&[granted(79, 600)], &used(&[("1", 2)]), 2, 0, now, limits),
            [Action::Submit(1)]
        );
        // The successor granted and idle is kept (not surplus), and gets no steps yet.
        let successor = alloc("2", running(None, now), 1, now);
        let allocs = [granted(70, 600), successor.clone()];
        assert_eq!(plan(&allocs, &used(&[("1", 2)]), 2, 0, now, limits), []);
        // A worker lost meanwhile is replaced in the successor, not in the old one.
        assert_eq!(
            plan(&allocs, &used(&[("1", 1)]), 2, 1, now, limits),
            [Action::Start {
                job: "2".into(),
                count: 1
            }]
        );
        // At renew_before the old one drains; nothing more is submitted.
        let allocs = [granted(59, 600), successor.clone()];
        assert_eq!(
            plan(&allocs, &used(&[("1", 2)]), 2, 0, now, limits),
            [Action::Drain("1".into())]
        );
        // The lead is at most half the time before the drain: granted with 90 s (30 s before
        // it drains), the successor comes at 75 s left, not at once.
        assert_eq!(
            plan(&[granted(80, 90)], &used(&[("1", 2)]), 2, 0, now, limits),
            []
        );
        assert_eq!(
            plan(&[granted(74, 90)], &used(&[("1", 2)]), 2, 0, now, limits),
            [Action::Submit(1)]
        );
    }

    #[test]
    fn ended_and_cancelled_allocations_do_not_count() {
        let now = Instant::now();
        let mut cancelled = alloc("2", running(None, now), 5, now);
        cancelled.cancelled = true;
        let allocs = [
            alloc(
                "1",
                AllocState::Ended {
                    state: "NODE_FAIL".into(),
                },
                9,
                now,
            ),
            cancelled,
        ];
        assert_eq!(
            plan(&allocs, &used(&[]), 2, 2, now, LIMITS),
            [Action::Submit(1)]
        );
    }

    #[test]
    fn squeue_lines_and_time_left() {
        assert_eq!(parse_time_left("59:58"), Some(Duration::from_secs(3598)));
        assert_eq!(parse_time_left("1:00:00"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_time_left("2-03:00:01"),
            Some(Duration::from_secs(2 * 86400 + 3 * 3600 + 1))
        );
        assert_eq!(parse_time_left("UNLIMITED"), None);
        assert_eq!(parse_time_left("INVALID"), None);
        let lines =
            parse_squeue("12|RUNNING|0:59|node[1-2]|None\n13|PENDING|UNLIMITED||BeginTime\n\n");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].nodes, "node[1-2]");
        assert_eq!(lines[0].reason, None);
        assert_eq!(lines[1].reason.as_deref(), Some("BeginTime"));
        let now = Instant::now();
        assert_eq!(
            state_of(Some(&lines[1]), now),
            AllocState::Queued {
                reason: Some("BeginTime".into())
            }
        );
        assert!(matches!(
            state_of(Some(&lines[0]), now),
            AllocState::Running {
                ends_at: Some(_),
                ..
            }
        ));
        assert!(matches!(state_of(None, now), AllocState::Ended { .. }));
    }

    #[test]
    fn sbatch_gets_the_settings_and_the_users_args_last() {
        let settings = SlurmAlloc {
            partition: Some("debug".into()),
            account: None,
            qos: None,
            time_limit: Some(Duration::from_secs(90)),
            nodes: 2,
            tasks: 4,
            cpus_per_task: Some(2),
            max_allocations: 1,
            sbatch_args: vec!["--constraint=fast".into()],
            renew_before: Duration::from_secs(60),
        };
        let args = sbatch_args(&settings, "p");
        for want in [
            "--partition=debug",
            "--time=2",
            "--nodes=2",
            "--ntasks=4",
            "--cpus-per-task=2",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
        let user = args.iter().position(|a| a == "--constraint=fast").unwrap();
        let ours = args.iter().position(|a| a == "--ntasks=4").unwrap();
        assert!(user > ours);
        assert!(args.last().unwrap().starts_with("--wrap="));
    }
}

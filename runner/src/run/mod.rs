//! Running a pipeline: plan it, then run its stages in order on one reusable pool.

pub mod book;
pub mod dispatcher;
pub mod error;
pub mod outcome;
pub mod plan;
pub mod resume;
pub mod sizer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub use dispatcher::{Dispatcher, StageJob};
pub use error::RunError;
pub use outcome::{StageOutcome, StageStop};
pub use plan::{Plan, PlanError, plan};
pub use resume::ResumeMode;

use crate::config::{OnError, Pipeline};
use crate::console::Console;
use crate::events::{Event, EventLog};
use crate::input;
use crate::joblog::Joblog;
use crate::live::LiveFile;
use crate::manifest::{Manifest, StageRecord, StageStatus};
use crate::output::{OrderedWriter, PendingSync};
use crate::pool::{Decision, Pool, StopReason, WorkerId, WorkerPool, decide};

pub struct RunOptions {
    pub events: Option<PathBuf>,
    /// One line per task attempt (`--joblog`, or `[pipeline] joblog`).
    pub joblog: Option<PathBuf>,
    /// Progress lines when no bars are drawn (`--progress never` turns them off).
    pub progress_lines: bool,
    pub dry_run: bool,
    /// `--resume` and `--force`.
    pub resume: ResumeMode,
}

/// What a finished run reports back to the command line.
pub struct RunReport {
    pub exit_code: i32,
    /// How long this run took.
    pub wall: std::time::Duration,
    /// Stages finished in an earlier run and kept by `--resume` (they come first).
    pub kept: Vec<(String, StageOutcome)>,
    /// Stages run now.
    pub stages: Vec<(String, StageOutcome, Decision)>,
    pub output_dir: PathBuf,
    pub events: Option<PathBuf>,
}

/// The decisions the pool would take, stage by stage, without starting anything.
pub fn dry_run_decisions(plan: &Plan) -> Vec<Decision> {
    let mut current: Option<(crate::pool::WorkerSpec, usize)> = None;
    plan.stages
        .iter()
        .zip(&plan.pipeline.stages)
        .map(|(planned, stage)| {
            let d = decide(
                current.as_ref().map(|(s, n)| (s, *n)),
                &planned.spec,
                planned.workers,
                stage.settings.reuse,
                stage.kill_workers,
            );
            current = Some((planned.spec.clone(), planned.workers));
            d
        })
        .collect()
}

/// Runs every stage of a plan (with `--resume`: what an earlier run left unfinished).
pub fn execute(
    plan: &Plan,
    opts: &RunOptions,
    console: &Arc<Console>,
) -> Result<RunReport, RunError> {
    let pipeline = &plan.pipeline;
    let out_dir = &pipeline.output_dir;
    prepare_output_dir(out_dir)?;
    let _lock = resume::lock_output_dir(out_dir)?;
    let hashed: Vec<String> = std::iter::once(&pipeline.file)
        .chain(plan.plugins.iter().map(|p| &p.path))
        .map(|p| p.display().to_string())
        .collect();
    let mut manifest = Manifest::new(pipeline, &plan.plugins).map_err(RunError::io(format!(
        "cannot read the files whose SHA-256 the manifest records ({})",
        hashed.join(", ")
    )))?;
    manifest.stages = resume::fingerprints(plan, &manifest)?
        .into_iter()
        .zip(pipeline.stages.iter().zip(&plan.stages))
        .map(|(fingerprint, (stage, planned))| {
            let task = format!(
                "{}::{}",
                plan.plugins[planned.plugin as usize].name, stage.task.name
            );
            StageRecord::pending(&stage.name, task, fingerprint)
        })
        .collect();
    let starts = match resume::prepare(plan, &mut manifest, opts.resume, console)? {
        resume::Prepared::Run(starts) => starts,
        resume::Prepared::Finished {
            message,
            status: _,
            exit_code,
            stages,
        } => {
            console.info(&message);
            return Ok(RunReport {
                exit_code,
                wall: std::time::Duration::ZERO,
                kept: stages
                    .iter()
                    .map(|r| (r.name.clone(), StageOutcome::kept(r)))
                    .collect(),
                stages: Vec::new(),
                output_dir: out_dir.clone(),
                events: None,
            });
        }
    };
    let events = match &opts.events {
        Some(path) => EventLog::create(path).map_err(RunError::io(format!(
            "cannot create event log {}",
            path.display()
        )))?,
        None => EventLog::disabled(),
    };
    let joblog = match &opts.joblog {
        // A resumed run continues the joblog of the run it finishes.
        Some(path) if opts.resume.resume => Some(Joblog::append(path)),
        Some(path) => Some(Joblog::create(path)),
        None => None,
    }
    .transpose()
    .map_err(RunError::io(format!(
        "cannot create the joblog {}",
        opts.joblog.as_deref().unwrap_or(Path::new("")).display()
    )))?;
    manifest.events = opts.events.as_deref().map(absolute);
    manifest.joblog = opts.joblog.as_deref().map(absolute);
    let pool = Pool::new(events.clone(), console.clone())
        .map_err(RunError::io("cannot set up the worker pool"))?;
    let mut run = Run {
        plan,
        console,
        events,
        joblog,
        progress_every: opts
            .progress_lines
            .then_some(pipeline.progress_interval)
            .flatten(),
        manifest,
        live: LiveFile::new(out_dir),
        pool,
        ok_counts: Vec::new(),
        kept: Vec::new(),
        stages: Vec::new(),
        failed_any: false,
        partial: opts.resume.only.is_some(),
        prestarted: None,
        unwritten: Unwritten::FirstWrite,
        syncing: Syncing::default(),
        marks_due: Instant::now(),
    };
    run.events.emit(&Event::RunStarted {
        pipeline: &pipeline.name,
        file: &pipeline.file,
        runner_version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
    });
    let started = Instant::now();
    let last_run = starts.iter().rposition(runs_a_stage);
    // The workers take longest to get ready (exec, plugin load): started first, they come up
    // while the manifest is written.
    if let Some(first) = starts.iter().position(runs_a_stage) {
        run.prestart(first);
    } else {
        run.write_manifest(false)?;
    }
    run.live.write(None, Instant::now());
    for (i, start) in starts.iter().enumerate() {
        let last = last_run == Some(i);
        let stop = match start {
            resume::StageStart::Keep(record) => Ok(run.keep(i, record)),
            resume::StageStart::Skip(record) => Ok(run.skip(i, record.as_deref())),
            resume::StageStart::Resume => run.stage(i, Writing::Resume, last),
            resume::StageStart::Retry { previous_sha256 } => {
                run.stage(i, Writing::Retry(previous_sha256.as_deref()), last)
            }
            resume::StageStart::Fresh => run.stage(i, Writing::Fresh, last),
        };
        match stop {
            Ok(false) => {}
            Ok(true) => break,
            Err(e) => {
                // The run ends on this error: what the stages before came to is recorded.
                let _ = run.settle_syncs(true);
                if run.unwritten == Unwritten::Marks {
                    let _ = run.manifest.write_unsynced(&pipeline.output_dir);
                }
                return Err(e);
            }
        }
    }
    run.pool.shutdown();
    run.finish(started, opts.events.clone())
}

/// The pool decision for a stage, in the event log and at -v.
fn announce(events: &EventLog, console: &Console, stage: &str, decision: &Decision) {
    let (from, to) = decision.from_to();
    events.emit(&Event::PoolDecision {
        stage,
        decision: decision.kind(),
        from,
        to,
        reason: decision.reason(),
    });
    console.debug(&format!(
        "stage {stage}: pool {} ({})",
        decision.kind(),
        decision.reason()
    ));
}

/// Whether a stage start runs the stage (rather than keeping or skipping it).
fn runs_a_stage(start: &resume::StageStart) -> bool {
    matches!(
        start,
        resume::StageStart::Fresh | resume::StageStart::Resume | resume::StageStart::Retry { .. }
    )
}

/// One run of the stages: the state `execute` carries from stage to stage.
struct Run<'a> {
    plan: &'a Plan,
    console: &'a Arc<Console>,
    events: EventLog,
    joblog: Option<Joblog>,
    progress_every: Option<std::time::Duration>,
    manifest: Manifest,
    /// How the run is doing now, for `loky-run status`.
    live: LiveFile,
    pool: Pool,
    /// Records with an output, per stage so far (the size of a `from` stage's input).
    ok_counts: Vec<u64>,
    kept: Vec<(String, StageOutcome)>,
    stages: Vec<(String, StageOutcome, Decision)>,
    failed_any: bool,
    /// `--stage`: the other stages are not run.
    partial: bool,
    /// The stage whose workers were started before the run's first manifest write, and the
    /// pool decision taken for it then.
    prestarted: Option<(usize, Decision)>,
    /// What the manifest on disk lacks (see [`Unwritten`]).
    unwritten: Unwritten,
    /// Finished stages whose output the sync thread is making durable.
    syncing: Syncing,
    /// When stage marks not written yet are due in the file (see [`Unwritten::Marks`]).
    marks_due: Instant,
}

/// Finished stages whose output the sync thread is making durable (by stage index): their
/// manifest records say `output_unsynced` until it is.
#[derive(Default)]
struct Syncing {
    pending: Vec<(usize, PendingSync)>,
    /// The first sync that failed, and its stage.
    failed: Option<(usize, std::io::Error)>,
}

impl Syncing {
    /// Clears `output_unsynced` of the outputs made durable since the last call (of all of
    /// them, waiting as long as the disk takes, with `wait`). Returns whether any changed.
    fn settle(&mut self, stages: &mut [StageRecord], wait: bool) -> bool {
        let before = self.pending.len();
        let mut i = 0;
        while i < self.pending.len() {
            if !wait && !self.pending[i].1.is_done() {
                i += 1;
                continue;
            }
            if let Some(stage) = self.complete(i) {
                stages[stage].output_unsynced = false;
            }
        }
        self.pending.len() != before
    }

    /// Waits until the output of `stage` is durable, if it is being made so.
    fn wait_for(&mut self, stages: &mut [StageRecord], stage: usize) {
        if let Some(k) = self.pending.iter().position(|(s, _)| *s == stage) {
            if let Some(stage) = self.complete(k) {
                stages[stage].output_unsynced = false;
            }
        }
    }

    /// Waits for every sync, leaving the records alone (see `Run::finish`).
    fn wait_all(&mut self) {
        while !self.pending.is_empty() {
            self.complete(0);
        }
    }

    /// Waits for the sync at `k` and takes it off the list: its stage if it succeeded (a
    /// failure is kept in `failed`).
    fn complete(&mut self, k: usize) -> Option<usize> {
        let (stage, pending) = self.pending.swap_remove(k);
        match pending.wait() {
            Ok(()) => Some(stage),
            Err(e) => {
                self.failed.get_or_insert((stage, e));
                None
            }
        }
    }
}

/// What the in-memory manifest holds that its file does not yet: the next write carries it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unwritten {
    Nothing,
    /// The run's first write (synced) is still to come: it is the first stage's start mark.
    FirstWrite,
    /// Stage marks: a stage's end, and the starts of stages that do not read from another
    /// (a `from` stage's start is written at once: it carries its source's end, which a
    /// resume needs to continue it). They are written at most [`MARKS_AFTER`] after the
    /// last write (at a stage's start, or on the dispatcher's tick), and with a pool restart
    /// and the run's end. Until then the file says such a stage is pending or running, which
    /// costs a `--resume` after a kill only a check of the stage's output: it continues the
    /// stage from what its output holds. Stages of a few tasks then do not each wait for a
    /// rename of the manifest.
    Marks,
}

/// How long stage marks may wait for a manifest write.
const MARKS_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// How a stage's output starts.
#[derive(Clone, Copy)]
enum Writing<'a> {
    Fresh,
    /// Continues what an interrupted run recorded.
    Resume,
    /// `--retry-failed`: over the finished output (with the SHA-256 the manifest recorded).
    Retry(Option<&'a str>),
}

impl Run<'_> {
    fn out_dir(&self) -> &Path {
        &self.plan.pipeline.output_dir
    }

    /// Writes `manifest.json`. The run has started once the first write succeeded: an error
    /// after that is `resumable`.
    fn write_manifest(&self, resumable: bool) -> Result<(), RunError> {
        self.manifest
            .write(self.out_dir())
            .map_err(|source| RunError::Io {
                context: format!(
                    "cannot write {}",
                    self.out_dir().join("manifest.json").display()
                ),
                source,
                resumable,
            })
    }

    /// Starts the local workers of stage `i`, the first to run (nothing else has touched the
    /// pool). A failure to start one is left for the stage's own start to report.
    fn prestart(&mut self, i: usize) {
        let (stage, planned) = self.plan.stage(i);
        if planned.spec.launcher != crate::config::Launcher::Local {
            return;
        }
        let decision = decide(
            self.pool.spec().map(|s| (s, self.pool.size())),
            &planned.spec,
            planned.workers,
            stage.settings.reuse,
            stage.kill_workers,
        );
        // Said before the workers start, as for any stage.
        announce(&self.events, self.console, &stage.name, &decision);
        self.pool.apply(
            &decision,
            planned.spec.clone(),
            planned.workers,
            &stage.name,
            self.joblog.is_some(),
        );
        let _ = self.pool.fill();
        self.prestarted = Some((i, decision));
    }

    /// The run's last stage is over: every worker is told to exit now, so that their exits
    /// overlap the output's and the manifest's syncs (`shutdown` then waits for them).
    /// Takes note of the finished outputs made durable since the last call (of all of them,
    /// once each is, with `wait`), for the next manifest write. A failed sync is the run's
    /// error, as a failed write is: the stage's output may not survive a power cut.
    fn settle_syncs(&mut self, wait: bool) -> Result<(), RunError> {
        self.syncing.settle(&mut self.manifest.stages, wait);
        self.sync_failure()
    }

    /// The first failed sync not reported yet, as the run's error.
    fn sync_failure(&mut self) -> Result<(), RunError> {
        match self.syncing.failed.take() {
            Some((stage, e)) => {
                let path = output_file(self.out_dir(), &self.manifest.stages[stage].name);
                Err(RunError::io_in_run(format!(
                    "cannot write {}",
                    path.display()
                ))(e))
            }
            None => Ok(()),
        }
    }

    fn retire_all(&mut self) {
        let ids: Vec<WorkerId> = self.pool.workers().map(|w| w.id).collect();
        for id in ids {
            self.pool.retire(id, StopReason::Shutdown);
        }
    }

    /// A stage finished in an earlier run: its output stands (and feeds `from` stages).
    /// Returns whether the run stops here.
    fn keep(&mut self, i: usize, record: &StageRecord) -> bool {
        let stopped = record.status == StageStatus::Stopped;
        self.failed_any |= record.failed > 0 || stopped;
        self.ok_counts.push(record.ok);
        self.kept
            .push((record.name.clone(), StageOutcome::kept(record)));
        self.manifest.stages[i] = record.clone();
        stopped
    }

    /// `--stage` runs another stage: this one's record (from the earlier run, if any) stands,
    /// and its output feeds the chosen stage if that reads from it.
    fn skip(&mut self, i: usize, record: Option<&StageRecord>) -> bool {
        if let Some(record) = record {
            self.manifest.stages[i] = record.clone();
        }
        self.ok_counts.push(record.map_or(0, |r| r.ok));
        false
    }

    /// Runs stage `i`, its output written as `writing` says (`last`: no stage runs after it).
    /// Returns whether the run stops here.
    fn stage(&mut self, i: usize, writing: Writing<'_>, last: bool) -> Result<bool, RunError> {
        let pipeline = &self.plan.pipeline;
        let stage = &pipeline.stages[i];
        let planned = &self.plan.stages[i];
        let prestarted = match self.prestarted.take() {
            Some((j, decision)) if j == i => Some(decision),
            _ => None,
        };
        let applied = prestarted.is_some();
        let decision = prestarted.unwrap_or_else(|| {
            decide(
                self.pool.spec().map(|s| (s, self.pool.size())),
                &planned.spec,
                planned.workers,
                stage.settings.reuse,
                stage.kill_workers,
            )
        });
        if !applied {
            announce(&self.events, self.console, &stage.name, &decision);
            if matches!(decision, Decision::Restart { .. }) && self.unwritten == Unwritten::Marks {
                // A restart can take seconds: the previous stage's end is recorded first.
                self.settle_syncs(false)?;
                let _ = self.manifest.write_unsynced(self.out_dir());
                self.unwritten = Unwritten::Nothing;
                self.marks_due = Instant::now() + MARKS_AFTER;
            }
            self.pool.apply(
                &decision,
                planned.spec.clone(),
                planned.workers,
                &stage.name,
                self.joblog.is_some(),
            );
        }

        let out_dir = self.out_dir().to_owned();
        let from_file = planned
            .from
            .map(|j| output_file(&out_dir, &pipeline.stages[j].name));
        let total = match (planned.total, planned.from) {
            (Some(n), _) => n,
            (None, Some(j)) => self.ok_counts[j],
            (None, None) => 0,
        };
        let input_file = match &stage.input {
            crate::config::InputSpec::File(path) => Some(path.as_path()),
            _ => from_file.as_deref(),
        };
        if let Some(j) = planned.from {
            // What this stage computes from its source must not outlive the source in a power
            // cut: the source's output is durable before it is read.
            self.syncing.wait_for(&mut self.manifest.stages, j);
            self.sync_failure()?;
        }
        let from_sha256 = planned
            .from
            .and_then(|j| self.manifest.stages[j].output_sha256.clone());
        let from = from_file.as_deref().map(|f| (f, from_sha256.as_deref()));
        let source =
            input::open(&stage.input, from).map_err(RunError::io_in_run(match input_file {
                Some(path) => format!(
                    "cannot open {}, the input of stage {}",
                    path.display(),
                    stage.name
                ),
                None => format!("cannot open the input of stage {}", stage.name),
            }))?;
        let out_path = output_file(&out_dir, &stage.name);
        let record = &mut self.manifest.stages[i];
        let previous_wall = record.wall_time_s;
        record.status = StageStatus::Running;
        record.tasks = total;
        record.started_at = Some(crate::events::now_rfc3339());
        record.finished_at = None;
        record.pool_decision = Some(outcome::decision_record(&decision));
        let manifest_error = RunError::io_in_run(format!(
            "cannot write {}",
            out_dir.join("manifest.json").display()
        ));
        if let Writing::Retry(sha) = writing {
            record.retrying = true;
            record.previous_sha256 = sha.map(str::to_owned);
        }
        self.settle_syncs(false)?;
        if self.unwritten == Unwritten::FirstWrite {
            // The run's first write: synced, like the start of a retry.
            self.write_manifest(false)?;
            self.unwritten = Unwritten::Nothing;
        } else if matches!(writing, Writing::Retry(_)) {
            // Durable before the output moves aside: a resume must know it is a retry's.
            self.manifest.write(&out_dir).map_err(manifest_error)?;
            self.unwritten = Unwritten::Nothing;
        } else if planned.from.is_some() || Instant::now() >= self.marks_due {
            self.manifest
                .write_unsynced(&out_dir)
                .map_err(manifest_error)?;
            self.unwritten = Unwritten::Nothing;
        } else {
            self.unwritten = Unwritten::Marks;
        }
        if self.unwritten == Unwritten::Nothing {
            self.marks_due = Instant::now() + MARKS_AFTER;
        }
        let mut writer = match writing {
            Writing::Fresh => OrderedWriter::create(&out_path).map_err(RunError::io_in_run(
                format!("cannot create {}", out_path.display()),
            ))?,
            Writing::Resume => {
                let w = OrderedWriter::resume(&out_path).map_err(RunError::io_in_run(format!(
                    "cannot resume {}",
                    out_path.display()
                )))?;
                report_resumed(self.console, &stage.name, &w, total);
                w
            }
            Writing::Retry(sha) => {
                let w = OrderedWriter::retry(&out_path, sha).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        RunError::Refused(format!(
                            "cannot retry the failures of stage {}: {e}; rerun the whole stage with `loky-run run --stage {} PIPELINE`",
                            stage.name, stage.name
                        ))
                    } else {
                        RunError::io_in_run(format!("cannot retry {}", out_path.display()))(e)
                    }
                })?;
                report_retry(self.console, &stage.name, &w, total);
                w
            }
        };
        let resumed = writer.resumed();
        self.events.emit(&Event::StageStarted {
            stage: &stage.name,
            task: stage.task.to_string(),
            tasks: total,
            workers: planned.workers,
        });
        let mut outcome = if resumed.failed > 0 && stage.settings.on_error == OnError::Fail {
            // The run being resumed had already hit a failure: the stage stopped there.
            let mut o = StageOutcome::new(total);
            o.stopped = Some(StageStop::FirstFailure);
            o
        } else {
            let job = StageJob {
                stage,
                plugin: planned.plugin,
                task: planned.task,
                total,
                input: source,
                grace: pipeline.grace_period,
                progress_every: self.progress_every,
            };
            if let Some(joblog) = &mut self.joblog {
                joblog.set_stage(&stage.name);
            }
            // The file catches up with the stage marks once they are due, and with an earlier
            // stage's output made durable meanwhile at once if the file says it is not (until
            // then a `--resume` could not tell a changed output from one a power cut cut short).
            let settling = !self.syncing.pending.is_empty() || self.unwritten != Unwritten::Nothing;
            let (syncing, manifest, unwritten, marks_due) = (
                &mut self.syncing,
                &mut self.manifest,
                &mut self.unwritten,
                &mut self.marks_due,
            );
            let mut settle = || {
                let settled =
                    syncing.settle(&mut manifest.stages, false) && manifest.unsynced_on_disk();
                // The clock only while marks wait: this runs after every event of the stage.
                let due = *unwritten != Unwritten::Nothing && Instant::now() >= *marks_due;
                if (settled || due) && manifest.write_unsynced(&out_dir).is_ok() {
                    *unwritten = Unwritten::Nothing;
                    *marks_due = Instant::now() + MARKS_AFTER;
                }
            };
            Dispatcher::new(job, &mut self.pool, &mut writer, &self.events, self.console)
                .with_joblog(self.joblog.as_mut())
                .with_live(Some(&mut self.live))
                .with_tick(settling.then_some(&mut settle))
                .run()?
        };
        outcome.ok += resumed.ok;
        outcome.failed += resumed.failed;
        if last || outcome.stopped.is_some() {
            self.retire_all();
        }
        let mut pending_sync = None;
        let output_sha256 = if outcome.is_interrupted() {
            // Held results stay in the journal: `--resume` takes them back.
            writer.suspend().map(|()| None)
        } else if matches!(writing, Writing::Fresh) {
            // The next stage need not wait for the disk: a small output is synced while it
            // starts, or while the last manifest is written (the run's end waits for it).
            writer.finish_soon().map(|(sha, pending)| {
                pending_sync = pending;
                Some(sha)
            })
        } else {
            writer.finish().map(Some)
        }
        .map_err(RunError::io_in_run(format!(
            "cannot write {}",
            out_path.display()
        )))?;

        self.events.emit(&outcome.finished_event(&stage.name));
        outcome.record_into(&mut self.manifest.stages[i], &decision, previous_wall);
        let record = &mut self.manifest.stages[i];
        // An interrupted retry stays one: its previous output waits in the journal directory.
        record.retrying = matches!(writing, Writing::Retry(_)) && output_sha256.is_none();
        if !record.retrying {
            record.previous_sha256 = None;
        }
        record.output_sha256 = output_sha256;
        record.output_unsynced = pending_sync.is_some();
        if let Some(pending) = pending_sync {
            self.syncing.pending.push((i, pending));
        }
        record.finished_at = Some(crate::events::now_rfc3339());
        if record.retrying || matches!(writing, Writing::Retry(_)) {
            // A retry's end is recorded at once: its previous output is gone now (`finish`),
            // and a resume must not take the stage for a retry still waiting for it. The
            // stage's outcome stands even if this write fails: the final write reports it. Not
            // synced: its output is durable already (`finish`), so a power cut that loses this
            // mark costs a `--resume` that finds the stage complete; the run's last write is
            // synced.
            let _ = self.manifest.write_unsynced(&out_dir);
        } else {
            self.unwritten = Unwritten::Marks;
        }
        let now = Instant::now();
        // A view, throttled like the stage's own updates (a tiny stage would rewrite it twice).
        if self.live.due(now) {
            self.live.write(None, now);
        }
        self.failed_any |= outcome.failed > 0 || outcome.stopped.is_some();
        self.ok_counts.push(outcome.ok);
        self.console.info(&outcome.finished_line(&stage.name));
        let stop = outcome.stopped.is_some();
        self.stages.push((stage.name.clone(), outcome, decision));
        Ok(stop)
    }

    fn finish(mut self, started: Instant, events: Option<PathBuf>) -> Result<RunReport, RunError> {
        let interrupted = self.stages.iter().find_map(|(_, o, _)| match o.stopped {
            Some(StageStop::Interrupted(sig)) => Some(sig),
            _ => None,
        });
        let exit_code = match interrupted {
            Some(sig) => crate::interrupt::exit_code(sig),
            None => i32::from(self.failed_any),
        };
        let unfinished =
            self.partial && self.manifest.stages.iter().any(|r| !r.status.is_finished());
        self.manifest.status = match (interrupted, self.failed_any) {
            (Some(_), _) => "interrupted",
            // `--stage` left other stages to run: `--resume` runs them.
            (None, _) if unfinished => "partial",
            (None, true) => "failed",
            (None, false) => "succeeded",
        };
        self.manifest.exit_code = Some(exit_code);
        self.manifest.finished_at = Some(crate::events::now_rfc3339());
        // Every output is durable before the run says it is over: the last manifest is written
        // and synced while the outputs still being synced are, and replaces the old one only
        // once they are (one disk wait instead of two). A failed sync ends the run like a
        // failed write: its stage stays marked unsynced, for `--resume` to check, and the run
        // is left running, to be resumed.
        self.syncing.settle(&mut self.manifest.stages, false);
        let syncing: Vec<usize> = self.syncing.pending.iter().map(|(i, _)| *i).collect();
        for &i in &syncing {
            self.manifest.stages[i].output_unsynced = false;
        }
        let out_dir = self.plan.pipeline.output_dir.clone();
        let replaced = match self.syncing.failed {
            Some(_) => Ok(false),
            None => {
                let pending = &mut self.syncing;
                self.manifest.write_once(&out_dir, || {
                    pending.wait_all();
                    pending.failed.is_none()
                })
            }
        };
        if !matches!(replaced, Ok(true)) {
            self.syncing.wait_all();
            let _ = std::fs::remove_file(out_dir.join(".manifest.json.tmp"));
            if let Some((stage, _)) = &self.syncing.failed {
                self.manifest.stages[*stage].output_unsynced = true;
            }
            if matches!(self.manifest.status, "succeeded" | "failed") {
                // Not over on disk: `--resume` checks what could not be made durable.
                self.manifest.status = "running";
                self.manifest.exit_code = None;
                self.manifest.finished_at = None;
            }
            let _ = self.manifest.write_unsynced(&out_dir);
            replaced.map_err(|source| RunError::Io {
                context: format!("cannot write {}", out_dir.join("manifest.json").display()),
                source,
                resumable: true,
            })?;
            self.sync_failure()?;
        }
        self.live.remove();
        if let Some(failure) = self.live.failure() {
            self.console.warn(&format!(
                "`loky-run status` could not follow this run: writing {} failed ({failure}); the results and the manifest are complete",
                self.live.path().display()
            ));
        }
        self.events.emit(&Event::RunFinished {
            exit_code,
            wall_time_s: started.elapsed().as_secs_f64(),
        });
        if let Some(joblog) = &mut self.joblog {
            if let Some(failure) = joblog.failure() {
                self.console.warn(&format!(
                    "the joblog {} is incomplete: writing to it failed ({failure}); the results and the manifest are complete",
                    joblog.path().display()
                ));
            }
        }
        if let (Some(failure), Some(path)) = (self.events.failure(), &events) {
            self.console.warn(&format!(
                "the event log {} is incomplete: writing to it failed ({failure}); the results and the manifest are complete",
                path.display()
            ));
        }
        Ok(RunReport {
            exit_code,
            wall: started.elapsed(),
            kept: self.kept,
            stages: self.stages,
            output_dir: self.plan.pipeline.output_dir.clone(),
            events,
        })
    }
}

/// Says how much of a resumed stage was already recorded, and what was cut off as torn.
fn report_resumed(console: &Console, stage: &str, writer: &OrderedWriter, total: u64) {
    let r = writer.resumed();
    console.info(&format!(
        "stage {stage}: {} of {total} results already recorded ({} failed); running the rest",
        r.records(),
        r.failed
    ));
    if let Some((line, byte)) = r.damaged_at {
        console.warn(&format!(
            "stage {stage}: {} was damaged after line {line} (byte {byte}): cut back there; the results from input {line} on that the journal does not hold run again",
            writer.path().display()
        ));
    } else if r.dropped_output_bytes > 0 || r.dropped_journal_bytes > 0 {
        console.info(&format!(
            "stage {stage}: cut off a partly written record at the end of its output ({} bytes) or journal ({} bytes); its task runs again",
            r.dropped_output_bytes, r.dropped_journal_bytes
        ));
    }
}

/// Says what a retry reruns and what it keeps.
fn report_retry(console: &Console, stage: &str, writer: &OrderedWriter, total: u64) {
    let r = writer.resumed();
    if r.prefix > 0 {
        // An interrupted retry, continued.
        return report_resumed(console, stage, writer, total);
    }
    let never_ran = total.saturating_sub(r.carried + r.previous_failed);
    let never = match never_ran {
        0 => String::new(),
        n => format!(", {n} never ran"),
    };
    console.info(&format!(
        "stage {stage}: retrying {} of {total} tasks ({} failed{never}); {} results kept as they are",
        total.saturating_sub(r.carried),
        r.previous_failed,
        r.carried
    ));
}

/// `path` made absolute against the current directory (for the manifest).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

pub fn output_file(dir: &Path, stage: &str) -> PathBuf {
    dir.join(format!("{stage}.jsonl"))
}

/// Creates the output directory and proves it is writable, before any worker starts.
fn prepare_output_dir(dir: &Path) -> Result<(), RunError> {
    let fail = |source| RunError::OutputDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".loky-run-write-test");
    std::fs::write(&probe, b"").map_err(fail)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Printed at the end of every run, terminal or not.
pub fn print_summary(report: &RunReport, pipeline: &Pipeline, console: &Console) {
    print_table(report, pipeline, console);
    // The verdict, at every verbosity.
    let all = || {
        report
            .kept
            .iter()
            .map(|(_, o)| o)
            .chain(report.stages.iter().map(|(_, o, _)| o))
    };
    let tasks: u64 = all().map(|o| o.total).sum();
    let failed: u64 = all().map(|o| o.failed).sum();
    let retried: u64 = all().map(|o| o.retried).sum();
    let not_run: u64 = all().map(StageOutcome::not_run).sum();
    let not_run = match not_run {
        0 => String::new(),
        n => format!(", {n} not run"),
    };
    console.notice(&format!(
        "{tasks} tasks, {failed} failed, {retried} retried{not_run} in {:.1} s",
        report.wall.as_secs_f64()
    ));
}

fn print_table(report: &RunReport, pipeline: &Pipeline, console: &Console) {
    let width = report
        .kept
        .iter()
        .map(|(n, _)| n)
        .chain(report.stages.iter().map(|(n, ..)| n))
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, outcome::NAME_COLUMN);
    let mut lines = vec![StageOutcome::summary_header(width)];
    for (name, o) in &report.kept {
        lines.push(o.summary_row(name, width, "kept"));
    }
    for (name, o, d) in &report.stages {
        lines.push(o.summary_row(name, width, &d.short()));
    }
    if !report.kept.is_empty() {
        lines.push("kept: finished in an earlier run, not run again".into());
    }
    // The table says what the pool did; why it restarted is worth a line of its own.
    for (name, _, d) in &report.stages {
        if matches!(d, Decision::Restart { .. }) {
            lines.push(format!("pool restarted for {name}: {}", d.reason()));
        }
    }
    let not_started: Vec<&str> = pipeline
        .stages
        .iter()
        .skip(report.kept.len() + report.stages.len())
        .map(|s| s.name.as_str())
        .collect();
    if !not_started.is_empty() {
        lines.push(format!("not run: {}", not_started.join(", ")));
    }
    lines.push(format!("outputs: {}", report.output_dir.display()));
    lines.push(format!(
        "manifest: {}",
        report.output_dir.join("manifest.json").display()
    ));
    if let Some(events) = &report.events {
        lines.push(format!("events: {}", events.display()));
    }
    for (name, o, _) in &report.stages {
        for f in &o.first_errors {
            lines.push(format!(
                "  {name}[{}]: {}: {}",
                f.index,
                f.kind.as_str(),
                f.message
            ));
        }
        if o.failed > o.first_errors.len() as u64 {
            lines.push(format!(
                "  {name}: {} more failure(s) in {name}.jsonl",
                o.failed - o.first_errors.len() as u64
            ));
        }
        match &o.stopped {
            Some(StageStop::FirstFailure) => lines.push(format!(
                "  {name} stopped at its first failure (on_error = \"fail\"); set on_error = \"continue\" to run every task"
            )),
            Some(StageStop::WorkerStart(msg) | StageStop::WorkersLost(msg)) => {
                let listed = o.first_errors.iter().find(|f| &f.message == msg);
                lines.push(match (listed, &o.stopped) {
                    // Said in full just above.
                    (Some(f), Some(StageStop::WorkerStart(_))) => format!(
                        "  {name} stopped: its workers could not start ({name}[{}] above)",
                        f.index
                    ),
                    (Some(f), _) => format!(
                        "  {name} stopped: its workers kept dying ({name}[{}] above)",
                        f.index
                    ),
                    (None, _) => format!("  {name} stopped: {msg}"),
                });
            }
            Some(StageStop::Interrupted(sig)) => lines.push(format!(
                "  {name} interrupted by {}: completed results are kept; finish with `loky-run run --resume {}`",
                crate::sys::signal_name(*sig),
                pipeline.file.display()
            )),
            None => {}
        }
    }
    for line in lines {
        console.info(&line);
    }
}

//! Running a pipeline: plan it, then run its stages in order on one reusable pool.

pub mod plan;
pub mod resume;
pub mod stage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub use plan::{Plan, PlanError, plan};
pub use resume::ResumeMode;
pub use stage::{StageOutcome, StopReason};

use crate::config::{OnError, Pipeline};
use crate::console::Console;
use crate::error::Error;
use crate::events::{Event, EventLog};
use crate::input;
use crate::manifest::{DecisionRecord, Manifest, StageRecord, StageStatus};
use crate::output::OrderedWriter;
use crate::pool::{Decision, Pool, decide};

pub struct RunOptions {
    pub events: Option<PathBuf>,
    pub dry_run: bool,
    /// `--resume` and `--force`.
    pub resume: ResumeMode,
}

/// What a finished run reports back to the command line.
pub struct RunReport {
    pub exit_code: i32,
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
pub fn execute(plan: &Plan, opts: &RunOptions, console: &Arc<Console>) -> Result<RunReport, Error> {
    let pipeline = &plan.pipeline;
    let out_dir = &pipeline.output_dir;
    prepare_output_dir(out_dir)?;
    let _lock = resume::lock_output_dir(out_dir)?;
    let io_err = |context: String| move |source| Error::Io { context, source };
    let mut manifest =
        Manifest::new(pipeline, &plan.plugins).map_err(io_err("cannot hash plugins".into()))?;
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
            status,
            exit_code,
            stages,
        } => {
            console.info(&format!(
                "nothing to resume: the run in {} already finished ({status}); its outputs are complete",
                out_dir.display()
            ));
            return Ok(RunReport {
                exit_code,
                kept: stages.iter().map(kept_outcome).collect(),
                stages: Vec::new(),
                output_dir: out_dir.clone(),
                events: None,
            });
        }
    };
    let events = match &opts.events {
        Some(path) => EventLog::create(path).map_err(|source| Error::Io {
            context: format!("cannot create event log {}", path.display()),
            source,
        })?,
        None => EventLog::disabled(),
    };
    let write_manifest = |manifest: &Manifest| {
        manifest.write(out_dir).map_err(io_err(format!(
            "cannot write the manifest in {}",
            out_dir.display()
        )))
    };
    write_manifest(&manifest)?;
    events.emit(&Event::RunStarted {
        pipeline: &pipeline.name,
        file: &pipeline.file,
        runner_version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
    });

    let run_started = Instant::now();
    let mut pool = Pool::new();
    let mut reports = Vec::new();
    let mut kept = Vec::new();
    let mut ok_counts: Vec<u64> = Vec::new();
    let mut failed_any = false;
    for (i, stage) in pipeline.stages.iter().enumerate() {
        let planned = &plan.stages[i];
        if let resume::StageStart::Keep(record) = &starts[i] {
            // Finished in an earlier run: its output stands (and feeds `from` stages).
            let stopped = record.status == StageStatus::Stopped;
            failed_any |= record.failed > 0 || stopped;
            ok_counts.push(record.ok);
            kept.push(kept_outcome(record));
            manifest.stages[i] = (**record).clone();
            if stopped {
                break;
            }
            continue;
        }
        let decision = decide(
            pool.spec().map(|s| (s, pool.size())),
            &planned.spec,
            planned.workers,
            stage.settings.reuse,
            stage.kill_workers,
        );
        let (from, to) = decision.from_to();
        events.emit(&Event::PoolDecision {
            stage: &stage.name,
            decision: decision.kind(),
            from,
            to,
            reason: decision.reason(),
        });
        console.debug(&format!(
            "stage {}: pool {} ({})",
            stage.name,
            decision.kind(),
            decision.reason()
        ));
        pool.apply(
            &decision,
            planned.spec.clone(),
            planned.workers,
            &stage.name,
            &events,
        );

        let from_file = planned
            .from
            .map(|j| output_file(out_dir, &pipeline.stages[j].name));
        let total = match (planned.total, planned.from) {
            (Some(n), _) => n,
            (None, Some(j)) => ok_counts[j],
            (None, None) => 0,
        };
        let source = input::open(&stage.input, from_file.as_deref()).map_err(io_err(format!(
            "cannot open the input of stage {}",
            stage.name
        )))?;
        let out_path = output_file(out_dir, &stage.name);
        let record = &mut manifest.stages[i];
        let previous_wall = record.wall_time_s;
        record.status = StageStatus::Running;
        record.tasks = total;
        manifest.write_unsynced(out_dir).map_err(io_err(format!(
            "cannot write the manifest in {}",
            out_dir.display()
        )))?;
        let mut writer = match starts[i] {
            resume::StageStart::Resume => {
                let w = OrderedWriter::resume(&out_path)
                    .map_err(io_err(format!("cannot resume {}", out_path.display())))?;
                report_resumed(console, &stage.name, &w, total);
                w
            }
            _ => OrderedWriter::create(&out_path)
                .map_err(io_err(format!("cannot create {}", out_path.display())))?,
        };
        let resumed = writer.resumed();
        events.emit(&Event::StageStarted {
            stage: &stage.name,
            task: stage.task.to_string(),
            tasks: total,
            workers: planned.workers,
        });
        let job = stage::StageJob {
            stage,
            plugin: planned.plugin,
            task: planned.task,
            total,
            input: source,
            grace: pipeline.grace_period,
        };
        let mut outcome = if resumed.failed > 0 && stage.settings.on_error == OnError::Fail {
            // The run being resumed had already hit a failure: the stage stopped there.
            StageOutcome {
                total,
                ok: 0,
                failed: 0,
                retried: 0,
                wall: std::time::Duration::ZERO,
                stopped: Some(StopReason::FirstFailure),
                first_errors: Vec::new(),
            }
        } else {
            stage::Dispatcher::new(job, &mut pool, &mut writer, &events, console)
                .run()
                .map_err(io_err(format!("stage {} failed", stage.name)))?
        };
        outcome.ok += resumed.ok;
        outcome.failed += resumed.failed;
        let interrupted = matches!(outcome.stopped, Some(StopReason::Interrupted(_)));
        if interrupted {
            // Held results stay in the journal: `--resume` takes them back.
            writer.suspend()
        } else {
            writer.finish()
        }
        .map_err(io_err(format!("cannot write {}", out_path.display())))?;

        let wall = outcome.wall.as_secs_f64();
        events.emit(&Event::StageFinished {
            stage: &stage.name,
            tasks: outcome.total,
            ok: outcome.ok,
            failed: outcome.failed,
            retried: outcome.retried,
            not_run: outcome.not_run(),
            wall_time_s: wall,
            tasks_per_s: rate(outcome.ok + outcome.failed, wall),
        });
        let record = &mut manifest.stages[i];
        record.status = match outcome.stopped {
            None => StageStatus::Done,
            Some(StopReason::Interrupted(_)) => StageStatus::Interrupted,
            Some(_) => StageStatus::Stopped,
        };
        record.tasks = outcome.total;
        record.ok = outcome.ok;
        record.failed = outcome.failed;
        record.retried = outcome.retried;
        record.not_run = outcome.not_run();
        record.wall_time_s = previous_wall + wall;
        record.pool_decision = Some(DecisionRecord {
            decision: decision.kind().to_owned(),
            from,
            to,
            reason: decision.reason(),
        });
        let _ = manifest.write(out_dir);
        failed_any |= outcome.failed > 0 || outcome.stopped.is_some();
        ok_counts.push(outcome.ok);
        let stop = outcome.stopped.is_some();
        reports.push((stage.name.clone(), outcome, decision));
        if stop {
            break;
        }
    }
    pool.shutdown(&events);

    let interrupted = reports.iter().find_map(
        |(_, o, _): &(String, StageOutcome, Decision)| match o.stopped {
            Some(StopReason::Interrupted(sig)) => Some(sig),
            _ => None,
        },
    );
    let exit_code = match interrupted {
        Some(sig) => crate::interrupt::exit_code(sig),
        None => i32::from(failed_any),
    };
    manifest.status = match (interrupted, failed_any) {
        (Some(_), _) => "interrupted",
        (None, true) => "failed",
        (None, false) => "succeeded",
    };
    manifest.exit_code = Some(exit_code);
    manifest.finished_at = Some(crate::events::now_rfc3339());
    write_manifest(&manifest)?;
    events.emit(&Event::RunFinished {
        exit_code,
        wall_time_s: run_started.elapsed().as_secs_f64(),
    });
    Ok(RunReport {
        exit_code,
        kept,
        stages: reports,
        output_dir: out_dir.clone(),
        events: opts.events.clone(),
    })
}

/// A stage finished in an earlier run, as the summary shows it.
fn kept_outcome(record: &StageRecord) -> (String, StageOutcome) {
    let outcome = StageOutcome {
        total: record.tasks,
        ok: record.ok,
        failed: record.failed,
        retried: record.retried,
        wall: std::time::Duration::try_from_secs_f64(record.wall_time_s).unwrap_or_default(),
        stopped: None,
        first_errors: Vec::new(),
    };
    (record.name.clone(), outcome)
}

/// Says how much of a resumed stage was already recorded, and what was cut off as torn.
fn report_resumed(console: &Console, stage: &str, writer: &OrderedWriter, total: u64) {
    let r = writer.resumed();
    console.info(&format!(
        "stage {stage}: {} of {total} results already recorded ({} failed); running the rest",
        r.records(),
        r.failed
    ));
    if r.dropped_output_bytes > 0 || r.dropped_journal_bytes > 0 {
        console.info(&format!(
            "stage {stage}: cut off a partly written record at the end of its output ({} bytes) or journal ({} bytes); its task runs again",
            r.dropped_output_bytes, r.dropped_journal_bytes
        ));
    }
}

pub fn output_file(dir: &Path, stage: &str) -> PathBuf {
    dir.join(format!("{stage}.jsonl"))
}

fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Creates the output directory and proves it is writable, before any worker starts.
fn prepare_output_dir(dir: &Path) -> Result<(), Error> {
    let fail = |source| Error::OutputDir {
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
    let width = report
        .kept
        .iter()
        .map(|(n, _)| n)
        .chain(report.stages.iter().map(|(n, ..)| n))
        .map(|n| n.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut lines = vec![format!(
        "{:width$}  {:>9} {:>7} {:>7}  {:>8}  {:>11}  pool",
        "stage", "ok", "failed", "retried", "time", "tasks/s"
    )];
    for (name, o) in &report.kept {
        let secs = o.wall.as_secs_f64();
        lines.push(format!(
            "{name:width$}  {:>9} {:>7} {:>7}  {:>7.2}s  {:>11.0}  kept (finished in an earlier run)",
            o.ok,
            o.failed,
            o.retried,
            secs,
            rate(o.ok + o.failed, secs),
        ));
    }
    for (name, o, d) in &report.stages {
        let secs = o.wall.as_secs_f64();
        lines.push(format!(
            "{name:width$}  {:>9} {:>7} {:>7}  {:>7.2}s  {:>11.0}  {} ({})",
            o.ok,
            o.failed,
            o.retried,
            secs,
            rate(o.ok + o.failed, secs),
            d.kind(),
            d.reason()
        ));
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
            Some(StopReason::FirstFailure) => lines.push(format!(
                "  {name} stopped at its first failure (on_error = \"fail\"); set on_error = \"continue\" to run every task"
            )),
            Some(StopReason::WorkerStart(msg)) => lines.push(format!("  {name} stopped: {msg}")),
            Some(StopReason::Interrupted(sig)) => lines.push(format!(
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

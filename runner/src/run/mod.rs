//! Running a pipeline: plan it, then run its stages in order on one reusable pool.

pub mod plan;
pub mod stage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub use plan::{Plan, PlanError, plan};
pub use stage::{StageOutcome, StopReason};

use crate::config::Pipeline;
use crate::console::Console;
use crate::error::Error;
use crate::events::{Event, EventLog};
use crate::input;
use crate::manifest::{DecisionRecord, Manifest, StageRecord};
use crate::output::OrderedWriter;
use crate::pool::{Decision, Pool, decide};

pub struct RunOptions {
    pub events: Option<PathBuf>,
    pub dry_run: bool,
}

/// What a finished run reports back to the command line.
pub struct RunReport {
    pub exit_code: i32,
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

/// Runs every stage of a plan.
pub fn execute(plan: &Plan, opts: &RunOptions, console: &Arc<Console>) -> Result<RunReport, Error> {
    let pipeline = &plan.pipeline;
    let out_dir = &pipeline.output_dir;
    prepare_output_dir(out_dir)?;
    let events = match &opts.events {
        Some(path) => EventLog::create(path).map_err(|source| Error::Io {
            context: format!("cannot create event log {}", path.display()),
            source,
        })?,
        None => EventLog::disabled(),
    };
    let io_err = |context: String| move |source| Error::Io { context, source };
    let mut manifest =
        Manifest::new(pipeline, &plan.plugins).map_err(io_err("cannot hash plugins".into()))?;
    manifest.write(out_dir).map_err(io_err(format!(
        "cannot write the manifest in {}",
        out_dir.display()
    )))?;
    events.emit(&Event::RunStarted {
        pipeline: &pipeline.name,
        file: &pipeline.file,
        runner_version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
    });

    let run_started = Instant::now();
    let mut pool = Pool::new();
    let mut reports = Vec::new();
    let mut ok_counts: Vec<u64> = Vec::new();
    let mut failed_any = false;
    for (i, stage) in pipeline.stages.iter().enumerate() {
        let planned = &plan.stages[i];
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
        let mut writer = OrderedWriter::create(&out_path)
            .map_err(io_err(format!("cannot create {}", out_path.display())))?;
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
        let outcome = stage::Dispatcher::new(job, &mut pool, &mut writer, &events, console)
            .run()
            .map_err(io_err(format!("stage {} failed", stage.name)))?;
        writer
            .finish()
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
        manifest.stages.push(StageRecord {
            name: stage.name.clone(),
            task: stage.task.to_string(),
            output: format!("{}.jsonl", stage.name),
            tasks: outcome.total,
            ok: outcome.ok,
            failed: outcome.failed,
            retried: outcome.retried,
            not_run: outcome.not_run(),
            wall_time_s: wall,
            pool_decision: DecisionRecord {
                decision: decision.kind(),
                from,
                to,
                reason: decision.reason(),
            },
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
    manifest.write(out_dir).map_err(io_err(format!(
        "cannot write the manifest in {}",
        out_dir.display()
    )))?;
    events.emit(&Event::RunFinished {
        exit_code,
        wall_time_s: run_started.elapsed().as_secs_f64(),
    });
    Ok(RunReport {
        exit_code,
        stages: reports,
        output_dir: out_dir.clone(),
        events: opts.events.clone(),
    })
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
        .stages
        .iter()
        .map(|(n, ..)| n.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut lines = vec![format!(
        "{:width$}  {:>9} {:>7} {:>7}  {:>8}  {:>11}  pool",
        "stage", "ok", "failed", "retried", "time", "tasks/s"
    )];
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
        .skip(report.stages.len())
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

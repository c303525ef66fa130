//! `loky-run status OUTPUT_DIR`: what a run did, or is doing, read from its output directory.
//!
//! Read-only, and it takes no lock: it works while a run holds the directory. Three sources:
//! `manifest.json` (every stage's state and, once over, its counts and pool decision; replaced
//! atomically, never torn), `.live.json` (the running stage's progress and the runner's pid and
//! host, rewritten every second: see [`crate::live`]) and the stages' outputs (the failures
//! with their messages; the records of a stage whose runner is gone).
//!
//! Gathering ([`gather`]) is kept apart from judging ([`judge_runner`], pure, unit-tested with
//! made-up snapshots) and from showing ([`render`]).

use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::live::{self, LiveSnapshot};
use crate::manifest::{DecisionRecord, StageRecord, StageStatus};
use crate::run::outcome::{NAME_COLUMN, fit};

/// A runner on another host whose snapshot is older than this is not heard from any more.
pub const SILENT_AFTER: Duration = Duration::from_secs(30);
/// The most of a record line read: a longer error record is listed without its message.
const MAX_ERROR_LINE: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "{} holds no loky-run run: there is no {} (give the output directory of a run, or its pipeline file)",
        dir.display(),
        dir.join("manifest.json").display()
    )]
    NoRun { dir: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is not a manifest this loky-run can read: {source}", path.display())]
    BadManifest {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// How many failures to list per stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureLimit {
    At(usize),
    All,
}

impl FailureLimit {
    fn allows(self, n: usize) -> bool {
        match self {
            FailureLimit::At(max) => n < max,
            FailureLimit::All => true,
        }
    }
}

/// What `manifest.json` says, as far as `status` needs it (read leniently: fields added by
/// later versions are ignored, missing optional ones are empty).
#[derive(Debug, Deserialize)]
struct ManifestView {
    status: String,
    exit_code: Option<i32>,
    started_at: String,
    #[serde(default)]
    resumed_at: Vec<String>,
    finished_at: Option<String>,
    pipeline_file: PathBuf,
    stages: Vec<StageRecord>,
    #[serde(default)]
    events: Option<PathBuf>,
    #[serde(default)]
    joblog: Option<PathBuf>,
    #[serde(default)]
    config: serde_json::Value,
}

/// Who is running the run, as far as `status` can tell.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Runner {
    /// The run is over (the manifest says how it ended).
    Finished,
    /// Alive: its pid is there (same host), or it wrote its snapshot lately (another host).
    Alive {
        pid: u32,
        host: String,
        heard_s_ago: f64,
    },
    /// The run never finished and its runner is gone (killed, or it stopped on an error).
    Gone { pid: u32, host: String },
    /// On another host and not heard from for a while (or no snapshot at all): maybe gone.
    Silent {
        pid: Option<u32>,
        host: Option<String>,
        heard_s_ago: Option<f64>,
    },
}

/// Judges whether the runner of an unfinished run is still there. `pid_alive` is asked only
/// about a pid on this host.
pub fn judge_runner(
    manifest_status: &str,
    snapshot: Option<&LiveSnapshot>,
    this_host: &str,
    now: SystemTime,
    pid_alive: impl Fn(u32) -> bool,
) -> Runner {
    if manifest_status != "running" {
        return Runner::Finished;
    }
    let Some(s) = snapshot else {
        return Runner::Silent {
            pid: None,
            host: None,
            heard_s_ago: None,
        };
    };
    let heard_s_ago = humantime::parse_rfc3339_weak(&s.updated_at)
        .ok()
        .map(|t| now.duration_since(t).unwrap_or_default().as_secs_f64());
    if s.host == this_host {
        return if pid_alive(s.pid) {
            Runner::Alive {
                pid: s.pid,
                host: s.host.clone(),
                heard_s_ago: heard_s_ago.unwrap_or(0.0),
            }
        } else {
            Runner::Gone {
                pid: s.pid,
                host: s.host.clone(),
            }
        };
    }
    match heard_s_ago {
        Some(ago) if ago <= SILENT_AFTER.as_secs_f64() => Runner::Alive {
            pid: s.pid,
            host: s.host.clone(),
            heard_s_ago: ago,
        },
        _ => Runner::Silent {
            pid: Some(s.pid),
            host: Some(s.host.clone()),
            heard_s_ago,
        },
    }
}

/// Whether `pid` is a live loky-run on this host (a pid reused by another program is not).
fn loky_run_alive(pid: u32) -> bool {
    let Some(raw) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    // Signal 0 sends nothing; it only asks whether the process exists.
    let exists = match rustix::process::test_kill_process(raw) {
        Ok(()) => true,
        Err(errno) => errno == rustix::io::Errno::PERM,
    };
    if !exists {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        // The runner, or a zombie of it not yet reaped by its parent (that one is gone).
        Ok(comm) => comm.trim() == "loky-run" && !is_zombie(pid),
        Err(_) => true,
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name in parentheses (which may hold spaces).
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|s| s == "Z")
        })
        .unwrap_or(false)
}

/// The state of the run as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    Interrupted,
    /// `--stage` ran some stages and left others pending: `--resume` runs them.
    Partial,
    /// It never finished and its runner is gone: `--resume` finishes it.
    Killed,
    /// Unfinished, and its runner (on another host) is not heard from.
    Unknown,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Interrupted => "interrupted",
            RunState::Partial => "partial",
            RunState::Killed => "killed",
            RunState::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub index: u64,
    /// For a `from` stage: the index of the record its input came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<u64>,
    pub kind: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u64>,
}

/// A running stage's progress (from the live snapshot).
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub elapsed_s: f64,
    pub tasks_per_s: f64,
    pub eta_s: Option<f64>,
    pub workers: usize,
    pub busy: usize,
    /// The Slurm allocations the runner asked for itself (`[slurm]`), queued or running.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<crate::live::AllocationView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageStatusReport {
    pub name: String,
    pub task: String,
    /// `pending`, `running`, `done`, `stopped`, `interrupted`, or `killed` (it was running
    /// when its runner went away).
    pub state: String,
    pub tasks: u64,
    /// Inputs with a record, ok or failed.
    pub done: u64,
    pub ok: u64,
    pub failed: u64,
    pub retried: u64,
    pub not_run: u64,
    pub wall_time_s: f64,
    pub started_at: Option<String>,
    /// When the stage ended (a stage that ran with an older loky-run: `null`).
    pub finished_at: Option<String>,
    pub pool_decision: Option<DecisionRecord>,
    pub output: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The first failures by index (all with `--failures all`); `failed` counts them all.
    pub failures: Vec<Failure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub output_dir: PathBuf,
    pub pipeline: Option<String>,
    pub pipeline_file: PathBuf,
    pub state: RunState,
    pub exit_code: Option<i32>,
    pub runner: Runner,
    pub started_at: String,
    pub resumed_at: Vec<String>,
    pub finished_at: Option<String>,
    /// Since the run (first) started; up to its end once it is over.
    pub elapsed_s: Option<f64>,
    pub stages: Vec<StageStatusReport>,
    pub events: Option<PathBuf>,
    pub joblog: Option<PathBuf>,
}

/// Reads the status of the run in `dir`.
pub fn gather(dir: &Path, limit: FailureLimit) -> Result<Status, StatusError> {
    let path = dir.join("manifest.json");
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StatusError::NoRun {
                dir: dir.to_owned(),
            });
        }
        Err(source) => return Err(StatusError::Read { path, source }),
    };
    let manifest: ManifestView = serde_json::from_slice(&text)
        .map_err(|source| StatusError::BadManifest { path, source })?;
    let snapshot = live::read(dir);
    let now = SystemTime::now();
    let runner = judge_runner(
        &manifest.status,
        snapshot.as_ref(),
        &crate::transport::hostname(),
        now,
        loky_run_alive,
    );
    let state = match (manifest.status.as_str(), &runner) {
        ("succeeded", _) => RunState::Succeeded,
        ("failed", _) => RunState::Failed,
        ("interrupted", _) => RunState::Interrupted,
        ("partial", _) => RunState::Partial,
        (_, Runner::Alive { .. }) => RunState::Running,
        (_, Runner::Gone { .. }) => RunState::Killed,
        _ => RunState::Unknown,
    };
    let live_stage = match &runner {
        Runner::Alive { .. } => snapshot.as_ref().and_then(|s| s.stage.as_ref()),
        _ => None,
    };
    let mut stages = Vec::with_capacity(manifest.stages.len());
    for record in &manifest.stages {
        let output = dir.join(&record.output);
        let live = live_stage.filter(|p| p.name == record.name);
        stages.push(stage_report(record, output, live, state, now, limit)?);
    }
    let started = humantime::parse_rfc3339_weak(&manifest.started_at).ok();
    let end = match &manifest.finished_at {
        Some(at) => humantime::parse_rfc3339_weak(at).ok(),
        None if state == RunState::Running => Some(now),
        None => None,
    };
    let elapsed_s = started
        .zip(end)
        .map(|(s, e)| e.duration_since(s).unwrap_or_default().as_secs_f64());
    Ok(Status {
        output_dir: dir.to_owned(),
        pipeline: manifest.config["name"].as_str().map(str::to_owned),
        pipeline_file: manifest.pipeline_file,
        state,
        exit_code: manifest.exit_code,
        runner,
        started_at: manifest.started_at,
        resumed_at: manifest.resumed_at,
        finished_at: manifest.finished_at,
        elapsed_s,
        stages,
        events: manifest.events,
        joblog: manifest.joblog,
    })
}

fn stage_report(
    record: &StageRecord,
    output: PathBuf,
    live: Option<&live::StageProgress>,
    run: RunState,
    now: SystemTime,
    limit: FailureLimit,
) -> Result<StageStatusReport, StatusError> {
    // The runner records a stage's start in the manifest lazily (within a second): a stage
    // still marked pending that the runner says it runs, or that has an output, was started.
    let running = record.status == StageStatus::Running
        || (record.status == StageStatus::Pending && (live.is_some() || output.exists()));
    let mut report = StageStatusReport {
        name: record.name.clone(),
        task: record.task.clone(),
        state: record.status.as_str().to_owned(),
        tasks: record.tasks,
        done: record.ok + record.failed,
        ok: record.ok,
        failed: record.failed,
        retried: record.retried,
        not_run: record.not_run,
        wall_time_s: record.wall_time_s,
        started_at: record.started_at.clone(),
        finished_at: record.finished_at.clone(),
        pool_decision: record.pool_decision.clone(),
        output,
        progress: None,
        failures: Vec::new(),
    };
    let read_error = |source| StatusError::Read {
        path: report.output.clone(),
        source,
    };
    match (running, live) {
        (true, Some(p)) => {
            // A stage on the move: its counts are the runner's.
            report.state = StageStatus::Running.as_str().into();
            let started = humantime::parse_rfc3339_weak(&p.started_at).ok();
            let elapsed_s = started
                .map(|t| now.duration_since(t).unwrap_or_default().as_secs_f64())
                .unwrap_or(0.0);
            report.tasks = p.total;
            report.done = p.done;
            report.ok = p.ok;
            report.failed = p.failed;
            report.retried = p.retried;
            report.not_run = p.total.saturating_sub(p.done);
            report.wall_time_s = elapsed_s;
            report.progress = Some(Progress {
                elapsed_s,
                tasks_per_s: p.tasks_per_s,
                eta_s: p.eta_s,
                workers: p.workers,
                busy: p.busy,
                allocations: p.allocations.clone(),
            });
            let scan = scan_output(&report.output, limit, true).map_err(read_error)?;
            report.failures = scan.failures;
        }
        (true, None) => {
            // Running per the manifest, but nobody is running it (or nothing says how far it
            // is): what its output holds is what it did.
            report.state = match run {
                RunState::Killed => "killed",
                RunState::Unknown => "unknown",
                _ => "running",
            }
            .into();
            let scan = scan_output(&report.output, limit, false).map_err(read_error)?;
            report.done = scan.records;
            report.failed = scan.failed;
            report.ok = scan.records - scan.failed;
            report.not_run = report.tasks.saturating_sub(scan.records);
            report.failures = scan.failures;
        }
        (false, _) if record.failed > 0 => {
            let scan = scan_output(&report.output, limit, true).map_err(read_error)?;
            report.failures = scan.failures;
        }
        (false, _) => {}
    }
    Ok(report)
}

/// What an output file holds: its records, the failed ones, and the first failures.
#[derive(Debug, Default)]
struct Scan {
    records: u64,
    failed: u64,
    failures: Vec<Failure>,
}

/// Reads the records of an output file (a missing file holds none). With `stop_early`, stops
/// once `limit` failures are found (their count is known from elsewhere). Records are read
/// by their head only: an ok record of any size costs no memory.
fn scan_output(path: &Path, limit: FailureLimit, stop_early: bool) -> io::Result<Scan> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Scan::default()),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut scan = Scan::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        // The head of the line (up to MAX_ERROR_LINE bytes), then the rest skipped.
        let (complete, eof) = read_head(&mut reader, &mut line, MAX_ERROR_LINE)?;
        if line.is_empty() && eof {
            break;
        }
        if !complete {
            // A record being written (or a torn tail): not a record yet.
            break;
        }
        let Some((_, is_output)) = crate::output::parse_record_head(&line) else {
            continue;
        };
        scan.records += 1;
        if is_output {
            continue;
        }
        scan.failed += 1;
        if limit.allows(scan.failures.len()) {
            scan.failures.push(parse_failure(&line));
        } else if stop_early {
            break;
        }
    }
    Ok(scan)
}

/// Reads one line into `head` (at most `max` bytes of it; the rest is skipped). Returns whether
/// the line ended with a newline, and whether the file ended.
pub(crate) fn read_head(
    reader: &mut impl BufRead,
    head: &mut Vec<u8>,
    max: usize,
) -> io::Result<(bool, bool)> {
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok((false, true));
        }
        let (take, found) = match memchr_newline(buf) {
            Some(at) => (at, true),
            None => (buf.len(), false),
        };
        let room = max.saturating_sub(head.len());
        head.extend_from_slice(&buf[..take.min(room)]);
        reader.consume(if found { take + 1 } else { take });
        if found {
            return Ok((true, false));
        }
    }
}

fn memchr_newline(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

/// The failure an error record holds (a record cut at [`MAX_ERROR_LINE`] says so).
fn parse_failure(line: &[u8]) -> Failure {
    match serde_json::from_slice::<serde_json::Value>(line) {
        Ok(v) => Failure {
            index: v["index"].as_u64().unwrap_or_default(),
            source: v["source"].as_u64(),
            kind: v["error"]["kind"].as_str().unwrap_or("unknown").to_owned(),
            message: v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            attempts: v["error"]["attempts"].as_u64(),
        },
        Err(_) => Failure {
            index: crate::output::parse_record_head(line).map_or(0, |(i, _)| i),
            source: None,
            kind: "unknown".into(),
            message: format!(
                "(a record longer than {} KiB: read it in the output)",
                MAX_ERROR_LINE >> 10
            ),
            attempts: None,
        },
    }
}

/// A duration as people read it: `0.42s`, `12.3s`, `5m 03s`, `2h 05m`, `3d 04h`.
pub fn short_duration(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 10.0 {
        return format!("{secs:.2}s");
    }
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    match s {
        ..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// The status as text, for people.
pub fn render(status: &Status, resume_hint: &str) -> String {
    let mut out = String::new();
    let name = status.pipeline.as_deref().unwrap_or("(unnamed)");
    let elapsed = status.elapsed_s.map(short_duration);
    let head = match (status.state, &status.runner) {
        (RunState::Running, Runner::Alive { pid, host, .. }) => format!(
            "running for {} (pid {pid} on {host})",
            elapsed.as_deref().unwrap_or("?")
        ),
        (RunState::Killed, Runner::Gone { pid, host }) => format!(
            "killed: it never finished and its runner (pid {pid} on {host}) is gone; finish it with `{resume_hint}`"
        ),
        (
            RunState::Unknown,
            Runner::Silent {
                host, heard_s_ago, ..
            },
        ) => match (host, heard_s_ago) {
            (Some(host), Some(ago)) => format!(
                "not finished, and its runner on {host} has not been heard from for {}: it may have been killed (`{resume_hint}` finishes it)",
                short_duration(*ago)
            ),
            _ => format!(
                "not finished, and nothing says who runs it: it may have been killed (`{resume_hint}` finishes it)"
            ),
        },
        (RunState::Partial, _) => format!(
            "partial: `--stage` ran some stages and left others pending; `{resume_hint}` runs them"
        ),
        (state, _) => {
            let code = status
                .exit_code
                .map(|c| format!(" (exit {c})"))
                .unwrap_or_default();
            let took = elapsed.map(|e| format!(" in {e}")).unwrap_or_default();
            let ended = status
                .finished_at
                .as_deref()
                .map(|t| format!(", ended {t}"))
                .unwrap_or_default();
            format!("{}{code}{took}{ended}", state.as_str())
        }
    };
    out.push_str(&format!("run {name}: {head}\n"));
    out.push_str(&format!("pipeline: {}\n", status.pipeline_file.display()));
    out.push_str(&format!("outputs:  {}\n", status.output_dir.display()));
    out.push('\n');

    let width = status
        .stages
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, NAME_COLUMN);
    let counts: Vec<String> = status
        .stages
        .iter()
        .map(|s| match s.state.as_str() {
            "pending" => "-".into(),
            _ => format!("{}/{}", s.done, s.tasks),
        })
        .collect();
    let cw = counts.iter().map(String::len).max().unwrap_or(0).max(10);
    out.push_str(&format!(
        "{:width$}  {:11}  {:>cw$}  {:>6} {:>7}  {:>8}  pool\n",
        "stage", "state", "done", "failed", "retried", "time"
    ));
    for (s, count) in status.stages.iter().zip(&counts) {
        let state = match (&s.progress, s.tasks) {
            (Some(_), tasks) if tasks > 0 => {
                format!("running {:.0}%", s.done as f64 * 100.0 / tasks as f64)
            }
            _ => s.state.clone(),
        };
        let pending = s.state == "pending";
        let pool = s
            .pool_decision
            .as_ref()
            .map(decision_short)
            .unwrap_or_default();
        out.push_str(
            format!(
                "{:width$}  {:11}  {:>cw$}  {:>6} {:>7}  {:>8}  {pool}",
                fit(&s.name, width),
                state,
                count,
                if pending {
                    "-".into()
                } else {
                    s.failed.to_string()
                },
                if pending {
                    "-".into()
                } else {
                    s.retried.to_string()
                },
                if pending {
                    "-".into()
                } else {
                    short_duration(s.wall_time_s)
                },
            )
            .trim_end(),
        );
        out.push('\n');
    }
    for s in &status.stages {
        if let Some(p) = &s.progress {
            let eta = p.eta_s.map_or_else(|| "unknown".into(), short_duration);
            out.push_str(&format!(
                "\n{}: {} of {} done, {} left; {:.0} tasks/s, ETA {eta}; {} worker(s), {} busy\n",
                s.name, s.done, s.tasks, s.not_run, p.tasks_per_s, p.workers, p.busy
            ));
            if let Some(summary) = crate::live::allocations_summary(&p.allocations) {
                out.push_str(&format!("  {summary}\n"));
                for a in &p.allocations {
                    let at = match (&a.nodes, &a.reason) {
                        (Some(nodes), _) => format!(" on {nodes}"),
                        (None, Some(reason)) => format!(" ({reason})"),
                        (None, None) => String::new(),
                    };
                    out.push_str(&format!("    job {}: {}{at}\n", a.job, a.state));
                }
            }
        }
    }

    let failed: u64 = status.stages.iter().map(|s| s.failed).sum();
    if failed > 0 {
        out.push_str(&format!("\nfailures ({failed}):\n"));
        for s in &status.stages {
            for f in &s.failures {
                let source = f.source.map(|i| format!(" (from {i})")).unwrap_or_default();
                out.push_str(&format!(
                    "  {}[{}]{source}: {}: {}\n",
                    s.name,
                    f.index,
                    f.kind,
                    one_line(&f.message)
                ));
            }
            let more = s.failed.saturating_sub(s.failures.len() as u64);
            if more > 0 {
                out.push_str(&format!(
                    "  {}: {more} more (`--failures all` lists them; they are the error records of {})\n",
                    s.name,
                    s.output.display()
                ));
            }
        }
    }

    let decisions: Vec<String> = status
        .stages
        .iter()
        .filter_map(|s| {
            s.pool_decision
                .as_ref()
                .map(|d| format!("  {}: {} ({})\n", s.name, d.decision, d.reason))
        })
        .collect();
    if !decisions.is_empty() {
        out.push_str("\npool decisions:\n");
        out.extend(decisions);
    }
    for (what, path) in [("events", &status.events), ("joblog", &status.joblog)] {
        if let Some(path) = path {
            out.push_str(&format!("{what}: {}\n", path.display()));
        }
    }
    out
}

/// `start 4`, `reuse 4`, `resize 2->4`, `restart 4`, as in the run's summary.
fn decision_short(d: &DecisionRecord) -> String {
    match d.decision.as_str() {
        "resize" => format!("resize {}->{}", d.from, d.to),
        other => format!("{other} {}", d.to),
    }
}

/// A message on one line (a multi-line panic message keeps its first line and says so).
fn one_line(message: &str) -> String {
    match message.split_once('\n') {
        Some((first, _)) => format!("{first} [...]"),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(host: &str, ago: Duration, now: SystemTime) -> LiveSnapshot {
        LiveSnapshot {
            pid: 42,
            host: host.into(),
            run_started_at: humantime::format_rfc3339_millis(now - ago).to_string(),
            updated_at: humantime::format_rfc3339_millis(now - ago).to_string(),
            stage: None,
        }
    }

    #[test]
    fn a_finished_run_needs_no_runner() {
        let now = SystemTime::now();
        for status in ["succeeded", "failed", "interrupted", "partial"] {
            let s = snapshot("here", Duration::ZERO, now);
            assert_eq!(
                judge_runner(status, Some(&s), "here", now, |_| panic!("not asked")),
                Runner::Finished
            );
        }
    }

    #[test]
    fn on_this_host_the_pid_decides_however_old_the_snapshot() {
        let now = SystemTime::now();
        let old = snapshot("here", Duration::from_secs(3600), now);
        assert!(matches!(
            judge_runner("running", Some(&old), "here", now, |pid| pid == 42),
            Runner::Alive { pid: 42, .. }
        ));
        assert_eq!(
            judge_runner("running", Some(&old), "here", now, |_| false),
            Runner::Gone {
                pid: 42,
                host: "here".into()
            }
        );
    }

    #[test]
    fn on_another_host_a_stale_snapshot_is_silence() {
        let now = SystemTime::now();
        let fresh = snapshot("node7", Duration::from_secs(2), now);
        let stale = snapshot("node7", SILENT_AFTER + Duration::from_secs(5), now);
        let never = |_| panic!("a pid on another host is not looked up");
        assert!(matches!(
            judge_runner("running", Some(&fresh), "here", now, never),
            Runner::Alive { heard_s_ago, .. } if (1.5..3.0).contains(&heard_s_ago)
        ));
        assert!(matches!(
            judge_runner("running", Some(&stale), "here", now, never),
            Runner::Silent { pid: Some(42), .. }
        ));
        assert!(matches!(
            judge_runner("running", None, "here", now, never),
            Runner::Silent { pid: None, .. }
        ));
    }

    #[test]
    fn this_process_is_not_a_live_runner_and_a_missing_pid_is_not_either() {
        // The test binary is not named loky-run.
        assert!(!loky_run_alive(std::process::id()));
        assert!(!loky_run_alive(u32::MAX));
    }

    #[test]
    fn scanning_an_output_counts_records_and_keeps_the_first_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let big = "x".repeat(3 * MAX_ERROR_LINE);
        let text = format!(
            "{{\"index\":0,\"output\":\"{big}\"}}\n\
             {{\"index\":1,\"source\":4,\"error\":{{\"kind\":\"panic\",\"message\":\"boom\\nat x\"}}}}\n\
             {{\"index\":2,\"error\":{{\"kind\":\"crashed\",\"message\":\"killed\",\"attempts\":3}}}}\n\
             {{\"index\":3,\"error\":{{\"kind\":\"task_error\",\"message\":\"{big}\"}}}}\n\
             {{\"index\":4,\"output\":1"
        );
        std::fs::write(&path, text).unwrap();
        let all = scan_output(&path, FailureLimit::All, false).unwrap();
        // The torn last line is not a record.
        assert_eq!((all.records, all.failed), (4, 3));
        assert_eq!(all.failures[0].source, Some(4));
        assert_eq!(one_line(&all.failures[0].message), "boom [...]");
        assert_eq!(all.failures[1].attempts, Some(3));
        assert_eq!(all.failures[2].index, 3);
        assert!(all.failures[2].message.contains("KiB"));
        let first = scan_output(&path, FailureLimit::At(1), true).unwrap();
        assert_eq!(first.failures.len(), 1);
        let counted = scan_output(&path, FailureLimit::At(1), false).unwrap();
        assert_eq!((counted.failed, counted.failures.len()), (3, 1));
        assert_eq!(
            scan_output(&dir.path().join("none"), FailureLimit::All, false)
                .unwrap()
                .records,
            0
        );
    }

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(short_duration(0.421), "0.42s");
        assert_eq!(short_duration(12.34), "12.3s");
        assert_eq!(short_duration(303.0), "5m 03s");
        assert_eq!(short_duration(7500.0), "2h 05m");
        assert_eq!(short_duration(3.0 * 86400.0 + 4.0 * 3600.0), "3d 04h");
    }
}

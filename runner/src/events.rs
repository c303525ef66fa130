//! The event log (`--events FILE`): one JSON object per line, each with `"event"` and `"time"`.
//!
//! Events are rare next to tasks (stage and worker life cycle, failures), so each line is written
//! and flushed at once: a runner killed mid-run still leaves a complete log up to that point.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    RunStarted {
        pipeline: &'a str,
        file: &'a Path,
        runner_version: &'a str,
        pid: u32,
    },
    StageStarted {
        stage: &'a str,
        task: String,
        tasks: u64,
        workers: usize,
    },
    StageFinished {
        stage: &'a str,
        tasks: u64,
        ok: u64,
        failed: u64,
        retried: u64,
        not_run: u64,
        wall_time_s: f64,
        tasks_per_s: f64,
    },
    PoolDecision {
        stage: &'a str,
        /// `start`, `reuse`, `resize` or `restart`.
        decision: &'a str,
        from: usize,
        to: usize,
        reason: String,
    },
    WorkerStarted {
        worker: u32,
        /// The local process: the worker, or the `srun` running it.
        pid: u32,
        stage: &'a str,
        launcher: &'a str,
    },
    /// The runner listens for remote workers (Slurm launcher) at this address.
    Listening {
        address: &'a str,
    },
    /// A connection to the listening socket was refused (bad or missing token, bad frame).
    ConnectionRejected {
        peer: &'a str,
        reason: &'a str,
    },
    /// More connections were refused than get an event each (100 per 10 s): how many.
    ConnectionsRejected {
        count: u64,
        seconds: u64,
    },
    /// loky-run submitted a Slurm allocation (`[slurm]`, outside an allocation).
    AllocationSubmitted {
        job: &'a str,
        nodes: u32,
        tasks: u32,
    },
    /// A submitted allocation was granted: worker steps start in it.
    AllocationStarted {
        job: &'a str,
        nodes: &'a str,
        /// Seconds it was queued.
        waited_s: f64,
    },
    /// An allocation nears its time limit: its workers stop taking tasks and are replaced.
    AllocationDraining {
        job: &'a str,
        time_left_s: f64,
    },
    /// An allocation is over: cancelled by loky-run (no longer needed, drained, the pool
    /// stopped) or ended by Slurm (`TIMEOUT`, `NODE_FAIL`, `CANCELLED` by someone else, ...).
    AllocationEnded {
        job: &'a str,
        state: &'a str,
    },
    /// A worker loaded its plugins and ran its initializer: where it runs.
    WorkerReady {
        worker: u32,
        /// The worker's own pid on its host.
        pid: u32,
        host: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        slurm_job: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        slurm_step: Option<&'a str>,
    },
    WorkerExited {
        worker: u32,
        pid: u32,
        /// `idle_timeout`, `max_tasks`, `memory_growth`, `killed`, `crashed`, `shutdown`,
        /// `resize`, `restart`, `timeout`, `initializer`, `plugin`, `interrupted`,
        /// `broken_stream` (it wrote something that is not a frame), `lost_results` (results
        /// it wrote never arrived), `stage_stopped` (`on_error = "fail"`), `time_limit` (its
        /// Slurm allocation neared its time limit: `[slurm] renew_before`).
        reason: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        peak_rss: u64,
        tasks: u64,
    },
    TaskFailed {
        stage: &'a str,
        index: u64,
        kind: &'a str,
        message: &'a str,
        attempts: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        worker: Option<u32>,
    },
    TaskRetried {
        stage: &'a str,
        index: u64,
        attempt: u32,
        kind: &'a str,
        message: &'a str,
    },
    RunFinished {
        exit_code: i32,
        wall_time_s: f64,
    },
}

#[derive(Serialize)]
struct Line<'a, 'e> {
    #[serde(flatten)]
    event: &'a Event<'e>,
    time: String,
}

/// Where events go; a disabled log costs one branch per event. Clones share one file (the
/// TCP listener's threads report rejected connections too).
#[derive(Default, Clone)]
pub struct EventLog {
    out: Option<Arc<Mutex<Sink>>>,
}

struct Sink {
    file: BufWriter<File>,
    /// The first write that failed: the log is incomplete from there on (reported at the end
    /// of the run; an unwritable event log must not stop the run itself).
    failed: Option<io::Error>,
}

impl EventLog {
    pub fn disabled() -> Self {
        Self::default()
    }

    pub fn create(path: &Path) -> io::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        Ok(Self {
            out: Some(Arc::new(Mutex::new(Sink {
                file: BufWriter::new(File::create(path)?),
                failed: None,
            }))),
        })
    }

    pub fn emit(&self, event: &Event<'_>) {
        let Some(out) = &self.out else { return };
        let line = Line {
            event,
            time: now_rfc3339(),
        };
        let mut out = out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if out.failed.is_some() {
            return;
        }
        let written = serde_json::to_writer(&mut out.file, &line)
            .map_err(io::Error::from)
            .and_then(|()| out.file.write_all(b"\n"))
            .and_then(|()| out.file.flush());
        if let Err(e) = written {
            out.failed = Some(e);
        }
    }

    /// Why the log is incomplete, if a write failed.
    pub fn failure(&self) -> Option<String> {
        let out = self.out.as_ref()?;
        let out = out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        out.failed.as_ref().map(ToString::to_string)
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_event_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let log = EventLog::create(&path).unwrap();
        log.emit(&Event::WorkerStarted {
            worker: 1,
            pid: 42,
            stage: "s",
            launcher: "local",
        });
        log.emit(&Event::PoolDecision {
            stage: "s",
            decision: "resize",
            from: 2,
            to: 3,
            reason: "max_workers 2 -> 3".into(),
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["event"], "worker_started");
        assert_eq!(lines[0]["pid"], 42);
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["from"], 2);
    }
}

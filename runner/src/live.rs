//! `<output_dir>/.live.json`: how a run is doing right now, for `loky-run status`.
//!
//! The manifest says what each stage came to once it is over; this file says how far the
//! running stage is, and who runs it (pid and host, so that `status` can tell a live run from
//! a killed one). It is written when the run starts, then rewritten atomically (a temporary
//! file, then a rename: a reader never sees it torn) at most once a second, while a stage runs
//! and between stages (a stage shorter than that may never appear in it); it is not synced (it
//! is a view, not a record: nothing is lost with it) and is removed when the run ends.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The file's name in the output directory.
pub const FILE: &str = ".live.json";
/// How often it is rewritten while a stage runs (also the heartbeat `status` reads).
pub const EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSnapshot {
    /// The runner's pid and host.
    pub pid: u32,
    pub host: String,
    pub run_started_at: String,
    pub updated_at: String,
    /// The stage running, if one is (`None` between stages).
    pub stage: Option<StageProgress>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageProgress {
    pub name: String,
    pub started_at: String,
    pub total: u64,
    /// Inputs with a record (those a resumed run had already recorded included), of which ok
    /// and failed.
    pub done: u64,
    pub ok: u64,
    pub failed: u64,
    pub retried: u64,
    /// Workers alive, and those running tasks now.
    pub workers: usize,
    pub busy: usize,
    /// Records a second in this run, and the time left at that rate (`None`: nothing done
    /// yet, so unknown).
    pub tasks_per_s: f64,
    pub eta_s: Option<f64>,
    /// The Slurm allocations loky-run asked for itself, queued or running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<AllocationView>,
}

/// A Slurm allocation loky-run asked for itself (`[slurm]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationView {
    pub job: String,
    /// `queued` or `running`.
    pub state: String,
    /// Why it waits, as squeue says (`Resources`, `Priority`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its nodes, once granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<String>,
}

/// `Slurm allocations: 1 running, 2 queued (Resources)`, for the progress line, the pool
/// bar and `status`; `None` without allocations.
pub fn allocations_summary(list: &[AllocationView]) -> Option<String> {
    if list.is_empty() {
        return None;
    }
    let mut parts: Vec<String> = Vec::new();
    for state in ["running", "draining", "queued"] {
        let these: Vec<&AllocationView> = list.iter().filter(|a| a.state == state).collect();
        if these.is_empty() {
            continue;
        }
        let mut reasons: Vec<&str> = these.iter().filter_map(|a| a.reason.as_deref()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        let why = if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        };
        parts.push(format!("{} {state}{why}", these.len()));
    }
    Some(format!("Slurm allocations: {}", parts.join(", ")))
}

/// The seconds left for `left` more tasks at `rate` a second; unknown before the first.
pub fn eta_seconds(left: u64, done_now: u64, rate: f64) -> Option<f64> {
    (done_now > 0 && rate > 0.0).then(|| left as f64 / rate)
}

/// The runner's side: writes the file, throttled.
pub struct LiveFile {
    path: PathBuf,
    tmp: PathBuf,
    pid: u32,
    host: String,
    run_started_at: String,
    last: Option<Instant>,
    /// The first write that failed (a view only: the run goes on; it is reported at the end).
    failure: Option<String>,
    buf: Vec<u8>,
}

impl LiveFile {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(FILE),
            tmp: dir.join(".live.json.tmp"),
            pid: std::process::id(),
            host: crate::transport::hostname(),
            run_started_at: crate::events::now_rfc3339(),
            last: None,
            failure: None,
            buf: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a throttled update is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|last| now.saturating_duration_since(last) >= EVERY)
    }

    /// Writes the state now (`stage`: the one running, if any).
    pub fn write(&mut self, stage: Option<StageProgress>, now: Instant) {
        self.last = Some(now);
        let snapshot = LiveSnapshot {
            pid: self.pid,
            host: self.host.clone(),
            run_started_at: self.run_started_at.clone(),
            updated_at: crate::events::now_rfc3339(),
            stage,
        };
        self.buf.clear();
        let written = serde_json::to_writer(&mut self.buf, &snapshot)
            .map_err(io::Error::from)
            .and_then(|()| {
                self.buf.push(b'\n');
                std::fs::File::create(&self.tmp)?.write_all(&self.buf)?;
                std::fs::rename(&self.tmp, &self.path)
            });
        if let Err(e) = written {
            self.failure.get_or_insert_with(|| e.to_string());
        }
    }

    /// Why a write failed, if one did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// The run is over: the manifest says the rest.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// The snapshot in `dir`, if there is one that can be read (`status`'s side).
pub fn read(dir: &Path) -> Option<LiveSnapshot> {
    let text = std::fs::read(dir.join(FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_summed_up_by_state_with_their_reasons() {
        let view = |job: &str, state: &str, reason: Option<&str>| AllocationView {
            job: job.into(),
            state: state.into(),
            reason: reason.map(Into::into),
            nodes: None,
        };
        assert_eq!(allocations_summary(&[]), None);
        let list = [
            view("1", "running", None),
            view("2", "queued", Some("Resources")),
            view("3", "queued", Some("Priority")),
            view("4", "queued", Some("Resources")),
        ];
        assert_eq!(
            allocations_summary(&list).as_deref(),
            Some("Slurm allocations: 1 running, 3 queued (Priority, Resources)")
        );
    }

    #[test]
    fn writes_are_throttled_atomic_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut live = LiveFile::new(dir.path());
        let t0 = Instant::now();
        assert!(live.due(t0));
        assert!(read(dir.path()).is_none());
        live.write(None, t0);
        let first = read(dir.path()).unwrap();
        assert_eq!(first.pid, std::process::id());
        assert!(first.stage.is_none());
        assert!(!live.due(t0 + Duration::from_millis(500)));
        assert!(live.due(t0 + EVERY));
        let stage = StageProgress {
            name: "s".into(),
            started_at: crate::events::now_rfc3339(),
            total: 10,
            done: 4,
            ok: 3,
            failed: 1,
            retried: 0,
            workers: 2,
            busy: 2,
            tasks_per_s: 2.0,
            eta_s: eta_seconds(6, 4, 2.0),
            allocations: vec![AllocationView {
                job: "12".into(),
                state: "queued".into(),
                reason: Some("Resources".into()),
                nodes: None,
            }],
        };
        live.write(Some(stage.clone()), t0 + EVERY);
        assert_eq!(read(dir.path()).unwrap().stage, Some(stage));
        assert!(!dir.path().join(".live.json.tmp").exists());
        live.remove();
        assert!(read(dir.path()).is_none());
        assert!(live.failure().is_none());
    }

    #[test]
    fn a_failed_write_is_remembered_not_raised() {
        let dir = tempfile::tempdir().unwrap();
        let mut live = LiveFile::new(&dir.path().join("missing"));
        live.write(None, Instant::now());
        assert!(live.failure().is_some());
    }

    #[test]
    fn eta_is_unknown_before_the_first_task() {
        assert_eq!(eta_seconds(10, 0, 0.0), None);
        assert_eq!(eta_seconds(10, 5, 2.5), Some(4.0));
        assert_eq!(eta_seconds(0, 5, 2.5), Some(0.0));
    }
}

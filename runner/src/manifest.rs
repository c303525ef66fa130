//! `<output_dir>/manifest.json`: what is needed to reproduce a run.
//!
//! Written when the run starts (status `running`, every stage `pending`) and rewritten when each
//! stage starts and ends and at the end, each time atomically (write a temporary file, then
//! rename), so it is never torn. `--resume` reads it back ([`PreviousRun`]): the stages' status
//! and fingerprints say what can be kept.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Pipeline;
use crate::plugin::PluginInfo;

#[derive(Debug, Serialize)]
pub struct Manifest {
    pub runner_version: &'static str,
    pub plugin_api_version: &'static str,
    /// `running`, `succeeded`, `failed`, `interrupted`.
    pub status: &'static str,
    pub exit_code: Option<i32>,
    pub started_at: String,
    /// When the run was continued with `--resume`, oldest first.
    pub resumed_at: Vec<String>,
    pub finished_at: Option<String>,
    pub pipeline_file: PathBuf,
    pub pipeline_sha256: String,
    pub plugins: Vec<PluginRecord>,
    /// Every stage of the pipeline, in order, from the start of the run (status `pending`).
    #[serde(serialize_with = "serialize_stages")]
    pub stages: Vec<StageRecord>,
    /// Where the run's event log and joblog went, if it kept them (absolute).
    pub events: Option<PathBuf>,
    pub joblog: Option<PathBuf>,
    /// The resolved configuration (after defaults, environment and `--set`), serialized once:
    /// the manifest is rewritten at every stage's start and end, and a pipeline of many stages
    /// made that quadratic.
    pub config: Box<serde_json::value::RawValue>,
    /// The file on disk marks a stage `output_unsynced` (as of the last write that succeeded).
    #[serde(skip)]
    unsynced_on_disk: std::cell::Cell<bool>,
}

#[derive(Debug, Serialize)]
pub struct PluginRecord {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub version: String,
    pub api_version: String,
}

/// Where a stage is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Not started yet.
    Pending,
    /// Started; a run killed outright (`kill -9`, a power cut) leaves its stage in this state.
    Running,
    /// Every input has a record.
    Done,
    /// Ended early for good: `on_error = "fail"`, or workers that cannot start.
    Stopped,
    /// Stopped by a signal; `--resume` continues it.
    Interrupted,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Pending => "pending",
            StageStatus::Running => "running",
            StageStatus::Done => "done",
            StageStatus::Stopped => "stopped",
            StageStatus::Interrupted => "interrupted",
        }
    }

    /// Over for good (`done` or `stopped`): its output is complete as it is.
    pub fn is_finished(self) -> bool {
        matches!(self, StageStatus::Done | StageStatus::Stopped)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub status: StageStatus,
    pub task: String,
    pub output: String,
    /// What the stage's results depend on, part by part (task, plugin file, input, initializer,
    /// env, retries, ...), as short values or SHA-256 digests. `--resume` refuses to continue a
    /// stage whose fingerprint changed (unless `--force`).
    pub fingerprint: BTreeMap<String, String>,
    pub tasks: u64,
    pub ok: u64,
    pub failed: u64,
    pub retried: u64,
    pub not_run: u64,
    pub wall_time_s: f64,
    /// `null` until the stage starts.
    pub pool_decision: Option<DecisionRecord>,
    /// When the stage (last) started, `null` until then.
    #[serde(default)]
    pub started_at: Option<String>,
    /// When the stage (last) ended, `null` until then (and while it runs again).
    #[serde(default)]
    pub finished_at: Option<String>,
    /// SHA-256 of `<stage>.jsonl` once the stage is over (`done` or `stopped`): `--resume`
    /// refuses to keep an output that changed since, and a stage reading it checks it.
    #[serde(default)]
    pub output_sha256: Option<String>,
    /// `--retry-failed` is rerunning this stage's failures over its previous output (kept in
    /// `.journal/<stage>.previous` until the new one is complete); `previous_sha256` is what
    /// the manifest had recorded of that output.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retrying: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_sha256: Option<String>,
    /// The stage is over but its output was still being made durable when this was written (a
    /// small output, synced off the critical path: see `OrderedWriter::finish_soon`). A power
    /// cut may have cut it short: `--resume` keeps it only if it has `output_sha256`, and
    /// continues the stage otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub output_unsynced: bool,
}

impl StageRecord {
    /// A stage not started yet.
    pub fn pending(name: &str, task: String, fingerprint: BTreeMap<String, String>) -> Self {
        Self {
            name: name.to_owned(),
            status: StageStatus::Pending,
            task,
            output: format!("{name}.jsonl"),
            fingerprint,
            tasks: 0,
            ok: 0,
            failed: 0,
            retried: 0,
            not_run: 0,
            wall_time_s: 0.0,
            pool_decision: None,
            started_at: None,
            finished_at: None,
            output_sha256: None,
            retrying: false,
            previous_sha256: None,
            output_unsynced: false,
        }
    }

    /// Inputs without an ok record: failures, and inputs a stopped stage never ran.
    pub fn has_failures(&self) -> bool {
        self.failed > 0 || self.not_run > 0 || self.status == StageStatus::Stopped
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub decision: String,
    pub from: usize,
    pub to: usize,
    pub reason: String,
}

/// What `--resume` reads back from the manifest of the run it continues.
#[derive(Debug, Deserialize)]
pub struct PreviousRun {
    pub runner_version: String,
    pub status: String,
    pub exit_code: Option<i32>,
    pub started_at: String,
    #[serde(default)]
    pub resumed_at: Vec<String>,
    pub pipeline_file: PathBuf,
    pub stages: Vec<StageRecord>,
}

impl PreviousRun {
    /// The manifest in `dir`: `Ok(None)` when there is none, `Err` (a message) when it cannot
    /// be used.
    pub fn read(dir: &Path) -> Result<Option<Self>, String> {
        let path = dir.join("manifest.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            format!(
                "{} is not a manifest this loky-run can resume from ({e})",
                path.display()
            )
        })
    }

    /// The run ended (successfully or not) rather than being interrupted or killed.
    pub fn finished(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed")
    }
}

impl Manifest {
    pub fn new(pipeline: &Pipeline, plugins: &[PluginInfo]) -> io::Result<Self> {
        let plugins = plugins
            .iter()
            .map(|p| {
                Ok(PluginRecord {
                    name: p.name.clone(),
                    path: p.path.clone(),
                    sha256: crate::hash_cache::sha256(&p.path)?,
                    version: p.version.clone(),
                    api_version: p.api_version.clone(),
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            runner_version: env!("CARGO_PKG_VERSION"),
            plugin_api_version: loky_run_plugin::API_VERSION,
            status: "running",
            exit_code: None,
            started_at: crate::events::now_rfc3339(),
            resumed_at: Vec::new(),
            finished_at: None,
            pipeline_file: pipeline.file.clone(),
            pipeline_sha256: sha256_file(&pipeline.file)?,
            plugins,
            stages: Vec::new(),
            events: None,
            joblog: None,
            config: config_json(pipeline)?,
            unsynced_on_disk: std::cell::Cell::new(false),
        })
    }

    /// Replaces `manifest.json` atomically and durably (synced before the rename).
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        self.write_with(dir, true)
    }

    /// Replaces `manifest.json` atomically but without waiting for the disk: for the "stage
    /// running" mark, which a power cut may lose at no cost (`--resume` then reruns that stage
    /// from scratch instead of continuing it; the outputs are the same).
    pub fn write_unsynced(&self, dir: &Path) -> io::Result<()> {
        self.write_with(dir, false)
    }

    /// Writes and syncs the new manifest, then replaces the old one with it only if `ready`
    /// (called in between) says so: `Ok(false)` leaves the old one in place.
    pub fn write_once(&self, dir: &Path, ready: impl FnOnce() -> bool) -> io::Result<bool> {
        self.replace(dir, true, ready)
    }

    /// Whether the file on disk marks a stage whose output was not durable yet: a write is
    /// then worth making once it is (see `StageRecord::output_unsynced`).
    pub fn unsynced_on_disk(&self) -> bool {
        self.unsynced_on_disk.get()
    }

    fn write_with(&self, dir: &Path, sync: bool) -> io::Result<()> {
        self.replace(dir, sync, || true).map(drop)
    }

    fn replace(&self, dir: &Path, sync: bool, ready: impl FnOnce() -> bool) -> io::Result<bool> {
        let tmp = self.write_tmp(dir, sync)?;
        if !ready() {
            return Ok(false);
        }
        std::fs::rename(&tmp, dir.join("manifest.json"))?;
        self.unsynced_on_disk
            .set(self.stages.iter().any(|s| s.output_unsynced));
        Ok(true)
    }

    /// The manifest in `.manifest.json.tmp` (synced with `sync`), for a rename over the file.
    fn write_tmp(&self, dir: &Path, sync: bool) -> io::Result<PathBuf> {
        let tmp = dir.join(".manifest.json.tmp");
        // One write: serde_json writes in small pieces, each a syscall on an unbuffered file.
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        let mut f = File::create(&tmp)?;
        f.write_all(&text)?;
        if sync {
            f.sync_all()?;
        }
        Ok(tmp)
    }
}

thread_local! {
    /// The stage records as last serialized, and their JSON: a record unchanged since (most of
    /// them, at each rewrite of the manifest) is not serialized again. One runner writes one
    /// manifest at a time, on one thread.
    static STAGE_JSON: std::cell::RefCell<Vec<(StageRecord, Box<serde_json::value::RawValue>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The stage records, each serialized only when it changed since the last write (comparing a
/// record is far cheaper than escaping its strings again), indented for their place in the
/// manifest's `stages` array.
fn serialize_stages<S: serde::Serializer>(
    stages: &[StageRecord],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::{Error as _, SerializeSeq};
    STAGE_JSON.with_borrow_mut(|cache| {
        cache.truncate(stages.len());
        for (i, record) in stages.iter().enumerate() {
            if cache.get(i).is_some_and(|(cached, _)| cached == record) {
                continue;
            }
            let text = serde_json::to_string_pretty(record)
                .map_err(S::Error::custom)?
                .replace('\n', "\n    ");
            let raw = serde_json::value::RawValue::from_string(text).map_err(S::Error::custom)?;
            let entry = (record.clone(), raw);
            if i < cache.len() {
                cache[i] = entry;
            } else {
                cache.push(entry);
            }
        }
        let mut seq = serializer.serialize_seq(Some(stages.len()))?;
        for (_, raw) in cache.iter() {
            seq.serialize_element(raw)?;
        }
        seq.end()
    })
}

/// `pipeline` as pretty JSON indented for its place in the manifest (one level deep), as
/// `to_vec_pretty` would have written it in place.
fn config_json(pipeline: &Pipeline) -> io::Result<Box<serde_json::value::RawValue>> {
    let text = serde_json::to_string_pretty(pipeline)?;
    let indented = text.replace('\n', "\n  ");
    serde_json::value::RawValue::from_string(indented).map_err(io::Error::other)
}

/// The SHA-256 of some bytes, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut reader = BufReader::new(File::open(path)?);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_previous_run_reads_back_its_stage_records() {
        let dir = tempfile::tempdir().unwrap();
        assert!(PreviousRun::read(dir.path()).unwrap().is_none());
        let mut record = StageRecord::pending(
            "s",
            "demo::square".into(),
            [("retries".to_owned(), "0".to_owned())].into(),
        );
        record.status = StageStatus::Interrupted;
        record.ok = 7;
        let text = serde_json::json!({
            "runner_version": "0.1.0",
            "status": "interrupted",
            "exit_code": 130,
            "started_at": "2026-01-01T00:00:00.000Z",
            "pipeline_file": "/p.toml",
            "stages": [record],
            "config": {"ignored": true},
        });
        std::fs::write(dir.path().join("manifest.json"), text.to_string()).unwrap();
        let prev = PreviousRun::read(dir.path()).unwrap().unwrap();
        assert!(!prev.finished());
        assert_eq!(prev.stages[0].status, StageStatus::Interrupted);
        assert_eq!(prev.stages[0].ok, 7);
        assert_eq!(prev.stages[0].fingerprint["retries"], "0");
        assert!(prev.resumed_at.is_empty());
        std::fs::write(dir.path().join("manifest.json"), "{\"status\": 1}").unwrap();
        assert!(PreviousRun::read(dir.path()).is_err());
    }
}

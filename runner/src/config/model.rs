//! The resolved pipeline: what every other module consumes. Produced by [`super::load`] after
//! layering (file, environment, `--set`), defaults and validation. Paths are absolute.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// A whole pipeline, ready to plan and run.
#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    pub name: String,
    /// Absolute path of the pipeline file.
    pub file: PathBuf,
    /// The directory every relative path in the file is resolved against.
    pub base_dir: PathBuf,
    pub plugins: Vec<PluginSpec>,
    /// Absolute; default `<base_dir>/out/<name>`.
    pub output_dir: PathBuf,
    /// After a first interrupt, how long running tasks may finish before they are killed.
    #[serde(with = "humantime_serde_compat")]
    pub grace_period: Duration,
    /// Absolute; `None`: no joblog.
    pub joblog: Option<PathBuf>,
    /// Off a terminal, how often a progress line per running stage (`None`: never).
    #[serde(with = "humantime_serde_compat::option")]
    pub progress_interval: Option<Duration>,
    /// `[slurm]`: the allocations loky-run asks for itself when `launcher = "slurm"` runs
    /// outside one. `None`: no `[slurm]` table.
    pub slurm: Option<SlurmAlloc>,
    pub stages: Vec<Stage>,
}

/// `[slurm]`: what each allocation loky-run submits (`sbatch`) asks for, and how many it may
/// hold at once. Used only outside an allocation; inside one, workers are steps of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlurmAlloc {
    /// `--partition`; `None`: the cluster's default.
    pub partition: Option<String>,
    /// `--account`; `None`: the user's default.
    pub account: Option<String>,
    /// `--qos`; `None`: the default.
    pub qos: Option<String>,
    /// `--time`, whole minutes rounded up; `None`: the partition's default.
    #[serde(with = "humantime_serde_compat::option")]
    pub time_limit: Option<Duration>,
    /// `--nodes` of each allocation. Default 1.
    pub nodes: u32,
    /// `--ntasks` of each allocation: the workers it holds. Default: `nodes`.
    pub tasks: u32,
    /// `--cpus-per-task`; `None`: Slurm's default (1).
    pub cpus_per_task: Option<u32>,
    /// Allocations queued or running at once (those being replaced near their time limit
    /// not counted). Default 1.
    pub max_allocations: u32,
    /// Extra arguments for `sbatch`, after loky-run's own.
    pub sbatch_args: Vec<String>,
    /// A worker stops taking tasks this long before its allocation's time limit, and is
    /// replaced from a new allocation. Default 2 minutes.
    #[serde(with = "humantime_serde_compat")]
    pub renew_before: Duration,
}

/// One entry of `[pipeline] plugins`, classified but not yet looked up on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginSpec {
    /// As written in the file (for messages).
    pub written: String,
    pub kind: PluginSpecKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginSpecKind {
    /// A bare name such as `demo`: searched for as `lib<name>.so`.
    Name(String),
    /// A path (absolute) to a shared library.
    Library(PathBuf),
    /// A path (absolute) to a plugin crate directory, built with cargo before the run.
    Crate(PathBuf),
}

/// `plugin::task`, or a bare `task` when only one loaded plugin exports that name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TaskRef {
    pub plugin: Option<String>,
    pub name: String,
}

impl std::fmt::Display for TaskRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.plugin {
            Some(plugin) => write!(f, "{plugin}::{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: String,
    pub task: TaskRef,
    pub input: InputSpec,
    pub settings: PoolSettings,
    /// `true`: this stage starts on fresh worker processes.
    pub kill_workers: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputSpec {
    /// The integers `start <= i < end`.
    Range {
        start: i64,
        end: i64,
    },
    Items(Vec<serde_json::Value>),
    /// Absolute path of a JSON-lines file.
    File(PathBuf),
    /// The outputs of an earlier stage, in order, skipping its failed items.
    From(String),
}

/// A stage's pool settings: its own keys over `[pool]`, over the defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolSettings {
    /// `None`: the usable CPU count (Slurm: the task count), decided when the pool is planned.
    pub max_workers: Option<NonZeroUsize>,
    /// `None`: workers never exit for being idle (`"0s"` in the file). Default 10 s.
    #[serde(with = "humantime_serde_compat::option")]
    pub idle_timeout: Option<Duration>,
    pub reuse: Reuse,
    pub env: BTreeMap<String, String>,
    pub initializer: Option<Initializer>,
    /// 0 = unlimited.
    pub max_tasks_per_worker: u64,
    /// Bytes; `None` = unlimited.
    pub max_memory_growth: Option<u64>,
    /// `None` = no timeout (`"0s"` in the file).
    #[serde(with = "humantime_serde_compat::option")]
    pub task_timeout: Option<Duration>,
    pub retries: u32,
    pub on_error: OnError,
    pub chunksize: ChunkSize,
    pub launcher: Launcher,
    /// Extra arguments for `srun` when `launcher = "slurm"`.
    pub srun_args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Initializer {
    pub task: TaskRef,
    /// Default `null`.
    pub args: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reuse {
    Auto,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    Fail,
    Continue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkSize {
    Auto,
    Fixed(NonZeroUsize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Launcher {
    Local,
    Slurm,
}

/// Durations serialize as humantime strings ("10s") so the manifest reads like the file.
mod humantime_serde_compat {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(super) mod option {
        use std::time::Duration;

        pub(crate) fn serialize<S: serde::Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.collect_str(&humantime::format_duration(*d)),
                None => s.serialize_str("0s"),
            }
        }
    }
}

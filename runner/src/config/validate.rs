//! Raw values → the resolved [`Pipeline`]: defaults, absolute paths, plugin classification, and
//! the checks that span several keys (required keys, unique stage names, `from` references,
//! input files), all reported at once, naming stages by name.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::diagnostic::{Diagnostic, Layer, Origin};
use super::extract::{RawInput, RawPipeline, RawPool, RawSlurm, RawStage, Sourced};
use super::keys::{POOL_KEYS, SLURM_KEYS, closest};
use super::model::{
    ChunkSize, InputSpec, Launcher, OnError, Pipeline, PluginSpec, PoolSettings, Reuse, SlurmAlloc,
    Stage,
};

pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// loky's `_MAX_MEMORY_LEAK_SIZE`: a worker that grew more than this is replaced.
pub(crate) const DEFAULT_MEMORY_GROWTH: u64 = 300_000_000;
pub(crate) const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
/// Off a terminal, how often a progress line per running stage.
pub(crate) const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(30);
/// `[slurm] renew_before`: a worker stops taking tasks this long before its allocation ends.
pub(crate) const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(120);
/// `sbatch` options loky-run passes itself and depends on: `--wrap` (the command of the
/// allocation) and `--parsable` (how it reads the job id back).
const SBATCH_ARGS_OF_OUR_OWN: &[&str] = &["--wrap", "--parsable"];

pub(crate) struct Resolver<'a> {
    pub file: &'a Path,
    /// The pipeline file's directory: what relative paths of the file are relative to.
    pub base_dir: &'a Path,
    /// What relative paths from the environment or `--set` are relative to.
    pub cwd: &'a Path,
    /// Whether the file has a `[pipeline]` section.
    pub has_pipeline_section: bool,
    /// `[pipeline]` header, if any, to point "missing key" errors at.
    pub pipeline_origin: Origin,
    pub diags: Vec<Diagnostic>,
    pub origins: BTreeMap<String, Origin>,
}

/// `stage `squares``, or `stage #2`.
fn title(stage: &RawStage) -> String {
    match &stage.name {
        Some(n) => format!("stage `{}`", n.value),
        None => format!("stage #{}", stage.index + 1),
    }
}

/// A value with where it came from when that is not the file: `2 from `--set slurm.nodes=2``,
/// `"2m" (the default)`.
fn shown(value: impl std::fmt::Display, origin: &Origin) -> String {
    match origin.layer {
        Layer::Default => format!("{value} (the default)"),
        _ => format!("{value}{}", origin.layer.from_phrase()),
    }
}

fn quoted_duration(d: Duration) -> String {
    format!("\"{}\"", humantime::format_duration(d))
}

impl Resolver<'_> {
    /// A problem at `origin`, whose message already says where its values came from.
    fn error_at(&mut self, origin: &Origin, message: String, help: String, key: &str) {
        self.diags.push(
            Diagnostic::new(message, origin.layer.clone())
                .at(origin.location.clone())
                .help(help)
                .key(key.to_string()),
        );
    }

    fn error(&mut self, origin: &Origin, message: String, help: Option<String>, key: &str) {
        let message = format!("{message}{}", origin.layer.from_phrase());
        self.diags.push(
            Diagnostic::new(message, origin.layer.clone())
                .at(origin.location.clone())
                .maybe_help(help)
                .key(key.to_string()),
        );
    }

    /// A path as written, made absolute against the directory of the layer it came from.
    fn path(&self, written: &str, origin: &Origin) -> PathBuf {
        let base = match origin.layer {
            Layer::Env(_) | Layer::Set(_) => self.cwd,
            Layer::File(_) | Layer::Default => self.base_dir,
        };
        let joined = base.join(written);
        std::path::absolute(&joined).unwrap_or(joined)
    }

    pub(super) fn resolve(
        &mut self,
        pipeline: RawPipeline,
        pool: &RawPool,
        slurm: Option<RawSlurm>,
        stages: Vec<RawStage>,
        has_stage_key: bool,
    ) -> Option<Pipeline> {
        let name = pipeline.name;
        if !pipeline.has_name && !pipeline.has_plugins && !self.has_pipeline_section {
            self.diags.push(
                Diagnostic::new(
                    "missing required section [pipeline]",
                    self.pipeline_origin.layer.clone(),
                )
                .help("add, for example:\n[pipeline]\nname = \"my-pipeline\"\nplugins = [\"demo\"]")
                .key("pipeline"),
            );
        } else {
            if !pipeline.has_name {
                self.missing_pipeline_key("name", "name = \"my-pipeline\"");
            }
            if !pipeline.has_plugins {
                self.missing_pipeline_key("plugins", "plugins = [\"demo\"]");
            }
        }
        let plugins = match pipeline.plugins {
            Some(list) if list.value.is_empty() => {
                self.error(
                    &list.origin,
                    "`pipeline.plugins` is empty".into(),
                    Some("name at least one plugin, such as plugins = [\"demo\"]".into()),
                    "pipeline.plugins",
                );
                None
            }
            Some(list) => Some(
                list.value
                    .iter()
                    .map(|p| self.plugin(p))
                    .collect::<Vec<_>>(),
            ),
            None => None,
        };
        let output_dir = match (&pipeline.output_dir, &name) {
            (Some(dir), _) => Some(self.path(&dir.value, &dir.origin)),
            (None, Some(name)) => Some(self.base_dir.join("out").join(&name.value)),
            (None, None) => None,
        };
        let grace_period = pipeline
            .grace_period
            .as_ref()
            .map_or(DEFAULT_GRACE_PERIOD, |g| g.value);
        let joblog = pipeline
            .joblog
            .as_ref()
            .map(|j| self.path(&j.value, &j.origin));
        let progress_interval = match pipeline.progress_interval.as_ref().map(|p| p.value) {
            None => Some(DEFAULT_PROGRESS_INTERVAL),
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        };

        let slurm = slurm.map(|raw| self.slurm(&raw));

        if stages.is_empty() {
            let help = if has_stage_key {
                "add a [[stage]] section with a name, a task and an input"
            } else {
                "add a [[stage]] section, for example:\n[[stage]]\nname = \"squares\"\ntask = \"demo::square\"\ninput = { range = [0, 100] }"
            };
            self.diags.push(
                Diagnostic::new(
                    "the pipeline has no stages",
                    Layer::File(self.file.to_path_buf()),
                )
                .help(help)
                .key("stage"),
            );
        }

        let resolved: Vec<Option<Stage>> = {
            // Names first: `from` may only name an earlier stage.
            let mut first_seen: HashMap<String, usize> = HashMap::new();
            let mut out = Vec::new();
            for (position, stage) in stages.iter().enumerate() {
                if let Some(n) = &stage.name {
                    if let Some(&earlier) = first_seen.get(&n.value) {
                        self.error(
                            &n.origin,
                            format!(
                                "duplicate stage name `{}` (stages #{} and #{})",
                                n.value,
                                stages[earlier].index + 1,
                                stage.index + 1
                            ),
                            Some("stage names must be unique: rename one of them".into()),
                            &format!("stage.{}.name", n.value),
                        );
                    } else {
                        first_seen.insert(n.value.clone(), position);
                    }
                }
                out.push(self.stage(stage, position, pool, &stages));
            }
            out
        };

        if !self.diags.is_empty() {
            return None;
        }
        let (name, plugins, output_dir) = (name?, plugins?, output_dir?);
        let stages: Vec<Stage> = resolved.into_iter().collect::<Option<_>>()?;
        Some(Pipeline {
            name: name.value,
            file: self.file.to_path_buf(),
            base_dir: self.base_dir.to_path_buf(),
            plugins,
            output_dir,
            grace_period,
            joblog,
            progress_interval,
            slurm,
            stages,
        })
    }

    /// `[slurm]` over its defaults, and the checks across its keys. Records where each key
    /// came from under `slurm.KEY`.
    fn slurm(&mut self, raw: &RawSlurm) -> SlurmAlloc {
        let mut origins: Vec<(&str, Origin)> = Vec::new();
        macro_rules! pick {
            ($field:ident) => {{
                origins.push((
                    stringify!($field),
                    raw.$field
                        .as_ref()
                        .map_or_else(Origin::default_value, |s| s.origin.clone()),
                ));
                raw.$field.as_ref().map(|s| s.value.clone())
            }};
        }
        let nodes = pick!(nodes).unwrap_or(1);
        let alloc = SlurmAlloc {
            partition: pick!(partition),
            account: pick!(account),
            qos: pick!(qos),
            time_limit: pick!(time_limit).flatten(),
            nodes,
            tasks: pick!(tasks).unwrap_or(nodes),
            cpus_per_task: pick!(cpus_per_task),
            max_allocations: pick!(max_allocations).unwrap_or(1),
            sbatch_args: pick!(sbatch_args)
                .map(|args| args.into_iter().map(|a| a.value).collect())
                .unwrap_or_default(),
            renew_before: pick!(renew_before).unwrap_or(DEFAULT_RENEW_BEFORE),
        };
        debug_assert_eq!(origins.len(), SLURM_KEYS.len());
        for (key, origin) in origins {
            self.origins.insert(format!("slurm.{key}"), origin);
        }

        // Each node gets at least one task (with the default, `tasks` is `nodes`).
        if let (Some(tasks), Some(nodes)) = (&raw.tasks, &raw.nodes)
            && tasks.value < nodes.value
        {
            self.error_at(
                &tasks.origin,
                format!(
                    "in [slurm], tasks = {} is fewer than nodes = {}",
                    shown(tasks.value, &tasks.origin),
                    shown(nodes.value, &nodes.origin)
                ),
                format!(
                    "each node of an allocation runs at least one task: raise tasks to {} or more, or lower nodes",
                    nodes.value
                ),
                "slurm.tasks",
            );
        }
        // A worker must be able to take tasks at all before it is renewed.
        if let Some(Sourced {
            value: Some(limit),
            origin: limit_origin,
        }) = &raw.time_limit
            && alloc.renew_before >= *limit
        {
            let renew_origin = raw
                .renew_before
                .as_ref()
                .map_or_else(Origin::default_value, |r| r.origin.clone());
            // Point at renew_before when it was written, else at time_limit.
            let (origin, key) = match raw.renew_before {
                Some(_) => (&renew_origin, "slurm.renew_before"),
                None => (limit_origin, "slurm.time_limit"),
            };
            let message = format!(
                "in [slurm], renew_before = {} is not shorter than time_limit = {}",
                shown(quoted_duration(alloc.renew_before), &renew_origin),
                shown(quoted_duration(*limit), limit_origin)
            );
            self.error_at(
                origin,
                message,
                "a worker stops taking tasks renew_before ahead of its allocation's time limit: \
                 lower renew_before or raise time_limit"
                    .into(),
                key,
            );
        }
        // Options loky-run's own submission depends on.
        if let Some(args) = &raw.sbatch_args {
            for (i, arg) in args.value.iter().enumerate() {
                let option = arg
                    .value
                    .split_once('=')
                    .map_or(arg.value.as_str(), |(o, _)| o);
                if SBATCH_ARGS_OF_OUR_OWN.contains(&option) {
                    self.error_at(
                        &arg.origin,
                        format!(
                            "`slurm.sbatch_args`{} cannot hold `{option}`: loky-run passes it to sbatch itself",
                            arg.origin.layer.from_phrase()
                        ),
                        "loky-run submits its workers with --wrap and reads the job id with \
                         --parsable: remove it (other sbatch options may override loky-run's)"
                            .into(),
                        &format!("slurm.sbatch_args[{i}]"),
                    );
                }
            }
        }
        alloc
    }

    fn missing_pipeline_key(&mut self, key: &str, example: &str) {
        let origin = self.pipeline_origin.clone();
        let message = if self.has_pipeline_section {
            format!("missing required key `{key}` in [pipeline]")
        } else {
            format!("missing required key `{key}`: the file has no [pipeline] section")
        };
        self.diags.push(
            Diagnostic::new(message, origin.layer.clone())
                .at(origin.location)
                .help(format!("add {example} under [pipeline]"))
                .key(format!("pipeline.{key}")),
        );
    }

    /// A name (`demo`), or a path (`./plugins/demo`, `/x/libdemo.so`): a directory is a
    /// plugin crate, anything else a library.
    fn plugin(&self, written: &Sourced<String>) -> PluginSpec {
        let w = &written.value;
        let kind = crate::plugin::resolve::classify(w, self.path(w, &written.origin));
        PluginSpec {
            written: w.clone(),
            kind,
        }
    }

    fn stage(
        &mut self,
        stage: &RawStage,
        position: usize,
        pool: &RawPool,
        all: &[RawStage],
    ) -> Option<Stage> {
        let title = title(stage);
        let prefix = match &stage.name {
            Some(n) => format!("stage.{}", n.value),
            None => format!("stage #{}", stage.index + 1),
        };
        let missing = |this: &mut Self, key: &str, example: &str| {
            this.error(
                &stage.origin,
                format!("missing required key `{key}` in {title}"),
                Some(format!("add {example} to this stage")),
                &format!("{prefix}.{key}"),
            );
        };
        if !stage.has_name {
            missing(self, "name", "name = \"...\"");
        }
        if !stage.has_task {
            missing(self, "task", "task = \"plugin::task\"");
        }
        if !stage.has_input {
            missing(self, "input", "input = { range = [0, 10] }");
        }

        let input = match &stage.input {
            Some(Sourced { value, origin }) => match value {
                RawInput::Range { start, end } => Some(InputSpec::Range {
                    start: *start,
                    end: *end,
                }),
                RawInput::Items(items) => Some(InputSpec::Items(items.clone())),
                RawInput::File(written) => {
                    let path = self.path(written, origin);
                    match std::fs::metadata(&path) {
                        Ok(m) if m.is_dir() => {
                            self.error(
                                origin,
                                format!(
                                    "the input file of {title} is a directory: {}",
                                    path.display()
                                ),
                                Some("an input file holds one JSON value per line".into()),
                                &format!("{prefix}.input.file"),
                            );
                            None
                        }
                        Ok(_) => Some(InputSpec::File(path)),
                        Err(e) => {
                            let why = match e.kind() {
                                std::io::ErrorKind::NotFound => "does not exist".to_string(),
                                _ => format!("cannot be read: {e}"),
                            };
                            let base = match origin.layer {
                                Layer::Env(_) | Layer::Set(_) => "the current directory",
                                _ => "the pipeline file's directory",
                            };
                            self.error(
                                origin,
                                format!("the input file of {title} {why}: {}", path.display()),
                                Some(format!("relative paths are relative to {base}")),
                                &format!("{prefix}.input.file"),
                            );
                            None
                        }
                    }
                }
                RawInput::From(source) => {
                    self.check_from(stage, position, source, origin, all, &title, &prefix);
                    Some(InputSpec::From(source.clone()))
                }
            },
            None => None,
        };

        let settings = self.settings(&stage.pool, pool, &prefix);
        let kill_workers = stage.kill_workers.as_ref().is_some_and(|k| k.value);
        self.origins.insert(
            format!("{prefix}.kill_workers"),
            stage
                .kill_workers
                .as_ref()
                .map_or_else(Origin::default_value, |k| k.origin.clone()),
        );
        Some(Stage {
            name: stage.name.as_ref()?.value.clone(),
            task: stage.task.as_ref()?.value.clone(),
            input: input?,
            settings,
            kill_workers,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn check_from(
        &mut self,
        stage: &RawStage,
        position: usize,
        source: &str,
        origin: &Origin,
        all: &[RawStage],
        title: &str,
        prefix: &str,
    ) {
        let key = format!("{prefix}.input.from");
        let found = all
            .iter()
            .position(|s| s.name.as_ref().is_some_and(|n| n.value == source));
        match found {
            Some(p) if p == position => self.error(
                origin,
                format!("{title} takes its input from itself"),
                Some(
                    "`from` names an earlier stage, whose outputs become this stage's inputs"
                        .into(),
                ),
                &key,
            ),
            Some(p) if p > position => self.error(
                origin,
                format!("{title} takes its input from stage `{source}`, which runs after it"),
                Some(format!(
                    "stages run in file order: move stage `{source}` before stage #{}",
                    stage.index + 1
                )),
                &key,
            ),
            Some(_) => {}
            None => {
                let earlier = all[..position]
                    .iter()
                    .filter_map(|s| s.name.as_ref().map(|n| n.value.as_str()));
                let help = match closest(source, earlier) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => {
                        let names: Vec<String> = all[..position]
                            .iter()
                            .filter_map(|s| s.name.as_ref().map(|n| format!("`{}`", n.value)))
                            .collect();
                        if names.is_empty() {
                            "the first stage cannot take its input from another stage".into()
                        } else {
                            format!("earlier stages: {}", names.join(", "))
                        }
                    }
                };
                self.error(
                    origin,
                    format!("{title} takes its input from unknown stage `{source}`"),
                    Some(help),
                    &key,
                );
            }
        }
    }

    /// A stage's pool settings: its own keys over `[pool]` over the defaults. Records where
    /// each one came from under `stage.NAME.KEY`.
    pub(crate) fn settings(&mut self, own: &RawPool, pool: &RawPool, prefix: &str) -> PoolSettings {
        let mut origins: Vec<(&str, Origin)> = Vec::new();
        macro_rules! pick {
            ($field:ident) => {{
                let chosen = own.$field.as_ref().or(pool.$field.as_ref());
                origins.push((
                    stringify!($field),
                    chosen.map_or_else(Origin::default_value, |s| s.origin.clone()),
                ));
                chosen.map(|s| s.value.clone())
            }};
        }
        let settings = PoolSettings {
            max_workers: pick!(max_workers),
            idle_timeout: pick!(idle_timeout).unwrap_or(Some(DEFAULT_IDLE_TIMEOUT)),
            reuse: pick!(reuse).unwrap_or(Reuse::Auto),
            env: pick!(env).unwrap_or_default(),
            initializer: pick!(initializer),
            max_tasks_per_worker: pick!(max_tasks_per_worker).unwrap_or(0),
            max_memory_growth: pick!(max_memory_growth).unwrap_or(Some(DEFAULT_MEMORY_GROWTH)),
            task_timeout: pick!(task_timeout).unwrap_or(None),
            retries: pick!(retries).unwrap_or(0),
            on_error: pick!(on_error).unwrap_or(OnError::Fail),
            chunksize: pick!(chunksize).unwrap_or(ChunkSize::Auto),
            launcher: pick!(launcher).unwrap_or(Launcher::Local),
            srun_args: pick!(srun_args).unwrap_or_default(),
        };
        debug_assert_eq!(origins.len(), POOL_KEYS.len());
        for (key, origin) in origins {
            self.origins.insert(format!("{prefix}.{key}"), origin);
        }
        settings
    }
}

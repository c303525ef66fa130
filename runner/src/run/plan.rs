//! From a loaded pipeline to a plan: plugin files found (or built), their exports probed, every
//! task and initializer looked up, input files checked. Everything here happens before any
//! worker starts, and every problem is a configuration error (exit 2).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{Diagnostic, InputSpec, Layer, Origin, Pipeline, Stage, TaskRef};
use crate::input;
use crate::plugin::{PluginInfo, TaskKind, probe, resolve};
use crate::pool::WorkerSpec;
use crate::protocol::InitCall;

/// One problem found while planning.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanProblem {
    pub message: String,
    pub help: Option<String>,
    /// The setting concerned, in `--set` spelling (`stage.squares.task`, `pipeline.plugins`).
    pub key: Option<String>,
    /// Where that setting was written (see [`PlanError::locate`]).
    pub origin: Option<Box<Origin>>,
}

impl PlanProblem {
    fn new(message: String, help: Option<String>, key: impl Into<String>) -> Self {
        Self {
            message,
            help,
            key: Some(key.into()),
            origin: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{}", render(.0))]
pub struct PlanError(pub Vec<PlanProblem>);

impl PlanError {
    /// Points every problem at the place its setting was written (file line and column with
    /// the line, or the environment variable / `--set` argument), from the loader's origins.
    pub fn locate(mut self, origins: &BTreeMap<String, Origin>) -> Self {
        for p in &mut self.0 {
            p.origin = p
                .key
                .as_ref()
                .and_then(|k| origins.get(k))
                .map(|o| Box::new(o.clone()));
        }
        self
    }
}

fn render(problems: &[PlanProblem]) -> String {
    problems
        .iter()
        .map(|p| match &p.origin {
            Some(origin) if origin.layer != Layer::Default => {
                // Rendered like a configuration diagnostic: "error: " is the caller's prefix.
                let message = match &origin.layer {
                    Layer::File(_) => p.message.clone(),
                    layer => format!("{} (set{})", p.message, layer.from_phrase()),
                };
                let d = Diagnostic::new(message, origin.layer.clone())
                    .at(origin.location.clone())
                    .maybe_help(p.help.clone())
                    .to_string();
                d.strip_prefix("error: ").map(str::to_owned).unwrap_or(d)
            }
            _ => match &p.help {
                Some(help) => format!("{}\n  = help: {help}", p.message),
                None => p.message.clone(),
            },
        })
        .collect::<Vec<_>>()
        .join("\n\nerror: ")
}

pub struct Plan {
    pub pipeline: Pipeline,
    pub plugins: Vec<PluginInfo>,
    pub stages: Vec<PlannedStage>,
}

pub struct PlannedStage {
    pub plugin: u16,
    pub task: u32,
    pub spec: WorkerSpec,
    /// Resolved worker count (`max_workers` or the usable CPU count).
    pub workers: usize,
    /// Number of inputs, when known before the run (`from` stages learn it from their source).
    pub total: Option<u64>,
    /// Index of the stage named by `from`.
    pub from: Option<usize>,
    /// SHA-256 of the input file, computed while checking it.
    pub input_sha256: Option<String>,
}

impl Plan {
    pub fn stage(&self, i: usize) -> (&Stage, &PlannedStage) {
        (&self.pipeline.stages[i], &self.stages[i])
    }
}

/// Decodes every initializer's args with its plugin, in a probe process (nothing runs): what a
/// worker would refuse at start, said before any run (`loky-run validate`). Plugins built
/// against loky-run-plugin 0.1 cannot decode without running; their args pass unchecked.
pub fn check_initializer_args(plan: &Plan, verbose: bool) -> Result<(), PlanError> {
    // (plugin, task, args) -> the initializer's name and the stages that use it.
    type Use = (String, Vec<String>);
    let mut wanted: BTreeMap<(u16, u32, String), Use> = BTreeMap::new();
    for (stage, planned) in plan.pipeline.stages.iter().zip(&plan.stages) {
        if let Some(init) = &planned.spec.initializer {
            wanted
                .entry((init.plugin, init.task, init.args.clone()))
                .or_insert_with(|| (init.name.clone(), Vec::new()))
                .1
                .push(stage.name.clone());
        }
    }
    let mut problems = Vec::new();
    for (p, plugin) in plan.plugins.iter().enumerate() {
        let checks: Vec<(&(u16, u32, String), &Use)> = wanted
            .iter()
            .filter(|((plugin, _, _), _)| usize::from(*plugin) == p)
            .collect();
        if checks.is_empty() {
            continue;
        }
        let asked: Vec<probe::Check> = checks
            .iter()
            .map(|((_, task, args), _)| (*task, args.clone()))
            .collect();
        let answers = match probe::probe_checking(&plugin.path, verbose, &asked) {
            Ok((_, answers)) => answers,
            Err(e) => {
                problems.push(PlanProblem::new(e.to_string(), None, "pipeline.plugins"));
                continue;
            }
        };
        for ((_, (name, stages)), answer) in checks.iter().zip(answers) {
            let Some(why) = answer else { continue };
            problems.push(PlanProblem::new(
                format!(
                    "initializer {name} of stage{} {}: {why}",
                    if stages.len() == 1 { "" } else { "s" },
                    stages.join(", ")
                ),
                Some(format!(
                    "fix `args` in `initializer = {{ task = \"{name}\", args = ... }}`"
                )),
                format!("stage.{}.initializer", stages[0]),
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PlanError(problems))
    }
}

/// Resolves and probes the plugins, then checks every stage against them.
pub fn plan(pipeline: Pipeline, verbose: bool) -> Result<Plan, PlanError> {
    let mut problems = Vec::new();
    let mut plugins = Vec::new();
    for spec in &pipeline.plugins {
        let path = match resolve::resolve(spec, &pipeline.base_dir) {
            Ok(path) => path,
            Err(e) => {
                let help = resolve::not_found_help(&e, &pipeline.base_dir);
                problems.push(PlanProblem::new(e.to_string(), help, "pipeline.plugins"));
                continue;
            }
        };
        match probe::probe_remembered(&path, verbose) {
            Ok(info) => plugins.push(info),
            Err(e) => problems.push(PlanProblem::new(e.to_string(), None, "pipeline.plugins")),
        }
    }
    if !problems.is_empty() {
        return Err(PlanError(problems));
    }
    for (i, p) in plugins.iter().enumerate() {
        if let Some(other) = plugins[..i].iter().find(|o| o.name == p.name) {
            problems.push(PlanProblem {
                message: format!(
                    "two plugins are named `{}`: {} and {}",
                    p.name,
                    other.path.display(),
                    p.path.display()
                ),
                help: Some("task references (`plugin::task`) need unique plugin names".into()),
                key: Some("pipeline.plugins".into()),
                origin: None,
            });
        }
    }

    if let Err(message) = crate::sys::cpu_cap() {
        problems.push(PlanProblem {
            message,
            help: Some(format!(
                "set {} to a whole number of CPUs, or unset it",
                crate::sys::CPU_CAP_VAR
            )),
            key: None,
            origin: None,
        });
    }
    let cpus = crate::sys::usable_cpus();
    let plugin_paths: Vec<PathBuf> = plugins.iter().map(|p| p.path.clone()).collect();
    // Workers start where the pipeline file is: relative paths in task inputs are relative to
    // the file, as every path in it is.
    let workdir = std::path::absolute(&pipeline.file)
        .ok()
        .and_then(|f| f.parent().map(Path::to_path_buf));
    let mut stages = Vec::new();
    for (i, stage) in pipeline.stages.iter().enumerate() {
        let keyed = |key: String| {
            move |mut p: PlanProblem| {
                p.key = Some(key);
                p
            }
        };
        let task = lookup(
            &plugins,
            &stage.task,
            TaskKind::Task,
            &format!("stage `{}`", stage.name),
        )
        .map_err(keyed(format!("stage.{}.task", stage.name)));
        let initializer = match &stage.settings.initializer {
            Some(init) => {
                match lookup(
                    &plugins,
                    &init.task,
                    TaskKind::Initializer,
                    &format!("stage `{}`", stage.name),
                )
                .map_err(keyed(format!("stage.{}.initializer", stage.name)))
                {
                    Ok((plugin, task)) => Some(InitCall {
                        name: qualified(&plugins, plugin, &init.task),
                        plugin,
                        task,
                        args: init.args.to_string(),
                    }),
                    Err(p) => {
                        problems.push(p);
                        None
                    }
                }
            }
            None => None,
        };
        let (plugin, task) = match task {
            Ok(found) => found,
            Err(p) => {
                problems.push(p);
                (0, 0)
            }
        };
        let from = match &stage.input {
            InputSpec::From(name) => pipeline.stages[..i].iter().position(|s| &s.name == name),
            _ => None,
        };
        let mut input_sha256 = None;
        let total = match &stage.input {
            InputSpec::Range { start, end } => Some(end.saturating_sub(*start).max(0) as u64),
            InputSpec::Items(items) => Some(items.len() as u64),
            InputSpec::File(path) => match input::check_file(path) {
                Ok(checked) => {
                    input_sha256 = Some(checked.sha256);
                    Some(checked.count)
                }
                Err(e) => {
                    problems.push(PlanProblem::new(
                        format!("stage `{}`: {e}", stage.name),
                        None,
                        format!("stage.{}.input", stage.name),
                    ));
                    None
                }
            },
            InputSpec::From(_) => None,
        };
        let slurm_mode = match stage.settings.launcher {
            crate::config::Launcher::Slurm => {
                match crate::pool::slurm::mode(pipeline.slurm.is_some()) {
                    Ok(mode) => Some(mode),
                    Err(why) => {
                        problems.push(PlanProblem::new(
                            format!("stage `{}`: {why}", stage.name),
                            None,
                            format!("stage.{}.launcher", stage.name),
                        ));
                        None
                    }
                }
            }
            crate::config::Launcher::Local => None,
        };
        let on_demand = match (slurm_mode, &pipeline.slurm) {
            (Some(crate::pool::slurm::Mode::OnDemand), Some(settings)) => {
                Some(crate::pool::alloc::OnDemand {
                    settings: settings.clone(),
                    pipeline: pipeline.name.clone(),
                })
            }
            _ => None,
        };
        // Default: one worker per CPU here; on Slurm, one per task of the allocation (each
        // worker step takes one, and more would wait for CPUs), or as many as the
        // allocations asked for on demand hold.
        let capacity = on_demand.as_ref().map(|d| {
            (d.settings.tasks.max(1) as usize)
                .saturating_mul(d.settings.max_allocations.max(1) as usize)
        });
        let default_workers = match (stage.settings.launcher, capacity) {
            (_, Some(capacity)) => capacity,
            (crate::config::Launcher::Slurm, None) => {
                crate::pool::slurm::default_workers().unwrap_or(cpus)
            }
            (crate::config::Launcher::Local, None) => cpus,
        };
        let workers = stage
            .settings
            .max_workers
            .map(std::num::NonZero::get)
            .unwrap_or(default_workers);
        if let (Some(capacity), Some(d)) = (capacity, &on_demand) {
            if workers > capacity {
                problems.push(PlanProblem::new(
                    format!(
                        "stage `{}`: max_workers = {workers}, but [slurm] allows {} allocation(s) of {} task(s) at once, {capacity} workers in all",
                        stage.name, d.settings.max_allocations, d.settings.tasks
                    ),
                    Some("raise [slurm] max_allocations or tasks, or lower max_workers".into()),
                    format!("stage.{}.max_workers", stage.name),
                ));
            }
        }
        let spec = WorkerSpec {
            plugins: plugin_paths.clone(),
            env: stage.settings.env.clone(),
            initializer,
            launcher: stage.settings.launcher,
            srun_args: stage.settings.srun_args.clone(),
            workdir: workdir.clone(),
            on_demand,
        };
        stages.push(PlannedStage {
            plugin,
            task,
            spec,
            workers,
            total,
            from,
            input_sha256,
        });
    }
    if problems.is_empty() {
        Ok(Plan {
            pipeline,
            plugins,
            stages,
        })
    } else {
        Err(PlanError(problems))
    }
}

fn qualified(plugins: &[PluginInfo], plugin: u16, task: &TaskRef) -> String {
    format!("{}::{}", plugins[plugin as usize].name, task.name)
}

/// Finds `task` among the plugins' exports of the given kind.
fn lookup(
    plugins: &[PluginInfo],
    task: &TaskRef,
    kind: TaskKind,
    context: &str,
) -> Result<(u16, u32), PlanProblem> {
    let what = match kind {
        TaskKind::Task => "task",
        TaskKind::Initializer => "initializer",
    };
    let candidates: Vec<(usize, &PluginInfo)> = match &task.plugin {
        Some(name) => {
            let found: Vec<_> = plugins
                .iter()
                .enumerate()
                .filter(|(_, p)| &p.name == name)
                .collect();
            if found.is_empty() {
                let names: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
                return Err(PlanProblem {
                    message: format!(
                        "{context}: no plugin named `{name}` is loaded (loaded: {})",
                        names.join(", ")
                    ),
                    help: closest(name, &names)
                        .map(|c| format!("did you mean `{c}::{}`?", task.name)),
                    key: None,
                    origin: None,
                });
            }
            found
        }
        None => plugins.iter().enumerate().collect(),
    };
    let hits: Vec<(usize, u32)> = candidates
        .iter()
        .filter_map(|(i, p)| p.find(&task.name, kind).map(|t| (*i, t)))
        .collect();
    match hits.as_slice() {
        [(plugin, index)] => Ok((*plugin as u16, *index)),
        [] => {
            let exported: Vec<String> = candidates
                .iter()
                .flat_map(|(_, p)| {
                    p.names(kind)
                        .into_iter()
                        .map(move |n| format!("{}::{n}", p.name))
                })
                .collect();
            let bare: Vec<&str> = candidates.iter().flat_map(|(_, p)| p.names(kind)).collect();
            let other_kind = candidates.iter().any(|(_, p)| {
                p.tasks
                    .iter()
                    .any(|t| t.name == task.name && t.kind != kind)
            });
            let mut message = format!("{context}: unknown {what} `{task}`");
            if other_kind {
                let article = if what.starts_with(['a', 'e', 'i', 'o', 'u']) {
                    "an"
                } else {
                    "a"
                };
                message.push_str(&format!(
                    " (it exists, but is not exported as {article} {what})"
                ));
            }
            message.push_str(&format!(
                "; {} {}",
                if exported.len() == 1 {
                    "the only one exported is"
                } else {
                    "exported:"
                },
                if exported.is_empty() {
                    "none".to_owned()
                } else {
                    exported.join(", ")
                }
            ));
            // Suggest the qualified name, which is unambiguous.
            let help = closest(&task.name, &bare).map(|c| {
                let owner = candidates
                    .iter()
                    .find(|(_, p)| p.names(kind).contains(&c))
                    .map(|(_, p)| p.name.as_str());
                match owner {
                    Some(plugin) => format!("did you mean `{plugin}::{c}`?"),
                    None => format!("did you mean `{c}`?"),
                }
            });
            Err(PlanProblem {
                message,
                help,
                key: None,
                origin: None,
            })
        }
        many => Err(PlanProblem {
            message: format!(
                "{context}: {what} `{task}` is exported by several plugins ({})",
                many.iter()
                    .map(|(p, _)| plugins[*p].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            help: Some(format!(
                "name the plugin: `{}::{}`",
                plugins[many[0].0].name, task.name
            )),
            key: None,
            origin: None,
        }),
    }
}

/// The closest name, if it is close enough to be a likely typo.
pub fn closest<'a>(wanted: &str, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .map(|n| (strsim::jaro_winkler(wanted, n), *n))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::TaskInfo;

    fn plugin(name: &str, tasks: &[(&str, TaskKind)]) -> PluginInfo {
        PluginInfo {
            path: format!("/p/lib{name}.so").into(),
            name: name.into(),
            version: "0.1.0".into(),
            api_version: "0.1.0".into(),
            tasks: tasks
                .iter()
                .map(|(n, k)| TaskInfo {
                    name: (*n).into(),
                    kind: *k,
                    input_type: "i64".into(),
                    output_type: "i64".into(),
                })
                .collect(),
        }
    }

    fn tref(plugin: Option<&str>, name: &str) -> TaskRef {
        TaskRef {
            plugin: plugin.map(Into::into),
            name: name.into(),
        }
    }

    #[test]
    fn lookups_and_their_errors() {
        let plugins = vec![
            plugin(
                "demo",
                &[("square", TaskKind::Task), ("setup", TaskKind::Initializer)],
            ),
            plugin(
                "faults",
                &[("panic", TaskKind::Task), ("square", TaskKind::Task)],
            ),
        ];
        assert_eq!(
            lookup(&plugins, &tref(Some("demo"), "square"), TaskKind::Task, "s").unwrap(),
            (0, 0)
        );
        assert_eq!(
            lookup(&plugins, &tref(None, "panic"), TaskKind::Task, "s").unwrap(),
            (1, 0)
        );
        let e = lookup(&plugins, &tref(Some("demo"), "sqare"), TaskKind::Task, "s").unwrap_err();
        assert!(e.message.contains("demo::square"), "{e:?}");
        assert_eq!(e.help.as_deref(), Some("did you mean `demo::square`?"));
        let e = lookup(&plugins, &tref(None, "square"), TaskKind::Task, "s").unwrap_err();
        assert!(e.message.contains("several plugins"), "{e:?}");
        let e = lookup(&plugins, &tref(Some("demo"), "setup"), TaskKind::Task, "s").unwrap_err();
        assert!(e.message.contains("not exported as a task"), "{e:?}");
        let e = lookup(&plugins, &tref(Some("dmeo"), "square"), TaskKind::Task, "s").unwrap_err();
        assert_eq!(e.help.as_deref(), Some("did you mean `demo::square`?"));
    }
}

//! Layered values → typed raw values, key by key, so that every bad value is reported (not
//! only the first), each with the layer that set it and, for the file, its line and column.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::Duration;

use figment::Figment;
use figment::value::{Dict, Num, Value};

use super::diagnostic::{Diagnostic, Layer, Origin, SourceText};
use super::document::{Node, Seg};
use super::keys::{
    INPUT_KEYS, Kind, LAUNCHER_CHOICES, ON_ERROR_CHOICES, PIPELINE_KEYS, POOL_KEYS, REUSE_CHOICES,
    SLURM_KEYS, STAGE_KEYS, closest, join_words,
};
use super::layers::layer_of_value;
use super::model::{ChunkSize, Initializer, Launcher, OnError, Reuse, TaskRef};
use super::units;

/// A value with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

#[derive(Debug, Default)]
pub(crate) struct RawPipeline {
    /// Whether `name` and `plugins` are set at all, valid or not (to report missing ones).
    pub has_name: bool,
    pub has_plugins: bool,
    pub name: Option<Sourced<String>>,
    /// Each entry with its own origin.
    pub plugins: Option<Sourced<Vec<Sourced<String>>>>,
    pub output_dir: Option<Sourced<String>>,
    pub grace_period: Option<Sourced<Duration>>,
    pub joblog: Option<Sourced<String>>,
    pub progress_interval: Option<Sourced<Duration>>,
}

/// `[pool]`, or the pool keys of a stage.
#[derive(Debug, Default)]
pub(crate) struct RawPool {
    pub max_workers: Option<Sourced<NonZeroUsize>>,
    /// `None` inside: `"0s"`, never.
    pub idle_timeout: Option<Sourced<Option<Duration>>>,
    pub reuse: Option<Sourced<Reuse>>,
    pub env: Option<Sourced<BTreeMap<String, String>>>,
    pub initializer: Option<Sourced<Initializer>>,
    pub max_tasks_per_worker: Option<Sourced<u64>>,
    /// `None` inside: 0, unlimited.
    pub max_memory_growth: Option<Sourced<Option<u64>>>,
    pub task_timeout: Option<Sourced<Option<Duration>>>,
    pub retries: Option<Sourced<u32>>,
    pub on_error: Option<Sourced<OnError>>,
    pub chunksize: Option<Sourced<ChunkSize>>,
    pub launcher: Option<Sourced<Launcher>>,
    pub srun_args: Option<Sourced<Vec<String>>>,
}

/// `[slurm]`, as set (defaults and the checks across keys come in `validate`).
#[derive(Debug, Default)]
pub(crate) struct RawSlurm {
    pub partition: Option<Sourced<String>>,
    pub account: Option<Sourced<String>>,
    pub qos: Option<Sourced<String>>,
    /// `None` inside: `"0s"`, the partition's default.
    pub time_limit: Option<Sourced<Option<Duration>>>,
    pub nodes: Option<Sourced<u32>>,
    pub tasks: Option<Sourced<u32>>,
    pub cpus_per_task: Option<Sourced<u32>>,
    pub max_allocations: Option<Sourced<u32>>,
    /// Each argument with its own origin (to point at a refused one).
    pub sbatch_args: Option<Sourced<Vec<Sourced<String>>>>,
    pub renew_before: Option<Sourced<Duration>>,
}

#[derive(Debug, Clone)]
pub(crate) enum RawInput {
    Range {
        start: i64,
        end: i64,
    },
    Items(Vec<serde_json::Value>),
    /// As written; resolved against the layer's directory later.
    File(String),
    From(String),
}

#[derive(Debug)]
pub(crate) struct RawStage {
    /// Index in the file.
    pub index: usize,
    pub name: Option<Sourced<String>>,
    pub task: Option<Sourced<TaskRef>>,
    /// The origin is the inner value's (the range, the file name, ...).
    pub input: Option<Sourced<RawInput>>,
    /// Whether the stage has these keys at all, valid or not (to report missing ones).
    pub has_name: bool,
    pub has_task: bool,
    pub has_input: bool,
    pub kill_workers: Option<Sourced<bool>>,
    pub pool: RawPool,
    /// Where the stage starts in the file (its `[[stage]]` header).
    pub origin: Origin,
}

/// A value being read: where it is and how messages name it.
pub(crate) struct Field<'v> {
    pub value: &'v Value,
    pub doc_path: Vec<Seg>,
    /// `--set` spelling: `pool.max_workers`, `stage.squares.input.range`.
    pub label: String,
    pub origin: Origin,
}

/// Why a value is refused.
pub(crate) struct Bad {
    pub detail: String,
    pub help: Option<String>,
}

impl Bad {
    fn new(detail: impl Into<String>) -> Self {
        Bad {
            detail: detail.into(),
            help: None,
        }
    }

    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

pub(crate) struct Extractor<'a> {
    pub src: &'a SourceText,
    pub doc: &'a Node,
    pub diags: Vec<Diagnostic>,
    /// Every value read, by `--set` label, with its origin (for `show-config`).
    pub origins: BTreeMap<String, Origin>,
}

impl<'a> Extractor<'a> {
    pub(super) fn new(src: &'a SourceText, doc: &'a Node) -> Self {
        Extractor {
            src,
            doc,
            diags: Vec::new(),
            origins: BTreeMap::new(),
        }
    }

    /// The origin of a node of the file (e.g. a stage's header).
    pub(super) fn file_origin(&self, doc_path: &[Seg]) -> Origin {
        Origin {
            layer: self.src.layer(),
            location: self.doc_location(doc_path),
        }
    }

    fn doc_location(&self, doc_path: &[Seg]) -> Option<super::diagnostic::Location> {
        let (_, node) = self.doc.find(doc_path)?;
        node.span.clone().map(|s| self.src.location(s))
    }

    fn field<'v>(
        &self,
        figment: &Figment,
        value: &'v Value,
        doc_path: Vec<Seg>,
        label: String,
    ) -> Field<'v> {
        let layer = layer_of_value(figment, value);
        let location = match layer {
            Layer::File(_) => self.doc_location(&doc_path),
            _ => None,
        };
        Field {
            value,
            doc_path,
            label,
            origin: Origin { layer, location },
        }
    }

    fn sub<'v>(&self, figment: &Figment, parent: &Field, value: &'v Value, seg: Seg) -> Field<'v> {
        let label = match &seg {
            Seg::Key(k) => format!("{}.{k}", parent.label),
            Seg::Index(i) => format!("{}[{i}]", parent.label),
        };
        let mut path = parent.doc_path.clone();
        path.push(seg);
        self.field(figment, value, path, label)
    }

    pub(super) fn invalid(&mut self, field: &Field, bad: Bad) {
        let message = format!(
            "invalid value for `{}`{}: {}",
            field.label,
            field.origin.layer.from_phrase(),
            bad.detail
        );
        self.diags.push(
            Diagnostic::new(message, field.origin.layer.clone())
                .at(field.origin.location.clone())
                .maybe_help(bad.help)
                .key(field.label.clone()),
        );
    }

    fn accept<T>(&mut self, field: &Field, value: T) -> Option<Sourced<T>> {
        self.origins
            .insert(field.label.clone(), field.origin.clone());
        Some(Sourced {
            value,
            origin: field.origin.clone(),
        })
    }

    /// Reads one value with a parser; reports it if bad.
    fn read<T>(
        &mut self,
        field: &Field,
        parse: impl FnOnce(&Value) -> Result<T, Bad>,
    ) -> Option<Sourced<T>> {
        match parse(field.value) {
            Ok(v) => self.accept(field, v),
            Err(bad) => {
                self.invalid(field, bad);
                None
            }
        }
    }

    // ---- sections ------------------------------------------------------------------------

    /// `[pipeline]`, from the global figment.
    pub(super) fn pipeline(&mut self, figment: &Figment) -> RawPipeline {
        let mut raw = RawPipeline::default();
        let Ok(Value::Dict(_, dict)) = figment.find_value("pipeline") else {
            return raw;
        };
        raw.has_name = dict.contains_key("name");
        raw.has_plugins = dict.contains_key("plugins");
        for spec in PIPELINE_KEYS {
            let Some(value) = dict.get(spec.name) else {
                continue;
            };
            let f = self.field(
                figment,
                value,
                vec!["pipeline".into(), spec.name.into()],
                format!("pipeline.{}", spec.name),
            );
            match spec.name {
                "name" => raw.name = self.read(&f, pipeline_name),
                "plugins" => raw.plugins = self.plugins(figment, &f),
                "output_dir" => raw.output_dir = self.read(&f, |v| text(v, Kind::Path)),
                "grace_period" => raw.grace_period = self.read(&f, duration),
                "joblog" => raw.joblog = self.read(&f, |v| text(v, Kind::Path)),
                "progress_interval" => raw.progress_interval = self.read(&f, duration),
                _ => {}
            }
        }
        raw
    }

    /// `[slurm]`, from the global figment; `None` when no layer has a `slurm` table (the
    /// table alone, even empty, asks for allocations with the defaults).
    pub(super) fn slurm(&mut self, figment: &Figment) -> Option<RawSlurm> {
        let Ok(Value::Dict(_, dict)) = figment.find_value("slurm") else {
            return None;
        };
        let mut raw = RawSlurm::default();
        for spec in SLURM_KEYS {
            let Some(value) = dict.get(spec.name) else {
                continue;
            };
            let f = self.field(
                figment,
                value,
                vec!["slurm".into(), spec.name.into()],
                format!("slurm.{}", spec.name),
            );
            let positive =
                |v: &Value| integer(v, Kind::Positive, 1, i128::from(u32::MAX)).map(|n| n as u32);
            match spec.name {
                "partition" => raw.partition = self.read(&f, |v| text(v, Kind::Text)),
                "account" => raw.account = self.read(&f, |v| text(v, Kind::Text)),
                "qos" => raw.qos = self.read(&f, |v| text(v, Kind::Text)),
                "time_limit" => raw.time_limit = self.read(&f, |v| duration(v).map(nonzero)),
                "nodes" => raw.nodes = self.read(&f, positive),
                "tasks" => raw.tasks = self.read(&f, positive),
                "cpus_per_task" => raw.cpus_per_task = self.read(&f, positive),
                "max_allocations" => raw.max_allocations = self.read(&f, positive),
                "sbatch_args" => raw.sbatch_args = self.text_list(figment, &f, Kind::Text, false),
                "renew_before" => raw.renew_before = self.read(&f, duration),
                _ => {}
            }
        }
        Some(raw)
    }

    /// The pool keys of `dict`: `[pool]` (`prefix` = `pool`) or a stage (`stage.NAME`).
    pub(super) fn pool(
        &mut self,
        figment: &Figment,
        dict: &Dict,
        doc_prefix: &[Seg],
        prefix: &str,
    ) -> RawPool {
        let mut raw = RawPool::default();
        for spec in POOL_KEYS {
            let Some(value) = dict.get(spec.name) else {
                continue;
            };
            let mut path = doc_prefix.to_vec();
            path.push(spec.name.into());
            let f = self.field(figment, value, path, format!("{prefix}.{}", spec.name));
            match spec.name {
                "max_workers" => {
                    raw.max_workers = self.read(&f, |v| {
                        integer(v, Kind::Positive, 1, usize::MAX as i128)
                            .map(|n| NonZeroUsize::new(n as usize).unwrap_or(NonZeroUsize::MIN))
                            .map_err(|b| {
                                if v.to_i128() == Some(0) {
                                    b.help("leave max_workers unset to use the usable CPU count")
                                } else {
                                    b
                                }
                            })
                    });
                }
                "idle_timeout" => raw.idle_timeout = self.read(&f, |v| duration(v).map(nonzero)),
                "reuse" => {
                    raw.reuse = self.read(&f, |v| {
                        choice(v, REUSE_CHOICES).map(|c| match c {
                            "never" => Reuse::Never,
                            _ => Reuse::Auto,
                        })
                    });
                }
                "env" => raw.env = self.env_table(figment, &f),
                "initializer" => raw.initializer = self.initializer(figment, &f),
                "max_tasks_per_worker" => {
                    raw.max_tasks_per_worker = self.read(&f, |v| {
                        integer(v, Kind::Count, 0, u64::MAX as i128).map(|n| n as u64)
                    });
                }
                "max_memory_growth" => {
                    raw.max_memory_growth =
                        self.read(&f, |v| size(v).map(|n| (n > 0).then_some(n)));
                }
                "task_timeout" => raw.task_timeout = self.read(&f, |v| duration(v).map(nonzero)),
                "retries" => {
                    raw.retries = self.read(&f, |v| {
                        integer(v, Kind::Count, 0, u32::MAX as i128).map(|n| n as u32)
                    });
                }
                "on_error" => {
                    raw.on_error = self.read(&f, |v| {
                        choice(v, ON_ERROR_CHOICES).map(|c| match c {
                            "continue" => OnError::Continue,
                            _ => OnError::Fail,
                        })
                    });
                }
                "chunksize" => raw.chunksize = self.read(&f, chunksize),
                "launcher" => {
                    raw.launcher = self.read(&f, |v| {
                        choice(v, LAUNCHER_CHOICES).map(|c| match c {
                            "slurm" => Launcher::Slurm,
                            _ => Launcher::Local,
                        })
                    });
                }
                "srun_args" => {
                    raw.srun_args =
                        self.text_list(figment, &f, Kind::Text, true)
                            .map(|s| Sourced {
                                value: s.value.into_iter().map(|e| e.value).collect(),
                                origin: s.origin,
                            });
                }
                _ => {}
            }
        }
        raw
    }

    /// Stage `index` of the file, from its own figment (which holds it under `stage`).
    pub(super) fn stage(&mut self, figment: &Figment, index: usize) -> RawStage {
        let doc_prefix: Vec<Seg> = vec!["stage".into(), index.into()];
        let dict = match figment.find_value("stage") {
            Ok(Value::Dict(_, dict)) => dict,
            _ => Dict::new(),
        };
        let name = match dict.get("name") {
            Some(Value::String(_, s)) => Some(s.as_str()),
            _ => None,
        };
        let prefix = super::check::stage_prefix(index, name);
        let mut raw = RawStage {
            index,
            name: None,
            task: None,
            input: None,
            has_name: dict.contains_key("name"),
            has_task: dict.contains_key("task"),
            has_input: dict.contains_key("input"),
            kill_workers: None,
            pool: self.pool(figment, &dict, &doc_prefix, &prefix),
            origin: self.file_origin(&doc_prefix),
        };
        for spec in STAGE_KEYS {
            let Some(value) = dict.get(spec.name) else {
                continue;
            };
            let mut path = doc_prefix.clone();
            path.push(spec.name.into());
            let f = self.field(figment, value, path, format!("{prefix}.{}", spec.name));
            match spec.name {
                "name" => raw.name = self.read(&f, stage_name),
                "task" => raw.task = self.read(&f, task),
                "input" => raw.input = self.input(figment, &f),
                "kill_workers" => raw.kill_workers = self.read(&f, boolean),
                _ => {}
            }
        }
        raw
    }

    // ---- compound values -----------------------------------------------------------------

    fn plugins(&mut self, figment: &Figment, f: &Field) -> Option<Sourced<Vec<Sourced<String>>>> {
        self.text_list(figment, f, Kind::Path, false)
    }

    /// An array of strings, each element checked (and located) on its own.
    fn text_list(
        &mut self,
        figment: &Figment,
        f: &Field,
        kind: Kind,
        allow_empty_strings: bool,
    ) -> Option<Sourced<Vec<Sourced<String>>>> {
        let Value::Array(_, items) = f.value else {
            self.invalid(f, mismatch(Kind::TextList, f.value));
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let g = self.sub(figment, f, item, Seg::Index(i));
            let parsed = match item {
                Value::String(_, s) if s.is_empty() && !allow_empty_strings => {
                    Err(Bad::new("must not be an empty string"))
                }
                Value::String(_, s) => Ok(s.clone()),
                other => Err(mismatch(kind, other)),
            };
            match parsed {
                Ok(s) => out.push(Sourced {
                    value: s,
                    origin: g.origin,
                }),
                Err(bad) => {
                    ok = false;
                    self.invalid(&g, bad);
                }
            }
        }
        if ok { self.accept(f, out) } else { None }
    }

    /// `env = { NAME = "value", N = 1 }`: numbers and booleans become their text.
    fn env_table(
        &mut self,
        figment: &Figment,
        f: &Field,
    ) -> Option<Sourced<BTreeMap<String, String>>> {
        let Value::Dict(_, dict) = f.value else {
            self.invalid(f, mismatch(Kind::TextMap, f.value));
            return None;
        };
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (name, value) in dict {
            let g = self.sub(figment, f, value, Seg::Key(name.clone()));
            if name.is_empty() || name.contains(['=', '\0']) {
                ok = false;
                self.invalid(
                    &g,
                    Bad::new(format!("{name:?} is not a valid environment variable name"))
                        .help("a name must be non-empty and contain neither `=` nor NUL"),
                );
                continue;
            }
            let text = match value {
                Value::String(_, s) => Ok(s.clone()),
                Value::Bool(_, b) => Ok(b.to_string()),
                Value::Num(_, n) => match n.to_f64() {
                    Some(x) => Ok(format!("{x:?}")),
                    None => Ok(int_of(n).map_or_else(|| format!("{n:?}"), |i| i.to_string())),
                },
                other => Err(Bad::new(format!(
                    "expected a string, a number or a boolean, found {}",
                    found(other)
                ))),
            };
            match text {
                Ok(t) if t.contains('\0') => {
                    ok = false;
                    self.invalid(
                        &g,
                        Bad::new("an environment variable cannot hold a NUL character"),
                    );
                }
                Ok(t) => {
                    // Each variable's own origin too (`pool.env.NAME`), for `show-config`.
                    self.origins.insert(g.label.clone(), g.origin.clone());
                    out.insert(name.clone(), t);
                }
                Err(bad) => {
                    ok = false;
                    self.invalid(&g, bad);
                }
            }
        }
        if ok { self.accept(f, out) } else { None }
    }

    /// `initializer = { task = "plugin::name", args = ... }`.
    fn initializer(&mut self, figment: &Figment, f: &Field) -> Option<Sourced<Initializer>> {
        let Value::Dict(_, dict) = f.value else {
            self.invalid(f, mismatch(Kind::Initializer, f.value));
            return None;
        };
        let task_ref = match dict.get("task") {
            Some(v) => {
                let g = self.sub(figment, f, v, Seg::Key("task".into()));
                self.read(&g, task)
            }
            None => {
                let label = f.label.clone();
                self.invalid(
                    f,
                    Bad::new("missing `task`")
                        .help(format!("write {label} = {{ task = \"plugin::name\" }}")),
                );
                return None;
            }
        };
        let args = match dict.get("args") {
            Some(v) => {
                let g = self.sub(figment, f, v, Seg::Key("args".into()));
                self.read(&g, json)
            }
            None => Some(Sourced {
                value: serde_json::Value::Null,
                origin: f.origin.clone(),
            }),
        };
        let (task_ref, args) = (task_ref?, args?);
        self.accept(
            f,
            Initializer {
                task: task_ref.value,
                args: args.value,
            },
        )
    }

    /// `input = { range | items | file | from }`: exactly one.
    fn input(&mut self, figment: &Figment, f: &Field) -> Option<Sourced<RawInput>> {
        let Value::Dict(_, dict) = f.value else {
            self.invalid(f, mismatch(Kind::Input, f.value));
            return None;
        };
        let kinds: Vec<&str> = INPUT_KEYS
            .iter()
            .map(|k| k.name)
            .filter(|k| dict.contains_key(*k))
            .collect();
        let kind = match kinds.as_slice() {
            [one] => *one,
            [] => {
                self.invalid(
                    f,
                    Bad::new("an input needs one of `range`, `items`, `file` or `from`").help(
                        "for example input = { range = [0, 100] }, { items = [1, 2] }, \
                         { file = \"inputs.jsonl\" } or { from = \"earlier_stage\" }",
                    ),
                );
                return None;
            }
            several => {
                let named: Vec<String> = several.iter().map(|k| format!("`{k}`")).collect();
                self.invalid(
                    f,
                    Bad::new(format!(
                        "an input has exactly one of `range`, `items`, `file` or `from`, found {}",
                        join_words(&named, "and")
                    ))
                    .help("keep one of them; run one stage per kind of input"),
                );
                return None;
            }
        };
        let value = &dict[kind];
        let g = self.sub(figment, f, value, Seg::Key(kind.into()));
        let parsed = match kind {
            "range" => self.read(&g, range),
            "items" => self.read(&g, |v| match v {
                Value::Array(_, items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        json(item).map_err(|b| Bad::new(format!("element {i}: {}", b.detail)))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(RawInput::Items),
                other => Err(mismatch(Kind::AnyList, other)),
            }),
            "file" => self.read(&g, |v| text(v, Kind::Path).map(RawInput::File)),
            _ => self.read(&g, |v| text(v, Kind::StageName).map(RawInput::From)),
        }?;
        self.origins.insert(f.label.clone(), parsed.origin.clone());
        Some(parsed)
    }
}

// ---- value parsers -----------------------------------------------------------------------

fn int_of(n: &Num) -> Option<i128> {
    n.to_i128()
        .or_else(|| n.to_u128().and_then(|u| i128::try_from(u).ok()))
}

/// What a value is, for "found ...".
pub(crate) fn found(v: &Value) -> String {
    match v {
        Value::String(_, s) if s.is_empty() => "an empty string".into(),
        Value::String(_, s) => format!("string {s:?}"),
        Value::Char(_, c) => format!("character {c:?}"),
        Value::Bool(_, b) => format!("boolean {b}"),
        Value::Num(_, n) => match n.to_f64() {
            Some(x) => format!("float {x:?}"),
            None => int_of(n).map_or_else(|| "a number".into(), |i| format!("integer {i}")),
        },
        Value::Empty(..) => "nothing".into(),
        Value::Dict(..) => "a table".into(),
        Value::Array(..) => "an array".into(),
    }
}

fn mismatch(kind: Kind, v: &Value) -> Bad {
    let bad = Bad::new(format!("expected {}, found {}", kind.expected(), found(v)));
    match (kind, v) {
        // A number written as a string: say how to write it.
        (Kind::Positive | Kind::Count, Value::String(_, s)) if s.trim().parse::<i64>().is_ok() => {
            bad.help(format!("write {} without quotes", s.trim()))
        }
        _ => bad,
    }
}

fn text(v: &Value, kind: Kind) -> Result<String, Bad> {
    match v {
        Value::String(_, s) if s.is_empty() => Err(Bad::new("must not be empty")),
        Value::String(_, s) => Ok(s.clone()),
        other => Err(mismatch(kind, other)),
    }
}

fn pipeline_name(v: &Value) -> Result<String, Bad> {
    let name = text(v, Kind::Text)?;
    if name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(Bad::new(format!("{name:?} cannot be a pipeline name"))
            .help("the name is used as a directory name (out/<name>): avoid `/` and `..`"));
    }
    Ok(name)
}

/// Letters, digits, `_`, `-`, `.`.
pub(crate) fn valid_stage_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.chars().all(|c| c == '.')
}

fn stage_name(v: &Value) -> Result<String, Bad> {
    let name = text(v, Kind::StageName)?;
    if !valid_stage_name(&name) {
        return Err(Bad::new(format!("{name:?} is not a valid stage name"))
            .help("a stage name is made of ASCII letters, digits, `_`, `-` and `.`"));
    }
    Ok(name)
}

/// `plugin::task` or `task`.
pub(crate) fn parse_task(s: &str) -> Result<TaskRef, Bad> {
    let bad = || {
        Bad::new(format!("{s:?} is not a task name"))
            .help("write \"plugin::task\", or \"task\" when only one plugin exports it")
    };
    let ident = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-'))
    };
    match s.split_once("::") {
        Some((plugin, name)) if ident(plugin) && ident(name) => Ok(TaskRef {
            plugin: Some(plugin.to_string()),
            name: name.to_string(),
        }),
        None if ident(s) => Ok(TaskRef {
            plugin: None,
            name: s.to_string(),
        }),
        _ => Err(bad()),
    }
}

fn task(v: &Value) -> Result<TaskRef, Bad> {
    parse_task(&text(v, Kind::Task)?)
}

fn choice(v: &Value, options: &'static [&'static str]) -> Result<&'static str, Bad> {
    let kind = Kind::Choice(options);
    let s = match v {
        Value::String(_, s) => s,
        other => return Err(mismatch(kind, other)),
    };
    if let Some(hit) = options.iter().find(|o| **o == s.as_str()) {
        return Ok(hit);
    }
    let bad = Bad::new(format!("expected {}, found {s:?}", kind.expected()));
    Err(match closest(s, options.iter().copied()) {
        Some(c) => bad.help(format!("did you mean \"{c}\"?")),
        None => bad,
    })
}

fn duration(v: &Value) -> Result<Duration, Bad> {
    match v {
        Value::String(_, s) => {
            units::parse_duration(s).map_err(|e| Bad::new(e.message).help(e.help))
        }
        Value::Num(_, n) if int_of(n).is_some() => {
            let n = int_of(n).unwrap_or_default();
            Err(Bad::new(format!("expected a duration string, found integer {n}"))
                .help(format!("durations have a unit: write \"{n}s\" for {n} seconds or \"{n}ms\" for milliseconds")))
        }
        other => Err(mismatch(Kind::Duration, other)),
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn size(v: &Value) -> Result<u64, Bad> {
    match v {
        Value::String(_, s) => units::parse_size(s).map_err(|e| Bad::new(e.message).help(e.help)),
        Value::Num(_, n) => match int_of(n) {
            Some(i) if i < 0 => Err(Bad::new(format!("a size cannot be negative, found {i}"))),
            Some(i) => u64::try_from(i).map_err(|_| Bad::new("too large")),
            None => Err(mismatch(Kind::Size, v)),
        },
        other => Err(mismatch(Kind::Size, other)),
    }
}

fn integer(v: &Value, kind: Kind, min: i128, max: i128) -> Result<i128, Bad> {
    let n = match v {
        Value::Num(_, n) => int_of(n).ok_or_else(|| mismatch(kind, v))?,
        other => return Err(mismatch(kind, other)),
    };
    if n < min {
        return Err(Bad::new(format!("must be at least {min}, found {n}")));
    }
    if n > max {
        return Err(Bad::new(format!("must be at most {max}, found {n}")));
    }
    Ok(n)
}

fn boolean(v: &Value) -> Result<bool, Bad> {
    match v {
        Value::Bool(_, b) => Ok(*b),
        other => Err(mismatch(Kind::Bool, other)),
    }
}

fn chunksize(v: &Value) -> Result<ChunkSize, Bad> {
    match v {
        Value::String(_, s) if s == "auto" => Ok(ChunkSize::Auto),
        Value::Num(..) => integer(v, Kind::ChunkSize, 1, usize::MAX as i128)
            .map(|n| ChunkSize::Fixed(NonZeroUsize::new(n as usize).unwrap_or(NonZeroUsize::MIN))),
        Value::String(_, s) if s.trim().parse::<u64>().is_ok() => {
            Err(mismatch(Kind::ChunkSize, v).help(format!("write {} without quotes", s.trim())))
        }
        other => Err(mismatch(Kind::ChunkSize, other)),
    }
}

fn range(v: &Value) -> Result<RawInput, Bad> {
    let bad = || mismatch(Kind::Range, v);
    let Value::Array(_, items) = v else {
        return Err(bad());
    };
    let ints: Vec<i64> = items
        .iter()
        .map(|i| match i {
            Value::Num(_, n) => int_of(n)
                .and_then(|x| i64::try_from(x).ok())
                .ok_or_else(|| {
                    Bad::new(format!("range bounds must be integers, found {}", found(i)))
                }),
            other => Err(Bad::new(format!(
                "range bounds must be integers, found {}",
                found(other)
            ))),
        })
        .collect::<Result<_, _>>()?;
    match ints.as_slice() {
        [start, end] if start <= end => Ok(RawInput::Range {
            start: *start,
            end: *end,
        }),
        [start, end] => Err(
            Bad::new(format!("range [{start}, {end}] starts after it ends"))
                .help("a range [a, b] yields the integers a <= i < b, so a must not exceed b"),
        ),
        _ => Err(Bad::new(format!(
            "expected {}, found an array of {} elements",
            Kind::Range.expected(),
            ints.len()
        ))),
    }
}

/// A TOML value as JSON.
pub(crate) fn json(v: &Value) -> Result<serde_json::Value, Bad> {
    Ok(match v {
        Value::String(_, s) => serde_json::Value::String(s.clone()),
        Value::Char(_, c) => serde_json::Value::String(c.to_string()),
        Value::Bool(_, b) => serde_json::Value::Bool(*b),
        Value::Num(_, n) => match n.to_f64() {
            Some(x) => serde_json::Number::from_f64(x)
                .map(serde_json::Value::Number)
                .ok_or_else(|| Bad::new(format!("{x} cannot be represented in JSON")))?,
            None => match int_of(n) {
                Some(i) => i64::try_from(i)
                    .map(serde_json::Value::from)
                    .or_else(|_| u64::try_from(i).map(serde_json::Value::from))
                    .map_err(|_| Bad::new("integer out of range"))?,
                None => return Err(Bad::new("not a number")),
            },
        },
        Value::Empty(..) => serde_json::Value::Null,
        Value::Dict(_, d) => serde_json::Value::Object(
            d.iter()
                .map(|(k, v)| json(v).map(|j| (k.clone(), j)))
                .collect::<Result<_, _>>()?,
        ),
        Value::Array(_, a) => {
            serde_json::Value::Array(a.iter().map(json).collect::<Result<_, _>>()?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks() {
        let t = parse_task("demo::square").ok().unwrap();
        assert_eq!(
            (t.plugin.as_deref(), t.name.as_str()),
            (Some("demo"), "square")
        );
        let t = parse_task("square").ok().unwrap();
        assert_eq!((t.plugin, t.name.as_str()), (None, "square"));
        for bad in ["", "a::b::c", "::x", "x::", "a b", "a:b"] {
            assert!(parse_task(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stage_names() {
        for ok in ["a", "squares_2", "sum-up", "v1.2"] {
            assert!(valid_stage_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "..", "é"] {
            assert!(!valid_stage_name(bad), "{bad}");
        }
    }

    #[test]
    fn values_as_found() {
        assert_eq!(found(&Value::from("two")), "string \"two\"");
        assert_eq!(found(&Value::from(-1i64)), "integer -1");
        assert_eq!(found(&Value::from(1.5f64)), "float 1.5");
        assert_eq!(found(&Value::from(String::new())), "an empty string");
    }

    #[test]
    fn choices_suggest() {
        let e = choice(&Value::from("nevr"), REUSE_CHOICES).err().unwrap();
        assert!(e.detail.contains("\"auto\" or \"never\""), "{}", e.detail);
        assert_eq!(e.help.as_deref(), Some("did you mean \"never\"?"));
        assert!(
            choice(&Value::from("sometimes"), REUSE_CHOICES)
                .err()
                .unwrap()
                .help
                .is_none()
        );
    }
}

//! `loky-run show-config PIPELINE`: the resolved configuration (defaults, the file, the
//! environment and `--set` applied), one value per line in `--set` spelling, each with where it
//! came from:
//!
//! ```text
//! pool.max_workers = 4                  # --set pool.max_workers=4
//! stage.squares.retries = 0             # default
//! stage.squares.task = "demo::square"   # file pipeline.toml:12
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::config::{
    ChunkSize, InputSpec, Launcher, Layer, Loaded, OnError, Origin, Pipeline, PluginSpecKind,
    PoolSettings, Reuse, SlurmAlloc, Stage,
};

/// Items of an `items` input shown before the rest is summed up.
const SHOWN_ITEMS: usize = 8;
/// Values longer than this do not push every comment of their group to the right.
const MAX_ALIGN: usize = 56;

/// One printed line: key, value, where it came from.
struct Line {
    key: String,
    value: String,
    origin: String,
    /// Whether the line counts for aligning its group's comments: not when the value holds a
    /// path, whose length depends on the machine.
    align: bool,
}

/// Renders the resolved configuration.
pub fn render(loaded: &Loaded) -> String {
    render_keys(loaded, None).unwrap_or_default()
}

/// Renders the keys equal to `filter` or under it (`pool`, `stage.squares`,
/// `stage.squares.retries`); `None` when no key matches.
pub fn render_filtered(loaded: &Loaded, filter: &str) -> Option<String> {
    render_keys(loaded, Some(filter.trim_end_matches('.')))
}

fn render_keys(loaded: &Loaded, filter: Option<&str>) -> Option<String> {
    let wanted = |key: &str| {
        filter.is_none_or(|f| {
            key == f
                || key
                    .strip_prefix(f)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    };
    let mut matched = false;
    let mut group = |out: &mut String, header: Option<String>, lines: Vec<Line>| {
        let lines: Vec<Line> = lines.into_iter().filter(|l| wanted(&l.key)).collect();
        if lines.is_empty() {
            return;
        }
        matched = true;
        out.push('\n');
        if let Some(header) = header {
            let _ = writeln!(out, "{header}");
        }
        push_group(out, &lines);
    };
    let p = &loaded.pipeline;
    let o = Origins {
        map: &loaded.origins,
        file: p.file.file_name().map_or_else(
            || p.file.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
    };
    let mut out = String::new();
    let _ = writeln!(out, "# {}, resolved", p.file.display());
    out.push_str(
        "# layers, lowest first: default, file, environment (LOKY_RUN_*), --set; \
         keys in --set spelling\n",
    );

    let lines = vec![
        o.line("pipeline.name", quote(&p.name)),
        o.path_line("pipeline.plugins", plugins(p)),
        o.path_line("pipeline.output_dir", quote(&path(&p.output_dir))),
        o.line("pipeline.grace_period", duration(p.grace_period)),
        o.path_line(
            "pipeline.joblog",
            p.joblog
                .as_deref()
                .map_or_else(|| "none".to_owned(), |j| quote(&path(j))),
        ),
        o.line(
            "pipeline.progress_interval",
            p.progress_interval.map_or_else(|| quote("0s"), duration),
        ),
    ];
    group(&mut out, None, lines);
    group(&mut out, None, o.pool_lines("pool", &loaded.pool, None));
    // Only a pipeline with a `[slurm]` table has these (without one, loky-run submits nothing).
    if let Some(slurm) = &p.slurm {
        group(&mut out, None, o.slurm_lines(slurm));
    }

    for (i, stage) in p.stages.iter().enumerate() {
        let header = format!("# stage {} of {}", i + 1, p.stages.len());
        let prefix = format!("stage.{}", stage.name);
        let mut lines = vec![
            o.line(&format!("{prefix}.name"), quote(&stage.name)),
            o.line(&format!("{prefix}.task"), quote(&stage.task.to_string())),
            match stage.input {
                InputSpec::File(_) => o.path_line(&format!("{prefix}.input"), input(stage)),
                _ => o.line(&format!("{prefix}.input"), input(stage)),
            },
            o.line(
                &format!("{prefix}.kill_workers"),
                stage.kill_workers.to_string(),
            ),
        ];
        lines.extend(o.pool_lines(&prefix, &stage.settings, Some("pool")));
        group(&mut out, Some(header), lines);
    }
    matched.then_some(out)
}

struct Origins<'a> {
    map: &'a BTreeMap<String, Origin>,
    /// The pipeline file's name, for `file pipeline.toml:7`.
    file: String,
}

impl Origins<'_> {
    fn describe(&self, key: &str) -> String {
        match self.map.get(key) {
            Some(origin) => self.origin_text(origin),
            None => "default".into(),
        }
    }

    fn origin_text(&self, origin: &Origin) -> String {
        match (&origin.layer, &origin.location) {
            (Layer::File(_), Some(loc)) => format!("file {}:{}", self.file, loc.line),
            (Layer::File(_), None) => format!("file {}", self.file),
            (Layer::Env(var), _) => format!("environment {var}"),
            (Layer::Set(arg), _) => format!("--set {arg}"),
            (Layer::Default, _) => "default".into(),
        }
    }

    fn line(&self, key: &str, value: String) -> Line {
        Line {
            key: key.to_string(),
            value,
            origin: self.describe(key),
            align: true,
        }
    }

    fn path_line(&self, key: &str, value: String) -> Line {
        Line {
            align: false,
            ..self.line(key, value)
        }
    }

    /// `[slurm]`'s keys; unset optional ones as `none`.
    fn slurm_lines(&self, s: &SlurmAlloc) -> Vec<Line> {
        let text = |v: &Option<String>| v.as_deref().map_or_else(|| "none".to_owned(), quote);
        let number = |v: Option<u32>| v.map_or_else(|| "none".to_owned(), |n| n.to_string());
        let args: Vec<String> = s.sbatch_args.iter().map(|a| quote(a)).collect();
        let mut lines = vec![
            self.line("slurm.partition", text(&s.partition)),
            self.line("slurm.account", text(&s.account)),
            self.line("slurm.qos", text(&s.qos)),
            self.line(
                "slurm.time_limit",
                s.time_limit.map_or_else(|| quote("0s"), duration),
            ),
            self.line("slurm.nodes", s.nodes.to_string()),
            self.line("slurm.tasks", s.tasks.to_string()),
            self.line("slurm.cpus_per_task", number(s.cpus_per_task)),
            self.line("slurm.max_allocations", s.max_allocations.to_string()),
            self.line("slurm.sbatch_args", format!("[{}]", args.join(", "))),
            self.line("slurm.renew_before", duration(s.renew_before)),
        ];
        for l in &mut lines {
            l.origin = match (l.key.as_str(), l.origin.as_str()) {
                ("slurm.time_limit", "default") => "default: the partition's time limit".into(),
                ("slurm.tasks", "default") => "default: the value of nodes".into(),
                _ => continue,
            };
        }
        lines
    }

    /// Whether the stage's `key` is `[pool]`'s (same origin, and not a default).
    fn inherited(&self, prefix: &str, key: &str) -> bool {
        let own = self.map.get(&format!("{prefix}.{key}"));
        let pool = self.map.get(&format!("pool.{key}"));
        matches!((own, pool), (Some(a), Some(b)) if a == b && a.layer != Layer::Default)
    }

    /// The pool keys of `[pool]` (`prefix` = `pool`) or of a stage (`stage.NAME`, `parent` =
    /// `Some("pool")`: a value the stage inherits says so).
    fn pool_lines(&self, prefix: &str, s: &PoolSettings, parent: Option<&str>) -> Vec<Line> {
        let mut lines = Vec::new();
        let push = |key: &str, value: String, lines: &mut Vec<Line>| {
            let full = format!("{prefix}.{key}");
            let origin = match parent {
                Some(parent) if self.inherited(prefix, key) => {
                    format!("[{parent}]: {}", self.describe(&format!("{parent}.{key}")))
                }
                _ => self.describe(&full),
            };
            let origin = match (key, origin.as_str()) {
                ("max_workers", "default") => "default: the usable CPU count".to_string(),
                _ => origin,
            };
            lines.push(Line {
                key: full,
                value,
                origin,
                align: true,
            });
        };
        let max_workers = s
            .max_workers
            .map_or_else(crate::sys::usable_cpus, std::num::NonZero::get);
        push("max_workers", max_workers.to_string(), &mut lines);
        push(
            "idle_timeout",
            s.idle_timeout.map_or_else(|| quote("0s"), duration),
            &mut lines,
        );
        push(
            "reuse",
            quote(match s.reuse {
                Reuse::Auto => "auto",
                Reuse::Never => "never",
            }),
            &mut lines,
        );
        // `env`: one line per variable, each with its own origin.
        if s.env.is_empty() {
            push("env", "{}".into(), &mut lines);
        } else {
            let owner = match parent {
                Some(parent) if self.inherited(prefix, "env") => parent.to_string(),
                _ => prefix.to_string(),
            };
            for (name, value) in &s.env {
                let key = format!("{owner}.env.{name}");
                let origin = match self.map.get(&key) {
                    Some(o) => self.origin_text(o),
                    None => self.describe(&format!("{owner}.env")),
                };
                let origin = if owner != prefix {
                    format!("[{owner}]: {origin}")
                } else {
                    origin
                };
                lines.push(Line {
                    key: format!("{prefix}.env.{}", bare_or_quoted(name)),
                    value: quote(value),
                    origin,
                    align: true,
                });
            }
        }
        let initializer = match &s.initializer {
            Some(init) => format!(
                "{{ task = {}, args = {} }}",
                quote(&init.task.to_string()),
                inline(&init.args)
            ),
            None => "none".into(),
        };
        push("initializer", initializer, &mut lines);
        push(
            "max_tasks_per_worker",
            s.max_tasks_per_worker.to_string(),
            &mut lines,
        );
        push(
            "max_memory_growth",
            match s.max_memory_growth.unwrap_or(0) {
                0 => "0".to_owned(),
                n => quote(&crate::config::units::format_size(n)),
            },
            &mut lines,
        );
        push(
            "task_timeout",
            s.task_timeout.map_or_else(|| quote("0s"), duration),
            &mut lines,
        );
        push("retries", s.retries.to_string(), &mut lines);
        push(
            "on_error",
            quote(match s.on_error {
                OnError::Fail => "fail",
                OnError::Continue => "continue",
            }),
            &mut lines,
        );
        push(
            "chunksize",
            match s.chunksize {
                ChunkSize::Auto => quote("auto"),
                ChunkSize::Fixed(n) => n.to_string(),
            },
            &mut lines,
        );
        push(
            "launcher",
            quote(match s.launcher {
                Launcher::Local => "local",
                Launcher::Slurm => "slurm",
            }),
            &mut lines,
        );
        let srun: Vec<String> = s.srun_args.iter().map(|a| quote(a)).collect();
        push("srun_args", format!("[{}]", srun.join(", ")), &mut lines);
        lines
    }
}

/// `key = value   # origin`, comments aligned within the group.
fn push_group(out: &mut String, lines: &[Line]) {
    let width = lines
        .iter()
        .filter(|l| l.align)
        .map(|l| l.key.chars().count() + 3 + l.value.chars().count())
        .filter(|w| *w <= MAX_ALIGN)
        .max()
        .unwrap_or(0);
    for l in lines {
        let text = format!("{} = {}", l.key, l.value);
        let pad = width.saturating_sub(text.chars().count());
        let _ = writeln!(out, "{text}{}   # {}", " ".repeat(pad), l.origin);
    }
}

fn plugins(p: &Pipeline) -> String {
    let items: Vec<String> = p
        .plugins
        .iter()
        .map(|spec| match &spec.kind {
            PluginSpecKind::Name(name) => quote(name),
            PluginSpecKind::Library(path) | PluginSpecKind::Crate(path) => quote(&self::path(path)),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn input(stage: &Stage) -> String {
    match &stage.input {
        InputSpec::Range { start, end } => format!("{{ range = [{start}, {end}] }}"),
        InputSpec::Items(items) => {
            let mut shown: Vec<String> = items.iter().take(SHOWN_ITEMS).map(inline).collect();
            if items.len() > SHOWN_ITEMS {
                shown.push(format!("... {} more", items.len() - SHOWN_ITEMS));
            }
            format!("{{ items = [{}] }}", shown.join(", "))
        }
        InputSpec::File(path) => format!("{{ file = {} }}", quote(&self::path(path))),
        InputSpec::From(source) => format!("{{ from = {} }}", quote(source)),
    }
}

/// A path as resolved, `a/../b` read as `b` (the resolved paths are absolute).
fn path(p: &Path) -> String {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out.display().to_string()
}

fn duration(d: std::time::Duration) -> String {
    quote(&humantime::format_duration(d).to_string())
}

/// A TOML basic string (JSON's escapes are TOML's).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

fn bare_or_quoted(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_string()
    } else {
        quote(key)
    }
}

/// A JSON value written as a TOML inline value (`null`, which TOML lacks, stays `null`).
fn inline(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) if map.is_empty() => "{}".into(),
        Value::Object(map) => {
            let entries: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{} = {}", bare_or_quoted(k), inline(v)))
                .collect();
            format!("{{ {} }}", entries.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[slurm]` is shown when the pipeline has one, each key with its origin; not otherwise.
    #[test]
    fn slurm_lines_only_with_a_slurm_table() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        let base = "[pipeline]\nname = \"p\"\nplugins = [\"demo\"]\n\
                    [[stage]]\nname = \"s\"\ntask = \"demo::square\"\ninput = { range = [0, 1] }\n";
        let load = |text: &str, sets: &[&str]| {
            std::fs::write(&file, text).unwrap();
            crate::config::load_with_origins(&crate::config::LoadOptions {
                file: file.clone(),
                sets: sets.iter().map(ToString::to_string).collect(),
                env: vec![],
            })
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let text = render(&load(base, &[]));
        assert!(!text.contains("slurm."), "{text}");
        let loaded = load(
            &format!("{base}[slurm]\nnodes = 2\nsbatch_args = [\"--mem=1G\"]\n"),
            &["slurm.partition=gpu"],
        );
        let text = render_filtered(&loaded, "slurm").unwrap();
        let lines: Vec<(&str, &str)> = text
            .lines()
            .filter(|l| l.starts_with("slurm."))
            .map(|l| {
                let (kv, origin) = l.split_once("   # ").unwrap();
                (kv.trim_end(), origin)
            })
            .collect();
        assert_eq!(
            lines,
            [
                ("slurm.partition = \"gpu\"", "--set slurm.partition=gpu"),
                ("slurm.account = none", "default"),
                ("slurm.qos = none", "default"),
                (
                    "slurm.time_limit = \"0s\"",
                    "default: the partition's time limit"
                ),
                ("slurm.nodes = 2", "file p.toml:9"),
                ("slurm.tasks = 2", "default: the value of nodes"),
                ("slurm.cpus_per_task = none", "default"),
                ("slurm.max_allocations = 1", "default"),
                ("slurm.sbatch_args = [\"--mem=1G\"]", "file p.toml:10"),
                ("slurm.renew_before = \"2m\"", "default"),
            ]
        );
    }

    #[test]
    fn values_read_as_toml() {
        assert_eq!(
            inline(&serde_json::json!({"a b": [1, "x"], "c": null, "d": {}})),
            "{ \"a b\" = [1, \"x\"], c = null, d = {} }"
        );
        assert_eq!(quote("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
        assert_eq!(
            duration(std::time::Duration::from_millis(1500)),
            "\"1s 500ms\""
        );
        assert_eq!(
            path(Path::new("/a/configs/../plugins/./demo")),
            "/a/plugins/demo"
        );
    }
}

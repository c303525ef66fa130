//! The pool decision before each stage, as data: reuse, resize, or restart, and why.
//!
//! A *worker spec* holds everything fixed when a worker process starts (plugins, environment,
//! initializer and its args, launcher). Equal specs keep the processes (resizing if the worker
//! count differs); a different spec, `reuse = "never"` or `kill_workers = true` restart them.
//! Settings the runner applies itself (timeouts, recycling limits, retries, on_error) never
//! need a restart.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::{Launcher, Reuse};
use crate::protocol::InitCall;

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    pub plugins: Vec<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub initializer: Option<InitCall>,
    pub launcher: Launcher,
    /// Extra `srun` arguments (Slurm launcher).
    pub srun_args: Vec<String>,
    /// Where workers start: the pipeline file's directory, so that relative paths in task
    /// inputs mean what they mean in the file (`None`: the runner's own directory).
    pub workdir: Option<PathBuf>,
    /// Slurm outside an allocation: the allocations the pool asks for (`[slurm]`).
    pub on_demand: Option<super::alloc::OnDemand>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No pool yet.
    Start {
        size: usize,
    },
    Reuse {
        size: usize,
    },
    Resize {
        from: usize,
        to: usize,
    },
    Restart {
        from: usize,
        to: usize,
        reasons: Vec<String>,
    },
}

impl Decision {
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Start { .. } => "start",
            Decision::Reuse { .. } => "reuse",
            Decision::Resize { .. } => "resize",
            Decision::Restart { .. } => "restart",
        }
    }

    pub fn from_to(&self) -> (usize, usize) {
        match *self {
            Decision::Start { size } => (0, size),
            Decision::Reuse { size } => (size, size),
            Decision::Resize { from, to } | Decision::Restart { from, to, .. } => (from, to),
        }
    }

    /// A few words for the summary table: `start 4`, `reuse 4`, `resize 2->4`, `restart 4`.
    pub fn short(&self) -> String {
        match self {
            Decision::Start { size } => format!("start {size}"),
            Decision::Reuse { size } => format!("reuse {size}"),
            Decision::Resize { from, to } => format!("resize {from}->{to}"),
            Decision::Restart { to, .. } => format!("restart {to}"),
        }
    }

    /// One line for the event log and `--dry-run`.
    pub fn reason(&self) -> String {
        match self {
            Decision::Start { size } => format!("no pool yet: starting {size} worker(s)"),
            Decision::Reuse { size } => format!("same worker settings: keeping {size} worker(s)"),
            Decision::Resize { from, to } => format!("max_workers {from} -> {to}"),
            Decision::Restart { reasons, .. } => reasons.join(", "),
        }
    }
}

/// Decides what happens to the running pool (`current`: its spec and size) before a stage.
pub fn decide(
    current: Option<(&WorkerSpec, usize)>,
    next: &WorkerSpec,
    size: usize,
    reuse: Reuse,
    kill_workers: bool,
) -> Decision {
    let Some((spec, from)) = current else {
        return Decision::Start { size };
    };
    let mut reasons = Vec::new();
    if kill_workers {
        reasons.push("kill_workers".to_owned());
    }
    if reuse == Reuse::Never {
        reasons.push("reuse = \"never\"".to_owned());
    }
    reasons.extend(differences(spec, next));
    if !reasons.is_empty() {
        return Decision::Restart {
            from,
            to: size,
            reasons,
        };
    }
    if from != size {
        Decision::Resize { from, to: size }
    } else {
        Decision::Reuse { size }
    }
}

/// Names every worker-start setting that differs, e.g. `env.GREETING changed`.
pub fn differences(old: &WorkerSpec, new: &WorkerSpec) -> Vec<String> {
    let mut out = Vec::new();
    if old.plugins != new.plugins {
        out.push("plugins changed".to_owned());
    }
    let keys: std::collections::BTreeSet<&String> = old.env.keys().chain(new.env.keys()).collect();
    for key in keys {
        match (old.env.get(key), new.env.get(key)) {
            (Some(a), Some(b)) if a != b => out.push(format!("env.{key} changed")),
            (Some(_), None) => out.push(format!("env.{key} removed")),
            (None, Some(_)) => out.push(format!("env.{key} added")),
            _ => {}
        }
    }
    match (&old.initializer, &new.initializer) {
        (Some(a), Some(b)) if a.name != b.name => out.push("initializer changed".to_owned()),
        (Some(a), Some(b)) if a.args != b.args => out.push("initializer args changed".to_owned()),
        (Some(_), None) => out.push("initializer removed".to_owned()),
        (None, Some(_)) => out.push("initializer added".to_owned()),
        _ => {}
    }
    if old.launcher != new.launcher {
        out.push("launcher changed".to_owned());
    }
    if old.srun_args != new.srun_args {
        out.push("srun_args changed".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorkerSpec {
        WorkerSpec {
            plugins: vec!["/p/libdemo.so".into()],
            env: BTreeMap::new(),
            initializer: None,
            workdir: None,
            on_demand: None,
            launcher: Launcher::Local,
            srun_args: Vec::new(),
        }
    }

    #[test]
    fn reuse_resize_restart() {
        let s = spec();
        assert_eq!(
            decide(None, &s, 2, Reuse::Auto, false),
            Decision::Start { size: 2 }
        );
        assert_eq!(
            decide(Some((&s, 2)), &s, 2, Reuse::Auto, false),
            Decision::Reuse { size: 2 }
        );
        assert_eq!(
            decide(Some((&s, 2)), &s, 3, Reuse::Auto, false),
            Decision::Resize { from: 2, to: 3 }
        );
        let d = decide(Some((&s, 2)), &s, 2, Reuse::Auto, true);
        assert_eq!(d.kind(), "restart");
        assert_eq!(d.reason(), "kill_workers");
        assert_eq!(
            decide(Some((&s, 2)), &s, 2, Reuse::Never, false).kind(),
            "restart"
        );
    }

    #[test]
    fn restart_reasons_name_the_setting() {
        let old = spec();
        let mut new = spec();
        new.env.insert("GREETING".into(), "hi".into());
        assert_eq!(
            decide(Some((&old, 2)), &new, 2, Reuse::Auto, false).reason(),
            "env.GREETING added"
        );
        let mut changed = new.clone();
        changed.env.insert("GREETING".into(), "ho".into());
        assert_eq!(differences(&new, &changed), ["env.GREETING changed"]);
        let init = |args: &str| {
            Some(InitCall {
                name: "demo::setup".into(),
                plugin: 0,
                task: 7,
                args: args.into(),
            })
        };
        let (mut a, mut b) = (spec(), spec());
        a.initializer = init("1");
        b.initializer = init("2");
        assert_eq!(differences(&a, &b), ["initializer args changed"]);
    }
}

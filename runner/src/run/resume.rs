//! `--resume`: what an earlier run in the output directory left, and what to do with each stage.
//!
//! Every stage's manifest record carries a fingerprint of what its results depend on. A resume
//! compares the pipeline as it is now with the manifest stage by stage: stages that finished are
//! kept as they are, the stage that was running continues from its output file and journal (see
//! [`crate::output`]), later ones run. If anything changed (a setting that affects results, a
//! plugin file, an input file's content, the stages themselves), the resume is refused (exit 2)
//! unless `--force`, which reruns the first changed stage and every stage after it.
//!
//! Without `--resume`, a run starts over: it deletes what an earlier run left for this
//! pipeline's stages (outputs and journals), and says so if that run was unfinished.

use std::collections::BTreeMap;
use std::path::Path;

use super::error::RunError;
use crate::config::InputSpec;
use crate::console::Console;
use crate::manifest::{Manifest, PreviousRun, StageRecord, StageStatus, sha256_file, sha256_hex};
use crate::output::{self, JOURNAL_DIR};

use super::{Plan, output_file};

/// What `--resume` / `--force` / `--retry-failed` / `--stage` asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResumeMode {
    pub resume: bool,
    pub force: bool,
    /// `--retry-failed` (with `resume` set): finished stages rerun the inputs whose record is
    /// a failure, keeping their ok records; the stages reading from them rerun.
    pub retry_failed: bool,
    /// `--stage`: run only this stage (by position); its `from` source must have a finished
    /// output in the output directory, the stages reading from it are reset to pending, the
    /// others are left as they are.
    pub only: Option<usize>,
}

/// Fingerprint parts that change how failures are handled, not what an ok record holds:
/// `--retry-failed` accepts a change in them (more retries, a longer timeout).
const RETRY_SETTINGS: [&str; 3] = ["retries", "task_timeout", "on_error"];
/// The changed part of a `from` stage whose source stage's fingerprint changed.
const SOURCE_CHANGED: &str = "input (its source stage changed)";

/// How a stage starts in this run.
#[derive(Debug, Clone)]
pub enum StageStart {
    /// From scratch (its old output and journal, if any, are already deleted).
    Fresh,
    /// Continues the interrupted stage: results already recorded are kept, not run again.
    Resume,
    /// Finished in an earlier run: kept as recorded, not run.
    Keep(Box<StageRecord>),
    /// `--retry-failed`: reruns the inputs without an ok record in its finished output
    /// (failures; inputs a stopped stage never ran) and keeps the others byte for byte; also
    /// an interrupted retry, continued. `previous_sha256`: the manifest's SHA-256 of that
    /// output.
    Retry { previous_sha256: Option<String> },
    /// `--stage` runs another stage: this one is not run, its record (if any) stands.
    Skip(Option<Box<StageRecord>>),
}

pub enum Prepared {
    /// One entry per stage of the pipeline.
    Run(Vec<StageStart>),
    /// `--resume` of a run that had already finished, unchanged: nothing to do (`message` says
    /// so).
    Finished {
        message: String,
        status: String,
        exit_code: i32,
        stages: Vec<StageRecord>,
    },
}

/// The fingerprint of every stage: what its results depend on, part by part. Worker count,
/// chunk size, idle timeout and the recycling limits are left out: outputs do not depend on them,
/// so a resume may change them.
pub fn fingerprints(
    plan: &Plan,
    manifest: &Manifest,
) -> Result<Vec<BTreeMap<String, String>>, RunError> {
    let mut all: Vec<BTreeMap<String, String>> = Vec::new();
    for (i, stage) in plan.pipeline.stages.iter().enumerate() {
        let planned = &plan.stages[i];
        let plugin_sha = |p: u16| manifest.plugins[p as usize].sha256.as_str();
        let mut f = BTreeMap::new();
        let plugin = &plan.plugins[planned.plugin as usize];
        f.insert(
            "task".into(),
            format!("{}::{}", plugin.name, stage.task.name),
        );
        f.insert(
            "plugin".into(),
            format!("sha256:{}", plugin_sha(planned.plugin)),
        );
        let input = match &stage.input {
            InputSpec::Range { start, end } => format!("range [{start}, {end})"),
            InputSpec::Items(items) => format!(
                "items sha256:{}",
                sha256_hex(&serde_json::to_vec(items).expect("JSON values serialize"))
            ),
            InputSpec::File(path) => {
                let sha = match &planned.input_sha256 {
                    Some(sha) => sha.clone(),
                    None => sha256_file(path).map_err(|source| RunError::Io {
                        context: format!("cannot read input file {}", path.display()),
                        source,
                        resumable: false,
                    })?,
                };
                format!("file sha256:{sha}")
            }
            InputSpec::From(name) => {
                let source = planned.from.map(|j| digest(&all[j])).unwrap_or_default();
                format!("from {name} sha256:{source}")
            }
        };
        f.insert("input".into(), input);
        let init = match &planned.spec.initializer {
            None => "none".to_owned(),
            Some(init) => format!(
                "{} sha256:{}",
                init.name,
                sha256_hex(format!("{}\n{}", init.args, plugin_sha(init.plugin)).as_bytes())
            ),
        };
        f.insert("initializer".into(), init);
        let env = serde_json::to_vec(&stage.settings.env).expect("strings serialize");
        f.insert("env".into(), format!("sha256:{}", sha256_hex(&env)));
        let settings = &stage.settings;
        f.insert("retries".into(), settings.retries.to_string());
        f.insert(
            "on_error".into(),
            serde_json::to_value(settings.on_error)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        );
        f.insert(
            "task_timeout".into(),
            settings.task_timeout.map_or("0s".to_owned(), |d| {
                humantime::format_duration(d).to_string()
            }),
        );
        all.push(f);
    }
    Ok(all)
}

/// One digest of a whole fingerprint (what a `from` stage records of its source).
fn digest(fingerprint: &BTreeMap<String, String>) -> String {
    let text: String = fingerprint
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    sha256_hex(text.as_bytes())
}

/// The parts of a fingerprint that differ, by name.
fn changed_parts(before: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Vec<String> {
    let mut keys: Vec<&String> = before.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| before.get(*k) != now.get(*k))
        .map(|k| match (k.as_str(), now.get(k)) {
            ("input", Some(v)) if v.starts_with("file ") => "input file content".to_owned(),
            ("input", Some(v)) if v.starts_with("from ") => SOURCE_CHANGED.to_owned(),
            ("plugin", _) => "plugin file".to_owned(),
            _ => k.clone(),
        })
        .collect()
}

/// Decides how each stage starts, deletes what must not be reused, and carries the previous
/// run's history into `manifest` (whose `stages` hold this run's pending records).
pub fn prepare(
    plan: &Plan,
    manifest: &mut Manifest,
    mode: ResumeMode,
    console: &Console,
) -> Result<Prepared, RunError> {
    let pipeline = &plan.pipeline;
    let out_dir = &pipeline.output_dir;
    let previous = PreviousRun::read(out_dir);
    if !mode.resume {
        if let Ok(Some(prev)) = &previous {
            if !prev.finished() {
                console.warn(&format!(
                    "{} held an unfinished run (started {}, {}); starting over. To continue it instead: loky-run run --resume {}",
                    out_dir.display(),
                    prev.started_at,
                    prev.status,
                    prev.pipeline_file.display()
                ));
            }
        }
        let Some(only) = mode.only else {
            let names = pipeline.stages.iter().map(|s| s.name.as_str());
            discard(out_dir, names)?;
            let _ = std::fs::remove_dir_all(out_dir.join(JOURNAL_DIR));
            return Ok(Prepared::Run(vec![
                StageStart::Fresh;
                pipeline.stages.len()
            ]));
        };
        let mut prev = previous.ok().flatten();
        if let Some(prev) = &mut prev {
            settle_unsynced(out_dir, &mut prev.stages, console);
        }
        let mut starts = vec![StageStart::Fresh; pipeline.stages.len()];
        return only_stage(plan, manifest, prev.as_ref(), only, &mut starts, console)
            .map(|()| Prepared::Run(starts));
    }

    let prev = match previous {
        Ok(Some(prev)) => prev,
        Ok(None) => {
            return Err(RunError::Refused(format!(
                "nothing to resume in {}: no earlier run of a pipeline wrote there (no manifest.json); run without --resume to start one",
                out_dir.display()
            )));
        }
        Err(message) => {
            return Err(RunError::Refused(format!(
                "cannot resume the run in {}: {message}; run without --resume to start over",
                out_dir.display()
            )));
        }
    };

    let mut prev = prev;
    settle_unsynced(out_dir, &mut prev.stages, console);

    // What changed, stage by stage (by position).
    let now = &manifest.stages;
    let mut changes: Vec<(usize, String)> = Vec::new();
    if prev.runner_version != manifest.runner_version {
        changes.push((
            0,
            format!(
                "the run was started by loky-run {}, this is {}",
                prev.runner_version, manifest.runner_version
            ),
        ));
    }
    // Per stage of both runs: the fingerprint parts that changed, and whether its finished
    // output can be kept (its SHA-256 computed once: outputs can be large).
    let mut compared: Vec<Option<(Vec<String>, bool)>> = vec![None; now.len()];
    for i in 0..now.len().max(prev.stages.len()) {
        match (prev.stages.get(i), now.get(i)) {
            (Some(before), Some(after)) if before.name != after.name => changes.push((
                i,
                format!("stage {} is now stage `{}`", before.name, after.name),
            )),
            (Some(before), Some(after)) => {
                let parts = changed_parts(&before.fingerprint, &after.fingerprint);
                // A changed stage reruns anyway, unless --retry-failed tolerates the change.
                let problem = (before.status.is_finished()
                    && (parts.is_empty() || mode.retry_failed))
                    .then(|| finished_output_problem(out_dir, before))
                    .flatten();
                if !parts.is_empty() {
                    changes.push((i, format!("stage `{}`: {}", after.name, parts.join(", "))));
                } else if let Some(problem) = &problem {
                    changes.push((i, format!("stage `{}`: {problem}", before.name)));
                }
                if let Some(slot) = compared.get_mut(i) {
                    *slot = Some((parts, problem.is_none()));
                }
            }
            (None, Some(after)) => changes.push((i, format!("stage `{}` is new", after.name))),
            (Some(before), None) => {
                changes.push((i, format!("stage `{}` was removed", before.name)));
            }
            (None, None) => unreachable!(),
        }
    }
    if mode.retry_failed {
        // Retry settings may change: they do not touch the ok records a retry keeps (nor the
        // inputs of a stage reading from one whose retry settings changed).
        let mut tolerated = vec![false; now.len()];
        for (i, compared) in compared.iter().enumerate() {
            let Some((parts, output_ok)) = compared else {
                continue;
            };
            let source_tolerated = plan.stages[i].from.is_some_and(|j| tolerated[j]);
            tolerated[i] = *output_ok
                && parts.iter().all(|part| {
                    RETRY_SETTINGS.contains(&part.as_str())
                        || (source_tolerated && part == SOURCE_CHANGED)
                });
        }
        changes.retain(|(i, _)| !tolerated.get(*i).copied().unwrap_or(false));
    }
    if let Some(only) = mode.only {
        // Other stages are not run: only the chosen one's changes matter.
        changes.retain(|(i, _)| *i == only);
    }
    let first_changed = changes.iter().map(|(i, _)| *i).min();

    if !changes.is_empty() && !mode.force {
        let list: Vec<String> = changes.iter().map(|(_, c)| format!("  {c}")).collect();
        let rerun = first_changed
            .and_then(|i| now.get(i))
            .map(|s| format!(" (reruns stage `{}` and the stages after it)", s.name))
            .unwrap_or_default();
        return Err(RunError::Refused(format!(
            "cannot resume the run in {}: the pipeline or its inputs changed since it started:\n{}\n  = help: resume anyway with `--resume --force`{rerun}, or run without --resume to start over",
            out_dir.display(),
            list.join("\n")
        )));
    }
    if changes.is_empty() && prev.finished() && !mode.retry_failed && mode.only.is_none() {
        return Ok(Prepared::Finished {
            message: format!(
                "nothing to resume: the run in {} already finished ({}); its outputs are complete",
                out_dir.display(),
                prev.status
            ),
            status: prev.status.clone(),
            exit_code: prev.exit_code.unwrap_or(0),
            stages: prev.stages,
        });
    }

    let mut starts: Vec<StageStart> = Vec::new();
    let mut notes = Vec::new();
    for (i, record) in manifest.stages.iter_mut().enumerate() {
        let before = prev.stages.get(i).filter(|b| b.name == record.name);
        // A stage reading from one that changes in this run runs again from scratch.
        let source_changes = plan.stages[i]
            .from
            .is_some_and(|j| !matches!(starts.get(j), Some(StageStart::Keep(_))));
        let start = match (first_changed, before) {
            (Some(c), _) if i >= c => StageStart::Fresh,
            _ if source_changes && mode.retry_failed => StageStart::Fresh,
            (_, Some(b)) if b.retrying && !b.status.is_finished() => {
                record.wall_time_s = b.wall_time_s;
                StageStart::Retry {
                    previous_sha256: b.previous_sha256.clone(),
                }
            }
            (_, Some(b)) if b.status.is_finished() && mode.retry_failed && b.has_failures() => {
                record.wall_time_s = b.wall_time_s;
                StageStart::Retry {
                    previous_sha256: b.output_sha256.clone(),
                }
            }
            (_, Some(b)) if b.status.is_finished() => {
                let mut kept = b.clone();
                if mode.retry_failed {
                    kept.fingerprint = record.fingerprint.clone();
                }
                StageStart::Keep(Box::new(kept))
            }
            (_, Some(b))
                if matches!(b.status, StageStatus::Running | StageStatus::Interrupted)
                    || (b.status == StageStatus::Pending && output_there(out_dir, &b.name)) =>
            {
                record.wall_time_s = b.wall_time_s; // time spent so far
                StageStart::Resume
            }
            _ => StageStart::Fresh,
        };
        let note = match &start {
            StageStart::Keep(_) => "kept".to_owned(),
            StageStart::Resume => "continues".to_owned(),
            StageStart::Retry { .. } => match before {
                Some(b) if !b.status.is_finished() => "continues its retry".to_owned(),
                Some(b) => format!("retries {} failed", b.failed + b.not_run),
                None => "retries".to_owned(),
            },
            StageStart::Fresh if first_changed.is_some_and(|c| i >= c) => "reruns".to_owned(),
            StageStart::Fresh if source_changes && before.is_some() => {
                "reruns (its source changes)".to_owned()
            }
            StageStart::Fresh | StageStart::Skip(_) => "runs".to_owned(),
        };
        notes.push(format!("{} {note}", record.name));
        starts.push(start);
    }
    if let Some(only) = mode.only {
        only_stage(plan, manifest, Some(&prev), only, &mut starts, console)?;
        notes = vec![format!(
            "--stage {}: only that stage runs",
            manifest.stages[only].name
        )];
    }
    if mode.retry_failed && starts.iter().all(|s| matches!(s, StageStart::Keep(_))) {
        return Ok(Prepared::Finished {
            message: format!(
                "nothing to retry: the run in {} finished ({}) with no failed task",
                out_dir.display(),
                prev.status
            ),
            status: prev.status.clone(),
            exit_code: prev.exit_code.unwrap_or(0),
            stages: prev.stages,
        });
    }
    // Outputs that must not be reused: stages that start afresh, stages that no longer exist.
    let now = &manifest.stages;
    let fresh = now
        .iter()
        .zip(&starts)
        .filter(|(_, s)| matches!(s, StageStart::Fresh))
        .map(|(r, _)| r.name.as_str());
    let removed = prev
        .stages
        .iter()
        .filter(|b| !now.iter().any(|r| r.name == b.name))
        .map(|b| b.name.as_str());
    discard(out_dir, fresh.chain(removed))?;

    if first_changed.is_some() {
        let list: Vec<&str> = changes.iter().map(|(_, c)| c.as_str()).collect();
        console.warn(&format!(
            "--force: rerunning what changed since the run started: {}",
            list.join("; ")
        ));
    }
    console.info(&format!(
        "{} the run in {} (started {}): {}",
        if mode.retry_failed {
            "retrying the failures of"
        } else {
            "resuming"
        },
        out_dir.display(),
        prev.started_at,
        notes.join(", ")
    ));
    manifest.started_at = prev.started_at;
    manifest.resumed_at = prev.resumed_at;
    manifest.resumed_at.push(crate::events::now_rfc3339());
    Ok(Prepared::Run(starts))
}

/// `--stage`: narrows `starts` to the chosen stage. Its `from` source must have a finished,
/// unchanged output; the stages that read from it (directly or not) are reset to pending and
/// their outputs deleted (they would no longer match it); every other stage is left as it is.
fn only_stage(
    plan: &Plan,
    manifest: &mut Manifest,
    prev: Option<&PreviousRun>,
    only: usize,
    starts: &mut [StageStart],
    console: &Console,
) -> Result<(), RunError> {
    let out_dir = &plan.pipeline.output_dir;
    let names: Vec<String> = manifest.stages.iter().map(|r| r.name.clone()).collect();
    let name = |i: usize| names[i].clone();
    let previous = |i: usize| {
        prev.and_then(|p| p.stages.get(i))
            .filter(|b| b.name == names[i])
    };
    if let Some(j) = plan.stages[only].from {
        let problem = match previous(j) {
            Some(b) if b.status.is_finished() => finished_output_problem(out_dir, b),
            _ => Some("it has not finished in this output directory".to_owned()),
        };
        if let Some(problem) = problem {
            return Err(RunError::Refused(format!(
                "--stage {}: it reads from stage `{}`, and {problem}; run that stage first (`--stage {}`, or the whole pipeline)",
                name(only),
                name(j),
                name(j)
            )));
        }
    }
    let mut reset = vec![false; starts.len()];
    for i in only + 1..starts.len() {
        reset[i] = plan.stages[i].from.is_some_and(|j| j == only || reset[j]);
    }
    let mut discarded = Vec::new();
    for i in 0..starts.len() {
        if i == only {
            if matches!(starts[i], StageStart::Keep(_) | StageStart::Skip(_)) {
                starts[i] = StageStart::Fresh;
            }
            continue;
        }
        let kept = previous(i).filter(|_| !reset[i]).cloned().map(Box::new);
        if let Some(record) = &kept {
            manifest.stages[i] = (**record).clone();
        }
        if reset[i] && previous(i).is_some_and(|b| b.status != StageStatus::Pending) {
            discarded.push(name(i));
        }
        starts[i] = StageStart::Skip(kept);
    }
    // Deleted too: the outputs of the stages whose record is now this run's pending one (the
    // stage was not at this position in the earlier run). A pending stage's output is taken
    // for one its run started (see `output_there`).
    let reset_names: Vec<String> = (0..starts.len())
        .filter(|i| {
            reset[*i]
                || *i == only && matches!(starts[*i], StageStart::Fresh)
                || matches!(starts[*i], StageStart::Skip(None))
        })
        .map(name)
        .collect();
    discard(out_dir, reset_names.iter().map(String::as_str))?;
    if !discarded.is_empty() {
        console.warn(&format!(
            "--stage {}: the stages reading from it no longer match its output and are reset to pending (their outputs deleted): {}; `loky-run run --resume` runs them",
            name(only),
            discarded.join(", ")
        ));
    }
    Ok(())
}

/// Finished stages whose output was still being made durable when the manifest was last
/// written (`output_unsynced`). One that is what the manifest recorded is kept (and synced
/// now). One with fewer lines than the stage recorded was cut short by a power cut: it
/// continues like a stage that was running. Any other difference is a change, refused as for
/// any finished stage.
fn settle_unsynced(out_dir: &Path, stages: &mut [StageRecord], console: &Console) {
    for stage in stages.iter_mut().filter(|s| s.output_unsynced) {
        stage.output_unsynced = false;
        if !stage.status.is_finished() {
            continue;
        }
        let path = output_file(out_dir, &stage.name);
        if finished_output_problem(out_dir, stage).is_none() {
            // Durable before this run builds on it; if it cannot be made so, it stays marked.
            let synced = std::fs::File::open(&path).and_then(|f| f.sync_data());
            stage.output_unsynced = synced.is_err();
            continue;
        }
        // A power cut can take a new file's directory entry too.
        let lines = count_lines(&path).unwrap_or(0);
        if !path.exists() || lines < stage.ok + stage.failed {
            console.warn(&format!(
                "stage {}: its output {} lost its last records (it was not on disk yet when the run stopped: a power cut?): the stage continues from what it holds",
                stage.name,
                path.display()
            ));
            stage.status = StageStatus::Running;
            stage.output_sha256 = None;
        }
    }
}

/// Whether a stage has an output (or a journal) in `out_dir`. A stage the manifest says is
/// pending has one only if the run that wrote the manifest started it (the outputs of stages
/// to run afresh are deleted before a run's first manifest write), without recording that yet:
/// see `Unwritten::Marks`.
fn output_there(out_dir: &Path, stage: &str) -> bool {
    let path = output_file(out_dir, stage);
    path.exists() || output::journal_path(&path).exists()
}

/// Newlines in a file (a missing file has none).
fn count_lines(path: &Path) -> std::io::Result<u64> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        other => other?,
    };
    let mut buf = vec![0; 1 << 16];
    let mut lines = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// Why the output of a finished stage cannot be kept, if it cannot: it is gone, or it is not
/// the file the stage wrote (its SHA-256 differs from the manifest's).
fn finished_output_problem(out_dir: &Path, stage: &StageRecord) -> Option<String> {
    let path = output_file(out_dir, &stage.name);
    if !path.is_file() {
        return Some(format!("its output {} is missing", stage.output));
    }
    let expected = stage.output_sha256.as_deref()?;
    match sha256_file(&path) {
        Ok(actual) if actual == expected => None,
        Ok(_) => Some(format!(
            "its output {} changed after the stage finished (its SHA-256 is not the one the manifest recorded)",
            path.display()
        )),
        Err(e) => Some(format!("its output {} cannot be read: {e}", path.display())),
    }
}

/// Takes the output directory for this run: two runners writing the same outputs (a `--resume`
/// while the interrupted run is still finishing, say) would corrupt them. The lock is an
/// `flock` on `<output_dir>/.lock`, released by the kernel however the runner ends (even
/// `kill -9`); hold the returned file for the whole run.
pub fn lock_output_dir(dir: &Path) -> Result<std::fs::File, RunError> {
    use std::io::{Read, Seek, Write};

    let path = dir.join(".lock");
    let io_err = |source| RunError::Io {
        context: format!("cannot lock {}", path.display()),
        source,
        resumable: false,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err)?;
    if let Err(errno) =
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
    {
        if errno != rustix::io::Errno::WOULDBLOCK {
            return Err(io_err(errno.into()));
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        let who = if pid.is_empty() {
            String::new()
        } else {
            format!(" (pid {pid})")
        };
        return Err(RunError::Refused(format!(
            "another loky-run{who} is running with its outputs in {}; wait for it to end (or stop it) first",
            dir.display()
        )));
    }
    file.set_len(0).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(io_err)?;
    Ok(file)
}

/// Deletes the outputs and journals of the named stages.
fn discard<'a>(out_dir: &Path, stages: impl Iterator<Item = &'a str>) -> Result<(), RunError> {
    for name in stages {
        let path = output_file(out_dir, name);
        let previous = output::carried::previous_path(&path);
        let seals = output::seals::seals_path(&path);
        for file in [output::journal_path(&path), previous, seals, path] {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(RunError::Io {
                        context: format!("cannot delete {}", file.display()),
                        source,
                        resumable: false,
                    });
                }
            }
        }
    }
    let _ = std::fs::remove_dir(out_dir.join(JOURNAL_DIR)); // only when empty
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn changed_parts_are_named() {
        let a = fp(&[
            ("task", "demo::square"),
            ("input", "file sha256:1"),
            ("retries", "0"),
        ]);
        let b = fp(&[
            ("task", "demo::square"),
            ("input", "file sha256:2"),
            ("retries", "1"),
        ]);
        assert_eq!(changed_parts(&a, &b), ["input file content", "retries"]);
        assert!(changed_parts(&a, &a).is_empty());
        let c = fp(&[("task", "demo::square")]);
        assert_eq!(changed_parts(&a, &c), ["input", "retries"]);
        assert_ne!(digest(&a), digest(&b));
    }
}

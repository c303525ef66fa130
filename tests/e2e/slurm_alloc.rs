//! Allocations on demand: `launcher = "slurm"` outside an allocation, with a `[slurm]` table.
//! The runner runs here, outside Slurm; it submits its own allocations with `sbatch`, starts
//! its worker steps in them, and cancels every one of them when it stops or dies.
//!
//! These tests run when the Slurm tests do (see `slurm.rs`). The one that spreads over three
//! nodes needs the 3-node cluster (as `slurm_nodes.rs`); the others fit on one node.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::slurm::{KillOnDrop, cluster_lock, cluster_up, events_of, pids, read_events};
use crate::support::{Fixture, RunResult, header, wait_for};

/// The runner, outside any allocation (whatever the test process inherited).
fn runner(fx: &Fixture, args: &[&str]) -> Command {
    let mut cmd = fx.command();
    for (k, _) in std::env::vars() {
        if k.starts_with("SLURM_") || k.starts_with("SBATCH_") || k.starts_with("SALLOC_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args);
    cmd
}

/// Runs the runner outside any allocation, to its end.
fn run_outside(fx: &Fixture, args: &[&str]) -> RunResult {
    RunResult::from(runner(fx, args).output().unwrap())
}

/// Arguments for a run of `pipeline.toml` with its events in `events.jsonl`.
const WITH_EVENTS: &[&str] = &[
    "pipeline.toml",
    "--progress",
    "never",
    "--events",
    "events.jsonl",
];

/// The jobs squeue lists (any state it still shows) named `loky-run:PIPELINE`: the test
/// pipelines have names of their own.
fn jobs_named(pipeline: &str) -> Vec<(String, String)> {
    let out = Command::new("timeout")
        .args([
            "20",
            "squeue",
            "-h",
            "--name",
            &format!("loky-run:{pipeline}"),
            "-o",
            "%i %T",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("squeue runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (job, state) = l.trim().split_once(' ')?;
            Some((job.to_owned(), state.to_owned()))
        })
        .collect()
}

/// Waits until squeue lists no job of the pipeline as queued or running.
#[track_caller]
fn wait_until_none_left(pipeline: &str) {
    wait_for(|| {
        let left: Vec<_> = jobs_named(pipeline)
            .into_iter()
            .filter(|(_, state)| {
                ["PENDING", "RUNNING", "CONFIGURING", "COMPLETING"].contains(&state.as_str())
            })
            .collect();
        left.is_empty().then_some(())
    });
}

/// Cancels whatever the pipeline's jobs are when dropped, so that a failing test does not
/// leave allocations holding the cluster.
struct CancelOnDrop(&'static str);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args(["20", "scancel", "--name", &format!("loky-run:{}", self.0)])
            .stdin(Stdio::null())
            .status();
    }
}

fn pid_stage(name: &str, items: usize, ms: u32, extra: &str) -> String {
    format!(
        "\n[[stage]]\nname = \"{name}\"\ntask = \"demo::pid\"\ninput = {{ items = [{}] }}\nchunksize = 1\n{extra}\n",
        vec![ms.to_string(); items].join(", ")
    )
}

const SQUARES: &str =
    "\n[[stage]]\nname = \"squares\"\ntask = \"demo::square\"\ninput = { range = [0, 300] }\n";

#[test]
fn allocations_on_demand_run_the_pipeline_and_none_is_left() {
    if !cluster_up() {
        return;
    }
    let _one = cluster_lock();
    const NAME: &str = "alloc-basic";
    let _cancel = CancelOnDrop(NAME);
    let fx = Fixture::new();
    // Two allocations of one task each: two workers, every one a step of its own allocation.
    let text = header(NAME, "launcher = \"slurm\"")
        + "\n[slurm]\nnodes = 1\ntasks = 1\nmax_allocations = 2\ntime_limit = \"10m\"\n"
        + SQUARES
        + &pid_stage("a", 6, 100, "")
        + &pid_stage("b", 6, 100, "kill_workers = true")
        + &pid_stage("c", 10, 300, "max_workers = 1")
        + &pid_stage("d", 10, 300, "max_workers = 2");
    fx.write("pipeline.toml", &text);
    let reference = Fixture::new();
    let local = reference.write("pipeline.toml", &(header(NAME, "") + SQUARES));
    reference.run(&[local.to_str().unwrap()]).assert_code(0);

    let r = run_outside(&fx, WITH_EVENTS);
    r.assert_code(0);
    assert_eq!(
        std::fs::read(fx.path().join("out/squares.jsonl")).unwrap(),
        std::fs::read(reference.path().join("out/squares.jsonl")).unwrap(),
        "the outputs are those of a local run"
    );
    let events = fx.events();
    let submitted: BTreeSet<String> = events_of(&events, "allocation_submitted")
        .iter()
        .map(|e| e["job"].as_str().unwrap().to_owned())
        .collect();
    // Two for the first stages; the shrink to one cancelled one, the growth back to two
    // asked for a third.
    assert_eq!(submitted.len(), 3, "{submitted:?}");
    let started: BTreeSet<String> = events_of(&events, "allocation_started")
        .iter()
        .map(|e| e["job"].as_str().unwrap().to_owned())
        .collect();
    // (The third may end before it is granted, with the run.)
    assert!(started.is_subset(&submitted), "{started:?}");
    assert!(started.len() >= 2, "{started:?}");
    // Every worker is a step of one of them.
    let ready = events_of(&events, "worker_ready");
    assert!(!ready.is_empty());
    for e in &ready {
        assert!(
            submitted.contains(e["slurm_job"].as_str().expect("a job")),
            "{e}"
        );
    }
    // kill_workers: fresh steps, in the allocations the pool already has.
    let (a, b) = (pids(&fx.outputs("a")), pids(&fx.outputs("b")));
    assert!(a.is_disjoint(&b), "{a:?} {b:?}");
    let stage_at = |name: &str| {
        events
            .iter()
            .position(|e| e["event"] == "stage_started" && e["stage"] == name)
            .unwrap()
    };
    let submitted_before = |at: usize| {
        events[..at]
            .iter()
            .filter(|e| e["event"] == "allocation_submitted")
            .count()
    };
    assert_eq!(
        submitted_before(stage_at("c")),
        2,
        "a restart keeps the allocations"
    );
    assert_eq!(submitted_before(stage_at("d")), 2);
    // The shrink to one worker cancelled the allocation left without one, at once.
    let ended = events_of(&events, "allocation_ended");
    let stage_c = stage_at("c");
    let first_end = events
        .iter()
        .position(|e| e["event"] == "allocation_ended")
        .unwrap();
    assert!(first_end > stage_c, "{ended:?}");
    // And at the end, the rest: every allocation ended, none left in the queue.
    let ended: BTreeSet<String> = ended
        .iter()
        .map(|e| e["job"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ended, submitted);
    wait_until_none_left(NAME);
}

#[test]
fn allocations_spread_over_three_nodes() {
    if !crate::slurm_nodes::three_nodes_up() {
        return;
    }
    let _one = cluster_lock();
    const NAME: &str = "alloc-nodes";
    let _cancel = CancelOnDrop(NAME);
    let fx = Fixture::new();
    // Three allocations of one node and two tasks (a node's two CPUs): six workers.
    let text = header(NAME, "launcher = \"slurm\"")
        + "\n[slurm]\nnodes = 1\ntasks = 2\nmax_allocations = 3\n"
        + &pid_stage("a", 24, 200, "")
        + SQUARES;
    fx.write("pipeline.toml", &text);
    let r = run_outside(&fx, WITH_EVENTS);
    r.assert_code(0);
    let events = fx.events();
    let ready = events_of(&events, "worker_ready");
    assert_eq!(ready.len(), 6, "{ready:?}");
    let hosts: BTreeSet<&str> = ready.iter().map(|e| e["host"].as_str().unwrap()).collect();
    assert_eq!(hosts.len(), 3, "{hosts:?}");
    assert_eq!(events_of(&events, "allocation_submitted").len(), 3);
    assert_eq!(fx.records("squares").len(), 300);
    wait_until_none_left(NAME);
}

/// Polls the events until one of `kind` is there.
fn wait_event(path: &std::path::Path, kind: &str) -> Value {
    wait_for(|| read_events(path).into_iter().find(|e| e["event"] == kind))
}

#[test]
fn a_queued_allocation_is_shown_and_kill_9_of_the_runner_cancels_it() {
    if !cluster_up() {
        return;
    }
    let _one = cluster_lock();
    const NAME: &str = "alloc-queued";
    let _cancel = CancelOnDrop(NAME);
    let fx = Fixture::new();
    // `--begin` keeps the allocation queued (reason BeginTime) for an hour; stderr is not a
    // terminal, so a progress line comes every second.
    let text = header(NAME, "launcher = \"slurm\"\nmax_workers = 1").replacen(
        "output_dir = \"out\"\n",
        "output_dir = \"out\"\nprogress_interval = \"1s\"\n",
        1,
    ) + "\n[slurm]\nsbatch_args = [\"--begin=now+3600\"]\n"
        + &pid_stage("a", 2, 10, "");
    fx.write("pipeline.toml", &text);
    // stderr goes to a file, read while the runner runs.
    let stderr_path = fx.path().join("stderr.txt");
    let child = runner(&fx, &["pipeline.toml", "--events", "events.jsonl"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(Some(child));
    let events_path = fx.path().join("events.jsonl");
    let job = wait_event(&events_path, "allocation_submitted")["job"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        jobs_named(NAME)
            .iter()
            .any(|(j, state)| *j == job && state == "PENDING"),
        "{:?}",
        jobs_named(NAME)
    );
    // `status` tells why the stage waits.
    let status = wait_for(|| {
        let r = fx.run(&["status", "out"]);
        (r.stdout.contains("queued") && r.stdout.contains("BeginTime")).then_some(r)
    });
    assert!(status.stdout.contains(&job), "{}", status.stdout);
    let json = wait_for(|| {
        let r = fx.run(&["status", "out", "--json"]);
        let v: Value = serde_json::from_str(&r.stdout).ok()?;
        let stage = v["stages"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "a")?
            .clone();
        let allocations = stage["progress"]["allocations"].as_array()?.clone();
        (!allocations.is_empty()).then_some(allocations)
    });
    assert_eq!(json[0]["job"], job.as_str());
    assert_eq!(json[0]["state"], "queued");
    assert_eq!(json[0]["reason"], "BeginTime");

    // The progress line (stderr is not a terminal) says so too, within a progress interval.
    wait_for(|| {
        let stderr = std::fs::read_to_string(&stderr_path).ok()?;
        stderr
            .contains("Slurm allocations: 1 queued (BeginTime)")
            .then_some(())
    });

    // kill -9: the guardian cancels what the runner had asked for.
    let pid = child.0.as_ref().unwrap().id();
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !child.exited() {
        assert!(Instant::now() < deadline, "the runner did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output();
    wait_until_none_left(NAME);
}

#[test]
fn kill_9_of_the_runner_while_steps_run_leaves_nothing_and_resume_finishes() {
    if !cluster_up() {
        return;
    }
    let _one = cluster_lock();
    const NAME: &str = "alloc-kill";
    let _cancel = CancelOnDrop(NAME);
    let fx = Fixture::new();
    let text = header(NAME, "launcher = \"slurm\"")
        + "\n[slurm]\ntasks = 2\n"
        + &pid_stage("a", 40, 250, "")
        + SQUARES;
    fx.write("pipeline.toml", &text);
    let child = runner(&fx, WITH_EVENTS)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(Some(child));
    let events_path = fx.path().join("events.jsonl");
    wait_for(|| (events_of(&read_events(&events_path), "worker_ready").len() >= 2).then_some(()));
    wait_for(|| {
        (std::fs::read_to_string(fx.path().join("out/a.jsonl"))
            .unwrap_or_default()
            .lines()
            .count()
            >= 2)
            .then_some(())
    });
    let pid = child.0.as_ref().unwrap().id();
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_for(|| child.exited().then_some(()));
    // No allocation, so no step, is left.
    wait_until_none_left(NAME);

    let r = run_outside(&fx, &["pipeline.toml", "--progress", "never", "--resume"]);
    r.assert_code(0);
    let records = fx.records("a");
    assert_eq!(records.len(), 40);
    let indices: BTreeSet<u64> = records
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices.len(), 40, "each item once");
    assert_eq!(fx.records("squares").len(), 300);
    wait_until_none_left(NAME);
}

#[test]
fn an_allocation_near_its_time_limit_is_drained_and_replaced() {
    if !cluster_up() {
        return;
    }
    let _one = cluster_lock();
    const NAME: &str = "alloc-renew";
    let _cancel = CancelOnDrop(NAME);
    let fx = Fixture::new();
    // A 1-minute allocation drains 45 s before its end: after ~15 s of work its worker
    // finishes its task and a new allocation takes over; the stage runs ~30 s in all.
    let text = header(NAME, "launcher = \"slurm\"\nmax_workers = 1")
        + "\n[slurm]\ntime_limit = \"1m\"\nrenew_before = \"45s\"\n"
        + &pid_stage("a", 60, 500, "");
    fx.write("pipeline.toml", &text);
    let r = run_outside(&fx, WITH_EVENTS);
    r.assert_code(0);
    let events = fx.events();
    let draining = events_of(&events, "allocation_draining");
    assert!(!draining.is_empty(), "{}", r.stderr);
    let submitted = events_of(&events, "allocation_submitted");
    assert!(submitted.len() >= 2, "{submitted:?}");
    // The successor is asked for ahead of the drain (7.5 s here: half the 15 s before it),
    // not when it happens. (Event times are ISO 8601 in UTC, in one format: they sort.)
    let first_drain = draining[0]["time"].as_str().unwrap();
    assert!(
        submitted[1]["time"].as_str().unwrap() < first_drain,
        "{submitted:?} {draining:?}"
    );
    let time_limited: Vec<Value> = events_of(&events, "worker_exited")
        .into_iter()
        .filter(|e| e["reason"] == "time_limit")
        .collect();
    assert!(
        !time_limited.is_empty(),
        "{:?}",
        events_of(&events, "worker_exited")
    );
    // Nothing crashed, every item ran once, on workers of two allocations at least.
    assert!(events_of(&events, "task_retried").is_empty());
    let records = fx.records("a");
    assert_eq!(records.len(), 60);
    assert!(
        records.iter().all(|r| r.get("error").is_none()),
        "{records:?}"
    );
    let jobs: BTreeSet<String> = events_of(&events, "worker_ready")
        .iter()
        .map(|e| e["slurm_job"].as_str().unwrap().to_owned())
        .collect();
    assert!(jobs.len() >= 2, "{jobs:?}");
    wait_until_none_left(NAME);
}

#[test]
fn without_a_slurm_table_outside_an_allocation_the_run_says_what_to_do() {
    let fx = Fixture::new();
    let text = header("alloc-none", "launcher = \"slurm\"") + &pid_stage("a", 1, 1, "");
    fx.write("pipeline.toml", &text);
    let r = run_outside(&fx, &["pipeline.toml", "--progress", "never"]);
    r.assert_code(2);
    assert!(r.stderr.contains("[slurm]"), "{}", r.stderr);
}

#[test]
fn more_workers_than_the_allocations_hold_is_refused_before_anything_is_submitted() {
    if !cluster_up() {
        return;
    }
    let fx = Fixture::new();
    let text = header("alloc-toomany", "launcher = \"slurm\"\nmax_workers = 5")
        + "\n[slurm]\ntasks = 2\nmax_allocations = 2\n"
        + &pid_stage("a", 1, 1, "");
    fx.write("pipeline.toml", &text);
    let r = run_outside(&fx, &["pipeline.toml", "--progress", "never"]);
    r.assert_code(2);
    assert!(r.stderr.contains("max_allocations"), "{}", r.stderr);
    assert!(jobs_named("alloc-toomany").is_empty());
}

#[test]
fn an_allocation_sbatch_refuses_fails_the_run_with_what_sbatch_said() {
    if !cluster_up() {
        return;
    }
    let _one = cluster_lock();
    let fx = Fixture::new();
    let text = header("alloc-refused", "launcher = \"slurm\"")
        + "\n[slurm]\npartition = \"no-such-partition\"\n"
        + &pid_stage("a", 1, 1, "");
    fx.write("pipeline.toml", &text);
    let r = run_outside(&fx, &["pipeline.toml", "--progress", "never"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("sbatch") && r.stderr.contains("no-such-partition"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_node_lost_under_allocations_on_demand_costs_only_the_tasks_it_held() {
    use crate::slurm_nodes::{Restore, local_output, node_cmd, node3_busy, sleeps, workers_of};
    if !crate::slurm_nodes::three_nodes_up() {
        return;
    }
    let _one = cluster_lock();
    const NAME: &str = "alloc-nodefail";
    let _cancel = CancelOnDrop(NAME);
    let fx = Fixture::new();
    // Three one-node allocations of two tasks: six workers, two per node. Slurm declares
    // node3 DOWN mid-stage, which ends its allocation and its steps; retries heal the tasks
    // its workers held.
    let text = header(
        NAME,
        "launcher = \"slurm\"\nchunksize = 1\nretries = 2\nidle_timeout = \"10m\"\n",
    ) + "\n[slurm]\nnodes = 1\ntasks = 2\nmax_allocations = 3\n"
        + &sleeps("s", "faults::sleep_ms", &[300; 60], "");
    fx.write("pipeline.toml", &text);
    let clean = local_output(
        &text.replace("\n[slurm]\nnodes = 1\ntasks = 2\nmax_allocations = 3\n", ""),
        "s",
    );
    let child = runner(
        &fx,
        &[
            "pipeline.toml",
            "--progress",
            "never",
            "--events",
            "events.jsonl",
            "--joblog",
            "joblog.jsonl",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut child = KillOnDrop(Some(child));
    let victims = node3_busy(&fx, &mut child);
    let _restore = Restore("node3");
    node_cmd(&["down", "node3"]).assert_code(0);
    let r = RunResult::from(child.wait_with_output());
    r.assert_code(0);
    assert_eq!(
        std::fs::read(fx.path().join("out/s.jsonl")).unwrap(),
        clean,
        "s.jsonl differs from a clean run"
    );
    let events = fx.events();
    let crashed: Vec<Value> = events_of(&events, "worker_exited")
        .into_iter()
        .filter(|e| e["reason"] == "crashed")
        .collect();
    assert_eq!(workers_of(&crashed), victims, "{crashed:?}");
    let retried = events_of(&events, "task_retried");
    assert!((1..=2).contains(&retried.len()), "{retried:?}");
    wait_until_none_left(NAME);
}

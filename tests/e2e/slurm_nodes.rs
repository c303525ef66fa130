//! `launcher = "slurm"` over several nodes: the 3-node test cluster of
//! `scripts/slurm-up.sh --nodes 3` (each node a slurmd in its own network and UTS namespace).
//!
//! These tests run when the Slurm tests do (see `slurm.rs`: `LOKY_RUN_SLURM_TESTS`) and the
//! cluster has at least 3 nodes; with fewer they say on stderr that they were skipped, unless
//! `LOKY_RUN_SLURM_NODES=3` (what `.ci/run` sets) makes them required. They break nodes on
//! purpose (`scripts/slurm-node.sh kill|cut|down`, as root: not root, they are skipped too),
//! and bring them back before they let go of the cluster, panicking or not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::slurm::{
    KillOnDrop, LIST_WORKER_STEPS, cluster_lock, cluster_up, events_of, pids, read_events,
    runner_code_and_steps, salloc_command_with,
};
use crate::support::{Fixture, RunResult, header, read_jsonl, wait_for};

const NODES: usize = 3;

/// An allocation of 6 tasks over the 3 nodes (2 CPUs each: every CPU of the cluster) that
/// outlives the loss of a node (`--no-kill`).
const SPREAD: &[&str] = &["--nodes=3", "--ntasks=6", "--no-kill"];

fn script(name: &str) -> PathBuf {
    crate::support::workspace_root().join("scripts").join(name)
}

/// Slurm's view of each node: `(name, state)`, bounded.
fn node_states() -> Vec<(String, String)> {
    let out = Command::new("timeout")
        .args(["20", "sinfo", "-h", "-N", "-o", "%N %T"])
        .stdin(Stdio::null())
        .output();
    let Ok(out) = out else { return Vec::new() };
    let mut nodes: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (n, s) = l.split_once(' ')?;
            Some((n.to_owned(), s.trim().to_owned()))
        })
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

fn healthy(state: &str) -> bool {
    ["idle", "mixed", "allocated"].contains(&state)
}

/// Whether the multi-node tests run here (see the module docs). Waits (bounded) for every node
/// to be usable, since a test before may have just brought one back.
pub(crate) fn three_nodes_up() -> bool {
    if !cluster_up() {
        return false;
    }
    let required = std::env::var("LOKY_RUN_SLURM_NODES")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| n >= NODES);
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            !required,
            "LOKY_RUN_SLURM_NODES asks for the multi-node tests, which break and mend nodes with scripts/slurm-node.sh: run them as root"
        );
        eprintln!(
            "multi-node Slurm tests skipped: they break and mend nodes with scripts/slurm-node.sh, which needs root"
        );
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = node_states();
        if nodes.len() < NODES {
            assert!(
                !required,
                "LOKY_RUN_SLURM_NODES asks for {NODES} nodes but the cluster has {nodes:?}; \
                 start it with `sudo scripts/slurm-up.sh --nodes {NODES}`"
            );
            eprintln!(
                "multi-node Slurm tests skipped: the cluster has {} node(s) ({nodes:?}); run \
                 `sudo scripts/slurm-up.sh --nodes {NODES}`",
                nodes.len()
            );
            return false;
        }
        if nodes.iter().all(|(_, s)| healthy(s)) {
            return true;
        }
        if Instant::now() >= deadline {
            let nodes = format!("{nodes:?}");
            assert!(
                !required && std::env::var("LOKY_RUN_SLURM_TESTS").as_deref() != Ok("1"),
                "the nodes did not become usable within 60 s: {nodes}; try \
                 `sudo scripts/slurm-up.sh --nodes {NODES}`"
            );
            eprintln!("multi-node Slurm tests skipped: nodes not usable ({nodes})");
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Brings a node back (`slurm-node.sh restore`) when dropped, the test failing or not, so that
/// the next test finds the whole cluster.
pub(crate) struct Restore(pub(crate) &'static str);

impl Drop for Restore {
    fn drop(&mut self) {
        let status = Command::new(script("slurm-node.sh"))
            .args(["restore", self.0])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "could not restore {} ({status:?}): run `sudo scripts/slurm-up.sh --nodes {NODES}`",
                self.0
            );
        }
    }
}

pub(crate) fn node_cmd(args: &[&str]) -> RunResult {
    RunResult::from(
        Command::new(script("slurm-node.sh"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    )
}

/// Processes of this runner's binary (worker steps) still running on any node.
fn workers_on_nodes() -> Vec<(String, u64)> {
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_loky-run")).unwrap();
    let mut found = Vec::new();
    for (node, _) in node_states() {
        let r = node_cmd(&["pids", &node]);
        for pid in r
            .stdout
            .lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
        {
            if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe) {
                found.push((node.clone(), pid));
            }
        }
    }
    found
}

/// The job's entries in `squeue` (job and steps), empty once Slurm is done with it.
fn squeue_job(job: &str) -> String {
    let out = Command::new("timeout")
        .args(["20", "squeue", "-h", "-s", "-j", job, "-o", "%i %j %T %N"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let steps = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = Command::new("timeout")
        .args(["20", "squeue", "-h", "-j", job, "-o", "%i %T"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    format!("{steps}{}", String::from_utf8_lossy(&out.stdout).trim())
}

/// Waits (bounded) until Slurm has nothing left of `job` and no worker runs on any node.
#[track_caller]
fn assert_nothing_left(job: &str) {
    let left = wait_for_or(Duration::from_secs(60), || {
        let (queue, procs) = (squeue_job(job), workers_on_nodes());
        (queue.is_empty() && procs.is_empty()).then_some(())
    });
    assert!(
        left.is_some(),
        "left behind: squeue {:?}, worker processes on the nodes {:?}",
        squeue_job(job),
        workers_on_nodes()
    );
}

/// Polls `check` until it returns `Some` or `limit` passes.
fn wait_for_or<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `worker_ready` events, with the stage that was running when each came.
fn ready_per_stage(events: &[Value]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut stage = String::new();
    for e in events {
        match e["event"].as_str().unwrap_or("") {
            "stage_started" => stage = e["stage"].as_str().unwrap().to_owned(),
            "worker_ready" => out.push((stage.clone(), e.clone())),
            _ => {}
        }
    }
    out
}

fn hosts<'a>(ready: impl IntoIterator<Item = &'a Value>) -> BTreeSet<String> {
    ready
        .into_iter()
        .map(|e| e["host"].as_str().unwrap().to_owned())
        .collect()
}

fn event_time(e: &Value) -> SystemTime {
    humantime::parse_rfc3339_weak(e["time"].as_str().unwrap()).unwrap()
}

/// A stage running `task` (one that sleeps so many ms) on each of `ms`, one per chunk.
pub(crate) fn sleeps(name: &str, task: &str, ms: &[u64], extra: &str) -> String {
    let items: Vec<String> = ms.iter().map(u64::to_string).collect();
    format!(
        "\n[[stage]]\nname = \"{name}\"\ntask = \"{task}\"\ninput = {{ items = [{}] }}\nchunksize = 1\n{extra}\n",
        items.join(", ")
    )
}

/// Runs `pipeline` (the same text, with `launcher = "slurm"` taken out) locally and returns
/// `stage`'s output file: what any run of it must write.
pub(crate) fn local_output(pipeline: &str, stage: &str) -> Vec<u8> {
    let fx = Fixture::new();
    let text = pipeline.replace("launcher = \"slurm\"\n", "");
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap()]).assert_code(0);
    std::fs::read(fx.path().join(format!("out/{stage}.jsonl"))).unwrap()
}

fn job_of(events: &[Value]) -> String {
    events_of(events, "worker_ready")[0]["slurm_job"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn six_workers_over_three_nodes_reuse_kill_workers_resize_and_leave_nothing() {
    if !three_nodes_up() {
        return;
    }
    let _one = cluster_lock();
    let fx = Fixture::new();
    let squares = "\n[[stage]]\nname = \"squares\"\ntask = \"demo::square\"\ninput = { range = [0, 300] }\n\n[[stage]]\nname = \"copied\"\ntask = \"demo::echo\"\ninput = { from = \"squares\" }\n";
    let pid_ms = [100; 12];
    // Each worker of a rendezvous stage takes one of its 6 tasks, which end only once all 6
    // run at once: every step of the pool has connected, whatever the machine's load.
    let meet = |name: &str, extra: &str| {
        let item = format!(
            "{{ path = \"{}\", count = 6, timeout_ms = 60000 }}",
            fx.path().join(name).display()
        );
        format!(
            "\n[[stage]]\nname = \"{name}\"\ntask = \"faults::rendezvous\"\ninput = {{ items = [{}] }}\nchunksize = 1\n{extra}\n",
            vec![item; 6].join(", ")
        )
    };
    // a: 6 steps start; b: reuse; c: kill_workers, 6 new steps; d: shrink to 3 (steps kept);
    // e: grow to 6 again (3 new steps in the CPUs d gave back).
    let text = header(
        "spread",
        "launcher = \"slurm\"\nmax_workers = 6\nchunksize = 1\n",
    ) + squares
        + &meet("a", "")
        + &sleeps("b", "demo::pid", &pid_ms, "")
        + &meet("c", "kill_workers = true")
        + &sleeps("d", "demo::pid", &pid_ms[..6], "max_workers = 3")
        + &meet("e", "max_workers = 6");
    fx.write("pipeline.toml", &text);
    let r = RunResult::from(
        salloc_command_with(
            &fx,
            SPREAD,
            &format!(
                "$LOKY pipeline.toml --progress never --events events.jsonl; echo \"runner=$?\"; {LIST_WORKER_STEPS}"
            ),
        )
        .output()
        .unwrap(),
    );
    assert_eq!(runner_code_and_steps(&r), (0, 0), "{}", r.stderr);

    let local = local_output(
        &(header("spread", "max_workers = 2\nchunksize = 1\n") + squares),
        "copied",
    );
    assert_eq!(
        std::fs::read(fx.path().join("out/copied.jsonl")).unwrap(),
        local,
        "copied.jsonl differs from the local run"
    );

    let events = fx.events();
    let decisions: Vec<String> = events_of(&events, "pool_decision")
        .iter()
        .map(|e| e["decision"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        decisions,
        [
            "start", "reuse", "reuse", "reuse", "restart", "resize", "resize"
        ]
    );
    let ready = ready_per_stage(&events);
    let of = |s: &str| -> Vec<&Value> {
        ready
            .iter()
            .filter(|(st, _)| st == s)
            .map(|(_, e)| e)
            .collect()
    };
    // Steps join as they connect (some may come while `copied` runs); `a` needed all six.
    let first: Vec<&Value> = ["squares", "copied", "a"]
        .iter()
        .flat_map(|s| of(s))
        .collect();
    let counts = [first.len(), of("b").len(), of("c").len(), of("d").len()];
    assert_eq!(counts, [6, 0, 6, 0], "worker steps ready per stage");
    assert_eq!(of("e").len(), 3, "growing started 3 steps: {:?}", of("e"));
    assert_eq!(hosts(first.iter().copied()).len(), NODES, "{first:?}");
    assert_eq!(hosts(of("c")).len(), NODES, "{:?}", of("c"));
    let steps: BTreeSet<&str> = ready
        .iter()
        .map(|(_, e)| e["slurm_step"].as_str().unwrap())
        .collect();
    assert_eq!(steps.len(), 15, "every worker is its own step");

    let ready_pids = |ready: &[&Value]| -> BTreeSet<u64> {
        ready.iter().map(|e| e["pid"].as_u64().unwrap()).collect()
    };
    let first = ready_pids(&first);
    let (a, b, c, d, e) = (
        pids(&fx.outputs("a")),
        pids(&fx.outputs("b")),
        pids(&fx.outputs("c")),
        pids(&fx.outputs("d")),
        pids(&fx.outputs("e")),
    );
    assert_eq!(a, first, "a ran on all six");
    assert!(b.is_subset(&first), "reuse: the same steps");
    assert_eq!(c, ready_pids(&of("c")), "kill_workers: six new steps");
    assert!(c.is_disjoint(&first));
    assert!(d.is_subset(&c) && d.len() <= 3, "shrinking kept c's steps");
    assert_eq!(e.len(), 6);
    assert!(e.is_subset(&c.union(&ready_pids(&of("e"))).copied().collect()));
    // 6 workers on the 6 CPUs: after growing again the pool spans every node.
    let host_of: BTreeMap<u64, &str> = ready
        .iter()
        .map(|(_, r)| (r["pid"].as_u64().unwrap(), r["host"].as_str().unwrap()))
        .collect();
    let e_hosts: BTreeSet<&str> = e.iter().map(|p| host_of[p]).collect();
    assert_eq!(e_hosts.len(), NODES, "{e:?} {host_of:?}");
    let exits = events_of(&events, "worker_exited");
    assert!(
        exits
            .iter()
            .all(|x| ["restart", "resize", "shutdown"].contains(&x["reason"].as_str().unwrap())),
        "{exits:?}"
    );
    assert_eq!(
        exits.iter().filter(|x| x["reason"] == "resize").count(),
        3,
        "{exits:?}"
    );
    assert_nothing_left(&job_of(&events));
}

/// The joblog's lines, per input index.
fn attempts(fx: &Fixture) -> BTreeMap<u64, Vec<Value>> {
    let mut by_index: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for line in read_jsonl(&fx.path().join("joblog.jsonl")) {
        by_index
            .entry(line["index"].as_u64().unwrap())
            .or_default()
            .push(line);
    }
    by_index
}

#[test]
fn a_node_killed_mid_stage_costs_only_the_tasks_it_held_and_retries_heal_them() {
    node_lost_mid_stage("kill");
}

#[test]
fn a_node_slurm_declares_down_mid_stage_costs_only_the_tasks_it_held() {
    // Slurm says it first (its workers' sruns end with "Node failure", exit status 0).
    node_lost_mid_stage("down");
}

/// A run on 6 workers over 3 nodes loses node3 mid-stage by `slurm-node.sh ACTION node3`.
fn node_lost_mid_stage(action: &str) {
    if !three_nodes_up() {
        return;
    }
    let _one = cluster_lock();
    let fx = Fixture::new();
    // 60 tasks of 300 ms on 6 workers: about 3 s, and node3's two workers are busy when it
    // goes. Retries heal what it held. The replacement steps wait for CPUs the allocation no
    // longer has (node3's are held by its dead steps); with a long idle timeout no old worker
    // gives one back, and the retries must not wait for them (nor for their connect deadline).
    let text = header(
        "nodefail",
        "launcher = \"slurm\"\nmax_workers = 6\nchunksize = 1\nretries = 2\nidle_timeout = \"10m\"\n",
    ) + &sleeps("s", "faults::sleep_ms", &[300; 60], "");
    fx.write("pipeline.toml", &text);
    let clean = local_output(&text, "s");

    let child = salloc_command_with(
        &fx,
        SPREAD,
        &format!(
            "$LOKY pipeline.toml --progress never --events events.jsonl --joblog joblog.jsonl; echo \"runner=$?\"; {LIST_WORKER_STEPS}"
        ),
    )
    .spawn()
    .unwrap();
    let mut child = KillOnDrop(Some(child));
    let victims = node3_busy(&fx, &mut child);
    let _restore = Restore("node3");
    let killed_at = SystemTime::now();
    let killed = Instant::now();
    node_cmd(&[action, "node3"]).assert_code(0);
    let r = RunResult::from(child.wait_with_output());
    let finished_after = killed.elapsed();
    // Steps left on the lost node are Slurm's to clear once it knows the node is gone: none
    // on the others.
    let (code, _) = runner_code_and_steps(&r);
    assert_eq!(code, 0, "{}", r.stderr);
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
    let crashed_workers = workers_of(&crashed);
    assert_eq!(crashed_workers, victims, "{crashed:?}");
    let retried = events_of(&events, "task_retried");
    // Each of node3's workers was running a task (unless it was between two, for the
    // moment of a round trip, when the node went): each such task was retried once.
    assert!((1..=2).contains(&retried.len()), "{retried:?}");
    assert!(
        retried.iter().all(|e| e["kind"] == "crashed"),
        "{retried:?}"
    );
    // Every task ran once, but for those node3 held: a crashed attempt there, then one ok
    // attempt on another node.
    let by_index = attempts(&fx);
    assert_eq!(by_index.len(), 60);
    let mut healed = 0;
    for (index, lines) in &by_index {
        let outcomes: Vec<&str> = lines
            .iter()
            .map(|l| l["outcome"].as_str().unwrap())
            .collect();
        match outcomes.as_slice() {
            ["ok"] => {}
            ["crashed", "ok"] => {
                healed += 1;
                assert_eq!(lines[0]["host"], "node3", "{index}: {lines:?}");
                assert_ne!(lines[1]["host"], "node3", "{index}: {lines:?}");
            }
            other => panic!("input {index}: {other:?}: {lines:?}"),
        }
    }
    assert_eq!(healed, retried.len());

    let noticed = crashed
        .iter()
        .map(|e| event_time(e).duration_since(killed_at).unwrap_or_default())
        .max()
        .unwrap();
    eprintln!(
        "node3 lost ({action}): its workers' crashes were noticed after {:.1} s; the run ended {:.1} s after; a retry said: {}",
        noticed.as_secs_f64(),
        finished_after.as_secs_f64(),
        retried[0]["message"]
    );
    // Neither the keepalive limit (25 s) nor a replacement step's connect deadline (120 s).
    assert!(
        noticed < Duration::from_secs(25),
        "noticed after {noticed:?}"
    );
    assert!(
        finished_after < Duration::from_secs(60),
        "finished {finished_after:?} after the kill"
    );
    let job = job_of(&events);
    drop(_restore);
    assert_nothing_left(&job);
}

/// Waits until the run in `child` has its 6 workers ready and node3's two have finished a task
/// each (so they are on their next one); returns their worker ids.
pub(crate) fn node3_busy(fx: &Fixture, child: &mut KillOnDrop) -> BTreeSet<u64> {
    let events_path = fx.path().join("events.jsonl");
    let victims = wait_for(|| {
        if child.exited() {
            return Some(BTreeSet::new());
        }
        let ready = events_of(&read_events(&events_path), "worker_ready");
        let on_3 = workers_of(ready.iter().filter(|e| e["host"] == "node3"));
        let joblog = read_jsonl_lenient(&fx.path().join("joblog.jsonl"));
        let done_on_3 = workers_of(joblog.iter().filter(|l| l["host"] == "node3"));
        (ready.len() == 6 && on_3.len() == 2 && done_on_3 == on_3).then_some(on_3)
    });
    assert_eq!(victims.len(), 2, "node3 ran two workers, busy when it went");
    victims
}

/// The `worker` fields of events or joblog lines.
pub(crate) fn workers_of<'a>(lines: impl IntoIterator<Item = &'a Value>) -> BTreeSet<u64> {
    lines
        .into_iter()
        .map(|l| l["worker"].as_u64().unwrap())
        .collect()
}

/// The complete lines of a JSON-lines file being written (a torn last line is skipped).
fn read_jsonl_lenient(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn kill_9_of_the_runner_ends_every_step_on_every_node_and_resume_finishes() {
    if !three_nodes_up() {
        return;
    }
    let _one = cluster_lock();
    let fx = Fixture::new();
    let ms: Vec<u64> = (0..60).map(|i| 200 + i).collect();
    let text = header(
        "killed",
        "launcher = \"slurm\"\nmax_workers = 6\nchunksize = 1\n",
    ) + &sleeps("s", "demo::sleep_ms", &ms, "");
    fx.write("pipeline.toml", &text);
    let clean = local_output(&text, "s");
    // The runner is SIGKILLed once every step has run a task; the script then waits (bounded)
    // for the job's worker steps to be gone and says how long that took.
    let script = format!(
        r#"$LOKY pipeline.toml --progress never --events events.jsonl --joblog joblog.jsonl &
runner=$!
until [ "$(grep -c '"worker_ready"' events.jsonl 2>/dev/null)" -ge 6 ] && [ "$(wc -l < joblog.jsonl 2>/dev/null)" -ge 6 ]; do kill -0 $runner || break; sleep 0.05; done
kill -KILL $runner
killed=$(date +%s%N)
wait $runner; echo "runner=$?"
for i in $(seq 600); do squeue -s -h -j "$SLURM_JOB_ID" -o %j | grep -q loky-run-worker || break; sleep 0.05; done
echo "gone_ms=$((($(date +%s%N) - killed) / 1000000))"
{LIST_WORKER_STEPS}"#
    );
    let r = RunResult::from(salloc_command_with(&fx, SPREAD, &script).output().unwrap());
    assert_eq!(runner_code_and_steps(&r), (137, 0), "{}", r.stderr);
    let gone_ms: u64 = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("gone_ms="))
        .unwrap()
        .parse()
        .unwrap();
    let events = fx.events();
    let ready = events_of(&events, "worker_ready");
    assert_eq!(ready.len(), 6);
    assert_eq!(hosts(&ready).len(), NODES, "{ready:?}");
    // Their processes are gone from every node too (not just from Slurm's books).
    assert_nothing_left(&job_of(&events));
    eprintln!(
        "runner killed with 6 steps on 3 nodes: the steps were gone from squeue {:.2} s later",
        gone_ms as f64 / 1000.0
    );
    let done = fx.records("s").len();
    assert!(done < 60, "killed before the end ({done} records)");

    // A new allocation finishes it.
    let r = RunResult::from(
        salloc_command_with(
            &fx,
            SPREAD,
            &format!(
                "$LOKY run --resume pipeline.toml --progress never --events resumed.jsonl; echo \"runner=$?\"; {LIST_WORKER_STEPS}"
            ),
        )
        .output()
        .unwrap(),
    );
    assert_eq!(runner_code_and_steps(&r), (0, 0), "{}", r.stderr);
    assert_eq!(
        std::fs::read(fx.path().join("out/s.jsonl")).unwrap(),
        clean,
        "s.jsonl differs from a clean run"
    );
    let resumed = read_jsonl(&fx.path().join("resumed.jsonl"));
    assert_nothing_left(&job_of(&resumed));
}

#[test]
fn a_node_cut_off_the_network_is_noticed_by_keepalive_and_its_tasks_retried() {
    if !three_nodes_up() {
        return;
    }
    let _one = cluster_lock();
    let fx = Fixture::new();
    // As for the kill, but node3 goes silent: its processes run on, nothing gets through, and
    // neither the runner nor Slurm hears anything. The runner's TCP timers end the connections.
    let text = header(
        "nodecut",
        "launcher = \"slurm\"\nmax_workers = 6\nchunksize = 1\nretries = 2\n",
    ) + &sleeps("s", "faults::sleep_ms", &[300; 36], "");
    fx.write("pipeline.toml", &text);
    let clean = local_output(&text, "s");
    let child = salloc_command_with(
        &fx,
        SPREAD,
        "$LOKY pipeline.toml --progress never --events events.jsonl --joblog joblog.jsonl; echo \"runner=$?\"",
    )
    .spawn()
    .unwrap();
    let mut child = KillOnDrop(Some(child));
    let victims = node3_busy(&fx, &mut child);
    let _restore = Restore("node3");
    let cut_at = SystemTime::now();
    node_cmd(&["cut", "node3"]).assert_code(0);
    let r = RunResult::from(child.wait_with_output());
    assert!(r.stdout.contains("runner=0"), "{}\n{}", r.stdout, r.stderr);
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
    let crashed_workers = workers_of(&crashed);
    assert_eq!(crashed_workers, victims, "{crashed:?}");
    let retried = events_of(&events, "task_retried");
    assert!((1..=2).contains(&retried.len()), "{retried:?}");
    let by_index = attempts(&fx);
    assert_eq!(by_index.len(), 36);
    for (index, lines) in &by_index {
        let ok = lines.iter().filter(|l| l["outcome"] == "ok").count();
        assert_eq!(ok, 1, "input {index}: {lines:?}");
    }
    let noticed = crashed
        .iter()
        .map(|e| event_time(e).duration_since(cut_at).unwrap_or_default())
        .max()
        .unwrap();
    eprintln!(
        "node3 cut off: its workers' crashes were noticed after {:.1} s; a retry said: {}",
        noticed.as_secs_f64(),
        retried[0]["message"]
    );
    // TCP gives up after 25 s of silence, and the runner ends the step at once; Slurm alone
    // would take longer.
    assert!(
        noticed < Duration::from_secs(40),
        "noticed after {noticed:?}"
    );
    let job = job_of(&events);
    drop(_restore);
    assert_nothing_left(&job);
}

//! The reusable pool (SPEC §4): reuse, resize, restart, idle timeout, recycling, initializers,
//! worker count. PIDs come from the `pid` task and the event log.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::support::*;

/// Runs a pipeline with an event log; returns the events.
fn run_events(fx: &Fixture, text: &str, args: &[&str], code: i32) -> Vec<Value> {
    let p = fx.write("pipeline.toml", text);
    let mut all = vec![p.to_str().unwrap(), "--events", "events.jsonl"];
    all.extend_from_slice(args);
    fx.run(&all).assert_code(code);
    fx.events()
}

fn pid_set(fx: &Fixture, stage: &str) -> BTreeSet<u64> {
    fx.outputs(stage)
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// Events between the `pool_decision` of `stage` and the next `pool_decision` (or the end).
fn events_of<'a>(events: &'a [Value], stage: &str) -> &'a [Value] {
    let start = events
        .iter()
        .position(|e| e["event"] == "pool_decision" && e["stage"] == stage)
        .unwrap();
    let end = events[start + 1..]
        .iter()
        .position(|e| e["event"] == "pool_decision")
        .map_or(events.len(), |i| start + 1 + i);
    &events[start..end]
}

fn decision<'a>(events: &'a [Value], stage: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == "pool_decision" && e["stage"] == stage)
        .unwrap()
}

fn started_in(events: &[Value], stage: &str) -> BTreeSet<u64> {
    started_pids(events_of(events, stage)).into_iter().collect()
}

fn exits_with<'a>(events: &'a [Value], reason: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == "worker_exited" && e["reason"] == reason)
        .collect()
}

/// Six tasks of 100 ms keep every worker of a small pool busy.
const BUSY: &str = "{ items = [100, 100, 100, 100, 100, 100] }";

#[test]
fn grow_shrink_and_grow_again_keep_the_old_processes() {
    let fx = Fixture::new();
    let text = header("resize", "max_workers = 2")
        + &stage("two", "demo::pid", BUSY, "")
        + &stage("three", "demo::pid", BUSY, "max_workers = 3")
        + &stage("one", "demo::pid", BUSY, "max_workers = 1")
        + &stage("two_again", "demo::pid", BUSY, "");
    let events = run_events(&fx, &text, &[], 0);

    let first = started_in(&events, "two");
    assert_eq!(first.len(), 2);

    let d = decision(&events, "three");
    assert_eq!(
        (d["decision"].as_str(), d["from"].as_u64(), d["to"].as_u64()),
        (Some("resize"), Some(2), Some(3))
    );
    let added = started_in(&events, "three");
    assert_eq!(added.len(), 1, "growing adds exactly one worker");
    assert!(exits_with(events_of(&events, "three"), "resize").is_empty());
    let pool_of_three: BTreeSet<u64> = first.union(&added).copied().collect();
    assert!(pid_set(&fx, "three").is_subset(&pool_of_three));

    let d = decision(&events, "one");
    assert_eq!(
        (d["decision"].as_str(), d["to"].as_u64()),
        (Some("resize"), Some(1))
    );
    let retired = exits_with(events_of(&events, "one"), "resize");
    assert_eq!(retired.len(), 2, "shrinking retires two workers");
    assert!(started_in(&events, "one").is_empty());
    let survivor = pid_set(&fx, "one");
    assert_eq!(survivor.len(), 1);
    assert!(survivor.is_subset(&pool_of_three));

    let d = decision(&events, "two_again");
    assert_eq!(
        (d["decision"].as_str(), d["from"].as_u64(), d["to"].as_u64()),
        (Some("resize"), Some(1), Some(2))
    );
    assert_eq!(started_in(&events, "two_again").len(), 1);
    let survivor_pid = *survivor.iter().next().unwrap();
    let survivor_exit = events
        .iter()
        .find(|e| e["event"] == "worker_exited" && e["pid"] == survivor_pid)
        .unwrap();
    assert_eq!(
        survivor_exit["reason"], "shutdown",
        "the survivor lives to the end"
    );
}

#[test]
fn kill_workers_restarts_even_with_equal_settings() {
    let fx = Fixture::new();
    let text = header("kill", "max_workers = 2")
        + &stage("a", "demo::pid", BUSY, "")
        + &stage("b", "demo::pid", BUSY, "kill_workers = true");
    let events = run_events(&fx, &text, &[], 0);
    let d = decision(&events, "b");
    assert_eq!(d["decision"], "restart");
    assert!(d["reason"].as_str().unwrap().contains("kill_workers"));
    let (a, b) = (started_in(&events, "a"), started_in(&events, "b"));
    assert_eq!(b.len(), 2);
    assert!(a.is_disjoint(&b));
    assert!(pid_set(&fx, "b").is_subset(&b));
    assert_eq!(exits_with(&events, "restart").len(), 2);
}

#[test]
fn changed_env_or_initializer_args_restart_and_are_visible() {
    let fx = Fixture::new();
    let text = header(
        "env",
        "max_workers = 1\nenv = { GREETING = \"hi\" }\ninitializer = { task = \"demo::setup\", args = 1 }",
    ) + &stage("a", "demo::getenv", r#"{ items = ["GREETING"] }"#, "")
        + &stage(
            "b",
            "demo::getenv",
            r#"{ items = ["GREETING"] }"#,
            "env = { GREETING = \"ho\" }",
        )
        + &stage(
            "c",
            "demo::state",
            "{ items = [0] }",
            "env = { GREETING = \"ho\" }",
        )
        + &stage(
            "d",
            "demo::state",
            "{ items = [0] }",
            "env = { GREETING = \"ho\" }\ninitializer = { task = \"demo::setup\", args = 2 }",
        );
    let events = run_events(&fx, &text, &[], 0);
    assert_eq!(fx.outputs("a"), [json!("hi")]);
    assert_eq!(fx.outputs("b"), [json!("ho")]);
    let d = decision(&events, "b");
    assert_eq!(d["decision"], "restart");
    assert!(
        d["reason"].as_str().unwrap().contains("env.GREETING"),
        "{d}"
    );
    assert_eq!(decision(&events, "c")["decision"], "reuse");
    assert_eq!(fx.outputs("c"), [json!(1)]);
    let d = decision(&events, "d");
    assert_eq!(d["decision"], "restart");
    assert!(
        d["reason"].as_str().unwrap().contains("initializer args"),
        "{d}"
    );
    assert_eq!(fx.outputs("d"), [json!(2)]);
}

#[test]
fn reuse_never_restarts_every_stage() {
    let fx = Fixture::new();
    let text = header("never", "max_workers = 1\nreuse = \"never\"")
        + &stage("a", "demo::pid", "{ items = [0] }", "")
        + &stage("b", "demo::pid", "{ items = [0] }", "")
        + &stage("c", "demo::pid", "{ items = [0] }", "");
    let events = run_events(&fx, &text, &[], 0);
    assert_eq!(decision(&events, "b")["decision"], "restart");
    assert_eq!(decision(&events, "c")["decision"], "restart");
    let pids: BTreeSet<u64> = ["a", "b", "c"]
        .iter()
        .flat_map(|s| pid_set(&fx, s))
        .collect();
    assert_eq!(pids.len(), 3);
}

#[test]
fn idle_workers_exit_and_are_respawned_when_work_arrives() {
    let fx = Fixture::new();
    // One long task keeps one worker busy; the other idles past the timeout and exits. Then a
    // stage with four workers starts from the one survivor. The long task lasts until that
    // exit is in the event log (however late the second worker starts), or fails after 60 s.
    let long = format!(
        "{{ items = [{{ path = \"{}\", text = '\"reason\":\"idle_timeout\"', timeout_ms = 60000 }}] }}",
        fx.path().join("events.jsonl").display()
    );
    let text = header("idle", "max_workers = 2\nidle_timeout = \"200ms\"")
        + &stage("long", "faults::wait_for_text", &long, "")
        + &stage(
            "later",
            "demo::pid",
            "{ range = [0, 8] }",
            "max_workers = 4",
        );
    let events = run_events(&fx, &text, &[], 0);
    assert!(
        !exits_with(events_of(&events, "long"), "idle_timeout").is_empty(),
        "{events:?}"
    );
    let d = decision(&events, "later");
    assert_eq!(
        (d["decision"].as_str(), d["from"].as_u64(), d["to"].as_u64()),
        (Some("resize"), Some(2), Some(4))
    );
    assert_eq!(
        started_in(&events, "later").len(),
        3,
        "three new workers join the survivor"
    );
    assert_eq!(fx.outputs("later").len(), 8);
}

#[test]
fn workers_are_recycled_after_max_tasks() {
    let fx = Fixture::new();
    let text = header("recycle", "max_workers = 1\nmax_tasks_per_worker = 5")
        + &stage("s", "demo::pid", "{ range = [0, 20] }", "");
    let events = run_events(&fx, &text, &[], 0);
    let records = fx.records("s");
    assert_eq!(records.len(), 20);
    assert!(records.iter().enumerate().all(|(i, r)| r["index"] == i));
    assert!(pid_set(&fx, "s").len() >= 4);
    assert!(exits_with(&events, "max_tasks").len() >= 3);
}

#[test]
fn workers_are_recycled_when_memory_grows() {
    let fx = Fixture::new();
    let text = header("leak", "max_workers = 1\nmax_memory_growth = \"50MB\"")
        + &stage(
            "s",
            "faults::leak_mb",
            "{ items = [20, 20, 20, 20, 20, 20, 20, 20] }",
            "",
        );
    let events = run_events(&fx, &text, &[], 0);
    assert_eq!(fx.outputs("s"), vec![json!(20); 8]);
    assert!(
        !exits_with(&events, "memory_growth").is_empty(),
        "{events:?}"
    );
}

#[test]
fn the_initializer_runs_in_every_worker_before_its_tasks() {
    let fx = Fixture::new();
    let text = header(
        "init",
        "max_workers = 2\ninitializer = { task = \"demo::setup\", args = { level = \"debug\" } }",
    ) + &stage("s", "demo::state", "{ range = [0, 100] }", "chunksize = 1");
    run_events(&fx, &text, &[], 0);
    assert_eq!(fx.outputs("s"), vec![json!({"level": "debug"}); 100]);
}

#[test]
fn worker_count_defaults_to_the_usable_cpus() {
    let fx = Fixture::new();
    let text = header("cpus", "") + &stage("s", "demo::pid", "{ range = [0, 4] }", "");
    let p = fx.write("pipeline.toml", &text);
    let r = fx
        .command()
        .args([
            p.to_str().unwrap(),
            "--progress",
            "never",
            "--events",
            "events.jsonl",
        ])
        .env("LOKY_MAX_CPU_COUNT", "1")
        .output()
        .unwrap();
    assert!(r.status.success());
    let events = fx.events();
    assert_eq!(decision(&events, "s")["to"], 1);
    assert_eq!(started_pids(&events).len(), 1);

    let r = std::process::Command::new("taskset")
        .args([
            "-c",
            "0",
            env!("CARGO_BIN_EXE_loky-run"),
            p.to_str().unwrap(),
            "--progress",
            "never",
            "--events",
            "events.jsonl",
        ])
        .current_dir(fx.path())
        .env_remove("LOKY_MAX_CPU_COUNT")
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let events = fx.events();
    assert_eq!(decision(&events, "s")["to"], 1);
    assert_eq!(started_pids(&events).len(), 1);
}

#[test]
fn loky_max_cpu_count_caps_at_least_at_one_and_must_be_an_integer() {
    let fx = Fixture::new();
    let text = header("cap", "") + &stage("s", "demo::pid", "{ range = [0, 4] }", "");
    let p = fx.write("pipeline.toml", &text);
    let run = |value: &str| {
        fx.command()
            .args([
                p.to_str().unwrap(),
                "--progress",
                "never",
                "--events",
                "events.jsonl",
            ])
            .env("LOKY_MAX_CPU_COUNT", value)
            .output()
            .unwrap()
    };
    for value in ["0", "-3", " 1 "] {
        let r = run(value);
        assert!(
            r.status.success(),
            "{value}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(
            decision(&fx.events(), "s")["to"],
            1,
            "LOKY_MAX_CPU_COUNT={value}"
        );
    }
    for value in ["two", "1.5"] {
        let r = run(value);
        assert_eq!(r.status.code(), Some(2), "LOKY_MAX_CPU_COUNT={value}");
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(
            stderr.contains("LOKY_MAX_CPU_COUNT") && stderr.contains(value),
            "{stderr}"
        );
    }
}

#[test]
fn workers_get_thread_limits_their_id_and_the_stage_unless_the_user_set_them() {
    let fx = Fixture::new();
    let vars = "{ items = [\"OMP_NUM_THREADS\", \"OPENBLAS_NUM_THREADS\", \"MKL_NUM_THREADS\", \"RAYON_NUM_THREADS\", \"LOKY_STAGE\", \"LOKY_WORKER_ID\"] }";
    let text = header("threads", "max_workers = 1")
        + &stage("one", "demo::getenv", vars, "")
        + &stage(
            "mine",
            "demo::getenv",
            vars,
            "env = { OMP_NUM_THREADS = \"7\" }",
        );
    let p = fx.write("pipeline.toml", &text);
    let mut cmd = fx.command();
    for var in loky_run::pool::spawn::THREAD_LIMIT_VARS {
        cmd.env_remove(var);
    }
    let r = RunResult::from(
        cmd.args([p.to_str().unwrap(), "--progress", "never"])
            .output()
            .unwrap(),
    );
    r.assert_code(0);
    // One worker: it gets every usable CPU (as the runner counts them).
    let all = loky_run::sys::usable_cpus().to_string();
    let one: Vec<Value> = fx.outputs("one");
    assert_eq!(
        one,
        [
            json!(all),
            json!(all),
            json!(all),
            json!(all),
            json!("one"),
            json!("1")
        ]
    );
    // A value set in the pipeline wins; the others are still limited. A new env restarts the
    // pool: a new worker id.
    let mine: Vec<Value> = fx.outputs("mine");
    assert_eq!(
        mine,
        [
            json!("7"),
            json!(all),
            json!(all),
            json!(all),
            json!("mine"),
            json!("2")
        ]
    );
}

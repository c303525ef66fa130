//! Runs that succeed: inputs of every kind, ordered outputs, the pool kept between stages,
//! manifest and events.

use serde_json::{Value, json};

use crate::support::*;

#[test]
fn three_chained_stages_give_ordered_outputs() {
    let fx = Fixture::new();
    let text = header("chain", "max_workers = 2")
        + r#"
[[stage]]
name = "squares"
task = "demo::square"
input = { range = [0, 50] }

[[stage]]
name = "echoed"
task = "demo::echo"
input = { from = "squares" }

[[stage]]
name = "cpu"
task = "cpu"
input = { items = [0, 1, 2] }
"#;
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap()]).assert_code(0);
    let squares = fx.records("squares");
    assert_eq!(squares.len(), 50);
    for (i, r) in squares.iter().enumerate() {
        assert_eq!(r, &json!({"index": i, "output": i * i}));
    }
    assert_eq!(fx.outputs("echoed"), fx.outputs("squares"));
    assert_eq!(
        fx.outputs("cpu"),
        [json!(0), json!(332833500u64), json!(2664667000u64)]
    );
}

#[test]
fn many_tasks_across_stages_stay_ordered_and_identical_for_any_worker_count() {
    let fx = Fixture::new();
    let stages = r#"
[[stage]]
name = "a"
task = "demo::square"
input = { range = [0, 100000] }

[[stage]]
name = "b"
task = "demo::echo"
input = { from = "a" }

[[stage]]
name = "c"
task = "demo::echo"
input = { from = "b" }
"#;
    let p = fx.write(
        "pipeline.toml",
        &(header("big", "max_workers = 2") + stages),
    );
    fx.run(&[p.to_str().unwrap()]).assert_code(0);
    let c = std::fs::read(fx.path().join("out/c.jsonl")).unwrap();
    let records = read_jsonl(&fx.path().join("out/c.jsonl"));
    assert_eq!(records.len(), 100_000);
    for (i, r) in records.iter().enumerate().step_by(997) {
        assert_eq!(r["index"], i);
        assert_eq!(r["output"], (i as u64) * (i as u64));
    }
    // Byte-identical with one worker and a fixed chunk size.
    std::fs::rename(fx.path().join("out"), fx.path().join("out-2")).unwrap();
    fx.run(&[
        p.to_str().unwrap(),
        "--set",
        "pool.max_workers=1",
        "--set",
        "pool.chunksize=7",
    ])
    .assert_code(0);
    assert_eq!(std::fs::read(fx.path().join("out/c.jsonl")).unwrap(), c);
}

#[test]
fn equal_pool_settings_keep_the_same_worker_processes() {
    let fx = Fixture::new();
    // `first` is a rendezvous of two tasks: it ends only once both workers run one at once
    // (one worker alone could otherwise do all of it before the other is ready).
    let item = format!(
        "{{ path = \"{}\", count = 2, timeout_ms = 60000 }}",
        fx.path().join("met").display()
    );
    let text = header("reuse", "max_workers = 2")
        + &stage(
            "first",
            "faults::rendezvous",
            &format!("{{ items = [{item}, {item}] }}"),
            "chunksize = 1",
        )
        + r#"
[[stage]]
name = "second"
task = "demo::pid"
input = { items = [30, 30, 30, 30, 30, 30] }
"#;
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap(), "--events", "events.jsonl"])
        .assert_code(0);
    let pids = |stage| {
        let mut v: Vec<u64> = fx
            .outputs(stage)
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let (first, second) = (pids("first"), pids("second"));
    assert_eq!(first.len(), 2, "first ran on both workers");
    assert_eq!(first, second);
    let events = fx.events();
    let mut started = started_pids(&events);
    assert_eq!(
        started.len(),
        2,
        "only two workers were ever started: {events:?}"
    );
    started.sort();
    assert_eq!(started, first, "the workers started are the ones that ran");
    let decisions: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "pool_decision")
        .collect();
    assert_eq!(decisions[0]["decision"], "start");
    assert_eq!(decisions[1]["decision"], "reuse");
    // Stopped cleanly at the end: every worker exited with reason shutdown, none is alive.
    let exits: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "worker_exited")
        .collect();
    assert_eq!(exits.len(), 2);
    assert!(exits.iter().all(|e| e["reason"] == "shutdown"), "{exits:?}");
    assert!(started.iter().all(|pid| !alive(*pid)));
}

#[test]
fn file_inputs_env_and_initializer_reach_the_tasks() {
    let fx = Fixture::new();
    fx.write(
        "names.jsonl",
        "\"GREETING\"\n\"LOKY_WORKER_ID\"\n\"NOT_SET_ANYWHERE\"\n\n",
    );
    let text = header(
        "env",
        "max_workers = 1\nenv = { GREETING = \"hi\" }\ninitializer = { task = \"demo::setup\", args = { level = \"info\" } }",
    ) + r#"
[[stage]]
name = "vars"
task = "demo::getenv"
input = { file = "names.jsonl" }

[[stage]]
name = "state"
task = "demo::state"
input = { range = [0, 3] }
"#;
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap()]).assert_code(0);
    assert_eq!(fx.outputs("vars"), [json!("hi"), json!("1"), Value::Null]);
    assert_eq!(fx.outputs("state"), vec![json!({"level": "info"}); 3]);
}

#[test]
fn manifest_and_events_describe_the_run() {
    let fx = Fixture::new();
    let text = header("manifest", "max_workers = 2")
        + "[[stage]]\nname = \"s\"\ntask = \"demo::square\"\ninput = { range = [0, 10] }\n";
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap(), "--events", "events.jsonl"])
        .assert_code(0);
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(fx.path().join("out/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["status"], "succeeded");
    assert_eq!(manifest["runner_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest["plugins"][0]["name"], "demo");
    assert_eq!(manifest["plugins"][0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(manifest["stages"][0]["ok"], 10);
    assert_eq!(manifest["stages"][0]["pool_decision"]["decision"], "start");
    assert_eq!(manifest["config"]["stages"][0]["name"], "s");
    assert!(manifest["finished_at"].is_string());
    let events = fx.events();
    for kind in [
        "run_started",
        "pool_decision",
        "stage_started",
        "worker_started",
        "stage_finished",
        "worker_exited",
        "run_finished",
    ] {
        assert!(
            events.iter().any(|e| e["event"] == kind),
            "no {kind} event in {events:?}"
        );
    }
    assert!(events.iter().all(|e| e["time"].is_string()));
    let finished = events
        .iter()
        .find(|e| e["event"] == "stage_finished")
        .unwrap();
    assert_eq!(
        (finished["ok"].as_u64(), finished["failed"].as_u64()),
        (Some(10), Some(0))
    );
}

#[test]
fn plugin_output_on_stdout_does_not_disturb_results() {
    let fx = Fixture::new();
    let text = header("stdout", "max_workers = 2")
        + "[[stage]]\nname = \"noisy\"\ntask = \"faults::print_stdout\"\ninput = { items = [3, 10000, 2] }\n";
    let p = fx.write("pipeline.toml", &text);
    let r = fx.run(&[p.to_str().unwrap()]);
    r.assert_code(0);
    assert_eq!(fx.outputs("noisy"), [json!(3), json!(10000), json!(2)]);
    let forwarded = r
        .stderr
        .lines()
        .filter(|l| l.contains("faults line"))
        .count();
    assert_eq!(forwarded, 10005, "{}", r.stderr);
}

#[test]
fn validate_checks_without_running_and_tasks_lists_exports() {
    let fx = Fixture::new();
    let text = header("validate", "")
        + "[[stage]]\nname = \"s\"\ntask = \"demo::square\"\ninput = { range = [0, 10] }\n";
    let p = fx.write("pipeline.toml", &text);
    let r = fx.run(&["validate", p.to_str().unwrap()]);
    r.assert_code(0);
    assert!(
        !fx.path().join("out").exists(),
        "validate must not write outputs"
    );

    let r = fx.run(&["tasks", plugin_path("demo").to_str().unwrap()]);
    r.assert_code(0);
    for name in [
        "demo::square",
        "demo::cpu",
        "demo::sleep_ms",
        "demo::getenv",
        "demo::pid",
        "demo::echo",
        "demo::state",
        "demo::setup",
        "initializers",
    ] {
        assert!(
            r.stdout.contains(name),
            "tasks output lacks {name}:\n{}",
            r.stdout
        );
    }
    let r = fx.run(&["tasks", "faults"]);
    r.assert_code(0);
    assert!(r.stdout.contains("faults::crash_once"), "{}", r.stdout);
}

#[test]
fn dry_run_prints_the_plan_and_runs_nothing() {
    let fx = Fixture::new();
    let text = header("dry", "max_workers = 2")
        + r#"
[[stage]]
name = "a"
task = "demo::square"
input = { range = [0, 10] }

[[stage]]
name = "b"
task = "demo::square"
input = { range = [0, 10] }
max_workers = 3

[[stage]]
name = "c"
task = "demo::square"
input = { range = [0, 10] }
max_workers = 3
kill_workers = true
"#;
    let p = fx.write("pipeline.toml", &text);
    let r = fx.run(&[p.to_str().unwrap(), "--dry-run"]);
    r.assert_code(0);
    assert!(
        r.stdout.contains("stage a") && r.stdout.contains("start"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("resize") && r.stdout.contains("2 -> 3"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("restart") && r.stdout.contains("kill_workers"),
        "{}",
        r.stdout
    );
    assert!(!fx.path().join("out").exists());
}

#[test]
fn chunks_and_results_larger_than_a_pipe_flow_both_ways_without_deadlock() {
    // Each chunk (3 values of 400 KB) and each result frame is larger than the pipes between
    // runner and worker: a worker blocked writing results must never leave the runner blocked
    // writing its next chunk (the runner never blocks on a worker).
    let fx = Fixture::new();
    let value = format!("\"{}\"", "x".repeat(400_000));
    let lines: Vec<&str> = vec![&value; 60];
    std::fs::write(fx.path().join("big.jsonl"), lines.join("\n") + "\n").unwrap();
    let text = header("big", "max_workers = 2\nchunksize = 3")
        + "[[stage]]\nname = \"echo\"\ntask = \"demo::echo\"\ninput = { file = \"big.jsonl\" }\n";
    let p = fx.write("pipeline.toml", &text);
    let child = fx
        .command()
        .args([p.to_str().unwrap(), "--progress", "never"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A deadlocked run is killed (with its workers) when the wait gives up.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(child);
    let status = wait_for(|| child.0.try_wait().unwrap());
    assert_eq!(status.code(), Some(0));
    let expected: Value = serde_json::from_str(&value).unwrap();
    let outputs = fx.outputs("echo");
    assert_eq!(outputs.len(), 60);
    assert!(outputs.iter().all(|o| *o == expected));
}

#[test]
fn an_event_log_that_cannot_be_written_is_reported_not_silently_short() {
    let fx = Fixture::new();
    let text = header("full", "max_workers = 1")
        + "\n[[stage]]\nname = \"s\"\ntask = \"demo::square\"\ninput = { range = [0, 3] }\n";
    let p = fx.write("pipeline.toml", &text);
    // Opening /dev/full works; every write to it fails with ENOSPC.
    fx.run(&[p.to_str().unwrap(), "--events", "/dev/full"])
        .assert_code(0)
        .assert_stderr_has(&["event log /dev/full is incomplete", "No space left"]);
    assert_eq!(fx.outputs("s"), [0, 1, 4]);
}

#[test]
fn records_of_a_from_stage_name_the_record_they_came_from() {
    // Inputs 1 and 3 of `a` fail; `b` runs on the 3 outputs and names where each came from,
    // so that joining on `source` pairs the right rows.
    let fx = Fixture::new();
    let text = header("source", "max_workers = 2\non_error = \"continue\"")
        + r#"
[[stage]]
name = "a"
task = "faults::crash_if"
input = { items = [10, { exit = 3 }, 20, { exit = 4 }, 30] }

[[stage]]
name = "b"
task = "demo::square"
input = { from = "a" }
"#;
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap()]).assert_code(1);
    let b = fx.records("b");
    let pairs: Vec<(u64, u64, i64)> = b
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["source"].as_u64().unwrap(),
                r["output"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(pairs, [(0, 0, 100), (1, 2, 400), (2, 4, 900)]);
    // A stage reading a range or items has no source field.
    assert!(fx.records("a").iter().all(|r| r.get("source").is_none()));
}

#[test]
fn the_joblog_has_a_line_per_attempt_readable_by_duckdb() {
    let fx = Fixture::new();
    let marker = fx.path().join("crashed-once");
    let text = header("joblog", "max_workers = 2\nretries = 1")
        + &format!(
            r#"
[[stage]]
name = "once"
task = "faults::crash_once"
input = {{ items = [{{ marker = "{}" }}] }}

[[stage]]
name = "naps"
task = "faults::sleep_ms"
input = {{ items = [30, 10, 20, 40] }}
chunksize = 1
"#,
            marker.display()
        );
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[
        p.to_str().unwrap(),
        "--joblog",
        "log/joblog.jsonl",
        "--events",
        "events.jsonl",
    ])
    .assert_code(0);
    let lines = read_jsonl(&fx.path().join("log/joblog.jsonl"));
    // Every line has every key.
    for l in &lines {
        assert_eq!(l.as_object().unwrap().len(), 11, "{l}");
    }
    // The crash, then the retry that worked, on another worker.
    let once: Vec<&Value> = lines.iter().filter(|l| l["stage"] == "once").collect();
    assert_eq!(once.len(), 2, "{once:?}");
    assert_eq!(
        (&once[0]["attempt"], &once[0]["outcome"]),
        (&json!(1), &json!("crashed"))
    );
    assert_eq!(
        (&once[1]["attempt"], &once[1]["outcome"]),
        (&json!(2), &json!("ok"))
    );
    assert_ne!(once[0]["pid"], once[1]["pid"]);
    // Each nap timed by the worker around its call.
    let naps: Vec<&Value> = lines.iter().filter(|l| l["stage"] == "naps").collect();
    assert_eq!(naps.len(), 4);
    for n in &naps {
        let asked = [30.0, 10.0, 20.0, 40.0][n["index"].as_u64().unwrap() as usize] / 1e3;
        let took = n["duration_s"].as_f64().unwrap();
        assert!(took >= asked, "{n}");
        assert!(n["start"].as_str().unwrap().ends_with('Z'));
        assert!(n["rss"].as_u64().unwrap() > 0);
    }
    // The pids are the workers' own, as the events say.
    let ready: std::collections::BTreeSet<u64> = fx
        .events()
        .iter()
        .filter(|e| e["event"] == "worker_ready")
        .map(|e| e["pid"].as_u64().unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| ready.contains(&l["pid"].as_u64().unwrap()))
    );
    // Read as it is by duckdb (installed by .ci/run; skipped where it is not available).
    let query = "import duckdb; print(duckdb.sql(\"select count(*), count(distinct stage), \
                 max(attempt), min(start) < max(start) from read_json_auto('log/joblog.jsonl')\").fetchall())";
    match std::process::Command::new("python3")
        .args(["-c", query])
        .current_dir(fx.path())
        .output()
    {
        Ok(o) if o.status.success() => {
            assert_eq!(
                String::from_utf8_lossy(&o.stdout).trim(),
                "[(6, 2, 2, True)]"
            );
        }
        Ok(o)
            if String::from_utf8_lossy(&o.stderr).contains("No module named 'duckdb'")
                && std::env::var_os("LOKY_RUN_REQUIRE_DUCKDB").is_none() =>
        {
            eprintln!("duckdb check skipped: python3 has no duckdb (pip install duckdb)");
        }
        other => panic!("duckdb could not read the joblog: {other:?}"),
    }
}

/// Workers start in the pipeline file's directory: a relative path in a task input means what
/// every path in the file means, wherever loky-run is started from.
#[test]
fn workers_start_in_the_pipeline_files_directory() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.path().join("sub")).unwrap();
    let text = header("cwd", "max_workers = 1")
        + &stage(
            "append",
            "faults::append_line",
            "{ items = [{ path = \"appended.txt\", value = 1 }] }",
            "",
        );
    fx.write("sub/pipeline.toml", &text);
    fx.run(&["sub/pipeline.toml"]).assert_code(0);
    assert!(fx.path().join("sub/appended.txt").is_file());
    assert!(!fx.path().join("appended.txt").exists());
    assert!(fx.path().join("sub/out/append.jsonl").is_file());
}

//! Tasks that fail: error records, on_error, exit codes, crashed workers.

use serde_json::{Value, json};

use crate::support::*;

#[test]
fn task_errors_and_panics_are_recorded_and_the_run_goes_on_with_continue() {
    let fx = Fixture::new();
    let text = header("errors", "max_workers = 2\non_error = \"continue\"")
        + &stage(
            "fails",
            "faults::fail",
            r#"{ items = ["first", "second"] }"#,
            "",
        )
        + &stage("panics", "faults::panic", r#"{ items = ["boom"] }"#, "")
        + &stage(
            "bad_input",
            "demo::square",
            r#"{ items = [1, "two", 3] }"#,
            "",
        )
        + &stage("after", "demo::square", "{ from = \"bad_input\" }", "");
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap(), "--events", "events.jsonl"])
        .assert_code(1);

    assert_eq!(
        fx.records("fails"),
        [
            json!({"index": 0, "error": {"kind": "task_error", "message": "first"}}),
            json!({"index": 1, "error": {"kind": "task_error", "message": "second"}}),
        ]
    );
    let panic = &fx.records("panics")[0]["error"];
    assert_eq!(panic["kind"], "panic");
    let message = panic["message"].as_str().unwrap();
    assert!(
        message.contains("boom") && message.contains(".rs:"),
        "message and location: {message}"
    );

    let bad = fx.records("bad_input");
    assert_eq!(bad[0]["output"], 1);
    assert_eq!(bad[1]["error"]["kind"], "task_error");
    assert!(
        bad[1]["error"]["message"].as_str().unwrap().contains("i64"),
        "{bad:?}"
    );
    assert_eq!(bad[2]["output"], 9);
    // `from` skips the failed item.
    assert_eq!(fx.outputs("after"), [json!(1), json!(81)]);
    let failed = fx
        .events()
        .iter()
        .filter(|e| e["event"] == "task_failed")
        .count();
    assert_eq!(failed, 4);
}

#[test]
fn on_error_fail_stops_at_the_first_failure() {
    let fx = Fixture::new();
    let text = header("stop", "max_workers = 1\nchunksize = 1")
        + &stage("mixed", "faults::fail", r#"{ items = ["x"] }"#, "")
        + &stage("never", "demo::square", "{ range = [0, 3] }", "");
    let p = fx.write("pipeline.toml", &text);
    let r = fx.run(&[p.to_str().unwrap()]);
    r.assert_code(1);
    assert_eq!(fx.records("mixed")[0]["error"]["kind"], "task_error");
    assert!(
        !fx.path().join("out/never.jsonl").exists(),
        "the next stage must not run"
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(fx.path().join("out/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["status"], "failed");
    assert_eq!(manifest["exit_code"], 1);
}

#[test]
fn a_crashed_worker_fails_only_its_task_and_is_replaced() {
    let fx = Fixture::new();
    let text = header("crash", "max_workers = 2\non_error = \"continue\"")
        + &stage("segv", "faults::segfault", "{ items = [0] }", "")
        + &stage("after", "demo::square", "{ range = [0, 20] }", "");
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap(), "--events", "events.jsonl"])
        .assert_code(1);
    let record = &fx.records("segv")[0];
    assert_eq!(record["error"]["kind"], "crashed");
    let message = record["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("SIGSEGV") && message.contains("input 0"),
        "{message}"
    );
    assert_eq!(fx.outputs("after").len(), 20);
    let crashed = fx
        .events()
        .iter()
        .filter(|e| e["event"] == "worker_exited" && e["reason"] == "crashed")
        .count();
    assert_eq!(crashed, 1);
}

#[test]
fn a_failing_initializer_stops_the_stage_without_respawning_forever() {
    let fx = Fixture::new();
    let text = header(
        "init",
        "max_workers = 2\ninitializer = { task = \"faults::init_fail\", args = \"no database\" }",
    ) + &stage("s", "demo::square", "{ range = [0, 10] }", "");
    let p = fx.write("pipeline.toml", &text);
    let r = fx.run(&[p.to_str().unwrap(), "--events", "events.jsonl"]);
    r.assert_code(1);
    r.assert_stderr_has(&["faults::init_fail", "no database"]);
    let records = fx.records("s");
    assert_eq!(records[0]["error"]["kind"], "initializer");
    assert!(started_pids(&fx.events()).len() <= 2);
}

#[track_caller]
fn assert_one_crash(records: &[Value], needle: &str) {
    assert_eq!(records.len(), 100);
    for (i, r) in records.iter().enumerate() {
        if i == 37 {
            assert_eq!(r["error"]["kind"], "crashed", "{r}");
            let m = r["error"]["message"].as_str().unwrap();
            assert!(
                m.contains(needle) && m.contains("input 37") && m.contains("peak RSS"),
                "{m}"
            );
        } else {
            assert!(r.get("output").is_some(), "index {i}: {r}");
        }
    }
}

#[test]
fn abort_and_exit_fail_only_their_own_task() {
    // One abort and one exit(3) among 100 tasks each: the other 99 succeed, in order.
    let items = |crash: &str| {
        let mut v: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        v[50] = crash.to_owned();
        format!("{{ items = [{}] }}", v.join(", "))
    };
    let fx = Fixture::new();
    let text = header(
        "abort",
        "max_workers = 2\non_error = \"continue\"\nchunksize = 4",
    ) + &stage("a", "faults::crash_if", &items("{ abort = true }"), "")
        + &stage("x", "faults::crash_if", &items("{ exit = 3 }"), "")
        + &stage("ok", "demo::square", "{ range = [0, 99] }", "");
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap()]).assert_code(1);
    for (stage, needle) in [("a", "SIGABRT"), ("x", "code 3")] {
        let records = fx.records(stage);
        assert_eq!(records.len(), 100);
        for (i, r) in records.iter().enumerate() {
            if i == 50 {
                assert_eq!(r["error"]["kind"], "crashed", "{r}");
                let message = r["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains(needle) && message.contains("input 50"),
                    "{r}"
                );
            } else {
                assert_eq!(r["output"], i as u64, "{stage}[{i}]: {r}");
            }
        }
    }
    assert_eq!(
        fx.outputs("ok").len(),
        99,
        "the next stage runs on a healthy pool"
    );
}

#[test]
fn a_worker_whose_result_stream_is_garbled_is_ended_not_waited_for() {
    // The task scribbles an impossible frame header on the result descriptor, then sleeps a
    // minute: the runner must stop trusting that worker at once, kill it, and go on.
    let fx = Fixture::new();
    let text = header("garbled", "max_workers = 1\non_error = \"continue\"")
        + &stage("g", "faults::garble_results", "{ items = [60000] }", "")
        + &stage("ok", "demo::square", "{ range = [0, 4] }", "");
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap()]).assert_code(1);
    let records = fx.records("g");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["error"]["kind"], "crashed", "{}", records[0]);
    let message = records[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("SIGKILL") && message.contains("not a frame"),
        "killed, not left to exit on its own, and saying why: {message}"
    );
    assert_eq!(fx.outputs("ok"), [0, 1, 4, 9]);
}

#[test]
fn a_panicking_initializer_stops_the_stage_with_its_message() {
    let fx = Fixture::new();
    let text = header(
        "initpanic",
        "max_workers = 2\ninitializer = { task = \"faults::init_panic\", args = \"config missing\" }",
    ) + &stage("s", "demo::square", "{ range = [0, 10] }", "");
    let p = fx.write("pipeline.toml", &text);
    let r = fx.run(&[p.to_str().unwrap(), "--events", "events.jsonl"]);
    r.assert_code(1);
    let records = fx.records("s");
    assert_eq!(records[0]["error"]["kind"], "initializer");
    let message = records[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("faults::init_panic") && message.contains("config missing"),
        "{message}"
    );
    assert!(
        started_pids(&fx.events()).len() <= 2,
        "not respawned in a loop"
    );
}

#[test]
fn one_crash_among_a_hundred_tasks() {
    // crash_once crashes the first time it sees a marker: one item of a hundred, no retries.
    let fx = Fixture::new();
    let marker = fx.path().join("m37");
    let items: Vec<String> = (0..100)
        .map(|i| {
            if i == 37 {
                format!("{{ marker = \"{}\" }}", marker.display())
            } else {
                format!("{{ marker = \"{}\" }}", fx.path().join("pre").display())
            }
        })
        .collect();
    std::fs::write(fx.path().join("pre"), "").unwrap();
    let text = header("one", "max_workers = 2\non_error = \"continue\"")
        + &stage(
            "s",
            "faults::crash_once",
            &format!("{{ items = [{}] }}", items.join(", ")),
            "",
        );
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap()]).assert_code(1);
    assert_one_crash(&fx.records("s"), "SIGSEGV");
}

#[test]
fn a_worker_killed_from_outside_fails_only_its_task() {
    let fx = Fixture::new();
    let text = header("kill9", "max_workers = 2\non_error = \"continue\"")
        + &stage(
            "s",
            "faults::sleep_ms",
            // The first two tasks are long: the kill lands in one of them, not between tasks.
            &format!("{{ items = [2000, 2000, {}] }}", vec!["60"; 58].join(", ")),
            "chunksize = 1",
        );
    let p = fx.write("pipeline.toml", &text);
    let mut child = fx
        .command()
        .args([
            p.to_str().unwrap(),
            "--progress",
            "never",
            "--events",
            "events.jsonl",
        ])
        .spawn()
        .unwrap();
    let events_path = fx.path().join("events.jsonl");
    let victim = wait_for(|| {
        let text = std::fs::read_to_string(&events_path).ok()?;
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["event"] == "worker_started")
            .and_then(|e| e["pid"].as_u64())
    });
    // Let it get going, then kill it while it sleeps in a task (it is busy ~100% of the time).
    wait_for(|| {
        (std::fs::read_to_string(&events_path)
            .ok()?
            .matches("worker_started")
            .count()
            >= 2)
            .then_some(())
    });
    // Killed once it sleeps inside a task (a thread of it in nanosleep), not before.
    wait_for(|| in_sleep_syscall(victim).then_some(()));
    // SAFETY: sending a signal to a pid we read from the event log.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let records = fx.records("s");
    assert_eq!(records.len(), 60);
    let crashed: Vec<&Value> = records
        .iter()
        .filter(|r| r["error"]["kind"] == "crashed")
        .collect();
    assert_eq!(crashed.len(), 1, "{records:?}");
    assert!(
        crashed[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SIGKILL")
    );
    assert_eq!(
        records.iter().filter(|r| r.get("output").is_some()).count(),
        59
    );
}

#[test]
fn a_panic_keeps_the_worker() {
    let fx = Fixture::new();
    let text = header("panic", "max_workers = 1\non_error = \"continue\"")
        + &stage(
            "p",
            "faults::panic",
            r#"{ items = ["first", "second"] }"#,
            "",
        )
        + &stage("after", "demo::pid", "{ items = [0] }", "");
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap(), "--events", "events.jsonl"])
        .assert_code(1);
    let records = fx.records("p");
    assert!(records.iter().all(|r| r["error"]["kind"] == "panic"));
    assert!(
        records[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("second")
    );
    let started = started_pids(&fx.events());
    assert_eq!(started.len(), 1, "one worker served everything");
    assert_eq!(fx.outputs("after"), [json!(started[0])]);
}

#[test]
fn a_task_over_its_timeout_is_stopped_and_the_rest_complete() {
    let fx = Fixture::new();
    let text = header(
        "timeout",
        "max_workers = 2\non_error = \"continue\"\ntask_timeout = \"3s\"",
    ) + &stage(
        "s",
        "faults::sleep_ms",
        "{ items = [10, 10, 120000, 10, 10, 10, 10, 10] }",
        "",
    );
    let p = fx.write("pipeline.toml", &text);
    let started = std::time::Instant::now();
    fx.run(&[p.to_str().unwrap(), "--events", "events.jsonl"])
        .assert_code(1);
    // The long task sleeps 2 minutes: a run over 1 minute means it was not cut short (a margin
    // no loaded machine eats). The timeout applies to the 10 ms tasks too: 3 s, not less, so
    // that a stalled moment of a loaded machine does not cut one of them.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "the 2-minute task was not cut short"
    );
    let records = fx.records("s");
    assert_eq!(records[2]["error"]["kind"], "timeout");
    assert_eq!(
        records.iter().filter(|r| r.get("output").is_some()).count(),
        7
    );
    assert_eq!(
        fx.events()
            .iter()
            .filter(|e| e["event"] == "worker_exited" && e["reason"] == "timeout")
            .count(),
        1
    );
}

#[test]
fn retries_run_a_crashed_task_again_on_a_fresh_worker() {
    let fx = Fixture::new();
    let items: Vec<String> = (0..20)
        .map(|i| {
            format!(
                "{{ marker = \"{}\" }}",
                fx.path().join(format!("m{i}")).display()
            )
        })
        .collect();
    let text = header("retry", "max_workers = 2\nretries = 1")
        + &stage(
            "s",
            "faults::crash_once",
            &format!("{{ items = [{}] }}", items.join(", ")),
            "",
        );
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap(), "--events", "events.jsonl"])
        .assert_code(0);
    assert_eq!(fx.outputs("s"), vec![json!(true); 20]);
    let retried = fx
        .events()
        .iter()
        .filter(|e| e["event"] == "task_retried")
        .count();
    assert_eq!(retried, 20);
}

#[test]
fn retries_give_up_after_the_last_attempt() {
    let fx = Fixture::new();
    let text = header("giveup", "max_workers = 1\nretries = 2")
        + &stage("s", "faults::segfault", "{ items = [0] }", "");
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap(), "--events", "events.jsonl"])
        .assert_code(1);
    let error = &fx.records("s")[0]["error"];
    assert_eq!(error["kind"], "crashed");
    assert_eq!(error["attempts"], 3);
    assert_eq!(
        fx.events()
            .iter()
            .filter(|e| e["event"] == "task_retried")
            .count(),
        2
    );
}

fn spawn_long_run(fx: &Fixture, item_ms: u64, grace: &str) -> std::process::Child {
    let text = format!(
        "[pipeline]\nname = \"long\"\nplugins = [\"{}\"]\noutput_dir = \"out\"\ngrace_period = \"{grace}\"\n\n[pool]\nmax_workers = 2\n",
        plugin_path("faults").display()
    ) + &stage(
        "s",
        "faults::sleep_ms",
        &format!(
            "{{ items = [{}] }}",
            vec![item_ms.to_string(); 200].join(", ")
        ),
        "",
    );
    let p = fx.write("pipeline.toml", &text);
    let child = fx
        .command()
        .args([
            p.to_str().unwrap(),
            "--progress",
            "never",
            "--events",
            "events.jsonl",
        ])
        .spawn()
        .unwrap();
    let events = fx.path().join("events.jsonl");
    wait_for(|| {
        (std::fs::read_to_string(&events)
            .ok()?
            .matches("worker_started")
            .count()
            >= 2)
            .then_some(())
    });
    child
}

#[test]
fn sigint_lets_running_tasks_finish_then_exits_130_leaving_no_worker() {
    let fx = Fixture::new();
    let mut child = spawn_long_run(&fx, 300, "3s");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    // Not the whole run (200 tasks of 300 ms on 2 workers: 30 s) nor the watchdog's end of a
    // runner that does not stop (grace period + 30 s): it stopped once the running tasks were
    // done, with a margin for a loaded machine.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "exit once the running tasks are done"
    );
    let pids = started_pids(&fx.events());
    assert!(pids.iter().all(|p| !alive(*p)), "a worker survived");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(fx.path().join("out/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["status"], "interrupted");
    let records = fx.records("s");
    assert!(
        records.len() < 200 && records.iter().all(|r| r.get("output").is_some()),
        "completed tasks kept, nothing recorded as failed"
    );
}

#[test]
fn resume_after_sigint_completes_identically() {
    let fx = Fixture::new();
    let mut child = spawn_long_run(&fx, 20, "3s");
    // Interrupt once some results are recorded.
    let out = fx.path().join("out/s.jsonl");
    wait_for(|| {
        let n = std::fs::read_to_string(&out).ok()?.lines().count();
        (n >= 10).then_some(())
    });
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let kept = fx.records("s").len();
    assert!((10..200).contains(&kept), "{kept} records kept");

    let p = fx.path().join("pipeline.toml");
    fx.run(&[p.to_str().unwrap(), "--resume"]).assert_code(0);
    let expected: String = (0..200)
        .map(|i| format!("{{\"index\":{i},\"output\":20}}\n"))
        .collect();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), expected);
}

#[test]
fn a_second_sigint_kills_at_once() {
    let fx = Fixture::new();
    let mut child = spawn_long_run(&fx, 20_000, "60s");
    let started = std::time::Instant::now();
    for _ in 0..2 {
        // SAFETY: signalling the child we spawned.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    // Waiting for the tasks would take 20 s at least, from a moment after `started`.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(18),
        "did not wait for the 20 s tasks"
    );
    // The runner itself ended the run, not the watchdog (which exits 130 too, 10 s after a
    // second signal, within the bound above, but writes no manifest).
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(fx.path().join("out/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["status"], "interrupted");
    assert!(started_pids(&fx.events()).iter().all(|p| !alive(*p)));
}

#[test]
fn sigterm_exits_143() {
    let fx = Fixture::new();
    let mut child = spawn_long_run(&fx, 300, "2s");
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert!(started_pids(&fx.events()).iter().all(|p| !alive(*p)));
}

#[test]
fn an_initializer_that_segfaults_is_reported_and_not_respawned_in_a_loop() {
    let fx = Fixture::new();
    let text = header(
        "initsegv",
        "max_workers = 2\ninitializer = { task = \"faults::init_segfault\" }",
    ) + &stage("s", "demo::square", "{ range = [0, 10] }", "");
    let p = fx.write("pipeline.toml", &text);
    let r = fx.run(&[p.to_str().unwrap(), "--events", "events.jsonl"]);
    r.assert_code(1)
        .assert_stderr_has(&["SIGSEGV", "faults::init_segfault"]);
    assert_eq!(fx.records("s")[0]["error"]["kind"], "initializer");
    // A death while starting is retried on a fresh worker; dying the same way again stops
    // the stage. Both workers start at once, and one may be replaced before the second death.
    let started = started_pids(&fx.events()).len();
    assert!(
        (2..=3).contains(&started),
        "no respawn loop: {started} started"
    );
}

/// A pipeline whose first stage leaves a `sleep 300` behind in each of its 2 tasks (their pids
/// in `sleepers.txt`), then a long stage that keeps the runner busy.
fn sleepers_pipeline(fx: &Fixture) -> (std::path::PathBuf, std::path::PathBuf) {
    let pids = fx.path().join("sleepers.txt");
    let item = format!("{{ seconds = 300, pid_file = \"{}\" }}", pids.display());
    let text = header("orphans", "max_workers = 2")
        + &stage(
            "spawn",
            "faults::spawn_sleeper",
            &format!("{{ items = [{item}, {item}] }}"),
            "chunksize = 1",
        )
        + &stage(
            "busy",
            "faults::sleep_ms",
            &format!("{{ items = [{}] }}", vec!["200"; 100].join(", ")),
            "",
        );
    (fx.write("pipeline.toml", &text), pids)
}

fn sleeper_pids(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn what_a_task_started_does_not_outlive_a_runner_killed_with_sigkill() {
    let fx = Fixture::new();
    let (p, pids) = sleepers_pipeline(&fx);
    let mut child = KillOnDrop(
        fx.command()
            .args([p.to_str().unwrap(), "--progress", "never"])
            .spawn()
            .unwrap(),
    );
    let sleepers = wait_for(|| {
        let found = sleeper_pids(&pids);
        (found.len() == 2).then_some(found)
    });
    assert!(sleepers.iter().all(|p| alive(*p)), "the sleepers run");
    // No handler, no cleanup: the workers die by their parent-death signal, and the guardian
    // ends their process groups, the sleepers with them.
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for(|| sleepers.iter().all(|p| !alive(*p)).then_some(()));
}

#[test]
fn what_a_task_started_ends_with_its_worker_at_the_end_of_the_run() {
    let fx = Fixture::new();
    let (p, pids) = sleepers_pipeline(&fx);
    fx.run_within(
        &[p.to_str().unwrap(), "--set", "stage.busy.input.items=[1]"],
        std::time::Duration::from_secs(120),
    )
    .assert_code(0);
    let sleepers = sleeper_pids(&pids);
    assert_eq!(sleepers.len(), 2);
    wait_for(|| sleepers.iter().all(|p| !alive(*p)).then_some(()));
}

/// A stage of 12 tasks, every 4th failing, slow enough (12 × 150 ms on 2 workers) for
/// progress lines every 200 ms.
fn live_pipeline(fx: &Fixture) -> std::path::PathBuf {
    let items = (0..12)
        .map(|i| {
            if i % 4 == 1 {
                "\"oops\"".to_owned()
            } else {
                "150".to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let text = header("live", "max_workers = 2\non_error = \"continue\"")
        .replace("[pool]", "progress_interval = \"200ms\"\n\n[pool]")
        + &stage(
            "mixed",
            "faults::sleep_ms",
            &format!("{{ items = [{items}] }}"),
            "chunksize = 1",
        );
    fx.write("pipeline.toml", &text)
}

#[test]
fn a_batch_log_shows_failures_as_they_happen_progress_and_a_verdict() {
    let fx = Fixture::new();
    let p = live_pipeline(&fx);
    // stderr is a pipe here (as in a Slurm or CI log): no bars, but lines.
    let r = fx
        .command()
        .args([p.to_str().unwrap(), "--progress", "auto"])
        .output()
        .unwrap();
    let r = RunResult::from(r);
    r.assert_code(1);
    let fails: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("FAIL  mixed["))
        .collect();
    assert_eq!(fails.len(), 3, "{}", r.stderr);
    assert!(fails[0].contains("task_error"), "{}", fails[0]);
    let progress = r
        .stderr
        .lines()
        .filter(|l| l.contains("mixed:") && l.contains("ETA"))
        .count();
    assert!(progress >= 1, "no progress line:\n{}", r.stderr);
    r.assert_stderr_has(&[
        "DONE  mixed: 9 ok, 3 failed",
        "12 tasks, 3 failed, 0 retried in",
    ]);
    // The summary table (header to the `outputs:` line) fits in 80 columns.
    let table: Vec<&str> = r
        .stderr
        .lines()
        .skip_while(|l| !l.starts_with("stage "))
        .take_while(|l| !l.starts_with("outputs:"))
        .collect();
    assert!(table.len() >= 2, "no summary table:\n{}", r.stderr);
    assert!(
        table.iter().all(|l| l.chars().count() <= 80),
        "{}",
        r.stderr
    );

    // `--progress never`: no progress lines; failures and the verdict still.
    let r = fx.run(&[p.to_str().unwrap()]);
    assert!(!r.stderr.lines().any(|l| l.contains("ETA")), "{}", r.stderr);
    r.assert_stderr_has(&["FAIL  mixed[1]", "12 tasks, 3 failed"]);
}

#[test]
fn quiet_keeps_the_failures_and_the_verdict_only() {
    let fx = Fixture::new();
    let p = live_pipeline(&fx);
    let r = fx.run(&[p.to_str().unwrap(), "-q"]);
    r.assert_code(1);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("FAIL  mixed["))
            .count(),
        3,
        "{}",
        r.stderr
    );
    assert!(
        lines.last().unwrap().starts_with("12 tasks, 3 failed"),
        "{}",
        r.stderr
    );
    assert_eq!(lines.len(), 4, "nothing else under -q:\n{}", r.stderr);
}

#[test]
fn after_a_few_failure_lines_the_rest_are_counted() {
    let fx = Fixture::new();
    let text = header("many", "max_workers = 2\non_error = \"continue\"")
        + &stage(
            "bad",
            "faults::fail",
            &format!("{{ items = [{}] }}", vec!["\"no\""; 40].join(", ")),
            "",
        );
    let p = fx.write("pipeline.toml", &text);
    let r = fx.run(&[p.to_str().unwrap()]);
    r.assert_code(1);
    let shown = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("FAIL  bad["))
        .count();
    assert_eq!(shown, 5, "{}", r.stderr);
    r.assert_stderr_has(&[
        "more failures and retries of stage bad are counted",
        "40 tasks, 40 failed",
    ]);
}

/// JSON has no NaN or infinity: a task returning one gets a task error naming it, never a
/// silent `null` output.
#[test]
fn a_nan_or_infinite_output_is_a_task_error_not_null() {
    let fx = Fixture::new();
    let text = header("floats", "max_workers = 1\non_error = \"continue\"")
        + &stage(
            "ratios",
            "faults::ratio",
            "{ items = [[1, 2], [0, 0], [1, 0]] }",
            "",
        );
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap()]).assert_code(1);
    let records = fx.records("ratios");
    assert_eq!(records[0], json!({"index": 0, "output": 0.5}));
    for (record, value) in records[1..].iter().zip(["NaN", "inf"]) {
        assert_eq!(record["error"]["kind"], "task_error", "{record}");
        let message = record["error"]["message"].as_str().unwrap();
        assert!(message.contains(value), "{message}");
    }
}

/// Whether a thread of process `pid` is in `nanosleep` or `clock_nanosleep` (a task sleeping).
fn in_sleep_syscall(pid: u64) -> bool {
    const NANOSLEEP: &str = "35";
    const CLOCK_NANOSLEEP: &str = "230";
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads.filter_map(Result::ok).any(|t| {
        std::fs::read_to_string(t.path().join("syscall")).is_ok_and(|s| {
            let nr = s.split_whitespace().next().unwrap_or_default();
            nr == NANOSLEEP || nr == CLOCK_NANOSLEEP
        })
    })
}

//! The scheduler over the real binary: every idle worker busy, nothing retried forever, nothing
//! waited for forever.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Fixture, header, stage, started_pids, wait_for, wait_within};

/// Generous: these runs take a second or two; a loop or a hang must fail, not stall CI.
const LIMIT: Duration = Duration::from_secs(180);

/// `count` rendezvous inputs on `file`: each task waits until all `count` have arrived, so
/// they all succeed only if they all run at the same moment.
fn rendezvous(fx: &Fixture, file: &str, count: usize) -> String {
    let path = fx.path().join(file);
    let item = format!(
        "{{ path = \"{}\", count = {count}, timeout_ms = 60000 }}",
        path.display()
    );
    format!("{{ items = [{}] }}", vec![item; count].join(", "))
}

fn exits<'a>(events: &'a [Value], reason: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == "worker_exited" && e["reason"] == reason)
        .collect()
}

#[test]
fn four_tasks_on_four_workers_run_at_once_on_four_processes() {
    let fx = Fixture::new();
    // A fresh pool (workers become ready one by one), then the same pool warm with
    // chunksize = 1: each time the four tasks must all be running at the same moment.
    let text = header("four", "max_workers = 4")
        + &stage(
            "fresh",
            "faults::rendezvous",
            &rendezvous(&fx, "a.txt", 4),
            "",
        )
        + &stage(
            "warm",
            "faults::rendezvous",
            &rendezvous(&fx, "b.txt", 4),
            "chunksize = 1",
        );
    let p = fx.write("pipeline.toml", &text);
    fx.run_within(&[p.to_str().unwrap(), "--events", "events.jsonl"], LIMIT)
        .assert_code(0);
    let fresh: BTreeSet<u64> = fx
        .outputs("fresh")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let warm: BTreeSet<u64> = fx
        .outputs("warm")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(fresh.len(), 4, "four distinct processes: {fresh:?}");
    assert_eq!(warm, fresh, "the warm stage reuses the same four");
    assert_eq!(started_pids(&fx.events()).len(), 4);
}

/// Runs `task` on `items` with `retries`, then a normal stage; returns the fixture.
fn hostile(task: &str, items: &str, retries: u32) -> Fixture {
    let fx = Fixture::new();
    let text = header(
        "hostile",
        &format!("max_workers = 2\nretries = {retries}\non_error = \"continue\""),
    ) + &stage("bad", task, &format!("{{ items = {items} }}"), "")
        + &stage("after", "demo::square", "{ range = [0, 5] }", "");
    let p = fx.write("pipeline.toml", &text);
    fx.run_within(&[p.to_str().unwrap(), "--events", "events.jsonl"], LIMIT)
        .assert_code(1);
    assert_eq!(fx.outputs("after"), [0, 1, 4, 9, 16], "the run goes on");
    fx
}

/// Every record of stage `bad` is a failure of `kind` after `attempts` attempts.
fn assert_all_failed(fx: &Fixture, count: usize, kind: &str, attempts: u64, needle: &str) {
    let records = fx.records("bad");
    assert_eq!(records.len(), count);
    for r in &records {
        assert_eq!(r["error"]["kind"], kind, "{r}");
        assert_eq!(
            r["error"]["attempts"].as_u64().unwrap_or(1),
            attempts,
            "{r}"
        );
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
    }
}

#[test]
fn a_task_that_closes_the_result_descriptor_costs_retries_plus_one_workers() {
    let fx = hostile("faults::close_result_fd", "[1, 2, 3]", 2);
    assert_all_failed(&fx, 3, "crashed", 3, "before its result arrived");
    let events = fx.events();
    // Each attempt ended one worker, no more: 3 tasks × 3 attempts.
    assert_eq!(exits(&events, "crashed").len(), 9);
    let retried = events
        .iter()
        .filter(|e| e["event"] == "task_retried")
        .count();
    assert_eq!(retried, 6);
}

#[test]
fn results_sent_to_dev_null_are_noticed_without_a_timeout() {
    let fx = hostile("faults::redirect_result_fd", "[1, 2]", 1);
    assert_all_failed(&fx, 2, "crashed", 2, "result descriptor (4) was redirected");
    assert_eq!(exits(&fx.events(), "lost_results").len(), 4);
}

#[test]
fn a_task_that_breaks_the_result_stream_mid_chunk_is_the_only_one_charged() {
    // The faulty input sits among ordinary ones in chunks of 8: the worker runs on past it
    // (and loses its neighbours' results too) before the runner notices.
    for fault in ["redirect_result_fd", "close_result_fd"] {
        let items: Vec<String> = (0..40)
            .map(|i| {
                if i == 13 {
                    format!("{{ {fault} = true }}")
                } else {
                    i.to_string()
                }
            })
            .collect();
        let fx = Fixture::new();
        let text = header("midchunk", "max_workers = 2\non_error = \"continue\"")
            + &stage(
                "s",
                "faults::crash_if",
                &format!("{{ items = [{}] }}", items.join(", ")),
                "chunksize = 8",
            );
        let p = fx.write("pipeline.toml", &text);
        fx.run_within(&[p.to_str().unwrap()], LIMIT).assert_code(1);
        let records = fx.records("s");
        assert_eq!(records.len(), 40);
        for (i, r) in records.iter().enumerate() {
            if i == 13 {
                assert_eq!(r["error"]["kind"], "crashed", "{fault}: {r}");
            } else {
                assert_eq!(r["output"], i, "{fault}: input {i} is innocent: {r}");
            }
        }
    }
}

#[test]
fn an_output_larger_than_an_item_may_be_gets_a_too_large_record() {
    // The limit lowered to 2 MiB (it is 64 GiB): the same path with megabytes. Twice: the
    // output returned whole, and streamed from the plugin (declined when it announces its size).
    for stream in [None, Some("65536")] {
        let fx = Fixture::new();
        let text = header(
            "hostile",
            "max_workers = 2\nretries = 2\non_error = \"continue\"",
        ) + &stage("bad", "faults::huge_output", "{ items = [3, 1] }", "");
        let p = fx.write("pipeline.toml", &text);
        let limit = (2u64 << 20).to_string();
        let mut env = vec![("LOKY_RUN_TEST_ITEM_BYTES", limit.as_str())];
        env.extend(stream.map(|bytes| ("LOKY_RUN_TEST_STREAM_BYTES", bytes)));
        fx.run_within_env(
            &[p.to_str().unwrap(), "--events", "events.jsonl"],
            LIMIT,
            &env,
        )
        .assert_code(1);
        let records = fx.records("bad");
        assert_eq!(records[0]["error"]["kind"], "too_large", "{}", records[0]);
        let message = records[0]["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&(3u64 * 1024 * 1024 + 2).to_string()) && message.contains(&limit),
            "names the size and the limit: {message}"
        );
        assert_eq!(records[1]["output"].as_str().unwrap().len(), 1 << 20);
        // Not retried (it would be as large again), and no worker was lost over it.
        assert!(records[0]["error"].get("attempts").is_none());
        assert!(exits(&fx.events(), "crashed").is_empty());
    }
}

#[test]
fn a_streamed_output_that_changes_between_its_two_encodings_fails_without_a_torn_record() {
    // Over the (lowered) streaming threshold an output is encoded to measure it, then again
    // into the result stream; one whose second encoding differs cannot be framed. Its worker
    // ends, the item is retried as after a crash, and no partial output is ever written.
    let fx = Fixture::new();
    let text = header(
        "hostile",
        "max_workers = 2\nretries = 1\non_error = \"continue\"",
    ) + &stage(
        "bad",
        "faults::unstable_output",
        "{ items = [100000, 10] }",
        "",
    ) + &stage("after", "faults::huge_output", "{ items = [1] }", "");
    let p = fx.write("pipeline.toml", &text);
    fx.run_within_env(
        &[p.to_str().unwrap(), "--events", "events.jsonl"],
        LIMIT,
        &[("LOKY_RUN_TEST_STREAM_BYTES", "65536")],
    )
    .assert_code(1);
    let records = fx.records("bad");
    assert_eq!(records[0]["error"]["kind"], "crashed", "{}", records[0]);
    assert_eq!(records[0]["error"]["attempts"], 2, "{}", records[0]);
    // Under the threshold it is encoded once, and is fine.
    assert_eq!(records[1]["output"], "u".repeat(10));
    // A streamed output that does not change passes whole.
    assert_eq!(fx.outputs("after")[0].as_str().map(str::len), Some(1 << 20));
    assert_eq!(exits(&fx.events(), "crashed").len(), 2);
}

#[test]
fn a_task_that_kills_every_worker_it_touches_costs_retries_plus_one() {
    let fx = hostile("faults::segfault", "[0]", 3);
    assert_all_failed(&fx, 1, "crashed", 4, "SIGSEGV");
    assert_eq!(exits(&fx.events(), "crashed").len(), 4);
}

#[test]
fn a_worker_killed_while_it_starts_is_replaced_and_the_stage_runs() {
    let fx = Fixture::new();
    // The initializer takes 2 s: long enough to kill the worker while it starts.
    let text = header(
        "killstart",
        "max_workers = 1\ninitializer = { task = \"faults::init_sleep\", args = 2000 }",
    ) + &stage("s", "demo::square", "{ range = [0, 4] }", "");
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
    let events = fx.path().join("events.jsonl");
    let pid = wait_for(|| {
        let text = std::fs::read_to_string(&events).ok()?;
        let started: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|e: &Value| e["event"] == "worker_started")
            .collect();
        started.first().and_then(|e| e["pid"].as_u64())
    });
    // SAFETY: kill(2) of the worker the runner just started (still in its initializer).
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let status = wait_within(&mut child, LIMIT);
    assert_eq!(
        status.code(),
        Some(0),
        "a start-up death is not a failed initializer"
    );
    assert_eq!(fx.outputs("s"), [0, 1, 4, 9]);
    let events = fx.events();
    assert_eq!(started_pids(&events).len(), 2);
    assert!(!fx.records("s").iter().any(|r| r.get("error").is_some()));
}

/// A worker sends a result as soon as its task ends, even when the rest of its chunk runs on:
/// the first of two items in one chunk is in the output while the second still sleeps.
#[test]
fn a_result_is_recorded_while_the_rest_of_its_chunk_runs() {
    let fx = Fixture::new();
    // 3 ms: just over the 2 ms after which a worker sends what it has (a clock that only
    // moves by ticks of 4 ms would often see no time pass).
    let text = header("prompt", "max_workers = 1")
        + &stage(
            "s",
            "demo::sleep_ms",
            "{ items = [3, 600000] }",
            "chunksize = 2",
        );
    let p = fx.write("pipeline.toml", &text);
    let child = fx
        .command()
        .args([p.to_str().unwrap(), "--progress", "never", "-q"])
        .spawn()
        .unwrap();
    let _child = crate::support::KillOnDrop(child);
    // The second item sleeps ten minutes; the first one's record comes within the minute
    // `wait_for` allows, or never before the chunk ends.
    let output = fx.path().join("out").join("s.jsonl");
    wait_for(|| {
        let text = std::fs::read_to_string(&output).ok()?;
        text.lines().next().map(str::to_owned)
    });
    let first = &fx.records("s")[0];
    assert_eq!(
        (first["index"].as_u64(), first["output"].as_u64()),
        (Some(0), Some(3))
    );
}

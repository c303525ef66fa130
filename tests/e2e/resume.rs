//! The journal and `--resume`: a killed run finishes without re-running what completed, with
//! outputs identical to an uninterrupted run; changed pipelines and inputs are refused (or rerun
//! with `--force`); torn records are ignored.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// Writes `name`: one `append_line` input per line, appending `value` to `target`.
fn append_inputs(fx: &Fixture, name: &str, target: &Path, values: impl Iterator<Item = u64>) {
    let text: String = values
        .map(|v| {
            format!(
                "{{\"path\": {:?}, \"value\": {v}}}\n",
                target.to_str().unwrap()
            )
        })
        .collect();
    fx.write(name, &text);
}

/// Lines appended to a file by `faults::append_line` (0 if it does not exist yet).
fn line_count(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

fn manifest(fx: &Fixture) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fx.path().join("out/manifest.json")).unwrap())
        .unwrap()
}

fn output_bytes(fx: &Fixture, stage: &str) -> Vec<u8> {
    std::fs::read(fx.path().join("out").join(format!("{stage}.jsonl"))).unwrap()
}

fn journal(fx: &Fixture, stage: &str) -> PathBuf {
    fx.path().join("out/.journal").join(format!("{stage}.log"))
}

fn spawn(fx: &Fixture, pipeline: &Path) -> Child {
    fx.command()
        .args([
            pipeline.to_str().unwrap(),
            "--progress",
            "never",
            "--events",
            "events.jsonl",
        ])
        .spawn()
        .unwrap()
}

/// SIGKILLs the runner and waits until every worker it started is gone.
fn kill_runner(fx: &Fixture, mut child: Child) {
    child.kill().unwrap(); // SIGKILL: no handler, no cleanup
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "killed by a signal, not exited");
    let pids = started_pids(&fx.events());
    assert!(!pids.is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "a worker outlived the killed runner: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

const TASKS: u64 = 100_000;
const WORKERS: u64 = 2;
const CHUNK: u64 = 50;

fn append_pipeline(fx: &Fixture) -> (PathBuf, PathBuf) {
    let appended = fx.path().join("appended.txt");
    append_inputs(fx, "inputs.jsonl", &appended, 0..TASKS);
    let text = header("append", &format!("max_workers = {WORKERS}"))
        + &stage(
            "append",
            "faults::append_line",
            "{ file = \"inputs.jsonl\" }",
            &format!("chunksize = {CHUNK}"),
        )
        + &stage("squares", "demo::square", "{ from = \"append\" }", "");
    (fx.write("pipeline.toml", &text), appended)
}

#[test]
fn a_runner_killed_mid_stage_resumes_without_rerunning_completed_tasks() {
    // The reference: the same pipeline, uninterrupted.
    let reference = Fixture::new();
    let (p, appended) = append_pipeline(&reference);
    reference.run(&[p.to_str().unwrap()]).assert_code(0);
    assert_eq!(line_count(&appended), TASKS as usize);

    let fx = Fixture::new();
    let (p, appended) = append_pipeline(&fx);
    let child = spawn(&fx, &p);
    // Kill it once some thousands of tasks ran, well before the 100,000.
    wait_for(|| (line_count(&appended) >= 5_000).then_some(()));
    kill_runner(&fx, child);
    let before = line_count(&appended);
    assert!(
        before < TASKS as usize,
        "the kill came too late to test anything ({before} tasks ran)"
    );
    let m = manifest(&fx);
    assert_eq!(m["status"], "running");
    assert_eq!(m["stages"][0]["status"], "running");
    assert_eq!(m["stages"][1]["status"], "pending");

    fx.run(&[p.to_str().unwrap(), "--resume"]).assert_code(0);
    for stage in ["append", "squares"] {
        assert!(
            output_bytes(&fx, stage) == output_bytes(&reference, stage),
            "{stage}.jsonl differs from the uninterrupted run's"
        );
    }
    // Every task ran; the ones run twice are at most those in flight at the kill: each worker
    // holds at most 2 chunks (CHUNKS_PER_WORKER), plus one batch of results (at most a chunk)
    // received but not yet written out when the kill came.
    let text = std::fs::read_to_string(&appended).unwrap();
    let values: Vec<u64> = text.lines().map(|l| l.parse().unwrap()).collect();
    let distinct: HashSet<u64> = values.iter().copied().collect();
    assert_eq!(distinct.len() as u64, TASKS, "every task ran");
    let in_flight_bound = WORKERS * 2 * CHUNK + CHUNK;
    let extra = values.len() as u64 - TASKS;
    eprintln!("killed after {before} tasks; {extra} ran twice");
    assert!(
        extra <= in_flight_bound,
        "{extra} tasks ran twice; at most {in_flight_bound} could have been in flight"
    );
    let m = manifest(&fx);
    assert_eq!(m["status"], "succeeded");
    assert_eq!(m["stages"][0]["status"], "done");
    assert_eq!(m["stages"][0]["ok"], TASKS);
    assert_eq!(m["stages"][1]["ok"], TASKS);
    assert_eq!(m["resumed_at"].as_array().unwrap().len(), 1);
    assert!(
        !fx.path().join("out/.journal").exists(),
        "journals go away with their stage"
    );
}

/// Three stages; `a` and `b` count their executions in `a.txt` and `b.txt`.
fn counted_pipeline(fx: &Fixture, b_factor: u64, a_extra: &str) -> PathBuf {
    append_inputs(fx, "a.jsonl", &fx.path().join("a.txt"), 0..20);
    append_inputs(
        fx,
        "b.jsonl",
        &fx.path().join("b.txt"),
        (0..20).map(|i| i * b_factor),
    );
    let text = header("counted", "max_workers = 2")
        + &stage(
            "a",
            "faults::append_line",
            "{ file = \"a.jsonl\" }",
            a_extra,
        )
        + &stage("b", "faults::append_line", "{ file = \"b.jsonl\" }", "")
        + &stage("c", "demo::square", "{ from = \"b\" }", "");
    fx.write("pipeline.toml", &text)
}

#[test]
fn a_changed_pipeline_or_input_is_refused_unless_forced() {
    let fx = Fixture::new();
    let p = counted_pipeline(&fx, 10, "");
    fx.run(&[p.to_str().unwrap()]).assert_code(0);
    let (a_before, b_before) = (output_bytes(&fx, "a"), output_bytes(&fx, "b"));

    // The content of b's input file changes.
    counted_pipeline(&fx, 100, "");
    let r = fx.run(&[p.to_str().unwrap(), "--resume"]);
    r.assert_code(2).assert_stderr_has(&["`b`", "--force"]);
    assert_eq!(line_count(&fx.path().join("b.txt")), 20, "nothing ran");
    assert_eq!(output_bytes(&fx, "b"), b_before, "nothing was touched");

    fx.run(&[p.to_str().unwrap(), "--resume", "--force"])
        .assert_code(0);
    assert_eq!(line_count(&fx.path().join("a.txt")), 20, "a was kept");
    assert_eq!(line_count(&fx.path().join("b.txt")), 40, "b ran again");
    assert_eq!(output_bytes(&fx, "a"), a_before);
    let c: Vec<u64> = fx
        .outputs("c")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        c,
        (0..20).map(|i| (i * 100) * (i * 100)).collect::<Vec<_>>()
    );

    // A setting that affects results changes in the first stage: everything reruns.
    let p = counted_pipeline(&fx, 100, "retries = 1");
    fx.run(&[p.to_str().unwrap(), "--resume"])
        .assert_code(2)
        .assert_stderr_has(&["`a`", "retries"]);
    fx.run(&[p.to_str().unwrap(), "--resume", "--force"])
        .assert_code(0);
    assert_eq!(line_count(&fx.path().join("a.txt")), 40, "a ran again");
    assert_eq!(line_count(&fx.path().join("b.txt")), 60, "and so did b");
    // A setting that does not affect results (the worker count) may change: the run is
    // complete, nothing reruns.
    fx.run(&[
        p.to_str().unwrap(),
        "--resume",
        "--set",
        "pool.max_workers=1",
    ])
    .assert_code(0);
    assert_eq!(line_count(&fx.path().join("a.txt")), 40);
    assert_eq!(output_bytes(&fx, "a"), a_before);
}

#[test]
fn torn_records_at_the_end_of_the_journal_and_output_are_ignored() {
    // Item 0 keeps one worker busy while the other completes items ahead of it: those wait in
    // the reorder buffer, so they are in the journal, one frame per result.
    let fx = Fixture::new();
    let items: Vec<String> = std::iter::once("1500".to_owned())
        .chain((1..80).map(|i| (i % 3).to_string()))
        .collect();
    let text = header("torn", "max_workers = 2")
        + &stage(
            "s",
            "faults::sleep_ms",
            &format!("{{ items = [{}] }}", items.join(", ")),
            "chunksize = 1",
        );
    let p = fx.write("pipeline.toml", &text);
    let child = spawn(&fx, &p);
    let journal = journal(&fx, "s");
    wait_for(|| {
        let len = std::fs::metadata(&journal).ok()?.len();
        (len > 8 + 20 * 30).then_some(())
    });
    kill_runner(&fx, child);
    // A power cut mid-write: the last frame of the journal loses its end, and half a record
    // hangs at the end of the output.
    let len = std::fs::metadata(&journal).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let output = fx.path().join("out/s.jsonl");
    let mut text = std::fs::read(&output).unwrap();
    text.extend_from_slice(b"{\"index\":");
    std::fs::write(&output, text).unwrap();

    fx.run(&[p.to_str().unwrap(), "--resume"]).assert_code(0);
    let outputs: Vec<String> = fx
        .outputs("s")
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
    assert_eq!(outputs, items);
    let indices: Vec<u64> = fx
        .records("s")
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, (0..80).collect::<Vec<_>>());
}

#[test]
fn resuming_a_finished_run_does_nothing() {
    let fx = Fixture::new();
    let p = counted_pipeline(&fx, 10, "");
    fx.run(&[p.to_str().unwrap()]).assert_code(0);
    let (c_before, m_before) = (
        output_bytes(&fx, "c"),
        std::fs::read(fx.path().join("out/manifest.json")).unwrap(),
    );
    fx.run(&[p.to_str().unwrap(), "--resume"]).assert_code(0);
    assert_eq!(line_count(&fx.path().join("a.txt")), 20);
    assert_eq!(line_count(&fx.path().join("b.txt")), 20);
    assert_eq!(output_bytes(&fx, "c"), c_before);
    assert_eq!(
        std::fs::read(fx.path().join("out/manifest.json")).unwrap(),
        m_before
    );
}

#[test]
fn resume_needs_an_earlier_run() {
    let fx = Fixture::new();
    let p = counted_pipeline(&fx, 10, "");
    fx.run(&[p.to_str().unwrap(), "--resume"])
        .assert_code(2)
        .assert_stderr_has(&["nothing to resume"]);
    assert!(!fx.path().join("a.txt").exists(), "nothing ran");
    // --force alone is a usage error.
    fx.run(&["run", p.to_str().unwrap(), "--force"])
        .assert_code(2);
}

#[test]
fn a_second_runner_on_the_same_outputs_is_refused() {
    let fx = Fixture::new();
    let pipeline = |ms: u64| {
        header("busy", "max_workers = 1")
            + &stage(
                "s",
                "faults::sleep_ms",
                &format!("{{ items = [{ms}] }}"),
                "",
            )
    };
    let p = fx.write("pipeline.toml", &pipeline(20_000));
    let child = spawn(&fx, &p);
    let events = fx.path().join("events.jsonl");
    // The stage has started, so its manifest is written: workers are started ahead of it, so
    // `worker_started` alone could leave nothing for the resume below.
    wait_for(|| {
        let text = std::fs::read_to_string(&events).ok()?;
        text.contains("stage_started").then_some(())
    });
    fx.run(&[p.to_str().unwrap(), "--resume"])
        .assert_code(2)
        .assert_stderr_has(&["another loky-run"]);
    kill_runner(&fx, child);
    // The lock died with its runner, even by SIGKILL.
    fx.write("pipeline.toml", &pipeline(1));
    fx.run(&[p.to_str().unwrap(), "--resume", "--force"])
        .assert_code(0);
    assert_eq!(fx.outputs("s"), [Value::from(1)]);
}

/// Lines of `out/<stage>.jsonl` written so far.
fn output_lines(fx: &Fixture, stage: &str) -> usize {
    line_count(&fx.path().join("out").join(format!("{stage}.jsonl")))
}

/// A stage of 4,000 tasks of 1 ms, one per chunk: slow enough to be killed in the middle.
fn slow_pipeline(fx: &Fixture) -> PathBuf {
    fx.write("ones.jsonl", &"1\n".repeat(4_000));
    let text = header("slow", "max_workers = 2")
        + &stage("a", "demo::square", "{ range = [0, 100] }", "")
        + &stage(
            "s",
            "faults::sleep_ms",
            "{ file = \"ones.jsonl\" }",
            "chunksize = 1",
        );
    fx.write("pipeline.toml", &text)
}

fn expected_slow_output() -> String {
    (0..4_000)
        .map(|i| format!("{{\"index\":{i},\"output\":1}}\n"))
        .collect()
}

/// Runs the slow pipeline until `s` has written at least 1,500 records, then SIGKILLs it.
fn killed_in_stage_s(fx: &Fixture, p: &Path) {
    let child = spawn(fx, p);
    wait_for(|| (output_lines(fx, "s") >= 1_500).then_some(()));
    kill_runner(fx, child);
}

#[test]
fn damage_in_the_middle_of_an_interrupted_output_is_found_and_rerun() {
    type Damage = fn(&str) -> String;
    let damages: [(&str, Damage); 2] = [
        ("a line made invalid JSON", |text| {
            text.replacen(
                "{\"index\":500,\"output\":1}",
                "{\"index\":500,\"output\":1x}",
                1,
            )
        }),
        ("bytes cut out between two records", |text| {
            let start = text.find("{\"index\":800,").unwrap() + 12;
            let end = text.find("{\"index\":900,").unwrap() + 12;
            format!("{}{}", &text[..start], &text[end..])
        }),
    ];
    for (what, damage) in damages {
        let fx = Fixture::new();
        let p = slow_pipeline(&fx);
        killed_in_stage_s(&fx, &p);
        let out = fx.path().join("out/s.jsonl");
        let text = std::fs::read_to_string(&out).unwrap();
        std::fs::write(&out, damage(&text)).unwrap();
        let r = fx.run_within(&[p.to_str().unwrap(), "--resume"], Duration::from_secs(300));
        r.assert_code(0).assert_stderr_has(&["s.jsonl", "damaged"]);
        assert!(
            std::fs::read_to_string(&out).unwrap() == expected_slow_output(),
            "{what}: the resumed output is not the clean run's"
        );
    }
}

#[test]
fn a_finished_output_changed_afterwards_is_refused_on_resume_and_rerun_with_force() {
    let fx = Fixture::new();
    let p = slow_pipeline(&fx);
    killed_in_stage_s(&fx, &p);
    let a = fx.path().join("out/a.jsonl");
    let clean = std::fs::read_to_string(&a).unwrap();
    assert!(manifest(&fx)["stages"][0]["output_sha256"].is_string());
    // A digit changed: every line still a valid record, one value wrong.
    std::fs::write(
        &a,
        clean.replacen(
            "{\"index\":7,\"output\":49}",
            "{\"index\":7,\"output\":48}",
            1,
        ),
    )
    .unwrap();
    fx.run(&[p.to_str().unwrap(), "--resume"])
        .assert_code(2)
        .assert_stderr_has(&["a.jsonl", "changed after the stage finished", "--force"]);
    let r = fx.run_within(
        &[p.to_str().unwrap(), "--resume", "--force"],
        Duration::from_secs(300),
    );
    r.assert_code(0);
    assert_eq!(std::fs::read_to_string(&a).unwrap(), clean);
    assert_eq!(
        std::fs::read_to_string(fx.path().join("out/s.jsonl")).unwrap(),
        expected_slow_output()
    );
}

/// A small stage's output is made durable while the next stage starts, so a power cut just
/// after a stage ended can leave a manifest that says the stage is done (`output_unsynced`)
/// over an output cut short. `--resume` continues such a stage rather than refusing its output
/// as changed, and keeps one whose output is whole.
#[test]
fn a_done_stage_whose_output_a_power_cut_cut_short_continues_on_resume() {
    let fx = Fixture::new();
    let (p, clean) = counted_run(&fx);
    let mut m = manifest(&fx);
    let stages = m["stages"].as_array().unwrap();
    assert!(
        stages.iter().all(|s| s.get("output_unsynced").is_none()),
        "the run's end waited for every output to be durable: {stages:?}"
    );

    // What the power cut left: `a` and `b` done but not yet durable, `b`'s output cut after
    // 7 records, `c` running.
    reopen(&mut m);
    m["stages"][0]["output_unsynced"] = true.into();
    m["stages"][1]["output_unsynced"] = true.into();
    m["stages"][2]["status"] = "running".into();
    write_manifest(&fx, &m);
    keep_records(&fx, "b", &clean[1], 7);

    fx.run(&[p.to_str().unwrap(), "--resume"])
        .assert_code(0)
        .assert_stderr_has(&["b.jsonl", "a kept", "b continues"]);
    assert_only_b_ran_again(&fx, &clean, "b ran only the 13 tasks its output lost");
    let mut m = manifest(&fx);
    assert!(m["stages"][1].get("output_unsynced").is_none(), "{m}");
    assert_eq!(m["stages"][1]["status"], "done");

    // Changed in place, with every record still there: no power cut does that. Refused as
    // for any finished stage.
    m["status"] = "running".into();
    m["stages"][0]["output_unsynced"] = true.into();
    write_manifest(&fx, &m);
    let a = String::from_utf8(clean[0].clone()).unwrap();
    let first = a.lines().next().unwrap();
    let changed = first
        .replacen("\"output\":", "\"output\":[", 1)
        .replacen('}', "]}", 1);
    std::fs::write(
        fx.path().join("out/a.jsonl"),
        a.replacen(first, &changed, 1),
    )
    .unwrap();
    fx.run(&[p.to_str().unwrap(), "--resume"])
        .assert_code(2)
        .assert_stderr_has(&["a.jsonl", "changed after the stage finished"]);
}

/// A stage's start reaches the manifest up to 100 ms after it (so that stages of a few tasks
/// do not each wait for the manifest's rename): a runner killed before that leaves the stage
/// marked pending over the records it wrote. `status` shows what they are, and `--resume`
/// continues the stage from them instead of starting it over.
#[test]
fn a_stage_killed_before_its_start_was_recorded_continues_from_its_records() {
    let fx = Fixture::new();
    let (p, clean) = counted_run(&fx);
    let mut m = manifest(&fx);
    reopen(&mut m);
    for i in [1, 2] {
        let name = m["stages"][i]["name"].clone();
        let task = m["stages"][i]["task"].clone();
        let fingerprint = m["stages"][i]["fingerprint"].clone();
        m["stages"][i] = serde_json::json!({
            "name": name, "status": "pending", "task": task, "output": format!("{}.jsonl", name.as_str().unwrap()),
            "fingerprint": fingerprint, "tasks": 0, "ok": 0, "failed": 0, "retried": 0,
            "not_run": 0, "wall_time_s": 0.0, "pool_decision": null,
        });
    }
    write_manifest(&fx, &m);
    keep_records(&fx, "b", &clean[1], 7);
    std::fs::remove_file(fx.path().join("out/c.jsonl")).unwrap();

    let s: Value = serde_json::from_str(&fx.run(&["status", "out", "--json"]).stdout).unwrap();
    // No `.live.json` says who ran it: "unknown", with what its output holds.
    assert_eq!(s["stages"][1]["state"], "unknown", "{s}");
    assert_eq!(s["stages"][1]["done"], 7, "{s}");
    assert_eq!(s["stages"][2]["state"], "pending", "{s}");

    fx.run(&[p.to_str().unwrap(), "--resume"]).assert_code(0);
    assert_only_b_ran_again(&fx, &clean, "b ran only the 13 tasks it had no record of");
}

/// A finished run of [`counted_pipeline`] (20 inputs per stage), and its three outputs.
fn counted_run(fx: &Fixture) -> (PathBuf, Vec<Vec<u8>>) {
    let p = counted_pipeline(fx, 1, "");
    fx.run(&[p.to_str().unwrap()]).assert_code(0);
    let outputs = ["a", "b", "c"]
        .iter()
        .map(|s| output_bytes(fx, s))
        .collect();
    (p, outputs)
}

/// Makes a finished run's manifest say the run is still going.
fn reopen(m: &mut Value) {
    m["status"] = "running".into();
    m["exit_code"] = Value::Null;
    m["finished_at"] = Value::Null;
}

fn write_manifest(fx: &Fixture, m: &Value) {
    std::fs::write(fx.path().join("out/manifest.json"), m.to_string()).unwrap();
}

/// Cuts `<stage>.jsonl` back to the first `records` lines of `clean`.
fn keep_records(fx: &Fixture, stage: &str, clean: &[u8], records: usize) {
    let cut: usize = clean
        .split_inclusive(|&c| c == b'\n')
        .take(records)
        .map(<[u8]>::len)
        .sum();
    let path = fx.path().join("out").join(format!("{stage}.jsonl"));
    std::fs::write(path, &clean[..cut]).unwrap();
}

/// After a resume of a [`counted_run`] cut back to 7 records of `b`: `a` was kept, `b` ran
/// the 13 others, and every output is the clean run's.
fn assert_only_b_ran_again(fx: &Fixture, clean: &[Vec<u8>], b_why: &str) {
    assert_eq!(line_count(&fx.path().join("a.txt")), 20, "a was kept");
    assert_eq!(line_count(&fx.path().join("b.txt")), 33, "{b_why}");
    for (i, s) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(output_bytes(fx, s), clean[i], "{s}.jsonl");
    }
}

/// `--stage` runs one stage of a changed pipeline: a stage that has no record at its position
/// in the earlier run gets this run's pending record, and its old output is deleted, not taken
/// for one this run started (which `--resume` would continue).
#[test]
fn an_earlier_pipelines_output_is_not_continued_after_a_stage_run() {
    let fx = Fixture::new();
    let v1 = header("staged", "max_workers = 2")
        + &stage("a", "demo::square", "{ items = [1] }", "")
        + &stage("b", "demo::square", "{ items = [1, 2, 3] }", "");
    let p = fx.write("pipeline.toml", &v1);
    fx.run(&[p.to_str().unwrap()]).assert_code(0);
    let v2 = header("staged", "max_workers = 2")
        + &stage("a", "demo::square", "{ items = [1] }", "")
        + &stage("n", "demo::square", "{ items = [5] }", "")
        + &stage("b", "demo::square", "{ items = [10, 20, 30] }", "");
    fx.write("pipeline.toml", &v2);
    fx.run(&["run", "--stage", "n", p.to_str().unwrap()])
        .assert_code(0);
    fx.run(&[p.to_str().unwrap(), "--resume"]).assert_code(0);
    assert_eq!(
        fx.outputs("b"),
        [Value::from(100), Value::from(400), Value::from(900)]
    );
}

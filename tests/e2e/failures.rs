//! Tasks that fail: error records, on_error, exit codes, crashed workers.

use serde_json::{Value, json};

use crate::support::*;

fn stage(name: &str, task: &str, input: &str, extra: &str) -> String {
    format!("\n[[stage]]\nname = \"{name}\"\ntask = \"{task}\"\ninput = {input}\n{extra}\n")
}

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

//! Items and results larger than a frame (issue 17): they travel as long frames. The frame
//! limit is lowered to 64 KiB and the item limit to 4 MiB (`LOKY_RUN_TEST_*`, inherited by the
//! workers), so that a few MiB take every path a gigabyte takes; the big-items benchmark moves
//! the gigabytes.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Fixture, header, stage};

const LIMIT: Duration = Duration::from_secs(120);
const ITEM_LIMIT: usize = 4 << 20;
const LIMITS: [(&str, &str); 2] = [
    ("LOKY_RUN_TEST_FRAME_BYTES", "65536"),
    ("LOKY_RUN_TEST_ITEM_BYTES", "4194304"),
];

/// A string of about `len` bytes with quotes, backslashes, control and non-ASCII characters
/// (its JSON escapes are part of what must arrive intact).
fn text(len: usize, seed: usize) -> String {
    let mut s = String::with_capacity(len + 16);
    let mut i = seed;
    while s.len() < len {
        let _ = write!(s, "{i} \"q\" \\ é\n\t✓ ");
        i += 1;
    }
    s
}

#[test]
fn inputs_and_results_larger_than_a_frame_pass_whole_and_in_order() {
    big_items_pass(&LIMITS);
}

#[test]
fn results_streamed_from_the_plugin_pass_whole_and_in_order() {
    // Results over 256 KiB go through the plugin's sink (encoded twice, never held whole).
    let [frame, item] = LIMITS;
    big_items_pass(&[frame, item, ("LOKY_RUN_TEST_STREAM_BYTES", "262144")]);
}

fn big_items_pass(env: &[(&str, &str)]) {
    let fx = Fixture::new();
    let inputs = vec![
        json!(1),
        json!(text(3 << 20, 0)),
        json!("small"),
        // Larger than a frame, smaller than what a worker sends in a frame of its own: it goes
        // in a batch of results that is itself a long frame.
        json!(text(200 << 10, 7)),
        json!({ "k": text(100 << 10, 9) }),
    ];
    let lines: Vec<String> = inputs.iter().map(Value::to_string).collect();
    fx.write("in.jsonl", &(lines.join("\n") + "\n"));
    let text_ = header("big", "max_workers = 2\non_error = \"continue\"")
        + &stage("echo", "demo::echo", "{ file = \"in.jsonl\" }", "")
        + &stage(
            "again",
            "demo::echo",
            "{ from = \"echo\" }",
            "chunksize = 1",
        )
        + &stage("lens", "demo::text_len", "{ from = \"echo\" }", "")
        + &stage("out", "faults::huge_output", "{ items = [3, 0, 1] }", "");
    let p = fx.write("pipeline.toml", &text_);
    fx.run_within_env(&[p.to_str().unwrap()], LIMIT, env)
        .assert_code(1);
    assert_eq!(fx.outputs("echo"), inputs);
    assert_eq!(fx.outputs("again"), inputs);
    let lens = fx.records("lens");
    let expected: Vec<Value> = inputs
        .iter()
        .map(|v| v.as_str().map_or(Value::Null, |s| json!(s.len())))
        .collect();
    for (record, want) in lens.iter().zip(&expected) {
        match want {
            Value::Null => assert_eq!(record["error"]["kind"], "task_error", "{record}"),
            _ => assert_eq!(&record["output"], want, "{record}"),
        }
    }
    let lengths: Vec<usize> = fx
        .outputs("out")
        .iter()
        .map(|v| v.as_str().map_or(usize::MAX, str::len))
        .collect();
    assert_eq!(lengths, [3 << 20, 0, 1 << 20]);
}

#[test]
fn an_input_line_over_the_item_limit_is_a_configuration_error() {
    let fx = Fixture::new();
    let line = Value::String("x".repeat(ITEM_LIMIT)).to_string();
    fx.write("in.jsonl", &format!("1\n{line}\n"));
    let text_ = header("big", "max_workers = 1")
        + &stage("echo", "demo::echo", "{ file = \"in.jsonl\" }", "");
    let p = fx.write("pipeline.toml", &text_);
    fx.run_within_env(&[p.to_str().unwrap()], LIMIT, &LIMITS)
        .assert_code(2)
        .assert_stderr_has(&["in.jsonl:2", &ITEM_LIMIT.to_string()]);
}

//! Every bad input is refused with exit code 2, a message naming the problem, before any
//! worker starts, and without leaving output behind.

use crate::support::*;

fn refused(fx: &Fixture, text: &str, extra_args: &[&str], fragments: &[&str]) {
    let p = fx.write("pipeline.toml", text);
    let mut args = vec![p.to_str().unwrap()];
    args.extend_from_slice(extra_args);
    let r = fx.run(&args);
    r.assert_code(2).assert_stderr_has(fragments);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(!fx.path().join("out").exists(), "no partial output");
}

const STAGE: &str =
    "\n[[stage]]\nname = \"s\"\ntask = \"demo::square\"\ninput = { range = [0, 3] }\n";

#[test]
fn toml_syntax_error_names_line_and_column() {
    let fx = Fixture::new();
    let text = header("bad", "") + "\n[[stage]]\nname = \"s\n";
    let line = text.lines().count().to_string();
    refused(&fx, &text, &[], &["pipeline.toml", &line]);
}

#[test]
fn unknown_key_suggests_the_closest() {
    let fx = Fixture::new();
    refused(
        &fx,
        &(header("bad", "max_worker = 2") + STAGE),
        &[],
        &["max_worker", "max_workers"],
    );
}

#[test]
fn wrong_type_in_file_and_in_set() {
    let fx = Fixture::new();
    refused(
        &fx,
        &(header("bad", "max_workers = \"two\"") + STAGE),
        &[],
        &["max_workers"],
    );
    refused(
        &fx,
        &(header("bad", "") + STAGE),
        &["--set", "pool.retries=lots"],
        &["retries", "--set"],
    );
    refused(
        &fx,
        &(header("bad", "idle_timeout = \"10 parsecs\"") + STAGE),
        &[],
        &["idle_timeout"],
    );
}

#[test]
fn unknown_task_lists_what_the_plugin_exports() {
    let fx = Fixture::new();
    let text = header("bad", "")
        + "\n[[stage]]\nname = \"s\"\ntask = \"demo::sqare\"\ninput = { range = [0, 3] }\n";
    refused(
        &fx,
        &text,
        &[],
        &["demo::sqare", "demo::square", "demo::echo"],
    );
}

#[test]
fn missing_plugin_lists_where_it_looked() {
    let fx = Fixture::new();
    let text = "[pipeline]\nname = \"bad\"\nplugins = [\"no_such_plugin\"]\noutput_dir = \"out\"\n"
        .to_owned()
        + STAGE;
    let dir = fx.path().to_str().unwrap().to_owned();
    refused(
        &fx,
        &text,
        &[],
        &["no_such_plugin", "libno_such_plugin.so", &dir],
    );
}

#[test]
fn a_file_that_is_not_a_shared_library() {
    let fx = Fixture::new();
    fx.write("fake.so", "this is text");
    let text = "[pipeline]\nname = \"bad\"\nplugins = [\"./fake.so\"]\noutput_dir = \"out\"\n"
        .to_owned()
        + STAGE;
    refused(&fx, &text, &[], &["fake.so", "not a shared library"]);
}

#[test]
fn missing_input_file_and_malformed_line() {
    let fx = Fixture::new();
    let missing = header("bad", "")
        + "\n[[stage]]\nname = \"s\"\ntask = \"demo::echo\"\ninput = { file = \"nope.jsonl\" }\n";
    refused(&fx, &missing, &[], &["nope.jsonl"]);
    fx.write("in.jsonl", "1\n2\n{not json\n4\n");
    let malformed = header("bad", "")
        + "\n[[stage]]\nname = \"s\"\ntask = \"demo::echo\"\ninput = { file = \"in.jsonl\" }\n";
    refused(&fx, &malformed, &[], &["in.jsonl:3"]);
}

#[test]
fn duplicate_stage_names() {
    let fx = Fixture::new();
    refused(
        &fx,
        &(header("bad", "") + STAGE + STAGE),
        &[],
        &["duplicate", "`s`"],
    );
}

#[test]
fn from_naming_an_unknown_or_later_stage() {
    let fx = Fixture::new();
    let unknown = header("bad", "")
        + "\n[[stage]]\nname = \"s\"\ntask = \"demo::echo\"\ninput = { from = \"nowhere\" }\n";
    refused(&fx, &unknown, &[], &["nowhere"]);
    let later = header("bad", "")
        + "\n[[stage]]\nname = \"first\"\ntask = \"demo::echo\"\ninput = { from = \"second\" }\n"
        + "\n[[stage]]\nname = \"second\"\ntask = \"demo::echo\"\ninput = { range = [0, 2] }\n";
    refused(&fx, &later, &[], &["second"]);
}

#[test]
fn max_workers_zero_is_refused() {
    let fx = Fixture::new();
    refused(
        &fx,
        &(header("bad", "max_workers = 0") + STAGE),
        &[],
        &["max_workers"],
    );
}

#[test]
fn unwritable_output_directory() {
    let fx = Fixture::new();
    fx.write("out", "a file where the output directory should be");
    let p = fx.write("pipeline.toml", &(header("bad", "") + STAGE));
    fx.run(&[p.to_str().unwrap()])
        .assert_code(2)
        .assert_stderr_has(&["out"]);
}

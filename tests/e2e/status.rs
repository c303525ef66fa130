//! `loky-run status OUTPUT_DIR`: a finished run, a run going on (the lock held), a killed run,
//! and no run at all; text and `--json`.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// A stage with a failure, then one whose `held` tasks wait (two at a time) until the test
/// appends lines to `go`.
fn held_pipeline(fx: &Fixture, held: usize) -> std::path::PathBuf {
    let go = fx.path().join("go");
    let item = format!(
        "{{ path = \"{}\", count = {}, timeout_ms = 120000 }}",
        go.display(),
        held + 2
    );
    let text = header("watched", "max_workers = 2\non_error = \"continue\"")
        + &stage(
            "first",
            "demo::square",
            "{ items = [1, 2, 3037000500, 4] }",
            "",
        )
        + &stage(
            "held",
            "faults::rendezvous",
            &format!("{{ items = [{}] }}", vec![item; held].join(", ")),
            "chunksize = 1",
        );
    fx.write("pipeline.toml", &text)
}

fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Lets every held task go on (the lines they wait for, but the pids of the two running).
fn release(fx: &Fixture, held: usize) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(fx.path().join("go"))
        .unwrap();
    f.write_all("0\n".repeat(held).as_bytes()).unwrap();
}

fn status_json(fx: &Fixture, dir: &str) -> Value {
    let r = fx.run(&["status", dir, "--json"]);
    r.assert_code(0);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}\n{}", r.stdout))
}

fn spawn_run(fx: &Fixture, pipeline: &Path) -> KillOnDrop {
    KillOnDrop(
        fx.command()
            .arg(pipeline)
            .args(["--progress", "never"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn a_finished_run_shows_its_stages_failures_and_pool_decisions() {
    let fx = Fixture::new();
    let p = held_pipeline(&fx, 1);
    release(&fx, 3);
    fx.run(&[p.to_str().unwrap()]).assert_code(1);

    let s = status_json(&fx, "out");
    assert_eq!(s["state"], "failed");
    assert_eq!(s["exit_code"], 1);
    assert_eq!(s["runner"]["state"], "finished");
    assert_eq!(s["pipeline"], "watched");
    let first = &s["stages"][0];
    assert_eq!(first["state"], "done");
    assert_eq!(
        (&first["tasks"], &first["ok"], &first["failed"]),
        (&4.into(), &3.into(), &1.into())
    );
    assert_eq!(first["failures"][0]["index"], 2);
    assert_eq!(first["failures"][0]["kind"], "task_error");
    assert!(
        first["failures"][0]["message"]
            .as_str()
            .unwrap()
            .contains("3037000500")
    );
    assert_eq!(first["pool_decision"]["decision"], "start");
    assert_eq!(s["stages"][1]["pool_decision"]["decision"], "reuse");
    assert!(s["elapsed_s"].as_f64().unwrap() > 0.0);
    // No live snapshot is left behind.
    assert!(!fx.path().join("out/.live.json").exists());

    // The text says the same; the pipeline file stands for its output directory.
    let text = fx.run(&["status", p.to_str().unwrap()]);
    text.assert_code(0);
    for wanted in [
        "run watched: failed (exit 1)",
        "first[2]: task_error: the square of 3037000500",
        "first: start (no pool yet",
        "held: reuse",
    ] {
        assert!(text.stdout.contains(wanted), "{wanted}:\n{}", text.stdout);
    }
    let row = |name: &str| {
        text.stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name}:\n{}", text.stdout))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("first ")[1..4], ["done", "4/4", "1"]);
    assert_eq!(row("held ")[1..3], ["done", "1/1"]);
    assert!(text.stdout.lines().all(|l| l.chars().count() <= 100));
}

#[test]
fn a_run_going_on_shows_its_running_stage_while_it_holds_the_lock() {
    let fx = Fixture::new();
    let p = held_pipeline(&fx, 3);
    let mut child = spawn_run(&fx, &p);
    // Two of the three held tasks are running (the third waits for a worker).
    wait_for(|| (lines_in(&fx.path().join("go")) >= 2).then_some(()));
    let s = wait_for(|| {
        let s = status_json(&fx, "out");
        let held = &s["stages"][1];
        (held["state"] == "running" && held["progress"]["busy"] == 2).then_some(s)
    });
    assert_eq!(s["state"], "running");
    assert_eq!(s["runner"]["state"], "alive");
    assert_eq!(s["runner"]["pid"], child.id());
    let held = &s["stages"][1];
    assert_eq!((&held["tasks"], &held["done"]), (&3.into(), &0.into()));
    assert_eq!(held["progress"]["workers"], 2);
    // Nothing done yet: no ETA.
    assert!(held["progress"]["eta_s"].is_null());
    assert_eq!(held["pool_decision"]["decision"], "reuse");
    assert_eq!(s["stages"][0]["failures"][0]["index"], 2);
    let text = fx.run(&["status", "out"]);
    assert!(text.stdout.contains("running for"), "{}", text.stdout);
    assert!(text.stdout.contains("ETA unknown"), "{}", text.stdout);
    let row: Vec<&str> = text
        .stdout
        .lines()
        .find(|l| l.starts_with("held "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[1..4], ["running", "0%", "0/3"], "{}", text.stdout);

    release(&fx, 3);
    let status = wait_within(&mut child, Duration::from_secs(120));
    assert_eq!(status.code(), Some(1));
    let s = status_json(&fx, "out");
    assert_eq!(s["state"], "failed");
    assert_eq!(s["stages"][1]["ok"], 3);
}

#[test]
fn a_killed_run_is_shown_killed_with_what_it_recorded_and_how_to_finish_it() {
    let fx = Fixture::new();
    let p = held_pipeline(&fx, 3);
    let mut child = spawn_run(&fx, &p);
    wait_for(|| (lines_in(&fx.path().join("go")) >= 2).then_some(()));
    // The runner marks a stage's start in the manifest within 100 ms of it.
    wait_for(|| {
        let text = std::fs::read_to_string(fx.path().join("out/manifest.json")).ok()?;
        let m: Value = serde_json::from_str(&text).ok()?;
        (m["stages"][1]["status"] == "running").then_some(())
    });
    child.kill().unwrap(); // SIGKILL: no cleanup, the manifest still says running
    child.wait().unwrap();

    let s = status_json(&fx, "out");
    assert_eq!(s["state"], "killed");
    assert_eq!(s["runner"]["state"], "gone");
    let held = &s["stages"][1];
    assert_eq!(held["state"], "killed");
    assert_eq!((&held["done"], &held["not_run"]), (&0.into(), &3.into()));
    let text = fx.run(&["status", "out"]);
    assert!(text.stdout.contains("killed"), "{}", text.stdout);
    assert!(text.stdout.contains("--resume"), "{}", text.stdout);

    // Finished as it says; then it is a finished run.
    release(&fx, 3);
    let r = fx.run_within(
        &["run", "--resume", p.to_str().unwrap()],
        Duration::from_secs(120),
    );
    r.assert_code(1);
    assert_eq!(status_json(&fx, "out")["state"], "failed");
}

#[test]
fn failures_are_listed_up_to_a_limit_and_all_on_request() {
    let fx = Fixture::new();
    let text = header("many", "max_workers = 2\non_error = \"continue\"")
        + &stage(
            "bad",
            "faults::fail",
            &format!("{{ items = [{}] }}", vec!["\"no\""; 30].join(", ")),
            "",
        );
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap()]).assert_code(1);
    let listed = |args: &[&str]| -> usize {
        let mut all = vec!["status", "out", "--json"];
        all.extend(args);
        let r = fx.run(&all);
        r.assert_code(0);
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["stages"][0]["failed"], 30);
        v["stages"][0]["failures"].as_array().unwrap().len()
    };
    assert_eq!(listed(&[]), 30);
    assert_eq!(listed(&["--failures", "3"]), 3);
    assert_eq!(listed(&["--failures", "all"]), 30);
    let r = fx.run(&["status", "out"]);
    assert_eq!(
        r.stdout.lines().filter(|l| l.starts_with("  bad[")).count(),
        10
    );
    assert!(r.stdout.contains("20 more"), "{}", r.stdout);
    fx.run(&["status", "out", "--failures", "many"])
        .assert_code(2);
}

#[test]
fn no_run_in_a_directory_is_a_clear_error() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.path().join("empty")).unwrap();
    let r = fx.run(&["status", "empty"]);
    r.assert_code(2);
    assert!(r.stderr.contains("manifest.json"), "{}", r.stderr);
    fx.write("empty/manifest.json", "{\"not\": \"a manifest\"}");
    let r = fx.run(&["status", "empty", "--json"]);
    r.assert_code(2);
    assert!(r.stdout.is_empty());
}

//! `loky-run report OUTPUT_DIR`: the HTML of a real run holds a bar per attempt the joblog
//! lists, every failure escaped, the stages and the pool restart, and no URL; without a joblog
//! it says what to do; a run going on gets a report too; and a real browser (headless
//! Chromium) draws it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// The message of one failing task: HTML in it must come out as text.
const NASTY: &str = "<script>alert(1)</script> & <b>bold</b>";

/// Four stages: naps (a bar each), a crash retried on a fresh worker, failures with a nasty
/// message, and a stage whose changed `env` restarts the pool.
fn pipeline(fx: &Fixture) -> PathBuf {
    let marker = fx.path().join("crashed-once");
    let text = header("reported", "max_workers = 2\non_error = \"continue\"")
        + &stage(
            "naps",
            "faults::sleep_ms",
            "{ items = [30, 10, 20, 40, 25, 15, 35, 5] }",
            "chunksize = 1",
        )
        + &stage(
            "once",
            "faults::crash_once",
            &format!("{{ items = [{{ marker = \"{}\" }}] }}", marker.display()),
            "retries = 1",
        )
        + &stage(
            "failing",
            "faults::fail",
            &format!("{{ items = [{}, \"plain\"] }}", serde_json::json!(NASTY)),
            "",
        )
        + &stage(
            "squares",
            "demo::square",
            "{ range = [0, 20] }",
            "env = { CHANGED = \"1\" }",
        );
    fx.write("pipeline.toml", &text)
}

fn joblog_lines(fx: &Fixture) -> Vec<Value> {
    read_jsonl(&fx.path().join("log/joblog.jsonl"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A finished run with a joblog and an event log, and its report.
fn reported_run(fx: &Fixture) -> String {
    let p = pipeline(fx);
    fx.run(&[
        p.to_str().unwrap(),
        "--joblog",
        "log/joblog.jsonl",
        "--events",
        "events.jsonl",
    ])
    .assert_code(1);
    let r = fx.run(&["report", "out"]);
    r.assert_code(0);
    assert_eq!(r.stdout.trim(), "out/report.html");
    read(&fx.path().join("out/report.html"))
}

#[test]
fn the_report_has_a_bar_per_attempt_every_failure_escaped_and_no_url() {
    let fx = Fixture::new();
    let html = reported_run(&fx);
    let lines = joblog_lines(&fx);
    let timed: Vec<&Value> = lines.iter().filter(|l| !l["start"].is_null()).collect();
    // naps 8, once 2 (the crash, then its retry), failing 2, squares 20.
    assert_eq!(timed.len(), 32, "{lines:?}");
    assert_eq!(html.matches("<rect class=\"task ").count(), timed.len());
    let failed = timed
        .iter()
        .filter(|l| l["outcome"] != "ok" && l["outcome"] != "lost")
        .count();
    assert_eq!(failed, 3);
    assert_eq!(html.matches("<rect class=\"task error").count(), failed);
    // Each bar names its task in its tooltip.
    assert!(html.contains("<title>once[0] attempt 1: crashed"), "{html}");
    assert!(html.contains("<title>once[0] attempt 2: ok"));

    // Every failure, with its message as text.
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;"));
    assert!(!html.contains("<script"));
    assert!(!html.contains("<b>bold"));
    assert!(html.contains(">plain</td>"));
    assert!(html.contains("Failures (2)"));
    for name in ["naps", "once", "failing", "squares"] {
        assert!(html.contains(&format!(">{name}</td>")), "stage {name}");
    }
    // The pool restart before `squares`, with its reason, and stage bands.
    assert!(html.contains("class=\"mark restart\""));
    assert!(html.contains("pool restart before squares: env.CHANGED added"));
    assert!(html.contains("stage times from the events"));
    // One file: nothing fetched.
    for fetch in ["http://", "https://", "src=", "href=", "url("] {
        assert!(!html.contains(fetch), "{fetch}");
    }
    // A worker row per worker process the joblog names.
    let pids: std::collections::BTreeSet<u64> =
        timed.iter().map(|l| l["pid"].as_u64().unwrap()).collect();
    for pid in &pids {
        assert!(html.contains(&format!(" · pid {pid}")), "pid {pid}");
    }

    // -o writes elsewhere; the pipeline file stands for its output directory.
    let r = fx.run(&["report", "pipeline.toml", "-o", "elsewhere.html"]);
    r.assert_code(0);
    assert_eq!(r.stdout.trim(), "elsewhere.html");
    let again = read(&fx.path().join("elsewhere.html"));
    assert_eq!(again.matches("<rect class=\"task ").count(), timed.len());
}

#[test]
fn without_a_joblog_the_report_shows_the_rest_and_says_to_run_with_joblog() {
    let fx = Fixture::new();
    let text = header("plain", "max_workers = 2\non_error = \"continue\"")
        + &stage(
            "first",
            "demo::square",
            "{ items = [1, 2, 3037000500] }",
            "",
        )
        + &stage(
            "second",
            "demo::square",
            "{ from = \"first\" }",
            "kill_workers = true",
        );
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap()]).assert_code(1);
    let r = fx.run(&["report", "out"]);
    r.assert_code(0);
    r.assert_stderr_has(&["per-task timeline needs a joblog: run with --joblog"]);
    let html = read(&fx.path().join("out/report.html"));
    assert!(html.contains("per-task timeline needs a joblog: run with --joblog"));
    assert_eq!(html.matches("class=\"task ").count(), 0);
    // The stages, their times from the manifest, the restart, the failure.
    assert!(html.contains(">first</td>") && html.contains(">second</td>"));
    assert!(html.contains("stage times from the manifest"));
    assert!(html.contains("class=\"mark restart\""));
    assert!(html.contains("does not fit in a 64-bit integer"));
    assert_eq!(html.matches("<rect class=\"stage ").count(), 2);
}

#[test]
fn a_directory_without_a_run_is_exit_2_and_an_unwritable_report_74() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.path().join("empty")).unwrap();
    let r = fx.run(&["report", "empty"]);
    r.assert_code(2);
    r.assert_stderr_has(&["manifest.json"]);
    assert!(!fx.path().join("empty/report.html").exists());

    let text =
        header("tiny", "max_workers = 1") + &stage("s", "demo::square", "{ items = [2] }", "");
    let p = fx.write("pipeline.toml", &text);
    fx.run(&[p.to_str().unwrap()]).assert_code(0);
    let r = fx.run(&["report", "out", "-o", "no/such/dir/r.html"]);
    r.assert_code(74);
    r.assert_stderr_has(&["cannot write the report no/such/dir/r.html"]);
}

#[test]
fn a_run_going_on_gets_a_report_of_what_it_did_so_far() {
    let fx = Fixture::new();
    let go = fx.path().join("go");
    let held = format!(
        "{{ items = [{{ path = \"{}\", count = 2, timeout_ms = 120000 }}] }}",
        go.display()
    );
    let text = header("going", "max_workers = 2")
        + &stage("first", "demo::square", "{ items = [1, 2, 3] }", "")
        + &stage("held", "faults::rendezvous", &held, "");
    let p = fx.write("pipeline.toml", &text);
    let mut child = KillOnDrop(
        fx.command()
            .arg(&p)
            .args(["--progress", "never", "--joblog", "joblog.jsonl"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The held task is running: it wrote its pid.
    wait_for(|| {
        std::fs::read_to_string(&go)
            .is_ok_and(|t| t.lines().count() >= 1)
            .then_some(())
    });
    let r = fx.run(&["report", "out"]);
    r.assert_code(0);
    let html = read(&fx.path().join("out/report.html"));
    assert!(html.contains("this report is a snapshot"), "{html}");
    // The first stage's three tasks are in the joblog, and drawn.
    assert_eq!(html.matches("<rect class=\"task ok").count(), 3);

    let mut f = std::fs::OpenOptions::new().append(true).open(&go).unwrap();
    f.write_all(b"0\n").unwrap();
    let status = wait_within(&mut child, Duration::from_secs(120));
    assert_eq!(status.code(), Some(0));
    fx.run(&["report", "out"]).assert_code(0);
    let html = read(&fx.path().join("out/report.html"));
    assert_eq!(html.matches("<rect class=\"task ok").count(), 4);
}

/// Chromium's executable, if it is on PATH.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Runs a command in a process group of its own, and ends the whole group once it is done or
/// when it runs past `limit` (Chromium starts helpers that must not outlive the test).
fn run_grouped(mut cmd: std::process::Command, limit: Duration) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let group = child.id();
    let kill_group = || {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .stderr(Stdio::null())
            .status();
    };
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut text);
            }
            text
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            kill_group();
            let _ = child.wait();
            panic!("{cmd:?} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Helpers still holding the pipes would keep the readers waiting: end them first.
    kill_group();
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

#[test]
fn a_real_browser_draws_the_report() {
    let Some(browser) = chromium() else {
        if std::env::var_os("LOKY_RUN_REQUIRE_CHROMIUM").is_some_and(|v| v == "1") {
            panic!(
                "LOKY_RUN_REQUIRE_CHROMIUM=1 but neither chromium nor chromium-browser is on PATH \
                 (apt-get install chromium)"
            );
        }
        eprintln!("browser check skipped: no chromium on PATH (apt-get install chromium)");
        return;
    };
    let fx = Fixture::new();
    reported_run(&fx);
    let report = fx.path().join("out/report.html");
    let png = fx.path().join("report.png");
    let profile = fx.path().join("chromium-profile");
    let mut cmd = std::process::Command::new(&browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--window-size=1280,2000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--screenshot={}", png.display()))
    .arg(format!("file://{}", report.display()))
    .env("HOME", fx.path())
    .env("XDG_CONFIG_HOME", fx.path().join(".config"))
    .env("XDG_CACHE_HOME", fx.path().join(".cache"));
    // Generous: a cold Chromium on a loaded 2-core machine.
    let out = run_grouped(cmd, Duration::from_secs(180));
    assert!(
        out.status.success() && png.is_file(),
        "chromium failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1280, 2000));
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let pixels: Vec<[u8; 3]> = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let not_white = pixels.iter().filter(|p| **p != [255, 255, 255]).count();
    let colours: std::collections::BTreeSet<[u8; 3]> = pixels.iter().copied().collect();
    // The first stage's bars are drawn in its colour (#4e79a7), the failures in red (#d62728).
    let first_stage = pixels.iter().filter(|p| **p == [0x4e, 0x79, 0xa7]).count();
    let red = pixels.iter().filter(|p| **p == [0xd6, 0x27, 0x28]).count();
    assert!(
        not_white * 20 > pixels.len(),
        "only {not_white} of {} pixels are not white",
        pixels.len()
    );
    assert!(colours.len() > 100, "{} colours", colours.len());
    assert!(
        first_stage > 1000,
        "{first_stage} pixels of the first stage's colour"
    );
    assert!(red > 20, "{red} red pixels");
}

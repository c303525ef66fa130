//! Big items (issue 17): one item of 256 MiB to several GiB through a 1-worker pool, with the
//! wall time and the peak RSS of the runner and of the worker.
//!
//! ```sh
//! cargo run --release -p bench -- bigitems                               # 256M,1G,3G; cases in,out,echo
//! cargo run --release -p bench -- bigitems --sizes 4.5G --cases in,out   # past 4 GiB
//! cargo run --release -p bench -- bigitems --runner /path/to/old/loky-run --sizes 256M,1000M
//! ```
//!
//! Cases (each a one-stage pipeline over one item, `max_workers = 1`):
//! - `in`: a big input, a small result: an input file of one line, a JSON string of SIZE bytes,
//!   through `demo::text_len` (its input type counts the string while it is decoded: no copy).
//! - `out`: a small input, a big result: `faults::huge_output` returns a string of SIZE bytes
//!   (the task builds it as a `String`, then the plugin encodes it as JSON: two copies of the
//!   result in the worker before the runner's part begins).
//! - `echo`: `demo::echo` of the same one-line file: input and result both SIZE bytes, and the
//!   task decodes the input into a `serde_json::Value` before encoding it again.
//!
//! The runner's peak is its `VmHWM`, read from /proc every 10 ms until it exits; the worker's is
//! the `peak_rss` of its `worker_exited` event (its `ru_maxrss`). A case whose estimated memory
//! does not fit in `MemAvailable` (less 2 GiB) is skipped and says so. `--runner` measures
//! another build of loky-run with this checkout's plugins (the plugin ABI is the same), which is
//! how the figures before the change were taken.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::{build, proc};

const MIB: u64 = 1 << 20;

struct Options {
    sizes: Vec<u64>,
    cases: Vec<String>,
    runner: Option<PathBuf>,
    build: bool,
}

fn usage() -> &'static str {
    "usage: cargo run --release -p bench -- bigitems [--sizes 256M,1G,3G] [--cases in,out,echo] \
     [--runner PATH] [--no-build]\n  sizes take K, M, G (binary: 1G = 1 GiB) and fractions (4.5G)"
}

fn size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((at, _)) => (&t[..at], &t[at..]),
        None => (t, ""),
    };
    let mult = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KIB" => 1 << 10,
        "M" | "MIB" => 1 << 20,
        "G" | "GIB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    let n: f64 = num.parse().map_err(|_| format!("not a size: {text:?}"))?;
    Ok((n * mult as f64) as u64)
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        sizes: vec![256 * MIB, 1 << 30, 3 << 30],
        cases: vec!["in".into(), "out".into(), "echo".into()],
        runner: None,
        build: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sizes" => {
                let v = it.next().ok_or("--sizes takes a list")?;
                o.sizes = v.split(',').map(size).collect::<Result<_, _>>()?;
            }
            "--cases" => {
                let v = it.next().ok_or("--cases takes a list")?;
                o.cases = v.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(bad) = o
                    .cases
                    .iter()
                    .find(|c| !["in", "out", "echo"].contains(&c.as_str()))
                {
                    return Err(format!("unknown case {bad:?}"));
                }
            }
            "--runner" => o.runner = Some(it.next().ok_or("--runner takes a path")?.into()),
            "--no-build" => o.build = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

pub(crate) fn main(args: &[String]) -> i32 {
    crate::subcommand("bigitems", args, parse, usage(), |o| run(o).map(|()| true))
}

struct Row {
    case: String,
    size: u64,
    outcome: String,
    wall_s: f64,
    stage_s: f64,
    runner_peak: u64,
    worker_peak: u64,
}

fn run(opts: &Options) -> Result<(), String> {
    let (root, target) = build::dirs()?;
    if opts.build {
        build::release(&root, "demo")?;
        build::release(&root, "faults")?;
    }
    let work = target.join("bench-work/bigitems");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let bin = work.join("bin");
    let (own_runner, demo) = build::private_copies(&target, &bin, "demo")?;
    let (_, faults) = build::private_copies(&target, &bin, "faults")?;
    let runner = match &opts.runner {
        Some(r) => r.clone(),
        None => own_runner,
    };
    println!("== runner {}", runner.display());
    let mut rows = Vec::new();
    for &bytes in &opts.sizes {
        let input = work.join("big.jsonl");
        let needs_file = opts.cases.iter().any(|c| c != "out");
        if needs_file {
            write_string_line(&input, bytes)?;
        }
        for case in &opts.cases {
            // Generous: what the old runner needed (echo: 4x in the worker, 2x in the runner).
            let factor = match case.as_str() {
                "echo" => 6,
                _ => 4,
            };
            let available = mem_available();
            if factor * bytes + (2 << 30) > available {
                println!(
                    "-- {case} {}: skipped, needs about {} MiB, {} MiB available",
                    human(bytes),
                    factor * bytes / MIB,
                    available / MIB
                );
                continue;
            }
            let row = one(&work, &runner, &demo, &faults, case, bytes, &input)?;
            println!(
                "-- {case} {}: {} in {:.2} s (stage {:.2} s), runner peak {} MiB ({:.2}x), worker peak {} MiB ({:.2}x)",
                human(bytes),
                row.outcome,
                row.wall_s,
                row.stage_s,
                row.runner_peak / MIB,
                row.runner_peak as f64 / bytes as f64,
                row.worker_peak / MIB,
                row.worker_peak as f64 / bytes as f64,
            );
            rows.push(row);
        }
        let _ = fs::remove_file(&input);
    }
    println!(
        "\n| case | item | outcome | wall s | stage s | runner peak MiB | ×item | worker peak MiB | ×item |"
    );
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {} | {:.2} | {} | {:.2} |",
            r.case,
            human(r.size),
            r.outcome,
            r.wall_s,
            r.stage_s,
            r.runner_peak / MIB,
            r.runner_peak as f64 / r.size as f64,
            r.worker_peak / MIB,
            r.worker_peak as f64 / r.size as f64,
        );
    }
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 28) == 0 {
        format!("{} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

/// One line: a JSON string of `bytes` bytes in all (quotes included), then a newline.
fn write_string_line(path: &Path, bytes: u64) -> Result<(), String> {
    let e = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = BufWriter::with_capacity(1 << 20, File::create(path).map_err(e)?);
    let block = vec![b'x'; 1 << 20];
    f.write_all(b"\"").map_err(e)?;
    let mut left = bytes.saturating_sub(2);
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).map_err(e)?;
        left -= n as u64;
    }
    f.write_all(b"\"\n").map_err(e)?;
    f.flush().map_err(e)
}

fn mem_available() -> u64 {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn one(
    work: &Path,
    runner: &Path,
    demo: &Path,
    faults: &Path,
    case: &str,
    bytes: u64,
    input: &Path,
) -> Result<Row, String> {
    let (task, stage_input) = match case {
        "in" => (
            "demo::text_len",
            format!("{{ file = {} }}", toml_str(&input.display().to_string())),
        ),
        "echo" => (
            "demo::echo",
            format!("{{ file = {} }}", toml_str(&input.display().to_string())),
        ),
        _ => (
            "faults::huge_output",
            format!("{{ items = [{}] }}", bytes.div_ceil(MIB)),
        ),
    };
    let toml = work.join("big.toml");
    let out = work.join("out");
    let _ = fs::remove_dir_all(&out);
    let text = format!(
        "[pipeline]\nname = \"bigitems\"\nplugins = [{}, {}]\noutput_dir = {}\n\n[pool]\nmax_workers = 1\n\n\
         [[stage]]\nname = \"big\"\ntask = \"{task}\"\ninput = {stage_input}\n",
        toml_str(&demo.display().to_string()),
        toml_str(&faults.display().to_string()),
        toml_str(&out.display().to_string()),
    );
    fs::write(&toml, text).map_err(|e| format!("{}: {e}", toml.display()))?;
    let events = work.join("events.jsonl");
    let _ = fs::remove_file(&events);
    let mut cmd = Command::new(runner);
    cmd.arg(&toml)
        .args(["--progress", "never", "-q", "--events"])
        .arg(&events)
        // The bench measures, it does not keep digests between runs of fresh copies.
        .env("LOKY_RUN_CACHE_DIR", "");
    let mut runner_peak = 0;
    let done = proc::run(&mut cmd, work, Duration::from_secs(600), |pid| {
        // VmHWM only grows; the last sample before the runner exits is its peak (it goes
        // away with the zombie's memory).
        while let Some(hwm) = hwm(pid) {
            runner_peak = runner_peak.max(hwm);
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let (failed, wall_s) = match &done {
        Ok(f) => (None, f.wall.as_secs_f64()),
        Err(e) => (Some(failure(e)), f64::NAN),
    };
    let text = fs::read_to_string(&events).unwrap_or_default();
    let mut worker_peak = 0;
    let mut stage_s = f64::NAN;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        match v["event"].as_str() {
            Some("worker_exited") => {
                worker_peak = worker_peak.max(v["peak_rss"].as_u64().unwrap_or(0));
            }
            Some("stage_finished") => stage_s = v["wall_time_s"].as_f64().unwrap_or(f64::NAN),
            _ => {}
        }
    }
    // A run that fails may still have recorded why (a `too_large` record, exit 1).
    let recorded = check_output(&out.join("big.jsonl"), case, bytes);
    let outcome = match failed {
        Some(why) if recorded == "ok" || recorded == "no output" => why,
        _ => recorded,
    };
    let _ = fs::remove_dir_all(&out);
    Ok(Row {
        case: case.to_owned(),
        size: bytes,
        outcome,
        wall_s,
        stage_s,
        runner_peak,
        worker_peak,
    })
}

/// `ok`, or what the record says instead (e.g. `too_large`), without reading gigabytes into
/// memory: the record's head and its length are enough.
fn check_output(path: &Path, case: &str, bytes: u64) -> String {
    let Ok(meta) = fs::metadata(path) else {
        return "no output".into();
    };
    let mut head = vec![0u8; 256];
    let n = File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    if head.contains("\"error\"") {
        let kind = head
            .split("\"kind\":\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("error");
        return kind.to_owned();
    }
    let record = "{\"index\":0,\"output\":}\n".len() as u64;
    let expected = match case {
        "in" => record + (bytes - 2).to_string().len() as u64,
        "echo" => record + bytes,
        _ => record + bytes.div_ceil(MIB) * MIB + 2,
    };
    if meta.len() == expected {
        "ok".into()
    } else {
        format!("wrong output size {} (expected {expected})", meta.len())
    }
}

/// A failed run in a few words: its exit code (2: the runner refused the input before running
/// anything, e.g. a line over the item limit) or why it did not end.
fn failure(e: &str) -> String {
    let status = e
        .split("wait status 0x")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| i32::from_str_radix(s, 16).ok());
    match status {
        Some(s) if libc::WIFEXITED(s) => format!("exit {}", libc::WEXITSTATUS(s)),
        _ => format!("failed: {}", e.lines().next().unwrap_or("")),
    }
}

fn hwm(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

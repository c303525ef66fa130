//! The workloads of issue 6, each run on loky-run and on loky, alternating within every
//! repetition (A B A B ...).

use loky_run::config::Launcher;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::proc::{self, Finished};
use crate::report::{Better, Goal, Report, num};
use crate::stats::{median, quantile};
use crate::{Env, Sizes, latency};

const MIB: f64 = (1u64 << 20) as f64;

pub(crate) fn run(name: &str, env: &Env, s: &Sizes, rep: &mut Report) -> Result<(), String> {
    let dir = env.work.join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let w = W { env, dir: &dir };
    let result = match name {
        "cold" => cold(&w, s, rep),
        "throughput" => throughput(&w, s, rep),
        "latency" => latency_workload(&w, s, rep),
        "pipeline" => pipeline(&w, s, rep),
        "restart" => restart(&w, s, rep),
        "payload" => payload(&w, s, rep),
        "rss" => rss(&w, s, rep),
        "memory" => memory(&w, s, rep),
        "makespan" => makespan(&w, s, rep),
        _ => Err(format!("no workload {name}")),
    };
    // Outputs can be gigabytes: never leave them behind.
    let _ = fs::remove_dir_all(&dir);
    result
}

/// One workload's scratch directory and helpers.
pub(crate) struct W<'a> {
    pub(crate) env: &'a Env,
    pub(crate) dir: &'a Path,
}

/// What `--events` recorded of one loky-run run.
#[derive(Debug, Default)]
pub(crate) struct Events {
    /// `(stage, wall_time_s)` of each `stage_finished`.
    stages: Vec<(String, f64)>,
    /// Pool decisions in order (`start`, `reuse`, `restart`, ...).
    pub(crate) decisions: Vec<String>,
    pub(crate) worker_pids: Vec<u32>,
    /// Peak RSS of each exited worker (bytes).
    worker_peaks: Vec<u64>,
    /// When each stage finished (seconds since midnight UTC, millisecond resolution).
    finished_at: Vec<f64>,
}

impl Events {
    pub(crate) fn read(path: &Path) -> Events {
        let mut e = Events::default();
        let text = fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            match v["event"].as_str() {
                Some("stage_finished") => {
                    e.stages.push((
                        v["stage"].as_str().unwrap_or("").to_owned(),
                        v["wall_time_s"].as_f64().unwrap_or(f64::NAN),
                    ));
                    e.finished_at
                        .push(time_of_day(v["time"].as_str().unwrap_or("")));
                }
                Some("pool_decision") => e
                    .decisions
                    .push(v["decision"].as_str().unwrap_or("").to_owned()),
                Some("worker_started") => e.worker_pids.push(v["pid"].as_u64().unwrap_or(0) as u32),
                Some("worker_exited") => e.worker_peaks.push(v["peak_rss"].as_u64().unwrap_or(0)),
                _ => {}
            }
        }
        e
    }

    /// Mean time from one `stage_finished` to the next, over the whole run (everything a
    /// stage costs after the first: its pool decision, restart, dispatch, output, manifest).
    fn stage_period_ms(&self) -> f64 {
        match (self.finished_at.first(), self.finished_at.last()) {
            (Some(&a), Some(&b)) if self.finished_at.len() > 1 => {
                let span = if b >= a { b - a } else { b + 86_400.0 - a };
                span * 1e3 / (self.finished_at.len() - 1) as f64
            }
            _ => f64::NAN,
        }
    }

    pub(crate) fn stage(&self, name: &str) -> Result<f64, String> {
        self.stages
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| format!("no stage_finished event for stage {name}"))
    }
}

impl W<'_> {
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a pipeline file: 2 workers, the demo plugin, `stages` as TOML tables.
    pub(crate) fn pipeline(
        &self,
        name: &str,
        pool_extra: &str,
        stages: &str,
    ) -> Result<PathBuf, String> {
        self.pipeline_with(name, "", pool_extra, stages)
    }

    /// Like [`Self::pipeline`], with more `[pipeline]` keys.
    fn pipeline_with(
        &self,
        name: &str,
        pipeline_extra: &str,
        pool_extra: &str,
        stages: &str,
    ) -> Result<PathBuf, String> {
        let path = self.path(&format!("{name}.toml"));
        let text = format!(
            "[pipeline]\nname = {}\nplugins = [{}]\noutput_dir = {}\n{pipeline_extra}\n\n[pool]\nmax_workers = 2\n{pool_extra}\n{stages}",
            toml_str(name),
            toml_str(&self.env.plugin.display().to_string()),
            toml_str(&format!("out-{name}")),
        );
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    /// Runs loky-run on a pipeline with an event log; `during` gets the runner's pid.
    pub(crate) fn loky_run(
        &self,
        toml: &Path,
        limit: Duration,
        during: impl FnOnce(u32, &Path),
    ) -> Result<(Finished, Events), String> {
        let events = toml.with_extension("events.jsonl");
        let _ = fs::remove_file(&events);
        let mut cmd = Command::new(&self.env.loky_run);
        cmd.arg(toml)
            .args(["--progress", "never", "-q", "--events"])
            .arg(&events);
        let done = proc::run(&mut cmd, self.dir, limit, |pid| during(pid, &events))?;
        let ev = Events::read(&events);
        let out_dir = toml.with_file_name(format!(
            "out-{}",
            toml.file_stem().unwrap_or_default().to_string_lossy()
        ));
        let _ = fs::remove_dir_all(out_dir);
        Ok((done, ev))
    }

    /// Runs loky-run without an event log (the cold start measures the plain command).
    pub(crate) fn loky_run_plain(&self, toml: &Path, limit: Duration) -> Result<Finished, String> {
        let mut cmd = Command::new(&self.env.loky_run);
        cmd.arg(toml).args(["--progress", "never", "-q"]);
        proc::run(&mut cmd, self.dir, limit, |_| {})
    }

    /// Runs a subcommand of the Python script (`env.script`: `loky_bench.py`, or `peers.py` for
    /// `bench peers`); returns the process and its JSON answer.
    pub(crate) fn loky(&self, args: &[&str], limit: Duration) -> Result<(Finished, Value), String> {
        let out = self.path("loky-out");
        let _ = fs::remove_dir_all(&out);
        fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.env.python);
        cmd.arg(&self.env.script);
        for a in args {
            cmd.arg(a.replace("{out}", &out.display().to_string()));
        }
        let done = proc::run(&mut cmd, self.dir, limit, |_| {})?;
        let _ = fs::remove_dir_all(&out);
        let last = done.stdout.lines().last().unwrap_or("").to_owned();
        let v = serde_json::from_str(&last)
            .map_err(|e| format!("loky_bench.py {args:?} printed no JSON ({e}): {last:?}"))?;
        Ok((done, v))
    }
}

/// Seconds since midnight of an event's `"time"` (`2026-11-26T16:42:19.274Z`).
fn time_of_day(t: &str) -> f64 {
    let Some(clock) = t.split('T').nth(1) else {
        return f64::NAN;
    };
    let clock = clock.trim_end_matches('Z');
    let mut parts = clock
        .split(':')
        .map(|p| p.parse::<f64>().unwrap_or(f64::NAN));
    let (h, m, s) = (
        parts.next().unwrap_or(f64::NAN),
        parts.next().unwrap_or(f64::NAN),
        parts.next().unwrap_or(f64::NAN),
    );
    h * 3600.0 + m * 60.0 + s
}

pub(crate) fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

pub(crate) fn stage(name: &str, task: &str, input: &str, extra: &str) -> String {
    format!(
        "[[stage]]\nname = {}\ntask = {}\ninput = {input}\n{extra}\n",
        toml_str(name),
        toml_str(task)
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn f64_of(v: &Value, key: &str) -> Result<f64, String> {
    v[key]
        .as_f64()
        .ok_or_else(|| format!("no number {key:?} in {v}"))
}

const LIMIT: Duration = Duration::from_secs(120);

/// 1. Cold start: a whole run of 2 tiny tasks, process start to exit.
fn cold(w: &W, s: &Sizes, rep: &mut Report) -> Result<(), String> {
    let toml = w.pipeline(
        "cold",
        "",
        &stage("echo", "demo::echo", "{ range = [0, 2] }", ""),
    )?;
    let py = ["cold", "--outdir", "{out}"];
    // One unmeasured run of each: page cache, venv bytecode.
    w.loky_run_plain(&toml, LIMIT)?;
    w.loky(&py, LIMIT)?;
    for i in 0..s.cold_reps {
        let a = w.loky_run_plain(&toml, LIMIT)?;
        let (b, _) = w.loky(&py, LIMIT)?;
        println!(
            "   rep {i}: loky-run {:.1} ms, loky {:.1} ms",
            ms(a.wall),
            ms(b.wall)
        );
        let r = rep.row(
            "1 cold start",
            "2-task run, process start → exit",
            "ms",
            Better::Lower,
        );
        r.goal = Some(Goal::AtMost(25.0));
        r.lr.push(ms(a.wall));
        r.loky.push(ms(b.wall));
        let r = rep.row(
            "1 cold start",
            "peak RSS of the main process",
            "MiB",
            Better::Lower,
        );
        r.lr.push(a.max_rss as f64 / MIB);
        r.loky.push(b.max_rss as f64 / MIB);
    }
    Ok(())
}

/// 2. Throughput of no-op tasks (echo of integers).
fn throughput(w: &W, s: &Sizes, rep: &mut Report) -> Result<(), String> {
    let n = s.throughput_n;
    let n1 = s.chunk1_n;
    let auto = w.pipeline(
        "auto",
        "",
        &stage("echo", "demo::echo", &format!("{{ range = [0, {n}] }}"), ""),
    )?;
    let one = w.pipeline(
        "one",
        "",
        &stage(
            "echo",
            "demo::echo",
            &format!("{{ range = [0, {n1}] }}"),
            "chunksize = 1",
        ),
    )?;
    let timed = w.pipeline_with(
        "timed",
        &format!(
            "joblog = {}",
            toml_str(&w.path("joblog.jsonl").display().to_string())
        ),
        "",
        &stage("echo", "demo::echo", &format!("{{ range = [0, {n}] }}"), ""),
    )?;
    let n_s = n.to_string();
    let n1_s = n1.to_string();

    // loky's best chunk size for this workload: one run of each candidate.
    let mut best = (0u64, f64::INFINITY);
    for &c in &s.sweep {
        let c_s = c.to_string();
        let (_, v) = w.loky(
            &[
                "throughput",
                "--n",
                &n_s,
                "--chunksize",
                &c_s,
                "--outdir",
                "{out}",
            ],
            LIMIT,
        )?;
        let t = f64_of(&v, "stage_s")?;
        println!(
            "   loky chunksize sweep: chunksize {c}: {} tasks/s",
            num(n as f64 / t)
        );
        if t < best.1 {
            best = (c, t);
        }
    }
    let best_c = best.0.to_string();
    println!("   loky's best chunksize: {best_c}");
    write_best_chunksize(w.env, best.0);

    for i in 0..s.reps {
        let (a, ev) = w.loky_run(&auto, LIMIT, |_, _| {})?;
        let a_stage = ev.stage("echo")?;
        let (b, v) = w.loky(
            &[
                "throughput",
                "--n",
                &n_s,
                "--chunksize",
                &best_c,
                "--outdir",
                "{out}",
            ],
            LIMIT,
        )?;
        let b_stage = f64_of(&v, "stage_s")?;
        let (_, v) = w.loky(&["throughput", "--n", &n_s, "--chunksize", &best_c], LIMIT)?;
        let b_noout = f64_of(&v, "stage_s")?;
        let (_, ev1) = w.loky_run(&one, LIMIT, |_, _| {})?;
        let a1 = ev1.stage("echo")?;
        let (_, evj) = w.loky_run(&timed, LIMIT, |_, _| {})?;
        let aj = evj.stage("echo")?;
        let _ = fs::remove_file(w.path("joblog.jsonl"));
        let (_, v) = w.loky(
            &[
                "throughput",
                "--n",
                &n1_s,
                "--chunksize",
                "1",
                "--outdir",
                "{out}",
            ],
            LIMIT,
        )?;
        let b1 = f64_of(&v, "stage_s")?;
        println!(
            "   rep {i}: loky-run {} tasks/s (process {:.0} ms), loky chunksize {best_c} {} tasks/s ({} without output), chunksize 1: loky-run {} vs loky {} tasks/s",
            num(n as f64 / a_stage),
            ms(a.wall),
            num(n as f64 / b_stage),
            num(n as f64 / b_noout),
            num(n1 as f64 / a1),
            num(n1 as f64 / b1),
        );
        let metric = format!(
            "{n} echo tasks, stage time (loky: best chunksize {best_c}, warm pool), output written"
        );
        let r = rep.row("2 throughput", &metric, "tasks/s", Better::Higher);
        r.goal = Some(Goal::AtLeast(1e6));
        r.lr.push(n as f64 / a_stage);
        r.loky.push(n as f64 / b_stage);
        let r = rep.row(
            "2 throughput",
            "same, loky not writing its results (loky-run still writes)",
            "tasks/s",
            Better::Higher,
        );
        r.lr.push(n as f64 / a_stage);
        r.loky.push(n as f64 / b_noout);
        let r = rep.row(
            "2 throughput",
            "diag: same stage with a joblog (every task timed, a line each)",
            "tasks/s",
            Better::Higher,
        );
        r.lr.push(n as f64 / aj);
        let r = rep.row(
            "2 throughput",
            "same, whole process start → exit",
            "tasks/s",
            Better::Higher,
        );
        r.goal = Some(Goal::AtLeast(1e6));
        r.lr.push(n as f64 / a.wall.as_secs_f64());
        r.loky.push(n as f64 / b.wall.as_secs_f64());
        let metric = format!(
            "chunksize = 1 on both, {n1} tasks (capped: 1M at loky's rate would take minutes; rate scales)"
        );
        let r = rep.row("2 throughput", &metric, "tasks/s", Better::Higher);
        r.lr.push(n1 as f64 / a1);
        r.loky.push(n1 as f64 / b1);
    }
    Ok(())
}

/// The pipeline workload uses loky's best chunk size from the throughput sweep when it ran.
fn write_best_chunksize(env: &Env, c: u64) {
    let _ = fs::write(env.work.join("loky-best-chunksize"), c.to_string());
}

fn read_best_chunksize(env: &Env) -> Option<u64> {
    fs::read_to_string(env.work.join("loky-best-chunksize"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// 3. One task at a time: each chunk of one task is sent when the previous result is back.
fn latency_workload(w: &W, s: &Sizes, rep: &mut Report) -> Result<(), String> {
    let task = latency::task_index(&w.env.plugin, "echo")?;
    let exe = &w.env.self_exe;
    let n = s.latency_n;
    let nl = s.loky_latency_n.to_string();
    let us = |v: &[u64], q: f64| {
        let xs: Vec<f64> = v.iter().map(|&x| x as f64 / 1e3).collect();
        quantile(&xs, q)
    };
    for i in 0..s.reps {
        let a = latency::via_pool(&w.env.plugin, task, n, 1000, Launcher::Local)
            .map_err(|e| e.to_string())?;
        let (_, v) = w.loky(&["latency", "--n", &nl], LIMIT)?;
        let b: Vec<u64> = v["samples_ns"]
            .as_array()
            .ok_or("no samples from loky")?
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        let d = latency::direct(&w.env.plugin, task, n, 1000).map_err(|e| e.to_string())?;
        let f0 = latency::floor(exe, latency::Floor::Bare, n, 1000).map_err(|e| e.to_string())?;
        let f1 =
            latency::floor(exe, latency::Floor::WorkerHop, n, 1000).map_err(|e| e.to_string())?;
        let f2 =
            latency::floor(exe, latency::Floor::BothHops, n, 1000).map_err(|e| e.to_string())?;
        println!(
            "   rep {i}: p50/p99 µs: loky-run pool {:.1}/{:.1}, loky {:.0}/{:.0}; worker read directly {:.1}; pipe floor {:.1}, +worker hop {:.1}, +both hops {:.1}",
            us(&a, 0.5),
            us(&a, 0.99),
            us(&b, 0.5),
            us(&b, 0.99),
            us(&d, 0.5),
            us(&f0, 0.5),
            us(&f1, 0.5),
            us(&f2, 0.5)
        );
        let r = rep.row(
            "3 latency",
            "one-at-a-time round trip p50 (loky-run: Pool::send_chunk → next_event)",
            "µs",
            Better::Lower,
        );
        r.goal = Some(Goal::AtMost(20.0));
        r.lr.push(us(&a, 0.5));
        r.loky.push(us(&b, 0.5));
        let r = rep.row(
            "3 latency",
            "one-at-a-time round trip p99",
            "µs",
            Better::Lower,
        );
        r.lr.push(us(&a, 0.99));
        r.loky.push(us(&b, 0.99));
        for (metric, v) in [
            (
                "diag: p50, worker spawned by spawn_worker, results read on the calling thread",
                &d,
            ),
            (
                "diag: p50, pipe floor: bare ping-pong of a 32-byte frame",
                &f0,
            ),
            (
                "diag: p50, pipe floor + thread/channel hop in the echo process",
                &f1,
            ),
            (
                "diag: p50, pipe floor + thread/channel hops on both sides",
                &f2,
            ),
        ] {
            rep.row("3 latency", metric, "µs", Better::Lower)
                .lr
                .push(us(v, 0.5));
        }
    }
    Ok(())
}

/// 4. Three stages of N tasks (square, cpu n=1, echo), one pool reused.
fn pipeline(w: &W, s: &Sizes, rep: &mut Report) -> Result<(), String> {
    let n = s.pipeline_n;
    let ones = w.path("ones.jsonl");
    fs::write(&ones, "1\n".repeat(n as usize)).map_err(|e| e.to_string())?;
    let stages = stage(
        "squares",
        "demo::square",
        &format!("{{ range = [0, {n}] }}"),
        "",
    ) + &stage(
        "work",
        "demo::cpu",
        &format!("{{ file = {} }}", toml_str(&ones.display().to_string())),
        "",
    ) + &stage("copied", "demo::echo", "{ from = \"squares\" }", "");
    let toml = w.pipeline("pipe", "", &stages)?;
    // loky's chunk size: its best from the throughput sweep, at most n / 8 so both workers
    // get several chunks.
    let chunk = read_best_chunksize(w.env)
        .unwrap_or(1_000)
        .min((n / 8).max(1));
    let chunk_s = chunk.to_string();
    let n_s = n.to_string();
    println!("   loky chunksize {chunk}; loky's cpu task is the same loop in Python");
    for i in 0..s.reps {
        let (a, ev) = w.loky_run(&toml, LIMIT, |_, _| {})?;
        if ev.decisions != ["start", "reuse", "reuse"] {
            return Err(format!(
                "expected start, reuse, reuse; got {:?}",
                ev.decisions
            ));
        }
        let (b, v) = w.loky(
            &[
                "pipeline",
                "--n",
                &n_s,
                "--chunksize",
                &chunk_s,
                "--outdir",
                "{out}",
            ],
            LIMIT,
        )?;
        let b_stages: Vec<f64> = v["stage_s"]
            .as_array()
            .ok_or("no stage times")?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        println!(
            "   rep {i}: loky-run {:.0} ms, loky {:.0} ms",
            ms(a.wall),
            ms(b.wall)
        );
        let r = rep.row(
            "4 pipeline",
            &format!("3 stages × {n} tasks, whole run process start → exit"),
            "ms",
            Better::Lower,
        );
        r.lr.push(ms(a.wall));
        r.loky.push(ms(b.wall));
        for (k, (name, label)) in [
            ("squares", "square"),
            ("work", "cpu n=1 (loky: Python loop)"),
            ("copied", "echo"),
        ]
        .iter()
        .enumerate()
        {
            let r = rep.row("4 pipeline", &format!("stage {label}"), "ms", Better::Lower);
            r.lr.push(ev.stage(name)? * 1e3);
            r.loky
                .push(b_stages.get(k).copied().unwrap_or(f64::NAN) * 1e3);
        }
    }
    Ok(())
}

/// Workload 5, restart: stages of 2 tasks with `kill_workers = true`, against the same stages
/// with the pool reused; the difference isolates the cost of one restart.
fn restart(w: &W, s: &Sizes, rep: &mut Report) -> Result<(), String> {
    let k = s.restart_stages;
    let stages = |kill: bool| {
        (0..k)
            .map(|i| {
                stage(
                    &format!("s{i:02}"),
                    "demo::echo",
                    "{ range = [0, 2] }",
                    if kill { "kill_workers = true" } else { "" },
                )
            })
            .collect::<String>()
    };
    let kill = w.pipeline("kill", "", &stages(true))?;
    let reuse = w.pipeline("reuse", "", &stages(false))?;
    let k_s = k.to_string();
    for i in 0..s.reps {
        let (a_kill, ev_kill) = w.loky_run(&kill, LIMIT, |_, _| {})?;
        let restarts = ev_kill.decisions.iter().filter(|d| *d == "restart").count();
        if restarts != k - 1 {
            return Err(format!("expected {} restarts, saw {restarts}", k - 1));
        }
        let (b_kill, v_kill) = w.loky(&["restart", "--stages", &k_s], LIMIT)?;
        let (_, ev_reuse) = w.loky_run(&reuse, LIMIT, |_, _| {})?;
        let (_, v_reuse) = w.loky(&["restart", "--stages", &k_s, "--reuse"], LIMIT)?;
        let iters = |v: &Value| -> Vec<f64> {
            v["iter_s"]
                .as_array()
                .map(|a| a.iter().skip(1).filter_map(Value::as_f64).collect())
                .unwrap_or_default()
        };
        // loky-run: the mean period between stage ends over the 19 stages after the first,
        // from the event log; loky: the median iteration after the first.
        let lr_kill = ev_kill.stage_period_ms();
        let lr_reuse = ev_reuse.stage_period_ms();
        let loky_kill = median(&iters(&v_kill)) * 1e3;
        let loky_reuse = median(&iters(&v_reuse)) * 1e3;
        println!(
            "   rep {i}: stage on a restarted pool: loky-run {lr_kill:.2} ms, loky {loky_kill:.1} ms; on a reused pool: {lr_reuse:.2} vs {loky_reuse:.2} ms; whole run {:.0} vs {:.0} ms",
            ms(a_kill.wall),
            ms(b_kill.wall)
        );
        let r = rep.row(
            "5 restart",
            "2-task stage on a restarted pool (kill_workers = true)",
            "ms",
            Better::Lower,
        );
        r.lr.push(lr_kill);
        r.loky.push(loky_kill);
        let r = rep.row(
            "5 restart",
            "2-task stage on a reused pool",
            "ms",
            Better::Lower,
        );
        r.lr.push(lr_reuse);
        r.loky.push(loky_reuse);
        let restarts = latency::pool_restarts(&w.env.plugin, k - 1, Launcher::Local)
            .map_err(|e| e.to_string())?;
        let total: Vec<f64> = restarts
            .iter()
            .map(|(stop, start)| (stop + start) as f64 / 1e6)
            .collect();
        let stops: Vec<f64> = restarts
            .iter()
            .map(|(stop, _)| *stop as f64 / 1e6)
            .collect();
        let starts: Vec<f64> = restarts
            .iter()
            .map(|(_, start)| *start as f64 / 1e6)
            .collect();
        println!(
            "   rep {i}: restart of the 2-worker pool through the library: {:.2} ms (stop {:.2} + start to READY {:.2}); loky {:.1} ms",
            median(&total),
            median(&stops),
            median(&starts),
            loky_kill - loky_reuse
        );
        let r = rep.row(
            "5 restart",
            "restart of the 2-worker pool (loky-run: Pool::apply(restart) + fill until both READY, median of 19; loky: restarted − reused stage)",
            "ms",
            Better::Lower,
        );
        r.goal = Some(Goal::AtMost(5.0));
        r.lr.push(median(&total));
        r.loky.push(loky_kill - loky_reuse);
        let r = rep.row(
            "5 restart",
            "diag: of which stopping the old workers (graceful shutdown, reaped)",
            "ms",
            Better::Lower,
        );
        r.lr.push(median(&stops));
        let r = rep.row(
            "5 restart",
            "diag: of which starting 2 workers until READY",
            "ms",
            Better::Lower,
        );
        r.lr.push(median(&starts));
        let r = rep.row(
            "5 restart",
            "whole-stage difference, restarted − reused stage (from the runs above)",
            "ms",
            Better::Lower,
        );
        r.lr.push(lr_kill - lr_reuse);
        r.loky.push(loky_kill - loky_reuse);
        let r = rep.row(
            "5 restart",
            &format!("{k} stages with kill_workers, process start → exit"),
            "ms",
            Better::Lower,
        );
        r.lr.push(ms(a_kill.wall));
        r.loky.push(ms(b_kill.wall));
    }
    Ok(())
}

/// 6. Payload: N tasks echoing a 1 MiB string.
fn payload(w: &W, s: &Sizes, rep: &mut Report) -> Result<(), String> {
    let n = s.payload_n;
    let size = s.payload_size;
    let input = w.path("payload.jsonl");
    {
        let mut f = BufWriter::new(File::create(&input).map_err(|e| e.to_string())?);
        let line = format!("\"{}\"\n", "x".repeat(size));
        for _ in 0..n {
            f.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
        }
        let f = f.into_inner().map_err(|e| e.to_string())?;
        // Written back now, not while the first repetition runs.
        f.sync_all().map_err(|e| e.to_string())?;
    }
    let toml = w.pipeline(
        "payload",
        "",
        &stage(
            "echo",
            "demo::echo",
            &format!("{{ file = {} }}", toml_str(&input.display().to_string())),
            "",
        ),
    )?;
    let n_s = n.to_string();
    let size_s = size.to_string();
    let mb = n as f64 * size as f64 / 1e6;
    let limit = Duration::from_secs(300);
    for i in 0..s.payload_reps {
        let (a_run, ev) = w.loky_run(&toml, limit, |_, _| {})?;
        let a = ev.stage("echo")?;
        let (b_run, v) = w.loky(
            &[
                "payload", "--n", &n_s, "--size", &size_s, "--outdir", "{out}",
            ],
            limit,
        )?;
        let b = f64_of(&v, "stage_s")?;
        println!(
            "   rep {i}: loky-run {:.0} MB/s ({:.2} s), loky {:.0} MB/s ({:.2} s)",
            mb / a,
            a,
            mb / b,
            b
        );
        let r = rep.row(
            "6 payload",
            &format!(
                "{n} tasks echoing a {} MiB string, stage time, output written (loky: chunksize 1, warm pool)",
                size >> 20
            ),
            "MB/s",
            Better::Higher,
        );
        r.goal = Some(Goal::RatioAtLeast(3.0));
        r.lr.push(mb / a);
        r.loky.push(mb / b);
        let r = rep.row(
            "6 payload",
            "same, whole process start → exit (loky-run also checks and fingerprints the input file first)",
            "MB/s",
            Better::Higher,
        );
        r.lr.push(mb / a_run.wall.as_secs_f64());
        r.loky.push(mb / b_run.wall.as_secs_f64());
    }
    let _ = fs::remove_file(&input);
    Ok(())
}

/// 7. RSS of idle workers (loky-run: while a stage sleeps in both workers).
fn rss(w: &W, s: &Sizes, rep: &mut Report) -> Result<(), String> {
    let sleep = s.rss_sleep_ms;
    let toml = w.pipeline(
        "rss",
        "",
        &stage(
            "sleep",
            "demo::sleep_ms",
            &format!("{{ items = [{sleep}, {sleep}] }}"),
            "",
        ),
    )?;
    let settle = Duration::from_millis(sleep / 3);
    for i in 0..s.reps {
        let mut seen: Vec<(u32, proc::Rss)> = Vec::new();
        let mut runner = proc::Rss::default();
        let (_, _ev) = w.loky_run(&toml, LIMIT, |pid, events| {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut pids = Vec::new();
            while pids.len() < 2 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
                pids = Events::read(events).worker_pids;
            }
            std::thread::sleep(settle);
            for p in pids {
                if let Some(r) = proc::rss_of(p) {
                    seen.push((p, r));
                }
            }
            runner = proc::rss_of(pid).unwrap_or_default();
        })?;
        if seen.len() != 2 {
            return Err(format!(
                "read the RSS of {} loky-run workers, not 2",
                seen.len()
            ));
        }
        let (_, v) = w.loky(
            &["rss", "--settle-ms", &settle.as_millis().to_string()],
            LIMIT,
        )?;
        let workers = v["workers"].as_array().ok_or("no workers from loky")?;
        let kb = |key: &str| -> Vec<f64> {
            workers
                .iter()
                .filter_map(|x| x[key].as_f64())
                .map(|k| k / 1024.0)
                .collect()
        };
        let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
        let lr_rss: Vec<f64> = seen.iter().map(|(_, r)| r.rss as f64 / MIB).collect();
        let lr_anon: Vec<f64> = seen.iter().map(|(_, r)| r.anon as f64 / MIB).collect();
        let lr_file: Vec<f64> = seen.iter().map(|(_, r)| r.file as f64 / MIB).collect();
        println!(
            "   rep {i}: idle worker VmRSS loky-run {:.2} MiB (anon {:.2}, file {:.2}), loky {:.2} MiB (anon {:.2}, file {:.2}); runner {:.2} MiB",
            mean(&lr_rss),
            mean(&lr_anon),
            mean(&lr_file),
            mean(&kb("VmRSS")),
            mean(&kb("RssAnon")),
            mean(&kb("RssFile")),
            runner.rss as f64 / MIB
        );
        let r = rep.row(
            "7 idle worker RSS",
            "VmRSS per worker (mean of 2)",
            "MiB",
            Better::Lower,
        );
        r.goal = Some(Goal::AtMost(5.0));
        r.lr.push(mean(&lr_rss));
        r.loky.push(mean(&kb("VmRSS")));
        let r = rep.row(
            "7 idle worker RSS",
            "of which RssAnon",
            "MiB",
            Better::Lower,
        );
        r.lr.push(mean(&lr_anon));
        r.loky.push(mean(&kb("RssAnon")));
        let r = rep.row(
            "7 idle worker RSS",
            "of which RssFile (shared libraries, binary)",
            "MiB",
            Better::Lower,
        );
        r.lr.push(mean(&lr_file));
        r.loky.push(mean(&kb("RssFile")));
        let r = rep.row(
            "7 idle worker RSS",
            "main process (runner / loky parent) VmRSS",
            "MiB",
            Better::Lower,
        );
        r.lr.push(runner.rss as f64 / MIB);
        r.loky
            .push(v["parent"]["VmRSS"].as_f64().unwrap_or(f64::NAN) / 1024.0);
    }
    Ok(())
}

/// Runner peak RSS for many echo tasks (memory must stay flat in the number of tasks).
fn memory(w: &W, s: &Sizes, rep: &mut Report) -> Result<(), String> {
    let n = s.memory_n;
    let toml = w.pipeline(
        "memory",
        "",
        &stage("echo", "demo::echo", &format!("{{ range = [0, {n}] }}"), ""),
    )?;
    for i in 0..s.memory_reps {
        let (a, ev) = w.loky_run(&toml, Duration::from_secs(300), |_, _| {})?;
        let t = ev.stage("echo")?;
        let worker_peak = ev.worker_peaks.iter().copied().max().unwrap_or(0);
        println!(
            "   rep {i}: runner peak RSS {:.1} MB (workers ≤ {:.1} MB), {} tasks/s, process {:.2} s",
            a.max_rss as f64 / 1e6,
            worker_peak as f64 / 1e6,
            num(n as f64 / t),
            a.wall.as_secs_f64()
        );
        let r = rep.row(
            "8 memory",
            &format!("runner peak RSS, {n} echo tasks (wait4 ru_maxrss)"),
            "MB",
            Better::Lower,
        );
        r.goal = Some(Goal::AtMost(100.0));
        r.lr.push(a.max_rss as f64 / 1e6);
        let r = rep.row(
            "8 memory",
            &format!("{n} echo tasks, stage throughput"),
            "tasks/s",
            Better::Higher,
        );
        r.goal = Some(Goal::AtLeast(1e6));
        r.lr.push(n as f64 / t);
    }
    println!("   (loky is not run at {n} tasks: that alone would take minutes)");
    Ok(())
}

/// Workload 9, makespan: a few long tasks on as many workers, a straggler among short tasks,
/// and uniform 100 ms tasks, on a fresh pool each. How close the wall time of the stage comes
/// to the ideal (the work divided among the workers, or the longest task).
fn makespan(w: &W, s: &Sizes, rep: &mut Report) -> Result<(), String> {
    // (name, workers, task durations in ms, chunksize, what it shows)
    let straggler: Vec<u64> = (0..2_001)
        .map(|i| if i == 1_000 { 5_000 } else { 5 })
        .collect();
    let cases: [(&str, usize, Vec<u64>, &str, &str); 3] = [
        (
            "nxn",
            4,
            vec![2_000; 4],
            "auto",
            "4 tasks of 2 s on 4 fresh workers (ideal 2 s)",
        ),
        (
            "straggler",
            2,
            straggler,
            "auto",
            "1 task of 5 s among 2,000 of 5 ms, 2 workers (ideal 7.5 s)",
        ),
        (
            "uniform",
            2,
            vec![100; 100],
            "auto",
            "100 tasks of 100 ms, 2 workers, chunksize auto (ideal 5 s)",
        ),
    ];
    for (name, workers, items, chunk, label) in cases {
        let total_ms: u64 = items.iter().sum();
        let longest = items.iter().copied().max().unwrap_or(0);
        let ideal_s = (total_ms as f64 / workers as f64).max(longest as f64) / 1e3;
        let list: Vec<String> = items.iter().map(u64::to_string).collect();
        let toml = w.pipeline(
            name,
            "",
            &stage(
                name,
                "demo::sleep_ms",
                &format!("{{ items = [{}] }}", list.join(", ")),
                &format!("max_workers = {workers}\nchunksize = {}", toml_chunk(chunk)),
            ),
        )?;
        let items_file = w.path(&format!("{name}.json"));
        fs::write(
            &items_file,
            serde_json::to_string(&items).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let items_arg = items_file.display().to_string();
        let workers_arg = workers.to_string();
        for i in 0..s.makespan_reps {
            let (_, ev) = w.loky_run(&toml, LIMIT, |_, _| {})?;
            let lr = ev.stage(name)?;
            let (_, v) = w.loky(
                &["makespan", "--items", &items_arg, "--workers", &workers_arg],
                LIMIT,
            )?;
            let loky = f64_of(&v, "makespan_s")?;
            println!(
                "   {name} rep {i}: loky-run {lr:.3} s ({:.3} × ideal), loky {loky:.3} s",
                lr / ideal_s
            );
            let r = rep.row("9 makespan", label, "× ideal", Better::Lower);
            r.goal = Some(Goal::AtMost(if name == "nxn" { 1.10 } else { 1.05 }));
            r.lr.push(lr / ideal_s);
            r.loky.push(loky / ideal_s);
        }
    }
    Ok(())
}

fn toml_chunk(chunk: &str) -> String {
    match chunk.parse::<u64>() {
        Ok(n) => n.to_string(),
        Err(_) => toml_str(chunk),
    }
}

//! How one runner scales with many remote workers over TCP (issue 16, item 4).
//!
//! ```sh
//! cargo run --release -p bench -- scaling [--workers 16,64,128] [--reps 2]
//! ```
//!
//! Each measurement is the real `loky-run` binary running a pipeline with `launcher = "slurm"`:
//! the runner binds its TCP listener (on the loopback, `LOKY_RUN_LISTEN=127.0.0.1:0`), hands
//! every worker a one-use token and starts it with `srun ... loky-run __worker`, and the worker
//! connects back and speaks the remote protocol (reader thread, keepalive, results over the
//! socket), exactly as on a cluster. Only `srun` is not Slurm's: a 3-line script first on
//! `PATH` drops srun's options and `exec`s the worker command, so the worker is the process the
//! runner thinks is srun, and a fake `SLURM_JOB_ID` lets the launcher start. What is left out is
//! what Slurm adds per step (~10 ms to start one, see BENCHMARKS.md), which is paid once per
//! worker, never per task.
//!
//! The pipeline has two stages on one pool: `warm` (2 × workers tasks of 300 ms, chunksize 1,
//! so that every worker has connected, loaded the plugin and run something) and `measure`, the
//! measured one. Per measurement:
//!
//! - tasks/s: the measured stage's tasks ÷ its `wall_time_s` (`stage_finished` event);
//! - the runner's CPU over the stage: `/proc/<runner>/stat` utime + stime (all its threads),
//!   sampled every 5 ms by this process and interpolated at the stage's start and end (10 ms
//!   clock ticks: stages are made long enough for that to be noise);
//! - per-task runner CPU = that ÷ tasks; the runner's CPU per 1,000 tasks/s follows (1 µs per
//!   task is 1 ms of CPU per second at 1,000 tasks/s, 0.1 % of a core);
//! - the runner's peak RSS (`VmHWM`, read every 100 ms);
//! - the machine's busy CPU over the stage (`/proc/stat`, both cores, everything running:
//!   runner, workers, this sampler, and whatever else runs on the machine).
//!
//! Then the same-machine peer: HyperQueue's `LocalCluster` from the `hyperqueue` wheel
//! (`bench/hq_scaling.py`, in a venv under the target directory), one worker of as many cores,
//! one job of N `/bin/true` (and `/bin/sleep 0.001`) program tasks.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::proc;

struct Options {
    workers: Vec<usize>,
    noop_tasks: u64,
    chunk1_tasks: u64,
    sleep_tasks: u64,
    reps: usize,
    build: bool,
    hq: bool,
    hq_tasks: u64,
}

fn usage() -> &'static str {
    "usage: cargo run --release -p bench -- scaling [--workers 16,64,128] [--reps N]\n\
     \x20   [--noop-tasks N] [--chunk1-tasks N] [--sleep-tasks N] [--hq-tasks N] [--no-hq] [--no-build]\n\
     many remote workers over TCP (the Slurm launcher's path, srun replaced by exec) on this\n\
     machine: tasks/s and the runner's CPU per task; then HyperQueue's LocalCluster"
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        workers: vec![16, 64, 128],
        noop_tasks: 1_000_000,
        chunk1_tasks: 100_000,
        sleep_tasks: 50_000,
        reps: 1,
        build: true,
        hq: true,
        hq_tasks: 3_000,
    };
    let mut it = args.iter();
    let number = |v: Option<&String>, what: &str| -> Result<u64, String> {
        v.and_then(|v| v.replace('_', "").parse::<u64>().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{what} takes a number ≥ 1"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--workers" => {
                let list = it.next().ok_or("--workers takes a list, e.g. 16,64,128")?;
                o.workers = list
                    .split(',')
                    .map(|w| w.trim().parse::<usize>().ok().filter(|&w| w > 0))
                    .collect::<Option<Vec<_>>>()
                    .ok_or("--workers takes a list of numbers ≥ 1, e.g. 16,64,128")?;
            }
            "--noop-tasks" => o.noop_tasks = number(it.next(), a)?,
            "--chunk1-tasks" => o.chunk1_tasks = number(it.next(), a)?,
            "--sleep-tasks" => o.sleep_tasks = number(it.next(), a)?,
            "--hq-tasks" => o.hq_tasks = number(it.next(), a)?,
            "--reps" => o.reps = number(it.next(), a)? as usize,
            "--no-build" => o.build = false,
            "--no-hq" => o.hq = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

pub(crate) fn main(args: &[String]) -> i32 {
    crate::subcommand("scaling", args, parse, usage(), |o| run(o).map(|()| true))
}

struct Paths {
    root: PathBuf,
    target: PathBuf,
    work: PathBuf,
    loky_run: PathBuf,
    plugin: PathBuf,
    fakebin: PathBuf,
}

fn setup(opts: &Options) -> Result<Paths, String> {
    let (root, target) = crate::build::dirs()?;
    if opts.build {
        crate::build::release(&root, "demo")?;
    }
    let work = target.join("bench-work/scaling");
    let fakebin = work.join("fakebin");
    fs::create_dir_all(&fakebin).map_err(|e| format!("{}: {e}", fakebin.display()))?;
    // Private copies: a rebuild while this runs must not change what is measured.
    let (loky_run, plugin) = crate::build::private_copies(&target, &work.join("bin"), "demo")?;
    // srun stands for the step; here it becomes the worker itself (its options dropped), so
    // the runner's view (a child process whose exit is the worker's, a TCP connection with a
    // token) is the same. scancel has nothing to cancel.
    let scripts = [
        (
            "srun",
            "#!/bin/sh\n# bench scaling: srun's options dropped, the worker exec'd in its place\n\
             while [ $# -gt 0 ]; do case \"$1\" in -*) shift ;; *) break ;; esac; done\n\
             exec \"$@\"\n",
        ),
        ("scancel", "#!/bin/sh\nexit 0\n"),
    ];
    for (name, text) in scripts {
        let path = fakebin.join(name);
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Paths {
        root,
        target,
        work,
        loky_run,
        plugin,
        fakebin,
    })
}

#[derive(Clone, Copy)]
enum Kind {
    /// `demo::echo` over a range, chunk sizes automatic: the dispatcher's throughput.
    Noop,
    /// `demo::echo`, `chunksize = 1`: one frame each way per task, as a per-task scheduler.
    NoopChunk1,
    /// `demo::sleep_ms(1)`, chunk sizes automatic.
    Sleep1ms,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Noop => "no-op (echo), chunks auto",
            Kind::NoopChunk1 => "no-op (echo), chunksize 1",
            Kind::Sleep1ms => "1 ms sleep, chunks auto",
        }
    }

    fn tasks(self, o: &Options) -> u64 {
        match self {
            Kind::Noop => o.noop_tasks,
            Kind::NoopChunk1 => o.chunk1_tasks,
            Kind::Sleep1ms => o.sleep_tasks,
        }
    }
}

struct Row {
    rep: usize,
    workers: usize,
    kind: Kind,
    tasks: u64,
    ok: u64,
    wall_s: f64,
    runner_cpu_s: f64,
    machine_busy: f64,
    ready_before: usize,
    rejected: usize,
    output_bytes: u64,
    run_wall_s: f64,
    tree_cpu_s: f64,
    /// The runner's `VmHWM` (peak RSS) as last sampled, bytes.
    runner_peak_rss: u64,
}

impl Row {
    fn tasks_per_s(&self) -> f64 {
        self.tasks as f64 / self.wall_s
    }

    fn cpu_per_task_us(&self) -> f64 {
        self.runner_cpu_s * 1e6 / self.tasks as f64
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

fn pipeline(p: &Paths, dir: &Path, workers: usize, kind: Kind, n: u64) -> Result<PathBuf, String> {
    let warm: Vec<String> = (0..2 * workers).map(|_| "300".to_owned()).collect();
    let (task, input, extra) = match kind {
        Kind::Noop => ("demo::echo", format!("{{ range = [0, {n}] }}"), ""),
        Kind::NoopChunk1 => (
            "demo::echo",
            format!("{{ range = [0, {n}] }}"),
            "chunksize = 1\n",
        ),
        Kind::Sleep1ms => {
            let file = dir.join("ones.jsonl");
            fs::write(&file, "1\n".repeat(n as usize))
                .map_err(|e| format!("{}: {e}", file.display()))?;
            ("demo::sleep_ms", "{ file = \"ones.jsonl\" }".to_owned(), "")
        }
    };
    let text = format!(
        "[pipeline]\nname = \"scaling\"\nplugins = [{plugin}]\noutput_dir = \"out\"\n\n\
         [pool]\nmax_workers = {workers}\nlauncher = \"slurm\"\n\n\
         [[stage]]\nname = \"warm\"\ntask = \"demo::sleep_ms\"\ninput = {{ items = [{warm}] }}\nchunksize = 1\n\n\
         [[stage]]\nname = \"measure\"\ntask = \"{task}\"\ninput = {input}\n{extra}",
        plugin = toml_str(&p.plugin.to_string_lossy()),
        warm = warm.join(", "),
    );
    let path = dir.join("scaling.toml");
    fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Seconds since midnight UTC, as the event log's `time` reads (`2026-12-02T02:41:41.123Z`).
fn time_of_day(t: &str) -> f64 {
    let Some(clock) = t.split('T').nth(1) else {
        return f64::NAN;
    };
    let mut parts = clock
        .trim_end_matches('Z')
        .split(':')
        .map(|p| p.parse::<f64>().unwrap_or(f64::NAN));
    let (h, m, s) = (
        parts.next().unwrap_or(f64::NAN),
        parts.next().unwrap_or(f64::NAN),
        parts.next().unwrap_or(f64::NAN),
    );
    h * 3600.0 + m * 60.0 + s
}

fn now_of_day() -> f64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_nanos()) / 1e9
}

/// One sample: time of day, the runner's CPU seconds, the machine's busy CPU seconds.
type Sample = (f64, f64, f64);

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of `pid` (all its threads) in seconds; `None` once it is gone or a zombie.
fn process_cpu(pid: u32, tick: f64) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.first() == Some(&"Z") {
        return None;
    }
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / tick)
}

/// `VmHWM` of `pid` (its peak RSS so far), bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Busy CPU seconds of the whole machine (all CPUs, everything but idle and iowait).
fn machine_busy(tick: f64) -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return f64::NAN;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    busy / tick
}

fn sample(samples: &[Sample], t: f64, pick: impl Fn(&Sample) -> f64) -> f64 {
    let Some(after) = samples.iter().position(|s| s.0 >= t) else {
        return samples.last().map_or(f64::NAN, &pick);
    };
    if after == 0 {
        return pick(&samples[0]);
    }
    let (a, b) = (&samples[after - 1], &samples[after]);
    let f = if b.0 > a.0 {
        (t - a.0) / (b.0 - a.0)
    } else {
        1.0
    };
    pick(a) + (pick(b) - pick(a)) * f
}

fn run_one(p: &Paths, workers: usize, kind: Kind, n: u64) -> Result<Row, String> {
    let dir = p.work.join(format!("run-{workers}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let pipeline = pipeline(p, &dir, workers, kind, n)?;
    let events = dir.join("events.jsonl");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut path_with_fake = p.fakebin.clone().into_os_string();
    path_with_fake.push(":");
    path_with_fake.push(path);
    let mut cmd = Command::new(&p.loky_run);
    cmd.arg("run")
        .arg(&pipeline)
        .args(["--progress", "never", "-q", "--events"])
        .arg(&events)
        .current_dir(&dir)
        .env("PATH", path_with_fake)
        .env("SLURM_JOB_ID", "bench-scaling")
        .env("LOKY_RUN_LISTEN", "127.0.0.1:0")
        .env("LOKY_RUN_CACHE_DIR", dir.join("cache"));
    for v in [
        "SLURM_STEP_ID",
        "SLURM_NTASKS",
        "SLURM_NPROCS",
        "SLURM_CPUS_PER_TASK",
        "SLURM_JOBID",
    ] {
        cmd.env_remove(v);
    }
    let tick = clock_ticks();
    let mut sampler = None;
    let finished = proc::run(&mut cmd, &dir, Duration::from_secs(180), |pid| {
        sampler = Some(std::thread::spawn(move || {
            let mut samples: Vec<Sample> = Vec::with_capacity(1 << 14);
            let mut peak = 0;
            while let Some(cpu) = process_cpu(pid, tick) {
                samples.push((now_of_day(), cpu, machine_busy(tick)));
                if samples.len() % 20 == 1 {
                    peak = peak_rss(pid).unwrap_or(peak);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (samples, peak)
        }));
    });
    let (samples, runner_peak_rss) = sampler
        .map(|s| s.join().unwrap_or_default())
        .unwrap_or_default();
    let finished = finished?;
    let text = fs::read_to_string(&events).map_err(|e| format!("{}: {e}", events.display()))?;
    let mut readies = Vec::new();
    let mut rejected = 0;
    let mut stage = None;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let time = time_of_day(v["time"].as_str().unwrap_or(""));
        match v["event"].as_str() {
            Some("worker_ready") => readies.push(time),
            Some("connection_rejected") => rejected += 1,
            Some("connections_rejected") => {
                rejected += v["count"].as_u64().unwrap_or(0) as usize;
            }
            Some("stage_finished") if v["stage"] == "measure" => stage = Some((time, v)),
            _ => {}
        }
    }
    let (end, v) = stage.ok_or("no stage_finished event for the measured stage")?;
    let wall_s = v["wall_time_s"].as_f64().unwrap_or(f64::NAN);
    let start = end - wall_s;
    let runner_cpu_s = sample(&samples, end, |s| s.1) - sample(&samples, start, |s| s.1);
    let machine = sample(&samples, end, |s| s.2) - sample(&samples, start, |s| s.2);
    let output_bytes = fs::metadata(dir.join("out/measure.jsonl")).map_or(0, |m| m.len());
    let row = Row {
        rep: 0,
        workers,
        kind,
        tasks: n,
        ok: v["ok"].as_u64().unwrap_or(0),
        wall_s,
        runner_cpu_s,
        machine_busy: machine / wall_s,
        ready_before: readies.iter().filter(|&&t| t <= start).count(),
        rejected,
        output_bytes,
        run_wall_s: finished.wall.as_secs_f64(),
        tree_cpu_s: finished.cpu.as_secs_f64(),
        runner_peak_rss,
    };
    let _ = fs::remove_dir_all(&dir);
    Ok(row)
}

fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "| rep | workers | tasks | kind | tasks/s | runner CPU per task | runner CPU per 1,000 tasks/s | \
         runner CPU (share of a core) | machine busy (of 2 cores) | stage wall | whole run | output | runner peak RSS |\n\
         | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let per_task = r.cpu_per_task_us();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.2} µs | {:.2} ms/s ({:.3} % of a core) | {:.0} % | {:.0} % | {:.2} s | {:.2} s | {:.1} MB/s | {:.1} MB |",
            r.rep,
            r.workers,
            si(r.tasks as f64),
            r.kind.label(),
            si(r.tasks_per_s()),
            per_task,
            per_task,
            per_task / 10.0,
            100.0 * r.runner_cpu_s / r.wall_s,
            100.0 * r.machine_busy,
            r.wall_s,
            r.run_wall_s,
            r.output_bytes as f64 / r.wall_s / 1e6,
            r.runner_peak_rss as f64 / 1e6,
        );
    }
    s
}

fn run(opts: &Options) -> Result<(), String> {
    let p = setup(opts)?;
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!(
        "== scaling over TCP: {} worker processes on {cpus} CPUs (the Slurm launcher's transport, \
         srun replaced by exec; runner binary {})",
        opts.workers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("/"),
        p.loky_run.display()
    );
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", load.trim());
    if opts.workers.iter().any(|&w| w > cpus) {
        println!(
            "note: more worker processes than the {cpus} CPUs: 1 ms tasks are CPU-oversubscribed \
             (every task's wakeup and result compete with the runner for 2 cores); the no-op rows \
             measure the dispatcher"
        );
    }
    let kinds = [Kind::Noop, Kind::NoopChunk1, Kind::Sleep1ms];
    let mut rows = Vec::new();
    for rep in 0..opts.reps {
        for &w in &opts.workers {
            for kind in kinds {
                let n = kind.tasks(opts);
                let mut r = run_one(&p, w, kind, n)
                    .map_err(|e| format!("{w} workers, {}: {e}", kind.label()))?;
                r.rep = rep + 1;
                println!(
                    "rep {}: {w:>4} workers, {:<27} {:>9} tasks/s, {:>6.2} µs runner CPU/task, \
                     {:.2} s (ok {}/{}, {} of {w} workers ready before the stage, {} connections \
                     rejected; whole tree CPU {:.1} s)",
                    rep + 1,
                    kind.label(),
                    si(r.tasks_per_s()),
                    r.cpu_per_task_us(),
                    r.wall_s,
                    r.ok,
                    r.tasks,
                    r.ready_before,
                    r.rejected,
                    r.tree_cpu_s,
                );
                rows.push(r);
            }
        }
    }
    println!("\n{}", table(&rows));
    if opts.hq {
        hyperqueue(&p, opts)?;
    }
    Ok(())
}

/// HyperQueue's LocalCluster, in a venv of its own under the target directory.
fn hyperqueue(p: &Paths, opts: &Options) -> Result<(), String> {
    let venv = p.target.join("hq-venv");
    let python = venv.join("bin/python");
    let has = |python: &Path| {
        Command::new(python)
            .args(["-c", "import hyperqueue"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&python) {
        println!("== installing hyperqueue into {}", venv.display());
        let made = python.exists()
            || Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .is_ok_and(|s| s.success());
        let installed = made
            && Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "hyperqueue"])
                .status()
                .is_ok_and(|s| s.success());
        if !installed || !has(&python) {
            println!(
                "hyperqueue could not be installed (python3 -m venv + pip install hyperqueue): \
                 comparing with its published figure only (< 0.1 ms of overhead per task)"
            );
            return Ok(());
        }
    }
    let version = Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('hyperqueue'))",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "\n== HyperQueue {version} LocalCluster (server + 1 worker in one Python process), one job of {} program tasks",
        opts.hq_tasks
    );
    let cores: Vec<String> = opts.workers.iter().map(ToString::to_string).collect();
    let scratch = p.work.join("hq");
    fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    println!(
        "| rep | worker cores | task | tasks | tasks/s | wall per task | HQ process CPU per task | task processes' CPU per task |\n\
         | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for rep in 0..opts.reps {
        for kind in ["true", "sleep"] {
            let mut cmd = Command::new(&python);
            cmd.arg(p.root.join("bench/hq_scaling.py"))
                .args(["--cores", &cores.join(","), "--kind", kind])
                .arg("--tasks")
                .arg(opts.hq_tasks.to_string())
                .current_dir(&scratch);
            let out = match proc::run(&mut cmd, &scratch, Duration::from_secs(300), |_| {}) {
                Ok(f) => f.stdout,
                Err(e) => {
                    println!("(rep {}, {kind}: HyperQueue run failed: {e})", rep + 1);
                    continue;
                }
            };
            for line in out.lines().filter(|l| l.starts_with('{')) {
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                let n = f("tasks");
                println!(
                    "| {} | {} | {} | {} | {} | {:.3} ms | {:.0} µs | {:.0} µs |",
                    rep + 1,
                    v["cores"],
                    if kind == "true" {
                        "/bin/true"
                    } else {
                        "/bin/sleep 0.001"
                    },
                    si(n),
                    si(f("tasks_per_s")),
                    f("per_task_ms"),
                    f("hq_cpu_s") * 1e6 / n,
                    f("children_cpu_s") * 1e6 / n,
                );
            }
        }
    }
    Ok(())
}

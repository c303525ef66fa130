//! loky-run vs Python loky on the same workloads, in one invocation, interleaved.
//!
//! ```sh
//! cargo run --release -p bench -- --quick     # about 1 minute (plus the build)
//! cargo run --release -p bench                # the full suite, about 4 minutes
//! ```
//!
//! It builds the release `loky-run` and demo plugin (`cargo build --release -p loky-run -p demo`),
//! creates a Python venv under `target/bench-venv` with loky in it, then runs every workload of
//! issue 6 on both, alternating loky-run and loky within each repetition, and prints medians and
//! ratios as a Markdown table (also saved, with every sample, in `target/bench-results.json`).
//! Every child process runs under a time limit and is killed (with its process group) past it.

mod bigitems;
mod build;
mod latency;
mod peers;
mod proc;
mod report;
mod scaling;
mod soak;
mod stats;
mod workloads;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use loky_run::config::Launcher;
use loky_run::plugin::probe;
use loky_run::worker;

use report::Report;

pub const WORKLOADS: [&str; 9] = [
    "cold",
    "throughput",
    "latency",
    "pipeline",
    "restart",
    "payload",
    "rss",
    "memory",
    "makespan",
];

pub struct Options {
    pub quick: bool,
    pub reps: Option<usize>,
    pub only: Option<Vec<String>>,
    pub build: bool,
}

/// Where things are.
pub struct Env {
    pub root: PathBuf,
    pub target: PathBuf,
    /// Scratch space for pipelines, inputs and outputs (`target/bench-work`).
    pub work: PathBuf,
    pub loky_run: PathBuf,
    pub plugin: PathBuf,
    pub python: PathBuf,
    pub script: PathBuf,
    /// This binary, for the worker and echo modes the latency workload spawns.
    pub self_exe: PathBuf,
}

/// Sizes and repetitions.
pub struct Sizes {
    pub reps: usize,
    pub cold_reps: usize,
    pub throughput_n: u64,
    pub sweep: Vec<u64>,
    pub chunk1_n: u64,
    pub latency_n: usize,
    pub loky_latency_n: usize,
    pub pipeline_n: u64,
    pub restart_stages: usize,
    pub payload_n: u64,
    pub payload_size: usize,
    pub payload_reps: usize,
    pub rss_sleep_ms: u64,
    pub memory_n: u64,
    pub memory_reps: usize,
    pub makespan_reps: usize,
}

impl Sizes {
    fn new(opts: &Options) -> Self {
        let mut s = if opts.quick {
            Sizes {
                reps: 3,
                cold_reps: 9,
                throughput_n: 1_000_000,
                sweep: vec![1_000, 10_000],
                chunk1_n: 5_000,
                latency_n: 5_000,
                loky_latency_n: 500,
                pipeline_n: 20_000,
                restart_stages: 20,
                payload_n: 200,
                payload_size: 1 << 20,
                payload_reps: 2,
                rss_sleep_ms: 1_000,
                memory_n: 10_000_000,
                memory_reps: 1,
                makespan_reps: 1,
            }
        } else {
            Sizes {
                reps: 5,
                cold_reps: 21,
                throughput_n: 1_000_000,
                sweep: vec![100, 1_000, 10_000, 50_000],
                chunk1_n: 20_000,
                latency_n: 20_000,
                loky_latency_n: 2_000,
                pipeline_n: 100_000,
                restart_stages: 20,
                payload_n: 2_000,
                payload_size: 1 << 20,
                payload_reps: 3,
                rss_sleep_ms: 1_500,
                memory_n: 10_000_000,
                memory_reps: 3,
                makespan_reps: 3,
            }
        };
        if let Some(r) = opts.reps {
            s.reps = r;
            s.cold_reps = r.max(3);
            s.payload_reps = r;
            s.memory_reps = r;
            s.makespan_reps = r;
        }
        s
    }
}

fn usage() -> &'static str {
    "usage: cargo run --release -p bench -- [--quick] [--reps N] [--only W1,W2,...] [--no-build]\n\
     workloads: cold, throughput, latency, pipeline, restart, payload, rss, memory, makespan\n\
     the soak benchmark (crashes, kills, resumes): cargo run --release -p bench -- soak --help\n\
     many remote workers over TCP, and HyperQueue: cargo run --release -p bench -- scaling --help\n\
     big items (256 MiB to GiBs, peak RSS): cargo run --release -p bench -- bigitems --help\n\
     against multiprocessing.Pool, loky and HyperQueue, interleaved: cargo run --release -p bench -- peers --help"
}

/// A subcommand's entry: its arguments parsed (a bad one: the message and the usage, exit 2),
/// then run (an error: the message, exit 1; `Ok(false)`: a run that failed its checks, exit 1).
pub(crate) fn subcommand<O>(
    name: &str,
    args: &[String],
    parse: impl FnOnce(&[String]) -> Result<O, String>,
    usage: &str,
    run: impl FnOnce(&O) -> Result<bool, String>,
) -> i32 {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("bench {name}: {e}");
            }
            eprintln!("{usage}");
            return 2;
        }
    };
    match run(&opts) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("bench {name}: {e}");
            1
        }
    }
}

/// The arguments after the subcommand's name.
fn rest_args(args: &[OsString]) -> Vec<String> {
    args[2..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

fn parse_options(args: &[OsString]) -> Result<Options, String> {
    let mut opts = Options {
        quick: false,
        reps: None,
        only: None,
        build: true,
    };
    let mut it = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--no-build" => opts.build = false,
            "--reps" => {
                let n = it.next().and_then(|v| v.parse::<usize>().ok());
                opts.reps = Some(n.filter(|&n| n > 0).ok_or("--reps takes a number ≥ 1")?);
            }
            "--only" => {
                let list = it.next().ok_or("--only takes a list of workloads")?;
                let names: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(bad) = names.iter().find(|n| !WORKLOADS.contains(&n.as_str())) {
                    return Err(format!("unknown workload {bad:?}"));
                }
                opts.only = Some(names);
            }
            // `cargo bench` passes this to every bench target; harmless here.
            "--bench" => {}
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // Worker, probe and echo processes are this same binary: decide before anything else.
    match args.get(1).and_then(|a| a.to_str()) {
        Some(worker::WORKER_ARG) => std::process::exit(worker::worker_main()),
        Some(loky_run::guardian::GUARDIAN_ARG) => {
            std::process::exit(loky_run::guardian::guardian_main())
        }
        Some(probe::PROBE_ARG) => {
            let Some(path) = args.get(2) else {
                std::process::exit(2)
            };
            std::process::exit(probe::probe_main(path.as_ref(), false));
        }
        Some("__pong") => std::process::exit(latency::pong_main(false)),
        Some("__pong_threaded") => std::process::exit(latency::pong_main(true)),
        Some("__latency") => std::process::exit(latency_only(&args)),
        Some("scaling") => std::process::exit(scaling::main(&rest_args(&args))),
        Some("bigitems") => std::process::exit(bigitems::main(&rest_args(&args))),
        Some("peers") => std::process::exit(peers::main(&rest_args(&args))),
        Some("__cpu") => std::process::exit(peers::cpu_main(args.get(2).and_then(|a| a.to_str()))),
        Some("soak") => std::process::exit(soak::main(&rest_args(&args))),
        _ => {}
    }
    let opts = match parse_options(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("bench: {e}");
            }
            eprintln!("{}", usage());
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `bench __latency pool|direct|bare|hop1|hop2|pool-slurm|restart-slurm [N]`: one latency
/// variant alone, for profiling it (`perf stat -e context-switches`, `strace -c -f`). Needs a
/// previous `setup` (the copied plugin under target/bench-work/bin). The `-slurm` variants run
/// inside an allocation (`salloc -n 2 target/release/bench __latency pool-slurm`): round trips
/// over the TCP transport to job steps, and 2-worker pool (re)starts as job steps.
fn latency_only(args: &[OsString]) -> i32 {
    let kind = args.get(2).and_then(|a| a.to_str()).unwrap_or("pool");
    let n: usize = args
        .get(3)
        .and_then(|a| a.to_str())
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let plugin = root.join("target/bench-work/bin/libdemo.so");
    let exe = std::env::current_exe().unwrap_or_default();
    let result = (|| -> Result<Vec<u64>, String> {
        let task = latency::task_index(&plugin, "echo")?;
        let e = |e: std::io::Error| e.to_string();
        match kind {
            "pool" => latency::via_pool(&plugin, task, n, 1000, Launcher::Local).map_err(e),
            "pool-slurm" => latency::via_pool(&plugin, task, n, 1000, Launcher::Slurm).map_err(e),
            "restart-slurm" | "restart" => {
                let launcher = if kind == "restart" {
                    Launcher::Local
                } else {
                    Launcher::Slurm
                };
                latency::pool_restarts(&plugin, n, launcher)
                    .map(|v| {
                        let (stop, start): (Vec<f64>, Vec<f64>) = v
                            .iter()
                            .map(|&(a, b)| (a as f64 / 1e6, b as f64 / 1e6))
                            .unzip();
                        println!(
                            "{kind}: n={} stop p50={:.2} ms, start of 2 workers p50={:.2} ms (min {:.2}, max {:.2})",
                            v.len(),
                            stats::quantile(&stop, 0.5),
                            stats::quantile(&start, 0.5),
                            start.iter().copied().fold(f64::INFINITY, f64::min),
                            start.iter().copied().fold(0.0, f64::max),
                        );
                        v.iter().map(|&(a, b)| a + b).collect()
                    })
                    .map_err(e)
            }
            "direct" => latency::direct(&plugin, task, n, 1000).map_err(e),
            "bare" => latency::floor(&exe, latency::Floor::Bare, n, 1000).map_err(e),
            "hop1" => latency::floor(&exe, latency::Floor::WorkerHop, n, 1000).map_err(e),
            "hop2" => latency::floor(&exe, latency::Floor::BothHops, n, 1000).map_err(e),
            other => Err(format!("unknown latency variant {other}")),
        }
    })();
    match result {
        Ok(samples) => {
            let us: Vec<f64> = samples.iter().map(|&x| x as f64 / 1e3).collect();
            println!(
                "{kind}: n={} p50={:.1} µs p99={:.1} µs",
                us.len(),
                stats::quantile(&us, 0.5),
                stats::quantile(&us, 0.99)
            );
            0
        }
        Err(e) => {
            eprintln!("bench: {e}");
            1
        }
    }
}

fn run(opts: &Options) -> Result<(), String> {
    let env = setup(opts)?;
    let sizes = Sizes::new(opts);
    let machine = machine_info(&env);
    println!("== machine");
    for (k, v) in &machine {
        println!("{k}: {v}");
    }
    let mut report = Report::default();
    let started = std::time::Instant::now();
    for name in WORKLOADS {
        if opts
            .only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == name))
        {
            continue;
        }
        println!("\n== {name}");
        let t = std::time::Instant::now();
        let result = workloads::run(name, &env, &sizes, &mut report);
        if let Err(e) = result {
            // One broken workload does not lose the others' results.
            eprintln!("bench: workload {name} failed: {e}");
            report
                .row(
                    name_static(name),
                    "FAILED (see log)",
                    "",
                    report::Better::Lower,
                )
                .lr
                .clear();
        }
        println!("   ({name}: {:.1} s)", t.elapsed().as_secs_f64());
    }
    let total = started.elapsed().as_secs_f64();
    println!(
        "\n== results ({} run, {total:.0} s; ratio = how many times better loky-run is: \
         loky÷loky-run for times and sizes, loky-run÷loky for rates)\n",
        if opts.quick { "quick" } else { "full" }
    );
    println!("{}", report.markdown());
    let json = serde_json::json!({
        "quick": opts.quick,
        "seconds": total,
        "machine": machine.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
        "rows": report.json(),
    });
    let path = env.target.join("bench-results.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )
    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("(all samples in {})", path.display());
    Ok(())
}

fn name_static(name: &str) -> &'static str {
    WORKLOADS
        .iter()
        .find(|w| **w == name)
        .copied()
        .unwrap_or("?")
}

/// Builds what is needed (release loky-run and demo plugin, the loky venv) and finds it.
fn setup(opts: &Options) -> Result<Env, String> {
    let (root, target) = build::dirs()?;
    if opts.build {
        build::release(&root, "demo")?;
    }
    let work = target.join("bench-work");
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    // Private copies: a rebuild of target/release while the suite runs must not change what is
    // measured half-way through.
    let (loky_run, plugin) = build::private_copies(&target, &work.join("bin"), "demo")?;
    let venv = target.join("bench-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        println!("== creating {}", venv.display());
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map_err(|e| format!("cannot run python3: {e}"))?
            .success();
        if !ok {
            return Err("python3 -m venv failed (Debian: apt-get install python3-venv)".into());
        }
    }
    let has_loky = Command::new(&python)
        .args(["-c", "import loky"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_loky {
        println!("== installing loky into {}", venv.display());
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "loky"])
            .status()
            .map_err(|e| format!("cannot run pip: {e}"))?
            .success();
        if !ok {
            return Err("pip install loky failed".into());
        }
    }
    // orjson makes loky's side write its records faster (loky_bench.py's write_records); without
    // it the stdlib encoder is used, so a failed install only makes loky's side slower.
    let has_orjson = Command::new(&python)
        .args(["-c", "import orjson"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_orjson {
        println!("== installing orjson into {} (optional)", venv.display());
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "orjson"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!(
                "   (orjson could not be installed: loky's side writes with the stdlib encoder)"
            );
        }
    }
    let self_exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Ok(Env {
        script: root.join("bench/loky_bench.py"),
        root,
        target,
        work,
        loky_run,
        plugin,
        python,
        self_exe,
    })
}

fn command_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

/// The commit measured, and whether the runner's sources differ from it.
fn git_state(root: &Path) -> String {
    let head = command_line(Command::new("git").arg("-C").arg(root).args([
        "rev-parse",
        "--short",
        "HEAD",
    ]));
    let dirty = command_line(Command::new("git").arg("-C").arg(root).args([
        "status",
        "--porcelain",
        "--",
        "runner",
        "plugins",
        "plugin-api",
    ]));
    let files = dirty.lines().filter(|l| !l.trim().is_empty()).count();
    if files == 0 {
        format!("git {head}")
    } else {
        format!(
            "git {head} + uncommitted changes in {files} file(s) under runner/, plugins/, plugin-api/"
        )
    }
}

fn machine_info(env: &Env) -> Vec<(&'static str, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.1} GiB", kb as f64 / (1 << 20) as f64))
        .unwrap_or_default();
    vec![
        (
            "cpus (nproc)",
            std::thread::available_parallelism()
                .map(|n| n.to_string())
                .unwrap_or_default(),
        ),
        ("cpu model", model),
        ("memory", mem),
        (
            "kernel",
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        ),
        ("rustc", command_line(Command::new("rustc").arg("-V"))),
        (
            "python",
            command_line(
                Command::new(&env.python).args(["-c", "import sys; print(sys.version.split()[0])"]),
            ),
        ),
        (
            "loky",
            command_line(
                Command::new(&env.python).args(["-c", "import loky; print(loky.__version__)"]),
            ),
        ),
        (
            "orjson (loky's output writer)",
            command_line(Command::new(&env.python).args([
                "-c",
                "try:\n import orjson; print(orjson.__version__)\nexcept ImportError: print('not installed: stdlib json')",
            ])),
        ),
        ("loky-run source", git_state(&env.root)),
    ]
}

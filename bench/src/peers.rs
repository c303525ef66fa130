//! `bench peers`: loky-run against its best peers on this machine, in one run, interleaved
//! (loky-run, multiprocessing.Pool, loky, HyperQueue, then again), with medians and ranges.
//!
//! ```sh
//! cargo run --release -p bench -- peers            # the full comparison, ~8–10 minutes on 2 cores
//! cargo run --release -p bench -- peers --quick    # fewer repetitions, ~3 minutes
//! ```
//!
//! The Python peers are driven by `bench/peers.py` from a venv under the target directory
//! (`bench-venv`; loky, hyperqueue and orjson are `pip install`ed into it when missing). A
//! peer that cannot be installed is reported as such and its column stays empty; the others
//! still run. Every peer runs as fast as it can be made to run: the best chunk size from a sweep
//! at the start of the run, results written in batches of pre-joined lines (orjson), Pool
//! forking its workers, HyperQueue as one job of many program tasks (its cheapest submission;
//! its tasks are processes, so its no-op is `/bin/true`, and it is run at a smaller N where a
//! full-size run would take minutes: those figures are marked "scaled").

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::report::{Better, num};
use crate::stats::Summary;
use crate::workloads::{Events, W, f64_of, stage};
use crate::{Env, build, proc};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    LokyRun,
    Pool,
    Loky,
    Hq,
}

const PEERS: [Peer; 4] = [Peer::LokyRun, Peer::Pool, Peer::Loky, Peer::Hq];
const PYTHON_PEERS: [Peer; 3] = [Peer::Pool, Peer::Loky, Peer::Hq];

impl Peer {
    fn label(self) -> &'static str {
        match self {
            Peer::LokyRun => "loky-run",
            Peer::Pool => "multiprocessing.Pool",
            Peer::Loky => "loky",
            Peer::Hq => "HyperQueue",
        }
    }

    /// The first argument of `peers.py`.
    fn arg(self) -> &'static str {
        match self {
            Peer::LokyRun => "loky-run",
            Peer::Pool => "pool",
            Peer::Loky => "loky",
            Peer::Hq => "hq",
        }
    }

    fn idx(self) -> usize {
        self as usize
    }
}

const WORKLOADS: [&str; 7] = [
    "cold",
    "throughput",
    "one",
    "chained",
    "cpu",
    "makespan",
    "rss",
];

struct Options {
    quick: bool,
    reps: usize,
    cold_reps: usize,
    makespan_reps: usize,
    only: Option<Vec<String>>,
    build: bool,
    hq: bool,
    /// Tasks of the 1M-task workload.
    n: u64,
    /// Tasks of the one-per-message workload.
    n1: u64,
    /// HyperQueue's no-op job size (its rates are scaled to `n` and `n1`).
    hq_n: u64,
    chain_n: u64,
    chain_stages: u64,
    /// HyperQueue's tasks per chained stage (scaled to `chain_n`).
    hq_chain_n: u64,
    cpu_tasks: u64,
    cpu_task_ms: f64,
}

fn usage() -> &'static str {
    "usage: cargo run --release -p bench -- peers [--quick] [--reps N] [--only W1,W2,...] [--no-hq]\n\
     \x20   [--hq-tasks N] [--hq-chain-tasks N] [--no-build]\n\
     workloads: cold, throughput, one, chained, cpu, makespan, rss\n\
     loky-run, multiprocessing.Pool, loky and HyperQueue interleaved on each workload; medians and ranges"
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        reps: 5,
        cold_reps: 11,
        makespan_reps: 3,
        only: None,
        build: true,
        hq: true,
        n: 1_000_000,
        n1: 10_000,
        hq_n: 2_000,
        chain_n: 10_000,
        chain_stages: 5,
        hq_chain_n: 400,
        cpu_tasks: 100,
        cpu_task_ms: 20.0,
    };
    let number = |v: Option<&String>, what: &str| {
        v.and_then(|v| v.parse::<u64>().ok())
            .filter(|&n| n > 0)
            .ok_or(format!("{what} takes a number ≥ 1"))
    };
    let mut reps = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--no-build" => o.build = false,
            "--no-hq" => o.hq = false,
            "--reps" => reps = Some(number(it.next(), a)? as usize),
            "--hq-tasks" => o.hq_n = number(it.next(), a)?,
            "--hq-chain-tasks" => o.hq_chain_n = number(it.next(), a)?,
            "--only" => {
                let list = it.next().ok_or("--only takes a list of workloads")?;
                let names: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(bad) = names.iter().find(|n| !WORKLOADS.contains(&n.as_str())) {
                    return Err(format!("unknown workload {bad:?}"));
                }
                o.only = Some(names);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.quick {
        o.reps = 2;
        o.cold_reps = 5;
        o.makespan_reps = 1;
        o.hq_n = o.hq_n.min(500);
        o.hq_chain_n = o.hq_chain_n.min(100);
        o.cpu_tasks = 40;
    }
    if let Some(r) = reps {
        o.reps = r;
        o.cold_reps = r.max(3);
        o.makespan_reps = r;
    }
    Ok(o)
}

/// One figure per peer and repetition.
struct Row {
    workload: &'static str,
    metric: String,
    unit: &'static str,
    better: Better,
    samples: [Vec<f64>; 4],
    /// Said next to a peer's figure (e.g. that it was measured at a smaller N and scaled).
    notes: [String; 4],
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    /// Why a peer has no figures (not installed, `--no-hq`).
    missing: [Option<String>; 4],
}

impl Table {
    fn row(
        &mut self,
        workload: &'static str,
        metric: &str,
        unit: &'static str,
        better: Better,
    ) -> &mut Row {
        let pos = self
            .rows
            .iter()
            .position(|r| r.workload == workload && r.metric == metric);
        let i = pos.unwrap_or_else(|| {
            self.rows.push(Row {
                workload,
                metric: metric.to_owned(),
                unit,
                better,
                samples: Default::default(),
                notes: Default::default(),
            });
            self.rows.len() - 1
        });
        &mut self.rows[i]
    }

    fn markdown(&self) -> String {
        let mut s = String::from("| workload | metric | unit |");
        for p in PEERS {
            let _ = write!(s, " {} |", p.label());
        }
        s.push_str(" loky-run better by |\n|");
        s.push_str(&" --- |".repeat(3 + PEERS.len() + 1));
        s.push('\n');
        for r in &self.rows {
            let _ = write!(s, "| {} | {} | {} |", r.workload, r.metric, r.unit);
            for p in PEERS {
                let cell = match (&self.missing[p.idx()], Summary::of(&r.samples[p.idx()])) {
                    (_, Some(sum)) => {
                        let mut c = if sum.n == 1 {
                            num(sum.median)
                        } else {
                            format!("{} ({}–{})", num(sum.median), num(sum.min), num(sum.max))
                        };
                        if !r.notes[p.idx()].is_empty() {
                            let _ = write!(c, " {}", r.notes[p.idx()]);
                        }
                        c
                    }
                    (Some(_), None) => "not run".to_owned(),
                    (None, None) if !r.notes[p.idx()].is_empty() => r.notes[p.idx()].clone(),
                    (None, None) => "–".to_owned(),
                };
                let _ = write!(s, " {cell} |");
            }
            let ratios: Vec<String> = PEERS[1..]
                .iter()
                .filter_map(|&p| Some(format!("{} {:.1}×", short(p), ratio(r, p)?)))
                .collect();
            let _ = writeln!(s, " {} |", ratios.join(", "));
        }
        for p in PEERS {
            if let Some(why) = &self.missing[p.idx()] {
                let _ = writeln!(s, "\n{}: not run ({why})", p.label());
            }
        }
        s
    }

    fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut m = serde_json::Map::new();
                m.insert("workload".into(), r.workload.into());
                m.insert("metric".into(), r.metric.clone().into());
                m.insert("unit".into(), r.unit.into());
                for p in PEERS {
                    m.insert(p.arg().into(), r.samples[p.idx()].clone().into());
                    if !r.notes[p.idx()].is_empty() {
                        m.insert(format!("{}_note", p.arg()), r.notes[p.idx()].clone().into());
                    }
                }
                Value::Object(m)
            })
            .collect();
        Value::Array(rows)
    }
}

fn short(p: Peer) -> &'static str {
    match p {
        Peer::Pool => "Pool",
        Peer::Hq => "HQ",
        other => other.label(),
    }
}

/// How many times better loky-run is than `p` on this row (> 1: loky-run is faster/smaller).
fn ratio(r: &Row, p: Peer) -> Option<f64> {
    let lr = Summary::of(&r.samples[Peer::LokyRun.idx()])?.median;
    let other = Summary::of(&r.samples[p.idx()])?.median;
    Some(match r.better {
        Better::Lower => other / lr,
        Better::Higher => lr / other,
    })
}

impl Row {
    fn push(&mut self, p: Peer, v: f64) -> &mut Self {
        self.samples[p.idx()].push(v);
        self
    }

    fn note(&mut self, p: Peer, note: String) -> &mut Self {
        self.notes[p.idx()] = note;
        self
    }
}

/// What one run needs beyond [`Env`].
struct Ctx<'a> {
    o: &'a Options,
    /// This binary's private copy, run by HyperQueue's CPU tasks (`bench-cpu __cpu N`).
    cpu_program: PathBuf,
}

impl Ctx<'_> {
    fn peers(&self, t: &Table) -> Vec<Peer> {
        PYTHON_PEERS
            .into_iter()
            .filter(|p| t.missing[p.idx()].is_none())
            .collect()
    }
}

/// `bench peers ARGS`.
pub(crate) fn main(args: &[String]) -> i32 {
    crate::subcommand("peers", args, parse, usage(), |o| run(o).map(|()| true))
}

fn run(o: &Options) -> Result<(), String> {
    let mut table = Table::default();
    let (env, cpu_program, versions) = setup(o, &mut table)?;
    println!("== peers: 2 workers each, interleaved within every workload");
    for (k, v) in &versions {
        println!("{k}: {v}");
    }
    println!("load average at the start: {}", loadavg());
    let ctx = Ctx { o, cpu_program };
    let started = Instant::now();
    for name in WORKLOADS {
        if o.only
            .as_ref()
            .is_some_and(|only| !only.iter().any(|n| n == name))
        {
            continue;
        }
        println!("\n== {name} (load average {})", loadavg());
        let t = Instant::now();
        let dir = env.work.join(format!("peers-{name}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let w = W {
            env: &env,
            dir: &dir,
        };
        let result = match name {
            "cold" => cold(&w, &ctx, &mut table),
            "throughput" => throughput(&w, &ctx, &mut table),
            "one" => one_per_message(&w, &ctx, &mut table),
            "chained" => chained(&w, &ctx, &mut table),
            "cpu" => cpu_bound(&w, &ctx, &mut table),
            "makespan" => makespan(&w, &ctx, &mut table),
            "rss" => rss(&w, &ctx, &mut table),
            _ => Err(format!("no workload {name}")),
        };
        let _ = fs::remove_dir_all(&dir);
        if let Err(e) = result {
            eprintln!("bench peers: workload {name} failed: {e}");
        }
        println!("   ({name}: {:.1} s)", t.elapsed().as_secs_f64());
    }
    println!(
        "\n== results ({:.0} s, load average at the end {}; median (min–max) over the repetitions; \
         \"better by\": the peer's figure ÷ loky-run's for times and sizes, loky-run's ÷ the peer's \
         for rates and efficiencies)\n",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    println!("{}", table.markdown());
    let path = env.target.join("bench-peers.json");
    let json = serde_json::json!({
        "versions": versions.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
        "rows": table.json(),
    });
    fs::write(
        &path,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )
    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("(all samples in {})", path.display());
    Ok(())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What was measured: `(component, version)`.
type Versions = Vec<(String, String)>;

/// Builds and copies loky-run and the demo plugin, makes the venv, installs what it can, and
/// records in `table.missing` every peer that cannot run.
fn setup(o: &Options, table: &mut Table) -> Result<(Env, PathBuf, Versions), String> {
    let (root, target) = build::dirs()?;
    if o.build {
        build::release(&root, "demo")?;
    }
    let work = target.join("bench-work");
    let bin = work.join("bin");
    let (loky_run, plugin) = build::private_copies(&target, &bin, "demo")?;
    let self_exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let cpu_program = bin.join("bench-cpu");
    let _ = fs::remove_file(&cpu_program);
    fs::copy(&self_exe, &cpu_program)
        .map_err(|e| format!("cannot copy {}: {e}", self_exe.display()))?;
    let venv = target.join("bench-venv");
    let python = venv.join("bin/python");
    let mut versions = vec![(
        "loky-run".to_owned(),
        format!("{} (release)", git_head(&root)),
    )];
    let venv_ok = python.exists()
        || Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
    if !venv_ok {
        let why = format!(
            "python3 -m venv {} failed (Debian: apt-get install python3-venv)",
            venv.display()
        );
        println!("== {why}: only loky-run runs");
        for p in PYTHON_PEERS {
            table.missing[p.idx()] = Some(why.clone());
        }
    } else {
        let imports = |module: &str| {
            Command::new(&python)
                .args(["-c", &format!("import {module}")])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        // orjson is optional: without it peers.py writes with the stdlib encoder (slower).
        let wanted: &[(&str, Option<Peer>)] = &[
            ("loky", Some(Peer::Loky)),
            ("hyperqueue", o.hq.then_some(Peer::Hq)),
            ("orjson", None),
        ];
        for &(pkg, peer) in wanted {
            if pkg == "hyperqueue" && !o.hq {
                continue;
            }
            if !imports(pkg) {
                println!("== installing {pkg} into {}", venv.display());
                let _ = Command::new(venv.join("bin/pip"))
                    .args(["install", "--quiet", pkg])
                    .status();
            }
            let version = if imports(pkg) {
                command_line(Command::new(&python).args([
                    "-c",
                    &format!("import importlib.metadata as m; print(m.version('{pkg}'))"),
                ]))
            } else {
                let why = format!("{pkg} is not installed and `pip install {pkg}` failed");
                println!("== {why}");
                if let Some(p) = peer {
                    table.missing[p.idx()] = Some(why.clone());
                }
                why
            };
            versions.push((pkg.to_owned(), version));
        }
        versions.push((
            "python".to_owned(),
            command_line(
                Command::new(&python).args(["-c", "import sys; print(sys.version.split()[0])"]),
            ),
        ));
    }
    if !o.hq {
        table.missing[Peer::Hq.idx()] = Some("--no-hq".to_owned());
    }
    let env = Env {
        script: root.join("bench/peers.py"),
        root,
        target,
        work,
        loky_run,
        plugin,
        python,
        self_exe,
    };
    Ok((env, cpu_program, versions))
}

fn command_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

fn git_head(root: &Path) -> String {
    format!(
        "git {}",
        command_line(Command::new("git").arg("-C").arg(root).args([
            "rev-parse",
            "--short",
            "HEAD"
        ]))
    )
}

const LIMIT: Duration = Duration::from_secs(300);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `peers.py PEER ARGS...`: the process and its JSON answer.
fn py(w: &W, p: Peer, args: &[&str]) -> Result<(proc::Finished, Value), String> {
    let mut all = vec![p.arg()];
    all.extend_from_slice(args);
    w.loky(&all, LIMIT)
}

/// ", parent CPU X ms, workers' Y ms" from the CPU times `peers.py` reports.
fn cpu_of(v: &Value, me: &str, children: &str) -> String {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN) * 1e3;
    format!(
        "; {me} CPU {:.0} ms, {children} {:.0} ms",
        f("self_cpu_s"),
        f("children_cpu_s")
    )
}

fn scaled(measured: u64) -> String {
    format!("(scaled: measured at {})", num(measured as f64))
}

/// Cold start: a whole run of 2 no-op tasks, process start to exit.
fn cold(w: &W, c: &Ctx, t: &mut Table) -> Result<(), String> {
    let toml = w.pipeline(
        "cold",
        "",
        &stage("echo", "demo::echo", "{ range = [0, 2] }", ""),
    )?;
    let peers = c.peers(t);
    let args = ["cold", "--outdir", "{out}"];
    // One unmeasured run of each: page cache, bytecode.
    w.loky_run_plain(&toml, LIMIT)?;
    for &p in &peers {
        py(w, p, &args)?;
    }
    let bare = |w: &W| {
        let mut cmd = Command::new(&w.env.python);
        cmd.args(["-c", "pass"]);
        proc::run(&mut cmd, w.dir, LIMIT, |_| {})
    };
    for i in 0..c.o.cold_reps {
        let mut line = String::new();
        let a = w.loky_run_plain(&toml, LIMIT)?;
        let _ = write!(line, "loky-run {:.1} ms", ms(a.wall));
        t.row(
            "cold start",
            "2 no-op tasks, process start → exit",
            "ms",
            Better::Lower,
        )
        .push(Peer::LokyRun, ms(a.wall));
        for &p in &peers {
            let (b, _) = py(w, p, &args)?;
            let _ = write!(line, ", {} {:.1} ms", p.label(), ms(b.wall));
            t.row(
                "cold start",
                "2 no-op tasks, process start → exit",
                "ms",
                Better::Lower,
            )
            .push(p, ms(b.wall));
        }
        if !peers.is_empty() {
            let b = bare(w)?;
            let _ = write!(line, ", python -c pass {:.1} ms", ms(b.wall));
            let r = t.row(
                "cold start",
                "diag: the interpreter alone (`python -c pass`)",
                "ms",
                Better::Lower,
            );
            for &p in &peers {
                r.push(p, ms(b.wall));
            }
        }
        println!("   rep {i}: {line}");
    }
    Ok(())
}

/// The best chunk size of the Python peers for `n` echo tasks: one run of each candidate.
fn sweep(
    w: &W,
    peers: &[Peer],
    candidates: &[u64],
    args: impl Fn(&str) -> Vec<String>,
    time_of: impl Fn(&proc::Finished, &Value) -> Result<f64, String>,
) -> Result<[u64; 4], String> {
    let mut best = [1u64; 4];
    for &p in peers.iter().filter(|&&p| p != Peer::Hq) {
        let mut fastest = f64::INFINITY;
        let mut seen = Vec::new();
        for &cs in candidates {
            let a = args(&cs.to_string());
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let (f, v) = py(w, p, &a)?;
            let s = time_of(&f, &v)?;
            seen.push(format!("{cs}: {:.0} ms", s * 1e3));
            if s < fastest {
                fastest = s;
                best[p.idx()] = cs;
            }
        }
        println!(
            "   {} chunksize sweep: {}; best {}",
            p.label(),
            seen.join(", "),
            best[p.idx()]
        );
    }
    Ok(best)
}

/// 1M no-op tasks (echo of integers), output written.
fn throughput(w: &W, c: &Ctx, t: &mut Table) -> Result<(), String> {
    let n = c.o.n;
    let n_s = n.to_string();
    let toml = w.pipeline(
        "auto",
        "",
        &stage("echo", "demo::echo", &format!("{{ range = [0, {n}] }}"), ""),
    )?;
    let peers = c.peers(t);
    let candidates: &[u64] = if c.o.quick {
        &[10_000]
    } else {
        &[1_000, 10_000, 50_000]
    };
    let best = sweep(
        w,
        &peers,
        candidates,
        |cs| {
            [
                "throughput",
                "--n",
                &n_s,
                "--chunksize",
                cs,
                "--outdir",
                "{out}",
            ]
            .map(String::from)
            .to_vec()
        },
        |f, _| Ok(f.wall.as_secs_f64()),
    )?;
    let whole = format!(
        "{} no-op tasks, whole process start → exit, output written",
        num(n as f64)
    );
    let stage_m = format!(
        "{} no-op tasks, stage only (loky-run: its stage, starting the workers included; Pool, loky: map + write on a warm pool; HQ: submit → job end)",
        num(n as f64)
    );
    let hq_n = c.o.hq_n.to_string();
    for i in 0..c.o.reps {
        let (a, ev) = w.loky_run(&toml, LIMIT, |_, _| {})?;
        let a_stage = ev.stage("echo")?;
        let mut line = format!(
            "loky-run {:.0} ms (stage {:.0} ms, CPU of the runner and its workers {:.0} ms)",
            ms(a.wall),
            a_stage * 1e3,
            ms(a.cpu)
        );
        t.row("1M tasks", &whole, "tasks/s", Better::Higher)
            .push(Peer::LokyRun, n as f64 / a.wall.as_secs_f64());
        t.row("1M tasks", &stage_m, "tasks/s", Better::Higher)
            .push(Peer::LokyRun, n as f64 / a_stage);
        for &p in &peers {
            if p == Peer::Hq {
                let (_, v) = py(w, p, &["throughput", "--n", &hq_n, "--outdir", "{out}"])?;
                let s = f64_of(&v, "stage_s")?;
                let rate = c.o.hq_n as f64 / s;
                let _ = write!(
                    line,
                    ", HQ {hq_n} tasks in {s:.2} s ({} tasks/s{})",
                    num(rate),
                    cpu_of(&v, "HQ process", "task processes'")
                );
                for m in [&whole, &stage_m] {
                    t.row("1M tasks", m, "tasks/s", Better::Higher)
                        .push(p, rate)
                        .note(p, format!("{} (submit → job end)", scaled(c.o.hq_n)));
                }
                continue;
            }
            let cs = best[p.idx()].to_string();
            let (b, v) = py(
                w,
                p,
                &[
                    "throughput",
                    "--n",
                    &n_s,
                    "--chunksize",
                    &cs,
                    "--outdir",
                    "{out}",
                ],
            )?;
            let s = f64_of(&v, "stage_s")?;
            let _ = write!(
                line,
                ", {} {:.0} ms (stage {:.0} ms{})",
                p.label(),
                ms(b.wall),
                s * 1e3,
                cpu_of(&v, "parent", "workers'")
            );
            t.row("1M tasks", &whole, "tasks/s", Better::Higher)
                .push(p, n as f64 / b.wall.as_secs_f64())
                .note(p, format!("(chunksize {cs})"));
            t.row("1M tasks", &stage_m, "tasks/s", Better::Higher)
                .push(p, n as f64 / s);
        }
        println!("   rep {i}: {line}");
    }
    Ok(())
}

/// 10k tasks, one per message (chunksize 1 everywhere; every HyperQueue task is one anyway).
fn one_per_message(w: &W, c: &Ctx, t: &mut Table) -> Result<(), String> {
    let n = c.o.n1;
    let n_s = n.to_string();
    let toml = w.pipeline(
        "one",
        "",
        &stage(
            "echo",
            "demo::echo",
            &format!("{{ range = [0, {n}] }}"),
            "chunksize = 1",
        ),
    )?;
    let peers = c.peers(t);
    let whole = format!(
        "{} no-op tasks, one per message, whole process start → exit",
        num(n as f64)
    );
    let stage_m = format!(
        "{} no-op tasks, one per message, stage only (as above)",
        num(n as f64)
    );
    let hq_n = c.o.hq_n.min(n).to_string();
    for i in 0..c.o.reps {
        let (a, ev) = w.loky_run(&toml, LIMIT, |_, _| {})?;
        let a_stage = ev.stage("echo")?;
        let mut line = format!(
            "loky-run {:.0} ms (stage {:.0} ms, CPU of the runner and its workers {:.0} ms)",
            ms(a.wall),
            a_stage * 1e3,
            ms(a.cpu)
        );
        t.row("10k one per message", &whole, "tasks/s", Better::Higher)
            .push(Peer::LokyRun, n as f64 / a.wall.as_secs_f64());
        t.row("10k one per message", &stage_m, "tasks/s", Better::Higher)
            .push(Peer::LokyRun, n as f64 / a_stage);
        for &p in &peers {
            if p == Peer::Hq {
                let (_, v) = py(w, p, &["throughput", "--n", &hq_n, "--outdir", "{out}"])?;
                let s = f64_of(&v, "stage_s")?;
                let m = hq_n.parse::<f64>().unwrap_or(f64::NAN);
                let _ = write!(
                    line,
                    ", HQ {hq_n} tasks in {s:.2} s{}",
                    cpu_of(&v, "HQ process", "task processes'")
                );
                for metric in [&whole, &stage_m] {
                    let r = t
                        .row("10k one per message", metric, "tasks/s", Better::Higher)
                        .push(p, m / s);
                    if (m as u64) < n {
                        r.note(p, format!("{} (submit → job end)", scaled(m as u64)));
                    } else {
                        r.note(p, "(submit → job end)".to_owned());
                    }
                }
                continue;
            }
            let (b, v) = py(
                w,
                p,
                &[
                    "throughput",
                    "--n",
                    &n_s,
                    "--chunksize",
                    "1",
                    "--outdir",
                    "{out}",
                ],
            )?;
            let s = f64_of(&v, "stage_s")?;
            let _ = write!(
                line,
                ", {} {:.0} ms (stage {:.0} ms{})",
                p.label(),
                ms(b.wall),
                s * 1e3,
                cpu_of(&v, "parent", "workers'")
            );
            t.row("10k one per message", &whole, "tasks/s", Better::Higher)
                .push(p, n as f64 / b.wall.as_secs_f64());
            t.row("10k one per message", &stage_m, "tasks/s", Better::Higher)
                .push(p, n as f64 / s);
        }
        println!("   rep {i}: {line}");
    }
    Ok(())
}

/// Chained stages: the first echoes a range, each next one echoes the outputs of the one before.
fn chained(w: &W, c: &Ctx, t: &mut Table) -> Result<(), String> {
    let (n, k) = (c.o.chain_n, c.o.chain_stages);
    let mut stages = stage("s0", "demo::echo", &format!("{{ range = [0, {n}] }}"), "");
    for i in 1..k {
        stages += &stage(
            &format!("s{i}"),
            "demo::echo",
            &format!("{{ from = \"s{}\" }}", i - 1),
            "",
        );
    }
    let toml = w.pipeline("chained", "", &stages)?;
    let peers = c.peers(t);
    let (n_s, k_s) = (n.to_string(), k.to_string());
    let candidates: &[u64] = if c.o.quick {
        &[1_000]
    } else {
        &[100, 1_000, 5_000]
    };
    let best = sweep(
        w,
        &peers,
        candidates,
        |cs| {
            [
                "chained",
                "--n",
                &n_s,
                "--stages",
                &k_s,
                "--chunksize",
                cs,
                "--outdir",
                "{out}",
            ]
            .map(String::from)
            .to_vec()
        },
        |f, _| Ok(f.wall.as_secs_f64()),
    )?;
    let wl = "multi-stage";
    let whole = format!(
        "{k} chained stages × {} no-op tasks, whole process start → exit",
        num(n as f64)
    );
    let sum_m = "same, sum of the stages (HQ: one job, a barrier task between two stages)";
    let hq_n = c.o.hq_chain_n.min(n);
    let hq_n_s = hq_n.to_string();
    for i in 0..c.o.reps {
        let (a, ev) = w.loky_run(&toml, LIMIT, |_, _| {})?;
        if ev.decisions.iter().filter(|d| *d == "reuse").count() as u64 != k - 1 {
            return Err(format!("expected one pool reused: {:?}", ev.decisions));
        }
        let a_sum: f64 = (0..k)
            .map(|i| ev.stage(&format!("s{i}")))
            .sum::<Result<f64, String>>()?;
        let mut line = format!(
            "loky-run {:.0} ms (stages {:.0} ms)",
            ms(a.wall),
            a_sum * 1e3
        );
        t.row(wl, &whole, "ms", Better::Lower)
            .push(Peer::LokyRun, ms(a.wall));
        t.row(wl, sum_m, "ms", Better::Lower)
            .push(Peer::LokyRun, a_sum * 1e3);
        for &p in &peers {
            let (b, v) = if p == Peer::Hq {
                py(
                    w,
                    p,
                    &[
                        "chained", "--n", &hq_n_s, "--stages", &k_s, "--outdir", "{out}",
                    ],
                )?
            } else {
                let cs = best[p.idx()].to_string();
                py(
                    w,
                    p,
                    &[
                        "chained",
                        "--n",
                        &n_s,
                        "--stages",
                        &k_s,
                        "--chunksize",
                        &cs,
                        "--outdir",
                        "{out}",
                    ],
                )?
            };
            let sum: f64 = v["stage_s"]
                .as_array()
                .ok_or("no stage times")?
                .iter()
                .filter_map(Value::as_f64)
                .sum();
            if p == Peer::Hq {
                // Scaled to n tasks per stage; the whole process is that plus the cluster's
                // start and stop, measured as they are.
                let scale = n as f64 / hq_n as f64;
                let rest = b.wall.as_secs_f64() - sum;
                let _ = write!(line, ", HQ {k} × {hq_n} tasks: stages {sum:.2} s");
                t.row(wl, &whole, "ms", Better::Lower)
                    .push(p, (rest + sum * scale) * 1e3)
                    .note(p, scaled(hq_n * k));
                t.row(wl, sum_m, "ms", Better::Lower)
                    .push(p, sum * scale * 1e3)
                    .note(p, scaled(hq_n * k));
                continue;
            }
            let _ = write!(
                line,
                ", {} {:.0} ms (stages {:.0} ms)",
                p.label(),
                ms(b.wall),
                sum * 1e3
            );
            t.row(wl, &whole, "ms", Better::Lower)
                .push(p, ms(b.wall))
                .note(p, format!("(chunksize {})", best[p.idx()]));
            t.row(wl, sum_m, "ms", Better::Lower).push(p, sum * 1e3);
        }
        println!("   rep {i}: {line}");
    }
    Ok(())
}

/// The same loop as `demo::cpu` (plugins/demo): the sum of `i * i` for `i < n * 1000`,
/// wrapping. HyperQueue's CPU tasks run it as `bench __cpu N`, and HyperQueue's serial baseline
/// is this function run in a loop. (Compiled here it ran 1.7× faster per `n` than `demo::cpu`
/// in the plugin, so loky-run's baseline is the plugin's own function: [`serial_plugin`].)
pub(crate) fn cpu_loop(n: u64) -> u64 {
    (0..n.saturating_mul(1000)).fold(0u64, |sum, i| {
        let i = std::hint::black_box(i);
        sum.wrapping_add(i.wrapping_mul(i))
    })
}

/// `bench __cpu N`: one CPU task as a process (HyperQueue's CPU-bound tasks).
pub(crate) fn cpu_main(n: Option<&str>) -> i32 {
    match n.and_then(|n| n.parse::<u64>().ok()) {
        Some(n) => {
            std::hint::black_box(cpu_loop(n));
            0
        }
        None => 2,
    }
}

/// `tasks` calls of the plugin's `demo::cpu(n)` in this process, through the same entry point
/// a worker calls: loky-run's serial baseline, the very code its workers run.
fn serial_plugin(
    plugin: &loky_run::plugin::host::LoadedPlugin,
    task: u32,
    n: u64,
    tasks: u64,
) -> f64 {
    let input = n.to_string();
    let mut out = abi_stable::std_types::RVec::new();
    let t = Instant::now();
    for _ in 0..tasks {
        out.clear();
        plugin.call(task, input.as_bytes(), &mut out);
    }
    t.elapsed().as_secs_f64()
}

fn serial_rust(n: u64, tasks: u64) -> f64 {
    let t = Instant::now();
    for _ in 0..tasks {
        std::hint::black_box(cpu_loop(std::hint::black_box(n)));
    }
    t.elapsed().as_secs_f64()
}

/// CPU-bound tasks of ~20 ms: efficiency = ideal ÷ wall, where ideal = the serial time of the
/// same tasks (the same function in a plain loop in one process) ÷ 2 workers.
fn cpu_bound(w: &W, c: &Ctx, t: &mut Table) -> Result<(), String> {
    let tasks = c.o.cpu_tasks;
    let peers = c.peers(t);
    let target_s = c.o.cpu_task_ms / 1e3;
    // Task sizes: ~20 ms each, in Rust (the plugin's and this binary's loop) and in Python (the
    // Python loop is ~100× slower per n).
    let plugin = loky_run::plugin::host::load(&w.env.plugin, false).map_err(|e| e.to_string())?;
    let task = plugin
        .info
        .find("cpu", loky_run::plugin::TaskKind::Task)
        .ok_or("the demo plugin exports no task cpu")?;
    let probe = serial_plugin(&plugin, task, 2_000, 3) / 3.0;
    let n_plugin = ((target_s / probe * 2_000.0) as u64).max(1);
    let probe = serial_rust(2_000, 3) / 3.0;
    let n_rust = ((target_s / probe * 2_000.0) as u64).max(1);
    let n_py = if peers.iter().any(|&p| p != Peer::Hq) {
        let (_, v) = py(w, Peer::Pool, &["serial", "--tasks", "3", "--work", "50"])?;
        let per = f64_of(&v, "serial_s")? / 3.0;
        ((target_s / per * 50.0) as u64).max(1)
    } else {
        0
    };
    println!(
        "   task sizes: demo::cpu({n_plugin}) in the plugin, the bench's copy of the loop ({n_rust}) for HyperQueue, cpu({n_py}) in Python; {tasks} tasks"
    );
    let items: Vec<String> = (0..tasks).map(|_| n_plugin.to_string()).collect();
    let toml = w.pipeline(
        "cpu",
        "",
        &stage(
            "cpu",
            "demo::cpu",
            &format!("{{ items = [{}] }}", items.join(", ")),
            "",
        ),
    )?;
    let metric = format!(
        "CPU-bound: {tasks} tasks of ~{} ms (sized per language), efficiency = (serial time ÷ 2) ÷ wall",
        c.o.cpu_task_ms
    );
    let per_task = "diag: serial time per task (loky-run: demo::cpu called in-process; HQ: the same loop compiled into the bench binary, which it runs per task; Pool, loky: the loop in Python)";
    let (tasks_s, n_rust_s, n_py_s) = (tasks.to_string(), n_rust.to_string(), n_py.to_string());
    let program = c.cpu_program.display().to_string();
    // This VM's CPU speed drifts by ±30 % from one second to the next (the serial time of the
    // same work varied 1.15–1.75 s in one run), so each peer's serial time is sampled right
    // before and right after its run (a fifth of the tasks each time, scaled) and averaged.
    let sample = (tasks / 5).max(1);
    let sample_s = sample.to_string();
    let scale = tasks as f64 / sample as f64;
    let serial_of = |p: Peer| -> Result<f64, String> {
        Ok(scale
            * match p {
                Peer::LokyRun => serial_plugin(&plugin, task, n_plugin, sample),
                Peer::Hq => serial_rust(n_rust, sample),
                _ => {
                    let (_, v) = py(w, p, &["serial", "--tasks", &sample_s, "--work", &n_py_s])?;
                    f64_of(&v, "serial_s")?
                }
            })
    };
    let eff = |serial: f64, wall: f64| serial / 2.0 / wall * 100.0;
    for i in 0..c.o.reps {
        let mut line = String::new();
        for p in std::iter::once(Peer::LokyRun).chain(peers.iter().copied()) {
            let before = serial_of(p)?;
            let wall = match p {
                Peer::LokyRun => {
                    let (_, ev) = w.loky_run(&toml, LIMIT, |_, _| {})?;
                    ev.stage("cpu")?
                }
                Peer::Hq => {
                    let (_, v) = py(
                        w,
                        p,
                        &[
                            "cpu",
                            "--tasks",
                            &tasks_s,
                            "--work",
                            &n_rust_s,
                            "--program",
                            &program,
                            "--outdir",
                            "{out}",
                        ],
                    )?;
                    f64_of(&v, "wall_s")?
                }
                _ => {
                    let (_, v) = py(
                        w,
                        p,
                        &[
                            "cpu", "--tasks", &tasks_s, "--work", &n_py_s, "--outdir", "{out}",
                        ],
                    )?;
                    f64_of(&v, "wall_s")?
                }
            };
            let after = serial_of(p)?;
            let base = (before + after) / 2.0;
            let _ = write!(
                line,
                "{}{} {wall:.3} s, serial {before:.2}/{after:.2} s ({:.1} %)",
                if line.is_empty() { "" } else { ", " },
                p.label(),
                eff(base, wall)
            );
            t.row("CPU-bound", &metric, "% of ideal", Better::Higher)
                .push(p, eff(base, wall));
            t.row("CPU-bound", per_task, "ms", Better::Lower)
                .push(p, base * 1e3 / tasks as f64);
        }
        println!("   rep {i}: {line}");
    }
    Ok(())
}

/// The makespan workloads of the main suite (workload 9), on a fresh pool each time.
fn makespan(w: &W, c: &Ctx, t: &mut Table) -> Result<(), String> {
    let straggler: Vec<u64> = (0..2_001)
        .map(|i| if i == 1_000 { 5_000 } else { 5 })
        .collect();
    let cases: [(&str, usize, Vec<u64>, &str); 3] = [
        (
            "nxn",
            4,
            vec![2_000; 4],
            "4 tasks of 2 s on 4 fresh workers (ideal 2 s)",
        ),
        (
            "straggler",
            2,
            straggler,
            "1 task of 5 s among 2,000 of 5 ms, 2 workers (ideal 7.5 s)",
        ),
        (
            "uniform",
            2,
            vec![100; 100],
            "100 tasks of 100 ms, 2 workers (ideal 5 s)",
        ),
    ];
    let peers = c.peers(t);
    for (name, workers, items, label) in cases {
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
                &format!("max_workers = {workers}\nchunksize = \"auto\""),
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
        for i in 0..c.o.makespan_reps {
            let (_, ev) = w.loky_run(&toml, LIMIT, |_, _| {})?;
            let a = ev.stage(name)?;
            let mut line = format!("loky-run {:.3} × ideal", a / ideal_s);
            t.row("makespan", label, "× ideal", Better::Lower)
                .push(Peer::LokyRun, a / ideal_s);
            for &p in &peers {
                let (_, v) = py(
                    w,
                    p,
                    &["makespan", "--items", &items_arg, "--workers", &workers_arg],
                )?;
                let b = f64_of(&v, "makespan_s")?;
                let _ = write!(line, ", {} {:.3}", p.label(), b / ideal_s);
                t.row("makespan", label, "× ideal", Better::Lower)
                    .push(p, b / ideal_s);
            }
            println!("   {name} rep {i}: {line}");
        }
    }
    Ok(())
}

/// VmRSS and PSS of a process, in KiB.
fn mem_kib(pid: u32) -> Option<(f64, f64)> {
    let rss = proc::rss_of(pid)?.rss as f64 / 1024.0;
    let pss = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())?;
    Some((rss, pss))
}

/// Every live descendant of `root` (by the parent pids in /proc).
fn descendants(root: u32) -> Vec<u32> {
    let mut parent = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The field after the command name (which may hold spaces) ends at the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// Idle memory: the workers of a pool waiting for work, and the whole pool's processes.
fn rss(w: &W, c: &Ctx, t: &mut Table) -> Result<(), String> {
    let sleep = 1_500u64;
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
    let peers = c.peers(t);
    let wl = "idle memory";
    let (m_rss, m_pss, t_rss, t_pss) = (
        "per idle worker, VmRSS (mean of 2)",
        "per idle worker, PSS (shared pages split among their sharers)",
        "whole idle pool, VmRSS of every process (main + workers + helpers)",
        "whole idle pool, PSS of every process",
    );
    let mib = |kib: f64| kib / 1024.0;
    for i in 0..c.o.reps {
        let mut workers: Vec<(f64, f64)> = Vec::new();
        let mut total = (0.0, 0.0);
        let mut count = 0;
        w.loky_run(&toml, LIMIT, |pid, events| {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut pids = Vec::new();
            while pids.len() < 2 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
                pids = Events::read(events).worker_pids;
            }
            std::thread::sleep(settle);
            workers = pids.iter().filter_map(|&p| mem_kib(p)).collect();
            let all: Vec<u32> = std::iter::once(pid).chain(descendants(pid)).collect();
            count = all.len();
            for p in all {
                if let Some((r, s)) = mem_kib(p) {
                    total.0 += r;
                    total.1 += s;
                }
            }
        })?;
        if workers.len() != 2 {
            return Err(format!(
                "read the memory of {} loky-run workers, not 2",
                workers.len()
            ));
        }
        let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
        let lr_rss: Vec<f64> = workers.iter().map(|w| w.0).collect();
        let lr_pss: Vec<f64> = workers.iter().map(|w| w.1).collect();
        let mut line = format!(
            "loky-run worker {:.2} MiB (PSS {:.2}), all {count} processes {:.2} MiB (PSS {:.2})",
            mib(mean(&lr_rss)),
            mib(mean(&lr_pss)),
            mib(total.0),
            mib(total.1)
        );
        t.row(wl, m_rss, "MiB", Better::Lower)
            .push(Peer::LokyRun, mib(mean(&lr_rss)));
        t.row(wl, m_pss, "MiB", Better::Lower)
            .push(Peer::LokyRun, mib(mean(&lr_pss)));
        t.row(wl, t_rss, "MiB", Better::Lower)
            .push(Peer::LokyRun, mib(total.0));
        t.row(wl, t_pss, "MiB", Better::Lower)
            .push(Peer::LokyRun, mib(total.1));
        for &p in &peers {
            let (_, v) = py(
                w,
                p,
                &["rss", "--settle-ms", &settle.as_millis().to_string()],
            )?;
            let kib = |x: &Value, key: &str| x[key].as_f64().unwrap_or(f64::NAN);
            let ws = v["workers"].as_array().cloned().unwrap_or_default();
            let all = v["all"].as_array().cloned().unwrap_or_default();
            let sum = |key: &str| all.iter().map(|x| kib(x, key)).sum::<f64>();
            if !ws.is_empty() {
                let r: Vec<f64> = ws.iter().map(|x| kib(x, "VmRSS")).collect();
                let s: Vec<f64> = ws.iter().map(|x| kib(x, "Pss")).collect();
                t.row(wl, m_rss, "MiB", Better::Lower)
                    .push(p, mib(mean(&r)));
                t.row(wl, m_pss, "MiB", Better::Lower)
                    .push(p, mib(mean(&s)));
                let _ = write!(
                    line,
                    ", {} worker {:.2} MiB (PSS {:.2})",
                    p.label(),
                    mib(mean(&r)),
                    mib(mean(&s))
                );
            }
            t.row(wl, t_rss, "MiB", Better::Lower)
                .push(p, mib(sum("VmRSS")));
            t.row(wl, t_pss, "MiB", Better::Lower)
                .push(p, mib(sum("Pss")));
            let _ = write!(
                line,
                ", {} all {} processes {:.2} MiB (PSS {:.2})",
                p.label(),
                all.len(),
                mib(sum("VmRSS")),
                mib(sum("Pss"))
            );
            if p == Peer::Hq {
                for m in [m_rss, m_pss] {
                    t.row(wl, m, "MiB", Better::Lower).note(
                        p,
                        "n/a: LocalCluster's server, worker and client are one process".to_owned(),
                    );
                }
            }
        }
        println!("   rep {i}: {line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_notes_and_missing_peers() {
        let mut t = Table::default();
        t.missing[Peer::Hq.idx()] = Some("--no-hq".to_owned());
        t.row("w", "time", "ms", Better::Lower)
            .push(Peer::LokyRun, 10.0)
            .push(Peer::Pool, 20.0)
            .push(Peer::Pool, 40.0)
            .push(Peer::Loky, 50.0)
            .note(Peer::Loky, "(chunksize 1000)".to_owned());
        t.row("w", "rate", "tasks/s", Better::Higher)
            .push(Peer::LokyRun, 4e6)
            .push(Peer::Pool, 1e6);
        assert_eq!(ratio(&t.rows[0], Peer::Pool), Some(3.0));
        assert_eq!(ratio(&t.rows[1], Peer::Pool), Some(4.0));
        assert_eq!(ratio(&t.rows[1], Peer::Loky), None);
        let md = t.markdown();
        assert!(
            md.contains("| w | time | ms | 10.0 | 30.0 (20.0–40.0) | 50.0 (chunksize 1000) | not run | Pool 3.0×, loky 5.0× |"),
            "{md}"
        );
        assert!(md.contains("HyperQueue: not run (--no-hq)"), "{md}");
        assert_eq!(cpu_loop(0), 0);
        assert_eq!(cpu_loop(1), (0..1000u64).map(|i| i * i).sum::<u64>());
    }
}

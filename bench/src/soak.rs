//! The soak benchmark (issue 13, item 6): many tasks whose workers crash at random, a runner
//! killed with SIGKILL at random moments and finished with `--resume`, until the run is done.
//! The output must hold exactly one record per input and be byte-identical to a clean run's.
//!
//! ```sh
//! cargo run --release -p bench -- soak --scale 0.02     # 200000 tasks: a few minutes
//! cargo run --release -p bench -- soak                  # 10 million tasks
//! ```
//!
//! Tasks are `faults::crash_randomly` over `range = [0, N)`: each call crashes its worker
//! (SIGSEGV, SIGABRT or `exit(3)`) with probability `--crash` (default 1%), and counts itself
//! in a shared file of one u32 per input, so the benchmark knows exactly how often each input
//! ran. `retries` (default 5) heals the crashes: a task fails for good only if it crashes
//! `retries + 1` times in a row (1e-12 at 1%). The clean run is the same pipeline with a crash
//! probability of 0. Every child process is bounded by a time limit; after every kill the
//! benchmark waits until no process of the runner's binary is left (and kills and reports any
//! that is).

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Options {
    tasks: u64,
    crash: f64,
    retries: u32,
    workers: usize,
    kills: u32,
    /// A kill comes this long after a (re)start, uniformly at random.
    kill_after: (f64, f64),
    /// The whole benchmark's time limit.
    limit: Duration,
    seed: u64,
    build: bool,
    keep: bool,
}

fn usage() -> &'static str {
    "usage: bench soak [--scale F | --tasks N] [--crash P] [--retries R] [--workers W]\n\
     \x20                 [--kills K] [--kill-after MIN-MAX] [--limit SECS] [--seed S] [--no-build] [--keep]\n\
     defaults: 10000000 tasks (scale 1), --crash 0.01, --retries 5, --workers 2, --kills 20,\n\
     --kill-after 0.5-8 (seconds after each start), --limit 7200"
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        tasks: 10_000_000,
        crash: 0.01,
        retries: 5,
        workers: 2,
        kills: 20,
        kill_after: (0.5, 8.0),
        limit: Duration::from_secs(7200),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        build: true,
        keep: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |what: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} takes {what}"))
        };
        match a.as_str() {
            "--scale" => {
                let s = value("a number")?
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0)
                    .ok_or("--scale takes a number above 0")?;
                o.tasks = ((10_000_000.0 * s).round() as u64).max(1);
            }
            "--tasks" => {
                o.tasks = value("a number")?
                    .parse()
                    .map_err(|_| "--tasks takes a number")?;
            }
            "--crash" => {
                o.crash = value("a probability")?
                    .parse()
                    .ok()
                    .filter(|p| (0.0..1.0).contains(p))
                    .ok_or("--crash takes a probability below 1")?;
            }
            "--retries" => {
                o.retries = value("a number")?
                    .parse()
                    .map_err(|_| "--retries takes a number")?;
            }
            "--workers" => {
                o.workers = value("a number")?
                    .parse()
                    .ok()
                    .filter(|&w| w > 0)
                    .ok_or("--workers takes a number ≥ 1")?;
            }
            "--kills" => {
                o.kills = value("a number")?
                    .parse()
                    .map_err(|_| "--kills takes a number")?;
            }
            "--kill-after" => {
                let v = value("MIN-MAX seconds")?;
                let range = v
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?)))
                    .filter(|(a, b)| *a > 0.0 && a <= b)
                    .ok_or("--kill-after takes MIN-MAX seconds, 0 < MIN ≤ MAX")?;
                o.kill_after = range;
            }
            "--limit" => {
                o.limit = Duration::from_secs(
                    value("seconds")?
                        .parse()
                        .map_err(|_| "--limit takes seconds")?,
                );
            }
            "--seed" => {
                o.seed = value("a number")?
                    .parse()
                    .map_err(|_| "--seed takes a number")?;
            }
            "--no-build" => o.build = false,
            "--keep" => o.keep = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// `bench soak ...`: runs the benchmark, prints its figures; the exit code says whether every
/// check held.
pub(crate) fn main(args: &[String]) -> i32 {
    crate::subcommand("soak", args, parse, usage(), run)
}

/// splitmix64: the benchmark's own random numbers (kill times), reproducible with `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

struct Paths {
    dir: PathBuf,
    loky_run: PathBuf,
    plugin: PathBuf,
}

fn setup(opts: &Options) -> Result<Paths, String> {
    let (root, target) = crate::build::dirs()?;
    if opts.build {
        crate::build::release(&root, "faults")?;
    }
    let dir = target.join("bench-work").join("soak");
    let _ = fs::remove_dir_all(&dir);
    // Private copies: a rebuild while the benchmark runs cannot change what it runs, and
    // the processes of this copy are the ones that must all be gone after each kill.
    let (loky_run, plugin) = crate::build::private_copies(&target, &dir.join("bin"), "faults")?;
    let canonical = |p: PathBuf| fs::canonicalize(&p).map_err(|e| e.to_string());
    Ok(Paths {
        dir,
        plugin: canonical(plugin)?,
        loky_run: canonical(loky_run)?,
    })
}

/// Writes the pipeline of one run (`clean` or `soak`) and its zeroed call counters.
fn pipeline(p: &Paths, opts: &Options, name: &str, crash: f64) -> Result<PathBuf, String> {
    let counts = p.dir.join(format!("{name}.counts"));
    let f = File::create(&counts).map_err(|e| format!("{}: {e}", counts.display()))?;
    f.set_len(opts.tasks * 4)
        .map_err(|e| format!("{}: {e}", counts.display()))?;
    let s = |v: &str| serde_json::to_string(v).expect("strings serialize");
    let text = format!(
        "[pipeline]\nname = \"soak\"\nplugins = [{plugin}]\noutput_dir = {out}\n\n\
         [pool]\nmax_workers = {workers}\nretries = {retries}\non_error = \"continue\"\n\
         env = {{ FAULTS_CRASH_PROBABILITY = {p}, FAULTS_CALL_COUNTS = {counts} }}\n\n\
         [[stage]]\nname = \"soak\"\ntask = \"faults::crash_randomly\"\ninput = {{ range = [0, {n}] }}\n",
        plugin = s(&p.plugin.display().to_string()),
        out = s(&format!("out-{name}")),
        workers = opts.workers,
        retries = opts.retries,
        p = s(&crash.to_string()),
        counts = s(&counts.display().to_string()),
        n = opts.tasks,
    );
    let path = p.dir.join(format!("{name}.toml"));
    fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// How one start of the runner ended.
enum Ended {
    /// It exited by itself with this code.
    Exited(i32),
    /// We killed it (SIGKILL).
    Killed,
}

/// Pids of live processes running `exe` (the runner, its guardian, its workers).
fn processes_of(exe: &Path) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if fs::read_link(e.path().join("exe")).is_ok_and(|x| x == exe) {
            let cmdline = fs::read(e.path().join("cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .replace('\0', " ")
                        .trim()
                        .to_owned()
                })
                .unwrap_or_default();
            found.push((pid, cmdline));
        }
    }
    found
}

/// Waits until no process of `exe` is left (up to `wait`); kills and returns those that are.
fn leftovers(exe: &Path, wait: Duration) -> Vec<(u32, String)> {
    let deadline = Instant::now() + wait;
    loop {
        let left = processes_of(exe);
        if left.is_empty() {
            return left;
        }
        if Instant::now() >= deadline {
            for (pid, _) in &left {
                // SAFETY: kill(2) has no memory-safety preconditions; these are processes of
                // the benchmark's private copy of the binary.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            }
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the runner on `toml`; kills it with SIGKILL at `kill_at` if it is still running,
/// or kills its process group when `deadline` passes (an error then).
fn start(
    p: &Paths,
    toml: &Path,
    resume: bool,
    events: &Path,
    kill_at: Option<Instant>,
    deadline: Instant,
) -> Result<Ended, String> {
    let log = p.dir.join("runner.stderr");
    let stderr = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(&p.loky_run);
    cmd.arg("run").arg(toml);
    if resume {
        cmd.arg("--resume");
    }
    cmd.args(["--progress", "never", "-q", "--events"])
        .arg(events)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start loky-run: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let mut killed = false;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid pointer; `pid` is our child, not yet reaped.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            drop(child); // reaped already; `Child` never waits on drop
            if killed {
                return Ok(Ended::Killed);
            }
            if libc::WIFEXITED(status) {
                return Ok(Ended::Exited(libc::WEXITSTATUS(status)));
            }
            return Err(format!(
                "loky-run died by signal {}",
                libc::WTERMSIG(status)
            ));
        }
        if r < 0 {
            return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
        }
        let now = Instant::now();
        if now >= deadline {
            // SAFETY: kill(2)/killpg(2) have no memory-safety preconditions; the group is the
            // child's own (process_group(0)) and the child is not reaped, so its id is ours.
            unsafe { libc::killpg(pid, libc::SIGKILL) };
            let mut status = 0;
            // SAFETY: as above.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            return Err("the benchmark ran over its --limit: loky-run was killed".into());
        }
        if !killed && kill_at.is_some_and(|t| now >= t) {
            // The runner alone, as `kill -9 PID` would: what it started must end by itself.
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the event logs of all starts say.
#[derive(Default)]
struct Tally {
    crashed_workers: u64,
    retried: u64,
    failed: u64,
    starts: u64,
}

fn tally(events: &Path, t: &mut Tally) {
    let Ok(f) = File::open(events) else { return };
    for line in BufReader::new(f).lines().map_while(Result::ok) {
        // A runner killed mid-write leaves a torn last line: skipped.
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match v["event"].as_str() {
            Some("worker_exited") if v["reason"] == "crashed" => t.crashed_workers += 1,
            Some("task_retried") => t.retried += 1,
            Some("task_failed") => t.failed += 1,
            Some("run_started") => t.starts += 1,
            _ => {}
        }
    }
}

/// How often each input ran, from the counters the task kept.
#[derive(Debug, Default)]
struct Counts {
    calls: u64,
    never: u64,
    more_than_once: u64,
    max: u32,
}

fn counts(path: &Path) -> Result<Counts, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut c = Counts::default();
    for word in bytes.chunks_exact(4) {
        let n = u32::from_le_bytes(word.try_into().expect("4 bytes"));
        c.calls += u64::from(n);
        c.never += u64::from(n == 0);
        c.more_than_once += u64::from(n > 1);
        c.max = c.max.max(n);
    }
    Ok(c)
}

/// Compares two outputs and checks that `a` holds exactly the records `{"index":i,"output":i}`
/// for i in 0..n, in order. Returns the first problem.
fn check_outputs(a: &Path, b: &Path, n: u64) -> Result<(), String> {
    let open = |p: &Path| {
        File::open(p)
            .map(|f| BufReader::with_capacity(1 << 20, f))
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let (mut ra, mut rb) = (open(a)?, open(b)?);
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    let mut want = Vec::new();
    for i in 0..=n {
        la.clear();
        lb.clear();
        let ga = ra.read_until(b'\n', &mut la).map_err(|e| e.to_string())?;
        let gb = rb.read_until(b'\n', &mut lb).map_err(|e| e.to_string())?;
        if la != lb {
            return Err(format!(
                "line {} differs: {:?} (soak) vs {:?} (clean)",
                i + 1,
                String::from_utf8_lossy(&la),
                String::from_utf8_lossy(&lb)
            ));
        }
        if i == n {
            if ga != 0 || gb != 0 {
                return Err(format!("more than {n} lines"));
            }
            break;
        }
        want.clear();
        want.extend_from_slice(format!("{{\"index\":{i},\"output\":{i}}}\n").as_bytes());
        if la != want {
            return Err(format!(
                "line {} is not the record of input {i}: {:?}",
                i + 1,
                String::from_utf8_lossy(&la)
            ));
        }
    }
    Ok(())
}

fn run(opts: &Options) -> Result<bool, String> {
    let started = Instant::now();
    let deadline = started + opts.limit;
    let p = setup(opts)?;
    let output = |name: &str| p.dir.join(format!("out-{name}")).join("soak.jsonl");
    println!(
        "== soak: {} tasks, crash probability {} per call, retries {}, {} workers, up to {} kills {}–{} s after each start, seed {}",
        opts.tasks,
        opts.crash,
        opts.retries,
        opts.workers,
        opts.kills,
        opts.kill_after.0,
        opts.kill_after.1,
        opts.seed
    );

    // The clean run: no crash, no kill.
    let clean = pipeline(&p, opts, "clean", 0.0)?;
    let t = Instant::now();
    let events = p.dir.join("clean.events.jsonl");
    match start(&p, &clean, false, &events, None, deadline)? {
        Ended::Exited(0) => {}
        Ended::Exited(code) => return Err(format!("the clean run exited with {code}")),
        Ended::Killed => unreachable!("never killed"),
    }
    let clean_wall = t.elapsed();
    let clean_counts = counts(&p.dir.join("clean.counts"))?;
    println!(
        "   clean run: {:.1} s, {} calls",
        clean_wall.as_secs_f64(),
        clean_counts.calls
    );
    let clean_left = leftovers(&p.loky_run, Duration::from_secs(10));

    // The soak: crashes, kills, resumes.
    let soak = pipeline(&p, opts, "soak", opts.crash)?;
    let mut rng = Rng(opts.seed);
    let mut tally_all = Tally::default();
    let mut kills = 0u32;
    let mut resumes = 0u32;
    let mut left_after_kills = Vec::new();
    let soak_started = Instant::now();
    let exit_code = loop {
        let attempt = kills + 1;
        let events = p.dir.join(format!("soak.events.{attempt}.jsonl"));
        let kill_at = (kills < opts.kills).then(|| {
            Instant::now()
                + Duration::from_secs_f64(rng.uniform(opts.kill_after.0, opts.kill_after.1))
        });
        // A kill before the run recorded anything leaves nothing to resume.
        let resume = p.dir.join("out-soak").join("manifest.json").exists();
        resumes += u32::from(resume);
        let t = Instant::now();
        let ended = start(&p, &soak, resume, &events, kill_at, deadline)?;
        tally(&events, &mut tally_all);
        match ended {
            Ended::Killed => {
                kills += 1;
                let left = leftovers(&p.loky_run, Duration::from_secs(10));
                println!(
                    "   start {attempt}{}: killed after {:.2} s{}",
                    if resume { " (--resume)" } else { "" },
                    t.elapsed().as_secs_f64(),
                    if left.is_empty() {
                        String::new()
                    } else {
                        format!(", {} processes left behind: {left:?}", left.len())
                    }
                );
                left_after_kills.extend(left);
            }
            Ended::Exited(code) => {
                println!(
                    "   start {attempt}{}: finished by itself after {:.2} s, exit code {code}",
                    if resume { " (--resume)" } else { "" },
                    t.elapsed().as_secs_f64()
                );
                break code;
            }
        }
    };
    let soak_wall = soak_started.elapsed();
    let final_left = leftovers(&p.loky_run, Duration::from_secs(10));
    let soak_counts = counts(&p.dir.join("soak.counts"))?;
    let same = check_outputs(&output("soak"), &output("clean"), opts.tasks);
    let journal_left = p.dir.join("out-soak").join(".journal").exists();

    let ok = exit_code == 0
        && same.is_ok()
        && soak_counts.never == 0
        && clean_counts.calls == opts.tasks
        && clean_counts.more_than_once == 0
        && left_after_kills.is_empty()
        && final_left.is_empty()
        && clean_left.is_empty()
        && !journal_left
        && tally_all.failed == 0;
    let extra = soak_counts.calls.saturating_sub(opts.tasks);
    let rows = [
        ("tasks", opts.tasks.to_string()),
        ("crash probability per call", opts.crash.to_string()),
        ("retries", opts.retries.to_string()),
        ("workers", opts.workers.to_string()),
        (
            "clean run, wall time",
            format!("{:.1} s", clean_wall.as_secs_f64()),
        ),
        (
            "soak, wall time (all starts, kills and resumes)",
            format!("{:.1} s", soak_wall.as_secs_f64()),
        ),
        ("runner starts", (kills + 1).to_string()),
        ("SIGKILLs of the runner", kills.to_string()),
        ("of the starts, with --resume", resumes.to_string()),
        (
            "worker crashes (worker_exited: crashed)",
            tally_all.crashed_workers.to_string(),
        ),
        ("task retries (task_retried)", tally_all.retried.to_string()),
        (
            "tasks failed for good (task_failed)",
            tally_all.failed.to_string(),
        ),
        ("task calls in all", soak_counts.calls.to_string()),
        (
            "tasks run more than once",
            soak_counts.more_than_once.to_string(),
        ),
        (
            "calls beyond one per task (crash retries + reruns after kills)",
            format!(
                "{extra} ({:.3}% of tasks)",
                100.0 * extra as f64 / opts.tasks as f64
            ),
        ),
        ("most calls of one task", soak_counts.max.to_string()),
        ("tasks never run", soak_counts.never.to_string()),
        (
            "output vs clean run",
            match &same {
                Ok(()) => "byte-identical, one record per input".to_string(),
                Err(e) => format!("DIFFERENT: {e}"),
            },
        ),
        (
            "processes left after kills / at the end",
            format!(
                "{} / {}",
                left_after_kills.len(),
                final_left.len() + clean_left.len()
            ),
        ),
        ("final exit code", exit_code.to_string()),
        ("seed", opts.seed.to_string()),
    ];
    println!("\n| soak | |\n| --- | --- |");
    for (k, v) in &rows {
        println!("| {k} | {v} |");
    }
    if !ok {
        let log = fs::read_to_string(p.dir.join("runner.stderr")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        println!(
            "\nthe runner's stderr (last lines):\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        );
    }
    println!(
        "\n{}",
        if ok {
            "soak: every check held"
        } else {
            "soak: FAILED"
        }
    );
    let json = json!({
        "ok": ok,
        "rows": rows.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "leftovers": left_after_kills.iter().chain(&final_left).map(|(pid, c)| json!([pid, c])).collect::<Vec<_>>(),
    });
    let report = p.dir.with_file_name("soak-results.json");
    let _ = fs::write(
        &report,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
    println!("(also in {})", report.display());
    if !opts.keep {
        // Outputs and counters are hundreds of MB at full scale.
        let _ = fs::remove_dir_all(&p.dir);
    }
    Ok(ok)
}

//! `launcher = "slurm"` against a real single-node cluster (`scripts/slurm-up.sh`).
//!
//! With `LOKY_RUN_SLURM_TESTS=1` (what `.ci/run` sets) these tests are required: a cluster that
//! is not up fails each of them with the reason. Without it they run when `sinfo` answers and
//! otherwise say on stderr that they were skipped; `LOKY_RUN_SLURM_TESTS=0` skips them.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Fixture, RunResult, header, plugin_path, read_jsonl, wait_for};

/// One allocation at a time: the node has as many CPUs as one test allocates, and a test
/// waiting in the queue would eat into its own time limits.
static CLUSTER: Mutex<()> = Mutex::new(());

/// The cluster, for one test at a time: of this test binary ([`CLUSTER`]) and of any other
/// process taking the same lock (a second `cargo test` from another checkout would otherwise
/// share the nodes, and the multi-node tests break nodes on purpose). Waits for the other
/// process (bounded: its tests take a few minutes at most).
pub(crate) struct ClusterLock {
    _here: std::sync::MutexGuard<'static, ()>,
    _file: std::fs::File,
}

pub(crate) fn cluster_lock() -> ClusterLock {
    use std::os::fd::AsRawFd;
    let here = CLUSTER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = std::env::temp_dir().join("loky-run-slurm-tests.lock");
    // Read-only is enough for flock: whoever made the file, anyone can take the lock.
    let file = std::fs::File::open(&path)
        .or_else(|_| {
            use std::os::unix::fs::PermissionsExt;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            let _ = file.set_permissions(std::fs::Permissions::from_mode(0o666));
            Ok::<_, std::io::Error>(file)
        })
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    // SAFETY: flock on a descriptor this function owns; released when the file is closed.
    while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "another process held {} for 15 minutes (Slurm tests running elsewhere?)",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ClusterLock {
        _here: here,
        _file: file,
    }
}

/// Whether the Slurm tests run here; panics when they are required and the cluster is down.
pub(crate) fn cluster_up() -> bool {
    let mode = std::env::var("LOKY_RUN_SLURM_TESTS").unwrap_or_default();
    if mode == "0" {
        eprintln!("Slurm tests skipped: LOKY_RUN_SLURM_TESTS=0");
        return false;
    }
    let state = Command::new("timeout")
        .args(["20", "sinfo", "-h", "-o", "%t"])
        .stdin(Stdio::null())
        .output();
    let (ok, why) = match state {
        Ok(o) => {
            let out = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            // One line per state (a node another test took away may be `down*`).
            let ready = o.status.success()
                && out
                    .lines()
                    .any(|l| ["idle", "mix", "alloc"].iter().any(|s| l.starts_with(s)));
            let why = format!(
                "sinfo: exit {:?}, node state {out:?}, {}",
                o.status.code(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
            (ready, why)
        }
        Err(e) => (false, format!("sinfo could not run: {e}")),
    };
    if ok {
        return true;
    }
    assert!(
        mode != "1",
        "the Slurm tests are required (LOKY_RUN_SLURM_TESTS=1) but the cluster is not available ({why}); \
         start it with `sudo scripts/slurm-up.sh`"
    );
    eprintln!(
        "Slurm tests skipped: no cluster ({why}); run `sudo scripts/slurm-up.sh` and set LOKY_RUN_SLURM_TESTS=1"
    );
    false
}

/// Runs `bash -c SCRIPT` inside `salloc -n TASKS` in the fixture directory; `$LOKY` is the
/// runner. The script's output is the result's stdout.
fn salloc_command(fx: &Fixture, tasks: u32, script: &str) -> Command {
    salloc_command_with(fx, &[&format!("--ntasks={tasks}")], script)
}

/// As [`salloc_command`], with `args` (e.g. `--nodes=3 --ntasks=6 --no-kill`) for `salloc`.
pub(crate) fn salloc_command_with(fx: &Fixture, args: &[&str], script: &str) -> Command {
    let mut cmd = Command::new("salloc");
    cmd.args(args)
        .args(["--time=10", "--job-name=loky-e2e", "bash", "-c", script])
        .current_dir(fx.path())
        .env("LOKY", env!("CARGO_BIN_EXE_loky-run"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("LOKY_") || k.starts_with("SLURM_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn salloc(fx: &Fixture, tasks: u32, script: &str) -> RunResult {
    RunResult::from(salloc_command(fx, tasks, script).output().unwrap())
}

/// After the runner exited inside the allocation: the job's worker steps still known to Slurm.
pub(crate) const LIST_WORKER_STEPS: &str =
    "echo \"steps:$(squeue -s -h -j \"$SLURM_JOB_ID\" -o %j | grep -c loky-run-worker)\"";

/// `(exit code of the runner, worker steps left)` printed by a script ending in
/// `echo "runner=$?"; LIST_WORKER_STEPS`.
pub(crate) fn runner_code_and_steps(r: &RunResult) -> (i32, usize) {
    let field = |name: &str| -> i64 {
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in\n{}\n{}", r.stdout, r.stderr))
            .trim()
            .parse()
            .unwrap()
    };
    (field("runner=") as i32, field("steps:") as usize)
}

pub(crate) fn events_of(events: &[Value], kind: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["event"] == kind)
        .cloned()
        .collect()
}

pub(crate) fn pids(values: &[Value]) -> BTreeSet<u64> {
    values.iter().map(|v| v.as_u64().unwrap()).collect()
}

/// The quickstart pipeline with the test build of the demo plugin.
fn quickstart(output_dir: &str, launcher: &str) -> String {
    let text =
        std::fs::read_to_string(crate::support::workspace_root().join("configs/quickstart.toml"))
            .unwrap();
    text.replace(
        "plugins = [\"../plugins/demo\"]",
        &format!("plugins = [\"{}\"]", plugin_path("demo").display()),
    )
    .replace(
        "output_dir = \"out/quickstart\"",
        &format!("output_dir = \"{output_dir}\""),
    )
    .replace("[pool]\n", &format!("[pool]\nlauncher = \"{launcher}\"\n"))
}

#[test]
fn the_quickstart_on_slurm_writes_the_same_outputs_as_locally() {
    if !cluster_up() {
        return;
    }
    let _one = cluster_lock();
    let fx = Fixture::new();
    let local = fx.write("local.toml", &quickstart("out-local", "local"));
    assert!(
        std::fs::read_to_string(&local)
            .unwrap()
            .contains("libdemo.so")
    );
    fx.run(&[local.to_str().unwrap()]).assert_code(0);
    fx.write("slurm.toml", &quickstart("out-slurm", "slurm"));
    let r = salloc(
        &fx,
        2,
        &format!(
            "$LOKY slurm.toml --progress never --events events.jsonl; echo \"runner=$?\"; {LIST_WORKER_STEPS}"
        ),
    );
    assert_eq!(runner_code_and_steps(&r), (0, 0), "{}", r.stderr);

    for stage in ["squares", "copied", "work"] {
        let read = |dir: &str| std::fs::read(fx.path().join(dir).join(format!("{stage}.jsonl")));
        assert_eq!(
            read("out-local").unwrap(),
            read("out-slurm").unwrap(),
            "{stage}.jsonl differs"
        );
    }
    // `greeting` reads LOKY_WORKER_ID, which depends on which worker took the item.
    let (l, s) = (
        read_jsonl(&fx.path().join("out-local/greeting.jsonl")),
        read_jsonl(&fx.path().join("out-slurm/greeting.jsonl")),
    );
    assert_eq!(l.len(), 3);
    assert_eq!((&l[0], &l[2]), (&s[0], &s[2]));
    assert!(["1", "2"].contains(&s[1]["output"].as_str().unwrap()));

    let events = fx.events();
    // Steps join as they connect: the second may come after the quickstart's short work is
    // done (then it is given up at the end). Each that came is its own step.
    let ready = events_of(&events, "worker_ready");
    assert!((1..=2).contains(&ready.len()), "{ready:?}");
    let steps: BTreeSet<&str> = ready
        .iter()
        .map(|e| e["slurm_step"].as_str().expect("a step id"))
        .collect();
    assert_eq!(steps.len(), ready.len(), "{ready:?}");
    assert!(ready.iter().all(|e| e["slurm_job"].is_string()));
    assert!(
        events_of(&events, "worker_started")
            .iter()
            .all(|e| e["launcher"] == "slurm")
    );
}

#[test]
fn reuse_keeps_the_steps_kill_workers_starts_new_ones_resize_adds_one() {
    if !cluster_up() {
        return;
    }
    let _one = cluster_lock();
    let fx = Fixture::new();
    let pid_stage = |name: &str, n: usize, extra: &str| {
        format!(
            "[[stage]]\nname = \"{name}\"\ntask = \"demo::pid\"\ninput = {{ items = [{}] }}\nchunksize = 1\n{extra}\n",
            vec!["150"; n].join(", ")
        )
    };
    // Steps join a stage as they connect, so a, c and d are rendezvous stages of as many
    // tasks as workers: each ends only once all its workers run at once (every step of the
    // pool has connected, whatever the machine's load).
    let meet = |name: &str, n: usize, extra: &str| {
        let item = format!(
            "{{ path = \"{}\", count = {n}, timeout_ms = 60000 }}",
            fx.path().join(name).display()
        );
        format!(
            "[[stage]]\nname = \"{name}\"\ntask = \"faults::rendezvous\"\ninput = {{ items = [{}] }}\nchunksize = 1\n{extra}\n",
            vec![item; n].join(", ")
        )
    };
    // --overlap: a third worker step may share the allocation's two CPUs.
    let text = header(
        "steps",
        "max_workers = 2\nlauncher = \"slurm\"\nsrun_args = [\"--overlap\"]",
    ) + &meet("a", 2, "")
        + &pid_stage("b", 6, "")
        + &meet("c", 2, "kill_workers = true")
        + &meet("d", 3, "max_workers = 3");
    fx.write("pipeline.toml", &text);
    let r = salloc(
        &fx,
        2,
        &format!(
            "$LOKY pipeline.toml --progress never --events events.jsonl; echo \"runner=$?\"; {LIST_WORKER_STEPS}"
        ),
    );
    assert_eq!(runner_code_and_steps(&r), (0, 0), "{}", r.stderr);

    let events = fx.events();
    let decisions: Vec<String> = events_of(&events, "pool_decision")
        .iter()
        .map(|e| e["decision"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(decisions, ["start", "reuse", "restart", "resize"]);

    // Worker steps became ready: 2 for a, none for b, 2 new for c, 1 more for d.
    let mut ready_per_stage = Vec::new();
    let mut stage = "";
    for e in &events {
        match e["event"].as_str().unwrap() {
            "stage_started" => stage = e["stage"].as_str().unwrap(),
            "worker_ready" => ready_per_stage.push((stage.to_owned(), e.clone())),
            _ => {}
        }
    }
    let count = |s: &str| ready_per_stage.iter().filter(|(st, _)| st == s).count();
    assert_eq!(
        [count("a"), count("b"), count("c"), count("d")],
        [2, 0, 2, 1]
    );
    let steps: BTreeSet<&str> = ready_per_stage
        .iter()
        .map(|(_, e)| e["slurm_step"].as_str().unwrap())
        .collect();
    assert_eq!(steps.len(), 5, "every worker is its own step");

    let (a, b, c, d) = (
        pids(&fx.outputs("a")),
        pids(&fx.outputs("b")),
        pids(&fx.outputs("c")),
        pids(&fx.outputs("d")),
    );
    assert_eq!(a.len(), 2, "a ran on both workers at once");
    assert!(
        b.is_subset(&a),
        "reuse: the same processes ({a:?} vs {b:?})"
    );
    assert!(a.is_disjoint(&c), "kill_workers: fresh processes");
    assert_eq!((c.len(), d.len()), (2, 3));
    assert!(c.is_subset(&d), "resize kept c's workers");
    let ready_pids: BTreeSet<u64> = ready_per_stage
        .iter()
        .filter(|(s, _)| s == "c" || s == "d")
        .map(|(_, e)| e["pid"].as_u64().unwrap())
        .collect();
    assert!(
        d.is_subset(&ready_pids),
        "d ran on c's workers and the one it added"
    );
    // Nothing exited between the start of c and the end of d but for shutdown.
    let exits = events_of(&events, "worker_exited");
    assert!(
        exits
            .iter()
            .all(|e| e["reason"] == "restart" || e["reason"] == "shutdown"),
        "{exits:?}"
    );
}

#[test]
fn a_cancelled_worker_step_is_a_crash_retried_and_no_step_is_left() {
    if !cluster_up() {
        return;
    }
    let _one = cluster_lock();
    let fx = Fixture::new();
    // Two rendezvous tasks that need three arrivals: each worker appends its pid to `met` and
    // waits, so once `met` has two lines both steps are mid-task, and they stay so until the
    // retry of the cancelled one's task arrives on a replacement step.
    let met = fx.path().join("met");
    let item = format!(
        "{{ path = \"{}\", count = 3, timeout_ms = 60000 }}",
        met.display()
    );
    let text = header(
        "scancel",
        "max_workers = 2\nlauncher = \"slurm\"\nretries = 1\nchunksize = 1",
    ) + &format!(
        "[[stage]]\nname = \"s\"\ntask = \"faults::rendezvous\"\ninput = {{ items = [{item}, {item}] }}\n"
    );
    fx.write("pipeline.toml", &text);
    let script = format!(
        r#"$LOKY pipeline.toml --progress never --events events.jsonl &
runner=$!
until [ "$(cat met 2>/dev/null | wc -l)" -ge 2 ]; do kill -0 $runner || break; sleep 0.05; done
scancel "$SLURM_JOB_ID.0"
wait $runner; echo "runner=$?"; {LIST_WORKER_STEPS}"#
    );
    let r = salloc(&fx, 2, &script);
    assert_eq!(runner_code_and_steps(&r), (0, 0), "{}", r.stderr);

    let events = fx.events();
    let retried = events_of(&events, "task_retried");
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(retried[0]["kind"], "crashed");
    let crashed: Vec<Value> = events_of(&events, "worker_exited")
        .into_iter()
        .filter(|e| e["reason"] == "crashed")
        .collect();
    assert_eq!(crashed.len(), 1, "{crashed:?}");
    assert!(crashed[0]["signal"].is_string(), "{crashed:?}");
    // The replacement is a new step, and the retry ran there: the two tasks' results come
    // from step 1 and the new step, none from the cancelled step 0.
    let ready = events_of(&events, "worker_ready");
    assert_eq!(ready.len(), 3, "{ready:?}");
    let records = fx.records("s");
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r["output"].is_u64()), "{records:?}");
    let outputs: Vec<Value> = records.iter().map(|r| r["output"].clone()).collect();
    let survivors: BTreeSet<u64> = ready
        .iter()
        .filter(|e| e["slurm_step"] != "0")
        .map(|e| e["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids(&outputs), survivors, "{ready:?}");
}

#[test]
fn foreign_connections_are_rejected_and_the_run_is_unaffected() {
    if !cluster_up() {
        return;
    }
    let _one = cluster_lock();
    let fx = Fixture::new();
    let text = header(
        "intruders",
        "max_workers = 2\nlauncher = \"slurm\"\nchunksize = 1",
    ) + &format!(
        "[[stage]]\nname = \"s\"\ntask = \"demo::sleep_ms\"\ninput = {{ items = [{}] }}\n",
        ["200"; 20].join(", ")
    );
    fx.write("pipeline.toml", &text);
    let child = salloc_command(
        &fx,
        2,
        "$LOKY pipeline.toml --progress never --events events.jsonl; echo \"runner=$?\"",
    )
    .spawn()
    .unwrap();
    // If an assertion fails below, the allocation must not outlive the test.
    let child = KillOnDrop(Some(child));
    let events_path = fx.path().join("events.jsonl");
    let address = wait_for(|| {
        read_events(&events_path)
            .into_iter()
            .find(|e| e["event"] == "listening")
            .map(|e| e["address"].as_str().unwrap().to_owned())
    });

    // A well-formed hello with a token nobody was given.
    let mut wrong = TcpStream::connect(&address).unwrap();
    wrong
        .write_all(&hello(b"0123456789abcdef0123456789abcdef"))
        .unwrap();
    assert!(closed_by_runner(wrong));
    // No hello at all: a frame of another kind (an INIT, tag 1).
    let mut no_token = TcpStream::connect(&address).unwrap();
    no_token
        .write_all(&[2, 0, 0, 0, loky_run::protocol::tag::INIT, b'{'])
        .unwrap();
    assert!(closed_by_runner(no_token));
    // A header announcing a 4 GiB frame.
    let mut huge = TcpStream::connect(&address).unwrap();
    huge.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert!(closed_by_runner(huge));

    let r = RunResult::from(child.wait_with_output());
    assert!(r.stdout.contains("runner=0"), "{}\n{}", r.stdout, r.stderr);
    let records = fx.records("s");
    assert_eq!(records.len(), 20);
    assert!(records.iter().all(|r| r["output"] == 200));
    let events = fx.events();
    assert_eq!(events_of(&events, "connection_rejected").len(), 3);
    // Slurm steps join as they connect: the second may come after the first did the work.
    let ready = events_of(&events, "worker_ready").len();
    assert!((1..=2).contains(&ready), "{ready} workers ready");
    assert!(
        events_of(&events, "worker_exited")
            .iter()
            .all(|e| e["reason"] == "shutdown")
    );
    assert_eq!(r.stderr.matches("rejected a worker connection").count(), 3);
}

#[test]
fn a_flood_of_idle_and_slow_connections_does_not_keep_worker_steps_out() {
    if !cluster_up() {
        return;
    }
    let _one = cluster_lock();
    let fx = Fixture::new();
    let (go, met) = (fx.path().join("go"), fx.path().join("met"));
    let rendezvous = |name: &str, path: &std::path::Path, items: usize, extra: &str| {
        let item = format!(
            "{{ path = \"{}\", count = 2, timeout_ms = 300000 }}",
            path.display()
        );
        format!(
            "[[stage]]\nname = \"{name}\"\ntask = \"faults::rendezvous\"\ninput = {{ items = [{}] }}\nchunksize = 1\n{extra}\n",
            vec![item; items].join(", ")
        )
    };
    let squares = "[[stage]]\nname = \"squares\"\ntask = \"demo::square\"\ninput = { range = [0, 200] }\nchunksize = 1\n";
    // `hold` keeps the first worker step until the flood is in place (this test appends the
    // second line to `go`); `meet` then needs two fresh steps (kill_workers) running at once,
    // and they connect through the flood; `squares` runs on them.
    let text = header("flood", "launcher = \"slurm\"\nmax_workers = 1")
        + &rendezvous("hold", &go, 1, "")
        + &rendezvous("meet", &met, 2, "max_workers = 2\nkill_workers = true")
        + squares
        + "max_workers = 2\n";
    fx.write("pipeline.toml", &text);
    let reference = Fixture::new();
    let local = reference.write(
        "pipeline.toml",
        &(header("flood", "max_workers = 2") + squares),
    );
    reference.run(&[local.to_str().unwrap()]).assert_code(0);

    let child = salloc_command(
        &fx,
        2,
        &format!(
            "$LOKY pipeline.toml --progress never --events events.jsonl; echo \"runner=$?\"; {LIST_WORKER_STEPS}"
        ),
    )
    .spawn()
    .unwrap();
    let child = KillOnDrop(Some(child));
    let events_path = fx.path().join("events.jsonl");
    let address = wait_for(|| {
        read_events(&events_path)
            .into_iter()
            .find(|e| e["event"] == "listening")
            .map(|e| e["address"].as_str().unwrap().to_owned())
    });
    // 300 silent connections and 50 dribbling ones, each opened again once the runner drops
    // it: in place once it has opened all of them and as many again.
    let (stop, opened) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let flooder = {
        let (stop, opened) = (stop.clone(), opened.clone());
        std::thread::spawn(move || flood(&address, 300, 50, &stop, &opened))
    };
    let mut child = child;
    // (A run that ended already fails below, with its output.)
    wait_for(|| (opened.load(Ordering::Relaxed) >= 700 || child.exited()).then_some(()));
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&go)
        .and_then(|mut f| f.write_all(b"0\n"))
        .unwrap();
    let r = RunResult::from(child.wait_with_output());
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();

    assert_eq!(runner_code_and_steps(&r), (0, 0), "{}", r.stderr);
    let read = |fx: &Fixture| std::fs::read(fx.path().join("out/squares.jsonl")).unwrap();
    assert_eq!(read(&fx), read(&reference), "squares.jsonl differs");
    // Both steps of `meet` connected while the flood went on: they ran at the same time.
    assert_eq!(pids(&fx.outputs("meet")).len(), 2);
    let events = fx.events();
    assert_eq!(events_of(&events, "worker_ready").len(), 3);
    // Every connection the flood opened again had been dropped: each has its event, or (past
    // the cap on those) is counted in a `connections_rejected` event.
    let counted: u64 = events_of(&events, "connections_rejected")
        .iter()
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    let one_by_one = events_of(&events, "connection_rejected").len() as u64;
    assert!(one_by_one <= 100 || counted > 0, "{one_by_one} {counted}");
    assert!(one_by_one + counted >= 350, "{one_by_one} + {counted}");
}

#[test]
fn ctrl_c_inside_the_allocation_ends_every_step_and_resume_completes() {
    if !cluster_up() {
        return;
    }
    let _one = cluster_lock();
    let fx = Fixture::new();
    let text = header(
        "interrupted",
        "max_workers = 2\nlauncher = \"slurm\"\nchunksize = 1",
    ) + &format!(
        "[[stage]]\nname = \"s\"\ntask = \"demo::sleep_ms\"\ninput = {{ items = [{}] }}\n",
        (0..40)
            .map(|i| (200 + i).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    fx.write("pipeline.toml", &text);
    let script = format!(
        r#"$LOKY pipeline.toml --progress never --events events.jsonl &
runner=$!
until [ "$(grep -c '"worker_ready"' events.jsonl 2>/dev/null)" -ge 2 ]; do kill -0 $runner || break; sleep 0.05; done
sleep 0.5
kill -INT $runner
wait $runner; echo "runner=$?"; {LIST_WORKER_STEPS}"#
    );
    let r = salloc(&fx, 2, &script);
    assert_eq!(runner_code_and_steps(&r), (130, 0), "{}", r.stderr);
    let done = fx.records("s").len();
    assert!(done < 40, "interrupted before the end ({done} records)");

    let r = salloc(
        &fx,
        2,
        &format!(
            "$LOKY run --resume pipeline.toml --progress never; echo \"runner=$?\"; {LIST_WORKER_STEPS}"
        ),
    );
    assert_eq!(runner_code_and_steps(&r), (0, 0), "{}", r.stderr);
    let outputs: Vec<u64> = fx
        .outputs("s")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(outputs, (0..40).map(|i| 200 + i).collect::<Vec<u64>>());
}

#[test]
fn a_step_that_cannot_start_is_reported_with_what_srun_said() {
    if !cluster_up() {
        return;
    }
    let _one = cluster_lock();
    let fx = Fixture::new();
    let text = header(
        "badsrun",
        "launcher = \"slurm\"\nsrun_args = [\"--no-such-srun-option\"]",
    ) + "[[stage]]\nname = \"s\"\ntask = \"demo::square\"\ninput = { range = [0, 3] }\n";
    fx.write("pipeline.toml", &text);
    let r = salloc(
        &fx,
        2,
        &format!("$LOKY pipeline.toml --progress never; echo \"runner=$?\"; {LIST_WORKER_STEPS}"),
    );
    let (code, steps) = runner_code_and_steps(&r);
    assert_ne!(code, 0);
    assert_eq!(steps, 0);
    // srun's own complaint reaches the user.
    assert!(r.stderr.contains("no-such-srun-option"), "{}", r.stderr);
}

#[test]
fn by_default_one_worker_per_task_of_the_allocation_even_with_export_none() {
    if !cluster_up() {
        return;
    }
    let _one = cluster_lock();
    let fx = Fixture::new();
    // No max_workers: on this 2-CPU node the local default would be 2, and a second step
    // could not start in a 1-task allocation. SLURM_EXPORT_ENV=NONE is what
    // `sbatch --export=NONE` leaves to srun: the workers still get the runner's environment.
    let text = header(
        "ntasks",
        "launcher = \"slurm\"\nenv = { GREETING = \"hi\" }",
    ) + "[[stage]]\nname = \"s\"\ntask = \"demo::getenv\"\ninput = { items = [\"GREETING\", \"LOKY_WORKER_ID\"] }\n";
    fx.write("pipeline.toml", &text);
    let r = salloc(
        &fx,
        1,
        &format!(
            "SLURM_EXPORT_ENV=NONE $LOKY pipeline.toml --progress never --events events.jsonl; echo \"runner=$?\"; {LIST_WORKER_STEPS}"
        ),
    );
    assert_eq!(runner_code_and_steps(&r), (0, 0), "{}", r.stderr);
    assert_eq!(fx.outputs("s"), ["hi", "1"]);
    let events = fx.events();
    assert_eq!(events_of(&events, "worker_started").len(), 1);
    assert!(
        !r.stderr.contains("could not start"),
        "no step waited in vain: {}",
        r.stderr
    );
}

/// `took=SECONDS` printed by a script.
fn seconds_taken(r: &RunResult) -> u64 {
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix("took="))
        .unwrap_or_else(|| panic!("no took= in\n{}\n{}", r.stdout, r.stderr))
        .parse()
        .unwrap()
}

#[test]
fn ctrl_c_while_the_only_worker_step_waits_for_cpus_exits_130_promptly() {
    if !cluster_up() {
        return;
    }
    let _one = cluster_lock();
    let fx = Fixture::new();
    // A 1-task allocation whose CPU another step holds: the runner's only worker step waits,
    // and so does the runner, with no worker to run anything. Ctrl-C must still stop it.
    let text = header("pending", "launcher = \"slurm\"")
        + "[[stage]]\nname = \"s\"\ntask = \"demo::square\"\ninput = { range = [0, 10] }\n";
    fx.write("pipeline.toml", &text);
    let script = format!(
        r#"srun --exact -n 1 --job-name=blocker sleep 300 &
blocker=$!
until squeue -s -h -j "$SLURM_JOB_ID" -o %j | grep -q blocker; do kill -0 $blocker || break; sleep 0.05; done
$LOKY pipeline.toml --progress never --events events.jsonl &
runner=$!
until grep -q '"listening"' events.jsonl 2>/dev/null; do kill -0 $runner || break; sleep 0.05; done
kill -INT $runner
started=$SECONDS
wait $runner; echo "runner=$?"; echo "took=$((SECONDS - started))"
kill $blocker; wait $blocker 2>/dev/null
{LIST_WORKER_STEPS}"#
    );
    let r = salloc(&fx, 1, &script);
    assert_eq!(runner_code_and_steps(&r), (130, 0), "{}", r.stderr);
    // Not the 120 s connect deadline: the interrupt ends the wait.
    let took = seconds_taken(&r);
    assert!(took < 60, "took {took} s");
    assert!(r.stderr.contains("--resume"), "{}", r.stderr);
    assert!(fx.records("s").is_empty());
}

#[test]
fn a_worker_step_waiting_for_cpus_does_not_hold_up_the_stages() {
    if !cluster_up() {
        return;
    }
    let _one = cluster_lock();
    let fx = Fixture::new();
    // Two workers in a 1-task allocation: one step runs, the other waits for its CPU. The
    // stages run on the one worker (the pool reused between them) instead of waiting out the
    // 120 s connect deadline; at the end the waiting step is given up.
    let stage = |name: &str| {
        format!(
            "[[stage]]\nname = \"{name}\"\ntask = \"demo::square\"\ninput = {{ range = [0, 10] }}\n"
        )
    };
    let text =
        header("waiting", "launcher = \"slurm\"\nmax_workers = 2") + &stage("a") + &stage("b");
    fx.write("pipeline.toml", &text);
    let r = salloc(
        &fx,
        1,
        &format!(
            "started=$SECONDS; $LOKY pipeline.toml --progress never --events events.jsonl; echo \"runner=$?\"; echo \"took=$((SECONDS - started))\"; {LIST_WORKER_STEPS}"
        ),
    );
    assert_eq!(runner_code_and_steps(&r), (0, 0), "{}", r.stderr);
    let took = seconds_taken(&r);
    assert!(took < 60, "took {took} s");
    let squares: Vec<u64> = (0..10).map(|x| x * x).collect();
    for s in ["a", "b"] {
        let out: Vec<u64> = fx.outputs(s).iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(out, squares);
    }
    let events = fx.events();
    assert_eq!(events_of(&events, "worker_started").len(), 1);
    let decisions: Vec<String> = events_of(&events, "pool_decision")
        .iter()
        .map(|e| e["decision"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(decisions, ["start", "reuse"]);
}

#[test]
fn the_slurm_launcher_outside_an_allocation_says_where_to_run() {
    // Needs no cluster: the check happens before any worker starts.
    let fx = Fixture::new();
    let text = header("outside", "launcher = \"slurm\"")
        + "[[stage]]\nname = \"s\"\ntask = \"demo::square\"\ninput = { range = [0, 3] }\n";
    let p = fx.write("pipeline.toml", &text);
    let mut cmd = fx.command();
    for (k, _) in std::env::vars() {
        if k.starts_with("SLURM_") {
            cmd.env_remove(k);
        }
    }
    let r = RunResult::from(
        cmd.args([p.to_str().unwrap(), "--progress", "never"])
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("salloc") && r.stderr.contains("sbatch"),
        "{}",
        r.stderr
    );
    assert!(!fx.path().join("out/s.jsonl").exists());
}

/// A child process killed (with its output discarded) if the test ends before it is waited for.
pub(crate) struct KillOnDrop(pub(crate) Option<std::process::Child>);

impl KillOnDrop {
    /// Whether the child has ended (it can still be waited for).
    pub(crate) fn exited(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    pub(crate) fn wait_with_output(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SIGTERM, not SIGKILL: salloc then releases the allocation and ends its steps.
            // SAFETY: kill(2) on the pid of a child not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

pub(crate) fn read_events(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A HELLO frame carrying `token`, as a worker sends it.
fn hello(token: &[u8]) -> Vec<u8> {
    let mut frame = ((token.len() + 1) as u32).to_le_bytes().to_vec();
    frame.push(loky_run::protocol::tag::HELLO);
    frame.extend_from_slice(token);
    frame
}

/// Whether the runner closed the connection (EOF or reset) within a generous time, after
/// answering at most a refused hello.
fn closed_by_runner(mut s: TcpStream) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut b = [0u8; 64];
    let mut answered = 0;
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            // The answer to a hello is a frame of 6 bytes: more is not a refusal.
            Ok(n) if answered + n <= 6 => answered += n,
            Ok(_) => return false,
            // A read timeout is not a close.
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

/// Keeps `idle` silent connections and `slow` ones dribbling a hello a byte at a time open to
/// `address`, opening again each one the runner closes, until `stop`; counts in `opened`.
fn flood(address: &str, idle: usize, slow: usize, stop: &AtomicBool, opened: &AtomicU64) {
    use std::io::Read;
    let open = |slow: bool| -> Option<TcpStream> {
        let mut s = TcpStream::connect(address).ok()?;
        if slow {
            s.write_all(&256u32.to_le_bytes()).ok()?;
        }
        s.set_nonblocking(true).ok()?;
        opened.fetch_add(1, Ordering::Relaxed);
        Some(s)
    };
    let mut conns: Vec<Option<TcpStream>> = (0..idle + slow).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        for (i, slot) in conns.iter_mut().enumerate() {
            let slow = i >= idle;
            let gone = slot.as_mut().is_none_or(|s| {
                let mut b = [0u8; 16];
                let closed = match s.read(&mut b) {
                    Ok(_) => true,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
                closed || (slow && s.write(&[loky_run::protocol::tag::HELLO]).is_err())
            });
            if gone {
                *slot = open(slow);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! One-at-a-time round trips to loky-run workers, driven through the `loky_run` library, plus
//! the floors they are bounded by (a bare pipe ping-pong between two processes, with and without
//! the thread hops the real path has).
//!
//! The workers are this benchmark binary re-executed in loky-run's worker mode (`main` hands
//! `__worker` to `loky_run::worker::worker_main`, exactly as the `loky-run` binary does), so the
//! worker code measured is the runner's own.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loky_run::config::{Launcher, Reuse};
use loky_run::console::{Console, Verbosity};
use loky_run::events::EventLog;
use loky_run::plugin::{TaskKind, host};
use loky_run::pool::spawn::{SpawnRequest, spawn_worker};
use loky_run::pool::{Pool, PoolEvent, WorkerId, WorkerPool, WorkerSpec, decide};
use loky_run::protocol::{
    ChunkHeader, Cursor, FrameBuf, FrameReader, InitMsg, ResultsHeader, send, status, tag,
};

/// Index of `task` in the plugin at `so` (loaded into this process).
pub(crate) fn task_index(so: &Path, task: &str) -> Result<u32, String> {
    let plugin = host::load(so, false).map_err(|e| e.to_string())?;
    plugin
        .info
        .find(task, TaskKind::Task)
        .ok_or_else(|| format!("{} exports no task {task}", so.display()))
}

fn chunk_of_one(frame: &mut FrameBuf, chunk_id: u64, task: u32, input: &[u8]) {
    ChunkHeader {
        chunk_id,
        plugin: 0,
        task,
        count: 1,
    }
    .write(frame);
    frame.put_bytes(input);
}

/// Checks a results frame (payload after the tag) answers `chunk_id` with `expected`.
fn check_result(payload: &[u8], chunk_id: u64, expected: &[u8]) -> io::Result<()> {
    let mut c = Cursor::new(payload);
    let h = ResultsHeader::read(&mut c)?;
    let code = c.u8()?;
    let out = c.bytes()?;
    if h.chunk_id != chunk_id || h.count != 1 || code != status::OK || out != expected {
        return Err(io::Error::other(format!(
            "unexpected result for chunk {chunk_id}: chunk {} status {code} output {:?}",
            h.chunk_id,
            String::from_utf8_lossy(out)
        )));
    }
    Ok(())
}

/// Starts the pool's workers and waits until all of them said READY (Slurm steps that start
/// late join on later `fill` calls, as in the stage loop). Returns their ids.
fn start_all(pool: &mut Pool) -> io::Result<Vec<WorkerId>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready = Vec::new();
    while ready.len() < pool.target_size() {
        if Instant::now() >= deadline {
            return Err(io::Error::other("workers did not become ready"));
        }
        pool.fill().map_err(io::Error::other)?;
        match pool.next_event(Duration::from_millis(10)) {
            Some(PoolEvent::Ready { worker }) => ready.push(worker),
            Some(PoolEvent::StartFailed { message, .. }) => {
                return Err(io::Error::other(format!("worker failed: {message}")));
            }
            Some(PoolEvent::Exited(exit)) => {
                return Err(io::Error::other(format!(
                    "worker {} exited: {}",
                    exit.worker, exit.end
                )));
            }
            Some(PoolEvent::Results { .. }) | None => {}
        }
    }
    Ok(ready)
}

fn new_pool() -> io::Result<Pool> {
    Pool::new(
        EventLog::disabled(),
        Arc::new(Console::new(Verbosity::Quiet)),
    )
}

fn spec(so: &Path, launcher: Launcher) -> WorkerSpec {
    WorkerSpec {
        plugins: vec![so.to_owned()],
        env: BTreeMap::new(),
        initializer: None,
        launcher,
        srun_args: Vec::new(),
        workdir: None,
        on_demand: None,
    }
}

/// Restarts of a 2-worker pool as a `kill_workers = true` stage does them, through the library:
/// `Pool::apply` with the restart decision (old workers told to shut down, waited for and
/// reaped), then `Pool::fill` and the wait until both new workers are READY (plugin loaded).
/// Returns `(stop_ns, start_ns)` per restart.
pub(crate) fn pool_restarts(
    so: &Path,
    n: usize,
    launcher: Launcher,
) -> io::Result<Vec<(u64, u64)>> {
    let spec = spec(so, launcher);
    let mut pool = new_pool()?;
    let first = decide(None, &spec, 2, Reuse::Auto, false);
    pool.apply(&first, spec.clone(), 2, "restart", false);
    start_all(&mut pool)?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let decision = decide(
            pool.spec().map(|s| (s, pool.size())),
            &spec,
            2,
            Reuse::Auto,
            true,
        );
        let t0 = Instant::now();
        pool.apply(&decision, spec.clone(), 2, "restart", false);
        let stopped = t0.elapsed().as_nanos() as u64;
        let t1 = Instant::now();
        start_all(&mut pool)?;
        samples.push((stopped, t1.elapsed().as_nanos() as u64));
    }
    pool.shutdown();
    Ok(samples)
}

/// Round trips through [`Pool`] (what the stage dispatcher does): 2 workers, chunks of one
/// task sent alternately, each sent only when the previous result came back through the pool's
/// event channel. Returns one duration (ns) per measured task.
pub(crate) fn via_pool(
    so: &Path,
    task: u32,
    n: usize,
    warmup: usize,
    launcher: Launcher,
) -> io::Result<Vec<u64>> {
    let spec = spec(so, launcher);
    let mut pool = new_pool()?;
    let decision = decide(None, &spec, 2, Reuse::Auto, false);
    pool.apply(&decision, spec, 2, "latency", false);
    let ids = start_all(&mut pool)?;
    let mut frame = FrameBuf::new();
    let mut digits = Vec::new();
    let mut samples = Vec::with_capacity(n);
    for i in 0..(warmup + n) {
        let chunk_id = i as u64 + 1;
        digits.clear();
        write!(digits, "{i}")?;
        chunk_of_one(&mut frame, chunk_id, task, &digits);
        let worker = ids[i % ids.len()];
        let t0 = Instant::now();
        let chunk = Arc::new(frame.finish().to_vec());
        pool.send_chunk(worker, &chunk, 1);
        loop {
            match pool.next_event(Duration::from_secs(5)) {
                Some(PoolEvent::Results { frame, .. }) => {
                    let dt = t0.elapsed().as_nanos() as u64;
                    check_result(&frame[1..], chunk_id, &digits)?;
                    if i >= warmup {
                        samples.push(dt);
                    }
                    break;
                }
                Some(PoolEvent::Exited(exit)) => {
                    return Err(io::Error::other(format!(
                        "worker {} exited: {}",
                        exit.worker, exit.end
                    )));
                }
                Some(_) => {}
                None => return Err(io::Error::other("no result within 5 s")),
            }
        }
    }
    pool.shutdown();
    Ok(samples)
}

/// Round trips to one worker process spawned with loky-run's `spawn_worker`, its results read
/// on this thread (no reader thread, no channel on the runner side): the worker's share.
pub(crate) fn direct(so: &Path, task: u32, n: usize, warmup: usize) -> io::Result<Vec<u64>> {
    let env = BTreeMap::new();
    let w = spawn_worker(&SpawnRequest {
        worker_id: 1,
        env: &env,
        threads_per_worker: 1,
        stage: "latency",
        workdir: None,
    })?;
    let mut commands = File::from(w.commands);
    let mut reader = FrameReader::new(BufReader::with_capacity(1 << 16, File::from(w.results)));
    let mut frame = FrameBuf::new();
    let init = InitMsg {
        worker_id: 1,
        plugins: vec![so.to_owned()],
        initializer: None,
    };
    send(&mut commands, frame.json(tag::INIT, &init))?;
    match reader.next_frame()? {
        Some((tag::READY, _)) => {}
        _ => return Err(io::Error::other("worker did not become ready")),
    }
    let mut digits = Vec::new();
    let mut samples = Vec::with_capacity(n);
    for i in 0..(warmup + n) {
        let chunk_id = i as u64 + 1;
        digits.clear();
        write!(digits, "{i}")?;
        chunk_of_one(&mut frame, chunk_id, task, &digits);
        let t0 = Instant::now();
        send(&mut commands, frame.finish())?;
        let Some((t, payload)) = reader.next_frame()? else {
            return Err(io::Error::other("worker went away"));
        };
        let dt = t0.elapsed().as_nanos() as u64;
        if t != tag::RESULTS {
            return Err(io::Error::other("expected a results frame"));
        }
        check_result(payload, chunk_id, &digits)?;
        if i >= warmup {
            samples.push(dt);
        }
    }
    frame.begin(tag::SHUTDOWN);
    send(&mut commands, frame.finish())?;
    drop(commands);
    loky_run::pool::spawn::reap(w.pid);
    drop(w.output);
    Ok(samples)
}

/// Hidden modes of this binary for the pipe floors: echo length-prefixed frames from stdin to
/// stdout, either on one thread (`threaded = false`) or with a reader thread handing frames to
/// the writing thread over a channel, as loky-run's worker does with its commands.
pub(crate) fn pong_main(threaded: bool) -> i32 {
    let (Ok(input), Ok(output)) = (
        io::stdin().as_fd().try_clone_to_owned(),
        io::stdout().as_fd().try_clone_to_owned(),
    ) else {
        return 1;
    };
    let mut input = BufReader::with_capacity(1 << 16, File::from(input));
    let mut output = File::from(output);
    if !threaded {
        while let Ok(Some(frame)) = read_frame(&mut input) {
            if output.write_all(&frame).is_err() {
                break;
            }
        }
        return 0;
    }
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        while let Ok(Some(frame)) = read_frame(&mut input) {
            if tx.send(frame).is_err() {
                break;
            }
        }
    });
    while let Ok(frame) = rx.recv() {
        if output.write_all(&frame).is_err() {
            break;
        }
    }
    0
}

/// A whole frame (header included), or `None` at the end of the stream.
fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    if let Err(e) = r.read_exact(&mut header) {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let len = u32::from_le_bytes(header) as usize;
    let mut frame = vec![0u8; 4 + len];
    frame[..4].copy_from_slice(&header);
    r.read_exact(&mut frame[4..])?;
    Ok(Some(frame))
}

/// How a floor measurement's two processes handle frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Floor {
    /// Both sides read on the thread that writes: one write and one read each way.
    Bare,
    /// The echo process hands frames through a thread and a channel (as loky-run's worker does).
    WorkerHop,
    /// As `WorkerHop`, and this side also reads through a thread and a channel (as the pool's
    /// reader thread does for the dispatcher).
    BothHops,
}

/// Round trips of a 32-byte frame to a child (this binary in a `__pong` mode) echoing it back
/// over pipes.
pub(crate) fn floor(exe: &Path, kind: Floor, n: usize, warmup: usize) -> io::Result<Vec<u64>> {
    let mode = if kind == Floor::Bare {
        "__pong"
    } else {
        "__pong_threaded"
    };
    let mut child = Command::new(exe)
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut to_child = child.stdin.take().expect("piped");
    let from_child = child.stdout.take().expect("piped");
    let mut frame = [0u8; 32];
    frame[..4].copy_from_slice(&28u32.to_le_bytes());
    let mut samples = Vec::with_capacity(n);
    let (relay, mut direct) = if kind == Floor::BothHops {
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        let mut from_child = from_child;
        let handle = std::thread::spawn(move || {
            while let Ok(Some(f)) = read_frame(&mut from_child) {
                if tx.send(f).is_err() {
                    break;
                }
            }
        });
        (Some((rx, handle)), None)
    } else {
        (None, Some(from_child))
    };
    let mut direct_reply = [0u8; 32];
    for i in 0..(warmup + n) {
        frame[4..12].copy_from_slice(&(i as u64).to_le_bytes());
        let t0 = Instant::now();
        to_child.write_all(&frame)?;
        let ok = match &relay {
            Some((rx, _)) => {
                rx.recv_timeout(Duration::from_secs(5))
                    .map_err(|_| io::Error::other("no echo within 5 s"))?
                    == frame
            }
            None => {
                let pipe = direct.as_mut().expect("no relay: read directly");
                pipe.read_exact(&mut direct_reply)?;
                direct_reply == frame
            }
        };
        let dt = t0.elapsed().as_nanos() as u64;
        if !ok {
            return Err(io::Error::other("echo differs"));
        }
        if i >= warmup {
            samples.push(dt);
        }
    }
    drop(to_child);
    if let Some((_, handle)) = relay {
        let _ = handle.join();
    }
    let _ = child.wait();
    Ok(samples)
}

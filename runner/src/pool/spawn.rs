//! Starting one local worker process, with the protocol on descriptors 3, 4 and 5.
//!
//! Each worker gets its own process group (so the terminal's Ctrl-C reaches only the runner, and
//! `killpg` also reaches what a plugin started) and a parent-death signal (so a `kill -9` of the
//! runner takes its workers along). The parent-death signal fires when the *thread* that forked
//! exits: workers are only ever spawned from the runner's main thread.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::progress::ProgressSlot;
use crate::sys;
use crate::worker::{COMMAND_FD, PROGRESS_FD, RESULT_FD, WORKER_ARG};

/// The runner's ends of a freshly started worker, however it was launched.
pub struct SpawnedWorker {
    /// The local process to wait for: the worker itself, or the `srun` that runs it.
    pub pid: u32,
    /// Frames to the worker: a pipe's write end, or the worker's TCP connection.
    pub commands: OwnedFd,
    /// Frames from the worker: a pipe's read end, or the worker's TCP connection.
    pub results: OwnedFd,
    /// The worker's stdout and stderr, merged.
    pub output: Box<dyn Read + Send>,
    /// Local workers only: which item is running (see `progress`).
    pub progress: Option<ProgressSlot>,
    /// Remote workers only: their connection, to cut it when they must stop at once.
    pub remote: Option<std::net::TcpStream>,
}

/// Threads the oversubscription guard sets (unless the user did): numerical libraries would
/// otherwise start one thread per CPU in every worker.
pub const THREAD_LIMIT_VARS: [&str; 4] = [
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "RAYON_NUM_THREADS",
];

pub struct SpawnRequest<'a> {
    pub worker_id: u32,
    /// Merged over the runner's environment.
    pub env: &'a BTreeMap<String, String>,
    /// Value for the thread-limit variables.
    pub threads_per_worker: usize,
    pub stage: &'a str,
    /// The worker's working directory (`None`: the runner's).
    pub workdir: Option<&'a Path>,
}

pub fn spawn_worker(req: &SpawnRequest<'_>) -> io::Result<SpawnedWorker> {
    let (cmd_read, cmd_write) = pipe()?;
    let (res_read, res_write) = pipe()?;
    // Large payloads cross in fewer wakeups with bigger pipes (best effort). Not larger: a
    // user's pipes share a budget (pipe-user-pages-soft, 64 MiB) past which new pipes shrink.
    for fd in [&cmd_write, &res_write] {
        grow_pipe(fd, PIPE_BYTES);
    }
    let (out_read, out_write) = pipe()?;
    let (progress_fd, progress) = ProgressSlot::create()?;

    // Move the child's ends above the fixed numbers 3..=5 so that the dup2 calls in the child can
    // never overwrite one source with another.
    let child_cmd = dup_above(&cmd_read, 10)?;
    let child_res = dup_above(&res_write, 10)?;
    let child_progress = dup_above(&progress_fd, 10)?;
    let (child_cmd_fd, child_res_fd, child_progress_fd) = (
        child_cmd.as_raw_fd(),
        child_res.as_raw_fd(),
        child_progress.as_raw_fd(),
    );
    let parent_pid = std::process::id() as libc::pid_t;

    let mut command = Command::new(sys::self_exe());
    command
        .arg0("loky-run-worker")
        .arg(WORKER_ARG)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_write.try_clone()?))
        .stderr(Stdio::from(out_write))
        .process_group(0);
    set_worker_env(&mut command, req);
    // SAFETY: only async-signal-safe calls (dup2, prctl, getppid, _exit) run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(child_cmd_fd, COMMAND_FD) < 0
                || libc::dup2(child_res_fd, RESULT_FD) < 0
                || libc::dup2(child_progress_fd, PROGRESS_FD) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The runner may have died between fork and prctl: then nobody would ever kill us.
            if libc::getppid() != parent_pid {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    let pid = child.id();
    // The worker is reaped with wait4 by its reader thread (for its exit status and peak RSS);
    // dropping `Child` neither waits nor kills.
    drop(child);
    drop((
        cmd_read,
        res_write,
        child_cmd,
        child_res,
        child_progress,
        progress_fd,
    ));
    Ok(SpawnedWorker {
        pid,
        commands: cmd_write,
        results: res_read,
        output: Box::new(File::from(out_read)),
        progress: Some(progress),
        remote: None,
    })
}

/// The environment of a worker: the runner's, the oversubscription guard, the user's `env`,
/// then our own variables (last: a user's `env` cannot fake a worker's identity).
pub fn set_worker_env(command: &mut Command, req: &SpawnRequest<'_>) {
    let threads = req.threads_per_worker.max(1).to_string();
    for var in THREAD_LIMIT_VARS {
        if std::env::var_os(var).is_none() && !req.env.contains_key(var) {
            command.env(var, &threads);
        }
    }
    command.envs(req.env);
    command
        .env("LOKY_WORKER_ID", req.worker_id.to_string())
        .env("LOKY_STAGE", req.stage);
    if let Some(dir) = req.workdir {
        // srun passes its own directory on to the step (its `--chdir` default).
        command.current_dir(dir);
    }
}

/// Makes the child get `signal` when the runner dies (set between fork and exec).
pub fn die_with_parent(command: &mut Command, signal: i32) {
    let parent_pid = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent_pid {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded; both descriptors are new and owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Size asked for the command and result pipes.
const PIPE_BYTES: libc::c_int = 256 << 10;

fn grow_pipe(fd: &OwnedFd, bytes: libc::c_int) {
    // SAFETY: F_SETPIPE_SZ on a valid pipe descriptor; failure (EPERM over the limit) is fine.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) };
}

fn dup_above(fd: &OwnedFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid descriptor returns a new one or -1.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Sends `signal` to a worker's whole process group.
pub fn kill_group(pid: u32, signal: i32) {
    let group = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    let signal = rustix::process::Signal::from_named_raw(signal);
    if let (Some(group), Some(signal)) = (group, signal) {
        // A stale group fails with ESRCH: it is gone already.
        let _ = rustix::process::kill_process_group(group, signal);
    }
}

/// Blocks until the child `pid` has exited, without reaping it: the zombie keeps its pid and
/// process group id from being reused while the caller still signals them.
pub fn wait_exited(pid: u32) {
    // SAFETY: an all-zero siginfo_t is a valid value for waitid to overwrite.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointer to `info`; WNOWAIT leaves the zombie in place.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Whether the child `pid` has exited (not reaped: see [`wait_exited`]).
pub fn has_exited(pid: u32) -> bool {
    // SAFETY: an all-zero siginfo_t is a valid value for waitid to overwrite.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to `info`; WNOHANG returns at once, WNOWAIT does not reap.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    };
    // SAFETY: si_pid is set by waitid when a child changed state, and zero otherwise.
    r != 0 || unsafe { info.si_pid() } != 0
}

/// Ends the process groups of the children `pids` gracefully: SIGTERM to those still running,
/// one `grace` period for all of them, then SIGKILL to those left, which are returned. Nothing
/// is reaped.
pub fn end_gracefully(pids: &[u32], grace: std::time::Duration) -> Vec<u32> {
    let running: Vec<u32> = pids.iter().copied().filter(|p| !has_exited(*p)).collect();
    for pid in &running {
        kill_group(*pid, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    while running.iter().any(|p| !has_exited(*p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let killed: Vec<u32> = running.into_iter().filter(|p| !has_exited(*p)).collect();
    for pid in &killed {
        kill_group(*pid, libc::SIGKILL);
    }
    killed
}

/// Waits for a worker to exit and returns how it ended and its peak RSS (bytes).
pub fn reap(pid: u32) -> (sys::ProcessEnd, u64) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to `status` and `usage`.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r == pid as libc::pid_t {
            return (
                sys::describe_wait_status(status),
                usage.ru_maxrss.max(0) as u64 * 1024,
            );
        }
        if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return (sys::ProcessEnd::Exit(-1), 0);
        }
    }
}

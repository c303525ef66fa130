//! Starting one local worker process, with the protocol on descriptors 3, 4 and 5.
//!
//! Each worker gets its own process group (so the terminal's Ctrl-C reaches only the runner, and
//! `killpg` also reaches what a plugin started) and a parent-death signal (so a `kill -9` of the
//! runner takes its workers along). The parent-death signal fires when the *thread* that forked
//! exits: workers are only ever spawned from the runner's main thread.
//!
//! A local worker is started with `posix_spawn` (a vfork: no copy of the runner's memory map, no
//! copy-on-write faults in the runner afterwards); the worker sets its parent-death signal itself
//! (see [`PARENT_ENV`]).

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

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

/// Set in a local worker's environment to the runner's pid: the worker sets its parent-death
/// signal (SIGKILL) and exits at once if its parent is not that process any more (the runner died
/// before the signal was set: then nobody would ever kill it).
pub const PARENT_ENV: &str = "LOKY_RUN_PARENT_PID";

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
    let null = OwnedFd::from(File::open("/dev/null")?);

    // The child's ends, above the numbers 0..=5 they get in the child, so that no dup2 there can
    // overwrite the source of a later one (and every target loses its close-on-exec flag).
    let child_fds = [
        (dup_above(&null, 10)?, 0),
        (dup_above(&out_write, 10)?, 1),
        (dup_above(&out_write, 10)?, 2),
        (dup_above(&cmd_read, 10)?, COMMAND_FD),
        (dup_above(&res_write, 10)?, RESULT_FD),
        (dup_above(&progress_fd, 10)?, PROGRESS_FD),
    ];
    let mut env = worker_env_vars(req);
    env.push((PARENT_ENV.into(), std::process::id().to_string().into()));
    let pid = posix_spawn_worker(&child_fds, &env, req.workdir)?;
    // The worker is reaped with wait4 by its reader thread (for its exit status and peak RSS).
    drop((cmd_read, res_write, out_write, child_fds, progress_fd, null));
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
    command.envs(worker_env_vars(req));
    if let Some(dir) = req.workdir {
        // srun passes its own directory on to the step (its `--chdir` default).
        command.current_dir(dir);
    }
}

/// What a worker's environment sets over the runner's, in order (a later one wins).
fn worker_env_vars(req: &SpawnRequest<'_>) -> Vec<(OsString, OsString)> {
    let threads = req.threads_per_worker.max(1).to_string();
    let mut vars: Vec<(OsString, OsString)> = THREAD_LIMIT_VARS
        .iter()
        .filter(|var| std::env::var_os(var).is_none() && !req.env.contains_key(**var))
        .map(|var| (var.into(), threads.clone().into()))
        .collect();
    vars.extend(req.env.iter().map(|(k, v)| (k.into(), v.into())));
    vars.push(("LOKY_WORKER_ID".into(), req.worker_id.to_string().into()));
    vars.push(("LOKY_STAGE".into(), req.stage.into()));
    vars
}

/// `posix_spawn` of `loky-run __worker` in a process group of its own, with `fds` (source,
/// number in the child) in place, the runner's environment with `env` over it, in `workdir`.
/// Signals start unblocked and SIGPIPE at its default, as `std::process::Command` leaves them.
fn posix_spawn_worker(
    fds: &[(OwnedFd, RawFd)],
    env: &[(OsString, OsString)],
    workdir: Option<&Path>,
) -> io::Result<u32> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    };
    let nul = |bytes: Vec<u8>| CString::new(bytes).map_err(io::Error::other);
    let mut vars: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    vars.extend(env.iter().cloned());
    let env: Vec<CString> = vars
        .into_iter()
        .map(|(mut k, v)| {
            k.push("=");
            k.push(v);
            nul(k.into_vec())
        })
        .collect::<io::Result<_>>()?;
    let mut envp: Vec<*mut libc::c_char> = env.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp.push(std::ptr::null_mut());
    let path = nul(sys::self_exe().as_os_str().as_bytes().to_vec())?;
    let args = [c"loky-run-worker".to_owned(), nul(WORKER_ARG.into())?];
    let argv = [
        args[0].as_ptr().cast_mut(),
        args[1].as_ptr().cast_mut(),
        std::ptr::null_mut(),
    ];
    let workdir = workdir
        .map(|d| nul(d.as_os_str().as_bytes().to_vec()))
        .transpose()?;
    let mut actions = SpawnActions::new()?;
    let mut attr = SpawnAttr::new()?;
    // SAFETY: the file actions and attributes were initialized (their guards destroy them once);
    // every pointer handed over is to a live NUL-terminated string or a NULL-terminated array of
    // them, which outlive the call; the descriptors in `fds` are open.
    unsafe {
        for (fd, target) in fds {
            check(libc::posix_spawn_file_actions_adddup2(
                &raw mut actions.0,
                fd.as_raw_fd(),
                *target,
            ))?;
        }
        if let Some(dir) = &workdir {
            check(libc::posix_spawn_file_actions_addchdir_np(
                &raw mut actions.0,
                dir.as_ptr(),
            ))?;
        }
        let mut none = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&raw mut none);
        let mut pipe = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&raw mut pipe);
        libc::sigaddset(&raw mut pipe, libc::SIGPIPE);
        check(libc::posix_spawnattr_setsigmask(
            &raw mut attr.0,
            &raw const none,
        ))?;
        check(libc::posix_spawnattr_setsigdefault(
            &raw mut attr.0,
            &raw const pipe,
        ))?;
        check(libc::posix_spawnattr_setpgroup(&raw mut attr.0, 0))?;
        let flags = libc::POSIX_SPAWN_SETPGROUP
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF;
        check(libc::posix_spawnattr_setflags(
            &raw mut attr.0,
            flags as libc::c_short,
        ))?;
        let mut pid: libc::pid_t = 0;
        check(libc::posix_spawn(
            &raw mut pid,
            path.as_ptr(),
            &raw const actions.0,
            &raw const attr.0,
            argv.as_ptr(),
            envp.as_ptr(),
        ))?;
        u32::try_from(pid).map_err(|_| io::Error::other("posix_spawn returned no pid"))
    }
}

/// Initialized `posix_spawn` file actions, destroyed on drop.
struct SpawnActions(libc::posix_spawn_file_actions_t);

impl SpawnActions {
    fn new() -> io::Result<Self> {
        // SAFETY: an all-zero value is only storage; init fills it before any other use.
        let mut actions = Self(unsafe { std::mem::zeroed() });
        // SAFETY: initializing storage owned here.
        match unsafe { libc::posix_spawn_file_actions_init(&raw mut actions.0) } {
            0 => Ok(actions),
            rc => {
                // Not initialized: nothing to destroy.
                std::mem::forget(actions);
                Err(io::Error::from_raw_os_error(rc))
            }
        }
    }
}

impl Drop for SpawnActions {
    fn drop(&mut self) {
        // SAFETY: initialized in `new`, destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&raw mut self.0) };
    }
}

/// Initialized `posix_spawn` attributes, destroyed on drop.
struct SpawnAttr(libc::posix_spawnattr_t);

impl SpawnAttr {
    fn new() -> io::Result<Self> {
        // SAFETY: an all-zero value is only storage; init fills it before any other use.
        let mut attr = Self(unsafe { std::mem::zeroed() });
        // SAFETY: initializing storage owned here.
        match unsafe { libc::posix_spawnattr_init(&raw mut attr.0) } {
            0 => Ok(attr),
            rc => {
                // Not initialized: nothing to destroy.
                std::mem::forget(attr);
                Err(io::Error::from_raw_os_error(rc))
            }
        }
    }
}

impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: initialized in `new`, destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&raw mut self.0) };
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

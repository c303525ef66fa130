//! Running a measured child process: wall time from spawn to reaped exit, peak RSS from
//! `wait4`, and a hard time limit (the child's process group is killed when it runs over).

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) struct Finished {
    /// Spawn to reaped exit.
    pub wall: Duration,
    /// `ru_maxrss` of the child (kernel semantics: the max of the child and the descendants it
    /// reaped), in bytes.
    pub max_rss: u64,
    /// User + system CPU of the child and the descendants it reaped (`wait4`'s rusage).
    pub cpu: Duration,
    pub stdout: String,
}

/// Runs `cmd` to completion with its stdout and stderr in files under `scratch` (no pipe to
/// drain, so nothing can block), killing its process group after `limit`. `during` runs right
/// after the spawn, with the child's pid, while the child runs.
pub(crate) fn run(
    cmd: &mut Command,
    scratch: &Path,
    limit: Duration,
    during: impl FnOnce(u32),
) -> Result<Finished, String> {
    let out_path = scratch.join("child.stdout");
    let err_path = scratch.join("child.stderr");
    let stdout = File::create(&out_path).map_err(|e| e.to_string())?;
    let stderr = File::create(&err_path).map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    let what = format!("{cmd:?}");
    let started = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let pid = child.id();
    let (done, watch) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(limit) {
            // SAFETY: killpg has no memory-safety preconditions. The group is the child's own
            // (process_group(0)) and the child is not reaped yet, so its id is not reused.
            unsafe { libc::killpg(pid as libc::pid_t, libc::SIGKILL) };
            true
        } else {
            false
        }
    });
    during(pid);
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to `status` and `usage`; `pid` is our unreaped child.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r == pid as libc::pid_t {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(format!("wait4 for {what}: {err}"));
        }
    }
    let wall = started.elapsed();
    let _ = done.send(());
    let killed = watchdog.join().unwrap_or(false);
    // `Child` never waits on drop; the process is already reaped.
    drop(child);
    // What it left in its process group (loky's workers end after their parent) would compete
    // with the next measurement: waited for, a few seconds at most, outside the measured time.
    let settle = Instant::now() + Duration::from_secs(5);
    // SAFETY: killpg with signal 0 only checks whether the group has a process.
    while unsafe { libc::killpg(pid as libc::pid_t, 0) } == 0 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(1));
    }
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if killed {
        return Err(format!(
            "{what} ran over its limit of {limit:?} and was killed; stderr: {}",
            tail(&stderr)
        ));
    }
    let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !exited_ok {
        return Err(format!(
            "{what} failed (wait status {status:#x}); stderr: {}",
            tail(&stderr)
        ));
    }
    Ok(Finished {
        wall,
        max_rss: usage.ru_maxrss.max(0) as u64 * 1024,
        cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
        stdout,
    })
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// `VmRSS`, `RssAnon`, `RssFile`, `RssShmem` of a live process, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rss {
    pub rss: u64,
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
}

pub(crate) fn rss_of(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut r = Rss::default();
    for line in status.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kb: u64 = match rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
            Some(v) => v,
            None => continue,
        };
        match key {
            "VmRSS" => r.rss = kb * 1024,
            "RssAnon" => r.anon = kb * 1024,
            "RssFile" => r.file = kb * 1024,
            "RssShmem" => r.shmem = kb * 1024,
            _ => {}
        }
    }
    (r.rss > 0).then_some(r)
}

//! Small facts about processes on Linux: exit descriptions, signal names, CPU count, RSS.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::OnceLock;

/// The path workers and probes are started from: `/proc/self/exe` keeps working even when the
/// binary is rebuilt (replaced on disk) during a run.
pub fn self_exe() -> &'static Path {
    Path::new("/proc/self/exe")
}

/// The real path of this binary (for looking up files next to it).
pub fn current_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| std::env::current_exe().unwrap_or_else(|_| self_exe().to_owned()))
}

/// How a process ended, for messages: `exit code 3`, `killed by SIGSEGV`.
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by {}", signal_name(sig)),
        _ => "unknown exit".to_owned(),
    }
}

/// How a process ended, from a raw `waitpid` status. Displays as a phrase that follows a
/// subject: `worker 3 was killed by SIGSEGV`, `worker 3 exited with code 3`.
pub fn describe_wait_status(status: i32) -> ProcessEnd {
    if libc::WIFSIGNALED(status) {
        ProcessEnd::Signal(libc::WTERMSIG(status))
    } else {
        ProcessEnd::Exit(libc::WEXITSTATUS(status))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessEnd {
    Exit(i32),
    Signal(i32),
}

impl std::fmt::Display for ProcessEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessEnd::Exit(code) => write!(f, "exited with code {code}"),
            ProcessEnd::Signal(sig) => write!(f, "was killed by {}", signal_name(*sig)),
        }
    }
}

pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {sig}"),
    };
    name.to_owned()
}

/// The environment variable that caps the CPU count, as loky reads it.
pub const CPU_CAP_VAR: &str = "LOKY_MAX_CPU_COUNT";

/// The cap `LOKY_MAX_CPU_COUNT` sets, if any: like loky, any integer (a cap of 0 or less means
/// 1); unset or empty means no cap. Anything else is an error naming the variable.
pub fn cpu_cap() -> Result<Option<usize>, String> {
    let Some(value) = std::env::var_os(CPU_CAP_VAR) else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<i64>() {
        Ok(n) => Ok(Some(usize::try_from(n).unwrap_or(0).max(1))),
        Err(_) => Err(format!(
            "{CPU_CAP_VAR}={text:?} is not an integer (it caps the CPU count loky-run uses)"
        )),
    }
}

/// The usable CPU count: affinity and cgroup quota (what `available_parallelism` honours),
/// capped by `LOKY_MAX_CPU_COUNT` as loky does, at least 1. (An invalid cap is reported by
/// the plan, before anything runs; here it is ignored.)
pub fn usable_cpus() -> usize {
    let available = std::thread::available_parallelism()
        .map(std::num::NonZero::get)
        .unwrap_or(1);
    match cpu_cap() {
        Ok(Some(cap)) => available.min(cap),
        _ => available,
    }
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| rustix::param::page_size().max(4096) as u64)
}

/// Current resident set size of a process, from `/proc/<pid>/statm` (a few µs).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// Peak resident set size of a live process (`VmHWM`).
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Nanoseconds on the system-wide monotonic clock: comparable between processes.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Microseconds since the Unix epoch, on the wall clock (comparable between hosts).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A human size: `12.3 MiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_and_signals_read_well() {
        assert_eq!(
            ProcessEnd::Signal(libc::SIGSEGV).to_string(),
            "was killed by SIGSEGV"
        );
        assert_eq!(ProcessEnd::Exit(3).to_string(), "exited with code 3");
        assert_eq!(signal_name(99), "signal 99");
    }

    #[test]
    fn own_rss_is_visible() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(peak_rss_bytes(pid).unwrap() >= rss_bytes(pid).unwrap() / 2);
        assert_eq!(format_bytes(1536), "1.5 KiB");
    }
}

//! The guardian: a small process that outlives the runner just long enough to end whatever
//! the runner's workers started.
//!
//! Each local worker has its own process group, and a parent-death signal kills the worker when
//! the runner dies, even by `kill -9`. What a task started (`sleep 300`, a helper server) is in
//! that group too, but nobody is left to signal the group: it would live on, reparented to
//! init. The guardian is started once per run (`loky-run __guardian`, in a process group of
//! its own so that the terminal's signals do not reach it), and the runner tells it, over a pipe,
//! each worker group it creates (`+PGID`) and each it has emptied and reaped (`-PGID`). When
//! the pipe ends (the runner exited, whatever the way), the guardian SIGKILLs every group it
//! still holds, and exits.
//!
//! A group is forgotten after it was emptied (SIGKILL) but before the worker is reaped: its
//! zombie keeps the group id from being reused until the guardian knows. Processes that leave
//! the group on purpose (`setsid`, a daemon) are out of its reach.

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::sys;

/// The hidden subcommand that runs the guardian.
pub const GUARDIAN_ARG: &str = "__guardian";

/// The runner's end of the pipe to the guardian.
pub struct Guardian {
    pipe: OwnedFd,
}

impl Guardian {
    /// Starts the guardian on a thread of its own (off the start of the run's critical path);
    /// the groups told before it runs wait in the pipe. `None` if no pipe can be made.
    pub fn start() -> Option<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return None;
        }
        // SAFETY: pipe2 succeeded: both descriptors are new and owned here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let spawned = std::thread::Builder::new()
            .name("guardian-start".into())
            .spawn(move || {
                let mut command = Command::new(sys::self_exe());
                // Its own process group: Ctrl-C (and a hang-up, sent to the terminal's
                // foreground group) reaches only the runner. No `pre_exec` (a `setsid` there
                // made std fork: a copy of the runner's memory map, and its copy-on-write faults
                // in the runner while its workers start); with none it uses `posix_spawn`.
                command
                    .arg0("loky-run-guardian")
                    .arg(GUARDIAN_ARG)
                    .stdin(Stdio::from(read))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0);
                // Not waited for: it exits when the runner's end of the pipe closes, and is
                // reaped by whoever inherits it (init, once the runner is gone).
                if let Ok(child) = command.spawn() {
                    drop(child);
                }
            });
        spawned.ok()?;
        Some(Self { pipe: write })
    }

    /// A worker's process group to end if the runner dies.
    pub fn watch(&self, pgid: u32) {
        self.send(&format!("+{pgid}\n"));
    }

    /// A group the runner emptied itself: not to be signalled any more (its id may be reused
    /// once the worker is reaped).
    pub fn forget(&self, pgid: u32) {
        self.send(&format!("-{pgid}\n"));
    }

    /// A Slurm allocation the runner submitted: to `scancel` if the runner dies.
    pub fn watch_job(&self, job: &str) {
        self.send(&format!("+j{job}\n"));
    }

    /// An allocation that ended (or that the runner cancelled itself).
    pub fn forget_job(&self, job: &str) {
        self.send(&format!("-j{job}\n"));
    }

    fn send(&self, line: &str) {
        // SAFETY: write(2) of a short local buffer (under PIPE_BUF: atomic, whatever thread
        // writes) to our pipe; a guardian that is gone (EPIPE) cannot be helped.
        unsafe { libc::write(self.pipe.as_raw_fd(), line.as_ptr().cast(), line.len()) };
    }
}

/// The guardian process: holds the groups it is told, and ends them when its input ends.
pub fn guardian_main() -> i32 {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
        // SAFETY: ignoring signals: the guardian ends only when the runner's pipe does.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let held = hold(BufReader::new(io::stdin().lock()));
    for pgid in held.groups {
        crate::pool::spawn::kill_group(pgid, libc::SIGKILL);
    }
    // The allocations go last: their steps' sruns got their parent-death signal already.
    crate::pool::alloc::cancel(held.jobs.into_iter().collect(), true);
    0
}

/// What the guardian holds when its input ends.
#[derive(Debug, Default, PartialEq, Eq)]
struct Held {
    groups: BTreeSet<u32>,
    /// Slurm job ids of allocations the runner submitted.
    jobs: BTreeSet<String>,
}

/// Reads `+PGID` / `-PGID` and `+jJOB` / `-jJOB` lines until the input ends; returns what
/// is still held.
fn hold(input: impl BufRead) -> Held {
    let mut held = Held::default();
    let groups = &mut held.groups;
    for line in input.split(b'\n') {
        let Ok(line) = line else { break };
        let Some((&sign, digits)) = line.split_first() else {
            continue;
        };
        if let Some(job) = digits.strip_prefix(b"j") {
            let Some(job) = std::str::from_utf8(job)
                .ok()
                .filter(|j| !j.is_empty() && j.bytes().all(|b| b.is_ascii_digit() || b == b'_'))
            else {
                continue;
            };
            match sign {
                b'+' => {
                    held.jobs.insert(job.to_owned());
                }
                b'-' => {
                    held.jobs.remove(job);
                }
                _ => {}
            }
            continue;
        }
        let Some(pgid) = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<u32>().ok())
            .filter(|p| *p > 1)
        else {
            continue;
        };
        match sign {
            b'+' => {
                groups.insert(pgid);
            }
            b'-' => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_holds_what_was_watched_and_not_forgotten() {
        let input =
            b"+100\n+200\n-100\n+300\ngarbage\n+1\n+0\n-999\n+400\n+j12\n+j13\n-j12\n+j\n+jx1";
        let held = hold(&input[..]);
        assert_eq!(held.groups, BTreeSet::from([200, 300, 400]));
        assert_eq!(held.jobs, BTreeSet::from(["13".to_owned()]));
    }
}

//! SIGINT, SIGTERM and SIGHUP, as data the dispatcher polls, and a watchdog that ends a runner
//! that does not.
//!
//! The handler only counts signals, remembers the first one and writes a byte to a pipe (all
//! async-signal-safe); the dispatcher decides what to do (see `run::dispatcher`). We install it
//! ourselves rather than through `ctrlc`, whose handler cannot tell SIGINT (exit 130) from
//! SIGTERM (exit 143). `SA_RESTART` keeps blocking reads and writes elsewhere from failing with
//! EINTR, so a runner blocked in a system call (opening a FIFO nobody writes to, a hung file
//! system) would never see the count: the watchdog thread, woken by the pipe, gives it a
//! deadline and ends the process at its end. Completed results are safe whatever the moment
//! (the journal is written out after every batch), and workers die with the runner.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNT: AtomicUsize = AtomicUsize::new(0);
static FIRST: AtomicI32 = AtomicI32::new(0);
/// The write end of the watchdog's pipe (-1 until installed).
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// While a stage runs: its grace period in ms (the dispatcher handles signals); `u64::MAX`
/// otherwise.
static STAGE_GRACE_MS: AtomicU64 = AtomicU64::new(u64::MAX);

/// After a first signal outside a stage, how long the runner may take to end on its own.
const UNGUARDED: Duration = Duration::from_secs(5);
/// After a first signal during a stage: its grace period plus this (the dispatcher lets
/// running tasks finish, kills the rest, records everything and writes the manifest).
const STAGE_MARGIN: Duration = Duration::from_secs(30);
/// After a second signal (which kills the workers at once).
const AFTER_SECOND: Duration = Duration::from_secs(10);

extern "C" fn on_signal(sig: libc::c_int) {
    let _ = FIRST.compare_exchange(0, sig, Ordering::AcqRel, Ordering::Acquire);
    COUNT.fetch_add(1, Ordering::AcqRel);
    let fd = WAKE.load(Ordering::Acquire);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; one byte from a local to our non-blocking
        // pipe (a full pipe already holds a wakeup, so the result does not matter).
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

/// Installs the handler and starts the watchdog (once per process).
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        if let Some(read) = wake_pipe() {
            let started = std::thread::Builder::new()
                .name("interrupt-watchdog".into())
                .spawn(move || watchdog(read));
            if started.is_err() {
                WAKE.store(-1, Ordering::Release);
            }
        }
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: a zeroed sigaction with a handler that only touches atomics and writes
            // to a pipe is valid; SA_RESTART: see the module docs.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
    });
}

/// The watchdog's pipe: its read end; the write end goes to [`WAKE`] (kept for the process's
/// life). `None` if no pipe can be made (then signals are only counted, as before).
fn wake_pipe() -> Option<OwnedFd> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return None;
    }
    // SAFETY: pipe2 succeeded: fds[0] is a new descriptor owned here; fds[1] is kept open for
    // the life of the process for the handler.
    let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    WAKE.store(fds[1], Ordering::Release);
    Some(read)
}

/// Waits for signals; after each, gives the runner a deadline to end on its own, and ends the
/// process when it passes.
fn watchdog(read: OwnedFd) {
    let mut deadline: Option<Instant> = None;
    loop {
        let timeout_ms = match deadline {
            None => -1,
            Some(at) => at
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as libc::c_int,
        };
        let mut pfd = libc::pollfd {
            fd: read.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for our pipe.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n > 0 {
            let mut buf = [0u8; 64];
            // SAFETY: reading into a local buffer from our non-blocking pipe.
            while unsafe { libc::read(read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
            let allowed = match (count(), STAGE_GRACE_MS.load(Ordering::Acquire)) {
                (0, _) => continue,
                (1, u64::MAX) => UNGUARDED,
                (1, grace_ms) => Duration::from_millis(grace_ms) + STAGE_MARGIN,
                _ => AFTER_SECOND,
            };
            let at = Instant::now() + allowed;
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
            continue;
        }
        if deadline.is_some_and(|at| Instant::now() >= at) {
            give_up();
        }
    }
}

/// The runner did not end after a signal: say so and exit with the signal's code.
fn give_up() -> ! {
    let sig = first_signal().unwrap_or(libc::SIGTERM);
    let message = format!(
        "loky-run: {} received and the run did not end (blocked?): stopping now; completed results are kept\n",
        crate::sys::signal_name(sig)
    );
    // SAFETY: write(2) of a local buffer to stderr, then _exit: no destructor or lock of the
    // (possibly blocked) main thread is involved.
    unsafe {
        libc::write(2, message.as_ptr().cast(), message.len());
        libc::_exit(exit_code(sig));
    }
}

/// Marks the span in which a stage's dispatcher handles signals itself (its grace period, then
/// killing the workers): the watchdog waits longer then.
pub struct StageGuard(());

pub fn guard_stage(grace: Duration) -> StageGuard {
    STAGE_GRACE_MS.store(
        grace.as_millis().min(u128::from(u64::MAX - 1)) as u64,
        Ordering::Release,
    );
    StageGuard(())
}

impl Drop for StageGuard {
    fn drop(&mut self) {
        STAGE_GRACE_MS.store(u64::MAX, Ordering::Release);
    }
}

/// How many interrupting signals arrived so far.
pub fn count() -> usize {
    COUNT.load(Ordering::Acquire)
}

/// The first signal received, if any.
pub fn first_signal() -> Option<i32> {
    match FIRST.load(Ordering::Acquire) {
        0 => None,
        sig => Some(sig),
    }
}

/// The exit code for an interrupted run: 128 + signal (130 for SIGINT, 143 for SIGTERM).
pub fn exit_code(sig: i32) -> i32 {
    128 + sig
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(libc::SIGINT), 130);
        assert_eq!(exit_code(libc::SIGTERM), 143);
    }
}

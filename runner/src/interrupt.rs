//! SIGINT, SIGTERM and SIGHUP, as data the dispatcher polls.
//!
//! The handler only counts signals and remembers the first one (both async-signal-safe atomic
//! operations); the dispatcher decides what to do. We install it ourselves rather than through
//! `ctrlc`, whose handler cannot tell SIGINT (exit 130) from SIGTERM (exit 143).

use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

static COUNT: AtomicUsize = AtomicUsize::new(0);
static FIRST: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    let _ = FIRST.compare_exchange(0, sig, Ordering::AcqRel, Ordering::Acquire);
    COUNT.fetch_add(1, Ordering::AcqRel);
}

/// Installs the handler (once per process).
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: a zeroed sigaction with a handler that only touches atomics is valid;
            // SA_RESTART keeps blocking reads and writes elsewhere from failing with EINTR.
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

//! A word of shared memory per local worker that says which item it is running and since when.
//!
//! The worker stores the position before each task call (two relaxed stores, ~1 ns), so results
//! can be batched into few frames while the runner still knows, after a crash or at a timeout,
//! exactly which input the worker was on.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

const SLOT_BYTES: usize = 4096;

/// The mapped slot: word 0 is the packed cursor (see `protocol::pack_cursor`), word 1 the
/// monotonic time (ns) at which that item started, word 2 non-zero once the runner asked the
/// worker to stop after its current item.
pub struct ProgressSlot {
    words: NonNull<AtomicU64>,
}

// SAFETY: the mapping is only accessed through atomics, from any thread.
unsafe impl Send for ProgressSlot {}
// SAFETY: as above.
unsafe impl Sync for ProgressSlot {}

impl ProgressSlot {
    /// Runner side: a fresh anonymous shared file and its mapping. The fd is given to the worker.
    pub fn create() -> io::Result<(OwnedFd, Self)> {
        // SAFETY: the name is a valid C string; the returned fd is checked and then owned.
        let raw = unsafe { libc::memfd_create(c"loky-run-progress".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `fd` is a valid memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), SLOT_BYTES as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let slot = Self::map(fd.as_raw_fd())?;
        Ok((fd, slot))
    }

    /// Maps the slot behind `fd` (either side). The mapping outlives the fd.
    pub fn map(fd: RawFd) -> io::Result<Self> {
        // SAFETY: mapping SLOT_BYTES of a file at least that long, shared, read-write.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SLOT_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let words = NonNull::new(ptr.cast::<AtomicU64>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { words })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        // SAFETY: the mapping is SLOT_BYTES long and page-aligned; i < 3 stays inside it, and
        // AtomicU64 has the alignment and size of u64.
        unsafe { &*self.words.as_ptr().add(i) }
    }

    /// Worker side: "now running this item". The time goes first so a reader never pairs a new
    /// cursor with an old start time for long.
    #[inline]
    pub fn start(&self, cursor: u64, now_ns: u64) {
        self.word(1).store(now_ns, Ordering::Relaxed);
        self.word(0).store(cursor, Ordering::Release);
    }

    /// Worker side: between items.
    #[inline]
    pub fn idle(&self) {
        self.word(0).store(0, Ordering::Release);
    }

    /// Runner side: stop after the current item (seen between items, even mid-chunk).
    pub fn request_stop(&self) {
        self.word(2).store(1, Ordering::Release);
    }

    /// Worker side: whether the runner asked to stop.
    #[inline]
    pub fn stop_requested(&self) -> bool {
        self.word(2).load(Ordering::Relaxed) != 0
    }

    /// Runner side: `(cursor, started_at_ns)`.
    pub fn read(&self) -> (u64, u64) {
        let cursor = self.word(0).load(Ordering::Acquire);
        (cursor, self.word(1).load(Ordering::Relaxed))
    }
}

impl Drop for ProgressSlot {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `map`.
        unsafe { libc::munmap(self.words.as_ptr().cast(), SLOT_BYTES) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_mappings_see_the_same_words() {
        let (fd, a) = ProgressSlot::create().unwrap();
        let b = ProgressSlot::map(fd.as_raw_fd()).unwrap();
        drop(fd);
        a.start(77, 123);
        assert_eq!(b.read(), (77, 123));
        b.idle();
        assert_eq!(a.read().0, 0);
        assert!(!b.stop_requested());
        a.request_stop();
        assert!(b.stop_requested());
    }
}

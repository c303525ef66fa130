//! A page of shared memory per local worker that says what it is doing: which item it last
//! started, whether it is still inside that call, and how many results it has written.
//!
//! The worker stores a few words around each task call (relaxed or release stores, ~1 ns each),
//! so results can be batched into few frames while the runner still knows, after a crash, at a
//! timeout, or when results go missing, exactly which input was running and which inputs had
//! finished without their results arriving.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

const SLOT_BYTES: usize = 4096;

/// Word 0: the packed cursor of the last item started, with [`RUNNING`] set while its call runs.
const CURSOR: usize = 0;
/// Word 1: the monotonic time (ns) at which that item started.
const STARTED: usize = 1;
/// Word 2: non-zero once the runner asked the worker to stop after its current item.
const STOP: usize = 2;
/// Word 3: how many results the worker has written to its result stream, in all.
const WRITTEN: usize = 3;

/// Set in the cursor word while the worker is inside the task call.
const RUNNING: u64 = 1 << 63;

/// Largest chunk the cursor encoding allows.
pub const MAX_CHUNK_ITEMS: usize = 0xFF_FFFE;
/// Chunk ids must stay below this for the cursor encoding (39 bits; a counter never gets there).
pub const MAX_CHUNK_ID: u64 = (1 << 39) - 1;

/// `chunk_id << 24 | position + 1` (0 = no item started yet).
fn pack(chunk_id: u64, position: u32) -> u64 {
    debug_assert!(chunk_id <= MAX_CHUNK_ID && (position as usize) <= MAX_CHUNK_ITEMS);
    (chunk_id << 24) | (u64::from(position) + 1)
}

fn unpack(word: u64) -> Option<(u64, u32)> {
    let word = word & !RUNNING;
    let low = (word & 0xFF_FFFF) as u32;
    (low != 0).then(|| (word >> 24, low - 1))
}

/// What the runner reads from a worker's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotReading {
    /// The last item the worker started: `(chunk_id, position)`.
    pub last: Option<(u64, u32)>,
    /// Whether the worker is inside that item's call.
    pub running: bool,
    /// When that item started (monotonic ns).
    pub started_ns: u64,
    /// Results written to the result stream so far.
    pub written: u64,
}

/// The mapped slot.
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
        let fd = rustix::fs::memfd_create(c"loky-run-progress", rustix::fs::MemfdFlags::CLOEXEC)?;
        if let Err(errno) = rustix::fs::ftruncate(&fd, SLOT_BYTES as u64) {
            return Err(errno.into());
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
        // SAFETY: the mapping is SLOT_BYTES long and page-aligned; i < 4 stays inside it, and
        // AtomicU64 has the alignment and size of u64.
        unsafe { &*self.words.as_ptr().add(i) }
    }

    /// Worker side: "now running this item". The time goes first so a reader never pairs a new
    /// cursor with an old start time for long.
    #[inline]
    pub fn start(&self, chunk_id: u64, position: u32, now_ns: u64) {
        self.word(STARTED).store(now_ns, Ordering::Relaxed);
        self.word(CURSOR)
            .store(pack(chunk_id, position) | RUNNING, Ordering::Release);
    }

    /// Worker side: the call of the item last started returned.
    #[inline]
    pub fn finish(&self, chunk_id: u64, position: u32) {
        self.word(CURSOR)
            .store(pack(chunk_id, position), Ordering::Release);
    }

    /// Worker side: `total` results have now been written to the result stream. Stored after
    /// the write returned, so a runner that sees it and then finds the stream empty knows the
    /// results went somewhere else.
    #[inline]
    pub fn written(&self, total: u64) {
        self.word(WRITTEN).store(total, Ordering::Release);
    }

    /// Runner side: stop after the current item (seen between items, even mid-chunk).
    pub fn request_stop(&self) {
        self.word(STOP).store(1, Ordering::Release);
    }

    /// Worker side: whether the runner asked to stop.
    #[inline]
    pub fn stop_requested(&self) -> bool {
        self.word(STOP).load(Ordering::Relaxed) != 0
    }

    /// Runner side: what the worker is doing.
    pub fn read(&self) -> SlotReading {
        let written = self.word(WRITTEN).load(Ordering::Acquire);
        let cursor = self.word(CURSOR).load(Ordering::Acquire);
        SlotReading {
            last: unpack(cursor),
            running: cursor & RUNNING != 0,
            started_ns: self.word(STARTED).load(Ordering::Relaxed),
            written,
        }
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
        assert_eq!(a.read().last, None);
        b.start(77, 3, 123);
        let r = a.read();
        assert_eq!(
            (r.last, r.running, r.started_ns),
            (Some((77, 3)), true, 123)
        );
        b.finish(77, 3);
        b.written(4);
        let r = a.read();
        assert_eq!((r.last, r.running, r.written), (Some((77, 3)), false, 4));
        assert!(!b.stop_requested());
        a.request_stop();
        assert!(b.stop_requested());
    }

    #[test]
    fn cursors_pack_at_the_edges() {
        assert_eq!(unpack(0), None);
        assert_eq!(unpack(pack(42, 0)), Some((42, 0)));
        let edge = pack(MAX_CHUNK_ID, MAX_CHUNK_ITEMS as u32);
        assert_eq!(
            unpack(edge | RUNNING),
            Some((MAX_CHUNK_ID, MAX_CHUNK_ITEMS as u32))
        );
        assert_eq!(edge & RUNNING, 0);
    }
}

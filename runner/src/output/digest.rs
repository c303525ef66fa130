//! The SHA-256 of everything written to a `<stage>.jsonl`, computed off the dispatcher's thread.
//!
//! On a stage of many small results the dispatcher is what bounds the stage, and hashing its
//! output there cost ~8 % of its time (SHA-256 runs at ~2 GB/s with the CPU's SHA instructions,
//! about as fast as the rest of the recording path). So past [`INLINE_BYTES`] the written bytes
//! go, in blocks, to a thread of their own; a small output is hashed where it is written (a
//! thread would cost more than the hash). A block copy costs a tenth of hashing it.

use std::io;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{self, JoinHandle};

use sha2::{Digest, Sha256};

/// Outputs up to this size are hashed inline.
const INLINE_BYTES: u64 = 1 << 20;
/// Bytes handed to the hashing thread at a time.
const BLOCK_BYTES: usize = 256 << 10;
/// Blocks waiting for the thread at most (the writer waits beyond: memory stays bounded).
const BLOCKS_QUEUED: usize = 8;

pub(crate) struct OutputDigest {
    state: State,
    /// Bytes fed so far.
    fed: u64,
}

enum State {
    Inline(Sha256),
    Threaded(Hasher),
    /// The thread went away (it cannot panic on its own; kept so that nothing here panics).
    Lost,
}

struct Hasher {
    /// Bytes gathered for the next block.
    block: Vec<u8>,
    blocks: SyncSender<Vec<u8>>,
    /// Blocks the thread is done with, for reuse.
    spare: Receiver<Vec<u8>>,
    thread: JoinHandle<Sha256>,
}

impl OutputDigest {
    /// Continues from `sha`, the hash of what the file already holds.
    pub(crate) fn new(sha: Sha256) -> Self {
        Self {
            state: State::Inline(sha),
            fed: 0,
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.fed += bytes.len() as u64;
        match &mut self.state {
            State::Inline(sha) if self.fed <= INLINE_BYTES => sha.update(bytes),
            State::Inline(sha) => {
                let sha = std::mem::take(sha);
                self.state = match Hasher::start(sha.clone()) {
                    Ok(mut hasher) => {
                        hasher.feed(bytes);
                        State::Threaded(hasher)
                    }
                    // No thread to be had: hash here, as for a small output.
                    Err(_) => {
                        let mut sha = sha;
                        sha.update(bytes);
                        self.fed = 0;
                        State::Inline(sha)
                    }
                };
            }
            State::Threaded(hasher) => {
                if !hasher.feed(bytes) {
                    self.state = State::Lost;
                }
            }
            State::Lost => {}
        }
    }

    /// The digest of everything fed (and of what [`Self::new`] started from).
    pub(crate) fn finish(self) -> io::Result<[u8; 32]> {
        let sha = match self.state {
            State::Inline(sha) => sha,
            State::Threaded(hasher) => hasher.finish().ok_or_else(lost)?,
            State::Lost => return Err(lost()),
        };
        Ok(sha.finalize().into())
    }
}

fn lost() -> io::Error {
    io::Error::other("the thread hashing the output went away")
}

impl Hasher {
    fn start(mut sha: Sha256) -> io::Result<Self> {
        let (blocks, queued) = mpsc::sync_channel::<Vec<u8>>(BLOCKS_QUEUED);
        let (give_back, spare) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("loky-run-sha".into())
            .spawn(move || {
                for mut block in queued {
                    sha.update(&block);
                    block.clear();
                    // The writer may be gone already: the block is just freed then.
                    let _ = give_back.send(block);
                }
                sha
            })?;
        Ok(Self {
            block: Vec::with_capacity(BLOCK_BYTES),
            blocks,
            spare,
            thread,
        })
    }

    /// `false` when the thread is gone.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            let room = BLOCK_BYTES - self.block.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.block.extend_from_slice(now);
            bytes = rest;
            if self.block.len() == BLOCK_BYTES && !self.send() {
                return false;
            }
        }
        true
    }

    fn send(&mut self) -> bool {
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BLOCK_BYTES));
        let full = std::mem::replace(&mut self.block, next);
        self.blocks.send(full).is_ok()
    }

    fn finish(mut self) -> Option<Sha256> {
        if !self.block.is_empty() && !self.send() {
            return None;
        }
        drop(self.blocks);
        self.thread.join().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(parts: &[&[u8]], start: &[u8]) -> [u8; 32] {
        let mut sha = Sha256::new();
        sha.update(start);
        let mut d = OutputDigest::new(sha);
        for p in parts {
            d.update(p);
        }
        d.finish().unwrap()
    }

    #[test]
    fn equals_a_plain_sha256_inline_and_threaded() {
        let big: Vec<u8> = (0..3 * INLINE_BYTES + 12_345)
            .map(|i| (i * 7) as u8)
            .collect();
        for (start, parts) in [
            (&b""[..], vec![&b""[..]]),
            (&b"prefix"[..], vec![&b"abc"[..], &b"def"[..]]),
            // Crosses into the thread in the middle of a write, then writes of every size.
            (
                &b"x"[..],
                vec![&big[..1000], &big[1000..], &big[..BLOCK_BYTES]],
            ),
            (&b""[..], big.chunks(65_536).collect()),
        ] {
            let mut expected = Sha256::new();
            expected.update(start);
            for p in &parts {
                expected.update(p);
            }
            let expected: [u8; 32] = expected.finalize().into();
            assert_eq!(digest_of(&parts, start), expected);
        }
    }
}

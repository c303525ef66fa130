//! How many inputs go in the next chunk.
//!
//! Two bounds, the smaller wins: an upper bound (`chunksize = N`, or with `"auto"` as many
//! items as take about [`TARGET_CHUNK`] by the measured time per item), and guided
//! self-scheduling's share of what is left (`remaining / (GSS_FACTOR × workers)`), so chunks
//! shrink as the stage nears its end and its last tasks spread over every worker instead of
//! waiting behind one busy worker.

use std::time::Duration;

use crate::progress::MAX_CHUNK_ITEMS;

/// Automatic chunks aim at this much work each.
const TARGET_CHUNK: Duration = Duration::from_millis(2);
/// The largest automatic chunk.
const MAX_AUTO_CHUNK: usize = 65_536;
/// Guided self-scheduling with factoring: each chunk takes at most `1 / (GSS_FACTOR ×
/// workers)` of what is left.
const GSS_FACTOR: u64 = 4;
/// Weight of the newest sample in the time-per-item estimate.
const SMOOTHING: f64 = 0.3;

#[derive(Debug, Clone)]
pub struct ChunkSizer {
    fixed: Option<usize>,
    ns_per_item: Option<f64>,
}

impl ChunkSizer {
    /// `fixed`: `chunksize = N`; `None` for `"auto"`.
    pub fn new(fixed: Option<usize>) -> Self {
        Self {
            fixed,
            ns_per_item: None,
        }
    }

    /// The size of the next chunk, with `remaining` inputs not yet handed out and `workers`
    /// workers to share them.
    pub fn next(&self, remaining: u64, workers: usize) -> usize {
        let upper = match (self.fixed, self.ns_per_item) {
            (Some(n), _) => n,
            // Nothing measured yet: one item, so that the first results come back at once.
            (None, None) => 1,
            (None, Some(ns)) => {
                ((TARGET_CHUNK.as_nanos() as f64 / ns.max(1.0)) as usize).clamp(1, MAX_AUTO_CHUNK)
            }
        };
        let share = remaining
            .div_ceil(GSS_FACTOR * workers.max(1) as u64)
            .max(1);
        upper
            .min(usize::try_from(share).unwrap_or(usize::MAX))
            .min(MAX_CHUNK_ITEMS)
    }

    /// A worker spent `busy_ns` on `count` items.
    pub fn observe(&mut self, busy_ns: u64, count: u32) {
        if count == 0 {
            return;
        }
        let sample = busy_ns as f64 / f64::from(count);
        self.ns_per_item = Some(match self.ns_per_item {
            Some(old) => old * (1.0 - SMOOTHING) + sample * SMOOTHING,
            None => sample,
        });
    }

    /// The measured time per item, once there is a measurement.
    pub fn per_item(&self) -> Option<Duration> {
        self.ns_per_item.map(|ns| Duration::from_nanos(ns as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_starts_with_one_item_then_aims_at_the_target_time() {
        let mut s = ChunkSizer::new(None);
        assert_eq!(s.next(1_000_000, 2), 1);
        s.observe(1_000, 10); // 100 ns per item
        assert_eq!(s.next(1_000_000, 2), 20_000);
        let mut slow = ChunkSizer::new(None);
        slow.observe(2_000_000_000, 1); // 2 s per item
        assert_eq!(slow.next(1_000, 4), 1);
    }

    #[test]
    fn chunks_shrink_near_the_end_so_every_worker_gets_a_share() {
        let s = ChunkSizer::new(Some(1_000));
        assert_eq!(s.next(1_000_000, 2), 1_000);
        // 100 left on 4 workers: at most 100 / 16, rounded up.
        assert_eq!(s.next(100, 4), 7);
        assert_eq!(s.next(3, 4), 1);
        assert_eq!(s.next(0, 4), 1);
    }

    #[test]
    fn a_fixed_chunksize_is_an_upper_bound_and_the_encoding_a_hard_one() {
        assert_eq!(ChunkSizer::new(Some(1)).next(1_000, 1), 1);
        assert_eq!(
            ChunkSizer::new(Some(usize::MAX)).next(u64::MAX, 1),
            MAX_CHUNK_ITEMS
        );
    }
}

//! The dispatcher's book: every chunk in flight, which worker holds it, and what the
//! dispatcher knows of each worker in this stage (its seat). Also who is to blame when a worker
//! dies, goes silent, or loses results: worked out here, once, for exits and timeouts alike.
//!
//! Blame follows what the runner can see of the worker ([`Progress`]):
//! - inside a task call: that item did it (certain);
//! - between calls (a local worker), or after its stream broke: the items whose calls returned
//!   but whose results never arrived are the candidates. One candidate is certain; several are
//!   *suspects*: none is charged, each runs again alone, where a failure is certain;
//! - a remote worker sends each result before it starts the next item: its first unreported
//!   item is the one it was on.
//!
//! Items that never started are never to blame: they run again without an attempt counted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Instant;

use crate::pool::{Progress, StopReason, WorkerId};
use crate::protocol::Cursor;

/// One input of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub index: u64,
    /// Where its length-prefixed input starts in the chunk's frame.
    pub at: u32,
    /// For a `from` stage: the index of the earlier stage's record it came from.
    pub source: Option<u64>,
    /// Attempts already made before this one.
    pub attempts: u32,
    /// Deaths this item's result was lost in (it had run, unreported, when its worker died).
    pub witnessed: u8,
    /// Runs alone (a chunk of its own, on an idle worker, nothing queued behind it), so that
    /// a failure can only be its own.
    pub isolated: bool,
}

impl Item {
    pub fn fresh(index: u64) -> Self {
        Self {
            index,
            at: 0,
            source: None,
            attempts: 0,
            witnessed: 0,
            isolated: false,
        }
    }
}

/// A chunk sent to a worker and not fully answered.
pub struct Chunk {
    pub worker: WorkerId,
    /// The frame as sent: kept to re-send single inputs after a failure (shared with the pool
    /// while it waits to be written).
    pub frame: Arc<Vec<u8>>,
    pub items: Vec<Item>,
    /// Results received so far (positions `0..received`).
    pub received: u32,
}

impl Chunk {
    /// The input at `position`, as sent (found by its offset: no walk through the frame).
    pub fn input(&self, position: u32) -> &[u8] {
        let Some(item) = self.items.get(position as usize) else {
            return &[];
        };
        // The frame was built by the dispatcher: the read cannot fail.
        let at = (item.at as usize).min(self.frame.len());
        Cursor::new(&self.frame[at..]).bytes().unwrap_or_default()
    }

    pub fn unreported(&self) -> u32 {
        self.items.len() as u32 - self.received
    }

    pub fn is_isolated(&self) -> bool {
        self.items.iter().any(|i| i.isolated)
    }
}

/// What the dispatcher knows of one worker during a stage.
pub struct Seat {
    /// Chunk ids it holds, oldest first (it runs them in this order).
    pub chunks: VecDeque<u64>,
    /// Since when it holds nothing.
    pub idle_since: Instant,
    /// When its oldest unreported item started, at the latest: when its last results
    /// arrived, or when it was given work while idle.
    pub active_since: Instant,
    /// Due for recycling: gets no new work, retires once it holds nothing.
    pub recycle: Option<StopReason>,
    /// Decided when the dispatcher stopped it (a timeout), applied when its exit arrives.
    pub blame: Option<Blame>,
}

impl Seat {
    fn new(now: Instant) -> Self {
        Self {
            chunks: VecDeque::new(),
            idle_since: now,
            active_since: now,
            recycle: None,
            blame: None,
        }
    }
}

/// Who is to blame for a worker's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blame {
    /// This item, for certain. `running`: it was inside its call (else its call had returned
    /// and its result never arrived).
    Item {
        chunk: u64,
        position: u32,
        running: bool,
    },
    /// One of these, or none (an outside kill between calls): each runs again alone.
    Suspects(Vec<(u64, u32)>),
    /// No task: the worker died outside any task call, holding nothing that ran.
    Nobody,
}

#[derive(Default)]
pub struct Book {
    chunks: HashMap<u64, Chunk, BuildHasherDefault<ChunkIdHasher>>,
    seats: BTreeMap<WorkerId, Seat>,
}

/// Chunk ids are a counter: mixing them with one multiplication spreads them over the table
/// as well as SipHash does, for a fraction of its cost (the dispatcher looks chunks up for
/// every worker on every turn).
#[derive(Default)]
pub struct ChunkIdHasher(u64);

impl Hasher for ChunkIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: the high bits, which hashbrown uses, depend on every bit of the id.
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Book {
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The seat of a worker, made when first needed.
    pub fn seat(&mut self, worker: WorkerId, now: Instant) -> &mut Seat {
        self.seats.entry(worker).or_insert_with(|| Seat::new(now))
    }

    pub fn seat_ref(&self, worker: WorkerId) -> Option<&Seat> {
        self.seats.get(&worker)
    }

    pub fn seats(&self) -> impl Iterator<Item = (WorkerId, &Seat)> {
        self.seats.iter().map(|(id, s)| (*id, s))
    }

    /// Workers holding work.
    pub fn busy(&self) -> usize {
        self.seats.values().filter(|s| !s.chunks.is_empty()).count()
    }

    /// Items a worker holds that have not been answered.
    pub fn held(&self, worker: WorkerId) -> u64 {
        self.seats.get(&worker).map_or(0, |s| {
            s.chunks
                .iter()
                .filter_map(|id| self.chunks.get(id))
                .map(|c| u64::from(c.unreported()))
                .sum()
        })
    }

    /// Bytes of the chunk frames a worker holds.
    pub fn held_bytes(&self, worker: WorkerId) -> usize {
        self.seats.get(&worker).map_or(0, |s| {
            s.chunks
                .iter()
                .filter_map(|id| self.chunks.get(id))
                .map(|c| c.frame.len())
                .sum()
        })
    }

    /// Whether a worker holds an isolated item.
    pub fn holds_isolated(&self, worker: WorkerId) -> bool {
        self.seats.get(&worker).is_some_and(|s| {
            s.chunks
                .iter()
                .filter_map(|id| self.chunks.get(id))
                .any(Chunk::is_isolated)
        })
    }

    /// Books a chunk just sent.
    pub fn add(&mut self, id: u64, chunk: Chunk, now: Instant) {
        let seat = self.seat(chunk.worker, now);
        if seat.chunks.is_empty() {
            seat.active_since = now;
        }
        seat.chunks.push_back(id);
        self.chunks.insert(id, chunk);
    }

    /// Takes a chunk out to work on it; [`Self::put_back`] or [`Self::forget`] follows.
    pub fn take(&mut self, id: u64) -> Option<Chunk> {
        self.chunks.remove(&id)
    }

    pub fn put_back(&mut self, id: u64, chunk: Chunk) {
        self.chunks.insert(id, chunk);
    }

    /// A chunk taken out is fully answered: off its worker's seat.
    pub fn forget(&mut self, id: u64, worker: WorkerId, now: Instant) {
        if let Some(seat) = self.seats.get_mut(&worker) {
            seat.chunks.retain(|c| *c != id);
            if seat.chunks.is_empty() {
                seat.idle_since = now;
            }
        }
    }

    /// Takes a fully answered chunk off the book.
    pub fn complete(&mut self, id: u64, now: Instant) -> Option<Chunk> {
        let chunk = self.take(id)?;
        self.forget(id, chunk.worker, now);
        Some(chunk)
    }

    /// Takes a gone worker off the book: its seat and its chunks, oldest first.
    pub fn remove_worker(&mut self, worker: WorkerId) -> (Option<Seat>, Vec<(u64, Chunk)>) {
        let Some(seat) = self.seats.remove(&worker) else {
            return (None, Vec::new());
        };
        let chunks = seat
            .chunks
            .iter()
            .filter_map(|id| self.chunks.remove(id).map(|c| (*id, c)))
            .collect();
        (Some(seat), chunks)
    }

    /// The first unreported item of a worker: `(chunk, position)`.
    fn first_unreported(&self, worker: WorkerId) -> Option<(u64, u32)> {
        let seat = self.seats.get(&worker)?;
        seat.chunks.iter().find_map(|id| {
            let c = self.chunks.get(id)?;
            (c.received < c.items.len() as u32).then_some((*id, c.received))
        })
    }

    /// Whether `(chunk, position)` is an unreported item this worker holds.
    fn holds_unreported(&self, worker: WorkerId, chunk: u64, position: u32) -> bool {
        self.chunks.get(&chunk).is_some_and(|c| {
            c.worker == worker && position >= c.received && (position as usize) < c.items.len()
        })
    }

    /// The items of a worker whose calls returned (the worker started a later one, or `last`
    /// itself returned) and whose results have not arrived.
    fn ran_unreported(&self, worker: WorkerId, last: (u64, u32)) -> Vec<(u64, u32)> {
        let Some(seat) = self.seats.get(&worker) else {
            return Vec::new();
        };
        let (last_chunk, last_position) = last;
        let mut ran = Vec::new();
        // A worker runs its chunks in the order of their ids.
        for id in seat.chunks.iter().copied().filter(|id| *id <= last_chunk) {
            let Some(c) = self.chunks.get(&id) else {
                continue;
            };
            let end = if id == last_chunk {
                (last_position + 1).min(c.items.len() as u32)
            } else {
                c.items.len() as u32
            };
            ran.extend((c.received..end).map(|p| (id, p)));
        }
        ran
    }

    /// Who is to blame for what happened to `worker`, from what it was doing.
    pub fn blame(&self, worker: WorkerId, progress: Progress) -> Blame {
        let last = match progress {
            Progress::Running {
                chunk, position, ..
            } => {
                if self.holds_unreported(worker, chunk, position) {
                    return Blame::Item {
                        chunk,
                        position,
                        running: true,
                    };
                }
                Some((chunk, position))
            }
            Progress::Between { last } => last,
            Progress::Unknown => {
                return match self.first_unreported(worker) {
                    Some((chunk, position)) => Blame::Item {
                        chunk,
                        position,
                        running: true,
                    },
                    None => Blame::Nobody,
                };
            }
        };
        let ran = last.map_or_else(Vec::new, |last| self.ran_unreported(worker, last));
        match ran.as_slice() {
            [] => Blame::Nobody,
            [(chunk, position)] => Blame::Item {
                chunk: *chunk,
                position: *position,
                running: false,
            },
            _ => Blame::Suspects(ran),
        }
    }

    /// Who is to blame for results a worker wrote that never arrived: only items whose calls
    /// had returned (the item it is running has written nothing yet, so it is innocent).
    pub fn blame_lost(&self, worker: WorkerId, progress: Progress) -> Blame {
        let mut ran = match progress {
            Progress::Running {
                chunk, position, ..
            }
            | Progress::Between {
                last: Some((chunk, position)),
            } => self.ran_unreported(worker, (chunk, position)),
            Progress::Between { last: None } | Progress::Unknown => Vec::new(),
        };
        if let Progress::Running {
            chunk, position, ..
        } = progress
        {
            ran.retain(|p| *p != (chunk, position));
        }
        match ran.as_slice() {
            [] => Blame::Nobody,
            [(chunk, position)] => Blame::Item {
                chunk: *chunk,
                position: *position,
                running: false,
            },
            _ => Blame::Suspects(ran),
        }
    }

    /// The items whose results a certain blame leaves lost although they ran (their worker died
    /// while it ran a later one): bystanders, or the real culprit if its harm came late.
    pub fn bystanders(&self, worker: WorkerId, blame: &Blame) -> Vec<(u64, u32)> {
        match blame {
            Blame::Item {
                chunk,
                position,
                running: true,
            } => {
                let mut ran = self.ran_unreported(worker, (*chunk, *position));
                ran.retain(|p| *p != (*chunk, *position));
                ran
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_results_never_blame_the_item_that_was_still_running() {
        let b = book();
        // It lost what it wrote for position 1, then ran on into position 2 and 3.
        let running = Progress::Running {
            chunk: 10,
            position: 2,
            since: Instant::now(),
        };
        assert_eq!(
            b.blame_lost(1, running),
            Blame::Item {
                chunk: 10,
                position: 1,
                running: false
            }
        );
        let later = Progress::Running {
            chunk: 11,
            position: 0,
            since: Instant::now(),
        };
        assert_eq!(
            b.blame_lost(1, later),
            Blame::Suspects(vec![(10, 1), (10, 2), (10, 3)])
        );
        assert_eq!(b.blame_lost(1, Progress::Unknown), Blame::Nobody);
    }

    fn chunk(worker: WorkerId, first_index: u64, len: usize, received: u32) -> Chunk {
        Chunk {
            worker,
            frame: Arc::new(Vec::new()),
            items: (0..len as u64)
                .map(|i| Item::fresh(first_index + i))
                .collect(),
            received,
        }
    }

    fn book() -> Book {
        // Worker 1 holds chunk 10 (4 items, 1 answered) and chunk 11 (3 items).
        let mut b = Book::default();
        let now = Instant::now();
        b.add(10, chunk(1, 0, 4, 1), now);
        b.add(11, chunk(1, 4, 3, 0), now);
        b
    }

    #[test]
    fn the_item_inside_its_call_is_to_blame() {
        let b = book();
        let running = Progress::Running {
            chunk: 10,
            position: 2,
            since: Instant::now(),
        };
        let blame = b.blame(1, running);
        assert_eq!(
            blame,
            Blame::Item {
                chunk: 10,
                position: 2,
                running: true
            }
        );
        // Position 1 had run, its result not yet sent: lost with the worker, not to blame.
        assert_eq!(b.bystanders(1, &blame), [(10, 1)]);
    }

    #[test]
    fn between_calls_one_lost_result_is_certain_and_several_are_suspects() {
        let b = book();
        // Position 1 returned, nothing later started: only it can have lost its result.
        assert_eq!(
            b.blame(
                1,
                Progress::Between {
                    last: Some((10, 1))
                }
            ),
            Blame::Item {
                chunk: 10,
                position: 1,
                running: false
            }
        );
        // Chunk 10 ran to its end and chunk 11's first item returned: 4 candidates.
        assert_eq!(
            b.blame(
                1,
                Progress::Between {
                    last: Some((11, 0))
                }
            ),
            Blame::Suspects(vec![(10, 1), (10, 2), (10, 3), (11, 0)])
        );
    }

    #[test]
    fn items_that_never_started_are_never_to_blame() {
        let b = book();
        assert_eq!(b.blame(1, Progress::Between { last: None }), Blame::Nobody);
        // The last item started belongs to an earlier chunk, long answered (a reused worker).
        assert_eq!(
            b.blame(1, Progress::Between { last: Some((3, 9)) }),
            Blame::Nobody
        );
        // Or it was answered already.
        assert_eq!(
            b.blame(
                1,
                Progress::Between {
                    last: Some((10, 0))
                }
            ),
            Blame::Nobody
        );
    }

    #[test]
    fn a_remote_workers_first_unreported_item_is_the_one_it_was_on() {
        let b = book();
        assert_eq!(
            b.blame(1, Progress::Unknown),
            Blame::Item {
                chunk: 10,
                position: 1,
                running: true
            }
        );
        assert_eq!(Book::default().blame(1, Progress::Unknown), Blame::Nobody);
    }

    #[test]
    fn answered_chunks_leave_the_book_and_the_seat_goes_idle() {
        let mut b = book();
        let later = Instant::now();
        assert_eq!(b.held(1), 6);
        assert!(b.complete(10, later).is_some());
        assert_eq!(b.held(1), 3);
        b.complete(11, later);
        assert!(b.is_empty());
        assert_eq!(b.seat_ref(1).unwrap().idle_since, later);
        let (seat, chunks) = b.remove_worker(1);
        assert!(seat.is_some() && chunks.is_empty());
    }
}

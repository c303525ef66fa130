//! The reorder buffer: records that arrived ahead of the next index to write, kept in runs of
//! consecutive indices.
//!
//! Results come in batches of consecutive indices (a worker's chunk, in order), and with two or
//! more workers about every other batch arrives ahead of the write position. One map entry and
//! one allocation per record was a fifth of the dispatcher's time on a stage of tiny tasks; a
//! run is one entry and one buffer for a batch, and it reaches the file in one write.

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;

/// A run takes more records while it is smaller than this (so a run never grows by copying a
/// big buffer, and a big record gets a run of its own).
const RUN_BYTES: usize = 256 << 10;
/// Emptied run buffers kept for reuse.
const SPARE_RUNS: usize = 4;

#[derive(Default)]
pub(crate) struct Held {
    /// Runs by their first index; they never overlap.
    runs: BTreeMap<u64, Run>,
    bytes: usize,
    /// The run the last record went to, and the first index of the run after it when it
    /// became the last one (a record may continue it up to there).
    last: Option<(u64, u64)>,
    spare: Vec<Run>,
}

/// Lines of consecutive indices, each ending in a newline.
#[derive(Default)]
pub(crate) struct Run {
    lines: Vec<u8>,
    /// Where each line ends in `lines`.
    ends: Vec<usize>,
    /// Lines taken from the front already (by [`Held::take_line`]).
    taken: usize,
}

impl Run {
    fn len(&self) -> u64 {
        (self.ends.len() - self.taken) as u64
    }

    fn line(&self, i: usize) -> Range<usize> {
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1],
        };
        start..self.ends[i]
    }

    /// The lines not taken yet, as one slice.
    pub(crate) fn bytes(&self) -> &[u8] {
        let start = self.line(self.taken).start;
        &self.lines[start..]
    }

    fn bytes_len(&self) -> usize {
        self.bytes().len()
    }

    fn clear(&mut self) {
        self.lines.clear();
        self.ends.clear();
        self.taken = 0;
    }
}

impl Held {
    pub(crate) fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The highest index held.
    pub(crate) fn max_index(&self) -> Option<u64> {
        self.runs
            .last_key_value()
            .map(|(first, run)| first + run.len() - 1)
    }

    pub(crate) fn contains(&self, index: u64) -> bool {
        self.run_containing(index).is_some()
    }

    /// The indices held, in order.
    pub(crate) fn indices(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs
            .iter()
            .flat_map(|(first, run)| *first..first + run.len())
    }

    fn run_containing(&self, index: u64) -> Option<u64> {
        let (first, run) = self.runs.range(..=index).next_back()?;
        (index < first + run.len()).then_some(*first)
    }

    /// Holds the record of `index`, written by `write` (about `size_hint` bytes, its newline
    /// included); a record already held for `index` is replaced. Returns the line.
    pub(crate) fn push_with(
        &mut self,
        index: u64,
        size_hint: usize,
        write: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<&[u8]> {
        let first = match self.last {
            // The usual case: the record continues the run the last one went to.
            Some((first, limit))
                if index < limit
                    && self.runs.get(&first).is_some_and(|r| {
                        first + r.len() == index && r.lines.len() + size_hint <= RUN_BYTES
                    }) =>
            {
                first
            }
            _ => {
                if self.contains(index) {
                    // Replacing a held record (rare): the old one stays if the write fails.
                    let mut line = Vec::with_capacity(size_hint);
                    write(&mut line)?;
                    self.remove(index);
                    return self.push_line(index, &line);
                }
                let mut run = self.spare.pop().unwrap_or_default();
                if size_hint > RUN_BYTES {
                    run.lines = Vec::with_capacity(size_hint);
                }
                self.runs.insert(index, run);
                let limit = self
                    .runs
                    .range(index + 1..)
                    .next()
                    .map_or(u64::MAX, |(first, _)| *first);
                self.last = Some((index, limit));
                index
            }
        };
        let written = {
            let Some(run) = self.runs.get_mut(&first) else {
                return Err(lost_run());
            };
            let start = run.lines.len();
            match write(&mut run.lines) {
                Ok(()) => {
                    run.ends.push(run.lines.len());
                    Ok(start)
                }
                Err(e) => {
                    run.lines.truncate(start);
                    Err((e, run.ends.is_empty()))
                }
            }
        };
        match written {
            Ok(start) => {
                let run = self.runs.get(&first).ok_or_else(lost_run)?;
                self.bytes += run.lines.len() - start;
                Ok(&run.lines[start..])
            }
            Err((e, empty)) => {
                if empty {
                    self.runs.remove(&first);
                    self.last = None;
                }
                Err(e)
            }
        }
    }

    /// [`Self::push_with`] for a line already written (not generic: `push_with` calls it).
    pub(crate) fn push_line(&mut self, index: u64, line: &[u8]) -> io::Result<&[u8]> {
        self.push_with(index, line.len(), |buf| {
            buf.extend_from_slice(line);
            Ok(())
        })
    }

    /// Takes the run that starts at `index`, if there is one (give it back with
    /// [`Self::recycle`] once written).
    pub(crate) fn take_run(&mut self, index: u64) -> Option<(Run, u64)> {
        let entry = self.runs.first_entry()?;
        if *entry.key() != index {
            return None;
        }
        let run = entry.remove();
        if self.last.is_some_and(|(first, _)| first == index) {
            self.last = None;
        }
        self.bytes -= run.bytes_len();
        let len = run.len();
        Some((run, len))
    }

    /// A run's buffer, for reuse.
    pub(crate) fn recycle(&mut self, mut run: Run) {
        if self.spare.len() < SPARE_RUNS && run.lines.capacity() <= RUN_BYTES * 2 {
            run.clear();
            self.spare.push(run);
        }
    }

    /// Takes the record of `index` if it is the first of its run (the others stay held).
    pub(crate) fn take_line(&mut self, index: u64) -> Option<Vec<u8>> {
        let entry = self.runs.first_entry()?;
        if *entry.key() != index {
            return None;
        }
        let run = entry.remove();
        Some(self.drop_first_line(index, run))
    }

    /// Takes the first line of `run` (taken out of the map, where it started at `index`) and
    /// puts the rest back from `index + 1`: nothing is copied but that line.
    fn drop_first_line(&mut self, index: u64, mut run: Run) -> Vec<u8> {
        let line = run.lines[run.line(run.taken)].to_vec();
        run.taken += 1;
        self.bytes -= line.len();
        if self.last.is_some_and(|(first, _)| first == index) {
            self.last = None;
        }
        if run.len() > 0 {
            self.runs.insert(index + 1, run);
        }
        line
    }

    /// Drops the record of `index` if one is held (its run is split around it).
    pub(crate) fn remove(&mut self, index: u64) {
        let Some(first) = self.run_containing(index) else {
            return;
        };
        let Some(run) = self.runs.remove(&first) else {
            return;
        };
        self.last = None;
        if index == first {
            // The carried path drops them one by one from the front.
            self.drop_first_line(index, run);
            return;
        }
        self.bytes -= run.bytes_len();
        let at = run.taken + (index - first) as usize;
        let mut keep = |lines: Range<usize>, from_first: u64| {
            if lines.is_empty() {
                return;
            }
            let mut part = Run::default();
            let base = run.line(lines.start).start;
            part.lines
                .extend_from_slice(&run.lines[base..run.line(lines.end - 1).end]);
            part.ends
                .extend(run.ends[lines.clone()].iter().map(|e| e - base));
            self.bytes += part.lines.len();
            self.runs.insert(from_first, part);
        };
        keep(run.taken..at, first);
        keep(at + 1..run.ends.len(), index + 1);
    }

    /// Everything held, in index order: `(index, line)`.
    pub(crate) fn into_lines(self) -> impl Iterator<Item = (u64, Vec<u8>)> {
        self.runs.into_iter().flat_map(|(first, run)| {
            (run.taken..run.ends.len()).map(move |i| {
                let index = first + (i - run.taken) as u64;
                (index, run.lines[run.line(i)].to_vec())
            })
        })
    }
}

/// A run found or inserted a moment ago is not there (cannot happen; no panic if it does).
fn lost_run() -> io::Error {
    io::Error::other("the reorder buffer lost a run it had just found")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(h: &mut Held, index: u64) {
        h.push_with(index, 8, |b| {
            b.extend_from_slice(format!("{index}\n").as_bytes());
            Ok(())
        })
        .unwrap();
    }

    fn lines(h: Held) -> Vec<(u64, String)> {
        h.into_lines()
            .map(|(i, l)| (i, String::from_utf8(l).unwrap()))
            .collect()
    }

    #[test]
    fn consecutive_records_share_a_run_and_come_out_whole() {
        let mut h = Held::default();
        for i in [10, 11, 12, 20, 21, 13] {
            push(&mut h, i);
        }
        // 13 continues 10..13 only if nothing started at 13 in between: it did not.
        assert_eq!(
            h.runs.len(),
            3,
            "10..13, 20..22 and 13 (the last run was 20..)"
        );
        assert_eq!(h.max_index(), Some(21));
        assert!(h.contains(12) && h.contains(13) && !h.contains(14) && !h.contains(9));
        assert_eq!(h.bytes(), 6 * 3);
        assert!(h.take_run(11).is_none(), "only a run starting there");
        let (run, len) = h.take_run(10).unwrap();
        assert_eq!((run.bytes(), len), (&b"10\n11\n12\n"[..], 3));
        h.recycle(run);
        let (run, len) = h.take_run(13).unwrap();
        assert_eq!((run.bytes(), len), (&b"13\n"[..], 1));
        assert_eq!(h.indices().collect::<Vec<_>>(), [20, 21]);
        assert_eq!(h.bytes(), 6);
    }

    #[test]
    fn a_run_never_grows_into_the_next_one() {
        let mut h = Held::default();
        push(&mut h, 5);
        push(&mut h, 3);
        push(&mut h, 4); // continues 3.. up to 5, where the next run starts
        push(&mut h, 5); // a second record for 5 replaces the first
        assert_eq!(
            lines(h),
            [(3, "3\n"), (4, "4\n"), (5, "5\n")]
                .map(|(i, s)| (i, s.to_owned()))
                .to_vec()
        );
    }

    #[test]
    fn a_record_replaces_one_in_the_middle_of_a_run() {
        let mut h = Held::default();
        for i in 0..5 {
            push(&mut h, i);
        }
        h.push_with(2, 8, |b| {
            b.extend_from_slice(b"two\n");
            Ok(())
        })
        .unwrap();
        assert_eq!(h.bytes(), 4 * 2 + 4);
        let got: Vec<String> = lines(h)
            .into_iter()
            .map(|(i, l)| format!("{i}:{l}"))
            .collect();
        assert_eq!(got, ["0:0\n", "1:1\n", "2:two\n", "3:3\n", "4:4\n"]);
    }

    #[test]
    fn lines_are_taken_one_at_a_time_and_removed_anywhere() {
        let mut h = Held::default();
        for i in 7..12 {
            push(&mut h, i);
        }
        assert_eq!(h.take_line(7).unwrap(), b"7\n");
        assert!(h.take_line(7).is_none() && !h.contains(7));
        h.remove(9);
        h.remove(100);
        assert_eq!(h.indices().collect::<Vec<_>>(), [8, 10, 11]);
        assert_eq!(h.bytes(), 2 + 3 + 3);
        let (run, len) = h.take_run(8).unwrap();
        assert_eq!((run.bytes(), len), (&b"8\n"[..], 1));
        assert_eq!(h.max_index(), Some(11));
    }

    #[test]
    fn big_records_get_runs_of_their_own_and_a_failed_write_leaves_nothing() {
        let mut h = Held::default();
        push(&mut h, 0);
        h.push_with(1, RUN_BYTES + 1, |b| {
            b.resize(RUN_BYTES + 1, b'x');
            Ok(())
        })
        .unwrap();
        push(&mut h, 2);
        assert_eq!(h.runs.len(), 3);
        // A failed replacement keeps the record it would have replaced.
        let failed = h.push_with(2, 8, |_| Err(io::Error::other("no")));
        assert!(failed.is_err() && h.contains(2));
        let failed = h.push_with(3, 8, |_| Err(io::Error::other("no")));
        assert!(failed.is_err());
        let failed = h.push_with(9, 8, |b| {
            b.push(b'x');
            Err(io::Error::other("no"))
        });
        assert!(failed.is_err());
        assert_eq!(h.max_index(), Some(2));
        assert_eq!(h.bytes(), 2 + RUN_BYTES + 1 + 2);
    }

    /// Against a map of index to line (what the reorder buffer was before runs): any sequence
    /// of holds (some failing), takes and removals leaves the same records, in the same order.
    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        #[derive(Debug, Clone)]
        enum Op {
            Push {
                index: u64,
                len: usize,
                big: bool,
                fail: bool,
            },
            TakeRun(u64),
            TakeFirstRun,
            TakeLine(u64),
            Remove(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (0..40u64, 1..24usize, prop::bool::weighted(0.05), prop::bool::weighted(0.1))
                    .prop_map(|(index, len, big, fail)| Op::Push { index, len, big, fail }),
                1 => (0..40u64).prop_map(Op::TakeRun),
                2 => Just(Op::TakeFirstRun),
                1 => (0..40u64).prop_map(Op::TakeLine),
                1 => (0..40u64).prop_map(Op::Remove),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            #[test]
            fn held_records_match_a_map_of_lines(ops in prop::collection::vec(op(), 1..200)) {
                let mut h = Held::default();
                let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
                for (n, op) in ops.into_iter().enumerate() {
                    match op {
                        Op::Push { index, len, big, fail } => {
                            let mut line = format!("{index}:{n}:").into_bytes();
                            line.resize(line.len() + len, b'x');
                            line.push(b'\n');
                            let hint = if big { RUN_BYTES + 1 } else { line.len() };
                            let written = h.push_with(index, hint, |buf| {
                                buf.extend_from_slice(&line[..line.len() / 2]);
                                if fail {
                                    return Err(io::Error::other("refused"));
                                }
                                buf.extend_from_slice(&line[line.len() / 2..]);
                                Ok(())
                            });
                            prop_assert_eq!(written.is_ok(), !fail);
                            if !fail {
                                model.insert(index, line);
                            }
                        }
                        Op::TakeRun(index) => {
                            let first = model.keys().next().copied();
                            let taken = h.take_run(index);
                            prop_assert_eq!(taken.is_some(), first == Some(index));
                            if let Some((run, len)) = taken {
                                let mut expected = Vec::new();
                                for i in index..index + len {
                                    expected.extend(model.remove(&i).unwrap_or_default());
                                }
                                prop_assert_eq!(run.bytes(), &expected[..]);
                                h.recycle(run);
                            }
                        }
                        Op::TakeFirstRun => {
                            if let Some(first) = model.keys().next().copied() {
                                let (run, len) = h.take_run(first).expect("a run starts there");
                                let mut expected = Vec::new();
                                for i in first..first + len {
                                    expected.extend(model.remove(&i).unwrap_or_default());
                                }
                                prop_assert_eq!(run.bytes(), &expected[..]);
                            }
                        }
                        Op::TakeLine(index) => {
                            let first = model.keys().next().copied();
                            let line = h.take_line(index);
                            prop_assert_eq!(line.is_some(), first == Some(index));
                            if let Some(line) = line {
                                prop_assert_eq!(Some(line), model.remove(&index));
                            }
                        }
                        Op::Remove(index) => {
                            h.remove(index);
                            model.remove(&index);
                        }
                    }
                    prop_assert_eq!(h.bytes(), model.values().map(Vec::len).sum::<usize>());
                    prop_assert_eq!(h.max_index(), model.keys().next_back().copied());
                    prop_assert_eq!(h.is_empty(), model.is_empty());
                    prop_assert!(h.indices().eq(model.keys().copied()));
                    for i in 0..42 {
                        prop_assert_eq!(h.contains(i), model.contains_key(&i));
                    }
                }
                let lines: Vec<(u64, Vec<u8>)> = h.into_lines().collect();
                prop_assert_eq!(lines, model.into_iter().collect::<Vec<_>>());
            }
        }
    }
}

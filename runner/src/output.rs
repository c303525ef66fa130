//! Stage results: `<output_dir>/<stage>.jsonl`, one line per input, in input order, recorded
//! durably as they complete.
//!
//! Results arrive in completion order; a small reorder buffer (`held.rs`: runs of consecutive
//! records) holds those that are ahead of the next index to write. The dispatcher bounds that
//! buffer (it stops handing out inputs far ahead of the write position), so memory stays flat
//! whatever the number of tasks.
//!
//! Durability: `<stage>.jsonl` only ever holds a contiguous prefix (line k is the record of input
//! k), so it is the journal of that prefix; every result held in the reorder buffer is also
//! appended to a side journal (see [`journal`]). [`OrderedWriter::flush`], called by the
//! dispatcher after each batch of results, writes both out (`write(2)`: a `kill -9` of the runner
//! loses nothing flushed); a background thread `fdatasync`s them every second, and the end of a
//! stage syncs them at once. [`OrderedWriter::resume`] rebuilds a writer from what an interrupted
//! run left: the verified prefix of `<stage>.jsonl` plus the journaled results beyond it (a torn
//! last frame is ignored).
//!
//! Integrity: every byte of `<stage>.jsonl` is also fed to a CRC-32 for the seals (see
//! [`seals`]: `--resume` verifies every sealed megabyte and checks the rest line by line, and
//! cuts the file back before the first damage) and to a SHA-256 of the whole file, which
//! [`OrderedWriter::finish`] returns for the manifest (checked wherever a finished output is
//! read again).

pub mod carried;
mod digest;
mod held;
pub mod journal;
pub mod seals;

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use carried::Carried;
use digest::OutputDigest;
use held::Held;
use journal::JournalWriter;
use seals::{Seal, SealWriter};

/// Written data is made durable (`fdatasync`) at least this often.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// The journal's directory inside the output directory.
pub const JOURNAL_DIR: &str = ".journal";

/// Why an item has no output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    TaskError,
    Panic,
    Crashed,
    Timeout,
    Initializer,
    /// The input or the result does not fit in a frame (its size and the limit are in the
    /// message).
    TooLarge,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::TaskError => "task_error",
            ErrorKind::Panic => "panic",
            ErrorKind::Crashed => "crashed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Initializer => "initializer",
            ErrorKind::TooLarge => "too_large",
        }
    }
}

#[derive(Serialize)]
struct ErrorRecord<'a> {
    index: u64,
    /// For a `from` stage: the index of the earlier stage's record this input came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<u64>,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    kind: ErrorKind,
    message: &'a str,
    /// Only written when the task was tried more than once.
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<u32>,
}

/// The side journal of the stage whose results go to `output` (`<dir>/<stage>.jsonl`):
/// `<dir>/.journal/<stage>.log`.
pub fn journal_path(output: &Path) -> PathBuf {
    let dir = output.parent().unwrap_or(Path::new("."));
    let stem = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.strip_suffix(".jsonl").unwrap_or(&stem);
    dir.join(JOURNAL_DIR).join(format!("{stem}.log"))
}

/// What a resumed writer found already recorded by the run it continues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resumed {
    /// Results recorded before this run: successes and failures.
    pub ok: u64,
    pub failed: u64,
    /// Of those, the lines kept in `<stage>.jsonl` (its valid prefix); the rest came from the
    /// journal.
    pub prefix: u64,
    /// Bytes of a torn or invalid tail cut off `<stage>.jsonl`.
    pub dropped_output_bytes: u64,
    /// Bytes of a torn or corrupt tail ignored in the journal.
    pub dropped_journal_bytes: u64,
    /// Where `<stage>.jsonl` was found damaged (a sealed part that no longer matches its
    /// seal, or a line that is not a record): the line (= input index) and byte offset it was
    /// cut back to. The results from there on run again (unless the journal holds them).
    pub damaged_at: Option<(u64, u64)>,
    /// `--retry-failed`: ok records of the stage's previous output carried over as they are
    /// (counted in `ok`), and the failures it held (they run again).
    pub carried: u64,
    pub previous_failed: u64,
}

impl Resumed {
    pub fn records(&self) -> u64 {
        self.ok + self.failed
    }
}

pub struct OrderedWriter {
    path: PathBuf,
    out: BufWriter<Tracked>,
    seals: SealWriter,
    /// Where the last seal is (the tracked CRC covers the bytes since).
    sealed_at: u64,
    /// The next index to write.
    next: u64,
    /// The reorder buffer.
    held: Held,
    journal: JournalWriter,
    syncer: Syncer,
    resumed: Resumed,
    /// The highest index taken from the journal when resuming (`is_done` looks below it).
    resumed_held_max: Option<u64>,
    /// Bytes of the results taken from the journal that wait for a gap before them.
    resumed_held_bytes: usize,
    /// `--retry-failed`: the stage's previous output, whose ok records are copied in as the
    /// write position reaches them.
    carried: Option<Carried>,
    /// `finish` or `suspend` ran.
    closed: bool,
}

impl OrderedWriter {
    /// Starts `<stage>.jsonl` anew (and deletes a journal an earlier run may have left).
    pub fn create(path: &Path) -> io::Result<Self> {
        let journal = journal_path(path);
        // Without a journal directory there is nothing of an earlier run to delete (one stat
        // instead of four calls that fail).
        let journal_dir = journal.parent().map(Path::symlink_metadata);
        if !journal_dir.is_some_and(|m| m.is_err_and(|e| e.kind() == io::ErrorKind::NotFound)) {
            seals::remove(&seals::seals_path(path))?;
            remove_file(&carried::previous_path(path))?;
            journal::remove(&journal)?;
        }
        let file = File::create(path)?;
        let writer = Self::with(
            path,
            Tracked::new(file),
            0,
            JournalWriter::new(journal, 0).known_absent(),
            SealWriter::new(seals::seals_path(path), 0).known_absent(),
            0,
        )?;
        // The new directory entry is made durable off the critical path (the syncer's first
        // pass); `finish` waits for it.
        writer.syncer.sync_parent_once(path);
        Ok(writer)
    }

    fn with(
        path: &Path,
        out: Tracked,
        next: u64,
        journal: JournalWriter,
        seals: SealWriter,
        sealed_at: u64,
    ) -> io::Result<Self> {
        let syncer = Syncer::start()?;
        syncer.add(&out.file)?;
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::with_capacity(1 << 16, out),
            seals,
            sealed_at,
            next,
            held: Held::default(),
            journal,
            syncer,
            resumed: Resumed::default(),
            resumed_held_max: None,
            resumed_held_bytes: 0,
            carried: None,
            closed: false,
        })
    }

    /// Continues the `<stage>.jsonl` of an interrupted run: keeps its verified prefix (cut back
    /// before the first damage or torn line) and takes the journaled results beyond it back
    /// into the reorder buffer. A missing file is an empty prefix. See
    /// [`OrderedWriter::resumed`] and [`OrderedWriter::is_done`]. An interrupted retry (see
    /// [`OrderedWriter::retry`]) continues as one.
    pub fn resume(path: &Path) -> io::Result<Self> {
        let previous = carried::previous_path(path);
        let carried = match previous.exists() {
            true => Some(Carried::open(&previous, None)?),
            false => None,
        };
        Self::resume_with(path, carried)
    }

    /// `--retry-failed`: starts `<stage>.jsonl` again over the stage's finished output, which
    /// moves to `.journal/<stage>.previous` (`expected_sha256`: what the manifest recorded of
    /// it). Its ok records are carried over byte for byte; the other inputs run again (see
    /// [`carried`]). A retry that was interrupted (the previous file is there) continues.
    pub fn retry(path: &Path, expected_sha256: Option<&str>) -> io::Result<Self> {
        let previous = carried::previous_path(path);
        if previous.exists() {
            let carried = Carried::open(&previous, expected_sha256)?;
            return Self::resume_with(path, Some(carried));
        }
        // Checked before anything moves: a refused retry leaves the output where it was.
        let mut carried = Carried::open(path, expected_sha256)?;
        seals::remove(&seals::seals_path(path))?;
        journal::remove(&journal_path(path))?;
        let dir = previous.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        std::fs::rename(path, &previous)?;
        // The move survives a power cut: both directory entries are durable.
        journal::sync_dir(dir);
        sync_parent(path);
        carried.moved_to(previous);
        Self::resume_with(path, Some(carried))
    }

    fn resume_with(path: &Path, carried: Option<Carried>) -> io::Result<Self> {
        let seals_file = seals::seals_path(path);
        let prefix = verify_prefix(path, &seals::read(&seals_file)?)?;
        seals::truncate(&seals_file, prefix.seals_kept)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.set_len(prefix.valid_len)?;
        file.seek(SeekFrom::Start(prefix.valid_len))?;
        sync_parent(path);

        let journal_file = journal_path(path);
        let mut held = Held::default();
        let mut held_error = None;
        let (mut ok, mut failed) = (prefix.ok, prefix.failed);
        let scan = journal::read(&journal_file, |r| {
            if r.index >= prefix.lines && !held.contains(r.index) && held_error.is_none() {
                if r.ok {
                    ok += 1;
                } else {
                    failed += 1;
                }
                if let Err(e) = held.push_line(r.index, r.line) {
                    held_error = Some(e);
                }
            }
        })?;
        if let Some(e) = held_error {
            return Err(e);
        }
        let journal = JournalWriter::new(journal_file, scan.valid_len);
        let tracked = Tracked {
            file,
            len: prefix.valid_len,
            crc: prefix.crc,
            sha: OutputDigest::new(prefix.sha),
        };
        let seals = SealWriter::new(seals_file, prefix.seals_kept);
        let mut w = Self::with(
            path,
            tracked,
            prefix.lines,
            journal,
            seals,
            prefix.sealed_at,
        )?;
        let (carried_ok, previous_failed) = match &carried {
            Some(c) => {
                let taken_again = held.indices().filter(|i| c.has_ok(*i)).count() as u64;
                (c.ok_from(prefix.lines) - taken_again, c.totals().1)
            }
            None => (0, 0),
        };
        ok += carried_ok;
        w.carried = carried;
        w.resumed_held_max = held.max_index();
        w.held = held;
        w.resumed = Resumed {
            ok,
            failed,
            prefix: prefix.lines,
            dropped_output_bytes: prefix.file_len.saturating_sub(prefix.valid_len),
            dropped_journal_bytes: scan.ignored,
            damaged_at: prefix.damaged.then_some((prefix.lines, prefix.valid_len)),
            carried: w.carried.as_ref().map_or(0, |c| c.totals().0),
            previous_failed,
        };
        // Journaled results that continue the prefix go to the file now.
        w.drain()?;
        w.resumed_held_bytes = w.held.bytes();
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lowest index not yet written.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Bytes held in the reorder buffer (the dispatcher stops handing out inputs above a limit).
    /// Results taken back from the journal by `resume` are not counted until the gap before them
    /// is filled: the dispatcher must be able to hand out the inputs that fill it.
    pub fn pending_bytes(&self) -> usize {
        match self.resumed_held_max {
            Some(max) if self.next <= max => {
                self.held.bytes().saturating_sub(self.resumed_held_bytes)
            }
            _ => self.held.bytes(),
        }
    }

    /// What the run being resumed had recorded (all zero for a writer from `create`).
    pub fn resumed(&self) -> Resumed {
        self.resumed
    }

    /// Whether input `index` already has a recorded result: the dispatcher skips those. Cheap
    /// (two comparisons) except for indices among those taken back from the journal.
    pub fn is_done(&self, index: u64) -> bool {
        index < self.next
            || self
                .resumed_held_max
                .is_some_and(|max| index <= max && self.held.contains(index))
            || self.carried.as_ref().is_some_and(|c| c.has_ok(index))
    }

    /// A result: `{"index":N,"output":...}`, with `"source":S` after the index for a `from`
    /// stage.
    pub fn ok(&mut self, index: u64, source: Option<u64>, output: &[u8]) -> io::Result<()> {
        if index == self.next {
            write_ok(&mut self.out, index, source, output)?;
            self.advance()
        } else {
            self.hold(index, output.len() + 48, |line| {
                write_ok(line, index, source, output)
            })
        }
    }

    pub fn error(
        &mut self,
        index: u64,
        source: Option<u64>,
        kind: ErrorKind,
        message: &str,
        attempts: u32,
    ) -> io::Result<()> {
        let record = ErrorRecord {
            index,
            source,
            error: ErrorBody {
                kind,
                message,
                attempts: (attempts > 1).then_some(attempts),
            },
        };
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        if index == self.next {
            self.out.write_all(&line)?;
            self.advance()
        } else {
            self.hold(index, line.len(), |held| {
                held.extend_from_slice(&line);
                Ok(())
            })
        }
    }

    /// Holds the record of `index` (about `size` bytes, written by `write`) until the file
    /// reaches it; the journal has it at once.
    fn hold(
        &mut self,
        index: u64,
        size: usize,
        write: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        if index < self.next {
            return Ok(()); // already recorded
        }
        let line = self.held.push_with(index, size, write)?;
        self.journal.append(line, &self.syncer)
    }

    fn advance(&mut self) -> io::Result<()> {
        self.next += 1;
        self.drain()
    }

    /// Writes the held (and carried) records that now continue the file.
    fn drain(&mut self) -> io::Result<()> {
        loop {
            if let Some(carried) = &mut self.carried {
                if let Some(line) = carried.take(self.next)? {
                    self.out.write_all(line)?;
                    self.held.remove(self.next);
                    self.next += 1;
                    continue;
                }
                // One at a time: a carried record may come up inside a held run.
                let Some(line) = self.held.take_line(self.next) else {
                    break;
                };
                self.out.write_all(&line)?;
                self.next += 1;
                continue;
            }
            let Some((run, len)) = self.held.take_run(self.next) else {
                break;
            };
            let written = self.out.write_all(run.bytes());
            self.held.recycle(run);
            written?;
            self.next += len;
        }
        Ok(())
    }

    /// Hands what was recorded since the last call to the kernel (`write(2)`, so it survives a
    /// crash of the runner); a background thread makes it durable within a second. Cheap when
    /// nothing is new: call it after every batch of results.
    pub fn flush(&mut self) -> io::Result<()> {
        let wrote = !self.out.buffer().is_empty();
        self.out.flush()?;
        let journaled = self.journal.flush(&self.syncer)?;
        if self.held.is_empty() {
            // What the journal held is in the file now: written to the disk once, not twice.
            self.journal.drop_unsynced(&self.syncer)?;
        }
        if self.out.get_ref().len - self.sealed_at >= seals::SEAL_EVERY {
            self.seal()?;
        }
        if wrote || journaled {
            self.syncer.mark_dirty();
        }
        Ok(())
    }

    /// Seals what the file holds now (everything written is flushed: its lines are `next`).
    fn seal(&mut self) -> io::Result<()> {
        let tracked = self.out.get_mut();
        if tracked.len == self.sealed_at {
            return Ok(());
        }
        let crc = std::mem::take(&mut tracked.crc).finalize();
        let seal = Seal {
            offset: tracked.len,
            lines: self.next,
            crc,
        };
        self.seals.append(seal, &self.syncer)?;
        self.sealed_at = seal.offset;
        Ok(())
    }

    /// The stage is over (every input has a record, or it stopped for good: `on_error = "fail"`,
    /// workers that cannot start): writes what is held (after a stop some indices may never
    /// come), makes the file durable and deletes the journal.
    /// Returns the SHA-256 of the finished file, in hex.
    pub fn finish(self) -> io::Result<String> {
        self.finish_with(false).map(|(sha, _)| sha)
    }

    /// As [`OrderedWriter::finish`], but a small output written in one go (under a megabyte:
    /// no seals; never resumed, nothing carried over; nothing journaled that a sync may have
    /// made durable) is made durable on the sync thread instead of before this returns; the
    /// returned [`PendingSync`] tells when.
    /// A stage of a few tasks then does not wait for the disk before the next one starts. The
    /// data reached the kernel: a kill of the runner loses none of it, a power cut can.
    pub fn finish_soon(self) -> io::Result<(String, Option<PendingSync>)> {
        self.finish_with(true)
    }

    fn finish_with(mut self, defer: bool) -> io::Result<(String, Option<PendingSync>)> {
        let defer = defer
            && self.carried.is_none()
            && self.journal.nothing_durable(&self.syncer)
            && self.seals.never_written();
        let mut pending = std::mem::take(&mut self.held).into_lines().peekable();
        let mut carried = self.carried.take();
        loop {
            // The carried records and the held ones, merged in index order.
            let from_carried = match &mut carried {
                Some(c) => c.next_ok(self.next)?,
                None => None,
            };
            let held = pending.peek().map(|(i, _)| *i);
            let carried_first = match (from_carried, held) {
                (Some(c), Some(h)) => c <= h,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if let (true, Some(c)) = (carried_first, from_carried) {
                if held == Some(c) {
                    pending.next(); // carried records win: they stay as they were
                }
                if let Some(line) = carried.as_mut().and_then(|k| k.take(c).transpose()) {
                    self.out.write_all(line?)?;
                }
                self.next = c + 1;
            } else if let Some((h, line)) = pending.next() {
                self.out.write_all(&line)?;
                self.next = h + 1;
            }
        }
        self.out.flush()?;
        if !defer {
            self.out.get_ref().file.sync_all()?;
        }
        // The digest before anything is deleted: should it fail, the stage can still resume.
        let digest = std::mem::replace(
            &mut self.out.get_mut().sha,
            OutputDigest::new(Sha256::new()),
        );
        let sha = hex(&digest.finish()?);
        if let Some(c) = carried {
            c.remove()?;
        }
        // Every journaled record is in the synced file now: the journal's directory entries,
        // deleted just below, need not be made durable first.
        let journal = self.journal.path();
        self.syncer
            .forget_parents(|p| p == journal || Some(p) == journal.parent());
        let pending = if defer {
            // The journal holds nothing durable: it goes without waiting for the sync.
            Some(self.syncer.stop_soon(&self.out.get_ref().file)?)
        } else {
            self.syncer.stop()?;
            None
        };
        // The seals first: removing the journal removes their directory once it is empty.
        self.seals.discard()?;
        self.journal.discard()?;
        self.closed = true;
        Ok((sha, pending))
    }

    /// The stage was interrupted and will be resumed: makes everything recorded durable, keeping
    /// held results in the journal (not in `<stage>.jsonl`, which stays a contiguous prefix).
    pub fn suspend(mut self) -> io::Result<()> {
        self.flush()?;
        // Everything written is sealed, so a resume verifies all of it.
        self.seal()?;
        self.out.get_ref().file.sync_data()?;
        self.journal.sync()?;
        self.syncer.stop()?;
        self.closed = true;
        Ok(())
    }
}

impl Drop for OrderedWriter {
    /// On an error path: what was recorded reaches the kernel, as `suspend` would do.
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.flush();
        }
    }
}

/// The index and kind (`true`: output, `false`: error) of a record line as this module writes
/// it: `{"index":N,"output":...}` or `{"index":N,"error":...}`, with `"source":S` after the
/// index for a `from` stage.
pub(crate) fn parse_record_head(line: &[u8]) -> Option<(u64, bool)> {
    let (index, rest) = number(line.strip_prefix(b"{\"index\":")?)?;
    let rest = match rest.strip_prefix(b",\"source\":") {
        Some(after) => number(after)?.1,
        None => rest,
    };
    if rest.starts_with(b",\"output\":") {
        Some((index, true))
    } else if rest.starts_with(b",\"error\":") {
        Some((index, false))
    } else {
        None
    }
}

/// A decimal `u64` as this module writes them (no sign, no leading zero), and what follows.
fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 || (digits > 1 && bytes[0] == b'0') {
        return None;
    }
    let value: u64 = std::str::from_utf8(&bytes[..digits]).ok()?.parse().ok()?;
    Some((value, &bytes[digits..]))
}

/// The output file as the writer writes it: every byte also goes into the CRC of the segment
/// since the last seal and into the SHA-256 of the whole file.
struct Tracked {
    file: File,
    len: u64,
    crc: crc32fast::Hasher,
    sha: OutputDigest,
}

impl Tracked {
    fn new(file: File) -> Self {
        Self {
            file,
            len: 0,
            crc: crc32fast::Hasher::new(),
            sha: OutputDigest::new(Sha256::new()),
        }
    }
}

impl Write for Tracked {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.crc.update(&buf[..n]);
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A digest in hex.
fn hex(digest: &[u8]) -> String {
    use std::fmt::Write as _;
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What [`verify_prefix`] kept of a `<stage>.jsonl`.
struct VerifiedPrefix {
    lines: u64,
    ok: u64,
    failed: u64,
    /// Bytes kept.
    valid_len: u64,
    file_len: u64,
    /// Seals that hold (the first ones), and the offset of the last of them.
    seals_kept: usize,
    sealed_at: u64,
    /// CRC of the kept bytes after the last kept seal, and SHA-256 of all kept bytes.
    crc: crc32fast::Hasher,
    sha: Sha256,
    /// Something other than a torn end was cut off.
    damaged: bool,
}

/// Where the scan is: what is kept so far.
#[derive(Clone)]
struct Kept {
    lines: u64,
    ok: u64,
    failed: u64,
    len: u64,
    sha: Sha256,
}

/// Finds the prefix of `<stage>.jsonl` that can be trusted. The sealed part is checked segment
/// by segment against its CRC (a segment that does not match is damage: the prefix ends at the
/// seal before it). The rest is checked line by line: each must be a whole record (it ends in
/// a newline, its index is its line number, it holds no NUL byte, what a power cut leaves in
/// unwritten blocks), valid UTF-8 and valid JSON; the first that is not ends the prefix. A line
/// followed by a record out of sequence is dropped too (bytes cut out between two records
/// leave a line that looks whole). One pass, reading each line once.
fn verify_prefix(path: &Path, seals: &[Seal]) -> io::Result<VerifiedPrefix> {
    let file = match File::open(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let file_len = match &file {
        Some(f) => f.metadata()?.len(),
        None => 0,
    };
    let mut kept = Kept {
        lines: 0,
        ok: 0,
        failed: 0,
        len: 0,
        sha: Sha256::new(),
    };
    let result = |kept: Kept, seals_kept: usize, sealed_at: u64, crc, damaged| VerifiedPrefix {
        lines: kept.lines,
        ok: kept.ok,
        failed: kept.failed,
        valid_len: kept.len,
        file_len,
        seals_kept,
        sealed_at,
        crc,
        sha: kept.sha,
        damaged,
    };
    let Some(file) = file else {
        return Ok(result(kept, 0, 0, crc32fast::Hasher::new(), false));
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();

    // The sealed part.
    let mut seals_kept = 0;
    let mut sealed = kept.clone();
    let mut segment = crc32fast::Hasher::new();
    'sealed: for (i, seal) in seals.iter().enumerate() {
        while kept.len < seal.offset {
            line.clear();
            let got = reader.read_until(b'\n', &mut line)? as u64;
            if got == 0 || (!line.ends_with(b"\n") && kept.len + got < seal.offset) {
                // Shorter than sealed, maybe in the middle of a line: the seal reached the
                // disk before the data (a power cut). What is there is checked line by line
                // below.
                break 'sealed;
            }
            let head = parse_record_head(&line).filter(|(index, _)| *index == kept.lines);
            let fits = kept.len + line.len() as u64 <= seal.offset;
            let Some((_, ok)) = head.filter(|_| fits) else {
                return Ok(result(
                    sealed,
                    seals_kept,
                    seal_offset(seals, seals_kept),
                    crc32fast::Hasher::new(),
                    true,
                ));
            };
            segment.update(&line);
            kept.sha.update(&line);
            kept.len += line.len() as u64;
            kept.lines += 1;
            if ok {
                kept.ok += 1;
            } else {
                kept.failed += 1;
            }
        }
        let crc = std::mem::take(&mut segment).finalize();
        if crc != seal.crc || kept.lines != seal.lines {
            return Ok(result(
                sealed,
                seals_kept,
                seal_offset(seals, seals_kept),
                crc32fast::Hasher::new(),
                true,
            ));
        }
        seals_kept = i + 1;
        sealed = kept.clone();
    }
    if kept.len != sealed.len {
        // A partly read segment after the last seal that holds: check it line by line.
        kept = sealed.clone();
        reader.seek(SeekFrom::Start(kept.len))?;
    }
    let sealed_at = seal_offset(seals, seals_kept);

    // The tail, line by line.
    let mut tail_crc = crc32fast::Hasher::new();
    // The last line kept, to drop when a record out of sequence follows it.
    let mut last: Option<(Kept, crc32fast::Hasher)> = None;
    let mut damaged = false;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let head = parse_record_head(&line);
        let whole = line.ends_with(b"}\n") && !line.contains(&0);
        let valid = whole
            && std::str::from_utf8(&line).is_ok()
            && serde_json::from_slice::<serde::de::IgnoredAny>(&line).is_ok();
        match head {
            Some((index, ok)) if index == kept.lines && valid => {
                last = Some((kept.clone(), tail_crc.clone()));
                tail_crc.update(&line);
                kept.sha.update(&line);
                kept.len += line.len() as u64;
                kept.lines += 1;
                if ok {
                    kept.ok += 1;
                } else {
                    kept.failed += 1;
                }
            }
            Some((index, _)) if index != kept.lines && valid => {
                // Whole records out of sequence: something was cut out between them, and
                // the line before may be two halves that happen to parse.
                if let Some((before, crc)) = last.take() {
                    kept = before;
                    tail_crc = crc;
                }
                damaged = true;
                break;
            }
            _ => {
                // A torn last line is what a crash leaves; anything else is damage.
                damaged = !reader.fill_buf()?.is_empty();
                break;
            }
        }
    }
    Ok(result(kept, seals_kept, sealed_at, tail_crc, damaged))
}

/// The offset of the last of the first `kept` seals (0: none).
fn seal_offset(seals: &[Seal], kept: usize) -> u64 {
    kept.checked_sub(1).map_or(0, |i| seals[i].offset)
}

/// Deletes a file; a missing one is fine.
fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes a new directory entry durable (best effort).
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = d.sync_all();
        }
    }
}

/// `fdatasync`s the files of a writer every [`SYNC_EVERY`] while there is new data, off the
/// dispatcher's thread (a sync can take long on a busy disk; the workers must not wait for it).
///
/// The thread outlives its writer: once stopped, it waits for the next writer's start (a run's
/// next stage) instead of exiting, so that a tiny stage does not pay for starting and joining a
/// thread. At most one such thread waits; a writer that finds none starts one.
pub struct Syncer {
    shared: Arc<SyncShared>,
    running: bool,
}

/// How a writer hands its files to the waiting sync thread, if there is one (and which thread
/// that is).
static IDLE_SYNC_THREAD: Mutex<Option<(thread::ThreadId, mpsc::Sender<Arc<SyncShared>>)>> =
    Mutex::new(None);

/// A sync thread no writer took over for this long exits.
const SYNC_THREAD_IDLE_LIMIT: Duration = Duration::from_secs(30);

struct SyncShared {
    state: Mutex<SyncState>,
    wake: Condvar,
    dirty: AtomicBool,
    /// Sync passes started (each may make every byte written before it durable).
    passes: std::sync::atomic::AtomicU64,
}

struct SyncState {
    /// Duplicates of the writer's file descriptors.
    files: Vec<Arc<File>>,
    /// Files whose directory entry is to be made durable once.
    parents: Vec<PathBuf>,
    /// The same, with the next pass over the files' data (or when the syncer stops).
    pass_parents: Vec<PathBuf>,
    stop: bool,
    /// With `stop`: the last pass syncs the files' data too (see [`Syncer::stop_soon`]).
    sync_at_stop: bool,
    /// What that last sync failed with.
    error: Option<io::Error>,
    /// The thread is done with this writer (its last pass is over, its files closed).
    done: bool,
}

impl Syncer {
    pub(crate) fn start() -> io::Result<Self> {
        let shared = Arc::new(SyncShared {
            state: Mutex::new(SyncState {
                files: Vec::new(),
                parents: Vec::new(),
                pass_parents: Vec::new(),
                stop: false,
                sync_at_stop: false,
                error: None,
                done: false,
            }),
            wake: Condvar::new(),
            dirty: AtomicBool::new(false),
            passes: std::sync::atomic::AtomicU64::new(0),
        });
        let idle = lock(&IDLE_SYNC_THREAD).take();
        if idle.is_none_or(|(_, thread)| thread.send(Arc::clone(&shared)).is_err()) {
            let first = Arc::clone(&shared);
            thread::Builder::new()
                .name("loky-run-sync".into())
                .spawn(move || serve(first))?;
        }
        Ok(Self {
            shared,
            running: true,
        })
    }

    /// Adds a file to sync (a duplicate of its descriptor).
    pub(crate) fn add(&self, file: &File) -> io::Result<()> {
        let dup = Arc::new(file.try_clone()?);
        self.lock().files.push(dup);
        Ok(())
    }

    /// Makes `path`'s directory entry durable soon, on the syncer's thread (and at the latest
    /// when the syncer stops).
    pub(crate) fn sync_parent_once(&self, path: &Path) {
        self.lock().parents.push(path.to_owned());
        self.shared.wake.notify_all();
    }

    /// Makes `path`'s directory entry durable with the next pass over the data (just before
    /// it), when its file's data becomes durable too; at the latest when the syncer stops.
    pub(crate) fn sync_parent_with_data(&self, path: &Path) {
        self.lock().pass_parents.push(path.to_owned());
    }

    /// Drops the directory-entry syncs asked for `path`s that `unneeded` says are, if the
    /// thread has not started them.
    pub(crate) fn forget_parents(&self, unneeded: impl Fn(&Path) -> bool) {
        let mut state = self.lock();
        state.parents.retain(|p| !unneeded(p));
        state.pass_parents.retain(|p| !unneeded(p));
    }

    /// How many sync passes have started.
    pub(crate) fn passes(&self) -> u64 {
        self.shared.passes.load(Ordering::Acquire)
    }

    /// Something was written since the last sync.
    pub(crate) fn mark_dirty(&self) {
        self.shared.dirty.store(true, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        lock(&self.shared.state)
    }

    /// Waits for the thread's last pass (and the directory entries still to sync). Returns
    /// the first error a pass met: the kernel reports a failed writeback once per open file,
    /// and a pass on a duplicate of the writer's descriptor is the one that hears it.
    pub(crate) fn stop(&mut self) -> io::Result<()> {
        if !std::mem::take(&mut self.running) {
            return Ok(());
        }
        {
            let mut state = self.lock();
            state.stop = true;
            self.shared.wake.notify_all();
        }
        self.shared.wait_done()
    }

    /// Stops without waiting: the thread's last pass syncs the data of `file` (of the writer's
    /// files, the only one still needed) and the directory entries still to sync, and the
    /// returned handle tells when that is over.
    pub(crate) fn stop_soon(&mut self, file: &File) -> io::Result<PendingSync> {
        let file = Arc::new(file.try_clone()?);
        let shared = Arc::clone(&self.shared);
        if std::mem::take(&mut self.running) {
            let mut state = self.lock();
            state.files = vec![file];
            state.stop = true;
            state.sync_at_stop = true;
            self.shared.wake.notify_all();
        }
        Ok(PendingSync { shared })
    }
}

/// A finished output being made durable on the sync thread ([`OrderedWriter::finish_soon`]).
pub struct PendingSync {
    shared: Arc<SyncShared>,
}

impl PendingSync {
    /// The output is durable (or its sync failed: [`PendingSync::wait`] says how).
    pub fn is_done(&self) -> bool {
        lock(&self.shared.state).done
    }

    /// Waits until the output is durable, as long as the disk takes (as `finish` would).
    pub fn wait(self) -> io::Result<()> {
        self.shared.wait_done()
    }
}

impl SyncShared {
    /// Waits until the thread is done with the writer; the first error its passes met.
    fn wait_done(&self) -> io::Result<()> {
        let mut state = lock(&self.state);
        while !state.done {
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.error.take().map_or(Ok(()), Err)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The sync thread: serves one writer after another, waiting for the next while it is the
/// idle one (see [`Syncer`]), at most [`SYNC_THREAD_IDLE_LIMIT`].
fn serve(first: Arc<SyncShared>) {
    let me = thread::current().id();
    let mut job = first;
    loop {
        let next = {
            // Marks the writer done even if a sync panics, so that `stop` never waits forever.
            let done = Done(&job);
            sync_loop(&job);
            // Offered before the writer hears it is done: its run's next stage finds it.
            let mut idle = lock(&IDLE_SYNC_THREAD);
            let next = idle.is_none().then(|| {
                let (tx, rx) = mpsc::channel();
                *idle = Some((me, tx));
                rx
            });
            drop(idle);
            drop(done);
            next
        };
        drop(job);
        // None: another thread waits already.
        let Some(next) = next else { return };
        job = match next.recv_timeout(SYNC_THREAD_IDLE_LIMIT) {
            Ok(job) => job,
            Err(_) => {
                let mut idle = lock(&IDLE_SYNC_THREAD);
                if idle.as_ref().is_some_and(|(id, _)| *id == me) {
                    *idle = None;
                    return; // nobody can send to it any more
                }
                drop(idle);
                // A writer took it just now: its job is on the way (or it gave up: gone).
                match next.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            }
        };
    }
}

/// Tells the writer its thread is done with it (its duplicated descriptors closed).
struct Done<'a>(&'a SyncShared);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.files.clear();
        state.done = true;
        self.0.wake.notify_all();
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        let _ = self.stop(); // an error path already: the error that led here is reported
    }
}

fn sync_loop(shared: &SyncShared) {
    let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        state = shared
            .wake
            .wait_timeout_while(state, SYNC_EVERY, |s| !s.stop && s.parents.is_empty())
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        if !state.parents.is_empty() {
            let parents = std::mem::take(&mut state.parents);
            drop(state);
            for p in &parents {
                sync_parent(p);
            }
            state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        if state.stop {
            let parents = std::mem::take(&mut state.pass_parents);
            let files = state.sync_at_stop.then(|| state.files.clone());
            drop(state);
            for p in &parents {
                sync_parent(p);
            }
            let mut failed = None;
            for f in files.iter().flatten() {
                if let Err(e) = f.sync_data() {
                    failed.get_or_insert(e);
                }
            }
            if let Some(e) = failed {
                lock(&shared.state).error.get_or_insert(e);
            }
            return;
        }
        let parents = std::mem::take(&mut state.pass_parents);
        if !shared.dirty.swap(false, Ordering::AcqRel) && parents.is_empty() {
            continue;
        }
        let files = state.files.clone();
        // Counted before syncing: bytes written before this may now reach the disk.
        shared.passes.fetch_add(1, Ordering::AcqRel);
        drop(state);
        for p in &parents {
            sync_parent(p);
        }
        // An error is kept for the end of the stage: the kernel tells it only once, here.
        let mut failed = None;
        for f in &files {
            if let Err(e) = f.sync_data() {
                failed.get_or_insert(e);
            }
        }
        state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = failed {
            state.error.get_or_insert(e);
        }
    }
}

fn write_ok(w: &mut impl Write, index: u64, source: Option<u64>, output: &[u8]) -> io::Result<()> {
    let mut digits = itoa::Buffer::new();
    w.write_all(b"{\"index\":")?;
    w.write_all(digits.format(index).as_bytes())?;
    if let Some(source) = source {
        w.write_all(b",\"source\":")?;
        w.write_all(digits.format(source).as_bytes())?;
    }
    w.write_all(b",\"output\":")?;
    w.write_all(output)?;
    w.write_all(b"}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_results_are_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let mut w = OrderedWriter::create(&path).unwrap();
        w.ok(2, None, b"4").unwrap();
        w.error(1, None, ErrorKind::Panic, "boom \"x\"", 1).unwrap();
        assert_eq!(w.next_index(), 0);
        assert!(w.pending_bytes() > 0);
        w.ok(0, None, b"0").unwrap();
        assert_eq!(w.next_index(), 3);
        assert_eq!(w.pending_bytes(), 0);
        w.error(3, None, ErrorKind::Crashed, "killed by SIGSEGV", 3)
            .unwrap();
        w.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"index\":0,\"output\":0}\n\
             {\"index\":1,\"error\":{\"kind\":\"panic\",\"message\":\"boom \\\"x\\\"\"}}\n\
             {\"index\":2,\"output\":4}\n\
             {\"index\":3,\"error\":{\"kind\":\"crashed\",\"message\":\"killed by SIGSEGV\",\"attempts\":3}}\n"
        );
    }

    fn lines(range: std::ops::Range<u64>) -> String {
        range
            .map(|i| format!("{{\"index\":{i},\"output\":{}}}\n", i * i))
            .collect()
    }

    /// What a `kill -9` right after a flush leaves: no destructor runs.
    fn crash(w: OrderedWriter) {
        std::mem::forget(w);
    }

    #[test]
    fn a_resumed_writer_continues_where_a_crashed_one_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let mut w = OrderedWriter::create(&path).unwrap();
        w.ok(0, None, b"0").unwrap();
        w.ok(3, None, b"9").unwrap();
        w.error(2, None, ErrorKind::TaskError, "two", 1).unwrap();
        w.ok(5, None, b"25").unwrap();
        w.flush().unwrap();
        w.ok(6, None, b"36").unwrap(); // not flushed: lost with the crash
        crash(w);
        assert!(journal_path(&path).exists());

        let mut w = OrderedWriter::resume(&path).unwrap();
        let r = w.resumed();
        assert_eq!((r.ok, r.failed, r.prefix), (3, 1, 1));
        assert_eq!(w.next_index(), 1);
        assert_eq!(w.pending_bytes(), 0, "the dispatcher may fill the gap");
        let done: Vec<bool> = (0..8).map(|i| w.is_done(i)).collect();
        assert_eq!(done, [true, false, true, true, false, true, false, false]);
        // Held results stay in the journal across a second crash and resume.
        w.ok(4, None, b"16").unwrap();
        w.flush().unwrap();
        crash(w);
        let mut w = OrderedWriter::resume(&path).unwrap();
        assert_eq!(w.resumed().records(), 5);
        assert!(w.is_done(4) && !w.is_done(1) && !w.is_done(6));
        w.ok(1, None, b"1").unwrap();
        assert_eq!(w.next_index(), 6);
        w.ok(6, None, b"36").unwrap();
        w.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = lines(0..7).replace(
            "{\"index\":2,\"output\":4}",
            "{\"index\":2,\"error\":{\"kind\":\"task_error\",\"message\":\"two\"}}",
        );
        assert_eq!(text, expected);
        assert!(!journal_path(&path).exists(), "finish deletes the journal");
        assert!(!dir.path().join(JOURNAL_DIR).exists());
    }

    #[test]
    fn torn_and_invalid_output_tails_are_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let good = lines(0..3);
        for (tail, kept) in [
            ("{\"index\":3,\"out", 3),         // torn mid-line
            ("{\"index\":3,\"output\":9}", 3), // no newline: torn
            ("\0\0\0\0\0\0\n", 3),             // a block of zeros
            // Not the next index: bytes were cut out, the line before may be two halves.
            ("{\"index\":4,\"output\":16}\n", 2),
            ("{\"index\":3,\"output\":[}\n", 3), // the last line is not JSON
            ("{\"index\":3,\"output\":9}\n", 4), // fine
        ] {
            std::fs::write(&path, format!("{good}{tail}")).unwrap();
            let w = OrderedWriter::resume(&path).unwrap();
            assert_eq!(w.resumed().prefix, kept, "{tail:?}");
            assert_eq!(w.next_index(), kept);
            drop(w);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), lines(0..kept));
        }
        // A NUL inside a line that otherwise looks whole.
        std::fs::write(
            &path,
            format!("{good}{{\"index\":3,\"output\":\"a\0\"}}\n{}", lines(4..5)),
        )
        .unwrap();
        assert_eq!(OrderedWriter::resume(&path).unwrap().resumed().prefix, 3);
        // Nothing at all: an empty prefix.
        std::fs::remove_file(&path).unwrap();
        let w = OrderedWriter::resume(&path).unwrap();
        assert_eq!(w.resumed(), Resumed::default());
        assert!(!w.is_done(0));
    }

    /// A writer's output after `n` results, flushed every 1,000 (so sealed every ~1 MiB when
    /// the records are large), then crashed.
    fn written(path: &Path, n: u64, pad: usize) -> String {
        let mut w = OrderedWriter::create(path).unwrap();
        let value = format!("\"{}\"", "x".repeat(pad));
        for i in 0..n {
            w.ok(i, None, value.as_bytes()).unwrap();
            if i % 1_000 == 999 {
                w.flush().unwrap();
            }
        }
        w.flush().unwrap();
        crash(w);
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn a_changed_byte_in_a_sealed_part_is_damage_and_cut_back_to_the_seal_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        // 5,000 records of ~1 KiB: about 5 MiB, a seal every ~2 MiB (flushes every ~1 MB).
        let text = written(&path, 5_000, 1_000);
        let seals = seals::read(&seals::seals_path(&path)).unwrap();
        assert!(seals.len() >= 2, "{seals:?}");
        // One letter changed inside line 2,500 (sealed): still valid JSON, a wrong value.
        let at = text.match_indices('\n').nth(2_499).unwrap().0 + 30;
        let mut bytes = text.clone().into_bytes();
        bytes[at] = b'y';
        std::fs::write(&path, &bytes).unwrap();
        let w = OrderedWriter::resume(&path).unwrap();
        let r = w.resumed();
        let (line, byte) = r.damaged_at.expect("damage found");
        let seal = seals.iter().rev().find(|s| s.offset <= at as u64).unwrap();
        assert_eq!((line, byte), (seal.lines, seal.offset));
        assert!(line <= 2_500);
        assert_eq!(w.next_index(), line);
        drop(w);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            &text.as_bytes()[..byte as usize],
            "cut back to a prefix of what was written"
        );
    }

    #[test]
    fn unsealed_damage_in_the_middle_is_found_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let text = written(&path, 100, 10); // small: nothing sealed yet
        assert!(seals::read(&seals::seals_path(&path)).unwrap().is_empty());
        for (damage, kept) in [
            // Line 40 made invalid JSON (the head and the end still look right).
            (
                text.replacen(
                    "{\"index\":40,\"output\":\"",
                    "{\"index\":40,\"output\":\"\"",
                    1,
                ),
                40,
            ),
            // Lines 50..60 cut out: line 49 is whole, line 60 is out of sequence; 49 goes too.
            (
                {
                    let lines: Vec<&str> = text.lines().collect();
                    let mut t = lines[..50].join("\n");
                    t.push('\n');
                    t.push_str(&lines[60..].join("\n"));
                    t.push('\n');
                    t
                },
                49,
            ),
            // Invalid UTF-8 in the middle of line 70.
            (
                text.replacen(
                    "{\"index\":70,\"output\":\"x",
                    "{\"index\":70,\"output\":\"\u{fffd}",
                    1,
                ),
                100,
            ),
        ] {
            std::fs::write(&path, &damage).unwrap();
            let w = OrderedWriter::resume(&path).unwrap();
            assert_eq!(w.next_index(), kept);
            assert_eq!(w.resumed().damaged_at.is_some(), kept < 100);
            drop(w);
            let mut bytes = damage.into_bytes();
            bytes[10] = 0xff; // invalid UTF-8 in line 0
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(OrderedWriter::resume(&path).unwrap().next_index(), 0);
            std::fs::write(&path, &text).unwrap();
        }
    }

    #[test]
    fn finish_gives_the_sha256_of_the_file_across_a_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        written(&path, 3_000, 1_000);
        let mut w = OrderedWriter::resume(&path).unwrap();
        assert_eq!(w.next_index(), 3_000);
        w.ok(3_000, None, b"1").unwrap();
        w.flush().unwrap();
        crash(w);
        let mut w = OrderedWriter::resume(&path).unwrap();
        assert_eq!(w.resumed().damaged_at, None, "its own seals verify");
        w.ok(3_001, None, b"2").unwrap();
        let sha = w.finish().unwrap();
        assert_eq!(sha, crate::manifest::sha256_file(&path).unwrap());
        assert!(
            !seals::seals_path(&path).exists(),
            "finish deletes the seals"
        );
    }

    #[test]
    fn finish_soon_leaves_the_sync_of_a_small_fresh_output_to_the_sync_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let mut w = OrderedWriter::create(&path).unwrap();
        w.ok(1, None, b"1").unwrap(); // held in memory only: no journal
        w.ok(0, None, b"0").unwrap();
        let (sha, pending) = w.finish_soon().unwrap();
        let pending = pending.expect("a small fresh output is synced later");
        pending.wait().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"index\":0,\"output\":0}\n{\"index\":1,\"output\":1}\n"
        );
        assert_eq!(sha, crate::manifest::sha256_file(&path).unwrap());

        // Journaled, but with no sync pass since: the journal is deleted, the sync deferred.
        let mut w = OrderedWriter::create(&path).unwrap();
        w.ok(1, None, b"1").unwrap();
        w.flush().unwrap();
        assert!(journal_path(&path).exists());
        w.ok(0, None, b"0").unwrap();
        let (_, pending) = w.finish_soon().unwrap();
        assert!(!journal_path(&path).exists());
        pending
            .expect("nothing durable was journaled")
            .wait()
            .unwrap();

        // What a sync may have made durable in the journal, seals or an earlier run's records
        // wait for the output's sync.
        let mut w = OrderedWriter::create(&path).unwrap();
        w.ok(1, None, b"1").unwrap();
        w.flush().unwrap();
        let passes = w.syncer.passes();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while w.syncer.passes() == passes {
            assert!(std::time::Instant::now() < deadline, "no sync pass in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        w.ok(0, None, b"0").unwrap();
        assert!(
            w.finish_soon().unwrap().1.is_none(),
            "journaled, then synced"
        );
        written(&path, 3_000, 1_000);
        let w = OrderedWriter::resume(&path).unwrap();
        assert!(w.finish_soon().unwrap().1.is_none(), "resumed, sealed");
    }

    #[test]
    fn pending_syncs_of_stages_one_after_another_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let pending: Vec<PendingSync> = (0..20)
            .map(|i| {
                let mut w = OrderedWriter::create(&dir.path().join(format!("{i}.jsonl"))).unwrap();
                w.ok(0, None, b"0").unwrap();
                w.finish_soon().unwrap().1.unwrap()
            })
            .collect();
        for p in pending {
            p.wait().unwrap();
        }
    }

    #[test]
    fn journal_records_below_the_prefix_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let mut w = OrderedWriter::create(&path).unwrap();
        w.ok(1, None, b"1").unwrap(); // held and journaled, then written in order
        w.ok(0, None, b"0").unwrap();
        w.ok(3, None, b"9").unwrap();
        w.flush().unwrap();
        crash(w);
        let w = OrderedWriter::resume(&path).unwrap();
        let r = w.resumed();
        assert_eq!((r.ok, r.prefix), (3, 2));
        assert!(w.is_done(3) && !w.is_done(2));
        // Index 3 waits for 2; once 2 comes, both are written.
        let mut w = w;
        w.ok(2, None, b"4").unwrap();
        assert_eq!(w.next_index(), 4);
        w.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), lines(0..4));
    }

    /// A finished output with failures at 1 and 4, and no record for 5 (a stopped stage);
    /// the ok records are spaced oddly so that a byte-for-byte copy shows.
    const PREVIOUS: &str = "{\"index\":0,\"output\": [0, \"a\"]}\n\
        {\"index\":1,\"error\":{\"kind\":\"crashed\",\"message\":\"x\"}}\n\
        {\"index\":2,\"output\": 2 }\n\
        {\"index\":3,\"output\":3}\n\
        {\"index\":4,\"error\":{\"kind\":\"timeout\",\"message\":\"y\"}}\n\
        {\"index\":6,\"output\":6}\n";

    fn retried_expected() -> String {
        PREVIOUS
            .replace(
                "{\"index\":1,\"error\":{\"kind\":\"crashed\",\"message\":\"x\"}}",
                "{\"index\":1,\"output\":1}",
            )
            .replace("{\"index\":6,", "{\"index\":5,\"output\":5}\n{\"index\":6,")
    }

    #[test]
    fn a_retry_reruns_what_has_no_ok_record_and_copies_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        std::fs::write(&path, PREVIOUS).unwrap();
        let sha = crate::manifest::sha256_file(&path).unwrap();
        let mut w = OrderedWriter::retry(&path, Some(&sha)).unwrap();
        let r = w.resumed();
        assert_eq!((r.ok, r.failed, r.carried, r.previous_failed), (4, 0, 4, 2));
        assert_eq!(w.next_index(), 1, "index 0 is copied at once");
        let done: Vec<bool> = (0..8).map(|i| w.is_done(i)).collect();
        assert_eq!(done, [true, false, true, true, false, false, true, false]);
        w.ok(5, None, b"5").unwrap();
        w.ok(1, None, b"1").unwrap();
        assert_eq!(
            w.next_index(),
            4,
            "2 and 3 follow 1 from the previous output"
        );
        w.error(4, None, ErrorKind::Timeout, "y", 1).unwrap();
        assert_eq!(w.next_index(), 7);
        w.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), retried_expected());
        assert!(!carried::previous_path(&path).exists());
        assert!(!dir.path().join(JOURNAL_DIR).exists());
    }

    #[test]
    fn an_interrupted_retry_continues_and_a_stopped_one_keeps_every_ok_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        std::fs::write(&path, PREVIOUS).unwrap();
        let mut w = OrderedWriter::retry(&path, None).unwrap();
        w.ok(5, None, b"5").unwrap(); // held: journaled
        w.ok(1, None, b"1").unwrap();
        w.flush().unwrap();
        crash(w);
        assert!(carried::previous_path(&path).exists());
        // `--resume` finds the retry by its previous file.
        let w = OrderedWriter::resume(&path).unwrap();
        let r = w.resumed();
        assert_eq!((r.ok, r.failed, r.prefix), (6, 0, 4));
        assert_eq!(w.next_index(), 4);
        assert!(w.is_done(5) && w.is_done(6) && !w.is_done(4));
        crash(w);
        // So does `--retry-failed` again; then the stage stops before 4 has a record.
        let w = OrderedWriter::retry(&path, None).unwrap();
        assert_eq!(w.resumed().ok, 6);
        w.finish().unwrap();
        let expected: String = retried_expected()
            .lines()
            .filter(|l| !l.starts_with("{\"index\":4,"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    }

    #[test]
    fn a_retry_refuses_a_damaged_or_changed_previous_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        std::fs::write(&path, PREVIOUS).unwrap();
        let err = OrderedWriter::retry(&path, Some("00")).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("SHA-256"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            PREVIOUS,
            "left in place"
        );
        for (damaged, line) in [
            (PREVIOUS.replace("{\"index\":3,", "{\"index\":1,"), 4),
            (
                PREVIOUS.replace("{\"index\":3,\"output\":3}", "{\"index\":3,\"outp"),
                4,
            ),
        ] {
            std::fs::write(&path, damaged).unwrap();
            let err = OrderedWriter::retry(&path, None).err().unwrap();
            assert!(err.to_string().contains(&format!("line {line} ")), "{err}");
            assert!(path.exists() && !dir.path().join(JOURNAL_DIR).exists());
        }
    }

    #[test]
    fn a_journal_no_sync_has_seen_is_emptied_once_its_records_are_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let big = format!("\"{}\"", "x".repeat(300 << 10));
        let journal_len = |p: &Path| std::fs::metadata(journal_path(p)).map_or(0, |m| m.len());
        let mut w = OrderedWriter::create(&path).unwrap();
        w.ok(1, None, big.as_bytes()).unwrap();
        w.flush().unwrap();
        assert!(journal_len(&path) > 300 << 10, "held: journaled");
        w.ok(0, None, b"0").unwrap();
        w.flush().unwrap();
        if journal_len(&path) == journal::MAGIC.len() as u64 {
            // Emptied: a kill now loses nothing, the file holds both.
            crash(w);
            let w = OrderedWriter::resume(&path).unwrap();
            assert_eq!((w.resumed().prefix, w.next_index()), (2, 2));
            w.finish().unwrap();
        } else {
            // A sync pass started in between (a loaded machine): the journal stays, as it must.
            w.finish().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"index\":0,\"output\":0}\n{\"index\":1,"));

        // Once a sync may have made the journal durable, it is kept until the stage ends.
        let path = dir.path().join("t.jsonl");
        let mut w = OrderedWriter::create(&path).unwrap();
        w.ok(1, None, big.as_bytes()).unwrap();
        w.flush().unwrap();
        let before = w.syncer.passes();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while w.syncer.passes() == before {
            assert!(
                std::time::Instant::now() < deadline,
                "no sync pass within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        w.ok(0, None, b"0").unwrap();
        w.flush().unwrap();
        assert!(
            journal_len(&path) > 300 << 10,
            "synced frames are not dropped"
        );
        // ... until a whole sync pass has run with the records in the file.
        let settled = w.syncer.passes();
        let mut next = 2;
        while w.syncer.passes() < settled + 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "no sync passes within 30 s"
            );
            w.ok(next, None, b"1").unwrap(); // in order: something for the syncer to sync
            next += 1;
            w.flush().unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        w.flush().unwrap();
        assert_eq!(
            journal_len(&path),
            journal::MAGIC.len() as u64,
            "then emptied"
        );
        w.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"index\":0,\"output\":0}\n{\"index\":1,"));
    }

    #[test]
    fn create_discards_an_old_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let mut w = OrderedWriter::create(&path).unwrap();
        w.ok(1, None, b"1").unwrap();
        w.suspend().unwrap();
        assert!(journal_path(&path).exists(), "suspend keeps the journal");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        let w = OrderedWriter::create(&path).unwrap();
        assert!(!journal_path(&path).exists());
        drop(w);
        let w = OrderedWriter::resume(&path).unwrap();
        assert_eq!(w.resumed().records(), 0);
    }

    #[test]
    fn a_finished_stage_leaves_no_journal_directory_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let mut w = OrderedWriter::create(&path).unwrap();
        w.ok(1, None, b"1").unwrap(); // held: journaled
        w.flush().unwrap();
        assert!(journal_path(&path).exists());
        w.ok(0, None, b"0").unwrap();
        w.finish().unwrap();
        assert!(!dir.path().join(JOURNAL_DIR).exists());
        // Nothing journaled: nothing created, nothing to delete.
        let mut w = OrderedWriter::create(&path).unwrap();
        w.ok(0, None, b"0").unwrap();
        w.finish().unwrap();
        assert!(!dir.path().join(JOURNAL_DIR).exists());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"index\":0,\"output\":0}\n"
        );
    }

    #[test]
    fn syncers_one_after_another_and_at_once_all_stop() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        for _ in 0..3 {
            let mut s = Syncer::start().unwrap();
            s.add(&file).unwrap();
            s.mark_dirty();
            s.sync_parent_once(&dir.path().join("f"));
            s.stop().unwrap();
            s.stop().unwrap(); // a second stop is a no-op
        }
        let at_once: Vec<Syncer> = (0..3).map(|_| Syncer::start().unwrap()).collect();
        drop(at_once); // dropping stops them
        let s = Syncer::start().unwrap();
        s.sync_parent_with_data(&dir.path().join("f"));
        s.sync_parent_with_data(&dir.path().join("g"));
        s.forget_parents(|p| p.ends_with("g"));
        assert_eq!(s.lock().pass_parents, vec![dir.path().join("f")]);
    }

    #[test]
    fn record_heads() {
        assert_eq!(
            parse_record_head(b"{\"index\":12,\"output\":1}\n"),
            Some((12, true))
        );
        assert_eq!(
            parse_record_head(b"{\"index\":0,\"error\":{}}\n"),
            Some((0, false))
        );
        for bad in [
            &b"{\"index\":,\"output\":1}"[..],
            b"{\"index\":01,\"output\":1}",
            b"{\"index\":1,\"outputs\":1}",
            b"{\"index\":99999999999999999999999,\"output\":1}",
            b"",
        ] {
            assert_eq!(
                parse_record_head(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            journal_path(Path::new("/o/my.stage.jsonl")),
            Path::new("/o/.journal/my.stage.log")
        );
    }
}

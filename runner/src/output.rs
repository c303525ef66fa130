//! Stage results: `<output_dir>/<stage>.jsonl`, one line per input, in input order, recorded
//! durably as they complete.
//!
//! Results arrive in completion order; a small reorder buffer holds those that are ahead of the
//! next index to write. The dispatcher bounds that buffer (it stops handing out inputs far ahead
//! of the write position), so memory stays flat whatever the number of tasks.
//!
//! Durability: `<stage>.jsonl` only ever holds a contiguous prefix (line k is the record of input
//! k), so it is the journal of that prefix; every result held in the reorder buffer is also
//! appended to a side journal (see [`journal`]). [`OrderedWriter::flush`], called by the
//! dispatcher after each batch of results, writes both out (`write(2)`: a `kill -9` of the runner
//! loses nothing flushed); a background thread `fdatasync`s them every second, and the end of a
//! stage syncs them at once. [`OrderedWriter::resume`] rebuilds a writer from what an interrupted
//! run left: the valid prefix of `<stage>.jsonl` (a torn last line is cut off) plus the journaled
//! results beyond it (a torn last frame is ignored).

pub mod journal;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde::Serialize;

use journal::JournalWriter;

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
}

impl Resumed {
    pub fn records(&self) -> u64 {
        self.ok + self.failed
    }
}

pub struct OrderedWriter {
    path: PathBuf,
    out: BufWriter<File>,
    /// The next index to write.
    next: u64,
    pending: BTreeMap<u64, Vec<u8>>,
    pending_bytes: usize,
    journal: JournalWriter,
    syncer: Syncer,
    resumed: Resumed,
    /// The highest index taken from the journal when resuming (`is_done` looks below it).
    resumed_held_max: Option<u64>,
    /// Bytes of the results taken from the journal that wait for a gap before them.
    resumed_held_bytes: usize,
    /// `finish` or `suspend` ran.
    closed: bool,
}

impl OrderedWriter {
    /// Starts `<stage>.jsonl` anew (and deletes a journal an earlier run may have left).
    pub fn create(path: &Path) -> io::Result<Self> {
        let journal = journal_path(path);
        journal::remove(&journal)?;
        let file = File::create(path)?;
        let writer = Self::with(path, file, 0, JournalWriter::new(journal, 0))?;
        // The new directory entry is made durable off the critical path (the syncer's first
        // pass); `finish` waits for it.
        writer.syncer.sync_parent_once(path);
        Ok(writer)
    }

    fn with(path: &Path, file: File, next: u64, journal: JournalWriter) -> io::Result<Self> {
        let syncer = Syncer::start()?;
        syncer.add(&file)?;
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::with_capacity(1 << 16, file),
            next,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            journal,
            syncer,
            resumed: Resumed::default(),
            resumed_held_max: None,
            resumed_held_bytes: 0,
            closed: false,
        })
    }

    /// Continues the `<stage>.jsonl` of an interrupted run: keeps its valid prefix (cutting off a
    /// torn or invalid tail) and takes the journaled results beyond it back into the reorder
    /// buffer. A missing file is an empty prefix. See [`OrderedWriter::resumed`] and
    /// [`OrderedWriter::is_done`].
    pub fn resume(path: &Path) -> io::Result<Self> {
        let prefix = scan_prefix(path)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.set_len(prefix.valid_len)?;
        file.seek(SeekFrom::Start(prefix.valid_len))?;
        sync_parent(path);

        let journal_file = journal_path(path);
        let mut pending = BTreeMap::new();
        let mut pending_bytes = 0;
        let (mut ok, mut failed) = (prefix.ok, prefix.failed);
        let scan = journal::read(&journal_file, |r| {
            if r.index >= prefix.lines && !pending.contains_key(&r.index) {
                if r.ok {
                    ok += 1;
                } else {
                    failed += 1;
                }
                pending_bytes += r.line.len();
                pending.insert(r.index, r.line.to_vec());
            }
        })?;
        let journal = JournalWriter::new(journal_file, scan.valid_len);
        let mut w = Self::with(path, file, prefix.lines, journal)?;
        w.resumed_held_max = pending.last_key_value().map(|(k, _)| *k);
        w.pending = pending;
        w.pending_bytes = pending_bytes;
        w.resumed = Resumed {
            ok,
            failed,
            prefix: prefix.lines,
            dropped_output_bytes: prefix.file_len.saturating_sub(prefix.valid_len),
            dropped_journal_bytes: scan.ignored,
        };
        // Journaled results that continue the prefix go to the file now.
        w.drain()?;
        w.resumed_held_bytes = w.pending_bytes;
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
                self.pending_bytes.saturating_sub(self.resumed_held_bytes)
            }
            _ => self.pending_bytes,
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
                .is_some_and(|max| index <= max && self.pending.contains_key(&index))
    }

    pub fn ok(&mut self, index: u64, output: &[u8]) -> io::Result<()> {
        if index == self.next {
            write_ok(&mut self.out, index, output)?;
            self.advance()
        } else {
            let mut line = Vec::with_capacity(output.len() + 32);
            write_ok(&mut line, index, output)?;
            self.hold(index, line)
        }
    }

    pub fn error(
        &mut self,
        index: u64,
        kind: ErrorKind,
        message: &str,
        attempts: u32,
    ) -> io::Result<()> {
        let record = ErrorRecord {
            index,
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
            self.hold(index, line)
        }
    }

    fn hold(&mut self, index: u64, line: Vec<u8>) -> io::Result<()> {
        if index < self.next {
            return Ok(()); // already recorded
        }
        self.journal.append(&line, &self.syncer)?;
        self.pending_bytes += line.len();
        if let Some(old) = self.pending.insert(index, line) {
            self.pending_bytes -= old.len();
        }
        Ok(())
    }

    fn advance(&mut self) -> io::Result<()> {
        self.next += 1;
        self.drain()
    }

    /// Writes the held records that now continue the file.
    fn drain(&mut self) -> io::Result<()> {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.next {
                break;
            }
            let line = entry.remove();
            self.pending_bytes -= line.len();
            self.out.write_all(&line)?;
            self.next += 1;
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
        if wrote || journaled {
            self.syncer.mark_dirty();
        }
        Ok(())
    }

    /// The stage is over (every input has a record, or it stopped for good: `on_error = "fail"`,
    /// workers that cannot start): writes what is held (after a stop some indices may never
    /// come), makes the file durable and deletes the journal.
    pub fn finish(mut self) -> io::Result<()> {
        for (_, line) in std::mem::take(&mut self.pending) {
            self.out.write_all(&line)?;
        }
        self.pending_bytes = 0;
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        self.syncer.stop();
        self.journal.discard()?;
        self.closed = true;
        Ok(())
    }

    /// The stage was interrupted and will be resumed: makes everything recorded durable, keeping
    /// held results in the journal (not in `<stage>.jsonl`, which stays a contiguous prefix).
    pub fn suspend(mut self) -> io::Result<()> {
        self.flush()?;
        self.out.get_ref().sync_data()?;
        self.journal.sync()?;
        self.syncer.stop();
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
/// it: `{"index":N,"output":...}` or `{"index":N,"error":...}`.
pub(crate) fn parse_record_head(line: &[u8]) -> Option<(u64, bool)> {
    let rest = line.strip_prefix(b"{\"index\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let index: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = &rest[digits..];
    if rest.starts_with(b",\"output\":") {
        Some((index, true))
    } else if rest.starts_with(b",\"error\":") {
        Some((index, false))
    } else {
        None
    }
}

/// The valid prefix of a `<stage>.jsonl`.
#[derive(Debug, Default, PartialEq, Eq)]
struct PrefixScan {
    lines: u64,
    ok: u64,
    failed: u64,
    /// Bytes of the valid lines.
    valid_len: u64,
    file_len: u64,
}

/// Finds the longest prefix of whole, valid lines where line k is the record of index k. A line
/// is valid when it ends in a newline, has the record head with the right index, ends with `}`
/// and holds no NUL byte (what a power cut leaves in unwritten blocks); the last one must also be
/// well-formed JSON. Cost: one pass, no per-line allocation.
fn scan_prefix(path: &Path) -> io::Result<PrefixScan> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PrefixScan::default()),
        Err(e) => return Err(e),
    };
    let mut scan = PrefixScan {
        file_len: file.metadata()?.len(),
        ..PrefixScan::default()
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut last = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let ok = match parse_record_head(&line) {
            Some((index, ok))
                if index == scan.lines && line.ends_with(b"}\n") && !line.contains(&0) =>
            {
                ok
            }
            _ => break,
        };
        if ok {
            scan.ok += 1;
        } else {
            scan.failed += 1;
        }
        scan.lines += 1;
        scan.valid_len += line.len() as u64;
        std::mem::swap(&mut line, &mut last);
    }
    // The last line kept is the one most likely to be damaged: check it fully.
    if scan.lines > 0 && serde_json::from_slice::<serde::de::IgnoredAny>(&last).is_err() {
        match parse_record_head(&last) {
            Some((_, true)) => scan.ok -= 1,
            _ => scan.failed -= 1,
        }
        scan.lines -= 1;
        scan.valid_len -= last.len() as u64;
    }
    Ok(scan)
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
pub struct Syncer {
    shared: Arc<SyncShared>,
    thread: Option<JoinHandle<()>>,
}

struct SyncShared {
    state: Mutex<SyncState>,
    wake: Condvar,
    dirty: AtomicBool,
}

struct SyncState {
    /// Duplicates of the writer's file descriptors.
    files: Vec<Arc<File>>,
    /// Files whose directory entry is to be made durable once.
    parents: Vec<PathBuf>,
    stop: bool,
}

impl Syncer {
    pub(crate) fn start() -> io::Result<Self> {
        let shared = Arc::new(SyncShared {
            state: Mutex::new(SyncState {
                files: Vec::new(),
                parents: Vec::new(),
                stop: false,
            }),
            wake: Condvar::new(),
            dirty: AtomicBool::new(false),
        });
        let theirs = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("loky-run-sync".into())
            .spawn(move || sync_loop(&theirs))?;
        Ok(Self {
            shared,
            thread: Some(thread),
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

    /// Something was written since the last sync.
    pub(crate) fn mark_dirty(&self) {
        self.shared.dirty.store(true, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn stop(&mut self) {
        self.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
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
            return;
        }
        if !shared.dirty.swap(false, Ordering::AcqRel) {
            continue;
        }
        let files = state.files.clone();
        drop(state);
        for f in &files {
            let _ = f.sync_data(); // best effort: the end of the stage syncs and reports errors
        }
        state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    }
}

fn write_ok(w: &mut impl Write, index: u64, output: &[u8]) -> io::Result<()> {
    let mut digits = itoa::Buffer::new();
    w.write_all(b"{\"index\":")?;
    w.write_all(digits.format(index).as_bytes())?;
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
        w.ok(2, b"4").unwrap();
        w.error(1, ErrorKind::Panic, "boom \"x\"", 1).unwrap();
        assert_eq!(w.next_index(), 0);
        assert!(w.pending_bytes() > 0);
        w.ok(0, b"0").unwrap();
        assert_eq!(w.next_index(), 3);
        assert_eq!(w.pending_bytes(), 0);
        w.error(3, ErrorKind::Crashed, "killed by SIGSEGV", 3)
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
        w.ok(0, b"0").unwrap();
        w.ok(3, b"9").unwrap();
        w.error(2, ErrorKind::TaskError, "two", 1).unwrap();
        w.ok(5, b"25").unwrap();
        w.flush().unwrap();
        w.ok(6, b"36").unwrap(); // not flushed: lost with the crash
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
        w.ok(4, b"16").unwrap();
        w.flush().unwrap();
        crash(w);
        let mut w = OrderedWriter::resume(&path).unwrap();
        assert_eq!(w.resumed().records(), 5);
        assert!(w.is_done(4) && !w.is_done(1) && !w.is_done(6));
        w.ok(1, b"1").unwrap();
        assert_eq!(w.next_index(), 6);
        w.ok(6, b"36").unwrap();
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
            ("{\"index\":3,\"out", 3),            // torn mid-line
            ("{\"index\":3,\"output\":9}", 3),    // no newline: torn
            ("\0\0\0\0\0\0\n", 3),                // a block of zeros
            ("{\"index\":4,\"output\":16}\n", 3), // not the next index
            ("{\"index\":3,\"output\":[}\n", 3),  // the last line is not JSON
            ("{\"index\":3,\"output\":9}\n", 4),  // fine
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

    #[test]
    fn journal_records_below_the_prefix_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let mut w = OrderedWriter::create(&path).unwrap();
        w.ok(1, b"1").unwrap(); // held and journaled, then written in order
        w.ok(0, b"0").unwrap();
        w.ok(3, b"9").unwrap();
        w.flush().unwrap();
        crash(w);
        let w = OrderedWriter::resume(&path).unwrap();
        let r = w.resumed();
        assert_eq!((r.ok, r.prefix), (3, 2));
        assert!(w.is_done(3) && !w.is_done(2));
        // Index 3 waits for 2; once 2 comes, both are written.
        let mut w = w;
        w.ok(2, b"4").unwrap();
        assert_eq!(w.next_index(), 4);
        w.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), lines(0..4));
    }

    #[test]
    fn create_discards_an_old_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let mut w = OrderedWriter::create(&path).unwrap();
        w.ok(1, b"1").unwrap();
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

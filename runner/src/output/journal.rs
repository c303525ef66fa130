//! The side journal of a stage: `<output_dir>/.journal/<stage>.log`.
//!
//! `<stage>.jsonl` only ever holds a contiguous prefix of the stage's results (line k is the
//! record of input k), so it is its own journal for that prefix. Results that complete ahead of
//! it wait in the writer's reorder buffer; each of those is also appended here, so a runner
//! killed at any moment loses none of them. The file is an 8-byte magic, then frames:
//!
//! ```text
//! u32 LE payload length | u32 LE CRC-32 of (the 4 length bytes ++ payload) | payload
//! ```
//!
//! A payload is one or more complete record lines, byte for byte as they will appear in
//! `<stage>.jsonl` (`{"index":N,"output":...}\n`). A frame goes out in one `write(2)` per batch
//! of results. The first frame whose length or checksum does not check out (a write torn by a
//! crash or a power cut) ends the journal: it and anything after it are ignored, and the next
//! append overwrites them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Syncer, parse_record_head};

pub const MAGIC: &[u8; 8] = b"lkrjnl1\n";
const FRAME_HEADER: usize = 8;
/// A frame is written early once its payload reaches this size (between two flushes).
const FRAME_TARGET: usize = 1 << 20;
/// Below this many journaled bytes, [`JournalWriter::drop_unsynced`] leaves the file alone (a
/// truncation costs two syscalls; small results cost the disk little).
const DROP_AT: u64 = 256 << 10;

/// Appends frames of record lines; the file is created on first use.
pub struct JournalWriter {
    path: PathBuf,
    file: Option<File>,
    /// Length of the valid part of an existing journal, where appending starts (0: start anew).
    append_at: u64,
    /// A frame header placeholder, then the record lines of the next frame.
    buf: Vec<u8>,
    /// Bytes of frames written since the file was started (or last emptied).
    written: u64,
    /// The syncer's pass count when the first of those was written: while no pass has started
    /// since, none of them can have reached the disk.
    first_write_pass: Option<u64>,
    /// The pass count when every journaled record was last found in `<stage>.jsonl` with no
    /// frame written since: once a whole pass has run after that, the file holds them durably.
    settled_at: Option<u64>,
    /// No file exists at `path` until one is opened here (nothing to delete before).
    absent: bool,
}

impl JournalWriter {
    pub fn new(path: PathBuf, append_at: u64) -> Self {
        Self {
            path,
            file: None,
            append_at,
            buf: vec![0; FRAME_HEADER],
            written: 0,
            first_write_pass: None,
            settled_at: None,
            absent: false,
        }
    }

    /// The caller knows no journal file exists yet (it just deleted it).
    pub fn known_absent(mut self) -> Self {
        self.absent = true;
        self
    }

    /// Nothing this writer journaled was made durable on purpose, so deleting the journal
    /// loses at most what a power cut may lose anyway: no journal was there before, and no
    /// sync pass started since its first frame was written (see
    /// [`JournalWriter::drop_unsynced`]), if any was; a pass already under way then may have
    /// caught it, and that is the last second's.
    pub fn nothing_durable(&self, syncer: &Syncer) -> bool {
        self.absent
            && self
                .first_write_pass
                .is_none_or(|pass| pass == syncer.passes())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues one record line (written at the next flush, or now if a frame is full).
    pub fn append(&mut self, line: &[u8], syncer: &Syncer) -> io::Result<()> {
        self.buf.extend_from_slice(line);
        if self.buf.len() - FRAME_HEADER >= FRAME_TARGET {
            self.write_frame(syncer)?;
        }
        Ok(())
    }

    /// Writes the queued lines as one frame; `true` if anything was written.
    pub fn flush(&mut self, syncer: &Syncer) -> io::Result<bool> {
        self.write_frame(syncer)
    }

    fn write_frame(&mut self, syncer: &Syncer) -> io::Result<bool> {
        let payload = self.buf.len() - FRAME_HEADER;
        if payload == 0 {
            return Ok(false);
        }
        let len = u32::try_from(payload).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "a result of 4 GiB or more cannot be journaled",
            )
        })?;
        let crc = frame_crc(len, &self.buf[FRAME_HEADER..]);
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        self.open(syncer)?;
        // Read before the write: a pass that starts after it sees the bytes, and is counted.
        let pass = syncer.passes();
        let file = self.file.as_mut().expect("open");
        file.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.first_write_pass.get_or_insert(pass);
        self.settled_at = None;
        self.buf.truncate(FRAME_HEADER);
        Ok(true)
    }

    /// Every journaled record has since been written to `<stage>.jsonl` (the writer holds
    /// nothing): empties the journal when that loses nothing a power cut would have kept.
    /// Either none of its bytes can have reached the disk yet (no sync pass started since the
    /// first was written: the kernel then drops them instead of writing them, and each result
    /// reaches the disk once), or a whole pass has run since the records were all in the file
    /// (the file holds them durably; the journal would only grow). A runner killed now loses
    /// nothing either way: the records are in `<stage>.jsonl`. Returns whether it was emptied.
    pub fn drop_unsynced(&mut self, syncer: &Syncer) -> io::Result<bool> {
        let passes = syncer.passes();
        let settled = *self.settled_at.get_or_insert(passes);
        let unsynced = self.first_write_pass == Some(passes);
        // Pass `settled + 1` started after the records were in the file; it has completed once
        // pass `settled + 2` has started (passes run one after the other).
        let durable_in_file = passes >= settled + 2;
        // A journal continued from an earlier run holds frames of that run: kept.
        let fresh = self.append_at < MAGIC.len() as u64;
        if self.buf.len() > FRAME_HEADER
            || !(unsynced || durable_in_file)
            || !fresh
            || self.written < DROP_AT
        {
            return Ok(false);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(false);
        };
        file.set_len(MAGIC.len() as u64)?;
        file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
        self.written = 0;
        self.first_write_pass = None;
        self.settled_at = None;
        Ok(true)
    }

    fn open(&mut self, syncer: &Syncer) -> io::Result<()> {
        if self.file.is_none() {
            let dir = self.path.parent().expect("a journal path has a parent");
            let new_dir = !dir.exists();
            fs::create_dir_all(dir)?;
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)?;
            if self.append_at < MAGIC.len() as u64 {
                file.set_len(0)?;
                file.write_all(MAGIC)?;
                // The new directory entries survive a power cut too: synced by the syncer with
                // its first pass over the file's data, off this (the dispatcher's) thread; not
                // at all if the stage ends before (see `OrderedWriter::finish`).
                syncer.sync_parent_with_data(&self.path);
                if new_dir {
                    syncer.sync_parent_with_data(dir);
                }
            } else {
                file.set_len(self.append_at)?;
                file.seek(SeekFrom::Start(self.append_at))?;
            }
            syncer.add(&file)?;
            self.file = Some(file);
        }
        Ok(())
    }

    /// Makes what was written durable (no-op when nothing was ever written).
    pub fn sync(&self) -> io::Result<()> {
        match &self.file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// Closes and deletes the journal (the stage's `<stage>.jsonl` is complete and durable), and
    /// its directory if that is now empty.
    pub fn discard(&mut self) -> io::Result<()> {
        self.buf.truncate(FRAME_HEADER);
        if self.file.take().is_none() && self.absent {
            return Ok(());
        }
        remove(&self.path)
    }
}

/// Deletes a journal file (missing is fine) and its directory if that is now empty.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        let _ = fs::remove_dir(dir); // fails while other stages' journals are there
    }
    Ok(())
}

pub(super) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn frame_crc(len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// What reading a journal found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scan {
    /// Bytes of the valid part (the magic and every whole, checked frame): appending starts here.
    pub valid_len: u64,
    pub frames: u64,
    pub records: u64,
    /// Bytes ignored at the end: a torn or corrupt frame and anything after it.
    pub ignored: u64,
}

/// One record found in a journal.
pub struct Record<'a> {
    pub index: u64,
    /// `true` for an `output` record, `false` for an `error` record.
    pub ok: bool,
    /// The exact line, with its newline.
    pub line: &'a [u8],
}

/// Reads every valid record of a journal in order (a missing file is an empty journal). A torn
/// or corrupt frame ends the scan; it is reported in [`Scan::ignored`], never an error.
pub fn read(path: &Path, mut on_record: impl FnMut(Record<'_>)) -> io::Result<Scan> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Scan::default()),
        Err(e) => return Err(e),
    };
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut scan = Scan::default();
    let mut magic = [0u8; 8];
    if read_full(&mut reader, &mut magic)? < magic.len() || &magic != MAGIC {
        scan.ignored = file_len;
        return Ok(scan);
    }
    scan.valid_len = MAGIC.len() as u64;
    let mut payload = Vec::new();
    let mut heads = Vec::new();
    loop {
        let mut header = [0u8; FRAME_HEADER];
        let got = read_full(&mut reader, &mut header)?;
        if got < FRAME_HEADER {
            break; // the end, or a torn header
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if u64::from(len) > file_len - scan.valid_len - FRAME_HEADER as u64 {
            break; // claims more than the file holds: torn (or a corrupt length)
        }
        payload.resize(len as usize, 0);
        if read_full(&mut reader, &mut payload)? < payload.len() || frame_crc(len, &payload) != crc
        {
            break;
        }
        // Checked as a whole before any record is handed out.
        heads.clear();
        let mut start = 0;
        let mut valid = !payload.is_empty();
        while valid && start < payload.len() {
            match payload[start..].iter().position(|&b| b == b'\n') {
                Some(n) => {
                    let line = &payload[start..start + n + 1];
                    match parse_record_head(line) {
                        Some((index, ok)) => heads.push((start, n + 1, index, ok)),
                        None => valid = false,
                    }
                    start += n + 1;
                }
                None => valid = false,
            }
        }
        if !valid {
            break;
        }
        for &(start, len, index, ok) in &heads {
            on_record(Record {
                index,
                ok,
                line: &payload[start..start + len],
            });
        }
        scan.frames += 1;
        scan.records += heads.len() as u64;
        scan.valid_len += (FRAME_HEADER + payload.len()) as u64;
    }
    scan.ignored = file_len - scan.valid_len;
    Ok(scan)
}

/// Reads until `buf` is full or the end of the file; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(index: u64, value: u64) -> Vec<u8> {
        format!("{{\"index\":{index},\"output\":{value}}}\n").into_bytes()
    }

    /// Writes frames of the given record indices; returns the journal's path.
    fn journal(dir: &Path, frames: &[&[u64]]) -> PathBuf {
        let path = dir.join(".journal").join("s.log");
        let syncer = Syncer::start().unwrap();
        let mut w = JournalWriter::new(path.clone(), 0);
        for frame in frames {
            for &i in *frame {
                w.append(&line(i, i * 10), &syncer).unwrap();
            }
            assert!(w.flush(&syncer).unwrap());
        }
        assert!(!w.flush(&syncer).unwrap(), "nothing queued");
        path
    }

    fn indices(path: &Path) -> (Vec<u64>, Scan) {
        let mut seen = Vec::new();
        let scan = read(path, |r| {
            assert_eq!(r.line, line(r.index, r.index * 10));
            assert!(r.ok);
            seen.push(r.index);
        })
        .unwrap();
        (seen, scan)
    }

    #[test]
    fn frames_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal(dir.path(), &[&[5, 3], &[9], &[4, 7, 8]]);
        let (seen, scan) = indices(&path);
        assert_eq!(seen, [5, 3, 9, 4, 7, 8]);
        assert_eq!(scan.frames, 3);
        assert_eq!(scan.records, 6);
        assert_eq!(scan.ignored, 0);
        assert_eq!(scan.valid_len, fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn missing_and_empty_journals_are_empty() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.log");
        assert_eq!(read(&missing, |_| panic!()).unwrap(), Scan::default());
        let empty = dir.path().join("empty.log");
        fs::write(&empty, b"").unwrap();
        assert_eq!(read(&empty, |_| panic!()).unwrap(), Scan::default());
        // Torn inside the magic, or not a journal at all: ignored, not an error.
        fs::write(&empty, &MAGIC[..3]).unwrap();
        let scan = read(&empty, |_| panic!()).unwrap();
        assert_eq!((scan.valid_len, scan.ignored), (0, 3));
        fs::write(&empty, b"something else entirely").unwrap();
        assert_eq!(read(&empty, |_| panic!()).unwrap().valid_len, 0);
        // Only the magic: valid and empty.
        fs::write(&empty, MAGIC).unwrap();
        let scan = read(&empty, |_| panic!()).unwrap();
        assert_eq!((scan.valid_len, scan.records, scan.ignored), (8, 0, 0));
    }

    #[test]
    fn a_torn_last_frame_is_ignored_at_every_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal(dir.path(), &[&[1, 2], &[3, 4, 5]]);
        let full = fs::read(&path).unwrap();
        let first_end = MAGIC.len() + FRAME_HEADER + line(1, 10).len() + line(2, 20).len();
        for cut in first_end..full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            let (seen, scan) = indices(&path);
            assert_eq!(seen, [1, 2], "cut at {cut}");
            assert_eq!(scan.valid_len, first_end as u64);
            assert_eq!(scan.ignored, (cut - first_end) as u64);
        }
    }

    #[test]
    fn a_checksum_mismatch_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal(dir.path(), &[&[1], &[2], &[3]]);
        let mut bytes = fs::read(&path).unwrap();
        let frame = FRAME_HEADER + line(1, 10).len();
        // Flip one payload byte of the second frame: it and the third are ignored.
        bytes[MAGIC.len() + frame + FRAME_HEADER + 3] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        let (seen, scan) = indices(&path);
        assert_eq!(seen, [1]);
        assert_eq!(scan.valid_len, (MAGIC.len() + frame) as u64);
        // A length claiming more than the file holds is torn, not an allocation.
        let mut bytes = fs::read(&path).unwrap();
        bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        assert_eq!(indices(&path).0, Vec::<u64>::new());
    }

    #[test]
    fn appending_after_a_torn_frame_overwrites_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal(dir.path(), &[&[1], &[2]]);
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[7, 0, 0, 0, 1, 2])
            .unwrap();
        let (_, scan) = indices(&path);
        assert_eq!((scan.valid_len, scan.ignored), (len, 6));
        let syncer = Syncer::start().unwrap();
        let mut w = JournalWriter::new(path.clone(), scan.valid_len);
        w.append(&line(6, 60), &syncer).unwrap();
        w.flush(&syncer).unwrap();
        w.sync().unwrap();
        let (seen, scan) = indices(&path);
        assert_eq!(seen, [1, 2, 6]);
        assert_eq!(scan.ignored, 0);
        w.discard().unwrap();
        assert!(!path.exists());
        assert!(
            !path.parent().unwrap().exists(),
            "the empty .journal is removed"
        );
    }
}

//! `--retry-failed`: the records of a stage's previous output that are carried into the new one
//! byte for byte. The inputs without an ok record there (the failures, and the inputs a stopped
//! stage never ran) run again.
//!
//! The previous output is moved to `<output_dir>/.journal/<stage>.previous` (a rename, not a
//! copy) before the new `<stage>.jsonl` starts; the writer copies each ok record into place
//! when the write position reaches it, so memory stays flat whatever the size of the output
//! (only the runs of ok indices are kept: one range per stretch between two failures). An
//! interrupted retry resumes like any stage (the new file's verified prefix, its journal) and
//! reads the previous file again from the start; the previous file is deleted only once the new
//! output is complete and durable.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::ops::Range;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{JOURNAL_DIR, hex, parse_record_head};

/// Where the previous output of the stage whose results go to `output` waits while the stage
/// retries its failures: `<dir>/.journal/<stage>.previous`.
pub fn previous_path(output: &Path) -> PathBuf {
    let dir = output.parent().unwrap_or(Path::new("."));
    let stem = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.strip_suffix(".jsonl").unwrap_or(&stem);
    dir.join(JOURNAL_DIR).join(format!("{stem}.previous"))
}

/// The previous output, read in index order as the new one is written.
pub struct Carried {
    path: PathBuf,
    reader: BufReader<File>,
    /// The next record of the previous file, read ahead (empty at its end).
    line: Vec<u8>,
    /// The index and kind of `line`.
    ahead: Option<(u64, bool)>,
    /// The record `take` handed out last.
    taken: Vec<u8>,
    /// Runs of consecutive indices with an ok record, in order: what is carried over.
    ok_runs: Vec<Range<u64>>,
    ok_total: u64,
    failed_total: u64,
}

impl Carried {
    /// Opens the previous output and finds which inputs have an ok record (one pass). Every
    /// line must be a record with an index above the one before, and with `expected_sha256`
    /// the file must be the one the manifest recorded: anything else is `InvalidData`, naming
    /// the line (a retry never carries a damaged record).
    pub fn open(path: &Path, expected_sha256: Option<&str>) -> io::Result<Self> {
        let damaged = |what: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {what}", path.display()),
            )
        };
        let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut sha = Sha256::new();
        let mut ok_runs: Vec<Range<u64>> = Vec::new();
        let (mut ok_total, mut failed_total) = (0, 0);
        let mut last: Option<u64> = None;
        let mut line = Vec::new();
        for line_no in 1u64.. {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            sha.update(&line);
            let head = parse_record_head(&line).filter(|_| line.ends_with(b"}\n"));
            let Some((index, ok)) = head else {
                return Err(damaged(format!("line {line_no} is not a record")));
            };
            if last.is_some_and(|l| index <= l) {
                return Err(damaged(format!(
                    "line {line_no} holds index {index}, out of order"
                )));
            }
            last = Some(index);
            if !ok {
                failed_total += 1;
                continue;
            }
            ok_total += 1;
            match ok_runs.last_mut() {
                Some(run) if run.end == index => run.end += 1,
                _ => ok_runs.push(index..index + 1),
            }
        }
        if let Some(expected) = expected_sha256 {
            if hex(&sha.finalize()) != expected {
                return Err(damaged(
                    "changed since the stage finished (its SHA-256 is not the one the manifest recorded)"
                        .to_owned(),
                ));
            }
        }
        let mut reader = reader;
        std::io::Seek::rewind(&mut reader)?;
        let mut carried = Self {
            path: path.to_owned(),
            reader,
            line: Vec::new(),
            ahead: None,
            taken: Vec::new(),
            ok_runs,
            ok_total,
            failed_total,
        };
        carried.read_ahead()?;
        Ok(carried)
    }

    fn read_ahead(&mut self) -> io::Result<()> {
        self.line.clear();
        self.ahead = if self.reader.read_until(b'\n', &mut self.line)? == 0 {
            None
        } else {
            // Checked by `open`; a file changed since reads as its end.
            parse_record_head(&self.line)
        };
        Ok(())
    }

    /// The file was renamed (the open handle reads on).
    pub fn moved_to(&mut self, path: PathBuf) {
        self.path = path;
    }

    /// Whether input `index` has an ok record in the previous output (it is not run again).
    pub fn has_ok(&self, index: u64) -> bool {
        let i = self.ok_runs.partition_point(|run| run.end <= index);
        self.ok_runs.get(i).is_some_and(|run| run.contains(&index))
    }

    /// Ok records at `index` or above.
    pub fn ok_from(&self, index: u64) -> u64 {
        let i = self.ok_runs.partition_point(|run| run.end <= index);
        self.ok_runs[i..]
            .iter()
            .map(|run| run.end - run.start.max(index))
            .sum()
    }

    /// What the previous output held: ok records and failures.
    pub fn totals(&self) -> (u64, u64) {
        (self.ok_total, self.failed_total)
    }

    /// The index of the next ok record at or after `index` (records before it are passed).
    pub fn next_ok(&mut self, index: u64) -> io::Result<Option<u64>> {
        while let Some((at, ok)) = self.ahead {
            if at >= index && ok {
                return Ok(Some(at));
            }
            self.read_ahead()?;
        }
        Ok(None)
    }

    /// The ok record of input `index`, if the previous output has one; the read position
    /// moves past it. Call with increasing indices.
    pub fn take(&mut self, index: u64) -> io::Result<Option<&[u8]>> {
        if !self.has_ok(index) || self.next_ok(index)? != Some(index) {
            return Ok(None);
        }
        // The record moves to `taken` (valid until the next call) and the next one is read.
        std::mem::swap(&mut self.line, &mut self.taken);
        self.read_ahead()?;
        Ok(Some(&self.taken))
    }

    /// Deletes the previous output (the new one is complete and durable).
    pub fn remove(self) -> io::Result<()> {
        super::remove_file(&self.path)
    }
}

//! Seals of a stage's output: `<output_dir>/.journal/<stage>.seals`.
//!
//! `<stage>.jsonl` is its own journal for its prefix, but a prefix of valid-looking JSON lines
//! is not proof that they are the ones written: a copy, a disk or a person can change a digit
//! in the middle. Each time the writer has written at least [`SEAL_EVERY`] bytes since the last
//! seal (checked when it flushes), and when a stage is suspended, it appends one entry:
//!
//! ```text
//! u64 LE file length | u64 LE lines | u32 LE CRC-32 of the bytes since the previous seal |
//! u32 LE CRC-32 of the 20 bytes before
//! ```
//!
//! `--resume` checks every sealed segment against its CRC: the first one that does not match
//! is damage, and the output is cut back to the seal before it (its results run again). What
//! follows the last seal (at most the last second or so of writes) is checked line by line.
//! Entries are appended without a sync of their own; the syncer makes them durable with the
//! rest. A seal that made it to disk ahead of the data it seals only means a short file: what
//! is there is checked line by line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{JOURNAL_DIR, Syncer};

/// Bytes of output between two seals (at least).
pub const SEAL_EVERY: u64 = 1 << 20;
const ENTRY: usize = 24;

/// One seal: the output had `lines` lines in its first `offset` bytes, and `crc` is the CRC-32
/// of its bytes from the previous seal's offset (or 0) to `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    pub offset: u64,
    pub lines: u64,
    pub crc: u32,
}

impl Seal {
    fn encode(&self) -> [u8; ENTRY] {
        let mut e = [0u8; ENTRY];
        e[..8].copy_from_slice(&self.offset.to_le_bytes());
        e[8..16].copy_from_slice(&self.lines.to_le_bytes());
        e[16..20].copy_from_slice(&self.crc.to_le_bytes());
        let check = crc32fast::hash(&e[..20]);
        e[20..].copy_from_slice(&check.to_le_bytes());
        e
    }

    fn decode(e: &[u8; ENTRY]) -> Option<Self> {
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&e[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&e[at..at + 4]);
            u32::from_le_bytes(b)
        };
        (crc32fast::hash(&e[..20]) == u32_at(20)).then(|| Seal {
            offset: u64_at(0),
            lines: u64_at(8),
            crc: u32_at(16),
        })
    }
}

/// The seals of the stage whose results go to `output` (`<dir>/<stage>.jsonl`):
/// `<dir>/.journal/<stage>.seals`.
pub fn seals_path(output: &Path) -> PathBuf {
    let dir = output.parent().unwrap_or(Path::new("."));
    let stem = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.strip_suffix(".jsonl").unwrap_or(&stem);
    dir.join(JOURNAL_DIR).join(format!("{stem}.seals"))
}

/// The valid seals, in order: reading stops at the first entry that is torn, fails its own
/// check, or does not move forward (a missing file has none).
pub fn read(path: &Path) -> io::Result<Vec<Seal>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let mut seals: Vec<Seal> = Vec::new();
    for entry in bytes.chunks_exact(ENTRY) {
        let Some(seal) = entry.try_into().ok().and_then(Seal::decode) else {
            break;
        };
        let forward = seals
            .last()
            .is_none_or(|last| seal.offset > last.offset && seal.lines >= last.lines);
        if !forward {
            break;
        }
        seals.push(seal);
    }
    Ok(seals)
}

/// Cuts the seals file back to its first `keep` entries (a missing file stays missing). A
/// resume does it at once: the entries after those it verified describe bytes that are about
/// to be written anew, and a crash before the next seal must not check those against them.
pub fn truncate(path: &Path, keep: usize) -> io::Result<()> {
    match OpenOptions::new().write(true).open(path) {
        Ok(file) => {
            let at = (keep * ENTRY) as u64;
            if file.metadata()?.len() > at {
                file.set_len(at)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Appends seals; the file is created (or cut back to the seals kept) on first use.
pub struct SealWriter {
    path: PathBuf,
    file: Option<File>,
    /// Entries of an existing file to keep (those a resume verified).
    keep: u64,
    /// No file exists at `path` until one is opened here (nothing to delete before).
    absent: bool,
}

impl SealWriter {
    pub fn new(path: PathBuf, keep: usize) -> Self {
        Self {
            path,
            file: None,
            keep: keep as u64,
            absent: false,
        }
    }

    /// The caller knows no seals file exists yet (it just deleted it).
    pub fn known_absent(mut self) -> Self {
        self.absent = true;
        self
    }

    /// No file was ever written at `path` by this writer, and none was there before.
    pub fn never_written(&self) -> bool {
        self.file.is_none() && self.absent
    }

    pub fn append(&mut self, seal: Seal, syncer: &Syncer) -> io::Result<()> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)?;
            let at = self.keep * ENTRY as u64;
            file.set_len(at)?;
            file.seek(SeekFrom::Start(at))?;
            syncer.add(&file)?;
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => file.write_all(&seal.encode()),
            None => Ok(()),
        }
    }

    /// Closes and deletes the seals (the stage's output is complete and durable).
    pub fn discard(&mut self) -> io::Result<()> {
        if self.file.take().is_none() && self.absent {
            return Ok(());
        }
        remove(&self.path)
    }
}

/// Deletes a seals file (missing is fine).
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_read_back_until_the_first_bad_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.seals");
        let seals = [
            Seal {
                offset: 100,
                lines: 5,
                crc: 7,
            },
            Seal {
                offset: 250,
                lines: 9,
                crc: 8,
            },
            Seal {
                offset: 900,
                lines: 30,
                crc: 9,
            },
        ];
        let mut bytes: Vec<u8> = seals.iter().flat_map(super::Seal::encode).collect();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap(), seals);
        // A flipped bit in the third entry, then a torn fourth: two are kept.
        bytes[2 * ENTRY + 3] ^= 0x10;
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap(), &seals[..2]);
        // An entry that goes backwards ends them too.
        let back: Vec<u8> = [seals[1], seals[0]]
            .iter()
            .flat_map(super::Seal::encode)
            .collect();
        std::fs::write(&path, back).unwrap();
        assert_eq!(read(&path).unwrap(), &seals[1..2]);
        assert!(read(&dir.path().join("none")).unwrap().is_empty());
    }
}

//! Stage inputs: `range`, `items`, a JSON-lines `file`, or `from` an earlier stage's outputs.
//!
//! Sources stream: each input is encoded (as JSON text) straight into the chunk frame being
//! built, so a ten-million-item range never exists in memory and costs no allocation per item.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::config::InputSpec;
use crate::protocol::{FrameBuf, max_item_bytes};

/// The longest line an input file may have: the largest input a frame carries.
pub fn max_line_bytes() -> usize {
    max_item_bytes()
}

/// A line of a stage's own output file holds an item and a few dozen bytes of record around it.
fn max_record_bytes() -> usize {
    max_item_bytes() + 4096
}

/// A malformed input file, found before anything runs.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read input file {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}:{line}: not a JSON value: {message}", path.display())]
    Malformed {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{}:{line}: not valid UTF-8 (at byte {offset} of the line); JSON text must be UTF-8", path.display())]
    NotUtf8 {
        path: PathBuf,
        line: u64,
        offset: usize,
    },
    #[error("{}:{line}: the line is longer than {} bytes, the most an input can be", path.display(), max_line_bytes())]
    LineTooLong { path: PathBuf, line: u64 },
    #[error(
        "{}:{line}: a blank line before more values: input k is line k + 1 of the file (and so is its record's index), so a blank line would shift every record after it; remove it (blank lines are allowed only at the end)",
        path.display()
    )]
    BlankLine { path: PathBuf, line: u64 },
    #[error(
        "input file {} is {kind}, not a regular file: loky-run reads an input file more than once (a check before any worker starts, the run, a resume); copy it to a file first",
        path.display()
    )]
    NotRegular { path: PathBuf, kind: &'static str },
}

/// What a non-regular file is, for messages.
fn file_kind(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a named pipe (FIFO)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Opens an input file, refusing anything but a regular file (a FIFO read by the check would
/// block the run when it is opened again; a device never ends).
fn open_regular(path: &Path) -> Result<File, InputError> {
    let io_err = |source| InputError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if !meta.file_type().is_file() {
        return Err(InputError::NotRegular {
            path: path.to_owned(),
            kind: file_kind(meta.file_type()),
        });
    }
    File::open(path).map_err(io_err)
}

/// How reading one line ended.
#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// No more lines.
    End,
    /// A line was appended (without its newline).
    Line,
    /// The line is longer than the limit: what was read of it is dropped.
    TooLong,
}

/// Appends the next line of `reader` (without its `\n`) to `buf`, reading at most `limit`
/// bytes of it: a file without newlines cannot make the runner grow without bound.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, limit: usize) -> io::Result<LineRead> {
    let start = buf.len();
    let mut any = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(if any { LineRead::Line } else { LineRead::End });
        }
        any = true;
        let (piece, done) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], at + 1),
            None => (available, available.len()),
        };
        let complete = piece.len() < done;
        if buf.len() - start + piece.len() > limit {
            buf.truncate(start);
            reader.consume(done);
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(piece);
        reader.consume(done);
        if complete {
            return Ok(LineRead::Line);
        }
    }
}

/// Yields inputs in order, appending each to a frame as a length-prefixed JSON text.
pub trait InputSource {
    /// Appends the next input to `frame`; `false` once the source is exhausted.
    fn next_into(&mut self, frame: &mut FrameBuf) -> io::Result<bool>;

    /// For a `from` stage: the index of the earlier stage's record the last input came from
    /// (records of that stage that failed are skipped, so the two indices differ).
    fn source(&self) -> Option<u64> {
        None
    }
}

/// Opens the source of a stage. `from` is the output file of the stage named by `from`, with
/// its SHA-256 if the manifest has it (checked once the file has been read).
pub fn open(
    spec: &InputSpec,
    from: Option<(&Path, Option<&str>)>,
) -> io::Result<Box<dyn InputSource>> {
    Ok(match spec {
        InputSpec::Range { start, end } => Box::new(RangeSource {
            next: *start,
            end: *end,
        }),
        InputSpec::Items(items) => Box::new(ItemsSource {
            items: items
                .iter()
                .map(|v| serde_json::to_vec(v).expect("JSON values serialize"))
                .collect(),
            next: 0,
        }),
        InputSpec::File(path) => Box::new(LinesSource {
            path: path.clone(),
            lines: JsonLines::open(path)?,
        }),
        InputSpec::From(stage) => {
            let (path, sha256) = from.ok_or_else(|| {
                io::Error::other(format!(
                    "no output file for the stage `{stage}` it reads from"
                ))
            })?;
            Box::new(FromSource {
                path: path.to_owned(),
                reader: BufReader::with_capacity(1 << 16, Hashing::new(File::open(path)?)),
                expected_sha256: sha256.map(str::to_owned),
                line_no: 0,
                source: None,
            })
        }
    })
}

struct RangeSource {
    next: i64,
    end: i64,
}

impl InputSource for RangeSource {
    fn next_into(&mut self, frame: &mut FrameBuf) -> io::Result<bool> {
        if self.next >= self.end {
            return Ok(false);
        }
        let mut digits = itoa::Buffer::new();
        frame.put_bytes(digits.format(self.next).as_bytes());
        self.next += 1;
        Ok(true)
    }
}

struct ItemsSource {
    items: Vec<Vec<u8>>,
    next: usize,
}

impl InputSource for ItemsSource {
    fn next_into(&mut self, frame: &mut FrameBuf) -> io::Result<bool> {
        let Some(item) = self.items.get(self.next) else {
            return Ok(false);
        };
        frame.put_bytes(item);
        self.next += 1;
        Ok(true)
    }
}

/// Non-blank lines of a JSON-lines file, trimmed.
struct JsonLines<R = File> {
    reader: BufReader<R>,
    buf: Vec<u8>,
    line: u64,
}

impl JsonLines {
    fn open(path: &Path) -> io::Result<Self> {
        let file = open_regular(path).map_err(|e| match e {
            InputError::Io { source, .. } => source,
            other => io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
        })?;
        Ok(Self {
            reader: BufReader::with_capacity(1 << 16, file),
            buf: Vec::new(),
            line: 0,
        })
    }
}

/// A line of an input file.
enum Next<'a> {
    End,
    Line(&'a [u8]),
    TooLong,
    /// A value after a blank line (the blank line's number).
    AfterBlank(u64),
}

impl<R: Read> JsonLines<R> {
    /// The next non-blank line (trimmed); blank lines are only allowed at the end.
    fn next_line(&mut self) -> io::Result<Next<'_>> {
        let mut blank = None;
        loop {
            self.buf.clear();
            match read_line(&mut self.reader, &mut self.buf, max_line_bytes())? {
                LineRead::End => return Ok(Next::End),
                LineRead::TooLong => {
                    self.line += 1;
                    return Ok(Next::TooLong);
                }
                LineRead::Line => self.line += 1,
            }
            let trimmed = self.buf.trim_ascii();
            if trimmed.is_empty() {
                blank.get_or_insert(self.line);
                continue;
            }
            if let Some(line) = blank {
                return Ok(Next::AfterBlank(line));
            }
            let (start, len) = (
                trimmed.as_ptr() as usize - self.buf.as_ptr() as usize,
                trimmed.len(),
            );
            return Ok(Next::Line(&self.buf[start..start + len]));
        }
    }
}

struct LinesSource {
    path: PathBuf,
    lines: JsonLines,
}

impl InputSource for LinesSource {
    /// Reads the line straight into the frame (one copy of each input byte less than going
    /// through a line buffer: it matters for large values).
    fn next_into(&mut self, frame: &mut FrameBuf) -> io::Result<bool> {
        let reader = &mut self.lines.reader;
        let line_no = &mut self.lines.line;
        let path = &self.path;
        frame.put_bytes_with(|buf| {
            let start = buf.len();
            loop {
                match read_line(reader, buf, max_line_bytes())? {
                    LineRead::End => return Ok(false),
                    LineRead::Line => *line_no += 1,
                    // Checked before the run: the file changed since.
                    LineRead::TooLong => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            InputError::LineTooLong {
                                path: path.clone(),
                                line: *line_no + 1,
                            }
                            .to_string(),
                        ));
                    }
                }
                let (lead, len) = {
                    let line = &buf[start..];
                    let trimmed = line.trim_ascii();
                    (
                        trimmed.as_ptr() as usize - line.as_ptr() as usize,
                        trimmed.len(),
                    )
                };
                if len == 0 {
                    buf.truncate(start);
                    continue;
                }
                if lead > 0 {
                    buf.copy_within(start + lead..start + lead + len, start);
                }
                buf.truncate(start + len);
                return Ok(true);
            }
        })
    }
}

/// What [`check_file`] learned about an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCheck {
    /// Number of values (non-blank lines).
    pub count: u64,
    /// SHA-256 of the file's bytes, in hex (for the resume fingerprint: one read of the file
    /// serves both).
    pub sha256: String,
}

/// Checks every line of an input file, counts its values and hashes it (before any worker
/// starts).
pub fn check_file(path: &Path) -> Result<FileCheck, InputError> {
    let file = open_regular(path)?;
    let mut lines = JsonLines {
        reader: BufReader::with_capacity(1 << 16, Hashing::new(file)),
        buf: Vec::new(),
        line: 0,
    };
    let mut count = 0;
    loop {
        let next = lines.next_line().map_err(|source| InputError::Io {
            path: path.to_owned(),
            source,
        })?;
        let line = match next {
            Next::End => break,
            Next::TooLong => {
                return Err(InputError::LineTooLong {
                    path: path.to_owned(),
                    line: lines.line,
                });
            }
            Next::AfterBlank(line) => {
                return Err(InputError::BlankLine {
                    path: path.to_owned(),
                    line,
                });
            }
            Next::Line(line) => line,
        };
        // serde_json skips over the bytes of strings it does not keep: check UTF-8 first.
        if let Err(e) = std::str::from_utf8(line) {
            return Err(InputError::NotUtf8 {
                path: path.to_owned(),
                line: lines.line,
                offset: e.valid_up_to(),
            });
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(line) {
            return Err(InputError::Malformed {
                path: path.to_owned(),
                line: lines.line,
                message: e.to_string(),
            });
        }
        count += 1;
    }
    let digest = lines.reader.into_inner().hasher.finalize();
    Ok(FileCheck {
        count,
        sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// One line of a stage output file, borrowing the output's JSON text.
#[derive(Deserialize)]
struct OutputLine<'a> {
    index: u64,
    /// Present (even when it is `null`) or not.
    #[serde(borrow, default, deserialize_with = "present")]
    output: Option<&'a RawValue>,
    error: Option<serde::de::IgnoredAny>,
}

/// A field that is there, whatever its value: `Option<&RawValue>` alone reads `null` as absent.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

struct FromSource {
    path: PathBuf,
    /// Hashes what it reads: at the end, the file must be the one the stage finished.
    reader: BufReader<Hashing<File>>,
    expected_sha256: Option<String>,
    line_no: u64,
    /// The index of the record the last input came from.
    source: Option<u64>,
}

impl InputSource for FromSource {
    fn source(&self) -> Option<u64> {
        self.source
    }

    /// Reads the record straight into the frame and moves its output to the front (in place):
    /// a big output costs its size once, not a line buffer and a copy.
    fn next_into(&mut self, frame: &mut FrameBuf) -> io::Result<bool> {
        let Self {
            path,
            reader,
            expected_sha256,
            line_no,
            source,
        } = self;
        frame.put_bytes_with(|buf| {
            let start = buf.len();
            loop {
                buf.truncate(start);
                match read_line(reader, buf, max_record_bytes())? {
                    LineRead::End => {
                        let digest = std::mem::take(&mut reader.get_mut().hasher).finalize();
                        let actual: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                        if expected_sha256.take().is_some_and(|e| e != actual) {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!(
                                    "{} changed after the stage it holds finished (its SHA-256 is not the one in the manifest): rerun that stage",
                                    path.display()
                                ),
                            ));
                        }
                        return Ok(false);
                    }
                    LineRead::Line => *line_no += 1,
                    LineRead::TooLong => {
                        *line_no += 1;
                        return Err(damaged(path, *line_no, "the line is too long".into()));
                    }
                }
                let record: OutputLine<'_> = match serde_json::from_slice(buf[start..].trim_ascii())
                {
                    Ok(record) => record,
                    Err(e) => {
                        // serde's "at line 1 column C" is about the record's own text.
                        let what = format!("{} at column {}", describe_json_error(&e), e.column());
                        return Err(damaged(path, *line_no, what));
                    }
                };
                if record.index != *line_no - 1 {
                    let what = format!("index {} where {} belongs", record.index, *line_no - 1);
                    return Err(damaged(path, *line_no, what));
                }
                match (record.output, record.error.is_some()) {
                    (Some(output), false) => {
                        let text = output.get().as_bytes();
                        let (at, len) = (text.as_ptr() as usize - buf.as_ptr() as usize, text.len());
                        *source = Some(record.index);
                        buf.copy_within(at..at + len, start);
                        buf.truncate(start + len);
                        return Ok(true);
                    }
                    // Failed items of the earlier stage are skipped.
                    (None, true) => {}
                    _ => {
                        let what = "neither an output nor an error".into();
                        return Err(damaged(path, *line_no, what));
                    }
                }
            }
        })
    }
}

/// A line of the earlier stage's output that is not one of its records: the file was damaged
/// or changed after that stage finished.
fn damaged(path: &Path, line_no: u64, what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}:{line_no}: not a record of the stage it holds ({what}); the file was changed after that stage finished: rerun it (`--resume --force`, or without --resume)",
            path.display(),
        ),
    )
}

/// A serde_json error without its position.
fn describe_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Cursor, tag};

    fn drain(mut source: Box<dyn InputSource>) -> Vec<String> {
        let mut frame = FrameBuf::new();
        frame.begin(tag::CHUNK);
        let mut n = 0;
        while source.next_into(&mut frame).unwrap() {
            n += 1;
        }
        let bytes = frame.finish().to_vec();
        let mut c = Cursor::new(&bytes[5..]);
        (0..n)
            .map(|_| String::from_utf8(c.bytes().unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn ranges_and_items() {
        assert_eq!(
            drain(open(&InputSpec::Range { start: -1, end: 2 }, None).unwrap()),
            ["-1", "0", "1"]
        );
        let items = InputSpec::Items(vec![serde_json::json!({"a": 1}), serde_json::json!("x")]);
        assert_eq!(drain(open(&items, None).unwrap()), ["{\"a\":1}", "\"x\""]);
    }

    #[test]
    fn files_allow_blank_lines_only_at_the_end_and_report_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("in.jsonl");
        std::fs::write(&good, "1\n  {\"a\": [1, 2]}  \r\n\"s\"\n\n  \n").unwrap();
        let checked = check_file(&good).unwrap();
        assert_eq!(checked.count, 3);
        assert_eq!(
            checked.sha256,
            crate::manifest::sha256_file(&good).unwrap(),
            "the same digest as hashing the file alone"
        );
        assert_eq!(
            drain(open(&InputSpec::File(good), None).unwrap()),
            ["1", "{\"a\": [1, 2]}", "\"s\""]
        );
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, "1\n2\n{oops\n").unwrap();
        match check_file(&bad) {
            Err(InputError::Malformed { line, .. }) => assert_eq!(line, 3),
            other => panic!("{other:?}"),
        }
        // A blank line between values would shift every record after it.
        std::fs::write(&bad, "1\n2\n \n\n3\n").unwrap();
        match check_file(&bad) {
            Err(InputError::BlankLine { line, .. }) => assert_eq!(line, 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lines_are_bounded_and_whole() {
        let mut r = BufReader::with_capacity(4, &b"abc\ndefghij\nk"[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf, 5).unwrap(), LineRead::Line);
        assert_eq!(buf, b"abc");
        buf.clear();
        // Over the limit: dropped, and the reader is past it.
        assert_eq!(read_line(&mut r, &mut buf, 5).unwrap(), LineRead::TooLong);
        assert!(buf.is_empty());
        // (the rest of the long line is read and dropped as a line of its own)
        let mut rest = Vec::new();
        while read_line(&mut r, &mut rest, 5).unwrap() != LineRead::End {
            rest.push(b'|');
        }
        assert!(
            rest.ends_with(b"k|"),
            "{:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    #[test]
    fn non_regular_files_and_invalid_utf8_are_refused() {
        match check_file(Path::new("/dev/zero")) {
            Err(InputError::NotRegular { kind, .. }) => assert_eq!(kind, "a character device"),
            other => panic!("{other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, b"\"ok\"\n\"\xff\xfe\"\n").unwrap();
        match check_file(&bad) {
            Err(InputError::NotUtf8 { line, offset, .. }) => assert_eq!((line, offset), (2, 1)),
            other => panic!("{other:?}"),
        }
        assert!(check_file(dir.path()).is_err(), "a directory");
    }

    #[test]
    fn from_names_the_file_and_line_of_a_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let prev = dir.path().join("prev.jsonl");
        std::fs::write(
            &prev,
            "{\"index\":0,\"output\":null}\n{\"index\":1,\"output\":12x}\n",
        )
        .unwrap();
        let mut source = open(&InputSpec::From("prev".into()), Some((&prev, None))).unwrap();
        let mut frame = FrameBuf::new();
        frame.begin(tag::CHUNK);
        assert!(
            source.next_into(&mut frame).unwrap(),
            "a null output is an output"
        );
        let err = source.next_into(&mut frame).unwrap_err().to_string();
        assert!(err.contains("prev.jsonl:2:"), "{err}");
        // A record whose index is not its line's: a cut or a copy went wrong.
        std::fs::write(
            &prev,
            "{\"index\":0,\"output\":1}\n{\"index\":5,\"output\":2}\n",
        )
        .unwrap();
        let mut source = open(&InputSpec::From("prev".into()), Some((&prev, None))).unwrap();
        assert!(source.next_into(&mut frame).unwrap());
        let err = source.next_into(&mut frame).unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("index 5"), "{err}");
    }

    #[test]
    fn from_takes_outputs_and_skips_failures() {
        let dir = tempfile::tempdir().unwrap();
        let prev = dir.path().join("prev.jsonl");
        std::fs::write(
            &prev,
            "{\"index\":0,\"output\":{\"x\":1}}\n{\"index\":1,\"error\":{\"kind\":\"panic\",\"message\":\"m\"}}\n{\"index\":2,\"output\":9}\n",
        )
        .unwrap();
        let spec = InputSpec::From("prev".into());
        // The second input came from record 2 (record 1 failed).
        let mut source = open(&spec, Some((&prev, None))).unwrap();
        let mut frame = FrameBuf::new();
        frame.begin(tag::CHUNK);
        let mut sources = Vec::new();
        while source.next_into(&mut frame).unwrap() {
            sources.push(source.source());
        }
        assert_eq!(sources, [Some(0), Some(2)]);
        assert_eq!(
            drain(open(&spec, Some((&prev, None))).unwrap()),
            ["{\"x\":1}", "9"]
        );
    }
}

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
use crate::protocol::FrameBuf;

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
}

/// Yields inputs in order, appending each to a frame as a length-prefixed JSON text.
pub trait InputSource {
    /// Appends the next input to `frame`; `false` once the source is exhausted.
    fn next_into(&mut self, frame: &mut FrameBuf) -> io::Result<bool>;
}

/// Opens the source of a stage. `from_file` is the output file of the stage named by `from`.
pub fn open(spec: &InputSpec, from_file: Option<&Path>) -> io::Result<Box<dyn InputSource>> {
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
            lines: JsonLines::open(path)?,
        }),
        InputSpec::From(_) => {
            let path = from_file.expect("the plan passes the file of a `from` stage");
            Box::new(FromSource {
                reader: BufReader::with_capacity(1 << 16, File::open(path)?),
                line: Vec::new(),
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
        Ok(Self {
            reader: BufReader::with_capacity(1 << 16, File::open(path)?),
            buf: Vec::new(),
            line: 0,
        })
    }
}

impl<R: Read> JsonLines<R> {
    /// The next non-blank line (trimmed), or `None` at the end.
    fn next_line(&mut self) -> io::Result<Option<&[u8]>> {
        loop {
            self.buf.clear();
            if self.reader.read_until(b'\n', &mut self.buf)? == 0 {
                return Ok(None);
            }
            self.line += 1;
            let trimmed = self.buf.trim_ascii();
            if !trimmed.is_empty() {
                let (start, len) = (
                    trimmed.as_ptr() as usize - self.buf.as_ptr() as usize,
                    trimmed.len(),
                );
                return Ok(Some(&self.buf[start..start + len]));
            }
        }
    }
}

struct LinesSource {
    lines: JsonLines,
}

impl InputSource for LinesSource {
    /// Reads the line straight into the frame (one copy of each input byte less than going
    /// through a line buffer: it matters for large values).
    fn next_into(&mut self, frame: &mut FrameBuf) -> io::Result<bool> {
        let reader = &mut self.lines.reader;
        let line_no = &mut self.lines.line;
        frame.put_bytes_with(|buf| {
            let start = buf.len();
            loop {
                if reader.read_until(b'\n', buf)? == 0 {
                    return Ok(false);
                }
                *line_no += 1;
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
    let io_err = |source| InputError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut lines = JsonLines {
        reader: BufReader::with_capacity(1 << 16, Hashing::new(file)),
        buf: Vec::new(),
        line: 0,
    };
    let mut count = 0;
    while let Some(line) = lines.next_line().map_err(io_err)? {
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
    #[serde(borrow)]
    output: Option<&'a RawValue>,
}

struct FromSource {
    reader: BufReader<File>,
    line: Vec<u8>,
}

impl InputSource for FromSource {
    fn next_into(&mut self, frame: &mut FrameBuf) -> io::Result<bool> {
        loop {
            self.line.clear();
            if self.reader.read_until(b'\n', &mut self.line)? == 0 {
                return Ok(false);
            }
            let record: OutputLine<'_> = serde_json::from_slice(self.line.trim_ascii())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            // Failed items of the earlier stage are skipped.
            if let Some(output) = record.output {
                frame.put_bytes(output.get().as_bytes());
                return Ok(true);
            }
        }
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
    fn files_skip_blank_lines_and_report_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("in.jsonl");
        std::fs::write(&good, "1\n\n  {\"a\": [1, 2]}  \r\n\"s\"\n\n  \n").unwrap();
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
        assert_eq!(drain(open(&spec, Some(&prev)).unwrap()), ["{\"x\":1}", "9"]);
    }
}

//! Stage results: `<output_dir>/<stage>.jsonl`, one line per input, in input order.
//!
//! Results arrive in completion order; a small reorder buffer holds those that are ahead of the
//! next index to write. The dispatcher bounds that buffer (it stops handing out inputs far ahead
//! of the write position), so memory stays flat whatever the number of tasks.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Why an item has no output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    TaskError,
    Panic,
    Crashed,
    Timeout,
    Initializer,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::TaskError => "task_error",
            ErrorKind::Panic => "panic",
            ErrorKind::Crashed => "crashed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Initializer => "initializer",
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

pub struct OrderedWriter {
    path: PathBuf,
    out: BufWriter<File>,
    /// The next index to write.
    next: u64,
    pending: BTreeMap<u64, Vec<u8>>,
    pending_bytes: usize,
}

impl OrderedWriter {
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = File::create(path)?;
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::with_capacity(1 << 16, file),
            next: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lowest index not yet written.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Bytes held in the reorder buffer.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    pub fn ok(&mut self, index: u64, output: &[u8]) -> io::Result<()> {
        if index == self.next {
            write_ok(&mut self.out, index, output)?;
            self.advance()
        } else {
            let mut line = Vec::with_capacity(output.len() + 32);
            write_ok(&mut line, index, output)?;
            self.hold(index, line);
            Ok(())
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
            self.hold(index, line);
            Ok(())
        }
    }

    fn hold(&mut self, index: u64, line: Vec<u8>) {
        self.pending_bytes += line.len();
        self.pending.insert(index, line);
    }

    fn advance(&mut self) -> io::Result<()> {
        self.next += 1;
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

    /// Writes what is held (after a stop, some indices may never come) and makes it durable.
    pub fn finish(mut self) -> io::Result<()> {
        for (_, line) in std::mem::take(&mut self.pending) {
            self.out.write_all(&line)?;
        }
        self.out.flush()?;
        self.out.get_ref().sync_all()
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
}

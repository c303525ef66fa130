//! Everything the runner prints while it runs goes through here: forwarded worker output,
//! warnings, and (later) progress bars, so lines never interleave mid-line.

use std::io::{self, Write};
use std::sync::Mutex;

/// How chatty the runner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

pub struct Console {
    verbosity: Verbosity,
    lock: Mutex<()>,
}

impl Console {
    pub fn new(verbosity: Verbosity) -> Self {
        Self {
            verbosity,
            lock: Mutex::new(()),
        }
    }

    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// One line a worker wrote to its stdout or stderr, prefixed with the worker id.
    pub fn worker_line(&self, worker: u32, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut buf = Vec::with_capacity(line.len() + 16);
        let _ = write!(buf, "[worker {worker}] ");
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.write_raw(&buf);
    }

    /// A status line (suppressed by `-q`).
    pub fn info(&self, msg: &str) {
        if self.verbosity >= Verbosity::Normal {
            self.write_raw(format!("{msg}\n").as_bytes());
        }
    }

    /// A detail shown with `-v`.
    pub fn debug(&self, msg: &str) {
        if self.verbosity >= Verbosity::Verbose {
            self.write_raw(format!("{msg}\n").as_bytes());
        }
    }

    pub fn warn(&self, msg: &str) {
        self.write_raw(format!("warning: {msg}\n").as_bytes());
    }

    pub fn error(&self, msg: &str) {
        self.write_raw(format!("error: {msg}\n").as_bytes());
    }

    fn write_raw(&self, bytes: &[u8]) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut err = io::stderr().lock();
        let _ = err.write_all(bytes);
        let _ = err.flush();
    }
}

//! The errors a run can end with, and the exit code each maps to (SPEC §2).

use crate::config::ConfigError;
use crate::run::{PlanError, RunError};

/// Exit code of a run-level I/O failure (a full disk, an unwritable or unreadable file of the
/// run): `EX_IOERR` of sysexits.h.
pub const EXIT_IO: i32 = 74;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline file, environment or `--set` is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Plugins, tasks or inputs do not check out.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The run itself failed (not a task): its output directory, its files, its workers.
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{0}")]
    Usage(String),
    /// `status` found no run it can read.
    #[error(transparent)]
    Status(#[from] crate::status::StatusError),
    /// `report` found no run it can read, or could not write the report.
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    /// Something failed while running (a disk error, a process that could not start).
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// Standard output could not be written (other than a closed pipe, see
    /// [`Error::ClosedPipe`]).
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] std::io::Error),
    /// Standard output is a closed pipe (`loky-run schema | head`): the reader has all it
    /// wanted. The command stops printing and exits 0 without a message, as `cat` or ripgrep do.
    #[error("standard output is a closed pipe")]
    ClosedPipe,
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Plan(_) | Error::Usage(_) => 2,
            Error::Run(RunError::OutputDir { source, .. }) if is_device_error(source) => EXIT_IO,
            Error::Run(e) if e.is_usage() => 2,
            Error::Run(RunError::Io { .. }) | Error::Io { .. } | Error::Stdout(_) => EXIT_IO,
            Error::Run(_) => 1,
            Error::Status(crate::status::StatusError::Read { .. }) => EXIT_IO,
            Error::Status(_) => 2,
            Error::Report(e) => e.exit_code(),
            Error::ClosedPipe => 0,
        }
    }

    /// Whether this error is printed at all: a closed standard output is not news to anyone.
    pub fn is_silent(&self) -> bool {
        matches!(self, Error::ClosedPipe)
    }

    /// A write to standard output failed: a closed pipe ends the command quietly.
    pub fn stdout(source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::BrokenPipe {
            Error::ClosedPipe
        } else {
            Error::Stdout(source)
        }
    }
}

/// A failure of the disk rather than of the path chosen: full, over quota, or an I/O error.
fn is_device_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EIO)
    )
}

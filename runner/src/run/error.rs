//! How a run can fail on its own (as opposed to its tasks failing, which are records).

use std::path::PathBuf;

use crate::pool::PoolError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The output directory cannot be created or written (found before any worker starts).
    #[error("output directory {} is not writable: {source}", path.display())]
    OutputDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `--resume`/`--force` cannot do what was asked, or another run holds the directory.
    #[error("{0}")]
    Refused(String),
    /// Reading or writing a file of the run failed (an input, an output, the manifest).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        source: std::io::Error,
        /// The run had started (its manifest was written) and its results so far are
        /// recorded: `--resume` finishes it.
        resumable: bool,
    },
    /// Workers could not be started.
    #[error("stage {stage}: {source}")]
    Pool { stage: String, source: PoolError },
}

impl RunError {
    /// An I/O error before the run started (nothing recorded yet), with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| RunError::Io {
            context,
            source,
            resumable: false,
        }
    }

    /// An I/O error once the run has started: what it recorded stays, `--resume` finishes it.
    pub fn io_in_run(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| RunError::Io {
            context,
            source,
            resumable: true,
        }
    }

    /// Bad usage (exit 2): nothing was run.
    pub fn is_usage(&self) -> bool {
        matches!(self, RunError::OutputDir { .. } | RunError::Refused(_))
    }

    /// Whether `--resume` can finish the run this error ended: it had started, and what it
    /// recorded is kept.
    pub fn is_resumable(&self) -> bool {
        match self {
            RunError::Io { resumable, .. } => *resumable,
            RunError::Pool { .. } => true,
            RunError::OutputDir { .. } | RunError::Refused(_) => false,
        }
    }
}

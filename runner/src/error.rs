//! The errors a run can end with, and the exit code each maps to (SPEC §2).

use crate::config::ConfigError;
use crate::run::{PlanError, RunError};

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
    /// Something failed while running (a disk error, a process that could not start).
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Plan(_) | Error::Usage(_) => 2,
            Error::Run(e) if e.is_usage() => 2,
            Error::Run(_) | Error::Io { .. } => 1,
        }
    }
}

//! The errors a run can end with, and the exit code each maps to (SPEC §2).

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::run::PlanError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline file, environment or `--set` is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Plugins, tasks or inputs do not check out.
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("output directory {} is not writable: {source}", path.display())]
    OutputDir {
        path: PathBuf,
        source: std::io::Error,
    },
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
            Error::Config(_) | Error::Plan(_) | Error::OutputDir { .. } | Error::Usage(_) => 2,
            Error::Io { .. } => 1,
        }
    }
}

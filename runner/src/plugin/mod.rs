//! Plugins: finding them on disk ([`resolve`]), loading them into a worker ([`host`]), and
//! reading what they export from a throw-away process ([`probe`]), so that a plugin that crashes
//! while loading takes down a probe, never the runner.

pub mod host;
pub mod probe;
pub mod resolve;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What a plugin exports, as seen by the runner.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PluginInfo {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    /// The loky-run-plugin version the plugin was built against.
    pub api_version: String,
    pub tasks: Vec<TaskInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskInfo {
    pub name: String,
    pub kind: TaskKind,
    pub input_type: String,
    pub output_type: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Task,
    Initializer,
}

impl PluginInfo {
    /// Index of the function called `name` of the given kind.
    pub fn find(&self, name: &str, kind: TaskKind) -> Option<u32> {
        self.tasks
            .iter()
            .position(|t| t.name == name && t.kind == kind)
            .map(|i| i as u32)
    }

    pub fn names(&self, kind: TaskKind) -> Vec<&str> {
        self.tasks
            .iter()
            .filter(|t| t.kind == kind)
            .map(|t| t.name.as_str())
            .collect()
    }
}

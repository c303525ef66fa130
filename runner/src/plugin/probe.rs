//! Reading a plugin's exports from a separate, short-lived process.
//!
//! The runner must know every task before it starts a worker (an unknown task is a configuration
//! error), but loading a plugin runs arbitrary code. A probe process (`loky-run __probe PATH`)
//! takes that risk: if the plugin crashes while loading, the probe dies, and the runner reports
//! the plugin's path and the signal.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{PluginInfo, host};
use crate::sys;

/// The hidden subcommand that runs a probe.
pub const PROBE_ARG: &str = "__probe";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Load(String),
    #[error("plugin {} crashed while loading ({how})", path.display())]
    Crashed { path: PathBuf, how: String },
    #[error("could not start a process to load plugin {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ProbeReply {
    Ok(PluginInfo),
    Error(String),
}

/// Runs in the probe process: load, print one JSON reply on stdout.
pub fn probe_main(path: &Path, verbose: bool) -> i32 {
    let reply = match host::load(path, verbose) {
        Ok(plugin) => ProbeReply::Ok(plugin.info),
        Err(e) => ProbeError::Load(e.to_string()).into_reply(),
    };
    match serde_json::to_string(&reply) {
        // A runner that went away (a closed pipe) gets nothing: no panic, exit 3.
        Ok(line) => match crate::console::write_stdout(format!("{line}\n").as_bytes()) {
            Ok(()) => 0,
            Err(_) => 3,
        },
        Err(_) => 3,
    }
}

impl ProbeError {
    fn into_reply(self) -> ProbeReply {
        ProbeReply::Error(self.to_string())
    }
}

/// Loads `path` in a probe process and returns what it exports.
pub fn probe(path: &Path, verbose: bool) -> Result<PluginInfo, ProbeError> {
    let mut cmd = Command::new(sys::current_exe());
    cmd.arg(PROBE_ARG)
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if verbose {
        cmd.arg("-v");
    }
    let output = cmd.output().map_err(|source| ProbeError::Spawn {
        path: path.to_owned(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The plugin may print while loading: the reply is the last line.
    if let Some(reply) = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<ProbeReply>(l).ok())
    {
        return match reply {
            ProbeReply::Ok(info) => Ok(info),
            ProbeReply::Error(message) => Err(ProbeError::Load(message)),
        };
    }
    let how = sys::describe_exit(output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!("; it printed: {}", l.trim()));
    Err(ProbeError::Crashed {
        path: path.to_owned(),
        how: format!("{how}{}", last.unwrap_or_default()),
    })
}

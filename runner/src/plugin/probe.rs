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
    Ok {
        info: PluginInfo,
        /// One per input asked to be checked: `None` when it decodes (or the plugin cannot
        /// say), else the message.
        checks: Vec<Option<String>>,
    },
    Error(String),
}

/// An input to decode (not run) in the probe: the function's index and the JSON text.
pub type Check = (u32, String);

/// Runs in the probe process: load, decode the inputs given as JSON on stdin (a list of
/// [`Check`]s; none when stdin is empty), print one JSON reply on stdout.
pub fn probe_main(path: &Path, verbose: bool) -> i32 {
    use std::io::Read as _;
    let mut asked = String::new();
    let _ = std::io::stdin().take(1 << 30).read_to_string(&mut asked);
    let asked: Vec<Check> = serde_json::from_str(&asked).unwrap_or_default();
    let reply = match host::load(path, verbose) {
        Ok(plugin) => {
            let checks = asked
                .iter()
                .map(|(index, input)| {
                    let mut out = abi_stable::std_types::RVec::new();
                    match plugin.check_input(*index, input.as_bytes(), &mut out) {
                        Some(status) if status != loky_run_plugin::CallStatus::OK => {
                            Some(String::from_utf8_lossy(&out).into_owned())
                        }
                        _ => None,
                    }
                })
                .collect();
            ProbeReply::Ok {
                info: plugin.info,
                checks,
            }
        }
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

/// What [`probe`] says, remembered between runs for this version of the plugin file and of
/// this runner (see [`crate::hash_cache`]): a plugin that loaded before, unchanged, is not
/// loaded again in a probe process before every run (about 1.5 ms of a 2-task run).
pub fn probe_remembered(path: &Path, verbose: bool) -> Result<PluginInfo, ProbeError> {
    let also = format!(
        "{} {}",
        crate::hash_cache::this_runner(),
        loky_run_plugin::API_VERSION
    );
    let mut failure = None;
    let remembered = crate::hash_cache::cached(
        "probe-v1.tsv",
        path,
        &also,
        |json| serde_json::from_str::<PluginInfo>(json).is_ok(),
        || match probe(path, verbose) {
            Ok(info) => serde_json::to_string(&info).map_err(std::io::Error::other),
            Err(e) => {
                failure = Some(e);
                Err(std::io::Error::other("probe failed"))
            }
        },
    );
    if let Some(e) = failure {
        return Err(e);
    }
    match remembered
        .ok()
        .and_then(|json| serde_json::from_str::<PluginInfo>(&json).ok())
    {
        // The same file may be reached by another path (a link): the path is this one.
        Some(info) => Ok(PluginInfo {
            path: path.to_owned(),
            ..info
        }),
        None => probe(path, verbose),
    }
}

/// Loads `path` in a probe process and returns what it exports.
pub fn probe(path: &Path, verbose: bool) -> Result<PluginInfo, ProbeError> {
    probe_checking(path, verbose, &[]).map(|(info, _)| info)
}

/// Like [`probe`], and decodes `checks` (without running anything): for each, `None` or why
/// it does not decode.
pub fn probe_checking(
    path: &Path,
    verbose: bool,
    checks: &[Check],
) -> Result<(PluginInfo, Vec<Option<String>>), ProbeError> {
    use std::io::Write as _;
    let mut cmd = Command::new(sys::current_exe());
    cmd.arg(PROBE_ARG)
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if verbose {
        cmd.arg("-v");
    }
    let spawn_error = |source| ProbeError::Spawn {
        path: path.to_owned(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        let asked = serde_json::to_vec(checks).unwrap_or_default();
        // A probe that died early closed its stdin: what it printed says why.
        let _ = stdin.write_all(if checks.is_empty() { b"" } else { &asked });
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The plugin may print while loading: the reply is the last line.
    if let Some(reply) = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<ProbeReply>(l).ok())
    {
        return match reply {
            ProbeReply::Ok { info, checks } => Ok((info, checks)),
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

//! `<output_dir>/manifest.json`: what is needed to reproduce a run.
//!
//! Written when the run starts (status `running`) and rewritten after every stage and at the
//! end, each time atomically (write a temporary file, then rename), so it is never torn.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Pipeline;
use crate::plugin::PluginInfo;

#[derive(Debug, Serialize)]
pub struct Manifest {
    pub runner_version: &'static str,
    pub plugin_api_version: &'static str,
    /// `running`, `succeeded`, `failed`, `interrupted`.
    pub status: &'static str,
    pub exit_code: Option<i32>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub pipeline_file: PathBuf,
    pub pipeline_sha256: String,
    pub plugins: Vec<PluginRecord>,
    pub stages: Vec<StageRecord>,
    /// The resolved configuration (after defaults, environment and `--set`).
    pub config: Pipeline,
}

#[derive(Debug, Serialize)]
pub struct PluginRecord {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub version: String,
    pub api_version: String,
}

#[derive(Debug, Serialize)]
pub struct StageRecord {
    pub name: String,
    pub task: String,
    pub output: String,
    pub tasks: u64,
    pub ok: u64,
    pub failed: u64,
    pub retried: u64,
    pub not_run: u64,
    pub wall_time_s: f64,
    pub pool_decision: DecisionRecord,
}

#[derive(Debug, Serialize)]
pub struct DecisionRecord {
    pub decision: &'static str,
    pub from: usize,
    pub to: usize,
    pub reason: String,
}

impl Manifest {
    pub fn new(pipeline: &Pipeline, plugins: &[PluginInfo]) -> io::Result<Self> {
        let plugins = plugins
            .iter()
            .map(|p| {
                Ok(PluginRecord {
                    name: p.name.clone(),
                    path: p.path.clone(),
                    sha256: sha256_file(&p.path)?,
                    version: p.version.clone(),
                    api_version: p.api_version.clone(),
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            runner_version: env!("CARGO_PKG_VERSION"),
            plugin_api_version: plugin_api::API_VERSION,
            status: "running",
            exit_code: None,
            started_at: crate::events::now_rfc3339(),
            finished_at: None,
            pipeline_file: pipeline.file.clone(),
            pipeline_sha256: sha256_file(&pipeline.file)?,
            plugins,
            stages: Vec::new(),
            config: pipeline.clone(),
        })
    }

    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join(".manifest.json.tmp");
        // One write: serde_json writes in small pieces, each a syscall on an unbuffered file.
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        let mut f = File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join("manifest.json"))
    }
}

pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut reader = BufReader::new(File::open(path)?);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

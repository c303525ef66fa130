//! Helpers for end-to-end tests: the real `loky-run` binary, real plugins, temp directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// Builds the test plugins once per test process (a no-op when they are up to date), so that
/// `cargo test` alone is enough.
pub(crate) fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "demo", "-p", "faults"])
            .current_dir(workspace_root())
            .stdout(Stdio::null())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the test plugins failed");
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_loky-run"));
        let dir = exe.parent().unwrap().to_owned();
        assert!(
            dir.join("libdemo.so").is_file(),
            "libdemo.so not next to {}",
            exe.display()
        );
        dir
    })
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub(crate) fn plugin_path(name: &str) -> PathBuf {
    plugin_dir().join(format!("lib{name}.so"))
}

/// A temporary directory holding pipelines and their outputs.
pub(crate) struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        plugin_dir();
        Self {
            dir: tempfile::Builder::new()
                .prefix("loky-e2e-")
                .tempdir()
                .unwrap(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `pipeline.toml` (or another name) and returns its path.
    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `loky-run ARGS...` in the fixture directory, without progress bars.
    pub(crate) fn run(&self, args: &[&str]) -> RunResult {
        let mut cmd = self.command();
        cmd.args(args);
        if args
            .first()
            .is_some_and(|a| *a == "run" || a.ends_with(".toml"))
        {
            cmd.args(["--progress", "never"]);
        }
        RunResult::from(cmd.output().unwrap())
    }

    /// Like [`Self::run`], but a run that does not end within `limit` is killed and fails the
    /// test (for the cases that used to loop forever).
    #[track_caller]
    pub(crate) fn run_within(&self, args: &[&str], limit: std::time::Duration) -> RunResult {
        self.run_within_env(args, limit, &[])
    }

    /// Like [`Self::run_within`], with more environment variables (`LOKY_RUN_TEST_*` limits).
    #[track_caller]
    pub(crate) fn run_within_env(
        &self,
        args: &[&str],
        limit: std::time::Duration,
        env: &[(&str, &str)],
    ) -> RunResult {
        let mut cmd = self.command();
        cmd.envs(env.iter().copied());
        cmd.args(args)
            .args(["--progress", "never"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut text);
                }
                String::from_utf8_lossy(&text).into_owned()
            })
        };
        let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
        let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
        let Some(status) = status else {
            panic!("loky-run did not end within {limit:?}\n--- stderr\n{stderr}");
        };
        RunResult {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        }
    }

    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_loky-run"));
        cmd.current_dir(self.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("LOKY_") {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    /// The records of `<output_dir>/<stage>.jsonl` (output_dir `out` by default in tests).
    pub(crate) fn records(&self, stage: &str) -> Vec<Value> {
        read_jsonl(&self.path().join("out").join(format!("{stage}.jsonl")))
    }

    pub(crate) fn outputs(&self, stage: &str) -> Vec<Value> {
        self.records(stage)
            .into_iter()
            .map(|r| r["output"].clone())
            .collect()
    }

    pub(crate) fn events(&self) -> Vec<Value> {
        read_jsonl(&self.path().join("events.jsonl"))
    }
}

pub(crate) fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

pub(crate) struct RunResult {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for RunResult {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl RunResult {
    #[track_caller]
    pub(crate) fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts stderr mentions every fragment (case-sensitive).
    #[track_caller]
    pub(crate) fn assert_stderr_has(&self, fragments: &[&str]) -> &Self {
        for f in fragments {
            assert!(
                self.stderr.contains(f),
                "stderr lacks {f:?}:\n{}",
                self.stderr
            );
        }
        self
    }
}

/// A pipeline header using the test plugins, writing to `out/`.
pub(crate) fn header(name: &str, extra_pool: &str) -> String {
    format!(
        "[pipeline]\nname = \"{name}\"\nplugins = [\"{}\", \"{}\"]\noutput_dir = \"out\"\n\n[pool]\n{extra_pool}\n",
        plugin_path("demo").display(),
        plugin_path("faults").display()
    )
}

/// A `[[stage]]` table: `input` is TOML (`{ items = [...] }`), `extra` more keys.
pub(crate) fn stage(name: &str, task: &str, input: &str, extra: &str) -> String {
    format!("\n[[stage]]\nname = \"{name}\"\ntask = \"{task}\"\ninput = {input}\n{extra}\n")
}

/// Whether a process exists (and is not a zombie).
pub(crate) fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// PIDs of the workers started, from the event log.
pub(crate) fn started_pids(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["event"] == "worker_started")
        .map(|e| e["pid"].as_u64().unwrap())
        .collect()
}

/// Polls `check` until it returns `Some`, for at most 60 s (generous for a loaded machine).
#[track_caller]
pub(crate) fn wait_for<T>(mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits for a child process, killing it (and failing the test) if it runs past `limit`.
#[track_caller]
pub(crate) fn wait_within(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not end within {limit:?}", child.id());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A child process killed (and reaped) when the test lets go of it, panicking or not.
pub(crate) struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

//! The joblog (`--joblog FILE`, `[pipeline] joblog`): one JSON line per task attempt, like GNU
//! parallel's `--joblog` or Nextflow's trace file, readable as it is by jq, pandas and duckdb.
//!
//! Every line has the same keys, `null` where a value is not known:
//!
//! ```json
//! {"stage":"squares","index":3,"source":null,"attempt":1,"worker":2,"pid":4242,"host":"node1",
//!  "start":"2026-12-01T21:52:36.123456Z","duration_s":0.000152,"outcome":"ok","rss":4812800}
//! ```
//!
//! `outcome` is `ok` or the kind of the failure (`task_error`, `panic`, `crashed`, `timeout`,
//! `too_large`), or `lost`: the task ran, but its result was lost with its worker (a crash of
//! another task, a kill from outside); it runs again without counting an attempt. `start` and
//! `duration_s` are measured by the worker around the task call (wall clock, so comparable
//! between hosts); for a task its worker died in, they come from the runner. `rss` is the
//! worker's resident memory after the task, sampled at most every 50 ms (for a crash: its
//! peak). Lines are written as results arrive (not in index order) and reach the file with the
//! results they describe; a write that fails is reported at the end of the run.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// One attempt of one task.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub index: u64,
    pub source: Option<u64>,
    pub attempt: u32,
    pub worker: Option<u32>,
    pub pid: Option<u32>,
    pub host: Option<&'a str>,
    /// Microseconds since the Unix epoch.
    pub start_us: Option<u64>,
    pub duration_ns: Option<u64>,
    pub outcome: &'a str,
    pub rss: Option<u64>,
}

pub struct Joblog {
    path: PathBuf,
    out: BufWriter<File>,
    /// `{"stage":"NAME"` of the stage being logged, escaped once.
    stage: Vec<u8>,
    /// The line being formatted (reused: no allocation per line).
    line: Vec<u8>,
    failed: Option<io::Error>,
}

impl Joblog {
    /// Creates (or empties) the file; its directory is created if missing.
    pub fn create(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::with_capacity(1 << 16, File::create(path)?),
            stage: Vec::new(),
            line: Vec::with_capacity(256),
            failed: None,
        })
    }

    /// Appends to an existing file (a resumed run continues its joblog).
    pub fn append(path: &Path) -> io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::with_capacity(1 << 16, file),
            stage: Vec::new(),
            line: Vec::with_capacity(256),
            failed: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stage the next attempts belong to.
    pub fn set_stage(&mut self, stage: &str) {
        self.stage.clear();
        self.stage.extend_from_slice(b"{\"stage\":");
        json_string(&mut self.stage, stage);
    }

    pub fn record(&mut self, a: &Attempt<'_>) {
        if self.failed.is_some() {
            return;
        }
        self.line.clear();
        self.line.extend_from_slice(&self.stage);
        format_attempt(&mut self.line, a);
        if let Err(e) = self.out.write_all(&self.line) {
            self.failed = Some(e);
        }
    }

    /// Hands what was logged to the kernel (called with the results' own flush).
    pub fn flush(&mut self) {
        if self.failed.is_none() {
            if let Err(e) = self.out.flush() {
                self.failed = Some(e);
            }
        }
    }

    /// Why the joblog is incomplete, if a write failed.
    pub fn failure(&mut self) -> Option<String> {
        self.flush();
        self.failed.as_ref().map(ToString::to_string)
    }
}

/// The rest of a line after `{"stage":"NAME"`.
fn format_attempt(line: &mut Vec<u8>, a: &Attempt<'_>) {
    let mut digits = itoa::Buffer::new();
    let mut number = |line: &mut Vec<u8>, key: &str, value: Option<u64>| {
        line.extend_from_slice(key.as_bytes());
        match value {
            Some(v) => line.extend_from_slice(digits.format(v).as_bytes()),
            None => line.extend_from_slice(b"null"),
        }
    };
    number(line, ",\"index\":", Some(a.index));
    number(line, ",\"source\":", a.source);
    number(line, ",\"attempt\":", Some(u64::from(a.attempt)));
    number(line, ",\"worker\":", a.worker.map(u64::from));
    number(line, ",\"pid\":", a.pid.map(u64::from));
    line.extend_from_slice(b",\"host\":");
    match a.host {
        Some(host) => json_string(line, host),
        None => line.extend_from_slice(b"null"),
    }
    line.extend_from_slice(b",\"start\":");
    match a.start_us {
        Some(us) => {
            line.push(b'"');
            iso8601_micros(line, us);
            line.push(b'"');
        }
        None => line.extend_from_slice(b"null"),
    }
    line.extend_from_slice(b",\"duration_s\":");
    match a.duration_ns {
        Some(ns) => seconds(line, ns),
        None => line.extend_from_slice(b"null"),
    }
    line.extend_from_slice(b",\"outcome\":");
    json_string(line, a.outcome);
    number(line, ",\"rss\":", a.rss);
    line.extend_from_slice(b"}\n");
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    // Writing a string to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `ns` as seconds with 6 decimals (microseconds), without going through floats.
fn seconds(out: &mut Vec<u8>, ns: u64) {
    let us = ns / 1_000;
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(us / 1_000_000).as_bytes());
    out.push(b'.');
    let frac = us % 1_000_000;
    let text = digits.format(frac);
    out.extend(std::iter::repeat_n(b'0', 6 - text.len()));
    out.extend_from_slice(text.as_bytes());
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for `us` microseconds since the Unix epoch (UTC).
fn iso8601_micros(out: &mut Vec<u8>, us: u64) {
    let secs = us / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let two = |out: &mut Vec<u8>, v: u64| {
        out.push(b'0' + (v / 10) as u8);
        out.push(b'0' + (v % 10) as u8);
    };
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(y).as_bytes());
    out.push(b'-');
    two(out, m);
    out.push(b'-');
    two(out, d);
    out.push(b'T');
    two(out, rem / 3_600);
    out.push(b':');
    two(out, rem % 3_600 / 60);
    out.push(b':');
    two(out, rem % 60);
    out.push(b'.');
    let frac = digits.format(us % 1_000_000);
    out.extend(std::iter::repeat_n(b'0', 6 - frac.len()));
    out.extend_from_slice(frac.as_bytes());
    out.push(b'Z');
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_every_key() {
        let mut line = b"{\"stage\":\"s\"".to_vec();
        format_attempt(
            &mut line,
            &Attempt {
                index: 3,
                source: None,
                attempt: 2,
                worker: Some(5),
                pid: Some(4242),
                host: Some("node\"1"),
                start_us: Some(1_764_625_956_123_456),
                duration_ns: Some(1_500_000_999),
                outcome: "crashed",
                rss: Some(4096),
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["start"], "2025-12-01T21:52:36.123456Z");
        assert_eq!(v["duration_s"], 1.500_000);
        assert_eq!(v["host"], "node\"1");
        assert_eq!(v["source"], serde_json::Value::Null);
        assert_eq!(v.as_object().unwrap().len(), 11);
    }

    #[test]
    fn dates_match_humantime() {
        for secs in [0u64, 951_782_400, 1_709_164_800, 4_107_542_399] {
            let mut out = Vec::new();
            iso8601_micros(&mut out, secs * 1_000_000 + 7);
            let expected = humantime::format_rfc3339_micros(
                std::time::UNIX_EPOCH + std::time::Duration::from_micros(secs * 1_000_000 + 7),
            )
            .to_string();
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
        let mut out = Vec::new();
        seconds(&mut out, 42_000);
        assert_eq!(out, b"0.000042");
    }
}

//! `loky-run report OUTPUT_DIR [-o FILE.html]`: one self-contained HTML file about a run (inline
//! CSS and SVG, nothing fetched from anywhere): the stages, a timeline of every task attempt
//! per worker, throughput over time, task durations, the slowest tasks, every failure and the
//! workers' memory.
//!
//! Read-only, like `status` (whose [`crate::status::gather`] gives the stages and failures):
//! it works while a run goes on. Its sources: the manifest, the joblog (`--joblog`, named in the
//! manifest; without one there is no per-task part, and the report says so), and the event log
//! (`--events`, also named there) for the exact stage boundaries and pool restarts, else the
//! manifest's stage times and pool decisions. Reading ([`build`]) is kept apart from the model
//! ([`model`], pure) and from the HTML ([`html`]).

pub mod html;
pub mod model;

use std::borrow::Cow;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::joblog::Attempt;
use crate::status::{self, FailureLimit, RunState, StageStatusReport, Status, StatusError};
use model::{Builder, Frame, Logged, Timeline};

/// Where the report goes by default, in the output directory.
pub const DEFAULT_FILE: &str = "report.html";
/// What the report (and stderr) says when the run kept no joblog.
pub const NO_JOBLOG: &str = "per-task timeline needs a joblog: run with --joblog FILE (or `joblog = \"FILE\"` in [pipeline])";
/// Failures listed per stage; the rest are counted, with where to find them.
pub const FAILURES_PER_STAGE: usize = 1000;
/// The longest joblog or event line read (longer ones are skipped as unreadable).
const MAX_LINE: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No run there, or its manifest or outputs cannot be read.
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write the report {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

impl ReportError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ReportError::Status(StatusError::Read { .. }) => crate::error::EXIT_IO,
            ReportError::Status(_) => 2,
            ReportError::Read { .. } | ReportError::Write { .. } => crate::error::EXIT_IO,
        }
    }
}

/// A line across the charts at a moment of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// Seconds since the frame's start.
    pub at_s: f64,
    pub kind: MarkerKind,
    pub label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    StageStart,
    Restart,
    Resume,
}

/// When a stage ran (seconds since the frame's start), as far as anything says.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpan {
    pub name: String,
    pub start_s: Option<f64>,
    pub end_s: Option<f64>,
}

/// Everything the HTML shows.
#[derive(Debug, Clone)]
pub struct Report {
    pub status: Status,
    pub frame: Frame,
    pub spans: Vec<StageSpan>,
    pub markers: Vec<Marker>,
    /// `None` without a joblog.
    pub timeline: Option<Timeline>,
    /// What the report could not show, and why (also printed on stderr).
    pub notes: Vec<String>,
    /// Where the stage times came from: `events` or `manifest`.
    pub times_from: &'static str,
    pub generated_at: String,
}

/// The events the report reads (others are skipped unparsed).
#[derive(Debug, Clone, Deserialize)]
pub struct EventView {
    pub event: String,
    pub time: String,
    #[serde(default)]
    pub stage: Option<String>,
    #[serde(default)]
    pub decision: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Reads the run in `dir`.
pub fn build(dir: &Path) -> Result<Report, ReportError> {
    let status = status::gather(dir, FailureLimit::At(FAILURES_PER_STAGE))?;
    let now = SystemTime::now();
    let mut notes = Vec::new();

    let events = match status.events.as_deref().map(|p| locate(p, dir)) {
        Some(path) => named_file(read_events(&path), &path, &mut notes, |p| {
            format!("the event log {p} is gone: stage times come from the manifest")
        })?,
        None => None,
    }
    .unwrap_or_default();

    // The frame: from the run's start to its end (now, while it runs), widened to whatever the
    // joblog and the events hold (clocks of other hosts differ a little).
    let start_us = us_of(&status.started_at).unwrap_or_else(|| us_since_epoch(now));
    let end_us = match &status.finished_at {
        Some(at) => us_of(at),
        None if status.state == RunState::Running => Some(us_since_epoch(now)),
        None => None,
    };
    let mut frame = Frame {
        start_us,
        end_us: end_us.unwrap_or(start_us),
    };
    for e in &events {
        if let Some(us) = us_of(&e.time) {
            frame = frame.union(Frame {
                start_us: us,
                end_us: us,
            });
        }
    }
    for s in &status.stages {
        for at in [&s.started_at, &s.finished_at].into_iter().flatten() {
            if let Some(us) = us_of(at) {
                frame = frame.union(Frame {
                    start_us: us,
                    end_us: us,
                });
            }
        }
    }

    let timeline = match status.joblog.as_deref().map(|p| locate(p, dir)) {
        None => {
            notes.push(NO_JOBLOG.to_owned());
            None
        }
        Some(path) => {
            let read = named_file(
                read_joblog(&path, frame, &status.stages),
                &path,
                &mut notes,
                |p| format!("the joblog {p} named in the manifest is gone: {NO_JOBLOG}"),
            )?;
            read.map(|(timeline, unreadable)| {
                if unreadable > 0 {
                    notes.push(format!(
                        "{unreadable} line(s) of the joblog {} could not be read and are left out",
                        path.display()
                    ));
                }
                frame = timeline.frame;
                timeline
            })
        }
    };
    if let Some(t) = &timeline {
        if let Some(gap) = t.coalesced {
            let failures = if t.failures_drawn {
                "failed attempts are still drawn one by one, over them".to_owned()
            } else {
                format!(
                    "with more than {} failed attempts, those are counted in their spans \
                     (outlined in red, or red when most of a span failed)",
                    model::MAX_FAILED_BARS
                )
            };
            notes.push(format!(
                "{} attempts are more than the {} bars the timeline draws: adjacent tasks of a \
                 worker and stage (closer than {}) are drawn as one busy span; {failures}; every \
                 other chart counts each attempt",
                t.timed,
                model::MAX_BARS,
                html::duration(gap)
            ));
        }
        if t.untimed > 0 {
            notes.push(format!(
                "{} attempt(s) have no times in the joblog (a result lost with its worker, an \
                 input too large to send): counted, not drawn",
                t.untimed
            ));
        }
    }
    let (spans, markers) = assemble(&status.stages, &status.resumed_at, &events, frame);
    let times_from = if events.iter().any(|e| e.event == "stage_started") {
        "events"
    } else {
        "manifest"
    };
    Ok(Report {
        status,
        frame,
        spans,
        markers,
        timeline,
        notes,
        times_from,
        generated_at: crate::events::now_rfc3339(),
    })
}

/// Where a file the manifest names (by its absolute path) is now: there, or, when the run's
/// directory was moved or copied (from a cluster to a laptop) and it was kept inside it, in
/// `dir` under the same name.
fn locate(path: &Path, dir: &Path) -> PathBuf {
    if path.exists() {
        return path.to_owned();
    }
    match path.file_name().map(|name| dir.join(name)) {
        Some(moved) if moved.is_file() => moved,
        _ => path.to_owned(),
    }
}

/// What was read from a file the manifest names: `None`, with a note, when it is gone.
fn named_file<T>(
    read: io::Result<T>,
    path: &Path,
    notes: &mut Vec<String>,
    gone: impl FnOnce(std::path::Display<'_>) -> String,
) -> Result<Option<T>, ReportError> {
    match read {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            notes.push(gone(path.display()));
            Ok(None)
        }
        Err(source) => Err(ReportError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the report (atomically: a browser reloading it never sees half of it).
pub fn write(report: &Report, path: &Path) -> Result<(), ReportError> {
    let text = html::render(report);
    let fail = |source| ReportError::Write {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .map_or_else(|| DEFAULT_FILE.into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text.as_bytes()).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

/// Stage spans and markers: from the events when the run kept them (the last start and finish
/// of each stage, restarts at their pool decision), else from the manifest (each stage's start
/// and end, a restart at the start of its stage); the resumes from the manifest.
pub fn assemble(
    stages: &[StageStatusReport],
    resumed_at: &[String],
    events: &[EventView],
    frame: Frame,
) -> (Vec<StageSpan>, Vec<Marker>) {
    let at = |time: &str| us_of(time).map(|us| frame.at(us));
    let mut spans: Vec<StageSpan> = stages
        .iter()
        .map(|s| StageSpan {
            name: s.name.clone(),
            start_s: s.started_at.as_deref().and_then(at),
            end_s: s.finished_at.as_deref().and_then(at),
        })
        .collect();
    // An older manifest has no stage end: the start plus its wall time, at most the next start.
    for i in 0..spans.len() {
        if spans[i].end_s.is_none() && stages[i].state != "running" {
            let next = spans[i + 1..].iter().find_map(|s| s.start_s);
            spans[i].end_s = spans[i].start_s.map(|s| {
                let end = s + stages[i].wall_time_s;
                next.map_or(end, |n| end.min(n))
            });
        }
    }
    let mut markers = Vec::new();
    // Stages whose pool decision the events tell (a resumed run's event log only knows the
    // stages it ran: the others' come from the manifest).
    let mut decided = vec![false; spans.len()];
    for e in events {
        let (Some(stage), Some(t)) = (e.stage.as_deref(), at(&e.time)) else {
            continue;
        };
        let i = spans.iter().position(|s| s.name == stage);
        match (e.event.as_str(), i) {
            ("stage_started", Some(i)) => {
                spans[i].start_s = Some(t);
                spans[i].end_s = None;
            }
            ("stage_finished", Some(i)) => spans[i].end_s = Some(t),
            ("pool_decision", i) => {
                if let Some(i) = i {
                    decided[i] = true;
                }
                if e.decision.as_deref() == Some("restart") {
                    markers.push(Marker {
                        at_s: t,
                        kind: MarkerKind::Restart,
                        label: restart_label(stage, e.reason.as_deref()),
                    });
                }
            }
            _ => {}
        }
    }
    for ((s, span), decided) in stages.iter().zip(&spans).zip(decided) {
        let Some((d, t)) = s.pool_decision.as_ref().zip(span.start_s) else {
            continue;
        };
        if !decided && d.decision == "restart" {
            markers.push(Marker {
                at_s: t,
                kind: MarkerKind::Restart,
                label: restart_label(&s.name, Some(&d.reason)),
            });
        }
    }
    for span in &spans {
        if let Some(t) = span.start_s {
            markers.push(Marker {
                at_s: t,
                kind: MarkerKind::StageStart,
                label: span.name.clone(),
            });
        }
    }
    for r in resumed_at {
        if let Some(t) = at(r) {
            markers.push(Marker {
                at_s: t,
                kind: MarkerKind::Resume,
                label: "resumed".into(),
            });
        }
    }
    markers.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    (spans, markers)
}

fn restart_label(stage: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) => format!("pool restart before {stage}: {r}"),
        None => format!("pool restart before {stage}"),
    }
}

/// A joblog line as written by [`crate::joblog`] (every key; `null` where unknown).
#[derive(Debug, Deserialize)]
struct JoblogLine<'a> {
    #[serde(borrow)]
    stage: Cow<'a, str>,
    index: u64,
    #[serde(default)]
    source: Option<u64>,
    #[serde(default)]
    attempt: Option<u32>,
    #[serde(default)]
    worker: Option<u32>,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(borrow, default)]
    host: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    start: Option<Cow<'a, str>>,
    #[serde(default)]
    duration_s: Option<f64>,
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    #[serde(default)]
    rss: Option<u64>,
}

impl JoblogLine<'_> {
    fn logged(&self) -> Logged<'_> {
        Logged {
            stage: &self.stage,
            attempt: Attempt {
                index: self.index,
                source: self.source,
                attempt: self.attempt.unwrap_or(1),
                worker: self.worker,
                pid: self.pid,
                host: self.host.as_deref(),
                start_us: self
                    .start
                    .as_deref()
                    .and_then(us_of)
                    .and_then(|us| u64::try_from(us).ok()),
                // The joblog has microseconds: no float noise below them.
                duration_ns: self
                    .duration_s
                    .filter(|d| d.is_finite() && *d >= 0.0)
                    .map(|d| (d * 1e6).round() as u64 * 1000),
                outcome: &self.outcome,
                rss: self.rss,
            },
        }
    }
}

/// Reads the joblog twice: once for the time it spans, once into the model (only the lines
/// the first pass saw: a running run's joblog grows meanwhile). Returns the timeline and how
/// many lines could not be read.
fn read_joblog(
    path: &Path,
    frame: Frame,
    stages: &[StageStatusReport],
) -> io::Result<(Timeline, u64)> {
    let mut frame = frame;
    let mut unreadable = 0;
    let seen = for_each_line(path, u64::MAX, |line| {
        match serde_json::from_slice::<JoblogLine<'_>>(line) {
            Ok(l) => {
                if let Some((start, end)) = l.logged().span_us() {
                    frame = frame.union(Frame {
                        start_us: start,
                        end_us: end,
                    });
                }
            }
            Err(_) => unreadable += 1,
        }
    })?;
    let names: Vec<String> = stages.iter().map(|s| s.name.clone()).collect();
    let mut builder = Builder::new(frame, &names);
    for_each_line(path, seen, |line| {
        if let Ok(l) = serde_json::from_slice::<JoblogLine<'_>>(line) {
            builder.add(&l.logged());
        }
    })?;
    Ok((builder.finish(), unreadable))
}

/// The events the report uses, in order (a torn or unreadable line is skipped).
fn read_events(path: &Path) -> io::Result<Vec<EventView>> {
    const WANTED: [&str; 3] = ["stage_started", "stage_finished", "pool_decision"];
    let mut events = Vec::new();
    for_each_line(path, u64::MAX, |line| {
        if let Ok(e) = serde_json::from_slice::<EventView>(line) {
            if WANTED.contains(&e.event.as_str()) {
                events.push(e);
            }
        }
    })?;
    Ok(events)
}

/// Calls `f` with each whole line (ending in a newline) of the first `limit` bytes of a file;
/// lines longer than [`MAX_LINE`] are passed cut (they do not parse). Returns the bytes of the
/// whole lines read.
fn for_each_line(path: &Path, limit: u64, mut f: impl FnMut(&[u8])) -> io::Result<u64> {
    let file = std::fs::File::open(path)?;
    let mut reader = Counted {
        inner: BufReader::with_capacity(1 << 16, file.take(limit)),
        consumed: 0,
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        let before = reader.consumed;
        let (complete, _) = status::read_head(&mut reader, &mut line, MAX_LINE)?;
        if !complete {
            // The end, or a line still being written.
            return Ok(before);
        }
        f(&line);
    }
}

/// A reader that counts the bytes consumed.
struct Counted<R> {
    inner: R,
    consumed: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.consumed += n as u64;
        self.inner.consume(n);
    }
}

/// Microseconds since the Unix epoch of an RFC 3339 time.
pub fn us_of(time: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(time).ok()?;
    Some(us_since_epoch(t))
}

fn us_since_epoch(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::DecisionRecord;
    use crate::status::{Failure, Runner};
    use model::tests::logged;

    const T0: &str = "2030-01-01T00:00:00.000Z";

    fn at(s: f64) -> String {
        let t = humantime::parse_rfc3339(T0).unwrap() + std::time::Duration::from_secs_f64(s);
        humantime::format_rfc3339_micros(t).to_string()
    }

    fn frame(secs: f64) -> Frame {
        let start_us = us_of(T0).unwrap();
        Frame {
            start_us,
            end_us: start_us + (secs * 1e6) as i64,
        }
    }

    fn stage(
        name: &str,
        started: Option<f64>,
        finished: Option<f64>,
        decision: &str,
    ) -> StageStatusReport {
        StageStatusReport {
            name: name.into(),
            task: "demo::square".into(),
            state: "done".into(),
            tasks: 3,
            done: 3,
            ok: 2,
            failed: 1,
            retried: 0,
            not_run: 0,
            wall_time_s: 1.0,
            started_at: started.map(at),
            finished_at: finished.map(at),
            pool_decision: Some(DecisionRecord {
                decision: decision.into(),
                from: 2,
                to: 2,
                reason: format!("{decision} <because>"),
            }),
            output: format!("out/{name}.jsonl").into(),
            progress: None,
            failures: Vec::new(),
        }
    }

    fn event(event: &str, s: f64, stage: &str, decision: Option<&str>) -> EventView {
        EventView {
            event: event.into(),
            time: at(s),
            stage: Some(stage.into()),
            decision: decision.map(str::to_owned),
            reason: decision.map(|d| format!("{d} reason")),
        }
    }

    #[test]
    fn without_events_the_manifest_gives_stage_spans_and_restarts() {
        let mut old = stage("c", Some(5.0), None, "reuse");
        old.wall_time_s = 10.0;
        let stages = [
            stage("a", Some(0.5), Some(2.0), "start"),
            stage("b", Some(2.5), Some(4.0), "restart"),
            old,
            stage("d", Some(7.0), None, "reuse"),
        ];
        let (spans, markers) = assemble(&stages, &[at(6.0)], &[], frame(8.0));
        assert_eq!(spans[0].start_s, Some(0.5));
        assert_eq!(spans[1].end_s, Some(4.0));
        // An older manifest without stage ends: start + wall time, cut at the next start.
        assert_eq!(spans[2].end_s, Some(7.0));
        let kinds: Vec<(MarkerKind, f64)> = markers.iter().map(|m| (m.kind, m.at_s)).collect();
        assert_eq!(
            kinds,
            [
                (MarkerKind::StageStart, 0.5),
                (MarkerKind::Restart, 2.5),
                (MarkerKind::StageStart, 2.5),
                (MarkerKind::StageStart, 5.0),
                (MarkerKind::Resume, 6.0),
                (MarkerKind::StageStart, 7.0),
            ]
        );
        assert_eq!(markers[1].label, "pool restart before b: restart <because>");
    }

    #[test]
    fn events_give_the_exact_boundaries_and_restarts_at_their_decision() {
        let stages = [
            stage("a", Some(0.5), Some(2.0), "start"),
            stage("b", Some(2.5), Some(4.0), "restart"),
        ];
        let events = [
            event("pool_decision", 0.1, "a", Some("start")),
            event("stage_started", 0.2, "a", None),
            event("stage_finished", 1.9, "a", None),
            event("pool_decision", 2.1, "b", Some("restart")),
            event("stage_started", 2.3, "b", None),
            event("stage_finished", 3.9, "b", None),
        ];
        let (spans, markers) = assemble(&stages, &[], &events, frame(5.0));
        let s: Vec<(Option<f64>, Option<f64>)> =
            spans.iter().map(|s| (s.start_s, s.end_s)).collect();
        assert_eq!(s, [(Some(0.2), Some(1.9)), (Some(2.3), Some(3.9))]);
        let restarts: Vec<&Marker> = markers
            .iter()
            .filter(|m| m.kind == MarkerKind::Restart)
            .collect();
        assert_eq!(restarts.len(), 1);
        assert_eq!(restarts[0].at_s, 2.1);
        assert!(restarts[0].label.contains("restart reason"));
    }

    #[test]
    fn a_resumed_runs_events_tell_only_the_stages_it_ran() {
        let stages = [
            stage("a", Some(0.5), Some(2.0), "restart"),
            stage("b", Some(3.0), Some(4.0), "restart"),
        ];
        let events = [
            event("pool_decision", 2.9, "b", Some("restart")),
            event("stage_started", 3.1, "b", None),
        ];
        let (spans, markers) = assemble(&stages, &[at(2.8)], &events, frame(5.0));
        assert_eq!(spans[0].start_s, Some(0.5));
        assert_eq!(spans[1].start_s, Some(3.1));
        let restarts: Vec<f64> = markers
            .iter()
            .filter(|m| m.kind == MarkerKind::Restart)
            .map(|m| m.at_s)
            .collect();
        assert_eq!(restarts, [0.5, 2.9]);
    }

    #[test]
    fn a_moved_run_directory_still_finds_its_joblog() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("joblog.jsonl"), "").unwrap();
        let gone = Path::new("/no/such/place/joblog.jsonl");
        assert_eq!(locate(gone, dir.path()), dir.path().join("joblog.jsonl"));
        let elsewhere = Path::new("/no/such/place/other.jsonl");
        assert_eq!(locate(elsewhere, dir.path()), elsewhere);
    }

    #[test]
    fn whole_lines_only_and_their_length_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let long = "x".repeat(MAX_LINE + 10);
        std::fs::write(&path, format!("one\n{long}\nthree\ntorn")).unwrap();
        let mut lines = Vec::new();
        let read = for_each_line(&path, u64::MAX, |l| lines.push(l.len())).unwrap();
        assert_eq!(lines, [3, MAX_LINE, 5]);
        assert_eq!(read, (4 + long.len() + 1 + 6) as u64);
        let mut again = 0;
        assert_eq!(for_each_line(&path, 4, |_| again += 1).unwrap(), 4);
        assert_eq!(again, 1);
    }

    #[test]
    fn joblog_lines_read_back_as_the_joblog_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("joblog.jsonl");
        let mut joblog = crate::joblog::Joblog::create(&path).unwrap();
        joblog.set_stage("naps \"1\"");
        let timed = Attempt {
            index: 1,
            source: Some(7),
            attempt: 2,
            worker: Some(2),
            pid: Some(9036),
            host: Some("vm"),
            start_us: Some(1_796_000_000_105_925),
            duration_ns: Some(20_193_456),
            outcome: "ok",
            rss: Some(10_772_480),
        };
        joblog.record(&timed);
        let lost = Attempt {
            start_us: None,
            duration_ns: None,
            pid: None,
            host: None,
            rss: None,
            outcome: "lost",
            ..timed
        };
        joblog.record(&lost);
        assert!(joblog.failure().is_none());
        let mut read = Vec::new();
        for_each_line(&path, u64::MAX, |line| {
            let l: JoblogLine<'_> = serde_json::from_slice(line).unwrap();
            let logged = l.logged();
            read.push((
                logged.stage.to_owned(),
                format!("{:?}", logged.attempt),
                logged.span_us(),
            ));
        })
        .unwrap();
        // What the worker timed, to the microsecond the joblog keeps.
        let expected = Attempt {
            duration_ns: Some(20_193_000),
            ..timed
        };
        assert_eq!(read[0].0, "naps \"1\"");
        assert_eq!(read[0].1, format!("{expected:?}"));
        assert_eq!(
            read[0].2,
            Some((1_796_000_000_105_925, 1_796_000_000_126_118))
        );
        assert_eq!(read[1].1, format!("{lost:?}"));
        assert_eq!(read[1].2, None);
    }

    /// A finished run of two stages with a joblog: three attempts, one failed with a nasty
    /// message.
    fn sample_report() -> Report {
        let mut a = stage("a", Some(0.1), Some(1.0), "start");
        a.failures.push(Failure {
            index: 1,
            source: None,
            kind: "task_error".into(),
            message: "<script>alert('x')</script> & more".into(),
            attempts: Some(1),
        });
        let b = stage("b<i>", Some(1.2), Some(2.0), "restart");
        let stages = vec![a, b];
        let f = frame(2.5);
        let names: Vec<String> = stages.iter().map(|s| s.name.clone()).collect();
        let mut builder = Builder::new(f, &names);
        for (stage, index, start, outcome) in [
            ("a", 0, 0.2, "ok"),
            ("a", 1, 0.3, "task_error"),
            ("b<i>", 0, 1.3, "ok"),
        ] {
            let start_us = f.start_us + (start * 1e6) as i64;
            let mut l = logged(stage, index, 1, start_us, 50_000, outcome);
            l.attempt.host = Some("node&1");
            builder.add(&l);
        }
        let (spans, markers) = assemble(&stages, &[], &[], f);
        Report {
            status: Status {
                output_dir: "out".into(),
                pipeline: Some("p<1>".into()),
                pipeline_file: "/p.toml".into(),
                state: RunState::Failed,
                exit_code: Some(1),
                runner: Runner::Finished,
                started_at: at(0.0),
                resumed_at: Vec::new(),
                finished_at: Some(at(2.5)),
                elapsed_s: Some(2.5),
                stages,
                events: None,
                joblog: Some("/out/joblog.jsonl".into()),
            },
            frame: f,
            spans,
            markers,
            timeline: Some(builder.finish()),
            notes: Vec::new(),
            times_from: "manifest",
            generated_at: at(3.0),
        }
    }

    #[test]
    fn the_page_has_a_bar_per_attempt_escapes_the_run_and_fetches_nothing() {
        let html = html::render(&sample_report());
        assert_eq!(html.matches("<rect class=\"task ").count(), 3, "{html}");
        assert_eq!(html.matches("<rect class=\"task error").count(), 1);
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more"));
        assert!(!html.contains("<script"), "no script at all");
        assert!(html.contains("b&lt;i&gt;") && !html.contains("b<i>"));
        assert!(html.contains("node&amp;1"));
        assert!(html.contains("class=\"mark restart\""));
        for fetch in ["src=", "href=", "url(", "@import", "http://", "https://"] {
            assert!(!html.contains(fetch), "{fetch}");
        }
        // Without a joblog: the rest, and what to do.
        let mut r = sample_report();
        r.timeline = None;
        let html = html::render(&r);
        assert!(html.contains(NO_JOBLOG.split(':').next().unwrap()));
        assert_eq!(html.matches("class=\"task ").count(), 0);
        assert!(html.contains("Failures (2)"));
    }

    #[test]
    fn a_large_run_stays_a_file_of_bounded_size() {
        let mut r = sample_report();
        let f = frame(600.0);
        let mut builder = Builder::new(f, &["a".to_owned()]);
        // 8 workers x 25,000 tasks of 3 ms, with a 0.1 ms gap between tasks.
        for i in 0..200_000u64 {
            let worker = (i % 8) as u32;
            let start_us = f.start_us + (i / 8) as i64 * 3_100;
            let outcome = if i % 1000 == 7 { "panic" } else { "ok" };
            builder.add(&logged("a", i, worker, start_us, 3_000, outcome));
        }
        r.frame = f;
        r.timeline = Some(builder.finish());
        let html = html::render(&r);
        let busy = html.matches("<rect class=\"busy ").count();
        assert!(busy > 0 && busy <= model::MAX_BARS, "{busy}");
        // The 200 failures drawn one by one over the spans.
        assert_eq!(html.matches("<rect class=\"task error").count(), 200);
        assert_eq!(html.matches("<rect class=\"task ok").count(), 0);
        assert!(html.len() < 8 << 20, "{} bytes", html.len());
    }
}

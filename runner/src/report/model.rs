//! What the report draws, in numbers: built from the joblog's attempts one at a time, with
//! memory bounded whatever the number of tasks (the bars are coalesced past [`MAX_BARS`], the
//! other series are fixed-size). Pure: no file is read here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::joblog::Attempt;

/// The most bars the timeline draws; past that, adjacent tasks of a worker and stage are merged
/// into busy spans (the file stays a few MB).
pub const MAX_BARS: usize = 20_000;
/// Failed attempts drawn one by one over the busy spans of a coalesced timeline; past that
/// they are only counted in their spans.
pub const MAX_FAILED_BARS: usize = 2_000;
/// Buckets of the throughput chart.
pub const THROUGHPUT_BUCKETS: usize = 60;
/// Points of each worker's memory line (the highest sample in each slice of time).
pub const RSS_POINTS: usize = 300;
/// Rows of the slowest-tasks table.
pub const SLOWEST: usize = 20;
/// Lower edges of the duration histogram's buckets in µs, past the first (`[0, 1 µs)`): 1, 2, 5
/// per decade, up to 10⁶ s.
pub const HISTOGRAM_EDGES_US: [u64; 37] = {
    let mut edges = [0u64; 37];
    let mut decade = 1u64;
    let mut i = 0;
    while i < 36 {
        edges[i] = decade;
        edges[i + 1] = 2 * decade;
        edges[i + 2] = 5 * decade;
        decade *= 10;
        i += 3;
    }
    edges[36] = decade;
    edges
};

/// The time the report spans, in µs since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    pub start_us: i64,
    pub end_us: i64,
}

impl Frame {
    /// Seconds since the start of the frame.
    pub fn at(&self, us: i64) -> f64 {
        (us - self.start_us) as f64 / 1e6
    }

    /// The length in seconds (never zero: a chart needs a width).
    pub fn span_s(&self) -> f64 {
        ((self.end_us - self.start_us) as f64 / 1e6).max(1e-3)
    }

    /// The smallest frame holding both.
    pub fn union(self, other: Frame) -> Frame {
        Frame {
            start_us: self.start_us.min(other.start_us),
            end_us: self.end_us.max(other.end_us),
        }
    }
}

/// One joblog line: its stage, and the attempt as [`crate::joblog`] writes it.
#[derive(Debug, Clone, Copy)]
pub struct Logged<'a> {
    pub stage: &'a str,
    pub attempt: Attempt<'a>,
}

impl Logged<'_> {
    /// When it started and ended (µs since the Unix epoch), if the joblog timed it.
    pub fn span_us(&self) -> Option<(i64, i64)> {
        let start = i64::try_from(self.attempt.start_us?).ok()?;
        let duration = i64::try_from(self.attempt.duration_ns? / 1000).ok()?;
        Some((start, start.saturating_add(duration)))
    }
}

/// How an attempt ended, as drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Ok,
    /// A failure of any kind (`task_error`, `panic`, `crashed`, `timeout`, ...).
    Error,
    /// Its result was lost with its worker; it ran again without counting an attempt.
    Lost,
}

impl Class {
    pub fn of(outcome: &str) -> Class {
        match outcome {
            "ok" => Class::Ok,
            "lost" => Class::Lost,
            _ => Class::Error,
        }
    }

    pub fn css(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::Error => "error",
            Class::Lost => "lost",
        }
    }
}

/// A worker process, one row of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub worker: Option<u32>,
    pub pid: Option<u32>,
    pub host: Option<String>,
    /// When its first timed attempt started (s since the frame's start).
    pub first_s: f64,
    pub attempts: u64,
    pub failed: u64,
    pub busy_s: f64,
    pub peak_rss: Option<u64>,
    /// `(s, bytes)`: the highest sample of each of [`RSS_POINTS`] slices of time, in order.
    pub rss: Vec<(f64, u64)>,
}

/// A bar of the timeline (times in s since the frame's start).
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub row: u32,
    pub stage: u16,
    pub start_s: f64,
    pub end_s: f64,
    pub what: BarKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BarKind {
    /// One attempt of one task.
    Task {
        index: u64,
        source: Option<u64>,
        attempt: u32,
        /// Into [`Timeline::outcomes`].
        outcome: u16,
    },
    /// Adjacent attempts merged (a large run): how many, and how many of them failed.
    Busy { tasks: u64, failed: u64 },
}

/// One of the slowest attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct Slow {
    pub duration_us: u64,
    pub stage: u16,
    pub index: u64,
    pub source: Option<u64>,
    pub attempt: u32,
    pub row: u32,
    pub outcome: u16,
    pub start_s: f64,
}

/// What the joblog says of one stage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageAttempts {
    pub attempts: u64,
    pub ok: u64,
    pub failed: u64,
    pub lost: u64,
    /// The time its timed attempts took, added up.
    pub busy_s: f64,
}

/// Everything drawn from the joblog.
#[derive(Debug, Clone)]
pub struct Timeline {
    pub frame: Frame,
    /// Stage names, in the order given to [`Builder::new`], then any others the joblog names.
    pub stages: Vec<String>,
    pub per_stage: Vec<StageAttempts>,
    /// Sorted by when each worker started its first task.
    pub rows: Vec<Row>,
    /// Sorted by row, then start.
    pub bars: Vec<Bar>,
    /// The gap (s) under which adjacent attempts were merged into busy spans, if they were.
    pub coalesced: Option<f64>,
    /// With `coalesced`: whether the failed attempts are still drawn one by one, over the
    /// spans (at most [`MAX_FAILED_BARS`]), or only counted in them.
    pub failures_drawn: bool,
    /// Attempts with a start and a duration (each one bar unless coalesced).
    pub timed: u64,
    /// Attempts without (a lost result, an input too large to send): counted, not drawn.
    pub untimed: u64,
    /// The outcome names the bars and the slowest tasks point into.
    pub outcomes: Vec<String>,
    /// Attempts that ended in each of [`THROUGHPUT_BUCKETS`] slices of the frame: `[ok, failed]`.
    pub throughput: Vec<[u64; 2]>,
    /// Attempts per duration bucket (see [`HISTOGRAM_EDGES_US`]; bucket 0 is under 1 µs).
    pub histogram: Vec<u64>,
    /// The slowest attempts, slowest first.
    pub slowest: Vec<Slow>,
}

impl Timeline {
    pub fn outcome(&self, id: u16) -> &str {
        self.outcomes
            .get(usize::from(id))
            .map_or("?", String::as_str)
    }

    pub fn bucket_s(&self) -> f64 {
        self.frame.span_s() / THROUGHPUT_BUCKETS as f64
    }
}

/// The histogram bucket of a duration.
pub fn histogram_bucket(us: u64) -> usize {
    HISTOGRAM_EDGES_US.partition_point(|&edge| edge <= us)
}

/// Merges adjacent bars of the same row and stage (a gap of at most `gap` s between them) into
/// busy spans. `failed` tells which outcomes are failures.
pub fn coalesce(mut bars: Vec<Bar>, gap: f64, failed: impl Fn(u16) -> bool) -> Vec<Bar> {
    bars.sort_by(|a, b| {
        (a.row, a.stage)
            .cmp(&(b.row, b.stage))
            .then(a.start_s.total_cmp(&b.start_s))
    });
    let mut out: Vec<Bar> = Vec::with_capacity(bars.len() / 2 + 1);
    for bar in bars {
        let (tasks, fails) = match bar.what {
            BarKind::Task { outcome, .. } => (1, u64::from(failed(outcome))),
            BarKind::Busy { tasks, failed } => (tasks, failed),
        };
        if let Some(last) = out.last_mut() {
            if last.row == bar.row && last.stage == bar.stage && bar.start_s <= last.end_s + gap {
                last.end_s = last.end_s.max(bar.end_s);
                if let BarKind::Busy {
                    tasks: t,
                    failed: f,
                } = &mut last.what
                {
                    *t += tasks;
                    *f += fails;
                }
                continue;
            }
        }
        out.push(Bar {
            what: BarKind::Busy {
                tasks,
                failed: fails,
            },
            ..bar
        });
    }
    out
}

/// Names given small ids in the order first seen (stages, outcomes).
#[derive(Default)]
struct Names {
    names: Vec<String>,
    ids: HashMap<String, u16>,
}

impl Names {
    fn id(&mut self, name: &str) -> u16 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        match u16::try_from(self.names.len()) {
            Ok(id) if id < u16::MAX => {
                self.names.push(name.to_owned());
                self.ids.insert(name.to_owned(), id);
                id
            }
            // 65535 names: the rest share the last one (no pipeline has that many).
            _ => u16::MAX - 1,
        }
    }
}

/// Builds a [`Timeline`] from attempts, one at a time.
pub struct Builder {
    frame: Frame,
    stages: Names,
    per_stage: Vec<StageAttempts>,
    rows: Vec<Row>,
    /// Per row, its slices of memory samples (`None`: no sample there).
    rss: Vec<Vec<Option<(f64, u64)>>>,
    row_ids: HashMap<(Option<u32>, Option<u32>), Vec<u32>>,
    outcomes: Names,
    bars: Vec<Bar>,
    gap: Option<f64>,
    timed: u64,
    untimed: u64,
    throughput: Vec<[u64; 2]>,
    histogram: Vec<u64>,
    slowest: BinaryHeap<Reverse<(u64, u64)>>,
    slow: HashMap<u64, Slow>,
    seq: u64,
    max_bars: usize,
    /// The failed attempts' own bars (for a coalesced timeline), unless there are too many.
    failed_bars: Option<Vec<Bar>>,
}

impl Builder {
    pub fn new(frame: Frame, stages: &[String]) -> Self {
        let mut b = Self {
            frame,
            stages: Names::default(),
            per_stage: Vec::new(),
            rows: Vec::new(),
            rss: Vec::new(),
            row_ids: HashMap::new(),
            outcomes: Names::default(),
            bars: Vec::new(),
            gap: None,
            timed: 0,
            untimed: 0,
            throughput: vec![[0; 2]; THROUGHPUT_BUCKETS],
            histogram: vec![0; HISTOGRAM_EDGES_US.len() + 1],
            slowest: BinaryHeap::new(),
            slow: HashMap::new(),
            seq: 0,
            max_bars: MAX_BARS,
            failed_bars: Some(Vec::new()),
        };
        for s in stages {
            b.stage_id(s);
        }
        b
    }

    /// Another limit than [`MAX_BARS`] (for tests).
    pub fn with_max_bars(mut self, max: usize) -> Self {
        self.max_bars = max.max(1);
        self
    }

    fn stage_id(&mut self, name: &str) -> u16 {
        let id = self.stages.id(name);
        if usize::from(id) == self.per_stage.len() {
            self.per_stage.push(StageAttempts::default());
        }
        id
    }

    fn row_id(&mut self, a: &Attempt<'_>, at_s: f64) -> u32 {
        let candidates = self.row_ids.entry((a.worker, a.pid)).or_default();
        for &id in candidates.iter() {
            if self.rows[id as usize].host.as_deref() == a.host {
                return id;
            }
        }
        let id = self.rows.len() as u32;
        candidates.push(id);
        self.rows.push(Row {
            worker: a.worker,
            pid: a.pid,
            host: a.host.map(str::to_owned),
            first_s: at_s,
            attempts: 0,
            failed: 0,
            busy_s: 0.0,
            peak_rss: None,
            rss: Vec::new(),
        });
        self.rss.push(Vec::new());
        id
    }

    pub fn add(&mut self, line: &Logged<'_>) {
        let a = &line.attempt;
        let stage = self.stage_id(line.stage);
        let class = Class::of(a.outcome);
        let counts = &mut self.per_stage[usize::from(stage)];
        counts.attempts += 1;
        match class {
            Class::Ok => counts.ok += 1,
            Class::Error => counts.failed += 1,
            Class::Lost => counts.lost += 1,
        }
        let Some((start_us, end_us)) = line.span_us() else {
            self.untimed += 1;
            return;
        };
        self.timed += 1;
        let outcome = self.outcomes.id(a.outcome);
        let (start_s, end_s) = (self.frame.at(start_us), self.frame.at(end_us));
        let duration_us = a.duration_ns.unwrap_or_default() / 1000;
        self.per_stage[usize::from(stage)].busy_s += duration_us as f64 / 1e6;

        let row = self.row_id(a, start_s);
        let rss_slice = self.slice(end_s, RSS_POINTS);
        let r = &mut self.rows[row as usize];
        r.first_s = r.first_s.min(start_s);
        r.attempts += 1;
        r.failed += u64::from(class == Class::Error);
        r.busy_s += duration_us as f64 / 1e6;
        if let Some(rss) = a.rss {
            r.peak_rss = Some(r.peak_rss.map_or(rss, |p| p.max(rss)));
            let slices = &mut self.rss[row as usize];
            if slices.is_empty() {
                slices.resize(RSS_POINTS, None);
            }
            match &mut slices[rss_slice] {
                Some((_, high)) if *high >= rss => {}
                sample => *sample = Some((end_s, rss)),
            }
        }

        if class != Class::Lost {
            let bucket = self.slice(end_s, THROUGHPUT_BUCKETS);
            self.throughput[bucket][usize::from(class == Class::Error)] += 1;
        }
        self.histogram[histogram_bucket(duration_us)] += 1;
        self.keep_if_slow(Slow {
            duration_us,
            stage,
            index: a.index,
            source: a.source,
            attempt: a.attempt,
            row,
            outcome,
            start_s,
        });

        let bar = Bar {
            row,
            stage,
            start_s,
            end_s,
            what: BarKind::Task {
                index: a.index,
                source: a.source,
                attempt: a.attempt,
                outcome,
            },
        };
        if class == Class::Error {
            match &mut self.failed_bars {
                Some(bars) if bars.len() < MAX_FAILED_BARS => bars.push(bar.clone()),
                _ => self.failed_bars = None,
            }
        }
        self.bars.push(bar);
        if self.bars.len() >= 2 * self.max_bars {
            self.compact(self.max_bars / 2);
        }
    }

    /// Which of `n` equal slices of the frame `s` falls in (times outside go to the ends).
    fn slice(&self, s: f64, n: usize) -> usize {
        let at = (s / self.frame.span_s() * n as f64).floor();
        if at.is_nan() || at < 0.0 {
            0
        } else {
            (at as usize).min(n - 1)
        }
    }

    fn keep_if_slow(&mut self, slow: Slow) {
        let key = (slow.duration_us, u64::MAX - self.seq);
        self.seq += 1;
        if self.slowest.len() < SLOWEST {
            self.slowest.push(Reverse(key));
            self.slow.insert(key.1, slow);
        } else if let Some(Reverse(least)) = self.slowest.peek() {
            if key > *least {
                let least = *least;
                self.slowest.pop();
                self.slow.remove(&least.1);
                self.slowest.push(Reverse(key));
                self.slow.insert(key.1, slow);
            }
        }
    }

    /// Merges bars, widening the gap until at most `target` are left (or one per row and
    /// stage). The gap starts under a pixel's worth of time.
    fn compact(&mut self, target: usize) {
        let span = self.frame.span_s();
        let mut gap = self.gap.unwrap_or(span / 4000.0);
        let outcomes = &self.outcomes.names;
        let failed = |id: u16| {
            outcomes
                .get(usize::from(id))
                .is_some_and(|o| Class::of(o) == Class::Error)
        };
        loop {
            self.bars = coalesce(std::mem::take(&mut self.bars), gap, failed);
            if self.bars.len() <= target || gap > 2.0 * span {
                break;
            }
            gap *= 2.0;
        }
        self.gap = Some(gap);
    }

    pub fn finish(mut self) -> Timeline {
        let mut failures_drawn = true;
        if self.gap.is_some() || self.bars.len() > self.max_bars {
            self.compact(self.max_bars);
            // Failures stay visible one by one, drawn over the spans that count them.
            match self.failed_bars.take() {
                Some(failed) => self.bars.extend(failed),
                None => failures_drawn = false,
            }
        }
        // Rows in the order workers started; bars by row, then time.
        let mut order: Vec<u32> = (0..self.rows.len() as u32).collect();
        order.sort_by(|&a, &b| {
            let (ra, rb) = (&self.rows[a as usize], &self.rows[b as usize]);
            ra.first_s
                .total_cmp(&rb.first_s)
                .then(ra.worker.cmp(&rb.worker))
        });
        let mut new_id = vec![0u32; order.len()];
        for (new, &old) in order.iter().enumerate() {
            new_id[old as usize] = new as u32;
        }
        let mut rss = std::mem::take(&mut self.rss);
        let rows: Vec<Row> = order
            .iter()
            .map(|&old| {
                let mut row = self.rows[old as usize].clone();
                row.rss = std::mem::take(&mut rss[old as usize])
                    .into_iter()
                    .flatten()
                    .collect();
                row
            })
            .collect();
        for bar in &mut self.bars {
            bar.row = new_id[bar.row as usize];
        }
        // By row, spans before single attempts (drawn over them), then by time.
        let single = |b: &Bar| matches!(b.what, BarKind::Task { .. });
        self.bars.sort_by(|a, b| {
            a.row
                .cmp(&b.row)
                .then(single(a).cmp(&single(b)))
                .then(a.start_s.total_cmp(&b.start_s))
                .then(a.stage.cmp(&b.stage))
        });
        let mut slowest: Vec<Slow> = self.slow.into_values().collect();
        for s in &mut slowest {
            s.row = new_id[s.row as usize];
        }
        slowest.sort_by(|a, b| {
            b.duration_us
                .cmp(&a.duration_us)
                .then(a.start_s.total_cmp(&b.start_s))
        });
        Timeline {
            frame: self.frame,
            stages: self.stages.names,
            per_stage: self.per_stage,
            rows,
            bars: self.bars,
            coalesced: self.gap,
            failures_drawn,
            timed: self.timed,
            untimed: self.untimed,
            outcomes: self.outcomes.names,
            throughput: self.throughput,
            histogram: self.histogram,
            slowest,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000_000;

    fn frame(secs: i64) -> Frame {
        Frame {
            start_us: T0,
            end_us: T0 + secs * 1_000_000,
        }
    }

    /// A timed attempt of worker `worker` (pid 100 + worker on node1).
    pub(in crate::report) fn logged<'a>(
        stage: &'a str,
        index: u64,
        worker: u32,
        start_us: i64,
        duration_us: u64,
        outcome: &'a str,
    ) -> Logged<'a> {
        Logged {
            stage,
            attempt: Attempt {
                index,
                source: None,
                attempt: 1,
                worker: Some(worker),
                pid: Some(100 + worker),
                host: Some("node1"),
                start_us: u64::try_from(start_us).ok(),
                duration_ns: Some(duration_us * 1000),
                outcome,
                rss: Some((8 << 20) + index),
            },
        }
    }

    /// An attempt starting `start_ms` into the frame, `ms` long.
    fn line<'a>(
        stage: &'a str,
        index: u64,
        worker: u32,
        start_ms: i64,
        ms: u64,
        outcome: &'a str,
    ) -> Logged<'a> {
        logged(
            stage,
            index,
            worker,
            T0 + start_ms * 1000,
            ms * 1000,
            outcome,
        )
    }

    #[test]
    fn every_timed_attempt_is_a_bar_on_its_worker_row() {
        let stages = ["a".to_owned(), "b".to_owned()];
        let mut b = Builder::new(frame(10), &stages);
        // Worker 2 starts first: its row comes first.
        b.add(&line("a", 0, 5, 200, 100, "ok"));
        b.add(&line("a", 1, 2, 100, 300, "task_error"));
        b.add(&line("b", 0, 5, 1_000, 50, "ok"));
        let mut lost = line("b", 1, 0, 0, 0, "lost");
        lost.attempt = Attempt {
            start_us: None,
            duration_ns: None,
            worker: None,
            pid: None,
            host: None,
            ..lost.attempt
        };
        b.add(&lost);
        let t = b.finish();
        assert_eq!((t.timed, t.untimed), (3, 1));
        assert_eq!(t.bars.len(), 3);
        assert!(t.coalesced.is_none());
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[0].worker, Some(2));
        assert_eq!((t.rows[1].worker, t.rows[1].attempts), (Some(5), 2));
        assert_eq!(t.rows[0].failed, 1);
        let first = &t.bars[0];
        assert_eq!(first.row, 0);
        assert!((first.start_s - 0.1).abs() < 1e-9 && (first.end_s - 0.4).abs() < 1e-9);
        assert!(matches!(
            first.what,
            BarKind::Task { index: 1, outcome, .. } if t.outcome(outcome) == "task_error"
        ));
        assert_eq!(
            t.per_stage[1],
            StageAttempts {
                attempts: 2,
                ok: 1,
                failed: 0,
                lost: 1,
                busy_s: 0.05
            }
        );
        // Throughput: two ok and one failed attempt, each in the slice it ended in.
        let done: u64 = t.throughput.iter().map(|b| b[0] + b[1]).sum();
        assert_eq!(done, 3);
        assert_eq!(t.throughput[(0.4 / t.bucket_s()) as usize], [0, 1]);
        assert_eq!(t.slowest[0].index, 1);
        assert_eq!(t.slowest.len(), 3);
    }

    #[test]
    fn past_the_limit_adjacent_attempts_become_busy_spans() {
        let stages = ["a".to_owned(), "b".to_owned()];
        let mut b = Builder::new(frame(100), &stages).with_max_bars(50);
        // 2 workers x 100 back-to-back tasks of 100 ms in stage a, one failing; a second
        // later, stage b on worker 1.
        for w in 1..=2u32 {
            for i in 0..100u64 {
                let outcome = if w == 2 && i == 7 { "panic" } else { "ok" };
                b.add(&line("a", i, w, i as i64 * 100, 100, outcome));
            }
        }
        b.add(&line("b", 0, 1, 11_000, 100, "ok"));
        let t = b.finish();
        assert!(t.coalesced.is_some() && t.failures_drawn);
        // Each worker's run of stage a is one span; stage b is a span of its own; the
        // failure is drawn on its own too, over its span.
        assert_eq!(t.bars.len(), 4, "{:?}", t.bars);
        let bars: Vec<(u32, u16, u64, u64)> = t
            .bars
            .iter()
            .map(|bar| match bar.what {
                BarKind::Busy { tasks, failed } => (bar.row, bar.stage, tasks, failed),
                BarKind::Task { index, .. } => (bar.row, bar.stage, index, u64::MAX),
            })
            .collect();
        assert_eq!(
            bars,
            [
                (0, 0, 100, 0),
                (0, 1, 1, 0),
                (1, 0, 100, 1),
                (1, 0, 7, u64::MAX)
            ]
        );
        assert!((t.bars[0].end_s - 10.0).abs() < 1e-9);
        // Counted all the same.
        assert_eq!(t.timed, 201);
        assert_eq!(t.per_stage[0].failed, 1);
    }

    #[test]
    fn coalescing_keeps_gaps_wider_than_the_gap_and_bounds_any_run() {
        let bar = |row, start_s: f64, end_s: f64| Bar {
            row,
            stage: 0,
            start_s,
            end_s,
            what: BarKind::Task {
                index: 0,
                source: None,
                attempt: 1,
                outcome: 0,
            },
        };
        let bars = vec![
            bar(0, 2.0, 3.0),
            bar(0, 0.0, 1.0),
            bar(0, 1.05, 1.5),
            bar(1, 0.0, 1.0),
        ];
        let merged = coalesce(bars, 0.1, |_| true);
        let spans: Vec<(u32, f64, f64)> =
            merged.iter().map(|b| (b.row, b.start_s, b.end_s)).collect();
        assert_eq!(spans, [(0, 0.0, 1.5), (0, 2.0, 3.0), (1, 0.0, 1.0)]);
        assert_eq!(
            merged[0].what,
            BarKind::Busy {
                tasks: 2,
                failed: 2
            }
        );

        // A huge run with gaps everywhere still ends within the limit.
        let mut b = Builder::new(frame(1000), &["s".to_owned()]).with_max_bars(100);
        for i in 0..10_000u64 {
            b.add(&line("s", i, (i % 4) as u32, i as i64 * 100, 10, "ok"));
        }
        let t = b.finish();
        assert!(t.bars.len() <= 100, "{}", t.bars.len());
        assert!(t.failures_drawn);
        let tasks: u64 = t
            .bars
            .iter()
            .map(|b| match b.what {
                BarKind::Busy { tasks, .. } => tasks,
                BarKind::Task { .. } => 1,
            })
            .sum();
        assert_eq!(tasks, 10_000);
    }

    #[test]
    fn too_many_failures_are_only_counted_in_their_spans() {
        let mut b = Builder::new(frame(100), &["s".to_owned()]).with_max_bars(10);
        let n = 2 * MAX_FAILED_BARS as u64 + 4;
        for i in 0..n {
            let outcome = if i % 2 == 0 { "crashed" } else { "ok" };
            b.add(&line("s", i, 1, i as i64, 1, outcome));
        }
        let t = b.finish();
        assert!(!t.failures_drawn);
        assert!(t.bars.len() <= 10);
        let failed: u64 = t
            .bars
            .iter()
            .map(|b| match b.what {
                BarKind::Busy { failed, .. } => failed,
                BarKind::Task { .. } => panic!("{b:?}"),
            })
            .sum();
        assert_eq!(failed, n / 2);
    }

    #[test]
    fn histogram_buckets_go_1_2_5_per_decade() {
        assert_eq!(HISTOGRAM_EDGES_US[..7], [1, 2, 5, 10, 20, 50, 100]);
        assert_eq!(HISTOGRAM_EDGES_US[36], 1_000_000_000_000);
        assert_eq!(histogram_bucket(0), 0);
        assert_eq!(histogram_bucket(1), 1);
        assert_eq!(histogram_bucket(1), histogram_bucket(1));
        assert_eq!(histogram_bucket(2), 2);
        assert_eq!(histogram_bucket(4), 2);
        assert_eq!(histogram_bucket(5), 3);
        assert_eq!(histogram_bucket(9), 3);
        assert_eq!(histogram_bucket(10), 4);
        // 1.5 s, 2 s, 2.5 s.
        assert_eq!(histogram_bucket(1_500_000), histogram_bucket(1_000_000));
        assert_eq!(histogram_bucket(2_000_000), histogram_bucket(1_000_000) + 1);
        assert_eq!(histogram_bucket(u64::MAX), HISTOGRAM_EDGES_US.len());
    }

    #[test]
    fn the_slowest_are_kept_slowest_first_and_memory_is_sampled_per_slice() {
        let mut b = Builder::new(frame(10), &[]);
        for i in 0..100u64 {
            let mut l = line("s", i, 1, i as i64 * 10, i, "ok");
            l.attempt.rss = Some(i * 1000);
            b.add(&l);
        }
        let t = b.finish();
        let slowest: Vec<u64> = t.slowest.iter().map(|s| s.index).collect();
        assert_eq!(slowest, (80..100).rev().collect::<Vec<_>>());
        let row = &t.rows[0];
        assert_eq!(row.peak_rss, Some(99_000));
        assert!(row.rss.len() <= RSS_POINTS && !row.rss.is_empty());
        assert!(row.rss.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(row.rss.last().map(|p| p.1), Some(99_000));
        // A stage the pipeline does not name (an older joblog) gets a place too.
        assert_eq!(t.stages, ["s"]);
    }

    #[test]
    fn the_same_worker_id_on_another_pid_or_host_is_another_row() {
        let mut b = Builder::new(frame(10), &[]);
        b.add(&line("s", 0, 1, 0, 10, "ok"));
        let mut other_pid = line("s", 1, 1, 20, 10, "ok");
        other_pid.attempt.pid = Some(7);
        b.add(&other_pid);
        let mut other_host = line("s", 2, 1, 40, 10, "ok");
        other_host.attempt.host = Some("node2");
        b.add(&other_host);
        b.add(&line("s", 3, 1, 60, 10, "ok"));
        let t = b.finish();
        assert_eq!(t.rows.len(), 3);
        assert_eq!(t.rows[0].attempts, 2);
    }
}

//! What one stage came to, and the one place where that becomes the manifest record, the
//! `stage_finished` event and the summary row.

use std::time::Duration;

use crate::events::Event;
use crate::manifest::{DecisionRecord, StageRecord, StageStatus};
use crate::output::ErrorKind;
use crate::pool::Decision;

/// How many failures the summary keeps.
const KEEP_ERRORS: usize = 5;

#[derive(Debug, Clone)]
pub struct FailureSummary {
    pub index: u64,
    pub kind: ErrorKind,
    pub message: String,
}

/// Why a stage ended before every input had a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageStop {
    /// `on_error = "fail"` and a task failed.
    FirstFailure,
    /// A worker could not load the plugins or run the initializer.
    WorkerStart(String),
    /// Workers kept dying without running any task.
    WorkersLost(String),
    /// SIGINT, SIGTERM or SIGHUP (the signal number).
    Interrupted(i32),
}

#[derive(Debug, Clone)]
pub struct StageOutcome {
    pub total: u64,
    pub ok: u64,
    pub failed: u64,
    pub retried: u64,
    pub wall: Duration,
    pub stopped: Option<StageStop>,
    pub first_errors: Vec<FailureSummary>,
}

impl StageOutcome {
    pub fn new(total: u64) -> Self {
        Self {
            total,
            ok: 0,
            failed: 0,
            retried: 0,
            wall: Duration::ZERO,
            stopped: None,
            first_errors: Vec::new(),
        }
    }

    /// A stage finished in an earlier run, as the summary shows it.
    pub fn kept(record: &StageRecord) -> Self {
        Self {
            total: record.tasks,
            ok: record.ok,
            failed: record.failed,
            retried: record.retried,
            wall: Duration::try_from_secs_f64(record.wall_time_s).unwrap_or_default(),
            stopped: None,
            first_errors: Vec::new(),
        }
    }

    pub fn not_run(&self) -> u64 {
        self.total.saturating_sub(self.ok + self.failed)
    }

    pub fn is_interrupted(&self) -> bool {
        matches!(self.stopped, Some(StageStop::Interrupted(_)))
    }

    /// Records a failure for the summary: it keeps the [`KEEP_ERRORS`] with the lowest input
    /// indices, in index order, whatever order they completed in (it reads like the file).
    pub fn count_failure(&mut self, index: u64, kind: ErrorKind, message: &str) {
        self.failed += 1;
        let errors = &mut self.first_errors;
        let at = errors.partition_point(|e| e.index < index);
        if at < KEEP_ERRORS {
            errors.insert(
                at,
                FailureSummary {
                    index,
                    kind,
                    message: message.to_owned(),
                },
            );
            errors.truncate(KEEP_ERRORS);
        }
    }

    pub fn status(&self) -> StageStatus {
        match self.stopped {
            None => StageStatus::Done,
            Some(StageStop::Interrupted(_)) => StageStatus::Interrupted,
            Some(_) => StageStatus::Stopped,
        }
    }

    fn rate(&self) -> f64 {
        rate(self.ok + self.failed, self.wall.as_secs_f64())
    }

    /// The manifest record of a stage that ran now. `previous_wall`: what a resumed stage had
    /// already spent.
    pub fn record_into(&self, record: &mut StageRecord, decision: &Decision, previous_wall: f64) {
        record.status = self.status();
        record.tasks = self.total;
        record.ok = self.ok;
        record.failed = self.failed;
        record.retried = self.retried;
        record.not_run = self.not_run();
        record.wall_time_s = previous_wall + self.wall.as_secs_f64();
        record.pool_decision = Some(decision_record(decision));
    }

    pub fn finished_event<'a>(&self, stage: &'a str) -> Event<'a> {
        Event::StageFinished {
            stage,
            tasks: self.total,
            ok: self.ok,
            failed: self.failed,
            retried: self.retried,
            not_run: self.not_run(),
            wall_time_s: self.wall.as_secs_f64(),
            tasks_per_s: self.rate(),
        }
    }

    /// The summary table's header, for stage names up to `width` wide (at most
    /// [`NAME_COLUMN`]: with the pool column the table fits in 80 columns).
    pub fn summary_header(width: usize) -> String {
        format!(
            "{:width$}  {:>8} {:>6} {:>7}  {:>8}  {:>9}  pool",
            "stage", "ok", "failed", "retried", "time", "tasks/s"
        )
    }

    /// One row of the summary table; `pool` says what the pool did, in a few words.
    pub fn summary_row(&self, name: &str, width: usize, pool: &str) -> String {
        format!(
            "{:width$}  {:>8} {:>6} {:>7}  {:>7.2}s  {:>9.0}  {pool}",
            fit(name, width),
            self.ok,
            self.failed,
            self.retried,
            self.wall.as_secs_f64(),
            self.rate(),
        )
    }

    /// The line that says a stage is over, printed as it ends.
    pub fn finished_line(&self, name: &str) -> String {
        let word = match self.stopped {
            None => "DONE ",
            Some(StageStop::Interrupted(_)) => "INTERRUPTED",
            Some(_) => "STOPPED",
        };
        let not_run = match self.not_run() {
            0 => String::new(),
            n => format!(", {n} not run"),
        };
        format!(
            "{word} {name}: {} ok, {} failed, {} retried{not_run} in {:.2} s ({:.0} tasks/s)",
            self.ok,
            self.failed,
            self.retried,
            self.wall.as_secs_f64(),
            self.rate()
        )
    }
}

/// What the manifest says of a pool decision (from the stage's start on).
pub fn decision_record(decision: &Decision) -> DecisionRecord {
    let (from, to) = decision.from_to();
    DecisionRecord {
        decision: decision.kind().to_owned(),
        from,
        to,
        reason: decision.reason(),
    }
}

/// The widest stage name the summary table shows whole.
pub const NAME_COLUMN: usize = 16;

/// `name` cut to `width` characters, the last one an ellipsis when it was longer.
pub(crate) fn fit(name: &str, width: usize) -> String {
    if name.chars().count() <= width {
        return name.to_owned();
    }
    let mut cut: String = name.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

pub fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_keeps_the_lowest_failed_indices_in_order() {
        let mut o = StageOutcome::new(1_000);
        for index in [40, 7, 99, 3, 12, 8, 1, 500] {
            o.count_failure(index, ErrorKind::TaskError, "boom");
        }
        let kept: Vec<u64> = o.first_errors.iter().map(|e| e.index).collect();
        assert_eq!(kept, [1, 3, 7, 8, 12]);
        assert_eq!(o.failed, 8);
        assert_eq!(o.not_run(), 992);
    }

    #[test]
    fn one_outcome_gives_the_record_the_event_and_the_row() {
        let mut o = StageOutcome::new(10);
        o.ok = 9;
        o.count_failure(4, ErrorKind::Crashed, "x");
        o.wall = Duration::from_secs(2);
        let mut record = StageRecord::pending("s", "demo::square".into(), Default::default());
        o.record_into(&mut record, &Decision::Reuse { size: 2 }, 1.0);
        assert_eq!((record.ok, record.failed, record.not_run), (9, 1, 0));
        assert_eq!(record.status, StageStatus::Done);
        assert_eq!(record.wall_time_s, 3.0);
        let event = serde_json::to_value(o.finished_event("s")).unwrap();
        assert_eq!(event["tasks_per_s"], 5.0);
        let row = o.summary_row("a-long-stage-name-indeed", NAME_COLUMN, "restart 128");
        assert!(
            row.len() <= 80 && row.starts_with("a-long-stage-na…"),
            "{row}"
        );
        assert!(o.finished_line("s").starts_with("DONE  s: 9 ok, 1 failed"));
    }
}

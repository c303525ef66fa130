//! The rows of the final table: per metric, the repetitions of loky-run and of loky, their
//! medians, the ratio and the target.

use std::fmt::Write as _;

use crate::stats::Summary;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Better {
    Lower,
    Higher,
}

/// A target from issue 6, checked against the loky-run median (or the ratio).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Goal {
    AtMost(f64),
    AtLeast(f64),
    RatioAtLeast(f64),
}

pub(crate) struct Row {
    pub workload: &'static str,
    pub metric: String,
    pub unit: &'static str,
    pub better: Better,
    pub lr: Vec<f64>,
    pub loky: Vec<f64>,
    pub goal: Option<Goal>,
}

impl Row {
    /// How many times better loky-run is than loky (> 1: loky-run is faster / smaller):
    /// loky ÷ loky-run for times and sizes, loky-run ÷ loky for rates.
    pub(crate) fn ratio(&self) -> Option<f64> {
        let lr = Summary::of(&self.lr)?.median;
        let loky = Summary::of(&self.loky)?.median;
        Some(match self.better {
            Better::Lower => loky / lr,
            Better::Higher => lr / loky,
        })
    }

    pub(crate) fn met(&self) -> Option<bool> {
        let lr = Summary::of(&self.lr)?.median;
        Some(match self.goal? {
            Goal::AtMost(v) => lr <= v,
            Goal::AtLeast(v) => lr >= v,
            Goal::RatioAtLeast(v) => self.ratio()? >= v,
        })
    }

    fn goal_text(&self) -> String {
        match self.goal {
            None => String::new(),
            Some(Goal::AtMost(v)) => format!("≤ {} {}", num(v), self.unit),
            Some(Goal::AtLeast(v)) => format!("≥ {} {}", num(v), self.unit),
            Some(Goal::RatioAtLeast(v)) => format!("ratio ≥ {}", num(v)),
        }
    }
}

#[derive(Default)]
pub(crate) struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    /// The row for `(workload, metric)`, created on first use.
    pub(crate) fn row(
        &mut self,
        workload: &'static str,
        metric: &str,
        unit: &'static str,
        better: Better,
    ) -> &mut Row {
        let pos = self
            .rows
            .iter()
            .position(|r| r.workload == workload && r.metric == metric);
        let i = match pos {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    workload,
                    metric: metric.to_owned(),
                    unit,
                    better,
                    lr: Vec::new(),
                    loky: Vec::new(),
                    goal: None,
                });
                self.rows.len() - 1
            }
        };
        &mut self.rows[i]
    }

    /// The Markdown table of medians (min–max over repetitions).
    pub(crate) fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(
            "| workload | metric | unit | loky-run median (min–max) | loky median (min–max) | ratio | target | met |\n",
        );
        s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
        for r in &self.rows {
            let ratio = r.ratio().map(|x| format!("{x:.1}×")).unwrap_or_default();
            let met = match r.met() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.workload,
                r.metric,
                r.unit,
                cell(&r.lr),
                cell(&r.loky),
                ratio,
                r.goal_text(),
                met
            );
        }
        s
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "workload": r.workload,
                    "metric": r.metric,
                    "unit": r.unit,
                    "loky_run": r.lr,
                    "loky": r.loky,
                    "loky_run_median": Summary::of(&r.lr).map(|s| s.median),
                    "loky_median": Summary::of(&r.loky).map(|s| s.median),
                    "ratio": r.ratio(),
                    "target": r.goal_text(),
                    "met": r.met(),
                })
            })
            .collect();
        serde_json::Value::Array(rows)
    }
}

fn cell(samples: &[f64]) -> String {
    match Summary::of(samples) {
        None => "–".to_owned(),
        Some(s) if s.n == 1 => num(s.median),
        Some(s) => format!("{} ({}–{})", num(s.median), num(s.min), num(s.max)),
    }
}

/// A number with about three significant digits, large ones with k/M suffixes.
pub(crate) fn num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_goal() {
        let mut rep = Report::default();
        let r = rep.row("w", "time", "ms", Better::Lower);
        r.lr = vec![10.0, 12.0, 11.0];
        r.loky = vec![110.0];
        r.goal = Some(Goal::AtMost(25.0));
        let r = rep.row("w", "rate", "tasks/s", Better::Higher);
        r.lr = vec![4e6];
        r.loky = vec![1e6];
        r.goal = Some(Goal::RatioAtLeast(5.0));
        assert_eq!(rep.rows.len(), 2);
        assert_eq!(rep.rows[0].ratio(), Some(10.0));
        assert_eq!(rep.rows[0].met(), Some(true));
        assert_eq!(rep.rows[1].ratio(), Some(4.0));
        assert_eq!(rep.rows[1].met(), Some(false));
        assert!(
            rep.markdown()
                .contains("| w | time | ms | 11.0 (10.0–12.0) | 110 | 10.0× |")
        );
        assert_eq!(num(7_680_000.0), "7.68M");
        assert_eq!(num(0.5), "0.500");
    }
}

//! The report as one HTML file: inline CSS, inline SVG charts, no script and no URL, so it
//! opens anywhere (a laptop, a cluster's login node, an e-mail attachment) as it is.
//!
//! Every text that comes from the run (stage and host names, messages, reasons, paths) goes
//! through [`esc`]. Each task attempt on the timeline is one `<rect class="task OUTCOME sN">`
//! (OUTCOME is `ok`, `error` or `lost`, N the stage's colour) with a `<title>` tooltip; merged
//! spans of a large run are `<rect class="busy ...">`.

use std::borrow::Cow;
use std::fmt::Write as _;

use super::model::{self, BarKind, Class, HISTOGRAM_EDGES_US, Row, Timeline};
use super::{Marker, MarkerKind, NO_JOBLOG, Report};
use crate::manifest::DecisionRecord;
use crate::status::{RunState, Runner, StageStatusReport};

/// Width of every chart, and where its plot starts and ends.
const WIDTH: f64 = 1200.0;
const LEFT: f64 = 190.0;
const RIGHT: f64 = 24.0;
/// Stage colours (the timeline's bars, the stage chart); failures are red, apart from these.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
    "#86bcb6", "#8cd17d",
];
/// A failure message is shown up to this many characters (the output holds all of it).
const MAX_MESSAGE: usize = 4000;
/// Workers named in the memory chart's legend (the lines all have tooltips).
const MAX_LEGEND: usize = 24;

macro_rules! w {
    ($out:expr, $($arg:tt)*) => {
        let _ = write!($out, $($arg)*);
    };
}

/// Escapes text for HTML content and attribute values.
pub fn esc(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A duration as people read it: `850µs`, `12.3ms`, `0.25s`, `1.50s`, `5m 03s`.
pub fn duration(secs: f64) -> String {
    if secs < 1e-3 {
        format!("{:.0}µs", secs * 1e6)
    } else if secs < 0.1 {
        format!("{:.1}ms", secs * 1e3)
    } else {
        crate::status::short_duration(secs)
    }
}

/// A size: `812 KiB`, `12.3 MiB`, `1.50 GiB`.
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", n / (1u64 << 30) as f64)
    } else if n >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", n / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", n / 1024.0)
    }
}

/// A round step near `raw`: 1, 2 or 5 times a power of ten.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let exp = 10f64.powf(raw.log10().floor());
    let f = raw / exp;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * exp
}

/// A moment on the time axis (`step` tells how precise).
fn clock(t: f64, step: f64) -> String {
    if step >= 60.0 || t >= 3600.0 {
        let m = (t / 60.0).round() as u64;
        if m >= 60 {
            format!("{}h{:02}", m / 60, m % 60)
        } else {
            format!("{m}m")
        }
    } else if t >= 60.0 {
        let s = t.round() as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        let decimals = if step >= 1.0 {
            0
        } else {
            (-step.log10().floor()) as usize
        };
        format!("{t:.decimals$}s")
    }
}

/// The x axis of the time charts.
struct TimeAxis {
    span: f64,
}

impl TimeAxis {
    fn x(&self, t: f64) -> f64 {
        LEFT + (t / self.span).clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT)
    }

    /// Tick lines down to `bottom` and their labels under it.
    fn draw(&self, out: &mut String, top: f64, bottom: f64) {
        let step = nice_step(self.span / 8.0);
        let mut i = 0u32;
        loop {
            let t = f64::from(i) * step;
            if t > self.span * 1.0001 {
                break;
            }
            let x = self.x(t);
            w!(
                out,
                "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\"/>\
                 <text class=\"axis\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                bottom + 14.0,
                clock(t, step)
            );
            i += 1;
        }
    }

    /// The run's markers as vertical lines from `top` to `bottom`; stage starts are labelled
    /// elsewhere (the stage bands), restarts and resumes here.
    fn markers(&self, out: &mut String, markers: &[Marker], top: f64, bottom: f64, labels: bool) {
        for m in markers {
            let x = self.x(m.at_s);
            let class = match m.kind {
                MarkerKind::StageStart => "stage",
                MarkerKind::Restart => "restart",
                MarkerKind::Resume => "resume",
            };
            w!(
                out,
                "<line class=\"mark {class}\" x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\"><title>{} at {}</title></line>",
                esc(&m.label),
                clock(m.at_s, 0.001)
            );
            if labels && m.kind != MarkerKind::StageStart {
                let word = if m.kind == MarkerKind::Restart {
                    "restart"
                } else {
                    "resumed"
                };
                w!(
                    out,
                    "<text class=\"mlabel {class}\" x=\"{:.1}\" y=\"{:.1}\">{word}<title>{}</title></text>",
                    x + 3.0,
                    bottom - 4.0,
                    esc(&m.label)
                );
            }
        }
    }
}

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut out = String::with_capacity(64 << 10);
    let s = &r.status;
    let name = s.pipeline.as_deref().unwrap_or("(unnamed)");
    w!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>loky-run report: {}</title>\n<style>{CSS}{}</style>\n</head>\n<body>\n",
        esc(name),
        palette_css()
    );
    summary(&mut out, r);
    if !r.notes.is_empty() {
        out.push_str("<div class=\"notes\">");
        for n in &r.notes {
            w!(out, "<p class=\"note\">{}</p>", esc(n));
        }
        out.push_str("</div>\n");
    }
    stage_table(&mut out, r);
    stage_chart(&mut out, r);
    match &r.timeline {
        Some(t) => {
            gantt(&mut out, r, t);
            throughput(&mut out, r, t);
            histogram(&mut out, t);
            memory(&mut out, r, t);
            slowest(&mut out, t);
        }
        None => {
            w!(
                out,
                "<section id=\"tasks\"><h2>Tasks</h2><p class=\"note\">{}</p></section>\n",
                esc(NO_JOBLOG)
            );
        }
    }
    failures(&mut out, r);
    w!(
        out,
        "<footer>Written by loky-run {} at {} from {}: manifest.json",
        env!("CARGO_PKG_VERSION"),
        esc(&r.generated_at),
        esc(&s.output_dir.display().to_string())
    );
    if let Some(p) = &s.joblog {
        w!(out, ", joblog {}", esc(&p.display().to_string()));
    }
    if let Some(p) = &s.events {
        w!(out, ", events {}", esc(&p.display().to_string()));
    }
    w!(
        out,
        "; stage times from the {}.</footer>\n</body>\n</html>\n",
        r.times_from
    );
    out
}

const CSS: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#222;background:#fff;margin:0 auto;max-width:1240px;padding:16px 20px}
h1{font-size:22px;margin:4px 0 2px}h2{font-size:17px;margin:26px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
.sub{color:#555;margin:0 0 10px}.sub code{font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:6px 12px;min-width:96px;background:#fafbfc}
.card b{display:block;font-size:20px}.card span{color:#666;font-size:12px}
.card.bad b{color:#c81e1e}.card.good b{color:#2a7d2a}
.note{background:#fff6dd;border-left:4px solid #e0a800;padding:6px 10px;margin:6px 0}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border-bottom:1px solid #e4e4e4;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f7}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.msg{white-space:pre-wrap;font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:12px;max-width:640px;word-break:break-word}
.small{color:#666;font-size:12px}.fail{color:#c81e1e}
svg{display:block;max-width:100%;height:auto;font-size:11px}
svg text{fill:#333}.axis{fill:#555}
.tick{stroke:#e6e6e6}.lane{fill:#f7f8f9}.band0{fill:#eef3f9}.band1{fill:#f9f4ec}
.blabel{font-weight:600}
.mark{stroke-width:1.2}.mark.stage{stroke:#777}.mark.restart{stroke:#c81e1e;stroke-dasharray:5 3;stroke-width:2}
.mark.resume{stroke:#1f5fbf;stroke-dasharray:2 3;stroke-width:2}
.mlabel.restart{fill:#c81e1e;font-weight:600}.mlabel.resume{fill:#1f5fbf;font-weight:600}
.task.error,.busy.error{fill:#d62728;stroke:#7a0f10;stroke-width:.6}.task.lost{fill:#aaa}
.busy.mixed{stroke:#d62728;stroke-width:1.5}
.busy{opacity:.85}
.tp.ok{fill:#4e79a7}.tp.error{fill:#d62728}.hist{fill:#59a14f}
.rss{fill:none;stroke-width:1.6}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;margin:4px 0 0 190px}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:4px;vertical-align:-1px}
footer{margin-top:28px;color:#777;font-size:12px;border-top:1px solid #ddd;padding-top:6px}
";

/// The stage colour classes: `.sN` fills a task bar, `.cN` strokes a memory line.
fn palette_css() -> String {
    let mut css = String::new();
    for (i, c) in PALETTE.iter().enumerate() {
        w!(
            css,
            ".s{i}{{fill:{c}}}.c{i}{{stroke:{c}}}.k{i}{{background:{c}}}"
        );
    }
    css
}

fn colour(i: usize) -> usize {
    i % PALETTE.len()
}

fn summary(out: &mut String, r: &Report) {
    let s = &r.status;
    let name = s.pipeline.as_deref().unwrap_or("(unnamed)");
    w!(out, "<h1>loky-run report: {}</h1>\n", esc(name));
    let state = match (&s.state, s.exit_code) {
        (RunState::Running, _) => match &s.runner {
            Runner::Alive { pid, host, .. } => {
                format!("running (pid {pid} on {host}); this report is a snapshot")
            }
            _ => "running".into(),
        },
        (state, Some(code)) => format!("{} (exit {code})", state.as_str()),
        (state, None) => state.as_str().to_owned(),
    };
    w!(
        out,
        "<p class=\"sub\">{} &middot; started {}{} &middot; pipeline <code>{}</code> &middot; outputs <code>{}</code></p>\n",
        esc(&state),
        esc(&s.started_at),
        s.finished_at
            .as_deref()
            .map(|f| format!(", ended {}", esc(f)))
            .unwrap_or_default(),
        esc(&s.pipeline_file.display().to_string()),
        esc(&s.output_dir.display().to_string())
    );
    let tasks: u64 = s.stages.iter().map(|st| st.tasks).sum();
    let failed: u64 = s.stages.iter().map(|st| st.failed).sum();
    let retried: u64 = s.stages.iter().map(|st| st.retried).sum();
    let mut cards = vec![
        (
            s.state.as_str().to_owned(),
            "state",
            match s.state {
                RunState::Succeeded => "good",
                RunState::Failed | RunState::Killed => "bad",
                _ => "",
            },
        ),
        (
            s.elapsed_s.map_or_else(|| "?".into(), duration),
            "elapsed",
            "",
        ),
        (s.stages.len().to_string(), "stages", ""),
        (tasks.to_string(), "tasks", ""),
        (
            failed.to_string(),
            "failed",
            if failed > 0 { "bad" } else { "good" },
        ),
        (retried.to_string(), "retried", ""),
    ];
    if let Some(t) = &r.timeline {
        cards.push((t.rows.len().to_string(), "worker processes", ""));
        cards.push(((t.timed + t.untimed).to_string(), "attempts", ""));
    }
    out.push_str("<div class=\"cards\">");
    for (value, label, class) in cards {
        w!(
            out,
            "<div class=\"card {class}\"><b>{}</b><span>{label}</span></div>",
            esc(&value)
        );
    }
    out.push_str("</div>\n");
}

/// `start 2`, `reuse 2`, `resize 2->4`, `restart 2`.
fn decision_short(d: &DecisionRecord) -> String {
    match d.decision.as_str() {
        "resize" => format!("resize {}&rarr;{}", d.from, d.to),
        other => format!("{} {}", esc(other), d.to),
    }
}

fn stage_table(out: &mut String, r: &Report) {
    out.push_str(
        "<section id=\"stages\"><h2>Stages</h2><table><tr><th>stage</th><th>task</th><th>state</th>\
         <th>tasks</th><th>ok</th><th>failed</th><th>retried</th><th>not run</th>",
    );
    let attempts = r.timeline.as_ref().map(|t| &t.per_stage);
    if attempts.is_some() {
        out.push_str("<th>attempts</th><th>task time</th>");
    }
    out.push_str("<th>wall time</th><th>pool</th></tr>\n");
    for (i, st) in r.status.stages.iter().enumerate() {
        stage_row(out, i, st, r.timeline.as_ref());
    }
    out.push_str("</table></section>\n");
}

fn stage_row(out: &mut String, i: usize, st: &StageStatusReport, timeline: Option<&Timeline>) {
    let pending = st.state == "pending";
    let count = |n: u64| if pending { "-".into() } else { n.to_string() };
    let state = match (&st.progress, st.tasks) {
        (Some(_), tasks) if tasks > 0 => {
            format!("running {:.0}%", st.done as f64 * 100.0 / tasks as f64)
        }
        _ => st.state.clone(),
    };
    w!(
        out,
        "<tr><td><span class=\"sw k{}\"></span>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{}</td><td class=\"n{}\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
        colour(i),
        esc(&st.name),
        esc(&st.task),
        esc(&state),
        if pending {
            "-".into()
        } else {
            st.tasks.to_string()
        },
        count(st.ok),
        if st.failed > 0 { " fail" } else { "" },
        count(st.failed),
        count(st.retried),
        count(st.not_run),
    );
    if let Some(t) = timeline {
        match t.stages.iter().position(|n| *n == st.name) {
            Some(j) => {
                let a = &t.per_stage[j];
                w!(
                    out,
                    "<td class=\"n\">{}</td><td class=\"n\">{}</td>",
                    a.attempts,
                    duration(a.busy_s)
                );
            }
            None => out.push_str("<td class=\"n\">0</td><td></td>"),
        }
    }
    w!(
        out,
        "<td class=\"n\">{}</td><td>",
        if pending {
            "-".into()
        } else {
            duration(st.wall_time_s)
        }
    );
    if let Some(d) = &st.pool_decision {
        w!(
            out,
            "{}<br><span class=\"small\">{}</span>",
            decision_short(d),
            esc(&d.reason)
        );
    }
    out.push_str("</td></tr>\n");
}

/// One row per stage, from its start to its end, with the restarts and resumes.
fn stage_chart(out: &mut String, r: &Report) {
    let axis = TimeAxis {
        span: r.frame.span_s(),
    };
    let row_h = 22.0;
    let top = 8.0;
    let bottom = top + row_h * r.spans.len().max(1) as f64;
    w!(
        out,
        "<section id=\"stage-times\"><h2>Stages over time</h2><svg viewBox=\"0 0 {WIDTH} {h:.0}\" width=\"{WIDTH}\" height=\"{h:.0}\">",
        h = bottom + 40.0
    );
    axis.draw(out, top, bottom);
    for (i, span) in r.spans.iter().enumerate() {
        let y = top + row_h * i as f64;
        w!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT - 8.0,
            y + row_h / 2.0 + 4.0,
            esc(&clip(&span.name, 26))
        );
        let Some(start) = span.start_s else { continue };
        let end = span.end_s.unwrap_or(axis.span);
        let (x0, x1) = (axis.x(start), axis.x(end));
        let st = &r.status.stages[i];
        w!(
            out,
            "<rect class=\"stage s{}\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"2\"><title>{}: {}, from {} to {} ({}); {} ok, {} failed</title></rect>",
            colour(i),
            y + 3.0,
            (x1 - x0).max(1.0),
            row_h - 6.0,
            esc(&span.name),
            esc(&st.state),
            clock(start, 0.001),
            clock(end, 0.001),
            duration(end - start),
            st.ok,
            st.failed
        );
    }
    let shown: Vec<Marker> = r
        .markers
        .iter()
        .filter(|m| m.kind != MarkerKind::StageStart)
        .cloned()
        .collect();
    axis.markers(out, &shown, top, bottom, true);
    out.push_str("</svg></section>\n");
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max - 1).collect();
        s.push('…');
        s
    }
}

fn worker_label(row: &Row) -> String {
    let mut label = match row.worker {
        Some(w) => format!("worker {w}"),
        None => "no worker".to_owned(),
    };
    if let Some(pid) = row.pid {
        w!(label, " · pid {pid}");
    }
    if let Some(host) = &row.host {
        w!(label, " · {host}");
    }
    label
}

/// The timeline: a row per worker process, a bar per task attempt.
fn gantt(out: &mut String, r: &Report, t: &Timeline) {
    let axis = TimeAxis {
        span: t.frame.span_s(),
    };
    let n = t.rows.len().max(1);
    let row_h = if n <= 24 {
        20.0
    } else {
        (480.0 / n as f64).clamp(3.0, 20.0)
    };
    let inset = if row_h >= 8.0 { 2.5 } else { 0.3 };
    let top = 22.0;
    let bottom = top + row_h * n as f64;
    w!(
        out,
        "<section id=\"timeline\"><h2>Tasks per worker</h2><p class=\"small\">{}; red: failed, \
         grey: result lost with its worker. Hover a bar for its task.</p>\
         <svg viewBox=\"0 0 {WIDTH} {h:.0}\" width=\"{WIDTH}\" height=\"{h:.0}\">",
        if t.coalesced.is_some() {
            format!("{} attempts, adjacent ones merged into busy spans", t.timed)
        } else {
            format!("One bar per task attempt ({} drawn)", t.timed)
        },
        h = bottom + 36.0
    );
    // Stage bands behind everything, named at the top.
    for (i, span) in r.spans.iter().enumerate() {
        let Some(start) = span.start_s else { continue };
        let end = span.end_s.unwrap_or(axis.span);
        let (x0, x1) = (axis.x(start), axis.x(end));
        w!(
            out,
            "<rect class=\"band{}\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"><title>stage {}</title></rect>",
            i % 2,
            top - 18.0,
            (x1 - x0).max(0.5),
            bottom - top + 18.0,
            esc(&span.name)
        );
        if x1 - x0 > 24.0 {
            let room = ((x1 - x0 - 6.0) / 6.5) as usize;
            w!(
                out,
                "<text class=\"blabel\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                x0 + 3.0,
                top - 6.0,
                esc(&clip(&span.name, room.max(2)))
            );
        }
    }
    axis.draw(out, top, bottom);
    for (i, row) in t.rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        if i % 2 == 1 {
            w!(
                out,
                "<rect class=\"lane\" x=\"{LEFT}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{row_h:.1}\" opacity=\".6\"/>",
                WIDTH - LEFT - RIGHT
            );
        }
        if row_h >= 10.0 {
            let label = worker_label(row);
            w!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}<title>{}: {} attempts, {} failed, busy {}{}</title></text>",
                LEFT - 8.0,
                y + row_h / 2.0 + 4.0,
                esc(&clip(&label, 30)),
                esc(&label),
                row.attempts,
                row.failed,
                duration(row.busy_s),
                row.peak_rss
                    .map(|p| format!(", peak RSS {}", bytes(p)))
                    .unwrap_or_default()
            );
        }
    }
    for bar in &t.bars {
        let y = top + row_h * bar.row as f64 + inset;
        let (x0, x1) = (axis.x(bar.start_s), axis.x(bar.end_s));
        // A failure stays visible however short it was.
        let failed = match &bar.what {
            BarKind::Task { outcome, .. } => Class::of(t.outcome(*outcome)) == Class::Error,
            BarKind::Busy { .. } => false,
        };
        let width = (x1 - x0).max(if failed { 2.0 } else { 0.6 });
        let stage = t
            .stages
            .get(usize::from(bar.stage))
            .map_or("?", String::as_str);
        let stage_colour = colour(
            r.spans
                .iter()
                .position(|s| s.name == stage)
                .unwrap_or(usize::from(bar.stage)),
        );
        match &bar.what {
            BarKind::Task {
                index,
                source,
                attempt,
                outcome,
            } => {
                let outcome = t.outcome(*outcome);
                w!(
                    out,
                    "<rect class=\"task {} s{stage_colour}\" x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{:.1}\"><title>{}[{index}]{} attempt {attempt}: {}, {}, at {}</title></rect>\n",
                    Class::of(outcome).css(),
                    row_h - 2.0 * inset,
                    esc(stage),
                    source.map(|s| format!(" (from {s})")).unwrap_or_default(),
                    esc(outcome),
                    duration(bar.end_s - bar.start_s),
                    clock(bar.start_s, 0.001),
                );
            }
            BarKind::Busy { tasks, failed } => {
                // Failures drawn on their own leave the span its stage's colour.
                let class = match (*failed, t.failures_drawn) {
                    (0, _) | (_, true) => "ok",
                    (f, false) if f * 2 >= *tasks => "error",
                    _ => "mixed",
                };
                w!(
                    out,
                    "<rect class=\"busy {class} s{stage_colour}\" x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{:.1}\"><title>{}: {tasks} attempts{}, from {} to {}</title></rect>\n",
                    row_h - 2.0 * inset,
                    esc(stage),
                    if *failed > 0 {
                        format!(" ({failed} failed)")
                    } else {
                        String::new()
                    },
                    clock(bar.start_s, 0.001),
                    clock(bar.end_s, 0.001),
                );
            }
        }
    }
    axis.markers(out, &r.markers, top - 18.0, bottom, true);
    out.push_str("</svg>");
    legend_of_stages(out, r);
    out.push_str("</section>\n");
}

fn legend_of_stages(out: &mut String, r: &Report) {
    out.push_str("<div class=\"legend\">");
    for (i, s) in r.spans.iter().enumerate() {
        w!(
            out,
            "<span><span class=\"sw k{}\"></span>{}</span>",
            colour(i),
            esc(&s.name)
        );
    }
    out.push_str(
        "<span><span class=\"sw\" style=\"background:#d62728\"></span>failed</span>\
         <span><span class=\"sw\" style=\"background:#c81e1e;height:3px\"></span>pool restart</span></div>",
    );
}

/// Y ticks for a chart of height `h` from `bottom` up, values 0..=`max`.
fn y_ticks(out: &mut String, max: f64, bottom: f64, h: f64, label: impl Fn(f64) -> String) {
    let step = nice_step(max / 5.0);
    let mut v = 0.0;
    while v <= max * 1.0001 {
        let y = bottom - v / max * h;
        w!(
            out,
            "<line class=\"tick\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/><text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            label(v)
        );
        v += step;
    }
}

fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn throughput(out: &mut String, r: &Report, t: &Timeline) {
    let axis = TimeAxis {
        span: t.frame.span_s(),
    };
    let (top, h) = (10.0, 150.0);
    let bottom = top + h;
    let bucket = t.bucket_s();
    let max = t
        .throughput
        .iter()
        .map(|b| (b[0] + b[1]) as f64 / bucket)
        .fold(0.0, f64::max)
        .max(1e-9);
    let max = max.max(nice_step(max / 4.0));
    w!(
        out,
        "<section id=\"throughput\"><h2>Throughput</h2><p class=\"small\">Task attempts finished per second, in slices of {}; red: failed.</p>\
         <svg viewBox=\"0 0 {WIDTH} {H:.0}\" width=\"{WIDTH}\" height=\"{H:.0}\">",
        duration(bucket),
        H = bottom + 36.0
    );
    y_ticks(out, max, bottom, h, rate);
    axis.draw(out, bottom, bottom);
    let bw = (WIDTH - LEFT - RIGHT) / model::THROUGHPUT_BUCKETS as f64;
    for (i, b) in t.throughput.iter().enumerate() {
        let x = LEFT + bw * i as f64;
        let ok_h = b[0] as f64 / bucket / max * h;
        let fail_h = b[1] as f64 / bucket / max * h;
        let from = i as f64 * bucket;
        if b[0] > 0 {
            w!(
                out,
                "<rect class=\"tp ok\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{ok_h:.1}\"><title>{} to {}: {} ok ({}/s)</title></rect>",
                x + 0.5,
                bottom - ok_h,
                (bw - 1.0).max(0.5),
                clock(from, bucket),
                clock(from + bucket, bucket),
                b[0],
                rate(b[0] as f64 / bucket)
            );
        }
        if b[1] > 0 {
            w!(
                out,
                "<rect class=\"tp error\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{fail_h:.1}\"><title>{} to {}: {} failed</title></rect>",
                x + 0.5,
                bottom - ok_h - fail_h,
                (bw - 1.0).max(0.5),
                clock(from, bucket),
                clock(from + bucket, bucket),
                b[1]
            );
        }
    }
    axis.markers(out, &r.markers, top, bottom, false);
    out.push_str("</svg></section>\n");
}

/// A number with at most one decimal, none if it is whole: `2`, `1.5`.
fn trim(v: f64) -> String {
    let text = format!("{v:.1}");
    text.strip_suffix(".0").unwrap_or(&text).to_owned()
}

/// The lower edge of a histogram bucket.
fn edge_label(bucket: usize) -> String {
    match bucket {
        0 => "0".into(),
        b => {
            let us = HISTOGRAM_EDGES_US[b - 1];
            if us < 1000 {
                format!("{us}µs")
            } else if us < 1_000_000 {
                format!("{}ms", us / 1000)
            } else {
                format!("{}s", us / 1_000_000)
            }
        }
    }
}

fn histogram(out: &mut String, t: &Timeline) {
    let used: Vec<usize> = (0..t.histogram.len())
        .filter(|&i| t.histogram[i] > 0)
        .collect();
    let (Some(&lo), Some(&hi)) = (used.first(), used.last()) else {
        return;
    };
    let (top, h) = (10.0, 150.0);
    let bottom = top + h;
    let max = t.histogram[lo..=hi].iter().copied().max().unwrap_or(1) as f64;
    let max = max.max(nice_step(max / 4.0));
    w!(
        out,
        "<section id=\"durations\"><h2>Task durations</h2><p class=\"small\">Attempts per duration (buckets 1, 2, 5 per decade).</p>\
         <svg viewBox=\"0 0 {WIDTH} {H:.0}\" width=\"{WIDTH}\" height=\"{H:.0}\">",
        H = bottom + 36.0
    );
    y_ticks(out, max, bottom, h, |v| format!("{v:.0}"));
    let n = hi - lo + 1;
    let bw = ((WIDTH - LEFT - RIGHT) / n as f64).min(70.0);
    for (k, b) in (lo..=hi).enumerate() {
        let x = LEFT + bw * k as f64;
        let count = t.histogram[b];
        let bh = count as f64 / max * h;
        let upper = if b < HISTOGRAM_EDGES_US.len() {
            edge_label(b + 1)
        } else {
            "∞".into()
        };
        w!(
            out,
            "<rect class=\"hist\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>{} to {}: {count} attempts</title></rect>\
             <text class=\"axis\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x + 1.0,
            bottom - bh,
            (bw - 2.0).max(0.5),
            edge_label(b),
            upper,
            bottom + 14.0,
            edge_label(b)
        );
    }
    w!(
        out,
        "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        LEFT + bw * n as f64,
        bottom + 14.0,
        if hi < HISTOGRAM_EDGES_US.len() {
            edge_label(hi + 1)
        } else {
            "∞".into()
        }
    );
    out.push_str("</svg></section>\n");
}

/// Each worker's resident memory after its tasks, over time.
fn memory(out: &mut String, r: &Report, t: &Timeline) {
    let max = t
        .rows
        .iter()
        .filter_map(|row| row.peak_rss)
        .max()
        .unwrap_or(0);
    if max == 0 {
        return;
    }
    let axis = TimeAxis {
        span: t.frame.span_s(),
    };
    let (top, h) = (10.0, 180.0);
    let bottom = top + h;
    let mib = (1u64 << 20) as f64;
    let max_mib = (max as f64 / mib).max(1.0);
    let max_mib = max_mib.max(nice_step(max_mib / 4.0)) * 1.05;
    w!(
        out,
        "<section id=\"memory\"><h2>Worker memory</h2><p class=\"small\">Resident memory (RSS) of each worker process after its tasks, MiB.</p>\
         <svg viewBox=\"0 0 {WIDTH} {H:.0}\" width=\"{WIDTH}\" height=\"{H:.0}\">",
        H = bottom + 36.0
    );
    y_ticks(out, max_mib, bottom, h, |v| format!("{v:.0}"));
    axis.draw(out, bottom, bottom);
    axis.markers(out, &r.markers, top, bottom, false);
    for (i, row) in t.rows.iter().enumerate() {
        if row.rss.is_empty() {
            continue;
        }
        let y = |rss: u64| bottom - rss as f64 / mib / max_mib * h;
        let mut points = String::new();
        for &(at, rss) in &row.rss {
            w!(points, "{:.1},{:.1} ", axis.x(at), y(rss));
        }
        if row.rss.len() == 1 {
            // One sample: a short flat line, so it shows.
            let (at, rss) = row.rss[0];
            w!(points, "{:.1},{:.1}", axis.x(at) + 3.0, y(rss));
        }
        w!(
            out,
            "<polyline class=\"rss c{}\" points=\"{}\"><title>{}: peak {}</title></polyline>",
            colour(i),
            points.trim_end(),
            esc(&worker_label(row)),
            row.peak_rss.map(bytes).unwrap_or_default()
        );
    }
    out.push_str("</svg><div class=\"legend\">");
    for (i, row) in t.rows.iter().enumerate().take(MAX_LEGEND) {
        w!(
            out,
            "<span><span class=\"sw k{}\"></span>{}</span>",
            colour(i),
            esc(&worker_label(row))
        );
    }
    if t.rows.len() > MAX_LEGEND {
        w!(
            out,
            "<span>and {} more (hover a line)</span>",
            t.rows.len() - MAX_LEGEND
        );
    }
    out.push_str("</div></section>\n");
}

fn slowest(out: &mut String, t: &Timeline) {
    if t.slowest.is_empty() {
        return;
    }
    w!(
        out,
        "<section id=\"slowest\"><h2>Slowest tasks</h2><table><tr><th>#</th><th>stage</th><th>index</th>\
         <th>source</th><th>attempt</th><th>worker</th><th>duration</th><th>outcome</th><th>started at</th></tr>\n"
    );
    for (i, s) in t.slowest.iter().enumerate() {
        let outcome = t.outcome(s.outcome);
        w!(
            out,
            "<tr><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td>{}</td><td class=\"n\">{}</td><td{}>{}</td><td class=\"n\">{}</td></tr>\n",
            i + 1,
            esc(t
                .stages
                .get(usize::from(s.stage))
                .map_or("?", String::as_str)),
            s.index,
            s.source.map(|v| v.to_string()).unwrap_or_default(),
            s.attempt,
            t.rows
                .get(s.row as usize)
                .map(|row| esc(&worker_label(row)).into_owned())
                .unwrap_or_default(),
            duration(s.duration_us as f64 / 1e6),
            if Class::of(outcome) == Class::Ok {
                ""
            } else {
                " class=\"fail\""
            },
            esc(outcome),
            clock(s.start_s, 0.001)
        );
    }
    out.push_str("</table></section>\n");
}

fn failures(out: &mut String, r: &Report) {
    let total: u64 = r.status.stages.iter().map(|s| s.failed).sum();
    w!(out, "<section id=\"failures\"><h2>Failures ({total})</h2>");
    if total == 0 {
        out.push_str("<p>No task failed.</p></section>\n");
        return;
    }
    out.push_str(
        "<table><tr><th>stage</th><th>index</th><th>source</th><th>kind</th><th>attempts</th><th>message</th></tr>\n",
    );
    for s in &r.status.stages {
        for f in &s.failures {
            let cut = f.message.chars().count() > MAX_MESSAGE;
            let message: String = if cut {
                f.message.chars().take(MAX_MESSAGE).collect()
            } else {
                f.message.clone()
            };
            w!(
                out,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"fail\">{}</td><td class=\"n\">{}</td><td class=\"msg\">{}{}</td></tr>\n",
                esc(&s.name),
                f.index,
                f.source.map(|v| v.to_string()).unwrap_or_default(),
                esc(&f.kind),
                f.attempts.map(|v| v.to_string()).unwrap_or_default(),
                esc(&message),
                if cut {
                    " […] (the whole message is in the output)"
                } else {
                    ""
                }
            );
        }
        let more = s.failed.saturating_sub(s.failures.len() as u64);
        if more > 0 {
            w!(
                out,
                "<tr><td>{}</td><td colspan=\"5\">{more} more: the error records of {}</td></tr>\n",
                esc(&s.name),
                esc(&s.output.display().to_string())
            );
        }
    }
    out.push_str("</table></section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_run_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"co\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;co&quot;"
        );
        assert!(matches!(esc("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn steps_are_round_and_clocks_read_well() {
        assert_eq!(nice_step(0.13), 0.2);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(clock(0.25, 0.05), "0.25s");
        assert_eq!(clock(12.0, 2.0), "12s");
        assert_eq!(clock(150.0, 20.0), "2m30s");
        assert_eq!(clock(7200.0, 600.0), "2h00");
        assert_eq!(duration(0.000_42), "420µs");
        assert_eq!(duration(0.0123), "12.3ms");
        assert_eq!(duration(0.25), "0.25s");
        assert_eq!(duration(2.5), "2.50s");
        assert_eq!(bytes(5 << 20), "5.0 MiB");
        assert_eq!(rate(2_000_000.0), "2M");
        assert_eq!(rate(1_500_000.0), "1.5M");
        assert_eq!(rate(25_000.0), "25k");
        assert_eq!(rate(250.0), "250");
        assert_eq!(rate(2.5), "2.5");
        assert_eq!(edge_label(0), "0");
        assert_eq!(edge_label(1), "1µs");
        assert_eq!(edge_label(10), "1ms");
        assert_eq!(edge_label(19), "1s");
    }
}

//! Everything the runner prints while it runs goes through here: forwarded worker output,
//! warnings, and progress bars, so that lines never interleave mid-line and never vanish.
//!
//! While bars are drawn, a line is printed through `MultiProgress::suspend` (the bars are
//! cleared, the line written, the bars redrawn). `MultiProgress::println` is not used: it prints
//! nothing when the bars are hidden, which would lose lines in CI logs.

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Writes `text` to standard output at once and flushes it. The error is the caller's to
/// report; a closed pipe (`loky-run schema | head -1`) is [`io::ErrorKind::BrokenPipe`], which
/// the command line turns into a quiet exit 0 ([`crate::error::Error::stdout`]). Never panics,
/// unlike `print!`.
pub fn write_stdout(text: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text)?;
    out.flush()
}

/// Writes `text` to standard error, ignoring failures: an error message that cannot be shown
/// (stderr closed, or a full disk behind it) must not become a panic, and the exit code still
/// tells. Never panics, unlike `eprint!`.
pub fn write_stderr(text: &[u8]) {
    let mut err = io::stderr().lock();
    if crate::style::enabled() {
        let painted = crate::style::decorate(&String::from_utf8_lossy(text));
        let _ = err.write_all(painted.as_bytes());
    } else {
        let _ = err.write_all(text);
    }
    let _ = err.flush();
}

/// How chatty the runner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// `--progress`: when to draw bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// When stderr is a terminal (and `TERM` is not `dumb`).
    Auto,
    /// Always draw bars, even into a file or a pipe.
    Always,
    /// Never: no bars and no periodic progress lines (failures and the verdict still print).
    Never,
}

pub struct Console {
    verbosity: Verbosity,
    lock: Mutex<()>,
    bars: Option<MultiProgress>,
}

/// How often bars are redrawn; updates in between only touch counters.
const REFRESH_HZ: u8 = 10;
const UPDATE_EVERY: Duration = Duration::from_millis(100);

impl Console {
    pub fn new(verbosity: Verbosity) -> Self {
        Self {
            verbosity,
            lock: Mutex::new(()),
            bars: None,
        }
    }

    /// A console that draws progress bars according to `mode`.
    pub fn with_progress(verbosity: Verbosity, mode: ProgressMode) -> Self {
        let draw = match mode {
            ProgressMode::Never => false,
            ProgressMode::Always => true,
            ProgressMode::Auto => {
                io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb")
            }
        };
        let bars = (draw && verbosity > Verbosity::Quiet).then(|| {
            // `term_like` draws even when stderr is not a terminal (`--progress always`).
            let target = ProgressDrawTarget::term_like_with_hz(
                Box::new(::console::Term::stderr()),
                REFRESH_HZ,
            );
            MultiProgress::with_draw_target(target)
        });
        Self {
            verbosity,
            lock: Mutex::new(()),
            bars,
        }
    }

    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// Whether progress bars are drawn.
    pub fn draws_bars(&self) -> bool {
        self.bars.is_some()
    }

    /// One line a worker wrote to its stdout or stderr, prefixed with the worker id.
    pub fn worker_line(&self, worker: u32, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut buf = Vec::with_capacity(line.len() + 16);
        let _ = write!(buf, "[worker {worker}] ");
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.write_raw(&buf);
    }

    /// A status line (suppressed by `-q`).
    pub fn info(&self, msg: &str) {
        if self.verbosity >= Verbosity::Normal {
            self.write_raw(format!("{msg}\n").as_bytes());
        }
    }

    /// A line shown at every verbosity, `-q` included: a task that failed as it happens, the
    /// run's verdict.
    pub fn notice(&self, msg: &str) {
        self.write_raw(format!("{msg}\n").as_bytes());
    }

    /// A detail shown with `-v`.
    pub fn debug(&self, msg: &str) {
        if self.verbosity >= Verbosity::Verbose {
            self.write_raw(format!("{msg}\n").as_bytes());
        }
    }

    pub fn warn(&self, msg: &str) {
        self.write_raw(format!("warning: {msg}\n").as_bytes());
    }

    pub fn error(&self, msg: &str) {
        self.write_raw(format!("error: {msg}\n").as_bytes());
    }

    fn write_raw(&self, bytes: &[u8]) {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A closed or failing stderr loses the line, never the run: results go to files.
        let write = || write_stderr(bytes);
        match &self.bars {
            Some(bars) => bars.suspend(write),
            None => write(),
        }
    }

    /// Bars for one running stage: its own, and a line about the pool. Without bars, a handle
    /// whose updates cost nothing.
    pub fn stage_progress(&self, stage: &str, total: u64) -> StageProgress {
        let Some(bars) = &self.bars else {
            return StageProgress::hidden();
        };
        let bar = bars.add(ProgressBar::new(total));
        // The bar takes what the terminal's width leaves (read again at every draw, so a
        // resize is followed); an ETA with nothing done yet is unknown, not 0 s.
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>14} [{wide_bar}] {pos}/{len} {rate:>10} ETA {eta_or_unknown:>4} {msg}",
            )
            .expect("valid template")
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", state.per_sec());
                },
            )
            .with_key(
                "eta_or_unknown",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = if state.pos() == 0 {
                        write!(w, "?")
                    } else {
                        write!(w, "{:#}", indicatif::HumanDuration(state.eta()))
                    };
                },
            )
            .progress_chars("=> "),
        );
        bar.set_prefix(stage.to_owned());
        let pool = bars.add(ProgressBar::new_spinner());
        pool.set_style(ProgressStyle::with_template("{prefix:>14} {msg}").expect("valid template"));
        pool.set_prefix("pool");
        StageProgress {
            bars: Some((bar, pool)),
            last: Mutex::new(None),
        }
    }
}

/// Live counters of a stage, drawn as bars when the console draws them.
pub struct StageProgress {
    bars: Option<(ProgressBar, ProgressBar)>,
    last: Mutex<Option<Instant>>,
}

/// What the pool line shows.
pub struct PoolStatus {
    pub alive: usize,
    pub busy: usize,
    pub restarts: u64,
    pub replaced: u64,
    /// The Slurm allocations asked for on demand (see `live::allocations_summary`).
    pub allocations: Option<String>,
}

impl StageProgress {
    pub fn hidden() -> Self {
        Self {
            bars: None,
            last: Mutex::new(None),
        }
    }

    /// Updates the counters (rate-limited unless `force`).
    pub fn update(
        &self,
        done: u64,
        failed: u64,
        retried: u64,
        pool: impl FnOnce() -> PoolStatus,
        force: bool,
    ) {
        let Some((bar, pool_bar)) = &self.bars else {
            return;
        };
        {
            let mut last = self
                .last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !force && last.is_some_and(|t| t.elapsed() < UPDATE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        bar.set_position(done);
        let mut msg = String::new();
        if failed > 0 {
            msg.push_str(&format!("{failed} failed"));
        }
        if retried > 0 {
            msg.push_str(&format!(
                "{}{retried} retried",
                if msg.is_empty() { "" } else { ", " }
            ));
        }
        bar.set_message(msg);
        let p = pool();
        let allocations = p.allocations.map(|a| format!(" · {a}")).unwrap_or_default();
        pool_bar.set_message(format!(
            "{} worker(s) alive, {} busy · {} restart(s), {} replaced{allocations}",
            p.alive, p.busy, p.restarts, p.replaced
        ));
    }

    /// Removes the bars (the summary follows).
    pub fn finish(&self) {
        if let Some((bar, pool)) = &self.bars {
            bar.finish_and_clear();
            pool.finish_and_clear();
        }
    }
}

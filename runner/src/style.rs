//! Colour on standard error: `error:` and `warning:` prefixes, `FAIL`/`RETRY`/`STOPPED`/`DONE`
//! lines and a verdict with failures, as the conventions say: `--color auto|always|never`;
//! with `auto`, colour only on a terminal, never with `NO_COLOR` set, always with
//! `CLICOLOR_FORCE` (anstream decides, as for clap's own help and errors).
//!
//! Messages are built plain everywhere (tests, files, snapshots see no escape codes); the
//! colour is added where they are written to stderr ([`crate::console::write_stderr`]), by
//! the line's leading word.

use std::sync::atomic::{AtomicBool, Ordering};

use anstyle::{AnsiColor, Style};

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set (CLICOLOR_FORCE forces it).
    #[default]
    Auto,
    Always,
    Never,
}

static STDERR_COLOR: AtomicBool = AtomicBool::new(false);

/// Decides once, before anything is printed, whether stderr gets colour (and tells clap's
/// anstream the same).
pub fn init(when: ColorWhen) {
    let choice = match when {
        ColorWhen::Auto => anstream::ColorChoice::Auto,
        ColorWhen::Always => anstream::ColorChoice::Always,
        ColorWhen::Never => anstream::ColorChoice::Never,
    };
    choice.write_global();
    let on = !matches!(
        anstream::AutoStream::choice(&std::io::stderr()),
        anstream::ColorChoice::Never
    );
    STDERR_COLOR.store(on, Ordering::Relaxed);
}

/// Whether stderr gets colour.
pub fn enabled() -> bool {
    STDERR_COLOR.load(Ordering::Relaxed)
}

/// `--color` as the first words of the command line say it (`--color never`, `--color=always`),
/// read before clap parses them so that its own messages follow it too.
pub fn scan_args(args: &[std::ffi::OsString]) -> ColorWhen {
    let mut when = ColorWhen::Auto;
    let mut it = args.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = it.next() {
        let value = match arg.strip_prefix("--color") {
            Some("") => it.next().map(std::borrow::Cow::into_owned),
            Some(rest) => rest.strip_prefix('=').map(str::to_owned),
            None => None,
        };
        match value.as_deref() {
            Some("always") => when = ColorWhen::Always,
            Some("never") => when = ColorWhen::Never,
            Some("auto") => when = ColorWhen::Auto,
            _ => {}
        }
    }
    when
}

const RED: Style = Style::new()
    .fg_color(Some(anstyle::Color::Ansi(AnsiColor::Red)))
    .bold();
const YELLOW: Style = Style::new()
    .fg_color(Some(anstyle::Color::Ansi(AnsiColor::Yellow)))
    .bold();
const GREEN: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Green)));

/// `text` (lines for stderr) with colour on the words that say how things went.
pub fn decorate(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    for line in text.split_inclusive('\n') {
        paint_line(line, &mut out);
    }
    out
}

fn paint_line(line: &str, out: &mut String) {
    let lead = [
        ("error:", RED),
        ("warning:", YELLOW),
        ("FAIL ", RED),
        ("STOPPED ", RED),
        ("RETRY ", YELLOW),
        ("DONE ", GREEN),
    ];
    for (word, style) in lead {
        if let Some(rest) = line.strip_prefix(word) {
            out.push_str(&format!("{style}{word}{style:#}{rest}"));
            return;
        }
    }
    // The verdict, `N tasks, M failed, ...`: the failures stand out when there are any.
    if let Some((head, rest)) = line.split_once(" tasks, ") {
        if head.bytes().all(|b| b.is_ascii_digit()) {
            if let Some((failed, tail)) = rest.split_once(" failed") {
                if failed.bytes().all(|b| b.is_ascii_digit()) && failed != "0" {
                    out.push_str(&format!("{head} tasks, {RED}{failed} failed{RED:#}{tail}"));
                    return;
                }
            }
        }
    }
    out.push_str(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_words_and_failures_are_painted() {
        let text = decorate(
            "error: boom\nplain line\nFAIL  s[3]: task_error: x\n12 tasks, 2 failed, 0 retried in 1.0 s\n10 tasks, 0 failed, 0 retried in 1.0 s\n[worker 1] error: not ours\n",
        );
        assert!(
            text.starts_with("\x1b[1m\x1b[31merror:\x1b[0m boom\nplain line\n"),
            "{text:?}"
        );
        assert!(text.contains("\x1b[31mFAIL \x1b[0m s[3]"), "{text:?}");
        assert!(
            text.contains("12 tasks, \x1b[1m\x1b[31m2 failed\x1b[0m, 0 retried"),
            "{text:?}"
        );
        assert!(
            text.contains("\n10 tasks, 0 failed, 0 retried in 1.0 s\n[worker 1] error: not ours\n")
        );
    }

    #[test]
    fn the_flag_is_found_before_clap_parses() {
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            scan_args(&args(&["x", "--color", "never"])),
            ColorWhen::Never
        );
        assert_eq!(
            scan_args(&args(&["x", "run", "--color=always"])),
            ColorWhen::Always
        );
        assert_eq!(scan_args(&args(&["x", "p.toml"])), ColorWhen::Auto);
    }
}

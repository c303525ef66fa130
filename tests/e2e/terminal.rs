//! What a person sees: progress bars under a real pseudo-terminal (via `script`), none when
//! stderr is a file or with `--progress never`, and lines printed whole while bars are drawn.

use crate::support::*;

fn pipeline(fx: &Fixture) -> std::path::PathBuf {
    let sleeps = vec!["120"; 24].join(", ");
    let text = header("tty", "max_workers = 2")
        + &format!(
            "\n[[stage]]\nname = \"sleepy\"\ntask = \"demo::sleep_ms\"\ninput = {{ items = [{sleeps}] }}\n"
        )
        + "\n[[stage]]\nname = \"noisy\"\ntask = \"faults::print_stdout\"\ninput = { items = [200, 200] }\n";
    fx.write("pipeline.toml", &text)
}

/// Runs loky-run under a pseudo-terminal; returns everything the terminal received.
fn under_pty(fx: &Fixture, args: &str) -> String {
    let exe = env!("CARGO_BIN_EXE_loky-run");
    let log = fx.path().join("typescript");
    let status = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &format!("{exe} {args}")])
        .arg(&log)
        .current_dir(fx.path())
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("`script` (util-linux) runs");
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned()
}

#[test]
fn bars_are_drawn_in_a_terminal_and_lines_stay_whole() {
    let fx = Fixture::new();
    let p = pipeline(&fx);
    let screen = under_pty(&fx, &format!("{} --progress auto", p.display()));
    assert!(
        screen.contains("ETA") && screen.contains("/24"),
        "no bar with counts and ETA:\n{screen}"
    );
    assert!(
        screen.contains("worker(s) alive"),
        "no pool line:\n{screen}"
    );
    // Lines printed while the bars are drawn arrive whole, each on its own line.
    let whole = screen
        .lines()
        .filter(|l| l.trim_end_matches('\r').ends_with(" of 200"))
        .count();
    assert_eq!(whole, 400, "worker lines were cut or lost:\n{screen}");
    assert!(
        screen.contains("sleepy") && screen.contains("outputs:"),
        "no summary:\n{screen}"
    );
}

#[test]
fn no_bars_with_progress_never_or_when_stderr_is_a_file() {
    let fx = Fixture::new();
    let p = pipeline(&fx);
    let screen = under_pty(&fx, &format!("{} --progress never", p.display()));
    assert!(
        !screen.contains("ETA"),
        "bars drawn despite --progress never:\n{screen}"
    );
    assert!(
        screen.contains("outputs:"),
        "the summary is always printed:\n{screen}"
    );

    // `--progress auto` (the default) with stderr redirected to a file: nothing drawn.
    let log = fx.path().join("stderr.log");
    let status = fx
        .command()
        .args([p.to_str().unwrap(), "--progress", "auto"])
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let stderr = std::fs::read_to_string(&log).unwrap();
    let r = RunResult {
        code: 0,
        stdout: String::new(),
        stderr,
    };
    assert!(
        !r.stderr.contains('\u{1b}') && !r.stderr.contains("ETA"),
        "escape codes in a file:\n{}",
        r.stderr
    );
    assert!(r.stderr.contains("outputs:"));
}

#[test]
fn failures_and_finished_stages_are_lines_above_the_bars_and_eta_starts_unknown() {
    let fx = Fixture::new();
    let items = (0..12)
        .map(|i| {
            if i % 4 == 1 {
                "\"oops\"".to_owned()
            } else {
                "50".to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let text = header("live", "max_workers = 2\non_error = \"continue\"")
        + &format!(
            "\n[[stage]]\nname = \"mixed\"\ntask = \"faults::sleep_ms\"\ninput = {{ items = [{items}] }}\nchunksize = 1\n"
        );
    let p = fx.write("pipeline.toml", &text);
    let out = std::process::Command::new("script")
        .args([
            "-q",
            "-e",
            "-c",
            &format!(
                "{} {} --progress auto",
                env!("CARGO_BIN_EXE_loky-run"),
                p.display()
            ),
        ])
        .arg(fx.path().join("typescript"))
        .current_dir(fx.path())
        .env("TERM", "xterm-256color")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(1), "some tasks failed");
    let painted =
        String::from_utf8_lossy(&std::fs::read(fx.path().join("typescript")).unwrap()).into_owned();
    // On a terminal, failures are red (`--color auto`); the words are read without the colour.
    assert!(painted.contains("\x1b[31mFAIL "), "{painted}");
    let screen = without_colour(&painted);
    let fails = screen
        .lines()
        .filter(|l| l.contains("FAIL  mixed["))
        .count();
    assert_eq!(fails, 3, "a line per failure as it happens:\n{screen}");
    assert!(screen.contains("DONE  mixed: 9 ok, 3 failed"), "{screen}");
    assert!(
        screen.contains("12 tasks, 3 failed, 0 retried in"),
        "{screen}"
    );
    // The first frame: nothing done yet, so no ETA.
    assert!(screen.contains("ETA    ?"), "{screen}");
}

/// `text` without its colour sequences (`ESC [ ... m`); cursor movements stay.
fn without_colour(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\x1b[") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find(|c: char| !(c.is_ascii_digit() || c == ';'))
            .unwrap_or(after.len());
        if after[end..].starts_with('m') {
            rest = &after[end + 1..];
        } else {
            out.push_str("\x1b[");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

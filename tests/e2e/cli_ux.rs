//! What a user reads: snapshots (insta) of the summary, of each kind of configuration
//! diagnostic and of `show-config`; the generated schema and reference are current and every
//! example pipeline validates; completions; `LOKY_RUN_LOG`; and `new-plugin` end to end.
//!
//! Snapshots live in `tests/e2e/snapshots/`. A mismatch fails the test (CI writes nothing). To
//! accept a change on purpose: `INSTA_UPDATE=always cargo test -p loky-run --test e2e cli_ux`,
//! then review the `.snap` diff (or use `cargo insta review` if you have it).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// Replaces the paths that differ between machines and runs.
fn normalize(fx: &Fixture, text: &str) -> String {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_loky-run"));
    let bin_dir = exe.parent().unwrap().to_owned();
    let target = bin_dir.parent().unwrap().to_owned();
    let mut replacements: Vec<(String, String)> = Vec::new();
    for (path, label) in [
        (fx.path().to_owned(), "[TMP]"),
        (bin_dir.clone(), "[BIN]"),
        (target.join("debug"), "[TARGET]/<profile>"),
        (target.join("release"), "[TARGET]/<profile>"),
        (workspace_root(), "[ROOT]"),
    ] {
        let shown = path.display().to_string();
        if let Ok(canonical) = std::fs::canonicalize(&path) {
            replacements.push((canonical.display().to_string(), label.to_string()));
        }
        replacements.push((shown, label.to_string()));
    }
    // Longest first, so that a path is replaced before any of its parents.
    replacements.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    let mut out = text.to_string();
    for (from, to) in replacements {
        out = out.replace(&from, &to);
    }
    out
}

/// Snapshot settings: files under tests/e2e/snapshots; times and rates of the summary blanked.
fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("snapshots");
    s.set_prepend_module_to_snapshot(false);
    s.add_filter(r" +\d+\.\d\ds +\d+  ", "  [TIME]s  [RATE]  ");
    // The stage lines and the verdict.
    s.add_filter(
        r"in \d+\.\d\d s \(\d+ tasks/s\)",
        "in [TIME] s ([RATE] tasks/s)",
    );
    s.add_filter(r"(?m) in \d+\.\d s$", " in [TIME] s");
    s
}

/// `exit code: N`, then stdout and stderr, normalized.
fn shown(fx: &Fixture, r: &RunResult) -> String {
    let mut out = format!("exit code: {}\n", r.code);
    if !r.stdout.is_empty() {
        out.push_str(&format!("--- stdout\n{}", normalize(fx, &r.stdout)));
    }
    if !r.stderr.is_empty() {
        out.push_str(&format!("--- stderr\n{}", normalize(fx, &r.stderr)));
    }
    out
}

fn snapshot(name: &str, fx: &Fixture, r: &RunResult) {
    let text = shown(fx, r);
    settings().bind(|| insta::assert_snapshot!(name, text));
}

/// A pipeline over the demo plugin only (its task list is part of some messages).
fn demo_header(name: &str) -> String {
    format!(
        "[pipeline]\nname = \"{name}\"\nplugins = [\"{}\"]\noutput_dir = \"out\"\n",
        plugin_path("demo").display()
    )
}

#[test]
fn summary_snapshot() {
    let fx = Fixture::new();
    let p = fx.write(
        "pipeline.toml",
        &(demo_header("summary")
            + "\n[pool]\nmax_workers = 2\non_error = \"continue\"\n\
               \n[[stage]]\nname = \"squares\"\ntask = \"demo::square\"\n\
               input = { items = [1, 2, 3037000500, 4, 9999999999] }\nretries = 1\n\
               \n[[stage]]\nname = \"echoed\"\ntask = \"demo::echo\"\ninput = { from = \"squares\" }\n"),
    );
    let mut r = fx.run(&[p.to_str().unwrap(), "--events", "events.jsonl"]);
    r.assert_code(1);
    // Failures are shown as they happen and the first are listed again at the end, in an
    // order two workers may swap: each group sorted (an item's retry stays before its failure).
    let lines: Vec<&str> = r.stderr.lines().collect();
    let live = |l: &&str| l.starts_with("RETRY ") || l.starts_with("FAIL  ");
    let listed = |l: &&str| l.starts_with("  squares[");
    let mut first: Vec<&str> = lines.iter().copied().filter(live).collect();
    first.sort_by_key(|l| {
        (
            l.split(']')
                .next()
                .unwrap()
                .split('[')
                .nth(1)
                .map(str::to_owned),
            l.starts_with("FAIL"),
        )
    });
    let mut errors: Vec<&str> = lines.iter().copied().filter(listed).collect();
    errors.sort();
    let rest = lines.iter().copied().filter(|l| !live(l) && !listed(l));
    r.stderr = first
        .into_iter()
        .chain(rest)
        .chain(errors)
        .map(|l| format!("{l}\n"))
        .collect();
    snapshot("summary", &fx, &r);
}

#[test]
fn diagnostic_toml_syntax_error() {
    let fx = Fixture::new();
    let p = fx.write(
        "pipeline.toml",
        &(demo_header("syntax") + "\n[pool]\nmax_workers = = 2\n"),
    );
    snapshot(
        "diagnostic_toml_syntax_error",
        &fx,
        &fx.run(&[p.to_str().unwrap()]),
    );
}

#[test]
fn diagnostic_unknown_keys_with_suggestions() {
    let fx = Fixture::new();
    let p = fx.write(
        "pipeline.toml",
        &(demo_header("keys")
            + "\n[pool]\nmax_worker = 2\n\n[[stage]]\nname = \"s\"\ntask = \"demo::square\"\n\
               input = { range = [0, 3] }\nretrys = 1\n"),
    );
    snapshot(
        "diagnostic_unknown_keys",
        &fx,
        &fx.run(&[p.to_str().unwrap()]),
    );
}

const ONE_STAGE: &str =
    "\n[[stage]]\nname = \"squares\"\ntask = \"demo::square\"\ninput = { range = [0, 3] }\n";

#[test]
fn diagnostic_wrong_type_from_set() {
    let fx = Fixture::new();
    let p = fx.write("pipeline.toml", &(demo_header("set") + ONE_STAGE));
    let r = fx.run(&[
        p.to_str().unwrap(),
        "--set",
        "pool.max_workers=two",
        "--set",
        "stage.squares.retries=\"1\"",
    ]);
    snapshot("diagnostic_wrong_type_from_set", &fx, &r);
}

#[test]
fn diagnostic_bad_env_value() {
    let fx = Fixture::new();
    let p = fx.write("pipeline.toml", &(demo_header("env") + ONE_STAGE));
    let out = fx
        .command()
        .args([p.to_str().unwrap(), "--progress", "never"])
        .env("LOKY_RUN_POOL_TASK_TIMEOUT", "10")
        .env("LOKY_RUN_STAGE_SQUARES_ON_ERROR", "contineu")
        .output()
        .unwrap();
    snapshot("diagnostic_bad_env_value", &fx, &RunResult::from(out));
}

#[test]
fn diagnostic_unknown_task_with_suggestion() {
    let fx = Fixture::new();
    let p = fx.write(
        "pipeline.toml",
        &(demo_header("task")
            + "\n[[stage]]\nname = \"squares\"\ntask = \"demo::sqare\"\ninput = { range = [0, 3] }\n"),
    );
    snapshot(
        "diagnostic_unknown_task",
        &fx,
        &fx.run(&[p.to_str().unwrap()]),
    );
}

#[test]
fn diagnostic_missing_plugin() {
    let fx = Fixture::new();
    let p = fx.write(
        "pipeline.toml",
        &("[pipeline]\nname = \"missing\"\nplugins = [\"no_such_plugin\"]\noutput_dir = \"out\"\n"
            .to_string()
            + ONE_STAGE),
    );
    // The cargo target directories are searched only when the binary lives in one named
    // `target` (not with CARGO_TARGET_DIR=/elsewhere): their line is left out.
    let text = shown(&fx, &fx.run(&[p.to_str().unwrap()]));
    let mut s = settings();
    s.add_filter(r"\n  \[TARGET\]/<profile>", "");
    s.bind(|| insta::assert_snapshot!("diagnostic_missing_plugin", text));
}

#[test]
fn show_config_snapshot() {
    let fx = Fixture::new();
    let p = fx.write(
        "pipeline.toml",
        &(demo_header("show")
            + "\n[pool]\nmax_workers = 2\nenv = { GREETING = \"hi\" }\n\
               initializer = { task = \"demo::setup\", args = { level = \"info\" } }\n\
               \n[[stage]]\nname = \"squares\"\ntask = \"demo::square\"\ninput = { range = [0, 100] }\n\
               \n[[stage]]\nname = \"echoed\"\ntask = \"demo::echo\"\ninput = { from = \"squares\" }\n\
               retries = 1\nenv = { OWN = \"yes\" }\n"),
    );
    let out = fx
        .command()
        .args([
            "show-config",
            p.to_str().unwrap(),
            "--set",
            "pool.max_workers=4",
            "--set",
            "stage.echoed.chunksize=16",
            "--set",
            "pool.env.EXTRA=1",
        ])
        .env("LOKY_RUN_POOL_TASK_TIMEOUT", "30s")
        .env("LOKY_RUN_STAGE_SQUARES_RETRIES", "3")
        .output()
        .unwrap();
    let r = RunResult::from(out);
    r.assert_code(0);
    snapshot("show_config", &fx, &r);

    // One key, one table, one stage; `-j` is pool.max_workers; a key that matches nothing.
    let keys = |args: &[&str]| -> Vec<String> {
        let mut cmd = fx.command();
        cmd.arg("show-config").arg(&p).args(args);
        let r = RunResult::from(cmd.output().unwrap());
        r.assert_code(0);
        r.stdout
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(" = ").next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(keys(&["pool.retries"]), ["pool.retries"]);
    assert!(
        keys(&["stage.echoed"])
            .iter()
            .all(|k| k.starts_with("stage.echoed."))
    );
    assert!(keys(&["pool"]).contains(&"pool.max_memory_growth".to_owned()));
    assert!(!keys(&["pool"]).iter().any(|k| k.starts_with("stage.")));
    let mut cmd = fx.command();
    cmd.args(["show-config", "-j", "3"])
        .arg(&p)
        .arg("pool.max_workers");
    let r = RunResult::from(cmd.output().unwrap());
    assert!(r.stdout.contains("pool.max_workers = 3"), "{}", r.stdout);
    let mut cmd = fx.command();
    cmd.arg("show-config").arg(&p).arg("stage.nope");
    RunResult::from(cmd.output().unwrap())
        .assert_code(2)
        .assert_stderr_has(&["stage.nope", "stage.squares, stage.echoed"]);
}

#[test]
fn show_config_reports_bad_configuration_like_run() {
    let fx = Fixture::new();
    let p = fx.write("pipeline.toml", &(demo_header("bad") + ONE_STAGE));
    fx.run(&[
        "show-config",
        p.to_str().unwrap(),
        "--set",
        "pool.retries=-1",
    ])
    .assert_code(2)
    .assert_stderr_has(&["pool.retries", "--set pool.retries=-1"]);
}

// ---- generated files ---------------------------------------------------------------------

/// Compares a committed file with what `loky-run ARGS` prints.
#[track_caller]
fn assert_current(args: &[&str], committed: &str) {
    let fx = Fixture::new();
    let r = fx.run(args);
    r.assert_code(0);
    let path = workspace_root().join(committed);
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == r.stdout,
        "{committed} is not what `loky-run {}` generates from the config key tables; \
         regenerate it with:\n\n    cargo run -q -p loky-run -- {} > {committed}\n",
        args.join(" "),
        args.join(" "),
    );
}

#[test]
fn committed_schema_is_current() {
    assert_current(&["schema"], "schema/pipeline.schema.json");
}

#[test]
fn committed_reference_is_current() {
    assert_current(&["reference"], "docs/pipeline-reference.md");
}

#[test]
fn committed_man_page_is_current() {
    assert_current(&["man"], "docs/loky-run.1");
}

/// TOML as JSON, as a schema validator (and Taplo) sees it.
fn toml_as_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    let table: toml::Table =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::to_value(table).unwrap()
}

#[test]
fn every_example_config_validates_against_the_schema() {
    let root = workspace_root();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("schema/pipeline.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::draft4::new(&schema).expect("a valid draft 4 schema");
    let mut configs: Vec<PathBuf> = std::fs::read_dir(root.join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.sort();
    assert!(configs.len() >= 5, "{configs:?}");
    for path in configs {
        let errors: Vec<String> = validator
            .iter_errors(&toml_as_json(&path))
            .map(|e| format!("  {} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} does not validate:\n{}",
            path.display(),
            errors.join("\n")
        );
        // The directive Taplo / Even Better TOML read, on the first line.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().next(),
            Some("#:schema ../schema/pipeline.schema.json"),
            "{}",
            path.display()
        );
    }
    // And the schema refuses what the loader refuses, e.g. a misspelt key.
    let bad = serde_json::json!({
        "pipeline": { "name": "x", "plugins": ["demo"] },
        "pool": { "max_worker": 2 },
        "stage": [{ "name": "s", "task": "demo::square", "input": { "range": [0, 3] } }],
    });
    assert!(!validator.is_valid(&bad));
}

// ---- completions, logging ------------------------------------------------------------------

#[test]
fn completions_for_bash_zsh_and_fish() {
    let fx = Fixture::new();
    for shell in ["bash", "zsh", "fish"] {
        let r = fx.run(&["completions", shell]);
        r.assert_code(0);
        for word in ["show-config", "new-plugin", "validate", "--set"] {
            assert!(r.stdout.contains(word), "{shell} completions lack {word}");
        }
    }
    fx.run(&["completions", "tcsh"]).assert_code(2);
}

#[test]
fn colour_follows_the_flag_no_color_and_clicolor_force() {
    let fx = Fixture::new();
    let text = header("colour", "max_workers = 1\non_error = \"continue\"")
        + &stage("s", "faults::fail", "{ items = [\"boom\"] }", "");
    let p = fx.write("pipeline.toml", &text);
    let p = p.to_str().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = fx.command();
        cmd.arg(p).args(["--progress", "never"]).args(args);
        cmd.env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let escape = "\x1b[";
    let painted = run(&["--color", "always"], &[]);
    assert!(painted.contains(&format!("{escape}31mFAIL")), "{painted:?}");
    assert!(painted.contains(" failed\x1b[0m"), "{painted:?}");
    // Not a terminal: no colour unless forced.
    assert!(!run(&[], &[]).contains(escape));
    assert!(run(&[], &[("CLICOLOR_FORCE", "1")]).contains(escape));
    assert!(!run(&[], &[("NO_COLOR", "1"), ("CLICOLOR_FORCE", "0")]).contains(escape));
    assert!(!run(&["--color", "never"], &[("CLICOLOR_FORCE", "1")]).contains(escape));
}

/// What bash offers at `TAB` after `words` (the last one being completed), with the script of
/// `loky-run completions bash` sourced as a user would.
fn bash_completes(fx: &Fixture, words: &[&str]) -> Vec<String> {
    let script = fx.run(&["completions", "bash"]);
    script.assert_code(0);
    let path = fx.write("loky-run.bash", &script.stdout);
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let harness = format!(
        "source '{}'\n\
         COMP_WORDS=({}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); COMPREPLY=()\n\
         _loky__run loky-run \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        path.display(),
        quoted.join(" ")
    );
    let out = std::process::Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &harness])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_flags_subcommands_and_values_after_the_subcommand() {
    let fx = Fixture::new();
    assert_eq!(
        bash_completes(&fx, &["loky-run", "run", "--pro"]),
        ["--progress"]
    );
    assert_eq!(
        bash_completes(&fx, &["loky-run", "run", "--retry"]),
        ["--retry-failed"]
    );
    assert_eq!(bash_completes(&fx, &["loky-run", "sta"]), ["status"]);
    assert_eq!(
        bash_completes(&fx, &["loky-run", "run", "--progress", ""]),
        ["auto", "always", "never"]
    );
    let shells = bash_completes(&fx, &["loky-run", "completions", ""]);
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.iter().any(|s| s == shell), "{shells:?}");
    }
    assert_eq!(
        bash_completes(&fx, &["loky-run", "status", "--js"]),
        ["--json"]
    );
}

#[test]
fn loky_run_log_sets_the_verbosity_and_flags_win() {
    let fx = Fixture::new();
    let p = fx.write("pipeline.toml", &(demo_header("log") + ONE_STAGE));
    let run = |env: &str, flags: &[&str]| {
        let mut cmd = fx.command();
        cmd.args([p.to_str().unwrap(), "--progress", "never"])
            .args(flags)
            .env("LOKY_RUN_LOG", env);
        let r = RunResult::from(cmd.output().unwrap());
        r.assert_code(0);
        r.stderr
    };
    assert!(
        !run("error", &[]).contains("outputs:"),
        "LOKY_RUN_LOG=error is -q"
    );
    assert!(run("error", &["-v"]).contains("outputs:"), "-v wins");
    assert!(run("info", &[]).contains("outputs:"));
    assert!(run("warn,loky_run=info", &[]).contains("outputs:"));
    assert!(run("chatty", &[]).contains("LOKY_RUN_LOG=\"chatty\" is not understood"));
}

// ---- new-plugin ----------------------------------------------------------------------------

/// The slow one (it compiles abi_stable twice when cold): scaffold a plugin, then run the two
/// commands `new-plugin` prints, exactly as printed.
#[test]
fn new_plugin_builds_tests_and_runs_with_the_printed_commands() {
    let fx = Fixture::new();
    let r = fx.run(&["new-plugin", "demo2"]);
    r.assert_code(0);
    let dir = fx.path().join("demo2");
    // In this checkout, loky-run-plugin by path; a workspace of its own.
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
    let api = manifest["dependencies"]["loky-run-plugin"]["path"]
        .as_str()
        .unwrap();
    assert_eq!(
        Path::new(api),
        std::fs::canonicalize(workspace_root().join("plugin-api")).unwrap()
    );
    assert!(manifest["workspace"].as_table().unwrap().is_empty());

    let commands: Vec<&str> = r
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Build and test"))
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(commands.len(), 2, "two commands:\n{}", r.stdout);
    assert_eq!(commands[0], "cargo test --manifest-path demo2/Cargo.toml");
    assert!(
        commands[1].ends_with(" demo2/pipeline.toml"),
        "{}",
        commands[1]
    );

    // The dependency versions of this workspace (no network needed) and its target directory
    // (what it already compiled is reused; the scaffold's own files do not collide with the
    // workspace's), two jobs at most.
    std::fs::copy(workspace_root().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_loky-run"));
    let target_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
    for command in commands {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", command])
            .current_dir(fx.path())
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("CARGO_BUILD_JOBS", "2")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("LOKY_") {
                cmd.env_remove(k);
            }
        }
        let r = RunResult::from(cmd.output().unwrap());
        assert_eq!(
            r.code, 0,
            "`{command}` failed\n--- stdout\n{}\n--- stderr\n{}",
            r.stdout, r.stderr
        );
        if command.starts_with("cargo test") {
            assert!(
                r.stdout.contains("test tests::cubes ... ok"),
                "{}",
                r.stdout
            );
        }
    }
    let outputs: Vec<serde_json::Value> = read_jsonl(&dir.join("out").join("cubes.jsonl"))
        .into_iter()
        .map(|r| r["output"].clone())
        .collect();
    let expected: Vec<serde_json::Value> = (0..10i64).map(|x| (x * x * x).into()).collect();
    assert_eq!(outputs, expected);
}

#[test]
fn new_plugin_refuses_bad_names_and_existing_directories() {
    let fx = Fixture::new();
    fx.run(&["new-plugin", "2fast"])
        .assert_code(2)
        .assert_stderr_has(&["`2fast` cannot be a plugin name"]);
    std::fs::create_dir(fx.path().join("taken")).unwrap();
    std::fs::write(fx.path().join("taken/file"), "").unwrap();
    fx.run(&["new-plugin", "x", "--path", "taken"])
        .assert_code(2)
        .assert_stderr_has(&["already exists"]);
    // LOKY_RUN_PLUGIN_API must name the crate when it is set.
    let out = fx
        .command()
        .args(["new-plugin", "y"])
        .env("LOKY_RUN_PLUGIN_API", fx.path())
        .output()
        .unwrap();
    RunResult::from(out)
        .assert_code(2)
        .assert_stderr_has(&["LOKY_RUN_PLUGIN_API="]);
    assert!(!fx.path().join("y").exists());
}

// ---- closed pipes --------------------------------------------------------------------------

/// A pipe whose read end is already closed: every write to the other end fails with EPIPE
/// (SIGPIPE is ignored by Rust programs), whatever the size of the output and the timing.
fn closed_pipe() -> std::process::Stdio {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array we own; nothing else is touched.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created by pipe2 and belong to nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    std::process::Stdio::from(write)
}

/// Every command that prints on stdout, over a small valid pipeline.
fn printing_commands(p: &str) -> Vec<Vec<String>> {
    [
        &["run", "--dry-run", p, "--progress", "never"][..],
        &[p, "--dry-run"],
        &["completions", "bash"],
        &["completions", "zsh"],
        &["schema"],
        &["reference"],
        &["show-config", p],
        &["tasks", "demo"],
        &["validate", p],
        &["--help"],
        &["run", "--help"],
        &["--version"],
    ]
    .iter()
    .map(|args| args.iter().map(|a| (*a).to_owned()).collect())
    .collect()
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    use std::io::BufRead;
    let fx = Fixture::new();
    let p = fx.write("pipeline.toml", &(demo_header("pipes") + ONE_STAGE));
    let p = p.to_str().unwrap();
    for args in printing_commands(p) {
        // `| head -1`: one line is read, then the pipe is closed (the rest may or may not have
        // been written by then) ...
        let mut child = fx
            .command()
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty(), "{args:?} printed nothing");
        let r = RunResult::from(child.wait_with_output().unwrap());
        assert_eq!(r.code, 0, "{args:?}\n{}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{args:?}\n{}", r.stderr);
        // ... and with a pipe closed before anything was written, every write fails: still
        // exit 0, and not a word.
        let out = fx
            .command()
            .args(&args)
            .stdout(closed_pipe())
            .output()
            .unwrap();
        let r = RunResult::from(out);
        assert_eq!(r.code, 0, "{args:?} into a closed pipe\n{}", r.stderr);
        assert_eq!(r.stderr, "", "{args:?} into a closed pipe");
    }
}

#[test]
fn a_full_stdout_is_an_io_error_not_a_panic() {
    let fx = Fixture::new();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = fx.command().arg("schema").stdout(full).output().unwrap();
    RunResult::from(out)
        .assert_code(74)
        .assert_stderr_has(&["cannot write to standard output: No space left on device"]);
}

#[test]
fn a_closed_stderr_or_stdout_does_not_stop_a_run() {
    let fx = Fixture::new();
    let p = fx.write(
        "pipeline.toml",
        &(demo_header("pipes")
            + "\n[[stage]]\nname = \"squares\"\ntask = \"demo::square\"\n\
               input = { range = [0, 200] }\n"),
    );
    let p = p.to_str().unwrap();
    let expected: Vec<serde_json::Value> = (0..200i64).map(|x| (x * x).into()).collect();
    for progress in ["never", "always"] {
        let _ = std::fs::remove_dir_all(fx.path().join("out"));
        // The summary (and the bars) go to a closed stderr.
        let out = fx
            .command()
            .args([p, "--progress", progress])
            .stderr(closed_pipe())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "--progress {progress}");
        assert_eq!(fx.outputs("squares"), expected, "--progress {progress}");
    }
    let _ = std::fs::remove_dir_all(fx.path().join("out"));
    let out = fx
        .command()
        .args([p, "--progress", "never"])
        .stdout(closed_pipe())
        .output()
        .unwrap();
    RunResult::from(out).assert_code(0);
    assert_eq!(fx.outputs("squares"), expected);
    // An error message that cannot be shown: the exit code still tells.
    let out = fx
        .command()
        .args(["no-such-pipeline.toml", "--progress", "never"])
        .stderr(closed_pipe())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

// ---- plugin paths that are not what they seem ------------------------------------------------

#[test]
fn diagnostic_symlink_loop_plugin() {
    let fx = Fixture::new();
    std::os::unix::fs::symlink("loop2.so", fx.path().join("loop1.so")).unwrap();
    std::os::unix::fs::symlink("loop1.so", fx.path().join("loop2.so")).unwrap();
    let p = fx.write(
        "pipeline.toml",
        &("[pipeline]\nname = \"loop\"\nplugins = [\"./loop1.so\"]\noutput_dir = \"out\"\n"
            .to_string()
            + ONE_STAGE),
    );
    let r = fx.run(&[p.to_str().unwrap()]);
    r.assert_code(2)
        .assert_stderr_has(&["loop of symbolic links", "ELOOP"]);
    assert!(!r.stderr.contains("does not exist"), "{}", r.stderr);
    snapshot("diagnostic_symlink_loop_plugin", &fx, &r);
    // The same from `tasks`, and for a name found as a loop in a searched directory.
    fx.run(&["tasks", "./loop1.so"])
        .assert_code(2)
        .assert_stderr_has(&["loop1.so -> loop2.so -> loop1.so", "ELOOP"]);
    std::os::unix::fs::symlink("libloopy.so", fx.path().join("libloopy.so")).unwrap();
    let r = fx.run(&["tasks", "loopy"]);
    r.assert_code(2).assert_stderr_has(&[
        "plugin `loopy` not found",
        "libloopy.so, but it is a loop of symbolic links",
    ]);
    assert!(!r.stderr.contains("did you mean"), "{}", r.stderr);
    // A link to nothing says so.
    std::os::unix::fs::symlink("gone.so", fx.path().join("dangling.so")).unwrap();
    fx.run(&["tasks", "./dangling.so"])
        .assert_code(2)
        .assert_stderr_has(&["dangling.so is a symbolic link to gone.so, which does not exist"]);
}

// ---- a full disk -----------------------------------------------------------------------------

/// A tmpfs of `size` mounted at `dir`, unmounted when dropped (also when the test fails).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` (with a message) where mounting is not possible (not root, no mount namespace).
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self {
                dir: dir.to_owned(),
            }),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs at {} (needs root): {}",
                    dir.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Writes `path` until the filesystem is full; returns its size.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let mut written = 0u64;
    for chunk in [1 << 16, 1 << 12, 1] {
        let buf = vec![0u8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    written
}

#[test]
fn a_full_disk_is_exit_74_naming_the_file_and_resume_finishes_the_run() {
    let fx = Fixture::new();
    let disk = fx.path().join("disk");
    let Some(_mount) = Tmpfs::mount(&disk, "8m") else {
        return;
    };
    let p = fx.write(
        "pipeline.toml",
        &(demo_header("full")
            + "\n[pool]\nmax_workers = 2\n\
               \n[[stage]]\nname = \"squares\"\ntask = \"demo::square\"\n\
               input = { range = [0, 60000] }\n"),
    );
    let p = p.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec![p, "--set", "pool.retries=1"];
        all.extend_from_slice(args);
        let r = fx.run(&all);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        r
    };
    let on_disk = ["--set", "pipeline.output_dir=disk/out"];

    // A disk full from the start: the run never starts, nothing to resume.
    let ballast = disk.join("ballast");
    let size = fill(&ballast);
    let r = run(&on_disk);
    r.assert_code(74).assert_stderr_has(&[
        "No space left on device",
        &disk.join("out").display().to_string(),
        "free space on the filesystem that holds it, then run the same command again",
    ]);
    assert!(!r.stderr.contains("--resume"), "{}", r.stderr);

    // Room for some results (~2.3 MB are needed): the run stops when the disk fills up.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ballast)
        .unwrap()
        .set_len(size - (384 << 10))
        .unwrap();
    let r = run(&on_disk);
    r.assert_code(74).assert_stderr_has(&[
        "No space left on device",
        &disk.join("out/squares.jsonl").display().to_string(),
    ]);
    let recorded = std::fs::read(disk.join("out/squares.jsonl")).unwrap();
    assert!(
        recorded.iter().filter(|b| **b == b'\n').count() > 0,
        "results were recorded before the disk filled up"
    );
    snapshot("io_error_disk_full", &fx, &r);

    // The hint is the command that finishes the run, once space is freed.
    let hint = r
        .stderr
        .lines()
        .find_map(|l| l.split('`').nth(1).filter(|c| c.contains("--resume")))
        .unwrap_or_else(|| panic!("no --resume hint:\n{}", r.stderr));
    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(words[..3], ["loky-run", "run", "--resume"], "{hint}");
    std::fs::remove_file(&ballast).unwrap();
    let r = fx.run(&words[1..]);
    r.assert_code(0)
        .assert_stderr_has(&["results already recorded"]);

    // Byte for byte what a run that never met a full disk writes.
    run(&["--set", "pipeline.output_dir=clean"]).assert_code(0);
    let resumed = std::fs::read(disk.join("out/squares.jsonl")).unwrap();
    let clean = std::fs::read(fx.path().join("clean/squares.jsonl")).unwrap();
    assert!(
        resumed == clean,
        "the resumed output differs from a clean run's"
    );
}

/// A plugin crate with no dependencies (quick to build): `body` is its `src/lib.rs`.
fn tiny_crate(fx: &Fixture, name: &str, body: &str) {
    std::fs::create_dir_all(fx.path().join(name).join("src")).unwrap();
    fx.write(
        &format!("{name}/Cargo.toml"),
        &format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [lib]\ncrate-type = [\"cdylib\"]\n\n[workspace]\n"
        ),
    );
    fx.write(&format!("{name}/src/lib.rs"), body);
}

#[test]
fn cargo_output_is_held_back_and_shown_when_a_plugin_build_fails() {
    let fx = Fixture::new();
    tiny_crate(&fx, "broken", "pub fn oops( {\n");
    let p = fx.write(
        "pipeline.toml",
        "[pipeline]\nname = \"b\"\nplugins = [\"./broken\"]\noutput_dir = \"out\"\n\n\
         [[stage]]\nname = \"s\"\ntask = \"broken::x\"\ninput = { items = [1] }\n",
    );
    let target = fx.path().join("target");
    for quiet in [true, false] {
        let mut args = vec![p.to_str().unwrap()];
        if quiet {
            args.push("-q");
        }
        let r = RunResult::from(
            fx.command()
                .args(&args)
                .env("CARGO_TARGET_DIR", &target)
                .output()
                .unwrap(),
        );
        r.assert_code(2);
        // cargo's own diagnostic, held back until the build failed, then shown.
        assert!(r.stderr.contains("src/lib.rs"), "{}", r.stderr);
        assert!(r.stderr.contains("broken"), "{}", r.stderr);
    }
}

#[test]
fn a_plugin_build_in_a_log_is_one_line_and_nothing_under_quiet() {
    let fx = Fixture::new();
    // Compiles, but exports no plugin: the run stops at loading it, after the build.
    tiny_crate(&fx, "fine", "pub fn nothing() {}\n");
    let p = fx.write(
        "pipeline.toml",
        "[pipeline]\nname = \"b\"\nplugins = [\"./fine\"]\noutput_dir = \"out\"\n\n\
         [[stage]]\nname = \"s\"\ntask = \"fine::x\"\ninput = { items = [1] }\n",
    );
    let target = fx.path().join("target");
    let run = |extra: &[&str]| {
        RunResult::from(
            fx.command()
                .arg(&p)
                .args(extra)
                .env("CARGO_TARGET_DIR", &target)
                .output()
                .unwrap(),
        )
    };
    // stderr is a pipe: cargo's lines are summed up in one of ours.
    let r = run(&[]);
    assert!(!r.stderr.contains("Compiling"), "{}", r.stderr);
    assert!(r.stderr.contains("built plugin crate"), "{}", r.stderr);
    // Nothing compiled the second time: no line at all; `-v` passes cargo's through.
    assert!(!run(&[]).stderr.contains("built plugin crate"));
    std::fs::write(fx.path().join("fine/src/lib.rs"), "pub fn other() {}\n").unwrap();
    let r = run(&["-v"]);
    assert!(r.stderr.contains("Compiling fine"), "{}", r.stderr);
    std::fs::write(fx.path().join("fine/src/lib.rs"), "pub fn third() {}\n").unwrap();
    let r = run(&["-q"]);
    assert!(!r.stderr.contains("Compiling"), "{}", r.stderr);
    assert!(!r.stderr.contains("built plugin crate"), "{}", r.stderr);
}

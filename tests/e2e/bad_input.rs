//! Every bad input is refused with exit code 2, a message naming the problem, before any
//! worker starts, and without leaving output behind.

use crate::support::*;

fn refused(fx: &Fixture, text: &str, extra_args: &[&str], fragments: &[&str]) {
    let p = fx.write("pipeline.toml", text);
    let mut args = vec![p.to_str().unwrap()];
    args.extend_from_slice(extra_args);
    let r = fx.run(&args);
    r.assert_code(2).assert_stderr_has(fragments);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(!fx.path().join("out").exists(), "no partial output");
}

const STAGE: &str =
    "\n[[stage]]\nname = \"s\"\ntask = \"demo::square\"\ninput = { range = [0, 3] }\n";

#[test]
fn toml_syntax_error_names_line_and_column() {
    let fx = Fixture::new();
    let text = header("bad", "") + "\n[[stage]]\nname = \"s\n";
    let line = text.lines().count().to_string();
    refused(&fx, &text, &[], &["pipeline.toml", &line]);
}

#[test]
fn unknown_key_suggests_the_closest() {
    let fx = Fixture::new();
    refused(
        &fx,
        &(header("bad", "max_worker = 2") + STAGE),
        &[],
        &["max_worker", "max_workers"],
    );
}

#[test]
fn wrong_type_in_file_and_in_set() {
    let fx = Fixture::new();
    refused(
        &fx,
        &(header("bad", "max_workers = \"two\"") + STAGE),
        &[],
        &["max_workers"],
    );
    refused(
        &fx,
        &(header("bad", "") + STAGE),
        &["--set", "pool.retries=lots"],
        &["retries", "--set"],
    );
    refused(
        &fx,
        &(header("bad", "idle_timeout = \"10 parsecs\"") + STAGE),
        &[],
        &["idle_timeout"],
    );
}

#[test]
fn unknown_task_lists_what_the_plugin_exports() {
    let fx = Fixture::new();
    let text = header("bad", "")
        + "\n[[stage]]\nname = \"s\"\ntask = \"demo::sqare\"\ninput = { range = [0, 3] }\n";
    refused(
        &fx,
        &text,
        &[],
        &["demo::sqare", "demo::square", "demo::echo"],
    );
}

#[test]
fn missing_plugin_lists_where_it_looked() {
    let fx = Fixture::new();
    let text = "[pipeline]\nname = \"bad\"\nplugins = [\"no_such_plugin\"]\noutput_dir = \"out\"\n"
        .to_owned()
        + STAGE;
    let dir = fx.path().to_str().unwrap().to_owned();
    refused(
        &fx,
        &text,
        &[],
        &["no_such_plugin", "libno_such_plugin.so", &dir],
    );
}

#[test]
fn a_file_that_is_not_a_shared_library() {
    let fx = Fixture::new();
    fx.write("fake.so", "this is text");
    let text = "[pipeline]\nname = \"bad\"\nplugins = [\"./fake.so\"]\noutput_dir = \"out\"\n"
        .to_owned()
        + STAGE;
    refused(&fx, &text, &[], &["fake.so", "not a shared library"]);
}

#[test]
fn missing_input_file_and_malformed_line() {
    let fx = Fixture::new();
    let missing = header("bad", "")
        + "\n[[stage]]\nname = \"s\"\ntask = \"demo::echo\"\ninput = { file = \"nope.jsonl\" }\n";
    refused(&fx, &missing, &[], &["nope.jsonl"]);
    fx.write("in.jsonl", "1\n2\n{not json\n4\n");
    let malformed = header("bad", "")
        + "\n[[stage]]\nname = \"s\"\ntask = \"demo::echo\"\ninput = { file = \"in.jsonl\" }\n";
    refused(&fx, &malformed, &[], &["in.jsonl:3"]);
}

#[test]
fn duplicate_stage_names() {
    let fx = Fixture::new();
    refused(
        &fx,
        &(header("bad", "") + STAGE + STAGE),
        &[],
        &["duplicate", "`s`"],
    );
}

#[test]
fn from_naming_an_unknown_or_later_stage() {
    let fx = Fixture::new();
    let unknown = header("bad", "")
        + "\n[[stage]]\nname = \"s\"\ntask = \"demo::echo\"\ninput = { from = \"nowhere\" }\n";
    refused(&fx, &unknown, &[], &["nowhere"]);
    let later = header("bad", "")
        + "\n[[stage]]\nname = \"first\"\ntask = \"demo::echo\"\ninput = { from = \"second\" }\n"
        + "\n[[stage]]\nname = \"second\"\ntask = \"demo::echo\"\ninput = { range = [0, 2] }\n";
    refused(&fx, &later, &[], &["second"]);
}

#[test]
fn max_workers_zero_is_refused() {
    let fx = Fixture::new();
    refused(
        &fx,
        &(header("bad", "max_workers = 0") + STAGE),
        &[],
        &["max_workers"],
    );
}

#[test]
fn unwritable_output_directory() {
    let fx = Fixture::new();
    fx.write("out", "a file where the output directory should be");
    let p = fx.write("pipeline.toml", &(header("bad", "") + STAGE));
    fx.run(&[p.to_str().unwrap()])
        .assert_code(2)
        .assert_stderr_has(&["out"]);
}

/// `loky-run-plugin`'s manifest made standalone (no `workspace = true` fields) with another version.
fn plugin_api_manifest_with_version(version: &str) -> String {
    let root = workspace_root();
    let read = |p: &str| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(root.join(p)).unwrap()).unwrap()
    };
    let workspace = read("Cargo.toml");
    let mut api = read("plugin-api/Cargo.toml");
    let package = api["package"].as_table_mut().unwrap();
    let shared = workspace["workspace"]["package"].as_table().unwrap();
    for (key, value) in package.iter_mut() {
        if value.get("workspace").is_some() {
            *value = shared[key.as_str()].clone();
        }
    }
    package.insert("version".into(), version.into());
    let shared = workspace["workspace"]["dependencies"].as_table().unwrap();
    for (key, value) in api["dependencies"].as_table_mut().unwrap().iter_mut() {
        if value.get("workspace").is_some() {
            *value = shared[key.as_str()].clone();
        }
    }
    // The workspace's lint table stays behind with the workspace.
    api.remove("lints");
    api.insert("workspace".into(), toml::Table::new().into());
    toml::to_string(&api).unwrap()
}

/// Builds the scaffolded plugin `name` against a copy of loky-run-plugin at `version` whose source
/// went through `edit`, and returns the path of the `.so`, next to the fixture's pipeline.
fn plugin_built_against_a_copy_of_plugin_api(
    fx: &Fixture,
    name: &str,
    version: &str,
    edit: impl Fn(String) -> String,
) -> std::path::PathBuf {
    let api_dir = fx.path().join(format!("loky-run-plugin-{name}"));
    std::fs::create_dir_all(&api_dir).unwrap();
    std::fs::write(
        api_dir.join("Cargo.toml"),
        plugin_api_manifest_with_version(version),
    )
    .unwrap();
    copy_dir(
        &workspace_root().join("plugin-api/src"),
        &api_dir.join("src"),
    );
    let lib = api_dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(&lib, edit(source)).unwrap();
    fx.run(&["new-plugin", name]).assert_code(0);
    let plugin = fx.path().join(name);
    let manifest = plugin.join("Cargo.toml");
    let mut m: toml::Table = toml::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let mut dep = toml::Table::new();
    dep.insert("path".into(), api_dir.to_str().unwrap().into());
    m["dependencies"]
        .as_table_mut()
        .unwrap()
        .insert("loky-run-plugin".into(), dep.into());
    std::fs::write(&manifest, toml::to_string(&m).unwrap()).unwrap();
    std::fs::copy(
        workspace_root().join("Cargo.lock"),
        plugin.join("Cargo.lock"),
    )
    .unwrap();
    // This workspace's target directory: the dependencies it compiled are reused.
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_loky-run"));
    let target_dir = exe.parent().and_then(std::path::Path::parent).unwrap();
    let build = std::process::Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()))
        .args(["build", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target_dir)
        .env("CARGO_BUILD_JOBS", "2")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    // Built into the shared target directory; moved next to the pipeline so that no other
    // test's plugin search finds it.
    let so = fx.path().join(format!("lib{name}.so"));
    std::fs::rename(target_dir.join(format!("debug/lib{name}.so")), &so).unwrap();
    so
}

/// This checkout's loky-run-plugin version.
fn plugin_api_version() -> String {
    let api: toml::Table = toml::from_str(
        &std::fs::read_to_string(workspace_root().join("plugin-api/Cargo.toml")).unwrap(),
    )
    .unwrap();
    api["package"]["version"].as_str().unwrap().to_owned()
}

/// A pipeline running `NAME::cube` from `./libNAME.so`.
fn cube_pipeline(fx: &Fixture, name: &str) -> std::path::PathBuf {
    let text = format!(
        "[pipeline]\nname = \"bad\"\nplugins = [\"./lib{name}.so\"]\noutput_dir = \"out\"\n\n[[stage]]\nname = \"s\"\ntask = \"{name}::cube\"\ninput = {{ range = [0, 3] }}\n"
    );
    fx.write("pipeline.toml", &text)
}

/// The promise of the stable ABI, end to end: a plugin built against a loky-run-plugin this runner
/// is not compatible with (here a newer minor version, 0.x semantics) is refused before any
/// worker starts, in one line naming both versions.
#[test]
fn a_plugin_built_against_an_incompatible_plugin_api_is_refused_naming_both_versions() {
    let fx = Fixture::new();
    let (runner_version, newer) = semver_next_minor(&plugin_api_version());
    plugin_built_against_a_copy_of_plugin_api(&fx, "newer", &newer, |s| s);
    let p = cube_pipeline(&fx, "newer");
    for command in ["validate", "run"] {
        let r = fx.run(&[command, p.to_str().unwrap()]);
        r.assert_code(2).assert_stderr_has(&[
            "libnewer.so",
            &format!("loky-run-plugin {newer}"),
            &format!("loky-run-plugin {runner_version}"),
        ]);
        assert!(
            r.stderr.lines().count() <= 6,
            "a short answer, not a layout report:\n{}",
            r.stderr
        );
    }
    assert!(!fx.path().join("out").exists(), "no worker ran");
}

/// The same version number over a different ABI (a loky-run-plugin edited without a version bump):
/// abi_stable's layout check refuses it, in one line, with the full report only under `-v`.
#[test]
fn a_plugin_whose_abi_layout_differs_under_the_same_version_is_refused() {
    let fx = Fixture::new();
    // The task index crosses the boundary as a u64 instead of a u32.
    plugin_built_against_a_copy_of_plugin_api(&fx, "skewed", &plugin_api_version(), |s| {
        let edited = s
            .replace("index: u32", "index: u64")
            .replace("fn(u32,", "fn(u64,");
        assert_ne!(
            edited, s,
            "loky-run-plugin's call signature moved: update this test"
        );
        edited
    });
    let p = cube_pipeline(&fx, "skewed");
    let short = fx.run(&["validate", p.to_str().unwrap()]);
    short
        .assert_code(2)
        .assert_stderr_has(&["libskewed.so", "ABI", "-v"]);
    assert!(
        short.stderr.lines().count() <= 6,
        "a short answer:\n{}",
        short.stderr
    );
    let verbose = fx.run(&["validate", "-v", p.to_str().unwrap()]);
    verbose.assert_code(2).assert_stderr_has(&["libskewed.so"]);
    assert!(
        verbose.stderr.lines().count() > short.stderr.lines().count() + 5,
        "-v shows the layout report:\n{}",
        verbose.stderr
    );
    assert!(!fx.path().join("out").exists(), "no worker ran");
}

/// `("0.1.0", "0.2.0")`: the version, and the next minor one (incompatible below 1.0).
fn semver_next_minor(version: &str) -> (String, String) {
    let parts: Vec<u64> = version.split('.').map(|p| p.parse().unwrap()).collect();
    let next = if parts[0] == 0 {
        format!("0.{}.0", parts[1] + 1)
    } else {
        format!("{}.0.0", parts[0] + 1)
    };
    (version.to_owned(), next)
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn file_stage(path: &std::path::Path) -> String {
    format!(
        "\n[[stage]]\nname = \"s\"\ntask = \"demo::echo\"\ninput = {{ file = \"{}\" }}\n",
        path.display()
    )
}

#[test]
fn inputs_that_are_not_regular_files_are_refused_without_reading_them() {
    let fx = Fixture::new();
    // A device never ends; a FIFO read by the check would block the run when reopened.
    let fifo = fx.path().join("in.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    for (path, fragments) in [
        (
            std::path::PathBuf::from("/dev/zero"),
            &["character device", "regular file"][..],
        ),
        (fifo, &["named pipe", "regular file"][..]),
        (fx.path().to_owned(), &["directory"][..]),
    ] {
        let p = fx.write("pipeline.toml", &(header("odd", "") + &file_stage(&path)));
        let r = fx.run_within(&[p.to_str().unwrap()], std::time::Duration::from_secs(60));
        r.assert_code(2)
            .assert_stderr_has(&[&path.display().to_string()])
            .assert_stderr_has(fragments);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert!(!fx.path().join("out").exists(), "no partial output");
    }
}

#[test]
fn invalid_utf8_inside_a_json_string_is_refused_naming_the_line() {
    let fx = Fixture::new();
    let input = fx.path().join("in.jsonl");
    std::fs::write(&input, b"\"fine\"\n\"caf\xe9\"\n").unwrap();
    refused(
        &fx,
        &(header("utf8", "") + &file_stage(&input)),
        &[],
        &["in.jsonl:2", "UTF-8"],
    );
}

#[test]
fn a_blank_line_between_values_is_refused_since_it_would_shift_the_records() {
    let fx = Fixture::new();
    let input = fx.path().join("in.jsonl");
    std::fs::write(&input, "1\n2\n\n3\n").unwrap();
    refused(
        &fx,
        &(header("blank", "") + &file_stage(&input)),
        &[],
        &["in.jsonl:3", "blank line"],
    );
    // At the end they are fine.
    std::fs::write(&input, "1\n2\n3\n\n  \n").unwrap();
    let p = fx.write(
        "pipeline.toml",
        &(header("blank", "") + &file_stage(&input)),
    );
    fx.run(&[p.to_str().unwrap()]).assert_code(0);
    assert_eq!(fx.outputs("s"), [1, 2, 3]);
}

#[test]
fn a_runner_blocked_in_a_system_call_still_ends_on_a_signal() {
    // `--events` names a FIFO nobody reads: opening it blocks. A SIGTERM must still end the
    // run (with 143), not be counted and forgotten.
    let fx = Fixture::new();
    let fifo = fx.path().join("events.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let p = fx.write("pipeline.toml", &(header("blocked", "") + STAGE));
    let mut child = KillOnDrop(
        fx.command()
            .args([
                p.to_str().unwrap(),
                "--progress",
                "never",
                "--events",
                fifo.to_str().unwrap(),
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The output directory's lock is taken just before the event log is opened: from then on
    // it blocks (a signal sent a moment earlier is counted and ends it just the same).
    wait_for(|| fx.path().join("out/.lock").is_file().then_some(()));
    // SAFETY: kill(2) of the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_within(&mut child, std::time::Duration::from_secs(120));
    assert_eq!(status.code(), Some(143));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("SIGTERM"), "{stderr}");
}

/// What a first-time plugin author gets wrong in `plugins`, said in words that lead to the fix:
/// a directory without Cargo.toml, a workspace root, an .rlib; `tasks` and a pipeline agree.
#[test]
fn plugin_entries_that_are_no_plugin_say_what_to_name_instead() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.path().join("empty")).unwrap();
    std::fs::create_dir_all(fx.path().join("ws/member")).unwrap();
    std::fs::write(
        fx.path().join("ws/Cargo.toml"),
        "[workspace]\nmembers = [\"member\"]\n",
    )
    .unwrap();
    std::fs::write(
        fx.path().join("libthing.rlib"),
        b"!<arch>\n/               0  ",
    )
    .unwrap();
    let pipeline = |plugin: &str| {
        let text = format!(
            "[pipeline]\nname = \"p\"\nplugins = [{plugin:?}]\noutput_dir = \"out\"\n\n\
             [[stage]]\nname = \"s\"\ntask = \"x\"\ninput = {{ range = [0, 1] }}\n"
        );
        fx.write("pipeline.toml", &text)
    };
    for (entry, said) in [
        ("./empty", vec!["has no Cargo.toml", "new-plugin"]),
        ("empty", vec!["holds no Cargo.toml", "new-plugin empty"]),
        ("./ws", vec!["is a Cargo workspace", "member"]),
        ("./libthing.rlib", vec!["static library", "cdylib"]),
        ("nosuch", vec!["not found", "./nosuch"]),
    ] {
        let p = pipeline(entry);
        fx.run(&["validate", p.to_str().unwrap()])
            .assert_code(2)
            .assert_stderr_has(&said);
        fx.run(&["tasks", entry])
            .assert_code(2)
            .assert_stderr_has(&said);
    }
}

/// `validate` decodes initializer args with the plugin (in a probe, running nothing) and points
/// at them in the pipeline file; a run says "initializer", never serde's line and column.
#[test]
fn initializer_args_that_cannot_decode_fail_validate_and_name_the_initializer() {
    let fx = Fixture::new();
    let text = header(
        "init",
        "max_workers = 1\ninitializer = { task = \"faults::init_sleep\", args = { ms = \"x\" } }",
    ) + &stage("s", "demo::square", "{ range = [0, 3] }", "");
    let p = fx.write("pipeline.toml", &text);
    let p = p.to_str().unwrap();
    let r = fx.run(&["validate", p]);
    r.assert_code(2).assert_stderr_has(&[
        "initializer faults::init_sleep",
        "u64",
        "pipeline.toml:",
    ]);
    assert!(!r.stderr.contains("column 0"), "{}", r.stderr);
    let run = fx.run(&[p]);
    run.assert_code(1);
    let record = &fx.records("s")[0]["error"];
    assert_eq!(record["kind"], "initializer");
    let message = record["message"].as_str().unwrap();
    assert!(
        message.contains("its args do not decode as `u64`"),
        "{message}"
    );
    assert!(!message.contains("at line"), "{message}");
    // Fixed, it validates.
    let p = fx.write("pipeline.toml", &text.replace("{ ms = \"x\" }", "1"));
    fx.run(&["validate", p.to_str().unwrap()]).assert_code(0);
}

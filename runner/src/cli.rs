//! The command line: `run` (also the default), `status`, `report`, `validate`, `tasks`, and the
//! helpers around them: `show-config`, `new-plugin`, `schema`, `reference`, `completions`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{self, LoadOptions, PluginSpec};
pub use crate::console::ProgressMode;
use crate::console::{Console, Verbosity, write_stderr, write_stdout};
use crate::error::{EXIT_IO, Error};
use crate::plugin::{PluginInfo, TaskKind, probe, resolve};
use crate::run::{self, RunOptions};

/// The exit codes (SPEC §2), as `--help` lists them.
macro_rules! exit_codes_help {
    () => {
        "Exit codes:\n\
         \x20 0    every task succeeded\n\
         \x20 1    the run finished, but some task failed (or a stage stopped under on_error = \"fail\")\n\
         \x20 2    bad usage or configuration: nothing was run\n\
         \x20 74   an I/O error (a full disk; an output, journal or manifest that cannot be written, an\n\
         \x20      event log that cannot be created): the message names the file; finish a run that\n\
         \x20      had started with `loky-run run --resume PIPELINE.toml`\n\
         \x20 130  interrupted by Ctrl-C (SIGINT); 143 by SIGTERM"
    };
}

#[derive(Debug, Parser)]
#[command(
    name = "loky-run",
    version,
    about = "A declarative, crash-proof process-pool job runner",
    after_help = concat!(
        "`loky-run PIPELINE.toml [OPTIONS]` is the same as `loky-run run PIPELINE.toml [OPTIONS]`.\n",
        "LOKY_RUN_LOG=debug (or RUST_LOG=loky_run=debug) is -v, LOKY_RUN_LOG=error is -q; the flags win.\n\n",
        exit_codes_help!()
    )
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More detail (plugin ABI reports, pool decisions).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Colour on stderr: on a terminal (auto, unless NO_COLOR is set; CLICOLOR_FORCE forces
    /// it), always, or never.
    #[arg(long, value_name = "WHEN", value_enum, global = true, default_value_t = crate::style::ColorWhen::Auto)]
    pub color: crate::style::ColorWhen,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline.
    #[command(after_help = exit_codes_help!())]
    Run(RunArgs),
    /// What a run did or is doing: stages, counts, failures, pool decisions, ETA (read-only:
    /// it works while the run goes on).
    Status(StatusArgs),
    /// Write one self-contained HTML file about a run: stages, a timeline of every task, charts,
    /// failures.
    ///
    /// The stages; a bar per task attempt on a row per worker process, with stage boundaries
    /// and pool restarts (from the joblog: run with --joblog FILE); throughput over time, task
    /// durations, worker memory, the slowest tasks and every failure with its message. Inline
    /// CSS and SVG, nothing loaded from anywhere. Read-only: it works while the run goes on.
    /// Prints the path it wrote. Exit codes: 0 written, 2 no run there, 74 an I/O error.
    Report(ReportArgs),
    /// Parse a pipeline, resolve and load its plugins, check its tasks exist; run nothing.
    Validate(ConfigArgs),
    /// List the tasks and initializers a plugin exports.
    Tasks {
        /// A plugin name (searched for), a path to a .so, or a path to a plugin crate.
        plugin: String,
    },
    /// Print the resolved configuration (defaults, file, environment, --set), every value with
    /// where it came from.
    ShowConfig(ShowConfigArgs),
    /// Create a plugin crate: one example task with a unit test, and a pipeline that runs it.
    NewPlugin {
        /// The plugin's (and crate's) name: ASCII letters, digits, `_` and `-`.
        name: String,
        /// The directory to create the crate in (default: ./NAME).
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
    },
    /// Print the JSON schema of a pipeline file (committed as schema/pipeline.schema.json).
    Schema,
    /// Print the pipeline reference in Markdown (committed as docs/pipeline-reference.md).
    Reference,
    /// Print the manual page, loky-run(1), in roff: `loky-run man | man -l -`.
    Man,
    /// Print a shell completion script for bash, zsh or fish.
    ///
    /// For example: `loky-run completions bash > ~/.local/share/bash-completion/completions/loky-run`.
    Completions {
        /// bash, zsh, fish (also elvish, powershell).
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The run's output directory (or its pipeline file, whose `output_dir` is read).
    pub dir: PathBuf,
    /// Print it as one JSON object, for scripts.
    #[arg(long)]
    pub json: bool,
    /// How many failures to list per stage, or `all` [default: 10, with --json 100].
    #[arg(long, value_name = "N|all", value_parser = parse_failure_limit)]
    pub failures: Option<crate::status::FailureLimit>,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The run's output directory (or its pipeline file, whose `output_dir` is read).
    pub dir: PathBuf,
    /// Where to write the report [default: OUTPUT_DIR/report.html].
    #[arg(short, long, value_name = "FILE.html")]
    pub output: Option<PathBuf>,
}

fn parse_failure_limit(s: &str) -> Result<crate::status::FailureLimit, String> {
    use crate::status::FailureLimit;
    match s {
        "all" => Ok(FailureLimit::All),
        n => n
            .parse()
            .map(FailureLimit::At)
            .map_err(|_| format!("`{n}` is not a number of failures or `all`")),
    }
}

#[derive(Debug, clap::Args)]
pub struct ShowConfigArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Only the keys under this one: `pool`, `stage.squares`, `stage.squares.retries`.
    #[arg(value_name = "KEY")]
    pub key: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Override a setting: `pool.max_workers=4`, `stage.NAME.retries=2`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Worker processes: `--set pool.max_workers=N` (stages that set their own keep it).
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<std::num::NonZeroUsize>,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("continuing").args(["resume", "retry_failed"]).multiple(true)))]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Finish an interrupted (or killed) run in the output directory without re-running
    /// completed tasks; refused if the pipeline or its inputs changed since.
    #[arg(long)]
    pub resume: bool,
    /// With --resume or --retry-failed: accept a changed pipeline, rerunning the first changed
    /// stage and the ones after it.
    #[arg(long, requires = "continuing")]
    pub force: bool,
    /// Rerun only the tasks whose record is a failure (and the stages that read from theirs),
    /// keeping every ok record as it is; finishes an interrupted run first. Retry settings
    /// (`retries`, `task_timeout`, `on_error`) may be changed for it.
    #[arg(long)]
    pub retry_failed: bool,
    /// Run only stage NAME (its `from` source is read from the output directory); the stages
    /// that read from it are reset to pending.
    #[arg(long, value_name = "NAME")]
    pub stage: Option<String>,
    /// Write life-cycle events as JSON lines to FILE.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Write one JSON line per task attempt to FILE (stage, index, worker, start, duration,
    /// outcome, RSS); overrides `[pipeline] joblog`.
    #[arg(long, value_name = "FILE")]
    pub joblog: Option<PathBuf>,
    /// Progress bars: when stderr is a terminal (auto), always, or never.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Print the plan (stages, inputs, pool decisions) and run nothing.
    #[arg(long)]
    pub dry_run: bool,
}

const SUBCOMMANDS: [&str; 12] = [
    "run",
    "status",
    "report",
    "validate",
    "tasks",
    "show-config",
    "new-plugin",
    "schema",
    "reference",
    "completions",
    "man",
    "help",
];

/// `loky-run PIPELINE.toml ...` means `loky-run run PIPELINE.toml ...`. A first word that is
/// no subcommand, names no file and looks like a mistyped subcommand (`valdate`) is refused
/// with the subcommand it resembles.
fn with_default_subcommand(mut args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let first_positional = args
        .iter()
        .skip(1)
        .position(|a| !a.to_string_lossy().starts_with('-'));
    if let Some(i) = first_positional {
        let word = args[i + 1].to_string_lossy().into_owned();
        if !SUBCOMMANDS.contains(&word.as_str()) {
            let path_like = word.contains(['.', '/']) || Path::new(&word).exists();
            if let Some(close) = config::closest(&word, SUBCOMMANDS).filter(|_| !path_like) {
                return Err(format!(
                    "error: unrecognized subcommand '{word}'\n\n  tip: a similar subcommand exists: '{close}'\n  (a pipeline file is run as `loky-run PIPELINE.toml`; no file named '{word}' exists)\n\nFor more information, try '--help'.\n"
                ));
            }
            args.insert(1, "run".into());
        }
    }
    Ok(args)
}

/// Parses the arguments, runs the command, and returns the process exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    crate::style::init(crate::style::scan_args(&args));
    let args = match with_default_subcommand(args) {
        Ok(args) => args,
        Err(message) => {
            write_stderr(message.as_bytes());
            return 2;
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let verbosity = match (cli.quiet, cli.verbose) {
        (true, _) => Verbosity::Quiet,
        (false, 0) => env_verbosity().unwrap_or(Verbosity::Normal),
        _ => Verbosity::Verbose,
    };
    let progress = match &cli.command {
        Command::Run(args) => args.progress,
        _ => ProgressMode::Never,
    };
    let console = Arc::new(Console::with_progress(verbosity, progress));
    {
        use crate::plugin::resolve::{BuildOutput, set_build_output};
        set_build_output(match verbosity {
            Verbosity::Quiet => BuildOutput::Hidden,
            Verbosity::Verbose => BuildOutput::Shown,
            // A terminal shows cargo's progress as it goes; a log gets one line instead.
            Verbosity::Normal if std::io::IsTerminal::is_terminal(&std::io::stderr()) => {
                BuildOutput::Shown
            }
            Verbosity::Normal => BuildOutput::Summed,
        });
    }
    // The command that finishes this run if it stops on an I/O error after it started.
    let resume = match &cli.command {
        Command::Run(args) if !args.dry_run => Some(resume_command(&args.config)),
        _ => None,
    };
    let result = match cli.command {
        Command::Run(args) => cmd_run(args, &console),
        Command::Status(args) => cmd_status(&args),
        Command::Report(args) => cmd_report(&args, &console),
        Command::Validate(args) => cmd_validate(args, &console),
        Command::Tasks { plugin } => cmd_tasks(&plugin, &console),
        Command::ShowConfig(args) => cmd_show_config(&args),
        Command::NewPlugin { name, path } => cmd_new_plugin(&name, path.as_deref()),
        Command::Schema => print_out(crate::schema::json_schema_text()),
        Command::Reference => print_out(crate::schema::reference_markdown()),
        Command::Man => crate::man::page()
            .and_then(|page| write_stdout(&page))
            .map_err(Error::stdout)
            .map(|()| 0),
        Command::Completions { shell } => write_stdout(&crate::completions::script(shell))
            .map_err(Error::stdout)
            .map(|()| 0),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if !e.is_silent() {
                write_stderr(render_error(&e, resume.as_deref()).as_bytes());
            }
            e.exit_code()
        }
    }
}

/// Prints a command's whole output on stdout; a closed pipe ends the command quietly.
fn print_out(text: impl AsRef<str>) -> Result<i32, Error> {
    write_stdout(text.as_ref().as_bytes())
        .map_err(Error::stdout)
        .map(|()| 0)
}

/// `loky-run run --resume PIPELINE [--set KEY=VALUE]...`, as typed for this run (the same
/// `--set`s: `--resume` refuses a pipeline whose settings changed).
fn resume_command(args: &ConfigArgs) -> String {
    let word = |s: &str| crate::scaffold::shell_word(s);
    let mut cmd = format!(
        "loky-run run --resume {}",
        word(&args.pipeline.display().to_string())
    );
    if let Some(n) = args.jobs {
        cmd.push_str(&format!(" -j {n}"));
    }
    for set in &args.sets {
        cmd.push_str(&format!(" --set {}", word(set)));
    }
    cmd
}

/// An error as printed at the end: what failed and where (the error's own message), then,
/// for failures of the run itself, what to do about it.
pub fn render_error(e: &Error, resume: Option<&str>) -> String {
    let mut text = match e {
        Error::Config(_) => format!("{e}\n"),
        _ => format!("error: {e}\n"),
    };
    if let Some(help) = error_help(e, resume) {
        text.push_str(&format!("  = help: {help}\n"));
    }
    text
}

/// What to do after a run-level failure: fix the cause (when the OS error says what it is),
/// then finish the run with `--resume` if it had started, or run the command again.
fn error_help(e: &Error, resume: Option<&str>) -> Option<String> {
    use crate::run::RunError;
    let (fix, resumable) = match e {
        Error::Run(r @ RunError::Io { source, .. }) => (io_advice(source), r.is_resumable()),
        Error::Run(r @ RunError::Pool { source, .. }) => {
            let os = std::error::Error::source(source)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .and_then(std::io::Error::raw_os_error);
            let fix = matches!(os, Some(libc::EAGAIN | libc::ENOMEM)).then_some(
                "the system refused another process (a process or memory limit): lower \
                 max_workers, or raise the limit (`ulimit -u`)",
            );
            (fix, r.is_resumable())
        }
        Error::Run(RunError::OutputDir { source, .. }) if e.exit_code() == EXIT_IO => {
            (io_advice(source), false)
        }
        Error::Run(RunError::OutputDir { .. }) => {
            return Some(
                "choose a directory you can write: `output_dir` in [pipeline] (relative to the \
                 pipeline file), or `--set pipeline.output_dir=DIR`"
                    .to_owned(),
            );
        }
        Error::Io { source, .. } => (io_advice(source), false),
        _ => return None,
    };
    let resume = resume.filter(|_| resumable);
    match (fix, resume) {
        (Some(fix), Some(cmd)) => Some(format!(
            "{fix}, then finish the run with `{cmd}` (the results recorded so far are kept)"
        )),
        (None, Some(cmd)) => Some(format!(
            "once that is fixed, finish the run with `{cmd}` (the results recorded so far are kept)"
        )),
        (Some(fix), None) => Some(format!("{fix}, then run the same command again")),
        (None, None) => None,
    }
}

/// What to do about an OS error, for the ones whose fix is clear.
fn io_advice(e: &std::io::Error) -> Option<&'static str> {
    Some(match e.raw_os_error()? {
        libc::ENOSPC => "free space on the filesystem that holds it",
        libc::EDQUOT => "free space or raise your disk quota on the filesystem that holds it",
        libc::EROFS => {
            "its filesystem is mounted read-only: remount it read-write, or choose another output_dir"
        }
        libc::EACCES | libc::EPERM => "check the permissions of the file and of its directory",
        libc::EIO => {
            "the device reported an I/O error: check the disk (`dmesg` shows the kernel's messages)"
        }
        libc::EMFILE | libc::ENFILE => "too many open files: raise the limit (`ulimit -n`)",
        _ => return None,
    })
}

/// Loads the pipeline and plans it; plan problems point at the setting they concern.
fn load_and_plan(args: &ConfigArgs, console: &Console) -> Result<run::Plan, Error> {
    load_and_plan_checked(args, console, false)
}

/// With `check_args`, also decodes every initializer's args in a probe (`validate`).
fn load_and_plan_checked(
    args: &ConfigArgs,
    console: &Console,
    check_args: bool,
) -> Result<run::Plan, Error> {
    let loaded = config::load_with_origins(&load_options(args))?;
    let origins = loaded.origins;
    let verbose = console.verbosity() >= Verbosity::Verbose;
    let plan = run::plan(loaded.pipeline, verbose).map_err(|e| e.locate(&origins))?;
    if check_args {
        run::plan::check_initializer_args(&plan, verbose).map_err(|e| e.locate(&origins))?;
    }
    Ok(plan)
}

fn load_options(args: &ConfigArgs) -> LoadOptions {
    LoadOptions {
        file: args.pipeline.clone(),
        // `-j` first: an explicit `--set pool.max_workers` wins.
        sets: args
            .jobs
            .map(|n| format!("pool.max_workers={n}"))
            .into_iter()
            .chain(args.sets.iter().cloned())
            .collect(),
        env: std::env::vars().collect(),
    }
}

/// The verbosity asked for by `LOKY_RUN_LOG`, or by a `RUST_LOG` directive naming `loky_run`.
fn env_verbosity() -> Option<Verbosity> {
    let own = std::env::var("LOKY_RUN_LOG").ok();
    if let Some(value) = own.as_deref().filter(|v| !v.trim().is_empty()) {
        let found = log_filter_verbosity(value, true);
        if found.is_none() {
            write_stderr(
                format!(
                    "warning: LOKY_RUN_LOG={value:?} is not understood; expected a level (error, \
                     warn, info, debug, trace) or loky_run=LEVEL\n"
                )
                .as_bytes(),
            );
        }
        return found;
    }
    let rust_log = std::env::var("RUST_LOG").ok()?;
    log_filter_verbosity(&rust_log, false)
}

/// Reads a `RUST_LOG`-style filter (`debug`, `warn,loky_run=debug`): the last directive for
/// `loky_run` wins, and a bare level counts too when `bare_levels`. `off`, `error` and `warn`
/// are `-q`, `info` the default, `debug` and `trace` are `-v`.
pub fn log_filter_verbosity(filter: &str, bare_levels: bool) -> Option<Verbosity> {
    let level = |l: &str| match l.trim().to_ascii_lowercase().as_str() {
        "off" | "error" | "warn" | "warning" => Some(Verbosity::Quiet),
        "info" => Some(Verbosity::Normal),
        "debug" | "trace" => Some(Verbosity::Verbose),
        _ => None,
    };
    let mut found = None;
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match directive.split_once('=') {
            Some((target, l)) if matches!(target.trim(), "loky_run" | "loky-run") => {
                found = level(l).or(found);
            }
            Some(_) => {}
            None if bare_levels => found = level(directive).or(found),
            None => {}
        }
    }
    found
}

fn cmd_run(args: RunArgs, console: &Arc<Console>) -> Result<i32, Error> {
    let plan = load_and_plan(&args.config, console)?;
    if args.dry_run {
        return print_out(plan_text(&plan));
    }
    // From here on a signal stops the run in order (see `run::stage`); before, it kills us.
    crate::interrupt::install();
    let opts = RunOptions {
        events: args.events.clone(),
        joblog: args.joblog.clone().or_else(|| plan.pipeline.joblog.clone()),
        progress_lines: args.progress != ProgressMode::Never,
        dry_run: false,
        resume: run::ResumeMode {
            resume: args.resume || args.retry_failed,
            force: args.force,
            retry_failed: args.retry_failed,
            only: args
                .stage
                .as_deref()
                .map(|name| stage_position(&plan.pipeline, name))
                .transpose()?,
        },
    };
    let report = run::execute(&plan, &opts, console)?;
    run::print_summary(&report, &plan.pipeline, console);
    Ok(report.exit_code)
}

/// The position of the stage `--stage NAME` names.
fn stage_position(pipeline: &config::Pipeline, name: &str) -> Result<usize, Error> {
    pipeline
        .stages
        .iter()
        .position(|s| s.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
            Error::Usage(format!(
                "--stage {name}: {} has no stage of that name; its stages are: {}",
                pipeline.file.display(),
                names.join(", ")
            ))
        })
}

/// The output directory a `status` or `report` argument names: a pipeline file stands for its
/// `output_dir`.
fn run_dir(arg: &Path) -> Result<PathBuf, Error> {
    if arg.is_file() {
        Ok(config::load(&load_options(&ConfigArgs {
            pipeline: arg.to_owned(),
            sets: Vec::new(),
            jobs: None,
        }))?
        .output_dir)
    } else {
        Ok(arg.to_owned())
    }
}

fn cmd_status(args: &StatusArgs) -> Result<i32, Error> {
    use crate::status::{self, FailureLimit};
    let dir = run_dir(&args.dir)?;
    let limit = args
        .failures
        .unwrap_or(FailureLimit::At(if args.json { 100 } else { 10 }));
    let report = status::gather(&dir, limit)?;
    if args.json {
        let mut text = serde_json::to_string_pretty(&report).map_err(|e| Error::Io {
            context: "cannot format the status".into(),
            source: e.into(),
        })?;
        text.push('\n');
        return print_out(text);
    }
    let hint = format!(
        "loky-run run --resume {}",
        crate::scaffold::shell_word(&report.pipeline_file.display().to_string())
    );
    print_out(status::render(&report, &hint))
}

fn cmd_report(args: &ReportArgs, console: &Console) -> Result<i32, Error> {
    use crate::report;
    let dir = run_dir(&args.dir)?;
    let built = report::build(&dir)?;
    for note in &built.notes {
        console.info(&format!("note: {note}"));
    }
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| dir.join(report::DEFAULT_FILE));
    report::write(&built, &path)?;
    print_out(format!("{}\n", path.display()))
}

fn cmd_show_config(args: &ShowConfigArgs) -> Result<i32, Error> {
    let loaded = config::load_with_origins(&load_options(&args.config))?;
    let Some(key) = &args.key else {
        return print_out(crate::show_config::render(&loaded));
    };
    match crate::show_config::render_filtered(&loaded, key) {
        Some(text) => print_out(text),
        None => {
            let stages: Vec<String> = loaded
                .pipeline
                .stages
                .iter()
                .map(|s| format!("stage.{}", s.name))
                .collect();
            let slurm = if loaded.pipeline.slurm.is_some() {
                ", slurm"
            } else {
                ""
            };
            Err(Error::Usage(format!(
                "show-config: no key is `{key}` or under it; keys start with pipeline, pool{slurm}{}{}",
                if stages.is_empty() { "" } else { ", " },
                stages.join(", ")
            )))
        }
    }
}

fn cmd_new_plugin(name: &str, path: Option<&Path>) -> Result<i32, Error> {
    use crate::scaffold;
    let cwd = current_dir()?;
    let dir = cwd.join(path.unwrap_or(Path::new(name)));
    let api = scaffold::api_source(std::env::var_os(scaffold::PLUGIN_API_VAR).as_deref())?;
    let created = scaffold::create(name, &dir, api)?;
    print_out(scaffold::next_steps(&created, &cwd))
}

fn cmd_validate(args: ConfigArgs, console: &Arc<Console>) -> Result<i32, Error> {
    let plan = load_and_plan_checked(&args, console, true)?;
    print_out(format!(
        "{}: valid\n{}",
        plan.pipeline.file.display(),
        plan_text(&plan)
    ))
}

/// The plan as `--dry-run` and `validate` show it: plugins, then each stage with its inputs,
/// workers and the pool decision the run would take.
fn plan_text(plan: &run::Plan) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pipeline {} -> {}",
        plan.pipeline.name,
        plan.pipeline.output_dir.display()
    );
    for p in &plan.plugins {
        let _ = writeln!(
            out,
            "plugin {} {} (loky-run-plugin {}): {}",
            p.name,
            p.version,
            p.api_version,
            p.path.display()
        );
    }
    let decisions = run::dry_run_decisions(plan);
    for (i, decision) in decisions.iter().enumerate() {
        let (stage, planned) = plan.stage(i);
        let inputs = match (&stage.input, planned.total) {
            (_, Some(n)) => format!("{n} inputs"),
            (config::InputSpec::From(s), None) => format!("outputs of {s}"),
            _ => "inputs".to_owned(),
        };
        let _ = writeln!(
            out,
            "stage {}: {} over {inputs}, {} worker(s); pool {}: {}",
            stage.name,
            stage.task,
            planned.workers,
            decision.kind(),
            decision.reason()
        );
    }
    out
}

fn cmd_tasks(plugin: &str, console: &Arc<Console>) -> Result<i32, Error> {
    let cwd = current_dir()?;
    let spec = classify_plugin_arg(plugin, &cwd);
    let path =
        resolve::resolve(&spec, &cwd).map_err(|e| match resolve::not_found_help(&e, &cwd) {
            Some(help) => Error::Usage(format!("{e}\n  = help: {help}")),
            None => Error::Usage(e.to_string()),
        })?;
    let info = probe::probe(&path, console.verbosity() >= Verbosity::Verbose)
        .map_err(|e| Error::Usage(e.to_string()))?;
    print_out(tasks_text(&info))
}

/// The current directory (`new-plugin` and `tasks` resolve their arguments against it).
fn current_dir() -> Result<PathBuf, Error> {
    std::env::current_dir().map_err(|source| Error::Io {
        context: "cannot read the current directory (was it deleted? cd to an existing one)".into(),
        source,
    })
}

fn classify_plugin_arg(arg: &str, cwd: &Path) -> PluginSpec {
    PluginSpec {
        written: arg.to_owned(),
        kind: resolve::classify(arg, cwd.join(arg)),
    }
}

fn tasks_text(info: &PluginInfo) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plugin {} {} (loky-run-plugin {})",
        info.name, info.version, info.api_version
    );
    let _ = writeln!(out, "  {}", info.path.display());
    for (kind, title) in [
        (TaskKind::Task, "tasks"),
        (TaskKind::Initializer, "initializers"),
    ] {
        let items: Vec<_> = info.tasks.iter().filter(|t| t.kind == kind).collect();
        if items.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{title}:");
        let width = items.iter().map(|t| t.name.len()).max().unwrap_or(0) + info.name.len() + 2;
        for t in items {
            let name = format!("{}::{}", info.name, t.name);
            let _ = writeln!(
                out,
                "  {name:width$}  {} -> {}",
                t.input_type, t.output_type
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn words(args: &[&str]) -> Vec<String> {
        with_default_subcommand(args.iter().map(OsString::from).collect())
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn bare_pipeline_means_run() {
        assert_eq!(
            words(&["loky-run", "p.toml", "--dry-run"]),
            ["loky-run", "run", "p.toml", "--dry-run"]
        );
        assert_eq!(
            words(&["loky-run", "-v", "p.toml"]),
            ["loky-run", "run", "-v", "p.toml"]
        );
        assert_eq!(
            words(&["loky-run", "validate", "p.toml"]),
            ["loky-run", "validate", "p.toml"]
        );
        assert_eq!(words(&["loky-run", "--help"]), ["loky-run", "--help"]);
        assert_eq!(
            words(&["loky-run", "show-config", "p.toml"]),
            ["loky-run", "show-config", "p.toml"]
        );
        assert_eq!(
            words(&["loky-run", "completions", "bash"]),
            ["loky-run", "completions", "bash"]
        );
    }

    #[test]
    fn a_mistyped_subcommand_is_refused_with_the_one_it_resembles() {
        let refused = |w: &str| with_default_subcommand(vec!["loky-run".into(), w.into()]);
        for (typo, meant) in [
            ("valdate", "validate"),
            ("stauts", "status"),
            ("complétions", "completions"),
        ] {
            let message = refused(typo).unwrap_err();
            assert!(message.contains(&format!("'{meant}'")), "{typo}: {message}");
        }
        // Pipeline files, whatever their names.
        for word in ["valdate.toml", "dir/status", "pipeline"] {
            assert!(refused(word).is_ok(), "{word}");
        }
    }

    #[test]
    fn every_subcommand_is_known_to_the_default_rule() {
        for sub in Cli::command().get_subcommands() {
            assert!(SUBCOMMANDS.contains(&sub.get_name()), "{}", sub.get_name());
        }
    }

    #[test]
    fn run_errors_say_what_to_do_and_how_to_finish() {
        use crate::run::RunError;
        let os = |code| std::io::Error::from_raw_os_error(code);
        let resume = Some("loky-run run --resume p.toml");
        let full = Error::Run(RunError::io_in_run("cannot write out/s.jsonl")(os(
            libc::ENOSPC,
        )));
        assert_eq!(full.exit_code(), 74);
        let text = render_error(&full, resume);
        assert!(
            text.starts_with("error: cannot write out/s.jsonl: No space left"),
            "{text}"
        );
        assert!(
            text.contains("= help: free space on the filesystem that holds it, then finish the run with `loky-run run --resume p.toml`"),
            "{text}"
        );
        // Before the run started: nothing to resume.
        let early = Error::Run(RunError::io("cannot lock out/.lock")(os(libc::ENOSPC)));
        let text = render_error(&early, resume);
        assert!(text.contains("then run the same command again"), "{text}");
        assert!(!text.contains("--resume"), "{text}");
        // No advice for the OS error: only how to finish.
        let odd = Error::Run(RunError::io_in_run("cannot write x")(os(libc::ENXIO)));
        assert!(render_error(&odd, resume).contains("once that is fixed, finish the run with"));
        // Read-only, and an output directory that is not writable (exit 2, not 74).
        let ro = Error::Run(RunError::io_in_run("cannot write x")(os(libc::EROFS)));
        assert!(render_error(&ro, None).contains("mounted read-only"));
        let dir = Error::Run(RunError::OutputDir {
            path: "/x".into(),
            source: os(libc::EACCES),
        });
        assert_eq!(dir.exit_code(), 2);
        assert!(render_error(&dir, resume).contains("--set pipeline.output_dir=DIR"));
        let dir_full = Error::Run(RunError::OutputDir {
            path: "/x".into(),
            source: os(libc::ENOSPC),
        });
        assert_eq!(dir_full.exit_code(), 74);
        // A closed stdout is exit 0; any other stdout failure is an I/O error.
        assert_eq!(Error::stdout(os(libc::EPIPE)).exit_code(), 0);
        assert!(Error::stdout(os(libc::EPIPE)).is_silent());
        assert_eq!(Error::stdout(os(libc::ENOSPC)).exit_code(), 74);
    }

    #[test]
    fn the_resume_hint_repeats_the_sets_quoted() {
        let args = ConfigArgs {
            pipeline: "my dir/p.toml".into(),
            sets: vec!["pool.retries=2".into(), "pool.env.X=a b".into()],
            jobs: std::num::NonZeroUsize::new(3),
        };
        assert_eq!(
            resume_command(&args),
            "loky-run run --resume 'my dir/p.toml' -j 3 --set pool.retries=2 --set 'pool.env.X=a b'"
        );
    }

    #[test]
    fn log_filters() {
        use Verbosity::*;
        assert_eq!(log_filter_verbosity("debug", true), Some(Verbose));
        assert_eq!(log_filter_verbosity("debug", false), None);
        assert_eq!(
            log_filter_verbosity("warn,loky_run=trace", false),
            Some(Verbose)
        );
        assert_eq!(log_filter_verbosity("loky_run=error", true), Some(Quiet));
        assert_eq!(log_filter_verbosity("info", true), Some(Normal));
        assert_eq!(log_filter_verbosity("other=debug", true), None);
        assert_eq!(log_filter_verbosity("loud", true), None);
    }
}

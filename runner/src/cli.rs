//! The command line: `run` (also the default), `validate`, `tasks`, and the helpers around
//! them: `show-config`, `new-plugin`, `schema`, `reference`, `completions`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{self, LoadOptions, PluginSpec};
pub use crate::console::ProgressMode;
use crate::console::{Console, Verbosity};
use crate::error::Error;
use crate::plugin::{PluginInfo, TaskKind, probe, resolve};
use crate::run::{self, RunOptions};

#[derive(Debug, Parser)]
#[command(
    name = "loky-run",
    version,
    about = "A declarative, crash-proof process-pool job runner",
    after_help = "`loky-run PIPELINE.toml [OPTIONS]` is the same as `loky-run run PIPELINE.toml [OPTIONS]`.\n\
                  LOKY_RUN_LOG=debug (or RUST_LOG=loky_run=debug) is -v, LOKY_RUN_LOG=error is -q; the flags win."
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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline.
    Run(RunArgs),
    /// Parse a pipeline, resolve and load its plugins, check its tasks exist; run nothing.
    Validate(ConfigArgs),
    /// List the tasks and initializers a plugin exports.
    Tasks {
        /// A plugin name (searched for), a path to a .so, or a path to a plugin crate.
        plugin: String,
    },
    /// Print the resolved configuration (defaults, file, environment, --set), every value with
    /// where it came from.
    ShowConfig(ConfigArgs),
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
pub struct ConfigArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Override a setting: `pool.max_workers=4`, `stage.NAME.retries=2`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Finish an interrupted (or killed) run in the output directory without re-running
    /// completed tasks; refused if the pipeline or its inputs changed since.
    #[arg(long)]
    pub resume: bool,
    /// With --resume: accept a changed pipeline, rerunning the first changed stage and the ones
    /// after it.
    #[arg(long, requires = "resume")]
    pub force: bool,
    /// Write life-cycle events as JSON lines to FILE.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Progress bars: when stderr is a terminal (auto), always, or never.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Print the plan (stages, inputs, pool decisions) and run nothing.
    #[arg(long)]
    pub dry_run: bool,
}

const SUBCOMMANDS: [&str; 9] = [
    "run",
    "validate",
    "tasks",
    "show-config",
    "new-plugin",
    "schema",
    "reference",
    "completions",
    "help",
];

/// `loky-run PIPELINE.toml ...` means `loky-run run PIPELINE.toml ...`.
fn with_default_subcommand(mut args: Vec<OsString>) -> Vec<OsString> {
    let first_positional = args
        .iter()
        .skip(1)
        .position(|a| !a.to_string_lossy().starts_with('-'));
    if let Some(i) = first_positional {
        let word = args[i + 1].to_string_lossy().into_owned();
        if !SUBCOMMANDS.contains(&word.as_str()) {
            args.insert(1, "run".into());
        }
    }
    args
}

/// Parses the arguments, runs the command, and returns the process exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let cli = match Cli::try_parse_from(with_default_subcommand(args)) {
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
    let result = match cli.command {
        Command::Run(args) => cmd_run(args, &console),
        Command::Validate(args) => cmd_validate(args, &console),
        Command::Tasks { plugin } => cmd_tasks(&plugin, &console),
        Command::ShowConfig(args) => cmd_show_config(&args),
        Command::NewPlugin { name, path } => cmd_new_plugin(&name, path.as_deref()),
        Command::Schema => {
            print!("{}", crate::schema::json_schema_text());
            Ok(0)
        }
        Command::Reference => {
            print!("{}", crate::schema::reference_markdown());
            Ok(0)
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "loky-run", &mut std::io::stdout());
            Ok(0)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            match &e {
                Error::Config(_) => eprintln!("{e}"),
                _ => eprintln!("error: {e}"),
            }
            e.exit_code()
        }
    }
}

/// Loads the pipeline and plans it; plan problems point at the setting they concern.
fn load_and_plan(args: &ConfigArgs, console: &Console) -> Result<run::Plan, Error> {
    let loaded = config::load_with_origins(&load_options(args))?;
    let origins = loaded.origins;
    Ok(
        run::plan(loaded.pipeline, console.verbosity() >= Verbosity::Verbose)
            .map_err(|e| e.locate(&origins))?,
    )
}

fn load_options(args: &ConfigArgs) -> LoadOptions {
    LoadOptions {
        file: args.pipeline.clone(),
        sets: args.sets.clone(),
        env: std::env::vars().collect(),
    }
}

/// The verbosity asked for by `LOKY_RUN_LOG`, or by a `RUST_LOG` directive naming `loky_run`.
fn env_verbosity() -> Option<Verbosity> {
    let own = std::env::var("LOKY_RUN_LOG").ok();
    if let Some(value) = own.as_deref().filter(|v| !v.trim().is_empty()) {
        let found = log_filter_verbosity(value, true);
        if found.is_none() {
            eprintln!(
                "warning: LOKY_RUN_LOG={value:?} is not understood; expected a level (error, \
                 warn, info, debug, trace) or loky_run=LEVEL"
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
        print_plan(&plan);
        return Ok(0);
    }
    // From here on a signal stops the run in order (see `run::stage`); before, it kills us.
    crate::interrupt::install();
    let opts = RunOptions {
        events: args.events.clone(),
        dry_run: false,
        resume: run::ResumeMode {
            resume: args.resume,
            force: args.force,
        },
    };
    let report = run::execute(&plan, &opts, console)?;
    run::print_summary(&report, &plan.pipeline, console);
    Ok(report.exit_code)
}

fn cmd_show_config(args: &ConfigArgs) -> Result<i32, Error> {
    let loaded = config::load_with_origins(&load_options(args))?;
    print!("{}", crate::show_config::render(&loaded));
    Ok(0)
}

fn cmd_new_plugin(name: &str, path: Option<&Path>) -> Result<i32, Error> {
    use crate::scaffold;
    let cwd = std::env::current_dir().map_err(|source| Error::Io {
        context: "no current directory".into(),
        source,
    })?;
    let dir = cwd.join(path.unwrap_or(Path::new(name)));
    let api = scaffold::api_source(std::env::var_os(scaffold::PLUGIN_API_VAR).as_deref())?;
    let created = scaffold::create(name, &dir, api)?;
    print!("{}", scaffold::next_steps(&created, &cwd));
    Ok(0)
}

fn cmd_validate(args: ConfigArgs, console: &Arc<Console>) -> Result<i32, Error> {
    let plan = load_and_plan(&args, console)?;
    println!("{}: valid", plan.pipeline.file.display());
    print_plan(&plan);
    Ok(0)
}

/// The plan as `--dry-run` and `validate` show it: plugins, then each stage with its inputs,
/// workers and the pool decision the run would take.
fn print_plan(plan: &run::Plan) {
    println!(
        "pipeline {} -> {}",
        plan.pipeline.name,
        plan.pipeline.output_dir.display()
    );
    for p in &plan.plugins {
        println!(
            "plugin {} {} (plugin-api {}): {}",
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
        println!(
            "stage {}: {} over {inputs}, {} worker(s); pool {}: {}",
            stage.name,
            stage.task,
            planned.workers,
            decision.kind(),
            decision.reason()
        );
    }
}

fn cmd_tasks(plugin: &str, console: &Arc<Console>) -> Result<i32, Error> {
    let cwd = std::env::current_dir().map_err(|source| Error::Io {
        context: "no current directory".into(),
        source,
    })?;
    let spec = classify_plugin_arg(plugin, &cwd);
    let path = resolve::resolve(&spec, &cwd).map_err(|e| Error::Usage(e.to_string()))?;
    let info = probe::probe(&path, console.verbosity() >= Verbosity::Verbose)
        .map_err(|e| Error::Usage(e.to_string()))?;
    print_tasks(&info);
    Ok(0)
}

fn classify_plugin_arg(arg: &str, cwd: &Path) -> PluginSpec {
    let path = cwd.join(arg);
    let kind = if arg.contains('/') || arg.ends_with(".so") || arg.starts_with('.') || path.is_dir()
    {
        if path.is_dir() {
            config::PluginSpecKind::Crate(path)
        } else {
            config::PluginSpecKind::Library(path)
        }
    } else {
        config::PluginSpecKind::Name(arg.to_owned())
    };
    PluginSpec {
        written: arg.to_owned(),
        kind,
    }
}

fn print_tasks(info: &PluginInfo) {
    println!(
        "plugin {} {} (plugin-api {})",
        info.name, info.version, info.api_version
    );
    println!("  {}", info.path.display());
    for (kind, title) in [
        (TaskKind::Task, "tasks"),
        (TaskKind::Initializer, "initializers"),
    ] {
        let items: Vec<_> = info.tasks.iter().filter(|t| t.kind == kind).collect();
        if items.is_empty() {
            continue;
        }
        println!("{title}:");
        let width = items.iter().map(|t| t.name.len()).max().unwrap_or(0) + info.name.len() + 2;
        for t in items {
            let name = format!("{}::{}", info.name, t.name);
            println!("  {name:width$}  {} -> {}", t.input_type, t.output_type);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(args: &[&str]) -> Vec<String> {
        with_default_subcommand(args.iter().map(OsString::from).collect())
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
    fn every_subcommand_is_known_to_the_default_rule() {
        for sub in Cli::command().get_subcommands() {
            assert!(SUBCOMMANDS.contains(&sub.get_name()), "{}", sub.get_name());
        }
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

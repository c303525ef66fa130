//! The pipeline configuration: read the file, layer the environment and `--set` over it,
//! validate everything, and produce a [`Pipeline`] — or every problem at once, each naming
//! its layer and, for the file, its line and column.
//!
//! # Layers
//!
//! Lowest first:
//!
//! 1. **The pipeline file** (SPEC §3). Relative paths in it are relative to its directory.
//! 2. **The environment**: `LOKY_RUN_PIPELINE_<KEY>` → `pipeline.<key>`, `LOKY_RUN_POOL_<KEY>` →
//!    `pool.<key>`, `LOKY_RUN_STAGE_<STAGE>_<KEY>` → that stage's `<key>`, where `<STAGE>` is the
//!    stage name upper-cased with `-` and `.` read as `_` (the longest matching stage name wins).
//!    Every other `LOKY_RUN_*` variable (e.g. `LOKY_RUN_PLUGIN_PATH`) is not configuration and
//!    is ignored. `[slurm]` has no environment layer (sbatch reads its own `SBATCH_*`
//!    variables; `LOKY_RUN_SLURM_TESTS` and `LOKY_RUN_SLURM_NODES` are the test suite's).
//! 3. **`--set KEY=VALUE`**, in order: `pipeline.<key>`, `pool.<key>`, `slurm.<key>`,
//!    `stage.<NAME>.<key>`, and
//!    one level into tables: `pool.env.<VAR>`, `pool.initializer.task`,
//!    `pool.initializer.args[.<k>...]`, `stage.<NAME>.input.<kind>`.
//!
//! Values from the environment and `--set` are TOML values when they parse as one (`4` is an
//! integer, `[1, 2]` an array, `{ A = "x" }` a table) and strings otherwise (`auto`,
//! `300MB`); for keys that take a string (names, paths, tasks, durations, choices) the text is
//! taken as it is (`pipeline.name=2024` is the string "2024"), quotes removed if it is a quoted
//! TOML string. Relative paths from these layers are relative to the current directory.
//! Tables merge (`--set pool.env.X=1` adds to the file's `env`), except a stage's `input`,
//! which an override replaces whole. A stage's `name` cannot be overridden.
//!
//! A stage's pool settings are its own keys, over `[pool]`, over the defaults; a stage's
//! `env` or `initializer` replaces the `[pool]` one (no merge).
//!
//! # Implementation
//!
//! [`document`] parses the file into a tree that knows every key's and value's span;
//! [`check`] reports unknown keys and misplaced sections from that tree; [`layers`] turns
//! variables and `--set` arguments into figment providers (one per variable or argument, so a
//! value's figment tag says exactly where it came from). Figment merges `[pipeline]`,
//! `[pool]` and `[slurm]` in one figment and each stage in its own (figment cannot address one element of the
//! `[[stage]]` array); [`extract`] reads the merged values key by key (so that every bad value is
//! reported), and [`validate`] applies defaults and the cross-key checks.

pub mod model;
pub use model::*;

mod check;
mod diagnostic;
mod document;
mod extract;
mod keys;
pub use keys::closest;
mod layers;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::value::Dict;

pub use diagnostic::{ConfigError, Diagnostic, Layer, Location, Origin};
pub use keys::{
    INITIALIZER_KEYS, INPUT_KEYS, KeySpec, Kind, PIPELINE_KEYS, POOL_KEYS, SLURM_DOC, SLURM_KEYS,
    STAGE_KEYS,
};

use diagnostic::SourceText;
use document::{Seg, table_to_dict};
use layers::{DictProvider, Override, Target, metadata_for};

/// What to load.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The pipeline file, relative to the current directory or absolute.
    pub file: PathBuf,
    /// Raw `--set KEY=VALUE` arguments, in order (later ones win).
    pub sets: Vec<String>,
    /// The environment to read `LOKY_RUN_*` from (the CLI passes `std::env::vars()`).
    pub env: Vec<(String, String)>,
}

/// A loaded pipeline, with where each setting came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub pipeline: Pipeline,
    /// By key in `--set` spelling: every `pipeline.<key>` and `pool.<key>`, every `slurm.<key>`
    /// when the pipeline has a `[slurm]` table, and every
    /// `stage.<name>.<key>` (for a pool key, the origin of the effective value: the stage's own,
    /// `[pool]`'s, or [`Layer::Default`]). A few parts of tables also appear
    /// (`pool.initializer.task`, `pool.initializer.args`, each variable of `env`: `pool.env.NAME`).
    pub origins: BTreeMap<String, Origin>,
    /// `[pool]`'s settings over the defaults: what a stage that sets no pool key of its own
    /// gets (the resolved stages hold their own; this is for `show-config`).
    pub pool: PoolSettings,
}

/// Loads, layers and validates a pipeline. On error, every problem found is reported.
pub fn load(opts: &LoadOptions) -> Result<Pipeline, ConfigError> {
    load_with_origins(opts).map(|l| l.pipeline)
}

/// [`load`], also telling where every setting came from (for `show-config`).
pub fn load_with_origins(opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    let (path, text) = read_file(&opts.file)?;
    let src = SourceText::new(&path, text);
    let doc = document::parse(&src.text).map_err(|e| {
        ConfigError::single(
            Diagnostic::new(format!("invalid TOML: {}", e.message), src.layer())
                .at(e.span.map(|s| src.location(s))),
        )
    })?;
    let base_dir = path
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let cwd = std::env::current_dir().unwrap_or_else(|_| base_dir.clone());

    let mut diags = Vec::new();
    let sections = check::check_file(&doc, &src, &mut diags);
    let file_stages = sections.stages.clone().unwrap_or_default();
    let mut stage_names: Vec<Option<String>> = vec![None; sections.stage_count];
    for (i, node) in &file_stages {
        if let Some((_, n)) = node.get("name")
            && let document::NodeKind::String(name) = &n.kind
        {
            stage_names[*i] = Some(name.clone());
        }
    }
    let mut overrides = layers::from_env(&opts.env, &stage_names, &mut diags);
    overrides.extend(layers::from_sets(&opts.sets, &stage_names, &mut diags));

    let file_meta = metadata_for(&src.layer());
    let mut extractor = extract::Extractor::new(&src, &doc);

    // [pipeline], [pool] and [slurm]: one figment.
    let mut top = Dict::new();
    for (name, node) in [
        ("pipeline", sections.pipeline),
        ("pool", sections.pool),
        ("slurm", sections.slurm),
    ] {
        if let Some(node) = node {
            top.insert(name.into(), node.to_figment());
        }
    }
    let mut global = Figment::from(DictProvider::new(file_meta.clone(), top));
    for o in &overrides {
        match o.target {
            Target::Pipeline => global = global.merge(o.provider("pipeline")),
            Target::Pool => global = global.merge(o.provider("pool")),
            Target::Slurm => global = global.merge(o.provider("slurm")),
            Target::Stage(_) => {}
        }
    }
    let raw_pipeline = extractor.pipeline(&global);
    let pool_dict = match global.find_value("pool") {
        Ok(figment::value::Value::Dict(_, d)) => d,
        _ => Dict::new(),
    };
    let raw_pool = extractor.pool(&global, &pool_dict, &[Seg::from("pool")], "pool");
    let raw_slurm = extractor.slurm(&global);

    // Each stage: its own figment.
    let mut raw_stages = Vec::new();
    for (index, node) in &file_stages {
        let figment = stage_figment(*index, node, &overrides, &file_meta);
        raw_stages.push(extractor.stage(&figment, *index));
    }

    let mut resolver = validate::Resolver {
        file: &path,
        base_dir: &base_dir,
        cwd: &cwd,
        has_pipeline_section: sections.pipeline.is_some(),
        pipeline_origin: match sections.pipeline {
            Some(_) => extractor.file_origin(&[Seg::from("pipeline")]),
            None => Origin {
                layer: src.layer(),
                location: None,
            },
        },
        diags: Vec::new(),
        origins: BTreeMap::new(),
    };
    // `[pool]` alone, with the same defaults as a stage's; origins as recorded above.
    let pool_settings = resolver.settings(&extract::RawPool::default(), &raw_pool, "pool");
    let pipeline = resolver.resolve(
        raw_pipeline,
        &raw_pool,
        raw_slurm,
        raw_stages,
        sections.stages.is_some(),
    );
    diags.append(&mut extractor.diags);
    diags.append(&mut resolver.diags);
    match pipeline {
        Some(pipeline) if diags.is_empty() => {
            let mut origins = extractor.origins;
            origins.append(&mut resolver.origins);
            // Whatever nobody set is a default.
            let unset = PIPELINE_KEYS
                .iter()
                .map(|k| format!("pipeline.{}", k.name))
                .chain(POOL_KEYS.iter().map(|k| format!("pool.{}", k.name)));
            for key in unset {
                origins.entry(key).or_insert_with(Origin::default_value);
            }
            Ok(Loaded {
                pipeline,
                origins,
                pool: pool_settings,
            })
        }
        _ => Err(ConfigError::new(diags)),
    }
}

/// One stage of the file under `stage`, with the overrides that target it merged over it.
/// An override of `input` replaces the whole input: the file's, and earlier overrides'.
fn stage_figment(
    index: usize,
    node: &document::Node,
    overrides: &[Override],
    file_meta: &figment::Metadata,
) -> Figment {
    let mine: Vec<&Override> = overrides
        .iter()
        .filter(|o| o.applies_to_stage(index))
        .collect();
    let last_input = mine.iter().rposition(|o| o.touches_input());
    let mut dict = table_to_dict(node.table().unwrap_or_default());
    if last_input.is_some() {
        dict.remove("input");
    }
    let mut top = Dict::new();
    top.insert("stage".into(), dict.into());
    let mut figment = Figment::from(DictProvider::new(file_meta.clone(), top));
    for (i, o) in mine.iter().enumerate() {
        if o.touches_input() && Some(i) != last_input {
            continue;
        }
        figment = figment.merge(o.provider("stage"));
    }
    figment
}

/// Reads the pipeline file; returns its canonical path and text.
fn read_file(file: &Path) -> Result<(PathBuf, String), ConfigError> {
    let shown = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let fail = |message: String, help: Option<String>| {
        ConfigError::single(Diagnostic::new(message, Layer::File(shown.clone())).maybe_help(help))
    };
    if file.as_os_str().is_empty() {
        return Err(fail("no pipeline file given".into(), None));
    }
    let path = std::fs::canonicalize(file).map_err(|e| {
        let help = (e.kind() == std::io::ErrorKind::NotFound)
            .then(|| "check the path; it is relative to the current directory".to_string());
        fail(
            format!(
                "cannot read pipeline file {}: {}",
                shown.display(),
                io_reason(&e)
            ),
            help,
        )
    })?;
    if path.is_dir() {
        return Err(fail(
            format!("{} is a directory, not a pipeline file", shown.display()),
            Some("give the path of a .toml file".into()),
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| {
        fail(
            format!(
                "cannot read pipeline file {}: {}",
                shown.display(),
                io_reason(&e)
            ),
            None,
        )
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        fail(
            format!(
                "pipeline file {} is not UTF-8 text (invalid byte at offset {})",
                shown.display(),
                e.utf8_error().valid_up_to()
            ),
            None,
        )
    })?;
    Ok((path, text))
}

/// "No such file or directory", without the "(os error 2)".
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests;

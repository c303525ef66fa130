//! The layers over the file: `LOKY_RUN_*` environment variables, then `--set KEY=VALUE`, and the
//! figment providers that carry each of them (one provider per variable or argument, so every
//! value's figment tag names exactly where it came from).

use figment::value::{Dict, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use super::diagnostic::{Diagnostic, Layer};
use super::document::{NodeKind, parse_value};
use super::keys::{INITIALIZER_KEYS, INPUT_KEYS, Kind, SECTIONS, Section, closest, join_words};

/// What an override applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Pipeline,
    Pool,
    /// `[slurm]`, from `--set` only (it has no environment layer).
    Slurm,
    /// The stages (indices in the file) of that name.
    Stage(Vec<usize>),
}

/// One value from the environment or `--set`.
#[derive(Debug, Clone)]
pub(crate) struct Override {
    pub layer: Layer,
    pub target: Target,
    /// The key path inside the section: `["max_workers"]`, `["env", "GREETING"]`.
    pub path: Vec<String>,
    pub value: Value,
}

impl Override {
    pub(super) fn applies_to_stage(&self, index: usize) -> bool {
        matches!(&self.target, Target::Stage(ixs) if ixs.contains(&index))
    }

    pub(super) fn touches_input(&self) -> bool {
        self.path.first().is_some_and(|k| k == "input")
    }

    /// A provider holding `{ <root>: { path...: value } }`.
    pub(super) fn provider(&self, root: &str) -> DictProvider {
        let mut value = self.value.clone();
        for key in self.path.iter().rev() {
            let mut dict = Dict::new();
            dict.insert(key.clone(), value);
            value = Value::from(dict);
        }
        let mut dict = Dict::new();
        dict.insert(root.to_string(), value);
        DictProvider::new(metadata_for(&self.layer), dict)
    }
}

/// A figment provider over a ready-made dictionary.
pub(crate) struct DictProvider {
    metadata: Metadata,
    dict: Dict,
}

impl DictProvider {
    pub(super) fn new(metadata: Metadata, dict: Dict) -> Self {
        DictProvider { metadata, dict }
    }
}

impl Provider for DictProvider {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

const ENV_TAG: &str = "env:";
const SET_TAG: &str = "set:";

/// Metadata that [`layer_of`] maps back to the layer.
pub(crate) fn metadata_for(layer: &Layer) -> Metadata {
    match layer {
        Layer::File(path) => Metadata::from("pipeline file", Source::File(path.clone())),
        Layer::Env(var) => Metadata::from(
            format!("environment variable {var}"),
            Source::Custom(format!("{ENV_TAG}{var}")),
        ),
        Layer::Set(arg) => Metadata::from(
            format!("--set {arg}"),
            Source::Custom(format!("{SET_TAG}{arg}")),
        ),
        Layer::Default => Metadata::named("default"),
    }
}

fn layer_of(metadata: &Metadata) -> Layer {
    match &metadata.source {
        Some(Source::File(path)) => Layer::File(path.clone()),
        Some(Source::Custom(s)) => {
            if let Some(var) = s.strip_prefix(ENV_TAG) {
                Layer::Env(var.to_string())
            } else if let Some(arg) = s.strip_prefix(SET_TAG) {
                Layer::Set(arg.to_string())
            } else {
                Layer::Default
            }
        }
        _ => Layer::Default,
    }
}

/// The layer that set `value`: for a table or array, the highest layer that set any part of it.
pub(crate) fn layer_of_value(figment: &Figment, value: &Value) -> Layer {
    figment
        .get_metadata(newest_tag(value))
        .map_or(Layer::Default, layer_of)
}

/// Tags are ordered by creation, and providers are merged in layer order.
fn newest_tag(value: &Value) -> Tag {
    let own = value.tag();
    let inner = match value {
        Value::Dict(_, dict) => dict.values().map(newest_tag).max(),
        Value::Array(_, items) => items.iter().map(newest_tag).max(),
        _ => None,
    };
    match inner {
        Some(tag) if tag > own => tag,
        _ => own,
    }
}

// ---- key paths ---------------------------------------------------------------------------

/// Why a key path does not exist, in words that fit every layer.
struct PathProblem {
    what: String,
    /// A corrected path (same section), for "did you mean".
    suggestion: Option<Vec<String>>,
    help: Option<String>,
}

impl PathProblem {
    /// "did you mean `X`?" (the suggestion spelled for its layer by `spell`), the help, or
    /// both: a near miss here and an exact key elsewhere (`pool.tasks`: `pool.task_timeout`,
    /// or [slurm]'s `tasks`).
    fn help(self, spell: impl Fn(&[String]) -> String) -> Option<String> {
        match (self.suggestion, self.help) {
            (Some(p), Some(help)) => Some(format!("did you mean `{}`? ({help})", spell(&p))),
            (Some(p), None) => Some(format!("did you mean `{}`?", spell(&p))),
            (None, help) => help,
        }
    }
}

fn section_name(section: Section) -> &'static str {
    match section {
        Section::Pipeline => "[pipeline]",
        Section::Pool => "[pool]",
        Section::Slurm => "[slurm]",
        Section::Stage => "a stage",
    }
}

/// Checks a key path inside a section and returns the kind of value it takes.
fn check_path(section: Section, path: &[String]) -> Result<Kind, PathProblem> {
    let Some(first) = path.first().filter(|k| !k.is_empty()) else {
        return Err(PathProblem {
            what: format!("no key given for {}", section_name(section)),
            suggestion: None,
            help: None,
        });
    };
    let Some(spec) = section.spec(first) else {
        let suggestion = closest(first, section.names()).map(|s| {
            let mut p = path.to_vec();
            p[0] = s.to_string();
            p
        });
        let elsewhere = section.others_with(first);
        let help = (!elsewhere.is_empty()).then(|| {
            let places: Vec<String> = elsewhere.iter().map(|s| s.header().to_string()).collect();
            format!("`{first}` is a key of {}", join_words(&places, "or"))
        });
        return Err(PathProblem {
            what: format!("unknown key `{first}` in {}", section_name(section)),
            suggestion,
            help,
        });
    };
    if section == Section::Stage && spec.name == "name" {
        return Err(PathProblem {
            what: "a stage's name cannot be changed from the environment or --set".into(),
            suggestion: None,
            help: Some("rename the stage in the pipeline file".into()),
        });
    }
    let rest = &path[1..];
    let sub_table: Option<&[super::keys::KeySpec]> = match spec.kind {
        Kind::Initializer => Some(INITIALIZER_KEYS),
        Kind::Input => Some(INPUT_KEYS),
        _ => None,
    };
    match (spec.kind, rest) {
        (kind, []) => Ok(kind),
        (Kind::TextMap, [name]) if !name.is_empty() => Ok(Kind::Text),
        (Kind::TextMap, _) => Err(PathProblem {
            what: format!(
                "`{first}` takes exactly one more part, a variable's name: `{first}.NAME`"
            ),
            suggestion: None,
            help: None,
        }),
        (_, [sub, deeper @ ..]) if sub_table.is_some() => {
            let table = sub_table.unwrap_or_default();
            match table.iter().find(|k| k.name == sub) {
                Some(k) if k.kind == Kind::Any => Ok(Kind::Any),
                Some(k) if deeper.is_empty() => Ok(k.kind),
                Some(k) => Err(PathProblem {
                    what: format!("`{first}.{}` has no sub-keys", k.name),
                    suggestion: None,
                    help: None,
                }),
                None => Err(PathProblem {
                    what: format!("unknown key `{sub}` in `{first}`"),
                    suggestion: closest(sub, table.iter().map(|k| k.name)).map(|s| {
                        let mut p = path.to_vec();
                        p[1] = s.to_string();
                        p.truncate(2);
                        p
                    }),
                    help: None,
                }),
            }
        }
        (_, _) => Err(PathProblem {
            what: format!("`{first}` has no sub-keys"),
            suggestion: None,
            help: None,
        }),
    }
}

/// Reads an override's text as the value of a key of `kind`; see [`Kind::is_textual`].
pub(crate) fn override_value(text: &str, kind: Kind) -> Value {
    let text = text.trim();
    let parsed = parse_value(text);
    if kind.is_textual() {
        match parsed {
            Some(node) if matches!(node.kind, NodeKind::String(_)) => node.to_figment(),
            _ => Value::from(text),
        }
    } else {
        parsed.map_or_else(|| Value::from(text), |node| node.to_figment())
    }
}

// ---- environment -------------------------------------------------------------------------

const PREFIX: &str = "LOKY_RUN_";

/// `-` and `.` read as `_`, upper case: how a stage name is spelled in a variable name.
pub(crate) fn env_spelling(stage: &str) -> String {
    stage.to_uppercase().replace(['-', '.'], "_")
}

/// Reads `LOKY_RUN_PIPELINE_<KEY>`, `LOKY_RUN_POOL_<KEY>` and `LOKY_RUN_STAGE_<STAGE>_<KEY>`
/// (sorted by name); every other `LOKY_RUN_*` variable belongs to someone else and is ignored.
/// `[slurm]` has no environment layer: `LOKY_RUN_SLURM_*` names the test suite's gates
/// (`LOKY_RUN_SLURM_TESTS`, `LOKY_RUN_SLURM_NODES`, the latter also a `[slurm]` key's name),
/// and sbatch reads its own `SBATCH_*` variables. `stages` holds the stage names of the file,
/// by index.
pub(crate) fn from_env(
    env: &[(String, String)],
    stages: &[Option<String>],
    diags: &mut Vec<Diagnostic>,
) -> Vec<Override> {
    let mut vars: Vec<&(String, String)> =
        env.iter().filter(|(k, _)| k.starts_with(PREFIX)).collect();
    vars.sort();
    let mut out = Vec::new();
    for (var, text) in vars {
        let rest = &var[PREFIX.len()..];
        let layer = Layer::Env(var.clone());
        let (section, env_section, target, stage_spelling, key) =
            if let Some(key) = rest.strip_prefix("POOL_") {
                (Section::Pool, "POOL_", Target::Pool, None, key)
            } else if let Some(key) = rest.strip_prefix("PIPELINE_") {
                (Section::Pipeline, "PIPELINE_", Target::Pipeline, None, key)
            } else if let Some(rest) = rest.strip_prefix("STAGE_") {
                match match_env_stage(rest, stages) {
                    Ok((indices, spelling, key)) => (
                        Section::Stage,
                        "STAGE_",
                        Target::Stage(indices),
                        Some(spelling),
                        key,
                    ),
                    Err(d) => {
                        diags.push(d.layer_var(var));
                        continue;
                    }
                }
            } else {
                if let Some(d) = misspelled_section(var, rest) {
                    diags.push(d);
                }
                continue;
            };
        let path = vec![key.to_lowercase()];
        let env_name = |p: &[String]| {
            let stage = stage_spelling
                .as_ref()
                .map(|s| format!("{s}_"))
                .unwrap_or_default();
            format!("{PREFIX}{env_section}{stage}{}", p[0].to_uppercase())
        };
        match check_path(section, &path) {
            Ok(kind) => out.push(Override {
                layer,
                target,
                path,
                value: override_value(text, kind),
            }),
            Err(problem) => diags.push(
                Diagnostic::new(
                    format!("{} (environment variable `{var}`)", problem.what),
                    layer,
                )
                .maybe_help(problem.help(env_name)),
            ),
        }
    }
    out
}

/// `LOKY_RUN_*` variables of the runner itself and of its test suite (not configuration
/// layers; fixed public names).
const RUNNER_VARS: [&str; 7] = [
    "LOG",
    "LISTEN",
    "PLUGIN_PATH",
    "CONNECT",
    "TOKEN",
    "SLURM_TESTS",
    "SLURM_NODES",
];

/// A variable that looks like a configuration layer with a misspelled section
/// (`LOKY_RUN_POL_MAX_WORKERS`): silently ignoring it would hide the user's setting.
/// `LOKY_RUN_SLURM_*` is no misspelling: `[slurm]` has no environment layer, and the test
/// suite's gates live there.
fn misspelled_section(var: &str, rest: &str) -> Option<Diagnostic> {
    if RUNNER_VARS.contains(&rest) || rest.starts_with("SLURM_") {
        return None;
    }
    let (section, key) = rest.split_once('_')?;
    let fixed = super::keys::closest(section, ["POOL", "PIPELINE", "STAGE"])?;
    Some(
        Diagnostic::new(
            format!("environment variable `{var}` names no configuration section (`{section}`)"),
            Layer::Env(var.to_string()),
        )
        .maybe_help(Some(format!("did you mean `{PREFIX}{fixed}_{key}`?"))),
    )
}

/// A problem found before the layer is known to the caller.
struct Pending(String, Option<String>);

impl Pending {
    fn layer_var(self, var: &str) -> Diagnostic {
        Diagnostic::new(self.0, Layer::Env(var.to_string())).maybe_help(self.1)
    }

    fn layer_set(self, arg: &str) -> Diagnostic {
        Diagnostic::new(self.0, Layer::Set(arg.to_string())).maybe_help(self.1)
    }
}

/// `SQUARES_RETRIES` → (stages named like `squares`, `SQUARES`, `RETRIES`); the longest
/// matching stage name wins.
fn match_env_stage<'r>(
    rest: &'r str,
    stages: &[Option<String>],
) -> Result<(Vec<usize>, String, &'r str), Pending> {
    let upper = rest.to_uppercase();
    let best = stages
        .iter()
        .flatten()
        .map(|name| env_spelling(name))
        .filter(|s| upper.starts_with(&format!("{s}_")))
        .max_by_key(String::len);
    let var = format!("{PREFIX}STAGE_{rest}");
    let Some(spelling) = best else {
        return Err(Pending(
            format!("environment variable `{var}` names no stage of this pipeline"),
            Some(stage_hint(stages, rest, '_', |name, key| {
                format!(
                    "{PREFIX}STAGE_{}_{}",
                    env_spelling(name),
                    key.to_uppercase()
                )
            })),
        ));
    };
    let matching: Vec<usize> = stages
        .iter()
        .enumerate()
        .filter(|(_, n)| n.as_deref().map(env_spelling).as_ref() == Some(&spelling))
        .map(|(i, _)| i)
        .collect();
    let mut names: Vec<String> = matching
        .iter()
        .filter_map(|&i| stages[i].clone())
        .map(|n| format!("`{n}`"))
        .collect();
    names.dedup();
    if names.len() > 1 {
        return Err(Pending(
            format!(
                "environment variable `{var}` matches several stages: {}",
                join_words(&names, "and")
            ),
            Some("use --set stage.NAME.KEY=VALUE instead".into()),
        ));
    }
    Ok((matching, spelling.clone(), &rest[spelling.len() + 1..]))
}

/// "did you mean ..." for a stage reference that matched nothing: tries every split of `rest`
/// into a stage part and a valid key, and suggests the stage closest to the stage part.
fn stage_hint(
    stages: &[Option<String>],
    rest: &str,
    sep: char,
    spell: impl Fn(&str, &str) -> String,
) -> String {
    let names: Vec<&str> = stages.iter().flatten().map(String::as_str).collect();
    if names.is_empty() {
        return "the pipeline file has no named stage".into();
    }
    for (i, _) in rest
        .match_indices(sep)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        let (stage_part, key_part) = (&rest[..i], &rest[i + 1..]);
        let first_key = key_part
            .split('.')
            .next()
            .unwrap_or_default()
            .to_lowercase();
        if Section::Stage.spec(&first_key).is_some() {
            let normalized = stage_part.to_lowercase().replace(['-', '.'], "_");
            let best = names
                .iter()
                .map(|n| {
                    (
                        *n,
                        strsim::jaro_winkler(
                            &normalized,
                            &n.to_lowercase().replace(['-', '.'], "_"),
                        ),
                    )
                })
                .filter(|(_, score)| *score >= 0.7)
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((name, _)) = best {
                return format!("did you mean `{}`?", spell(name, key_part));
            }
        }
    }
    let listed: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    format!("the stages are {}", join_words(&listed, "and"))
}

// ---- --set -------------------------------------------------------------------------------

/// Reads `--set KEY=VALUE` arguments: `pipeline.KEY`, `pool.KEY` (`pool.env.NAME`,
/// `pool.initializer.args`, ...), `slurm.KEY` or `stage.NAME.KEY`, where `NAME` is matched exactly (the
/// longest stage name that fits, since names may contain dots).
pub(crate) fn from_sets(
    sets: &[String],
    stages: &[Option<String>],
    diags: &mut Vec<Diagnostic>,
) -> Vec<Override> {
    let mut out = Vec::new();
    for arg in sets {
        match parse_set(arg, stages) {
            Ok(o) => out.push(o),
            Err(p) => diags.push(p.layer_set(arg)),
        }
    }
    out
}

fn parse_set(arg: &str, stages: &[Option<String>]) -> Result<Override, Pending> {
    let Some((key, text)) = arg.split_once('=') else {
        return Err(Pending(
            format!("`--set {arg}`: expected KEY=VALUE"),
            Some("for example --set pool.max_workers=4 or --set stage.NAME.retries=2".into()),
        ));
    };
    let key = key.trim();
    let (head, rest) = key.split_once('.').unwrap_or((key, ""));
    let (section, target, prefix, path_text) = match head {
        "pipeline" => (
            Section::Pipeline,
            Target::Pipeline,
            "pipeline".to_string(),
            rest,
        ),
        "pool" => (Section::Pool, Target::Pool, "pool".to_string(), rest),
        "slurm" => (Section::Slurm, Target::Slurm, "slurm".to_string(), rest),
        "stage" => {
            let best = stages
                .iter()
                .flatten()
                .filter(|name| rest.starts_with(&format!("{name}.")))
                .max_by_key(|name| name.len());
            let Some(name) = best else {
                return Err(Pending(
                    format!("`--set {arg}`: `{rest}` names no stage of this pipeline"),
                    Some(stage_hint(stages, rest, '.', |name, key| {
                        format!("stage.{name}.{key}")
                    })),
                ));
            };
            let indices = stages
                .iter()
                .enumerate()
                .filter(|(_, n)| n.as_deref() == Some(name.as_str()))
                .map(|(i, _)| i)
                .collect();
            (
                Section::Stage,
                Target::Stage(indices),
                format!("stage.{name}"),
                &rest[name.len() + 1..],
            )
        }
        other => {
            let help = match closest(other, SECTIONS.iter().copied()) {
                Some(s) => format!("did you mean `{s}.{rest}`?"),
                None => "keys start with `pipeline.`, `pool.`, `slurm.` or `stage.NAME.`".into(),
            };
            return Err(Pending(
                format!("`--set {arg}`: unknown section `{other}`"),
                Some(help),
            ));
        }
    };
    let path: Vec<String> = path_text.split('.').map(str::to_string).collect();
    match check_path(section, &path) {
        Ok(kind) => Ok(Override {
            layer: Layer::Set(arg.to_string()),
            target,
            path,
            value: override_value(text, kind),
        }),
        Err(problem) => Err(Pending(
            format!("`--set {arg}`: {}", problem.what),
            problem.help(|p| format!("{prefix}.{}", p.join("."))),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<Option<String>> {
        v.iter().map(|s| Some(s.to_string())).collect()
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_mapping() {
        let stages = names(&["squares", "sum-up", "sum", "a.b"]);
        let mut diags = vec![];
        let got = from_env(
            &env(&[
                ("LOKY_RUN_POOL_MAX_WORKERS", "4"),
                ("LOKY_RUN_PIPELINE_NAME", "2024"),
                ("LOKY_RUN_STAGE_SUM_UP_RETRIES", "2"),
                ("LOKY_RUN_STAGE_SUM_RETRIES", "3"),
                ("LOKY_RUN_STAGE_A_B_CHUNKSIZE", "auto"),
                ("LOKY_RUN_PLUGIN_PATH", "/x"),
                ("LOKY_RUNNER", "x"),
                ("PATH", "/bin"),
            ]),
            &stages,
            &mut diags,
        );
        assert!(diags.is_empty(), "{diags:?}");
        let show: Vec<String> = got
            .iter()
            .map(|o| format!("{:?} {} {:?}", o.target, o.path.join("."), o.value))
            .collect();
        assert_eq!(got.len(), 5, "{show:#?}");
        let find = |var: &str| {
            got.iter()
                .find(|o| o.layer == Layer::Env(var.into()))
                .unwrap()
        };
        let o = find("LOKY_RUN_POOL_MAX_WORKERS");
        assert_eq!(
            (o.target.clone(), o.path.clone()),
            (Target::Pool, vec!["max_workers".into()])
        );
        assert_eq!(o.value.to_i128(), Some(4));
        // A string key keeps the text as it is.
        assert_eq!(find("LOKY_RUN_PIPELINE_NAME").value.as_str(), Some("2024"));
        // Longest stage name wins.
        assert_eq!(
            find("LOKY_RUN_STAGE_SUM_UP_RETRIES").target,
            Target::Stage(vec![1])
        );
        assert_eq!(
            find("LOKY_RUN_STAGE_SUM_RETRIES").target,
            Target::Stage(vec![2])
        );
        let o = find("LOKY_RUN_STAGE_A_B_CHUNKSIZE");
        assert_eq!(o.target, Target::Stage(vec![3]));
        assert_eq!(o.value.as_str(), Some("auto"));
    }

    fn by_var<'a>(diags: &'a [Diagnostic], var: &str) -> &'a Diagnostic {
        diags
            .iter()
            .find(|d| d.layer == Layer::Env(var.into()))
            .unwrap_or_else(|| panic!("no diagnostic for {var}: {diags:#?}"))
    }

    #[test]
    fn env_problems() {
        let stages = names(&["squares"]);
        let mut diags = vec![];
        from_env(
            &env(&[
                ("LOKY_RUN_POOL_MAX_WORKER", "4"),
                ("LOKY_RUN_STAGE_SQUARE_RETRIES", "1"),
                ("LOKY_RUN_STAGE_SQUARES_RETRYS", "1"),
                ("LOKY_RUN_STAGE_SQUARES_NAME", "x"),
                ("LOKY_RUN_POL_MAX_WORKERS", "3"),
                ("LOKY_RUN_PLUGIN_PATH", "/x"),
                ("LOKY_RUN_LOG", "debug"),
            ]),
            &stages,
            &mut diags,
        );
        assert_eq!(diags.len(), 5, "{diags:#?}");
        assert_eq!(
            by_var(&diags, "LOKY_RUN_POL_MAX_WORKERS").help.as_deref(),
            Some("did you mean `LOKY_RUN_POOL_MAX_WORKERS`?")
        );
        let by = |var: &str| {
            diags
                .iter()
                .find(|d| d.layer == Layer::Env(var.into()))
                .unwrap()
        };
        let d = by("LOKY_RUN_POOL_MAX_WORKER");
        assert!(d.message.contains("unknown key `max_worker`"), "{d}");
        assert_eq!(
            d.help.as_deref(),
            Some("did you mean `LOKY_RUN_POOL_MAX_WORKERS`?")
        );
        let d = by("LOKY_RUN_STAGE_SQUARE_RETRIES");
        assert!(d.message.contains("names no stage"), "{d}");
        assert_eq!(
            d.help.as_deref(),
            Some("did you mean `LOKY_RUN_STAGE_SQUARES_RETRIES`?")
        );
        let d = by("LOKY_RUN_STAGE_SQUARES_RETRYS");
        assert_eq!(
            d.help.as_deref(),
            Some("did you mean `LOKY_RUN_STAGE_SQUARES_RETRIES`?")
        );
        assert!(
            by("LOKY_RUN_STAGE_SQUARES_NAME")
                .message
                .contains("name cannot be changed")
        );
    }

    /// The test suite's gates are fixed public names under `LOKY_RUN_SLURM_`, where `[slurm]`
    /// keys would be if it had an environment layer (`nodes` is one): never configuration,
    /// never a misspelled section.
    #[test]
    fn slurm_gate_variables_are_ignored() {
        for var in [
            "LOKY_RUN_SLURM_TESTS",
            "LOKY_RUN_SLURM_NODES",
            "LOKY_RUN_SLURM_PARTITION",
        ] {
            assert!(
                misspelled_section(var, &var[PREFIX.len()..]).is_none(),
                "{var}"
            );
            let mut diags = vec![];
            let got = from_env(&env(&[(var, "1")]), &names(&["squares"]), &mut diags);
            assert!(
                got.is_empty() && diags.is_empty(),
                "{var}: {got:?} {diags:?}"
            );
        }
        // Misspelled sections are still caught next to them.
        assert!(misspelled_section("LOKY_RUN_POL_RETRIES", "POL_RETRIES").is_some());
    }

    #[test]
    fn set_mapping() {
        let stages = names(&["squares", "a", "a.b"]);
        let mut diags = vec![];
        let sets: Vec<String> = [
            "pool.max_workers=4",
            "pool.reuse=never",
            "pool.env.GREETING=1.0",
            "pool.env={ A = \"x\" }",
            "pool.initializer.args.level=\"debug\"",
            "stage.squares.input.range=[0, 5]",
            "stage.a.b.retries=2",
            "stage.a.retries=1",
            "pipeline.name=\"my pipe\"",
            "pipeline.plugins=[\"demo\"]",
            "pool.chunksize=auto",
            "slurm.partition=2024",
            "slurm.sbatch_args=[\"--mem=1G\"]",
        ]
        .map(String::from)
        .to_vec();
        let got = from_sets(&sets, &stages, &mut diags);
        assert!(diags.is_empty(), "{diags:#?}");
        assert_eq!(got.len(), sets.len());
        assert_eq!(got[0].value.to_i128(), Some(4));
        assert_eq!(got[1].value.as_str(), Some("never"));
        assert_eq!(got[2].path, vec!["env", "GREETING"]);
        assert_eq!(got[2].value.as_str(), Some("1.0"));
        assert!(got[3].value.as_dict().is_some());
        assert_eq!(got[4].path, vec!["initializer", "args", "level"]);
        assert_eq!(got[5].target, Target::Stage(vec![0]));
        assert_eq!(
            got[5].value.as_array().map(<[figment::value::Value]>::len),
            Some(2)
        );
        assert_eq!(
            (got[6].target.clone(), got[6].path.clone()),
            (Target::Stage(vec![2]), vec!["retries".into()])
        );
        assert_eq!(got[7].target, Target::Stage(vec![1]));
        assert_eq!(got[8].value.as_str(), Some("my pipe"));
        assert_eq!(got[10].value.as_str(), Some("auto"));
        assert_eq!(
            (got[11].target.clone(), got[11].path.clone()),
            (Target::Slurm, vec!["partition".into()])
        );
        assert_eq!(
            got[11].value.as_str(),
            Some("2024"),
            "a textual key keeps the text"
        );
        assert!(got[12].value.as_array().is_some());
    }

    #[test]
    fn set_problems() {
        let stages = names(&["squares"]);
        let mut diags = vec![];
        let sets: Vec<String> = [
            "pool.max_workers",
            "pool.max_worker=4",
            "pol.max_workers=4",
            "stage.square.retries=1",
            "stage.squares.retrys=1",
            "pool.retries.x=1",
            "pool.initializer.tsak=x",
            "pipeline.max_workers=2",
        ]
        .map(String::from)
        .to_vec();
        from_sets(&sets, &stages, &mut diags);
        assert_eq!(diags.len(), sets.len(), "{diags:#?}");
        let help = |i: usize| diags[i].help.clone().unwrap_or_default();
        assert!(diags[0].message.contains("expected KEY=VALUE"));
        assert_eq!(help(1), "did you mean `pool.max_workers`?");
        assert_eq!(help(2), "did you mean `pool.max_workers`?");
        assert_eq!(help(3), "did you mean `stage.squares.retries`?");
        assert_eq!(help(4), "did you mean `stage.squares.retries`?");
        assert!(diags[5].message.contains("no sub-keys"));
        assert_eq!(help(6), "did you mean `pool.initializer.task`?");
        assert!(help(7).contains("[pool]"), "{}", help(7));
        for (d, arg) in diags.iter().zip(&sets) {
            assert_eq!(d.layer, Layer::Set(arg.clone()));
            assert!(d.message.contains(&format!("--set {arg}")), "{d}");
        }
    }
}

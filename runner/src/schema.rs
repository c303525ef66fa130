//! Documents generated from the configuration key tables (`config::keys`, the one list of every
//! key with its kind): the JSON schema of a pipeline file (`loky-run schema`, committed as
//! `schema/pipeline.schema.json`) and the pipeline reference (`loky-run reference`, committed as
//! `docs/pipeline-reference.md`).
//!
//! Both are derived here and nowhere else: a key added to the tables appears in both, and a new
//! [`Kind`] does not compile until [`kind_schema`] and [`kind_name`] say what it looks like.
//! Tests check that the committed files equal what this module generates, and that the schema
//! accepts and refuses the same values as the loader (see the tests at the bottom).
//!
//! The schema sticks to JSON Schema draft 4 keywords, the level Taplo (and so Even Better TOML)
//! supports. What it cannot express is left to the loader: a range's start not after its end,
//! unique stage names, `from` naming an earlier stage, input files that exist, numbers too large
//! for their field, `[slurm]`'s `tasks` not below `nodes` and `renew_before` below `time_limit`.

use serde_json::{Map, Value, json};

use crate::config::{
    INITIALIZER_KEYS, INPUT_KEYS, KeySpec, Kind, PIPELINE_KEYS, POOL_KEYS, SLURM_DOC, SLURM_KEYS,
    STAGE_KEYS,
};

/// Where the schema is committed, relative to the repository root.
pub const SCHEMA_PATH: &str = "schema/pipeline.schema.json";
/// Where the reference is committed, relative to the repository root.
pub const REFERENCE_PATH: &str = "docs/pipeline-reference.md";

/// The units `humantime` accepts (what [`crate::config::units::parse_duration`] uses), longest
/// first within each family.
const DURATION_UNITS: &[&str] = &[
    "nanos", "nsec", "ns", "usec", "us", "µs", "millis", "msec", "ms", "seconds", "second", "secs",
    "sec", "s", "minutes", "minute", "mins", "min", "m", "hours", "hour", "hrs", "hr", "h", "days",
    "day", "d", "weeks", "week", "wks", "wk", "w", "months", "month", "M", "years", "year", "yrs",
    "yr", "y",
];

/// The size units of [`crate::config::units::parse_size`] other than `B`.
const SIZE_UNITS: &[&str] = &["kB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"];

fn duration_pattern() -> String {
    format!(
        r"^\s*(0|([0-9]+(\.[0-9]+)?\s*({})\s*)+)\s*$",
        DURATION_UNITS.join("|")
    )
}

fn size_pattern() -> String {
    format!(
        r"^\s*([0-9]+ ?B?|[0-9]+(\.[0-9]+)? ?({}))\s*$",
        SIZE_UNITS.join("|")
    )
}

/// `plugin::task` or `task`: letters, digits, `_` and `-` on each side.
const TASK_PATTERN: &str = r"^[\p{L}\p{N}_-]+(::[\p{L}\p{N}_-]+)?$";
/// Letters, digits, `_`, `-`, `.` (and not only dots, see [`kind_schema`]).
const STAGE_NAME_PATTERN: &str = r"^[A-Za-z0-9_.-]+$";

/// What a value of `kind` looks like, as a JSON schema.
pub fn kind_schema(kind: Kind) -> Value {
    match kind {
        Kind::Text | Kind::Path => json!({ "type": "string", "minLength": 1 }),
        Kind::StageName => json!({
            "type": "string",
            "pattern": STAGE_NAME_PATTERN,
            "not": { "pattern": r"^\.+$" },
        }),
        Kind::Task => json!({ "type": "string", "pattern": TASK_PATTERN }),
        Kind::Choice(options) => json!({ "type": "string", "enum": options }),
        Kind::Duration => json!({ "type": "string", "pattern": duration_pattern() }),
        Kind::Size => json!({
            "type": ["string", "integer"],
            "pattern": size_pattern(),
            "minimum": 0,
        }),
        Kind::Positive => json!({ "type": "integer", "minimum": 1 }),
        Kind::Count => json!({ "type": "integer", "minimum": 0 }),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::TextList => json!({ "type": "array", "items": { "type": "string" } }),
        Kind::TextMap => json!({
            "type": "object",
            "additionalProperties": { "type": ["string", "number", "boolean"] },
        }),
        Kind::Initializer => table(INITIALIZER_KEYS, "initializer"),
        Kind::Input => {
            let mut t = table(INPUT_KEYS, "input");
            // Exactly one kind of input: none of them is required on its own.
            if let Some(map) = t.as_object_mut() {
                map.remove("required");
                map.remove("x-taplo");
            }
            t["minProperties"] = json!(1);
            t["maxProperties"] = json!(1);
            t
        }
        Kind::ChunkSize => json!({
            "anyOf": [
                { "type": "string", "enum": ["auto"] },
                { "type": "integer", "minimum": 1 },
            ],
        }),
        Kind::Range => json!({
            "type": "array",
            "items": { "type": "integer" },
            "minItems": 2,
            "maxItems": 2,
        }),
        Kind::Any => json!({}),
        Kind::AnyList => json!({ "type": "array" }),
    }
}

/// Rules of single keys that go beyond their kind (the loader checks them in `extract`).
fn refine(section: &str, spec: &KeySpec, mut schema: Value) -> Value {
    match (section, spec.name) {
        // Used as a directory name (`out/<name>`).
        ("pipeline", "name") => {
            schema["pattern"] = json!(r"^[^/\\\u0000]+$");
            schema["not"] = json!({ "enum": [".", ".."] });
        }
        // At least one plugin, none of them an empty string.
        ("pipeline", "plugins") => {
            schema["minItems"] = json!(1);
            schema["items"] = json!({ "type": "string", "minLength": 1 });
        }
        // Not empty, and not the options loky-run's own sbatch command depends on.
        ("slurm", "sbatch_args") => {
            schema["items"] = json!({
                "type": "string",
                "minLength": 1,
                "not": { "pattern": "^--(wrap|parsable)(=.*)?$" },
            });
        }
        _ => {}
    }
    schema
}

/// The default as a JSON value, when it is a literal (not "the usable CPU count", "none" or a
/// placeholder such as `"out/<name>"`).
fn default_value(spec: &KeySpec) -> Option<Value> {
    let written = spec.default?;
    if written.contains('<') {
        return None;
    }
    let parsed: toml::Table = toml::from_str(&format!("v = {written}")).ok()?;
    serde_json::to_value(parsed.get("v")?).ok()
}

/// One key: its kind's schema, refined, with its description and default.
fn key_schema(section: &str, spec: &KeySpec) -> Value {
    let mut schema = refine(section, spec, kind_schema(spec.kind));
    let mut description = spec.doc.to_string();
    match spec.default {
        Some(d) => description.push_str(&format!(" Default: {d}.")),
        None if section != "input" && !spec.doc.contains("required") => {
            description.push_str(" Required.");
        }
        None => {}
    }
    schema["description"] = json!(description);
    if let Some(d) = default_value(spec) {
        schema["default"] = d;
    }
    schema
}

/// A table of keys (`[pipeline]`, an initializer, ...): every key known, the others refused;
/// keys without a default are required.
fn table(keys: &[KeySpec], section: &str) -> Value {
    table_of(keys.iter(), section)
}

fn table_of<'a>(keys: impl Iterator<Item = &'a KeySpec>, section: &str) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for spec in keys {
        properties.insert(spec.name.to_string(), key_schema(section, spec));
        if spec.default.is_none() {
            required.push(spec.name);
        }
    }
    let mut t = json!({
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    });
    // Draft 4 wants `required` non-empty when present.
    if !required.is_empty() {
        t["required"] = json!(required);
        t["x-taplo"] = json!({ "initKeys": required });
    }
    t
}

/// The JSON schema of a pipeline file.
pub fn json_schema() -> Value {
    let pipeline = {
        let mut t = table(PIPELINE_KEYS, "pipeline");
        t["description"] = json!("The pipeline: its name, plugins and output directory.");
        t
    };
    let pool = {
        let mut t = table(POOL_KEYS, "pool");
        t["description"] = json!(
            "Pool settings, the defaults of every stage (the arguments of loky's get_reusable_executor)."
        );
        t
    };
    let slurm = {
        let mut t = table(SLURM_KEYS, "slurm");
        t["description"] = json!(SLURM_DOC);
        t
    };
    let stage = {
        let mut t = table_of(STAGE_KEYS.iter().chain(POOL_KEYS), "stage");
        t["description"] = json!(
            "One stage: a task mapped over inputs. Any [pool] key may be set here and overrides [pool] for this stage."
        );
        t
    };
    let schema = json!({
        "$schema": "http://json-schema.org/draft-04/schema#",
        "title": "loky-run pipeline",
        "description": "A loky-run pipeline file. Generated by `loky-run schema` from the key tables of the runner (runner/src/config/keys.rs); do not edit by hand.",
        "type": "object",
        "properties": {
            "pipeline": pipeline,
            "pool": pool,
            "slurm": slurm,
            "stage": {
                "description": "The stages, run in file order: [[stage]] sections.",
                "type": "array",
                "minItems": 1,
                "items": stage,
            },
        },
        "required": ["pipeline", "stage"],
        "additionalProperties": false,
        "x-taplo": { "initKeys": ["pipeline", "stage"] },
    });
    sorted(schema)
}

/// The schema as committed: pretty JSON, keys sorted, ending with a newline.
pub fn json_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&json_schema()).expect("a JSON value serializes");
    text.push('\n');
    text
}

/// Objects with their keys in order, whatever serde_json's map keeps.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

// ---- the reference -------------------------------------------------------------------------

/// A kind in a few words, for the reference's "type" column.
pub fn kind_name(kind: Kind) -> String {
    match kind {
        Kind::Text => "string".into(),
        Kind::Path => "path".into(),
        Kind::StageName => "stage name".into(),
        Kind::Task => "task (`\"plugin::task\"`)".into(),
        Kind::Choice(options) => {
            let quoted: Vec<String> = options.iter().map(|o| format!("`\"{o}\"`")).collect();
            quoted.join(" \\| ")
        }
        Kind::Duration => "duration".into(),
        Kind::Size => "size".into(),
        Kind::Positive => "integer ≥ 1".into(),
        Kind::Count => "integer ≥ 0".into(),
        Kind::Bool => "boolean".into(),
        Kind::TextList => "array of strings".into(),
        Kind::TextMap => "table of strings".into(),
        Kind::Initializer => "table: `task`, `args`".into(),
        Kind::Input => "table: one of `range`, `items`, `file`, `from`".into(),
        Kind::ChunkSize => "`\"auto\"` \\| integer ≥ 1".into(),
        Kind::Range => "`[start, end]`, integers".into(),
        Kind::Any => "any value".into(),
        Kind::AnyList => "array".into(),
    }
}

/// `exclusive`: the keys are alternatives (an input's kinds), none of them required as such.
fn reference_table(out: &mut String, keys: &[&KeySpec], exclusive: bool) {
    out.push_str("| key | type | default | meaning |\n| --- | --- | --- | --- |\n");
    for k in keys {
        let default = match k.default {
            Some(d) if d.starts_with(['"', '{', '[']) || d.parse::<f64>().is_ok() => {
                format!("`{d}`")
            }
            Some("true" | "false" | "null") => format!("`{}`", k.default.unwrap_or_default()),
            Some(d) => d.to_string(),
            None if exclusive => "–".into(),
            None => "required".into(),
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            k.name,
            kind_name(k.kind),
            default,
            k.doc.replace('|', "\\|")
        ));
    }
}

/// The pipeline reference (Markdown): every key, its type, default and meaning.
pub fn reference_markdown() -> String {
    let all = |keys: &'static [KeySpec]| keys.iter().collect::<Vec<_>>();
    let mut out = String::new();
    out.push_str(
        "<!-- Generated by `loky-run reference` from runner/src/config/keys.rs; do not edit by hand.\n     \
         Regenerate: cargo run -q -p loky-run -- reference > docs/pipeline-reference.md -->\n\n",
    );
    out.push_str("# Pipeline reference\n\n");
    out.push_str(
        "A pipeline file has these sections: `[pipeline]`, `[pool]` (optional), one or more \
         `[[stage]]`, and `[slurm]` (optional). Unknown keys are errors (with the closest valid key). Paths are relative to \
         the pipeline file. Durations are strings such as `\"250ms\"`, `\"10s\"`, `\"2m\"`, \
         `\"1h\"`, `\"1m30s\"` (`\"0s\"` where it means \"none\"); sizes are `\"300MB\"`, \
         `\"1GiB\"`, `\"512 KiB\"` (kB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB powers \
         of 1024) or an integer number of bytes.\n\n",
    );
    out.push_str(
        "Every key can also be set from the environment (`LOKY_RUN_PIPELINE_<KEY>`, \
         `LOKY_RUN_POOL_<KEY>`, `LOKY_RUN_STAGE_<STAGE>_<KEY>`; not `[slurm]`'s) or the command \
         line (`--set pipeline.<key>=...`, `--set pool.<key>=...`, `--set slurm.<key>=...`, \
         `--set stage.<name>.<key>=...`); later layers win: file, then environment, then `--set`. `loky-run show-config \
         PIPELINE` prints the resolved values and where each came from. The JSON schema \
         [`schema/pipeline.schema.json`](../schema/pipeline.schema.json) holds the same \
         information for editors.\n\n",
    );
    out.push_str("## `[pipeline]`\n\n");
    reference_table(&mut out, &all(PIPELINE_KEYS), false);
    out.push_str(
        "\n## `[pool]`\n\nThe pool settings of every stage; each one may be overridden in a \
         `[[stage]]`.\n\n",
    );
    reference_table(&mut out, &all(POOL_KEYS), false);
    out.push_str(
        "\n## `[[stage]]`\n\nOne section per stage, run in file order. Besides these keys, a \
         stage may set any `[pool]` key for itself.\n\n",
    );
    reference_table(&mut out, &all(STAGE_KEYS), false);
    out.push_str("\n### `input = { ... }`\n\nExactly one of:\n\n");
    reference_table(&mut out, &all(INPUT_KEYS), true);
    out.push_str("\n### `initializer = { ... }`\n\n");
    reference_table(&mut out, &all(INITIALIZER_KEYS), false);
    let about = SLURM_DOC.strip_prefix("[slurm]: ").unwrap_or(SLURM_DOC);
    let mut about_chars = about.chars();
    let about: String = about_chars
        .next()
        .map(|c| c.to_uppercase().chain(about_chars).collect())
        .unwrap_or_default();
    out.push_str(&format!("\n## `[slurm]`\n\n{about}\n\n"));
    reference_table(&mut out, &all(SLURM_KEYS), false);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, LoadOptions};

    fn validator() -> jsonschema::Validator {
        jsonschema::draft4::new(&json_schema()).expect("the schema is a valid draft 4 schema")
    }

    fn schema_accepts(v: &jsonschema::Validator, toml_text: &str) -> bool {
        let table: toml::Table = toml::from_str(toml_text).expect("valid TOML");
        v.is_valid(&serde_json::to_value(table).expect("TOML converts to JSON"))
    }

    /// Values of each kind, good and bad, as TOML literals.
    fn samples(kind: Kind) -> Vec<String> {
        let v: &[&str] = match kind {
            Kind::Text => &["\"a\"", "\"\"", "1", "true", "\"x y\""],
            Kind::Path => &["\"a/b\"", "\"\"", "1"],
            Kind::StageName => &[
                "\"a\"", "\"v1.2\"", "\"a b\"", "\"..\"", "\"\"", "1", "\"é\"",
            ],
            Kind::Task => &[
                "\"demo::square\"",
                "\"square\"",
                "\"a::b::c\"",
                "\"::x\"",
                "\"x::\"",
                "\"a b\"",
                "\"a:b\"",
                "1",
            ],
            Kind::Choice(_) => &["\"bogus\"", "1", "\"\""],
            Kind::Duration => &[
                "\"10s\"",
                "\"250ms\"",
                "\"1m30s\"",
                "\"0\"",
                "\"0s\"",
                "\"1.5h\"",
                "\"2 hours\"",
                "\"1s 500ms\"",
                "\"1 min\"",
                "\"10S\"",
                "\"10\"",
                "\"10 parsecs\"",
                "\"-1s\"",
                "\"\"",
                "10",
                "true",
            ],
            Kind::Size => &[
                "\"300MB\"",
                "\"1GiB\"",
                "\"1.5GiB\"",
                "\"512 KiB\"",
                "\"7B\"",
                "\"1048576\"",
                "0",
                "1048576",
                "-1",
                "\"1G\"",
                "\"1.5\"",
                "\"1.5B\"",
                "\"x\"",
                "1.5",
                "\"-1MB\"",
            ],
            Kind::Positive => &["1", "7", "0", "-1", "\"2\"", "1.5"],
            Kind::Count => &["0", "3", "-1", "\"1\"", "true"],
            Kind::Bool => &["true", "false", "\"true\"", "1"],
            Kind::TextList => &["[\"a\"]", "[\"a\", \"b\"]", "[1]", "\"a\""],
            Kind::TextMap => &[
                "{}",
                "{ A = \"x\", N = 1, B = true, F = 1.5 }",
                "{ A = [1] }",
                "{ A = { B = \"c\" } }",
                "\"x\"",
            ],
            Kind::Initializer => &[
                "{ task = \"demo::setup\" }",
                "{ task = \"setup\", args = { a = [1, \"b\"] } }",
                "{ args = 1 }",
                "{ task = \"demo::setup\", bogus = 1 }",
                "{ task = \"a::b::c\" }",
                "\"demo::setup\"",
            ],
            Kind::Input => &[
                "{ range = [0, 3] }",
                "{ items = [1, \"a\", { b = 2 }] }",
                "{ file = \"data.jsonl\" }",
                "{ range = [0, 3], items = [1] }",
                "{}",
                "{ rnge = [0, 1] }",
                "{ range = [0] }",
                "{ range = [0, \"a\"] }",
                "{ items = 1 }",
                "[0, 3]",
            ],
            Kind::ChunkSize => &["\"auto\"", "4", "0", "\"4\"", "\"big\"", "-1"],
            Kind::Range | Kind::Any | Kind::AnyList => &[],
        };
        let mut out: Vec<String> = v.iter().map(std::string::ToString::to_string).collect();
        if let Kind::Choice(options) = kind {
            out.extend(options.iter().map(|o| format!("\"{o}\"")));
        }
        out
    }

    const HEAD: &str = "[pipeline]\nname = \"p\"\nplugins = [\"demo\"]\n";
    const STAGE: &str =
        "\n[[stage]]\nname = \"s\"\ntask = \"demo::square\"\ninput = { range = [0, 3] }\n";

    /// The loader and the schema agree on every sample value of every key of the tables, in
    /// every place the key may stand: the schema cannot drift from what the loader accepts.
    #[test]
    fn the_schema_accepts_what_the_loader_accepts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.jsonl"), "1\n").unwrap();
        let file = dir.path().join("pipeline.toml");
        let v = validator();
        let mut checked = 0;
        let mut disagreements = Vec::new();
        let mut check = |text: String, what: &str| {
            std::fs::write(&file, &text).unwrap();
            let loader = config::load(&LoadOptions {
                file: file.clone(),
                ..Default::default()
            });
            let schema = schema_accepts(&v, &text);
            if loader.is_ok() != schema {
                disagreements.push(format!(
                    "{what}: the loader says {}, the schema {}:\n{text}",
                    match &loader {
                        Ok(_) => "ok".to_string(),
                        Err(e) => e.to_string(),
                    },
                    if schema { "ok" } else { "invalid" }
                ));
            }
            checked += 1;
        };
        check(format!("{HEAD}{STAGE}"), "the minimal pipeline");
        for spec in PIPELINE_KEYS {
            for s in samples(spec.kind) {
                let head: String = HEAD
                    .lines()
                    .filter(|l| !l.starts_with(&format!("{} ", spec.name)))
                    .map(|l| format!("{l}\n"))
                    .collect();
                check(
                    format!("{head}{} = {s}\n{STAGE}", spec.name),
                    &format!("pipeline.{}", spec.name),
                );
            }
        }
        for spec in POOL_KEYS {
            for s in samples(spec.kind) {
                check(
                    format!("{HEAD}\n[pool]\n{} = {s}\n{STAGE}", spec.name),
                    &format!("pool.{}", spec.name),
                );
                check(
                    format!("{HEAD}{STAGE}{} = {s}\n", spec.name),
                    &format!("stage.s.{}", spec.name),
                );
            }
        }
        for spec in SLURM_KEYS {
            // The loader's check across keys (renew_before, "2m" by default, below
            // time_limit) is out of the schema's reach: keep it out of the way.
            let context = match spec.name {
                "time_limit" => "renew_before = \"0s\"\n",
                _ => "",
            };
            for s in samples(spec.kind) {
                check(
                    format!("{HEAD}{STAGE}\n[slurm]\n{context}{} = {s}\n", spec.name),
                    &format!("slurm.{}", spec.name),
                );
            }
        }
        for args in [
            "[\"--wrap\"]",
            "[\"--wrap=hostname\"]",
            "[\"--exclusive\", \"--parsable\"]",
            "[\"--wrapper\", \"--parsable2\"]",
            "[\"\"]",
            "[\"-J\", \"mine\", \"--output=x.log\"]",
        ] {
            check(
                format!("{HEAD}{STAGE}\n[slurm]\nsbatch_args = {args}\n"),
                "slurm.sbatch_args",
            );
        }
        for spec in STAGE_KEYS {
            for s in samples(spec.kind) {
                let stage: String = STAGE
                    .lines()
                    .filter(|l| !l.starts_with(&format!("{} ", spec.name)))
                    .map(|l| format!("{l}\n"))
                    .collect();
                check(
                    format!("{HEAD}{stage}{} = {s}\n", spec.name),
                    &format!("stage.s.{}", spec.name),
                );
            }
        }
        // Sections and their shapes.
        for text in [
            HEAD.to_string(),
            format!("{HEAD}stage = []\n"),
            format!("{HEAD}{STAGE}\n[bogus]\na = 1\n"),
            format!("{HEAD}{STAGE}\n[pool]\nbogus = 1\n"),
            format!("{HEAD}bogus = 1\n{STAGE}"),
            format!("{HEAD}{STAGE}bogus = 1\n"),
            STAGE.to_string(),
            format!("[pipeline]\nname = \"p\"\n{STAGE}"),
            format!("[pipeline]\nplugins = [\"demo\"]\n{STAGE}"),
            format!("{HEAD}\n[[stage]]\ntask = \"demo::square\"\ninput = {{ range = [0, 3] }}\n"),
            format!("{HEAD}\n[[stage]]\nname = \"s\"\ninput = {{ range = [0, 3] }}\n"),
            format!("{HEAD}\n[[stage]]\nname = \"s\"\ntask = \"demo::square\"\n"),
            format!("{HEAD}pool = 1\n{STAGE}"),
            format!("{HEAD}{STAGE}\n[slurm]\n"),
            format!("{HEAD}slurm = 1\n{STAGE}"),
            format!("{HEAD}{STAGE}\n[slurm]\nbogus = 1\n"),
        ] {
            check(text, "sections");
        }
        assert!(
            disagreements.is_empty(),
            "{} of {checked} cases disagree:\n\n{}",
            disagreements.len(),
            disagreements.join("\n\n")
        );
        assert!(checked > 200, "only {checked} cases");
    }

    #[test]
    fn every_key_is_in_the_schema_and_the_reference() {
        let schema = json_schema();
        let reference = reference_markdown();
        for (path, keys) in [
            ("/properties/pipeline/properties", PIPELINE_KEYS),
            ("/properties/pool/properties", POOL_KEYS),
            ("/properties/slurm/properties", SLURM_KEYS),
            ("/properties/stage/items/properties", STAGE_KEYS),
            ("/properties/stage/items/properties", POOL_KEYS),
        ] {
            let props = schema.pointer(path).and_then(Value::as_object).unwrap();
            for k in keys {
                assert!(props.contains_key(k.name), "{path}: {}", k.name);
                assert!(
                    reference.contains(&format!("| `{}` |", k.name)),
                    "{}",
                    k.name
                );
            }
        }
    }

    #[test]
    fn defaults_are_literal_values_or_left_out() {
        let pool = |name: &str| POOL_KEYS.iter().find(|k| k.name == name).unwrap();
        assert_eq!(default_value(pool("idle_timeout")), Some(json!("10s")));
        assert_eq!(default_value(pool("retries")), Some(json!(0)));
        assert_eq!(default_value(pool("env")), Some(json!({})));
        assert_eq!(default_value(pool("max_workers")), None);
        assert_eq!(default_value(pool("initializer")), None);
        assert_eq!(default_value(&PIPELINE_KEYS[2]), None, "out/<name>");
        let slurm = |name: &str| SLURM_KEYS.iter().find(|k| k.name == name).unwrap();
        assert_eq!(default_value(slurm("nodes")), Some(json!(1)));
        assert_eq!(default_value(slurm("tasks")), None, "the value of `nodes`");
        assert_eq!(default_value(slurm("cpus_per_task")), None);
        assert_eq!(default_value(slurm("partition")), None);
        assert_eq!(default_value(slurm("time_limit")), Some(json!("0s")));
        assert_eq!(default_value(slurm("renew_before")), Some(json!("2m")));
        assert_eq!(default_value(slurm("sbatch_args")), Some(json!([])));
    }

    #[test]
    fn slurm_is_an_optional_section_of_both_documents() {
        let schema = json_schema();
        let slurm = schema.pointer("/properties/slurm").unwrap();
        assert_eq!(slurm["description"], json!(SLURM_DOC));
        assert!(
            slurm.get("required").is_none(),
            "every [slurm] key has a default"
        );
        assert!(
            !schema["required"]
                .as_array()
                .unwrap()
                .contains(&json!("slurm"))
        );
        let reference = reference_markdown();
        let at = reference.find("## `[slurm]`").expect("a [slurm] section");
        assert!(
            reference[at..].contains("SBATCH_PARTITION"),
            "the section says sbatch's variables apply"
        );
        assert!(reference[at..].contains("--set slurm.KEY=VALUE"));
    }
}

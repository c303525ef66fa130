//! The one list of every key a pipeline file may hold, with what kind of value each expects.
//!
//! The unknown-key check, the `LOKY_RUN_*` / `--set` parsers, the suggestions ("did you mean")
//! and the extraction of typed values all read these tables; a unit test loads a file that sets
//! every key listed here and checks each one reached the resolved pipeline, so the tables and
//! the code that consumes them cannot drift apart.

/// What a key's value must look like. Drives messages ("expected ..."), how a `--set` or
/// environment value is read (see [`Kind::is_textual`]) and the sample values of the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A non-empty string.
    Text,
    /// A path, relative to the pipeline file (or, from the environment or `--set`, to the
    /// current directory).
    Path,
    /// A stage name: letters, digits, `_`, `-`, `.`.
    StageName,
    /// `"plugin::task"` or `"task"`.
    Task,
    /// One of a fixed set of strings.
    Choice(&'static [&'static str]),
    /// A duration string: `"250ms"`, `"10s"`, `"2m"`, `"1h"`, `"1m30s"`.
    Duration,
    /// A size: `"300MB"`, `"1GiB"`, or an integer number of bytes.
    Size,
    /// An integer ≥ 1.
    Positive,
    /// An integer ≥ 0.
    Count,
    Bool,
    /// An array of strings.
    TextList,
    /// A table of string (or number/boolean) values: `env`.
    TextMap,
    /// `{ task = "plugin::name", args = ... }`.
    Initializer,
    /// `{ range = [a, b] }`, `{ items = [...] }`, `{ file = "..." }` or `{ from = "stage" }`.
    Input,
    /// `"auto"` or an integer ≥ 1.
    ChunkSize,
    /// `[a, b]`, two integers.
    Range,
    /// Any TOML value (converted to JSON).
    Any,
    /// An array of any TOML values (converted to JSON).
    AnyList,
}

impl Kind {
    /// What the value should be, for messages: "expected {}".
    pub fn expected(self) -> String {
        match self {
            Kind::Text => "a string".into(),
            Kind::Path => "a path (a string)".into(),
            Kind::StageName => "a stage name (a string)".into(),
            Kind::Task => "a task (a string such as \"plugin::task\" or \"task\")".into(),
            Kind::Choice(options) => format!("one of {}", quoted_list(options, "or")),
            Kind::Duration => {
                "a duration string such as \"250ms\", \"10s\", \"2m\" or \"1h\"".into()
            }
            Kind::Size => {
                "a size such as \"300MB\" or \"1GiB\", or an integer number of bytes".into()
            }
            Kind::Positive => "an integer ≥ 1".into(),
            Kind::Count => "an integer ≥ 0".into(),
            Kind::Bool => "a boolean (true or false)".into(),
            Kind::TextList => "an array of strings".into(),
            Kind::TextMap => "a table of strings, such as { NAME = \"value\" }".into(),
            Kind::Initializer => {
                "a table such as { task = \"plugin::name\", args = { ... } }".into()
            }
            Kind::Input => "a table with one of `range`, `items`, `file` or `from`".into(),
            Kind::ChunkSize => "\"auto\" or an integer ≥ 1".into(),
            Kind::Range => "an array of two integers [start, end]".into(),
            Kind::Any => "any value".into(),
            Kind::AnyList => "an array".into(),
        }
    }

    /// Values of these kinds are strings: from the environment or `--set` the text is taken
    /// as it is (`--set pipeline.name=2024` names the pipeline "2024"), unless it is a quoted
    /// TOML string, which is unquoted. Every other kind parses the text as a TOML value first
    /// (`4` an integer, `[1, 2]` an array, `{ A = "x" }` a table) and falls back to a string.
    pub fn is_textual(self) -> bool {
        matches!(
            self,
            Kind::Text
                | Kind::Path
                | Kind::StageName
                | Kind::Task
                | Kind::Choice(_)
                | Kind::Duration
        )
    }
}

/// One key of a section.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    pub name: &'static str,
    pub kind: Kind,
    /// The default as it would be written in the file; `None` for required keys.
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

const fn key(
    name: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    doc: &'static str,
) -> KeySpec {
    KeySpec {
        name,
        kind,
        default,
        doc,
    }
}

pub(super) const REUSE_CHOICES: &[&str] = &["auto", "never"];
pub(super) const ON_ERROR_CHOICES: &[&str] = &["fail", "continue"];
pub(super) const LAUNCHER_CHOICES: &[&str] = &["local", "slurm"];

/// `[pipeline]`.
pub const PIPELINE_KEYS: &[KeySpec] = &[
    key("name", Kind::Text, None, "The pipeline's name (required)."),
    key(
        "plugins",
        Kind::TextList,
        None,
        "Plugins to load (required, non-empty): a name, a path to a .so, or a path to a plugin crate.",
    ),
    key(
        "output_dir",
        Kind::Path,
        Some("\"out/<name>\""),
        "Where results go, relative to the pipeline file.",
    ),
    key(
        "grace_period",
        Kind::Duration,
        Some("\"5s\""),
        "After a first Ctrl-C, how long running tasks may finish before they are killed.",
    ),
    key(
        "joblog",
        Kind::Path,
        Some("none"),
        "A JSON-lines file with one line per task attempt (stage, index, worker, start, duration, outcome, RSS), relative to the pipeline file; `--joblog FILE` overrides it. Off by default. `loky-run report OUTPUT_DIR` draws it: a bar per attempt on a row per worker, throughput, durations, memory.",
    ),
    key(
        "progress_interval",
        Kind::Duration,
        Some("\"30s\""),
        "When stderr is not a terminal, how often a line tells how each running stage is doing (`--progress never` turns it off, `\"0s\"` too).",
    ),
];

/// `[pool]`; every one of them may also be set in a `[[stage]]`.
pub const POOL_KEYS: &[KeySpec] = &[
    key(
        "max_workers",
        Kind::Positive,
        Some(
            "the usable CPU count (launcher = \"slurm\": the allocation's task count, SLURM_NTASKS)",
        ),
        "Number of worker processes.",
    ),
    key(
        "idle_timeout",
        Kind::Duration,
        Some("\"10s\""),
        "A worker exits after this long without a task; \"0s\" = never.",
    ),
    key(
        "reuse",
        Kind::Choice(REUSE_CHOICES),
        Some("\"auto\""),
        "auto: keep the pool between stages when possible; never: always restart.",
    ),
    key(
        "env",
        Kind::TextMap,
        Some("{}"),
        "Environment variables set in every worker.",
    ),
    key(
        "initializer",
        Kind::Initializer,
        Some("none"),
        "Runs once in each new worker before its first task.",
    ),
    key(
        "max_tasks_per_worker",
        Kind::Count,
        Some("0"),
        "Recycle a worker after this many tasks; 0 = unlimited.",
    ),
    key(
        "max_memory_growth",
        Kind::Size,
        Some("\"300MB\""),
        "Recycle a worker whose RSS grew more than this since its first task (loky's leak limit); 0 = unlimited.",
    ),
    key(
        "task_timeout",
        Kind::Duration,
        Some("\"0s\""),
        "Kill a task running longer than this; \"0s\" = no timeout. `--retry-failed` may change it.",
    ),
    key(
        "retries",
        Kind::Count,
        Some("0"),
        "How often a failed or crashed task is retried. `--retry-failed` may change it.",
    ),
    key(
        "on_error",
        Kind::Choice(ON_ERROR_CHOICES),
        Some("\"fail\""),
        "fail: stop at the first failed task; continue: record it and go on. `--retry-failed` may change it.",
    ),
    key(
        "chunksize",
        Kind::ChunkSize,
        Some("\"auto\""),
        "Most tasks sent to a worker at once (chunks shrink near the end of a stage); `\"auto\"` aims at about 2 ms of work per chunk.",
    ),
    key(
        "launcher",
        Kind::Choice(LAUNCHER_CHOICES),
        Some("\"local\""),
        "local: child processes; slurm: Slurm job steps.",
    ),
    key(
        "srun_args",
        Kind::TextList,
        Some("[]"),
        "Extra arguments for srun when launcher = \"slurm\".",
    ),
];

/// The keys of a `[[stage]]` besides the [`POOL_KEYS`] it may override.
pub const STAGE_KEYS: &[KeySpec] = &[
    key(
        "name",
        Kind::StageName,
        None,
        "The stage's name (required, unique).",
    ),
    key(
        "task",
        Kind::Task,
        None,
        "The task run on every input: \"plugin::task\" or \"task\" (required).",
    ),
    key("input", Kind::Input, None, "The stage's inputs (required)."),
    key(
        "kill_workers",
        Kind::Bool,
        Some("false"),
        "true: this stage starts on fresh worker processes.",
    ),
];

/// `initializer = { ... }`.
pub const INITIALIZER_KEYS: &[KeySpec] = &[
    key(
        "task",
        Kind::Task,
        None,
        "The initializer: \"plugin::name\" or \"name\".",
    ),
    key(
        "args",
        Kind::Any,
        Some("null"),
        "The value passed to the initializer.",
    ),
];

/// `input = { ... }`: exactly one of these.
pub const INPUT_KEYS: &[KeySpec] = &[
    key(
        "range",
        Kind::Range,
        None,
        "[a, b]: the integers a <= i < b.",
    ),
    key("items", Kind::AnyList, None, "The inputs, one per element."),
    key(
        "file",
        Kind::Path,
        None,
        "A JSON-lines file, one input per line.",
    ),
    key(
        "from",
        Kind::StageName,
        None,
        "The outputs of an earlier stage, skipping its failed items.",
    ),
];

/// What `[slurm]` is for, in the JSON schema and the reference.
pub const SLURM_DOC: &str = "[slurm]: the allocations loky-run submits with sbatch when a stage has launcher = \"slurm\" and loky-run runs outside an allocation (inside one, workers are job steps of it and [slurm] is not used). sbatch's own input variables (SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT, ...) apply as usual; there are no LOKY_RUN_SLURM_* variables, and --set slurm.KEY=VALUE overrides a key.";

/// `[slurm]`: what each allocation loky-run submits with `sbatch` asks for.
pub const SLURM_KEYS: &[KeySpec] = &[
    key(
        "partition",
        Kind::Text,
        Some("the cluster's default"),
        "The partition of each allocation (sbatch --partition).",
    ),
    key(
        "account",
        Kind::Text,
        Some("the user's default"),
        "The account charged for each allocation (--account).",
    ),
    key(
        "qos",
        Kind::Text,
        Some("the default"),
        "The quality of service of each allocation (--qos).",
    ),
    key(
        "time_limit",
        Kind::Duration,
        Some("\"0s\""),
        "Each allocation's time limit (--time, rounded up to whole minutes); \"0s\" = the partition's default.",
    ),
    key(
        "nodes",
        Kind::Positive,
        Some("1"),
        "Nodes of each allocation (--nodes).",
    ),
    key(
        "tasks",
        Kind::Positive,
        Some("the value of `nodes`"),
        "Tasks of each allocation (--ntasks), one worker each; at least `nodes`.",
    ),
    key(
        "cpus_per_task",
        Kind::Positive,
        Some("none"),
        "CPUs of each task (--cpus-per-task); unset: Slurm's default.",
    ),
    key(
        "max_allocations",
        Kind::Positive,
        Some("1"),
        "Allocations queued or running at once; allocations being replaced near their time limit are not counted.",
    ),
    key(
        "sbatch_args",
        Kind::TextList,
        Some("[]"),
        "Extra arguments for sbatch, after loky-run's own (so they override them); not --wrap or --parsable.",
    ),
    key(
        "renew_before",
        Kind::Duration,
        Some("\"2m\""),
        "A worker stops taking tasks this long before its allocation's time limit and is replaced from a new allocation.",
    ),
];

/// The top-level sections.
pub(super) const SECTIONS: &[&str] = &["pipeline", "pool", "slurm", "stage"];

/// A place keys live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Pipeline,
    Pool,
    Slurm,
    Stage,
}

impl Section {
    pub(super) fn spec(self, name: &str) -> Option<&'static KeySpec> {
        self.keys().find(|k| k.name == name)
    }

    pub(super) fn keys(self) -> impl Iterator<Item = &'static KeySpec> {
        let (own, pool): (&[KeySpec], &[KeySpec]) = match self {
            Section::Pipeline => (PIPELINE_KEYS, &[]),
            Section::Pool => (POOL_KEYS, &[]),
            Section::Slurm => (SLURM_KEYS, &[]),
            Section::Stage => (STAGE_KEYS, POOL_KEYS),
        };
        own.iter().chain(pool)
    }

    pub(super) fn names(self) -> impl Iterator<Item = &'static str> {
        self.keys().map(|k| k.name)
    }

    /// Every section, in the order the documents list them.
    pub(super) const ALL: [Section; 4] = [
        Section::Pipeline,
        Section::Pool,
        Section::Slurm,
        Section::Stage,
    ];

    /// As written in a file header: `[pipeline]`, `[pool]`, `[slurm]`, `[[stage]]`.
    pub(super) fn header(self) -> &'static str {
        match self {
            Section::Pipeline => "[pipeline]",
            Section::Pool => "[pool]",
            Section::Slurm => "[slurm]",
            Section::Stage => "[[stage]]",
        }
    }

    /// The sections (other than `self`) where `name` is a valid key, for "belongs in" hints.
    pub(super) fn others_with(self, name: &str) -> Vec<Section> {
        Section::ALL
            .into_iter()
            .filter(|s| *s != self && s.spec(name).is_some())
            .collect()
    }
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
pub(super) fn quoted_list(items: &[&str], conj: &str) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    join_words(&quoted, conj)
}

/// `a`, `a or b`, `a, b or c`.
pub(super) fn join_words(items: &[String], conj: &str) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} {conj} {last}", init.join(", ")),
    }
}

/// The closest candidate to `word`, if it is close enough to be a plausible typo.
pub fn closest<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (c, strsim::jaro_winkler(&word, &c.to_lowercase())))
        .filter(|(_, score)| *score >= 0.8)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn key_tables_are_consistent() {
        for table in [
            PIPELINE_KEYS,
            POOL_KEYS,
            SLURM_KEYS,
            STAGE_KEYS,
            INITIALIZER_KEYS,
            INPUT_KEYS,
        ] {
            let mut seen = HashSet::new();
            for k in table {
                assert!(seen.insert(k.name), "duplicate key {}", k.name);
                assert!(!k.doc.is_empty());
            }
        }
        // A stage's own keys must not shadow pool keys.
        for k in STAGE_KEYS {
            assert!(Section::Pool.spec(k.name).is_none(), "{}", k.name);
        }
        assert_eq!(
            Section::Stage.names().count(),
            STAGE_KEYS.len() + POOL_KEYS.len()
        );
        // A `[slurm]` key is nobody else's, so "is a key of [slurm]" hints name one place.
        for k in SLURM_KEYS {
            assert_eq!(
                Section::Slurm.others_with(k.name),
                Vec::<Section>::new(),
                "{}",
                k.name
            );
            assert!(
                !k.doc.contains('|'),
                "{}: breaks the reference's table",
                k.name
            );
        }
        // Every section's name is in SECTIONS, and every header names its section.
        assert_eq!(SECTIONS.len(), Section::ALL.len());
        for s in Section::ALL {
            let name = s.header().trim_matches(['[', ']']);
            assert!(SECTIONS.contains(&name), "{name}");
        }
    }

    #[test]
    fn suggestions() {
        let pool = || Section::Pool.names();
        assert_eq!(closest("max_worker", pool()), Some("max_workers"));
        assert_eq!(closest("retrys", pool()), Some("retries"));
        assert_eq!(closest("MAX_WORKERS", pool()), Some("max_workers"));
        assert_eq!(closest("idle", pool()), Some("idle_timeout"));
        assert_eq!(closest("zzz", pool()), None);
        assert_eq!(closest("pools", SECTIONS.iter().copied()), Some("pool"));
        assert_eq!(closest("slrum", SECTIONS.iter().copied()), Some("slurm"));
        let slurm = || Section::Slurm.names();
        assert_eq!(closest("node", slurm()), Some("nodes"));
        assert_eq!(closest("timelimit", slurm()), Some("time_limit"));
    }

    #[test]
    fn word_lists() {
        assert_eq!(quoted_list(&["a"], "or"), "\"a\"");
        assert_eq!(quoted_list(&["a", "b", "c"], "or"), "\"a\", \"b\" or \"c\"");
    }
}

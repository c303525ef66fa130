//! The pipeline loader (`config::load_with_origins`, what `run`, `validate` and `show-config`
//! call) on mutated pipeline files, `--set` arguments and `LOKY_RUN_*` variables: it never
//! panics, an error always says something (every diagnostic has a message, and one in the file
//! points at a line of it), and what loads can be shown (`show-config`).

use std::path::{Path, PathBuf};

use loky_run::config::{Layer, LoadOptions, load_with_origins};
use proptest::prelude::*;
use proptest::sample::{Index, select};

/// Pipelines to start from: the example configs and a few shaped like the tests' pipelines.
fn seeds() -> Vec<String> {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut seeds: Vec<String> = std::fs::read_dir(&configs)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .collect()
        })
        .unwrap_or_default();
    seeds.sort();
    seeds.extend(
        [
            r#"[pipeline]
name = "t"
plugins = ["demo", "faults"]
output_dir = "out"

[pool]
max_workers = 2
retries = 2
on_error = "continue"
task_timeout = "2s"
max_memory_growth = "300MB"
max_tasks_per_worker = 3
chunksize = "auto"
env = { A = "1" }
initializer = { task = "demo::setup", args = { level = "info", n = [1, 2] } }

[[stage]]
name = "a"
task = "demo::square"
input = { range = [0, 10] }

[[stage]]
name = "b"
task = "faults::crash_if"
input = { from = "a" }
kill_workers = true
chunksize = 4
"#,
            r#"[pipeline]
plugins = ["./libdemo.so"]
[[stage]]
name = "only"
task = "demo::echo"
input = { items = [1, "two", { three = 3 }, [4]] }
launcher = "slurm"
idle_timeout = "1m30s"
"#,
            r#"[pipeline]
name = "files"
plugins = ["demo"]
[[stage]]
name = "f"
task = "demo::echo"
input = { file = "data/in.jsonl" }
reuse = "never"
"#,
        ]
        .map(String::from),
    );
    seeds
}

/// Fragments a mutation inserts: keys, values of every kind, and TOML's sharp edges.
const TOKENS: &[&str] = &[
    "[pipeline]",
    "[pool]",
    "[[stage]]",
    "[stage]",
    "[[pool]]",
    "[pool.env]",
    "name = ",
    "task = ",
    "input = ",
    "max_workers = ",
    "retries = ",
    "chunksize = ",
    "idle_timeout = ",
    "task_timeout = ",
    "max_memory_growth = ",
    "max_tasks_per_worker = ",
    "on_error = ",
    "reuse = ",
    "launcher = ",
    "kill_workers = ",
    "env = ",
    "initializer = ",
    "plugins = ",
    "output_dir = ",
    "{ range = [0, 5] }",
    "{ range = [5, 0] }",
    "{ range = [-9223372036854775808, 9223372036854775807] }",
    "{ items = [] }",
    "{ file = \"/dev/zero\" }",
    "{ from = \"a\" }",
    "{ from = \"nope\" }",
    "{ range = [0, 1], items = [1] }",
    "{ task = \"demo::setup\" }",
    "{ task = 1 }",
    "0",
    "-1",
    "4294967296",
    "9223372036854775807",
    "18446744073709551616",
    "1e400",
    "nan",
    "-inf",
    "0.5",
    "true",
    "\"\"",
    "\"auto\"",
    "\"0\"",
    "\"10s\"",
    "\"999999999999999999999s\"",
    "\"18446744073709551615s\"",
    "\"584942417355y\"",
    "\"1y\"",
    "\"-1s\"",
    "\"1.5GiB\"",
    "\"18446744073709551615TiB\"",
    "\"0.99999999999999999999999B\"",
    "\"300 MB\"",
    "\"300mb\"",
    "\"continue\"",
    "\"fail\"",
    "\"never\"",
    "\"slurm\"",
    "\"local\"",
    "\"demo::\"",
    "\"::\"",
    "\"a.b\"",
    "\"é\"",
    "'''multi\nline'''",
    "\"\\u0000\"",
    "[]",
    "[[]]",
    "{}",
    "{ A = 1 }",
    "{ A = { B = 2 } }",
    "1979-05-27T07:32:00Z",
    "=",
    "\n",
    "#",
    ",",
    "]",
    "}",
    "\"",
    ".",
    "a.b.c = 1",
];

#[derive(Debug, Clone)]
enum Mutation {
    Insert(Index, &'static str),
    Delete(Index, usize),
    Duplicate(Index, usize),
    Byte(Index, u8),
    /// Replace the value after an `=` on some line.
    Value(Index, &'static str),
    SwapLines(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), select(TOKENS)).prop_map(|(i, t)| Mutation::Insert(i, t)),
        2 => (any::<Index>(), 1usize..30).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), 1usize..60).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        4 => (any::<Index>(), select(TOKENS)).prop_map(|(i, t)| Mutation::Value(i, t)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn mutate(text: &mut Vec<u8>, m: &Mutation) {
    let len = text.len();
    match m {
        Mutation::Insert(i, t) => {
            let at = i.index(len + 1);
            text.splice(at..at, t.bytes());
        }
        Mutation::Delete(i, n) if len > 0 => {
            let from = i.index(len);
            text.drain(from..(from + n).min(len));
        }
        Mutation::Duplicate(i, n) if len > 0 => {
            let from = i.index(len);
            let piece = text[from..(from + n).min(len)].to_vec();
            text.splice(from..from, piece);
        }
        Mutation::Byte(i, b) if len > 0 => text[i.index(len)] = *b,
        Mutation::Value(i, t) => {
            let eqs: Vec<usize> = (0..len).filter(|&k| text[k] == b'=').collect();
            if eqs.is_empty() {
                return;
            }
            let at = eqs[i.index(eqs.len())] + 1;
            let end = text[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(len, |p| at + p);
            text.splice(at..end, format!(" {t}").bytes());
        }
        Mutation::SwapLines(a, b) => {
            let mut lines: Vec<Vec<u8>> = text.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
            *text = lines.join(&b'\n');
        }
        _ => {}
    }
}

/// `--set` arguments, right and wrong.
fn set_arg() -> impl Strategy<Value = String> {
    let key = select(
        &[
            "pool.max_workers",
            "pool.retries",
            "pool.chunksize",
            "pool.idle_timeout",
            "pool.task_timeout",
            "pool.max_memory_growth",
            "pool.env.X",
            "pool.env",
            "pool.initializer.task",
            "pool.initializer.args",
            "pool.initializer.args.a.b",
            "pipeline.name",
            "pipeline.output_dir",
            "pipeline.plugins",
            "stage.a.retries",
            "stage.a.input.range",
            "stage.a.input.items",
            "stage.a.input.from",
            "stage.a.name",
            "stage.squares.max_workers",
            "stage.nope.retries",
            "stage..x",
            "pool",
            "",
            "nope.key",
        ][..],
    );
    let value = prop_oneof![select(TOKENS).prop_map(str::to_owned), Just(String::new())];
    (key, value, any::<bool>())
        .prop_map(|(k, v, eq)| if eq { format!("{k}={v}") } else { k.to_owned() })
}

fn env_var() -> impl Strategy<Value = (String, String)> {
    let name = select(
        &[
            "LOKY_RUN_POOL_MAX_WORKERS",
            "LOKY_RUN_POOL_RETRIES",
            "LOKY_RUN_POOL_IDLE_TIMEOUT",
            "LOKY_RUN_POOL_ENV",
            "LOKY_RUN_PIPELINE_NAME",
            "LOKY_RUN_STAGE_A_RETRIES",
            "LOKY_RUN_STAGE_A_INPUT",
            "LOKY_RUN_STAGE_",
            "LOKY_RUN_",
            "LOKY_RUN_POOL_",
            "LOKY_RUN_PLUGIN_PATH",
        ][..],
    );
    (name, select(TOKENS)).prop_map(|(n, v)| (n.to_owned(), v.to_owned()))
}

fn check(file: &Path, sets: Vec<String>, env: Vec<(String, String)>) -> Result<(), TestCaseError> {
    let opts = LoadOptions {
        file: file.to_path_buf(),
        sets,
        env,
    };
    match load_with_origins(&opts) {
        Ok(loaded) => {
            let shown = loky_run::show_config::render(&loaded);
            prop_assert!(!shown.is_empty());
        }
        Err(e) => {
            prop_assert!(!e.diagnostics.is_empty(), "an error without a diagnostic");
            for d in &e.diagnostics {
                prop_assert!(!d.message.trim().is_empty(), "an empty message: {d:?}");
                if let (Layer::File(_), Some(loc)) = (&d.layer, &d.location) {
                    prop_assert!(loc.line >= 1 && loc.column >= 1, "{d:?}");
                }
            }
            prop_assert!(!e.to_string().trim().is_empty());
        }
    }
    Ok(())
}

fn write_pipeline(dir: &Path, bytes: &[u8]) -> PathBuf {
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, bytes).unwrap();
    path
}

proptest! {
    #![proptest_config(crate::config(256))]

    #[test]
    fn a_mutated_pipeline_loads_or_says_what_is_wrong(
        seed in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 0..6),
        sets in prop::collection::vec(set_arg(), 0..3),
        env in prop::collection::vec(env_var(), 0..2),
    ) {
        let seeds = seeds();
        let mut text = seeds[seed.index(seeds.len())].clone().into_bytes();
        for m in &mutations {
            mutate(&mut text, m);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = write_pipeline(dir.path(), &text);
        check(&path, sets, env)?;
    }

    #[test]
    fn random_bytes_as_a_pipeline_are_an_error(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_pipeline(dir.path(), &bytes);
        check(&path, Vec::new(), Vec::new())?;
    }
}

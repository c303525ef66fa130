//! Tests of `load` over real files.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use super::keys::Kind;
use super::*;

struct Fixture {
    dir: tempfile::TempDir,
    file: PathBuf,
}

impl Fixture {
    fn new(toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pipeline.toml");
        std::fs::write(&file, toml).unwrap();
        Fixture { dir, file }
    }

    fn base(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }

    fn opts(&self, env: &[(&str, &str)], sets: &[&str]) -> LoadOptions {
        LoadOptions {
            file: self.file.clone(),
            sets: sets.iter().map(std::string::ToString::to_string).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn load(&self) -> Result<Pipeline, ConfigError> {
        load(&self.opts(&[], &[]))
    }

    fn load_with(&self, env: &[(&str, &str)], sets: &[&str]) -> Result<Pipeline, ConfigError> {
        load(&self.opts(env, sets))
    }

    fn errors(&self, env: &[(&str, &str)], sets: &[&str]) -> ConfigError {
        match self.load_with(env, sets) {
            Ok(p) => panic!("expected errors, got {p:#?}"),
            Err(e) => e,
        }
    }
}

/// The diagnostic about `key` (in `--set` spelling), or a panic listing them all.
fn about<'a>(err: &'a ConfigError, key: &str) -> &'a Diagnostic {
    err.diagnostics
        .iter()
        .find(|d| d.key.as_deref() == Some(key))
        .unwrap_or_else(|| panic!("no diagnostic for {key}:\n{err}"))
}

fn line(d: &Diagnostic) -> usize {
    d.location
        .as_ref()
        .unwrap_or_else(|| panic!("no location: {d}"))
        .line
}

const MINIMAL: &str = r#"
[pipeline]
name = "mini"
plugins = ["demo"]

[[stage]]
name = "squares"
task = "demo::square"
input = { range = [0, 10] }
"#;

#[test]
fn full_file_with_every_key() {
    let fx = Fixture::new("");
    let base = fx.base();
    std::fs::create_dir_all(base.join("plugins/faults")).unwrap();
    std::fs::write(base.join("inputs.jsonl"), "1\n2\n").unwrap();
    std::fs::write(
        &fx.file,
        r#"
[pipeline]
name = "full"
plugins = ["demo", "./plugins/faults", "lib/libextra.so", "/opt/x/libabs.so"]
output_dir = "results"
grace_period = "2s"

[pool]
max_workers = 3
idle_timeout = "0s"
reuse = "never"
env = { GREETING = "hi", N = 1, F = 1.5, B = true }
initializer = { task = "demo::setup", args = { level = "info" } }
max_tasks_per_worker = 100
max_memory_growth = "300MB"
task_timeout = "1m30s"
retries = 2
on_error = "continue"
chunksize = 16
launcher = "slurm"
srun_args = ["--exact", "--mem=1G"]

[slurm]
partition = "gpu"
account = "lab"
qos = "short"
time_limit = "1h30m"
nodes = 2
tasks = 8
cpus_per_task = 4
max_allocations = 3
sbatch_args = ["--mem=8G", "-J", "mine"]
renew_before = "5m"

[[stage]]
name = "squares"
task = "demo::square"
input = { range = [0, 100] }
kill_workers = true
max_workers = 1
chunksize = "auto"
env = { ONLY = "stage" }

[[stage]]
name = "listed"
task = "echo"
input = { items = [1, "two", { three = 3 }, [4], 1979-05-27T07:32:00Z] }
initializer = { task = "faults::init_fail" }

[[stage]]
name = "from-file"
task = "demo::echo"
input = { file = "inputs.jsonl" }
max_memory_growth = 0
idle_timeout = "250ms"
reuse = "auto"
launcher = "local"

[[stage]]
name = "chained.v2"
task = "demo::square"
input = { from = "squares" }
task_timeout = "0s"
retries = 0
on_error = "fail"
max_tasks_per_worker = 0
srun_args = []
"#,
    )
    .unwrap();
    let p = fx.load().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.name, "full");
    assert_eq!(p.file, base.join("pipeline.toml"));
    assert_eq!(p.base_dir, base);
    assert_eq!(p.output_dir, base.join("results"));
    assert_eq!(p.grace_period, Duration::from_secs(2));
    assert_eq!(
        p.plugins.iter().map(|s| s.kind.clone()).collect::<Vec<_>>(),
        vec![
            PluginSpecKind::Name("demo".into()),
            PluginSpecKind::Crate(base.join("plugins/faults")),
            PluginSpecKind::Library(base.join("lib/libextra.so")),
            PluginSpecKind::Library("/opt/x/libabs.so".into()),
        ]
    );
    assert_eq!(p.plugins[1].written, "./plugins/faults");
    assert_eq!(
        p.slurm,
        Some(SlurmAlloc {
            partition: Some("gpu".into()),
            account: Some("lab".into()),
            qos: Some("short".into()),
            time_limit: Some(Duration::from_secs(90 * 60)),
            nodes: 2,
            tasks: 8,
            cpus_per_task: Some(4),
            max_allocations: 3,
            sbatch_args: vec!["--mem=8G".into(), "-J".into(), "mine".into()],
            renew_before: Duration::from_secs(300),
        })
    );

    let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["squares", "listed", "from-file", "chained.v2"]);

    // Stage 1: own keys over [pool].
    let s = &p.stages[0];
    assert_eq!(
        s.task,
        TaskRef {
            plugin: Some("demo".into()),
            name: "square".into()
        }
    );
    assert_eq!(s.input, InputSpec::Range { start: 0, end: 100 });
    assert!(s.kill_workers);
    let st = &s.settings;
    assert_eq!(st.max_workers, NonZeroUsize::new(1));
    assert_eq!(st.chunksize, ChunkSize::Auto);
    assert_eq!(
        st.env,
        BTreeMap::from([("ONLY".to_string(), "stage".to_string())])
    );
    // The rest from [pool].
    assert_eq!(st.idle_timeout, None);
    assert_eq!(st.reuse, Reuse::Never);
    assert_eq!(
        st.initializer,
        Some(Initializer {
            task: TaskRef {
                plugin: Some("demo".into()),
                name: "setup".into()
            },
            args: json!({"level": "info"}),
        })
    );
    assert_eq!(st.max_tasks_per_worker, 100);
    assert_eq!(st.max_memory_growth, Some(300_000_000));
    assert_eq!(st.task_timeout, Some(Duration::from_secs(90)));
    assert_eq!(st.retries, 2);
    assert_eq!(st.on_error, OnError::Continue);
    assert_eq!(st.launcher, Launcher::Slurm);
    assert_eq!(st.srun_args, ["--exact", "--mem=1G"]);

    // Stage 2: items converted to JSON, datetimes as strings; [pool] env with converted values.
    let s = &p.stages[1];
    assert_eq!(
        s.task,
        TaskRef {
            plugin: None,
            name: "echo".into()
        }
    );
    assert_eq!(
        s.input,
        InputSpec::Items(vec![
            json!(1),
            json!("two"),
            json!({"three": 3}),
            json!([4]),
            json!("1979-05-27T07:32:00Z")
        ])
    );
    assert!(!s.kill_workers);
    assert_eq!(
        s.settings.env,
        BTreeMap::from([
            ("B".to_string(), "true".to_string()),
            ("F".to_string(), "1.5".to_string()),
            ("GREETING".to_string(), "hi".to_string()),
            ("N".to_string(), "1".to_string()),
        ])
    );
    assert_eq!(s.settings.max_workers, NonZeroUsize::new(3));
    assert_eq!(
        s.settings.chunksize,
        ChunkSize::Fixed(NonZeroUsize::new(16).unwrap())
    );
    let init = s.settings.initializer.as_ref().unwrap();
    assert_eq!(init.task.to_string(), "faults::init_fail");
    assert_eq!(init.args, serde_json::Value::Null);

    // Stage 3: an input file, absolute; 0 = unlimited.
    let s = &p.stages[2];
    assert_eq!(s.input, InputSpec::File(base.join("inputs.jsonl")));
    assert_eq!(s.settings.max_memory_growth, None);
    assert_eq!(s.settings.idle_timeout, Some(Duration::from_millis(250)));
    assert_eq!(s.settings.reuse, Reuse::Auto);
    assert_eq!(s.settings.launcher, Launcher::Local);

    // Stage 4: `from`, and zeros.
    let s = &p.stages[3];
    assert_eq!(s.input, InputSpec::From("squares".into()));
    assert_eq!(s.settings.task_timeout, None);
    assert_eq!(s.settings.retries, 0);
    assert_eq!(s.settings.on_error, OnError::Fail);
    assert_eq!(s.settings.max_tasks_per_worker, 0);
    assert!(s.settings.srun_args.is_empty());
}

#[test]
fn defaults() {
    let fx = Fixture::new(MINIMAL);
    let p = fx.load().unwrap();
    assert_eq!(p.output_dir, fx.base().join("out/mini"));
    assert_eq!(p.grace_period, Duration::from_secs(5));
    assert_eq!(
        p.slurm, None,
        "no [slurm] table: no allocations of loky-run's own"
    );
    let st = &p.stages[0].settings;
    assert_eq!(
        *st,
        PoolSettings {
            max_workers: None,
            idle_timeout: Some(Duration::from_secs(10)),
            reuse: Reuse::Auto,
            env: BTreeMap::new(),
            initializer: None,
            max_tasks_per_worker: 0,
            max_memory_growth: Some(300_000_000),
            task_timeout: None,
            retries: 0,
            on_error: OnError::Fail,
            chunksize: ChunkSize::Auto,
            launcher: Launcher::Local,
            srun_args: vec![],
        }
    );
    assert!(!p.stages[0].kill_workers);
}

/// A value of each kind that a key of that kind accepts.
fn sample(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "\"x\"",
        Kind::Path => "\"p\"",
        Kind::StageName => "\"s\"",
        Kind::Task => "\"demo::t\"",
        Kind::Choice(options) => match options[0] {
            "auto" => "\"auto\"",
            "fail" => "\"fail\"",
            _ => "\"local\"",
        },
        Kind::Duration => "\"1s\"",
        Kind::Size => "\"1MB\"",
        Kind::Positive | Kind::Count => "1",
        Kind::Bool => "true",
        Kind::TextList => "[\"demo\"]",
        Kind::TextMap => "{ A = \"1\" }",
        Kind::Initializer => "{ task = \"demo::setup\", args = 1 }",
        Kind::Input => "{ range = [0, 1] }",
        Kind::ChunkSize => "2",
        Kind::Range => "[0, 1]",
        Kind::Any => "1",
        Kind::AnyList => "[1]",
    }
}

/// The key tables and the code that reads them cannot drift: a file setting every key of the
/// tables (with a sample value of its kind) loads, and every key reaches the result.
#[test]
fn every_key_in_the_tables_is_read() {
    let mut toml = String::from("[pipeline]\n");
    for k in PIPELINE_KEYS {
        toml += &format!("{} = {}\n", k.name, sample(k.kind));
    }
    toml += "[pool]\n";
    for k in POOL_KEYS {
        toml += &format!("{} = {}\n", k.name, sample(k.kind));
    }
    toml += "[slurm]\n";
    for k in SLURM_KEYS {
        // renew_before's sample ("1s") must stay below the time limit.
        let value = match k.name {
            "time_limit" => "\"1h\"",
            _ => sample(k.kind),
        };
        toml += &format!("{} = {value}\n", k.name);
    }
    toml += "[[stage]]\n";
    for k in STAGE_KEYS.iter().chain(POOL_KEYS) {
        toml += &format!("{} = {}\n", k.name, sample(k.kind));
    }
    let fx = Fixture::new(&toml);
    let loaded = load_with_origins(&fx.opts(&[], &[])).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let file = Layer::File(fx.file.canonicalize().unwrap());
    let mut expected: Vec<String> = PIPELINE_KEYS
        .iter()
        .map(|k| format!("pipeline.{}", k.name))
        .collect();
    expected.extend(POOL_KEYS.iter().map(|k| format!("pool.{}", k.name)));
    expected.extend(SLURM_KEYS.iter().map(|k| format!("slurm.{}", k.name)));
    expected.extend(
        STAGE_KEYS
            .iter()
            .chain(POOL_KEYS)
            .map(|k| format!("stage.s.{}", k.name)),
    );
    for key in expected {
        let origin = loaded
            .origins
            .get(&key)
            .unwrap_or_else(|| panic!("{key} was not read"));
        assert_eq!(origin.layer, file, "{key}");
        assert!(origin.location.is_some(), "{key}");
    }
    // Every input kind.
    std::fs::write(fx.base().join("p"), "1\n").unwrap();
    for k in INPUT_KEYS {
        let value = match k.kind {
            Kind::StageName => "\"first\"".to_string(),
            kind => sample(kind).to_string(),
        };
        let toml = format!(
            "[pipeline]\nname = \"x\"\nplugins = [\"demo\"]\n\
             [[stage]]\nname = \"first\"\ntask = \"t\"\ninput = {{ range = [0, 1] }}\n\
             [[stage]]\nname = \"s\"\ntask = \"t\"\ninput = {{ {} = {value} }}\n",
            k.name
        );
        std::fs::write(&fx.file, &toml).unwrap();
        let loaded =
            load_with_origins(&fx.opts(&[], &[])).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert_eq!(loaded.origins["stage.s.input"].layer, file, "{}", k.name);
    }
}

const SLURM_DEFAULTS: SlurmAlloc = SlurmAlloc {
    partition: None,
    account: None,
    qos: None,
    time_limit: None,
    nodes: 1,
    tasks: 1,
    cpus_per_task: None,
    max_allocations: 1,
    sbatch_args: vec![],
    renew_before: Duration::from_secs(120),
};

/// MINIMAL with a `[slurm]` table holding `body`.
fn with_slurm(body: &str) -> String {
    format!("{MINIMAL}\n[slurm]\n{body}")
}

#[test]
fn a_slurm_table_alone_asks_for_the_defaults() {
    let fx = Fixture::new(&with_slurm(""));
    let loaded = load_with_origins(&fx.opts(&[], &[])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.pipeline.slurm, Some(SLURM_DEFAULTS));
    for k in SLURM_KEYS {
        let key = format!("slurm.{}", k.name);
        assert_eq!(loaded.origins[&key].layer, Layer::Default, "{key}");
    }
    // "0s" is no limit of loky-run's own: the partition's default.
    let fx = Fixture::new(&with_slurm("time_limit = \"0s\"\n"));
    assert_eq!(fx.load().unwrap().slurm.unwrap().time_limit, None);
    // A time limit is kept as written; the launcher rounds it up to whole minutes.
    let fx = Fixture::new(&with_slurm(
        "time_limit = \"90s\"\nrenew_before = \"30s\"\n",
    ));
    let slurm = fx.load().unwrap().slurm.unwrap();
    assert_eq!(slurm.time_limit, Some(Duration::from_secs(90)));
    assert_eq!(slurm.renew_before, Duration::from_secs(30));
}

#[test]
fn slurm_tasks_default_to_nodes() {
    let fx = Fixture::new(&with_slurm("nodes = 3\n"));
    let loaded = load_with_origins(&fx.opts(&[], &[])).unwrap();
    let slurm = loaded.pipeline.slurm.unwrap();
    assert_eq!((slurm.nodes, slurm.tasks), (3, 3));
    assert_eq!(loaded.origins["slurm.tasks"].layer, Layer::Default);
    let p = fx.load_with(&[], &["slurm.tasks=12"]).unwrap();
    let slurm = p.slurm.unwrap();
    assert_eq!((slurm.nodes, slurm.tasks), (3, 12));
    // Equal is fine: one task per node.
    let p = fx.load_with(&[], &["slurm.tasks=3"]).unwrap();
    assert_eq!(p.slurm.unwrap().tasks, 3);
}

#[test]
fn slurm_from_set() {
    // `--set slurm.KEY` alone makes a [slurm] table.
    let fx = Fixture::new(MINIMAL);
    let loaded = load_with_origins(&fx.opts(
        &[],
        &[
            "slurm.partition=debug",
            "slurm.time_limit=2h",
            "slurm.sbatch_args=[\"--mem=4G\"]",
            "slurm.max_allocations=2",
        ],
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        loaded.pipeline.slurm,
        Some(SlurmAlloc {
            partition: Some("debug".into()),
            time_limit: Some(Duration::from_secs(7200)),
            sbatch_args: vec!["--mem=4G".into()],
            max_allocations: 2,
            ..SLURM_DEFAULTS
        })
    );
    assert_eq!(
        loaded.origins["slurm.partition"].layer,
        Layer::Set("slurm.partition=debug".into())
    );
    assert_eq!(loaded.origins["slurm.nodes"].layer, Layer::Default);

    // Over the file's values; a textual key keeps the text.
    let fx = Fixture::new(&with_slurm("partition = \"gpu\"\nnodes = 2\n"));
    let loaded =
        load_with_origins(&fx.opts(&[], &["slurm.nodes=4", "slurm.account=2024"])).unwrap();
    let slurm = loaded.pipeline.slurm.unwrap();
    assert_eq!(slurm.partition.as_deref(), Some("gpu"));
    assert_eq!((slurm.nodes, slurm.tasks), (4, 4));
    assert_eq!(slurm.account.as_deref(), Some("2024"));
    let origin = &loaded.origins["slurm.partition"];
    assert!(matches!(origin.layer, Layer::File(_)));
    assert_eq!(origin.location.as_ref().unwrap().line, 12);

    // Unknown keys and bad values from --set.
    let err = fx.errors(
        &[],
        &["slurm.node=2", "slurm.cpus_per_task=0", "slrum.nodes=2"],
    );
    assert_eq!(err.diagnostics.len(), 3, "{err}");
    let d = &err.diagnostics[0];
    assert_eq!(d.layer, Layer::Set("slurm.node=2".into()));
    assert!(d.message.contains("unknown key `node` in [slurm]"), "{d}");
    assert_eq!(d.help.as_deref(), Some("did you mean `slurm.nodes`?"));
    let d = &err.diagnostics[1];
    assert!(d.message.contains("unknown section `slrum`"), "{d}");
    assert_eq!(d.help.as_deref(), Some("did you mean `slurm.nodes`?"));
    let d = about(&err, "slurm.cpus_per_task");
    assert!(d.message.contains("must be at least 1, found 0"), "{d}");
    let err = fx.errors(
        &[],
        &["pool.nodes=2", "slurm.max_workers=2", "pool.tasks=2"],
    );
    let helps: Vec<&str> = err
        .diagnostics
        .iter()
        .map(|d| d.help.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(
        helps,
        [
            "`nodes` is a key of [slurm]",
            "`max_workers` is a key of [pool] or [[stage]]",
            "did you mean `pool.task_timeout`? (`tasks` is a key of [slurm])",
        ]
    );
}

#[test]
fn slurm_checks_across_keys() {
    let fx = Fixture::new(&with_slurm(
        "nodes = 2\ntasks = 1\ntime_limit = \"10m\"\nrenew_before = \"10m\"\n\
         sbatch_args = [\"--exclusive\", \"--wrap=hostname\", \"--parsable\", \"-J\", \"x\"]\n",
    ));
    let err = fx.load().unwrap_err();
    assert_eq!(err.diagnostics.len(), 4, "{err}");
    let d = about(&err, "slurm.tasks");
    assert_eq!(d.message, "in [slurm], tasks = 1 is fewer than nodes = 2");
    assert_eq!(line(d), 13);
    assert!(
        d.help.as_deref().unwrap().contains("at least one task"),
        "{d}"
    );
    let d = about(&err, "slurm.renew_before");
    assert_eq!(
        d.message,
        "in [slurm], renew_before = \"10m\" is not shorter than time_limit = \"10m\""
    );
    assert_eq!(line(d), 15);
    assert!(
        d.help
            .as_deref()
            .unwrap()
            .ends_with("lower renew_before or raise time_limit"),
        "{d}"
    );
    let d = about(&err, "slurm.sbatch_args[1]");
    assert!(d.message.contains("cannot hold `--wrap`"), "{d}");
    assert_eq!(line(d), 16);
    assert_eq!(d.location.as_ref().unwrap().column, 31);
    let d = about(&err, "slurm.sbatch_args[2]");
    assert!(d.message.contains("cannot hold `--parsable`"), "{d}");

    // The default renew_before ("2m") counts: the message says it is the default and points
    // at the time limit that was written.
    let fx = Fixture::new(&with_slurm("time_limit = \"1m\"\n"));
    let err = fx.load().unwrap_err();
    let d = about(&err, "slurm.time_limit");
    assert_eq!(
        d.message,
        "in [slurm], renew_before = \"2m\" (the default) is not shorter than time_limit = \"1m\""
    );
    assert_eq!(line(d), 12);
    // Values from other layers say so.
    let err = fx.errors(
        &[],
        &["slurm.nodes=4", "slurm.tasks=2", "slurm.time_limit=3m"],
    );
    let d = about(&err, "slurm.tasks");
    assert_eq!(
        d.message,
        "in [slurm], tasks = 2 from `--set slurm.tasks=2` is fewer than \
         nodes = 4 from `--set slurm.nodes=4`"
    );
    assert!(d.location.is_none());
    assert_eq!(err.diagnostics.len(), 1, "{err}");
    // Without a time limit, renew_before is not compared.
    let fx = Fixture::new(&with_slurm("renew_before = \"1h\"\n"));
    assert_eq!(
        fx.load().unwrap().slurm.unwrap().renew_before,
        Duration::from_secs(3600)
    );
}

#[test]
fn slurm_keys_in_the_wrong_place() {
    let fx = Fixture::new(&format!(
        "partition = \"gpu\"\n{}\n[slurm]\nnode = 2\nmax_workers = 3\n[slurmm]\nx = 1\n",
        MINIMAL.replace("[[stage]]", "[pool]\nnodes = 2\ntasks = 4\n[[stage]]")
    ));
    let err = fx.load().unwrap_err();
    let d = about(&err, "partition");
    assert_eq!(d.message, "unknown key `partition` at the top level");
    assert_eq!(
        d.help.as_deref(),
        Some("`partition` is a key of [slurm]: put it under that section's header")
    );
    let d = about(&err, "pool.nodes");
    assert_eq!(d.help.as_deref(), Some("`nodes` is a key of [slurm]"));
    let d = about(&err, "slurm.node");
    assert_eq!(d.message, "unknown key `node` in [slurm]");
    assert_eq!(d.help.as_deref(), Some("did you mean `nodes`?"));
    // A near miss here and the exact key elsewhere: both.
    let d = about(&err, "pool.tasks");
    assert_eq!(
        d.help.as_deref(),
        Some("did you mean `task_timeout`? (`tasks` is a key of [slurm])")
    );
    let d = about(&err, "slurm.max_workers");
    assert_eq!(
        d.help.as_deref(),
        Some("`max_workers` is a key of [pool] or [[stage]]")
    );
    let d = about(&err, "slurmm");
    assert_eq!(d.help.as_deref(), Some("did you mean `[slurm]`?"));
    // `slurm` must be a table.
    let fx = Fixture::new(&format!("slurm = 1\n{MINIMAL}"));
    let err = fx.load().unwrap_err();
    let d = about(&err, "slurm");
    assert_eq!(d.message, "`slurm` must be a table");
}

/// `[slurm]` has no environment layer: `LOKY_RUN_SLURM_TESTS` and `LOKY_RUN_SLURM_NODES`
/// are the test suite's gates (fixed names), and `nodes` is also a `[slurm]` key.
#[test]
fn loky_run_slurm_variables_are_not_configuration() {
    let fx = Fixture::new(MINIMAL);
    let env = [
        ("LOKY_RUN_SLURM_TESTS", "1"),
        ("LOKY_RUN_SLURM_NODES", "3"),
        ("LOKY_RUN_SLURM_PARTITION", "gpu"),
    ];
    let p = fx.load_with(&env, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.slurm, None);
    let fx = Fixture::new(&with_slurm("nodes = 2\n"));
    let p = fx.load_with(&env, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.slurm.unwrap().nodes, 2);
}

#[test]
fn syntax_error_points_at_line_and_column() {
    let fx = Fixture::new("[pipeline]\nname = \"x\"\nplugins = [\"demo\"\n\n[[stage]]\n");
    let err = fx.load().unwrap_err();
    assert_eq!(err.diagnostics.len(), 1);
    let d = &err.diagnostics[0];
    assert!(d.message.starts_with("invalid TOML"), "{d}");
    assert!(matches!(&d.layer, Layer::File(p) if p.ends_with("pipeline.toml")));
    let loc = d.location.as_ref().unwrap();
    assert!(loc.line >= 3, "{d}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("pipeline.toml:{}:{}", loc.line, loc.column)),
        "{text}"
    );
    assert!(text.contains('^'), "{text}");

    let fx = Fixture::new("[pool]\nmax_workers = = 2\n");
    let d = &fx.load().unwrap_err().diagnostics[0];
    assert_eq!(line(d), 2);
    assert_eq!(d.location.as_ref().unwrap().line_text, "max_workers = = 2");
}

#[test]
fn unknown_keys_are_all_reported_with_suggestions() {
    let fx = Fixture::new(
        r#"[pipeline]
name = "p"
plugins = ["demo"]
max_workers = 2

[pool]
max_worker = 2
initializer = { tsak = "demo::setup" }

[pools]
x = 1

[[stage]]
name = "squares"
task = "demo::square"
input = { ranges = [0, 3] }
retrys = 1
colour = "blue"
"#,
    );
    let err = fx.load().unwrap_err();
    let text = err.to_string();

    let d = about(&err, "pool.max_worker");
    assert_eq!(d.message, "unknown key `max_worker` in [pool]");
    assert_eq!(d.help.as_deref(), Some("did you mean `max_workers`?"));
    assert_eq!(line(d), 7);
    assert_eq!(d.location.as_ref().unwrap().column, 1);
    assert_eq!(d.location.as_ref().unwrap().width, "max_worker".len());

    let d = about(&err, "pipeline.max_workers");
    assert_eq!(line(d), 4);
    assert!(d.help.as_deref().unwrap().contains("[pool]"), "{d}");

    let d = about(&err, "pool.initializer.tsak");
    assert_eq!(line(d), 8);
    assert_eq!(d.help.as_deref(), Some("did you mean `task`?"));

    let d = about(&err, "pools");
    assert_eq!(d.message, "unknown section `[pools]`");
    assert_eq!(d.help.as_deref(), Some("did you mean `[pool]`?"));
    assert_eq!(line(d), 10);

    let d = about(&err, "stage.squares.input.ranges");
    assert!(d.message.contains("the input of stage `squares`"), "{d}");
    assert_eq!(d.help.as_deref(), Some("did you mean `range`?"));
    assert_eq!(line(d), 16);

    let d = about(&err, "stage.squares.retrys");
    assert_eq!(d.message, "unknown key `retrys` in stage `squares`");
    assert_eq!(d.help.as_deref(), Some("did you mean `retries`?"));
    assert_eq!(line(d), 17);

    let d = about(&err, "stage.squares.colour");
    assert!(d.help.as_deref().unwrap().starts_with("valid keys:"), "{d}");

    // The input has no valid kind left; that is reported too.
    assert!(err.diagnostics.len() >= 7, "{text}");
    // In file order.
    let lines: Vec<usize> = err
        .diagnostics
        .iter()
        .filter_map(|d| d.location.as_ref().map(|l| l.line))
        .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
}

#[test]
fn unknown_key_renders_with_caret() {
    let fx = Fixture::new(
        "[pipeline]\nname = \"p\"\nplugins = [\"demo\"]\n\n[pool]\nmax_worker = 2\n\n[[stage]]\nname = \"a\"\ntask = \"t\"\ninput = { items = [1] }\n",
    );
    let err = fx.load().unwrap_err();
    let path = fx.file.canonicalize().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "error: unknown key `max_worker` in [pool]\n \
             --> {}:6:1\n  \
             |\n\
             6 | max_worker = 2\n  \
             | ^^^^^^^^^^\n  \
             = help: did you mean `max_workers`?",
            path.display()
        )
    );
}

#[test]
fn bad_values_in_the_file_are_all_reported_with_lines() {
    let fx = Fixture::new(
        r#"[pipeline]
name = "p"
plugins = ["demo", 3]
grace_period = 5

[pool]
max_workers = "two"
idle_timeout = "10 parsecs"
retries = -1
reuse = "sometimes"
on_error = "continu"
max_memory_growth = "1G"
chunksize = 0
env = { OK = "x", BAD = [1] }
launcher = 3

[[stage]]
name = "a b"
task = "x::y::z"
input = { range = [0, "3"] }
kill_workers = "yes"
task_timeout = "-1s"
"#,
    );
    let err = fx.load().unwrap_err();
    let check = |key: &str, line_no: usize, needles: &[&str]| {
        let d = about(&err, key);
        assert_eq!(line(d), line_no, "{d}");
        for n in needles {
            assert!(d.to_string().contains(n), "{n:?} not in:\n{d}");
        }
    };
    check("pipeline.plugins[1]", 3, &["expected a path", "integer 3"]);
    check("pipeline.grace_period", 4, &["found integer 5", "\"5s\""]);
    check(
        "pool.max_workers",
        7,
        &["expected an integer ≥ 1", "string \"two\""],
    );
    check("pool.idle_timeout", 8, &["\"10 parsecs\"", "\"250ms\""]);
    check("pool.retries", 9, &["at least 0", "-1"]);
    check(
        "pool.reuse",
        10,
        &["\"auto\" or \"never\"", "\"sometimes\""],
    );
    check("pool.on_error", 11, &["did you mean \"continue\"?"]);
    check("pool.max_memory_growth", 12, &["`GB`", "`GiB`"]);
    check("pool.chunksize", 13, &["at least 1"]);
    check("pool.env.BAD", 14, &["an array"]);
    check("pool.launcher", 15, &["\"local\" or \"slurm\""]);
    check("stage #1.name", 18, &["not a valid stage name"]);
    check("stage #1.task", 19, &["plugin::task"]);
    check(
        "stage #1.input.range",
        20,
        &["must be integers", "string \"3\""],
    );
    check("stage #1.kill_workers", 21, &["boolean"]);
    check("stage #1.task_timeout", 22, &["cannot be negative"]);
    assert!(
        !err.diagnostics
            .iter()
            .any(|d| d.message.contains("missing")),
        "a bad value is not also reported missing:\n{err}"
    );
    // A file error names the file in its `-->` line, not in the message.
    let d = about(&err, "pool.max_workers");
    assert_eq!(
        d.message,
        "invalid value for `pool.max_workers`: expected an integer ≥ 1, found string \"two\""
    );
    assert!(d.to_string().contains("pipeline.toml:7:15"), "{d}");
}

#[test]
fn zero_workers_and_number_strings() {
    let fx = Fixture::new(&MINIMAL.replace(
        "[[stage]]",
        "[pool]\nmax_workers = 0\nretries = \"2\"\n[[stage]]",
    ));
    let err = fx.load().unwrap_err();
    let d = about(&err, "pool.max_workers");
    assert!(d.message.contains("must be at least 1, found 0"), "{d}");
    assert!(d.help.as_deref().unwrap().contains("CPU count"));
    let d = about(&err, "pool.retries");
    assert_eq!(d.help.as_deref(), Some("write 2 without quotes"));
}

#[test]
fn bad_values_from_env_and_set_name_the_layer() {
    let fx = Fixture::new(MINIMAL);
    let err = fx.errors(
        &[("LOKY_RUN_POOL_MAX_WORKERS", "two")],
        &["pool.retries=-1", "stage.squares.idle_timeout=10 parsecs"],
    );
    assert_eq!(err.diagnostics.len(), 3, "{err}");
    let d = about(&err, "pool.max_workers");
    assert_eq!(d.layer, Layer::Env("LOKY_RUN_POOL_MAX_WORKERS".into()));
    assert!(d.location.is_none());
    assert_eq!(
        d.message,
        "invalid value for `pool.max_workers` from environment variable `LOKY_RUN_POOL_MAX_WORKERS`: \
         expected an integer ≥ 1, found string \"two\""
    );
    let d = about(&err, "pool.retries");
    assert_eq!(d.layer, Layer::Set("pool.retries=-1".into()));
    assert!(d.message.contains("from `--set pool.retries=-1`"), "{d}");
    let d = about(&err, "stage.squares.idle_timeout");
    assert_eq!(
        d.layer,
        Layer::Set("stage.squares.idle_timeout=10 parsecs".into())
    );
    assert!(d.message.contains("parsecs"));
    // No `-->` line for these layers.
    assert!(!err.to_string().contains("-->"), "{err}");
}

#[test]
fn unknown_keys_from_env_and_set() {
    let fx = Fixture::new(MINIMAL);
    let err = fx.errors(
        &[
            ("LOKY_RUN_POOL_MAX_WORKER", "2"),
            ("LOKY_RUN_STAGE_SQUARE_RETRIES", "2"),
            ("LOKY_RUN_PLUGIN_PATH", "/somewhere"),
            ("LOKY_RUN_SOMETHING_ELSE", "x"),
        ],
        &[
            "pool.max_worker=2",
            "stage.sqares.retries=1",
            "pol.retries=1",
        ],
    );
    assert_eq!(err.diagnostics.len(), 5, "{err}");
    let by_layer = |layer: Layer| {
        err.diagnostics
            .iter()
            .find(|d| d.layer == layer)
            .unwrap_or_else(|| panic!("{layer:?}: {err}"))
    };
    let d = by_layer(Layer::Env("LOKY_RUN_POOL_MAX_WORKER".into()));
    assert_eq!(
        d.help.as_deref(),
        Some("did you mean `LOKY_RUN_POOL_MAX_WORKERS`?")
    );
    let d = by_layer(Layer::Env("LOKY_RUN_STAGE_SQUARE_RETRIES".into()));
    assert_eq!(
        d.help.as_deref(),
        Some("did you mean `LOKY_RUN_STAGE_SQUARES_RETRIES`?")
    );
    let d = by_layer(Layer::Set("pool.max_worker=2".into()));
    assert_eq!(d.help.as_deref(), Some("did you mean `pool.max_workers`?"));
    let d = by_layer(Layer::Set("stage.sqares.retries=1".into()));
    assert_eq!(
        d.help.as_deref(),
        Some("did you mean `stage.squares.retries`?")
    );
    let d = by_layer(Layer::Set("pol.retries=1".into()));
    assert_eq!(d.help.as_deref(), Some("did you mean `pool.retries`?"));
}

#[test]
fn layers_apply_file_then_env_then_set() {
    let fx = Fixture::new(&MINIMAL.replace(
        "[[stage]]",
        "[pool]\nmax_workers = 2\nretries = 1\n\n[[stage]]",
    ));
    let workers = |p: &Pipeline| p.stages[0].settings.max_workers.map(NonZeroUsize::get);

    let p = fx.load().unwrap();
    assert_eq!(workers(&p), Some(2));

    let env = [("LOKY_RUN_POOL_MAX_WORKERS", "3")];
    let p = fx.load_with(&env, &[]).unwrap();
    assert_eq!(workers(&p), Some(3));
    assert_eq!(p.stages[0].settings.retries, 1);

    let loaded =
        load_with_origins(&fx.opts(&env, &["pool.max_workers=4", "pool.max_workers=5"])).unwrap();
    assert_eq!(workers(&loaded.pipeline), Some(5), "the last --set wins");
    assert_eq!(
        loaded.origins["stage.squares.max_workers"].layer,
        Layer::Set("pool.max_workers=5".into())
    );
    let retries = &loaded.origins["stage.squares.retries"];
    assert!(matches!(retries.layer, Layer::File(_)));
    assert_eq!(retries.location.as_ref().unwrap().line, 8);
    assert_eq!(
        loaded.origins["stage.squares.chunksize"].layer,
        Layer::Default
    );

    // Pipeline keys too; a textual key keeps the text.
    let p = fx
        .load_with(
            &[("LOKY_RUN_PIPELINE_NAME", "2024")],
            &["pipeline.grace_period=1s"],
        )
        .unwrap();
    assert_eq!(p.name, "2024");
    assert_eq!(p.grace_period, Duration::from_secs(1));
    let p = fx
        .load_with(
            &[("LOKY_RUN_PIPELINE_NAME", "2024")],
            &["pipeline.name=\"final\""],
        )
        .unwrap();
    assert_eq!(p.name, "final");
}

#[test]
fn stage_overrides_from_env_and_set() {
    let fx = Fixture::new(
        r#"[pipeline]
name = "p"
plugins = ["demo"]

[pool]
retries = 1
env = { A = "file" }

[[stage]]
name = "squares"
task = "demo::square"
input = { items = [1, 2] }

[[stage]]
name = "sum-up"
task = "demo::echo"
input = { from = "squares" }
retries = 2
"#,
    );
    let p = fx
        .load_with(
            &[
                ("LOKY_RUN_STAGE_SUM_UP_RETRIES", "5"),
                ("LOKY_RUN_STAGE_SQUARES_CHUNKSIZE", "8"),
                ("LOKY_RUN_POOL_ENV", "{ B = \"env\" }"),
            ],
            &[
                "stage.squares.input.range=[0, 5]",
                "stage.squares.kill_workers=true",
                "stage.sum-up.reuse=never",
                "pool.env.C=3",
                "stage.squares.initializer={ task = \"demo::setup\" }",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let (sq, sum) = (&p.stages[0], &p.stages[1]);
    assert_eq!(
        sq.input,
        InputSpec::Range { start: 0, end: 5 },
        "an input override replaces the input"
    );
    assert!(sq.kill_workers);
    assert_eq!(
        sq.settings.chunksize,
        ChunkSize::Fixed(NonZeroUsize::new(8).unwrap())
    );
    assert_eq!(sq.settings.retries, 1);
    assert_eq!(
        sq.settings.initializer.as_ref().unwrap().task.to_string(),
        "demo::setup"
    );
    assert_eq!(sum.settings.retries, 5);
    assert_eq!(sum.settings.reuse, Reuse::Never);
    assert_eq!(sum.settings.chunksize, ChunkSize::Auto);
    // Tables merge across layers.
    let env: Vec<(&str, &str)> = sq
        .settings
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(env, [("A", "file"), ("B", "env"), ("C", "3")]);
    // --set over env for the same stage key.
    let p = fx
        .load_with(
            &[("LOKY_RUN_STAGE_SUM_UP_RETRIES", "5")],
            &["stage.sum-up.retries=7"],
        )
        .unwrap();
    assert_eq!(p.stages[1].settings.retries, 7);
}

#[test]
fn stage_pool_keys_override_the_pool() {
    let fx = Fixture::new(
        r#"[pipeline]
name = "p"
plugins = ["demo"]

[pool]
max_workers = 4
env = { A = "1", B = "2" }
task_timeout = "10s"

[[stage]]
name = "one"
task = "demo::square"
input = { range = [0, 3] }
max_workers = 1
env = { C = "3" }
task_timeout = "0s"

[[stage]]
name = "two"
task = "demo::square"
input = { range = [0, 3] }
"#,
    );
    let p = fx.load().unwrap();
    let (one, two) = (&p.stages[0].settings, &p.stages[1].settings);
    assert_eq!(one.max_workers, NonZeroUsize::new(1));
    assert_eq!(
        one.env.keys().collect::<Vec<_>>(),
        ["C"],
        "a stage's env replaces the pool's"
    );
    assert_eq!(one.task_timeout, None);
    assert_eq!(two.max_workers, NonZeroUsize::new(4));
    assert_eq!(two.env.len(), 2);
    assert_eq!(two.task_timeout, Some(Duration::from_secs(10)));
}

#[test]
fn semantic_errors_are_all_reported_naming_stages() {
    let fx = Fixture::new(
        r#"[pipeline]
name = "p"
plugins = []

[[stage]]
name = "first"
task = "demo::square"
input = { from = "second" }

[[stage]]
name = "second"
task = "demo::square"
input = { range = [5, 2] }

[[stage]]
name = "second"
task = "demo::square"
input = { from = "secnd" }

[[stage]]
name = "self"
task = "demo::square"
input = { from = "self" }

[[stage]]
name = "nothing"

[[stage]]
name = "both"
task = "demo::square"
input = { range = [0, 1], file = "x.jsonl" }

[[stage]]
name = "none"
task = "demo::square"
input = {}

[[stage]]
name = "missing-file"
task = "demo::square"
input = { file = "nope.jsonl" }
"#,
    );
    let err = fx.load().unwrap_err();
    let text = err.to_string();

    let d = about(&err, "pipeline.plugins");
    assert!(d.message.contains("is empty"), "{d}");
    assert_eq!(line(d), 3);

    let d = about(&err, "stage.first.input.from");
    assert_eq!(
        d.message,
        "stage `first` takes its input from stage `second`, which runs after it"
    );
    assert_eq!(line(d), 8);

    let d = about(&err, "stage.second.input.range");
    assert!(d.message.contains("[5, 2] starts after it ends"), "{d}");
    assert_eq!(line(d), 13);

    let d = about(&err, "stage.second.name");
    assert!(
        d.message
            .contains("duplicate stage name `second` (stages #2 and #3)"),
        "{d}"
    );
    assert_eq!(line(d), 16);

    let d = err
        .diagnostics
        .iter()
        .find(|d| d.message.contains("unknown stage `secnd`"))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(d.help.as_deref(), Some("did you mean `second`?"));
    assert_eq!(line(d), 18);

    let d = about(&err, "stage.self.input.from");
    assert!(d.message.contains("from itself"), "{d}");

    let d = about(&err, "stage.nothing.task");
    assert_eq!(d.message, "missing required key `task` in stage `nothing`");
    assert_eq!(line(d), 25, "points at the [[stage]] header");
    assert_eq!(d.location.as_ref().unwrap().line_text, "[[stage]]");
    about(&err, "stage.nothing.input");

    let d = about(&err, "stage.both.input");
    assert!(d.message.contains("`range` and `file`"), "{d}");
    assert_eq!(line(d), 31);

    let d = about(&err, "stage.none.input");
    assert!(d.message.contains("needs one of"), "{d}");

    let d = about(&err, "stage.missing-file.input.file");
    assert!(d.message.contains("stage `missing-file`"), "{d}");
    assert!(d.message.contains("does not exist"), "{d}");
    assert!(
        d.message
            .contains(&fx.base().join("nope.jsonl").display().to_string()),
        "{d}"
    );
    assert_eq!(line(d), 41);

    assert_eq!(err.diagnostics.len(), 11, "{text}");
}

#[test]
fn missing_sections_and_no_stages() {
    let fx = Fixture::new("[pool]\nretries = 1\n");
    let err = fx.load().unwrap_err();
    let d = about(&err, "pipeline");
    assert_eq!(d.message, "missing required section [pipeline]");
    assert!(d.help.as_deref().unwrap().contains("plugins = "), "{d}");
    assert!(
        err.diagnostics
            .iter()
            .all(|d| d.key.as_deref() != Some("pipeline.name"))
    );
    let d = about(&err, "stage");
    assert_eq!(d.message, "the pipeline has no stages");
    assert!(d.help.as_deref().unwrap().contains("[[stage]]"));
    assert!(err.to_string().contains(" --> "), "{err}");

    let fx = Fixture::new("[pipeline]\nplugins = [\"demo\"]\n[stage]\nname = \"x\"\n");
    let err = fx.load().unwrap_err();
    let d = about(&err, "pipeline.name");
    assert_eq!(line(d), 1);
    let d = about(&err, "stage");
    assert!(d.message.contains("array of tables"), "{d}");
    assert_eq!(line(d), 3);

    let fx = Fixture::new("name = \"x\"\n[pipeline]\nplugins = [\"demo\"]\n");
    let err = fx.load().unwrap_err();
    let d = about(&err, "name");
    assert_eq!(d.message, "unknown key `name` at the top level");
    assert!(d.help.as_deref().unwrap().contains("[pipeline]"), "{d}");
}

#[test]
fn unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let err = load(&LoadOptions {
        file: missing.clone(),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.diagnostics.len(), 1);
    let text = err.to_string();
    assert!(text.contains("cannot read pipeline file"), "{text}");
    assert!(text.contains("nope.toml"), "{text}");
    assert!(text.contains("No such file"), "{text}");

    let err = load(&LoadOptions {
        file: dir.path().to_path_buf(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, b"name = \"\xff\"\n").unwrap();
    let err = load(&LoadOptions {
        file: bad,
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("not UTF-8"), "{err}");
}

#[test]
fn plugin_classification() {
    let fx = Fixture::new("");
    let base = fx.base();
    std::fs::create_dir_all(base.join("crates/myplugin")).unwrap();
    std::fs::write(
        &fx.file,
        MINIMAL.replace(
            "plugins = [\"demo\"]",
            "plugins = [\"demo\", \"demo_two\", \"crates/myplugin\", \"./crates/myplugin/\", \"../elsewhere/libp.so\", \"libq.so\", \".hidden\", \"crates/missing\"]",
        ),
    )
    .unwrap();
    let p = fx.load().unwrap_or_else(|e| panic!("{e}"));
    let kinds: Vec<PluginSpecKind> = p.plugins.into_iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        vec![
            PluginSpecKind::Name("demo".into()),
            PluginSpecKind::Name("demo_two".into()),
            PluginSpecKind::Crate(base.join("crates/myplugin")),
            PluginSpecKind::Crate(base.join("crates/myplugin/")),
            PluginSpecKind::Library(base.join("..").join("elsewhere/libp.so")),
            PluginSpecKind::Library(base.join("libq.so")),
            PluginSpecKind::Library(base.join(".hidden")),
            PluginSpecKind::Library(base.join("crates/missing")),
        ]
    );
    for k in &kinds {
        if let PluginSpecKind::Crate(p) | PluginSpecKind::Library(p) = k {
            assert!(p.is_absolute());
        }
    }
}

#[test]
fn paths_from_set_are_relative_to_the_current_directory() {
    let fx = Fixture::new(MINIMAL);
    let cwd = std::env::current_dir().unwrap();
    let p = fx
        .load_with(
            &[],
            &[
                "pipeline.output_dir=elsewhere/out",
                "pipeline.plugins=[\"./x/libp.so\"]",
            ],
        )
        .unwrap();
    assert_eq!(p.output_dir, cwd.join("elsewhere/out"));
    assert_eq!(
        p.plugins[0].kind,
        PluginSpecKind::Library(cwd.join("x/libp.so"))
    );
    let abs = fx.base().join("o");
    let p = fx
        .load_with(
            &[("LOKY_RUN_PIPELINE_OUTPUT_DIR", abs.to_str().unwrap())],
            &[],
        )
        .unwrap();
    assert_eq!(p.output_dir, abs);
    // An input file from --set: relative to the current directory, must exist.
    let input = fx.base().join("in.jsonl");
    std::fs::write(&input, "1\n").unwrap();
    let arg = format!("stage.squares.input.file={}", input.display());
    let p = fx.load_with(&[], &[arg.as_str()]).unwrap();
    assert_eq!(p.stages[0].input, InputSpec::File(input));
    let err = fx.errors(&[], &["stage.squares.input.file=surely-missing.jsonl"]);
    let d = about(&err, "stage.squares.input.file");
    assert!(
        d.message
            .contains(&cwd.join("surely-missing.jsonl").display().to_string()),
        "{d}"
    );
    assert!(d.help.as_deref().unwrap().contains("current directory"));
}

#[test]
fn diagnostics_never_panic_on_odd_files() {
    for text in [
        "",
        "pipeline = 3\npool = []\nstage = 4\n",
        "[[stage]]\n[[stage]]\nname = 3\n",
        "stage = [1, { name = \"a\" }]\n",
        "[pipeline]\nname = \"\"\nplugins = [\"\"]\n[[stage]]\nname = \"a\"\ntask = \"t\"\ninput = []\n",
        "[pool]\nenv = { \"\" = \"x\", \"A=B\" = \"y\" }\ninitializer = { args = 1 }\n",
        "[pipeline]\nname = \"é\"\nplugins = [\"é/ü.so\"]\n[[stage]]\nname = \"ü\"\ntask = \"t\"\ninput = { items = [nan] }\n",
        "\u{feff}[pipeline]\n",
    ] {
        let fx = Fixture::new(text);
        let err = fx.load().expect_err(text);
        assert!(!err.diagnostics.is_empty());
        let _ = err.to_string();
    }
}

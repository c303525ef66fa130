//! `loky-run new-plugin NAME [--path DIR]`: a plugin crate that builds and runs as it is.
//!
//! The crate has one example task with a unit test, and a pipeline that runs it by naming the
//! crate directory (loky-run builds it with cargo before each run). It depends on `loky-run-plugin`:
//! by path when this runner comes from a checkout of the loky-run repository (found through
//! `LOKY_RUN_PLUGIN_API`, the `target/` directory the binary lives in, or the checkout it was
//! built from), by version otherwise, with a note that the crate is not on crates.io yet. Its
//! `Cargo.toml` has an empty `[workspace]` table so that it is a workspace of its own even when
//! created inside another one (such as the loky-run repository).

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::schema;

/// Names a plugin crate cannot take: Rust keywords and the crates a plugin builds against.
const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "Self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "gen",
    "macro",
    "override",
    "priv",
    "try",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "std",
    "core",
    "alloc",
    "proc_macro",
    "test",
    "loky-run-plugin",
    "plugin-api",
    "plugin_api",
    "loky_run_plugin",
    "serde",
    "abi_stable",
];

/// Environment variable naming the `loky-run-plugin` crate directory to depend on by path.
pub const PLUGIN_API_VAR: &str = "LOKY_RUN_PLUGIN_API";

/// How the scaffold depends on `loky-run-plugin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiSource {
    /// A path to the crate's directory (a loky-run checkout).
    Path(PathBuf),
    /// `loky-run-plugin = "MAJOR.MINOR"`.
    Version(String),
}

/// What was created.
#[derive(Debug)]
pub struct Created {
    pub name: String,
    pub dir: PathBuf,
    pub api: ApiSource,
}

/// Checks that `name` can be a crate name and a plugin name.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!(
            "`{name}` cannot be a plugin name: use ASCII letters, digits, `_` and `-`, starting \
             with a letter (such as `wordcount` or `my-tasks`)"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!(
            "`{name}` cannot be a plugin name: it is a Rust keyword or the name of a crate a \
             plugin depends on; choose another"
        ));
    }
    Ok(())
}

/// Whether `dir` holds the `loky-run-plugin` crate.
fn is_plugin_api(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
        return false;
    };
    let Ok(manifest) = toml::from_str::<toml::Table>(&text) else {
        return false;
    };
    manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        == Some("loky-run-plugin")
}

/// The `loky-run-plugin` crate of the loky-run checkout this runner belongs to, if any: from
/// `LOKY_RUN_PLUGIN_API` (an error if it does not name the crate), else next to the `target/`
/// directory the binary is in, else in the checkout the binary was built from.
pub fn find_plugin_api(env_value: Option<&std::ffi::OsStr>) -> Result<Option<PathBuf>, String> {
    if let Some(value) = env_value.filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(value);
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        if is_plugin_api(&dir) {
            return Ok(Some(std::fs::canonicalize(&dir).unwrap_or(dir)));
        }
        return Err(format!(
            "{PLUGIN_API_VAR}={} is not the loky-run-plugin crate's directory (no Cargo.toml of a \
             package named loky-run-plugin there)",
            dir.display()
        ));
    }
    let exe = crate::sys::current_exe();
    let from_target = exe
        .ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "target"))
        .and_then(Path::parent)
        .map(|repo| repo.join("plugin-api"));
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|repo| repo.join("plugin-api"));
    Ok([from_target, built_from]
        .into_iter()
        .flatten()
        .find(|d| is_plugin_api(d))
        .map(|d| std::fs::canonicalize(&d).unwrap_or(d)))
}

/// `0.1` for loky-run-plugin 0.1.x: what a version requirement should say (compatible releases).
fn api_requirement() -> String {
    let mut parts = loky_run_plugin::API_VERSION.split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => format!("{major}.{minor}"),
        _ => loky_run_plugin::API_VERSION.to_string(),
    }
}

/// Creates the plugin crate `name` in `dir`.
pub fn create(name: &str, dir: &Path, api: ApiSource) -> Result<Created, Error> {
    check_name(name).map_err(Error::Usage)?;
    if dir.exists() {
        let empty = dir.is_dir()
            && std::fs::read_dir(dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
        if !empty {
            return Err(Error::Usage(format!(
                "{} already exists and is not an empty directory; choose another NAME or --path",
                dir.display()
            )));
        }
    }
    let existed = dir.exists();
    if let Err(e) = write_files(name, dir, &api) {
        // Leave nothing half-made (a second try would find the directory not empty): remove
        // what was written, keeping a directory that was there (empty) before.
        let _ = std::fs::remove_dir_all(dir);
        if existed {
            let _ = std::fs::create_dir(dir);
        }
        return Err(e);
    }
    Ok(Created {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        api,
    })
}

fn write_files(name: &str, dir: &Path, api: &ApiSource) -> Result<(), Error> {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).map_err(|source| Error::Io {
        context: format!("cannot create directory {}", src.display()),
        source,
    })?;
    let files = [
        ("Cargo.toml", cargo_toml(name, api)),
        ("src/lib.rs", lib_rs(name)),
        ("pipeline.toml", pipeline_toml(name)),
        ("pipeline.schema.json", schema::json_schema_text()),
        (".gitignore", "/target\n/out\n".to_string()),
        ("README.md", readme(name)),
    ];
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|source| Error::Io {
            context: format!("cannot write {}", path.display()),
            source,
        })?;
    }
    Ok(())
}

fn cargo_toml(name: &str, api: &ApiSource) -> String {
    let dependency = match api {
        ApiSource::Path(path) => {
            let path = serde_json::to_string(&path.display().to_string())
                .unwrap_or_else(|_| format!("\"{}\"", path.display()));
            format!(
                "# The loky-run-plugin of the loky-run checkout this crate was created from.\n\
                 loky-run-plugin = {{ path = {path} }}\n"
            )
        }
        ApiSource::Version(version) => format!(
            "# loky-run-plugin is not published on crates.io yet: until it is, replace this line with a\n\
             # path to a loky-run checkout, loky-run-plugin = {{ path = \"/path/to/loky-run/plugin-api\" }},\n\
             # or a git dependency, loky-run-plugin = {{ git = \"<loky-run repository URL>\" }}.\n\
             loky-run-plugin = \"{version}\"\n"
        ),
    };
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the shared library loky-run's workers load; rlib: so that `cargo test` can call the tasks.
crate-type = ["cdylib", "rlib"]

[dependencies]
{dependency}serde = {{ version = "1", features = ["derive"] }}

# A workspace of its own, even when created inside another one (such as a loky-run checkout).
[workspace]
"#
    )
}

fn lib_rs(name: &str) -> String {
    format!(
        r#"//! `{name}`: a loky-run task plugin.
//!
//! A task is a plain function `fn(I) -> O` or `fn(I) -> Result<O, E>` where `I` implements
//! `serde::Deserialize`, `O` implements `serde::Serialize` and `E` implements `Display`.
//! Inputs and outputs travel as JSON values, so `I` and `O` can be numbers, strings, `Vec`s or
//! your own structs with `#[derive(Deserialize)]` / `#[derive(Serialize)]`.
//!
//! `export_plugin!` at the bottom makes the functions callable as `{name}::<function>`. An
//! `Err` becomes a `task_error` record and a panic a `panic` record; neither takes the worker
//! process down. Print freely: loky-run forwards the lines, prefixed with the worker id.

/// The example task: `x` cubed, or an error when that does not fit in 64 bits.
pub fn cube(x: i64) -> Result<i64, String> {{
    x.checked_mul(x)
        .and_then(|square| square.checked_mul(x))
        .ok_or_else(|| format!("the cube of {{x}} does not fit in a 64-bit integer"))
}}

loky_run_plugin::export_plugin! {{
    name: "{name}",
    tasks: [cube],
}}

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn cubes() {{
        assert_eq!(cube(3), Ok(27));
        assert_eq!(cube(-2), Ok(-8));
        assert!(cube(i64::MAX).is_err());
    }}
}}
"#
    )
}

fn pipeline_toml(name: &str) -> String {
    format!(
        r#"#:schema ./pipeline.schema.json

# Run it with: loky-run pipeline.toml
# (loky-run builds this crate with cargo, in release mode, before every run.)

[pipeline]
name = "{name}"
plugins = ["."]                 # this crate's directory
output_dir = "out"              # relative to this file: results go to out/<stage>.jsonl

[pool]
max_workers = 2

[[stage]]
name = "cubes"
task = "{name}::cube"
input = {{ range = [0, 10] }}     # or {{ items = [...] }}, {{ file = "inputs.jsonl" }}, {{ from = "a_stage" }}
"#
    )
}

fn readme(name: &str) -> String {
    format!(
        r#"# {name}

A [loky-run](https://example.invalid/loky-run) task plugin.

```sh
cargo test                  # build the plugin and run its unit tests
loky-run pipeline.toml      # build it (release) and run pipeline.toml: results in out/cubes.jsonl
```

- `src/lib.rs`: the tasks. Add a function, list it in `export_plugin!`, and name it in a stage
  as `{name}::<function>`.
- `pipeline.toml`: the pipeline. `loky-run show-config pipeline.toml` shows every setting and
  where it came from; `loky-run tasks .` lists the tasks this crate exports.
- `pipeline.schema.json`: the pipeline file's JSON schema, for editors (Taplo, Even Better
  TOML) through the `#:schema` line of `pipeline.toml`. Refresh it after upgrading loky-run
  with `loky-run schema > pipeline.schema.json`.
"#
    )
}

/// What to tell the user: the files, and the two commands that build, test and run the crate.
pub fn next_steps(created: &Created, cwd: &Path) -> String {
    let shown = created
        .dir
        .strip_prefix(cwd)
        .ok()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| created.dir.clone(), Path::to_path_buf);
    let d = shell_word(&shown.display().to_string());
    let name = &created.name;
    let api = match &created.api {
        ApiSource::Path(p) => format!("loky-run-plugin from {}", p.display()),
        ApiSource::Version(v) => format!("loky-run-plugin = \"{v}\" (see the note in it)"),
    };
    let mut out = format!(
        "Created plugin crate `{name}` in {}\n\
         \x20 {d}/Cargo.toml      {api}\n\
         \x20 {d}/src/lib.rs      the task {name}::cube, with a unit test\n\
         \x20 {d}/pipeline.toml   a pipeline running {name}::cube over 0..10\n\n\
         Build and test the plugin, then run its pipeline:\n\n\
         \x20 cargo test --manifest-path {d}/Cargo.toml\n\
         \x20 {} {d}/pipeline.toml\n",
        shown.display(),
        runner_command(),
    );
    if let ApiSource::Version(_) = created.api {
        out.push_str(&format!(
            "\nnote: loky-run-plugin is not on crates.io yet, so the first command fails until \
             {d}/Cargo.toml points at a loky-run checkout\n\
             \x20     (loky-run-plugin = {{ path = \".../loky-run/plugin-api\" }}) or its git \
             repository; set {PLUGIN_API_VAR}=DIR to have new-plugin write the path itself.\n"
        ));
    }
    out
}

/// `loky-run` when that is this binary on the `PATH`, else this binary's full path.
fn runner_command() -> String {
    let exe = crate::sys::current_exe();
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            std::fs::canonicalize(d.join("loky-run"))
                .is_ok_and(|p| std::fs::canonicalize(exe).is_ok_and(|e| e == p))
        })
    });
    if on_path {
        "loky-run".into()
    } else {
        shell_word(&exe.display().to_string())
    }
}

/// A word as a shell reads it: quoted when it holds anything unusual.
pub fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The dependency to write: a path from a checkout, the version otherwise.
pub fn api_source(env_value: Option<&std::ffi::OsStr>) -> Result<ApiSource, Error> {
    Ok(match find_plugin_api(env_value).map_err(Error::Usage)? {
        Some(path) => ApiSource::Path(path),
        None => ApiSource::Version(api_requirement()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["demo2", "my-tasks", "word_count", "A1"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "2x",
            "-x",
            "a b",
            "a/b",
            "é",
            "fn",
            "test",
            "loky-run-plugin",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn this_checkout_is_found_and_the_variable_is_checked() {
        let found = find_plugin_api(None)
            .unwrap()
            .expect("built inside the repository");
        assert!(found.ends_with("plugin-api"), "{}", found.display());
        let explicit = find_plugin_api(Some(found.as_os_str())).unwrap();
        assert_eq!(explicit.as_deref(), Some(found.as_path()));
        assert!(find_plugin_api(Some("/nonexistent".as_ref())).is_err());
    }

    #[test]
    fn files_are_written_and_name_the_dependency() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("demo2");
        let created = create("demo2", &dir, ApiSource::Version("0.1".into())).unwrap();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let parsed: toml::Table = toml::from_str(&manifest).unwrap();
        assert_eq!(
            parsed["dependencies"]["loky-run-plugin"].as_str(),
            Some("0.1")
        );
        assert!(parsed["workspace"].as_table().unwrap().is_empty());
        assert!(manifest.contains("not published on crates.io"));
        let pipeline = std::fs::read_to_string(dir.join("pipeline.toml")).unwrap();
        assert!(pipeline.starts_with("#:schema ./pipeline.schema.json\n"));
        let steps = next_steps(&created, tmp.path());
        assert!(
            steps.contains("cargo test --manifest-path demo2/Cargo.toml"),
            "{steps}"
        );
        assert!(
            steps.contains("note: loky-run-plugin is not on crates.io"),
            "{steps}"
        );
        // Not over an existing crate.
        assert!(create("demo2", &dir, ApiSource::Version("0.1".into())).is_err());
        // A path dependency is a TOML string, whatever the path.
        let with_path = cargo_toml("x", &ApiSource::Path("/a \"b\"/loky-run-plugin".into()));
        let parsed: toml::Table = toml::from_str(&with_path).unwrap();
        assert_eq!(
            parsed["dependencies"]["loky-run-plugin"]["path"].as_str(),
            Some("/a \"b\"/loky-run-plugin")
        );
    }
}

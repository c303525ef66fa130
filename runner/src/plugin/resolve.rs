//! Turning `[pipeline] plugins` entries into library files: search by name, take a path, or build
//! a plugin crate with cargo.

use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::{PluginSpec, PluginSpecKind};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "plugin `{name}` not found; looked for {file} in:\n{}{}",
        list(searched),
        list_unusable(unusable)
    )]
    NotFound {
        name: String,
        file: String,
        searched: Vec<PathBuf>,
        /// The closest name of a plugin library found in those directories.
        suggestion: Option<String>,
        /// Files of that name that are there but cannot be used, and why.
        unusable: Vec<(PathBuf, String)>,
    },
    #[error("plugin file {} does not exist", .0.display())]
    Missing(PathBuf),
    /// A symbolic link whose target does not exist.
    #[error("plugin file {} is a symbolic link to {}, which does not exist", path.display(), target.display())]
    DanglingLink { path: PathBuf, target: PathBuf },
    /// Resolving the path met a loop of symbolic links (ELOOP).
    #[error("plugin file {} {}", path.display(), describe_loop(chain))]
    SymlinkLoop {
        path: PathBuf,
        /// The links followed from `path` until one came back (empty when the loop is in a
        /// directory of the path, or the chain is merely too long).
        chain: Vec<PathBuf>,
    },
    /// The path exists (or may) but cannot be examined: permissions, a file used as a
    /// directory, an I/O error.
    #[error("cannot access plugin file {}: {source}", path.display())]
    Inaccessible {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("building plugin crate {} failed ({status}); see cargo's messages above", dir.display())]
    BuildFailed { dir: PathBuf, status: String },
    #[error("could not run cargo to build plugin crate {}: {source}", dir.display())]
    Cargo {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin crate {} builds no cdylib: add `[lib] crate-type = [\"cdylib\"]` to its Cargo.toml", .0.display())]
    NoCdylib(PathBuf),
    #[error("plugin crate directory {} has no Cargo.toml; name the directory of a plugin crate (`loky-run new-plugin NAME` creates one)", .0.display())]
    NoManifest(PathBuf),
    #[error("{} is a Cargo workspace, not a plugin crate: name the directory of the plugin crate in it{}", dir.display(), members_hint(members))]
    Workspace { dir: PathBuf, members: Vec<String> },
}

fn members_hint(members: &[String]) -> String {
    match members {
        [] => String::new(),
        m => format!(" (its members: {})", m.join(", ")),
    }
}

/// How a `plugins` entry of a pipeline, or the argument of `loky-run tasks`, is read; `at` is
/// the entry resolved against its base directory. A path (with a `/`, ending in `.so`, or
/// starting with `.`) names a crate directory or a library file; a bare name names the crate
/// directory of that name when it holds a Cargo.toml, and is searched for as `lib<name>.so`
/// otherwise. One rule for both, so that what `tasks` finds, a pipeline finds.
pub fn classify(written: &str, at: PathBuf) -> PluginSpecKind {
    let path_like = written.contains('/') || written.ends_with(".so") || written.starts_with('.');
    if path_like {
        if at.is_dir() {
            PluginSpecKind::Crate(at)
        } else {
            PluginSpecKind::Library(at)
        }
    } else if at.join("Cargo.toml").is_file() {
        PluginSpecKind::Crate(at)
    } else {
        PluginSpecKind::Name(written.to_owned())
    }
}

/// What to do about a plugin that was not found (`base`: the directory names are resolved
/// against).
pub fn not_found_help(e: &ResolveError, base: &Path) -> Option<String> {
    let ResolveError::NotFound {
        name, suggestion, ..
    } = e
    else {
        return None;
    };
    if let Some(s) = suggestion {
        return Some(format!("did you mean `{s}`?"));
    }
    let dir = base.join(name);
    Some(if dir.is_dir() {
        format!(
            "{} is a directory, but holds no Cargo.toml, so it is not read as a plugin crate (`loky-run new-plugin {name}` creates one)",
            dir.display()
        )
    } else {
        format!(
            "name a plugin crate directory or library by its path (`./{name}`, `./path/lib{name}.so`), or add the library's directory to LOKY_RUN_PLUGIN_PATH"
        )
    })
}

fn list_unusable(files: &[(PathBuf, String)]) -> String {
    files
        .iter()
        .map(|(p, why)| format!("\n  (found {}, but {why})", p.display()))
        .collect()
}

fn describe_loop(chain: &[PathBuf]) -> String {
    if chain.len() < 2 {
        return "cannot be opened: too many levels of symbolic links in its path (ELOOP); \
                there is a symlink loop in it: make the links point to the plugin's .so file"
            .to_owned();
    }
    let shown: Vec<String> = chain.iter().map(|p| p.display().to_string()).collect();
    format!(
        "is a loop of symbolic links ({}; ELOOP): make it point to the plugin's .so file",
        shown.join(" -> ")
    )
}

/// Checks that a plugin file named by path can be opened, saying why not.
fn check_library_path(path: &Path) -> Result<(), ResolveError> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::read_link(path) {
                // The last component is a link; its target (or a link further on) is missing.
                Ok(target) => Err(ResolveError::DanglingLink {
                    path: path.to_owned(),
                    target,
                }),
                Err(_) => Err(ResolveError::Missing(path.to_owned())),
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(ResolveError::SymlinkLoop {
            path: path.to_owned(),
            chain: link_chain(path),
        }),
        Err(source) => Err(ResolveError::Inaccessible {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The symbolic links followed from `path`, as written in each link, up to and including the
/// first one seen twice; empty if the chain ends, or runs longer than the kernel follows,
/// without coming back.
fn link_chain(path: &Path) -> Vec<PathBuf> {
    let mut shown = vec![path.to_owned()];
    let mut seen = std::collections::HashSet::new();
    let mut current = path.to_owned();
    for _ in 0..40 {
        // Where the link itself is, with the directories above it resolved.
        let dir = match current.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let (Ok(dir), Some(name)) = (std::fs::canonicalize(dir), current.file_name()) else {
            return Vec::new();
        };
        if !seen.insert(dir.join(name)) {
            return shown;
        }
        let Ok(target) = std::fs::read_link(&current) else {
            return Vec::new();
        };
        current = dir.join(&target); // a relative target is relative to the link's directory
        shown.push(target);
    }
    Vec::new()
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("  {}", p.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The file name a plugin crate named `name` builds to.
pub fn library_file_name(name: &str) -> String {
    format!("lib{}.so", name.replace('-', "_"))
}

/// Where plugins named by a bare name are searched, in order: the pipeline's directory,
/// `LOKY_RUN_PLUGIN_PATH`, then the cargo target directories next to this binary.
pub fn search_dirs(base_dir: &Path, plugin_path: Option<&std::ffi::OsStr>) -> Vec<PathBuf> {
    let mut dirs = vec![base_dir.to_owned()];
    if let Some(p) = plugin_path {
        dirs.extend(std::env::split_paths(p).filter(|p| !p.as_os_str().is_empty()));
    }
    // target/<profile>/loky-run, or target/<profile>/deps/... for test binaries.
    if let Some(exe_dir) = sys::current_exe().parent() {
        let target = exe_dir
            .ancestors()
            .find(|d| d.file_name().is_some_and(|n| n == "target"))
            .map(Path::to_owned);
        if !dirs.iter().any(|d| d == exe_dir) {
            dirs.push(exe_dir.to_owned());
        }
        if let Some(target) = target {
            for profile in ["release", "debug"] {
                let d = target.join(profile);
                if !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
    }
    dirs
}

/// Resolves one plugin entry to an absolute library path, building crates as needed.
pub fn resolve(spec: &PluginSpec, base_dir: &Path) -> Result<PathBuf, ResolveError> {
    match &spec.kind {
        PluginSpecKind::Library(path) => check_library_path(path).map(|()| path.clone()),
        PluginSpecKind::Name(name) => {
            let file = library_file_name(name);
            let searched = search_dirs(
                base_dir,
                std::env::var_os("LOKY_RUN_PLUGIN_PATH").as_deref(),
            );
            if let Some(found) = searched.iter().map(|d| d.join(&file)).find(|p| p.is_file()) {
                return Ok(found);
            }
            // Not found as a file: say so about entries of that name that are broken links or
            // loops, rather than only "not found".
            let unusable = searched
                .iter()
                .map(|d| d.join(&file))
                .filter(|p| p.symlink_metadata().is_ok())
                .filter_map(|p| {
                    let why = match check_library_path(&p) {
                        Ok(()) => "it is not a file".to_owned(),
                        Err(ResolveError::DanglingLink { target, .. }) => format!(
                            "it is a symbolic link to {}, which does not exist",
                            target.display()
                        ),
                        Err(ResolveError::SymlinkLoop { .. }) => {
                            "it is a loop of symbolic links (ELOOP)".to_owned()
                        }
                        Err(ResolveError::Inaccessible { source, .. }) => {
                            format!("it cannot be accessed: {source}")
                        }
                        Err(_) => return None,
                    };
                    Some((p, why))
                })
                .collect();
            // (A file of the very name is there, but unusable: no point suggesting it.)
            let available: Vec<String> = available_names(&searched)
                .into_iter()
                .filter(|n| *n != name.replace('-', "_"))
                .collect();
            let suggestion = crate::run::plan::closest(
                name,
                &available.iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .map(str::to_owned);
            Err(ResolveError::NotFound {
                name: name.clone(),
                file,
                searched,
                suggestion,
                unusable,
            })
        }
        PluginSpecKind::Crate(dir) => build_crate(dir),
    }
}

/// Names of the plugin libraries (`lib<name>.so`) in `dirs`, for "did you mean".
fn available_names(dirs: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(name.strip_prefix("lib")?.strip_suffix(".so")?.to_owned())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// What is shown of cargo's own lines when a plugin crate is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildOutput {
    /// As cargo writes them (`-v`, or a terminal).
    Shown,
    /// Held back, then one line if anything was compiled (a log: cargo's lines would be most
    /// of it); all of them if the build fails.
    Summed,
    /// Held back; shown only if the build fails (`-q`).
    Hidden,
}

/// Set once by the command line, like a log level (0 shown, 1 summed, 2 hidden).
static BUILD_OUTPUT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

pub fn set_build_output(mode: BuildOutput) {
    BUILD_OUTPUT.store(mode as u8, std::sync::atomic::Ordering::Relaxed);
}

fn build_output() -> BuildOutput {
    match BUILD_OUTPUT.load(std::sync::atomic::Ordering::Relaxed) {
        0 => BuildOutput::Shown,
        1 => BuildOutput::Summed,
        _ => BuildOutput::Hidden,
    }
}

/// Builds a plugin crate (release profile) and returns its cdylib, as cargo reports it.
pub fn build_crate(dir: &Path) -> Result<PathBuf, ResolveError> {
    check_crate_dir(dir)?;
    let mode = build_output();
    let hold = mode != BuildOutput::Shown;
    let started = std::time::Instant::now();
    let manifest = dir.join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--lib",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // On a terminal cargo draws its progress and colours there. Otherwise its messages are
        // passed on by us: cargo stops with an error when its stderr is a closed pipe, and
        // that must not fail the build (nor the run).
        .stderr(if std::io::stderr().is_terminal() && !hold {
            Stdio::inherit()
        } else {
            Stdio::piped()
        })
        .spawn()
        .map_err(|source| ResolveError::Cargo {
            dir: dir.to_owned(),
            source,
        })?;
    // Held: kept, and shown only if the build fails.
    let forward = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                match err.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) if hold => held.extend_from_slice(&buf[..n]),
                    Ok(n) => crate::console::write_stderr(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            held
        })
    });
    let wanted = std::fs::canonicalize(&manifest).unwrap_or(manifest);
    let mut found = None;
    let mut compiled = 0usize;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let Ok(line) = line else { break };
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        compiled += usize::from(msg["fresh"] == false);
        let same_manifest = msg["manifest_path"].as_str().is_some_and(|p| {
            std::fs::canonicalize(p)
                .map(|p| p == wanted)
                .unwrap_or(false)
        });
        let is_cdylib = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "cdylib"));
        if same_manifest && is_cdylib {
            found = msg["filenames"]
                .as_array()
                .and_then(|f| {
                    f.iter()
                        .filter_map(|f| f.as_str())
                        .find(|f| f.ends_with(".so"))
                })
                .map(PathBuf::from);
        }
    }
    let held = forward
        .and_then(|forward| forward.join().ok())
        .unwrap_or_default();
    let status = child.wait().map_err(|source| ResolveError::Cargo {
        dir: dir.to_owned(),
        source,
    })?;
    if !status.success() {
        crate::console::write_stderr(&held);
        return Err(ResolveError::BuildFailed {
            dir: dir.to_owned(),
            status: sys::describe_exit(status),
        });
    }
    if mode == BuildOutput::Summed && compiled > 0 {
        crate::console::write_stderr(
            format!(
                "built plugin crate {} ({compiled} crate(s) compiled in {:.1} s; `-v` shows cargo's output)\n",
                dir.display(),
                started.elapsed().as_secs_f64()
            )
            .as_bytes(),
        );
    }
    found.ok_or_else(|| ResolveError::NoCdylib(dir.to_owned()))
}

/// Refuses, before cargo runs, a directory cargo would refuse with its own words or build
/// the wrong thing in: no Cargo.toml, or a workspace root without a package of its own.
fn check_crate_dir(dir: &Path) -> Result<(), ResolveError> {
    let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
        return Err(ResolveError::NoManifest(dir.to_owned()));
    };
    let Ok(manifest) = toml::from_str::<toml::Table>(&text) else {
        return Ok(()); // cargo says what is wrong with it
    };
    match (manifest.get("package"), manifest.get("workspace")) {
        (None, Some(workspace)) => Err(ResolveError::Workspace {
            dir: dir.to_owned(),
            members: workspace
                .get("members")
                .and_then(|m| m.as_array())
                .map(|m| {
                    m.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_reads_plugin_entries() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir_all(base.join("wordstats")).unwrap();
        std::fs::write(
            base.join("wordstats/Cargo.toml"),
            "[package]\nname = \"w\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(base.join("plain")).unwrap();
        let kind = |w: &str| classify(w, base.join(w));
        assert_eq!(
            kind("wordstats"),
            PluginSpecKind::Crate(base.join("wordstats"))
        );
        // A directory without a Cargo.toml is no crate: the name is searched for.
        assert_eq!(kind("plain"), PluginSpecKind::Name("plain".into()));
        assert_eq!(kind("demo"), PluginSpecKind::Name("demo".into()));
        assert_eq!(kind("./plain"), PluginSpecKind::Crate(base.join("./plain")));
        assert_eq!(
            kind("libx.so"),
            PluginSpecKind::Library(base.join("libx.so"))
        );
    }

    #[test]
    fn crate_directories_cargo_would_refuse_are_refused_first() {
        let dir = tempfile::tempdir().unwrap();
        let err = build_crate(dir.path()).unwrap_err();
        assert!(matches!(err, ResolveError::NoManifest(_)), "{err}");
        std::fs::write(
            dir.path().join("Cargo.toml"),
            "[workspace]\nmembers = [\"a\", \"b\"]\n",
        )
        .unwrap();
        let err = build_crate(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is a Cargo workspace"), "{err}");
        assert!(err.to_string().contains("a, b"), "{err}");
    }

    #[test]
    fn file_names_use_underscores() {
        assert_eq!(library_file_name("my-plugin"), "libmy_plugin.so");
    }

    #[test]
    fn search_starts_at_the_pipeline_and_honours_plugin_path() {
        let dirs = search_dirs(Path::new("/pipes"), Some("/a:/b".as_ref()));
        assert_eq!(
            &dirs[..3],
            &[PathBuf::from("/pipes"), "/a".into(), "/b".into()]
        );
    }

    #[test]
    fn missing_names_list_where_they_looked() {
        let spec = PluginSpec {
            written: "nope".into(),
            kind: PluginSpecKind::Name("nope_such_plugin".into()),
        };
        let err = resolve(&spec, Path::new("/tmp")).unwrap_err().to_string();
        assert!(
            err.contains("libnope_such_plugin.so") && err.contains("/tmp"),
            "{err}"
        );
    }
}

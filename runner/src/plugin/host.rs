//! Loading a plugin library into the current process (a worker or a probe).
//!
//! Each plugin is opened with abi_stable's `RawLibrary` and checked through its own library
//! header: `RootModule::load_from_file` caches one module per type per process, which would hand
//! every plugin after the first the first plugin's module.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use abi_stable::library::{LibraryError, RawLibrary, RootModule, lib_header_from_raw_library};
use abi_stable::std_types::{RSlice, RVec};
use loky_run_plugin::{CallStatus, OutputSink, PluginModuleRef};

use super::{PluginInfo, TaskInfo, TaskKind};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin file {} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("{} is not a shared library ({what})", path.display())]
    NotSharedLibrary { path: PathBuf, what: String },
    #[error("{} could not be loaded: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    #[error(
        "{} is not a loky-run plugin: it exports no plugin root (build it with `loky_run_plugin::export_plugin!`)",
        .0.display()
    )]
    NotAPlugin(PathBuf),
    #[error(
        "{} was built against loky-run-plugin {plugin}, this runner has loky-run-plugin {runner}: rebuild the plugin against loky-run-plugin {runner}",
        path.display()
    )]
    IncompatibleVersion {
        path: PathBuf,
        plugin: String,
        runner: String,
    },
    #[error(
        "{} does not match this runner's plugin ABI (built against loky-run-plugin {plugin}, runner has {runner}): rebuild the plugin{detail}",
        path.display()
    )]
    Layout {
        path: PathBuf,
        plugin: String,
        runner: String,
        detail: String,
    },
}

/// A plugin loaded into this process. The library is never unloaded.
pub struct LoadedPlugin {
    pub module: PluginModuleRef,
    pub info: PluginInfo,
}

impl LoadedPlugin {
    /// Calls function `index` on one JSON input; `out` receives the output or the message.
    #[inline]
    pub fn call(&self, index: u32, input: &[u8], out: &mut RVec<u8>) -> CallStatus {
        (self.module.call())(index, RSlice::from_slice(input), out)
    }

    /// [`Self::call`] with a sink for an output over its `inline_limit`; `None` when the
    /// plugin was built against a loky-run-plugin without streamed calls (before 0.2.1).
    #[inline]
    pub fn call_streamed(
        &self,
        index: u32,
        input: &[u8],
        sink: &mut OutputSink,
        out: &mut RVec<u8>,
    ) -> Option<CallStatus> {
        let call = self.module.call_streamed()?;
        Some(call(index, RSlice::from_slice(input), sink, out))
    }

    /// Decodes one input for function `index` without calling it; `None` when the plugin was
    /// built against a loky-run-plugin without the check (0.1).
    pub fn check_input(&self, index: u32, input: &[u8], out: &mut RVec<u8>) -> Option<CallStatus> {
        let check = self.module.check_input()?;
        Some(check(index, RSlice::from_slice(input), out))
    }
}

/// Opens, checks and initializes the plugin at `path`. `verbose` keeps abi_stable's full layout
/// report in the error message (it is tens of KB).
pub fn load(path: &Path, verbose: bool) -> Result<LoadedPlugin, LoadError> {
    check_is_shared_library(path)?;

    // A first, plain dlopen: is it loadable at all, and does it export our root symbol?
    // SAFETY: loading a library runs its initializers; loading plugins is the point of a worker
    // (and of a probe process, which exists to take that risk away from the runner).
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::Open {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let symbol = format!("{}\0", abi_stable::library::ROOT_MODULE_LOADER_NAME);
    // SAFETY: we only test that the symbol exists; its value is not read through this type.
    let has_root = unsafe { library.get::<*const u8>(symbol.as_bytes()) }.is_ok();
    if !has_root {
        return Err(LoadError::NotAPlugin(path.to_owned()));
    }
    // Plugins are never unloaded (their code may still be referenced by leaked statics).
    std::mem::forget(library);

    let raw = RawLibrary::load_at(path).map_err(|e| LoadError::Open {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    // SAFETY: the library is leaked just below, so the `'static` header it returns stays valid.
    let header = unsafe { lib_header_from_raw_library(&raw) }.map_err(|e| LoadError::Open {
        path: path.to_owned(),
        reason: one_line(&e),
    })?;
    std::mem::forget(raw);

    let runner = PluginModuleRef::VERSION_STRINGS.version.as_str().to_owned();
    let plugin = header.version_strings().version.as_str().to_owned();
    if !versions_compatible(&plugin, &runner) {
        return Err(LoadError::IncompatibleVersion {
            path: path.to_owned(),
            plugin,
            runner,
        });
    }
    let module = header
        .init_root_module::<PluginModuleRef>()
        .map_err(|e| LoadError::Layout {
            path: path.to_owned(),
            plugin: plugin.clone(),
            runner: runner.clone(),
            detail: if verbose {
                format!("\n{e}")
            } else {
                " (run with -v for the full layout report)".to_owned()
            },
        })?;

    let tasks = module
        .tasks()
        .iter()
        .map(|t| TaskInfo {
            name: t.name.as_str().to_owned(),
            kind: if t.kind == loky_run_plugin::TaskKind::INITIALIZER {
                TaskKind::Initializer
            } else {
                TaskKind::Task
            },
            input_type: t.input_type.as_str().to_owned(),
            output_type: t.output_type.as_str().to_owned(),
        })
        .collect();
    let info = PluginInfo {
        path: path.to_owned(),
        name: module.name().as_str().to_owned(),
        version: module.version().as_str().to_owned(),
        api_version: plugin,
        tasks,
    };
    Ok(LoadedPlugin { module, info })
}

/// Same major version, and below 1.0 the same minor version too (semver's rule for 0.x).
pub fn versions_compatible(plugin: &str, runner: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(plugin), parse(runner)) {
        (Some((pmaj, pmin)), Some((rmaj, rmin))) => pmaj == rmaj && (rmaj > 0 || pmin == rmin),
        _ => false,
    }
}

fn check_is_shared_library(path: &Path) -> Result<(), LoadError> {
    let meta = std::fs::metadata(path).map_err(|_| LoadError::Missing(path.to_owned()))?;
    let not_lib = |what: &str| LoadError::NotSharedLibrary {
        path: path.to_owned(),
        what: what.to_owned(),
    };
    if meta.is_dir() {
        return Err(not_lib("it is a directory"));
    }
    let mut magic = [0u8; 4];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|e| LoadError::Open {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if n < 4 {
        return Err(not_lib("the file is empty or too short"));
    }
    if &magic != b"\x7fELF" {
        let what = if &magic == b"!<ar" {
            // `!<arch>`: a static archive, which is what an .rlib (or .a) is.
            "it is a static library (an .rlib or .a archive), not a shared one: build the crate \
             with `[lib] crate-type = [\"cdylib\"]` and name the lib<name>.so it makes, or the \
             crate's directory"
        } else if magic
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
        {
            "it is a text file"
        } else {
            "it is not an ELF file"
        };
        return Err(not_lib(what));
    }
    Ok(())
}

fn one_line(e: &LibraryError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rule() {
        assert!(versions_compatible("0.1.0", "0.1.3"));
        assert!(!versions_compatible("0.2.0", "0.1.0"));
        assert!(versions_compatible("1.4.0", "1.2.0"));
        assert!(!versions_compatible("2.0.0", "1.0.0"));
        assert!(!versions_compatible("garbage", "0.1.0"));
    }

    #[test]
    fn text_files_and_directories_are_not_libraries() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("x.so");
        std::fs::write(&text, "hello world").unwrap();
        assert!(matches!(
            load(&text, false),
            Err(LoadError::NotSharedLibrary { .. })
        ));
        assert!(matches!(
            load(dir.path(), false),
            Err(LoadError::NotSharedLibrary { .. })
        ));
        assert!(matches!(
            load(&dir.path().join("nope.so"), false),
            Err(LoadError::Missing(_))
        ));
    }
}

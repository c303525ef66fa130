//! What every benchmark starts with: the workspace and its target directory, a release build of
//! the runner and one plugin, and private copies of them (a rebuild while a benchmark runs must
//! not change what it measures).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root and its target directory (`CARGO_TARGET_DIR` honoured).
pub(crate) fn dirs() -> Result<(PathBuf, PathBuf), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_owned();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_relative() { root.join(t) } else { t })
        .unwrap_or_else(|| root.join("target"));
    Ok((root, target))
}

/// `cargo build --release -j2 -p loky-run -p PLUGIN` in the workspace.
pub(crate) fn release(root: &Path, plugin: &str) -> Result<(), String> {
    println!("== building: cargo build --release -j2 -p loky-run -p {plugin}");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let ok = Command::new(cargo)
        .args(["build", "--release", "-j2", "-p", "loky-run", "-p", plugin])
        .current_dir(root)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?
        .success();
    if ok {
        Ok(())
    } else {
        Err(format!("building loky-run and the {plugin} plugin failed"))
    }
}

/// Copies the release `loky-run` and `lib<plugin>.so` into `bin`: `(loky-run, plugin)`.
pub(crate) fn private_copies(
    target: &Path,
    bin: &Path,
    plugin: &str,
) -> Result<(PathBuf, PathBuf), String> {
    fs::create_dir_all(bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let copy = |name: &str| {
        let built = target.join("release").join(name);
        if !built.exists() {
            return Err(format!(
                "{} is missing: run `cargo build --release -j2 -p loky-run -p {plugin}` (or drop --no-build)",
                built.display()
            ));
        }
        let copy = bin.join(name);
        let _ = fs::remove_file(&copy);
        fs::copy(&built, &copy)
            .map_err(|e| format!("cannot copy {} to {}: {e}", built.display(), copy.display()))?;
        Ok(copy)
    };
    Ok((copy("loky-run")?, copy(&format!("lib{plugin}.so"))?))
}

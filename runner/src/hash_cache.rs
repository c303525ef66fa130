//! SHA-256 of files that rarely change (plugin libraries, input files), remembered between runs.
//!
//! Every run records the SHA-256 of its plugins (and input files) in the manifest; hashing a
//! 7 MB plugin is most of a 2-task run's start. The digest is kept in a small per-user cache,
//! keyed by what changes whenever the content may have changed: device, inode, size, mtime and
//! ctime (nanoseconds; ctime cannot be set back by a program, so a rewrite that restores the
//! mtime still misses). An entry is only written when the file's last change is at least
//! [`RACY`] older than the hash, as git does for its index: a write in the same timestamp tick
//! as the read could otherwise leave a stale digest behind.
//!
//! The cache is `$LOKY_RUN_CACHE_DIR`, else `$XDG_CACHE_HOME/loky-run`, else
//! `~/.cache/loky-run`, file `sha256-v1.tsv`; `LOKY_RUN_CACHE_DIR=` (empty) turns it off. It is
//! a convenience: any problem with it (unreadable, unwritable, garbage) means hashing the file.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A file changed less than this long before it was hashed is not cached.
const RACY: Duration = Duration::from_secs(2);
/// Entries kept (the most recent).
const KEEP: usize = 512;
const FILE: &str = "sha256-v1.tsv";

/// What identifies one version of a file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    fn key(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}",
            self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns
        )
    }
}

/// The cache directory, or `None` when there is none (or it is turned off).
fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LOKY_RUN_CACHE_DIR") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("loky-run"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/loky-run"))
}

/// The SHA-256 of `path` in hex, from the cache when it holds this version of the file.
pub fn sha256(path: &Path) -> io::Result<String> {
    sha256_in(cache_dir().as_deref(), path)
}

fn sha256_in(dir: Option<&Path>, path: &Path) -> io::Result<String> {
    cached_in(
        dir,
        FILE,
        path,
        "",
        |sha| sha.len() == 64,
        || crate::manifest::sha256_file(path),
    )
}

/// What `compute` says about the file at `path` (one line of text without tabs), remembered in
/// the cache file `name` for this version of the file (and `also`, a key of what else the
/// answer depends on); `valid` vets a remembered answer.
pub fn cached(
    name: &str,
    path: &Path,
    also: &str,
    valid: impl Fn(&str) -> bool,
    compute: impl FnOnce() -> io::Result<String>,
) -> io::Result<String> {
    cached_in(cache_dir().as_deref(), name, path, also, valid, compute)
}

fn cached_in(
    dir: Option<&Path>,
    name: &str,
    path: &Path,
    also: &str,
    valid: impl Fn(&str) -> bool,
    compute: impl FnOnce() -> io::Result<String>,
) -> io::Result<String> {
    let Some(dir) = dir else {
        return compute();
    };
    let Some(meta) = fs::metadata(path).ok().filter(fs::Metadata::is_file) else {
        return compute();
    };
    let stamp = Stamp::of(&meta);
    let key = format!("{}\t{also}", stamp.key());
    let cache = dir.join(name);
    let text = fs::read_to_string(&cache).unwrap_or_default();
    if let Some(value) = text.lines().find_map(|line| {
        let (entry, value) = line.rsplit_once('\t')?;
        (entry == key && valid(value)).then(|| value.to_owned())
    }) {
        return Ok(value);
    }
    let value = compute()?;
    // Computed now: was the file still changing around now?
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    if now_ns - stamp.mtime_ns.max(stamp.ctime_ns) >= RACY.as_nanos() as i128
        && !value.contains(['\t', '\n'])
        && fs::metadata(path).is_ok_and(|m| Stamp::of(&m) == stamp)
    {
        let _ = store(dir, &cache, &text, &key, &value);
    }
    Ok(value)
}

/// The key of this runner binary's version: what a plugin's probe result also depends on.
pub fn this_runner() -> String {
    fs::metadata(crate::sys::current_exe()).map_or_else(
        |_| String::from("unknown"),
        |m| Stamp::of(&m).key().replace('\t', ":"),
    )
}

/// Rewrites the cache with this entry last (atomically: a temporary file, then rename).
fn store(dir: &Path, cache: &Path, old: &str, key: &str, sha: &str) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut lines: Vec<&str> = old
        .lines()
        .filter(|l| l.rsplit_once('\t').is_some_and(|(k, _)| k != key))
        .collect();
    let skip = lines.len().saturating_sub(KEEP - 1);
    lines.drain(..skip);
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(&format!("{key}\t{sha}\n"));
    let tmp = cache.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file just written.
    fn write_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, content).unwrap();
        path
    }

    fn set_mtime(path: &Path, when: SystemTime) {
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(when).unwrap();
    }

    #[test]
    fn a_cached_digest_is_used_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let path = write_file(dir.path(), "lib.so", b"one");
        let truth = crate::manifest::sha256_file(&path).unwrap();
        // Just written: racy, so not cached.
        assert_eq!(sha256_in(Some(&cache), &path).unwrap(), truth);
        assert!(!cache.join(FILE).exists());
        // Forge a cache entry for this exact version to see that it is what gets used
        // (the file's ctime is recent, so a real entry would not be written yet).
        fs::create_dir_all(&cache).unwrap();
        let key = format!("{}\t", Stamp::of(&fs::metadata(&path).unwrap()).key());
        fs::write(cache.join(FILE), format!("{key}\t{}\n", "a".repeat(64))).unwrap();
        assert_eq!(sha256_in(Some(&cache), &path).unwrap(), "a".repeat(64));
        // Rewritten with the old mtime put back: the ctime still moves, so it misses.
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&path, b"two").unwrap();
        set_mtime(&path, mtime);
        assert_eq!(
            sha256_in(Some(&cache), &path).unwrap(),
            crate::manifest::sha256_file(&path).unwrap()
        );
    }

    #[test]
    fn a_remembered_answer_is_for_its_file_version_and_its_other_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let path = write_file(dir.path(), "lib.so", b"x");
        let key = Stamp::of(&fs::metadata(&path).unwrap()).key();
        store(
            &cache,
            &cache.join("p.tsv"),
            "",
            &format!("{key}\trunner-1"),
            "{\"a\":1}",
        )
        .unwrap();
        let ask = |also: &str| {
            cached_in(
                Some(&cache),
                "p.tsv",
                &path,
                also,
                |v| v.starts_with('{'),
                || Ok("computed".to_owned()),
            )
            .unwrap()
        };
        assert_eq!(ask("runner-1"), "{\"a\":1}");
        assert_eq!(ask("runner-2"), "computed", "another runner asks again");
        fs::write(&path, b"y").unwrap();
        assert_eq!(
            ask("runner-1"),
            "computed",
            "another version of the file too"
        );
    }

    #[test]
    fn an_old_file_is_cached_and_garbage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        fs::create_dir_all(&cache).unwrap();
        fs::write(cache.join(FILE), "garbage\n\t\t\n").unwrap();
        let path = write_file(dir.path(), "input.jsonl", b"{}\n");
        // The ctime cannot be set back: pretend it is old by checking from the future.
        let truth = crate::manifest::sha256_file(&path).unwrap();
        assert_eq!(sha256_in(Some(&cache), &path).unwrap(), truth);
        assert_eq!(sha256_in(None, &path).unwrap(), truth);
        store(
            &cache,
            &cache.join(FILE),
            "garbage\n",
            &format!("{}\t", Stamp::of(&fs::metadata(&path).unwrap()).key()),
            &truth,
        )
        .unwrap();
        assert_eq!(sha256_in(Some(&cache), &path).unwrap(), truth);
        let text = fs::read_to_string(cache.join(FILE)).unwrap();
        assert!(text.ends_with(&format!("\t{truth}\n")), "{text}");
    }
}

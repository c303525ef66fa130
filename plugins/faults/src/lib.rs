//! `faults`: fault-injection tasks for testing how loky-run handles misbehaving workers.
//!
//! The tasks that end the worker (`abort`, `segfault`, `exit`, ...) return `()` rather than `!`:
//! `export_plugin!` needs a `Serialize` output type, which `!` is not on stable Rust.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock, PoisonError};
use std::thread;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// Memory deliberately kept alive for the rest of the worker's life by `leak_mb`.
static LEAKED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

const MIB: usize = 1 << 20;
const PAGE_SIZE: usize = 4096;

/// Input of `crash_once`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashOnce {
    /// The file whose existence means "already crashed once".
    pub marker: PathBuf,
}

/// Input of `fail_while`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailWhile {
    /// While this file exists, the task fails.
    pub flag: PathBuf,
    /// What the task returns once the file is gone.
    pub value: Value,
    /// How long it takes to return it, in milliseconds.
    #[serde(default)]
    pub sleep_ms: u64,
}

/// Input of `rendezvous`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rendezvous {
    /// The file every participant appends a line to.
    pub path: PathBuf,
    /// How many participants must arrive.
    pub count: usize,
    /// How long to wait for them, in milliseconds.
    pub timeout_ms: u64,
}

/// Input of `wait_for_text`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitForText {
    /// The file to watch (it need not exist yet).
    pub path: PathBuf,
    /// What it must come to contain.
    pub text: String,
    /// How long to wait for it, in milliseconds.
    pub timeout_ms: u64,
}

/// Input of `spawn_sleeper`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnSleeper {
    /// How long the child sleeps.
    pub seconds: u64,
    /// A file the child's pid is appended to (a line), so a test can find it.
    pub pid_file: PathBuf,
}

/// Input of `append_line`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendLine {
    /// The file to append to (created if missing).
    pub path: PathBuf,
    /// The value whose JSON text is appended as one line.
    pub value: Value,
}

/// Kills the calling process with a real SIGSEGV (default disposition, so no handler runs).
fn die_by_sigsegv() -> ! {
    // SAFETY: deliberate crash. `signal` and `pthread_sigmask` only change this process's
    // SIGSEGV disposition and this thread's signal mask, with valid arguments (`set` is a
    // properly initialised sigset_t); `raise` then delivers SIGSEGV with its default action,
    // which terminates the process.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSEGV);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(libc::SIGSEGV);
    }
    // Unreachable in practice: an unblocked default-disposition SIGSEGV ends the process.
    std::process::abort()
}

/// Panics with `message`.
pub fn panic(message: String) {
    panic!("{message}")
}

/// Aborts the worker process (SIGABRT).
pub fn abort(_input: Value) {
    std::process::abort()
}

/// Kills the worker process with SIGSEGV.
pub fn segfault(_input: Value) {
    die_by_sigsegv()
}

/// Exits the worker process with exit status `code`.
pub fn exit(code: i32) {
    std::process::exit(code)
}

/// Returns a task error with `message`.
pub fn fail(message: String) -> Result<(), String> {
    Err(message)
}

/// Sleeps `n` milliseconds, then returns `n`.
pub fn sleep_ms(n: u64) -> u64 {
    thread::sleep(Duration::from_millis(n));
    n
}

/// Allocates `n` MiB, touches every page so RSS grows, keeps it until the worker exits; returns `n`.
pub fn leak_mb(n: u64) -> Result<u64, String> {
    let bytes = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_mul(MIB))
        .ok_or_else(|| format!("{n} MiB cannot be allocated on this machine"))?;
    let mut block = Vec::new();
    block
        .try_reserve_exact(bytes)
        .map_err(|e| format!("cannot allocate {n} MiB: {e}"))?;
    block.resize(bytes, 0);
    // Fresh allocations may be mapped lazily: write to each page to make it resident.
    for byte in block.iter_mut().step_by(PAGE_SIZE) {
        *byte = 1;
    }
    LEAKED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(block);
    Ok(n)
}

/// Writes `n` lines `faults line {i} of {n}` to the worker's stdout, flushes, returns `n`.
pub fn print_stdout(n: u64) -> Result<u64, String> {
    let write = || -> io::Result<()> {
        let mut stdout = io::stdout().lock();
        for i in 1..=n {
            writeln!(stdout, "faults line {i} of {n}")?;
        }
        stdout.flush()
    };
    write().map_err(|e| format!("cannot write to stdout: {e}"))?;
    Ok(n)
}

/// Crashes with SIGSEGV after durably creating `marker` if it does not exist; else returns true.
pub fn crash_once(input: CrashOnce) -> Result<bool, String> {
    let marker = &input.marker;
    match OpenOptions::new().write(true).create_new(true).open(marker) {
        Ok(file) => {
            sync_new_file(&file, marker)
                .map_err(|e| format!("cannot sync marker {}: {e}", marker.display()))?;
            die_by_sigsegv()
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(true),
        Err(e) => Err(format!("cannot create marker {}: {e}", marker.display())),
    }
}

/// Fails (a task error naming the flag) while `flag` exists, else returns `value`: a fault that
/// a person fixes between two runs, as `--retry-failed` expects.
pub fn fail_while(input: FailWhile) -> Result<Value, String> {
    if input.flag.exists() {
        return Err(format!("{} exists", input.flag.display()));
    }
    std::thread::sleep(std::time::Duration::from_millis(input.sleep_ms));
    Ok(input.value)
}

/// `a / b` of the input `[a, b]`: `[0, 0]` is NaN and `[1, 0]` infinity, which JSON cannot
/// hold (the record is a task error, not a silent `null`).
pub fn ratio(input: (f64, f64)) -> f64 {
    input.0 / input.1
}

/// Makes a newly created file durable: its contents and its directory entry.
fn sync_new_file(file: &File, path: &Path) -> io::Result<()> {
    file.sync_all()?;
    let parent = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Appends the JSON text of `value` plus a newline to `path` in one write; returns `value`.
pub fn append_line(input: AppendLine) -> Result<Value, String> {
    let AppendLine { path, value } = input;
    let mut line = serde_json::to_string(&value).map_err(|e| e.to_string())?;
    line.push('\n');
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        // A single write of the whole line: O_APPEND keeps concurrent writers' lines whole.
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .map_err(|e| format!("cannot append to {}: {e}", path.display()))?;
    Ok(value)
}

/// Appends this worker's pid to `path`, then waits until `count` lines are there: returns the
/// pid, or an error if the others did not arrive within the time limit. Tasks that must run at
/// the same moment to succeed (a test that every worker got one at once).
pub fn rendezvous(input: Rendezvous) -> Result<u32, String> {
    let pid = std::process::id();
    append_line(AppendLine {
        path: input.path.clone(),
        value: Value::from(pid),
    })?;
    let deadline = std::time::Instant::now() + Duration::from_millis(input.timeout_ms);
    loop {
        let arrived = std::fs::read_to_string(&input.path)
            .map_err(|e| format!("cannot read {}: {e}", input.path.display()))?
            .lines()
            .count();
        if arrived >= input.count {
            return Ok(pid);
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "only {arrived} of {} arrived within {} ms",
                input.count, input.timeout_ms
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `path` contains `text`: returns how many milliseconds that took, or an error if
/// it did not within the time limit. A task that runs until something else has happened (an
/// event in the runner's log, say), however loaded the machine.
pub fn wait_for_text(input: WaitForText) -> Result<u64, String> {
    let started = std::time::Instant::now();
    let limit = Duration::from_millis(input.timeout_ms);
    loop {
        // Not there yet (or unreadable for now): look again.
        let text = std::fs::read_to_string(&input.path).unwrap_or_default();
        if text.contains(&input.text) {
            return Ok(started.elapsed().as_millis() as u64);
        }
        if started.elapsed() >= limit {
            return Err(format!(
                "{} did not contain {:?} within {} ms",
                input.path.display(),
                input.text,
                input.timeout_ms
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Starts `sleep SECONDS` as a child of the worker, notes its pid in `pid_file`, and returns
/// the pid without waiting: a task that leaves a process behind.
pub fn spawn_sleeper(input: SpawnSleeper) -> Result<u32, String> {
    let child = std::process::Command::new("sleep")
        .arg(input.seconds.to_string())
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start sleep: {e}"))?;
    let pid = child.id();
    append_line(AppendLine {
        path: input.pid_file,
        value: Value::from(pid),
    })?;
    // Dropping the handle neither waits for nor kills the child: it is left running.
    drop(child);
    Ok(pid)
}

/// Initializer that sleeps `ms` milliseconds (a worker that takes long to start).
pub fn init_sleep(ms: u64) {
    thread::sleep(Duration::from_millis(ms));
}

/// Initializer that always fails, with its arguments' JSON text as the message.
pub fn init_fail(args: Value) -> Result<(), String> {
    Err(match args {
        Value::String(message) => message,
        other => other.to_string(),
    })
}

/// Initializer that panics with its args as the message.
pub fn init_panic(args: Value) {
    match args {
        Value::String(message) => panic!("{message}"),
        other => panic!("{other}"),
    }
}

/// Crashes the worker as its input says, or returns the input: `{"abort": true}` aborts
/// (SIGABRT), `{"exit": n}` exits with code n, `{"segfault": true}` dies by SIGSEGV,
/// `{"close_result_fd": true}` and `{"redirect_result_fd": true}` do what those tasks do and
/// return; anything else is echoed. For faults among ordinary tasks of one stage (and chunk).
pub fn crash_if(input: Value) -> Value {
    if input.get("close_result_fd") == Some(&Value::Bool(true)) {
        let _ = close_result_fd(0);
    }
    if input.get("redirect_result_fd") == Some(&Value::Bool(true)) {
        let _ = redirect_result_fd(0);
    }
    if input.get("abort") == Some(&Value::Bool(true)) {
        std::process::abort();
    }
    if let Some(code) = input.get("exit").and_then(Value::as_i64) {
        std::process::exit(code as i32);
    }
    if input.get("segfault") == Some(&Value::Bool(true)) {
        die_by_sigsegv();
    }
    input
}

/// Writes a frame header announcing 4 GiB to the worker's result descriptor (4), as a plugin
/// scribbling on descriptors it inherited would, then sleeps `n` ms: the runner must end the
/// worker rather than trust or wait on its stream.
pub fn garble_results(n: u64) -> Result<u64, String> {
    let header = u32::MAX.to_le_bytes();
    // SAFETY: write(2) of a valid local buffer to a descriptor number; a closed one fails.
    let written = unsafe { libc::write(4, header.as_ptr().cast(), header.len()) };
    if written != header.len() as isize {
        return Err(format!(
            "could not write to descriptor 4: {}",
            io::Error::last_os_error()
        ));
    }
    thread::sleep(Duration::from_millis(n));
    Ok(n)
}

/// The descriptor a local loky-run worker writes its results to.
const RESULT_FD: libc::c_int = 4;

/// Closes the worker's result descriptor (4), as a plugin tidying up descriptors it inherited
/// would, then returns `n`: the runner must not wait for results that cannot come, nor start
/// workers forever.
pub fn close_result_fd(n: u64) -> Result<u64, String> {
    // SAFETY: close(2) of a descriptor number; deliberately pulls the result stream away from
    // the worker that runs this task.
    if unsafe { libc::close(RESULT_FD) } != 0 {
        return Err(format!(
            "could not close descriptor {RESULT_FD}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(n)
}

/// Points the worker's result descriptor (4) at /dev/null, then returns `n`: every result the
/// worker writes from then on vanishes, so the runner must notice they never arrive.
pub fn redirect_result_fd(n: u64) -> Result<u64, String> {
    let null = File::options()
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("cannot open /dev/null: {e}"))?;
    // SAFETY: dup2(2) of a valid open descriptor onto a descriptor number; deliberately
    // replaces the worker's result stream.
    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), RESULT_FD) } < 0 {
        return Err(format!(
            "could not redirect descriptor {RESULT_FD}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(n)
}

/// Returns a string of `mb` MiB (as JSON, 2 bytes more): over 1024 it does not fit in one
/// frame of the protocol.
pub fn huge_output(mb: u64) -> Result<String, String> {
    let bytes = usize::try_from(mb)
        .ok()
        .and_then(|mb| mb.checked_mul(MIB))
        .ok_or_else(|| format!("{mb} MiB cannot be allocated on this machine"))?;
    let mut text = Vec::new();
    text.try_reserve_exact(bytes)
        .map_err(|e| format!("cannot allocate {mb} MiB: {e}"))?;
    text.resize(bytes, b'x');
    String::from_utf8(text).map_err(|e| e.to_string())
}

/// An output whose JSON is one byte longer each time it is encoded: a `Serialize` impl that
/// is not deterministic.
pub struct Unstable(std::cell::Cell<usize>);

impl serde::Serialize for Unstable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = self.0.get();
        self.0.set(len + 1);
        s.serialize_str(&"u".repeat(len))
    }
}

/// Returns a string of `len` bytes the first time it is encoded, one more the next: streamed
/// (an output over the runner's streaming threshold is encoded twice), it cannot be framed.
pub fn unstable_output(len: usize) -> Unstable {
    Unstable(std::cell::Cell::new(len))
}

/// Initializer that kills the worker with SIGSEGV.
pub fn init_segfault(_args: Value) {
    die_by_sigsegv()
}

/// The variable that gives `crash_randomly` its probability of crashing per call.
pub const CRASH_PROBABILITY_VAR: &str = "FAULTS_CRASH_PROBABILITY";
/// The variable that names a file of little-endian u32 counters, one per input index, that
/// `crash_randomly` increments on every call (before it may crash): how often each input ran.
pub const CALL_COUNTS_VAR: &str = "FAULTS_CALL_COUNTS";

/// Reads a probability in [0, 1] from the text of an environment variable.
pub fn parse_probability(text: Option<&str>) -> Result<f64, String> {
    let text = text.ok_or_else(|| {
        format!("{CRASH_PROBABILITY_VAR} is not set: give crash_randomly a probability (env = {{ {CRASH_PROBABILITY_VAR} = \"0.01\" }})")
    })?;
    match text.trim().parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "{CRASH_PROBABILITY_VAR} = {text:?} is not a probability (a number from 0 to 1)"
        )),
    }
}

/// Whether a uniformly random `draw` means a crash, with probability `p`.
pub fn crashes(p: f64, draw: u64) -> bool {
    // 53 random bits as a number in [0, 1): exact in an f64.
    ((draw >> 11) as f64 / (1u64 << 53) as f64) < p
}

/// A random number per call, from a per-process state (splitmix64): workers must not crash
/// in step, and a retried input must get a fresh draw.
fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    static SEEDED: Once = Once::new();
    SEEDED.call_once(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = nanos ^ (u64::from(std::process::id()) << 32);
        STATE.store(seed, Ordering::Relaxed);
    });
    let mut z = STATE
        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The call counters of [`CALL_COUNTS_VAR`], mapped shared (they survive the worker's crash
/// and a `kill -9` of the runner: the counts are in the page cache at once).
fn call_counts() -> Option<&'static [AtomicU32]> {
    static COUNTS: OnceLock<Option<&'static [AtomicU32]>> = OnceLock::new();
    *COUNTS.get_or_init(|| map_counts(Path::new(&std::env::var_os(CALL_COUNTS_VAR)?)))
}

/// Maps the counters in `path` (its length rounded down to whole u32s), for good.
pub fn map_counts(path: &Path) -> Option<&'static [AtomicU32]> {
    let file = OpenOptions::new().read(true).write(true).open(path).ok()?;
    let len = usize::try_from(file.metadata().ok()?.len()).ok()? / 4 * 4;
    if len == 0 {
        return None;
    }
    // SAFETY: a fresh shared mapping of `len` bytes of an open file (checked for
    // failure); it is never unmapped, so the slice below lives for the rest of the process.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: the mapping is page-aligned, `len` bytes long and readable and writable;
    // AtomicU32 has the size and alignment of u32 and every bit pattern is valid. Other
    // processes change it only through atomic operations too.
    Some(unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicU32>(), len / 4) })
}

/// Returns its input, but first, with the probability in `FAULTS_CRASH_PROBABILITY`, ends the
/// worker: by SIGSEGV, SIGABRT or `exit(3)`, chosen at random. Each call draws anew, so a
/// retried input most likely succeeds. If `FAULTS_CALL_COUNTS` names a file, an integer
/// input `i` increments its `i`-th u32 counter first (the soak benchmark counts reruns so).
pub fn crash_randomly(input: Value) -> Result<Value, String> {
    static PROBABILITY: OnceLock<Result<f64, String>> = OnceLock::new();
    let p = PROBABILITY
        .get_or_init(|| parse_probability(std::env::var(CRASH_PROBABILITY_VAR).ok().as_deref()))
        .clone()?;
    let counter = call_counts()
        .zip(input.as_u64())
        .and_then(|(counts, i)| counts.get(usize::try_from(i).ok()?));
    if let Some(c) = counter {
        c.fetch_add(1, Ordering::Relaxed);
    }
    let draw = next_random();
    if crashes(p, draw) {
        match draw % 3 {
            0 => die_by_sigsegv(),
            1 => std::process::abort(),
            _ => std::process::exit(3),
        }
    }
    Ok(input)
}

loky_run_plugin::export_plugin! {
    name: "faults",
    tasks: [
        panic,
        abort,
        segfault,
        exit,
        fail,
        sleep_ms,
        leak_mb,
        print_stdout,
        crash_once,
        append_line,
        crash_if,
        garble_results,
        close_result_fd,
        redirect_result_fd,
        huge_output,
        unstable_output,
        rendezvous,
        wait_for_text,
        spawn_sleeper,
        crash_randomly,
        fail_while,
        ratio,
    ],
    initializers: [init_fail, init_panic, init_segfault, init_sleep],
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A fresh directory under the system temp dir, unique to this process and test.
    fn scratch_dir(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("loky-run-faults-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn fail_returns_its_message() {
        assert_eq!(fail("nope".to_owned()), Err("nope".to_owned()));
    }

    #[test]
    fn init_fail_reports_its_args_as_json() {
        assert_eq!(
            init_fail(json!({"why": "test"})),
            Err(r#"{"why":"test"}"#.to_owned())
        );
        // A string is the message itself.
        assert_eq!(init_fail(json!("boom")), Err("boom".to_owned()));
    }

    #[test]
    fn crash_if_echoes_ordinary_inputs() {
        assert_eq!(crash_if(json!(7)), json!(7));
        assert_eq!(crash_if(json!({"abort": false})), json!({"abort": false}));
    }

    #[test]
    fn huge_output_has_the_size_asked_for() {
        assert_eq!(huge_output(1).map(|s| s.len()), Ok(MIB));
        assert!(huge_output(u64::MAX).is_err());
    }

    #[test]
    fn sleep_ms_returns_its_input() {
        assert_eq!(sleep_ms(3), 3);
    }

    #[test]
    fn leak_mb_keeps_the_memory() {
        let before = LEAKED.lock().unwrap().len();
        assert_eq!(leak_mb(1), Ok(1));
        let leaked = LEAKED.lock().unwrap();
        assert_eq!(leaked.len(), before + 1);
        assert_eq!(leaked.last().map(Vec::len), Some(MIB));
        assert!(leak_mb(u64::MAX).is_err());
    }

    #[test]
    fn print_stdout_returns_its_count() {
        assert_eq!(print_stdout(0), Ok(0));
        assert_eq!(print_stdout(2), Ok(2));
    }

    #[test]
    fn append_line_appends_json_lines() {
        let dir = scratch_dir("append");
        let path = dir.join("out.jsonl");
        for value in [json!(1), json!({"a": "b\nc"}), json!(null)] {
            let input = AppendLine {
                path: path.clone(),
                value: value.clone(),
            };
            assert_eq!(append_line(input), Ok(value));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "1\n{\"a\":\"b\\nc\"}\nnull\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn append_line_decodes_its_input() {
        let input: AppendLine =
            serde_json::from_value(json!({"path": "/tmp/x", "value": [1, 2]})).unwrap();
        assert_eq!(input.path, Path::new("/tmp/x"));
        assert_eq!(input.value, json!([1, 2]));
    }

    #[test]
    fn wait_for_text_returns_once_the_file_has_it_and_fails_at_its_limit() {
        let dir = scratch_dir("wait_for_text");
        let path = dir.join("log");
        let wait = |timeout_ms| {
            wait_for_text(WaitForText {
                path: path.clone(),
                text: "\"done\"".into(),
                timeout_ms,
            })
        };
        let err = wait(20).unwrap_err();
        assert!(err.contains("did not contain"), "{err}");
        std::fs::write(&path, "{\"a\":1}\n").unwrap();
        assert!(wait(20).is_err());
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                thread::sleep(Duration::from_millis(50));
                std::fs::write(&path, "{\"a\":1}\n{\"b\":\"done\"}\n").unwrap();
            })
        };
        assert!(wait(60_000).unwrap() < 60_000);
        writer.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn crash_once_returns_true_when_the_marker_exists() {
        let dir = scratch_dir("crash-once");
        let marker = dir.join("marker");
        std::fs::write(&marker, b"").unwrap();
        assert_eq!(
            crash_once(CrashOnce {
                marker: marker.clone()
            }),
            Ok(true)
        );
        let input: CrashOnce = serde_json::from_value(json!({"marker": marker})).unwrap();
        assert_eq!(crash_once(input), Ok(true));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn crash_once_reports_an_uncreatable_marker() {
        let dir = scratch_dir("crash-once-missing");
        let marker = dir.join("no-such-dir").join("marker");
        let error = crash_once(CrashOnce { marker }).unwrap_err();
        assert!(error.starts_with("cannot create marker"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
    #[test]
    fn crash_probabilities_are_read_and_checked() {
        assert_eq!(parse_probability(Some("0.01")), Ok(0.01));
        assert_eq!(parse_probability(Some(" 1 ")), Ok(1.0));
        assert_eq!(parse_probability(Some("0")), Ok(0.0));
        for bad in ["", "-0.1", "1.5", "NaN", "often"] {
            let e = parse_probability(Some(bad)).unwrap_err();
            assert!(e.contains(CRASH_PROBABILITY_VAR), "{e}");
        }
        assert!(parse_probability(None).unwrap_err().contains("is not set"));
    }

    #[test]
    fn crashes_follow_the_probability() {
        assert!(!crashes(0.0, 0) && !crashes(0.0, u64::MAX));
        assert!(crashes(1.0, 0) && crashes(1.0, u64::MAX));
        // Fresh draws: about 1% of 200000 (the standard deviation is about 45).
        let n = 200_000;
        let hits = (0..n).filter(|_| crashes(0.01, next_random())).count();
        assert!(
            (1_700..2_300).contains(&hits),
            "{hits} crashes in {n} draws"
        );
        let a = next_random();
        assert_ne!(a, next_random(), "every call draws anew");
    }

    #[test]
    fn crash_randomly_echoes_when_it_does_not_crash() {
        // The test process has no FAULTS_CRASH_PROBABILITY: a clear task error, no crash.
        if std::env::var_os(CRASH_PROBABILITY_VAR).is_none() {
            let e = crash_randomly(json!(5)).unwrap_err();
            assert!(e.contains(CRASH_PROBABILITY_VAR), "{e}");
        }
    }
    #[test]
    fn call_counts_are_shared_through_the_file() {
        let dir = scratch_dir("counts");
        let path = dir.join("counts");
        std::fs::write(&path, [0u8; 18]).unwrap();
        let counts = map_counts(&path).unwrap();
        assert_eq!(counts.len(), 4, "whole u32s only");
        counts[1].fetch_add(1, Ordering::Relaxed);
        counts[1].fetch_add(1, Ordering::Relaxed);
        counts[3].fetch_add(7, Ordering::Relaxed);
        // Another reader of the file sees them (what the benchmark reads after the run).
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[4..8], &2u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &7u32.to_le_bytes());
        assert!(map_counts(&dir.join("missing")).is_none());
        std::fs::write(dir.join("empty"), b"").unwrap();
        assert!(map_counts(&dir.join("empty")).is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

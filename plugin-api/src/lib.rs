//! # loky-run-plugin: write task plugins for loky-run
//!
//! A loky-run plugin is a Rust `cdylib` crate that exports plain functions as *tasks*. The runner
//! starts worker processes, each of which loads (dlopens) the plugin and calls its tasks, one input
//! at a time. This crate is the only dependency a plugin needs: it defines the stable ABI (through
//! [`abi_stable`], so a plugin keeps loading in newer runners of the same minor version) and the
//! [`export_plugin!`] macro that turns ordinary functions into that ABI.
//!
//! ## A complete plugin
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "wordcount"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib", "rlib"]   # cdylib for loky-run; rlib so `cargo test` can call the tasks
//!
//! [dependencies]
//! loky-run-plugin = "0.2"
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use std::sync::OnceLock;
//!
//! /// Inputs and outputs are any serde types; they travel as JSON values.
//! #[derive(Deserialize)]
//! pub struct Doc { pub id: u64, pub text: String }
//!
//! #[derive(Serialize)]
//! pub struct Count { pub id: u64, pub words: usize }
//!
//! /// An infallible task: input in, output out.
//! pub fn count(doc: Doc) -> Count {
//!     Count { id: doc.id, words: doc.text.split_whitespace().count() }
//! }
//!
//! /// A fallible task: the `Err` becomes a `task_error` record with this message.
//! pub fn parse_int(s: String) -> Result<i64, std::num::ParseIntError> {
//!     s.trim().parse()
//! }
//!
//! static MIN_LEN: OnceLock<usize> = OnceLock::new();
//!
//! /// An initializer: runs once in each new worker, before its first task, with the
//! /// `args` of the pipeline's `initializer = { task = "wordcount::setup", args = ... }`.
//! pub fn setup(min_len: usize) {
//!     let _ = MIN_LEN.set(min_len);
//! }
//!
//! pub fn long_words(text: String) -> Vec<String> {
//!     let min = *MIN_LEN.get().unwrap_or(&0);
//!     text.split_whitespace().filter(|w| w.len() >= min).map(str::to_owned).collect()
//! }
//!
//! loky_run_plugin::export_plugin! {
//!     name: "wordcount",
//!     tasks: [count, parse_int, long_words],
//!     initializers: [setup],
//! }
//! # fn main() {}
//! ```
//!
//! and a pipeline that uses it:
//!
//! ```toml
//! [pipeline]
//! name = "words"
//! plugins = ["."]                # a plugin crate directory: loky-run builds it before the run
//!
//! [[stage]]
//! name = "counts"
//! task = "wordcount::count"
//! input = { items = [{ id = 1, text = "hello world" }] }
//! ```
//!
//! ## Rules of the boundary
//!
//! - A task is any `fn(I) -> O` or `fn(I) -> Result<O, E>` where `I: DeserializeOwned`,
//!   `O: Serialize` and `E: Display`. Initializers have the same shape; their output is ignored.
//!   A function that never returns (it exits or aborts) is declared `-> ()`, not `-> !`.
//! - A panic inside a task never unwinds into the runner: it is caught and reported as a `panic`
//!   record with its message and source location, and the worker goes on with the next task.
//!   Do not build plugins with `panic = "abort"`: a panic would then kill the worker.
//! - An input that does not decode into `I` is a `task_error` naming the task and the type it
//!   expected; the worker goes on.
//! - Tasks run on one thread per worker process, one at a time. Global state (statics) lives as
//!   long as the worker process; the runner may reuse a worker across stages.
//! - Write to stdout/stderr freely: the runner forwards those lines, they never corrupt results.
//!
//! ## When it does not compile
//!
//! - A task whose output is neither `Serialize` nor a `Result<T, E>` with `T: Serialize` and
//!   `E: Display` stops `cargo build` with "a loky-run task must return a type that implements
//!   `serde::Serialize` ... or `Result<T, E>` with `T: Serialize` and `E: Display`", and the
//!   note under it names the type (`cargo check` does not show it: it is a build-time check):
//!
//! ```compile_fail,E0080
//! pub struct Point { pub x: f64 }   // no #[derive(Serialize)]
//! pub fn origin(_: ()) -> Point { Point { x: 0.0 } }
//! loky_run_plugin::export_plugin! { name: "p", tasks: [origin] }
//! # fn main() {}
//! ```
//!
//! - A task taking a borrowed input (`&str`, `&[T]`) fails with "implementation of
//!   `Deserialize` is not general enough": inputs are decoded into owned values, so take
//!   `String` or `Vec<T>`:
//!
//! ```compile_fail
//! pub fn length(s: &str) -> usize { s.len() }   // write `s: String`
//! loky_run_plugin::export_plugin! { name: "p", tasks: [length] }
//! # fn main() {}
//! ```
//!
//! - An output holding a NaN or an infinite float is a `task_error` naming the value (JSON
//!   has neither; serde_json alone would write `null`): return `Option<f64>` for "no value".
//!
//! ## Compatibility
//!
//! The runner refuses a plugin built against an incompatible `loky-run-plugin` (a different major
//! version, or a different minor version while below 1.0) with one line naming both versions.
//! New ABI fields are only ever appended, so a change that would break an old plugin comes
//! with a version bump of this crate.

// `abi_stable`'s derives expand to impls that trip this lint on recent compilers.
#![allow(non_local_definitions)]

mod finite;

/// The crate's README (its crates.io page): its example compiles and runs as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExample;

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::fmt::Display;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RSlice, RStr, RVec};
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use serde;
pub use serde_json;

/// The version of this crate, which is the version of the ABI a plugin is built against.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The outcome of one call through [`PluginModule::call`].
///
/// A plain integer rather than a Rust enum, so that a status added by a newer loky-run-plugin can
/// never be an invalid value in an older runner.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub struct CallStatus(pub u8);

impl CallStatus {
    /// The task succeeded; the output buffer holds its output as one JSON value.
    pub const OK: Self = Self(0);
    /// The task returned an error; the output buffer holds the message (UTF-8).
    pub const TASK_ERROR: Self = Self(1);
    /// The task panicked; the output buffer holds `panicked at FILE:LINE:COL: MESSAGE`.
    pub const PANIC: Self = Self(2);
    /// The input did not decode into the task's input type; the buffer holds the message.
    pub const BAD_INPUT: Self = Self(3);
    /// No task has that index; the buffer holds a message.
    pub const UNKNOWN_TASK: Self = Self(4);
    /// A streamed output ([`PluginModule::call_streamed`]) did not reach the host whole: the
    /// host declined it or refused a write, or its second encoding was not the length the first
    /// announced. The buffer holds a message. Since 0.2.1.
    pub const STREAM_ABORTED: Self = Self(5);
}

/// Where a streamed call ([`PluginModule::call_streamed`]) sends an output too big to return in
/// one buffer: the host's callbacks behind an opaque pointer. Since 0.2.1.
///
/// The plugin encodes the output once to measure it. Up to `inline_limit` bytes it is returned
/// in the call's buffer, as [`PluginModule::call`] does. Longer, the plugin calls `begin` with its
/// exact length, encodes it a second time and hands it over through `write`, in order, a piece
/// at a time: neither side ever holds the whole encoding.
#[repr(C)]
#[derive(StableAbi)]
pub struct OutputSink {
    /// Outputs of up to this many bytes come back in the call's buffer.
    pub inline_limit: u64,
    /// The host's state, passed back to `begin` and `write`.
    pub ctx: *mut c_void,
    /// Announces an output of exactly `len` bytes, before its first `write`. `false`: the host
    /// does not take it, and the call ends with [`CallStatus::STREAM_ABORTED`].
    pub begin: extern "C" fn(ctx: *mut c_void, len: u64) -> bool,
    /// The output's next bytes. `false`: the host could not take them, and the call ends with
    /// [`CallStatus::STREAM_ABORTED`].
    pub write: extern "C" fn(ctx: *mut c_void, bytes: RSlice<'_, u8>) -> bool,
}

/// Whether an exported function is a task or an initializer.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub struct TaskKind(pub u8);

impl TaskKind {
    pub const TASK: Self = Self(0);
    pub const INITIALIZER: Self = Self(1);
}

/// Description of one exported function, as listed by `loky-run tasks PLUGIN`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct TaskInfo {
    pub name: RStr<'static>,
    pub kind: TaskKind,
    pub input_type: RStr<'static>,
    pub output_type: RStr<'static>,
}

/// The root module a plugin exports. Fields after the last prefix field may be appended in
/// later versions; older runners ignore them.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef, prefix_fields = PluginModulePrefix)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The plugin's name, used in task references (`name::task`).
    pub name: RStr<'static>,
    /// The plugin crate's own version (informational).
    pub version: RStr<'static>,
    /// Tasks and initializers, indexed by position.
    pub tasks: RSlice<'static, TaskInfo>,
    /// Calls the function at `index` on one JSON-encoded input. On [`CallStatus::OK`] `out`
    /// holds the JSON-encoded output, otherwise a UTF-8 message. `out` is cleared first.
    #[sabi(last_prefix_field)]
    pub call: extern "C" fn(index: u32, input: RSlice<'_, u8>, out: &mut RVec<u8>) -> CallStatus,
    /// Decodes one input for the function at `index` without calling it: [`CallStatus::OK`], or
    /// [`CallStatus::BAD_INPUT`] with the message in `out` (`loky-run validate` checks
    /// initializer args with it). Since 0.2; a plugin built against 0.1 has none.
    #[sabi(missing_field(option))]
    pub check_input:
        extern "C" fn(index: u32, input: RSlice<'_, u8>, out: &mut RVec<u8>) -> CallStatus,
    /// [`Self::call`], an output longer than the sink's `inline_limit` going through the
    /// [`OutputSink`] instead of `out`. On [`CallStatus::OK`] either `out` holds the output or
    /// the sink received all of it; otherwise `out` holds the message (and what the sink got is
    /// to be discarded). Since 0.2.1; a plugin built against 0.2.0 has none.
    #[sabi(missing_field(option))]
    pub call_streamed: extern "C" fn(
        index: u32,
        input: RSlice<'_, u8>,
        sink: &mut OutputSink,
        out: &mut RVec<u8>,
    ) -> CallStatus,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "loky_run_plugin";
    const NAME: &'static str = "loky-run plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Why a call failed, before it is flattened into a status and a message.
#[doc(hidden)]
pub struct Failure {
    pub status: CallStatus,
    pub message: String,
}

/// Machinery used by [`export_plugin!`]; not part of the stable interface.
#[doc(hidden)]
pub mod __private {
    use super::*;

    pub use abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, LibHeader, RootModuleResult,
    };
    pub use abi_stable::prefix_type::PrefixTypeTrait;
    pub use abi_stable::std_types::{RSlice, RStr, RVec};

    /// The symbol abi_stable looks up in a library (`ROOT_MODULE_LOADER_NAME`); checked by a test.
    pub const ROOT_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

    pub type Adapter = fn(&[u8], &mut Output<'_>) -> Result<(), Failure>;

    /// Where a call's output goes: the buffer, or (a streamed call) the sink when it is long.
    pub struct Output<'a> {
        buf: &'a mut RVec<u8>,
        sink: Option<&'a mut OutputSink>,
    }

    thread_local! {
        static IN_TASK: Cell<bool> = const { Cell::new(false) };
        static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    /// Installs (once per plugin: each cdylib has its own std) a panic hook that records the
    /// message and location of panics raised inside task calls instead of printing them.
    fn install_panic_hook() {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = panic::take_hook();
            panic::set_hook(Box::new(move |info| {
                if IN_TASK.with(Cell::get) {
                    let location = info
                        .location()
                        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                        .unwrap_or_else(|| "an unknown location".to_owned());
                    let message = payload_message(info.payload());
                    LAST_PANIC.with(|p| {
                        *p.borrow_mut() = Some(format!("panicked at {location}: {message}"));
                    });
                } else {
                    previous(info);
                }
            }));
        });
    }

    fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
        if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "Box<dyn Any>".to_owned()
        }
    }

    /// Runs one call with panics caught, and flattens the result into the ABI's shape.
    pub fn guarded_call(
        adapters: &[Adapter],
        index: u32,
        input: &[u8],
        out: &mut RVec<u8>,
    ) -> CallStatus {
        guarded(adapters, index, input, out, None)
    }

    /// [`guarded_call`] with a sink for a long output.
    pub fn guarded_call_streamed(
        adapters: &[Adapter],
        index: u32,
        input: &[u8],
        sink: &mut OutputSink,
        out: &mut RVec<u8>,
    ) -> CallStatus {
        guarded(adapters, index, input, out, Some(sink))
    }

    fn guarded(
        adapters: &[Adapter],
        index: u32,
        input: &[u8],
        out: &mut RVec<u8>,
        sink: Option<&mut OutputSink>,
    ) -> CallStatus {
        install_panic_hook();
        out.clear();
        let Some(adapter) = adapters.get(index as usize) else {
            let _ = write_message(out, &format!("this plugin has no task with index {index}"));
            return CallStatus::UNKNOWN_TASK;
        };
        IN_TASK.with(|t| t.set(true));
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            adapter(input, &mut Output { buf: out, sink })
        }));
        IN_TASK.with(|t| t.set(false));
        match result {
            Ok(Ok(())) => CallStatus::OK,
            Ok(Err(failure)) => {
                out.clear();
                let _ = write_message(out, &failure.message);
                failure.status
            }
            Err(payload) => {
                let message = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| format!("panicked: {}", payload_message(&*payload)));
                // A payload whose destructor panics must not unwind out of here either.
                let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
                out.clear();
                let _ = write_message(out, &message);
                CallStatus::PANIC
            }
        }
    }

    fn write_message(out: &mut RVec<u8>, message: &str) -> std::io::Result<()> {
        out.extend_from_slice(message.as_bytes());
        Ok(())
    }

    /// Decodes a task's input (an initializer's args); the type is inferred from the function
    /// itself. The message says what was expected and what came, without serde_json's line and
    /// column: they point into the JSON the runner made, not into anything the user wrote.
    pub fn decode_input<A, R, F>(
        _task: &F,
        kind: TaskKind,
        name: &str,
        input: &[u8],
    ) -> Result<A, Failure>
    where
        F: Fn(A) -> R,
        A: DeserializeOwned,
    {
        serde_json::from_slice(input).map_err(|e| {
            let detail = e.to_string();
            let detail = match detail.rfind(" at line ") {
                Some(at) if e.line() > 0 || e.column() > 0 || detail[at..].contains("column") => {
                    detail[..at].to_owned()
                }
                _ => detail,
            };
            let expected = short_type_name(std::any::type_name::<A>());
            Failure {
                status: CallStatus::BAD_INPUT,
                message: if kind == TaskKind::INITIALIZER {
                    format!("its args do not decode as `{expected}`: {detail}")
                } else {
                    format!("task `{name}` expects `{expected}`: {detail}")
                },
            }
        })
    }

    pub fn input_type_name<A, R, F: Fn(A) -> R>(_task: &F) -> &'static str {
        Box::leak(short_type_name(std::any::type_name::<A>()).into_boxed_str())
    }

    pub fn output_type_name<A, R, F: Fn(A) -> R>(_task: &F) -> &'static str {
        Box::leak(short_type_name(std::any::type_name::<R>()).into_boxed_str())
    }

    /// `core::option::Option<alloc::string::String>` reads better as `Option<String>`: every
    /// path keeps its last segment. A bare `serde_json::Value` means "any JSON value".
    pub fn short_type_name(full: &str) -> String {
        if full == "serde_json::value::Value" {
            return "any JSON value".to_owned();
        }
        let mut out = String::with_capacity(full.len());
        let mut segment_start = 0;
        let bytes = full.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b':' && bytes.get(i + 1) == Some(&b':') {
                out.truncate(segment_start);
                i += 2;
                continue;
            }
            let c = bytes[i];
            out.push(c as char);
            if !(c.is_ascii_alphanumeric() || c == b'_') {
                segment_start = out.len();
            }
            i += 1;
        }
        out
    }

    fn encode_failure(e: serde_json::Error) -> Failure {
        Failure {
            status: CallStatus::TASK_ERROR,
            message: format!("the task's output could not be encoded as JSON: {e}"),
        }
    }

    fn aborted(message: String) -> Failure {
        Failure {
            status: CallStatus::STREAM_ABORTED,
            message,
        }
    }

    fn encode<T: Serialize>(value: &T, output: &mut Output<'_>) -> Result<(), Failure> {
        let Some(sink) = output.sink.as_deref_mut() else {
            return crate::finite::to_writer(&mut *output.buf, value).map_err(encode_failure);
        };
        // First pass: the output itself while it is short, its length in any case.
        let mut measured = Capped {
            buf: &mut *output.buf,
            limit: sink.inline_limit,
            len: 0,
        };
        crate::finite::to_writer(&mut measured, value).map_err(encode_failure)?;
        let len = measured.len;
        if len <= sink.inline_limit {
            return Ok(());
        }
        *output.buf = RVec::new();
        if !(sink.begin)(sink.ctx, len) {
            return Err(aborted(format!(
                "the runner declined the task's output of {len} bytes"
            )));
        }
        // Second pass: straight to the host, a piece at a time.
        let mut streamed = ToSink {
            sink,
            pending: Vec::new(),
            left: len,
            refused: false,
        };
        let encoded = crate::finite::to_writer(&mut streamed, value);
        let flushed = encoded.is_ok() && streamed.flush_pending();
        if streamed.refused {
            return Err(aborted(
                "the runner stopped taking the task's output".to_owned(),
            ));
        }
        match encoded {
            Err(e) => Err(aborted(format!(
                "the task's output could not be encoded a second time ({e}): its Serialize \
                 impl does not give the same JSON twice"
            ))),
            Ok(()) if !flushed || streamed.left != 0 => Err(aborted(format!(
                "the task's output was {len} bytes, then {} the second time it was encoded: \
                 its Serialize impl does not give the same JSON twice",
                len - streamed.left
            ))),
            Ok(()) => Ok(()),
        }
    }

    /// Keeps the first `limit` bytes written and counts them all.
    struct Capped<'a> {
        buf: &'a mut RVec<u8>,
        limit: u64,
        len: u64,
    }

    impl std::io::Write for Capped<'_> {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.len += bytes.len() as u64;
            if self.len <= self.limit {
                self.buf.extend_from_slice(bytes);
            } else if !self.buf.is_empty() {
                self.buf.clear();
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Bytes gathered before a `write` to the host (a big piece goes as it is).
    const SINK_PIECE: usize = 1 << 20;

    /// Hands an output to the host, never more than the `left` bytes it announced.
    struct ToSink<'a> {
        sink: &'a mut OutputSink,
        pending: Vec<u8>,
        left: u64,
        refused: bool,
    }

    impl ToSink<'_> {
        fn hand_over(&mut self, bytes: &[u8]) -> bool {
            if bytes.is_empty() {
                return true;
            }
            let ok = (self.sink.write)(self.sink.ctx, RSlice::from_slice(bytes));
            self.refused |= !ok;
            ok
        }

        fn flush_pending(&mut self) -> bool {
            let pending = std::mem::take(&mut self.pending);
            let ok = self.hand_over(&pending);
            self.pending = pending;
            self.pending.clear();
            ok
        }
    }

    impl std::io::Write for ToSink<'_> {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let n = bytes.len() as u64;
            if n > self.left {
                // Longer than announced: the host could not frame it.
                self.left = 0;
                return Err(std::io::Error::other("longer than the first encoding"));
            }
            self.left -= n;
            if self.pending.len() + bytes.len() <= SINK_PIECE {
                self.pending.extend_from_slice(bytes);
                return Ok(bytes.len());
            }
            if !self.flush_pending() || (bytes.len() > SINK_PIECE && !self.hand_over(bytes)) {
                return Err(std::io::Error::other("the runner refused the output"));
            }
            if bytes.len() <= SINK_PIECE {
                self.pending.extend_from_slice(bytes);
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Wraps a task's return value so that the right encoding is picked by method resolution
    /// ("autoref specialization"): `Result<T, E>` maps `Err` to a task error, any other
    /// `T: Serialize` is an output, and anything else stops the build with a message that
    /// says what a task may return ([`ViaNothing`]). Called as
    /// `(&&&Ret::new(value)).loky_finish(out)`: the more `&` an impl's receiver needs, the
    /// earlier method resolution tries it.
    pub struct Ret<T>(Cell<Option<T>>);

    impl<T> Ret<T> {
        pub fn new(value: T) -> Self {
            Self(Cell::new(Some(value)))
        }
        fn take(&self) -> T {
            self.0
                .take()
                .expect("a task's return value is finished once")
        }
    }

    pub trait ViaResult {
        fn loky_finish(&self, out: &mut Output<'_>) -> Result<(), Failure>;
    }

    impl<T: Serialize, E: Display> ViaResult for &&Ret<Result<T, E>> {
        fn loky_finish(&self, out: &mut Output<'_>) -> Result<(), Failure> {
            match self.take() {
                Ok(value) => encode(&value, out),
                Err(error) => Err(Failure {
                    status: CallStatus::TASK_ERROR,
                    message: error.to_string(),
                }),
            }
        }
    }

    pub trait ViaValue {
        fn loky_finish(&self, out: &mut Output<'_>) -> Result<(), Failure>;
    }

    impl<T: Serialize> ViaValue for &Ret<T> {
        fn loky_finish(&self, out: &mut Output<'_>) -> Result<(), Failure> {
            encode(&self.take(), out)
        }
    }

    /// What a task returns when it is neither `Serialize` nor a `Result` of one with a
    /// `Display` error: evaluating this constant fails the build (`cargo build`; `cargo check`
    /// does not evaluate it), and the compiler's next note names the type and the task.
    pub struct NotAnOutput<T>(std::marker::PhantomData<T>);

    impl<T> NotAnOutput<T> {
        pub const ERROR: () = panic!(
            "a loky-run task must return a type that implements `serde::Serialize` (derive it), \
             or `Result<T, E>` with `T: Serialize` and `E: Display` (`Result<T, String>` works); \
             the note below names the type this task returns"
        );
    }

    pub trait ViaNothing {
        fn loky_finish(&self, out: &mut Output<'_>) -> Result<(), Failure>;
    }

    impl<T> ViaNothing for Ret<T> {
        fn loky_finish(&self, _out: &mut Output<'_>) -> Result<(), Failure> {
            #[allow(clippy::let_unit_value)]
            let () = NotAnOutput::<T>::ERROR;
            unreachable!("a build with this task fails")
        }
    }

    /// What [`PluginModule::call_streamed`] points to.
    pub type StreamedCall =
        extern "C" fn(u32, RSlice<'_, u8>, &mut OutputSink, &mut RVec<u8>) -> CallStatus;

    /// Builds the module; called once, when the runner loads the plugin.
    pub fn build_module(
        name: &'static str,
        version: &'static str,
        tasks: Vec<TaskInfo>,
        call: extern "C" fn(u32, RSlice<'_, u8>, &mut RVec<u8>) -> CallStatus,
        check_input: extern "C" fn(u32, RSlice<'_, u8>, &mut RVec<u8>) -> CallStatus,
        call_streamed: StreamedCall,
    ) -> PluginModuleRef {
        let tasks: &'static [TaskInfo] = Box::leak(tasks.into_boxed_slice());
        PluginModule {
            name: RStr::from_str(name),
            version: RStr::from_str(version),
            tasks: RSlice::from_slice(tasks),
            call,
            check_input,
            call_streamed,
        }
        .leak_into_prefix()
    }

    pub fn task_info(
        name: &'static str,
        kind: TaskKind,
        input: &'static str,
        output: &'static str,
    ) -> TaskInfo {
        TaskInfo {
            name: RStr::from_str(name),
            kind,
            input_type: RStr::from_str(input),
            output_type: RStr::from_str(output),
        }
    }
}

/// Exports a plugin: its name, its tasks and (optionally) its initializers.
///
/// ```
/// pub fn double(x: i64) -> i64 { x * 2 }
/// pub fn checked_half(x: i64) -> Result<i64, String> {
///     if x % 2 == 0 { Ok(x / 2) } else { Err(format!("{x} is odd")) }
/// }
/// pub fn configure(_args: loky_run_plugin::serde_json::Value) {}
///
/// loky_run_plugin::export_plugin! {
///     name: "arith",
///     tasks: [double, checked_half],
///     initializers: [configure],
/// }
/// # fn main() {}
/// ```
///
/// Use it once per crate, at the crate root. Task names are the function names.
#[macro_export]
macro_rules! export_plugin {
    (
        name: $name:literal,
        tasks: [ $( $task:ident ),* $(,)? ]
        $(, initializers: [ $( $init:ident ),* $(,)? ] )?
        $(,)?
    ) => {
        #[doc(hidden)]
        static __LOKY_PLUGIN_ADAPTERS: &[$crate::__private::Adapter] = &[
            $( |input, out| {
                #[allow(unused_imports)]
                use $crate::__private::{ViaNothing as _, ViaResult as _, ViaValue as _};
                let arg = $crate::__private::decode_input(
                    &$task,
                    $crate::TaskKind::TASK,
                    stringify!($task),
                    input,
                )?;
                (&&&$crate::__private::Ret::new($task(arg))).loky_finish(out)
            }, )*
            $( $( |input, out| {
                #[allow(unused_imports)]
                use $crate::__private::{ViaNothing as _, ViaResult as _, ViaValue as _};
                let arg = $crate::__private::decode_input(
                    &$init,
                    $crate::TaskKind::INITIALIZER,
                    stringify!($init),
                    input,
                )?;
                (&&&$crate::__private::Ret::new($init(arg))).loky_finish(out)
            }, )* )?
        ];

        /// The same decoding, without the call.
        #[doc(hidden)]
        static __LOKY_PLUGIN_CHECKS: &[$crate::__private::Adapter] = &[
            $( |input, _out| {
                $crate::__private::decode_input(
                    &$task,
                    $crate::TaskKind::TASK,
                    stringify!($task),
                    input,
                )
                .map(drop)
            }, )*
            $( $( |input, _out| {
                $crate::__private::decode_input(
                    &$init,
                    $crate::TaskKind::INITIALIZER,
                    stringify!($init),
                    input,
                )
                .map(drop)
            }, )* )?
        ];

        #[doc(hidden)]
        extern "C" fn __loky_plugin_check(
            index: u32,
            input: $crate::__private::RSlice<'_, u8>,
            out: &mut $crate::__private::RVec<u8>,
        ) -> $crate::CallStatus {
            $crate::__private::guarded_call(__LOKY_PLUGIN_CHECKS, index, input.as_slice(), out)
        }

        #[doc(hidden)]
        extern "C" fn __loky_plugin_call(
            index: u32,
            input: $crate::__private::RSlice<'_, u8>,
            out: &mut $crate::__private::RVec<u8>,
        ) -> $crate::CallStatus {
            $crate::__private::guarded_call(__LOKY_PLUGIN_ADAPTERS, index, input.as_slice(), out)
        }

        #[doc(hidden)]
        extern "C" fn __loky_plugin_call_streamed(
            index: u32,
            input: $crate::__private::RSlice<'_, u8>,
            sink: &mut $crate::OutputSink,
            out: &mut $crate::__private::RVec<u8>,
        ) -> $crate::CallStatus {
            $crate::__private::guarded_call_streamed(
                __LOKY_PLUGIN_ADAPTERS,
                index,
                input.as_slice(),
                sink,
                out,
            )
        }

        #[doc(hidden)]
        fn __loky_plugin_root() -> $crate::PluginModuleRef {
            let tasks = vec![
                $( $crate::__private::task_info(
                    stringify!($task),
                    $crate::TaskKind::TASK,
                    $crate::__private::input_type_name(&$task),
                    $crate::__private::output_type_name(&$task),
                ), )*
                $( $( $crate::__private::task_info(
                    stringify!($init),
                    $crate::TaskKind::INITIALIZER,
                    $crate::__private::input_type_name(&$init),
                    $crate::__private::output_type_name(&$init),
                ), )* )?
            ];
            $crate::__private::build_module(
                $name,
                env!("CARGO_PKG_VERSION"),
                tasks,
                __loky_plugin_call,
                __loky_plugin_check,
                __loky_plugin_call_streamed,
            )
        }

        /// The library header abi_stable looks for when the runner loads this plugin.
        #[doc(hidden)]
        #[unsafe(no_mangle)]
        // Exported to the dynamic loader, wherever the macro is invoked.
        #[allow(unreachable_pub)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::__private::LibHeader = {
            extern "C" fn erased_root() -> $crate::__private::RootModuleResult {
                $crate::__private::__call_root_module_loader(__loky_plugin_root)
            }
            // SAFETY: `erased_root` returns the module built by `__loky_plugin_root`, whose type
            // is the `PluginModuleRef` this header is constructed for.
            unsafe {
                $crate::__private::LibHeader::from_constructor::<$crate::PluginModuleRef>(
                    erased_root,
                    $crate::__private::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_symbol_matches_abi_stable() {
        assert_eq!(
            __private::ROOT_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }

    pub(crate) fn double(x: i64) -> i64 {
        x * 2
    }
    pub(crate) fn half(x: i64) -> Result<i64, String> {
        if x % 2 == 0 {
            Ok(x / 2)
        } else {
            Err(format!("{x} is odd"))
        }
    }
    pub(crate) fn boom(msg: String) -> i64 {
        panic!("{msg}")
    }
    pub(crate) fn init(_args: serde_json::Value) {}
    pub(crate) fn text(n: usize) -> String {
        "ab\"".repeat(n)
    }

    /// Encodes to one more byte each time it is encoded: not the same JSON twice.
    pub(crate) struct Growing(Cell<usize>);
    impl Serialize for Growing {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let n = self.0.get();
            self.0.set(n + 1);
            s.serialize_str(&"x".repeat(n))
        }
    }
    pub(crate) fn growing(n: usize) -> Growing {
        Growing(Cell::new(n))
    }

    export_plugin! {
        name: "selftest",
        tasks: [double, half, boom, text, growing],
        initializers: [init],
    }

    /// What a host's sink saw.
    #[derive(Default)]
    struct Seen {
        announced: Option<u64>,
        bytes: Vec<u8>,
        writes: usize,
        accept_begin: bool,
        accept_writes: usize,
    }

    extern "C" fn seen_begin(ctx: *mut c_void, len: u64) -> bool {
        // SAFETY: `ctx` is the `Seen` that `streamed` passes for this call, borrowed by nothing
        // else while the call runs.
        let seen = unsafe { &mut *ctx.cast::<Seen>() };
        seen.announced = Some(len);
        seen.accept_begin
    }

    extern "C" fn seen_write(ctx: *mut c_void, bytes: RSlice<'_, u8>) -> bool {
        // SAFETY: as in `seen_begin`.
        let seen = unsafe { &mut *ctx.cast::<Seen>() };
        if seen.writes == seen.accept_writes {
            return false;
        }
        seen.writes += 1;
        seen.bytes.extend_from_slice(bytes.as_slice());
        true
    }

    fn streamed(index: u32, input: &str, limit: u64, mut seen: Seen) -> (CallStatus, String, Seen) {
        let mut out = RVec::new();
        let mut sink = OutputSink {
            inline_limit: limit,
            ctx: (&raw mut seen).cast(),
            begin: seen_begin,
            write: seen_write,
        };
        let status = __loky_plugin_call_streamed(
            index,
            RSlice::from_slice(input.as_bytes()),
            &mut sink,
            &mut out,
        );
        (status, String::from_utf8(out.to_vec()).unwrap(), seen)
    }

    fn accepting() -> Seen {
        Seen {
            accept_begin: true,
            accept_writes: usize::MAX,
            ..Seen::default()
        }
    }

    #[test]
    fn a_short_output_comes_back_in_the_buffer() {
        let (status, out, seen) = streamed(3, "2", 64, accepting());
        assert_eq!((status, out.as_str()), (CallStatus::OK, r#""ab\"ab\"""#));
        assert_eq!((seen.announced, seen.writes), (None, 0));
    }

    #[test]
    fn a_long_output_goes_through_the_sink_with_its_exact_length() {
        // 3 MiB of text, escaped: pieces of 1 MiB and large writes between the escapes.
        let n = 1 << 20;
        let (status, out, seen) = streamed(3, &n.to_string(), 1000, accepting());
        assert_eq!(status, CallStatus::OK, "{out}");
        assert!(out.is_empty());
        let (_, plain) = call(3, &n.to_string());
        assert_eq!(seen.announced, Some(plain.len() as u64));
        assert_eq!(seen.bytes, plain.as_bytes());
        assert!(seen.writes >= 2, "{}", seen.writes);
        // An error or a panic is still a message in the buffer.
        assert_eq!(streamed(1, "3", 0, accepting()).0, CallStatus::TASK_ERROR);
        assert_eq!(streamed(2, "\"x\"", 0, accepting()).0, CallStatus::PANIC);
    }

    #[test]
    fn a_declined_or_refused_output_aborts_the_call() {
        let declined = Seen {
            accept_begin: false,
            ..accepting()
        };
        let (status, message, seen) = streamed(3, "100", 10, declined);
        assert_eq!(status, CallStatus::STREAM_ABORTED);
        assert!(message.contains("402 bytes"), "{message}");
        assert_eq!(seen.writes, 0);

        let refused = Seen {
            accept_writes: 1,
            ..accepting()
        };
        let (status, _, seen) = streamed(3, &(3 << 20).to_string(), 10, refused);
        assert_eq!(status, CallStatus::STREAM_ABORTED);
        assert_eq!(seen.writes, 1);
    }

    #[test]
    fn an_output_that_encodes_differently_twice_aborts_the_call() {
        let (status, message, seen) = streamed(4, "20", 4, accepting());
        assert_eq!(status, CallStatus::STREAM_ABORTED);
        assert!(
            message.contains("not give the same JSON twice"),
            "{message}"
        );
        assert_eq!(seen.announced, Some(22));
        assert!(seen.bytes.len() <= 22);
        // Without a sink it is one encoding, which is fine.
        assert_eq!(call(4, "2"), (CallStatus::OK, r#""xx""#.to_owned()));
    }

    fn call(index: u32, input: &str) -> (CallStatus, String) {
        let mut out = RVec::new();
        let status = __loky_plugin_call(index, RSlice::from_slice(input.as_bytes()), &mut out);
        (status, String::from_utf8(out.to_vec()).unwrap())
    }

    #[test]
    fn type_names_are_short() {
        use __private::short_type_name as s;
        assert_eq!(
            s("core::option::Option<alloc::string::String>"),
            "Option<String>"
        );
        assert_eq!(
            s("core::result::Result<i64, alloc::string::String>"),
            "Result<i64, String>"
        );
        assert_eq!(s("alloc::vec::Vec<(u8, my_crate::Doc)>"), "Vec<(u8, Doc)>");
        assert_eq!(s("serde_json::value::Value"), "any JSON value");
    }

    #[test]
    fn tasks_are_listed_in_order_with_types() {
        let module = __loky_plugin_root();
        let tasks = module.tasks();
        let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["double", "half", "boom", "text", "growing", "init"]);
        assert_eq!(tasks[0].input_type.as_str(), "i64");
        assert_eq!(tasks[5].kind, TaskKind::INITIALIZER);
        assert_eq!(module.name().as_str(), "selftest");
    }

    #[test]
    fn values_errors_panics_and_bad_input() {
        assert_eq!(call(0, "21"), (CallStatus::OK, "42".to_owned()));
        assert_eq!(
            call(1, "3"),
            (CallStatus::TASK_ERROR, "3 is odd".to_owned())
        );
        let (status, message) = call(2, "\"kaboom\"");
        assert_eq!(status, CallStatus::PANIC);
        assert!(
            message.contains("kaboom") && message.contains("lib.rs:"),
            "{message}"
        );
        let (status, message) = call(0, "\"x\"");
        assert_eq!(status, CallStatus::BAD_INPUT);
        assert_eq!(
            message,
            "task `double` expects `i64`: invalid type: string \"x\", expected i64"
        );
        assert_eq!(call(5, "{}"), (CallStatus::OK, "null".to_owned()));
        assert_eq!(call(9, "1").0, CallStatus::UNKNOWN_TASK);
    }
}

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

    pub type Adapter = fn(&[u8], &mut RVec<u8>) -> Result<(), Failure>;

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
        install_panic_hook();
        out.clear();
        let Some(adapter) = adapters.get(index as usize) else {
            let _ = write_message(out, &format!("this plugin has no task with index {index}"));
            return CallStatus::UNKNOWN_TASK;
        };
        IN_TASK.with(|t| t.set(true));
        let result = panic::catch_unwind(AssertUnwindSafe(|| adapter(input, out)));
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

    fn encode<T: Serialize>(value: &T, out: &mut RVec<u8>) -> Result<(), Failure> {
        crate::finite::to_writer(&mut *out, value).map_err(|e| Failure {
            status: CallStatus::TASK_ERROR,
            message: format!("the task's output could not be encoded as JSON: {e}"),
        })
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
        fn loky_finish(&self, out: &mut RVec<u8>) -> Result<(), Failure>;
    }

    impl<T: Serialize, E: Display> ViaResult for &&Ret<Result<T, E>> {
        fn loky_finish(&self, out: &mut RVec<u8>) -> Result<(), Failure> {
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
        fn loky_finish(&self, out: &mut RVec<u8>) -> Result<(), Failure>;
    }

    impl<T: Serialize> ViaValue for &Ret<T> {
        fn loky_finish(&self, out: &mut RVec<u8>) -> Result<(), Failure> {
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
        fn loky_finish(&self, out: &mut RVec<u8>) -> Result<(), Failure>;
    }

    impl<T> ViaNothing for Ret<T> {
        fn loky_finish(&self, _out: &mut RVec<u8>) -> Result<(), Failure> {
            #[allow(clippy::let_unit_value)]
            let () = NotAnOutput::<T>::ERROR;
            unreachable!("a build with this task fails")
        }
    }

    /// Builds the module; called once, when the runner loads the plugin.
    pub fn build_module(
        name: &'static str,
        version: &'static str,
        tasks: Vec<TaskInfo>,
        call: extern "C" fn(u32, RSlice<'_, u8>, &mut RVec<u8>) -> CallStatus,
        check_input: extern "C" fn(u32, RSlice<'_, u8>, &mut RVec<u8>) -> CallStatus,
    ) -> PluginModuleRef {
        let tasks: &'static [TaskInfo] = Box::leak(tasks.into_boxed_slice());
        PluginModule {
            name: RStr::from_str(name),
            version: RStr::from_str(version),
            tasks: RSlice::from_slice(tasks),
            call,
            check_input,
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

    export_plugin! {
        name: "selftest",
        tasks: [double, half, boom],
        initializers: [init],
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
        assert_eq!(names, ["double", "half", "boom", "init"]);
        assert_eq!(tasks[0].input_type.as_str(), "i64");
        assert_eq!(tasks[3].kind, TaskKind::INITIALIZER);
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
        assert_eq!(call(3, "{}"), (CallStatus::OK, "null".to_owned()));
        assert_eq!(call(9, "1").0, CallStatus::UNKNOWN_TASK);
    }
}

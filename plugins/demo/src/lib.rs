//! `demo`: small example tasks for loky-run pipelines, benchmarks and tests.

use std::fmt;
use std::hint::black_box;
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_json::Value;

/// The arguments last given to the `setup` initializer in this worker process.
static STATE: Mutex<Option<Value>> = Mutex::new(None);

/// Returns `x * x`, or a task error if the square does not fit in an `i64`.
pub fn square(x: i64) -> Result<i64, String> {
    x.checked_mul(x)
        .ok_or_else(|| format!("the square of {x} does not fit in a 64-bit integer"))
}

/// Burns CPU: returns the sum of `i * i` for `i < n * 1000`, with wrapping arithmetic.
pub fn cpu(n: u64) -> u64 {
    // `black_box` keeps the optimizer from replacing the loop with a closed formula.
    (0..n.saturating_mul(1000)).fold(0u64, |sum, i| {
        let i = black_box(i);
        sum.wrapping_add(i.wrapping_mul(i))
    })
}

/// Sleeps `n` milliseconds, then returns `n`.
pub fn sleep_ms(n: u64) -> u64 {
    thread::sleep(Duration::from_millis(n));
    n
}

/// Returns the value of the environment variable `name` in the worker process, or null.
pub fn getenv(name: String) -> Option<String> {
    std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
}

/// Returns the worker's process id, after sleeping `input` ms if it is a non-negative integer.
pub fn pid(input: Value) -> u32 {
    if let Some(ms) = input.as_u64() {
        thread::sleep(Duration::from_millis(ms));
    }
    std::process::id()
}

/// Returns its input unchanged.
pub fn echo(value: Value) -> Value {
    value
}

/// Returns the arguments stored by the `setup` initializer in this worker, or null.
pub fn state(_input: Value) -> Option<Value> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Initializer: stores its arguments (replacing earlier ones) for the `state` task.
pub fn setup(args: Value) {
    *STATE.lock().unwrap_or_else(PoisonError::into_inner) = Some(args);
}

/// The length in bytes of a JSON string input. The text is measured while it is decoded and
/// never copied: a big input costs the worker its JSON only (the big-items benchmark).
pub fn text_len(text: TextLen) -> usize {
    text.0
}

/// A JSON string's length in bytes, read from the decoder's (borrowed, when unescaped) text.
pub struct TextLen(pub usize);

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Len;
        impl Visitor<'_> for Len {
            type Value = TextLen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<TextLen, E> {
                Ok(TextLen(s.len()))
            }
        }
        d.deserialize_str(Len)
    }
}

loky_run_plugin::export_plugin! {
    name: "demo",
    tasks: [square, cpu, sleep_ms, getenv, pid, echo, state, text_len],
    initializers: [setup],
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn square_multiplies_and_reports_overflow() {
        assert_eq!(square(0), Ok(0));
        assert_eq!(square(-7), Ok(49));
        assert_eq!(square(3_037_000_499), Ok(9_223_372_030_926_249_001));
        let error = square(3_037_000_500).unwrap_err();
        assert!(error.contains("3037000500"), "{error}");
        assert!(square(i64::MIN).is_err());
    }

    #[test]
    fn cpu_sums_squares() {
        assert_eq!(cpu(0), 0);
        assert_eq!(cpu(1), 332_833_500);
        assert_eq!(cpu(2), (0..2000u64).map(|i| i * i).sum::<u64>());
    }

    #[test]
    fn sleep_ms_returns_its_input() {
        assert_eq!(sleep_ms(0), 0);
        assert_eq!(sleep_ms(5), 5);
    }

    #[test]
    fn getenv_reads_the_process_environment() {
        assert_eq!(getenv("PATH".to_owned()), std::env::var("PATH").ok());
        assert_eq!(
            getenv("LOKY_RUN_DEMO_SURELY_UNSET_VARIABLE".to_owned()),
            None
        );
    }

    #[test]
    fn pid_is_this_process() {
        assert_eq!(pid(json!(null)), std::process::id());
        assert_eq!(pid(json!(1)), std::process::id());
        assert_eq!(pid(json!(-5)), std::process::id());
        assert_eq!(pid(json!("abc")), std::process::id());
    }

    #[test]
    fn text_len_measures_strings_and_refuses_the_rest() {
        let len = |json: &str| serde_json::from_str::<TextLen>(json).map(text_len);
        assert_eq!(len(r#""abc""#).unwrap(), 3);
        assert_eq!(len(r#""a\u00e9""#).unwrap(), 3, "unescaped: a and é");
        assert!(len("12").is_err());
    }

    #[test]
    fn echo_returns_its_input() {
        let value = json!({"a": [1, 2.5, "x", null, true]});
        assert_eq!(echo(value.clone()), value);
    }

    #[test]
    fn state_returns_what_setup_stored() {
        setup(json!({"level": "info"}));
        assert_eq!(state(json!(null)), Some(json!({"level": "info"})));
        setup(json!([1, 2]));
        assert_eq!(state(json!(0)), Some(json!([1, 2])));
    }
}

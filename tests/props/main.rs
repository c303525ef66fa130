//! Property tests: the decoders and scanners that read what another process, a crash or a
//! person left behind must never panic and never hand out something that was not written.
//!
//! - `frames`: `protocol::FrameReader`, `Cursor`, `ChunkHeader::read`, `ResultsHeader::read`;
//! - `inbox`: the runner's non-blocking `pool::inbox::Inbox`, fed through a real pipe;
//! - `journal`: `output::OrderedWriter` through crashes, cuts and bit flips, then `resume`;
//! - `input`: `input::check_file` and the sources of `input::open`;
//! - `config`: `config::load` on random and mutated pipeline files;
//! - `regressions`: the failing cases these found, as plain tests.
//!
//! Each property runs a few dozen cases by default (the whole target takes seconds in a debug
//! build); `PROPTEST_CASES=N` runs N cases of each instead, e.g. for a longer hunt:
//!
//! ```sh
//! PROPTEST_CASES=5000 cargo test -p loky-run --test props --release
//! ```

mod alloc;
mod config;
mod frames;
mod inbox;
mod input;
mod journal;
mod regressions;

use proptest::test_runner::Config;

/// The configuration of a property: `default` cases unless `PROPTEST_CASES` says otherwise,
/// and no regression files written into the source tree (failures found are kept as plain
/// tests in `regressions`).
pub fn config(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

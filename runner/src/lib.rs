//! loky-run: a declarative, crash-proof process-pool job runner.
//!
//! The binary is a thin layer over this library: [`cli`] parses the command line, [`config`]
//! loads a pipeline, [`run`] plans and runs it on a [`pool`] of worker processes (each one a
//! [`worker`] that loads [`plugin`]s), speaking the frames of [`protocol`]; results go through
//! [`output`], life-cycle facts to [`events`] and [`manifest`].

pub mod cli;
pub mod completions;
pub mod config;
pub mod console;
pub mod error;
pub mod events;
pub mod guardian;
pub mod hash_cache;
pub mod input;
pub mod interrupt;
pub mod joblog;
pub mod live;
pub mod man;
pub mod manifest;
pub mod output;
pub mod plugin;
pub mod pool;
pub mod progress;
pub mod protocol;
pub mod report;
pub mod run;
pub mod scaffold;
pub mod schema;
pub mod show_config;
pub mod spin;
pub mod status;
pub mod style;
pub mod sys;
pub mod transport;
pub mod worker;

//! End-to-end tests: the real `loky-run` binary on real pipelines and plugins.
//! (One test binary for all of them, as `autotests = false` in runner/Cargo.toml arranges.)

mod support;

mod bad_input;
mod basics;
mod big_items;
mod cli_ux;
mod failures;
mod pool;
mod report;
mod resume;
mod retry;
mod scheduler;
mod slurm;
mod slurm_alloc;
mod slurm_nodes;
mod status;
mod terminal;

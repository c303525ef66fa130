//! The `loky-run` binary: a thin layer over the `loky_run` library.

use std::ffi::OsString;

use loky_run::guardian;
use loky_run::plugin::probe;
use loky_run::worker;

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    // Worker and probe processes are this same binary; decide before anything else is set up.
    match args.get(1).and_then(|a| a.to_str()) {
        Some(worker::WORKER_ARG) => std::process::exit(worker::worker_main()),
        Some(guardian::GUARDIAN_ARG) => std::process::exit(guardian::guardian_main()),
        Some(probe::PROBE_ARG) => {
            let Some(path) = args.get(2) else {
                std::process::exit(2)
            };
            let verbose = args.iter().skip(3).any(|a| a == "-v");
            std::process::exit(probe::probe_main(path.as_ref(), verbose));
        }
        _ => {}
    }
    std::process::exit(loky_run::cli::main(args));
}

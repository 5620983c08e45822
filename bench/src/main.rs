//! `archfarm-bench`: parses flags and runs [`archfarm_bench::run`]. Exit code 0 when every part ran
//! (goals missed are reported, not failed), 1 when a part could not run, 2 on bad flags.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = archfarm_bench::args::Args::parse();
    match archfarm_bench::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("archfarm-bench: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

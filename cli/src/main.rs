//! `archfarm`: the command CI pipelines run. All logic lives in the `archfarm_cli` library.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

fn main() -> ExitCode {
    // clap exits by itself on usage errors, with code 2.
    let cli = archfarm_cli::args::Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            let code = err
                .downcast_ref::<archfarm_cli::Error>()
                .map_or(1, archfarm_cli::Error::exit_code);
            ExitCode::from(code)
        }
    }
}

fn run(cli: archfarm_cli::args::Cli) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(archfarm_cli::run(cli))?)
}

//! `archfarm`: the command CI pipelines run. All logic lives in the `archfarm_cli` library.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::Parser as _;

fn main() -> ExitCode {
    let cli = match archfarm_cli::args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
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

/// clap's own message and exit code (2 for usage errors, 0 for --help), plus, for a flag of
/// `docker buildx build` that archfarm does not take, what to do instead.
fn usage_error(e: clap::Error) -> ! {
    if e.kind() == ErrorKind::UnknownArgument {
        if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
            if let Some(advice) = archfarm_cli::buildx::advice(arg) {
                let _ = e.print();
                eprintln!("note: {arg} is a docker buildx flag archfarm does not take: {advice}");
                std::process::exit(2);
            }
        }
    }
    e.exit()
}

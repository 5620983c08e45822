//! `archfarm-agent`: parses flags, sets up logging and signals, and runs [`archfarm_agent::run`].
//!
//! Exit codes: 0 after a drain (first SIGTERM/SIGINT, or `archfarm agents drain`), 1 when a second
//! signal abandoned running builds or on an error, 2 for a rejected join token, a name taken by
//! another online agent, a TLS certificate problem (the coordinator's certificate not trusted, a
//! client certificate missing or refused), or bad flags.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use archfarm_agent::Config;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Started by buildah as the OCI runtime of a RUN step, not as the agent.
    if let Some(code) = archfarm_agent::backend::runtime_shim::run_if_invoked() {
        return code;
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(agent()),
        Err(e) => {
            eprintln!("archfarm-agent: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}

async fn agent() -> ExitCode {
    // clap exits with code 2 itself on bad flags.
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let signals = match shutdown_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("archfarm-agent: {e:#}");
            return ExitCode::from(1);
        }
    };
    match archfarm_agent::run(config, signals).await {
        Ok(stopped) => ExitCode::from(stopped.exit_code()),
        Err(e) => {
            tracing::error!(error = %e, "fatal");
            eprintln!("archfarm-agent: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// One item per SIGTERM or SIGINT, for as long as the agent runs (the handlers stay installed, so
/// a second signal reaches the agent instead of killing the process outright).
fn shutdown_signals() -> anyhow::Result<impl futures::Stream<Item = ()> + Send + Unpin> {
    let term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(Box::pin(futures::stream::unfold(
        (term, int),
        |(mut term, mut int)| async move {
            let name = tokio::select! {
                Some(()) = term.recv() => "SIGTERM",
                Some(()) = int.recv() => "SIGINT",
                else => return None,
            };
            tracing::info!(signal = name, "shutdown signal received");
            Some(((), (term, int)))
        },
    )))
}

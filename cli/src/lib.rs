//! The `archfarm` command: what CI pipelines run to build multi-arch images on an archfarm farm.
//!
//! * [`args`]: the command line (clap).
//! * [`validate`]: local checks of `build`'s inputs, before any network call; [`secrets`]:
//!   `--secret` specs and their values; [`registry_credentials`]: the pipeline's own registry
//!   credentials, from its docker config.
//! * [`dockerignore`] and [`context`]: packing the context deterministically.
//! * [`client`]: the coordinator's CI routes, typed.
//! * [`follow`]: following a job's builds and logs, shown through a view.
//! * [`logs`]: build logs as whole lines, and `archfarm logs`' view.
//! * [`tty`]: the live terminal view of `--progress tty`.
//! * [`output`]: tables and summaries for people.
//! * [`commands`]: one function per subcommand; [`admin`] those of tokens and revoking agents.

pub mod admin;
pub mod args;
pub mod buildx;
pub mod client;
pub mod commands;
pub mod context;
pub mod dockerignore;
pub mod follow;
pub mod git;
pub mod logs;
pub mod metadata;
pub mod output;
pub mod registry_credentials;
pub mod secrets;
pub mod tty;
pub mod validate;

use uuid::Uuid;

use crate::args::{Cli, Command};
use crate::client::ClientError;
use crate::context::PackError;
use crate::validate::UsageError;

/// Everything that can end a command early, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line value was refused locally.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The context could not be packed.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// A call to the coordinator failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The coordinator stayed unreachable while a job was followed.
    #[error("{last}; stopped following job {id}, which may still be running: check it with `archfarm job {id}`")]
    LostJob {
        /// The job.
        id: Uuid,
        /// The last failure (its message is part of this one, so it is not a `source`).
        last: ClientError,
    },
    /// Anything else, already worded for people.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The process exit code: 2 for bad input (local or refused by the coordinator), else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Pack(PackError::Read { .. } | PackError::Pattern(_)) => 2,
            Error::Pack(PackError::Write(_)) => 1,
            Error::Client(e) => e.exit_code(),
            Error::LostJob { .. } | Error::Other(_) => 1,
        }
    }
}

/// Runs the parsed command line and returns the exit code.
pub async fn run(cli: Cli) -> Result<u8, Error> {
    let conn = &cli.conn;
    match &cli.command {
        Command::Build(args) => commands::build(conn, args).await,
        Command::Jobs { limit } => commands::jobs(conn, *limit).await,
        Command::Job {
            id,
            json,
            provenance,
        } => commands::job(conn, *id, *json, *provenance).await,
        Command::Agents(a) => commands::agents(conn, a.action.as_ref()).await,
        Command::Cancel { id } => commands::cancel(conn, *id).await,
        Command::Logs(args) => commands::logs(conn, args).await,
        Command::Tokens(t) => admin::tokens(&commands::client(conn)?, &t.action).await,
        Command::Admin(a) => admin::admin(&commands::client(conn)?, &a.action).await,
    }
}

//! The agent's life with the coordinator: register (retrying while it is unreachable), then lease
//! builds while capacity is free, each run by [`crate::runner`] in its own task.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use archfarm_protocol::api::RegisterRequest;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use crate::backend::Backend;
use crate::backoff::Backoff;
use crate::client::{ClientError, CoordinatorClient};
use crate::config::Secret;
use crate::context::Limits;
use crate::detect::Platforms;
use crate::runner::{self, BuildEnv};
use crate::workdir::WorkDir;
use crate::AgentError;

/// How long one lease call asks the coordinator to hold the request open.
pub const LEASE_WAIT: Duration = Duration::from_secs(25);
/// How long running builds get to stop after a shutdown signal before their tasks are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// What a registration hands back: the identity every later call uses.
#[derive(Debug)]
pub struct Credentials {
    /// The agent's id.
    pub agent_id: Uuid,
    /// Its bearer token.
    pub token: Secret,
}

/// An agent talking to one coordinator.
pub struct Session {
    /// The coordinator.
    pub client: CoordinatorClient,
    /// Sent once to register.
    pub join_token: Secret,
    /// Agent name.
    pub name: String,
    /// Builds at once.
    pub capacity: u32,
    /// Platforms offered.
    pub platforms: Platforms,
    /// Work directory.
    pub work_dir: WorkDir,
    /// The builder.
    pub backend: Arc<dyn Backend>,
    /// Caps on unpacked contexts.
    pub limits: Limits,
    /// Backoff between failed calls (tests shorten it).
    pub backoff: Backoff,
}

impl Session {
    /// Runs until `shutdown` resolves (returns `Ok` after stopping running builds) or a fatal error.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AgentError> {
        let stop = CancellationToken::new();
        let main = self.main_loop(stop.clone());
        tokio::pin!(main, shutdown);
        tokio::select! {
            r = &mut main => return r,
            _ = &mut shutdown => {
                info!("shutdown requested: no more leases, stopping running builds");
                stop.cancel();
            }
        }
        main.await
    }

    async fn main_loop(self, stop: CancellationToken) -> Result<(), AgentError> {
        let Some(mut creds) = self.register(&stop).await? else {
            return Ok(());
        };
        let env = Arc::new(BuildEnv {
            client: self.client.clone(),
            backend: self.backend.clone(),
            work_dir: self.work_dir.clone(),
            limits: self.limits,
        });
        let mut builds = JoinSet::new();
        let mut backoff = self.backoff.clone();
        loop {
            while let Some(done) = builds.try_join_next() {
                reap(done);
            }
            if builds.len() >= self.capacity as usize {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    Some(done) = builds.join_next() => reap(done),
                }
                continue;
            }
            let leased = tokio::select! {
                _ = stop.cancelled() => break,
                r = self.client.lease(creds.agent_id, &creds.token, LEASE_WAIT) => r,
            };
            match leased {
                Ok(Some(lease)) => {
                    backoff.reset();
                    let span = tracing::info_span!("build", build.id = %lease.build_id, platform = %lease.platform);
                    let task =
                        runner::run_build(env.clone(), creds.clone(), lease, stop.child_token());
                    builds.spawn(task.instrument(span));
                }
                Ok(None) => backoff.reset(),
                // The coordinator forgot this agent (token revoked, database reset): register anew.
                Err(ClientError::Unauthorized { message, .. })
                | Err(ClientError::Refused {
                    status: reqwest::StatusCode::NOT_FOUND,
                    message,
                    ..
                }) => {
                    warn!(%message, "the coordinator no longer knows this agent; registering again");
                    match self.register(&stop).await? {
                        Some(c) => creds = c,
                        None => break,
                    }
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    warn!(error = %e, attempt = backoff.attempts(), retry_in_ms = d.as_millis() as u64, "lease failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(d) => {}
                    }
                }
            }
        }
        if !builds.is_empty() {
            info!(running = builds.len(), "waiting for running builds to stop");
        }
        // Each build's token is a child of `stop`, which is cancelled here at the latest.
        stop.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(done) = builds.join_next().await {
                reap(done);
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                left = builds.len(),
                "builds did not stop in time; dropping them"
            );
            builds.shutdown().await;
        }
        info!("stopped");
        Ok(())
    }

    /// Registers, retrying with backoff while the coordinator is unreachable. `None` when `stop` fired
    /// first.
    async fn register(
        &self,
        stop: &CancellationToken,
    ) -> Result<Option<Arc<Credentials>>, AgentError> {
        let req = RegisterRequest {
            name: self.name.clone(),
            native_platforms: self
                .platforms
                .native
                .iter()
                .map(|p| p.to_string())
                .collect(),
            emulated_platforms: self
                .platforms
                .emulated
                .iter()
                .map(|p| p.to_string())
                .collect(),
            capacity: i64::from(self.capacity),
            version: Some(env!("CARGO_PKG_VERSION").to_string()),
            instance_id: Some(self.work_dir.instance_id()),
        };
        let mut backoff = self.backoff.clone();
        backoff.reset();
        loop {
            let r = tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                r = self.client.register(&self.join_token, &req) => r,
            };
            match r {
                Ok(resp) => {
                    info!(agent.id = %resp.agent_id, name = %self.name, heartbeat_secs = resp.heartbeat_interval_secs, "registered");
                    return Ok(Some(Arc::new(Credentials {
                        agent_id: resp.agent_id,
                        token: Secret::new(resp.token),
                    })));
                }
                Err(ClientError::Unauthorized { message, .. }) => {
                    return Err(AgentError::JoinTokenRejected(message))
                }
                Err(ClientError::NameTaken { message }) => {
                    return Err(AgentError::NameTaken {
                        name: self.name.clone(),
                        message,
                    })
                }
                Err(e) if e.is_transient() => {
                    let d = backoff.next_delay();
                    warn!(error = %e, attempt = backoff.attempts(), retry_in_ms = d.as_millis() as u64, "cannot register yet; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(d) => {}
                    }
                }
                Err(e) => return Err(AgentError::RegisterRefused(e)),
            }
        }
    }
}

fn reap(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!(error = %e, "a build task panicked");
        }
    }
}

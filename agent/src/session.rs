//! The agent's life with the coordinator: register (retrying while it is unreachable), then lease
//! builds while capacity is free, each run by [`crate::runner`] in its own task; on a shutdown
//! signal or the coordinator's word, drain and deregister (see [`crate::shutdown`]).

use std::sync::Arc;
use std::time::Duration;

use archfarm_protocol::api::{LeaseRequest, RegisterRequest, StorageUse};

use crate::network::NetworkPolicy;
use crate::out_of_space::DiskHold;
use futures::Stream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use crate::backend::storage::Storage;
use crate::backend::Backend;
use crate::backoff::Backoff;
use crate::client::{ClientError, CoordinatorClient};
use crate::config::Secret;
use crate::context::Limits;
use crate::detect::Platforms;
use crate::runner::{self, BuildEnv};
use crate::shutdown::{self, Requests, Stopped};
use crate::workdir::WorkDir;
use crate::AgentError;

/// How long one lease call asks the coordinator to hold the request open.
pub const LEASE_WAIT: Duration = Duration::from_secs(25);
/// How often an agent whose disk is full looks again whether space was freed.
const FULL_RECHECK: Duration = Duration::from_secs(10);
/// How long abandoned builds get to kill their builders and clean up before their tasks are dropped
/// (killing a builder takes at most `backend::process`'s grace period).
const ABANDON_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for the coordinator to take note of a drain.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long deregistration is retried while the coordinator is unreachable.
const DEREGISTER_BUDGET: Duration = Duration::from_secs(30);

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
    /// The agent's own registry credentials and CA.
    pub registry: Arc<crate::registry_auth::RegistryAccess>,
    /// Its default network and what jobs may ask for, registered and enforced on each lease.
    pub networks: NetworkPolicy,
    /// The builds' storage, whose driver is registered and whose use each lease call reports;
    /// none in tests with a stand-in backend.
    pub storage: Option<Storage>,
}

impl Session {
    /// Runs until the agent is told to stop or a fatal error occurs. The first item of `signals`
    /// drains (see [`crate::shutdown`]), the second abandons the running builds; the end of the
    /// stream only means no more signals will come.
    pub async fn run(
        self,
        signals: impl Stream<Item = ()> + Send + Unpin,
    ) -> Result<Stopped, AgentError> {
        let requests = Requests::default();
        let watcher = shutdown::watch(signals, requests.clone());
        let main = self.main_loop(requests);
        tokio::pin!(main, watcher);
        tokio::select! {
            r = &mut main => return r,
            () = &mut watcher => {}
        }
        main.await
    }

    async fn main_loop(self, requests: Requests) -> Result<Stopped, AgentError> {
        let Some(mut creds) = self.register(&requests.drain).await? else {
            info!("stopped before registering");
            return Ok(Stopped::Drained);
        };
        let disk_hold = DiskHold::default();
        let env = Arc::new(BuildEnv {
            client: self.client.clone(),
            backend: self.backend.clone(),
            work_dir: self.work_dir.clone(),
            limits: self.limits,
            report_backoff: self.backoff.clone(),
            registry: self.registry.clone(),
            networks: self.networks.clone(),
            disk_hold: disk_hold.clone(),
        });
        // Parent of every build's cancellation token; fires only when builds are abandoned.
        let kill = CancellationToken::new();
        let mut builds = JoinSet::new();
        let mut backoff = self.backoff.clone();
        let drain = &requests.drain;
        // Whether the coordinator itself put the agent into draining (then there is nothing to tell it).
        let mut told_to_drain = false;
        // Why the disk was last found too full for a build, to log only the changes.
        let mut full: Option<String> = None;
        loop {
            reap_finished(&mut builds);
            if builds.len() >= self.capacity as usize {
                tokio::select! {
                    _ = drain.cancelled() => break,
                    Some(done) = builds.join_next() => reap(done),
                }
                continue;
            }
            let status = self.lease_status(&mut full, &disk_hold).await;
            // A full disk takes no build: the coordinator hears why at once, and the agent looks
            // again in a while.
            let wait = if status.unavailable.is_some() {
                Duration::ZERO
            } else {
                LEASE_WAIT
            };
            let unavailable = status.unavailable.is_some();
            // Dropping the call on a drain request aborts the long poll at once.
            let leased = tokio::select! {
                _ = drain.cancelled() => break,
                r = self.client.lease(creds.agent_id, &creds.token, wait, status) => r,
            };
            if unavailable && matches!(leased, Ok(None)) {
                tokio::select! {
                    _ = drain.cancelled() => break,
                    _ = tokio::time::sleep(FULL_RECHECK) => {}
                }
                continue;
            }
            match leased {
                Ok(Some(lease)) => {
                    backoff.reset();
                    let span = tracing::info_span!("build", build.id = %lease.build_id, platform = %lease.platform);
                    let task =
                        runner::run_build(env.clone(), creds.clone(), lease, kill.child_token());
                    builds.spawn(task.instrument(span));
                }
                Ok(None) => backoff.reset(),
                Err(ClientError::Draining { message }) => {
                    info!(%message, "the coordinator is draining this agent: no new builds");
                    told_to_drain = true;
                    break;
                }
                // The coordinator itself says it forgot this agent (token revoked, database
                // reset): register anew. Only on its word: registering requeues the running
                // builds, so a bare 401 or 404 from a proxy in front of it is waited out below.
                Err(ClientError::UnknownAgent { message, .. }) => {
                    warn!(%message, "the coordinator no longer knows this agent; registering again");
                    match self.register(drain).await? {
                        Some(c) => creds = c,
                        None => break,
                    }
                }
                Err(ClientError::Unauthorized { code, message })
                    if code == "client_certificate_required" =>
                {
                    return Err(AgentError::Certificate(format!(
                        "the coordinator requires a client certificate: {message}"
                    )));
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    if matches!(e, ClientError::Certificate { .. }) {
                        // Registered, so the certificate was fine until now: it was replaced
                        // under the agent. Builds may still be running; keep trying, loudly.
                        tracing::error!(error = %e, attempt = backoff.attempts(), retry_in_ms = d.as_millis() as u64, "lease failed on a certificate; retrying");
                    } else {
                        warn!(error = %e, attempt = backoff.attempts(), retry_in_ms = d.as_millis() as u64, "lease failed; retrying");
                    }
                    tokio::select! {
                        _ = drain.cancelled() => break,
                        _ = tokio::time::sleep(d) => {}
                    }
                }
            }
        }

        let hint = if told_to_drain {
            "SIGTERM twice abandons them"
        } else {
            "send SIGTERM again to abandon them"
        };
        let log_running = |n: usize| {
            if n > 0 {
                info!(running = n, "draining: {n} builds still running; {hint}");
            }
        };
        reap_finished(&mut builds);
        log_running(builds.len());
        if !told_to_drain {
            self.announce_drain(&creds, &requests.abandon).await;
        }
        loop {
            reap_finished(&mut builds);
            if builds.is_empty() {
                break;
            }
            tokio::select! {
                _ = requests.abandon.cancelled() => return Ok(abandon(builds, kill).await),
                Some(done) = builds.join_next() => {
                    reap(done);
                    reap_finished(&mut builds);
                    log_running(builds.len());
                }
            }
        }
        info!("draining: no builds running");
        self.deregister(&creds, &requests.abandon).await;
        info!("stopped");
        Ok(Stopped::Drained)
    }

    /// The storage report of the next lease call, and whether the disk has room for a build
    /// (after freeing what can be freed); logs when that changes.
    async fn lease_status(&self, full: &mut Option<String>, hold: &DiskHold) -> LeaseRequest {
        let held = hold.reason();
        let Some(storage) = &self.storage else {
            if held != *full {
                log_full_change(full, &held);
                full.clone_from(&held);
            }
            return LeaseRequest {
                unavailable: held,
                ..LeaseRequest::default()
            };
        };
        // A build that ran out of space holds the agent whatever the free space says now.
        let now_full = match held {
            Some(why) => Some(why),
            None => storage.disk_full().await,
        };
        log_full_change(full, &now_full);
        *full = now_full.clone();
        let usage = storage.usage();
        LeaseRequest {
            wait_secs: None,
            storage: Some(StorageUse {
                used_bytes: usage.used_bytes,
                limit_bytes: usage.limit_bytes,
            }),
            unavailable: now_full,
        }
    }

    /// Tells the coordinator the agent is draining, so it shows so and leases nothing more to it.
    /// Best effort: the agent already stopped leasing, so a failure changes nothing.
    async fn announce_drain(&self, creds: &Credentials, abandon: &CancellationToken) {
        let call = tokio::time::timeout(
            ANNOUNCE_TIMEOUT,
            self.client.drain(creds.agent_id, &creds.token),
        );
        tokio::select! {
            _ = abandon.cancelled() => {}
            r = call => match r {
                Ok(Ok(())) => info!("the coordinator shows this agent as draining"),
                Ok(Err(e)) => warn!(error = %e, "could not tell the coordinator the agent is draining; carrying on"),
                Err(_) => warn!("the coordinator did not answer the drain call in time; carrying on"),
            },
        }
    }

    /// Leaves the farm, retrying for a while when the coordinator is away; a failure only means the
    /// coordinator shows the agent offline instead of forgetting it.
    async fn deregister(&self, creds: &Credentials, abandon: &CancellationToken) {
        let deadline = tokio::time::Instant::now() + DEREGISTER_BUDGET;
        let mut backoff = self.backoff.clone();
        backoff.reset();
        loop {
            let r = tokio::select! {
                _ = abandon.cancelled() => return,
                r = self.client.deregister(creds.agent_id, &creds.token) => r,
            };
            let d = backoff.next_delay();
            match r {
                Ok(()) => {
                    info!(agent.id = %creds.agent_id, "deregistered");
                    return;
                }
                Err(ClientError::UnknownAgent { .. } | ClientError::Unauthorized { .. }) => {
                    info!("the coordinator no longer knows this agent; nothing to deregister");
                    return;
                }
                Err(e) if e.is_transient() && tokio::time::Instant::now() + d < deadline => {
                    warn!(error = %e, retry_in_ms = d.as_millis() as u64, "deregistration failed; retrying");
                    tokio::select! {
                        _ = abandon.cancelled() => return,
                        _ = tokio::time::sleep(d) => {}
                    }
                }
                Err(e) => {
                    warn!(error = %e, "could not deregister; the coordinator will show this agent offline");
                    return;
                }
            }
        }
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
            default_network: Some(self.networks.default),
            allowed_networks: self.networks.allowed.clone(),
            storage_driver: self
                .storage
                .as_ref()
                .map(|s| s.driver().as_str().to_string()),
            host: Some(crate::detect::host()),
        };
        let mut backoff = self.backoff.clone();
        backoff.reset();
        // The token of the last registration first: a join token may allow one use only.
        let mut saved = self.work_dir.saved_token();
        loop {
            let token = saved.as_ref().unwrap_or(&self.join_token);
            let r = tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                r = self.client.register(token, &req) => r,
            };
            match r {
                Ok(resp) => {
                    info!(agent.id = %resp.agent_id, name = %self.name, heartbeat_secs = resp.heartbeat_interval_secs,
                        again = saved.is_some(), "registered");
                    let token = Secret::new(resp.token);
                    if let Err(e) = self.work_dir.save_token(&token) {
                        warn!(error = %e, "cannot keep the agent token; a restart will need the join token again");
                    }
                    return Ok(Some(Arc::new(Credentials {
                        agent_id: resp.agent_id,
                        token,
                    })));
                }
                Err(ClientError::Unauthorized { code, message })
                    if code == "client_certificate_required" =>
                {
                    return Err(AgentError::Certificate(format!(
                        "the coordinator requires a client certificate: {message}"
                    )))
                }
                Err(ClientError::Unauthorized { .. } | ClientError::UnknownAgent { .. })
                    if saved.is_some() =>
                {
                    info!("the coordinator no longer accepts this agent's own token; registering with the join token");
                    self.work_dir.forget_token();
                    saved = None;
                }
                Err(ClientError::Unauthorized { message, .. }) => {
                    return Err(AgentError::JoinTokenRejected(message))
                }
                // Not an outage: retrying cannot fix a certificate, so say so and stop.
                Err(e @ ClientError::Certificate { .. }) => {
                    return Err(AgentError::Certificate(e.to_string()))
                }
                Err(ClientError::Refused { code, message, .. }) if code == "agent_revoked" => {
                    self.work_dir.forget_token();
                    return Err(AgentError::Revoked(message));
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

/// Logs the agent's disk turning full or free.
fn log_full_change(was: &Option<String>, now: &Option<String>) {
    match (was, now) {
        (None, Some(why)) => warn!(reason = %why, "taking no builds until space is freed"),
        (Some(_), None) => info!("disk space freed; taking builds again"),
        _ => {}
    }
}

/// Kills every running build (their tasks kill the builders' process groups and clean up, reporting
/// nothing) and waits a little for them to finish doing so.
async fn abandon(mut builds: JoinSet<()>, kill: CancellationToken) -> Stopped {
    reap_finished(&mut builds);
    let n = builds.len();
    warn!(
        builds = n,
        "abandoning running builds: killing them without reporting; their leases will lapse and the coordinator will requeue them"
    );
    kill.cancel();
    let stopped = tokio::time::timeout(ABANDON_WAIT, async {
        while let Some(done) = builds.join_next().await {
            reap(done);
        }
    })
    .await;
    if stopped.is_err() {
        warn!(
            left = builds.len(),
            "builds did not stop in time; dropping them"
        );
        builds.shutdown().await;
    }
    info!("stopped");
    Stopped::Abandoned { builds: n }
}

/// Collects the builds that have ended, without waiting.
fn reap_finished(builds: &mut JoinSet<()>) {
    while let Some(done) = builds.try_join_next() {
        reap(done);
    }
}

fn reap(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!(error = %e, "a build task panicked");
        }
    }
}

//! One leased build from start to end: context, backend, log forwarding, heartbeats and the report.
//!
//! Cancellation has one token per build, a child of the agent's "abandon" token. It fires when the
//! agent abandons its builds (a second shutdown signal), on a heartbeat answering `cancel: true`, and
//! on a 409 (lease lost) from any call; in every case the builder is killed and nothing is reported,
//! because the coordinator has already moved on (or, when abandoned, the lease lapses and the build is
//! requeued for another agent). A coordinator that is merely unreachable stops nothing: the build
//! goes on and its report is retried for up to [`REPORT_BUDGET`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use archfarm_protocol::api::{CompleteRequest, FailRequest, Lease, ReleaseRequest};
use archfarm_protocol::redact::Redactor;
use archfarm_protocol::RegistryCredential;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backend::{Backend, BackendError, BuildSpec, LogSink, PushedImage};
use crate::backoff::Backoff;
use crate::client::{ClientError, CoordinatorClient};
use crate::context::{self, Limits};
use crate::logs::{self, LogTarget};
use crate::network::NetworkPolicy;
use crate::out_of_space::{self, DiskHold};
use crate::registry_auth::{CredentialRefresh, RegistryAccess};
use crate::session::Credentials;
use crate::workdir::WorkDir;

/// Lines buffered between the builder and the log forwarder before the builder waits.
const LOG_CHANNEL: usize = 1000;
/// Longest failure message sent to the coordinator.
const MAX_ERROR_LEN: usize = 2000;
/// How long the final report is retried while the coordinator is unreachable or answers 5xx: long
/// enough for a coordinator restart (the image is pushed, so giving up early would waste the
/// build), short enough that a coordinator gone for good does not hold the agent for ever.
pub const REPORT_BUDGET: Duration = Duration::from_secs(5 * 60);
/// Cached contexts unused for this long are deleted; CI pipelines rebuild the same context within
/// minutes, rarely after a week.
const CONTEXT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Attempts at downloading the context when the coordinator is briefly unreachable.
const FETCH_ATTEMPTS: u32 = 3;

/// What every build of this agent shares.
#[derive(Clone)]
pub struct BuildEnv {
    /// The coordinator.
    pub client: CoordinatorClient,
    /// The builder.
    pub backend: Arc<dyn Backend>,
    /// The work directory.
    pub work_dir: WorkDir,
    /// Caps on unpacked contexts.
    pub limits: Limits,
    /// Backoff between attempts at the final report (tests shorten it).
    pub report_backoff: Backoff,
    /// The agent's own registry credentials, used when a lease carries none.
    pub registry: Arc<RegistryAccess>,
    /// The networks this agent gives builds; a lease asking for another is refused.
    pub networks: NetworkPolicy,
    /// Set when a build runs out of disk space: the agent then takes no builds for a while.
    pub disk_hold: DiskHold,
}

/// Runs one leased build to its end; never fails, only logs: errors go to the coordinator as `fail`.
pub async fn run_build(
    env: Arc<BuildEnv>,
    creds: Arc<Credentials>,
    lease: Lease,
    cancel: CancellationToken,
) {
    let id = lease.build_id;
    info!(build.id = %id, job.id = %lease.job_id, platform = %lease.platform, mode = %lease.mode, "leased");
    let (log, rx) = LogSink::channel(LOG_CHANNEL);
    let registry_auth = env
        .registry
        .resolve(lease.registry_auth.as_ref(), &lease.registry);
    // Build secrets, secret build arguments and the registry credential never leave the agent in
    // a log line or a failure message (a step may well `cat /run/secrets/ID`).
    let secrets: Vec<_> = registry_auth
        .iter()
        .chain(lease.pull.credentials.iter().map(|c| &c.credential))
        .flat_map(|c| c.secrets())
        .collect();
    let redactor = Redactor::for_build_args(&lease.build_args, &lease.secret_build_args)
        .with(secrets.iter().map(|s| s.expose()))
        .with(lease.secrets.iter().map(|s| s.value.expose()));
    let out_of_space_line = Arc::new(OnceLock::new());
    let target = LogTarget {
        client: env.client.clone(),
        creds: creds.clone(),
        build_id: id,
        lease_token: lease.lease_token,
        redactor: redactor.clone(),
        out_of_space: out_of_space_line.clone(),
    };
    let forwarder = tokio::spawn(logs::forward(target, rx, cancel.clone()));
    let hb_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat(
        env.client.clone(),
        creds.clone(),
        (id, lease.lease_token),
        Duration::from_secs(lease.heartbeat_interval_secs.max(1)),
        cancel.clone(),
        hb_stop.clone(),
    ));

    let started = std::time::Instant::now();
    let result = execute(&env, &creds, &lease, registry_auth, &log, &cancel).await;
    // Every line must reach the coordinator before the result does.
    drop(log);
    let _ = forwarder.await;

    if cancel.is_cancelled() {
        info!(build.id = %id, "build stopped and abandoned");
    } else {
        match result {
            Ok(img) => {
                info!(build.id = %id, digest = %img.digest, secs = started.elapsed().as_secs(), "pushed");
                let req = CompleteRequest {
                    lease_token: lease.lease_token,
                    digest: img.digest,
                    media_type: img.media_type,
                    size: img.size as i64,
                    // The backend pushes only once the lease's smoke test passed.
                    smoke_test_passed: lease.smoke_test.is_some(),
                };
                report(&env, &cancel, id, "complete", || {
                    env.client.complete(&creds.token, id, &req)
                })
                .await;
            }
            Err(e)
                if out_of_space_line.get().is_some()
                    || out_of_space::says_out_of_space(&crate::error_chain(&e)) =>
            {
                // The disk, not the build: another agent may build it, and this one should
                // take nothing more until space is back.
                let why = match out_of_space_line.get() {
                    Some(line) => one_line(line),
                    None => one_line(&redactor.redact(&crate::error_chain(&e))),
                };
                let reason = format!(
                    "disk full: build {id} ran out of space in {} ({why})",
                    env.work_dir.root().display()
                );
                warn!(build.id = %id, reason = %reason, hold_secs = out_of_space::HOLD.as_secs(),
                    "the disk filled up during the build; giving it back and taking no builds for a while");
                env.disk_hold.hold(reason.clone());
                let req = ReleaseRequest {
                    lease_token: lease.lease_token,
                    reason,
                };
                report(&env, &cancel, id, "release", || {
                    env.client.release(&creds.token, id, &req)
                })
                .await;
            }
            Err(e) => {
                let message = one_line(&redactor.redact(&e.to_string()));
                warn!(build.id = %id, error = %message, "build failed");
                let req = FailRequest {
                    lease_token: lease.lease_token,
                    error: message,
                };
                report(&env, &cancel, id, "fail", || {
                    env.client.fail(&creds.token, id, &req)
                })
                .await;
            }
        }
    }
    hb_stop.cancel();
    let _ = heartbeat.await;
    env.work_dir.prune_contexts(CONTEXT_MAX_AGE).await;
    let dir = env.work_dir.build_dir(id);
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(build.id = %id, dir = %dir.display(), error = %e, "could not remove the build directory");
        }
    }
}

/// Context, then the backend. Errors are the build's failure reason.
async fn execute(
    env: &BuildEnv,
    creds: &Credentials,
    lease: &Lease,
    registry_auth: Option<RegistryCredential>,
    log: &LogSink,
    cancel: &CancellationToken,
) -> Result<PushedImage, BuildError> {
    // Before anything is fetched: a job must not run with more network than this agent allows,
    // whatever the coordinator (an older one, a bug) leased it.
    let network = env.networks.resolve(lease.network).map_err(|why| {
        warn!(build.id = %lease.build_id, network = ?lease.network, "lease refused: network not allowed");
        BuildError::Backend(BackendError::Invalid(why))
    })?;
    let build_dir = env.work_dir.build_dir(lease.build_id);
    // A retry of this build on this agent may find its earlier attempt's directory.
    let _ = tokio::fs::remove_dir_all(&build_dir).await;
    log.note(format!(
        "leased build {} of {} ({}, network {network})",
        lease.build_id, lease.platform, lease.mode
    ))
    .await;
    log.note(format!("fetching context {}", lease.context))
        .await;
    let archive = tokio::select! {
        _ = cancel.cancelled() => return Err(BuildError::Backend(BackendError::Cancelled)),
        r = fetch(env, creds, lease) => r?,
    };
    let context_dir = build_dir.join("context");
    let (archive2, dest, limits) = (archive.clone(), context_dir.clone(), env.limits);
    let stats = tokio::task::spawn_blocking(move || context::unpack(&archive2, &dest, &limits))
        .await
        .map_err(|e| BuildError::Internal(format!("unpacking task: {e}")))??;
    log.note(format!(
        "context unpacked: {} entries, {} bytes",
        stats.entries, stats.bytes
    ))
    .await;
    let spec = BuildSpec {
        build_id: lease.build_id,
        platform: lease.platform.clone(),
        build_dir,
        context_dir,
        dockerfile: lease.dockerfile.clone(),
        build_args: lease.build_args.clone(),
        target: lease.target.clone(),
        registry: lease.registry.clone(),
        repository: lease.repository.clone(),
        insecure_registry: lease.insecure_registry,
        registry_auth,
        refresh_auth: lease
            .registry_auth
            .is_some()
            .then(|| refresh_from_coordinator(env, creds, lease)),
        secrets: lease.secrets.clone(),
        network,
        pull: lease.pull.clone(),
        cache: lease.cache.clone(),
        image_meta: lease.image_meta.clone(),
        allow_foreign_binary: lease.allow_foreign_binary.clone(),
        smoke_test: lease.smoke_test.clone(),
    };
    Ok(env
        .backend
        .build(&spec, log.clone(), cancel.clone())
        .await?)
}

/// Asks the coordinator for the lease's credential again; on failure the push goes with the
/// lease's own (logged: a refused push then says why).
fn refresh_from_coordinator(
    env: &BuildEnv,
    creds: &Credentials,
    lease: &Lease,
) -> CredentialRefresh {
    let (client, token) = (env.client.clone(), creds.token.clone());
    let (build, lease_token) = (lease.build_id, lease.lease_token);
    CredentialRefresh::new(move || {
        let (client, token) = (client.clone(), token.clone());
        Box::pin(async move {
            match client.registry_credential(&token, build, lease_token).await {
                Ok(answer) => answer.registry_auth,
                Err(e) => {
                    warn!(build.id = %build, error = %e, "could not refresh the registry credential; pushing with the lease's");
                    None
                }
            }
        })
    })
}

async fn fetch(
    env: &BuildEnv,
    creds: &Credentials,
    lease: &Lease,
) -> Result<std::path::PathBuf, BuildError> {
    let mut backoff = Backoff::default();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match context::fetch(
            &env.client,
            &creds.token,
            &lease.context,
            &env.work_dir.contexts(),
        )
        .await
        {
            Err(context::ContextError::Download { source, .. })
                if source.is_transient() && attempt < FETCH_ATTEMPTS =>
            {
                warn!(build.id = %lease.build_id, error = %source, "context download failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            r => return Ok(r?),
        }
    }
}

/// Why a build failed, as sent to the coordinator.
#[derive(Debug, thiserror::Error)]
enum BuildError {
    #[error(transparent)]
    Context(#[from] context::ContextError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Heartbeats every `period` until `stop`; cancels the build on `cancel: true`, 409
/// or 401.
async fn heartbeat(
    client: CoordinatorClient,
    creds: Arc<Credentials>,
    (id, lease_token): (uuid::Uuid, uuid::Uuid),
    period: Duration,
    cancel: CancellationToken,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            r = client.heartbeat(&creds.token, id, lease_token) => r,
        };
        match answer {
            Ok(r) if r.cancel => {
                info!(build.id = %id, "the job was cancelled; stopping the build");
                cancel.cancel();
                return;
            }
            Ok(_) => {}
            Err(e)
                if e.is_conflict()
                    || matches!(
                        e,
                        ClientError::Unauthorized { .. } | ClientError::UnknownAgent { .. }
                    ) =>
            {
                warn!(build.id = %id, error = %e, "the lease is lost; stopping the build");
                cancel.cancel();
                return;
            }
            // The coordinator may be restarting: the lease outlives a few missed beats, and a
            // restarted coordinator extends it. Only its word (409, cancel) stops the build.
            Err(e) => warn!(build.id = %id, error = %e, "heartbeat failed; the build goes on"),
        }
    }
}

/// Delivers a final report, retrying transient failures for up to [`REPORT_BUDGET`]. A 409 means
/// the lease is gone: the result is dropped.
async fn report<F, Fut>(
    env: &BuildEnv,
    cancel: &CancellationToken,
    id: uuid::Uuid,
    what: &str,
    call: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>>,
{
    let mut backoff = env.report_backoff.clone();
    backoff.reset();
    let deadline = tokio::time::Instant::now() + REPORT_BUDGET;
    loop {
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            r = call() => r,
        };
        let d = backoff.next_delay();
        match r {
            Ok(()) => {
                if backoff.attempts() > 1 {
                    info!(build.id = %id, report = what, attempts = backoff.attempts(), "reported after retrying");
                }
                return;
            }
            Err(e) if e.is_conflict() => {
                warn!(build.id = %id, report = what, error = %e, "the lease was lost before the report; result dropped");
                return;
            }
            Err(e) if e.is_transient() && tokio::time::Instant::now() + d < deadline => {
                warn!(build.id = %id, report = what, error = %e, attempt = backoff.attempts(), retry_in_ms = d.as_millis() as u64, "report failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(d) => {}
                }
            }
            Err(e) => {
                error!(build.id = %id, report = what, error = %e, attempts = backoff.attempts(), "could not report the build's result; giving up");
                return;
            }
        }
    }
}

/// A message on one line, capped, for the coordinator's `error` field.
pub fn one_line(message: &str) -> String {
    let joined = message
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    if joined.chars().count() <= MAX_ERROR_LEN {
        return joined;
    }
    let mut s: String = joined.chars().take(MAX_ERROR_LEN).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_become_one_capped_line() {
        assert_eq!(one_line("a\nb\r\n\n  c  "), "a | b | c");
        let long = "x".repeat(5000);
        assert_eq!(one_line(&long).chars().count(), MAX_ERROR_LEN + 1);
    }
}

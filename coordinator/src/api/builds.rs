//! `/builds/{id}`: what agents report about a leased build, and its log for clients.

use archfarm_protocol::api::{
    CompleteRequest, FailRequest, HeartbeatRequest, HeartbeatResponse, LogRequest,
    RegistryCredentialRequest, RegistryCredentialResponse, ReleaseRequest, MAX_LOG_BATCH_BYTES,
};
use archfarm_protocol::events::LogResponse;
use archfarm_protocol::redact::Redactor;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::handler::Handler as _;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use uuid::Uuid;

use super::access::Access;
use super::error::{parse_id, ApiError, ApiJson, ApiQuery};
use super::gate::Authed;
use super::plain_http::{self, Carried, PeerAddr};
use super::routes::Routes;
use crate::changes::Watcher;
use crate::lifecycle::Ends;
use crate::store::{AgentRow, BuildRow, LeaseCheck};
use crate::AppState;

/// Most log lines one report may carry.
const MAX_LINES_PER_REPORT: usize = 10_000;
/// Longest error text kept for a failed build.
const MAX_ERROR_CHARS: usize = 4096;

/// Routes of this resource.
pub fn routes() -> Routes {
    Routes::new()
        .post("/builds/{id}/heartbeat", Access::Agent, heartbeat)
        .post(
            "/builds/{id}/log",
            Access::Agent,
            // A log batch may be larger than other JSON bodies; agents keep theirs under this.
            append_log.layer(DefaultBodyLimit::max(MAX_LOG_BATCH_BYTES)),
        )
        .get("/builds/{id}/log", Access::Read, read_log)
        .post("/builds/{id}/complete", Access::Agent, complete)
        .post("/builds/{id}/fail", Access::Agent, fail)
        .post("/builds/{id}/release", Access::Agent, release)
        .post(
            "/builds/{id}/registry-credential",
            Access::Agent,
            registry_credential,
        )
}

/// The build, if the calling agent holds it under `token`.
async fn held_build(
    state: &AppState,
    agent: &AgentRow,
    raw: &str,
    token: Uuid,
) -> Result<BuildRow, ApiError> {
    let id = parse_id("build", raw)?;
    let build = state
        .store
        .get_build(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no build with id '{id}'")))?;
    if build.agent_id != Some(agent.id) || build.lease_token != Some(token) {
        tracing::warn!(build.id = %id, agent = %agent.name, "report under a lease this agent does not hold refused");
        return Err(ApiError::lease_lost(id));
    }
    state.store.touch_agent_row(agent).await?;
    Ok(build)
}

async fn heartbeat(
    State(state): State<AppState>,
    Authed(agent): Authed<AgentRow>,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let build = held_build(&state, &agent, &raw, req.lease_token).await?;
    match state
        .store
        .renew_lease(build.id, req.lease_token, state.scheduler.lease_expiry())
        .await?
    {
        LeaseCheck::Current => Ok(Json(HeartbeatResponse { cancel: false })),
        LeaseCheck::Cancelled => Ok(Json(HeartbeatResponse { cancel: true })),
        LeaseCheck::Lost => Err(ApiError::lease_lost(build.id)),
    }
}

async fn append_log(
    State(state): State<AppState>,
    Authed(agent): Authed<AgentRow>,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<LogRequest>,
) -> Result<Json<LogResponse>, ApiError> {
    let build = held_build(&state, &agent, &raw, req.lease_token).await?;
    if req.lines.len() > MAX_LINES_PER_REPORT {
        return Err(ApiError::bad(
            "too_many_lines",
            format!("at most {MAX_LINES_PER_REPORT} log lines per report"),
        ));
    }
    let redactor = redactor_for(&state, build.job_id).await?;
    // Checked after the redactor is made: ending a job cancels its running builds and deletes
    // its secrets and credentials in one transaction, so a current lease now means the redactor
    // knew them all. Lines that come later (a cancelled build's last words) cannot be redacted
    // with what is gone, so they are refused and the agent stops.
    if state.store.check_lease(build.id, req.lease_token).await? != LeaseCheck::Current {
        return Err(ApiError::lease_lost(build.id));
    }
    let mut lines = req.lines;
    redactor.redact_all(&mut lines);
    let batch = req.seq.map(|seq| crate::store::LogBatch {
        lease: req.lease_token,
        seq,
    });
    let truncated = state.logs.append_batch(build.id, batch, &lines).await?;
    Ok(Json(LogResponse { truncated }))
}

async fn complete(
    State(state): State<AppState>,
    Authed(agent): Authed<AgentRow>,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> Result<StatusCode, ApiError> {
    let build = held_build(&state, &agent, &raw, req.lease_token).await?;
    if req.media_type.is_empty() || req.media_type.len() > 256 || req.size <= 0 {
        return Err(ApiError::bad(
            "invalid_report",
            "a completion needs the manifest's media type and size",
        ));
    }
    // An agent from before smoke tests pushes without running one: its image must not reach
    // the index as if it had passed.
    if !req.smoke_test_passed {
        let job = state.store.get_job(build.job_id).await?;
        if let Some(test) = job.and_then(|j| j.smoke_test) {
            let error = format!(
                "agent {} pushed the image without running the smoke test `{}` (an \
                 archfarm-agent from before --smoke-test); upgrade it",
                agent.name,
                test.display()
            );
            return record_failure(&state, &build, req.lease_token, &error).await;
        }
    }
    if !Ends::of(&state)
        .build_pushed(
            &build,
            req.lease_token,
            req.digest.as_str(),
            &req.media_type,
            req.size,
        )
        .await?
    {
        return Err(ApiError::lease_lost(build.id));
    }
    if let Err(e) = state
        .logs
        .append(build.id, &[format!("[archfarm] pushed {}", req.digest)])
        .await
    {
        tracing::warn!(build.id = %build.id, error = %e, "could not append to the build log");
    }
    crate::progress::advance(&state, build.job_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn fail(
    State(state): State<AppState>,
    Authed(agent): Authed<AgentRow>,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<FailRequest>,
) -> Result<StatusCode, ApiError> {
    let build = held_build(&state, &agent, &raw, req.lease_token).await?;
    record_failure(&state, &build, req.lease_token, &req.error).await
}

/// Fails `build` with `error` (redacted and capped), in its log too, and moves its job on.
async fn record_failure(
    state: &AppState,
    build: &BuildRow,
    lease_token: Uuid,
    error: &str,
) -> Result<StatusCode, ApiError> {
    let error = redactor_for(state, build.job_id)
        .await?
        .redact(error)
        .chars()
        .take(MAX_ERROR_CHARS)
        .collect::<String>();
    if !Ends::of(state)
        .build_failed(build.id, &build.platform, build.mode, lease_token, &error)
        .await?
    {
        return Err(ApiError::lease_lost(build.id));
    }
    // The outcome is recorded: a log that cannot be written must not undo it.
    if let Err(e) = state
        .logs
        .append(build.id, &[format!("[archfarm] failed: {error}")])
        .await
    {
        tracing::warn!(build.id = %build.id, error = %e, "could not append to the build log");
    }
    // A required platform's failure fails the job; an optional one's becomes a warning.
    crate::progress::advance(state, build.job_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How many times a build may be given back by agents (their disks filled up) without the
/// attempt counting: enough for a disk that happened to be full, few enough that a build that
/// fills every agent's disk still uses up its attempts and fails.
const FREE_RELEASES: i64 = 3;

/// The agent gives the build back through no fault of the build's (its disk filled up): the
/// build is queued again for another agent, its attempt given back, the reason in its log, and
/// the agent shown draining with the reason (it takes no builds for a while on its own).
async fn release(
    State(state): State<AppState>,
    Authed(agent): Authed<AgentRow>,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<ReleaseRequest>,
) -> Result<StatusCode, ApiError> {
    let build = held_build(&state, &agent, &raw, req.lease_token).await?;
    let reason = redactor_for(&state, build.job_id)
        .await?
        .redact(&req.reason)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR_CHARS)
        .collect::<String>();
    let Some(free) = state
        .store
        .release_build(build.id, req.lease_token, FREE_RELEASES)
        .await?
    else {
        return Err(ApiError::lease_lost(build.id));
    };
    tracing::warn!(build.id = %build.id, platform = %build.platform, agent = %agent.name, reason, free,
        "build given back by its agent; queued again");
    // Shown at once; the agent's own next lease call says the same.
    state
        .store
        .report_agent_status(&agent, None, Some(&reason))
        .await?;
    let line = if free {
        format!("[archfarm] agent {} gave the build back: {reason}; queued again without counting the attempt", agent.name)
    } else {
        format!("[archfarm] agent {} gave the build back: {reason}; queued again (given back {FREE_RELEASES} times already, so the attempt counts)", agent.name)
    };
    if let Err(e) = state.logs.append(build.id, &[line]).await {
        tracing::warn!(build.id = %build.id, error = %e, "could not append to the build log");
    }
    state.scheduler.wake().await;
    Ok(StatusCode::NO_CONTENT)
}

/// A fresh credential for the push of a build the agent holds: a scoped token fetched at lease
/// time may have expired by the end of a long build.
async fn registry_credential(
    State(state): State<AppState>,
    Authed(agent): Authed<AgentRow>,
    PeerAddr(peer): PeerAddr,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<RegistryCredentialRequest>,
) -> Result<Json<RegistryCredentialResponse>, ApiError> {
    let build = held_build(&state, &agent, &raw, req.lease_token).await?;
    let job = state
        .store
        .get_job(build.job_id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("build {} has no job", build.id)))?;
    let own = crate::job_credentials::for_job(&state, job.id)
        .await?
        .map_err(|why| ApiError::Internal(anyhow::anyhow!(why)))?;
    // Only for a running build, checked after the job's own credentials were read: ending a job
    // cancels its builds and deletes its credentials in one transaction, so a current lease now
    // means `own` is all the job brought, and the coordinator's credential is never handed out
    // in place of the job's deleted one (nor at all, to a build whose job is over).
    if state.store.check_lease(build.id, req.lease_token).await? != LeaseCheck::Current {
        return Err(ApiError::lease_lost(build.id));
    }
    // Right before the push: a credential helper is asked again, whatever its answer's age.
    let registry_auth = crate::lease_credential::for_lease(
        &state,
        build.id,
        &own,
        &job.registry,
        &job.repository,
        "the push goes with the credential the lease carried",
        crate::registry::Fresh::Anew,
    )
    .await;
    // The lease's rule holds here too: no credential over plain HTTP to another host.
    let carried = Carried {
        credential_for: registry_auth.as_ref().map(|_| job.registry.clone()),
        ..Carried::default()
    };
    if let Some(message) = plain_http::refusal(&state.config, &agent.name, peer, &carried) {
        return Err(ApiError::Forbidden {
            code: "credentials_over_plain_http",
            message,
        });
    }
    Ok(Json(RegistryCredentialResponse { registry_auth }))
}

/// What must never reach a job's logs or errors: its build secrets' and secret build arguments'
/// values and the registry credentials its leases carry. Agents redact these already; this is the second line of
/// defence (for build secrets, while the job is live: their values are deleted when it ends).
async fn redactor_for(state: &AppState, job_id: Uuid) -> Result<Redactor, ApiError> {
    let Some(job) = state.store.get_job(job_id).await? else {
        return Ok(Redactor::default());
    };
    // The push registry's credential, and those its leases carry for pulls and caches: the
    // coordinator's (as configured, or as its helpers last answered) and the job's own.
    let pulls = crate::pulls::lease_sources(&state.config, &job);
    let mut secrets: Vec<_> = std::iter::once(job.registry.as_str())
        .chain(pulls.iter().map(|(registry, _)| registry.as_str()))
        .flat_map(|registry| state.registry.secrets_for(registry))
        .collect();
    if let Ok(own) = crate::job_credentials::for_job(state, job_id).await? {
        secrets.extend(own.secrets());
    }
    let build_secrets = state.store.job_secrets(job_id).await?;
    Ok(
        Redactor::for_build_args(&job.build_args, &job.secret_build_args)
            .with(secrets.iter().map(|s| s.expose()))
            .with(build_secrets.iter().map(|s| s.value.expose())),
    )
}

#[derive(Deserialize)]
struct LogQuery {
    offset: Option<u64>,
    #[serde(default)]
    follow: bool,
}

/// The log as plain text from `?offset=` (default 0). With `?follow=true` the response stays open
/// and new lines are sent as they arrive, until the build ends.
async fn read_log(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id("build", &raw)?;
    if state.store.get_build(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no build with id '{id}'")));
    }
    let tail = LogTail {
        watcher: state.changes.watch(),
        state,
        id,
        offset: q.offset.unwrap_or(0),
        follow: q.follow,
        ended: false,
        settled: false,
    };
    let body = Body::from_stream(futures::stream::unfold(tail, |mut t| async move {
        t.next().await.map(|chunk| (chunk, t))
    }));
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    ))
}

/// Most bytes of a log read into memory at once while answering.
const LOG_CHUNK: usize = 256 * 1024;

/// Reads a log out in chunks, and with `follow` waits for more until the build has ended.
struct LogTail {
    state: AppState,
    watcher: Watcher,
    id: Uuid,
    offset: u64,
    follow: bool,
    /// The build has been seen to have ended.
    ended: bool,
    /// A pause has passed since then: the lines written just after the build's state changed
    /// (`pushed …`, `failed: …`) are on disk, so the next empty read ends the response.
    settled: bool,
}

impl LogTail {
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        loop {
            if self.follow && !self.ended {
                match self.state.store.get_build(self.id).await {
                    Ok(Some(b)) => self.ended = b.state.is_terminal(),
                    Ok(None) => return None,
                    Err(e) => return Some(Err(std::io::Error::other(e))),
                }
            }
            match self
                .state
                .logs
                .read_chunk(self.id, self.offset, LOG_CHUNK)
                .await
            {
                Err(e) => return Some(Err(e)),
                Ok(bytes) if !bytes.is_empty() => {
                    self.offset += bytes.len() as u64;
                    return Some(Ok(Bytes::from(bytes)));
                }
                Ok(_) if !self.follow || self.settled => return None,
                Ok(_) => {
                    let ended = self.ended;
                    let pause = async {
                        if ended {
                            // Not the watcher: its first wake-up may come at once.
                            tokio::time::sleep(crate::changes::MIN_GAP).await;
                        } else {
                            self.watcher.next().await;
                        }
                    };
                    tokio::select! {
                        _ = self.state.shutdown.cancelled() => return None,
                        _ = pause => {}
                    }
                    self.settled = ended;
                }
            }
        }
    }
}

//! `/builds/{id}`: what agents report about a leased build, and its log for clients.

use archfarm_protocol::api::{
    CompleteRequest, FailRequest, HeartbeatRequest, HeartbeatResponse, LogRequest,
    MAX_LOG_BATCH_BYTES,
};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use uuid::Uuid;

use super::auth::{require_agent, require_client};
use super::error::{parse_id, ApiError, ApiJson, ApiQuery};
use crate::store::{BuildRow, LeaseCheck};
use crate::AppState;

/// Most log lines one report may carry.
const MAX_LINES_PER_REPORT: usize = 10_000;
/// Longest error text kept for a failed build.
const MAX_ERROR_CHARS: usize = 4096;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/builds/{id}/heartbeat", post(heartbeat))
        .route(
            "/builds/{id}/log",
            // A log batch may be larger than other JSON bodies; agents keep theirs under this.
            post(append_log)
                .layer(DefaultBodyLimit::max(MAX_LOG_BATCH_BYTES))
                .get(read_log),
        )
        .route("/builds/{id}/complete", post(complete))
        .route("/builds/{id}/fail", post(fail))
}

/// The build, if the calling agent holds it under `token`.
async fn held_build(
    state: &AppState,
    headers: &HeaderMap,
    raw: &str,
    token: Uuid,
) -> Result<BuildRow, ApiError> {
    let agent = require_agent(state, headers).await?;
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
    state.store.touch_agent(agent.id).await?;
    Ok(build)
}

async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let build = held_build(&state, &headers, &raw, req.lease_token).await?;
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
    headers: HeaderMap,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<LogRequest>,
) -> Result<StatusCode, ApiError> {
    let build = held_build(&state, &headers, &raw, req.lease_token).await?;
    if req.lines.len() > MAX_LINES_PER_REPORT {
        return Err(ApiError::bad(
            "too_many_lines",
            format!("at most {MAX_LINES_PER_REPORT} log lines per report"),
        ));
    }
    if state.store.check_lease(build.id, req.lease_token).await? == LeaseCheck::Lost {
        return Err(ApiError::lease_lost(build.id));
    }
    state.logs.append(build.id, &req.lines).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn complete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> Result<StatusCode, ApiError> {
    let build = held_build(&state, &headers, &raw, req.lease_token).await?;
    if req.media_type.is_empty() || req.media_type.len() > 256 || req.size <= 0 {
        return Err(ApiError::bad(
            "invalid_report",
            "a completion needs the manifest's media type and size",
        ));
    }
    if !state
        .store
        .complete_build(
            build.id,
            req.lease_token,
            req.digest.as_str(),
            &req.media_type,
            req.size,
        )
        .await?
    {
        return Err(ApiError::lease_lost(build.id));
    }
    tracing::info!(build.id = %build.id, platform = %build.platform, digest = %req.digest, "build pushed");
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
    headers: HeaderMap,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<FailRequest>,
) -> Result<StatusCode, ApiError> {
    let build = held_build(&state, &headers, &raw, req.lease_token).await?;
    let error: String = req.error.chars().take(MAX_ERROR_CHARS).collect();
    if !state
        .store
        .fail_build(build.id, req.lease_token, &error)
        .await?
    {
        return Err(ApiError::lease_lost(build.id));
    }
    tracing::warn!(build.id = %build.id, platform = %build.platform, error, "build failed");
    // The outcome is recorded: a log that cannot be written must not undo it.
    if let Err(e) = state
        .logs
        .append(build.id, &[format!("[archfarm] failed: {error}")])
        .await
    {
        tracing::warn!(build.id = %build.id, error = %e, "could not append to the build log");
    }
    // A required platform's failure fails the job; an optional one's becomes a warning.
    crate::progress::advance(&state, build.job_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct LogQuery {
    offset: Option<u64>,
}

async fn read_log(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<impl IntoResponse, ApiError> {
    require_client(&state, &headers)?;
    let id = parse_id("build", &raw)?;
    if state.store.get_build(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no build with id '{id}'")));
    }
    let bytes = state.logs.read_from(id, q.offset.unwrap_or(0)).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes))
}

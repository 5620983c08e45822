//! `/contexts/{digest}`: content-addressed build context archives.

use archfarm_protocol::api::ContextInfo;
use archfarm_protocol::Digest;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::access::Access;
use super::error::ApiError;
use super::routes::Routes;
use crate::blobs::BlobError;
use crate::AppState;

/// Routes of this resource.
pub fn routes() -> Routes {
    Routes::new()
        .get("/contexts/{digest}", Access::SubmitterOrAgent, download)
        .head("/contexts/{digest}", Access::Submit, exists)
        .put("/contexts/{digest}", Access::Submit, upload)
}

fn parse_digest(raw: &str) -> Result<Digest, ApiError> {
    Digest::parse(raw).map_err(|e| ApiError::bad("invalid_digest", e.reason))
}

async fn exists(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let digest = parse_digest(&raw)?;
    // Recorded and whole: `exists` checks the `contexts` row and every piece.
    let known = state.blobs.exists(&digest).await?;
    if known {
        // The client skips the upload and submits a job naming it: retention must not take it now.
        state.store.touch_context(digest.as_str()).await?;
    }
    Ok(if known {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}

async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<ContextInfo>), ApiError> {
    let digest = parse_digest(&raw)?;
    let limit = state.config.max_context_bytes;
    let too_large = || {
        ApiError::TooLarge {
            code: "context_too_large",
            message: format!(
                "the context is larger than the limit of {limit} bytes (set --max-context-bytes to raise it)"
            ),
        }
    };
    // Refuse early when the client says up front that it will not fit.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let size = match state
        .blobs
        .put(&digest, body.into_data_stream(), limit)
        .await
    {
        Ok(size) => size,
        Err(BlobError::TooLarge { .. }) => return Err(too_large()),
        Err(e @ BlobError::DigestMismatch { .. }) => {
            return Err(ApiError::bad("digest_mismatch", e.to_string()))
        }
        Err(BlobError::Refused(e)) => {
            tracing::warn!(context = %digest, code = e.code(), error = %e, "context refused");
            return Err(if e.over_limit() {
                ApiError::TooLarge {
                    code: e.code(),
                    message: e.to_string(),
                }
            } else {
                ApiError::bad(e.code(), e.to_string())
            });
        }
        Err(e @ BlobError::Body(_)) => return Err(ApiError::bad("upload_failed", e.to_string())),
        Err(e @ (BlobError::Io(_) | BlobError::Store(_) | BlobError::Corrupt { .. })) => {
            return Err(e.into())
        }
    };
    state
        .store
        .insert_context(digest.as_str(), size as i64)
        .await?;
    tracing::info!(context = %digest, size, "context stored");
    Ok((StatusCode::CREATED, Json(ContextInfo { digest, size })))
}

async fn download(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let digest = parse_digest(&raw)?;
    // From this replica's cache, copied there from the database when another replica took the
    // upload.
    let Some(path) = state.blobs.local(&digest).await? else {
        return Err(ApiError::NotFound(format!(
            "no context {digest} on this coordinator"
        )));
    };
    let file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

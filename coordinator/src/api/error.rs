//! The one error type of the HTTP boundary: every failure becomes a JSON `ErrorResponse`.

use archfarm_protocol::api::ErrorResponse;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use crate::store::StoreError;

/// An error answered to an API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is wrong; `code` names the kind, `message` says what is accepted.
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// Sentence for people.
        message: String,
    },
    /// 401: no or wrong credentials.
    #[error("{message}")]
    Unauthorized {
        /// Machine-readable code.
        code: &'static str,
        /// Sentence for people.
        message: String,
    },
    /// 403: the credentials are good but do not allow this (a `read` token submitting, a revoked agent).
    #[error("{message}")]
    Forbidden {
        /// Machine-readable code.
        code: &'static str,
        /// Sentence for people.
        message: String,
    },
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the current state (a lost lease, a finished job).
    #[error("{message}")]
    Conflict {
        /// Machine-readable code.
        code: &'static str,
        /// Sentence for people.
        message: String,
    },
    /// 413: the body is over a limit.
    #[error("{message}")]
    TooLarge {
        /// Machine-readable code.
        code: &'static str,
        /// Sentence for people, naming the limit.
        message: String,
    },
    /// 500: logged with its cause, never shown to the client.
    #[error("internal error: {0}")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 400 with a code and message.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 409 meaning the caller's lease is no longer valid.
    pub fn lease_lost(build: impl std::fmt::Display) -> Self {
        ApiError::Conflict {
            code: "lease_lost",
            message: format!(
                "the lease on build {build} is no longer held by this caller; stop the build"
            ),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<crate::blobs::BlobError> for ApiError {
    fn from(e: crate::blobs::BlobError) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::BadRequest { code, message } => (StatusCode::BAD_REQUEST, code, message),
            ApiError::Unauthorized { code, message } => (StatusCode::UNAUTHORIZED, code, message),
            ApiError::Forbidden { code, message } => (StatusCode::FORBIDDEN, code, message),
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, "not_found", message),
            ApiError::Conflict { code, message } => (StatusCode::CONFLICT, code, message),
            ApiError::TooLarge { code, message } => (StatusCode::PAYLOAD_TOO_LARGE, code, message),
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the coordinator's log".to_string(),
                )
            }
        };
        (
            status,
            Json(ErrorResponse {
                code: code.to_string(),
                message,
            }),
        )
            .into_response()
    }
}

/// `Json` whose rejections are `ApiError`s, so a garbage body gets the same JSON error shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(match rejection {
                JsonRejection::MissingJsonContentType(_) => ApiError::bad(
                    "invalid_json",
                    "the body must be JSON with Content-Type: application/json",
                ),
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge {
                    code: "body_too_large",
                    message: format!(
                        "the request body is over this endpoint's limit: {}",
                        other.body_text()
                    ),
                },
                other => ApiError::bad(
                    "invalid_json",
                    format!("the body is not a valid request: {}", other.body_text()),
                ),
            }),
        }
    }
}

/// `Query` whose rejections are `ApiError`s.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| {
                ApiError::bad(
                    "invalid_query",
                    format!("the query string is not valid: {}", e.body_text()),
                )
            })
    }
}

/// The answer for a path no route matches, in the same JSON shape as every other error.
pub async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", uri.path()))
}

/// Parses an id from a path segment, answering 404 for anything that is not a UUID.
pub fn parse_id(kind: &str, raw: &str) -> Result<uuid::Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("no {kind} with id '{raw}'")))
}

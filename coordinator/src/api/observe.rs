//! What every request passes through: HTTP metrics by matched route, and a wake-up for live views
//! after any request that may have changed something.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::store::now_ms;
use crate::AppState;

/// Label for requests that matched no route: raw paths would make the label set unbounded.
const UNMATCHED: &str = "unmatched";

/// Counts and times the request; after a successful write, wakes live views.
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, |m| m.as_str())
        .to_string();
    let response = next.run(req).await;
    let status = response.status();
    if method != Method::GET && method != Method::HEAD && status.is_success() {
        state.changes.notify();
    }
    state.metrics.http_request(
        method_label(&method),
        &route,
        status.as_u16(),
        started.elapsed(),
    );
    response
}

/// The method as a label value. Clients may send any token as a method; each would otherwise
/// become a new series, so anything but the usual methods is `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `GET /metrics`: the Prometheus text format. Readable with a read token when an API token is
/// set (the gate checks).
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let queued = state.store.queued_builds().await?;
    let agents = super::views::agents(&state).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.scrape(now_ms(), &queued, &agents),
    )
        .into_response())
}

//! The HTTP API under `/api/v1`, one module per resource.

pub mod agents;
pub mod auth;
pub mod builds;
pub mod client_cert;
pub mod contexts;
pub mod error;
pub mod events;
pub mod jobs;
pub mod observe;
pub mod tokens;
pub mod views;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::routing::get;
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::AppState;

/// Largest JSON body any endpoint takes; context archives are streamed and have their own limit.
const MAX_JSON_BODY: usize = 1024 * 1024;

/// Every route of the coordinator.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(contexts::router())
        .merge(jobs::router())
        .merge(agents::router())
        .merge(builds::router())
        .merge(events::router())
        .merge(tokens::router())
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(observe::metrics))
        .nest(archfarm_protocol::api::API_PREFIX, api)
        .merge(crate::web::router())
        .fallback(error::no_route)
        // After routing (it needs the route), inside `observe` (so refusals are counted).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            client_cert::require_for_agents,
        ))
        // A router-wide layer runs after routing, so it sees the matched route template.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            // Keyed by the matched route, so spans group by endpoint rather than by id.
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|m| m.as_str().to_string())
                .unwrap_or_default();
            tracing::info_span!("request", method = %req.method(), route)
        }))
        .with_state(state)
}

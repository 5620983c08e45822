//! The HTTP API under `/api/v1`, one module per resource.

pub mod access;
pub mod admin;
pub mod agents;
pub mod auth;
pub mod builds;
pub mod client_cert;
pub mod contexts;
pub mod error;
pub mod events;
pub mod gate;
pub mod jobs;
pub mod join;
pub mod observe;
pub mod plain_http;
pub mod routes;
pub mod tokens;
pub mod views;

use axum::extract::{MatchedPath, Request};
use axum::Router;
use tower_http::trace::TraceLayer;

use self::access::{Access, RouteTable};
use self::routes::Routes;
use crate::AppState;

/// Largest JSON body any endpoint takes; context archives are streamed and have their own limit.
const MAX_JSON_BODY: usize = 1024 * 1024;

/// Every route of the coordinator with what it needs: the one source of both the router and
/// the gate's table.
pub fn routes() -> Routes {
    let api = Routes::new()
        .merge(contexts::routes())
        .merge(jobs::routes())
        .merge(agents::routes())
        .merge(builds::routes())
        .merge(events::routes())
        .merge(tokens::routes())
        .merge(admin::routes())
        .body_limit(MAX_JSON_BODY);
    Routes::new()
        .get("/healthz", Access::Public, || async { "ok" })
        .get("/metrics", Access::Read, observe::metrics)
        .nest(archfarm_protocol::api::API_PREFIX, api)
        .merge(crate::web::routes())
}

/// The table of every route and what it needs, as the router is built with it.
pub fn route_table() -> RouteTable {
    routes().into_parts().1
}

/// Every route of the coordinator, behind the gate.
pub fn router(state: AppState) -> Router {
    let (routes, table) = routes().into_parts();
    routes
        .fallback(error::no_route)
        // After routing (it needs the route), before every handler's extractors (so before any
        // body is read), inside `observe` (so refusals are counted).
        .layer(axum::middleware::from_fn_with_state(
            gate::Gate::new(state.clone(), table),
            gate::check,
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

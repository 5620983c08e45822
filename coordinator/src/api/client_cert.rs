//! `--client-ca`: agent calls must come over a connection with a verified client certificate.
//!
//! The TLS verifier accepts clients without a certificate (the CLI, browsers) and fails the
//! handshake of one whose certificate does not chain to the CA, so here a connection either has a
//! verified certificate or none. What counts as an agent call: the routes only agents use
//! (registration, the lease poll, deregistering, build reports) and any request that carries an
//! agent token (an agent draining itself, downloading a context). `archfarm agents drain` with an
//! API token still works without a certificate.

use archfarm_protocol::tokens::AGENT_TOKEN_PREFIX;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::bearer;
use super::error::ApiError;
use crate::tls::Peer;
use crate::AppState;

/// Routes (under the API prefix) that only agents call, all `POST`.
const AGENT_ROUTES: &[&str] = &[
    "/agents/register",
    "/agents/{id}/lease",
    "/agents/{id}/deregister",
    "/builds/{id}/heartbeat",
    "/builds/{id}/log",
    "/builds/{id}/complete",
    "/builds/{id}/fail",
];

/// Whether `req` came over a connection that presented a verified client certificate.
pub fn has_client_cert(req: &Request) -> bool {
    req.extensions()
        .get::<ConnectInfo<Peer>>()
        .is_some_and(|ConnectInfo(peer)| peer.client_cert)
}

/// Whether `req` is an agent's call (see the module documentation).
pub fn is_agent_call(req: &Request) -> bool {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    let agent_route =
        req.method() == Method::POST && AGENT_ROUTES.iter().any(|r| route.ends_with(r));
    agent_route || bearer(req.headers()).is_some_and(|t| t.starts_with(AGENT_TOKEN_PREFIX))
}

/// Middleware: with `--client-ca`, refuses agent calls without a verified client certificate
/// (401 `client_certificate_required`); everything else passes.
pub async fn require_for_agents(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if state.config.client_ca.is_none() || has_client_cert(&req) || !is_agent_call(&req) {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|ConnectInfo(p)| p.addr.to_string())
        .unwrap_or_default();
    tracing::warn!(
        %peer,
        method = %req.method(),
        path = %req.uri().path(),
        "agent call without a verified client certificate refused"
    );
    ApiError::Unauthorized {
        code: "client_certificate_required",
        message: "this coordinator accepts agents only with a client certificate signed by its \
                  --client-ca: start the agent with --client-cert FILE and --client-key FILE"
            .into(),
    }
    .into_response()
}

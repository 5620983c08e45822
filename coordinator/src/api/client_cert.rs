//! `--client-ca`: agent calls must come over a connection with a verified client certificate.
//!
//! The TLS verifier accepts clients without a certificate (the CLI, browsers) and fails the
//! handshake of one whose certificate does not chain to the CA, so here a connection either has a
//! verified certificate or none. What counts as an agent call: the routes only agents use
//! (registration, the lease poll, deregistering, build reports: [`Access::agents_only`] in the
//! route table) and any request that carries an agent token (an agent draining itself,
//! downloading a context). `archfarm agents drain` with an API token still works without a
//! certificate.

use archfarm_protocol::tokens::AGENT_TOKEN_PREFIX;
use axum::extract::{ConnectInfo, Request};

use super::access::Access;
use super::auth::bearer;
use super::error::ApiError;
use crate::tls::Peer;
use crate::AppState;

/// Whether `req` came over a connection that presented a verified client certificate.
pub fn has_client_cert(req: &Request) -> bool {
    req.extensions()
        .get::<ConnectInfo<Peer>>()
        .is_some_and(|ConnectInfo(peer)| peer.client_cert)
}

/// Whether `req`, on a route needing `access`, is an agent's call (see the module documentation).
pub fn is_agent_call(req: &Request, access: Access) -> bool {
    access.agents_only() || bearer(req.headers()).is_some_and(|t| t.starts_with(AGENT_TOKEN_PREFIX))
}

/// With `--client-ca`, refuses an agent call without a verified client certificate
/// (401 `client_certificate_required`); everything else passes. The gate asks this first, so an
/// agent without its certificate is told that rather than anything about its token.
pub fn require_for_agents(state: &AppState, req: &Request, access: Access) -> Result<(), ApiError> {
    if state.config.client_ca.is_none() || has_client_cert(req) || !is_agent_call(req, access) {
        return Ok(());
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
    Err(ApiError::Unauthorized {
        code: "client_certificate_required",
        message: "this coordinator accepts agents only with a client certificate signed by its \
                  --client-ca: start the agent with --client-cert FILE and --client-key FILE"
            .into(),
    })
}

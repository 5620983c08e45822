//! The one gate of every request: after routing (it reads the matched route) and before the
//! handler's extractors run (so before any body is read or validated), it looks the route up in
//! the [`RouteTable`], refuses a caller that may not call it, and hands what it established to
//! the handler as a request extension ([`Authed`]: the [`Caller`](auth::Caller), the
//! [`AgentRow`](crate::store::AgentRow), the [`JoinPass`](join::JoinPass)), so that each request
//! checks its token once. A route missing from the table is refused.

use std::sync::Arc;

use archfarm_protocol::tokens::Scope;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::RequestExt as _;
use uuid::Uuid;

use super::access::{Access, Lookup, RouteTable};
use super::auth;
use super::client_cert;
use super::error::ApiError;
use super::join;
use crate::AppState;

/// What the gate needs: the coordinator and the table of its routes.
#[derive(Debug, Clone)]
pub struct Gate {
    state: AppState,
    table: Arc<RouteTable>,
}

impl Gate {
    /// The gate for the routes in `table`.
    pub fn new(state: AppState, table: RouteTable) -> Self {
        Gate {
            state,
            table: Arc::new(table),
        }
    }
}

/// Middleware: lets a request reach its handler only when its caller may call its route.
pub async fn check(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let lookup = match &route {
        Some(route) => gate.table.find(req.method(), route),
        // No route matched: the fallback answers 404 and runs nothing of ours.
        None => Lookup::Found(Access::Public),
    };
    let access = match lookup {
        Lookup::Found(access) => access,
        Lookup::OtherMethods(_) | Lookup::Missing => Access::Public,
    };
    // First, so an agent without its certificate is told that rather than anything about its token.
    if let Err(e) = client_cert::require_for_agents(&gate.state, &req, access) {
        return e.into_response();
    }
    if lookup == Lookup::Missing {
        tracing::error!(method = %req.method(), route = ?route, "refused a route that has no access rule");
    }
    if let Some(answer) = unlisted(lookup) {
        return answer;
    }
    match admit(&gate.state, &mut req, access).await {
        Ok(()) => next.run(req).await,
        Err(e) if access == Access::Page => crate::web::refused_page(e, req.uri()),
        Err(e) => {
            if access == Access::Join {
                // The agent's operator looks in the log for why it cannot join.
                tracing::warn!(reason = %e, "registration refused: wrong, spent, revoked or missing token");
            }
            e.into_response()
        }
    }
}

/// The answer for a route the table does not list for this method, if it does not: 405 with
/// the methods it does list (what axum would answer, answered here so that nothing outside the
/// table runs), or 403 for a path it does not know at all.
fn unlisted(lookup: Lookup) -> Option<Response> {
    match lookup {
        Lookup::Found(_) => None,
        Lookup::OtherMethods(allowed) => {
            let allow = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(",");
            let mut res = StatusCode::METHOD_NOT_ALLOWED.into_response();
            if let Ok(v) = HeaderValue::from_str(&allow) {
                res.headers_mut().insert(header::ALLOW, v);
            }
            Some(res)
        }
        // Only a route added to the router without `Routes` gets here: a bug, kept closed.
        Lookup::Missing => Some(
            ApiError::Forbidden {
                code: "no_access_rule",
                message: "this route has no access rule, so nobody may call it".into(),
            }
            .into_response(),
        ),
    }
}

/// Checks the caller against `access` and records what was established in `req`'s extensions.
async fn admit(state: &AppState, req: &mut Request, access: Access) -> Result<(), ApiError> {
    match access {
        Access::Public => {}
        Access::Read | Access::Page => {
            let caller = auth::require(state, req.headers(), Scope::Read).await?;
            req.extensions_mut().insert(caller);
        }
        Access::Submit => {
            let caller = auth::require(state, req.headers(), Scope::Submit).await?;
            req.extensions_mut().insert(caller);
        }
        Access::Admin => {
            let caller = auth::require(state, req.headers(), Scope::Admin).await?;
            req.extensions_mut().insert(caller);
        }
        Access::Agent => {
            let agent = auth::require_agent(state, req.headers()).await?;
            req.extensions_mut().insert(agent);
        }
        Access::AgentItself => {
            let agent = auth::require_agent(state, req.headers()).await?;
            // An `{id}` that is no id at all is the handler's 404.
            if path_id(req).await.is_some_and(|id| id != agent.id) {
                // Not the agent the path names: to it, the caller is unknown.
                return Err(ApiError::Unauthorized {
                    code: archfarm_protocol::api::UNKNOWN_AGENT,
                    message: "this token belongs to another agent".into(),
                });
            }
            req.extensions_mut().insert(agent);
        }
        Access::AgentItselfOrAdmin => {
            let id = path_id(req).await;
            let itself = auth::require_agent(state, req.headers())
                .await
                .ok()
                .filter(|agent| Some(agent.id) == id);
            match itself {
                Some(agent) => {
                    req.extensions_mut().insert(agent);
                }
                None => {
                    let caller = auth::require(state, req.headers(), Scope::Admin).await?;
                    req.extensions_mut().insert(caller);
                }
            }
        }
        Access::SubmitterOrAgent => auth::require_submitter_or_agent(state, req.headers()).await?,
        Access::Join => {
            let pass = join::check_join(state, req.headers()).await?;
            req.extensions_mut().insert(pass);
        }
    }
    Ok(())
}

/// The route's `{id}`, if it has one and it is an id.
async fn path_id(req: &mut Request) -> Option<Uuid> {
    let params = req.extract_parts::<RawPathParams>().await.ok()?;
    let raw = params.iter().find(|(k, _)| *k == "id")?.1;
    raw.parse().ok()
}

/// What the gate established for this request, for its handler: the [`Caller`](auth::Caller)
/// on routes that need a scope, the [`AgentRow`](crate::store::AgentRow) on agent routes, the
/// [`JoinPass`](join::JoinPass) on registration.
pub struct Authed<T>(pub T);

impl<S: Send + Sync, T: Clone + Send + Sync + 'static> FromRequestParts<S> for Authed<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Missing only when a handler wants what its route's access does not establish: a bug.
        parts
            .extensions
            .get::<T>()
            .cloned()
            .map(Authed)
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!(
                    "the gate established no {} for {}",
                    std::any::type_name::<T>(),
                    parts.uri.path()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_routes_pass_and_unlisted_ones_are_refused() {
        assert!(unlisted(Lookup::Found(Access::Public)).is_none());
        let res = unlisted(Lookup::OtherMethods(vec![Method::GET, Method::HEAD])).unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers()[header::ALLOW], "GET,HEAD");
        let res = unlisted(Lookup::Missing).unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    }
}

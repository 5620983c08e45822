//! Who may call what: CI clients and people with the `--api-token` or a created API token of a
//! scope (read < submit < admin), browsers with the dashboard's cookie, agents with their own token.

use axum::http::HeaderMap;
use sha2::{Digest as _, Sha256};

use archfarm_protocol::repository_pattern::{allowed_by, RepositoryPattern};
use archfarm_protocol::tokens::{Scope, AGENT_TOKEN_PREFIX, API_TOKEN_PREFIX};

use super::error::ApiError;
use crate::config::Secret;
use crate::store::{AgentRow, Refusal};
use crate::AppState;

/// The bearer token in `Authorization`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Hex sha256 of a token: the only form in which agent tokens are stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
pub fn same_secret(given: &str, expected: &Secret) -> bool {
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(expected.expose().as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// What an authenticated caller may do, and which token it used (for logs and listings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's scope; `Admin` for the `--api-token` and when the API is open.
    pub scope: Scope,
    /// The name of the created token it used; `None` for `--api-token`, the open API and public reads.
    pub token: Option<String>,
    /// Where its jobs may push (a limited `submit` token's patterns); empty: anywhere.
    pub repositories: Vec<RepositoryPattern>,
}

impl Caller {
    /// Whether this caller's patterns cover `registry`/`repository` (always, for a caller without).
    pub fn covers(&self, registry: &str, repository: &str) -> bool {
        allowed_by(&self.repositories, registry, repository)
    }

    /// Refuses, with 403 `repository_not_allowed` naming the patterns, a push to
    /// `registry`/`repository` outside this caller's patterns (`what` begins the message, e.g.
    /// "this job would push to").
    pub fn may_push(&self, registry: &str, repository: &str, what: &str) -> Result<(), ApiError> {
        if allowed_by(&self.repositories, registry, repository) {
            return Ok(());
        }
        let patterns: Vec<String> = self.repositories.iter().map(ToString::to_string).collect();
        Err(ApiError::Forbidden {
            code: "repository_not_allowed",
            message: format!(
                "{what} {registry}/{repository}, which is outside this token's repositories: {}",
                patterns.join(", ")
            ),
        })
    }
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::Unauthorized {
        code: "unauthorized",
        message: message.into(),
    }
}

fn refused(refusal: Refusal) -> ApiError {
    unauthorized(match refusal {
        Refusal::Unknown => "unknown API token: send Authorization: Bearer TOKEN with this coordinator's --api-token or a token from `archfarm tokens create` (the CLI reads ARCHFARM_TOKEN or --token)",
        Refusal::Expired => "this API token has expired: ask an admin for a new one (`archfarm tokens create --scope ...`)",
        Refusal::Revoked => "this API token was revoked: ask an admin for a new one (`archfarm tokens create --scope ...`)",
        Refusal::UsedUp => "this API token can no longer be used",
    })
}

/// Checks the caller may do what needs `needed`: with the `--api-token` or a created API token
/// of that scope or above (as a bearer token), or for reads the dashboard's cookie, or nothing at
/// all when the API is open (no `--api-token`) or, for reads, `--public-read` is on. A token that
/// is good but too narrow gets 403 `insufficient_scope`.
pub async fn require(
    state: &AppState,
    headers: &HeaderMap,
    needed: Scope,
) -> Result<Caller, ApiError> {
    let open = Caller {
        scope: Scope::Admin,
        token: None,
        repositories: Vec::new(),
    };
    let Some(admin) = &state.config.api_token else {
        return Ok(open);
    };
    if needed == Scope::Read && state.config.public_read {
        return Ok(Caller {
            scope: Scope::Read,
            token: None,
            repositories: Vec::new(),
        });
    }
    let caller = match bearer(headers) {
        Some(given) if same_secret(given, admin) => open,
        Some(given) if given.starts_with(API_TOKEN_PREFIX) => {
            let info = state
                .store
                .use_api_token(&token_hash(given), false)
                .await?
                .map_err(refused)?;
            let repositories = info
                .repositories
                .iter()
                .map(|p| RepositoryPattern::parse(p))
                .collect::<Result<Vec<_>, _>>()
                // Stored patterns were checked when made; one that no longer parses limits
                // nothing known, so the token is refused rather than left unlimited.
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("token {}: {e}", info.name)))?;
            Caller {
                scope: info.scope.unwrap_or(Scope::Read),
                token: Some(info.name),
                repositories,
            }
        }
        Some(_) => return Err(refused(Refusal::Unknown)),
        // Only reads take the cookie, so a page on another site cannot make a browser change anything.
        None if needed == Scope::Read => match cookie(headers, TOKEN_COOKIE) {
            Some(given) if same_secret(given, &Secret::new(read_cookie_value(admin))) => Caller {
                scope: Scope::Read,
                token: None,
                repositories: Vec::new(),
            },
            Some(given) => {
                let info = state
                    .store
                    .use_api_token(&token_hash(given), true)
                    .await?
                    .map_err(|_| {
                        unauthorized(
                            "the dashboard sign-in is no longer valid: sign in again at /login",
                        )
                    })?;
                Caller {
                    scope: Scope::Read,
                    token: Some(info.name),
                    repositories: Vec::new(),
                }
            }
            None => return Err(unauthorized(MISSING)),
        },
        None => return Err(unauthorized(MISSING)),
    };
    if caller.scope < needed {
        return Err(ApiError::Forbidden {
            code: "insufficient_scope",
            message: format!(
                "this token's scope is {}; this needs {needed}: use a token made with `archfarm tokens create --scope {needed}`",
                caller.scope
            ),
        });
    }
    Ok(caller)
}

const MISSING: &str = "this coordinator needs an API token: send Authorization: Bearer TOKEN (the CLI reads ARCHFARM_TOKEN or --token)";

/// The cookie the dashboard's sign-in form sets, so a browser (whose `EventSource` cannot send
/// headers) can read what a CI client can. Its value is [`read_cookie_value`], not the token.
pub const TOKEN_COOKIE: &str = "archfarm_token";

/// The dashboard cookie's value for an API token: a one-way digest of it. A cookie that leaks
/// therefore grants reading only; it is not the token and cannot be turned back into it.
pub fn read_cookie_value(token: &Secret) -> String {
    let mut h = Sha256::new();
    h.update(b"archfarm dashboard read access v1\0");
    h.update(token.expose().as_bytes());
    hex::encode(h.finalize())
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Resolves the calling agent from its token.
pub async fn require_agent(state: &AppState, headers: &HeaderMap) -> Result<AgentRow, ApiError> {
    // The code says "unknown agent" in so many words: it is what makes an agent register again,
    // where a bare 401 or 404 (from a proxy in front of this coordinator) only makes it wait.
    let unauthorized = || ApiError::Unauthorized {
        code: archfarm_protocol::api::UNKNOWN_AGENT,
        message: "unknown or missing agent token: register again with the join token".into(),
    };
    let token = bearer(headers).ok_or_else(unauthorized)?;
    state
        .store
        .agent_by_token_hash(&token_hash(token))
        .await?
        .ok_or_else(unauthorized)
}

/// Either a CI client that may submit or an agent (context downloads are needed by both).
pub async fn require_submitter_or_agent(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    if bearer(headers).is_some_and(|t| t.starts_with(AGENT_TOKEN_PREFIX)) {
        return require_agent(state, headers).await.map(|_| ());
    }
    let caller = require(state, headers, Scope::Submit).await?;
    // A context is any team's sources; a token limited to some repositories is not given them.
    if !caller.repositories.is_empty() {
        return Err(ApiError::Forbidden {
            code: "repository_not_allowed",
            message: "a token limited to repositories cannot download build contexts, which may \
                      hold other teams' sources"
                .into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        let s: Secret = "abc".parse().unwrap();
        assert!(same_secret("abc", &s));
        assert!(!same_secret("abd", &s));
        assert!(!same_secret("ab", &s));
        assert_eq!(token_hash("x").len(), 64);
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; archfarm_token=s3cret".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        assert_eq!(cookie(&h, TOKEN_COOKIE), Some("s3cret"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "archfarm"), None);
    }
}

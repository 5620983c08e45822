//! Who may call what: CI clients with the API token, agents with their own token.

use axum::http::HeaderMap;
use sha2::{Digest as _, Sha256};

use super::error::ApiError;
use crate::config::Secret;
use crate::store::AgentRow;
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

/// Checks the API token when the coordinator has one.
pub fn require_client(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.config.api_token else {
        return Ok(());
    };
    match bearer(headers) {
        Some(given) if same_secret(given, expected) => Ok(()),
        _ => Err(ApiError::Unauthorized {
            code: "unauthorized",
            message: "missing or wrong API token: send Authorization: Bearer TOKEN (the CLI reads ARCHFARM_TOKEN or --token)"
                .into(),
        }),
    }
}

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

/// Checks the API token for a read-only request: as a bearer token or as the dashboard's cookie.
/// Only reads take the cookie, so a page on another site cannot make a browser change anything.
pub fn require_reader(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.config.api_token else {
        return Ok(());
    };
    match cookie(headers, TOKEN_COOKIE) {
        Some(given) if same_secret(given, &Secret::new(read_cookie_value(expected))) => Ok(()),
        _ => require_client(state, headers),
    }
}

/// Resolves the calling agent from its token.
pub async fn require_agent(state: &AppState, headers: &HeaderMap) -> Result<AgentRow, ApiError> {
    let unauthorized = || ApiError::Unauthorized {
        code: "invalid_agent_token",
        message: "unknown or missing agent token: register again with the join token".into(),
    };
    let token = bearer(headers).ok_or_else(unauthorized)?;
    state
        .store
        .agent_by_token_hash(&token_hash(token))
        .await?
        .ok_or_else(unauthorized)
}

/// Either a CI client or an agent (context downloads are needed by both).
pub async fn require_client_or_agent(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    if require_client(state, headers).is_ok() {
        return Ok(());
    }
    require_agent(state, headers).await.map(|_| ())
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

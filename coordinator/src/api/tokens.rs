//! `/tokens`: join tokens for agents and scoped API tokens, created, listed and revoked by admins.
//! A token is shown once, in the answer that creates it; only its hashes are kept.

use archfarm_protocol::repository_pattern::{RepositoryPattern, MAX_PATTERNS};
use archfarm_protocol::tokens::{
    valid_token_name, CreateTokenRequest, CreatedToken, Scope, TokenInfo, TokenKind, TokenList,
    MAX_TOKEN_NAME,
};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::access::Access;
use super::auth::{read_cookie_value, token_hash, Caller};
use super::error::{parse_id, ApiError, ApiJson};
use super::gate::Authed;
use super::routes::Routes;
use crate::config::Secret;
use crate::store::{now_ms, NewToken};
use crate::AppState;

/// Longest lifetime a token may be given: ten years, far past any sensible rotation.
const MAX_EXPIRES_SECS: u64 = 10 * 365 * 24 * 3600;

/// Routes of this resource.
pub fn routes() -> Routes {
    Routes::new()
        .post("/tokens", Access::Admin, create)
        .get("/tokens", Access::Admin, list)
        .post("/tokens/{id}/revoke", Access::Admin, revoke)
}

/// A new random token of `kind`: its prefix and 128 bits of randomness as hex.
fn mint(kind: TokenKind) -> String {
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    // Two v4 UUIDs carry 244 random bits; 32 hex characters of them are plenty and stay short.
    let hex = format!("{}{}", a.simple(), b.simple());
    format!("{}{}", kind.prefix(), &hex[..32])
}

/// Checks a creation request and returns its repository patterns normalised (lowercase
/// registry, Docker Hub as `docker.io/library/…`); the error names the field and what is accepted.
fn validate(req: &CreateTokenRequest) -> Result<Vec<String>, ApiError> {
    let bad = |m: String| ApiError::bad("invalid_token_request", m);
    match (req.kind, req.scope) {
        (TokenKind::Api, None) => {
            return Err(bad(
                "an API token needs a scope: read, submit or admin".into()
            ))
        }
        (TokenKind::Join, Some(s)) => {
            return Err(bad(format!(
                "join tokens have no scope (got '{s}'): they only let agents register"
            )))
        }
        _ => {}
    }
    if req.kind == TokenKind::Api && req.max_uses.is_some() {
        return Err(bad(
            "uses limit only join tokens (how many agents may register with it)".into(),
        ));
    }
    if req.max_uses == Some(0) {
        return Err(bad("uses must be at least 1".into()));
    }
    if let Some(secs) = req.expires_in_secs {
        if !(1..=MAX_EXPIRES_SECS).contains(&secs) {
            return Err(bad(format!(
                "expiry must be from 1 second to {MAX_EXPIRES_SECS} seconds (10 years); got {secs}"
            )));
        }
    }
    if let Some(name) = &req.name {
        if !valid_token_name(name) {
            return Err(bad(format!(
                "token name '{}' must be 1 to {MAX_TOKEN_NAME} of A-Z a-z 0-9 - _ . @",
                name.chars().take(80).collect::<String>()
            )));
        }
    }
    if req.repositories.is_empty() {
        return Ok(Vec::new());
    }
    // Reading is farm-wide and admins make tokens, so only a submit token is limited by patterns.
    if req.scope != Some(Scope::Submit) {
        return Err(bad(
            "repository patterns limit only submit tokens (where their jobs may push); read tokens \
             see the whole farm and admin tokens can make any token"
                .into(),
        ));
    }
    if req.repositories.len() > MAX_PATTERNS {
        return Err(bad(format!(
            "at most {MAX_PATTERNS} repository patterns per token"
        )));
    }
    let mut patterns: Vec<String> = Vec::new();
    for raw in &req.repositories {
        let p = RepositoryPattern::parse(raw).map_err(bad)?.to_string();
        if !patterns.contains(&p) {
            patterns.push(p);
        }
    }
    Ok(patterns)
}

async fn create(
    State(state): State<AppState>,
    Authed(caller): Authed<Caller>,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    if !state.config.auth_enabled() {
        return Err(ApiError::Conflict {
            code: "auth_disabled",
            message: "this coordinator has no --api-token, so its API is open and tokens would not be checked; \
                      start it with --api-token (the admin's token) to use scoped and join tokens"
                .into(),
        });
    }
    let repositories = validate(&req)?;
    let token = mint(req.kind);
    let cookie_hash = (req.kind == TokenKind::Api)
        .then(|| token_hash(&read_cookie_value(&Secret::new(token.clone()))));
    let info = state
        .store
        .insert_token(&NewToken {
            kind: req.kind,
            scope: req.scope,
            name: req.name.clone().unwrap_or_else(|| req.kind.to_string()),
            token_hash: token_hash(&token),
            cookie_hash,
            hint: format!("{}…", &token[..8]),
            expires_at: req
                .expires_in_secs
                .map(|s| now_ms().saturating_add((s as i64).saturating_mul(1000))),
            max_uses: req.max_uses,
            repositories,
        })
        .await?;
    tracing::info!(token.id = %info.id, kind = %info.kind, scope = ?info.scope.map(|s| s.as_str()),
        name = %info.name, repositories = ?info.repositories, by = ?caller.token, "token created");
    Ok((StatusCode::CREATED, Json(CreatedToken { token, info })))
}

async fn list(State(state): State<AppState>) -> Result<Json<TokenList>, ApiError> {
    Ok(Json(TokenList {
        tokens: state.store.list_tokens().await?,
    }))
}

async fn revoke(
    State(state): State<AppState>,
    Authed(caller): Authed<Caller>,
    Path(raw): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    let id = parse_id("token", &raw)?;
    let info = state
        .store
        .revoke_token(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no token with id '{id}'")))?;
    tracing::info!(token.id = %id, name = %info.name, by = ?caller.token, "token revoked");
    Ok(Json(info))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: TokenKind, scope: Option<Scope>) -> CreateTokenRequest {
        CreateTokenRequest {
            kind,
            scope,
            name: None,
            expires_in_secs: None,
            max_uses: None,
            repositories: Vec::new(),
        }
    }

    #[test]
    fn minted_tokens_carry_their_prefix() {
        let t = mint(TokenKind::Join);
        assert!(t.starts_with("afj_") && t.len() == 36, "{t}");
        assert_ne!(mint(TokenKind::Api), mint(TokenKind::Api));
        assert!(mint(TokenKind::Api).starts_with("afu_"));
    }

    #[test]
    fn requests_are_checked() {
        let msg = |r: &CreateTokenRequest| validate(r).unwrap_err().to_string();
        assert!(msg(&req(TokenKind::Api, None)).contains("needs a scope"));
        assert!(msg(&req(TokenKind::Join, Some(Scope::Read))).contains("no scope"));
        let mut r = req(TokenKind::Api, Some(Scope::Read));
        r.max_uses = Some(2);
        assert!(msg(&r).contains("only join tokens"));
        let mut r = req(TokenKind::Join, None);
        r.max_uses = Some(0);
        assert!(msg(&r).contains("at least 1"));
        r.max_uses = Some(1);
        r.expires_in_secs = Some(0);
        assert!(msg(&r).contains("expiry"));
        r.expires_in_secs = Some(3600);
        r.name = Some("bad name".into());
        assert!(msg(&r).contains("bad name"));
        r.name = Some("rack-2".into());
        assert!(validate(&r).is_ok());
    }

    #[test]
    fn repository_patterns_only_for_submit_tokens_and_normalised() {
        let msg = |r: &CreateTokenRequest| validate(r).unwrap_err().to_string();
        let mut r = req(TokenKind::Api, Some(Scope::Submit));
        r.repositories = vec![
            "Registry.Example.com/team-a/*".into(),
            "alpine".into(),
            "registry.example.com/team-a/*".into(),
        ];
        assert_eq!(
            validate(&r).unwrap(),
            ["registry.example.com/team-a/*", "docker.io/library/alpine"]
        );
        r.repositories = vec!["reg*.example.com/x".into()];
        assert!(msg(&r).contains("must be exact"), "{}", msg(&r));
        for scope in [Scope::Read, Scope::Admin] {
            let mut r = req(TokenKind::Api, Some(scope));
            r.repositories = vec!["localhost:5000/a".into()];
            assert!(msg(&r).contains("only submit tokens"), "{}", msg(&r));
        }
    }
}

//! Who may register an agent: the static `--join-token`, a created join token (with uses and an
//! expiry), or an agent's own token for its own name. The gate checks the token before the body
//! is read ([`check_join`]); the handler, knowing the name, decides and takes a join token's use
//! ([`require_join`]).

use axum::http::HeaderMap;

use archfarm_protocol::tokens::{AGENT_TOKEN_PREFIX, JOIN_TOKEN_PREFIX};

use super::auth::{bearer, same_secret, token_hash};
use super::error::ApiError;
use crate::store::{AgentRow, Refusal};
use crate::AppState;

/// How a registration was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// No join token is required (neither `--join-token` nor `--api-token` is set).
    Open,
    /// The static `--join-token`.
    Static,
    /// A created join token; one of its uses was taken (give it back if registering fails).
    Created(uuid::Uuid),
    /// The agent's own token from an earlier registration under the same name, so a restarted
    /// agent needs no join token again (a `--uses 1` token is spent on the first registration).
    Itself,
}

/// What a registration's bearer token turned out to be, found before the body (and so the
/// agent's name) is read; nothing is taken from a join token yet.
#[derive(Debug, Clone)]
pub enum JoinPass {
    /// No join token is required (neither `--join-token` nor `--api-token` is set).
    Open,
    /// The static `--join-token`.
    Static,
    /// A created join token with a use left when it was checked; the hash of the token.
    Created(String),
    /// A registered agent's own token: good for registering that agent's name again (or any name
    /// when no join token is required).
    Agent(AgentRow),
}

fn join_refused(message: &str) -> ApiError {
    ApiError::Unauthorized {
        code: "invalid_join_token",
        message: format!("{message}: start the agent with --join-token (the coordinator's, or one from `archfarm tokens create --join`)"),
    }
}

fn join_refusal(refusal: Refusal) -> ApiError {
    join_refused(match refusal {
        Refusal::Unknown => "the join token was rejected",
        Refusal::Expired => "the join token has expired",
        Refusal::UsedUp => "the join token has registered as many agents as it allows",
        Refusal::Revoked => "the join token was revoked",
    })
}

/// The refusal of a registration by a revoked agent, or under its name.
pub fn agent_revoked(name: &str) -> ApiError {
    ApiError::Forbidden {
        code: "agent_revoked",
        message: format!(
            "the agent named '{name}' was revoked by an admin; it may register again only after \
             an admin runs `archfarm agents forget {name}`"
        ),
    }
}

/// Checks the token of a registration before its body is read: a join token (taking no use), or
/// an agent's own token. A revoked agent's old token is told so (403 `agent_revoked`).
pub async fn check_join(state: &AppState, headers: &HeaderMap) -> Result<JoinPass, ApiError> {
    let given = bearer(headers);
    if let Some(t) = given.filter(|t| t.starts_with(AGENT_TOKEN_PREFIX)) {
        if let Some(agent) = state.store.agent_by_token_hash(&token_hash(t)).await? {
            return Ok(JoinPass::Agent(agent));
        }
    }
    if !state.config.join_required() {
        return Ok(JoinPass::Open);
    }
    match given {
        Some(t)
            if state
                .config
                .join_token
                .as_ref()
                .is_some_and(|j| same_secret(t, j)) =>
        {
            Ok(JoinPass::Static)
        }
        Some(t) if t.starts_with(JOIN_TOKEN_PREFIX) => {
            let hash = token_hash(t);
            match state.store.check_join_token(&hash).await? {
                Ok(_) => Ok(JoinPass::Created(hash)),
                Err(refusal) => Err(join_refusal(refusal)),
            }
        }
        Some(t) if t.starts_with(AGENT_TOKEN_PREFIX) => {
            match state.store.revoked_agent_by_token_hash(&token_hash(t)).await? {
                Some(name) => Err(agent_revoked(&name)),
                None => Err(join_refused(
                    "this agent token is no longer valid (revoked, or the coordinator forgot the agent)",
                )),
            }
        }
        Some(_) => Err(join_refused("the join token was rejected")),
        None => Err(join_refused("this coordinator needs a join token")),
    }
}

/// Checks a registration under `name` may proceed with what [`check_join`] found, taking a use
/// of a created join token.
pub async fn require_join(
    state: &AppState,
    pass: &JoinPass,
    name: &str,
) -> Result<Joined, ApiError> {
    match pass {
        JoinPass::Agent(agent) if agent.name == name => Ok(Joined::Itself),
        JoinPass::Open => Ok(Joined::Open),
        JoinPass::Agent(_) if !state.config.join_required() => Ok(Joined::Open),
        JoinPass::Agent(_) => Err(join_refused(&format!(
            "this agent token is not valid for an agent named '{name}' (revoked, or the coordinator forgot it)"
        ))),
        JoinPass::Static => Ok(Joined::Static),
        JoinPass::Created(hash) => match state.store.take_join_token(hash).await? {
            Ok(info) => Ok(Joined::Created(info.id)),
            // Used up or revoked since the gate checked it.
            Err(refusal) => Err(join_refusal(refusal)),
        },
    }
}

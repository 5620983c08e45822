//! Tokens: who may register agents (join tokens) and who may read, submit or administer (API
//! tokens). Every kind carries a recognisable prefix so secret scanners can find a leaked one.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Prefix of join tokens, which let an agent register (`archfarm tokens create --join`).
pub const JOIN_TOKEN_PREFIX: &str = "afj_";
/// Prefix of the per-agent tokens handed out at registration.
pub const AGENT_TOKEN_PREFIX: &str = "afa_";
/// Prefix of API tokens for CI clients and people (`archfarm tokens create --scope S`).
pub const API_TOKEN_PREFIX: &str = "afu_";

/// Longest token name.
pub const MAX_TOKEN_NAME: usize = 64;

/// What an API token allows. Each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Jobs, agents, logs, event streams, the dashboard and `/metrics`.
    Read,
    /// Reading, plus uploading contexts, submitting and cancelling jobs.
    Submit,
    /// Everything, including tokens and draining, revoking and forgetting agents.
    Admin,
}

impl Scope {
    /// The scope's name as the API and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "read" => Ok(Scope::Read),
            "submit" => Ok(Scope::Submit),
            "admin" => Ok(Scope::Admin),
            _ => Err(format!(
                "unknown scope '{s}': use read (look), submit (read + build) or admin (submit + tokens and agents)"
            )),
        }
    }
}

/// The two kinds of token the coordinator creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Lets agents register.
    Join,
    /// Lets clients call the API with a [`Scope`].
    Api,
}

impl TokenKind {
    /// The prefix of this kind's tokens.
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Join => JOIN_TOKEN_PREFIX,
            TokenKind::Api => API_TOKEN_PREFIX,
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenKind::Join => "join",
            TokenKind::Api => "api",
        })
    }
}

/// Whether a token can still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    /// Accepted.
    Active,
    /// Past its expiry.
    Expired,
    /// A join token that registered as many agents as it was allowed.
    UsedUp,
    /// Revoked by an admin.
    Revoked,
}

impl fmt::Display for TokenState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenState::Active => "active",
            TokenState::Expired => "expired",
            TokenState::UsedUp => "used up",
            TokenState::Revoked => "revoked",
        })
    }
}

/// `POST /api/v1/tokens` (admin scope).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Join or API token.
    pub kind: TokenKind,
    /// For API tokens: what it allows (required). Join tokens have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// A label for listings, 1 to [`MAX_TOKEN_NAME`] of `A-Z a-z 0-9 - _ . @`; default: the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Seconds until it stops working; default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
    /// For join tokens: how many agents it may register; default: any number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u64>,
    /// For `submit` tokens: the `REGISTRY/REPOSITORY` patterns its jobs may push to (see
    /// [`crate::repository_pattern`]); default: none, and then it may push anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
}

/// A token as listings show it: never the token itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Id, for `archfarm tokens revoke ID`.
    pub id: Uuid,
    /// Join or API token.
    pub kind: TokenKind,
    /// What an API token allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// Its label.
    pub name: String,
    /// The prefix and first characters, enough to recognise it (`afu_1a2b…`).
    pub hint: String,
    /// Whether it is accepted now.
    pub state: TokenState,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// How many agents a join token may register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u64>,
    /// Registrations so far (join tokens; API tokens count none).
    pub uses: u64,
    /// When it was last accepted (for API tokens, to the minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// The repository patterns a `submit` token's jobs are limited to; empty: not limited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
}

/// The answer to `POST /api/v1/tokens`: the only time the token itself is shown.
#[derive(Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The token; the coordinator keeps only its hash.
    pub token: String,
    /// What listings will show of it.
    #[serde(flatten)]
    pub info: TokenInfo,
}

impl fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedToken")
            .field("token", &"***")
            .field("info", &self.info)
            .finish()
    }
}

/// `GET /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenList {
    /// Newest first.
    pub tokens: Vec<TokenInfo>,
}

/// Whether `name` is a valid token label.
pub fn valid_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOKEN_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_order_and_say_what_is_accepted() {
        assert_eq!("Submit".parse::<Scope>(), Ok(Scope::Submit));
        assert!(Scope::Read < Scope::Submit && Scope::Submit < Scope::Admin);
        let err = "write".parse::<Scope>().unwrap_err();
        assert!(err.contains("'write'") && err.contains("read") && err.contains("admin"));
        assert_eq!(serde_json::to_string(&Scope::Admin).unwrap(), "\"admin\"");
    }

    #[test]
    fn created_tokens_hide_the_token_in_debug() {
        let t = CreatedToken {
            token: "afu_s3cret".into(),
            info: TokenInfo {
                id: Uuid::nil(),
                kind: TokenKind::Api,
                scope: Some(Scope::Read),
                name: "ci".into(),
                hint: "afu_s3…".into(),
                state: TokenState::Active,
                created_at: DateTime::<Utc>::default(),
                expires_at: None,
                max_uses: None,
                uses: 0,
                last_used_at: None,
                revoked_at: None,
                repositories: Vec::new(),
            },
        };
        assert!(!format!("{t:?}").contains("s3cret"));
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["token"], "afu_s3cret");
        assert_eq!(json["scope"], "read");
    }

    #[test]
    fn names() {
        assert!(valid_token_name("ci-main@gitlab"));
        assert!(!valid_token_name(""));
        assert!(!valid_token_name("a b"));
        assert!(!valid_token_name(&"x".repeat(65)));
    }
}

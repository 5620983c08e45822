//! Join and API tokens created at run time. Only hashes are stored: the token's sha256 for bearer
//! use and the sha256 of its dashboard cookie, so a copy of the database grants nothing.

use archfarm_protocol::tokens::{Scope, TokenInfo, TokenKind, TokenState};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::{json_list, now_ms, parse_col, to_json_list, to_time, Store, StoreError, StoreResult};

/// A token about to be stored.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Join or API.
    pub kind: TokenKind,
    /// API tokens' scope.
    pub scope: Option<Scope>,
    /// Label.
    pub name: String,
    /// Hex sha256 of the token.
    pub token_hash: String,
    /// Hex sha256 of the dashboard cookie made from it (API tokens).
    pub cookie_hash: Option<String>,
    /// Prefix and first characters, for listings.
    pub hint: String,
    /// Unix ms after which it is refused.
    pub expires_at: Option<i64>,
    /// Join tokens: how many registrations it allows.
    pub max_uses: Option<u64>,
    /// `submit` tokens: the repository patterns its jobs are limited to; empty: not limited.
    pub repositories: Vec<String>,
}

/// Why a token was not accepted, so the error can say what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token of that kind has this hash.
    Unknown,
    /// It is past its expiry.
    Expired,
    /// A join token with no uses left.
    UsedUp,
    /// An admin revoked it.
    Revoked,
}

/// How stale an API token's `last_used_at` may get, in milliseconds.
const LAST_USED_GRANULARITY_MS: i64 = 60_000;

const COLUMNS: &str = "id, kind, scope, name, hint, expires_at, max_uses, uses, revoked_at, \
                       created_at, last_used_at, repositories";

fn kind_text(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Join => "join",
        TokenKind::Api => "api",
    }
}

fn info_from_row(row: &AnyRow, now: i64) -> StoreResult<TokenInfo> {
    let kind = match row.try_get::<String, _>("kind")?.as_str() {
        "join" => TokenKind::Join,
        "api" => TokenKind::Api,
        other => {
            return Err(StoreError::Corrupt {
                column: "kind",
                value: other.into(),
            })
        }
    };
    let scope: Option<String> = row.try_get("scope")?;
    let scope = scope
        .map(|s| {
            s.parse::<Scope>().map_err(|_| StoreError::Corrupt {
                column: "scope",
                value: s,
            })
        })
        .transpose()?;
    let expires_at: Option<i64> = row.try_get("expires_at")?;
    let max_uses: Option<i64> = row.try_get("max_uses")?;
    let uses: i64 = row.try_get("uses")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    let last_used_at: Option<i64> = row.try_get("last_used_at")?;
    let repositories: Vec<String> = json_list(row, "repositories")?;
    let state = if revoked_at.is_some() {
        TokenState::Revoked
    } else if expires_at.is_some_and(|e| e <= now) {
        TokenState::Expired
    } else if max_uses.is_some_and(|m| uses >= m) {
        TokenState::UsedUp
    } else {
        TokenState::Active
    };
    Ok(TokenInfo {
        id: parse_col(row, "id")?,
        kind,
        scope,
        name: row.try_get("name")?,
        hint: row.try_get("hint")?,
        state,
        created_at: to_time(row.try_get("created_at")?),
        expires_at: expires_at.map(to_time),
        max_uses: max_uses.map(|m| m.max(0) as u64),
        uses: uses.max(0) as u64,
        last_used_at: last_used_at.map(to_time),
        revoked_at: revoked_at.map(to_time),
        repositories,
    })
}

fn refusal(state: TokenState) -> Refusal {
    match state {
        TokenState::Active => Refusal::Unknown,
        TokenState::Expired => Refusal::Expired,
        TokenState::UsedUp => Refusal::UsedUp,
        TokenState::Revoked => Refusal::Revoked,
    }
}

impl Store {
    /// Stores a new token and returns how listings show it.
    pub async fn insert_token(&self, t: &NewToken) -> StoreResult<TokenInfo> {
        let id = Uuid::new_v4();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO tokens (id, kind, scope, name, token_hash, cookie_hash, hint, expires_at, max_uses, uses, created_at, repositories) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $11)",
        )
        .bind(id.to_string())
        .bind(kind_text(t.kind))
        .bind(t.scope.map(|s| s.as_str()))
        .bind(&t.name)
        .bind(&t.token_hash)
        .bind(&t.cookie_hash)
        .bind(&t.hint)
        .bind(t.expires_at)
        .bind(t.max_uses.map(|m| m.min(i64::MAX as u64) as i64))
        .bind(now)
        // NULL, not `[]`, for an unlimited token: the same as every token made before patterns.
        .bind(to_json_list(&t.repositories))
        .execute(&self.pool)
        .await?;
        self.token(id)
            .await?
            .ok_or_else(|| StoreError::Db(sqlx::Error::RowNotFound))
    }

    /// One token by id.
    pub async fn token(&self, id: Uuid) -> StoreResult<Option<TokenInfo>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM tokens WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(|r| info_from_row(r, now_ms())).transpose()
    }

    /// Every token, newest first.
    pub async fn list_tokens(&self) -> StoreResult<Vec<TokenInfo>> {
        let now = now_ms();
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tokens ORDER BY created_at DESC, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| info_from_row(r, now)).collect()
    }

    /// Revokes a token. `None` when there is no such token; a token already revoked stays as it was.
    pub async fn revoke_token(&self, id: Uuid) -> StoreResult<Option<TokenInfo>> {
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        self.token(id).await
    }

    /// The API token with this hash (of the token, or of its dashboard cookie when `cookie`),
    /// when it is active; its `last_used_at` is brought up to the minute.
    pub async fn use_api_token(
        &self,
        hash: &str,
        cookie: bool,
    ) -> StoreResult<Result<TokenInfo, Refusal>> {
        let column = if cookie { "cookie_hash" } else { "token_hash" };
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tokens WHERE {column} = $1 AND kind = 'api'"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let now = now_ms();
        let Some(info) = row.as_ref().map(|r| info_from_row(r, now)).transpose()? else {
            return Ok(Err(Refusal::Unknown));
        };
        if info.state != TokenState::Active {
            return Ok(Err(refusal(info.state)));
        }
        // At most one write a minute per token: every API call and dashboard page checks a token,
        // and on SQLite a write per read would queue readers behind one another.
        if info
            .last_used_at
            .is_none_or(|t| t.timestamp_millis() < now - LAST_USED_GRANULARITY_MS)
        {
            sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(info.id.to_string())
                .execute(&self.pool)
                .await?;
        }
        Ok(Ok(info))
    }

    /// Takes one use of the join token with this hash. A single compare-and-set, so two agents
    /// racing for the last use of a `--uses 1` token cannot both get it.
    pub async fn take_join_token(
        &self,
        token_hash: &str,
    ) -> StoreResult<Result<TokenInfo, Refusal>> {
        let now = now_ms();
        let taken = sqlx::query(
            "UPDATE tokens SET uses = uses + 1, last_used_at = $1 WHERE token_hash = $2 AND kind = 'join' \
             AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) \
             AND (max_uses IS NULL OR uses < max_uses)",
        )
        .bind(now)
        .bind(token_hash)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tokens WHERE token_hash = $1 AND kind = 'join'"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(info) = row.as_ref().map(|r| info_from_row(r, now)).transpose()? else {
            return Ok(Err(Refusal::Unknown));
        };
        if taken {
            Ok(Ok(info))
        } else {
            // Not taken: say why (used up by this very race, expired, revoked).
            Ok(Err(match info.state {
                TokenState::Active => Refusal::UsedUp,
                other => refusal(other),
            }))
        }
    }

    /// Whether the join token with hash `token_hash` could register an agent now, without taking
    /// a use: a registration is let in before its body is read, and the use is taken only once
    /// the registration itself has been checked (see [`Store::take_join_token`]).
    pub async fn check_join_token(
        &self,
        token_hash: &str,
    ) -> StoreResult<Result<TokenInfo, Refusal>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tokens WHERE token_hash = $1 AND kind = 'join'"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(info) = row
            .as_ref()
            .map(|r| info_from_row(r, now_ms()))
            .transpose()?
        else {
            return Ok(Err(Refusal::Unknown));
        };
        Ok(match info.state {
            TokenState::Active => Ok(info),
            other => Err(refusal(other)),
        })
    }

    /// Gives back a use taken by [`Store::take_join_token`] when the registration then failed, so
    /// a refused attempt (a name clash, a bad platform) does not use up a one-use token.
    pub async fn return_join_token(&self, id: Uuid) -> StoreResult<()> {
        sqlx::query("UPDATE tokens SET uses = uses - 1 WHERE id = $1 AND uses > 0")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_store;

    fn join(hash: &str, max_uses: Option<u64>, expires_at: Option<i64>) -> NewToken {
        NewToken {
            kind: TokenKind::Join,
            scope: None,
            name: "rack-1".into(),
            token_hash: hash.into(),
            cookie_hash: None,
            hint: "afj_ab…".into(),
            expires_at,
            max_uses,
            repositories: Vec::new(),
        }
    }

    #[tokio::test]
    async fn join_tokens_count_uses_expire_and_revoke() {
        let (store, _dir) = test_store().await;
        let once = store
            .insert_token(&join("h1", Some(1), None))
            .await
            .unwrap();
        assert_eq!(once.state, TokenState::Active);
        // Checking takes no use, however often.
        for _ in 0..2 {
            assert!(store.check_join_token("h1").await.unwrap().is_ok());
        }
        assert!(store.take_join_token("h1").await.unwrap().is_ok());
        assert_eq!(
            store.take_join_token("h1").await.unwrap(),
            Err(Refusal::UsedUp)
        );
        assert_eq!(
            store.check_join_token("h1").await.unwrap(),
            Err(Refusal::UsedUp)
        );
        // A use given back (the registration failed) can be taken again, once.
        store.return_join_token(once.id).await.unwrap();
        assert!(store.take_join_token("h1").await.unwrap().is_ok());
        assert_eq!(
            store.token(once.id).await.unwrap().unwrap().state,
            TokenState::UsedUp
        );

        store
            .insert_token(&join("h2", None, Some(now_ms() - 1)))
            .await
            .unwrap();
        assert_eq!(
            store.take_join_token("h2").await.unwrap(),
            Err(Refusal::Expired)
        );
        assert_eq!(
            store.check_join_token("h2").await.unwrap(),
            Err(Refusal::Expired)
        );
        assert_eq!(
            store.check_join_token("nope").await.unwrap(),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            store.take_join_token("nope").await.unwrap(),
            Err(Refusal::Unknown)
        );

        let many = store.insert_token(&join("h3", None, None)).await.unwrap();
        for _ in 0..3 {
            assert!(store.take_join_token("h3").await.unwrap().is_ok());
        }
        store.revoke_token(many.id).await.unwrap();
        assert_eq!(
            store.take_join_token("h3").await.unwrap(),
            Err(Refusal::Revoked)
        );
        assert_eq!(
            store.check_join_token("h3").await.unwrap(),
            Err(Refusal::Revoked)
        );
        let listed = store.list_tokens().await.unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!(listed.iter().find(|t| t.id == many.id).unwrap().uses, 3);
    }

    #[tokio::test]
    async fn api_tokens_are_found_by_token_or_cookie_and_never_as_join_tokens() {
        let (store, _dir) = test_store().await;
        let t = store
            .insert_token(&NewToken {
                kind: TokenKind::Api,
                scope: Some(Scope::Read),
                name: "grafana".into(),
                token_hash: "th".into(),
                cookie_hash: Some("ch".into()),
                hint: "afu_12…".into(),
                expires_at: None,
                max_uses: None,
                repositories: Vec::new(),
            })
            .await
            .unwrap();
        assert_eq!(
            store
                .use_api_token("th", false)
                .await
                .unwrap()
                .unwrap()
                .scope,
            Some(Scope::Read)
        );
        assert!(store.use_api_token("ch", true).await.unwrap().is_ok());
        assert_eq!(
            store.use_api_token("ch", false).await.unwrap(),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            store.take_join_token("th").await.unwrap(),
            Err(Refusal::Unknown)
        );
        let used = store.token(t.id).await.unwrap().unwrap();
        assert_eq!(used.uses, 0, "API tokens count no uses");
        assert!(used.last_used_at.is_some());
        store.revoke_token(t.id).await.unwrap();
        assert_eq!(
            store.use_api_token("th", false).await.unwrap(),
            Err(Refusal::Revoked)
        );
    }

    #[tokio::test]
    async fn repository_patterns_are_kept_with_the_token() {
        let (store, _dir) = test_store().await;
        let patterns = vec![
            "registry.example.com/team-a/*".to_string(),
            "localhost:5000/x".into(),
        ];
        let t = store
            .insert_token(&NewToken {
                kind: TokenKind::Api,
                scope: Some(Scope::Submit),
                name: "team-a".into(),
                token_hash: "limited".into(),
                cookie_hash: None,
                hint: "afu_34…".into(),
                expires_at: None,
                max_uses: None,
                repositories: patterns.clone(),
            })
            .await
            .unwrap();
        assert_eq!(t.repositories, patterns);
        let used = store
            .use_api_token("limited", false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(used.repositories, patterns);
        let unlimited = store.insert_token(&join("free", None, None)).await.unwrap();
        assert!(unlimited.repositories.is_empty());
    }
}

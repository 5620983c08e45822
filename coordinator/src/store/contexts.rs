//! Context archive records; the bytes live in the data directory (see `blobs`).

use super::{now_ms, Store, StoreResult};

impl Store {
    /// Records a stored context archive; storing the same digest again only marks it used now.
    pub async fn insert_context(&self, digest: &str, size: i64) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO contexts (digest, size, created_at, last_used_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (digest) DO UPDATE SET last_used_at = excluded.last_used_at",
        )
        .bind(digest)
        .bind(size)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a context used now (a client found it with HEAD and is about to submit a job naming
    /// it), so retention leaves it for the next `--retention`.
    pub async fn touch_context(&self, digest: &str) -> StoreResult<()> {
        sqlx::query("UPDATE contexts SET last_used_at = $1 WHERE digest = $2")
            .bind(now_ms())
            .bind(digest)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether a context archive with this digest is recorded.
    pub async fn context_exists(&self, digest: &str) -> StoreResult<bool> {
        let row = sqlx::query("SELECT digest FROM contexts WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}

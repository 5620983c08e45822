//! Context archive records; the bytes live in the data directory (see `blobs`).

use super::{now_ms, Store, StoreResult};

impl Store {
    /// Records a stored context archive; storing the same digest twice is a no-op.
    pub async fn insert_context(&self, digest: &str, size: i64) -> StoreResult<()> {
        sqlx::query("INSERT INTO contexts (digest, size, created_at) VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING")
            .bind(digest)
            .bind(size)
            .bind(now_ms())
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

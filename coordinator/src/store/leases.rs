//! The record of every lease granted (written with the lease itself, in `claim_build`).

use sqlx::Row;
use uuid::Uuid;

use super::{parse_col, Store, StoreResult};

/// One lease as it was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The lease's fencing token.
    pub token: Uuid,
    /// The build leased.
    pub build_id: Uuid,
    /// The agent that got it.
    pub agent_name: String,
    /// `native` or `emulated`.
    pub mode: String,
    /// The coordinator replica that granted it (`--replica-name`).
    pub replica: String,
    /// When, Unix ms.
    pub granted_at: i64,
}

impl Store {
    /// The leases granted for one build, oldest first.
    pub async fn leases_of_build(&self, build: Uuid) -> StoreResult<Vec<LeaseRecord>> {
        let rows = sqlx::query(
            "SELECT token, build_id, agent_name, mode, replica, granted_at FROM leases \
             WHERE build_id = $1 ORDER BY granted_at, token",
        )
        .bind(build.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LeaseRecord {
                    token: parse_col(row, "token")?,
                    build_id: parse_col(row, "build_id")?,
                    agent_name: row.try_get("agent_name")?,
                    mode: row.try_get("mode")?,
                    replica: row.try_get("replica")?,
                    granted_at: row.try_get("granted_at")?,
                })
            })
            .collect()
    }
}

//! Warm agents: the agent that last built each repository for each platform, whose local layer
//! cache is the one most likely to hold that build's layers.

use archfarm_protocol::Platform;
use sqlx::Row;
use uuid::Uuid;

use super::agents::{AgentRow, COLUMNS as AGENT_COLUMNS};
use super::{parse_col, Store, StoreResult};

/// The agent that last built a repository for a platform, as registered now.
#[derive(Debug, Clone)]
pub struct WarmAgent {
    /// The repository, `registry/repository`.
    pub repository: String,
    /// The platform it built.
    pub platform: Platform,
    /// The agent.
    pub agent: AgentRow,
    /// When that build succeeded, Unix ms.
    pub built_at: i64,
}

impl Store {
    /// The warm agents of these `(registry/repository, platform)` pairs: for each, the agent of
    /// its last successful build when that finished since `built_since` and the agent was seen
    /// since `online_since` and is neither draining nor revoked. One indexed read, whatever the
    /// number of pairs.
    pub async fn warm_agents(
        &self,
        pairs: &[(String, Platform)],
        built_since: i64,
        online_since: i64,
    ) -> StoreResult<Vec<WarmAgent>> {
        let mut pairs: Vec<(&str, &str, String)> = pairs
            .iter()
            .map(|(repo, p)| {
                let (registry, repository) = repo.split_once('/').unwrap_or((repo, ""));
                (registry, repository, p.to_string())
            })
            .collect();
        pairs.sort();
        pairs.dedup();
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let columns: Vec<String> = AGENT_COLUMNS
            .split(',')
            .map(|c| format!("a.{}", c.trim()))
            .collect();
        let matches: Vec<String> = (0..pairs.len())
            .map(|i| {
                let n = 3 + 3 * i;
                format!(
                    "(w.registry = ${n} AND w.repository = ${} AND w.platform = ${})",
                    n + 1,
                    n + 2
                )
            })
            .collect();
        let sql = format!(
            "SELECT w.registry, w.repository, w.platform, w.built_at, {} \
             FROM warm_agents w JOIN agents a ON a.id = w.agent_id \
             WHERE w.built_at >= $1 AND a.last_seen >= $2 AND a.revoked_at IS NULL AND a.draining = 0 \
             AND a.unavailable IS NULL \
             AND ({})",
            columns.join(", "),
            matches.join(" OR ")
        );
        let mut query = sqlx::query(&sql).bind(built_since).bind(online_since);
        for (registry, repository, platform) in &pairs {
            query = query
                .bind(*registry)
                .bind(*repository)
                .bind(platform.as_str());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(WarmAgent {
                    repository: format!(
                        "{}/{}",
                        row.try_get::<String, _>("registry")?,
                        row.try_get::<String, _>("repository")?
                    ),
                    platform: parse_col(row, "platform")?,
                    agent: AgentRow::from_row(row)?,
                    built_at: row.try_get("built_at")?,
                })
            })
            .collect()
    }

    /// Forgets builds that finished before `before`: their caches no longer count as warm.
    pub async fn forget_warm_agents(&self, before: i64) -> StoreResult<u64> {
        let res = sqlx::query("DELETE FROM warm_agents WHERE built_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected())
    }
}

/// Records the holder of a build that just succeeded as the warm agent of its repository and
/// platform, in the transaction that recorded the success.
pub(super) async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    build_id: Uuid,
) -> StoreResult<()> {
    // `WHERE` is needed by SQLite's parser before `ON CONFLICT` in an `INSERT … SELECT`.
    sqlx::query(
        "INSERT INTO warm_agents (registry, repository, platform, agent_id, built_at) \
         SELECT j.registry, j.repository, b.platform, b.agent_id, b.finished_at \
         FROM builds b JOIN jobs j ON j.id = b.job_id \
         WHERE b.id = $1 AND b.agent_id IS NOT NULL AND b.finished_at IS NOT NULL \
         ON CONFLICT (registry, repository, platform) DO UPDATE \
         SET agent_id = excluded.agent_id, built_at = excluded.built_at",
    )
    .bind(build_id.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

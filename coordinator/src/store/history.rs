//! Finished builds as history: how long each platform took natively and under emulation.

use archfarm_protocol::api::{BuildMode, BuildState};
use archfarm_protocol::Platform;
use sqlx::Row;

use super::{parse_col, Store, StoreResult};

/// One succeeded build: its platform, how it ran, and how long it took from lease to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSample {
    /// The platform built.
    pub platform: Platform,
    /// Native or emulated.
    pub mode: BuildMode,
    /// `finished_at - started_at` of the attempt that succeeded, in ms.
    pub duration_ms: i64,
}

impl Store {
    /// The `limit` most recently created succeeded builds of every repository, newest first.
    pub async fn recent_build_samples(&self, limit: i64) -> StoreResult<Vec<BuildSample>> {
        // Newest by creation rather than by finish: the (state, created_at) index then answers
        // the query without sorting the whole table.
        let rows = sqlx::query(
            "SELECT platform, mode, started_at, finished_at FROM builds \
             WHERE state = $1 AND mode IS NOT NULL AND started_at IS NOT NULL AND finished_at IS NOT NULL \
             ORDER BY created_at DESC LIMIT $2",
        )
        .bind(BuildState::Succeeded.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mode: String = row.try_get("mode")?;
            let Some(mode) = BuildMode::from_name(&mode) else {
                continue;
            };
            let started: i64 = row.try_get("started_at")?;
            let finished: i64 = row.try_get("finished_at")?;
            out.push(BuildSample {
                platform: parse_col(row, "platform")?,
                mode,
                duration_ms: (finished - started).max(0),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{insert_test_job, test_store};
    use uuid::Uuid;

    #[tokio::test]
    async fn samples_are_succeeded_builds_with_their_mode_and_duration() {
        let (store, _dir) = test_store().await;
        let id = insert_test_job(&store, "a", &["linux/arm64", "linux/s390x", "linux/amd64"]).await;
        let builds = store.builds_of_job(id).await.unwrap();
        let modes = [BuildMode::Native, BuildMode::Emulated, BuildMode::Native];
        for (b, mode) in builds.iter().zip(modes) {
            let token = Uuid::new_v4();
            store
                .claim_build(
                    b.id,
                    Uuid::new_v4(),
                    "a",
                    mode,
                    token,
                    i64::MAX,
                    "test",
                    "replica-a",
                )
                .await
                .unwrap();
            // The amd64 build fails: failures are not history of how long a build takes.
            if b.platform.to_string() == "linux/amd64" {
                store.fail_build(b.id, token, "boom").await.unwrap();
            } else {
                store
                    .complete_build(b.id, token, "sha256:x", "m", 1)
                    .await
                    .unwrap();
            }
        }
        sqlx::query(
            "UPDATE builds SET started_at = 1000, finished_at = 1000 + 60000 * (position + 1)",
        )
        .execute(store.pool())
        .await
        .unwrap();
        let mut samples = store.recent_build_samples(100).await.unwrap();
        samples.sort_by_key(|s| s.duration_ms);
        assert_eq!(
            samples,
            [
                BuildSample {
                    platform: "linux/arm64".parse().unwrap(),
                    mode: BuildMode::Native,
                    duration_ms: 60_000
                },
                BuildSample {
                    platform: "linux/s390x".parse().unwrap(),
                    mode: BuildMode::Emulated,
                    duration_ms: 120_000
                },
            ]
        );
        assert_eq!(store.recent_build_samples(1).await.unwrap().len(), 1);
    }
}

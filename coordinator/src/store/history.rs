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

    /// The emulation estimate's history query (under the claim lock) walks the repository's
    /// jobs through `jobs_by_repository`, on a table big enough that the planner has a choice.
    #[tokio::test]
    async fn the_estimates_history_query_uses_the_repository_index() {
        let (store, _dir) = test_store().await;
        let ctx = format!("sha256:{}", "0".repeat(64));
        store.insert_context(&ctx, 1).await.unwrap();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 4999) \
             INSERT INTO jobs (id, state, context, dockerfile, build_args, emulation, tags, platforms, \
             registry, repository, created_at, updated_at, finished_at) \
             SELECT 'job-' || i, 'succeeded', $1, 'Dockerfile', '{}', 'fallback', '[]', '[]', \
             'localhost:5000', 'repo-' || (i % 250), i * 1000, i * 1000, i * 1000 + 5000 FROM n",
        )
        .bind(&ctx)
        .execute(store.pool())
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO builds (id, job_id, position, platform, state, mode, attempts, created_at, \
             started_at, finished_at) SELECT 'b-' || id, id, 0, 'linux/arm64', 'succeeded', \
             'emulated', 1, created_at, created_at, created_at + 4000 FROM jobs",
        )
        .execute(store.pool())
        .await
        .unwrap();
        sqlx::query("ANALYZE").execute(store.pool()).await.unwrap();
        let explain = match store.backend() {
            crate::store::Backend::Sqlite => "EXPLAIN QUERY PLAN ",
            crate::store::Backend::Postgres => "EXPLAIN ",
        };
        let rows = sqlx::query(&format!("{explain}{}", crate::store::builds::HISTORY_SQL))
            .bind("localhost:5000")
            .bind("repo-7")
            .bind(200i64)
            .fetch_all(store.pool())
            .await
            .unwrap();
        let plan: Vec<String> = rows
            .iter()
            .map(|r| match store.backend() {
                crate::store::Backend::Sqlite => r.try_get::<String, _>("detail").unwrap(),
                crate::store::Backend::Postgres => r.try_get::<String, _>(0).unwrap(),
            })
            .collect();
        let plan = plan.join("\n");
        println!("{plan}");
        assert!(plan.contains("jobs_by_repository"), "{plan}");
        assert!(plan.contains("builds_by_job"), "{plan}");
        let samples = store
            .recent_durations("localhost:5000/repo-7", 200)
            .await
            .unwrap();
        assert_eq!(samples.len(), 20);
        assert!(samples.iter().all(|s| s.2 == 4000));
    }
}

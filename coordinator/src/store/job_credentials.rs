//! The sealed registry credentials of live jobs (`job_registry_credentials`; sealing is
//! `crate::job_credentials`'s). Like build secrets: replicas share them through the database,
//! they are deleted in the transaction that ends the job (see `jobs.rs`) and by
//! [`Store::sweep_job_credentials`] for any path that did not.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{Store, StoreResult};
use crate::job_credentials::SealedCredential;

/// Stores a new job's sealed credentials, on the transaction that stores the job.
pub(super) async fn insert(
    conn: &mut AnyConnection,
    job_id: Uuid,
    sealed: &[SealedCredential],
) -> StoreResult<()> {
    for s in sealed {
        sqlx::query(
            "INSERT INTO job_registry_credentials (job_id, registry, key_id, sealed) VALUES ($1, $2, $3, $4)",
        )
        .bind(job_id.to_string())
        .bind(&s.registry)
        .bind(&s.key_id)
        .bind(&s.sealed)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Deletes a job's credentials, on the transaction that ends the job; returns how many went.
pub(super) async fn delete(conn: &mut AnyConnection, job_id: Uuid) -> StoreResult<u64> {
    let res = sqlx::query("DELETE FROM job_registry_credentials WHERE job_id = $1")
        .bind(job_id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(res.rows_affected())
}

impl Store {
    /// The sealed credentials of a job; empty once it has ended (or when it sent none).
    pub async fn job_credentials(&self, job_id: Uuid) -> StoreResult<Vec<SealedCredential>> {
        let rows = sqlx::query(
            "SELECT registry, key_id, sealed FROM job_registry_credentials WHERE job_id = $1 ORDER BY registry",
        )
        .bind(job_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SealedCredential {
                    registry: r.try_get("registry")?,
                    key_id: r.try_get("key_id")?,
                    sealed: r.try_get("sealed")?,
                })
            })
            .collect()
    }

    /// Deletes the credentials of every job that is not live; returns how many rows went. Run
    /// at start and every second, with the build secrets' sweep.
    pub async fn sweep_job_credentials(&self) -> StoreResult<u64> {
        let res = sqlx::query(
            "DELETE FROM job_registry_credentials WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = \
             job_registry_credentials.job_id AND jobs.state IN ('queued', 'building', 'stitching'))",
        )
        .execute(&self.pool)
        .await?;
        if res.rows_affected() > 0 {
            self.scrub_deleted_secrets().await;
        }
        Ok(res.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use archfarm_protocol::api::JobState;

    use super::*;
    use crate::store::{insert_test_job, test_store};

    fn sealed(registry: &str) -> SealedCredential {
        SealedCredential {
            registry: registry.into(),
            key_id: "k".into(),
            sealed: "c2VhbGVk".into(),
        }
    }

    async fn add(store: &Store, job: Uuid, registry: &str) {
        let mut conn = store.pool.acquire().await.unwrap();
        insert(&mut conn, job, &[sealed(registry)]).await.unwrap();
    }

    #[tokio::test]
    async fn ending_a_job_deletes_its_credentials_and_the_sweep_catches_the_rest() {
        let (store, _db) = test_store().await;
        let live = insert_test_job(&store, "live", &["linux/amd64"]).await;
        let cancelled = insert_test_job(&store, "cancelled", &["linux/amd64"]).await;
        let bypassed = insert_test_job(&store, "bypassed", &["linux/amd64"]).await;
        for job in [live, cancelled, bypassed, Uuid::new_v4()] {
            add(&store, job, "r.io").await;
        }
        assert_eq!(store.job_credentials(live).await.unwrap(), [sealed("r.io")]);
        store
            .cancel_job(cancelled, "by test")
            .await
            .unwrap()
            .unwrap();
        assert!(store.job_credentials(cancelled).await.unwrap().is_empty());
        assert!(store
            .move_job(
                bypassed,
                crate::store::lifecycle::Move {
                    from: &[JobState::Queued],
                    to: JobState::Failed
                }
            )
            .await
            .unwrap());
        assert_eq!(
            store.sweep_job_credentials().await.unwrap(),
            2,
            "the bypassed and the orphan"
        );
        assert_eq!(store.job_credentials(live).await.unwrap().len(), 1);
        store
            .end_job(live, JobState::Failed, "x")
            .await
            .unwrap()
            .unwrap();
        assert!(store.job_credentials(live).await.unwrap().is_empty());
        assert_eq!(store.sweep_job_credentials().await.unwrap(), 0);
    }
}

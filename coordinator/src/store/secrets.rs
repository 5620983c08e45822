//! Build secrets of live jobs (`job_secrets`). Replicas share them through the database because
//! any replica may lease a job's build; they are deleted when the job ends, in the statement's own
//! transaction (see `jobs.rs`), and by [`Store::sweep_secrets`] for any path that did not.
//!
//! Values are stored as given, not encrypted: a key the coordinator could read would sit next to
//! the database it protects, so encryption would add a ritual, not a boundary. What bounds them is
//! time (the life of the job) and the database's own access control.

use archfarm_protocol::{BuildSecret, Secret};
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{Backend, Store, StoreResult};

/// Stores a new job's secrets, on the connection of the transaction that stores the job.
pub(super) async fn insert(
    conn: &mut AnyConnection,
    job_id: Uuid,
    secrets: &[BuildSecret],
) -> StoreResult<()> {
    for s in secrets {
        sqlx::query("INSERT INTO job_secrets (job_id, id, value) VALUES ($1, $2, $3)")
            .bind(job_id.to_string())
            .bind(&s.id)
            .bind(s.value.expose())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Deletes a job's secrets, on the connection of the transaction that ends the job; returns how
/// many there were (when some, call [`Store::scrub_deleted_secrets`] after the commit).
pub(super) async fn delete(conn: &mut AnyConnection, job_id: Uuid) -> StoreResult<u64> {
    let res = sqlx::query("DELETE FROM job_secrets WHERE job_id = $1")
        .bind(job_id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(res.rows_affected())
}

impl Store {
    /// The secrets of a job, for the lease of one of its builds; empty once the job has ended.
    pub async fn job_secrets(&self, job_id: Uuid) -> StoreResult<Vec<BuildSecret>> {
        let rows = sqlx::query("SELECT id, value FROM job_secrets WHERE job_id = $1 ORDER BY id")
            .bind(job_id.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(BuildSecret {
                    id: r.try_get("id")?,
                    value: Secret::new(r.try_get::<String, _>("value")?),
                })
            })
            .collect()
    }

    /// Deletes the secrets of every job that is not live (ended, or gone); returns how many rows
    /// went. The backstop for a path that ended a job without deleting them, whatever it was.
    pub async fn sweep_secrets(&self) -> StoreResult<u64> {
        let res = sqlx::query(
            // Walks the (few) secret rows and looks each job up by its key, so a sweep every
            // second costs nothing however many jobs the table holds.
            "DELETE FROM job_secrets WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = \
             job_secrets.job_id AND jobs.state IN ('queued', 'building', 'stitching'))",
        )
        .execute(&self.pool)
        .await?;
        if res.rows_affected() > 0 {
            self.scrub_deleted_secrets().await;
        }
        Ok(res.rows_affected())
    }

    /// After secrets were deleted, on SQLite: moves the write-ahead log into the database file
    /// and truncates it. `secure_delete` zeroes a deleted value in the file's pages, but the log
    /// keeps the frames that wrote it until it wraps, which may be long after. Best effort (a
    /// reader holding the log open makes SQLite skip the truncation): logged, never fatal, since
    /// the rows themselves are gone either way. PostgreSQL keeps dead row versions until vacuum
    /// reuses their space; see the README.
    pub(super) async fn scrub_deleted_secrets(&self) {
        if self.backend != Backend::Sqlite {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "could not checkpoint the database after deleting build secrets");
        }
    }
}

#[cfg(test)]
mod tests {
    use archfarm_protocol::api::JobState;

    use super::*;
    use crate::store::{insert_test_job, test_store};

    async fn count(store: &Store) -> i64 {
        sqlx::query("SELECT COUNT(*) AS n FROM job_secrets")
            .fetch_one(&store.pool)
            .await
            .unwrap()
            .try_get("n")
            .unwrap()
    }

    async fn add(store: &Store, job: Uuid, id: &str, value: &str) {
        let mut conn = store.pool.acquire().await.unwrap();
        let secret = BuildSecret {
            id: id.into(),
            value: Secret::new(value),
        };
        insert(&mut conn, job, &[secret]).await.unwrap();
    }

    #[tokio::test]
    async fn ending_a_job_deletes_its_secrets_and_the_sweep_catches_the_rest() {
        let (store, _db) = test_store().await;
        let live = insert_test_job(&store, "live", &["linux/amd64"]).await;
        let cancelled = insert_test_job(&store, "cancelled", &["linux/amd64"]).await;
        let bypassed = insert_test_job(&store, "bypassed", &["linux/amd64"]).await;
        add(&store, live, "tok", "live-value").await;
        add(&store, cancelled, "tok", "cancelled-value").await;
        add(&store, bypassed, "tok", "bypassed-value").await;
        add(&store, Uuid::new_v4(), "tok", "orphan-value").await;
        assert_eq!(
            store.job_secrets(live).await.unwrap()[0].value.expose(),
            "live-value"
        );

        // Every way of ending a job goes through one of these; cancelling deletes at once.
        store
            .cancel_job(cancelled, "by test")
            .await
            .unwrap()
            .unwrap();
        assert!(store.job_secrets(cancelled).await.unwrap().is_empty());
        // A path that ends a job without them (here a bare state change) leaves them to the sweep.
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
        assert_eq!(count(&store).await, 3);
        assert_eq!(
            store.sweep_secrets().await.unwrap(),
            2,
            "the bypassed and the orphan"
        );
        assert_eq!(
            store.job_secrets(live).await.unwrap().len(),
            1,
            "a live job keeps its own"
        );
        store
            .end_job(live, JobState::Failed, "x")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(count(&store).await, 0);
        assert_eq!(store.sweep_secrets().await.unwrap(), 0);
    }
}

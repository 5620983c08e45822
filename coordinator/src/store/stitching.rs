//! The stitching lease: the one replica that pushes a job's index holds it, renews it while it
//! works, and loses it to another replica only when it stops renewing (it died).

use sqlx::Row;
use uuid::Uuid;

use super::{now_ms, parse_col, Store, StoreResult};

impl Store {
    /// Moves a job whose builds are done into `stitching` and gives `replica` its stitching lease
    /// until `expires_at`; false when another caller moved it first.
    pub async fn begin_stitching(
        &self,
        id: Uuid,
        replica: &str,
        expires_at: i64,
    ) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE jobs SET state = 'stitching', updated_at = $1, stitch_owner = $2, stitch_expires_at = $3, \
             stitch_attempts = stitch_attempts + 1 WHERE id = $4 AND state IN ('queued', 'building')",
        )
        .bind(now_ms())
        .bind(replica)
        .bind(expires_at)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Extends `replica`'s stitching lease; false when the job left `stitching` or another replica
    /// took the lease over, and then this one must stop.
    pub async fn renew_stitch(
        &self,
        id: Uuid,
        replica: &str,
        expires_at: i64,
    ) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE jobs SET stitch_expires_at = $1 WHERE id = $2 AND state = 'stitching' AND stitch_owner = $3",
        )
        .bind(expires_at)
        .bind(id.to_string())
        .bind(replica)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Lets go of `replica`'s stitching lease (it is shutting down), so another takes over at once.
    pub async fn release_stitch(&self, id: Uuid, replica: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE jobs SET stitch_expires_at = 0 WHERE id = $1 AND state = 'stitching' AND stitch_owner = $2",
        )
        .bind(id.to_string())
        .bind(replica)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes over the stitching of jobs whose lease lapsed before `now` (or that have none, from
    /// before stitching was leased) and, with `own_too`, those held under `replica`'s own name by
    /// an earlier run of it. Returns the jobs this replica now stitches.
    pub async fn take_over_stitches(
        &self,
        replica: &str,
        now: i64,
        expires_at: i64,
        own_too: bool,
    ) -> StoreResult<Vec<Uuid>> {
        let rows = sqlx::query(
            "SELECT id, stitch_owner, stitch_expires_at FROM jobs WHERE state = 'stitching' \
             AND (stitch_expires_at IS NULL OR stitch_expires_at < $1 OR ($2 = 1 AND stitch_owner = $3))",
        )
        .bind(now)
        .bind(i64::from(own_too))
        .bind(replica)
        .fetch_all(&self.pool)
        .await?;
        let mut taken = Vec::new();
        for row in rows {
            let id: Uuid = parse_col(&row, "id")?;
            let expiry: Option<i64> = row.try_get("stitch_expires_at")?;
            // Compare-and-set on the expiry seen: of two replicas taking over at once, one wins.
            let res = sqlx::query(
                "UPDATE jobs SET stitch_owner = $1, stitch_expires_at = $2, stitch_attempts = stitch_attempts + 1 \
                 WHERE id = $3 AND state = 'stitching' AND COALESCE(stitch_expires_at, -1) = $4",
            )
            .bind(replica)
            .bind(expires_at)
            .bind(id.to_string())
            .bind(expiry.unwrap_or(-1))
            .execute(&self.pool)
            .await?;
            if res.rows_affected() == 1 {
                taken.push(id);
            }
        }
        Ok(taken)
    }

    /// How many times a job's stitching was begun or taken over (1 when one replica did it all).
    pub async fn stitch_attempts(&self, id: Uuid) -> StoreResult<i64> {
        let row = sqlx::query("SELECT stitch_attempts FROM jobs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>("stitch_attempts"))
            .transpose()?
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{insert_test_job, test_store};

    #[tokio::test]
    async fn one_replica_stitches_and_another_takes_over_only_after_a_lapse() {
        let (store, _db) = test_store().await;
        let job = insert_test_job(&store, "app", &["linux/amd64"]).await;
        assert!(store.begin_stitching(job, "a", 1_000).await.unwrap());
        assert!(
            !store.begin_stitching(job, "b", 1_000).await.unwrap(),
            "begun once"
        );
        // Not lapsed at 500: b takes nothing, and a (not restarting) takes nothing either.
        assert!(store
            .take_over_stitches("b", 500, 2_000, true)
            .await
            .unwrap()
            .is_empty());
        assert!(store
            .take_over_stitches("a", 500, 2_000, false)
            .await
            .unwrap()
            .is_empty());
        assert!(store.renew_stitch(job, "a", 1_500).await.unwrap());
        // a restarting under its own name takes its job back at once.
        assert_eq!(
            store
                .take_over_stitches("a", 500, 1_600, true)
                .await
                .unwrap(),
            vec![job]
        );
        // Lapsed at 2 000: b takes it over, and a's renewal is refused from then on.
        assert_eq!(
            store
                .take_over_stitches("b", 2_000, 3_000, false)
                .await
                .unwrap(),
            vec![job]
        );
        assert!(!store.renew_stitch(job, "a", 4_000).await.unwrap());
        assert!(store.renew_stitch(job, "b", 4_000).await.unwrap());
        assert_eq!(store.stitch_attempts(job).await.unwrap(), 3);
    }
}

//! The stitching lease: the one replica that pushes a job's index holds it, renews it while it
//! works, and loses it to another replica only when it stops renewing (it died). Each attempt has
//! a token of its own that renewing, letting go and recording the outcome must present, so an
//! attempt that was taken over (even by its own replica) can no longer record anything.

use sqlx::Row;
use uuid::Uuid;

use super::{now_ms, parse_col, Store, StoreResult};

impl Store {
    /// Moves a job whose builds are done into `stitching` (noting when, for its deadline) and
    /// gives `replica` its stitching lease until `expires_at`; the attempt's token, or None when
    /// another caller moved it first.
    pub async fn begin_stitching(
        &self,
        id: Uuid,
        replica: &str,
        expires_at: i64,
    ) -> StoreResult<Option<Uuid>> {
        let token = Uuid::new_v4();
        let res = sqlx::query(&format!(
            "UPDATE jobs SET state = 'stitching', updated_at = $1, stitch_owner = $2, stitch_expires_at = $3, \
             stitch_token = $4, stitch_attempts = stitch_attempts + 1, stitch_started_at = $1 \
             WHERE id = $5 AND {}",
            super::lifecycle::STITCH_JOB.guard("state")
        ))
        .bind(now_ms())
        .bind(replica)
        .bind(expires_at)
        .bind(token.to_string())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok((res.rows_affected() == 1).then_some(token))
    }

    /// When the job entered `stitching` (Unix ms, [`now_ms`]), the start of its overall
    /// stitching deadline; None for a job from before that was recorded.
    pub async fn stitch_started_at(&self, id: Uuid) -> StoreResult<Option<i64>> {
        let row = sqlx::query("SELECT stitch_started_at FROM jobs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.try_get::<Option<i64>, _>("stitch_started_at"))
            .transpose()?
            .flatten())
    }

    /// Extends the stitching lease of attempt `token`; false when the job left `stitching` or the
    /// lease was taken over, and then the attempt must stop.
    pub async fn renew_stitch(&self, id: Uuid, token: Uuid, expires_at: i64) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE jobs SET stitch_expires_at = $1 WHERE id = $2 AND state = 'stitching' AND stitch_token = $3",
        )
        .bind(expires_at)
        .bind(id.to_string())
        .bind(token.to_string())
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Lets go of attempt `token`'s lease (its replica is shutting down), so another takes over at
    /// once.
    pub async fn release_stitch(&self, id: Uuid, token: Uuid) -> StoreResult<()> {
        sqlx::query(
            "UPDATE jobs SET stitch_expires_at = 0 WHERE id = $1 AND state = 'stitching' AND stitch_token = $2",
        )
        .bind(id.to_string())
        .bind(token.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes over the stitching of jobs whose lease lapsed before `now` (or that have none, from
    /// before stitching was leased) and, with `own_too`, those held under `replica`'s own name by
    /// an earlier run of it. Returns the jobs this replica now stitches, with their new tokens.
    pub async fn take_over_stitches(
        &self,
        replica: &str,
        now: i64,
        expires_at: i64,
        own_too: bool,
    ) -> StoreResult<Vec<(Uuid, Uuid)>> {
        let rows = sqlx::query(
            "SELECT id, stitch_token FROM jobs WHERE state = 'stitching' \
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
            let seen: Option<String> = row.try_get("stitch_token")?;
            let token = Uuid::new_v4();
            // Compare-and-set on the token seen: of two replicas taking over at once, one wins.
            let res = sqlx::query(
                "UPDATE jobs SET stitch_owner = $1, stitch_expires_at = $2, stitch_token = $3, \
                 stitch_attempts = stitch_attempts + 1 \
                 WHERE id = $4 AND state = 'stitching' AND COALESCE(stitch_token, '') = $5",
            )
            .bind(replica)
            .bind(expires_at)
            .bind(token.to_string())
            .bind(id.to_string())
            .bind(seen.unwrap_or_default())
            .execute(&self.pool)
            .await?;
            if res.rows_affected() == 1 {
                taken.push((id, token));
            }
        }
        Ok(taken)
    }

    /// How many times a job's stitching was begun or taken over (1 when one replica did it all).
    #[cfg(test)]
    pub(crate) async fn stitch_attempts(&self, id: Uuid) -> StoreResult<i64> {
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
    use uuid::Uuid;

    #[tokio::test]
    async fn one_replica_stitches_and_another_takes_over_only_after_a_lapse() {
        let (store, _db) = test_store().await;
        let job = insert_test_job(&store, "app", &["linux/amd64"]).await;
        let first = store
            .begin_stitching(job, "a", 1_000)
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .begin_stitching(job, "b", 1_000)
                .await
                .unwrap()
                .is_none(),
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
        assert!(store.renew_stitch(job, first, 1_500).await.unwrap());
        // a restarting under its own name takes its job back at once, as a new attempt: the old
        // attempt (the same replica's name, another token) is fenced off.
        let again = store
            .take_over_stitches("a", 500, 1_600, true)
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        let second = again[0].1;
        assert!(!store.renew_stitch(job, first, 1_700).await.unwrap());
        assert!(store.renew_stitch(job, second, 1_700).await.unwrap());
        // Lapsed at 2 000: b takes it over, and a's renewal is refused from then on.
        let b = store
            .take_over_stitches("b", 2_000, 3_000, false)
            .await
            .unwrap();
        assert_eq!(b.iter().map(|t| t.0).collect::<Vec<_>>(), vec![job]);
        assert!(!store.renew_stitch(job, second, 4_000).await.unwrap());
        assert!(store.renew_stitch(job, b[0].1, 4_000).await.unwrap());
        // Only b's attempt may record the outcome.
        assert!(!store
            .finish_job(job, second, "sha256:x", "m", 1, &[])
            .await
            .unwrap());
        assert!(!store
            .finish_job(job, Uuid::new_v4(), "sha256:x", "m", 1, &[])
            .await
            .unwrap());
        assert!(store
            .finish_job(job, b[0].1, "sha256:x", "m", 1, &[])
            .await
            .unwrap());
        assert_eq!(store.stitch_attempts(job).await.unwrap(), 3);
    }
}

//! The order of tag moves. A registry has no compare-and-set on tags, so two jobs pushing the
//! same tag are ordered here: each tag stitching moved has a head (the job whose index it last
//! got, with that job's order key) and a short push lease, held by one stitching attempt (its
//! stitch token) while it checks the head and pushes. A job older than the head leaves the tag
//! alone, so a tag never moves back to an older job's index.

use sqlx::Row;
use uuid::Uuid;

use super::{parse_opt_col, Store, StoreResult};

/// A stitching attempt that wants to move tags, with its job's order key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagMover {
    /// The job whose index would go under the tag.
    pub job: Uuid,
    /// The job's `created_at`: a job submitted later is newer.
    pub created_at: i64,
    /// The stitching attempt's token, which holds the tag's push lease.
    pub token: Uuid,
}

impl TagMover {
    /// Whether this job is older than the job `other` created at `other_created_at`: submitted
    /// earlier, or in the same millisecond with the smaller id (any fixed tie-break will do, as
    /// long as every replica breaks ties alike).
    pub fn is_older_than(&self, other: Uuid, other_created_at: i64) -> bool {
        (self.created_at, self.job.to_string()) < (other_created_at, other.to_string())
    }
}

/// What asking for a tag's push lease gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagClaim {
    /// The lease is this attempt's until the expiry asked for: check, push, record.
    Held,
    /// Another attempt holds a live lease on the tag (job `holder`): wait and ask again.
    Busy {
        /// The job of the attempt holding the lease.
        holder: Option<Uuid>,
    },
    /// A newer job already moved the tag: leave it alone.
    Newer {
        /// The newer job whose index the tag holds.
        job: Uuid,
    },
}

impl Store {
    /// Asks for `tag`'s push lease for `mover` until `expires_at`: held when no live lease of
    /// another attempt is on it (an expired one is taken over) and no newer job moved the tag.
    /// One compare-and-set on what was read, so of two attempts asking at once one wins.
    pub async fn claim_tag(
        &self,
        tag: &str,
        mover: &TagMover,
        now: i64,
        expires_at: i64,
    ) -> StoreResult<TagClaim> {
        sqlx::query("INSERT INTO tag_heads (tag) VALUES ($1) ON CONFLICT (tag) DO NOTHING")
            .bind(tag)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query(
            "SELECT head_job, head_created_at, lease_token, lease_job, lease_expires_at, \
             (SELECT created_at FROM jobs WHERE jobs.id = tag_heads.lease_job) AS lease_created_at \
             FROM tag_heads WHERE tag = $1",
        )
        .bind(tag)
        .fetch_one(&self.pool)
        .await?;
        let head: Option<Uuid> = parse_opt_col(&row, "head_job")?;
        let head_created_at: Option<i64> = row.try_get("head_created_at")?;
        if let (Some(head), Some(at)) = (head, head_created_at) {
            if head != mover.job && mover.is_older_than(head, at) {
                return Ok(TagClaim::Newer { job: head });
            }
        }
        let lease: Option<String> = row.try_get("lease_token")?;
        let lease_expires_at: Option<i64> = row.try_get("lease_expires_at")?;
        let ours = lease.as_deref() == Some(mover.token.to_string().as_str());
        self.step("claim_tag: row read").await;
        let holder: Option<Uuid> = parse_opt_col(&row, "lease_job")?;
        if lease.is_some() && !ours && lease_expires_at.unwrap_or(0) >= now {
            return Ok(TagClaim::Busy { holder });
        }
        // A lapsed lease of a newer job: its holder may have pushed and then lost the database
        // before recording the move. Leave the tag to it (taken over, it moves the tag itself).
        let holder_created_at: Option<i64> = row.try_get("lease_created_at")?;
        if let (Some(holder), Some(at)) = (holder, holder_created_at) {
            if !ours && holder != mover.job && mover.is_older_than(holder, at) {
                return Ok(TagClaim::Newer { job: holder });
            }
        }
        // Compare-and-set on the lease and the head seen: recording a head clears the lease,
        // so the lease alone would look unchanged after another job moved the tag meanwhile.
        let res = sqlx::query(
            "UPDATE tag_heads SET lease_token = $1, lease_job = $2, lease_expires_at = $3 \
             WHERE tag = $4 AND COALESCE(lease_token, '') = $5 AND COALESCE(lease_expires_at, 0) = $6 \
             AND COALESCE(head_job, '') = $7",
        )
        .bind(mover.token.to_string())
        .bind(mover.job.to_string())
        .bind(expires_at)
        .bind(tag)
        .bind(lease.unwrap_or_default())
        .bind(lease_expires_at.unwrap_or(0))
        .bind(head.map(|h| h.to_string()).unwrap_or_default())
        .execute(&self.pool)
        .await?;
        if res.rows_affected() == 1 {
            Ok(TagClaim::Held)
        } else {
            Ok(TagClaim::Busy { holder: None })
        }
    }

    /// Extends `mover`'s live lease on `tag` to `expires_at`, if it still holds it and its
    /// stitching attempt is still the job's current one with an unexpired stitching lease (the
    /// job was not cancelled, failed or taken over): asked right before each tag's push, which
    /// must not happen when this answers false.
    pub async fn hold_tag(
        &self,
        tag: &str,
        mover: &TagMover,
        now: i64,
        expires_at: i64,
    ) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE tag_heads SET lease_expires_at = $1 \
             WHERE tag = $2 AND lease_token = $3 AND lease_expires_at >= $4 \
             AND EXISTS (SELECT 1 FROM jobs WHERE id = $5 AND state = 'stitching' \
                         AND stitch_token = $6 AND stitch_expires_at >= $7)",
        )
        .bind(expires_at)
        .bind(tag)
        .bind(mover.token.to_string())
        .bind(now)
        .bind(mover.job.to_string())
        .bind(mover.token.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Records that `mover`'s job's index (`digest`) is now under `tag` and lets go of the lease,
    /// if `mover` still held it; false when the lease lapsed during the push (another attempt
    /// may have taken it).
    pub async fn record_tag_head(
        &self,
        tag: &str,
        mover: &TagMover,
        digest: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE tag_heads SET head_job = $1, head_created_at = $2, head_digest = $3, moved_at = $4, \
             lease_token = NULL, lease_job = NULL, lease_expires_at = NULL \
             WHERE tag = $5 AND lease_token = $6",
        )
        .bind(mover.job.to_string())
        .bind(mover.created_at)
        .bind(digest)
        .bind(now)
        .bind(tag)
        .bind(mover.token.to_string())
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Forgets tags whose head moved before `cutoff` (Unix ms) and whose lease (if any) lapsed
    /// before it, when every live job is newer than the head: only an older live job could be
    /// held back by a head, and one newer than it would move the tag anyway. Returns how many.
    pub async fn delete_old_tag_heads(&self, cutoff: i64, now: i64) -> StoreResult<u64> {
        let res = sqlx::query(
            "DELETE FROM tag_heads WHERE COALESCE(moved_at, 0) < $1 \
             AND COALESCE(lease_expires_at, 0) < $1 \
             AND COALESCE(head_created_at, 0) < COALESCE((SELECT MIN(created_at) FROM jobs \
                 WHERE state IN ('queued', 'building', 'stitching')), $2)",
        )
        .bind(cutoff)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected())
    }

    /// The job whose index `tag` last got through stitching, with that index's digest.
    pub async fn tag_head(&self, tag: &str) -> StoreResult<Option<(Uuid, String)>> {
        let row = sqlx::query("SELECT head_job, head_digest FROM tag_heads WHERE tag = $1")
            .bind(tag)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let job: Option<Uuid> = parse_opt_col(&row, "head_job")?;
        let digest: Option<String> = row.try_get("head_digest")?;
        Ok(job.zip(digest))
    }
}

/// Lets go of every tag push lease `job`'s stitching holds (the job ended: cancelled, failed or
/// past its stitching deadline), in the transaction that ends it, so other jobs need not wait for
/// the leases to lapse.
pub(super) async fn release_job(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    job: Uuid,
) -> StoreResult<u64> {
    let res = sqlx::query(
        "UPDATE tag_heads SET lease_token = NULL, lease_job = NULL, lease_expires_at = NULL \
         WHERE lease_job = $1",
    )
    .bind(job.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::super::{insert_test_job, test_store, Store};
    use super::{TagClaim, TagMover};

    const TAG: &str = "localhost:5000/app:latest";

    /// A job in `stitching` whose attempt holds its stitching lease until `until`, with the
    /// order key `created_at` (given, so the order does not depend on the clock).
    async fn stitching(store: &Store, created_at: i64, until: i64) -> TagMover {
        let job = insert_test_job(store, "app", &["linux/amd64"]).await;
        let token = store
            .begin_stitching(job, "a", until)
            .await
            .unwrap()
            .unwrap();
        let mover = TagMover {
            job,
            created_at,
            token,
        };
        set_created_at(store, &mover).await;
        mover
    }

    /// Sets the job's stored order key (what the lease holder's lookup reads) to `created_at`.
    async fn set_created_at(store: &Store, mover: &TagMover) {
        sqlx::query("UPDATE jobs SET created_at = $1 WHERE id = $2")
            .bind(mover.created_at)
            .bind(mover.job.to_string())
            .execute(store.pool())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_newer_job_moving_the_tag_between_an_older_ones_read_and_claim_wins() {
        let (store, _db) = test_store().await;
        let older = stitching(&store, 1_000, 10_000).await;
        let newer = stitching(&store, 2_000, 10_000).await;
        // Between the older job's read (no head, no lease) and its compare-and-set, the newer
        // job claims, pushes and records: the row's lease looks as it did at the read.
        let racing = store.clone();
        store.hooks.at("claim_tag: row read", async move {
            assert_eq!(
                racing.claim_tag(TAG, &newer, 100, 200).await.unwrap(),
                TagClaim::Held
            );
            assert!(racing.hold_tag(TAG, &newer, 110, 200).await.unwrap());
            assert!(racing
                .record_tag_head(TAG, &newer, "sha256:new", 120)
                .await
                .unwrap());
        });
        let claim = store.claim_tag(TAG, &older, 130, 230).await.unwrap();
        assert!(store.hooks.ran("claim_tag: row read"));
        assert_ne!(claim, TagClaim::Held, "the older job may not push now");
        assert!(!store.hold_tag(TAG, &older, 140, 240).await.unwrap());
        assert_eq!(
            store.claim_tag(TAG, &older, 150, 250).await.unwrap(),
            TagClaim::Newer { job: newer.job }
        );
    }

    #[tokio::test]
    async fn a_lapsed_lease_of_a_newer_job_is_left_to_it() {
        let (store, _db) = test_store().await;
        let older = stitching(&store, 1_000, 10_000).await;
        let newer = stitching(&store, 2_000, 10_000).await;
        // The newer job may have pushed, then lost the database before recording it.
        assert_eq!(
            store.claim_tag(TAG, &newer, 100, 200).await.unwrap(),
            TagClaim::Held
        );
        assert_eq!(
            store.claim_tag(TAG, &older, 300, 400).await.unwrap(),
            TagClaim::Newer { job: newer.job }
        );
        // Ending the newer job lets go of its tag leases: the older one may move the tag.
        store
            .end_job(
                newer.job,
                archfarm_protocol::api::JobState::Cancelled,
                "cancelled",
            )
            .await
            .unwrap();
        assert_eq!(
            store.claim_tag(TAG, &older, 310, 410).await.unwrap(),
            TagClaim::Held
        );
    }

    #[tokio::test]
    async fn an_older_job_after_a_newer_one_leaves_the_tag_alone() {
        let (store, _db) = test_store().await;
        let older = stitching(&store, 1_000, 10_000).await;
        let newer = stitching(&store, 2_000, 10_000).await;
        assert_eq!(
            store.claim_tag(TAG, &newer, 100, 200).await.unwrap(),
            TagClaim::Held
        );
        assert!(store.hold_tag(TAG, &newer, 150, 250).await.unwrap());
        assert!(store
            .record_tag_head(TAG, &newer, "sha256:new", 160)
            .await
            .unwrap());
        assert_eq!(
            store.claim_tag(TAG, &older, 300, 400).await.unwrap(),
            TagClaim::Newer { job: newer.job }
        );
        // The older job took no lease, and cannot record itself as the head.
        assert!(!store.hold_tag(TAG, &older, 310, 400).await.unwrap());
        assert!(!store
            .record_tag_head(TAG, &older, "sha256:old", 320)
            .await
            .unwrap());
        assert_eq!(
            store.tag_head(TAG).await.unwrap(),
            Some((newer.job, "sha256:new".to_string()))
        );
        // The same job moving the tag again (a retry, a takeover) is no regression.
        assert_eq!(
            store.claim_tag(TAG, &newer, 330, 400).await.unwrap(),
            TagClaim::Held
        );
    }

    #[tokio::test]
    async fn a_newer_job_after_an_older_one_moves_the_tag() {
        let (store, _db) = test_store().await;
        let older = stitching(&store, 1_000, 10_000).await;
        let newer = stitching(&store, 2_000, 10_000).await;
        assert_eq!(
            store.claim_tag(TAG, &older, 100, 200).await.unwrap(),
            TagClaim::Held
        );
        assert!(store
            .record_tag_head(TAG, &older, "sha256:old", 150)
            .await
            .unwrap());
        assert_eq!(
            store.claim_tag(TAG, &newer, 300, 400).await.unwrap(),
            TagClaim::Held
        );
        assert!(store.hold_tag(TAG, &newer, 310, 400).await.unwrap());
        assert!(store
            .record_tag_head(TAG, &newer, "sha256:new", 320)
            .await
            .unwrap());
        assert_eq!(
            store.tag_head(TAG).await.unwrap(),
            Some((newer.job, "sha256:new".to_string()))
        );
    }

    #[tokio::test]
    async fn a_live_lease_makes_others_wait_and_an_expired_one_is_taken_over() {
        let (store, _db) = test_store().await;
        let first = stitching(&store, 1_000, 10_000).await;
        let second = stitching(&store, 2_000, 10_000).await;
        assert_eq!(
            store.claim_tag(TAG, &first, 100, 200).await.unwrap(),
            TagClaim::Held
        );
        // Live until 200: the other attempt waits, whichever job is newer.
        assert_eq!(
            store.claim_tag(TAG, &second, 150, 250).await.unwrap(),
            TagClaim::Busy {
                holder: Some(first.job)
            }
        );
        // Lapsed at 201 (its holder stalled or died): taken over.
        assert_eq!(
            store.claim_tag(TAG, &second, 201, 300).await.unwrap(),
            TagClaim::Held
        );
        // The lapsed holder may neither push nor record any more.
        assert!(!store.hold_tag(TAG, &first, 202, 300).await.unwrap());
        assert!(!store
            .record_tag_head(TAG, &first, "sha256:first", 203)
            .await
            .unwrap());
        assert!(store.hold_tag(TAG, &second, 204, 300).await.unwrap());
        assert!(store
            .record_tag_head(TAG, &second, "sha256:second", 205)
            .await
            .unwrap());
        assert_eq!(
            store.tag_head(TAG).await.unwrap(),
            Some((second.job, "sha256:second".to_string()))
        );
    }

    #[tokio::test]
    async fn old_heads_are_forgotten_once_no_older_job_is_live() {
        let (store, _db) = test_store().await;
        let older = stitching(&store, 1_000, 10_000).await;
        let head = stitching(&store, 2_000, 10_000).await;
        assert_eq!(
            store.claim_tag(TAG, &head, 100, 200).await.unwrap(),
            TagClaim::Held
        );
        assert!(store
            .record_tag_head(TAG, &head, "sha256:new", 150)
            .await
            .unwrap());
        sqlx::query("UPDATE jobs SET created_at = 1000000000000")
            .execute(store.pool())
            .await
            .unwrap();
        // The live jobs' stored created_at is far newer than the head's order key 2 000:
        // nothing live is older than the head, so only the cutoff keeps it.
        assert_eq!(store.delete_old_tag_heads(150, 500).await.unwrap(), 0);
        assert_eq!(store.delete_old_tag_heads(151, 500).await.unwrap(), 1);
        assert_eq!(store.tag_head(TAG).await.unwrap(), None);
        // Kept while a live job older than the head could still stitch.
        assert_eq!(
            store.claim_tag(TAG, &head, 300, 400).await.unwrap(),
            TagClaim::Held
        );
        assert!(store
            .record_tag_head(TAG, &head, "sha256:new", 350)
            .await
            .unwrap());
        sqlx::query("UPDATE jobs SET created_at = 1000 WHERE id = $1")
            .bind(older.job.to_string())
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(store.delete_old_tag_heads(10_000, 10_000).await.unwrap(), 0);
        store
            .cancel_job(older.job, "cancelled by user")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.delete_old_tag_heads(10_000, 10_000).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn an_attempt_that_lost_its_job_may_not_push() {
        let (store, _db) = test_store().await;
        let mover = stitching(&store, 1_000, 10_000).await;
        assert_eq!(
            store.claim_tag(TAG, &mover, 100, 20_000).await.unwrap(),
            TagClaim::Held
        );
        assert!(store.hold_tag(TAG, &mover, 110, 20_000).await.unwrap());
        // The tag's lease still holds, but the stitching lease lapsed (at 10 000) without being
        // renewed (another replica may take the job over any moment): no push.
        assert!(!store.hold_tag(TAG, &mover, 10_001, 20_000).await.unwrap());
        assert!(store
            .renew_stitch(mover.job, mover.token, 30_000)
            .await
            .unwrap());
        assert!(store.hold_tag(TAG, &mover, 10_002, 20_000).await.unwrap());
        // Cancelled while stitching: no push either.
        let cancelled = stitching(&store, 2_000, 10_000).await;
        let other = "localhost:5000/app:other";
        assert_eq!(
            store.claim_tag(other, &cancelled, 100, 200).await.unwrap(),
            TagClaim::Held
        );
        store
            .cancel_job(cancelled.job, "cancelled by user")
            .await
            .unwrap()
            .expect("a stitching job can be cancelled");
        assert!(!store.hold_tag(other, &cancelled, 110, 200).await.unwrap());
    }
}

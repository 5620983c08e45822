//! Tags only move forward: the [`TagGate`] stitching moves each tag through. A registry has no
//! compare-and-set on tags, so the moves are ordered in the database ([`crate::store`]'s
//! `tag_heads`): before a tag moves, the stitching attempt takes the tag's short push lease
//! (waiting with backoff while another attempt's live lease holds it), checks that no newer job
//! moved the tag already, and checks its own job is still stitching under this attempt; then it
//! pushes, bounded by less than what is left of the lease, and records its job as the tag's head.
//! An older job that finds a newer head leaves the tag alone and says so in a warning on the job.

use std::time::Duration;

use uuid::Uuid;

use crate::stitch::{StitchError, TagGate};
use crate::store::{JobRow, StoreError, TagClaim, TagMover};
use crate::AppState;

/// The first pause while another attempt holds a tag's lease.
const MIN_WAIT: Duration = Duration::from_millis(50);
/// The longest pause while another attempt holds a tag's lease.
const MAX_WAIT: Duration = Duration::from_secs(2);

/// The tag moves of one stitching attempt.
pub struct TagOrder<'a> {
    state: &'a AppState,
    mover: TagMover,
}

impl<'a> TagOrder<'a> {
    /// The tag moves of `job`'s stitching attempt `token`.
    pub fn new(state: &'a AppState, job: &JobRow, token: Uuid) -> Self {
        TagOrder {
            state,
            mover: TagMover {
                job: job.id,
                created_at: job.created_at,
                token,
            },
        }
    }

    fn lease(&self) -> (i64, i64) {
        let now = self.state.scheduler.now();
        (now, now + self.state.config.lease_ttl().as_millis() as i64)
    }

    /// Whether this attempt still holds its job's stitching lease (renewing it).
    async fn still_stitching(&self) -> Result<bool, StitchError> {
        self.state
            .store
            .renew_stitch(
                self.mover.job,
                self.mover.token,
                self.state.scheduler.lease_expiry(),
            )
            .await
            .map_err(database)
    }
}

/// The key a tag is ordered under: `registry/repository:tag` as parsed, so that two spellings of
/// one tag (`app` and `docker.io/library/app:latest`) share a head.
pub fn tag_key(tag: &str) -> String {
    match archfarm_protocol::ImageRef::parse(tag) {
        Ok(r) => format!(
            "{}/{}:{}",
            r.registry,
            r.repository,
            r.tag.as_deref().unwrap_or("latest")
        ),
        Err(_) => tag.to_string(),
    }
}

fn database(e: StoreError) -> StitchError {
    StitchError::TagOrder(format!("the order of tag moves could not be checked: {e}"))
}

impl TagGate for TagOrder<'_> {
    async fn claim(&self, tag: &str) -> Result<Option<Duration>, StitchError> {
        let key = tag_key(tag);
        let store = &self.state.store;
        let mut wait = MIN_WAIT;
        loop {
            let (now, expires_at) = self.lease();
            match store
                .claim_tag(&key, &self.mover, now, expires_at)
                .await
                .map_err(database)?
            {
                TagClaim::Held => break,
                TagClaim::Newer { job } => {
                    let warning = format!("tag {tag} left on newer job {job}'s index");
                    tracing::warn!(job.id = %self.mover.job, tag, newer = %job, "tag left on a newer job's index");
                    store
                        .add_job_warning(self.mover.job, &warning)
                        .await
                        .map_err(database)?;
                    return Ok(None);
                }
                TagClaim::Busy { holder } => {
                    if !self.still_stitching().await? {
                        return Err(StitchError::Stopped(format!(
                            "the job left stitching or this attempt lost its lease before {tag} moved"
                        )));
                    }
                    tracing::debug!(job.id = %self.mover.job, tag, holder = ?holder, wait_ms = wait.as_millis() as u64,
                        "another job is moving the tag; waiting");
                    let jitter = Duration::from_millis(u64::from(Uuid::new_v4().as_bytes()[0]));
                    tokio::time::sleep(wait + jitter).await;
                    wait = (wait * 2).min(MAX_WAIT);
                }
            }
        }
        // Right before the push: the tag's lease is renewed to a whole lease time and the job must
        // still be stitching under this attempt with a live stitching lease.
        let asked = std::time::Instant::now();
        let (now, expires_at) = self.lease();
        if store
            .hold_tag(&key, &self.mover, now, expires_at)
            .await
            .map_err(database)?
        {
            // Half the lease, less what the check itself took: the push is over on this side well
            // before the lease could lapse.
            let limit = (self.state.config.lease_ttl() / 2).saturating_sub(asked.elapsed());
            if limit.is_zero() {
                return Err(StitchError::TagOrder(format!(
                    "the database took half the push lease on {tag} to answer"
                )));
            }
            return Ok(Some(limit));
        }
        if self.still_stitching().await? {
            // Only the tag's lease lapsed between two statements (a very slow database).
            return Err(StitchError::TagOrder(format!(
                "the push lease on {tag} lapsed before the push"
            )));
        }
        Err(StitchError::Stopped(format!(
            "the job left stitching or this attempt lost its lease before {tag} moved"
        )))
    }

    async fn moved(&self, tag: &str, digest: &str) -> Result<(), StitchError> {
        let recorded = self
            .state
            .store
            .record_tag_head(
                &tag_key(tag),
                &self.mover,
                digest,
                self.state.scheduler.now(),
            )
            .await
            .map_err(database)?;
        if recorded {
            Ok(())
        } else {
            // Another attempt may hold the tag now: stitch again, which checks the order anew.
            Err(StitchError::TagOrder(format!(
                "the push lease on {tag} lapsed during its push"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tag_key;

    #[test]
    fn spellings_of_one_tag_share_a_key() {
        assert_eq!(
            tag_key("localhost:5000/team/app"),
            "localhost:5000/team/app:latest"
        );
        assert_eq!(
            tag_key("localhost:5000/team/app:latest"),
            "localhost:5000/team/app:latest"
        );
        assert_eq!(tag_key("app:1"), "docker.io/library/app:1");
    }
}

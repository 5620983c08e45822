//! The end of a job, outside the database: whoever ends a job (a failed build, the time limit,
//! a user, stitching) goes through here, so each end is counted once, logged once and shown to
//! live views at once. The state machine itself (what may follow what, and the conditional
//! updates) is [`crate::store::lifecycle`].

use archfarm_protocol::api::JobState;
use uuid::Uuid;

use crate::changes::Changes;
use crate::metrics::{Metrics, Outcome};
use crate::store::{Store, StoreResult};
use crate::AppState;

/// Ends jobs and records the end: the store's change, the metrics, the log line, the wake-up.
#[derive(Clone, Copy)]
pub struct Ends<'a> {
    store: &'a Store,
    metrics: &'a Metrics,
    /// Live views to wake; `None` where the caller has none (the scheduler: views poll anyway).
    changes: Option<&'a Changes>,
}

impl<'a> Ends<'a> {
    /// Ends as the coordinator's request handlers and background tasks do.
    pub fn of(state: &'a AppState) -> Self {
        Ends {
            store: &state.store,
            metrics: &state.metrics,
            changes: Some(&state.changes),
        }
    }

    /// Ends recorded in `metrics`, waking `changes` when given.
    pub fn new(store: &'a Store, metrics: &'a Metrics, changes: Option<&'a Changes>) -> Self {
        Ends {
            store,
            metrics,
            changes,
        }
    }

    /// Ends a job as failed or cancelled with `reason`, stopping its unfinished builds; true
    /// when this call ended it (false: it had ended already, or it may not end so from where it
    /// is, e.g. a cancel while it stitches).
    pub async fn end(&self, job_id: Uuid, state: JobState, reason: &str) -> StoreResult<bool> {
        let Some(stopped) = self.store.end_job(job_id, state, reason).await? else {
            return Ok(false);
        };
        self.metrics.job_ended(state, &stopped);
        let stopped = stopped.running.len();
        match state {
            JobState::Cancelled => {
                tracing::info!(job.id = %job_id, state = %state, reason, stopped, "job ended")
            }
            _ => tracing::warn!(job.id = %job_id, state = %state, reason, stopped, "job ended"),
        }
        self.notify();
        Ok(true)
    }

    /// Records a stitched job's index, if `token` is still its stitching attempt; true when this
    /// call made it succeed.
    pub async fn succeed(
        &self,
        job_id: Uuid,
        token: Uuid,
        index: &crate::stitch::Stitched,
    ) -> StoreResult<bool> {
        let done = self
            .store
            .finish_job(
                job_id,
                token,
                &index.digest,
                &index.media_type,
                index.size,
                &index.provenance,
            )
            .await?;
        if done {
            self.metrics.job_entered(JobState::Succeeded);
            tracing::info!(job.id = %job_id, state = %JobState::Succeeded, digest = %index.digest, "job ended");
            self.notify();
        }
        Ok(done)
    }

    /// Stops a live job's unfinished optional builds, recording `why` as their error (the
    /// warning the job then gets); the running ones count as cancelled builds.
    pub async fn leave_out_unfinished(&self, job_id: Uuid, why: &str) -> StoreResult<()> {
        for (platform, mode, running) in self.store.cancel_unfinished_optional(job_id, why).await? {
            if running {
                self.metrics
                    .build_ended(&platform, mode, Outcome::Cancelled, None);
            }
            tracing::warn!(job.id = %job_id, platform = %platform, running, reason = why, "optional build stopped");
        }
        self.notify();
        Ok(())
    }

    fn notify(&self) {
        if let Some(changes) = self.changes {
            changes.notify();
        }
    }
}

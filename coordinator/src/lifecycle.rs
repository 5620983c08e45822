//! The end of a job or a build, outside the database: whoever ends a job (a failed build, the
//! time limit, a user, stitching) or reports a build's outcome goes through here, so each end is
//! counted once, logged once and (for jobs) shown to live views at once. The state machine itself (what may follow what, and the conditional
//! updates) is [`crate::store::lifecycle`].

use std::time::Duration;

use archfarm_protocol::api::{BuildMode, JobState};
use archfarm_protocol::Platform;
use uuid::Uuid;

use crate::changes::Changes;
use crate::metrics::{Metrics, Outcome};
use crate::store::{now_ms, BuildRow, Store, StoreResult};
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
    /// is).
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

    /// Records the image a running build pushed, under lease `token`; false when the lease is
    /// not (or no longer) current. Counted as a succeeded build with its run time.
    pub async fn build_pushed(
        &self,
        build: &BuildRow,
        token: Uuid,
        digest: &str,
        media_type: &str,
        size: i64,
    ) -> StoreResult<bool> {
        if !self
            .store
            .complete_build(build.id, token, digest, media_type, size)
            .await?
        {
            return Ok(false);
        }
        tracing::info!(build.id = %build.id, platform = %build.platform, digest, "build pushed");
        let ran_for = build
            .started_at
            .map(|s| Duration::from_millis((now_ms() - s).max(0) as u64));
        self.metrics
            .build_ended(&build.platform, build.mode, Outcome::Succeeded, ran_for);
        Ok(true)
    }

    /// Records that a running build failed with `error`, under lease `token`; false when the
    /// lease is not (or no longer) current, e.g. its job was cancelled meanwhile.
    pub async fn build_failed(
        &self,
        build_id: Uuid,
        platform: &Platform,
        mode: Option<BuildMode>,
        token: Uuid,
        error: &str,
    ) -> StoreResult<bool> {
        if !self.store.fail_build(build_id, token, error).await? {
            return Ok(false);
        }
        tracing::warn!(build.id = %build_id, platform = %platform, error, "build failed");
        self.metrics
            .build_ended(platform, mode, Outcome::Failed, None);
        Ok(true)
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

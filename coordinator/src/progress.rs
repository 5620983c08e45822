//! Moving a job on when its builds finish: into stitching, and from there to its end.

use std::time::Duration;

use archfarm_protocol::api::{BuildState, JobState};
use uuid::Uuid;

use crate::stitch::{self, StitchError};
use crate::store::StoreResult;
use crate::AppState;

/// Tries a transient registry failure this many times before the job fails.
const STITCH_TRIES: u32 = 4;

/// Called after a build succeeded: when it was the job's last one, start stitching.
pub async fn after_build_succeeded(state: &AppState, job_id: Uuid) -> StoreResult<()> {
    let builds = state.store.builds_of_job(job_id).await?;
    if builds.iter().all(|b| b.state == BuildState::Succeeded)
        && state
            .store
            .transition_job(
                job_id,
                &[JobState::Queued, JobState::Building],
                JobState::Stitching,
            )
            .await?
    {
        spawn_stitch(state.clone(), job_id);
    }
    Ok(())
}

/// Finishes what a crash between two writes left half done: a job whose build failed but which
/// was not failed itself, and a job whose builds all succeeded but which never began stitching.
pub async fn reconcile(state: &AppState) -> StoreResult<()> {
    for (job_id, platform, error) in state.store.jobs_with_failed_builds().await? {
        let error = format!(
            "{platform}: {}",
            error.unwrap_or_else(|| "the build failed".into())
        );
        if state
            .store
            .end_job(job_id, JobState::Failed, &error)
            .await?
        {
            tracing::warn!(job.id = %job_id, error, "job failed (reconciled)");
        }
    }
    for job_id in state.store.jobs_ready_to_stitch().await? {
        if state
            .store
            .transition_job(job_id, &[JobState::Building], JobState::Stitching)
            .await?
        {
            tracing::info!(job.id = %job_id, "stitching (reconciled)");
            spawn_stitch(state.clone(), job_id);
        }
    }
    Ok(())
}

/// Stitches a job in the background; also used at start to resume jobs a restart interrupted
/// (pushing the same index again is harmless: the same bytes give the same digest).
pub fn spawn_stitch(state: AppState, job_id: Uuid) {
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => tracing::info!(job.id = %job_id, "stitching interrupted by shutdown; resumes at next start"),
            res = stitch_job(&state, job_id) => if let Err(e) = res {
                tracing::error!(job.id = %job_id, error = %e, "stitching could not record its outcome");
            },
        }
    });
}

async fn stitch_job(state: &AppState, job_id: Uuid) -> StoreResult<()> {
    let Some(job) = state.store.get_job(job_id).await? else {
        return Ok(());
    };
    if job.state != JobState::Stitching {
        return Ok(());
    }
    let builds = state.store.builds_of_job(job_id).await?;
    let client = stitch::client_for(&job.registry, state.config.is_insecure(&job.registry));
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(500);
    let mut tries = 0;
    let outcome = loop {
        tries += 1;
        match stitch::stitch(&client, &job, &builds).await {
            Err(e @ StitchError::Registry { .. }) if tries < STITCH_TRIES => {
                tracing::warn!(job.id = %job_id, error = %e, tries, "stitching failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => break other,
        }
    };
    match outcome {
        Ok(index) => {
            state
                .store
                .finish_job(job_id, &index.digest, &index.media_type)
                .await?;
            tracing::info!(job.id = %job_id, digest = %index.digest, elapsed_ms = started.elapsed().as_millis() as u64, "job succeeded");
        }
        Err(e) => {
            state
                .store
                .end_job(job_id, JobState::Failed, &format!("stitching failed: {e}"))
                .await?;
            tracing::warn!(job.id = %job_id, error = %e, "job failed while stitching");
        }
    }
    Ok(())
}

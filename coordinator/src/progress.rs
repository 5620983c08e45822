//! Moving a job on as its builds finish: into stitching (leaving out optional platforms that failed
//! or that nobody can build), and from there to its end.

use std::collections::HashMap;
use std::time::Duration;

use archfarm_protocol::api::{BuildState, EmulationPolicy, JobState};
use archfarm_protocol::duration::format_duration;
use uuid::Uuid;

use crate::job_credentials::JobCredentials;
use crate::lifecycle::Ends;
use crate::registry::Fresh;
use crate::scheduler::Scheduler;
use crate::stitch::{self, StitchError};
use crate::store::{lifecycle, BuildRow, JobRow, Store, StoreResult};
use crate::tag_order::TagOrder;
use crate::AppState;

/// Longest pause between two stitching attempts while the registry is away.
const MAX_STITCH_BACKOFF: Duration = Duration::from_secs(10);

/// Moves a job on after one of its builds changed: fails it when a required build failed; once
/// every required build succeeded, resolves the optional ones and starts stitching.
pub async fn advance(state: &AppState, job_id: Uuid) -> StoreResult<()> {
    if let Some(token) = settle(&state.store, &state.scheduler, Ends::of(state), job_id).await? {
        spawn_stitch(state.clone(), job_id, token);
    }
    Ok(())
}

/// [`advance`] up to the stitching: the token of the stitching attempt it began, if it did.
async fn settle(
    store: &Store,
    scheduler: &Scheduler,
    ends: Ends<'_>,
    job_id: Uuid,
) -> StoreResult<Option<Uuid>> {
    let Some(job) = store.get_job(job_id).await? else {
        return Ok(None);
    };
    if !lifecycle::LIVE_JOB.contains(&job.state) {
        return Ok(None);
    }
    let builds = store.builds_of_job(job_id).await?;
    if let Some(failed) = builds
        .iter()
        .find(|b| !b.optional && b.state == BuildState::Failed)
    {
        let error = format!(
            "{}: {}",
            failed.platform,
            failed.error.as_deref().unwrap_or("the build failed")
        );
        ends.end(job_id, JobState::Failed, &error).await?;
        return Ok(None);
    }
    if builds
        .iter()
        .any(|b| !b.optional && b.state != BuildState::Succeeded)
    {
        return Ok(None);
    }
    for build in builds.iter().filter(|b| b.optional) {
        match build.state {
            BuildState::Succeeded => {}
            BuildState::Building => return Ok(None),
            BuildState::Queued => match unservable_reason(store, scheduler, &job, build).await? {
                None => return Ok(None),
                Some(reason) => {
                    if !store.skip_build(build.id, &reason).await? {
                        // An agent claimed it since we looked: the job waits for that build,
                        // whose end moves it on again (stitching now would leave out a
                        // platform that may yet succeed, without a warning).
                        return Ok(None);
                    }
                    warn_left_out(store, &job, build, &reason).await?;
                }
            },
            BuildState::Failed | BuildState::Cancelled => {
                let reason = build
                    .error
                    .clone()
                    .unwrap_or_else(|| "it did not finish".into());
                warn_left_out(store, &job, build, &reason).await?;
            }
        }
    }
    store
        .begin_stitching(job_id, scheduler.replica(), scheduler.lease_expiry())
        .await
}

/// Why no agent will take a queued optional build, or None while one still may.
async fn unservable_reason(
    store: &Store,
    scheduler: &Scheduler,
    job: &JobRow,
    build: &BuildRow,
) -> StoreResult<Option<String>> {
    // Agents are online by their last call: after a database outage or a restart they all look
    // offline until they have called again, which contact lasting a lease's length allows for.
    if !scheduler.may_judge_leases() {
        return Ok(None);
    }
    let online = store.online_agents(scheduler.online_since()).await?;
    let mut capable = online.iter().filter(|a| !a.draining);
    let servable = capable.any(|a| {
        a.native.contains(&build.platform)
            || (a.emulated.contains(&build.platform) && job.emulation != EmulationPolicy::Never)
    });
    Ok((!servable).then(|| format!("no online agent can build {}", build.platform)))
}

async fn warn_left_out(
    store: &Store,
    job: &JobRow,
    build: &BuildRow,
    reason: &str,
) -> StoreResult<()> {
    let warning = format!(
        "optional platform {} left out of the index: {reason}",
        build.platform
    );
    tracing::warn!(job.id = %job.id, warning, "optional platform left out");
    store.add_job_warning(job.id, &warning).await
}

/// Finishes what a crash or a change in the fleet left pending: jobs whose required build failed,
/// jobs whose builds are all done but which never began stitching, and optional builds nobody can
/// take any more.
pub async fn reconcile(state: &AppState) -> StoreResult<()> {
    for (job_id, _, _) in state.store.jobs_with_failed_builds().await? {
        advance(state, job_id).await?;
    }
    for job in state.store.jobs_in_state(JobState::Building).await? {
        advance(state, job.id).await?;
    }
    Ok(())
}

/// Ends the jobs past their time limit. A job whose required builds all succeeded is stitched
/// without the optional platforms still unfinished (each left out with a warning): an optional
/// platform must not fail a job whose every required image was pushed. Any other job fails;
/// its running builds learn it on their next heartbeat.
pub async fn expire_jobs(state: &AppState) -> StoreResult<()> {
    for (job_id, token) in expire(&state.store, &state.scheduler, Ends::of(state)).await? {
        spawn_stitch(state.clone(), job_id, token);
    }
    Ok(())
}

/// [`expire_jobs`] up to the stitching: the stitching attempts it began.
async fn expire(
    store: &Store,
    scheduler: &Scheduler,
    ends: Ends<'_>,
) -> StoreResult<Vec<(Uuid, Uuid)>> {
    let mut stitch = Vec::new();
    for job in store.timed_out_jobs(scheduler.now()).await? {
        let limit = format_duration(Duration::from_secs(job.timeout_secs.max(0) as u64));
        let builds = store.builds_of_job(job.id).await?;
        let required_done = builds
            .iter()
            .filter(|b| !b.optional)
            .all(|b| b.state == BuildState::Succeeded);
        if required_done {
            let why = format!("it did not finish within the job's time limit ({limit})");
            ends.leave_out_unfinished(job.id, &why).await?;
            if let Some(token) = settle(store, scheduler, ends, job.id).await? {
                stitch.push((job.id, token));
            }
            continue;
        }
        ends.end(
            job.id,
            JobState::Failed,
            &format!("timed out after {limit}"),
        )
        .await?;
    }
    Ok(stitch)
}

/// Takes over and resumes the stitching of jobs whose replica stopped renewing its lease (it died)
/// and, with `own_too`, of jobs this replica held before it restarted. Pushing the same index
/// again is harmless: the same bytes give the same digest.
pub async fn take_over_stitches(state: &AppState, own_too: bool) -> StoreResult<()> {
    let taken = state
        .store
        .take_over_stitches(
            state.scheduler.replica(),
            state.scheduler.now(),
            state.scheduler.lease_expiry(),
            own_too,
        )
        .await?;
    for (job_id, token) in taken {
        tracing::info!(job.id = %job_id, "resuming stitching left unfinished");
        spawn_stitch(state.clone(), job_id, token);
    }
    Ok(())
}

/// Stitches a job in the background while holding its stitching lease; stops when the lease is
/// lost (another replica took over, the job was cancelled, or the lease could not be renewed
/// before it lapsed), when the job's stitching deadline passes (then the job fails), or when the
/// coordinator shuts down (then the lease is let go, so another replica takes over at once).
/// Stopping drops the stitch where it stands, before any further tag moves.
pub fn spawn_stitch(state: AppState, job_id: Uuid, token: Uuid) {
    let shutdown = state.shutdown.clone();
    // Tracked, so a shutdown waits for the lease to be let go before the process ends.
    let tasks = state.stitches.clone();
    tasks.spawn(async move {
        let limit = Duration::from_secs(state.config.stitch_timeout_secs);
        let left = match state.store.stitch_started_at(job_id).await {
            // Counted from entering `stitching`, so a takeover does not start the clock again.
            Ok(Some(started)) => {
                let spent = (crate::store::now_ms() - started).max(0) as u64;
                limit.saturating_sub(Duration::from_millis(spent))
            }
            Ok(None) => limit,
            Err(e) => {
                tracing::warn!(job.id = %job_id, error = %e, "could not read when stitching began; counting its deadline from now");
                limit
            }
        };
        if left.is_zero() {
            // Taken over past its deadline: it ends here, before anything is pushed.
            if let Err(e) = stitch_deadline_passed(&state, job_id, token, limit).await {
                tracing::error!(job.id = %job_id, error = %e, "could not fail the job past its stitching deadline");
            }
            state.changes.notify();
            return;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                tracing::info!(job.id = %job_id, "stitching interrupted by shutdown; another replica or the next start resumes it");
                if let Err(e) = state.store.release_stitch(job_id, token).await {
                    tracing::warn!(job.id = %job_id, error = %e, "could not let go of the stitching lease; it lapses on its own");
                }
            }
            _ = tokio::time::sleep(left) => {
                if let Err(e) = stitch_deadline_passed(&state, job_id, token, limit).await {
                    tracing::error!(job.id = %job_id, error = %e, "could not fail the job past its stitching deadline");
                }
                state.changes.notify();
            }
            _ = hold_stitch(&state, job_id, token) => {
                tracing::warn!(job.id = %job_id, "the stitching lease is gone (the job was cancelled or ended, another replica took over, or it could not be renewed in time); stopping here");
            }
            res = stitch_job(&state, job_id, token) => {
                if let Err(e) = res {
                    tracing::error!(job.id = %job_id, error = %e, "stitching could not record its outcome");
                }
                state.changes.notify();
            }
        }
    });
}

/// Fails a job whose stitching outlasted `limit`, if attempt `token` is still its current one.
async fn stitch_deadline_passed(
    state: &AppState,
    job_id: Uuid,
    token: Uuid,
    limit: Duration,
) -> StoreResult<()> {
    // Only the current attempt may fail the job: one taken over meanwhile says nothing.
    if !state
        .store
        .renew_stitch(job_id, token, state.scheduler.lease_expiry())
        .await?
    {
        return Ok(());
    }
    let error = format!("stitching did not finish within {}", format_duration(limit));
    Ends::of(state)
        .end(job_id, JobState::Failed, &error)
        .await?;
    Ok(())
}

/// Renews the job's stitching lease until it is lost; returns only then: when the lease was
/// taken over or the job left `stitching` (cancelled, ended), or when renewals kept failing
/// until the lease's own expiry passed (another replica may hold it by then, so this one must
/// stop pushing).
async fn hold_stitch(state: &AppState, job_id: Uuid, token: Uuid) {
    let ttl = state.config.lease_ttl();
    let every = (ttl / 3).max(Duration::from_millis(200));
    // On this process's monotonic clock: a renewal asked at `t` set an expiry no earlier than
    // `t + ttl`, so the lease surely holds until then and may be gone after.
    let mut held_until = tokio::time::Instant::now() + ttl;
    let mut next = tokio::time::Instant::now() + every;
    loop {
        tokio::time::sleep_until(next.min(held_until)).await;
        let asked = tokio::time::Instant::now();
        if asked >= held_until {
            tracing::error!(job.id = %job_id, "the stitching lease could not be renewed before it lapsed; stopping");
            return;
        }
        next = asked + every;
        match state
            .store
            .renew_stitch(job_id, token, state.scheduler.lease_expiry())
            .await
        {
            Ok(true) => held_until = asked + ttl,
            Ok(false) => return,
            // Keep stitching while the lease still holds: the database may be back before it
            // lapses.
            Err(e) => {
                tracing::warn!(job.id = %job_id, error = %e, "could not renew the stitching lease")
            }
        }
    }
}

async fn stitch_job(state: &AppState, job_id: Uuid, token: Uuid) -> StoreResult<()> {
    let Some(job) = state.store.get_job(job_id).await? else {
        return Ok(());
    };
    if job.state != JobState::Stitching {
        return Ok(());
    }
    let builds: Vec<BuildRow> = state
        .store
        .builds_of_job(job_id)
        .await?
        .into_iter()
        .filter(|b| b.state == BuildState::Succeeded)
        .collect();
    // The job's own credentials for its registries when it sent them, else the coordinator's.
    let job_credentials = crate::job_credentials::for_job(state, job_id).await?;
    let mut fresh = Fresh::Cached;
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(state.config.stitch_retry_secs);
    let mut delay = Duration::from_millis(500);
    let builder = state.config.builder();
    let tag_order = TagOrder::new(state, &job, token);
    let outcome = loop {
        let attempt = match endpoints(state, &job, &job_credentials, fresh).await {
            Ok(endpoints) => stitch::stitch(&endpoints, &job, &builds, &builder, &tag_order).await,
            Err(e) => Err(e),
        };
        match attempt {
            Err(e) if e.is_transient() && std::time::Instant::now() < deadline => {
                // The job stays in `stitching` while the registry is away; jitter spreads the
                // retries of many jobs waiting on the same registry.
                let jitter =
                    Duration::from_millis(u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 4);
                tracing::warn!(job.id = %job_id, error = %e, retry_in_ms = (delay + jitter).as_millis() as u64,
                    "registry unavailable while stitching; retrying");
                tokio::time::sleep(delay + jitter).await;
                delay = (delay * 2).min(MAX_STITCH_BACKOFF);
            }
            // A refusal (401, 403, …) of a credential helper's answer: the helper may hand out
            // another one by now (a rotated password, a renewed token); ask it again, once.
            Err(ref e @ StitchError::Registry { ref registry, .. })
                if fresh == Fresh::Cached
                    && job_credentials
                        .as_ref()
                        .is_ok_and(|c| state.registry.from_helper(c, registry)) =>
            {
                tracing::info!(job.id = %job_id, error = %e, "stitching refused; asking the credential helper again");
                fresh = Fresh::Anew;
            }
            other => break other,
        }
    };
    state.metrics.stitched(started.elapsed());
    match outcome {
        Ok(index) => {
            Ends::of(state).succeed(job_id, token, &index).await?;
            tracing::info!(job.id = %job_id, digest = %index.digest, elapsed_ms = started.elapsed().as_millis() as u64, "job succeeded");
        }
        Err(e) => {
            // Only the current attempt may fail the job: one taken over meanwhile says nothing.
            if !state
                .store
                .renew_stitch(job_id, token, state.scheduler.lease_expiry())
                .await?
            {
                tracing::warn!(job.id = %job_id, error = %e, "stitching stopped after the job was cancelled or ended, or another attempt took over; not recorded");
                return Ok(());
            }
            Ends::of(state)
                .end(job_id, JobState::Failed, &format!("stitching failed: {e}"))
                .await?;
            tracing::warn!(job.id = %job_id, error = %e, "job failed while stitching");
        }
    }
    Ok(())
}

/// A client and a credential for every registry of the job's tags, asked for again on each
/// stitching attempt (a credential may have changed while the registry was away).
async fn endpoints(
    state: &AppState,
    job: &JobRow,
    job_credentials: &Result<JobCredentials, String>,
    fresh: Fresh,
) -> Result<HashMap<String, stitch::Endpoint>, StitchError> {
    let registries = stitch::registries(&job.tags).map_err(|message| StitchError::Registry {
        registry: job.registry.clone(),
        message,
        transient: false,
    })?;
    let mut out = HashMap::new();
    for registry in registries {
        let auth = stitch_credential(state, job_credentials, &registry, fresh)
            .await
            .map_err(|message| StitchError::Registry {
                registry: registry.clone(),
                message,
                transient: false,
            })?;
        // A client of the credential's own: oci-client keeps the first credential it is given.
        let insecure = state.config.is_insecure(&registry);
        let client = state.registry.client_with(&registry, insecure, &auth);
        out.insert(registry, stitch::Endpoint { client, auth });
    }
    Ok(out)
}

/// The credential stitching uses for `registry`: the one place it is looked up, for the job's
/// first registry (reading what agents pushed, pushing the index) and every other registry its
/// tags name (copies and the index there) alike. The job's own credential when it sent one for
/// `registry`, else the coordinator's.
async fn stitch_credential(
    state: &AppState,
    job_credentials: &Result<JobCredentials, String>,
    registry: &str,
    fresh: Fresh,
) -> Result<oci_client::secrets::RegistryAuth, String> {
    match job_credentials {
        Ok(c) => state.registry.oci_auth(c, registry, fresh).await,
        Err(message) => Err(message.clone()),
    }
}

#[cfg(test)]
#[path = "progress_tests.rs"]
mod tests;

//! Turning stored rows into the API's JSON shapes.

use std::collections::HashMap;
use std::sync::Arc;

use archfarm_protocol::api::{self, BuildState};
use archfarm_protocol::redact::REDACTED;
use uuid::Uuid;

use crate::scheduler::choice::{warm_map, WarmMap, WARM_WINDOW};
use crate::scheduler::matching::{held_for_warm_agent, waiting_reason};
use crate::store::{to_time, AgentRow, BuildRow, JobRow, StoreResult};
use crate::AppState;

/// Who is online and how busy, read once per response.
#[derive(Debug)]
pub struct Fleet {
    online: Vec<AgentRow>,
    running: HashMap<Uuid, i64>,
}

/// How long a fleet read is reused. Every job view needs one (a submission's answer, job
/// lists, live events); reading every agent each time was most of a submission's cost with a
/// thousand agents (archfarm-bench), and a "waiting for…" hint a second old is still right.
const FLEET_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The latest fleet read and when it was made.
#[derive(Debug, Default)]
pub struct FleetCache(tokio::sync::Mutex<Option<(std::time::Instant, Arc<Fleet>)>>);

impl Fleet {
    /// The fleet's current state (at most [`FLEET_TTL`] old).
    pub async fn load(state: &AppState) -> StoreResult<Arc<Self>> {
        let mut cached = state.fleet.0.lock().await;
        if let Some((at, fleet)) = cached.as_ref() {
            if at.elapsed() < FLEET_TTL {
                return Ok(fleet.clone());
            }
        }
        let fleet = Arc::new(Fleet {
            online: state
                .store
                .online_agents(state.scheduler.online_since())
                .await?,
            running: state.store.running_counts().await?,
        });
        *cached = Some((std::time::Instant::now(), fleet.clone()));
        Ok(fleet)
    }
}

/// A job with its builds, as the API shows it.
pub async fn job(state: &AppState, job: JobRow, fleet: &Fleet) -> StoreResult<api::Job> {
    let builds = state.store.builds_of_job(job.id).await?;
    let waits = Waits::load(state, &job, &builds).await?;
    let builds = builds
        .into_iter()
        .map(|b| build(b, &job, fleet, &waits))
        .collect();
    let mut build_args = job.build_args;
    for name in &job.secret_build_args {
        if let Some(value) = build_args.get_mut(name) {
            *value = REDACTED.to_string();
        }
    }
    let repositories = crate::stitch::destinations(&job.tags)
        .map(|ds| ds.iter().map(|d| d.name()).collect())
        .unwrap_or_else(|_| vec![format!("{}/{}", job.registry, job.repository)]);
    Ok(api::Job {
        id: job.id,
        state: job.state,
        tags: job.tags,
        repositories,
        platforms: job.platforms,
        index_digest: job.index_digest,
        index_media_type: job.index_media_type,
        index_size: job.index_size,
        error: job.error,
        context: job.context,
        dockerfile: job.dockerfile,
        build_args,
        target: job.target,
        emulation: job.emulation,
        optional_platforms: job.optional_platforms,
        timeout_secs: job.timeout_secs.max(0) as u64,
        warnings: job.warnings,
        submitter: job.submitter,
        created_at: to_time(job.created_at),
        updated_at: to_time(job.updated_at),
        finished_at: job.finished_at.map(to_time),
        builds,
        secret_build_args: job.secret_build_args,
        secrets: job.secret_ids,
        network: job.network,
        pull_registries: crate::pulls::pull_registries(&state.config, &job.base_images),
        base_images: job.base_images,
        image_meta: job.image_meta,
        attest_to: job.attest_to,
        smoke_test: job.smoke_test,
        cache_to: job.cache.to,
        cache_from: job.cache.from,
        no_cache: job.cache.no_cache,
        pull: job.cache.pull,
    })
}

/// What saying why a job's queued builds wait needs besides the fleet: their warm agents.
struct Waits {
    warm: WarmMap,
    now: i64,
    wait: std::time::Duration,
}

impl Waits {
    /// Reads the warm agents of the job's queued builds (nothing when none is queued).
    async fn load(state: &AppState, job: &JobRow, builds: &[BuildRow]) -> StoreResult<Self> {
        let now = state.scheduler.now();
        let wait = state.scheduler.warm_agent_wait();
        let repository = format!("{}/{}", job.registry, job.repository);
        let pairs: Vec<(String, archfarm_protocol::Platform)> = builds
            .iter()
            .filter(|b| b.state == BuildState::Queued && !job.state.is_terminal())
            .map(|b| (repository.clone(), b.platform.clone()))
            .collect();
        let warm = if pairs.is_empty() || wait.is_zero() {
            WarmMap::new()
        } else {
            warm_map(
                state
                    .store
                    .warm_agents(
                        &pairs,
                        now - WARM_WINDOW.as_millis() as i64,
                        state.scheduler.online_since(),
                    )
                    .await?,
            )
        };
        Ok(Waits { warm, now, wait })
    }
}

fn build(b: BuildRow, job: &JobRow, fleet: &Fleet, waits: &Waits) -> api::Build {
    let waiting = (b.state == BuildState::Queued && !job.state.is_terminal()).then(|| {
        let key = (
            format!("{}/{}", job.registry, job.repository),
            b.platform.clone(),
        );
        held_for_warm_agent(
            &b.platform,
            job.emulation,
            job.network,
            b.queued_at,
            waits.warm.get(&key),
            &fleet.online,
            waits.now,
            waits.wait,
        )
        .unwrap_or_else(|| {
            waiting_reason(
                &b.platform,
                job.emulation,
                job.network,
                &fleet.online,
                &fleet.running,
            )
        })
    });
    api::Build {
        id: b.id,
        platform: b.platform,
        state: b.state,
        agent: b.agent_name,
        mode: b.mode,
        digest: b.digest,
        media_type: b.media_type,
        size: b.size,
        attempts: b.attempts,
        error: b.error,
        waiting,
        optional: b.optional,
        decision: b.decision,
        created_at: to_time(b.created_at),
        started_at: b.started_at.map(to_time),
        finished_at: b.finished_at.map(to_time),
    }
}

/// Every agent as the API shows it, by name.
pub async fn agents(state: &AppState) -> StoreResult<Vec<api::Agent>> {
    let since = state.scheduler.online_since();
    let running = state.store.running_counts().await?;
    Ok(state
        .store
        .list_agents()
        .await?
        .into_iter()
        .map(|a| agent(a, since, &running))
        .collect())
}

/// An agent as the API shows it.
pub fn agent(a: AgentRow, online_since: i64, running: &HashMap<Uuid, i64>) -> api::Agent {
    api::Agent {
        running: running.get(&a.id).copied().unwrap_or(0),
        state: if a.revoked {
            api::AgentState::Revoked
        } else if a.draining {
            api::AgentState::Draining
        } else if a.last_seen >= online_since {
            api::AgentState::Online
        } else {
            api::AgentState::Offline
        },
        id: a.id,
        name: a.name,
        native_platforms: a.native,
        emulated_platforms: a.emulated,
        capacity: a.capacity,
        last_seen: to_time(a.last_seen),
        default_network: a.networks.default,
        allowed_networks: a.networks.allowed,
        storage_driver: a.storage_driver,
        storage: a.storage,
        drain_reason: a.unavailable,
    }
}

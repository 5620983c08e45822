//! Hands queued builds to long-polling agents and takes back leases whose heartbeats stopped.

pub mod matching;

use std::time::Duration;

use archfarm_protocol::api::{BuildMode, JobState};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::{now_ms, AgentRow, Store, StoreResult};

/// A build just leased to an agent.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Build id.
    pub build_id: Uuid,
    /// Job id.
    pub job_id: Uuid,
    /// Fencing token of the new lease.
    pub token: Uuid,
    /// Native or emulated.
    pub mode: BuildMode,
}

/// What the reaper did in one pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Builds put back in the queue.
    pub requeued: usize,
    /// Builds that used up their attempts (their jobs failed).
    pub failed: usize,
}

/// The scheduler: matching under one in-process lock, claims as compare-and-set in the database.
#[derive(Debug)]
pub struct Scheduler {
    store: Store,
    /// Woken whenever work may have appeared (a job, a requeue, an agent).
    work: Notify,
    /// Serialises matching inside this process so two agents do not race for the same row.
    claim_lock: Mutex<()>,
    lease_ttl: Duration,
    offline_after: Duration,
    max_attempts: i64,
}

impl Scheduler {
    /// A scheduler over `store`.
    pub fn new(
        store: Store,
        lease_ttl: Duration,
        offline_after: Duration,
        max_attempts: i64,
    ) -> Self {
        Scheduler {
            store,
            work: Notify::new(),
            claim_lock: Mutex::new(()),
            lease_ttl,
            offline_after,
            max_attempts,
        }
    }

    /// Tells waiting agents to look again.
    pub fn wake(&self) {
        self.work.notify_waiters();
    }

    /// Millisecond timestamp after which an agent that has not called counts as offline.
    pub fn online_since(&self) -> i64 {
        now_ms() - self.offline_after.as_millis() as i64
    }

    /// When a lease granted or renewed now lapses.
    pub fn lease_expiry(&self) -> i64 {
        now_ms() + self.lease_ttl.as_millis() as i64
    }

    /// Waits up to `wait` for a build this agent may take.
    pub async fn next_lease(
        &self,
        agent: &AgentRow,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> StoreResult<Option<Claimed>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so a wake between the look and the wait is not lost.
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(claimed) = self.try_claim(agent).await? {
                return Ok(Some(claimed));
            }
            // Look again now and then even without a wake: an agent going offline can turn a
            // native-only platform into one that may be emulated.
            let recheck = (tokio::time::Instant::now() + Duration::from_secs(5)).min(deadline);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(recheck) => {
                    if recheck >= deadline {
                        return Ok(None);
                    }
                }
                _ = shutdown.cancelled() => return Ok(None),
            }
        }
    }

    async fn try_claim(&self, agent: &AgentRow) -> StoreResult<Option<Claimed>> {
        let _guard = self.claim_lock.lock().await;
        let running = self
            .store
            .running_counts()
            .await?
            .get(&agent.id)
            .copied()
            .unwrap_or(0);
        if running >= agent.capacity {
            return Ok(None);
        }
        let queued = self.store.queued_builds().await?;
        if queued.is_empty() {
            return Ok(None);
        }
        let online = self.store.online_agents(self.online_since()).await?;
        let served = matching::natively_served(&online);
        let Some((i, mode)) = matching::pick(agent, &queued, &served) else {
            return Ok(None);
        };
        let build = &queued[i];
        let token = Uuid::new_v4();
        let claimed = self
            .store
            .claim_build(
                build.id,
                agent.id,
                &agent.name,
                mode,
                token,
                self.lease_expiry(),
            )
            .await?;
        if !claimed {
            // Another coordinator sharing the database took it; the next loop looks again.
            return Ok(None);
        }
        self.store
            .transition_job(build.job_id, &[JobState::Queued], JobState::Building)
            .await?;
        tracing::info!(build.id = %build.id, job.id = %build.job_id, platform = %build.platform,
            agent = %agent.name, mode = %mode, "leased");
        Ok(Some(Claimed {
            build_id: build.id,
            job_id: build.job_id,
            token,
            mode,
        }))
    }

    /// Takes back lapsed leases: requeues the build, or fails its job when attempts are used up.
    pub async fn reap_expired(&self) -> StoreResult<Reaped> {
        let mut reaped = Reaped::default();
        for build in self.store.expired_leases(now_ms()).await? {
            let Some(token) = build.lease_token else {
                continue;
            };
            let agent = build.agent_name.as_deref().unwrap_or("?");
            if build.attempts >= self.max_attempts {
                let error = format!(
                    "{}: the lease lapsed on attempt {} of {} (agent {agent} stopped heartbeating)",
                    build.platform, build.attempts, self.max_attempts
                );
                if self.store.fail_build(build.id, token, &error).await? {
                    self.store
                        .end_job(build.job_id, JobState::Failed, &error)
                        .await?;
                    tracing::warn!(build.id = %build.id, platform = %build.platform, agent, "lease lapsed; attempts used up");
                    reaped.failed += 1;
                }
            } else if self.store.requeue_build(build.id, token).await? {
                tracing::warn!(build.id = %build.id, platform = %build.platform, agent, attempts = build.attempts,
                    "lease lapsed; build requeued");
                reaped.requeued += 1;
            }
        }
        if reaped.requeued > 0 {
            self.wake();
        }
        Ok(reaped)
    }
}

//! Hands queued builds to long-polling agents and takes back leases whose heartbeats stopped.

pub mod choice;
pub mod contact;
pub mod estimate;
pub mod matching;

use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;

use archfarm_protocol::api::{BuildMode, JobState};
use archfarm_protocol::Platform;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::choice::{Candidate, Warmth};
use self::contact::{Change, Contact};
use self::estimate::{NativeAgent, Verdict};
use crate::lifecycle::Ends;
use crate::metrics::{Metrics, Outcome};
use crate::store::{lifecycle, now_ms, AgentRow, QueuedBuild, Store, StoreResult};

/// How many recent successful builds of a repository the estimates look at.
const HISTORY_SAMPLES: i64 = 200;

/// Queued builds read at a time while looking for one an agent may take.
const QUEUE_PAGE: i64 = 64;

/// How long a build waits for its warm agent by default (`--warm-agent-wait-secs`), in seconds:
/// about what a warm rebuild saves over a cold one in the measurements (27 s against
/// 1.2 s natively), so a cold agent never makes a build finish much later than waiting would.
pub const DEFAULT_WARM_AGENT_WAIT_SECS: u64 = 30;

/// The scheduler's source of the current time (Unix ms), replaceable in tests.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock(Arc::new(now_ms))
    }

    /// A clock that always reads `ms`.
    pub fn fixed(ms: i64) -> Self {
        Clock(Arc::new(move || ms))
    }

    /// The current time, Unix ms.
    pub fn now(&self) -> i64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

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

/// What one look at the queue found for an agent.
#[derive(Debug, Default)]
struct Look {
    /// The build leased, if any.
    claimed: Option<Claimed>,
    /// The earliest end of a hold for a warm agent among the builds passed over (Unix ms).
    held_until: Option<i64>,
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
    /// Counts jobs failed and leases taken back here.
    metrics: Arc<Metrics>,
    /// Woken whenever work may have appeared for anyone (a requeue, an agent, another replica).
    work: Notify,
    /// Per platform, woken once per new build: one waiting native agent looks, not all of them
    /// (a thousand agents woken per job made every submission cost a thousand queue reads).
    native_work: std::sync::Mutex<HashMap<Platform, Arc<Notify>>>,
    /// Per platform, woken for every new build: each agent that emulates it looks, since whether
    /// to emulate depends on the whole fleet.
    emulated_work: std::sync::Mutex<HashMap<Platform, Arc<Notify>>>,
    /// Per agent, woken when a new build's warm agent is that agent: the per-platform wake
    /// reaches one waiting native agent, which may be a cold one that holds the build back.
    agent_work: std::sync::Mutex<HashMap<Uuid, Arc<Notify>>>,
    /// Serialises matching inside this process so two agents do not race for the same row.
    claim_lock: Mutex<()>,
    /// How long a build is held for the agent that built its repository and platform last.
    warm_wait: Duration,
    lease_ttl: Duration,
    offline_after: Duration,
    max_attempts: i64,
    /// The time source for leases, waits and estimates.
    clock: Clock,
    /// This replica's name, recorded with each lease it grants.
    replica: String,
    /// This process's run, so it can tell its own wake-up notices from other replicas'.
    instance: Uuid,
    /// Whether contact with the database has lasted long enough to judge leases (see
    /// [`contact`]).
    contact: Contact,
}

impl Scheduler {
    /// A scheduler over `store`.
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        lease_ttl: Duration,
        offline_after: Duration,
        max_attempts: i64,
    ) -> Self {
        Scheduler {
            store,
            metrics,
            work: Notify::new(),
            native_work: Default::default(),
            emulated_work: Default::default(),
            agent_work: Default::default(),
            claim_lock: Mutex::new(()),
            warm_wait: Duration::from_secs(DEFAULT_WARM_AGENT_WAIT_SECS),
            lease_ttl,
            offline_after,
            max_attempts,
            clock: Clock::system(),
            replica: "coordinator".to_string(),
            instance: Uuid::new_v4(),
            contact: Contact::new(lease_ttl),
        }
    }

    /// The same scheduler granting leases as replica `name` (`--replica-name`).
    pub fn with_replica(mut self, name: &str) -> Self {
        self.replica = name.to_string();
        self
    }

    /// The same scheduler holding builds for their warm agent up to `wait` (zero: not at all).
    pub fn with_warm_agent_wait(mut self, wait: Duration) -> Self {
        self.warm_wait = wait;
        self
    }

    /// How long a build is held for its warm agent.
    pub fn warm_agent_wait(&self) -> Duration {
        self.warm_wait
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// This process's run id, sent with its wake-up notices.
    pub fn instance(&self) -> Uuid {
        self.instance
    }

    /// The same scheduler reading time from `clock` (tests replay scenarios at fixed instants).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Tells waiting agents to look again: this replica's at once, and those long-polling other
    /// replicas on the same PostgreSQL database through a notice (see [`crate::replicas`]).
    pub async fn wake(&self) {
        self.work.notify_waiters();
        if let Err(e) = crate::replicas::announce_work(&self.store, self.instance).await {
            // The others still look on their own every few seconds.
            tracing::warn!(error = %e, "could not tell the other replicas about new work");
        }
    }

    /// Tells waiting agents about new builds of these platforms (one per entry): one native
    /// agent per build, every emulating one, and the other replicas.
    pub async fn wake_builds(&self, platforms: &[Platform]) {
        for p in platforms {
            notify_for(&self.native_work, p).notify_one();
            notify_for(&self.emulated_work, p).notify_waiters();
        }
        if let Err(e) = crate::replicas::announce_work(&self.store, self.instance).await {
            tracing::warn!(error = %e, "could not tell the other replicas about new work");
        }
    }

    /// Wakes the warm agents of a new job's platforms (see [`choice`]) waiting here: the wake of
    /// [`Self::wake_builds`] may reach a cold agent, which holds the build back for them. Those
    /// long-polling other replicas look on those replicas' notice. Best effort: a warm agent that
    /// misses it looks at its next poll, within the hold.
    pub async fn wake_warm_agents(&self, registry: &str, repository: &str, platforms: &[Platform]) {
        if self.warm_wait.is_zero() {
            return;
        }
        let repo = format!("{registry}/{repository}");
        let pairs: Vec<(String, Platform)> = platforms
            .iter()
            .map(|p| (repo.clone(), p.clone()))
            .collect();
        let now = self.clock.now();
        match self
            .store
            .warm_agents(
                &pairs,
                now - choice::WARM_WINDOW.as_millis() as i64,
                self.online_since(),
            )
            .await
        {
            Ok(warm) => {
                for w in warm {
                    notify_for_agent(&self.agent_work, w.agent.id).notify_one();
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not look up warm agents to wake"),
        }
    }

    /// Tells this replica's waiting agents to look again (a notice from another replica).
    pub fn wake_local(&self) {
        self.work.notify_waiters();
    }

    /// The current time by the scheduler's clock, Unix ms.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Millisecond timestamp after which an agent that has not called counts as offline.
    pub fn online_since(&self) -> i64 {
        self.clock.now() - self.offline_after.as_millis() as i64
    }

    /// When a lease granted or renewed now lapses.
    pub fn lease_expiry(&self) -> i64 {
        self.clock.now() + self.lease_ttl.as_millis() as i64
    }

    /// Waits up to `wait` for a build this agent may take.
    pub async fn next_lease(
        &self,
        agent: &AgentRow,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> StoreResult<Option<Claimed>> {
        let deadline = tokio::time::Instant::now() + wait;
        let notifies: Vec<Arc<Notify>> = agent
            .native
            .iter()
            .map(|p| notify_for(&self.native_work, p))
            .chain(
                agent
                    .emulated
                    .iter()
                    .map(|p| notify_for(&self.emulated_work, p)),
            )
            .chain(std::iter::once(notify_for_agent(
                &self.agent_work,
                agent.id,
            )))
            .collect();
        loop {
            // Register interest before looking, so a wake between the look and the wait is not
            // lost. A native wake that lands here while this agent claims something else is
            // passed on to another waiter when its future is dropped (tokio's Notify does that).
            let mut waits: Vec<_> = std::iter::once(&self.work)
                .chain(notifies.iter().map(|n| &**n))
                .map(|n| Box::pin(n.notified()))
                .collect();
            for w in &mut waits {
                w.as_mut().enable();
            }
            let look = self.look(agent).await?;
            if let Some(claimed) = look.claimed {
                return Ok(Some(claimed));
            }
            let notified = futures::future::select_all(waits);
            // An emulating agent looks again now and then even without a wake: an agent going
            // offline can turn a native-only platform into one that may be emulated. Native-only
            // agents wait for a wake (or the end of their poll): a thousand of them re-reading
            // the queue every 5 s was a steady 200 claims a second of nothing.
            let mut recheck = if agent.emulated.is_empty() {
                deadline
            } else {
                (tokio::time::Instant::now() + Duration::from_secs(5)).min(deadline)
            };
            // A build held for its warm agent is anyone's when the hold ends: look again then
            // rather than at the end of the poll (no one wakes anyone when a hold ends).
            if let Some(until) = look.held_until {
                let after = Duration::from_millis((until - self.clock.now()).max(100) as u64);
                recheck = recheck.min(tokio::time::Instant::now() + after);
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(recheck) => {
                    if recheck >= deadline {
                        return Ok(None);
                    }
                }
                _ = shutdown.cancelled() => return Ok(None),
            }
        }
    }

    /// Leases this agent a queued build it may take now, if any (see [`Self::look`]).
    pub async fn try_claim(&self, agent: &AgentRow) -> StoreResult<Option<Claimed>> {
        Ok(self.look(agent).await?.claimed)
    }

    /// Leases this agent the queued build it should take now, if any: of those the native and
    /// emulation rules let it take, leaving out those held for their warm agent, the one the
    /// fewest other online agents could take, oldest first among equals (see [`choice`]).
    ///
    /// Reads the queue a page at a time, and only the agent's own platforms: a native match costs
    /// one small read however long the queue is, plus one indexed read of the page's warm agents.
    /// The fleet (online agents, running builds) is read only when an emulated build has to be
    /// weighed or the page's builds differ in who could take them.
    async fn look(&self, agent: &AgentRow) -> StoreResult<Look> {
        let _guard = self.claim_lock.lock().await;
        let mut look = Look::default();
        if agent.draining {
            return Ok(look);
        }
        if self.store.running_count(agent.id).await? >= agent.capacity {
            return Ok(look);
        }
        let platforms: Vec<Platform> = agent
            .native
            .iter()
            .chain(agent.emulated.iter())
            .cloned()
            .collect();
        let now = self.clock.now();
        let mut online: Option<Vec<AgentRow>> = None;
        let mut running: Option<Vec<crate::store::RunningBuild>> = None;
        let mut histories: HashMap<String, Vec<(Platform, BuildMode, i64)>> = HashMap::new();
        let mut ahead: HashMap<Platform, usize> = HashMap::new();
        let mut offset = 0;
        loop {
            let page = self
                .store
                .queued_builds_of(&platforms, &agent.networks.allowed, QUEUE_PAGE, offset)
                .await?;
            let mut candidates: Vec<Candidate> = Vec::new();
            for build in &page {
                if build.attempts >= self.max_attempts {
                    self.give_up(build).await?;
                    continue;
                }
                let n_ahead = ahead.entry(build.platform.clone()).or_insert(0);
                let choice = if agent.native.contains(&build.platform) {
                    Some((BuildMode::Native, None))
                } else if agent.emulated.contains(&build.platform) {
                    if online.is_none() {
                        online = Some(self.online_fleet().await?);
                    }
                    if running.is_none() {
                        running = Some(self.store.running_builds().await?);
                    }
                    let (online, running) = (
                        online.as_deref().expect("just loaded"),
                        running.as_deref().expect("just loaded"),
                    );
                    // A native agent that may not give the job its network will never take it.
                    let native_agents: Vec<NativeAgent> = online
                        .iter()
                        .filter(|a| a.native.contains(&build.platform))
                        .filter(|a| a.networks.allows(build.network))
                        .map(|a| NativeAgent {
                            capacity: a.capacity,
                            running_since: running
                                .iter()
                                .filter(|r| r.agent_id == a.id)
                                .map(|r| r.started_at)
                                .collect(),
                        })
                        .collect();
                    if !histories.contains_key(&build.repository) {
                        let h = self
                            .store
                            .recent_durations(&build.repository, HISTORY_SAMPLES)
                            .await?;
                        histories.insert(build.repository.clone(), h);
                    }
                    let est = estimate::estimates(&histories[&build.repository], &build.platform);
                    match estimate::decide(
                        now,
                        &build.platform,
                        build.emulation,
                        build.queued_at,
                        &native_agents,
                        *n_ahead,
                        est,
                    ) {
                        Verdict::Emulate(why) => Some((BuildMode::Emulated, Some(why))),
                        Verdict::Wait(_) => None,
                    }
                } else {
                    None
                };
                *n_ahead += 1;
                if let Some((mode, emulated_because)) = choice {
                    candidates.push(Candidate {
                        build: build.clone(),
                        mode,
                        emulated_because,
                    });
                }
            }
            if !candidates.is_empty() {
                let warm = if self.warm_wait.is_zero() {
                    Default::default()
                } else {
                    let pairs: Vec<(String, Platform)> = candidates
                        .iter()
                        .map(|c| (c.build.repository.clone(), c.build.platform.clone()))
                        .collect();
                    choice::warm_map(
                        self.store
                            .warm_agents(
                                &pairs,
                                now - choice::WARM_WINDOW.as_millis() as i64,
                                self.online_since(),
                            )
                            .await?,
                    )
                };
                let mut open = Vec::with_capacity(candidates.len());
                for c in candidates {
                    let key = (c.build.repository.clone(), c.build.platform.clone());
                    match choice::warmth(
                        agent,
                        c.mode,
                        &c.build,
                        warm.get(&key),
                        now,
                        self.warm_wait,
                    ) {
                        Warmth::Held { until, .. } => {
                            look.held_until =
                                Some(look.held_until.map_or(until, |u: i64| u.min(until)));
                        }
                        w => open.push((c, w)),
                    }
                }
                if choice::scarcity_matters(&open) && online.is_none() {
                    online = Some(self.online_fleet().await?);
                }
                let fleet = online
                    .as_deref()
                    .filter(|_| choice::scarcity_matters(&open));
                for pick in choice::rank(agent, open, fleet, now, self.warm_wait) {
                    if let Some(claimed) = self.lease(agent, &pick).await? {
                        look.claimed = Some(claimed);
                        return Ok(look);
                    }
                }
            }
            if (page.len() as i64) < QUEUE_PAGE {
                return Ok(look);
            }
            offset += QUEUE_PAGE;
        }
    }

    /// Online agents that take work (not draining), as the claim weighs the fleet.
    async fn online_fleet(&self) -> StoreResult<Vec<AgentRow>> {
        Ok(self
            .store
            .online_agents(self.online_since())
            .await?
            .into_iter()
            .filter(|a| !a.draining)
            .collect())
    }

    /// Claims `pick` for `agent`; `None` when another coordinator sharing the database took it.
    async fn lease(&self, agent: &AgentRow, pick: &choice::Choice) -> StoreResult<Option<Claimed>> {
        let build = &pick.candidate.build;
        let mode = pick.candidate.mode;
        let token = Uuid::new_v4();
        if !self
            .store
            .claim_build(
                build.id,
                agent.id,
                &agent.name,
                mode,
                token,
                self.lease_expiry(),
                &pick.decision,
                &self.replica,
            )
            .await?
        {
            return Ok(None);
        }
        self.store
            .move_job(build.job_id, lifecycle::START_JOB)
            .await?;
        tracing::info!(build.id = %build.id, job.id = %build.job_id, platform = %build.platform,
            agent = %agent.name, mode = %mode, decision = %pick.decision, "leased");
        Ok(Some(Claimed {
            build_id: build.id,
            job_id: build.job_id,
            token,
            mode,
        }))
    }

    /// Ends jobs as the scheduler does: counted in its metrics (live views see it on their poll).
    fn ends(&self) -> Ends<'_> {
        Ends::new(&self.store, &self.metrics, None)
    }

    /// Fails a queued build whose attempts are used up (and its job, unless it is optional).
    async fn give_up(&self, build: &QueuedBuild) -> StoreResult<()> {
        // However a build came back to the queue (a lapsed lease, its agent restarting), each
        // lease was an attempt: a build that keeps killing agents must not go round forever.
        let error = format!(
            "{}: gave up after {} attempts (each agent that held it stopped or restarted)",
            build.platform, build.attempts
        );
        if self.store.fail_queued_build(build.id, &error).await? && !build.optional {
            self.ends()
                .end(build.job_id, JobState::Failed, &error)
                .await?;
        }
        tracing::warn!(build.id = %build.id, platform = %build.platform, attempts = build.attempts, "attempts used up");
        Ok(())
    }

    /// Asks the database for a sign of life and records the answer (see [`contact`]); logs when
    /// contact is lost or made again. A task of its own calls it every second, so an outage is
    /// noticed even while the reaper waits on the database.
    pub async fn check_contact(&self) {
        let asked = self.clock.now();
        let answer = tokio::time::timeout(contact::SLOW, self.store.ping()).await;
        let change = match answer {
            Ok(Ok(())) => self.contact.answered(asked, self.clock.now()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "database did not answer");
                self.contact.failed()
            }
            Err(_) => self.contact.failed(),
        };
        self.log_contact(change);
    }

    fn log_contact(&self, change: Change) {
        match change {
            Change::None => {}
            Change::Lost => tracing::warn!(
                "the database does not answer; no lease is judged lapsed until it has answered for a lease's length again"
            ),
            Change::Restored => tracing::info!(
                wait_ms = self.contact.needed().as_millis() as u64,
                "the database answers; leases are judged again after one lease length, in which live agents heartbeat"
            ),
        }
    }

    /// Whether this replica may judge leases (and agents) now: its contact with the database has
    /// lasted a lease's length. Also what taking over other replicas' work waits for.
    pub fn may_judge_leases(&self) -> bool {
        self.contact.may_judge(self.clock.now())
    }

    /// Takes back lapsed leases: requeues the build, or fails its job when attempts are used up.
    /// Judges nothing until contact with the database has lasted a lease's length (see
    /// [`contact`]), so an outage, or a restart of every replica, costs no running build.
    pub async fn reap_expired(&self) -> StoreResult<Reaped> {
        let mut reaped = Reaped::default();
        // Claims only look at their agent's platforms; this catches a used-up build of a
        // platform no agent asks for.
        for build in self
            .store
            .exhausted_queued_builds(self.max_attempts)
            .await?
        {
            self.give_up(&build).await?;
            reaped.failed += 1;
        }
        if !self.may_judge_leases() {
            return Ok(reaped);
        }
        // Leases lapsed before `asked`, and each requeue or fail below is conditional on that:
        // should this wait out an outage, what lapsed during it is not touched.
        let asked = self.clock.now();
        let lapsed = self.store.expired_leases(asked).await?;
        for build in lapsed {
            let Some(token) = build.lease_token else {
                continue;
            };
            let agent = build.agent_name.as_deref().unwrap_or("?");
            // Presumed dead: shown offline, and not counted as a native agent, until it calls again.
            if let Some(id) = build.agent_id {
                self.store.mark_agent_offline(id).await?;
            }
            if build.attempts >= self.max_attempts {
                let error = format!(
                    "{}: the lease lapsed on attempt {} of {} (agent {agent} stopped heartbeating)",
                    build.platform, build.attempts, self.max_attempts
                );
                if self
                    .store
                    .fail_lapsed_build(build.id, token, asked, &error)
                    .await?
                {
                    self.metrics.lease_expired();
                    self.metrics
                        .build_ended(&build.platform, build.mode, Outcome::Lost, None);
                    // An optional platform's failure is the reconciler's to turn into a warning.
                    if !build.optional {
                        self.ends()
                            .end(build.job_id, JobState::Failed, &error)
                            .await?;
                    }
                    tracing::warn!(build.id = %build.id, platform = %build.platform, agent, "lease lapsed; attempts used up");
                    reaped.failed += 1;
                }
            } else if self
                .store
                .requeue_lapsed_build(build.id, token, asked)
                .await?
            {
                self.metrics.lease_expired();
                self.metrics
                    .build_ended(&build.platform, build.mode, Outcome::Lost, None);
                tracing::warn!(build.id = %build.id, platform = %build.platform, agent, attempts = build.attempts,
                    "lease lapsed; build requeued");
                reaped.requeued += 1;
            }
        }
        if reaped.requeued > 0 {
            self.wake().await;
        }
        // Cheap on an index; keeps the table to the caches that still count.
        self.store
            .forget_warm_agents(self.clock.now() - choice::WARM_WINDOW.as_millis() as i64)
            .await?;
        Ok(reaped)
    }
}

/// The notify of `platform` in `map`, made on first use.
fn notify_for(
    map: &std::sync::Mutex<HashMap<Platform, Arc<Notify>>>,
    platform: &Platform,
) -> Arc<Notify> {
    map.lock()
        .expect("notify map lock")
        .entry(platform.clone())
        .or_default()
        .clone()
}

/// The notify of `agent` in `map`, made on first use. One entry per agent that ever polled
/// here: agents keep their id across re-registrations, so the map is as large as the fleet.
fn notify_for_agent(
    map: &std::sync::Mutex<HashMap<Uuid, Arc<Notify>>>,
    agent: Uuid,
) -> Arc<Notify> {
    map.lock()
        .expect("notify map lock")
        .entry(agent)
        .or_default()
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{insert_test_job, test_store, Registered};

    const S: i64 = 1000;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    async fn submit(store: &Store, platform: &str) -> Uuid {
        insert_test_job(store, "app", &[platform]).await
    }

    async fn agent(store: &Store, name: &str, native: &[&str], emulated: &[&str]) -> AgentRow {
        let native: Vec<Platform> = native.iter().map(|s| p(s)).collect();
        let emulated: Vec<Platform> = emulated.iter().map(|s| p(s)).collect();
        let r = store
            .upsert_agent(
                name,
                name,
                &native,
                &emulated,
                1,
                None,
                None,
                false,
                0,
                &Default::default(),
            )
            .await
            .unwrap();
        assert!(matches!(r, Registered::Ok { .. }));
        store.agent_by_token_hash(name).await.unwrap().unwrap()
    }

    /// Records finished builds of `app` as history: `(mode, seconds)`.
    async fn history(store: &Store, samples: &[(BuildMode, i64)]) {
        for (mode, secs) in samples {
            let job = submit(store, "linux/arm64").await;
            let build = store.builds_of_job(job).await.unwrap()[0].id;
            sqlx::query(
                "UPDATE builds SET state = 'succeeded', mode = $1, started_at = 0, finished_at = $2 WHERE id = $3",
            )
            .bind(mode.as_str())
            .bind(secs * S)
            .bind(build.to_string())
            .execute(store.pool())
            .await
            .unwrap();
            sqlx::query("UPDATE jobs SET state = 'succeeded' WHERE id = $1")
                .bind(job.to_string())
                .execute(store.pool())
                .await
                .unwrap();
        }
    }

    /// The native agent `pi` is busy with a build that started `busy_for` seconds before `now`; a
    /// new arm64 build waits; does the emulating agent take it?
    async fn scenario(
        native_secs: i64,
        emulated_secs: i64,
        busy_for: i64,
    ) -> Option<(Claimed, String)> {
        let (store, _dir) = test_store().await;
        let now = now_ms();
        let pi = agent(&store, "pi", &["linux/arm64"], &[]).await;
        let emu = agent(&store, "emu", &["linux/amd64"], &["linux/arm64"]).await;
        history(
            &store,
            &[
                (BuildMode::Native, native_secs),
                (BuildMode::Emulated, emulated_secs),
            ],
        )
        .await;
        let scheduler = Scheduler::new(
            store.clone(),
            Arc::new(Metrics::new()),
            Duration::from_secs(15),
            Duration::from_secs(60),
            3,
        )
        .with_clock(Clock::fixed(now));
        let running = submit(&store, "linux/arm64").await;
        let claimed = scheduler
            .try_claim(&pi)
            .await
            .unwrap()
            .expect("pi takes the first build");
        assert_eq!(claimed.job_id, running);
        sqlx::query("UPDATE builds SET started_at = $1 WHERE id = $2")
            .bind(now - busy_for * S)
            .bind(claimed.build_id.to_string())
            .execute(store.pool())
            .await
            .unwrap();
        submit(&store, "linux/arm64").await;
        let taken = scheduler.try_claim(&emu).await.unwrap()?;
        let decision = store
            .get_build(taken.build_id)
            .await
            .unwrap()
            .unwrap()
            .decision
            .unwrap();
        Some((taken, decision))
    }

    #[tokio::test]
    async fn busy_native_and_slow_native_history_sends_the_build_to_emulation() {
        // Native takes 300 s and started 10 s ago; emulation takes 200 s: emulation is sooner.
        let (claimed, decision) = scenario(300, 200, 10).await.expect("emulated");
        assert_eq!(claimed.mode, BuildMode::Emulated);
        assert!(
            decision.starts_with("emulated on emu: emulation finishes sooner"),
            "{decision}"
        );
        assert!(decision.contains("recorded history"), "{decision}");
    }

    #[tokio::test]
    async fn busy_native_finishing_soon_keeps_the_build_for_native() {
        // Native takes 300 s and is 290 s in; emulation takes 3000 s: waiting is sooner.
        assert!(scenario(300, 3000, 290).await.is_none());
    }

    #[tokio::test]
    async fn a_build_requeued_after_its_last_attempt_fails_its_job() {
        let (store, _dir) = test_store().await;
        let pi = agent(&store, "pi", &["linux/arm64"], &[]).await;
        let job = submit(&store, "linux/arm64").await;
        // Leased three times already, each time lost to an agent restart.
        sqlx::query("UPDATE builds SET attempts = 3")
            .execute(store.pool())
            .await
            .unwrap();
        let scheduler = Scheduler::new(
            store.clone(),
            Arc::new(Metrics::new()),
            Duration::from_secs(15),
            Duration::from_secs(60),
            3,
        );
        assert!(scheduler.try_claim(&pi).await.unwrap().is_none());
        let row = store.get_job(job).await.unwrap().unwrap();
        assert_eq!(row.state, JobState::Failed);
        assert_eq!(
            row.error.as_deref(),
            Some("linux/arm64: gave up after 3 attempts (each agent that held it stopped or restarted)")
        );
    }

    #[tokio::test]
    async fn no_lease_is_judged_until_contact_with_the_database_has_lasted_a_lease() {
        use archfarm_protocol::api::BuildState;
        use std::sync::atomic::{AtomicI64, Ordering};
        let (store, _dir) = test_store().await;
        let pi = agent(&store, "pi", &["linux/arm64"], &[]).await;
        let now = Arc::new(AtomicI64::new(1_000_000));
        let clock = {
            let now = now.clone();
            Clock(Arc::new(move || now.load(Ordering::SeqCst)))
        };
        let scheduler = Scheduler::new(
            store.clone(),
            Arc::new(Metrics::new()),
            Duration::from_secs(15),
            Duration::from_secs(60),
            3,
        )
        .with_clock(clock);
        submit(&store, "linux/arm64").await;
        let claimed = scheduler
            .try_claim(&pi)
            .await
            .unwrap()
            .expect("pi takes it");
        scheduler.check_contact().await;
        now.fetch_add(20 * S, Ordering::SeqCst);
        assert!(scheduler.may_judge_leases());
        // The database goes away for a minute: no heartbeat can be recorded, the lease lapses.
        scheduler.contact.failed();
        now.fetch_add(60 * S, Ordering::SeqCst);
        scheduler.check_contact().await;
        assert_eq!(scheduler.reap_expired().await.unwrap(), Reaped::default());
        now.fetch_add(14 * S, Ordering::SeqCst);
        assert_eq!(scheduler.reap_expired().await.unwrap(), Reaped::default());
        // Its agent, alive all along, heartbeats within the lease's length of contact.
        store
            .renew_lease(claimed.build_id, claimed.token, scheduler.lease_expiry())
            .await
            .unwrap();
        now.fetch_add(S, Ordering::SeqCst);
        assert!(scheduler.may_judge_leases());
        assert_eq!(scheduler.reap_expired().await.unwrap(), Reaped::default());
        let build = store.get_build(claimed.build_id).await.unwrap().unwrap();
        assert_eq!((build.state, build.attempts), (BuildState::Building, 1));
        // An agent that really stopped is judged once its renewed lease lapses in contact.
        now.fetch_add(16 * S, Ordering::SeqCst);
        let reaped = scheduler.reap_expired().await.unwrap();
        assert_eq!(reaped.requeued, 1);
        let build = store.get_build(claimed.build_id).await.unwrap().unwrap();
        assert_eq!(build.state, BuildState::Queued);
    }

    fn scheduler_at(store: &Store, now: i64) -> Scheduler {
        Scheduler::new(
            store.clone(),
            Arc::new(Metrics::new()),
            Duration::from_secs(15),
            Duration::from_secs(60),
            3,
        )
        .with_clock(Clock::fixed(now))
    }

    async fn decision_of(store: &Store, claimed: &Claimed) -> String {
        store
            .get_build(claimed.build_id)
            .await
            .unwrap()
            .unwrap()
            .decision
            .unwrap()
    }

    /// `agent` builds `app` for `platform` and succeeds: its cache is warm for it.
    async fn warm_up(store: &Store, scheduler: &Scheduler, agent: &AgentRow, platform: &str) {
        submit(store, platform).await;
        let claimed = scheduler
            .try_claim(agent)
            .await
            .unwrap()
            .expect("the warm-up build");
        assert!(store
            .complete_build(claimed.build_id, claimed.token, "sha256:x", "m", 1)
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn the_emulating_agent_takes_what_only_it_can_build() {
        // The case: capacity 1 each, one job for amd64 and arm64, the emulating agent
        // asks first.
        let (store, _dir) = test_store().await;
        let amd = agent(&store, "amd64-a", &["linux/amd64"], &[]).await;
        let emu = agent(&store, "emu-1", &["linux/amd64"], &["linux/arm64"]).await;
        insert_test_job(&store, "app", &["linux/amd64", "linux/arm64"]).await;
        let scheduler = scheduler_at(&store, now_ms());
        let first = scheduler
            .try_claim(&emu)
            .await
            .unwrap()
            .expect("emu-1 takes one");
        assert_eq!(first.mode, BuildMode::Emulated);
        assert_eq!(
            decision_of(&store, &first).await,
            "emulated on emu-1: only agent that can build linux/arm64; linux/amd64 left for 1 other agent"
        );
        let second = scheduler
            .try_claim(&amd)
            .await
            .unwrap()
            .expect("amd64-a takes amd64");
        assert_eq!(second.mode, BuildMode::Native);
        assert_eq!(
            decision_of(&store, &second).await,
            "native on amd64-a: builds linux/amd64 natively"
        );
    }

    #[tokio::test]
    async fn a_build_waits_for_its_warm_agent_up_to_the_bound() {
        let (store, _dir) = test_store().await;
        let now = now_ms();
        let warm = agent(&store, "amd64-a", &["linux/amd64"], &[]).await;
        let cold = agent(&store, "amd64-b", &["linux/amd64"], &[]).await;
        let scheduler = scheduler_at(&store, now);
        warm_up(&store, &scheduler, &warm, "linux/amd64").await;

        // The cold agent asks first and is passed over; the warm one gets it.
        let job = submit(&store, "linux/amd64").await;
        assert!(scheduler.try_claim(&cold).await.unwrap().is_none());
        let taken = scheduler
            .try_claim(&warm)
            .await
            .unwrap()
            .expect("warm agent");
        assert_eq!(taken.job_id, job);
        let decision = decision_of(&store, &taken).await;
        assert!(
            decision.starts_with(
                "native on amd64-a: warm cache (built localhost:5000/app for linux/amd64 "
            ) && decision.ends_with(" ago)"),
            "{decision}"
        );
        store
            .complete_build(taken.build_id, taken.token, "sha256:x", "m", 1)
            .await
            .unwrap();

        // Once the build has waited the bound, the cold agent takes it and says why.
        let job = submit(&store, "linux/amd64").await;
        // (`now` was read before the build was queued: a second more is past its bound.)
        let later = scheduler_at(&store, now + 31 * S);
        let taken = later
            .try_claim(&cold)
            .await
            .unwrap()
            .expect("cold agent, after the bound");
        assert_eq!(taken.job_id, job);
        assert_eq!(
            decision_of(&store, &taken).await,
            "native on amd64-b: warm agent amd64-a did not take it within 30s"
        );

        // amd64-b built it last, so now amd64-a is the one passed over; with the preference
        // off, nobody waits.
        store
            .complete_build(taken.build_id, taken.token, "sha256:x", "m", 1)
            .await
            .unwrap();
        submit(&store, "linux/amd64").await;
        assert!(scheduler.try_claim(&warm).await.unwrap().is_none());
        let off = scheduler_at(&store, now).with_warm_agent_wait(Duration::ZERO);
        let taken = off.try_claim(&warm).await.unwrap().expect("no waiting");
        assert_eq!(
            decision_of(&store, &taken).await,
            "native on amd64-a: builds linux/amd64 natively"
        );
    }

    #[tokio::test]
    async fn a_native_cold_agent_beats_a_warm_emulating_one() {
        let (store, _dir) = test_store().await;
        let emu = agent(&store, "emu-1", &["linux/amd64"], &["linux/arm64"]).await;
        let scheduler = scheduler_at(&store, now_ms());
        // No native arm64 agent yet: emu-1 builds arm64 emulated and is warm for it.
        warm_up(&store, &scheduler, &emu, "linux/arm64").await;
        let pi = agent(&store, "pi", &["linux/arm64"], &[]).await;
        submit(&store, "linux/arm64").await;
        let taken = scheduler
            .try_claim(&pi)
            .await
            .unwrap()
            .expect("native first");
        assert_eq!(taken.mode, BuildMode::Native);
        assert_eq!(
            decision_of(&store, &taken).await,
            "native on pi: builds linux/arm64 natively"
        );
    }

    #[tokio::test]
    async fn a_new_build_wakes_its_warm_agent_even_when_a_cold_one_waits_first() {
        let (store, _dir) = test_store().await;
        let warm = agent(&store, "amd64-a", &["linux/amd64"], &[]).await;
        let cold = agent(&store, "amd64-b", &["linux/amd64"], &[]).await;
        let scheduler = Arc::new(Scheduler::new(
            store.clone(),
            Arc::new(Metrics::new()),
            Duration::from_secs(15),
            Duration::from_secs(60),
            3,
        ));
        warm_up(&store, &scheduler, &warm, "linux/amd64").await;
        let poll = |a: AgentRow| {
            let s = scheduler.clone();
            tokio::spawn(async move {
                s.next_lease(&a, Duration::from_secs(3), &CancellationToken::new())
                    .await
                    .unwrap()
            })
        };
        // The cold agent waits first, so the platform's one-agent wake reaches it, not the
        // warm one; it holds the build back, and only the warm agent's own wake brings it.
        let cold_poll = poll(cold);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let warm_poll = poll(warm);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let job = submit(&store, "linux/amd64").await;
        let amd: Vec<Platform> = vec![p("linux/amd64")];
        scheduler.wake_builds(&amd).await;
        scheduler
            .wake_warm_agents("localhost:5000", "app", &amd)
            .await;
        let got = warm_poll.await.unwrap().expect("the warm agent was woken");
        assert_eq!(got.job_id, job);
        assert!(cold_poll.await.unwrap().is_none());
    }
}

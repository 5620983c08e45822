//! Builds: one platform of one job, leased to one agent at a time under a fencing token.

use archfarm_protocol::api::{BuildMode, BuildState, EmulationPolicy};
use archfarm_protocol::{Network, Platform};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::{lifecycle, now_ms, parse_col, parse_opt_col, Store, StoreError, StoreResult};

/// A build as stored.
#[derive(Debug, Clone)]
pub struct BuildRow {
    /// Build id.
    pub id: Uuid,
    /// Job id.
    pub job_id: Uuid,
    /// Platform.
    pub platform: Platform,
    /// State.
    pub state: BuildState,
    /// Holder of the current or last lease.
    pub agent_id: Option<Uuid>,
    /// That agent's name.
    pub agent_name: Option<String>,
    /// Native or emulated.
    pub mode: Option<BuildMode>,
    /// Fencing token of the current lease.
    pub lease_token: Option<Uuid>,
    /// Pushed manifest digest.
    pub digest: Option<String>,
    /// Its media type.
    pub media_type: Option<String>,
    /// Its size.
    pub size: Option<i64>,
    /// Times leased.
    pub attempts: i64,
    /// Failure reason.
    pub error: Option<String>,
    /// Whether the platform is optional for its job.
    pub optional: bool,
    /// Why the current or last lease went where it did.
    pub decision: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// When it last entered the queue (a requeue resets it), Unix ms.
    pub queued_at: i64,
    /// Unix ms.
    pub started_at: Option<i64>,
    /// Unix ms.
    pub finished_at: Option<i64>,
    /// The machine of the agent that completed it, as it registered (provenance names it).
    pub builder_host: Option<archfarm_protocol::provenance::AgentHost>,
}

const COLUMNS: &str =
    "id, job_id, platform, state, agent_id, agent_name, mode, lease_token, digest, media_type, \
        size, attempts, error, created_at, queued_at, started_at, finished_at, optional, decision, \
        builder_host";

impl BuildRow {
    fn from_row(row: &AnyRow) -> StoreResult<Self> {
        let state: String = row.try_get("state")?;
        let mode: Option<String> = row.try_get("mode")?;
        Ok(BuildRow {
            id: parse_col(row, "id")?,
            job_id: parse_col(row, "job_id")?,
            platform: parse_col(row, "platform")?,
            state: BuildState::from_name(&state).ok_or(StoreError::Corrupt {
                column: "builds.state",
                value: state,
            })?,
            agent_id: parse_opt_col(row, "agent_id")?,
            agent_name: row.try_get("agent_name")?,
            mode: mode.as_deref().and_then(BuildMode::from_name),
            lease_token: parse_opt_col(row, "lease_token")?,
            digest: row.try_get("digest")?,
            media_type: row.try_get("media_type")?,
            size: row.try_get("size")?,
            attempts: row.try_get("attempts")?,
            error: row.try_get("error")?,
            optional: row.try_get::<i64, _>("optional")? != 0,
            decision: row.try_get("decision")?,
            created_at: row.try_get("created_at")?,
            queued_at: row.try_get("queued_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            // What an agent reported about itself; unreadable is as good as unknown.
            builder_host: row
                .try_get::<Option<String>, _>("builder_host")?
                .and_then(|t| serde_json::from_str(&t).ok()),
        })
    }
}

/// A queued build with what the scheduler needs from its job.
#[derive(Debug, Clone)]
pub struct QueuedBuild {
    /// Build id.
    pub id: Uuid,
    /// Job id.
    pub job_id: Uuid,
    /// Platform.
    pub platform: Platform,
    /// The job's emulation policy.
    pub emulation: EmulationPolicy,
    /// The job's repository (`registry/repository`), whose history estimates durations.
    pub repository: String,
    /// When it (re)entered the queue, Unix ms.
    pub queued_at: i64,
    /// Times it has been leased so far.
    pub attempts: i64,
    /// Whether the platform is optional for its job.
    pub optional: bool,
    /// The network the job asks for; `None` leaves it to the agent.
    pub network: Option<Network>,
}

/// The columns of a [`QueuedBuild`]; builds share their job's `created_at`, so ordering by the
/// build's own keeps queue order without a sort over the join.
const QUEUED_SELECT: &str =
    "SELECT b.id, b.job_id, b.platform, b.queued_at, b.attempts, b.optional, j.emulation, j.registry, j.repository, \
     j.network \
     FROM builds b JOIN jobs j ON j.id = b.job_id";

fn queued_from_row(row: &AnyRow) -> StoreResult<QueuedBuild> {
    let emulation: String = row.try_get("emulation")?;
    Ok(QueuedBuild {
        id: parse_col(row, "id")?,
        job_id: parse_col(row, "job_id")?,
        platform: parse_col(row, "platform")?,
        emulation: emulation.parse().map_err(|_| StoreError::Corrupt {
            column: "jobs.emulation",
            value: emulation.clone(),
        })?,
        repository: format!(
            "{}/{}",
            row.try_get::<String, _>("registry")?,
            row.try_get::<String, _>("repository")?
        ),
        queued_at: row.try_get("queued_at")?,
        attempts: row.try_get("attempts")?,
        optional: row.try_get::<i64, _>("optional")? != 0,
        network: parse_opt_col(row, "network")?,
    })
}

/// Outcome of a report made under a lease token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseCheck {
    /// The token is the build's current one and the build is running.
    Current,
    /// The token is current but the build was cancelled: the agent should stop.
    Cancelled,
    /// The token is not (or no longer) the build's: the report is refused.
    Lost,
}

/// The emulation estimate's history query (see [`Store::recent_durations`]); it runs under the
/// claim lock, so it walks `jobs_by_repository` (migration 0019) for the repository's newest jobs
/// and `builds_by_job` for their builds, and never the whole of either table.
pub const HISTORY_SQL: &str =
    "SELECT b.platform, b.mode, b.started_at, b.finished_at FROM builds b \
     WHERE b.job_id IN (SELECT j.id FROM jobs j WHERE j.registry = $1 AND j.repository = $2 \
     ORDER BY j.created_at DESC LIMIT $3) \
     AND b.state = 'succeeded' AND b.started_at IS NOT NULL AND b.finished_at IS NOT NULL \
     ORDER BY b.finished_at DESC LIMIT $3";

impl Store {
    /// The builds of a job, in platform order.
    pub async fn builds_of_job(&self, job_id: Uuid) -> StoreResult<Vec<BuildRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM builds WHERE job_id = $1 ORDER BY position"
        ))
        .bind(job_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(BuildRow::from_row).collect()
    }

    /// One build.
    pub async fn get_build(&self, id: Uuid) -> StoreResult<Option<BuildRow>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM builds WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(BuildRow::from_row).transpose()
    }

    /// Queued builds, oldest job first.
    pub async fn queued_builds(&self) -> StoreResult<Vec<QueuedBuild>> {
        let rows = sqlx::query(&format!(
            "{QUEUED_SELECT} WHERE b.state = 'queued' ORDER BY b.created_at, b.position"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(queued_from_row).collect()
    }

    /// Up to `limit` queued builds of these platforms whose job leaves the network to the agent
    /// or asks for one of `networks`, skipping the first `offset`, in queue order: what the
    /// scheduler reads for one agent, a page at a time, instead of the whole queue on every lease
    /// (the builds-by-state index gives the order, so a native match reads one page).
    pub async fn queued_builds_of(
        &self,
        platforms: &[Platform],
        networks: &[Network],
        limit: i64,
        offset: i64,
    ) -> StoreResult<Vec<QueuedBuild>> {
        if platforms.is_empty() {
            return Ok(Vec::new());
        }
        let params = |from: usize, n: usize| {
            (from..from + n)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let list = params(3, platforms.len());
        let network = if networks.is_empty() {
            "j.network IS NULL".to_string()
        } else {
            format!(
                "(j.network IS NULL OR j.network IN ({}))",
                params(3 + platforms.len(), networks.len())
            )
        };
        let sql = format!(
            "{QUEUED_SELECT} WHERE b.state = 'queued' AND b.platform IN ({list}) AND {network} \
             ORDER BY b.created_at, b.position LIMIT $1 OFFSET $2"
        );
        let mut query = sqlx::query(&sql).bind(limit).bind(offset);
        for p in platforms {
            query = query.bind(p.to_string());
        }
        for n in networks {
            query = query.bind(n.as_str());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(queued_from_row).collect()
    }

    /// Queued builds that have used `max_attempts` leases already, whatever their platform.
    pub async fn exhausted_queued_builds(
        &self,
        max_attempts: i64,
    ) -> StoreResult<Vec<QueuedBuild>> {
        let rows = sqlx::query(&format!(
            "{QUEUED_SELECT} WHERE b.state = 'queued' AND b.attempts >= $1 ORDER BY b.created_at, b.position"
        ))
        .bind(max_attempts)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(queued_from_row).collect()
    }

    /// How many builds `agent` is running.
    pub async fn running_count(&self, agent: Uuid) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM builds WHERE agent_id = $1 AND state = 'building'",
        )
        .bind(agent.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Leases a queued build to an agent, recording why and which replica (`replica`) granted
    /// it; false when someone else took it first, its job ended, the agent was revoked, drained
    /// or filled up meanwhile, or the job asks for a network the agent does not allow (as it
    /// last registered). The lease and its record in `leases` are written in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_build(
        &self,
        build_id: Uuid,
        agent_id: Uuid,
        agent_name: &str,
        mode: BuildMode,
        lease_token: Uuid,
        lease_expires_at: i64,
        decision: &str,
        replica: &str,
    ) -> StoreResult<bool> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        if self.backend == super::Backend::Postgres {
            // Claims for one agent queue here, so two replicas cannot both see a free slot and
            // fill it twice (SQLite has one writer at a time already).
            sqlx::query("SELECT id FROM agents WHERE id = $1 FOR UPDATE")
                .bind(agent_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        }
        // Checked again here, in the same statement as the build's state: the job is still live
        // (ending a job cancels its builds in one statement, so a claim either lands before that
        // and is cancelled by it, or after and finds the job ended); the agent is not revoked,
        // drained, unavailable or full, and allows the job's network (the scheduler matched
        // against the agent row it read, which a re-registration may have changed since).
        let res = sqlx::query(&format!(
            "UPDATE builds SET state = $9, agent_id = $1, agent_name = $2, mode = $3, lease_token = $4, \
             lease_expires_at = $5, attempts = attempts + 1, started_at = $6, error = NULL, decision = $8 \
             WHERE id = $7 AND {} \
             AND EXISTS (SELECT 1 FROM jobs lj WHERE lj.id = builds.job_id AND {}) \
             AND NOT EXISTS (SELECT 1 FROM agents WHERE id = $1 AND (revoked_at IS NOT NULL \
               OR draining <> 0 OR unavailable IS NOT NULL \
               OR capacity <= (SELECT COUNT(*) FROM builds rb WHERE rb.agent_id = $1 AND {}))) \
             AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = builds.job_id AND j.network IS NOT NULL \
               AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.id = $1 \
                 AND a.allowed_networks LIKE '%\"' || j.network || '\"%'))",
            lifecycle::CLAIM_BUILD.guard("state"),
            lifecycle::in_states("lj.state", lifecycle::LIVE_JOB),
            lifecycle::in_states("rb.state", lifecycle::RUNNING_BUILD),
        ))
        .bind(agent_id.to_string())
        .bind(agent_name)
        .bind(mode.as_str())
        .bind(lease_token.to_string())
        .bind(lease_expires_at)
        .bind(now)
        .bind(build_id.to_string())
        .bind(decision)
        .bind(lifecycle::CLAIM_BUILD.to.as_str())
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO leases (token, build_id, agent_id, agent_name, mode, replica, granted_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(lease_token.to_string())
        .bind(build_id.to_string())
        .bind(agent_id.to_string())
        .bind(agent_name)
        .bind(mode.as_str())
        .bind(replica)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Checks a lease token and, when it is current and running, extends the lease.
    pub async fn renew_lease(
        &self,
        build_id: Uuid,
        token: Uuid,
        expires_at: i64,
    ) -> StoreResult<LeaseCheck> {
        let res = sqlx::query(
            "UPDATE builds SET lease_expires_at = $1 WHERE id = $2 AND lease_token = $3 AND state = 'building'",
        )
        .bind(expires_at)
        .bind(build_id.to_string())
        .bind(token.to_string())
        .execute(&self.pool)
        .await?;
        if res.rows_affected() == 1 {
            return Ok(LeaseCheck::Current);
        }
        self.check_lease(build_id, token).await
    }

    /// What a lease token means now, without changing anything.
    pub async fn check_lease(&self, build_id: Uuid, token: Uuid) -> StoreResult<LeaseCheck> {
        let row = sqlx::query("SELECT state FROM builds WHERE id = $1 AND lease_token = $2")
            .bind(build_id.to_string())
            .bind(token.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(
            match row
                .map(|r| r.try_get::<String, _>("state"))
                .transpose()?
                .as_deref()
            {
                Some("building") => LeaseCheck::Current,
                Some("cancelled") => LeaseCheck::Cancelled,
                _ => LeaseCheck::Lost,
            },
        )
    }

    /// Records a pushed image for a running build; false when the lease is not current.
    pub async fn complete_build(
        &self,
        build_id: Uuid,
        token: Uuid,
        digest: &str,
        media_type: &str,
        size: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let res = sqlx::query(&format!(
            "UPDATE builds SET state = $7, digest = $1, media_type = $2, size = $3, finished_at = $4, \
             lease_expires_at = NULL, \
             builder_host = (SELECT a.host FROM agents a WHERE a.id = builds.agent_id) \
             WHERE id = $5 AND lease_token = $6 AND {}",
            lifecycle::COMPLETE_BUILD.guard("state")
        ))
        .bind(digest)
        .bind(media_type)
        .bind(size)
        .bind(now_ms())
        .bind(build_id.to_string())
        .bind(token.to_string())
        .bind(lifecycle::COMPLETE_BUILD.to.as_str())
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        // Its agent's cache now holds this build's layers: the scheduler prefers it next time.
        super::warm::record(&mut tx, build_id).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records a failed build; false when the lease is not current.
    pub async fn fail_build(&self, build_id: Uuid, token: Uuid, error: &str) -> StoreResult<bool> {
        self.fail_if(build_id, token, i64::MAX, error).await
    }

    /// Running builds whose lease lapsed before `now`.
    pub async fn expired_leases(&self, now: i64) -> StoreResult<Vec<BuildRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM builds WHERE state = 'building' AND lease_expires_at < $1"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(BuildRow::from_row).collect()
    }

    /// Puts a build back in the queue under a fresh (absent) lease, fencing out the old holder;
    /// false when its lease changed meanwhile.
    pub async fn requeue_build(&self, build_id: Uuid, old_token: Uuid) -> StoreResult<bool> {
        self.requeue_if(build_id, old_token, i64::MAX).await
    }

    /// [`Store::requeue_build`] for a lease the reaper found lapsed before `now`: false, too,
    /// when a heartbeat renewed it since (the reaper's look and this are two statements).
    pub async fn requeue_lapsed_build(
        &self,
        build_id: Uuid,
        old_token: Uuid,
        now: i64,
    ) -> StoreResult<bool> {
        self.requeue_if(build_id, old_token, now.saturating_sub(1))
            .await
    }

    /// Requeues when the lease expires at `expires_by` or earlier (`i64::MAX`: whenever).
    async fn requeue_if(
        &self,
        build_id: Uuid,
        old_token: Uuid,
        expires_by: i64,
    ) -> StoreResult<bool> {
        let res = sqlx::query(&format!(
            "UPDATE builds SET state = $5, agent_id = NULL, agent_name = NULL, mode = NULL, lease_token = NULL, \
             lease_expires_at = NULL, started_at = NULL, queued_at = $3 \
             WHERE id = $1 AND lease_token = $2 AND {} AND COALESCE(lease_expires_at, 0) <= $4",
            lifecycle::REQUEUE_BUILD.guard("state")
        ))
        .bind(build_id.to_string())
        .bind(old_token.to_string())
        .bind(now_ms())
        .bind(expires_by)
        .bind(lifecycle::REQUEUE_BUILD.to.as_str())
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Fails a build whose lease the reaper found lapsed before `now` and whose attempts are used
    /// up; false when the lease changed or was renewed since.
    pub async fn fail_lapsed_build(
        &self,
        build_id: Uuid,
        token: Uuid,
        now: i64,
        error: &str,
    ) -> StoreResult<bool> {
        self.fail_if(build_id, token, now.saturating_sub(1), error)
            .await
    }

    /// Fails when the lease expires at `expires_by` or earlier (`i64::MAX`: whenever).
    async fn fail_if(
        &self,
        build_id: Uuid,
        token: Uuid,
        expires_by: i64,
        error: &str,
    ) -> StoreResult<bool> {
        let res = sqlx::query(&format!(
            "UPDATE builds SET state = $6, error = $1, finished_at = $2, lease_expires_at = NULL \
             WHERE id = $3 AND lease_token = $4 AND {} AND COALESCE(lease_expires_at, 0) <= $5",
            lifecycle::FAIL_BUILD.guard("state")
        ))
        .bind(error)
        .bind(now_ms())
        .bind(build_id.to_string())
        .bind(token.to_string())
        .bind(expires_by)
        .bind(lifecycle::FAIL_BUILD.to.as_str())
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }
}

impl Store {
    /// Puts a running build its agent gave back (its disk filled up) in the queue again, fencing
    /// out the lease. The attempt the lease took is given back too, unless the build was given
    /// back `free_releases` times already (each lease granted and not counted as an attempt is
    /// one such release), so a build that fills every agent's disk still ends. `None` when the
    /// lease is not current; otherwise whether the attempt was given back.
    pub async fn release_build(
        &self,
        build_id: Uuid,
        token: Uuid,
        free_releases: i64,
    ) -> StoreResult<Option<bool>> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "SELECT attempts, (SELECT COUNT(*) FROM leases l WHERE l.build_id = builds.id) AS granted \
             FROM builds WHERE id = $1 AND lease_token = $2 AND state = 'building'",
        )
        .bind(build_id.to_string())
        .bind(token.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let attempts: i64 = row.try_get("attempts")?;
        let granted: i64 = row.try_get("granted")?;
        let free = granted - attempts < free_releases && attempts > 0;
        let res = sqlx::query(&format!(
            "UPDATE builds SET state = $5, agent_id = NULL, agent_name = NULL, mode = NULL, lease_token = NULL, \
             lease_expires_at = NULL, started_at = NULL, queued_at = $3, attempts = attempts - $4 \
             WHERE id = $1 AND lease_token = $2 AND {}",
            lifecycle::REQUEUE_BUILD.guard("state")
        ))
        .bind(build_id.to_string())
        .bind(token.to_string())
        .bind(now_ms())
        .bind(i64::from(free))
        .bind(lifecycle::REQUEUE_BUILD.to.as_str())
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(free))
    }

    /// Unfinished jobs that have a failed build, with that build's platform and error: a job whose
    /// failure was recorded for the build but not yet for the job (a crash between the two).
    pub async fn jobs_with_failed_builds(
        &self,
    ) -> StoreResult<Vec<(Uuid, String, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT j.id, b.platform, b.error FROM jobs j JOIN builds b ON b.job_id = j.id \
                          WHERE j.state IN ('queued', 'building') AND b.state = 'failed' AND b.optional = 0",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse_col(r, "id")?,
                    r.try_get("platform")?,
                    r.try_get("error")?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{insert_test_job, test_store};

    async fn one_job(store: &Store) -> (Uuid, Vec<BuildRow>) {
        let id = insert_test_job(store, "a", &["linux/amd64", "linux/s390x"]).await;
        (id, store.builds_of_job(id).await.unwrap())
    }

    #[tokio::test]
    async fn a_build_given_back_is_queued_again_and_its_attempt_given_back_a_few_times() {
        let (store, _dir) = test_store().await;
        let (_, builds) = one_job(&store).await;
        let build = builds[0].id;
        let agent = Uuid::new_v4();
        let claim = |token| {
            let store = store.clone();
            async move {
                let mode = BuildMode::Native;
                let ok = store
                    .claim_build(build, agent, "pi", mode, token, i64::MAX, "test", "r")
                    .await
                    .unwrap();
                assert!(ok, "claimed");
            }
        };
        let attempts = || async { store.get_build(build).await.unwrap().unwrap().attempts };
        let mut given_back = Vec::new();
        for _ in 0..4 {
            let token = Uuid::new_v4();
            claim(token).await;
            assert_eq!(
                store.release_build(build, Uuid::new_v4(), 3).await.unwrap(),
                None,
                "another lease's token"
            );
            given_back.push(store.release_build(build, token, 3).await.unwrap());
            let row = store.get_build(build).await.unwrap().unwrap();
            assert_eq!(
                (row.state, row.agent_id, row.lease_token),
                (BuildState::Queued, None, None)
            );
            assert_eq!(
                store.release_build(build, token, 3).await.unwrap(),
                None,
                "released once"
            );
        }
        // Three times free, then the attempt counts: a build that fills every disk still ends.
        assert_eq!(
            given_back,
            [Some(true), Some(true), Some(true), Some(false)]
        );
        assert_eq!(attempts().await, 1);
        claim(Uuid::new_v4()).await;
        assert_eq!(attempts().await, 2);
    }

    #[tokio::test]
    async fn a_revoked_agent_claims_nothing() {
        let (store, _dir) = test_store().await;
        let (_, builds) = one_job(&store).await;
        let arm: Vec<archfarm_protocol::Platform> = vec!["linux/amd64".parse().unwrap()];
        let crate::store::Registered::Ok { id: agent, .. } = store
            .upsert_agent(
                "pi",
                "h",
                &arm,
                &[],
                1,
                None,
                None,
                false,
                0,
                &Default::default(),
            )
            .await
            .unwrap()
        else {
            panic!("not registered")
        };
        assert_eq!(store.revoke_agent(agent).await.unwrap(), Some(0));
        // Its old token no longer finds it, but still says whose it was, after a second revocation too.
        assert_eq!(store.revoke_agent(agent).await.unwrap(), Some(0));
        assert!(store.agent_by_token_hash("h").await.unwrap().is_none());
        assert_eq!(
            store
                .revoked_agent_by_token_hash("h")
                .await
                .unwrap()
                .as_deref(),
            Some("pi")
        );
        assert!(store
            .revoked_agent_by_token_hash("x")
            .await
            .unwrap()
            .is_none());
        let claimed = store
            .claim_build(
                builds[0].id,
                agent,
                "pi",
                BuildMode::Native,
                Uuid::new_v4(),
                1,
                "test",
                "replica-a",
            )
            .await
            .unwrap();
        assert!(!claimed, "a revoked agent was handed a build");
        assert!(store.agent_cut_off(agent).await.unwrap());
    }

    #[tokio::test]
    async fn a_job_asking_for_a_network_goes_only_to_an_agent_that_allows_it() {
        let (store, _dir) = test_store().await;
        let (job, builds) = one_job(&store).await;
        sqlx::query("UPDATE jobs SET network = 'none' WHERE id = $1")
            .bind(job.to_string())
            .execute(store.pool())
            .await
            .unwrap();
        let amd: Vec<Platform> = vec!["linux/amd64".parse().unwrap()];
        let register = |name: &'static str, allowed: Vec<Network>| {
            let store = store.clone();
            let amd = amd.clone();
            async move {
                let networks = crate::store::AgentNetworks {
                    default: Some(Network::Host),
                    allowed,
                };
                let crate::store::Registered::Ok { id, .. } = store
                    .upsert_agent(name, name, &amd, &[], 1, None, None, false, 0, &networks)
                    .await
                    .unwrap()
                else {
                    panic!("not registered")
                };
                id
            }
        };
        let old = register("old", vec![]).await;
        let host = register("host-only", vec![Network::Host]).await;
        let none = register("sealed", vec![Network::Host, Network::None]).await;
        assert!(store
            .queued_builds_of(&amd, &[Network::Host], 10, 0)
            .await
            .unwrap()
            .is_empty());
        assert!(store
            .queued_builds_of(&amd, &[], 10, 0)
            .await
            .unwrap()
            .is_empty());
        let seen = store
            .queued_builds_of(&amd, &[Network::None], 10, 0)
            .await
            .unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].network, Some(Network::None));
        let claim = |agent: Uuid, name: &'static str| {
            store.claim_build(
                builds[0].id,
                agent,
                name,
                BuildMode::Native,
                Uuid::new_v4(),
                i64::MAX,
                "test",
                "replica-a",
            )
        };
        assert!(
            !claim(old, "old").await.unwrap(),
            "an agent from before networks took it"
        );
        assert!(
            !claim(host, "host-only").await.unwrap(),
            "a host-only agent took it"
        );
        assert!(claim(none, "sealed").await.unwrap());
    }

    #[tokio::test]
    async fn a_build_is_leased_once_and_old_tokens_are_fenced() {
        let (store, _dir) = test_store().await;
        let (_, builds) = one_job(&store).await;
        let b = builds[0].id;
        let (agent, first, second) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert!(store
            .claim_build(
                b,
                agent,
                "a",
                BuildMode::Native,
                first,
                1,
                "test",
                "replica-a"
            )
            .await
            .unwrap());
        assert!(!store
            .claim_build(
                b,
                agent,
                "a",
                BuildMode::Native,
                second,
                1,
                "test",
                "replica-a"
            )
            .await
            .unwrap());
        // The lease lapses and the build goes to someone else: the first holder's report is refused.
        assert_eq!(store.expired_leases(now_ms()).await.unwrap().len(), 1);
        assert!(store.requeue_build(b, first).await.unwrap());
        assert!(store
            .claim_build(
                b,
                agent,
                "b",
                BuildMode::Native,
                second,
                i64::MAX,
                "test",
                "replica-a"
            )
            .await
            .unwrap());
        assert!(!store
            .complete_build(b, first, "sha256:x", "m", 1)
            .await
            .unwrap());
        assert_eq!(store.check_lease(b, first).await.unwrap(), LeaseCheck::Lost);
        assert_eq!(
            store.renew_lease(b, second, i64::MAX).await.unwrap(),
            LeaseCheck::Current
        );
        assert!(store
            .complete_build(b, second, "sha256:x", "m", 1)
            .await
            .unwrap());
        let row = store.get_build(b).await.unwrap().unwrap();
        assert_eq!(
            (row.state, row.attempts, row.agent_name.as_deref()),
            (BuildState::Succeeded, 2, Some("b"))
        );
    }

    #[tokio::test]
    async fn ending_a_job_cancels_its_builds_and_tells_the_holder() {
        let (store, _dir) = test_store().await;
        let (job, builds) = one_job(&store).await;
        let token = Uuid::new_v4();
        store
            .claim_build(
                builds[0].id,
                Uuid::new_v4(),
                "a",
                BuildMode::Native,
                token,
                i64::MAX,
                "test",
                "replica-a",
            )
            .await
            .unwrap();
        let stopped = store
            .end_job(
                job,
                archfarm_protocol::api::JobState::Cancelled,
                "cancelled by user",
            )
            .await
            .unwrap()
            .expect("this call ended it");
        assert_eq!(
            stopped.running.len(),
            1,
            "the one running build was stopped"
        );
        assert_eq!(stopped.running[0].1, Some(BuildMode::Native));
        assert!(store
            .end_job(job, archfarm_protocol::api::JobState::Failed, "again")
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            store
                .renew_lease(builds[0].id, token, i64::MAX)
                .await
                .unwrap(),
            LeaseCheck::Cancelled
        );
        assert!(store.queued_builds().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn half_done_outcomes_are_found_for_reconciling() {
        let (store, _dir) = test_store().await;
        let (job, builds) = one_job(&store).await;
        let (t0, t1) = (Uuid::new_v4(), Uuid::new_v4());
        store
            .claim_build(
                builds[0].id,
                Uuid::new_v4(),
                "a",
                BuildMode::Native,
                t0,
                i64::MAX,
                "test",
                "replica-a",
            )
            .await
            .unwrap();
        store
            .claim_build(
                builds[1].id,
                Uuid::new_v4(),
                "b",
                BuildMode::Emulated,
                t1,
                i64::MAX,
                "test",
                "replica-a",
            )
            .await
            .unwrap();
        sqlx::query("UPDATE jobs SET state = 'building'")
            .execute(store.pool())
            .await
            .unwrap();
        // Both builds succeed but the job never moved on (a crash in between).
        assert!(store
            .complete_build(builds[0].id, t0, "sha256:a", "m", 1)
            .await
            .unwrap());
        assert!(store
            .complete_build(builds[1].id, t1, "sha256:b", "m", 1)
            .await
            .unwrap());
        let done = store.builds_of_job(job).await.unwrap();
        assert!(done.iter().all(|b| b.state == BuildState::Succeeded));
        assert!(store.jobs_with_failed_builds().await.unwrap().is_empty());
        // The reaper looks, then a heartbeat renews the lease, then the reaper acts: nothing is
        // taken back (its look and its act are two statements).
        let (_, other) = one_job(&store).await;
        let t2 = Uuid::new_v4();
        store
            .claim_build(
                other[0].id,
                Uuid::new_v4(),
                "a",
                BuildMode::Native,
                t2,
                5,
                "test",
                "replica-a",
            )
            .await
            .unwrap();
        let reaper_looked_at = 10;
        assert_eq!(
            store.expired_leases(reaper_looked_at).await.unwrap().len(),
            1
        );
        assert_eq!(
            store.renew_lease(other[0].id, t2, 500).await.unwrap(),
            LeaseCheck::Current
        );
        assert!(!store
            .requeue_lapsed_build(other[0].id, t2, reaper_looked_at)
            .await
            .unwrap());
        assert!(!store
            .fail_lapsed_build(other[0].id, t2, reaper_looked_at, "lapsed")
            .await
            .unwrap());
        // Once lapsed by the reaper's clock, it is taken back.
        assert!(store
            .requeue_lapsed_build(other[0].id, t2, 501)
            .await
            .unwrap());
        let t2 = Uuid::new_v4();
        store
            .claim_build(
                other[0].id,
                Uuid::new_v4(),
                "a",
                BuildMode::Native,
                t2,
                5,
                "test",
                "replica-a",
            )
            .await
            .unwrap();
        assert!(store.fail_build(other[0].id, t2, "boom").await.unwrap());
        let failed = store.jobs_with_failed_builds().await.unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(
            (failed[0].1.as_str(), failed[0].2.as_deref()),
            ("linux/amd64", Some("boom"))
        );
    }
}

/// A running build, for estimating when a native slot frees up.
#[derive(Debug, Clone)]
pub struct RunningBuild {
    /// Holder.
    pub agent_id: Uuid,
    /// Platform.
    pub platform: Platform,
    /// Lease start, Unix ms.
    pub started_at: i64,
}

impl Store {
    /// Every running build.
    pub async fn running_builds(&self) -> StoreResult<Vec<RunningBuild>> {
        let rows = sqlx::query(
            "SELECT agent_id, platform, started_at FROM builds WHERE state = 'building'",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(agent_id) = parse_opt_col::<Uuid>(row, "agent_id")? else {
                continue;
            };
            out.push(RunningBuild {
                agent_id,
                platform: parse_col(row, "platform")?,
                started_at: row.try_get::<Option<i64>, _>("started_at")?.unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Durations (ms) of recent successful builds of a repository (`registry/repository`), newest
    /// first, with their platform and mode: the history the emulation decision learns from. Only
    /// the builds of the repository's `limit` newest jobs are looked at, so the read costs the
    /// same however much history is kept.
    pub async fn recent_durations(
        &self,
        repository: &str,
        limit: i64,
    ) -> StoreResult<Vec<(Platform, BuildMode, i64)>> {
        let (registry, repo) = repository.split_once('/').unwrap_or((repository, ""));
        let rows = sqlx::query(HISTORY_SQL)
            .bind(registry)
            .bind(repo)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mode: Option<String> = row.try_get("mode")?;
            let Some(mode) = mode.as_deref().and_then(BuildMode::from_name) else {
                continue;
            };
            let started: i64 = row.try_get("started_at")?;
            let finished: i64 = row.try_get("finished_at")?;
            out.push((
                parse_col(row, "platform")?,
                mode,
                (finished - started).max(0),
            ));
        }
        Ok(out)
    }

    /// Fails a queued build that may not be leased again; false when it left the queue meanwhile.
    pub async fn fail_queued_build(&self, build_id: Uuid, error: &str) -> StoreResult<bool> {
        self.end_queued_build(build_id, lifecycle::GIVE_UP_BUILD, error)
            .await
    }

    /// Gives up on a queued optional build: it ends `cancelled` with the reason. False when it
    /// left the queue meanwhile (an agent claimed it): then its job waits for it.
    pub async fn skip_build(&self, build_id: Uuid, reason: &str) -> StoreResult<bool> {
        self.step("skip_build").await;
        self.end_queued_build(build_id, lifecycle::SKIP_BUILD, reason)
            .await
    }

    async fn end_queued_build(
        &self,
        build_id: Uuid,
        mv: lifecycle::BuildMove,
        why: &str,
    ) -> StoreResult<bool> {
        let res = sqlx::query(&format!(
            "UPDATE builds SET state = $1, error = $2, finished_at = $3 WHERE id = $4 AND {}",
            mv.guard("state")
        ))
        .bind(mv.to.as_str())
        .bind(why)
        .bind(now_ms())
        .bind(build_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }
}

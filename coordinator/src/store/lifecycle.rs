//! The job and build state machine: which state may follow which (one table each), the moves the
//! coordinator makes, and the statements that end a job. Every change of `jobs.state` or
//! `builds.state` is one conditional `UPDATE` whose `WHERE state IN (…)` comes from a [`Move`]
//! checked against the table, so two callers racing for a row cannot both win, and no caller can
//! move a row along an edge the table does not have (an ended job stays ended).

use archfarm_protocol::api::{BuildMode, BuildState, JobState};
use sqlx::Row;
use uuid::Uuid;

use super::{job_credentials, now_ms, parse_col, secrets, to_json_list, Store, StoreResult};

/// Whether a job may go from `from` to `to`.
pub const fn job_allowed(from: JobState, to: JobState) -> bool {
    use JobState::*;
    matches!(
        (from, to),
        // Its first build is leased.
        (Queued, Building)
        // Every required build succeeded (a job whose builds all finished between two looks
        // may never have been seen `building`).
        | (Queued | Building, Stitching)
        // The index was pushed.
        | (Stitching, Succeeded)
        // A required build, the time limit or the stitching failed it.
        | (Queued | Building | Stitching, Failed)
        // A user cancelled it, stitching included: its stitching attempt then finds its lease gone
        // and moves no further tag (tags already moved stay).
        | (Queued | Building | Stitching, Cancelled)
    )
}

/// Whether a build may go from `from` to `to`.
pub const fn build_allowed(from: BuildState, to: BuildState) -> bool {
    use BuildState::*;
    matches!(
        (from, to),
        // Leased to an agent.
        (Queued, Building)
        // Its agent pushed it.
        | (Building, Succeeded)
        // Its agent reported a failure, or its attempts were used up (leased or waiting).
        | (Queued | Building, Failed)
        // Its lease lapsed, its agent gave it back or restarted: another agent takes it.
        | (Building, Queued)
        // Its job ended, or an optional platform was left out.
        | (Queued | Building, Cancelled)
    )
}

/// A state that can be named in SQL.
pub trait Named: Copy + PartialEq + 'static {
    /// The name stored in the `state` column.
    fn name(self) -> &'static str;
}

impl Named for JobState {
    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl Named for BuildState {
    fn name(self) -> &'static str {
        self.as_str()
    }
}

/// One kind of change the coordinator makes: from any of `from` to `to`.
#[derive(Debug, Clone, Copy)]
pub struct Move<S: 'static> {
    /// The states the row may be in for the change to happen.
    pub from: &'static [S],
    /// The state it goes to.
    pub to: S,
}

impl<S: Named> Move<S> {
    /// The condition on the row's current state, e.g. `state IN ('queued', 'building')`, for
    /// `column` (`state`, or `b.state` under an alias). The names are the enum's own, never input.
    pub fn guard(&self, column: &str) -> String {
        in_states(column, self.from)
    }
}

/// `column IN ('a', 'b')` for these states (their names are the enum's own, never input).
pub fn in_states<S: Named>(column: &str, states: &[S]) -> String {
    let names: Vec<String> = states.iter().map(|s| format!("'{}'", s.name())).collect();
    format!("{column} IN ({})", names.join(", "))
}

/// A move of a job.
pub type JobMove = Move<JobState>;
/// A move of a build.
pub type BuildMove = Move<BuildState>;

/// The job's first build was leased.
pub const START_JOB: JobMove = Move {
    from: &[JobState::Queued],
    to: JobState::Building,
};
/// Every required build succeeded: the index is pushed.
pub const STITCH_JOB: JobMove = Move {
    from: &[JobState::Queued, JobState::Building],
    to: JobState::Stitching,
};
/// The index was pushed.
pub const SUCCEED_JOB: JobMove = Move {
    from: &[JobState::Stitching],
    to: JobState::Succeeded,
};
/// A required build, the time limit or the stitching failed the job.
pub const FAIL_JOB: JobMove = Move {
    from: &[JobState::Queued, JobState::Building, JobState::Stitching],
    to: JobState::Failed,
};
/// A user cancelled the job (while stitching too: no further tag moves).
pub const CANCEL_JOB: JobMove = Move {
    from: &[JobState::Queued, JobState::Building, JobState::Stitching],
    to: JobState::Cancelled,
};
/// The jobs whose builds may still be leased (the states [`START_JOB`] and [`STITCH_JOB`] leave).
pub const LIVE_JOB: &[JobState] = &[JobState::Queued, JobState::Building];
/// The builds that hold an agent's slot.
pub const RUNNING_BUILD: &[BuildState] = &[BuildState::Building];

/// A queued build is leased.
pub const CLAIM_BUILD: BuildMove = Move {
    from: &[BuildState::Queued],
    to: BuildState::Building,
};
/// A running build's image was pushed.
pub const COMPLETE_BUILD: BuildMove = Move {
    from: &[BuildState::Building],
    to: BuildState::Succeeded,
};
/// A running build failed.
pub const FAIL_BUILD: BuildMove = Move {
    from: &[BuildState::Building],
    to: BuildState::Failed,
};
/// A queued build used up its attempts.
pub const GIVE_UP_BUILD: BuildMove = Move {
    from: &[BuildState::Queued],
    to: BuildState::Failed,
};
/// A running build goes back to the queue (lapsed lease, given back, agent restarted).
pub const REQUEUE_BUILD: BuildMove = Move {
    from: &[BuildState::Building],
    to: BuildState::Queued,
};
/// A queued optional build is left out: nobody can build it.
pub const SKIP_BUILD: BuildMove = Move {
    from: &[BuildState::Queued],
    to: BuildState::Cancelled,
};
/// An unfinished build is stopped: its job ended, or its optional platform was left out.
pub const CANCEL_BUILD: BuildMove = Move {
    from: &[BuildState::Queued, BuildState::Building],
    to: BuildState::Cancelled,
};

/// Every job move, for the test that holds them to the table.
pub const JOB_MOVES: &[JobMove] = &[START_JOB, STITCH_JOB, SUCCEED_JOB, FAIL_JOB, CANCEL_JOB];
/// Every build move, likewise.
pub const BUILD_MOVES: &[BuildMove] = &[
    CLAIM_BUILD,
    COMPLETE_BUILD,
    FAIL_BUILD,
    GIVE_UP_BUILD,
    REQUEUE_BUILD,
    SKIP_BUILD,
    CANCEL_BUILD,
];

/// What ending a job stopped.
#[derive(Debug, Clone, Default)]
pub struct Stopped {
    /// Platform and mode of each build that was running.
    pub running: Vec<(archfarm_protocol::Platform, Option<BuildMode>)>,
}

/// Builds stopped by one statement: each with whether it was running (held a lease).
async fn cancel_builds(
    conn: &mut sqlx::AnyConnection,
    job_id: Uuid,
    optional_only: bool,
    why: Option<&str>,
    now: i64,
) -> StoreResult<Vec<(archfarm_protocol::Platform, Option<BuildMode>, bool)>> {
    // Queued and running builds in one statement: a claim that commits while this runs is
    // either seen (the build is then running and is cancelled here) or comes after (and finds
    // the build cancelled, or its job ended). Two statements let a claim land between them and
    // left a build running for an ended job. The lease token stays, so its holder's next
    // heartbeat learns it should stop; a queued build has none, which tells the two apart.
    let rows = sqlx::query(&format!(
        "UPDATE builds SET state = $1, finished_at = $2, error = COALESCE($3, error) \
         WHERE job_id = $4 AND {} AND ($5 = 0 OR optional = 1) \
         RETURNING platform, mode, lease_token",
        CANCEL_BUILD.guard("state")
    ))
    .bind(CANCEL_BUILD.to.as_str())
    .bind(now)
    .bind(why)
    .bind(job_id.to_string())
    .bind(i64::from(optional_only))
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let mode: Option<String> = row.try_get("mode")?;
        let token: Option<String> = row.try_get("lease_token")?;
        out.push((
            parse_col(row, "platform")?,
            mode.as_deref().and_then(BuildMode::from_name),
            token.is_some(),
        ));
    }
    Ok(out)
}

impl Store {
    /// Compare-and-set of a job's state along `mv`; true when this caller made the change.
    pub async fn move_job(&self, id: Uuid, mv: JobMove) -> StoreResult<bool> {
        let now = now_ms();
        let finished = mv.to.is_terminal().then_some(now);
        let res = sqlx::query(&format!(
            "UPDATE jobs SET state = $1, updated_at = $2, finished_at = $3 WHERE id = $4 AND {}",
            mv.guard("state")
        ))
        .bind(mv.to.as_str())
        .bind(now)
        .bind(finished)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Ends a job as failed or cancelled (unless it already ended, or may not end so from where
    /// it is: see [`job_allowed`]) and cancels its unfinished builds, in one transaction. `Some`
    /// when this caller ended it, with the builds that were running.
    pub async fn end_job(
        &self,
        id: Uuid,
        state: JobState,
        error: &str,
    ) -> StoreResult<Option<Stopped>> {
        let mv = match state {
            JobState::Cancelled => CANCEL_JOB,
            JobState::Failed => FAIL_JOB,
            other => panic!("end_job to {other}: a job ends this way only as failed or cancelled"),
        };
        let now = now_ms();
        let mut tx = self.begin().await?;
        let res = sqlx::query(&format!(
            "UPDATE jobs SET state = $1, error = $2, updated_at = $3, finished_at = $4 \
             WHERE id = $5 AND {}",
            mv.guard("state")
        ))
        .bind(mv.to.as_str())
        .bind(error)
        .bind(now)
        .bind(now)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            tx.commit().await?;
            return Ok(None);
        }
        self.step("end_job: job row ended").await;
        let running = cancel_builds(&mut tx, id, false, None, now)
            .await?
            .into_iter()
            .filter(|(_, _, was_running)| *was_running)
            .map(|(platform, mode, _)| (platform, mode))
            .collect();
        // No build of it will be leased again: its secrets and credentials have no more use.
        let deleted =
            secrets::delete(&mut tx, id).await? + job_credentials::delete(&mut tx, id).await?;
        // Nor will it move a tag: the tags its stitching held wait for no one.
        super::tag_heads::release_job(&mut tx, id).await?;
        tx.commit().await?;
        if deleted > 0 {
            self.scrub_deleted_secrets().await;
        }
        Ok(Some(Stopped { running }))
    }

    /// Cancels a job that has not ended, stitching included (its stitching attempt then finds its
    /// lease gone and moves no further tag); `Some` when this caller cancelled it.
    pub async fn cancel_job(&self, id: Uuid, reason: &str) -> StoreResult<Option<Stopped>> {
        self.end_job(id, JobState::Cancelled, reason).await
    }

    /// Stops the unfinished optional builds of a live job, recording `why` as their error;
    /// returns each with whether it was running. Used when the job's time limit is reached with
    /// every required build done: the optional ones are left out of the index.
    pub async fn cancel_unfinished_optional(
        &self,
        job_id: Uuid,
        why: &str,
    ) -> StoreResult<Vec<(archfarm_protocol::Platform, Option<BuildMode>, bool)>> {
        let mut conn = self.pool.acquire().await?;
        cancel_builds(&mut conn, job_id, true, Some(why), now_ms()).await
    }

    /// Marks a stitching job succeeded with its index, if `stitch_token` is still the job's
    /// stitching attempt (one that was taken over records nothing).
    pub async fn finish_job(
        &self,
        id: Uuid,
        stitch_token: Uuid,
        index_digest: &str,
        media_type: &str,
        index_size: i64,
        provenance: &[serde_json::Value],
    ) -> StoreResult<bool> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let res = sqlx::query(&format!(
            "UPDATE jobs SET state = $9, index_digest = $1, index_media_type = $2, updated_at = $3, \
             finished_at = $4, index_size = $7, provenance = $8 \
             WHERE id = $5 AND {} AND stitch_token = $6",
            SUCCEED_JOB.guard("state")
        ))
        .bind(index_digest)
        .bind(media_type)
        .bind(now)
        .bind(now)
        .bind(id.to_string())
        .bind(stitch_token.to_string())
        .bind(index_size)
        .bind(to_json_list(provenance))
        .bind(SUCCEED_JOB.to.as_str())
        .execute(&mut *tx)
        .await?;
        let finished = res.rows_affected() == 1;
        let deleted = if finished {
            secrets::delete(&mut tx, id).await? + job_credentials::delete(&mut tx, id).await?
        } else {
            0
        };
        tx.commit().await?;
        if deleted > 0 {
            self.scrub_deleted_secrets().await;
        }
        Ok(finished)
    }

    /// Adds a warning to a job, once. A compare-and-set on the list read: two callers adding
    /// warnings at the same time both keep theirs (the loser reads again and retries).
    pub async fn add_job_warning(&self, id: Uuid, warning: &str) -> StoreResult<()> {
        loop {
            let Some(row) = sqlx::query("SELECT warnings FROM jobs WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?
            else {
                return Ok(());
            };
            let seen: String = row.try_get("warnings")?;
            let mut warnings: Vec<String> =
                serde_json::from_str(&seen).map_err(|_| super::StoreError::Corrupt {
                    column: "jobs.warnings",
                    value: seen.clone(),
                })?;
            if warnings.iter().any(|w| w == warning) {
                return Ok(());
            }
            warnings.push(warning.to_string());
            self.step("add_job_warning: list read").await;
            let res = sqlx::query(
                "UPDATE jobs SET warnings = $1, updated_at = $2 WHERE id = $3 AND warnings = $4",
            )
            .bind(serde_json::to_string(&warnings).expect("strings serialise"))
            .bind(now_ms())
            .bind(id.to_string())
            .bind(&seen)
            .execute(&self.pool)
            .await?;
            if res.rows_affected() == 1 {
                return Ok(());
            }
        }
    }

    /// A point where a test may run a competing operation (see [`Hooks`]); nothing otherwise.
    pub(super) async fn step(&self, _name: &'static str) {
        #[cfg(test)]
        self.hooks.run(_name).await;
    }
}

/// Test-only: operations to run at a named [`Store::step`], once each, so a test forces the
/// interleaving of two racing callers deterministically instead of hoping a sleep lands it.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Hooks(
    std::sync::Arc<
        std::sync::Mutex<
            std::collections::HashMap<&'static str, futures::future::BoxFuture<'static, ()>>,
        >,
    >,
);

#[cfg(test)]
impl Hooks {
    /// Runs `op` the next time the store reaches step `name`.
    pub(crate) fn at(
        &self,
        name: &'static str,
        op: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.0
            .lock()
            .expect("hooks lock")
            .insert(name, Box::pin(op));
    }

    /// Whether the operation set for `name` has run.
    pub(crate) fn ran(&self, name: &'static str) -> bool {
        !self.0.lock().expect("hooks lock").contains_key(name)
    }

    async fn run(&self, name: &'static str) {
        let op = self.0.lock().expect("hooks lock").remove(name);
        if let Some(op) = op {
            op.await;
        }
    }
}

#[cfg(test)]
impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooks")
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;

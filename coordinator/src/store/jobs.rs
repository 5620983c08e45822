//! Jobs: one multi-platform image request, with one build row per platform.

use std::collections::BTreeMap;

use archfarm_protocol::api::{EmulationPolicy, JobState};
use archfarm_protocol::image_meta::ImageMeta;
use archfarm_protocol::provenance::AttestTo;
use archfarm_protocol::smoke_test::SmokeTest;
use archfarm_protocol::{BuildSecret, CacheRef, Digest, Network, Platform};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::{
    job_credentials, json_col, json_list, now_ms, parse_col, parse_opt_col, secrets, to_json_list,
    Store, StoreError, StoreResult,
};
use crate::job_credentials::SealedCredential;

/// A validated job ready to be stored.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Context archive digest.
    pub context: Digest,
    /// Dockerfile path in the context.
    pub dockerfile: String,
    /// Build arguments.
    pub build_args: BTreeMap<String, String>,
    /// Target stage.
    pub target: Option<String>,
    /// Emulation policy.
    pub emulation: EmulationPolicy,
    /// Normalised tags, all in `registry/repository`.
    pub tags: Vec<String>,
    /// Normalised platforms, required first, then optional ones.
    pub platforms: Vec<Platform>,
    /// The optional ones among `platforms`.
    pub optional_platforms: Vec<Platform>,
    /// Seconds before the job fails as timed out.
    pub timeout_secs: i64,
    /// Registry host[:port] of the tags.
    pub registry: String,
    /// Repository of the tags.
    pub repository: String,
    /// Who submitted it, as declared.
    pub submitter: Option<String>,
    /// Names of the build arguments whose values are secret.
    pub secret_build_args: Vec<String>,
    /// Build secrets, stored until the job ends (see `secrets.rs`).
    pub secrets: Vec<BuildSecret>,
    /// The network its steps ask for; `None` leaves it to the agent.
    pub network: Option<Network>,
    /// The base images its Dockerfile names, resolved (see `base_images.rs`).
    pub base_images: Vec<String>,
    /// Its registry caches and cache switches.
    pub cache: JobCache,
    /// Its labels and annotations.
    pub image_meta: ImageMeta,
    /// `--allow-foreign-binary` globs: paths the agents' binary check leaves out (checked).
    pub allow_foreign_binary: Vec<String>,
    /// Where its provenance goes.
    pub attest_to: AttestTo,
    /// The command each platform's image runs before it is pushed (checked).
    pub smoke_test: Option<SmokeTest>,
}

/// A job's registry caches (`--cache-to`/`--cache-from`, or the coordinator's default) and
/// cache switches, stored as one JSON column.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCache {
    /// Caches each build writes to.
    #[serde(default)]
    pub to: Vec<CacheRef>,
    /// Caches each build may reuse steps from.
    #[serde(default)]
    pub from: Vec<CacheRef>,
    /// `--no-cache`: run every step again.
    #[serde(default)]
    pub no_cache: bool,
    /// `--pull`: pull base images again.
    #[serde(default)]
    pub pull: bool,
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Job id.
    pub id: Uuid,
    /// State.
    pub state: JobState,
    /// Context digest.
    pub context: Digest,
    /// Dockerfile path.
    pub dockerfile: String,
    /// Build arguments.
    pub build_args: BTreeMap<String, String>,
    /// Target stage.
    pub target: Option<String>,
    /// Emulation policy.
    pub emulation: EmulationPolicy,
    /// Tags.
    pub tags: Vec<String>,
    /// Platforms, required first.
    pub platforms: Vec<Platform>,
    /// The optional ones among `platforms`.
    pub optional_platforms: Vec<Platform>,
    /// Seconds before the job fails as timed out.
    pub timeout_secs: i64,
    /// Warnings for the user.
    pub warnings: Vec<String>,
    /// Registry host[:port].
    pub registry: String,
    /// Repository.
    pub repository: String,
    /// Who submitted it, as declared.
    pub submitter: Option<String>,
    /// Pushed index digest.
    pub index_digest: Option<String>,
    /// Pushed index media type.
    pub index_media_type: Option<String>,
    /// Pushed index size in bytes.
    pub index_size: Option<i64>,
    /// Failure reason.
    pub error: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// Unix ms.
    pub finished_at: Option<i64>,
    /// Names of the build arguments whose values are secret.
    pub secret_build_args: Vec<String>,
    /// Ids of the job's build secrets (the values are in `job_secrets` while the job is live).
    pub secret_ids: Vec<String>,
    /// The network its steps ask for; `None` leaves it to the agent.
    pub network: Option<Network>,
    /// The base images its Dockerfile names, resolved; empty when none or unreadable.
    pub base_images: Vec<String>,
    /// Its registry caches and cache switches.
    pub cache: JobCache,
    /// Its labels and annotations.
    pub image_meta: ImageMeta,
    /// `--allow-foreign-binary` globs: paths the agents' binary check leaves out (checked).
    pub allow_foreign_binary: Vec<String>,
    /// Where its provenance goes (`none` for jobs from before provenance).
    pub attest_to: AttestTo,
    /// The in-toto statements pushed with its index, once it succeeded with provenance.
    pub provenance: Vec<serde_json::Value>,
    /// The command each platform's image runs before it is pushed.
    pub smoke_test: Option<SmokeTest>,
}

const COLUMNS: &str =
    "id, state, context, dockerfile, build_args, target, emulation, tags, platforms, registry, \
        repository, index_digest, index_media_type, error, created_at, updated_at, finished_at, \
    optional_platforms, timeout_secs, warnings, submitter, secret_build_args, secret_ids, network, \
    base_images, cache, image_meta, index_size, allow_foreign_binary, attest_to, provenance, \
    smoke_test";

impl JobRow {
    fn from_row(row: &AnyRow) -> StoreResult<Self> {
        let state: String = row.try_get("state")?;
        let emulation: String = row.try_get("emulation")?;
        Ok(JobRow {
            id: parse_col(row, "id")?,
            state: JobState::from_name(&state).ok_or(StoreError::Corrupt {
                column: "jobs.state",
                value: state,
            })?,
            context: parse_col(row, "context")?,
            dockerfile: row.try_get("dockerfile")?,
            build_args: json_col(row, "build_args")?,
            target: row.try_get("target")?,
            emulation: emulation.parse().map_err(|_| StoreError::Corrupt {
                column: "jobs.emulation",
                value: emulation.clone(),
            })?,
            tags: json_col(row, "tags")?,
            platforms: json_col(row, "platforms")?,
            registry: row.try_get("registry")?,
            repository: row.try_get("repository")?,
            index_digest: row.try_get("index_digest")?,
            index_media_type: row.try_get("index_media_type")?,
            index_size: row.try_get("index_size")?,
            error: row.try_get("error")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            finished_at: row.try_get("finished_at")?,
            optional_platforms: json_col(row, "optional_platforms")?,
            timeout_secs: row.try_get("timeout_secs")?,
            warnings: json_col(row, "warnings")?,
            submitter: row.try_get("submitter")?,
            secret_build_args: json_list(row, "secret_build_args")?,
            secret_ids: json_list(row, "secret_ids")?,
            network: parse_opt_col(row, "network")?,
            base_images: json_list(row, "base_images")?,
            cache: match row.try_get::<Option<String>, _>("cache")? {
                None => JobCache::default(),
                Some(text) => serde_json::from_str(&text).map_err(|_| StoreError::Corrupt {
                    column: "jobs.cache",
                    value: text,
                })?,
            },
            image_meta: match row.try_get::<Option<String>, _>("image_meta")? {
                None => ImageMeta::default(),
                Some(text) => serde_json::from_str(&text).map_err(|_| StoreError::Corrupt {
                    column: "jobs.image_meta",
                    value: text,
                })?,
            },
            allow_foreign_binary: json_list(row, "allow_foreign_binary")?,
            attest_to: match row.try_get::<Option<String>, _>("attest_to")? {
                None => AttestTo::None,
                Some(text) => text.parse().map_err(|_| StoreError::Corrupt {
                    column: "jobs.attest_to",
                    value: text,
                })?,
            },
            provenance: json_list(row, "provenance")?,
            smoke_test: match row.try_get::<Option<String>, _>("smoke_test")? {
                None => None,
                Some(text) => {
                    Some(
                        serde_json::from_str(&text).map_err(|_| StoreError::Corrupt {
                            column: "jobs.smoke_test",
                            value: text,
                        })?,
                    )
                }
            },
        })
    }
}

impl Store {
    /// Stores a job, its builds and its secrets in one transaction; returns the job id.
    pub async fn insert_job(&self, job: &NewJob) -> StoreResult<Uuid> {
        self.insert_job_sealed(job, |_| Vec::new()).await
    }

    /// [`Store::insert_job`] with the job's own registry credentials, which `seal` seals for
    /// the new job's id (sealing binds the id in) and which go in the same transaction.
    pub async fn insert_job_sealed(
        &self,
        job: &NewJob,
        seal: impl FnOnce(Uuid) -> Vec<SealedCredential>,
    ) -> StoreResult<Uuid> {
        let id = Uuid::new_v4();
        let sealed = seal(id);
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query(&format!(
                        "INSERT INTO jobs ({COLUMNS}) VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL, NULL, \
             $11, $12, NULL, $13, $14, '[]', $15, $16, $17, $18, $19, $20, $21, NULL, $22, $23, NULL, $24)"
        ))
        .bind(id.to_string())
        .bind(job.context.as_str())
        .bind(&job.dockerfile)
        .bind(serde_json::to_string(&job.build_args).expect("map serialises"))
        .bind(job.target.as_deref())
        .bind(job.emulation.to_string())
        .bind(serde_json::to_string(&job.tags).expect("tags serialise"))
        .bind(serde_json::to_string(&job.platforms).expect("platforms serialise"))
        .bind(&job.registry)
        .bind(&job.repository)
                .bind(now)
        .bind(now)
        .bind(serde_json::to_string(&job.optional_platforms).expect("platforms serialise"))
        .bind(job.timeout_secs)
        .bind(job.submitter.as_deref())
        .bind(to_json_list(&job.secret_build_args))
        .bind(to_json_list(
            &job.secrets.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        ))
        .bind(job.network.map(Network::as_str))
        .bind(to_json_list(&job.base_images))
        .bind((job.cache != JobCache::default())
            .then(|| serde_json::to_string(&job.cache).expect("cache serialises")))
        .bind((!job.image_meta.is_empty())
            .then(|| serde_json::to_string(&job.image_meta).expect("image meta serialises")))
        .bind(to_json_list(&job.allow_foreign_binary))
        .bind(job.attest_to.as_str())
        .bind(job
            .smoke_test
            .as_ref()
            .map(|t| serde_json::to_string(t).expect("a smoke test serialises")))
        .execute(&mut *tx)
        .await?;
        // The row lock this takes orders the insert against a retention sweep deleting the
        // context: the sweep then sees it used now and leaves it.
        sqlx::query("UPDATE contexts SET last_used_at = $1 WHERE digest = $2")
            .bind(now)
            .bind(job.context.as_str())
            .execute(&mut *tx)
            .await?;
        secrets::insert(&mut tx, id, &job.secrets).await?;
        job_credentials::insert(&mut tx, id, &sealed).await?;
        for (position, platform) in job.platforms.iter().enumerate() {
            sqlx::query(
                "INSERT INTO builds (id, job_id, position, platform, state, attempts, created_at, optional, queued_at) \
                 VALUES ($1, $2, $3, $4, 'queued', 0, $5, $6, $7)",
            )
            .bind(Uuid::new_v4().to_string())
            .bind(id.to_string())
            .bind(position as i64)
            .bind(platform.to_string())
            .bind(now)
            .bind(i64::from(job.optional_platforms.contains(platform)))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// One job.
    pub async fn get_job(&self, id: Uuid) -> StoreResult<Option<JobRow>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(JobRow::from_row).transpose()
    }

    /// The newest jobs first.
    pub async fn list_jobs(&self, limit: i64) -> StoreResult<Vec<JobRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM jobs ORDER BY created_at DESC, id LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(JobRow::from_row).collect()
    }

    /// Jobs that have not ended, oldest first: what live views watch.
    pub async fn active_jobs(&self) -> StoreResult<Vec<JobRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE state IN ($1, $2, $3) ORDER BY created_at"
        ))
        .bind(JobState::Queued.as_str())
        .bind(JobState::Building.as_str())
        .bind(JobState::Stitching.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(JobRow::from_row).collect()
    }

    /// Jobs in a given state (used at start to resume stitching).
    pub async fn jobs_in_state(&self, state: JobState) -> StoreResult<Vec<JobRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE state = $1 ORDER BY created_at"
        ))
        .bind(state.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(JobRow::from_row).collect()
    }
}

impl Store {
    /// Unfinished jobs (not yet stitching) whose time limit has passed at `now`.
    pub async fn timed_out_jobs(&self, now: i64) -> StoreResult<Vec<JobRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE state IN ('queued', 'building') AND created_at + timeout_secs * 1000 < $1"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(JobRow::from_row).collect()
    }
}

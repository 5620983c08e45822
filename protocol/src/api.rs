//! JSON bodies of the coordinator's HTTP API (`/api/v1`).
//!
//! CI clients: `PUT/HEAD/GET /contexts/{digest}`, `POST /jobs`, `GET /jobs`, `GET /jobs/{id}`,
//! `GET /jobs/{id}/provenance`,
//! `POST /jobs/{id}/cancel` (200 with the job, also when it had already ended or was stitching:
//! no further tag moves; earlier coordinators answered 409 `job_stitching` then),
//! `GET /agents`, `GET /builds/{id}/log?offset=N`.
//! Agents: `POST /agents/register`, `POST /agents/{id}/lease` (409 `draining` once the agent is
//! draining: finish running builds, then `POST /agents/{id}/deregister`),
//! `POST /builds/{id}/{heartbeat,log,complete,fail}`.
//! Either side: `POST /agents/{id}/drain` (a CI client's token or the agent's own).
//! Every error is an [`ErrorResponse`] with a 4xx or 5xx status.

use std::collections::BTreeMap;
use std::fmt;

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::duration::{format_duration, parse_duration};
use crate::{Digest, Platform};

/// Path prefix of every API route.
pub const API_PREFIX: &str = "/api/v1";

/// Most builds one agent may run at once.
pub const MAX_AGENT_CAPACITY: i64 = 256;

/// Largest body `POST /builds/{id}/log` accepts; agents keep their batches well under it.
pub const MAX_LOG_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Every non-2xx answer carries this body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorResponse {
    /// A stable machine-readable code, e.g. `invalid_platform`, `unauthorized`, `not_found`.
    pub code: String,
    /// A sentence for people: what was wrong and what is accepted.
    pub message: String,
}

/// The [`ErrorResponse::code`] with which the coordinator says it does not know the calling agent
/// (its token matches no agent, or the agent was revoked or forgotten): the one answer on which an
/// agent registers again. Anything else, such as a bare 404 from an ingress with no ready
/// coordinator behind it, is an outage to wait out: registering again would requeue the agent's
/// running builds.
pub const UNKNOWN_AGENT: &str = "unknown_agent";

/// When a platform may be built under QEMU emulation. Written as `fallback`, `never` or
/// `prefer-native=DURATION` (e.g. `prefer-native=10m`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EmulationPolicy {
    /// Emulate when no online agent has the platform natively, or when its native agents are busy
    /// and the recorded build times say emulation would finish first (the default).
    #[default]
    Fallback,
    /// Never emulate; the build waits for a native agent.
    Never,
    /// Wait at most this long for a native agent, then emulate (ignoring the estimates).
    PreferNative(Duration),
}

impl fmt::Display for EmulationPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmulationPolicy::Fallback => f.write_str("fallback"),
            EmulationPolicy::Never => f.write_str("never"),
            EmulationPolicy::PreferNative(d) => write!(f, "prefer-native={}", format_duration(*d)),
        }
    }
}

impl FromStr for EmulationPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "fallback" => Ok(EmulationPolicy::Fallback),
            "never" => Ok(EmulationPolicy::Never),
            other => match other.strip_prefix("prefer-native=") {
                Some(d) => parse_duration(d).map(EmulationPolicy::PreferNative),
                None => Err(format!(
                    "unknown emulation policy '{other}': accepted are fallback, never, prefer-native=DURATION (e.g. prefer-native=10m)"
                )),
            },
        }
    }
}

impl Serialize for EmulationPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EmulationPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How long a job may take before it fails as timed out, unless it says otherwise.
pub const DEFAULT_JOB_TIMEOUT_SECS: u64 = 2 * 60 * 60;

fn default_dockerfile() -> String {
    "Dockerfile".to_string()
}

/// `POST /api/v1/jobs`: one image for several platforms.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Digest of a context archive uploaded before (`PUT /api/v1/contexts/{digest}`).
    pub context: Digest,
    /// Platforms to build; each is normalised, duplicates are refused.
    pub platforms: Vec<String>,
    /// References the finished index is pushed under; all in one repository.
    pub tags: Vec<String>,
    /// Dockerfile path inside the context (default `Dockerfile`).
    #[serde(default = "default_dockerfile")]
    pub dockerfile: String,
    /// `--build-arg` values.
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// Target stage of a multi-stage Dockerfile.
    #[serde(default)]
    pub target: Option<String>,
    /// Emulation policy (default `fallback`).
    #[serde(default)]
    pub emulation: EmulationPolicy,
    /// Platforms built when possible: one that fails, or that no agent can take, is left out of the
    /// index with a warning instead of failing the job.
    #[serde(default)]
    pub optional_platforms: Vec<String>,
    /// Seconds after which the job fails as timed out (default [`DEFAULT_JOB_TIMEOUT_SECS`]).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Who asks, as the client declares it (e.g. the CI user, or `user@host`); shown, not trusted.
    #[serde(default)]
    pub submitter: Option<String>,
    /// Names of `build_args` whose values are secret: shown as `[redacted]` in the job and
    /// replaced by `[redacted]` in build logs. Each must be a key of `build_args`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_build_args: Vec<String>,
    /// Build secrets (`--secret`) for `RUN --mount=type=secret,id=ID` steps. Their values go to
    /// the agents building this job and nowhere else: the job shows their ids only, and the
    /// coordinator deletes them when the job ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::BuildSecret>,
    /// The network of the `RUN` steps: `default` (the building agent's own; also when absent),
    /// `host`, `none` or `private`. Only agents that allow it take the job's builds. Kept as
    /// text so a wrong value is refused with a message naming the accepted ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `--cache-to` values in buildx syntax (`type=registry,ref=R[,mode=max]`): registry caches
    /// each platform's build writes to, each platform in its own repository below `R` (see
    /// [`crate::cache`]). When the job names no cache at all, the coordinator's default applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_to: Vec<String>,
    /// `--cache-from` values in buildx syntax: registry caches a build may reuse steps from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_from: Vec<String>,
    /// `--no-cache`: run every step; reuse nothing from the agent's layers or `cache_from`
    /// (`cache_to` is still written).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
    /// `--pull`: pull every base image again even when the agent has it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pull: bool,
    /// `--label KEY=VALUE` values, for each platform's image config.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// `--annotation [index:|manifest:]KEY=VALUE` values (see [`crate::image_meta`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<String>,
    /// The pipeline's own registry credentials, by registry (`HOST[:PORT]`), for registries the
    /// job pushes to (its tags' and its caches'): the coordinator uses each for this job only,
    /// in place of its own for that registry, and deletes it when the job ends.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registry_credentials: BTreeMap<String, crate::RegistryCredential>,
    /// `--allow-foreign-binary GLOB` values: paths whose ELF files are not checked against the
    /// platform (see [`crate::foreign_binary`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_foreign_binary: Vec<String>,
    /// Where the job's provenance attestations go (`--provenance`, `--attest`, `--attest-to`);
    /// absent: in the index, as buildx stores them by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attest_to: Option<crate::provenance::AttestTo>,
    /// `--smoke-test`: a command run in each platform's built image on the agent that built it,
    /// before the push; a non-zero exit fails the platform (see [`crate::smoke_test`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoke_test: Option<crate::smoke_test::SmokeTest>,
}

/// Most registries one job may send a credential for.
pub const MAX_JOB_REGISTRY_CREDENTIALS: usize = 16;

/// Longest secret of one credential a job may send (a cloud's token is a few KiB).
pub const MAX_REGISTRY_SECRET_BYTES: usize = 16 * 1024;

/// Longest `submitter` the coordinator keeps.
pub const MAX_SUBMITTER_CHARS: usize = 128;

/// The life of a job.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// No build has started yet.
    Queued,
    /// At least one platform's build has been leased.
    Building,
    /// Every platform succeeded; the index is being verified and pushed.
    Stitching,
    /// The index was pushed under every tag.
    Succeeded,
    /// A build or the stitching failed; see `error`.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// True once the job can change no more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// The lowercase name used in JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Building => "building",
            JobState::Stitching => "stitching",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Inverse of [`JobState::as_str`].
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobState::Queued,
            "building" => JobState::Building,
            "stitching" => JobState::Stitching,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The life of one platform's build.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    /// Waiting for an agent.
    Queued,
    /// Leased by an agent, which is building and pushing.
    Building,
    /// Pushed; `digest` is set.
    Succeeded,
    /// Failed; see `error`.
    Failed,
    /// The job was cancelled or failed before this build finished.
    Cancelled,
}

impl BuildState {
    /// True once the build can change no more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BuildState::Succeeded | BuildState::Failed | BuildState::Cancelled
        )
    }

    /// The lowercase name used in JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Building => "building",
            BuildState::Succeeded => "succeeded",
            BuildState::Failed => "failed",
            BuildState::Cancelled => "cancelled",
        }
    }

    /// Inverse of [`BuildState::as_str`].
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => BuildState::Queued,
            "building" => BuildState::Building,
            "succeeded" => BuildState::Succeeded,
            "failed" => BuildState::Failed,
            "cancelled" => BuildState::Cancelled,
            _ => return None,
        })
    }
}

impl fmt::Display for BuildState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a build ran on hardware of its platform or under QEMU.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum BuildMode {
    /// The agent declares the platform as native.
    Native,
    /// The agent builds it through a QEMU binfmt_misc handler.
    Emulated,
}

impl BuildMode {
    /// The lowercase name used in JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildMode::Native => "native",
            BuildMode::Emulated => "emulated",
        }
    }

    /// Inverse of [`BuildMode::as_str`].
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "native" => Some(BuildMode::Native),
            "emulated" => Some(BuildMode::Emulated),
            _ => None,
        }
    }
}

impl fmt::Display for BuildMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Job id.
    pub id: Uuid,
    /// Current state.
    pub state: JobState,
    /// References the index is pushed under.
    pub tags: Vec<String>,
    /// The repositories the tags name (`REGISTRY/REPOSITORY`), each once, in the tags' order:
    /// agents push every platform's image to the first, stitching makes them available in the
    /// others and pushes the same index to all.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Normalised platforms, in the order requested.
    pub platforms: Vec<Platform>,
    /// Digest of the pushed index, once succeeded.
    pub index_digest: Option<String>,
    /// Media type of the pushed index, once succeeded.
    pub index_media_type: Option<String>,
    /// Size in bytes of the pushed index, once succeeded (absent for jobs from before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_size: Option<i64>,
    /// Why the job failed or was cancelled.
    pub error: Option<String>,
    /// Context archive digest.
    pub context: Digest,
    /// Dockerfile path inside the context.
    pub dockerfile: String,
    /// Build arguments.
    pub build_args: BTreeMap<String, String>,
    /// Target stage.
    pub target: Option<String>,
    /// Emulation policy.
    pub emulation: EmulationPolicy,
    /// Platforms that may be left out (also listed in `platforms`).
    pub optional_platforms: Vec<Platform>,
    /// Seconds after which the job fails as timed out.
    pub timeout_secs: u64,
    /// Things the user should know about a job that succeeded, e.g. an optional platform left out.
    pub warnings: Vec<String>,
    /// Who submitted it, as its client declared.
    #[serde(default)]
    pub submitter: Option<String>,
    /// When the job was submitted.
    pub created_at: DateTime<Utc>,
    /// When the job last changed.
    pub updated_at: DateTime<Utc>,
    /// When the job reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
    /// One build per platform.
    pub builds: Vec<Build>,
    /// Names of the build arguments whose values are secret (shown as `[redacted]` in
    /// `build_args`).
    #[serde(default)]
    pub secret_build_args: Vec<String>,
    /// Ids of the job's build secrets (`--secret`); their values are never shown.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// The network its `RUN` steps ask for; absent means the building agent's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::Network>,
    /// The base images its Dockerfile names (`FROM`, `COPY --from`, `RUN --mount=from=`), read
    /// at submission with build arguments expanded and short names resolved as Docker does
    /// (`golang:1.22` is `docker.io/library/golang:1.22`); stage names and `scratch` left out.
    #[serde(default)]
    pub base_images: Vec<String>,
    /// The registries its builds may get pull credentials for: those of `base_images` and the
    /// farm's mirrors they resolve through.
    #[serde(default)]
    pub pull_registries: Vec<String>,
    /// Registry caches the builds write to (the job's `--cache-to`, or the coordinator's
    /// default when the job named no cache).
    #[serde(default)]
    pub cache_to: Vec<crate::CacheRef>,
    /// Registry caches the builds may reuse steps from.
    #[serde(default)]
    pub cache_from: Vec<crate::CacheRef>,
    /// Whether every step runs again (`--no-cache`).
    #[serde(default)]
    pub no_cache: bool,
    /// Whether base images are pulled again (`--pull`).
    #[serde(default)]
    pub pull: bool,
    /// Its labels and annotations.
    #[serde(
        default,
        skip_serializing_if = "crate::image_meta::ImageMeta::is_empty"
    )]
    pub image_meta: crate::image_meta::ImageMeta,
    /// Where its provenance goes (`none` for jobs from before provenance was made).
    #[serde(default)]
    pub attest_to: crate::provenance::AttestTo,
    /// The command each platform's image runs before it is pushed (`--smoke-test`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoke_test: Option<crate::smoke_test::SmokeTest>,
}

/// `GET /api/v1/jobs/{id}/provenance`: the in-toto statements pushed with a job's index, one
/// per platform, as the coordinator stored them when it stitched (empty while it has not, or
/// when the job asked for none).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobProvenance {
    /// Where they were pushed.
    pub attest_to: crate::provenance::AttestTo,
    /// The statements, each as pushed.
    pub statements: Vec<serde_json::Value>,
}

/// One platform's build inside a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Build {
    /// Build id.
    pub id: Uuid,
    /// The platform built.
    pub platform: Platform,
    /// Current state.
    pub state: BuildState,
    /// Name of the agent that holds or held it.
    pub agent: Option<String>,
    /// Native or emulated, once leased.
    pub mode: Option<BuildMode>,
    /// Digest of the pushed per-platform manifest.
    pub digest: Option<String>,
    /// Media type of that manifest.
    pub media_type: Option<String>,
    /// Size in bytes of that manifest.
    pub size: Option<i64>,
    /// How many times it has been leased.
    pub attempts: i64,
    /// Why it failed.
    pub error: Option<String>,
    /// While queued: why no agent has taken it yet.
    pub waiting: Option<String>,
    /// Whether the platform is optional.
    pub optional: bool,
    /// Why the current or last lease went to a native or an emulating agent.
    pub decision: Option<String>,
    /// When the build was created.
    pub created_at: DateTime<Utc>,
    /// When the current attempt was leased.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
}

/// `GET /api/v1/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<Job>,
}

/// Whether an agent is calling in.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Seen recently.
    Online,
    /// Not seen for longer than the offline threshold, or its lease lapsed.
    Offline,
    /// Finishing its running builds and taking no new ones.
    Draining,
    /// Cut off by an admin: its token is void and it may not register again under this name.
    Revoked,
}

impl AgentState {
    /// The state as the API, the dashboard, metrics labels and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Online => "online",
            AgentState::Offline => "offline",
            AgentState::Draining => "draining",
            AgentState::Revoked => "revoked",
        }
    }
}

/// An agent as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agent {
    /// Agent id.
    pub id: Uuid,
    /// Agent name (unique; re-registering under a name replaces the old agent).
    pub name: String,
    /// Platforms it builds on its own hardware.
    pub native_platforms: Vec<Platform>,
    /// Platforms it builds under QEMU.
    pub emulated_platforms: Vec<Platform>,
    /// How many builds it runs at once.
    pub capacity: i64,
    /// How many builds it runs now.
    pub running: i64,
    /// Online or offline.
    pub state: AgentState,
    /// When it last called in.
    pub last_seen: DateTime<Utc>,
    /// The network its builds get when their job names none; absent for agents too old to say.
    #[serde(default)]
    pub default_network: Option<crate::Network>,
    /// The networks a job may ask it for; empty for agents too old to say (they take only jobs
    /// that leave the network to them).
    #[serde(default)]
    pub allowed_networks: Vec<crate::Network>,
    /// Its image stores' driver (`overlay` or `vfs`); absent for agents too old to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_driver: Option<String>,
    /// What its image stores and caches hold and may hold, as it last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageUse>,
    /// Why it takes no builds on its own account (e.g. `disk full: ...`); it shows as draining
    /// and comes back by itself when the reason goes away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_reason: Option<String>,
}

/// An agent's build storage: bytes used and its `--max-storage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageUse {
    /// Bytes its image stores and cache mounts occupy.
    pub used_bytes: u64,
    /// The most they may occupy before least recently used ones are dropped.
    pub limit_bytes: u64,
}

/// `GET /api/v1/agents`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentList {
    /// Agents by name.
    pub agents: Vec<Agent>,
}

/// `POST /api/v1/agents/register`, sent with `Authorization: Bearer JOIN_TOKEN`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Agent name, unique in the farm.
    pub name: String,
    /// Platforms built natively.
    pub native_platforms: Vec<String>,
    /// Platforms built under emulation.
    #[serde(default)]
    pub emulated_platforms: Vec<String>,
    /// Builds at once, from 1 to [`MAX_AGENT_CAPACITY`].
    pub capacity: i64,
    /// The agent's version, for the dashboard.
    #[serde(default)]
    pub version: Option<String>,
    /// Stable id of the agent's installation (kept in its work directory). While an agent is online,
    /// another installation registering under its name is refused (409 `name_taken`) instead of
    /// silently taking over its builds.
    #[serde(default)]
    pub instance_id: Option<Uuid>,
    /// The network the agent gives builds whose job names none (`--network`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_network: Option<crate::Network>,
    /// The networks a job may ask this agent for (`--allow-network`). Absent or empty (agents
    /// from before per-job networks): only jobs that leave the network to the agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_networks: Vec<crate::Network>,
    /// The storage driver of the agent's image stores (`overlay` or `vfs`), for `archfarm agents`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_driver: Option<String>,
    /// The machine the agent runs on (`uname -m`, CPU model), named in provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<crate::provenance::AgentHost>,
}

/// Answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Id to use in `/agents/{id}/lease`.
    pub agent_id: Uuid,
    /// Bearer token for every later agent call; the coordinator keeps only its hash.
    pub token: String,
    /// How often to heartbeat a running build, in seconds.
    pub heartbeat_interval_secs: u64,
}

/// `POST /api/v1/agents/{id}/lease` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// Longest time to hold the request open waiting for work, in seconds (capped by the coordinator).
    #[serde(default)]
    pub wait_secs: Option<u64>,
    /// The agent's build storage now, for `archfarm agents` (absent: unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageUse>,
    /// Set when the agent takes no build now and why (its disk is full): the coordinator answers
    /// at once with no build, shows the agent draining with this reason, and gives it work again
    /// on a lease call without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// A build handed to an agent (200 answer to a lease call; 204 means no work yet).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    /// Build id.
    pub build_id: Uuid,
    /// Job id.
    pub job_id: Uuid,
    /// Fencing token: every report about this build must carry it.
    pub lease_token: Uuid,
    /// Platform to build.
    pub platform: Platform,
    /// Native or emulated.
    pub mode: BuildMode,
    /// Context archive (gzip'd tar) to fetch from `GET /api/v1/contexts/{digest}`.
    pub context: Digest,
    /// Dockerfile path inside the context.
    pub dockerfile: String,
    /// Build arguments.
    pub build_args: BTreeMap<String, String>,
    /// Target stage.
    pub target: Option<String>,
    /// Registry host[:port] to push to.
    pub registry: String,
    /// Repository inside the registry.
    pub repository: String,
    /// Whether the registry speaks plain HTTP.
    pub insecure_registry: bool,
    /// How often to heartbeat, in seconds.
    pub heartbeat_interval_secs: u64,
    /// The credential for `registry` from the coordinator's `--registry-auth`, for this build's
    /// push and the base images its Dockerfile pulls from that registry. Never stored by either
    /// side; absent when the coordinator has none (the agent then uses its own, or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<crate::RegistryCredential>,
    /// Names of `build_args` whose values the agent replaces with `[redacted]` in log lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_build_args: Vec<String>,
    /// The job's build secrets, for this build's `buildah build --secret` only: the agent
    /// writes each to a private file for the length of the build, and redacts the values from
    /// log lines. Its `Debug` hides the values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::BuildSecret>,
    /// The network the job asks for; absent means the agent's own default. An agent refuses a
    /// network it does not allow (the coordinator should never send one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::Network>,
    /// How to pull the Dockerfile's base images: the farm's mirrors, the plain-HTTP registries
    /// among those the build may reach, and pull credentials for the registries its `FROM`
    /// lines name. Absent when there is nothing to say (and from coordinators before it).
    #[serde(default, skip_serializing_if = "crate::pull::PullSettings::is_empty")]
    pub pull: crate::pull::PullSettings,
    /// This platform's registry caches and the job's cache switches; default: none.
    #[serde(default, skip_serializing_if = "crate::cache::LeaseCache::is_empty")]
    pub cache: crate::cache::LeaseCache,
    /// The job's labels and manifest annotations, for `buildah build --label/--annotation`.
    #[serde(
        default,
        skip_serializing_if = "crate::image_meta::ImageMeta::is_empty"
    )]
    pub image_meta: crate::image_meta::ImageMeta,
    /// The job's `--allow-foreign-binary` globs: paths the agent does not check against the
    /// platform (see [`crate::foreign_binary`]). Every other ELF file must be for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_foreign_binary: Vec<String>,
    /// The job's smoke test: the agent runs it in the built image, in the sandbox of the build's
    /// `RUN` steps, before the push, and fails the build unless it exits 0. An agent that
    /// completes such a build says it ran it ([`CompleteRequest::smoke_test_passed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoke_test: Option<crate::smoke_test::SmokeTest>,
}

/// `POST /api/v1/builds/{id}/heartbeat`. A 409 answer means the lease is gone: stop the build.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The lease's token.
    pub lease_token: Uuid,
}

/// Answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// True when the build's job was cancelled: stop building.
    pub cancel: bool,
}

/// `POST /api/v1/builds/{id}/registry-credential`: a fresh registry credential for the push.
/// A token scoped to the build's repository lives as long as its registry says (Docker Hub's
/// five minutes), so the agent asks again right before it pushes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentialRequest {
    /// The lease's token.
    pub lease_token: Uuid,
}

/// Answer to [`RegistryCredentialRequest`]: what a lease handed out now would carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryCredentialResponse {
    /// The credential for the build's registry, as in [`Lease::registry_auth`].
    #[serde(default)]
    pub registry_auth: Option<crate::RegistryCredential>,
}

/// `POST /api/v1/builds/{id}/log`: lines of build output, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRequest {
    /// The lease's token.
    pub lease_token: Uuid,
    /// Lines without their newline.
    pub lines: Vec<String>,
    /// The batch's number under this lease: 0, 1, 2, ... in the order the lines were printed; a
    /// retry sends the same number again. The coordinator stores a batch only when it is past the
    /// last one it stored for the lease, so a batch is never appended twice nor after a later one.
    /// Absent (agents before numbering): stored as it comes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// `POST /api/v1/builds/{id}/complete`: the image is pushed by digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// The lease's token.
    pub lease_token: Uuid,
    /// Digest of the pushed manifest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: i64,
    /// The lease's smoke test ran in the image and exited 0. A build whose job has a smoke test
    /// is failed when its completion does not say so (an agent from before smoke tests).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub smoke_test_passed: bool,
}

/// `POST /api/v1/builds/{id}/fail`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    /// The lease's token.
    pub lease_token: Uuid,
    /// What went wrong, one line.
    pub error: String,
}

/// `POST /api/v1/builds/{id}/release`: the agent gives the build back, through no fault of the
/// build's (its disk filled up during it). The coordinator queues it again for another agent
/// without counting the attempt (up to a few times per build) and writes `reason` to its log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The lease's token.
    pub lease_token: Uuid,
    /// Why, one line, e.g. `disk full: ... no space left on device`.
    pub reason: String,
}

/// `PUT /api/v1/contexts/{digest}` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContextInfo {
    /// The digest stored.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_request_defaults_and_unknown_fields() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r: JobRequest = serde_json::from_str(&format!(
            r#"{{"context":"{d}","platforms":["linux/amd64"],"tags":["localhost:5000/x:1"]}}"#
        ))
        .unwrap();
        assert_eq!(r.dockerfile, "Dockerfile");
        assert_eq!(r.emulation, EmulationPolicy::Fallback);
        let e = serde_json::from_str::<JobRequest>(&format!(
            r#"{{"context":"{d}","platforms":[],"tags":[],"colour":"red"}}"#
        ))
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        let e = serde_json::from_str::<JobRequest>(
            r#"{"context":"sha256:xyz","platforms":[],"tags":[]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("64 lowercase hex"), "{e}");
    }

    #[test]
    fn a_lease_carries_a_credential_only_when_there_is_one() {
        let d = format!("sha256:{}", "a".repeat(64));
        let lease = serde_json::json!({
            "build_id": Uuid::nil(), "job_id": Uuid::nil(), "lease_token": Uuid::nil(),
            "platform": "linux/amd64", "mode": "native", "context": d, "dockerfile": "Dockerfile",
            "build_args": {}, "target": null, "registry": "r.io", "repository": "a",
            "insecure_registry": false, "heartbeat_interval_secs": 5
        });
        let mut l: Lease = serde_json::from_value(lease).unwrap();
        assert!(
            l.registry_auth.is_none()
                && l.secret_build_args.is_empty()
                && l.secrets.is_empty()
                && l.network.is_none()
        );
        let json = serde_json::to_string(&l).unwrap();
        assert!(
            !json.contains("registry_auth")
                && !json.contains("secret_build_args")
                && !json.contains("\"secrets\"")
                && !json.contains("network"),
            "{json}"
        );
        l.network = Some(crate::Network::None);
        let json = serde_json::to_string(&l).unwrap();
        assert!(json.contains(r#""network":"none""#), "{json}");
        l.secrets = vec![crate::BuildSecret {
            id: "tok".into(),
            value: crate::Secret::new("s3cret-value"),
        }];
        assert!(!format!("{l:?}").contains("s3cret-value"));
        l.registry_auth = Some(crate::RegistryCredential::Basic {
            username: "u".into(),
            password: crate::Secret::new("hunter2"),
        });
        let back: Lease = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back.registry_auth, l.registry_auth);
        assert!(!format!("{l:?}").contains("hunter2"));
    }

    #[test]
    fn states_round_trip() {
        for s in [
            "queued",
            "building",
            "stitching",
            "succeeded",
            "failed",
            "cancelled",
        ] {
            assert_eq!(JobState::from_name(s).unwrap().as_str(), s);
        }
        for s in ["queued", "building", "succeeded", "failed", "cancelled"] {
            assert_eq!(BuildState::from_name(s).unwrap().as_str(), s);
        }
        assert_eq!(
            serde_json::to_string(&EmulationPolicy::Never).unwrap(),
            "\"never\""
        );
    }
}

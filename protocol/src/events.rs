//! The Server-Sent Events of `GET /api/v1/jobs/{id}/events` and `GET /api/v1/events`, and the
//! answer to a log report.
//!
//! Each event's SSE `event:` field is one of [`EVENT_JOB`], [`EVENT_LOG`], [`EVENT_AGENTS`] or
//! [`EVENT_END`]; its `data:` field is the JSON of the matching type below. A `job` event carries the
//! whole job as `GET /api/v1/jobs/{id}` shows it, so a client that missed events loses nothing by
//! taking the latest one.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::{Agent, JobState};
use crate::Platform;

/// A job changed; data: [`crate::api::Job`].
pub const EVENT_JOB: &str = "job";
/// New lines of one build's log; data: [`LogChunk`].
pub const EVENT_LOG: &str = "log";
/// The agents changed (`/api/v1/events` only); data: [`AgentsEvent`].
pub const EVENT_AGENTS: &str = "agents";
/// The job ended and its logs were sent in full; the stream closes after it; data: [`JobEnd`].
pub const EVENT_END: &str = "end";

/// The line that ends a build log cut at the coordinator's cap (`--max-log-bytes`).
pub const TRUNCATION_MARKER: &str =
    "[archfarm] log truncated: the build printed more than the coordinator keeps";

/// Lines appended to one build's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The job.
    pub job_id: Uuid,
    /// The build.
    pub build_id: Uuid,
    /// The build's platform.
    pub platform: Platform,
    /// Byte offset in the build's log of the first line here; `GET /builds/{id}/log?offset=`
    /// resumes from `offset` plus the bytes of these lines with their newlines.
    pub offset: u64,
    /// Whole lines, without their newlines.
    pub lines: Vec<String>,
}

/// Every agent, as `GET /api/v1/agents` shows them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentsEvent {
    /// Agents by name.
    pub agents: Vec<Agent>,
}

/// The last event of a job's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEnd {
    /// The job.
    pub job_id: Uuid,
    /// Its terminal state.
    pub state: JobState,
}

/// Answer to `POST /api/v1/builds/{id}/log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogResponse {
    /// True once the build's log reached the coordinator's cap: later lines are dropped, so the
    /// agent stops sending them.
    pub truncated: bool,
}

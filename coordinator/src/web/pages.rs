//! `/` (jobs), `/agents` and `/emulation`.

use std::collections::HashMap;

use archfarm_protocol::api::{Build, BuildState, JobState};
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::format;
use super::job::short;
use super::stats::{self, Comparison};
use super::{render, Layout, PageError};
use crate::api::views::{self, Fleet};
use crate::store::now_ms;
use crate::AppState;

/// Jobs on the front page, newest first.
const JOBS_SHOWN: i64 = 100;
/// Succeeded builds the emulation page learns from, newest first.
const HISTORY_BUILDS: i64 = 1000;

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    layout: Layout,
    jobs: Vec<JobItem>,
    limit: i64,
}

struct JobItem {
    id: String,
    short_id: String,
    state: &'static str,
    tags: Vec<String>,
    builds: Vec<Badge>,
    /// Who submitted it, as its client declared; empty when unknown.
    submitter: String,
    created_iso: String,
    created_utc: String,
    age: String,
}

/// A platform of a job in the list: state, native or emulated, how long it has been building.
struct Badge {
    platform: String,
    state: &'static str,
    mode: &'static str,
    elapsed: String,
}

fn badge(b: &Build, now: i64) -> Badge {
    let ms = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.timestamp_millis());
    Badge {
        platform: b.platform.to_string(),
        state: b.state.as_str(),
        mode: b.mode.map_or("", |m| m.as_str()),
        elapsed: ms(b.started_at)
            .map(|s| format::duration(ms(b.finished_at).unwrap_or(now) - s))
            .unwrap_or_default(),
    }
}

/// `GET /`.
pub(crate) async fn jobs(State(state): State<AppState>) -> Result<Response, PageError> {
    let fleet = Fleet::load(&state).await?;
    let now = now_ms();
    let mut jobs = Vec::new();
    for row in state.store.list_jobs(JOBS_SHOWN).await? {
        let job = views::job(&state, row, &fleet).await?;
        let created = job.created_at.timestamp_millis();
        jobs.push(JobItem {
            id: job.id.to_string(),
            short_id: short(&job.id),
            state: job.state.as_str(),
            tags: job.tags.clone(),
            builds: job.builds.iter().map(|b| badge(b, now)).collect(),
            submitter: job.submitter.clone().unwrap_or_default(),
            created_iso: format::iso(created),
            created_utc: format::utc(created),
            age: format::age(now, created),
        });
    }
    let page = JobsPage {
        layout: Layout::new(&state, "Jobs", "jobs", true),
        jobs,
        limit: JOBS_SHOWN,
    };
    render(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "agents.html")]
struct AgentsPage {
    layout: Layout,
    agents: Vec<AgentItem>,
}

struct AgentItem {
    name: String,
    state: &'static str,
    native: String,
    emulated: String,
    capacity: i64,
    running: i64,
    last_seen_iso: String,
    last_seen_utc: String,
    last_seen_age: String,
    current: Vec<Current>,
    /// Its storage driver and disk use, e.g. `overlay, 1.2 GiB of 50.0 GiB`.
    storage: String,
    /// Why it takes no builds on its own account (a full disk); empty when it takes them.
    reason: String,
}

/// A build an agent is running now.
struct Current {
    build_id: String,
    job_id: String,
    job_short: String,
    platform: String,
    mode: &'static str,
}

fn join(platforms: &[archfarm_protocol::Platform]) -> String {
    platforms
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `GET /agents`.
pub(crate) async fn agents(State(state): State<AppState>) -> Result<Response, PageError> {
    // What each agent runs now: the building builds of the jobs that are building.
    let mut current: HashMap<String, Vec<Current>> = HashMap::new();
    for job in state.store.jobs_in_state(JobState::Building).await? {
        for b in state.store.builds_of_job(job.id).await? {
            let Some(agent) = b.agent_name.filter(|_| b.state == BuildState::Building) else {
                continue;
            };
            current.entry(agent).or_default().push(Current {
                build_id: b.id.to_string(),
                job_id: job.id.to_string(),
                job_short: short(&job.id),
                platform: b.platform.to_string(),
                mode: b.mode.map_or("", |m| m.as_str()),
            });
        }
    }
    let now = now_ms();
    let agents = views::agents(&state)
        .await?
        .into_iter()
        .map(|a| {
            let seen = a.last_seen.timestamp_millis();
            AgentItem {
                current: current.remove(&a.name).unwrap_or_default(),
                state: a.state.as_str(),
                native: join(&a.native_platforms),
                emulated: join(&a.emulated_platforms),
                capacity: a.capacity,
                running: a.running,
                last_seen_iso: format::iso(seen),
                last_seen_utc: format::utc(seen),
                last_seen_age: format::age(now, seen),
                storage: format::storage(a.storage_driver.as_deref(), a.storage),
                reason: a.drain_reason.unwrap_or_default(),
                name: a.name,
            }
        })
        .collect();
    let page = AgentsPage {
        layout: Layout::new(&state, "Agents", "agents", true),
        agents,
    };
    render(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "emulation.html")]
struct EmulationPage {
    layout: Layout,
    rows: Vec<EmulationRow>,
    samples: usize,
    limit: i64,
}

struct EmulationRow {
    platform: String,
    native_median: String,
    native_count: usize,
    emulated_median: String,
    emulated_count: usize,
    ratio: String,
    saved: String,
}

fn emulation_row(c: &Comparison) -> EmulationRow {
    let median = |m: Option<i64>| m.map(format::duration).unwrap_or_default();
    EmulationRow {
        platform: c.platform.clone(),
        native_median: median(c.native.median_ms),
        native_count: c.native.count,
        emulated_median: median(c.emulated.median_ms),
        emulated_count: c.emulated.count,
        ratio: c.ratio().map(format::slowdown).unwrap_or_default(),
        saved: c
            .saved_ms()
            .filter(|s| *s > 0)
            .map(format::duration)
            .unwrap_or_default(),
    }
}

/// `GET /emulation`.
pub(crate) async fn emulation(State(state): State<AppState>) -> Result<Response, PageError> {
    let samples = state.store.recent_build_samples(HISTORY_BUILDS).await?;
    let page = EmulationPage {
        layout: Layout::new(&state, "Native vs emulated", "emulation", false),
        rows: stats::compare(&samples).iter().map(emulation_row).collect(),
        samples: samples.len(),
        limit: HISTORY_BUILDS,
    };
    render(StatusCode::OK, &page)
}

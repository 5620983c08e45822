//! `/jobs/{id}`: one job, its platforms on one time axis, where and why each ran, and their logs.

use archfarm_protocol::api::{Build, BuildState, Job};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use uuid::Uuid;

use super::format::{self, Span};
use super::{render, Layout, PageError};
use crate::api::views::{self, Fleet};
use crate::store::now_ms;
use crate::AppState;

/// The end of a log shown in the page; the live script keeps the same number of lines.
const LOG_TAIL_LINES: usize = 5000;
/// Most bytes of a log read for the page, so a huge log does not make a huge page.
const LOG_TAIL_BYTES: u64 = 1024 * 1024;

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    layout: Layout,
    job: Head,
    timeline: Vec<Row>,
    builds: Vec<Card>,
}

/// The job itself.
struct Head {
    id: String,
    state: &'static str,
    tags: Vec<String>,
    /// The repositories the tags name, when more than one (agents push to the first).
    repositories: Vec<String>,
    /// Who submitted it, as its client declared; empty when unknown.
    submitter: String,
    created_iso: String,
    created_utc: String,
    age: String,
    finished_utc: String,
    total: String,
    emulation: String,
    timeout: String,
    context: String,
    dockerfile: String,
    target: String,
    build_args: Vec<(String, String)>,
    index_digest: String,
    index_media_type: String,
    error: String,
    warnings: Vec<String>,
    failures: Vec<Failure>,
}

/// A failed platform, linked to its log from the top of the page.
struct Failure {
    platform: String,
    anchor: String,
    error: String,
}

/// A `(left, width)` piece of a timeline row, as SVG coordinates out of 100.
struct Seg {
    x: String,
    w: String,
    title: String,
}

/// One platform's row of the timeline.
struct Row {
    platform: String,
    state: &'static str,
    mode: &'static str,
    queued: Seg,
    building: Option<Seg>,
    marker: Option<String>,
}

/// One platform's build with its log.
struct Card {
    /// The build's id, so the live view can ask for the log from where the page ends.
    build_id: String,
    platform: String,
    anchor: String,
    state: &'static str,
    agent: String,
    mode: &'static str,
    decision: String,
    waiting: String,
    digest: String,
    error: String,
    attempts: i64,
    optional: bool,
    elapsed: String,
    log: Vec<String>,
    log_end: u64,
    log_omitted: bool,
}

/// `GET /jobs/{id}`.
pub(crate) async fn page(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, PageError> {
    let shown: String = raw.chars().take(80).collect();
    let not_found = || PageError::NotFound(format!("There is no job with id '{shown}'."));
    let id: Uuid = raw.parse().map_err(|_| not_found())?;
    let stored = state.store.get_job(id).await?.ok_or_else(not_found)?;
    let fleet = Fleet::load(&state).await?;
    let job = views::job(&state, stored, &fleet).await?;
    let now = now_ms();
    let span = Span::of_job(
        job.created_at.timestamp_millis(),
        job.finished_at.map(|t| t.timestamp_millis()),
        job.builds
            .iter()
            .filter_map(|b| b.finished_at.map(|t| t.timestamp_millis())),
        now,
    );
    let timeline = job
        .builds
        .iter()
        .map(|b| timeline_row(&span, b, now))
        .collect();
    let mut builds = Vec::with_capacity(job.builds.len());
    for b in &job.builds {
        builds.push(card(&state, b, now).await?);
    }
    // The CI engineer came for the platform that failed: its log comes first.
    builds.sort_by_key(|c| c.state != BuildState::Failed.as_str());
    let page = JobPage {
        layout: Layout::new(&state, format!("Job {}", short(&job.id)), "job", true),
        job: head(&job, &span, now),
        timeline,
        builds,
    };
    render(StatusCode::OK, &page)
}

/// The first block of a UUID, enough to tell jobs apart on screen.
pub(crate) fn short(id: &Uuid) -> String {
    id.to_string()[..8].to_string()
}

/// `linux/arm/v7` → `log-linux-arm-v7`, an id for links to a platform's log.
fn anchor(platform: &str) -> String {
    format!("log-{}", platform.replace('/', "-"))
}

fn head(job: &Job, span: &Span, now: i64) -> Head {
    let created = job.created_at.timestamp_millis();
    Head {
        id: job.id.to_string(),
        state: job.state.as_str(),
        tags: job.tags.clone(),
        repositories: if job.repositories.len() > 1 {
            job.repositories.clone()
        } else {
            Vec::new()
        },
        submitter: job.submitter.clone().unwrap_or_default(),
        created_iso: format::iso(created),
        created_utc: format::utc(created),
        age: format::age(now, created),
        finished_utc: job
            .finished_at
            .map(|t| format::utc(t.timestamp_millis()))
            .unwrap_or_default(),
        total: format::duration(span.len_ms()),
        emulation: job.emulation.to_string(),
        timeout: format::duration(job.timeout_secs.saturating_mul(1000) as i64),
        context: job.context.to_string(),
        dockerfile: job.dockerfile.clone(),
        target: job.target.clone().unwrap_or_default(),
        build_args: job
            .build_args
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        index_digest: job.index_digest.clone().unwrap_or_default(),
        index_media_type: job.index_media_type.clone().unwrap_or_default(),
        error: job.error.clone().unwrap_or_default(),
        warnings: job.warnings.clone(),
        failures: job
            .builds
            .iter()
            .filter(|b| b.state == BuildState::Failed)
            .map(|b| Failure {
                platform: b.platform.to_string(),
                anchor: anchor(&b.platform.to_string()),
                error: b.error.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

fn ms(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp_millis())
}

fn mode(b: &Build) -> &'static str {
    b.mode.map_or("", |m| m.as_str())
}

/// Lease to finish (or now): how long the current attempt has been building.
fn elapsed(b: &Build, now: i64) -> String {
    ms(b.started_at)
        .map(|s| format::duration(ms(b.finished_at).unwrap_or(now) - s))
        .unwrap_or_default()
}

fn timeline_row(span: &Span, b: &Build, now: i64) -> Row {
    let (created, started, finished) = (
        b.created_at.timestamp_millis(),
        ms(b.started_at),
        ms(b.finished_at),
    );
    let bar = format::bar(span, created, started, finished, now);
    let end = finished.unwrap_or(now);
    let on = match (&b.agent, b.mode) {
        (Some(a), Some(m)) => format!(", {m} on {a}"),
        _ => String::new(),
    };
    Row {
        platform: b.platform.to_string(),
        state: b.state.as_str(),
        mode: mode(b),
        queued: Seg {
            x: format::pct(bar.queued.0),
            w: format::pct(bar.queued.1),
            title: format!(
                "{}: queued {}",
                b.platform,
                format::duration(started.unwrap_or(end) - created)
            ),
        },
        building: bar.building.zip(started).map(|((x, w), s)| Seg {
            x: format::pct(x),
            w: format::pct(w),
            title: format!("{}: building {}{on}", b.platform, format::duration(end - s)),
        }),
        marker: bar.marker.map(format::pct),
    }
}

async fn card(state: &AppState, b: &Build, now: i64) -> Result<Card, PageError> {
    let (log, log_end, log_omitted) = log_tail(state, b.id).await?;
    let platform = b.platform.to_string();
    Ok(Card {
        build_id: b.id.to_string(),
        anchor: anchor(&platform),
        platform,
        state: b.state.as_str(),
        agent: b.agent.clone().unwrap_or_default(),
        mode: mode(b),
        decision: b.decision.clone().unwrap_or_default(),
        waiting: b.waiting.clone().unwrap_or_default(),
        digest: b.digest.clone().unwrap_or_default(),
        error: b.error.clone().unwrap_or_default(),
        attempts: b.attempts,
        optional: b.optional,
        elapsed: elapsed(b, now),
        log,
        log_end,
        log_omitted,
    })
}

/// The last lines of a build's log, the byte offset after them (where the live stream goes on),
/// and whether earlier lines were left out.
async fn log_tail(state: &AppState, build: Uuid) -> std::io::Result<(Vec<String>, u64, bool)> {
    let size = state.logs.size(build).await?;
    let start = size.saturating_sub(LOG_TAIL_BYTES);
    let (mut lines, end, _) = state
        .logs
        .read_lines(build, start, (size - start) as usize)
        .await?;
    let mut omitted = false;
    if start > 0 && !lines.is_empty() {
        // The window starts inside a line.
        lines.remove(0);
        omitted = true;
    }
    if lines.len() > LOG_TAIL_LINES {
        lines.drain(..lines.len() - LOG_TAIL_LINES);
        omitted = true;
    }
    Ok((lines, end, omitted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_and_short_ids() {
        assert_eq!(anchor("linux/arm/v7"), "log-linux-arm-v7");
        let id: Uuid = "0b5c2f3e-0000-4000-8000-000000000000".parse().unwrap();
        assert_eq!(short(&id), "0b5c2f3e");
    }
}

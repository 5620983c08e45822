//! Server-Sent Events: `GET /jobs/{id}/events` (one job's changes and log lines, ending when the job
//! has ended and its logs were sent) and `GET /events` (every job and agent, for dashboards).
//!
//! A feed keeps only what it last sent (the job's JSON, each log's offset) and reads the rest back
//! from the database and the log files when woken (see [`crate::changes`]). A slow client
//! therefore costs at most one log chunk per build of the look in progress, never a queue of
//! events.

use archfarm_protocol::tokens::Scope;
use std::collections::HashMap;
use std::convert::Infallible;

use archfarm_protocol::api::{BuildState, Job};
use archfarm_protocol::events::{
    AgentsEvent, JobEnd, LogChunk, EVENT_AGENTS, EVENT_END, EVENT_JOB, EVENT_LOG,
};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::access::Access;
use super::auth::require;
use super::error::{parse_id, ApiError, ApiQuery};
use super::routes::Routes;
use super::views::{self, Fleet};
use crate::changes::Watcher;
use crate::AppState;

/// Most log bytes of one build read per look; a longer backlog goes out over several looks.
const LOG_CHUNK: usize = 256 * 1024;

/// Routes of this resource.
pub fn routes() -> Routes {
    Routes::new()
        .get("/jobs/{id}/events", Access::Read, job_events)
        .get("/events", Access::Read, farm_events)
}

#[derive(Deserialize)]
struct JobQuery {
    /// `BUILD_ID:OFFSET,…`: where each build's log lines start (default 0, the whole log), for a
    /// client that already shows the log up to there.
    from: Option<String>,
}

/// Parses `?from=BUILD_ID:OFFSET,…`.
fn parse_from(raw: &str) -> Result<HashMap<Uuid, u64>, ApiError> {
    raw.split(',')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            pair.split_once(':')
                .and_then(|(id, off)| Some((id.parse().ok()?, off.parse().ok()?)))
                .ok_or_else(|| {
                    ApiError::bad(
                        "invalid_query",
                        format!("from: '{pair}' is not BUILD_ID:OFFSET (e.g. from=6f1c…:4096)"),
                    )
                })
        })
        .collect()
}

async fn job_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = parse_id("job", &raw)?;
    let offsets = parse_from(q.from.as_deref().unwrap_or(""))?;
    if state.store.get_job(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no job with id '{id}'")));
    }
    let feed = JobFeed {
        watcher: state.changes.watch(),
        state,
        job_id: id,
        last_job: None,
        offsets,
        done: false,
    };
    Ok(sse(feed, Reader::new(headers)))
}

#[derive(Deserialize)]
struct FarmQuery {
    /// Whether to send the log lines of running builds (`log` events); a page that shows only
    /// states leaves them out and saves reading every log.
    #[serde(default)]
    logs: bool,
}

async fn farm_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<FarmQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let feed = FarmFeed {
        watcher: state.changes.watch(),
        state,
        logs: q.logs,
        last_agents: None,
        jobs: HashMap::new(),
        offsets: HashMap::new(),
        started: false,
    };
    Ok(sse(feed, Reader::new(headers)))
}

/// Something that yields batches of events until it is done.
trait Feed: Send + 'static {
    /// The events since the last look (possibly none).
    fn look(&mut self) -> impl std::future::Future<Output = anyhow::Result<Vec<Event>>> + Send;
    /// Whether the stream has said all it will.
    fn done(&self) -> bool;
    /// The coordinator and this feed's wake-ups.
    fn waiter(&mut self) -> (&AppState, &mut Watcher);
}

/// Waits for the next look and takes it; None when the stream is over, the coordinator is
/// shutting down, or a look failed (logged; the client reconnects).
async fn next<F: Feed>(feed: &mut F) -> Option<Vec<Event>> {
    if feed.done() {
        return None;
    }
    let (state, watcher) = feed.waiter();
    if !wait(state, watcher).await {
        return None;
    }
    match feed.look().await {
        Ok(events) => Some(events),
        Err(e) => {
            tracing::warn!(error = %e, "event stream stopped");
            None
        }
    }
}

/// How often a stream checks again that its reader may still read: a token revoked or expired
/// while its stream is open ends the stream within this time.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Who opened a stream, to be asked again every [`RECHECK`].
struct Reader {
    headers: HeaderMap,
    checked: tokio::time::Instant,
}

impl Reader {
    fn new(headers: HeaderMap) -> Self {
        Reader {
            headers,
            checked: tokio::time::Instant::now(),
        }
    }

    /// Whether the reader may still read; asks the store at most every [`RECHECK`].
    async fn still_allowed(&mut self, state: &AppState) -> bool {
        if self.checked.elapsed() < RECHECK {
            return true;
        }
        self.checked = tokio::time::Instant::now();
        match require(state, &self.headers, Scope::Read).await {
            Ok(_) => true,
            Err(e) => {
                tracing::info!(reason = %e, "event stream ended: its reader may no longer read");
                false
            }
        }
    }
}

fn sse<F: Feed>(feed: F, reader: Reader) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold((feed, reader), |(mut feed, mut reader)| async move {
        let events = next(&mut feed).await?;
        if !reader.still_allowed(feed.waiter().0).await {
            return None;
        }
        Some((
            futures::stream::iter(events.into_iter().map(Ok)),
            (feed, reader),
        ))
    })
    .flatten();
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn event(name: &str, data: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).expect("API types serialise"))
}

/// Waits for the next look; false when the coordinator is shutting down.
async fn wait(state: &AppState, watcher: &mut Watcher) -> bool {
    tokio::select! {
        _ = state.shutdown.cancelled() => false,
        _ = watcher.next() => true,
    }
}

/// New whole lines of a build's log from `*offset`, as a `log` event; advances `*offset`.
/// Returns the event and whether a full chunk was read (more may be waiting).
async fn log_event(
    state: &AppState,
    job: &Job,
    build: &archfarm_protocol::api::Build,
    offset: &mut u64,
) -> std::io::Result<(Option<Event>, bool)> {
    let (lines, next, full) = state.logs.read_lines(build.id, *offset, LOG_CHUNK).await?;
    if lines.is_empty() {
        *offset = next;
        return Ok((None, full));
    }
    let chunk = LogChunk {
        job_id: job.id,
        build_id: build.id,
        platform: build.platform.clone(),
        offset: *offset,
        lines,
    };
    *offset = next;
    Ok((Some(event(EVENT_LOG, &chunk)), full))
}

/// One job: its state whenever it changes, its builds' logs from the start, then `end`.
struct JobFeed {
    state: AppState,
    watcher: Watcher,
    job_id: Uuid,
    last_job: Option<String>,
    offsets: HashMap<Uuid, u64>,
    done: bool,
}

impl Feed for JobFeed {
    fn done(&self) -> bool {
        self.done
    }

    fn waiter(&mut self) -> (&AppState, &mut Watcher) {
        (&self.state, &mut self.watcher)
    }

    async fn look(&mut self) -> anyhow::Result<Vec<Event>> {
        let mut events = Vec::new();
        let Some(row) = self.state.store.get_job(self.job_id).await? else {
            self.done = true;
            return Ok(events);
        };
        let fleet = Fleet::load(&self.state).await?;
        let job = views::job(&self.state, row, &fleet).await?;
        let json = serde_json::to_string(&job)?;
        if self.last_job.as_deref() != Some(json.as_str()) {
            events.push(Event::default().event(EVENT_JOB).data(&json));
            self.last_job = Some(json);
        }
        let mut more = false;
        for build in &job.builds {
            let offset = self.offsets.entry(build.id).or_insert(0);
            let (ev, full) = log_event(&self.state, &job, build, offset).await?;
            events.extend(ev);
            more |= full;
        }
        if more {
            // A backlog is sent as fast as the client takes it, not one chunk per poll.
            self.watcher.hurry();
        } else if job.state.is_terminal() {
            // Every log line written before the job ended has now been sent.
            events.push(event(
                EVENT_END,
                &JobEnd {
                    job_id: job.id,
                    state: job.state,
                },
            ));
            self.done = true;
        }
        Ok(events)
    }
}

/// Every job that has not ended (and each one's last change as it ends), the agents, and the new
/// log lines of running builds.
struct FarmFeed {
    state: AppState,
    watcher: Watcher,
    /// Whether `log` events are wanted.
    logs: bool,
    last_agents: Option<String>,
    /// Jobs being watched and the JSON last sent of each.
    jobs: HashMap<Uuid, String>,
    offsets: HashMap<Uuid, u64>,
    started: bool,
}

impl Feed for FarmFeed {
    fn done(&self) -> bool {
        false
    }

    fn waiter(&mut self) -> (&AppState, &mut Watcher) {
        (&self.state, &mut self.watcher)
    }

    async fn look(&mut self) -> anyhow::Result<Vec<Event>> {
        let mut events = Vec::new();
        let agents = views::agents(&self.state).await?;
        let agents = serde_json::to_string(&AgentsEvent { agents })?;
        if self.last_agents.as_deref() != Some(agents.as_str()) {
            events.push(Event::default().event(EVENT_AGENTS).data(&agents));
            self.last_agents = Some(agents);
        }

        let fleet = Fleet::load(&self.state).await?;
        let mut rows = self.state.store.active_jobs().await?;
        // Jobs that ended since the last look: their final state is sent once, then dropped.
        for id in self.jobs.keys() {
            if !rows.iter().any(|r| r.id == *id) {
                if let Some(row) = self.state.store.get_job(*id).await? {
                    rows.push(row);
                }
            }
        }
        let mut more = false;
        for row in rows {
            let mut job_more = false;
            let job = views::job(&self.state, row, &fleet).await?;
            let json = serde_json::to_string(&job)?;
            if self.jobs.get(&job.id) != Some(&json) {
                events.push(Event::default().event(EVENT_JOB).data(&json));
            }
            for build in &job.builds {
                if !self.logs || build.state == BuildState::Queued {
                    continue;
                }
                // Builds running when the stream opened are followed from their current end;
                // later ones from their first line.
                let offset = match self.offsets.get_mut(&build.id) {
                    Some(o) => o,
                    None => {
                        let start = if self.started {
                            0
                        } else {
                            self.state.logs.size(build.id).await?
                        };
                        self.offsets.entry(build.id).or_insert(start)
                    }
                };
                let (ev, full) = log_event(&self.state, &job, build, offset).await?;
                events.extend(ev);
                job_more |= full;
            }
            more |= job_more;
            if job.state.is_terminal() && !job_more {
                self.jobs.remove(&job.id);
                for b in &job.builds {
                    self.offsets.remove(&b.id);
                }
            } else {
                self.jobs.insert(job.id, json);
            }
        }
        self.started = true;
        if more {
            self.watcher.hurry();
        }
        Ok(events)
    }
}

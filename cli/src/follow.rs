//! Following a job until it ends: one polling loop, [`follow`], shown through a [`View`] (plain
//! lines, nothing, the live terminal rows of [`crate::tty`], or `archfarm logs`' output).
//!
//! The coordinator is polled (`GET /jobs/{id}` about every 500 ms) rather than streamed so that a
//! proxy, a coordinator restart or a flaky CI network costs a retry, not the build's result.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use archfarm_protocol::api::{Build, BuildState, Job, JobState};
use uuid::Uuid;

use crate::client::{Client, ClientError};
use crate::logs::{self, LogSet};

/// How often the job is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How long the coordinator may stay unreachable (or answer 5xx) before following gives up.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// How many log lines a failure report shows per failed build.
pub const TAIL_LINES: usize = 20;

/// What has been shown of one build, to print only changes.
#[derive(Debug, Default)]
struct Seen {
    state: Option<BuildState>,
    agent: Option<String>,
    attempts: i64,
    waiting: Option<String>,
}

/// Turns successive snapshots of a job into one line per change.
#[derive(Debug, Default)]
pub struct Tracker {
    builds: HashMap<Uuid, Seen>,
    job_state: Option<JobState>,
}

/// `[linux/arm64] building on pi-4 (native) (attempt 2): <why this agent>`.
fn building_line(b: &Build) -> String {
    let agent = b.agent.as_deref().unwrap_or("an agent");
    let mut line = format!("[{}] building on {agent}", b.platform);
    if let Some(m) = b.mode {
        line.push_str(&format!(" ({m})"));
    }
    if b.attempts > 1 {
        line.push_str(&format!(" (attempt {})", b.attempts));
    }
    if let Some(d) = b.decision.as_deref().filter(|d| !d.is_empty()) {
        line.push_str(&format!(": {d}"));
    }
    line
}

/// `attempt 1 on pi-4 ended`, with the reason when the coordinator gave one.
fn attempt_ended(seen: &Seen, b: &Build) -> String {
    let mut line = format!(
        "attempt {} on {} ended",
        seen.attempts,
        seen.agent.as_deref().unwrap_or("its agent")
    );
    if let Some(e) = b.error.as_deref().filter(|e| !e.is_empty()) {
        line.push_str(&format!(": {e}"));
    }
    line
}

/// The line for a build that ended, given the state of its job.
fn end_line(job_state: JobState, b: &Build) -> String {
    let p = &b.platform;
    let error = b.error.as_deref().filter(|e| !e.is_empty());
    match (b.state, error) {
        (BuildState::Succeeded, _) => format!(
            "[{p}] succeeded {}",
            b.digest.as_deref().unwrap_or("(no digest reported)")
        ),
        (BuildState::Failed, e) => format!(
            "[{p}] failed{}: {}",
            if b.optional { " (optional)" } else { "" },
            e.unwrap_or("no reason given")
        ),
        // An optional build the coordinator gave up on while the job goes on without it; when the
        // whole job was cancelled or failed, its builds are just cancelled.
        (_, Some(e))
            if b.optional && !matches!(job_state, JobState::Cancelled | JobState::Failed) =>
        {
            format!("[{p}] skipped (optional): {e}")
        }
        (_, Some(e)) => format!("[{p}] cancelled: {e}"),
        (_, None) => format!("[{p}] cancelled"),
    }
}

impl Tracker {
    /// Lines for a build's changes in a job now in `job_state`: those to print before its new log
    /// lines, and those after (the end of a build reads better after its last log line).
    pub fn build_lines(&mut self, job_state: JobState, b: &Build) -> (Vec<String>, Vec<String>) {
        let p = &b.platform;
        let seen = self.builds.entry(b.id).or_default();
        let (mut pre, mut post) = (Vec::new(), Vec::new());
        let new_attempt = b.attempts != seen.attempts || b.agent != seen.agent;
        match b.state {
            BuildState::Queued => {
                if seen.state == Some(BuildState::Building) {
                    pre.push(format!(
                        "[{p}] back in the queue: {}",
                        attempt_ended(seen, b)
                    ));
                } else if seen.state.is_none() {
                    let optional = if b.optional { " (optional)" } else { "" };
                    pre.push(format!("[{p}] queued{optional}"));
                }
                let waiting = b.waiting.as_deref().filter(|w| !w.is_empty());
                if let Some(w) = waiting {
                    if seen.waiting.as_deref() != Some(w) {
                        pre.push(format!("[{p}] waiting: {w}"));
                    }
                }
                seen.waiting = waiting.map(str::to_string);
            }
            BuildState::Building => {
                if seen.state == Some(BuildState::Building) && new_attempt && seen.attempts > 0 {
                    // Lost and leased again between two polls.
                    pre.push(format!("[{p}] {}", attempt_ended(seen, b)));
                }
                if seen.state != Some(BuildState::Building) || new_attempt {
                    pre.push(building_line(b));
                }
                seen.waiting = None;
            }
            end => {
                if seen.state != Some(end) {
                    // A build that went from queued to done between two polls still gets its agent line.
                    if seen.state != Some(BuildState::Building) && b.agent.is_some() {
                        pre.push(building_line(b));
                    }
                    post.push(end_line(job_state, b));
                }
            }
        }
        seen.state = Some(b.state);
        seen.agent = b.agent.clone();
        seen.attempts = b.attempts;
        (pre, post)
    }

    /// Lines for the job's own changes (stitching, the pushed index).
    pub fn job_lines(&mut self, job: &Job) -> Vec<String> {
        let mut out = Vec::new();
        if self.job_state != Some(job.state) {
            match job.state {
                JobState::Stitching => out.push(
                    "[index] every platform built; verifying and pushing the image index".into(),
                ),
                JobState::Succeeded => out.push(format!(
                    "[index] pushed {} to {}",
                    job.index_digest
                        .as_deref()
                        .unwrap_or("(no digest reported)"),
                    job.tags.join(", ")
                )),
                _ => {}
            }
        }
        self.job_state = Some(job.state);
        out
    }
}

/// What a follower shows of each snapshot of the job: `archfarm build`'s progress styles and
/// `archfarm logs --follow` are views over the one polling loop, [`follow`].
pub trait View {
    /// Whether this build's log is read at all.
    fn wants_log(&self, build: &Build) -> bool;

    /// Whether a log that cannot be read is an error (`archfarm logs`) rather than a gap in a
    /// progress view that must not stop the build being followed. Following then also goes on
    /// until every wanted log was read to its end.
    fn needs_every_line(&self) -> bool {
        false
    }

    /// A new snapshot, with the log lines that arrived since the last one: `lines[i]` belongs to
    /// `job.builds[i]`.
    fn update(&mut self, job: &Job, lines: &[Vec<String>]);

    /// A message about following itself (the coordinator went away, came back), on stderr.
    fn note(&mut self, message: &str) {
        eprintln!("{message}");
    }

    /// How often [`View::tick`] wants calling between polls, if at all.
    fn tick_every(&self) -> Option<Duration> {
        None
    }

    /// Called every [`View::tick_every`] between polls (a live view's clocks move on).
    fn tick(&mut self) {}

    /// True when nobody reads the output any more, so following can stop.
    fn closed(&self) -> bool {
        false
    }
}

/// `--progress quiet`: nothing but notes about the coordinator's trouble.
#[derive(Debug, Default)]
pub struct QuietView;

impl View for QuietView {
    fn wants_log(&self, _: &Build) -> bool {
        false
    }

    fn update(&mut self, _: &Job, _: &[Vec<String>]) {}
}

/// `--progress plain`: one line per change, the log lines prefixed `[platform agent]`.
#[derive(Debug, Default)]
pub struct PlainView {
    tracker: Tracker,
}

impl PlainView {
    /// The lines for one snapshot: per build its changes, its new log lines, how it ended; then
    /// the job's own changes.
    pub fn lines(&mut self, job: &Job, logs: &[Vec<String>]) -> Vec<String> {
        let mut out = Vec::new();
        for (b, new) in job.builds.iter().zip(logs) {
            let (pre, post) = self.tracker.build_lines(job.state, b);
            out.extend(pre);
            let prefix = logs::prefix(b);
            out.extend(new.iter().map(|l| format!("{prefix} {l}")));
            out.extend(post);
        }
        out.extend(self.tracker.job_lines(job));
        out
    }
}

impl View for PlainView {
    fn wants_log(&self, _: &Build) -> bool {
        true
    }

    fn update(&mut self, job: &Job, logs: &[Vec<String>]) {
        let mut text = String::new();
        for line in self.lines(job, logs) {
            text.push_str(&line);
            text.push('\n');
        }
        eprint!("{text}");
    }
}

/// Reads the new log lines of the builds `view` wants and hands them to it with the snapshot.
/// A log that cannot be read is skipped, unless the view needs every line: then the first such
/// failure is returned, after the view got what could be read.
pub async fn round(
    client: &Client,
    job: &Job,
    logs: &mut LogSet,
    view: &mut dyn View,
) -> Result<(), ClientError> {
    let mut batch = Vec::with_capacity(job.builds.len());
    let mut failed = None;
    for b in &job.builds {
        let mut lines = Vec::new();
        if view.wants_log(b) {
            match logs.pull(client, b, job.state.is_terminal()).await {
                Ok(l) => lines = l,
                Err(e) if view.needs_every_line() => {
                    failed.get_or_insert(e);
                }
                // Best effort: a missing log must not stop a build being followed.
                Err(_) => {}
            }
        }
        batch.push(lines);
    }
    view.update(job, &batch);
    failed.map_or(Ok(()), Err)
}

/// Since when the coordinator has been failing, to give up after [`GIVE_UP_AFTER`].
#[derive(Debug, Default)]
struct Trouble {
    since: Option<Instant>,
}

impl Trouble {
    /// Records a failed call: a transient one is retried (the first is announced) until
    /// [`GIVE_UP_AFTER`]; any other ends following.
    fn hit(&mut self, e: ClientError, view: &mut dyn View) -> Result<(), ClientError> {
        if !e.is_transient() {
            return Err(e);
        }
        let since = *self.since.get_or_insert_with(|| {
            view.note(&format!(
                "warning: {e}; retrying for up to {} s (the job keeps running)",
                GIVE_UP_AFTER.as_secs()
            ));
            Instant::now()
        });
        if since.elapsed() > GIVE_UP_AFTER {
            return Err(e);
        }
        Ok(())
    }

    /// Records a round that went through.
    fn clear(&mut self, view: &mut dyn View, id: Uuid) {
        if self.since.take().is_some() {
            view.note(&format!(
                "archfarm: the coordinator answers again; still following job {id}"
            ));
        }
    }
}

/// Waits one poll interval, ticking the view meanwhile.
async fn pause(view: &mut dyn View) {
    let Some(every) = view.tick_every() else {
        tokio::time::sleep(POLL_INTERVAL).await;
        return;
    };
    let until = Instant::now() + POLL_INTERVAL;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(every)).await;
        view.tick();
    }
}

/// Polls the job until it reaches a terminal state (and, for a view that needs every line,
/// every wanted log was read to its end), showing each snapshot in `view`, and returns the last
/// snapshot. Also returns early, with the snapshot then, once the view is closed.
pub async fn follow(
    client: &Client,
    initial: Job,
    view: &mut dyn View,
) -> Result<Job, ClientError> {
    let mut job = initial;
    let mut logs = LogSet::default();
    let mut trouble = Trouble::default();
    let mut fresh = true;
    loop {
        if fresh {
            match round(client, &job, &mut logs, view).await {
                Ok(()) => trouble.clear(view, job.id),
                Err(e) => trouble.hit(e, view)?,
            }
            if view.closed() {
                return Ok(job);
            }
            let wanted = |b: &Build| view.wants_log(b);
            if job.state.is_terminal() && (!view.needs_every_line() || logs.drained(&job, wanted)) {
                return Ok(job);
            }
        }
        pause(view).await;
        match client.job(job.id).await {
            Ok(j) => {
                // A view that needs every line is only back on track once its logs read too.
                if !view.needs_every_line() {
                    trouble.clear(view, j.id);
                }
                job = j;
                fresh = true;
            }
            Err(e) => {
                trouble.hit(e, view)?;
                fresh = false;
            }
        }
    }
}

/// The report of a failed job: its error, then each failed build's error and the tail of its log.
pub async fn failure_report(client: &Client, job: &Job) -> String {
    let mut out = format!(
        "error: job {} failed: {}\n",
        job.id,
        job.error.as_deref().unwrap_or("no reason given")
    );
    for b in job.builds.iter().filter(|b| b.state == BuildState::Failed) {
        out.push_str(&format!(
            "platform {} failed: {}\n",
            b.platform,
            b.error.as_deref().unwrap_or("no reason given")
        ));
        match client.build_log(b.id, 0).await {
            Ok(bytes) => out.push_str(&log_tail(&bytes, TAIL_LINES)),
            Err(e) => out.push_str(&format!("  (its log could not be read: {e})\n")),
        }
    }
    out
}

/// The last `n` lines of a log, introduced and indented.
pub fn log_tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(n)..];
    if tail.is_empty() {
        return "  (its log is empty)\n".into();
    }
    let mut out = match tail.len() {
        1 => "  last line of its log:\n".to_string(),
        len => format!("  last {len} lines of its log:\n"),
    };
    for l in tail {
        out.push_str(&format!("  | {l}\n"));
    }
    out
}

#[cfg(test)]
#[path = "follow_tests.rs"]
pub(crate) mod tests;

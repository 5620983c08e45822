//! Following a job until it ends: state changes and build logs on stderr, the outcome returned.
//!
//! The coordinator is polled (`GET /jobs/{id}` about every 500 ms) rather than streamed so that a
//! proxy, a coordinator restart or a flaky CI network costs a retry, not the build's result.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use archfarm_protocol::api::{Build, BuildState, Job, JobState};
use uuid::Uuid;

use crate::client::{Client, ClientError};

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

/// One build's log as received so far: the byte offset to ask from and an unfinished last line.
#[derive(Debug, Default)]
pub struct LogStream {
    /// Bytes received so far (the next `offset=`).
    pub offset: u64,
    partial: Vec<u8>,
    /// The build ended and its log was read to the end.
    pub drained: bool,
}

impl LogStream {
    /// Takes newly received bytes and returns the lines they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.offset += bytes.len() as u64;
        self.partial.extend_from_slice(bytes);
        let Some(last_nl) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(last_nl + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        String::from_utf8_lossy(&complete[..complete.len() - 1])
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect()
    }

    /// The unfinished last line, once no more is coming.
    pub fn flush(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            return None;
        }
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        Some(line)
    }
}

/// Polls the job until it reaches a terminal state and returns that last snapshot. With `verbose`,
/// prints each change and the build logs on stderr.
pub async fn follow(client: &Client, initial: Job, verbose: bool) -> Result<Job, ClientError> {
    let mut job = initial;
    let mut tracker = Tracker::default();
    let mut logs: HashMap<Uuid, LogStream> = HashMap::new();
    let mut trouble_since: Option<Instant> = None;
    let mut fresh = true;
    loop {
        if verbose && fresh {
            show(client, &job, &mut tracker, &mut logs).await;
        }
        if job.state.is_terminal() {
            return Ok(job);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        match client.job(job.id).await {
            Ok(j) => {
                if trouble_since.take().is_some() {
                    eprintln!(
                        "archfarm: the coordinator answers again; still following job {}",
                        j.id
                    );
                }
                job = j;
                fresh = true;
            }
            Err(e) if e.is_transient() => {
                let since = *trouble_since.get_or_insert_with(|| {
                    eprintln!(
                        "warning: {e}; retrying for up to {} s (the job keeps running)",
                        GIVE_UP_AFTER.as_secs()
                    );
                    Instant::now()
                });
                if since.elapsed() > GIVE_UP_AFTER {
                    return Err(e);
                }
                fresh = false;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Prints what changed in `job` and the log lines that arrived since the last call.
async fn show(
    client: &Client,
    job: &Job,
    tracker: &mut Tracker,
    logs: &mut HashMap<Uuid, LogStream>,
) {
    for b in &job.builds {
        let (pre, post) = tracker.build_lines(job.state, b);
        for line in pre {
            eprintln!("{line}");
        }
        let leased = b.agent.is_some() || b.state == BuildState::Building;
        let stream = logs.entry(b.id).or_default();
        if leased && !stream.drained {
            // Logs are best effort: a missing or failed read must not stop following the job.
            if let Ok(bytes) = client.build_log(b.id, stream.offset).await {
                for line in stream.feed(&bytes) {
                    eprintln!("[{}] {line}", b.platform);
                }
                if b.state.is_terminal() {
                    if let Some(line) = stream.flush() {
                        eprintln!("[{}] {line}", b.platform);
                    }
                    stream.drained = true;
                }
            }
        }
        for line in post {
            eprintln!("{line}");
        }
    }
    for line in tracker.job_lines(job) {
        eprintln!("{line}");
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

//! Build logs as the CLI reads them: whole lines from `GET /builds/{id}/log?offset=N`, one stream
//! per build, shared by `archfarm build`'s progress views and `archfarm logs`.

use std::collections::HashMap;
use std::io::Write as _;

use archfarm_protocol::api::{Build, Job};
use archfarm_protocol::Platform;
use uuid::Uuid;

use crate::client::{Client, ClientError};
use crate::follow::View;
use crate::validate::UsageError;

/// One build's log as read so far.
///
/// `offset` stays at the end of the last whole line: an unfinished last line is read again with
/// the next request rather than kept, so only whole lines are ever printed, and a line whose
/// bytes (or a multi-byte character's) arrive in two reads is never split.
#[derive(Debug, Default)]
pub struct LogStream {
    /// Where the next read starts: the end of the last whole line.
    pub offset: u64,
    /// The unfinished last line of the latest read, printed only once no more is coming.
    partial: Vec<u8>,
    /// The build ended and its log was read to the end.
    pub drained: bool,
    /// A read has already been made after the build was seen to have ended.
    saw_end: bool,
}

impl LogStream {
    /// Takes the bytes read from `offset` to the log's current end and returns the whole lines
    /// among them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let Some(last_nl) = bytes.iter().rposition(|b| *b == b'\n') else {
            self.partial = bytes.to_vec();
            return Vec::new();
        };
        self.offset += last_nl as u64 + 1;
        self.partial = bytes[last_nl + 1..].to_vec();
        String::from_utf8_lossy(&bytes[..last_nl])
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect()
    }

    /// The unfinished last line, once no more is coming.
    pub fn flush(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            return None;
        }
        self.offset += self.partial.len() as u64;
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        Some(line)
    }
}

/// The log streams of one job's builds.
#[derive(Debug, Default)]
pub struct LogSet {
    streams: HashMap<Uuid, LogStream>,
}

impl LogSet {
    /// Reads the lines `b` logged since the last call. Once the build (or, with `job_ended`, its
    /// job) has ended and settled, the rest of the log is read, an unfinished last line included,
    /// and the stream is marked drained; later calls read nothing.
    pub async fn pull(
        &mut self,
        client: &Client,
        b: &Build,
        job_ended: bool,
    ) -> Result<Vec<String>, ClientError> {
        let stream = self.streams.entry(b.id).or_default();
        if stream.drained {
            return Ok(Vec::new());
        }
        let ended = job_ended || b.state.is_terminal();
        // A build never leased has no log; asking would cost a request per poll. (One whose
        // lease was lost is back in the queue without an agent but has its first attempt's log.)
        if b.attempts == 0 {
            stream.drained = ended;
            return Ok(Vec::new());
        }
        let bytes = client.build_log(b.id, stream.offset).await?;
        let mut lines = stream.feed(&bytes);
        // The coordinator writes a build's last line (`pushed …`, `failed: …`) just after
        // recording its end, so a build that ended only just now is read once more before its
        // stream counts as drained.
        let settled = b
            .finished_at
            .is_some_and(|t| chrono::Utc::now() - t > chrono::Duration::seconds(2));
        if ended && (stream.saw_end || settled) {
            lines.extend(stream.flush());
            stream.drained = true;
        }
        stream.saw_end |= ended;
        Ok(lines)
    }

    /// Whether every build of `job` that `wanted` picks has been read to its end.
    pub fn drained(&self, job: &Job, wanted: impl Fn(&Build) -> bool) -> bool {
        job.builds
            .iter()
            .filter(|b| wanted(b))
            .all(|b| self.streams.get(&b.id).is_some_and(|s| s.drained))
    }
}

/// `[linux/arm64 pi-4]`: a log line's prefix, or `[linux/arm64]` while no agent is known.
pub fn prefix(b: &Build) -> String {
    match b.agent.as_deref().filter(|a| !a.is_empty()) {
        Some(agent) => format!("[{} {agent}]", b.platform),
        None => format!("[{}]", b.platform),
    }
}

/// Parses `archfarm logs --platform`, before anything is sent.
pub fn parse_platform(value: &str) -> Result<Platform, UsageError> {
    Platform::parse(value).map_err(|e| UsageError(format!("--platform: {e}")))
}

/// The build of `job` for `platform`, or a refusal naming the platforms the job has.
pub fn build_for<'j>(job: &'j Job, platform: &Platform) -> Result<&'j Build, UsageError> {
    if let Some(b) = job.builds.iter().find(|b| b.platform == *platform) {
        return Ok(b);
    }
    let have: Vec<String> = job.builds.iter().map(|b| b.platform.to_string()).collect();
    Err(UsageError(format!(
        "job {} has no build for {platform}; its platforms are: {}",
        job.id,
        have.join(", ")
    )))
}

/// `archfarm logs`: prints the chosen builds' log lines on stdout.
#[derive(Debug)]
pub struct LogsView {
    /// The one build to print, or every build when `None`.
    only: Option<Uuid>,
    /// Whether lines start with [`prefix`].
    prefixed: bool,
    /// stdout went away (`archfarm logs -f JOB | grep -m1 error`), so there is no point going on.
    closed: bool,
}

impl LogsView {
    /// The view for `job`: one platform's log unprefixed, or every build's, prefixed when the job
    /// has more than one build.
    pub fn new(job: &Job, platform: Option<&Platform>) -> Result<Self, UsageError> {
        let only = platform
            .map(|p| build_for(job, p).map(|b| b.id))
            .transpose()?;
        Ok(LogsView {
            only,
            prefixed: only.is_none() && job.builds.len() > 1,
            closed: false,
        })
    }

    /// The text printed for one snapshot's new lines, builds in the job's order.
    pub fn text(&self, job: &Job, lines: &[Vec<String>]) -> String {
        let mut out = String::new();
        for (b, lines) in job.builds.iter().zip(lines) {
            let pre = if self.prefixed {
                format!("{} ", prefix(b))
            } else {
                String::new()
            };
            for l in lines {
                out.push_str(&pre);
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl View for LogsView {
    fn wants_log(&self, b: &Build) -> bool {
        !matches!(self.only, Some(id) if id != b.id)
    }

    fn needs_every_line(&self) -> bool {
        true
    }

    fn update(&mut self, job: &Job, lines: &[Vec<String>]) {
        let text = self.text(job, lines);
        if text.is_empty() {
            return;
        }
        let mut out = std::io::stdout().lock();
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            self.closed = true;
        }
    }

    fn closed(&self) -> bool {
        self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::tests::sample_job_json;

    #[test]
    fn only_whole_lines_and_the_offset_after_the_last() {
        let mut s = LogStream::default();
        assert!(s.feed(b"STEP 1/2: FROM scr").is_empty());
        assert_eq!(s.offset, 0, "an unfinished line is read again");
        assert_eq!(
            s.feed(b"STEP 1/2: FROM scratch\nSTEP 2/2: COPY\r\nCOMM"),
            ["STEP 1/2: FROM scratch", "STEP 2/2: COPY"]
        );
        assert_eq!(s.offset, 39);
        assert!(s.feed(b"COMM").is_empty());
        assert_eq!(s.offset, 39);
        assert_eq!(s.feed(b"COMMIT\n\n"), ["COMMIT", ""]);
        assert_eq!(s.offset, 47);
        assert_eq!(s.flush(), None);
        assert!(s.feed(b"no newline").is_empty());
        assert_eq!(s.flush().as_deref(), Some("no newline"));
        assert_eq!(s.offset, 57);
        assert_eq!(s.flush(), None, "flushed once");
    }

    #[test]
    fn a_character_split_between_reads_stays_whole() {
        let mut s = LogStream::default();
        let line = "größe\n".as_bytes();
        // The read ends inside 'ö' (two bytes).
        assert!(s.feed(&line[..3]).is_empty());
        assert_eq!(s.offset, 0);
        assert_eq!(s.feed(line), ["größe"]);
        assert_eq!(s.offset, line.len() as u64);
    }

    fn job() -> Job {
        serde_json::from_value(sample_job_json()).unwrap()
    }

    #[test]
    fn prefixes_name_platform_and_agent() {
        let job = job();
        assert_eq!(prefix(&job.builds[0]), "[linux/amd64 pi-4]");
        assert_eq!(prefix(&job.builds[1]), "[linux/s390x]");
    }

    #[test]
    fn platform_choice() {
        let job = job();
        let amd = parse_platform("x86_64").unwrap();
        assert_eq!(
            build_for(&job, &amd).unwrap().platform.to_string(),
            "linux/amd64"
        );
        let e = build_for(&job, &parse_platform("aarch64").unwrap()).unwrap_err();
        assert_eq!(
            e.0,
            format!(
                "job {} has no build for linux/arm64; its platforms are: linux/amd64, linux/s390x",
                job.id
            )
        );
        let e = parse_platform("sparc").unwrap_err();
        assert!(
            e.0.starts_with("--platform: unknown platform 'sparc'"),
            "{e}"
        );
    }

    #[test]
    fn prefixed_only_for_all_of_several_builds() {
        let mut job = job();
        let lines = vec![vec!["a".to_string(), "b".into()], vec!["c".to_string()]];
        let all = LogsView::new(&job, None).unwrap();
        assert_eq!(
            all.text(&job, &lines),
            "[linux/amd64 pi-4] a\n[linux/amd64 pi-4] b\n[linux/s390x] c\n"
        );
        assert!(all.wants_log(&job.builds[1]));
        let one = LogsView::new(&job, Some(&parse_platform("s390x").unwrap())).unwrap();
        assert!(one.wants_log(&job.builds[1]) && !one.wants_log(&job.builds[0]));
        assert_eq!(one.text(&job, &[vec![], vec!["c".into()]]), "c\n");
        job.builds.truncate(1);
        let single = LogsView::new(&job, None).unwrap();
        assert_eq!(single.text(&job, &lines[..1]), "a\nb\n");
    }
}

//! Forwarding a build's log lines to the coordinator in order, in batches.
//!
//! One POST per line would swamp the coordinator during a chatty compile; one per build would show
//! nothing until the end. Lines are sent when 100 have gathered, when the next line would take the
//! batch past 512 KiB, or 200 ms after the first of a batch.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use archfarm_protocol::api::MAX_LOG_BATCH_BYTES;
use archfarm_protocol::redact::Redactor;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::client::{ClientError, CoordinatorClient};
use crate::session::Credentials;

/// Most lines in one batch.
pub const MAX_BATCH_LINES: usize = 100;
/// Most bytes of line text in one batch (a single line is capped far below this by the backend).
pub const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Longest a line waits for its batch to fill.
pub const MAX_BATCH_WAIT: Duration = Duration::from_millis(200);

// Even if every byte were escaped in JSON as `\u00XX` (6 bytes), a full batch with its quotes and
// commas stays under what the coordinator accepts.
const _: () = assert!(6 * MAX_BATCH_BYTES + 3 * MAX_BATCH_LINES + 1024 < MAX_LOG_BATCH_BYTES);

/// Attempts at sending one batch before it is dropped, so an unreachable coordinator stalls
/// neither the build nor the later lines for long.
const SEND_ATTEMPTS: u32 = 3;

/// Cuts a stream of lines into batches.
#[derive(Debug)]
pub struct Batcher {
    rx: mpsc::Receiver<String>,
    /// A line received that did not fit into the previous batch: the first of the next one.
    carry: Option<String>,
    max_lines: usize,
    max_bytes: usize,
    max_wait: Duration,
}

impl Batcher {
    /// Batches of at most `max_lines` lines and `max_bytes` bytes of line text (a single longer
    /// line goes alone), each sent at most `max_wait` after its first line.
    pub fn new(
        rx: mpsc::Receiver<String>,
        max_lines: usize,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Self {
        Batcher {
            rx,
            carry: None,
            max_lines,
            max_bytes,
            max_wait,
        }
    }

    /// The next batch: waits for a first line, then gathers more until the next line would pass
    /// `max_lines` or `max_bytes`, or `max_wait` after the first. `None` once the channel is closed
    /// and empty.
    pub async fn next(&mut self) -> Option<Vec<String>> {
        let first = match self.carry.take() {
            Some(line) => line,
            None => self.rx.recv().await?,
        };
        let deadline = Instant::now() + self.max_wait;
        let mut bytes = first.len();
        let mut batch = vec![first];
        while batch.len() < self.max_lines {
            match timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(line)) if bytes + line.len() > self.max_bytes => {
                    self.carry = Some(line);
                    break;
                }
                Ok(Some(line)) => {
                    bytes += line.len();
                    batch.push(line);
                }
                Ok(None) | Err(_) => break,
            }
        }
        Some(batch)
    }
}

/// Where a build's lines go.
#[derive(Debug, Clone)]
pub struct LogTarget {
    /// The coordinator.
    pub client: CoordinatorClient,
    /// The agent's credentials.
    pub creds: Arc<Credentials>,
    /// The build.
    pub build_id: Uuid,
    /// The lease's fencing token.
    pub lease_token: Uuid,
    /// Secret values (secret build arguments, the registry credential) replaced by `[redacted]`
    /// in every line before it is sent. A value split across two lines cannot be matched.
    pub redactor: Redactor,
    /// The first line that says a write failed for want of disk space (a `RUN` step's own
    /// message: buildah's last words are then only "exit status 1"), redacted.
    pub out_of_space: Arc<OnceLock<String>>,
}

/// Sends every line of `rx` until it closes. A 409 (or 401) means the lease is gone: `lost` is
/// cancelled, which stops the build. Once the coordinator says the log reached its cap, later lines
/// are read and dropped here instead of being sent, so a build that prints gigabytes neither stalls
/// on a full channel nor sends them over the network. Returns once `rx` is drained or `lost` fires.
pub async fn forward(target: LogTarget, rx: mpsc::Receiver<String>, lost: CancellationToken) {
    let mut batches = Batcher::new(rx, MAX_BATCH_LINES, MAX_BATCH_BYTES, MAX_BATCH_WAIT);
    let mut dropped = 0usize;
    let mut past_cap = 0usize;
    let mut truncated = false;
    // Each batch's number under this lease; a retry sends the same one.
    let mut seq = 0u64;
    loop {
        let batch = tokio::select! {
            _ = lost.cancelled() => return,
            b = batches.next() => b,
        };
        let Some(mut batch) = batch else { break };
        target.redactor.redact_all(&mut batch);
        if let Some(line) = batch
            .iter()
            .find(|l| crate::out_of_space::says_out_of_space(l))
        {
            let _ = target.out_of_space.set(line.trim().to_string());
        }
        let n = batch.len();
        if truncated {
            past_cap += n;
            continue;
        }
        let this = seq;
        seq += 1;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = tokio::select! {
                _ = lost.cancelled() => return,
                r = target.client.log(&target.creds.token, target.build_id, target.lease_token, this, batch.clone()) => r,
            };
            match sent {
                Ok(answer) => {
                    if answer.truncated {
                        tracing::warn!(build.id = %target.build_id, "the coordinator cut this build's log at its size cap; later lines are not sent");
                        truncated = true;
                    }
                    break;
                }
                Err(e)
                    if e.is_conflict()
                        || matches!(
                            e,
                            ClientError::Unauthorized { .. } | ClientError::UnknownAgent { .. }
                        ) =>
                {
                    tracing::warn!(build.id = %target.build_id, "lease lost while sending log lines; stopping the build");
                    lost.cancel();
                    return;
                }
                Err(e) if attempt < SEND_ATTEMPTS && e.is_transient() => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    dropped += n;
                    tracing::warn!(build.id = %target.build_id, error = %e, lines = n, "dropping log lines the coordinator did not take");
                    break;
                }
            }
        }
    }
    if past_cap > 0 {
        tracing::info!(build.id = %target.build_id, lines = past_cap, "log lines past the coordinator's cap were not sent");
    }
    if dropped > 0 {
        tracing::warn!(build.id = %target.build_id, lines = dropped, "some log lines of this build were not delivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn batches_by_count() {
        let (tx, rx) = mpsc::channel(1000);
        for i in 0..250 {
            tx.send(format!("line {i}")).await.unwrap();
        }
        drop(tx);
        let mut batches = Batcher::new(rx, 100, MAX_BATCH_BYTES, Duration::from_millis(200));
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        while let Some(b) = batches.next().await {
            sizes.push(b.len());
            all.extend(b);
        }
        assert_eq!(sizes, [100, 100, 50]);
        let want: Vec<String> = (0..250).map(|i| format!("line {i}")).collect();
        assert_eq!(all, want, "order kept");
    }

    #[tokio::test(start_paused = true)]
    async fn batches_by_time() {
        let (tx, rx) = mpsc::channel(10);
        let producer = tokio::spawn(async move {
            tx.send("a".to_string()).await.unwrap();
            tx.send("b".to_string()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            tx.send("c".to_string()).await.unwrap();
        });
        let mut batches = Batcher::new(rx, 100, MAX_BATCH_BYTES, Duration::from_millis(200));
        let start = Instant::now();
        let b = batches.next().await.unwrap();
        assert_eq!(b, ["a", "b"]);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(200),
            "a partial batch leaves after the wait"
        );
        let b = batches.next().await.unwrap();
        assert_eq!(b, ["c"]);
        producer.await.unwrap();
        assert!(batches.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn batches_by_bytes() {
        // 16 KiB lines, as long as the backend lets a line be: 32 of them fill 512 KiB exactly.
        let line = |i: usize| format!("{i:05}{}", "x".repeat(16 * 1024 - 5));
        let (tx, rx) = mpsc::channel(1000);
        for i in 0..70 {
            tx.send(line(i)).await.unwrap();
        }
        tx.send("short".to_string()).await.unwrap();
        drop(tx);
        let mut batches = Batcher::new(rx, 100, MAX_BATCH_BYTES, Duration::from_millis(200));
        let start = Instant::now();
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        while let Some(b) = batches.next().await {
            let bytes: usize = b.iter().map(String::len).sum();
            assert!(bytes <= MAX_BATCH_BYTES, "{bytes} bytes in one batch");
            sizes.push(b.len());
            all.extend(b);
        }
        assert_eq!(
            sizes,
            [32, 32, 7],
            "full batches go before the 100-line cap"
        );
        assert_eq!(start.elapsed(), Duration::ZERO, "full batches do not wait");
        let mut want: Vec<String> = (0..70).map(line).collect();
        want.push("short".into());
        assert_eq!(
            all, want,
            "the line that did not fit opens the next batch; order kept"
        );

        // A line longer than the cap still goes, alone.
        let (tx, rx) = mpsc::channel(10);
        for s in ["a".to_string(), "y".repeat(10), "b".to_string()] {
            tx.send(s).await.unwrap();
        }
        drop(tx);
        let mut batches = Batcher::new(rx, 100, 8, Duration::from_millis(200));
        assert_eq!(batches.next().await.unwrap(), ["a"]);
        assert_eq!(batches.next().await.unwrap(), ["y".repeat(10)]);
        assert_eq!(batches.next().await.unwrap(), ["b"]);
        assert!(batches.next().await.is_none());
    }
}

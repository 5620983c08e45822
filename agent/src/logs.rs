//! Forwarding a build's log lines to the coordinator in order, in batches.
//!
//! One POST per line would swamp the coordinator during a chatty compile; one per build would show
//! nothing until the end. Lines are sent when 100 have gathered or 200 ms after the first of a batch.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::client::{ClientError, CoordinatorClient};
use crate::session::Credentials;

/// Most lines in one batch.
pub const MAX_BATCH_LINES: usize = 100;
/// Longest a line waits for its batch to fill.
pub const MAX_BATCH_WAIT: Duration = Duration::from_millis(200);
/// Attempts at sending one batch before it is dropped, so an unreachable coordinator stalls
/// neither the build nor the later lines for long.
const SEND_ATTEMPTS: u32 = 3;

/// The next batch: waits for a first line, then gathers more until `max_lines` or `max_wait` after
/// the first. `None` once the channel is closed and empty.
pub async fn next_batch(
    rx: &mut mpsc::Receiver<String>,
    max_lines: usize,
    max_wait: Duration,
) -> Option<Vec<String>> {
    let first = rx.recv().await?;
    let deadline = Instant::now() + max_wait;
    let mut batch = vec![first];
    while batch.len() < max_lines {
        match timeout_at(deadline, rx.recv()).await {
            Ok(Some(line)) => batch.push(line),
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
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
}

/// Sends every line of `rx` until it closes. A 409 (or 401) means the lease is gone: `lost` is
/// cancelled, which stops the build. Returns once `rx` is drained or `lost` fires.
pub async fn forward(target: LogTarget, mut rx: mpsc::Receiver<String>, lost: CancellationToken) {
    let mut dropped = 0usize;
    loop {
        let batch = tokio::select! {
            _ = lost.cancelled() => return,
            b = next_batch(&mut rx, MAX_BATCH_LINES, MAX_BATCH_WAIT) => b,
        };
        let Some(batch) = batch else { break };
        let n = batch.len();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = tokio::select! {
                _ = lost.cancelled() => return,
                r = target.client.log(&target.creds.token, target.build_id, target.lease_token, batch.clone()) => r,
            };
            match sent {
                Ok(()) => break,
                Err(ClientError::LeaseLost { .. } | ClientError::Unauthorized { .. }) => {
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
    if dropped > 0 {
        tracing::warn!(build.id = %target.build_id, lines = dropped, "some log lines of this build were not delivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn batches_by_count() {
        let (tx, mut rx) = mpsc::channel(1000);
        for i in 0..250 {
            tx.send(format!("line {i}")).await.unwrap();
        }
        drop(tx);
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        while let Some(b) = next_batch(&mut rx, 100, Duration::from_millis(200)).await {
            sizes.push(b.len());
            all.extend(b);
        }
        assert_eq!(sizes, [100, 100, 50]);
        let want: Vec<String> = (0..250).map(|i| format!("line {i}")).collect();
        assert_eq!(all, want, "order kept");
    }

    #[tokio::test(start_paused = true)]
    async fn batches_by_time() {
        let (tx, mut rx) = mpsc::channel(10);
        let producer = tokio::spawn(async move {
            tx.send("a".to_string()).await.unwrap();
            tx.send("b".to_string()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            tx.send("c".to_string()).await.unwrap();
        });
        let start = Instant::now();
        let b = next_batch(&mut rx, 100, Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(b, ["a", "b"]);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(200),
            "a partial batch leaves after the wait"
        );
        let b = next_batch(&mut rx, 100, Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(b, ["c"]);
        producer.await.unwrap();
        assert!(next_batch(&mut rx, 100, Duration::from_millis(200))
            .await
            .is_none());
    }
}

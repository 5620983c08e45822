//! Retention in the background: one task per coordinator deletes ended jobs older than
//! `--retention` with everything keyed by them, then context archives no job names and nobody
//! used since, then trims the context cache to `--context-cache-max-bytes`. Each step works in
//! bounded batches (see [`crate::store::Deleted`] and `store/retention.rs`), so the claim path's
//! statements run between them. Several replicas on one PostgreSQL may sweep at once: batches
//! skip rows another replica holds, and deletes that find nothing delete nothing.

use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::blobs::{BlobError, BlobStore};
use crate::store::{now_ms, to_time, Deleted, Store, StoreError};
use crate::AppState;

/// Jobs deleted per transaction: a few hundred rows with their builds, leases and log pieces.
pub const JOB_BATCH: i64 = 50;
/// Context records deleted per transaction.
pub const CONTEXT_BATCH: i64 = 20;
/// Context pieces (1 MiB each) deleted per statement.
pub const PIECE_BATCH: i64 = 16;

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Trimming the context cache failed.
    #[error(transparent)]
    Cache(#[from] BlobError),
}

/// What this replica's sweeps deleted, for `archfarm admin retention`.
#[derive(Debug, Default)]
pub struct SweepLog {
    inner: Mutex<SweepLogInner>,
}

#[derive(Debug, Default, Clone)]
struct SweepLogInner {
    last_at: Option<i64>,
    last: Deleted,
    total: Deleted,
    sweeps: u64,
}

impl SweepLog {
    /// Records a sweep that ended at `at` (Unix ms) having deleted `deleted`.
    pub fn record(&self, at: i64, deleted: &Deleted) {
        let mut log = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        log.last_at = Some(at);
        log.last = deleted.clone();
        log.total.merge(deleted);
        log.sweeps += 1;
    }

    /// The status `GET /api/v1/admin/retention` answers with.
    pub fn status(&self, state: &AppState) -> archfarm_protocol::retention::RetentionStatus {
        let log = self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let named = |d: &Deleted| d.rows.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        archfarm_protocol::retention::RetentionStatus {
            replica: state.config.replica_name.clone(),
            retention_secs: state.config.retention.0.map(|d| d.as_secs()),
            interval_secs: state.config.retention_interval_secs,
            context_cache_max_bytes: state.config.context_cache_max_bytes,
            context_cache_bytes: state.blobs.cache_bytes(),
            last_sweep_at: log.last_at.map(to_time),
            last: named(&log.last),
            total: named(&log.total),
            sweeps: log.sweeps,
        }
    }
}

/// One sweep at `now` (Unix ms): with `keep`, deletes jobs that ended before `now - keep` and
/// contexts unused since then; then trims the cache. Stops between batches once `stop` is
/// cancelled.
pub async fn sweep(
    store: &Store,
    blobs: &BlobStore,
    keep: Option<Duration>,
    now: i64,
    stop: &CancellationToken,
) -> Result<Deleted, RetentionError> {
    let mut deleted = Deleted::default();
    if let Some(keep) = keep {
        let cutoff = now.saturating_sub(keep.as_millis().min(i64::MAX as u128) as i64);
        loop {
            let batch = store.delete_ended_jobs(cutoff, JOB_BATCH).await?;
            let jobs = batch.get("jobs");
            deleted.merge(&batch);
            if jobs < JOB_BATCH as u64 || stop.is_cancelled() {
                break;
            }
            // Lets the statements queued behind this batch (a claim, a heartbeat) run first.
            tokio::task::yield_now().await;
        }
        loop {
            let digests = store.delete_unused_contexts(cutoff, CONTEXT_BATCH).await?;
            deleted.add("contexts", digests.len() as u64);
            for digest in &digests {
                loop {
                    let n = store.delete_context_pieces(digest, PIECE_BATCH).await?;
                    deleted.add("context_chunks", n);
                    if n < PIECE_BATCH as u64 {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            if digests.len() < CONTEXT_BATCH as usize || stop.is_cancelled() {
                break;
            }
        }
    }
    let trimmed = blobs.trim().await?;
    deleted.add("cached_files", trimmed.files);
    Ok(deleted)
}

/// Runs one sweep now and records it: the log line, the metrics and the status.
pub async fn sweep_now(state: &AppState) -> Result<Deleted, RetentionError> {
    let deleted = sweep(
        &state.store,
        &state.blobs,
        state.config.retention.0,
        now_ms(),
        &state.shutdown,
    )
    .await?;
    state.metrics.retention_swept(&deleted);
    state.retention.record(now_ms(), &deleted);
    tracing::info!(
        jobs = deleted.get("jobs"),
        builds = deleted.get("builds"),
        leases = deleted.get("leases"),
        log_chunks = deleted.get("log_chunks"),
        job_secrets = deleted.get("job_secrets"),
        contexts = deleted.get("contexts"),
        context_chunks = deleted.get("context_chunks"),
        cached_files = deleted.get("cached_files"),
        cache_bytes = state.blobs.cache_bytes(),
        "retention sweep"
    );
    Ok(deleted)
}

/// Background task: a sweep every `--retention-interval-secs`, the first one at start.
pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(
        state.config.retention_interval_secs.max(1),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sweep_now(&state).await {
            tracing::error!(error = %e, "retention sweep failed");
        }
    }
}

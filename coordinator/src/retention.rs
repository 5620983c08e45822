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
        deleted.add("tag_heads", store.delete_old_tag_heads(cutoff, now).await?);
        loop {
            let digests = store.delete_unused_contexts(cutoff, CONTEXT_BATCH).await?;
            deleted.add("contexts", digests.len() as u64);
            for digest in &digests {
                if blobs.forget(digest) {
                    deleted.add("cached_files", 1);
                }
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
    // Best effort: what was deleted stays deleted, and the next sweep vacuums again.
    if let Err(e) = store.reclaim(&deleted).await {
        tracing::warn!(error = %e, "could not vacuum what retention deleted");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{insert_test_job, test_store};
    use archfarm_protocol::api::JobState;
    use archfarm_protocol::Digest;
    use sha2::{Digest as _, Sha256};
    use sqlx::Row as _;

    const HOUR: Duration = Duration::from_secs(3600);

    /// Ends `n` jobs of two builds each and moves them, and every context, a day back.
    async fn old_ended_jobs(store: &Store, n: usize) -> Vec<uuid::Uuid> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let id = insert_test_job(store, "app", &["linux/amd64", "linux/arm64"]).await;
            store
                .end_job(id, JobState::Cancelled, "gone")
                .await
                .unwrap();
            ids.push(id);
        }
        let day = 24 * 3_600_000i64;
        sqlx::query("UPDATE jobs SET created_at = created_at - $1, finished_at = finished_at - $1")
            .bind(day)
            .execute(store.pool())
            .await
            .unwrap();
        sqlx::query("UPDATE contexts SET last_used_at = last_used_at - $1")
            .bind(day)
            .execute(store.pool())
            .await
            .unwrap();
        ids
    }

    async fn rows(store: &Store, table: &str) -> i64 {
        sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(store.pool())
            .await
            .unwrap()
            .get::<i64, _>("n")
    }

    #[tokio::test]
    async fn retention_off_deletes_nothing_and_on_deletes_what_ended_before_it() {
        let (store, _db) = test_store().await;
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().into(), store.clone())
            .await
            .unwrap();
        let ids = old_ended_jobs(&store, 2).await;
        // This replica's cached copy of the jobs' context (`insert_test_job`'s digest).
        let cached = dir.path().join(format!("{}.tar.gz", "0".repeat(64)));
        std::fs::write(&cached, b"archive").unwrap();
        let stop = CancellationToken::new();
        let off = sweep(&store, &blobs, None, now_ms(), &stop).await.unwrap();
        assert!(off.is_empty(), "{off:?}");
        assert!(cached.exists());
        assert_eq!(rows(&store, "jobs").await, 2);
        // Ended a day ago: a two-day retention keeps them, a twelve-hour one does not.
        let kept = sweep(&store, &blobs, Some(48 * HOUR), now_ms(), &stop).await;
        assert!(kept.unwrap().is_empty());
        let on = sweep(&store, &blobs, Some(12 * HOUR), now_ms(), &stop)
            .await
            .unwrap();
        assert_eq!(
            (on.get("jobs"), on.get("builds"), on.get("contexts")),
            (2, 4, 1)
        );
        for id in ids {
            assert!(store.get_job(id).await.unwrap().is_none());
        }
        assert_eq!(rows(&store, "builds").await, 0);
        assert_eq!(rows(&store, "contexts").await, 0);
        assert_eq!(rows(&store, "context_chunks").await, 0);
        assert_eq!(on.get("cached_files"), 1);
        assert!(!cached.exists(), "the cached copy went with the record");
    }

    #[tokio::test]
    async fn two_sweeps_at_once_share_the_work_without_errors() {
        let (store, db) = test_store().await;
        let other = Store::connect(db.url()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().into(), store.clone())
            .await
            .unwrap();
        let n = 2 * JOB_BATCH as usize + 7;
        old_ended_jobs(&store, n).await;
        // A live job of the same age stays, and so does the context it names.
        let live = insert_test_job(&store, "app", &["linux/s390x"]).await;
        sqlx::query("UPDATE jobs SET created_at = 0 WHERE id = $1")
            .bind(live.to_string())
            .execute(store.pool())
            .await
            .unwrap();
        sqlx::query("UPDATE contexts SET last_used_at = 0")
            .execute(store.pool())
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let keep = Some(HOUR);
        let (a, b) = tokio::join!(
            sweep(&store, &blobs, keep, now_ms(), &stop),
            sweep(&other, &blobs, keep, now_ms(), &stop)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.get("jobs") + b.get("jobs"), n as u64, "{a:?} {b:?}");
        assert_eq!(a.get("builds") + b.get("builds"), 2 * n as u64);
        assert_eq!(
            a.get("contexts") + b.get("contexts"),
            0,
            "a live job names it"
        );
        assert_eq!(rows(&store, "jobs").await, 1);
        assert_eq!(rows(&store, "builds").await, 1);
        let job = store
            .get_job(live)
            .await
            .unwrap()
            .expect("the live job stays");
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(rows(&store, "contexts").await, 1);
        other.pool().close().await;
    }

    fn archive(name: &str) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        h.set_cksum();
        builder.append_data(&mut h, name, &b"data"[..]).unwrap();
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[tokio::test]
    async fn the_cache_drops_deleted_contexts_then_the_least_recently_used_but_never_a_live_jobs() {
        let (store, _db) = test_store().await;
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().into(), store.clone())
            .await
            .unwrap();
        let mut cached = Vec::new();
        for name in ["a", "b", "c", "d"] {
            let bytes = archive(name);
            let digest = Digest::from_sha256_bytes(&Sha256::digest(&bytes));
            let chunks = vec![Ok::<_, std::io::Error>(bytes::Bytes::from(bytes.clone()))];
            blobs
                .put(&digest, futures::stream::iter(chunks), 1 << 20)
                .await
                .unwrap();
            store
                .insert_context(digest.as_str(), bytes.len() as i64)
                .await
                .unwrap();
            let path = dir.path().join(format!("{}.tar.gz", digest.hex()));
            cached.push((digest, path, bytes.len() as u64));
        }
        let [a, b, c, d] = &cached[..] else {
            unreachable!()
        };
        // b is the context of a live job; d's record is gone (retention on another replica).
        let job = insert_test_job(&store, "app", &["linux/amd64"]).await;
        sqlx::query("UPDATE jobs SET context = $1 WHERE id = $2")
            .bind(b.0.as_str())
            .bind(job.to_string())
            .execute(store.pool())
            .await
            .unwrap();
        sqlx::query("DELETE FROM contexts WHERE digest = $1")
            .bind(d.0.as_str())
            .execute(store.pool())
            .await
            .unwrap();
        // Last used: b longest ago, then d, a, c.
        let now = std::time::SystemTime::now();
        for (file, hours_ago) in [(b, 4), (d, 3), (a, 2), (c, 1)] {
            let f = std::fs::File::options().append(true).open(&file.1).unwrap();
            f.set_modified(now - hours_ago * HOUR).unwrap();
        }
        let blobs = blobs.with_cache_limit(a.2 + b.2 + c.2 - 1);
        let trimmed = blobs.trim().await.unwrap();
        assert_eq!(trimmed.files, 2);
        assert_eq!(trimmed.bytes, b.2 + c.2);
        assert!(
            !a.1.exists() && !d.1.exists(),
            "d is gone, a was least recently used"
        );
        assert!(
            b.1.exists(),
            "a live job's archive stays though it is the oldest"
        );
        assert!(c.1.exists());
        // Trimmed from the cache only: the database still serves a.
        let again = blobs.local(&a.0).await.unwrap().expect("copied back");
        assert_eq!(std::fs::read(again).unwrap(), archive("a"));
    }
}

//! The bytes of context archives and build logs, kept in the database in pieces so that every
//! coordinator sharing it can serve them (a replica's own disk is only a cache).

use std::path::Path;

use sha2::{Digest as _, Sha256};
use sqlx::Row;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use super::{Store, StoreResult};

/// Largest piece of a context archive stored in one row: small enough that no single statement
/// holds much memory, large enough that a 512 MiB context is 512 rows.
pub const CONTEXT_CHUNK_BYTES: usize = 1 << 20;

impl Store {
    /// Stores the archive at `file` as the pieces of context `digest`. Each piece is its own short
    /// statement, so a large upload never holds SQLite's one write lock for long; the `contexts`
    /// row, written after this returns, is what makes the context count as stored. Pieces left by
    /// an upload cut short are the same bytes a retry writes, so they are kept as they are.
    pub async fn put_context_chunks(&self, digest: &str, file: &Path) -> StoreResult<u64> {
        let mut file = tokio::fs::File::open(file).await?;
        let mut buf = vec![0u8; CONTEXT_CHUNK_BYTES];
        let (mut seq, mut total) = (0i64, 0u64);
        loop {
            let n = read_full(&mut file, &mut buf).await?;
            if n == 0 {
                break;
            }
            sqlx::query(
                "INSERT INTO context_chunks (digest, seq, data) VALUES ($1, $2, $3) \
                 ON CONFLICT (digest, seq) DO NOTHING",
            )
            .bind(digest)
            .bind(seq)
            .bind(buf[..n].to_vec())
            .execute(&self.pool)
            .await?;
            seq += 1;
            total += n as u64;
        }
        Ok(total)
    }

    /// Whether context `digest` is recorded and every one of its pieces is stored (a copy cut
    /// short by a crash is not: it is written again).
    pub async fn context_complete(&self, digest: &str) -> StoreResult<bool> {
        let row = sqlx::query(
            "SELECT c.size AS size, (SELECT COUNT(*) FROM context_chunks k WHERE k.digest = c.digest) AS pieces \
             FROM contexts c WHERE c.digest = $1",
        )
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(false) };
        let size: i64 = row.try_get("size")?;
        let pieces: i64 = row.try_get("pieces")?;
        let chunk = CONTEXT_CHUNK_BYTES as i64;
        Ok(pieces == (size.max(0) + chunk - 1) / chunk)
    }

    /// How many pieces of context `digest` are stored (none for an unknown one).
    pub async fn context_pieces(&self, digest: &str) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM context_chunks WHERE digest = $1")
            .bind(digest)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Writes the stored pieces of context `digest` to `dest` and returns the sha256 (hex) of what
    /// was written, so the caller can check it before trusting the copy; None when none are stored.
    pub async fn copy_context_to(&self, digest: &str, dest: &Path) -> StoreResult<Option<String>> {
        let mut file = tokio::fs::File::create(dest).await?;
        let mut hasher = Sha256::new();
        let mut seq = 0i64;
        loop {
            let row = sqlx::query("SELECT data FROM context_chunks WHERE digest = $1 AND seq = $2")
                .bind(digest)
                .bind(seq)
                .fetch_optional(&self.pool)
                .await?;
            let Some(row) = row else { break };
            let data: Vec<u8> = row.try_get("data")?;
            hasher.update(&data);
            file.write_all(&data).await?;
            seq += 1;
        }
        file.sync_all().await?;
        Ok((seq > 0).then(|| hex::encode(hasher.finalize())))
    }

    /// A build's log length in bytes; None when there is no such build.
    pub async fn log_size(&self, build: Uuid) -> StoreResult<Option<u64>> {
        Ok(self.log_position(build).await?.map(|p| p.bytes))
    }

    /// A build's log length and the last numbered batch stored; None when there is no such build.
    pub async fn log_position(&self, build: Uuid) -> StoreResult<Option<LogPosition>> {
        let row = sqlx::query(
            "SELECT log_bytes, log_batch_lease, log_batch_seq FROM builds WHERE id = $1",
        )
        .bind(build.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let lease: Option<String> = row.try_get("log_batch_lease")?;
        let seq: Option<i64> = row.try_get("log_batch_seq")?;
        Ok(Some(LogPosition {
            bytes: row.try_get::<i64, _>("log_bytes")?.max(0) as u64,
            last_batch: match (lease.and_then(|l| l.parse().ok()), seq) {
                (Some(lease), Some(seq)) => Some(LogBatch {
                    lease,
                    seq: seq.max(0) as u64,
                }),
                _ => None,
            },
        }))
    }

    /// Appends `data` to a build's log if its length is still `at`, recording `batch` (when
    /// given) as the last batch stored; false when another append got there first (the caller
    /// reads the position again). The length, the batch and the piece change together; every
    /// append moves the length, so the compare-and-set on it fences the batch too.
    pub async fn append_log_at(
        &self,
        build: Uuid,
        at: u64,
        data: &[u8],
        batch: Option<LogBatch>,
    ) -> StoreResult<bool> {
        let end = at + data.len() as u64;
        let mut tx = self.begin().await?;
        let res =
            match batch {
                None => {
                    sqlx::query("UPDATE builds SET log_bytes = $1 WHERE id = $2 AND log_bytes = $3")
                        .bind(end as i64)
                        .bind(build.to_string())
                        .bind(at as i64)
                        .execute(&mut *tx)
                        .await?
                }
                Some(b) => sqlx::query(
                    "UPDATE builds SET log_bytes = $1, log_batch_lease = $4, log_batch_seq = $5 \
                     WHERE id = $2 AND log_bytes = $3",
                )
                .bind(end as i64)
                .bind(build.to_string())
                .bind(at as i64)
                .bind(b.lease.to_string())
                .bind(b.seq as i64)
                .execute(&mut *tx)
                .await?,
            };
        if res.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_log_piece(&mut tx, build, at, data).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Writes `data` as the whole log of a build whose log is still empty, in pieces of
    /// `piece` bytes, in one transaction (a crash leaves all of it or none); false when the log
    /// was not empty.
    pub async fn import_log(&self, build: Uuid, data: &[u8], piece: usize) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let res = sqlx::query("UPDATE builds SET log_bytes = $1 WHERE id = $2 AND log_bytes = 0")
            .bind(data.len() as i64)
            .bind(build.to_string())
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        for (i, part) in data.chunks(piece.max(1)).enumerate() {
            insert_log_piece(&mut tx, build, (i * piece.max(1)) as u64, part).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The log's bytes in `[from, to)`, joined from the pieces that overlap it.
    pub async fn log_bytes_between(&self, build: Uuid, from: u64, to: u64) -> StoreResult<Vec<u8>> {
        let rows = sqlx::query(
            "SELECT start_offset, data FROM log_chunks \
             WHERE build_id = $1 AND end_offset > $2 AND start_offset < $3 ORDER BY start_offset",
        )
        .bind(build.to_string())
        .bind(from as i64)
        .bind(to as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity((to - from).min(1 << 20) as usize);
        for row in rows {
            let start = row.try_get::<i64, _>("start_offset")?.max(0) as u64;
            let data: Vec<u8> = row.try_get("data")?;
            let lo = from.saturating_sub(start) as usize;
            let hi = ((to - start) as usize).min(data.len());
            if lo < hi {
                out.extend_from_slice(&data[lo..hi]);
            }
        }
        Ok(out)
    }
}

/// Where a build's log stands: what a numbered batch is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    /// The log's length in bytes.
    pub bytes: u64,
    /// The last numbered batch stored, if any.
    pub last_batch: Option<LogBatch>,
}

/// One numbered batch of an agent's log lines: its lease and its number under that lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBatch {
    /// The lease's token.
    pub lease: Uuid,
    /// The batch's number, from 0.
    pub seq: u64,
}

impl LogBatch {
    /// Whether this batch was stored already, or comes after a later one of its lease was: either
    /// way it must not be appended. A batch of another lease (a retry of the build) starts anew.
    pub fn is_stale(&self, last: Option<LogBatch>) -> bool {
        last.is_some_and(|last| last.lease == self.lease && last.seq >= self.seq)
    }
}

/// Stores one piece of a build's log, `data` from byte `start` on, inside `tx`.
async fn insert_log_piece(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    build: Uuid,
    start: u64,
    data: &[u8],
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO log_chunks (build_id, start_offset, end_offset, data) VALUES ($1, $2, $3, $4)",
    )
    .bind(build.to_string())
    .bind(start as i64)
    .bind((start + data.len() as u64) as i64)
    .bind(data.to_vec())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Fills `buf` as far as the file allows; fewer bytes only at its end.
async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = file.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

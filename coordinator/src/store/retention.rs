//! Retention: deleting ended jobs with every row keyed by them, and context archives no job
//! names, in bounded batches. Each batch is one short transaction, so a large backlog never holds
//! SQLite's one write lock (or PostgreSQL row locks) for long, and the claim path's statements
//! queue between batches. On PostgreSQL a batch locks its jobs with `SKIP LOCKED`, so replicas
//! sweeping at once take different jobs; every delete is conditional, so one that finds its rows
//! already gone deletes nothing and fails nothing.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Backend, Store, StoreResult};

/// Rows deleted, by kind, as `archfarm_retention_deleted_total{kind}` and `archfarm admin
/// retention` name them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Rows per kind: jobs, builds, leases, log_chunks, job_secrets, contexts, context_chunks,
    /// tag_heads, cached_files.
    pub rows: BTreeMap<&'static str, u64>,
}

impl Deleted {
    /// Adds `n` rows of `kind` (kinds with nothing deleted stay out of the map).
    pub fn add(&mut self, kind: &'static str, n: u64) {
        if n > 0 {
            *self.rows.entry(kind).or_default() += n;
        }
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Deleted) {
        for (kind, n) in &other.rows {
            self.add(kind, *n);
        }
    }

    /// Rows of `kind` deleted.
    pub fn get(&self, kind: &str) -> u64 {
        self.rows.get(kind).copied().unwrap_or(0)
    }

    /// Whether nothing was deleted.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The tables each kind of [`Deleted`] row lives in.
const TABLES: &[(&str, &[&str])] = &[
    ("jobs", &["jobs"]),
    ("builds", &["builds"]),
    ("leases", &["leases"]),
    ("log_chunks", &["log_chunks"]),
    ("job_secrets", &["job_secrets", "job_registry_credentials"]),
    ("contexts", &["contexts"]),
    ("context_chunks", &["context_chunks"]),
    ("tag_heads", &["tag_heads"]),
];

impl Store {
    /// Makes the space of what a sweep deleted reusable. PostgreSQL only reuses a deleted row's
    /// space once the table is vacuumed, and a server may run without autovacuum (this
    /// machine's test server does: in the soak benchmark its database grew by every wave the
    /// sweep had deleted); a plain `VACUUM` of the tables a sweep deleted from takes no lock that
    /// blocks reads or writes. SQLite reuses freed pages by itself.
    pub async fn reclaim(&self, deleted: &Deleted) -> StoreResult<()> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        let mut tables: Vec<&str> = TABLES
            .iter()
            .filter(|(kind, _)| deleted.get(kind) > 0)
            .flat_map(|(_, tables)| tables.iter().copied())
            .collect();
        tables.dedup();
        if tables.is_empty() {
            return Ok(());
        }
        // VACUUM cannot run in a transaction: the simple protocol sends it on its own.
        sqlx::raw_sql(&format!("VACUUM {}", tables.join(", ")))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// `$first, $first+1, ...` for `n` bound values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// `FOR UPDATE SKIP LOCKED` on PostgreSQL (replicas sweeping at once take different rows);
    /// nothing on SQLite, whose `BEGIN IMMEDIATE` already makes a batch the only writer.
    fn skip_locked(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    /// Deletes up to `batch` jobs that ended (succeeded, failed or cancelled) before `cutoff`
    /// (Unix ms), with their builds, leases, log pieces, secrets and registry credentials, in one
    /// transaction. A live job is never touched, whatever its age.
    pub async fn delete_ended_jobs(&self, cutoff: i64, batch: i64) -> StoreResult<Deleted> {
        let mut out = Deleted::default();
        let mut tx = self.begin().await?;
        let ids: Vec<String> = sqlx::query(&format!(
            "SELECT id FROM jobs WHERE finished_at < $1 \
             AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT $2{}",
            self.skip_locked()
        ))
        .bind(cutoff)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
        if ids.is_empty() {
            tx.commit().await?;
            return Ok(out);
        }
        let list = placeholders(1, ids.len());
        let builds_of = format!("SELECT id FROM builds WHERE job_id IN ({list})");
        // Children first: PostgreSQL enforces builds.job_id's reference to jobs.
        let statements: [(&'static str, String); 6] = [
            (
                "log_chunks",
                format!("DELETE FROM log_chunks WHERE build_id IN ({builds_of})"),
            ),
            (
                "leases",
                format!("DELETE FROM leases WHERE build_id IN ({builds_of})"),
            ),
            (
                "job_secrets",
                format!("DELETE FROM job_secrets WHERE job_id IN ({list})"),
            ),
            (
                "job_secrets",
                format!("DELETE FROM job_registry_credentials WHERE job_id IN ({list})"),
            ),
            (
                "builds",
                format!("DELETE FROM builds WHERE job_id IN ({list})"),
            ),
            (
                "jobs",
                // Ended jobs never come back to life; the state check is for safety's sake.
                format!(
                    "DELETE FROM jobs WHERE id IN ({list}) \
                     AND state IN ('succeeded', 'failed', 'cancelled')"
                ),
            ),
        ];
        for (kind, sql) in &statements {
            let mut query = sqlx::query(sql);
            for id in &ids {
                query = query.bind(id.as_str());
            }
            out.add(kind, query.execute(&mut *tx).await?.rows_affected());
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Deletes the records of up to `batch` contexts that no job names and that nobody uploaded,
    /// found (HEAD) or submitted a job with since `cutoff`; returns their digests, whose pieces
    /// the caller deletes next ([`Store::delete_context_pieces`]). The record goes first, so a
    /// half-deleted context counts as absent and is uploaded again rather than served short.
    pub async fn delete_unused_contexts(
        &self,
        cutoff: i64,
        batch: i64,
    ) -> StoreResult<Vec<String>> {
        let unused = "last_used_at < $1 AND NOT EXISTS \
                      (SELECT 1 FROM jobs j WHERE j.context = contexts.digest)";
        let mut tx = self.begin().await?;
        let digests: Vec<String> = sqlx::query(&format!(
            "SELECT digest FROM contexts WHERE {unused} ORDER BY last_used_at LIMIT $2{}",
            self.skip_locked()
        ))
        .bind(cutoff)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("digest"))
        .collect::<Result<_, _>>()?;
        let mut deleted = Vec::with_capacity(digests.len());
        for digest in digests {
            // Checked again in the statement: a job inserted meanwhile touched `last_used_at`
            // under the row's lock (see `insert_job_sealed`), which PostgreSQL re-reads here.
            let res = sqlx::query(&format!(
                "DELETE FROM contexts WHERE digest = $2 AND {unused}"
            ))
            .bind(cutoff)
            .bind(digest.as_str())
            .execute(&mut *tx)
            .await?;
            if res.rows_affected() == 1 {
                deleted.push(digest);
            }
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// Deletes up to `pieces` stored pieces of context `digest`, unless it was stored again
    /// meanwhile; returns how many went (0 once none are left).
    pub async fn delete_context_pieces(&self, digest: &str, pieces: i64) -> StoreResult<u64> {
        let res = sqlx::query(
            "DELETE FROM context_chunks WHERE digest = $1 AND seq IN \
             (SELECT seq FROM context_chunks WHERE digest = $1 ORDER BY seq LIMIT $2) \
             AND NOT EXISTS (SELECT 1 FROM contexts WHERE digest = $1)",
        )
        .bind(digest)
        .bind(pieces)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected())
    }

    /// The contexts of live jobs (queued, building, stitching): what a cache must keep.
    pub async fn live_contexts(&self) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT context FROM jobs WHERE state IN ('queued', 'building', 'stitching')",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("context")?)).collect()
    }
}

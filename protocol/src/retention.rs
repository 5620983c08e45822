//! `GET /api/v1/admin/retention`: what the coordinator's retention keeps and what it removed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The retention setting of the coordinator that answered, and what its sweeps deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionStatus {
    /// The replica that answered (each replica counts its own sweeps).
    pub replica: String,
    /// `--retention` in seconds: ended jobs older than this are deleted; None when off.
    pub retention_secs: Option<u64>,
    /// How often it sweeps, in seconds.
    pub interval_secs: u64,
    /// `--context-cache-max-bytes`: the size its context cache is trimmed to.
    pub context_cache_max_bytes: u64,
    /// The cache's size after its last trim, in bytes.
    pub context_cache_bytes: u64,
    /// When its last sweep ended; None before the first.
    pub last_sweep_at: Option<DateTime<Utc>>,
    /// What the last sweep deleted, by kind (jobs, builds, leases, log_chunks, job_secrets,
    /// contexts, context_chunks, tag_heads, cached_files); kinds with nothing deleted are left out.
    pub last: BTreeMap<String, u64>,
    /// What every sweep since this replica started deleted, by kind.
    pub total: BTreeMap<String, u64>,
    /// Sweeps since this replica started.
    pub sweeps: u64,
}

//! A coordinator for one benchmark run, with the context, images and HTTP calls every run needs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use archfarm_e2e::archive::Tar;
use archfarm_e2e::{Coordinator, CoordinatorOptions, Database};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// The four platforms of every benchmark job.
pub const PLATFORMS: [&str; 4] = ["linux/amd64", "linux/arm64", "linux/ppc64le", "linux/s390x"];

/// Which database a coordinator runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DbKind {
    /// The embedded default: SQLite in the data directory.
    Sqlite,
    /// A scratch database on a PostgreSQL server (`--postgres`), dropped afterwards.
    Postgres,
}

impl DbKind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            DbKind::Sqlite => "sqlite",
            DbKind::Postgres => "postgres",
        }
    }
}

/// A running coordinator process and how to talk to it.
#[derive(Debug)]
pub struct Farm {
    /// The coordinator process (stopped on drop).
    pub coordinator: Coordinator,
    /// Its base URL.
    pub base: String,
    /// The context archive every job builds, uploaded once.
    pub context: String,
}

impl Farm {
    /// Starts a coordinator on `db` (blocking: call outside the async runtime).
    pub fn start(db: DbKind, postgres: &str) -> anyhow::Result<Farm> {
        Self::start_with_args(db, postgres, &[])
    }

    /// [`Farm::start`] with further coordinator flags.
    pub fn start_with_args(db: DbKind, postgres: &str, args: &[&str]) -> anyhow::Result<Farm> {
        let mut opts = CoordinatorOptions::default();
        for arg in args {
            opts = opts.arg(arg);
        }
        if db == DbKind::Postgres {
            let database = Database::postgres_at(postgres).map_err(|e| {
                anyhow::anyhow!("cannot create a scratch database on {postgres}: {e}")
            })?;
            opts = opts.database(Arc::new(database));
        }
        let coordinator = Coordinator::start_with(opts);
        let base = coordinator.url().to_string();
        Ok(Farm {
            coordinator,
            base,
            context: String::new(),
        })
    }

    /// The coordinator's process id.
    pub fn pid(&self) -> u32 {
        self.coordinator.pid()
    }

    /// Uploads a one-line Dockerfile as the context all jobs use.
    pub async fn upload_context(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        let archive = Tar::new()
            .file("Dockerfile", b"FROM scratch\n")
            .into_tar_gz();
        self.context = self.upload_archive(http, archive).await?;
        Ok(())
    }

    /// Uploads a context archive (`.tar.gz`); its digest.
    pub async fn upload_archive(
        &self,
        http: &reqwest::Client,
        archive: Vec<u8>,
    ) -> anyhow::Result<String> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&archive)));
        let url = format!("{}/api/v1/contexts/{digest}", self.base);
        crate::swarm::send(http.put(&url).body(archive), &format!("PUT {url}"), |s| {
            s.is_success()
        })
        .await?;
        Ok(digest)
    }

    /// Submits one four-platform job tagged `tag`; its id.
    pub async fn submit(&self, http: &reqwest::Client, tag: &str) -> anyhow::Result<Uuid> {
        submit_to(http, &self.base, &self.context, tag).await
    }

    /// When each build was queued (Unix ms), read from the database.
    pub fn queued_at(&self) -> anyhow::Result<HashMap<Uuid, f64>> {
        let rows = self
            .coordinator
            .database()
            .query("SELECT id, queued_at FROM builds");
        let mut out = HashMap::new();
        for line in rows.lines().filter(|l| !l.trim().is_empty()) {
            let (id, at) = line
                .split_once('|')
                .with_context(|| format!("unexpected row: {line}"))?;
            out.insert(
                id.trim()
                    .parse()
                    .with_context(|| format!("build id in {line}"))?,
                at.trim()
                    .parse()
                    .with_context(|| format!("queued_at in {line}"))?,
            );
        }
        Ok(out)
    }

    /// Counts jobs by state, from the database.
    pub fn job_states(&self) -> HashMap<String, i64> {
        let rows = self
            .coordinator
            .database()
            .query("SELECT state, COUNT(*) FROM jobs GROUP BY state");
        rows.lines()
            .filter_map(|l| l.split_once('|'))
            .filter_map(|(s, n)| Some((s.trim().to_string(), n.trim().parse().ok()?)))
            .collect()
    }

    /// Waits until no job is queued, building or stitching; how long that took.
    pub fn wait_all_ended(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let states = self.job_states();
            let open: i64 = ["queued", "building", "stitching"]
                .iter()
                .filter_map(|s| states.get(*s))
                .sum();
            if open == 0 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("{open} jobs still open after {timeout:?}: {states:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Submits one four-platform job of `context` tagged `tag` to the coordinator at `base`; its id.
pub async fn submit_to(
    http: &reqwest::Client,
    base: &str,
    context: &str,
    tag: &str,
) -> anyhow::Result<Uuid> {
    let url = format!("{base}/api/v1/jobs");
    let request = http.post(&url).json(&serde_json::json!({
        "context": context,
        "platforms": PLATFORMS,
        "tags": [tag],
    }));
    let body = crate::swarm::send(request, &format!("POST {url}"), |s| s.is_success())
        .await?
        .text()
        .await
        .with_context(|| format!("POST {url}: reading the answer"))?;
    let job: archfarm_protocol::api::Job =
        serde_json::from_str(&body).with_context(|| format!("job answer: {body}"))?;
    Ok(job.id)
}

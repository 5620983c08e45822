//! Soak: thousands of jobs through one coordinator with a short retention, to see that what it
//! keeps (the database, the data directory) stops growing once retention deletes as fast as jobs
//! arrive, and shrinks back when they stop (issue 18).
//!
//! Each job has a context archive of its own (incompressible, so the database and the cache hold
//! its full size), its four builds report a batch of log lines each, and each is stitched into an
//! index in the registry. Jobs arrive in waves; after each wave the database's size (SQLite: the
//! file with its WAL; PostgreSQL: `pg_database_size`) and the data directory's are sampled, and
//! again while the coordinator's retention deletes the last waves once the jobs stop.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use archfarm_e2e::archive::Tar;
use archfarm_e2e::Database;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::farm::{DbKind, Farm};
use crate::stats::round;
use crate::swarm::{self, Swarm};

/// Protocol-level agents (four per platform).
const AGENTS: usize = 16;
/// Jobs submitted (and their contexts uploaded) at once.
const SUBMIT_CONCURRENCY: usize = 8;
/// Log lines each build reports (about 100 bytes each).
const LOG_LINES: usize = 50;
/// Incompressible bytes in each job's context.
const CONTEXT_NOISE_BYTES: usize = 32 * 1024;
/// How long one wave may take to be stitched.
const WAVE_TIMEOUT: Duration = Duration::from_secs(600);

/// The size of one soak run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SoakShape {
    /// Jobs in all (four builds each).
    pub jobs: usize,
    /// Jobs per wave.
    pub wave: usize,
    /// The coordinator's `--retention`, in seconds.
    pub retention_secs: u64,
    /// Its `--retention-interval-secs`.
    pub interval_secs: u64,
}

/// What the coordinator keeps at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sizes {
    /// Seconds since the run started.
    pub at_secs: f64,
    /// Jobs submitted so far.
    pub jobs_submitted: usize,
    /// Jobs in the database.
    pub jobs_stored: i64,
    /// Bytes of the database (SQLite: the file and its WAL; PostgreSQL: `pg_database_size`).
    pub database_bytes: u64,
    /// Bytes under the coordinator's data directory (on SQLite it holds the database too).
    pub data_dir_bytes: u64,
    /// SQLite only: bytes of the file's pages in use (the rest are free pages the file keeps for
    /// reuse; SQLite does not shrink a file without `VACUUM`).
    pub live_bytes: Option<u64>,
}

/// One soak run.
#[derive(Debug, Clone, Serialize)]
pub struct SoakRun {
    /// The database the coordinator ran on.
    pub database: DbKind,
    /// Its size.
    pub shape: SoakShape,
    /// Seconds the whole run took.
    pub wall_secs: f64,
    /// Before the first job.
    pub start: Sizes,
    /// The sample with the largest database.
    pub peak: Sizes,
    /// After the jobs stopped and retention had run past the last of them.
    pub end: Sizes,
    /// Every sample, in order.
    pub samples: Vec<Sizes>,
    /// Jobs by final state, from the database at the end of the last wave.
    pub job_states: BTreeMap<String, i64>,
    /// `archfarm_retention_deleted_total` by kind, at the end.
    pub retention_deleted: BTreeMap<String, f64>,
}

/// Runs the soak on a fresh coordinator on `db`, with its builds' images in `registry`.
pub fn run(
    rt: &tokio::runtime::Runtime,
    db: DbKind,
    postgres: &str,
    registry: &str,
    shape: SoakShape,
) -> anyhow::Result<SoakRun> {
    let started = Instant::now();
    let retention = format!("{}s", shape.retention_secs);
    let interval = shape.interval_secs.to_string();
    let farm = Farm::start_with_args(
        db,
        postgres,
        &[
            "--retention",
            &retention,
            "--retention-interval-secs",
            &interval,
        ],
    )?;
    let http = swarm::client()?;
    let repository = "bench/soak";
    let (images, swarm) = rt.block_on(async {
        let images = crate::images::push_platform_images(
            &http,
            registry,
            repository,
            &crate::farm::PLATFORMS,
        )
        .await?;
        let swarm = Swarm::register(
            &http,
            &farm.base,
            farm.coordinator.join_token(),
            AGENTS,
            &crate::farm::PLATFORMS,
        )
        .await?
        .with_log_lines(LOG_LINES);
        anyhow::Ok((images, swarm))
    })?;
    let sample = |submitted: usize| -> anyhow::Result<Sizes> {
        Ok(Sizes {
            at_secs: round(started.elapsed().as_secs_f64(), 1),
            jobs_submitted: submitted,
            jobs_stored: farm
                .coordinator
                .database()
                .count("SELECT COUNT(*) FROM jobs"),
            database_bytes: database_bytes(farm.coordinator.database())?,
            data_dir_bytes: tree_bytes(&farm.coordinator.data_dir()),
            live_bytes: live_bytes(farm.coordinator.database()),
        })
    };
    let mut samples = vec![sample(0)?];
    let mut submitted = 0;
    let mut job_states = BTreeMap::new();
    while submitted < shape.jobs {
        let n = shape.wave.min(shape.jobs - submitted);
        let first = submitted;
        rt.block_on(async {
            futures::stream::iter(first..first + n)
                .map(|i| {
                    let (farm, http) = (&farm, &http);
                    async move {
                        let context = farm.upload_archive(http, context_archive(i)).await?;
                        let tag = format!("{registry}/{repository}:soak-{i}");
                        crate::farm::submit_to(http, &farm.base, &context, &tag).await
                    }
                })
                .buffer_unordered(SUBMIT_CONCURRENCY)
                .try_collect::<Vec<_>>()
                .await?;
            swarm
                .drive(&images, n * 4, CancellationToken::new())
                .await
                .map(|_| ())
        })?;
        submitted += n;
        farm.wait_all_ended(WAVE_TIMEOUT)?;
        job_states = farm.job_states().into_iter().collect();
        let s = sample(submitted)?;
        eprintln!(
            "    {submitted} jobs at {:.0} s: {} stored, database {:.1} MiB, data directory {:.1} MiB",
            s.at_secs,
            s.jobs_stored,
            mib(s.database_bytes),
            mib(s.data_dir_bytes)
        );
        samples.push(s);
    }
    // The jobs stop: retention deletes the last ones once they are older than the retention, at
    // its next pass.
    let settle = Duration::from_secs(shape.retention_secs + 2 * shape.interval_secs + 5);
    let until = Instant::now() + settle;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(shape.interval_secs.max(5)));
        samples.push(sample(submitted)?);
    }
    let end = *samples.last().expect("samples were taken");
    eprintln!(
        "    settled at {:.0} s: {} jobs stored, database {:.1} MiB, data directory {:.1} MiB",
        end.at_secs,
        end.jobs_stored,
        mib(end.database_bytes),
        mib(end.data_dir_bytes)
    );
    let peak = *samples
        .iter()
        .max_by_key(|s| s.database_bytes)
        .expect("samples were taken");
    let metrics = archfarm_e2e::scrape(&farm.coordinator);
    let retention_deleted = metrics
        .named("archfarm_retention_deleted_total")
        .filter_map(|s| Some((s.labels.get("kind")?.clone(), s.value)))
        .collect();
    Ok(SoakRun {
        database: db,
        shape,
        wall_secs: round(started.elapsed().as_secs_f64(), 1),
        start: samples[0],
        peak,
        end,
        samples,
        job_states,
        retention_deleted,
    })
}

/// A context archive of its own for job `i`: a Dockerfile and incompressible bytes.
fn context_archive(i: usize) -> Vec<u8> {
    let mut noise = Vec::with_capacity(CONTEXT_NOISE_BYTES);
    let mut block = Sha256::digest(format!("soak context {i}").as_bytes());
    while noise.len() < CONTEXT_NOISE_BYTES {
        noise.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    Tar::new()
        .file("Dockerfile", b"FROM scratch\nCOPY noise /\n")
        .file("noise", &noise)
        .into_tar_gz()
}

/// The database's size in bytes.
fn database_bytes(db: &Database) -> anyhow::Result<u64> {
    match db {
        Database::Sqlite(file) => Ok(["", "-wal", "-shm"]
            .iter()
            .map(|suffix| {
                let mut name = file.clone().into_os_string();
                name.push(suffix);
                std::fs::metadata(name).map(|m| m.len()).unwrap_or(0)
            })
            .sum()),
        Database::Postgres { .. } => {
            let out = db.query("SELECT pg_database_size(current_database())");
            out.trim()
                .parse()
                .with_context(|| format!("pg_database_size said {out:?}"))
        }
    }
}

/// SQLite: the bytes of pages in use; None on PostgreSQL.
fn live_bytes(db: &Database) -> Option<u64> {
    if db.is_postgres() {
        return None;
    }
    let pragma = |name: &str| -> Option<u64> {
        db.query(&format!("PRAGMA {name}"))
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    };
    Some((pragma("page_count")? - pragma("freelist_count")?) * pragma("page_size")?)
}

/// Bytes of the regular files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl SoakRun {
    /// This run's rows of the Markdown section's table: every sample, the peak marked.
    fn markdown_rows(&self, s: &mut String) {
        let mut last_submitted = 0;
        for (i, x) in self.samples.iter().enumerate() {
            let when = if i == 0 {
                "start".to_string()
            } else if i + 1 == self.samples.len() {
                "end".to_string()
            } else if x.jobs_submitted > last_submitted {
                format!(
                    "wave {}",
                    (x.jobs_submitted).div_ceil(self.shape.wave.max(1))
                )
            } else {
                "jobs stopped".to_string()
            };
            last_submitted = x.jobs_submitted;
            let peak = if x.at_secs == self.peak.at_secs {
                " (peak)"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "| {} | {when}{peak} | {:.0} s | {} | {} | {:.1} MiB | {} | {:.1} MiB |",
                self.database.name(),
                x.at_secs,
                x.jobs_submitted,
                x.jobs_stored,
                mib(x.database_bytes),
                x.live_bytes
                    .map_or("-".to_string(), |b| format!("{:.1} MiB", mib(b))),
                mib(x.data_dir_bytes)
            );
        }
    }
}

/// The Markdown section for the soak runs.
pub fn markdown(runs: &[SoakRun]) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    let sh = first.shape;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## 8. Soak: what the coordinator keeps\n\n\
         {} jobs of four platforms each through one coordinator with `--retention {}s \
         --retention-interval-secs {}`, in waves of {}: each job with a context archive of its \
         own ({} KiB, incompressible), each build reporting {LOG_LINES} log lines, each job \
         stitched into an index in the registry, by {AGENTS} protocol-level agents. Sizes after \
         each wave and while retention deletes the last waves once the jobs stop (\"end\"); the \
         database is the SQLite file with its WAL, or `pg_database_size`; on SQLite the data \
         directory holds the database too.\n\n\
         | database | when | at | jobs submitted | jobs kept | database | of it in use | data directory |\n\
         |---|---|---|---|---|---|---|---|",
        sh.jobs,
        sh.retention_secs,
        sh.interval_secs,
        sh.wave,
        CONTEXT_NOISE_BYTES / 1024
    );
    for run in runs {
        run.markdown_rows(&mut s);
    }
    for run in runs {
        let deleted: Vec<String> = run
            .retention_deleted
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect();
        let _ = writeln!(
            s,
            "\n{}: {:.0} s in all; jobs at the end of the last wave by state {:?}; retention \
             deleted {}.",
            run.database.name(),
            run.wall_secs,
            run.job_states,
            if deleted.is_empty() {
                "nothing".to_string()
            } else {
                deleted.join(", ")
            }
        );
    }
    s.push('\n');
    s
}

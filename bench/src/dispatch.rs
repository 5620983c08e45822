//! Dispatch at scale: protocol-level agents against one coordinator process, in two phases.
//!
//! - **Backlog**: every build is queued before the agents start asking; they drain it as fast as
//!   the coordinator hands out leases. This gives the most dispatches per second. Each agent is
//!   always waiting in a lease call, so by Little's law a call takes agents / rate seconds: the
//!   per-call latency of this phase measures the queue of agents, not the dispatch path.
//! - **Streaming**: the agents wait, idle, in long polls while jobs arrive at a fixed rate. The
//!   time from a build being queued to its lease in an agent's hands is the dispatch latency a
//!   CI pipeline sees.
//!
//! In both, the latency of a lease is measured from the moment the build was queued *and* the
//! agent was asking (the later of the two) to the moment the lease arrived.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::farm::{DbKind, Farm};
use crate::procstat::{peak_rss_mb, rss_mb, CpuMeter};
use crate::stats::{round, summarize, Summary};
use crate::swarm::{self, LeaseSample, Swarm};

/// Jobs submitted at once while queueing the backlog.
const SUBMIT_CONCURRENCY: usize = 8;

/// How long the coordinator may take to stitch what the run left it.
const STITCH_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

/// The size of one dispatch run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Shape {
    /// Protocol-level agents, spread evenly over the four platforms.
    pub agents: usize,
    /// Builds queued before the backlog phase (four per job).
    pub queued_builds: usize,
    /// Builds submitted during the streaming phase (four per job).
    pub streaming_builds: usize,
    /// Builds per second offered during the streaming phase.
    pub arrival_per_s: f64,
}

/// The backlog phase.
#[derive(Debug, Clone, Serialize)]
pub struct Backlog {
    /// Seconds to queue the jobs (`POST /api/v1/jobs`, 8 at a time).
    pub submit_secs: f64,
    /// Jobs accepted per second meanwhile.
    pub submits_per_s: f64,
    /// Seconds from the agents' first lease call to the last lease.
    pub drain_secs: f64,
    /// Leases handed out per second.
    pub dispatches_per_s: f64,
    /// Lease-call latency (agent asking, build queued, to lease in hand).
    pub latency: Summary,
    /// Coordinator CPU during the drain, in seconds and in % of one core.
    pub coordinator_cpu_secs: f64,
    /// The same as a percentage of one core.
    pub coordinator_cpu_percent: f64,
    /// The benchmark's own agents' CPU meanwhile, % of one core (they share the machine).
    pub agents_cpu_percent: f64,
    /// Seconds after the drain until every job was stitched.
    pub stitch_drain_secs: f64,
}

/// The streaming phase.
#[derive(Debug, Clone, Serialize)]
pub struct Streaming {
    /// Builds per second actually dispatched.
    pub dispatches_per_s: f64,
    /// Build queued (agents idle) to lease in hand.
    pub latency: Summary,
    /// Coordinator CPU during the phase, in % of one core.
    pub coordinator_cpu_percent: f64,
}

/// One dispatch run.
#[derive(Debug, Clone, Serialize)]
pub struct DispatchRun {
    /// The database the coordinator ran on.
    pub database: DbKind,
    /// Its size.
    pub shape: Shape,
    /// Seconds to register every agent.
    pub register_secs: f64,
    /// Backlog phase.
    pub backlog: Backlog,
    /// Streaming phase.
    pub streaming: Streaming,
    /// The coordinator's peak resident memory over the run, MiB.
    pub coordinator_peak_rss_mb: f64,
    /// Its resident memory at the end, MiB.
    pub coordinator_end_rss_mb: f64,
    /// Jobs by final state (all should be `succeeded`).
    pub job_states: std::collections::HashMap<String, i64>,
}

/// Runs both phases on a fresh coordinator.
pub fn run(
    rt: &tokio::runtime::Runtime,
    db: DbKind,
    postgres: &str,
    registry: &str,
    shape: Shape,
) -> anyhow::Result<DispatchRun> {
    let http = swarm::client()?;
    let mut farm = Farm::start(db, postgres)?;
    let pid = farm.pid();
    let repository = "bench/dispatch";
    let (images, swarm, register_secs) = rt.block_on(async {
        farm.upload_context(&http).await?;
        let images = crate::images::push_platform_images(
            &http,
            registry,
            repository,
            &crate::farm::PLATFORMS,
        )
        .await?;
        let t = Instant::now();
        let swarm = Swarm::register(
            &http,
            &farm.base,
            farm.coordinator.join_token(),
            shape.agents,
            &crate::farm::PLATFORMS,
        )
        .await?;
        anyhow::Ok((images, swarm, t.elapsed().as_secs_f64()))
    })?;
    eprintln!(
        "    {} agents registered in {register_secs:.1} s",
        swarm.len()
    );

    // Backlog: queue everything, then let the agents loose.
    let jobs = shape.queued_builds / 4;
    let t = Instant::now();
    rt.block_on(
        futures::stream::iter(0..jobs)
            .map(|i| {
                let (farm, http) = (&farm, &http);
                async move {
                    farm.submit(http, &format!("{registry}/{repository}:backlog-{i}"))
                        .await
                }
            })
            .buffer_unordered(SUBMIT_CONCURRENCY)
            .try_collect::<Vec<_>>(),
    )?;
    let submit_secs = t.elapsed().as_secs_f64();
    eprintln!("    {} builds queued in {submit_secs:.1} s", jobs * 4);
    let meter = CpuMeter::start(pid)?;
    let own = CpuMeter::start(std::process::id())?;
    let samples = rt.block_on(swarm.drive(&images, jobs * 4, CancellationToken::new()))?;
    let (cpu_secs, cpu_percent) = meter.stop()?;
    let (_, agents_cpu_percent) = own.stop()?;
    let queued = farm.queued_at()?;
    let (latency, first, last) = latencies(&samples, &queued)?;
    let drain_secs = (last - first) / 1000.0;
    eprintln!(
        "    backlog drained: {} leases in {drain_secs:.1} s ({:.0}/s), lease p50 {:.1} ms p99 {:.1} ms",
        samples.len(),
        samples.len() as f64 / drain_secs,
        latency.p50_ms,
        latency.p99_ms
    );
    let stitch_drain = farm.wait_all_ended(STITCH_DRAIN_TIMEOUT)?;
    let backlog = Backlog {
        submit_secs: round(submit_secs, 2),
        submits_per_s: round(jobs as f64 / submit_secs, 1),
        drain_secs: round(drain_secs, 2),
        dispatches_per_s: round(samples.len() as f64 / drain_secs, 1),
        latency: latency.rounded(),
        coordinator_cpu_secs: round(cpu_secs, 2),
        coordinator_cpu_percent: round(cpu_percent, 1),
        agents_cpu_percent: round(agents_cpu_percent, 1),
        stitch_drain_secs: round(stitch_drain.as_secs_f64(), 2),
    };

    // Streaming: the agents wait first, then jobs arrive at a steady rate (open loop: a slow
    // answer does not delay the next submission).
    let stream_jobs = shape.streaming_builds / 4;
    let meter = CpuMeter::start(pid)?;
    let samples = rt.block_on(async {
        let started = CancellationToken::new();
        let driving = {
            let (swarm, images, started) = (swarm.clone(), images.clone(), started.clone());
            tokio::spawn(async move { swarm.drive(&images, stream_jobs * 4, started).await })
        };
        started.cancelled().await;
        // Let the last lease calls reach the coordinator and settle into their waits.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let every = Duration::from_secs_f64(4.0 / shape.arrival_per_s);
        let begin = tokio::time::Instant::now();
        let mut submits = tokio::task::JoinSet::new();
        for i in 0..stream_jobs {
            tokio::time::sleep_until(begin + every * i as u32).await;
            let (farm_base, http) = (farm.base.clone(), http.clone());
            let context = farm.context.clone();
            let tag = format!("{registry}/{repository}:stream-{i}");
            submits.spawn(async move {
                crate::farm::submit_to(&http, &farm_base, &context, &tag).await
            });
        }
        while let Some(r) = submits.join_next().await {
            r.context("a submission panicked")??;
        }
        driving.await.context("the agents panicked")?
    })?;
    let (_, cpu_percent) = meter.stop()?;
    let queued = farm.queued_at()?;
    let (latency, first, last) = latencies(&samples, &queued)?;
    let streaming = Streaming {
        dispatches_per_s: round(samples.len() as f64 / ((last - first) / 1000.0), 1),
        latency: latency.rounded(),
        coordinator_cpu_percent: round(cpu_percent, 1),
    };
    eprintln!(
        "    streaming at {}/s: build queued to lease p50 {:.1} ms p99 {:.1} ms",
        shape.arrival_per_s, streaming.latency.p50_ms, streaming.latency.p99_ms
    );
    farm.wait_all_ended(STITCH_DRAIN_TIMEOUT)?;
    Ok(DispatchRun {
        database: db,
        shape,
        register_secs: round(register_secs, 2),
        backlog,
        streaming,
        coordinator_peak_rss_mb: round(peak_rss_mb(pid)?, 1),
        coordinator_end_rss_mb: round(rss_mb(pid)?, 1),
        job_states: farm.job_states(),
    })
}

/// Each lease's latency (from the later of "build queued" and "agent asked" to "lease in hand"),
/// with the first ask and the last lease (wall ms).
fn latencies(
    samples: &[LeaseSample],
    queued: &std::collections::HashMap<uuid::Uuid, f64>,
) -> anyhow::Result<(Summary, f64, f64)> {
    let mut ms = Vec::with_capacity(samples.len());
    let (mut first, mut last) = (f64::MAX, f64::MIN);
    for s in samples {
        let queued_at = *queued
            .get(&s.build_id)
            .with_context(|| format!("leased build {} is not in the database", s.build_id))?;
        let ready = queued_at.max(s.sent_ms);
        // The database keeps whole milliseconds: a lease may seem to arrive before its build.
        ms.push((s.received_ms - ready).max(0.0));
        first = first.min(ready);
        last = last.max(s.received_ms);
    }
    anyhow::ensure!(!samples.is_empty(), "no lease was handed out");
    Ok((summarize(&ms), first, last))
}

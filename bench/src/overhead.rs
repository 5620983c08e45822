//! End-to-end overhead: a real four-platform job (the `archfarm` CLI, a coordinator on SQLite, a
//! native agent and an emulating one, buildah and QEMU, the local registry) against the same four
//! buildah builds and pushes run directly, at the same time, in the same run.
//!
//! The four builds share two cores either way, so the fair floor is the four direct builds run
//! concurrently: the job cannot end before the last of them would. The slowest platform's direct
//! build alone (no neighbours) is reported too.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use archfarm_e2e::{
    run_cli, Agent, AgentOptions, BuildContext, Buildah, Coordinator, Registry, CLI_TIMEOUT,
};
use serde::Serialize;

use crate::farm::PLATFORMS;
use crate::stats::{median, round};

/// What the overhead part measured.
#[derive(Debug, Clone, Serialize)]
pub struct OverheadRun {
    /// The image built: `examples/hello`.
    pub context: String,
    /// Runs of each side.
    pub runs: usize,
    /// `archfarm build` wall time for each run, seconds.
    pub job_secs: Vec<f64>,
    /// The four direct buildah build + push, run concurrently: until the last ended, each run.
    pub direct_secs: Vec<f64>,
    /// Each platform's direct build + push (median over runs), seconds.
    pub direct_by_platform_secs: BTreeMap<String, f64>,
    /// The platform whose direct build + push took longest.
    pub slowest_platform: String,
    /// That platform's direct build + push with nothing else running, seconds.
    pub slowest_alone_secs: f64,
    /// Median job time minus median direct time: what archfarm adds.
    pub overhead_secs: f64,
    /// The same as a share of the direct time, percent.
    pub overhead_percent: f64,
    /// The same as a share of a one-minute build, percent.
    pub overhead_percent_of_one_minute: f64,
    /// Where a job's time went (medians, seconds): CLI start to job accepted (packing and
    /// uploading the context), accepted to first lease, first lease to last build pushed, last
    /// build pushed to index pushed, index pushed to CLI exit.
    pub job_phases_secs: BTreeMap<String, f64>,
}

/// Runs `runs` archfarm jobs and `runs` direct sets, alternating, against `registry`.
pub fn run(registry: &Registry, runs: usize) -> anyhow::Result<OverheadRun> {
    archfarm_e2e::preflight();
    let context = BuildContext::hello();
    let coordinator = Coordinator::start();
    // The quick start's farm: this machine natively, and QEMU for the three others at once.
    let _native = Agent::start(
        &coordinator,
        AgentOptions::new("native")
            .platform("linux/amd64")
            .emulate("none"),
    );
    let _emulating = Agent::start(
        &coordinator,
        AgentOptions::new("emulating").capacity(3).emulate("auto"),
    );
    let mut job_secs = Vec::new();
    let mut direct_secs = Vec::new();
    let mut by_platform: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in 0..runs {
        let (wall, each) = direct(registry, &context, &format!("direct-{i}"))?;
        eprintln!("    direct buildah, run {}: {wall:.2} s {each:?}", i + 1);
        direct_secs.push(wall);
        for (p, s) in each {
            by_platform.entry(p).or_default().push(s);
        }
        let (wall, job_phases) = job(&coordinator, registry, &context, i)?;
        eprintln!("    archfarm build, run {}: {wall:.2} s", i + 1);
        job_secs.push(wall);
        for (k, v) in job_phases {
            phases.entry(k).or_default().push(v);
        }
    }
    let direct_by_platform_secs: BTreeMap<String, f64> = by_platform
        .iter()
        .map(|(p, s)| (p.clone(), round(median(s), 2)))
        .collect();
    let slowest_platform = direct_by_platform_secs
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(p, _)| p.clone())
        .context("no direct build ran")?;
    let t = Instant::now();
    build_and_push(
        &Buildah::new(),
        &slowest_platform,
        &context,
        &format!("{}/bench/direct:alone", registry.host()),
    )?;
    let slowest_alone_secs = t.elapsed().as_secs_f64();
    let overhead = median(&job_secs) - median(&direct_secs);
    Ok(OverheadRun {
        context: "examples/hello".into(),
        runs,
        job_secs: job_secs.iter().map(|s| round(*s, 2)).collect(),
        direct_secs: direct_secs.iter().map(|s| round(*s, 2)).collect(),
        direct_by_platform_secs,
        slowest_platform,
        slowest_alone_secs: round(slowest_alone_secs, 2),
        overhead_secs: round(overhead, 2),
        overhead_percent: round(100.0 * overhead / median(&direct_secs), 1),
        overhead_percent_of_one_minute: round(100.0 * overhead / 60.0, 1),
        job_phases_secs: phases
            .iter()
            .map(|(k, v)| (k.clone(), round(median(v), 2)))
            .collect(),
    })
}

/// The four platforms built and pushed by buildah directly, concurrently, each in its own
/// storage: the wall time until the last ended, and each one's time.
fn direct(
    registry: &Registry,
    context: &BuildContext,
    tag: &str,
) -> anyhow::Result<(f64, BTreeMap<String, f64>)> {
    let t = Instant::now();
    let results: Vec<anyhow::Result<(String, f64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = PLATFORMS
            .iter()
            .map(|platform| {
                let arch = platform.rsplit('/').next().unwrap_or(platform);
                let target = format!("{}/bench/direct:{tag}-{arch}", registry.host());
                scope.spawn(move || {
                    let t = Instant::now();
                    build_and_push(&Buildah::new(), platform, context, &target)?;
                    Ok((platform.to_string(), t.elapsed().as_secs_f64()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a build thread panicked")))
            })
            .collect()
    });
    let wall = t.elapsed().as_secs_f64();
    let each = results
        .into_iter()
        .map(|r| r.map(|(p, s)| (p, round(s, 2))))
        .collect::<anyhow::Result<_>>()?;
    Ok((wall, each))
}

/// `buildah build` then `buildah push` to the registry, as an engineer would without archfarm
/// (vfs storage and chroot isolation, as the agent uses).
fn build_and_push(
    buildah: &Buildah,
    platform: &str,
    context: &BuildContext,
    target: &str,
) -> anyhow::Result<()> {
    let image = format!("localhost/bench-{}", uuid::Uuid::new_v4().simple());
    buildah
        .build(platform, None, &image, context.path())
        .map_err(anyhow::Error::msg)?;
    buildah
        .try_run(&[
            "push",
            "--tls-verify=false",
            &image,
            &format!("docker://{target}"),
        ])
        .map(drop)
        .map_err(anyhow::Error::msg)
}

fn wall_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One `archfarm build` of all four platforms: its wall time and where the time went.
fn job(
    coordinator: &Coordinator,
    registry: &Registry,
    context: &BuildContext,
    run: usize,
) -> anyhow::Result<(f64, BTreeMap<String, f64>)> {
    let tag = format!("{}/bench/hello:run-{run}", registry.host());
    let platforms = PLATFORMS.join(",");
    let spawned = wall_secs();
    let t = Instant::now();
    let out = run_cli(
        coordinator.url(),
        None,
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            &platforms,
            "-t",
            &tag,
            &context.arg(),
        ],
        CLI_TIMEOUT,
    );
    let wall = t.elapsed().as_secs_f64();
    let exited = wall_secs();
    if !out.status.success() {
        bail!(
            "archfarm build failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let job = coordinator
        .jobs()
        .into_iter()
        .find(|j| j.tags.contains(&tag))
        .context("the job is not listed")?;
    let secs = |t: chrono::DateTime<chrono::Utc>| t.timestamp_micros() as f64 / 1e6;
    let created = secs(job.created_at);
    let finished = secs(job.finished_at.context("the job has no end time")?);
    let first_lease = job
        .builds
        .iter()
        .filter_map(|b| b.started_at.map(secs))
        .fold(f64::MAX, f64::min);
    let last_pushed = job
        .builds
        .iter()
        .filter_map(|b| b.finished_at.map(secs))
        .fold(f64::MIN, f64::max);
    let phases = BTreeMap::from([
        ("1 cli start to job accepted".to_string(), created - spawned),
        (
            "2 accepted to first lease".to_string(),
            first_lease - created,
        ),
        (
            "3 first lease to last build pushed".to_string(),
            last_pushed - first_lease,
        ),
        (
            "4 last build pushed to index pushed".to_string(),
            finished - last_pushed,
        ),
        ("5 index pushed to cli exit".to_string(), exited - finished),
    ]);
    // Make sure the coordinator saw the same run the CLI did.
    if job.index_digest.is_none() {
        bail!("job {} has no index digest", job.id);
    }
    Ok((wall, phases))
}

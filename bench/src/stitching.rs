//! Stitching: verifying four pushed per-platform manifests and pushing one index over them, against
//! the local registry. Measured twice: the coordinator's own `stitch` function called directly
//! (verify + push alone), and through a quiet coordinator (last build reported to index pushed,
//! from the database's timestamps), which adds the hand-off to the stitching task and its lease.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use archfarm_coordinator::store::{BuildRow, JobRow};
use archfarm_protocol::api::{BuildMode, BuildState, JobState};
use archfarm_protocol::{Digest, Platform};
use oci_client::secrets::RegistryAuth;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::farm::{DbKind, Farm, PLATFORMS};
use crate::images::Images;
use crate::stats::{summarize, Summary};
use crate::swarm::{self, Swarm};

/// Stitching figures.
#[derive(Debug, Clone, Serialize)]
pub struct StitchRun {
    /// `archfarm_coordinator::stitch::stitch` called directly: 4 manifests and 4 configs read and
    /// checked, one index pushed. The first call (connection set-up) is left out.
    pub direct: Summary,
    /// Through a coordinator on SQLite with 4 protocol-level agents: the last build's completion
    /// to the job's end, as the database records them (whole milliseconds).
    pub via_coordinator: Summary,
    /// The same jobs from submission to index pushed, as the client saw it (builds take no time).
    pub job_round_trip: Summary,
}

/// Measures `samples` stitches each way.
pub fn run(
    rt: &tokio::runtime::Runtime,
    registry: &str,
    samples: usize,
) -> anyhow::Result<StitchRun> {
    let http = swarm::client()?;
    let repository = "bench/stitch";
    let images = rt.block_on(crate::images::push_platform_images(
        &http, registry, repository, &PLATFORMS,
    ))?;
    let direct = rt.block_on(direct(registry, repository, &images, samples))?;
    eprintln!(
        "    stitch, direct: p50 {:.1} ms p99 {:.1} ms",
        direct.p50_ms, direct.p99_ms
    );

    let mut farm = Farm::start(DbKind::Sqlite, "")?;
    let round_trips = rt.block_on(async {
        farm.upload_context(&http).await?;
        let swarm = Swarm::register(
            &http,
            &farm.base,
            farm.coordinator.join_token(),
            4,
            &PLATFORMS,
        )
        .await?;
        let mut round_trips = Vec::with_capacity(samples);
        for i in 0..samples {
            let t = Instant::now();
            let tag = format!("{registry}/{repository}:job-{i}");
            let driving = {
                let (swarm, images) = (swarm.clone(), images.clone());
                tokio::spawn(async move { swarm.drive(&images, 4, CancellationToken::new()).await })
            };
            let job = farm.submit(&http, &tag).await?;
            driving.await.context("the agents panicked")??;
            wait_succeeded(&http, &farm.base, job).await?;
            round_trips.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::Ok(round_trips)
    })?;
    let rows = farm.coordinator.database().query(
        "SELECT j.finished_at - MAX(b.finished_at) FROM jobs j JOIN builds b ON b.job_id = j.id \
         WHERE j.state = 'succeeded' GROUP BY j.id, j.finished_at",
    );
    let via: Vec<f64> = rows
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .collect();
    if via.len() != samples {
        bail!(
            "expected {samples} stitched jobs in the database, found {}: {:?}",
            via.len(),
            farm.job_states()
        );
    }
    let run = StitchRun {
        direct: direct.rounded(),
        via_coordinator: summarize(&via).rounded(),
        job_round_trip: summarize(&round_trips).rounded(),
    };
    eprintln!(
        "    stitch, via the coordinator: p50 {:.0} ms; a 4-platform job of instant builds: p50 {:.1} ms",
        run.via_coordinator.p50_ms, run.job_round_trip.p50_ms
    );
    Ok(run)
}

/// Polls the job every 2 ms until it succeeds; an error when it ends otherwise.
async fn wait_succeeded(http: &reqwest::Client, base: &str, job: Uuid) -> anyhow::Result<()> {
    let url = format!("{base}/api/v1/jobs/{job}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job: archfarm_protocol::api::Job = http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .json()
            .await
            .context("job answer")?;
        match job.state {
            JobState::Succeeded => return Ok(()),
            s if s.is_terminal() => bail!("job {} ended {s:?}: {:?}", job.id, job.error),
            _ if Instant::now() > deadline => {
                bail!("job {} still {:?} after 60 s", job.id, job.state)
            }
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// Moves every tag without ordering them: each sample pushes its own tag, so no two jobs race,
/// and the bench measures stitching itself rather than the coordinator's database.
struct Unordered;

impl archfarm_coordinator::stitch::TagGate for Unordered {
    async fn claim(
        &self,
        _tag: &str,
    ) -> Result<Option<Duration>, archfarm_coordinator::stitch::StitchError> {
        Ok(Some(Duration::from_secs(60)))
    }

    async fn moved(
        &self,
        _tag: &str,
        _digest: &str,
    ) -> Result<(), archfarm_coordinator::stitch::StitchError> {
        Ok(())
    }
}

/// Calls the coordinator's stitching function `samples + 1` times (the first is a warm-up).
async fn direct(
    registry: &str,
    repository: &str,
    images: &Images,
    samples: usize,
) -> anyhow::Result<Summary> {
    let endpoint = archfarm_coordinator::stitch::Endpoint {
        client: archfarm_coordinator::stitch::client_for(registry, true),
        auth: RegistryAuth::Anonymous,
    };
    let endpoints = std::collections::HashMap::from([(registry.to_string(), endpoint)]);
    let builder = archfarm_coordinator::provenance::Builder {
        id: "http://bench:8080".into(),
    };
    let mut times = Vec::with_capacity(samples);
    for i in 0..=samples {
        let (job, builds) = rows(registry, repository, images, &format!("direct-{i}"))?;
        let t = Instant::now();
        archfarm_coordinator::stitch::stitch(&endpoints, &job, &builds, &builder, &Unordered)
            .await
            .context("stitching")?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(summarize(&times))
}

/// A job and its four succeeded builds, as the coordinator's store would hand them to `stitch`.
fn rows(
    registry: &str,
    repository: &str,
    images: &Images,
    tag: &str,
) -> anyhow::Result<(JobRow, Vec<BuildRow>)> {
    let platforms: Vec<Platform> = PLATFORMS
        .iter()
        .map(|p| Platform::parse(p))
        .collect::<Result<_, _>>()?;
    let job = JobRow {
        id: Uuid::new_v4(),
        state: JobState::Stitching,
        context: Digest::parse(&format!("sha256:{}", "0".repeat(64)))?,
        dockerfile: "Dockerfile".into(),
        build_args: Default::default(),
        target: None,
        emulation: Default::default(),
        tags: vec![format!("{registry}/{repository}:{tag}")],
        platforms: platforms.clone(),
        optional_platforms: Vec::new(),
        timeout_secs: 3600,
        warnings: Vec::new(),
        registry: registry.to_string(),
        repository: repository.to_string(),
        submitter: None,
        index_digest: None,
        index_media_type: None,
        index_size: None,
        error: None,
        created_at: 0,
        updated_at: 0,
        finished_at: None,
        secret_build_args: Vec::new(),
        secret_ids: Vec::new(),
        network: None,
        base_images: vec![],
        cache: Default::default(),
        image_meta: Default::default(),
        allow_foreign_binary: Vec::new(),
        // Measured as before provenance: the index and nothing else.
        attest_to: archfarm_protocol::provenance::AttestTo::None,
        smoke_test: None,
        provenance: Vec::new(),
    };
    let builds = platforms
        .into_iter()
        .map(|platform| {
            let image = images
                .get(&platform.to_string())
                .with_context(|| format!("no image for {platform}"))?;
            Ok(BuildRow {
                id: Uuid::new_v4(),
                job_id: job.id,
                platform,
                state: BuildState::Succeeded,
                agent_id: None,
                agent_name: None,
                mode: Some(BuildMode::Native),
                lease_token: None,
                digest: Some(image.digest.clone()),
                media_type: Some(image.media_type.clone()),
                size: Some(image.size as i64),
                attempts: 1,
                error: None,
                optional: false,
                decision: None,
                created_at: 0,
                queued_at: 0,
                started_at: None,
                finished_at: None,
                builder_host: None,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((job, builds))
}

//! Prometheus metrics at `/metrics`. Counters and histograms are updated where things happen; the
//! gauges (queue depth, oldest queued build, agents) are read from the database at each scrape, so
//! they are right even for work another coordinator on the same database did.
//!
//! Label values are bounded: platforms, modes, states, outcomes and route templates, never ids.

use std::collections::BTreeMap;
use std::time::Duration;

use archfarm_protocol::api::{Agent, BuildMode, JobState};
use archfarm_protocol::Platform;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::store::{QueuedBuild, Stopped};

/// How a build's attempt ended, for `archfarm_builds_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Pushed and reported.
    Succeeded,
    /// The build reported a failure, or gave up after too many attempts.
    Failed,
    /// Its lease lapsed (the agent stopped heartbeating): the attempt's work was lost.
    Lost,
    /// Its job ended while it ran (cancelled, timed out, or failed on another platform).
    Cancelled,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Lost => "lost",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// Build times run from seconds (a cached native build) to hours (a compiler under QEMU).
const BUILD_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];
/// Stitching is a handful of registry round trips, longer while the registry is away.
const STITCH_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// HTTP latencies, to the response's head: a lease long poll lands in the last buckets, an event
/// stream or followed log in the first (its body is not timed).
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// Every metric of one coordinator, in a registry of its own (no process-wide globals).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Held from setting the gauges to encoding them, so two scrapes at once (an HA pair of
    /// Prometheus servers) never see the moment between a gauge's reset and its refill.
    scrape_lock: std::sync::Mutex<()>,
    jobs: IntCounterVec,
    builds: IntCounterVec,
    build_duration: HistogramVec,
    queued: IntGaugeVec,
    oldest_queued: prometheus::GaugeVec,
    agents: IntGaugeVec,
    lease_expiries: IntCounter,
    stitch_duration: Histogram,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    retention_deleted: IntCounterVec,
    retention_sweeps: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every archfarm metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
            r.register(Box::new(m.clone()))
                .expect("metric names are unique");
            m
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let jobs = counter(
            "archfarm_jobs_total",
            "Jobs that entered a state: queued when submitted, then succeeded, failed or cancelled.",
            &["state"],
        );
        let builds = counter(
            "archfarm_builds_total",
            "Build attempts that ended, by platform, native or emulated, and outcome (succeeded, failed, lost, cancelled).",
            &["platform", "mode", "outcome"],
        );
        let http_requests = counter(
            "archfarm_http_requests_total",
            "HTTP requests answered, by method, matched route and status code.",
            &["method", "route", "status"],
        );
        let build_duration = reg(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "archfarm_build_duration_seconds",
                    "Time from lease to pushed image of succeeded builds.",
                )
                .buckets(BUILD_BUCKETS.to_vec()),
                &["platform", "mode"],
            )
            .expect("valid metric"),
        );
        let http_duration = reg(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "archfarm_http_request_duration_seconds",
                    "Time to answer HTTP requests (to the first byte for streams), by method and matched route.",
                )
                .buckets(HTTP_BUCKETS.to_vec()),
                &["method", "route"],
            )
            .expect("valid metric"),
        );
        let queued = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new("archfarm_queued_builds", "Builds waiting for an agent."),
                &["platform"],
            )
            .expect("valid metric"),
        );
        let oldest_queued = reg(
            &registry,
            prometheus::GaugeVec::new(
                Opts::new(
                    "archfarm_oldest_queued_build_age_seconds",
                    "How long the longest-waiting queued build of a platform has waited.",
                ),
                &["platform"],
            )
            .expect("valid metric"),
        );
        let agents = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "archfarm_agents",
                    "Registered agents per platform they serve, natively or emulated, and state.",
                ),
                &["platform", "mode", "state"],
            )
            .expect("valid metric"),
        );
        let lease_expiries = reg(
            &registry,
            IntCounter::new(
                "archfarm_lease_expiries_total",
                "Leases taken back because their agent stopped heartbeating.",
            )
            .expect("valid metric"),
        );
        let stitch_duration = reg(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "archfarm_stitch_duration_seconds",
                    "Time to verify the per-platform manifests and push the index, retries included.",
                )
                .buckets(STITCH_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
        );
        let retention_deleted = counter(
            "archfarm_retention_deleted_total",
            "Rows and cached files retention deleted, by kind (jobs, builds, leases, log_chunks, job_secrets, contexts, context_chunks, cached_files).",
            &["kind"],
        );
        let retention_sweeps = reg(
            &registry,
            IntCounter::new(
                "archfarm_retention_sweeps_total",
                "Retention sweeps this coordinator ran.",
            )
            .expect("valid metric"),
        );
        Metrics {
            registry,
            retention_deleted,
            retention_sweeps,
            scrape_lock: std::sync::Mutex::new(()),
            jobs,
            builds,
            build_duration,
            queued,
            oldest_queued,
            agents,
            lease_expiries,
            stitch_duration,
            http_requests,
            http_duration,
        }
    }

    /// A job entered `state` (submitted as queued, or ended).
    pub fn job_entered(&self, state: JobState) {
        self.jobs.with_label_values(&[state.as_str()]).inc();
    }

    /// A job ended as `state`, stopping the builds in `stopped` (counted as cancelled).
    pub fn job_ended(&self, state: JobState, stopped: &Stopped) {
        self.job_entered(state);
        for (platform, mode) in &stopped.running {
            self.build_ended(platform, *mode, Outcome::Cancelled, None);
        }
    }

    /// A build attempt ended; `ran_for` is observed for succeeded builds.
    pub fn build_ended(
        &self,
        platform: &Platform,
        mode: Option<BuildMode>,
        outcome: Outcome,
        ran_for: Option<Duration>,
    ) {
        let platform = platform.to_string();
        let mode = mode.map_or("unknown", BuildMode::as_str);
        self.builds
            .with_label_values(&[platform.as_str(), mode, outcome.as_str()])
            .inc();
        if let (Outcome::Succeeded, Some(d)) = (outcome, ran_for) {
            self.build_duration
                .with_label_values(&[platform.as_str(), mode])
                .observe(d.as_secs_f64());
        }
    }

    /// A retention sweep ended, having deleted `deleted`.
    pub fn retention_swept(&self, deleted: &crate::store::Deleted) {
        self.retention_sweeps.inc();
        for (kind, n) in &deleted.rows {
            self.retention_deleted.with_label_values(&[kind]).inc_by(*n);
        }
    }

    /// A lease was taken back from a silent agent.
    pub fn lease_expired(&self) {
        self.lease_expiries.inc();
    }

    /// A job's stitching ended, one way or the other, after `took`.
    pub fn stitched(&self, took: Duration) {
        self.stitch_duration.observe(took.as_secs_f64());
    }

    /// An HTTP request was answered. `route` must be a route template, never a raw path.
    pub fn http_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.http_requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[method, route])
            .observe(took.as_secs_f64());
    }

    /// Sets the gauges from the current queue and fleet. Every platform that is queued or that a
    /// registered agent serves has a queue series (0 when empty, so graphs and alerts see an empty
    /// queue rather than a gap); platforms that are neither are dropped, not left at a stale value.
    pub fn set_gauges(&self, now_ms: i64, queued: &[QueuedBuild], agents: &[Agent]) {
        self.queued.reset();
        self.oldest_queued.reset();
        let mut per_platform: BTreeMap<String, (i64, Option<i64>)> = agents
            .iter()
            .flat_map(|a| a.native_platforms.iter().chain(&a.emulated_platforms))
            .map(|p| (p.to_string(), (0, None)))
            .collect();
        for b in queued {
            let e = per_platform.entry(b.platform.to_string()).or_default();
            e.0 += 1;
            e.1 = Some(e.1.map_or(b.queued_at, |t| t.min(b.queued_at)));
        }
        for (platform, (count, oldest)) in per_platform {
            self.queued
                .with_label_values(&[platform.as_str()])
                .set(count);
            let age = oldest.map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
            self.oldest_queued
                .with_label_values(&[platform.as_str()])
                .set(age);
        }
        self.agents.reset();
        for agent in agents {
            let state = agent.state.as_str();
            let served = agent
                .native_platforms
                .iter()
                .map(|p| (p, "native"))
                .chain(agent.emulated_platforms.iter().map(|p| (p, "emulated")));
            for (platform, mode) in served {
                self.agents
                    .with_label_values(&[platform.to_string().as_str(), mode, state])
                    .inc();
            }
        }
    }

    /// Sets the gauges (see [`Metrics::set_gauges`]) and encodes everything, as one step.
    pub fn scrape(&self, now_ms: i64, queued: &[QueuedBuild], agents: &[Agent]) -> String {
        let _one_at_a_time = self
            .scrape_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.set_gauges(now_ms, queued, agents);
        self.encode()
    }

    /// Everything in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text encoder writes to a Vec");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(s: &str) -> Platform {
        s.parse().unwrap()
    }

    fn queued(p: &str, at: i64) -> QueuedBuild {
        QueuedBuild {
            id: uuid::Uuid::new_v4(),
            job_id: uuid::Uuid::new_v4(),
            platform: platform(p),
            emulation: archfarm_protocol::api::EmulationPolicy::Fallback,
            repository: "r/x".into(),
            queued_at: at,
            attempts: 0,
            optional: false,
            network: None,
        }
    }

    #[test]
    fn counters_histograms_and_gauges_render() {
        let m = Metrics::new();
        m.job_entered(JobState::Queued);
        m.job_entered(JobState::Succeeded);
        let arm = platform("linux/arm64");
        m.build_ended(
            &arm,
            Some(BuildMode::Emulated),
            Outcome::Succeeded,
            Some(Duration::from_secs(42)),
        );
        m.build_ended(&arm, Some(BuildMode::Native), Outcome::Lost, None);
        m.http_request("GET", "/api/v1/jobs/{id}", 200, Duration::from_millis(3));
        m.set_gauges(
            10_000,
            &[queued("linux/s390x", 4_000), queued("linux/s390x", 7_000)],
            &[],
        );
        let text = m.encode();
        for want in [
            "archfarm_jobs_total{state=\"queued\"} 1",
            "archfarm_jobs_total{state=\"succeeded\"} 1",
            "archfarm_builds_total{mode=\"emulated\",outcome=\"succeeded\",platform=\"linux/arm64\"} 1",
            "archfarm_builds_total{mode=\"native\",outcome=\"lost\",platform=\"linux/arm64\"} 1",
            "archfarm_build_duration_seconds_count{mode=\"emulated\",platform=\"linux/arm64\"} 1",
            "archfarm_build_duration_seconds_sum{mode=\"emulated\",platform=\"linux/arm64\"} 42",
            "archfarm_build_duration_seconds_bucket{mode=\"emulated\",platform=\"linux/arm64\",le=\"60\"} 1",
            "archfarm_build_duration_seconds_bucket{mode=\"emulated\",platform=\"linux/arm64\",le=\"30\"} 0",
            "archfarm_http_requests_total{method=\"GET\",route=\"/api/v1/jobs/{id}\",status=\"200\"} 1",
            "archfarm_queued_builds{platform=\"linux/s390x\"} 2",
            "archfarm_oldest_queued_build_age_seconds{platform=\"linux/s390x\"} 6",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        // A lost attempt is not a duration sample.
        assert!(!text.contains("archfarm_build_duration_seconds_count{mode=\"native\""));

        // The queue emptied: an agent still serves s390x, so its queue reads 0; nothing serves or
        // waits for riscv64 any more, so that series goes rather than stay at its last value.
        m.set_gauges(9_000, &[queued("linux/riscv64", 8_000)], &[]);
        assert!(m
            .encode()
            .contains("archfarm_queued_builds{platform=\"linux/riscv64\"} 1"));
        let z15 = Agent {
            id: uuid::Uuid::new_v4(),
            name: "z15".into(),
            native_platforms: vec![platform("linux/s390x")],
            emulated_platforms: vec![],
            capacity: 1,
            running: 0,
            state: archfarm_protocol::api::AgentState::Online,
            last_seen: chrono::Utc::now(),
            default_network: None,
            allowed_networks: vec![],
            storage_driver: None,
            storage: None,
            drain_reason: None,
        };
        m.set_gauges(20_000, &[], &[z15]);
        let text = m.encode();
        for want in [
            "archfarm_queued_builds{platform=\"linux/s390x\"} 0",
            "archfarm_oldest_queued_build_age_seconds{platform=\"linux/s390x\"} 0",
            "archfarm_agents{mode=\"native\",platform=\"linux/s390x\",state=\"online\"} 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        assert!(!text.contains("linux/riscv64"));
    }
}

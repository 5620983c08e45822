//! Watching the farm from outside: the Prometheus metrics at `GET /metrics` move as a real
//! multi-arch job goes through (queue gauges while it waits, build and stitch histograms, counters
//! by outcome, HTTP metrics by route template and never by id), and a build that prints far more
//! than the coordinator keeps is cut at the cap with a marker while the build still succeeds and
//! neither the coordinator nor the agent holds the flood in memory.
//!
//! Real registry, coordinator, agents, buildah and QEMU, as in the other end-to-end tests.

use std::thread;
use std::time::{Duration, Instant};

use archfarm_e2e::metrics::Histogram;
use archfarm_e2e::{
    peak_rss_bytes, preflight, scrape, Agent, AgentOptions, BuildContext, Coordinator,
    CoordinatorOptions, Registry, Scrape,
};
use archfarm_protocol::api::{BuildMode, BuildState, Job, JobState};
use archfarm_protocol::events::TRUNCATION_MARKER;
use reqwest::Method;
use uuid::Uuid;

/// The job's platforms: amd64 built natively, arm64 under QEMU.
const PLATFORMS: [&str; 2] = ["linux/amd64", "linux/arm64"];

/// How long a job of the example may take (arm64 under QEMU on two cores).
const JOB_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The build of `platform` in a job record.
fn build_of<'a>(job: &'a Job, platform: &str) -> &'a archfarm_protocol::api::Build {
    job.builds
        .iter()
        .find(|b| b.platform.to_string() == platform)
        .unwrap_or_else(|| panic!("job has no build for {platform}: {job:#?}"))
}

/// Scrapes until `ready` holds for a scrape and returns it; after `timeout` panics with the
/// samples of `show` (metric names) from the last scrape.
fn wait_scrape(
    coordinator: &Coordinator,
    timeout: Duration,
    what: &str,
    show: &[&str],
    mut ready: impl FnMut(&Scrape) -> bool,
) -> Scrape {
    let start = Instant::now();
    loop {
        let scraped = scrape(coordinator);
        if ready(&scraped) {
            return scraped;
        }
        if start.elapsed() >= timeout {
            let seen: Vec<_> = show.iter().flat_map(|name| scraped.named(name)).collect();
            panic!(
                "timed out after {timeout:?} waiting for {what} in /metrics; last seen: {seen:#?}"
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// How much a counter (or histogram `_count`/`_sum`) with exactly `labels` grew between scrapes;
/// a series not yet exposed counts as 0.
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let v = |s: &Scrape| s.value(name, labels).unwrap_or(0.0);
    v(after) - v(before)
}

/// A histogram series that must exist and be well formed.
fn histogram(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Histogram {
    let h = scrape
        .histogram(name, labels)
        .unwrap_or_else(|| panic!("no histogram {name}{labels:?} in /metrics"));
    h.check()
        .unwrap_or_else(|e| panic!("histogram {name}{labels:?}: {e}: {h:?}"));
    h
}

#[test]
fn metrics_follow_a_multi_arch_job() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    let before = scrape(&coordinator);
    for name in [
        "archfarm_lease_expiries_total",
        "archfarm_stitch_duration_seconds_count",
    ] {
        assert!(
            before.value(name, &[]).is_some(),
            "{name} is not exposed by a fresh coordinator"
        );
    }

    // Submitted with no agent: both builds wait, and the gauges say for how long.
    let context = BuildContext::hello();
    let tag = format!("{}/observed:v1", registry.host());
    let id = coordinator.submit(&[
        "--platform",
        &PLATFORMS.join(","),
        "-t",
        &tag,
        &context.arg(),
    ]);
    let queued = wait_scrape(
        &coordinator,
        Duration::from_secs(60),
        "one queued build per platform, waiting for longer than 0 s",
        &[
            "archfarm_queued_builds",
            "archfarm_oldest_queued_build_age_seconds",
        ],
        |s| {
            PLATFORMS.iter().all(|p| {
                let platform = [("platform", *p)];
                s.value("archfarm_queued_builds", &platform) == Some(1.0)
                    && s.value("archfarm_oldest_queued_build_age_seconds", &platform)
                        .is_some_and(|age| age > 0.0)
            })
        },
    );
    assert_eq!(
        delta(
            &before,
            &queued,
            "archfarm_jobs_total",
            &[("state", "queued")]
        ),
        1.0,
        "archfarm_jobs_total{{state=queued}} after one submission"
    );
    assert_eq!(
        queued.sum("archfarm_agents", &[]),
        0.0,
        "agents counted before any registered: {:?}",
        queued.named("archfarm_agents").collect::<Vec<_>>()
    );

    // amd64 is this machine's own; emu serves amd64 natively and arm64 under QEMU.
    let _agents = [
        Agent::start(&coordinator, AgentOptions::new("amd64").emulate("none")),
        Agent::start(
            &coordinator,
            AgentOptions::new("emu").emulate("linux/arm64"),
        ),
    ];
    let job = coordinator.wait_terminal(id, JOB_TIMEOUT);
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(build_of(&job, "linux/amd64").mode, Some(BuildMode::Native));
    assert_eq!(
        build_of(&job, "linux/arm64").mode,
        Some(BuildMode::Emulated)
    );

    // Requests for ids that exist nowhere: a matched route (404) and no route at all.
    let (ghost_job, ghost_path) = (Uuid::new_v4(), Uuid::new_v4());
    for path in [
        format!("/api/v1/jobs/{ghost_job}"),
        format!("/no/such/page/{ghost_path}"),
    ] {
        let resp = coordinator
            .request(Method::GET, &path)
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(resp.status(), 404, "GET {path}");
    }

    let after = scrape(&coordinator);
    eprintln!(
        "archfarm metrics after the job:\n{}",
        after
            .samples()
            .iter()
            .filter(|s| !s.name.ends_with("_bucket") && !s.name.starts_with("archfarm_http"))
            .map(|s| format!("  {}{:?} {}", s.name, s.labels, s.value))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Jobs: one queued, one succeeded, nothing else.
    for (state, moved) in [
        ("queued", 1.0),
        ("succeeded", 1.0),
        ("failed", 0.0),
        ("cancelled", 0.0),
    ] {
        assert_eq!(
            delta(&before, &after, "archfarm_jobs_total", &[("state", state)]),
            moved,
            "archfarm_jobs_total{{state={state}}}"
        );
    }

    // Builds: one success per platform in the mode it really ran in, nothing failed or lost.
    let ran = [("linux/amd64", "native"), ("linux/arm64", "emulated")];
    for (platform, mode) in ran {
        let labels = [
            ("platform", platform),
            ("mode", mode),
            ("outcome", "succeeded"),
        ];
        assert_eq!(
            delta(&before, &after, "archfarm_builds_total", &labels),
            1.0,
            "archfarm_builds_total{labels:?}"
        );
        let series = [("platform", platform), ("mode", mode)];
        let was = before
            .histogram("archfarm_build_duration_seconds", &series)
            .map_or((0.0, 0.0), |h| (h.count, h.sum));
        let now = histogram(&after, "archfarm_build_duration_seconds", &series);
        assert_eq!(
            now.count - was.0,
            1.0,
            "archfarm_build_duration_seconds_count{series:?}"
        );
        assert!(
            now.sum - was.1 > 0.0,
            "archfarm_build_duration_seconds_sum{series:?} did not grow: {now:?}"
        );
    }
    let all_builds =
        after.sum("archfarm_builds_total", &[]) - before.sum("archfarm_builds_total", &[]);
    assert_eq!(
        all_builds,
        2.0,
        "build attempts that ended: {:?}",
        after.named("archfarm_builds_total").collect::<Vec<_>>()
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "archfarm_build_duration_seconds_count",
            &[("platform", "linux/arm64"), ("mode", "native")]
        ),
        0.0,
        "an arm64 build counted as native"
    );
    for sample in after.named("archfarm_builds_total") {
        let outcome = sample.labels.get("outcome").map(String::as_str);
        assert!(
            matches!(outcome, Some("succeeded" | "failed" | "lost" | "cancelled")),
            "unexpected outcome label: {sample:?}"
        );
        let mode = sample.labels.get("mode").map(String::as_str);
        assert!(matches!(mode, Some("native" | "emulated")), "{sample:?}");
    }
    assert_eq!(
        delta(&before, &after, "archfarm_lease_expiries_total", &[]),
        0.0,
        "leases expired in a job where no agent failed"
    );
    let was = histogram(&before, "archfarm_stitch_duration_seconds", &[]);
    let now = histogram(&after, "archfarm_stitch_duration_seconds", &[]);
    assert_eq!(now.count - was.count, 1.0, "stitches: {now:?}");
    assert!(now.sum > was.sum, "stitch time did not grow: {now:?}");

    // Nothing waits any more.
    for platform in PLATFORMS {
        let labels = [("platform", platform)];
        assert_eq!(
            after.value("archfarm_queued_builds", &labels),
            Some(0.0),
            "archfarm_queued_builds{labels:?} after the job"
        );
        assert_eq!(
            after.value("archfarm_oldest_queued_build_age_seconds", &labels),
            Some(0.0),
            "archfarm_oldest_queued_build_age_seconds{labels:?} after the job"
        );
    }

    // Agents: one series per agent per platform it serves.
    for (platform, mode, count) in [
        ("linux/amd64", "native", 2.0),
        ("linux/arm64", "emulated", 1.0),
    ] {
        let labels = [("platform", platform), ("mode", mode), ("state", "online")];
        assert_eq!(
            after.value("archfarm_agents", &labels),
            Some(count),
            "archfarm_agents{labels:?}: {:?}",
            after.named("archfarm_agents").collect::<Vec<_>>()
        );
    }
    assert_eq!(
        after.sum("archfarm_agents", &[]),
        3.0,
        "archfarm_agents: {:?}",
        after.named("archfarm_agents").collect::<Vec<_>>()
    );

    // HTTP: by method, route template and status.
    let job_route = [("method", "GET"), ("route", "/api/v1/jobs/{id}")];
    let ok = [job_route[0], job_route[1], ("status", "200")];
    let polled = delta(&before, &after, "archfarm_http_requests_total", &ok);
    assert!(
        polled >= 1.0,
        "GET /api/v1/jobs/{{id}} 200 counted {polled} times"
    );
    let missing = [job_route[0], job_route[1], ("status", "404")];
    assert_eq!(
        delta(&before, &after, "archfarm_http_requests_total", &missing),
        1.0,
        "GET /api/v1/jobs/{{id}} 404"
    );
    let timed = histogram(&after, "archfarm_http_request_duration_seconds", &job_route);
    assert_eq!(
        timed.count,
        after.sum("archfarm_http_requests_total", &job_route),
        "GET /api/v1/jobs/{{id}}: timed and counted requests differ"
    );
    let submitted = after.sum(
        "archfarm_http_requests_total",
        &[("method", "POST"), ("route", "/api/v1/jobs")],
    ) - before.sum(
        "archfarm_http_requests_total",
        &[("method", "POST"), ("route", "/api/v1/jobs")],
    );
    assert_eq!(submitted, 1.0, "POST /api/v1/jobs");
    for (method, route) in [
        ("PUT", "/api/v1/contexts/{digest}"),
        ("POST", "/api/v1/agents/{id}/lease"),
        ("POST", "/api/v1/builds/{id}/complete"),
    ] {
        let labels = [("method", method), ("route", route)];
        assert!(
            after.sum("archfarm_http_requests_total", &labels) >= 1.0,
            "no {method} {route} counted: {:?}",
            after
                .named("archfarm_http_requests_total")
                .map(|s| &s.labels)
                .collect::<Vec<_>>()
        );
        histogram(&after, "archfarm_http_request_duration_seconds", &labels);
    }

    // No id anywhere in a label value: not the job's, its builds', the agents', the context's, nor
    // the ones asked for in vain.
    let mut ids: Vec<String> = vec![
        id.to_string(),
        ghost_job.to_string(),
        ghost_path.to_string(),
        job.context
            .as_str()
            .trim_start_matches("sha256:")
            .to_string(),
    ];
    ids.extend(job.builds.iter().map(|b| b.id.to_string()));
    ids.extend(coordinator.agents().iter().map(|a| a.id.to_string()));
    let mut leaks = Vec::new();
    for (metric, label, value) in after.label_values() {
        for id in &ids {
            if value.contains(id.as_str()) {
                leaks.push(format!("{metric}{{{label}={value:?}}} holds {id}"));
            }
        }
    }
    assert!(leaks.is_empty(), "ids in label values: {leaks:#?}");
    let routes: std::collections::BTreeSet<&str> = after
        .label_values()
        .filter(|(_, label, _)| *label == "route")
        .map(|(_, _, value)| value)
        .collect();
    eprintln!("route labels: {routes:?}");
}

/// The coordinator's log cap in this test: 1 MiB.
const CAP: u64 = 1 << 20;
/// What the flooding RUN step prints: 300 MB, about 300 times the cap.
const FLOOD: u64 = 300_000_000;
/// The line it repeats.
const FLOOD_LINE: &str = "archfarm log flood line with some padding text to make it longer";
/// What the flooding step prints last, computed by the shell so the echoed command differs.
const FLOOD_DONE: &str = "flood 42 done";
/// Peak resident memory the coordinator and the agent must stay under: far above their normal
/// footprint, far below what the build prints.
const MEMORY_BOUND: u64 = 200 << 20;

#[test]
fn a_flooding_build_is_cut_at_the_log_cap() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start_with(
        CoordinatorOptions::default()
            .arg("--max-log-bytes")
            .arg(&CAP.to_string()),
    );
    let agent = Agent::start(&coordinator, AgentOptions::new("amd64").emulate("none"));
    let context = BuildContext::hello();
    context.write(
        "Dockerfile",
        &format!(
            r#"FROM scratch
ARG TARGETARCH
COPY rootfs/${{TARGETARCH}}/ /
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
RUN yes "{FLOOD_LINE}" | head -c {FLOOD} && echo && echo "flood $((6*7)) done"
"#
        ),
    );
    let resting = (
        peak_rss_bytes(coordinator.pid()),
        peak_rss_bytes(agent.pid()),
    );
    let tag = format!("{}/flood:v1", registry.host());
    let started = Instant::now();
    let id = coordinator.submit(&["--platform", "linux/amd64", "-t", &tag, &context.arg()]);
    let job = coordinator.wait_terminal(id, Duration::from_secs(30 * 60));
    let took = started.elapsed();
    let peaks = (
        peak_rss_bytes(coordinator.pid()),
        peak_rss_bytes(agent.pid()),
    );
    let uploads = scrape(&coordinator).sum(
        "archfarm_http_requests_total",
        &[("method", "POST"), ("route", "/api/v1/builds/{id}/log")],
    );
    let build = build_of(&job, "linux/amd64");

    let resp = coordinator
        .request(Method::GET, &format!("/api/v1/builds/{}/log", build.id))
        .send()
        .expect("GET the build log");
    assert_eq!(resp.status(), 200, "GET /api/v1/builds/{}/log", build.id);
    let log = resp.bytes().expect("the build log").to_vec();
    let text = String::from_utf8_lossy(&log);
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "log cap {CAP} B ({:.1} MiB); the build printed {FLOOD} B ({:.1} MiB) in {:.1} s \
         (job {}); log kept: {} B ({:.3} MiB), {} flood lines; log uploads counted: {uploads}",
        mib(CAP),
        mib(FLOOD),
        took.as_secs_f64(),
        job.state,
        log.len(),
        mib(log.len() as u64),
        text.lines().filter(|l| l.contains(FLOOD_LINE)).count(),
    );
    eprintln!(
        "peak RSS (VmHWM): coordinator {:.1} MiB (at rest before the job {:.1} MiB), agent {:.1} MiB \
         (at rest {:.1} MiB); bound {:.0} MiB",
        mib(peaks.0),
        mib(resting.0),
        mib(peaks.1),
        mib(resting.1),
        mib(MEMORY_BOUND)
    );

    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(build.state, BuildState::Succeeded, "{build:#?}");
    assert!(job.index_digest.is_some(), "{job:#?}");
    assert_eq!(
        text.lines().last().map(str::trim_end),
        Some(TRUNCATION_MARKER),
        "the log does not end with the truncation marker; its last bytes: {:?}",
        &text[text.len().saturating_sub(300)..]
    );
    assert_eq!(
        text.matches(TRUNCATION_MARKER).count(),
        1,
        "the truncation marker appears more than once"
    );
    assert!(
        log.len() as u64 <= CAP + (64 << 10),
        "the kept log is {} B, over the cap of {CAP} B",
        log.len()
    );
    assert!(
        log.len() as u64 >= CAP / 2,
        "the kept log is only {} B: the flood did not fill it up to the cap",
        log.len()
    );
    // Printed after the flood; the `STEP ...: RUN` line shows the command, not the computed text.
    assert!(
        !text.lines().any(|l| l.contains(FLOOD_DONE)),
        "lines printed past the cap were kept"
    );
    assert!(
        peaks.0 < MEMORY_BOUND,
        "the coordinator's peak RSS reached {:.1} MiB",
        mib(peaks.0)
    );
    assert!(
        peaks.1 < MEMORY_BOUND,
        "the agent's peak RSS reached {:.1} MiB",
        mib(peaks.1)
    );
}

//! A seeded chaos run: a batch of jobs while agents and the coordinator are killed, frozen and
//! restarted at random moments, then the invariants: every job ends, every succeeded job's index is
//! complete and verified child by child, no platform committed twice, no build left leased, no agent
//! slot leaked. `ARCHFARM_CHAOS_SEED` replays a run; the seed is printed.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use archfarm_e2e::checks::{arm64_agent, verify_index, wait_no_build_processes};
use archfarm_e2e::{
    preflight, Agent, AgentOptions, BuildContext, Coordinator, CoordinatorOptions, ImageFs,
    Registry,
};
use archfarm_protocol::api::{BuildState, Job, JobState};
use uuid::Uuid;

/// SplitMix64: a tiny seeded generator, so a chaos run can be replayed from its printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    /// A duration between `lo_ms` and `hi_ms` milliseconds.
    fn millis(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(self.range(lo_ms, hi_ms))
    }
}

/// A small image per job: the base file system, a file naming the job, a short sleep.
const CHAOS_DOCKERFILE: &str = r#"FROM scratch
ARG TARGETARCH
COPY rootfs/${TARGETARCH}/ /
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
ARG TARGETPLATFORM
ARG JOB
RUN mkdir -p /etc/archfarm && uname -m > /etc/archfarm/arch && echo "$TARGETPLATFORM" > /etc/archfarm/platform && echo "$JOB" > /etc/archfarm/job && sleep 4
"#;

/// The platforms of each chaos job; job N goes to repository `chaos-N`.
const CHAOS_JOBS: [[&str; 2]; 6] = [
    ["linux/amd64", "linux/arm64"],
    ["linux/amd64", "linux/s390x"],
    ["linux/arm64", "linux/ppc64le"],
    ["linux/amd64", "linux/arm64"],
    ["linux/amd64", "linux/ppc64le"],
    ["linux/arm64", "linux/s390x"],
];

/// How long agents and the coordinator are being killed.
const CHAOS_WINDOW: Duration = Duration::from_secs(60);

#[test]
fn chaos_batch() {
    preflight();
    let seed = std::env::var("ARCHFARM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(42)
        });
    eprintln!("chaos seed {seed} (replay with ARCHFARM_CHAOS_SEED={seed})");
    let mut rng = Rng(seed);

    let registry = Registry::start();
    // More attempts than the default 3: the point is to see builds survive many deaths.
    let mut coordinator = Coordinator::start_with(
        CoordinatorOptions::fast_leases()
            .arg("--max-attempts")
            .arg("6"),
    );
    let mut agents = vec![
        Agent::start(&coordinator, AgentOptions::new("amd64").emulate("none")),
        Agent::start(&coordinator, arm64_agent("arm64")),
        Agent::start(
            &coordinator,
            AgentOptions::new("emu").emulate("auto").capacity(2),
        ),
    ];
    let context = BuildContext::hello();
    context.write("Dockerfile", CHAOS_DOCKERFILE);
    let submit = |coordinator: &Coordinator, n: usize| {
        let tag = format!("{}/chaos-{n}:v1", registry.host());
        let job_arg = format!("JOB={n}");
        let id = coordinator.submit(&[
            "--platform",
            &CHAOS_JOBS[n].join(","),
            "--build-arg",
            &job_arg,
            "-t",
            &tag,
            &context.arg(),
        ]);
        eprintln!(
            "chaos: submitted job {n} ({id}) for {}",
            CHAOS_JOBS[n].join(",")
        );
        id
    };

    // Jobs arrive in three waves, so builds are under way through most of the chaos window.
    let mut jobs: BTreeMap<usize, Uuid> = BTreeMap::new();
    for n in 0..2 {
        jobs.insert(n, submit(&coordinator, n));
    }
    let start = Instant::now();
    let coordinator_kill_at = Duration::from_secs(rng.range(15, 45));
    let mut coordinator_killed = false;
    let mut events = Vec::new();
    while start.elapsed() < CHAOS_WINDOW {
        thread::sleep(rng.millis(1_500, 5_000));
        let t = start.elapsed().as_secs_f32();
        let wave = (start.elapsed().as_secs() / 20 + 1).min(3) as usize;
        for n in jobs.len()..(wave * 2).min(CHAOS_JOBS.len()) {
            jobs.insert(n, submit(&coordinator, n));
        }
        if !coordinator_killed && start.elapsed() >= coordinator_kill_at {
            coordinator_killed = true;
            let down = rng.millis(1_000, 4_000);
            events.push(format!(
                "{t:5.1}s SIGKILL coordinator, restart after {down:?}"
            ));
            coordinator.kill();
            thread::sleep(down);
            coordinator.start_again();
            continue;
        }
        // Mostly hit an agent that is building, which is where a fault hurts.
        let busy: Vec<String> = coordinator
            .agents()
            .into_iter()
            .filter(|a| a.running > 0)
            .map(|a| a.name)
            .collect();
        let busy_agents: Vec<usize> = (0..agents.len())
            .filter(|i| busy.iter().any(|b| b == agents[*i].name()))
            .collect();
        let agent = if !busy_agents.is_empty() && rng.range(0, 10) < 7 {
            busy_agents[rng.range(0, busy_agents.len() as u64) as usize]
        } else {
            rng.range(0, agents.len() as u64) as usize
        };
        let agent = &mut agents[agent];
        match rng.range(0, 10) {
            0..=5 => {
                let down = rng.millis(500, 3_000);
                let what = if busy.iter().any(|b| b == agent.name()) {
                    "building"
                } else {
                    "idle"
                };
                events.push(format!(
                    "{t:5.1}s SIGKILL agent {} ({what}), restart after {down:?}",
                    agent.name()
                ));
                agent.kill();
                thread::sleep(down);
                agent.restart();
            }
            6..=7 => {
                let frozen = rng.millis(2_000, 5_000);
                events.push(format!(
                    "{t:5.1}s SIGSTOP agent {} for {frozen:?}",
                    agent.name()
                ));
                agent.freeze();
                thread::sleep(frozen);
                agent.thaw();
            }
            _ => events.push(format!("{t:5.1}s (no fault)")),
        }
    }
    eprintln!("chaos (seed {seed}):\n  {}", events.join("\n  "));
    for agent in &mut agents {
        assert!(agent.is_running(), "agent {} died by itself", agent.name());
    }

    // Every job ends.
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut finished: BTreeMap<usize, Job> = BTreeMap::new();
    while finished.len() < jobs.len() {
        for (n, id) in &jobs {
            if finished.contains_key(n) {
                continue;
            }
            if let Some(job) = coordinator.try_job(*id) {
                if job.state.is_terminal() {
                    finished.insert(*n, job);
                }
            }
        }
        if Instant::now() >= deadline {
            let stuck: Vec<Option<Job>> = jobs
                .iter()
                .filter(|(n, _)| !finished.contains_key(n))
                .map(|(_, id)| coordinator.try_job(*id))
                .collect();
            panic!("jobs not terminal 150 s after the chaos (seed {seed}): {stuck:#?}");
        }
        thread::sleep(Duration::from_millis(500));
    }

    let mut summary = Vec::new();
    for (n, job) in &finished {
        let builds: Vec<String> = job
            .builds
            .iter()
            .map(|b| {
                format!(
                    "{} {} x{} on {}",
                    b.platform,
                    b.state,
                    b.attempts,
                    b.agent.as_deref().unwrap_or("-")
                )
            })
            .collect();
        summary.push(format!(
            "job {n}: {} [{}]{}",
            job.state,
            builds.join("; "),
            job.error
                .as_deref()
                .map(|e| format!(" error: {e}"))
                .unwrap_or_default()
        ));
    }
    eprintln!("chaos results (seed {seed}):\n  {}", summary.join("\n  "));

    for (n, job) in &finished {
        let repo = format!("chaos-{n}");
        // No build is left leased or queued once its job has ended.
        for build in &job.builds {
            assert!(
                build.state.is_terminal(),
                "job {n} ended {} with a build still {}: {build:#?}",
                job.state,
                build.state
            );
        }
        if job.state != JobState::Succeeded {
            assert!(
                registry.tags(&repo).is_empty(),
                "job {n} ended {} but left a tag",
                job.state
            );
            continue;
        }
        // A succeeded job: every required platform in the index exactly once, each child the one
        // digest the job committed for that platform, verified by skopeo and umoci.
        let (digest, index) = verify_index(&registry, &repo, "v1", &CHAOS_JOBS[*n]);
        assert_eq!(
            job.index_digest.as_deref(),
            Some(digest.as_str()),
            "job {n}"
        );
        for build in &job.builds {
            assert_eq!(build.state, BuildState::Succeeded, "job {n}: {build:#?}");
            assert!(build.attempts >= 1, "job {n}: {build:#?}");
            let child = index
                .manifests
                .iter()
                .find(|d| {
                    d.platform.as_ref().map(|p| p.to_string()) == Some(build.platform.to_string())
                })
                .expect("verified above");
            assert_eq!(
                build.digest.as_deref(),
                Some(child.digest.as_str()),
                "job {n} {}: the index holds a different result than the one committed",
                build.platform
            );
            let fs = ImageFs::unpack(&format!("{}/{repo}@{}", registry.host(), child.digest));
            assert_eq!(
                fs.read("/etc/archfarm/job"),
                n.to_string(),
                "job {n} {}",
                build.platform
            );
        }
        assert_eq!(registry.tags(&repo), vec!["v1".to_string()], "job {n}");
    }
    assert!(
        finished.values().any(|j| j.state == JobState::Succeeded),
        "no job survived the chaos (seed {seed}); with 6 attempts per build some should"
    );

    // No leaked slot and no leftover buildah once everything has ended.
    let start = Instant::now();
    loop {
        let busy: Vec<(String, i64)> = coordinator
            .agents()
            .into_iter()
            .filter(|a| a.running != 0)
            .map(|a| (a.name, a.running))
            .collect();
        if busy.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "leaked slots after every job ended (seed {seed}): {busy:?}"
        );
        thread::sleep(Duration::from_millis(250));
    }
    for agent in &agents {
        wait_no_build_processes(agent, Duration::from_secs(30));
    }
}

//! Fault tolerance, end to end: agents SIGKILLed or frozen mid-build, a coordinator SIGKILLed and
//! restarted on the same data, a registry that goes away while the index is stitched, cancellation,
//! optional platforms, and a seeded chaos run. Real processes, real buildah, real QEMU; what was
//! pushed is read back with skopeo and umoci.
//!
//! Leases are short here (`--heartbeat-secs 1 --missed-heartbeats 3`: a silent agent loses its build
//! after about three seconds), so the tests take seconds rather than minutes. Each test has its own
//! registry, coordinator and agents. Where a test waits a fixed time, the wait is the scenario (a
//! registry down for 10 s), never a guess at readiness: readiness is always polled.

use std::thread;
use std::time::{Duration, Instant};

use archfarm_e2e::checks::{arm64_agent, verify_index, wait_no_build_processes};
use archfarm_e2e::oci::{self, OCI_MANIFEST};
use archfarm_e2e::{
    last_line, preflight, wait_until, Agent, AgentOptions, BuildContext, Buildah, Coordinator,
    CoordinatorOptions, ProtocolAgent, Registry, Scratch,
};
use archfarm_protocol::api::{AgentState, Build, BuildMode, BuildState, Job, JobState};
use uuid::Uuid;

/// What the sleeping RUN step prints once it has started. The Dockerfile computes the number, so the
/// `STEP ...: RUN` line that echoes the command does not contain this text: seeing it in the log means
/// the step is running.
const RUN_STARTED: &str = "archfarm-e2e: run step 42 started";

/// The example's base file system, then a RUN step that records where it ran and sleeps `secs`
/// seconds (only on `only_on`, a `uname -m` value, when given).
fn sleeping_dockerfile(secs: u32, only_on: Option<&str>) -> String {
    let sleep = format!("echo \"archfarm-e2e: run step $((6*7)) started\" && sleep {secs}");
    let sleep = match only_on {
        Some(machine) => format!("if [ \"$(uname -m)\" = {machine} ]; then {sleep}; fi"),
        None => sleep,
    };
    format!(
        r#"FROM scratch
ARG TARGETARCH
COPY rootfs/${{TARGETARCH}}/ /
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
ARG TARGETPLATFORM
RUN mkdir -p /etc/archfarm && uname -m > /etc/archfarm/arch && echo "$TARGETPLATFORM" > /etc/archfarm/platform && {sleep} && echo "step done"
"#
    )
}

/// The build of `platform` in a job record.
fn build_of<'a>(job: &'a Job, platform: &str) -> &'a Build {
    job.builds
        .iter()
        .find(|b| b.platform.to_string() == platform)
        .unwrap_or_else(|| panic!("job has no build for {platform}: {job:#?}"))
}

/// Waits until `platform`'s build of job `id` is `building` on some agent and its log shows the
/// sleeping RUN step started; returns the job as seen then.
fn wait_run_step(coordinator: &Coordinator, id: Uuid, platform: &str) -> Job {
    coordinator.wait_job(
        id,
        Duration::from_secs(300),
        &format!("{platform} building on an agent with its RUN step started"),
        |job| {
            let build = build_of(job, platform);
            build.state == BuildState::Building
                && build.agent.is_some()
                && coordinator.build_log(build.id).contains(RUN_STARTED)
        },
    )
}

/// The job as `archfarm job ID --json` shows it.
fn cli_job(coordinator: &Coordinator, id: Uuid) -> Job {
    let out = coordinator.cli_timeout(&["job", &id.to_string(), "--json"], Duration::from_secs(60));
    assert!(out.status.success(), "archfarm job {id} --json failed");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("archfarm job --json is not a Job: {e}"))
}

#[test]
fn agent_killed_mid_build_moves_to_another_agent() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start_with(CoordinatorOptions::fast_leases());
    let mut agents = [
        Agent::start(&coordinator, arm64_agent("arm64-a")),
        Agent::start(&coordinator, arm64_agent("arm64-b")),
    ];
    let context = BuildContext::hello();
    // The kill lands within a poll (200 ms) of the step's first line; 8 s leaves room for a busy
    // machine, and the survivor sleeps through all of it again.
    context.write("Dockerfile", &sleeping_dockerfile(8, None));
    let tag = format!("{}/moved:v1", registry.host());
    let id = coordinator.submit(&["--platform", "linux/arm64", "-t", &tag, &context.arg()]);

    let job = wait_run_step(&coordinator, id, "linux/arm64");
    let first = build_of(&job, "linux/arm64").clone();
    assert_eq!(first.attempts, 1, "{first:#?}");
    let victim = first.agent.clone().unwrap();
    let (dead, alive) = if agents[0].name() == victim {
        (0, 1)
    } else {
        (1, 0)
    };
    assert_eq!(agents[dead].name(), victim);
    let survivor = agents[alive].name().to_string();
    eprintln!(
        "SIGKILL agent {victim} (pid {}) mid-RUN",
        agents[dead].pid()
    );
    agents[dead].kill();

    let job = coordinator.wait_terminal(id, Duration::from_secs(300));
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    let build = build_of(&job, "linux/arm64");
    assert_eq!(build.state, BuildState::Succeeded, "{build:#?}");
    assert_eq!(
        build.attempts, 2,
        "attempts after one lost lease: {build:#?}"
    );
    assert_eq!(
        build.agent.as_deref(),
        Some(survivor.as_str()),
        "{build:#?}"
    );
    assert_eq!(build.mode, Some(BuildMode::Native), "{build:#?}");

    let (digest, index) = verify_index(&registry, "moved", "v1", &["linux/arm64"]);
    assert_eq!(job.index_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(
        build.digest.as_deref(),
        Some(index.manifests[0].digest.as_str())
    );
    assert_eq!(registry.tags("moved"), vec!["v1".to_string()]);

    // The CLI shows the same record: two attempts, credited to the survivor.
    let shown = cli_job(&coordinator, id);
    let shown_build = build_of(&shown, "linux/arm64");
    assert_eq!(shown.state, JobState::Succeeded);
    assert_eq!(
        (shown_build.attempts, shown_build.agent.as_deref()),
        (2, Some(survivor.as_str()))
    );
}

#[test]
fn late_report_from_killed_agent_is_refused() {
    preflight();
    let coordinator = Coordinator::start_with(CoordinatorOptions::fast_leases());
    let context = BuildContext::hello();
    // Nobody pushes anything here: the tag's registry is never contacted.
    let id = coordinator.submit(&[
        "--platform",
        "linux/amd64",
        "-t",
        "127.0.0.1:1/late:v1",
        &context.arg(),
    ]);

    let first = ProtocolAgent::register(&coordinator, "first", &["linux/amd64"]);
    assert_eq!(
        first.heartbeat_secs, 1,
        "--heartbeat-secs 1 is passed on to agents"
    );
    let old = first.lease_within(Duration::from_secs(30));
    assert_eq!(old.job_id, id);
    let alive = first
        .heartbeat(&old)
        .expect("a fresh lease accepts heartbeats");
    assert!(!alive.cancel);

    // `first` now falls silent, as a killed agent would; `second` gets the build once the lease lapses.
    let second = ProtocolAgent::register(&coordinator, "second", &["linux/amd64"]);
    let new = second.lease_within(Duration::from_secs(30));
    assert_eq!(
        new.build_id, old.build_id,
        "the lapsed build is handed out again"
    );
    assert_ne!(
        new.lease_token, old.lease_token,
        "a new lease has a new fencing token"
    );
    let job = coordinator.job(id);
    let build = build_of(&job, "linux/amd64");
    assert_eq!(
        (build.state, build.attempts, build.agent.as_deref()),
        (BuildState::Building, 2, Some("second")),
        "{build:#?}"
    );
    let shown_first = coordinator
        .agents()
        .into_iter()
        .find(|a| a.name == "first")
        .expect("first is listed");
    assert_eq!(shown_first.state, AgentState::Offline, "{shown_first:#?}");

    // The presumed-dead agent comes back and reports against its old lease: all refused.
    let fake = oci::sha256_digest(b"an image nobody built");
    let late = first
        .complete(old.build_id, old.lease_token, &fake, OCI_MANIFEST, 1234)
        .expect_err("a complete on a superseded lease must be refused");
    assert_eq!(
        (late.status, late.error.code.as_str()),
        (409, "lease_lost"),
        "{late:?}"
    );
    let late = first
        .heartbeat(&old)
        .expect_err("a heartbeat on a superseded lease must be refused");
    assert_eq!((late.status, late.error.code.as_str()), (409, "lease_lost"));
    let late = first
        .fail(old.build_id, old.lease_token, "late failure")
        .expect_err("a fail on a superseded lease must be refused");
    assert_eq!((late.status, late.error.code.as_str()), (409, "lease_lost"));

    // Nothing of it stuck: the build is still second's, unfinished, without a digest.
    let job = coordinator.job(id);
    let build = build_of(&job, "linux/amd64");
    assert_eq!(job.state, JobState::Building, "{job:#?}");
    assert_eq!(
        (build.state, build.agent.as_deref(), build.digest.as_deref()),
        (BuildState::Building, Some("second"), None),
        "{build:#?}"
    );
    let current = second
        .heartbeat(&new)
        .expect("the current lease is untouched by the late reports");
    assert!(!current.cancel);
}

#[test]
fn coordinator_killed_mid_job_and_restarted() {
    preflight();
    let registry = Registry::start();
    let mut coordinator = Coordinator::start_with(CoordinatorOptions::fast_leases());
    let _amd64 = Agent::start(&coordinator, AgentOptions::new("amd64").emulate("none"));
    let arm64 = Agent::start(&coordinator, arm64_agent("arm64"));
    let context = BuildContext::hello();
    context.write("Dockerfile", &sleeping_dockerfile(15, Some("aarch64")));
    let tag = format!("{}/survivor:v1", registry.host());
    // The CLI follows the job through the outage (it retries while the coordinator is away).
    let follower = coordinator.cli_background(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        &tag,
        &context.arg(),
    ]);
    let mut id = None;
    wait_until(
        Duration::from_secs(120),
        "the CLI to submit the job",
        || {
            id = coordinator.jobs().first().map(|j| j.id);
            id.is_some()
        },
    );
    let id = id.unwrap();
    wait_run_step(&coordinator, id, "linux/arm64");

    eprintln!("SIGKILL the coordinator while linux/arm64 builds");
    coordinator.kill();
    // The build carries on without the coordinator.
    let running = arm64.build_processes();
    assert!(
        !running.is_empty(),
        "the arm64 build stopped when the coordinator died"
    );
    thread::sleep(Duration::from_secs(3));
    coordinator.start_again();
    eprintln!("coordinator restarted on {}", coordinator.url());

    let job = coordinator.wait_terminal(id, Duration::from_secs(300));
    let shown = cli_job(&coordinator, id);
    assert_eq!(shown.state, JobState::Succeeded, "{shown:#?}");
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    let out = follower.wait(Duration::from_secs(180));
    assert!(out.status.success(), "the following CLI failed");
    let printed = last_line(&out.stdout);
    assert_eq!(job.index_digest.as_deref(), Some(printed.as_str()));

    let arm = build_of(&job, "linux/arm64");
    assert_eq!(
        (arm.state, arm.agent.as_deref(), arm.attempts),
        (BuildState::Succeeded, Some("arm64"), 1),
        "the running build should have kept its lease across the restart: {arm:#?}"
    );
    assert_eq!(build_of(&job, "linux/amd64").state, BuildState::Succeeded);
    let (digest, _) = verify_index(&registry, "survivor", "v1", &["linux/amd64", "linux/arm64"]);
    assert_eq!(digest, printed);
    assert_eq!(registry.tags("survivor"), vec!["v1".to_string()]);
}

#[test]
fn registry_down_during_stitching() {
    preflight();
    let mut registry = Registry::start();
    let coordinator = Coordinator::start_with(CoordinatorOptions::fast_leases());
    let context = BuildContext::hello();
    let tag = format!("{}/stitched:v1", registry.host());
    let id = coordinator.submit(&["--platform", "linux/amd64", "-t", &tag, &context.arg()]);

    // The test is the agent: lease, build and push by digest with buildah and the registry API,
    // heartbeating all along.
    let agent = ProtocolAgent::register(&coordinator, "by-hand", &["linux/amd64"]);
    let lease = agent.lease_within(Duration::from_secs(30));
    assert_eq!(
        (lease.job_id, lease.platform.to_string()),
        (id, "linux/amd64".to_string())
    );
    assert_eq!(
        (lease.registry.as_str(), lease.repository.as_str()),
        (registry.host(), "stitched")
    );
    let keep_alive = agent.keep_alive(&lease);
    let buildah = Buildah::new();
    let out = Scratch::new("layout");
    buildah.build_to_layout("linux/amd64", context.path(), &out.join("oci"));
    let pushed = oci::push_layout_by_digest(&out.join("oci"), &lease.registry, &lease.repository);
    assert!(
        matches!(keep_alive.last(), Some(Ok(_))),
        "the lease was lost while building: {:?}",
        keep_alive.last()
    );
    drop(keep_alive);
    assert!(
        registry.tags("stitched").is_empty(),
        "pushed by digest, no tag"
    );

    registry.stop();
    assert!(!registry.is_up());
    agent
        .complete(
            lease.build_id,
            lease.lease_token,
            &pushed.digest,
            &pushed.media_type,
            pushed.size,
        )
        .expect("complete is accepted while the registry is down");
    let down_since = Instant::now();
    coordinator.wait_job(id, Duration::from_secs(10), "stitching", |j| {
        j.state == JobState::Stitching
    });
    // Ten seconds of a dead registry: the job waits in `stitching` rather than failing.
    while down_since.elapsed() < Duration::from_secs(10) {
        let job = coordinator.job(id);
        assert_eq!(
            job.state,
            JobState::Stitching,
            "while the registry is down: {job:#?}"
        );
        thread::sleep(Duration::from_millis(500));
    }
    registry.start_again();
    eprintln!("registry back after {:?}", down_since.elapsed());

    let job = coordinator.wait_terminal(id, Duration::from_secs(300));
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    let (digest, index) = verify_index(&registry, "stitched", "v1", &["linux/amd64"]);
    assert_eq!(job.index_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(
        index.manifests[0].digest, pushed.digest,
        "the child is what was pushed"
    );
    assert_eq!(index.manifests[0].size, pushed.size);
    assert_eq!(registry.tags("stitched"), vec!["v1".to_string()]);
}

#[test]
fn cancel_mid_build_stops_buildah() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start_with(CoordinatorOptions::fast_leases());
    let agent = Agent::start(&coordinator, AgentOptions::new("solo").emulate("none"));
    let context = BuildContext::hello();
    context.write("Dockerfile", &sleeping_dockerfile(120, None));
    let tag = format!("{}/cancelled:v1", registry.host());
    let id = coordinator.submit(&["--platform", "linux/amd64", "-t", &tag, &context.arg()]);
    wait_run_step(&coordinator, id, "linux/amd64");
    let running = agent.build_processes();
    assert!(
        !running.is_empty(),
        "no process found for a running build: the check below would prove nothing"
    );
    eprintln!("build processes before cancel: {running:#?}");

    let out = coordinator.cli_timeout(&["cancel", &id.to_string()], Duration::from_secs(60));
    assert!(out.status.success(), "archfarm cancel failed");
    let cancelled_at = Instant::now();
    wait_no_build_processes(&agent, Duration::from_secs(10));
    eprintln!("buildah gone {:?} after cancel", cancelled_at.elapsed());

    let job = coordinator.job(id);
    assert_eq!(job.state, JobState::Cancelled, "{job:#?}");
    let build = build_of(&job, "linux/amd64");
    assert_eq!(build.state, BuildState::Cancelled, "{build:#?}");
    assert!(build.digest.is_none(), "{build:#?}");
    wait_until(
        Duration::from_secs(10),
        "the agent's slot to be free",
        || {
            coordinator
                .agents()
                .iter()
                .any(|a| a.name == "solo" && a.running == 0 && a.state == AgentState::Online)
        },
    );
    assert!(
        registry.tags("cancelled").is_empty(),
        "a cancelled job left a tag"
    );
    assert!(oci::inspect_raw(&tag).is_err(), "{tag} exists");

    // The freed slot takes the next job.
    let context = BuildContext::hello();
    let next = format!("{}/after-cancel:v1", registry.host());
    let out = coordinator.cli(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-t",
        &next,
        &context.arg(),
    ]);
    assert!(out.status.success(), "the next job failed");
    let job = coordinator
        .jobs()
        .into_iter()
        .find(|j| j.id != id)
        .expect("the second job");
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(build_of(&job, "linux/amd64").agent.as_deref(), Some("solo"));
    verify_index(&registry, "after-cancel", "v1", &["linux/amd64"]);
}

#[test]
fn optional_platform_without_agent() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start_with(CoordinatorOptions::fast_leases());
    let _amd64 = Agent::start(&coordinator, AgentOptions::new("amd64").emulate("none"));
    let context = BuildContext::hello();
    let tag = format!("{}/optional:v1", registry.host());
    let out = coordinator.cli_timeout(
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64",
            "--optional-platform",
            "linux/riscv64",
            "-t",
            &tag,
            &context.arg(),
        ],
        Duration::from_secs(600),
    );
    assert!(
        out.status.success(),
        "an optional platform must not fail the build"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.to_lowercase().contains("warning") && l.contains("linux/riscv64")),
        "no warning naming linux/riscv64 on stderr"
    );
    let printed = last_line(&out.stdout);

    let job = coordinator.only_job();
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(job.index_digest.as_deref(), Some(printed.as_str()));
    let optional: Vec<String> = job
        .optional_platforms
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(optional, vec!["linux/riscv64".to_string()]);
    assert!(
        job.warnings.iter().any(|w| w.contains("linux/riscv64")),
        "job warnings {:?} do not name linux/riscv64",
        job.warnings
    );
    let riscv = build_of(&job, "linux/riscv64");
    assert!(riscv.optional, "{riscv:#?}");
    assert_eq!(
        riscv.state,
        BuildState::Cancelled,
        "a skipped optional build: {riscv:#?}"
    );
    assert!(
        riscv.error.is_some(),
        "a skipped build says why: {riscv:#?}"
    );
    let amd64 = build_of(&job, "linux/amd64");
    assert!(!amd64.optional);
    assert_eq!(amd64.state, BuildState::Succeeded);

    let (digest, _) = verify_index(&registry, "optional", "v1", &["linux/amd64"]);
    assert_eq!(digest, printed);
}

/// An ingress with no ready coordinator behind it (a rollout) answers the agent's lease polls
/// with bare 404 pages while a build runs: the agent waits them out instead of registering again,
/// which would requeue the build; the build finishes on its first attempt.
#[test]
fn plain_404s_from_an_ingress_keep_the_running_build() {
    preflight();
    let timeout = Duration::from_secs(300);
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    let ingress = archfarm_e2e::Ingress::start(coordinator.url());
    // Capacity 2: the agent goes on polling for work beside its running build.
    let agent = Agent::start(
        &coordinator,
        AgentOptions::new("behind-ingress")
            .emulate("none")
            .capacity(2)
            .via(&ingress.url()),
    );
    // The build's step waits at the ingress's gate until the test opens it.
    let context = BuildContext::hello();
    context.write(
        "Dockerfile",
        &format!(
            "FROM scratch\nCOPY rootfs/amd64/ /\n\
             RUN [\"/bin/busybox\", \"wget\", \"-q\", \"-O\", \"/gate\", \"{}\"]\n",
            ingress.gate_url()
        ),
    );
    let image = format!("{}/faults/ingress:1", registry.host());
    let id = coordinator.submit(&["--platform", "linux/amd64", "-t", &image, &context.arg()]);
    wait_until(timeout, "the build to run", || {
        coordinator.job(id).builds[0].state == BuildState::Building
    });
    ingress.set_no_backend(true);
    wait_until(timeout, "five bare 404s to lease polls", || {
        ingress.plain_404s() >= 5
    });
    let during = coordinator.job(id);
    assert_eq!(during.builds[0].state, BuildState::Building, "{during:#?}");
    ingress.set_no_backend(false);
    ingress.open_gate();
    let job = coordinator.wait_terminal(id, timeout);
    let log = coordinator.build_log(job.builds[0].id);
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}\n{log}");
    assert_eq!(job.builds[0].attempts, 1, "{job:#?}\n{log}");
    let agent_log = agent.log();
    let lines = |what: &str| agent_log.lines().filter(|l| l.contains(what)).count();
    eprintln!(
        "{} bare 404s; agent log:\n{}",
        ingress.plain_404s(),
        agent_log
            .lines()
            .filter(|l| l.contains("lease failed") || l.contains("registered"))
            .take(4)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        lines(" registered "),
        1,
        "registered once only:\n{agent_log}"
    );
    assert_eq!(lines("registering again"), 0, "{agent_log}");
    assert!(
        lines("in front of the coordinator, not the coordinator itself") >= 5,
        "each 404 logged as an outage:\n{agent_log}"
    );
}

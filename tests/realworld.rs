//! A team-like build through the farm (issue 16): a Debian bookworm + gcc base behind one
//! multi-arch index in the local registry, `examples/realworld`'s multi-stage Dockerfile (a slow
//! library stage, a one-file app stage), for linux/amd64 natively and linux/arm64 under QEMU, with a
//! registry cache per platform. Built cold, rebuilt after a one-line change of `main.c` on the same
//! agents, then rebuilt after another change on fresh agents (new work dirs) that share only the
//! registry cache.
//!
//! Cache use is read from each build's log (buildah's `--> Using cache` under the step), and
//! correctness from the images read back with skopeo and umoci (the program is an ELF file for its
//! platform and carries the change); never from elapsed time. The cold build is the control: there
//! the library's compile step must not be reported as cached.

use std::collections::BTreeMap;

use archfarm_e2e::base_images::push_bookworm_gcc_index;
use archfarm_e2e::oci;
use archfarm_e2e::realworld::{
    check_program, set_app_version, step_cached, APP_STEP, BASE_REPO_TAG, LIBRARY_STEP,
};
use archfarm_e2e::{
    preflight, Agent, AgentOptions, BuildContext, Buildah, Coordinator, CoordinatorOptions,
    Registry,
};
use archfarm_protocol::api::{Job, JobState};

/// One native platform and one emulated one keep this affordable on CI's two cores.
const PLATFORMS: [&str; 2] = ["linux/amd64", "linux/arm64"];

/// A native amd64 agent and an emulating one offering arm64, each with a work dir of its own
/// (new scratch directories, so new storage and caches), named `NAME-GENERATION`.
fn start_agents(coordinator: &Coordinator, generation: &str) -> Vec<Agent> {
    vec![
        Agent::start(
            coordinator,
            AgentOptions::new(&format!("amd64-{generation}"))
                .platform("linux/amd64")
                .emulate("none"),
        ),
        Agent::start(
            coordinator,
            AgentOptions::new(&format!("emu-{generation}")).emulate("linux/arm64"),
        ),
    ]
}

/// The farm, the registry with the base index, and the build as the CLI runs it.
struct Setup {
    registry: Registry,
    coordinator: Coordinator,
    context: BuildContext,
}

impl Setup {
    /// `archfarm build` of the context for both platforms with the registry cache, tagged `tag`;
    /// the finished job (asserted to have succeeded).
    fn build(&self, tag: &str) -> Job {
        let host = self.registry.host();
        let cache = format!("type=registry,ref={host}/cache/realworld");
        let image = format!("{host}/realworld:{tag}");
        let out = self.coordinator.cli(&[
            "build",
            "--progress",
            "plain",
            "--platform",
            &PLATFORMS.join(","),
            "--build-arg",
            &format!("BASE={host}/{BASE_REPO_TAG}"),
            "--cache-to",
            &format!("{cache},mode=max"),
            "--cache-from",
            &cache,
            "-t",
            &image,
            &self.context.arg(),
        ]);
        assert!(
            out.status.success(),
            "archfarm build of {tag} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let job = self
            .coordinator
            .jobs()
            .into_iter()
            .find(|j| j.tags.contains(&image))
            .unwrap_or_else(|| panic!("no job tagged {image}"));
        assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
        job
    }

    /// Each platform's build log, keyed by platform, with where the build ran.
    fn logs(&self, job: &Job) -> BTreeMap<String, String> {
        job.builds
            .iter()
            .map(|b| {
                eprintln!(
                    "{} built {} on {:?} ({:?}): {:?}",
                    job.tags[0], b.platform, b.agent, b.mode, b.decision
                );
                (b.platform.to_string(), self.coordinator.build_log(b.id))
            })
            .collect()
    }

    /// Reads the index under `tag` back and checks each platform's program: an ELF file for that
    /// platform that carries `version`.
    fn check_images(&self, tag: &str, version: &str) {
        let host = self.registry.host();
        let (_, index) = oci::inspect_index(&format!("{host}/realworld:{tag}"));
        let mut found = Vec::new();
        for child in &index.manifests {
            let platform = child
                .platform
                .as_ref()
                .expect("descriptor platform")
                .to_string();
            let image = format!("{host}/realworld@{}", child.digest);
            check_program(&image, &platform, version).unwrap_or_else(|e| panic!("{e}"));
            found.push(platform);
        }
        found.sort();
        assert_eq!(found, PLATFORMS, "platforms in realworld:{tag}");
    }
}

/// Asserts, for every platform, whether the library's and the app's compile steps were cached.
fn assert_cache_use(what: &str, logs: &BTreeMap<String, String>, library: bool, app: bool) {
    assert_eq!(
        logs.keys().map(String::as_str).collect::<Vec<_>>(),
        PLATFORMS
    );
    for (platform, log) in logs {
        let cached = |step| {
            step_cached(log, step).unwrap_or_else(|| {
                panic!("{what}, {platform}: no step with {step:?} in the build log:\n{log}")
            })
        };
        assert_eq!(
            cached(LIBRARY_STEP),
            library,
            "{what}, {platform}: library compile step cached? Build log:\n{log}"
        );
        assert_eq!(
            cached(APP_STEP),
            app,
            "{what}, {platform}: app compile step cached? Build log:\n{log}"
        );
    }
}

#[test]
fn registry_cache_per_platform_serves_rebuilds_and_fresh_agents() {
    preflight();
    let registry = Registry::start();
    let base = format!("{}/{BASE_REPO_TAG}", registry.host());
    push_bookworm_gcc_index(&Buildah::new(), &PLATFORMS, &base);
    let coordinator = Coordinator::start_with(
        CoordinatorOptions::default()
            .arg("--insecure-registry")
            .arg(registry.host()),
    );
    let setup = Setup {
        registry,
        coordinator,
        context: BuildContext::realworld(),
    };

    // Cold: nothing cached anywhere yet.
    let mut agents = start_agents(&setup.coordinator, "first");
    let version = set_app_version(&setup.context, "1.0.0-cold");
    let job = setup.build("cold");
    let logs = setup.logs(&job);
    assert_cache_use("cold build", &logs, false, false);
    for (platform, log) in &logs {
        assert!(log.contains(&version), "{platform}'s RUN printed {version}");
    }
    setup.check_images("cold", &version);

    // A one-line change of main.c, on the same agents: the library comes from the cache.
    let version = set_app_version(&setup.context, "1.0.1-same-agents");
    let job = setup.build("rebuild");
    assert_cache_use("rebuild on the same agents", &setup.logs(&job), true, false);
    setup.check_images("rebuild", &version);

    // Fresh agents: the first ones stopped, the new ones with new work dirs, so the only cache
    // they can use is the registry's.
    let old_dirs: Vec<_> = agents.iter().map(Agent::work_dir).collect();
    for agent in &mut agents {
        agent.stop();
    }
    let fresh = start_agents(&setup.coordinator, "fresh");
    for agent in &fresh {
        assert!(
            !old_dirs.contains(&agent.work_dir()),
            "{} reuses a work dir",
            agent.name()
        );
    }
    let version = set_app_version(&setup.context, "1.0.2-fresh-agents");
    let job = setup.build("fresh");
    for build in &job.builds {
        let agent = build.agent.as_deref().unwrap_or_default();
        assert!(
            agent.ends_with("-fresh"),
            "{} ran on {agent}, not a fresh agent",
            build.platform
        );
    }
    assert_cache_use("rebuild on fresh agents", &setup.logs(&job), true, false);
    setup.check_images("fresh", &version);

    // The cache lives in its own repositories, never under the job's tags.
    assert_eq!(
        setup.registry.tags("realworld"),
        ["cold", "fresh", "rebuild"]
    );
    // Each platform's steps in a repository of its own, so neither overwrote the other's.
    for platform in ["linux-amd64", "linux-arm64"] {
        let cached = setup.registry.tags(&format!("cache/realworld/{platform}"));
        assert!(
            !cached.is_empty(),
            "no cache images in cache/realworld/{platform}"
        );
    }
}

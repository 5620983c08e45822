//! The cache switches and the promise that a cache never fails a build (issue 16), on the
//! example's busybox so it stays cheap: an agent reuses its own layers on a rebuild, `--no-cache`
//! runs every step again, a cache registry that cannot be reached is left out with a line in the
//! log, one that refuses writes makes the build run again without `--cache-to`, and a cache value
//! buildx would take but archfarm cannot serve is refused by the CLI before anything is uploaded,
//! and a job naming no cache writes the coordinator's `--default-cache`.
//! `tests/realworld.rs` has the registry cache read by fresh agents.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use archfarm_e2e::{
    preflight, Agent, AgentOptions, BuildContext, Coordinator, CoordinatorOptions, Registry,
};
use archfarm_protocol::api::{Job, JobState};

/// How long one single-platform job may take (a failed cache write costs buildah's retries).
const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// A step whose output differs on every run, so a cached one shows by printing nothing.
const DOCKERFILE: &str = "FROM scratch\nCOPY rootfs/amd64/ /\n\
    RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo ran-step-$$-$(/bin/busybox date +%s%N)\"]\n";

/// Builds the busybox context for linux/amd64 into `registry/cache-test:TAG` with `extra` flags;
/// the job and its build log.
fn build(
    coordinator: &Coordinator,
    registry: &Registry,
    tag: &str,
    extra: &[&str],
) -> (Job, String) {
    let context = BuildContext::hello();
    context.write("Dockerfile", DOCKERFILE);
    let image = format!("{}/cache-test:{tag}", registry.host());
    let mut args = vec!["--platform", "linux/amd64", "-t", &image];
    args.extend_from_slice(extra);
    let arg = context.arg();
    args.push(&arg);
    let id = coordinator.submit(&args);
    let job = coordinator.wait_terminal(id, JOB_TIMEOUT);
    let log = coordinator.build_log(job.builds[0].id);
    (job, log)
}

/// Whether the build's `RUN` step ran (it printed its line) rather than came from a cache.
fn step_ran(log: &str) -> bool {
    log.lines().any(|l| l.starts_with("ran-step-"))
}

/// A "registry" that accepts connections and answers every request with 500: reachable, so the
/// agent uses it, but every write buildah tries fails.
fn broken_registry() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    addr
}

#[test]
fn caches_speed_builds_up_and_never_fail_them() {
    preflight();
    let registry = Registry::start();
    // Jobs that name no cache use the farm's default location.
    let coordinator = Coordinator::start_with(
        CoordinatorOptions::default()
            .arg("--default-cache")
            .arg(&format!("{}/farm-cache", registry.host())),
    );
    let _agent = Agent::start(&coordinator, AgentOptions::new("cacher").emulate("none"));

    let (job, log) = build(&coordinator, &registry, "cold", &[]);
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}\n{log}");
    assert!(step_ran(&log), "the cold build ran its step:\n{log}");
    // Below the push registry and repository, so no other push target shares it.
    let below = format!(
        "farm-cache/{}/cache-test",
        registry.host().replace(':', "-")
    );
    assert_eq!(
        job.cache_to[0].to_string(),
        format!("type=registry,ref={}/{below},mode=max", registry.host())
    );
    assert!(
        !registry.tags(&format!("{below}/linux-amd64")).is_empty(),
        "the default cache was written per platform"
    );

    // The agent's own layers: the same build again runs nothing.
    let (job, log) = build(&coordinator, &registry, "warm", &[]);
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}\n{log}");
    assert!(
        !step_ran(&log) && log.contains("--> Using cache"),
        "the rebuild reused the step:\n{log}"
    );

    // --no-cache runs it again.
    let (job, log) = build(&coordinator, &registry, "nocache", &["--no-cache"]);
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}\n{log}");
    assert!(step_ran(&log), "--no-cache ran the step again:\n{log}");
    assert!(job.no_cache, "{job:#?}");

    // A cache registry nobody answers on is left out, and said so.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let down = format!("type=registry,ref={closed}/cache");
    let (job, log) = build(
        &coordinator,
        &registry,
        "down",
        &["--cache-to", &down, "--cache-from", &down],
    );
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}\n{log}");
    assert!(
        log.contains(&format!(
            "--cache-from {closed}/cache/linux-amd64 is not used: its registry {closed} cannot be reached"
        )) && log.contains(&format!("--cache-to {closed}/cache/linux-amd64 is not used")),
        "{log}"
    );

    // A cache registry that answers but refuses the write: built again without --cache-to, and
    // the image still pushed. --no-cache so the step (and its cache write) happens at all.
    let broken = broken_registry();
    let refusing = format!("type=registry,ref={broken}/cache,mode=max");
    let (job, log) = build(
        &coordinator,
        &registry,
        "refused",
        &["--no-cache", "--cache-to", &refusing],
    );
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}\n{log}");
    assert!(
        log.contains(&format!(
            "the cache {broken}/cache/linux-amd64 could not be written"
        )) && log.contains("building again without --cache-to"),
        "{log}"
    );
    let mut tags = registry.tags("cache-test");
    tags.sort();
    assert_eq!(tags, ["cold", "down", "nocache", "refused", "warm"]);

    // A cache type that cannot be shared between machines is refused before any upload.
    let context = BuildContext::hello();
    let out = coordinator.cli(&[
        "build",
        "--platform",
        "linux/amd64",
        "-t",
        &format!("{}/cache-test:gha", registry.host()),
        "--cache-to",
        "type=gha",
        &context.arg(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("type=gha is not supported") && stderr.contains("use type=registry"),
        "{stderr}"
    );
}

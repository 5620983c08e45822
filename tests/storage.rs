//! The agent's build storage, end to end (issue 16): a store per push target, kept under
//! `--max-storage` by dropping the least recently used one instead of failing builds, shown with
//! its driver in `archfarm agents`; `RUN --mount=type=cache` directories that persist between a
//! push target's builds, and a cache id nesting in an earlier build's refused (CVE-2024-9675).

use std::path::Path;
use std::time::Duration;

use archfarm_e2e::{preflight, Agent, AgentOptions, BuildContext, Coordinator, Registry};
use archfarm_protocol::api::{AgentState, BuildState, Job, JobState};
use sha2::{Digest, Sha256};

/// How long one single-platform job may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// Builds `dockerfile` on the example's busybox for linux/amd64 into `repo` and returns the job
/// and its build log.
fn build(
    coordinator: &Coordinator,
    registry: &Registry,
    repo: &str,
    dockerfile: &str,
) -> (Job, String) {
    let context = BuildContext::hello();
    context.write("Dockerfile", dockerfile);
    let image = format!("{}/{repo}:latest", registry.host());
    let id = coordinator.submit(&["--platform", "linux/amd64", "-t", &image, &context.arg()]);
    let job = coordinator.wait_terminal(id, JOB_TIMEOUT);
    let log = coordinator.build_log(job.builds[0].id);
    (job, log)
}

/// The directory of a push target's linux/amd64 store (host network) in an agent's work directory.
fn scope_dir(agent: &Agent, registry: &Registry, repo: &str) -> std::path::PathBuf {
    let digest = Sha256::digest(
        format!("{}/{repo} for linux/amd64, network host", registry.host()).as_bytes(),
    );
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    agent.work_dir().join("storage/scopes").join(name)
}

#[test]
fn an_agent_over_its_storage_limit_drops_the_least_recently_used_store_and_builds_on() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    // Room for the small image's store (busybox, a few MiB), not for the big one's 12 MiB layer.
    let agent = Agent::start(
        &coordinator,
        AgentOptions::new("small-disk")
            .emulate("none")
            .arg("--max-storage")
            .arg("8MiB"),
    );
    let small = "FROM scratch\nCOPY rootfs/amd64/ /\n";
    let (job, log) = build(&coordinator, &registry, "storage/small", small);
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}\n{log}");
    let small_scope = scope_dir(&agent, &registry, "storage/small");
    assert!(
        small_scope.join("root").is_dir(),
        "the first push target has its own store: {}",
        small_scope.display()
    );
    assert_eq!(
        std::fs::read_to_string(small_scope.join("scope"))
            .unwrap()
            .trim(),
        format!(
            "{}/storage/small for linux/amd64, network host",
            registry.host()
        )
    );

    let big = "FROM scratch\nCOPY rootfs/amd64/ /\n\
               RUN [\"/bin/busybox\", \"dd\", \"if=/dev/zero\", \"of=/big\", \"bs=1048576\", \"count=12\"]\n";
    let (job, log) = build(&coordinator, &registry, "storage/big", big);
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}\n{log}");
    assert!(
        registry.tags("storage/big").contains(&"latest".to_string()),
        "pushed: {:?}",
        registry.tags("storage/big")
    );
    // The big build took the storage over its limit: the small store, used least recently and by
    // no build, went whole; the big one stays (pruned, as it alone is over the limit).
    let freed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("storage over its limit"))
        .collect();
    assert_eq!(freed.len(), 1, "{log}");
    eprintln!("the big build's log says: {}", freed[0]);
    assert!(
        freed[0].contains(&format!("dropped scope {}/storage/small", registry.host()))
            && freed[0].contains(&format!("pruned scope {}/storage/big", registry.host())),
        "{}",
        freed[0]
    );
    assert!(
        !small_scope.exists(),
        "{} is still there",
        small_scope.display()
    );
    assert!(scope_dir(&agent, &registry, "storage/big")
        .join("root")
        .is_dir());
    assert!(
        agent
            .log()
            .contains("dropped the least recently used storage scope"),
        "{}",
        agent.log_tail(30)
    );

    // The agents API and `archfarm agents` show the driver (overlay works here, as root on the
    // machine's file system) and the storage's use against its limit.
    archfarm_e2e::wait_until(
        Duration::from_secs(60),
        "the agent to report its storage",
        || {
            let me = coordinator
                .agents()
                .into_iter()
                .find(|a| a.name == "small-disk")
                .unwrap();
            me.storage.is_some_and(|s| s.used_bytes <= 8 << 20)
        },
    );
    let me = coordinator
        .agents()
        .into_iter()
        .find(|a| a.name == "small-disk")
        .unwrap();
    assert_eq!(me.storage_driver.as_deref(), Some("overlay"));
    assert_eq!(me.storage.unwrap().limit_bytes, 8 << 20);
    let table = coordinator.cli(&["agents"]);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    eprintln!("archfarm agents:\n{table}");
    assert!(
        table.lines().next().unwrap().ends_with("STORAGE  DISK"),
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with("small-disk")).unwrap();
    assert!(
        row.contains("  overlay  ") && row.ends_with("/8.0 MiB"),
        "{table}"
    );
}

#[test]
fn cache_mounts_persist_per_push_target_and_may_not_nest_with_an_earlier_builds() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    let agent = Agent::start(
        &coordinator,
        AgentOptions::new("cache-keeper").emulate("none"),
    );
    let base = "FROM scratch\nCOPY rootfs/amd64/ /\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

    // The first build leaves a mark in its cache, and a link to the host's / as a hostile step would.
    let first = format!(
        "{base}RUN --mount=type=cache,id=c,target=/c sh -c 'echo mark-$RANDOM > /c/mark; ln -s / /c/x; echo left $(cat /c/mark)'\n"
    );
    let (job, log) = build(&coordinator, &registry, "storage/cache", &first);
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}\n{log}");
    let left = log
        .lines()
        .find_map(|l| l.strip_prefix("left "))
        .expect("the step printed its mark")
        .to_string();

    // The next build of the same push target finds it.
    let second =
        format!("{base}RUN --mount=type=cache,id=c,target=/c sh -c 'echo found $(cat /c/mark)'\n");
    let (job, log) = build(&coordinator, &registry, "storage/cache", &second);
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}\n{log}");
    assert!(
        log.lines().any(|l| l == format!("found {left}")),
        "{left}\n{log}"
    );

    // Another push target has caches of its own.
    let (job, log) = build(&coordinator, &registry, "storage/other", &second);
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}\n{log}");
    assert!(!log.contains(&left), "{log}");

    // A cache inside the first one would follow its link to the host: refused, naming both.
    let third = format!("{base}RUN --mount=type=cache,id=c/x,target=/h ls /h/etc\n");
    let (job, log) = build(&coordinator, &registry, "storage/cache", &third);
    assert_eq!(job.state, JobState::Failed, "{job:#?}\n{log}");
    let error = job.builds[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("the cache 'c/x' and the cache 'c'") && error.contains("CVE-2024-9675"),
        "{error}"
    );
    assert!(
        !log.contains("hostname"),
        "the host's /etc was listed:\n{log}"
    );
    assert!(
        Path::new(&scope_dir(&agent, &registry, "storage/cache").join("cache/c/mark")).is_file()
    );
}

#[test]
fn an_agent_whose_disk_is_full_drains_itself_with_the_reason() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    // No disk has this much free, so the agent counts its disk as full from the start.
    let _agent = Agent::spawn(
        &coordinator,
        AgentOptions::new("full-disk")
            .emulate("none")
            .arg("--min-free-disk")
            .arg("1000TiB"),
    );
    archfarm_e2e::wait_until(
        Duration::from_secs(60),
        "the full agent to drain itself",
        || {
            coordinator.agents().iter().any(|a| {
                a.name == "full-disk"
                    && a.state == AgentState::Draining
                    && a.drain_reason
                        .as_deref()
                        .is_some_and(|r| r.contains("disk full"))
            })
        },
    );
    let table = coordinator.cli(&["agents"]);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    eprintln!("archfarm agents:\n{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("full-disk") && l.contains("draining")),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("full-disk: disk full")),
        "the reason under the table:\n{table}"
    );
    // A job it could build waits, saying why, instead of failing on the full disk.
    let context = BuildContext::hello();
    let image = format!("{}/storage/full:latest", registry.host());
    let id = coordinator.submit(&["--platform", "linux/amd64", "-t", &image, &context.arg()]);
    let job = coordinator.job(id);
    assert_eq!(job.builds[0].state, BuildState::Queued, "{job:#?}");
    assert!(
        job.builds[0].waiting.is_some(),
        "the queued build says why it waits: {job:#?}"
    );
}

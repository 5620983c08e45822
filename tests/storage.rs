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

/// A small ext4 file system on a loop device, mounted for the length of a test; unmounted (and its
/// image deleted with the scratch directory) when dropped.
struct SmallDisk {
    mount: std::path::PathBuf,
    _dir: archfarm_e2e::Scratch,
}

impl SmallDisk {
    fn new(mib: u64) -> SmallDisk {
        let dir = archfarm_e2e::Scratch::new("small-disk");
        let image = dir.join("disk.img");
        let mount = dir.join("mnt");
        std::fs::create_dir(&mount).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image));
        run(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount));
        SmallDisk { mount, _dir: dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // The agent (dropped first) has stopped; a lazy unmount also frees the loop device.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
    }
}

#[test]
fn a_build_that_fills_the_disk_is_given_back_without_spending_an_attempt_and_the_agent_drains() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    // Declared before the agent, so the agent stops before its file system goes.
    let disk = SmallDisk::new(96);
    let small = Agent::start(
        &coordinator,
        AgentOptions::new("small-disk")
            .emulate("none")
            .work_dir(disk.mount.join("work")),
    );
    // A step that writes more than the small disk holds: it fails there with ENOSPC.
    let context = BuildContext::hello();
    context.write(
        "Dockerfile",
        "FROM scratch\nCOPY rootfs/amd64/ /\n\
         RUN [\"/bin/busybox\", \"dd\", \"if=/dev/zero\", \"of=/fill\", \"bs=1048576\", \"count=160\"]\n",
    );
    let image = format!("{}/storage/fill:latest", registry.host());
    let id = coordinator.submit(&["--platform", "linux/amd64", "-t", &image, &context.arg()]);
    archfarm_e2e::wait_until(
        JOB_TIMEOUT,
        "the small agent to give the build back and drain",
        || {
            coordinator.job(id).state.is_terminal()
                || coordinator.agents().iter().any(|a| {
                    a.name == "small-disk"
                        && a.state == AgentState::Draining
                        && a.drain_reason
                            .as_deref()
                            .is_some_and(|r| r.contains("ran out of space"))
                })
        },
    );
    let job = coordinator.job(id);
    let log = coordinator.build_log(job.builds[0].id);
    assert_eq!(job.builds[0].state, BuildState::Queued, "{job:#?}\n{log}");
    assert_eq!(
        job.builds[0].attempts, 0,
        "the attempt was given back: {job:#?}"
    );
    // Another agent, with room, takes it from the queue.
    let _big = Agent::start(&coordinator, AgentOptions::new("big-disk").emulate("none"));
    let job = coordinator.wait_terminal(id, JOB_TIMEOUT);
    let log = coordinator.build_log(job.builds[0].id);
    eprintln!("build log:\n{log}");
    let table = coordinator.cli(&["agents"]);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    eprintln!("archfarm agents:\n{table}");
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}\n{log}");
    let build = &job.builds[0];
    assert_eq!(build.agent.as_deref(), Some("big-disk"), "{job:#?}");
    // One attempt: the one on the small disk was given back, the one that built counts.
    assert_eq!(build.attempts, 1, "{job:#?}");
    assert!(
        log.contains("attempt 1 on agent small-disk")
            && log.contains("attempt 1 on agent big-disk"),
        "{log}"
    );
    assert!(
        log.to_lowercase().contains("no space left on device"),
        "the step's own words are in the log:\n{log}"
    );
    assert!(
        log.contains("[archfarm] agent small-disk gave the build back: disk full: build")
            && log.contains("(dd: error writing '/fill': No space left on device)")
            && log.contains("queued again without counting the attempt"),
        "{log}"
    );
    // The small agent still takes nothing, and says why.
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("small-disk") && l.contains("draining")),
        "{table}"
    );
    assert!(
        table.lines().any(
            |l| l.starts_with("small-disk: disk full: build") && l.contains("ran out of space")
        ),
        "{table}"
    );
    assert!(registry
        .tags("storage/fill")
        .contains(&"latest".to_string()));
    drop(small);
}

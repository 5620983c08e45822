//! A job's network, end to end (issue 15 item 2): a real agent started with `--network host`
//! (so it allows host and none), real buildah builds whose `RUN` step, a static C program, asks
//! the coordinator's health endpoint on the host's loopback. `archfarm build --network none`
//! cannot reach it; the same job without `--network` (the agent's default, host) does. A job
//! asking for `private`, which that agent does not allow, waits saying so until it is cancelled.

use std::time::Duration;

use archfarm_e2e::{preflight, Agent, AgentOptions, BuildContext, Coordinator, Registry};
use archfarm_protocol::api::{BuildState, JobState};
use archfarm_protocol::Network;

/// How long one single-platform job may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// GET /healthz from 127.0.0.1:PORT (no name lookup: a static binary has no NSS); every line it
/// prints starts with `probe:`. busybox wget is no help: it crashes in runc containers here.
const PROBE_C: &str = r#"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
        printf("probe: coordinator unreachable: %s\n", strerror(errno));
        return 0;
    }
    const char *req = "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    write(s, req, strlen(req));
    char buf[512] = {0};
    ssize_t n = read(s, buf, sizeof buf - 1);
    char *eol = strpbrk(buf, "\r\n");
    if (eol) *eol = 0;
    printf("probe: coordinator answered: %s\n", n > 0 ? buf : "(nothing)");
    close(s);
    return 0;
}
"#;

const DOCKERFILE: &str = "FROM scratch
COPY rootfs/amd64/ /
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
ENV PATH=/bin
COPY probe /probe
ARG COORDINATOR_PORT
RUN /probe \"$COORDINATOR_PORT\"
";

/// The context: the example's amd64 busybox, the probe compiled statically, the Dockerfile.
fn probe_context() -> BuildContext {
    let context = BuildContext::hello();
    context.compile_static("probe", PROBE_C);
    context.write("Dockerfile", DOCKERFILE);
    context
}

/// Builds the probe with `extra` flags (e.g. `--network none`) and returns its `probe:` lines
/// and the whole build log.
fn probe(
    coordinator: &Coordinator,
    registry: &Registry,
    tag: &str,
    extra: &[&str],
) -> (Vec<String>, String) {
    let context = probe_context();
    let image = format!("{}/network:{tag}", registry.host());
    let port = format!("COORDINATOR_PORT={}", coordinator.port());
    let context_arg = context.arg();
    let mut args = vec![
        "--platform",
        "linux/amd64",
        "--build-arg",
        &port,
        "-t",
        &image,
    ];
    args.extend_from_slice(extra);
    args.push(&context_arg);
    let id = coordinator.submit(&args);
    let job = coordinator.wait_terminal(id, JOB_TIMEOUT);
    let log = coordinator.build_log(job.builds[0].id);
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}\n{log}");
    let said: Vec<String> = log
        .lines()
        .filter(|l| l.starts_with("probe:"))
        .map(str::to_string)
        .collect();
    eprintln!("{tag}: the step said:\n  {}", said.join("\n  "));
    (said, log)
}

#[test]
fn a_job_gets_the_network_it_asks_for_within_what_the_agent_allows() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    let mut agent = Agent::start(
        &coordinator,
        AgentOptions::new("host-net")
            .emulate("none")
            .arg("--network")
            .arg("host"),
    );

    // What it allows without --allow-network: its own network, and none.
    let listed = coordinator.agents();
    let me = listed.iter().find(|a| a.name == "host-net").unwrap();
    assert_eq!(me.default_network, Some(Network::Host));
    assert_eq!(me.allowed_networks, [Network::Host, Network::None]);
    let table = coordinator.cli(&["agents"]);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    eprintln!("archfarm agents:\n{table}");
    assert!(
        table.lines().next().unwrap().contains("NETWORK  ALLOWS"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("host-net") && l.contains("  host     host,none  ")),
        "{table}"
    );

    // --network none: the step has only its own loopback.
    let (said, log) = probe(&coordinator, &registry, "none", &["--network", "none"]);
    assert!(
        said.iter()
            .any(|l| l.starts_with("probe: coordinator unreachable: Connection refused")),
        "{said:?}\n{log}"
    );
    assert!(log.contains("network none)"), "{log}");

    // The same job leaving the network to the agent: its default, the host's, reaches it.
    let (said, log) = probe(&coordinator, &registry, "default", &[]);
    assert!(
        said.iter().any(
            |l| l.starts_with("probe: coordinator answered: HTTP/1.") && l.ends_with(" 200 OK")
        ),
        "{said:?}\n{log}"
    );
    assert!(log.contains("network host)"), "{log}");

    // private is not among what this agent allows: the job waits, saying so, and is not leased.
    let context = probe_context();
    let image = format!("{}/network:private", registry.host());
    let id = coordinator.submit(&[
        "--platform",
        "linux/amd64",
        "--network",
        "private",
        "-t",
        &image,
        &context.arg(),
    ]);
    let expected = "no agent for linux/amd64 allows --network private (host-net allows host, \
                    none); start one with --allow-network private, or build with another --network";
    let job = coordinator.wait_job(id, Duration::from_secs(30), "the waiting reason", |j| {
        j.builds[0].waiting.as_deref() == Some(expected)
    });
    assert_eq!(job.network, Some(Network::Private));
    // Not readiness but an absence: give the idle agent, woken by the submission, time to have
    // taken the build if the coordinator were going to lease it.
    std::thread::sleep(Duration::from_secs(3));
    let job = coordinator.job(id);
    assert_eq!(
        (job.state, job.builds[0].state, job.builds[0].attempts),
        (JobState::Queued, BuildState::Queued, 0),
        "{job:#?}"
    );
    let shown = coordinator.cli(&["job", &id.to_string()]);
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    eprintln!("archfarm job:\n{shown}");
    assert!(shown.contains("\nnetwork    private\n"), "{shown}");
    assert!(shown.contains(expected), "{shown}");
    let out = coordinator.cli(&["cancel", &id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = coordinator.wait_terminal(id, Duration::from_secs(30));
    assert_eq!(job.state, JobState::Cancelled);
    agent.stop();
}

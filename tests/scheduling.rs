//! Scheduling that sees the whole farm (issue 16, item 5), end to end with agents that speak the
//! protocol but build nothing: the build only one agent can take goes to that agent, and a
//! rebuild waits for the agent whose cache is warm. Decisions and waiting reasons are read back
//! with the CLI and the job API. Nothing is pushed, so no registry runs: the tag's registry is
//! contacted only by stitching, which retries against nothing until the test ends.

use std::time::Duration;

use archfarm_e2e::oci::{self, OCI_MANIFEST};
use archfarm_e2e::{preflight, BuildContext, Coordinator, CoordinatorOptions, ProtocolAgent};
use archfarm_protocol::api::BuildMode;

const LEASE_WITHIN: Duration = Duration::from_secs(30);

#[test]
fn each_agent_is_spent_where_it_is_needed_and_rebuilds_go_to_warm_caches() {
    preflight();
    // A hold longer than the test, so that a held build is still held when the test asks.
    let coordinator = Coordinator::start_with(
        CoordinatorOptions::default()
            .arg("--warm-agent-wait-secs")
            .arg("600"),
    );
    let context = BuildContext::hello();
    let amd = ProtocolAgent::register(&coordinator, "amd64-a", &["linux/amd64"]);
    let emu = ProtocolAgent::register_emulating(
        &coordinator,
        "emu-1",
        &["linux/amd64"],
        &["linux/arm64"],
    );

    // The case: the emulating agent asks first and gets arm64, which only it can build,
    // though amd64 is first in the queue; the native-only agent gets amd64.
    let first = coordinator.submit(&[
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        "127.0.0.1:1/team/app:v1",
        &context.arg(),
    ]);
    let arm = emu.lease_within(LEASE_WITHIN);
    assert_eq!(
        (arm.job_id, arm.platform.to_string(), arm.mode),
        (first, "linux/arm64".to_string(), BuildMode::Emulated)
    );
    let x86 = amd.lease_within(LEASE_WITHIN);
    assert_eq!(
        (x86.job_id, x86.platform.to_string(), x86.mode),
        (first, "linux/amd64".to_string(), BuildMode::Native)
    );
    let shown = coordinator.cli(&["job", &first.to_string()]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(
            "linux/arm64: decision: emulated on emu-1: only agent that can build linux/arm64; \
             linux/amd64 left for 1 other agent\n"
        ) && shown
            .contains("linux/amd64: decision: native on amd64-a: builds linux/amd64 natively\n"),
        "{shown}"
    );

    // Both succeed: each agent's cache is now warm for its platform of team/app.
    let digest = oci::sha256_digest(b"an image nobody pushed");
    for (agent, lease) in [(&emu, &arm), (&amd, &x86)] {
        agent
            .complete(
                lease.build_id,
                lease.lease_token,
                &digest,
                OCI_MANIFEST,
                100,
            )
            .expect("completed");
    }

    // A rebuild for amd64: emu-1 could build it natively, but amd64-a built it last.
    let second = coordinator.submit(&[
        "--platform",
        "linux/amd64",
        "-t",
        "127.0.0.1:1/team/app:v2",
        &context.arg(),
    ]);
    assert!(
        emu.lease(1).is_none(),
        "emu-1 took the amd64 rebuild from the warm amd64-a"
    );
    let waiting = coordinator.job(second).builds[0]
        .waiting
        .clone()
        .unwrap_or_default();
    assert!(
        waiting.starts_with("held for amd64-a, which built it ")
            && waiting.contains(" ago (warm cache), for up to ")
            && waiting.ends_with(" more; then any agent may take it"),
        "{waiting}"
    );
    let rebuild = amd.lease_within(LEASE_WITHIN);
    assert_eq!(rebuild.job_id, second);
    let decision = coordinator.job(second).builds[0]
        .decision
        .clone()
        .unwrap_or_default();
    assert!(
        decision.starts_with(
            "native on amd64-a: warm cache (built 127.0.0.1:1/team/app for linux/amd64 "
        ),
        "{decision}"
    );
}

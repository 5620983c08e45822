//! Tags only move forward (issue 18): two jobs push the same tag and the older one (submitted
//! first) stitches last. Its build waits at a gate the test opens only after the newer job
//! succeeded, so the order is forced, not timed. The tag must end on the newer job's index, read
//! back from the registry with skopeo; the older job succeeds with a warning saying so, its index
//! is in the registry by digest and under the tag no newer job holds. And `archfarm cancel` while
//! a job is stitching against a registry that never answers: the job ends cancelled, its stitching
//! lets go of the registry, and its tag in the working registry never moved.

use std::io::Read;
use std::sync::mpsc;
use std::time::Duration;

use archfarm_e2e::oci::{inspect_raw, sha256_digest};
use archfarm_e2e::{
    preflight, wait_until, Agent, AgentOptions, BuildContext, Coordinator, Ingress, Registry,
};
use archfarm_protocol::api::{BuildState, JobState};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A registry that accepts connections and never answers; each connection's end is sent on
/// `closed`, so the test learns when the coordinator let go of it.
fn stalled_registry() -> (String, mpsc::Receiver<()>, mpsc::Receiver<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the stalled registry");
    let host = listener.local_addr().unwrap().to_string();
    let (accepted_tx, accepted) = mpsc::channel();
    let (closed_tx, closed) = mpsc::channel();
    std::thread::spawn(move || {
        for mut socket in listener.incoming().flatten() {
            let _ = accepted_tx.send(());
            let closed_tx = closed_tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(socket.read(&mut buf), Ok(n) if n > 0) {}
                let _ = closed_tx.send(());
            });
        }
    });
    (host, accepted, closed)
}

#[test]
fn an_older_job_stitching_last_leaves_the_tag_on_the_newer_index() {
    preflight();
    let timeout = Duration::from_secs(300);
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    // Only its gate is used: a build step waits there until the test opens it.
    let gate = Ingress::start(coordinator.url());
    // Capacity 2: the newer job builds beside the older one waiting at the gate.
    let _agent = Agent::start(
        &coordinator,
        AgentOptions::new("amd64")
            .platform("linux/amd64")
            .emulate("none")
            .capacity(2),
    );
    let tag = format!("{}/race/app:latest", registry.host());
    let older_only = format!("{}/race/app:older", registry.host());

    let older_context = BuildContext::hello();
    older_context.write(
        "Dockerfile",
        &format!(
            "FROM scratch\nCOPY rootfs/amd64/ /\n\
             RUN [\"/bin/busybox\", \"wget\", \"-q\", \"-O\", \"/gate\", \"{}\"]\n",
            gate.gate_url()
        ),
    );
    let older = coordinator.submit(&[
        "--platform",
        "linux/amd64",
        "-t",
        &tag,
        "-t",
        &older_only,
        &older_context.arg(),
    ]);
    wait_until(timeout, "the older job's build to run", || {
        coordinator.job(older).builds[0].state == BuildState::Building
    });

    let newer_context = BuildContext::hello();
    newer_context.write("Dockerfile", "FROM scratch\nCOPY rootfs/amd64/ /\n");
    let newer = coordinator.submit(&[
        "--platform",
        "linux/amd64",
        "-t",
        &tag,
        &newer_context.arg(),
    ]);
    let newer_job = coordinator.wait_terminal(newer, timeout);
    assert_eq!(newer_job.state, JobState::Succeeded, "{newer_job:#?}");
    let newer_digest = newer_job.index_digest.clone().expect("an index digest");
    assert_eq!(
        coordinator.job(older).state,
        JobState::Building,
        "the older job is still held at the gate"
    );

    gate.open_gate();
    let older_job = coordinator.wait_terminal(older, timeout);
    assert_eq!(
        older_job.state,
        JobState::Succeeded,
        "{older_job:#?}\n{}",
        coordinator.log_tail(40)
    );
    let older_digest = older_job.index_digest.clone().expect("an index digest");
    assert_ne!(older_digest, newer_digest, "two different images");
    let warning = format!("tag {tag} left on newer job {newer}'s index");
    assert!(
        older_job.warnings.contains(&warning),
        "{:?} lacks {warning:?}",
        older_job.warnings
    );

    // Read back from the registry itself.
    let under_tag = inspect_raw(&tag).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        sha256_digest(&under_tag),
        newer_digest,
        "{tag} went back to the older job's index"
    );
    let under_own_tag = inspect_raw(&older_only).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sha256_digest(&under_own_tag), older_digest);
    let by_digest = inspect_raw(&format!("{}/race/app@{older_digest}", registry.host()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sha256_digest(&by_digest), older_digest);
    eprintln!(
        "{tag}: {} (newer job {newer}); older job {older}: {older_digest}, warnings {:?}",
        sha256_digest(&under_tag),
        older_job.warnings
    );
}

#[test]
fn cancel_while_stitching_ends_the_job_cancelled_before_any_tag_moves() {
    preflight();
    let timeout = Duration::from_secs(300);
    let registry = Registry::start();
    let (stalled, accepted, closed) = stalled_registry();
    let coordinator = Coordinator::start();
    let _agent = Agent::start(
        &coordinator,
        AgentOptions::new("amd64")
            .platform("linux/amd64")
            .emulate("none"),
    );
    let context = BuildContext::hello();
    context.write("Dockerfile", "FROM scratch\nCOPY rootfs/amd64/ /\n");
    // The children go to every repository before any tag moves: the stalled registry first.
    let tag = format!("{}/cancel/app:1", registry.host());
    let id = coordinator.submit(&[
        "--platform",
        "linux/amd64",
        "-t",
        &tag,
        "-t",
        &format!("{stalled}/cancel/app:1"),
        &context.arg(),
    ]);
    accepted
        .recv_timeout(timeout)
        .expect("stitching reached the stalled registry");
    assert_eq!(coordinator.job(id).state, JobState::Stitching);

    let out = coordinator.cli(&["cancel", &id.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("job {id} cancelled\n"));
    // The stitching finds its lease gone and drops the request it had in flight.
    closed
        .recv_timeout(timeout)
        .expect("the stitching let go of the stalled registry");
    let job = coordinator.job(id);
    assert_eq!(job.state, JobState::Cancelled, "{job:#?}");
    assert_eq!(job.error.as_deref(), Some("cancelled by user"));
    assert_eq!(job.index_digest, None);
    assert_eq!(
        registry.tags("cancel/app"),
        Vec::<String>::new(),
        "no tag moved"
    );
    eprintln!(
        "{}",
        coordinator
            .log()
            .lines()
            .filter(|l| l.contains("stitching lease is gone") || l.contains("job cancelled"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

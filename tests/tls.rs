//! The coordinator over HTTPS with a CA made by the test (issue 5): agents and the CLI work with
//! `--ca-cert` and stop with exit code 2 and a certificate message without it; the certificate is
//! replaced on SIGHUP while the coordinator runs (a broken replacement keeps the one in use); with
//! `--client-ca` an agent needs a client certificate signed by that CA.
//!
//! Builds are native linux/amd64 only, to keep this quick.

use std::time::Duration;

use archfarm_e2e::oci;
use archfarm_e2e::{
    last_line, preflight, run_cli, served_certificate, wait_until, Agent, AgentOptions,
    BuildContext, Coordinator, CoordinatorOptions, CoordinatorTls, Registry, Signal, TestCa,
};
use archfarm_protocol::api::{ErrorResponse, JobState};
use archfarm_protocol::Digest;
use reqwest::Method;

/// How long an agent that cannot trust the coordinator may take to give up (it prepares buildah
/// first).
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a reload may take to show.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A native amd64 agent, without TLS options.
fn amd64(name: &str) -> AgentOptions {
    AgentOptions::new(name)
        .platform("linux/amd64")
        .emulate("none")
}

/// Asserts that the agent stops by itself with exit code 2 and a log containing every needle.
fn assert_exits_2(agent: &mut Agent, needles: &[&str]) {
    let status = agent.wait_exit(EXIT_TIMEOUT);
    let said = agent.log();
    assert_eq!(status.code(), Some(2), "agent exit code; it said: {said}");
    for needle in needles {
        assert!(
            said.contains(needle),
            "no {needle:?} in the agent's log: {said}"
        );
    }
}

#[test]
fn agents_and_the_cli_over_https_with_a_self_signed_ca() {
    preflight();
    let registry = Registry::start();
    let ca = TestCa::new("farm");
    let server = ca.server("coordinator");
    let mut coordinator = Coordinator::start_with(
        CoordinatorOptions::default().tls(CoordinatorTls::new(&ca, &server)),
    );
    assert!(coordinator.url().starts_with("https://127.0.0.1:"));
    assert!(
        coordinator
            .log_tail(50)
            .contains(&format!("listening on {}", coordinator.url())),
        "the coordinator does not log its https:// URL: {}",
        coordinator.log_tail(50)
    );

    // Without --ca-cert: a configuration error, said as such, not an endless retry.
    let mut untrusting = Agent::spawn(&coordinator, amd64("untrusting"));
    assert_exits_2(&mut untrusting, &["not trusted", "--ca-cert"]);
    let context = BuildContext::hello();
    let tag = format!("{}/hello:tls", registry.host());
    let build_args = [
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-t",
        &tag,
        &context.arg(),
    ];
    let out = run_cli(
        coordinator.url(),
        None,
        &build_args,
        Duration::from_secs(120),
    );
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "archfarm build without --ca-cert: {stderr}"
    );
    assert!(
        stderr.contains("the coordinator's TLS certificate is not trusted")
            && stderr.contains("pass --ca-cert FILE"),
        "archfarm does not say what is wrong with the certificate: {stderr}"
    );
    assert!(coordinator.jobs().is_empty(), "a job was submitted");

    // With it: the agent registers and builds, the CLI submits and gets the index digest.
    let _agent = Agent::start(
        &coordinator,
        amd64("amd64").arg("--ca-cert").arg(ca.ca_path()),
    );
    let out = coordinator.cli(&build_args); // the harness passes ARCHFARM_CA_CERT
    assert!(
        out.status.success(),
        "archfarm build failed: {}",
        text(&out.stderr)
    );
    let printed = last_line(&out.stdout);
    Digest::parse(&printed)
        .unwrap_or_else(|e| panic!("last stdout line is not a digest: {printed:?} ({e})"));
    let (raw, _) = oci::inspect_index(&tag);
    assert_eq!(oci::sha256_digest(&raw), printed, "index digest");
    let job = coordinator.only_job();
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(job.builds[0].agent.as_deref(), Some("amd64"), "{job:#?}");

    // SIGHUP: a new certificate, written over the files in use, is served to new connections.
    let healthz = format!("{}/healthz", coordinator.url());
    assert_eq!(
        served_certificate(&ca.ca_path(), &healthz).unwrap(),
        server.der
    );
    let renewed = ca.server("coordinator-renewed");
    std::fs::copy(&renewed.cert, &server.cert).unwrap();
    std::fs::copy(&renewed.key, &server.key).unwrap();
    coordinator.signal(Signal::HUP);
    wait_until(
        RELOAD_TIMEOUT,
        "the renewed certificate to be served",
        || served_certificate(&ca.ca_path(), &healthz).ok() == Some(renewed.der.clone()),
    );
    assert!(coordinator
        .log_tail(100)
        .contains("TLS certificate reloaded"));

    // A broken replacement is refused with an error in the log; the renewed one stays.
    let failures = |c: &Coordinator| c.log_tail(10_000).matches("reload failed").count();
    let before = failures(&coordinator);
    std::fs::write(&server.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    coordinator.signal(Signal::HUP);
    wait_until(
        RELOAD_TIMEOUT,
        "the broken certificate to be refused",
        || failures(&coordinator) > before,
    );
    assert_eq!(
        served_certificate(&ca.ca_path(), &healthz).unwrap(),
        renewed.der,
        "a broken replacement changed the certificate served"
    );
    coordinator.assert_running();
    // The CLI still works over the kept certificate.
    let out = coordinator.cli(&["agents"]);
    assert!(
        out.status.success(),
        "archfarm agents: {}",
        text(&out.stderr)
    );
}

#[test]
fn client_certificates_for_agents_with_client_ca() {
    preflight();
    let ca = TestCa::new("farm");
    let agents_ca = TestCa::new("agents");
    let server = ca.server("coordinator");
    let coordinator = Coordinator::start_with(
        CoordinatorOptions::default()
            .tls(CoordinatorTls::new(&ca, &server).with_client_ca(&agents_ca.ca_path())),
    );
    let trusting = |name: &str| amd64(name).arg("--ca-cert").arg(ca.ca_path());

    // Registration without a client certificate: 401 with a code that says why.
    let resp = coordinator
        .request(Method::POST, "/api/v1/agents/register")
        .bearer_auth(coordinator.join_token())
        .json(&serde_json::json!({
            "name": "bare", "native_platforms": ["linux/amd64"], "capacity": 1
        }))
        .send()
        .expect("register");
    assert_eq!(resp.status(), 401);
    let err: ErrorResponse = resp.json().expect("an ErrorResponse");
    assert_eq!(err.code, "client_certificate_required", "{err:?}");

    // The agent without one stops with exit code 2 and says what to pass.
    let mut bare = Agent::spawn(&coordinator, trusting("bare"));
    assert_exits_2(
        &mut bare,
        &["requires a client certificate", "--client-cert"],
    );

    // One signed by another CA is refused at the handshake: exit code 2 as well.
    let stranger = ca.client("stranger");
    let mut impostor = Agent::spawn(
        &coordinator,
        trusting("impostor")
            .arg("--client-cert")
            .arg(&stranger.cert)
            .arg("--client-key")
            .arg(&stranger.key),
    );
    let status = impostor.wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(2),
        "impostor agent; it said: {}",
        impostor.log()
    );

    // One signed by the client CA registers and leases.
    let cert = agents_ca.client("agent-1");
    let _agent = Agent::start(
        &coordinator,
        trusting("agent-1")
            .arg("--client-cert")
            .arg(&cert.cert)
            .arg("--client-key")
            .arg(&cert.key),
    );
    let agents = coordinator.agents();
    assert_eq!(
        agents.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["agent-1"],
        "{agents:#?}"
    );
    // The CLI needs no client certificate.
    let out = coordinator.cli(&["agents"]);
    assert!(
        out.status.success(),
        "archfarm agents: {}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("agent-1"));
}

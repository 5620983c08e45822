//! A job's network, in process with the real router and database: it is leased only to an agent
//! that allows it, waits saying so while none does, and travels in the job, the agents listing
//! and the lease. Runs on PostgreSQL too when `ARCHFARM_TEST_POSTGRES` is set.

mod common;

use archfarm_protocol::api::{AgentList, BuildState, RegisterResponse};
use archfarm_protocol::Network;
use common::{error_of, Coordinator};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Registers an agent for linux/amd64 that declares its networks as a current agent does.
async fn register_with(
    c: &Coordinator,
    name: &str,
    default: &str,
    allowed: &[&str],
) -> RegisterResponse {
    let res = c
        .http
        .post(c.url("/agents/register"))
        .bearer_auth("join-secret")
        .json(&json!({
            "name": name, "native_platforms": ["linux/amd64"], "capacity": 1,
            "default_network": default, "allowed_networks": allowed,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

fn job_body(ctx: &str, network: Option<&str>) -> Value {
    let mut body =
        json!({"context": ctx, "platforms": ["linux/amd64"], "tags": ["localhost:5000/app:1"]});
    if let Some(n) = network {
        body["network"] = json!(n);
    }
    body
}

#[tokio::test]
async fn a_job_asking_for_a_network_goes_only_to_an_agent_that_allows_it() {
    let c = Coordinator::start(&[]).await;
    // An agent from before per-job networks (it says nothing) and one that allows only host.
    let old = c.register("old", &["linux/amd64"], &[]).await;
    let host_only = register_with(&c, "host-only", "host", &["host"]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;

    let job = c.submit(job_body(&ctx, Some("none"))).await;
    assert_eq!(job.network, Some(Network::None));
    assert!(
        c.lease(&old).await.is_none(),
        "an agent that never said it allows none took the build"
    );
    assert!(
        c.lease(&host_only).await.is_none(),
        "a host-only agent took the build"
    );
    let job = c.job(job.id).await;
    let build = &job.builds[0];
    assert_eq!(build.state, BuildState::Queued);
    let waiting = build.waiting.as_deref().unwrap_or_default();
    assert_eq!(
        waiting,
        "no agent for linux/amd64 allows --network none (host-only allows host; old allows only \
         its default); start one with --allow-network none, or build with another --network"
    );

    // The agents listing shows what each allows.
    let agents: AgentList = c
        .http
        .get(c.url("/agents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let of = |name: &str| {
        agents
            .agents
            .iter()
            .find(|a| a.name == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (of("old").default_network, of("old").allowed_networks),
        (None, vec![])
    );
    assert_eq!(of("host-only").default_network, Some(Network::Host));
    assert_eq!(of("host-only").allowed_networks, [Network::Host]);

    // An agent that allows none takes it, and its lease says which network to build with.
    let sealed = register_with(&c, "sealed", "host", &["host", "none"]).await;
    let lease = c
        .lease(&sealed)
        .await
        .expect("the agent allowing none takes the build");
    assert_eq!(lease.build_id, build.id);
    assert_eq!(lease.network, Some(Network::None));

    // A job that leaves the network to the agent goes to any of them, old ones included, and its
    // lease names no network.
    let plain = c.submit(job_body(&ctx, None)).await;
    assert_eq!(plain.network, None);
    let lease = c
        .lease(&old)
        .await
        .expect("the old agent takes a default job");
    assert_eq!(lease.job_id, plain.id);
    assert_eq!(lease.network, None);
    c.stop().await;
}

#[tokio::test]
async fn an_agents_default_is_always_among_what_it_allows() {
    let c = Coordinator::start(&[]).await;
    // It names only none as allowed, but a job asking for host, its default, gets what it would
    // have got anyway.
    let agent = register_with(&c, "odd", "host", &["none"]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    c.submit(job_body(&ctx, Some("host"))).await;
    let lease = c.lease(&agent).await.expect("a host job on a host agent");
    assert_eq!(lease.network, Some(Network::Host));
    c.stop().await;
}

#[tokio::test]
async fn a_network_nobody_knows_is_refused_naming_the_accepted_ones() {
    let c = Coordinator::start(&[]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let res = c
        .http
        .post(c.url("/jobs"))
        .json(&job_body(&ctx, Some("bridge")))
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_network")
    );
    assert_eq!(
        e.message,
        "'bridge' is not a build network: accepted are default (the agent's own), host (the agent \
         host's network), none (loopback only) and private (a namespace behind NAT)"
    );
    // `default` is a word for the job, not for an agent's list.
    let res = c
        .http
        .post(c.url("/agents/register"))
        .bearer_auth("join-secret")
        .json(&json!({
            "name": "x", "native_platforms": ["linux/amd64"], "capacity": 1,
            "allowed_networks": ["host", "default"],
        }))
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    assert!(
        e.message
            .contains("'default' is not a build network: accepted are host"),
        "{}",
        e.message
    );
    c.stop().await;
}

//! Stitching that cannot finish is stopped: a job cancelled while stitching ends cancelled and its
//! stitching lets go of the registry; a job whose stitching outlasts `--stitch-timeout-secs`
//! fails with the deadline named. The registry here stalls: it accepts connections and never
//! answers, as an overloaded or wedged registry behind a load balancer may.

mod common;

use std::time::Duration;

use archfarm_protocol::api::{Job, JobState};
use common::Coordinator;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// A registry that accepts every connection and never answers. Each connection's end is sent on
/// the channel, so a test learns when the coordinator let go of it.
struct StalledRegistry {
    host: String,
    accepted: mpsc::UnboundedReceiver<()>,
    closed: mpsc::UnboundedReceiver<()>,
}

impl StalledRegistry {
    async fn start() -> StalledRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let (accepted_tx, accepted) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let _ = accepted_tx.send(());
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    // Reads what the coordinator sends, answers nothing, until it hangs up.
                    while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
                    let _ = closed_tx.send(());
                });
            }
        });
        StalledRegistry {
            host,
            accepted,
            closed,
        }
    }
}

/// Waits for `what` on `rx`; a minute is a safety net against a hang, not a measurement.
async fn next(rx: &mut mpsc::UnboundedReceiver<()>, what: &str) {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within a minute"))
        .unwrap();
}

/// A job tagged in `registry` whose one build an agent reported pushed: the coordinator is then
/// stitching it, against that registry.
async fn stitching_job(c: &Coordinator, registry: &str) -> Job {
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let amd = c.register("amd", &["linux/amd64"], &[]).await;
    let job = c
        .submit(json!({"context": ctx, "platforms": ["linux/amd64"],
            "tags": [format!("{registry}/app:latest")]}))
        .await;
    let lease = c.lease(&amd).await.expect("amd64 is leased");
    let done = json!({"lease_token": lease.lease_token, "digest": format!("sha256:{}", "d".repeat(64)),
        "media_type": "application/vnd.oci.image.manifest.v1+json", "size": 10});
    assert_eq!(
        c.report(&amd, lease.build_id, "complete", done)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    job
}

#[tokio::test]
async fn a_job_cancelled_while_stitching_ends_cancelled_and_its_stitching_stops() {
    let mut registry = StalledRegistry::start().await;
    // A 3 s stitching lease renewed every second: the stitching learns of the cancel quickly.
    let c = Coordinator::start(&["--heartbeat-secs", "1", "--missed-heartbeats", "3"]).await;
    let job = stitching_job(&c, &registry.host).await;
    next(&mut registry.accepted, "stitching reaching the registry").await;
    assert_eq!(c.job(job.id).await.state, JobState::Stitching);

    let res = c
        .http
        .post(c.url(&format!("/jobs/{}/cancel", job.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cancelled: Job = res.json().await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled, "{cancelled:#?}");
    assert_eq!(cancelled.error.as_deref(), Some("cancelled by user"));

    // The stitching finds its lease gone and drops the request it had in flight.
    next(
        &mut registry.closed,
        "the stitching letting go of the registry",
    )
    .await;
    let after = c.job(job.id).await;
    assert_eq!(after.state, JobState::Cancelled, "{after:#?}");
    assert_eq!(after.index_digest, None);
    let store = c.store().await;
    assert_eq!(
        store
            .tag_head(&format!("{}/app:latest", registry.host))
            .await
            .unwrap(),
        None,
        "no tag moved"
    );
    c.stop().await;
}

#[tokio::test]
async fn stitching_past_its_deadline_fails_the_job() {
    let mut registry = StalledRegistry::start().await;
    let c = Coordinator::start(&["--stitch-timeout-secs", "1"]).await;
    let job = stitching_job(&c, &registry.host).await;
    next(&mut registry.accepted, "stitching reaching the registry").await;
    // The deadline ends the stitch: the stalled request is dropped.
    next(
        &mut registry.closed,
        "the stitching letting go of the registry",
    )
    .await;
    let mut ended = c.job(job.id).await;
    for _ in 0..600 {
        if ended.state.is_terminal() {
            break;
        }
        // Polling the job's state, as a client does; not a measured wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
        ended = c.job(job.id).await;
    }
    assert_eq!(ended.state, JobState::Failed, "{ended:#?}");
    assert_eq!(
        ended.error.as_deref(),
        Some("stitching did not finish within 1s"),
        "{ended:#?}"
    );
    c.stop().await;
}

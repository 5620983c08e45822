//! The coordinator's HTTP API end to end, in process on port 0 with a real SQLite database:
//! validation, authentication and the lease protocol (fencing of superseded leases).

mod common;

use archfarm_protocol::api::{Job, JobList, JobState};
use common::{error_of, Coordinator};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

#[tokio::test]
async fn bad_input_is_refused_with_a_reason_and_nothing_is_stored() {
    let c = Coordinator::start(&[]).await;
    let post_job = |body: String| {
        c.http
            .post(c.url("/jobs"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let (status, e) = error_of(post_job("{not json".into()).await.unwrap()).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    assert!(e.message.contains("line 1"), "{}", e.message);

    let unknown = format!("sha256:{}", "b".repeat(64));
    let body = |ctx: &str, platform: &str, tag: &str| {
        json!({"context": ctx, "platforms": [platform], "tags": [tag]}).to_string()
    };
    let (status, e) = error_of(
        post_job(body(&unknown, "linux/amd64", "localhost:5000/a:1"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::BAD_REQUEST, "unknown_context")
    );

    let ctx = c.upload(&[("src/main.c", "int main(){}")]).await;
    let (_, e) = error_of(
        post_job(body(&ctx, "linux/amd64", "localhost:5000/a:1"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e.code, "missing_dockerfile");
    assert!(e.message.contains("'Dockerfile'"), "{}", e.message);
    let (_, e) = error_of(
        post_job(body(&ctx, "linux/sparc", "localhost:5000/a:1"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e.code, "invalid_platform");
    assert!(
        e.message.contains("linux/sparc") && e.message.contains("linux/s390x"),
        "{}",
        e.message
    );
    let (_, e) = error_of(
        post_job(body(&ctx, "linux/amd64", "localhost:5000/UPPER:1"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e.code, "invalid_reference");

    // A context whose bytes do not match the digest in the URL is refused and not kept.
    let res = c
        .http
        .put(c.url(&format!("/contexts/{unknown}")))
        .body("hello")
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::BAD_REQUEST, "digest_mismatch")
    );
    let res = c
        .http
        .head(c.url(&format!("/contexts/{unknown}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    let res = c
        .http
        .post(c.url("/agents/register"))
        .bearer_auth("wrong")
        .json(&json!({"name": "x", "native_platforms": ["linux/amd64"], "capacity": 1}))
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_join_token")
    );

    let jobs: JobList = c
        .http
        .get(c.url("/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(jobs.jobs.is_empty());
    let agents: Value = c
        .http
        .get(c.url("/agents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(agents["agents"], json!([]));
    let kept = std::fs::read_dir(c.data.path().join("contexts"))
        .unwrap()
        .count();
    assert_eq!(kept, 1, "only the one valid context is stored");
    assert_eq!(
        c.contexts_in_database().await,
        1,
        "and only it is in the database"
    );
    c.stop().await;
}

#[tokio::test]
async fn superseded_leases_are_fenced_and_failures_end_the_job() {
    let c = Coordinator::start(&["--heartbeat-secs", "1", "--missed-heartbeats", "1"]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let dead = c.register("dead", &["linux/s390x"], &[]).await;
    let res = c
        .http
        .post(c.url("/jobs"))
        .json(&json!({"context": ctx, "platforms": ["linux/s390x"], "tags": ["localhost:5000/app:1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let job: Job = res.json().await.unwrap();

    let first = c.lease(&dead).await.expect("the s390x build is leased");
    assert_eq!(first.platform.to_string(), "linux/s390x");
    // The agent goes silent: the one-second lease lapses and the reaper requeues the build.
    let survivor = c.register("survivor", &["linux/s390x"], &[]).await;
    let second = loop {
        if let Some(l) = c.lease(&survivor).await {
            break l;
        }
    };
    assert_eq!(second.build_id, first.build_id);
    assert_ne!(second.lease_token, first.lease_token);

    // The presumed-dead agent's late reports under its old lease are refused.
    let digest = format!("sha256:{}", "c".repeat(64));
    let late = json!({"lease_token": first.lease_token, "digest": digest, "media_type": "application/vnd.oci.image.manifest.v1+json", "size": 10});
    let (status, e) = error_of(c.report(&dead, first.build_id, "complete", late).await).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::CONFLICT, "lease_lost")
    );
    let res = c
        .report(
            &dead,
            first.build_id,
            "log",
            json!({"lease_token": first.lease_token, "lines": ["late"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);

    // The survivor logs, heartbeats and fails; the job fails with the platform named.
    let ok = c
        .report(
            &survivor,
            second.build_id,
            "log",
            json!({"lease_token": second.lease_token, "lines": ["step 1"]}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let hb: Value = c
        .report(
            &survivor,
            second.build_id,
            "heartbeat",
            json!({"lease_token": second.lease_token}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(hb["cancel"], false);
    let res = c
        .report(
            &survivor,
            second.build_id,
            "fail",
            json!({"lease_token": second.lease_token, "error": "RUN exited 3"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let job = c.job(job.id).await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.error.as_deref(), Some("linux/s390x: RUN exited 3"));
    assert_eq!(job.builds[0].attempts, 2);
    assert_eq!(job.builds[0].agent.as_deref(), Some("survivor"));
    let log = c
        .http
        .get(c.url(&format!("/builds/{}/log", second.build_id)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.contains("step 1") && !log.contains("late"), "{log}");
    c.stop().await;
}

#[tokio::test]
async fn emulation_never_waits_and_says_why_and_cancel_stops_the_holder() {
    let c = Coordinator::start(&[]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let emu = c.register("emu", &["linux/amd64"], &["linux/s390x"]).await;
    let res = c
        .http
        .post(c.url("/jobs"))
        .json(&json!({"context": ctx, "platforms": ["linux/amd64", "linux/s390x"], "tags": ["localhost:5000/app:1"], "emulation": "never"}))
        .send()
        .await
        .unwrap();
    let job: Job = res.json().await.unwrap();
    let lease = c.lease(&emu).await.expect("amd64 is native on emu");
    assert_eq!(lease.platform.to_string(), "linux/amd64");
    let job = c.job(job.id).await;
    let s390x = &job.builds[1];
    assert_eq!(s390x.state.as_str(), "queued");
    assert!(
        s390x
            .waiting
            .as_deref()
            .unwrap_or("")
            .contains("emulation policy is 'never'"),
        "{:?}",
        s390x.waiting
    );

    let res = c
        .http
        .post(c.url(&format!("/jobs/{}/cancel", job.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let hb: Value = c
        .report(
            &emu,
            lease.build_id,
            "heartbeat",
            json!({"lease_token": lease.lease_token}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(hb["cancel"], true, "the holder learns to stop");
    assert_eq!(c.job(job.id).await.state, JobState::Cancelled);
    // Cancelling again is not an error: the answer shows the job as it is.
    let again: Job = c
        .http
        .post(c.url(&format!("/jobs/{}/cancel", job.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again.state, JobState::Cancelled);
    assert_eq!(again.builds[1].state.as_str(), "cancelled");
    // Counted once, however often it is asked: the job, and the one build that was running.
    let metrics = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "archfarm_jobs_total{state=\"cancelled\"} 1",
        "archfarm_builds_total{mode=\"native\",outcome=\"cancelled\",platform=\"linux/amd64\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    c.stop().await;
}

#[tokio::test]
async fn api_token_guards_client_routes() {
    let c = Coordinator::start(&["--api-token", "ci-secret"]).await;
    let (status, e) = error_of(c.http.get(c.url("/jobs")).send().await.unwrap()).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let ok = c
        .http
        .get(c.url("/jobs"))
        .bearer_auth("ci-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    c.stop().await;
}

#[tokio::test]
async fn limits_unknown_routes_and_bad_queries_answer_json() {
    let c = Coordinator::start(&["--max-context-bytes", "1000"]).await;
    let big = vec![7u8; 5000];
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&big)));
    let res = c
        .http
        .put(c.url(&format!("/contexts/{digest}")))
        .body(big)
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "context_too_large")
    );
    assert!(
        e.message.contains("1000 bytes") && e.message.contains("--max-context-bytes"),
        "{}",
        e.message
    );
    assert_eq!(
        std::fs::read_dir(c.data.path().join("contexts"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(c.contexts_in_database().await, 0);

    let (status, e) = error_of(c.http.get(c.url("/nothing/here")).send().await.unwrap()).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, e) = error_of(c.http.get(c.url("/jobs?limit=many")).send().await.unwrap()).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );
    let (status, _) = error_of(c.http.get(c.url("/jobs/not-a-uuid")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    c.stop().await;
}

#[tokio::test]
async fn a_second_machine_cannot_take_an_online_agents_name() {
    let c = Coordinator::start(&[]).await;
    let register = |instance: uuid::Uuid| {
        c.http
            .post(c.url("/agents/register"))
            .bearer_auth("join-secret")
            .json(&json!({"name": "raspberrypi", "native_platforms": ["linux/arm64"], "capacity": 1, "instance_id": instance}))
            .send()
    };
    let (first, second) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    assert_eq!(register(first).await.unwrap().status(), StatusCode::OK);
    let (status, e) = error_of(register(second).await.unwrap()).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::CONFLICT, "name_taken")
    );
    assert!(e.message.contains("--name"), "{}", e.message);
    // Leaving the installation id out does not get round it.
    let anonymous = c
        .http
        .post(c.url("/agents/register"))
        .bearer_auth("join-secret")
        .json(&json!({"name": "raspberrypi", "native_platforms": ["linux/arm64"], "capacity": 1}))
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(anonymous).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::CONFLICT, "name_taken")
    );
    // The same installation restarting keeps its name.
    assert_eq!(register(first).await.unwrap().status(), StatusCode::OK);
    c.stop().await;
}

#[tokio::test]
async fn a_drained_agent_takes_no_work_and_leaves() {
    let c = Coordinator::start(&[]).await;
    let pi = c.register("pi", &["linux/arm64"], &[]).await;
    let res = c
        .http
        .post(c.url(&format!("/agents/{}/drain", pi.agent_id)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let agent: Value = res.json().await.unwrap();
    assert_eq!(agent["state"], "draining");
    let res = c
        .http
        .post(c.url(&format!("/agents/{}/lease", pi.agent_id)))
        .bearer_auth(&pi.token)
        .json(&json!({"wait_secs": 1}))
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::CONFLICT, "draining")
    );
    let res = c
        .http
        .post(c.url(&format!("/agents/{}/deregister", pi.agent_id)))
        .bearer_auth(&pi.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let agents: Value = c
        .http
        .get(c.url("/agents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(agents["agents"], json!([]));
    c.stop().await;
}

#[tokio::test]
async fn an_optional_platform_nobody_can_build_is_left_out_with_a_warning() {
    // No registry runs here, so stitching fails after its short retry window; what matters is
    // that the job got there without the optional platform, and says so.
    // Short leases: a coordinator leaves nothing out until its contact with the database has
    // lasted a lease's length (agents may only look offline after an outage or a restart).
    let c = Coordinator::start(&[
        "--stitch-retry-secs",
        "1",
        "--heartbeat-secs",
        "1",
        "--missed-heartbeats",
        "2",
    ])
    .await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let amd = c.register("amd", &["linux/amd64"], &[]).await;
    let res = c
        .http
        .post(c.url("/jobs"))
        .json(&json!({"context": ctx, "platforms": ["linux/amd64"], "optional_platforms": ["linux/riscv64"],
            "tags": ["127.0.0.1:9/app:1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let job: Job = res.json().await.unwrap();
    assert_eq!(job.platforms.len(), 2);
    assert!(job.builds[1].optional);
    let lease = c.lease(&amd).await.expect("amd64 is leased");
    let digest = format!("sha256:{}", "d".repeat(64));
    let done = json!({"lease_token": lease.lease_token, "digest": digest,
        "media_type": "application/vnd.oci.image.manifest.v1+json", "size": 10});
    assert_eq!(
        c.report(&amd, lease.build_id, "complete", done)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    // Left out by the completion itself, or by the reconciler once contact has lasted a lease
    // (the build is skipped, the warning added, then stitching begins: three statements, so
    // wait for all three).
    let mut job = c.job(job.id).await;
    for _ in 0..300 {
        if job.builds[1].state.as_str() != "queued"
            && !job.warnings.is_empty()
            && !matches!(job.state, JobState::Queued | JobState::Building)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        job = c.job(job.id).await;
    }
    assert_eq!(job.builds[1].state.as_str(), "cancelled");
    assert_eq!(
        job.builds[1].error.as_deref(),
        Some("no online agent can build linux/riscv64")
    );
    assert_eq!(job.warnings, ["optional platform linux/riscv64 left out of the index: no online agent can build linux/riscv64"]);
    assert!(
        matches!(job.state, JobState::Stitching | JobState::Failed),
        "{:?}",
        job.state
    );
    c.stop().await;
}

#[tokio::test]
async fn a_job_past_its_time_limit_fails_and_tells_its_builds_to_stop() {
    let c = Coordinator::start(&[]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let amd = c.register("amd", &["linux/amd64"], &[]).await;
    let res = c
        .http
        .post(c.url("/jobs"))
        .json(&json!({"context": ctx, "platforms": ["linux/amd64"], "tags": ["localhost:5000/app:1"], "timeout_secs": 1}))
        .send()
        .await
        .unwrap();
    let job: Job = res.json().await.unwrap();
    assert_eq!(job.timeout_secs, 1);
    let lease = c.lease(&amd).await.expect("leased");
    // The reaper checks time limits every second; poll the job rather than sleeping a fixed time.
    let mut ended = c.job(job.id).await;
    for _ in 0..100 {
        if ended.state.is_terminal() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        ended = c.job(job.id).await;
    }
    assert_eq!(ended.state, JobState::Failed);
    assert_eq!(ended.error.as_deref(), Some("timed out after 1s"));
    let hb: Value = c
        .report(
            &amd,
            lease.build_id,
            "heartbeat",
            json!({"lease_token": lease.lease_token}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(hb["cancel"], true);
    c.stop().await;
}

#[tokio::test]
async fn variants_match_after_normalisation() {
    // An arm64 board that also runs 32-bit code declares both, in any accepted spelling.
    let c = Coordinator::start(&[]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let board = c.register("board", &["linux/arm64/v8", "armhf"], &[]).await;
    let res = c
        .http
        .post(c.url("/jobs"))
        .json(&json!({"context": ctx, "platforms": ["linux/arm/v7", "aarch64"], "tags": ["localhost:5000/app:1"]}))
        .send()
        .await
        .unwrap();
    let job: Job = res.json().await.unwrap();
    assert_eq!(
        job.platforms
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["linux/arm/v7", "linux/arm64"]
    );
    let first = c.lease(&board).await.expect("arm/v7 goes to the board");
    assert_eq!(first.platform.to_string(), "linux/arm/v7");
    assert_eq!(first.mode.as_str(), "native");
    // Capacity 1: the arm64 build waits until the first is done.
    assert!(c.lease(&board).await.is_none());
    let job = c.job(job.id).await;
    assert!(
        job.builds[1]
            .waiting
            .as_deref()
            .unwrap_or("")
            .contains("board"),
        "{:?}",
        job.builds[1].waiting
    );
    assert!(
        job.builds[0]
            .decision
            .as_deref()
            .unwrap_or("")
            .starts_with("native"),
        "{:?}",
        job.builds[0].decision
    );
    c.stop().await;
}

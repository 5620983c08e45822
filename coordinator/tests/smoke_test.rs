//! `--smoke-test`, in process with the real router and database: checked at submission (400
//! naming what is wrong), stored with the job, shown in it and handed to the agent in the lease;
//! a completion that does not say the smoke test passed (an agent from before smoke tests) fails
//! the platform instead of reaching the index. Runs on PostgreSQL too when
//! `ARCHFARM_TEST_POSTGRES` is set.

mod common;

use archfarm_protocol::api::{BuildState, JobState};
use common::{error_of, Coordinator};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn the_smoke_test_travels_with_the_job_to_the_lease() {
    let c = Coordinator::start(&[]).await;
    let agent = c.register("a", &["linux/arm64"], &[]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let command = ["sh", "-c", "test \"$(uname -m)\" = aarch64"];
    let job = c
        .submit(json!({
            "context": ctx, "platforms": ["linux/arm64"], "tags": ["localhost:5000/app:1"],
            "smoke_test": {"command": command, "timeout_secs": 90},
        }))
        .await;
    let shown = job.smoke_test.expect("the job shows its smoke test");
    assert_eq!(shown.command, command);
    assert_eq!(shown.timeout_secs, 90);
    let lease = c.lease(&agent).await.expect("the build is leased");
    let leased = lease.smoke_test.expect("the lease carries the smoke test");
    assert_eq!((leased.command, leased.timeout_secs), (shown.command, 90));

    // A job without one has none, and one without a time limit gets the default.
    let plain = c
        .submit(json!({
            "context": ctx, "platforms": ["linux/arm64"], "tags": ["localhost:5000/app:2"],
        }))
        .await;
    assert!(plain.smoke_test.is_none());
    let defaulted = c
        .submit(json!({
            "context": ctx, "platforms": ["linux/arm64"], "tags": ["localhost:5000/app:3"],
            "smoke_test": {"command": ["true"]},
        }))
        .await;
    assert_eq!(
        defaulted.smoke_test.unwrap().timeout_secs,
        archfarm_protocol::smoke_test::DEFAULT_TIMEOUT_SECS
    );
    c.stop().await;
}

#[tokio::test]
async fn a_bad_smoke_test_is_refused_saying_why() {
    let c = Coordinator::start(&[]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    for (smoke_test, says) in [
        (json!({"command": []}), "--smoke-test is empty"),
        (
            json!({"command": ["", "x"]}),
            "its first word, the program to run, is empty",
        ),
        (json!({"command": ["echo", "a\u{0}b"]}), "NUL byte"),
        (
            json!({"command": ["true"], "timeout_secs": 0}),
            "from 1s to 1h, not 0s",
        ),
        (
            json!({"command": ["x".repeat(9000)]}),
            "9000 bytes long; at most 8192 are accepted",
        ),
    ] {
        let res = c
            .http
            .post(c.url("/jobs"))
            .json(&json!({
                "context": ctx, "platforms": ["linux/arm64"], "tags": ["localhost:5000/app:1"],
                "smoke_test": smoke_test,
            }))
            .send()
            .await
            .unwrap();
        let (status, e) = error_of(res).await;
        assert_eq!(
            (status, e.code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_smoke_test"),
            "{smoke_test}"
        );
        assert!(e.message.contains(says), "{smoke_test}: {}", e.message);
    }
    c.stop().await;
}

#[tokio::test]
async fn a_completion_without_the_smoke_test_fails_the_platform() {
    let c = Coordinator::start(&[]).await;
    let old = c.register("old-agent", &["linux/arm64"], &[]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let job = c
        .submit(json!({
            "context": ctx, "platforms": ["linux/arm64"], "tags": ["localhost:5000/app:1"],
            "smoke_test": {"command": ["myapp", "--version"]},
        }))
        .await;
    let lease = c.lease(&old).await.expect("the build is leased");
    let digest = format!("sha256:{}", "d".repeat(64));
    // What an agent from before smoke tests sends: no word about it.
    let done = json!({"lease_token": lease.lease_token, "digest": digest,
        "media_type": "application/vnd.oci.image.manifest.v1+json", "size": 10});
    let res = c.report(&old, lease.build_id, "complete", done).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let job = c.job(job.id).await;
    assert_eq!(job.builds[0].state, BuildState::Failed);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(
        job.error.as_deref(),
        Some(
            "linux/arm64: agent old-agent pushed the image without running the smoke test \
             `myapp --version` (an archfarm-agent from before --smoke-test); upgrade it"
        )
    );
    assert!(job.index_digest.is_none());
    c.stop().await;
}

//! Build secrets through the coordinator's API, in process: the job shows ids only, a lease carries
//! its own job's values and no other's, a log line that echoes a value is redacted, and the value
//! leaves the database when the job ends.

mod common;

use archfarm_protocol::api::JobState;
use common::{error_of, Coordinator};
use reqwest::StatusCode;
use serde_json::json;

const VALUE: &str = "build-secret-value-7f3a";

#[tokio::test]
async fn leases_carry_their_own_jobs_secrets_and_the_value_goes_when_the_job_ends() {
    let c = Coordinator::start(&[]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let body = |tag: &str, secrets: serde_json::Value| json!({"context": ctx, "platforms": ["linux/amd64"], "tags": [tag], "secrets": secrets});

    // A bad id is refused without quoting the value.
    let res = c
        .http
        .post(c.url("/jobs"))
        .json(&body(
            "localhost:5000/a:1",
            json!([{"id": "../x", "value": VALUE}]),
        ))
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_secret")
    );
    assert!(!e.message.contains(VALUE), "{}", e.message);

    let with = c
        .submit(body(
            "localhost:5000/a:1",
            json!([{"id": "tok", "value": VALUE}]),
        ))
        .await;
    assert_eq!(with.secrets, ["tok"]);
    let shown = c
        .http
        .get(c.url(&format!("/jobs/{}", with.id)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!shown.contains(VALUE), "{shown}");
    assert!(c.database_contains(VALUE), "kept while the job is live");

    let agent = c.register("amd", &["linux/amd64"], &[]).await;
    let lease = c.lease(&agent).await.expect("a lease");
    assert_eq!(lease.job_id, with.id);
    assert_eq!(lease.secrets.len(), 1);
    assert_eq!(
        (
            lease.secrets[0].id.as_str(),
            lease.secrets[0].value.expose()
        ),
        ("tok", VALUE)
    );

    // An agent that forgot to redact: the coordinator redacts the value anyway.
    let res = c
        .report(
            &agent,
            lease.build_id,
            "log",
            json!({"lease_token": lease.lease_token, "lines": [format!("cat says: {VALUE}")]}),
        )
        .await;
    assert!(res.status().is_success(), "{}", res.status());
    let log = c
        .http
        .get(c.url(&format!("/builds/{}/log", lease.build_id)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.contains("cat says: [redacted]"), "{log}");

    // The build fails, so the job ends: the value leaves the database at once.
    let res = c
        .report(
            &agent,
            lease.build_id,
            "fail",
            json!({"lease_token": lease.lease_token, "error": format!("step printed {VALUE}")}),
        )
        .await;
    assert!(res.status().is_success(), "{}", res.status());
    let ended = c.job(with.id).await;
    assert_eq!(ended.state, JobState::Failed);
    assert_eq!(ended.secrets, ["tok"], "the ids stay");
    assert!(!ended.error.unwrap_or_default().contains(VALUE));
    assert!(!c.database_contains(VALUE), "gone once the job ended");

    // Another job's lease carries no secrets at all.
    c.submit(body("localhost:5000/b:1", json!([]))).await;
    let res = c
        .http
        .post(c.url(&format!("/agents/{}/lease", agent.agent_id)))
        .bearer_auth(&agent.token)
        .json(&json!({"wait_secs": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let raw = res.text().await.unwrap();
    assert!(
        !raw.contains("\"secrets\"") && !raw.contains(VALUE),
        "{raw}"
    );
    c.stop().await;
}

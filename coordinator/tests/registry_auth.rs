//! Registry credentials and secret build arguments through the coordinator's API, in process: a
//! lease carries its registry's credential only, and secret values never come back out.

mod common;

use archfarm_protocol::api::JobState;
use common::{error_of, Coordinator};
use reqwest::StatusCode;
use serde_json::json;

const PASSWORD: &str = "hunter2-pass";
const TOKEN: &str = "tok-secret-value";

#[tokio::test]
async fn leases_carry_their_registrys_credential_and_secrets_stay_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("config.json");
    std::fs::write(
        &auth,
        json!({"auths": {"https://reg.example:5000/v2/": {"username": "ci", "password": PASSWORD}}})
            .to_string(),
    )
    .unwrap();
    let c = Coordinator::start(&["--registry-auth", auth.to_str().unwrap()]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let job_body = |tag: &str, secrets: &[&str]| {
        json!({"context": ctx, "platforms": ["linux/amd64"], "tags": [tag],
               "build_args": {"TOKEN": TOKEN, "PLAIN": "visible"},
               "secret_build_args": secrets})
    };

    // A secret name that is not a build argument is refused.
    let res = c
        .http
        .post(c.url("/jobs"))
        .json(&job_body("reg.example:5000/app:1", &["NOPE"]))
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_build_arg")
    );
    assert!(e.message.contains("'NOPE'"), "{}", e.message);

    let job = c
        .submit(job_body("reg.example:5000/app:1", &["TOKEN"]))
        .await;
    assert_eq!(job.build_args["TOKEN"], "[redacted]");
    assert_eq!(job.build_args["PLAIN"], "visible");
    assert_eq!(job.secret_build_args, ["TOKEN"]);

    let agent = c.register("amd", &["linux/amd64"], &[]).await;
    let lease = c.lease(&agent).await.expect("a lease");
    // reg.example does not resolve, so whether it could scope a token is unknown: the lease
    // carries no credential rather than the password (tests/registry_token.rs has the real
    // registries, Bearer and Basic).
    assert_eq!(lease.registry_auth, None);
    assert_eq!(
        lease.build_args["TOKEN"], TOKEN,
        "the agent needs the value"
    );
    assert_eq!(lease.secret_build_args, ["TOKEN"]);

    // An agent that forgot to redact: the coordinator redacts the value and the password anyway.
    let res = c
        .report(
            &agent,
            lease.build_id,
            "log",
            json!({"lease_token": lease.lease_token,
                   "lines": [format!("token is {TOKEN}"), format!("pw {PASSWORD}"), "plain line"]}),
        )
        .await;
    assert!(res.status().is_success(), "{}", res.status());
    let res = c
        .report(
            &agent,
            lease.build_id,
            "fail",
            json!({"lease_token": lease.lease_token, "error": format!("RUN test {TOKEN} failed")}),
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
    assert!(
        log.contains("token is [redacted]\npw [redacted]\nplain line\n"),
        "{log}"
    );
    let ended = c.job(job.id).await;
    assert_eq!(ended.state, JobState::Failed);
    assert_eq!(
        ended.error.as_deref(),
        Some("linux/amd64: RUN test [redacted] failed")
    );
    let listed = c
        .http
        .get(c.url("/jobs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !listed.contains(TOKEN) && !listed.contains(PASSWORD),
        "{listed}"
    );

    // A job for another registry gets no credential: the field is absent from the lease.
    c.submit(job_body("other.example/app:1", &[])).await;
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
        !raw.contains("registry_auth") && !raw.contains(PASSWORD),
        "{raw}"
    );
    assert!(!raw.contains("secret_build_args"), "{raw}");

    // The password was never written to the database or anywhere else in the data directory.
    for entry in walk(c.data.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes
                .windows(PASSWORD.len())
                .any(|w| w == PASSWORD.as_bytes()),
            "the password is in {}",
            entry.display()
        );
    }
    assert!(
        !c.database_contains(PASSWORD),
        "the password is in the database"
    );
    c.stop().await;
}

/// Once its job has ended, a build gets no credential (neither the job's, deleted, nor the farm's
/// in its place) and may add no log line (the job's secrets, needed to redact it, are gone).
#[tokio::test]
async fn an_ended_jobs_builds_get_no_credential_and_write_no_log() {
    let registry = common::basic_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("config.json");
    std::fs::write(
        &auth,
        json!({"auths": {registry.clone(): {"username": "farm", "password": "farm-pw"}}})
            .to_string(),
    )
    .unwrap();
    let c = Coordinator::start(&["--registry-auth", auth.to_str().unwrap()]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let job = c
        .submit(json!({"context": ctx, "platforms": ["linux/amd64"],
                       "tags": [format!("{registry}/app:1")],
                       "registry_credentials": {registry.clone():
                           {"username": "pipeline", "password": "job-pw"}}}))
        .await;
    let agent = c.register("amd", &["linux/amd64"], &[]).await;
    let lease = c.lease(&agent).await.expect("a lease");
    let ask = || {
        c.report(
            &agent,
            lease.build_id,
            "registry-credential",
            json!({"lease_token": lease.lease_token}),
        )
    };
    let res = ask().await;
    assert_eq!(res.status(), StatusCode::OK);
    let raw = res.text().await.unwrap();
    assert!(raw.contains("job-pw") && !raw.contains("farm-pw"), "{raw}");
    let res = c
        .http
        .post(c.url(&format!("/jobs/{}/cancel", job.id)))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let (status, e) = error_of(ask().await).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::CONFLICT, "lease_lost")
    );
    let res = c
        .report(
            &agent,
            lease.build_id,
            "log",
            json!({"lease_token": lease.lease_token, "lines": ["late job-pw"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let log = c
        .http
        .get(c.url(&format!("/builds/{}/log", lease.build_id)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!log.contains("job-pw"), "{log}");
    c.stop().await;
}

/// The farm's credential helper failing is the operator's business: the build's log says the
/// farm's credential is unavailable, not which helper ran nor what it printed.
#[tokio::test]
async fn a_failing_farm_helper_is_not_described_to_the_tenant() {
    use std::os::unix::fs::PermissionsExt as _;
    let registry = common::basic_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let helper = dir.path().join("docker-credential-afopsecret");
    std::fs::write(
        &helper,
        "#!/bin/sh\necho 'vault at 10.1.2.3 refused role ci-prod'; exit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::env::set_var("PATH", path);
    let auth = dir.path().join("config.json");
    std::fs::write(
        &auth,
        json!({"credHelpers": {registry.clone(): "afopsecret"}}).to_string(),
    )
    .unwrap();
    let c = Coordinator::start(&["--registry-auth", auth.to_str().unwrap()]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    c.submit(json!({"context": ctx, "platforms": ["linux/amd64"],
                    "tags": [format!("{registry}/app:1")]}))
        .await;
    let agent = c.register("amd", &["linux/amd64"], &[]).await;
    let lease = c.lease(&agent).await.expect("a lease");
    assert_eq!(lease.registry_auth, None);
    let log = c
        .http
        .get(c.url(&format!("/builds/{}/log", lease.build_id)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        log.contains(&format!(
            "the farm's credential for {registry} is unavailable; the coordinator's log says why"
        )) && !log.contains("afopsecret")
            && !log.contains("vault"),
        "{log}"
    );
    c.stop().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

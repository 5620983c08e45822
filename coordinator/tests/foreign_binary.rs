//! `--allow-foreign-binary` globs, in process with the real router and database: checked at
//! submission (400 naming what is accepted), stored with the job and handed to the agent in the
//! lease. Runs on PostgreSQL too when `ARCHFARM_TEST_POSTGRES` is set.

mod common;

use common::{error_of, Coordinator};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn allowed_globs_travel_with_the_job_to_the_lease() {
    let c = Coordinator::start(&[]).await;
    let agent = c.register("a", &["linux/arm64"], &[]).await;
    let other = c.register("b", &["linux/arm64"], &[]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let globs = ["/usr/bin/qemu-*-static", "/usr/x86_64-linux-gnu/**"];
    c.submit(json!({
        "context": ctx, "platforms": ["linux/arm64"], "tags": ["localhost:5000/app:1"],
        "allow_foreign_binary": globs,
    }))
    .await;
    let lease = c.lease(&agent).await.expect("the build is leased");
    assert_eq!(lease.allow_foreign_binary, globs);

    // A job without any says nothing about them: every binary is checked.
    c.submit(json!({
        "context": ctx, "platforms": ["linux/arm64"], "tags": ["localhost:5000/app:2"],
    }))
    .await;
    let lease = c.lease(&other).await.expect("the second build is leased");
    assert!(lease.allow_foreign_binary.is_empty());
    c.stop().await;
}

#[tokio::test]
async fn a_bad_glob_is_refused_naming_what_is_accepted() {
    let c = Coordinator::start(&[]).await;
    let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let res = c
        .http
        .post(c.url("/jobs"))
        .json(&json!({
            "context": ctx, "platforms": ["linux/arm64"], "tags": ["localhost:5000/app:1"],
            "allow_foreign_binary": ["usr/local/bin/hello"],
        }))
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_allow_foreign_binary")
    );
    assert!(
        e.message.starts_with(
            "--allow-foreign-binary 'usr/local/bin/hello': not absolute; accepted: an absolute \
             path in the image"
        ),
        "{}",
        e.message
    );
    c.stop().await;
}

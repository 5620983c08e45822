//! Where jobs may push, in process on port 0 with a real database: `submit` tokens limited to
//! repository patterns (`archfarm tokens create --repository`), and the farm-wide
//! `--allowed-registry`.

mod common;

use archfarm_protocol::api::Job;
use archfarm_protocol::tokens::{CreatedToken, TokenList};
use common::{error_of, Coordinator};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret";
const FILES: &[(&str, &str)] = &[("Dockerfile", "FROM scratch\n")];

async fn call(
    c: &Coordinator,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = c.http.request(method, c.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

fn job(context: &str, tag: &str) -> Value {
    json!({"context": context, "platforms": ["linux/arm64"], "tags": [tag]})
}

async fn submit(c: &Coordinator, token: &str, context: &str, tag: &str) -> reqwest::Response {
    call(c, Method::POST, "/jobs", token, Some(job(context, tag))).await
}

#[tokio::test]
async fn a_limited_token_pushes_and_cancels_only_within_its_patterns() {
    let c = Coordinator::start(&["--api-token", ADMIN]).await;
    let res = call(
        &c,
        Method::POST,
        "/tokens",
        ADMIN,
        Some(json!({"kind": "api", "scope": "submit", "name": "team-a",
                    "repositories": ["LOCALHOST:5000/team-a/*", "localhost:5000/shared/**"]})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let limited: CreatedToken = res.json().await.unwrap();
    assert_eq!(
        limited.info.repositories,
        ["localhost:5000/team-a/*", "localhost:5000/shared/**"]
    );

    // Patterns limit only submit tokens, and a bad one is named.
    for (body, needle) in [
        (
            json!({"kind": "api", "scope": "read", "repositories": ["localhost:5000/a"]}),
            "only submit tokens",
        ),
        (
            json!({"kind": "api", "scope": "submit", "repositories": ["local*:5000/a"]}),
            "'local*:5000/a'",
        ),
    ] {
        let (status, e) =
            error_of(call(&c, Method::POST, "/tokens", ADMIN, Some(body)).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains(needle), "{}", e.message);
    }

    // The listing shows the patterns.
    let list: TokenList = call(&c, Method::GET, "/tokens", ADMIN, None)
        .await
        .json()
        .await
        .unwrap();
    let listed = list.tokens.iter().find(|t| t.name == "team-a").unwrap();
    assert_eq!(listed.repositories, limited.info.repositories);

    let context = c.upload_as(Some(&limited.token), FILES).await;
    for tag in [
        "localhost:5000/team-a/app:1",
        "localhost:5000/shared/base/tools:2",
    ] {
        let res = submit(&c, &limited.token, &context, tag).await;
        assert_eq!(res.status(), StatusCode::CREATED, "{tag}");
    }
    for (tag, repository) in [
        ("localhost:5000/team-b/app:1", "localhost:5000/team-b/app"),
        // One star stays within one path component.
        (
            "localhost:5000/team-a/tools/app:1",
            "localhost:5000/team-a/tools/app",
        ),
        // The registry is matched exactly, its port included.
        ("localhost:5001/team-a/app:1", "localhost:5001/team-a/app"),
    ] {
        let (status, e) = error_of(submit(&c, &limited.token, &context, tag).await).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{tag}");
        assert_eq!(e.code, "repository_not_allowed");
        assert_eq!(
            e.message,
            format!(
                "this job would push to {repository}, which is outside this token's repositories: \
                 localhost:5000/team-a/*, localhost:5000/shared/**"
            )
        );
    }

    // An unlimited submit token and the admin push anywhere, as before.
    let free: CreatedToken = call(
        &c,
        Method::POST,
        "/tokens",
        ADMIN,
        Some(json!({"kind": "api", "scope": "submit"})),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(free.info.repositories.is_empty());
    let res = submit(&c, &free.token, &context, "localhost:5000/team-b/app:1").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let other: Job = submit(&c, ADMIN, &context, "localhost:5000/team-b/app:2")
        .await
        .json()
        .await
        .unwrap();

    // Contexts hold any team's sources: a limited token may upload one, not download it.
    let (status, e) = error_of(
        call(
            &c,
            Method::GET,
            &format!("/contexts/{}", other.context),
            &limited.token,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(e.code, "repository_not_allowed");
    assert!(
        e.message.contains("cannot download build contexts"),
        "{}",
        e.message
    );
    let res = call(
        &c,
        Method::GET,
        &format!("/contexts/{}", other.context),
        &free.token,
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);

    // Cancelling: only jobs the limited token could have submitted.
    let cancel = |id: uuid::Uuid, token: String| {
        let c = &c;
        async move { call(c, Method::POST, &format!("/jobs/{id}/cancel"), &token, None).await }
    };
    let (status, e) = error_of(cancel(other.id, limited.token.clone()).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(e.code, "repository_not_allowed");
    assert!(
        e.message.starts_with(&format!(
            "job {} pushes to localhost:5000/team-b/app",
            other.id
        )),
        "{}",
        e.message
    );
    let own: Job = submit(&c, &limited.token, &context, "localhost:5000/team-a/web:1")
        .await
        .json()
        .await
        .unwrap();
    let res = cancel(own.id, limited.token.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = cancel(other.id, free.token.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    c.stop().await;
}

#[tokio::test]
async fn jobs_push_only_to_allowed_registries() {
    let c = Coordinator::start(&[
        "--allowed-registry",
        "Localhost:5000",
        "--allowed-registry",
        "registry.example.com,index.docker.io",
    ])
    .await;
    let context = c.upload(FILES).await;
    for tag in [
        "localhost:5000/app:1",
        "registry.example.com/team/app:1",
        "docker.io/team/app:1",
        "team/app:1",
    ] {
        c.submit(job(&context, tag)).await;
    }
    for (tag, registry) in [
        ("localhost:5001/app:1", "localhost:5001"),
        ("127.0.0.1:5000/app:1", "127.0.0.1:5000"),
        ("evil.example.com/app:1", "evil.example.com"),
    ] {
        let res = c
            .http
            .post(c.url("/jobs"))
            .json(&job(&context, tag))
            .send()
            .await
            .unwrap();
        let (status, e) = error_of(res).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{tag}");
        assert_eq!(e.code, "registry_not_allowed");
        assert_eq!(
            e.message,
            format!(
                "this farm pushes only to localhost:5000, registry.example.com, docker.io; \
                 {registry} is not among them"
            )
        );
    }
    c.stop().await;
}

/// Tags in several repositories and registries: every repository passes the checks one would,
/// and a refusal names the repository it is about, with no job made.
#[tokio::test]
async fn every_repository_of_a_jobs_tags_is_checked() {
    let c = Coordinator::start(&[
        "--api-token",
        ADMIN,
        "--allowed-registry",
        "localhost:5000,ghcr.io",
    ])
    .await;
    let limited: CreatedToken = call(
        &c,
        Method::POST,
        "/tokens",
        ADMIN,
        Some(json!({"kind": "api", "scope": "submit", "name": "team-a",
                    "repositories": ["localhost:5000/team-a/*", "ghcr.io/team-a/*"]})),
    )
    .await
    .json()
    .await
    .unwrap();
    let context = c.upload_as(Some(&limited.token), FILES).await;
    let tags =
        |tags: &[&str]| json!({"context": context, "platforms": ["linux/arm64"], "tags": tags});
    let jobs_now = |c: &Coordinator| {
        let c = c.http.get(c.url("/jobs")).bearer_auth(ADMIN).send();
        async move {
            c.await.unwrap().json::<Value>().await.unwrap()["jobs"]
                .as_array()
                .unwrap()
                .len()
        }
    };

    let job: Job = call(
        &c,
        Method::POST,
        "/jobs",
        &limited.token,
        Some(tags(&[
            "localhost:5000/team-a/app:1",
            "localhost:5000/team-a/mirror:1",
            "ghcr.io/team-a/app:1",
            "localhost:5000/team-a/app:latest",
        ])),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        job.repositories,
        [
            "localhost:5000/team-a/app",
            "localhost:5000/team-a/mirror",
            "ghcr.io/team-a/app"
        ]
    );
    assert_eq!(job.tags.len(), 4);
    let before = jobs_now(&c).await;

    // One repository outside the token's patterns: 403 naming it, nothing queued.
    let (status, e) = error_of(
        call(
            &c,
            Method::POST,
            "/jobs",
            &limited.token,
            Some(tags(&[
                "localhost:5000/team-a/app:2",
                "ghcr.io/team-b/app:2",
            ])),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(e.code, "repository_not_allowed");
    assert!(
        e.message
            .starts_with("this job would push to ghcr.io/team-b/app, which is outside"),
        "{}",
        e.message
    );
    // One registry the farm does not push to: 400 naming it, for any caller.
    let (status, e) = error_of(
        call(
            &c,
            Method::POST,
            "/jobs",
            ADMIN,
            Some(tags(&[
                "localhost:5000/team-a/app:2",
                "quay.io/team-a/app:2",
            ])),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(e.code, "registry_not_allowed");
    assert!(
        e.message.ends_with("quay.io is not among them"),
        "{}",
        e.message
    );
    assert_eq!(jobs_now(&c).await, before, "a refused job was stored");

    // Cancelling takes every repository too: a token for the first alone may not.
    let first_only: CreatedToken = call(
        &c,
        Method::POST,
        "/tokens",
        ADMIN,
        Some(json!({"kind": "api", "scope": "submit",
                    "repositories": ["localhost:5000/team-a/app"]})),
    )
    .await
    .json()
    .await
    .unwrap();
    let (status, e) = error_of(
        call(
            &c,
            Method::POST,
            &format!("/jobs/{}/cancel", job.id),
            &first_only.token,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        e.message.starts_with(&format!(
            "job {} pushes to localhost:5000/team-a/mirror",
            job.id
        )),
        "{}",
        e.message
    );
    let res = call(
        &c,
        Method::POST,
        &format!("/jobs/{}/cancel", job.id),
        &limited.token,
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    c.stop().await;
}

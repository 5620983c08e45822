//! Who may do what, in process on port 0 with a real SQLite database: the admin's `--api-token`,
//! created API tokens and their scopes, join tokens with use limits and expiry, `--public-read`,
//! the dashboard's cookie, and revoking agents.

mod common;

use archfarm_protocol::api::RegisterResponse;
use archfarm_protocol::tokens::CreatedToken;
use common::{error_of, Coordinator};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret";
/// A well-formed digest of a context nobody uploaded.
const NO_SUCH_CONTEXT: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// A request to `path` (under `/api/v1`) with an optional bearer token and JSON body.
async fn call(
    c: &Coordinator,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = c.http.request(method, c.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

/// Creates a token as the admin; the request must succeed.
async fn create(c: &Coordinator, body: Value) -> CreatedToken {
    let res = call(c, Method::POST, "/tokens", Some(ADMIN), Some(body)).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}

fn agent_body(name: &str) -> Value {
    json!({"name": name, "native_platforms": ["linux/arm64"], "capacity": 1})
}

async fn register(c: &Coordinator, token: Option<&str>, name: &str) -> reqwest::Response {
    call(
        c,
        Method::POST,
        "/agents/register",
        token,
        Some(agent_body(name)),
    )
    .await
}

fn job_body(context: &str) -> Value {
    json!({"context": context, "platforms": ["linux/arm64"], "tags": ["localhost:5000/app:1"]})
}

#[tokio::test]
async fn without_a_token_nothing_is_allowed_and_each_scope_allows_its_part() {
    // No --join-token: with --api-token set, agents still need a join token.
    let c = Coordinator::start_open_join(&["--api-token", ADMIN]).await;
    let files = [("Dockerfile", "FROM scratch\n")];

    // Strangers: no submission, no registration, no reading, no dashboard.
    let (s, e) = error_of(
        call(
            &c,
            Method::POST,
            "/jobs",
            None,
            Some(job_body(NO_SUCH_CONTEXT)),
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, e.code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (s, e) = error_of(register(&c, None, "pi").await).await;
    assert_eq!(
        (s, e.code.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_join_token")
    );
    let (s, _) = error_of(call(&c, Method::GET, "/jobs", None, None).await).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let page = c.http.get(format!("{}/", c.base)).send().await.unwrap();
    assert_eq!(
        page.url().path(),
        "/login",
        "the dashboard sends strangers to sign in"
    );
    let metrics = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::UNAUTHORIZED);
    // A made-up token of the right shape is refused like no token.
    let (s, _) = error_of(call(&c, Method::GET, "/jobs", Some("afu_0000"), None).await).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let read = create(
        &c,
        json!({"kind": "api", "scope": "read", "name": "grafana"}),
    )
    .await;
    let submit = create(
        &c,
        json!({"kind": "api", "scope": "submit", "name": "gitlab-ci"}),
    )
    .await;
    assert!(read.token.starts_with("afu_") && submit.token.starts_with("afu_"));
    assert_eq!(read.info.hint, format!("{}…", &read.token[..8]));

    // read: may look, may not submit, upload or make tokens.
    let ok = call(&c, Method::GET, "/jobs", Some(&read.token), None).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let ok = c
        .http
        .get(format!("{}/metrics", c.base))
        .bearer_auth(&read.token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let (s, e) = error_of(
        call(
            &c,
            Method::POST,
            "/jobs",
            Some(&read.token),
            Some(job_body(NO_SUCH_CONTEXT)),
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, e.code.as_str()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
    assert!(
        e.message.contains("scope is read") && e.message.contains("needs submit"),
        "{}",
        e.message
    );
    let put = c
        .http
        .put(c.url(&format!("/contexts/sha256:{}", "0".repeat(64))))
        .bearer_auth(&read.token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::FORBIDDEN);

    // submit: uploads and submits, but manages no tokens or agents.
    let digest = c.upload_as(Some(&submit.token), &files).await;
    let res = call(
        &c,
        Method::POST,
        "/jobs",
        Some(&submit.token),
        Some(job_body(&digest)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let (s, e) = error_of(
        call(
            &c,
            Method::POST,
            "/tokens",
            Some(&submit.token),
            Some(json!({"kind": "join"})),
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, e.code.as_str()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
    let (s, _) = error_of(call(&c, Method::GET, "/tokens", Some(&submit.token), None).await).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Listings never show a token, only its hint; uses are counted.
    let list: Value = call(&c, Method::GET, "/tokens", Some(ADMIN), None)
        .await
        .json()
        .await
        .unwrap();
    let text = list.to_string();
    assert!(!text.contains(&read.token) && !text.contains(&submit.token));
    let grafana = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "grafana")
        .unwrap();
    assert_eq!(grafana["scope"], "read");
    assert!(grafana["last_used_at"].is_string(), "{grafana}");

    // A revoked token stops at once.
    let res = call(
        &c,
        Method::POST,
        &format!("/tokens/{}/revoke", submit.info.id),
        Some(ADMIN),
        None,
    )
    .await;
    let revoked: Value = res.json().await.unwrap();
    assert_eq!(revoked["state"], "revoked");
    let (s, e) = error_of(call(&c, Method::GET, "/jobs", Some(&submit.token), None).await).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(e.message.contains("revoked"), "{}", e.message);

    // Bad creation requests say what is accepted.
    for (body, needle) in [
        (json!({"kind": "api"}), "needs a scope"),
        (json!({"kind": "api", "scope": "write"}), "unknown"),
        (json!({"kind": "join", "max_uses": 0}), "at least 1"),
        (json!({"kind": "join", "name": "a b"}), "must be 1 to 64"),
    ] {
        let (s, e) =
            error_of(call(&c, Method::POST, "/tokens", Some(ADMIN), Some(body.clone())).await)
                .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(e.message.contains(needle), "{body}: {}", e.message);
    }
    c.stop().await;
}

#[tokio::test]
async fn join_tokens_register_as_many_agents_as_allowed_until_they_expire() {
    let c = Coordinator::start_open_join(&["--api-token", ADMIN]).await;
    let once = create(&c, json!({"kind": "join", "max_uses": 1, "name": "pi-4"})).await;
    assert!(once.token.starts_with("afj_"));
    assert_eq!(once.info.scope, None);

    let res = register(&c, Some(&once.token), "pi").await;
    assert_eq!(res.status(), StatusCode::OK);
    let pi: RegisterResponse = res.json().await.unwrap();
    assert!(pi.token.starts_with("afa_"));
    let (s, e) = error_of(register(&c, Some(&once.token), "pi-2").await).await;
    assert_eq!(
        (s, e.code.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_join_token")
    );
    assert!(
        e.message.contains("as many agents as it allows"),
        "{}",
        e.message
    );

    // The registered agent comes back after a restart with its own token, no join token needed.
    let again = register(&c, Some(&pi.token), "pi").await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: RegisterResponse = again.json().await.unwrap();
    assert_eq!(again.agent_id, pi.agent_id);
    // ...but that token is not a join token for another name.
    let (s, _) = error_of(register(&c, Some(&again.token), "other").await).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // A refused registration (a bad platform) does not spend a use.
    let two = create(&c, json!({"kind": "join", "max_uses": 1})).await;
    let bad = call(
        &c,
        Method::POST,
        "/agents/register",
        Some(&two.token),
        Some(json!({"name": "z", "native_platforms": ["linux/mips"], "capacity": 1})),
    )
    .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        register(&c, Some(&two.token), "z15").await.status(),
        StatusCode::OK
    );

    // An expired join token is refused and says so.
    let short = create(&c, json!({"kind": "join", "expires_in_secs": 1})).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let e = loop {
        let res = register(&c, Some(&short.token), "late").await;
        if res.status() == StatusCode::UNAUTHORIZED {
            break error_of(res).await.1;
        }
        // Registered while still valid: forget it so the next try registers anew.
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            std::time::Instant::now() < deadline,
            "the token never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let id = res.json::<RegisterResponse>().await.unwrap().agent_id;
        let mut forget = call(
            &c,
            Method::POST,
            &format!("/agents/{id}/revoke"),
            Some(ADMIN),
            None,
        )
        .await;
        assert_eq!(forget.status(), StatusCode::OK);
        forget = call(
            &c,
            Method::DELETE,
            &format!("/agents/{id}"),
            Some(ADMIN),
            None,
        )
        .await;
        assert_eq!(forget.status(), StatusCode::NO_CONTENT);
    };
    assert!(e.message.contains("expired"), "{}", e.message);
    let list: Value = call(&c, Method::GET, "/tokens", Some(ADMIN), None)
        .await
        .json()
        .await
        .unwrap();
    let states: Vec<(String, String)> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        states.contains(&(once.info.id.to_string(), "used_up".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&(short.info.id.to_string(), "expired".into())),
        "{states:?}"
    );
    c.stop().await;
}

#[tokio::test]
async fn a_revoked_agent_is_cut_off_and_its_build_requeued() {
    let c = Coordinator::start(&["--api-token", ADMIN]).await;
    let pi = c.register("pi", &["linux/arm64"], &[]).await;
    let digest = c
        .upload_as(Some(ADMIN), &[("Dockerfile", "FROM scratch\n")])
        .await;
    let res = call(
        &c,
        Method::POST,
        "/jobs",
        Some(ADMIN),
        Some(job_body(&digest)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let lease = c.lease(&pi).await.expect("the build is leased");

    // Only an admin may revoke.
    let read = create(&c, json!({"kind": "api", "scope": "submit"})).await;
    let path = format!("/agents/{}/revoke", pi.agent_id);
    let (s, _) = error_of(call(&c, Method::POST, &path, Some(&read.token), None).await).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let res = call(&c, Method::POST, &path, Some(ADMIN), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let agent: Value = res.json().await.unwrap();
    assert_eq!(agent["state"], "revoked");

    // Its next report and lease call get 401; the build is queued for another agent.
    let hb = c
        .report(
            &pi,
            lease.build_id,
            "heartbeat",
            json!({"lease_token": lease.lease_token}),
        )
        .await;
    assert_eq!(hb.status(), StatusCode::UNAUTHORIZED);
    let job: Value = call(
        &c,
        Method::GET,
        &format!("/jobs/{}", lease.job_id),
        Some(ADMIN),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(job["builds"][0]["state"], "queued", "{job}");
    // It cannot come back under its name, with its old token or the join token...
    let (s, e) = error_of(register(&c, Some("join-secret"), "pi").await).await;
    assert_eq!(
        (s, e.code.as_str()),
        (StatusCode::FORBIDDEN, "agent_revoked")
    );
    assert!(
        e.message.contains("archfarm agents forget pi"),
        "{}",
        e.message
    );
    let (s, e) = error_of(register(&c, Some(&pi.token), "pi").await).await;
    assert_eq!(
        (s, e.code.as_str()),
        (StatusCode::FORBIDDEN, "agent_revoked")
    );
    // ...until an admin forgets it.
    let res = call(
        &c,
        Method::DELETE,
        &format!("/agents/{}", pi.agent_id),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        register(&c, Some("join-secret"), "pi").await.status(),
        StatusCode::OK
    );
    // An online agent is not forgotten behind its back.
    let online = c.register("online", &["linux/arm64"], &[]).await;
    let (s, e) = error_of(
        call(
            &c,
            Method::DELETE,
            &format!("/agents/{}", online.agent_id),
            Some(ADMIN),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((s, e.code.as_str()), (StatusCode::CONFLICT, "agent_online"));
    c.stop().await;
}

#[tokio::test]
async fn public_read_opens_reading_only_and_cookies_come_from_any_token() {
    let c = Coordinator::start(&["--api-token", ADMIN, "--public-read"]).await;
    assert_eq!(
        call(&c, Method::GET, "/jobs", None, None).await.status(),
        StatusCode::OK
    );
    let page = c.http.get(format!("{}/", c.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let (s, _) = error_of(
        call(
            &c,
            Method::POST,
            "/jobs",
            None,
            Some(job_body(NO_SUCH_CONTEXT)),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    c.stop().await;

    // Without --public-read, a created read token signs in to the dashboard; its cookie reads but
    // does not submit, and stops working when the token is revoked.
    let c = Coordinator::start(&["--api-token", ADMIN]).await;
    let read = create(&c, json!({"kind": "api", "scope": "read"})).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = no_redirects
        .post(format!("{}/login", c.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}&next=%2Fagents", read.token))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let set = login.headers()["set-cookie"].to_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    assert!(!cookie.contains(&read.token));
    let get = |path: String| c.http.get(path).header("cookie", cookie.clone()).send();
    assert_eq!(
        get(format!("{}/agents", c.base)).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(get(c.url("/jobs")).await.unwrap().status(), StatusCode::OK);
    let post = c
        .http
        .post(c.url("/jobs"))
        .header("cookie", cookie.clone())
        .json(&job_body(NO_SUCH_CONTEXT))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::UNAUTHORIZED);
    let res = call(
        &c,
        Method::POST,
        &format!("/tokens/{}/revoke", read.info.id),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        get(c.url("/jobs")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    c.stop().await;
}

#[tokio::test]
async fn tokens_need_an_admin_token_to_mean_anything() {
    let c = Coordinator::start(&[]).await;
    let (s, e) = error_of(
        call(
            &c,
            Method::POST,
            "/tokens",
            None,
            Some(json!({"kind": "join"})),
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, e.code.as_str()),
        (StatusCode::CONFLICT, "auth_disabled")
    );
    c.stop().await;
}

//! Deny by default, in process on port 0 with a real database: every route of the router, taken
//! from the same table the router is built with, is called without a token, with a token one
//! scope too narrow, and with the right one; requests that may carry a body carry a malformed
//! one, and a caller who may not call the route is refused before that body is read.

mod common;

use archfarm_coordinator::api::access::{Access, RouteAccess};
use archfarm_coordinator::api::route_table;
use archfarm_protocol::api::{ErrorResponse, RegisterResponse};
use common::Coordinator;
use reqwest::header::{CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret";
/// Not JSON: a handler that parsed it would answer 400.
const MALFORMED: &str = r#"{"name": "pi", "platforms": [oops"#;

/// `POST path` with the malformed JSON body, as `token` (or anonymously).
async fn post_malformed(c: &Coordinator, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = c
        .http
        .post(c.url(path))
        .header(CONTENT_TYPE, "application/json")
        .body(MALFORMED);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap()
}

/// What a caller is expected to get from a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Refused with this status and error code, before the body is read.
    Refused(StatusCode, &'static str),
    /// Sent to the dashboard's sign-in form.
    SignIn,
    /// Let through the gate: the handler answers (often 400 for the malformed body, or 404).
    Through,
}

/// A client that follows no redirects, so the sign-in redirect is seen as it is.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The route's path with every `{param}` filled with `fill`.
fn concrete(path: &str, fill: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('}').expect("a closed parameter");
        out.push_str(fill);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Calls `route` (with `{params}` as `fill`) with `token` and, where a body may go, a malformed
/// JSON body; checks the answer is `expect`.
async fn check(
    c: &Coordinator,
    route: &RouteAccess,
    fill: &str,
    token: Option<&str>,
    expect: Expect,
) {
    let method = Method::from_bytes(route.method.as_str().as_bytes()).unwrap();
    let url = format!("{}{}", c.base, concrete(&route.path, fill));
    let mut req = client().request(method.clone(), &url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if method != Method::GET && method != Method::HEAD {
        req = req.header(CONTENT_TYPE, "application/json").body(MALFORMED);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let what = format!(
        "{} {} ({:?}) with {:?}",
        route.method,
        route.path,
        route.access,
        token.map(|t| &t[..t.len().min(8)])
    );
    match expect {
        Expect::Refused(want, code) => {
            assert_eq!(status, want, "{what}");
            if method != Method::HEAD {
                let e: ErrorResponse = res.json().await.unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(e.code, code, "{what}: {}", e.message);
            }
        }
        Expect::SignIn => {
            assert_eq!(status, StatusCode::SEE_OTHER, "{what}");
            let to = res.headers()[LOCATION].to_str().unwrap();
            assert!(to.starts_with("/login?next="), "{what}: {to}");
        }
        Expect::Through => {
            assert!(
                status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                "{what}: {status}"
            );
            if route.access == Access::Page {
                let to = res.headers().get(LOCATION).and_then(|l| l.to_str().ok());
                assert!(
                    !to.is_some_and(|l| l.starts_with("/login")),
                    "{what}: sent to sign in"
                );
            }
            // The route is the router's: it did not fall through to "no such endpoint".
            if status == StatusCode::NOT_FOUND && method != Method::HEAD {
                let body = res.text().await.unwrap();
                assert!(!body.contains("no such endpoint"), "{what}: {body}");
            }
            // A stream (the event streams) is left open: the status is all this needs.
        }
    }
}

/// Creates an API token of `scope` as the admin.
async fn token(c: &Coordinator, scope: &str) -> String {
    let res = c
        .http
        .post(c.url("/tokens"))
        .bearer_auth(ADMIN)
        .json(&json!({"kind": "api", "scope": scope}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

const UNAUTHORIZED: Expect = Expect::Refused(StatusCode::UNAUTHORIZED, "unauthorized");
const NOT_AN_AGENT: Expect = Expect::Refused(StatusCode::UNAUTHORIZED, "unknown_agent");
const NO_JOIN: Expect = Expect::Refused(StatusCode::UNAUTHORIZED, "invalid_join_token");
const TOO_NARROW: Expect = Expect::Refused(StatusCode::FORBIDDEN, "insufficient_scope");

#[tokio::test]
async fn every_route_refuses_strangers_and_narrow_tokens_before_reading_the_body() {
    let c = Coordinator::start(&["--api-token", ADMIN]).await;
    let read = token(&c, "read").await;
    let submit = token(&c, "submit").await;
    let agent: RegisterResponse = c.register("pi", &["linux/arm64"], &[]).await;
    let table = route_table();
    assert!(table.routes().len() >= 30, "{:?}", table.routes());
    for path in [
        "/healthz",
        "/metrics",
        "/",
        "/api/v1/jobs",
        "/api/v1/agents/register",
    ] {
        assert!(
            table.routes().iter().any(|r| r.path == path),
            "{path} is not in the table"
        );
    }

    for route in table.routes() {
        let id = uuid::Uuid::new_v4().to_string();
        // Without a token.
        let stranger = match route.access {
            Access::Public => Expect::Through,
            Access::Page => Expect::SignIn,
            Access::Agent | Access::AgentItself => NOT_AN_AGENT,
            Access::Join => NO_JOIN,
            Access::Read
            | Access::Submit
            | Access::Admin
            | Access::SubmitterOrAgent
            | Access::AgentItselfOrAdmin => UNAUTHORIZED,
        };
        check(&c, route, &id, None, stranger).await;

        // With a credential one step too weak, then with the right one.
        let (narrow, right): (Option<(&str, Expect)>, Option<&str>) = match route.access {
            Access::Public => (None, None),
            // Nothing is narrower than read: an agent's token is no API token.
            Access::Read => (Some((&agent.token, UNAUTHORIZED)), Some(&read)),
            Access::Page => (Some((&agent.token, Expect::SignIn)), Some(&read)),
            Access::Submit | Access::SubmitterOrAgent => (Some((&read, TOO_NARROW)), Some(&submit)),
            Access::Admin | Access::AgentItselfOrAdmin => {
                (Some((&submit, TOO_NARROW)), Some(ADMIN))
            }
            Access::Agent => (Some((ADMIN, NOT_AN_AGENT)), Some(&agent.token)),
            // The right token on another agent's `{id}` is refused too (see below for its own).
            Access::AgentItself => (Some((ADMIN, NOT_AN_AGENT)), None),
            Access::Join => (Some((ADMIN, NO_JOIN)), Some("join-secret")),
        };
        if let Some((t, expect)) = narrow {
            check(&c, route, &id, Some(t), expect).await;
        }
        if let Some(t) = right {
            check(&c, route, &id, Some(t), Expect::Through).await;
        }
        if route.access == Access::AgentItself {
            check(&c, route, &id, Some(&agent.token), NOT_AN_AGENT).await;
        }
    }

    // The agent's own `{id}` is let through: the malformed lease request is then the handler's 400.
    let res = post_malformed(
        &c,
        &format!("/agents/{}/lease", agent.agent_id),
        Some(&agent.token),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // A method a path does not take is still 405.
    let res = c
        .http
        .delete(c.url("/jobs"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    c.stop().await;
}

#[tokio::test]
async fn an_anonymous_malformed_submission_gets_401_not_the_schema_error() {
    let c = Coordinator::start(&["--api-token", ADMIN]).await;
    let res = post_malformed(&c, "/jobs", None).await;
    let (status, e) = common::error_of(res).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert!(!e.message.contains("not a valid request"), "{}", e.message);
    c.stop().await;
}

#[tokio::test]
async fn public_read_and_the_open_api_let_through_what_they_always_did() {
    // --public-read: reading needs nothing, changing still needs a token.
    let c = Coordinator::start(&["--api-token", ADMIN, "--public-read"]).await;
    for route in route_table().routes() {
        let id = uuid::Uuid::new_v4().to_string();
        let expect = match route.access {
            Access::Public | Access::Read | Access::Page => Expect::Through,
            Access::Agent | Access::AgentItself => NOT_AN_AGENT,
            Access::Join => NO_JOIN,
            Access::Submit
            | Access::Admin
            | Access::SubmitterOrAgent
            | Access::AgentItselfOrAdmin => UNAUTHORIZED,
        };
        check(&c, route, &id, None, expect).await;
    }
    c.stop().await;

    // No --api-token: the API is open (on loopback); agents still need their tokens, and with a
    // --join-token registration needs it.
    let c = Coordinator::start(&[]).await;
    for route in route_table().routes() {
        let id = uuid::Uuid::new_v4().to_string();
        let expect = match route.access {
            Access::Agent | Access::AgentItself => NOT_AN_AGENT,
            Access::Join => NO_JOIN,
            Access::SubmitterOrAgent
            | Access::AgentItselfOrAdmin
            | Access::Public
            | Access::Read
            | Access::Page
            | Access::Submit
            | Access::Admin => Expect::Through,
        };
        check(&c, route, &id, None, expect).await;
    }
    c.stop().await;
}

#[tokio::test]
async fn a_revoked_agent_is_told_so_by_its_old_token_before_its_body_is_read() {
    let c = Coordinator::start(&["--api-token", ADMIN]).await;
    let pi = c.register("pi", &["linux/arm64"], &[]).await;
    let res = c
        .http
        .post(c.url(&format!("/agents/{}/revoke", pi.agent_id)))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = post_malformed(&c, "/agents/register", Some(&pi.token)).await;
    let (status, e) = common::error_of(res).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::FORBIDDEN, "agent_revoked")
    );
    assert!(
        e.message.contains("archfarm agents forget pi"),
        "{}",
        e.message
    );
    // Its reports are refused as from an unknown agent, as before.
    let res = c
        .http
        .post(c.url(&format!("/agents/{}/lease", pi.agent_id)))
        .bearer_auth(&pi.token)
        .json(&json!({"wait_secs": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    c.stop().await;
}

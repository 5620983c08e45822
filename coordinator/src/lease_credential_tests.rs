//! The challenge read and the scope asked for, against a registry's `/v2/` and token endpoint
//! served in-process (the real token-mode registry is in `tests/registry_token.rs`).

use std::sync::{Arc, Mutex};

use archfarm_protocol::{RegistryAuths, Secret};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::*;

/// What the fake registry says on `/v2/` without a token, and what its token endpoint saw.
#[derive(Clone)]
struct Fake {
    challenge: String,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

async fn v2(State(fake): State<Fake>) -> impl IntoResponse {
    (
        StatusCode::UNAUTHORIZED,
        [("www-authenticate", fake.challenge.clone())],
        "{}",
    )
}

async fn token(
    State(fake): State<Fake>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> impl IntoResponse {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    fake.seen
        .lock()
        .unwrap()
        .push((q.unwrap_or_default(), auth));
    r#"{"token": "scoped-token", "expires_in": 300}"#
}

/// Serves a registry whose challenge is `challenge(host)`; returns its host and what it saw.
async fn serve(challenge: impl Fn(&str) -> String) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let fake = Fake {
        challenge: challenge(&host),
        seen: Arc::default(),
    };
    let seen = fake.seen.clone();
    let app = Router::new()
        .route("/v2/", get(v2))
        .route("/token", get(token))
        .with_state(fake);
    tokio::spawn(async move { axum::serve(listener, app).await });
    (host, seen)
}

fn access_with(registry: &str, entry: &str) -> RegistryAccess {
    let mut access = RegistryAccess::default();
    access.auths = RegistryAuths::parse(
        "config.json",
        &format!(r#"{{"auths": {{"{registry}": {entry}}}}}"#),
    )
    .unwrap();
    access
}

const PASSWORD: &str = r#"{"username": "ci", "password": "hunter2"}"#;

#[tokio::test]
async fn a_bearer_registry_gets_a_token_for_the_repository_only() {
    let (host, seen) = serve(|h| format!(r#"Bearer realm="http://{h}/token",service="svc""#)).await;
    let got = scoped(&access_with(&host, PASSWORD), &host, "team/app", true)
        .await
        .unwrap();
    assert_eq!(
        got,
        Some(RegistryCredential::RegistryToken(Secret::new(
            "scoped-token"
        )))
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (query, auth) = &seen[0];
    let params: Vec<(String, String)> = url_pairs(query);
    assert!(
        params.contains(&("scope".into(), push_scope("team/app"))),
        "{params:?}"
    );
    assert!(
        params.contains(&("service".into(), "svc".into())),
        "{params:?}"
    );
    assert_eq!(
        params.iter().filter(|(k, _)| k == "scope").count(),
        1,
        "one scope, the job's repository: {params:?}"
    );
    // The password went to the token service, and only there.
    assert_eq!(auth, "Basic Y2k6aHVudGVyMg==");
}

#[tokio::test]
async fn a_basic_registry_keeps_the_password() {
    let (host, seen) = serve(|_| r#"Basic realm="htpasswd""#.to_string()).await;
    let access = access_with(&host, PASSWORD);
    let got = scoped(&access, &host, "team/app", true).await.unwrap();
    assert_eq!(got.as_ref(), access.auths.get(&host));
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_realm_on_another_host_is_refused_and_named() {
    let (host, seen) =
        serve(|_| r#"Bearer realm="http://127.0.0.1:9/token",service="svc""#.to_string()).await;
    let e = scoped(&access_with(&host, PASSWORD), &host, "team/app", true)
        .await
        .unwrap_err();
    assert_eq!(e.repository, "team/app");
    assert!(e.message.contains("127.0.0.1:9 is not the registry"), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn other_credentials_pass_as_configured() {
    let access = access_with("r.io", r#"{"registrytoken": "given"}"#);
    assert_eq!(
        scoped(&access, "r.io", "team/app", false).await.unwrap(),
        Some(RegistryCredential::RegistryToken(Secret::new("given")))
    );
    assert_eq!(scoped(&access, "other.io", "x", false).await.unwrap(), None);
    assert_eq!(push_scope("team/app"), "repository:team/app:pull,push");
}

/// `a=b&c=d` decoded.
fn url_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

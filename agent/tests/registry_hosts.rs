//! A registry that sends the agent's push elsewhere: a token realm, a redirect and an upload
//! location on another host. A small real HTTP server on 127.0.0.1 plays the registry and a
//! second one on 127.0.0.2 (another host, as far as URLs go) counts what reaches it: nothing may,
//! unless the agent lists that host with `--registry-redirect-host`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use archfarm_agent::backend::LogSink;
use archfarm_agent::backoff::Backoff;
use archfarm_agent::push::{self, Blob, LayoutImage, PushError, Retry, Target};
use archfarm_protocol::{Digest, RegistryCredential, Secret};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use sha2::{Digest as _, Sha256};

/// How the fake registry sends the client away.
#[derive(Clone, Copy, Debug)]
enum Trick {
    /// `/v2/` asks for a token from a realm on the other host.
    Realm,
    /// Every blob check is redirected to the other host.
    Redirect,
    /// Blob uploads are to continue at a location on the other host.
    UploadLocation,
}

#[derive(Clone)]
struct Fake {
    trick: Trick,
    elsewhere: String,
}

async fn registry(State(fake): State<Fake>, req: axum::extract::Request) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let away = |p: &str| format!("http://{}{p}", fake.elsewhere);
    match (fake.trick, method.as_str(), path.as_str()) {
        (Trick::Realm, _, "/v2/") => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                format!(r#"Bearer realm="{}",service="fake""#, away("/token")),
            )],
        )
            .into_response(),
        (_, _, "/v2/") => StatusCode::OK.into_response(),
        (Trick::Redirect, _, p) if p.contains("/blobs/sha256:") => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, away("/blob"))],
        )
            .into_response(),
        (_, "HEAD", p) if p.contains("/blobs/sha256:") => StatusCode::NOT_FOUND.into_response(),
        (Trick::UploadLocation, "POST", p) if p.ends_with("/blobs/uploads/") => (
            StatusCode::ACCEPTED,
            [(header::LOCATION, away("/upload/1"))],
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// What reached the other host: requests, and any `Authorization` header among them.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    authorizations: AtomicUsize,
}

async fn elsewhere(State(seen): State<Arc<Seen>>, headers: HeaderMap) -> StatusCode {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    if headers.contains_key(header::AUTHORIZATION) {
        seen.authorizations.fetch_add(1, Ordering::SeqCst);
    }
    StatusCode::UNAUTHORIZED
}

async fn serve(addr: &str, app: Router) -> String {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    bound
}

/// A one-blob image in a temporary directory.
fn image(dir: &std::path::Path) -> LayoutImage {
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_digest = format!("sha256:{}", hex(config));
    let path = dir.join("config");
    std::fs::write(&path, config).unwrap();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[]}}"#,
        config.len()
    );
    LayoutImage {
        digest: Digest::parse(&format!("sha256:{}", hex(manifest.as_bytes()))).unwrap(),
        manifest: manifest.into_bytes(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        blobs: vec![Blob {
            digest: config_digest,
            size: config.len() as u64,
            path,
        }],
    }
}

fn hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Pushes through a fake registry playing `trick`, with the other host listed or not; returns
/// the failure and what reached the other host.
async fn push_through(trick: Trick, list_it: bool) -> (PushError, Arc<Seen>, String) {
    let seen = Arc::new(Seen::default());
    let other = serve(
        "127.0.0.2:0",
        Router::new().fallback(elsewhere).with_state(seen.clone()),
    )
    .await;
    let registry = serve(
        "127.0.0.1:0",
        Router::new().fallback(registry).with_state(Fake {
            trick,
            elsewhere: other.clone(),
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let target = Target {
        registry: registry.clone(),
        repository: "team/app".into(),
        insecure: true,
        auth: Some(RegistryCredential::Basic {
            username: "ci".into(),
            password: Secret::new("hunter2".to_string()),
        }),
        ca_cert: None,
        redirect_hosts: if list_it {
            vec![other.clone()]
        } else {
            Vec::new()
        },
    };
    let (log, _rx) = LogSink::channel(1000);
    // Refusals are permanent; a short budget keeps a wrong guess from waiting two minutes.
    let retry = Retry {
        budget: Duration::from_secs(2),
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_millis(200)),
    };
    let e = push::push_with(&image(dir.path()), &target, &log, &retry)
        .await
        .unwrap_err();
    (e, seen, other)
}

#[tokio::test]
async fn a_realm_on_another_host_is_refused_unless_listed() {
    let (e, seen, other) = push_through(Trick::Realm, false).await;
    let msg = e.to_string();
    assert!(
        msg.contains(&format!(
            "the registry's token service (realm): {other} is not the registry"
        )) && msg.contains("--registry-redirect-host"),
        "{msg}"
    );
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        0,
        "the realm was asked"
    );
    // Refused at once: a retry would be refused the same way.
    assert!(!e.is_transient(), "{msg}");

    // Listed, the realm is asked (with the credential, as the token flow needs).
    let (_, seen, _) = push_through(Trick::Realm, true).await;
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
    assert_eq!(seen.authorizations.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_redirect_to_another_host_is_not_followed_unless_listed() {
    let (e, seen, other) = push_through(Trick::Redirect, false).await;
    let msg = e.to_string();
    assert!(
        msg.contains(&format!(
            "the registry's redirect: {other} is not the registry"
        )),
        "{msg}"
    );
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
    assert!(!e.is_transient(), "{msg}");

    // Listed, it is followed, without the registry's credential (oci-client and reqwest drop
    // it on a redirect to another host).
    let (_, seen, _) = push_through(Trick::Redirect, true).await;
    assert!(seen.requests.load(Ordering::SeqCst) >= 1);
    assert_eq!(seen.authorizations.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_upload_location_on_another_host_is_refused() {
    let (e, seen, other) = push_through(Trick::UploadLocation, false).await;
    let msg = e.to_string();
    assert!(
        msg.contains(&format!(
            "the registry's upload location: {other} is not the registry"
        )),
        "{msg}"
    );
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        0,
        "the upload went elsewhere"
    );
}

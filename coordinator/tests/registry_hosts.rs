//! A registry that sends the coordinator's stitching elsewhere: a token realm or a redirect on
//! another host. A small real HTTP server on 127.0.0.1 plays the registry, a second one on
//! 127.0.0.2 (another host, as far as URLs go) counts what reaches it, and the coordinator's own
//! registry client (the one stitching uses) reads a manifest through the first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use archfarm_coordinator::config::Config;
use archfarm_coordinator::registry::RegistryAccess;
use archfarm_coordinator::stitch::{is_transient, registry_message};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use clap::Parser;
use oci_client::manifest::OCI_IMAGE_MEDIA_TYPE;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

#[derive(Clone)]
struct Fake {
    realm: bool,
    elsewhere: String,
}

async fn registry(State(fake): State<Fake>, req: axum::extract::Request) -> Response {
    let away = |p: &str| format!("http://{}{p}", fake.elsewhere);
    match (fake.realm, req.uri().path()) {
        (true, "/v2/") => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                format!(r#"Bearer realm="{}",service="fake""#, away("/token")),
            )],
        )
            .into_response(),
        (false, "/v2/") => StatusCode::OK.into_response(),
        (false, p) if p.contains("/manifests/") => (
            StatusCode::FOUND,
            [(header::LOCATION, away("/latest/meta-data/"))],
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn serve(addr: &str, app: Router) -> String {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    bound
}

/// Reads a manifest through a fake registry (a realm or a redirect elsewhere) with the
/// coordinator's client, the other host listed or not; returns the message and the requests
/// that reached the other host.
async fn read_through(realm: bool, list_it: bool) -> (Option<String>, usize, String) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let other = serve(
        "127.0.0.2:0",
        Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { StatusCode::UNAUTHORIZED }
        }),
    )
    .await;
    let registry = serve(
        "127.0.0.1:0",
        Router::new().fallback(registry).with_state(Fake {
            realm,
            elsewhere: other.clone(),
        }),
    )
    .await;
    let mut args = vec!["archfarm-coordinator".to_string()];
    if list_it {
        args.extend(["--registry-redirect-host".to_string(), other.clone()]);
    }
    let access = RegistryAccess::load(&Config::try_parse_from(args).unwrap()).unwrap();
    let client = access.client_for(&registry, true);
    let reference = Reference::with_digest(
        registry.clone(),
        "team/app".into(),
        format!("sha256:{}", "a".repeat(64)),
    );
    let auth = RegistryAuth::Basic("ci".into(), "hunter2".into());
    let message = client
        .pull_manifest_raw(&reference, &auth, &[OCI_IMAGE_MEDIA_TYPE])
        .await
        .err()
        .map(|e| {
            // Stitching retries transient failures for minutes; a refusal must not be one.
            assert!(!is_transient(&e), "{e}");
            registry_message(&e)
        });
    (message, seen.load(Ordering::SeqCst), other)
}

#[tokio::test]
async fn stitching_asks_no_realm_on_another_host_unless_listed() {
    let (message, reached, other) = read_through(true, false).await;
    let message = message.expect("the read must fail");
    assert!(
        message.contains(&format!(
            "the registry's token service (realm): {other} is not the registry"
        )) && message.contains("--registry-redirect-host"),
        "{message}"
    );
    assert_eq!(reached, 0, "the realm was asked");
    let (_, reached, _) = read_through(true, true).await;
    assert_eq!(reached, 1, "a listed realm is asked");
}

#[tokio::test]
async fn stitching_follows_no_redirect_to_another_host_unless_listed() {
    let (message, reached, other) = read_through(false, false).await;
    let message = message.expect("the read must fail");
    assert!(
        message.contains(&format!(
            "the registry's redirect: {other} is not the registry"
        )),
        "{message}"
    );
    assert_eq!(reached, 0, "the redirect was followed");
    let (_, reached, _) = read_through(false, true).await;
    assert_eq!(reached, 1, "a listed host is followed to");
}

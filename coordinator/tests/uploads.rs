//! Blob uploads as the coordinator's registry client makes them (the client its copies to a
//! job's other repositories use), against a small fake registry that records every request and
//! answers a `PATCH` with 201 as ECR does: parts of exactly `UPLOAD_CHUNK_BYTES` but the last
//! however the stream cuts its items, and a blob that fits in one part in one `PUT`.
//! `tests/ecr_rules.rs` does the same end to end through a real registry.

use std::sync::{Arc, Mutex};

use archfarm_coordinator::config::Config;
use archfarm_coordinator::registry::RegistryAccess;
use archfarm_protocol::limits::UPLOAD_CHUNK_BYTES;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use clap::Parser;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use sha2::{Digest as _, Sha256};

/// `(method, path, body bytes)` of every request.
type Seen = Arc<Mutex<Vec<(Method, String, usize)>>>;

async fn registry(State(seen): State<Seen>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .unwrap();
    seen.lock()
        .unwrap()
        .push((method.clone(), path.clone(), body.len()));
    let session = "/v2/team/app/blobs/uploads/1";
    match (method, path.as_str()) {
        (Method::GET, "/v2/") => StatusCode::OK.into_response(),
        (Method::POST, "/v2/team/app/blobs/uploads/") => {
            (StatusCode::ACCEPTED, [(header::LOCATION, session)]).into_response()
        }
        // ECR's answer to a part.
        (Method::PATCH, p) if p == session => {
            (StatusCode::CREATED, [(header::LOCATION, session)]).into_response()
        }
        (Method::PUT, p) if p == session => (
            StatusCode::CREATED,
            [(header::LOCATION, "/v2/team/app/blobs/x")],
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[tokio::test]
async fn uploads_go_in_whole_parts_or_one_put() {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let app = Router::new().fallback(registry).with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let access =
        RegistryAccess::load(&Config::try_parse_from(["archfarm-coordinator"]).unwrap()).unwrap();
    let client = access.client_for(&host, true);
    let at = Reference::with_tag(host.clone(), "team/app".into(), "latest".into());
    client
        .store_auth_if_needed(at.resolve_registry(), &RegistryAuth::Anonymous)
        .await;

    // 20 MiB in items of 3 MiB: parts of 8, 8 and 4 MiB, each answered 201.
    let blob: Vec<u8> = (0..20 << 20).map(|i: u32| (i % 251) as u8).collect();
    let items: Vec<Result<bytes::Bytes, oci_client::errors::OciDistributionError>> = blob
        .chunks(3 << 20)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    client
        .push_blob_stream(
            &at,
            futures::stream::iter(items),
            &digest(&blob),
            Some(blob.len() as u64),
        )
        .await
        .expect("a chunked upload answered 201 per part");
    let parts: Vec<usize> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, _, _)| *m == Method::PATCH)
        .map(|(_, _, n)| *n)
        .collect();
    assert_eq!(
        parts,
        [UPLOAD_CHUNK_BYTES, UPLOAD_CHUNK_BYTES, 4 << 20],
        "every part but the last is whole"
    );

    // A blob that fits in one part: POST, then one PUT with the body, no PATCH.
    seen.lock().unwrap().clear();
    let small = vec![7u8; 300 << 10];
    let items = vec![Ok::<_, oci_client::errors::OciDistributionError>(
        bytes::Bytes::from(small.clone()),
    )];
    client
        .push_blob_stream(
            &at,
            futures::stream::iter(items),
            &digest(&small),
            Some(small.len() as u64),
        )
        .await
        .expect("a monolithic upload");
    let requests: Vec<(Method, usize)> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, p, _)| p != "/v2/")
        .map(|(m, _, n)| (m.clone(), *n))
        .collect();
    assert_eq!(
        requests,
        [(Method::POST, 0), (Method::PUT, small.len())],
        "one PUT"
    );
}

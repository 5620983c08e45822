//! Amazon ECR's upload rules in front of a real registry. ECR cannot run here, so this small HTTP
//! proxy stands before Debian's `docker-registry` and enforces what ECR does differently from the
//! distribution specification, as documented by AWS and reported by the clients that met it:
//!
//! - **Parts of at least 5 MiB.** ECR stores a chunked upload as an S3 multipart upload: every
//!   part but the last must be at least 5 MiB (`LayerPartTooSmallException`, "All layer parts
//!   except the last part should be at least 5MB", as CloudTrail records it). A `PATCH` that
//!   follows a smaller one, or a closing `PUT` with a body after one, is refused here with `400`
//!   and that message, and not forwarded.
//! - **201 to a `PATCH`.** ECR answers a chunk with `201 Created` where the specification says
//!   `202 Accepted`; the registry's 202 is rewritten.
//! - **A `Range` that stops advancing.** After the first part, ECR's `Range` header keeps the
//!   first part's end (aws/containers-roadmap#2831); so does this proxy's, so a client that
//!   trusted it would resend at the wrong offset.
//! - **No cross-repository mounts** (ECR's `BLOB_MOUNTING` setting off, or a blob no manifest of
//!   the source references): `?mount=&from=` is dropped, so the registry opens an ordinary upload
//!   session and answers `202`, as ECR does.
//!
//! Monolithic uploads (`POST`, then `PUT` with the whole blob) pass: ECR takes them. Everything
//! else goes through unchanged. Every request is recorded for the test to read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// ECR's minimum size of a part that is not the last: S3 multipart upload's 5 MiB.
pub const MIN_PART_BYTES: u64 = 5 << 20;

/// ECR's words for a part under [`MIN_PART_BYTES`].
pub const PART_TOO_SMALL: &str = "All layer parts except the last part should be at least 5MB";

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `POST`, `PATCH`, `PUT`, ...
    pub method: String,
    /// Path and query as the client sent them.
    pub uri: String,
    /// Bytes of the request body.
    pub body_bytes: u64,
    /// The status the client got.
    pub status: u16,
    /// Refused by the proxy for breaking an ECR rule (never reached the registry).
    pub refused: bool,
}

#[derive(Default)]
struct Upload {
    /// Sizes of its `PATCH` parts so far.
    parts: Vec<u64>,
    /// The `Range` the registry gave the first part, repeated afterwards.
    first_range: Option<HeaderValue>,
}

struct Inner {
    upstream: String,
    own: String,
    http: reqwest::Client,
    uploads: Mutex<HashMap<String, Upload>>,
    seen: Mutex<Vec<Seen>>,
}

/// The proxy on a free loopback port; stopped on drop.
pub struct EcrProxy {
    addr: SocketAddr,
    inner: Arc<Inner>,
    // Dropping the runtime stops the server.
    _runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for EcrProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcrProxy")
            .field("addr", &self.addr)
            .finish()
    }
}

impl EcrProxy {
    /// Starts the proxy in front of the plain-HTTP registry at `upstream` (`HOST:PORT`).
    pub fn start(upstream: &str) -> EcrProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ecr-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let inner = Arc::new(Inner {
            upstream: upstream.to_string(),
            own: addr.to_string(),
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("proxy client"),
            uploads: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(forward).with_state(inner.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        EcrProxy {
            addr,
            inner,
            _runtime: runtime,
        }
    }

    /// `127.0.0.1:PORT`: the registry part of image references through the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Every request so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().expect("seen lock").clone()
    }
}

/// The upload session a path names (`/v2/NAME/blobs/uploads/UUID`), if any.
fn upload_key(path: &str) -> Option<String> {
    let (_, rest) = path.split_once("/blobs/uploads/")?;
    (!rest.is_empty()).then(|| path.to_string())
}

fn ecr_error(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/json")],
        serde_json::json!({"errors": [{"code": "LAYER_PART_TOO_SMALL", "message": message}]})
            .to_string(),
    )
        .into_response()
}

async fn forward(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let uri = req
        .uri()
        .path_and_query()
        .map_or(path.clone(), |p| p.to_string());
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), 1 << 30).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let key = upload_key(&path);
    let record = |status: u16, refused: bool| Seen {
        method: method.to_string(),
        uri: uri.clone(),
        body_bytes: body.len() as u64,
        status,
        refused,
    };

    // The size rule, checked before anything reaches the registry.
    if let Some(key) = &key {
        let uploads = inner.uploads.lock().expect("uploads lock");
        let parts = uploads.get(key).map(|u| u.parts.as_slice()).unwrap_or(&[]);
        let closing_with_body = method == Method::PUT && !body.is_empty();
        // A PATCH after a part means that part was not the last; so does a PUT with a body.
        let earlier_small = parts.iter().any(|&n| n < MIN_PART_BYTES);
        if (method == Method::PATCH || closing_with_body) && earlier_small {
            drop(uploads);
            inner
                .seen
                .lock()
                .expect("seen lock")
                .push(record(400, true));
            return ecr_error(PART_TOO_SMALL);
        }
    }

    // No mounts: the registry opens an ordinary upload session instead.
    let mut target = uri.clone();
    if method == Method::POST && uri.contains("mount=") {
        let (p, q) = uri.split_once('?').unwrap_or((&uri, ""));
        let kept: Vec<&str> = q
            .split('&')
            .filter(|kv| !kv.starts_with("mount=") && !kv.starts_with("from="))
            .collect();
        target = if kept.is_empty() {
            p.to_string()
        } else {
            format!("{p}?{}", kept.join("&"))
        };
    }

    let mut out = inner
        .http
        .request(method.clone(), format!("http://{}{target}", inner.upstream))
        .body(body.clone());
    for (name, value) in &headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            out = out.header(name, value);
        }
    }
    let res = match out.send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut status = res.status();
    let mut res_headers: HeaderMap = HeaderMap::new();
    for (name, value) in res.headers() {
        if matches!(
            name.as_str(),
            "content-length" | "connection" | "transfer-encoding"
        ) {
            continue;
        }
        let value = if name == "location" {
            // The registry names itself; the client must come back through the proxy.
            let rewritten = value
                .to_str()
                .unwrap_or_default()
                .replace(&inner.upstream, &inner.own);
            HeaderValue::from_str(&rewritten).unwrap_or_else(|_| value.clone())
        } else {
            value.clone()
        };
        res_headers.append(name.clone(), value);
    }
    if let Some(key) = &key {
        let mut uploads = inner.uploads.lock().expect("uploads lock");
        if method == Method::PATCH && status == StatusCode::ACCEPTED {
            let upload = uploads.entry(key.clone()).or_default();
            upload.parts.push(body.len() as u64);
            status = StatusCode::CREATED;
            match &upload.first_range {
                None => upload.first_range = res_headers.get("range").cloned(),
                Some(first) => {
                    res_headers.insert("range", first.clone());
                }
            }
            // The next request goes to the Location the registry gave, which names the same
            // session with a new `_state`: the session is the path, and the path stays.
        }
        if method == Method::PUT && status.is_success() {
            uploads.remove(key);
        }
    }
    let bytes = res.bytes().await.unwrap_or_default();
    inner
        .seen
        .lock()
        .expect("seen lock")
        .push(record(status.as_u16(), false));
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = res_headers;
    response
}

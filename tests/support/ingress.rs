//! An ingress in front of the coordinator, as in a Kubernetes rollout: it forwards every request,
//! except that while it is "without a backend" it answers lease polls itself with a bare
//! `404` page (what ingress-nginx's default backend says when no coordinator pod is ready). It
//! also serves a gate a build's `RUN` step can wait on (`GET /gate`), held until the test opens it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::Notify;

struct Inner {
    upstream: String,
    http: reqwest::Client,
    no_backend: AtomicBool,
    plain_404s: AtomicUsize,
    gate_open: AtomicBool,
    gate: Notify,
}

/// The ingress on a free loopback port; stopped on drop.
pub struct Ingress {
    addr: SocketAddr,
    inner: Arc<Inner>,
    // Dropping the runtime stops the server.
    _runtime: tokio::runtime::Runtime,
}

impl Ingress {
    /// Starts the ingress in front of the coordinator at `upstream` (its URL).
    pub fn start(upstream: &str) -> Ingress {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ingress")
            .enable_all()
            .build()
            .expect("ingress runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the ingress");
        let addr = listener.local_addr().expect("ingress address");
        let inner = Arc::new(Inner {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("ingress client"),
            no_backend: AtomicBool::new(false),
            plain_404s: AtomicUsize::new(0),
            gate_open: AtomicBool::new(false),
            gate: Notify::new(),
        });
        let app = Router::new()
            .route("/gate", axum::routing::get(gate))
            .fallback(forward)
            .with_state(inner.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Ingress {
            addr,
            inner,
            _runtime: runtime,
        }
    }

    /// `http://127.0.0.1:PORT/`: the coordinator URL agents are given.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// `http://127.0.0.1:PORT/gate`: held until [`Ingress::open_gate`].
    pub fn gate_url(&self) -> String {
        format!("http://{}/gate", self.addr)
    }

    /// Whether lease polls are answered with a bare 404 instead of being forwarded.
    pub fn set_no_backend(&self, on: bool) {
        self.inner.no_backend.store(on, Ordering::SeqCst);
    }

    /// How many bare 404s the ingress answered.
    pub fn plain_404s(&self) -> usize {
        self.inner.plain_404s.load(Ordering::SeqCst)
    }

    /// Lets every request to the gate, waiting or to come, through.
    pub fn open_gate(&self) {
        self.inner.gate_open.store(true, Ordering::SeqCst);
        self.inner.gate.notify_waiters();
    }
}

async fn gate(State(inner): State<Arc<Inner>>) -> &'static str {
    loop {
        let opened = inner.gate.notified();
        if inner.gate_open.load(Ordering::SeqCst) {
            return "open\n";
        }
        opened.await;
    }
}

async fn forward(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if path.ends_with("/lease") && inner.no_backend.load(Ordering::SeqCst) {
        inner.plain_404s.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::NOT_FOUND,
            [("content-type", "text/html")],
            "<html><head><title>404 Not Found</title></head><body><center><h1>404 Not Found</h1></center><hr><center>nginx</center></body></html>\n",
        )
            .into_response();
    }
    let uri = req
        .uri()
        .path_and_query()
        .map_or(path.clone(), |p| p.to_string());
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), 1 << 30).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut out = inner
        .http
        .request(method, format!("{}{uri}", inner.upstream))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            out = out.header(name, value);
        }
    }
    match out.send().await {
        Ok(resp) => {
            let mut answer = Response::builder().status(resp.status().as_u16());
            for (name, value) in resp.headers() {
                if name != "content-length" && name != "transfer-encoding" {
                    answer = answer.header(name, value);
                }
            }
            answer
                .body(Body::from_stream(resp.bytes_stream()))
                .expect("a response")
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

//! The session against a fake coordinator (axum, in process) and a fake backend: registration
//! retries and refusals, leasing, ordered log streaming, reports, cancellation and shutdown. The
//! real coordinator and buildah are exercised by the workspace's end-to-end tests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use archfarm_agent::backend::isolation::IsolationKind;
use archfarm_agent::backend::{Backend, BackendError, BoxFuture, BuildSpec, LogSink, PushedImage};
use archfarm_agent::backoff::Backoff;
use archfarm_agent::client::CoordinatorClient;
use archfarm_agent::context::Limits;
use archfarm_agent::detect::Platforms;
use archfarm_agent::network::NetworkPolicy;
use archfarm_agent::session::Session;
use archfarm_agent::workdir::WorkDir;
use archfarm_agent::{AgentError, Secret, Stopped};
use archfarm_protocol::api::{
    BuildMode, CompleteRequest, ErrorResponse, FailRequest, HeartbeatRequest, HeartbeatResponse,
    Lease, LogRequest, RegisterRequest, RegisterResponse,
};
use archfarm_protocol::events::LogResponse;
use archfarm_protocol::{Digest, Network, Platform};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const JOIN: &str = "join-secret";
const AGENT_TOKEN: &str = "agent-token";

#[derive(Default)]
struct Fake {
    /// Answer 503 to this many registrations first.
    register_unavailable: usize,
    reject_join: bool,
    /// Answer 409 `name_taken` to registrations (another installation holds the name).
    name_taken: bool,
    registers: Vec<RegisterRequest>,
    /// Answer 401 to the next lease call (as after a coordinator reset).
    lease_unauthorized_once: bool,
    /// Answer this many lease calls, once the queued leases are handed out, with a bare 404
    /// page (as an ingress with no ready coordinator behind it does).
    lease_plain_404: usize,
    /// Take the lines of the next log call, then answer 503 (as when the answer is lost).
    log_answer_lost_once: bool,
    /// The batch number of every log call, in order.
    log_seqs: Vec<Option<u64>>,
    leases: VecDeque<Lease>,
    heartbeats: usize,
    cancel_on_heartbeat: bool,
    /// Answer 409 to heartbeats (the lease went to another agent).
    lost_on_heartbeat: bool,
    lines: Vec<String>,
    /// Answer `truncated: true` once this many lines were taken (as a coordinator at its cap).
    log_cap_lines: Option<usize>,
    /// Log reports received.
    log_calls: usize,
    completes: Vec<CompleteRequest>,
    fails: Vec<FailRequest>,
    context: Vec<u8>,
    /// Lease calls received.
    lease_calls: usize,
    /// How long a lease call without work is held open (default 50 ms).
    lease_hold: Option<Duration>,
    /// Answer lease calls with 409 `draining` (as after `archfarm agents drain`).
    draining: bool,
    /// Set `draining` once the queued leases are handed out.
    drain_when_empty: bool,
    /// 409 `draining` answers sent.
    draining_answers: usize,
    /// Answer this many complete calls with 503 first.
    complete_unavailable: usize,
    /// Answer complete calls with 409 `lease_lost`.
    complete_conflict: bool,
    /// Complete calls received, answered or not.
    complete_attempts: usize,
    /// `POST /agents/{id}/drain` calls.
    drains: usize,
    /// `POST /agents/{id}/deregister` calls.
    deregisters: usize,
    /// Drain, complete, fail and deregister calls in the order they arrived.
    events: Vec<&'static str>,
}

type Shared = Arc<Mutex<Fake>>;

fn err(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(ErrorResponse {
            code: code.into(),
            message: message.into(),
        }),
    )
        .into_response()
}

fn bearer(h: &HeaderMap) -> String {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_start_matches("Bearer ")
        .to_string()
}

async fn register(
    State(s): State<Shared>,
    h: HeaderMap,
    Json(req): Json<RegisterRequest>,
) -> Response {
    let mut f = s.lock().unwrap();
    if f.register_unavailable > 0 {
        f.register_unavailable -= 1;
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "starting up",
        );
    }
    if f.reject_join || bearer(&h) != JOIN {
        return err(
            StatusCode::UNAUTHORIZED,
            "invalid_join_token",
            "the join token is not valid",
        );
    }
    if f.name_taken {
        let message = format!(
            "agent '{}' is online from another installation (last seen 2s ago)",
            req.name
        );
        return err(StatusCode::CONFLICT, "name_taken", &message);
    }
    f.registers.push(req);
    Json(RegisterResponse {
        agent_id: Uuid::nil(),
        token: AGENT_TOKEN.into(),
        heartbeat_interval_secs: 1,
    })
    .into_response()
}

async fn lease(State(s): State<Shared>, h: HeaderMap) -> Response {
    let hold = {
        let mut f = s.lock().unwrap();
        assert_eq!(bearer(&h), AGENT_TOKEN);
        f.lease_calls += 1;
        if f.draining {
            f.draining_answers += 1;
            return err(
                StatusCode::CONFLICT,
                "draining",
                "agent pi-on-a-shelf is draining: finish the running builds, then deregister",
            );
        }
        if f.lease_unauthorized_once {
            f.lease_unauthorized_once = false;
            return err(
                StatusCode::UNAUTHORIZED,
                "invalid_agent_token",
                "unknown agent",
            );
        }
        if let Some(l) = f.leases.pop_front() {
            if f.leases.is_empty() && f.drain_when_empty {
                f.draining = true;
            }
            return Json(l).into_response();
        }
        if f.lease_plain_404 > 0 {
            f.lease_plain_404 -= 1;
            return (
                StatusCode::NOT_FOUND,
                [("content-type", "text/html")],
                "<html><head><title>404 Not Found</title></head><body>default backend - 404</body></html>",
            )
                .into_response();
        }
        // A short hold stands in for the real long poll unless a test asks for the real length.
        f.lease_hold.unwrap_or(Duration::from_millis(50))
    };
    tokio::time::sleep(hold).await;
    StatusCode::NO_CONTENT.into_response()
}

async fn drain(State(s): State<Shared>, h: HeaderMap) -> Response {
    assert_eq!(bearer(&h), AGENT_TOKEN);
    let mut f = s.lock().unwrap();
    f.drains += 1;
    f.draining = true;
    f.events.push("drain");
    Json(serde_json::json!({"state": "draining"})).into_response()
}

async fn deregister(State(s): State<Shared>, h: HeaderMap) -> StatusCode {
    assert_eq!(bearer(&h), AGENT_TOKEN);
    let mut f = s.lock().unwrap();
    f.deregisters += 1;
    f.events.push("deregister");
    StatusCode::NO_CONTENT
}

async fn heartbeat(State(s): State<Shared>, Json(_): Json<HeartbeatRequest>) -> Response {
    let mut f = s.lock().unwrap();
    f.heartbeats += 1;
    if f.lost_on_heartbeat {
        return err(StatusCode::CONFLICT, "lease_lost", "the lease expired");
    }
    Json(HeartbeatResponse {
        cancel: f.cancel_on_heartbeat,
    })
    .into_response()
}

async fn log(State(s): State<Shared>, Json(req): Json<LogRequest>) -> Response {
    let mut f = s.lock().unwrap();
    f.log_calls += 1;
    f.log_seqs.push(req.seq);
    f.lines.extend(req.lines);
    if std::mem::take(&mut f.log_answer_lost_once) {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "answer lost",
        );
    }
    match f.log_cap_lines {
        // Like a coordinator from before log caps: 204 and no body.
        None => StatusCode::NO_CONTENT.into_response(),
        Some(cap) => Json(LogResponse {
            truncated: f.lines.len() >= cap,
        })
        .into_response(),
    }
}

async fn complete(State(s): State<Shared>, Json(req): Json<CompleteRequest>) -> Response {
    let mut f = s.lock().unwrap();
    f.complete_attempts += 1;
    if f.complete_unavailable > 0 {
        f.complete_unavailable -= 1;
        return err(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "restarting");
    }
    if f.complete_conflict {
        return err(StatusCode::CONFLICT, "lease_lost", "the lease expired");
    }
    f.completes.push(req);
    f.events.push("complete");
    StatusCode::NO_CONTENT.into_response()
}

async fn fail(State(s): State<Shared>, Json(req): Json<FailRequest>) -> StatusCode {
    let mut f = s.lock().unwrap();
    f.fails.push(req);
    f.events.push("fail");
    StatusCode::NO_CONTENT
}

async fn context(State(s): State<Shared>, Path(_digest): Path<String>) -> Vec<u8> {
    s.lock().unwrap().context.clone()
}

/// The fake coordinator's server, which can go away (connections refused) and come back on the
/// same port with the same state, as a restarted coordinator does.
struct Server {
    addr: std::net::SocketAddr,
    shared: Shared,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    async fn start(fake: Fake) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut s = Server {
            addr: listener.local_addr().unwrap(),
            shared: Arc::new(Mutex::new(fake)),
            stop: CancellationToken::new(),
            task: None,
        };
        s.serve(listener);
        s
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        self.stop = CancellationToken::new();
        let stop = self.stop.clone();
        let app = app(self.shared.clone());
        self.task = Some(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap()
        }));
    }

    /// Stops listening and closes every connection: calls are refused until [`Server::up`].
    async fn down(&mut self) {
        self.stop.cancel();
        self.task.take().unwrap().await.unwrap();
    }

    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

async fn start(fake: Fake) -> (String, Shared) {
    let server = Server::start(fake).await;
    (server.url(), server.shared.clone())
}

fn app(shared: Shared) -> Router {
    Router::new()
        .route("/api/v1/agents/register", post(register))
        .route("/api/v1/agents/{id}/lease", post(lease))
        .route("/api/v1/agents/{id}/drain", post(drain))
        .route("/api/v1/agents/{id}/deregister", post(deregister))
        .route("/api/v1/builds/{id}/heartbeat", post(heartbeat))
        .route("/api/v1/builds/{id}/log", post(log))
        .route("/api/v1/builds/{id}/complete", post(complete))
        .route("/api/v1/builds/{id}/fail", post(fail))
        .route("/api/v1/contexts/{digest}", get(context))
        .with_state(shared)
}

/// What the fake backend does with a build.
#[derive(Clone)]
enum Behaviour {
    Succeed {
        lines: usize,
    },
    Fail,
    /// Runs until cancelled, then notes that it saw the cancellation.
    Hang,
    /// Runs until the token fires, then succeeds (or until cancelled, like `Hang`).
    SucceedWhen(CancellationToken),
}

struct FakeBackend {
    behaviour: Behaviour,
    saw_cancel: Arc<AtomicBool>,
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    fn build<'a>(
        &'a self,
        spec: &'a BuildSpec,
        log: LogSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<PushedImage, BackendError>> {
        Box::pin(async move {
            let dockerfile = std::fs::read_to_string(spec.context_dir.join("Dockerfile"))
                .expect("context unpacked");
            assert_eq!(dockerfile, "FROM scratch\n");
            let pushed = || PushedImage {
                digest: digest(b"manifest"),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                size: 8,
            };
            match &self.behaviour {
                Behaviour::SucceedWhen(release) => {
                    tokio::select! {
                        _ = release.cancelled() => Ok(pushed()),
                        _ = cancel.cancelled() => {
                            self.saw_cancel.store(true, Ordering::SeqCst);
                            Err(BackendError::Cancelled)
                        }
                    }
                }
                Behaviour::Succeed { lines } => {
                    for i in 0..*lines {
                        log.line(format!("line {i}")).await;
                    }
                    Ok(pushed())
                }
                Behaviour::Fail => {
                    log.line("Error: it broke").await;
                    Err(BackendError::Failed {
                        command: "buildah build".into(),
                        status: "status 1".into(),
                        last_line: Some("Error: it broke".into()),
                    })
                }
                Behaviour::Hang => {
                    cancel.cancelled().await;
                    self.saw_cancel.store(true, Ordering::SeqCst);
                    Err(BackendError::Cancelled)
                }
            }
        })
    }
}

fn digest(b: &[u8]) -> Digest {
    Digest::from_sha256_bytes(&Sha256::digest(b))
}

fn context_archive() -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut h = tar::Header::new_gnu();
    h.set_size(13);
    h.set_mode(0o644);
    b.append_data(&mut h, "Dockerfile", &b"FROM scratch\n"[..])
        .unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

fn a_lease(context: &[u8]) -> Lease {
    Lease {
        build_id: Uuid::new_v4(),
        job_id: Uuid::new_v4(),
        lease_token: Uuid::new_v4(),
        platform: Platform::parse("linux/arm64").unwrap(),
        mode: BuildMode::Native,
        context: digest(context),
        dockerfile: "Dockerfile".into(),
        build_args: BTreeMap::new(),
        target: None,
        registry: "127.0.0.1:5000".into(),
        repository: "team/app".into(),
        insecure_registry: true,
        heartbeat_interval_secs: 1,
        registry_auth: None,
        secret_build_args: Vec::new(),
        secrets: Vec::new(),
        network: None,
        pull: Default::default(),
        cache: Default::default(),
        image_meta: Default::default(),
        allow_foreign_binary: Vec::new(),
        smoke_test: None,
    }
}

struct Agent {
    /// One send per shutdown signal.
    signals: tokio::sync::mpsc::UnboundedSender<()>,
    task: tokio::task::JoinHandle<Result<Stopped, AgentError>>,
    work: tempfile::TempDir,
    saw_cancel: Arc<AtomicBool>,
}

fn spawn_agent(url: &str, join: &str, behaviour: Behaviour) -> Agent {
    let work = tempfile::tempdir().unwrap();
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let session = Session {
        client: CoordinatorClient::new(url.parse().unwrap()),
        join_token: Secret::new(join),
        name: "pi-on-a-shelf".into(),
        capacity: 2,
        platforms: Platforms {
            native: vec![Platform::parse("linux/arm64").unwrap()],
            emulated: vec![Platform::parse("linux/s390x").unwrap()],
        },
        work_dir: WorkDir::create(work.path()).unwrap(),
        backend: Arc::new(FakeBackend {
            behaviour,
            saw_cancel: saw_cancel.clone(),
        }),
        limits: Limits::default(),
        backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
        registry: Default::default(),
        networks: NetworkPolicy::from_flags(IsolationKind::Oci, Network::Host, &[]).unwrap(),
        storage: None,
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let signals =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|()| ((), rx)) },
        );
    let task = tokio::spawn(session.run(Box::pin(signals)));
    Agent {
        signals: tx,
        task,
        work,
        saw_cancel,
    }
}

impl Agent {
    /// As a SIGTERM would.
    fn signal(&self) {
        self.signals.send(()).unwrap();
    }

    /// One signal, then waits for the agent to stop.
    async fn shutdown(mut self) -> Result<Stopped, AgentError> {
        self.signal();
        self.stopped().await
    }

    async fn stopped(&mut self) -> Result<Stopped, AgentError> {
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("agent stops")
            .unwrap()
    }

    fn builds_left(&self) -> usize {
        std::fs::read_dir(self.work.path().join("builds"))
            .unwrap()
            .count()
    }
}

/// Polls `cond` on the fake's state until it holds (no guessed sleeps).
async fn until(s: &Shared, what: &str, cond: impl Fn(&Fake) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond(&s.lock().unwrap()) {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_rejected_join_token_is_fatal_with_exit_code_2() {
    let (url, _s) = start(Fake {
        reject_join: true,
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, "wrong", Behaviour::Fail);
    let e = tokio::time::timeout(Duration::from_secs(10), agent.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, AgentError::JoinTokenRejected(_)), "{e}");
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("the join token is not valid"), "{e}");
}

#[tokio::test]
async fn a_name_held_by_another_online_agent_is_fatal_with_exit_code_2() {
    let (url, s) = start(Fake {
        name_taken: true,
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::Fail);
    let e = tokio::time::timeout(Duration::from_secs(10), agent.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, AgentError::NameTaken { .. }), "{e}");
    assert_eq!(e.exit_code(), 2);
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "another agent named pi-on-a-shelf is online; give this one a different --name"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("agent 'pi-on-a-shelf' is online from another installation"),
        "the coordinator's message is kept: {msg}"
    );
    assert!(s.lock().unwrap().registers.is_empty());
}

#[tokio::test]
async fn registration_retries_while_the_coordinator_is_unavailable() {
    let (url, s) = start(Fake {
        register_unavailable: 3,
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::Fail);
    until(&s, "registration", |f| !f.registers.is_empty()).await;
    let reg = s.lock().unwrap().registers[0].clone();
    assert_eq!(reg.name, "pi-on-a-shelf");
    assert_eq!(reg.native_platforms, ["linux/arm64"]);
    assert_eq!(reg.emulated_platforms, ["linux/s390x"]);
    assert_eq!(reg.capacity, 2);
    let kept = std::fs::read_to_string(agent.work.path().join("instance-id")).unwrap();
    assert_eq!(
        reg.instance_id.map(|id| id.to_string()).as_deref(),
        Some(kept.trim()),
        "the work directory's instance id is sent"
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_build_streams_its_lines_in_order_then_completes() {
    let ctx = context_archive();
    let lease = a_lease(&ctx);
    let (url, s) = start(Fake {
        context: ctx,
        leases: VecDeque::from([lease.clone()]),
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::Succeed { lines: 250 });
    until(&s, "complete", |f| !f.completes.is_empty()).await;
    {
        let f = s.lock().unwrap();
        let c = &f.completes[0];
        assert_eq!(c.lease_token, lease.lease_token);
        assert_eq!(c.digest, digest(b"manifest"));
        assert_eq!(c.size, 8);
        let built: Vec<&String> = f.lines.iter().filter(|l| l.starts_with("line ")).collect();
        let want: Vec<String> = (0..250).map(|i| format!("line {i}")).collect();
        assert_eq!(
            built,
            want.iter().collect::<Vec<_>>(),
            "every line, in order, before the report"
        );
        assert!(
            f.lines
                .iter()
                .any(|l| l.starts_with("[archfarm-agent] fetching context")),
            "{:?}",
            &f.lines[..3]
        );
        assert!(f.fails.is_empty());
    }
    let cached = agent
        .work
        .path()
        .join("contexts")
        .join(format!("{}.tar.gz", lease.context.hex()));
    assert!(cached.exists(), "context cached by digest");
    until(&s, "cleanup", |_| agent.builds_left() == 0).await;
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn lines_past_the_coordinators_cap_are_not_sent() {
    let ctx = context_archive();
    let (url, s) = start(Fake {
        context: ctx.clone(),
        leases: VecDeque::from([a_lease(&ctx)]),
        log_cap_lines: Some(150),
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::Succeed { lines: 5000 });
    until(&s, "complete", |f| !f.completes.is_empty()).await;
    {
        let f = s.lock().unwrap();
        // Reports stop at the first answer that says the log is cut: at most one batch more
        // than the cap arrives, not all 5000 lines.
        assert!(f.lines.len() >= 150, "{} lines", f.lines.len());
        assert!(
            f.lines.len() < 150 + archfarm_agent::logs::MAX_BATCH_LINES,
            "{} lines sent after the cap",
            f.lines.len()
        );
        assert!(f.log_calls <= 3, "{} log reports", f.log_calls);
        assert!(f.fails.is_empty(), "the build itself still succeeds");
    }
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_build_reports_one_line() {
    let ctx = context_archive();
    let lease = a_lease(&ctx);
    let (url, s) = start(Fake {
        context: ctx,
        leases: VecDeque::from([lease]),
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::Fail);
    until(&s, "fail", |f| !f.fails.is_empty()).await;
    assert_eq!(
        s.lock().unwrap().fails[0].error,
        "buildah build exited with status 1: Error: it broke"
    );
    assert!(s.lock().unwrap().completes.is_empty());
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn build_secret_values_are_redacted_from_lines_and_the_failure() {
    let ctx = context_archive();
    let mut lease = a_lease(&ctx);
    // The fake backend prints "Error: it broke" and fails with that as its last line.
    lease.secrets = vec![archfarm_protocol::BuildSecret {
        id: "tok".into(),
        value: Secret::new("broke"),
    }];
    let (url, s) = start(Fake {
        context: ctx,
        leases: VecDeque::from([lease]),
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::Fail);
    until(&s, "fail", |f| !f.fails.is_empty()).await;
    {
        let f = s.lock().unwrap();
        assert_eq!(
            f.fails[0].error,
            "buildah build exited with status 1: Error: it [redacted]"
        );
        assert!(
            f.lines.iter().all(|l| !l.contains("broke")),
            "{:?}",
            f.lines
        );
    }
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn secret_values_are_redacted_from_lines_and_the_failure() {
    let ctx = context_archive();
    let mut lease = a_lease(&ctx);
    // The fake backend prints "Error: it broke" and fails with that as its last line.
    lease.build_args = BTreeMap::from([
        ("WORD".to_string(), "broke".to_string()),
        ("SHOWN".to_string(), "it".to_string()),
    ]);
    lease.secret_build_args = vec!["WORD".into()];
    lease.registry_auth = Some(archfarm_protocol::RegistryCredential::Basic {
        username: "ci".into(),
        password: Secret::new("Error"),
    });
    let (url, s) = start(Fake {
        context: ctx,
        leases: VecDeque::from([lease]),
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::Fail);
    until(&s, "fail", |f| !f.fails.is_empty()).await;
    {
        let f = s.lock().unwrap();
        assert_eq!(
            f.fails[0].error,
            "buildah build exited with status 1: [redacted]: it [redacted]"
        );
        assert!(
            f.lines.iter().any(|l| l == "[redacted]: it [redacted]"),
            "{:?}",
            f.lines
        );
        assert!(
            f.lines.iter().all(|l| !l.contains("broke")),
            "{:?}",
            f.lines
        );
    }
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lease_asking_for_a_network_the_agent_does_not_allow_fails_the_build() {
    let ctx = context_archive();
    let mut lease = a_lease(&ctx);
    lease.network = Some(Network::Private);
    let (url, s) = start(Fake {
        context: ctx,
        leases: VecDeque::from([lease]),
        ..Default::default()
    })
    .await;
    // The backend would succeed: only the agent's own check can fail this build.
    let agent = spawn_agent(&url, JOIN, Behaviour::Succeed { lines: 1 });
    until(&s, "fail", |f| !f.fails.is_empty()).await;
    {
        let f = s.lock().unwrap();
        assert_eq!(
            f.fails[0].error,
            "this agent does not allow --network private (it allows host, none); refusing the build"
        );
        assert!(f.completes.is_empty());
        // It told the coordinator what it allows when it registered.
        let r = &f.registers[0];
        assert_eq!(r.default_network, Some(Network::Host));
        assert_eq!(r.allowed_networks, [Network::Host, Network::None]);
    }
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bad_context_digest_fails_the_build() {
    let lease = a_lease(b"something else");
    let (url, s) = start(Fake {
        context: context_archive(),
        leases: VecDeque::from([lease]),
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::Fail);
    until(&s, "fail", |f| !f.fails.is_empty()).await;
    let e = s.lock().unwrap().fails[0].error.clone();
    assert!(e.contains("arrived with digest"), "{e}");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cancelled_job_stops_the_build_without_a_report() {
    stops_without_report(|f| f.cancel_on_heartbeat = true).await;
}

#[tokio::test]
async fn a_lost_lease_stops_the_build_without_a_report() {
    stops_without_report(|f| f.lost_on_heartbeat = true).await;
}

/// Starts a hanging build, applies `change` after the first heartbeat, and expects the build to be
/// killed, cleaned up and not reported.
async fn stops_without_report(change: impl Fn(&mut Fake)) {
    let ctx = context_archive();
    let (url, s) = start(Fake {
        context: ctx.clone(),
        leases: VecDeque::from([a_lease(&ctx)]),
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::Hang);
    until(&s, "first heartbeat", |f| f.heartbeats >= 1).await;
    change(&mut s.lock().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.saw_cancel.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the build was not cancelled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until(&s, "cleanup", |_| agent.builds_left() == 0).await;
    {
        let f = s.lock().unwrap();
        assert!(
            f.completes.is_empty() && f.fails.is_empty(),
            "abandoned builds are not reported"
        );
    }
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_first_signal_drains_running_builds_then_deregisters() {
    let ctx = context_archive();
    let lease = a_lease(&ctx);
    let release = CancellationToken::new();
    let (url, s) = start(Fake {
        context: ctx,
        leases: VecDeque::from([lease.clone()]),
        ..Default::default()
    })
    .await;
    let mut agent = spawn_agent(&url, JOIN, Behaviour::SucceedWhen(release.clone()));
    until(&s, "build started", |f| {
        f.lines.iter().any(|l| l.contains("context unpacked"))
    })
    .await;
    agent.signal();
    until(&s, "drain announced", |f| f.drains == 1).await;
    let (leases, beats) = {
        let f = s.lock().unwrap();
        (f.lease_calls, f.heartbeats)
    };
    // The build goes on, heartbeating, while nothing new is leased and nothing is deregistered.
    until(&s, "two more heartbeats", |f| f.heartbeats >= beats + 2).await;
    {
        let f = s.lock().unwrap();
        assert_eq!(f.lease_calls, leases, "no lease calls after the drain");
        assert_eq!(f.deregisters, 0);
        assert!(f.completes.is_empty());
    }
    assert!(!agent.task.is_finished(), "the agent waits for its build");
    release.cancel();
    let stopped = agent.stopped().await.unwrap();
    assert_eq!(stopped, Stopped::Drained);
    assert_eq!(stopped.exit_code(), 0);
    assert!(
        !agent.saw_cancel.load(Ordering::SeqCst),
        "the build was not killed"
    );
    assert_eq!(agent.builds_left(), 0);
    let f = s.lock().unwrap();
    assert_eq!(f.completes.len(), 1);
    assert_eq!(f.completes[0].lease_token, lease.lease_token);
    assert_eq!(f.events, ["drain", "complete", "deregister"]);
}

#[tokio::test]
async fn a_signal_while_idle_aborts_the_long_poll_and_deregisters() {
    let (url, s) = start(Fake {
        lease_hold: Some(Duration::from_secs(25)),
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::Fail);
    until(&s, "a long poll in flight", |f| f.lease_calls == 1).await;
    let started = Instant::now();
    assert_eq!(agent.shutdown().await.unwrap(), Stopped::Drained);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the long poll was not waited out: {:?}",
        started.elapsed()
    );
    let f = s.lock().unwrap();
    assert_eq!(f.events, ["drain", "deregister"]);
    assert_eq!(f.lease_calls, 1);
}

#[tokio::test]
async fn a_second_signal_abandons_running_builds() {
    let ctx = context_archive();
    let (url, s) = start(Fake {
        context: ctx.clone(),
        leases: VecDeque::from([a_lease(&ctx)]),
        ..Default::default()
    })
    .await;
    let mut agent = spawn_agent(&url, JOIN, Behaviour::Hang);
    until(&s, "build started", |f| {
        f.lines.iter().any(|l| l.contains("context unpacked"))
    })
    .await;
    agent.signal();
    until(&s, "drain announced", |f| f.drains == 1).await;
    assert!(!agent.saw_cancel.load(Ordering::SeqCst));
    agent.signal();
    let stopped = agent.stopped().await.unwrap();
    assert_eq!(stopped, Stopped::Abandoned { builds: 1 });
    assert_eq!(stopped.exit_code(), 1);
    assert!(
        agent.saw_cancel.load(Ordering::SeqCst),
        "the running build was killed"
    );
    assert_eq!(agent.builds_left(), 0, "its directory was removed");
    let f = s.lock().unwrap();
    assert!(
        f.completes.is_empty() && f.fails.is_empty(),
        "an abandoned build is not reported: its lease lapses"
    );
    assert_eq!(
        f.deregisters, 0,
        "the coordinator finds out through the leases"
    );
}

#[tokio::test]
async fn a_drain_from_the_coordinator_finishes_builds_then_deregisters() {
    let ctx = context_archive();
    let release = CancellationToken::new();
    let (url, s) = start(Fake {
        context: ctx.clone(),
        leases: VecDeque::from([a_lease(&ctx)]),
        drain_when_empty: true,
        ..Default::default()
    })
    .await;
    let mut agent = spawn_agent(&url, JOIN, Behaviour::SucceedWhen(release.clone()));
    until(&s, "409 draining", |f| f.draining_answers >= 1).await;
    let calls = s.lock().unwrap().lease_calls;
    let beats = s.lock().unwrap().heartbeats;
    until(&s, "a heartbeat after the 409", |f| f.heartbeats > beats).await;
    assert_eq!(
        s.lock().unwrap().lease_calls,
        calls,
        "no lease calls after the 409"
    );
    assert!(
        !agent.task.is_finished(),
        "the running build is finished first"
    );
    release.cancel();
    assert_eq!(agent.stopped().await.unwrap(), Stopped::Drained);
    let f = s.lock().unwrap();
    assert_eq!(f.completes.len(), 1);
    assert_eq!(
        f.events,
        ["complete", "deregister"],
        "no drain call: the coordinator started it"
    );
}

#[tokio::test]
async fn builds_survive_a_coordinator_outage_and_report_when_it_is_back() {
    let ctx = context_archive();
    let lease = a_lease(&ctx);
    let release = CancellationToken::new();
    let mut server = Server::start(Fake {
        context: ctx,
        leases: VecDeque::from([lease.clone()]),
        ..Default::default()
    })
    .await;
    let s = server.shared.clone();
    let agent = spawn_agent(&server.url(), JOIN, Behaviour::SucceedWhen(release.clone()));
    until(&s, "first heartbeat", |f| f.heartbeats >= 1).await;
    server.down().await;
    let refused = reqwest::get(server.url()).await.unwrap_err();
    assert!(
        refused.is_connect(),
        "the coordinator is really away: {refused}"
    );
    // The build ends while the coordinator is away: its heartbeats (every second) and its report
    // are refused for a few seconds.
    release.cancel();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !agent.saw_cancel.load(Ordering::SeqCst),
        "failed heartbeats do not stop the build"
    );
    assert!(s.lock().unwrap().completes.is_empty());
    server.up().await;
    until(&s, "the report after the restart", |f| {
        f.completes.len() == 1
    })
    .await;
    assert_eq!(
        s.lock().unwrap().completes[0].lease_token,
        lease.lease_token
    );
    until(&s, "cleanup", |_| agent.builds_left() == 0).await;
    assert!(!agent.saw_cancel.load(Ordering::SeqCst));
    assert_eq!(agent.shutdown().await.unwrap(), Stopped::Drained);
}

#[tokio::test]
async fn a_report_is_retried_through_5xx_and_dropped_on_409() {
    let ctx = context_archive();
    let (url, s) = start(Fake {
        context: ctx.clone(),
        leases: VecDeque::from([a_lease(&ctx)]),
        complete_unavailable: 3,
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::Succeed { lines: 1 });
    until(&s, "complete", |f| f.completes.len() == 1).await;
    assert_eq!(s.lock().unwrap().complete_attempts, 4);
    agent.shutdown().await.unwrap();

    let (url, s) = start(Fake {
        context: ctx.clone(),
        leases: VecDeque::from([a_lease(&ctx)]),
        complete_conflict: true,
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::Succeed { lines: 1 });
    until(&s, "complete attempted", |f| f.complete_attempts >= 1).await;
    until(&s, "cleanup", |_| agent.builds_left() == 0).await;
    assert_eq!(
        s.lock().unwrap().complete_attempts,
        1,
        "a 409 is not retried"
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_401_on_lease_registers_again() {
    let (url, s) = start(Fake {
        lease_unauthorized_once: true,
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::Fail);
    until(&s, "second registration", |f| f.registers.len() >= 2).await;
    {
        let f = s.lock().unwrap();
        assert!(f.registers[0].instance_id.is_some());
        assert_eq!(
            f.registers[0].instance_id, f.registers[1].instance_id,
            "the same installation registers again"
        );
    }
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn plain_404s_on_lease_are_waited_out_and_the_running_build_kept() {
    let ctx = context_archive();
    let lease = a_lease(&ctx);
    let release = CancellationToken::new();
    let (url, s) = start(Fake {
        context: ctx,
        leases: VecDeque::from([lease.clone()]),
        lease_plain_404: 20,
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::SucceedWhen(release.clone()));
    // The build runs while every lease poll beside it gets the ingress's 404 page.
    until(&s, "every plain 404 answered", |f| {
        f.lease_plain_404 == 0 && f.heartbeats >= 1
    })
    .await;
    release.cancel();
    until(&s, "the build's report", |f| f.completes.len() == 1).await;
    {
        let f = s.lock().unwrap();
        assert_eq!(f.registers.len(), 1, "no registration after a plain 404");
        assert_eq!(f.completes[0].lease_token, lease.lease_token);
        assert!(f.lease_calls > 21, "polls went on: {}", f.lease_calls);
    }
    assert!(!agent.saw_cancel.load(Ordering::SeqCst));
    assert_eq!(agent.shutdown().await.unwrap(), Stopped::Drained);
}

#[tokio::test]
async fn a_log_batch_is_sent_again_under_its_number() {
    let ctx = context_archive();
    let (url, s) = start(Fake {
        context: ctx.clone(),
        leases: VecDeque::from([a_lease(&ctx)]),
        log_answer_lost_once: true,
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::Succeed { lines: 250 });
    until(&s, "complete", |f| f.completes.len() == 1).await;
    let seqs = s.lock().unwrap().log_seqs.clone();
    // The first batch went twice (its answer was lost), under one number; the rest once each.
    assert_eq!(seqs[..2], [Some(0), Some(0)], "{seqs:?}");
    let rest: Vec<Option<u64>> = (1..seqs.len() as u64 - 1).map(Some).collect();
    assert_eq!(seqs[2..], rest[..], "{seqs:?}");
    agent.shutdown().await.unwrap();
}

/// The binary itself: a rejected join token ends it with exit code 2 and a message saying so.
#[tokio::test]
async fn the_binary_exits_2_when_the_join_token_is_rejected() {
    let (url, _s) = start(Fake {
        reject_join: true,
        ..Default::default()
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_archfarm-agent"))
        .args([
            "--coordinator",
            &url,
            "--platform",
            "linux/amd64",
            "--emulate",
            "none",
        ])
        .arg("--work-dir")
        .arg(work.path())
        .env("ARCHFARM_JOIN_TOKEN", "not-the-token")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("rejected the join token"), "{stderr}");
    assert!(
        !stderr.contains("not-the-token"),
        "the token leaked into the output: {stderr}"
    );
}

/// The binary itself: SIGTERM while idle drains, deregisters and exits 0 at once, long poll or not.
#[tokio::test]
async fn the_binary_drains_on_sigterm_and_exits_0() {
    let (url, s) = start(Fake {
        lease_hold: Some(Duration::from_secs(25)),
        ..Default::default()
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_archfarm-agent"))
        .args([
            "--coordinator",
            &url,
            "--platform",
            "linux/amd64",
            "--emulate",
            "none",
        ])
        .arg("--work-dir")
        .arg(work.path())
        .env("ARCHFARM_JOIN_TOKEN", JOIN)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    until(&s, "a long poll in flight", |f| f.lease_calls == 1).await;
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("the agent exits soon after SIGTERM")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(stderr.contains("draining: no builds running"), "{stderr}");
    assert!(stderr.contains("deregistered"), "{stderr}");
    assert_eq!(s.lock().unwrap().events, ["drain", "deregister"]);
}

#[tokio::test]
async fn the_binary_exits_2_on_bad_flags() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_archfarm-agent"))
        .args([
            "--coordinator",
            "http://127.0.0.1:1",
            "--join-token",
            "t",
            "--capacity",
            "0",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--capacity"));
}

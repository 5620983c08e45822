//! The session against a fake coordinator (axum, in process) and a fake backend: registration
//! retries and refusals, leasing, ordered log streaming, reports, cancellation and shutdown. The
//! real coordinator and buildah are exercised by the workspace's end-to-end tests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use archfarm_agent::backend::{Backend, BackendError, BoxFuture, BuildSpec, LogSink, PushedImage};
use archfarm_agent::backoff::Backoff;
use archfarm_agent::client::CoordinatorClient;
use archfarm_agent::context::Limits;
use archfarm_agent::detect::Platforms;
use archfarm_agent::session::Session;
use archfarm_agent::workdir::WorkDir;
use archfarm_agent::{AgentError, Secret};
use archfarm_protocol::api::{
    BuildMode, CompleteRequest, ErrorResponse, FailRequest, HeartbeatRequest, HeartbeatResponse,
    Lease, LogRequest, RegisterRequest, RegisterResponse,
};
use archfarm_protocol::{Digest, Platform};
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
    leases: VecDeque<Lease>,
    heartbeats: usize,
    cancel_on_heartbeat: bool,
    /// Answer 409 to heartbeats (the lease went to another agent).
    lost_on_heartbeat: bool,
    lines: Vec<String>,
    completes: Vec<CompleteRequest>,
    fails: Vec<FailRequest>,
    context: Vec<u8>,
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
    {
        let mut f = s.lock().unwrap();
        assert_eq!(bearer(&h), AGENT_TOKEN);
        if f.lease_unauthorized_once {
            f.lease_unauthorized_once = false;
            return err(
                StatusCode::UNAUTHORIZED,
                "invalid_agent_token",
                "unknown agent",
            );
        }
        if let Some(l) = f.leases.pop_front() {
            return Json(l).into_response();
        }
    }
    // A short hold stands in for the real long poll.
    tokio::time::sleep(Duration::from_millis(50)).await;
    StatusCode::NO_CONTENT.into_response()
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

async fn log(State(s): State<Shared>, Json(req): Json<LogRequest>) -> StatusCode {
    s.lock().unwrap().lines.extend(req.lines);
    StatusCode::NO_CONTENT
}

async fn complete(State(s): State<Shared>, Json(req): Json<CompleteRequest>) -> StatusCode {
    s.lock().unwrap().completes.push(req);
    StatusCode::NO_CONTENT
}

async fn fail(State(s): State<Shared>, Json(req): Json<FailRequest>) -> StatusCode {
    s.lock().unwrap().fails.push(req);
    StatusCode::NO_CONTENT
}

async fn context(State(s): State<Shared>, Path(_digest): Path<String>) -> Vec<u8> {
    s.lock().unwrap().context.clone()
}

async fn start(fake: Fake) -> (String, Shared) {
    let shared = Arc::new(Mutex::new(fake));
    let app = Router::new()
        .route("/api/v1/agents/register", post(register))
        .route("/api/v1/agents/{id}/lease", post(lease))
        .route("/api/v1/builds/{id}/heartbeat", post(heartbeat))
        .route("/api/v1/builds/{id}/log", post(log))
        .route("/api/v1/builds/{id}/complete", post(complete))
        .route("/api/v1/builds/{id}/fail", post(fail))
        .route("/api/v1/contexts/{digest}", get(context))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, shared)
}

/// What the fake backend does with a build.
#[derive(Clone, Copy)]
enum Behaviour {
    Succeed {
        lines: usize,
    },
    Fail,
    /// Runs until cancelled, then notes that it saw the cancellation.
    Hang,
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
            match self.behaviour {
                Behaviour::Succeed { lines } => {
                    for i in 0..lines {
                        log.line(format!("line {i}")).await;
                    }
                    Ok(PushedImage {
                        digest: digest(b"manifest"),
                        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                        size: 8,
                    })
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
    }
}

struct Agent {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), AgentError>>,
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
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(session.run(async move {
        let _ = rx.await;
    }));
    Agent {
        stop: Some(tx),
        task,
        work,
        saw_cancel,
    }
}

impl Agent {
    async fn shutdown(mut self) -> Result<(), AgentError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
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
async fn shutdown_kills_running_builds_and_returns_ok() {
    let ctx = context_archive();
    let (url, s) = start(Fake {
        context: ctx.clone(),
        leases: VecDeque::from([a_lease(&ctx)]),
        ..Default::default()
    })
    .await;
    let agent = spawn_agent(&url, JOIN, Behaviour::Hang);
    until(&s, "build started", |f| {
        f.lines.iter().any(|l| l.contains("context unpacked"))
    })
    .await;
    let saw = agent.saw_cancel.clone();
    agent.shutdown().await.unwrap();
    assert!(saw.load(Ordering::SeqCst), "the running build was stopped");
    let f = s.lock().unwrap();
    assert!(f.completes.is_empty() && f.fails.is_empty());
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

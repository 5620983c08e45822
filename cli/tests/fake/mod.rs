//! A scripted, in-process coordinator speaking the wire contract's CI routes, for the CLI's
//! process tests. Each `GET /jobs/{id}` moves the job one step along its [`Scenario`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use archfarm_protocol::api::{
    Agent, AgentList, AgentState, Build, BuildMode, BuildState, ContextInfo, ErrorResponse, Job,
    JobList, JobRequest, JobState,
};
use archfarm_protocol::{Digest, Platform};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, head, post};
use axum::{Json, Router};
use sha2::Digest as _;
use uuid::Uuid;

/// The index digest a succeeding job reports.
pub const INDEX: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
/// The linux/amd64 manifest digest.
pub const AMD64: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// The last line of linux/amd64's log in the `Succeed` and `FailS390x` scenarios.
pub const AMD64_LAST_LINE: &str = "pushed linux/amd64";

/// How the scripted job goes.
#[derive(Clone, Copy, PartialEq)]
pub enum Scenario {
    /// Both platforms build, then the index is stitched and pushed.
    Succeed,
    /// linux/s390x fails with a 25-line log.
    FailS390x,
    /// Builds start and never finish, for Ctrl-C and cancel tests.
    Hang,
    /// The required linux/amd64 build loses its first agent and succeeds on its second attempt;
    /// the optional second platform is skipped (no agent can build it) and the job succeeds with a
    /// warning.
    OptionalSkipped,
}

/// The warning a job with a skipped optional platform ends with.
pub const SKIPPED_WARNING: &str =
    "optional platform linux/s390x left out of the index: no online agent can build it";

/// What the fake has seen and holds.
#[derive(Default)]
pub struct Fake {
    pub scenario: Option<Scenario>,
    pub token: Option<String>,
    pub contexts: HashMap<String, Vec<u8>>,
    pub puts: usize,
    pub request: Option<JobRequest>,
    pub job: Option<Job>,
    pub polls: usize,
    pub logs: HashMap<Uuid, String>,
    pub agents: Vec<Agent>,
    /// Agents `POST /agents/{id}/drain` was called for.
    pub drained: Vec<Uuid>,
}

/// The fake's state, shared with the tests.
pub type Shared = Arc<Mutex<Fake>>;

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorResponse {
        code: code.into(),
        message: message.into(),
    };
    (status, Json(body)).into_response()
}

fn authorised(fake: &Fake, headers: &HeaderMap) -> bool {
    let Some(t) = &fake.token else { return true };
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {t}"))
}

async fn head_context(State(s): State<Shared>, h: HeaderMap, Path(d): Path<String>) -> StatusCode {
    let f = s.lock().unwrap();
    if !authorised(&f, &h) {
        return StatusCode::UNAUTHORIZED;
    }
    if f.contexts.contains_key(&d) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn put_context(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(d): Path<String>,
    body: Bytes,
) -> Response {
    let mut f = s.lock().unwrap();
    if !authorised(&f, &h) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "bad API token");
    }
    let actual = Digest::from_sha256_bytes(&sha2::Sha256::digest(&body));
    if actual.as_str() != d {
        return error(
            StatusCode::BAD_REQUEST,
            "digest_mismatch",
            "digest mismatch",
        );
    }
    f.puts += 1;
    let size = body.len() as u64;
    f.contexts.insert(d, body.to_vec());
    (
        StatusCode::CREATED,
        Json(ContextInfo {
            digest: actual,
            size,
        }),
    )
        .into_response()
}

fn new_build(platform: &str, optional: bool) -> Build {
    Build {
        id: Uuid::new_v4(),
        platform: Platform::parse(platform).unwrap(),
        state: BuildState::Queued,
        agent: None,
        mode: None,
        digest: None,
        media_type: None,
        size: None,
        attempts: 0,
        error: None,
        waiting: None,
        optional,
        decision: None,
        created_at: chrono::Utc::now(),
        started_at: None,
        finished_at: None,
    }
}

async fn submit(State(s): State<Shared>, Json(req): Json<JobRequest>) -> Response {
    let mut f = s.lock().unwrap();
    if !f.contexts.contains_key(req.context.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            "unknown_context",
            "upload the context first",
        );
    }
    if req.tags.iter().any(|t| t.contains("forbidden")) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_reference",
            "registry 'forbidden' is not allowed here",
        );
    }
    let now = chrono::Utc::now();
    // Required platforms first, optional ones last, as the coordinator lists them.
    let all: Vec<(&String, bool)> = req
        .platforms
        .iter()
        .map(|p| (p, false))
        .chain(req.optional_platforms.iter().map(|p| (p, true)))
        .collect();
    let job = Job {
        id: Uuid::new_v4(),
        state: JobState::Queued,
        tags: req.tags.clone(),
        repositories: Vec::new(),
        platforms: all
            .iter()
            .map(|(p, _)| Platform::parse(p).unwrap())
            .collect(),
        index_digest: None,
        index_media_type: None,
        index_size: None,
        error: None,
        context: req.context.clone(),
        dockerfile: req.dockerfile.clone(),
        build_args: req.build_args.clone(),
        target: req.target.clone(),
        emulation: req.emulation,
        optional_platforms: req
            .optional_platforms
            .iter()
            .map(|p| Platform::parse(p).unwrap())
            .collect(),
        timeout_secs: req.timeout_secs.unwrap_or(7200),
        warnings: Vec::new(),
        submitter: req.submitter.clone(),
        created_at: now,
        updated_at: now,
        finished_at: None,
        builds: all.iter().map(|(p, o)| new_build(p, *o)).collect(),
        secret_build_args: req.secret_build_args.clone(),
        secrets: req.secrets.iter().map(|s| s.id.clone()).collect(),
        network: req.network.as_deref().and_then(|n| {
            archfarm_protocol::network::parse_job_network(n)
                .ok()
                .flatten()
        }),
        base_images: Vec::new(),
        pull_registries: Vec::new(),
        cache_to: req
            .cache_to
            .iter()
            .filter_map(|c| archfarm_protocol::CacheRef::parse(c).ok())
            .collect(),
        cache_from: req
            .cache_from
            .iter()
            .filter_map(|c| archfarm_protocol::CacheRef::parse(c).ok())
            .collect(),
        no_cache: req.no_cache,
        pull: req.pull,
        image_meta: archfarm_protocol::image_meta::ImageMeta::parse(&req.labels, &req.annotations)
            .unwrap_or_default(),
        attest_to: req.attest_to.unwrap_or_default(),
        smoke_test: req.smoke_test.clone(),
    };
    f.request = Some(req);
    f.job = Some(job.clone());
    (StatusCode::CREATED, Json(job)).into_response()
}

fn lease(b: &mut Build, agent: &str, mode: BuildMode) {
    b.state = BuildState::Building;
    b.agent = Some(agent.into());
    b.mode = Some(mode);
    b.attempts = 1;
    b.waiting = None;
}

/// Moves the scripted job one step on each poll.
fn advance(f: &mut Fake) {
    f.polls += 1;
    let scenario = f.scenario.unwrap();
    let step = match scenario {
        // Step 1 only once: later polls must not undo what a test did to the job.
        Scenario::Hang if f.polls > 1 => 0,
        _ => f.polls,
    };
    let job = f.job.as_mut().unwrap();
    let (amd, other) = job.builds.split_at_mut(1);
    let (amd, other) = (&mut amd[0], &mut other[0]);
    if scenario == Scenario::OptionalSkipped {
        match step {
            1 => {
                job.state = JobState::Building;
                lease(amd, "box-1", BuildMode::Native);
                amd.decision = Some("box-1 builds linux/amd64 natively and had a free slot".into());
                other.waiting = Some("no online agent builds linux/s390x".into());
                f.logs.insert(amd.id, "STEP 1/2: FROM scratch\n".into());
            }
            2 => {
                // box-1 died; the lease lapsed and box-2 took the build over.
                lease(amd, "box-2", BuildMode::Native);
                amd.attempts = 2;
                amd.error = Some("box-1 missed 3 heartbeats".into());
                amd.decision = Some("box-2 builds linux/amd64 natively and had a free slot".into());
                f.logs.insert(
                    amd.id,
                    "STEP 1/2: FROM scratch\nSTEP 1/2: FROM scratch\n".into(),
                );
            }
            3 => {
                amd.state = BuildState::Succeeded;
                amd.digest = Some(AMD64.into());
                other.state = BuildState::Cancelled;
                other.waiting = None;
                other.error = Some("no online agent can build linux/s390x".into());
                job.state = JobState::Stitching;
            }
            _ => {
                if job.state == JobState::Stitching {
                    job.state = JobState::Succeeded;
                    job.index_digest = Some(INDEX.into());
                    job.warnings = vec![SKIPPED_WARNING.into()];
                }
            }
        }
        return;
    }
    match step {
        1 => {
            job.state = JobState::Building;
            lease(amd, "box-1", BuildMode::Native);
            other.waiting = Some("no agent with this platform is online".into());
            f.logs
                .insert(amd.id, "STEP 1/2: FROM scratch\nSTEP 2/2: COPY".into());
        }
        2 => {
            lease(other, "qemu-1", BuildMode::Emulated);
            f.logs.get_mut(&amd.id).unwrap().push_str(" . /\nCOMMIT\n");
            let log: String = (1..=25).map(|i| format!("s390x line {i}\n")).collect();
            f.logs.insert(other.id, log);
        }
        3 => {
            amd.state = BuildState::Succeeded;
            amd.digest = Some(AMD64.into());
            // Logged after s390x's lines, so following shows the two logs interleaved.
            f.logs.get_mut(&amd.id).unwrap().push_str(AMD64_LAST_LINE);
            f.logs.get_mut(&amd.id).unwrap().push('\n');
            if scenario == Scenario::FailS390x {
                other.state = BuildState::Failed;
                other.error = Some("buildah exited with status 1".into());
                job.state = JobState::Failed;
                job.error = Some("the build for linux/s390x failed".into());
            } else {
                other.state = BuildState::Succeeded;
                other.digest = Some(format!("sha256:{}", "3".repeat(64)));
                job.state = JobState::Stitching;
            }
        }
        0 => {}
        _ => {
            if job.state == JobState::Stitching {
                job.state = JobState::Succeeded;
                job.index_digest = Some(INDEX.into());
            }
        }
    }
}

async fn get_job(State(s): State<Shared>, Path(id): Path<Uuid>) -> Response {
    let mut f = s.lock().unwrap();
    if f.job.as_ref().map(|j| j.id) != Some(id) {
        return error(StatusCode::NOT_FOUND, "not_found", "no such job");
    }
    advance(&mut f);
    Json(f.job.clone().unwrap()).into_response()
}

async fn list_jobs(State(s): State<Shared>, Query(q): Query<HashMap<String, usize>>) -> Response {
    let f = s.lock().unwrap();
    assert_eq!(q.get("limit"), Some(&5), "the CLI passes --limit");
    Json(JobList {
        jobs: f.job.clone().into_iter().collect(),
    })
    .into_response()
}

async fn cancel_job(State(s): State<Shared>, Path(id): Path<Uuid>) -> Response {
    let mut f = s.lock().unwrap();
    let Some(job) = f.job.as_mut().filter(|j| j.id == id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such job");
    };
    match job.state {
        JobState::Stitching => {
            return error(
                StatusCode::CONFLICT,
                "job_stitching",
                &format!("job {id} is pushing its image index and can no longer be cancelled"),
            )
        }
        // An ended job is answered as it is; its state tells.
        s if s.is_terminal() => {}
        _ => cancel(job),
    }
    Json(job.clone()).into_response()
}

/// Cancels the job the way the coordinator would.
pub fn cancel(job: &mut Job) {
    job.state = JobState::Cancelled;
    job.error = Some("cancelled by ci-bot".into());
    for b in &mut job.builds {
        b.state = BuildState::Cancelled;
    }
}

/// The farm's agents: pi-4 runs one build, nuc none.
fn sample_agents() -> Vec<Agent> {
    let agent = |name: &str, native: &str, emulated: Vec<Platform>, running| Agent {
        id: Uuid::new_v4(),
        name: name.into(),
        native_platforms: vec![Platform::parse(native).unwrap()],
        emulated_platforms: emulated,
        capacity: 2,
        running,
        state: AgentState::Online,
        last_seen: chrono::Utc::now(),
        default_network: Some(archfarm_protocol::Network::Host),
        allowed_networks: vec![
            archfarm_protocol::Network::Host,
            archfarm_protocol::Network::None,
        ],
        storage_driver: None,
        storage: None,
        drain_reason: None,
    };
    vec![
        agent("pi-4", "arm64", vec![Platform::parse("s390x").unwrap()], 1),
        agent("nuc", "amd64", vec![], 0),
    ]
}

async fn agents(State(s): State<Shared>, h: HeaderMap) -> Response {
    let f = s.lock().unwrap();
    if !authorised(&f, &h) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "bad API token");
    }
    Json(AgentList {
        agents: f.agents.clone(),
    })
    .into_response()
}

async fn drain_agent(State(s): State<Shared>, h: HeaderMap, Path(id): Path<Uuid>) -> Response {
    let mut f = s.lock().unwrap();
    if !authorised(&f, &h) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "bad API token");
    }
    f.drained.push(id);
    let Some(agent) = f.agents.iter_mut().find(|a| a.id == id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such agent");
    };
    agent.state = AgentState::Draining;
    Json(agent.clone()).into_response()
}

async fn get_log(
    State(s): State<Shared>,
    Path(id): Path<Uuid>,
    Query(q): Query<HashMap<String, usize>>,
) -> String {
    let f = s.lock().unwrap();
    let log = f.logs.get(&id).cloned().unwrap_or_default();
    let offset = q.get("offset").copied().unwrap_or(0).min(log.len());
    log[offset..].to_string()
}

/// Starts the fake on a free port; returns its URL and state.
pub async fn start(scenario: Scenario, token: Option<&str>) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new(Fake {
        scenario: Some(scenario),
        token: token.map(str::to_string),
        agents: sample_agents(),
        ..Fake::default()
    }));
    let app = Router::new()
        .route(
            "/api/v1/contexts/{digest}",
            head(head_context).put(put_context),
        )
        .route("/api/v1/jobs", post(submit).get(list_jobs))
        .route("/api/v1/jobs/{id}", get(get_job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/agents/{id}/drain", post(drain_agent))
        .route("/api/v1/builds/{id}/log", get(get_log))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

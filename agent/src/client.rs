//! A small typed client for the coordinator's agent routes (see the wire contract).

use std::path::Path;
use std::time::Duration;

use archfarm_protocol::api::{
    CompleteRequest, ErrorResponse, FailRequest, HeartbeatRequest, HeartbeatResponse, Lease,
    LeaseRequest, LogRequest, RegisterRequest, RegisterResponse, RegistryCredentialRequest,
    RegistryCredentialResponse, ReleaseRequest, API_PREFIX, UNKNOWN_AGENT,
};
use archfarm_protocol::events::LogResponse;
use archfarm_protocol::Digest;
use futures::StreamExt;
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::config::Secret;
use crate::tls::{certificate_problem, ClientTls};

/// Time allowed for an ordinary call (register, heartbeat, log, complete, fail).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time a lease call may take beyond the wait asked for, so a slow answer is not cut off.
const LEASE_GRACE: Duration = Duration::from_secs(15);
/// Longest silence while downloading a context before giving up.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// What went wrong talking to the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator could not be reached or timed out; worth retrying.
    // reqwest's own message already names the URL.
    #[error("coordinator unreachable: {}", crate::error_chain(source))]
    Unreachable {
        /// The URL called.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The TLS connection failed on a certificate: the coordinator's is not trusted, or it refused
    /// the agent's. A configuration problem; retrying will not help.
    #[error("{problem} ({url}): {hint}")]
    Certificate {
        /// The URL called.
        url: String,
        /// What is wrong, e.g. "the coordinator's TLS certificate is not trusted (...)".
        problem: String,
        /// What to change.
        hint: &'static str,
    },
    /// The coordinator answered 5xx; worth retrying.
    #[error("coordinator error {status} ({url}): {message}")]
    Server {
        /// The status.
        status: StatusCode,
        /// The URL called.
        url: String,
        /// The coordinator's message.
        message: String,
    },
    /// The coordinator said it does not know this agent ([`UNKNOWN_AGENT`], or `invalid_agent_token`
    /// from a coordinator before that code): the agent must register again.
    #[error("{message} ({code})")]
    UnknownAgent {
        /// The `ErrorResponse` code.
        code: String,
        /// The coordinator's message.
        message: String,
    },
    /// A 404 without the coordinator's error body: something in front of it answered, such as an
    /// ingress with no ready coordinator behind it during a rollout. Worth retrying; never a
    /// reason to register again.
    #[error("{status} from something in front of the coordinator, not the coordinator itself ({url}): {message}")]
    NotCoordinator {
        /// The status.
        status: StatusCode,
        /// The URL called.
        url: String,
        /// The first line of what it answered.
        message: String,
    },
    /// 401: the join token or agent token was not accepted.
    #[error("{message} ({code})")]
    Unauthorized {
        /// The `ErrorResponse` code, e.g. `invalid_join_token`.
        code: String,
        /// The coordinator's message.
        message: String,
    },
    /// 409: the build's lease is gone (expired, handed to another agent, or the job ended).
    #[error("lease lost: {message}")]
    LeaseLost {
        /// The coordinator's message.
        message: String,
    },
    /// 409 `draining` to a lease call: the agent is being drained (e.g. `archfarm agents drain`);
    /// it takes no new builds, finishes the running ones and deregisters.
    #[error("draining: {message}")]
    Draining {
        /// The coordinator's message.
        message: String,
    },
    /// 409 `name_taken` to a registration: another installation holding the name is online.
    #[error("name taken: {message}")]
    NameTaken {
        /// The coordinator's message.
        message: String,
    },
    /// Any other 4xx: the request itself was refused; retrying will not help.
    #[error("coordinator refused the request with {status} ({code}): {message}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// The `ErrorResponse` code.
        code: String,
        /// The coordinator's message.
        message: String,
    },
    /// The answer did not have the expected shape.
    #[error("unexpected answer from the coordinator ({url}): {detail}")]
    Protocol {
        /// The URL called.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// A local file could not be written while downloading.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// True for a 409 about a build (lease lost, or anything else the coordinator refuses as a
    /// conflict): the build must stop and its result be dropped.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            ClientError::LeaseLost { .. } | ClientError::Draining { .. }
        )
    }

    /// True when retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. }
                | ClientError::Server { .. }
                | ClientError::NotCoordinator { .. }
        )
    }

    /// True only when the coordinator itself said it does not know this agent: the one answer on
    /// which the agent registers again (which requeues whatever it is running).
    pub fn is_unknown_agent(&self) -> bool {
        matches!(self, ClientError::UnknownAgent { .. })
    }
}

/// The coordinator's agent API.
#[derive(Debug, Clone)]
pub struct CoordinatorClient {
    http: reqwest::Client,
    base: String,
}

impl CoordinatorClient {
    /// A client for the coordinator at `base` (a path prefix such as `/archfarm` is kept).
    pub fn new(base: Url) -> Self {
        Self::with_tls(base, &ClientTls::default())
            .expect("a reqwest client with static settings builds")
    }

    /// A client that also trusts `tls.ca_cert` and presents `tls.identity`; an error names a TLS
    /// file that cannot be used.
    pub fn with_tls(base: Url, tls: &ClientTls) -> Result<Self, String> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("archfarm-agent/", env!("CARGO_PKG_VERSION")));
        let http = tls
            .apply(builder)?
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {}", crate::error_chain(&e)))?;
        Ok(CoordinatorClient {
            http,
            base: base.as_str().trim_end_matches('/').to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }

    /// `POST /agents/register` with the join token.
    pub async fn register(
        &self,
        join_token: &Secret,
        req: &RegisterRequest,
    ) -> Result<RegisterResponse, ClientError> {
        let url = self.url("/agents/register");
        let rb = self
            .http
            .post(&url)
            .bearer_auth(join_token.expose())
            .json(req)
            .timeout(CALL_TIMEOUT);
        json(&url, send(&url, rb).await?).await
    }

    /// `POST /agents/{id}/lease`: waits up to `wait` for a build; `None` means no work yet (204).
    /// `status` carries the agent's storage and, when it takes no build now, why.
    pub async fn lease(
        &self,
        agent: Uuid,
        token: &Secret,
        wait: Duration,
        status: LeaseRequest,
    ) -> Result<Option<Lease>, ClientError> {
        let url = self.url(&format!("/agents/{agent}/lease"));
        let body = LeaseRequest {
            wait_secs: Some(wait.as_secs()),
            ..status
        };
        let rb = self
            .http
            .post(&url)
            .bearer_auth(token.expose())
            .json(&body)
            .timeout(wait + LEASE_GRACE);
        let resp = send(&url, rb).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        json(&url, resp).await.map(Some)
    }

    /// `POST /agents/{id}/drain` with the agent's own token: the coordinator shows the agent as
    /// draining and hands it no new builds.
    pub async fn drain(&self, agent: Uuid, token: &Secret) -> Result<(), ClientError> {
        let url = self.url(&format!("/agents/{agent}/drain"));
        self.post(&url, token, &serde_json::json!({}))
            .await
            .map(drop)
    }

    /// `POST /agents/{id}/deregister`: the agent leaves the farm (after its builds finished).
    pub async fn deregister(&self, agent: Uuid, token: &Secret) -> Result<(), ClientError> {
        let url = self.url(&format!("/agents/{agent}/deregister"));
        self.post(&url, token, &serde_json::json!({}))
            .await
            .map(drop)
    }

    /// `POST /builds/{id}/heartbeat`.
    pub async fn heartbeat(
        &self,
        token: &Secret,
        build: Uuid,
        lease_token: Uuid,
    ) -> Result<HeartbeatResponse, ClientError> {
        let url = self.url(&format!("/builds/{build}/heartbeat"));
        let resp = self
            .post(&url, token, &HeartbeatRequest { lease_token })
            .await?;
        json(&url, resp).await
    }

    /// `POST /builds/{id}/registry-credential`: the credential for the push, fetched anew.
    pub async fn registry_credential(
        &self,
        token: &Secret,
        build: Uuid,
        lease_token: Uuid,
    ) -> Result<RegistryCredentialResponse, ClientError> {
        let url = self.url(&format!("/builds/{build}/registry-credential"));
        let resp = self
            .post(&url, token, &RegistryCredentialRequest { lease_token })
            .await?;
        json(&url, resp).await
    }

    /// `POST /builds/{id}/log`: lines in order, without their newlines, as batch `seq` of the
    /// lease (the same number on a retry, so the coordinator stores the batch once).
    pub async fn log(
        &self,
        token: &Secret,
        build: Uuid,
        lease_token: Uuid,
        seq: u64,
        lines: Vec<String>,
    ) -> Result<LogResponse, ClientError> {
        let url = self.url(&format!("/builds/{build}/log"));
        let req = LogRequest {
            lease_token,
            lines,
            seq: Some(seq),
        };
        let resp = self.post(&url, token, &req).await?;
        // An older coordinator answers 204 with no body: it never tells the log is cut.
        let body = resp.bytes().await.unwrap_or_default();
        Ok(serde_json::from_slice(&body).unwrap_or(LogResponse { truncated: false }))
    }

    /// `POST /builds/{id}/complete`.
    pub async fn complete(
        &self,
        token: &Secret,
        build: Uuid,
        req: &CompleteRequest,
    ) -> Result<(), ClientError> {
        let url = self.url(&format!("/builds/{build}/complete"));
        self.post(&url, token, req).await.map(drop)
    }

    /// `POST /builds/{id}/fail`.
    pub async fn fail(
        &self,
        token: &Secret,
        build: Uuid,
        req: &FailRequest,
    ) -> Result<(), ClientError> {
        let url = self.url(&format!("/builds/{build}/fail"));
        self.post(&url, token, req).await.map(drop)
    }

    /// `POST /builds/{id}/release`: gives the build back without its failing (see
    /// [`crate::out_of_space`]).
    pub async fn release(
        &self,
        token: &Secret,
        build: Uuid,
        req: &ReleaseRequest,
    ) -> Result<(), ClientError> {
        let url = self.url(&format!("/builds/{build}/release"));
        self.post(&url, token, req).await.map(drop)
    }

    /// `GET /contexts/{digest}`, streamed into `dest`; returns the sha256 of the bytes written and
    /// their count. The caller checks the digest: this only transports.
    pub async fn download_context(
        &self,
        token: &Secret,
        digest: &Digest,
        dest: &Path,
    ) -> Result<(Digest, u64), ClientError> {
        let url = self.url(&format!("/contexts/{digest}"));
        let resp = send(&url, self.http.get(&url).bearer_auth(token.expose())).await?;
        let io_err = |source| ClientError::Io {
            path: dest.display().to_string(),
            source,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(io_err)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io_err)?;
        }
        file.flush().await.map_err(io_err)?;
        file.sync_all().await.map_err(io_err)?;
        Ok((Digest::from_sha256_bytes(&hasher.finalize()), size))
    }

    async fn post<T: Serialize>(
        &self,
        url: &str,
        token: &Secret,
        body: &T,
    ) -> Result<Response, ClientError> {
        let rb = self
            .http
            .post(url)
            .bearer_auth(token.expose())
            .json(body)
            .timeout(CALL_TIMEOUT);
        send(url, rb).await
    }
}

/// A transport failure: a certificate problem, or the coordinator being out of reach.
fn transport_error(url: &str, source: reqwest::Error) -> ClientError {
    match certificate_problem(&source) {
        Some((problem, hint)) => ClientError::Certificate {
            url: url.to_string(),
            problem,
            hint,
        },
        None => ClientError::Unreachable {
            url: url.to_string(),
            source,
        },
    }
}

/// Sends a request and sorts non-2xx answers into [`ClientError`] kinds.
async fn send(url: &str, rb: RequestBuilder) -> Result<Response, ClientError> {
    let resp = rb
        .send()
        .await
        .map_err(|source| transport_error(url, source))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    // A proxy in front of the coordinator may answer without an ErrorResponse; keep its text.
    let text = resp.text().await.unwrap_or_default();
    let (code, message) = match serde_json::from_str::<ErrorResponse>(&text) {
        Ok(e) => (e.code, e.message),
        Err(_) => (String::new(), first_line(&text, status)),
    };
    Err(classify(status, url, code, message))
}

/// The error kind for a non-2xx status.
pub fn classify(status: StatusCode, url: &str, code: String, message: String) -> ClientError {
    match status {
        // By its code, not its status: a proxy may answer 401 or 404 too, never with this body.
        s if s.is_client_error() && (code == UNKNOWN_AGENT || code == "invalid_agent_token") => {
            ClientError::UnknownAgent { code, message }
        }
        // `code` is empty when the body was no `ErrorResponse`: not the coordinator's answer.
        StatusCode::NOT_FOUND if code.is_empty() => ClientError::NotCoordinator {
            status,
            url: url.to_string(),
            message,
        },
        StatusCode::UNAUTHORIZED => ClientError::Unauthorized { code, message },
        StatusCode::CONFLICT if code == "name_taken" => ClientError::NameTaken { message },
        StatusCode::CONFLICT if code == "draining" => ClientError::Draining { message },
        StatusCode::CONFLICT => ClientError::LeaseLost { message },
        // 408 and 429 say "later", like a 5xx.
        s if s.is_server_error()
            || s == StatusCode::REQUEST_TIMEOUT
            || s == StatusCode::TOO_MANY_REQUESTS =>
        {
            ClientError::Server {
                status,
                url: url.to_string(),
                message,
            }
        }
        s if s.is_client_error() => ClientError::Refused {
            status,
            code,
            message,
        },
        _ => ClientError::Protocol {
            url: url.to_string(),
            detail: format!("status {status}: {message}"),
        },
    }
}

fn first_line(text: &str, status: StatusCode) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    if line.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string()
    } else {
        line.chars().take(300).collect()
    }
}

async fn json<T: DeserializeOwned>(url: &str, resp: Response) -> Result<T, ClientError> {
    let bytes = resp
        .bytes()
        .await
        .map_err(|source| ClientError::Unreachable {
            url: url.to_string(),
            source,
        })?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
        url: url.to_string(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(status: u16) -> ClientError {
        classify(
            StatusCode::from_u16(status).unwrap(),
            "http://c/x",
            "c".into(),
            "m".into(),
        )
    }

    #[test]
    fn statuses_sort_into_kinds() {
        assert!(matches!(kind(401), ClientError::Unauthorized { .. }));
        assert!(matches!(kind(409), ClientError::LeaseLost { .. }));
        assert!(matches!(kind(400), ClientError::Refused { .. }));
        assert!(matches!(kind(404), ClientError::Refused { .. }));
        assert!(!kind(404).is_transient() && !kind(404).is_unknown_agent());
        assert!(kind(500).is_transient());
        assert!(kind(503).is_transient());
        assert!(kind(429).is_transient());
        assert!(!kind(401).is_transient());
        assert!(!kind(409).is_transient());
        let taken = classify(
            StatusCode::CONFLICT,
            "http://c/x",
            "name_taken".into(),
            "m".into(),
        );
        assert!(matches!(taken, ClientError::NameTaken { .. }), "{taken}");
        assert!(!taken.is_transient());
        let draining = classify(
            StatusCode::CONFLICT,
            "http://c/x",
            "draining".into(),
            "agent pi is draining".into(),
        );
        assert!(
            matches!(draining, ClientError::Draining { .. }),
            "{draining}"
        );
        assert!(!draining.is_transient());
        assert!(draining.is_conflict() && kind(409).is_conflict());
        assert!(!kind(503).is_conflict());
    }

    #[test]
    fn only_the_coordinators_word_makes_an_agent_unknown() {
        let with = |status: u16, code: &str| {
            classify(
                StatusCode::from_u16(status).unwrap(),
                "http://c/api/v1/agents/x/lease",
                code.into(),
                "m".into(),
            )
        };
        // The coordinator's answer, by code, whatever the status; an older coordinator's too.
        for (status, code) in [
            (401, UNKNOWN_AGENT),
            (404, UNKNOWN_AGENT),
            (401, "invalid_agent_token"),
        ] {
            let e = with(status, code);
            assert!(e.is_unknown_agent(), "{status} {code}: {e:?}");
            assert!(!e.is_transient());
        }
        // A bare 404 (an ingress with no ready backend, an HTML page): an outage to wait out.
        let bare = with(404, "");
        assert!(
            matches!(bare, ClientError::NotCoordinator { .. }),
            "{bare:?}"
        );
        assert!(bare.is_transient() && !bare.is_unknown_agent());
        assert!(
            bare.to_string().contains("in front of the coordinator"),
            "{bare}"
        );
        // Another code on a 404, a 401 without one, or another 401: not "unknown agent" either.
        for (status, code) in [
            (404, "not_found"),
            (401, ""),
            (401, "unauthorized"),
            (400, UNKNOWN_AGENT.to_uppercase().as_str()),
        ] {
            assert!(!with(status, code).is_unknown_agent(), "{status} {code}");
        }
        // And never on a 5xx, whatever its body says.
        assert!(!with(503, UNKNOWN_AGENT).is_unknown_agent());
    }

    #[tokio::test]
    async fn a_proxys_plain_404_is_not_the_coordinators_word() {
        use axum::response::IntoResponse;
        let app = axum::Router::new()
            .route(
                "/api/v1/agents/{id}/lease",
                axum::routing::post(|| async {
                    (
                        StatusCode::NOT_FOUND,
                        [("content-type", "text/html")],
                        "<html><body><h1>404 Not Found</h1>nginx</body></html>",
                    )
                        .into_response()
                }),
            )
            .route(
                "/api/v1/agents/{id}/drain",
                axum::routing::post(|| async {
                    (
                        StatusCode::UNAUTHORIZED,
                        axum::Json(ErrorResponse {
                            code: UNKNOWN_AGENT.into(),
                            message: "unknown or missing agent token".into(),
                        }),
                    )
                        .into_response()
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let c = CoordinatorClient::new(format!("http://{addr}/").parse().unwrap());
        let token = Secret::new("t");
        let e = c
            .lease(Uuid::nil(), &token, Duration::ZERO, LeaseRequest::default())
            .await
            .unwrap_err();
        assert!(e.is_transient() && !e.is_unknown_agent(), "{e:?}");
        assert!(
            e.to_string()
                .contains("<html><body><h1>404 Not Found</h1>nginx"),
            "{e}"
        );
        let e = c.drain(Uuid::nil(), &token).await.unwrap_err();
        assert!(e.is_unknown_agent(), "{e:?}");
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        // Bind then drop, so the port is (almost certainly) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = CoordinatorClient::new(format!("http://127.0.0.1:{port}/").parse().unwrap());
        let req = RegisterRequest {
            name: "a".into(),
            native_platforms: vec!["linux/amd64".into()],
            emulated_platforms: vec![],
            capacity: 1,
            version: None,
            instance_id: None,
            default_network: None,
            allowed_networks: Vec::new(),
            storage_driver: None,
            host: None,
        };
        let e = c.register(&Secret::new("t"), &req).await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("127.0.0.1:{port}/api/v1/agents/register")),
            "{e}"
        );
    }

    #[test]
    fn base_path_is_kept() {
        let c = CoordinatorClient::new("http://h:1/farm/".parse().unwrap());
        assert_eq!(
            c.url("/agents/register"),
            "http://h:1/farm/api/v1/agents/register"
        );
    }
}

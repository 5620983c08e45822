//! A typed client for the coordinator's CI routes (`/api/v1`).
//!
//! Errors carry the coordinator's own [`ErrorResponse`] message, and the causes of transport
//! failures are flattened into the message: a CI log shows one line that says what happened.

use std::path::Path;
use std::time::Duration;

use archfarm_protocol::api::{
    Agent, AgentList, ContextInfo, ErrorResponse, Job, JobList, JobRequest, API_PREFIX,
};
use archfarm_protocol::tokens::{CreateTokenRequest, CreatedToken, TokenInfo, TokenList};
use archfarm_protocol::Digest;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::args::Secret;

/// How long a JSON call may take; uploads have no limit, as contexts can be large.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call to the coordinator failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made (refused, unknown host, no route).
    #[error("cannot reach the coordinator at {url}: {cause}")]
    Unreachable {
        /// The coordinator's base URL.
        url: String,
        /// The innermost cause, e.g. `Connection refused (os error 111)`.
        cause: String,
    },
    /// The coordinator answered with an error.
    #[error("{message} ({code}, HTTP {status}){hint}", hint = hint(*status))]
    Api {
        /// HTTP status.
        status: u16,
        /// The `ErrorResponse` code, or `http_<status>` when the body was not one.
        code: String,
        /// The `ErrorResponse` message.
        message: String,
    },
    /// The connection broke or timed out mid-call.
    #[error("request to the coordinator at {url} failed: {cause}")]
    Transport {
        /// The coordinator's base URL.
        url: String,
        /// The innermost cause.
        cause: String,
    },
    /// The TLS connection failed on the coordinator's certificate: a configuration problem.
    #[error("{problem}: {hint}")]
    Certificate {
        /// What is wrong, e.g. "the coordinator's TLS certificate is not trusted (...)".
        problem: String,
        /// What to change.
        hint: &'static str,
    },
    /// The `--ca-cert` file cannot be used.
    #[error("{0}")]
    CaCert(String),
    /// The answer was not what the contract says.
    #[error("the coordinator at {url} sent an answer archfarm cannot read ({route}): {cause}")]
    Decode {
        /// The coordinator's base URL.
        url: String,
        /// The route called.
        route: String,
        /// What did not parse.
        cause: String,
    },
}

fn hint(status: u16) -> &'static str {
    match status {
        401 => "; pass the coordinator's API token with --token or ARCHFARM_TOKEN",
        _ => "",
    }
}

impl ClientError {
    /// True when trying again later may succeed (network trouble, 5xx, 408, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::Transport { .. } => true,
            ClientError::Api { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            ClientError::Decode { .. }
            | ClientError::Certificate { .. }
            | ClientError::CaCert(_) => false,
        }
    }

    /// 2 when the coordinator refused the request as wrong (4xx) or for a certificate problem (the
    /// user must fix the configuration), else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Certificate { .. } | ClientError::CaCert(_) => 2,
            ClientError::Api { status, .. }
                if (400..500).contains(status) && !self.is_transient() =>
            {
                2
            }
            _ => 1,
        }
    }

    /// The HTTP status, when the coordinator answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The innermost message of an error's source chain, which is where the useful words are.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// The CA certificates in a PEM file, for `--ca-cert`.
fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let pem = std::fs::read(path).map_err(|e| {
        ClientError::CaCert(format!(
            "cannot read the CA certificate {} (--ca-cert): {e}",
            path.display()
        ))
    })?;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            use rustls::pki_types::pem::Error;
            let detail = match e {
                Error::MissingSectionEnd { .. } => "a section has no `-----END …-----` line".into(),
                Error::IllegalSectionStart { .. } => {
                    "a `-----BEGIN …-----` line is malformed".into()
                }
                Error::Base64Decode(_) => "a section's body is not valid base64".into(),
                other => other.to_string(),
            };
            ClientError::CaCert(format!(
                "the CA certificate {} (--ca-cert) is not valid PEM: {detail}",
                path.display()
            ))
        })?;
    if ders.is_empty() {
        return Err(ClientError::CaCert(format!(
            "the CA certificate {} (--ca-cert) holds no certificate: a PEM file with \
             `-----BEGIN CERTIFICATE-----` sections is expected",
            path.display()
        )));
    }
    ders.iter()
        .map(|der| reqwest::Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ClientError::CaCert(format!(
                "the CA certificate {} (--ca-cert) is not usable: {e}",
                path.display()
            ))
        })
}

/// What to do about a certificate signed by an unknown CA.
const TRUST_HINT: &str = "pass --ca-cert FILE (or ARCHFARM_CA_CERT) with the CA that signed it";
/// What to do about a certificate from a known CA that is wrong in itself (its names, its dates).
const CERT_HINT: &str = "check that --coordinator names a host the certificate is for, and that \
    the certificate is current";

/// What is wrong when `err` failed on the coordinator's TLS certificate, worded for people, and
/// what to do about it; `None` for any other failure.
pub fn certificate_problem(
    err: &(dyn std::error::Error + 'static),
) -> Option<(String, &'static str)> {
    use rustls::{CertificateError, Error};
    let mut cur = Some(err);
    while let Some(e) = cur {
        let tls = e.downcast_ref::<Error>();
        match tls {
            Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
                return Some((
                    "the coordinator's TLS certificate is not trusted (it is not signed by a \
                     known CA)"
                        .into(),
                    TRUST_HINT,
                ))
            }
            Some(Error::InvalidCertificate(c)) => {
                return Some((
                    format!("the coordinator's TLS certificate is not accepted ({c})"),
                    CERT_HINT,
                ))
            }
            _ => {}
        }
        // io::Error's `source()` skips the error it wraps (rustls puts its own there, sometimes
        // inside a second io::Error): step into it instead.
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// A client for one coordinator.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Base URL without a trailing `/`.
    base: String,
    token: Option<Secret>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token)
            .finish()
    }
}

impl Client {
    /// A client for the coordinator at `base` (already validated as an http(s) URL).
    pub fn new(base: &str, token: Option<Secret>) -> Result<Self, ClientError> {
        Self::with_ca_cert(base, token, None)
    }

    /// A client that also trusts the CA certificate(s) in the PEM file `ca_cert`.
    pub fn with_ca_cert(
        base: &str,
        token: Option<Secret>,
        ca_cert: Option<&Path>,
    ) -> Result<Self, ClientError> {
        // No redirects: a 307/308 would resend a job's body (its registry credentials and
        // secrets) and the bearer token's request to wherever the answer points.
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("archfarm/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10));
        if let Some(path) = ca_cert {
            builder = builder.tls_certs_merge(ca_certificates(path)?);
        }
        let http = builder.build().map_err(|e| ClientError::Transport {
            url: base.to_string(),
            cause: root_cause(&e),
        })?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// The coordinator's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, route: &str) -> RequestBuilder {
        let rb = self
            .http
            .request(method, format!("{}{API_PREFIX}{route}", self.base));
        match &self.token {
            Some(t) => rb.bearer_auth(t.expose()),
            None => rb,
        }
    }

    /// Sends and maps transport failures; non-2xx answers become [`ClientError::Api`].
    async fn send(&self, rb: RequestBuilder) -> Result<Response, ClientError> {
        let resp = rb.send().await.map_err(|e| self.transport(&e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.api_error(resp).await)
    }

    fn transport(&self, e: &reqwest::Error) -> ClientError {
        let url = self.base.clone();
        if let Some((problem, hint)) = certificate_problem(e) {
            return ClientError::Certificate { problem, hint };
        }
        let cause = root_cause(e);
        if e.is_connect() {
            ClientError::Unreachable { url, cause }
        } else if e.is_timeout() {
            ClientError::Transport {
                url,
                cause: format!("no answer in time ({cause})"),
            }
        } else {
            ClientError::Transport { url, cause }
        }
    }

    async fn api_error(&self, resp: Response) -> ClientError {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorResponse>(&body) {
            Ok(er) => ClientError::Api {
                status: status.as_u16(),
                code: er.code,
                message: er.message,
            },
            // A proxy or load balancer in front of the coordinator may answer in HTML or not at all.
            Err(_) => {
                let text: String = body.trim().chars().take(200).collect();
                let reason = status.canonical_reason().unwrap_or("error");
                ClientError::Api {
                    status: status.as_u16(),
                    code: format!("http_{}", status.as_u16()),
                    message: if text.is_empty() {
                        format!("the coordinator answered {reason}")
                    } else {
                        format!("the coordinator answered {reason}: {text}")
                    },
                }
            }
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        route: &str,
        body: Option<&JobRequest>,
    ) -> Result<T, ClientError> {
        let mut rb = self.request(method, route).timeout(CALL_TIMEOUT);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = self.send(rb).await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: self.base.clone(),
            route: route.to_string(),
            cause: e.to_string(),
        })
    }

    /// `HEAD /contexts/{digest}`: whether the coordinator already stores this context.
    pub async fn context_exists(&self, digest: &Digest) -> Result<bool, ClientError> {
        let rb = self
            .request(Method::HEAD, &format!("/contexts/{digest}"))
            .timeout(CALL_TIMEOUT);
        let resp = rb.send().await.map_err(|e| self.transport(&e))?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            // A HEAD answer has no body to say why; the same call as a GET carries the message
            // (a missing token, a scope too narrow), and is refused before any archive is sent.
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let again = self
                    .request(Method::GET, &format!("/contexts/{digest}"))
                    .timeout(CALL_TIMEOUT)
                    .send()
                    .await;
                match again {
                    Ok(r) if r.status() == resp.status() => Err(self.api_error(r).await),
                    _ => Err(self.api_error(resp).await),
                }
            }
            _ => Err(self.api_error(resp).await),
        }
    }

    /// `PUT /contexts/{digest}`, streaming the archive from `file`.
    pub async fn upload_context(
        &self,
        digest: &Digest,
        file: tokio::fs::File,
        size: u64,
    ) -> Result<ContextInfo, ClientError> {
        let route = format!("/contexts/{digest}");
        let rb = self
            .request(Method::PUT, &route)
            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::from(file));
        let resp = self.send(rb).await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: self.base.clone(),
            route,
            cause: e.to_string(),
        })
    }

    /// `POST /jobs`.
    pub async fn submit_job(&self, req: &JobRequest) -> Result<Job, ClientError> {
        self.json(Method::POST, "/jobs", Some(req)).await
    }

    /// `GET /jobs?limit=N`, newest first.
    pub async fn list_jobs(&self, limit: u32) -> Result<JobList, ClientError> {
        self.json(Method::GET, &format!("/jobs?limit={limit}"), None)
            .await
    }

    /// `GET /jobs/{id}`.
    pub async fn job(&self, id: Uuid) -> Result<Job, ClientError> {
        self.json(Method::GET, &format!("/jobs/{id}"), None).await
    }

    /// `GET /jobs/{id}` as the coordinator's own JSON, for `archfarm job --json`.
    pub async fn job_json(&self, id: Uuid) -> Result<serde_json::Value, ClientError> {
        self.json(Method::GET, &format!("/jobs/{id}"), None).await
    }

    /// `GET /jobs/{id}/provenance`.
    pub async fn job_provenance(
        &self,
        id: Uuid,
    ) -> Result<archfarm_protocol::api::JobProvenance, ClientError> {
        self.json(Method::GET, &format!("/jobs/{id}/provenance"), None)
            .await
    }

    /// `POST /jobs/{id}/cancel`.
    pub async fn cancel_job(&self, id: Uuid) -> Result<Job, ClientError> {
        self.json(Method::POST, &format!("/jobs/{id}/cancel"), None)
            .await
    }

    /// `GET /agents`.
    pub async fn agents(&self) -> Result<AgentList, ClientError> {
        self.json(Method::GET, "/agents", None).await
    }

    /// `POST /agents/{id}/drain`: the agent finishes its running builds, takes no new ones, then
    /// leaves. Answers the agent, now `draining`.
    pub async fn drain_agent(&self, id: Uuid) -> Result<Agent, ClientError> {
        self.json(Method::POST, &format!("/agents/{id}/drain"), None)
            .await
    }

    /// `GET /builds/{id}/log?offset=N`: the log bytes from `offset` to the current end.
    pub async fn build_log(&self, id: Uuid, offset: u64) -> Result<Vec<u8>, ClientError> {
        let rb = self
            .request(Method::GET, &format!("/builds/{id}/log?offset={offset}"))
            .timeout(CALL_TIMEOUT);
        let resp = self.send(rb).await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport(&e))?;
        Ok(bytes.to_vec())
    }

    /// A call with a JSON body, for the admin routes.
    async fn call<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        route: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let rb = self.request(method, route).timeout(CALL_TIMEOUT).json(body);
        let resp = self.send(rb).await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: self.base.clone(),
            route: route.to_string(),
            cause: e.to_string(),
        })
    }

    /// `POST /tokens` (admin): the token is in the answer, and nowhere else ever again.
    pub async fn create_token(
        &self,
        req: &CreateTokenRequest,
    ) -> Result<CreatedToken, ClientError> {
        self.call(Method::POST, "/tokens", req).await
    }

    /// `GET /tokens` (admin).
    pub async fn tokens(&self) -> Result<TokenList, ClientError> {
        self.json(Method::GET, "/tokens", None).await
    }

    /// `GET /admin/retention` (admin): the retention setting and what its sweeps deleted.
    pub async fn retention(
        &self,
    ) -> Result<archfarm_protocol::retention::RetentionStatus, ClientError> {
        self.json(Method::GET, "/admin/retention", None).await
    }

    /// `POST /tokens/{id}/revoke` (admin).
    pub async fn revoke_token(&self, id: Uuid) -> Result<TokenInfo, ClientError> {
        self.json(Method::POST, &format!("/tokens/{id}/revoke"), None)
            .await
    }

    /// `POST /agents/{id}/revoke` (admin): the agent is cut off at once.
    pub async fn revoke_agent(&self, id: Uuid) -> Result<Agent, ClientError> {
        self.json(Method::POST, &format!("/agents/{id}/revoke"), None)
            .await
    }

    /// `DELETE /agents/{id}` (admin): forgets a revoked or offline agent, freeing its name.
    pub async fn forget_agent(&self, id: Uuid) -> Result<(), ClientError> {
        let rb = self
            .request(Method::DELETE, &format!("/agents/{id}"))
            .timeout(CALL_TIMEOUT);
        self.send(rb).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_exit_codes() {
        let e = ClientError::Api {
            status: 400,
            code: "invalid_platform".into(),
            message: "unknown platform 'x'".into(),
        };
        assert_eq!(
            e.to_string(),
            "unknown platform 'x' (invalid_platform, HTTP 400)"
        );
        assert_eq!(e.exit_code(), 2);
        let e = ClientError::Api {
            status: 401,
            code: "unauthorized".into(),
            message: "missing token".into(),
        };
        assert!(e.to_string().contains("--token or ARCHFARM_TOKEN"), "{e}");
        let e = ClientError::Api {
            status: 503,
            code: "unavailable".into(),
            message: "draining".into(),
        };
        assert!(e.is_transient());
        assert_eq!(e.exit_code(), 1);
        let e = ClientError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            cause: "Connection refused (os error 111)".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach the coordinator at http://127.0.0.1:1: Connection refused (os error 111)"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn certificate_problems_exit_2_and_say_what_to_do() {
        // As reqwest hands it over: an io::Error inside an io::Error.
        let io = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        let (problem, hint) = certificate_problem(&io).expect("found inside the io::Error");
        assert!(hint.contains("--ca-cert"));
        let e = ClientError::Certificate { problem, hint };
        let wrong_name = std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName,
        ));
        let (problem, hint) = certificate_problem(&wrong_name).unwrap();
        assert!(
            problem.contains("not accepted") && !hint.contains("--ca-cert"),
            "{problem}; {hint}"
        );
        assert!(
            e.to_string()
                .starts_with("the coordinator's TLS certificate is not trusted"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
        assert!(!e.is_transient());
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(certificate_problem(&refused), None);

        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = Client::with_ca_cert("https://h:1", None, Some(&junk)).unwrap_err();
        assert!(
            e.to_string()
                .contains("junk.pem (--ca-cert) holds no certificate"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
        let e = Client::with_ca_cert("https://h:1", None, Some(&dir.path().join("nope.pem")))
            .unwrap_err();
        assert!(
            e.to_string().contains("cannot read the CA certificate"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn connection_refused_is_unreachable() {
        // Bind then drop to find a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Client::new(&format!("http://127.0.0.1:{port}/"), Some(Secret::new("t"))).unwrap();
        assert!(!format!("{c:?}").contains("\"t\""));
        let e = c.agents().await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot reach the coordinator at http://127.0.0.1:{port}: "
            )),
            "{msg}"
        );
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_with_the_jobs_body() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let elsewhere = std::sync::Arc::new(AtomicUsize::new(0));
        let hits = elsewhere.clone();
        let app = axum::Router::new()
            .route(
                "/api/v1/jobs/{id}/cancel",
                axum::routing::post(move || async move {
                    (
                        axum::http::StatusCode::PERMANENT_REDIRECT,
                        [("location", format!("http://{addr}/elsewhere"))],
                    )
                }),
            )
            .route(
                "/elsewhere",
                axum::routing::post(move || {
                    let hits = hits.clone();
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        "{}"
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let c = Client::new(&format!("http://{addr}/"), Some(Secret::new("t"))).unwrap();
        assert!(c.cancel_job(Uuid::new_v4()).await.is_err());
        assert_eq!(
            elsewhere.load(Ordering::SeqCst),
            0,
            "the redirect was followed"
        );
    }
}

//! Sorting registry failures into ones worth retrying (the registry is restarting, overloaded or
//! briefly unreachable) and ones that will not get better (wrong credentials, no such repository, a
//! manifest the registry refuses), each with a one-line reason people can act on.

use std::error::Error as _;

use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};
use reqwest::StatusCode;

/// What to do about a failed registry call, and why in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Retrying later may succeed.
    Transient(String),
    /// Retrying will not help.
    Permanent(String),
}

impl Failure {
    /// True for [`Failure::Transient`].
    pub fn is_transient(&self) -> bool {
        matches!(self, Failure::Transient(_))
    }

    /// The one-line reason.
    pub fn reason(&self) -> &str {
        match self {
            Failure::Transient(r) | Failure::Permanent(r) => r,
        }
    }
}

/// Longest registry message kept in a reason.
const MAX_MESSAGE: usize = 300;

/// Classifies an oci-client error.
pub fn classify(e: &OciDistributionError) -> Failure {
    use OciDistributionError as E;
    match e {
        E::RequestError(re) => classify_request(re),
        E::ServerError { code, message, .. } => match StatusCode::from_u16(*code) {
            Ok(status) => classify_status(status, message),
            Err(_) => Failure::Permanent(format!(
                "the registry answered with status {code}: {}",
                short(message)
            )),
        },
        // Only built for 4xx answers carrying an OCI error body; the status itself is not kept.
        E::RegistryError { envelope, .. } => classify_envelope(envelope),
        E::UnauthorizedError { .. } => Failure::Permanent(denied("401 Unauthorized")),
        E::AuthenticationFailure(reason) => {
            Failure::Permanent(denied(&format!("token request failed: {}", short(reason))))
        }
        // The registry named a host it may not send us to; asking again names it again.
        E::HostNotAllowed(reason) => Failure::Permanent(short(reason)),
        E::IoError(io) if transient_io(io.kind()) => {
            Failure::Transient(format!("connection failed: {io}"))
        }
        other => Failure::Permanent(short(&crate::error_chain(other))),
    }
}

/// A transport error, or a status reqwest turned into an error (`error_for_status`).
fn classify_request(e: &reqwest::Error) -> Failure {
    if let Some(status) = e.status() {
        return classify_status(status, "");
    }
    let cause = root_cause(e);
    if e.is_redirect() {
        return Failure::Permanent(format!("the registry's redirect: {}", short(&cause)));
    }
    if e.is_builder() {
        return Failure::Permanent(cause);
    }
    if tls_problem(e) {
        return Failure::Permanent(format!(
            "TLS failed: {cause} (a registry that speaks plain HTTP must be listed with the \
             coordinator's --insecure-registry)"
        ));
    }
    if e.is_timeout() {
        return Failure::Transient("timed out waiting for the registry".into());
    }
    if e.is_connect() {
        return Failure::Transient(format!("cannot connect: {cause}"));
    }
    // Sending or reading was cut off (connection reset, closed mid-body): the next try may do.
    Failure::Transient(format!("connection failed: {cause}"))
}

/// A non-2xx answer; `body` is the registry's text, an OCI error envelope when it follows the spec.
pub fn classify_status(status: StatusCode, body: &str) -> Failure {
    let envelope = serde_json::from_str::<OciEnvelope>(body).ok();
    let codes: Vec<&OciErrorCode> = envelope
        .as_ref()
        .map(|e| e.errors.iter().map(|e| &e.code).collect())
        .unwrap_or_default();
    let detail = match &envelope {
        Some(env) if !env.errors.is_empty() => format!("{status}: {}", describe(env)),
        _ if body.trim().is_empty() => status.to_string(),
        _ => format!("{status}: {}", short(body)),
    };
    let has = |c: OciErrorCode| codes.contains(&&c);
    if status == StatusCode::TOO_MANY_REQUESTS || has(OciErrorCode::Toomanyrequests) {
        return Failure::Transient(format!("the registry is rate limiting ({detail})"));
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return Failure::Transient(format!("the registry answered {detail}"));
    }
    // An upload session the registry forgot (it restarted mid-upload): starting over works.
    if has(OciErrorCode::BlobUploadUnknown) {
        return Failure::Transient(format!("the registry lost the upload ({detail})"));
    }
    if status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || has(OciErrorCode::Unauthorized)
        || has(OciErrorCode::Denied)
    {
        return Failure::Permanent(denied(&detail));
    }
    if has(OciErrorCode::NameUnknown) || (status == StatusCode::NOT_FOUND && codes.is_empty()) {
        return Failure::Permanent(format!("repository not found ({detail})"));
    }
    if has(OciErrorCode::ManifestInvalid)
        || has(OciErrorCode::ManifestBlobUnknown)
        || has(OciErrorCode::ManifestUnverified)
    {
        return Failure::Permanent(format!("the registry rejected the manifest ({detail})"));
    }
    if has(OciErrorCode::NameInvalid) {
        return Failure::Permanent(format!("invalid repository name ({detail})"));
    }
    if status == StatusCode::METHOD_NOT_ALLOWED || has(OciErrorCode::Unsupported) {
        return Failure::Permanent(format!(
            "the registry does not accept pushes here ({detail})"
        ));
    }
    Failure::Permanent(format!("the registry refused the request ({detail})"))
}

fn classify_envelope(envelope: &OciEnvelope) -> Failure {
    let status = envelope
        .errors
        .iter()
        .find_map(|e| match e.code {
            OciErrorCode::Unauthorized => Some(StatusCode::UNAUTHORIZED),
            OciErrorCode::Denied => Some(StatusCode::FORBIDDEN),
            OciErrorCode::Toomanyrequests => Some(StatusCode::TOO_MANY_REQUESTS),
            OciErrorCode::NameUnknown
            | OciErrorCode::ManifestUnknown
            | OciErrorCode::BlobUnknown
            | OciErrorCode::BlobUploadUnknown
            | OciErrorCode::NotFound => Some(StatusCode::NOT_FOUND),
            _ => None,
        })
        .unwrap_or(StatusCode::BAD_REQUEST);
    classify_status(status, &serde_json::to_string(envelope).unwrap_or_default())
}

fn denied(detail: &str) -> String {
    format!(
        "the registry refused the credentials ({detail}); send the pipeline's own with the job \
         (`archfarm build` reads its docker config), or give the coordinator's --registry-auth \
         (or the agent's own) a credential for this registry that may push to it"
    )
}

/// `CODE: message; CODE: message` of an OCI error envelope.
fn describe(envelope: &OciEnvelope) -> String {
    let parts: Vec<String> = envelope
        .errors
        .iter()
        .map(|e| {
            let code = serde_json::to_value(&e.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{:?}", e.code));
            if e.message.is_empty() {
                code
            } else {
                format!("{code}: {}", e.message)
            }
        })
        .collect();
    short(&parts.join("; "))
}

fn transient_io(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
            | K::UnexpectedEof
    )
}

/// Whether a transport error came from TLS (a certificate, or HTTPS spoken to a plain HTTP
/// registry): retrying does not fix those. Only the causes are searched, not the URL.
fn tls_problem(e: &reqwest::Error) -> bool {
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string().to_ascii_lowercase();
        if ["certificate", "tls", "ssl", "handshake"]
            .iter()
            .any(|w| text.contains(w))
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// The innermost cause's message (e.g. "Connection refused (os error 111)").
fn root_cause(e: &reqwest::Error) -> String {
    let mut last: &dyn std::error::Error = e;
    while let Some(c) = last.source() {
        last = c;
    }
    last.to_string()
}

/// `text` as one bounded line without control characters, escape sequences or HTML markup: a
/// registry's words reach the build log, the job's error and the submitter's terminal.
fn short(text: &str) -> String {
    archfarm_protocol::registry_text::sanitise(text, MAX_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16, message: &str) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "http://r/v2/x".into(),
            message: message.into(),
        }
    }

    fn envelope(code: &str, message: &str) -> String {
        format!(r#"{{"errors":[{{"code":"{code}","message":"{message}","detail":null}}]}}"#)
    }

    #[test]
    fn server_errors_and_rate_limits_are_transient() {
        for code in [500, 502, 503, 504, 429, 408] {
            let f = classify(&server(code, "<html>\n<h1>Bad Gateway</h1>\n</html>"));
            assert!(f.is_transient(), "{code}: {f:?}");
            assert!(!f.reason().contains('\n'), "{f:?}");
        }
        let f = classify(&server(429, ""));
        assert_eq!(
            f.reason(),
            "the registry is rate limiting (429 Too Many Requests)"
        );
        let f = classify(&server(503, &envelope("UNAVAILABLE", "read-only mode")));
        assert_eq!(
            f.reason(),
            "the registry answered 503 Service Unavailable: UNAVAILABLE: read-only mode"
        );
        // Some registries say "too many requests" with another status.
        let f = classify_status(
            StatusCode::FORBIDDEN,
            &envelope("TOOMANYREQUESTS", "pull limit"),
        );
        assert!(f.is_transient(), "{f:?}");
        let f = classify(&server(
            404,
            &envelope("BLOB_UPLOAD_UNKNOWN", "upload gone"),
        ));
        assert!(
            f.is_transient(),
            "a lost upload session is started over: {f:?}"
        );
    }

    #[test]
    fn refusals_are_permanent_with_a_clear_reason() {
        let f = classify(&server(
            401,
            &envelope("UNAUTHORIZED", "authentication required"),
        ));
        assert!(!f.is_transient());
        assert!(
            f.reason().starts_with(
                "the registry refused the credentials (401 Unauthorized: UNAUTHORIZED: authentication required)"
            ),
            "{f:?}"
        );
        let f = classify(&server(403, ""));
        assert!(
            f.reason()
                .starts_with("the registry refused the credentials (403 Forbidden)"),
            "{f:?}"
        );
        let f = classify(&OciDistributionError::UnauthorizedError {
            url: "http://r/v2/".into(),
        });
        assert!(f
            .reason()
            .starts_with("the registry refused the credentials"));
        let f = classify(&OciDistributionError::AuthenticationFailure(
            "invalid username/password".into(),
        ));
        assert!(!f.is_transient());
        assert!(f.reason().contains("invalid username/password"), "{f:?}");

        let f = classify(&server(
            404,
            &envelope("NAME_UNKNOWN", "repository name not known to registry"),
        ));
        assert_eq!(
            f,
            Failure::Permanent(
                "repository not found (404 Not Found: NAME_UNKNOWN: repository name not known to registry)"
                    .into()
            )
        );
        let f = classify(&server(404, "404 page not found\n"));
        assert_eq!(
            f.reason(),
            "repository not found (404 Not Found: 404 page not found)"
        );
        let f = classify(&server(
            400,
            &envelope("MANIFEST_INVALID", "manifest invalid"),
        ));
        assert_eq!(
            f,
            Failure::Permanent(
                "the registry rejected the manifest (400 Bad Request: MANIFEST_INVALID: manifest invalid)"
                    .into()
            )
        );
        let f = classify(&server(
            400,
            &envelope("MANIFEST_BLOB_UNKNOWN", "blob unknown"),
        ));
        assert!(f.reason().starts_with("the registry rejected the manifest"));
        let f = classify(&server(405, &envelope("UNSUPPORTED", "read-only")));
        assert!(!f.is_transient());
        assert!(f.reason().contains("does not accept pushes"), "{f:?}");
        let f = classify(&server(400, &envelope("ARTIFACT_LOCKED", "locked")));
        assert_eq!(
            f.reason(),
            "the registry refused the request (400 Bad Request: ARTIFACT_LOCKED: locked)"
        );
    }

    #[test]
    fn a_registry_body_is_shown_bounded_and_sanitised() {
        let page = format!(
            "<!DOCTYPE html><html><head><title>Access denied</title></head><body>{}</body></html>",
            "<p>markup</p>".repeat(10_000)
        );
        let f = classify(&server(403, &page));
        assert_eq!(
            f.reason(),
            format!(
                "the registry refused the credentials (403 Forbidden: an HTML page titled 'Access \
                 denied'); send the pipeline's own with the job (`archfarm build` reads its \
                 docker config), or give the coordinator's --registry-auth (or the agent's own) a \
                 credential for this registry that may push to it"
            )
        );
        let hostile = format!("\u{1b}]0;owned\u{7}\u{1b}[2Jno\rway{}", "x".repeat(5000));
        let body = serde_json::json!({"errors": [{"code": "DENIED", "message": hostile}]});
        let f = classify(&server(400, &body.to_string()));
        assert!(!f.reason().contains(|c: char| c.is_control()), "{f:?}");
        assert!(f.reason().contains("DENIED: no way"), "{f:?}");
        assert!(f.reason().chars().count() < 2 * MAX_MESSAGE, "{f:?}");
    }

    #[test]
    fn envelopes_without_a_status_are_read_by_their_codes() {
        let env: OciEnvelope = serde_json::from_str(&envelope(
            "DENIED",
            "requested access to the resource is denied",
        ))
        .unwrap();
        let f = classify(&OciDistributionError::RegistryError {
            envelope: env,
            url: "http://r/v2/x".into(),
        });
        assert!(
            f.reason().starts_with(
                "the registry refused the credentials (403 Forbidden: DENIED: requested access"
            ),
            "{f:?}"
        );
        let env: OciEnvelope = serde_json::from_str(&envelope("NAME_UNKNOWN", "no")).unwrap();
        let f = classify(&OciDistributionError::RegistryError {
            envelope: env,
            url: "u".into(),
        });
        assert!(f.reason().starts_with("repository not found"), "{f:?}");
    }

    #[test]
    fn local_and_protocol_problems_are_permanent_network_io_is_not() {
        let f = classify(&OciDistributionError::IoError(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such blob file",
        )));
        assert!(!f.is_transient(), "{f:?}");
        let f = classify(&OciDistributionError::IoError(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset by peer",
        )));
        assert!(f.is_transient(), "{f:?}");
        let f = classify(&OciDistributionError::SpecViolationError(
            "Expected HTTP Status 202 Accepted, got 200 OK instead".into(),
        ));
        assert!(!f.is_transient());
        assert!(f.reason().contains("202"), "{f:?}");
    }

    #[tokio::test]
    async fn transport_errors() {
        // Connection refused: bind then drop, so nothing listens on the port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = reqwest::get(format!("http://127.0.0.1:{port}/v2/"))
            .await
            .unwrap_err();
        let f = classify(&OciDistributionError::RequestError(e));
        assert!(f.is_transient(), "{f:?}");
        assert!(f.reason().starts_with("cannot connect: "), "{f:?}");
        assert!(f.reason().to_lowercase().contains("refused"), "{f:?}");

        // A server that accepts and never answers: a timeout.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let e = reqwest::Client::builder()
            .timeout(std::time::Duration::from_millis(200))
            .build()
            .unwrap()
            .get(format!("http://{addr}/v2/"))
            .send()
            .await
            .unwrap_err();
        let f = classify(&OciDistributionError::RequestError(e));
        assert_eq!(
            f,
            Failure::Transient("timed out waiting for the registry".into())
        );

        // A connection closed without an answer (as when the registry dies mid-request).
        let rude = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = rude.local_addr().unwrap();
        let close = tokio::spawn(async move {
            while let Ok((s, _)) = rude.accept().await {
                drop(s);
            }
        });
        let e = reqwest::get(format!("http://{addr}/v2/"))
            .await
            .unwrap_err();
        let f = classify(&OciDistributionError::RequestError(e));
        assert!(f.is_transient(), "{f:?}");

        // A status turned into an error by `error_for_status` (as `blob_exists` does).
        let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::FORBIDDEN });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let srv = tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let e = reqwest::get(format!("http://{addr}/v2/x/blobs/sha256:0"))
            .await
            .unwrap()
            .error_for_status()
            .unwrap_err();
        let f = classify(&OciDistributionError::RequestError(e));
        assert!(
            f.reason()
                .starts_with("the registry refused the credentials (403 Forbidden)"),
            "{f:?}"
        );
        for t in [hold, close, srv] {
            t.abort();
        }
    }
}

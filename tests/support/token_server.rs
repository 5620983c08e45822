//! A Docker registry token service (the protocol of `docker login` against Docker Hub, Harbor,
//! GitLab…) small enough to read: `GET /token?service=S&scope=repository:NAME:ACTIONS` (scopes
//! repeatable) with HTTP Basic credentials answers `{"token", "access_token", "expires_in"}`, a
//! JWT signed with ES256 whose self-signed certificate rides in its `x5c` header. The registry
//! (`docker-registry` with `auth: token: rootcertbundle: CERT`) trusts it because that
//! certificate is its root bundle.
//!
//! It is honest: the one user gets exactly the actions it asks for, on exactly the repositories it
//! names, and nobody else gets anything; every token issued is recorded so a test can say what
//! was asked for on whose behalf.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rcgen::{CertificateParams, DnType, KeyPair};
use serde::{Deserialize, Serialize};

/// The `service` the registry names in its challenge and the token's audience.
pub const SERVICE: &str = "archfarm-test-registry";
/// The token's issuer, as the registry is told to expect it.
pub const ISSUER: &str = "archfarm-test-token-service";
/// How long a token lives, in seconds (Docker Hub's figure).
pub const EXPIRES_IN: u64 = 300;

/// What one token grants on one resource, as in the JWT's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// `repository` (or `registry` for the catalog).
    #[serde(rename = "type")]
    pub kind: String,
    /// The repository name, e.g. `team/app`.
    pub name: String,
    /// The granted actions, e.g. `["pull", "push"]`.
    pub actions: Vec<String>,
}

impl Access {
    /// `repository:team/app:pull,push`, the scope syntax.
    pub fn scope(&self) -> String {
        format!("{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// One token the service issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The `scope` parameters as asked.
    pub scopes: Vec<String>,
    /// What the token grants.
    pub access: Vec<Access>,
    /// The JWT itself, so a test can match it with one it saw elsewhere.
    pub token: String,
    /// Whether it was issued already expired ([`TokenServer::issue_expired`]).
    pub expired: bool,
}

/// The service's state: its signing key and certificate, the account, the record.
struct Inner {
    key: EcdsaKeyPair,
    /// DER of the self-signed certificate, for `x5c`.
    cert_der: Vec<u8>,
    user: String,
    password: String,
    issued: Mutex<Vec<Issued>>,
    /// How many of the next tokens to issue already expired.
    expired_next: AtomicUsize,
}

/// A running token service on 127.0.0.1; stopped on drop.
pub struct TokenServer {
    addr: SocketAddr,
    cert_pem: String,
    inner: Arc<Inner>,
    // Dropping the runtime stops the server.
    _runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl TokenServer {
    /// Starts the service for `user` / `password` on a free loopback port.
    pub fn start(user: &str, password: &str) -> TokenServer {
        let key_pair = KeyPair::generate().expect("generate the token signing key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("cert parameters");
        params.distinguished_name.push(DnType::CommonName, ISSUER);
        let cert = params
            .self_signed(&key_pair)
            .expect("self-sign the token certificate");
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key_pair.serialize_der())
                .expect("load the signing key");
        let inner = Arc::new(Inner {
            key,
            cert_der: cert.der().to_vec(),
            user: user.to_string(),
            password: password.to_string(),
            issued: Mutex::new(Vec::new()),
            expired_next: AtomicUsize::new(0),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("token-server")
            .enable_all()
            .build()
            .expect("token server runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the token server");
        let addr = listener.local_addr().expect("token server address");
        let app = Router::new()
            .route("/token", get(token))
            .with_state(inner.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        TokenServer {
            addr,
            cert_pem: cert.pem(),
            inner,
            _runtime: runtime,
        }
    }

    /// `127.0.0.1:PORT`, what `--registry-redirect-host` must list for the realm to be reached.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The realm URL for the registry's configuration.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The signing certificate, PEM: the registry's `rootcertbundle`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Every token issued so far, oldest first.
    pub fn issued(&self) -> Vec<Issued> {
        self.inner.issued.lock().expect("issued lock").clone()
    }

    /// Makes the next `n` tokens expired when issued (as a token of Docker Hub's five minutes
    /// is by the end of a longer build), without the test waiting for a clock.
    pub fn issue_expired(&self, n: usize) {
        self.inner.expired_next.store(n, Ordering::SeqCst);
    }
}

/// `GET /token`: Basic credentials of the one user, or 401.
async fn token(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if !authorised(&inner, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"archfarm-test-tokens\"")],
            Json(serde_json::json!({"details": "wrong or missing credentials"})),
        )
            .into_response();
    }
    let mut scopes = Vec::new();
    let mut service = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "scope" => scopes.extend(v.split(' ').map(str::to_string)),
            "service" => service = Some(v.into_owned()),
            _ => {}
        }
    }
    if service.as_deref() != Some(SERVICE) {
        return (StatusCode::BAD_REQUEST, "unknown service").into_response();
    }
    let access: Vec<Access> = scopes.iter().filter_map(|s| parse_scope(s)).collect();
    let expired = inner
        .expired_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let token = sign(&inner, &access, expired);
    inner.issued.lock().expect("issued lock").push(Issued {
        scopes,
        access,
        token: token.clone(),
        expired,
    });
    Json(serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": EXPIRES_IN,
    }))
    .into_response()
}

fn authorised(inner: &Inner, headers: &HeaderMap) -> bool {
    let Some(basic) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = STANDARD.decode(basic.trim()) else {
        return false;
    };
    decoded == format!("{}:{}", inner.user, inner.password).as_bytes()
}

/// `repository:team/app:pull,push` → the access it asks for; the name may hold no `:` but the
/// type may carry a class (`repository(plugin)`), as in distribution's own parser.
pub fn parse_scope(scope: &str) -> Option<Access> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    if name.is_empty() {
        return None;
    }
    Some(Access {
        kind: kind.to_string(),
        name: name.to_string(),
        actions: actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// An ES256 JWT granting `access`, with the claims distribution 2.8 checks (`iss`, `aud`, `exp`,
/// `nbf`) and the certificate chain (`x5c`) it verifies the signature with.
fn sign(inner: &Inner, access: &[Access], expired: bool) -> String {
    let mut now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    if expired {
        // Past distribution's leeway for clock skew (60 s) as well as the token's own life.
        now -= EXPIRES_IN + 120;
    }
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [STANDARD.encode(&inner.cert_der)],
    });
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": inner.user,
        // distribution 2.8 reads `aud` as one string.
        "aud": SERVICE,
        "exp": now + EXPIRES_IN,
        // A little slack for clocks: everything here runs on one machine.
        "nbf": now - 10,
        "iat": now,
        "jti": uuid::Uuid::new_v4().simple().to_string(),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = inner
        .key
        .sign(&SystemRandom::new(), signing_input.as_bytes())
        .expect("sign the token");
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    )
}

/// The `access` claim of a JWT issued here (or anywhere): its payload, not verified.
pub fn access_of(jwt: &str) -> Vec<Access> {
    let payload = jwt.split('.').nth(1).expect("a JWT has three parts");
    let bytes = URL_SAFE_NO_PAD.decode(payload).expect("JWT payload base64");
    let claims: serde_json::Value = serde_json::from_slice(&bytes).expect("JWT payload JSON");
    serde_json::from_value(claims["access"].clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_as_distribution_does() {
        let a = parse_scope("repository:team/app:pull,push").unwrap();
        assert_eq!(
            (a.kind.as_str(), a.name.as_str()),
            ("repository", "team/app")
        );
        assert_eq!(a.actions, ["pull", "push"]);
        assert_eq!(a.scope(), "repository:team/app:pull,push");
        let host = parse_scope("repository:127.0.0.1:5000/x:pull");
        assert_eq!(host.unwrap().name, "127.0.0.1:5000/x");
        assert!(parse_scope("repository::pull").is_none());
        assert!(parse_scope("nonsense").is_none());
    }
}

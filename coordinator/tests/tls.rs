//! HTTPS in process: certificates made here with rcgen, a coordinator (or a bare TLS listener)
//! on port 0, and reqwest clients that trust the test CA. Covers loading and reloading the
//! certificate (a broken replacement keeps the one in use), client certificates for agents and
//! the dashboard cookie's `Secure` flag. Nothing here sleeps to wait: conditions are polled with a
//! generous deadline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use archfarm_coordinator::config::Config;
use archfarm_coordinator::tls::{self, CertResolver, Tls, TlsFiles, TlsListener};
use archfarm_protocol::api::{ErrorResponse, RegisterResponse};
use clap::Parser;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use reqwest::StatusCode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Long enough for a loaded two-core machine; conditions are polled, so a pass is quick.
const DEADLINE: Duration = Duration::from_secs(30);

/// A certificate authority and the files it issued, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A leaf certificate for 127.0.0.1 (server) or a client, as (cert PEM, key PEM, cert DER).
    fn issue(&self, cn: &str, eku: ExtendedKeyUsagePurpose) -> (String, String, Vec<u8>) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn server(&self, cn: &str) -> (String, String, Vec<u8>) {
        self.issue(cn, ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, cn: &str) -> (String, String, Vec<u8>) {
        self.issue(cn, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// Writes a server certificate to `cert.pem` / `key.pem`; returns its DER.
    fn install_server(&self, cn: &str) -> Vec<u8> {
        let (cert, key, der) = self.server(cn);
        std::fs::write(self.path("cert.pem"), cert).unwrap();
        std::fs::write(self.path("key.pem"), key).unwrap();
        der
    }

    fn files(&self, client_ca: Option<&Path>) -> TlsFiles {
        TlsFiles {
            cert: self.path("cert.pem"),
            key: self.path("key.pem"),
            client_ca: client_ca.map(Path::to_path_buf),
        }
    }

    /// A client trusting only this CA; a fresh one makes a fresh connection (and handshake).
    fn client_trusting(&self, identity: Option<(&str, &str)>) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).unwrap();
        let mut b = reqwest::Client::builder()
            .tls_certs_only([ca])
            .tls_info(true)
            .no_proxy();
        if let Some((cert, key)) = identity {
            b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
        }
        b.build().unwrap()
    }
}

/// The DER of the certificate the server at `url` presents to a new connection.
async fn served_cert(pki: &Pki, url: &str) -> Vec<u8> {
    let resp = pki
        .client_trusting(None)
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    assert_eq!(resp.status(), StatusCode::OK);
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("the TLS info of the connection")
        .to_vec()
}

async fn poll_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_broken_replacement_keeps_the_certificate_in_use() {
    let pki = Pki::new("test CA");
    let a = pki.install_server("a");
    let resolver = CertResolver::load(&pki.path("cert.pem"), &pki.path("key.pem")).unwrap();
    assert_eq!(resolver.current().cert[0].as_ref(), a.as_slice());

    let b = pki.install_server("b");
    resolver.reload().unwrap();
    assert_eq!(resolver.current().cert[0].as_ref(), b.as_slice());
    assert_eq!(resolver.failed_reloads(), 0);

    // Not PEM at all.
    std::fs::write(pki.path("cert.pem"), "this is not a certificate\n").unwrap();
    let e = resolver.reload().unwrap_err().to_string();
    assert!(
        e.contains("cert.pem") && e.contains("no certificate found"),
        "{e}"
    );
    assert_eq!(resolver.current().cert[0].as_ref(), b.as_slice());

    // A section cut short (as when a file is read while it is being written).
    std::fs::write(pki.path("cert.pem"), "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
    let e = resolver.reload().unwrap_err().to_string();
    assert!(e.contains("a section has no `-----END"), "{e}");

    // A certificate with another certificate's key.
    let (c_cert, _, _) = pki.server("c");
    let (_, d_key, _) = pki.server("d");
    std::fs::write(pki.path("cert.pem"), c_cert).unwrap();
    std::fs::write(pki.path("key.pem"), &d_key).unwrap();
    let e = resolver.reload().unwrap_err().to_string();
    assert!(
        e.contains("key.pem cannot be used with the certificate"),
        "{e}"
    );
    assert!(
        !e.contains(d_key.lines().nth(1).unwrap()),
        "the key leaked: {e}"
    );
    assert_eq!(resolver.current().cert[0].as_ref(), b.as_slice());

    // A key file without a key.
    std::fs::write(pki.path("key.pem"), pki.ca.pem()).unwrap();
    let e = resolver.reload().unwrap_err().to_string();
    assert!(e.contains("no private key found"), "{e}");

    // A missing file.
    std::fs::remove_file(pki.path("key.pem")).unwrap();
    let e = resolver.reload().unwrap_err().to_string();
    assert!(e.contains("cannot read the private key"), "{e}");
    assert_eq!(resolver.current().cert[0].as_ref(), b.as_slice());
    assert_eq!(resolver.failed_reloads(), 5);

    // And loading at the start fails the same way.
    let e = CertResolver::load(&pki.path("cert.pem"), &pki.path("key.pem"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("key.pem"), "{e}");
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections() {
    let pki = Pki::new("test CA");
    let a = pki.install_server("a");
    let tls = Tls::load(&pki.files(None)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let server = tokio::spawn(async move {
        axum::serve(TlsListener::new(listener, tls.config).unwrap(), app).await
    });
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(tls::watch(
        tls.resolver.clone(),
        Duration::from_millis(20),
        stop.clone(),
    ));

    assert_eq!(served_cert(&pki, &url).await, a);

    // A client that opens a connection and never speaks does not hold up the others.
    let _silent =
        tokio::net::TcpStream::connect(url.trim_start_matches("https://").trim_end_matches('/'))
            .await
            .unwrap();
    let b = pki.install_server("b");
    poll_until("the new certificate to be served", || {
        let (pki, url, b) = (&pki, &url, &b);
        async move { served_cert(pki, url).await == *b }
    })
    .await;

    // A broken replacement: the watcher tries it, fails, and B stays. (A check between the two
    // writes above may have failed already, hence counting from here.)
    let failed = tls.resolver.failed_reloads();
    std::fs::write(
        pki.path("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    )
    .unwrap();
    poll_until("the broken certificate to be tried", || {
        let resolver = tls.resolver.clone();
        async move { resolver.failed_reloads() > failed }
    })
    .await;
    assert_eq!(served_cert(&pki, &url).await, b);

    stop.cancel();
    watcher.await.unwrap();
    server.abort();
}

/// A coordinator started through `run()` with `flags`, on HTTPS.
struct Running {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _data: tempfile::TempDir,
    _database: archfarm_coordinator::store::scratch::ScratchDatabase,
}

impl Running {
    async fn start(flags: &[&str]) -> Result<Running, String> {
        let data = tempfile::tempdir().unwrap();
        let database = archfarm_coordinator::store::scratch::ScratchDatabase::create()
            .await
            .unwrap();
        let mut args = vec![
            "archfarm-coordinator",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--database",
            database.url(),
            "--join-token",
            "join-secret",
        ];
        args.extend_from_slice(flags);
        let config = Config::try_parse_from(args).map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("https://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut task = tokio::spawn(archfarm_coordinator::run(config, listener, async move {
            let _ = rx.await;
        }));
        // Ready when it answers over TLS; a start that fails ends the task with the reason.
        let probe = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .no_proxy()
            .build()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Ok(r) = probe.get(format!("{base}/healthz")).send().await {
                assert_eq!(r.status(), StatusCode::OK);
                break;
            }
            if task.is_finished() {
                return Err(format!("{:#}", (&mut task).await.unwrap().unwrap_err()));
            }
            assert!(start.elapsed() < DEADLINE, "the coordinator did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Running {
            base,
            stop: Some(tx),
            task,
            _data: data,
            _database: database,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn register(http: &reqwest::Client, c: &Running, name: &str) -> reqwest::Response {
    http.post(c.url("/agents/register"))
        .bearer_auth("join-secret")
        .json(&json!({"name": name, "native_platforms": ["linux/amd64"], "emulated_platforms": [], "capacity": 1}))
        .send()
        .await
        .unwrap()
}

async fn refused_code(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: ErrorResponse = resp.json().await.unwrap();
    (status, body.code)
}

#[tokio::test]
async fn agents_need_a_client_certificate_with_client_ca() {
    let pki = Pki::new("farm CA");
    pki.install_server("coordinator");
    let (cert, key, _) = pki.client("agent-1");
    let ca = pki.path("ca.pem");
    let c = Running::start(&[
        "--tls-cert",
        pki.path("cert.pem").to_str().unwrap(),
        "--tls-key",
        pki.path("key.pem").to_str().unwrap(),
        "--client-ca",
        ca.to_str().unwrap(),
    ])
    .await
    .unwrap();
    let anonymous = pki.client_trusting(None);
    let agent = pki.client_trusting(Some((&cert, &key)));

    // Without a certificate: registration refused with a code that says why.
    let (status, code) = refused_code(register(&anonymous, &c, "no-cert").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "client_certificate_required")
    );

    // With one: registered, and the lease poll works.
    let resp = register(&agent, &c, "with-cert").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let reg: RegisterResponse = resp.json().await.unwrap();
    let lease = |http: &reqwest::Client| {
        http.post(c.url(&format!("/agents/{}/lease", reg.agent_id)))
            .bearer_auth(&reg.token)
            .json(&json!({"wait_secs": 0}))
            .send()
    };
    assert_eq!(
        lease(&agent).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );

    // The agent's token on a connection without a certificate is not enough, on any route.
    let (status, code) = refused_code(lease(&anonymous).await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "client_certificate_required")
    );
    let drain_as_agent = anonymous
        .post(c.url(&format!("/agents/{}/drain", reg.agent_id)))
        .bearer_auth(&reg.token)
        .send()
        .await
        .unwrap();
    let (status, code) = refused_code(drain_as_agent).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "client_certificate_required")
    );

    // CI clients and browsers need none.
    let agents = anonymous.get(c.url("/agents")).send().await.unwrap();
    assert_eq!(agents.status(), StatusCode::OK);
    let page = anonymous
        .get(format!("{}/agents", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);

    // A certificate from another CA fails the handshake itself.
    let stranger = Pki::new("another CA");
    let (s_cert, s_key, _) = stranger.client("intruder");
    let intruder = pki.client_trusting(Some((&s_cert, &s_key)));
    let call = intruder
        .post(c.url("/agents/register"))
        .bearer_auth("join-secret")
        .json(&json!({"name": "intruder", "native_platforms": ["linux/amd64"], "capacity": 1}))
        .send()
        .await;
    assert!(
        call.is_err(),
        "a client certificate from another CA was accepted: {call:?}"
    );
    c.stop().await;
}

#[tokio::test]
async fn the_dashboard_cookie_is_secure_over_https() {
    let pki = Pki::new("test CA");
    pki.install_server("coordinator");
    let c = Running::start(&[
        "--tls-cert",
        pki.path("cert.pem").to_str().unwrap(),
        "--tls-key",
        pki.path("key.pem").to_str().unwrap(),
        "--api-token",
        "s3cret",
    ])
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca.pem().as_bytes()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let resp = http
        .post(format!("{}/login", c.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=s3cret&next=%2F")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    let resp = http
        .post(format!("{}/logout", c.base))
        .send()
        .await
        .unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("Max-Age=0; Secure"), "{cookie}");
    c.stop().await;
}

#[tokio::test]
async fn unusable_tls_files_stop_the_start() {
    let pki = Pki::new("test CA");
    pki.install_server("coordinator");
    std::fs::write(pki.path("other-key.pem"), pki.server("other").1).unwrap();
    let cert = pki.path("cert.pem");
    let e = Running::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        pki.path("other-key.pem").to_str().unwrap(),
    ])
    .await
    .err()
    .expect("a key that does not fit must stop the start");
    assert!(
        e.contains("other-key.pem cannot be used with the certificate"),
        "{e}"
    );

    let e = Running::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        pki.path("key.pem").to_str().unwrap(),
        "--client-ca",
        pki.path("missing-ca.pem").to_str().unwrap(),
    ])
    .await
    .err()
    .expect("a missing client CA must stop the start");
    assert!(
        e.contains("cannot read the client CA") && e.contains("missing-ca.pem"),
        "{e}"
    );

    let e = Running::start(&["--client-ca", pki.path("ca.pem").to_str().unwrap()])
        .await
        .err()
        .expect("--client-ca without TLS must be refused");
    assert!(e.contains("--tls-cert"), "{e}");
}

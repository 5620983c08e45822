//! Credentials and secrets stay off plain-HTTP connections from other hosts, with real
//! connections: each test runs in a network namespace of its own (made with `ip netns`, so it
//! needs root) where loopback is up and `10.77.0.1` is a second, non-loopback address. The
//! coordinator listens on `0.0.0.0`; an agent calling through `127.0.0.1` is on loopback, one
//! calling through `10.77.0.1` is not (the kernel gives its connection that source address). No
//! packet leaves the namespace.

mod common;

use std::future::Future;
use std::process::Command;

use archfarm_coordinator::store::scratch::ScratchDatabase;
use archfarm_protocol::api::{JobState, RegisterResponse};
use archfarm_protocol::{RegistryCredential, Secret};
use common::Coordinator;
use serde_json::{json, Value};

/// The namespace's non-loopback address.
const REMOTE_IP: &str = "10.77.0.1";
const PASSWORD: &str = "hunter2-pass";
const SECRET_VALUE: &str = "npm-token-value";

/// A network namespace that is deleted on drop.
struct Netns(String);

impl Netns {
    fn create() -> Netns {
        let name = format!("archfarm-ph-{}", uuid::Uuid::new_v4().simple());
        let ns = Netns(name);
        ip(&["netns", "add", &ns.0]);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{REMOTE_IP}/32"),
            "dev",
            "lo",
        ]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {} (these tests need root)",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `test` on a runtime whose threads live in a fresh network namespace: sockets belong to
/// the namespace of the thread that makes them, and threads inherit it from the thread that
/// spawns them, so the coordinator and its clients all live there.
fn in_netns<F: Future<Output = ()> + Send + 'static>(test: impl FnOnce() -> F + Send + 'static) {
    let ns = Netns::create();
    let path = format!("/var/run/netns/{}", ns.0);
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        rustix::thread::move_into_thread_name_spaces(
            std::os::fd::AsFd::as_fd(&fd),
            rustix::thread::ThreadNameSpaceType::NETWORK,
        )
        .expect("setns into the test's network namespace (needs root)");
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(test());
    })
    .join()
    .unwrap();
    drop(ns);
}

/// A coordinator on `0.0.0.0` in the namespace, with a credential for a Basic registry (whose
/// password a lease carries as is; the registry is in the namespace too, on loopback) and the
/// registry's `HOST:PORT`; SQLite whatever the environment asks for, as a PostgreSQL server is
/// outside the namespace.
async fn start(extra: &[&str]) -> (Coordinator, tempfile::TempDir, String) {
    let registry = common::basic_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("config.json");
    std::fs::write(
        &auth,
        json!({"auths": {&registry: {"username": "ci", "password": PASSWORD}}}).to_string(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let mut args = vec!["--insecure-open", "--registry-auth", auth.to_str().unwrap()];
    args.extend_from_slice(extra);
    let c = Coordinator::start_on(
        listener,
        ScratchDatabase::sqlite().unwrap(),
        Some("join-secret"),
        &args,
    )
    .await;
    (c, dir, registry)
}

/// The same coordinator through its non-loopback address.
fn remote_base(c: &Coordinator) -> String {
    c.base.replace("127.0.0.1", REMOTE_IP)
}

fn job(ctx: &str, tag: &str, secrets: Value) -> Value {
    json!({"context": ctx, "platforms": ["linux/amd64"], "tags": [tag], "secrets": secrets})
}

/// A fresh agent (capacity 1), so each case claims exactly the job just submitted.
async fn agent(c: &Coordinator, name: &str) -> RegisterResponse {
    c.register(name, &["linux/amd64"], &[]).await
}

#[test]
fn plain_http_refuses_credentials_and_secrets_to_remote_agents() {
    in_netns(|| async {
        let (c, _auth, reg) = start(&[]).await;
        let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
        let remote = remote_base(&c);

        // On loopback nothing leaves the machine: the credential travels.
        c.submit(job(&ctx, &format!("{reg}/app:1"), json!([])))
            .await;
        let lease = c.lease(&agent(&c, "local").await).await.expect("a lease");
        assert_eq!(
            lease.registry_auth,
            Some(RegistryCredential::Basic {
                username: "ci".into(),
                password: Secret::new(PASSWORD),
            })
        );

        // From another address over plain HTTP: no lease, and the job fails saying why.
        let job_id = c
            .submit(job(&ctx, &format!("{reg}/app:2"), json!([])))
            .await
            .id;
        assert!(c
            .lease_via(&remote, &agent(&c, "far").await)
            .await
            .is_none());
        let failed = c.job(job_id).await;
        assert_eq!(failed.state, JobState::Failed);
        let error = failed.error.unwrap();
        assert!(
            error.starts_with(&format!(
                "linux/amd64: the coordinator serves plain HTTP and agent far connects from {REMOTE_IP}: \
                 refused to send the registry credential for {reg} over that connection"
            )) && error.contains("--tls-cert")
                && error.contains("--insecure-credentials-over-http"),
            "{error}"
        );

        // Build secrets alike, named by id, never by value.
        let job_id = c
            .submit(job(
                &ctx,
                "other.example/app:1",
                json!([{"id": "npmrc", "value": SECRET_VALUE}]),
            ))
            .await
            .id;
        assert!(c
            .lease_via(&remote, &agent(&c, "far2").await)
            .await
            .is_none());
        let error = c.job(job_id).await.error.unwrap();
        assert!(
            error.contains("refused to send the build secrets npmrc over that connection")
                && !error.contains(SECRET_VALUE),
            "{error}"
        );

        // A job with nothing to protect is leased as before.
        c.submit(job(&ctx, "other.example/app:2", json!([]))).await;
        let lease = c
            .lease_via(&remote, &agent(&c, "far3").await)
            .await
            .expect("a lease without credentials or secrets");
        assert_eq!(lease.registry_auth, None);
        c.stop().await;
    });
}

#[test]
fn the_flag_says_a_proxy_encrypts_and_credentials_travel() {
    in_netns(|| async {
        let (c, _auth, reg) = start(&["--insecure-credentials-over-http"]).await;
        let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
        c.submit(job(
            &ctx,
            &format!("{reg}/app:1"),
            json!([{"id": "npmrc", "value": SECRET_VALUE}]),
        ))
        .await;
        let lease = c
            .lease_via(&remote_base(&c), &agent(&c, "far").await)
            .await
            .expect("a lease");
        assert!(lease.registry_auth.is_some());
        assert_eq!(lease.secrets.len(), 1);
        assert_eq!(lease.secrets[0].value.expose(), SECRET_VALUE);
        c.stop().await;
    });
}

#[test]
fn over_tls_credentials_travel_to_remote_agents() {
    in_netns(|| async {
        let cert = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            REMOTE_IP.to_string(),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
        let (c, _auth, reg) = start(&[
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ])
        .await;
        assert!(c.base.starts_with("https://"), "{}", c.base);
        let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
        c.submit(job(
            &ctx,
            &format!("{reg}/app:1"),
            json!([{"id": "npmrc", "value": SECRET_VALUE}]),
        ))
        .await;
        let lease = c
            .lease_via(&remote_base(&c), &agent(&c, "far").await)
            .await
            .expect("a lease");
        assert!(lease.registry_auth.is_some());
        assert_eq!(lease.secrets.len(), 1);
        c.stop().await;
    });
}

/// A job carrying the pipeline's registry credential or build secrets, submitted over plain HTTP
/// from another host, is refused by the rule leases follow; from loopback it is taken.
#[test]
fn plain_http_refuses_jobs_carrying_credentials_from_other_hosts() {
    in_netns(|| async {
        let (c, _auth, reg) = start(&[]).await;
        let ctx = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
        let remote = remote_base(&c);
        let mut with_credential = job(&ctx, &format!("{reg}/app:1"), json!([]));
        with_credential["registry_credentials"] =
            json!({&reg: {"username": "pipeline", "password": PASSWORD}});
        let res = c
            .http
            .post(format!("{remote}/api/v1/jobs"))
            .json(&with_credential)
            .send()
            .await
            .unwrap();
        let (status, e) = common::error_of(res).await;
        assert_eq!(
            (status.as_u16(), e.code.as_str()),
            (403, "credentials_over_plain_http")
        );
        assert!(
            e.message.contains(&format!(
                "from {REMOTE_IP}, carries registry credentials for {reg}"
            )) && e.message.contains("https://")
                && !e.message.contains(PASSWORD),
            "{}",
            e.message
        );
        let with_secret = job(
            &ctx,
            "other.example/app:1",
            json!([{"id": "npmrc", "value": SECRET_VALUE}]),
        );
        let res = c
            .http
            .post(format!("{remote}/api/v1/jobs"))
            .json(&with_secret)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 403);
        // From loopback nothing crossed the network: taken.
        c.submit(with_credential).await;
        c.submit(with_secret).await;
        c.stop().await;
    });
}

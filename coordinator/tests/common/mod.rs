//! What the coordinator's in-process tests share: a coordinator on port 0 with a real database
//! (SQLite in a temporary directory, or a fresh PostgreSQL database when `ARCHFARM_TEST_POSTGRES`
//! names a server), and the calls a CI client or an agent would make.

#![allow(dead_code)] // each test file uses its own part of the harness

use std::io::Write;

use archfarm_coordinator::config::Config;
use archfarm_coordinator::store::scratch::ScratchDatabase;
use archfarm_protocol::api::{ErrorResponse, Job, Lease, RegisterResponse};
use clap::Parser;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// A coordinator serving in this process.
pub struct Coordinator {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client without credentials.
    pub http: reqwest::Client,
    /// Its data directory.
    pub data: tempfile::TempDir,
    /// Its database, dropped after the coordinator stops.
    pub database: ScratchDatabase,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Coordinator {
    /// Starts a coordinator with `--join-token join-secret` and `extra` flags; waits for `/healthz`.
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_join(Some("join-secret"), extra).await
    }

    /// Starts a coordinator without a static join token.
    pub async fn start_open_join(extra: &[&str]) -> Self {
        Self::start_join(None, extra).await
    }

    async fn start_join(join: Option<&str>, extra: &[&str]) -> Self {
        let database = ScratchDatabase::create().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, database, join, extra).await
    }

    /// Starts a coordinator serving on `listener` with `database`; with `--tls-cert` among
    /// `extra`, `base` is `https://` and the client accepts any certificate. `base` names
    /// 127.0.0.1 whatever address the listener is bound to.
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        database: ScratchDatabase,
        join: Option<&str>,
        extra: &[&str],
    ) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut args = vec![
            "archfarm-coordinator",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--database",
            database.url(),
        ];
        if let Some(j) = join {
            args.extend(["--join-token", j]);
        }
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).unwrap();
        let tls = config.tls_enabled();
        let base = format!(
            "{}://127.0.0.1:{}",
            if tls { "https" } else { "http" },
            listener.local_addr().unwrap().port()
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(archfarm_coordinator::run(config, listener, async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(tls)
            .build()
            .unwrap();
        // Ready when /healthz answers; the listener is bound already, so this is quick.
        for _ in 0..100 {
            if http
                .get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Coordinator {
            base,
            http,
            data,
            database,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A second handle on the coordinator's database (for seeding or reading it back).
    pub async fn store(&self) -> archfarm_coordinator::store::Store {
        archfarm_coordinator::store::Store::connect(self.database.url())
            .await
            .unwrap()
    }

    /// How many context archives have bytes in the database.
    pub async fn contexts_in_database(&self) -> i64 {
        use sqlx::Row as _;
        let store = self.store().await;
        sqlx::query("SELECT COUNT(DISTINCT digest) AS n FROM context_chunks")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .get::<i64, _>("n")
    }

    /// Whether `needle` is anywhere in the database, as text or (byte columns in `pg_dump`) hex.
    pub fn database_contains(&self, needle: &str) -> bool {
        let dump = self.database_dump();
        assert!(!dump.is_empty(), "the database dump is empty");
        let hex = hex::encode(needle);
        [needle, hex.as_str()]
            .iter()
            .any(|n| dump.windows(n.len()).any(|w| w == n.as_bytes()))
    }

    /// Every byte the database holds: its SQLite files (the write-ahead log too), or `pg_dump`'s
    /// output.
    pub fn database_dump(&self) -> Vec<u8> {
        if self.database.is_postgres() {
            let out = std::process::Command::new("pg_dump")
                .args(["--data-only", self.database.url()])
                .output()
                .expect("pg_dump runs");
            assert!(
                out.status.success(),
                "pg_dump: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        } else {
            let file = self.database.url().trim_start_matches("sqlite://");
            let file = std::path::Path::new(file.split('?').next().unwrap());
            let mut all = Vec::new();
            for entry in std::fs::read_dir(file.parent().unwrap()).unwrap().flatten() {
                all.extend(std::fs::read(entry.path()).unwrap_or_default());
            }
            all
        }
    }

    /// An API URL: `/api/v1` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// Stops it and waits for a clean exit.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }

    /// Stops it and waits for a clean exit, keeping its database for another coordinator.
    pub async fn stop_keeping_database(mut self) -> ScratchDatabase {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        self.database
    }

    /// Uploads a context made of `files`; returns its digest.
    pub async fn upload(&self, files: &[(&str, &str)]) -> String {
        self.upload_as(None, files).await
    }

    /// Uploads a context made of `files` with an API token; returns its digest.
    pub async fn upload_as(&self, token: Option<&str>, files: &[(&str, &str)]) -> String {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            builder.append_data(&mut h, name, body.as_bytes()).unwrap();
        }
        let mut gz = builder.into_inner().unwrap();
        gz.flush().unwrap();
        let bytes = gz.finish().unwrap();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let mut req = self
            .http
            .put(self.url(&format!("/contexts/{digest}")))
            .body(bytes);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        digest
    }

    /// Registers an agent with capacity 1.
    pub async fn register(
        &self,
        name: &str,
        native: &[&str],
        emulated: &[&str],
    ) -> RegisterResponse {
        let res = self
            .http
            .post(self.url("/agents/register"))
            .bearer_auth("join-secret")
            .json(&json!({"name": name, "native_platforms": native, "emulated_platforms": emulated, "capacity": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    /// One lease call held at most a second; None when there was no work.
    pub async fn lease(&self, agent: &RegisterResponse) -> Option<Lease> {
        self.lease_via(&self.base, agent).await
    }

    /// [`Self::lease`] through `base` (another address of the same coordinator).
    pub async fn lease_via(&self, base: &str, agent: &RegisterResponse) -> Option<Lease> {
        let res = self
            .http
            .post(format!("{base}/api/v1/agents/{}/lease", agent.agent_id))
            .bearer_auth(&agent.token)
            .json(&json!({"wait_secs": 1}))
            .send()
            .await
            .unwrap();
        match res.status() {
            StatusCode::OK => Some(res.json().await.unwrap()),
            StatusCode::NO_CONTENT => None,
            other => panic!("lease answered {other}"),
        }
    }

    /// An agent's report (`heartbeat`, `log`, `complete`, `fail`) on a build.
    pub async fn report(
        &self,
        agent: &RegisterResponse,
        build: uuid::Uuid,
        what: &str,
        body: Value,
    ) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/builds/{build}/{what}")))
            .bearer_auth(&agent.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Submits a job body and returns the job; the coordinator must accept it.
    pub async fn submit(&self, body: Value) -> Job {
        let res = self
            .http
            .post(self.url("/jobs"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        res.json().await.unwrap()
    }

    /// `GET /jobs/{id}`.
    pub async fn job(&self, id: uuid::Uuid) -> Job {
        self.http
            .get(self.url(&format!("/jobs/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The status and JSON error of a refused request.
pub async fn error_of(res: reqwest::Response) -> (StatusCode, ErrorResponse) {
    let status = res.status();
    (status, res.json().await.expect("an ErrorResponse body"))
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct Sse {
    /// `event:`.
    pub event: String,
    /// `data:`, the lines joined.
    pub data: String,
}

/// Reads an SSE response into a channel, event by event, until the stream ends (then the
/// channel closes). Comments (keep-alives) are skipped.
pub fn sse_events(res: reqwest::Response) -> tokio::sync::mpsc::UnboundedReceiver<Sse> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = res.bytes_stream();
        let mut buf = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let mut ev = Sse {
                    event: "message".into(),
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !ev.data.is_empty() {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        any = true;
                    }
                }
                if any && tx.send(ev).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The next event, failing the test after 20 s without one.
pub async fn next_event(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Sse>) -> Option<Sse> {
    tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
        .await
        .expect("an event within 20 s")
}

/// A registry that answers every request 401 with a `Basic` challenge, as an htpasswd registry
/// does, on loopback: its `HOST:PORT`. Enough for the coordinator to learn that the registry
/// cannot scope a token, so a lease for it carries the configured password.
pub async fn basic_registry() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"archfarm-test\"")],
            "",
        )
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    host
}

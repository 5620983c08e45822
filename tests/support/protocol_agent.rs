//! The test as an agent: register, lease, heartbeat and report over HTTP exactly as the wire contract
//! says, so a test controls each step (a lease left to lapse, a late report, a registry stopped
//! between push and `complete`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use archfarm_protocol::api::{
    CompleteRequest, ErrorResponse, FailRequest, HeartbeatRequest, HeartbeatResponse, Lease,
    LeaseRequest, RegisterRequest, RegisterResponse,
};
use archfarm_protocol::Digest;
use serde::Serialize;
use uuid::Uuid;

use crate::coordinator::Coordinator;

/// An agent registered over HTTP by the test itself.
#[derive(Debug, Clone)]
pub struct ProtocolAgent {
    /// The id the coordinator gave it.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its bearer token.
    pub token: String,
    /// The heartbeat interval the coordinator asked for.
    pub heartbeat_secs: u64,
    base: String,
    http: reqwest::blocking::Client,
}

/// A non-2xx answer: its status and body.
#[derive(Debug, Clone)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// The `ErrorResponse` body (code empty when the body was not one).
    pub error: ErrorResponse,
}

impl ProtocolAgent {
    /// Registers `name` with these native platforms, capacity 1 and a fresh installation id.
    pub fn register(coordinator: &Coordinator, name: &str, native: &[&str]) -> ProtocolAgent {
        Self::register_emulating(coordinator, name, native, &[])
    }

    /// Registers `name` with these native and emulated platforms, capacity 1 and a fresh
    /// installation id.
    pub fn register_emulating(
        coordinator: &Coordinator,
        name: &str,
        native: &[&str],
        emulated: &[&str],
    ) -> ProtocolAgent {
        let http = crate::http_client();
        let request = RegisterRequest {
            name: name.to_string(),
            native_platforms: native.iter().map(|p| p.to_string()).collect(),
            emulated_platforms: emulated.iter().map(|p| p.to_string()).collect(),
            capacity: 1,
            version: None,
            instance_id: Some(Uuid::new_v4()),
            default_network: None,
            allowed_networks: Vec::new(),
            storage_driver: None,
            host: None,
        };
        let resp = http
            .post(format!("{}/api/v1/agents/register", coordinator.url()))
            .bearer_auth(coordinator.join_token())
            .json(&request)
            .send()
            .expect("POST /api/v1/agents/register");
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        assert_eq!(status, 200, "register {name}: {body}");
        let registered: RegisterResponse =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("register answer ({e}): {body}"));
        ProtocolAgent {
            id: registered.agent_id,
            name: name.to_string(),
            token: registered.token,
            heartbeat_secs: registered.heartbeat_interval_secs,
            base: coordinator.url().to_string(),
            http,
        }
    }

    /// POSTs a JSON body with the agent's token: the status and the body text.
    pub fn post(&self, path: &str, body: &impl Serialize) -> (u16, String) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.text().unwrap_or_default())
    }

    /// One lease call holding the request open up to `wait_secs`: Some on 200, None on 204.
    pub fn lease(&self, wait_secs: u64) -> Option<Lease> {
        let (status, body) = self.post(
            &format!("/api/v1/agents/{}/lease", self.id),
            &LeaseRequest {
                wait_secs: Some(wait_secs),
                ..Default::default()
            },
        );
        match status {
            200 => Some(
                serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("lease answer is not a Lease ({e}): {body}")),
            ),
            204 => None,
            _ => panic!("lease for {} answered {status}: {body}", self.name),
        }
    }

    /// Calls `lease` until a build comes, for up to `timeout`.
    pub fn lease_within(&self, timeout: Duration) -> Lease {
        let start = Instant::now();
        loop {
            if let Some(lease) = self.lease(2) {
                return lease;
            }
            assert!(
                start.elapsed() < timeout,
                "{} got no lease within {timeout:?}",
                self.name
            );
        }
    }

    /// `POST /builds/{id}/heartbeat`.
    pub fn heartbeat(&self, lease: &Lease) -> Result<HeartbeatResponse, Refused> {
        heartbeat(
            &self.http,
            &self.base,
            &self.token,
            lease.build_id,
            lease.lease_token,
        )
    }

    /// `POST /builds/{id}/complete` with the lease's token.
    pub fn complete(
        &self,
        build: Uuid,
        lease_token: Uuid,
        digest: &str,
        media_type: &str,
        size: u64,
    ) -> Result<(), Refused> {
        let request = CompleteRequest {
            lease_token,
            digest: Digest::parse(digest).expect("a valid digest"),
            media_type: media_type.to_string(),
            size: size as i64,
            smoke_test_passed: false,
        };
        no_content(self.post(&format!("/api/v1/builds/{build}/complete"), &request))
    }

    /// `POST /builds/{id}/fail` with the lease's token.
    pub fn fail(&self, build: Uuid, lease_token: Uuid, error: &str) -> Result<(), Refused> {
        let request = FailRequest {
            lease_token,
            error: error.to_string(),
        };
        no_content(self.post(&format!("/api/v1/builds/{build}/fail"), &request))
    }

    /// Heartbeats `lease` from a thread every `heartbeat_secs` (at most every second) until the
    /// returned guard is dropped.
    pub fn keep_alive(&self, lease: &Lease) -> KeepAlive {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(Mutex::new(None));
        let (http, base, token) = (self.http.clone(), self.base.clone(), self.token.clone());
        let (build, lease_token) = (lease.build_id, lease.lease_token);
        let period = Duration::from_secs(self.heartbeat_secs.clamp(1, 5)) / 2;
        let thread = {
            let (stop, last) = (stop.clone(), last.clone());
            thread::Builder::new()
                .name(format!("heartbeat-{build}"))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let answer = heartbeat(&http, &base, &token, build, lease_token);
                        *last.lock().expect("heartbeat result lock") = Some(answer);
                        let until = Instant::now() + period;
                        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                            thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
                .expect("spawn the heartbeat thread")
        };
        KeepAlive {
            stop,
            last,
            thread: Some(thread),
        }
    }
}

/// Heartbeats a lease from a thread until dropped.
#[derive(Debug)]
pub struct KeepAlive {
    stop: Arc<AtomicBool>,
    last: Arc<Mutex<Option<Result<HeartbeatResponse, Refused>>>>,
    thread: Option<JoinHandle<()>>,
}

impl KeepAlive {
    /// The answer to the latest heartbeat, if one was sent.
    pub fn last(&self) -> Option<Result<HeartbeatResponse, Refused>> {
        self.last.lock().expect("heartbeat result lock").clone()
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn heartbeat(
    http: &reqwest::blocking::Client,
    base: &str,
    token: &str,
    build: Uuid,
    lease_token: Uuid,
) -> Result<HeartbeatResponse, Refused> {
    let resp = http
        .post(format!("{base}/api/v1/builds/{build}/heartbeat"))
        .bearer_auth(token)
        .json(&HeartbeatRequest { lease_token })
        .send();
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            return Err(Refused {
                status: 0,
                error: ErrorResponse {
                    code: "unreachable".into(),
                    message: e.to_string(),
                },
            })
        }
    };
    let status = resp.status().as_u16();
    let body = resp.text().unwrap_or_default();
    if status == 200 {
        Ok(
            serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("heartbeat answer ({e}): {body}")),
        )
    } else {
        Err(refused(status, &body))
    }
}

fn refused(status: u16, body: &str) -> Refused {
    let error = serde_json::from_str(body).unwrap_or(ErrorResponse {
        code: String::new(),
        message: body.to_string(),
    });
    Refused { status, error }
}

fn no_content((status, body): (u16, String)) -> Result<(), Refused> {
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(refused(status, &body))
    }
}

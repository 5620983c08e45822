//! Protocol-level agents: lightweight clients that register, long-poll for leases and report each
//! build finished at once, over the coordinator's real HTTP API. Thousands fit in one process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use archfarm_protocol::api::{
    CompleteRequest, Lease, LeaseRequest, LogRequest, RegisterRequest, RegisterResponse,
};
use archfarm_protocol::Digest;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::images::Images;

/// How long one lease call may wait for work on the coordinator.
const LEASE_WAIT_SECS: u64 = 20;

/// Registrations sent at once.
const REGISTER_CONCURRENCY: usize = 32;

/// Wall-clock milliseconds since the Unix epoch, as the coordinator stamps its rows.
pub fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// An HTTP client for many agents on loopback: no proxy, and timeouts longer than a long poll.
pub fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(LEASE_WAIT_SECS + 60))
        .build()
        .context("cannot build the HTTP client")
}

/// Sends `request` (`what` names it, e.g. `PUT URL`): the answer when `ok` accepts its status,
/// else an error with the status and the body.
pub async fn send(
    request: reqwest::RequestBuilder,
    what: &str,
    ok: impl Fn(reqwest::StatusCode) -> bool,
) -> anyhow::Result<reqwest::Response> {
    let resp = request.send().await.with_context(|| what.to_string())?;
    let status = resp.status();
    if !ok(status) {
        bail!(
            "{what} answered {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    Ok(resp)
}

/// One registered protocol-level agent.
#[derive(Debug, Clone)]
pub struct SwarmAgent {
    /// Its id.
    pub id: Uuid,
    /// Its bearer token.
    pub token: String,
}

/// One lease handed out: when the agent asked, when the answer arrived (wall ms) and for what.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSample {
    /// The build leased.
    pub build_id: Uuid,
    /// When the lease call was sent.
    pub sent_ms: f64,
    /// When the lease was in the agent's hands.
    pub received_ms: f64,
}

/// The agents of one farm, all on one coordinator.
#[derive(Debug, Clone)]
pub struct Swarm {
    base: String,
    http: reqwest::Client,
    agents: Vec<SwarmAgent>,
    /// Lines of build log each agent reports per build before completing it (0: none).
    log_lines: usize,
}

impl Swarm {
    /// Registers `count` agents at `base`; agent `i` builds `platforms[i % len]` natively.
    pub async fn register(
        http: &reqwest::Client,
        base: &str,
        join_token: &str,
        count: usize,
        platforms: &[&str],
    ) -> anyhow::Result<Swarm> {
        let agents = futures::stream::iter(0..count)
            .map(|i| {
                let request = RegisterRequest {
                    name: format!("bench-{i:05}"),
                    native_platforms: vec![platforms[i % platforms.len()].to_string()],
                    emulated_platforms: Vec::new(),
                    capacity: 1,
                    version: None,
                    instance_id: Some(Uuid::new_v4()),
                    default_network: None,
                    allowed_networks: Vec::new(),
                    storage_driver: None,
                    host: None,
                };
                let url = format!("{base}/api/v1/agents/register");
                async move {
                    let resp = http
                        .post(&url)
                        .bearer_auth(join_token)
                        .json(&request)
                        .send()
                        .await
                        .with_context(|| format!("POST {url}"))?;
                    let status = resp.status();
                    if status != reqwest::StatusCode::OK {
                        bail!(
                            "register {} answered {status}: {}",
                            request.name,
                            resp.text().await.unwrap_or_default()
                        );
                    }
                    let r: RegisterResponse = resp.json().await.context("register answer")?;
                    Ok(SwarmAgent {
                        id: r.agent_id,
                        token: r.token,
                    })
                }
            })
            .buffer_unordered(REGISTER_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(Swarm {
            base: base.to_string(),
            http: http.clone(),
            agents,
            log_lines: 0,
        })
    }

    /// The same agents reporting `lines` lines of build log (one batch) for every build.
    pub fn with_log_lines(mut self, lines: usize) -> Self {
        self.log_lines = lines;
        self
    }

    /// How many agents there are.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Every agent leases, reports the build pushed with the image of its platform, and leases
    /// again, until `total` builds are done; returns one sample per lease. `started` is
    /// cancelled once every agent has sent its first lease call.
    pub async fn drive(
        &self,
        images: &Images,
        total: usize,
        started: CancellationToken,
    ) -> anyhow::Result<Vec<LeaseSample>> {
        let done = Arc::new(AtomicUsize::new(0));
        let asking = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let images = Arc::new(images.clone());
        let mut tasks = tokio::task::JoinSet::new();
        for agent in self.agents.clone() {
            let (http, base) = (self.http.clone(), self.base.clone());
            let (done, asking, stop, started, images) = (
                done.clone(),
                asking.clone(),
                stop.clone(),
                started.clone(),
                images.clone(),
            );
            let agents = self.agents.len();
            let log_lines = self.log_lines;
            tasks.spawn(async move {
                let mut samples = Vec::new();
                let mut first = true;
                let result = loop {
                    if stop.is_cancelled() {
                        break Ok(());
                    }
                    let url = format!("{base}/api/v1/agents/{}/lease", agent.id);
                    let request = http
                        .post(&url)
                        .bearer_auth(&agent.token)
                        .json(&LeaseRequest {
                            wait_secs: Some(LEASE_WAIT_SECS),
                            ..Default::default()
                        });
                    let sent_ms = wall_ms();
                    if first {
                        first = false;
                        if asking.fetch_add(1, Ordering::SeqCst) + 1 == agents {
                            started.cancel();
                        }
                    }
                    let resp = tokio::select! {
                        r = request.send() => r,
                        _ = stop.cancelled() => break Ok(()),
                    };
                    let resp = match resp {
                        Ok(r) => r,
                        Err(e) => break Err(anyhow::anyhow!("POST {url}: {e}")),
                    };
                    match resp.status().as_u16() {
                        204 => continue,
                        200 => {}
                        status => {
                            break Err(anyhow::anyhow!(
                                "lease answered {status}: {}",
                                resp.text().await.unwrap_or_default()
                            ))
                        }
                    }
                    let lease: Lease = match resp.json().await {
                        Ok(l) => l,
                        Err(e) => break Err(anyhow::anyhow!("lease answer: {e}")),
                    };
                    samples.push(LeaseSample {
                        build_id: lease.build_id,
                        sent_ms,
                        received_ms: wall_ms(),
                    });
                    if log_lines > 0 {
                        if let Err(e) = log(&http, &base, &agent, &lease, log_lines).await {
                            break Err(e);
                        }
                    }
                    if let Err(e) = complete(&http, &base, &agent, &lease, &images).await {
                        break Err(e);
                    }
                    if done.fetch_add(1, Ordering::SeqCst) + 1 >= total {
                        stop.cancel();
                    }
                };
                if result.is_err() {
                    stop.cancel();
                }
                result.map(|()| samples)
            });
        }
        let mut all = Vec::with_capacity(total);
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined.context("an agent task panicked")? {
                Ok(samples) => all.extend(samples),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(all),
        }
    }
}

/// Reports one batch of `lines` build-log lines of about 100 bytes each.
async fn log(
    http: &reqwest::Client,
    base: &str,
    agent: &SwarmAgent,
    lease: &Lease,
    lines: usize,
) -> anyhow::Result<()> {
    let url = format!("{base}/api/v1/builds/{}/log", lease.build_id);
    let request = http.post(&url).bearer_auth(&agent.token).json(&LogRequest {
        lease_token: lease.lease_token,
        lines: (0..lines)
            .map(|i| {
                format!(
                    "STEP {i}: RUN make -j2 all  # {:0>70}",
                    lease.build_id.simple()
                )
            })
            .collect(),
        seq: Some(0),
    });
    send(request, &format!("POST {url}"), |s| s.is_success()).await?;
    Ok(())
}

async fn complete(
    http: &reqwest::Client,
    base: &str,
    agent: &SwarmAgent,
    lease: &Lease,
    images: &Images,
) -> anyhow::Result<()> {
    let platform = lease.platform.to_string();
    let image = images
        .get(&platform)
        .with_context(|| format!("no image pushed for {platform}"))?;
    let url = format!("{base}/api/v1/builds/{}/complete", lease.build_id);
    let request = http
        .post(&url)
        .bearer_auth(&agent.token)
        .json(&CompleteRequest {
            lease_token: lease.lease_token,
            digest: Digest::parse(&image.digest).context("image digest")?,
            media_type: image.media_type.clone(),
            size: image.size as i64,
            smoke_test_passed: false,
        });
    send(request, &format!("POST {url}"), |s| {
        s == reqwest::StatusCode::NO_CONTENT
    })
    .await?;
    Ok(())
}

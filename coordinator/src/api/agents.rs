//! `/agents`: registration, the lease long-poll, the fleet listing, and draining, revoking and
//! forgetting agents.

use std::time::Duration;

use archfarm_protocol::api::{
    AgentList, AgentState, JobState, Lease, LeaseRequest, RegisterRequest, RegisterResponse,
    MAX_AGENT_CAPACITY,
};
use archfarm_protocol::cache::LeaseCache;
use archfarm_protocol::image_meta::ImageMeta;
use archfarm_protocol::tokens::AGENT_TOKEN_PREFIX;
use archfarm_protocol::{CacheRef, Network, Platform};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use uuid::Uuid;

use super::access::Access;
use super::auth::{token_hash, Caller};
use super::error::{parse_id, ApiError, ApiJson};
use super::gate::Authed;
use super::join::{agent_revoked, require_join, JoinPass, Joined};
use super::plain_http::{self, Carried, PeerAddr};
use super::routes::Routes;
use super::views;
use crate::scheduler::Claimed;
use crate::store::{AgentNetworks, AgentRow, Registered};
use crate::AppState;

/// `text` on one line of at most `max` characters: an agent's word shown to everyone.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    flat.chars().take(max).collect()
}

/// Routes of this resource.
pub fn routes() -> Routes {
    Routes::new()
        .get("/agents", Access::Read, list)
        .post("/agents/register", Access::Join, register)
        .post("/agents/{id}/lease", Access::AgentItself, lease)
        .post("/agents/{id}/drain", Access::AgentItselfOrAdmin, drain)
        .post("/agents/{id}/deregister", Access::AgentItself, deregister)
        .post("/agents/{id}/revoke", Access::Admin, revoke)
        .delete("/agents/{id}", Access::Admin, forget)
}

fn parse_platforms(list: &[String], what: &str) -> Result<Vec<Platform>, ApiError> {
    let mut out: Vec<Platform> = Vec::new();
    for raw in list {
        let p = Platform::parse(raw)
            .map_err(|e| ApiError::bad("invalid_platform", format!("{what}: {e}")))?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// The networks a registering agent declares (each name was checked when the body was read).
/// Its default is always among those it allows: a job naming the network it would get anyway
/// must not wait for another agent.
fn agent_networks(req: &RegisterRequest) -> AgentNetworks {
    let mut allowed: Vec<Network> = Vec::new();
    for n in req.default_network.iter().chain(&req.allowed_networks) {
        if !allowed.contains(n) {
            allowed.push(*n);
        }
    }
    AgentNetworks {
        default: req.default_network,
        allowed,
    }
}

async fn register(
    State(state): State<AppState>,
    Authed(pass): Authed<JoinPass>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiError> {
    let name_ok = !req.name.is_empty()
        && req.name.len() <= 64
        && req
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(ApiError::bad(
            "invalid_agent",
            format!(
                "agent name '{}' must be 1 to 64 of A-Z a-z 0-9 - _ .",
                req.name
            ),
        ));
    }
    if !(1..=MAX_AGENT_CAPACITY).contains(&req.capacity) {
        return Err(ApiError::bad(
            "invalid_agent",
            format!(
                "capacity {} must be from 1 to {MAX_AGENT_CAPACITY}",
                req.capacity
            ),
        ));
    }
    let native = parse_platforms(&req.native_platforms, "native platform")?;
    let mut emulated = parse_platforms(&req.emulated_platforms, "emulated platform")?;
    emulated.retain(|p| !native.contains(p));
    if native.is_empty() && emulated.is_empty() {
        return Err(ApiError::bad(
            "invalid_agent",
            "an agent must offer at least one platform",
        ));
    }
    let networks = agent_networks(&req);
    let joined = match require_join(&state, &pass, &req.name).await {
        Ok(joined) => joined,
        // Refused under a revoked agent's name (another agent's token, a join token spent since
        // the gate checked it): say what really keeps it out, so its operator knows an admin
        // must act.
        Err(_) if state.store.agent_name_revoked(&req.name).await? => {
            tracing::warn!(agent = %req.name, "registration refused: the agent was revoked");
            return Err(agent_revoked(&req.name));
        }
        Err(e) => {
            tracing::warn!(agent = %req.name, "registration refused: wrong, spent or missing join token");
            return Err(e);
        }
    };
    let token = format!("{AGENT_TOKEN_PREFIX}{}", uuid::Uuid::new_v4().simple());
    let registered = state
        .store
        .upsert_agent(
            &req.name,
            &token_hash(&token),
            &native,
            &emulated,
            req.capacity,
            req.version.as_deref(),
            req.instance_id,
            joined == Joined::Itself,
            state.scheduler.online_since(),
            &networks,
        )
        .await;
    let refusal = match registered {
        Ok(Registered::Ok { id, requeued }) => Ok((id, requeued)),
        Ok(Registered::NameTaken) => {
            tracing::warn!(agent = %req.name, "registration refused: another online installation holds the name");
            Err(ApiError::Conflict {
                code: "name_taken",
                message: format!(
                    "another agent named '{}' is online from a different machine or work directory; \
                     give this one a different --name",
                    req.name
                ),
            })
        }
        Ok(Registered::Revoked) => {
            tracing::warn!(agent = %req.name, "registration refused: the agent was revoked");
            Err(agent_revoked(&req.name))
        }
        Err(e) => Err(e.into()),
    };
    let (id, requeued) = match refusal {
        Ok(ok) => {
            state
                .store
                .set_agent_storage_driver(ok.0, req.storage_driver.as_deref())
                .await?;
            state.store.set_agent_host(ok.0, req.host.as_ref()).await?;
            ok
        }
        Err(e) => {
            // The registration did not happen: a one-use join token must still be usable.
            if let Joined::Created(token_id) = joined {
                if let Err(undo) = state.store.return_join_token(token_id).await {
                    tracing::error!(token.id = %token_id, error = %undo, "could not give back a join token's use");
                }
            }
            return Err(e);
        }
    };
    tracing::info!(agent.id = %id, agent = %req.name, native = ?native.iter().map(ToString::to_string).collect::<Vec<_>>(),
        emulated = ?emulated.iter().map(ToString::to_string).collect::<Vec<_>>(), capacity = req.capacity, requeued,
        default_network = ?networks.default.map(|n| n.as_str()),
        allowed_networks = %archfarm_protocol::network::join(&networks.allowed),
        storage_driver = ?req.storage_driver, joined = ?joined, "agent registered");
    state.scheduler.wake().await;
    Ok(Json(RegisterResponse {
        agent_id: id,
        token,
        heartbeat_interval_secs: state.config.heartbeat_secs,
    }))
}

async fn lease(
    State(state): State<AppState>,
    Authed(agent): Authed<AgentRow>,
    PeerAddr(peer): PeerAddr,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<LeaseRequest>,
) -> Result<Response, ApiError> {
    // The gate checked an `{id}` that is an id names this agent.
    parse_id("agent", &raw)?;
    state.store.touch_agent_row(&agent).await?;
    let unavailable = req.unavailable.as_deref().map(|why| one_line(why, 500));
    state
        .store
        .report_agent_status(&agent, req.storage, unavailable.as_deref())
        .await?;
    if agent.drain_requested {
        return Err(ApiError::Conflict {
            code: "draining",
            message: format!(
                "agent {} is draining: finish the running builds, then deregister",
                agent.name
            ),
        });
    }
    if let Some(why) = unavailable {
        if agent.unavailable.as_deref() != Some(why.as_str()) {
            tracing::warn!(agent.id = %agent.id, agent = %agent.name, reason = %why, "agent takes no builds");
            // Builds it would have taken may now go to others (or to emulation).
            state.scheduler.wake().await;
        }
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if agent.unavailable.is_some() {
        tracing::info!(agent.id = %agent.id, agent = %agent.name, "agent takes builds again");
    }
    // It said it takes builds: the row read before that still shows the old reason.
    let agent = AgentRow {
        draining: false,
        unavailable: None,
        ..agent
    };
    let max = state.config.lease_wait_secs;
    let wait = Duration::from_secs(req.wait_secs.unwrap_or(max).min(max));
    let Some(claimed) = state
        .scheduler
        .next_lease(&agent, wait, &state.shutdown)
        .await?
    else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    // A revocation while this poll waited must not hand the agent a build and its credential.
    let delivered = match state.store.agent_cut_off(agent.id).await {
        Ok(false) => lease_for(&state, &agent, &claimed).await,
        Ok(true) => Err(ApiError::Unauthorized {
            code: archfarm_protocol::api::UNKNOWN_AGENT,
            message: "this agent was revoked or removed: register again with a join token".into(),
        }),
        Err(e) => Err(e.into()),
    };
    match delivered {
        Ok(lease) => {
            // A job ended while the lease was made (its own credentials deleted with its builds
            // cancelled) may have left the lease with the coordinator's credential in place of
            // the job's: checked after, so such a lease goes nowhere.
            let check = state
                .store
                .check_lease(claimed.build_id, claimed.token)
                .await?;
            if check != crate::store::LeaseCheck::Current {
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            let carried = Carried::by(&lease);
            let Some(reason) = plain_http::refusal(&state.config, &agent.name, peer, &carried)
            else {
                return Ok(Json(lease).into_response());
            };
            // Not requeued: this agent would claim it again. The agent hears of no lease and
            // polls on; the job's error tells its submitter why and what to change.
            plain_http::fail_refused(&state, &claimed, &lease, &agent.name, peer, &reason).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(e) => {
            // The agent never learns of this lease: do not make it wait out a TTL and use an attempt.
            if let Err(undo) = state
                .store
                .requeue_build(claimed.build_id, claimed.token)
                .await
            {
                tracing::error!(build.id = %claimed.build_id, error = %undo, "could not requeue an undelivered lease");
            }
            state.scheduler.wake().await;
            Err(e)
        }
    }
}

/// The lease message for a build just claimed.
async fn lease_for(
    state: &AppState,
    agent: &AgentRow,
    claimed: &Claimed,
) -> Result<Lease, ApiError> {
    let job = state.store.get_job(claimed.job_id).await?.ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!(
            "leased build {} has no job",
            claimed.build_id
        ))
    })?;
    let build = state
        .store
        .get_build(claimed.build_id)
        .await?
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "leased build {} vanished",
                claimed.build_id
            ))
        })?;
    let header = format!(
        "[archfarm] attempt {} on agent {} ({})",
        build.attempts, agent.name, claimed.mode
    );
    if let Err(e) = state.logs.append(build.id, &[header]).await {
        tracing::warn!(build.id = %build.id, error = %e, "could not write the attempt header to the build log");
    }
    // The job's own registry credentials (sent with it), opened for this lease only. One this
    // replica cannot open fails the job, saying why: pushing with another credential instead
    // would only fail later and less clearly.
    let own = match crate::job_credentials::for_job(state, job.id).await? {
        Ok(own) => own,
        Err(why) => {
            crate::lifecycle::Ends::of(state)
                .end(job.id, JobState::Failed, &why)
                .await?;
            tracing::error!(job.id = %job.id, error = %why, "job failed: its registry credential cannot be opened");
            return Err(ApiError::Internal(anyhow::anyhow!(why)));
        }
    };
    // Only this job's registry's credential travels, and only in this answer: never logged (its
    // Debug hides the secret); a token for the job's repository where the registry can scope one.
    let registry_auth = crate::lease_credential::for_lease(
        state,
        build.id,
        &own,
        &job.registry,
        &job.repository,
        "the lease carries no registry credential (the agent's own is used, if it has one)",
        crate::registry::Fresh::Cached,
    )
    .await;
    // Likewise the job's build secrets: read for this lease, held in memory until it is sent.
    let secrets = state.store.job_secrets(job.id).await?;
    // And pull credentials for the registries the Dockerfile's base images come from, only.
    let (pull, note) =
        crate::pulls::for_lease(&state.config, &state.registry, &own, build.id, &job).await;
    if let Some(line) = note {
        if let Err(e) = state.logs.append(build.id, &[line]).await {
            tracing::warn!(build.id = %build.id, error = %e, "could not append to the build log");
        }
    }
    // Each platform's cache in a repository of its own, so none overwrites another's.
    let per_platform = |caches: &[CacheRef]| -> Vec<String> {
        caches
            .iter()
            .map(|c| c.for_platform(&build.platform))
            .collect()
    };
    let cache_to = per_platform(&job.cache.to);
    // `--no-cache` reuses nothing, so there is nothing to read.
    let cache_from = if job.cache.no_cache {
        Vec::new()
    } else {
        per_platform(&job.cache.from)
    };
    Ok(Lease {
        pull,
        secrets,
        registry_auth,
        secret_build_args: job.secret_build_args,
        build_id: build.id,
        job_id: job.id,
        lease_token: claimed.token,
        platform: build.platform,
        mode: claimed.mode,
        context: job.context,
        dockerfile: job.dockerfile,
        build_args: job.build_args,
        target: job.target,
        insecure_registry: state.config.is_insecure(&job.registry),
        registry: job.registry,
        repository: job.repository,
        heartbeat_interval_secs: state.config.heartbeat_secs,
        network: job.network,
        cache: LeaseCache {
            to: cache_to,
            from: cache_from,
            no_cache: job.cache.no_cache,
            pull: job.cache.pull,
        },
        // The index's annotations are the coordinator's to write, not the agent's.
        image_meta: ImageMeta {
            index_annotations: Default::default(),
            ..job.image_meta
        },
        allow_foreign_binary: job.allow_foreign_binary,
        smoke_test: job.smoke_test,
    })
}

async fn list(State(state): State<AppState>) -> Result<Json<AgentList>, ApiError> {
    Ok(Json(AgentList {
        agents: views::agents(&state).await?,
    }))
}

/// Marks an agent draining: its running builds finish, it takes no new ones. Allowed to the agent
/// itself (on SIGTERM) and to admins (`archfarm agents drain NAME`): the gate checked which.
async fn drain(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<archfarm_protocol::api::Agent>, ApiError> {
    let id = parse_id("agent", &raw)?;
    if !state.store.set_draining(id).await? {
        return Err(ApiError::NotFound(format!("no agent with id '{id}'")));
    }
    tracing::info!(agent.id = %id, "agent draining");
    // Builds it would have taken may now go to others (or to emulation).
    state.scheduler.wake().await;
    Ok(Json(agent_view(&state, id).await?))
}

/// The agent with `id` as the API shows it.
async fn agent_view(state: &AppState, id: Uuid) -> Result<archfarm_protocol::api::Agent, ApiError> {
    let since = state.scheduler.online_since();
    let running = state.store.running_counts().await?;
    let agent = state
        .store
        .list_agents()
        .await?
        .into_iter()
        .find(|a| a.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("no agent with id '{id}'")))?;
    Ok(views::agent(agent, since, &running))
}

/// Cuts an agent off at once (admins: `archfarm agents revoke NAME`): its token stops working, so
/// its next heartbeat, log or lease call gets 401; its builds go back to the queue for other
/// agents; and it cannot register again under its name until an admin forgets it.
async fn revoke(
    State(state): State<AppState>,
    Authed(caller): Authed<Caller>,
    Path(raw): Path<String>,
) -> Result<Json<archfarm_protocol::api::Agent>, ApiError> {
    let id = parse_id("agent", &raw)?;
    let requeued = state
        .store
        .revoke_agent(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no agent with id '{id}'")))?;
    tracing::warn!(agent.id = %id, requeued, by = ?caller.token, "agent revoked");
    state.scheduler.wake().await;
    Ok(Json(agent_view(&state, id).await?))
}

/// Removes an agent that is revoked or offline (admins: `archfarm agents forget NAME`), freeing
/// its name; an online agent must be drained or revoked first.
async fn forget(
    State(state): State<AppState>,
    Authed(caller): Authed<Caller>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id("agent", &raw)?;
    let agent = agent_view(&state, id).await?;
    if !matches!(agent.state, AgentState::Revoked | AgentState::Offline) {
        return Err(ApiError::Conflict {
            code: "agent_online",
            message: format!(
                "agent {} is {}: drain it (`archfarm agents drain {}`) or revoke it first",
                agent.name,
                agent.state.as_str(),
                agent.name
            ),
        });
    }
    let requeued = state.store.deregister_agent(id).await?;
    tracing::info!(agent.id = %id, agent = %agent.name, requeued, by = ?caller.token, "agent forgotten");
    state.scheduler.wake().await;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes the calling agent (the end of a drain); anything it still held is requeued.
async fn deregister(
    State(state): State<AppState>,
    Authed(agent): Authed<AgentRow>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    // The gate checked an `{id}` that is an id names this agent.
    parse_id("agent", &raw)?;
    let id = agent.id;
    let requeued = state.store.deregister_agent(id).await?;
    tracing::info!(agent.id = %id, agent = %agent.name, requeued, "agent deregistered");
    state.scheduler.wake().await;
    Ok(StatusCode::NO_CONTENT)
}

//! The archfarm coordinator: HTTP API for CI pipelines and agents, a scheduler that hands each
//! platform's build to a matching agent, and stitching of the pushed images into one index.
//!
//! `main.rs` only parses flags; [`run`] is what tests call with a listener on port 0.

pub mod api;
pub mod base_images;
pub mod blobs;
pub mod changes;
pub mod config;
pub mod cred_helper;
pub mod job_credentials;
pub mod lease_credential;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod progress;
pub mod provenance;
pub mod pulls;
pub mod registry;
pub mod replicas;
pub mod retention;
pub mod scheduler;
pub mod stitch;
pub mod store;
pub mod tag_order;
pub mod tls;
pub mod web;

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::blobs::BlobStore;
use crate::changes::Changes;
use crate::config::Config;
use crate::logs::LogStore;
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::store::{Backend, Store};

/// Everything a request handler may need.
#[derive(Debug)]
pub struct App {
    /// The configuration the coordinator started with.
    pub config: Config,
    /// Jobs, builds, agents and contexts.
    pub store: Store,
    /// Matching of queued builds to agents.
    pub scheduler: Scheduler,
    /// Context archives: in the database, cached in the data directory.
    pub blobs: BlobStore,
    /// Build logs, in the database.
    pub logs: LogStore,
    /// Wakes live views (event streams, followed logs) after a change.
    pub changes: Changes,
    /// Prometheus metrics, shared with the scheduler.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the coordinator stops; long polls and background tasks watch it.
    pub shutdown: CancellationToken,
    /// Registry credentials (`--registry-auth`) and extra CA (`--registry-ca-cert`); in memory only.
    pub registry: registry::RegistryAccess,
    /// The key jobs' own registry credentials are sealed with in the database.
    pub credential_key: job_credentials::CredentialKey,
    /// The stitching tasks running here, awaited at shutdown so each lets go of its lease.
    pub stitches: TaskTracker,
    /// The last read of who is online, shared by the job views of one second.
    pub fleet: api::views::FleetCache,
    /// What this replica's retention sweeps deleted (`archfarm admin retention`).
    pub retention: retention::SweepLog,
}

/// Shared handle to the [`App`], cloned into every handler.
#[derive(Debug, Clone)]
pub struct AppState(pub Arc<App>);

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// Opens the state, serves on `listener` until `shutdown` completes, then drains.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config
        .check_exposure(listener.local_addr()?)
        .map_err(anyhow::Error::msg)?;
    // Before anything else: a broken credentials file must stop the start, not the first job.
    let registry = registry::RegistryAccess::load(&config)?;
    registry.log_summary(&config);
    // Before anything else, so a bad certificate stops the start with a message naming the file.
    let tls = match config.tls_files()? {
        Some(files) => Some(tls::Tls::load(&files)?),
        None => None,
    };
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let store = Store::connect(&config.database_url())
        .await
        .context("cannot open the database")?;
    let key_from_file = match &config.job_credential_key_file {
        None => None,
        Some(path) => Some(archfarm_protocol::Secret::new(
            job_credentials::read_private(path).with_context(|| {
                format!("cannot use --job-credential-key-file {}", path.display())
            })?,
        )),
    };
    let configured_key = config
        .job_credential_key
        .as_ref()
        .or(key_from_file.as_ref());
    let credential_key = job_credentials::CredentialKey::load(configured_key, &config.data_dir)?;
    if configured_key.is_none() && store.backend() == Backend::Postgres {
        tracing::warn!(
            key_file = %credential_key.origin(),
            "no --job-credential-key: the registry credentials jobs send are sealed with this \
             coordinator's own key, which other replicas (and a new data directory) cannot open; \
             give every replica the same --job-credential-key"
        );
    }
    // A credential of a job that ended while no coordinator ran goes before anything is served.
    let swept = store.sweep_job_credentials().await?;
    if swept > 0 {
        tracing::info!(
            rows = swept,
            "deleted registry credentials of jobs that ended"
        );
    }
    let blobs = BlobStore::open(config.data_dir.join("contexts"), store.clone())
        .await
        .context("cannot open the context store")?
        .with_cache_limit(config.context_cache_max_bytes);
    let logs = LogStore::new(store.clone(), config.max_log_bytes);
    // Coordinators from before logs were kept in the database wrote them here.
    let imported = logs
        .import_files(&config.data_dir.join("logs"))
        .await
        .context("cannot copy old build logs into the database")?;
    if imported > 0 {
        tracing::info!(
            logs = imported,
            "build logs copied from the data directory into the database"
        );
    }
    if !config.join_required() {
        tracing::warn!(
            "no --join-token or --api-token set: any agent that can reach this coordinator may register"
        );
    }
    if !config.auth_enabled() {
        tracing::warn!(
            "no --api-token set: anyone who can reach this coordinator may submit builds"
        );
    }
    let metrics = Arc::new(Metrics::new());
    let scheduler = Scheduler::new(
        store.clone(),
        metrics.clone(),
        config.lease_ttl(),
        Duration::from_secs(config.agent_offline_secs),
        config.max_attempts,
    )
    .with_replica(&config.replica_name)
    .with_warm_agent_wait(Duration::from_secs(config.warm_agent_wait_secs));
    tracing::info!(replica = %config.replica_name, backend = ?store.backend(), "coordinator starting");
    let token = CancellationToken::new();
    let state = AppState(Arc::new(App {
        config,
        store,
        scheduler,
        blobs,
        logs,
        changes: Changes::new(),
        metrics,
        shutdown: token.clone(),
        registry,
        credential_key,
        stitches: TaskTracker::new(),
        fleet: Default::default(),
        retention: Default::default(),
    }));

    // Agents need a heartbeat interval to find a restarted coordinator: the scheduler judges no
    // lease until its contact with the database has lasted a lease's length (scheduler::contact),
    // which covers every replica's leases, however long the restart took.
    progress::reconcile(&state).await?;
    // A restart interrupted these (and others whose replica died); pushing the index again is
    // idempotent.
    progress::take_over_stitches(&state, true).await?;
    let contact =
        tokio::spawn(watch_contact(state.clone()).instrument(tracing::info_span!("contact")));
    let reaper = tokio::spawn(reap_leases(state.clone()).instrument(tracing::info_span!("reaper")));
    let retention_task =
        tokio::spawn(retention::run(state.clone()).instrument(tracing::info_span!("retention")));
    let listener_task = (state.store.backend() == Backend::Postgres).then(|| {
        tokio::spawn(
            replicas::listen(state.clone(), state.config.database_url())
                .instrument(tracing::info_span!("replicas")),
        )
    });

    let addr = listener.local_addr()?;
    // Once, at start: on plain HTTP beyond loopback some builds will be refused their secrets.
    api::plain_http::log_at_start(&state.config, addr);
    // Every request sees its connection as `ConnectInfo<tls::Peer>` (client certificates).
    let app = api::router(state.clone()).into_make_service_with_connect_info::<tls::Peer>();
    let stop = token.clone();
    let graceful = async move {
        shutdown.await;
        tracing::info!("shutting down");
        // Wakes long-polling agents so the drain does not wait out their polls.
        stop.cancel();
    };
    let mut reloader = None;
    match tls {
        None => {
            tracing::info!(%addr, "archfarm-coordinator listening on http://{addr}");
            axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await?;
        }
        Some(tls) => {
            reloader = Some(tokio::spawn(
                tls::watch(tls.resolver.clone(), tls::RELOAD_POLL, token.clone())
                    .instrument(tracing::info_span!("tls_reload")),
            ));
            tracing::info!(
                %addr,
                fingerprint = %tls.resolver.current_fingerprint(),
                client_certificates = state.config.client_ca.is_some(),
                "archfarm-coordinator listening on https://{addr}"
            );
            let listener = tls::TlsListener::new(listener, tls.config)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await?;
        }
    }
    token.cancel();
    let _ = reaper.await;
    let _ = contact.await;
    let _ = retention_task.await;
    state.stitches.close();
    state.stitches.wait().await;
    if let Some(task) = listener_task {
        let _ = task.await;
    }
    if let Some(reloader) = reloader {
        let _ = reloader.await;
    }
    Ok(())
}

/// Background task: asks the database for a sign of life every second (see
/// `scheduler::contact`), apart from the reaper, whose passes may wait on the database.
async fn watch_contact(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        state.scheduler.check_contact().await;
    }
}

/// Background task: takes back leases whose agents stopped heartbeating, fails jobs past their
/// time limit, takes over stitching left by a replica that died, and deletes build secrets of
/// jobs that ended (the statements that end jobs delete them too; this catches any path that did
/// not, within a second).
async fn reap_leases(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut passes: u64 = 0;
    let mut judged_before = false;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match state.scheduler.reap_expired().await {
            Ok(reaped) if reaped != Default::default() => state.changes.notify(),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "lease reaper pass failed"),
        }
        if let Err(e) = progress::expire_jobs(&state).await {
            tracing::error!(error = %e, "job time limit pass failed");
        }
        // Another replica's stitching lease, too, could not be renewed while the database was
        // away: it is judged, like build leases, only after contact has lasted a lease's length.
        let judging = state.scheduler.may_judge_leases();
        if judging {
            if let Err(e) = progress::take_over_stitches(&state, false).await {
                tracing::error!(error = %e, "stitching takeover pass failed");
            }
        }
        match state.store.sweep_secrets().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "deleted build secrets of jobs that ended"),
            Err(e) => tracing::error!(error = %e, "build secret sweep failed"),
        }
        match state.store.sweep_job_credentials().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "deleted registry credentials of jobs that ended"),
            Err(e) => tracing::error!(error = %e, "registry credential sweep failed"),
        }
        passes += 1;
        // Also as soon as judging resumes (after a start or an outage): what was held back
        // meanwhile, such as optional platforms no agent can build, is settled at once.
        let resumed = judging && !judged_before;
        judged_before = judging;
        if passes.is_multiple_of(10) || resumed {
            if let Err(e) = progress::reconcile(&state).await {
                tracing::error!(error = %e, "reconcile pass failed");
            }
        }
    }
}

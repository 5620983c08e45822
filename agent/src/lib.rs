//! The archfarm agent: registers with a coordinator, leases builds for its platforms, runs them with
//! buildah, pushes each image to its registry by digest and reports the result.
//!
//! * [`config`]: flags and environment variables.
//! * [`detect`]: the native platform from the kernel, emulated ones from binfmt_misc.
//! * [`client`]: the typed HTTP client for the coordinator's agent routes.
//! * [`session`]: registration, the lease loop, heartbeats and log streaming.
//! * [`shutdown`]: draining on the first SIGTERM, abandoning running builds on the second.
//! * [`context`]: fetching and safely unpacking build contexts.
//! * [`backend`]: builders behind one trait; [`backend::buildah`] first.
//! * [`push`]: uploading an OCI layout's image to a registry under its own digest.
//!   [`registry_error`] sorts its failures into transient and permanent ones; [`registry_auth`]
//!   holds registry credentials and the private auth file buildah reads.
//! * [`runner`]: one leased build from start to end; [`logs`]: its log lines, batched.
//! * [`workdir`]: the layout of the agent's work directory.
//! * [`network`]: the agent's default network and what jobs may ask it for.
//!
//! `main.rs` only parses flags, sets up logging and signals, and calls [`run`].

use std::path::PathBuf;
use std::sync::Arc;

pub mod backend;
pub mod backoff;
pub mod client;
pub mod config;
pub mod context;
pub mod detect;
pub mod logs;
pub mod network;
pub mod out_of_space;
pub mod push;
pub mod registry_auth;
pub mod registry_error;
pub mod runner;
pub mod session;
pub mod shutdown;
pub mod tls;
pub mod workdir;

pub use config::{Config, Emulate, Secret};
pub use shutdown::Stopped;

use backend::buildah::Buildah;
use backend::isolation::{Isolation, IsolationKind};
use backend::{Backend, BackendError};
use client::{ClientError, CoordinatorClient};
use detect::DetectError;

/// Why the agent stopped before its shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The coordinator answered 401 to the registration: the join token is wrong.
    #[error(
        "the coordinator rejected the join token: {0}; check --join-token / ARCHFARM_JOIN_TOKEN"
    )]
    JoinTokenRejected(String),
    /// The coordinator answered 409 `name_taken`: another installation holding this name is online.
    #[error(
        "another agent named {name} is online; give this one a different --name (or \
         ARCHFARM_AGENT_NAME). The coordinator said: {message}"
    )]
    NameTaken {
        /// The name asked for.
        name: String,
        /// The coordinator's message.
        message: String,
    },
    /// The coordinator answered 403 `agent_revoked`: an admin cut this agent off.
    #[error("{0}")]
    Revoked(String),
    /// A flag or environment variable has a value the agent cannot work with.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The platforms to offer could not be worked out.
    #[error(transparent)]
    Detect(#[from] DetectError),
    /// The coordinator refused the registration for another reason than the token (e.g. a 400).
    #[error("the coordinator refused the registration: {0}")]
    RegisterRefused(#[source] ClientError),
    /// The work directory could not be created.
    #[error("cannot prepare the work directory {path}: {source}")]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS connection to the coordinator failed on a certificate (not trusted, or this agent's
    /// refused), or the coordinator requires a client certificate the agent did not present.
    #[error("{0}")]
    Certificate(String),
    /// The build storage cannot be set up (the driver asked for does not work, the disk refuses).
    #[error("the build storage is not usable: {0}")]
    Storage(#[from] backend::storage::StorageError),
    /// The builder backend is unusable (e.g. buildah is not installed).
    #[error("the build backend is not usable: {0}")]
    Backend(#[from] BackendError),
}

impl AgentError {
    /// The process exit code for this error: 2 for a rejected join token, a name another agent
    /// holds, a revoked agent, a certificate problem or bad configuration, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::JoinTokenRejected(_)
            | AgentError::NameTaken { .. }
            | AgentError::Revoked(_)
            | AgentError::Config(_)
            | AgentError::Certificate(_)
            | AgentError::Detect(_)
            | AgentError::Storage(backend::storage::StorageError::OverlayUnusable(_)) => 2,
            AgentError::RegisterRefused(_)
            | AgentError::WorkDir { .. }
            | AgentError::Storage(_)
            | AgentError::Backend(_) => 1,
        }
    }
}

/// `e` followed by its causes, `: `-separated. HTTP and tar errors keep the telling part (e.g.
/// "Connection refused") in their sources, which a plain `Display` leaves out.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        // Some errors repeat their source in their own message.
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// Runs the agent until it is told to stop or a fatal error occurs. `signals` yields one item per
/// shutdown signal: the first drains (no new builds, running ones finish and report, then the agent
/// deregisters: [`Stopped::Drained`]), the second abandons the running builds
/// ([`Stopped::Abandoned`]). A 409 `draining` from the coordinator drains too.
pub async fn run(
    config: Config,
    signals: impl futures::Stream<Item = ()> + Send + Unpin,
) -> Result<Stopped, AgentError> {
    if config.name.trim().is_empty() {
        return Err(AgentError::Config(
            "the agent name is empty; pass --name or ARCHFARM_AGENT_NAME".into(),
        ));
    }
    let platforms = detect::resolve(
        &config.platforms,
        &config.emulate,
        detect::BINFMT_DIR.as_ref(),
    )?;
    let registry = registry_auth::RegistryAccess::load(
        config.registry_auth.as_deref(),
        config.registry_ca_cert.as_deref(),
    )
    .map_err(AgentError::Config)?;
    let work_dir =
        workdir::WorkDir::create(&config.work_dir).map_err(|source| AgentError::WorkDir {
            path: config.work_dir.clone(),
            source,
        })?;
    let networks =
        network::NetworkPolicy::from_flags(config.isolation, config.network, &config.allow_network)
            .map_err(AgentError::Config)?;
    tracing::info!(
        name = %config.name,
        instance.id = %work_dir.instance_id(),
        native = %detect::join(&platforms.native),
        emulated = %detect::join(&platforms.emulated),
        capacity = config.capacity,
        isolation = %config.isolation,
        network = %networks.default,
        allowed_networks = %archfarm_protocol::network::join(&networks.allowed),
        coordinator = %config.coordinator,
        "starting"
    );
    for registry in registry.own.registries() {
        tracing::info!(registry, "own registry credential loaded");
    }
    let isolation = match config.isolation {
        IsolationKind::Oci => {
            // buildah runs this executable as its runtime shim, which hardens each step's spec.
            let agent = std::env::current_exe().map_err(|e| {
                AgentError::Config(format!("cannot find the agent's own executable: {e}"))
            })?;
            Isolation::oci(&work_dir.storage(), &config.oci_runtime, &agent)
                .map_err(BackendError::Isolation)?
        }
        IsolationKind::Chroot => Isolation::Chroot,
    };
    // `none` lifts the limit; no flag takes the default share of the disk.
    let size = |s: Option<backend::limits::Size>| s.map(|s| s.0.get().unwrap_or(u64::MAX));
    let storage = backend::storage::Storage::open(
        std::path::Path::new("buildah"),
        &work_dir.storage(),
        config.storage_driver,
        size(config.max_storage),
        size(config.min_free_disk),
    )
    .await?;
    let mut buildah = Buildah::new(storage.clone(), isolation)
        .with_limits(config.build_limits(), work_dir.instance_id());
    let cert_dir = registry
        .write_cert_dir(&work_dir.root().join("registry-ca"))
        .map_err(|source| AgentError::WorkDir {
            path: work_dir.root().join("registry-ca"),
            source,
        })?;
    if let (Some(pem), Some(dir)) = (&registry.ca_cert, cert_dir) {
        buildah = buildah.with_registry_ca(pem.clone(), dir);
    }
    let buildah = buildah.with_registry_redirect_hosts(config.registry_redirect_hosts.clone());
    let backend: Arc<dyn Backend> = Arc::new(buildah);
    backend.prepare().await?;
    let client = CoordinatorClient::with_tls(config.coordinator.clone(), &config.client_tls())
        .map_err(AgentError::Config)?;
    let session = session::Session {
        client,
        join_token: config.join_token.clone(),
        name: config.name.clone(),
        capacity: config.capacity,
        platforms,
        work_dir,
        backend,
        limits: context::Limits::default(),
        backoff: backoff::Backoff::default(),
        registry: Arc::new(registry),
        networks,
        storage: Some(storage),
    };
    session.run(signals).await
}

//! Builder backends behind one trait. Each builds one platform's image from an unpacked context and
//! pushes it to the registry by digest.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use archfarm_protocol::{Digest, Platform};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::push::PushError;

pub mod binary_check;
pub mod buildah;
pub mod cache;
pub mod dockerfile_guard;
pub mod isolation;
pub mod limits;
pub mod process;
pub mod pulls;
pub mod runtime_shim;
pub mod secrets;
pub mod smoke_test;
pub mod storage;

/// A boxed future, so [`Backend`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything a backend needs to build and push one platform's image.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// Build id; names the image and the build directory.
    pub build_id: Uuid,
    /// Platform to build.
    pub platform: Platform,
    /// This build's scratch directory (`WORK_DIR/builds/<id>`), removed afterwards by the session.
    pub build_dir: PathBuf,
    /// The unpacked context.
    pub context_dir: PathBuf,
    /// Dockerfile path inside the context.
    pub dockerfile: String,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// Target stage.
    pub target: Option<String>,
    /// Registry `host[:port]` to push to.
    pub registry: String,
    /// Repository inside the registry.
    pub repository: String,
    /// Whether the registry speaks plain HTTP.
    pub insecure_registry: bool,
    /// The credential for `registry` (from the lease, else the agent's own), for the push and
    /// for base images pulled from it; none means anonymous. Its `Debug` hides the secret.
    pub registry_auth: Option<archfarm_protocol::RegistryCredential>,
    /// Asks for `registry_auth` anew right before the push, when it came from the coordinator
    /// (a scoped token may have expired during the build).
    pub refresh_auth: Option<crate::registry_auth::CredentialRefresh>,
    /// Build secrets for `RUN --mount=type=secret` steps. Their `Debug` hides the values.
    pub secrets: Vec<archfarm_protocol::BuildSecret>,
    /// The network of the `RUN` steps, one the agent allows (see [`crate::network`]).
    pub network: archfarm_protocol::Network,
    /// How base images are pulled: the lease's mirrors, plain-HTTP registries and pull
    /// credentials (see [`pulls`]). Its `Debug` hides the secrets.
    pub pull: archfarm_protocol::pull::PullSettings,
    /// This platform's registry caches and the job's `--no-cache`/`--pull` (see [`cache`]).
    pub cache: archfarm_protocol::cache::LeaseCache,
    /// The job's labels and manifest annotations (`buildah build --label/--annotation`).
    pub image_meta: archfarm_protocol::image_meta::ImageMeta,
    /// Paths whose ELF files are not checked against the platform (`--allow-foreign-binary`);
    /// every other executable and shared object must be for it (see [`binary_check`]).
    pub allow_foreign_binary: Vec<String>,
    /// The job's smoke test, run in the built image before the push (see [`smoke_test`]).
    pub smoke_test: Option<archfarm_protocol::smoke_test::SmokeTest>,
}

/// The manifest a build pushed, as reported to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// Digest of the manifest bytes, which is also its reference in the registry.
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's size in bytes.
    pub size: u64,
}

/// Where a backend sends build log lines. Sending waits when the forwarder is behind, so a chatty
/// build slows down rather than growing memory without bound.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: mpsc::Sender<String>,
    /// Put before every line sent through this sink (see [`LogSink::prefixed`]).
    prefix: &'static str,
}

impl LogSink {
    /// A sink and the receiving end of its bounded channel.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(capacity);
        (LogSink { tx, prefix: "" }, rx)
    }

    /// The same log, each line sent through the returned sink starting with `prefix` (e.g. the
    /// smoke test's output, so it is told apart from the build's).
    pub fn prefixed(&self, prefix: &'static str) -> LogSink {
        LogSink {
            tx: self.tx.clone(),
            prefix,
        }
    }

    /// Sends one line (without its newline). A closed receiver is ignored: logs are best effort.
    pub async fn line(&self, line: impl Into<String>) {
        let line = if self.prefix.is_empty() {
            line.into()
        } else {
            format!("{}{}", self.prefix, line.into())
        };
        let _ = self.tx.send(line).await;
    }

    /// Sends a line marked as coming from the agent rather than the builder.
    pub async fn note(&self, line: impl AsRef<str>) {
        self.line(format!("[archfarm-agent] {}", line.as_ref()))
            .await;
    }
}

/// Why a build did not produce a pushed image.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The builder program is not installed.
    #[error(
        "{program} is not installed or not runnable ({detail}); install the {package} package"
    )]
    Missing {
        /// The program, e.g. `buildah`.
        program: String,
        /// The package that provides it.
        package: String,
        /// What happened when running it.
        detail: String,
    },
    /// A command could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A command exited unsuccessfully; `last_line` is its last line of stderr.
    #[error("{command} exited with {status}{}", last_line.as_deref().map(|l| format!(": {l}")).unwrap_or_default())]
    Failed {
        /// The command, e.g. `buildah build`.
        command: String,
        /// Its exit status, e.g. `status 1`.
        status: String,
        /// Its last non-empty stderr line.
        last_line: Option<String>,
    },
    /// The build was cancelled; its process group was killed.
    #[error("cancelled")]
    Cancelled,
    /// The build request cannot be carried out as given.
    #[error("{0}")]
    Invalid(String),
    /// A local file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Uploading the image to the registry failed.
    #[error(transparent)]
    Push(#[from] PushError),
    /// The build passed one of its limits (memory, processes, disk) and was stopped; says which.
    #[error("{0}")]
    Limit(String),
    /// Build steps cannot be isolated as configured on this machine.
    #[error(transparent)]
    Isolation(#[from] isolation::Unusable),
    /// The image holds binaries for another platform, or its layers could not be checked.
    #[error(transparent)]
    BinaryCheck(#[from] binary_check::CheckError),
    /// The job's smoke test failed in the image, did not start or did not finish in time.
    #[error(transparent)]
    SmokeTest(#[from] Box<smoke_test::Failure>),
}

/// A way to build and push images.
pub trait Backend: Send + Sync {
    /// A short name for logs, e.g. `buildah`.
    fn name(&self) -> &'static str;

    /// Checks the builder is usable and clears what an earlier, killed agent may have left behind.
    /// Called once at startup, before any build.
    fn prepare(&self) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Builds `spec`, streaming output to `log`, pushes the image by digest and reports it. When
    /// `cancel` fires the builder's processes are killed and [`BackendError::Cancelled`] returned.
    /// With a smoke test in `spec`, an image is pushed (and `Ok` returned) only once it passed.
    fn build<'a>(
        &'a self,
        spec: &'a BuildSpec,
        log: LogSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<PushedImage, BackendError>>;
}

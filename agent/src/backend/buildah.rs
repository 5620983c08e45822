//! The buildah backend, as the wire contract's "Build on the agent" section describes: a store per
//! push target under the agent's work directory (see [`super::storage`]), each `RUN` step in a runc
//! container (see [`super::isolation`]), the image written to an OCI layout and from there
//! uploaded by digest.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::cache::{self, CachePlan};
use super::isolation::{Isolation, Unusable};
use super::limits::{self, BuildCgroup, BuildLimits, Explanation, LimitWatch, Watched};
use super::process::{run_logged, run_quiet};
use super::secrets::SecretFiles;
use super::smoke_test::{self, Sandbox};
use super::storage::{ScopeLease, Storage};
use super::{Backend, BackendError, BoxFuture, BuildSpec, LogSink, PushedImage};
use crate::push::{self, Retry, Target};
use crate::registry_auth::PrivateAuthFile;

/// Builds with `buildah build`, daemonless, each `RUN` step isolated as [`Isolation`] says.
#[derive(Debug, Clone)]
pub struct Buildah {
    program: PathBuf,
    /// The stores, one per push target.
    storage: Storage,
    isolation: Isolation,
    limits: BuildLimits,
    /// Where the cgroup hierarchies are mounted ([`limits::CGROUP_ROOT`]).
    cgroup_root: PathBuf,
    /// The agent whose build cgroups these are (its instance id), so agents sharing a host keep
    /// apart and each clears only its own leftovers.
    cgroup_scope: uuid::Uuid,
    push_retry: Retry,
    /// Extra root CA (PEM) for pushes, and the directory holding it as `ca.crt` for
    /// `buildah --cert-dir` (base-image pulls).
    registry_ca: Option<(Vec<u8>, PathBuf)>,
    /// `--registry-redirect-host`: where registries may send pushes on to besides themselves.
    registry_redirect_hosts: Vec<String>,
}

impl Buildah {
    /// A backend keeping its images in `storage` (a store per push target, under the agent's own
    /// work directory, so several agents on one host do not share, and lock, one store), with
    /// `RUN` steps isolated as `isolation` says (normally [`Isolation::oci`]).
    pub fn new(storage: Storage, isolation: Isolation) -> Self {
        Buildah {
            program: PathBuf::from("buildah"),
            storage,
            isolation,
            limits: BuildLimits::default(),
            cgroup_root: PathBuf::from(limits::CGROUP_ROOT),
            cgroup_scope: uuid::Uuid::nil(),
            push_retry: Retry::default(),
            registry_ca: None,
            registry_redirect_hosts: Vec::new(),
        }
    }

    /// Lets registries redirect pushes (and name token services) on `hosts` besides themselves.
    pub fn with_registry_redirect_hosts(mut self, hosts: Vec<String>) -> Self {
        self.registry_redirect_hosts = hosts;
        self
    }

    /// Trusts the CA certificates in `pem` (also written to `cert_dir` as `ca.crt`) for registries
    /// spoken to over TLS, on top of the system's.
    pub fn with_registry_ca(mut self, pem: Vec<u8>, cert_dir: PathBuf) -> Self {
        self.registry_ca = Some((pem, cert_dir));
        self
    }

    /// Retries pushes after transient registry failures as `retry` says (default: two minutes).
    pub fn with_push_retry(mut self, retry: Retry) -> Self {
        self.push_retry = retry;
        self
    }

    /// Runs each build under `limits` (none by default; the agent sets them from its flags), in
    /// cgroups under `archfarm/<agent>` (the agent's instance id).
    pub fn with_limits(mut self, limits: BuildLimits, agent: uuid::Uuid) -> Self {
        self.limits = limits;
        self.cgroup_scope = agent;
        self
    }

    /// Uses another buildah binary than the one on `PATH`.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// The local image name of a build: unique per build so concurrent builds never collide.
    pub fn image_name(spec: &BuildSpec) -> String {
        format!("archfarm-{}", spec.build_id)
    }

    /// The local name that keeps a scope's newest image, and with it the layers a next build of
    /// the scope reuses: removing a build's own name would remove its untagged parent layers too.
    pub const KEEP_NAME: &'static str = "archfarm-newest";

    /// `buildah` with the storage options of the build's scope.
    fn command(&self, scope: &ScopeLease) -> Command {
        scope.command(&self.program)
    }

    /// The scope of a build: its push target, platform and network, whose builds alone share
    /// layers and caches. Per push target, so no team's build reuses a layer another team's left;
    /// per platform and network, because buildah 1.28's layer cache keys a step by its text and
    /// parent only: without a base image to tell them apart (`FROM scratch`) an arm64 build's
    /// layers were reused for s390x, and a step run with `--network none` was reused for the same
    /// step with the host's network (BuildKit keys both).
    pub fn scope_name(spec: &BuildSpec) -> String {
        format!(
            "{}/{} for {}, network {}",
            spec.registry, spec.repository, spec.platform, spec.network
        )
    }

    /// The arguments after `buildah <storage options>` for the build step.
    pub fn build_args(spec: &BuildSpec, dockerfile: &Path, isolation: &Isolation) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["build".into()];
        a.extend(isolation.build_args(spec.network));
        a.extend(["--platform".into(), spec.platform.to_string().into()]);
        a.extend(["-f".into(), dockerfile.as_os_str().to_owned()]);
        for (k, v) in &spec.build_args {
            a.extend(["--build-arg".into(), format!("{k}={v}").into()]);
        }
        if let Some(t) = &spec.target {
            a.extend(["--target".into(), t.into()]);
        }
        for (k, v) in &spec.image_meta.labels {
            a.extend(["--label".into(), format!("{k}={v}").into()]);
        }
        for (k, v) in &spec.image_meta.manifest_annotations {
            a.extend(["--annotation".into(), format!("{k}={v}").into()]);
        }
        a.extend(["-t".into(), Self::image_name(spec).into()]);
        a.push(spec.context_dir.as_os_str().to_owned());
        a
    }

    /// The OCI layout directory a build's image is written to.
    pub fn layout_dir(spec: &BuildSpec) -> PathBuf {
        spec.build_dir.join("oci")
    }

    async fn build_and_push(
        &self,
        spec: &BuildSpec,
        log: &LogSink,
        cancel: &CancellationToken,
        cgroup: Option<&BuildCgroup>,
        scope: &ScopeLease,
    ) -> Result<PushedImage, BackendError> {
        let dockerfile = dockerfile_path(&spec.context_dir, &spec.dockerfile)?;
        // buildah 1.28 lets some `RUN --mount` forms reach the host; refuse them before it runs.
        let text = std::fs::read(&dockerfile).map_err(|source| BackendError::Io {
            action: "cannot read",
            path: dockerfile.clone(),
            source,
        })?;
        let cache_keys =
            super::dockerfile_guard::cache_keys(&String::from_utf8_lossy(&text), &spec.context_dir);
        // Cache directories persist, so the guard's no-nesting rule holds across the scope's builds.
        let claimed = cache_keys
            .map_err(|refusal| refusal.to_string())
            .and_then(|keys| scope.claim_cache_ids(&keys).map_err(|e| e.to_string()));
        if let Err(refusal) = claimed {
            log.note(&refusal).await;
            return Err(BackendError::Invalid(refusal));
        }
        // buildah stages large temporary files in TMPDIR; keep them on the work disk and per build.
        // Its cache mounts live in `$TMPDIR/buildah-cache` (buildah 1.28): a link to the scope's
        // cache directory makes them persist between the scope's builds.
        let tmp = spec.build_dir.join("tmp");
        let cache_link = tmp.join("buildah-cache");
        tokio::fs::create_dir_all(&tmp)
            .await
            .and(tokio::fs::symlink(&scope.cache_mounts_dir, &cache_link).await)
            .map_err(|source| BackendError::Io {
                action: "cannot create",
                path: cache_link.clone(),
                source,
            })?;

        log.note(format!("building {} with buildah", spec.platform))
            .await;
        // Removed when this function returns, however it returns (or when its future is dropped).
        let credentials = super::pulls::auth_entries(spec);
        let auth_file = if credentials.is_empty() {
            None
        } else {
            Some(
                PrivateAuthFile::create_all(&spec.build_dir, &credentials).map_err(|source| {
                    BackendError::Io {
                        action: "cannot write the registry auth file in",
                        path: spec.build_dir.clone(),
                        source,
                    }
                })?,
            )
        };
        let registries = super::pulls::write(&spec.build_dir, &spec.pull).map_err(|source| {
            BackendError::Io {
                action: "cannot write the registries configuration in",
                path: spec.build_dir.clone(),
                source,
            }
        })?;
        if let Some(line) = super::pulls::summary(&spec.pull) {
            log.note(line).await;
        }
        // Removed when this function returns, like the auth file.
        let secret_files =
            SecretFiles::create(&spec.build_dir, &spec.secrets).map_err(|source| {
                BackendError::Io {
                    action: "cannot write the build secrets in",
                    path: spec.build_dir.clone(),
                    source,
                }
            })?;
        let plain_http = &spec.pull.insecure_registries;
        let plan = CachePlan::choose(&spec.cache, |registry| {
            let plain = plain_http.contains(&registry);
            cache::tcp_reachable(registry, plain)
        })
        .await;
        for note in &plan.notes {
            log.note(note).await;
        }
        // `build_args` starts with the subcommand; the registry options go right after it.
        let build_command = |plan: &CachePlan| {
            let mut build = self.command(scope);
            build.args(&registries);
            build.args(["build"]);
            build.args(secret_files.buildah_args());
            if let Some(file) = &auth_file {
                build.arg("--authfile").arg(file.path());
            }
            if let Some((_, dir)) = &self.registry_ca {
                build.arg("--cert-dir").arg(dir);
            }
            if let Some(cg) = cgroup {
                build.arg("--cgroup-parent").arg(cg.parent());
            }
            build.args(plan.build_args());
            build
                .args(
                    Self::build_args(spec, &dockerfile, &self.isolation)
                        .into_iter()
                        .skip(1),
                )
                .env("TMPDIR", &tmp);
            build
        };
        match run_logged(build_command(&plan), "buildah build", log, cancel).await {
            Ok(()) => {}
            // A cache only ever speeds a build up: build again without writing it, reusing
            // from this store's layers every step the first run finished.
            Err(e) if cache::is_cache_write_failure(&e) => {
                log.note(format!(
                    "the cache {} could not be written ({e}); building again without --cache-to",
                    plan.to.as_deref().unwrap_or_default()
                ))
                .await;
                run_logged(
                    build_command(&plan.without_cache_to()),
                    "buildah build",
                    log,
                    cancel,
                )
                .await?;
            }
            Err(e) => return Err(e),
        }
        drop(auth_file);
        drop(secret_files);

        let layout = Self::layout_dir(spec);
        let mut dest = OsString::from("oci:");
        dest.push(&layout);
        dest.push(":img");
        let mut export = self.command(scope);
        export
            .arg("push")
            .arg(Self::image_name(spec))
            .arg(dest)
            .env("TMPDIR", &tmp);
        run_logged(export, "buildah push", log, cancel).await?;

        let image = push::read_layout(&layout)?;
        super::binary_check::check_layout(&layout, &image.manifest, spec, log, cancel).await?;
        if let Some(test) = &spec.smoke_test {
            let buildah = || self.command(scope);
            let sandbox = Sandbox {
                buildah: &buildah,
                isolation: &self.isolation,
                network: spec.network,
                cgroup_parent: cgroup.map(BuildCgroup::parent),
                build_dir: &spec.build_dir,
                tmp: &tmp,
            };
            let image_name = Self::image_name(spec);
            let container = format!("archfarm-smoke-{}", spec.build_id);
            smoke_test::run(
                &sandbox,
                test,
                &spec.platform,
                (&image_name, &image),
                &container,
                log,
                cancel,
            )
            .await?;
        }
        let auth = match &spec.refresh_auth {
            Some(refresh) => refresh.or(spec.registry_auth.as_ref()).await,
            None => spec.registry_auth.clone(),
        };
        let target = Target {
            registry: spec.registry.clone(),
            repository: spec.repository.clone(),
            insecure: spec.insecure_registry,
            auth,
            ca_cert: self.registry_ca.as_ref().map(|(pem, _)| pem.clone()),
            redirect_hosts: self.registry_redirect_hosts.clone(),
        };
        log.note(format!(
            "pushing {} to {}/{}",
            image.digest, target.registry, target.repository
        ))
        .await;
        let pushed = tokio::select! {
            r = push::push_with(&image, &target, log, &self.push_retry) => r?,
            _ = cancel.cancelled() => return Err(BackendError::Cancelled),
        };
        log.note(format!(
            "pushed {}/{}@{}",
            target.registry, target.repository, pushed.digest
        ))
        .await;
        Ok(pushed)
    }
}

impl Backend for Buildah {
    fn name(&self) -> &'static str {
        "buildah"
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let mut version = Command::new(&self.program);
            version.arg("--version");
            let v = run_quiet(version, "buildah --version").await.map_err(|e| {
                BackendError::Missing {
                    program: self.program.display().to_string(),
                    package: "buildah".into(),
                    detail: e.to_string(),
                }
            })?;
            tracing::info!(version = %v.trim(), "buildah found");
            self.isolation
                .prepare(|| self.storage.probe_command())
                .await?;
            if matches!(self.isolation, Isolation::Oci { .. }) {
                let cleared = limits::clear_leftovers(&self.cgroup_root, self.cgroup_scope);
                if cleared > 0 {
                    tracing::warn!(cleared, "removed build cgroups left by an earlier agent");
                }
                limits::check(&self.cgroup_root, self.cgroup_scope, &self.limits)
                    .map_err(|e| BackendError::Isolation(Unusable(e)))?;
                tracing::info!(limits = %self.limits, "each build runs within these limits");
            } else {
                tracing::warn!(
                    "with --isolation chroot no memory, CPU or process limit applies to builds"
                );
            }
            // Working containers of builds killed with an earlier agent process; nothing runs yet, so
            // every container in this agent's own stores is a leftover.
            for (scope, mut rm) in self.storage.every_scope() {
                rm.args(["rm", "--all"]);
                if let Err(e) = run_quiet(rm, "buildah rm --all").await {
                    tracing::warn!(scope, error = %e, "could not remove leftover build containers");
                }
            }
            Ok(())
        })
    }

    fn build<'a>(
        &'a self,
        spec: &'a BuildSpec,
        log: LogSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<PushedImage, BackendError>> {
        Box::pin(async move {
            let scope = self
                .storage
                .acquire(&Self::scope_name(spec))
                .await
                .map_err(|e| BackendError::Invalid(format!("build storage: {e}")))?;
            if let Some(freed) = &scope.freed {
                log.note(freed).await;
            }
            let cgroup = match self.isolation {
                Isolation::Oci { .. } => BuildCgroup::create(
                    &self.cgroup_root,
                    self.cgroup_scope,
                    spec.build_id,
                    &self.limits,
                )
                .map_err(|source| BackendError::Io {
                    action: "cannot create the build's cgroup under",
                    path: self.cgroup_root.clone(),
                    source,
                })?,
                Isolation::Chroot => None,
            };
            // Cancelled by the caller, or by the disk watch when the build outgrows its limit.
            let stop = cancel.child_token();
            let watch = LimitWatch::start(
                Watched {
                    build: spec.build_id,
                    build_dir: spec.build_dir.clone(),
                    isolation: self.isolation.clone(),
                    cgroup: cgroup.clone(),
                    disk: self.limits.disk,
                },
                stop.clone(),
            );
            let mut result = self
                .build_and_push(spec, &log, &stop, cgroup.as_ref(), &scope)
                .await;
            let stopped = watch.finish();
            if let (Err(e), false) = (&result, cancel.is_cancelled()) {
                // The watch's reason is certain; the cgroup's counters explain only a failure of
                // the build itself (not of the push after it), and a likely cause goes after
                // buildah's own message rather than replacing it.
                let built =
                    matches!(e, BackendError::Failed { command, .. } if command == "buildah build");
                let why = match stopped {
                    Some(why) => Some(why),
                    None if built => match cgroup.as_ref().and_then(BuildCgroup::explain) {
                        Some(Explanation::Certain(why)) => Some(why),
                        Some(Explanation::Likely(why)) => Some(format!("{e}; {why}")),
                        None => None,
                    },
                    None => None,
                };
                if let Some(why) = why {
                    tracing::warn!(build.id = %spec.build_id, reason = %why, "build stopped at a limit");
                    log.note(&why).await;
                    result = Err(BackendError::Limit(why));
                }
            }
            // A build that succeeded ran every step to its end; one that failed or was cancelled
            // may have a step buildah did not get to stop, still running in its container.
            if result.is_err() {
                let reaped = self.isolation.reap(Some(&spec.build_dir)).await;
                if reaped > 0 {
                    tracing::info!(build.id = %spec.build_id, reaped, "killed the build's leftover RUN steps");
                }
            }
            // The image lives on in the registry; locally its build's name goes, while the
            // scope's newest image keeps its layers for the next build (the storage limit prunes
            // the older ones). A failed build may have no image, which is fine.
            let mut keep = self.command(&scope);
            keep.arg("tag")
                .arg(Self::image_name(spec))
                .arg(Self::KEEP_NAME);
            if run_quiet(keep, "buildah tag").await.is_ok() {
                // With two names, `rmi` only takes this one away.
                let mut untag = self.command(&scope);
                untag.arg("rmi").arg(Self::image_name(spec));
                if let Err(e) = run_quiet(untag, "buildah rmi").await {
                    tracing::warn!(build.id = %spec.build_id, error = %e, "could not remove the build's local image name");
                }
            }
            if let Some(cg) = cgroup {
                cg.remove();
            }
            if let Some(freed) = self.storage.release(scope).await {
                tracing::info!(build.id = %spec.build_id, "{freed}");
                log.note(&freed).await;
            }
            result
        })
    }
}

/// The Dockerfile inside the context; refuses paths that would leave it.
fn dockerfile_path(context: &Path, dockerfile: &str) -> Result<PathBuf, BackendError> {
    let rel = Path::new(dockerfile);
    let bad = rel.as_os_str().is_empty()
        || rel.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        });
    if bad {
        return Err(BackendError::Invalid(format!(
            "Dockerfile path '{dockerfile}' must be a relative path inside the context"
        )));
    }
    let full = context.join(rel);
    if !full.is_file() {
        return Err(BackendError::Invalid(format!(
            "Dockerfile '{dockerfile}' not found in the context"
        )));
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use archfarm_protocol::Platform;

    fn spec() -> BuildSpec {
        BuildSpec {
            build_id: uuid::Uuid::nil(),
            platform: Platform::parse("linux/arm64").unwrap(),
            build_dir: "/w/builds/b".into(),
            context_dir: "/w/builds/b/context".into(),
            dockerfile: "Dockerfile".into(),
            build_args: [
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "x=y".to_string()),
            ]
            .into(),
            target: Some("final".into()),
            registry: "127.0.0.1:5000".into(),
            repository: "team/app".into(),
            insecure_registry: true,
            registry_auth: None,
            refresh_auth: None,
            secrets: vec![],
            network: archfarm_protocol::Network::Host,
            pull: Default::default(),
            cache: Default::default(),
            image_meta: Default::default(),
            allow_foreign_binary: Vec::new(),
            smoke_test: None,
        }
    }

    #[test]
    fn build_command_matches_the_contract() {
        let s = spec();
        let args = Buildah::build_args(
            &s,
            Path::new("/w/builds/b/context/Dockerfile"),
            &Isolation::Chroot,
        );
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "build --isolation chroot --platform linux/arm64 -f /w/builds/b/context/Dockerfile \
             --build-arg A=1 --build-arg B=x=y --target final \
             -t archfarm-00000000-0000-0000-0000-000000000000 /w/builds/b/context"
        );
        assert_eq!(
            Buildah::scope_name(&s),
            "127.0.0.1:5000/team/app for linux/arm64, network host"
        );
    }

    #[test]
    fn dockerfile_must_stay_in_the_context() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/Dockerfile.x"), "FROM scratch").unwrap();
        assert!(dockerfile_path(dir.path(), "sub/Dockerfile.x").is_ok());
        for bad in ["../Dockerfile", "/etc/passwd", ""] {
            let e = dockerfile_path(dir.path(), bad).unwrap_err().to_string();
            assert!(e.contains("relative path inside the context"), "{bad}: {e}");
        }
        let e = dockerfile_path(dir.path(), "Dockerfile")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "Dockerfile 'Dockerfile' not found in the context");
    }
}

//! How a build's `RUN` steps are kept apart from the agent: each in an OCI runtime container (runc)
//! with its own PID, IPC, UTS and mount namespaces, buildah's default capability set, its default
//! seccomp profile and no-new-privileges (set by [`super::runtime_shim`], since buildah 1.28's
//! `build` cannot), inside the build's own cgroup ([`super::limits`]); or, for trusted
//! single-tenant use only, buildah's chroot isolation, which shares the host's PID, IPC and network
//! namespaces and which a root process can leave.
//!
//! With OCI isolation the containers are runc's, not children in buildah's process group: a
//! buildah killed with SIGKILL leaves its step running. Every container is therefore created under
//! one runc state directory per agent, and what a finished, failed or cancelled build left there
//! is killed and deleted by the agent itself ([`Isolation::reap`]).

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::process::Command;

use super::process::run_quiet;
pub use archfarm_protocol::Network;

/// What runs a build's `RUN` steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// An OCI runtime container per step (`buildah build --isolation oci`); the default.
    Oci {
        /// The OCI runtime binary (`runc`).
        runtime: PathBuf,
        /// runc's state directory for this agent's containers (`--root`).
        state_dir: PathBuf,
    },
    /// buildah's chroot isolation: trusted, single-tenant use only.
    Chroot,
}

/// The isolation named on the command line, before the agent knows its work directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationKind {
    /// See [`Isolation::Oci`].
    Oci,
    /// See [`Isolation::Chroot`].
    Chroot,
}

impl FromStr for IsolationKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "oci" => Ok(IsolationKind::Oci),
            "chroot" => Ok(IsolationKind::Chroot),
            other => Err(format!(
                "'{other}' is not an isolation: accepted are oci (each RUN step in a runc \
                 container, the default) and chroot (trusted single-tenant use only)"
            )),
        }
    }
}

impl fmt::Display for IsolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IsolationKind::Oci => "oci",
            IsolationKind::Chroot => "chroot",
        })
    }
}

/// Why the isolation cannot be used on this machine.
#[derive(Debug, thiserror::Error)]
#[error("OCI isolation does not work on this machine: {0}")]
pub struct Unusable(pub String);

impl Isolation {
    /// OCI isolation for an agent whose storage is `storage`: runc state in `storage/runc`, and
    /// `runtime` run through the [`super::runtime_shim`] placed in `storage/runtime`, a link to
    /// `agent` (the `archfarm-agent` executable).
    pub fn oci(storage: &Path, runtime: &Path, agent: &Path) -> Result<Isolation, Unusable> {
        let shim = super::runtime_shim::install(&storage.join("runtime"), runtime, agent)
            .map_err(|e| Unusable(e.to_string()))?;
        Ok(Isolation::Oci {
            runtime: shim,
            state_dir: storage.join("runc"),
        })
    }

    /// The `buildah build` options that select this isolation and the steps' network (one the
    /// agent allows; chroot isolation always shares the host's, so it takes no option).
    pub fn build_args(&self, network: Network) -> Vec<OsString> {
        let mut args = self.runtime_args();
        if let Isolation::Oci { .. } = self {
            args.extend(["--network".into(), network.to_string().into()]);
        }
        args
    }

    /// The options that pick the isolation and runtime, shared by `buildah build` and `buildah run`.
    fn runtime_args(&self) -> Vec<OsString> {
        match self {
            Isolation::Oci {
                runtime, state_dir, ..
            } => {
                let mut root = OsString::from("root=");
                root.push(state_dir);
                vec![
                    "--isolation".into(),
                    "oci".into(),
                    "--runtime".into(),
                    runtime.into(),
                    "--runtime-flag".into(),
                    root,
                    // The systemd manager needs a running systemd; cgroupfs works everywhere.
                    "--cgroup-manager".into(),
                    "cgroupfs".into(),
                ]
            }
            Isolation::Chroot => vec!["--isolation".into(), "chroot".into()],
        }
    }

    /// Readies the isolation at the agent's start: for OCI, [`check`](Self::check) that it works
    /// and kill what an earlier agent's builds left running (nothing of this process runs yet, so
    /// every container in its runc state is a leftover); for chroot, say loudly what it is.
    pub async fn prepare(&self, buildah: impl Fn() -> Command) -> Result<(), Unusable> {
        let Isolation::Oci { .. } = self else {
            tracing::warn!(
                isolation = "chroot",
                "RUN steps share this host's PID, IPC and network namespaces and a root step \
                 can leave its chroot: for trusted single-tenant use only; use --isolation oci \
                 on any agent that builds other people's Dockerfiles"
            );
            return Ok(());
        };
        self.check(buildah).await?;
        let reaped = self.reap(None).await;
        if reaped > 0 {
            tracing::warn!(
                reaped,
                "killed build steps left running by an earlier agent"
            );
        }
        tracing::info!(
            isolation = "oci",
            "each RUN step runs in its own runc container"
        );
        Ok(())
    }

    /// Checks, once at start, that a step really runs in a container here: the runtime exists,
    /// and a throwaway container (an empty root with the host's `/usr` mounted read-only) sees
    /// itself as PID 1. `buildah` is the storage-option prefix of every buildah command.
    async fn check(&self, buildah: impl Fn() -> Command) -> Result<(), Unusable> {
        let Isolation::Oci { runtime, .. } = self else {
            return Ok(());
        };
        let mut version = Command::new(runtime);
        version.arg("--version");
        let v = run_quiet(version, "runc --version").await.map_err(|e| {
            Unusable(format!(
                "{} does not run ({e}); install it (Debian: apt-get install runc), or start the \
                 agent with --isolation chroot for trusted single-tenant use only",
                runtime.display()
            ))
        })?;
        tracing::info!(version = %v.lines().next().unwrap_or_default(), "OCI runtime found");

        let mut from = buildah();
        from.args(["from", "scratch"]);
        let container = run_quiet(from, "buildah from scratch")
            .await
            .map_err(|e| Unusable(format!("cannot create a check container: {e}")))?;
        let container = container.trim().to_string();
        let mut probe = buildah();
        probe.arg("run");
        probe.args(self.runtime_args());
        probe.args(["--network", "none"]);
        for dir in ["/usr", "/bin", "/lib", "/lib64"] {
            if Path::new(dir).exists() {
                probe.arg("-v").arg(format!("{dir}:{dir}:ro"));
            }
        }
        probe.arg(&container).args([
            "--",
            "/bin/sh",
            "-c",
            "echo pid=$$; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
        ]);
        let result = run_quiet(probe, "buildah run (isolation check)").await;
        let mut rm = buildah();
        rm.arg("rm").arg(&container);
        if let Err(e) = run_quiet(rm, "buildah rm").await {
            tracing::warn!(error = %e, "could not remove the isolation check container");
        }
        let out = result.map_err(|e| {
            Unusable(format!(
                "a test container did not start ({e}); runc needs cgroups mounted under \
                 /sys/fs/cgroup and namespaces the kernel allows (in a container, run the agent \
                 privileged)"
            ))
        })?;
        check_probe(&out)
    }

    /// Kills and deletes the runtime's containers whose bundle lies under `under` (a build's
    /// temporary directory), or all of this agent's when `under` is `None` (at start, when nothing
    /// of this process runs yet). Returns how many it removed.
    pub async fn reap(&self, under: Option<&Path>) -> usize {
        let Isolation::Oci {
            runtime, state_dir, ..
        } = self
        else {
            return 0;
        };
        let runc = || {
            let mut c = Command::new(runtime);
            c.arg("--root").arg(state_dir);
            c
        };
        let Some(listed) = self.list().await else {
            return 0;
        };
        let mut removed = 0;
        for Listed { id, .. } in containers_under(&listed, under) {
            let mut kill = runc();
            kill.args(["kill", "--all", &id, "KILL"]);
            // A container that already stopped refuses the kill; delete --force still removes it.
            let _ = run_quiet(kill, "runc kill").await;
            let mut delete = runc();
            delete.args(["delete", "--force", &id]);
            match run_quiet(delete, "runc delete").await {
                Ok(_) => removed += 1,
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "could not delete a leftover build container")
                }
            }
        }
        removed
    }

    /// The first processes of the steps running now whose bundle lies under `under` (a build's
    /// temporary directory), for [`super::limits::LimitWatch`], which measures each step's root
    /// through `/proc/<pid>/root`: buildah mounts a step's root in a mount namespace of its own,
    /// so the path runc lists is empty from the agent's view.
    pub async fn step_pids(&self, under: &Path) -> Vec<u32> {
        let Some(listed) = self.list().await else {
            return Vec::new();
        };
        containers_under(&listed, Some(under))
            .into_iter()
            .filter(|c| c.pid > 0)
            .map(|c| c.pid)
            .collect()
    }

    /// `runc list --format json` of this agent's state directory; `None` without OCI isolation, before
    /// the first container, or when runc fails (logged).
    async fn list(&self) -> Option<String> {
        let Isolation::Oci {
            runtime, state_dir, ..
        } = self
        else {
            return None;
        };
        if !state_dir.exists() {
            return None;
        }
        let mut list = Command::new(runtime);
        list.arg("--root")
            .arg(state_dir)
            .args(["list", "--format", "json"]);
        match run_quiet(list, "runc list").await {
            Ok(out) => Some(out),
            Err(e) => {
                tracing::warn!(error = %e, "could not list the build containers");
                None
            }
        }
    }
}

/// One container in `runc list --format json`.
#[derive(Debug, serde::Deserialize)]
struct Listed {
    id: String,
    bundle: PathBuf,
    /// The first process; 0 once the container stopped.
    #[serde(default)]
    pid: u32,
}

/// The listed containers whose bundle lies under `under` (all of them for `None`).
fn containers_under(json: &str, under: Option<&Path>) -> Vec<Listed> {
    // runc prints `null` when there are none.
    let listed: Vec<Listed> = serde_json::from_str::<Option<Vec<Listed>>>(json.trim())
        .ok()
        .flatten()
        .unwrap_or_default();
    listed
        .into_iter()
        .filter(|c| match under {
            Some(dir) => c.bundle.starts_with(dir),
            None => true,
        })
        .collect()
}

/// Judges what the check container printed: it must be PID 1 of its own namespace and unable to
/// gain privileges (set by the runtime shim, [`super::runtime_shim`]).
fn check_probe(out: &str) -> Result<(), Unusable> {
    let mut lines = out.lines().map(str::trim);
    let pid = lines.next().unwrap_or_default();
    if pid != "pid=1" {
        return Err(Unusable(format!(
            "a test step saw itself as '{pid}', not as PID 1 of its own namespace"
        )));
    }
    let nnp = lines
        .find_map(|l| l.strip_prefix("NoNewPrivs:"))
        .map(str::trim);
    if nnp != Some("1") {
        return Err(Unusable(format!(
            "a test step could gain privileges (NoNewPrivs: {}): the runtime shim did not \
             harden its spec",
            nnp.unwrap_or("missing")
        )));
    }
    // 2: a filter is in force (0 none, 1 strict mode).
    let seccomp = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Seccomp:"))
        .map(str::trim);
    if seccomp != Some("2") {
        return Err(Unusable(format!(
            "a test step ran without a seccomp filter (Seccomp: {})",
            seccomp.unwrap_or("missing")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_name_what_is_accepted() {
        assert_eq!("oci".parse::<IsolationKind>(), Ok(IsolationKind::Oci));
        assert_eq!(
            " Chroot ".parse::<IsolationKind>(),
            Ok(IsolationKind::Chroot)
        );
        let e = "rootless".parse::<IsolationKind>().unwrap_err();
        assert!(
            e.contains("'rootless'") && e.contains("oci") && e.contains("chroot"),
            "{e}"
        );
    }

    #[test]
    fn oci_steps_run_in_runc_under_the_agents_state_dir() {
        let oci = Isolation::Oci {
            runtime: "runc".into(),
            state_dir: "/w/storage/runc".into(),
        };
        let args: Vec<String> = oci
            .build_args(Network::None)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "--isolation oci --runtime runc --runtime-flag root=/w/storage/runc \
             --cgroup-manager cgroupfs --network none"
        );
        assert_eq!(
            Isolation::Chroot.build_args(Network::Host),
            vec![OsString::from("--isolation"), OsString::from("chroot")]
        );
    }

    #[test]
    fn the_check_wants_pid_1_and_no_new_privileges() {
        assert!(check_probe("pid=1\nNoNewPrivs:\t1\nSeccomp:\t2\n").is_ok());
        let e = check_probe("pid=1\nNoNewPrivs:\t1\nSeccomp:\t0")
            .unwrap_err()
            .0;
        assert!(e.contains("without a seccomp filter (Seccomp: 0)"), "{e}");
        let e = check_probe("pid=4711\nNoNewPrivs:\t1").unwrap_err().0;
        assert!(e.contains("'pid=4711'"), "{e}");
        let e = check_probe("pid=1\nNoNewPrivs:\t0").unwrap_err().0;
        assert!(e.contains("NoNewPrivs: 0"), "{e}");
        let e = check_probe("pid=1").unwrap_err().0;
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn leftovers_are_found_by_their_bundle() {
        let json = r#"[{"ociVersion":"1.0.2-dev","id":"buildah-buildah1","pid":7,"status":"running",
            "bundle":"/w/builds/a/tmp/buildah1","rootfs":"/x","created":"2026-12-05T08:26:14Z","owner":"root"},
            {"ociVersion":"1.0.2-dev","id":"buildah-buildah2","pid":8,"status":"stopped",
            "bundle":"/w/builds/b/tmp/buildah2","rootfs":"/y","created":"2026-12-05T08:26:14Z","owner":"root"}]"#;
        let a = containers_under(json, Some(Path::new("/w/builds/a/tmp")));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].id, "buildah-buildah1");
        assert_eq!(a[0].pid, 7);
        assert_eq!(containers_under(json, None).len(), 2);
        assert!(containers_under("null", None).is_empty());
        assert!(containers_under("", None).is_empty());
    }
}

//! Flags and environment variables of `archfarm-agent` (see the wire contract).

use std::path::PathBuf;
use std::str::FromStr;

use archfarm_protocol::api::MAX_AGENT_CAPACITY;
use archfarm_protocol::platform::parse_list;
pub use archfarm_protocol::Secret;
use archfarm_protocol::{Platform, PlatformError};
use clap::Parser;
use reqwest::Url;

use crate::backend::isolation::{IsolationKind, Network};
use crate::backend::limits::{BuildLimits, Count, Cpus, Size};
use crate::backend::storage::DriverChoice;

/// Where the agent keeps its storage, context cache and build directories unless told otherwise.
pub const DEFAULT_WORK_DIR: &str = "/var/lib/archfarm-agent";

/// The agent's configuration: every flag has an `ARCHFARM_*` environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "archfarm-agent",
    version,
    about = "Builds container images for an archfarm coordinator on this machine's platforms."
)]
pub struct Config {
    /// Base URL of the coordinator, e.g. `http://farm.example:8080`. Required; no default.
    #[arg(long, env = "ARCHFARM_COORDINATOR", value_parser = parse_coordinator)]
    pub coordinator: Url,

    /// Shared secret that lets an agent register. Required; no default. Never printed or logged.
    #[arg(long, env = "ARCHFARM_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Secret,

    /// Name the agent registers under, unique in the farm. Default: this machine's hostname.
    #[arg(long, env = "ARCHFARM_AGENT_NAME", default_value_t = default_name())]
    pub name: String,

    /// Directory for buildah storage, the context cache and build directories.
    /// Default: `/var/lib/archfarm-agent`.
    #[arg(long, env = "ARCHFARM_WORK_DIR", default_value = DEFAULT_WORK_DIR)]
    pub work_dir: PathBuf,

    /// How many builds run at once, from 1 to 256. Default: 1.
    #[arg(long, env = "ARCHFARM_CAPACITY", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=MAX_AGENT_CAPACITY))]
    pub capacity: u32,

    /// Native platforms to offer, repeatable or comma separated (`linux/arm64,linux/arm/v7`); they
    /// replace detection. Default: the kernel's machine (`uname -m`).
    #[arg(long = "platform", env = "ARCHFARM_PLATFORM", value_delimiter = ',')]
    pub platforms: Vec<Platform>,

    /// Emulated platforms to offer: `auto` (every enabled QEMU binfmt_misc handler), `none`, or a
    /// comma-separated list, each of which needs an enabled handler. Default: `auto`.
    #[arg(long, env = "ARCHFARM_EMULATE", default_value = "auto")]
    pub emulate: Emulate,

    /// How `RUN` steps are kept apart from this machine: `oci`, each step in a runc container with
    /// its own PID, IPC, UTS and mount namespaces (the default); or `chroot`, buildah's chroot
    /// isolation, which shares the host's PID and network namespaces and which a root step can
    /// leave: for trusted single-tenant use only, and logged as such at start.
    #[arg(long, env = "ARCHFARM_ISOLATION", default_value = "oci")]
    pub isolation: IsolationKind,

    /// The network of `RUN` steps with `--isolation oci`: `host` (the agent host's network, as
    /// package installs need on most hosts; steps reach the host's loopback services and a cloud's
    /// metadata endpoint), `none` (loopback only) or `private` (a namespace behind NAT). Default:
    /// `host`.
    #[arg(long, env = "ARCHFARM_NETWORK", default_value = "host")]
    pub network: Network,

    /// The networks a job may ask for (`archfarm build --network`), comma separated; `--network`
    /// is always among them. Default: `--network` and `none` (less network is always safe with
    /// `--isolation oci`); with `--isolation chroot` only `host`.
    #[arg(
        long = "allow-network",
        env = "ARCHFARM_ALLOW_NETWORK",
        value_delimiter = ',',
        value_name = "NETWORK[,NETWORK...]"
    )]
    pub allow_network: Vec<Network>,

    /// The OCI runtime that runs steps with `--isolation oci`. Default: `runc` from `PATH`.
    #[arg(long, env = "ARCHFARM_OCI_RUNTIME", default_value = "runc")]
    pub oci_runtime: PathBuf,

    /// Memory for each build, all its `RUN` steps together (swap not extra), as `4GiB`, `512M`
    /// or `none`; a build past it fails saying so. Needs `--isolation oci`. Default: three quarters
    /// of the host's memory divided by `--capacity`.
    #[arg(long, env = "ARCHFARM_MEMORY_LIMIT", value_name = "SIZE")]
    pub memory_limit: Option<Size>,

    /// CPUs for each build, as `2`, `0.5` or `none`. Needs `--isolation oci`. Default: none (builds
    /// share the CPUs evenly by cgroup weight).
    #[arg(long, env = "ARCHFARM_CPU_LIMIT", value_name = "CPUS")]
    pub cpu_limit: Option<Cpus>,

    /// Processes and threads for each build, all its steps together, or `none`; a fork bomb
    /// fails its own build. Needs `--isolation oci`. Default: 4096.
    #[arg(long, env = "ARCHFARM_PIDS_LIMIT", value_name = "N")]
    pub pids_limit: Option<Count>,

    /// Disk for each build (its work directory, exported image and its running steps' file
    /// systems), measured every 2 s, as `20GiB` or `none`; a build past it is stopped and fails
    /// saying so. Default: 20GiB.
    #[arg(long, env = "ARCHFARM_DISK_LIMIT", value_name = "SIZE")]
    pub disk_limit: Option<Size>,

    /// The storage driver of the image stores: `overlay` (layers share their files; needs a kernel
    /// and file system that allow overlay mounts, as root on ext4 or xfs), `vfs` (a full copy per
    /// layer: slow and large, works everywhere) or `auto` (overlay when a probe at start shows it
    /// works, else vfs with a warning). Default: `auto`.
    #[arg(long, env = "ARCHFARM_STORAGE_DRIVER", default_value = "auto")]
    pub storage_driver: DriverChoice,

    /// Disk the image stores and cache mounts of all builds may take together, as `50GiB`; past
    /// it, the least recently used push targets' stores are dropped (never one a build uses).
    /// Default: half the size of the file system holding `--work-dir`.
    #[arg(long, env = "ARCHFARM_MAX_STORAGE", value_name = "SIZE")]
    pub max_storage: Option<Size>,

    /// Free space on the file system of `--work-dir` below which the agent, after dropping what
    /// it can, takes no builds (it shows as full, with the reason, until space is freed).
    /// Default: 1GiB, or 5% of the file system where that is less.
    #[arg(long, env = "ARCHFARM_MIN_FREE_DISK", value_name = "SIZE")]
    pub min_free_disk: Option<Size>,

    /// Docker `config.json` with this agent's own registry credentials, used for a build's
    /// registry when its lease carries none from the coordinator. Default: none.
    #[arg(long, env = "ARCHFARM_REGISTRY_AUTH")]
    pub registry_auth: Option<PathBuf>,

    /// PEM file of extra root CA certificates trusted for registries spoken to over TLS (pushes
    /// and buildah's base-image pulls), on top of the system's. Default: none.
    #[arg(long, env = "ARCHFARM_REGISTRY_CA_CERT")]
    pub registry_ca_cert: Option<PathBuf>,

    /// Hosts (HOST[:PORT]) other than a registry itself that the registry may redirect pushes
    /// to or name as its token service (`realm`), e.g. a CDN serving blobs; repeatable. Anything
    /// else is refused before a request goes there. Docker Hub's own hosts need no listing.
    /// Default: none.
    #[arg(
        long = "registry-redirect-host",
        env = "ARCHFARM_REGISTRY_REDIRECT_HOST",
        value_delimiter = ','
    )]
    pub registry_redirect_hosts: Vec<String>,

    /// PEM CA certificate(s) to trust for the coordinator's HTTPS certificate, on top of the
    /// system's roots (e.g. a self-signed farm CA). Default: none (the system's roots only).
    #[arg(long, env = "ARCHFARM_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// PEM client certificate (chain) to present to a coordinator started with `--client-ca`;
    /// needs `--client-key`. Default: none.
    #[arg(
        long,
        env = "ARCHFARM_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of `--client-cert`. Default: none.
    #[arg(
        long,
        env = "ARCHFARM_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

impl Config {
    /// The limits each build runs within, from the limit flags and their defaults.
    pub fn build_limits(&self) -> BuildLimits {
        BuildLimits::from_flags(
            self.memory_limit,
            self.cpu_limit,
            self.pids_limit,
            self.disk_limit,
            self.capacity,
        )
    }

    /// The TLS files to talk to the coordinator with.
    pub fn client_tls(&self) -> crate::tls::ClientTls {
        crate::tls::ClientTls {
            ca_cert: self.ca_cert.clone(),
            identity: self.client_cert.clone().zip(self.client_key.clone()),
        }
    }
}

/// Which platforms the agent offers under QEMU emulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emulate {
    /// Every platform with an enabled `qemu-*` binfmt_misc handler, minus the native ones.
    Auto,
    /// No emulated platforms.
    None,
    /// Exactly these; each must have an enabled handler.
    Only(Vec<Platform>),
}

impl FromStr for Emulate {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Emulate::Auto),
            "none" | "" => Ok(Emulate::None),
            _ => parse_list(s).map(Emulate::Only),
        }
    }
}

fn parse_coordinator(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("'{s}' is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "'{s}' must start with http:// or https:// (e.g. http://127.0.0.1:8080)"
        ));
    }
    if url.host_str().is_none() {
        return Err(format!("'{s}' has no host"));
    }
    Ok(url)
}

/// The machine's hostname from the kernel, as the default agent name.
pub fn default_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "archfarm-agent".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut full = vec![
            "archfarm-agent",
            "--coordinator",
            "http://c:8080",
            "--join-token",
            "sekrit",
        ];
        full.extend_from_slice(args);
        Config::try_parse_from(full)
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.capacity, 1);
        assert_eq!(c.work_dir, PathBuf::from(DEFAULT_WORK_DIR));
        assert_eq!(c.emulate, Emulate::Auto);
        assert_eq!(c.isolation, IsolationKind::Oci);
        assert_eq!(c.oci_runtime, PathBuf::from("runc"));
        assert_eq!(c.network, Network::Host);
        assert_eq!(c.storage_driver, DriverChoice::Auto);
        assert_eq!(c.max_storage, None);
        assert!(c.allow_network.is_empty());
        assert!(c.platforms.is_empty());
        assert!(!c.name.is_empty());
    }

    #[test]
    fn platforms_repeat_and_split_and_normalise() {
        let c = parse(&["--platform", "aarch64,linux/arm/v7", "--platform", "x86_64"]).unwrap();
        let got: Vec<String> = c.platforms.iter().map(|p| p.to_string()).collect();
        assert_eq!(got, ["linux/arm64", "linux/arm/v7", "linux/amd64"]);
        let e = parse(&["--platform", "linux/sparc"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("accepted: linux/amd64"), "{e}");
    }

    #[test]
    fn emulate_values() {
        assert_eq!(
            parse(&["--emulate", "none"]).unwrap().emulate,
            Emulate::None
        );
        let c = parse(&["--emulate", "linux/arm64,s390x"]).unwrap();
        assert_eq!(
            c.emulate,
            Emulate::Only(vec![
                Platform::parse("linux/arm64").unwrap(),
                Platform::parse("linux/s390x").unwrap()
            ])
        );
        assert!(parse(&["--emulate", "mips"]).is_err());
    }

    #[test]
    fn capacity_from_one_to_the_coordinators_maximum() {
        assert!(parse(&["--capacity", "0"]).is_err());
        assert_eq!(parse(&["--capacity", "3"]).unwrap().capacity, 3);
        let max = MAX_AGENT_CAPACITY.to_string();
        assert_eq!(
            i64::from(parse(&["--capacity", &max]).unwrap().capacity),
            MAX_AGENT_CAPACITY
        );
        let over = (MAX_AGENT_CAPACITY + 1).to_string();
        let e = parse(&["--capacity", &over]).unwrap_err().to_string();
        assert!(e.contains("1..=256"), "{e}");
    }

    #[test]
    fn allowed_networks_split_and_name_what_is_accepted() {
        let c = parse(&["--allow-network", "none,private", "--allow-network", "host"]).unwrap();
        assert_eq!(
            c.allow_network,
            [Network::None, Network::Private, Network::Host]
        );
        let e = parse(&["--allow-network", "none,bridge"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'bridge'") && e.contains("private"), "{e}");
    }

    #[test]
    fn storage_flags_take_sizes_and_drivers() {
        let c = parse(&[
            "--storage-driver",
            "vfs",
            "--max-storage",
            "1.5G",
            "--min-free-disk",
            "512M",
        ])
        .unwrap();
        assert_eq!(
            c.storage_driver,
            DriverChoice::Only(crate::backend::storage::Driver::Vfs)
        );
        assert_eq!(c.max_storage.and_then(|s| s.0.get()), Some(3 << 29));
        assert_eq!(c.min_free_disk.and_then(|s| s.0.get()), Some(512 << 20));
        let e = parse(&["--max-storage", "lots"]).unwrap_err().to_string();
        assert!(e.contains("not a size"), "{e}");
        let e = parse(&["--storage-driver", "zfs"]).unwrap_err().to_string();
        assert!(e.contains("'zfs'"), "{e}");
    }

    #[test]
    fn coordinator_must_be_http() {
        let e = Config::try_parse_from(["a", "--coordinator", "ftp://x", "--join-token", "t"])
            .unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
    }

    #[test]
    fn tls_files() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.client_tls(), crate::tls::ClientTls::default());
        let c = parse(&[
            "--ca-cert",
            "ca.pem",
            "--client-cert",
            "me.pem",
            "--client-key",
            "me.key",
        ])
        .unwrap();
        let tls = c.client_tls();
        assert_eq!(tls.ca_cert, Some(PathBuf::from("ca.pem")));
        assert_eq!(
            tls.identity,
            Some((PathBuf::from("me.pem"), PathBuf::from("me.key")))
        );
        let e = parse(&["--client-cert", "me.pem"]).unwrap_err().to_string();
        assert!(e.contains("--client-key"), "{e}");
        let e = parse(&["--client-key", "me.key"]).unwrap_err().to_string();
        assert!(e.contains("--client-cert"), "{e}");
    }

    #[test]
    fn token_never_in_debug() {
        let c = parse(&[]).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sekrit"), "{dbg}");
        assert!(dbg.contains("Secret(***)"));
        assert_eq!(c.join_token.expose(), "sekrit");
    }
}

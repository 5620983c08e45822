//! Shared helpers for the end-to-end tests.
//!
//! Everything here starts real processes (Debian's `docker-registry`, `archfarm-coordinator`,
//! `archfarm-agent`, the `archfarm` CLI, `skopeo`, `umoci`) and cleans up on drop: processes are
//! stopped with their whole process group and scratch directories are removed. Set
//! `ARCHFARM_E2E_KEEP=1` to keep the scratch directories (logs, buildah storage) for a post-mortem.
//! The archfarm binaries are looked up next to the test executable (`target/debug`), so run
//! `cargo test --workspace --no-run` first (it builds them with the features the tests share);
//! `scripts/test.sh` does.

pub mod agent;
pub mod archive;
pub mod base_images;
pub mod browser;
pub mod buildah;
pub mod checks;
pub mod context;
pub mod coordinator;
pub mod database;
pub mod ecr_proxy;
pub mod elf;
pub mod ingress;
pub mod metrics;
pub mod oci;
pub mod pg_server;
pub mod process;
pub mod protocol_agent;
pub mod realworld;
pub mod registry;
pub mod secure_registry;
pub mod tls;
pub mod token_registry;
pub mod token_server;

use std::path::Path;
use std::time::Duration;

pub use agent::{Agent, AgentOptions};
pub use browser::{artifacts_dir, Browser};
pub use buildah::Buildah;
pub use context::{repo_root, BuildContext};
pub use coordinator::{run_cli, BackgroundCli, Coordinator, CoordinatorOptions, CLI_TIMEOUT};
pub use database::Database;
pub use ecr_proxy::EcrProxy;
pub use ingress::Ingress;
pub use metrics::{scrape, Scrape};
pub use oci::ImageFs;
pub use pg_server::PgServer;
pub use process::{
    bin_path, free_port, peak_rss_bytes, processes_of, wait_until, Daemon, ProcessInfo, Scratch,
};
pub use protocol_agent::{KeepAlive, ProtocolAgent, Refused};
pub use registry::Registry;
pub use rustix::process::Signal;
pub use secure_registry::SecureRegistry;
pub use tls::{https_client, served_certificate, CertFiles, CoordinatorTls, TestCa};
pub use token_registry::TokenRegistry;

/// The four platforms of the example, with what `uname -m` says on each.
pub const HELLO_PLATFORMS: &[(&str, &str)] = &[
    ("linux/amd64", "x86_64"),
    ("linux/arm64", "aarch64"),
    ("linux/ppc64le", "ppc64le"),
    ("linux/s390x", "s390x"),
];

/// An HTTP client for loopback services: short timeouts, and never a proxy.
pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        // Long enough for an agent's lease long-poll should a test ever make one.
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build an HTTP client")
}

/// Checks what the tests need from the machine and says how to fix it, instead of failing later
/// with a puzzling buildah or skopeo error.
pub fn preflight() {
    let mut problems = Vec::new();
    for tool in ["buildah", "runc", "skopeo", "umoci", "docker-registry"] {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            problems.push(format!("{tool} is not installed"));
        }
    }
    for handler in ["aarch64", "ppc64le", "s390x"] {
        let entry = format!("/proc/sys/fs/binfmt_misc/qemu-{handler}");
        if !Path::new(&entry).exists() {
            problems.push(format!("no binfmt_misc handler {entry}"));
        }
    }
    for arch in ["amd64", "arm64", "ppc64le", "s390x"] {
        let busybox = repo_root().join(format!("examples/hello/rootfs/{arch}/bin/busybox"));
        if !busybox.is_file() {
            problems.push(format!("{} is missing", busybox.display()));
        }
    }
    if rustix::process::geteuid().as_raw() != 0 {
        problems.push("not running as root (buildah's chroot isolation needs it)".to_string());
    }
    assert!(
        problems.is_empty(),
        "this machine is not ready for the end-to-end tests: {}; run scripts/setup.sh as root \
         (scripts/test.sh does)",
        problems.join("; ")
    );
}

/// The last non-empty line of some output, trimmed.
pub fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

/// Every file under `dir` (not following links) whose bytes contain `needle`; large files skipped.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if kind.is_file() && entry.metadata().is_ok_and(|m| m.len() < 16 << 20) {
            let bytes = std::fs::read(&path).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

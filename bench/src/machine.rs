//! The machine a run happened on, for the report.

use std::process::Command;

use serde::Serialize;

/// What the report says about the machine and the code.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model, from /proc/cpuinfo.
    pub cpu: String,
    /// CPUs available to this process.
    pub cores: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// `uname -sr`.
    pub kernel: String,
    /// Operating system (`PRETTY_NAME` of /etc/os-release).
    pub os: String,
    /// `git describe --always --dirty` of the repository.
    pub commit: String,
    /// `rustc --version`.
    pub rustc: String,
    /// `buildah --version`.
    pub buildah: String,
    /// The QEMU user-mode emulator's version, when installed.
    pub qemu: String,
    /// `psql --version` (the client; the server is whatever `--postgres` names).
    pub postgres_client: String,
    /// When the run started (UTC, RFC 3339).
    pub date: String,
}

impl Machine {
    /// Reads everything it can; what cannot be read is "unknown".
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_gib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|kib| crate::stats::round(kib / 1024.0 / 1024.0, 1))
            .unwrap_or(0.0);
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "unknown".into());
        let root = archfarm_e2e::repo_root().display().to_string();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib,
            kernel: output("uname", &["-sr"]),
            os,
            commit: output("git", &["-C", &root, "describe", "--always", "--dirty"]),
            rustc: output("rustc", &["--version"]),
            buildah: output("buildah", &["--version"]),
            qemu: output("qemu-aarch64-static", &["--version"])
                .lines()
                .next()
                .unwrap_or("unknown")
                .to_string(),
            postgres_client: output("psql", &["--version"]),
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

/// A command's first line of output, or "unknown".
fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

//! Per-build limits on memory, CPU, processes and disk, so a fork bomb, a memory hog or a disk
//! filler fails its own build and nothing else.
//!
//! Memory, CPU and processes are a cgroup per build ([`BuildCgroup`]): the agent creates
//! `archfarm/<agent instance id>/<build id>` with the limits set, and buildah is told to put every `RUN` step's
//! container under it (`--cgroup-parent`; the runtime shim makes each step a child of it, see
//! [`super::runtime_shim::nest_cgroup`]), so the limits hold for the build as a whole, however
//! many steps or stages run at once. The kernel enforces them; after a failed build the agent reads
//! the cgroup's own counters (OOM kills, refused forks) to say which limit the build hit. Both the
//! cgroup v1 hierarchies (as on this project's CI machine) and the unified v2 hierarchy are handled.
//!
//! Disk has no cgroup: [`LimitWatch`] measures what the build occupies (its work directory and the
//! root file systems of its running steps) every few seconds and stops the build past its limit.
//! It also stops a build whose forks the process limit refused: the kernel contains a fork bomb
//! but does not end it.

mod amount;
mod cgroup;
mod watch;

use std::fmt;

pub use amount::{Amount, Count, Cpus, Size};
pub use cgroup::{check, clear_leftovers, BuildCgroup, Explanation, Hits, CGROUP_ROOT};
pub use watch::{disk_usage, LimitWatch, Watched};

/// How a build's cgroup path starts, as buildah's `--cgroup-parent` and the runtime see it.
pub const CGROUP_PARENT_PREFIX: &str = "/archfarm/";

/// The limits each build runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BuildLimits {
    /// Memory of all the build's steps together, in bytes (swap is not extra).
    pub memory: Option<u64>,
    /// CPU time, in thousandths of a CPU.
    pub millicpus: Option<u64>,
    /// Processes and threads of all the build's steps together.
    pub pids: Option<u64>,
    /// Disk: the build's work directory and the file systems of its running steps, in bytes.
    pub disk: Option<u64>,
}

/// The default process limit: far above what `make -j` on a large machine starts.
pub const DEFAULT_PIDS: u64 = 4096;
/// The default disk limit.
pub const DEFAULT_DISK: u64 = 20 << 30;

impl BuildLimits {
    /// The limits from the agent's flags; a flag not given takes its default: memory, three
    /// quarters of the host's divided by the builds that run at once; CPUs, none (each build's
    /// cgroup has the same CPU weight, so busy builds share the CPUs evenly and an agent running one
    /// build gives it all of them); [`DEFAULT_PIDS`] processes; [`DEFAULT_DISK`] of disk.
    pub fn from_flags(
        memory: Option<Size>,
        cpus: Option<Cpus>,
        pids: Option<Count>,
        disk: Option<Size>,
        capacity: u32,
    ) -> BuildLimits {
        let capacity = u64::from(capacity.max(1));
        let memory = match memory {
            Some(Size(a)) => a.get(),
            None => host_memory().map(|m| m / 4 * 3 / capacity),
        };
        let millicpus = cpus.and_then(|Cpus(a)| a.get());
        BuildLimits {
            memory,
            millicpus,
            pids: pids.map_or(Some(DEFAULT_PIDS), |Count(a)| a.get()),
            disk: disk.map_or(Some(DEFAULT_DISK), |Size(a)| a.get()),
        }
    }

    fn needs_cgroup(&self) -> bool {
        self.memory.is_some() || self.millicpus.is_some() || self.pids.is_some()
    }
}

impl fmt::Display for BuildLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_none = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        write!(
            f,
            "memory {}, cpus {}, processes {}, disk {}",
            or_none(self.memory.map(human)),
            or_none(self.millicpus.map(|m| format!("{}", m as f64 / 1000.0))),
            or_none(self.pids.map(|p| p.to_string())),
            or_none(self.disk.map(human)),
        )
    }
}

/// `bytes` in the largest binary unit that keeps one decimal.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if unit == "B" {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {unit}")
    }
}

fn host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_share_the_host_between_the_builds_that_run_at_once() {
        let one = BuildLimits::from_flags(None, None, None, None, 1);
        let two = BuildLimits::from_flags(None, None, None, None, 2);
        let mem = one.memory.unwrap();
        assert!(mem > 0 && mem < host_memory().unwrap(), "{mem}");
        assert!(two.memory.unwrap() <= mem / 2 + 1);
        assert_eq!(one.pids, Some(DEFAULT_PIDS));
        assert_eq!(one.disk, Some(DEFAULT_DISK));
        let none = BuildLimits::from_flags(
            Some(Size(Amount::Unlimited)),
            Some(Cpus(Amount::Unlimited)),
            Some(Count(Amount::Unlimited)),
            Some(Size(Amount::Of(1 << 30))),
            1,
        );
        assert_eq!(
            none.to_string(),
            "memory none, cpus none, processes none, disk 1.0 GiB"
        );
        assert!(!none.needs_cgroup());
    }

    #[test]
    fn humans_read_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(human(1536 << 10), "1.5 MiB");
    }
}

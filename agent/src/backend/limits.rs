//! Per-build limits on memory, CPU, processes and disk, so a fork bomb, a memory hog or a disk
//! filler fails its own build and nothing else.
//!
//! Memory, CPU and processes are a cgroup per build ([`BuildCgroup`]): the agent creates
//! `archfarm/<build id>` with the limits set, and buildah is told to put every `RUN` step's
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

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Where the cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup, under each hierarchy's root, that holds one child per build.
const PARENT: &str = "archfarm";
/// How a build's cgroup path starts, as buildah's `--cgroup-parent` and the runtime see it.
pub const CGROUP_PARENT_PREFIX: &str = "/archfarm/";
/// The CFS period the CPU limit is expressed in, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;
/// How often a running build's disk use and refused forks are looked at.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// An amount given on the command line: a number with an optional unit, or `none` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// No limit.
    Unlimited,
    /// This many (bytes for sizes, processes for counts, thousandths of a CPU for CPUs).
    Of(u64),
}

impl Amount {
    /// The limit, if any.
    pub fn get(self) -> Option<u64> {
        match self {
            Amount::Unlimited => None,
            Amount::Of(n) => Some(n),
        }
    }
}

/// A size such as `4GiB`, `512M`, `1.5G` or `1048576` (bytes); `K`/`KiB`, `M`/`MiB`, `G`/`GiB` and
/// `T`/`TiB` are all powers of 1024, as in Docker's `--memory`; `none` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub Amount);

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("none") {
            return Ok(Size(Amount::Unlimited));
        }
        let bad = || {
            format!("'{s}' is not a size: use a number with K, M, G or T (powers of 1024, e.g. 4GiB, 512M) or none")
        };
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| bad())?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => return Err(bad()),
        };
        let bytes = num * (1u64 << shift) as f64;
        if !(1.0..=u64::MAX as f64).contains(&bytes) {
            return Err(format!(
                "'{s}' is not a size above zero: use none for no limit"
            ));
        }
        Ok(Size(Amount::Of(bytes as u64)))
    }
}

/// A CPU count such as `2`, `0.5` or `none`, kept in thousandths of a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpus(pub Amount);

impl FromStr for Cpus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("none") {
            return Ok(Cpus(Amount::Unlimited));
        }
        match t.parse::<f64>() {
            Ok(n) if (0.01..=4096.0).contains(&n) => Ok(Cpus(Amount::Of((n * 1000.0) as u64))),
            _ => Err(format!(
                "'{s}' is not a CPU count: use a number from 0.01 to 4096 (e.g. 2 or 0.5) or none"
            )),
        }
    }
}

/// A process count such as `4096`, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub Amount);

impl FromStr for Count {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("none") {
            return Ok(Count(Amount::Unlimited));
        }
        match t.parse::<u64>() {
            Ok(n) if n >= 16 => Ok(Count(Amount::Of(n))),
            _ => Err(format!(
                "'{s}' is not a process limit: use a whole number of at least 16 or none"
            )),
        }
    }
}

/// The limits each build runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
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

impl Limits {
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
    ) -> Limits {
        let capacity = u64::from(capacity.max(1));
        let memory = match memory {
            Some(Size(a)) => a.get(),
            None => host_memory().map(|m| m / 4 * 3 / capacity),
        };
        let millicpus = cpus.and_then(|Cpus(a)| a.get());
        Limits {
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

impl fmt::Display for Limits {
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

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One hierarchy per controller (`/sys/fs/cgroup/memory`, `…/pids`, …), also on hybrid hosts.
    V1,
    /// The unified hierarchy mounted at the root.
    V2,
}

/// One build's cgroup, with its limits set; removed with [`BuildCgroup::remove`].
#[derive(Debug, Clone)]
pub struct BuildCgroup {
    root: PathBuf,
    layout: Layout,
    /// `archfarm/<build id>`, relative to each hierarchy's root.
    relative: PathBuf,
    limits: Limits,
}

/// What a build's cgroup counted: how often each limit stopped something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hits {
    /// Processes the kernel killed for memory.
    pub oom_kills: u64,
    /// Forks refused at the process limit.
    pub forks_refused: u64,
    /// Whether the build's memory use reached its limit (v1: its peak, `max_usage_in_bytes`, of
    /// memory or of memory and swap; v2: `max` events). v1 counts an OOM kill only in the killed
    /// step's cgroup, which is gone once the step is, and this kernel's `failcnt` stayed 0 with the
    /// memory-and-swap limit set; the peak stays with the build's cgroup.
    pub memory_at_limit: bool,
}

impl BuildCgroup {
    /// Creates the cgroup of `build` under `root` (normally [`CGROUP_ROOT`]) with `limits` set.
    /// `None` when no memory, CPU or process limit is set.
    pub fn create(root: &Path, build: Uuid, limits: &Limits) -> io::Result<Option<BuildCgroup>> {
        if !limits.needs_cgroup() {
            return Ok(None);
        }
        let layout = if root.join("cgroup.controllers").exists() {
            Layout::V2
        } else {
            Layout::V1
        };
        let cg = BuildCgroup {
            root: root.to_path_buf(),
            layout,
            relative: Path::new(PARENT).join(build.to_string()),
            limits: *limits,
        };
        let made = cg.set_limits();
        if made.is_err() {
            cg.remove();
        }
        made.map(|()| Some(cg))
    }

    /// The value for `buildah build --cgroup-parent`.
    pub fn parent(&self) -> String {
        format!("/{}", self.relative.display())
    }

    fn set_limits(&self) -> io::Result<()> {
        let l = &self.limits;
        let quota = l.millicpus.map(|m| (m * CPU_PERIOD_US / 1000).max(1000));
        match self.layout {
            Layout::V1 => {
                let dir = |ctrl: &str| self.root.join(ctrl).join(&self.relative);
                if let Some(bytes) = l.memory {
                    let d = dir("memory");
                    std::fs::create_dir_all(&d)?;
                    write(&d, "memory.limit_in_bytes", bytes)?;
                    // Where swap is accounted, the limit covers memory and swap together.
                    if d.join("memory.memsw.limit_in_bytes").exists() {
                        write(&d, "memory.memsw.limit_in_bytes", bytes)?;
                    }
                }
                if let Some(n) = l.pids {
                    let d = dir("pids");
                    std::fs::create_dir_all(&d)?;
                    write(&d, "pids.max", n)?;
                }
                if let Some(q) = quota {
                    let d = dir("cpu");
                    std::fs::create_dir_all(&d)?;
                    write(&d, "cpu.cfs_period_us", CPU_PERIOD_US)?;
                    write(&d, "cpu.cfs_quota_us", q)?;
                }
            }
            Layout::V2 => {
                // Controllers must be enabled in every ancestor's subtree_control to be usable below.
                let parent = self.root.join(PARENT);
                enable_controllers(&self.root)?;
                std::fs::create_dir_all(&parent)?;
                std::fs::write(parent.join("cgroup.subtree_control"), CONTROLLERS)?;
                let d = self.root.join(&self.relative);
                std::fs::create_dir_all(&d)?;
                if let Some(bytes) = l.memory {
                    write(&d, "memory.max", bytes)?;
                    if d.join("memory.swap.max").exists() {
                        write(&d, "memory.swap.max", 0)?;
                    }
                }
                if let Some(n) = l.pids {
                    write(&d, "pids.max", n)?;
                }
                if let Some(q) = quota {
                    std::fs::write(d.join("cpu.max"), format!("{q} {CPU_PERIOD_US}"))?;
                }
            }
        }
        Ok(())
    }

    /// What the limits stopped so far. Each counter is the largest found in the build's cgroup
    /// and the steps' cgroups below it: v2 counts an event in every ancestor, v1 (pids) only where
    /// the refused process lived.
    pub fn hits(&self) -> Hits {
        let most = |dir: PathBuf, file: &str, key: &str| -> u64 {
            let mut most = 0;
            let mut stack = vec![dir];
            while let Some(d) = stack.pop() {
                if let Some(n) = std::fs::read_to_string(d.join(file))
                    .ok()
                    .and_then(|s| counter(&s, key))
                {
                    most = most.max(n);
                }
                if let Ok(entries) = std::fs::read_dir(&d) {
                    stack.extend(
                        entries
                            .flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
            }
            most
        };
        let (memory, pids) = match self.layout {
            Layout::V1 => (
                self.root.join("memory").join(&self.relative),
                self.root.join("pids").join(&self.relative),
            ),
            Layout::V2 => (
                self.root.join(&self.relative),
                self.root.join(&self.relative),
            ),
        };
        let at_limit = match (self.layout, self.limits.memory) {
            (_, None) => false,
            (Layout::V1, Some(limit)) => {
                let peak = [
                    "memory.max_usage_in_bytes",
                    "memory.memsw.max_usage_in_bytes",
                ]
                .iter()
                .filter_map(|f| std::fs::read_to_string(memory.join(f)).ok())
                .filter_map(|s| s.trim().parse::<u64>().ok())
                .max()
                .unwrap_or(0);
                // The kernel charges in pages and batches; within 1 MiB is at the limit.
                peak + (1 << 20) >= limit
            }
            (Layout::V2, Some(_)) => most(memory.clone(), "memory.events", "max") > 0,
        };
        let oom_file = match self.layout {
            Layout::V1 => "memory.oom_control",
            Layout::V2 => "memory.events",
        };
        Hits {
            oom_kills: most(memory, oom_file, "oom_kill"),
            forks_refused: most(pids, "pids.events", "max"),
            memory_at_limit: at_limit,
        }
    }

    /// Why a failed build failed, when one of its limits stopped it.
    pub fn explain(&self) -> Option<String> {
        let hits = self.hits();
        let memory = self.limits.memory.map(human).unwrap_or_default();
        if hits.oom_kills > 0 {
            return Some(format!(
                "the build ran out of memory: the kernel killed {} process(es) at the build's \
                 memory limit of {memory} (agent --memory-limit)",
                hits.oom_kills,
            ));
        }
        if hits.forks_refused > 0 {
            return Some(format!(
                "the build hit its limit of {} processes: {} fork(s) refused (agent --pids-limit)",
                self.limits.pids.unwrap_or_default(),
                hits.forks_refused
            ));
        }
        if hits.memory_at_limit {
            return Some(format!(
                "the build ran out of memory: it reached its memory limit of {memory} (agent \
                 --memory-limit) and a step failed, most likely killed by the kernel for memory"
            ));
        }
        None
    }

    /// Removes the cgroup and whatever the runtime left below it (in every hierarchy: runc creates
    /// the build's path in each controller it uses). Errors are logged, not returned: a cgroup that
    /// cannot go yet still holds a process, which [`super::isolation::Isolation::reap`] kills.
    pub fn remove(&self) {
        let roots: Vec<PathBuf> = match self.layout {
            Layout::V2 => vec![self.root.clone()],
            Layout::V1 => std::fs::read_dir(&self.root)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default(),
        };
        for r in roots {
            let d = r.join(&self.relative);
            if d.is_dir() {
                if let Err(e) = remove_tree(&d) {
                    tracing::warn!(cgroup = %d.display(), error = %e, "could not remove a build's cgroup");
                }
            }
        }
    }
}

/// Checks at the agent's start that build cgroups can be made here, by making and removing one.
pub fn check(root: &Path, limits: &Limits) -> Result<(), String> {
    let probe = Uuid::new_v4();
    match BuildCgroup::create(root, probe, limits) {
        Ok(Some(cg)) => {
            cg.remove();
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(format!(
            "cannot create a cgroup with the build limits ({limits}) under {}: {e}; the agent \
             needs write access to the cgroup file system (run it as root, or privileged in a \
             container), or start it with --memory-limit none --cpu-limit none --pids-limit none",
            root.display()
        )),
    }
}

/// The v2 controllers the limits use.
const CONTROLLERS: &str = "+memory +pids +cpu";

/// Enables [`CONTROLLERS`] for the children of `root`. In a container the cgroup namespace's root
/// is the container's own cgroup, which holds the agent's processes, and v2 lets no cgroup with
/// processes (other than the real root) enable controllers for its children (EBUSY): the processes
/// move into a leaf of their own first, as docker-in-docker's entrypoint does. (Written for
/// Kubernetes nodes with cgroup v2; this project's machines have v1, so it is untried here.)
fn enable_controllers(root: &Path) -> io::Result<()> {
    let control = root.join("cgroup.subtree_control");
    match std::fs::write(&control, CONTROLLERS) {
        Err(e) if e.kind() == io::ErrorKind::ResourceBusy => {
            let leaf = root.join("archfarm-agent");
            std::fs::create_dir_all(&leaf)?;
            let procs = std::fs::read_to_string(root.join("cgroup.procs"))?;
            for pid in procs.split_whitespace() {
                // A process that exited meanwhile cannot move; that is fine.
                let _ = std::fs::write(leaf.join("cgroup.procs"), pid);
            }
            tracing::info!(cgroup = %leaf.display(), "moved the agent's processes to a leaf cgroup so build cgroups can have limits");
            std::fs::write(&control, CONTROLLERS)
        }
        other => other,
    }
}

fn write(dir: &Path, file: &str, value: u64) -> io::Result<()> {
    std::fs::write(dir.join(file), value.to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

/// The number after `key` in a flat-keyed cgroup file (`oom_kill 3`).
fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some(key))
            .then(|| parts.next()?.parse().ok())
            .flatten()
    })
}

/// Removes a cgroup directory and the cgroups below it, deepest first (cgroup directories are
/// removed with `rmdir` alone; their files are the kernel's).
fn remove_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

/// Watches a running build and stops it at a limit the kernel does not end by itself: disk, and
/// the process limit (a fork bomb held at the limit would otherwise spin until the job's timeout).
#[derive(Debug)]
pub struct LimitWatch {
    reason: Arc<std::sync::Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LimitWatch {
    /// Starts looking every few seconds at `cgroup`'s refused forks and, with a disk limit, at the
    /// disk use of what `dirs()` lists (the build's work directory and its running steps' root
    /// file systems); at the first refused fork or past the disk limit it cancels `stop`.
    pub fn start<F>(
        disk: Option<u64>,
        dirs: F,
        cgroup: Option<BuildCgroup>,
        stop: CancellationToken,
    ) -> LimitWatch
    where
        F: Fn() -> futures::future::BoxFuture<'static, Vec<PathBuf>> + Send + Sync + 'static,
    {
        let reason = Arc::new(std::sync::Mutex::new(None));
        let found = reason.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                }
                let mut why = cgroup
                    .as_ref()
                    .filter(|cg| cg.hits().forks_refused > 0)
                    .and_then(BuildCgroup::explain);
                if let (None, Some(limit)) = (&why, disk) {
                    let list = dirs().await;
                    let used = tokio::task::spawn_blocking(move || {
                        list.iter().map(|d| disk_usage(d)).sum::<u64>()
                    })
                    .await
                    .unwrap_or(0);
                    if used > limit {
                        why = Some(format!(
                            "the build used {} of disk, more than its limit of {} (agent \
                             --disk-limit)",
                            human(used),
                            human(limit)
                        ));
                    }
                }
                if let Some(why) = why {
                    *found.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    stop.cancel();
                    return;
                }
            }
        });
        LimitWatch { reason, task }
    }

    /// Stops watching; why the build was stopped, when the watch stopped it.
    pub fn finish(self) -> Option<String> {
        self.task.abort();
        let reason = self.reason.lock().unwrap_or_else(|p| p.into_inner()).take();
        reason.map(|r| format!("{r}; the build was stopped"))
    }
}

/// Bytes of disk the files under `dir` occupy, not crossing into other file systems and not
/// following symbolic links below `dir` itself. Files that vanish while it walks are skipped.
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    // `metadata`, not `symlink_metadata`: a running step's root is `/proc/<pid>/root`, a link.
    let Ok(top) = std::fs::metadata(dir) else {
        return 0;
    };
    let dev = top.dev();
    let mut total = top.blocks() * 512;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_dockers_memory_flag() {
        assert_eq!("4GiB".parse::<Size>(), Ok(Size(Amount::Of(4 << 30))));
        assert_eq!("512m".parse::<Size>(), Ok(Size(Amount::Of(512 << 20))));
        assert_eq!("1.5G".parse::<Size>(), Ok(Size(Amount::Of(3 << 29))));
        assert_eq!("1048576".parse::<Size>(), Ok(Size(Amount::Of(1 << 20))));
        assert_eq!("none".parse::<Size>(), Ok(Size(Amount::Unlimited)));
        for bad in ["", "4 parsecs", "G", "-1G", "0"] {
            let e = bad.parse::<Size>().unwrap_err();
            assert!(
                e.contains(&format!("'{bad}'")) && e.contains("none"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn cpus_and_counts_parse_and_name_what_is_accepted() {
        assert_eq!("2".parse::<Cpus>(), Ok(Cpus(Amount::Of(2000))));
        assert_eq!("0.5".parse::<Cpus>(), Ok(Cpus(Amount::Of(500))));
        assert_eq!("none".parse::<Cpus>(), Ok(Cpus(Amount::Unlimited)));
        assert!("0".parse::<Cpus>().unwrap_err().contains("0.01 to 4096"));
        assert_eq!("4096".parse::<Count>(), Ok(Count(Amount::Of(4096))));
        assert!("3".parse::<Count>().unwrap_err().contains("at least 16"));
    }

    #[test]
    fn defaults_share_the_host_between_the_builds_that_run_at_once() {
        let one = Limits::from_flags(None, None, None, None, 1);
        let two = Limits::from_flags(None, None, None, None, 2);
        let mem = one.memory.unwrap();
        assert!(mem > 0 && mem < host_memory().unwrap(), "{mem}");
        assert!(two.memory.unwrap() <= mem / 2 + 1);
        assert_eq!(one.pids, Some(DEFAULT_PIDS));
        assert_eq!(one.disk, Some(DEFAULT_DISK));
        let none = Limits::from_flags(
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
    fn counters_are_read_from_flat_keyed_files() {
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(counter(oom, "oom_kill"), Some(3));
        assert_eq!(counter("max 17\n", "max"), Some(17));
        assert_eq!(counter("low 0\n", "max"), None);
    }

    /// A fake hierarchy in a temporary directory: the files the agent writes and reads, laid out
    /// as v1 and as v2 (the kernel's own behaviour is tested end to end in tests/sandbox.rs).
    #[test]
    fn limits_land_in_the_files_of_either_layout_and_are_removed() {
        let limits = Limits {
            memory: Some(1 << 30),
            millicpus: Some(1500),
            pids: Some(100),
            disk: None,
        };
        let id = Uuid::nil();
        let v1 = tempfile::tempdir().unwrap();
        for c in ["memory", "pids", "cpu", "blkio"] {
            std::fs::create_dir(v1.path().join(c)).unwrap();
        }
        let cg = BuildCgroup::create(v1.path(), id, &limits)
            .unwrap()
            .unwrap();
        let rel = format!("archfarm/{id}");
        assert_eq!(cg.parent(), format!("/{rel}"));
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        let v1p = v1.path();
        assert_eq!(
            read(v1p.join("memory").join(&rel).join("memory.limit_in_bytes")),
            "1073741824"
        );
        assert_eq!(read(v1p.join("pids").join(&rel).join("pids.max")), "100");
        assert_eq!(
            read(v1p.join("cpu").join(&rel).join("cpu.cfs_quota_us")),
            "150000"
        );
        // v1 counts a refused fork in the step's own cgroup, below the build's.
        let step = v1p.join("pids").join(&rel).join("buildah1");
        std::fs::create_dir(&step).unwrap();
        std::fs::write(step.join("pids.events"), "max 4\n").unwrap();
        std::fs::write(v1p.join("pids").join(&rel).join("pids.events"), "max 0\n").unwrap();
        assert_eq!(cg.hits().forks_refused, 4);
        assert!(cg.explain().unwrap().contains("limit of 100 processes"));
        std::fs::write(step.join("pids.events"), "max 0\n").unwrap();
        assert_eq!(cg.explain(), None);
        let memory = v1p.join("memory").join(&rel);
        std::fs::write(memory.join("memory.max_usage_in_bytes"), "1073741824").unwrap();
        let why = cg.explain().unwrap();
        assert!(
            why.contains("ran out of memory") && why.contains("memory limit of 1.0 GiB"),
            "{why}"
        );

        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        let cg2 = BuildCgroup::create(v2.path(), id, &limits)
            .unwrap()
            .unwrap();
        let d = v2.path().join(&rel);
        assert_eq!(read(d.join("memory.max")), "1073741824");
        assert_eq!(read(d.join("cpu.max")), "150000 100000");
        assert_eq!(
            read(v2.path().join("archfarm/cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        std::fs::write(d.join("memory.events"), "low 0\noom_kill 1\n").unwrap();
        assert!(
            cg2.explain().unwrap().contains("ran out of memory"),
            "{:?}",
            cg2.explain()
        );
        // A real cgroup directory's files go with it; a temporary one's must go first.
        for f in [
            "memory.max",
            "pids.max",
            "cpu.max",
            "memory.events",
            "cgroup.subtree_control",
        ] {
            let _ = std::fs::remove_file(d.join(f));
        }
        cg2.remove();
        assert!(!d.exists());
    }

    #[test]
    fn disk_usage_counts_blocks_under_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), vec![1u8; 1 << 20]).unwrap();
        let used = disk_usage(dir.path());
        assert!(used >= 1 << 20, "{used}");
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
    }

    #[test]
    fn humans_read_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(human(1536 << 10), "1.5 MiB");
    }
}

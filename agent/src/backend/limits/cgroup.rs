//! A build's cgroup: made with its limits before the build, read after it to say which limit
//! stopped it, removed when it ends.

use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::{human, BuildLimits};

/// Where the cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup, under each hierarchy's root, that holds one child per build.
const PARENT: &str = "archfarm";
/// The CFS period the CPU limit is expressed in, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

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
    /// `archfarm/<agent>/<build id>`, relative to each hierarchy's root.
    relative: PathBuf,
    limits: BuildLimits,
}

/// What a build's cgroup says about why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Explanation {
    /// A limit stopped the build: the message replaces the builder's own.
    Certain(String),
    /// A limit was reached and probably caused the failure: the message goes after the builder's.
    Likely(String),
}

/// What a build's cgroup counted: how often each limit stopped something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hits {
    /// Processes the kernel killed for memory.
    pub oom_kills: u64,
    /// Forks refused at the process limit.
    pub forks_refused: u64,
    /// v1 only: whether the build's memory use reached its limit (its peak, `max_usage_in_bytes`,
    /// of memory or of memory and swap, within 1 MiB). v1 counts an OOM kill only in the killed
    /// step's cgroup, which is gone once the step is, and this kernel's `failcnt` stayed 0 with the
    /// memory-and-swap limit set; the peak stays with the build's cgroup. Page cache counts too,
    /// so this says "likely", never "certain".
    pub memory_at_limit: bool,
}

impl BuildCgroup {
    /// Creates the cgroup of `build` under `root` (normally [`CGROUP_ROOT`]) with `limits` set.
    /// `None` when no memory, CPU or process limit is set.
    pub fn create(
        root: &Path,
        agent: Uuid,
        build: Uuid,
        limits: &BuildLimits,
    ) -> io::Result<Option<BuildCgroup>> {
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
            relative: scope(agent).join(build.to_string()),
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
                // Only the controllers a limit needs: a host may not delegate the others.
                let controllers = [
                    (l.memory.is_some(), "+memory"),
                    (l.pids.is_some(), "+pids"),
                    (quota.is_some(), "+cpu"),
                ]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, c)| *c)
                .collect::<Vec<_>>()
                .join(" ");
                enable_controllers(&self.root, &controllers)?;
                let mut parent = self.root.clone();
                // Every ancestor of the build's cgroup passes the controllers down.
                for level in self
                    .relative
                    .parent()
                    .into_iter()
                    .flat_map(Path::components)
                {
                    parent.push(level);
                    std::fs::create_dir_all(&parent)?;
                    std::fs::write(parent.join("cgroup.subtree_control"), &controllers)?;
                }
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
            // v2 counts OOM kills in every ancestor, and its `max` events count reclaim too.
            (Layout::V2, Some(_)) => false,
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
    pub fn explain(&self) -> Option<Explanation> {
        let hits = self.hits();
        let memory = self.limits.memory.map(human).unwrap_or_default();
        if hits.oom_kills > 0 {
            return Some(Explanation::Certain(format!(
                "the build ran out of memory: the kernel killed {} process(es) at the build's \
                 memory limit of {memory} (agent --memory-limit)",
                hits.oom_kills,
            )));
        }
        if hits.forks_refused > 0 {
            return Some(Explanation::Certain(format!(
                "the build hit its limit of {} processes: {} fork(s) refused (agent --pids-limit)",
                self.limits.pids.unwrap_or_default(),
                hits.forks_refused
            )));
        }
        if hits.memory_at_limit {
            return Some(Explanation::Likely(format!(
                "the build most likely ran out of memory: its use reached its memory limit of \
                 {memory} (agent --memory-limit)"
            )));
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
            // A killed step's processes take a moment to leave; until then rmdir says EBUSY.
            let mut tries = 0;
            while d.is_dir() {
                match remove_tree(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::ResourceBusy && tries < 20 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    Err(e) => {
                        tracing::warn!(cgroup = %d.display(), error = %e, "could not remove a build's cgroup");
                        break;
                    }
                }
            }
        }
    }
}

/// The cgroup, relative to each hierarchy's root, holding the build cgroups of the agent whose
/// instance id is `agent`: `archfarm/<agent>`. Several agents on one host each keep to their own.
fn scope(agent: Uuid) -> PathBuf {
    Path::new(PARENT).join(agent.to_string())
}

/// Removes what an earlier process of the agent `agent` left in its cgroup scope (after a crash
/// or a kill). Called at start, once the leftover steps are killed: no build of this agent runs
/// yet, so every build cgroup there is a leftover. Returns how many it removed.
pub fn clear_leftovers(root: &Path, agent: Uuid) -> usize {
    let hierarchies: Vec<PathBuf> = if root.join("cgroup.controllers").exists() {
        vec![root.to_path_buf()]
    } else {
        std::fs::read_dir(root)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let mut removed = 0;
    for h in hierarchies {
        let Ok(builds) = std::fs::read_dir(h.join(scope(agent))) else {
            continue;
        };
        for build in builds
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        {
            match remove_tree(&build.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(cgroup = %build.path().display(), error = %e, "could not remove a leftover build cgroup")
                }
            }
        }
    }
    removed
}

/// Checks at the agent's start that build cgroups can be made here, by making and removing one.
pub fn check(root: &Path, agent: Uuid, limits: &BuildLimits) -> Result<(), String> {
    let probe = Uuid::new_v4();
    match BuildCgroup::create(root, agent, probe, limits) {
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

fn enable_controllers(root: &Path, controllers: &str) -> io::Result<()> {
    let control = root.join("cgroup.subtree_control");
    match std::fs::write(&control, controllers) {
        Err(e) if e.kind() == io::ErrorKind::ResourceBusy => {
            let leaf = root.join("archfarm-agent");
            std::fs::create_dir_all(&leaf)?;
            let procs = std::fs::read_to_string(root.join("cgroup.procs"))?;
            for pid in procs.split_whitespace() {
                // A process that exited meanwhile cannot move; that is fine.
                let _ = std::fs::write(leaf.join("cgroup.procs"), pid);
            }
            tracing::info!(cgroup = %leaf.display(), "moved the agent's processes to a leaf cgroup so build cgroups can have limits");
            std::fs::write(&control, controllers)
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let limits = BuildLimits {
            memory: Some(1 << 30),
            millicpus: Some(1500),
            pids: Some(100),
            disk: None,
        };
        let id = Uuid::nil();
        let agent = Uuid::from_u128(7);
        let v1 = tempfile::tempdir().unwrap();
        for c in ["memory", "pids", "cpu", "blkio"] {
            std::fs::create_dir(v1.path().join(c)).unwrap();
        }
        let cg = BuildCgroup::create(v1.path(), agent, id, &limits)
            .unwrap()
            .unwrap();
        let rel = format!("archfarm/{agent}/{id}");
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
        assert!(
            matches!(cg.explain(), Some(Explanation::Certain(m)) if m.contains("limit of 100 processes"))
        );
        std::fs::write(step.join("pids.events"), "max 0\n").unwrap();
        assert_eq!(cg.explain(), None);
        let memory = v1p.join("memory").join(&rel);
        std::fs::write(memory.join("memory.max_usage_in_bytes"), "1073741824").unwrap();
        let Some(Explanation::Likely(why)) = cg.explain() else {
            panic!("{:?}", cg.explain())
        };
        assert!(
            why.contains("most likely ran out of memory")
                && why.contains("memory limit of 1.0 GiB"),
            "{why}"
        );

        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        let cg2 = BuildCgroup::create(v2.path(), agent, id, &limits)
            .unwrap()
            .unwrap();
        let d = v2.path().join(&rel);
        assert_eq!(read(d.join("memory.max")), "1073741824");
        assert_eq!(read(d.join("cpu.max")), "150000 100000");
        for level in ["archfarm", &format!("archfarm/{agent}")] {
            assert_eq!(
                read(v2.path().join(level).join("cgroup.subtree_control")),
                "+memory +pids +cpu"
            );
        }
        std::fs::write(d.join("memory.events"), "low 0\noom_kill 1\n").unwrap();
        assert!(
            matches!(cg2.explain(), Some(Explanation::Certain(m)) if m.contains("ran out of memory")),
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
    fn an_agent_clears_its_own_leftovers_and_no_one_elses() {
        let v1 = tempfile::tempdir().unwrap();
        let (me, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        for (agent, build) in [(me, "b1"), (me, "b2"), (other, "b3")] {
            for ctrl in ["memory", "pids"] {
                let d = v1.path().join(ctrl).join(scope(agent)).join(build);
                std::fs::create_dir_all(d.join("buildah1")).unwrap();
            }
        }
        assert_eq!(clear_leftovers(v1.path(), me), 4);
        assert!(!v1.path().join("memory").join(scope(me)).join("b1").exists());
        assert!(v1
            .path()
            .join("pids")
            .join(scope(other))
            .join("b3")
            .is_dir());
        assert_eq!(clear_leftovers(v1.path(), me), 0);
    }
}

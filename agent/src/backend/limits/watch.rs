//! The watch over a running build: the limits the kernel does not end by itself.
//!
//! Disk use is measured by walking the build's work directory and each running step's root (as
//! `/proc/<pid>/root`). The step owns the tree being walked and may change it meanwhile, so the
//! walk never resolves a path: it opens each directory relative to its parent's descriptor with
//! `O_NOFOLLOW` (a directory swapped for a symbolic link to `/` is not entered), stays on the
//! root's file system, and gives up on a tree deeper than [`MAX_DEPTH`] or larger than
//! [`MAX_ENTRIES`], which stops the build: a tree the agent cannot measure is not given the benefit
//! of the doubt.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::cgroup::{BuildCgroup, Explanation};
use super::human;
use crate::backend::isolation::Isolation;

/// How often a running build's disk use is looked at (a walk of its files).
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// How often refused forks are looked at: a few small files, so often. On cgroup v1 the kernel
/// counts a refused fork in the step's own cgroup, which is gone once the step is; a fork bomb
/// that makes the runtime itself fail ends its step within a second or two.
const FORK_INTERVAL: Duration = Duration::from_millis(250);
/// Deepest directory nesting measured; real trees (node_modules included) stay far below.
pub const MAX_DEPTH: usize = 256;
/// Most files and directories measured in one look at one build.
pub const MAX_ENTRIES: u64 = 5_000_000;

/// Watches a running build and stops it at a limit the kernel does not end by itself: disk, and
/// the process limit (a fork bomb held at the limit would otherwise spin until the job's timeout).
/// Dropping it stops the watching.
#[derive(Debug)]
pub struct LimitWatch {
    reason: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the watch looks at.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The build, whose id a step's process must carry in its cgroup path to be measured (so a
    /// process id reused by another process is not).
    pub build: Uuid,
    /// The build's work directory.
    pub build_dir: PathBuf,
    /// Where its steps run, to find their processes.
    pub isolation: Isolation,
    /// Its cgroup, if it has one.
    pub cgroup: Option<BuildCgroup>,
    /// Its disk limit in bytes, if any.
    pub disk: Option<u64>,
}

impl LimitWatch {
    /// Starts looking every few seconds at the build's refused forks and, with a disk limit, at
    /// its disk use; at the first refused fork or past the disk limit it cancels `stop`.
    pub fn start(watched: Watched, stop: CancellationToken) -> LimitWatch {
        let reason = Arc::new(Mutex::new(None));
        let found = reason.clone();
        let task = tokio::spawn(async move {
            let mut last_disk = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(FORK_INTERVAL) => {}
                }
                let mut why = watched
                    .cgroup
                    .as_ref()
                    .filter(|cg| cg.hits().forks_refused > 0)
                    .and_then(|cg| match cg.explain() {
                        Some(Explanation::Certain(text)) => Some(text),
                        _ => None,
                    });
                if let (None, Some(limit)) = (&why, watched.disk) {
                    if last_disk.elapsed() >= WATCH_INTERVAL {
                        last_disk = tokio::time::Instant::now();
                        why = over_disk(&watched, limit).await;
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

impl Drop for LimitWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why the build is over its disk limit, or `None` while it is within it.
async fn over_disk(watched: &Watched, limit: u64) -> Option<String> {
    let pids = watched.isolation.step_pids(&watched.build_dir).await;
    let build = watched.build.to_string();
    let check_cgroup = watched.cgroup.is_some();
    let build_dir = watched.build_dir.clone();
    let measured = tokio::task::spawn_blocking(move || {
        let mut total = disk_usage(&build_dir)?;
        for pid in pids {
            if let Some(root) = step_root(pid, &build, check_cgroup) {
                total += usage_below(root)?;
            }
        }
        Ok::<u64, String>(total)
    })
    .await
    .unwrap_or(Ok(0));
    match measured {
        Ok(used) if used > limit => Some(format!(
            "the build used {} of disk, more than its limit of {} (agent --disk-limit)",
            human(used),
            human(limit)
        )),
        Ok(_) => None,
        Err(why) => Some(format!("{why} (agent --disk-limit)")),
    }
}

/// The root of a step's first process `pid`, opened; `None` when the process is gone or, with
/// `check_cgroup`, is not in the build's cgroup (its id was reused). The cgroup is read before and
/// after opening, so the descriptor is the step's.
fn step_root(pid: u32, build: &str, check_cgroup: bool) -> Option<OwnedFd> {
    let ours = || {
        !check_cgroup
            || std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(build))
    };
    if !ours() {
        return None;
    }
    // The magic link is followed on purpose: it leads to the step's root as the step sees it.
    let root = rustix::fs::open(
        format!("/proc/{pid}/root"),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    ours().then_some(root)
}

/// Bytes of disk the files under `dir` occupy (see [`usage_below`]); 0 when `dir` is missing.
pub fn disk_usage(dir: &Path) -> Result<u64, String> {
    match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => usage_below(fd),
        Err(_) => Ok(0),
    }
}

/// One directory being walked: its descriptor and the subdirectories still to enter.
struct Frame {
    fd: OwnedFd,
    subdirs: Vec<Vec<u8>>,
}

/// Bytes of disk the files under the directory `top` occupy, on `top`'s file system only, never
/// through a symbolic link. Entries that vanish while it walks are skipped. An error says why the
/// tree cannot be measured (too deep, too many entries).
fn usage_below(top: OwnedFd) -> Result<u64, String> {
    let Ok(st) = rustix::fs::fstat(&top) else {
        return Ok(0);
    };
    let dev = st.st_dev;
    let mut total = blocks(&st);
    let mut entries = 0u64;
    let mut stack = vec![Frame {
        subdirs: subdirs_of(&top, dev, &mut total, &mut entries)?,
        fd: top,
    }];
    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.subdirs.pop() else {
            stack.pop();
            continue;
        };
        let depth = stack.len();
        let frame = stack.last().expect("the frame just read");
        if depth >= MAX_DEPTH {
            return Err(format!(
                "the build's files nest deeper than {MAX_DEPTH} directories, more than the agent \
                 measures"
            ));
        }
        let Ok(name) = std::ffi::CString::new(name) else {
            continue;
        };
        // O_NOFOLLOW: a directory the step swapped for a link since it was listed is not entered.
        let Ok(fd) = rustix::fs::openat(
            &frame.fd,
            name.as_c_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        if rustix::fs::fstat(&fd).map_or(true, |s| s.st_dev != dev) {
            continue;
        }
        let subdirs = subdirs_of(&fd, dev, &mut total, &mut entries)?;
        stack.push(Frame { fd, subdirs });
    }
    Ok(total)
}

/// Adds the blocks of every entry of `dir` on file system `dev` to `total` and returns the names
/// of its subdirectories.
fn subdirs_of(
    dir: &OwnedFd,
    dev: u64,
    total: &mut u64,
    entries: &mut u64,
) -> Result<Vec<Vec<u8>>, String> {
    let mut subdirs = Vec::new();
    let Ok(listing) = Dir::read_from(dir) else {
        return Ok(subdirs);
    };
    for entry in listing.flatten() {
        let name: &CStr = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        *entries += 1;
        if *entries > MAX_ENTRIES {
            return Err(format!(
                "the build holds more than {MAX_ENTRIES} files, more than the agent measures"
            ));
        }
        let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if st.st_dev != dev {
            continue;
        }
        *total += blocks(&st);
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            subdirs.push(name.to_bytes().to_vec());
        }
    }
    Ok(subdirs)
}

fn blocks(st: &rustix::fs::Stat) -> u64 {
    u64::try_from(st.st_blocks).unwrap_or(0) * 512
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_blocks_under_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), vec![1u8; 1 << 20]).unwrap();
        let used = disk_usage(dir.path()).unwrap();
        assert!(used >= 1 << 20, "{used}");
        assert_eq!(disk_usage(&dir.path().join("missing")), Ok(0));
    }

    #[test]
    fn the_walk_follows_no_link_and_gives_up_on_deep_trees() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("inside");
        std::fs::create_dir(&inside).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("big"), vec![1u8; 4 << 20]).unwrap();
        std::os::unix::fs::symlink(&outside, inside.join("link")).unwrap();
        assert!(
            disk_usage(&inside).unwrap() < 1 << 20,
            "the link was followed"
        );
        // A tree deeper than PATH_MAX is measured through descriptors, until MAX_DEPTH.
        let mut deep = inside.clone();
        for _ in 0..MAX_DEPTH + 1 {
            deep = deep.join("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let e = disk_usage(&inside).unwrap_err();
        assert!(e.contains("deeper than 256 directories"), "{e}");
    }
}

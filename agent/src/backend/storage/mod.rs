//! Where builds keep their images and caches, and how big that gets.
//!
//! Each push target (the lease's registry and repository, its *scope*) has a containers-storage of
//! its own under `WORK_DIR/storage/scopes/` (see [`scope`]): a layer cache shared by every build on
//! an agent would let one team's build plant a layer that another team's identical `RUN` line
//! reuses. Stores use overlay where the kernel allows it ([`driver`]). The stores together are kept
//! under `--max-storage`: before and after each build, the least recently used scopes that no
//! build holds are removed whole ([`lru`]), and a scope alone over the limit has its unused images
//! pruned. A scope a build holds is never touched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::process::Command;

use crate::backend::limits::human;
use crate::backend::process::run_quiet;

pub mod disk;
pub mod driver;
pub mod lru;
pub mod scope;

pub use driver::{Driver, DriverChoice};
use scope::ScopeDir;

/// The scope the start-up checks (isolation probe, overlay probe) use; no push target hashes to a
/// name with a dash.
const PROBE_SCOPE: &str = "probe";

/// Why the storage cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file operation failed.
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
    /// `--storage-driver overlay` was asked for and does not work here.
    #[error(
        "the overlay storage driver does not work here ({0}); use --storage-driver vfs or auto"
    )]
    OverlayUnusable(String),
    /// A build's cache mounts nest with ones an earlier build of the scope used.
    #[error("{0}")]
    CacheIds(String),
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// How much the stores hold, as heartbeats report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes the scopes occupy, as last measured (before or after a build).
    pub used_bytes: u64,
    /// `--max-storage`.
    pub limit_bytes: u64,
    /// How many scopes there are.
    pub scopes: usize,
}

/// The agent's build storage. Cheap to clone; clones share the bookkeeping.
#[derive(Debug, Clone)]
pub struct Storage(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// `WORK_DIR/storage`.
    dir: PathBuf,
    /// The buildah binary housekeeping runs.
    program: PathBuf,
    /// The driver every scope uses.
    driver: Driver,
    /// `--max-storage` in bytes.
    max_bytes: u64,
    /// Free space below which no build is taken (`--min-free-disk`).
    min_free: u64,
    /// Builds holding each scope (by directory name).
    in_use: Mutex<HashMap<String, usize>>,
    /// One housekeeping pass at a time, and no scope acquired while one runs.
    housekeeping: tokio::sync::Mutex<()>,
    /// Cache-key records are read and written by one build at a time.
    cache_ids: Mutex<()>,
    /// Bytes last measured, and the number of scopes.
    used: AtomicU64,
    scopes: AtomicU64,
}

/// A scope held by one build: its store, and its persistent cache directory. Dropping it lets
/// housekeeping touch the scope again.
#[derive(Debug)]
pub struct ScopeLease {
    /// buildah's `--root`.
    pub root: PathBuf,
    /// buildah's `--runroot`.
    pub runroot: PathBuf,
    /// Where `RUN --mount=type=cache` directories persist (`$TMPDIR/buildah-cache` points here).
    pub cache_mounts_dir: PathBuf,
    /// The store's driver.
    pub driver: Driver,
    /// What making room for this build freed, for the build's log.
    pub freed: Option<String>,
    dir: ScopeDir,
    id: String,
    storage: Arc<Inner>,
}

impl Drop for ScopeLease {
    fn drop(&mut self) {
        let mut in_use = self.storage.in_use.lock().expect("in-use map");
        if let Some(n) = in_use.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                in_use.remove(&self.id);
            }
        }
    }
}

impl ScopeLease {
    /// A buildah command on this scope's store.
    pub fn command(&self, program: &Path) -> Command {
        buildah(program, &self.root, &self.runroot, self.driver)
    }

    /// Checks `keys` (a Dockerfile's cache keys) against those earlier builds of the scope used,
    /// and records the new ones; refuses keys that nest with a recorded one.
    pub fn claim_cache_ids(&self, keys: &[String]) -> Result<(), StorageError> {
        let _one = self.storage.cache_ids.lock().expect("cache-id lock");
        let new =
            scope::check_cache_ids(&self.dir.cache_ids(), keys).map_err(StorageError::CacheIds)?;
        self.dir
            .record_cache_ids(&new)
            .map_err(io("cannot record the cache ids in", &self.dir.0))
    }
}

/// `buildah` with the storage options of one store.
fn buildah(program: &Path, root: &Path, runroot: &Path, driver: Driver) -> Command {
    let mut c = Command::new(program);
    c.arg("--root")
        .arg(root)
        .arg("--runroot")
        .arg(runroot)
        .args(["--storage-driver", driver.as_str()]);
    c
}

impl Storage {
    /// Opens the storage under `dir` (`WORK_DIR/storage`) with `program` as buildah: picks the
    /// driver (`Auto` probes overlay once), removes scopes created with the other driver (their
    /// store cannot be opened with this one) and the single store of agents before scopes, and
    /// measures what is left. `max_bytes`/`min_free` default from the file system's size.
    pub async fn open(
        program: &Path,
        dir: &Path,
        choice: DriverChoice,
        max_bytes: Option<u64>,
        min_free: Option<u64>,
    ) -> Result<Storage, StorageError> {
        let scopes = dir.join("scopes");
        std::fs::create_dir_all(&scopes).map_err(io("cannot create", &scopes))?;
        let driver = match choice {
            DriverChoice::Only(Driver::Vfs) => Driver::Vfs,
            DriverChoice::Only(Driver::Overlay) => {
                driver::probe_overlay(program, &dir.join("overlay-probe"))
                    .await
                    .map_err(StorageError::OverlayUnusable)?;
                Driver::Overlay
            }
            DriverChoice::Auto => {
                match driver::probe_overlay(program, &dir.join("overlay-probe")).await {
                    Ok(()) => Driver::Overlay,
                    Err(why) => {
                        tracing::warn!(reason = %why, "the overlay storage driver does not work here; using vfs, which copies every layer whole");
                        Driver::Vfs
                    }
                }
            }
        };
        for old in ["root", "runroot"] {
            let path = dir.join(old);
            if path.exists() {
                tracing::info!(path = %path.display(), "removing the single image store of an older agent");
                scope::remove_tree(&path).map_err(io("cannot remove", &path))?;
            }
        }
        for entry in std::fs::read_dir(&scopes).map_err(io("cannot read", &scopes))? {
            let Ok(entry) = entry else { continue };
            let sd = ScopeDir(entry.path());
            if sd.driver() != Some(driver) {
                tracing::info!(scope = %sd.name(), was = ?sd.driver().map(Driver::as_str), now = %driver,
                    "removing a scope made with another storage driver");
                scope::remove_tree(&sd.0).map_err(io("cannot remove", &sd.0))?;
            }
        }
        let space = disk::space(dir).map_err(io("cannot read the file system of", dir))?;
        let storage = Storage(Arc::new(Inner {
            dir: dir.to_path_buf(),
            program: program.to_path_buf(),
            driver,
            max_bytes: max_bytes.unwrap_or_else(|| disk::default_max(space)),
            min_free: min_free.unwrap_or_else(|| disk::default_min_free(space)),
            in_use: Mutex::default(),
            housekeeping: tokio::sync::Mutex::default(),
            cache_ids: Mutex::default(),
            used: AtomicU64::new(0),
            scopes: AtomicU64::new(0),
        }));
        storage.measure().await;
        let usage = storage.usage();
        tracing::info!(driver = %driver, used = %human(usage.used_bytes), max_storage = %human(usage.limit_bytes),
            scopes = usage.scopes, min_free_disk = %human(storage.0.min_free), "build storage ready");
        Ok(storage)
    }

    /// The driver every store uses.
    pub fn driver(&self) -> Driver {
        self.0.driver
    }

    /// What the stores hold, as last measured, and the limit.
    pub fn usage(&self) -> Usage {
        Usage {
            used_bytes: self.0.used.load(Ordering::Relaxed),
            limit_bytes: self.0.max_bytes,
            scopes: self.0.scopes.load(Ordering::Relaxed) as usize,
        }
    }

    /// A buildah command on the store of the start-up checks.
    pub fn probe_command(&self) -> Command {
        let sd = self.scope_dir(PROBE_SCOPE);
        let _ = sd.create(PROBE_SCOPE, self.0.driver);
        buildah(&self.0.program, &sd.root(), &sd.runroot(), self.0.driver)
    }

    /// buildah commands on every scope's store, for start-up cleanup (nothing runs yet).
    pub fn every_scope(&self) -> Vec<(String, Command)> {
        self.scope_dirs()
            .into_iter()
            .map(|sd| {
                let c = buildah(&self.0.program, &sd.root(), &sd.runroot(), self.0.driver);
                (sd.name(), c)
            })
            .collect()
    }

    fn scope_dir(&self, id: &str) -> ScopeDir {
        ScopeDir(self.0.dir.join("scopes").join(id))
    }

    fn scope_dirs(&self) -> Vec<ScopeDir> {
        let Ok(entries) = std::fs::read_dir(self.0.dir.join("scopes")) else {
            return Vec::new();
        };
        entries.flatten().map(|e| ScopeDir(e.path())).collect()
    }

    /// Holds the scope `name` (registry/repository) for one build: creates it if need be, marks it
    /// used now, and makes room in the storage first by dropping other scopes no build holds.
    pub async fn acquire(&self, name: &str) -> Result<ScopeLease, StorageError> {
        let _one = self.0.housekeeping.lock().await;
        let id = scope::dir_name(name);
        let sd = self.scope_dir(&id);
        sd.create(name, self.0.driver)
            .and_then(|()| sd.touch())
            .map_err(io("cannot create the storage scope", &sd.0))?;
        // Before the scope counts as held, so that it may be pruned when no other build holds it;
        // no other acquire runs meanwhile (the housekeeping lock), so nothing else takes it.
        let freed = self.make_room(Some(&id), self.0.max_bytes).await;
        *self
            .0
            .in_use
            .lock()
            .expect("in-use map")
            .entry(id.clone())
            .or_default() += 1;
        Ok(ScopeLease {
            root: sd.root(),
            runroot: sd.runroot(),
            cache_mounts_dir: sd.cache(),
            driver: self.0.driver,
            freed,
            dir: sd,
            id,
            storage: self.0.clone(),
        })
    }

    /// After a build: lets go of its scope and gets back under the limit if the build took the
    /// storage over it. The scope just used is the one most likely used next: pruned if need be,
    /// never dropped.
    pub async fn release(&self, lease: ScopeLease) -> Option<String> {
        let id = lease.id.clone();
        // The lock first, then the lease: in between, housekeeping elsewhere (another build's
        // acquire, the disk-full check) could otherwise drop the scope just used whole.
        let _one = self.0.housekeeping.lock().await;
        drop(lease);
        self.make_room(Some(&id), self.0.max_bytes).await
    }

    /// Why the disk is too full for a build, after freeing what can be freed (scopes no build
    /// holds, least recently used first); `None` when there is room.
    pub async fn disk_full(&self) -> Option<String> {
        let space = disk::space(&self.0.dir).ok()?;
        disk::too_full(space, self.0.min_free, &self.0.dir)?;
        let _one = self.0.housekeeping.lock().await;
        let deficit = self.0.min_free - space.free;
        let limit = self.usage().used_bytes.saturating_sub(deficit);
        self.make_room(None, limit).await;
        let space = disk::space(&self.0.dir).ok()?;
        disk::too_full(space, self.0.min_free, &self.0.dir)
    }

    /// Measures every scope and updates [`Storage::usage`]; returns the scopes' sizes.
    async fn measure(&self) -> Vec<(ScopeDir, u64)> {
        let dirs = self.scope_dirs();
        let sized = tokio::task::spawn_blocking(move || {
            dirs.into_iter()
                .map(|sd| {
                    // A tree this walk cannot measure (deeper or larger than its bounds) is
                    // not counted: counted as huge, one build's cache could evict every other
                    // store. Such a scope is logged, and the disk-full check still sees the disk.
                    let bytes = match crate::backend::limits::disk_usage(&sd.0) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(scope = %sd.name(), error = %e, "could not measure a storage scope");
                            0
                        }
                    };
                    (sd, bytes)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let total: u64 = sized.iter().map(|(_, b)| *b).sum();
        self.0.used.store(total, Ordering::Relaxed);
        self.0.scopes.store(sized.len() as u64, Ordering::Relaxed);
        sized
    }

    /// Drops and prunes scopes (never one a build holds; `keep` is pruned, never dropped) until
    /// the stores fit `limit`. Returns what it freed, when it did something. Called holding the
    /// housekeeping lock.
    async fn make_room(&self, keep: Option<&str>, limit: u64) -> Option<String> {
        let sized = self.measure().await;
        let before = self.usage().used_bytes;
        if before <= limit {
            return None;
        }
        let stats: Vec<lru::ScopeStat> = {
            let in_use = self.0.in_use.lock().expect("in-use map");
            sized
                .iter()
                .map(|(sd, bytes)| {
                    let id =
                        sd.0.file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned();
                    lru::ScopeStat {
                        in_use: in_use.get(&id).is_some_and(|n| *n > 0),
                        keep: keep == Some(id.as_str()) || id == PROBE_SCOPE,
                        last_used: sd.last_used(),
                        bytes: *bytes,
                        id,
                    }
                })
                .collect()
        };
        let plan = lru::plan(&stats, limit);
        let mut done = Vec::new();
        for id in &plan.drop {
            let (sd, bytes) = sized
                .iter()
                .find(|(sd, _)| sd.0.ends_with(id))
                .expect("planned scope");
            let name = sd.name();
            let path = sd.0.clone();
            match tokio::task::spawn_blocking(move || scope::remove_tree(&path)).await {
                Ok(Ok(())) => {
                    tracing::info!(scope = %name, freed = %human(*bytes), "dropped the least recently used storage scope");
                    done.push(format!("dropped scope {name} ({})", human(*bytes)));
                }
                Ok(Err(e)) => {
                    tracing::warn!(scope = %name, error = %e, "could not drop a storage scope")
                }
                Err(e) => {
                    tracing::warn!(scope = %name, error = %e, "could not drop a storage scope")
                }
            }
        }
        for id in &plan.prune {
            let (sd, bytes) = sized
                .iter()
                .find(|(sd, _)| sd.0.ends_with(id))
                .expect("planned scope");
            let name = sd.name();
            // What the other scopes take: the pruned one must fit in what they leave.
            let others: u64 = sized
                .iter()
                .filter(|(o, _)| o.0 != sd.0)
                .map(|(_, b)| *b)
                .sum();
            // Dangling images first (the builds before the newest); everything when that is not
            // enough: the scope's cache mounts stay, its layers are built again.
            for args in [&["rmi", "--prune"][..], &["rmi", "--all", "--force"]] {
                let mut c = buildah(&self.0.program, &sd.root(), &sd.runroot(), self.0.driver);
                c.args(args);
                if let Err(e) = run_quiet(c, "buildah rmi").await {
                    tracing::warn!(scope = %name, error = %e, "could not prune a storage scope");
                }
                let sd2 = sd.clone();
                let now = tokio::task::spawn_blocking(move || {
                    crate::backend::limits::disk_usage(&sd2.0).unwrap_or(0)
                })
                .await
                .unwrap_or(0);
                if others.saturating_add(now) <= limit {
                    break;
                }
            }
            tracing::info!(scope = %name, was = %human(*bytes), "pruned the images of a storage scope alone over the limit");
            done.push(format!("pruned scope {name} (was {})", human(*bytes)));
        }
        let after = self.measure().await;
        let after: u64 = after.iter().map(|(_, b)| *b).sum();
        if done.is_empty() {
            tracing::warn!(used = %human(before), limit = %human(limit), "the build storage is over its limit and every scope in it is in use");
            return None;
        }
        Some(format!(
            "storage over its limit ({} of {}): {}; {} now",
            human(before),
            human(self.0.max_bytes),
            done.join(", "),
            human(after)
        ))
    }
}

//! The agent's work directory: buildah storage, the context cache and per-build scratch space.
//!
//! ```text
//! WORK_DIR/agent.lock        held (flock) while the agent runs: one agent per work directory
//! WORK_DIR/storage/          buildah --root/--runroot
//! WORK_DIR/contexts/<hex>.tar.gz   verified context archives, by digest
//! WORK_DIR/builds/<build id>/      context/, oci/, tmp/ of one build; removed afterwards
//! ```

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{flock, FlockOperation};
use uuid::Uuid;

/// An agent's work directory, locked against a second agent for as long as any clone lives.
#[derive(Debug, Clone)]
pub struct WorkDir {
    root: PathBuf,
    /// Keeps the flock; released when the last clone is dropped.
    _lock: Arc<File>,
}

impl WorkDir {
    /// Creates the layout under `root` (mode 0700: contexts may hold private sources), takes the lock
    /// and removes what a previous agent process left mid-build.
    pub fn create(root: &Path) -> io::Result<Self> {
        let mut db = DirBuilder::new();
        db.recursive(true).mode(0o700);
        for sub in ["", "storage", "contexts", "builds"] {
            db.create(root.join(sub))?;
        }
        let lock = File::create(root.join("agent.lock"))?;
        flock(&lock, FlockOperation::NonBlockingLockExclusive).map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                "another archfarm-agent is using this work directory; give each agent its own --work-dir",
            )
        })?;
        let wd = WorkDir {
            root: root.to_path_buf(),
            _lock: Arc::new(lock),
        };
        // Holding the lock, nothing else can be using these.
        for entry in std::fs::read_dir(wd.builds())?.flatten() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
        for entry in std::fs::read_dir(wd.contexts())?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".partial") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(wd)
    }

    /// Deletes cached context archives not used for `max_age` (a cache hit refreshes the file's
    /// modification time, so an archive in use is never old).
    pub async fn prune_contexts(&self, max_age: std::time::Duration) {
        let dir = self.contexts();
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !name.to_string_lossy().ends_with(".tar.gz") {
                    continue;
                }
                let age = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                if age.is_some_and(|a| a > max_age) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        })
        .await;
    }

    /// The work directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// buildah's storage.
    pub fn storage(&self) -> PathBuf {
        self.root.join("storage")
    }

    /// The context archive cache.
    pub fn contexts(&self) -> PathBuf {
        self.root.join("contexts")
    }

    /// Parent of the per-build directories.
    pub fn builds(&self) -> PathBuf {
        self.root.join("builds")
    }

    /// One build's scratch directory.
    pub fn build_dir(&self, build: Uuid) -> PathBuf {
        self.builds().join(build.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_layout_cleans_leftovers_and_locks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("w");
        {
            let wd = WorkDir::create(&root).unwrap();
            std::fs::create_dir_all(wd.build_dir(Uuid::nil()).join("context")).unwrap();
            std::fs::write(wd.contexts().join(".abc.partial"), "x").unwrap();
            std::fs::write(wd.contexts().join("abc.tar.gz"), "x").unwrap();
            let e = WorkDir::create(&root).unwrap_err();
            assert!(e.to_string().contains("another archfarm-agent"), "{e}");
        }
        let wd = WorkDir::create(&root).unwrap();
        assert!(!wd.build_dir(Uuid::nil()).exists());
        assert!(!wd.contexts().join(".abc.partial").exists());
        assert!(
            wd.contexts().join("abc.tar.gz").exists(),
            "verified archives stay cached"
        );
        // Old archives go, fresh ones stay.
        let old = wd.contexts().join("old.tar.gz");
        std::fs::write(&old, "x").unwrap();
        let week_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(8 * 24 * 3600);
        std::fs::File::options()
            .append(true)
            .open(&old)
            .unwrap()
            .set_modified(week_ago)
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(wd.prune_contexts(std::time::Duration::from_secs(7 * 24 * 3600)));
        assert!(!old.exists());
        assert!(wd.contexts().join("abc.tar.gz").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&root).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}

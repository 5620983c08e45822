//! The agent's work directory: buildah storage, the context cache and per-build scratch space.
//!
//! ```text
//! WORK_DIR/agent.lock        held (flock) while the agent runs: one agent per work directory
//! WORK_DIR/instance-id       this installation's id (a UUID), sent with every registration
//! WORK_DIR/agent-token       (0600) the agent's own token, so a restart re-registers without a join token
//! WORK_DIR/storage/scopes/<hex>/   an image store and cache mounts per push target
//!                                  (see `backend::storage`), runc state and the runtime shim
//! WORK_DIR/contexts/<hex>.tar.gz   verified context archives, by digest
//! WORK_DIR/builds/<build id>/      context/, oci/, tmp/ of one build; removed afterwards
//!                                  (auth-<random>/auth.json, 0700/0600: the registry credential
//!                                  for buildah, only while `buildah build` runs)
//! WORK_DIR/registry-ca/ca.crt      --registry-ca-cert, for `buildah --cert-dir`
//! ```

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{flock, FlockOperation};
use uuid::Uuid;

use crate::config::Secret;

/// The file, in the work directory, holding the installation's id.
pub const INSTANCE_ID_FILE: &str = "instance-id";

/// The file, in the work directory, holding the token the coordinator gave at registration.
pub const AGENT_TOKEN_FILE: &str = "agent-token";

/// An agent's work directory, locked against a second agent for as long as any clone lives.
#[derive(Debug, Clone)]
pub struct WorkDir {
    root: PathBuf,
    instance_id: Uuid,
    /// Keeps the flock; released when the last clone is dropped.
    _lock: Arc<File>,
}

impl WorkDir {
    /// Creates the layout under `root` (mode 0700: contexts may hold private sources), takes the lock,
    /// reads (or creates) the instance id and removes what a previous agent process left mid-build.
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
            instance_id: load_instance_id(root)?,
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

    /// The stable id of this installation, kept in [`INSTANCE_ID_FILE`]: the coordinator tells a
    /// restart of this agent from another machine registering under the same name by it.
    pub fn instance_id(&self) -> Uuid {
        self.instance_id
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

    /// The agent token kept from the last registration, if any: a restarted agent presents it to
    /// register again, so a join token limited to one use is not needed twice.
    pub fn saved_token(&self) -> Option<Secret> {
        let text = std::fs::read_to_string(self.root.join(AGENT_TOKEN_FILE)).ok()?;
        text.trim().parse().ok()
    }

    /// Keeps the agent token (mode 0600, written through a rename).
    pub fn save_token(&self, token: &Secret) -> io::Result<()> {
        write_private(&self.root.join(AGENT_TOKEN_FILE), token.expose())
    }

    /// Forgets the kept agent token (the coordinator no longer accepts it).
    pub fn forget_token(&self) {
        let _ = std::fs::remove_file(self.root.join(AGENT_TOKEN_FILE));
    }
}

/// Reads the instance id from `root`, or writes a new one when the file is missing or holds no
/// usable id (with a warning in the latter case). Called with the work directory's lock held.
fn load_instance_id(root: &Path) -> io::Result<Uuid> {
    let path = root.join(INSTANCE_ID_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let parsed = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| Uuid::try_parse(s.trim()).ok())
                .filter(|id| !id.is_nil());
            if let Some(id) = parsed {
                return Ok(id);
            }
            let id = Uuid::new_v4();
            tracing::warn!(
                path = %path.display(),
                new_id = %id,
                "the instance id file does not hold a UUID; replacing it with a new id (the \
                 coordinator sees a new installation of this agent)"
            );
            write_instance_id(&path, id)?;
            Ok(id)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = Uuid::new_v4();
            write_instance_id(&path, id)?;
            tracing::info!(instance.id = %id, "created a new instance id");
            Ok(id)
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

/// Writes `id` to `path`; a crash leaves the old file or the new one, never half of one.
fn write_instance_id(path: &Path, id: Uuid) -> io::Result<()> {
    write_private(path, &id.to_string())
}

/// Writes `text` and a newline to `path` (mode 0600) through a temporary file and a rename.
fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("partial");
    let res = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{text}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_token_is_kept_privately_and_forgotten() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let wd = WorkDir::create(tmp.path()).unwrap();
        assert!(wd.saved_token().is_none());
        wd.save_token(&Secret::new("afa_0123")).unwrap();
        assert_eq!(wd.saved_token().unwrap().expose(), "afa_0123");
        let mode = std::fs::metadata(tmp.path().join(AGENT_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        wd.forget_token();
        assert!(wd.saved_token().is_none());
    }

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

    #[test]
    fn instance_id_is_created_once_kept_and_replaced_when_garbage() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("w");
        let file = root.join(INSTANCE_ID_FILE);
        let first = WorkDir::create(&root).unwrap().instance_id();
        assert!(!first.is_nil());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!("{first}\n")
        );
        assert_eq!(
            WorkDir::create(&root).unwrap().instance_id(),
            first,
            "kept across restarts"
        );
        // Edited by hand, without the newline: still read.
        let edited = Uuid::new_v4();
        std::fs::write(&file, edited.to_string()).unwrap();
        assert_eq!(WorkDir::create(&root).unwrap().instance_id(), edited);
        for garbage in [
            &b"not a uuid\n"[..],
            b"",
            b"\xff\xfe",
            b"00000000-0000-0000-0000-000000000000",
        ] {
            std::fs::write(&file, garbage).unwrap();
            let id = WorkDir::create(&root).unwrap().instance_id();
            assert!(!id.is_nil() && id != edited && id != first);
            assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{id}\n"));
        }
        assert!(!root.join("instance-id.partial").exists());
    }
}

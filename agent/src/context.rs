//! Build contexts: download once per digest into a cache, verify, and unpack safely.
//!
//! A context archive comes from whoever submitted the job, so unpacking treats it as hostile: nothing
//! may land outside the build's directory, no device nodes or FIFOs, and its size is capped so a
//! gzip bomb cannot fill the agent's disk.

use std::fs::File;
use std::io::BufReader;
use std::path::{Component, Path, PathBuf};

use archfarm_protocol::Digest;
use flate2::read::GzDecoder;
use tar::EntryType;

use crate::client::{ClientError, CoordinatorClient};
use crate::config::Secret;

/// Caps on what one context may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of file contents. Default 2 GiB.
    pub max_bytes: u64,
    /// Number of archive entries. Default 100 000.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 2 << 30,
            max_entries: 100_000,
        }
    }
}

/// What a successful unpack produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries unpacked.
    pub entries: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
}

/// Why a context could not be fetched or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The download failed.
    #[error("cannot download context {digest}: {source}")]
    Download {
        /// The context.
        digest: Digest,
        /// The cause.
        #[source]
        source: ClientError,
    },
    /// The bytes received do not hash to the digest asked for.
    #[error("context {expected} arrived with digest {actual}; the download was discarded")]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// The sha256 of what arrived.
        actual: Digest,
    },
    /// A local file operation failed.
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
    /// The archive is not a readable gzip'd tar.
    #[error("the context archive is not a valid gzip'd tar: {0}")]
    Corrupt(String),
    /// An entry was refused; `entry` names it as the archive does.
    #[error("context entry '{entry}' refused: {reason}")]
    Refused {
        /// The entry's path in the archive.
        entry: String,
        /// Why.
        reason: String,
    },
    /// The files add up to more than the limit.
    #[error("the context unpacks to more than {limit} bytes (at entry '{entry}')")]
    TooLarge {
        /// The limit.
        limit: u64,
        /// The entry that crossed it.
        entry: String,
    },
    /// The archive has more entries than the limit.
    #[error("the context has more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ContextError + 'a {
    move |source| ContextError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes sure the archive for `digest` is in `cache_dir` (downloading and verifying it if not) and
/// returns its path.
pub async fn fetch(
    client: &CoordinatorClient,
    token: &Secret,
    digest: &Digest,
    cache_dir: &Path,
) -> Result<PathBuf, ContextError> {
    let path = cache_dir.join(format!("{}.tar.gz", digest.hex()));
    // Only verified archives are ever renamed into place, so presence means valid.
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        touch(&path).await;
        return Ok(path);
    }
    // A unique name lets two builds of the same context download at once without clobbering.
    let tmp = cache_dir.join(format!(
        ".{}.{}.partial",
        digest.hex(),
        uuid::Uuid::new_v4()
    ));
    let result = client.download_context(token, digest, &tmp).await;
    let outcome = match result {
        Ok((actual, _)) if actual == *digest => tokio::fs::rename(&tmp, &path)
            .await
            .map_err(io_err("cannot store", &path)),
        Ok((actual, _)) => Err(ContextError::DigestMismatch {
            expected: digest.clone(),
            actual,
        }),
        Err(source) => Err(ContextError::Download {
            digest: digest.clone(),
            source,
        }),
    };
    if outcome.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    outcome.map(|()| path)
}

/// Marks a cached archive as recently used, so pruning keeps it.
async fn touch(path: &Path) {
    let path = path.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        std::fs::File::options()
            .append(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
    })
    .await;
}

/// Unpacks the gzip'd tar `archive` into `dest` (created if missing), refusing anything unsafe; see
/// the module documentation. On error `dest` may hold a partial tree: the caller removes it.
pub fn unpack(archive: &Path, dest: &Path, limits: &Limits) -> Result<Unpacked, ContextError> {
    std::fs::create_dir_all(dest).map_err(io_err("cannot create", dest))?;
    let dest_canon = dest
        .canonicalize()
        .map_err(io_err("cannot resolve", dest))?;
    let file = File::open(archive).map_err(io_err("cannot open", archive))?;
    let mut ar = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
    ar.set_preserve_permissions(false);
    ar.set_preserve_ownerships(false);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);

    let mut stats = Unpacked::default();
    let mut symlinks = Vec::new();
    let corrupt = |e: std::io::Error| ContextError::Corrupt(e.to_string());
    for entry in ar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        stats.entries += 1;
        if stats.entries > limits.max_entries {
            return Err(ContextError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let raw = entry.path().map_err(corrupt)?.into_owned();
        let name = raw.display().to_string();
        let refuse = |reason: String| ContextError::Refused {
            entry: name.clone(),
            reason,
        };
        let rel = relative_path(&raw).map_err(refuse)?;
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                stats.bytes = stats.bytes.saturating_add(entry.size());
                if stats.bytes > limits.max_bytes {
                    return Err(ContextError::TooLarge {
                        limit: limits.max_bytes,
                        entry: name,
                    });
                }
            }
            EntryType::Directory => {}
            EntryType::Symlink => {
                let target = link_target(&mut entry).map_err(refuse)?;
                check_symlink(&rel, &target).map_err(refuse)?;
                symlinks.push(rel.clone());
            }
            EntryType::Link => {
                let target = link_target(&mut entry).map_err(refuse)?;
                let rel_target = relative_path(&target)
                    .map_err(|r| refuse(format!("hard link target '{}': {r}", target.display())))?;
                // Its directory resolved for real: an earlier symlink could redirect it outside. (link(2)
                // does not follow a symlink in the last component, so the directory is what matters.)
                let full = dest_canon.join(&rel_target);
                let inside = full
                    .parent()
                    .unwrap_or(&dest_canon)
                    .canonicalize()
                    .map(|t| t.starts_with(&dest_canon))
                    .map_err(|e| refuse(format!("hard link target '{}': {e}", target.display())))?;
                if !inside {
                    return Err(refuse(format!(
                        "hard link target '{}' resolves outside the context directory",
                        target.display()
                    )));
                }
            }
            EntryType::Char | EntryType::Block => {
                return Err(refuse("device nodes are not allowed in a context".into()))
            }
            EntryType::Fifo => return Err(refuse("FIFOs are not allowed in a context".into())),
            // Metadata the tar reader already applied to the next entry.
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => continue,
            other => return Err(refuse(format!("entry type {other:?} is not supported"))),
        }
        if rel.as_os_str().is_empty() {
            continue; // "./" itself
        }
        // unpack_in re-checks that every parent directory resolves inside `dest` (a symlinked
        // directory cannot redirect a later file) and that hard link sources stay inside.
        match entry.unpack_in(&dest_canon) {
            Ok(true) => {}
            Ok(false) => {
                return Err(refuse(
                    "it would be unpacked outside the context directory".into(),
                ))
            }
            Err(e) => return Err(refuse(crate::error_chain(&e))),
        }
    }
    // Chains of individually harmless symlinks (`a -> .`, `b -> a/..`) can still point outside; now
    // that the tree is complete, resolve each for real.
    for rel in symlinks {
        let full = dest_canon.join(&rel);
        if let Ok(resolved) = full.canonicalize() {
            if !resolved.starts_with(&dest_canon) {
                return Err(ContextError::Refused {
                    entry: rel.display().to_string(),
                    reason: "the symlink resolves outside the context directory".into(),
                });
            }
        }
    }
    Ok(stats)
}

/// The entry path made relative and checked: no root, no `..`.
fn relative_path(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed".into())
            }
            Component::ParentDir => return Err("'..' components are not allowed".into()),
        }
    }
    Ok(out)
}

fn link_target<R: std::io::Read>(entry: &mut tar::Entry<'_, R>) -> Result<PathBuf, String> {
    match entry.link_name() {
        Ok(Some(t)) if !t.as_os_str().is_empty() => Ok(t.into_owned()),
        Ok(_) => Err("the link has no target".into()),
        Err(e) => Err(format!("unreadable link target: {e}")),
    }
}

/// A symlink at `rel` pointing to `target` must stay inside the tree when resolved lexically from its
/// own directory.
fn check_symlink(rel: &Path, target: &Path) -> Result<(), String> {
    let outside = || {
        format!(
            "symlink target '{}' resolves outside the context directory",
            target.display()
        )
    };
    let mut depth = rel.components().count().saturating_sub(1) as i64;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return Err(outside());
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("symlink target '{}' is absolute", target.display()))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "context_tests.rs"]
mod tests;

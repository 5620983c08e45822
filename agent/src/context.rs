//! Build contexts: download once per digest into a cache, verify, and unpack safely.
//!
//! A context archive comes from whoever submitted the job, so unpacking treats it as hostile: nothing
//! may land outside the build's directory, no device nodes or FIFOs, and its size is capped so a
//! gzip bomb cannot fill the agent's disk. The cap covers every byte the tar reader decompresses:
//! entry data of any kind counts towards [`Limits::max_bytes`], and the headers before an entry
//! (GNU long names, PAX records, which the tar reader keeps in memory) may take at most
//! [`MAX_HEADER_BYTES`]. Paths are capped at [`MAX_PATH_BYTES`], their components at
//! [`MAX_COMPONENT_BYTES`].

use std::cell::Cell;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use archfarm_protocol::Digest;
use flate2::read::GzDecoder;
use tar::EntryType;

use crate::client::{ClientError, CoordinatorClient};
use crate::config::Secret;

// The caps live in the protocol crate so the coordinator checks uploads against the same numbers.
pub use archfarm_protocol::limits::{
    Limits, MAX_COMPONENT_BYTES, MAX_HEADER_BYTES, MAX_PATH_BYTES,
};

/// What a successful unpack produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries unpacked.
    pub entries: u64,
    /// Bytes of entry data read: file contents, plus any data other entries carried.
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
    /// An entry's path or link target, or one of their components, is longer than the limit.
    #[error("context entry '{entry}' refused: its {what} is {len} bytes long, over the limit of {limit} bytes")]
    PathTooLong {
        /// The entry's path, cut to its first 100 characters when longer.
        entry: String,
        /// `path`, `path component`, `link target` or `link target component`.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The headers before one entry (long names, PAX records) are larger than [`MAX_HEADER_BYTES`].
    #[error("the context's entry headers after {after} take more than {limit} bytes (long names or PAX records; paths are limited to {MAX_PATH_BYTES} bytes)")]
    HeadersTooLarge {
        /// The last entry read before them, quoted, or `the start of the archive`.
        after: String,
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
    let budget = Rc::new(Budget::default());
    budget.grant(MAX_HEADER_BYTES);
    let stream = Budgeted {
        inner: GzDecoder::new(BufReader::new(file)),
        budget: budget.clone(),
    };
    let mut ar = tar::Archive::new(stream);
    ar.set_preserve_permissions(false);
    ar.set_preserve_ownerships(false);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);

    let mut stats = Unpacked::default();
    let mut symlinks = Vec::new();
    let mut last = String::new();
    // A read error after the budget ran out is the budget's doing, whatever the tar reader made of it.
    let corrupt = |e: std::io::Error, last: &str| {
        if budget.exceeded.get() {
            ContextError::HeadersTooLarge {
                after: if last.is_empty() {
                    "the start of the archive".into()
                } else {
                    format!("entry '{last}'")
                },
                limit: MAX_HEADER_BYTES,
            }
        } else {
            ContextError::Corrupt(e.to_string())
        }
    };
    for entry in ar.entries().map_err(|e| corrupt(e, &last))? {
        let mut entry = entry.map_err(|e| corrupt(e, &last))?;
        stats.entries += 1;
        if stats.entries > limits.max_entries {
            return Err(ContextError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        check_path_len(&entry.path_bytes(), "path", &entry.path_bytes())?;
        if let Some(link) = entry.link_name_bytes() {
            check_path_len(&link, "link target", &entry.path_bytes())?;
        }
        let raw = entry.path().map_err(|e| corrupt(e, &last))?.into_owned();
        let name = raw.display().to_string();
        last.clone_from(&name);
        // Data of any kind is decompressed, even when it is only skipped, so all of it counts.
        stats.bytes = stats.bytes.saturating_add(entry.size());
        if stats.bytes > limits.max_bytes {
            return Err(ContextError::TooLarge {
                limit: limits.max_bytes,
                entry: name,
            });
        }
        // This entry's data (padded to whole blocks), then the next entry's headers.
        budget.grant(
            entry
                .size()
                .saturating_add(511)
                .saturating_add(MAX_HEADER_BYTES),
        );
        let refuse = |reason: String| ContextError::Refused {
            entry: name.clone(),
            reason,
        };
        let rel = relative_path(&raw).map_err(refuse)?;
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
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
    // that the tree is complete, resolve each for real, dangling ones as far as they exist.
    for rel in symlinks {
        let full = dest_canon.join(&rel);
        if resolve(&full).is_some_and(|resolved| !resolved.starts_with(&dest_canon)) {
            return Err(ContextError::Refused {
                entry: rel.display().to_string(),
                reason: "the symlink resolves outside the context directory".into(),
            });
        }
    }
    Ok(stats)
}

/// Where the decompressed stream may go: the tar reader may read up to `allowed` bytes in all.
#[derive(Debug, Default)]
struct Budget {
    /// Bytes handed to the tar reader so far.
    read: Cell<u64>,
    /// Bytes it may have in all.
    allowed: Cell<u64>,
    /// Set when a read was refused for want of budget.
    exceeded: Cell<bool>,
}

impl Budget {
    /// Allows `more` bytes past what has been read so far (not past what was allowed: unused
    /// allowance does not carry over).
    fn grant(&self, more: u64) {
        self.allowed.set(self.read.get().saturating_add(more));
    }
}

/// The decompressed archive, cut off where the [`Budget`] ends.
///
/// The tar reader reads an entry's GNU long name, long link and PAX records into memory before it
/// returns the entry, so a long name of gigabytes of zeros (a few megabytes gzip'd) would exhaust
/// the memory before [`unpack`] could look at it; this makes it fail after [`MAX_HEADER_BYTES`].
struct Budgeted<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let b = &self.budget;
        let room = b.allowed.get().saturating_sub(b.read.get());
        if room == 0 && !buf.is_empty() {
            b.exceeded.set(true);
            return Err(std::io::Error::other("the entry headers are too large"));
        }
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let got = self.inner.read(&mut buf[..n])?;
        b.read.set(b.read.get() + got as u64);
        Ok(got)
    }
}

/// Refuses a path (or link target) of an entry longer than [`MAX_PATH_BYTES`], or with a component
/// longer than [`MAX_COMPONENT_BYTES`]: the kernel would refuse them too, but only after the tar
/// reader had built them, and with an error that quotes the whole path.
fn check_path_len(path: &[u8], what: &'static str, entry: &[u8]) -> Result<(), ContextError> {
    match archfarm_protocol::limits::check_path_len(path) {
        Ok(()) => Ok(()),
        Err(e) => Err(ContextError::PathTooLong {
            entry: archfarm_protocol::limits::entry_name_for_error(entry),
            what: match (e.component, what) {
                (false, what) => what,
                (true, "path") => "path component",
                (true, _) => "link target component",
            },
            len: e.len,
            limit: e.limit,
        }),
    }
}

/// Where `path` (a symlink) leads: resolved for real as far as it exists, the missing rest taken
/// lexically, so a dangling link is judged by where it would point once its target is created.
/// None when nothing of it resolves.
fn resolve(path: &Path) -> Option<PathBuf> {
    if let Ok(real) = path.canonicalize() {
        return Some(real);
    }
    let target = std::fs::read_link(path).ok()?;
    let full = path.parent()?.join(target);
    let parts: Vec<Component> = full.components().collect();
    (0..parts.len()).rev().find_map(|i| {
        let mut out = parts[..i].iter().collect::<PathBuf>().canonicalize().ok()?;
        for c in &parts[i..] {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::Normal(n) => out.push(n),
                _ => {}
            }
        }
        Some(out)
    })
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

//! Packing a build context into a deterministic gzip'd tar, content-addressed by its sha256.
//!
//! Determinism is what makes the upload skippable: the same tree must give the same digest on every
//! run and every machine, so entries are written in sorted order with uid/gid 0, no user or group
//! names, and the gzip header carries no time or file name. File modes and mtimes are kept because
//! `COPY` preserves them into the image.

use std::collections::BTreeSet;
use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use archfarm_protocol::Digest;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest as _, Sha256};

use crate::dockerignore::{IgnoreRules, PatternError};

/// Name of the ignore file at the context root.
pub const DOCKERIGNORE: &str = ".dockerignore";

/// Why a context could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// A file of the context could not be read (exit code 2: the input is at fault).
    #[error("cannot read '{}' in the context: {error}", path.display())]
    Read {
        /// The file, as a path on disk.
        path: PathBuf,
        /// The I/O error (in the message, so not a `source`).
        error: io::Error,
    },
    /// The `.dockerignore` file has a bad pattern.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// The archive could not be written to its temporary file.
    #[error("cannot write the context archive: {0}")]
    Write(io::Error),
}

/// A packed context, ready to upload.
#[derive(Debug)]
pub struct PackedContext {
    /// The archive, rewound to its start.
    pub file: File,
    /// sha256 of the gzip bytes.
    pub digest: Digest,
    /// Size of the gzip bytes.
    pub size: u64,
    /// How many entries (files, directories, symlinks) the archive holds.
    pub entries: usize,
    /// Files left out for being neither regular files, directories nor symlinks.
    pub warnings: Vec<String>,
}

/// Packs `context` into an anonymous temporary file; `dockerfile` (relative, `/`-separated) and
/// `.dockerignore` are sent even when ignored, as docker does.
pub fn pack(context: &Path, dockerfile: &str) -> Result<PackedContext, PackError> {
    // An unnamed temporary file: removed by the OS however the process ends.
    let file = tempfile::tempfile().map_err(PackError::Write)?;
    let (mut file, summary) = pack_into(context, dockerfile, file)?;
    file.rewind().map_err(PackError::Write)?;
    Ok(PackedContext {
        file,
        digest: summary.digest,
        size: summary.size,
        entries: summary.entries,
        warnings: summary.warnings,
    })
}

/// What [`pack_into`] wrote.
#[derive(Debug, Clone)]
pub struct PackSummary {
    /// sha256 of the gzip bytes.
    pub digest: Digest,
    /// Size of the gzip bytes.
    pub size: u64,
    /// Entries written.
    pub entries: usize,
    /// Files skipped, one sentence each.
    pub warnings: Vec<String>,
}

/// Writes the archive of `context` to `out` and gives `out` back with the summary.
pub fn pack_into<W: Write>(
    context: &Path,
    dockerfile: &str,
    out: W,
) -> Result<(W, PackSummary), PackError> {
    let (ignore_file, rules) = read_rules(context, dockerfile)?;
    let forced: BTreeSet<String> = [dockerfile.to_string(), ignore_file].into();
    let mut walk = Walk {
        root: context,
        rules: &rules,
        forced: &forced,
        entries: Vec::new(),
        warnings: Vec::new(),
    };
    walk.dir(Path::new(""))?;
    let Walk {
        entries, warnings, ..
    } = walk;

    let hashing = HashingWriter {
        inner: out,
        hasher: Sha256::new(),
        written: 0,
    };
    // GzEncoder::new writes no mtime and no file name, so equal trees give equal bytes.
    let gz = GzEncoder::new(hashing, Compression::default());
    let mut tar = tar::Builder::new(gz);
    for e in &entries {
        append(&mut tar, context, e)?;
    }
    let gz = tar.into_inner().map_err(PackError::Write)?;
    let hashing = gz.finish().map_err(PackError::Write)?;
    let summary = PackSummary {
        digest: Digest::from_sha256_bytes(&hashing.hasher.finalize()),
        size: hashing.written,
        entries: entries.len(),
        warnings,
    };
    Ok((hashing.inner, summary))
}

/// The ignore file that applies and its rules. BuildKit's rule: `<Dockerfile>.dockerignore`
/// beside the Dockerfile (`build/Dockerfile.prod.dockerignore`) wins over the context's
/// `.dockerignore`, so one context can serve Dockerfiles that ignore different files.
fn read_rules(context: &Path, dockerfile: &str) -> Result<(String, IgnoreRules), PackError> {
    let own = format!("{dockerfile}.dockerignore");
    for name in [own, DOCKERIGNORE.to_string()] {
        let path = context.join(&name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let rules = IgnoreRules::parse(&String::from_utf8_lossy(&bytes))?;
                return Ok((name, rules));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(PackError::Read { path, error }),
        }
    }
    Ok((DOCKERIGNORE.to_string(), IgnoreRules::default()))
}

/// One entry to write: its path inside the archive and its metadata (not following symlinks).
struct Entry {
    rel: PathBuf,
    meta: Metadata,
}

/// The walk over the context, collecting entries in archive order.
struct Walk<'a> {
    root: &'a Path,
    rules: &'a IgnoreRules,
    forced: &'a BTreeSet<String>,
    entries: Vec<Entry>,
    warnings: Vec<String>,
}

impl Walk<'_> {
    /// Collects the children of `rel` depth-first, each directory's names in byte order, so parents
    /// come before their children (extractors need that) and the order never depends on the disk.
    fn dir(&mut self, rel: &Path) -> Result<(), PackError> {
        let abs = self.root.join(rel);
        let read_err = |error| PackError::Read {
            path: abs.clone(),
            error,
        };
        let mut names = std::fs::read_dir(&abs)
            .map_err(read_err)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_err)?;
        names.sort();
        for name in names {
            let child = rel.join(&name);
            let child_abs = self.root.join(&child);
            let meta = std::fs::symlink_metadata(&child_abs).map_err(|error| PackError::Read {
                path: child_abs.clone(),
                error,
            })?;
            let key = child.to_string_lossy().into_owned();
            let forced = self.forced.contains(&key);
            let excluded = !forced && self.rules.is_excluded(&key);
            let ft = meta.file_type();
            if ft.is_dir() {
                let under = format!("{key}/");
                let look_inside = !excluded
                    || self.rules.may_include_under(&key)
                    || self.forced.iter().any(|f| f.starts_with(&under));
                if !look_inside {
                    continue;
                }
                let mark = self.entries.len();
                self.entries.push(Entry {
                    rel: child.clone(),
                    meta,
                });
                self.dir(&child)?;
                // An excluded directory is only sent as the parent of something an exception kept.
                if excluded && self.entries.len() == mark + 1 {
                    self.entries.pop();
                }
            } else if excluded {
                continue;
            } else if ft.is_file() || ft.is_symlink() {
                self.entries.push(Entry { rel: child, meta });
            } else {
                let kind = if ft.is_socket() {
                    "a socket"
                } else if ft.is_fifo() {
                    "a fifo"
                } else {
                    "a device"
                };
                self.warnings.push(format!(
                    "skipping '{key}': it is {kind}; only regular files, directories and symlinks are sent"
                ));
            }
        }
        Ok(())
    }
}

fn append<W: Write>(tar: &mut tar::Builder<W>, root: &Path, e: &Entry) -> Result<(), PackError> {
    let abs = root.join(&e.rel);
    let read_err = |error| PackError::Read {
        path: abs.clone(),
        error,
    };
    let mut h = tar::Header::new_gnu();
    h.set_mode(e.meta.mode() & 0o7777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(e.meta.mtime().max(0) as u64);
    h.set_username("").map_err(PackError::Write)?;
    h.set_groupname("").map_err(PackError::Write)?;
    let ft = e.meta.file_type();
    if ft.is_dir() {
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        tar.append_data(&mut h, &e.rel, io::empty())
            .map_err(PackError::Write)
    } else if ft.is_symlink() {
        let target = std::fs::read_link(&abs).map_err(read_err)?;
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        tar.append_link(&mut h, &e.rel, target)
            .map_err(PackError::Write)
    } else {
        let file = File::open(&abs).map_err(read_err)?;
        let size = e.meta.len();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size);
        let exact = ExactReader {
            inner: file.take(size),
            remaining: size,
        };
        tar.append_data(&mut h, &e.rel, exact)
            .map_err(|err| match err.kind() {
                io::ErrorKind::UnexpectedEof => read_err(err),
                _ => PackError::Write(err),
            })
    }
}

/// Reads exactly the size the header promised; a file that shrank while being packed is an error
/// rather than a corrupt archive.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.remaining > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being packed",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Hashes and counts the bytes on their way to the file, so the digest costs no second read.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
#[path = "context_tests.rs"]
mod tests;

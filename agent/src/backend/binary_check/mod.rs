//! The binary check: before a platform's image is pushed, every ELF executable and shared object
//! in its final file system must be for that platform, or the build fails naming the file, its
//! architecture and the layer it came from. The job's `--allow-foreign-binary` globs name paths
//! that are not judged.
//!
//! Each layer is read once as a stream (decompressed as its media type says), keeping the first
//! [`elf::HEADER_BYTES`] of each regular file and nothing else of it. The final file system is
//! what counts: a file that a later layer deletes (a `.wh.` whiteout, an opaque directory) or
//! replaces is forgotten. Only foreign files are remembered, at most [`MAX_TRACKED`] of them.

pub mod elf;
mod layout;
pub mod tar_stream;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;

use archfarm_protocol::foreign_binary::AllowedPaths;
use archfarm_protocol::Platform;
use tokio_util::sync::CancellationToken;

use elf::Elf;
pub use layout::{check_image, check_layout, compression, layout_blob, read_layer, Compression};
use tar_stream::{EntryKind, TarError, TarStream};

/// Most foreign files remembered while the layers are read; more fails the build at once.
pub const MAX_TRACKED: usize = 4096;
/// Most foreign files named in the build's error (the build log names up to [`MAX_LOGGED`]).
pub const MAX_REPORTED: usize = 5;
/// Most foreign files named in the build log.
pub const MAX_LOGGED: usize = 50;

/// Why the check failed a build.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Files for another architecture are in the image.
    #[error("{}", foreign_message(.platform, .found))]
    Foreign {
        /// The build's platform.
        platform: Platform,
        /// All of them (at most [`MAX_TRACKED`]), bottom layer first, then by path; the message
        /// names the first [`MAX_REPORTED`].
        found: Vec<Finding>,
    },
    /// More than [`MAX_TRACKED`] foreign files: reading stopped.
    #[error(
        "more than {MAX_TRACKED} files in the image are for another architecture than \
         {platform}, the first {}; build them for the target platform, or allow them with \
         --allow-foreign-binary GLOB",
        .first.describe()
    )]
    TooMany {
        /// The build's platform.
        platform: Platform,
        /// The first one found.
        first: Box<Finding>,
    },
    /// A layer could not be read: its compression or tar format is broken, or unknown.
    #[error("the binary check cannot read layer {} of {} ({}): {reason}", .layer.index, .layer.count, .layer.digest)]
    Unreadable {
        /// The layer.
        layer: LayerId,
        /// What is wrong.
        reason: String,
    },
    /// The layout's manifest does not list layers as expected.
    #[error("the binary check cannot read the image's manifest: {0}")]
    Manifest(String),
    /// The job's globs are not valid (the coordinator should have refused them).
    #[error("the job's {0}")]
    Globs(String),
    /// The check's thread ended without an answer.
    #[error("the binary check stopped: {0}")]
    Stopped(String),
    /// The build was cancelled during the check.
    #[error("cancelled")]
    Cancelled,
}

/// Which layer: 1-based index, count and digest, as messages show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerId {
    /// 1-based position, bottom layer first.
    pub index: usize,
    /// How many layers the image has.
    pub count: usize,
    /// `sha256:...` of the (compressed) blob.
    pub digest: String,
}

/// A file for another architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Absolute path in the image, e.g. `/usr/local/bin/hello`.
    pub path: String,
    /// Its header.
    pub elf: Elf,
    /// The layer that put it there.
    pub layer: LayerId,
}

impl Finding {
    /// `/usr/local/bin/hello is an x86-64 executable (layer 2 of 3, sha256:...)`.
    pub fn describe(&self) -> String {
        let arch = self.elf.architecture();
        // As the names are spoken: "an x86-64", "an S/390", "an AArch64", "a RISC-V".
        let spoken_vowel = arch
            .starts_with(['a', 'e', 'i', 'o', 'u', 'x', 'A', 'E', 'I', 'O', 'U'])
            || arch.starts_with("S/");
        let article = if spoken_vowel { "an" } else { "a" };
        format!(
            "{} is {article} {arch} {} (layer {} of {}, {})",
            self.path, self.elf.kind, self.layer.index, self.layer.count, self.layer.digest
        )
    }
}

fn foreign_message(platform: &Platform, all: &[Finding]) -> String {
    let quoted = |f: &Finding| format!("'{}'", f.path.replace('\'', "'\\''"));
    let found = &all[..all.len().min(MAX_REPORTED)];
    let more = &(all.len() - found.len());
    match (found, more) {
        ([one], 0) => format!(
            "{}; it cannot run on {platform}. Build it for the target platform, or allow it \
             with --allow-foreign-binary {}",
            one.describe(),
            quoted(one)
        ),
        _ => {
            let mut m = format!("{} files cannot run on {platform}: ", found.len() + more);
            let listed: Vec<String> = found.iter().map(Finding::describe).collect();
            m.push_str(&listed.join("; "));
            if *more > 0 {
                let _ = write!(
                    m,
                    "; and {more} more (the build log lists up to {MAX_LOGGED})"
                );
            }
            let _ = write!(
                m,
                ". Build them for the target platform, or allow them with \
                 --allow-foreign-binary GLOB (e.g. {})",
                found.first().map(quoted).unwrap_or_default()
            );
            m
        }
    }
}

/// `1 file`, `2 files`.
fn files(n: usize) -> String {
    format!("{n} file{}", if n == 1 { "" } else { "s" })
}

/// What a check that passed saw, for the build log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Layers read.
    pub layers: usize,
    /// Tar entries read, over all layers.
    pub entries: u64,
    /// Uncompressed bytes read.
    pub bytes: u64,
    /// Executables and shared objects judged (in any layer, before deletions).
    pub judged: u64,
    /// Those of them that are for the platform.
    pub native: u64,
    /// Foreign ones left out because a glob allows them.
    pub allowed: u64,
}

/// The check of one image: feed it the layers bottom first, then [`Scan::finish`].
pub struct Scan {
    platform: Platform,
    natives: &'static [(u16, elf::Class, elf::Order)],
    allowed: AllowedPaths,
    /// Foreign files of the file system so far, by path (relative, as in the layers).
    foreign: BTreeMap<Vec<u8>, Finding>,
    summary: Summary,
}

impl Scan {
    /// A check of `platform`'s image; `None` when no ELF machine is known for the platform.
    pub fn new(platform: &Platform, allowed: AllowedPaths) -> Option<Scan> {
        Some(Scan {
            natives: elf::natives(platform)?,
            platform: platform.clone(),
            allowed,
            foreign: BTreeMap::new(),
            summary: Summary::default(),
        })
    }

    /// Reads one uncompressed layer (tar) on top of the ones before it.
    pub fn layer(
        &mut self,
        layer: &LayerId,
        tar: impl Read,
        cancel: &CancellationToken,
    ) -> Result<(), CheckError> {
        let unreadable = |e: TarError| CheckError::Unreadable {
            layer: layer.clone(),
            reason: match e {
                TarError::Read(e) => format!("it cannot be decompressed or read: {e}"),
                format => format.to_string(),
            },
        };
        let mut stream = TarStream::new(tar);
        self.summary.layers += 1;
        while let Some(entry) = stream.next_entry().map_err(unreadable)? {
            if cancel.is_cancelled() {
                return Err(CheckError::Cancelled);
            }
            self.summary.entries += 1;
            self.apply(layer, entry)?;
        }
        self.summary.bytes += stream.offset();
        Ok(())
    }

    /// One entry's effect on the file system: deletions first, then what it adds.
    fn apply(&mut self, layer: &LayerId, entry: tar_stream::Entry) -> Result<(), CheckError> {
        let (parent, name) = match entry.path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&entry.path[..i], &entry.path[i + 1..]),
            None => (&entry.path[..0], &entry.path[..]),
        };
        if name == b".wh..wh..opq" {
            // An opaque directory hides everything lower layers had in it.
            self.forget_below(parent, layer.index);
            return Ok(());
        }
        if name.starts_with(b".wh..wh.") {
            // Other AUFS bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): no file of the image.
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            let mut path = parent.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(hidden);
            self.foreign.remove(&path);
            self.forget_below(&path, layer.index);
            return Ok(());
        }
        if entry.path.is_empty() {
            return Ok(());
        }
        // Whatever was at this path is replaced; a non-directory also hides a lower directory.
        let replaced = self.foreign.remove(&entry.path);
        if entry.kind != EntryKind::Directory {
            self.forget_below(&entry.path, layer.index);
        }
        let found = match entry.kind {
            EntryKind::Regular => elf::read(&entry.head).and_then(|elf| {
                self.summary.judged += 1;
                let runs = elf.runs_on(self.natives);
                self.summary.native += u64::from(runs);
                (!runs).then_some(elf)
            }),
            // A hard link is the same file as its target: foreign when the target is (a link
            // to itself finds the entry it replaces).
            EntryKind::HardLink => entry.link.as_ref().and_then(|target| {
                if *target == entry.path {
                    replaced.map(|f| f.elf)
                } else {
                    self.foreign.get(target).map(|f| f.elf)
                }
            }),
            EntryKind::Directory | EntryKind::Other => None,
        };
        let Some(elf) = found else {
            return Ok(());
        };
        let path = format!("/{}", String::from_utf8_lossy(&entry.path));
        if self.allowed.allows(&path) {
            self.summary.allowed += 1;
            return Ok(());
        }
        let finding = Finding {
            path,
            elf,
            layer: layer.clone(),
        };
        if self.foreign.len() >= MAX_TRACKED {
            let first = self
                .foreign
                .values()
                .min_by_key(|f| f.layer.index)
                .cloned()
                .unwrap_or(finding);
            return Err(CheckError::TooMany {
                platform: self.platform.clone(),
                first: Box::new(first),
            });
        }
        self.foreign.insert(entry.path, finding);
        Ok(())
    }

    /// Forgets what layers below `layer` had under the directory `dir` (all of it for the root).
    fn forget_below(&mut self, dir: &[u8], layer: usize) {
        let mut prefix = dir.to_vec();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        let below: Vec<Vec<u8>> = self
            .foreign
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, f)| f.layer.index < layer)
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.foreign.remove(&k);
        }
    }

    /// What was seen once every layer is read, and the foreign files of the final file system
    /// (bottom layer first, then by path): the check passed when there are none.
    pub fn finish(self) -> (Summary, Vec<Finding>) {
        let mut all: Vec<Finding> = self.foreign.into_values().collect();
        all.sort_by(|a, b| (a.layer.index, &a.path).cmp(&(b.layer.index, &b.path)));
        (self.summary, all)
    }

    /// The error for `found` (from [`Scan::finish`]).
    pub fn error(platform: &Platform, found: Vec<Finding>) -> CheckError {
        CheckError::Foreign {
            platform: platform.clone(),
            found,
        }
    }
}

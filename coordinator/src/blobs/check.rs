//! Reading an uploaded context archive within the caps agents unpack it with
//! ([`archfarm_protocol::limits`]), so the coordinator refuses what an agent would refuse for its
//! size, and checking one costs bounded memory and time.
//!
//! The tar reader is used in raw mode: it hands over GNU long name, long link and PAX entries as
//! they are, so their size is checked from their header before a byte of them is read (in its
//! normal mode it reads them into memory whole first). Entry data is counted from the header too,
//! before it is decompressed. A meter on the decompressed stream lets the tar reader read only what
//! was checked, so anything this module misjudges fails closed rather than reading on.

use std::borrow::Cow;
use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

use archfarm_protocol::limits::{
    check_path_len, entry_name_for_error, Limits, MAX_HEADER_BYTES, MAX_PATH_BYTES,
};
use tar::{EntryType, Header, PaxExtensions};

const BLOCK: u64 = 512;

/// Why a context archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The bytes are not a readable gzip'd tar.
    #[error("the context is not a gzip-compressed tar archive: {0}")]
    Corrupt(String),
    /// An entry this reader (and agents) cannot take.
    #[error("context entry '{entry}' refused: {reason}")]
    Unsupported {
        /// The entry's path, cut to 100 characters.
        entry: String,
        /// Why.
        reason: String,
    },
    /// The entries' data adds up to more than the limit.
    #[error("the context unpacks to more than {limit} bytes (at entry '{entry}', which claims {size} bytes); agents refuse it too")]
    TooLarge {
        /// The limit.
        limit: u64,
        /// The entry that crossed it, cut to 100 characters.
        entry: String,
        /// Its claimed size.
        size: u64,
    },
    /// More entries than the limit.
    #[error("the context has more than {limit} entries; agents refuse it too")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// The headers before one entry (long names, PAX records) are larger than [`MAX_HEADER_BYTES`].
    #[error("the context's entry headers after {after} take more than {limit} bytes{} (long names or PAX records; paths are limited to {MAX_PATH_BYTES} bytes)", claims(*.size))]
    HeadersTooLarge {
        /// The last entry read before them, quoted, or `the start of the archive`.
        after: String,
        /// The size the offending long name or PAX header claims for its data, when one did.
        size: Option<u64>,
        /// The limit.
        limit: u64,
    },
    /// An entry's path or link target, or one of their components, is too long.
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
}

impl CheckError {
    /// The API error code naming the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            CheckError::Corrupt(_) | CheckError::Unsupported { .. } => "invalid_context",
            CheckError::TooLarge { .. } => "context_unpacks_too_large",
            CheckError::TooManyEntries { .. } => "context_too_many_entries",
            CheckError::HeadersTooLarge { .. } => "context_headers_too_large",
            CheckError::PathTooLong { .. } => "context_path_too_long",
        }
    }

    /// True when a size or count limit was passed (answered 413), false when the archive is
    /// malformed or names something unacceptable (400).
    pub fn over_limit(&self) -> bool {
        matches!(
            self,
            CheckError::TooLarge { .. }
                | CheckError::TooManyEntries { .. }
                | CheckError::HeadersTooLarge { .. }
        )
    }
}

/// What a complete walk saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Walked {
    /// Entries (not counting long-name and PAX entries, which belong to the entry after them).
    pub entries: u64,
    /// Bytes of entry data, as counted against [`Limits::max_bytes`].
    pub bytes: u64,
    /// Bytes of the decompressed tar stream read.
    pub decompressed: u64,
    /// Whether `visit` stopped the walk early.
    pub stopped: bool,
}

/// Reads the decompressed tar stream `tar` entry by entry within `limits`, calling `visit` with
/// each entry's path (after long names and PAX records) and type; stops early when it returns
/// true. Reads to the end otherwise, so a truncated archive is refused.
pub fn walk<R: Read>(
    tar: R,
    limits: &Limits,
    mut visit: impl FnMut(&[u8], EntryType) -> bool,
) -> Result<Walked, CheckError> {
    walk_reading(tar, limits, |path, kind, _| visit(path, kind))
}

/// [`walk`], with `visit` also given the entry's data to read (at most its header's size).
pub fn walk_reading<R: Read>(
    tar: R,
    limits: &Limits,
    mut visit: impl FnMut(&[u8], EntryType, &mut dyn Read) -> bool,
) -> Result<Walked, CheckError> {
    let meter = Rc::new(Meter::default());
    meter.grant(MAX_HEADER_BYTES);
    let mut archive = tar::Archive::new(Metered {
        inner: tar,
        meter: meter.clone(),
    });
    let mut walked = Walked::default();
    let mut last = String::new();
    let mut pending = Pending::default();
    let after = |last: &str| {
        if last.is_empty() {
            "the start of the archive".to_string()
        } else {
            format!("entry '{last}'")
        }
    };
    // A read refused by the meter is a header chain longer than it was allowed, whatever the tar
    // reader made of it.
    let corrupt = |e: std::io::Error, last: &str| {
        if meter.exceeded.get() {
            CheckError::HeadersTooLarge {
                after: after(last),
                size: None,
                limit: MAX_HEADER_BYTES,
            }
        } else {
            CheckError::Corrupt(e.to_string())
        }
    };
    let entries = archive.entries().map_err(|e| corrupt(e, &last))?.raw(true);
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(e, &last))?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let size = entry.size();
        // The header block itself, then (for extensions) the data padded to whole blocks.
        pending.header_bytes += BLOCK;
        let recognised = header.as_gnu().is_some() || header.as_ustar().is_some();
        let extension = recognised
            && (kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions());
        if extension {
            let total = pending
                .header_bytes
                .saturating_add(size.div_ceil(BLOCK).saturating_mul(BLOCK));
            if total > MAX_HEADER_BYTES {
                return Err(CheckError::HeadersTooLarge {
                    after: after(&last),
                    size: Some(size),
                    limit: MAX_HEADER_BYTES,
                });
            }
            pending.header_bytes = total;
            // At most MAX_HEADER_BYTES, checked just above.
            let mut data = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut data)
                .map_err(|e| corrupt(e, &last))?;
            if data.len() as u64 != size {
                return Err(CheckError::Corrupt(
                    "the archive ends inside a long name or PAX record".into(),
                ));
            }
            // The same refusals as the tar reader's own (and so an agent's).
            let slot = if kind.is_gnu_longname() {
                &mut pending.long_name
            } else if kind.is_gnu_longlink() {
                &mut pending.long_link
            } else {
                &mut pending.pax
            };
            if slot.replace(data).is_some() {
                return Err(CheckError::Corrupt(format!(
                    "two {} entries describe the entry after {}",
                    if kind.is_pax_local_extensions() {
                        "PAX extension"
                    } else {
                        "long name"
                    },
                    after(&last)
                )));
            }
            continue;
        }
        if pending.header_bytes > MAX_HEADER_BYTES {
            return Err(CheckError::HeadersTooLarge {
                after: after(&last),
                size: None,
                limit: MAX_HEADER_BYTES,
            });
        }

        walked.entries += 1;
        if walked.entries > limits.max_entries {
            return Err(CheckError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let path = pending.path(&header).into_owned();
        let name = entry_name_for_error(&path);
        check_path_len(&path).map_err(|e| too_long(&name, "path", e))?;
        if let Some(link) = pending.link(&header) {
            check_path_len(&link).map_err(|e| too_long(&name, "link target", e))?;
        }
        // The tar reader in raw mode reads `size` bytes of data whatever a PAX record says; an
        // agent's reader honours the record. Honest archives write one only for sizes a header
        // cannot hold (8 GiB and up), far past the limit, so a disagreement is refused.
        let claimed = pending.pax_size().unwrap_or(size);
        pending = Pending::default();
        walked.bytes = walked.bytes.saturating_add(claimed.max(size));
        if walked.bytes > limits.max_bytes {
            return Err(CheckError::TooLarge {
                limit: limits.max_bytes,
                entry: name,
                size: claimed.max(size),
            });
        }
        if claimed != size {
            return Err(CheckError::Unsupported {
                entry: name,
                reason: format!(
                    "its PAX size record ({claimed} bytes) disagrees with its header ({size} bytes)"
                ),
            });
        }
        // Its extension blocks would be read as data here; agents refuse such entries anyway.
        if kind.is_gnu_sparse() {
            return Err(CheckError::Unsupported {
                entry: name,
                reason: "GNU sparse files are not supported in a context".into(),
            });
        }
        // This entry's data (padded to whole blocks), then the next entry's headers; granted
        // before the visit, which may read the data (the entry reader stops at its size).
        meter.grant(
            size.saturating_add(BLOCK - 1)
                .saturating_add(MAX_HEADER_BYTES),
        );
        if visit(&path, kind, &mut entry) {
            walked.stopped = true;
            break;
        }
        last = name;
    }
    if !pending.is_empty() {
        return Err(CheckError::Corrupt(format!(
            "the archive ends with a long name or PAX record after {} but no entry for it",
            after(&last)
        )));
    }
    walked.decompressed = meter.read.get();
    Ok(walked)
}

/// The part of a [`CheckError::HeadersTooLarge`] message naming the size claimed.
fn claims(size: Option<u64>) -> String {
    size.map(|n| format!(": one claims {n} bytes"))
        .unwrap_or_default()
}

fn too_long(
    entry: &str,
    what: &'static str,
    e: archfarm_protocol::limits::PathTooLong,
) -> CheckError {
    CheckError::PathTooLong {
        entry: entry.to_string(),
        what: match (e.component, what) {
            (false, what) => what,
            (true, "path") => "path component",
            (true, _) => "link target component",
        },
        len: e.len,
        limit: e.limit,
    }
}

/// The extension entries read before the entry they describe.
#[derive(Debug, Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
    /// Header blocks and extension data read since the last entry.
    header_bytes: u64,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }

    fn pax_value(&self, key: &[u8]) -> Option<&[u8]> {
        PaxExtensions::new(self.pax.as_deref()?)
            .filter_map(Result::ok)
            .find(|f| f.key_bytes() == key)
            .map(|f| f.value_bytes())
    }

    /// The path as the tar reader resolves it: GNU long name, else PAX `path`, else the header's.
    fn path<'a>(&'a self, header: &'a Header) -> Cow<'a, [u8]> {
        match &self.long_name {
            Some(name) => Cow::Borrowed(name.strip_suffix(b"\0").unwrap_or(name)),
            None => self
                .pax_value(b"path")
                .map(Cow::Borrowed)
                .unwrap_or_else(|| header.path_bytes()),
        }
    }

    /// The link target, resolved the same way.
    fn link<'a>(&'a self, header: &'a Header) -> Option<Cow<'a, [u8]>> {
        match &self.long_link {
            Some(name) => Some(Cow::Borrowed(name.strip_suffix(b"\0").unwrap_or(name))),
            None => self
                .pax_value(b"linkpath")
                .map(Cow::Borrowed)
                .or_else(|| header.link_name_bytes()),
        }
    }

    /// A PAX `size` record, when it parses (the tar reader ignores one that does not).
    fn pax_size(&self) -> Option<u64> {
        std::str::from_utf8(self.pax_value(b"size")?)
            .ok()?
            .parse()
            .ok()
    }
}

/// How much of the decompressed stream the tar reader may read.
#[derive(Debug, Default)]
struct Meter {
    /// Bytes handed to the tar reader so far.
    read: Cell<u64>,
    /// Bytes it may have in all.
    allowed: Cell<u64>,
    /// Set when a read was refused for want of allowance.
    exceeded: Cell<bool>,
}

impl Meter {
    /// Allows `more` bytes past what has been read so far (unused allowance does not carry over).
    fn grant(&self, more: u64) {
        self.allowed.set(self.read.get().saturating_add(more));
    }
}

/// The decompressed stream, cut off where the [`Meter`]'s allowance ends.
struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let m = &self.meter;
        let room = m.allowed.get().saturating_sub(m.read.get());
        if room == 0 && !buf.is_empty() {
            m.exceeded.set(true);
            return Err(std::io::Error::other(
                "the archive reads past what its headers allow",
            ));
        }
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let got = self.inner.read(&mut buf[..n])?;
        m.read.set(m.read.get() + got as u64);
        Ok(got)
    }
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;

//! A tar reader that holds no more than a header, a bounded name and the first bytes of a file.
//!
//! Our own rather than the `tar` crate's: that one reads GNU long names and PAX headers whole
//! into memory whatever their size, so a hostile layer with a gigabyte "name" would take a
//! gigabyte. Here every name is capped at [`MAX_PATH_BYTES`] and PAX headers at
//! [`MAX_PAX_BYTES`], and file contents are read [`HEAD_BYTES`] at most, the rest skipped.

use std::io::{self, Read};

/// Longest path of an entry, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Largest PAX extended header (paths plus attributes such as file capabilities).
pub const MAX_PAX_BYTES: u64 = 1024 * 1024;
/// How much of each regular file is kept.
pub const HEAD_BYTES: usize = super::elf::HEADER_BYTES;

const BLOCK: usize = 512;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (also a contiguous file).
    Regular,
    /// A hard link to [`Entry::link`].
    HardLink,
    /// A directory.
    Directory,
    /// Anything else: symbolic links, devices, FIFOs, sparse files.
    Other,
}

/// One entry of the archive.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The path, relative to the root, without `.` components or slashes at either end; empty for
    /// the root itself.
    pub path: Vec<u8>,
    /// What it is.
    pub kind: EntryKind,
    /// A hard link's target, in the same form as `path`.
    pub link: Option<Vec<u8>>,
    /// The first [`HEAD_BYTES`] (or fewer) of a regular file; empty for others.
    pub head: Vec<u8>,
    /// Its size in bytes.
    pub size: u64,
}

/// Why the stream could not be read as tar.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// Reading failed: the decompressor refused the data, or the file could not be read.
    #[error("{0}")]
    Read(#[source] io::Error),
    /// The data is not a well-formed tar archive.
    #[error("not a valid tar stream at byte {offset}: {reason}")]
    Format {
        /// Where, in the uncompressed stream.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Reads entries one after another from an uncompressed tar stream.
pub struct TarStream<R> {
    inner: R,
    /// Bytes consumed so far.
    offset: u64,
    done: bool,
}

/// Extended attributes of the next entry (GNU long names, PAX records).
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
}

impl<R: Read> TarStream<R> {
    /// A reader over `inner`.
    pub fn new(inner: R) -> Self {
        TarStream {
            inner,
            offset: 0,
            done: false,
        }
    }

    /// Uncompressed bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next entry, or `None` after the end-of-archive marker (or a stream that ends cleanly
    /// between entries). The rest of the stream after the marker is read and dropped, so a
    /// decompressor checks its trailer.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        if self.done {
            return Ok(None);
        }
        let mut pending = Pending::default();
        loop {
            let start = self.offset;
            let mut header = [0u8; BLOCK];
            if !self.fill(&mut header, "a header")? {
                self.done = true;
                return if pending.path.is_some() || pending.link.is_some() {
                    Err(self.format(start, "the stream ends after an extended header"))
                } else {
                    Ok(None)
                };
            }
            if header.iter().all(|&b| b == 0) {
                self.done = true;
                io::copy(&mut self.inner, &mut io::sink()).map_err(TarError::Read)?;
                return Ok(None);
            }
            check_sum(&header).map_err(|r| self.format(start, &r))?;
            let size = match pending.size.take() {
                Some(s) => s,
                None => number(&header[124..136])
                    .ok_or_else(|| self.format(start, "the size field is not a number"))?,
            };
            let kind = header[156];
            match kind {
                b'L' | b'K' => {
                    if size > MAX_PATH_BYTES as u64 + 1 {
                        return Err(self.format(
                            start,
                            &format!("a long name of {size} bytes (at most {MAX_PATH_BYTES})"),
                        ));
                    }
                    let mut name = self.read_data(size)?;
                    while name.last() == Some(&0) {
                        name.pop();
                    }
                    if kind == b'L' {
                        pending.path = Some(name);
                    } else {
                        pending.link = Some(name);
                    }
                    continue;
                }
                b'x' => {
                    if size > MAX_PAX_BYTES {
                        return Err(self.format(
                            start,
                            &format!("a PAX header of {size} bytes (at most {MAX_PAX_BYTES})"),
                        ));
                    }
                    let data = self.read_data(size)?;
                    pax(&data, &mut pending).map_err(|r| self.format(start, &r))?;
                    continue;
                }
                // Global PAX headers and GNU volume headers say nothing about a file.
                b'g' | b'V' => {
                    self.skip(size)?;
                    continue;
                }
                _ => {}
            }
            let raw_path = match pending.path.take() {
                Some(p) => p,
                None => header_path(&header),
            };
            let path = normalise(&raw_path).map_err(|r| self.format(start, &r))?;
            let kind = match kind {
                b'0' | b'\0' | b'7' => EntryKind::Regular,
                b'1' => EntryKind::HardLink,
                b'5' => EntryKind::Directory,
                _ => EntryKind::Other,
            };
            let link = if kind == EntryKind::HardLink {
                let raw = match pending.link.take() {
                    Some(l) => l,
                    None => field(&header[157..257]).to_vec(),
                };
                Some(normalise(&raw).map_err(|r| self.format(start, &r))?)
            } else {
                None
            };
            let mut head = Vec::new();
            if kind == EntryKind::Regular {
                let want = size.min(HEAD_BYTES as u64);
                head = self.read_exact_vec(want as usize, "the content of a file")?;
                self.skip_data(size - want, size)?;
            } else {
                self.skip(size)?;
            }
            return Ok(Some(Entry {
                path,
                kind,
                link,
                head,
                size,
            }));
        }
    }

    /// Fills `buf`; false when the stream ended before its first byte.
    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<bool, TarError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    let at = self.offset + got as u64;
                    return Err(self.format(at, &format!("the stream ends inside {what}")));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Read(e)),
            }
        }
        self.offset += got as u64;
        Ok(true)
    }

    fn read_exact_vec(&mut self, len: usize, what: &str) -> Result<Vec<u8>, TarError> {
        let mut v = vec![0u8; len];
        if len > 0 && !self.fill(&mut v, what)? {
            return Err(self.format(self.offset, &format!("the stream ends before {what}")));
        }
        Ok(v)
    }

    /// Reads a (bounded) extension's data and the padding after it.
    fn read_data(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        let v = self.read_exact_vec(size as usize, "an extended header")?;
        self.skip_data(0, size)?;
        Ok(v)
    }

    /// Skips `size` bytes of data and their padding.
    fn skip(&mut self, size: u64) -> Result<(), TarError> {
        self.skip_data(size, size)
    }

    /// Skips `left` bytes of an entry whose data is `size` bytes long, then the padding to the
    /// next block.
    fn skip_data(&mut self, left: u64, size: u64) -> Result<(), TarError> {
        let padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        let want = left
            .checked_add(padding)
            .ok_or_else(|| self.format(self.offset, "an entry size overflows"))?;
        let skipped =
            io::copy(&mut (&mut self.inner).take(want), &mut io::sink()).map_err(TarError::Read)?;
        self.offset += skipped;
        if skipped < want {
            return Err(self.format(self.offset, "the stream ends inside an entry's content"));
        }
        Ok(())
    }

    fn format(&self, offset: u64, reason: &str) -> TarError {
        TarError::Format {
            offset,
            reason: reason.to_string(),
        }
    }
}

/// The bytes of a NUL-terminated header field.
fn field(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// The path of a ustar header: `prefix/name` (POSIX), or the name alone (GNU, whose header
/// keeps other fields where POSIX has the prefix).
fn header_path(h: &[u8; BLOCK]) -> Vec<u8> {
    let name = field(&h[..100]);
    let prefix = field(&h[345..500]);
    if &h[257..263] == b"ustar\0" && !prefix.is_empty() {
        let mut p = prefix.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        p
    } else {
        name.to_vec()
    }
}

/// The header's checksum: the sum of its bytes with the checksum field taken as spaces
/// (unsigned, or signed as some old writers computed it).
fn check_sum(h: &[u8; BLOCK]) -> Result<(), String> {
    let stored = number(&h[148..156]).ok_or("the checksum field is not a number")?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err(format!(
            "header checksum {stored} does not match its bytes ({unsigned})"
        ))
    }
}

/// An octal field (NUL- or space-terminated, maybe space-padded), or GNU's base-256 form.
fn number(bytes: &[u8]) -> Option<u64> {
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        // Base-256: big-endian, the first byte's top bit the marker; negative values refused.
        if bytes[0] & 0x40 != 0 {
            return None;
        }
        let mut v: u64 = u64::from(bytes[0] & 0x3f);
        for &b in &bytes[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let text = bytes
        .iter()
        .skip_while(|&&b| b == b' ' || b == 0)
        .take_while(|&&b| b != b' ' && b != 0);
    let mut v: u64 = 0;
    let mut any = false;
    for &b in text {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    // An all-blank field is zero, as GNU tar reads it.
    Some(if any { v } else { 0 })
}

/// Reads PAX records (`LEN key=value\n`) for the keys that change how the next entry is read.
fn pax(data: &[u8], pending: &mut Pending) -> Result<(), String> {
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a PAX record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a PAX record length is not a number")?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("a PAX record's length does not fit its data".into());
        }
        let record = &rest[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a PAX record without '='")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => pending.path = Some(value.to_vec()),
            b"linkpath" => pending.link = Some(value.to_vec()),
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("the PAX size is not a number")?;
                pending.size = Some(size);
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(())
}

/// `./usr//bin/x` → `usr/bin/x`; refuses `..` (a layer's paths never leave its root) and
/// over-long paths.
fn normalise(raw: &[u8]) -> Result<Vec<u8>, String> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(format!(
            "a path of {} bytes (at most {MAX_PATH_BYTES})",
            raw.len()
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(format!(
                    "the path '{}' leads out of the root",
                    String::from_utf8_lossy(raw)
                ))
            }
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(part);
            }
        }
    }
    Ok(out)
}

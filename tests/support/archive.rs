//! Hand-made context archives: tar headers written byte by byte (so hostile entries that `tar`
//! tools refuse to write survive), gzip'd by the system's `gzip`.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

/// Tar entry types (the header's `typeflag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `0`: a regular file.
    File,
    /// `1`: a hard link.
    HardLink,
    /// `2`: a symbolic link.
    Symlink,
    /// `3`: a character device.
    CharDevice,
    /// `5`: a directory.
    Dir,
    /// `6`: a FIFO.
    Fifo,
    /// `L`: a GNU long name, the path of the entry that follows.
    GnuLongName,
    /// `K`: a GNU long link, the link target of the entry that follows.
    GnuLongLink,
}

impl Kind {
    fn flag(self) -> u8 {
        match self {
            Kind::File => b'0',
            Kind::HardLink => b'1',
            Kind::Symlink => b'2',
            Kind::CharDevice => b'3',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
            Kind::GnuLongName => b'L',
            Kind::GnuLongLink => b'K',
        }
    }
}

/// A tar stream being written, entry by entry.
#[derive(Debug, Default)]
pub struct Tar {
    bytes: Vec<u8>,
}

impl Tar {
    /// An empty archive.
    pub fn new() -> Tar {
        Tar::default()
    }

    /// A regular file.
    pub fn file(self, path: &str, data: &[u8]) -> Tar {
        self.entry(Kind::File, path, "", data)
    }

    /// A directory.
    pub fn dir(self, path: &str) -> Tar {
        self.entry(Kind::Dir, path, "", &[])
    }

    /// A symlink at `path` pointing to `target`.
    pub fn symlink(self, path: &str, target: &str) -> Tar {
        self.entry(Kind::Symlink, path, target, &[])
    }

    /// A hard link at `path` to `target`.
    pub fn hard_link(self, path: &str, target: &str) -> Tar {
        self.entry(Kind::HardLink, path, target, &[])
    }

    /// An entry of any kind; a `path` or `link` longer than its 100-byte header field goes into a
    /// GNU long name or long link entry before it, as GNU tar writes them.
    pub fn entry(mut self, kind: Kind, path: &str, link: &str, data: &[u8]) -> Tar {
        for (long, value) in [(Kind::GnuLongName, path), (Kind::GnuLongLink, link)] {
            if value.len() > 100 {
                let mut bytes = value.as_bytes().to_vec();
                bytes.push(0);
                self = self.raw(long, b"././@LongLink", b"", &bytes);
            }
        }
        let cut = |s: &str| s.as_bytes()[..s.len().min(100)].to_vec();
        self.raw(kind, &cut(path), &cut(link), data)
    }

    /// One header with exactly these name and link bytes (at most 100 each), then `data`.
    pub fn raw(mut self, kind: Kind, name: &[u8], link: &[u8], data: &[u8]) -> Tar {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        let mode: &[u8] = if kind == Kind::Dir {
            b"0000755\0"
        } else {
            b"0000644\0"
        };
        h[100..108].copy_from_slice(mode);
        h[108..116].copy_from_slice(b"0000000\0"); // uid
        h[116..124].copy_from_slice(b"0000000\0"); // gid
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[136..148].copy_from_slice(format!("{:011o}\0", 1_700_000_000u64).as_bytes());
        h[156] = kind.flag();
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..265].copy_from_slice(b"ustar  \0"); // GNU magic and version
        if kind == Kind::CharDevice {
            h[329..337].copy_from_slice(b"0000001\0"); // major 1, minor 3: /dev/null
            h[337..345].copy_from_slice(b"0000003\0");
        }
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.bytes.extend_from_slice(&h);
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.resize(self.bytes.len() + pad, 0);
        self
    }

    /// The finished tar stream (with its two zero blocks).
    pub fn into_tar(mut self) -> Vec<u8> {
        self.bytes.resize(self.bytes.len() + 1024, 0);
        self.bytes
    }

    /// The finished archive, gzip'd.
    pub fn into_tar_gz(self) -> Vec<u8> {
        gzip(&self.into_tar())
    }
}

/// `gzip -c -n -1` of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .args(["-c", "-n", "-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run gzip: {e}"));
    let mut stdin = child.stdin.take().expect("gzip stdin");
    let mut stdout = child.stdout.take().expect("gzip stdout");
    // Read while writing, so neither side blocks on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    });
    stdin.write_all(data).expect("write to gzip");
    drop(stdin);
    let out = reader
        .join()
        .expect("gzip reader thread")
        .expect("read gzip");
    let status = child.wait().expect("wait for gzip");
    assert!(status.success(), "gzip failed: {status}");
    out
}

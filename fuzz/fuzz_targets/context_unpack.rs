//! The agent's `context::unpack` on hostile archives, with tiny limits (1 MiB, 1000 entries).
//!
//! An input starting with the gzip magic (`1f 8b`) is the archive file as it is; anything else is
//! taken as a tar stream, its header checksums fixed up (so mutations reach the entry logic rather
//! than dying at the checksum) and gzip'd. The archive is unpacked into `WORK/root/dest`, and then:
//!
//! * nothing exists in `WORK/root` besides `dest`, nor in `WORK` besides `root` and the archive,
//!   which is unchanged, whether the unpack succeeded or not;
//! * no file in `dest` shares its inode with anything outside `dest` (a hard link leading out);
//! * no more than the byte cap landed on disk;
//! * after a success, no symlink in `dest` leads outside it, resolved step by step with the missing
//!   rest of a dangling link taken lexically. (After a failure the caller deletes the partial tree.)
#![no_main]

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use archfarm_agent::context::{unpack, Limits};
use flate2::write::GzEncoder;
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_bytes: 1 << 20,
    max_entries: 1000,
};

fuzz_target!(|data: &[u8]| {
    let archive_bytes = if data.starts_with(&[0x1f, 0x8b]) {
        data.to_vec()
    } else {
        let mut tar = data.to_vec();
        fix_checksums(&mut tar);
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        gz.finish().expect("gzip")
    };
    let work = scratch();
    let archive = work.path().join("context.tar.gz");
    std::fs::write(&archive, &archive_bytes).expect("write the archive");
    let root = work.path().join("root");
    std::fs::create_dir(&root).expect("create root");
    let dest = root.join("dest");

    let result = unpack(&archive, &dest, &LIMITS);

    assert_eq!(
        listing(&root),
        ["dest"],
        "something landed beside dest: {result:?}"
    );
    assert_eq!(
        listing(work.path()),
        ["context.tar.gz", "root"],
        "something landed two levels up: {result:?}"
    );
    assert_eq!(
        std::fs::read(&archive).expect("read the archive back"),
        archive_bytes,
        "the archive was written through: {result:?}"
    );
    let tree = walk(&dest);
    // Links of each file inode found inside dest, against its link count.
    let mut inodes: HashMap<(u64, u64), (u64, u64, u64)> = HashMap::new();
    for (_, meta) in tree.iter().filter(|(_, m)| m.is_file()) {
        let seen = inodes
            .entry((meta.dev(), meta.ino()))
            .or_insert((meta.nlink(), 0, meta.len()));
        seen.1 += 1;
    }
    for ((_, ino), (nlink, inside, _)) in &inodes {
        assert_eq!(
            nlink, inside,
            "inode {ino} has {nlink} links but only {inside} inside dest: {result:?}"
        );
    }
    let on_disk: u64 = inodes.values().map(|(_, _, len)| len).sum();
    assert!(
        on_disk <= LIMITS.max_bytes,
        "{on_disk} bytes on disk past the cap: {result:?}"
    );
    if let Ok(stats) = &result {
        assert!(stats.entries <= LIMITS.max_entries, "{stats:?}");
        assert!(stats.bytes <= LIMITS.max_bytes, "{stats:?}");
        let dest_real = dest.canonicalize().expect("dest resolves");
        for (path, meta) in &tree {
            if meta.file_type().is_symlink() {
                if let Some(to) = follow(path) {
                    assert!(
                        to.starts_with(&dest_real),
                        "symlink {} -> {:?} leads to {} outside dest",
                        path.display(),
                        std::fs::read_link(path).ok(),
                        to.display()
                    );
                }
            }
        }
    }
});

/// A fresh directory, in memory when /dev/shm is there (thousands of runs a second).
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let b = tempfile::Builder::new()
        .prefix("archfarm-fuzz-")
        .tempdir_in(if shm.is_dir() { shm } else { Path::new("/tmp") });
    b.expect("create a temporary directory")
}

/// Names in a directory, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every path under `dir` (not following symlinks) with its metadata; directories are made
/// readable first, since an archive may give them mode 000.
fn walk(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&d) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755));
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            if m.is_dir() {
                todo.push(p.clone());
            }
            out.push((p, m));
        }
    }
    out
}

/// Where a symlink leads, followed one component at a time like the kernel does, with the part
/// that does not exist taken lexically (a dangling link is judged by where it would lead once its
/// target is created). None for a loop.
fn follow(link: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    let mut todo: Vec<PathBuf> = components(link).into_iter().rev().collect();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c.as_os_str() == ".." {
            out.pop();
            continue;
        }
        let next = out.join(&c);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                let target = std::fs::read_link(&next).ok()?;
                if target.is_absolute() {
                    out = PathBuf::from("/");
                }
                todo.extend(components(&target).into_iter().rev());
            }
            _ => out = next,
        }
    }
    Some(out)
}

/// The `Normal` and `..` components of a path, in order.
fn components(p: &Path) -> Vec<PathBuf> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect()
}

/// Walks a tar stream's headers (skipping each entry's data by its size field) and writes each
/// header's checksum, so that mutated headers are still read as headers.
fn fix_checksums(tar: &mut [u8]) {
    let mut at = 0usize;
    while at + 512 <= tar.len() {
        let h = &mut tar[at..at + 512];
        if h.iter().all(|&b| b == 0) {
            return;
        }
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let size = octal(&h[124..136]);
        let Some(next) = size
            .checked_add(511)
            .map(|s| s / 512 * 512)
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| s.checked_add(at + 512))
        else {
            return;
        };
        at = next;
    }
}

/// An octal header field as tar writes it (digits, padded with spaces or NULs); 0 when unreadable.
fn octal(field: &[u8]) -> u64 {
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    std::str::from_utf8(&digits)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 8).ok())
        .unwrap_or(0)
}

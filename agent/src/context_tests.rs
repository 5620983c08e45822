//! Tests for [`super`]: every refusal with an archive built here, byte by byte where `tar::Builder`
//! itself would refuse to write the hostile entry.

use super::*;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest as _, Sha256};

/// One entry to put in a test archive.
enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Other(&'a str, EntryType),
}

/// Writes the name straight into the header so hostile paths survive.
fn raw_header(name: &str, kind: EntryType, size: u64, link: Option<&str>) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let gnu = h.as_gnu_mut().unwrap();
    gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(l) = link {
        gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

fn archive(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for e in entries {
        let (h, data): (_, &[u8]) = match e {
            E::File(n, d) => (raw_header(n, EntryType::Regular, d.len() as u64, None), d),
            E::Dir(n) => (raw_header(n, EntryType::Directory, 0, None), &[]),
            E::Symlink(n, t) => (raw_header(n, EntryType::Symlink, 0, Some(t)), &[]),
            E::Hardlink(n, t) => (raw_header(n, EntryType::Link, 0, Some(t)), &[]),
            E::Other(n, k) => (raw_header(n, *k, 0, None), &[]),
        };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// Unpacks into `<tmp>/ctx` and returns the temp dir (so tests can look around) and the result.
fn try_unpack(
    entries: &[E],
    limits: Limits,
) -> (tempfile::TempDir, Result<Unpacked, ContextError>) {
    let tmp = tempfile::tempdir().unwrap();
    let ar = tmp.path().join("c.tar.gz");
    std::fs::write(&ar, archive(entries)).unwrap();
    let r = unpack(&ar, &tmp.path().join("ctx"), &limits);
    (tmp, r)
}

fn refused(entries: &[E], want_entry: &str, want_reason: &str) {
    let (tmp, r) = try_unpack(entries, Limits::default());
    match r {
        Err(ContextError::Refused { entry, reason }) => {
            assert_eq!(entry, want_entry);
            assert!(
                reason.contains(want_reason),
                "reason {reason:?} lacks {want_reason:?}"
            );
        }
        other => panic!("expected refusal of {want_entry}, got {other:?}"),
    }
    // Nothing may have escaped next to the context directory.
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "stray files beside ctx: {names:?}");
}

#[test]
fn unpacks_files_dirs_and_inner_links() {
    let (tmp, r) = try_unpack(
        &[
            E::Dir("./"),
            E::File("Dockerfile", b"FROM scratch\n"),
            E::Dir("src/"),
            E::File("./src/main.c", b"int main(){}"),
            E::Symlink("src/link", "../Dockerfile"),
            E::Symlink("dot", "."),
            E::Hardlink("hard", "src/main.c"),
        ],
        Limits::default(),
    );
    let stats = r.unwrap();
    assert_eq!(stats.bytes, 13 + 12);
    let ctx = tmp.path().join("ctx");
    assert_eq!(
        std::fs::read_to_string(ctx.join("src/link")).unwrap(),
        "FROM scratch\n"
    );
    assert_eq!(
        std::fs::read_to_string(ctx.join("hard")).unwrap(),
        "int main(){}"
    );
    assert!(std::fs::symlink_metadata(ctx.join("dot"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn refuses_absolute_paths() {
    refused(&[E::File("/etc/evil", b"x")], "/etc/evil", "absolute paths");
}

#[test]
fn refuses_parent_components() {
    refused(&[E::File("../evil", b"x")], "../evil", "'..'");
    refused(&[E::File("a/../../evil", b"x")], "a/../../evil", "'..'");
}

#[test]
fn refuses_symlinks_leaving_the_tree() {
    refused(&[E::Symlink("etc", "/etc")], "etc", "is absolute");
    refused(
        &[E::Dir("d/"), E::Symlink("d/up", "../../x")],
        "d/up",
        "resolves outside",
    );
}

#[test]
fn refuses_symlink_chains_leaving_the_tree() {
    // Each link looks harmless alone; together `b` is the parent of the context directory.
    refused(
        &[E::Symlink("a", "."), E::Symlink("b", "a/..")],
        "b",
        "resolves outside",
    );
}

#[test]
fn refuses_writing_through_an_escaping_symlink() {
    let (tmp, r) = try_unpack(
        &[
            E::Symlink("a", "."),
            E::Symlink("b", "a/.."),
            E::File("b/evil", b"x"),
        ],
        Limits::default(),
    );
    match r {
        Err(ContextError::Refused { entry, .. }) => assert_eq!(entry, "b/evil"),
        other => panic!("{other:?}"),
    }
    assert!(!tmp.path().join("evil").exists());
}

#[test]
fn refuses_hard_links_leaving_the_tree() {
    refused(&[E::Hardlink("h", "/etc/passwd")], "h", "absolute");
    refused(&[E::Hardlink("h", "../x")], "h", "'..'");
    // Through a symlink that itself resolves outside.
    let (_tmp, r) = try_unpack(
        &[
            E::Symlink("a", "."),
            E::Symlink("b", "a/.."),
            E::Hardlink("h", "b/secret"),
        ],
        Limits::default(),
    );
    match r {
        Err(ContextError::Refused { entry, reason }) => {
            assert_eq!(entry, "h");
            assert!(reason.contains("resolves outside"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn refuses_devices_and_fifos() {
    refused(&[E::Other("null", EntryType::Char)], "null", "device nodes");
    refused(&[E::Other("sda", EntryType::Block)], "sda", "device nodes");
    refused(&[E::Other("pipe", EntryType::Fifo)], "pipe", "FIFOs");
}

#[test]
fn caps_total_bytes() {
    let limits = Limits {
        max_bytes: 10,
        max_entries: 100,
    };
    let (_t, r) = try_unpack(&[E::File("a", b"12345"), E::File("b", b"123456")], limits);
    match r {
        Err(e @ ContextError::TooLarge { .. }) => assert!(e.to_string().contains("'b'"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn caps_entry_count() {
    let limits = Limits {
        max_bytes: 100,
        max_entries: 2,
    };
    let (_t, r) = try_unpack(&[E::Dir("a/"), E::Dir("b/"), E::Dir("c/")], limits);
    assert!(
        matches!(r, Err(ContextError::TooManyEntries { limit: 2 })),
        "{r:?}"
    );
}

#[test]
fn caps_data_carried_by_entries_other_than_files() {
    // A directory entry may carry data the tar reader decompresses and skips: a gzip bomb's way
    // around a cap that counted only files.
    let limits = Limits {
        max_bytes: 1000,
        max_entries: 100,
    };
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let bomb = vec![0u8; 1 << 20];
    b.append(
        &raw_header("d/", EntryType::Directory, bomb.len() as u64, None),
        &bomb[..],
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ar = tmp.path().join("c.tar.gz");
    std::fs::write(&ar, b.into_inner().unwrap().finish().unwrap()).unwrap();
    match unpack(&ar, &tmp.path().join("ctx"), &limits) {
        Err(e @ ContextError::TooLarge { limit: 1000, .. }) => {
            assert!(e.to_string().contains("'d/'"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

/// Optionally a file of `before` bytes, then a GNU long-name entry (type `L`) of `len` zeros, then
/// the regular file it names.
fn long_name_archive(before: usize, len: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    if before > 0 {
        let data = vec![1u8; before];
        b.append(
            &raw_header("big", EntryType::Regular, before as u64, None),
            &data[..],
        )
        .unwrap();
    }
    let name = vec![0u8; len];
    b.append(
        &raw_header("././@LongLink", EntryType::GNULongName, len as u64, None),
        &name[..],
    )
    .unwrap();
    b.append(&raw_header("x", EntryType::Regular, 1, None), &b"x"[..])
        .unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

#[test]
fn caps_long_name_headers_before_reading_them() {
    // The tar reader keeps a long name in memory: 8 MiB of zeros gzip to a few KiB, and gigabytes
    // would exhaust the agent's memory before any other check ran. The cap holds for the first
    // entry and for one after a large file (whose allowance does not carry over).
    for (before, after) in [(0, "the start of the archive"), (1 << 20, "entry 'big'")] {
        let tmp = tempfile::tempdir().unwrap();
        let ar = tmp.path().join("c.tar.gz");
        std::fs::write(&ar, long_name_archive(before, 8 << 20)).unwrap();
        let r = unpack(&ar, &tmp.path().join("ctx"), &Limits::default());
        match r {
            Err(e @ ContextError::HeadersTooLarge { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(after), "{msg}");
                assert!(msg.contains(&MAX_HEADER_BYTES.to_string()), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn refuses_paths_over_the_length_caps() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |path: &str, want_what: &str, want_len: usize, want_limit: usize| {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        // append_data writes a GNU long-name entry for paths past 100 bytes.
        b.append_data(&mut h, path, &b"x"[..]).unwrap();
        let ar = tmp.path().join("c.tar.gz");
        std::fs::write(&ar, b.into_inner().unwrap().finish().unwrap()).unwrap();
        let dest = tmp.path().join("ctx");
        let r = unpack(&ar, &dest, &Limits::default());
        match r {
            Err(
                ref e @ ContextError::PathTooLong {
                    ref entry,
                    what,
                    len,
                    limit,
                },
            ) => {
                assert_eq!((what, len, limit), (want_what, want_len, want_limit), "{e}");
                assert!(path.starts_with(entry.trim_end_matches('…')), "{entry}");
                assert!(entry.chars().count() <= 101, "the entry is cut: {entry}");
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("over the limit of {want_limit} bytes")),
                    "{msg}"
                );
            }
            other => panic!("{path:.40}…: {other:?}"),
        }
        std::fs::remove_dir_all(&dest).unwrap();
    };
    // 20 components of 250 bytes: each fine, 5019 bytes in all.
    let deep = vec!["d".repeat(250); 20].join("/");
    check(&deep, "path", deep.len(), MAX_PATH_BYTES);
    let wide = format!("dir/{}", "f".repeat(256));
    check(&wide, "path component", 256, MAX_COMPONENT_BYTES);
}

#[test]
fn long_paths_under_the_caps_unpack() {
    // 3839 + 1 + 150 = 3990 bytes with 255-byte components: under the caps, and short enough that
    // the kernel's own PATH_MAX (4096 with the destination's path in front) takes it too.
    let tmp = tempfile::tempdir().unwrap();
    let path = format!(
        "{}/{}",
        vec!["c".repeat(255); 15].join("/"),
        "f".repeat(150)
    );
    assert_eq!(path.len(), 3990);
    let dest = tmp.path().join("c");
    assert!(
        dest.as_os_str().len() + path.len() < 4090,
        "{}",
        dest.display()
    );
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    b.append_data(&mut h, &path, &b"ok"[..]).unwrap();
    let ar = tmp.path().join("c.tar.gz");
    std::fs::write(&ar, b.into_inner().unwrap().finish().unwrap()).unwrap();
    let stats = unpack(&ar, &dest, &Limits::default()).unwrap();
    assert_eq!((stats.entries, stats.bytes), (1, 2));
    assert_eq!(std::fs::read(dest.join(&path)).unwrap(), b"ok");
}

#[test]
fn refuses_link_targets_over_the_length_cap() {
    let target = "t".repeat(300);
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "l", &target).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ar = tmp.path().join("c.tar.gz");
    std::fs::write(&ar, b.into_inner().unwrap().finish().unwrap()).unwrap();
    match unpack(&ar, &tmp.path().join("ctx"), &Limits::default()) {
        Err(ContextError::PathTooLong {
            entry,
            what,
            len,
            limit,
        }) => assert_eq!(
            (entry.as_str(), what, len, limit),
            ("l", "link target component", 300, MAX_COMPONENT_BYTES)
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn refuses_dangling_symlinks_pointing_outside() {
    // `b` leads to a sibling of the context directory that does not exist (yet).
    refused(
        &[E::Symlink("a", "."), E::Symlink("b", "a/../not-there")],
        "b",
        "resolves outside",
    );
    // Dangling inside is fine.
    let (_tmp, r) = try_unpack(
        &[E::Dir("d/"), E::Symlink("d/l", "../missing/file")],
        Limits::default(),
    );
    r.unwrap();
}

#[test]
fn refuses_garbage() {
    let tmp = tempfile::tempdir().unwrap();
    let ar = tmp.path().join("c.tar.gz");
    std::fs::write(&ar, b"this is not gzip").unwrap();
    let r = unpack(&ar, &tmp.path().join("ctx"), &Limits::default());
    assert!(matches!(r, Err(ContextError::Corrupt(_))), "{r:?}");
}

/// Serves `body` once per connection for `GET /api/v1/contexts/...`, counting requests.
async fn serve(body: Vec<u8>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = vec![0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body).await;
        }
    });
    (url, hits)
}

fn digest_of(bytes: &[u8]) -> Digest {
    Digest::from_sha256_bytes(&Sha256::digest(bytes))
}

#[tokio::test]
async fn fetch_verifies_and_caches() {
    let body = archive(&[E::File("Dockerfile", b"FROM scratch\n")]);
    let digest = digest_of(&body);
    let (url, hits) = serve(body.clone()).await;
    let client = CoordinatorClient::new(url.parse().unwrap());
    let cache = tempfile::tempdir().unwrap();
    let token = Secret::new("t");
    let p = fetch(&client, &token, &digest, cache.path()).await.unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), body);
    let again = fetch(&client, &token, &digest, cache.path()).await.unwrap();
    assert_eq!(p, again);
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the cache was not used"
    );
}

#[tokio::test]
async fn fetch_discards_a_mismatching_download() {
    let (url, _hits) = serve(b"not what was asked for".to_vec()).await;
    let client = CoordinatorClient::new(url.parse().unwrap());
    let cache = tempfile::tempdir().unwrap();
    let wanted = digest_of(b"something else");
    let e = fetch(&client, &Secret::new("t"), &wanted, cache.path())
        .await
        .unwrap_err();
    assert!(matches!(e, ContextError::DigestMismatch { .. }), "{e}");
    let mut left = std::fs::read_dir(cache.path()).unwrap();
    assert!(left.next().is_none(), "the bad download was kept");
}

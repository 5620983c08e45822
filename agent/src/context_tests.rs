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

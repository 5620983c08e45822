//! Tests of context packing: what goes in, in which order, with which metadata.

use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;

/// (path, type, mode, uid, gid, username, link target) of each entry, in archive order.
type Listed = (String, char, u32, u64, u64, String, Option<String>);

fn list(bytes: &[u8]) -> Vec<Listed> {
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            let kind = match h.entry_type() {
                tar::EntryType::Regular => 'f',
                tar::EntryType::Directory => 'd',
                tar::EntryType::Symlink => 'l',
                other => panic!("unexpected entry type {other:?}"),
            };
            (
                e.path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string(),
                kind,
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.username().unwrap().unwrap_or("").to_string(),
                e.link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned()),
            )
        })
        .collect()
}

fn paths(bytes: &[u8]) -> Vec<String> {
    list(bytes).into_iter().map(|l| l.0).collect()
}

fn pack_bytes(dir: &Path, dockerfile: &str) -> (Vec<u8>, PackSummary) {
    pack_into(dir, dockerfile, Vec::new()).unwrap()
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// A context with a bit of everything a real project has.
fn sample() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(r, "Dockerfile", "FROM scratch\nCOPY . /\n");
    write(r, "src/main.c", "int main(){}\n");
    write(r, "src/util/helper.c", "\n");
    write(r, "src/debug.log", "noise\n");
    write(r, "docs/guide.md", "# guide\n");
    write(r, "docs/keep.txt", "keep\n");
    write(r, "node_modules/pkg/index.js", "x\n");
    write(r, "README.md", "readme\n");
    write(r, "secret.env", "TOKEN=1\n");
    write(r, "build/out.bin", "bin\n");
    std::os::unix::fs::symlink("src/main.c", r.join("link-to-main")).unwrap();
    fs::set_permissions(r.join("src/main.c"), fs::Permissions::from_mode(0o755)).unwrap();
    write(
        r,
        ".dockerignore",
        "# generated files\n\
         node_modules\n\
         /build/\n\
         **/*.log\n\
         docs\n\
         !docs/keep.txt\n\
         *.env\n\
         Dockerfile\n\
         .dockerignore\n",
    );
    dir
}

#[test]
fn honours_dockerignore_and_keeps_dockerfile() {
    let dir = sample();
    let (bytes, summary) = pack_bytes(dir.path(), "Dockerfile");
    assert_eq!(
        paths(&bytes),
        [
            ".dockerignore",
            "Dockerfile",
            "README.md",
            "docs",
            "docs/keep.txt",
            "link-to-main",
            "src",
            "src/main.c",
            "src/util",
            "src/util/helper.c",
        ]
    );
    assert_eq!(summary.entries, 10);
    assert_eq!(summary.size as usize, bytes.len());
    assert!(summary.warnings.is_empty());
}

#[test]
fn metadata_is_normalised_but_modes_and_links_kept() {
    let dir = sample();
    let (bytes, _) = pack_bytes(dir.path(), "Dockerfile");
    for (path, kind, mode, uid, gid, user, link) in list(&bytes) {
        assert_eq!((uid, gid), (0, 0), "{path}");
        assert_eq!(user, "", "{path}");
        match path.as_str() {
            "src/main.c" => assert_eq!((kind, mode), ('f', 0o755)),
            "link-to-main" => {
                assert_eq!(kind, 'l');
                assert_eq!(link.as_deref(), Some("src/main.c"));
            }
            "src" => assert_eq!(kind, 'd'),
            _ => {}
        }
    }
    // mtimes survive: the packed mtime is the file's.
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let want = fs::metadata(dir.path().join("README.md")).unwrap().mtime() as u64;
    let got = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap() == Path::new("README.md"))
        .unwrap()
        .header()
        .mtime()
        .unwrap();
    assert_eq!(got, want);
}

#[test]
fn same_tree_same_digest() {
    let dir = sample();
    let (a, sa) = pack_bytes(dir.path(), "Dockerfile");
    let (b, sb) = pack_bytes(dir.path(), "Dockerfile");
    assert_eq!(a, b);
    assert_eq!(sa.digest, sb.digest);
    let expected = Digest::from_sha256_bytes(&Sha256::digest(&a));
    assert_eq!(sa.digest, expected);

    // An ignored file changing does not change the digest; a sent one does.
    write(dir.path(), "node_modules/pkg/index.js", "changed\n");
    assert_eq!(pack_bytes(dir.path(), "Dockerfile").1.digest, sa.digest);
    write(dir.path(), "README.md", "changed\n");
    assert_ne!(pack_bytes(dir.path(), "Dockerfile").1.digest, sa.digest);
}

#[test]
fn dockerfile_in_ignored_directory_is_sent_with_its_parents() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(r, "ci/docker/Dockerfile.prod", "FROM scratch\n");
    write(r, "ci/docker/other", "x\n");
    write(r, "app.py", "print()\n");
    write(r, ".dockerignore", "ci\n");
    let (bytes, _) = pack_bytes(r, "ci/docker/Dockerfile.prod");
    assert_eq!(
        paths(&bytes),
        [
            ".dockerignore",
            "app.py",
            "ci",
            "ci/docker",
            "ci/docker/Dockerfile.prod"
        ]
    );
}

#[test]
fn exception_under_wildcard_reaches_into_excluded_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(r, "Dockerfile", "FROM scratch\n");
    write(r, "vendor/a/x.go", "package a\n");
    write(r, "vendor/a/x.txt", "t\n");
    write(r, ".dockerignore", "*\n!Dockerfile\n!**/*.go\n");
    let (bytes, _) = pack_bytes(r, "Dockerfile");
    assert_eq!(
        paths(&bytes),
        [
            ".dockerignore",
            "Dockerfile",
            "vendor",
            "vendor/a",
            "vendor/a/x.go"
        ]
    );
}

#[test]
fn sockets_are_skipped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(r, "Dockerfile", "FROM scratch\n");
    let _sock = std::os::unix::net::UnixListener::bind(r.join("agent.sock")).unwrap();
    let (bytes, summary) = pack_bytes(r, "Dockerfile");
    assert_eq!(paths(&bytes), ["Dockerfile"]);
    assert_eq!(summary.warnings.len(), 1);
    assert!(summary.warnings[0].contains("'agent.sock': it is a socket"));
}

#[test]
fn pack_to_temp_file_matches_in_memory() {
    let dir = sample();
    let mut packed = pack(dir.path(), "Dockerfile").unwrap();
    let mut bytes = Vec::new();
    packed.file.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes.len() as u64, packed.size);
    assert_eq!(packed.digest, pack_bytes(dir.path(), "Dockerfile").1.digest);
}

#[test]
fn bad_dockerignore_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "Dockerfile", "FROM scratch\n");
    write(dir.path(), ".dockerignore", "ok\n[oops\n");
    let e = pack_into(dir.path(), "Dockerfile", Vec::new()).unwrap_err();
    assert!(e.to_string().contains(".dockerignore line 2"), "{e}");
}

#[test]
fn a_dockerfiles_own_dockerignore_wins_over_the_contexts() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(r, "build/Dockerfile.prod", "FROM scratch\n");
    write(r, "build/Dockerfile.prod.dockerignore", "docs\n");
    write(r, ".dockerignore", "src\n");
    write(r, "src/main.c", "int main(void) { return 0; }\n");
    write(r, "docs/guide.md", "guide\n");
    let (bytes, _) = pack_bytes(r, "build/Dockerfile.prod");
    let sent = paths(&bytes);
    assert!(sent.iter().any(|p| p == "src/main.c"), "{sent:?}");
    assert!(!sent.iter().any(|p| p.starts_with("docs")), "{sent:?}");
    // Another Dockerfile of the same context keeps the context's .dockerignore.
    write(r, "Dockerfile", "FROM scratch\n");
    let (bytes, _) = pack_bytes(r, "Dockerfile");
    let sent = paths(&bytes);
    assert!(!sent.iter().any(|p| p.starts_with("src")), "{sent:?}");
    assert!(sent.iter().any(|p| p == "docs/guide.md"), "{sent:?}");
}

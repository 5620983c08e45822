//! The check on crafted ELF headers and tar streams.

use std::io::Write;

use archfarm_protocol::foreign_binary::AllowedPaths;
use archfarm_protocol::Platform;
use tokio_util::sync::CancellationToken;

use super::elf::tests::header;
use super::*;

const X86_64: u16 = 62;
const AARCH64: u16 = 183;

fn x86_64_exe() -> Vec<u8> {
    let mut f = header(2, 1, 2, X86_64);
    f.extend(std::iter::repeat_n(0xcc, 10_000));
    f
}

fn arm64_lib() -> Vec<u8> {
    header(2, 1, 3, AARCH64)
}

/// A tar layer being written.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn entry(mut self, kind: tar::EntryType, path: &str, link: &str, data: &[u8]) -> Layer {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        if kind == tar::EntryType::Link || kind == tar::EntryType::Symlink {
            self.0.append_link(&mut h, path, link).unwrap();
        } else {
            self.0.append_data(&mut h, path, data).unwrap();
        }
        self
    }

    fn file(self, path: &str, data: &[u8]) -> Layer {
        self.entry(tar::EntryType::Regular, path, "", data)
    }

    fn dir(self, path: &str) -> Layer {
        self.entry(tar::EntryType::Directory, path, "", b"")
    }

    fn tar(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn layer_id(index: usize, count: usize) -> LayerId {
    LayerId {
        index,
        count,
        digest: format!("sha256:{index:064}"),
    }
}

/// Checks `layers` (plain tars, bottom first) for `platform` with `allowed` globs.
fn check(platform: &str, allowed: &[&str], layers: &[Vec<u8>]) -> Result<Summary, CheckError> {
    let platform = Platform::parse(platform).unwrap();
    let globs: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
    let mut scan = Scan::new(&platform, AllowedPaths::parse(&globs).unwrap()).unwrap();
    let cancel = CancellationToken::new();
    for (i, tar) in layers.iter().enumerate() {
        let id = layer_id(i + 1, layers.len());
        read_layer(&mut scan, &id, &gzip(tar)[..], Compression::Gzip, &cancel)?;
    }
    match scan.finish() {
        (summary, found) if found.is_empty() => Ok(summary),
        (_, found) => Err(Scan::error(&platform, found)),
    }
}

fn base() -> Vec<u8> {
    Layer::new()
        .dir("usr/")
        .dir("usr/lib/")
        .file("usr/lib/libc.so.6", &arm64_lib())
        .file("usr/bin/run.sh", b"#!/bin/sh\nexec /usr/bin/x\n")
        .file("usr/lib/ko/x.ko", &header(2, 1, 1, X86_64))
        .file("etc/data.bin", &[0x7f, b'E', b'L', b'F'])
        .tar()
}

#[test]
fn a_foreign_executable_fails_naming_file_architecture_and_layer() {
    let with_hello = Layer::new()
        .file("usr/local/bin/hello", &x86_64_exe())
        .tar();
    let top = Layer::new().file("etc/motd", b"hi").tar();
    let e = check("linux/arm64", &[], &[base(), with_hello, top]).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "/usr/local/bin/hello is an x86-64 executable (layer 2 of 3, sha256:{:064}); it \
             cannot run on linux/arm64. Build it for the target platform, or allow it with \
             --allow-foreign-binary '/usr/local/bin/hello'",
            2
        )
    );
}

#[test]
fn native_files_scripts_objects_and_data_pass() {
    let s = check("linux/arm64", &[], &[base()]).unwrap();
    assert_eq!(s.layers, 1);
    // libc.so.6 only: the script, the relocatable .ko and the 4-byte data file are not judged.
    assert_eq!((s.judged, s.native), (1, 1));
    assert_eq!(s.entries, 6);
    // Deemed foreign on amd64, the library names the architecture of the shared object.
    let e = check("linux/amd64", &[], &[base()])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/usr/lib/libc.so.6 is an AArch64 shared object (layer 1 of 1"),
        "{e}"
    );
}

#[test]
fn the_final_file_system_counts() {
    let foreign = Layer::new()
        .file("opt/tool/bin/a", &x86_64_exe())
        .file("opt/tool/bin/b", &x86_64_exe())
        .file("usr/local/bin/hello", &x86_64_exe())
        .file("usr/local/bin/again", &x86_64_exe())
        .file("srv/link-target", &x86_64_exe())
        .tar();
    let cleanup = Layer::new()
        // `RUN rm -rf /opt/tool`: a whiteout of the directory.
        .file("opt/.wh.tool", b"")
        // `RUN rm /usr/local/bin/hello`.
        .file("usr/local/bin/.wh.hello", b"")
        // Replaced by a script, and the other by a symbolic link.
        .file("usr/local/bin/again", b"#!/bin/sh\n")
        .entry(tar::EntryType::Symlink, "srv/link-target", "/bin/true", b"")
        .tar();
    let s = check("linux/arm64", &[], &[base(), foreign.clone(), cleanup]).unwrap();
    // Judged as they came; only the arm64 library is for the platform, the rest were deleted.
    assert_eq!((s.judged, s.native), (6, 1));

    // An opaque directory hides what lower layers had in it, not what its own layer adds.
    let opaque = Layer::new()
        .file("opt/tool/.wh..wh..opq", b"")
        .file("opt/tool/bin/c", &x86_64_exe())
        .file("usr/.wh..wh..opq", b"")
        .file("srv/.wh..wh..opq", b"")
        .tar();
    let e = check("linux/arm64", &[], &[foreign.clone(), opaque])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/opt/tool/bin/c is an x86-64 executable (layer 2 of 2"),
        "{e}"
    );

    // A whiteout in the same layer as nothing else, or of another file, hides nothing foreign.
    let unrelated = Layer::new().file("opt/tool/bin/.wh.z", b"").tar();
    let e = check("linux/arm64", &[], &[foreign, unrelated])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("5 files cannot run on linux/arm64: "), "{e}");
}

#[test]
fn a_file_replacing_a_directory_hides_what_was_below_it() {
    let foreign = Layer::new().file("opt/tool/bin/a", &x86_64_exe()).tar();
    let replaced = Layer::new().file("opt/tool", b"now a file").tar();
    check("linux/arm64", &[], &[foreign, replaced]).unwrap();
}

#[test]
fn hard_links_to_foreign_files_are_foreign() {
    let layer = Layer::new()
        .file("usr/bin/real", &x86_64_exe())
        .entry(tar::EntryType::Link, "usr/bin/alias", "usr/bin/real", b"")
        .tar();
    let rm = Layer::new().file("usr/bin/.wh.real", b"").tar();
    let e = check("linux/arm64", &[], std::slice::from_ref(&layer))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("2 files cannot run on linux/arm64: /usr/bin/alias is an x86-64 executable"),
        "{e}"
    );
    // A link to an allowed file is that file: allowed too.
    check(
        "linux/arm64",
        &["/usr/bin/real"],
        std::slice::from_ref(&layer),
    )
    .unwrap();
    // The link outlives its target's deletion.
    let e = check("linux/arm64", &[], &[layer, rm])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/usr/bin/alias is an x86-64"), "{e}");
}

#[test]
fn allowed_globs_are_not_judged() {
    let layer = Layer::new()
        .file("usr/bin/qemu-x86_64-static", &x86_64_exe())
        .file(
            "usr/x86_64-linux-gnu/lib/libc.so.6",
            &header(2, 1, 3, X86_64),
        )
        .file("usr/local/bin/hello", &x86_64_exe())
        .tar();
    let s = check(
        "linux/arm64",
        &[
            "/usr/bin/qemu-*-static",
            "/usr/x86_64-linux-gnu/**",
            "/usr/local/bin/hello",
        ],
        std::slice::from_ref(&layer),
    )
    .unwrap();
    assert_eq!((s.judged, s.native, s.allowed), (3, 0, 3));
    let e = check("linux/arm64", &["/usr/bin/qemu-*"], &[layer])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "2 files cannot run on linux/arm64: /usr/local/bin/hello is an x86-64 executable"
        ),
        "{e}"
    );
    assert!(
        e.contains("/usr/x86_64-linux-gnu/lib/libc.so.6 is an x86-64 shared object"),
        "{e}"
    );
    assert!(
        e.ends_with("--allow-foreign-binary GLOB (e.g. '/usr/local/bin/hello')"),
        "{e}"
    );
}

#[test]
fn many_findings_are_bounded() {
    let mut layer = Layer::new();
    for i in 0..12 {
        layer = layer.file(&format!("bin/t{i:02}"), &header(2, 1, 2, X86_64));
    }
    let e = check("linux/s390x", &[], &[layer.tar()]).unwrap_err();
    let CheckError::Foreign { found, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(found.len(), 12);
    assert!(
        e.to_string()
            .contains("; and 7 more (the build log lists up to 50)"),
        "{e}"
    );

    let mut layer = Layer::new();
    for i in 0..=MAX_TRACKED {
        layer = layer.file(&format!("bin/t{i}"), &header(2, 1, 2, X86_64));
    }
    let e = check("linux/arm64", &[], &[layer.tar()])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("more than 4096 files in the image are for another architecture than linux/arm64, the first /bin/t"),
        "{e}"
    );
}

#[test]
fn long_names_and_pax_paths_are_followed() {
    let long = format!("opt/{}/hello", "d".repeat(300));
    let mut pax_layer = tar::Builder::new(Vec::new());
    let record = |k: &str, v: &str| {
        let body = format!(" {k}={v}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        format!("{len}{body}")
    };
    let pax = record("path", "srv/pax/named/hello");
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_path("PaxHeaders/hello").unwrap();
    h.set_size(pax.len() as u64);
    h.set_cksum();
    pax_layer.append(&h, pax.as_bytes()).unwrap();
    let exe = x86_64_exe();
    let mut h = tar::Header::new_ustar();
    h.set_path("short").unwrap();
    h.set_size(exe.len() as u64);
    h.set_cksum();
    pax_layer.append(&h, &exe[..]).unwrap();
    let layers = [
        Layer::new().file(&long, &x86_64_exe()).tar(),
        pax_layer.into_inner().unwrap(),
    ];
    let e = check("linux/arm64", &[], &layers).unwrap_err().to_string();
    assert!(
        e.contains(&format!("/{long} is an x86-64 executable (layer 1 of 2")),
        "{e}"
    );
    assert!(
        e.contains("/srv/pax/named/hello is an x86-64 executable (layer 2 of 2"),
        "{e}"
    );
}

/// A GNU long-name header claiming `size` bytes, followed by nothing.
fn long_name_header(size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_path("././@LongLink").unwrap();
    h.set_size(size);
    h.set_cksum();
    h.as_bytes().to_vec()
}

#[test]
fn hostile_layers_fail_with_a_clear_error() {
    let unreadable =
        |layers: &[Vec<u8>]| check("linux/arm64", &[], layers).unwrap_err().to_string();
    // A "name" of a terabyte is refused before any of it is read.
    let e = unreadable(&[long_name_header(1 << 40)]);
    assert!(
        e.starts_with("the binary check cannot read layer 1 of 1 (sha256:")
            && e.contains("not a valid tar stream at byte 0: a long name of 1099511627776 bytes (at most 4096)"),
        "{e}"
    );
    // Truncated in the middle of a file.
    let mut cut = Layer::new().file("bin/x", &x86_64_exe()).tar();
    cut.truncate(2048);
    let e = unreadable(&[cut]);
    assert!(
        e.contains("the stream ends inside an entry's content"),
        "{e}"
    );
    // Garbage instead of a header.
    let e = unreadable(&[vec![b'z'; 1024]]);
    assert!(
        e.contains("at byte 0: the checksum field is not a number"),
        "{e}"
    );
    // A path leading out of the root.
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..9].copy_from_slice(b"../escape");
    h.set_size(0);
    h.set_cksum();
    let e = unreadable(&[h.as_bytes().to_vec()]);
    assert!(
        e.contains("the path '../escape' leads out of the root"),
        "{e}"
    );

    // Not gzip at all, and gzip cut short.
    let platform = Platform::parse("linux/arm64").unwrap();
    let cancel = CancellationToken::new();
    let mut scan = Scan::new(&platform, AllowedPaths::default()).unwrap();
    let e = read_layer(
        &mut scan,
        &layer_id(1, 1),
        &b"plain text"[..],
        Compression::Gzip,
        &cancel,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("it cannot be decompressed or read: invalid gzip header"),
        "{e}"
    );
    let mut gz = gzip(&Layer::new().file("bin/x", &x86_64_exe()).tar());
    gz.truncate(gz.len() - 10);
    let e = read_layer(
        &mut scan,
        &layer_id(1, 1),
        &gz[..],
        Compression::Gzip,
        &cancel,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("cannot read layer 1 of 1"), "{e}");
}

#[test]
fn a_cancelled_check_stops() {
    let platform = Platform::parse("linux/arm64").unwrap();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let mut scan = Scan::new(&platform, AllowedPaths::default()).unwrap();
    let tar = Layer::new().file("a", b"x").tar();
    let e = read_layer(
        &mut scan,
        &layer_id(1, 1),
        &tar[..],
        Compression::None,
        &cancel,
    );
    assert!(matches!(e, Err(CheckError::Cancelled)));
}

#[test]
fn media_types() {
    for (t, c) in [
        (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Gzip,
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Gzip,
        ),
        ("application/vnd.oci.image.layer.v1.tar", Compression::None),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            Compression::Gzip,
        ),
    ] {
        assert_eq!(compression(t), Ok(c), "{t}");
    }
    let e = compression("application/vnd.oci.image.layer.v1.tar+zstd").unwrap_err();
    assert!(e.contains("zstd-compressed"), "{e}");
    let e = compression("application/vnd.oci.image.config.v1+json").unwrap_err();
    assert!(e.contains("is not a tar layer"), "{e}");
}

#[test]
fn a_layout_is_checked_from_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer = gzip(
        &Layer::new()
            .file("usr/local/bin/hello", &x86_64_exe())
            .tar(),
    );
    let digest = "sha256:".to_string() + &"a".repeat(64);
    std::fs::write(blobs.join("a".repeat(64)), &layer).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:00", "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": layer.len()}],
    })
    .to_string();
    let cancel = CancellationToken::new();
    let blob = |d: &str| layout_blob(dir.path(), d);
    let amd64 = Platform::parse("linux/amd64").unwrap();
    let s = check_image(
        manifest.as_bytes(),
        blob,
        &amd64,
        AllowedPaths::default(),
        &cancel,
    )
    .unwrap()
    .unwrap();
    assert_eq!((s.layers, s.judged), (1, 1));
    let arm64 = Platform::parse("linux/arm64").unwrap();
    let e = check_image(
        manifest.as_bytes(),
        blob,
        &arm64,
        AllowedPaths::default(),
        &cancel,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(&format!("(layer 1 of 1, {digest})")), "{e}");
}

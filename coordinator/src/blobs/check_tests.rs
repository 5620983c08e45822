use std::io::Write;

use super::*;

/// One raw tar member: a GNU header of `kind` for `name` claiming `size` bytes, then `data` padded
/// to whole blocks (`data` may be shorter than `size` to make a truncated or lying archive).
fn member(kind: EntryType, name: &str, size: u64, data: &[u8]) -> Vec<u8> {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn file(name: &str, data: &[u8]) -> Vec<u8> {
    member(EntryType::Regular, name, data.len() as u64, data)
}

/// A PAX record `len key=value\n`, its length counting itself.
fn pax(key: &str, value: &str) -> Vec<u8> {
    let rest = format!(" {key}={value}\n");
    let mut len = rest.len() + 1;
    while len.to_string().len() + rest.len() != len {
        len += 1;
    }
    format!("{len}{rest}").into_bytes()
}

fn end(mut tar: Vec<u8>) -> Vec<u8> {
    tar.extend_from_slice(&[0; 1024]);
    tar
}

/// A reader that counts what is taken from it.
struct Counting<'a, R> {
    inner: R,
    taken: &'a Cell<u64>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.taken.set(self.taken.get() + n as u64);
        Ok(n)
    }
}

/// Walks `tar` with `limits`; returns the outcome and how many bytes of it were read.
fn walk_counting(tar: &[u8], limits: &Limits) -> (Result<Walked, CheckError>, u64) {
    let taken = Cell::new(0);
    let r = walk(
        Counting {
            inner: tar,
            taken: &taken,
        },
        limits,
        |_, _| false,
    );
    (r, taken.get())
}

#[test]
fn accepts_an_ordinary_archive_and_sees_long_names() {
    let long = format!("{}/Dockerfile", "d".repeat(200));
    let mut tar = member(
        EntryType::GNULongName,
        "././@LongLink",
        long.len() as u64 + 1,
        format!("{long}\0").as_bytes(),
    );
    tar.extend(file("ignored-short-name", b"FROM scratch\n"));
    let record = pax("path", "p/from-pax");
    tar.extend(member(
        EntryType::XHeader,
        "PaxHeaders/x",
        record.len() as u64,
        &record,
    ));
    tar.extend(file("ignored-too", b"1"));
    tar.extend(file("plain", b"22"));
    let tar = end(tar);
    let mut seen = Vec::new();
    let walked = walk(tar.as_slice(), &Limits::default(), |p, _| {
        seen.push(String::from_utf8_lossy(p).into_owned());
        false
    })
    .unwrap();
    assert_eq!(seen, [long.as_str(), "p/from-pax", "plain"]);
    assert_eq!((walked.entries, walked.bytes), (3, 13 + 1 + 2));
    assert!(!walked.stopped);
    assert_eq!(walked.decompressed, tar.len() as u64 - 512);
}

#[test]
fn a_long_name_bomb_is_refused_from_its_header_without_reading_it() {
    // 16 MiB claimed and present: the walk must stop at the header, not read the name.
    let claimed = 16 << 20;
    let tar = end(member(
        EntryType::GNULongName,
        "././@LongLink",
        claimed,
        &vec![b'a'; claimed as usize],
    ));
    let (r, taken) = walk_counting(&tar, &Limits::default());
    match r {
        Err(e @ CheckError::HeadersTooLarge { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("65536") && msg.contains(&claimed.to_string()),
                "{msg}"
            );
            assert!(msg.contains("the start of the archive"), "{msg}");
            assert_eq!(e.code(), "context_headers_too_large");
            assert!(e.over_limit());
        }
        other => panic!("{other:?}"),
    }
    assert!(taken <= 8 << 10, "read {taken} bytes of the bomb");
}

#[test]
fn pax_records_and_header_chains_share_the_header_cap() {
    let mut tar = file("first", b"x");
    let record = pax("comment", &"c".repeat(70 << 10));
    tar.extend(member(
        EntryType::XHeader,
        "PaxHeaders/x",
        record.len() as u64,
        &record,
    ));
    let (r, _) = walk_counting(&end(tar), &Limits::default());
    assert!(
        matches!(&r, Err(CheckError::HeadersTooLarge { after, .. }) if after == "entry 'first'"),
        "{r:?}"
    );

    // Each piece fits; together they do not.
    let name = vec![b'n'; 40 << 10];
    let mut tar = member(
        EntryType::GNULongName,
        "././@LongLink",
        name.len() as u64,
        &name,
    );
    tar.extend(member(
        EntryType::GNULongLink,
        "././@LongLink",
        name.len() as u64,
        &name,
    ));
    let (r, _) = walk_counting(&end(tar), &Limits::default());
    assert!(
        matches!(r, Err(CheckError::HeadersTooLarge { size: Some(_), .. })),
        "{r:?}"
    );

    // A long name that fills the cap leaves no room for its entry's own header block; the meter
    // stops the tar reader there, as an agent's would.
    let name = vec![b'n'; (MAX_HEADER_BYTES - 1024 + 1) as usize];
    let tar = [
        member(
            EntryType::GNULongName,
            "././@LongLink",
            name.len() as u64,
            &name,
        ),
        file("f", b""),
    ]
    .concat();
    match walk_counting(&end(tar), &Limits::default()).0 {
        Err(e @ CheckError::HeadersTooLarge { size: None, .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("more than 65536 bytes (long names"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn too_many_entries_are_refused() {
    let limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 3,
    };
    let mut tar = Vec::new();
    for i in 0..3 {
        tar.extend(file(&format!("f{i}"), b"x"));
    }
    assert_eq!(
        walk_counting(&end(tar.clone()), &limits).0.unwrap().entries,
        3
    );
    tar.extend(file("f3", b"x"));
    match walk_counting(&end(tar), &limits).0 {
        Err(e @ CheckError::TooManyEntries { limit: 3 }) => {
            assert!(e.to_string().contains("more than 3 entries"), "{e}");
            assert_eq!(e.code(), "context_too_many_entries");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn over_long_paths_components_and_link_targets_are_refused() {
    let check = |tar: Vec<u8>, what: &str, len: usize, limit: usize| match walk_counting(
        &end(tar),
        &Limits::default(),
    )
    .0
    {
        Err(e @ CheckError::PathTooLong { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("its {what} is {len} bytes long"))
                    && msg.contains(&format!("limit of {limit} bytes")),
                "{msg}"
            );
            // The entry is named, but not quoted whole.
            assert!(msg.len() < 400, "{msg}");
            assert_eq!(e.code(), "context_path_too_long");
            assert!(!e.over_limit());
        }
        other => panic!("{what}: {other:?}"),
    };
    let deep = "d/".repeat(2100) + "f";
    let tar = member(
        EntryType::GNULongName,
        "././@LongLink",
        deep.len() as u64,
        deep.as_bytes(),
    );
    check(
        [tar, file("x", b"")].concat(),
        "path",
        deep.len(),
        MAX_PATH_BYTES,
    );
    let wide = "w".repeat(256);
    let tar = member(
        EntryType::GNULongName,
        "././@LongLink",
        wide.len() as u64,
        wide.as_bytes(),
    );
    check([tar, file("x", b"")].concat(), "path component", 256, 255);
    let target = format!("a/{}", "t".repeat(300));
    let record = pax("linkpath", &target);
    let tar = member(
        EntryType::XHeader,
        "PaxHeaders/l",
        record.len() as u64,
        &record,
    );
    check(
        [tar, member(EntryType::Symlink, "l", 0, b"")].concat(),
        "link target component",
        300,
        255,
    );

    // Right at the limits is fine.
    let longest = ["c".repeat(240).as_str(); 17].join("/");
    assert_eq!(longest.len(), MAX_PATH_BYTES);
    let tar = member(
        EntryType::GNULongName,
        "././@LongLink",
        longest.len() as u64,
        longest.as_bytes(),
    );
    walk_counting(&end([tar, file("x", b"")].concat()), &Limits::default())
        .0
        .unwrap();
}

#[test]
fn a_gzip_bomb_is_refused_before_it_is_decompressed() {
    // 16 MiB of zeros gzip to about 16 KiB; the cap is 1 MiB.
    let limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 100,
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&file("small", &[1; 1000])).unwrap();
    gz.write_all(&member(EntryType::Regular, "bomb", 16 << 20, &[]))
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..16 {
        gz.write_all(&zeros).unwrap();
    }
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 64 << 10, "{}", gz.len());
    let taken = Cell::new(0);
    let decompressed = Counting {
        inner: flate2::read::GzDecoder::new(gz.as_slice()),
        taken: &taken,
    };
    match walk(decompressed, &limits, |_, _| false) {
        Err(e @ CheckError::TooLarge { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("1048576 bytes") && msg.contains("'bomb'"),
                "{msg}"
            );
            assert_eq!(e.code(), "context_unpacks_too_large");
            assert!(e.over_limit());
        }
        other => panic!("{other:?}"),
    }
    // Its two headers and the small file, not the bomb's data.
    assert!(taken.get() <= 3 << 10, "decompressed {} bytes", taken.get());

    // Many entries each under the cap add up past it.
    let mut tar = Vec::new();
    for i in 0..3 {
        tar.extend(file(&format!("part{i}"), &vec![7; 400 << 10]));
    }
    let r = walk_counting(&end(tar), &limits).0;
    assert!(
        matches!(&r, Err(CheckError::TooLarge { entry, .. }) if entry == "part2"),
        "{r:?}"
    );
}

#[test]
fn entries_the_raw_reader_would_misread_are_refused() {
    // A PAX size that disagrees with the header would make agents read another archive.
    let record = pax("size", "5");
    let tar = [
        member(
            EntryType::XHeader,
            "PaxHeaders/f",
            record.len() as u64,
            &record,
        ),
        file("f", b"1"),
    ]
    .concat();
    let r = walk_counting(&end(tar), &Limits::default()).0;
    assert!(
        matches!(&r, Err(CheckError::Unsupported { entry, reason }) if entry == "f" && reason.contains("PAX size")),
        "{r:?}"
    );
    // A huge PAX size counts against the cap before anything else.
    let record = pax("size", &(1u64 << 40).to_string());
    let tar = [
        member(
            EntryType::XHeader,
            "PaxHeaders/f",
            record.len() as u64,
            &record,
        ),
        file("f", b"1"),
    ]
    .concat();
    let r = walk_counting(&end(tar), &Limits::default()).0;
    assert!(matches!(r, Err(CheckError::TooLarge { .. })), "{r:?}");

    let r = walk_counting(
        &end(member(EntryType::GNUSparse, "s", 0, b"")),
        &Limits::default(),
    )
    .0;
    assert!(
        matches!(&r, Err(CheckError::Unsupported { reason, .. }) if reason.contains("sparse")),
        "{r:?}"
    );
}

#[test]
fn broken_archives_are_refused() {
    // Truncated inside an entry's data.
    let mut tar = file("f", &[1; 2000]);
    tar.truncate(1000);
    let r = walk_counting(&tar, &Limits::default()).0;
    assert!(matches!(r, Err(CheckError::Corrupt(_))), "{r:?}");
    // A long name with no entry after it.
    let tar = end(member(EntryType::GNULongName, "././@LongLink", 3, b"abc"));
    let r = walk_counting(&tar, &Limits::default()).0;
    assert!(
        matches!(&r, Err(CheckError::Corrupt(m)) if m.contains("no entry for it")),
        "{r:?}"
    );
    // Two long names for one entry.
    let tar = end([
        member(EntryType::GNULongName, "././@LongLink", 1, b"a"),
        member(EntryType::GNULongName, "././@LongLink", 1, b"b"),
        file("f", b""),
    ]
    .concat());
    let r = walk_counting(&tar, &Limits::default()).0;
    assert!(matches!(r, Err(CheckError::Corrupt(_))), "{r:?}");
    // A bad checksum.
    let mut tar = end(file("f", b"x"));
    tar[0] ^= 1;
    let r = walk_counting(&tar, &Limits::default()).0;
    assert!(
        matches!(&r, Err(e @ CheckError::Corrupt(_)) if e.code() == "invalid_context"),
        "{r:?}"
    );
}

#[test]
fn visit_can_stop_the_walk() {
    let tar = end([file("a", b"1"), file("b", b"2"), file("c", b"3")].concat());
    let walked = walk(tar.as_slice(), &Limits::default(), |p, _| p == b"b").unwrap();
    assert!(walked.stopped);
    assert_eq!(walked.entries, 2);
}

//! Hostile context uploads, in process on port 0: the coordinator checks an archive within the caps
//! agents unpack it with, answers with the JSON error naming the cap, and keeps nothing.

mod common;

use std::io::Write;

use common::{error_of, Coordinator};
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

/// A gzip'd tar whose raw members are `members`: (type, name in the header, claimed size, data).
fn gzip_tar(members: &[(tar::EntryType, &str, u64, &[u8])]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for (kind, name, size, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(*size);
        h.set_mode(0o644);
        h.set_cksum();
        gz.write_all(h.as_bytes()).unwrap();
        gz.write_all(data).unwrap();
        gz.write_all(&vec![0; (512 - data.len() % 512) % 512])
            .unwrap();
    }
    gz.write_all(&[0; 1024]).unwrap();
    gz.finish().unwrap()
}

/// PUTs `bytes` under their digest; returns the digest and the answer.
async fn put(c: &Coordinator, bytes: Vec<u8>) -> (String, reqwest::Response) {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    let res = c
        .http
        .put(c.url(&format!("/contexts/{digest}")))
        .body(bytes)
        .send()
        .await
        .unwrap();
    (digest, res)
}

async fn assert_not_stored(c: &Coordinator, digest: &str) {
    let res = c
        .http
        .head(c.url(&format!("/contexts/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // Neither the archive nor its partial upload is left in the data directory.
    let left: Vec<_> = std::fs::read_dir(c.data.path().join("contexts"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(c.contexts_in_database().await, 0, "nor in the database");
}

#[tokio::test]
async fn a_long_name_bomb_is_refused_and_not_stored() {
    let c = Coordinator::start(&[]).await;
    // A GNU long name claiming 1 GiB: the first MiB of it is there (a few KiB gzip'd), the rest
    // would never be read anyway.
    let name = vec![b'a'; 1 << 20];
    let bomb = gzip_tar(&[(tar::EntryType::GNULongName, "././@LongLink", 1 << 30, &name)]);
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let (digest, res) = put(&c, bomb).await;
    let (status, e) = error_of(res).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "context_headers_too_large")
    );
    assert!(
        e.message.contains("1073741824 bytes")
            && e.message.contains("65536 bytes")
            && e.message.contains("the start of the archive"),
        "{}",
        e.message
    );
    assert_not_stored(&c, &digest).await;
    c.stop().await;
}

#[tokio::test]
async fn over_long_paths_are_refused_and_not_stored() {
    let c = Coordinator::start(&[]).await;
    let wide = format!("dir/{}", "w".repeat(300));
    let bytes = gzip_tar(&[
        (
            tar::EntryType::GNULongName,
            "././@LongLink",
            wide.len() as u64,
            wide.as_bytes(),
        ),
        (tar::EntryType::Regular, "short", 0, b""),
    ]);
    let (digest, res) = put(&c, bytes).await;
    let (status, e) = error_of(res).await;
    assert_eq!(
        (status, e.code.as_str()),
        (StatusCode::BAD_REQUEST, "context_path_too_long")
    );
    assert!(
        e.message.contains("path component is 300 bytes long")
            && e.message.contains("limit of 255 bytes")
            && e.message.contains("'dir/www"),
        "{}",
        e.message
    );
    assert_not_stored(&c, &digest).await;

    // A context within the caps is still taken.
    let digest = c.upload(&[("Dockerfile", "FROM scratch\n")]).await;
    let res = c
        .http
        .head(c.url(&format!("/contexts/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    c.stop().await;
}

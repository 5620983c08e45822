//! Uploads Amazon ECR accepts (issue 17). ECR cannot run here, so `tests/support/ecr_proxy.rs`
//! puts its documented upload rules in front of a real `docker-registry`: every `PATCH` part but a
//! blob's last at least 5 MiB (otherwise `400`, "All layer parts except the last part should be at
//! least 5MB"), `201` answered to a `PATCH`, a `Range` header that stops advancing after the first
//! part, and no cross-repository mounts (the registry answers `202` with an upload session).
//!
//! A build whose image has a layer of 12 MiB of random bytes (not compressible below 5 MiB) goes
//! through the proxy under two tags in two repositories: the agent pushes it to the first in parts,
//! the coordinator, refused a mount, copies it to the second in parts too. Nothing is refused, and
//! skopeo reads the image back from the second repository with the file intact.

use std::collections::BTreeMap;
use std::io::Read as _;

use archfarm_e2e::ecr_proxy::{Seen, MIN_PART_BYTES, PART_TOO_SMALL};
use archfarm_e2e::oci::{inspect_raw, sha256_digest};
use archfarm_e2e::{
    last_line, preflight, Agent, AgentOptions, BuildContext, Coordinator, EcrProxy, ImageFs,
    Registry,
};

/// Size of the random file, so its layer is two parts: one of 8 MiB, and the rest.
const BIG_BYTES: u64 = 12 << 20;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `PATCH` parts of each upload session into `repository`, in order, with their statuses.
fn parts_into(seen: &[Seen], repository: &str) -> BTreeMap<String, Vec<(u64, u16)>> {
    let prefix = format!("/v2/{repository}/blobs/uploads/");
    let mut out: BTreeMap<String, Vec<(u64, u16)>> = BTreeMap::new();
    for s in seen.iter().filter(|s| s.method == "PATCH") {
        if let Some(rest) = s.uri.strip_prefix(&prefix) {
            let session = rest.split('?').next().unwrap_or_default().to_string();
            out.entry(session)
                .or_default()
                .push((s.body_bytes, s.status));
        }
    }
    out
}

/// Every part but each session's last is at least 5 MiB, every one was answered 201, and at least
/// one session had more than one part. Returns the sessions' part sizes for the log.
fn check_parts(seen: &[Seen], repository: &str) -> Vec<Vec<u64>> {
    let sessions = parts_into(seen, repository);
    for (session, parts) in &sessions {
        for (i, (bytes, status)) in parts.iter().enumerate() {
            assert_eq!(*status, 201, "{repository} {session} part {i}");
            if i + 1 < parts.len() {
                assert!(
                    *bytes >= MIN_PART_BYTES,
                    "{repository} {session}: {parts:?}"
                );
            }
        }
    }
    assert!(
        sessions.values().any(|p| p.len() >= 2),
        "no upload into {repository} went in several parts: {sessions:?}"
    );
    sessions
        .values()
        .map(|p| p.iter().map(|(b, _)| *b).collect())
        .collect()
}

/// The proxy itself: a second part after one under 5 MiB is refused with ECR's words.
fn proxy_refuses_small_parts(proxy: &EcrProxy) {
    let http = archfarm_e2e::http_client();
    let started = http
        .post(format!("http://{}/v2/probe/blobs/uploads/", proxy.host()))
        .send()
        .unwrap();
    assert_eq!(started.status(), 202);
    let mut location = started.headers()["location"].to_str().unwrap().to_string();
    let part = vec![7u8; 1 << 20];
    for (i, want) in [(0u64, 201u16), (1, 400)] {
        let start = i * part.len() as u64;
        let res = http
            .patch(&location)
            .header("content-type", "application/octet-stream")
            .header(
                "content-range",
                format!("{start}-{}", start + part.len() as u64 - 1),
            )
            .body(part.clone())
            .send()
            .unwrap();
        assert_eq!(res.status(), want, "part {i}");
        if let Some(l) = res.headers().get("location") {
            location = l.to_str().unwrap().to_string();
        }
        if want == 400 {
            assert!(res.text().unwrap().contains(PART_TOO_SMALL));
        }
    }
}

#[test]
fn pushes_and_copies_go_up_in_parts_ecr_accepts() {
    preflight();
    let registry = Registry::start();
    let proxy = EcrProxy::start(registry.host());
    proxy_refuses_small_parts(&proxy);
    let probed = proxy.seen().len();

    let coordinator = Coordinator::start();
    let _agent = Agent::start(
        &coordinator,
        AgentOptions::new("amd64")
            .platform("linux/amd64")
            .emulate("none"),
    );
    let context = BuildContext::hello();
    let mut big = Vec::new();
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .take(BIG_BYTES)
        .read_to_end(&mut big)
        .unwrap();
    std::fs::write(context.path().join("big.bin"), &big).unwrap();
    let dockerfile = context.path().join("Dockerfile");
    let mut text_of = std::fs::read_to_string(&dockerfile).unwrap();
    text_of.push_str("COPY big.bin /big.bin\n");
    std::fs::write(&dockerfile, text_of).unwrap();

    let app = format!("{}/ecr/app:1", proxy.host());
    let mirror = format!("{}/ecr/mirror:1", proxy.host());
    let out = coordinator.cli(&[
        "build",
        "--push",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-t",
        &app,
        "-t",
        &mirror,
        &context.arg(),
    ]);
    // What the farm sent, after the probe's own (refused) part.
    let seen = proxy.seen().split_off(probed);
    assert!(
        out.status.success(),
        "archfarm build failed: {}\n{}\nrefused by the proxy: {:#?}",
        text(&out.stderr),
        coordinator.log_tail(40),
        seen.iter().filter(|s| s.refused).collect::<Vec<_>>()
    );
    let digest = last_line(&out.stdout);
    assert!(
        !seen.iter().any(|s| s.refused),
        "{:#?}",
        seen.iter().filter(|s| s.refused).collect::<Vec<_>>()
    );

    // The agent's push and the coordinator's copy both went in parts of at least 5 MiB.
    let pushed = check_parts(&seen, "ecr/app");
    let copied = check_parts(&seen, "ecr/mirror");
    eprintln!("PATCH parts (bytes) per upload: ecr/app {pushed:?}, ecr/mirror {copied:?}");
    // Blobs that fit in one part went up in one PUT (POST, then PUT with the body).
    assert!(
        seen.iter().any(|s| s.method == "PUT"
            && s.uri.starts_with("/v2/ecr/app/blobs/uploads/")
            && s.body_bytes > 0
            && s.status == 201),
        "no monolithic upload"
    );
    // The mount was refused (202) and the blobs copied instead.
    let mounts: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == "POST" && s.uri.contains("mount="))
        .collect();
    assert!(
        !mounts.is_empty() && mounts.iter().all(|s| s.status == 202),
        "{mounts:#?}"
    );

    // Read back: the same index under both tags, the big file intact in the second repository.
    assert_eq!(sha256_digest(&inspect_raw(&app).unwrap()), digest);
    assert_eq!(sha256_digest(&inspect_raw(&mirror).unwrap()), digest);
    let image = ImageFs::unpack(&mirror);
    let read = std::fs::read(image.root().join("big.bin")).unwrap();
    assert!(read == big, "big.bin differs after the copy");
}

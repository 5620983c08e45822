//! Hostile build contexts end to end (issue 5): archives made by hand, byte by byte, uploaded over the
//! HTTP API (`PUT /api/v1/contexts/sha256:…`, `POST /api/v1/jobs`; the CLI only packs real
//! directories) to a real coordinator, and leased by a real agent. Archives past a size, count or
//! length cap are refused at upload by the coordinator, with the JSON error naming the cap, and are
//! not stored. The others must end in a failed build whose error names the entry that was refused,
//! and a marker path outside the build directory that the archive aims at must not be created or
//! changed. A harmless hand-made archive builds, so the refusals are the hostility's doing and not the
//! harness's.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use archfarm_e2e::archive::{Kind, Tar};
use archfarm_e2e::oci::sha256_digest;
use archfarm_e2e::{preflight, Agent, AgentOptions, Coordinator, Registry};
use archfarm_protocol::api::{BuildState, ErrorResponse, Job, JobState};
use reqwest::Method;

/// How long one hand-made job may take (they fail at unpacking; the harmless one builds natively).
const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// What every hostile archive starts with, so the coordinator accepts the job.
const DOCKERFILE: &[u8] = b"FROM scratch\nCOPY hello.txt /hello.txt\n";

/// A path next to the system's temporary files that an archive tries to create or change; removed
/// on drop.
struct Marker {
    path: PathBuf,
    /// What it held before the build, when it existed.
    before: Option<Vec<u8>>,
}

impl Marker {
    /// A path that does not exist.
    fn absent(case: &str) -> Marker {
        let path = std::env::temp_dir().join(format!(
            "archfarm-hostile-{}-{case}",
            uuid::Uuid::new_v4().simple()
        ));
        assert!(!path.exists(), "{} exists already", path.display());
        Marker { path, before: None }
    }

    /// A file holding `contents`.
    fn existing(case: &str, contents: &[u8]) -> Marker {
        let mut m = Marker::absent(case);
        std::fs::write(&m.path, contents).expect("write the marker");
        m.before = Some(contents.to_vec());
        m
    }

    /// The marker's absolute path as a string.
    fn abs(&self) -> String {
        self.path.display().to_string()
    }

    /// A relative path from anywhere up to the marker: more `..` than any build directory is deep.
    fn climb(&self) -> String {
        format!("{}{}", "../".repeat(40), self.abs().trim_start_matches('/'))
    }

    /// The marker's directory, climbed to the same way.
    fn climb_to_dir(&self) -> String {
        let dir = self.path.parent().expect("the marker has a directory");
        format!(
            "{}{}",
            "../".repeat(40),
            dir.display().to_string().trim_start_matches('/')
        )
    }

    /// The marker's file name.
    fn name(&self) -> String {
        self.path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned()
    }

    /// Panics if the build created the marker, or changed or linked to it.
    fn assert_untouched(&self, case: &str) {
        match &self.before {
            None => assert!(
                std::fs::symlink_metadata(&self.path).is_err(),
                "{case}: the archive created {}",
                self.path.display()
            ),
            Some(before) => {
                let now = std::fs::read(&self.path).expect("read the marker");
                assert_eq!(&now, before, "{case}: {} was changed", self.path.display());
                let links = std::fs::metadata(&self.path)
                    .expect("stat the marker")
                    .nlink();
                assert_eq!(links, 1, "{case}: {} was hard-linked", self.path.display());
            }
        }
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One hostile archive and what its failure must say.
struct Case {
    name: &'static str,
    archive: Vec<u8>,
    /// Substrings the build's error must contain.
    needles: Vec<String>,
    /// What it aims at outside the build directory, if anything.
    marker: Option<Marker>,
    /// The status and error code of the coordinator's refusal at upload, for archives past a cap
    /// (the message must contain `needles`); None when the agent is the one to refuse.
    at_upload: Option<(u16, &'static str)>,
}

/// PUTs `archive` as a context; returns its digest, the status and the body.
fn upload(coordinator: &Coordinator, archive: &[u8]) -> (String, u16, String) {
    let digest = sha256_digest(archive);
    let resp = coordinator
        .request(Method::PUT, &format!("/api/v1/contexts/{digest}"))
        .header("content-type", "application/gzip")
        .body(archive.to_vec())
        .send()
        .expect("PUT context");
    let status = resp.status().as_u16();
    (digest, status, resp.text().unwrap_or_default())
}

/// Uploads `archive` and submits a linux/amd64 job for it; returns the job id.
fn submit(coordinator: &Coordinator, archive: &[u8], tag: &str) -> uuid::Uuid {
    let (digest, status, body) = upload(coordinator, archive);
    assert_eq!(status, 201, "PUT context {tag}: {body}");
    let request = serde_json::json!({
        "context": digest,
        "platforms": ["linux/amd64"],
        "tags": [tag],
    });
    let resp = coordinator
        .request(Method::POST, "/api/v1/jobs")
        .json(&request)
        .send()
        .expect("POST job");
    let status = resp.status();
    let body = resp.text().unwrap_or_default();
    assert_eq!(status, 201, "POST job {tag}: {body}");
    let job: Job =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not a Job ({e}): {body}"));
    job.id
}

/// The hostile archives, each after a Dockerfile.
fn cases() -> Vec<Case> {
    let base = || Tar::new().file("Dockerfile", DOCKERFILE);
    let mut cases = Vec::new();

    let m = Marker::absent("dotdot");
    let path = m.climb();
    cases.push(Case {
        name: "dotdot",
        archive: base().file(&path, b"escaped\n").into_tar_gz(),
        needles: vec![
            format!("context entry '{path}' refused"),
            "'..' components are not allowed".into(),
        ],
        marker: Some(m),
        at_upload: None,
    });

    let m = Marker::absent("absolute");
    cases.push(Case {
        name: "absolute",
        archive: base().file(&m.abs(), b"escaped\n").into_tar_gz(),
        needles: vec![format!(
            "context entry '{}' refused: absolute paths are not allowed",
            m.abs()
        )],
        marker: Some(m),
        at_upload: None,
    });

    // A symlink to the marker's directory, then a file written through it.
    let m = Marker::absent("symlink");
    let up = m.climb_to_dir();
    cases.push(Case {
        name: "symlink",
        archive: base()
            .symlink("out", &up)
            .file(&format!("out/{}", m.name()), b"escaped\n")
            .into_tar_gz(),
        needles: vec![format!(
            "context entry 'out' refused: symlink target '{up}' resolves outside the context directory"
        )],
        marker: Some(m),
        at_upload: None,
    });

    // A hard link to an existing file outside, then a write to the link.
    let m = Marker::existing("hardlink", b"the original\n");
    cases.push(Case {
        name: "hardlink",
        archive: base()
            .hard_link("h", &m.abs())
            .file("h", b"overwritten\n")
            .into_tar_gz(),
        needles: vec![format!(
            "context entry 'h' refused: hard link target '{}': absolute paths are not allowed",
            m.abs()
        )],
        marker: Some(m),
        at_upload: None,
    });

    cases.push(Case {
        name: "device",
        archive: base()
            .entry(Kind::CharDevice, "dev-null", "", &[])
            .into_tar_gz(),
        needles: vec![
            "context entry 'dev-null' refused: device nodes are not allowed in a context".into(),
        ],
        marker: None,
        at_upload: None,
    });

    cases.push(Case {
        name: "fifo",
        archive: base().entry(Kind::Fifo, "pipe", "", &[]).into_tar_gz(),
        needles: vec!["context entry 'pipe' refused: FIFOs are not allowed in a context".into()],
        marker: None,
        at_upload: None,
    });

    // 16 MiB of long name gzip to about 16 KiB; the coordinator refuses it from the long name's header
    // (64 KiB cap) instead of holding it in memory. (Agents stop there too: agent unit tests.)
    let bomb = vec![b'a'; 16 << 20];
    let archive = base()
        .raw(Kind::GnuLongName, b"././@LongLink", b"", &bomb)
        .file("x", b"x")
        .into_tar_gz();
    assert!(
        archive.len() < 1 << 20,
        "the bomb is {} bytes",
        archive.len()
    );
    cases.push(Case {
        name: "long-name-bomb",
        archive,
        needles: vec![
            "the context's entry headers after entry 'Dockerfile' take more than 65536 bytes"
                .into(),
            "one claims 16777216 bytes".into(),
        ],
        marker: None,
        at_upload: Some((413, "context_headers_too_large")),
    });

    // 100 000 directory entries (51 MB of tar) gzip to a few hundred KiB; the cap is 100 000 entries,
    // and the Dockerfile is one more.
    let mut tar = base();
    for _ in 0..100_000 {
        tar = tar.dir("./");
    }
    let archive = tar.into_tar_gz();
    assert!(
        archive.len() < 1 << 20,
        "the bomb is {} bytes",
        archive.len()
    );
    cases.push(Case {
        name: "entry-bomb",
        archive,
        needles: vec!["the context has more than 100000 entries".into()],
        marker: None,
        at_upload: Some((413, "context_too_many_entries")),
    });

    // 25 components of 200 bytes: 5024 bytes, past the 4096-byte path cap.
    let long = vec!["d".repeat(200); 25].join("/");
    assert_eq!(long.len(), 5024);
    cases.push(Case {
        name: "long-path",
        archive: base().file(&long, b"deep\n").into_tar_gz(),
        needles: vec![
            format!("context entry '{}…' refused", &long[..100]),
            "its path is 5024 bytes long, over the limit of 4096 bytes".into(),
        ],
        marker: None,
        at_upload: Some((400, "context_path_too_long")),
    });

    let wide = format!("dir/{}", "w".repeat(300));
    cases.push(Case {
        name: "long-component",
        archive: base().file(&wide, b"wide\n").into_tar_gz(),
        needles: vec!["its path component is 300 bytes long, over the limit of 255 bytes".into()],
        marker: None,
        at_upload: Some((400, "context_path_too_long")),
    });
    cases
}

#[test]
fn hostile_contexts_are_refused_and_nothing_escapes() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    let _agent = Agent::start(&coordinator, AgentOptions::new("amd64").emulate("none"));

    // The harness works: a harmless hand-made archive builds and is pushed.
    let harmless = Tar::new()
        .file("Dockerfile", DOCKERFILE)
        .dir("sub/")
        .symlink("sub/link", "../hello.txt")
        .file("hello.txt", b"hello\n")
        .into_tar_gz();
    let tag = format!("{}/hostile-control:t", registry.host());
    let id = submit(&coordinator, &harmless, &tag);
    let job = coordinator.wait_terminal(id, JOB_TIMEOUT);
    assert_eq!(job.state, JobState::Succeeded, "harmless archive: {job:#?}");
    assert_eq!(registry.tags("hostile-control"), vec!["t".to_string()]);

    let (refused, cases): (Vec<Case>, Vec<Case>) =
        cases().into_iter().partition(|c| c.at_upload.is_some());
    for case in &refused {
        let (digest, status, body) = upload(&coordinator, &case.archive);
        let (want_status, want_code) = case.at_upload.expect("refused at upload");
        assert_eq!(status, want_status, "{}: {body}", case.name);
        let error: ErrorResponse = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{}: not an ErrorResponse ({e}): {body}", case.name));
        assert_eq!(error.code, want_code, "{}: {body}", case.name);
        for needle in &case.needles {
            assert!(
                error.message.contains(needle.as_str()),
                "{}: the refusal does not say {needle:?}; it says {:?}",
                case.name,
                error.message
            );
        }
        let head = coordinator
            .request(Method::HEAD, &format!("/api/v1/contexts/{digest}"))
            .send()
            .expect("HEAD context");
        assert_eq!(head.status(), 404, "{}: the context was stored", case.name);
    }

    let ids: Vec<uuid::Uuid> = cases
        .iter()
        .map(|c| {
            let tag = format!("{}/hostile-{}:t", registry.host(), c.name);
            submit(&coordinator, &c.archive, &tag)
        })
        .collect();
    for (case, id) in cases.iter().zip(ids) {
        let job = coordinator.wait_terminal(id, JOB_TIMEOUT);
        assert_eq!(job.state, JobState::Failed, "{}: {job:#?}", case.name);
        let build = &job.builds[0];
        assert_eq!(build.state, BuildState::Failed, "{}: {build:#?}", case.name);
        let error = build.error.as_deref().unwrap_or_default();
        for needle in &case.needles {
            assert!(
                error.contains(needle.as_str()),
                "{}: the build error does not say {needle:?}; it says {error:?}",
                case.name
            );
        }
        if let Some(marker) = &case.marker {
            marker.assert_untouched(case.name);
        }
        assert!(
            registry.tags(&format!("hostile-{}", case.name)).is_empty(),
            "{}: something was pushed",
            case.name
        );
    }
}

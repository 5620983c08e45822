//! End-to-end tests: a real registry, coordinator and agents as processes, real buildah builds, real
//! QEMU emulation. What was pushed is read back with skopeo and umoci, never taken on archfarm's word
//! (except where the job record itself is the subject).
//!
//! Every test has its own registry, coordinator and agents, so they run in parallel. Run
//! `scripts/test.sh` (as root): it prepares the machine and builds the binaries first.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use archfarm_e2e::oci::{self, DOCKER_LIST, OCI_INDEX};
use archfarm_e2e::{
    last_line, preflight, Agent, AgentOptions, BuildContext, Coordinator, ImageFs, Registry,
    HELLO_PLATFORMS,
};
use archfarm_protocol::api::{
    Build, BuildMode, BuildState, ErrorResponse, Job, JobState, RegisterRequest,
};
use archfarm_protocol::Digest;
use reqwest::Method;

/// What the failing RUN step prints before it exits.
const ECHOED: &str = "s390x is not supported by this test";

/// The example with a RUN step that fails only on s390x (and prints [`ECHOED`]).
const FAILS_ON_S390X: &str = r#"FROM scratch
ARG TARGETARCH
COPY rootfs/${TARGETARCH}/ /
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
RUN if [ "$(uname -m)" = s390x ]; then echo "s390x is not supported by this test" >&2; exit 3; fi; echo "fine on $(uname -m)"
"#;

/// Command output as text.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The build of `platform` in a job record.
fn build_of<'a>(job: &'a Job, platform: &str) -> &'a Build {
    job.builds
        .iter()
        .find(|b| b.platform.to_string() == platform)
        .unwrap_or_else(|| panic!("job has no build for {platform}: {job:#?}"))
}

#[test]
fn four_platforms_native_and_emulated() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    // amd64 is this machine's own; arm64 claims linux/arm64 as native (its builds still run under
    // binfmt here, which is the point: the scheduler must trust the declaration); emu emulates.
    let _amd64 = Agent::start(&coordinator, AgentOptions::new("amd64").emulate("none"));
    let _arm64 = Agent::start(
        &coordinator,
        AgentOptions::new("arm64")
            .platform("linux/arm64")
            .emulate("none"),
    );
    let _emu = Agent::start(
        &coordinator,
        AgentOptions::new("emu").emulate("auto").capacity(2),
    );
    let context = BuildContext::hello();
    let tag = format!("{}/hello:e2e", registry.host());
    let platforms: Vec<&str> = HELLO_PLATFORMS.iter().map(|(p, _)| *p).collect();

    let out = coordinator.cli(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        &platforms.join(","),
        "-t",
        &tag,
        &context.arg(),
    ]);
    assert!(
        out.status.success(),
        "archfarm build failed: {}",
        text(&out.stderr)
    );
    let printed = last_line(&out.stdout);
    Digest::parse(&printed)
        .unwrap_or_else(|e| panic!("last stdout line is not a digest: {printed:?} ({e})"));

    // The tag is an index whose bytes hash to the printed digest.
    let (raw, index) = oci::inspect_index(&tag);
    assert_eq!(oci::sha256_digest(&raw), printed, "index digest");
    assert_eq!(index.schema_version, 2);
    let media_type = index
        .media_type
        .clone()
        .or_else(|| registry.manifest_content_type("hello", "e2e"))
        .expect("the index has a media type");
    assert!(
        media_type == OCI_INDEX || media_type == DOCKER_LIST,
        "tag is not an index: {media_type}"
    );
    let found: BTreeSet<String> = index
        .manifests
        .iter()
        .map(|d| {
            d.platform
                .as_ref()
                .unwrap_or_else(|| panic!("descriptor without platform: {d:?}"))
                .to_string()
        })
        .collect();
    let expected: BTreeSet<String> = platforms.iter().map(|p| p.to_string()).collect();
    assert_eq!(found, expected, "platforms in the index");
    assert_eq!(index.manifests.len(), 4, "one child per platform");

    // Each child: byte-exact descriptor, a config naming its platform, and a file system built there.
    for (platform, machine) in HELLO_PLATFORMS {
        let child = index
            .manifests
            .iter()
            .find(|d| d.platform.as_ref().unwrap().to_string() == *platform)
            .unwrap();
        let image = format!("{}/hello@{}", registry.host(), child.digest);
        let child_raw = oci::inspect_raw(&image).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(oci::sha256_digest(&child_raw), child.digest, "{platform}");
        assert_eq!(child_raw.len() as u64, child.size, "{platform} size");
        let config = oci::inspect_config(&image);
        assert_eq!(config.to_string(), *platform, "config of {platform}");
        let fs = ImageFs::unpack(&image);
        assert_eq!(
            fs.read("/etc/archfarm/arch"),
            *machine,
            "uname -m in {platform}"
        );
        assert_eq!(fs.read("/etc/archfarm/platform"), *platform);
    }

    // The job record: who built what, and how.
    let job = coordinator.only_job();
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(job.index_digest.as_deref(), Some(printed.as_str()));
    let arm64 = build_of(&job, "linux/arm64");
    assert_eq!(arm64.mode, Some(BuildMode::Native), "{arm64:#?}");
    assert_eq!(arm64.agent.as_deref(), Some("arm64"), "{arm64:#?}");
    for platform in ["linux/ppc64le", "linux/s390x"] {
        let build = build_of(&job, platform);
        assert_eq!(build.mode, Some(BuildMode::Emulated), "{build:#?}");
        assert_eq!(build.agent.as_deref(), Some("emu"), "{build:#?}");
    }
    let amd64 = build_of(&job, "linux/amd64");
    assert_eq!(amd64.mode, Some(BuildMode::Native), "{amd64:#?}");
    for build in &job.builds {
        assert_eq!(build.state, BuildState::Succeeded, "{build:#?}");
    }

    // The CLI shows the same record.
    let out = coordinator.cli(&["job", &job.id.to_string(), "--json"]);
    assert!(out.status.success());
    let shown: Job = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("archfarm job --json is not a Job: {e}"));
    assert_eq!((shown.id, shown.state), (job.id, JobState::Succeeded));
    let out = coordinator.cli(&["agents"]);
    assert!(out.status.success());
    for name in ["amd64", "arm64", "emu"] {
        assert!(
            text(&out.stdout).contains(name),
            "archfarm agents lacks {name}"
        );
    }

    // Per-platform images were pushed by digest only: the one tag is the requested one.
    assert_eq!(registry.tags("hello"), vec!["e2e".to_string()]);
}

#[test]
fn one_platform_failing() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    let _emu = Agent::start(
        &coordinator,
        AgentOptions::new("emu").emulate("auto").capacity(2),
    );
    let context = BuildContext::hello();
    context.write("Dockerfile", FAILS_ON_S390X);
    let tag = format!("{}/fails:b", registry.host());

    let out = coordinator.cli(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64,linux/arm64,linux/s390x",
        "-t",
        &tag,
        &context.arg(),
    ]);
    assert!(!out.status.success(), "the build should have failed");
    // The echoed line, not the RUN command that contains the same words, and shown again in the
    // failure report (after the line that reports linux/s390x failed), not only in the live stream.
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let failed_at = lines
        .iter()
        .position(|l| l.contains("linux/s390x") && l.contains("fail"))
        .expect("stderr does not report linux/s390x as failed");
    let echoed = |l: &&str| l.trim_end().ends_with(ECHOED) && !l.contains("echo ");
    assert!(
        lines[failed_at..].iter().any(echoed),
        "the failure report does not show the failing log tail ({ECHOED:?})"
    );

    let job = coordinator.only_job();
    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let error = job.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("linux/s390x"),
        "job error {error:?} does not name the platform"
    );
    let s390x = build_of(&job, "linux/s390x");
    assert_eq!(s390x.state, BuildState::Failed, "{s390x:#?}");

    // Nothing was tagged: no index, no per-platform tag.
    let inspected = oci::inspect_raw(&tag);
    assert!(inspected.is_err(), "{tag} exists: {inspected:?}");
    assert_eq!(registry.tags("fails"), Vec::<String>::new());
}

#[test]
fn bad_input_is_refused_and_nothing_stored() {
    preflight();
    let coordinator = Coordinator::start();
    let context = BuildContext::hello();
    let good_tag = "127.0.0.1:1/hello:c";
    let quick = Duration::from_secs(120);

    // Refused by the CLI with exit code 2 and a message that helps.
    let empty = BuildContext::empty();
    let missing = context.path().join("does-not-exist").display().to_string();
    let cases: [(Vec<String>, Vec<&str>); 4] = [
        (
            build_args("linux/mips", good_tag, &context.arg()),
            vec!["linux/mips", "linux/arm64"],
        ),
        (
            build_args("linux/amd64", "127.0.0.1:1/Bad:tag", &context.arg()),
            vec!["127.0.0.1:1/Bad:tag"],
        ),
        (
            build_args("linux/amd64", good_tag, &empty.arg()),
            vec!["Dockerfile"],
        ),
        (
            build_args("linux/amd64", good_tag, &missing),
            vec![missing.as_str()],
        ),
    ];
    for (args, needles) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = coordinator.cli_timeout(&args, quick);
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "archfarm {args:?} exit code");
        for needle in needles {
            assert!(
                said.contains(needle),
                "archfarm {args:?}: no {needle:?} in {said:?}"
            );
        }
    }

    // Refused by the coordinator over raw HTTP, each with an ErrorResponse.
    let unknown_context = Digest::from_sha256_bytes(&[7u8; 32]);
    let (status, err) = send(
        &coordinator,
        Method::POST,
        "/api/v1/jobs",
        b"{\"context\": not json".to_vec(),
    );
    assert_eq!(status, 400, "garbage JSON: {err:?}");
    assert!(!err.message.is_empty());
    let job_request = |platform: &str| {
        serde_json::json!({
            "context": unknown_context.as_str(),
            "platforms": [platform],
            "tags": [good_tag],
        })
        .to_string()
        .into_bytes()
    };
    let (status, err) = send(
        &coordinator,
        Method::POST,
        "/api/v1/jobs",
        job_request("linux/mips"),
    );
    assert_eq!(
        (status, err.code.as_str()),
        (400, "invalid_platform"),
        "{err:?}"
    );
    assert!(err.message.contains("linux/arm64"), "{err:?}");
    let (status, err) = send(
        &coordinator,
        Method::POST,
        "/api/v1/jobs",
        job_request("linux/amd64"),
    );
    assert_eq!(
        (status, err.code.as_str()),
        (400, "unknown_context"),
        "{err:?}"
    );
    let path = format!(
        "/api/v1/contexts/{}",
        oci::sha256_digest(b"some other archive")
    );
    let (status, err) = send(
        &coordinator,
        Method::PUT,
        &path,
        b"not that archive".to_vec(),
    );
    assert_eq!(
        (status, err.code.as_str()),
        (400, "digest_mismatch"),
        "{err:?}"
    );
    let head = coordinator
        .request(Method::HEAD, &path)
        .send()
        .expect("HEAD context");
    assert_eq!(head.status(), 404, "a refused context must not be stored");

    let register = RegisterRequest {
        name: "intruder".into(),
        native_platforms: vec!["linux/amd64".into()],
        emulated_platforms: Vec::new(),
        capacity: 1,
        version: None,
        instance_id: None,
        default_network: None,
        allowed_networks: Vec::new(),
        storage_driver: None,
        host: None,
    };
    let resp = archfarm_e2e::http_client()
        .post(format!("{}/api/v1/agents/register", coordinator.url()))
        .bearer_auth("not-the-join-token")
        .json(&register)
        .send()
        .expect("POST register");
    let status = resp.status().as_u16();
    let err: ErrorResponse = resp.json().expect("ErrorResponse body");
    assert_eq!(
        (status, err.code.as_str()),
        (401, "invalid_join_token"),
        "{err:?}"
    );

    // An agent with the wrong join token gives up with exit code 2 and says why.
    let mut agent = Agent::spawn(
        &coordinator,
        AgentOptions::new("intruder")
            .join_token("not-the-join-token")
            .emulate("none"),
    );
    let status = agent.wait_exit(Duration::from_secs(60));
    let said = agent.log().to_lowercase();
    assert_eq!(status.code(), Some(2), "agent exit code; it said: {said}");
    assert!(
        said.contains("join token") && (said.contains("reject") || said.contains("invalid")),
        "the agent does not say its join token was rejected: {said}"
    );

    // None of it left a trace.
    assert!(coordinator.jobs().is_empty(), "jobs were stored");
    assert!(coordinator.agents().is_empty(), "agents were stored");
    let blobs = context_blobs(&coordinator.data_dir());
    assert!(blobs.is_empty(), "context blobs stored: {blobs:?}");
    let db = coordinator.database();
    assert_eq!(
        db.count("SELECT COUNT(*) FROM contexts"),
        0,
        "contexts recorded"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM context_chunks"),
        0,
        "context bytes stored"
    );
}

/// `archfarm build` arguments.
fn build_args(platform: &str, tag: &str, context: &str) -> Vec<String> {
    [
        "build",
        "--progress",
        "plain",
        "--platform",
        platform,
        "-t",
        tag,
        context,
    ]
    .map(String::from)
    .to_vec()
}

/// Sends a JSON body and expects an error: the status and the parsed `ErrorResponse`.
fn send(
    coordinator: &Coordinator,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> (u16, ErrorResponse) {
    let resp = coordinator
        .request(method.clone(), path)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.text().unwrap_or_default();
    let err = serde_json::from_str(&body).unwrap_or_else(|e| {
        panic!("{method} {path} -> {status}: not an ErrorResponse ({e}): {body}")
    });
    (status, err)
}

/// Files under `dir` that look like stored context archives: gzip data, or named by a sha256.
fn context_blobs(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let gzip = fs::read(&path)
                .map(|b| b.starts_with(&[0x1f, 0x8b]))
                .unwrap_or(false);
            if gzip || has_sha256_hex(&name) {
                found.push(path);
            }
        }
    }
    found
}

/// True when `name` holds a run of 64 lowercase hex digits.
fn has_sha256_hex(name: &str) -> bool {
    let mut run = 0;
    for c in name.chars() {
        run = if c.is_ascii_digit() || ('a'..='f').contains(&c) {
            run + 1
        } else {
            0
        };
        if run >= 64 {
            return true;
        }
    }
    false
}

//! Provenance and index annotations (issue 19, items 3 and 4): a two-platform build (amd64
//! natively, arm64 under QEMU, on one agent) read back from the registry by independent clients
//! (`skopeo inspect --raw` for the index and the attestation manifests, `curl` against the
//! registry's blob API for the in-toto layers, `docker manifest inspect` for Docker's view) and
//! parsed here: one statement per platform whose subject is that platform's manifest and which
//! names the agent, its machine and the mode that built it; the index's created, source and
//! revision annotations from a git checkout whose remote URL carries a token. Then the same as
//! OCI 1.1 referrers (the registry, distribution 2.8, has no referrers API, so what is read back
//! is the tag schema's `sha256-<hex>` index), and `--provenance=false`.

use std::process::Command;

use archfarm_e2e::oci::{inspect_index, inspect_raw, sha256_digest, Index};
use archfarm_e2e::process::clean_env;
use archfarm_e2e::Scratch;
use archfarm_e2e::{
    last_line, preflight, Agent, AgentOptions, BuildContext, Coordinator, Registry,
};
use serde_json::Value;

const PLATFORMS: &str = "linux/amd64,linux/arm64";
const TOKEN: &str = "ghp_n0tAr3alT0ken";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "ci")
        .env("GIT_AUTHOR_EMAIL", "ci@example.com")
        .env("GIT_COMMITTER_NAME", "ci")
        .env("GIT_COMMITTER_EMAIL", "ci@example.com")
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
}

/// A blob by digest from the registry's own API, checked against its digest.
fn blob(registry: &Registry, repository: &str, digest: &str) -> Vec<u8> {
    let url = format!("http://{}/v2/{repository}/blobs/{digest}", registry.host());
    let out = Command::new("curl")
        .args(["-sfL", &url])
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {url}: {}", text(&out.stderr));
    assert_eq!(sha256_digest(&out.stdout), digest, "{url}");
    out.stdout
}

/// `docker manifest inspect --insecure IMAGE` (the CLI alone, a config directory of its own).
fn docker_manifest_inspect(image: &str) -> Value {
    let config = Scratch::new("docker-config");
    let mut cmd = Command::new("docker");
    cmd.args(["manifest", "inspect", "--insecure", image]);
    clean_env(&mut cmd);
    cmd.env("DOCKER_CONFIG", config.path());
    let out = cmd.output().expect("docker runs");
    assert!(
        out.status.success(),
        "docker manifest inspect {image}: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The in-toto statement an attestation manifest (read with skopeo) carries in its one layer.
fn statement(registry: &Registry, repository: &str, manifest: &Value) -> Value {
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    let layer = &layers[0];
    assert_eq!(layer["mediaType"], "application/vnd.in-toto+json");
    assert_eq!(
        layer["annotations"]["in-toto.io/predicate-type"],
        "https://slsa.dev/provenance/v1"
    );
    let bytes = blob(registry, repository, layer["digest"].as_str().unwrap());
    serde_json::from_slice(&bytes).unwrap()
}

/// Checks `s` is the statement for the platform whose manifest is `child` in `job`, built by the
/// agent and in the mode the job records.
fn check_statement(s: &Value, job: &archfarm_protocol::api::Job, child: &str, repository: &str) {
    assert_eq!(s["_type"], "https://in-toto.io/Statement/v1", "{s}");
    assert_eq!(s["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(s["subject"].as_array().unwrap().len(), 1);
    assert_eq!(s["subject"][0]["name"], repository);
    assert_eq!(
        format!(
            "sha256:{}",
            s["subject"][0]["digest"]["sha256"].as_str().unwrap()
        ),
        child
    );
    let build = job
        .builds
        .iter()
        .find(|b| b.digest.as_deref() == Some(child))
        .unwrap_or_else(|| panic!("no build pushed {child}"));
    let p = &s["predicate"];
    let internal = &p["buildDefinition"]["internalParameters"];
    assert_eq!(internal["agent"]["name"], build.agent.as_deref().unwrap());
    assert_eq!(internal["mode"], build.mode.unwrap().as_str());
    // The agent's own machine, whatever it built: x86_64 here, also for arm64 under QEMU.
    let machine = Command::new("uname").arg("-m").output().unwrap();
    assert_eq!(internal["agent"]["machine"], text(&machine.stdout).trim());
    assert!(
        !internal["agent"]["cpuModel"].as_str().unwrap().is_empty(),
        "{internal}"
    );
    let external = &p["buildDefinition"]["externalParameters"];
    assert_eq!(external["platform"], build.platform.to_string());
    assert_eq!(external["dockerfile"], "Dockerfile");
    assert_eq!(
        format!(
            "sha256:{}",
            external["context"]["digest"]["sha256"].as_str().unwrap()
        ),
        job.context.as_str()
    );
    assert_eq!(external["buildArgs"]["GREETING"], "hi");
    assert!(
        external["buildArgs"].get("TOKEN").is_none(),
        "a secret build argument is not in the statement: {external}"
    );
    let meta = &p["runDetails"]["metadata"];
    assert!(meta["startedOn"].as_str().unwrap().ends_with('Z'), "{meta}");
    assert!(meta["finishedOn"].as_str().unwrap() >= meta["startedOn"].as_str().unwrap());
    assert!(p["runDetails"]["builder"]["id"]
        .as_str()
        .unwrap()
        .starts_with("http://"));
    assert!(!s.to_string().contains("s3cret-arg"), "{s}");
}

fn build(coordinator: &Coordinator, context: &BuildContext, tag: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "build",
        "--progress",
        "plain",
        "--platform",
        PLATFORMS,
        "-t",
        tag,
        "--build-arg",
        "GREETING=hi",
        "--build-arg",
        "TOKEN=s3cret-arg",
        "--secret-build-arg",
        "TOKEN",
    ];
    args.extend(extra);
    let context_arg = context.arg();
    args.push(&context_arg);
    eprintln!("archfarm {}", args.join(" "));
    let out = coordinator.cli(&args);
    assert!(
        out.status.success(),
        "archfarm build failed: {}\n{}",
        text(&out.stderr),
        coordinator.log_tail(40)
    );
    last_line(&out.stdout)
}

fn job_of(coordinator: &Coordinator, index_digest: &str) -> archfarm_protocol::api::Job {
    coordinator
        .jobs()
        .into_iter()
        .find(|j| j.index_digest.as_deref() == Some(index_digest))
        .unwrap_or_else(|| panic!("no job pushed {index_digest}"))
}

#[test]
fn provenance_names_the_hardware_in_the_index_and_as_referrers() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    // One agent: amd64 on its own hardware, arm64 under QEMU.
    let _emu = Agent::start(
        &coordinator,
        AgentOptions::new("emu").emulate("auto").capacity(2),
    );
    let context = BuildContext::hello();
    // The context is a git checkout whose remote URL carries a token.
    git(context.path(), &["init", "-q"]);
    git(context.path(), &["add", "-A"]);
    git(context.path(), &["commit", "-q", "-m", "hello"]);
    git(
        context.path(),
        &[
            "remote",
            "add",
            "origin",
            &format!("https://ci:{TOKEN}@git.example.com/team/hello.git"),
        ],
    );
    let head = Command::new("git")
        .arg("-C")
        .arg(context.path())
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap();
    let head = text(&head.stdout).trim().to_string();
    let repository = format!("{}/prov/app", registry.host());

    // 1. By default: in the index, as buildx stores it.
    let tag = format!("{repository}:index");
    let digest = build(&coordinator, &context, &tag, &[]);
    let (raw, index): (Vec<u8>, Index) = inspect_index(&tag);
    assert_eq!(sha256_digest(&raw), digest);
    eprintln!("skopeo inspect --raw {tag}:\n{}", text(&raw));
    let job = job_of(&coordinator, &digest);
    assert_eq!(index.manifests.len(), 2, "the platforms");
    assert_eq!(index.attestations.len(), 2, "one attestation per platform");
    for att in &index.attestations {
        let platform = att.platform.as_ref().unwrap();
        assert_eq!(
            (platform.os.as_str(), platform.architecture.as_str()),
            ("unknown", "unknown")
        );
        let child = &att.annotations["vnd.docker.reference.digest"];
        assert!(
            index.manifests.iter().any(|m| &m.digest == child),
            "{child} is not a platform of the index"
        );
        let manifest_raw = inspect_raw(&format!("{repository}@{}", att.digest)).unwrap();
        assert_eq!(sha256_digest(&manifest_raw), att.digest);
        let manifest: Value = serde_json::from_slice(&manifest_raw).unwrap();
        let s = statement(&registry, "prov/app", &manifest);
        eprintln!("statement for {child}: {s:#}");
        check_statement(&s, &job, child, &repository);
    }
    let modes: Vec<&str> = job
        .builds
        .iter()
        .map(|b| b.mode.unwrap().as_str())
        .collect();
    assert_eq!(
        modes,
        ["native", "emulated"],
        "amd64 native, arm64 under QEMU"
    );
    // The index annotations: the stitch time, and the checkout's revision and token-free source.
    let created = &index.annotations["org.opencontainers.image.created"];
    // RFC 3339 in UTC to the second: 2026-12-05T16:48:08Z.
    assert!(
        created.len() == 20 && created.as_bytes()[10] == b'T' && created.ends_with('Z'),
        "{created}"
    );
    assert_eq!(index.annotations["org.opencontainers.image.revision"], head);
    assert_eq!(
        index.annotations["org.opencontainers.image.source"],
        "https://git.example.com/team/hello.git"
    );
    assert!(!text(&raw).contains(TOKEN));
    // Docker's CLI lists every entry, the attestations' unknown/unknown ones included.
    let listed = docker_manifest_inspect(&tag);
    let platforms: Vec<String> = listed["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    eprintln!("docker manifest inspect --insecure {tag}: {platforms:?}");
    assert_eq!(
        platforms,
        [
            "linux/amd64",
            "linux/arm64",
            "unknown/unknown",
            "unknown/unknown"
        ]
    );
    // `archfarm job ID --provenance` prints the statements pushed.
    let out = coordinator.cli(&["job", &job.id.to_string(), "--provenance"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed.len(), 2);
    for s in &printed {
        let child = format!(
            "sha256:{}",
            s["subject"][0]["digest"]["sha256"].as_str().unwrap()
        );
        check_statement(s, &job, &child, &repository);
    }

    // 2. As OCI 1.1 referrers: the index holds the platforms only; distribution 2.8 has no
    // referrers API, so each child's `sha256-<hex>` tag lists its attestation.
    let tag = format!("{repository}:referrers");
    let digest = build(&coordinator, &context, &tag, &["--attest-to", "referrers"]);
    let (raw, index) = inspect_index(&tag);
    eprintln!("skopeo inspect --raw {tag}:\n{}", text(&raw));
    let job = job_of(&coordinator, &digest);
    let with_referrers: Vec<String> = index.manifests.iter().map(|m| m.digest.clone()).collect();
    assert_eq!(index.manifests.len(), 2);
    assert!(index.attestations.is_empty(), "no attestation in the index");
    assert!(!text(&raw).contains("unknown"), "{}", text(&raw));
    for child in &index.manifests {
        let fallback = format!("{repository}:{}", child.digest.replacen(':', "-", 1));
        let referrers: Value = serde_json::from_slice(&inspect_raw(&fallback).unwrap()).unwrap();
        eprintln!("skopeo inspect --raw {fallback}: {referrers}");
        let listed = referrers["manifests"].as_array().unwrap();
        assert_eq!(listed.len(), 1, "{referrers}");
        assert_eq!(listed[0]["artifactType"], "application/vnd.in-toto+json");
        let att = listed[0]["digest"].as_str().unwrap();
        let manifest: Value =
            serde_json::from_slice(&inspect_raw(&format!("{repository}@{att}")).unwrap()).unwrap();
        assert_eq!(manifest["subject"]["digest"], child.digest.as_str());
        assert_eq!(manifest["subject"]["size"], child.size);
        assert_eq!(manifest["artifactType"], "application/vnd.in-toto+json");
        let s = statement(&registry, "prov/app", &manifest);
        check_statement(&s, &job, &child.digest, &repository);
    }

    // 3. --provenance=false: nothing but the platforms, anywhere.
    let tag = format!("{repository}:none");
    let digest = build(&coordinator, &context, &tag, &["--provenance=false"]);
    let (raw, index) = inspect_index(&tag);
    assert_eq!(index.manifests.len(), 2);
    assert!(index.attestations.is_empty(), "{}", text(&raw));
    // (A child the referrers build made byte for byte the same has its referrer already.)
    for child in index
        .manifests
        .iter()
        .filter(|m| !with_referrers.contains(&m.digest))
    {
        let fallback = format!("{repository}:{}", child.digest.replacen(':', "-", 1));
        assert!(inspect_raw(&fallback).is_err(), "{fallback} exists");
    }
    let job = job_of(&coordinator, &digest);
    let out = coordinator.cli(&["job", &job.id.to_string(), "--provenance"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), "[]");
    assert!(
        text(&out.stderr).contains("has no provenance (it goes to: none"),
        "{}",
        text(&out.stderr)
    );
}

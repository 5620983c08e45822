//! Tags in several repositories and registries in one `archfarm build --push` (issue 17), as
//! `docker buildx build` takes them: two repositories of one registry and a second registry, with
//! `--label`, `--annotation index:…`, `--metadata-file` and `--iidfile`, read back with skopeo and
//! with Docker's own CLI (`docker manifest inspect`, which needs no engine). Agents push each
//! platform's image to the first repository; the coordinator mounts the blobs into the second
//! repository of the same registry and copies them to the other registry, then pushes one index
//! under every tag. And a limited token allowed only one of the repositories: refused with 403
//! naming the other, nothing pushed.

use std::process::Command;
use std::time::Duration;

use archfarm_e2e::checks::arm64_agent;
use archfarm_e2e::coordinator::CoordinatorOptions;
use archfarm_e2e::oci::{inspect_raw, sha256_digest, skopeo};
use archfarm_e2e::process::clean_env;
use archfarm_e2e::{
    last_line, preflight, run_cli, Agent, AgentOptions, BuildContext, Coordinator, Registry,
    Scratch,
};

const LABEL: &str = "org.example.team=payments";
const DESCRIPTION: &str = "Payments API, every platform";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `docker manifest inspect --insecure [-v] IMAGE` with a configuration directory of its own (no
/// engine, no credentials): Docker's view of what the registry serves.
fn docker_manifest_inspect(image: &str, verbose: bool) -> serde_json::Value {
    let config = Scratch::new("docker-config");
    let mut cmd = Command::new("docker");
    cmd.args(["manifest", "inspect", "--insecure"]);
    if verbose {
        cmd.arg("-v");
    }
    cmd.arg(image);
    clean_env(&mut cmd);
    cmd.env("DOCKER_CONFIG", config.path());
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker (the CLI is enough): {e}"));
    assert!(
        out.status.success(),
        "docker manifest inspect {image} failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("docker's output for {image} ({e}): {}", text(&out.stdout)))
}

/// Request lines of a registry's log about `repository` (distribution logs each answered request
/// with its method, URI and status).
fn requests_for<'a>(log: &'a str, method: &str, repository: &str) -> Vec<&'a str> {
    let uri = format!("http.request.uri=\"/v2/{repository}/");
    log.lines()
        .filter(|l| {
            l.contains("response completed")
                && l.contains(&format!("http.request.method={method}"))
                && l.contains(&uri)
        })
        .collect()
}

#[test]
fn one_build_pushes_one_index_to_every_repository_and_registry() {
    preflight();
    let first = Registry::start();
    let second = Registry::start();
    let coordinator = Coordinator::start();
    let _amd64 = Agent::start(
        &coordinator,
        AgentOptions::new("amd64")
            .platform("linux/amd64")
            .emulate("none"),
    );
    let _arm64 = Agent::start(&coordinator, arm64_agent("arm64"));
    let context = BuildContext::hello();
    let out_dir = tempfile::tempdir().unwrap();
    let iid = out_dir.path().join("iid");
    let meta = out_dir.path().join("metadata.json");
    let tags = [
        format!("{}/team/app:1.0", first.host()),
        format!("{}/team/app:latest", first.host()),
        format!("{}/mirror/app:1.0", first.host()),
        format!("{}/other/app:1.0", second.host()),
    ];
    let mut args: Vec<String> = [
        "build",
        "--push",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64,linux/arm64",
        "--label",
        LABEL,
        "--annotation",
    ]
    .map(String::from)
    .to_vec();
    args.push(format!(
        "index:org.opencontainers.image.description={DESCRIPTION}"
    ));
    for t in &tags {
        args.extend(["-t".to_string(), t.clone()]);
    }
    args.extend([
        "--metadata-file".into(),
        meta.display().to_string(),
        "--iidfile".into(),
        iid.display().to_string(),
        context.arg(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    eprintln!("archfarm {}", args.join(" "));
    let out = coordinator.cli(&args);
    assert!(
        out.status.success(),
        "archfarm build failed: {}\n{}",
        text(&out.stderr),
        coordinator.log_tail(40)
    );
    let printed = last_line(&out.stdout);
    assert!(printed.starts_with("sha256:"), "{printed}");

    // skopeo: the same index bytes under every tag, with the index annotation.
    let index_raw = inspect_raw(&tags[0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sha256_digest(&index_raw), printed);
    for tag in &tags[1..] {
        let raw = inspect_raw(tag).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(raw, index_raw, "{tag} serves another index");
        eprintln!("skopeo inspect --raw {tag}: {}", sha256_digest(&raw));
    }
    let index: serde_json::Value = serde_json::from_slice(&index_raw).unwrap();
    assert_eq!(
        index["annotations"]["org.opencontainers.image.description"],
        DESCRIPTION
    );
    // Every entry, in order: the platforms' manifests, then one provenance attestation manifest
    // per platform (platform unknown/unknown, as buildx stores them by default).
    let entries: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["digest"].as_str().unwrap().to_string(),
                m["platform"]["architecture"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let (attestations, children): (Vec<_>, Vec<_>) = entries
        .iter()
        .cloned()
        .partition(|(_, arch)| arch == "unknown");
    assert_eq!(children.len(), 2, "{index}");
    assert_eq!(
        attestations.len(),
        2,
        "one attestation per platform: {index}"
    );

    // Each child in each repository, byte for byte, with the label in its config.
    let repositories = [
        format!("{}/team/app", first.host()),
        format!("{}/mirror/app", first.host()),
        format!("{}/other/app", second.host()),
    ];
    for (digest, arch) in &children {
        let original = inspect_raw(&format!("{}@{digest}", repositories[0])).unwrap();
        for repository in &repositories {
            let child = format!("{repository}@{digest}");
            assert_eq!(
                inspect_raw(&child).unwrap_or_else(|e| panic!("{e}")),
                original,
                "{child}"
            );
            let config: serde_json::Value = serde_json::from_slice(
                &skopeo(&[
                    "inspect",
                    "--tls-verify=false",
                    "--config",
                    &format!("docker://{child}"),
                ])
                .unwrap_or_else(|e| panic!("{e}")),
            )
            .unwrap();
            assert_eq!(
                config["config"]["Labels"]["org.example.team"], "payments",
                "{child}"
            );
            assert_eq!(config["architecture"], arch.as_str(), "{child}");
        }
    }
    // The attestation manifests too: the index names them in every repository.
    for (digest, _) in &attestations {
        let original = inspect_raw(&format!("{}@{digest}", repositories[0])).unwrap();
        for repository in &repositories[1..] {
            let copy = format!("{repository}@{digest}");
            assert_eq!(
                inspect_raw(&copy).unwrap_or_else(|e| panic!("{e}")),
                original,
                "{copy}"
            );
        }
    }

    // Docker's CLI reads the same children under every tag. (It does not print an index's
    // annotations: its manifest-list type has no field for them; skopeo showed them above.)
    for tag in &tags {
        let listed = docker_manifest_inspect(tag, false);
        let digests: Vec<&str> = listed["manifests"]
            .as_array()
            .unwrap_or_else(|| panic!("docker shows no manifest list for {tag}: {listed}"))
            .iter()
            .map(|m| m["digest"].as_str().unwrap())
            .collect();
        assert_eq!(
            digests,
            entries.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
            "{tag}"
        );
        assert_eq!(listed["schemaVersion"], 2, "{tag}: {listed}");
        // Docker's CLI takes the unknown/unknown attestation entries in its stride.
        let verbose = docker_manifest_inspect(tag, true);
        let shown = verbose.as_array().unwrap();
        assert_eq!(shown.len(), entries.len(), "{tag}: {verbose}");
        for (entry, (digest, arch)) in shown.iter().zip(&entries) {
            assert_eq!(entry["Descriptor"]["digest"], digest.as_str(), "{tag}");
            assert_eq!(
                entry["Descriptor"]["platform"]["architecture"],
                arch.as_str(),
                "{tag}"
            );
        }
        eprintln!("docker manifest inspect --insecure {tag}: {listed}");
    }

    // The files a pipeline reads name the same digest.
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), printed);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    assert_eq!(m["containerimage.digest"], printed);
    assert_eq!(m["containerimage.descriptor"]["digest"], printed);
    assert_eq!(m["image.name"], tags.join(","));

    // The job names its repositories, the first being where agents pushed.
    let job_id: uuid::Uuid = m["archfarm.job"].as_str().unwrap().parse().unwrap();
    let job = coordinator.job(job_id);
    assert_eq!(job.repositories, repositories);

    // In the first registry the blobs were mounted, not uploaded again; the second registry got
    // them copied.
    let log = first.log();
    let mounts = requests_for(&log, "POST", "mirror/app");
    assert!(
        !mounts.is_empty()
            && mounts
                .iter()
                .all(|l| l.contains("mount=") && l.contains("http.response.status=201")),
        "mounts into mirror/app: {mounts:#?}"
    );
    assert!(
        requests_for(&log, "PATCH", "mirror/app").is_empty()
            && requests_for(&log, "PUT", "mirror/app")
                .iter()
                .all(|l| l.contains("/manifests/")),
        "blobs were uploaded to mirror/app"
    );
    let copied = second.log();
    assert!(
        requests_for(&copied, "PUT", "other/app")
            .iter()
            .any(|l| l.contains("/blobs/uploads/")),
        "no blob uploaded to the second registry"
    );
}

#[test]
fn a_token_for_one_repository_cannot_push_to_another_too() {
    preflight();
    const ADMIN: &str = "admin-for-multi-repo";
    let registry = Registry::start();
    let coordinator = Coordinator::start_with(CoordinatorOptions {
        api_token: Some(ADMIN.into()),
        ..CoordinatorOptions::default()
    });
    let _agent = Agent::start(
        &coordinator,
        AgentOptions::new("amd64")
            .platform("linux/amd64")
            .emulate("none"),
    );
    let url = coordinator.url().to_string();
    let quick = Duration::from_secs(120);
    let allowed = format!("{}/team/app", registry.host());
    let other = format!("{}/other/app", registry.host());
    let created = run_cli(
        &url,
        Some(ADMIN),
        &[
            "tokens",
            "create",
            "--scope",
            "submit",
            "--repository",
            &allowed,
            "--name",
            "ci",
        ],
        quick,
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let token = last_line(&created.stdout);

    let context = BuildContext::hello();
    let build = |tags: &[&String]| {
        let mut args = vec!["build", "--platform", "linux/amd64"];
        for t in tags {
            args.extend(["-t", t.as_str()]);
        }
        let arg = context.arg();
        args.push(&arg);
        run_cli(&url, Some(&token), &args, archfarm_e2e::CLI_TIMEOUT)
    };
    let (tag_ok, tag_other) = (format!("{allowed}:1"), format!("{other}:1"));
    let out = build(&[&tag_ok, &tag_other]);
    let stderr = text(&out.stderr);
    eprintln!("refused: {stderr}");
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("403")
            && stderr.contains(&format!("this job would push to {other}, which is outside")),
        "{stderr}"
    );
    assert!(!stderr.contains(&format!("push to {allowed},")), "{stderr}");
    // Nothing queued, nothing pushed.
    assert!(coordinator.jobs().is_empty(), "a refused job was stored");
    assert!(registry.tags("team/app").is_empty());
    assert!(registry.tags("other/app").is_empty());

    // The same token builds where it may.
    let out = build(&[&tag_ok]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(registry.tags("team/app"), ["1"]);
    assert!(registry.tags("other/app").is_empty());
}

//! `archfarm build` in place of `docker buildx build --push` (issue 17): buildx's flags a pipeline
//! passes (`--push`, `--label`, `--annotation index:/manifest:`, `--iidfile`, `--metadata-file`,
//! `-q`) through a real coordinator and agent, read back with skopeo from the registry.

use archfarm_e2e::oci::{inspect_index, inspect_raw, sha256_digest, skopeo};
use archfarm_e2e::{preflight, Agent, AgentOptions, BuildContext, Coordinator, Registry};

#[test]
fn buildx_flags_reach_the_pushed_images_and_the_files_a_pipeline_reads() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    let _agent = Agent::start(&coordinator, AgentOptions::new("amd64").emulate("none"));
    let context = BuildContext::hello();
    let out_dir = tempfile::tempdir().unwrap();
    let iid = out_dir.path().join("iid");
    let meta = out_dir.path().join("metadata.json");
    let image = format!("{}/buildx/app:1", registry.host());
    let out = coordinator.cli(&[
        "build",
        "--push",
        "-q",
        "--platform",
        "linux/amd64",
        "-t",
        &image,
        "--label",
        "org.example.team=payments",
        "--annotation",
        "index:org.opencontainers.image.description=Payments API, all platforms",
        "--annotation",
        "manifest:org.opencontainers.image.source=https://example.com/payments",
        "--iidfile",
        iid.to_str().unwrap(),
        "--metadata-file",
        meta.to_str().unwrap(),
        &context.arg(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    // -q: nothing but the result.
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let digest = stdout.trim().to_string();

    // The registry's index is the one the files name, with the index annotation.
    let (raw, index) = inspect_index(&image);
    assert_eq!(sha256_digest(&raw), digest);
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), digest);
    let index_json: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        index_json["annotations"]["org.opencontainers.image.description"],
        "Payments API, all platforms"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    assert_eq!(m["containerimage.digest"], digest);
    assert_eq!(
        m["containerimage.descriptor"]["size"],
        raw.len() as u64,
        "the descriptor's size is the index's"
    );
    assert_eq!(m["image.name"], image);
    let child = &index.manifests[0];
    assert_eq!(
        m["archfarm.platforms"]["linux/amd64"]["digest"],
        child.digest.to_string()
    );

    // The platform's manifest has the manifest annotation, its config the label.
    let child_ref = format!("{}/buildx/app@{}", registry.host(), child.digest);
    let manifest: serde_json::Value =
        serde_json::from_slice(&inspect_raw(&child_ref).unwrap()).unwrap();
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.source"],
        "https://example.com/payments"
    );
    let config: serde_json::Value = serde_json::from_slice(
        &skopeo(&[
            "inspect",
            "--tls-verify=false",
            "--config",
            &format!("docker://{child_ref}"),
        ])
        .unwrap(),
    )
    .unwrap();
    assert_eq!(config["config"]["Labels"]["org.example.team"], "payments");

    // An annotation type archfarm cannot serve is refused before anything is uploaded.
    let out = coordinator.cli(&[
        "build",
        "--platform",
        "linux/amd64",
        "-t",
        &image,
        "--annotation",
        "manifest-descriptor:k=v",
        &context.arg(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("the type 'manifest-descriptor' is not supported"),
        "{out:?}"
    );
}

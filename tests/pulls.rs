//! Base images as Docker pulls them (issue 16, item 1), end to end with one coordinator and one
//! agent shared by three builds, each pushing to a plain-HTTP registry:
//!
//! a) a short-name `FROM` resolved to `docker.io/library/...` and pulled through the farm's mirror
//!    (`--registry-mirror docker.io=127.0.0.1:PORT`, a local registry standing in for Docker Hub);
//! b) a base image from a registry that needs a password (htpasswd behind TLS), the credential only
//!    on the coordinator, pushing to another registry;
//! c) a base image from a plain-HTTP registry the coordinator treats as insecure.
//!
//! What was built is read back with skopeo: the image's layers (`rootfs.diff_ids`) start with its
//! base's, and the base's marker file shows in what the build's `RUN` step printed.

use archfarm_e2e::coordinator::CoordinatorOptions;
use archfarm_e2e::oci::skopeo;
use archfarm_e2e::process::Scratch;
use archfarm_e2e::{
    preflight, Agent, AgentOptions, BuildContext, Buildah, Coordinator, Registry, SecureRegistry,
    TestCa,
};
use archfarm_protocol::api::{Job, JobState};

/// Where a base image goes, and how skopeo reaches it there.
struct Place<'a> {
    reference: String,
    skopeo_args: Vec<&'a str>,
}

/// Builds a busybox base image whose `/base-id` says `id`, and pushes it to `place` with buildah.
fn push_base(buildah: &Buildah, id: &str, place: &Place, push_args: &[&str]) {
    let context = BuildContext::hello();
    context.write(
        "Dockerfile",
        "FROM scratch\nCOPY rootfs/amd64/ /\nARG ID\nCOPY ${ID}.txt /base-id\n",
    );
    context.write(&format!("{id}.txt"), &format!("{id} base\n"));
    let image = format!("localhost/base-{id}");
    buildah.run(&[
        "build",
        "--isolation",
        "chroot",
        "--build-arg",
        &format!("ID={id}"),
        "-t",
        &image,
        &context.arg(),
    ]);
    let mut args = vec!["push"];
    args.extend_from_slice(push_args);
    let dest = format!("docker://{}", place.reference);
    args.extend([image.as_str(), dest.as_str()]);
    buildah.run(&args);
}

/// The uncompressed layer digests of `image`'s config, as skopeo reads them.
fn diff_ids(image: &str, skopeo_args: &[&str]) -> Vec<String> {
    let mut args = vec!["inspect", "--config", "--raw"];
    args.extend_from_slice(skopeo_args);
    let reference = format!("docker://{image}");
    args.push(&reference);
    let raw = skopeo(&args).unwrap_or_else(|e| panic!("{e}"));
    let config: serde_json::Value = serde_json::from_slice(&raw).expect("config JSON");
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no diff_ids in the config of {image}"))
        .iter()
        .map(|d| d.as_str().expect("a digest").to_string())
        .collect()
}

/// The step that prints the base's marker (the base has busybox, but no shell).
const PRINT_BASE: &str = "RUN [\"/bin/busybox\", \"cat\", \"/base-id\"]";

/// Builds `dockerfile` for linux/amd64 pushing to `tag`; returns the job and its build's log.
fn build(coordinator: &Coordinator, dockerfile: &str, tag: &str) -> (Job, String) {
    let context = BuildContext::empty();
    context.write("Dockerfile", dockerfile);
    let out = coordinator.cli(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-t",
        tag,
        &context.arg(),
    ]);
    let job = coordinator
        .jobs()
        .into_iter()
        .find(|j| j.tags.iter().any(|t| t == tag))
        .expect("the job");
    let log = coordinator.build_log(job.builds[0].id);
    assert!(
        out.status.success() && job.state == JobState::Succeeded,
        "build of {tag} failed: {}\n{log}\n{}",
        String::from_utf8_lossy(&out.stderr),
        coordinator.log_tail(30)
    );
    (job, log)
}

/// The image's layers begin with the base's.
fn assert_layers_on(built: &str, base: &[String]) {
    let layers = diff_ids(built, &["--tls-verify=false"]);
    assert!(
        layers.len() > base.len() && layers[..base.len()] == *base,
        "{built}: layers {layers:?} do not start with the base's {base:?}"
    );
}

#[test]
fn base_images_pull_as_docker_pulls_them() {
    preflight();
    let hub = Registry::start();
    let plain = Registry::start();
    let target = Registry::start();
    let ca = TestCa::new("pulls-ca");
    let private = SecureRegistry::start(&ca, "puller");
    let secrets = Scratch::new("pull-secrets");
    let docker_config = private.write_docker_config(secrets.path());
    let coordinator = Coordinator::start_with(
        CoordinatorOptions::default()
            .arg("--registry-mirror")
            .arg(&format!("docker.io={}", hub.host()))
            .arg("--registry-auth")
            .arg(&docker_config.display().to_string())
            .arg("--registry-ca-cert")
            .arg(&ca.ca_path().display().to_string())
            .arg("--secure-registry")
            .arg(private.host()),
    );
    // The agent trusts the CA (as every TLS registry's agent must), and has no credential.
    let agent = Agent::start(
        &coordinator,
        AgentOptions::new("amd64")
            .emulate("none")
            .arg("--registry-ca-cert")
            .arg(ca.ca_path()),
    );

    let buildah = Buildah::new();
    let cert_dir = ca.cert_dir().display().to_string();
    let creds = private.creds();
    let mirrored = Place {
        reference: format!("{}/library/archfarm-base:1", hub.host()),
        skopeo_args: vec!["--tls-verify=false"],
    };
    let insecure = Place {
        reference: format!("{}/team/plain-base:1", plain.host()),
        skopeo_args: vec!["--tls-verify=false"],
    };
    let locked = Place {
        reference: format!("{}/team/private-base:1", private.host()),
        skopeo_args: vec!["--cert-dir", &cert_dir, "--creds", &creds],
    };
    push_base(&buildah, "mirrored", &mirrored, &["--tls-verify=false"]);
    push_base(&buildah, "insecure", &insecure, &["--tls-verify=false"]);
    push_base(
        &buildah,
        "private",
        &locked,
        &["--cert-dir", &cert_dir, "--creds", &creds],
    );

    // a) `archfarm-base:1` is `docker.io/library/archfarm-base:1`, which only the mirror has.
    let tag = format!("{}/team/from-mirror:1", target.host());
    let (job, log) = build(
        &coordinator,
        &format!("ARG BASE=archfarm-base\nFROM ${{BASE}}:1 AS base\nFROM base\n{PRINT_BASE}\n"),
        &tag,
    );
    assert_eq!(job.base_images, ["docker.io/library/archfarm-base:1"]);
    assert_eq!(job.pull_registries, ["docker.io", hub.host()]);
    assert!(
        log.contains("docker.io/library/archfarm-base:1"),
        "the log names the resolved reference:\n{log}"
    );
    assert!(log.contains("mirrored base"), "{log}");
    assert_layers_on(&tag, &diff_ids(&mirrored.reference, &mirrored.skopeo_args));

    // b) The password is the coordinator's alone; the lease carries it for this registry.
    let tag = format!("{}/team/from-private:1", target.host());
    let (job, log) = build(
        &coordinator,
        &format!(
            "FROM --platform=$TARGETPLATFORM {}\n{PRINT_BASE}\n",
            locked.reference
        ),
        &tag,
    );
    assert_eq!(job.pull_registries, [private.host()]);
    assert!(log.contains("private base"), "{log}");
    assert!(
        log.contains(&format!("pull credentials for {}", private.host())),
        "{log}"
    );
    assert!(!log.contains(private.password()), "{log}");
    assert_layers_on(&tag, &diff_ids(&locked.reference, &locked.skopeo_args));

    // c) Plain HTTP, as the coordinator speaks to that registry (loopback, so without being
    //    listed: only the Dockerfile's FROM puts it in the lease).
    let tag = format!("{}/team/from-plain:1", target.host());
    let (_, log) = build(
        &coordinator,
        &format!("FROM {}\n{PRINT_BASE}\n", insecure.reference),
        &tag,
    );
    assert!(log.contains("insecure base"), "{log}");
    assert_layers_on(&tag, &diff_ids(&insecure.reference, &insecure.skopeo_args));

    assert!(
        !agent.log().contains(private.password())
            && !coordinator.log().contains(private.password()),
        "the password must not be logged"
    );
}

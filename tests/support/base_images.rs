//! Team-like base images: a Debian bookworm root file system with gcc and libc6-dev per
//! architecture (made once per machine by `scripts/realworld-rootfs.sh`), imported into buildah and
//! pushed as one multi-arch index to a test registry, as a team's base image sits in theirs.

use std::path::PathBuf;
use std::process::Command;

use crate::buildah::Buildah;
use crate::context::repo_root;

/// The Debian architecture (`dpkg --print-architecture`) of an OCI platform.
pub fn debian_arch(platform: &str) -> &'static str {
    match platform {
        "linux/amd64" => "amd64",
        "linux/arm64" => "arm64",
        "linux/ppc64le" => "ppc64el",
        "linux/s390x" => "s390x",
        other => panic!("no Debian architecture known for {other}"),
    }
}

/// The cached bookworm + gcc root file system tars of `platforms`, in that order, made first when
/// missing or damaged (mmdebstrap; minutes for each foreign architecture, so once per machine).
pub fn bookworm_gcc_rootfs(platforms: &[&str]) -> Vec<PathBuf> {
    let script = repo_root().join("scripts/realworld-rootfs.sh");
    // Not clean_env: the script keeps its tars under the caller's ARCHFARM_CACHE_DIR.
    let out = Command::new(&script)
        .args(platforms.iter().map(|p| debian_arch(p)))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}): {}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let tars: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect();
    assert_eq!(
        tars.len(),
        platforms.len(),
        "{} printed {tars:?} for {platforms:?}",
        script.display()
    );
    tars
}

/// Imports each platform's bookworm + gcc tar into `buildah`'s storage and pushes them all as one
/// image index to `target` (`HOST/REPO:TAG`, plain HTTP): the base a team's Dockerfile names.
pub fn push_bookworm_gcc_index(buildah: &Buildah, platforms: &[&str], target: &str) {
    let tars = bookworm_gcc_rootfs(platforms);
    let list = format!("localhost/base-list-{}", uuid::Uuid::new_v4().simple());
    buildah.run(&["manifest", "create", &list]);
    for (platform, tar) in platforms.iter().zip(&tars) {
        let (os, arch) = platform.split_once('/').expect("os/arch");
        let container = buildah.run(&["from", "--arch", arch, "--os", os, "scratch"]);
        let container = container.trim();
        // ADD of a local tar unpacks it, keeping owners, modes and links as mmdebstrap made them.
        buildah.run(&["add", container, &tar.display().to_string(), "/"]);
        buildah.run(&[
            "config",
            "--arch",
            arch,
            "--os",
            os,
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--cmd",
            "/bin/bash",
            container,
        ]);
        let image = format!("{list}-{arch}");
        buildah.run(&["commit", "--rm", "--quiet", container, &image]);
        buildah.run(&[
            "manifest",
            "add",
            &list,
            &format!("containers-storage:{image}"),
        ]);
    }
    buildah.run(&[
        "manifest",
        "push",
        "--all",
        "--quiet",
        "--tls-verify=false",
        &list,
        &format!("docker://{target}"),
    ]);
}

//! Checks the test harness itself, without archfarm: an image index made and pushed by buildah alone
//! must read back correctly through the `Registry` helper and the skopeo/umoci readers. When this
//! fails the machine (tools, binfmt, rootfs) is at fault, not archfarm.

use std::collections::BTreeSet;

use archfarm_e2e::oci::{self, DOCKER_LIST, OCI_INDEX};
use archfarm_e2e::{preflight, BuildContext, Buildah, ImageFs, Registry, HELLO_PLATFORMS};

#[test]
fn registry_and_readers_read_back_a_buildah_index() {
    preflight();
    let registry = Registry::start();
    let context = BuildContext::hello();
    let buildah = Buildah::new();
    // One native and one emulated platform keep this quick while still exercising QEMU.
    let wanted = [HELLO_PLATFORMS[0], HELLO_PLATFORMS[3]];
    buildah.run(&["manifest", "create", "localhost/selftest-list"]);
    for (platform, _) in wanted {
        let image = format!("localhost/selftest-{}", platform.replace('/', "-"));
        buildah
            .build(platform, None, &image, context.path())
            .unwrap_or_else(|e| panic!("{e}"));
        buildah.run(&[
            "manifest",
            "add",
            "localhost/selftest-list",
            &format!("containers-storage:{image}"),
        ]);
    }
    let tag = format!("{}/selftest:v1", registry.host());
    buildah.run(&[
        "manifest",
        "push",
        "--all",
        "--tls-verify=false",
        "localhost/selftest-list",
        &format!("docker://{tag}"),
    ]);

    let (raw, index) = oci::inspect_index(&tag);
    assert_eq!(index.schema_version, 2);
    let media_type = index
        .media_type
        .clone()
        .or_else(|| registry.manifest_content_type("selftest", "v1"))
        .expect("a media type");
    assert!(
        media_type == OCI_INDEX || media_type == DOCKER_LIST,
        "{media_type}"
    );
    let served = registry
        .manifest_content_type("selftest", &oci::sha256_digest(&raw))
        .expect("the index is served under its own digest");
    assert_eq!(served, media_type);

    let found: BTreeSet<String> = index
        .manifests
        .iter()
        .map(|d| {
            d.platform
                .as_ref()
                .expect("descriptor platform")
                .to_string()
        })
        .collect();
    let expected: BTreeSet<String> = wanted.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(found, expected);

    for (platform, machine) in wanted {
        let child = index
            .manifests
            .iter()
            .find(|d| d.platform.as_ref().unwrap().to_string() == platform)
            .unwrap();
        let image = format!("{}/selftest@{}", registry.host(), child.digest);
        let child_raw = oci::inspect_raw(&image).expect("child manifest");
        assert_eq!(oci::sha256_digest(&child_raw), child.digest);
        assert_eq!(child_raw.len() as u64, child.size);
        let config = oci::inspect_config(&image);
        assert_eq!(config.to_string(), platform, "config of {image}");
        let fs = ImageFs::unpack(&image);
        assert_eq!(fs.read("/etc/archfarm/arch"), machine, "{platform}");
        assert_eq!(fs.read("/etc/archfarm/platform"), platform);
        // bin/sh is an absolute symlink into the image, so look at the link, not its target.
        assert!(
            fs.root().join("bin/sh").symlink_metadata().is_ok(),
            "busybox links installed"
        );
    }

    assert_eq!(registry.tags("selftest"), vec!["v1".to_string()]);
    assert!(registry.tags("nothing-here").is_empty());
    assert!(oci::inspect_raw(&format!("{}/selftest:absent", registry.host())).is_err());
}

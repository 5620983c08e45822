//! Checks shared by the fault-tolerance and chaos tests: an index verified child by child with
//! skopeo and umoci, an agent with no build processes left, and the agents those tests use.

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use crate::oci::{self, Index};
use crate::{Agent, AgentOptions, ImageFs, Registry};

/// `uname -m` inside an image of `platform`.
pub fn machine_of(platform: &str) -> &'static str {
    match platform {
        "linux/amd64" => "x86_64",
        "linux/arm64" => "aarch64",
        "linux/ppc64le" => "ppc64le",
        "linux/s390x" => "s390x",
        other => panic!("no machine name known for {other}"),
    }
}

/// Reads the index under `tag` back with skopeo and umoci and checks it has exactly `platforms`,
/// each child byte-exact, with a config naming its platform and a file system built there.
pub fn verify_index(
    registry: &Registry,
    repo: &str,
    tag: &str,
    platforms: &[&str],
) -> (String, Index) {
    let image = format!("{}/{repo}:{tag}", registry.host());
    let (raw, index) = oci::inspect_index(&image);
    let found: Vec<String> = index
        .manifests
        .iter()
        .map(|d| {
            d.platform
                .as_ref()
                .unwrap_or_else(|| panic!("descriptor without platform: {d:?}"))
                .to_string()
        })
        .collect();
    let wanted: BTreeSet<String> = platforms.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        found.iter().cloned().collect::<BTreeSet<_>>(),
        wanted,
        "platforms in {image}"
    );
    assert_eq!(
        found.len(),
        platforms.len(),
        "one child per platform in {image}: {found:?}"
    );
    for child in &index.manifests {
        let platform = child.platform.as_ref().unwrap().to_string();
        let child_image = format!("{}/{repo}@{}", registry.host(), child.digest);
        let child_raw = oci::inspect_raw(&child_image).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            oci::sha256_digest(&child_raw),
            child.digest,
            "{platform} digest"
        );
        assert_eq!(child_raw.len() as u64, child.size, "{platform} size");
        let config = oci::inspect_config(&child_image);
        assert_eq!(config.to_string(), platform, "config of {platform}");
        let fs = ImageFs::unpack(&child_image);
        assert_eq!(
            fs.read("/etc/archfarm/arch"),
            machine_of(&platform),
            "uname -m in {platform}"
        );
        assert_eq!(fs.read("/etc/archfarm/platform"), platform);
    }
    (oci::sha256_digest(&raw), index)
}

/// Waits until no process works for `agent` any more (see [`Agent::build_processes`]); panics
/// listing them after `timeout`.
pub fn wait_no_build_processes(agent: &Agent, timeout: Duration) {
    let start = Instant::now();
    loop {
        let left = agent.build_processes();
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "agent {} still has build processes {timeout:?} later: {left:#?}",
            agent.name()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A native arm64 agent by declaration (its builds run under binfmt on this machine).
pub fn arm64_agent(name: &str) -> AgentOptions {
    AgentOptions::new(name)
        .platform("linux/arm64")
        .emulate("none")
}

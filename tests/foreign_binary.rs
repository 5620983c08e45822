//! The binary check end to end (issue 19): a Dockerfile that copies an x86-64 program into every
//! platform's image, built for linux/amd64 and linux/arm64 (arm64 under QEMU on an emulating
//! agent). The arm64 platform fails naming the file, `x86-64` and the layer, and nothing is
//! tagged; with `--allow-foreign-binary` for that path the same job succeeds; and a foreign file
//! deleted by a later `RUN rm` (a whiteout) does not count. What was pushed is read back with
//! skopeo and umoci.

use std::time::Duration;

use archfarm_e2e::oci::{self, ImageFs};
use archfarm_e2e::{elf, preflight, Agent, AgentOptions, BuildContext, Coordinator, Registry};
use archfarm_protocol::api::{BuildState, Job, JobState};

/// A static x86-64 program (compiled on this machine by the test), for every platform alike.
const HELLO_C: &str = r#"#include <stdio.h>
int main(void) { puts("hello from x86-64"); return 0; }
"#;

/// The example's busybox for the platform, then the x86-64 program on top: two layers.
const COPIES_HELLO: &str = "FROM scratch
ARG TARGETARCH
COPY rootfs/${TARGETARCH}/ /
COPY hello /usr/local/bin/hello
";

/// The same, with the program deleted again by a step run on the platform (under QEMU for
/// arm64): the last layer holds a whiteout for it.
const DELETES_HELLO: &str = "FROM scratch
ARG TARGETARCH
COPY rootfs/${TARGETARCH}/ /
COPY hello /usr/local/bin/hello
RUN [\"/bin/busybox\", \"rm\", \"/usr/local/bin/hello\"]
";

const PLATFORMS: &str = "linux/amd64,linux/arm64";
const JOB_TIMEOUT: Duration = Duration::from_secs(600);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn context(dockerfile: &str) -> BuildContext {
    let context = BuildContext::hello();
    context.compile_static("hello", HELLO_C);
    context.write("Dockerfile", dockerfile);
    context
}

/// The job whose first tag is `tag`.
fn job_tagged(coordinator: &Coordinator, tag: &str) -> Job {
    coordinator
        .jobs()
        .into_iter()
        .find(|j| j.tags.iter().any(|t| t == tag))
        .unwrap_or_else(|| panic!("no job for {tag}"))
}

/// The ELF machine of `path` in the image `child` (`HOST/REPO@DIGEST`), unpacked with umoci.
fn machine_in(child: &str, path: &str) -> Option<u16> {
    let fs = ImageFs::unpack(child);
    let bytes = std::fs::read(fs.root().join(path.trim_start_matches('/'))).ok()?;
    elf::machine(&bytes)
}

#[test]
fn an_x86_64_binary_fails_arm64_unless_allowed_or_deleted() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    // One agent, native amd64 and arm64 by QEMU.
    let _emu = Agent::start(
        &coordinator,
        AgentOptions::new("emu").emulate("auto").capacity(2),
    );

    // 1. By default: the arm64 platform fails, naming the file, its architecture and layer.
    let ctx = context(COPIES_HELLO);
    let tag = format!("{}/foreign:refused", registry.host());
    let out = coordinator.cli(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        PLATFORMS,
        "-t",
        &tag,
        &ctx.arg(),
    ]);
    let stderr = text(&out.stderr);
    println!(
        "--- archfarm build (no allowance), exit {:?}:\n{stderr}",
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let job = job_tagged(&coordinator, &tag);
    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let error = job.error.clone().unwrap_or_default();
    println!("job error: {error}");
    assert!(
        error.starts_with(
            "linux/arm64: /usr/local/bin/hello is an x86-64 executable (layer 2 of 2, sha256:"
        ),
        "{error}"
    );
    assert!(
        error.ends_with(
            "it cannot run on linux/arm64. Build it for the target platform, or allow it with \
             --allow-foreign-binary '/usr/local/bin/hello'"
        ),
        "{error}"
    );
    assert!(
        stderr.contains("/usr/local/bin/hello is an x86-64 executable"),
        "{stderr}"
    );
    let arm64 = job
        .builds
        .iter()
        .find(|b| b.platform.to_string() == "linux/arm64")
        .unwrap();
    assert_eq!(arm64.state, BuildState::Failed);
    let log = coordinator.build_log(arm64.id);
    println!("--- the arm64 build's log:\n{log}");
    assert!(
        log.contains("binary check: 1 file cannot run on linux/arm64"),
        "{log}"
    );
    assert!(
        !log.contains("pushing sha256:"),
        "the arm64 image was pushed: {log}"
    );
    // Nothing was tagged.
    let inspected = oci::inspect_raw(&tag);
    assert!(inspected.is_err(), "{tag} exists: {inspected:?}");
    println!("skopeo inspect {tag}: {}", inspected.unwrap_err().trim());
    assert_eq!(registry.tags("foreign"), Vec::<String>::new());

    // 2. The same job allowing that path: both platforms pushed, the file as it was.
    let tag = format!("{}/foreign:allowed", registry.host());
    let out = coordinator.cli(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        PLATFORMS,
        "--allow-foreign-binary",
        "/usr/local/bin/hello",
        "-t",
        &tag,
        &ctx.arg(),
    ]);
    let stderr = text(&out.stderr);
    println!(
        "--- archfarm build --allow-foreign-binary /usr/local/bin/hello, exit {:?}:\n{stderr}",
        out.status.code()
    );
    assert!(out.status.success(), "{stderr}");
    let (_, index) = oci::inspect_index(&tag);
    let mut platforms: Vec<String> = index
        .manifests
        .iter()
        .map(|d| d.platform.as_ref().unwrap().to_string())
        .collect();
    platforms.sort();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    for child in &index.manifests {
        let image = format!("{}/foreign@{}", registry.host(), child.digest);
        let machine = machine_in(&image, "/usr/local/bin/hello");
        println!(
            "{}: /usr/local/bin/hello has ELF machine {machine:?}",
            child.platform.as_ref().unwrap()
        );
        assert_eq!(machine, Some(elf::machine_of_platform("linux/amd64")));
    }
    let job = job_tagged(&coordinator, &tag);
    for b in &job.builds {
        let log = coordinator.build_log(b.id);
        let check = log
            .lines()
            .find(|l| l.contains("binary check:"))
            .unwrap_or_else(|| panic!("{}: no binary check in the log:\n{log}", b.platform));
        println!("{}: {check}", b.platform);
        if b.platform.to_string() == "linux/arm64" {
            assert!(
                check.contains("1 file for another architecture allowed by --allow-foreign-binary"),
                "{check}"
            );
        }
    }

    // 3. Deleted by a later step: the final file system is what counts.
    let ctx = context(DELETES_HELLO);
    let tag = format!("{}/foreign:deleted", registry.host());
    let out = coordinator.cli(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        PLATFORMS,
        "-t",
        &tag,
        &ctx.arg(),
    ]);
    let stderr = text(&out.stderr);
    println!(
        "--- archfarm build (deleted by RUN rm), exit {:?}:\n{stderr}",
        out.status.code()
    );
    assert!(out.status.success(), "{stderr}");
    let (_, index) = oci::inspect_index(&tag);
    assert_eq!(index.manifests.len(), 2);
    for child in &index.manifests {
        let image = format!("{}/foreign@{}", registry.host(), child.digest);
        let fs = ImageFs::unpack(&image);
        assert!(
            !fs.root().join("usr/local/bin/hello").exists(),
            "{}: /usr/local/bin/hello is still there",
            child.platform.as_ref().unwrap()
        );
    }
    let job = coordinator.wait_terminal(job_tagged(&coordinator, &tag).id, JOB_TIMEOUT);
    assert_eq!(job.state, JobState::Succeeded);
    println!(
        "deleted by a later step: {tag} pushed, index {:?}",
        job.index_digest
    );
}

//! The smoke test end to end (issue 19): `archfarm build --smoke-test` on the example's busybox
//! image for linux/amd64 (native) and linux/arm64 (under QEMU), on one agent with the default
//! sandbox (runc, the build's cgroup), with a real registry read back by skopeo.
//!
//! 1. A test that passes everywhere: the job succeeds, the index is tagged, and each build log
//!    holds what the step printed on its platform (`x86_64`, `aarch64`), as PID 1 of its own
//!    namespace, unable to gain privileges, in the build's cgroup; the provenance names it.
//! 2. One that fails on arm64 only: the job fails naming linux/arm64 and the exit code, and the
//!    tag does not exist in the registry.
//! 3. The same with arm64 optional: the job succeeds with the warning, the index has amd64 only.
//! 4. An image with an ENTRYPOINT runs the command after it, as `docker run` does; a program
//!    that is not in the image fails naming the runtime's reason.
//! 5. One past its time limit, and one cancelled while it runs: stopped, the process gone, the
//!    working container removed.

use std::path::Path;
use std::time::{Duration, Instant};

use archfarm_e2e::oci;
use archfarm_e2e::{preflight, Agent, AgentOptions, BuildContext, Coordinator, Registry};
use archfarm_protocol::api::{BuildMode, BuildState, Job, JobState};
use serde_json::Value;

const PLATFORMS: &str = "linux/amd64,linux/arm64";
const JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// Prints the machine, whether it is PID 1 of its namespace, its no-new-privileges flag and its
/// cgroups, then a marker.
const PASSES: &str = "sh -c 'uname -m; echo pid=$$; grep NoNewPrivs /proc/self/status; \
     cat /proc/self/cgroup; echo smoke-ok'";
/// Exits 1 where the machine is not x86-64.
const AMD64_ONLY: &str = r#"sh -c 'test "$(uname -m)" = x86_64'"#;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The job whose tags include `tag`.
fn job_tagged(coordinator: &Coordinator, tag: &str) -> Job {
    coordinator
        .jobs()
        .into_iter()
        .find(|j| j.tags.iter().any(|t| t == tag))
        .unwrap_or_else(|| panic!("no job for {tag}"))
}

/// `archfarm build --progress plain ARGS… CONTEXT`: (exit code, stderr), printed.
fn build(coordinator: &Coordinator, ctx: &BuildContext, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["build", "--progress", "plain"];
    all.extend_from_slice(args);
    let context = ctx.arg();
    all.push(&context);
    let out = coordinator.cli(&all);
    let stderr = text(&out.stderr);
    println!(
        "--- archfarm {}\nexit {:?}:\n{stderr}",
        all.join(" "),
        out.status.code()
    );
    (out.status.code(), stderr)
}

/// The platforms of the index under `tag`, read back with skopeo, sorted.
fn index_platforms(tag: &str) -> Vec<String> {
    let (_, index) = oci::inspect_index(tag);
    let mut platforms: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(ToString::to_string)
        .filter(|p| p != "unknown/unknown")
        .collect();
    platforms.sort();
    platforms
}

/// Live processes running `program` (by its file name, as the container's runtime starts it:
/// `/bin/sleep`) with exactly `args`.
fn processes_running(program: &str, args: &[&str]) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let line = text(&raw);
        let words: Vec<&str> = line.trim_end_matches('\0').split('\0').collect();
        let Some((first, rest)) = words.split_first() else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true);
        if first.rsplit('/').next() == Some(program) && rest == args && !zombie {
            found.push(pid);
        }
    }
    found
}

/// How many buildah stores are under `dir` (the agent's work directory), and the names of their
/// working containers, from each store's own `containers.json`.
fn working_containers(dir: &Path) -> (usize, Vec<String>) {
    let mut stores = 0;
    let mut names = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() && !kind.is_symlink() {
                // Image layers and mounts hold nothing of interest and may be large.
                let name = e.file_name();
                if !matches!(
                    name.to_str(),
                    Some("overlay" | "vfs" | "mounts" | "context")
                ) {
                    stack.push(path);
                }
            } else if path.ends_with("overlay-containers/containers.json")
                || path.ends_with("vfs-containers/containers.json")
            {
                stores += 1;
                let list: Vec<Value> =
                    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap_or_default();
                for c in list {
                    for n in c["names"].as_array().into_iter().flatten() {
                        names.push(n.as_str().unwrap_or_default().to_string());
                    }
                }
            }
        }
    }
    (stores, names)
}

#[test]
fn smoke_tests_pass_fail_and_stop_per_platform() {
    preflight();
    let registry = Registry::start();
    let coordinator = Coordinator::start();
    // One agent: amd64 natively, arm64 under QEMU, both builds at once.
    let agent = Agent::start(
        &coordinator,
        AgentOptions::new("emu").emulate("auto").capacity(2),
    );
    let ctx = BuildContext::hello();

    // 1. Passes on every platform.
    let tag = format!("{}/smoke:passes", registry.host());
    let (code, stderr) = build(
        &coordinator,
        &ctx,
        &["--platform", PLATFORMS, "--smoke-test", PASSES, "-t", &tag],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(index_platforms(&tag), ["linux/amd64", "linux/arm64"]);
    let job = job_tagged(&coordinator, &tag);
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(
        job.smoke_test.as_ref().map(|t| t.command.len()),
        Some(3),
        "{job:#?}"
    );
    for b in &job.builds {
        let log = coordinator.build_log(b.id);
        println!("--- {} ({:?}) build log:\n{log}", b.platform, b.mode);
        let (machine, mode) = match b.platform.to_string().as_str() {
            "linux/amd64" => ("x86_64", BuildMode::Native),
            _ => ("aarch64", BuildMode::Emulated),
        };
        assert_eq!(b.mode, Some(mode), "{}", b.platform);
        let printed: Vec<&str> = log
            .lines()
            .filter_map(|l| l.strip_prefix("[smoke-test] "))
            .collect();
        assert_eq!(printed.first(), Some(&machine), "{}: {log}", b.platform);
        assert!(printed.contains(&"pid=1"), "{log}");
        assert!(
            printed
                .iter()
                .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')),
            "{log}"
        );
        // In the build's own cgroup (`/archfarm/<agent>/<build>/…`), whose limits hold.
        let cgroup = format!("/{}/", b.id);
        assert!(
            printed
                .iter()
                .any(|l| l.contains("/archfarm/") && l.contains(&cgroup)),
            "{log}"
        );
        assert_eq!(printed.last(), Some(&"smoke-ok"), "{log}");
        assert!(
            log.contains(&format!("smoke test passed on {}", b.platform)),
            "{log}"
        );
        // Run before the push.
        let ran = log.find("smoke test: running").unwrap();
        let pushed = log.find("pushing sha256:").unwrap();
        assert!(ran < pushed, "{log}");
    }
    // The provenance of each platform names it.
    let provenance: Value = coordinator.get_json(&format!("/api/v1/jobs/{}/provenance", job.id));
    let statements = provenance["statements"].as_array().unwrap();
    assert_eq!(statements.len(), 2);
    for s in statements {
        let smoke = &s["predicate"]["buildDefinition"]["externalParameters"]["smokeTest"];
        assert_eq!(smoke["command"][0], "sh", "{s}");
        assert_eq!(smoke["timeoutSecs"], 300, "{s}");
    }
    let shown = coordinator.cli(&["job", &job.id.to_string()]);
    let shown = text(&shown.stdout);
    assert!(
        shown.contains("smoke test sh -c 'uname -m; echo pid=$$;"),
        "{shown}"
    );

    // 2. Fails on arm64 only: the job fails naming the platform and the exit code; no tag.
    let tag = format!("{}/smoke:fails", registry.host());
    let (code, stderr) = build(
        &coordinator,
        &ctx,
        &[
            "--platform",
            PLATFORMS,
            "--smoke-test",
            AMD64_ONLY,
            "-t",
            &tag,
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    let job = job_tagged(&coordinator, &tag);
    assert_eq!(job.state, JobState::Failed);
    let error = job.error.clone().unwrap_or_default();
    println!("job error: {error}");
    assert_eq!(
        error,
        "linux/arm64: smoke test `sh -c 'test \"$(uname -m)\" = x86_64'` exited with code 1 on \
         linux/arm64"
    );
    assert!(
        stderr.contains("exited with code 1 on linux/arm64"),
        "{stderr}"
    );
    let arm64 = job
        .builds
        .iter()
        .find(|b| b.platform.to_string() == "linux/arm64")
        .unwrap();
    assert_eq!(arm64.state, BuildState::Failed);
    let log = coordinator.build_log(arm64.id);
    assert!(!log.contains("pushing sha256:"), "arm64 was pushed: {log}");
    let inspected = oci::inspect_raw(&tag);
    assert!(inspected.is_err(), "{tag} exists: {inspected:?}");
    println!("skopeo inspect {tag}: {}", inspected.unwrap_err().trim());
    assert!(!registry.tags("smoke").contains(&"fails".to_string()));

    // 3. The same with arm64 optional: left out with the warning, amd64 alone in the index.
    let tag = format!("{}/smoke:optional", registry.host());
    let (code, stderr) = build(
        &coordinator,
        &ctx,
        &[
            "--platform",
            "linux/amd64",
            "--optional-platform",
            "linux/arm64",
            "--smoke-test",
            AMD64_ONLY,
            "-t",
            &tag,
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let warning = "warning: optional platform linux/arm64 left out of the index: smoke test \
         `sh -c 'test \"$(uname -m)\" = x86_64'` exited with code 1 on linux/arm64";
    assert!(stderr.contains(warning), "{stderr}");
    assert_eq!(index_platforms(&tag), ["linux/amd64"]);
    assert_eq!(job_tagged(&coordinator, &tag).state, JobState::Succeeded);

    // 4. Docker's semantics: the image's ENTRYPOINT comes first; a program that is not in the
    // image fails the platform with the runtime's reason.
    let with_entrypoint = BuildContext::hello();
    let dockerfile = std::fs::read_to_string(with_entrypoint.path().join("Dockerfile")).unwrap();
    with_entrypoint.write(
        "Dockerfile",
        &format!("{dockerfile}ENTRYPOINT [\"/bin/echo\", \"entrypoint says:\"]\n"),
    );
    let tag = format!("{}/smoke:entrypoint", registry.host());
    let (code, stderr) = build(
        &coordinator,
        &with_entrypoint,
        &[
            "--platform",
            "linux/amd64",
            "--smoke-test",
            "'hello world'",
            "-t",
            &tag,
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("[smoke-test] entrypoint says: hello world"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "running /bin/echo 'entrypoint says:' 'hello world' (the image's ENTRYPOINT \
             /bin/echo 'entrypoint says:' first) in the linux/amd64 image"
        ),
        "{stderr}"
    );
    let tag = format!("{}/smoke:missing", registry.host());
    let (code, stderr) = build(
        &coordinator,
        &ctx,
        &[
            "--platform",
            "linux/amd64",
            "--smoke-test",
            "nosuchprogram --version",
            "-t",
            &tag,
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        job_tagged(&coordinator, &tag).error.as_deref(),
        Some(
            "linux/amd64: smoke test `nosuchprogram --version` could not start on linux/amd64: \
             exec: \"nosuchprogram\": executable file not found in $PATH"
        )
    );

    // 5a. Past its time limit: stopped, and the platform fails saying so.
    let tag = format!("{}/smoke:slow", registry.host());
    let started = Instant::now();
    let (code, stderr) = build(
        &coordinator,
        &ctx,
        &[
            "--platform",
            "linux/amd64",
            "--smoke-test",
            "sleep 3593",
            "--smoke-test-timeout",
            "3s",
            "-t",
            &tag,
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(120));
    let job = job_tagged(&coordinator, &tag);
    assert_eq!(
        job.error.as_deref(),
        Some(
            "linux/amd64: smoke test `sleep 3593` did not finish within 3s on linux/amd64 and \
             was stopped"
        )
    );
    assert_eq!(processes_running("sleep", &["3593"]), Vec::<u32>::new());

    // 5b. Cancelled while it runs: stopped at once.
    let tag = format!("{}/smoke:cancelled", registry.host());
    let id = coordinator.submit(&[
        "--platform",
        "linux/amd64",
        "--smoke-test",
        "sleep 3594",
        "-t",
        &tag,
        &ctx.arg(),
    ]);
    archfarm_e2e::process::wait_until(Duration::from_secs(180), "the smoke test to start", || {
        !processes_running("sleep", &["3594"]).is_empty()
    });
    let out = coordinator.cli(&["cancel", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let job = coordinator.wait_terminal(id, JOB_TIMEOUT);
    assert_eq!(job.state, JobState::Cancelled);
    archfarm_e2e::process::wait_until(
        Duration::from_secs(30),
        "the cancelled smoke test to stop",
        || processes_running("sleep", &["3594"]).is_empty(),
    );
    // The agent removes the working container of a smoke test however it ended.
    let smoke_containers = || {
        let (stores, names) = working_containers(&agent.work_dir());
        assert!(
            stores > 0,
            "no buildah store under {}",
            agent.work_dir().display()
        );
        names
            .into_iter()
            .filter(|n| n.starts_with("archfarm-smoke-"))
            .collect::<Vec<_>>()
    };
    let waited = Instant::now();
    archfarm_e2e::process::wait_until(
        Duration::from_secs(60),
        "the smoke tests' working containers to be removed",
        || smoke_containers().is_empty(),
    );
    println!(
        "no smoke test container left ({:.1}s after the cancelled one's process was gone)",
        waited.elapsed().as_secs_f64()
    );
}

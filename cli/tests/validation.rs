//! `archfarm` as a process, with no coordinator: bad input must exit 2 with the validation message
//! before any network call. `--coordinator` points at a closed port, so a message about reaching the
//! coordinator would prove a request was attempted.

use std::path::Path;
use std::process::{Command, Output};

/// A port nobody listens on: bound, then released.
fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
}

fn archfarm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_archfarm"))
        .args(args)
        .env_remove("ARCHFARM_COORDINATOR")
        .env_remove("ARCHFARM_TOKEN")
        .output()
        .unwrap()
}

/// Runs `archfarm build` with the given extra flags against a closed port.
fn build(ctx: &Path, extra: &[&str]) -> (i32, String, String) {
    let url = closed_port_url();
    let mut args = vec!["build", "--coordinator", &url];
    args.extend_from_slice(extra);
    let ctx = ctx.to_str().unwrap();
    args.push(ctx);
    let out = archfarm(&args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn good_context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    dir
}

const OK: &[&str] = &["--platform", "linux/amd64", "-t", "localhost:5000/app:1"];

#[track_caller]
fn assert_usage(result: (i32, String, String), expected: &str) {
    let (code, stdout, stderr) = result;
    assert_eq!(code, 2, "stderr: {stderr}");
    assert!(
        stderr.contains(expected),
        "want {expected:?} in stderr: {stderr}"
    );
    assert!(
        !stderr.contains("cannot reach"),
        "no network call expected: {stderr}"
    );
    assert!(stdout.is_empty(), "stdout: {stdout}");
}

#[test]
fn missing_context_dir() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert_usage(
        build(&missing, OK),
        &format!(
            "error: context directory '{}' does not exist",
            missing.display()
        ),
    );
}

#[test]
fn unknown_platform() {
    let ctx = good_context();
    let r = build(
        ctx.path(),
        &[
            "--platform",
            "linux/amd64,linux/sparc64",
            "-t",
            "localhost:5000/app:1",
        ],
    );
    assert_usage(r.clone(), "unknown platform 'linux/sparc64'");
    assert_usage(r, "accepted: linux/amd64, linux/arm64");
}

#[test]
fn malformed_reference() {
    let ctx = good_context();
    let r = build(
        ctx.path(),
        &["--platform", "amd64", "-t", "localhost:5000/App:1"],
    );
    assert_usage(r.clone(), "invalid image reference 'localhost:5000/App:1'");
    assert_usage(r, "expected [REGISTRY[:PORT]/]REPOSITORY[:TAG]");
}

#[test]
fn tags_in_several_repositories_and_registries_pass() {
    // As with buildx: each gets the same index. Validation lets them through to the coordinator
    // (here a closed port).
    let ctx = good_context();
    let (code, _, stderr) = build(
        ctx.path(),
        &[
            "--platform",
            "amd64",
            "-t",
            "localhost:5000/a:1",
            "-t",
            "localhost:5000/b:1",
            "-t",
            "ghcr.io/team/a:1",
        ],
    );
    assert_ne!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot reach the coordinator"), "{stderr}");
}

#[test]
fn context_without_dockerfile() {
    let ctx = tempfile::tempdir().unwrap();
    assert_usage(
        build(ctx.path(), OK),
        "Dockerfile 'Dockerfile' not found in the context directory",
    );
}

#[test]
fn dockerfile_outside_context() {
    let ctx = good_context();
    let mut args = OK.to_vec();
    args.extend(["-f", "../Dockerfile"]);
    assert_usage(build(ctx.path(), &args), "is outside the context directory");
}

#[test]
fn bad_build_arg() {
    let ctx = good_context();
    let mut args = OK.to_vec();
    args.extend(["--build-arg", "=value"]);
    assert_usage(build(ctx.path(), &args), "invalid --build-arg '=value'");
}

#[test]
fn bad_allow_foreign_binary_globs() {
    let ctx = good_context();
    for (glob, says) in [
        (
            "usr/local/bin/hello",
            "--allow-foreign-binary 'usr/local/bin/hello': not absolute; accepted: an absolute \
             path in the image",
        ),
        (
            "/opt/cross/",
            "for everything below a directory use '/opt/cross/**'",
        ),
        ("/a/[b", "an unclosed '['"),
    ] {
        let mut args = OK.to_vec();
        args.extend([
            "--allow-foreign-binary",
            "/usr/bin/qemu-*",
            "--allow-foreign-binary",
            glob,
        ]);
        assert_usage(build(ctx.path(), &args), says);
    }
}

#[test]
fn bad_smoke_tests() {
    let ctx = good_context();
    for (extra, says) in [
        (
            vec!["--smoke-test", "sh -c 'uname -m"],
            "--smoke-test 'sh -c 'uname -m': a ' quote is not closed; accepted: words split at \
             blanks",
        ),
        (vec!["--smoke-test", "   "], "--smoke-test is empty"),
        (vec!["--smoke-test="], "--smoke-test is empty"),
        (
            vec!["--smoke-test", "myapp --version | grep 1.2"],
            "'|' outside quotes is a shell operator, and no shell runs the command",
        ),
        (
            vec!["--smoke-test-timeout", "1m"],
            "--smoke-test-timeout needs --smoke-test",
        ),
        (
            vec!["--smoke-test", "true", "--smoke-test-timeout", "0"],
            "--smoke-test-timeout must be from 1s to 1h, not 0s",
        ),
        (
            vec!["--smoke-test", "true", "--smoke-test-timeout", "2h"],
            "--smoke-test-timeout must be from 1s to 1h, not 7200s",
        ),
        (
            vec!["--smoke-test", "true", "--smoke-test-timeout", "soon"],
            "'soon' is not a duration",
        ),
    ] {
        let mut args = OK.to_vec();
        args.extend(extra);
        assert_usage(build(ctx.path(), &args), says);
    }
    // Good ones go on to the coordinator (here a closed port), one that starts with a dash (the
    // arguments of an image's ENTRYPOINT) too.
    for good in [r#"sh -c 'test "$(uname -m)" = x86_64'"#, "--version"] {
        let mut args = OK.to_vec();
        args.extend(["--smoke-test", good]);
        let (code, _, stderr) = build(ctx.path(), &args);
        assert_ne!(code, 2, "{good}: {stderr}");
        assert!(stderr.contains("cannot reach the coordinator"), "{stderr}");
    }
}

#[test]
fn emulation_policy_values() {
    let ctx = good_context();
    let with = |extra: &[&str]| {
        let mut args = OK.to_vec();
        args.extend_from_slice(extra);
        build(ctx.path(), &args)
    };
    let r = with(&["--emulation", "always"]);
    assert_usage(r.clone(), "unknown emulation policy 'always'");
    assert_usage(r, "fallback, never, prefer-native=DURATION");
    assert_usage(
        with(&["--emulation", "prefer-native=soon"]),
        "'soon' is not a duration: use e.g. 90s, 10m, 1h30m",
    );
    // Good values get past validation (to the closed port).
    for good in [
        "never",
        "fallback",
        "prefer-native=10m",
        "prefer-native=1h30m",
    ] {
        let (code, _, stderr) = with(&["--emulation", good]);
        assert_eq!(code, 1, "{good}: {stderr}");
        assert!(stderr.contains("cannot reach the coordinator"), "{stderr}");
    }
}

#[test]
fn timeout_values() {
    let ctx = good_context();
    let with = |extra: &[&str]| {
        let mut args = OK.to_vec();
        args.extend_from_slice(extra);
        build(ctx.path(), &args)
    };
    assert_usage(
        with(&["--timeout", "2w"]),
        "'2w' is not a duration: use e.g. 90s, 10m, 1h30m, 7d",
    );
    assert_usage(with(&["--timeout", "0s"]), "a job needs more than 0s");
    let (code, _, stderr) = with(&["--timeout", "90m"]);
    assert_eq!(code, 1, "{stderr}");
}

#[test]
fn optional_platforms() {
    let ctx = good_context();
    let with = |extra: &[&str]| {
        let mut args = OK.to_vec();
        args.extend_from_slice(extra);
        build(ctx.path(), &args)
    };
    let r = with(&["--optional-platform", "s390x,sparc"]);
    assert_usage(r.clone(), "--optional-platform: unknown platform 'sparc'");
    assert_usage(r, "accepted: linux/amd64");
    // Any spelling of a required platform counts as that platform.
    for both in ["x86_64", "linux/s390x,amd64"] {
        assert_usage(
            with(&["--optional-platform", both]),
            "error: platform linux/amd64 is both required (--platform) and optional (--optional-platform)",
        );
    }
    let (code, _, stderr) = with(&[
        "--optional-platform",
        "s390x",
        "--optional-platform",
        "riscv64,s390x",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot reach the coordinator"), "{stderr}");
}

#[test]
fn bad_coordinator_url() {
    let ctx = good_context();
    let mut args = vec!["build", "--coordinator", "farm:8080"];
    args.extend_from_slice(OK);
    args.push(ctx.path().to_str().unwrap());
    let out = archfarm(&args);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid coordinator URL 'farm:8080'"),
        "{stderr}"
    );
}

#[test]
fn clap_usage_errors_exit_2() {
    let out = archfarm(&["build", "-t", "localhost:5000/app:1", "."]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--platform"));
    let out = archfarm(&[
        "build",
        "--platform",
        "amd64",
        "-t",
        "x:1",
        "--emulation",
        "always",
        ".",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn valid_input_then_unreachable_coordinator_exits_1() {
    let ctx = good_context();
    let (code, stdout, stderr) = build(ctx.path(), OK);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("error: cannot reach the coordinator at http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(stderr.contains("context: packing"), "{stderr}");
}

#[test]
fn other_commands_report_unreachable() {
    let url = closed_port_url();
    for cmd in [
        vec!["jobs"],
        vec!["agents"],
        vec!["agents", "drain", "pi-4"],
        vec!["job", "6f1e2d3c-0000-4000-8000-000000000001"],
        vec!["cancel", "6f1e2d3c-0000-4000-8000-000000000001"],
    ] {
        let mut args = cmd.clone();
        args.extend(["--coordinator", &url]);
        let out = archfarm(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: cannot reach the coordinator at {url}: ")),
            "{cmd:?}: {stderr}"
        );
    }
}

#[test]
fn help_documents_exit_codes() {
    for args in [&["--help"][..], &["build", "--help"][..]] {
        let out = archfarm(args);
        assert_eq!(out.status.code(), Some(0));
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("130"), "{help}");
    }
}

#[test]
fn token_is_not_echoed() {
    let out = Command::new(env!("CARGO_BIN_EXE_archfarm"))
        .args(["build", "--help"])
        .env("ARCHFARM_TOKEN", "s3cr3t-value")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("s3cr3t-value"), "{all}");
}

#[test]
fn bad_secrets_exit_2_before_any_upload() {
    let ctx = good_context();
    let with = |spec: &str| {
        let mut args = OK.to_vec();
        args.extend(["--secret", spec]);
        build(ctx.path(), &args)
    };
    assert_usage(
        with("id=tok,mode=0400"),
        "invalid --secret 'id=tok,mode=0400': unknown key 'mode'; accepted: id=ID,src=FILE",
    );
    let missing = ctx.path().join("no-such-file");
    assert_usage(
        with(&format!("id=tok,src={}", missing.display())),
        &format!("--secret id=tok: cannot use {}", missing.display()),
    );
    assert_usage(
        with("id=tok,env=ARCHFARM_TEST_SURELY_UNSET"),
        "the environment variable ARCHFARM_TEST_SURELY_UNSET is not set",
    );
}

#[test]
fn local_outputs_are_refused_with_what_the_farm_does_instead() {
    let ctx = good_context();
    let mut args = OK.to_vec();
    args.push("--load");
    assert_usage(build(ctx.path(), &args), "--load is not supported");
    let mut args = OK.to_vec();
    args.extend(["-o", "type=docker"]);
    assert_usage(
        build(ctx.path(), &args),
        "--output type=docker is not supported: the farm's agents always push",
    );
}

#[test]
fn a_buildx_flag_archfarm_lacks_says_what_to_do_instead() {
    let ctx = good_context();
    let mut args = OK.to_vec();
    args.extend(["--builder", "mybuilder"]);
    let (code, stdout, stderr) = build(ctx.path(), &args);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("unexpected argument '--builder'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("note: --builder is a docker buildx flag archfarm does not take: the farm is the builder"),
        "{stderr}"
    );
}

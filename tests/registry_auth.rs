//! Registry credentials and secret build arguments, end to end: a real `docker-registry` behind TLS
//! (a CA made for the test) with htpasswd (bcrypt) authentication, the coordinator given the
//! password in a Docker `config.json` (`--registry-auth`), an agent that builds natively with
//! buildah, pushes with the lease's credential and pulls a private base image with it, and an
//! independent reader (skopeo) that checks what landed. Then the password and the secret build
//! argument are looked for everywhere they must not be.

use std::process::Command;
use std::time::Duration;

use archfarm_e2e::coordinator::CoordinatorOptions;
use archfarm_e2e::oci::{self, skopeo};
use archfarm_e2e::process::{bin_path, clean_env, Scratch};
use archfarm_e2e::secure_registry::SecureRegistry;
use archfarm_e2e::TestCa;
use archfarm_e2e::{
    files_containing, last_line, preflight, Agent, AgentOptions, BuildContext, Coordinator,
};
use archfarm_protocol::api::{Job, JobState};
use reqwest::Method;

/// Command output as text.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `GET PATH` from the coordinator as text, asserting 200.
fn get_text(coordinator: &Coordinator, path: &str) -> String {
    let resp = coordinator
        .request(Method::GET, path)
        .send()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.text().expect("body")
}

/// A context whose image starts from `base` and whose RUN step prints the build argument TOKEN,
/// then runs `then`.
fn token_context(base: &str, then: &str) -> BuildContext {
    let context = BuildContext::empty();
    context.write(
        "Dockerfile",
        &format!(
            "FROM {base}\nARG TOKEN\nRUN echo \"token is $TOKEN\" && echo \"stderr has $TOKEN\" >&2 && {then}\n"
        ),
    );
    context
}

#[test]
fn authenticated_tls_registry_with_secret_build_args() {
    preflight();
    let ca = TestCa::new("registry-ca");
    let registry = SecureRegistry::start(&ca, "archfarm");
    // Same CA, but the coordinator has no credential for it.
    let closed = SecureRegistry::start(&ca, "someone-else");
    let secrets = Scratch::new("secrets");
    let docker_config = registry.write_docker_config(secrets.path());
    let coordinator = Coordinator::start_with(
        CoordinatorOptions::default()
            .arg("--registry-auth")
            .arg(&docker_config.display().to_string())
            .arg("--registry-ca-cert")
            .arg(&ca.ca_path().display().to_string())
            // Loopback registries are plain HTTP unless listed here.
            .arg("--secure-registry")
            .arg(&format!("{},{}", registry.host(), closed.host())),
    );
    let mut opts = AgentOptions::new("amd64").emulate("none");
    opts.extra_args = vec![
        "--registry-ca-cert".into(),
        ca.ca_path().display().to_string(),
    ];
    let agent = Agent::start(&coordinator, opts);
    let password = registry.password().to_string();
    let cert_dir = ca.cert_dir().display().to_string();

    // The registry really wants the password: anonymous reads are refused.
    let anonymous = skopeo(&[
        "inspect",
        "--raw",
        "--cert-dir",
        &cert_dir,
        &format!("docker://{}/hello:nothing", registry.host()),
    ])
    .unwrap_err();
    assert!(
        anonymous.to_lowercase().contains("unauthorized")
            || anonymous.contains("authentication required"),
        "{anonymous}"
    );

    // 1. The hello example, pushed and stitched with the coordinator's credential over TLS.
    let hello = BuildContext::hello();
    let tag = format!("{}/hello:auth", registry.host());
    let out = coordinator.cli(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-t",
        &tag,
        &hello.arg(),
    ]);
    assert!(
        out.status.success(),
        "archfarm build failed: {}",
        text(&out.stderr)
    );
    let printed = last_line(&out.stdout);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--creds",
        &registry.creds(),
        "--cert-dir",
        &cert_dir,
        &format!("docker://{tag}"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        oci::sha256_digest(&raw),
        printed,
        "the index skopeo reads back"
    );
    let index: serde_json::Value = serde_json::from_slice(&raw).expect("index JSON");
    assert_eq!(index["manifests"][0]["platform"]["architecture"], "amd64");
    let mut cli_output = vec![text(&out.stdout), text(&out.stderr)];

    // 2. A secret build argument, in a build whose base image is private: buildah pulls it with
    //    the lease's credential (a private auth file) and trusts the CA (--cert-dir).
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let context = token_context(&tag, "true");
    let out = coordinator.cli(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-t",
        &format!("{}/secret:1", registry.host()),
        "--build-arg",
        &format!("TOKEN={token}"),
        "--secret-build-arg",
        "TOKEN",
        &context.arg(),
    ]);
    assert!(
        out.status.success(),
        "secret build failed: {}",
        text(&out.stderr)
    );
    cli_output.push(text(&out.stdout));
    cli_output.push(text(&out.stderr));
    let secret_job = coordinator
        .jobs()
        .into_iter()
        .find(|j| j.tags[0].contains("/secret:"))
        .expect("the secret job");
    assert_eq!(secret_job.state, JobState::Succeeded);
    assert_eq!(secret_job.build_args["TOKEN"], "[redacted]");
    assert_eq!(secret_job.secret_build_args, ["TOKEN"]);
    let log = coordinator.build_log(secret_job.builds[0].id);
    assert!(log.contains("token is [redacted]"), "{log}");
    assert!(log.contains("stderr has [redacted]"), "{log}");
    let json = coordinator.cli(&["job", &secret_job.id.to_string(), "--json"]);
    assert!(json.status.success());
    assert!(
        text(&json.stdout).contains("\"TOKEN\": \"[redacted]\""),
        "{}",
        text(&json.stdout)
    );
    cli_output.push(text(&json.stdout));
    let page = get_text(&coordinator, &format!("/jobs/{}", secret_job.id));
    assert!(
        page.contains("TOKEN=[redacted]"),
        "the dashboard shows it redacted"
    );

    // 3. The same secret in the failure message: buildah's last line quotes the failing step,
    //    whose text holds the value.
    let failing = token_context(&tag, &format!("test \"$TOKEN\" != \"{token}\""));
    let out = coordinator.cli(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-t",
        &format!("{}/secret:2", registry.host()),
        "--build-arg",
        &format!("TOKEN={token}"),
        "--secret-build-arg",
        "TOKEN",
        &failing.arg(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    cli_output.push(text(&out.stdout));
    cli_output.push(text(&out.stderr));
    let failed_job = coordinator
        .jobs()
        .into_iter()
        .find(|j| j.tags[0].ends_with("/secret:2"))
        .expect("the failed job");
    assert_eq!(failed_job.state, JobState::Failed);
    let error = failed_job.error.clone().unwrap_or_default();
    assert!(
        error.contains("[redacted]"),
        "the failure names the redacted line: {error}"
    );

    // 4. A secret build argument without a value is refused before anything is sent.
    let out = coordinator.cli_timeout(
        &[
            "build",
            "--platform",
            "linux/amd64",
            "-t",
            &format!("{}/secret:3", registry.host()),
            "--secret-build-arg",
            "TOKEN",
            &context.arg(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--secret-build-arg TOKEN: there is no build argument TOKEN"),
        "{}",
        text(&out.stderr)
    );

    // 5. Without credentials for a registry that wants them the build fails, saying why.
    let out = coordinator.cli(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-t",
        &format!("{}/hello:anon", closed.host()),
        &hello.arg(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("401") && stderr.to_lowercase().contains("unauthorized"),
        "the failure names the refusal: {stderr}"
    );
    cli_output.push(stderr);

    // 6. Neither the password nor the secret value is anywhere it must not be.
    let jobs: Vec<Job> = coordinator.jobs();
    let mut places: Vec<(String, String)> = vec![
        ("the coordinator's log".into(), coordinator.log()),
        ("the agent's log".into(), agent.log()),
        (
            "GET /api/v1/jobs".into(),
            get_text(&coordinator, "/api/v1/jobs?limit=100"),
        ),
        ("/metrics".into(), get_text(&coordinator, "/metrics")),
        ("the dashboard".into(), page),
    ];
    for job in &jobs {
        places.push((
            format!("job {}", job.id),
            get_text(&coordinator, &format!("/api/v1/jobs/{}", job.id)),
        ));
        for build in &job.builds {
            places.push((
                format!("build log {}", build.id),
                coordinator.build_log(build.id),
            ));
        }
    }
    for (i, output) in cli_output.into_iter().enumerate() {
        places.push((format!("CLI output {i}"), output));
    }
    for (what, content) in &places {
        assert!(
            !content.contains(&password),
            "the registry password is in {what}"
        );
        assert!(
            !content.contains(&token),
            "the secret build argument is in {what}"
        );
    }
    // Credentials live in memory only: not in the database, and no auth file outlives its build.
    let db = coordinator.stored_containing(&password);
    assert!(db.is_empty(), "the password is stored in {db:?}");
    let left = files_containing(&agent.work_dir(), &password);
    assert!(left.is_empty(), "the agent left the password in {left:?}");
}

#[test]
fn broken_credential_files_stop_the_start() {
    let dir = Scratch::new("broken-auth");
    let broken = dir.join("config.json");
    std::fs::write(
        &broken,
        r#"{"auths": {"reg.example": {"password": "hunter2-secret"}}}"#,
    )
    .unwrap();
    let missing = dir.join("missing.json");
    for (file, needle) in [
        (
            &missing,
            format!("cannot read --registry-auth file {}", missing.display()),
        ),
        (
            &broken,
            format!("{}, entry 'reg.example'", broken.display()),
        ),
    ] {
        let mut coordinator = Command::new(bin_path("archfarm-coordinator"));
        coordinator
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--registry-auth")
            .arg(file);
        let mut agent = Command::new(bin_path("archfarm-agent"));
        agent
            .args(["--coordinator", "http://127.0.0.1:1", "--join-token", "t"])
            .args([
                "--platform",
                "linux/amd64",
                "--emulate",
                "none",
                "--work-dir",
            ])
            .arg(dir.join("agent"))
            .arg("--registry-auth")
            .arg(file);
        for (name, mut cmd, code) in [("coordinator", coordinator, 1), ("agent", agent, 2)] {
            clean_env(&mut cmd);
            let out = cmd.output().expect("run");
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(code), "{name}: {stderr}");
            assert!(stderr.contains(&needle), "{name}: {stderr}");
            assert!(!stderr.contains("hunter2"), "{name}: {stderr}");
        }
    }
}

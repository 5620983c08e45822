//! Registry credentials from where pipelines keep them, end to end, against a real
//! `docker-registry` behind TLS (a CA made for the test) with htpasswd (bcrypt) authentication:
//!
//! - the pipeline's own credential, sent by `archfarm build` from its docker config (`auths`, and
//!   a credential helper), pushing to a registry the coordinator holds no credential for; then
//!   looked for, in every form it travels in, everywhere it must not be;
//! - a credential helper named by the coordinator's `--registry-auth` (`credHelpers`), handing
//!   out a password read from a file, while the test rotates the registry's password between
//!   jobs (docker-registry 2.8 reads a changed htpasswd file again by itself: see
//!   `SecureRegistry::set_password`), and then hands out a wrong one.
//!
//! The helpers are small shell scripts the test writes (`docker-credential-NAME`), found through
//! `PATH` as Docker finds them.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use archfarm_e2e::coordinator::{BackgroundCli, CoordinatorOptions, CLI_TIMEOUT};
use archfarm_e2e::oci::{self, skopeo};
use archfarm_e2e::process::Scratch;
use archfarm_e2e::secure_registry::SecureRegistry;
use archfarm_e2e::TestCa;
use archfarm_e2e::{
    files_containing, last_line, preflight, Agent, AgentOptions, BuildContext, Coordinator,
};
use base64::Engine as _;
use reqwest::Method;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes `dir/docker-credential-NAME`: answers `get` with `user` and the password in `file`.
fn write_helper(dir: &Path, name: &str, user: &str, file: &Path) -> PathBuf {
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n\
             # Docker's credential helper protocol: `get`, the server on stdin, JSON on stdout.\n\
             [ \"$1\" = get ] || exit 1\n\
             read server\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"%s\"}}' \"$server\" \"$(cat {})\"\n",
            file.display()
        ),
    )
    .expect("write helper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod helper");
    path
}

/// `PATH` with `dir` first.
fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// `archfarm ARGS` against `coordinator` with extra environment variables.
fn cli_with_env(coordinator: &Coordinator, env: &[(&str, String)], args: &[&str]) -> Output {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    BackgroundCli::spawn_with_env(coordinator.url(), None, args, &env).wait(CLI_TIMEOUT)
}

/// `GET PATH` as text, asserting 200.
fn get_text(coordinator: &Coordinator, path: &str) -> String {
    let resp = coordinator.request(Method::GET, path).send().expect("GET");
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.text().expect("body")
}

/// The index under `reference` as skopeo reads it with `creds`, and its digest.
fn read_back(
    registry: &SecureRegistry,
    ca: &TestCa,
    reference: &str,
) -> (serde_json::Value, String) {
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--creds",
        &registry.creds(),
        "--cert-dir",
        &ca.cert_dir().display().to_string(),
        &format!("docker://{reference}"),
    ])
    .unwrap_or_else(|e| panic!("skopeo {reference}: {e}"));
    (
        serde_json::from_slice(&raw).expect("index JSON"),
        oci::sha256_digest(&raw),
    )
}

/// Every form a password travels in: itself, `user:password` and the base64 of both (an
/// `Authorization: Basic` header, a docker config's `auth`).
fn forms(user: &str, password: &str) -> Vec<String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let pair = format!("{user}:{password}");
    vec![
        password.to_string(),
        b64(&pair),
        b64(&pair).trim_end_matches('=').to_string(),
        b64(password).trim_end_matches('=').to_string(),
    ]
}

/// A coordinator that trusts `ca` and speaks TLS to `registry` (loopback is plain HTTP unless
/// listed), with `opts` on top, and one native amd64 agent trusting `ca` too.
fn farm(ca: &TestCa, registry: &SecureRegistry, opts: CoordinatorOptions) -> (Coordinator, Agent) {
    let coordinator = Coordinator::start_with(
        opts.arg("--registry-ca-cert")
            .arg(&ca.ca_path().display().to_string())
            .arg("--secure-registry")
            .arg(registry.host()),
    );
    let mut agent_opts = AgentOptions::new("amd64").emulate("none");
    agent_opts.extra_args = vec![
        "--registry-ca-cert".into(),
        ca.ca_path().display().to_string(),
    ];
    let agent = Agent::start(&coordinator, agent_opts);
    (coordinator, agent)
}

#[test]
fn the_pipelines_own_credential_pushes_and_leaves_no_trace() {
    preflight();
    let ca = TestCa::new("pipeline-ca");
    let registry = SecureRegistry::start(&ca, "pipeline");
    // No --registry-auth: the farm holds no credential for this registry.
    let (coordinator, agent) = farm(&ca, &registry, CoordinatorOptions::default());
    let hello = BuildContext::hello();
    let scratch = Scratch::new("pipeline-creds");
    let build = |env: &[(&str, String)], tag: &str, extra: &[&str]| {
        let mut args = vec![
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64",
            "-t",
            tag,
        ];
        args.extend_from_slice(extra);
        let ctx = hello.arg();
        args.push(&ctx);
        cli_with_env(&coordinator, env, &args)
    };
    let mut outputs: Vec<String> = Vec::new();

    // 1. `auths`, as `docker login` writes it.
    let with_auths = scratch.join("auths");
    std::fs::create_dir_all(&with_auths).unwrap();
    registry.write_docker_config(&with_auths);
    let env = [("DOCKER_CONFIG", with_auths.display().to_string())];
    let tag = format!("{}/app:auths", registry.host());
    let out = build(&env, &tag, &[]);
    let stderr = text(&out.stderr);
    println!("--- archfarm build, DOCKER_CONFIG with auths:\n{stderr}");
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "registry credentials: sent for {}",
            registry.host()
        )),
        "the CLI names the registries whose credentials it sent: {stderr}"
    );
    let (index, digest) = read_back(&registry, &ca, &tag);
    assert_eq!(
        digest,
        last_line(&out.stdout),
        "skopeo reads back the printed index"
    );
    assert_eq!(index["manifests"][0]["platform"]["architecture"], "amd64");
    println!("skopeo: {tag} is {digest}");
    outputs.extend([text(&out.stdout), stderr]);

    // 2. A credential helper (credHelpers), as `docker login` with one configured leaves it.
    let with_helper = scratch.join("helper");
    std::fs::create_dir_all(&with_helper).unwrap();
    let secret_file = scratch.join("pipeline-secret");
    std::fs::write(&secret_file, registry.password()).unwrap();
    write_helper(&with_helper, "afpipeline", registry.user(), &secret_file);
    std::fs::write(
        with_helper.join("config.json"),
        serde_json::json!({
            "auths": { registry.host(): {} },
            "credHelpers": { registry.host(): "afpipeline" }
        })
        .to_string(),
    )
    .unwrap();
    let env = [
        ("DOCKER_CONFIG", with_helper.display().to_string()),
        ("PATH", path_with(&with_helper)),
    ];
    let tag = format!("{}/app:helper", registry.host());
    let out = build(&env, &tag, &[]);
    let stderr = text(&out.stderr);
    println!("--- archfarm build, DOCKER_CONFIG with a credential helper:\n{stderr}");
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("sent for {}", registry.host())),
        "{stderr}"
    );
    let (_, digest) = read_back(&registry, &ca, &tag);
    assert_eq!(digest, last_line(&out.stdout));
    println!("skopeo: {tag} is {digest}");
    outputs.extend([text(&out.stdout), stderr]);

    // 3. The same job without them: the push is refused, naming the registry.
    let env = [("DOCKER_CONFIG", with_auths.display().to_string())];
    let tag = format!("{}/app:none", registry.host());
    let out = build(&env, &tag, &["--registry-credentials", "none"]);
    let stderr = text(&out.stderr);
    println!("--- archfarm build --registry-credentials none:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("401") && stderr.contains(&format!("registry {}", registry.host())),
        "the failure names the refusal and the registry: {stderr}"
    );
    assert!(!stderr.contains("registry credentials: sent"), "{stderr}");
    outputs.push(stderr);

    // 4. The password, in each form it travels in, is nowhere it must not be.
    let mut places: Vec<(String, String)> = vec![
        ("the coordinator's log".into(), coordinator.log()),
        ("the agent's log".into(), agent.log()),
        (
            "GET /api/v1/jobs".into(),
            get_text(&coordinator, "/api/v1/jobs?limit=100"),
        ),
    ];
    for job in coordinator.jobs() {
        let json = coordinator.cli(&["job", &job.id.to_string(), "--json"]);
        assert!(json.status.success());
        places.push((
            format!("archfarm job {} --json", job.id),
            text(&json.stdout),
        ));
        places.push((
            format!("GET /api/v1/jobs/{}", job.id),
            get_text(&coordinator, &format!("/api/v1/jobs/{}", job.id)),
        ));
        for b in &job.builds {
            places.push((format!("build log {}", b.id), coordinator.build_log(b.id)));
        }
    }
    for (i, o) in outputs.into_iter().enumerate() {
        places.push((format!("CLI output {i}"), o));
    }
    for needle in forms(registry.user(), registry.password()) {
        for (what, content) in &places {
            assert!(
                !content.contains(&needle),
                "a form of the password is in {what}"
            );
        }
        let stored = coordinator.stored_containing(&needle);
        assert!(
            stored.is_empty(),
            "a form of the password is stored in {stored:?}"
        );
        let left = files_containing(&agent.work_dir(), &needle);
        assert!(
            left.is_empty(),
            "the agent left a form of the password in {left:?}"
        );
    }
    println!(
        "the password and its base64 forms: in no log, job JSON, build log, CLI output, database \
         ({}) or file of the coordinator's data directory or the agent's work directory",
        if coordinator.database().is_postgres() {
            "pg_dump --data-only"
        } else {
            "the SQLite file and its WAL"
        }
    );
}

/// Tags in two registries, each with its own password, both only in the pipeline's docker
/// config: agents push with the first registry's, the coordinator copies the children and pushes
/// the index into the second with the second's.
#[test]
fn the_pipelines_own_credentials_reach_every_tags_registry() {
    preflight();
    let ca = TestCa::new("two-registries-ca");
    let first = SecureRegistry::start(&ca, "first");
    let second = SecureRegistry::start(&ca, "second");
    let (coordinator, agent) = farm(
        &ca,
        &first,
        CoordinatorOptions::default()
            .arg("--secure-registry")
            .arg(second.host()),
    );
    let scratch = Scratch::new("two-registries");
    let config_dir = scratch.join("docker");
    std::fs::create_dir_all(&config_dir).unwrap();
    let auth = |r: &SecureRegistry| {
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", r.user(), r.password()))
    };
    std::fs::write(
        config_dir.join("config.json"),
        serde_json::json!({ "auths": {
            first.host(): { "auth": auth(&first) },
            second.host(): { "auth": auth(&second) },
        }})
        .to_string(),
    )
    .unwrap();
    let first_tag = format!("{}/team/app:1", first.host());
    let second_tag = format!("{}/mirror/app:1", second.host());
    let hello = BuildContext::hello();
    let out = cli_with_env(
        &coordinator,
        &[("DOCKER_CONFIG", config_dir.display().to_string())],
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64",
            "-t",
            &first_tag,
            "-t",
            &second_tag,
            &hello.arg(),
        ],
    );
    let stderr = text(&out.stderr);
    println!("--- archfarm build with tags in two registries:\n{stderr}");
    assert!(out.status.success(), "{stderr}");
    for r in [&first, &second] {
        assert!(
            stderr.contains(r.host()),
            "the CLI names both registries it sent credentials for: {stderr}"
        );
    }
    let printed = last_line(&out.stdout);
    for (registry, tag) in [(&first, &first_tag), (&second, &second_tag)] {
        let (index, digest) = read_back(registry, &ca, tag);
        assert_eq!(digest, printed, "{tag} holds the printed index");
        let child = index["manifests"][0]["digest"].as_str().expect("a child");
        let repo = tag.rsplit_once(':').expect("a tag").0;
        // The child itself is in each repository, not only the index naming it.
        skopeo(&[
            "inspect",
            "--raw",
            "--creds",
            &registry.creds(),
            "--cert-dir",
            &ca.cert_dir().display().to_string(),
            &format!("docker://{repo}@{child}"),
        ])
        .unwrap_or_else(|e| panic!("{repo}@{child}: {e}"));
        println!("skopeo: {tag} is {digest}, its child {child} is there too");
    }
    for registry in [&first, &second] {
        for needle in forms(registry.user(), registry.password()) {
            assert!(
                !coordinator.log().contains(&needle),
                "a password in the coordinator's log"
            );
            assert!(
                !agent.log().contains(&needle),
                "a password in the agent's log"
            );
            let stored = coordinator.stored_containing(&needle);
            assert!(stored.is_empty(), "a password is stored in {stored:?}");
        }
    }
}

#[test]
fn a_credential_helper_on_the_coordinator_follows_a_rotated_password() {
    preflight();
    let ca = TestCa::new("helper-ca");
    let mut registry = SecureRegistry::start(&ca, "rotor");
    let scratch = Scratch::new("coordinator-helper");
    let secret_file = scratch.join("secret");
    std::fs::write(&secret_file, registry.password()).unwrap();
    write_helper(scratch.path(), "afrotating", registry.user(), &secret_file);
    let config = scratch.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({ "credHelpers": { registry.host(): "afrotating" } }).to_string(),
    )
    .unwrap();
    let (coordinator, agent) = farm(
        &ca,
        &registry,
        CoordinatorOptions::default()
            .arg("--registry-auth")
            .arg(&config.display().to_string())
            .env("PATH", &path_with(scratch.path())),
    );
    let hello = BuildContext::hello();
    let build = |tag: &str| {
        // No docker config for the CLI: the coordinator's helper is the only credential.
        let env = [(
            "DOCKER_CONFIG",
            scratch.join("no-docker-config").display().to_string(),
        )];
        cli_with_env(
            &coordinator,
            &env,
            &[
                "build",
                "--progress",
                "plain",
                "--platform",
                "linux/amd64",
                "-t",
                tag,
                &hello.arg(),
            ],
        )
    };
    let first_password = registry.password().to_string();

    // 1. The helper's password pushes and stitches.
    let tag = format!("{}/rotating:1", registry.host());
    let out = build(&tag);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, digest) = read_back(&registry, &ca, &tag);
    assert_eq!(digest, last_line(&out.stdout));
    println!("job 1 with the first password: skopeo reads {tag} as {digest}");

    // 2. Rotated: the registry takes only the new password, the helper hands it out.
    let second = format!("pw-rotated-{}", uuid::Uuid::new_v4().simple());
    registry.set_password(&second);
    std::fs::write(&secret_file, &second).unwrap();
    let old = skopeo(&[
        "inspect",
        "--raw",
        "--creds",
        &format!("{}:{first_password}", registry.user()),
        "--cert-dir",
        &ca.cert_dir().display().to_string(),
        &format!("docker://{tag}"),
    ])
    .unwrap_err();
    assert!(
        old.to_lowercase().contains("unauthorized") || old.contains("authentication required"),
        "{old}"
    );
    let tag = format!("{}/rotating:2", registry.host());
    let out = build(&tag);
    assert!(
        out.status.success(),
        "after rotation: {}",
        text(&out.stderr)
    );
    let (_, digest) = read_back(&registry, &ca, &tag);
    assert_eq!(digest, last_line(&out.stdout));
    println!("job 2 after rotating the password: skopeo reads {tag} as {digest}");

    // 3. A helper that hands out a wrong password: the job fails, saying the registry refused.
    std::fs::write(&secret_file, "not-the-password").unwrap();
    let tag = format!("{}/rotating:3", registry.host());
    let out = build(&tag);
    let stderr = text(&out.stderr);
    println!("--- job 3 with a wrong password from the helper:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("401")
            && stderr.contains(&format!("registry {}", registry.host()))
            && stderr.contains("refused the credentials"),
        "{stderr}"
    );
    let log = coordinator.log();
    assert!(
        log.contains("credential helper asked"),
        "the coordinator ran the helper"
    );
    for needle in forms(registry.user(), &first_password)
        .into_iter()
        .chain(forms(registry.user(), &second))
    {
        assert!(
            !log.contains(&needle),
            "a password is in the coordinator's log"
        );
        assert!(
            !agent.log().contains(&needle),
            "a password is in the agent's log"
        );
        assert!(
            coordinator.stored_containing(&needle).is_empty(),
            "a password is stored"
        );
    }
}

/// Always on PostgreSQL (as `replicas.rs`): replicas sharing a database must share the key jobs'
/// own credentials are sealed with. Replica `a` takes the job, replica `b`'s agent builds it
/// with the credential `a` sealed; a replica started with another key fails such a job, naming
/// the flag, rather than pushing without the credential.
#[test]
fn replicas_open_each_others_sealed_credentials_with_the_shared_key() {
    preflight();
    let ca = TestCa::new("replica-ca");
    let registry = SecureRegistry::start(&ca, "replicas");
    let db = std::sync::Arc::new(archfarm_e2e::database::Database::postgres());
    let key = format!("shared-key-{}", uuid::Uuid::new_v4().simple());
    let opts = |name: &str, key: &str| {
        CoordinatorOptions::default()
            .database(db.clone())
            .arg("--replica-name")
            .arg(name)
            .arg("--job-credential-key")
            .arg(key)
            .arg("--registry-ca-cert")
            .arg(&ca.ca_path().display().to_string())
            .arg("--secure-registry")
            .arg(registry.host())
    };
    let agent_opts = |name: &str| {
        let mut o = AgentOptions::new(name).emulate("none");
        o.extra_args = vec![
            "--registry-ca-cert".into(),
            ca.ca_path().display().to_string(),
        ];
        o
    };
    let scratch = Scratch::new("replica-creds");
    registry.write_docker_config(scratch.path());
    let env = [("DOCKER_CONFIG", scratch.path().display().to_string())];
    let hello = BuildContext::hello();
    let a = Coordinator::start_with(opts("a", &key));

    // 1. Submitted to a (no agents), built by b's agent: b opens what a sealed.
    let tag = format!("{}/replicated:1", registry.host());
    {
        let b = Coordinator::start_with(opts("b", &key));
        let _agent = Agent::start(&b, agent_opts("b-amd64"));
        let out = cli_with_env(
            &a,
            &env,
            &[
                "build",
                "--progress",
                "plain",
                "--platform",
                "linux/amd64",
                "-t",
                &tag,
                &hello.arg(),
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let (_, digest) = read_back(&registry, &ca, &tag);
        assert_eq!(digest, last_line(&out.stdout));
        let replica = db.query("SELECT replica FROM leases ORDER BY granted_at LIMIT 1");
        assert_eq!(replica.trim(), "b", "b granted the lease");
        println!("job submitted to replica a, leased by replica b: skopeo reads {tag} as {digest}");
    }

    // 2. A replica with another key cannot open it and fails the job, saying why.
    let c = Coordinator::start_with(opts(
        "c",
        &format!("another-key-{}", uuid::Uuid::new_v4().simple()),
    ));
    let _agent = Agent::start(&c, agent_opts("c-amd64"));
    let tag = format!("{}/replicated:2", registry.host());
    let out = cli_with_env(
        &a,
        &env,
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64",
            "-t",
            &tag,
            &hello.arg(),
        ],
    );
    let stderr = text(&out.stderr);
    println!("--- a job sealed by a, leased through c with another key:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sealed by a coordinator with another key")
            && stderr.contains("--job-credential-key"),
        "{stderr}"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM job_registry_credentials"),
        0,
        "deleted with the job"
    );
}

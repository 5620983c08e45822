//! A lease carries a credential for its job's repository only: a real `docker-registry` in token
//! mode with a token service written for the test (`tests/support/token_server.rs`), the
//! coordinator holding the user name and password (`--registry-auth`), and agents that get from
//! it a bearer token scoped to `repository:REPO:pull,push` and nothing else. The token service's
//! record says what was asked for; the real registry says what such a token may do.

use std::time::Duration;

use archfarm_e2e::coordinator::CoordinatorOptions;
use archfarm_e2e::oci::{self, skopeo};
use archfarm_e2e::process::Scratch;
use archfarm_e2e::token_server::{access_of, Access};
use archfarm_e2e::{last_line, preflight, Agent, AgentOptions, BuildContext, Coordinator};
use archfarm_e2e::{ProtocolAgent, TokenRegistry};
use archfarm_protocol::api::{RegistryCredentialRequest, RegistryCredentialResponse};
use archfarm_protocol::RegistryCredential;

/// Command output as text.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `repository:NAME:pull,push` as the token's `access` claim holds it.
fn pull_push(name: &str) -> Vec<Access> {
    vec![Access {
        kind: "repository".into(),
        name: name.into(),
        actions: vec!["pull".into(), "push".into()],
    }]
}

/// What the registry answers to starting a blob upload into `repo` with `token` (202 when the
/// token may push there).
fn start_upload(registry: &TokenRegistry, repo: &str, token: &str) -> u16 {
    archfarm_e2e::http_client()
        .post(format!(
            "http://{}/v2/{repo}/blobs/uploads/",
            registry.host()
        ))
        .bearer_auth(token)
        .send()
        .unwrap_or_else(|e| panic!("POST uploads to {repo}: {e}"))
        .status()
        .as_u16()
}

/// The realm with `service` and `scope` parameters.
fn realm_url(registry: &TokenRegistry, scopes: &[&str]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("service", archfarm_e2e::token_server::SERVICE);
    for scope in scopes {
        query.append_pair("scope", scope);
    }
    format!("{}?{}", registry.realm(), query.finish())
}

/// A token straight from the token service, as any Docker client would get one.
fn token_for(registry: &TokenRegistry, scope: &str) -> String {
    let resp = archfarm_e2e::http_client()
        .get(realm_url(registry, &[scope]))
        .basic_auth("archfarm", Some(registry.password()))
        .send()
        .expect("GET realm");
    assert_eq!(resp.status(), 200, "token service");
    let body: serde_json::Value = resp.json().expect("token JSON");
    body["token"].as_str().expect("token").to_string()
}

/// The harness's own check: the registry takes the service's tokens, and only for what they grant.
#[test]
fn token_registry_honours_scopes() {
    let registry = TokenRegistry::start("archfarm");
    let app = token_for(&registry, "repository:team/app:pull,push");
    assert_eq!(access_of(&app), pull_push("team/app"));
    assert_eq!(start_upload(&registry, "team/app", &app), 202);
    assert_eq!(start_upload(&registry, "team/other", &app), 401);
    registry.issue_expired(1);
    let expired = token_for(&registry, "repository:team/app:pull,push");
    assert_eq!(
        start_upload(&registry, "team/app", &expired),
        401,
        "an expired token"
    );
    let pull_only = token_for(&registry, "repository:team/app:pull");
    assert_eq!(start_upload(&registry, "team/app", &pull_only), 401);
    let wrong = archfarm_e2e::http_client()
        .get(realm_url(&registry, &[]))
        .basic_auth("archfarm", Some("not-the-password"))
        .send()
        .expect("GET realm");
    assert_eq!(wrong.status(), 401);
}

/// The coordinator with the registry's password, allowed to reach its token service. Agents are
/// not: with a token in their lease they never need to.
fn coordinator_for(registry: &TokenRegistry, secrets: &Scratch) -> Coordinator {
    let docker_config = registry.write_docker_config(secrets.path());
    Coordinator::start_with(
        CoordinatorOptions::default()
            .arg("--registry-auth")
            .arg(&docker_config.display().to_string())
            .arg("--registry-redirect-host")
            .arg(&registry.token_host()),
    )
}

/// A job through the farm to team/app: every token issued on the farm's behalf is for team/app
/// alone, and the image is there for an independent reader.
#[test]
fn a_build_pushes_with_a_token_for_its_repository_only() {
    preflight();
    let registry = TokenRegistry::start("archfarm");
    let secrets = Scratch::new("secrets");
    let coordinator = coordinator_for(&registry, &secrets);
    let _agent = Agent::start(&coordinator, AgentOptions::new("amd64").emulate("none"));
    // The lease's token is expired by the time the agent pushes, as a five-minute token is after
    // a longer build: the push must go with one the agent asks the coordinator for again.
    registry.issue_expired(1);

    let hello = BuildContext::hello();
    let tag = format!("{}/team/app:v1", registry.host());
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
        "archfarm build failed: {}\n{}",
        text(&out.stderr),
        coordinator.log_tail(40)
    );
    let printed = last_line(&out.stdout);

    // Before any reader of our own asks for tokens: what the farm asked for.
    let issued = registry.issued();
    assert!(!issued.is_empty(), "the farm asked for no token");
    // The lease's tokens (pull,push) and stitching's own reads (pull): team/app and nothing else.
    for token in &issued {
        assert_eq!(token.access.len(), 1, "{:?}", token.scopes);
        assert_eq!(token.access[0].name, "team/app", "{:?}", token.scopes);
        assert_eq!(access_of(&token.token), token.access);
    }
    let push_tokens: Vec<_> = issued
        .iter()
        .filter(|t| t.scopes == ["repository:team/app:pull,push"])
        .collect();
    assert!(
        push_tokens.len() >= 2 && push_tokens[0].expired && !push_tokens[1].expired,
        "the lease's (expired) token and the push's fresh one: {:?}",
        issued
            .iter()
            .map(|t| (&t.scopes, t.expired))
            .collect::<Vec<_>>()
    );
    let log = coordinator.log();
    assert!(
        log.contains("registry credential for the lease") && log.contains("registry token"),
        "the lease's credential was not a token: {}",
        coordinator.log_tail(40)
    );
    assert!(
        !log.contains(registry.password()),
        "the password is in the coordinator's log"
    );
    eprintln!(
        "tokens issued for the farm (scopes, issued expired): {:?}",
        issued
            .iter()
            .map(|t| (&t.scopes, t.expired))
            .collect::<Vec<_>>()
    );

    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &registry.creds(),
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
}

/// The lease itself, read by a protocol-level agent: a bearer token, not the password, for the
/// job's repository only; the real registry lets it push there and nowhere else.
#[test]
fn the_lease_token_cannot_push_elsewhere() {
    let registry = TokenRegistry::start("archfarm");
    let secrets = Scratch::new("secrets");
    let coordinator = coordinator_for(&registry, &secrets);
    let agent = ProtocolAgent::register(&coordinator, "fake", &["linux/amd64"]);
    let hello = BuildContext::hello();
    coordinator.submit(&[
        "--platform",
        "linux/amd64",
        "-t",
        &format!("{}/team/app:v1", registry.host()),
        &hello.arg(),
    ]);
    let lease = agent.lease_within(Duration::from_secs(60));
    let wire = serde_json::to_string(&lease).expect("lease JSON");
    assert!(
        !wire.contains(registry.password()),
        "the lease carries the password"
    );
    let Some(RegistryCredential::RegistryToken(token)) = &lease.registry_auth else {
        panic!(
            "the lease carries no bearer token: {:?}",
            lease.registry_auth
        );
    };
    let token = token.expose();
    assert_eq!(access_of(token), pull_push("team/app"));
    let issued = registry.issued();
    assert!(
        issued.iter().any(|t| t.token == token),
        "the token service did not issue the lease's token"
    );
    assert_eq!(start_upload(&registry, "team/app", token), 202);
    for elsewhere in ["team/other", "other/app", "team/app/sub"] {
        assert_eq!(
            start_upload(&registry, elsewhere, token),
            401,
            "the lease's token may push to {elsewhere}"
        );
    }

    // Asked again (as the agent does before pushing): a new token, for team/app alone.
    let (status, body) = agent.post(
        &format!("/api/v1/builds/{}/registry-credential", lease.build_id),
        &RegistryCredentialRequest {
            lease_token: lease.lease_token,
        },
    );
    assert_eq!(status, 200, "{body}");
    let answer: RegistryCredentialResponse = serde_json::from_str(&body).expect("answer JSON");
    let Some(RegistryCredential::RegistryToken(fresh)) = &answer.registry_auth else {
        panic!("no fresh bearer token: {body}");
    };
    assert_ne!(fresh.expose(), token, "the same token again");
    assert_eq!(access_of(fresh.expose()), pull_push("team/app"));
    assert!(!body.contains(registry.password()));
    // Not for a lease the caller does not hold.
    let (status, _) = agent.post(
        &format!("/api/v1/builds/{}/registry-credential", lease.build_id),
        &RegistryCredentialRequest {
            lease_token: uuid::Uuid::new_v4(),
        },
    );
    assert_eq!(status, 409, "a lease not held");

    agent
        .fail(lease.build_id, lease.lease_token, "the test is done")
        .expect("fail the build");
}

/// Tags in two repositories of a token-auth registry: stitching mounts the children into the
/// second with one token asked for both scopes (push on the target, pull on the source), as the
/// registry requires before it lets a mount read another repository.
#[test]
fn stitching_mounts_with_a_token_for_both_repositories() {
    preflight();
    let registry = TokenRegistry::start("archfarm");
    let secrets = Scratch::new("secrets");
    let coordinator = coordinator_for(&registry, &secrets);
    let _agent = Agent::start(&coordinator, AgentOptions::new("amd64").emulate("none"));
    let hello = BuildContext::hello();
    let app = format!("{}/team/app:v1", registry.host());
    let mirror = format!("{}/team/mirror:v1", registry.host());
    let out = coordinator.cli(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-t",
        &app,
        "-t",
        &mirror,
        &hello.arg(),
    ]);
    assert!(
        out.status.success(),
        "archfarm build failed: {}\n{}",
        text(&out.stderr),
        coordinator.log_tail(40)
    );
    let printed = last_line(&out.stdout);

    let issued = registry.issued();
    let mount_tokens: Vec<_> = issued
        .iter()
        .filter(|t| t.scopes.iter().any(|s| s.contains("team/mirror")))
        .collect();
    assert!(
        mount_tokens.iter().any(|t| t.scopes
            == [
                "repository:team/mirror:pull,push",
                "repository:team/app:pull"
            ]),
        "no token for both scopes: {:?}",
        issued.iter().map(|t| &t.scopes).collect::<Vec<_>>()
    );
    // The registry mounted every blob (201), so none was uploaded into team/mirror.
    let log = registry.log();
    let mounted: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("response completed") && l.contains("mount="))
        .collect();
    assert!(
        !mounted.is_empty()
            && mounted
                .iter()
                .all(|l| l.contains("http.response.status=201")),
        "{mounted:#?}"
    );
    assert!(
        !log.lines().any(|l| l.contains("response completed")
            && l.contains("http.request.method=PATCH")
            && l.contains("/v2/team/mirror/")),
        "blobs were uploaded into team/mirror"
    );
    for tag in [&app, &mirror] {
        let raw = skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &registry.creds(),
            &format!("docker://{tag}"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(oci::sha256_digest(&raw), printed, "{tag}");
    }
}

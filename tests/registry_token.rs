//! A lease carries a credential for its job's repository only: a real `docker-registry` in token
//! mode with a token service written for the test (`tests/support/token_server.rs`), the
//! coordinator holding the user name and password (`--registry-auth`), and agents that get from
//! it a bearer token scoped to `repository:REPO:pull,push` and nothing else. The token service's
//! record says what was asked for; the real registry says what such a token may do.

use archfarm_e2e::token_server::{access_of, Access};
use archfarm_e2e::TokenRegistry;

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
    let pull_only = token_for(&registry, "repository:team/app:pull");
    assert_eq!(start_upload(&registry, "team/app", &pull_only), 401);
    let wrong = archfarm_e2e::http_client()
        .get(realm_url(&registry, &[]))
        .basic_auth("archfarm", Some("not-the-password"))
        .send()
        .expect("GET realm");
    assert_eq!(wrong.status(), 401);
}

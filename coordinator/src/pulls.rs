//! What a lease tells its agent about pulling the build's base images: the farm's mirrors, which
//! registries speak plain HTTP, and pull credentials for the registries (and mirrors) the job's
//! Dockerfile names, and no others.
//!
//! Where a registry has a token service, the credential is a token for `repository:REPO:pull`
//! of each base image's repository (see [`crate::lease_credential`]), keyed in the agent's auth
//! file by `registry/repository`; a `Basic` registry gets the password, keyed by the registry,
//! as pushes do.

use archfarm_protocol::pull::{pull_sources, PullCredential, PullSettings};
use archfarm_protocol::{ImageRef, RegistryCredential};
use uuid::Uuid;

use crate::config::Config;
use crate::store::JobRow;
use crate::AppState;

/// The `(registry, repository)` pairs pulling `base_images` may reach: each image's own and the
/// mirrors covering it; distinct, in order. References that no longer parse are skipped.
pub fn sources(config: &Config, base_images: &[String]) -> Vec<(String, String)> {
    let mirrors = config.mirrors();
    let mut out: Vec<(String, String)> = Vec::new();
    for image in base_images.iter().filter_map(|i| ImageRef::parse(i).ok()) {
        for source in pull_sources(&image, &mirrors) {
            if !out.contains(&source) {
                out.push(source);
            }
        }
    }
    out
}

/// The registries a job's builds may get pull credentials for, distinct, in order.
pub fn pull_registries(config: &Config, base_images: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (registry, _) in sources(config, base_images) {
        if !out.contains(&registry) {
            out.push(registry);
        }
    }
    out
}

/// The registries a lease marks as plain HTTP: the coordinator's `--insecure-registry` list, and
/// the push registry, base-image registries and mirrors it treats as insecure (loopback ones).
pub fn insecure_registries(
    config: &Config,
    push_registry: &str,
    sources: &[(String, String)],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let named = std::iter::once(push_registry)
        .chain(sources.iter().map(|(r, _)| r.as_str()))
        .chain(
            config
                .mirrors()
                .iter()
                .map(|m| m.host())
                .collect::<Vec<_>>(),
        )
        .map(str::to_string)
        .collect::<Vec<_>>();
    for registry in config.insecure_registries.iter().chain(&named) {
        if config.is_insecure(registry) && !out.contains(registry) {
            out.push(registry.clone());
        }
    }
    out
}

/// How the auth file keys a pull credential: by repository for a token the coordinator scoped
/// to it, by registry otherwise (the configured credential as is).
fn scope_of(
    configured: &RegistryCredential,
    handed: &RegistryCredential,
    registry: &str,
    repository: &str,
) -> String {
    if handed != configured {
        format!("{registry}/{repository}")
    } else {
        registry.to_string()
    }
}

/// The pull settings of a lease for a build of `job`. A registry whose token service fails is
/// pulled from without a credential; the build's log says why.
pub async fn for_lease(state: &AppState, build_id: Uuid, job: &JobRow) -> PullSettings {
    let config = &state.config;
    let sources = sources(config, &job.base_images);
    let asked = sources.iter().filter_map(|(registry, repository)| {
        let configured = state.registry.auths.get(registry)?;
        Some(async move {
            let insecure = config.is_insecure(registry);
            let got = crate::lease_credential::scoped_pull(
                &state.registry,
                registry,
                repository,
                insecure,
            )
            .await;
            (registry, repository, configured, got)
        })
    });
    let mut credentials: Vec<PullCredential> = Vec::new();
    for (registry, repository, configured, got) in futures::future::join_all(asked).await {
        match got {
            Ok(Some(credential)) => {
                let scope = scope_of(configured, &credential, registry, repository);
                if credentials.iter().any(|c| c.scope == scope) {
                    continue;
                }
                tracing::info!(build.id = %build_id, %scope, kind = credential.kind(), "pull credential for the lease");
                credentials.push(PullCredential { scope, credential });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(build.id = %build_id, error = %e, "no scoped pull token");
                let line = format!(
                    "[archfarm] {e}; base images are pulled from {registry} without a credential"
                );
                if let Err(log_err) = state.logs.append(build_id, &[line]).await {
                    tracing::warn!(build.id = %build_id, error = %log_err, "could not append to the build log");
                }
            }
        }
    }
    PullSettings {
        insecure_registries: insecure_registries(config, &job.registry, &sources),
        mirrors: config.mirrors(),
        credentials,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use archfarm_protocol::Secret;

    fn config(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("c").chain(args.iter().copied())).unwrap()
    }

    fn images(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sources_follow_mirrors_and_registries_are_distinct() {
        let c = config(&["--registry-mirror", "docker.io=127.0.0.1:5000"]);
        let base = images(&[
            "docker.io/library/golang:1.22",
            "docker.io/team/tools",
            "reg.lan:5000/base:1",
        ]);
        assert_eq!(
            sources(&c, &base),
            [
                ("docker.io".to_string(), "library/golang".to_string()),
                ("127.0.0.1:5000".into(), "library/golang".into()),
                ("docker.io".into(), "team/tools".into()),
                ("127.0.0.1:5000".into(), "team/tools".into()),
                ("reg.lan:5000".into(), "base".into()),
            ]
        );
        assert_eq!(
            pull_registries(&c, &base),
            ["docker.io", "127.0.0.1:5000", "reg.lan:5000"]
        );
        assert!(pull_registries(&config(&[]), &[]).is_empty());
    }

    #[test]
    fn insecure_registries_are_those_the_coordinator_would_use_plain_http_for() {
        let c = config(&[
            "--registry-mirror",
            "docker.io=127.0.0.1:5000",
            "--insecure-registry",
            "lan.reg:5000",
            "--secure-registry",
            "127.0.0.1:5443",
        ]);
        let s = sources(
            &c,
            &images(&[
                "127.0.0.1:5001/base:1",
                "127.0.0.1:5443/private:1",
                "ghcr.io/x/y:1",
            ]),
        );
        assert_eq!(
            insecure_registries(&c, "localhost:6000", &s),
            [
                "lan.reg:5000",
                "localhost:6000",
                "127.0.0.1:5001",
                "127.0.0.1:5000"
            ]
        );
    }

    #[test]
    fn a_token_is_keyed_by_repository_a_password_by_registry() {
        let basic = RegistryCredential::Basic {
            username: "u".into(),
            password: Secret::new("p"),
        };
        let token = RegistryCredential::RegistryToken(Secret::new("t"));
        assert_eq!(scope_of(&basic, &token, "r.io", "a/b"), "r.io/a/b");
        assert_eq!(scope_of(&basic, &basic, "r.io", "a/b"), "r.io");
        assert_eq!(scope_of(&token, &token, "r.io", "a/b"), "r.io");
    }
}

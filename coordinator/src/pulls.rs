//! What a lease tells its agent about pulling the build's base images: the farm's mirrors, which
//! registries speak plain HTTP, and pull credentials for the registries (and mirrors) the job's
//! Dockerfile names and its registry caches are in, and no others.
//!
//! The credential is the job's own for that registry when it sent one, else the coordinator's
//! own, as configured (see [`credentials`] for why not a scoped token).

use std::collections::BTreeMap;
use std::time::Duration;

use archfarm_protocol::pull::{pull_sources, PullCredential, PullSettings};
use archfarm_protocol::{ImageRef, RegistryAuths, RegistryCredential};
use uuid::Uuid;

use crate::config::Config;
use crate::job_credentials::JobCredentials;
use crate::registry::{Fresh, RegistryAccess};
use crate::store::JobRow;

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

/// The pull credentials for `sources`: the coordinator's credential, as configured, for each
/// registry among them that it has one for, and for no other.
///
/// Not a token scoped to the base image's repository, as pushes get where the registry has a
/// token service: buildah 1.28 (containers/image) ignores `registrytoken` entries in an auth
/// file, so only the user name and password pull. The password goes to the agent (never into
/// the build's containers), as it does for pushes to a `Basic` registry.
pub fn credentials(auths: &RegistryAuths, sources: &[(String, String)]) -> Vec<PullCredential> {
    credentials_from(|r| auths.get(r).cloned(), sources)
}

/// [`credentials`] with the credential of each registry from `lookup`.
pub fn credentials_from(
    lookup: impl Fn(&str) -> Option<RegistryCredential>,
    sources: &[(String, String)],
) -> Vec<PullCredential> {
    let mut out: Vec<PullCredential> = Vec::new();
    for (registry, _) in sources {
        if out.iter().any(|c| &c.scope == registry) {
            continue;
        }
        if let Some(credential) = lookup(registry) {
            out.push(PullCredential {
                scope: registry.clone(),
                credential,
            });
        }
    }
    out
}

/// The most time one lease spends getting pull credentials (credential helpers' runs, mostly):
/// a job may name up to 64 base images, and each registry's helper may take up to its own
/// timeout. Registries not reached by then go without, and the build's log says so.
pub const LEASE_PULL_BUDGET: Duration = Duration::from_secs(20);

/// The credential for each registry of `sources`: the job's own, else the coordinator's (a
/// helper's answer up to [`crate::registry::HELPER_CACHE_TTL`] old), each registry asked once.
/// A helper that fails leaves its registry out, logged: the pull then goes without. Past
/// `budget` the remaining registries are left out too; they are returned second.
pub async fn resolve(
    access: &RegistryAccess,
    job: &JobCredentials,
    build_id: Uuid,
    sources: &[(String, String)],
    budget: Duration,
) -> (BTreeMap<String, RegistryCredential>, Vec<String>) {
    let deadline = tokio::time::Instant::now() + budget;
    let mut out = BTreeMap::new();
    let mut asked: Vec<&str> = Vec::new();
    let mut skipped = Vec::new();
    for (registry, _) in sources {
        if asked.contains(&registry.as_str()) {
            continue;
        }
        asked.push(registry);
        // Checked before the lookup is made: `timeout_at` polls its future once even past the
        // deadline, and that first poll can already start a helper.
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(build.id = %build_id, registry = %registry, "no pull credential: the lease's time for credential helpers ran out");
            skipped.push(registry.clone());
            continue;
        }
        let lookup = access.credential(job, registry, Fresh::Cached);
        match tokio::time::timeout_at(deadline, lookup).await {
            Ok(Ok(Some(r))) => {
                out.insert(registry.clone(), r.credential);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(build.id = %build_id, registry = %registry, error = %e, "no pull credential")
            }
            Err(_) => {
                tracing::warn!(build.id = %build_id, registry = %registry, "no pull credential: the lease's time for credential helpers ran out");
                skipped.push(registry.clone());
            }
        }
    }
    (out, skipped)
}

/// What buildah may reach for a build of `job`: its base images' sources and its registry
/// caches, which buildah reads and writes with the same configuration and auth file as its pulls.
pub fn lease_sources(config: &Config, job: &JobRow) -> Vec<(String, String)> {
    let mut sources = sources(config, &job.base_images);
    for c in job.cache.to.iter().chain(&job.cache.from) {
        let pair = (c.registry.clone(), c.repository.clone());
        if !sources.contains(&pair) {
            sources.push(pair);
        }
    }
    sources
}

/// The pull settings of a lease for a build of `job`, its job's own credentials in `own`, and
/// the line for the build's log when some registries' credentials were skipped for time.
pub async fn for_lease(
    config: &Config,
    access: &RegistryAccess,
    own: &JobCredentials,
    build_id: Uuid,
    job: &JobRow,
) -> (PullSettings, Option<String>) {
    let sources = lease_sources(config, job);
    let (resolved, skipped) = resolve(access, own, build_id, &sources, LEASE_PULL_BUDGET).await;
    let note = (!skipped.is_empty()).then(|| {
        format!(
            "[archfarm] no pull credentials for {}: the farm's credential helpers took too long; \
             pulls from there go without",
            skipped.join(", ")
        )
    });
    let credentials = credentials_from(|r| resolved.get(r).cloned(), &sources);
    for c in &credentials {
        tracing::info!(build.id = %build_id, registry = %c.scope, kind = c.credential.kind(), "pull credential for the lease");
    }
    let settings = PullSettings {
        insecure_registries: insecure_registries(config, &job.registry, &sources),
        mirrors: config.mirrors(),
        credentials,
    };
    (settings, note)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

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
    fn a_lease_gets_credentials_for_its_base_images_registries_and_mirrors_only() {
        let auths = RegistryAuths::parse(
            "config.json",
            r#"{"auths": {
                "reg.lan:5000": {"auth": "dTpw"},
                "127.0.0.1:5000": {"username": "m", "password": "mp"},
                "https://index.docker.io/v1/": {"username": "hub", "password": "hp"},
                "push.lan": {"username": "ci", "password": "cp"}
            }}"#,
        )
        .unwrap();
        let c = config(&["--registry-mirror", "docker.io=127.0.0.1:5000"]);
        let got = |images: &[&str]| -> Vec<String> {
            credentials(&auths, &sources(&c, &self::images(images)))
                .into_iter()
                .map(|p| p.scope)
                .collect()
        };
        assert_eq!(
            got(&[
                "golang:1.22",
                "docker.io/team/x",
                "reg.lan:5000/a:1",
                "ghcr.io/b/c"
            ]),
            ["docker.io", "127.0.0.1:5000", "reg.lan:5000"],
            "Docker Hub, its mirror and reg.lan; never push.lan, nothing for ghcr.io"
        );
        assert_eq!(got(&["reg.lan:5000/a:1"]), ["reg.lan:5000"]);
        assert!(got(&[]).is_empty());
        let hub = credentials(&auths, &sources(&c, &images(&["golang"])));
        assert_eq!(hub[0].credential, auths.get("docker.io").unwrap().clone());
    }

    #[tokio::test]
    async fn a_hanging_helper_costs_a_lease_its_budget_once() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let helper = dir.path().join("docker-credential-afslow");
        std::fs::write(
            &helper,
            format!("#!/bin/sh\necho run >> {}\nsleep 30\n", runs.display()),
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        std::env::set_var("PATH", path);
        let auth = dir.path().join("config.json");
        std::fs::write(&auth, r#"{"credsStore": "afslow"}"#).unwrap();
        let access =
            RegistryAccess::load(&config(&["--registry-auth", auth.to_str().unwrap()])).unwrap();
        let base: Vec<String> = (0..64)
            .map(|i| format!("r{}.io/base{i}:1", i % 3))
            .collect();
        let sources = sources(&config(&[]), &base);
        let (found, skipped) = resolve(
            &access,
            &JobCredentials::none(),
            Uuid::new_v4(),
            &sources,
            Duration::from_secs(1),
        )
        .await;
        assert!(found.is_empty());
        assert_eq!(skipped, ["r0.io", "r1.io", "r2.io"]);
        // At most the first registry's run (a loaded machine may kill it before its first line);
        // the others were skipped, not started, once time ran out.
        let started = std::fs::read_to_string(&runs).unwrap_or_default();
        assert!(started.lines().count() <= 1, "helper runs: {started:?}");
    }
}

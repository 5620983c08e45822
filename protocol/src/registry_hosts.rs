//! Which hosts a registry may send archfarm on to. A registry is chosen by whoever submits a
//! build, so what it names (a redirect, the `realm` of its token service, an upload `Location`) is
//! followed only to the registry itself, to hosts the operator listed (`--registry-redirect-host`,
//! e.g. a CDN serving blobs) and, for Docker Hub, to Docker's own token and blob hosts. Anything
//! else is refused before a request, or a credential, goes there.

use url::Url;

use crate::reference::host_of;
use crate::repository_pattern::registry_key;

/// Docker Hub's API, token service and blob CDN: reached on its behalf without being listed.
const DOCKER_HUB_HOSTS: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "auth.docker.io",
    "production.cloudflare.docker.com",
];

/// The hosts requests for one registry may go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHosts {
    /// The registry, `host[:port]`.
    registry: String,
    /// The registry and every other host it may send us to, `host[:port]`, lowercase.
    allowed: Vec<String>,
}

impl RegistryHosts {
    /// The hosts for `registry`, plus `extra` (`--registry-redirect-host`, `HOST[:PORT]`).
    pub fn new(registry: &str, extra: &[String]) -> Self {
        let mut allowed = vec![registry.to_ascii_lowercase()];
        if registry_key(registry) == crate::reference::DEFAULT_REGISTRY {
            allowed.extend(DOCKER_HUB_HOSTS.iter().map(|h| h.to_string()));
        }
        allowed.extend(extra.iter().map(|h| h.trim().to_ascii_lowercase()));
        RegistryHosts {
            registry: registry.to_string(),
            allowed,
        }
    }

    /// Whether a request may go to `url`; the error names its host and says how to allow it.
    pub fn check(&self, url: &Url) -> Result<(), String> {
        if self.allowed.iter().any(|a| authority_matches(a, url)) {
            return Ok(());
        }
        let host = url.host_str().unwrap_or("(no host)");
        let shown = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        Err(format!(
            "{shown} is not the registry {} nor a host listed with --registry-redirect-host; \
             refused to send a request there",
            self.registry
        ))
    }
}

/// `name` (`host[:port]`) against `url`'s host and port. A name without a port means the
/// scheme's default port, so `r.io` does not allow `r.io:8443`.
fn authority_matches(name: &str, url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let name_host = host_of(name);
    if !name_host.eq_ignore_ascii_case(host) {
        return false;
    }
    match name[name_host.len()..].strip_prefix(':') {
        Some(port) => port.parse::<u16>().ok() == url.port_or_known_default(),
        None => url.port().is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn the_registry_itself_is_allowed_others_are_named() {
        let h = RegistryHosts::new("127.0.0.1:5000", &[]);
        assert!(h
            .check(&url("http://127.0.0.1:5000/v2/x/blobs/uploads/1"))
            .is_ok());
        let e = h.check(&url("http://127.0.0.2:5000/token")).unwrap_err();
        assert_eq!(
            e,
            "127.0.0.2:5000 is not the registry 127.0.0.1:5000 nor a host listed with \
             --registry-redirect-host; refused to send a request there"
        );
        assert!(h.check(&url("http://127.0.0.1:5001/")).is_err());
        assert!(h.check(&url("http://localhost:5000/")).is_err());
    }

    #[test]
    fn ports_must_match_and_default_to_the_schemes() {
        let h = RegistryHosts::new(
            "R.example.com",
            &["cdn.example.com".into(), "[::1]:9000".into()],
        );
        assert!(h.check(&url("https://r.example.com/v2/")).is_ok());
        assert!(h.check(&url("https://r.example.com:443/v2/")).is_ok());
        assert!(h.check(&url("https://r.example.com:8443/v2/")).is_err());
        assert!(h.check(&url("https://CDN.example.com/blob")).is_ok());
        assert!(h.check(&url("http://[::1]:9000/blob")).is_ok());
        assert!(h.check(&url("http://[::1]:9001/blob")).is_err());
        let explicit = RegistryHosts::new("r.example.com:443", &[]);
        assert!(explicit.check(&url("https://r.example.com/v2/")).is_ok());
        assert!(explicit.check(&url("http://r.example.com/v2/")).is_err());
    }

    #[test]
    fn docker_hub_reaches_its_own_token_and_blob_hosts() {
        let h = RegistryHosts::new("docker.io", &[]);
        assert!(h.check(&url("https://auth.docker.io/token")).is_ok());
        assert!(h
            .check(&url("https://production.cloudflare.docker.com/x"))
            .is_ok());
        assert!(RegistryHosts::new("ghcr.io", &[])
            .check(&url("https://auth.docker.io/token"))
            .is_err());
    }
}

//! How an agent pulls a build's base images: the farm's registry mirrors (`--registry-mirror
//! PREFIX=LOCATION` on the coordinator), the registries it speaks to over plain HTTP, and the
//! pull credentials a lease carries for the registries its Dockerfile names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::reference::ImageRef;
use crate::repository_pattern::registry_key;
use crate::RegistryCredential;

/// A registry mirror: images under `prefix` are pulled from `location` first, and from the
/// origin when the mirror fails (containers-registries.conf(5) semantics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryMirror {
    /// What the mirror stands in for: a registry (`docker.io`) or a registry and namespace
    /// (`docker.io/library`).
    pub prefix: String,
    /// Where to pull from instead: `HOST[:PORT]` or `HOST[:PORT]/PATH`
    /// (`harbor.local/dockerhub-proxy`).
    pub location: String,
    /// Whether the mirror speaks plain HTTP.
    #[serde(default)]
    pub insecure: bool,
}

impl RegistryMirror {
    /// The mirror's registry, `HOST[:PORT]`.
    pub fn host(&self) -> &str {
        self.location
            .split_once('/')
            .map_or(self.location.as_str(), |(h, _)| h)
    }

    /// Where `image` is pulled from through this mirror: `(registry, repository)`, or None when
    /// the mirror does not cover it.
    pub fn rewrite(&self, image: &ImageRef) -> Option<(String, String)> {
        let name = format!("{}/{}", registry_key(&image.registry), image.repository);
        let rest = name.strip_prefix(self.prefix.as_str())?;
        // `docker.io/lib` must not cover `docker.io/library/x`.
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let moved = format!("{}{rest}", self.location);
        let (registry, repository) = moved.split_once('/')?;
        Some((registry.to_string(), repository.to_string()))
    }
}

impl FromStr for RegistryMirror {
    type Err = String;

    /// `PREFIX=LOCATION`, e.g. `docker.io=mirror.local:5000`; the prefix is normalised
    /// (`index.docker.io` means `docker.io`).
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| {
            format!(
                "'{raw}' is not a registry mirror: {why}; give PREFIX=LOCATION, e.g. \
                 docker.io=mirror.local:5000 or docker.io=harbor.local/dockerhub-proxy"
            )
        };
        let (prefix, location) = raw.trim().split_once('=').ok_or_else(|| err("no '='"))?;
        let (prefix, location) = (
            prefix.trim().trim_end_matches('/'),
            location.trim().trim_end_matches('/'),
        );
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 255
                && s.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || matches!(c, '.' | ':' | '-' | '_' | '/' | '[' | ']')
                })
        };
        if !valid(prefix) || !valid(location) {
            return Err(err("both sides must be HOST[:PORT][/PATH]"));
        }
        let (prefix_host, prefix_path) = match prefix.split_once('/') {
            Some((h, p)) => (h, Some(p)),
            None => (prefix, None),
        };
        let prefix = match prefix_path {
            Some(p) => format!("{}/{p}", registry_key(prefix_host)),
            None => registry_key(prefix_host),
        };
        let location = location.to_ascii_lowercase();
        if location == prefix {
            return Err(err("a registry cannot mirror itself"));
        }
        Ok(RegistryMirror {
            prefix,
            location,
            insecure: false,
        })
    }
}

impl fmt::Display for RegistryMirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.prefix, self.location)
    }
}

/// A credential for pulling base images, keyed as in a containers `auth.json`: a registry
/// (`reg.io:5000`) or a registry and repository (`reg.io:5000/team/base`) for a token scoped
/// to that repository. Its `Debug` hides the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullCredential {
    /// `HOST[:PORT]` or `HOST[:PORT]/REPOSITORY`.
    pub scope: String,
    /// The credential.
    pub credential: RegistryCredential,
}

/// What a lease tells its agent about pulling base images; empty for a build that needs
/// nothing beyond an anonymous pull over HTTPS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullSettings {
    /// Registries (`HOST[:PORT]`) to pull from over plain HTTP: those the coordinator marks
    /// insecure among the ones this build may reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
    /// The farm's registry mirrors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<RegistryMirror>,
    /// Credentials for the registries (and mirrors) the Dockerfile's base images come from, and
    /// no others. Never stored by either side.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<PullCredential>,
}

impl PullSettings {
    /// True when there is nothing to tell.
    pub fn is_empty(&self) -> bool {
        self.insecure_registries.is_empty()
            && self.mirrors.is_empty()
            && self.credentials.is_empty()
    }
}

/// The registries pulling `image` may reach: its own, then the mirrors covering it, as
/// `(registry, repository)`.
pub fn pull_sources(image: &ImageRef, mirrors: &[RegistryMirror]) -> Vec<(String, String)> {
    let mut out = vec![(registry_key(&image.registry), image.repository.clone())];
    out.extend(mirrors.iter().filter_map(|m| m.rewrite(image)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_parse_and_rewrite() {
        let m: RegistryMirror = "index.docker.io=127.0.0.1:5000".parse().unwrap();
        assert_eq!(m.prefix, "docker.io");
        assert_eq!(m.host(), "127.0.0.1:5000");
        let golang = ImageRef::parse("golang:1.22").unwrap();
        assert_eq!(
            m.rewrite(&golang),
            Some(("127.0.0.1:5000".into(), "library/golang".into()))
        );
        let harbor: RegistryMirror = "docker.io=Harbor.local/dockerhub-proxy/".parse().unwrap();
        assert_eq!(harbor.to_string(), "docker.io=harbor.local/dockerhub-proxy");
        assert_eq!(harbor.host(), "harbor.local");
        assert_eq!(
            harbor.rewrite(&ImageRef::parse("team/app").unwrap()),
            Some(("harbor.local".into(), "dockerhub-proxy/team/app".into()))
        );
        assert_eq!(m.rewrite(&ImageRef::parse("ghcr.io/x/y").unwrap()), None);
        let lib: RegistryMirror = "docker.io/lib=m.local".parse().unwrap();
        assert_eq!(lib.rewrite(&golang), None, "a prefix ends at a slash");
        for bad in [
            "docker.io",
            "=m",
            "docker.io=",
            "docker.io=m m",
            "docker.io=docker.io",
        ] {
            let e = bad.parse::<RegistryMirror>().unwrap_err();
            assert!(e.contains("PREFIX=LOCATION"), "{bad}: {e}");
        }
        assert_eq!(
            pull_sources(&golang, &[m, harbor]),
            [
                ("docker.io".to_string(), "library/golang".to_string()),
                ("127.0.0.1:5000".into(), "library/golang".into()),
                (
                    "harbor.local".into(),
                    "dockerhub-proxy/library/golang".into()
                ),
            ]
        );
    }

    #[test]
    fn empty_settings_are_left_out_and_secrets_hidden() {
        assert!(PullSettings::default().is_empty());
        let s = PullSettings {
            credentials: vec![PullCredential {
                scope: "r.io/a".into(),
                credential: RegistryCredential::Basic {
                    username: "u".into(),
                    password: crate::Secret::new("hunter2"),
                },
            }],
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        let back: PullSettings = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            serde_json::to_string(&PullSettings::default()).unwrap(),
            "{}"
        );
    }
}
